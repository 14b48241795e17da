//! Folding failures into incidents. Pure: the caller passes the time (unix ns) and gets
//! the records to publish back.
//!
//! An incident is the run of failures of one cause from one source workload to one
//! target with no gap of `window` or more. It is reported at its first failure, updated
//! at most once per `update_interval` while it changes, and closed after `window` without
//! a failure, at the first success of its kind from the same source to the same target,
//! or when the agent stops. At most `max_open` are open; failures that would open one
//! more are counted as overflow.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use serde::Serialize;

use super::{
    classify::{Cause, Recovery},
    record::{human_duration, thousands, Affected, Ending, IncidentState, RcaRecord},
};

/// Processes listed per incident at most.
pub const MAX_AFFECTED: usize = 8;
/// Sample connection ids per incident at most.
pub const MAX_SAMPLES: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub window: Duration,
    pub update_interval: Duration,
    pub max_open: usize,
}

/// A source or target name, shared: a storm names its pair once, not per failure.
pub type Label = Arc<str>;

/// One failure, with its source and target already named.
#[derive(Clone, Debug)]
pub struct Failure {
    pub cause: &'static Cause,
    pub sentence: String,
    pub source: Label,
    pub target: Label,
    pub target_address: Option<SocketAddr>,
    pub seen_unix_ns: u64,
    /// The failures happened over this long before `seen_unix_ns` (error bursts).
    pub over_ns: u64,
    pub weight: u64,
    pub affected: Affected,
    pub cgroup_id: Option<u64>,
    pub conn_id: Option<u64>,
}

/// Counters, reported in the agent's status (`sinks.rca`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    pub open: usize,
    pub opened: u64,
    pub updated: u64,
    pub closed: u64,
    /// Closed by a success (part of `closed`).
    pub recovered: u64,
    /// Failures folded into incidents.
    pub failures: u64,
    /// Failures not folded because `max_open` incidents were open.
    pub overflow: u64,
    /// Incident records published (open, update, closed).
    pub records_out: u64,
}

struct Incident {
    record: RcaRecord,
    /// Engine time of the last failure and of the last record published.
    last_failure_at: u64,
    last_report_at: u64,
    changed: bool,
}

pub struct Engine {
    settings: Settings,
    /// (source, target) → the incidents between them, one per cause.
    open: HashMap<(Label, Label), Vec<Incident>, foldhash::fast::RandomState>,
    open_count: usize,
    next_id: u64,
    stats: EngineStats,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

impl Engine {
    pub fn new(settings: Settings) -> Engine {
        Engine {
            settings,
            open: HashMap::default(),
            open_count: 0,
            next_id: 1,
            stats: EngineStats::default(),
        }
    }

