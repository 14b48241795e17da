//! Syscalls family: resolves what `probes/src/syscalls.rs` needs from the running kernel
//! (BTF offsets, `pid_max`, tracefs formats), attaches the aggregation programs (tp_btf,
//! falling back to raw tracepoints) and the security tracepoints, fills the watched-path
//! trie and writes the runtime configuration.

use std::time::Duration;

use aya::{
    maps::{lpm_trie::Key, LpmTrie},
    programs::{BtfTracePoint, ProgramError, RawTracePoint, TracePoint},
    Btf, Ebpf,
};
use hostscope_common::{syscalls::*, RingConfig};

use super::{privilege, AttachState, LoadError, ProbeStatus};
use crate::kernel::{btf::KernelBtf, tracefs::Tracefs};

/// Watched by default: credentials, sudo rules, root's SSH keys, Kubernetes tokens.
pub const DEFAULT_WATCH_PATHS: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/root/.ssh/",
    "/var/run/secrets/kubernetes.io/serviceaccount/",
    "/run/secrets/kubernetes.io/serviceaccount/",
];

/// Which programs count syscalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyscallHooks {
    /// tp_btf (cheapest), else raw tracepoints.
    Auto,
    /// Only tp_btf.
    TpBtf,
    /// Only raw tracepoints.
    RawTp,
    /// No syscall aggregation (security events only).
    Off,
}

/// Everything the syscalls family is configured with (CLI / tests).
#[derive(Clone, Debug)]
pub struct SyscallOptions {
    pub hooks: SyscallHooks,
    /// Attach the watched-path security tracepoints.
    pub security: bool,
    /// Absolute path prefixes (a trailing `/` watches a directory tree).
    pub watch_paths: Vec<String>,
    pub ring_bytes: u32,
    /// (process or cgroup, syscall) keys per generation pair; None sizes the map to a
    /// memory budget (per-CPU values are preallocated for every possible CPU).
    pub max_keys: Option<u32>,
    /// Start-time slots; None sizes them to `pid_max` (capped).
    pub start_slots: Option<u32>,
    /// Per-CPU aggregation slots per generation (rounded up to a power of two); None
    /// sizes them to this machine's CPU count ([`default_agg_slots`]).
    pub agg_slots: Option<u32>,
    /// Filters and thresholds written to the runtime config at start.
    pub runtime: SyscallRuntime,
    /// How often the aggregation maps are read and reset.
    pub interval: Duration,
    /// Error-burst alert: at least this many errors of one (process, syscall, errno)
    /// per second over an interval (and at least `error_burst_min` in it).
    pub error_burst_per_s: f64,
    pub error_burst_min: u64,
}

/// The runtime-changeable part (no reload): filters and the slow-syscall threshold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyscallRuntime {
    pub key_by_cgroup: bool,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub cgroup_id: Option<u64>,
    /// Syscall numbers to count; empty = all.
    pub syscalls: Vec<u32>,
    /// Detailed events (and slow alerts) for calls at least this long.
    pub slow_ns: Option<u64>,
}

impl Default for SyscallOptions {
    /// The built-in configuration tree's defaults.
    fn default() -> Self {
        SyscallsSection::default()
            .options()
            .expect("the built-in syscalls section is valid")
    }
}

/// A syscall by name (`openat`) or number, as the configuration file may give it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SyscallRef {
    Number(u32),
    Name(String),
}

/// A cgroup v2 by id, or by its directory (whose inode number is its id).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum CgroupRef {
    Id(u64),
    Path(String),
}

impl CgroupRef {
    pub fn id(&self) -> Result<u64, String> {
        use std::os::unix::fs::MetadataExt;
        match self {
            CgroupRef::Id(id) => Ok(*id),
            CgroupRef::Path(p) => {
                if let Ok(id) = p.parse::<u64>() {
                    return Ok(id);
                }
                let m = std::fs::metadata(p).map_err(|e| format!("cgroup {p}: {e}"))?;
                if !m.is_dir() {
                    return Err(format!("cgroup {p}: not a directory"));
                }
                Ok(m.ino())
            }
        }
    }
}

