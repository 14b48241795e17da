//! Syscall telemetry (per-process / per-cgroup counts, errors by errno, log2 latency
//! histograms, aggregated in the kernel) and security events (opens and execs of watched
//! paths): types shared by `probes/src/syscalls.rs` and the agent's
//! `loader/syscalls.rs` / `events/syscalls.rs`.

use crate::{RingConfig, TASK_COMM_LEN};

// ---- names --------------------------------------------------------------------------

/// Per-thread syscall start times (array indexed by `tid & mask`).
pub const SYSCALL_START_MAP: &str = "SYSCALL_START";
/// Per-CPU aggregation: (process or cgroup, syscall, generation) -> [`SyscallStats`].
pub const SYSCALL_AGG_MAP: &str = "SYSCALL_AGG";
/// Per-CPU array of [`SyscallSlot`]s: the hot keys of [`SYSCALL_AGG_MAP`] without its
/// hash lookup (slot [`agg_slot`] or its neighbour); a key whose two slots other keys
/// hold goes to the hash.
pub const SYSCALL_AGG_SLOTS_MAP: &str = "SYSCALL_AGG_SLOTS";
/// Per-CPU error counts: (process or cgroup, syscall, errno, generation) -> u64.
pub const SYSCALL_ERRORS_MAP: &str = "SYSCALL_ERRORS";
pub const SYSCALL_STATS_MAP: &str = "SYSCALL_STATS";
pub const SYSCALL_CONFIG_MAP: &str = "SYSCALL_CONFIG";
/// Slow-syscall and security events.
pub const SYSCALL_EVENTS_MAP: &str = "SYSCALL_EVENTS";
/// Watched path prefixes (LPM trie over path bytes).
pub const WATCHED_PATHS_MAP: &str = "WATCHED_PATHS";
/// Opens/execs of watched paths between their enter and exit, keyed by tid.
pub const SECURITY_PENDING_MAP: &str = "SECURITY_PENDING";
/// Per-CPU scratch space for path reads (too large for the BPF stack).
pub const SECURITY_SCRATCH_MAP: &str = "SECURITY_SCRATCH";
pub const SECURITY_EVENT_SCRATCH_MAP: &str = "SECURITY_EVENT_SCRATCH";
/// All-zero [`SyscallStats`] the probe inserts for a new key (never written).
pub const SYSCALL_AGG_ZERO_MAP: &str = "SYSCALL_AGG_ZERO";
pub const SYSCALL_OFFSETS_GLOBAL: &str = "SYSCALL_OFFSETS";

/// Programs. The `tp_btf` pair is the fast path; the raw tracepoint pair is the fallback
/// for kernels that refuse BTF-typed tracepoint programs.
pub const SYSCALL_ENTER_PROGRAM: &str = "syscall_enter";
pub const SYSCALL_EXIT_PROGRAM: &str = "syscall_exit";
pub const SYSCALL_ENTER_RAW_PROGRAM: &str = "syscall_enter_raw";
pub const SYSCALL_EXIT_RAW_PROGRAM: &str = "syscall_exit_raw";
pub const SECURITY_EXIT_PROGRAM: &str = "security_exit";

/// Default capacities.
pub const SYSCALL_AGG_MAX: u32 = 16_384;
pub const SYSCALL_ERRORS_MAX: u32 = 8_192;
pub const SYSCALL_EVENTS_RING_BYTES: u32 = 1024 * 1024;
pub const WATCHED_PATHS_MAX: u32 = 1_024;
pub const SECURITY_PENDING_MAX: u32 = 4_096;
/// Upper bound of start-time slots (16 MiB); below it the loader sizes the array to
/// `pid_max`, which makes slots exact (one per possible tid).
pub const SYSCALL_START_SLOTS_MAX: u32 = 1 << 20;
/// Upper bound of [`SYSCALL_AGG_SLOTS_MAP`] slots per generation (a power of two); the
/// loader takes fewer on machines with many CPUs (the values are per CPU).
pub const SYSCALL_AGG_SLOTS_MAX: u32 = 2048;