    /// New settings apply from now on to open incidents too; lowering `max_open` below
    /// the open count closes none, new ones overflow until enough have closed.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            open: self.open_count,
            ..self.stats.clone()
        }
    }

    pub fn open_count(&self) -> usize {
        self.open_count
    }

    /// Folds one failure; publishes the incident's open (or a due update) at once.
    pub fn failure(&mut self, f: Failure, now: u64, out: &mut Vec<RcaRecord>) {
        let window = ns(self.settings.window);
        let update_interval = ns(self.settings.update_interval);
        let key = (f.source.clone(), f.target.clone());
        let mut ended = None;
        if let Some(list) = self.open.get_mut(&key) {
            if let Some(i) = list.iter().position(|inc| inc.record.cause == f.cause.code) {
                if now.saturating_sub(list[i].last_failure_at) >= window {
                    // Quiet long enough: that incident ended before this failure.
                    ended = Some(close(list.swap_remove(i), Ending::Quiet, now, window));
                } else {
                    let inc = &mut list[i];
                    let weight = f.weight;
                    fold(inc, f);
                    inc.last_failure_at = now;
                    self.stats.failures += weight;
                    if now.saturating_sub(inc.last_report_at) >= update_interval {
                        out.push(report(inc, IncidentState::Update, now));
                        self.stats.updated += 1;
                        self.stats.records_out += 1;
                    }
                    return;
                }
            }
        }
        if let Some(rec) = ended {
            self.open_count -= 1;
            self.count_close(&rec);
            out.push(rec);
        }
        if self.open_count >= self.settings.max_open {
            self.stats.overflow += f.weight;
            return;
        }
        let (source, target) = key;
        let record = RcaRecord {
            incident_id: self.next_id,
            state: IncidentState::Open,
            timestamp_unix_ns: now,
            first_seen_unix_ns: f.seen_unix_ns.saturating_sub(f.over_ns),
            last_seen_unix_ns: f.seen_unix_ns,
            count: f.weight,
            cause: f.cause.code,
            family: f.cause.family,
            sentence: f.sentence,
            source: source.to_string(),
            target: target.to_string(),
            target_address: f.target_address,
            pid: f.affected.pid,
            cgroup_id: f.cgroup_id,
            affected: vec![f.affected],
            affected_omitted: 0,
            sample_conn_ids: f.conn_id.into_iter().collect(),
            ended: None,
            summary: None,
        };
        self.next_id += 1;
        self.open_count += 1;
        self.stats.opened += 1;
        self.stats.failures += f.weight;
        self.stats.records_out += 1;
        out.push(record.clone());
        self.open
            .entry((source, target))
            .or_default()
            .push(Incident {
                record,
                last_failure_at: now,
                last_report_at: now,
                changed: false,
            });
    }

    /// A success from `source` to `target`: closes the incidents it recovers.
    pub fn success(
        &mut self,
        source: Label,
        target: Label,
        recovery: Recovery,
        seen_unix_ns: u64,
        now: u64,
        out: &mut Vec<RcaRecord>,
    ) {
        let key = (source, target);
        let Some(list) = self.open.get_mut(&key) else {
            return;
        };
        let mut closed = Vec::new();
        let mut i = 0;
        while i < list.len() {
            if recovers(recovery, &list[i].record) {
                let mut inc = list.swap_remove(i);
                inc.record.last_seen_unix_ns = inc.record.last_seen_unix_ns.max(seen_unix_ns);
                closed.push(close(inc, Ending::Recovered, now, 0));
            } else {
                i += 1;
            }
        }
        if list.is_empty() {
            self.open.remove(&key);
        }
        for rec in closed {
            self.open_count -= 1;
            self.count_close(&rec);
            out.push(rec);
        }
    }

    /// Periodic: due updates, and closes after the quiet period.
    pub fn tick(&mut self, now: u64, out: &mut Vec<RcaRecord>) {
        let window = ns(self.settings.window);
        let update_interval = ns(self.settings.update_interval);
        let before = out.len();
        self.open.retain(|_, list| {
            let mut i = 0;
            while i < list.len() {
                let inc = &mut list[i];
                if now.saturating_sub(inc.last_failure_at) >= window {
                    out.push(close(list.swap_remove(i), Ending::Quiet, now, window));
                    continue;
                }
                if inc.changed && now.saturating_sub(inc.last_report_at) >= update_interval {
                    out.push(report(inc, IncidentState::Update, now));
                }
                i += 1;
            }
            !list.is_empty()
        });
        for rec in &out[before..] {
            match rec.state {
                IncidentState::Closed => {
                    self.open_count -= 1;
                    self.stats.closed += 1;
                }
                _ => self.stats.updated += 1,
            }
            self.stats.records_out += 1;
        }
    }

    /// Closes every open incident (the agent stops).
    pub fn close_all(&mut self, now: u64, out: &mut Vec<RcaRecord>) {
        for (_, list) in self.open.drain() {
            for inc in list {
                let rec = close(inc, Ending::AgentStopped, now, 0);
                self.stats.closed += 1;
                self.stats.records_out += 1;
                out.push(rec);
            }
        }
        self.open_count = 0;
    }

    fn count_close(&mut self, rec: &RcaRecord) {
        self.stats.closed += 1;
        self.stats.records_out += 1;
        if rec.ended == Some(Ending::Recovered) {
            self.stats.recovered += 1;
        }
    }
}

fn recovers(recovery: Recovery, record: &RcaRecord) -> bool {
    recovery != Recovery::QUIET_ONLY
        && super::classify::all_causes().any(|c| c.code == record.cause && c.recovery == recovery)
}

