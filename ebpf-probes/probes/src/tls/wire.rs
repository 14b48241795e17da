//! TLS on the wire, for every library.
//!
//! Why this hook: cgroup_skb programs on the cgroup v2 root see every TCP segment of
//! every local socket in both directions, with the socket cookie, on any kernel since
//! 4.10, and (unlike TC) without choosing interfaces. The packet starts at the IP header.
//!
//! Cost discipline: a segment is dropped from consideration after reading its headers
//! and one cookie lookup, unless its connection is in a handshake (a ClientHello opened
//! it). For tracked connections the program walks the TLS record headers and copies
//! only handshake, alert and change-cipher-spec records — for application-data records
//! only their 5-byte header — so application data never leaves the kernel.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::{LruHashMap, RingBuf},
    programs::SkBuffContext,
};
use hostscope_common::{stats::Stat, tls::*};

use super::{TLS_CONFIG, TLS_STATS};
use crate::ring::{bump, submit};
use crate::skb::load;

#[map(name = "TLS_FLOWS")]
static TLS_FLOWS: LruHashMap<u64, TlsFlow> = LruHashMap::with_max_entries(TLS_FLOWS_MAX, 0);

#[map(name = "TLS_WIRE_EVENTS")]
static TLS_WIRE_EVENTS: RingBuf = RingBuf::with_byte_size(TLS_WIRE_RING_BYTES, 0);

const IPPROTO_TCP: u8 = 6;

#[cgroup_skb(egress)]
pub fn tls_wire_egress(ctx: SkBuffContext) -> i32 {
    let _ = observe(&ctx, DIR_EGRESS);
    1
}

#[cgroup_skb(ingress)]
pub fn tls_wire_ingress(ctx: SkBuffContext) -> i32 {
    let _ = observe(&ctx, DIR_INGRESS);
    1
}

/// Addresses, ports and payload position of a TCP segment.
struct Segment {
    family: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    seq: u32,
    payload_off: u32,
    payload_len: u32,
}

/// Reads the headers straight from the linear packet data when they are there (a few
/// nanoseconds), else through `bpf_skb_load_bytes`.
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Option<Segment> {
    let skb = ctx.skb.skb;
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    let mut ip = [0u8; 40];
    if data + 40 <= end {
        ip = unsafe { *(data as *const [u8; 40]) };
    } else {
        // Short packets may have less than 40 bytes: read what the IP version needs.
        let b0 = load::<1>(ctx, 0)?[0];
        if b0 >> 4 == 6 {
            ip = load::<40>(ctx, 0)?;
        } else {
            ip[..20].copy_from_slice(&load::<20>(ctx, 0)?);
        }
    }
    let mut seg = Segment {
        family: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        seq: 0,
        payload_off: 0,
        payload_len: 0,
    };
    let l3: u32 = match ip[0] >> 4 {
        4 if ip[9] == IPPROTO_TCP => {
            seg.family = hostscope_common::tcp::AF_INET;
            seg.saddr[..4].copy_from_slice(&ip[12..16]);
            seg.daddr[..4].copy_from_slice(&ip[16..20]);
            ((ip[0] & 0x0f) as u32) * 4
        }
        // Extension headers are rare on TCP; such segments are not inspected.
        6 if ip[6] == IPPROTO_TCP => {
            seg.family = hostscope_common::tcp::AF_INET6;
            seg.saddr.copy_from_slice(&ip[8..24]);
            seg.daddr.copy_from_slice(&ip[24..40]);
            40
        }
        _ => return None,
    };
    let tcp_at = data + l3 as usize;
    let tcp = if tcp_at + 13 <= end {
        unsafe { *(tcp_at as *const [u8; 13]) }
    } else {
        load::<13>(ctx, l3)?
    };
    seg.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    seg.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    seg.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    seg.payload_off = l3 + ((tcp[12] >> 4) as u32) * 4;
    let len = ctx.len();
    if len <= seg.payload_off {
        return None;
    }
    seg.payload_len = len - seg.payload_off;
    Some(seg)
}

