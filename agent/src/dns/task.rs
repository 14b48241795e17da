//! The DNS family's task: fed the copied messages by the ring reader, it frames TCP
//! streams, parses each message, joins questions and answers (`join::Joiner`),
//! publishes the lookup records, and remembers failures in the pinned `DNS_FAILURES`
//! map. A timer lets unanswered questions time out; when the reader ends (the agent
//! stops) the rest is flushed.

use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use aya::maps::{Array, MapData};
use hostscope_common::dns::{
    DnsFailureSlot, DNS_FAILURES_SLOTS, DNS_TRANSPORT_TCP, DNS_TRANSPORT_UDP,
};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};

use super::{
    join::{JoinConfig, JoinStats, Joiner, Packet},
    names::ResolvedNames,
    parser,
    streams::{StreamStats, Streams, MAX_STREAMS},
};
use crate::{
    agent::SharedRecord,
    events::{
        dns::{DnsRecord, Transport, WireMessage},
        monotonic_ns, Clock, Record,
    },
    stats::{Counters, FamilyStats},
};

/// How often unanswered questions are looked at.
pub const EXPIRE_EVERY: Duration = Duration::from_millis(100);

/// The family's userspace account (`hostscope status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DnsStats {
    #[serde(flatten)]
    pub join: JoinStats,
    /// Messages parsed (questions and answers).
    pub messages: u64,
    /// Copied messages that are not DNS (bad header, names or question): counted, dropped.
    pub parse_errors: u64,
    /// Messages longer than the probe's copy (parsed as far as they go).
    pub truncated: u64,
    pub tcp_streams: u64,
    pub tcp_streams_evicted: u64,
    pub tcp_gap_bytes: u64,
    pub tcp_retransmissions: u64,
    /// TCP streams whose message boundaries were lost (a length prefix not copied).
    pub tcp_framing_lost: u64,
}

/// Its fields that are levels, not counts.
const GAUGES: [&str; 2] = ["pending", "tcp_streams"];

impl DnsStats {
    /// By name, for the status document and Prometheus: every field, the joiner's too
    /// (whatever it counts), levels apart.
    pub fn family_stats(&self) -> FamilyStats {
        let mut out = FamilyStats::default();
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) {
            for (name, value) in fields {
                let Some(v) = value.as_u64() else { continue };
                if GAUGES.contains(&name.as_str()) {
                    out.gauges.insert(name, v);
                } else {
                    out.counters.insert(name, v);
                }
            }
        }
        out
    }
}

/// The live keys of the family's section, as the joiner takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveConfig {
    pub timeout: Duration,
    pub max_pending: usize,
}

impl LiveConfig {
    fn join(self) -> JoinConfig {
        JoinConfig {
            timeout: self.timeout,
            max_pending: self.max_pending,
        }
    }
}

/// What the ring's reader hands the task: messages in ring order, and on the last batch
/// of a drain the time (Unix ns) the drain began.
pub struct Batch {
    pub messages: Vec<WireMessage>,
    pub read_through_ns: Option<u64>,
}

pub struct DnsTask {
    /// Batches of messages, in ring order.
    pub input: mpsc::Receiver<Batch>,
    pub out: broadcast::Sender<SharedRecord>,
    pub failures: Option<Array<MapData, DnsFailureSlot>>,
    pub config: watch::Receiver<LiveConfig>,
    pub clock: Clock,
    pub counters: Arc<Counters>,
    pub stats: Arc<Mutex<DnsStats>>,
    /// Where answers' addresses are remembered for later connections (`remote_name`).
    pub names: Arc<ResolvedNames>,
}

/// Everything the task mutates per message, apart from its channels.
pub struct Pipeline {
    joiner: Joiner,
    streams: Streams,
    stats: DnsStats,
    clock: Clock,
}

impl Pipeline {
    pub fn new(config: JoinConfig, clock: Clock) -> Pipeline {
        Pipeline {
            joiner: Joiner::new(config),
            streams: Streams::new(MAX_STREAMS),
            stats: DnsStats::default(),
            clock,
        }
    }

