//! DNS family against real servers and resolvers: dnsmasq serving a test zone on loopback
//! addresses of its own (and inside network namespaces with their own resolv.conf),
//! queried by dig (bind9), glibc (`getent`) and Python's `socket.getaddrinfo`, with
//! SERVFAIL from a validating forwarder, timeouts made by nftables, truncated UDP answers
//! asked again over TCP, the `ndots:5` search-list walk, a non-DNS peer on port 53 and a
//! 10,000-lookup storm. The agent is the real binary (`run --output json`); the tests
//! read its `"type":"dns"` records and its counters.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use hostscope_tests::{dns::*, json_agent::JsonAgent, privileged};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Everything these tests run besides the agent.
const TOOLS: &[&str] = &["dnsmasq", "dig", "nft", "ip", "getent", "python3"];

fn can_run(test: &str) -> bool {
    privileged(test) && tools_present(test, TOOLS)
}

/// A running `hostscope run --output json` with a config file of its own.
struct Agent {
    json: JsonAgent,
    dir: PathBuf,
}

impl Agent {
    /// The debug agent with `config` (YAML, e.g. a `dns:` section) as its file.
    fn start(config: &str) -> Agent {
        Self::start_bin(hostscope_tests::hostscope_bin(), config)
    }

    fn start_bin(bin: PathBuf, config: &str) -> Agent {
        // Root-owned and not group/world-writable: the agent refuses other files.
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hostscope-dns-agent-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("config.yaml");
        // `{}`: every default (the agent refuses an empty file).
        std::fs::write(&file, if config.is_empty() { "{}\n" } else { config }).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args([
            "run",
            "--no-api",
            "--no-prometheus",
            "--output",
            "json",
            "--no-pin",
            "--poll-ms",
            "20",
            "--stats-interval",
            "1",
            "--config",
        ])
        .arg(&file);
        Agent {
            json: JsonAgent::spawn(cmd, Duration::from_secs(30)),
            dir,
        }
    }

    /// Takes every line the agent printed within `d`.
    fn settle(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.json.lines.recv_timeout(left) {
                Ok(v) => self.json.seen.push(v),
                Err(_) => break,
            }
        }
    }

    /// DNS records seen so far that match `pred`.
    fn dns(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.json
            .seen
            .iter()
            .filter(|v| v["type"] == "dns" && pred(v))
            .cloned()
            .collect()
    }

    /// Waits until at least `n` DNS records match `pred`; panics listing every DNS
    /// record seen when they do not come within `timeout`.
    fn wait_dns(
        &mut self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.wait_lines(n, timeout, |v| v["type"] == "dns" && pred(v))
    }

    /// Waits until at least `n` lines of any kind match `pred`.
    fn wait_lines(
        &mut self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<Value> = self.json.seen.iter().filter(|v| pred(v)).cloned().collect();
            if found.len() >= n {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {n} matching lines within {timeout:?}, got {}; every DNS record:\n{}",
                    found.len(),
                    self.dns_lines()
                );
            }
            self.settle(Duration::from_millis(100));
        }
    }

    fn dns_lines(&self) -> String {
        self.dns(|_| true)
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The latest counters line.
    fn stats(&mut self) -> Value {
        self.settle(Duration::from_millis(1100));
        self.json
            .seen
            .iter()
            .rev()
            .find(|v| v["type"] == "agent_stats")
            .cloned()
            .expect("an agent_stats line")
    }

    /// SIGTERM; every line up to the exit (which must be a success), the last counters
    /// line.
    fn stop(mut self) -> (Vec<Value>, Value) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.json.pid() as i32, libc::SIGTERM) };
        let status = self.json.child.wait().unwrap();
        assert!(status.success(), "agent exited with {status}");
        while let Ok(v) = self.json.lines.recv_timeout(Duration::from_secs(2)) {
            self.json.seen.push(v);
        }
        let lines = std::mem::take(&mut self.json.seen);
        let stats = lines
            .iter()
            .rev()
            .find(|v| v["type"] == "agent_stats")
            .cloned()
            .expect("final agent_stats");
        (lines, stats)
    }
}

