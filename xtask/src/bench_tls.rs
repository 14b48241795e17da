//! TLS section of `cargo xtask bench`: a bulk TLS transfer (throughput, and the wire
//! probe's cost per packet when it must bail out on application data) and a handshake
//! storm (`openssl s_time -new`), each with no tracer, with hostscope, and with the peer
//! (bpftrace's `ssllatency.bt`, uprobes on libssl; libbpf-tools ships no sslsniff in
//! this Debian and bcc's does not build here), in interleaved rounds.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::bench::{median, prog_stats, stop_children, usage};

const BULK_BYTES: u64 = 256 * 1024 * 1024;
const PEER_SCRIPT: &str = "/usr/sbin/ssllatency.bt";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    None,
    Hostscope,
    Peer,
}

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new() -> anyhow::Result<Fixture> {
        let dir = std::env::temp_dir().join("hostscope-bench-tls");
        std::fs::create_dir_all(&dir)?;
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=bench.test",
            ])
            .current_dir(&dir)
            .stderr(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("openssl could not make the benchmark certificate");
        }
        let data = dir.join("bulk.bin");
        if std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0) != BULK_BYTES {
            let f = std::fs::File::create(&data)?;
            f.set_len(BULK_BYTES)?;
        }
        Ok(Fixture { dir })
    }

    fn server(&self, port: u16, extra: &[&str]) -> anyhow::Result<Child> {
        let child = Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-accept",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["-cert", "cert.pem", "-key", "key.pem"])
            .args(extra)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("openssl s_server")?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(child)
    }

    /// Downloads the bulk file from `s_server -WWW` with curl (OpenSSL); returns the
    /// seconds it took.
    fn bulk(&self, port: u16) -> anyhow::Result<f64> {
        let mut server = self.server(port, &["-WWW"])?;
        let start = Instant::now();
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{size_download}"])
            .arg(format!("https://127.0.0.1:{port}/bulk.bin"))
            .output()?;
        let secs = start.elapsed().as_secs_f64();
        let _ = server.kill();
        let _ = server.wait();
        let got: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if got != BULK_BYTES {
            bail!("bulk transfer moved {got} of {BULK_BYTES} bytes");
        }
        Ok(secs)
    }

    /// Handshakes per second over `secs`, each on a new connection.
    fn handshakes(&self, port: u16, secs: u32) -> anyhow::Result<f64> {
        let mut server = self.server(port, &["-www"])?;
        let out = Command::new("openssl")
            .args(["s_time", "-new", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-time", &secs.to_string()])
            .output()?;
        let _ = server.kill();
        let _ = server.wait();
        let text = String::from_utf8_lossy(&out.stdout);
        // "796 connections in 2 real seconds, 0 bytes read per connection"
        let line = text
            .lines()
            .find(|l| l.contains("connections in") && l.contains("real seconds"))
            .context("s_time printed no result")?;
        let mut words = line.split_whitespace();
        let n: f64 = words
            .next()
            .and_then(|w| w.parse().ok())
            .context("s_time count")?;
        let t: f64 = line
            .split("in ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|w| w.parse().ok())
            .context("s_time seconds")?;
        Ok(n / t.max(1e-9))
    }
}

fn start(mode: Mode, bin: &Path) -> anyhow::Result<(Vec<Child>, Vec<u32>)> {
    let before: Vec<u32> = prog_stats().keys().copied().collect();
    let (child, expected) = match mode {
        Mode::None => return Ok((Vec::new(), Vec::new())),
        Mode::Hostscope => (
            Command::new(bin)
                .args([
                    "run",
                    "--output",
                    "none",
                    "--no-pin",
                    "--stats-interval",
                    "0",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
            crate::bench::HOSTSCOPE_PROGRAMS,
        ),
        Mode::Peer => (
            Command::new("bpftrace")
                .arg(PEER_SCRIPT)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
            2,
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let new: Vec<u32> = prog_stats()
            .keys()
            .copied()
            .filter(|id| !before.contains(id))
            .collect();
        if new.len() >= expected {
            std::thread::sleep(Duration::from_millis(500));
            // bpftrace attaches its uprobes after loading; take the final set.
            let ids = prog_stats()
                .keys()
                .copied()
                .filter(|id| !before.contains(id))
                .collect();
            return Ok((vec![child], ids));
        }
        if Instant::now() > deadline {
            stop_children(vec![child]);
            bail!("{mode:?}: its programs did not load");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn snapshot(ids: &[u32]) -> BTreeMap<String, (u64, u64)> {
    let stats = prog_stats();
    let mut out = BTreeMap::new();
    for id in ids {
        if let Some((name, ns, cnt)) = stats.get(id) {
            let e = out.entry(name.clone()).or_insert((0, 0));
            e.0 += ns;
            e.1 += cnt;
        }
    }
    out
}

fn diff(
    after: &BTreeMap<String, (u64, u64)>,
    before: &BTreeMap<String, (u64, u64)>,
) -> BTreeMap<String, (u64, u64)> {
    after
        .iter()
        .map(|(k, (ns, cnt))| {
            let (bns, bcnt) = before.get(k).copied().unwrap_or((0, 0));
            (k.clone(), (ns - bns.min(*ns), cnt - bcnt.min(*cnt)))
        })
        .collect()
}

pub fn bench_tls(rounds: usize, bin: &Path) -> anyhow::Result<()> {
    if !Path::new(PEER_SCRIPT).exists() {
        bail!("{PEER_SCRIPT} missing (bpftrace package)");
    }
    let fx = Fixture::new()?;
    println!(
        "== TLS: download of {} MiB over one TLS 1.3 connection (curl from `openssl s_server -WWW`), and `openssl s_time -new` handshakes; {rounds} interleaved rounds, median",
        BULK_BYTES >> 20
    );
    let mut bulk: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
    let mut rate: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
    let mut cost_bulk: BTreeMap<(Mode, String), (u64, u64)> = BTreeMap::new();
    let mut cost_hs: BTreeMap<(Mode, String), (u64, u64)> = BTreeMap::new();
    let mut rss = Vec::new();
    let mut port = 19_443u16;
    for round in 0..rounds {
        for mode in [Mode::None, Mode::Hostscope, Mode::Peer] {
            let (children, ids) = start(mode, bin)?;
            port += 1;
            let s0 = snapshot(&ids);
            let b = fx.bulk(port)?;
            let s1 = snapshot(&ids);
            port += 1;
            let r = fx.handshakes(port, 3)?;
            let s2 = snapshot(&ids);
            for (k, v) in diff(&s1, &s0) {
                let e = cost_bulk.entry((mode, k)).or_default();
                e.0 += v.0;
                e.1 += v.1;
            }
            for (k, v) in diff(&s2, &s1) {
                let e = cost_hs.entry((mode, k)).or_default();
                e.0 += v.0;
                e.1 += v.1;
            }
            if mode == Mode::Hostscope {
                if let Some(c) = children.first() {
                    rss.push(usage(c.id()).rss_peak_kb);
                }
            }
            stop_children(children);
            eprintln!("round {round} {mode:?}: bulk {b:.3} s, {r:.0} handshakes/s");
            bulk.entry(mode).or_default().push(b);
            rate.entry(mode).or_default().push(r);
        }
    }
    let label = |m: Mode| match m {
        Mode::None => "no tracer",
        Mode::Hostscope => "hostscope",
        Mode::Peer => "bpftrace ssllatency.bt",
    };
    let base_bulk = median(
        bulk.get_mut(&Mode::None)
            .map(|v| v.as_mut_slice())
            .unwrap_or(&mut []),
    );
    let base_rate = median(
        rate.get_mut(&Mode::None)
            .map(|v| v.as_mut_slice())
            .unwrap_or(&mut []),
    );
    println!(
        "{:<24} {:>12} {:>10} {:>16} {:>10}",
        "mode", "bulk MB/s", "ratio", "handshakes/s", "ratio"
    );
    for mode in [Mode::None, Mode::Hostscope, Mode::Peer] {
        let b = median(
            bulk.get_mut(&mode)
                .map(|v| v.as_mut_slice())
                .unwrap_or(&mut []),
        );
        let r = median(
            rate.get_mut(&mode)
                .map(|v| v.as_mut_slice())
                .unwrap_or(&mut []),
        );
        println!(
            "{:<24} {:>12.0} {:>9.2}x {:>16.0} {:>9.2}x",
            label(mode),
            BULK_BYTES as f64 / 1e6 / b,
            base_bulk / b,
            r,
            r / base_rate
        );
    }
    for (title, costs) in [("bulk transfer", &cost_bulk), ("handshake storm", &cost_hs)] {
        println!("per program during the {title} (bpf_stats, all rounds):");
        println!(
            "{:<12} {:<24} {:>12} {:>10}",
            "tracer", "program", "runs", "ns/run"
        );
        for ((mode, name), (ns, cnt)) in costs {
            if *cnt > 0 {
                println!(
                    "{:<12} {:<24} {:>12} {:>10.0}",
                    format!("{mode:?}"),
                    name,
                    cnt,
                    *ns as f64 / *cnt as f64
                );
            }
        }
    }
    if let Some(peak) = rss.iter().max() {
        println!("hostscope agent peak RSS {:.1} MB", *peak as f64 / 1024.0);
    }
    Ok(())
}
