//! What the sinks make of TCP records: metrics, failure logs and spans, RCA causes and
//! recoveries, the API filter's failures.

use opentelemetry_proto::tonic::{
    logs::v1::SeverityNumber,
    trace::v1::{span::SpanKind, status::StatusCode, Span, Status},
};

use crate::{
    api::filter::Filtered,
    events::{
        tcp::{Direction, FailureReason, TcpEventKind, TcpRecord},
        view::{opt_bytes, About},
        RecordView,
    },
    export::{
        logs::{LogEntry, Logged},
        metrics::{int, text, Key, Measure, Meter, MetricDef},
        resource::{int_value, kv, network_type_kv, str_value, tcp_endpoint_kvs},
        spans::{ids, start_of, Traced},
    },
    metadata::Subject,
    rca::classify::{Cause, Classified, Classify, KnownCertificate, Recovery, Success, Target},
};

pub static CONNECT_DURATION: MetricDef = MetricDef::histogram(
    "tcp.connect.duration",
    "s",
    &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ],
    "Active connect latency, SYN sent to established (SYN retransmits land at 1 s, 3 s, ...).",
);
pub static CONNECT_FAILURES: MetricDef = MetricDef::counter(
    "tcp.connect.failures",
    "{connection}",
    "Connects that failed, by reason (error.type: refused, timed_out, unreachable, ...).",
);
pub static SYN_RETRANSMITS: MetricDef = MetricDef::counter(
    "tcp.connect.syn_retransmits",
    "{segment}",
    "SYNs retransmitted before a connect succeeded or failed.",
);
pub static RTT: MetricDef = MetricDef::histogram(
    "tcp.rtt",
    "s",
    &[
        0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ],
    "Smoothed round-trip time of a connection at close.",
);
pub static RETRANSMITS: MetricDef = MetricDef::counter(
    "tcp.retransmits",
    "{segment}",
    "Segments retransmitted, counted at close.",
);
pub static RESETS: MetricDef = MetricDef::counter(
    "tcp.resets",
    "{reset}",
    "RSTs sent or received (tcp.reset.direction).",
);
pub static CONNECTION_DURATION: MetricDef = MetricDef::histogram(
    "tcp.connection.duration",
    "s",
    &[0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0],
    "Connection lifetime, open to close.",
);
pub static CONNECTION_IO: MetricDef = MetricDef::counter(
    "tcp.connection.io",
    "By",
    "Sequence space acknowledged (transmit) and received (receive), counted at close.",
);

/// The family's metrics (`family::Descriptor::metrics`).
pub static METRICS: &[&MetricDef] = &[
    &CONNECT_DURATION,
    &CONNECT_FAILURES,
    &SYN_RETRANSMITS,
    &RTT,
    &RETRANSMITS,
    &RESETS,
    &CONNECTION_DURATION,
    &CONNECTION_IO,
];

/// An active connect that completed.
pub const CONNECTED: Recovery = Recovery("tcp_connect");
/// A connection that ended without an error.
pub const CLEAN_CLOSE: Recovery = Recovery("tcp_clean_close");

pub static REFUSED: Cause = Cause::new("refused", "tcp", CONNECTED);
pub static TIMED_OUT: Cause = Cause::new("timed_out", "tcp", CONNECTED);
pub static UNREACHABLE: Cause = Cause::new("unreachable", "tcp", CONNECTED);
pub static CONNECT_ERROR: Cause = Cause::new("connect_error", "tcp", CONNECTED);
pub static RESET: Cause = Cause::new("reset", "tcp", CLEAN_CLOSE);

/// The family's causes, in the order docs/rca.md lists them.
pub static CAUSES: &[&Cause] = &[&REFUSED, &TIMED_OUT, &UNREACHABLE, &CONNECT_ERROR, &RESET];

/// `error.type` of a failed connect.
pub fn reason_str(r: FailureReason) -> &'static str {
    match r {
        FailureReason::Refused => "refused",
        FailureReason::TimedOut => "timed_out",
        FailureReason::Unreachable => "unreachable",
        FailureReason::Reset => "reset",
        FailureReason::Aborted => "aborted",
        FailureReason::Error => "error",
    }
}

