//! Joins the DNS messages the wire probe copies into lookups: a question a local socket
//! sends (egress, QR=0) and the answer it receives (ingress, QR=1) become one
//! `DnsRecord`.
//!
//! - An answer completes the attempt with its socket (cookie), server, transaction id and
//!   question (name compared case-insensitively, type); anything else is counted as
//!   unmatched, never made into a record. Only a message's first question is joined
//!   (resolvers send one).
//! - The same question sent again while pending (same pid, or the same socket when the pid
//!   is unknown; same server, name and type) is a retry of the same lookup, whatever id or
//!   socket it uses; an answer to any attempt completes it.
//! - No answer `timeout` after the last attempt: one Timeout record. The question is then
//!   kept as a tombstone for another `timeout`: attempts of it fold in (no second timeout
//!   record) and an answer to any attempt is still reported (a late answer).
//! - A truncated UDP answer (TC) waits `timeout` for the same question over TCP; the TCP
//!   answer completes the lookup (`after_truncation`), or the truncated answer is reported.
//! - NXDOMAIN answers are held for the search-list pattern (`search`).
//! - The table (questions pending, tombstones, held answers) is bounded by `max_pending`:
//!   the oldest entry is evicted and counted (a held answer is reported early).
//!
//! Time is the packets' own (CLOCK_MONOTONIC). `expire` should be called with a `now` no
//! later than the packets still unread in the ring (drain it first): an answer read after
//! its question's timeout was reported is a late answer, a second record.

mod search;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use super::parser::{Message, Question};
use crate::events::dns::{qtype_name, rcode_name, DnsOutcome, DnsRecord, Transport};
use crate::events::Clock;

use search::{Held, WalkRef, Walks};

const RCODE_NXDOMAIN: u16 = 3;
/// Attempt keys kept per lookup (a resolver that retries without end does not grow it);
/// an answer to an older attempt is unmatched.
const MAX_ATTEMPTS: usize = 8;

/// One DNS message the probe copied, already parsed.
#[derive(Clone, Debug)]
pub struct Packet {
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// Sent by a local socket (a query out); false: received (a response in).
    pub egress: bool,
    pub transport: Transport,
    /// The local socket's address.
    pub local: SocketAddr,
    /// The server (a DNS port).
    pub remote: SocketAddr,
    /// Socket cookie, stable for the socket's life.
    pub cookie: u64,
    /// Known on egress only.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup_id: Option<u64>,
    pub message: Message,
}

/// The joiner's settings; their defaults are defined once, in the family's config section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinConfig {
    /// No answer this long after the last attempt is a timeout; also how long a tombstone
    /// and a truncated answer are kept.
    pub timeout: Duration,
    /// Entries at most: questions pending, tombstones and held answers.
    pub max_pending: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JoinStats {
    /// Entries now: questions pending, tombstones, held answers.
    pub pending: u64,
    /// Lookups begun (first attempts); each ends as an answer, a timeout or an eviction.
    pub lookups: u64,
    /// Records with an answer (late answers included).
    pub answered: u64,
    /// Timeout records.
    pub timeouts: u64,
    /// Attempts folded into a lookup (attempts after its timeout included).
    pub retries: u64,
    /// Attempts of a question whose timeout was already reported.
    pub attempts_after_timeout: u64,
    /// Answers that came after their question's timeout was reported.
    pub late_answers: u64,
    /// Responses that match no question in flight (or whose question differs).
    pub unmatched_responses: u64,
    /// Messages without a question, queries coming in and responses going out.
    pub skipped_packets: u64,
    /// Entries pushed out of a full table (`max_pending`), oldest first.
    pub pending_evicted: u64,
    /// The part of `pending_evicted` that were questions still unanswered: no record.
    pub evicted_unanswered: u64,
}

/// Whose question it is, for retries: the process, or the socket when the pid is unknown.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Owner {
    Pid(u32),
    Socket(u64),
}

/// A question as a retry repeats it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct QuestionKey {
    owner: Owner,
    server: SocketAddr,
    qtype: u16,
    /// Lowercase.
    name: String,
}

/// One attempt, as its answer names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AttemptKey {
    cookie: u64,
    server: SocketAddr,
    id: u16,
    qtype: u16,
    /// Lowercase.
    name: String,
}