    /// One copied message (UDP) or segment (TCP); completed lookups go to `out`.
    pub fn message(&mut self, m: WireMessage, out: &mut Vec<DnsRecord>) {
        match m.transport {
            Transport::Udp => {
                let complete = m.uncaptured == 0;
                self.parsed(&m, &m.data, complete, out);
            }
            Transport::Tcp => {
                let lost_before = self.streams_lost(&m);
                let framed = self.streams.segment(
                    (m.cookie, m.egress),
                    m.seq,
                    &m.data,
                    m.uncaptured,
                    m.ts_ns,
                );
                if !lost_before && self.streams_lost(&m) {
                    self.stats.tcp_framing_lost += 1;
                }
                for f in framed {
                    self.parsed(&m, &f.bytes, f.complete, out);
                }
            }
        }
    }

    fn streams_lost(&self, m: &WireMessage) -> bool {
        self.streams.is_lost(&(m.cookie, m.egress))
    }

    fn parsed(&mut self, m: &WireMessage, bytes: &[u8], complete: bool, out: &mut Vec<DnsRecord>) {
        if !complete {
            self.stats.truncated += 1;
        }
        let message = match parser::parse(bytes) {
            Ok(message) => message,
            Err(_) => {
                self.stats.parse_errors += 1;
                return;
            }
        };
        self.stats.messages += 1;
        let packet = Packet {
            ts_ns: m.ts_ns,
            egress: m.egress,
            transport: m.transport,
            local: m.local,
            remote: m.remote,
            cookie: m.cookie,
            pid: m.pid,
            comm: m.comm.clone(),
            cgroup_id: (m.cgroup_id != 0).then_some(m.cgroup_id),
            message,
        };
        self.joiner.packet(packet, &self.clock, out);
    }

    /// Questions timed out by `now_ns` (u64::MAX: all of them, at stop), and streams
    /// idle too long.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<DnsRecord>) {
        self.joiner.expire(now_ns, &self.clock, out);
        if now_ns != u64::MAX {
            self.streams.expire(now_ns);
        }
    }

    pub fn set_config(&mut self, config: JoinConfig) {
        self.joiner.set_config(config);
    }

    pub fn stats(&self) -> DnsStats {
        let StreamStats {
            evicted,
            gaps,
            retransmissions,
        } = self.streams.stats;
        DnsStats {
            join: self.joiner.stats(),
            tcp_streams: self.streams.len() as u64,
            tcp_streams_evicted: evicted,
            tcp_gap_bytes: gaps,
            tcp_retransmissions: retransmissions,
            ..self.stats.clone()
        }
    }
}

