//! `hostscope dump <map>`: the probes' pinned maps decoded with the shared types, while
//! the agent runs or after it exited.

use std::{collections::BTreeMap, io::Write, path::Path};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use hostscope_common::{
    stats::Stat,
    syscalls,
    tcp::{TcpConfig, TcpConn, TCP_CONFIG_MAP, TCP_CONNS_MAP, TCP_STATS_MAP},
    tls::{TlsFailureSlot, TLS_FAILURES_MAP, TLS_STATS_MAP},
};
use serde::Serialize;

use crate::{
    events::{
        comm_string, monotonic_ns,
        tcp::{endpoints, state_name},
    },
    output::write_json,
};

/// Every map `dump` knows how to decode.
pub const DUMPABLE: &[(&str, &str)] = &[
    (TCP_CONNS_MAP, "TCP connections being tracked"),
    (TCP_STATS_MAP, "TCP probe counters, summed over CPUs"),
    (TCP_CONFIG_MAP, "TCP probe runtime configuration"),
    (
        TLS_FAILURES_MAP,
        "the most recent TLS handshake failures (up to 64)",
    ),
    (TLS_STATS_MAP, "TLS probe counters, summed over CPUs"),
    // -- syscalls family
    (
        syscalls::SYSCALL_AGG_MAP,
        "syscall counts/latency per process (or cgroup) since the last interval read\n\
         (this map and the per-CPU slots of SYSCALL_AGG_SLOTS, summed)",
    ),
    (
        syscalls::SYSCALL_ERRORS_MAP,
        "syscall errors by errno since the last interval read",
    ),
    (
        syscalls::SYSCALL_STATS_MAP,
        "syscalls probe counters, summed over CPUs",
    ),
    (
        syscalls::SYSCALL_CONFIG_MAP,
        "syscalls runtime configuration (filters, generation)",
    ),
    (syscalls::WATCHED_PATHS_MAP, "watched path prefixes"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpFormat {
    Table,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("unknown map {name:?}; known maps: {known}")]
    Unknown { name: String, known: String },
    #[error("no pinned map at {path}: start `hostscope run` (pinning is on by default) first")]
    NotPinned { path: String },
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading {name}: {source}")]
    Read {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

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
        established: c.established_ns != 0,
        syn_retransmits: c.syn_retrans,
        retransmits: c.retrans,
        resets_sent: c.rst_sent,
        resets_received: c.rst_recv,
    }
}

pub fn dump(
    pin_dir: &Path,
    name: &str,
    format: DumpFormat,
    out: &mut impl Write,
) -> Result<(), DumpError> {
    let Some(&(name, _)) = DUMPABLE.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
        return Err(unknown(name));
    };
    let path = pin_dir.join(name);
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(DumpError::NotPinned { path: shown });
    }
    let data = MapData::from_pin(&path).map_err(|source| DumpError::Open {
        path: shown.clone(),
        source,
    })?;
    let map = Map::from_map_data(data).map_err(|source| DumpError::Open {
        path: shown,
        source,
    })?;
    let read = |source| DumpError::Read { name, source };
    match name {
        TCP_CONNS_MAP => {
            let conns: HashMap<_, u64, TcpConn> = HashMap::try_from(map).map_err(read)?;
            let now = monotonic_ns();
            let mut rows = Vec::new();
            for entry in conns.iter() {
                let (_, c) = entry.map_err(read)?;
                rows.push(conn_row(&c, now));
            }
            rows.sort_by_key(|r| r.conn_id);
            match format {
                DumpFormat::Json => rows.iter().try_for_each(|r| write_json(out, r))?,
                DumpFormat::Table => write_conn_table(out, &rows)?,
            }
        }
        TLS_FAILURES_MAP => {
            let slots: Array<_, TlsFailureSlot> = Array::try_from(map).map_err(read)?;
            let mut rows = Vec::new();
            for slot in slots.iter() {
                let slot = slot.map_err(read)?;
                if slot.unix_ns != 0 {
                    rows.push(failure_row(&slot));
                }
            }
            rows.sort_by_key(|r| r.unix_ns);
            match format {
                DumpFormat::Json => rows.iter().try_for_each(|r| write_json(out, r))?,
                DumpFormat::Table => write_failure_table(out, &rows)?,
            }
        }
        TCP_STATS_MAP | TLS_STATS_MAP => {
            let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(read)?;
            let mut values = std::collections::BTreeMap::new();
            for stat in Stat::ALL {
                let v = stats.get(&(stat as u32), 0).map_err(read)?;
                values.insert(stat.name(), v.iter().sum::<u64>());
            }
            match format {
                DumpFormat::Json => write_json(out, &values)?,
                DumpFormat::Table => {
                    for (k, v) in values {
                        writeln!(out, "{k:<24} {v}")?;
                    }
                }
            }
        }
        TCP_CONFIG_MAP => {
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
                DumpFormat::Json => write_json(out, &view)?,
                DumpFormat::Table => writeln!(
                    out,
                    "wakeup_bytes        {}\nkeep_until_destroy  {}",
                    view.wakeup_bytes, view.keep_until_destroy
                )?,
            }
        }
        other => return dump_syscalls(pin_dir, other, map, format, out),
    }
    Ok(())
}

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

