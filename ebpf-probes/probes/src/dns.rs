//! DNS lookups from the wire, for every resolver library.
//!
//! Why this hook: cgroup_skb programs on the cgroup v2 root see every packet of every
//! local socket in both directions, with the socket cookie and the socket's cgroup, on
//! any kernel since 4.10 — the attachment the TLS wire probe uses. The packet starts at
//! the IP header (`struct iphdr` / `struct ipv6hdr`, then `struct udphdr` /
//! `struct tcphdr`). On egress the task sending a UDP datagram is current.
//!
//! Cost discipline: every packet of the host passes here. A packet is given up after
//! reading its IP version, protocol and ports from the linear data and comparing one
//! port with the load-time DNS ports (no map lookup). Only client lookups are copied:
//! egress to a DNS port (the question), ingress from one (the answer); only the DNS
//! message (UDP payload, or the TCP segment's payload with its sequence number), cut at
//! `DNS_CAPTURE_MAX` bytes. Nothing else leaves the kernel.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_load_bytes,
        generated::{bpf_get_current_comm, bpf_skb_cgroup_id},
    },
    macros::{cgroup_skb, map},
    maps::{Array, PerCpuArray, RingBuf},
    programs::SkBuffContext,
};
use hostscope_common::{
    dns::*,
    stats::{Stat, STAT_COUNT},
    tcp::{AF_INET, AF_INET6},
    TASK_COMM_LEN,
};

use crate::ring::{bump, submit, submit_now};
use crate::skb::load;

#[map(name = "DNS_EVENTS")]
static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(DNS_EVENTS_RING_BYTES, 0);

#[map(name = "DNS_STATS")]
static DNS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// When this CPU last woke the reader for an answer (`DNS_WAKE_EVERY_NS`).
#[map(name = "DNS_LAST_WAKE")]
static DNS_LAST_WAKE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "DNS_CONFIG")]
static DNS_CONFIG: Array<DnsConfig> = Array::with_max_entries(1, 0);

/// Written by the agent, never by a probe: recent failed lookups, pinned for `dump`.
#[map(name = "DNS_FAILURES")]
static DNS_FAILURES: Array<DnsFailureSlot> = Array::with_max_entries(DNS_FAILURES_SLOTS, 0);

#[unsafe(no_mangle)]
static DNS_PORTS: DnsPorts = DnsPorts::DEFAULT;

#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    let _ = observe(&ctx, DIR_EGRESS);
    1
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    let _ = observe(&ctx, DIR_INGRESS);
    1
}

/// Whether this CPU has not woken the reader for `DNS_WAKE_EVERY_NS`, and if so, that
/// it does now.
#[inline(always)]
fn wake_due(now: u64) -> bool {
    match DNS_LAST_WAKE.get_ptr_mut(0) {
        Some(last) => unsafe {
            if now.wrapping_sub(*last) >= DNS_WAKE_EVERY_NS {
                *last = now;
                true
            } else {
                false
            }
        },
        None => true,
    }
}

/// Whether `port` is one of the load-time DNS ports.
#[inline(always)]
fn is_dns_port(port: u16) -> bool {
    // Volatile: a plain read of the global would fold to its default.
    let p = unsafe { core::ptr::read_volatile(&raw const DNS_PORTS) }.ports;
    port == p[0] || port == p[1] || port == p[2] || port == p[3]
}

/// What the filter reads of a packet: its IP family, transport, IP header length and
/// ports.
struct Headers {
    family: u16,
    protocol: u8,
    l3: u32,
    sport: u16,
    dport: u16,
}

/// The headers, straight from the linear data (a few loads): every packet of the host
/// passes here, so nothing is read that the filter does not need.
#[inline(always)]
fn headers(ctx: &SkBuffContext) -> Option<Headers> {
    let skb = ctx.skb.skb;
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    if data + 20 > end {
        return headers_slow(ctx);
    }
    let b0 = unsafe { *(data as *const u8) };
    let (family, protocol, l3) = match b0 >> 4 {
        4 => (
            AF_INET,
            unsafe { *((data + 9) as *const u8) },
            ((b0 & 0x0f) as u32) * 4,
        ),
        // Extension headers are rare on DNS; such packets are not inspected.
        6 => (AF_INET6, unsafe { *((data + 6) as *const u8) }, 40),
        _ => return None,
    };
    if protocol != IPPROTO_UDP && protocol != IPPROTO_TCP {
        return None;
    }
    let l4_at = data + l3 as usize;
    if l4_at + 4 > end {
        return headers_slow(ctx);
    }
    // Both ports in one load (the verifier allows unaligned packet reads here).
    let ports = unsafe { core::ptr::read_unaligned(l4_at as *const [u16; 2]) };
    Some(Headers {
        family,
        protocol,
        l3,
        sport: u16::from_be(ports[0]),
        dport: u16::from_be(ports[1]),
    })
}

/// The same through `bpf_skb_load_bytes`, for headers outside the linear data (rare).
#[inline(never)]
fn headers_slow(ctx: &SkBuffContext) -> Option<Headers> {
    let ip = load::<10>(ctx, 0)?;
    let (family, protocol, l3) = match ip[0] >> 4 {
        4 => (AF_INET, ip[9], ((ip[0] & 0x0f) as u32) * 4),
        6 => (AF_INET6, ip[6], 40),
        _ => return None,
    };
    if protocol != IPPROTO_UDP && protocol != IPPROTO_TCP {
        return None;
    }
    let ports = load::<4>(ctx, l3)?;
    Some(Headers {
        family,
        protocol,
        l3,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
    })
}

