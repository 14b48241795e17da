//! DNS section of `cargo xtask bench`: a lookup storm (unique names, answered by the test
//! zone's dnsmasq on 127.0.0.77) and a flood of non-DNS UDP datagrams, each with no
//! tracer, with hostscope and with the peer, in interleaved rounds. The workloads and the
//! server are the DNS suite's own (tests/examples/dns_bench.rs on tests/src/dns.rs).
//!
//! The peer is a bpftrace script doing what Inspektor Gadget's `trace dns` does with its
//! socket filter (see every packet, pick the DNS ones by port, join a query and its
//! answer by transaction id for the latency), on the per-packet tracepoints this kernel
//! allows (no kprobes, no fentry): `net:net_dev_queue` for queries leaving and
//! `net:netif_receive_skb` for answers arriving. On loopback both fire for every packet,
//! as hostscope's cgroup_skb egress and ingress programs do.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    bench::{prog_stats, spread, stop_children, usage},
    cmd::{cargo, run, workspace_root},
};

/// Datagrams in the non-DNS flood.
const FLOOD: usize = 200_000;
/// Client threads in a storm (one lookup in flight each).
const STORM_THREADS: usize = 2;

const PEER_BT: &str = r#"
tracepoint:net:net_dev_queue
{
  $skb = (struct sk_buff *)args->skbaddr;
  $ip = $skb->head + $skb->network_header;
  $b0 = *(uint8 *)$ip;
  if (($b0 >> 4) == 4 && *(uint8 *)($ip + 9) == 17) {
    $udp = $ip + ($b0 & 0xf) * 4;
    $dport = (*(uint8 *)($udp + 2) << 8) | *(uint8 *)($udp + 3);
    if ($dport == 53) {
      $id = (*(uint8 *)($udp + 8) << 8) | *(uint8 *)($udp + 9);
      @sent[$id] = nsecs;
      @queries = count();
    }
  }
}

tracepoint:net:netif_receive_skb
{
  $skb = (struct sk_buff *)args->skbaddr;
  $ip = $skb->head + $skb->network_header;
  $b0 = *(uint8 *)$ip;
  if (($b0 >> 4) == 4 && *(uint8 *)($ip + 9) == 17) {
    $udp = $ip + ($b0 & 0xf) * 4;
    $sport = (*(uint8 *)$udp << 8) | *(uint8 *)($udp + 1);
    if ($sport == 53) {
      $id = (*(uint8 *)($udp + 8) << 8) | *(uint8 *)($udp + 9);
      $t = @sent[$id];
      if ($t) {
        @latency_us = hist((nsecs - $t) / 1000);
        delete(@sent[$id]);
      }
      @answers = count();
    }
  }
}
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    None,
    Hostscope,
    Peer,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::None => "no tracer",
            Mode::Hostscope => "hostscope",
            Mode::Peer => "bpftrace dns (tracepoints)",
        }
    }
}

/// The workload binary, built once.
fn workload() -> anyhow::Result<PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "hostscope-tests",
        "--example",
        "dns_bench",
    ]))?;
    Ok(workspace_root().join("target/release/examples/dns_bench"))
}

/// The cgroup v2 mount, where hostscope attaches its packet programs.
fn cgroup2_root() -> anyhow::Result<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(std::path::PathBuf::from))
        .context("no cgroup2 mount")
}

/// `dns_bench <args>`'s one JSON line.
fn workload_run(bin: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(bin)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("dns_bench {args:?}"))?;
    if !out.status.success() {
        bail!("dns_bench {args:?} failed: {}", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("dns_bench {args:?} output"))
}

/// The zone server, for the whole section; stopped when dropped (its stdin closes).
struct Server(Child);