fn fold(inc: &mut Incident, f: Failure) {
    let r = &mut inc.record;
    r.count += f.weight;
    let seen = f.seen_unix_ns;
    r.first_seen_unix_ns = r.first_seen_unix_ns.min(seen.saturating_sub(f.over_ns));
    r.last_seen_unix_ns = r.last_seen_unix_ns.max(seen);
    // The latest wording (a timed-out connect's retransmit count may change).
    if r.sentence != f.sentence {
        r.sentence = f.sentence;
    }
    if !r.affected.contains(&f.affected) {
        if r.affected.len() < MAX_AFFECTED {
            r.affected.push(f.affected);
        } else {
            r.affected_omitted += f.weight;
        }
    }
    if let Some(id) = f.conn_id {
        if r.sample_conn_ids.len() < MAX_SAMPLES {
            r.sample_conn_ids.push(id);
        }
    }
    inc.changed = true;
}

fn report(inc: &mut Incident, state: IncidentState, now: u64) -> RcaRecord {
    inc.changed = false;
    inc.last_report_at = now;
    let mut r = inc.record.clone();
    r.state = state;
    r.timestamp_unix_ns = now;
    r
}

fn close(mut inc: Incident, ending: Ending, now: u64, window: u64) -> RcaRecord {
    let r = &inc.record;
    let failures = format!(
        "{} failure{} over {}",
        thousands(r.count),
        if r.count == 1 { "" } else { "s" },
        human_duration(r.span_ns())
    );
    let summary = match ending {
        Ending::Recovered => format!("recovered after {failures}"),
        Ending::Quiet => format!("quiet for {} after {failures}", human_duration(window)),
        Ending::AgentStopped => format!("still failing when the agent stopped, {failures}"),
    };
    inc.record.ended = Some(ending);
    inc.record.summary = Some(summary);
    report(&mut inc, IncidentState::Closed, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        syscalls::sinks::FD_LIMIT,
        tcp::sinks::{REFUSED, TIMED_OUT},
    };

    const S: u64 = 1_000_000_000;

    fn settings() -> Settings {
        Settings {
            window: Duration::from_secs(10),
            update_interval: Duration::from_secs(2),
            max_open: 3,
        }
    }

    fn failure(cause: &'static Cause, target: &str, pid: u32, at: u64) -> Failure {
        Failure {
            cause,
            sentence: format!("{} happened", cause.code),
            source: "process curl".into(),
            target: target.into(),
            target_address: target.parse().ok(),
            seen_unix_ns: at,
            over_ns: 0,
            weight: 1,
            affected: Affected {
                pid: Some(pid),
                comm: Some("curl".into()),
                workload: None,
            },
            cgroup_id: None,
            conn_id: Some(at),
        }
    }

    #[test]
    fn a_storm_is_one_incident_opened_at_once_and_updated_at_most_per_interval() {
        let mut e = Engine::new(settings());
        let mut out = Vec::new();
        // 300 refused connects over 3 s.
        for i in 0..300u64 {
            let t = 100 * S + i * 10_000_000;
            e.failure(failure(&REFUSED, "10.0.3.7:443", 42, t), t, &mut out);
            if i == 0 {
                assert_eq!(out.len(), 1, "opened at the first failure");
                assert_eq!(out[0].state, IncidentState::Open);
                assert_eq!(out[0].count, 1);
            }
            e.tick(t, &mut out);
        }
        let updates = out
            .iter()
            .filter(|r| r.state == IncidentState::Update)
            .count();
        assert_eq!(updates, 1, "3 s of failures, one update per 2 s: {out:#?}");
        assert!(out.iter().all(|r| r.incident_id == 1));
        assert_eq!(out[0].affected.len(), 1);
        // The quiet period closes it, with every failure counted.
        out.clear();
        e.tick(102 * S + 990_000_000 + 10 * S, &mut out);
        assert_eq!(out.len(), 1);
        let closed = &out[0];
        assert_eq!(closed.state, IncidentState::Closed);
        assert_eq!(closed.ended, Some(Ending::Quiet));
        assert_eq!(closed.count, 300);
        assert_eq!(closed.sample_conn_ids.len(), MAX_SAMPLES);
        assert_eq!(e.stats().open, 0);
        assert_eq!(e.stats().failures, 300);
    }

    #[test]
    fn no_update_without_change() {
        let mut e = Engine::new(settings());
        let mut out = Vec::new();
        e.failure(failure(&REFUSED, "a:1", 1, S), S, &mut out);
        e.tick(5 * S, &mut out);
        assert_eq!(out.len(), 1, "only the open: nothing changed");
        e.failure(failure(&REFUSED, "a:1", 1, 6 * S), 6 * S, &mut out);
        assert_eq!(
            out.len(),
            2,
            "due at once: the last report is older than the interval"
        );
        assert_eq!(out[1].count, 2);
    }

    #[test]
    fn first_success_to_the_same_target_recovers() {
        let mut e = Engine::new(settings());
        let mut out = Vec::new();
        for i in 0..5000u64 {
            let t = S + i * 2_400_000;
            e.failure(failure(&REFUSED, "10.0.3.7:443", 42, t), t, &mut out);
        }
        out.clear();
        // A success elsewhere, or of another kind, changes nothing.
        e.success(
            "process curl".into(),
            "10.0.3.8:443".into(),
            crate::tcp::sinks::CONNECTED,
            13 * S,
            13 * S,
            &mut out,
        );
        e.success(
            "process curl".into(),
            "10.0.3.7:443".into(),
            crate::tls::sinks::HANDSHAKE,
            13 * S,
            13 * S,
            &mut out,
        );
        assert!(out.is_empty());
        e.success(
            "process curl".into(),
            "10.0.3.7:443".into(),
            crate::tcp::sinks::CONNECTED,
            13 * S,
            13 * S,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ended, Some(Ending::Recovered));
        assert_eq!(
            out[0].summary.as_deref(),
            Some("recovered after 5,000 failures over 12 s")
        );
        assert_eq!(e.stats().recovered, 1);
        assert_eq!(e.open_count(), 0);
    }

    #[test]
    fn causes_and_targets_are_separate_incidents() {
        let mut e = Engine::new(settings());
        let mut out = Vec::new();
        e.failure(failure(&REFUSED, "a:1", 1, S), S, &mut out);
        e.failure(failure(&TIMED_OUT, "a:1", 1, S), S, &mut out);
        e.failure(failure(&REFUSED, "b:1", 1, S), S, &mut out);
        e.failure(failure(&REFUSED, "a:1", 2, S), S, &mut out);
        assert_eq!(e.open_count(), 3);
        assert_eq!(out.len(), 3);
        // A syscall incident never recovers by a success.
        e.failure(failure(&FD_LIMIT, "openat", 1, S), S, &mut out);
        assert_eq!(
            e.stats().overflow,
            1,
            "max_open 3: the 4th incident overflows, counted"
        );
    }

    #[test]
    fn a_gap_of_the_window_starts_a_new_incident() {
        let mut e = Engine::new(settings());
        let mut out = Vec::new();
        e.failure(failure(&REFUSED, "a:1", 1, S), S, &mut out);
        e.failure(failure(&REFUSED, "a:1", 1, 20 * S), 20 * S, &mut out);
        assert_eq!(out.len(), 3, "open, closed (quiet), open: {out:#?}");
        assert_eq!(out[1].ended, Some(Ending::Quiet));
        assert_eq!(out[2].incident_id, 2);
    }

    #[test]
    fn affected_processes_are_bounded() {
        let mut e = Engine::new(settings());
        let mut out = Vec::new();
        for pid in 0..20 {
            e.failure(failure(&REFUSED, "a:1", pid, S), S, &mut out);
        }
        e.close_all(2 * S, &mut out);
        let last = out.last().unwrap();
        assert_eq!(last.affected.len(), MAX_AFFECTED);
        assert_eq!(last.affected_omitted, 12);
        assert_eq!(last.ended, Some(Ending::AgentStopped));
        assert_eq!(e.stats().closed, 1);
    }
}