/// A test that ends early (or panics) leaves no agent running and no config behind.
impl Drop for Agent {
    fn drop(&mut self) {
        if self.json.alive() {
            let _ = self.json.child.kill();
            let _ = self.json.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The DNS family's counter `name` in a counters line, wherever the family puts it (its
/// kernel counters or its userspace account).
fn dns_counter(stats: &Value, name: &str) -> Option<u64> {
    fn find(v: &Value, name: &str, in_dns: bool) -> Option<u64> {
        match v {
            Value::Object(map) => {
                if in_dns {
                    if let Some(n) = map.get(name).and_then(Value::as_u64) {
                        return Some(n);
                    }
                }
                map.iter()
                    .find_map(|(k, v)| find(v, name, in_dns || k == "dns"))
            }
            _ => None,
        }
    }
    find(stats, name, false)
}

fn counter(stats: &Value, name: &str) -> u64 {
    dns_counter(stats, name)
        .unwrap_or_else(|| panic!("no DNS counter {name:?} in the counters line: {stats}"))
}

/// Nothing lost anywhere: no ring overflow, no full table, no undecodable or lagged
/// record, and the DNS family evicted no pending question and dropped no message.
fn assert_nothing_lost(stats: &Value) {
    assert_eq!(stats["records_lagged"], 0, "{stats}");
    assert_eq!(stats["decode_errors"], 0, "{stats}");
    for (family, counters) in stats["kernel"].as_object().expect("kernel counters") {
        for (name, v) in counters.as_object().unwrap() {
            if name.contains("ring_full") || name.contains("lost") || name.ends_with("_full") {
                assert_eq!(v, 0, "{family}.{name}: {stats}");
            }
        }
    }
    for name in ["pending_evicted", "tcp_streams_evicted", "tcp_framing_lost"] {
        if let Some(n) = dns_counter(stats, name) {
            assert_eq!(n, 0, "dns {name}: {stats}");
        }
    }
}

fn ip(v: &Value) -> Vec<IpAddr> {
    v["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap().parse().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn server_is(v: &Value, server: Ipv4Addr) -> bool {
    v["server"] == format!("{server}:53")
}

fn of(pid: u32, name: &str, qtype: &str) -> impl Fn(&Value) -> bool {
    let (name, qtype) = (name.to_string(), qtype.to_string());
    move |v| {
        v["pid"] == pid && v["query_name"] == name.as_str() && v["query_type"] == qtype.as_str()
    }
}

/// An answered lookup with a plausible latency (more than nothing, less than a second
/// on loopback: a sanity bound, not a timing).
fn assert_answered(r: &Value, rcode: &str) {
    assert_eq!(r["outcome"], "answered", "{r}");
    assert_eq!(r["rcode"], rcode, "{r}");
    let us = r["latency_us"]
        .as_f64()
        .unwrap_or_else(|| panic!("no latency: {r}"));
    assert!(us > 0.0 && us < 1_000_000.0, "latency {us} µs: {r}");
}

/// The fixtures behave as the other tests assume, checked with dig and glibc alone (no
/// agent): a failure here is the harness's, not the family's.
#[test]
fn fixtures_answer_as_the_tests_expect() {
    if !can_run("fixtures_answer_as_the_tests_expect") {
        return;
    }
    let _zone = Dnsmasq::zone(ZONE_SERVER, None);
    let at = format!("@{ZONE_SERVER}");
    let (_, ok, out) = dig(&[&at, "+short", WWW, "A"]);
    assert!(ok && out.trim() == WWW_V4.to_string(), "{out}");
    let (_, ok, out) = dig(&[&at, "+short", WWW, "AAAA"]);
    assert!(ok && out.trim() == WWW_V6.to_string(), "{out}");
    let (_, _, out) = dig(&[&at, UNKNOWN]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    let (_, _, out) = dig(&[&at, BIG, "A"]);
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains(&format!("ANSWER: {BIG_COUNT},")), "{out}");
    let forwarder = Dnsmasq::servfail_forwarder(SERVFAIL_SERVER, ZONE_SERVER);
    let (_, _, out) = dig(&[&format!("@{SERVFAIL_SERVER}"), WWW]);
    assert!(
        out.contains("status: SERVFAIL"),
        "{out}\n{}",
        forwarder.log()
    );
    let silent_ns = ResolverNs::new("silent", "nameserver 127.0.0.80\n");
    let silent = Dnsmasq::zone(SILENT_SERVER, Some(&silent_ns));
    let drop = DropResponses::from(SILENT_SERVER, &silent_ns);
    let (_, ok, out) = run_client(silent_ns.command("dig").args([
        &format!("@{SILENT_SERVER}"),
        "+tries=2",
        "+timeout=1",
        WWW,
    ]));
    assert!(!ok && out.contains("timed out"), "{out}");
    assert!(drop.dropped() >= 2, "{} dropped", drop.dropped());
    drop_and_check_table_gone(drop, &silent_ns, silent.addr);
    let ns = ResolverNs::new(
        "fixture",
        "nameserver 127.0.0.77\nsearch a.test b.test\noptions ndots:5\n",
    );
    let _inner = Dnsmasq::zone(ZONE_SERVER, Some(&ns));
    let (_, ok, out) = run_client(ns.command("getent").args(["ahostsv4", WWW]));
    assert!(ok && out.contains(&WWW_V4.to_string()), "{out}");
    let peer = NotDnsPeer::start(NOT_DNS_PEER);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(b"ping", peer.addr).unwrap();
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], NOT_DNS_REPLY);
}

fn drop_and_check_table_gone(drop: DropResponses, ns: &ResolverNs, server: SocketAddr) {
    std::mem::drop(drop);
    assert_eq!(
        ns.run(move || lookup(server, WWW, QTYPE_A, Duration::from_secs(2))),
        Ok(0),
        "answers flow again once the rule is gone"
    );
}

#[test]
fn a_and_aaaa_answers_from_dig_glibc_and_python() {
    if !can_run("a_and_aaaa_answers_from_dig_glibc_and_python") {
        return;
    }
    let mut agent = Agent::start("");
    let _zone = Dnsmasq::zone(ZONE_SERVER, None);
    let ns = ResolverNs::new("answers", "nameserver 127.0.0.77\n");
    let _inner = Dnsmasq::zone(ZONE_SERVER, Some(&ns));
    let at = format!("@{ZONE_SERVER}");

    // dig, in the host namespace.
    let (dig_a, ok, _) = dig(&[&at, "+short", WWW, "A"]);
    assert!(ok);
    let (dig_aaaa, ok, _) = dig(&[&at, "+short", WWW, "AAAA"]);
    assert!(ok);
    let a = agent.wait_dns(1, WAIT, of(dig_a, WWW, "A"))[0].clone();
    assert_answered(&a, "NOERROR");
    assert_eq!(ip(&a), vec![IpAddr::V4(WWW_V4)], "{a}");
    assert_eq!(a["answer_count"], 1, "{a}");
    assert_eq!(a["transport"], "udp", "{a}");
    assert!(server_is(&a, ZONE_SERVER), "{a}");
    assert_eq!(a["retries"], 0, "{a}");
    let aaaa = agent.wait_dns(1, WAIT, of(dig_aaaa, WWW, "AAAA"))[0].clone();
    assert_answered(&aaaa, "NOERROR");
    assert_eq!(ip(&aaaa), vec![IpAddr::V6(WWW_V6)], "{aaaa}");

    // glibc: `getent ahosts` asks A and AAAA in parallel on one socket.
    let (getent, ok, out) = run_client(ns.command("getent").args(["ahosts", WWW]));
    assert!(ok, "{out}");
    let a = agent.wait_dns(1, WAIT, of(getent, WWW, "A"))[0].clone();
    assert_answered(&a, "NOERROR");
    assert_eq!(ip(&a), vec![IpAddr::V4(WWW_V4)], "{a}");
    assert_eq!(a["comm"], "getent", "{a}");
    let aaaa = agent.wait_dns(1, WAIT, of(getent, WWW, "AAAA"))[0].clone();
    assert_answered(&aaaa, "NOERROR");
    assert_eq!(ip(&aaaa), vec![IpAddr::V6(WWW_V6)], "{aaaa}");
    assert_eq!(a["local"], aaaa["local"], "one socket for both questions");

    // Python's getaddrinfo (glibc underneath, from another program).
    let script = format!(
        "import socket\nfor f in (socket.AF_INET, socket.AF_INET6):\n    \
         print(socket.getaddrinfo({WWW:?}, 80, f, socket.SOCK_STREAM)[0][4][0])\n"
    );
    let (py, ok, out) = run_client(ns.command("python3").args(["-c", &script]));
    assert!(ok, "{out}");
    assert_eq!(out, format!("{WWW_V4}\n{WWW_V6}\n"));
    let a = agent.wait_dns(1, WAIT, of(py, WWW, "A"))[0].clone();
    assert_answered(&a, "NOERROR");
    assert_eq!(ip(&a), vec![IpAddr::V4(WWW_V4)], "{a}");
    let aaaa = agent.wait_dns(1, WAIT, of(py, WWW, "AAAA"))[0].clone();
    assert_eq!(ip(&aaaa), vec![IpAddr::V6(WWW_V6)], "{aaaa}");
    // One record per question: nothing doubled.
    agent.settle(Duration::from_millis(500));
    for pid in [dig_a, getent, py] {
        assert_eq!(
            agent.dns(of(pid, WWW, "A")).len(),
            1,
            "{}",
            agent.dns_lines()
        );
    }
    let (_, stats) = agent.stop();
    assert_nothing_lost(&stats);
}

#[test]
fn nxdomain_for_an_unknown_name() {
    if !can_run("nxdomain_for_an_unknown_name") {
        return;
    }
    let mut agent = Agent::start("");
    let _zone = Dnsmasq::zone(ZONE_SERVER, None);
    let (pid, _, _) = dig(&[&format!("@{ZONE_SERVER}"), UNKNOWN, "A"]);
    let r = agent.wait_dns(1, WAIT, of(pid, UNKNOWN, "A"))[0].clone();
    assert_answered(&r, "NXDOMAIN");
    assert_eq!(r["answer_count"], 0, "{r}");
    assert!(r.get("addresses").is_none(), "{r}");
    assert!(r.get("search").is_none(), "no search list in play: {r}");
}

#[test]
fn servfail_from_a_forwarder_whose_upstream_fails_validation() {
    if !can_run("servfail_from_a_forwarder_whose_upstream_fails_validation") {
        return;
    }
    let mut agent = Agent::start("");
    let _zone = Dnsmasq::zone(ZONE_SERVER, None);
    let forwarder = Dnsmasq::servfail_forwarder(SERVFAIL_SERVER, ZONE_SERVER);
    let (pid, _, out) = dig(&[&format!("@{SERVFAIL_SERVER}"), "+tries=1", WWW, "A"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    let r = agent.wait_dns(1, WAIT, of(pid, WWW, "A"))[0].clone();
    assert_answered(&r, "SERVFAIL");
    assert!(server_is(&r, SERVFAIL_SERVER), "{r}");
    // The forwarder's own questions to its upstream are client lookups too.
    let upstream = agent.wait_dns(1, WAIT, |v| {
        v["pid"] == forwarder.pid() && server_is(v, ZONE_SERVER)
    });
    assert_eq!(upstream[0]["comm"], "dnsmasq", "{}", upstream[0]);
}

#[test]
fn a_timeout_is_reported_once_with_its_retries() {
    if !can_run("a_timeout_is_reported_once_with_its_retries") {
        return;
    }
    // Shorter than the default, longer than dig's 1 s between tries: the three tries are
    // one lookup, which times out 2 s after the last.
    let mut agent = Agent::start("dns:\n  timeout: 2s\n");
    let ns = ResolverNs::new("timeout", "nameserver 127.0.0.80\n");
    let silent = Dnsmasq::zone(SILENT_SERVER, Some(&ns));
    let drop = DropResponses::from(SILENT_SERVER, &ns);
    let (pid, ok, _) = run_client(ns.command("dig").args([
        &format!("@{SILENT_SERVER}"),
        "+tries=3",
        "+timeout=1",
        WWW,
        "A",
    ]));
    assert!(!ok, "dig must time out");
    assert!(drop.dropped() >= 3, "the rule dropped {}", drop.dropped());
    let r = agent.wait_dns(1, WAIT, of(pid, WWW, "A"))[0].clone();
    assert_eq!(r["outcome"], "timeout", "{r}");
    assert_eq!(r["retries"], 2, "{r}\n{}", agent.dns_lines());
    assert!(r.get("rcode").is_none(), "{r}");
    assert!(r.get("latency_us").is_none(), "{r}");
    assert!(server_is(&r, SILENT_SERVER), "{r}");
    // Reported once: nothing more about it after another timeout period.
    agent.settle(Duration::from_secs(3));
    assert_eq!(
        agent.dns(of(pid, WWW, "A")).len(),
        1,
        "{}",
        agent.dns_lines()
    );
    let stats = agent.stats();
    assert!(counter(&stats, "timeouts") >= 1, "{stats}");
    assert!(counter(&stats, "retries") >= 2, "{stats}");
    drop_and_check_table_gone(drop, &ns, silent.addr);
}

#[test]
fn a_truncated_udp_answer_is_asked_again_over_tcp() {
    if !can_run("a_truncated_udp_answer_is_asked_again_over_tcp") {
        return;
    }
    let mut agent = Agent::start("");
    let _zone = Dnsmasq::zone(ZONE_SERVER, None);
    let (pid, ok, out) = dig(&[&format!("@{ZONE_SERVER}"), BIG, "A"]);
    assert!(
        ok && out.contains("Truncated, retrying in TCP mode"),
        "{out}"
    );
    let tcp = agent.wait_dns(1, WAIT, |v| of(pid, BIG, "A")(v) && v["transport"] == "tcp");
    let r = &tcp[0];
    assert_answered(r, "NOERROR");
    assert_eq!(r["after_truncation"], true, "{r}");
    assert_eq!(r["answer_count"], BIG_COUNT, "{r}");
    let addrs = ip(r);
    assert!(!addrs.is_empty(), "{r}");
    for a in &addrs {
        assert!(
            matches!(a, IpAddr::V4(v4) if v4.octets()[..3] == [10, 77, 1]),
            "{a} is not one of big.test's: {r}"
        );
    }
    assert_eq!(
        addrs.iter().collect::<BTreeSet<_>>().len(),
        addrs.len(),
        "no address twice: {r}"
    );
    agent.settle(Duration::from_millis(500));
    let all = agent.dns(of(pid, BIG, "A"));
    assert_eq!(
        all.iter().filter(|v| v["after_truncation"] == true).count(),
        1,
        "one TCP retry: {}",
        agent.dns_lines()
    );
}

#[test]
fn the_search_list_walk_under_ndots_5_is_one_pattern() {
    if !can_run("the_search_list_walk_under_ndots_5_is_one_pattern") {
        return;
    }
    let mut agent = Agent::start("");
    // As in a Kubernetes pod: two search domains and ndots:5, so `www.test` (one dot)
    // is first tried as www.test.a.test and www.test.b.test, both NXDOMAIN.
    let ns = ResolverNs::new(
        "search",
        "nameserver 127.0.0.77\nsearch a.test b.test\noptions ndots:5\n",
    );
    let _zone = Dnsmasq::zone(ZONE_SERVER, Some(&ns));
    let (pid, ok, out) = run_client(ns.command("getent").args(["ahostsv4", WWW]));
    assert!(ok && out.contains(&WWW_V4.to_string()), "{out}");
    // Each step names the walk and its place in it.
    for (place, domain) in ["a.test", "b.test"].iter().enumerate() {
        let name = format!("{WWW}.{domain}");
        let r = agent.wait_dns(1, WAIT, of(pid, &name, "A"))[0].clone();
        assert_answered(&r, "NXDOMAIN");
        assert_eq!(r["search"]["base"], WWW, "{r}");
        assert_eq!(r["search"]["nxdomain_before"], place, "{r}");
    }
    let r = agent.wait_dns(1, WAIT, of(pid, WWW, "A"))[0].clone();
    assert_answered(&r, "NOERROR");
    assert_eq!(ip(&r), vec![IpAddr::V4(WWW_V4)], "{r}");
    let search = &r["search"];
    assert_eq!(search["base"], WWW, "{r}\n{}", agent.dns_lines());
    assert_eq!(search["nxdomain_before"], 2, "{r}\n{}", agent.dns_lines());
}

#[test]
fn a_non_dns_peer_on_port_53_makes_no_record() {
    if !can_run("a_non_dns_peer_on_port_53_makes_no_record") {
        return;
    }
    let mut agent = Agent::start("dns:\n  timeout: 1s\n");
    let before = agent.stats();
    let before_errors = counter(&before, "parse_errors");
    let peer = NotDnsPeer::start(NOT_DNS_PEER);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.0\r\n\r\n",
        &[0xff; 40],
        // A header claiming a question that is not there.
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0",
    ];
    for g in garbage {
        client.send_to(g, peer.addr).unwrap();
        let n = client.recv(&mut buf).expect("the peer answers");
        assert_eq!(&buf[..n], NOT_DNS_REPLY);
    }
    assert_eq!(peer.received(), 3);
    // Longer than the configured timeout: a false question would have timed out by now.
    agent.settle(Duration::from_secs(3));
    let stats = agent.stats();
    let false_records = agent.dns(|v| v["server"] == peer.addr.to_string());
    assert!(false_records.is_empty(), "{false_records:?}");
    let errors = counter(&stats, "parse_errors") - before_errors;
    assert!(
        errors >= 6,
        "3 questions and 3 answers that are not DNS counted as parse errors, got {errors}: {stats}"
    );
}

#[test]
fn ten_thousand_lookups_lose_nothing() {
    if !can_run("ten_thousand_lookups_lose_nothing") {
        return;
    }
    const LOOKUPS: usize = 10_000;
    // The release build: whether the agent users run keeps up is the subject.
    let mut agent = Agent::start_bin(hostscope_tests::hostscope_release_bin(), "");
    let zone = Dnsmasq::zone(ZONE_SERVER, None);
    let before = agent.stats();
    let prefix = format!("s{}-", std::process::id());
    let storm = storm(zone.addr, &prefix, LOOKUPS, 4);
    eprintln!(
        "{LOOKUPS} lookups in {:.2} s ({:.0}/s)",
        storm.elapsed.as_secs_f64(),
        LOOKUPS as f64 / storm.elapsed.as_secs_f64()
    );
    assert_eq!(
        storm.answered, LOOKUPS as u64,
        "dnsmasq answered: {storm:?}"
    );
    let me = std::process::id();
    let mine = |v: &Value| {
        v["pid"] == me
            && v["query_name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(BULK_DOMAIN))
    };
    let records = agent.wait_dns(LOOKUPS, Duration::from_secs(60), mine);
    let names: BTreeSet<&str> = records
        .iter()
        .map(|v| v["query_name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), LOOKUPS, "one record per lookup");
    assert_eq!(records.len(), LOOKUPS, "no lookup reported twice");
    for r in &records {
        assert_eq!(r["outcome"], "answered", "{r}");
        assert_eq!(r["rcode"], "NOERROR", "{r}");
        assert_eq!(ip(r), vec![IpAddr::V4(BULK_ADDR)], "{r}");
    }
    let (_, stats) = agent.stop();
    assert_nothing_lost(&stats);
    assert_eq!(
        counter(&stats, "unmatched_responses")
            - dns_counter(&before, "unmatched_responses").unwrap_or(0),
        0,
        "{stats}"
    );
    assert_eq!(
        counter(&stats, "parse_errors") - dns_counter(&before, "parse_errors").unwrap_or(0),
        0,
        "{stats}"
    );
}

#[test]
fn a_connect_to_a_resolved_address_carries_the_looked_up_name() {
    if !can_run("a_connect_to_a_resolved_address_carries_the_looked_up_name") {
        return;
    }
    let mut agent = Agent::start("");
    let ns = ResolverNs::new("remote-name", "nameserver 127.0.0.77\n");
    let _zone = Dnsmasq::zone(ZONE_SERVER, Some(&ns));
    // Python resolves svc.test (→ 127.0.0.82) and connects to what it got, as a client
    // library would; the listener is its own, in the namespace.
    let script = format!(
        "import socket\n\
         l = socket.socket(); l.bind(({svc:?}, 0)); l.listen(1)\n\
         port = l.getsockname()[1]\n\
         addr = socket.getaddrinfo({name:?}, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]\n\
         c = socket.create_connection(addr); s, _ = l.accept()\n\
         print(addr[0], port); c.close(); s.close()\n",
        svc = SVC_ADDR.to_string(),
        name = SVC
    );
    let (pid, ok, out) = run_client(ns.command("python3").args(["-c", &script]));
    assert!(ok, "{out}");
    let mut words = out.split_whitespace();
    assert_eq!(words.next(), Some(SVC_ADDR.to_string().as_str()), "{out}");
    let port: u16 = words.next().unwrap().parse().unwrap();
    let remote = SocketAddr::new(IpAddr::V4(SVC_ADDR), port).to_string();
    let lookup = agent.wait_dns(1, WAIT, of(pid, SVC, "A"))[0].clone();
    assert_eq!(ip(&lookup), vec![IpAddr::V4(SVC_ADDR)], "{lookup}");
    // The client's connect and close records, both naming the host it looked up.
    let tcp = agent.wait_lines(2, WAIT, |v| {
        v["type"] == "tcp" && v["pid"] == pid && v["remote"] == remote.as_str()
    });
    for r in &tcp {
        assert_eq!(r["remote_name"], SVC, "{r}");
    }
}