impl DnsTask {
    pub async fn run(mut self) {
        let mut pipeline = Pipeline::new(self.config.borrow_and_update().join(), self.clock);
        let mut next_slot: u32 = 0;
        let mut tick = tokio::time::interval(EXPIRE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = Vec::new();
        loop {
            let mut read_through = None;
            tokio::select! {
                input = self.input.recv() => match input {
                    Some(batch) => {
                        for m in batch.messages {
                            pipeline.message(m, &mut out);
                        }
                        read_through = batch.read_through_ns;
                    }
                    // The reader ended (the agent stops) after its last drain.
                    None => break,
                },
                _ = tick.tick() => pipeline.expire(monotonic_ns(), &mut out),
                Ok(()) = self.config.changed() => {
                    pipeline.set_config(self.config.borrow_and_update().join());
                }
            }
            self.publish(&mut out, &mut next_slot);
            if let Some(t) = read_through {
                // Its names are in: a connect waiting for the DNS side finds them.
                self.names.applied_through(t);
            }
            self.set_stats(&pipeline);
        }
        pipeline.expire(u64::MAX, &mut out);
        self.publish(&mut out, &mut next_slot);
        self.set_stats(&pipeline);
    }

    fn set_stats(&self, pipeline: &Pipeline) {
        if let Ok(mut s) = self.stats.lock() {
            *s = pipeline.stats();
        }
    }

    fn publish(&mut self, out: &mut Vec<DnsRecord>, next_slot: &mut u32) {
        for record in out.drain(..) {
            if !record.addresses.is_empty() {
                // Remembered before the record goes out, as of the answer's arrival.
                let answered_ns = record.timestamp_unix_ns
                    + record.latency_us.map_or(0, |us| (us * 1_000.0) as u64);
                self.names.insert(
                    record.pid,
                    record.cgroup_id,
                    &record.query_name,
                    &record.addresses,
                    answered_ns,
                );
            }
            if record.is_failure() {
                if let Some(failures) = self.failures.as_mut() {
                    if failures
                        .set(*next_slot % DNS_FAILURES_SLOTS, failure_slot(&record), 0)
                        .is_ok()
                    {
                        *next_slot = next_slot.wrapping_add(1);
                    }
                }
            }
            self.counters
                .records_decoded
                .fetch_add(1, Ordering::Relaxed);
            // No subscriber is not an error: records are simply not shown.
            let _ = self.out.send(Arc::new(Record::Dns(record)));
        }
    }
}

fn copy_str(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// The pinned slot of a failed lookup.
pub fn failure_slot(r: &DnsRecord) -> DnsFailureSlot {
    let mut slot = DnsFailureSlot {
        unix_ns: r.timestamp_unix_ns,
        cgroup_id: r.cgroup_id.unwrap_or(0),
        pid: r.pid.unwrap_or(0),
        retries: r.retries,
        server: [0; 16],
        server_port: r.server.port(),
        family: 0,
        transport: match r.transport {
            Transport::Udp => DNS_TRANSPORT_UDP,
            Transport::Tcp => DNS_TRANSPORT_TCP,
        },
        _pad: 0,
        kind: [0; 16],
        query_type: [0; 16],
        comm: [0; 16],
        query_name: [0; 160],
    };
    match r.server.ip() {
        std::net::IpAddr::V4(v4) => {
            slot.family = hostscope_common::tcp::AF_INET;
            slot.server[..4].copy_from_slice(&v4.octets());
        }
        std::net::IpAddr::V6(v6) => {
            slot.family = hostscope_common::tcp::AF_INET6;
            slot.server = v6.octets();
        }
    }
    copy_str(&mut slot.kind, r.failure_kind().unwrap_or(""));
    copy_str(&mut slot.query_type, &r.query_type);
    copy_str(&mut slot.query_name, &r.query_name);
    if let Some(comm) = &r.comm {
        copy_str(&mut slot.comm, comm);
    }
    slot
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::dns::DnsOutcome;

    /// A question (or, with `answer`, its response) for `name` A, in wire form.
    fn message(id: u16, name: &str, answer: Option<[u8; 4]>) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(if answer.is_some() {
            &[0x81, 0x80]
        } else {
            &[0x01, 0x00]
        });
        let ancount = answer.is_some() as u16;
        for count in [1, ancount, 0, 0] {
            m.extend_from_slice(&u16::to_be_bytes(count));
        }
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        if let Some(a) = answer {
            // A pointer to the question's name, A, IN, TTL 60, 4 bytes.
            m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            m.extend_from_slice(&a);
        }
        m
    }

    fn wire(egress: bool, transport: Transport, seq: u32, data: &[u8]) -> WireMessage {
        WireMessage {
            ts_ns: 1_000_000 + seq as u64 * 1_000 + (!egress as u64) * 500_000,
            cookie: 42,
            cgroup_id: 1,
            egress,
            transport,
            pid: egress.then_some(7),
            comm: egress.then(|| "dig".to_string()),
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.153:53".parse().unwrap(),
            seq,
            data: data.to_vec(),
            uncaptured: 0,
        }
    }

    fn pipeline() -> Pipeline {
        Pipeline::new(
            JoinConfig {
                timeout: Duration::from_secs(5),
                max_pending: 16,
            },
            Clock::now(),
        )
    }

    #[test]
    fn a_udp_question_and_its_answer_make_one_record() {
        let mut p = pipeline();
        let mut out = Vec::new();
        p.message(
            wire(true, Transport::Udp, 0, &message(9, "ok.test", None)),
            &mut out,
        );
        p.message(
            wire(
                false,
                Transport::Udp,
                0,
                &message(9, "ok.test", Some([10, 1, 2, 3])),
            ),
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        let r = &out[0];
        assert_eq!(r.outcome, DnsOutcome::Answered);
        assert_eq!(
            (r.query_name.as_str(), r.query_type.as_str()),
            ("ok.test", "A")
        );
        assert_eq!(
            r.addresses,
            vec!["10.1.2.3".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!((r.pid, r.comm.as_deref()), (Some(7), Some("dig")));
        assert_eq!(p.stats().messages, 2);
    }

    #[test]
    fn tcp_messages_split_and_retransmitted_are_framed_once() {
        let mut p = pipeline();
        let mut out = Vec::new();
        let mut q = (message(5, "ok.test", None).len() as u16)
            .to_be_bytes()
            .to_vec();
        q.extend_from_slice(&message(5, "ok.test", None));
        // The question in two segments, the first one sent twice.
        p.message(wire(true, Transport::Tcp, 100, &q[..7]), &mut out);
        p.message(wire(true, Transport::Tcp, 100, &q[..7]), &mut out);
        p.message(wire(true, Transport::Tcp, 107, &q[7..]), &mut out);
        let a = message(5, "ok.test", Some([10, 1, 2, 3]));
        let mut framed = (a.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&a);
        p.message(wire(false, Transport::Tcp, 9000, &framed), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].transport, Transport::Tcp);
        let s = p.stats();
        assert_eq!(
            (s.messages, s.tcp_retransmissions, s.tcp_streams),
            (2, 1, 2)
        );
    }

    #[test]
    fn bytes_that_are_not_dns_are_counted_not_joined() {
        let mut p = pipeline();
        let mut out = Vec::new();
        p.message(wire(true, Transport::Udp, 0, b"hello, not dns"), &mut out);
        let mut cut = wire(false, Transport::Udp, 0, &message(3, "ok.test", None)[..8]);
        cut.uncaptured = 100;
        p.message(cut, &mut out);
        // A question received and an answer sent (a socket on a DNS port talking to
        // another, as servers forwarding from port 53 do): a server's side, skipped.
        p.message(
            wire(false, Transport::Udp, 0, &message(4, "ok.test", None)),
            &mut out,
        );
        let answer = message(4, "ok.test", Some([10, 1, 2, 3]));
        p.message(wire(true, Transport::Udp, 0, &answer), &mut out);
        assert!(out.is_empty());
        let s = p.stats();
        assert_eq!((s.parse_errors, s.truncated, s.messages), (2, 1, 2));
        assert_eq!(s.join.skipped_packets, 2);
    }

    #[test]
    fn status_shows_every_count_and_the_levels_apart() {
        let s = DnsStats {
            parse_errors: 3,
            tcp_streams: 2,
            ..DnsStats::default()
        };
        let f = s.family_stats();
        assert_eq!(f.counters["parse_errors"], 3);
        assert_eq!(f.counters["answered"], 0, "the joiner's counts: {f:?}");
        assert_eq!(f.gauges["tcp_streams"], 2);
        assert_eq!(f.gauges["pending"], 0);
        assert!(!f.counters.contains_key("pending"));
    }

    #[test]
    fn a_failure_slot_shows_in_dump_as_the_record_said() {
        let mut p = pipeline();
        let mut out = Vec::new();
        p.message(
            wire(true, Transport::Udp, 0, &message(1, "nope.test", None)),
            &mut out,
        );
        let mut nx = message(1, "nope.test", None);
        nx[2] = 0x81;
        nx[3] = 0x83; // QR, RD, RA; rcode 3
        p.message(wire(false, Transport::Udp, 0, &nx), &mut out);
        // The joiner may hold an NXDOMAIN for a while (a search-list walk may follow).
        p.expire(u64::MAX, &mut out);
        assert_eq!(out.len(), 1);
        let row = crate::dump::dns::failure_row(&failure_slot(&out[0]));
        assert_eq!(row.failure, "NXDOMAIN");
        assert_eq!(row.query_name, "nope.test");
        assert_eq!(row.query_type, "A");
        assert_eq!(row.server, Some("127.0.0.153:53".parse().unwrap()));
        assert_eq!(
            (row.pid, row.comm.as_str(), row.transport),
            (7, "dig", "udp")
        );
    }
}
