//! The joiner on wire bytes: captured from `dig` against dnsmasq (tcpdump -X), or built by
//! the small encoder below.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::*;
use crate::dns::parser::{self, TYPE_A, TYPE_AAAA};
use crate::events::dns::SearchExpansion;

const SERVER: &str = "127.0.0.1:5354";
const MS: u64 = 1_000_000;

// `dig @127.0.0.1 -p 5354 +noedns WWW.X.test A` against
// `dnsmasq --address=/x.test/10.1.2.3 --address=/x.test/fd00::3`: UDP payloads.
const CAPTURED_A_QUERY: &str =
    "2219 0020 0001 0000 0000 0000 0357 5757 0158 0474 6573 7400 0001 0001";
const CAPTURED_A_ANSWER: &str =
    "2219 8480 0001 0001 0000 0000 0357 5757 0158 0474 6573 7400 0001 0001
    c00c 0001 0001 0000 0000 0004 0a01 0203";
const CAPTURED_AAAA_QUERY: &str =
    "ffa2 0120 0001 0000 0000 0000 0377 7777 0178 0474 6573 7400 001c 0001";
const CAPTURED_AAAA_ANSWER: &str =
    "ffa2 8580 0001 0001 0000 0000 0377 7777 0178 0474 6573 7400 001c 0001
    c00c 001c 0001 0000 0000 0010 fd00 0000 0000 0000 0000 0000 0000 0003";
// `nope.y.test A` to the same dnsmasq (no upstream): REFUSED.
const CAPTURED_REFUSED_QUERY: &str =
    "a142 0120 0001 0000 0000 0000 046e 6f70 6501 7904 7465 7374 0000 0100 01";
const CAPTURED_REFUSED_ANSWER: &str =
    "a142 8185 0001 0000 0000 0000 046e 6f70 6501 7904 7465 7374 0000 0100 01";

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn wire_name(n: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in n.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn message(id: u16, flags: u16, name: &str, qtype: u16, answers: &[IpAddr]) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    for count in [1, answers.len() as u16, 0, 0] {
        m.extend_from_slice(&count.to_be_bytes());
    }
    m.extend(wire_name(name));
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    for a in answers {
        let (rtype, data) = match a {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        m.extend_from_slice(&[0xc0, 12]);
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend(data);
    }
    m
}

fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    message(id, 0x0100, name, qtype, &[])
}

fn answer(id: u16, name: &str, qtype: u16, rcode: u8, addrs: &[&str]) -> Vec<u8> {
    let addrs: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
    message(id, 0x8180 | rcode as u16, name, qtype, &addrs)
}

fn truncated(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    message(id, 0x8380, name, qtype, &[])
}

fn nxdomain(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    answer(id, name, qtype, 3, &[])
}

/// A client socket.
#[derive(Clone, Copy)]
struct Sock {
    cookie: u64,
    local: SocketAddr,
    transport: Transport,
    pid: Option<u32>,
}

fn udp(cookie: u64, port: u16, pid: Option<u32>) -> Sock {
    Sock {
        cookie,
        local: SocketAddr::from(([127, 0, 0, 1], port)),
        transport: Transport::Udp,
        pid,
    }
}

fn tcp(cookie: u64, port: u16, pid: Option<u32>) -> Sock {
    Sock {
        transport: Transport::Tcp,
        ..udp(cookie, port, pid)
    }
}

struct Run {
    joiner: Joiner,
    clock: Clock,
    out: Vec<DnsRecord>,
}

impl Run {
    fn new(timeout_ms: u64, max_pending: usize) -> Run {
        Run {
            joiner: Joiner::new(JoinConfig {
                timeout: Duration::from_millis(timeout_ms),
                max_pending,
            }),
            clock: Clock::now(),
            out: Vec::new(),
        }
    }

    fn packet(&mut self, ts_ns: u64, s: Sock, server: &str, egress: bool, wire: &[u8]) {
        let p = Packet {
            ts_ns,
            egress,
            transport: s.transport,
            local: s.local,
            remote: server.parse().unwrap(),
            cookie: s.cookie,
            pid: s.pid.filter(|_| egress),
            comm: s.pid.filter(|_| egress).map(|_| "getent".to_string()),
            cgroup_id: s.pid.filter(|_| egress).map(|_| 77),
            message: parser::parse(wire).unwrap(),
        };
        self.joiner.packet(p, &self.clock, &mut self.out);
    }