/// `syscalls:` in the configuration: aggregation, filters, alerts and watched paths.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyscallsSection {
    pub hooks: SyscallHooks,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub by_cgroup: bool,
    pub pid: Option<u32>,
    pub cgroup: Option<CgroupRef>,
    pub syscalls: Vec<SyscallRef>,
    #[serde(with = "humantime_serde")]
    pub slow_threshold: Option<Duration>,
    pub max_keys: Option<u32>,
    pub ring_bytes: u32,
    pub error_burst_rate: f64,
    pub error_burst_min: u64,
    pub security: bool,
    pub default_watch_paths: bool,
    pub watch_paths: Vec<String>,
}

impl Default for SyscallsSection {
    fn default() -> Self {
        SyscallsSection {
            hooks: SyscallHooks::Auto,
            interval: Duration::from_secs(5),
            by_cgroup: false,
            pid: None,
            cgroup: None,
            syscalls: Vec::new(),
            slow_threshold: None,
            max_keys: None,
            ring_bytes: SYSCALL_EVENTS_RING_BYTES,
            error_burst_rate: 50.0,
            error_burst_min: 20,
            security: true,
            default_watch_paths: true,
            watch_paths: Vec::new(),
        }
    }
}

impl SyscallsSection {
    pub const DOCS: crate::config::Docs = &[
        (
            "",
            "System calls, aggregated in the kernel, and access to watched paths.",
        ),
        (
            "hooks",
            "Programs counting syscalls: auto (tp-btf, else raw-tp), tp-btf, raw-tp, off.",
        ),
        (
            "interval",
            "How often the in-kernel aggregation is read and reset (50ms to 1h).",
        ),
        ("by_cgroup", "Aggregate per cgroup instead of per process."),
        (
            "pid",
            "Count only this process (tgid); null: every process.",
        ),
        (
            "cgroup",
            "Count only this cgroup v2: its id, or its directory; null: every cgroup.",
        ),
        (
            "syscalls",
            "Count only these syscalls (names or numbers); []: all.",
        ),
        (
            "slow_threshold",
            "Report each syscall at least this slow (e.g. 100ms), with slow alerts;\n\
             null: none.",
        ),
        (
            "max_keys",
            "Size of the aggregation map in keys (16 to 1048576); null: what fits\n\
             64 MiB on this machine's CPU count, at most 16384.",
        ),
        (
            "ring_bytes",
            "Size of the syscall event ring in bytes (a power of two).",
        ),
        (
            "error_burst_rate",
            "Error-burst alert: errors per second of one (process, syscall, errno).",
        ),
        (
            "error_burst_min",
            "Error-burst alert: at least this many errors in one interval.",
        ),
        ("security", "Report opens and execs of watched paths."),
        (
            "default_watch_paths",
            "Watch /etc/shadow, /etc/gshadow, /etc/sudoers, /root/.ssh/ and the\n\
             Kubernetes service-account token directories.",
        ),
        (
            "watch_paths",
            "More absolute path prefixes to watch (a trailing / watches a tree).",
        ),
    ];