#[inline(always)]
fn observe(ctx: &SkBuffContext, dir: u16) -> Option<()> {
    let h = headers(ctx)?;
    if !is_dns_port(if dir == DIR_EGRESS { h.dport } else { h.sport }) {
        return None;
    }
    copy(ctx, dir, &h)
}

/// Copies a packet to or from a DNS port: its message, addresses and socket.
#[inline(never)]
fn copy(ctx: &SkBuffContext, dir: u16, h: &Headers) -> Option<()> {
    let (family, protocol, l3, sport, dport) = (h.family, h.protocol, h.l3, h.sport, h.dport);
    // For TCP, the sequence number and data offset.
    let l4 = load::<13>(ctx, l3)?;
    let (payload_off, seq) = if protocol == IPPROTO_TCP {
        (
            l3 + ((l4[12] >> 4) as u32) * 4,
            u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
        )
    } else {
        (l3 + 8, 0)
    };
    let len = ctx.len();
    // Handshakes, bare acknowledgements and empty datagrams carry no message.
    if len <= payload_off {
        return None;
    }
    let orig_len = len - payload_off;

    let sizes = DNS_DATA_SIZES;
    let m = Copied {
        dir,
        family,
        protocol,
        sport,
        dport,
        payload_off,
        seq,
        orig_len,
    };
    if orig_len as usize <= sizes[0] {
        emit::<{ DNS_DATA_SIZES[0] }>(ctx, &m)
    } else if orig_len as usize <= sizes[1] {
        emit::<{ DNS_DATA_SIZES[1] }>(ctx, &m)
    } else if orig_len as usize <= sizes[2] {
        emit::<{ DNS_DATA_SIZES[2] }>(ctx, &m)
    } else if orig_len as usize <= sizes[3] {
        emit::<{ DNS_DATA_SIZES[3] }>(ctx, &m)
    } else {
        emit::<{ DNS_DATA_SIZES[4] }>(ctx, &m)
    }
}

/// A message to copy and where it is.
struct Copied {
    dir: u16,
    family: u16,
    protocol: u8,
    sport: u16,
    dport: u16,
    payload_off: u32,
    seq: u32,
    orig_len: u32,
}

/// Writes one record of capacity `N` (a power of two) to the ring.
#[inline(always)]
fn emit<const N: usize>(ctx: &SkBuffContext, m: &Copied) -> Option<()> {
    let skb = ctx.skb.skb;
    let Some(mut entry) = DNS_EVENTS.reserve::<DnsEvent<N>>(0) else {
        bump(&DNS_STATS, Stat::RingFull);
        return None;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // orig_len is at least 1; this form keeps 1..=N visible to the verifier.
    let n = if m.orig_len > N as u32 {
        N as u32
    } else {
        m.orig_len
    };
    let n = ((n - 1) & (N as u32 - 1)) + 1;
    let copied = unsafe {
        bpf_skb_load_bytes(
            skb as *const __sk_buff as *const _,
            m.payload_off,
            ev.data.as_mut_ptr() as *mut _,
            n,
        )
    };
    if copied != 0 {
        entry.discard(0);
        bump(&DNS_STATS, Stat::ReadFailed);
        return None;
    }
    let h = &mut ev.header;
    h.ts_ns = unsafe { bpf_ktime_get_ns() };
    h.cookie = unsafe { bpf_get_socket_cookie(skb as *mut _) };
    h.cgroup_id = unsafe { bpf_skb_cgroup_id(skb as *mut _) };
    h.seq = m.seq;
    h.len = n;
    h.orig_len = m.orig_len;
    h.direction = m.dir;
    h.protocol = m.protocol as u16;
    h.family = m.family;
    h.sport = m.sport;
    h.dport = m.dport;
    h._pad = 0;
    h.saddr = [0; 16];
    h.daddr = [0; 16];
    let addresses = if m.family == AF_INET {
        load::<8>(ctx, 12).map(|a| {
            h.saddr[..4].copy_from_slice(&a[..4]);
            h.daddr[..4].copy_from_slice(&a[4..]);
        })
    } else {
        load::<32>(ctx, 8).map(|a| {
            h.saddr.copy_from_slice(&a[..16]);
            h.daddr.copy_from_slice(&a[16..]);
        })
    };
    if addresses.is_none() {
        entry.discard(0);
        bump(&DNS_STATS, Stat::ReadFailed);
        return None;
    }
    h.comm = [0; TASK_COMM_LEN];
    if m.dir == DIR_EGRESS {
        h.pid_tgid = bpf_get_current_pid_tgid();
        unsafe { bpf_get_current_comm(h.comm.as_mut_ptr().cast(), TASK_COMM_LEN as u32) };
    } else {
        h.pid_tgid = 0;
    }
    let now = h.ts_ns;
    if m.dir == DIR_INGRESS && wake_due(now) {
        // An answer is read at once: the addresses it names must be known before the
        // connect that follows it is read from the TCP ring (`remote_name`).
        submit_now(entry, &DNS_STATS);
    } else {
        submit(
            &DNS_EVENTS,
            entry,
            DNS_CONFIG.get(0).map(|c| &c.ring),
            &DNS_STATS,
        );
    }
    Some(())
}