impl AttemptKey {
    fn of(p: &Packet, q: &Question) -> AttemptKey {
        AttemptKey {
            cookie: p.cookie,
            server: p.remote,
            id: p.message.header.id,
            qtype: q.qtype,
            name: q.name.to_ascii_lowercase(),
        }
    }
}

/// The socket side of an attempt or an answer: what the record reports of it.
#[derive(Clone, Copy, Debug)]
struct Via {
    transport: Transport,
    local: SocketAddr,
    id: u16,
}

impl Via {
    fn of(p: &Packet) -> Via {
        Via {
            transport: p.transport,
            local: p.local,
            id: p.message.header.id,
        }
    }
}

#[derive(Clone, Debug)]
struct Answer {
    ts_ns: u64,
    via: Via,
    rcode: u16,
    answer_count: u16,
    addresses: Vec<IpAddr>,
}

impl Answer {
    fn of(p: &Packet) -> Answer {
        Answer {
            ts_ns: p.ts_ns,
            via: Via::of(p),
            rcode: p.message.rcode(),
            answer_count: p.message.header.answers,
            addresses: p.message.addresses().collect(),
        }
    }
}

/// A question in flight, or a tombstone (`timed_out`).
#[derive(Debug)]
struct Lookup {
    key: QuestionKey,
    /// As first sent.
    name: String,
    qtype: u16,
    pid: Option<u32>,
    comm: Option<String>,
    cgroup_id: Option<u64>,
    first_ns: u64,
    /// When this state ends: timeout, end of the truncation hold or of the tombstone.
    deadline_ns: u64,
    last: Via,
    attempts: VecDeque<AttemptKey>,
    retries: u32,
    /// A truncated UDP answer, kept until the TCP retry answers.
    truncated: Option<Answer>,
    /// The question went out over TCP after a truncated answer.
    after_truncation: bool,
    timed_out: bool,
    walk: Option<WalkRef>,
}

impl Lookup {
    fn record(&self, clock: &Clock, answer: Option<Answer>) -> DnsRecord {
        let via = answer.as_ref().map_or(self.last, |a| a.via);
        let (rcode, answer_count, addresses, latency_us) = match answer {
            Some(a) => (
                Some(rcode_name(a.rcode)),
                a.answer_count,
                a.addresses,
                Some(a.ts_ns.saturating_sub(self.first_ns) as f64 / 1_000.0),
            ),
            None => (None, 0, Vec::new(), None),
        };
        DnsRecord {
            timestamp_unix_ns: clock.unix_ns(self.first_ns),
            outcome: match rcode {
                Some(_) => DnsOutcome::Answered,
                None => DnsOutcome::Timeout,
            },
            pid: self.pid,
            comm: self.comm.clone(),
            cgroup_id: self.cgroup_id,
            transport: via.transport,
            local: via.local,
            server: self.key.server,
            id: via.id,
            query_name: self.name.clone(),
            query_type: qtype_name(self.qtype),
            rcode,
            answer_count,
            addresses,
            latency_us,
            retries: self.retries,
            // The truncated UDP answer itself is not the TCP answer.
            after_truncation: self.after_truncation && via.transport == Transport::Tcp,
            search: None,
        }
    }
}

#[derive(Debug)]
enum Entry {
    Lookup(Lookup),
    Held(Held),
}

#[derive(Debug)]
pub struct Joiner {
    config: JoinConfig,
    /// Every entry by the order its question was first seen: the first is the oldest.
    table: BTreeMap<u64, Entry>,
    questions: HashMap<QuestionKey, u64>,
    attempts: HashMap<AttemptKey, u64>,
    walks: Walks,
    next_seq: u64,
    /// The lookups' deadlines (deadline, entry), soonest first.
    deadlines: BTreeSet<(u64, u64)>,
    /// No walk's hold ends before this (holds only move later): `expire` before it has
    /// no walk to look at. None: no hold at all.
    next_walk_due: Option<u64>,
    stats: JoinStats,
}

impl Joiner {
    pub fn new(config: JoinConfig) -> Joiner {
        Joiner {
            config,
            table: BTreeMap::new(),
            questions: HashMap::new(),
            attempts: HashMap::new(),
            walks: Walks::default(),
            next_seq: 0,
            deadlines: BTreeSet::new(),
            next_walk_due: None,
            stats: JoinStats::default(),
        }
    }

    /// New deadlines use the new timeout; a smaller bound applies at the next question.
    pub fn set_config(&mut self, config: JoinConfig) {
        self.config = config;
    }