    /// The watched paths in effect: the defaults (when on) then the configured ones.
    pub fn effective_watch_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = Vec::new();
        if self.default_watch_paths {
            paths.extend(DEFAULT_WATCH_PATHS.iter().map(|s| s.to_string()));
        }
        for p in &self.watch_paths {
            if !paths.contains(p) {
                paths.push(p.clone());
            }
        }
        paths
    }

    pub fn validate(&self, at: &str, p: &mut crate::config::Problems) {
        if !(Duration::from_millis(50)..=Duration::from_secs(3600)).contains(&self.interval) {
            p.push(format!("{at}.interval"), "must be between 50ms and 1h");
        }
        if let Some(CgroupRef::Path(_)) = &self.cgroup {
            if let Some(Err(e)) = self.cgroup.as_ref().map(CgroupRef::id) {
                p.push(format!("{at}.cgroup"), e);
            }
        }
        for (i, s) in self.syscalls.iter().enumerate() {
            if let Err(e) = syscall_number(s) {
                p.push(format!("{at}.syscalls[{i}]"), e);
            }
        }
        if let Some(t) = self.slow_threshold {
            if t.is_zero() {
                p.push(format!("{at}.slow_threshold"), "must be more than 0");
            }
        }
        if let Some(k) = self.max_keys {
            if !(16..=1_048_576).contains(&k) {
                p.push(
                    format!("{at}.max_keys"),
                    format_args!("{k} is not between 16 and 1048576"),
                );
            }
        }
        if let Err(e) = super::tcp::check_ring_bytes(self.ring_bytes) {
            p.push(format!("{at}.ring_bytes"), e);
        }
        if !(self.error_burst_rate > 0.0 && self.error_burst_rate.is_finite()) {
            p.push(
                format!("{at}.error_burst_rate"),
                "must be a positive number",
            );
        }
        for (i, path) in self.watch_paths.iter().enumerate() {
            if let Err(e) = check_watch_path(path) {
                p.push(format!("{at}.watch_paths[{i}]"), e);
            }
        }
        let n = self.effective_watch_paths().len();
        if n > WATCHED_PATHS_MAX as usize {
            p.push(
                format!("{at}.watch_paths"),
                OptionError::TooMany {
                    n,
                    max: WATCHED_PATHS_MAX,
                },
            );
        }
        if self.security && n == 0 {
            p.push(
                format!("{at}.watch_paths"),
                "no watched paths: turn default_watch_paths on, add watch_paths, or set \
                 security: false",
            );
        }
    }

    /// The running family's options (call after `validate`).
    pub fn options(&self) -> Result<SyscallOptions, String> {
        let syscalls = self
            .syscalls
            .iter()
            .map(syscall_number)
            .collect::<Result<Vec<_>, _>>()?;
        let runtime = SyscallRuntime {
            key_by_cgroup: self.by_cgroup,
            pid: self.pid,
            tid: None,
            cgroup_id: self.cgroup.as_ref().map(CgroupRef::id).transpose()?,
            syscalls,
            slow_ns: self.slow_threshold.map(|t| t.as_nanos() as u64),
        };
        // The probe's view of the filters is checked now, not at load time.
        runtime
            .to_config(0, RingConfig::DEFAULT)
            .map_err(|e| e.to_string())?;
        Ok(SyscallOptions {
            hooks: self.hooks,
            security: self.security,
            watch_paths: self.effective_watch_paths(),
            ring_bytes: self.ring_bytes,
            max_keys: self.max_keys,
            start_slots: None,
            agg_slots: None,
            runtime,
            interval: self.interval,
            error_burst_per_s: self.error_burst_rate,
            error_burst_min: self.error_burst_min,
        })
    }
}

fn syscall_number(s: &SyscallRef) -> Result<u32, String> {
    let nr = match s {
        SyscallRef::Number(n) => *n,
        SyscallRef::Name(name) => crate::events::syscalls::parse_syscall(name)?,
    };
    if nr >= SYSCALL_NR_MAX {
        return Err(OptionError::SyscallRange {
            nr,
            max: SYSCALL_NR_MAX,
        }
        .to_string());
    }
    Ok(nr)
}

#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    #[error("{path:?} is not an absolute path")]
    NotAbsolute { path: String },
    #[error("watched path {path:?} is longer than {max} bytes")]
    TooLong { path: String, max: usize },
    #[error("too many watched paths ({n}, at most {max})")]
    TooMany { n: usize, max: u32 },
    #[error("syscall number {nr} is beyond the filter's range (< {max})")]
    SyscallRange { nr: u32, max: u32 },
}

