//! Syscall records: the per-interval aggregation read from the kernel's per-CPU maps
//! (probes/src/syscalls.rs), error-burst and slow-syscall detection over it, and the
//! ring records (security events, slow syscalls) decoded for text or JSON.
//!
//! Read and reset without loss: the probes write generation `g` (runtime config); at
//! each interval the aggregator flips to `1 - g`, waits a grace period far longer than
//! any program run, then reads and deletes every entry of `g`, in the per-CPU slots and
//! in the hash map. A call lands in exactly one generation, and each generation is read
//! once.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use hostscope_common::{syscalls::*, RingConfig};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::{comm_string, format_time_of_day, Clock, DecodeError, Record};
use crate::loader::syscalls::{OptionError, SyscallOptions, SyscallRuntime};

/// How long after a generation flip before the old generation is read: BPF programs
/// run for microseconds, so no program still writes the old one after this.
pub const FLIP_GRACE: Duration = Duration::from_millis(10);

/// The syscall's name on the running architecture, or its number.
pub fn syscall_name(nr: u32) -> String {
    syscalls::Sysno::new(nr as usize)
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| format!("syscall_{nr}"))
}

/// Parses a syscall given by name (for this architecture) or number.
pub fn parse_syscall(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    s.parse::<syscalls::Sysno>()
        .map(|n| n.id() as u32)
        .map_err(|_| format!("unknown syscall {s:?} on this architecture"))
}

pub fn errno_name(errno: u32) -> String {
    syscalls::Errno::new(errno as i32)
        .name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("E{errno}"))
}

// ---- interval records ---------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyscallRow {
    pub syscall: String,
    pub nr: u32,
    pub count: u64,
    pub errors: u64,
    /// Calls whose latency was measured (enter seen).
    pub timed: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// `hist[i]`: calls that took `[2^i, 2^(i+1))` ns (the last bucket: ≥ 2^31 ns).
    pub hist: Vec<u64>,
}