    fn send(&mut self, ts_ns: u64, s: Sock, wire: &[u8]) {
        self.packet(ts_ns, s, SERVER, true, wire);
    }

    fn recv(&mut self, ts_ns: u64, s: Sock, wire: &[u8]) {
        self.packet(ts_ns, s, SERVER, false, wire);
    }

    fn expire(&mut self, now_ns: u64) {
        self.joiner.expire(now_ns, &self.clock, &mut self.out);
    }

    fn take(&mut self) -> Vec<DnsRecord> {
        std::mem::take(&mut self.out)
    }

    fn stats(&self) -> JoinStats {
        self.joiner.stats()
    }
}

fn addrs(r: &DnsRecord) -> Vec<String> {
    r.addresses.iter().map(|a| a.to_string()).collect()
}

fn search(base: &str, nxdomain_before: u32) -> Option<SearchExpansion> {
    Some(SearchExpansion {
        base: base.into(),
        nxdomain_before,
    })
}

#[test]
fn captured_a_and_aaaa_in_flight_on_one_socket_each_make_a_record() {
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 34940, Some(4242));
    run.send(1_000 * MS, s, &hex(CAPTURED_A_QUERY));
    run.send(1_000 * MS + 100_000, s, &hex(CAPTURED_AAAA_QUERY));
    assert!(run.take().is_empty());
    assert_eq!(run.stats().pending, 2);
    // The AAAA answer comes first.
    run.recv(1_000 * MS + 500_000, s, &hex(CAPTURED_AAAA_ANSWER));
    run.recv(1_000 * MS + 900_000, s, &hex(CAPTURED_A_ANSWER));
    let got = run.take();
    assert_eq!(got.len(), 2, "{got:#?}");
    let (aaaa, a) = (&got[0], &got[1]);
    assert_eq!(a.query_name, "WWW.X.test");
    assert_eq!(a.query_type, "A");
    assert_eq!(a.outcome, DnsOutcome::Answered);
    assert_eq!(a.rcode.as_deref(), Some("NOERROR"));
    assert_eq!(a.answer_count, 1);
    assert_eq!(addrs(a), ["10.1.2.3"]);
    assert_eq!(a.latency_us, Some(900.0));
    assert_eq!(a.id, 0x2219);
    assert_eq!(a.timestamp_unix_ns, run.clock.unix_ns(1_000 * MS));
    assert_eq!(
        (a.pid, a.comm.as_deref(), a.cgroup_id),
        (Some(4242), Some("getent"), Some(77))
    );
    assert_eq!(a.local, s.local);
    assert_eq!(a.server, SERVER.parse().unwrap());
    assert_eq!(
        (a.transport, a.retries, a.after_truncation),
        (Transport::Udp, 0, false)
    );
    assert_eq!(a.search, None);
    assert_eq!(aaaa.query_type, "AAAA");
    assert_eq!(addrs(aaaa), ["fd00::3"]);
    assert_eq!(aaaa.latency_us, Some(400.0));
    assert_eq!(
        aaaa.timestamp_unix_ns,
        run.clock.unix_ns(1_000 * MS + 100_000)
    );
    let stats = run.stats();
    assert_eq!((stats.answered, stats.lookups, stats.pending), (2, 2, 0));
}

#[test]
fn captured_refused_is_an_answer_with_its_rcode() {
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 45676, Some(1));
    run.send(0, s, &hex(CAPTURED_REFUSED_QUERY));
    run.recv(MS, s, &hex(CAPTURED_REFUSED_ANSWER));
    let got = run.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcode.as_deref(), Some("REFUSED"));
    assert_eq!(got[0].query_name, "nope.y.test");
    assert!(got[0].is_failure());
}

#[test]
fn the_answer_may_change_the_case_of_the_name() {
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 40000, Some(1));
    run.send(0, s, &query(7, "Payments.Shop.svc", TYPE_A));
    run.recv(
        MS,
        s,
        &answer(7, "pAYMENTS.shop.SVC", TYPE_A, 0, &["10.0.3.7"]),
    );
    let got = run.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].query_name, "Payments.Shop.svc");
    assert_eq!(addrs(&got[0]), ["10.0.3.7"]);
}