    pub fn stats(&self) -> JoinStats {
        JoinStats {
            pending: self.table.len() as u64,
            ..self.stats.clone()
        }
    }

    /// A query (QR=0) sent, or a response (QR=1) received; records that complete go to `out`.
    pub fn packet(&mut self, p: Packet, clock: &Clock, out: &mut Vec<DnsRecord>) {
        // What was due before this packet happens first, whatever the timer's pace.
        self.expire(p.ts_ns, clock, out);
        let Some(q) = p.message.questions.first() else {
            self.stats.skipped_packets += 1;
            return;
        };
        match (p.egress, p.message.header.response) {
            (true, false) => self.query(&p, q, clock, out),
            (false, true) => self.response(&p, q, clock, out),
            _ => self.stats.skipped_packets += 1,
        }
    }

    /// Questions with no answer `timeout` after their last attempt, and held records whose
    /// hold ended; called on a timer and at stop with `u64::MAX` (flush).
    pub fn expire(&mut self, now_ns: u64, clock: &Clock, out: &mut Vec<DnsRecord>) {
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now_ns {
                break;
            }
            self.deadlines.pop_first();
            self.lookup_due(seq, clock, out);
        }
        if self.next_walk_due.is_some_and(|due| due <= now_ns) {
            self.expire_walks(now_ns, out);
            self.next_walk_due = self.walks.hold_ends().min();
        }
    }

    fn timeout_ns(&self) -> u64 {
        u64::try_from(self.config.timeout.as_nanos()).unwrap_or(u64::MAX)
    }

    fn walk_due_at(&mut self, hold_end_ns: u64) {
        self.next_walk_due = Some(
            self.next_walk_due
                .map_or(hold_end_ns, |d| d.min(hold_end_ns)),
        );
    }

    fn query(&mut self, p: &Packet, q: &Question, clock: &Clock, out: &mut Vec<DnsRecord>) {
        let key = QuestionKey {
            owner: p.pid.map_or(Owner::Socket(p.cookie), Owner::Pid),
            server: p.remote,
            qtype: q.qtype,
            name: q.name.to_ascii_lowercase(),
        };
        let attempt = AttemptKey::of(p, q);
        let timeout = self.timeout_ns();
        if let Some(&seq) = self.questions.get(&key) {
            if let Some(Entry::Lookup(l)) = self.table.get_mut(&seq) {
                if l.truncated.is_some() && p.transport == Transport::Tcp && !l.after_truncation {
                    // Asked again over TCP after a truncated answer: not a retry.
                    l.after_truncation = true;
                } else {
                    l.retries += 1;
                    self.stats.retries += 1;
                }
                if l.timed_out {
                    self.stats.attempts_after_timeout += 1;
                } else {
                    set_deadline(&mut self.deadlines, l, seq, p.ts_ns.saturating_add(timeout));
                }
                l.last = Via::of(p);
                add_attempt(&mut self.attempts, l, attempt, seq);
                return;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stats.lookups += 1;
        let walk = self.walk_question(p.pid, &q.name, q.qtype, seq, p.ts_ns, out);
        let mut lookup = Lookup {
            key: key.clone(),
            name: q.name.clone(),
            qtype: q.qtype,
            pid: p.pid,
            comm: p.comm.clone(),
            cgroup_id: p.cgroup_id,
            first_ns: p.ts_ns,
            deadline_ns: p.ts_ns.saturating_add(timeout),
            last: Via::of(p),
            attempts: VecDeque::new(),
            retries: 0,
            truncated: None,
            after_truncation: false,
            timed_out: false,
            walk,
        };
        add_attempt(&mut self.attempts, &mut lookup, attempt, seq);
        self.deadlines.insert((lookup.deadline_ns, seq));
        self.questions.insert(key, seq);
        self.table.insert(seq, Entry::Lookup(lookup));
        self.enforce_bound(clock, out);
    }

    fn response(&mut self, p: &Packet, q: &Question, clock: &Clock, out: &mut Vec<DnsRecord>) {
        let timeout = self.timeout_ns();
        let seq = self.attempts.get(&AttemptKey::of(p, q)).copied();
        let Some((seq, Entry::Lookup(l))) = seq.and_then(|s| Some(s).zip(self.table.get_mut(&s)))
        else {
            self.stats.unmatched_responses += 1;
            return;
        };
        let answer = Answer::of(p);
        if p.message.header.truncated && p.transport == Transport::Udp && !l.timed_out {
            // Not the end: the resolver asks again over TCP.
            l.truncated = Some(answer);
            set_deadline(&mut self.deadlines, l, seq, p.ts_ns.saturating_add(timeout));
            return;
        }
        let Some(Entry::Lookup(l)) = self.table.remove(&seq) else {
            return;
        };
        self.unindex(&l, seq);
        let record = l.record(clock, Some(answer));
        self.stats.answered += 1;
        if l.timed_out {
            self.stats.late_answers += 1;
            out.push(record);
            return;
        }
        let nxdomain = p.message.rcode() == RCODE_NXDOMAIN;
        self.walk_finish(seq, l.walk, l.qtype, record, nxdomain, p.ts_ns, out);
    }

    /// The lookup at `seq` reached its deadline.
    fn lookup_due(&mut self, seq: u64, clock: &Clock, out: &mut Vec<DnsRecord>) {
        if !matches!(self.table.get(&seq), Some(Entry::Lookup(_))) {
            return;
        }
        let Some(Entry::Lookup(mut l)) = self.table.remove(&seq) else {
            return;
        };
        if l.timed_out {
            self.unindex(&l, seq);
            return;
        }
        if !l.after_truncation {
            if let Some(answer) = l.truncated.take() {
                // No TCP retry came: the truncated answer is the lookup's answer.
                self.unindex(&l, seq);
                let nxdomain = answer.rcode == RCODE_NXDOMAIN;
                let record = l.record(clock, Some(answer));
                self.stats.answered += 1;
                self.walk_finish(seq, l.walk, l.qtype, record, nxdomain, l.deadline_ns, out);
                return;
            }
        }
        let record = l.record(clock, None);
        self.stats.timeouts += 1;
        let (walk, timed_out_at) = (l.walk.take(), l.deadline_ns);
        l.timed_out = true;
        let tombstone_end = timed_out_at.saturating_add(self.timeout_ns());
        set_deadline(&mut self.deadlines, &mut l, seq, tombstone_end);
        let qtype = l.qtype;
        self.table.insert(seq, Entry::Lookup(l));
        self.walk_finish(seq, walk, qtype, record, false, timed_out_at, out);
    }

    /// Forgets a lookup that left the table.
    fn unindex(&mut self, l: &Lookup, seq: u64) {
        self.deadlines.remove(&(l.deadline_ns, seq));
        if self.questions.get(&l.key) == Some(&seq) {
            self.questions.remove(&l.key);
        }
        for a in &l.attempts {
            if self.attempts.get(a) == Some(&seq) {
                self.attempts.remove(a);
            }
        }
    }

    /// Evicts the oldest entries beyond `max_pending`, counting each.
    fn enforce_bound(&mut self, clock: &Clock, out: &mut Vec<DnsRecord>) {
        while self.table.len() > self.config.max_pending.max(1) {
            let Some((seq, entry)) = self.table.pop_first() else {
                return;
            };
            self.stats.pending_evicted += 1;
            match entry {
                Entry::Lookup(mut l) => {
                    self.unindex(&l, seq);
                    self.walk_member_gone(l.walk.as_ref());
                    if l.timed_out {
                        // Its timeout was reported.
                    } else if let Some(answer) = l.truncated.take() {
                        out.push(l.record(clock, Some(answer)));
                        self.stats.answered += 1;
                    } else {
                        self.stats.evicted_unanswered += 1;
                    }
                }
                Entry::Held(held) => self.release_evicted(seq, held, out),
            }
        }
    }
}

fn set_deadline(deadlines: &mut BTreeSet<(u64, u64)>, l: &mut Lookup, seq: u64, at_ns: u64) {
    deadlines.remove(&(l.deadline_ns, seq));
    l.deadline_ns = at_ns;
    deadlines.insert((at_ns, seq));
}

fn add_attempt(
    index: &mut HashMap<AttemptKey, u64>,
    l: &mut Lookup,
    attempt: AttemptKey,
    seq: u64,
) {
    // glibc retries with the same id on the same socket: one key.
    if l.attempts.contains(&attempt) {
        return;
    }
    if l.attempts.len() == MAX_ATTEMPTS {
        if let Some(old) = l.attempts.pop_front() {
            if index.get(&old) == Some(&seq) {
                index.remove(&old);
            }
        }
    }
    index.insert(attempt.clone(), seq);
    l.attempts.push_back(attempt);
}