impl SyscallRow {
    pub fn mean_ns(&self) -> Option<f64> {
        (self.timed > 0).then(|| self.total_ns as f64 / self.timed as f64)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrnoRow {
    pub syscall: String,
    pub nr: u32,
    pub errno: u32,
    pub errno_name: String,
    pub count: u64,
}

/// One process's (or cgroup's) syscalls in one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessSyscalls {
    /// tgid (`key_by` pid) or cgroup id.
    pub id: u64,
    pub comm: String,
    pub calls: u64,
    pub errors: u64,
    /// By count, most frequent first.
    pub syscalls: Vec<SyscallRow>,
    /// By count, most frequent first.
    pub errnos: Vec<ErrnoRow>,
}

/// The subject of an aggregation row or alert: its id is a tgid or a cgroup id.
pub fn row_subject(key_by: &str, id: u64) -> crate::metadata::Subject {
    use crate::metadata::Subject;
    match key_by {
        "cgroup" => Subject {
            pid: None,
            cgroup_id: Some(id),
        },
        _ => Subject {
            pid: u32::try_from(id).ok(),
            cgroup_id: None,
        },
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyscallsRecord {
    pub ts_unix_ns: u64,
    pub interval_s: f64,
    /// `pid` or `cgroup`: what `processes[].id` is.
    pub key_by: &'static str,
    pub calls: u64,
    pub errors: u64,
    /// By calls, busiest first.
    pub processes: Vec<ProcessSyscalls>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Many errors of one errno from one syscall of one process.
    ErrorBurst,
    /// Calls at or above the slow threshold.
    Slow,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyscallAlert {
    pub kind: AlertKind,
    pub ts_unix_ns: u64,
    pub id: u64,
    pub key_by: &'static str,
    pub comm: String,
    pub syscall: String,
    pub nr: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_name: Option<String>,
    /// Errors (burst) or slow calls (at least this many: histogram buckets at or
    /// above the threshold's) in the interval.
    pub count: u64,
    pub rate_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_latency_ns: Option<u64>,
}

/// An alert of python3[42] on openat: an error burst of 250 `errno` errors in a second,
/// or a slow-call alert when None. The sinks' tests start from it.
#[cfg(test)]
pub(crate) fn sample_alert(errno: Option<i32>) -> SyscallAlert {
    SyscallAlert {
        kind: match errno {
            Some(_) => AlertKind::ErrorBurst,
            None => AlertKind::Slow,
        },
        ts_unix_ns: 1,
        id: 42,
        key_by: "pid",
        comm: "python3".into(),
        syscall: "openat".into(),
        nr: 257,
        errno: errno.map(|e| e as u32),
        errno_name: errno.map(|e| errno_name(e as u32)),
        count: 250,
        rate_per_s: 250.0,
        max_latency_ns: errno.is_none().then_some(5_000_000),
    }
}

/// Alert thresholds.
#[derive(Clone, Copy, Debug)]
pub struct Detection {
    pub error_burst_per_s: f64,
    pub error_burst_min: u64,
    pub slow_ns: Option<u64>,
}

/// Per-(id, nr) sums over CPUs of one generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub stats: BTreeMap<(u64, u32), SyscallStats>,
    pub errors: BTreeMap<(u64, u32, u32), u64>,
}

impl Snapshot {
    pub fn merge(&mut self, other: Snapshot) {
        for (k, v) in other.stats {
            let e = self.stats.entry(k).or_insert(SyscallStats::ZERO);
            add_stats(e, &v);
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// Adds one CPU's (or one slot's) stats of a key into a sum.
pub(crate) fn add_stats(into: &mut SyscallStats, v: &SyscallStats) {
    into.count += v.count;
    into.errors += v.errors;
    into.total_ns += v.total_ns;
    into.timed += v.timed;
    into.max_ns = into.max_ns.max(v.max_ns);
    for (a, b) in into.hist.iter_mut().zip(v.hist.iter()) {
        *a += b;
    }
    if into.comm[0] == 0 {
        into.comm = v.comm;
    }
}

/// Builds the interval record and the alerts from a snapshot, consuming it as it goes:
/// in a process storm both are megabytes, and they need not be held at once.
pub fn interval_records(
    snap: Snapshot,
    key_by_cgroup: bool,
    interval: Duration,
    ts_unix_ns: u64,
    detection: &Detection,
) -> (SyscallsRecord, Vec<SyscallAlert>) {
    let key_by = if key_by_cgroup { "cgroup" } else { "pid" };
    let secs = interval.as_secs_f64().max(1e-3);
    let mut procs: BTreeMap<u64, ProcessSyscalls> = BTreeMap::new();
    let mut alerts = Vec::new();
    for ((id, nr), s) in snap.stats {
        let p = procs.entry(id).or_insert_with(|| ProcessSyscalls {
            id,
            comm: String::new(),
            calls: 0,
            errors: 0,
            syscalls: Vec::new(),
            errnos: Vec::new(),
        });
        if p.comm.is_empty() {
            p.comm = comm_string(&s.comm);
        }
        p.calls += s.count;
        p.errors += s.errors;
        p.syscalls.push(SyscallRow {
            syscall: syscall_name(nr),
            nr,
            count: s.count,
            errors: s.errors,
            timed: s.timed,
            total_ns: s.total_ns,
            max_ns: s.max_ns,
            hist: s.hist.to_vec(),
        });
        if let Some(slow) = detection.slow_ns.filter(|&n| n > 0) {
            // Buckets wholly at or above the threshold: a lower bound of the slow calls.
            let first = latency_bucket(slow) + usize::from(slow > 1u64 << latency_bucket(slow));
            let n: u64 = s.hist.iter().skip(first).sum();
            if n > 0 {
                alerts.push(SyscallAlert {
                    kind: AlertKind::Slow,
                    ts_unix_ns,
                    id,
                    key_by,
                    comm: comm_string(&s.comm),
                    syscall: syscall_name(nr),
                    nr,
                    errno: None,
                    errno_name: None,
                    count: n,
                    rate_per_s: n as f64 / secs,
                    max_latency_ns: Some(s.max_ns),
                });
            }
        }
    }
    for ((id, nr, errno), count) in snap.errors {
        let comm = procs.get(&id).map(|p| p.comm.clone()).unwrap_or_default();
        let row = ErrnoRow {
            syscall: syscall_name(nr),
            nr,
            errno,
            errno_name: errno_name(errno),
            count,
        };
        let rate = count as f64 / secs;
        if count >= detection.error_burst_min && rate >= detection.error_burst_per_s {
            alerts.push(SyscallAlert {
                kind: AlertKind::ErrorBurst,
                ts_unix_ns,
                id,
                key_by,
                comm,
                syscall: row.syscall.clone(),
                nr,
                errno: Some(errno),
                errno_name: Some(row.errno_name.clone()),
                count,
                rate_per_s: rate,
                max_latency_ns: None,
            });
        }
        if let Some(p) = procs.get_mut(&id) {
            p.errnos.push(row);
        }
    }
    let mut processes: Vec<ProcessSyscalls> = procs.into_values().collect();
    for p in &mut processes {
        p.syscalls
            .sort_by(|a, b| b.count.cmp(&a.count).then(a.nr.cmp(&b.nr)));
        p.errnos
            .sort_by(|a, b| b.count.cmp(&a.count).then(a.nr.cmp(&b.nr)));
    }
    processes.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.id.cmp(&b.id)));
    let record = SyscallsRecord {
        ts_unix_ns,
        interval_s: interval.as_secs_f64(),
        key_by,
        calls: processes.iter().map(|p| p.calls).sum(),
        errors: processes.iter().map(|p| p.errors).sum(),
        processes,
    };
    (record, alerts)
}

// ---- reading the kernel maps --------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {name} missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error(transparent)]
    Options(#[from] OptionError),
    #[error("syscall alert settings: {0}")]
    Settings(String),
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> AggregatorError {
    move |source| AggregatorError::Map { name, source }
}

/// The aggregation maps and the runtime config, owned by the aggregator; the agent
/// changes filters through it without reloading.
pub struct SyscallMaps {
    config: Array<MapData, SyscallConfig>,
    agg: PerCpuHashMap<MapData, SyscallKey, SyscallStats>,
    slots: PerCpuArray<MapData, SyscallSlot>,
    errors: PerCpuHashMap<MapData, SyscallErrorKey, u64>,
    current: SyscallConfig,
    runtime: SyscallRuntime,
}

impl SyscallMaps {
    /// Takes the maps out of the loaded object.
    pub fn take(
        ebpf: &mut aya::Ebpf,
        runtime: SyscallRuntime,
    ) -> Result<SyscallMaps, AggregatorError> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or(AggregatorError::MissingMap { name })
        };
        let config =
            Array::try_from(take(SYSCALL_CONFIG_MAP)?).map_err(map_err(SYSCALL_CONFIG_MAP))?;
        let agg =
            PerCpuHashMap::try_from(take(SYSCALL_AGG_MAP)?).map_err(map_err(SYSCALL_AGG_MAP))?;
        let slots = PerCpuArray::try_from(take(SYSCALL_AGG_SLOTS_MAP)?)
            .map_err(map_err(SYSCALL_AGG_SLOTS_MAP))?;
        let errors = PerCpuHashMap::try_from(take(SYSCALL_ERRORS_MAP)?)
            .map_err(map_err(SYSCALL_ERRORS_MAP))?;
        let current = config.get(&0, 0).map_err(map_err(SYSCALL_CONFIG_MAP))?;
        Ok(SyscallMaps {
            config,
            agg,
            slots,
            errors,
            current,
            runtime,
        })
    }

    pub fn runtime(&self) -> &SyscallRuntime {
        &self.runtime
    }

    /// Changes filters / the slow threshold at run time (keeps the generation).
    pub fn set_runtime(&mut self, runtime: SyscallRuntime) -> Result<(), AggregatorError> {
        let c = runtime.to_config(self.current.generation, self.current.ring)?;
        self.config
            .set(0, c, 0)
            .map_err(map_err(SYSCALL_CONFIG_MAP))?;
        self.current = c;
        self.runtime = runtime;
        Ok(())
    }

    pub fn ring(&self) -> RingConfig {
        self.current.ring
    }

    /// Makes the probes write the other generation; returns the one to read after
    /// [`FLIP_GRACE`].
    pub fn flip(&mut self) -> Result<u32, AggregatorError> {
        let old = self.current.generation;
        let mut c = self.current;
        c.generation = old ^ 1;
        self.config
            .set(0, c, 0)
            .map_err(map_err(SYSCALL_CONFIG_MAP))?;
        self.current = c;
        Ok(old)
    }

    /// Reads, sums over CPUs and deletes every entry of `generation`.
    pub fn drain(&mut self, generation: u32) -> Result<Snapshot, AggregatorError> {
        let mut snap = Snapshot::default();
        self.drain_slots(generation, &mut snap);
        // Entries of the old generation no longer change; a second pass catches any
        // the first iteration skipped while new-generation keys were being inserted.
        for _ in 0..2 {
            let keys: Vec<SyscallKey> = self
                .agg
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.generation == generation)
                .collect();
            for k in keys {
                let values = match self.agg.get(&k, 0) {
                    Ok(v) => v,
                    Err(MapError::KeyNotFound) => continue,
                    Err(e) => return Err(map_err(SYSCALL_AGG_MAP)(e)),
                };
                let e = snap.stats.entry((k.id, k.nr)).or_insert(SyscallStats::ZERO);
                for v in values.iter() {
                    add_stats(e, v);
                }
                let _ = self.agg.remove(&k);
            }
            let keys: Vec<SyscallErrorKey> = self
                .errors
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.generation == generation)
                .collect();
            for k in keys {
                let values = match self.errors.get(&k, 0) {
                    Ok(v) => v,
                    Err(MapError::KeyNotFound) => continue,
                    Err(e) => return Err(map_err(SYSCALL_ERRORS_MAP)(e)),
                };
                *snap.errors.entry((k.id, k.nr, k.errno)).or_default() +=
                    values.iter().sum::<u64>();
                let _ = self.errors.remove(&k);
            }
        }
        Ok(snap)
    }

    /// Adds the per-CPU slots of `generation` to `snap` and frees them. A slot that
    /// cannot be freed is left out and said so: it keeps its counts, read with its
    /// generation next time (late, neither lost nor counted twice).
    fn drain_slots(&mut self, generation: u32, snap: &mut Snapshot) {
        let mut kept = Vec::new();
        for index in (generation & 1..self.slots.len()).step_by(2) {
            let values = match self.slots.get(&index, 0) {
                Ok(v) => v,
                Err(e) => {
                    kept.push(format!("{index}: {e}"));
                    continue;
                }
            };
            if values.iter().all(|v| v.stats.count == 0) {
                continue;
            }
            let freed = PerCpuValues::try_from(vec![SyscallSlot::FREE; values.len()])
                .map_err(|e| e.to_string())
                .and_then(|free| self.slots.set(index, free, 0).map_err(|e| e.to_string()));
            if let Err(e) = freed {
                kept.push(format!("{index}: {e}"));
                continue;
            }
            for v in values.iter().filter(|v| v.stats.count != 0) {
                let e = snap.stats.entry((v.id, v.nr)).or_insert(SyscallStats::ZERO);
                add_stats(e, &v.stats);
            }
        }
        if !kept.is_empty() {
            eprintln!(
                "hostscope: syscalls aggregator: could not free slots of {SYSCALL_AGG_SLOTS_MAP} \
                 ({}); their counts are read with their generation next time",
                kept.join(", ")
            );
        }
    }
}

/// What the agent keeps to change the family's runtime settings.
pub type SharedSyscallMaps = Arc<Mutex<SyscallMaps>>;

/// Flips, waits, drains: one interval's snapshot.
async fn collect(maps: &SharedSyscallMaps) -> Result<Snapshot, AggregatorError> {
    let old = lock(maps).flip()?;
    tokio::time::sleep(FLIP_GRACE).await;
    lock(maps).drain(old)
}

fn lock(maps: &SharedSyscallMaps) -> std::sync::MutexGuard<'_, SyscallMaps> {
    // A panic while holding the lock leaves plain map handles: still usable.
    maps.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the aggregator reads live from its `watch` channel: the interval and the
/// error-burst thresholds (the slow threshold is part of the runtime config).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlertSettings {
    pub interval: Duration,
    pub error_burst_per_s: f64,
    pub error_burst_min: u64,
}

