//! TCP socket latency and lifecycle.
//!
//! Why these hooks: kprobes are not available everywhere (absent on our CI kernel), while
//! the classic tracepoints `sock:inet_sock_set_state` (every TCP state change, with the
//! 4-tuple, since 4.16) and `tcp:tcp_retransmit_skb`, `tcp:tcp_send_reset`,
//! `tcp:tcp_receive_reset`, `tcp:tcp_destroy_sock` exist on every kernel we target.
//! Fields of `struct sock` / `struct tcp_sock` that no tracepoint carries (`sk_err`,
//! `skc_state`, `srtt_us`, `bytes_acked`, `bytes_received`, `total_retrans`) are read with
//! offsets the agent resolved from the running kernel's BTF (`TCP_OFFSETS`).
//!
//! One record per establishment, failure, close and reset; per-connection state lives in
//! `TCP_CONNS` so nothing is emitted for the other state changes.

use core::mem::MaybeUninit;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_ktime_get_ns, bpf_probe_read_kernel, generated,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext,
};
use hostscope_common::{
    stats::{Stat, STAT_COUNT},
    tcp::*,
    TASK_COMM_LEN,
};

use crate::ring::{bump, submit};

#[map(name = "TCP_CONNS")]
static TCP_CONNS: HashMap<u64, TcpConn> = HashMap::with_max_entries(TCP_CONNS_MAX, 0);

#[map(name = "TCP_EVENTS")]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(TCP_EVENTS_RING_BYTES, 0);

#[map(name = "TCP_STATS")]
static TCP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map(name = "TCP_CONFIG")]
static TCP_CONFIG: Array<TcpConfig> = Array::with_max_entries(1, 0);

#[map(name = "TCP_CONN_SEQ")]
static TCP_CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static TCP_OFFSETS: TcpOffsets = TcpOffsets::ABSENT;

/// Reads one load-time offset; volatile so the compiler cannot fold it to `ABSENT`.
macro_rules! offset {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const TCP_OFFSETS.$field) }
    };
}

#[inline(always)]
fn read_kernel<T>(base: u64, offset: u32) -> Option<T> {
    if offset == OFFSET_ABSENT || base == 0 {
        return None;
    }
    match unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            bump(&TCP_STATS, Stat::ReadFailed);
            None
        }
    }
}

