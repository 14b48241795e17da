//! `cargo xtask bench --only agent-cpu`: the agent's own CPU per record, start-up
//! excluded. The release agent runs at the defaults (every family, every default sink:
//! API with its history, RCA, Prometheus endpoint; `--output none`), on its own API
//! socket and Prometheus port, and, in a second pass, with an OTLP/HTTP exporter sending
//! to a sink in this process. Per storm (refused connects: one `connect_failed` record
//! each; loopback connect/accept/close: four records per connection) utime and stime are
//! read from /proc/<pid>/stat just before the storm and once the agent has decoded every
//! record and gone quiet; records are the agent's own `records_decoded` over the same
//! span. Printed: µs of user and system CPU per record and CPU ms per second of storm,
//! medians of the rounds, with the target (≤ 1 µs of user CPU per record).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::bench::{median, storm};

/// Target of issue 13: userspace CPU per record, per family.
const TARGET_US: f64 = 1.0;

/// (user, system) CPU of a process, in seconds.
fn cpu_s(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> { Ok(f.get(i).context("stat")?.parse()?) };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? / hz, ticks(12)? / hz))
}

/// A port nothing listens on (bound, then let go).
fn closed_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?)
}

/// An OTLP/HTTP backend that accepts every request (an empty protobuf answer is a
/// valid `Export*ServiceResponse`). Runs until the process ends.
fn otlp_sink() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve_otlp(conn));
        }
    });
    Ok(addr)
}

fn serve_otlp(mut conn: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        // One request: its head, then content-length bytes of body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + len);
        let reply =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if conn.write_all(reply).is_err() {
            return;
        }
    }
}