/// Checks a watched path prefix.
pub fn check_watch_path(path: &str) -> Result<(), OptionError> {
    if !path.starts_with('/') {
        return Err(OptionError::NotAbsolute {
            path: path.to_string(),
        });
    }
    if path.len() >= PATH_MAX_BYTES {
        return Err(OptionError::TooLong {
            path: path.to_string(),
            max: PATH_MAX_BYTES - 1,
        });
    }
    Ok(())
}

impl SyscallRuntime {
    /// The probe's view of these settings, for a given generation and ring policy.
    pub fn to_config(
        &self,
        generation: u32,
        ring: RingConfig,
    ) -> Result<SyscallConfig, OptionError> {
        let mut c = SyscallConfig::DEFAULT;
        c.ring = ring;
        c.generation = generation;
        c.key_by = if self.key_by_cgroup {
            KEY_BY_CGROUP
        } else {
            KEY_BY_PID
        };
        c.target_tgid = self.pid.unwrap_or(0);
        c.target_tid = self.tid.unwrap_or(0);
        c.target_cgroup = self.cgroup_id.unwrap_or(0);
        c.slow_ns = self.slow_ns.unwrap_or(0);
        if !self.syscalls.is_empty() {
            c.filter_syscalls = 1;
            for &nr in &self.syscalls {
                if nr >= SYSCALL_NR_MAX {
                    return Err(OptionError::SyscallRange {
                        nr,
                        max: SYSCALL_NR_MAX,
                    });
                }
                c.syscalls[(nr / 64) as usize] |= 1 << (nr % 64);
            }
        }
        Ok(c)
    }
}