impl Server {
    fn start(bin: &Path) -> anyhow::Result<Server> {
        let mut child = Command::new(bin)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("dns_bench serve")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("serve stdout")?).read_line(&mut line)?;
        if !line.starts_with("ready") {
            let _ = child.kill();
            bail!("the benchmark's dnsmasq did not start");
        }
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// The BPF programs process `pid` holds (`prog_id:` in the fdinfo of its descriptors):
/// its own, not those another agent or tool loads at the same time.
fn owned_programs(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Starts the tracer; its children and the ids of the programs it holds.
fn start(mode: Mode, agent: &Path, script: &Path) -> anyhow::Result<(Vec<Child>, Vec<u32>)> {
    let child = match mode {
        Mode::None => return Ok((Vec::new(), Vec::new())),
        Mode::Hostscope => Command::new(agent)
            .args([
                "run",
                "--output",
                "none",
                "--no-pin",
                "--no-api",
                "--no-prometheus",
                "--stats-interval",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting hostscope")?,
        Mode::Peer => Command::new("bpftrace")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?,
    };
    // Loaded: hostscope's two DNS programs, or the peer's two.
    let ready = |names: &[String]| match mode {
        Mode::Hostscope => names.iter().filter(|n| n.starts_with("dns_")).count() >= 2,
        _ => names.len() >= 2,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = prog_stats();
        let names: Vec<String> = owned_programs(child.id())
            .iter()
            .filter_map(|id| stats.get(id).map(|p| p.0.clone()))
            .collect();
        if ready(&names) {
            // Let the last attachments settle.
            std::thread::sleep(Duration::from_millis(800));
            let ids = owned_programs(child.id());
            return Ok((vec![child], ids));
        }
        if Instant::now() > deadline {
            stop_children(vec![child]);
            bail!("{mode:?}: its programs did not load: {names:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (ns, runs) per program name over the ids.
fn snapshot(ids: &[u32]) -> BTreeMap<String, (u64, u64)> {
    let stats = prog_stats();
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for id in ids {
        if let Some((name, ns, cnt)) = stats.get(id) {
            let e = out.entry(name.clone()).or_default();
            e.0 += ns;
            e.1 += cnt;
        }
    }
    out
}

fn add_delta(
    into: &mut BTreeMap<(Mode, String), (u64, u64)>,
    mode: Mode,
    after: &BTreeMap<String, (u64, u64)>,
    before: &BTreeMap<String, (u64, u64)>,
) {
    for (name, (ns, cnt)) in after {
        let (bns, bcnt) = before.get(name).copied().unwrap_or((0, 0));
        let e = into.entry((mode, name.clone())).or_default();
        e.0 += ns.saturating_sub(bns);
        e.1 += cnt.saturating_sub(bcnt);
    }
}

/// Sum (ns, runs) of `mode`'s programs whose name passes `pick`.
fn total(
    costs: &BTreeMap<(Mode, String), (u64, u64)>,
    mode: Mode,
    pick: impl Fn(&str) -> bool,
) -> (u64, u64) {
    costs
        .iter()
        .filter(|((m, name), _)| *m == mode && pick(name))
        .fold((0, 0), |(ns, n), (_, (a, b))| (ns + a, n + b))
}

/// BPF (ns, runs) per (tracer, program) over the storms and over the floods.
#[derive(Default)]
struct Costs {
    storm: BTreeMap<(Mode, String), (u64, u64)>,
    flood: BTreeMap<(Mode, String), (u64, u64)>,
}

/// One tracer's run: a storm, then a flood.
struct Sample {
    lookups_per_s: f64,
    datagrams_per_s: f64,
    /// The agent's CPU per lookup over the storm (hostscope only).
    agent_cpu_us: Option<f64>,
}

struct Workload<'a> {
    bin: &'a Path,
    agent: &'a Path,
    script: &'a Path,
    lookups: usize,
}

impl Workload<'_> {
    fn measure(&self, mode: Mode, costs: &mut Costs) -> anyhow::Result<Sample> {
        let (n, threads) = (self.lookups.to_string(), STORM_THREADS.to_string());
        let (children, mut ids) = start(mode, self.agent, self.script)?;
        // With hostscope, the floor runs on the same packets: empty cgroup_skb programs.
        let floor = match mode {
            Mode::Hostscope => {
                let floor = crate::bench_floor::SkbFloor::attach(&cgroup2_root()?)?;
                let stats = prog_stats();
                ids.extend(owned_programs(std::process::id()).into_iter().filter(|id| {
                    stats
                        .get(id)
                        .is_some_and(|p| crate::bench_floor::SKB_PROGRAMS.contains(&p.0.as_str()))
                }));
                Some(floor)
            }
            _ => None,
        };
        let cpu0 = children.first().map(|c| usage(c.id()).cpu_s);
        let s0 = snapshot(&ids);
        let storm = workload_run(self.bin, &["storm", &n, &threads]);
        let s1 = snapshot(&ids);
        // The agent's CPU for the storm, its last records included.
        std::thread::sleep(Duration::from_millis(300));
        let cpu1 = children.first().map(|c| usage(c.id()).cpu_s);
        let s2 = snapshot(&ids);
        let flood = workload_run(self.bin, &["flood", &FLOOD.to_string()]);
        let s3 = snapshot(&ids);
        drop(floor);
        stop_children(children);
        let (storm, flood) = (storm?, flood?);
        let answered = storm["answered"].as_u64().unwrap_or(0);
        if answered != self.lookups as u64 {
            bail!(
                "{mode:?}: only {answered} of {} lookups answered: {storm}",
                self.lookups
            );
        }
        add_delta(&mut costs.storm, mode, &s1, &s0);
        add_delta(&mut costs.flood, mode, &s3, &s2);
        let secs = storm["secs"].as_f64().context("storm secs")?;
        let fsecs = flood["secs"].as_f64().context("flood secs")?;
        Ok(Sample {
            lookups_per_s: self.lookups as f64 / secs,
            datagrams_per_s: FLOOD as f64 / fsecs,
            agent_cpu_us: match (cpu0, cpu1) {
                (Some(a), Some(b)) => Some((b - a) / self.lookups as f64 * 1e6),
                _ => None,
            },
        })
    }
}

pub fn bench_dns(rounds: usize, agent: &Path, lookups: usize) -> anyhow::Result<()> {
    let bin = workload()?;
    let script = std::env::temp_dir().join("hostscope-bench-dns.bt");
    std::fs::File::create(&script)?.write_all(PEER_BT.as_bytes())?;
    let _server = Server::start(&bin)?;
    println!(
        "== DNS: a storm of {lookups} lookups ({STORM_THREADS} client sockets, unique names, dnsmasq on 127.0.0.77) and {FLOOD} non-DNS UDP datagrams; each tracer paired with a no-tracer run, {rounds} rounds, median [range]"
    );
    crate::bench_machine::print();
    let threads = STORM_THREADS.to_string();
    workload_run(&bin, &["storm", "2000", &threads])?; // warm-up
    let mut costs = Costs::default();
    // Per tracer and round: (no tracer, traced) lookups/s and datagrams/s, the no-tracer
    // run next to the traced one (before it in even rounds, after it in odd ones), so a
    // machine that drifts moves both halves of a pair.
    let mut storm_pairs: BTreeMap<Mode, Vec<(f64, f64)>> = BTreeMap::new();
    let mut flood_pairs: BTreeMap<Mode, Vec<(f64, f64)>> = BTreeMap::new();
    let mut agent_cpu_us = Vec::new();
    let w = Workload {
        bin: &bin,
        agent,
        script: &script,
        lookups,
    };
    for round in 0..rounds {
        for mode in [Mode::Hostscope, Mode::Peer] {
            let none_first = round % 2 == 0;
            let mut none = None;
            if none_first {
                none = Some(w.measure(Mode::None, &mut costs)?);
            }
            let traced = w.measure(mode, &mut costs)?;
            if !none_first {
                none = Some(w.measure(Mode::None, &mut costs)?);
            }
            let none = none.context("no-tracer run")?;
            storm_pairs
                .entry(mode)
                .or_default()
                .push((none.lookups_per_s, traced.lookups_per_s));
            flood_pairs
                .entry(mode)
                .or_default()
                .push((none.datagrams_per_s, traced.datagrams_per_s));
            if let Some(us) = traced.agent_cpu_us {
                agent_cpu_us.push(us);
            }
            eprintln!(
                "round {round} {mode:?}: {:.0} lookups/s (no tracer {:.0}), {:.0} datagrams/s (no tracer {:.0})",
                traced.lookups_per_s, none.lookups_per_s, traced.datagrams_per_s, none.datagrams_per_s
            );
        }
    }
    let (cost_storm, cost_flood) = (&costs.storm, &costs.flood);
    // Traced runs only: every tracer ran `rounds` storms.
    let all_lookups = (lookups * rounds) as f64;
    println!(
        "{:<28} {:>22} {:>14} {:>22} {:>18}",
        "tracer", "storm speed [range]", "no tracer", "flood speed [range]", "all BPF ns/lookup"
    );
    let mut ratios = BTreeMap::new();
    for mode in [Mode::Hostscope, Mode::Peer] {
        let pairs = storm_pairs.get(&mode).cloned().unwrap_or_default();
        let r: Vec<f64> = pairs.iter().map(|(none, t)| t / none).collect();
        let nones: Vec<f64> = pairs.iter().map(|(none, _)| *none).collect();
        let f: Vec<f64> = flood_pairs
            .get(&mode)
            .map(|v| v.iter().map(|(none, t)| t / none).collect())
            .unwrap_or_default();
        let (m, lo, hi) = spread(&r);
        let (base, _, _) = spread(&nones);
        let (fm, flo, fhi) = spread(&f);
        let (ns, _) = total(cost_storm, mode, |_| true);
        println!(
            "{:<28} {m:>10.2}x [{lo:.2}–{hi:.2}] {base:>8.0} /s {fm:>10.2}x [{flo:.2}–{fhi:.2}] {:>18.0}",
            mode.label(),
            ns as f64 / all_lookups
        );
        ratios.insert(mode, r);
    }
    if let (Some(h), Some(p)) = (ratios.get(&Mode::Hostscope), ratios.get(&Mode::Peer)) {
        let faster = h.iter().zip(p).filter(|(h, p)| h >= p).count();
        println!(
            "verdict: hostscope kept the storm at least as fast as the peer in {faster} of {} rounds (speeds relative to the paired no-tracer storm)",
            h.len()
        );
    }
    let is_dns = |n: &str| n.starts_with("dns_");
    let (dns_ns, dns_runs) = total(cost_storm, Mode::Hostscope, is_dns);
    let (flood_ns, flood_runs) = total(cost_flood, Mode::Hostscope, is_dns);
    let (peer_ns, _) = total(cost_storm, Mode::Peer, |_| true);
    let (peer_flood_ns, peer_flood_runs) = total(cost_flood, Mode::Peer, |_| true);
    println!(
        "hostscope DNS programs: {:.0} ns per DNS packet ({:.1} runs per lookup), {:.0} ns of BPF per lookup; the peer {:.0} ns per lookup: ratio {:.2}",
        dns_ns as f64 / dns_runs.max(1) as f64,
        dns_runs as f64 / all_lookups,
        dns_ns as f64 / all_lookups,
        peer_ns as f64 / all_lookups,
        dns_ns as f64 / (peer_ns as f64).max(1.0)
    );
    println!(
        "non-DNS datagrams: hostscope DNS programs {:.0} ns per packet ({flood_runs} runs); the peer {:.0} ns per packet ({peer_flood_runs} runs)",
        flood_ns as f64 / flood_runs.max(1) as f64,
        peer_flood_ns as f64 / peer_flood_runs.max(1) as f64
    );
    let is_floor = |n: &str| crate::bench_floor::SKB_PROGRAMS.contains(&n);
    let (floor_ns, floor_runs) = total(cost_flood, Mode::Hostscope, is_floor);
    let (tls_ns, tls_runs) = total(cost_flood, Mode::Hostscope, |n| n.starts_with("tls_wire"));
    println!(
        "the same non-DNS packets through empty cgroup_skb programs (the floor): {:.0} ns per packet; hostscope's TLS wire programs {:.0}",
        floor_ns as f64 / floor_runs.max(1) as f64,
        tls_ns as f64 / tls_runs.max(1) as f64
    );
    if !agent_cpu_us.is_empty() {
        let (m, lo, hi) = spread(&agent_cpu_us);
        println!("hostscope agent CPU per lookup: {m:.1} µs [{lo:.1}–{hi:.1}] (utime+stime over the storm, at the defaults, output none)");
    }
    for (title, costs) in [("lookup storm", cost_storm), ("non-DNS flood", cost_flood)] {
        println!("per program during the {title} (bpf_stats, all rounds):");
        println!(
            "{:<12} {:<26} {:>12} {:>10}",
            "tracer", "program", "runs", "ns/run"
        );
        for ((mode, name), (ns, cnt)) in costs {
            if *cnt > 0 {
                println!(
                    "{:<12} {:<26} {:>12} {:>10.0}",
                    format!("{mode:?}"),
                    name,
                    cnt,
                    *ns as f64 / *cnt as f64
                );
            }
        }
    }
    Ok(())
}