struct Agent {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Agent {
    fn start(bin: &Path, otlp: Option<SocketAddr>) -> anyhow::Result<Agent> {
        let dir = std::env::temp_dir().join(format!("hostscope-bench-cpu-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("api.sock");
        let prometheus = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--output", "none", "--no-pin"])
            .arg("--api-socket")
            .arg(&socket)
            .arg("--prometheus-listen")
            .arg(prometheus.to_string());
        if let Some(otlp) = otlp {
            cmd.args(["--otlp-endpoint", &format!("http://{otlp}")])
                .args(["--otlp-protocol", "http/protobuf"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting hostscope")?;
        let agent = Agent { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.decoded(bin).is_err() {
            if Instant::now() > deadline {
                bail!("the agent's API never answered");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(agent)
    }

    /// (records decoded, records lagged, events lost in the kernel) so far.
    fn decoded(&self, bin: &Path) -> anyhow::Result<(u64, u64, u64)> {
        let out = Command::new(bin)
            .args(["status", "--output", "json", "--socket"])
            .arg(&self.socket)
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let a = &v["agent"];
        let lost = a["kernel"]
            .as_object()
            .map(|f| {
                f.values()
                    .filter_map(|c| c["events_lost_ring_full"].as_u64())
                    .sum()
            })
            .unwrap_or(0);
        Ok((
            a["records_decoded"].as_u64().context("records_decoded")?,
            a["records_lagged"].as_u64().unwrap_or(0),
            lost,
        ))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        crate::bench::stop_children(vec![std::mem::replace(
            &mut self.child,
            // A placeholder that is never waited on: `true` exits at once.
            Command::new("true").spawn().expect("spawning true"),
        )]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy)]
enum Storm {
    Refused,
    ConnectClose,
}

impl Storm {
    fn name(self) -> &'static str {
        match self {
            Storm::Refused => "refused connects",
            Storm::ConnectClose => "connect/accept/close",
        }
    }

    /// Connections per storm: refused connects are five times cheaper, so five times as
    /// many (100,000 at the default 20,000), which keeps the CPU clock's 10 ms ticks small.
    fn connections(self, n: usize) -> usize {
        match self {
            Storm::Refused => n * 5,
            Storm::ConnectClose => n,
        }
    }

    /// Records the agent decodes per connection at least (tcp family).
    fn records_per_conn(self) -> u64 {
        match self {
            Storm::Refused => 1,
            Storm::ConnectClose => 4,
        }
    }

    fn run(self, n: usize) -> anyhow::Result<()> {
        match self {
            Storm::Refused => {
                let target = closed_port()?;
                for _ in 0..n {
                    if TcpStream::connect(target).is_ok() {
                        bail!("{target} accepted a connection");
                    }
                }
            }
            Storm::ConnectClose => {
                storm(n)?;
            }
        }
        Ok(())
    }
}

struct Figures {
    user_us: f64,
    sys_us: f64,
    cpu_ms_per_s: f64,
    /// Records per second of storm: per-record cost grows as the rate falls (a drain's
    /// fixed costs are shared by fewer records), so compare figures at similar rates.
    rate: f64,
    records: u64,
    lagged: u64,
    lost: u64,
}

/// One storm against a running agent: CPU and records from just before it until the agent
/// has decoded what it expects and its CPU time stopped moving.
fn measure(agent: &Agent, bin: &Path, storm: Storm, n: usize) -> anyhow::Result<Figures> {
    let (r0, lag0, lost0) = agent.decoded(bin)?;
    let (u0, s0) = cpu_s(agent.pid())?;
    let start = Instant::now();
    let n = storm.connections(n);
    storm.run(n)?;
    let want = r0 + n as u64 * storm.records_per_conn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.decoded(bin)?.0 < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every sink has the records once the agent's CPU time stops moving.
    let mut last = cpu_s(agent.pid())?;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = cpu_s(agent.pid())?;
        if now.0 + now.1 - last.0 - last.1 < 0.015 || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (u1, s1) = cpu_s(agent.pid())?;
    let (r1, lag1, lost1) = agent.decoded(bin)?;
    let records = (r1 - r0).max(1);
    Ok(Figures {
        user_us: (u1 - u0) * 1e6 / records as f64,
        sys_us: (s1 - s0) * 1e6 / records as f64,
        cpu_ms_per_s: (u1 - u0 + s1 - s0) * 1e3 / elapsed,
        rate: (r1 - r0) as f64 / elapsed,
        records: r1 - r0,
        lagged: lag1 - lag0,
        lost: lost1 - lost0,
    })
}

pub fn bench_agent_cpu(bin: &Path, rounds: usize, connections: usize) -> anyhow::Result<()> {
    println!("== agent CPU per record (start-up excluded) ==");
    crate::bench_machine::print();
    let n = connections.max(1_000);
    let rounds = rounds.clamp(1, 5);
    let sink = otlp_sink()?;
    for otlp in [None, Some(sink)] {
        let agent = Agent::start(bin, otlp)?;
        // Warm-up: the storm driver's identity, first allocations.
        Storm::Refused.run(1_000)?;
        std::thread::sleep(Duration::from_secs(1));
        let idle0 = cpu_s(agent.pid())?;
        std::thread::sleep(Duration::from_secs(2));
        let idle1 = cpu_s(agent.pid())?;
        let idle_ms = ((idle1.0 + idle1.1 - idle0.0 - idle0.1) * 1e3 / 2.0).max(0.0);
        println!(
            "defaults{}: {} refused / {n} connect-close connections per storm, {rounds} rounds, median; idle agent {idle_ms:.1} ms CPU/s",
            if otlp.is_some() {
                " + OTLP/HTTP exporter (to a sink in the bench)"
            } else {
                " (API history, RCA, Prometheus; no exporter)"
            },
            Storm::Refused.connections(n),
        );
        println!(
            "{:<22} {:>9} {:>10} {:>10} {:>10} {:>14} {:>8} {:>6}",
            "storm",
            "records",
            "records/s",
            "user µs/r",
            "sys µs/r",
            "CPU ms/s storm",
            "lagged",
            "lost"
        );
        for storm in [Storm::Refused, Storm::ConnectClose] {
            let mut all = Vec::new();
            for _ in 0..rounds {
                all.push(measure(&agent, bin, storm, n)?);
            }
            let med =
                |f: &dyn Fn(&Figures) -> f64| median(&mut all.iter().map(f).collect::<Vec<_>>());
            let user = med(&|f| f.user_us);
            println!(
                "{:<22} {:>9.0} {:>10.0} {:>10.2} {:>10.2} {:>14.0} {:>8} {:>6}   target user ≤ {TARGET_US:.1} µs/record: {}",
                storm.name(),
                med(&|f| f.records as f64),
                med(&|f| f.rate),
                user,
                med(&|f| f.sys_us),
                med(&|f| f.cpu_ms_per_s),
                all.iter().map(|f| f.lagged).sum::<u64>(),
                all.iter().map(|f| f.lost).sum::<u64>(),
                if user <= TARGET_US { "met" } else { "NOT met" }
            );
        }
    }
    Ok(())
}