/// What the running kernel offers the family, found before loading.
#[derive(Clone, Debug)]
pub struct SyscallPlan {
    pub offsets: SyscallOffsets,
    pub slots: u32,
    /// Security programs that cannot attach, with the reason.
    pub unavailable: Vec<(&'static str, String)>,
    /// What is degraded (missing BTF members).
    pub missing: Vec<String>,
}

/// Memory the aggregation map may take by default.
pub const AGG_MEMORY_BUDGET: usize = 64 << 20;

/// Keys that fit the budget with `cpus` per-CPU copies of each value, within
/// [1024, SYSCALL_AGG_MAX].
pub fn default_max_keys(cpus: usize) -> u32 {
    let per_key = std::mem::size_of::<SyscallStats>() * cpus.max(1);
    ((AGG_MEMORY_BUDGET / per_key) as u32).clamp(1024, SYSCALL_AGG_MAX)
}

/// Size of the aggregation map: as requested, else [`default_max_keys`].
pub fn max_keys(options: &SyscallOptions) -> u32 {
    options
        .max_keys
        .unwrap_or_else(|| default_max_keys(aya::util::nr_cpus().unwrap_or(1)))
}

/// Memory the per-CPU aggregation slots may take by default (both generations).
pub const AGG_SLOTS_MEMORY_BUDGET: usize = 16 << 20;

/// Slots per generation that fit the budget with `cpus` copies of each, a power of two
/// within [16, SYSCALL_AGG_SLOTS_MAX].
pub fn default_agg_slots(cpus: usize) -> u32 {
    let per_slot = 2 * std::mem::size_of::<SyscallSlot>() * cpus.max(1);
    let fit = (AGG_SLOTS_MEMORY_BUDGET / per_slot).max(1) as u32;
    // The largest power of two that fits.
    (1u32 << (31 - fit.leading_zeros())).clamp(16, SYSCALL_AGG_SLOTS_MAX)
}

/// Per-CPU aggregation slots per generation: as requested (rounded up to a power of
/// two, at least 1), else [`default_agg_slots`].
pub fn agg_slots(options: &SyscallOptions) -> u32 {
    match options.agg_slots {
        Some(n) => n.clamp(1, SYSCALL_AGG_SLOTS_MAX).next_power_of_two(),
        None => default_agg_slots(aya::util::nr_cpus().unwrap_or(1)),
    }
}

/// `pid_max` rounded up to a power of two, capped: one slot per possible tid.
pub fn start_slots(pid_max: Option<u32>, requested: Option<u32>) -> u32 {
    let want = requested.or(pid_max).unwrap_or(SYSCALL_START_SLOTS_MAX);
    want.clamp(1024, SYSCALL_START_SLOTS_MAX)
        .next_power_of_two()
}

fn read_pid_max() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn plan(btf: Option<&KernelBtf>, tracefs: &Tracefs, options: &SyscallOptions) -> SyscallPlan {
    let slots = start_slots(read_pid_max(), options.start_slots);
    let mut offsets = SyscallOffsets::DEFAULT;
    offsets.start_mask = slots - 1;
    offsets.agg_slot_mask = agg_slots(options) - 1;
    let mut missing = Vec::new();
    let mut member = |s: &str, m: &str, size: usize| match btf.map(|b| b.member(s, m, size)) {
        Some(Ok(o)) => o.offset,
        Some(Err(e)) => {
            missing.push(e.to_string());
            OFFSET_ABSENT
        }
        None => {
            missing.push(format!("{s}.{m}: no kernel BTF"));
            OFFSET_ABSENT
        }
    };
    // The syscall number in pt_regs: `orig_ax` on x86-64, `syscallno` on arm64.
    offsets.regs_nr = if cfg!(target_arch = "x86_64") {
        member("pt_regs", "orig_ax", 8)
    } else {
        OFFSET_ABSENT
    };
    offsets.task_real_parent = member("task_struct", "real_parent", 8);
    offsets.task_tgid = member("task_struct", "tgid", 4);

    let mut unavailable = Vec::new();
    for hook in SECURITY_HOOKS {
        let enter = format!("sys_enter_{}", hook.syscall);
        let why = match tracefs.format("syscalls", &enter) {
            Err(e) => Some(e.to_string()),
            Ok(format) => hook
                .fields
                .iter()
                .find_map(|(name, offset)| match format.field(name) {
                    Some(f) if f.offset as usize == *offset => None,
                    Some(f) => Some(format!(
                        "record layout differs: `{name}` at offset {} (expected {offset})",
                        f.offset
                    )),
                    None => Some(format!("record has no `{name}` field")),
                }),
        };
        let why = why.or_else(|| {
            let exit = format!("sys_exit_{}", hook.syscall);
            match tracefs.format("syscalls", &exit) {
                Err(e) => Some(e.to_string()),
                Ok(f) => match f.field("ret") {
                    Some(r) if r.offset as usize == SYS_EXIT_RET_OFFSET => None,
                    _ => Some(format!("{exit} has no `ret` at {SYS_EXIT_RET_OFFSET}")),
                },
            }
        });
        if let Some(why) = why {
            unavailable.push((hook.program, why));
        }
    }
    SyscallPlan {
        offsets,
        slots,
        unavailable,
        missing,
    }
}

/// Which halves of the family attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallsAttached {
    pub aggregation: bool,
    pub security: bool,
}

impl SyscallsAttached {
    pub fn any(&self) -> bool {
        self.aggregation || self.security
    }
}

/// A load or attach error, led by the missing capability (CAP_BPF, CAP_PERFMON) if any.
fn describe_tracing_error(e: &ProgramError) -> String {
    privilege::describe(
        e,
        &[privilege::CAP_BPF, privilege::CAP_PERFMON],
        "tracing programs",
    )
}

fn status(program: &'static str, hook: String, state: AttachState) -> ProbeStatus {
    ProbeStatus {
        family: "sys",
        program,
        hook,
        state,
    }
}

