//! The TCP family's pinned maps: connections being tracked, counters, runtime config.

use std::{io::Write, path::Path};

use aya::maps::{Array, HashMap, Map};
use hostscope_common::{
    stats::Stat,
    tcp::{
        TcpConfig, TcpConn, CONN_ESTABLISHED_UNSEEN, TCP_CONFIG_MAP, TCP_CONNS_MAP, TCP_STATS_MAP,
    },
};
use serde::Serialize;

use super::{read_error, write_counters, DumpError, DumpFormat, PinnedMap};
use crate::{
    events::{
        comm_string, monotonic_ns,
        tcp::{endpoints, state_name},
    },
    output::write_json,
};

pub const MAPS: &[PinnedMap] = &[
    PinnedMap {
        name: TCP_CONNS_MAP,
        about: "TCP connections being tracked",
        decode: conns,
    },
    PinnedMap {
        name: TCP_STATS_MAP,
        about: "TCP probe counters, summed over CPUs",
        decode: |_, map, format, out| {
            write_counters(
                map,
                TCP_STATS_MAP,
                Stat::ALL.map(|s| (s as u32, s.name())),
                format,
                out,
            )
        },
    },
    PinnedMap {
        name: TCP_CONFIG_MAP,
        about: "TCP probe runtime configuration",
        decode: config,
    },
];

#[derive(Debug, Serialize)]
pub struct ConnRow {
    pub conn_id: u64,
    pub direction: &'static str,
    pub state: &'static str,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub age_ms: f64,
    pub established: bool,
    pub syn_retransmits: u32,
    pub retransmits: u32,
    pub resets_sent: u32,
    pub resets_received: u32,
}

fn conn_row(c: &TcpConn, now_ns: u64) -> ConnRow {
    let (local, remote) = endpoints(c);
    ConnRow {
        conn_id: c.conn_id,
        direction: if c.direction == hostscope_common::tcp::DIR_PASSIVE {
            "passive"
        } else {
            "active"
        },
        state: state_name(c.state),
        local,
        remote,
        pid: c.pid,
        comm: comm_string(&c.comm),
        cgroup_id: c.cgroup_id,
        age_ms: now_ns.saturating_sub(c.start_ns) as f64 / 1e6,
        established: c.established_ns != 0 || c.flags & CONN_ESTABLISHED_UNSEEN != 0,
        syn_retransmits: c.syn_retrans,
        retransmits: c.retrans,
        resets_sent: c.rst_sent,
        resets_received: c.rst_recv,
    }
}

fn conns(
    _pin_dir: &Path,
    map: Map,
    format: DumpFormat,
    mut out: &mut dyn Write,
) -> Result<(), DumpError> {
    let read = read_error(TCP_CONNS_MAP);
    let conns: HashMap<_, u64, TcpConn> = HashMap::try_from(map).map_err(read)?;
    let now = monotonic_ns();
    let mut rows = Vec::new();
    for entry in conns.iter() {
        let (_, c) = entry.map_err(read)?;
        rows.push(conn_row(&c, now));
    }
    rows.sort_by_key(|r| r.conn_id);
    match format {
        DumpFormat::Json => rows.iter().try_for_each(|r| write_json(&mut out, r))?,
        DumpFormat::Table => write_conn_table(out, &rows)?,
    }
    Ok(())
}

fn write_conn_table(out: &mut dyn Write, rows: &[ConnRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<18} {:<7} {:<11} {:<40} {:<40} {:>7} {:<16} {:>10} {:>4} {:>5} {:>3}",
        "CONN", "DIR", "STATE", "LOCAL", "REMOTE", "PID", "COMM", "AGE_MS", "SYNR", "RETX", "RST"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<#18x} {:<7} {:<11} {:<40} {:<40} {:>7} {:<16} {:>10.1} {:>4} {:>5} {:>3}",
            r.conn_id,
            r.direction,
            r.state,
            r.local.to_string(),
            r.remote.to_string(),
            r.pid,
            r.comm,
            r.age_ms,
            r.syn_retransmits,
            r.retransmits,
            r.resets_sent + r.resets_received
        )?;
    }
    writeln!(out, "{} connections", rows.len())
}

fn config(
    _pin_dir: &Path,
    map: Map,
    format: DumpFormat,
    mut out: &mut dyn Write,
) -> Result<(), DumpError> {
    let read = read_error(TCP_CONFIG_MAP);
    let config: Array<_, TcpConfig> = Array::try_from(map).map_err(read)?;
    let c = config.get(&0, 0).map_err(read)?;
    #[derive(Serialize)]
    struct View {
        wakeup_bytes: u64,
        keep_until_destroy: bool,
    }
    let view = View {
        wakeup_bytes: c.ring.wakeup_bytes,
        keep_until_destroy: c.keep_until_destroy != 0,
    };
    match format {
        DumpFormat::Json => write_json(&mut out, &view)?,
        DumpFormat::Table => writeln!(
            out,
            "wakeup_bytes        {}\nkeep_until_destroy  {}",
            view.wakeup_bytes, view.keep_until_destroy
        )?,
    }
    Ok(())
}
