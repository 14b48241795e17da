//! RCA benchmark, in-process part (run by `cargo xtask bench --only rca`): a 10,000-failure
//! refused-connect storm replayed through the RCA sink's folder (classification, source and
//! target naming with the resolver, the engine) on one thread. Printed: CPU per failure
//! (thread CPU time, median of rounds) and records out vs failures in. Never asserted.

use std::{hint::black_box, sync::Arc, time::Duration};

use hostscope::{
    events::{
        tcp::{Direction, Failure, TcpEventKind, TcpRecord},
        Record,
    },
    metadata::Resolver,
    rca::{engine::Settings, sink::Folder, RcaSection},
};

const FAILURES: u64 = 10_000;

fn refused(i: u64, at: u64, pid: u32) -> Record {
    Record::Tcp(TcpRecord {
        event: TcpEventKind::ConnectFailed,
        timestamp_unix_ns: at,
        conn_id: i,
        direction: Direction::Active,
        local: "127.0.0.1:40000".parse().expect("address"),
        remote: "127.0.0.1:9".parse().expect("address"),
        remote_name: None,
        pid: Some(pid),
        tid: Some(pid),
        comm: Some("storm".into()),
        cgroup_id: None,
        state: "CLOSE",
        previous_state: "SYN_SENT",
        connect_latency_us: None,
        handshake_rtt_us: None,
        syn_retransmits: 0,
        handshake_end_unseen: false,
        failure: Some(Failure::from_errno(libc::ECONNREFUSED as u32)),
        duration_us: Some(20.0),
        bytes_acked: None,
        bytes_received: None,
        srtt_us: None,
        retransmits: None,
        resets_sent: 0,
        resets_received: 0,
    })
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let section = RcaSection::default();
    let settings = Settings {
        window: section.window,
        update_interval: section.update_interval,
        max_open: section.max_open,
    };
    // The storm lasts 5 s (2,000 failures/s), as in the issue; the clock is simulated.
    let start = 1_800_000_000_000_000_000u64;
    let step = Duration::from_secs(5).as_nanos() as u64 / FAILURES;
    let pid = std::process::id();
    let records: Vec<Record> = (0..FAILURES)
        .map(|i| refused(i, start + i * step, pid))
        .collect();
    let resolver = Arc::new(Resolver::node_local());
    let mut per_failure = Vec::new();
    let mut out = 0usize;
    let mut final_count = 0;
    for _ in 0..rounds {
        let mut folder = Folder::new(settings, resolver.clone());
        let mut emitted = Vec::new();
        let cpu = thread_cpu_ns();
        for (i, r) in records.iter().enumerate() {
            let now = start + i as u64 * step;
            folder.observe(black_box(r), now);
            if i % 250 == 0 {
                folder.tick(now);
            }
            emitted.extend(folder.take());
        }
        folder.tick(start + 5_000_000_000 + settings.window.as_nanos() as u64);
        emitted.extend(folder.take());
        per_failure.push((thread_cpu_ns() - cpu) as f64 / FAILURES as f64);
        out = emitted.len();
        final_count = emitted.last().map(|r| r.count).unwrap_or(0);
    }
    per_failure.sort_by(|a, b| a.total_cmp(b));
    println!(
        "rca replay: {FAILURES} refused connects over 5 s (one process, one port) -> {out} rca records (open, updates every {}, close), final count {final_count}; reduction {:.0}:1; CPU per failure {:.0} ns (median of {rounds}, min {:.0})",
        humantime_secs(settings.update_interval),
        FAILURES as f64 / out.max(1) as f64,
        per_failure[per_failure.len() / 2],
        per_failure[0],
    );
}

fn humantime_secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}