/// Log2 latency buckets: bucket `i` holds latencies in `[2^i, 2^(i+1))` ns, bucket 0
/// also holds 0 and 1 ns, the last bucket everything from `2^31` ns (≈ 2.1 s) up.
pub const LATENCY_BUCKETS: usize = 32;
/// Syscall numbers covered by the allow-list bitmap (x86-64 tops out at ~470).
pub const SYSCALL_BITMAP_WORDS: usize = 8;
pub const SYSCALL_NR_MAX: u32 = (SYSCALL_BITMAP_WORDS * 64) as u32;

/// Bytes of a path read and matched; longer paths are matched on this prefix and
/// reported truncated.
pub const PATH_MAX_BYTES: usize = 256;

/// One classic tracepoint program of the security half: `syscalls:sys_enter_<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecurityHook {
    pub program: &'static str,
    /// `syscalls:sys_enter_<syscall>` / `sys_exit_<syscall>`.
    pub syscall: &'static str,
    /// Fields the probe reads at fixed offsets; the loader checks them against the
    /// running kernel's tracefs format before attaching.
    pub fields: &'static [(&'static str, usize)],
}

pub const SECURITY_OPEN_ENTER: &str = "security_open_enter";
pub const SECURITY_OPENAT_ENTER: &str = "security_openat_enter";
pub const SECURITY_OPENAT2_ENTER: &str = "security_openat2_enter";
pub const SECURITY_EXEC_ENTER: &str = "security_exec_enter";
pub const SECURITY_EXECAT_ENTER: &str = "security_execat_enter";

pub const SECURITY_HOOKS: [SecurityHook; 5] = [
    SecurityHook {
        program: SECURITY_OPEN_ENTER,
        syscall: "open",
        fields: &[("filename", 16), ("flags", 24)],
    },
    SecurityHook {
        program: SECURITY_OPENAT_ENTER,
        syscall: "openat",
        fields: &[("filename", 24), ("flags", 32)],
    },
    SecurityHook {
        program: SECURITY_OPENAT2_ENTER,
        syscall: "openat2",
        fields: &[("filename", 24), ("how", 32)],
    },
    SecurityHook {
        program: SECURITY_EXEC_ENTER,
        syscall: "execve",
        fields: &[("filename", 16)],
    },
    SecurityHook {
        program: SECURITY_EXECAT_ENTER,
        syscall: "execveat",
        fields: &[("filename", 24), ("flags", 48)],
    },
];

/// `ret` of every `syscalls:sys_exit_*` record.
pub const SYS_EXIT_RET_OFFSET: usize = 16;

// ---- configuration ------------------------------------------------------------------

/// Marks an offset the running kernel does not provide.
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// Load-time constants resolved by userspace (BTF), because Rust eBPF has no CO-RE.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallOffsets {
    /// `tid & start_mask` indexes [`SYSCALL_START_MAP`] (its size minus one).
    pub start_mask: u32,
    /// `struct pt_regs` member holding the syscall number (`orig_ax` on x86-64),
    /// read at exit when no start slot matched.
    pub regs_nr: u32,
    /// `task_struct.real_parent` and `task_struct.tgid`, for the parent pid.
    pub task_real_parent: u32,
    pub task_tgid: u32,
    /// Slots per generation of [`SYSCALL_AGG_SLOTS_MAP`] minus one (a power of two
    /// minus one); the map holds twice as many.
    pub agg_slot_mask: u32,
    pub _pad: u32,
}

impl SyscallOffsets {
    pub const DEFAULT: SyscallOffsets = SyscallOffsets {
        start_mask: 0,
        regs_nr: OFFSET_ABSENT,
        task_real_parent: OFFSET_ABSENT,
        task_tgid: OFFSET_ABSENT,
        agg_slot_mask: 0,
        _pad: 0,
    };
}

/// Aggregate by process (tgid) or by cgroup v2 id.
pub const KEY_BY_PID: u32 = 0;
pub const KEY_BY_CGROUP: u32 = 1;

