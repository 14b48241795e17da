//! DNS lookups from the wire: types shared by `probes/src/dns.rs` and the agent's
//! `loader/dns.rs` / `events/dns.rs` / `dump/dns.rs`. The probe copies only DNS
//! messages: packets a local socket sends to a DNS port and the ones it receives from
//! one, bounded to `DNS_CAPTURE_MAX` bytes.

use crate::{RingConfig, TASK_COMM_LEN};

pub const DNS_EVENTS_MAP: &str = "DNS_EVENTS";
pub const DNS_STATS_MAP: &str = "DNS_STATS";
pub const DNS_CONFIG_MAP: &str = "DNS_CONFIG";
/// Written by the agent (not the probes): the most recent failed lookups, pinned so that
/// `hostscope dump` shows them during and after a run.
pub const DNS_FAILURES_MAP: &str = "DNS_FAILURES";
/// Load-time global: the DNS ports ([`DnsPorts`]).
pub const DNS_PORTS_GLOBAL: &str = "DNS_PORTS";

pub const DNS_EGRESS_PROGRAM: &str = "dns_egress";
pub const DNS_INGRESS_PROGRAM: &str = "dns_ingress";

pub const DNS_EVENTS_RING_BYTES: u32 = 2 * 1024 * 1024;
/// An answer wakes the ring's reader at once (so the addresses it names are known before
/// the connect that follows is read), at most once per this time per CPU: a lookup storm
/// costs a wakeup per millisecond, not one per answer.
pub const DNS_WAKE_EVERY_NS: u64 = 1_000_000;
/// Bytes of one DNS message copied at most (a power of two: the verifier needs the
/// copy's bound as a mask): a whole UDP answer under the usual EDNS(0) buffer size
/// (1232 bytes). The rest is counted in `DnsEventHeader::orig_len`.
pub const DNS_CAPTURE_MAX: usize = 2048;
/// Ports the probe compares with, at most.
pub const DNS_MAX_PORTS: usize = 4;
pub const DNS_DEFAULT_PORT: u16 = 53;

pub const DIR_EGRESS: u16 = 1;
pub const DIR_INGRESS: u16 = 2;

/// IP protocol numbers of the transports.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// The ports the probe copies ([`DNS_PORTS_GLOBAL`]), in host order. Every slot is
/// compared: unused slots repeat the first port, so no count is read per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsPorts {
    pub ports: [u16; DNS_MAX_PORTS],
}

impl DnsPorts {
    pub const DEFAULT: DnsPorts = DnsPorts {
        ports: [DNS_DEFAULT_PORT; DNS_MAX_PORTS],
    };

    /// The slots for up to [`DNS_MAX_PORTS`] ports (the first ones are kept); none gives
    /// the default.
    pub fn new(ports: &[u16]) -> DnsPorts {
        let Some(&first) = ports.first() else {
            return DnsPorts::DEFAULT;
        };
        let mut slots = [first; DNS_MAX_PORTS];
        for (slot, port) in slots.iter_mut().zip(ports) {
            *slot = *port;
        }
        DnsPorts { ports: slots }
    }
}

/// Data capacities of the records of [`DNS_EVENTS_MAP`]: the probe reserves the
/// smallest that holds the message (a ring reservation has a constant size), so a
/// typical question takes 232 bytes of the ring, not 2152.
pub const DNS_DATA_SIZES: [usize; 5] = [128, 256, 512, 1024, DNS_CAPTURE_MAX];

/// One copied DNS message ([`DNS_EVENTS_MAP`]): the header and up to `N` bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsEvent<const N: usize> {
    pub header: DnsEventHeader,
    pub data: [u8; N],
}

/// What the probe says of a copied message.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEventHeader {
    /// CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Socket cookie: stable for the socket's life.
    pub cookie: u64,
    /// cgroup v2 id of the socket's cgroup.
    pub cgroup_id: u64,
    /// `bpf_get_current_pid_tgid` (tgid in the upper half) on egress, 0 on ingress (the
    /// receiving task is not current there). A UDP datagram is sent by the current
    /// task; a TCP segment sent later from softirq (a retransmission) names whatever
    /// task was interrupted, but a question's first segment goes out from its send.
    pub pid_tgid: u64,
    /// TCP sequence number of `data[0]`; 0 for UDP.
    pub seq: u32,
    /// Bytes copied after the header.
    pub len: u32,
    /// Bytes of the message (UDP payload, TCP segment payload) on the wire; more than
    /// `len` when the copy was cut at `DNS_CAPTURE_MAX`.
    pub orig_len: u32,
    pub direction: u16,
    /// `IPPROTO_UDP` or `IPPROTO_TCP`.
    pub protocol: u16,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    /// Packet source and destination (not local/remote: that depends on `direction`).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Current task's command on egress, zeros on ingress.
    pub comm: [u8; TASK_COMM_LEN],
}

pub const DNS_EVENT_HEADER_BYTES: usize = 104;

/// Runtime configuration ([`DNS_CONFIG_MAP`], slot 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    pub ring: RingConfig,
}

/// Transports in [`DnsFailureSlot::transport`].
pub const DNS_TRANSPORT_UDP: u16 = 1;
pub const DNS_TRANSPORT_TCP: u16 = 2;

/// One slot of [`DNS_FAILURES_MAP`] (an array used as a ring by the agent).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsFailureSlot {
    /// When the question was first sent; 0: an empty slot.
    pub unix_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub retries: u32,
    pub server: [u8; 16],
    pub server_port: u16,
    pub family: u16,
    pub transport: u16,
    pub _pad: u16,
    /// `NXDOMAIN`, `SERVFAIL`, `TIMEOUT`, …, NUL-padded ASCII.
    pub kind: [u8; 16],
    /// `A`, `AAAA`, `TYPE<n>`, NUL-padded.
    pub query_type: [u8; 16],
    pub comm: [u8; TASK_COMM_LEN],
    /// The query name, cut at 160 bytes, NUL-padded.
    pub query_name: [u8; 160],
}

pub const DNS_FAILURES_SLOTS: u32 = 64;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::DnsPorts {}
    unsafe impl aya::Pod for super::DnsEventHeader {}
    unsafe impl aya::Pod for super::DnsConfig {}
    unsafe impl aya::Pod for super::DnsFailureSlot {}
}

const _: () = assert!(core::mem::size_of::<DnsPorts>() == 8);
const _: () = assert!(core::mem::size_of::<DnsEventHeader>() == DNS_EVENT_HEADER_BYTES);
const _: () = assert!(
    core::mem::size_of::<DnsEvent<DNS_CAPTURE_MAX>>() == DNS_EVENT_HEADER_BYTES + DNS_CAPTURE_MAX
);
const _: () = assert!(core::mem::size_of::<DnsFailureSlot>() == 256);
const _: () = assert!(DNS_CAPTURE_MAX.is_power_of_two());
