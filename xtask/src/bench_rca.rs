//! `cargo xtask bench --only rca`: what folding failures into incidents costs and saves.
//!
//! 1. In-process (tests/examples/rca_bench.rs): a 10,000-failure refused-connect storm
//!    replayed through the RCA sink's folder: CPU per failure, records out vs failures in.
//! 2. The release agent on a real storm of 10,000 refused connects to one closed port:
//!    `rca` records out vs `connect_failed` records in, the final incident count, and the
//!    agent's CPU per failure with `rca.enabled` true and false (interleaved rounds,
//!    medians): the difference is what RCA adds per failure, all of it included.

use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    bench::median,
    cmd::{cargo, run},
};

const STORM: usize = 10_000;

/// utime + stime of a process, in ns.
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit(')').next().context("stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

struct Round {
    agent_cpu_ns: u64,
    failed_records: usize,
    rca_records: usize,
    final_count: u64,
}

fn storm_round(bin: &Path, rca: bool) -> anyhow::Result<Round> {
    let dir = std::env::temp_dir().join(format!("hostscope-bench-rca-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        format!("rca:\n  enabled: {rca}\n  window: 30s\n  update_interval: 1s\n"),
    )?;
    let mut child = Command::new(bin)
        .args([
            "run",
            "--output",
            "json",
            "--no-pin",
            "--stats-interval",
            "1",
        ])
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting hostscope")?;
    let pid = child.id();
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).unwrap_or_default();
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    // Ready at the first stats line.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))?;
        if v["type"] == "agent_stats" {
            break;
        }
    }
    let target = {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let before = cpu_ns(pid)?;
    for _ in 0..STORM {
        let _ = TcpStream::connect(target);
    }
    // Until the last failure is read and folded (the agent prints it).
    let want = target.to_string();
    let mut lines = Vec::new();
    let mut failed = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while failed < STORM && Instant::now() < deadline {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(200)) {
            if v["type"] == "tcp" && v["remote"] == want.as_str() {
                failed += 1;
            }
            lines.push(v);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let agent_cpu_ns = cpu_ns(pid)? - before;
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    child.wait()?;
    lines.extend(rx.iter());
    let _ = reader.join();
    let rca: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["type"] == "rca" && v["target_address"] == want.as_str())
        .collect();
    Ok(Round {
        agent_cpu_ns,
        failed_records: lines
            .iter()
            .filter(|v| {
                v["type"] == "tcp" && v["event"] == "connect_failed" && v["remote"] == want.as_str()
            })
            .count(),
        rca_records: rca.len(),
        final_count: rca.last().and_then(|v| v["count"].as_u64()).unwrap_or(0),
    })
}

pub fn bench_rca(bin: &Path, rounds: usize) -> anyhow::Result<()> {
    println!("== rca ==");
    crate::bench_machine::print();
    run(cargo().args([
        "run",
        "--release",
        "-q",
        "-p",
        "hostscope-tests",
        "--example",
        "rca_bench",
        "--",
        &rounds.max(5).to_string(),
    ]))?;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..rounds.clamp(1, 5) {
        let r = storm_round(bin, true)?;
        on.push(r.agent_cpu_ns as f64 / STORM as f64);
        let o = storm_round(bin, false)?;
        off.push(o.agent_cpu_ns as f64 / STORM as f64);
        last = Some(r);
    }
    let r = last.context("no round")?;
    let (on, off) = (median(&mut on), median(&mut off));
    println!(
        "rca live: {STORM} refused connects -> {} connect_failed records in, {} rca records out (reduction {:.0}:1), final incident count {}",
        r.failed_records,
        r.rca_records,
        r.failed_records as f64 / r.rca_records.max(1) as f64,
        r.final_count
    );
    println!(
        "rca live: agent CPU per failure {on:.0} ns with rca, {off:.0} ns without ({:+.0} ns, {:.2}x); per 1,000 failures folded {:.2} ms",
        on - off,
        on / off.max(1.0),
        (on - off).max(0.0) * 1_000.0 / 1e6
    );
    Ok(())
}