/// Bounds of the interval, as on the command line.
pub const INTERVAL_MIN: Duration = Duration::from_millis(50);
pub const INTERVAL_MAX: Duration = Duration::from_secs(3600);

impl AlertSettings {
    pub fn from_options(o: &SyscallOptions) -> AlertSettings {
        AlertSettings {
            interval: o.interval,
            error_burst_per_s: o.error_burst_per_s,
            error_burst_min: o.error_burst_min,
        }
    }

    pub fn check(&self) -> Result<(), AggregatorError> {
        if !(INTERVAL_MIN..=INTERVAL_MAX).contains(&self.interval) {
            return Err(AggregatorError::Settings(format!(
                "interval {:?} is not between {INTERVAL_MIN:?} and {INTERVAL_MAX:?}",
                self.interval
            )));
        }
        if !(self.error_burst_per_s >= 0.0 && self.error_burst_per_s.is_finite()) {
            return Err(AggregatorError::Settings(format!(
                "error-burst rate {} is not a finite number of errors per second ≥ 0",
                self.error_burst_per_s
            )));
        }
        Ok(())
    }
}

/// The aggregator task: one [`SyscallsRecord`] (and alerts) per interval, plus a final
/// one of both generations at shutdown. `settings` can change while it runs: the
/// thresholds apply from the next record built, a new interval from the next tick
/// (rescheduled to one new interval after the last read, or now if that is past).
pub async fn run_aggregator(
    maps: SharedSyscallMaps,
    mut settings: watch::Receiver<AlertSettings>,
    clock: Clock,
    records: broadcast::Sender<Arc<Record>>,
    counters: Arc<crate::stats::Counters>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let every = |start: Instant, period: Duration| {
        let mut tick = tokio::time::interval_at(start.into(), period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    };
    let mut interval = settings.borrow_and_update().interval;
    let mut tick = every(Instant::now() + interval, interval);
    let mut last = Instant::now();
    // A dropped sender (the agent is going away) means no more changes, not a stop.
    let mut live = true;
    let io = |e: AggregatorError| std::io::Error::other(e.to_string());
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            changed = shutdown.changed() => changed.is_err() || *shutdown.borrow(),
            changed = settings.changed(), if live => {
                live = changed.is_ok();
                let new = settings.borrow_and_update().interval;
                if new != interval {
                    interval = new;
                    tick = every((last + new).max(Instant::now()), new);
                }
                continue;
            }
        };
        let mut snap = match collect(&maps).await {
            Ok(s) => s,
            // Entries not read stay in their generation and are read with it next
            // time: late, not lost. A failure at the last read is returned.
            Err(e) if !stopping => {
                eprintln!("hostscope: syscalls aggregator: {e} (retrying next interval)");
                continue;
            }
            Err(e) => return Err(io(e)),
        };
        if stopping {
            // Both generations: what was written since the last flip, too.
            snap.merge(collect(&maps).await.map_err(io)?);
        }
        let now = Instant::now();
        let elapsed = now - last;
        last = now;
        let runtime = lock(&maps).runtime().clone();
        let alert = *settings.borrow();
        let detection = Detection {
            error_burst_per_s: alert.error_burst_per_s,
            error_burst_min: alert.error_burst_min,
            slow_ns: runtime.slow_ns,
        };
        let (mut record, alerts) = interval_records(
            snap,
            runtime.key_by_cgroup,
            elapsed,
            clock.unix_ns(monotonic_ns()),
            &detection,
        );
        if !runtime.key_by_cgroup {
            // The kernel keeps the first caller's thread name; the process's own
            // command is more telling while the process still exists.
            for p in &mut record.processes {
                if let Some(c) = process_comm(p.id) {
                    p.comm = c;
                }
            }
        }
        // Not ring records: `records_decoded` keeps counting what the rings delivered
        // (compared against the probes' `events_emitted`).
        let send = |r: Record| {
            counters
                .records_aggregated
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = records.send(Arc::new(r));
        };
        send(Record::Syscalls(record));
        for a in alerts {
            send(Record::SyscallAlert(a));
        }
        if stopping {
            return Ok(());
        }
    }
}