/// Runtime configuration ([`SYSCALL_CONFIG_MAP`], slot 0), changed without reloading.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallConfig {
    pub ring: RingConfig,
    /// Generation of the aggregation maps the probes write (0 or 1); userspace flips it,
    /// then reads and clears the other one.
    pub generation: u32,
    /// [`KEY_BY_PID`] or [`KEY_BY_CGROUP`].
    pub key_by: u32,
    /// Only this process (tgid) / thread / cgroup; 0 = any.
    pub target_tgid: u32,
    pub target_tid: u32,
    pub target_cgroup: u64,
    /// Emit a slow-syscall event for calls at least this long; 0 = none.
    pub slow_ns: u64,
    /// 1: only syscalls whose bit is set in `syscalls`.
    pub filter_syscalls: u32,
    pub _pad: u32,
    pub syscalls: [u64; SYSCALL_BITMAP_WORDS],
}

impl SyscallConfig {
    pub const DEFAULT: SyscallConfig = SyscallConfig {
        ring: RingConfig::DEFAULT,
        generation: 0,
        key_by: KEY_BY_PID,
        target_tgid: 0,
        target_tid: 0,
        target_cgroup: 0,
        slow_ns: 0,
        filter_syscalls: 0,
        _pad: 0,
        syscalls: [0; SYSCALL_BITMAP_WORDS],
    };

    /// Whether syscall `nr` passes the allow-list.
    pub fn allows(&self, nr: u32) -> bool {
        if self.filter_syscalls == 0 {
            return true;
        }
        nr < SYSCALL_NR_MAX && self.syscalls[(nr / 64) as usize] & (1 << (nr % 64)) != 0
    }
}

// ---- in-kernel state ----------------------------------------------------------------

/// One slot of [`SYSCALL_START_MAP`]: the syscall a thread is in, since when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallStart {
    pub start_ns: u64,
    /// Owner of the slot; 0 = free (cleared at exit).
    pub tid: u32,
    pub nr: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    /// tgid or cgroup id (see `key_by`).
    pub id: u64,
    pub nr: u32,
    pub generation: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallErrorKey {
    pub id: u64,
    pub nr: u32,
    pub errno: u32,
    pub generation: u32,
    pub _pad: u32,
}

/// Index in [`SYSCALL_AGG_SLOTS_MAP`] of the slot a key may use: a multiplicative hash
/// of (id, syscall) under `mask`, then the generation as the low bit, so the two
/// generations never share a slot.
#[inline(always)]
pub fn agg_slot(id: u64, nr: u32, generation: u32, mask: u32) -> u32 {
    let h = ((id << 10) ^ nr as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    ((h as u32 & mask) << 1) | (generation & 1)
}

/// Per-CPU value of [`SYSCALL_AGG_SLOTS_MAP`]: free while `stats.count` is 0, else the
/// (id, syscall) its counts belong to. Userspace zeroes it after reading its generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallSlot {
    pub id: u64,
    pub nr: u32,
    pub _pad: u32,
    pub stats: SyscallStats,
}

impl SyscallSlot {
    pub const FREE: SyscallSlot = SyscallSlot {
        id: 0,
        nr: 0,
        _pad: 0,
        stats: SyscallStats::ZERO,
    };
}

/// Per-CPU value of [`SYSCALL_AGG_MAP`]; userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallStats {
    pub count: u64,
    pub errors: u64,
    /// Sum and maximum of the latencies measured (calls whose enter was seen).
    pub total_ns: u64,
    pub max_ns: u64,
    pub timed: u64,
    pub hist: [u64; LATENCY_BUCKETS],
    /// Command of the first caller in the interval.
    pub comm: [u8; TASK_COMM_LEN],
}

impl SyscallStats {
    pub const ZERO: SyscallStats = SyscallStats {
        count: 0,
        errors: 0,
        total_ns: 0,
        max_ns: 0,
        timed: 0,
        hist: [0; LATENCY_BUCKETS],
        comm: [0; TASK_COMM_LEN],
    };
}

/// Index of the log2 bucket of a latency in ns.
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    // BPF has no count-leading-zeros instruction: a binary search whose steps shift by
    // 16, 8, 4, 2 when the value is that large (a compare and a shift each, no
    // data-dependent branch around several instructions), then the last bit.
    if ns >= 1 << 32 {
        return LATENCY_BUCKETS - 1;
    }
    let mut v = ns;
    let mut b = 0;
    for bits in [16, 8, 4, 2] {
        let s = if v >= 1 << bits { bits } else { 0 };
        v >>= s;
        b += s;
    }
    // v < 4 here; at most 16 + 8 + 4 + 2 + 1 = 31.
    (b + (v >> 1)) as usize
}