#[test]
fn responses_that_match_no_question_are_counted_never_records() {
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 40000, Some(1));
    run.send(0, s, &query(7, "a.example", TYPE_A));
    // Same id, another name; same name, another type; another server; another socket;
    // an id never sent.
    run.recv(MS, s, &answer(7, "b.example", TYPE_A, 0, &["1.1.1.1"]));
    run.recv(MS, s, &answer(7, "a.example", TYPE_AAAA, 0, &[]));
    run.packet(
        MS,
        s,
        "127.0.0.2:53",
        false,
        &answer(7, "a.example", TYPE_A, 0, &[]),
    );
    run.recv(
        MS,
        udp(2, 40001, None),
        &answer(7, "a.example", TYPE_A, 0, &[]),
    );
    run.recv(MS, s, &answer(8, "a.example", TYPE_A, 0, &[]));
    assert!(run.take().is_empty());
    assert_eq!(run.stats().unmatched_responses, 5);
    // The question is still in flight and its answer completes it.
    run.recv(2 * MS, s, &answer(7, "a.example", TYPE_A, 0, &["10.0.0.1"]));
    assert_eq!(addrs(&run.take()[0]), ["10.0.0.1"]);
    // A second answer to it matches nothing any more.
    run.recv(3 * MS, s, &answer(7, "a.example", TYPE_A, 0, &["10.0.0.1"]));
    assert!(run.take().is_empty());
    assert_eq!(run.stats().unmatched_responses, 6);
}

#[test]
fn packets_in_the_wrong_direction_or_without_a_question_are_skipped() {
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 40000, Some(1));
    // A query coming in, a response going out.
    run.recv(0, s, &query(1, "a.example", TYPE_A));
    run.send(0, s, &answer(1, "a.example", TYPE_A, 0, &[]));
    // A message without a question (the parser refuses them; the joiner copes anyway).
    let mut m = parser::parse(&query(2, "a.example", TYPE_A)).unwrap();
    m.questions.clear();
    for egress in [true, false] {
        let p = Packet {
            ts_ns: 0,
            egress,
            transport: Transport::Udp,
            local: s.local,
            remote: SERVER.parse().unwrap(),
            cookie: 1,
            pid: None,
            comm: None,
            cgroup_id: None,
            message: m.clone(),
        };
        run.joiner.packet(p, &run.clock, &mut run.out);
    }
    run.expire(u64::MAX);
    assert!(run.take().is_empty());
    let stats = run.stats();
    assert_eq!(
        (stats.skipped_packets, stats.lookups, stats.pending),
        (4, 0, 0)
    );
}

#[test]
fn a_retry_on_the_same_socket_and_id_is_one_lookup() {
    // glibc: the same id, on the same socket, after its timeout.
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 40000, Some(10));
    run.send(0, s, &query(0x77, "db.example", TYPE_A));
    run.send(4_000 * MS, s, &query(0x77, "db.example", TYPE_A));
    run.recv(
        4_500 * MS,
        s,
        &answer(0x77, "db.example", TYPE_A, 0, &["10.9.9.9"]),
    );
    let got = run.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].retries, 1);
    assert_eq!(got[0].latency_us, Some(4_500_000.0));
    assert_eq!(got[0].timestamp_unix_ns, run.clock.unix_ns(0));
    let stats = run.stats();
    assert_eq!((stats.lookups, stats.retries, stats.answered), (1, 1, 1));
}

#[test]
fn a_retry_on_a_new_socket_with_a_new_id_is_one_lookup_and_either_answer_completes_it() {
    // Go: a new socket and id per attempt; here the first attempt's answer comes last.
    let mut run = Run::new(5_000, 64);
    let (first, second) = (udp(10, 40010, Some(9)), udp(11, 40011, Some(9)));
    run.send(0, first, &query(1, "api.example", TYPE_AAAA));
    run.send(1_000 * MS, second, &query(2, "api.example", TYPE_AAAA));
    run.recv(
        1_200 * MS,
        first,
        &answer(1, "api.example", TYPE_AAAA, 0, &["fd00::1"]),
    );
    let got = run.take();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].retries, got[0].id, got[0].local),
        (1, 1, first.local)
    );
    assert_eq!(got[0].latency_us, Some(1_200_000.0));
    run.recv(
        1_300 * MS,
        second,
        &answer(2, "api.example", TYPE_AAAA, 0, &["fd00::1"]),
    );
    assert!(run.take().is_empty());
    assert_eq!(run.stats().unmatched_responses, 1);
    run.expire(u64::MAX);
    assert!(run.take().is_empty(), "no timeout for an answered lookup");
}

