//! Syscall telemetry, aggregated in the kernel, and watched-path security events.
//!
//! Why these hooks: every syscall passes the `raw_syscalls:sys_enter` / `sys_exit`
//! tracepoints (`trace_sys_enter(regs, id)` / `trace_sys_exit(regs, ret)`). We attach
//! to them as `tp_btf` programs (`btf_trace_sys_enter`/`btf_trace_sys_exit`), the
//! cheapest hook measured here, with raw tracepoint programs (`raw_tp/sys_enter`,
//! `raw_tp/sys_exit`) of the same code as the fallback; classic tracepoints cost more per
//! run and kprobes/fentry are not available everywhere.
//!
//! Hot path: enter stores (start, nr) in a per-thread slot of an array (`tid & mask`,
//! sized to `pid_max` by the loader, so slots are exact unless pid_max is huge; a slot
//! survives sleeping and migration). Measured here over a getppid storm: enter 57 ns +
//! exit 76 ns per run, against 89 + 112 ns with a hash map keyed by tid. Exit
//! updates the stats of (pid or cgroup, syscall, generation): count, errors, log2
//! latency histogram. They live in a per-CPU array slot, one of two picked by a hash of
//! the key (`agg_slot` and its neighbour), claimed by the first key that lands on it in
//! a generation: no hash-map lookup for the busy keys (exit 56 ns per run instead of ~76,
//! 2026-12-03). A key whose two slots other keys hold goes to the per-CPU hash map as
//! before (with one candidate slot of 256 the agent's exit stayed at ~95 ns in the bench
//! on a busy machine, most likely because other processes' keys held the storm's slot).
//! Userspace flips
//! the generation in the runtime config, then reads and clears the other one (slots and
//! hash), so no count is lost or read twice. What is left is mostly fixed: the hook
//! itself (~24 ns per program with an empty one) and `bpf_ktime_get_ns`, ~18 ns here,
//! once at enter and once at exit (enter without it measured 26 ns instead of 44).
//!
//! Security: the classic tracepoints `syscalls:sys_enter_{open,openat,openat2,execve,execveat}`
//! read the path from user memory and match it against an LPM trie of watched prefixes;
//! a match waits in `SECURITY_PENDING` until `syscalls:sys_exit_*` gives the result.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use hostscope_common::syscalls::*;

// Same stats layout for indices 0..=5 (events, ring full, …, wakeups) as every family.
use crate::ring::submit;

#[map(name = "SYSCALL_START")]
static SYSCALL_START: Array<SyscallStart> = Array::with_max_entries(1 << 15, 0);

#[map(name = "SYSCALL_AGG")]
static SYSCALL_AGG: PerCpuHashMap<SyscallKey, SyscallStats> =
    PerCpuHashMap::with_max_entries(SYSCALL_AGG_MAX, 0);

/// Two slots per hash value, one per generation; sized by the loader (`agg_slot_mask`).
#[map(name = "SYSCALL_AGG_SLOTS")]
static SYSCALL_AGG_SLOTS: PerCpuArray<SyscallSlot> =
    PerCpuArray::with_max_entries(2 * SYSCALL_AGG_SLOTS_MAX, 0);

#[map(name = "SYSCALL_ERRORS")]
static SYSCALL_ERRORS: PerCpuHashMap<SyscallErrorKey, u64> =
    PerCpuHashMap::with_max_entries(SYSCALL_ERRORS_MAX, 0);

#[map(name = "SYSCALL_STATS")]
static SYSCALL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SYSCALL_STAT_COUNT, 0);

#[map(name = "SYSCALL_CONFIG")]
static SYSCALL_CONFIG: Array<SyscallConfig> = Array::with_max_entries(1, 0);

#[map(name = "SYSCALL_EVENTS")]
static SYSCALL_EVENTS: RingBuf = RingBuf::with_byte_size(SYSCALL_EVENTS_RING_BYTES, 0);

#[map(name = "WATCHED_PATHS")]
static WATCHED_PATHS: LpmTrie<[u8; PATH_MAX_BYTES], u32> =
    LpmTrie::with_max_entries(WATCHED_PATHS_MAX, 0);

#[map(name = "SECURITY_PENDING")]
static SECURITY_PENDING: LruHashMap<u32, SecurityEvent> =
    LruHashMap::with_max_entries(SECURITY_PENDING_MAX, 0);

#[map(name = "SECURITY_SCRATCH")]
static SECURITY_SCRATCH: PerCpuArray<Key<[u8; PATH_MAX_BYTES]>> =
    PerCpuArray::with_max_entries(1, 0);

