//! Records -> OTLP log records: security events (watched-path access), RCA incidents
//! (`hostscope.rca.incident`), slow syscalls and, with `export.failure_logs`, one log record
//! per failure (refused / timed-out / unreachable connects, failed TLS handshakes, failed
//! or unanswered DNS lookups, syscall error bursts), with a severity and structured attributes. Only metadata is exported:
//! never TLS application data nor file contents (the probes capture neither).

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue},
    logs::v1::{LogRecord, SeverityNumber},
};

use super::resource::{int_value, kv, str_value, tcp_endpoint_kvs};
use crate::events::{
    dns::{DnsOutcome, Transport},
    syscalls::{Access, AlertKind},
    tcp::{FailureReason, TcpEventKind},
    tls::Outcome,
    Record,
    Record::Rca,
};

/// Whether a record is one of the failures that RCA incidents summarise: exported one by
/// one only with `export.failure_logs`.
pub fn is_failure(record: &Record) -> bool {
    match record {
        Record::Tcp(r) => r.event == TcpEventKind::ConnectFailed,
        Record::Tls(r) => r.outcome == Outcome::Failure,
        Record::Dns(r) => r.is_failure(),
        Record::SyscallAlert(r) => r.kind == AlertKind::ErrorBurst,
        _ => false,
    }
}