#[test]
fn the_same_question_to_another_server_is_another_lookup() {
    let mut run = Run::new(2_000, 64);
    let s = udp(1, 40000, Some(3));
    run.packet(0, s, "10.0.0.1:53", true, &query(5, "x.example", TYPE_A));
    run.packet(
        1_000 * MS,
        s,
        "10.0.0.2:53",
        true,
        &query(6, "x.example", TYPE_A),
    );
    let reply = answer(6, "x.example", TYPE_A, 0, &["1.2.3.4"]);
    run.packet(1_001 * MS, s, "10.0.0.2:53", false, &reply);
    run.expire(2_000 * MS);
    let got = run.take();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0].server, "10.0.0.2:53".parse().unwrap());
    assert_eq!((got[0].retries, got[0].latency_us), (0, Some(1_000.0)));
    assert_eq!(got[1].server, "10.0.0.1:53".parse().unwrap());
    assert_eq!(got[1].outcome, DnsOutcome::Timeout);
}

#[test]
fn without_a_pid_retries_are_per_socket() {
    let mut run = Run::new(5_000, 64);
    let (a, b) = (udp(20, 40020, None), udp(21, 40021, None));
    run.send(0, a, &query(1, "q.example", TYPE_A));
    run.send(MS, a, &query(2, "q.example", TYPE_A));
    run.send(MS, b, &query(3, "q.example", TYPE_A));
    run.recv(2 * MS, a, &answer(2, "q.example", TYPE_A, 0, &[]));
    run.recv(2 * MS, b, &answer(3, "q.example", TYPE_A, 0, &[]));
    let got = run.take();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].retries, got[0].pid), (1, None));
    assert_eq!((got[1].retries, got[1].local), (0, b.local));
}

#[test]
fn a_timeout_is_reported_once_with_its_retries() {
    let mut run = Run::new(2_000, 64);
    let s = udp(1, 40000, Some(8));
    run.send(0, s, &query(1, "slow.example", TYPE_A));
    run.send(1_000 * MS, s, &query(1, "slow.example", TYPE_A));
    run.expire(2_999 * MS);
    assert!(
        run.take().is_empty(),
        "the timeout runs from the last attempt"
    );
    run.expire(3_000 * MS);
    let got = run.take();
    assert_eq!(got.len(), 1);
    let t = &got[0];
    assert_eq!(t.outcome, DnsOutcome::Timeout);
    assert_eq!((t.rcode.as_ref(), t.latency_us, t.retries), (None, None, 1));
    assert_eq!(t.timestamp_unix_ns, run.clock.unix_ns(0));
    assert_eq!(t.failure_kind(), Some("TIMEOUT"));
    // Further attempts within another timeout fold into the tombstone.
    run.send(3_500 * MS, s, &query(2, "slow.example", TYPE_A));
    run.send(4_000 * MS, s, &query(2, "slow.example", TYPE_A));
    run.expire(4_999 * MS);
    run.expire(5_000 * MS);
    assert!(run.take().is_empty());
    let stats = run.stats();
    assert_eq!(
        (stats.timeouts, stats.attempts_after_timeout, stats.retries),
        (1, 2, 3)
    );
    assert_eq!(stats.pending, 0);
    // After the tombstone, the question is a new lookup.
    run.send(6_000 * MS, s, &query(3, "slow.example", TYPE_A));
    run.expire(8_000 * MS);
    let got = run.take();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].outcome, got[0].retries), (DnsOutcome::Timeout, 0));
    assert_eq!(run.stats().lookups, 2);
}

#[test]
fn an_attempt_after_the_timeout_that_is_answered_is_reported() {
    let mut run = Run::new(2_000, 64);
    let s = udp(1, 40000, Some(8));
    run.send(0, s, &query(1, "late.example", TYPE_A));
    run.send(1_000 * MS, s, &query(1, "late.example", TYPE_A));
    // The packet's own time runs the timeout, whatever the timer does.
    run.send(3_500 * MS, s, &query(9, "late.example", TYPE_A));
    run.recv(
        3_600 * MS,
        s,
        &answer(9, "late.example", TYPE_A, 0, &["10.1.1.1"]),
    );
    let got = run.take();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0].outcome, DnsOutcome::Timeout);
    assert_eq!(got[1].outcome, DnsOutcome::Answered);
    assert_eq!((got[1].retries, got[1].id), (2, 9));
    assert_eq!(got[1].latency_us, Some(3_600_000.0));
    run.expire(u64::MAX);
    assert!(run.take().is_empty());
    let stats = run.stats();
    assert_eq!(
        (stats.timeouts, stats.late_answers, stats.answered),
        (1, 1, 1)
    );
}

