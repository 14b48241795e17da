//! RCA incidents from the real agent (`hostscope run`, real probes): failures made here
//! (refused connects, SYNs dropped by nftables, expired-certificate handshakes with a real
//! `openssl s_server`, a process out of file descriptors) must come out as a few `rca`
//! records with the right cause, sentence and exact count, next to every per-failure
//! record; and as OTLP log records, with the per-failure logs off by default.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use hostscope_tests::{
    closed_port, connect_with_syncnt, hostscope_bin,
    json_agent::JsonAgent,
    otlp::{self, attr, Receiver},
    privileged,
    tls::{pki, s_client, Server},
    NetNs,
};
use serde_json::Value;

/// `hostscope run --output json` with a configuration file, its lines collected.
struct Agent(JsonAgent);

fn config_file(tag: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hostscope-rca-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

impl Agent {
    fn start(tag: &str, yaml: &str, extra: &[&str]) -> Agent {
        let config = config_file(tag, yaml);
        // Every default sink on, but on a socket and a port of its own: another agent
        // (another suite, a developer's) may hold the default ones.
        let socket = config.with_file_name("api.sock");
        let _ = std::fs::remove_file(&socket);
        let prometheus = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).to_string();
        let mut cmd = Command::new(hostscope_bin());
        cmd.args(["run", "--output", "json", "--no-pin", "--poll-ms", "20"])
            .args(["--stats-interval", "1", "--config"])
            .arg(&config)
            .arg("--api-socket")
            .arg(&socket)
            .args(["--prometheus-listen", &prometheus])
            .args(extra);
        Agent(JsonAgent::spawn(cmd, Duration::from_secs(20)))
    }

    /// Waits for a line matching `pred` (among those not yet returned) and returns it.
    fn wait(&mut self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.0.wait(timeout, what, pred)
    }

    /// SIGTERM, then every line up to the exit.
    fn stop(self) -> Vec<Value> {
        self.0.stop()
    }
}

fn incidents(lines: &[Value], pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "rca" && pred(v))
        .cloned()
        .collect()
}

fn targets(addr: SocketAddr) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["target_address"] == addr.to_string().as_str()
}

const RCA: &str = "rca:\n  window: 30s\n  update_interval: 1s\n";