/// Key of [`WATCHED_PATHS_MAP`]: layout of `struct bpf_lpm_trie_key` + path bytes.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct PathKey {
    /// Bits of `path` to match.
    pub prefix_len: u32,
    pub path: [u8; PATH_MAX_BYTES],
}

// ---- records --------------------------------------------------------------------------

/// Kinds of records in [`SYSCALL_EVENTS_MAP`] (first `u32` of each).
pub const EVENT_SECURITY: u32 = 1;
pub const EVENT_SLOW_SYSCALL: u32 = 2;

/// What a watched-path access was.
pub const ACCESS_OPEN: u32 = 1;
pub const ACCESS_EXEC: u32 = 2;

/// An open or exec of a watched path, emitted at syscall exit with the result.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecurityEvent {
    pub kind: u32,
    /// [`ACCESS_OPEN`] or [`ACCESS_EXEC`].
    pub access: u32,
    /// Syscall enter time, CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    /// Open flags (`O_*`; for openat2, `open_how.flags`); for execveat its `AT_*`
    /// flags; 0 for execve.
    pub flags: u64,
    /// Return value: fd (open), 0 (exec) or `-errno`.
    pub ret: i64,
    pub pid: u32,
    pub tid: u32,
    /// Parent's tgid; 0 when unknown.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Syscall number.
    pub nr: u32,
    /// Bytes of `path` used (without NUL); `truncated` when the path was longer.
    pub path_len: u32,
    pub truncated: u32,
    pub comm: [u8; TASK_COMM_LEN],
    pub path: [u8; PATH_MAX_BYTES],
}

/// A syscall slower than `slow_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowSyscallEvent {
    pub kind: u32,
    pub nr: u32,
    pub ts_ns: u64,
    pub latency_ns: u64,
    pub ret: i64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// Per-CPU counters of the family ([`SYSCALL_STATS_MAP`]). The ring counters share
/// their index and name with [`crate::stats::Stat`], so the shared ring helpers and the
/// agent's loss accounting (`events_lost_ring_full`) work on this family too.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallStat {
    /// Records written to / dropped from the event ring.
    EventsEmitted = 0,
    RingFull = 1,
    /// Calls not aggregated because the aggregation map was full.
    AggMapFull = 2,
    /// Exits with no matching start slot (call in flight at attach, or the slot was
    /// taken by another thread): counted without latency.
    Untimed = 3,
    /// Kernel memory reads (parent pid, syscall number) that failed.
    ReadFailed = 4,
    /// Ring wakeups forced because the pending data crossed the threshold.
    Wakeups = 5,
    /// Errors not counted by errno because the error map was full.
    ErrorMapFull = 6,
    /// Exits whose syscall number could not be read (no slot, no `pt_regs` offset).
    ExitUnknown = 7,
    /// Watched-path accesses lost because the pending map was full.
    PendingMapFull = 8,
    /// Path reads from user memory that failed.
    PathReadFailed = 9,
}

pub const SYSCALL_STAT_COUNT: u32 = 10;

impl SyscallStat {
    pub const ALL: [SyscallStat; SYSCALL_STAT_COUNT as usize] = [
        SyscallStat::EventsEmitted,
        SyscallStat::RingFull,
        SyscallStat::AggMapFull,
        SyscallStat::Untimed,
        SyscallStat::ReadFailed,
        SyscallStat::Wakeups,
        SyscallStat::ErrorMapFull,
        SyscallStat::ExitUnknown,
        SyscallStat::PendingMapFull,
        SyscallStat::PathReadFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            SyscallStat::EventsEmitted => crate::stats::Stat::EventsEmitted.name(),
            SyscallStat::RingFull => crate::stats::Stat::RingFull.name(),
            SyscallStat::Wakeups => crate::stats::Stat::Wakeups.name(),
            SyscallStat::ReadFailed => crate::stats::Stat::ReadFailed.name(),
            SyscallStat::AggMapFull => "agg_map_full",
            SyscallStat::Untimed => "exits_untimed",
            SyscallStat::ErrorMapFull => "error_map_full",
            SyscallStat::ExitUnknown => "exits_unknown_syscall",
            SyscallStat::PendingMapFull => "security_pending_full",
            SyscallStat::PathReadFailed => "path_read_failed",
        }
    }
}

