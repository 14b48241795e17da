//! `cargo xtask bench --only prometheus`: what a scrape of the release agent's `/metrics`
//! costs the scraper (latency, median and p99, and response size), idle and during a
//! paced storm of ~10,000 refused loopback connects per second (one TCP record each).
//! The agent runs with `--prometheus-records`, so the record metrics are in the body.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

const SCRAPES: usize = 200;
const STORM_RATE: u64 = 10_000;

fn scrape(addr: SocketAddr) -> anyhow::Result<(Duration, usize, String)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let took = start.elapsed();
    if !answer.starts_with("HTTP/1.0 200") && !answer.starts_with("HTTP/1.1 200") {
        bail!("scrape failed: {}", answer.lines().next().unwrap_or(""));
    }
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((took, body.len(), body.to_string()))
}

fn decoded(body: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix("hostscope_records_total{result=\"decoded\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

struct Figures {
    median_ms: f64,
    p99_ms: f64,
    bytes: usize,
}

fn series(addr: SocketAddr) -> anyhow::Result<Figures> {
    let mut ms = Vec::with_capacity(SCRAPES);
    let mut bytes = 0;
    for _ in 0..SCRAPES {
        let (t, n, _) = scrape(addr)?;
        ms.push(t.as_secs_f64() * 1e3);
        bytes = n;
        std::thread::sleep(Duration::from_millis(20));
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let p99 = ms[(ms.len() * 99 / 100).min(ms.len() - 1)];
    Ok(Figures {
        median_ms: crate::bench::median(&mut ms),
        p99_ms: p99,
        bytes,
    })
}

pub fn bench_prometheus(bin: &Path) -> anyhow::Result<()> {
    println!("== prometheus scrape ==");
    crate::bench_machine::print();
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut child = Command::new(bin)
        .args([
            "run",
            "--output",
            "none",
            "--no-pin",
            "--stats-interval",
            "0",
        ])
        .args([
            "--prometheus-records",
            "--prometheus-listen",
            &addr.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting hostscope")?;
    let result = (|| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while scrape(addr).is_err() {
            if Instant::now() > deadline {
                bail!("no /metrics on {addr} after 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let idle = series(addr)?;

        // The storm: refused connects to a closed port, paced to STORM_RATE per second.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?
        };
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        let storm = {
            let (stop, made) = (stop.clone(), made.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let due = (start.elapsed().as_secs_f64() * STORM_RATE as f64) as u64;
                    while made.load(Ordering::Relaxed) < due {
                        let _ = TcpStream::connect(closed);
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        std::thread::sleep(Duration::from_secs(1));
        let (_, _, before) = scrape(addr)?;
        let (t0, m0) = (Instant::now(), made.load(Ordering::Relaxed));
        let busy = series(addr);
        let (_, _, after) = scrape(addr)?;
        let secs = t0.elapsed().as_secs_f64();
        let connects = (made.load(Ordering::Relaxed) - m0) as f64 / secs;
        stop.store(true, Ordering::Relaxed);
        let _ = storm.join();
        let busy = busy?;
        let records = (decoded(&after).saturating_sub(decoded(&before))) as f64 / secs;

        println!("{:<44} {:>10} {:>10} {:>12}", "", "median", "p99", "body");
        for (name, f) in [
            ("idle".to_string(), &idle),
            (
                format!("storm ({connects:.0} connects/s, {records:.0} records/s)"),
                &busy,
            ),
        ] {
            println!(
                "{name:<44} {:>7.2} ms {:>7.2} ms {:>8} bytes",
                f.median_ms, f.p99_ms, f.bytes
            );
        }
        println!("({SCRAPES} scrapes each, 20 ms apart, new connection per scrape)");
        Ok(())
    })();
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    result
}
