//! The TLS family's pinned maps: the most recent handshake failures, counters.

use std::io::Write;

use hostscope_common::{
    stats::Stat,
    tls::{TlsFailureSlot, TLS_FAILURES_MAP, TLS_STATS_MAP},
};
use serde::Serialize;

use super::{write_counters, PinnedMap};
use crate::events::comm_string;

pub const MAPS: &[PinnedMap] = &[
    PinnedMap {
        name: TLS_FAILURES_MAP,
        about: "the most recent TLS handshake failures (up to 64)",
        decode: |_, map, format, out| {
            super::write_recent_failures(
                map,
                TLS_FAILURES_MAP,
                |s: &TlsFailureSlot| s.unix_ns,
                failure_row,
                write_failure_table,
                format,
                out,
            )
        },
    },
    PinnedMap {
        name: TLS_STATS_MAP,
        about: "TLS probe counters, summed over CPUs",
        decode: |_, map, format, out| {
            write_counters(
                map,
                TLS_STATS_MAP,
                Stat::ALL.map(|s| (s as u32, s.name())),
                format,
                out,
            )
        },
    },
];

#[derive(Debug, Serialize)]
pub struct FailureRow {
    pub unix_ns: u64,
    pub time: String,
    pub reason: String,
    /// Alert description, or 256 + OpenSSL X509_V_ERR code.
    pub raw_code: u32,
    pub remote: Option<std::net::SocketAddr>,
    pub server_name: String,
    pub version: String,
    pub pid: u32,
    pub comm: String,
    pub cert_not_after_unix: Option<i64>,
}

fn failure_row(s: &TlsFailureSlot) -> FailureRow {
    let remote = match s.family {
        hostscope_common::tcp::AF_INET => Some(std::net::SocketAddr::new(
            std::net::Ipv4Addr::new(s.remote[0], s.remote[1], s.remote[2], s.remote[3]).into(),
            s.remote_port,
        )),
        hostscope_common::tcp::AF_INET6 => Some(std::net::SocketAddr::new(
            std::net::Ipv6Addr::from(s.remote).into(),
            s.remote_port,
        )),
        _ => None,
    };
    FailureRow {
        unix_ns: s.unix_ns,
        time: crate::events::format_time_of_day(s.unix_ns),
        reason: comm_string(&s.reason),
        raw_code: s.raw_code,
        remote,
        server_name: comm_string(&s.sni),
        version: if s.version == 0 {
            String::new()
        } else {
            crate::tls::parser::version_name(s.version)
        },
        pid: s.pid,
        comm: comm_string(&s.comm),
        cert_not_after_unix: (s.cert_not_after_unix != 0).then_some(s.cert_not_after_unix),
    }
}

fn write_failure_table(out: &mut dyn Write, rows: &[FailureRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<15} {:<26} {:>5} {:<40} {:<30} {:<8} {:>7} {:<16}",
        "TIME(UTC)", "REASON", "CODE", "REMOTE", "SERVER_NAME", "VERSION", "PID", "COMM"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<15} {:<26} {:>5} {:<40} {:<30} {:<8} {:>7} {:<16}",
            r.time,
            r.reason,
            r.raw_code,
            r.remote
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            r.server_name,
            r.version,
            r.pid,
            r.comm
        )?;
    }
    writeln!(out, "{} failures", rows.len())
}
