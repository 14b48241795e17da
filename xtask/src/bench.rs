//! `cargo xtask bench`: what hostscope costs, printed next to a peer measured in the same
//! run. Figures are printed, never asserted. Each tracer's storm is paired with a
//! no-tracer storm next to it and the slowdown taken pair by pair (median and range over
//! the rounds), with a verdict counting the rounds in which hostscope was the cheaper.
//!
//! TCP: a loopback connect/accept/close storm and a refused-connect storm, with
//! hostscope, with the peer (libbpf-tools `tcplife`, plus `tcpconnlat` when it can
//! attach, else a bpftrace connect-latency script on `sock:inet_sock_set_state`) and with
//! `tcplife` alone. Kernel cost per program comes from `kernel.bpf_stats_enabled`.
//!
//! Syscalls: a storm of `getppid` calls with hostscope, with libbpf-tools `syscount -L`
//! (counts and latency, like hostscope), and with the floor: empty programs on the same
//! hook pair.
//!
//! DNS: a lookup storm and a non-DNS UDP flood with hostscope and with a bpftrace peer
//! (xtask/src/bench_dns.rs).
//!
//! Metadata: identity lookup cost on a cache hit, memory per 1,000 pods / 10,000
//! processes, new cgroup → first labelled record (`tests/examples/metadata_bench.rs`).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::cmd::{cargo, output, run, workspace_root};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Connections per storm.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Interleaved rounds per mode (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Lookups per DNS storm.
    #[arg(long, default_value_t = 20_000)]
    lookups: usize,
    /// `getppid` calls per syscall storm.
    #[arg(long, default_value_t = 10_000_000)]
    calls: u64,
    /// Run only this section (default: all).
    #[arg(long, value_enum)]
    only: Option<Section>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Tcp,
    Tls,
    Dns,
    Syscalls,
    Metadata,
    Otlp,
    Config,
    Prometheus,
    Api,
    Rca,
    Lifecycle,
    /// Agent CPU per record at the defaults, start-up excluded.
    AgentCpu,
}

/// Programs `hostscope run` loads on this kernel: 5 TCP, 6 TLS (2 wire, 4 OpenSSL),
/// 2 DNS (wire egress + ingress), syscall enter + exit, 5 security enters + 1 security
/// exit.
pub(crate) const HOSTSCOPE_PROGRAMS: usize = 21;

const CONNLAT_BT: &str = r#"
tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->newstate == 2/ {
  @start[args->skaddr] = nsecs;
}
tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->oldstate == 2/ {
  $s = @start[args->skaddr];
  if ($s) { printf("%d %s %d us\n", pid, comm, (nsecs - $s) / 1000); }
  delete(@start[args->skaddr]);
}
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    /// Empty programs on the syscall hook pair (bench_floor).
    Floor,
    Hostscope,
    Peer,
}

struct Tracer {
    children: Vec<Child>,
    floor: Option<crate::bench_floor::Floor>,
    programs: Vec<u32>,
    stderr_file: Option<PathBuf>,
}

/// Per-program totals from `bpftool prog show -j`.
pub(crate) fn prog_stats() -> BTreeMap<u32, (String, u64, u64)> {
    let Some(text) = output(Command::new("bpftool").args(["prog", "show", "-j"])) else {
        return BTreeMap::new();
    };
    let Ok(serde_json::Value::Array(progs)) = serde_json::from_str(&text) else {
        return BTreeMap::new();
    };
    progs
        .iter()
        .filter_map(|p| {
            let id = p.get("id")?.as_u64()? as u32;
            let name = p.get("name").and_then(|n| n.as_str()).unwrap_or("?");
            let ns = p.get("run_time_ns").and_then(|v| v.as_u64()).unwrap_or(0);
            let cnt = p.get("run_cnt").and_then(|v| v.as_u64()).unwrap_or(0);
            Some((id, (name.to_string(), ns, cnt)))
        })
        .collect()
}

pub(crate) fn sysctl(key: &str, value: &str) -> Option<String> {
    let old = output(Command::new("sysctl").args(["-n", key]))?;
    output(Command::new("sysctl").args(["-q", "-w", &format!("{key}={value}")]))?;
    Some(old.trim().to_string())
}