/// Event under construction (too large for the BPF stack).
#[map(name = "SECURITY_EVENT_SCRATCH")]
static SECURITY_EVENT_SCRATCH: PerCpuArray<SecurityEvent> = PerCpuArray::with_max_entries(1, 0);

/// All-zero template inserted for a new aggregation key (never written).
#[map(name = "SYSCALL_AGG_ZERO")]
static SYSCALL_AGG_ZERO: Array<SyscallStats> = Array::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static SYSCALL_OFFSETS: SyscallOffsets = SyscallOffsets::DEFAULT;

/// Reads one load-time offset; volatile so the compiler cannot fold it to its default.
macro_rules! offset {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const SYSCALL_OFFSETS.$field) }
    };
}

#[inline(always)]
fn count(stat: SyscallStat) {
    if let Some(counter) = SYSCALL_STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot, and these programs do not nest on one CPU: exact.
        unsafe { *counter += 1 };
    }
}

// ---- aggregation ----------------------------------------------------------------------

#[btf_tracepoint(function = "sys_enter")]
pub fn syscall_enter(ctx: BtfTracePointContext) -> u32 {
    let nr: i64 = ctx.arg(1);
    on_enter(nr as u32);
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscall_enter_raw(ctx: RawTracePointContext) -> u32 {
    let nr: i64 = ctx.arg(1);
    on_enter(nr as u32);
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn syscall_exit(ctx: BtfTracePointContext) -> u32 {
    let ret: i64 = ctx.arg(1);
    on_exit(|| ctx.arg(0), ret);
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscall_exit_raw(ctx: RawTracePointContext) -> u32 {
    let ret: i64 = ctx.arg(1);
    on_exit(|| ctx.arg(0), ret);
    0
}

/// Process and thread filters (no syscall number needed).
#[inline(always)]
fn task_passes(cfg: &SyscallConfig, pid_tgid: u64) -> bool {
    if cfg.target_tgid != 0 && (pid_tgid >> 32) as u32 != cfg.target_tgid {
        return false;
    }
    if cfg.target_tid != 0 && pid_tgid as u32 != cfg.target_tid {
        return false;
    }
    if cfg.target_cgroup != 0 && unsafe { bpf_get_current_cgroup_id() } != cfg.target_cgroup {
        return false;
    }
    true
}

#[inline(always)]
fn syscall_passes(cfg: &SyscallConfig, nr: u32) -> bool {
    if cfg.filter_syscalls == 0 {
        return true;
    }
    if nr >= SYSCALL_NR_MAX {
        return false;
    }
    let word = cfg.syscalls[((nr >> 6) as usize) & (SYSCALL_BITMAP_WORDS - 1)];
    word & (1u64 << (nr & 63)) != 0
}

#[inline(always)]
fn on_enter(nr: u32) {
    let Some(cfg) = SYSCALL_CONFIG.get(0) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    if !task_passes(cfg, pid_tgid) || !syscall_passes(cfg, nr) {
        return;
    }
    let tid = pid_tgid as u32;
    if let Some(slot) = SYSCALL_START.get_ptr_mut(tid & offset!(start_mask)) {
        unsafe {
            *slot = SyscallStart {
                start_ns: bpf_ktime_get_ns(),
                tid,
                nr,
            }
        };
    }
}

/// `regs` reads the `pt_regs` pointer: only exits without a start slot need it.
#[inline(always)]
fn on_exit(regs: impl FnOnce() -> u64, ret: i64) {
    let Some(cfg) = SYSCALL_CONFIG.get(0) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let mut latency = 0u64;
    let mut timed = false;
    let nr;
    match SYSCALL_START.get_ptr_mut(tid & offset!(start_mask)) {
        Some(slot) if unsafe { (*slot).tid } == tid => {
            let slot = unsafe { &mut *slot };
            latency = unsafe { bpf_ktime_get_ns() }.saturating_sub(slot.start_ns);
            timed = true;
            nr = slot.nr;
            slot.tid = 0;
        }
        _ => {
            // No enter seen: filtered out, in flight when we attached, or the slot was
            // taken by another thread. Count it (if it passes) without a latency.
            if !task_passes(cfg, pid_tgid) {
                return;
            }
            let off = offset!(regs_nr);
            let regs = regs();
            if off == OFFSET_ABSENT || regs == 0 {
                count(SyscallStat::ExitUnknown);
                return;
            }
            match unsafe { bpf_probe_read_kernel((regs + off as u64) as *const u64) } {
                Ok(n) => nr = n as u32,
                Err(_) => {
                    count(SyscallStat::ReadFailed);
                    return;
                }
            }
            if !syscall_passes(cfg, nr) {
                return;
            }
            count(SyscallStat::Untimed);
        }
    }
    let generation = cfg.generation;
    let id = if cfg.key_by == KEY_BY_CGROUP {
        unsafe { bpf_get_current_cgroup_id() }
    } else {
        pid_tgid >> 32
    };
    let Some(stats) = slot_entry(id, nr, generation).or_else(|| {
        let key = SyscallKey { id, nr, generation };
        agg_entry(&key)
    }) else {
        count(SyscallStat::AggMapFull);
        return;
    };
    let stats = unsafe { &mut *stats };
    stats.count += 1;
    if (-4095..0).contains(&ret) {
        stats.errors += 1;
        count_errno(id, nr, (-ret) as u32, generation);
    }
    if timed {
        stats.timed += 1;
        stats.total_ns += latency;
        if latency > stats.max_ns {
            stats.max_ns = latency;
        }
        let bucket = latency_bucket(latency) & (LATENCY_BUCKETS - 1);
        stats.hist[bucket] += 1;
        let slow = cfg.slow_ns;
        if slow != 0 && latency >= slow {
            emit_slow(cfg, pid_tgid, nr, latency, ret);
        }
    }
}

/// The stats of (id, nr, generation) in one of this CPU's two slots for them (the hash's
/// slot and its neighbour of the same generation), claiming a free one; None when other
/// keys hold both. Slots are freed only between generations, so a key is in one slot.
#[inline(always)]
fn slot_entry(id: u64, nr: u32, generation: u32) -> Option<*mut SyscallStats> {
    let index = agg_slot(id, nr, generation, offset!(agg_slot_mask));
    claim_slot(index, id, nr).or_else(|| claim_slot(index ^ 2, id, nr))
}

#[inline(always)]
fn claim_slot(index: u32, id: u64, nr: u32) -> Option<*mut SyscallStats> {
    let slot = unsafe { &mut *SYSCALL_AGG_SLOTS.get_ptr_mut(index)? };
    if slot.stats.count == 0 {
        // Free (zeroed by userspace, or never used): the caller counts the call next.
        slot.id = id;
        slot.nr = nr;
        slot.stats.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    } else if slot.id != id || slot.nr != nr {
        return None;
    }
    Some(&raw mut slot.stats)
}

#[inline(always)]
fn agg_entry(key: &SyscallKey) -> Option<*mut SyscallStats> {
    if let Some(p) = SYSCALL_AGG.get_ptr_mut(key) {
        return Some(p);
    }
    let zero = SYSCALL_AGG_ZERO.get(0)?;
    // EEXIST (another CPU inserted it meanwhile) is fine: the lookup below finds it.
    let _ = SYSCALL_AGG.insert(key, zero, BPF_NOEXIST as u64);
    let p = SYSCALL_AGG.get_ptr_mut(key)?;
    if let Ok(comm) = bpf_get_current_comm() {
        unsafe { (*p).comm = comm };
    }
    Some(p)
}

#[inline(always)]
fn count_errno(id: u64, nr: u32, errno: u32, generation: u32) {
    let key = SyscallErrorKey {
        id,
        nr,
        errno,
        generation,
        _pad: 0,
    };
    if let Some(p) = SYSCALL_ERRORS.get_ptr_mut(key) {
        unsafe { *p += 1 };
        return;
    }
    let one = 1u64;
    if SYSCALL_ERRORS.insert(key, one, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    match SYSCALL_ERRORS.get_ptr_mut(key) {
        Some(p) => unsafe { *p += 1 },
        None => count(SyscallStat::ErrorMapFull),
    }
}

#[inline(always)]
fn emit_slow(cfg: &SyscallConfig, pid_tgid: u64, nr: u32, latency: u64, ret: i64) {
    let Some(mut entry) = SYSCALL_EVENTS.reserve::<SlowSyscallEvent>(0) else {
        count(SyscallStat::RingFull);
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    entry.write(SlowSyscallEvent {
        kind: EVENT_SLOW_SYSCALL,
        nr,
        ts_ns: now.saturating_sub(latency),
        latency_ns: latency,
        ret,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    submit(&SYSCALL_EVENTS, entry, Some(&cfg.ring), &SYSCALL_STATS);
}

// ---- security events --------------------------------------------------------------------

/// `__syscall_nr` of every `syscalls:sys_enter_*` record.
const SYS_ENTER_NR_OFFSET: usize = 8;

#[tracepoint]
pub fn security_open_enter(ctx: TracePointContext) -> u32 {
    let filename = unsafe { ctx.read_at::<u64>(16) }.unwrap_or(0);
    let flags = unsafe { ctx.read_at::<u64>(24) }.unwrap_or(0);
    watch_enter(&ctx, ACCESS_OPEN, filename, flags);
    0
}

#[tracepoint]
pub fn security_openat_enter(ctx: TracePointContext) -> u32 {
    let filename = unsafe { ctx.read_at::<u64>(24) }.unwrap_or(0);
    let flags = unsafe { ctx.read_at::<u64>(32) }.unwrap_or(0);
    watch_enter(&ctx, ACCESS_OPEN, filename, flags);
    0
}

#[tracepoint]
pub fn security_openat2_enter(ctx: TracePointContext) -> u32 {
    let filename = unsafe { ctx.read_at::<u64>(24) }.unwrap_or(0);
    let how = unsafe { ctx.read_at::<u64>(32) }.unwrap_or(0);
    // `struct open_how` starts with `__u64 flags`.
    let flags = if how == 0 {
        0
    } else {
        unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0)
    };
    watch_enter(&ctx, ACCESS_OPEN, filename, flags);
    0
}

#[tracepoint]
pub fn security_exec_enter(ctx: TracePointContext) -> u32 {
    let filename = unsafe { ctx.read_at::<u64>(16) }.unwrap_or(0);
    watch_enter(&ctx, ACCESS_EXEC, filename, 0);
    0
}

/// Matched on the path as passed: a path relative to `fd` is not resolved.
#[tracepoint]
pub fn security_execat_enter(ctx: TracePointContext) -> u32 {
    let filename = unsafe { ctx.read_at::<u64>(24) }.unwrap_or(0);
    let flags = unsafe { ctx.read_at::<u64>(48) }.unwrap_or(0);
    watch_enter(&ctx, ACCESS_EXEC, filename, flags);
    0
}

#[inline(always)]
fn watch_enter(ctx: &TracePointContext, access: u32, filename: u64, flags: u64) {
    if filename == 0 {
        return;
    }
    let Some(key) = SECURITY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let key = unsafe { &mut *key };
    let len = match unsafe { bpf_probe_read_user_str_bytes(filename as *const u8, &mut key.data) } {
        Ok(s) => s.len(),
        Err(_) => {
            count(SyscallStat::PathReadFailed);
            return;
        }
    };
    let len = len & (PATH_MAX_BYTES - 1);
    key.prefix_len = (len * 8) as u32;
    if WATCHED_PATHS.get(&*key).is_none() {
        return;
    }
    let Some(ev) = SECURITY_EVENT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let ev = unsafe { &mut *ev };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    ev.kind = EVENT_SECURITY;
    ev.access = access;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.flags = flags;
    ev.ret = 0;
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.ppid = parent_tgid();
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.nr = unsafe { ctx.read_at::<i32>(SYS_ENTER_NR_OFFSET) }.unwrap_or(-1) as u32;
    ev.path_len = len as u32;
    // A path that filled the buffer (255 bytes and the NUL) may have been cut.
    ev.truncated = (len == PATH_MAX_BYTES - 1) as u32;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.path = key.data;
    let tid = ev.tid;
    let ev: &SecurityEvent = ev;
    if SECURITY_PENDING.insert(tid, ev, 0).is_err() {
        count(SyscallStat::PendingMapFull);
    }
}

#[inline(always)]
fn parent_tgid() -> u32 {
    let real_parent = offset!(task_real_parent);
    let tgid = offset!(task_tgid);
    if real_parent == OFFSET_ABSENT || tgid == OFFSET_ABSENT {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() };
    let Ok(parent) = (unsafe { bpf_probe_read_kernel((task + real_parent as u64) as *const u64) })
    else {
        count(SyscallStat::ReadFailed);
        return 0;
    };
    match unsafe { bpf_probe_read_kernel((parent + tgid as u64) as *const i32) } {
        Ok(t) => t as u32,
        Err(_) => {
            count(SyscallStat::ReadFailed);
            0
        }
    }
}

/// Attached to `syscalls:sys_exit_{open,openat,openat2,execve,execveat}`: completes a pending
/// watched-path access with its result.
#[tracepoint]
pub fn security_exit(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(pending) = SECURITY_PENDING.get_ptr(tid) else {
        return 0;
    };
    let ret = unsafe { ctx.read_at::<i64>(SYS_EXIT_RET_OFFSET) }.unwrap_or(0);
    match SYSCALL_EVENTS.reserve::<SecurityEvent>(0) {
        Some(mut entry) => {
            unsafe {
                core::ptr::copy_nonoverlapping(pending, entry.as_mut_ptr(), 1);
                (*entry.as_mut_ptr()).ret = ret;
            }
            submit(
                &SYSCALL_EVENTS,
                entry,
                SYSCALL_CONFIG.get(0).map(|c| &c.ring),
                &SYSCALL_STATS,
            );
        }
        None => count(SyscallStat::RingFull),
    }
    let _ = SECURITY_PENDING.remove(tid);
    0
}
