//! `cargo xtask bench --only api`: what the local API costs and whether a slow client can
//! hurt the agent. The release agent runs with its API on a socket of its own; a storm of
//! refused loopback connects (one record each) runs with 0, 1 and 16 `hostscope events
//! --follow` clients attached, then with one client that never reads next to one that
//! does. Printed with the machine: records/s delivered per client, agent CPU per record
//! with and without clients, kernel event → client latency (median, p99), agent RSS with
//! 16 idle clients, and ring losses / lagged records / the stuck client's drops.

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::bench::{median, usage};

const STORM: usize = 50_000;

struct Agent {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Agent {
    /// `history: false`: the API on, without its history (`api.history_records: 0`).
    fn start(bin: &Path, history: bool) -> anyhow::Result<Agent> {
        let dir = std::env::temp_dir().join(format!("hostscope-bench-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("api.sock");
        let config = dir.join("config.yaml");
        let records = if history { 10_000 } else { 0 };
        std::fs::write(&config, format!("api:\n  history_records: {records}\n"))?;
        let child = Command::new(bin)
            .args([
                "run",
                "--no-pin",
                "--output",
                "none",
                "--stats-interval",
                "0",
            ])
            .arg("--config")
            .arg(&config)
            .arg("--api-socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting hostscope")?;
        let agent = Agent { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.status(bin).is_err() {
            if Instant::now() > deadline {
                bail!("the agent's API never answered");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(agent)
    }

    fn status(&self, bin: &Path) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(bin)
            .args(["status", "--output", "json", "--socket"])
            .arg(&self.socket)
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn wait_clients(&self, bin: &Path, n: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status(bin)?;
            if s["sinks"]["api"]["clients_now"].as_u64() == Some(n) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{n} clients never attached: {}", s["sinks"]["api"]);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `hostscope events --follow` client whose lines are timestamped on arrival.
struct Client {
    child: Child,
    arrivals: mpsc::Receiver<Instant>,
}

fn client(bin: &Path, socket: &Path, port: u16) -> anyhow::Result<Client> {
    let mut child = Command::new(bin)
        .args([
            "events", "--follow", "--output", "json", "--type", "tcp", "--port",
        ])
        .arg(port.to_string())
        .arg("--socket")
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, arrivals) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("connect_failed") && tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    Ok(Client { child, arrivals })
}

/// A client that never reads its stdout: once the pipe is full it stops reading the
/// stream too.
fn stuck_client(bin: &Path, socket: &Path, port: u16) -> anyhow::Result<Child> {
    Ok(Command::new(bin)
        .args(["events", "--follow", "--output", "json", "--port"])
        .arg(port.to_string())
        .arg("--socket")
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn closed_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?)
}

/// `n` refused connects as fast as one thread makes them; their duration.
fn storm(to: SocketAddr, n: usize) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        let _ = TcpStream::connect(to);
    }
    t.elapsed()
}

/// Losses the agent reports: kernel ring-full drops plus records lagged in userspace.
fn losses(s: &serde_json::Value) -> u64 {
    let ring: u64 = s["agent"]["kernel"]
        .as_object()
        .map(|f| {
            f.values()
                .map(|c| c["events_lost_ring_full"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    ring + s["agent"]["records_lagged"].as_u64().unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Round {
    secs: f64,
    agent_cpu_s: f64,
    delivered: Vec<usize>,
}

fn storm_with_clients(bin: &Path, agent: &Agent, clients: usize) -> anyhow::Result<Round> {
    let to = closed_port()?;
    let attached: Vec<Client> = (0..clients)
        .map(|_| client(bin, &agent.socket, to.port()))
        .collect::<anyhow::Result<_>>()?;
    agent.wait_clients(bin, clients as u64)?;
    let cpu0 = usage(agent.child.id()).cpu_s;
    let t0 = Instant::now();
    storm(to, STORM);
    // Every client gets every record, or the wait ends 10 s after the last arrival.
    let mut delivered = vec![0usize; clients];
    let mut last = None;
    for (i, c) in attached.iter().enumerate() {
        while delivered[i] < STORM {
            match c.arrivals.recv_timeout(Duration::from_secs(10)) {
                Ok(at) => {
                    delivered[i] += 1;
                    last = Some(last.map_or(at, |l: Instant| l.max(at)));
                }
                Err(_) => break,
            }
        }
    }
    // Let the agent finish its work for the storm before reading its CPU.
    std::thread::sleep(Duration::from_millis(300));
    let cpu = usage(agent.child.id()).cpu_s - cpu0;
    let secs = last
        .map_or(t0.elapsed(), |l| l.duration_since(t0))
        .as_secs_f64();
    drop(attached);
    agent.wait_clients(bin, 0)?;
    Ok(Round {
        secs,
        agent_cpu_s: cpu,
        delivered,
    })
}

pub fn bench_api(bin: &Path) -> anyhow::Result<()> {
    println!("== local API ==");
    crate::bench_machine::print();
    // Agent CPU for the storm with no client, without and with the history (which
    // renders every record's JSON line).
    for history in [false, true] {
        let agent = Agent::start(bin, history)?;
        let quiet = storm_with_clients(bin, &agent, 0)?;
        println!(
            "storm of {STORM} refused connects, no client, history {}: agent CPU {:.2} s \
             ({:.1} µs per record)",
            if history { "on (default)" } else { "off" },
            quiet.agent_cpu_s,
            quiet.agent_cpu_s / STORM as f64 * 1e6
        );
    }
    let agent = Agent::start(bin, true)?;
    for n in [1usize, 16] {
        let before = losses(&agent.status(bin)?);
        let r = storm_with_clients(bin, &agent, n)?;
        let after = losses(&agent.status(bin)?);
        let min = r.delivered.iter().min().copied().unwrap_or(0);
        let total: usize = r.delivered.iter().sum();
        println!(
            "{n:>2} client(s): each got {min}..{} of {STORM}; {:.0} records/s per client, \
             {:.0} records/s in total; agent CPU {:.2} s ({:.1} µs per record streamed); \
             losses during the storm {}",
            r.delivered.iter().max().copied().unwrap_or(0),
            min as f64 / r.secs,
            total as f64 / r.secs,
            r.agent_cpu_s,
            r.agent_cpu_s / total.max(1) as f64 * 1e6,
            after - before
        );
    }

    // Kernel event → client latency: sparse refused connects, one client.
    let to = closed_port()?;
    let c = client(bin, &agent.socket, to.port())?;
    agent.wait_clients(bin, 1)?;
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let _ = TcpStream::connect(to);
        if let Ok(at) = c.arrivals.recv_timeout(Duration::from_secs(2)) {
            lat.push(at.duration_since(t).as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(c);
    agent.wait_clients(bin, 0)?;
    lat.sort_by(f64::total_cmp);
    let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or(0.0);
    println!(
        "event -> client latency over {} connects: median {:.1} ms, p99 {:.1} ms (agent.poll_interval 50 ms)",
        lat.len(),
        median(&mut lat.clone()),
        p99
    );

    // RSS with 16 idle clients.
    let rss0 = rss_kb(agent.child.id());
    let idle_port = closed_port()?.port();
    let idle: Vec<Client> = (0..16)
        .map(|_| client(bin, &agent.socket, idle_port))
        .collect::<anyhow::Result<_>>()?;
    agent.wait_clients(bin, 16)?;
    std::thread::sleep(Duration::from_millis(500));
    let rss16 = rss_kb(agent.child.id());
    println!(
        "agent RSS: {:.1} MB, {:.1} MB with 16 idle clients",
        rss0 as f64 / 1024.0,
        rss16 as f64 / 1024.0
    );
    drop(idle);
    agent.wait_clients(bin, 0)?;

    // One client that never reads next to one that does.
    let to = closed_port()?;
    let mut stuck = stuck_client(bin, &agent.socket, to.port())?;
    let reader = client(bin, &agent.socket, to.port())?;
    agent.wait_clients(bin, 2)?;
    let before = agent.status(bin)?;
    let t = Instant::now();
    let storm_time = storm(to, STORM);
    let mut got = 0;
    while got < STORM {
        match reader.arrivals.recv_timeout(Duration::from_secs(10)) {
            Ok(_) => got += 1,
            Err(_) => break,
        }
    }
    let took = t.elapsed();
    let after = agent.status(bin)?;
    let api = &after["sinks"]["api"];
    let dropped: u64 = api["clients"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["dropped"].as_u64()).sum())
        .unwrap_or(0);
    println!(
        "stuck client + reader, {STORM} records at {:.0}/s: reader got {got}, stuck client \
         dropped {dropped} (counted), ring losses + lagged during the storm {} (in {:.1} s)",
        STORM as f64 / storm_time.as_secs_f64(),
        losses(&after) - losses(&before),
        took.as_secs_f64()
    );
    let _ = stuck.kill();
    let _ = stuck.wait();
    drop(reader);
    Ok(())
}