/// Loads a field straight from a tracepoint's context. The verifier bounds every context
/// load itself; it accepts only a constant offset added by the load instruction to the
/// context pointer, so `offset` must fold to a constant (every caller is inlined).
#[inline(always)]
fn ctx_load<T>(ctx: &TracePointContext, offset: usize) -> T {
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// A field of the `sock:inet_sock_set_state` record, at the offset the loader checked
/// against this kernel's format file (`INET_SOCK_SET_STATE_FIELDS`).
macro_rules! arg {
    ($ctx:expr, $field:ident: $t:ty) => {
        ctx_load::<$t>($ctx, core::mem::offset_of!(InetSockSetStateArgs, $field))
    };
}

/// Runs ~10 times per connection (5 transitions on each end), so the transitions nothing
/// is done for leave after three context loads: no helper call, map lookup or copy.
/// What is done: an entry at the open, a record at ESTABLISHED and at CLOSE, the owner
/// of a passive connection at its FIN_WAIT1 / LAST_ACK (the owner's close).
#[tracepoint]
pub fn tcp_state_change(ctx: TracePointContext) -> u32 {
    let ctx = &ctx;
    if arg!(ctx, protocol: u16) != IPPROTO_TCP {
        return 0;
    }
    let old = arg!(ctx, oldstate: i32) as u32;
    let new = arg!(ctx, newstate: i32) as u32;
    match new {
        TCP_SYN_SENT => open(ctx, DIR_ACTIVE),
        TCP_SYN_RECV if old == TCP_LISTEN => open(ctx, DIR_PASSIVE),
        TCP_ESTABLISHED => established(ctx, old),
        TCP_CLOSE => closed(ctx, old),
        TCP_FIN_WAIT1 | TCP_LAST_ACK => closing_by_owner(arg!(ctx, skaddr: u64), new),
        // A simultaneous open (rare): followed so that an entry saying SYN_SENT is exact,
        // which spares `tcp_reset_received` a kernel read on every refused connect.
        TCP_SYN_RECV => {
            if let Some(conn) = TCP_CONNS.get_ptr_mut(arg!(ctx, skaddr: u64)) {
                unsafe { (*conn).state = new };
            }
        }
        // FIN_WAIT2, CLOSE_WAIT, CLOSING, TIME_WAIT, listening and request sockets: no
        // record, no owner to learn. A reset reads the socket's state itself
        // (`reset_state`).
        _ => {}
    }
    0
}

/// Active opens run in the connecting process; passive children are created in
/// softirq context, where the current task is unrelated, so their owner stays unknown
/// until the application acts on the socket (see `closing_by_owner`).
#[inline(always)]
fn open(ctx: &TracePointContext, direction: u16) {
    let mut slot = MaybeUninit::<TcpConn>::uninit();
    let conn = zeroed(&mut slot);
    conn.conn_id = next_conn_id();
    conn.start_ns = unsafe { bpf_ktime_get_ns() };
    conn.direction = direction;
    conn.state = if direction == DIR_ACTIVE {
        TCP_SYN_SENT
    } else {
        TCP_SYN_RECV
    };
    set_endpoints(conn, ctx);
    if direction == DIR_ACTIVE {
        set_owner(conn);
    }
    if TCP_CONNS.insert(arg!(ctx, skaddr: u64), conn, 0).is_err() {
        bump(&TCP_STATS, Stat::ConnMapFull);
    }
}

/// Zeroes `slot` with 8-byte stores: LLVM turns a zeroed struct (`TcpConn::ZERO`) into a
/// call to a byte-loop `memset`, ~5 instructions per byte.
#[inline(always)]
fn zeroed(slot: &mut MaybeUninit<TcpConn>) -> &mut TcpConn {
    const WORDS: usize = core::mem::size_of::<TcpConn>() / 8;
    let words = slot.as_mut_ptr().cast::<u64>();
    for i in 0..WORDS {
        // Volatile, or LLVM recognises the loop as a memset again.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every field of TcpConn is an integer or an array of them; all zero is valid.
    unsafe { slot.assume_init_mut() }
}

/// The local port (and, unbound, address) of an active open is chosen after SYN_SENT is
/// entered, so the endpoints are refreshed at every reported transition.
#[inline(always)]
fn set_endpoints(conn: &mut TcpConn, ctx: &TracePointContext) {
    conn.sport = arg!(ctx, sport: u16);
    conn.dport = arg!(ctx, dport: u16);
    conn.family = arg!(ctx, family: u16);
    if conn.family == AF_INET6 {
        // Two aligned 8-byte loads each: a context load may be at most 8 bytes wide.
        let s = core::mem::offset_of!(InetSockSetStateArgs, saddr_v6);
        let d = core::mem::offset_of!(InetSockSetStateArgs, daddr_v6);
        conn.saddr[..8].copy_from_slice(&ctx_load::<u64>(ctx, s).to_ne_bytes());
        conn.saddr[8..].copy_from_slice(&ctx_load::<u64>(ctx, s + 8).to_ne_bytes());
        conn.daddr[..8].copy_from_slice(&ctx_load::<u64>(ctx, d).to_ne_bytes());
        conn.daddr[8..].copy_from_slice(&ctx_load::<u64>(ctx, d + 8).to_ne_bytes());
    } else {
        conn.saddr[..4].copy_from_slice(&arg!(ctx, saddr: u32).to_ne_bytes());
        conn.daddr[..4].copy_from_slice(&arg!(ctx, daddr: u32).to_ne_bytes());
    }
}

#[inline(always)]
fn set_owner(conn: &mut TcpConn) {
    let pid_tgid = bpf_get_current_pid_tgid();
    conn.pid = (pid_tgid >> 32) as u32;
    conn.tid = pid_tgid as u32;
    // Straight into the entry (the kernel zeroes the buffer if it fails): through a
    // returned array, LLVM zeroes temporaries with calls to a byte-loop `memset`.
    unsafe { generated::bpf_get_current_comm(conn.comm.as_mut_ptr().cast(), TASK_COMM_LEN as u32) };
    conn.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
}

#[inline(always)]
fn next_conn_id() -> u64 {
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    let seq = match TCP_CONN_SEQ.get_ptr_mut(0) {
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    };
    (cpu << 48) | (seq & 0xffff_ffff_ffff)
}

#[inline(always)]
fn established(ctx: &TracePointContext, old: u32) {
    let sk = arg!(ctx, skaddr: u64);
    let Some(conn) = TCP_CONNS.get_ptr_mut(sk) else {
        if old == TCP_SYN_SENT || old == TCP_SYN_RECV {
            bump(&TCP_STATS, Stat::Untracked);
        }
        return;
    };
    let conn = unsafe { &mut *conn };
    let now = unsafe { bpf_ktime_get_ns() };
    conn.established_ns = now;
    conn.state = TCP_ESTABLISHED;
    set_endpoints(conn, ctx);
    let srtt = read_kernel::<u32>(sk, offset!(srtt_us)).unwrap_or(0) >> 3;
    let config = TCP_CONFIG.get(0);
    let event = Event {
        kind: TCP_EVENT_CONNECT,
        ts_ns: now,
        old,
        new: TCP_ESTABLISHED,
        sk_err: 0,
        srtt_us: srtt,
        totals: None,
    };
    emit(&event, conn, config);
}

/// `close()` / `shutdown()` drive these transitions from the owning process, the first
/// reliable moment to learn who owns a passively opened connection.
#[inline(always)]
fn closing_by_owner(sk: u64, new: u32) {
    let Some(conn) = TCP_CONNS.get_ptr_mut(sk) else {
        return;
    };
    let conn = unsafe { &mut *conn };
    if conn.pid == 0 {
        set_owner(conn);
    }
    recover_established(sk, conn);
    conn.state = new;
}

/// The kernel does not run a tracepoint program that fires while another BPF program
/// runs on the same CPU (a softirq that interrupted one); it only counts the run in the
/// program's `recursion_misses`. An entry still in its opening state at a transition only
/// an established socket makes has missed its ESTABLISHED run: the connect record it
/// owed is made now, flagged, without a connect latency (`established_ns` stays 0).
#[inline(always)]
fn recover_established(sk: u64, conn: &mut TcpConn) {
    if conn.state != TCP_SYN_SENT && conn.state != TCP_SYN_RECV {
        return;
    }
    bump(&TCP_STATS, Stat::TransitionsRecovered);
    let event = Event {
        kind: TCP_EVENT_CONNECT,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        old: conn.state,
        new: TCP_ESTABLISHED,
        sk_err: 0,
        srtt_us: read_kernel::<u32>(sk, offset!(srtt_us)).unwrap_or(0) >> 3,
        totals: None,
    };
    conn.flags |= CONN_ESTABLISHED_UNSEEN;
    conn.state = TCP_ESTABLISHED;
    emit(&event, conn, TCP_CONFIG.get(0));
}

#[inline(always)]
fn closed(ctx: &TracePointContext, old: u32) {
    let sk = arg!(ctx, skaddr: u64);
    let Some(conn) = TCP_CONNS.get_ptr_mut(sk) else {
        if old != TCP_LISTEN && old != TCP_CLOSE {
            bump(&TCP_STATS, Stat::Untracked);
        }
        return;
    };
    let conn = unsafe { &mut *conn };
    // A connect that failed before a port was bound still reports its destination.
    if arg!(ctx, sport: u16) != 0 {
        set_endpoints(conn, ctx);
    }
    finish(sk, conn, old);
}

/// The record at CLOSE: a failed connect when the socket left its opening state for
/// CLOSE, otherwise a close (preceded by the connect record if that run was skipped).
#[inline(always)]
fn finish(sk: u64, conn: &mut TcpConn, old: u32) {
    let failed = old == TCP_SYN_SENT || old == TCP_SYN_RECV;
    if !failed {
        recover_established(sk, conn);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    conn.closed_ns = now;
    conn.state = TCP_CLOSE;
    let sk_err = read_kernel::<i32>(sk, offset!(sk_err)).unwrap_or(0) as u32;
    let srtt = read_kernel::<u32>(sk, offset!(srtt_us)).unwrap_or(0) >> 3;
    let totals = CloseTotals {
        retrans: read_kernel::<u32>(sk, offset!(total_retrans)).unwrap_or(0),
        bytes_acked: read_kernel::<u64>(sk, offset!(bytes_acked)).unwrap_or(0),
        bytes_received: read_kernel::<u64>(sk, offset!(bytes_received)).unwrap_or(0),
    };
    let event = Event {
        kind: if failed {
            TCP_EVENT_CONNECT_FAILED
        } else {
            TCP_EVENT_CLOSE
        },
        ts_ns: now,
        old,
        new: TCP_CLOSE,
        sk_err,
        srtt_us: srtt,
        totals: Some(totals),
    };
    let config = TCP_CONFIG.get(0);
    emit(&event, conn, config);
    if !config.is_some_and(|c| c.keep_until_destroy != 0) {
        let _ = TCP_CONNS.remove(sk);
    }
}

struct CloseTotals {
    retrans: u32,
    bytes_acked: u64,
    bytes_received: u64,
}

/// What a record adds to the connection's snapshot.
struct Event {
    kind: u32,
    ts_ns: u64,
    old: u32,
    new: u32,
    sk_err: u32,
    srtt_us: u32,
    totals: Option<CloseTotals>,
}

#[inline(always)]
fn emit(event: &Event, conn: &TcpConn, config: Option<&TcpConfig>) {
    let Some(mut entry) = TCP_EVENTS.reserve::<TcpEvent>(0) else {
        bump(&TCP_STATS, Stat::RingFull);
        return;
    };
    let (retrans, acked, received) = match &event.totals {
        Some(t) => (t.retrans, t.bytes_acked, t.bytes_received),
        None => (0, 0, 0),
    };
    // Field by field, volatile: LLVM would merge the constant zeros of a record without
    // totals into calls to a byte-loop `memset`.
    let ev = entry.as_mut_ptr();
    unsafe {
        (&raw mut (*ev).kind).write_volatile(event.kind);
        (&raw mut (*ev).sk_err).write_volatile(event.sk_err);
        (&raw mut (*ev).ts_ns).write_volatile(event.ts_ns);
        (&raw mut (*ev).srtt_us).write_volatile(event.srtt_us);
        (&raw mut (*ev).total_retrans).write_volatile(retrans);
        (&raw mut (*ev).bytes_acked).write_volatile(acked);
        (&raw mut (*ev).bytes_received).write_volatile(received);
        (&raw mut (*ev).old_state).write_volatile(event.old);
        (&raw mut (*ev).new_state).write_volatile(event.new);
        (&raw mut (*ev).conn).write(*conn);
    }
    submit(&TCP_EVENTS, entry, config.map(|c| &c.ring), &TCP_STATS);
}

/// Reads a tracepoint field at an offset found in the running kernel's format file.
#[inline(always)]
fn tp_field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == OFFSET_ABSENT {
        return None;
    }
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// The `skaddr` of a `tcp:` tracepoint. It sits at offset 8 or 16 on every kernel we
/// know; those become constant context loads, any other offset is copied by a helper.
#[inline(always)]
fn tp_skaddr(ctx: &TracePointContext, offset: u32) -> Option<u64> {
    match offset {
        8 => Some(ctx_load::<u64>(ctx, 8)),
        16 => Some(ctx_load::<u64>(ctx, 16)),
        _ => tp_field::<u64>(ctx, offset),
    }
}

#[tracepoint]
pub fn tcp_retransmit(ctx: TracePointContext) -> u32 {
    let Some(sk) = tp_skaddr(&ctx, offset!(retransmit_skaddr)) else {
        return 0;
    };
    // Newer kernels also trace failed attempts; only count what went on the wire.
    if tp_field::<i32>(&ctx, offset!(retransmit_err)).unwrap_or(0) != 0 {
        return 0;
    }
    let state = tp_field::<i32>(&ctx, offset!(retransmit_state)).unwrap_or(0) as u32;
    if let Some(conn) = TCP_CONNS.get_ptr_mut(sk) {
        let conn = unsafe { &mut *conn };
        if state == TCP_SYN_SENT {
            conn.syn_retrans += 1;
        } else {
            conn.retrans += 1;
        }
    }
    0
}

#[tracepoint]
pub fn tcp_reset_sent(ctx: TracePointContext) -> u32 {
    // A reset for a packet that matched no socket (a closed port) has no skaddr.
    let Some(sk) = tp_skaddr(&ctx, offset!(send_reset_skaddr)) else {
        return 0;
    };
    if sk == 0 {
        return 0;
    }
    if let Some(conn) = TCP_CONNS.get_ptr_mut(sk) {
        let conn = unsafe { &mut *conn };
        conn.rst_sent += 1;
        emit_reset(TCP_EVENT_RESET_SENT, conn, reset_state(sk, conn));
    }
    0
}

#[tracepoint]
pub fn tcp_reset_received(ctx: TracePointContext) -> u32 {
    let Some(sk) = tp_skaddr(&ctx, offset!(receive_reset_skaddr)) else {
        return 0;
    };
    if let Some(conn) = TCP_CONNS.get_ptr_mut(sk) {
        let conn = unsafe { &mut *conn };
        conn.rst_recv += 1;
        // A reset answering our SYN is reported by the connect-failed record itself. An
        // entry leaves SYN_SENT only through transitions the probe records.
        if conn.state != TCP_SYN_SENT {
            emit_reset(TCP_EVENT_RESET_RECEIVED, conn, reset_state(sk, conn));
        }
    }
    0
}

/// The socket's state when a reset is sent or received; where the kernel's BTF lacks
/// `skc_state`, the last state the probe recorded.
#[inline(always)]
fn reset_state(sk: u64, conn: &TcpConn) -> u32 {
    read_kernel::<u8>(sk, offset!(skc_state)).map_or(conn.state, u32::from)
}

#[inline(always)]
fn emit_reset(kind: u32, conn: &TcpConn, state: u32) {
    let event = Event {
        kind,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        old: state,
        new: state,
        sk_err: 0,
        srtt_us: 0,
        totals: None,
    };
    emit(&event, conn, TCP_CONFIG.get(0));
}

/// Runs once per socket, after its CLOSE: one context load and the entry's removal. An
/// entry whose last recorded state is not CLOSE had its CLOSE run skipped by the kernel
/// (see `recover_established`); its record is made here, from that last state.
#[tracepoint]
pub fn tcp_destroy(ctx: TracePointContext) -> u32 {
    if let Some(sk) = tp_skaddr(&ctx, offset!(destroy_skaddr)) {
        if let Some(conn) = TCP_CONNS.get_ptr_mut(sk) {
            let conn = unsafe { &mut *conn };
            let last = conn.state;
            if last != TCP_CLOSE {
                bump(&TCP_STATS, Stat::TransitionsRecovered);
                finish(sk, conn, last);
            }
        }
        let _ = TCP_CONNS.remove(sk);
    }
    0
}
