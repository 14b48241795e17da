//! TCP socket latency and lifecycle: types shared by `probes/src/tcp.rs` and the agent's
//! `loader/tcp.rs` / `events/tcp.rs`.

use crate::{RingConfig, TASK_COMM_LEN};

// ---- names --------------------------------------------------------------------------

pub const TCP_CONNS_MAP: &str = "TCP_CONNS";
pub const TCP_EVENTS_MAP: &str = "TCP_EVENTS";
pub const TCP_STATS_MAP: &str = "TCP_STATS";
pub const TCP_CONFIG_MAP: &str = "TCP_CONFIG";
pub const TCP_CONN_SEQ_MAP: &str = "TCP_CONN_SEQ";
pub const TCP_OFFSETS_GLOBAL: &str = "TCP_OFFSETS";

/// Default capacity of the connection map and the event ring.
pub const TCP_CONNS_MAX: u32 = 65_536;
pub const TCP_EVENTS_RING_BYTES: u32 = 4 * 1024 * 1024;

/// One classic tracepoint program of the TCP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpHook {
    pub program: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
    /// Without it the family has no records at all; the others only enrich them.
    pub required: bool,
}

pub const TCP_HOOKS: [TcpHook; 5] = [
    TcpHook {
        program: "tcp_state_change",
        category: "sock",
        tracepoint: "inet_sock_set_state",
        required: true,
    },
    TcpHook {
        program: "tcp_retransmit",
        category: "tcp",
        tracepoint: "tcp_retransmit_skb",
        required: false,
    },
    TcpHook {
        program: "tcp_reset_sent",
        category: "tcp",
        tracepoint: "tcp_send_reset",
        required: false,
    },
    TcpHook {
        program: "tcp_reset_received",
        category: "tcp",
        tracepoint: "tcp_receive_reset",
        required: false,
    },
    TcpHook {
        program: "tcp_destroy",
        category: "tcp",
        tracepoint: "tcp_destroy_sock",
        required: false,
    },
];

// ---- kernel constants ---------------------------------------------------------------

/// `include/net/tcp_states.h`.
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_SYN_SENT: u32 = 2;
pub const TCP_SYN_RECV: u32 = 3;
pub const TCP_FIN_WAIT1: u32 = 4;
pub const TCP_FIN_WAIT2: u32 = 5;
pub const TCP_TIME_WAIT: u32 = 6;
pub const TCP_CLOSE: u32 = 7;
pub const TCP_CLOSE_WAIT: u32 = 8;
pub const TCP_LAST_ACK: u32 = 9;
pub const TCP_LISTEN: u32 = 10;
pub const TCP_CLOSING: u32 = 11;
pub const TCP_NEW_SYN_RECV: u32 = 12;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// `sock:inet_sock_set_state` record layout, stable since Linux 4.16. The loader checks
/// it against the running kernel's tracefs `format` file before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InetSockSetStateArgs {
    pub common: u64,
    pub skaddr: u64,
    pub oldstate: i32,
    pub newstate: i32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub saddr_v6: [u8; 16],
    pub daddr_v6: [u8; 16],
}

/// (field name, byte offset) pairs of [`InetSockSetStateArgs`] the loader verifies.
pub const INET_SOCK_SET_STATE_FIELDS: [(&str, usize); 11] = [
    ("skaddr", 8),
    ("oldstate", 16),
    ("newstate", 20),
    ("sport", 24),
    ("dport", 26),
    ("family", 28),
    ("protocol", 30),
    ("saddr", 32),
    ("daddr", 36),
    ("saddr_v6", 40),
    ("daddr_v6", 56),
];

/// Marks an offset the running kernel does not provide: the probe skips that read.
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// Load-time constants resolved by userspace from BTF (`/sys/kernel/btf/vmlinux`) and
/// tracefs `format` files, because Rust eBPF has no CO-RE relocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOffsets {
    /// `struct sock.sk_err`: the errno a failed or reset connection ends with.
    pub sk_err: u32,
    /// `struct sock_common.skc_state` (`struct sock` begins with it): the state a reset
    /// finds the connection in.
    pub skc_state: u32,
    /// `struct tcp_sock` fields read at establishment and close.
    pub srtt_us: u32,
    pub total_retrans: u32,
    pub bytes_acked: u32,
    pub bytes_received: u32,
    /// `skaddr` in `tcp:tcp_retransmit_skb`, and its `state` and `err` fields.
    pub retransmit_skaddr: u32,
    pub retransmit_state: u32,
    pub retransmit_err: u32,
    /// `skaddr` in `tcp:tcp_send_reset`, `tcp:tcp_receive_reset`, `tcp:tcp_destroy_sock`.
    pub send_reset_skaddr: u32,
    pub receive_reset_skaddr: u32,
    pub destroy_skaddr: u32,
}