fn write_failure_table(out: &mut impl Write, rows: &[FailureRow]) -> std::io::Result<()> {
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

fn unknown(name: &str) -> DumpError {
    DumpError::Unknown {
        name: name.to_string(),
        known: DUMPABLE
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn write_conn_table(out: &mut impl Write, rows: &[ConnRow]) -> std::io::Result<()> {
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

// -- syscalls family ------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct SyscallAggRow {
    pub id: u64,
    pub generation: u32,
    pub syscall: String,
    pub nr: u32,
    pub comm: String,
    pub count: u64,
    pub errors: u64,
    pub timed: u64,
    pub mean_ns: Option<f64>,
    pub max_ns: u64,
    /// Log2 buckets: `hist[i]` counts calls of `[2^i, 2^(i+1))` ns.
    pub hist: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct SyscallErrorRow {
    pub id: u64,
    pub generation: u32,
    pub syscall: String,
    pub errno: u32,
    pub errno_name: String,
    pub count: u64,
}

/// The per-CPU slots pinned next to `SYSCALL_AGG`, summed by (id, generation, syscall).
fn slot_sums(
    pin_dir: &Path,
) -> Result<BTreeMap<(u64, u32, u32), syscalls::SyscallStats>, DumpError> {
    use syscalls::*;
    let path = pin_dir.join(SYSCALL_AGG_SLOTS_MAP);
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(DumpError::NotPinned { path: shown });
    }
    let open = |source| DumpError::Open {
        path: shown.clone(),
        source,
    };
    let map = Map::from_map_data(MapData::from_pin(&path).map_err(open)?).map_err(open)?;
    let read = |source| DumpError::Read {
        name: SYSCALL_AGG_SLOTS_MAP,
        source,
    };
    let slots: PerCpuArray<_, SyscallSlot> = PerCpuArray::try_from(map).map_err(read)?;
    let mut sums = BTreeMap::new();
    for index in 0..slots.len() {
        for v in slots.get(&index, 0).map_err(read)?.iter() {
            if v.stats.count != 0 {
                let e = sums
                    .entry((v.id, index & 1, v.nr))
                    .or_insert(SyscallStats::ZERO);
                crate::events::syscalls::add_stats(e, &v.stats);
            }
        }
    }
    Ok(sums)
}

fn dump_syscalls(
    pin_dir: &Path,
    name: &str,
    map: Map,
    format: DumpFormat,
    out: &mut impl Write,
) -> Result<(), DumpError> {
    use aya::maps::{LpmTrie, PerCpuHashMap};
    use syscalls::*;

    use crate::events::syscalls::{errno_name, syscall_name};
    let Some(&(name, _)) = DUMPABLE.iter().find(|(n, _)| *n == name) else {
        return Err(unknown(name));
    };
    let read = |source| DumpError::Read { name, source };
    match name {
        SYSCALL_AGG_MAP => {
            let agg: PerCpuHashMap<_, SyscallKey, SyscallStats> =
                PerCpuHashMap::try_from(map).map_err(read)?;
            // The busy keys count in the per-CPU slots, the others in the hash map.
            let mut sums = slot_sums(pin_dir)?;
            for entry in agg.iter() {
                let (k, values) = entry.map_err(read)?;
                let sum = sums
                    .entry((k.id, k.generation, k.nr))
                    .or_insert(SyscallStats::ZERO);
                for v in values.iter() {
                    crate::events::syscalls::add_stats(sum, v);
                }
            }
            let mut rows = Vec::new();
            for ((id, generation, nr), sum) in sums {
                rows.push(SyscallAggRow {
                    id,
                    generation,
                    syscall: syscall_name(nr),
                    nr,
                    comm: comm_string(&sum.comm),
                    count: sum.count,
                    errors: sum.errors,
                    timed: sum.timed,
                    mean_ns: (sum.timed > 0).then(|| sum.total_ns as f64 / sum.timed as f64),
                    max_ns: sum.max_ns,
                    hist: sum.hist.to_vec(),
                });
            }
            rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.id.cmp(&b.id)));
            match format {
                DumpFormat::Json => rows.iter().try_for_each(|r| write_json(out, r))?,
                DumpFormat::Table => {
                    writeln!(
                        out,
                        "{:>12} {:>3} {:<20} {:<16} {:>10} {:>8} {:>12} {:>12}",
                        "ID", "GEN", "SYSCALL", "COMM", "COUNT", "ERRORS", "MEAN_NS", "MAX_NS"
                    )?;
                    for r in &rows {
                        writeln!(
                            out,
                            "{:>12} {:>3} {:<20} {:<16} {:>10} {:>8} {:>12.0} {:>12}",
                            r.id,
                            r.generation,
                            r.syscall,
                            r.comm,
                            r.count,
                            r.errors,
                            r.mean_ns.unwrap_or(0.0),
                            r.max_ns
                        )?;
                    }
                    writeln!(out, "{} keys", rows.len())?;
                }
            }
        }
        SYSCALL_ERRORS_MAP => {
            let errors: PerCpuHashMap<_, SyscallErrorKey, u64> =
                PerCpuHashMap::try_from(map).map_err(read)?;
            let mut rows = Vec::new();
            for entry in errors.iter() {
                let (k, values) = entry.map_err(read)?;
                rows.push(SyscallErrorRow {
                    id: k.id,
                    generation: k.generation,
                    syscall: syscall_name(k.nr),
                    errno: k.errno,
                    errno_name: errno_name(k.errno),
                    count: values.iter().sum(),
                });
            }
            rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.id.cmp(&b.id)));
            match format {
                DumpFormat::Json => rows.iter().try_for_each(|r| write_json(out, r))?,
                DumpFormat::Table => {
                    writeln!(
                        out,
                        "{:>12} {:>3} {:<20} {:<14} {:>10}",
                        "ID", "GEN", "SYSCALL", "ERRNO", "COUNT"
                    )?;
                    for r in &rows {
                        writeln!(
                            out,
                            "{:>12} {:>3} {:<20} {:<14} {:>10}",
                            r.id, r.generation, r.syscall, r.errno_name, r.count
                        )?;
                    }
                }
            }
        }
        SYSCALL_STATS_MAP => {
            let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(read)?;
            let mut values = std::collections::BTreeMap::new();
            for stat in SyscallStat::ALL {
                let v = stats.get(&(stat as u32), 0).map_err(read)?;
                values.insert(stat.name(), v.iter().sum::<u64>());
            }
            match format {
                DumpFormat::Json => write_json(out, &values)?,
                DumpFormat::Table => {
                    for (k, v) in values {
                        writeln!(out, "{k:<24} {v}")?;
                    }
                }
            }
        }
        SYSCALL_CONFIG_MAP => {
            let config: Array<_, SyscallConfig> = Array::try_from(map).map_err(read)?;
            let c = config.get(&0, 0).map_err(read)?;
            #[derive(Serialize)]
            struct View {
                generation: u32,
                key_by: &'static str,
                pid: Option<u32>,
                tid: Option<u32>,
                cgroup_id: Option<u64>,
                syscalls: Option<Vec<String>>,
                slow_ns: Option<u64>,
                wakeup_bytes: u64,
            }
            let view = View {
                generation: c.generation,
                key_by: if c.key_by == KEY_BY_CGROUP {
                    "cgroup"
                } else {
                    "pid"
                },
                pid: (c.target_tgid != 0).then_some(c.target_tgid),
                tid: (c.target_tid != 0).then_some(c.target_tid),
                cgroup_id: (c.target_cgroup != 0).then_some(c.target_cgroup),
                syscalls: (c.filter_syscalls != 0).then(|| {
                    (0..SYSCALL_NR_MAX)
                        .filter(|&nr| c.allows(nr))
                        .map(syscall_name)
                        .collect()
                }),
                slow_ns: (c.slow_ns != 0).then_some(c.slow_ns),
                wakeup_bytes: c.ring.wakeup_bytes,
            };
            match format {
                DumpFormat::Json => write_json(out, &view)?,
                DumpFormat::Table => {
                    let text = serde_json::to_value(&view).unwrap_or_default();
                    if let Some(obj) = text.as_object() {
                        for (k, v) in obj {
                            writeln!(out, "{k:<14} {v}")?;
                        }
                    }
                }
            }
        }
        WATCHED_PATHS_MAP => {
            let trie: LpmTrie<_, [u8; PATH_MAX_BYTES], u32> =
                LpmTrie::try_from(map).map_err(read)?;
            let mut paths = Vec::new();
            for key in trie.keys() {
                let key = key.map_err(read)?;
                let len = (key.prefix_len() as usize / 8).min(PATH_MAX_BYTES);
                paths.push(String::from_utf8_lossy(&key.data()[..len]).into_owned());
            }
            paths.sort();
            #[derive(Serialize)]
            struct Row<'a> {
                path: &'a str,
            }
            for p in &paths {
                match format {
                    DumpFormat::Json => write_json(out, &Row { path: p })?,
                    DumpFormat::Table => writeln!(out, "{p}")?,
                }
            }
        }
        other => return Err(unknown(other)),
    }
    Ok(())
}
