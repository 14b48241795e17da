//! The DNS family's pinned maps: the most recent failed lookups, counters.

use std::io::Write;

use hostscope_common::{
    dns::{DnsFailureSlot, DNS_FAILURES_MAP, DNS_STATS_MAP, DNS_TRANSPORT_TCP},
    stats::Stat,
};
use serde::Serialize;

use super::{write_counters, PinnedMap};
use crate::events::comm_string;

pub const MAPS: &[PinnedMap] = &[
    PinnedMap {
        name: DNS_FAILURES_MAP,
        about: "the most recent failed DNS lookups: NXDOMAIN, SERVFAIL, timeouts (up to 64)",
        decode: |_, map, format, out| {
            super::write_recent_failures(
                map,
                DNS_FAILURES_MAP,
                |s: &DnsFailureSlot| s.unix_ns,
                failure_row,
                write_failure_table,
                format,
                out,
            )
        },
    },
    PinnedMap {
        name: DNS_STATS_MAP,
        about: "DNS probe counters, summed over CPUs",
        decode: |_, map, format, out| {
            write_counters(
                map,
                DNS_STATS_MAP,
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
    /// The rcode (`NXDOMAIN`, `SERVFAIL`, …) or `TIMEOUT`.
    pub failure: String,
    pub query_name: String,
    pub query_type: String,
    pub server: Option<std::net::SocketAddr>,
    pub transport: &'static str,
    pub retries: u32,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

pub fn failure_row(s: &DnsFailureSlot) -> FailureRow {
    let ip: Option<std::net::IpAddr> = match s.family {
        hostscope_common::tcp::AF_INET => {
            Some(std::net::Ipv4Addr::new(s.server[0], s.server[1], s.server[2], s.server[3]).into())
        }
        hostscope_common::tcp::AF_INET6 => Some(std::net::Ipv6Addr::from(s.server).into()),
        _ => None,
    };
    FailureRow {
        unix_ns: s.unix_ns,
        time: crate::events::format_time_of_day(s.unix_ns),
        failure: comm_string(&s.kind),
        query_name: comm_string(&s.query_name),
        query_type: comm_string(&s.query_type),
        server: ip.map(|ip| std::net::SocketAddr::new(ip, s.server_port)),
        transport: if s.transport == DNS_TRANSPORT_TCP {
            "tcp"
        } else {
            "udp"
        },
        retries: s.retries,
        pid: s.pid,
        comm: comm_string(&s.comm),
        cgroup_id: s.cgroup_id,
    }
}

fn write_failure_table(out: &mut dyn Write, rows: &[FailureRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<15} {:<9} {:<40} {:<6} {:<44} {:>7} {:>7} {:<16}",
        "TIME(UTC)", "FAILURE", "QUERY", "TYPE", "SERVER", "RETRIES", "PID", "COMM"
    )?;
    for r in rows {
        let server = match r.server {
            Some(a) if r.transport == "tcp" => format!("{a}/tcp"),
            Some(a) => a.to_string(),
            None => "-".into(),
        };
        writeln!(
            out,
            "{:<15} {:<9} {:<40} {:<6} {:<44} {:>7} {:>7} {:<16}",
            r.time, r.failure, r.query_name, r.query_type, server, r.retries, r.pid, r.comm
        )?;
    }
    writeln!(out, "{} failures", rows.len())
}