impl TcpOffsets {
    pub const ABSENT: TcpOffsets = TcpOffsets {
        sk_err: OFFSET_ABSENT,
        skc_state: OFFSET_ABSENT,
        srtt_us: OFFSET_ABSENT,
        total_retrans: OFFSET_ABSENT,
        bytes_acked: OFFSET_ABSENT,
        bytes_received: OFFSET_ABSENT,
        retransmit_skaddr: OFFSET_ABSENT,
        retransmit_state: OFFSET_ABSENT,
        retransmit_err: OFFSET_ABSENT,
        send_reset_skaddr: OFFSET_ABSENT,
        receive_reset_skaddr: OFFSET_ABSENT,
        destroy_skaddr: OFFSET_ABSENT,
    };
}

/// Runtime configuration of the TCP family ([`TCP_CONFIG_MAP`], slot 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    pub ring: RingConfig,
    /// 1 when `tcp_destroy` is attached: connection entries then live until the socket
    /// is destroyed (so late resets are attributed); otherwise they go at CLOSE.
    pub keep_until_destroy: u32,
    pub _pad: u32,
}

// ---- records --------------------------------------------------------------------------

/// Which side opened the connection.
pub const DIR_ACTIVE: u16 = 1;
pub const DIR_PASSIVE: u16 = 2;

/// Per-connection state kept in [`TCP_CONNS_MAP`], keyed by the socket address (`u64`).
/// Created at SYN_SENT (active) or SYN_RECV (passive), removed when the socket is
/// destroyed, so that resets sent after the CLOSE transition are still attributed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpConn {
    /// Unique per boot: `(cpu << 48) | per-CPU sequence`.
    pub conn_id: u64,
    /// SYN sent (active) or child socket created (passive), CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    pub established_ns: u64,
    pub closed_ns: u64,
    /// cgroup v2 id of the owning process; 0 while unknown (passive, before close).
    pub cgroup_id: u64,
    /// Process (tgid) and thread that own the socket; 0 while unknown.
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; TASK_COMM_LEN],
    /// Local and remote address; IPv4 uses the first four bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Local and remote port, host byte order.
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub direction: u16,
    /// The last state the probe recorded: the open (SYN_SENT / SYN_RECV, also a
    /// simultaneous open's SYN_RECV), ESTABLISHED, the owner's FIN_WAIT1 or LAST_ACK,
    /// CLOSE. The transitions in between are not
    /// followed (each would cost a map lookup on every connection); a reset record reads
    /// the socket's own state instead.
    pub state: u32,
    pub syn_retrans: u32,
    pub retrans: u32,
    pub rst_sent: u32,
    pub rst_recv: u32,
    /// `CONN_ESTABLISHED_UNSEEN`.
    pub flags: u32,
}

/// The kernel skipped the run for this connection's ESTABLISHED transition; its connect
/// record was made at a later transition and has no connect latency.
pub const CONN_ESTABLISHED_UNSEEN: u32 = 1;

impl TcpConn {
    pub const ZERO: TcpConn = TcpConn {
        conn_id: 0,
        start_ns: 0,
        established_ns: 0,
        closed_ns: 0,
        cgroup_id: 0,
        pid: 0,
        tid: 0,
        comm: [0; TASK_COMM_LEN],
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        direction: 0,
        state: 0,
        syn_retrans: 0,
        retrans: 0,
        rst_sent: 0,
        rst_recv: 0,
        flags: 0,
    };
}

/// What a [`TcpEvent`] reports.
pub const TCP_EVENT_CONNECT: u32 = 1;
pub const TCP_EVENT_CONNECT_FAILED: u32 = 2;
pub const TCP_EVENT_CLOSE: u32 = 3;
pub const TCP_EVENT_RESET_SENT: u32 = 4;
pub const TCP_EVENT_RESET_RECEIVED: u32 = 5;

/// One record in [`TCP_EVENTS_MAP`]: a snapshot of the connection plus what the event adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    pub kind: u32,
    /// `sk_err` when the connection failed or closed (ECONNREFUSED, ETIMEDOUT, …).
    pub sk_err: u32,
    pub ts_ns: u64,
    /// Smoothed RTT in µs (`srtt_us >> 3`); at a passive establishment, the SYN-ACK RTT.
    pub srtt_us: u32,
    /// The kernel's `total_retrans` at close.
    pub total_retrans: u32,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub old_state: u32,
    pub new_state: u32,
    pub conn: TcpConn,
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::TcpConn {}
    unsafe impl aya::Pod for super::TcpEvent {}
    unsafe impl aya::Pod for super::TcpOffsets {}
    unsafe impl aya::Pod for super::TcpConfig {}
}

const _: () = assert!(core::mem::size_of::<TcpConn>() == 128);
const _: () = assert!(core::mem::size_of::<TcpEvent>() == 176);
const _: () = assert!(core::mem::size_of::<InetSockSetStateArgs>() == 72);
