//! The search-list pattern: a resolver with `ndots:5` asks `name.ns.svc.cluster.local`,
//! `name.svc.cluster.local`, … (NXDOMAIN each) before `name`.
//!
//! The rule: the questions of one process and one query type whose names share their
//! first label (case-insensitively) form a walk when each is sent after the previous one
//! got NXDOMAIN, within `SEARCH_HOLD_NS` (1 s) of that answer, and repeats no name of the
//! walk (an application asking the same missing name again is not walking a list). An
//! NXDOMAIN record of a known process is held, not emitted; the walk ends when a member
//! gets another outcome (an answer, another rcode, a timeout), when a question of the same
//! process, type and first label does not continue it, or when the hold passes with no
//! member in flight. Then its records are emitted in order; a walk of two or more
//! questions gives each record `search: { base, nxdomain_before }` (base: the longest
//! common leading labels of all the walk's names; nxdomain_before: the record's place in
//! the walk, as every member before it got NXDOMAIN). A lone NXDOMAIN keeps `search: None`.
//! A walk member in flight keeps the walk's held records until it is answered or times out.

use std::collections::HashMap;

use super::{Entry, Joiner};
use crate::events::dns::{DnsRecord, SearchExpansion};

/// How long an NXDOMAIN answer waits for its process's next question of the walk.
const SEARCH_HOLD_NS: u64 = 1_000_000_000;
/// Questions in one walk at most (glibc reads 6 search domains, plus the name itself).
const MAX_WALK: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct WalkKey {
    pid: u32,
    qtype: u16,
    /// Lowercase.
    first_label: String,
}

impl WalkKey {
    fn new(pid: u32, qtype: u16, name: &str) -> WalkKey {
        let first = name.split('.').next().unwrap_or_default();
        WalkKey {
            pid,
            qtype,
            first_label: first.to_ascii_lowercase(),
        }
    }
}

/// A lookup's place in a walk.
#[derive(Clone, Debug)]
pub(super) struct WalkRef {
    key: WalkKey,
    /// The walk's id: a walk ended and begun again under the same key is another walk.
    id: u64,
    position: u32,
}

/// An NXDOMAIN record waiting for its walk to end.
#[derive(Debug)]
pub(super) struct Held {
    record: DnsRecord,
    walk: WalkRef,
}

#[derive(Debug)]
struct Walk {
    id: u64,
    /// The longest common leading labels of the names so far (as first written).
    base: String,
    /// Lowercase.
    names: Vec<String>,
    /// Table entries of the held records, in walk order.
    held: Vec<u64>,
    /// The member asked after the last NXDOMAIN, unanswered yet.
    in_flight: Option<u64>,
    hold_until_ns: u64,
}

impl Walk {
    fn search(&self, position: u32) -> Option<SearchExpansion> {
        (self.names.len() >= 2).then(|| SearchExpansion {
            base: self.base.clone(),
            nxdomain_before: position,
        })
    }
}

#[derive(Debug, Default)]
pub(super) struct Walks {
    walks: HashMap<WalkKey, Walk>,
}

impl Walks {
    /// When idle walks' holds end.
    pub(super) fn hold_ends(&self) -> impl Iterator<Item = u64> + '_ {
        self.walks
            .values()
            .filter(|w| w.in_flight.is_none())
            .map(|w| w.hold_until_ns)
    }

    /// A walk with nothing in the table (its records evicted) is forgotten: every walk
    /// has an entry in the table, so the table's bound bounds the walks.
    fn drop_if_empty(&mut self, key: &WalkKey) {
        if self
            .walks
            .get(key)
            .is_some_and(|w| w.held.is_empty() && w.in_flight.is_none())
        {
            self.walks.remove(key);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.walks.len()
    }

    fn current(&self, r: &WalkRef) -> bool {
        self.walks.get(&r.key).is_some_and(|w| w.id == r.id)
    }
}

/// The longest common leading label sequence of two names, compared case-insensitively.
fn common_base(a: &str, b: &str) -> String {
    let same = a
        .split('.')
        .zip(b.split('.'))
        .take_while(|(x, y)| x.eq_ignore_ascii_case(y))
        .count();
    a.split('.').take(same).collect::<Vec<_>>().join(".")
}

impl Joiner {
    /// A new question: its place in a walk it continues, if any. A walk it ends is
    /// released.
    pub(super) fn walk_question(
        &mut self,
        pid: Option<u32>,
        name: &str,
        qtype: u16,
        seq: u64,
        now_ns: u64,
        out: &mut Vec<DnsRecord>,
    ) -> Option<WalkRef> {
        let key = WalkKey::new(pid?, qtype, name);
        let lower = name.to_ascii_lowercase();
        let w = self.walks.walks.get_mut(&key)?;
        if w.in_flight.is_some() {
            // Not after an NXDOMAIN of the walk: a question of its own.
            return None;
        }
        if now_ns <= w.hold_until_ns && w.names.len() < MAX_WALK && !w.names.contains(&lower) {
            let position = w.names.len() as u32;
            w.names.push(lower);
            w.base = common_base(&w.base, name);
            w.in_flight = Some(seq);
            return Some(WalkRef {
                key,
                id: w.id,
                position,
            });
        }
        self.release_walk(&key, None, out);
        None
    }