/// Attaches the family; returns which halves are up.
pub fn attach(
    ebpf: &mut Ebpf,
    plan: &SyscallPlan,
    options: &SyscallOptions,
    wakeup_bytes: u64,
    kernel_btf: Option<&Btf>,
    report: &mut Vec<ProbeStatus>,
) -> Result<SyscallsAttached, LoadError> {
    let mut up = SyscallsAttached::default();
    let bad = LoadError::SyscallOptions;
    let config = options
        .runtime
        .to_config(0, RingConfig { wakeup_bytes })
        .map_err(bad)?;
    // Config first, so the programs never run with an unset (all-zero) one.
    set_config(ebpf, config)?;

    up.aggregation = attach_aggregation(ebpf, plan, options.hooks, kernel_btf, report);

    if options.security {
        for p in &options.watch_paths {
            check_watch_path(p).map_err(bad)?;
        }
        if options.watch_paths.len() > WATCHED_PATHS_MAX as usize {
            return Err(bad(OptionError::TooMany {
                n: options.watch_paths.len(),
                max: WATCHED_PATHS_MAX,
            }));
        }
        set_watch_paths(ebpf, &options.watch_paths)?;
        up.security = attach_security(ebpf, plan, report);
    } else {
        for hook in SECURITY_HOOKS {
            report.push(status(
                hook.program,
                format!("tracepoint/syscalls/sys_enter_{}", hook.syscall),
                AttachState::Off("security events disabled (syscalls.security: false)".to_string()),
            ));
        }
    }
    Ok(up)
}

fn attach_aggregation(
    ebpf: &mut Ebpf,
    plan: &SyscallPlan,
    hooks: SyscallHooks,
    kernel_btf: Option<&Btf>,
    report: &mut Vec<ProbeStatus>,
) -> bool {
    let degraded = (plan.offsets.regs_nr == OFFSET_ABSENT).then(|| {
        "calls in flight at attach are not attributed (no pt_regs syscall-number offset)"
            .to_string()
    });
    let ok_state = || match &degraded {
        Some(w) => AttachState::Degraded(w.clone()),
        None => AttachState::Attached,
    };
    let mut attached = 0;
    for (btf_prog, raw_prog, tp) in [
        (
            SYSCALL_ENTER_PROGRAM,
            SYSCALL_ENTER_RAW_PROGRAM,
            "sys_enter",
        ),
        (SYSCALL_EXIT_PROGRAM, SYSCALL_EXIT_RAW_PROGRAM, "sys_exit"),
    ] {
        let btf_state = match hooks {
            SyscallHooks::Off => {
                AttachState::Off("syscall hooks off (syscalls.hooks: off)".to_string())
            }
            SyscallHooks::RawTp => AttachState::NotAttached("raw_tp requested".to_string()),
            SyscallHooks::Auto | SyscallHooks::TpBtf => {
                match attach_btf(ebpf, btf_prog, tp, kernel_btf) {
                    Ok(()) => ok_state(),
                    Err(e) => AttachState::NotAttached(e),
                }
            }
        };
        let btf_up = btf_state.is_up();
        report.push(status(btf_prog, format!("tp_btf/{tp}"), btf_state));
        let raw_state = if btf_up {
            AttachState::NotAttached("not needed: tp_btf attached".to_string())
        } else {
            match hooks {
                SyscallHooks::Off => {
                    AttachState::Off("syscall hooks off (syscalls.hooks: off)".to_string())
                }
                SyscallHooks::TpBtf => AttachState::NotAttached("tp_btf requested".to_string()),
                SyscallHooks::Auto | SyscallHooks::RawTp => match attach_raw(ebpf, raw_prog, tp) {
                    Ok(()) => ok_state(),
                    Err(e) => AttachState::NotAttached(describe_tracing_error(&e)),
                },
            }
        };
        let raw_up = raw_state.is_up();
        report.push(status(raw_prog, format!("raw_tp/{tp}"), raw_state));
        if btf_up || raw_up {
            attached += 1;
        }
    }
    // Counting happens at exit; enter only adds latency. Exit alone still counts.
    attached > 0
}