/// `/proc/<pid>/comm` of a live process.
pub fn process_comm(pid: u64) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim_end_matches('\n').to_string())
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer, CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---- ring records -----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Open,
    Exec,
}

/// An open or exec of a watched path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SecurityRecord {
    pub ts_unix_ns: u64,
    pub access: Access,
    pub syscall: String,
    pub pid: u32,
    pub tid: u32,
    /// Parent's pid; None when the kernel offsets were unavailable.
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub path: String,
    /// The path filled the probe's buffer and may be cut.
    pub truncated: bool,
    /// Open flags (`O_*`), raw.
    pub flags: u64,
    /// fd or 0 on success, `-errno` on failure.
    pub result: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlowSyscallRecord {
    pub ts_unix_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub syscall: String,
    pub nr: u32,
    pub latency_ns: u64,
    pub result: i64,
}

fn read<T: Copy>(bytes: &[u8], family: &'static str) -> Result<T, DecodeError> {
    let expected = std::mem::size_of::<T>();
    if bytes.len() < expected {
        return Err(DecodeError::Size {
            family,
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: length checked; T is plain old data shared with the probes.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Decodes one record of `SYSCALL_EVENTS`.
pub fn decode(bytes: &[u8], clock: &Clock) -> Result<Record, DecodeError> {
    let kind: u32 = read(bytes, "syscalls")?;
    match kind {
        EVENT_SECURITY => {
            let ev: SecurityEvent = read(bytes, "security")?;
            Ok(Record::Security(security_record(&ev, clock)))
        }
        EVENT_SLOW_SYSCALL => {
            let ev: SlowSyscallEvent = read(bytes, "syscall_slow")?;
            Ok(Record::SyscallSlow(SlowSyscallRecord {
                ts_unix_ns: clock.unix_ns(ev.ts_ns),
                pid: ev.pid,
                tid: ev.tid,
                comm: comm_string(&ev.comm),
                cgroup_id: ev.cgroup_id,
                syscall: syscall_name(ev.nr),
                nr: ev.nr,
                latency_ns: ev.latency_ns,
                result: ev.ret,
            }))
        }
        kind => Err(DecodeError::Kind {
            family: "syscalls",
            kind,
        }),
    }
}

pub fn security_record(ev: &SecurityEvent, clock: &Clock) -> SecurityRecord {
    let len = (ev.path_len as usize).min(PATH_MAX_BYTES);
    let result = ev.ret;
    SecurityRecord {
        ts_unix_ns: clock.unix_ns(ev.ts_ns),
        access: if ev.access == ACCESS_EXEC {
            Access::Exec
        } else {
            Access::Open
        },
        syscall: syscall_name(ev.nr),
        pid: ev.pid,
        tid: ev.tid,
        ppid: (ev.ppid != 0).then_some(ev.ppid),
        uid: ev.uid,
        gid: ev.gid,
        comm: comm_string(&ev.comm),
        cgroup_id: ev.cgroup_id,
        path: String::from_utf8_lossy(&ev.path[..len]).into_owned(),
        truncated: ev.truncated != 0,
        flags: ev.flags,
        result,
        errno_name: (-4095..0)
            .contains(&result)
            .then(|| errno_name((-result) as u32)),
    }
}

// ---- text --------------------------------------------------------------------------------

/// Processes and syscalls shown per interval in text output (JSON has them all).
const TEXT_TOP_PROCESSES: usize = 8;
const TEXT_TOP_SYSCALLS: usize = 4;

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

impl std::fmt::Display for SyscallsRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} syscalls {} calls, {} errors in {:.1} s, {} {}s",
            format_time_of_day(self.ts_unix_ns),
            self.calls,
            self.errors,
            self.interval_s,
            self.processes.len(),
            self.key_by
        )?;
        for p in self.processes.iter().take(TEXT_TOP_PROCESSES) {
            write!(
                f,
                "\n  {}[{}] {} calls, {} errors:",
                p.comm, p.id, p.calls, p.errors
            )?;
            for s in p.syscalls.iter().take(TEXT_TOP_SYSCALLS) {
                write!(f, " {} {}", s.syscall, s.count)?;
                if let Some(m) = s.mean_ns() {
                    write!(f, " (avg {}, max {})", fmt_ns(m), fmt_ns(s.max_ns as f64))?;
                }
                write!(f, ";")?;
            }
            for e in p.errnos.iter().take(TEXT_TOP_SYSCALLS) {
                write!(f, " {} {} x{};", e.syscall, e.errno_name, e.count)?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for SyscallAlert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = format_time_of_day(self.ts_unix_ns);
        match self.kind {
            AlertKind::ErrorBurst => write!(
                f,
                "{t} syscalls ERROR BURST {}[{}] {} -> {} x{} ({:.0}/s)",
                self.comm,
                self.id,
                self.syscall,
                self.errno_name.as_deref().unwrap_or("?"),
                self.count,
                self.rate_per_s
            ),
            AlertKind::Slow => write!(
                f,
                "{t} syscalls SLOW {}[{}] {} x{} at or over the threshold (max {})",
                self.comm,
                self.id,
                self.syscall,
                self.count,
                fmt_ns(self.max_latency_ns.unwrap_or(0) as f64)
            ),
        }
    }
}

impl std::fmt::Display for SlowSyscallRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} syscall slow     {}[{}/{}] {} took {} -> {}",
            format_time_of_day(self.ts_unix_ns),
            self.comm,
            self.pid,
            self.tid,
            self.syscall,
            fmt_ns(self.latency_ns as f64),
            self.result
        )
    }
}

