//! `cargo xtask bench --only lifecycle`: how long the release agent takes to start and
//! to stop, and what it holds in memory.
//!
//! - Start: `run` → the probe report out (every program attached or reported why not).
//! - Stop: SIGTERM → exit, with no exporter, with a live OTLP/HTTP receiver, and with an
//!   unreachable one (bounded by `export.flush_timeout`). Target: ≤ 1 s without an
//!   exporter.
//! - Memory: peak RSS (VmHWM) including start-up, target ≤ 40 MB; RSS once 10,000
//!   short-lived processes have each made a refused connect, target ≤ 30 MB. The
//!   identities of those processes are evicted once they exited (the cache holds the
//!   live ones), so the steady figure is after the storm, not with 10,000 cached.

use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::bench::median;

/// A minimal OTLP/HTTP receiver: every POST is answered 200 with an empty (valid)
/// Export*ServiceResponse.
const RECEIVER_PY: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Agent {
    child: Child,
    /// Seconds from spawn to the last line of the probe report.
    started_s: f64,
}

/// Starts the agent and returns once its probe report is complete: probe_status lines,
/// then 300 ms without another.
fn start(bin: &Path, extra: &[String]) -> anyhow::Result<Agent> {
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .args(["run", "--output", "json", "--no-pin", "--no-api"])
        .args(["--no-prometheus", "--stats-interval", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting hostscope")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let mut last = None;
    loop {
        let wait = if last.is_some() {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(30)
        };
        match rx.recv_timeout(wait) {
            Ok((at, line)) if line.contains("\"type\":\"probe_status\"") => last = Some(at),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let Some(at) = last else {
        let _ = child.kill();
        bail!("no probe report within 30 s");
    };
    // Keep draining stdout so the agent never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Ok(Agent {
        child,
        started_s: (at - t0).as_secs_f64(),
    })
}

/// SIGTERM → exit, in seconds.
fn stop(mut agent: Agent) -> anyhow::Result<f64> {
    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    let status = agent.child.wait()?;
    if !status.success() {
        bail!("the agent exited with {status}");
    }
    Ok(t.elapsed().as_secs_f64())
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident memory by kind of mapping, in MB, from /proc/<pid>/smaps.
#[derive(Default)]
struct Resident {
    /// Anonymous: heap, stacks.
    anon: f64,
    /// BPF maps mmapped from the kernel (the rings: kernel memory, whose data pages
    /// are mapped twice, so the kernel holds about half of this).
    bpf_maps: f64,
    /// The agent's executable: clean file-backed pages shared with the page cache.
    binary: f64,
    /// Other files (shared libraries).
    other_files: f64,
}

fn resident(pid: u32) -> Resident {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let mut r = Resident::default();
    let mut name = String::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [path].
            name = fields.nth(4).unwrap_or_default().to_string();
        } else if first == "Rss:" {
            let mb = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0.0) / 1024.0;
            let kind = if name.is_empty() || name.starts_with('[') {
                &mut r.anon
            } else if name == "anon_inode:bpf-map" {
                &mut r.bpf_maps
            } else if Path::new(&name) == exe {
                &mut r.binary
            } else {
                &mut r.other_files
            };
            *kind += mb;
        }
    }
    r
}

/// 10,000 processes, 50 at a time, each connecting once to a closed port and exiting.
fn many_processes(n: usize) -> anyhow::Result<()> {
    let port = free_port()?;
    let script = format!(
        "import os, socket\n\
         live = 0\n\
         for i in range({n}):\n\
         \x20   if live >= 50:\n\
         \x20       os.wait(); live -= 1\n\
         \x20   if os.fork() == 0:\n\
         \x20       s = socket.socket()\n\
         \x20       try: s.connect(('127.0.0.1', {port}))\n\
         \x20       except OSError: pass\n\
         \x20       os._exit(0)\n\
         \x20   live += 1\n\
         while live: os.wait(); live -= 1\n"
    );
    let status = Command::new("python3").args(["-c", &script]).status()?;
    if !status.success() {
        bail!("the process storm failed: {status}");
    }
    Ok(())
}

pub fn bench_lifecycle(bin: &Path, rounds: usize) -> anyhow::Result<()> {
    println!(
        "== start, stop and memory of the release agent (every family), {rounds} rounds, median"
    );
    crate::bench_machine::print();
    let live_port = free_port()?;
    let mut receiver = Command::new("python3")
        .args(["-c", RECEIVER_PY, &live_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the OTLP/HTTP receiver")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", live_port)).is_err() {
        if Instant::now() > deadline {
            let _ = receiver.kill();
            bail!("the OTLP/HTTP receiver did not listen");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let closed = free_port()?;
    let exporters: [(&str, Vec<String>); 3] = [
        ("no exporter", vec![]),
        (
            "live OTLP/HTTP receiver",
            vec![
                "--otlp-endpoint".into(),
                format!("http://127.0.0.1:{live_port}"),
            ],
        ),
        (
            "unreachable OTLP endpoint",
            vec![
                "--otlp-endpoint".into(),
                format!("http://127.0.0.1:{closed}"),
            ],
        ),
    ];
    let result = (|| {
        println!("{:<28} {:>10} {:>10}", "exporter", "start", "stop");
        for (name, extra) in &exporters {
            let (mut starts, mut stops) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let agent = start(bin, extra)?;
                starts.push(agent.started_s);
                // Records flow meanwhile; the stop has something to flush.
                std::thread::sleep(Duration::from_secs(1));
                stops.push(stop(agent)?);
            }
            println!(
                "{name:<28} {:>8.3} s {:>8.3} s",
                median(&mut starts),
                median(&mut stops)
            );
        }
        println!("stop target: ≤ 1 s without an exporter; with one, bounded by export.flush_timeout (5 s)");

        let agent = start(bin, &[])?;
        let pid = agent.child.id();
        let peak_start = status_kb(pid, "VmHWM:");
        let t = Instant::now();
        many_processes(10_000)?;
        let storm_s = t.elapsed().as_secs_f64();
        // Steady: past two heap trims (every 10 s) after the storm.
        std::thread::sleep(Duration::from_secs(21));
        let mb = |key| status_kb(pid, key) as f64 / 1024.0;
        let (rss, peak) = (mb("VmRSS:"), mb("VmHWM:"));
        let r = resident(pid);
        stop(agent)?;
        println!(
            "memory: peak RSS at start-up {:.1} MB (target ≤ 40); through 10,000 processes with a refused connect each ({storm_s:.1} s): peak RSS {peak:.1} MB; 21 s after: RSS {rss:.1} MB (target ≤ 30)",
            peak_start as f64 / 1024.0,
        );
        println!(
            "  of which heap and stacks {:.1} MB, BPF rings {:.1} MB (kernel memory mapped in, data pages twice), the binary {:.1} MB (clean file pages, shared with the page cache), other files {:.1} MB; RSS without the binary's pages {:.1} MB",
            r.anon,
            r.bpf_maps,
            r.binary,
            r.other_files,
            rss - r.binary,
        );
        Ok(())
    })();
    let _ = receiver.kill();
    let _ = receiver.wait();
    result
}