fn attach_btf(ebpf: &mut Ebpf, program: &str, tp: &str, btf: Option<&Btf>) -> Result<(), String> {
    let btf = btf.ok_or_else(|| format!("no kernel BTF at {}", crate::kernel::btf::VMLINUX_BTF))?;
    let mut run = || -> Result<(), ProgramError> {
        let p: &mut BtfTracePoint = ebpf
            .program_mut(program)
            .ok_or(ProgramError::UnexpectedProgramType)?
            .try_into()?;
        p.load(tp, btf)?;
        p.attach()?;
        Ok(())
    };
    run().map_err(|e| describe_tracing_error(&e))
}

fn attach_raw(ebpf: &mut Ebpf, program: &str, tp: &str) -> Result<(), ProgramError> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    p.load()?;
    p.attach(tp)?;
    Ok(())
}

fn attach_security(ebpf: &mut Ebpf, plan: &SyscallPlan, report: &mut Vec<ProbeStatus>) -> bool {
    let mut exits = Vec::new();
    for hook in SECURITY_HOOKS {
        let hook_name = format!("tracepoint/syscalls/sys_enter_{}", hook.syscall);
        let state =
            if let Some((_, why)) = plan.unavailable.iter().find(|(p, _)| *p == hook.program) {
                AttachState::NotAttached(why.clone())
            } else {
                let mut run = || -> Result<(), ProgramError> {
                    let p: &mut TracePoint = ebpf
                        .program_mut(hook.program)
                        .ok_or(ProgramError::UnexpectedProgramType)?
                        .try_into()?;
                    p.load()?;
                    p.attach("syscalls", &format!("sys_enter_{}", hook.syscall))?;
                    Ok(())
                };
                match run() {
                    Ok(()) if plan.missing.is_empty() => AttachState::Attached,
                    Ok(()) => {
                        AttachState::Degraded(format!("no parent pid: {}", plan.missing.join("; ")))
                    }
                    Err(e) => AttachState::NotAttached(describe_tracing_error(&e)),
                }
            };
        if state.is_up() {
            exits.push(hook.syscall);
        }
        report.push(status(hook.program, hook_name, state));
    }
    if exits.is_empty() {
        report.push(status(
            SECURITY_EXIT_PROGRAM,
            "tracepoint/syscalls/sys_exit_*".to_string(),
            AttachState::NotAttached("no security enter program attached".to_string()),
        ));
        return false;
    }
    let mut run = || -> Result<(), ProgramError> {
        let p: &mut TracePoint = ebpf
            .program_mut(SECURITY_EXIT_PROGRAM)
            .ok_or(ProgramError::UnexpectedProgramType)?
            .try_into()?;
        p.load()?;
        for s in &exits {
            p.attach("syscalls", &format!("sys_exit_{s}"))?;
        }
        Ok(())
    };
    let state = match run() {
        Ok(()) => AttachState::Attached,
        Err(e) => AttachState::NotAttached(describe_tracing_error(&e)),
    };
    let up = state.is_up();
    report.push(status(
        SECURITY_EXIT_PROGRAM,
        format!("tracepoint/syscalls/sys_exit_{{{}}}", exits.join(",")),
        state,
    ));
    up
}

/// The LPM key of a watched prefix: its bytes, matched over their length in bits.
pub fn path_key(path: &str) -> Key<[u8; PATH_MAX_BYTES]> {
    let mut data = [0u8; PATH_MAX_BYTES];
    let n = path.len().min(PATH_MAX_BYTES - 1);
    data[..n].copy_from_slice(&path.as_bytes()[..n]);
    Key::new((n * 8) as u32, data)
}