impl std::fmt::Display for SecurityRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.access {
            Access::Open => "open",
            Access::Exec => "exec",
        };
        write!(
            f,
            "{} security {what} {:?}{} by {}[{}] uid {} ppid {} via {} flags {:#x} -> ",
            format_time_of_day(self.ts_unix_ns),
            self.path,
            if self.truncated { "…" } else { "" },
            self.comm,
            self.pid,
            self.uid,
            self.ppid.map_or("?".to_string(), |p| p.to_string()),
            self.syscall,
            self.flags
        )?;
        match &self.errno_name {
            Some(e) => write!(f, "{e}"),
            None => write!(f, "{}", self.result),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(count: u64, hist: &[(usize, u64)]) -> SyscallStats {
        let mut s = SyscallStats::ZERO;
        s.count = count;
        for &(b, n) in hist {
            s.hist[b] = n;
            s.timed += n;
        }
        s.comm[..4].copy_from_slice(b"test");
        s
    }

    #[test]
    fn names_for_this_architecture() {
        let getppid = parse_syscall("getppid").unwrap();
        assert_eq!(getppid as i64, libc::SYS_getppid);
        assert_eq!(syscall_name(getppid), "getppid");
        assert_eq!(parse_syscall("39").unwrap(), 39);
        assert!(parse_syscall("no_such_call").is_err());
        assert_eq!(errno_name(libc::EBADF as u32), "EBADF");
    }

    #[test]
    fn records_group_by_process_and_detect_bursts() {
        let mut snap = Snapshot::default();
        let openat = libc::SYS_openat as u32;
        let close = libc::SYS_close as u32;
        snap.stats
            .insert((7, openat), stats(500, &[(10, 400), (25, 3)]));
        snap.stats.insert((7, close), stats(10, &[]));
        snap.stats.insert((8, close), stats(1, &[]));
        snap.errors.insert((7, openat, libc::EMFILE as u32), 450);
        snap.errors.insert((8, close, libc::EBADF as u32), 1);
        let (rec, alerts) = interval_records(
            snap,
            false,
            Duration::from_secs(1),
            0,
            &Detection {
                error_burst_per_s: 100.0,
                error_burst_min: 10,
                slow_ns: Some(20_000_000),
            },
        );
        assert_eq!(rec.calls, 511);
        assert_eq!(rec.processes[0].id, 7);
        assert_eq!(rec.processes[0].syscalls[0].syscall, "openat");
        assert_eq!(rec.processes[0].errnos[0].errno_name, "EMFILE");
        let burst: Vec<_> = alerts
            .iter()
            .filter(|a| a.kind == AlertKind::ErrorBurst)
            .collect();
        assert_eq!(burst.len(), 1);
        assert_eq!((burst[0].id, burst[0].count), (7, 450));
        // 20 ms falls in bucket 24 ([16.7, 33.5) ms), which is not wholly above it:
        // only bucket 25 counts.
        let slow: Vec<_> = alerts
            .iter()
            .filter(|a| a.kind == AlertKind::Slow)
            .collect();
        assert_eq!(slow.len(), 1);
        assert_eq!(slow[0].count, 3);
    }

    #[test]
    fn merge_adds() {
        let mut a = Snapshot::default();
        a.stats.insert((1, 2), stats(3, &[(1, 1)]));
        let mut b = Snapshot::default();
        b.stats.insert((1, 2), stats(4, &[(1, 2)]));
        b.errors.insert((1, 2, 9), 1);
        a.merge(b);
        assert_eq!(a.stats[&(1, 2)].count, 7);
        assert_eq!(a.stats[&(1, 2)].hist[1], 3);
        assert_eq!(a.errors[&(1, 2, 9)], 1);
    }
}