/// The connect/close storm: the server closes first so the client's ports are not held
/// in TIME_WAIT across rounds.
pub(crate) fn storm(n: usize) -> anyhow::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..n {
            let (s, _) = listener.accept()?;
            drop(s);
        }
        Ok(())
    });
    let start = Instant::now();
    let mut buf = [0u8; 1];
    for _ in 0..n {
        let mut c = TcpStream::connect(addr)?;
        let _ = c.read(&mut buf);
    }
    let elapsed = start.elapsed();
    server
        .join()
        .map_err(|_| anyhow::anyhow!("storm server panicked"))??;
    Ok(elapsed)
}

fn start_tracer(mode: Mode, bin: &Path, peer: &PeerPlan) -> anyhow::Result<Tracer> {
    let before: Vec<u32> = prog_stats().keys().copied().collect();
    let mut children = Vec::new();
    let mut stderr_file = None;
    let mut floor = None;
    match mode {
        Mode::Floor => floor = Some(crate::bench_floor::Floor::attach()?),
        Mode::Hostscope => {
            let path = std::env::temp_dir().join("hostscope-bench.stderr");
            let f = std::fs::File::create(&path)?;
            children.push(
                Command::new(bin)
                    .args([
                        "run",
                        "--output",
                        "text",
                        "--no-pin",
                        "--stats-interval",
                        "0",
                    ])
                    .stdout(Stdio::null())
                    .stderr(f)
                    .spawn()
                    .context("starting hostscope")?,
            );
            stderr_file = Some(path);
        }
        Mode::Peer => {
            for argv in &peer.commands {
                children.push(
                    Command::new(&argv[0])
                        .args(&argv[1..])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .with_context(|| format!("starting {}", argv[0]))?,
                );
            }
        }
    }
    // Wait until every tracer has its programs loaded (or give up after 20 s).
    let expected = match mode {
        Mode::Floor => crate::bench_floor::PROGRAMS.len(),
        Mode::Hostscope => HOSTSCOPE_PROGRAMS,
        Mode::Peer => peer.min_programs,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let programs = loop {
        let now: Vec<u32> = prog_stats()
            .keys()
            .copied()
            .filter(|id| !before.contains(id))
            .collect();
        if now.len() >= expected || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if programs.len() < expected {
        bail!(
            "{mode:?}: only {} of {expected} programs loaded",
            programs.len()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok(Tracer {
        children,
        floor,
        programs,
        stderr_file,
    })
}

#[derive(Default)]
pub(crate) struct Usage {
    pub(crate) rss_peak_kb: u64,
    pub(crate) cpu_s: f64,
}

pub(crate) fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_peak_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command: utime and stime are 14th and 15th overall.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Usage {
        rss_peak_kb,
        cpu_s: (ticks(11) + ticks(12)) as f64 / hz,
    }
}

pub(crate) fn stop_children(children: Vec<Child>) {
    for mut c in children {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if c.try_wait().ok().flatten().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Each program's (name, run ns, runs) over the interval between two snapshots.
fn program_deltas<'a>(
    programs: &'a [u32],
    before: &'a BTreeMap<u32, (String, u64, u64)>,
    after: &'a BTreeMap<u32, (String, u64, u64)>,
) -> impl Iterator<Item = (&'a str, u64, u64)> + 'a {
    programs.iter().filter_map(|id| {
        let ((name, ns1, c1), (_, ns0, c0)) = (after.get(id)?, before.get(id)?);
        Some((
            name.as_str(),
            ns1.saturating_sub(*ns0),
            c1.saturating_sub(*c0),
        ))
    })
}

/// Stops the tracer; hostscope's last `agent:` stats line, when it printed one.
fn stop_for_stats(tracer: Tracer) -> Option<String> {
    let text = stop(tracer)?;
    text.lines()
        .rev()
        .find(|l| l.starts_with("agent:"))
        .map(str::to_string)
}

fn stop(tracer: Tracer) -> Option<String> {
    drop(tracer.floor);
    stop_children(tracer.children);
    tracer
        .stderr_file
        .and_then(|p| std::fs::read_to_string(p).ok())
}

/// What the peer runs on this kernel.
struct PeerPlan {
    name: String,
    commands: Vec<Vec<String>>,
    min_programs: usize,
}

/// `tcpconnlat` needs kprobes; where it cannot attach, a bpftrace script on the
/// tracepoint measures the same thing.
fn plan_peer() -> anyhow::Result<PeerPlan> {
    if !Path::new("/usr/sbin/tcplife").exists() {
        bail!("libbpf-tools is not installed (cargo xtask setup installs it)");
    }
    let mut probe = Command::new("/usr/sbin/tcpconnlat")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let connlat_ok = match probe.as_mut() {
        Ok(child) => {
            std::thread::sleep(Duration::from_secs(2));
            let alive = child.try_wait().ok().flatten().is_none();
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            if !alive {
                let why = err.lines().last().unwrap_or("exited").to_string();
                println!("peer note: tcpconnlat cannot attach on this kernel ({why}); using a bpftrace connect-latency script instead");
            }
            alive
        }
        Err(_) => false,
    };
    let mut commands = vec![vec!["/usr/sbin/tcplife".to_string()]];
    let (name, min_programs) = if connlat_ok {
        commands.push(vec!["/usr/sbin/tcpconnlat".to_string()]);
        ("tcplife + tcpconnlat".to_string(), 2)
    } else {
        let script = std::env::temp_dir().join("hostscope-connlat.bt");
        std::fs::File::create(&script)?.write_all(CONNLAT_BT.as_bytes())?;
        commands.push(vec![
            "bpftrace".to_string(),
            script.to_string_lossy().into_owned(),
        ]);
        ("tcplife + bpftrace connlat".to_string(), 2)
    };
    Ok(PeerPlan {
        name,
        commands,
        min_programs,
    })
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    // HOSTSCOPE_BENCH_BIN: measure that binary as it is (e.g. a saved build, to compare
    // two versions in one sitting) instead of building this tree's.
    let bin = match std::env::var_os("HOSTSCOPE_BENCH_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            run(cargo().args(["build", "--release", "-p", "hostscope"]))?;
            workspace_root().join("target/release/hostscope")
        }
    };
    let old_stats =
        sysctl("kernel.bpf_stats_enabled", "1").context("enabling kernel.bpf_stats_enabled")?;
    let run_section = |section: Section| args.only.is_none_or(|o| o == section);
    let result = (|| {
        if run_section(Section::Tcp) {
            let peer = plan_peer()?;
            bench_tcp(&args, &bin, &peer)?;
        }
        if run_section(Section::Tls) {
            crate::bench_tls::bench_tls(args.rounds.min(3), &bin)?;
        }
        if run_section(Section::Dns) {
            crate::bench_dns::bench_dns(args.rounds, &bin, args.lookups)?;
        }
        if run_section(Section::Syscalls) {
            bench_syscalls(&args, &bin)?;
        }
        if run_section(Section::Metadata) {
            bench_metadata(&args)?;
        }
        if run_section(Section::Otlp) {
            bench_otlp()?;
        }
        if run_section(Section::Config) {
            crate::bench_config::bench_config(&bin)?;
        }
        if run_section(Section::Prometheus) {
            crate::bench_prometheus::bench_prometheus(&bin)?;
        }
        if run_section(Section::Api) {
            crate::bench_api::bench_api(&bin)?;
        }
        if run_section(Section::Rca) {
            crate::bench_rca::bench_rca(&bin, args.rounds)?;
        }
        if run_section(Section::Lifecycle) {
            crate::bench_lifecycle::bench_lifecycle(&bin, args.rounds)?;
        }
        if run_section(Section::AgentCpu) {
            crate::bench_agent_cpu::bench_agent_cpu(&bin, args.rounds, args.connections)?;
        }
        Ok(())
    })();
    let _ = sysctl("kernel.bpf_stats_enabled", &old_stats);
    result
}

// -- metadata -----------------------------------------------------------------------------

/// Identity lookups are in-process work: the figures come from the library itself
/// (`tests/examples/metadata_bench.rs`): cache-hit cost, memory per 1,000 pods and per
/// 10,000 processes, and new cgroup → first labelled record with the real agent.
fn bench_metadata(args: &BenchArgs) -> anyhow::Result<()> {
    println!("== metadata ==");
    let rounds = (args.rounds * 4).max(5).to_string();
    run(cargo().args([
        "run",
        "--release",
        "-q",
        "-p",
        "hostscope-tests",
        "--example",
        "metadata_bench",
        "--",
        &rounds,
    ]))
}

// -- OTLP export ---------------------------------------------------------------------------

/// The export figures come from a dedicated binary (tests/src/bin/otlp_bench.rs) that
/// drives the exporter in-process: spans and data points per second on one core, bytes on
/// the wire with and without gzip, kernel-event-to-backend latency, memory in an outage.
fn bench_otlp() -> anyhow::Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "hostscope-tests",
        "--bin",
        "otlp_bench",
    ]))?;
    run(&mut std::process::Command::new(
        workspace_root().join("target/release/otlp_bench"),
    ))
    .context("OTLP benchmark")
}

