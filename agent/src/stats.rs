//! The agent's account of itself: per-family kernel counters (events emitted, lost to a
//! full ring, untracked, …), userspace counters, and per-program kernel cost when
//! `kernel.bpf_stats_enabled` is on.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{maps::PerCpuArray, Ebpf};
use hostscope_common::stats::Stat;
use serde::Serialize;

/// Counters kept by the agent's own tasks.
#[derive(Debug, Default)]
pub struct Counters {
    pub records_decoded: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Records a slow consumer (printer, exporter) missed from the broadcast channel.
    pub records_lagged: AtomicU64,
    /// Interval records made from the kernel's syscall aggregation maps (not ring records,
    /// so not in `records_decoded`, which is compared with the probes' `events_emitted`).
    pub records_aggregated: AtomicU64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProgramCost {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Runs the kernel skipped because another BPF program was running on the CPU
    /// (`kernel::program_runs`); counted whether or not bpf_stats are enabled.
    pub runs_missed: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentStats {
    /// family -> counter -> value, summed over CPUs.
    pub kernel: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub records_decoded: u64,
    pub decode_errors: u64,
    pub records_lagged: u64,
    pub records_aggregated: u64,
    /// Every loaded program; run counts and times stay 0 unless bpf_stats are enabled.
    pub programs: Vec<ProgramCost>,
    pub tls: crate::tls::tracker::TrackerStats,
    /// Each family's userspace account (its joiner's or tracker's), by family name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub families: BTreeMap<&'static str, FamilyStats>,
    /// Configuration generation and reloads (set by the run loop).
    pub config: crate::daemon::ReloadStats,
}

/// A family's userspace account: counters only grow, gauges are current levels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FamilyStats {
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, u64>,
}

impl std::fmt::Display for FamilyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (name, value) in self.counters.iter().chain(&self.gauges) {
            if !first {
                write!(f, " ")?;
            }
            first = false;
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

impl AgentStats {
    /// Events the kernel side could not deliver, plus records userspace dropped.
    pub fn total_lost(&self) -> u64 {
        let kernel: u64 = self
            .kernel
            .values()
            .map(|c| c.get(Stat::RingFull.name()).copied().unwrap_or(0))
            .sum();
        kernel + self.decode_errors + self.records_lagged
    }

    /// Probe runs the kernel skipped. Not in `total_lost`: most runs record nothing (an
    /// uninteresting state change), and the TCP probe makes the records a skipped run
    /// owed at the socket's next transition (`transitions_recovered`).
    pub fn runs_missed(&self) -> u64 {
        self.programs.iter().map(|p| p.runs_missed).sum()
    }
}

impl std::fmt::Display for AgentStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "agent: {} records, {} decode errors, {} lagged",
            self.records_decoded, self.decode_errors, self.records_lagged
        )?;
        write!(
            f,
            "; tls handshakes={} failures={} stream_gaps={} truncated={} lib_unmatched={}",
            self.tls.handshakes,
            self.tls.failures,
            self.tls.stream_gaps,
            self.tls.truncated_captures,
            self.tls.lib_events_unmatched
        )?;
        for (family, stats) in &self.families {
            write!(f, "; {family} (agent): {stats}")?;
        }
        for (family, counters) in &self.kernel {
            write!(f, "; {family}:")?;
            for (name, value) in counters {
                write!(f, " {name}={value}")?;
            }
        }
        let c = &self.config;
        write!(
            f,
            "; config generation={} reloads applied={} invalid={} partial={}",
            c.generation, c.applied, c.invalid, c.partial
        )?;
        if !c.pending_restart.is_empty() {
            write!(f, " pending_restart={}", c.pending_restart.join(","))?;
        }
        let missed = self.runs_missed();
        if missed > 0 {
            write!(f, "; {missed} probe runs skipped by the kernel (nested)")?;
        }
        for p in &self.programs {
            if p.run_count > 0 {
                write!(
                    f,
                    "; {} {} ns/run",
                    p.program,
                    p.run_time_ns / p.run_count.max(1)
                )?;
            }
        }
        Ok(())
    }
}

/// Sums a family's per-CPU stats array of the common [`Stat`] counters.
pub fn read_kernel_counters(ebpf: &Ebpf, map_name: &str) -> Option<BTreeMap<&'static str, u64>> {
    read_counters(ebpf, map_name, Stat::ALL.map(|s| (s as u32, s.name())))
}

/// Sums a per-CPU stats array: `stats` are (index, name). A map that cannot be read
/// yields no entry.
pub fn read_counters(
    ebpf: &Ebpf,
    map_name: &str,
    stats: impl IntoIterator<Item = (u32, &'static str)>,
) -> Option<BTreeMap<&'static str, u64>> {
    let array: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map(map_name)?).ok()?;
    let mut out = BTreeMap::new();
    for (index, name) in stats {
        let total = array
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0);
        out.insert(name, total);
    }
    Some(out)
}

pub fn read_program_costs(ebpf: &Ebpf) -> Vec<ProgramCost> {
    ebpf.programs()
        .filter_map(|(name, program)| {
            let runs = crate::kernel::program_runs::read(program)?;
            Some(ProgramCost {
                program: name.to_string(),
                run_count: runs.run_count,
                run_time_ns: runs.run_time_ns,
                runs_missed: runs.recursion_misses,
            })
        })
        .collect()
}

/// (decoded, decode errors, lagged, aggregated).
pub fn snapshot_counters(c: &Counters) -> (u64, u64, u64, u64) {
    (
        c.records_decoded.load(Ordering::Relaxed),
        c.decode_errors.load(Ordering::Relaxed),
        c.records_lagged.load(Ordering::Relaxed),
        c.records_aggregated.load(Ordering::Relaxed),
    )
}
