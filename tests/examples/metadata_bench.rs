//! Metadata benchmark (run by `cargo xtask bench --only metadata`; needs root):
//!
//! 1. lookup cost per event on a cache hit (ns), for pod subjects and process subjects;
//! 2. memory per 1,000 pods and per 10,000 processes cached (bytes counted by a counting
//!    global allocator, not RSS);
//! 3. time from a new container cgroup appearing to its first correctly labelled record
//!    (real agent, real cgroup, real connect), and the resolver's share of it (the miss).
//!
//! Figures are printed, never asserted.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    hint::black_box,
    sync::{
        atomic::{AtomicIsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hostscope::{
    events::Record,
    loader::LoaderConfig,
    metadata::{
        kube::{ClusterStore, PodMeta},
        CgroupCache, MetadataOptions, Resolver, Subject,
    },
    Agent, AgentConfig,
};
use hostscope_tests::metadata::{container_id, pod_uid, CgroupTree, Connector, KubeletTree};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const PODS: usize = 1000;

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("metadata bench: needs root (creates cgroups, loads probes)");
        std::process::exit(1);
    }
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    pods_and_lookups();
    processes();
    new_cgroup_latency(rounds);
}

/// 1,000 real pod cgroups (systemd layout, containerd), each with a kubelet directory and
/// an API entry with 5 labels and an owner: memory of the resolved identities, then the
/// cost of a cache hit.
fn pods_and_lookups() {
    let tree = CgroupTree::new();
    let kubelet = KubeletTree::new();
    let mut subjects = Vec::new();
    let mut metas = Vec::new();
    for i in 0..PODS {
        let uid = pod_uid();
        let cid = container_id();
        let dir = tree.make(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        ));
        kubelet.add_pod("bench", &format!("app-{i}"), &uid, &[("main", &cid)]);
        let id = hostscope::metadata::cgroup::id_of(&dir).unwrap();
        subjects.push(Subject {
            pid: None,
            cgroup_id: Some(id),
        });
        let labels: BTreeMap<String, String> = (0..5)
            .map(|l| (format!("label-{l}"), format!("value-{i}-{l}")))
            .collect();
        metas.push(PodMeta {
            uid: uid.clone(),
            name: format!("app-{i}-6d4f8b7c9-x2x7q"),
            namespace: "bench".into(),
            node: Some("bench-node".into()),
            ip: Some(std::net::IpAddr::from([
                10,
                244,
                (i / 250) as u8,
                (i % 250) as u8,
            ])),
            host_network: false,
            labels,
            workload: vec![
                ("k8s.replicaset.name", format!("app-{i}-6d4f8b7c9")),
                ("k8s.deployment.name", format!("app-{i}")),
            ],
            containers: [(cid.clone(), "main".to_string())].into_iter().collect(),
        });
    }
    for (with_api, what) in [
        (false, "node-local (cgroup + kubelet)"),
        (true, "with API metadata (5 labels, owner)"),
    ] {
        let before = live();
        let resolver = Resolver::with_cgroups(
            MetadataOptions {
                kubelet_log_root: kubelet.root.clone(),
                processes: false,
                ..MetadataOptions::default()
            },
            CgroupCache::discover().expect("cgroup2"),
        );
        let base = live();
        if with_api {
            resolver.update_cluster(|s: &mut ClusterStore| {
                for m in &metas {
                    s.apply_pod(m.clone());
                }
            });
        }
        let t = Instant::now();
        for s in &subjects {
            black_box(resolver.identify(*s));
        }
        let miss = t.elapsed() / PODS as u32;
        let filled = live();
        let one = resolver.identify(subjects[0]);
        assert!(one.get_str("k8s.pod.name").is_some(), "bench pods resolve");
        println!(
            "metadata: {PODS} pods {what}: {:.0} KiB cached ({:.0} bytes/pod, resolver empty {:.0} KiB), first lookup (miss) {:.1} µs/pod",
            (filled - base) as f64 / 1024.0,
            (filled - base) as f64 / PODS as f64,
            (base - before) as f64 / 1024.0,
            miss.as_secs_f64() * 1e6
        );
        if with_api {
            // Cache hits, round robin over the 1,000 pods (one identity per subject).
            let n = 2_000_000;
            let t = Instant::now();
            for i in 0..n {
                black_box(resolver.identify(subjects[i % PODS]));
            }
            let ns = t.elapsed().as_nanos() as f64 / n as f64;
            println!("metadata: cache hit, pod subject (cgroup id): {ns:.0} ns/lookup (1 thread)");
            // Two threads hitting at once (the printer and an exporter, say).
            let r = Arc::new(resolver);
            let t = Instant::now();
            let handles: Vec<_> = (0..2)
                .map(|k| {
                    let r = r.clone();
                    let subjects = subjects.clone();
                    std::thread::spawn(move || {
                        for i in 0..n / 2 {
                            black_box(r.identify(subjects[(i + k * 7) % PODS]));
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let ns = t.elapsed().as_nanos() as f64 / n as f64;
            println!("metadata: cache hit, 2 threads: {ns:.0} ns/lookup wall (aggregate)");
        }
    }
}

/// Every live process on the machine resolved with its process attributes; bytes per
/// process, scaled to 10,000.
fn processes() {
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let before = live();
    let resolver = Resolver::with_cgroups(
        MetadataOptions {
            kubelet_log_root: "/nonexistent".into(),
            ..MetadataOptions::default()
        },
        CgroupCache::discover().expect("cgroup2"),
    );
    let base = live();
    let t = Instant::now();
    let mut resolved = 0;
    for &pid in &pids {
        let id = resolver.identify(Subject {
            pid: Some(pid),
            cgroup_id: None,
        });
        if id.get_str("process.executable.name").is_some() || id.get("process.parent_pid").is_some()
        {
            resolved += 1;
        }
    }
    let miss = t.elapsed() / pids.len().max(1) as u32;
    let filled = live();
    let per = (filled - base) as f64 / resolved.max(1) as f64;
    println!(
        "metadata: {resolved} live processes: {per:.0} bytes/process cached → {:.1} MiB per 10,000 processes (resolver empty {:.0} KiB); first lookup (miss, /proc reads) {:.0} µs/process",
        per * 10_000.0 / 1024.0 / 1024.0,
        (base - before) as f64 / 1024.0,
        miss.as_secs_f64() * 1e6
    );
    let n = 1_000_000;
    let subjects: Vec<Subject> = pids
        .iter()
        .map(|&p| Subject {
            pid: Some(p),
            cgroup_id: None,
        })
        .collect();
    let t = Instant::now();
    for i in 0..n {
        black_box(resolver.identify(subjects[i % subjects.len()]));
    }
    println!(
        "metadata: cache hit, process subject (pid): {:.0} ns/lookup",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    let t = Instant::now();
    resolver.maintain();
    let used = t.elapsed();
    let t = Instant::now();
    resolver.maintain();
    let idle = t.elapsed();
    let cached = resolver.stats().processes.cached.max(1);
    println!(
        "metadata: eviction pass over {cached} cached processes: {:.1} µs/process when all were used since the last pass (stat read), {:.1} µs/process when idle (existence check)",
        used.as_secs_f64() * 1e6 / cached as f64,
        idle.as_secs_f64() * 1e6 / cached as f64,
    );
}

/// mkdir of a new container cgroup → a process in it connects → the record arrives →
/// identified with the right container id and pod name. Median and max over `rounds`.
fn new_cgroup_latency(rounds: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kubelet = KubeletTree::new();
    let agent = rt
        .block_on(async {
            Agent::start(&AgentConfig {
                loader: LoaderConfig {
                    pin_dir: None,
                    ..LoaderConfig::default()
                },
                metadata: MetadataOptions {
                    kubelet_log_root: kubelet.root.clone(),
                    ..MetadataOptions::default()
                },
                ..AgentConfig::default()
            })
        })
        .expect("agent");
    let resolver = agent.resolver();
    let mut rx = agent.subscribe();
    let tree = CgroupTree::new();
    let (mut total, mut miss) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let uid = pod_uid();
        let cid = container_id();
        // The kubelet writes the log directory when it creates the container.
        kubelet.add_pod("bench", &format!("new-{i}"), &uid, &[("main", &cid)]);
        let mut c = Connector::spawn();
        let t0 = Instant::now();
        let dir = tree.make(&format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{cid}.scope",
            uid.replace('-', "_")
        ));
        c.move_to(&dir);
        let (pid, port) = (c.pid(), c.port);
        // The process connects every 10 ms (each a new record) until one of its records
        // resolves to the right container and pod name: an incomplete identity (kubelet
        // directory not rescanned yet) counts as not labelled.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut next_connect = Instant::now();
        let labelled = loop {
            if Instant::now() >= deadline {
                break None;
            }
            if Instant::now() >= next_connect {
                c.connect();
                next_connect = Instant::now() + Duration::from_millis(10);
            }
            let Ok(Ok(rec)) = rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(10), rx.recv()).await
            }) else {
                continue;
            };
            let Record::Tcp(t) = &*rec else { continue };
            if t.pid != Some(pid) || t.remote.port() != port {
                continue;
            }
            let m = Instant::now();
            let id = resolver.identify(rec.subject());
            let m = m.elapsed();
            if id.get_str("container.id") == Some(cid.as_str())
                && id.get_str("k8s.pod.name") == Some(format!("new-{i}").as_str())
            {
                break Some((t0.elapsed(), m));
            }
        };
        match labelled {
            Some((t, m)) => {
                total.push(t.as_secs_f64() * 1e3);
                miss.push(m.as_secs_f64() * 1e6);
            }
            None => println!("metadata: round {i}: no labelled record within 5 s"),
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (
            v.get(v.len() / 2).copied().unwrap_or(0.0),
            v.last().copied().unwrap_or(0.0),
        )
    };
    let (t_med, t_max) = med(&mut total);
    let (m_med, m_max) = med(&mut miss);
    println!(
        "metadata: new cgroup → first labelled record: median {t_med:.1} ms, max {t_max:.1} ms over {} rounds (ring poll interval {} ms); resolve call that labelled it: median {m_med:.0} µs, max {m_max:.0} µs",
        total.len(),
        AgentConfig::default().poll_interval.as_millis()
    );
    println!("metadata: {}", resolver.stats());
    drop(tree);
    rt.block_on(agent.stop());
}
