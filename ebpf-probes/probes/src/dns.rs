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

use crate::ring::{bump, submit};

#[map(name = "DNS_EVENTS")]
static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(DNS_EVENTS_RING_BYTES, 0);

#[map(name = "DNS_STATS")]
static DNS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

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

/// `N` bytes at `offset`, or None past the end. A constant length keeps the verifier
/// content (aya's `load_bytes` may compute a length of zero).
#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, offset: u32) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const __sk_buff as *const _,
            offset,
            buf.as_mut_ptr() as *mut _,
            N as u32,
        )
    };
    (rc == 0).then_some(buf)
}

/// Whether `port` is one of the load-time DNS ports.
#[inline(always)]
fn is_dns_port(port: u16) -> bool {
    // Volatile: a plain read of the global would fold to its default.
    let p = unsafe { core::ptr::read_volatile(&raw const DNS_PORTS) }.ports;
    port == p[0] || port == p[1] || port == p[2] || port == p[3]
}

#[inline(always)]
fn observe(ctx: &SkBuffContext, dir: u16) -> Option<()> {
    let skb = ctx.skb.skb;
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    // The IP header, straight from the linear data when it is there.
    let mut ip = [0u8; 40];
    if data + 40 <= end {
        ip = unsafe { *(data as *const [u8; 40]) };
    } else {
        let b0 = load::<1>(ctx, 0)?[0];
        if b0 >> 4 == 6 {
            ip = load::<40>(ctx, 0)?;
        } else {
            ip[..20].copy_from_slice(&load::<20>(ctx, 0)?);
        }
    }
    let (family, protocol, l3) = match ip[0] >> 4 {
        4 => (AF_INET, ip[9], ((ip[0] & 0x0f) as u32) * 4),
        // Extension headers are rare on DNS; such packets are not inspected.
        6 => (AF_INET6, ip[6], 40),
        _ => return None,
    };
    if protocol != IPPROTO_UDP && protocol != IPPROTO_TCP {
        return None;
    }
    // Ports, and for TCP the sequence number and data offset.
    let l4_at = data + l3 as usize;
    let l4 = if l4_at + 13 <= end {
        unsafe { *(l4_at as *const [u8; 13]) }
    } else {
        load::<13>(ctx, l3)?
    };
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    if !is_dns_port(if dir == DIR_EGRESS { dport } else { sport }) {
        return None;
    }

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

    let Some(mut entry) = DNS_EVENTS.reserve::<DnsEvent>(0) else {
        bump(&DNS_STATS, Stat::RingFull);
        return None;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // orig_len is at least 1; this form keeps 1..=DNS_CAPTURE_MAX visible to the
    // verifier (DNS_CAPTURE_MAX is a power of two).
    let n = if orig_len > DNS_CAPTURE_MAX as u32 {
        DNS_CAPTURE_MAX as u32
    } else {
        orig_len
    };
    let n = ((n - 1) & (DNS_CAPTURE_MAX as u32 - 1)) + 1;
    let copied = unsafe {
        bpf_skb_load_bytes(
            skb as *const __sk_buff as *const _,
            payload_off,
            ev.data.as_mut_ptr() as *mut _,
            n,
        )
    };
    if copied != 0 {
        entry.discard(0);
        bump(&DNS_STATS, Stat::ReadFailed);
        return None;
    }
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.cookie = unsafe { bpf_get_socket_cookie(skb as *mut _) };
    ev.cgroup_id = unsafe { bpf_skb_cgroup_id(skb as *mut _) };
    ev.seq = seq;
    ev.len = n;
    ev.orig_len = orig_len;
    ev.direction = dir;
    ev.protocol = protocol as u16;
    ev.family = family;
    ev.sport = sport;
    ev.dport = dport;
    ev._pad = 0;
    ev.saddr = [0; 16];
    ev.daddr = [0; 16];
    if family == AF_INET {
        ev.saddr[..4].copy_from_slice(&ip[12..16]);
        ev.daddr[..4].copy_from_slice(&ip[16..20]);
    } else {
        ev.saddr.copy_from_slice(&ip[8..24]);
        ev.daddr.copy_from_slice(&ip[24..40]);
    }
    ev.comm = [0; TASK_COMM_LEN];
    if dir == DIR_EGRESS {
        ev.pid_tgid = bpf_get_current_pid_tgid();
        unsafe { bpf_get_current_comm(ev.comm.as_mut_ptr().cast(), TASK_COMM_LEN as u32) };
    } else {
        ev.pid_tgid = 0;
    }
    submit(
        &DNS_EVENTS,
        entry,
        DNS_CONFIG.get(0).map(|c| &c.ring),
        &DNS_STATS,
    );
    Some(())
}