#[test]
fn a_truncated_answer_then_tcp_is_one_lookup_after_truncation() {
    let mut run = Run::new(5_000, 64);
    let (u, t) = (udp(1, 40000, Some(6)), tcp(2, 40001, Some(6)));
    run.send(0, u, &query(1, "big.example", TYPE_A));
    run.recv(MS, u, &truncated(1, "big.example", TYPE_A));
    assert!(run.take().is_empty());
    run.send(2 * MS, t, &query(2, "big.example", TYPE_A));
    let many = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    run.recv(4 * MS, t, &answer(2, "big.example", TYPE_A, 0, &many));
    let got = run.take();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert!(r.after_truncation);
    assert_eq!((r.transport, r.local, r.id), (Transport::Tcp, t.local, 2));
    assert_eq!((r.retries, r.latency_us), (0, Some(4_000.0)));
    assert_eq!(addrs(r), many);
    assert_eq!(r.answer_count, 3);
    run.expire(u64::MAX);
    assert!(run.take().is_empty());
    assert_eq!(run.stats().answered, 1);
}

#[test]
fn a_truncated_answer_without_tcp_is_reported_when_the_hold_ends() {
    let mut run = Run::new(3_000, 64);
    let u = udp(1, 40000, Some(6));
    run.send(0, u, &query(1, "big.example", TYPE_A));
    run.recv(MS, u, &truncated(1, "big.example", TYPE_A));
    run.expire(3_000 * MS);
    assert!(run.take().is_empty());
    run.expire(3_001 * MS);
    let got = run.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcode.as_deref(), Some("NOERROR"));
    assert_eq!(
        (got[0].transport, got[0].after_truncation),
        (Transport::Udp, false)
    );
    assert_eq!(got[0].latency_us, Some(1_000.0));
}

#[test]
fn a_tcp_retry_that_is_never_answered_is_a_timeout_after_truncation() {
    let mut run = Run::new(3_000, 64);
    let (u, t) = (udp(1, 40000, Some(6)), tcp(2, 40001, Some(6)));
    run.send(0, u, &query(1, "big.example", TYPE_A));
    run.recv(MS, u, &truncated(1, "big.example", TYPE_A));
    run.send(2 * MS, t, &query(2, "big.example", TYPE_A));
    run.expire(3_002 * MS);
    let got = run.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].outcome, DnsOutcome::Timeout);
    assert_eq!(
        (got[0].transport, got[0].after_truncation),
        (Transport::Tcp, true)
    );
}

/// glibc with `ndots:5` and `search shop.svc.cluster.local svc.cluster.local
/// cluster.local`: A and AAAA of each expansion in parallel, the bare name last.
#[test]
fn a_search_list_walk_marks_every_record_of_it() {
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 40000, Some(70));
    let names = [
        "payments.shop.svc.cluster.local",
        "payments.svc.cluster.local",
        "payments.cluster.local",
        "payments",
    ];
    for (i, name) in names.iter().enumerate() {
        let (t, id) = (10 * MS * i as u64, 100 * i as u16);
        run.send(t, s, &query(id, name, TYPE_A));
        run.send(t, s, &query(id + 1, name, TYPE_AAAA));
        if i < 3 {
            run.recv(t + MS, s, &nxdomain(id, name, TYPE_A));
            run.recv(t + MS, s, &nxdomain(id + 1, name, TYPE_AAAA));
            assert!(run.take().is_empty(), "NXDOMAINs of a walk are held");
        } else {
            run.recv(t + MS, s, &answer(id + 1, name, TYPE_AAAA, 0, &[]));
            run.recv(t + 2 * MS, s, &answer(id, name, TYPE_A, 0, &["10.0.3.7"]));
        }
    }
    let got = run.take();
    assert_eq!(got.len(), 8, "{got:#?}");
    let (aaaa, a) = got.split_at(4);
    for (walk, qtype) in [(a, "A"), (aaaa, "AAAA")] {
        for (i, r) in walk.iter().enumerate() {
            assert_eq!(r.query_type, qtype);
            assert_eq!(r.query_name, names[i]);
            assert_eq!(r.search, search("payments", i as u32), "{r:#?}");
            let rcode = if i < 3 { "NXDOMAIN" } else { "NOERROR" };
            assert_eq!(r.rcode.as_deref(), Some(rcode));
        }
    }
    assert_eq!(addrs(&a[3]), ["10.0.3.7"]);
    assert_eq!(run.stats().pending, 0);
}