    /// A lookup's record is made: held if an NXDOMAIN may begin or continue a walk,
    /// emitted with its walk if it ends one, emitted alone otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn walk_finish(
        &mut self,
        seq: u64,
        walk: Option<WalkRef>,
        qtype: u16,
        record: DnsRecord,
        nxdomain: bool,
        now_ns: u64,
        out: &mut Vec<DnsRecord>,
    ) {
        if let Some(r) = walk.filter(|r| self.walks.current(r)) {
            let Some(w) = self.walks.walks.get_mut(&r.key) else {
                return out.push(record);
            };
            w.in_flight = None;
            if nxdomain {
                w.held.push(seq);
                w.hold_until_ns = now_ns.saturating_add(SEARCH_HOLD_NS);
                let hold_end = w.hold_until_ns;
                self.table
                    .insert(seq, Entry::Held(Held { record, walk: r }));
                self.walk_due_at(hold_end);
            } else {
                let key = r.key.clone();
                self.release_walk(&key, Some((record, r.position)), out);
            }
            return;
        }
        let Some(pid) = record.pid.filter(|_| nxdomain) else {
            return out.push(record);
        };
        // An NXDOMAIN outside a walk may begin one.
        let key = WalkKey::new(pid, qtype, &record.query_name);
        match self.walks.walks.get(&key) {
            // Another walk of the same name is waiting for its member.
            Some(w) if w.in_flight.is_some() => return out.push(record),
            Some(_) => self.release_walk(&key, None, out),
            None => {}
        }
        let hold_end = now_ns.saturating_add(SEARCH_HOLD_NS);
        self.walks.walks.insert(
            key.clone(),
            Walk {
                id: seq,
                base: record.query_name.clone(),
                names: vec![record.query_name.to_ascii_lowercase()],
                held: vec![seq],
                in_flight: None,
                hold_until_ns: hold_end,
            },
        );
        let walk = WalkRef {
            key,
            id: seq,
            position: 0,
        };
        self.table.insert(seq, Entry::Held(Held { record, walk }));
        self.walk_due_at(hold_end);
    }

    /// Ends the walk: its held records, then `last` (the record that ended it), in order.
    fn release_walk(
        &mut self,
        key: &WalkKey,
        last: Option<(DnsRecord, u32)>,
        out: &mut Vec<DnsRecord>,
    ) {
        let Some(w) = self.walks.walks.remove(key) else {
            out.extend(last.map(|(r, _)| r));
            return;
        };
        for seq in &w.held {
            if let Some(Entry::Held(h)) = self.table.remove(seq) {
                let mut record = h.record;
                record.search = w.search(h.walk.position);
                out.push(record);
            }
        }
        if let Some((mut record, position)) = last {
            record.search = w.search(position);
            out.push(record);
        }
    }

    /// Ends the walks whose hold passed with no member in flight, oldest walk first.
    pub(super) fn expire_walks(&mut self, now_ns: u64, out: &mut Vec<DnsRecord>) {
        let mut ended: Vec<(u64, WalkKey)> = self
            .walks
            .walks
            .iter()
            .filter(|(_, w)| w.in_flight.is_none() && w.hold_until_ns <= now_ns)
            .map(|(k, w)| (w.id, k.clone()))
            .collect();
        ended.sort_by_key(|(id, _)| *id);
        for (_, key) in ended {
            self.release_walk(&key, None, out);
        }
    }

    /// A walk member left the table unanswered (evicted): the walk waits for it no more.
    pub(super) fn walk_member_gone(&mut self, walk: Option<&WalkRef>) {
        let Some(r) = walk.filter(|r| self.walks.current(r)) else {
            return;
        };
        if let Some(w) = self.walks.walks.get_mut(&r.key) {
            w.in_flight = None;
            let hold_end = w.hold_until_ns;
            self.walk_due_at(hold_end);
        }
        self.walks.drop_if_empty(&r.key);
    }

    /// A held record pushed out of a full table: emitted now, with its walk so far.
    pub(super) fn release_evicted(&mut self, seq: u64, held: Held, out: &mut Vec<DnsRecord>) {
        let mut record = held.record;
        if let Some(w) = self
            .walks
            .walks
            .get_mut(&held.walk.key)
            .filter(|w| w.id == held.walk.id)
        {
            w.held.retain(|&s| s != seq);
            record.search = w.search(held.walk.position);
        }
        self.walks.drop_if_empty(&held.walk.key);
        out.push(record);
    }
}
