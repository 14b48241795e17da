//! Nothing lost at 100k: a burst of 100,000 loopback connections made as fast as one
//! client can, with the agent binary at its defaults (every family, the local API, RCA and
//! the Prometheus endpoint on) plus an OTLP exporter to a real receiver. The kernel lost
//! no event, the agent decoded every one it was handed, no sink lagged and the exporter
//! dropped nothing; the counters are read from `hostscope status`. The agent is the
//! release build: what is measured is whether the build users run keeps up.

use std::{
    io::Read,
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hostscope_tests::{hostscope_bin, hostscope_release_bin, otlp::Receiver, privileged};
use serde_json::Value;

const CONNECTIONS: usize = 100_000;

fn status(socket: &Path) -> Option<Value> {
    let out = Command::new(hostscope_bin())
        .args(["status", "--output", "json", "--socket"])
        .arg(socket)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The burst: the server closes first, so no client port is held in TIME_WAIT and
/// 100,000 connections fit in the ephemeral range.
fn burst(n: usize) -> Duration {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..n {
            let (s, _) = listener.accept().unwrap();
            drop(s);
        }
    });
    let started = Instant::now();
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).unwrap();
        let mut buf = [0u8; 1];
        // EOF: the server closed first.
        let _ = c.read(&mut buf);
    }
    server.join().unwrap();
    started.elapsed()
}

fn counter(s: &Value, family: &str, name: &str) -> u64 {
    s["agent"]["kernel"][family][name].as_u64().unwrap_or(0)
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_burst_of_100k_connections_loses_nothing() {
    if !privileged("a_burst_of_100k_connections_loses_nothing") {
        return;
    }
    let receiver = Receiver::start("grpc", &[]);
    let dir = std::env::temp_dir().join(format!("hostscope-burst-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("api.sock");
    let prometheus = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let mut agent = Agent(
        Command::new(hostscope_release_bin())
            .args(["run", "--output", "none", "--no-pin", "--api-socket"])
            .arg(&socket)
            .args(["--prometheus-listen", &prometheus.to_string()])
            .args([
                "--otlp-endpoint",
                &format!("http://127.0.0.1:{}", receiver.port),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("hostscope run"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        if let Some(s) = status(&socket) {
            break s;
        }
        assert!(Instant::now() < deadline, "no status on {socket:?} in 60 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = burst(CONNECTIONS);
    eprintln!(
        "{CONNECTIONS} connections in {:.1} s ({:.0}/s)",
        took.as_secs_f64(),
        CONNECTIONS as f64 / took.as_secs_f64()
    );
    // Settled: nothing more decoded for 2 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = status(&socket).expect("status after the burst");
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = status(&socket).expect("status after the burst");
        if now["agent"]["records_decoded"] == last["agent"]["records_decoded"] {
            last = now;
            break;
        }
        last = now;
        assert!(
            Instant::now() < deadline,
            "records still flowing after 60 s"
        );
    }
    let s = &last;
    let emitted = counter(s, "tcp", "events_emitted") - counter(&before, "tcp", "events_emitted");
    assert!(
        emitted >= CONNECTIONS as u64,
        "at least one TCP event per connection: {emitted}"
    );
    for family in ["tcp", "tls", "syscalls"] {
        for name in ["events_lost_ring_full", "conn_map_full", "agg_map_full"] {
            assert_eq!(
                counter(s, family, name),
                0,
                "{family}.{name}: {}",
                s["agent"]["kernel"]
            );
        }
    }
    let agent_stats = &s["agent"];
    assert_eq!(agent_stats["decode_errors"], 0, "{agent_stats}");
    assert_eq!(
        agent_stats["records_lagged"], 0,
        "a sink lagged: {}",
        s["sinks"]
    );
    // Every event the rings were handed was decoded.
    let handed: u64 = ["tcp", "tls", "syscalls"]
        .iter()
        .map(|f| counter(s, f, "events_emitted"))
        .sum();
    assert_eq!(
        agent_stats["records_decoded"].as_u64(),
        Some(handed),
        "decoded vs emitted: {agent_stats}"
    );
    let dropped: Vec<&Value> = s["export"]["items"]
        .as_array()
        .expect("export items")
        .iter()
        // `excluded` (the agent's own connects, left out by design) is not a loss.
        .filter(|i| ["dropped", "failed", "rejected"].contains(&i["result"].as_str().unwrap_or("")))
        .collect();
    assert!(dropped.is_empty(), "the exporter lost items: {dropped:?}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let exit = agent.0.wait().unwrap();
    assert!(exit.success(), "agent exited with {exit}");
    let _ = std::fs::remove_dir_all(&dir);
}