#[test]
fn the_walk_base_is_the_common_leading_labels_of_its_names() {
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 40000, Some(71));
    // A name with enough dots is asked as it is first, then with the search domain.
    run.send(0, s, &query(1, "API.example.com", TYPE_A));
    run.recv(MS, s, &nxdomain(1, "api.example.com", TYPE_A));
    run.send(
        2 * MS,
        s,
        &query(2, "api.example.com.svc.cluster.local", TYPE_A),
    );
    run.recv(
        3 * MS,
        s,
        &answer(2, "api.example.com.svc.cluster.local", TYPE_A, 0, &[]),
    );
    let got = run.take();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].search, search("API.example.com", 0));
    assert_eq!(got[1].search, search("API.example.com", 1));
}

#[test]
fn a_lone_nxdomain_is_held_for_the_walk_then_reported_alone() {
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 40000, Some(72));
    run.send(0, s, &query(1, "nope.example", TYPE_A));
    run.recv(MS, s, &nxdomain(1, "nope.example", TYPE_A));
    // Another name of the same process does not continue or end the walk.
    run.send(500 * MS, s, &query(2, "other.example", TYPE_A));
    run.recv(501 * MS, s, &answer(2, "other.example", TYPE_A, 0, &[]));
    assert_eq!(run.take()[0].query_name, "other.example");
    run.expire(1_000 * MS);
    assert!(run.take().is_empty());
    assert_eq!(run.stats().pending, 1, "the held record counts");
    run.expire(1_001 * MS);
    let got = run.take();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].rcode.as_deref(), &got[0].search),
        (Some("NXDOMAIN"), &None)
    );
    // After the hold, the same first label is not a walk any more.
    run.send(1_500 * MS, s, &query(3, "nope.example.org", TYPE_A));
    run.recv(
        1_501 * MS,
        s,
        &answer(3, "nope.example.org", TYPE_A, 0, &[]),
    );
    assert_eq!(run.take()[0].search, None);
}

#[test]
fn asking_the_same_missing_name_again_is_not_a_walk() {
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 40000, Some(73));
    run.send(0, s, &query(1, "ghost", TYPE_A));
    run.recv(MS, s, &nxdomain(1, "ghost", TYPE_A));
    run.send(100 * MS, s, &query(2, "GHOST", TYPE_A));
    // The first is released when the repeat is asked.
    assert_eq!(run.take().len(), 1);
    run.recv(101 * MS, s, &nxdomain(2, "ghost", TYPE_A));
    run.expire(u64::MAX);
    let got = run.take();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].retries, &got[0].search), (0, &None));
    assert_eq!(run.stats().lookups, 2);
}

#[test]
fn a_walk_with_no_answer_anywhere_is_reported_when_its_hold_ends() {
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 40000, Some(74));
    let names = [
        "nope.ns.svc.cluster.local",
        "nope.svc.cluster.local",
        "nope",
    ];
    for (i, name) in names.iter().enumerate() {
        let t = 10 * MS * i as u64;
        run.send(t, s, &query(i as u16, name, TYPE_A));
        run.recv(t + MS, s, &nxdomain(i as u16, name, TYPE_A));
    }
    run.expire(21 * MS + 999 * MS);
    assert!(run.take().is_empty());
    run.expire(21 * MS + 1_000 * MS);
    let got = run.take();
    assert_eq!(got.len(), 3);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(
            (r.query_name.as_str(), &r.search),
            (names[i], &search("nope", i as u32))
        );
    }
}