impl RecordView for TcpRecord {
    fn about(&self) -> About {
        About {
            kind: "tcp",
            time_unix_ns: self.timestamp_unix_ns,
            subject: Subject {
                pid: self.pid,
                cgroup_id: self.cgroup_id,
            },
        }
    }

    fn heap_bytes(&self) -> usize {
        opt_bytes(&self.comm) + opt_bytes(&self.remote_name)
    }

    fn peer(&self) -> Option<std::net::SocketAddr> {
        Some(self.remote)
    }

    fn remote_name(&self) -> Option<&str> {
        self.remote_name.as_deref()
    }
}

impl Measure for TcpRecord {
    fn measure(&self, meter: &mut Meter<'_>) {
        let r = self;
        // The service side's port: bounded by what listens, unlike the client's.
        let (server_port, direction) = match r.direction {
            Direction::Active => (r.remote.port(), "active"),
            Direction::Passive => (r.local.port(), "passive"),
        };
        let mut key: Key = vec![
            text(
                "network.type",
                if r.remote.is_ipv4() { "ipv4" } else { "ipv6" },
            ),
            int("server.port", server_port as i64),
            text("hostscope.tcp.direction", direction),
        ];
        if meter.options().peers {
            key.push(text("network.peer.address", r.remote.ip().to_string()));
        }
        meter.identity_key(&mut key);
        match r.event {
            TcpEventKind::Connect => {
                if let Some(us) = r.connect_latency_us {
                    meter.record(&CONNECT_DURATION, key.clone(), us / 1e6);
                }
                if r.syn_retransmits > 0 {
                    meter.add(&SYN_RETRANSMITS, key, r.syn_retransmits as i64);
                }
            }
            TcpEventKind::ConnectFailed => {
                let mut k = key.clone();
                if let Some(f) = &r.failure {
                    k.push(text("error.type", reason_str(f.reason)));
                }
                meter.add(&CONNECT_FAILURES, k, 1);
                if r.syn_retransmits > 0 {
                    meter.add(&SYN_RETRANSMITS, key, r.syn_retransmits as i64);
                }
            }
            TcpEventKind::Close => {
                if let Some(us) = r.duration_us {
                    meter.record(&CONNECTION_DURATION, key.clone(), us / 1e6);
                }
                if let Some(srtt) = r.srtt_us {
                    meter.record(&RTT, key.clone(), srtt as f64 / 1e6);
                }
                if let Some(n) = r.retransmits {
                    meter.add(&RETRANSMITS, key.clone(), n as i64);
                }
                for (dir, bytes) in [("transmit", r.bytes_acked), ("receive", r.bytes_received)] {
                    if let Some(b) = bytes {
                        let mut k = key.clone();
                        k.push(text("network.io.direction", dir));
                        meter.add(&CONNECTION_IO, k, b as i64);
                    }
                }
            }
            TcpEventKind::ResetSent | TcpEventKind::ResetReceived => {
                let dir = if r.event == TcpEventKind::ResetSent {
                    "sent"
                } else {
                    "received"
                };
                key.push(text("tcp.reset.direction", dir));
                meter.add(&RESETS, key, 1);
            }
        }
    }
}