fn set_watch_paths(ebpf: &mut Ebpf, paths: &[String]) -> Result<(), LoadError> {
    let map = ebpf
        .map_mut(WATCHED_PATHS_MAP)
        .ok_or(LoadError::MissingMap {
            name: WATCHED_PATHS_MAP,
        })?;
    let err = |source| LoadError::Map {
        name: WATCHED_PATHS_MAP,
        source,
    };
    let mut trie: LpmTrie<_, [u8; PATH_MAX_BYTES], u32> = LpmTrie::try_from(map).map_err(err)?;
    for (i, p) in paths.iter().enumerate() {
        trie.insert(&path_key(p), i as u32, 0).map_err(err)?;
    }
    Ok(())
}

/// Writes the family's runtime configuration (slot 0 of `SYSCALL_CONFIG`).
pub fn set_config(ebpf: &mut Ebpf, config: SyscallConfig) -> Result<(), LoadError> {
    super::set_config(ebpf, SYSCALL_CONFIG_MAP, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agg_map_fits_the_budget() {
        assert_eq!(default_max_keys(2), SYSCALL_AGG_MAX);
        let k = default_max_keys(64) as usize;
        assert!(k * 64 * std::mem::size_of::<SyscallStats>() <= AGG_MEMORY_BUDGET);
        assert!(k > 3000, "{k}");
        assert_eq!(default_max_keys(100_000), 1024);
    }

    #[test]
    fn agg_slots_fit_their_budget() {
        assert_eq!(default_agg_slots(2), SYSCALL_AGG_SLOTS_MAX);
        for cpus in [1, 2, 64, 96, 512, 100_000] {
            let n = default_agg_slots(cpus);
            assert!(n.is_power_of_two() && (16..=SYSCALL_AGG_SLOTS_MAX).contains(&n));
            if n > 16 {
                let bytes = 2 * n as usize * cpus * std::mem::size_of::<SyscallSlot>();
                assert!(bytes <= AGG_SLOTS_MEMORY_BUDGET, "{cpus} CPUs: {bytes}");
            }
        }
        assert_eq!(default_agg_slots(512), 32);
        let mut o = SyscallOptions {
            agg_slots: Some(5),
            ..SyscallOptions::default()
        };
        assert_eq!(agg_slots(&o), 8);
        o.agg_slots = Some(0);
        assert_eq!(agg_slots(&o), 1);
    }

    #[test]
    fn slots_follow_pid_max() {
        assert_eq!(start_slots(Some(32_768), None), 32_768);
        assert_eq!(start_slots(Some(4_194_304), None), SYSCALL_START_SLOTS_MAX);
        assert_eq!(start_slots(Some(100), None), 1024);
        assert_eq!(start_slots(Some(40_000), None), 65_536);
        assert_eq!(start_slots(None, Some(5000)), 8192);
    }

    #[test]
    fn watch_paths_are_checked() {
        assert!(check_watch_path("/etc/shadow").is_ok());
        assert!(check_watch_path("etc/shadow").is_err());
        assert!(check_watch_path(&format!("/{}", "a".repeat(300))).is_err());
        let k = path_key("/etc/");
        let bytes: &[u8] =
            unsafe { std::slice::from_raw_parts((&k as *const Key<_>).cast(), 4 + PATH_MAX_BYTES) };
        assert_eq!(u32::from_ne_bytes(bytes[..4].try_into().unwrap()), 40);
        assert_eq!(&bytes[4..9], b"/etc/");
    }

    #[test]
    fn runtime_config_encodes_filters() {
        let r = SyscallRuntime {
            pid: Some(42),
            syscalls: vec![39, 257],
            slow_ns: Some(1000),
            ..Default::default()
        };
        let c = r.to_config(1, RingConfig::DEFAULT).unwrap();
        assert_eq!((c.target_tgid, c.generation, c.slow_ns), (42, 1, 1000));
        assert!(c.allows(39) && c.allows(257) && !c.allows(0));
        let bad = SyscallRuntime {
            syscalls: vec![SYSCALL_NR_MAX],
            ..Default::default()
        };
        assert!(bad.to_config(0, RingConfig::DEFAULT).is_err());
    }
}