#[test]
fn a_walk_that_ends_in_a_timeout_reports_it_as_part_of_the_walk() {
    let mut run = Run::new(2_000, 64);
    let s = udp(1, 40000, Some(75));
    run.send(0, s, &query(1, "x.ns.svc.cluster.local", TYPE_A));
    run.recv(MS, s, &nxdomain(1, "x.ns.svc.cluster.local", TYPE_A));
    run.send(2 * MS, s, &query(2, "x.svc.cluster.local", TYPE_A));
    // The walk waits for its member past the hold.
    run.expire(1_500 * MS);
    assert!(run.take().is_empty());
    run.expire(2_002 * MS);
    let got = run.take();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].search, search("x", 0));
    assert_eq!(
        (got[1].outcome, &got[1].search),
        (DnsOutcome::Timeout, &search("x", 1))
    );
}

#[test]
fn a_full_table_evicts_the_oldest_and_counts_it() {
    let mut run = Run::new(5_000, 4);
    for i in 0..10u16 {
        let s = udp(100 + i as u64, 41000 + i, None);
        run.send(
            i as u64 * MS,
            s,
            &query(i, &format!("n{i}.example"), TYPE_A),
        );
        assert!(run.stats().pending <= 4);
    }
    let stats = run.stats();
    assert_eq!((stats.pending_evicted, stats.evicted_unanswered), (6, 6));
    // An evicted question's answer is unmatched; a kept one's is a record.
    run.recv(
        20 * MS,
        udp(100, 41000, None),
        &answer(0, "n0.example", TYPE_A, 0, &[]),
    );
    run.recv(
        20 * MS,
        udp(109, 41009, None),
        &answer(9, "n9.example", TYPE_A, 0, &[]),
    );
    assert_eq!(run.take().len(), 1);
    assert_eq!(run.stats().unmatched_responses, 1);
}

#[test]
fn a_held_record_pushed_out_of_a_full_table_is_reported_early() {
    let mut run = Run::new(5_000, 2);
    let s = udp(1, 40000, Some(76));
    run.send(0, s, &query(1, "gone.example", TYPE_A));
    run.recv(MS, s, &nxdomain(1, "gone.example", TYPE_A));
    run.send(2 * MS, s, &query(2, "a.example", TYPE_A));
    assert!(run.take().is_empty());
    run.send(3 * MS, s, &query(3, "b.example", TYPE_A));
    let got = run.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcode.as_deref(), Some("NXDOMAIN"));
    let stats = run.stats();
    assert_eq!((stats.pending_evicted, stats.evicted_unanswered), (1, 0));
    run.expire(u64::MAX);
    assert_eq!(run.take().len(), 2);
}

#[test]
fn a_new_timeout_applies_to_new_deadlines() {
    let mut run = Run::new(1_000, 64);
    let s = udp(1, 40000, Some(2));
    run.send(0, s, &query(1, "r.example", TYPE_A));
    run.joiner.set_config(JoinConfig {
        timeout: Duration::from_secs(3),
        max_pending: 64,
    });
    run.send(500 * MS, s, &query(1, "r.example", TYPE_A));
    run.expire(3_499 * MS);
    assert!(run.take().is_empty());
    run.expire(3_500 * MS);
    assert_eq!(run.take()[0].outcome, DnsOutcome::Timeout);
}

#[test]
fn a_flush_reports_everything_it_holds() {
    let mut run = Run::new(5_000, 64);
    let s = udp(1, 40000, Some(77));
    run.send(0, s, &query(1, "pending.example", TYPE_A));
    run.send(0, s, &query(2, "held.example", TYPE_A));
    run.recv(MS, s, &nxdomain(2, "held.example", TYPE_A));
    run.send(0, s, &query(3, "cut.example", TYPE_A));
    run.recv(MS, s, &truncated(3, "cut.example", TYPE_A));
    run.expire(u64::MAX);
    let mut got: Vec<(String, DnsOutcome)> = run
        .take()
        .into_iter()
        .map(|r| (r.query_name, r.outcome))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("cut.example".to_string(), DnsOutcome::Answered),
            ("held.example".to_string(), DnsOutcome::Answered),
            ("pending.example".to_string(), DnsOutcome::Timeout),
        ]
    );
    assert_eq!(run.stats().pending, 0);
}

