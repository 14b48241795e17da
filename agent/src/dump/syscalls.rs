//! The syscalls family's pinned maps: the aggregation since the last interval read,
//! errors by errno, counters, runtime config, watched paths.

use std::{collections::BTreeMap, io::Write, path::Path};

use aya::maps::{Array, LpmTrie, Map, PerCpuArray, PerCpuHashMap};
use hostscope_common::syscalls::*;
use serde::Serialize;

use super::{open_pinned, read_error, write_counters, DumpError, DumpFormat, PinnedMap};
use crate::{
    events::{
        comm_string,
        syscalls::{add_stats, errno_name, syscall_name},
    },
    output::write_json,
};

pub const MAPS: &[PinnedMap] = &[
    PinnedMap {
        name: SYSCALL_AGG_MAP,
        about: "syscall counts/latency per process (or cgroup) since the last interval read\n\
                (this map and the per-CPU slots of SYSCALL_AGG_SLOTS, summed)",
        decode: aggregation,
    },
    PinnedMap {
        name: SYSCALL_AGG_SLOTS_MAP,
        about: "the per-CPU slots where the busiest keys count (part of SYSCALL_AGG)",
        decode: |_, map, format, out| write_aggregation(slot_sums(map)?, format, out),
    },
    PinnedMap {
        name: SYSCALL_ERRORS_MAP,
        about: "syscall errors by errno since the last interval read",
        decode: errors,
    },
    PinnedMap {
        name: SYSCALL_STATS_MAP,
        about: "syscalls probe counters, summed over CPUs",
        decode: |_, map, format, out| {
            let stats = SyscallStat::ALL.map(|s| (s as u32, s.name()));
            write_counters(map, SYSCALL_STATS_MAP, stats, format, out)
        },
    },
    PinnedMap {
        name: SYSCALL_CONFIG_MAP,
        about: "syscalls runtime configuration (filters, generation)",
        decode: config,
    },
    PinnedMap {
        name: WATCHED_PATHS_MAP,
        about: "watched path prefixes",
        decode: watched_paths,
    },
];

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

fn aggregation(
    pin_dir: &Path,
    map: Map,
    format: DumpFormat,
    out: &mut dyn Write,
) -> Result<(), DumpError> {
    let read = read_error(SYSCALL_AGG_MAP);
    let agg: PerCpuHashMap<_, SyscallKey, SyscallStats> =
        PerCpuHashMap::try_from(map).map_err(read)?;
    // The busy keys count in the per-CPU slots, the others in the hash map.
    let mut sums = slot_sums(open_pinned(pin_dir, SYSCALL_AGG_SLOTS_MAP)?)?;
    for entry in agg.iter() {
        let (k, values) = entry.map_err(read)?;
        let sum = sums
            .entry((k.id, k.generation, k.nr))
            .or_insert(SyscallStats::ZERO);
        for v in values.iter() {
            add_stats(sum, v);
        }
    }
    write_aggregation(sums, format, out)
}

/// Per-CPU slots summed by (id, generation, syscall); a slot's generation is the low
/// bit of its index.
fn slot_sums(map: Map) -> Result<BTreeMap<(u64, u32, u32), SyscallStats>, DumpError> {
    let read = read_error(SYSCALL_AGG_SLOTS_MAP);
    let slots: PerCpuArray<_, SyscallSlot> = PerCpuArray::try_from(map).map_err(read)?;
    let mut sums = BTreeMap::new();
    for index in 0..slots.len() {
        for v in slots.get(&index, 0).map_err(read)?.iter() {
            if v.stats.count != 0 {
                let e = sums
                    .entry((v.id, index & 1, v.nr))
                    .or_insert(SyscallStats::ZERO);
                add_stats(e, &v.stats);
            }
        }
    }
    Ok(sums)
}

fn write_aggregation(
    sums: BTreeMap<(u64, u32, u32), SyscallStats>,
    format: DumpFormat,
    mut out: &mut dyn Write,
) -> Result<(), DumpError> {
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
        DumpFormat::Json => rows.iter().try_for_each(|r| write_json(&mut out, r))?,
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
    Ok(())
}

fn errors(
    _pin_dir: &Path,
    map: Map,
    format: DumpFormat,
    mut out: &mut dyn Write,
) -> Result<(), DumpError> {
    let read = read_error(SYSCALL_ERRORS_MAP);
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
        DumpFormat::Json => rows.iter().try_for_each(|r| write_json(&mut out, r))?,
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
    Ok(())
}

fn config(
    _pin_dir: &Path,
    map: Map,
    format: DumpFormat,
    mut out: &mut dyn Write,
) -> Result<(), DumpError> {
    let read = read_error(SYSCALL_CONFIG_MAP);
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
        DumpFormat::Json => write_json(&mut out, &view)?,
        DumpFormat::Table => {
            let text = serde_json::to_value(&view).unwrap_or_default();
            if let Some(obj) = text.as_object() {
                for (k, v) in obj {
                    writeln!(out, "{k:<14} {v}")?;
                }
            }
        }
    }
    Ok(())
}

fn watched_paths(
    _pin_dir: &Path,
    map: Map,
    format: DumpFormat,
    mut out: &mut dyn Write,
) -> Result<(), DumpError> {
    let read = read_error(WATCHED_PATHS_MAP);
    let trie: LpmTrie<_, [u8; PATH_MAX_BYTES], u32> = LpmTrie::try_from(map).map_err(read)?;
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
            DumpFormat::Json => write_json(&mut out, &Row { path: p })?,
            DumpFormat::Table => writeln!(out, "{p}")?,
        }
    }
    Ok(())
}