const _: () =
    assert!(SyscallStat::EventsEmitted as u32 == crate::stats::Stat::EventsEmitted as u32);
const _: () = assert!(SyscallStat::RingFull as u32 == crate::stats::Stat::RingFull as u32);
const _: () = assert!(SyscallStat::ReadFailed as u32 == crate::stats::Stat::ReadFailed as u32);
const _: () = assert!(SyscallStat::Wakeups as u32 == crate::stats::Stat::Wakeups as u32);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SyscallOffsets {}
    unsafe impl aya::Pod for super::SyscallConfig {}
    unsafe impl aya::Pod for super::SyscallStart {}
    unsafe impl aya::Pod for super::SyscallKey {}
    unsafe impl aya::Pod for super::SyscallErrorKey {}
    unsafe impl aya::Pod for super::SyscallStats {}
    unsafe impl aya::Pod for super::SyscallSlot {}
    unsafe impl aya::Pod for super::SecurityEvent {}
    unsafe impl aya::Pod for super::SlowSyscallEvent {}
}

const _: () = assert!(core::mem::size_of::<SyscallOffsets>() == 24);
const _: () = assert!(core::mem::size_of::<SyscallConfig>() == 112);
const _: () = assert!(core::mem::size_of::<SyscallStart>() == 16);
const _: () = assert!(core::mem::size_of::<SyscallKey>() == 16);
const _: () = assert!(core::mem::size_of::<SyscallErrorKey>() == 24);
const _: () = assert!(core::mem::size_of::<SyscallStats>() == 40 + 8 * LATENCY_BUCKETS + 16);
const _: () =
    assert!(core::mem::size_of::<SyscallSlot>() == 16 + core::mem::size_of::<SyscallStats>());
const _: () = assert!(core::mem::size_of::<PathKey>() == 4 + PATH_MAX_BYTES);
const _: () = assert!(core::mem::size_of::<SecurityEvent>() == 72 + 16 + PATH_MAX_BYTES);
const _: () = assert!(core::mem::size_of::<SlowSyscallEvent>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 1);
        assert_eq!(latency_bucket(1023), 9);
        assert_eq!(latency_bucket(1024), 10);
        assert_eq!(latency_bucket(20_000_000), 24);
        assert_eq!(latency_bucket((1 << 31) - 1), 30);
        assert_eq!(latency_bucket(1 << 31), 31);
        assert_eq!(latency_bucket(u64::MAX), 31);
        for i in 0..31 {
            assert_eq!(latency_bucket(1 << i), i as usize);
        }
    }

    #[test]
    fn agg_slots_stay_in_the_map_and_split_generations() {
        for mask in [0u32, 1, 255] {
            for id in [0u64, 1, 4242, u64::MAX] {
                for nr in [0u32, 39, 511, u32::MAX] {
                    let a = agg_slot(id, nr, 0, mask);
                    let b = agg_slot(id, nr, 1, mask);
                    assert!(a < 2 * (mask + 1) && b < 2 * (mask + 1));
                    assert_eq!((a & 1, b), (0, a | 1));
                }
            }
        }
        // One process's syscalls spread over the slots rather than piling on a few.
        let mut used = [false; 512];
        for nr in 0..64 {
            used[agg_slot(4242, nr, 0, 255) as usize] = true;
        }
        let n = used.iter().filter(|u| **u).count();
        assert!(n > 48, "{n} slots for 64 syscalls");
    }

    #[test]
    fn allow_list() {
        let mut c = SyscallConfig::DEFAULT;
        assert!(c.allows(39));
        c.filter_syscalls = 1;
        assert!(!c.allows(39));
        c.syscalls[0] |= 1 << 39;
        assert!(c.allows(39));
        assert!(!c.allows(SYSCALL_NR_MAX + 5));
    }
}
