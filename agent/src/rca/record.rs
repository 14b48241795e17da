//! The `rca` record: one incident (a run of failures of one cause between one source
//! workload and one target), as opened, updated and closed by the engine.

use std::net::SocketAddr;

use serde::Serialize;

use crate::events::format_time_of_day;

/// Where an incident is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// Reported at the first failure, without waiting.
    Open,
    /// More failures since the last report (at most one per `rca.update_interval`).
    Update,
    /// Ended: see `ended`.
    Closed,
}

impl IncidentState {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Update => "update",
            IncidentState::Closed => "closed",
        }
    }
}

/// How a closed incident ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// No failure for `rca.window`.
    Quiet,
    /// The first success from the same source to the same target.
    Recovered,
    /// The agent stopped while the incident was open.
    AgentStopped,
}

/// One process (or pod) the incident's failures came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Affected {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// `pod <ns>/<name> <container>` or `container <id>` when the process runs in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RcaRecord {
    /// Unique within one agent run; the same on an incident's open, updates and close.
    pub incident_id: u64,
    pub state: IncidentState,
    /// When this record was made.
    pub timestamp_unix_ns: u64,
    pub first_seen_unix_ns: u64,
    pub last_seen_unix_ns: u64,
    /// Failures folded into the incident so far.
    pub count: u64,
    /// Stable snake_case code (docs/rca.md lists them all).
    pub cause: &'static str,
    /// `tcp`, `tls`, `dns` or `syscalls`.
    pub family: &'static str,
    /// One plain sentence saying what happened and what it means.
    pub sentence: String,
    /// `pod <ns>/<name>`, `container <id>` or `process <comm>`.
    pub source: String,
    /// `service <ns>/<name>:<port>`, `pod <ns>/<name>:<port>`, `<address>:<port>`, or a
    /// syscall name for syscall error bursts.
    pub target: String,
    /// The remote address, for network incidents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_address: Option<SocketAddr>,
    /// The processes the failures came from (at most [`super::engine::MAX_AFFECTED`]).
    pub affected: Vec<Affected>,
    /// Processes beyond the list.
    #[serde(skip_serializing_if = "is_zero")]
    pub affected_omitted: u64,
    /// Connection ids of some failures, to find their own records.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sample_conn_ids: Vec<u64>,
    /// At close: how it ended, and a summary ("recovered after 5,000 failures over 12 s").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ending>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The first failing process and its cgroup: the record's identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `5000` → `5,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration for people: `850 ms`, `4.2 s`, `12 s`, `3 min`, `2.5 h`, `3 days`.
pub fn human_duration(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7_200.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3_600.0)
    } else {
        format!("{:.0} days", s / 86_400.0)
    }
}

impl RcaRecord {
    pub fn span_ns(&self) -> u64 {
        self.last_seen_unix_ns
            .saturating_sub(self.first_seen_unix_ns)
    }
}

impl std::fmt::Display for RcaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} RCA {:<6} {}  {} → {}  ×{} in {}: {}",
            format_time_of_day(self.timestamp_unix_ns),
            self.state.as_str(),
            self.cause,
            self.source,
            self.target,
            thousands(self.count),
            human_duration(self.span_ns()),
            self.sentence
        )?;
        if let Some(s) = &self.summary {
            write!(f, "; {s}")?;
        }
        write!(f, " [incident {}]", self.incident_id)
    }
}

// ---- what the sinks make of an incident ---------------------------------------------

impl crate::events::RecordView for RcaRecord {
    /// The first failing process of the incident.
    fn about(&self) -> crate::events::view::About {
        crate::events::view::About {
            kind: "rca",
            time_unix_ns: self.timestamp_unix_ns,
            subject: crate::metadata::Subject {
                pid: self.pid,
                cgroup_id: self.cgroup_id,
            },
        }
    }

    fn heap_bytes(&self) -> usize {
        use crate::events::view::{list_bytes, opt_bytes};
        self.sentence.capacity()
            + self.source.capacity()
            + self.target.capacity()
            + opt_bytes(&self.summary)
            + list_bytes(&self.affected, |a| {
                opt_bytes(&a.comm) + opt_bytes(&a.workload)
            })
            + list_bytes(&self.sample_conn_ids, |_| 0)
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.target_address
    }
}

/// Incidents are logs; each of their failures is counted from its own record.
impl crate::export::metrics::Measure for RcaRecord {}
impl crate::export::spans::Traced for RcaRecord {}
/// Our own output: not a failure to fold again.
impl crate::rca::classify::Classify for RcaRecord {}

impl crate::api::filter::Filtered for RcaRecord {
    fn is_failure(&self) -> bool {
        true
    }

    fn reasons(&self) -> Vec<&str> {
        vec![self.cause]
    }
}

impl crate::export::logs::Logged for RcaRecord {
    /// `hostscope.rca.incident`: warn while open, info once closed.
    fn log_entry(&self) -> Option<crate::export::logs::LogEntry> {
        use crate::export::resource::{int_value, kv, str_value};
        use opentelemetry_proto::tonic::logs::v1::SeverityNumber;
        let r = self;
        let mut a = vec![
            kv("error.type", str_value(r.cause)),
            kv("hostscope.rca.incident_id", int_value(r.incident_id as i64)),
            kv("hostscope.rca.state", str_value(r.state.as_str())),
            kv("hostscope.rca.count", int_value(r.count as i64)),
            kv("hostscope.rca.family", str_value(r.family)),
            kv("hostscope.rca.source", str_value(&r.source)),
            kv("hostscope.rca.target", str_value(&r.target)),
            kv(
                "hostscope.rca.first_seen_unix_ns",
                int_value(r.first_seen_unix_ns as i64),
            ),
            kv(
                "hostscope.rca.last_seen_unix_ns",
                int_value(r.last_seen_unix_ns as i64),
            ),
        ];
        if let Some(t) = r.target_address {
            a.push(kv("network.peer.address", str_value(t.ip().to_string())));
            a.push(kv("network.peer.port", int_value(t.port() as i64)));
        } else if r.family == "syscalls" {
            a.push(kv("syscall.name", str_value(&r.target)));
        }
        if let Some(pid) = r.pid {
            a.push(kv("process.pid", int_value(pid as i64)));
        }
        if let Some(comm) = r.affected.first().and_then(|p| p.comm.as_deref()) {
            a.push(kv("process.executable.name", str_value(comm)));
        }
        if let Some(s) = &r.summary {
            a.push(kv("hostscope.rca.summary", str_value(s)));
        }
        let severity = match r.state {
            IncidentState::Closed => SeverityNumber::Info,
            _ => SeverityNumber::Warn,
        };
        Some(crate::export::logs::LogEntry {
            time_unix_ns: r.timestamp_unix_ns,
            severity,
            event: "hostscope.rca.incident",
            body: r.sentence.clone(),
            attributes: a,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(thousands(5_000), "5,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human_duration(4_200_000_000), "4.2 s");
        assert_eq!(human_duration(12_000_000_000), "12 s");
        assert_eq!(human_duration(3 * 86_400_000_000_000), "3 days");
    }
}