pub fn log(record: &Record, observed_ns: u64, failure_logs: bool) -> Option<LogRecord> {
    if !failure_logs && is_failure(record) {
        return None;
    }
    let (time, severity, event, body, attrs): (u64, SeverityNumber, &str, String, Vec<KeyValue>) =
        match record {
            Rca(r) => {
                use crate::rca::record::IncidentState;
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
                (
                    r.timestamp_unix_ns,
                    severity,
                    "hostscope.rca.incident",
                    r.sentence.clone(),
                    a,
                )
            }
            Record::Security(r) => {
                let access = match r.access {
                    Access::Open => "open",
                    Access::Exec => "exec",
                };
                let mut a = vec![
                    kv("file.path", str_value(&r.path)),
                    kv("hostscope.access", str_value(access)),
                    kv("syscall.name", str_value(&r.syscall)),
                    kv("process.pid", int_value(r.pid as i64)),
                    kv("thread.id", int_value(r.tid as i64)),
                    kv("process.executable.name", str_value(&r.comm)),
                    kv("user.id", str_value(r.uid.to_string())),
                    kv("hostscope.gid", int_value(r.gid as i64)),
                    kv("hostscope.cgroup.id", int_value(r.cgroup_id as i64)),
                    kv("hostscope.open.flags", int_value(r.flags as i64)),
                    kv("hostscope.result", int_value(r.result)),
                ];
                if let Some(pp) = r.ppid {
                    a.push(kv("process.parent_pid", int_value(pp as i64)));
                }
                if r.truncated {
                    a.push(kv("hostscope.path.truncated", str_value("true")));
                }
                if let Some(e) = &r.errno_name {
                    a.push(kv("error.type", str_value(e)));
                }
                let body = format!(
                    "{}[{}] {access} {} ({})",
                    r.comm,
                    r.pid,
                    r.path,
                    r.errno_name.as_deref().unwrap_or("ok")
                );
                (
                    r.ts_unix_ns,
                    SeverityNumber::Warn,
                    "hostscope.security.file_access",
                    body,
                    a,
                )
            }
            Record::Tcp(r) if r.event == TcpEventKind::ConnectFailed => {
                let f = r.failure.as_ref()?;
                // Closed locally before an answer: not a network fault.
                if f.reason == FailureReason::Aborted {
                    return None;
                }
                let reason = super::metrics::reason_str(f.reason);
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
                (
                    r.timestamp_unix_ns,
                    SeverityNumber::Warn,
                    "hostscope.tcp.connect_failed",
                    body,
                    a,
                )
            }
            Record::Tls(r) if r.outcome == Outcome::Failure => {
                let mut a = Vec::new();
                let reason = r
                    .failure
                    .as_ref()
                    .map(|f| f.reason.as_str())
                    .unwrap_or("other");
                a.push(kv("error.type", str_value(reason)));
                if let Some(f) = &r.failure {
                    a.push(kv("hostscope.tls.failure.detail", str_value(&f.detail)));
                    a.push(kv(
                        "hostscope.tls.failure.source",
                        str_value(super::metrics::failure_source(f.source)),
                    ));
                }
                if let Some(n) = &r.server_name {
                    a.push(kv("server.address", str_value(n)));
                }
                if let Some(rem) = r.remote {
                    a.push(kv("network.peer.address", str_value(rem.ip().to_string())));
                    a.push(kv("network.peer.port", int_value(rem.port() as i64)));
                }
                if let Some(v) = &r.version {
                    a.push(kv(
                        "tls.protocol.version",
                        str_value(super::metrics::tls_version(v)),
                    ));
                }
                if let Some(pid) = r.pid {
                    a.push(kv("process.pid", int_value(pid as i64)));
                }
                if let Some(comm) = &r.comm {
                    a.push(kv("process.executable.name", str_value(comm)));
                }
                let peer = r
                    .remote
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "?".into());
                let body = format!("TLS handshake with {peer} failed: {reason}");
                (
                    r.timestamp_unix_ns,
                    SeverityNumber::Warn,
                    "hostscope.tls.handshake_failed",
                    body,
                    a,
                )
            }
            Record::Dns(r) if r.is_failure() => {
                let kind = r.failure_kind().unwrap_or("UNKNOWN");
                let transport = match r.transport {
                    Transport::Udp => "udp",
                    Transport::Tcp => "tcp",
                };
                let mut a = vec![
                    kv("error.type", str_value(kind)),
                    kv("dns.question.name", str_value(&r.query_name)),
                    kv("hostscope.dns.question.type", str_value(&r.query_type)),
                    kv("server.address", str_value(r.server.ip().to_string())),
                    kv("server.port", int_value(r.server.port() as i64)),
                    kv("network.transport", str_value(transport)),
                    kv("hostscope.dns.retries", int_value(r.retries as i64)),
                ];
                if let Some(pid) = r.pid {
                    a.push(kv("process.pid", int_value(pid as i64)));
                }
                if let Some(comm) = &r.comm {
                    a.push(kv("process.executable.name", str_value(comm)));
                }
                if let Some(us) = r.latency_us {
                    a.push(kv("hostscope.duration_us", int_value(us as i64)));
                }
                if let Some(s) = &r.search {
                    a.push(kv("hostscope.dns.search.base", str_value(&s.base)));
                }
                let body = match r.outcome {
                    DnsOutcome::Timeout => format!(
                        "lookup of {} {} not answered by {} ({} retries)",
                        r.query_type, r.query_name, r.server, r.retries
                    ),
                    DnsOutcome::Answered => format!(
                        "lookup of {} {} failed: {kind} from {}",
                        r.query_type, r.query_name, r.server
                    ),
                };
                (
                    r.timestamp_unix_ns,
                    SeverityNumber::Warn,
                    "hostscope.dns.lookup_failed",
                    body,
                    a,
                )
            }
            Record::SyscallAlert(r) => {
                let kind = match r.kind {
                    AlertKind::ErrorBurst => "error_burst",
                    AlertKind::Slow => "slow",
                };
                let mut a = vec![
                    kv("hostscope.alert", str_value(kind)),
                    kv("syscall.name", str_value(&r.syscall)),
                    kv("process.executable.name", str_value(&r.comm)),
                    kv("hostscope.count", int_value(r.count as i64)),
                ];
                a.push(if r.key_by == "pid" {
                    kv("process.pid", int_value(r.id as i64))
                } else {
                    kv("hostscope.cgroup.id", int_value(r.id as i64))
                });
                if let Some(e) = &r.errno_name {
                    a.push(kv("error.type", str_value(e)));
                }
                let body = format!(
                    "{} {kind}: {} {} at {:.1}/s",
                    r.comm,
                    r.syscall,
                    r.errno_name.as_deref().unwrap_or(""),
                    r.rate_per_s
                );
                (
                    r.ts_unix_ns,
                    SeverityNumber::Warn,
                    "hostscope.syscall.alert",
                    body,
                    a,
                )
            }
            Record::SyscallSlow(r) => {
                let a = vec![
                    kv("syscall.name", str_value(&r.syscall)),
                    kv("process.pid", int_value(r.pid as i64)),
                    kv("process.executable.name", str_value(&r.comm)),
                    kv("hostscope.latency_ns", int_value(r.latency_ns as i64)),
                    kv("hostscope.result", int_value(r.result)),
                ];
                let body = format!(
                    "{}[{}] {} took {:.3} ms",
                    r.comm,
                    r.pid,
                    r.syscall,
                    r.latency_ns as f64 / 1e6
                );
                (
                    r.ts_unix_ns,
                    SeverityNumber::Info,
                    "hostscope.syscall.slow",
                    body,
                    a,
                )
            }
            _ => return None,
        };
    Some(LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: observed_ns,
        severity_number: severity as i32,
        severity_text: match severity {
            SeverityNumber::Warn => "WARN",
            _ => "INFO",
        }
        .into(),
        event_name: event.into(),
        body: Some(AnyValue {
            value: Some(str_value(body)),
        }),
        attributes: attrs,
        ..Default::default()
    })
}