/// Arbitrary traffic over a small space of sockets, ids and names (ids reused, answers
/// to nothing, truncation, out-of-order times): no panic, the bound holds, and every
/// lookup ends as exactly one record or one counted eviction.
#[test]
fn arbitrary_traffic_keeps_the_bound_and_the_accounts() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut run = Run::new(300, 16);
    let names = ["a.x", "a.y", "a", "b.x", "B.x", "c"];
    let servers = ["127.0.0.1:53", "127.0.0.2:53"];
    // Recent queries, most of the responses answer one of them.
    let mut sent: Vec<(Sock, &str, u16, &str, u16)> = Vec::new();
    let mut ts = 0u64;
    for _ in 0..20_000 {
        ts = (ts + rand(25) * MS).saturating_sub(rand(2) * MS);
        let (sock, server, id, name, qtype) = match sent.get(rand(12) as usize) {
            Some(&q) if rand(4) != 0 => q,
            _ => (
                match rand(3) {
                    0 => udp(rand(4), 40000, Some(rand(3) as u32)),
                    1 => tcp(10 + rand(2), 40001, Some(rand(3) as u32)),
                    _ => udp(rand(4), 40002, None),
                },
                servers[rand(2) as usize],
                rand(4) as u16,
                names[rand(6) as usize],
                [TYPE_A, TYPE_AAAA][rand(2) as usize],
            ),
        };
        let (egress, wire) = match rand(9) {
            0..=3 => (true, query(id, name, qtype)),
            4 => (false, nxdomain(id, name, qtype)),
            5 => (false, truncated(id, name, qtype)),
            6 => (
                rand(8) == 0,
                answer(id, name, qtype, rand(6) as u8, &["10.0.0.1"]),
            ),
            _ => (rand(8) == 0, answer(id, name, qtype, 0, &["10.0.0.1"])),
        };
        if egress {
            sent.insert(0, (sock, server, id, name, qtype));
            sent.truncate(8);
        }
        run.packet(ts, sock, server, egress, &wire);
        if rand(10) == 0 {
            run.expire(ts);
        }
        assert!(run.stats().pending <= 16);
        // The indexes follow the table: nothing outlives its entry.
        let j = &run.joiner;
        let lookups = j
            .table
            .values()
            .filter(|e| matches!(e, Entry::Lookup(_)))
            .count();
        assert_eq!(j.deadlines.len(), lookups);
        assert!(j.questions.len() <= lookups);
        assert!(j.attempts.len() <= lookups * MAX_ATTEMPTS);
        assert!(j.walks.len() <= j.table.len());
    }
    run.expire(u64::MAX);
    let got = run.take();
    let stats = run.stats();
    assert_eq!(stats.pending, 0);
    assert_eq!(got.len() as u64, stats.answered + stats.timeouts);
    assert_eq!(
        stats.lookups,
        stats.answered - stats.late_answers + stats.timeouts + stats.evicted_unanswered
    );
    // The traffic reaches every path.
    assert!(
        stats.answered > 100 && stats.timeouts > 100 && stats.pending_evicted > 0,
        "{stats:?}"
    );
    assert!(
        stats.late_answers > 0 && stats.unmatched_responses > 0 && stats.skipped_packets > 0,
        "{stats:?}"
    );
    for r in &got {
        match r.outcome {
            DnsOutcome::Answered => assert!(r.rcode.is_some() && r.latency_us.is_some()),
            DnsOutcome::Timeout => assert!(r.rcode.is_none() && r.latency_us.is_none()),
        }
    }
    let walks = got.iter().filter(|r| r.search.is_some()).count();
    assert!(walks > 0, "the traffic makes search walks");
}

#[test]
fn stats_serialize_with_their_names() {
    let json = serde_json::to_value(JoinStats::default()).unwrap();
    for field in [
        "pending",
        "answered",
        "timeouts",
        "retries",
        "unmatched_responses",
        "pending_evicted",
    ] {
        assert_eq!(json[field], 0, "{field}");
    }
}

#[test]
fn walks_are_bounded_by_the_table() {
    let mut run = Run::new(5_000, 2);
    let s = udp(1, 40000, Some(78));
    for i in 0..20u16 {
        let name = format!("n{i}.example");
        run.send(i as u64 * MS, s, &query(i, &name, TYPE_A));
        run.recv(i as u64 * MS, s, &nxdomain(i, &name, TYPE_A));
        assert!(run.joiner.walks.len() <= 2, "walk {i}");
    }
    // Every NXDOMAIN is reported: 18 pushed out early, 2 at the flush.
    assert_eq!(run.take().len(), 18);
    run.expire(u64::MAX);
    assert_eq!(run.take().len(), 2);
    assert_eq!(run.joiner.walks.len(), 0);
}