#[test]
fn refused_storm_is_one_incident_that_recovers_when_a_listener_appears() {
    if !privileged("refused_storm_is_one_incident_that_recovers_when_a_listener_appears") {
        return;
    }
    let mut agent = Agent::start("storm", RCA, &[]);
    let target = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    const STORM: u64 = 5_000;
    let started = Instant::now();
    for _ in 0..STORM {
        assert!(TcpStream::connect(target).is_err(), "nothing listens");
    }
    let storm = started.elapsed();
    let open = agent.wait(Duration::from_secs(10), "the open record", |v| {
        v["type"] == "rca" && targets(target)(v)
    });
    assert_eq!(open["state"], "open", "{open}");
    assert_eq!(open["cause"], "refused");
    assert_eq!(open["family"], "tcp");
    let sentence = open["sentence"].as_str().unwrap();
    assert!(
        sentence.contains("nothing listens on that port"),
        "{sentence}"
    );
    // Reported at its first failure: not held back until the storm is over.
    let delay_ms = (open["timestamp_unix_ns"].as_i64().unwrap()
        - open["first_seen_unix_ns"].as_i64().unwrap()) as f64
        / 1e6;
    assert!(
        delay_ms < 1_000.0,
        "opened {delay_ms} ms after the first failure"
    );
    let id = open["incident_id"].clone();

    // A listener appears: the next connect succeeds and closes the incident.
    let listener = TcpListener::bind(target).expect("bind the refused port");
    let ok = TcpStream::connect(target).expect("the listener answers");
    // Accepted and closed in order: a clean connection, no reset of its own.
    let (served, _) = listener.accept().unwrap();
    drop(ok);
    drop(served);
    let closed = agent.wait(Duration::from_secs(10), "the recovered close", |v| {
        v["type"] == "rca" && v["incident_id"] == id && v["state"] == "closed"
    });
    assert_eq!(closed["ended"], "recovered", "{closed}");
    assert_eq!(closed["count"], STORM, "{closed}");
    let summary = closed["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("recovered after 5,000 failures over "),
        "{summary}"
    );
    let lines = agent.stop();
    let all = incidents(&lines, targets(target));
    assert!(
        all.iter().all(|v| v["incident_id"] == id),
        "one incident: {all:#?}"
    );
    // Open, one update per second of storm at most, close.
    let most = 2 + storm.as_secs() as usize + 2;
    assert!(
        (2..=most).contains(&all.len()),
        "{} records for {STORM} failures in {storm:?}",
        all.len()
    );
    // The per-failure records are all still there.
    let failed = lines
        .iter()
        .filter(|v| {
            v["type"] == "tcp"
                && v["event"] == "connect_failed"
                && v["remote"] == target.to_string().as_str()
        })
        .count() as u64;
    assert_eq!(failed, STORM);
    let stats = lines
        .iter()
        .rev()
        .find(|v| v["type"] == "rca_stats")
        .expect("final rca_stats");
    assert!(stats["recovered"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["open"], 0, "{stats}");
    assert_eq!(stats["overflow"], 0, "{stats}");
}

#[test]
fn dropped_syns_are_a_timed_out_incident_naming_the_retransmits() {
    if !privileged("dropped_syns_are_a_timed_out_incident_naming_the_retransmits") {
        return;
    }
    let ns = NetNs::new("rcasyn", 2);
    let _listener = ns.listen(8443);
    ns.drop_input("tcp dport 8443 tcp flags syn counter drop");
    let mut agent = Agent::start("syn", RCA, &[]);
    let target = SocketAddr::new(ns.ns_ip, 8443);
    let (_fd, res) = connect_with_syncnt(target, 2);
    assert!(res.is_err(), "SYNs are dropped");
    let retransmits = ns.counted_packets() - 1;
    let open = agent.wait(Duration::from_secs(15), "the timed-out incident", |v| {
        v["type"] == "rca" && targets(target)(v)
    });
    assert_eq!(open["cause"], "timed_out", "{open}");
    let sentence = open["sentence"].as_str().unwrap();
    assert!(
        sentence.contains(&format!("no SYN-ACK after {retransmits} SYN retransmits")),
        "{sentence} ({retransmits} retransmits counted by nftables)"
    );
    let lines = agent.stop();
    // Stopping the agent closes what is open, with a final record.
    let last = incidents(&lines, targets(target)).pop().unwrap();
    assert_eq!(last["state"], "closed");
    assert_eq!(last["ended"], "agent_stopped");
    assert_eq!(last["count"], 1);
}

#[test]
fn expired_certificate_incident_says_how_long_ago() {
    if !privileged("expired_certificate_incident_says_how_long_ago") {
        return;
    }
    let server = Server::start(&pki().expired(), &["-tls1_2"]);
    let mut agent = Agent::start("tls", RCA, &[]);
    for _ in 0..3 {
        let (_, ok) = s_client(server.addr, &["-tls1_2"]);
        assert!(!ok, "s_client must reject an expired certificate");
    }
    let pred = |v: &Value| {
        v["type"] == "rca"
            && v["target_address"] == server.addr.to_string().as_str()
            && v["cause"] == "tls_certificate_expired"
    };
    agent.wait(Duration::from_secs(10), "the TLS incident", pred);
    let lines = agent.stop();
    let last = incidents(&lines, pred).pop().unwrap();
    assert_eq!(last["count"], 3, "{last}");
    assert_eq!(last["source"], "process openssl");
    // expired.pem's notAfter is 2020-02-01T00:00:00Z.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let days = (now - 1_580_515_200) as f64 / 86_400.0;
    let sentence = last["sentence"].as_str().unwrap();
    let said: f64 = sentence
        .split("expired ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no day count in {sentence:?}"));
    assert!((said - days).abs() <= 1.0, "{sentence} vs {days:.1} days");
    assert!(sentence.contains("days ago"), "{sentence}");
    assert!(sentence.contains("api.test"), "{sentence}");
}