#[inline(always)]
fn valid_header(h: &[u8; 5]) -> bool {
    (TLS_CHANGE_CIPHER_SPEC..=TLS_APPLICATION_DATA).contains(&h[0]) && h[1] == 3 && h[2] <= 4
}

#[inline(always)]
fn observe(ctx: &SkBuffContext, dir: u16) -> Option<()> {
    let seg = parse(ctx)?;
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    let flow = match TLS_FLOWS.get_ptr_mut(cookie) {
        Some(f) => f,
        None => {
            // Only a ClientHello at the start of a segment opens tracking.
            if seg.payload_len < 6 {
                return None;
            }
            let h = load::<6>(ctx, seg.payload_off)?;
            if h[0] != TLS_HANDSHAKE || h[1] != 3 || h[2] > 4 || h[5] != TLS_CLIENT_HELLO {
                return None;
            }
            let new = TlsFlow {
                next_record_seq: [0; 2],
                high_seq: [0; 2],
                synced: 0,
                client_dir: dir,
                _pad: 0,
                client_app_records: 0,
                _pad2: 0,
            };
            if TLS_FLOWS.insert(cookie, new, 0).is_err() {
                bump(&TLS_STATS, Stat::ConnMapFull);
                return None;
            }
            TLS_FLOWS.get_ptr_mut(cookie)?
        }
    };
    let flow = unsafe { &mut *flow };
    walk(ctx, flow, cookie, dir, &seg)
}

/// Walks the records of one segment of a tracked flow, copying what may be copied.
#[inline(always)]
fn walk(
    ctx: &SkBuffContext,
    flow: &mut TlsFlow,
    cookie: u64,
    dir: u16,
    seg: &Segment,
) -> Option<()> {
    let di: usize = if dir == DIR_EGRESS { 0 } else { 1 };
    let bit = 1u32 << di;
    let end_seq = seg.seq.wrapping_add(seg.payload_len);
    let first_in_dir = flow.high_seq[di] == 0 && flow.synced & bit == 0;
    if !first_in_dir && (end_seq.wrapping_sub(flow.high_seq[di]) as i32) <= 0 {
        // A retransmission of data already seen.
        return None;
    }
    flow.high_seq[di] = end_seq;

    let mut off: u32 = 0;
    if flow.synced & bit != 0 {
        let delta = flow.next_record_seq[di].wrapping_sub(seg.seq) as i32;
        if delta >= 0 && (delta as u32) >= seg.payload_len {
            // The whole segment continues the current (handshake) record.
            emit_records(ctx, cookie, dir, seg, seg.payload_len);
            return Some(());
        }
        if delta >= 0 {
            off = delta as u32;
        }
        // delta < 0: we lost the record boundary (a gap); try a header at 0.
    }

    let mut capture_end = off;
    let mut app_header = [0u8; 5];
    let mut saw_app = false;
    let mut not_tls = false;
    for _ in 0..TLS_MAX_RECORDS_PER_SEGMENT {
        if off + 5 > seg.payload_len {
            break;
        }
        let Some(h) = load::<5>(ctx, seg.payload_off + off) else {
            break;
        };
        if !valid_header(&h) {
            flow.synced &= !bit;
            // The server's very first bytes are not TLS: it speaks something else.
            not_tls = capture_end == 0 && dir != flow.client_dir && first_in_dir;
            break;
        }
        let rec_end = off + 5 + u16::from_be_bytes([h[3], h[4]]) as u32;
        flow.next_record_seq[di] = seg.seq.wrapping_add(rec_end);
        flow.synced |= bit;
        if h[0] == TLS_APPLICATION_DATA {
            app_header = h;
            saw_app = true;
            break;
        }
        capture_end = if rec_end < seg.payload_len {
            rec_end
        } else {
            seg.payload_len
        };
        off = rec_end;
    }
    if capture_end > 0 {
        emit_records(ctx, cookie, dir, seg, capture_end);
    }
    if not_tls {
        emit_marker(cookie, dir, seg, WIRE_NOT_TLS, &[0; 5]);
        let _ = TLS_FLOWS.remove(cookie);
        return Some(());
    }
    if saw_app {
        emit_marker(cookie, dir, seg, WIRE_APP_DATA_HEADER, &app_header);
        if dir == flow.client_dir {
            let len = u16::from_be_bytes([app_header[3], app_header[4]]);
            // TLS 1.3: the client's first encrypted record is its Finished (or, at
            // 19 bytes, an encrypted alert); TLS 1.2: application data. Either way the
            // handshake is over for the wire probe once the client sends real data.
            if len > 24 || flow.client_app_records > 0 {
                let _ = TLS_FLOWS.remove(cookie);
            } else {
                flow.client_app_records += 1;
            }
        }
    }
    Some(())
}