impl Logged for TcpRecord {
    /// A failed connect (`hostscope.tcp.connect_failed`), unless this side gave up.
    fn log_entry(&self) -> Option<LogEntry> {
        let r = self;
        if r.event != TcpEventKind::ConnectFailed {
            return None;
        }
        let f = r.failure.as_ref()?;
        // Closed locally before an answer: not a network fault.
        if f.reason == FailureReason::Aborted {
            return None;
        }
        let reason = reason_str(f.reason);
        let mut a = vec![kv("error.type", str_value(reason))];
        a.extend(tcp_endpoint_kvs(r));
        if let Some(name) = &r.remote_name {
            a.push(kv("server.address", str_value(name)));
        }
        a.push(kv(
            "hostscope.tcp.syn_retransmits",
            int_value(r.syn_retransmits as i64),
        ));
        if !f.errno_name.is_empty() {
            a.push(kv("hostscope.errno", str_value(f.errno_name)));
        }
        if let Some(pid) = r.pid {
            a.push(kv("process.pid", int_value(pid as i64)));
        }
        if let Some(comm) = &r.comm {
            a.push(kv("process.executable.name", str_value(comm)));
        }
        if let Some(us) = r.duration_us {
            a.push(kv("hostscope.duration_us", int_value(us as i64)));
        }
        let body = match &r.remote_name {
            Some(name) => format!(
                "connect to {} ({name}) {reason} ({})",
                r.remote, f.errno_name
            ),
            None => format!("connect to {} {reason} ({})", r.remote, f.errno_name),
        };
        Some(LogEntry {
            time_unix_ns: r.timestamp_unix_ns,
            severity: SeverityNumber::Warn,
            event: "hostscope.tcp.connect_failed",
            body,
            attributes: a,
        })
    }

    fn failure_log(&self) -> bool {
        self.event == TcpEventKind::ConnectFailed
    }
}

impl Traced for TcpRecord {
    /// A failed connect (`tcp.connect`, error status).
    fn span(&self) -> Option<Span> {
        let r = self;
        if r.event != TcpEventKind::ConnectFailed {
            return None;
        }
        let (trace_id, span_id) = ids();
        let mut attrs = tcp_endpoint_kvs(r);
        attrs.extend([
            network_type_kv(r),
            // The name the process looked the server up as, when the DNS family saw it.
            kv(
                "server.address",
                str_value(
                    r.remote_name
                        .clone()
                        .unwrap_or_else(|| r.remote.ip().to_string()),
                ),
            ),
            kv("server.port", int_value(r.remote.port() as i64)),
            kv(
                "hostscope.tcp.syn_retransmits",
                int_value(r.syn_retransmits as i64),
            ),
        ]);
        if let Some(comm) = &r.comm {
            attrs.push(kv("process.executable.name", str_value(comm)));
        }
        let message = match &r.failure {
            Some(f) => {
                let reason = reason_str(f.reason);
                attrs.push(kv("error.type", str_value(reason)));
                if !f.errno_name.is_empty() {
                    attrs.push(kv("hostscope.errno", str_value(f.errno_name)));
                }
                format!("connect {reason} ({})", f.errno_name)
            }
            None => "connect failed".into(),
        };
        Some(Span {
            trace_id,
            span_id,
            name: "tcp.connect".into(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: start_of(r.timestamp_unix_ns, r.duration_us),
            end_time_unix_nano: r.timestamp_unix_ns,
            attributes: attrs,
            status: Some(Status {
                code: StatusCode::Error as i32,
                message,
            }),
            ..Default::default()
        })
    }
}

impl Classify for TcpRecord {
    /// What we connected to failed us. A reset from one of our clients (passive) has a
    /// new ephemeral port each time: not a target that failures can be folded on.
    fn classify(&self, _cert: Option<&KnownCertificate>) -> Option<Classified> {
        let r = self;
        if r.direction != Direction::Active {
            return None;
        }
        let f = r.failure.as_ref()?;
        let (cause, sentence) = match (r.event, f.reason) {
            (TcpEventKind::ConnectFailed, FailureReason::Refused) => (
                &REFUSED,
                "connect refused — the peer answered with a RST: nothing listens on that port"
                    .to_string(),
            ),
            (TcpEventKind::ConnectFailed, FailureReason::TimedOut) => (
                &TIMED_OUT,
                format!(
                    "connect timed out — no SYN-ACK after {} SYN retransmits: the peer is down or traffic is filtered",
                    r.syn_retransmits
                ),
            ),
            (TcpEventKind::ConnectFailed, FailureReason::Unreachable) => (
                &UNREACHABLE,
                format!(
                    "connect failed — {} unreachable ({}): an ICMP error says there is no route to the peer",
                    if f.errno as i32 == libc::ENETUNREACH { "network" } else { "host" },
                    f.errno_name
                ),
            ),
            (TcpEventKind::ConnectFailed | TcpEventKind::Close, FailureReason::Reset) => (
                &RESET,
                format!(
                    "connection reset by the peer mid-connection ({}): the peer aborted it",
                    f.errno_name
                ),
            ),
            (TcpEventKind::ConnectFailed, FailureReason::Error) => (
                &CONNECT_ERROR,
                format!("connect failed with {} (errno {})", f.errno_name, f.errno),
            ),
            // Aborted locally (no fault on the path), or a close that ended otherwise.
            _ => return None,
        };
        Some(Classified {
            cause,
            sentence,
            target: Target::Address(r.remote),
            weight: 1,
            conn_id: Some(r.conn_id),
            comm: r.comm.clone(),
            seen_unix_ns: r.timestamp_unix_ns,
            over_ns: 0,
        })
    }