// -- syscalls -----------------------------------------------------------------------------

/// `prog_stats`, retried: a listing can fail while other tools load or unload programs.
fn prog_stats_of(ids: &[u32]) -> BTreeMap<u32, (String, u64, u64)> {
    let mut stats = BTreeMap::new();
    for _ in 0..5 {
        stats = prog_stats();
        if ids.iter().all(|id| stats.contains_key(id)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stats
}

fn getppid_storm(n: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: getppid has no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    start.elapsed()
}

/// Median and range of a sample.
pub(crate) fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    let m = median(&mut s);
    (
        m,
        s.first().copied().unwrap_or(0.0),
        s.last().copied().unwrap_or(0.0),
    )
}

/// Each tracer's storm is paired with a no-tracer storm right next to it (before it in
/// even rounds, after it in odd ones, so drift cancels) and the slowdown is taken pair
/// by pair: a machine that slows down over the run moves both halves of a pair.
fn bench_syscalls(args: &BenchArgs, bin: &Path) -> anyhow::Result<()> {
    let syscount = "/usr/sbin/syscount";
    if !Path::new(syscount).exists() {
        bail!("libbpf-tools is not installed (cargo xtask setup installs it)");
    }
    let peer = PeerPlan {
        name: "syscount -L".to_string(),
        commands: vec![vec![syscount.to_string(), "-L".to_string()]],
        min_programs: 2,
    };
    let n = args.calls;
    println!(
        "== syscall storm: {n} getppid calls; each tracer paired with a no-tracer storm, {} rounds, median [range]",
        args.rounds
    );
    crate::bench_machine::print();
    getppid_storm(n / 10); // warm-up
    let modes = [Mode::Floor, Mode::Hostscope, Mode::Peer];
    // (no tracer, traced) seconds per round.
    let mut pairs: BTreeMap<Mode, Vec<(f64, f64)>> = BTreeMap::new();
    let mut prog_cost: BTreeMap<(Mode, String), (u64, u64)> = BTreeMap::new();
    let mut last_stats = String::new();
    for round in 0..args.rounds {
        for mode in modes {
            let none_first = round % 2 == 0;
            let mut none = if none_first {
                getppid_storm(n).as_secs_f64()
            } else {
                0.0
            };
            let tracer = start_tracer(mode, bin, &peer)?;
            let before = prog_stats_of(&tracer.programs);
            let traced = getppid_storm(n).as_secs_f64();
            let after = prog_stats_of(&tracer.programs);
            // Only the storm's runs: the delta over it, per program of this tracer (by
            // name too: programs other tools load meanwhile also get new ids).
            let ours = |name: &str| match mode {
                Mode::Peer => name.starts_with("sys_"),
                Mode::Floor => name.starts_with("floor_"),
                _ => ["syscall_", "security_", "tcp_", "tls_"]
                    .iter()
                    .any(|p| name.starts_with(p)),
            };
            for (name, ns, runs) in program_deltas(&tracer.programs, &before, &after) {
                if ours(name) {
                    let e = prog_cost.entry((mode, name.to_string())).or_default();
                    e.0 += ns;
                    e.1 += runs;
                }
            }
            if let Some(line) = stop_for_stats(tracer) {
                last_stats = line;
            }
            if !none_first {
                none = getppid_storm(n).as_secs_f64();
            }
            pairs.entry(mode).or_default().push((none, traced));
            eprintln!(
                "round {round} {mode:?}: {traced:.3} s, no tracer {none:.3} s: {:.2}x",
                traced / none
            );
        }
    }
    let label = |m: Mode| match m {
        Mode::Floor => "floor (empty programs)".to_string(),
        Mode::Hostscope => "hostscope".to_string(),
        Mode::Peer => peer.name.clone(),
    };
    // BPF ns per syscall: every program of the tracer per run of its busiest one (once
    // per call, plus the machine's background calls).
    let bpf_per_call = |mode: Mode, prefix: &str| {
        let costs = prog_cost
            .iter()
            .filter(|((m, name), _)| *m == mode && name.starts_with(prefix));
        let ns: u64 = costs.clone().map(|(_, (ns, _))| ns).sum();
        let runs = costs.map(|(_, (_, cnt))| *cnt).max().unwrap_or(0);
        ns as f64 / runs.max(1) as f64
    };
    println!(
        "{:<24} {:>24} {:>18} {:>16}",
        "mode", "slowdown [range]", "added ns per call", "BPF ns per call"
    );
    let mut added = BTreeMap::new();
    let mut slowdowns = BTreeMap::new();
    for (mode, v) in &pairs {
        let ratios: Vec<f64> = v.iter().map(|(none, t)| t / none).collect();
        let adds: Vec<f64> = v
            .iter()
            .map(|(none, t)| (t - none) / n as f64 * 1e9)
            .collect();
        let (m, lo, hi) = spread(&ratios);
        let (a, _, _) = spread(&adds);
        added.insert(*mode, a);
        slowdowns.insert(*mode, ratios);
        println!(
            "{:<24} {:>9.2}x [{:.2}–{:.2}] {:>18.0} {:>16.0}",
            label(*mode),
            m,
            lo,
            hi,
            a,
            bpf_per_call(*mode, "")
        );
    }
    println!("per program over the storms (bpf_stats, all rounds):");
    println!(
        "{:<12} {:<18} {:>12} {:>10}",
        "tracer", "program", "runs", "ns/run"
    );
    for ((mode, name), (ns, cnt)) in &prog_cost {
        if *cnt == 0 {
            continue;
        }
        println!(
            "{:<12} {:<18} {:>12} {:>10.0}",
            format!("{mode:?}"),
            name,
            cnt,
            *ns as f64 / *cnt as f64
        );
    }
    let hs = bpf_per_call(Mode::Hostscope, "syscall_");
    let peer_bpf = bpf_per_call(Mode::Peer, "sys_");
    let floor = bpf_per_call(Mode::Floor, "floor_");
    println!(
        "hostscope enter + exit {hs:.0} ns, {} {peer_bpf:.0} ns: ratio {:.2} (target ≤ 0.50)",
        peer.name,
        hs / peer_bpf.max(1.0)
    );
    println!(
        "hostscope's BPF time over the floor: {:.0} ns, the floor's own {floor:.0} ns: ratio {:.2} (target ≤ 1.50)",
        hs - floor,
        (hs - floor) / floor.max(1.0)
    );
    if let (Some(h), Some(f)) = (added.get(&Mode::Hostscope), added.get(&Mode::Floor)) {
        println!(
            "wall clock: hostscope adds {h:.0} ns per call, the floor {f:.0} ns: over the floor {:.0} ns = {:.2}x the floor's own",
            h - f,
            (h - f) / f.max(1.0)
        );
    }
    if let (Some(h), Some(p)) = (slowdowns.get(&Mode::Hostscope), slowdowns.get(&Mode::Peer)) {
        let cheaper = h.iter().zip(p).filter(|(h, p)| h < p).count();
        println!(
            "verdict: hostscope slowed the storm less than {} in {cheaper} of {} rounds",
            peer.name,
            h.len()
        );
    }
    if !last_stats.is_empty() {
        println!("hostscope's own counters, last round: {last_stats}");
    }
    Ok(())
}

/// `n` connects to a loopback port nobody listens on (each refused with a reset).
fn refused_storm(n: usize) -> anyhow::Result<Duration> {
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let start = Instant::now();
    for _ in 0..n {
        let _ = TcpStream::connect(closed);
    }
    Ok(start.elapsed())
}

/// Both TCP storms, each tracer paired with a no-tracer storm next to it (before it in
/// even rounds, after it in odd ones) and the slowdown taken pair by pair: hostscope, the
/// peer (tcplife + a connect-latency tool) and tcplife alone, the issue's two bars.
fn bench_tcp(args: &BenchArgs, bin: &Path, peer: &PeerPlan) -> anyhow::Result<()> {
    let n = args.connections;
    println!(
        "== TCP storms: {n} loopback connections; each tracer paired with a no-tracer storm, {} rounds, median [range]",
        args.rounds
    );
    crate::bench_machine::print();
    let tcplife = PeerPlan {
        name: "tcplife alone".to_string(),
        commands: vec![peer.commands[0].clone()],
        min_programs: 1,
    };
    let tracers: [(&str, Mode, &PeerPlan); 3] = [
        ("hostscope", Mode::Hostscope, peer),
        (peer.name.as_str(), Mode::Peer, peer),
        ("tcplife alone", Mode::Peer, &tcplife),
    ];
    type Storm = fn(usize) -> anyhow::Result<Duration>;
    let storms: [(&str, Storm); 2] = [("connect/close", storm), ("refused connect", refused_storm)];
    storm(1000)?; // warm-up
                  // (storm, tracer) -> per round (no tracer s, traced s)
    let mut pairs: BTreeMap<(usize, usize), Vec<(f64, f64)>> = BTreeMap::new();
    // (storm, tracer, program) -> (ns, runs), over the storms only
    let mut prog_cost: BTreeMap<(usize, usize, String), (u64, u64)> = BTreeMap::new();
    let mut last_stats = String::new();
    for round in 0..args.rounds {
        for (si, (storm_name, run_storm)) in storms.iter().enumerate() {
            for (ti, (name, mode, plan)) in tracers.iter().enumerate() {
                let none_first = round % 2 == 0;
                let mut none = if none_first {
                    run_storm(n)?.as_secs_f64()
                } else {
                    0.0
                };
                let tracer = start_tracer(*mode, bin, plan)?;
                let before = prog_stats_of(&tracer.programs);
                let traced = run_storm(n)?.as_secs_f64();
                std::thread::sleep(Duration::from_millis(300));
                let after = prog_stats_of(&tracer.programs);
                for (prog, ns, runs) in program_deltas(&tracer.programs, &before, &after) {
                    let e = prog_cost.entry((si, ti, prog.to_string())).or_default();
                    e.0 += ns;
                    e.1 += runs;
                }
                if let Some(line) = stop_for_stats(tracer) {
                    last_stats = line;
                }
                if !none_first {
                    none = run_storm(n)?.as_secs_f64();
                }
                pairs.entry((si, ti)).or_default().push((none, traced));
                eprintln!(
                    "round {round} {storm_name} {name}: {traced:.3} s, no tracer {none:.3} s: {:.2}x",
                    traced / none
                );
            }
        }
    }
    let conns = (n * args.rounds) as f64;
    for (si, (storm_name, _)) in storms.iter().enumerate() {
        println!("-- {storm_name}");
        println!(
            "{:<30} {:>24} {:>12} {:>16}",
            "tracer", "slowdown [range]", "no tracer", "BPF ns per conn"
        );
        let mut ratios: Vec<Vec<f64>> = Vec::new();
        for (ti, (name, _, _)) in tracers.iter().enumerate() {
            let v = pairs.get(&(si, ti)).cloned().unwrap_or_default();
            let r: Vec<f64> = v.iter().map(|(none, t)| t / none).collect();
            let nones: Vec<f64> = v.iter().map(|(none, _)| *none).collect();
            let (m, lo, hi) = spread(&r);
            let (base, _, _) = spread(&nones);
            let bpf: u64 = prog_cost
                .iter()
                .filter(|((s, t, _), _)| *s == si && *t == ti)
                .map(|(_, (ns, _))| ns)
                .sum();
            println!(
                "{name:<30} {m:>9.2}x [{lo:.2}–{hi:.2}] {:>9.1} µs {:>16.0}",
                base / n as f64 * 1e6,
                bpf as f64 / conns
            );
            ratios.push(r);
        }
        for (ti, bar) in [(1, "the peer"), (2, "tcplife alone")] {
            let cheaper = ratios[0]
                .iter()
                .zip(&ratios[ti])
                .filter(|(h, p)| h <= p)
                .count();
            println!(
                "verdict: hostscope slowed the storm no more than {bar} in {cheaper} of {} rounds (target: all)",
                ratios[0].len()
            );
        }
        println!("hostscope per program over these storms (bpf_stats, all rounds):");
        println!(
            "{:<18} {:>12} {:>10} {:>10}",
            "program", "runs", "per conn", "ns/run"
        );
        let mut family = 0.0;
        for ((s, t, prog), (ns, cnt)) in &prog_cost {
            if *s != si || *t != 0 || *cnt == 0 {
                continue;
            }
            if prog.starts_with("tcp_") {
                family += *ns as f64 / conns;
            }
            println!(
                "{:<18} {:>12} {:>10.2} {:>10.0}",
                prog,
                cnt,
                *cnt as f64 / conns,
                *ns as f64 / *cnt as f64
            );
        }
        println!("hostscope TCP family: {family:.0} ns of BPF per connection (target ≤ 2,000)");
    }
    if !last_stats.is_empty() {
        println!("hostscope's own counters, last round: {last_stats}");
    }
    Ok(())
}