#[inline(always)]
fn fill_header(ev: &mut TlsWireEvent, cookie: u64, dir: u16, seg: &Segment, kind: u32) {
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.cookie = cookie;
    ev.kind = kind;
    ev.seq = seg.seq;
    ev.len = 0;
    ev.direction = dir;
    ev.family = seg.family;
    ev.saddr = seg.saddr;
    ev.daddr = seg.daddr;
    ev.sport = seg.sport;
    ev.dport = seg.dport;
    ev.truncated = 0;
}

/// Copies payload bytes `[0, end)` in events of up to `TLS_CAPTURE_MAX` bytes.
#[inline(always)]
fn emit_records(ctx: &SkBuffContext, cookie: u64, dir: u16, seg: &Segment, end: u32) {
    for i in 0..TLS_CAPTURE_CHUNKS {
        let start = i * TLS_CAPTURE_MAX as u32;
        if start >= end {
            return;
        }
        let mut n = end - start;
        if n > TLS_CAPTURE_MAX as u32 {
            n = TLS_CAPTURE_MAX as u32;
        }
        let Some(mut entry) = TLS_WIRE_EVENTS.reserve::<TlsWireEvent>(0) else {
            bump(&TLS_STATS, Stat::RingFull);
            return;
        };
        let ev = unsafe { &mut *entry.as_mut_ptr() };
        fill_header(ev, cookie, dir, seg, WIRE_RECORDS);
        ev.seq = seg.seq.wrapping_add(start);
        ev.truncated = (i + 1 == TLS_CAPTURE_CHUNKS && end - start > n) as u32;
        // n is 1..=TLS_CAPTURE_MAX; this form keeps that range visible to the verifier
        // (TLS_CAPTURE_MAX is a power of two).
        let len = ((n - 1) & (TLS_CAPTURE_MAX as u32 - 1)) + 1;
        let copied = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const __sk_buff as *const _,
                seg.payload_off + start,
                ev.data.as_mut_ptr() as *mut _,
                len,
            )
        };
        if copied != 0 {
            entry.discard(0);
            bump(&TLS_STATS, Stat::ReadFailed);
            return;
        }
        ev.len = len;
        submit_wire(entry);
    }
}

#[inline(always)]
fn emit_marker(cookie: u64, dir: u16, seg: &Segment, kind: u32, header: &[u8; 5]) {
    let Some(mut entry) = TLS_WIRE_EVENTS.reserve::<TlsWireEvent>(0) else {
        bump(&TLS_STATS, Stat::RingFull);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(ev, cookie, dir, seg, kind);
    ev.data[..5].copy_from_slice(header);
    ev.len = 5;
    submit_wire(entry);
}

#[inline(always)]
fn submit_wire(entry: aya_ebpf::maps::ring_buf::RingBufEntry<TlsWireEvent>) {
    submit(
        &TLS_WIRE_EVENTS,
        entry,
        TLS_CONFIG.get(0).map(|c| &c.ring),
        &TLS_STATS,
    );
}