    /// A completed active connect, or one that closed cleanly.
    fn successes(&self, out: &mut Vec<Success>) {
        let r = self;
        if r.direction != Direction::Active {
            return;
        }
        let recovery = match (r.event, &r.failure) {
            (TcpEventKind::Connect, _) => CONNECTED,
            (TcpEventKind::Close, None) => CLEAN_CLOSE,
            _ => return,
        };
        out.push(Success {
            recovery,
            target: Target::Address(r.remote),
            comm: r.comm.clone(),
            seen_unix_ns: r.timestamp_unix_ns,
        });
    }
}

impl Filtered for TcpRecord {
    fn is_failure(&self) -> bool {
        self.failure.is_some()
            || matches!(
                self.event,
                TcpEventKind::ConnectFailed | TcpEventKind::ResetSent | TcpEventKind::ResetReceived
            )
    }

    fn reasons(&self) -> Vec<&str> {
        match &self.failure {
            Some(f) => vec![reason_str(f.reason), f.errno_name],
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{tcp::sample_connect_failed, Record},
        rca::classify::{classify, successes},
    };

    #[test]
    fn tcp_failures_by_errno() {
        let c = classify(
            &Record::Tcp(sample_connect_failed(libc::ECONNREFUSED, 0)),
            None,
        )
        .unwrap();
        assert_eq!(c.cause.code, "refused");
        assert!(c.sentence.contains("nothing listens"), "{}", c.sentence);
        let c = classify(
            &Record::Tcp(sample_connect_failed(libc::ETIMEDOUT, 5)),
            None,
        )
        .unwrap();
        assert_eq!(c.cause.code, "timed_out");
        assert!(
            c.sentence.contains("after 5 SYN retransmits"),
            "{}",
            c.sentence
        );
        let c = classify(
            &Record::Tcp(sample_connect_failed(libc::ENETUNREACH, 0)),
            None,
        )
        .unwrap();
        assert_eq!(c.cause.code, "unreachable");
        assert!(c.sentence.contains("network unreachable (ENETUNREACH)"));
        assert!(
            classify(&Record::Tcp(sample_connect_failed(0, 0)), None).is_none(),
            "aborted"
        );
        let mut reset = sample_connect_failed(libc::ECONNRESET, 0);
        reset.event = TcpEventKind::Close;
        assert_eq!(
            classify(&Record::Tcp(reset), None).unwrap().cause.code,
            "reset"
        );
    }

    #[test]
    fn successes_that_recover() {
        let mut ok = sample_connect_failed(0, 0);
        ok.event = TcpEventKind::Connect;
        ok.failure = None;
        let mut out = Vec::new();
        successes(&Record::Tcp(ok.clone()), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].recovery, CONNECTED);
        ok.direction = Direction::Passive;
        out.clear();
        successes(&Record::Tcp(ok), &mut out);
        assert!(
            out.is_empty(),
            "an accepted connection says nothing of ours"
        );
    }
}
