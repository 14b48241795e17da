//! `cargo xtask bench --only config`: how fast a changed configuration file is in effect,
//! and whether records keep flowing while it is applied. The release agent runs with
//! `--config`; the file is replaced atomically 20 times (a watched path added each time)
//! while a steady stream of loopback connects (one per 2 ms) goes on. Printed: file
//! change → `config_reload` line (median, max), the agent's own apply time, and the longest
//! gap between consecutive connect records inside reload windows next to the longest
//! outside them (a pause in ring draining would show as the first growing).

use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::bench::median;

const RELOADS: usize = 20;

pub fn bench_config(bin: &Path) -> anyhow::Result<()> {
    println!("== config reload ==");
    let dir = std::env::temp_dir().join(format!("hostscope-bench-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("config.yaml");
    let write = |n: usize| -> anyhow::Result<()> {
        let mut t = String::from("syscalls:\n  watch_paths:\n");
        for i in 0..=n {
            t.push_str(&format!("    - /tmp/hostscope-bench-secret-{i}\n"));
        }
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, t)?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    };
    write(0)?;
    let mut child = Command::new(bin)
        .args(["run", "--output", "json", "--no-pin", "--poll-ms", "10"])
        .args(["--stats-interval", "0", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting hostscope")?;
    let stdout = child.stdout.take().context("stdout")?;
    // (arrival, line type, reload duration µs)
    let (tx, rx) = mpsc::channel::<(Instant, String, u64)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let kind = match (v["type"].as_str(), v["event"].as_str()) {
                (Some("tcp"), Some("connect")) => "connect".to_string(),
                (Some(t), _) => t.to_string(),
                _ => String::new(),
            };
            let us = v["duration_us"].as_u64().unwrap_or(0);
            if tx.send((Instant::now(), kind, us)).is_err() {
                break;
            }
        }
    });
    // Wait until probes are attached: the first connect record.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let acceptor = std::thread::spawn(move || {
        listener.set_nonblocking(true).ok();
        while !s.load(Ordering::Relaxed) {
            let _ = listener.accept();
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let s = stop.clone();
    let connector = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let _ = TcpStream::connect(addr);
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, kind, _) = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .context("no connect record from the agent")?;
        if kind == "connect" {
            break;
        }
    }
    let mut latencies = Vec::new();
    let mut applies = Vec::new();
    let mut windows = Vec::new();
    let mut arrivals = Vec::new();
    for n in 1..=RELOADS {
        std::thread::sleep(Duration::from_millis(300));
        let written = Instant::now();
        write(n)?;
        loop {
            let (at, kind, us) = rx
                .recv_timeout(Duration::from_secs(10))
                .context("no config_reload line within 10 s")?;
            if kind == "connect" {
                arrivals.push(at);
            }
            if kind == "config_reload" {
                latencies.push(at.duration_since(written).as_secs_f64() * 1e3);
                applies.push(us as f64 / 1e3);
                windows.push((written, at + Duration::from_millis(50)));
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let _ = connector.join();
    let _ = acceptor.join();
    arrivals.extend(
        rx.try_iter()
            .filter(|(_, k, _)| k == "connect")
            .map(|(at, _, _)| at),
    );
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    if latencies.len() != RELOADS {
        bail!("only {} of {RELOADS} reloads seen", latencies.len());
    }
    let (mut inside, mut outside) = (0f64, 0f64);
    for w in arrivals.windows(2) {
        let gap = w[1].duration_since(w[0]).as_secs_f64() * 1e3;
        let in_reload = windows.iter().any(|(a, b)| w[1] >= *a && w[0] <= *b);
        if in_reload {
            inside = inside.max(gap);
        } else {
            outside = outside.max(gap);
        }
    }
    let max = |v: &[f64]| v.iter().cloned().fold(0f64, f64::max);
    println!(
        "file change -> reload applied: median {:.1} ms, max {:.1} ms over {RELOADS} reloads \
         (includes the watcher's 100 ms settle time)",
        median(&mut latencies.clone()),
        max(&latencies)
    );
    println!(
        "agent time to validate and apply: median {:.2} ms, max {:.2} ms",
        median(&mut applies.clone()),
        max(&applies)
    );
    println!(
        "longest gap between connect records (one connect per 2 ms): {inside:.1} ms during \
         reloads, {outside:.1} ms outside ({} records)",
        arrivals.len()
    );
    Ok(())
}