#[test]
fn a_process_out_of_file_descriptors_is_an_fd_limit_incident() {
    if !privileged("a_process_out_of_file_descriptors_is_an_fd_limit_incident") {
        return;
    }
    let yaml = format!(
        "{RCA}syscalls:\n  interval: 500ms\n  error_burst_rate: 10\n  error_burst_min: 20\n"
    );
    let mut agent = Agent::start("emfile", &yaml, &[]);
    // A low RLIMIT_NOFILE, then opens until it fails 2,000 times over ~1.5 s.
    let script = "import resource, time\n\
                  resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))\n\
                  held, failed = [], 0\n\
                  end = time.time() + 1.5\n\
                  while failed < 2000 or time.time() < end:\n    \
                      try:\n        held.append(open('/dev/null'))\n    \
                      except OSError:\n        failed += 1\n        time.sleep(0.0005)\n\
                  print(failed)\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let pred = |v: &Value| v["type"] == "rca" && v["cause"] == "fd_limit";
    let open = agent.wait(Duration::from_secs(10), "the fd-limit incident", pred);
    let sentence = open["sentence"].as_str().unwrap();
    assert!(
        sentence.contains("failed with EMFILE — the process hit its file-descriptor limit"),
        "{sentence}"
    );
    assert_eq!(open["target"], "openat", "{open}");
    // The last interval's alert comes out before the close.
    std::thread::sleep(Duration::from_secs(1));
    let lines = agent.stop();
    let last = incidents(&lines, pred).pop().unwrap();
    let alerted: u64 = lines
        .iter()
        .filter(|v| {
            v["type"] == "syscall_alert" && v["errno_name"] == "EMFILE" && v["syscall"] == "openat"
        })
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    // On failure, every fd-limit incident record and alert: a split count shows which.
    let seen = || {
        let incidents: Vec<String> = incidents(&lines, pred)
            .iter()
            .map(|v| format!("{} {} {}", v["state"], v["source"], v["count"]))
            .collect();
        let alerts: Vec<String> = lines
            .iter()
            .filter(|v| v["type"] == "syscall_alert" && v["errno_name"] == "EMFILE")
            .map(|v| format!("{} {} {}", v["pid"], v["comm"], v["count"]))
            .collect();
        format!("incidents {incidents:?}; alerts {alerts:?}")
    };
    assert_eq!(
        last["count"],
        alerted,
        "the incident counts every alerted error: {}",
        seen()
    );
    assert!(
        alerted <= failed && alerted * 10 >= failed * 9,
        "{alerted} of {failed} errors alerted"
    );
    assert_eq!(
        incidents(&lines, pred)
            .iter()
            .filter(|v| v["state"] == "open")
            .count(),
        1
    );
}

/// Runs a storm of `n` refused connects under an agent exporting to a real OTLP receiver.
fn exported_storm(n: usize, extra: &[&str]) -> (Vec<Value>, SocketAddr) {
    let receiver = Receiver::start("http", &[]);
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let mut args = vec![
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-interval",
        "0.3",
    ];
    args.extend_from_slice(extra);
    let mut agent = Agent::start("otlp", RCA, &args);
    let target = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for _ in 0..n {
        assert!(TcpStream::connect(target).is_err());
    }
    agent.wait(Duration::from_secs(10), "the incident", |v| {
        v["type"] == "rca" && targets(target)(v)
    });
    agent.stop();
    let requests = receiver.requests();
    receiver.stop();
    (requests, target)
}

fn logs_to(requests: &[Value], event: &str, port: u16) -> Vec<Value> {
    otlp::logs(requests)
        .into_iter()
        .filter(|(_, l)| {
            l["eventName"] == event
                && attr(l, "network.peer.port").as_deref() == Some(port.to_string().as_str())
        })
        .map(|(_, l)| l)
        .collect()
}

#[test]
fn incidents_are_otlp_logs_and_per_failure_logs_are_an_option() {
    if !privileged("incidents_are_otlp_logs_and_per_failure_logs_are_an_option") {
        return;
    }
    let (requests, target) = exported_storm(50, &[]);
    let incidents = logs_to(&requests, "hostscope.rca.incident", target.port());
    assert!(!incidents.is_empty(), "no incident log");
    let last = incidents.last().unwrap();
    assert_eq!(attr(last, "error.type").as_deref(), Some("refused"));
    assert_eq!(attr(last, "hostscope.rca.count").as_deref(), Some("50"));
    assert_eq!(attr(last, "hostscope.rca.state").as_deref(), Some("closed"));
    assert_eq!(
        attr(last, "network.peer.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(
        last["body"].to_string().contains("nothing listens"),
        "{last}"
    );
    assert!(
        logs_to(&requests, "hostscope.tcp.connect_failed", target.port()).is_empty(),
        "per-failure logs are off by default"
    );
    // Metrics still count every failure.
    let failures: i64 = otlp::latest_points(&requests, "tcp.connect.failures")
        .iter()
        .map(otlp::int_value)
        .sum();
    assert!(failures >= 50, "{failures} failures counted");

    let (requests, target) = exported_storm(50, &["--otlp-failure-logs"]);
    assert_eq!(
        logs_to(&requests, "hostscope.tcp.connect_failed", target.port()).len(),
        50,
        "--otlp-failure-logs: one log record per failure"
    );
    assert!(!logs_to(&requests, "hostscope.rca.incident", target.port()).is_empty());
}
