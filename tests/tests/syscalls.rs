//! Syscalls family against the real kernel: a test thread makes a known number of real
//! syscalls (the agent filters on its tid, so the counts are exact), opens and execs
//! files under a watched temporary directory, and the records of the real probes are
//! checked.

use std::{
    collections::BTreeMap,
    ffi::CString,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use hostscope::{
    events::{
        syscalls::{Access, AlertKind, ProcessSyscalls, SecurityRecord, SyscallsRecord},
        Record,
    },
    loader::{
        syscalls::{SyscallHooks, SyscallOptions, SyscallRuntime},
        AttachState, LoaderConfig,
    },
    AgentConfig,
};
use hostscope_common::syscalls::latency_bucket;
use hostscope_tests::{privileged, Harness};

fn options(edit: impl FnOnce(&mut SyscallOptions)) -> AgentConfig {
    let mut syscalls = SyscallOptions {
        interval: Duration::from_millis(200),
        // Count nothing until a test thread sets its own tid (no thread has this one).
        runtime: SyscallRuntime {
            tid: Some(u32::MAX),
            ..SyscallRuntime::default()
        },
        ..SyscallOptions::default()
    };
    edit(&mut syscalls);
    AgentConfig {
        loader: LoaderConfig {
            pin_dir: None,
            syscalls,
            ..LoaderConfig::default()
        },
        poll_interval: Duration::from_millis(20),
        ..AgentConfig::default()
    }
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Runs `work` on a fresh thread once the agent counts only that thread; returns what
/// `work` returned.
fn on_filtered_thread<T: Send + 'static>(
    h: &Harness,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        go_rx.recv().unwrap();
        work()
    });
    let tid = tid_rx.recv().unwrap();
    h.agent()
        .set_syscall_runtime(SyscallRuntime {
            tid: Some(tid),
            ..SyscallRuntime::default()
        })
        .expect("runtime filter");
    go_tx.send(()).unwrap();
    worker.join().expect("worker thread")
}

fn interval_records(h: &Harness) -> Vec<SyscallsRecord> {
    h.records()
        .iter()
        .filter_map(|r| match &**r {
            Record::Syscalls(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// Per syscall name: (count, errors, timed, histogram) summed over every interval, for
/// our process only; panics if another process shows up (the filter is on our tid).
#[derive(Default, Debug)]
struct Totals {
    by_syscall: BTreeMap<String, (u64, u64, u64, Vec<u64>)>,
    errnos: BTreeMap<(String, String), u64>,
    intervals_with: BTreeMap<String, usize>,
}

fn totals(records: &[SyscallsRecord]) -> Totals {
    let me = std::process::id() as u64;
    let mut t = Totals::default();
    for r in records {
        for p in &r.processes {
            let ProcessSyscalls { id, .. } = p;
            assert_eq!(*id, me, "filtered on our tid, yet saw {p:?}");
            for s in &p.syscalls {
                let e = t
                    .by_syscall
                    .entry(s.syscall.clone())
                    .or_insert_with(|| (0, 0, 0, vec![0; s.hist.len()]));
                e.0 += s.count;
                e.1 += s.errors;
                e.2 += s.timed;
                for (a, b) in e.3.iter_mut().zip(&s.hist) {
                    *a += b;
                }
                *t.intervals_with.entry(s.syscall.clone()).or_default() += 1;
            }
            for e in &p.errnos {
                *t.errnos
                    .entry((e.syscall.clone(), e.errno_name.clone()))
                    .or_default() += e.count;
            }
        }
    }
    t
}

/// Waits until `done` holds for the totals, then two more intervals (so a double
/// count would show), and returns them.
fn settle(h: &Harness, done: impl Fn(&Totals) -> bool) -> Totals {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = totals(&interval_records(h));
        if done(&t) {
            break;
        }
        assert!(Instant::now() < deadline, "records never added up: {t:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = interval_records(h).len();
    while interval_records(h).len() < seen + 2 {
        assert!(Instant::now() < deadline + Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
    }
    totals(&interval_records(h))
}

const GETPPID_CALLS: u64 = 1000;
const EBADF_CALLS: u64 = 7;
const SLEEPS: usize = 3;
const SLEEP: Duration = Duration::from_millis(20);

/// Known syscalls on a filtered thread; returns each sleep's duration seen from
/// userspace (an upper bound of the kernel's).
fn known_workload() -> Vec<Duration> {
    for _ in 0..GETPPID_CALLS {
        // SAFETY: getppid has no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    for _ in 0..EBADF_CALLS {
        // SAFETY: closing an invalid descriptor only fails with EBADF.
        let rc = unsafe { libc::syscall(libc::SYS_close, -1) };
        assert_eq!(rc, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EBADF)
        );
    }
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: SLEEP.as_nanos() as i64,
    };
    (0..SLEEPS)
        .map(|_| {
            let start = Instant::now();
            // SAFETY: valid timespec, no remainder pointer.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_nanosleep,
                    &ts as *const libc::timespec,
                    std::ptr::null_mut::<libc::timespec>(),
                )
            };
            assert_eq!(rc, 0);
            start.elapsed()
        })
        .collect()
}

fn exact_counts(hooks: SyscallHooks, expect_program: &str, agg_slots: Option<u32>) {
    let h = Harness::start_with(options(|o| {
        o.hooks = hooks;
        o.agg_slots = agg_slots;
    }));
    for p in ["syscall_enter", "syscall_exit"] {
        let program = if expect_program == "raw" {
            format!("{p}_raw")
        } else {
            p.to_string()
        };
        let st = h
            .agent()
            .report()
            .iter()
            .find(|s| s.program == program)
            .unwrap_or_else(|| panic!("{program} not in the report"));
        assert_eq!(st.state, AttachState::Attached, "{st}");
    }
    let sleeps = on_filtered_thread(&h, known_workload);
    let t = settle(&h, |t| {
        t.by_syscall.get("nanosleep").map(|s| s.0) == Some(SLEEPS as u64)
            && t.by_syscall.get("getppid").map(|s| s.0) == Some(GETPPID_CALLS)
    });

    // Records name the process by its command, not by the calling thread's name.
    let own = std::fs::read_to_string("/proc/self/comm").unwrap();
    for r in interval_records(&h) {
        for p in &r.processes {
            assert_eq!(p.comm, own.trim_end(), "{p:?}");
        }
    }

    let getppid = &t.by_syscall["getppid"];
    assert_eq!((getppid.0, getppid.1), (GETPPID_CALLS, 0), "{t:#?}");
    assert_eq!(getppid.2, GETPPID_CALLS, "every getppid timed");
    assert_eq!(getppid.3.iter().sum::<u64>(), GETPPID_CALLS);

    let close = &t.by_syscall["close"];
    assert_eq!((close.0, close.1), (EBADF_CALLS, EBADF_CALLS), "{t:#?}");
    assert_eq!(
        t.errnos.get(&("close".to_string(), "EBADF".to_string())),
        Some(&EBADF_CALLS),
        "{t:#?}"
    );
    assert_eq!(
        t.errnos.values().sum::<u64>(),
        t.by_syscall.values().map(|s| s.1).sum::<u64>(),
        "errors by errno add up to the error counts"
    );

    // Each sleep took at least SLEEP and at most what userspace measured around it.
    let nanosleep = &t.by_syscall["nanosleep"];
    assert_eq!(nanosleep.0, SLEEPS as u64);
    let lo = latency_bucket(SLEEP.as_nanos() as u64);
    let hi = sleeps
        .iter()
        .map(|d| latency_bucket(d.as_nanos() as u64))
        .max()
        .unwrap();
    let in_range: u64 = nanosleep.3[lo..=hi].iter().sum();
    assert_eq!(
        in_range, SLEEPS as u64,
        "buckets {lo}..={hi}: {:?}",
        nanosleep.3
    );
    if lo == hi {
        assert_eq!(nanosleep.3[lo], SLEEPS as u64);
    }

    let mut h = h;
    let stats = h.stop();
    let sys = &stats.kernel["syscalls"];
    assert_eq!(sys["agg_map_full"], 0, "{stats}");
    assert_eq!(sys["error_map_full"], 0, "{stats}");
}

#[test]
fn known_syscalls_are_counted_exactly_tp_btf() {
    if !privileged("known_syscalls_are_counted_exactly_tp_btf") {
        return;
    }
    exact_counts(SyscallHooks::TpBtf, "btf", None);
}

#[test]
fn raw_tracepoint_fallback_counts_exactly() {
    if !privileged("raw_tracepoint_fallback_counts_exactly") {
        return;
    }
    exact_counts(SyscallHooks::RawTp, "raw", None);
}

/// One per-CPU slot per generation: the first key of each interval counts in it, every
/// other key in the hash map, and the agent adds both up.
#[test]
fn keys_beyond_the_per_cpu_slots_count_exactly() {
    if !privileged("keys_beyond_the_per_cpu_slots_count_exactly") {
        return;
    }
    exact_counts(SyscallHooks::TpBtf, "btf", Some(1));
}

/// Counts held in the per-CPU slots reach userspace at the agent's stop, not only at
/// its interval (60 s here: no interval read happens before the stop).
#[test]
fn slot_counts_reach_userspace_at_stop() {
    if !privileged("slot_counts_reach_userspace_at_stop") {
        return;
    }
    let h = Harness::start_with(options(|o| o.interval = Duration::from_secs(60)));
    on_filtered_thread(&h, || {
        for _ in 0..GETPPID_CALLS {
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
    });
    assert!(
        interval_records(&h).is_empty(),
        "no interval read before the stop"
    );
    let mut h = h;
    let stats = h.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    let t = loop {
        let t = totals(&interval_records(&h));
        if t.by_syscall.contains_key("getppid") || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let getppid = t
        .by_syscall
        .get("getppid")
        .expect("getppid in the final record");
    assert_eq!(
        (getppid.0, getppid.2),
        (GETPPID_CALLS, GETPPID_CALLS),
        "{t:#?}"
    );
    assert_eq!(stats.kernel["syscalls"]["agg_map_full"], 0, "{stats}");
}

#[test]
fn counts_survive_interval_reads_without_loss_or_double_counting() {
    if !privileged("counts_survive_interval_reads_without_loss_or_double_counting") {
        return;
    }
    let h = Harness::start_with(options(|o| o.interval = Duration::from_millis(100)));
    // Calls for a second, across ~10 generation flips.
    let made = on_filtered_thread(&h, || {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(1) {
            for _ in 0..100 {
                // SAFETY: getppid has no arguments and cannot fail.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            n += 100;
        }
        n
    });
    let t = settle(&h, |t| {
        t.by_syscall.get("getppid").map(|s| s.0).unwrap_or(0) >= made
    });
    let getppid = &t.by_syscall["getppid"];
    assert_eq!(getppid.0, made, "counted {} of {made} calls", getppid.0);
    let intervals = t.intervals_with["getppid"];
    assert!(
        intervals >= 3,
        "the calls should span several reads, spanned {intervals}"
    );
}

struct WatchDir {
    root: PathBuf,
}

impl WatchDir {
    fn new(tag: &str) -> WatchDir {
        let root = std::env::temp_dir().join(format!("hostscope-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("watched/deeper/nested")).unwrap();
        std::fs::write(root.join("watched/secret"), b"s").unwrap();
        std::fs::write(root.join("watched/deeper/nested/key"), b"k").unwrap();
        std::fs::write(root.join("watchedX"), b"x").unwrap();
        std::fs::write(root.join("unwatched"), b"u").unwrap();
        WatchDir { root }
    }

    fn path(&self, rel: &str) -> String {
        self.root.join(rel).to_string_lossy().into_owned()
    }
}

impl Drop for WatchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn security(h: &Harness, path: &str) -> Vec<SecurityRecord> {
    h.records()
        .iter()
        .filter_map(|r| match &**r {
            Record::Security(s) if s.path == path => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn wait_security(h: &Harness, path: &str) -> SecurityRecord {
    wait_access(h, path, Access::Open)
}

fn wait_access(h: &Harness, path: &str, access: Access) -> SecurityRecord {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = security(h, path).into_iter().find(|r| r.access == access) {
            return r;
        }
        assert!(Instant::now() < deadline, "no security event for {path}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens with openat(AT_FDCWD, path, O_RDONLY|O_CLOEXEC) on this thread; returns the
/// result and the thread id.
fn open_here(path: &str) -> (i64, u32) {
    let c = CString::new(path).unwrap();
    // SAFETY: valid NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    let ret = if fd >= 0 {
        // SAFETY: we own the descriptor just opened.
        unsafe { libc::close(fd as i32) };
        fd
    } else {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    };
    (ret, gettid())
}

#[test]
fn watched_paths_emit_security_events_with_result() {
    if !privileged("watched_paths_emit_security_events_with_result") {
        return;
    }
    let dir = WatchDir::new("sec");
    let prefix = format!("{}/", dir.path("watched"));
    let h = Harness::start_with(options(|o| o.watch_paths = vec![prefix.clone()]));

    let unwatched = dir.path("unwatched");
    let sibling = dir.path("watchedX");
    let secret = dir.path("watched/secret");
    let deep = dir.path("watched/deeper/nested/key");
    let missing = dir.path("watched/missing");
    let (r_unwatched, _) = open_here(&unwatched);
    let (r_sibling, _) = open_here(&sibling);
    assert!(r_unwatched >= 0 && r_sibling >= 0);
    let (r_secret, tid) = open_here(&secret);
    let (r_deep, _) = open_here(&deep);
    let (r_missing, _) = open_here(&missing);
    assert!(r_secret >= 0 && r_deep >= 0);
    assert_eq!(r_missing, -(libc::ENOENT as i64));

    let ev = wait_security(&h, &secret);
    assert_eq!(ev.access, Access::Open);
    assert_eq!(ev.syscall, "openat");
    assert_eq!(ev.pid, std::process::id());
    assert_eq!(ev.tid, tid);
    // SAFETY: plain getters.
    let (uid, ppid) = unsafe { (libc::geteuid(), libc::getppid()) };
    assert_eq!(ev.uid, uid);
    assert_eq!(ev.ppid, Some(ppid as u32));
    assert_eq!(ev.result, r_secret);
    assert_eq!(ev.flags as i32 & libc::O_CLOEXEC, libc::O_CLOEXEC);
    assert!(ev.cgroup_id != 0);
    assert!(!ev.truncated);
    assert!(ev.errno_name.is_none());

    // A path longer than the watched prefix matches, with its full path.
    let ev = wait_security(&h, &deep);
    assert_eq!(ev.result, r_deep);
    // A failed open is reported with its errno.
    let ev = wait_security(&h, &missing);
    assert_eq!(ev.result, -(libc::ENOENT as i64));
    assert_eq!(ev.errno_name.as_deref(), Some("ENOENT"));

    // The events above were emitted after these opens: no event for them.
    std::thread::sleep(Duration::from_millis(100));
    assert!(security(&h, &unwatched).is_empty(), "unwatched file");
    assert!(security(&h, &sibling).is_empty(), "prefix is the directory");

    // exec of a watched binary: event in the child, parent is us.
    let tool = dir.path("watched/tool");
    std::fs::copy(find_true(), &tool).unwrap();
    let status = std::process::Command::new(&tool).status().unwrap();
    assert!(status.success());
    // Creating it was an open for writing, of a watched path too.
    let created = wait_security(&h, &tool);
    assert_eq!(created.flags as i32 & libc::O_WRONLY, libc::O_WRONLY);
    assert!(created.result >= 0);
    let ev = wait_access(&h, &tool, Access::Exec);
    assert_eq!(ev.syscall, "execve");
    assert_eq!(ev.result, 0);
    assert_eq!(ev.ppid, Some(std::process::id()));
    assert_ne!(ev.pid, std::process::id());

    // execveat(AT_FDCWD, path, NULL, NULL, 0), as a child process makes it.
    let tool2 = dir.path("watched/tool2");
    std::fs::copy(find_true(), &tool2).unwrap();
    let child = std::process::Command::new("perl")
        .arg("-e")
        .arg(format!(
            "syscall({}, -100, $ARGV[0], 0, 0, 0); exit 3",
            libc::SYS_execveat
        ))
        .arg(&tool2)
        .status()
        .unwrap();
    assert!(child.success(), "execveat did not run the tool: {child}");
    let ev = wait_access(&h, &tool2, Access::Exec);
    assert_eq!(ev.syscall, "execveat");
    assert_eq!(ev.result, 0);

    let mut h = h;
    let stats = h.stop();
    let sys = &stats.kernel["syscalls"];
    assert_eq!(sys["events_lost_ring_full"], 0, "{stats}");
    assert_eq!(sys["security_pending_full"], 0, "{stats}");
}

fn find_true() -> &'static Path {
    ["/usr/bin/true", "/bin/true"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("a `true` binary")
}

#[test]
fn full_aggregation_map_is_counted() {
    if !privileged("full_aggregation_map_is_counted") {
        return;
    }
    let h = Harness::start_with(options(|o| {
        o.max_keys = Some(2);
        o.agg_slots = Some(1);
        o.interval = Duration::from_secs(60);
    }));
    on_filtered_thread(&h, || {
        // SAFETY: argument-less getters and an invalid close.
        unsafe {
            libc::syscall(libc::SYS_getppid);
            libc::syscall(libc::SYS_getpid);
            libc::syscall(libc::SYS_getuid);
            libc::syscall(libc::SYS_getgid);
            libc::syscall(libc::SYS_close, -1);
        }
    });
    let mut h = h;
    let stats = h.stop();
    assert!(
        stats.kernel["syscalls"]["agg_map_full"] >= 2,
        "5 distinct syscalls into 1 per-CPU slot and 2 keys: {stats}"
    );
}

// ---- the binary: flags, dump of the syscall maps, bad input -------------------------------

fn bin() -> PathBuf {
    let path = std::env::var_os("HOSTSCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hostscope")
        });
    assert!(
        path.exists(),
        "{} missing: build it with `cargo build -p hostscope` (cargo xtask test does)",
        path.display()
    );
    path
}

fn dump_json(pin_dir: &Path, map: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(bin())
        .args(["dump", map, "--format", "json", "--pin-dir"])
        .arg(pin_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump {map}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("dump prints JSON lines"))
        .collect()
}

#[test]
fn dump_decodes_the_syscall_maps_while_running() {
    if !privileged("dump_decodes_the_syscall_maps_while_running") {
        return;
    }
    let dir = WatchDir::new("dump");
    let watched = format!("{}/", dir.path("watched"));
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/hostscope-sys-{}", std::process::id()));
    let me = std::process::id().to_string();
    let mut child = std::process::Command::new(bin())
        .args([
            "run",
            "--no-api",
            "--no-prometheus",
            "--output",
            "none",
            "--duration",
            "4",
        ])
        .args(["--syscall-interval", "60", "--syscall-pid", &me])
        .args([
            "--syscall",
            "getppid",
            "--syscall",
            "close",
            "--slow-ms",
            "500",
        ])
        .args(["--no-default-watch", "--watch-path", &watched, "--pin-dir"])
        .arg(&pin_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pin_dir.join("WATCHED_PATHS").exists() {
        assert!(Instant::now() < deadline, "agent never pinned its maps");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..25 {
        // SAFETY: getppid has no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let rows = dump_json(&pin_dir, "SYSCALL_AGG");
    let getppid: u64 = rows
        .iter()
        .filter(|r| {
            r["syscall"] == "getppid" && r["id"].as_u64() == Some(std::process::id() as u64)
        })
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(getppid, 25, "{rows:#?}");
    assert!(
        rows.iter()
            .all(|r| r["syscall"] == "getppid" || r["syscall"] == "close"),
        "allow-list: {rows:#?}"
    );
    let config = dump_json(&pin_dir, "SYSCALL_CONFIG");
    assert_eq!(config[0]["pid"].as_u64(), Some(std::process::id() as u64));
    assert_eq!(config[0]["slow_ns"], 500_000_000);
    assert_eq!(
        config[0]["syscalls"],
        serde_json::json!(["close", "getppid"])
    );
    let paths = dump_json(&pin_dir, "WATCHED_PATHS");
    assert_eq!(paths, vec![serde_json::json!({ "path": watched })]);
    let stats = dump_json(&pin_dir, "SYSCALL_STATS");
    assert_eq!(stats[0]["agg_map_full"], 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "hostscope run exited with {status}");
    let _ = std::fs::remove_dir_all(&pin_dir);
}

fn fails_with(args: &[&str], expected: &str) {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(expected),
        "{args:?}: stderr {err:?} lacks {expected:?}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

#[test]
fn bad_syscall_options_get_a_clear_error() {
    fails_with(
        &["run", "--watch-path", "etc/shadow"],
        "is not an absolute path",
    );
    fails_with(&["run", "--syscall", "no_such_call"], "unknown syscall");
    fails_with(&["run", "--syscall-interval", "0"], "not between");
    fails_with(
        &["run", "--syscall-hooks", "kprobe"],
        "invalid value 'kprobe'",
    );
    fails_with(&["run", "--syscall", "9999"], "beyond the filter's range");
    fails_with(&["dump", "NOPE"], "SYSCALL_AGG");
}

/// Our cgroup v2 id: the inode of our directory under the cgroup2 mount.
fn own_cgroup_id() -> u64 {
    use std::os::unix::fs::MetadataExt;
    let root = hostscope::kernel::mounts::find("cgroup2")
        .unwrap()
        .expect("cgroup2 mounted");
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("cgroup v2 line");
    let dir = root.join(rel.trim_start_matches('/'));
    std::fs::metadata(&dir).unwrap().ino()
}

#[test]
fn cgroup_filter_changes_at_run_time_without_reload() {
    if !privileged("cgroup_filter_changes_at_run_time_without_reload") {
        return;
    }
    let h = Harness::start_with(options(|_| {}));
    let mine = own_cgroup_id();
    let set = |cgroup_id| {
        h.agent()
            .set_syscall_runtime(SyscallRuntime {
                cgroup_id: Some(cgroup_id),
                syscalls: vec![libc::SYS_getppid as u32],
                ..SyscallRuntime::default()
            })
            .unwrap()
    };
    let getppid = |n: u64| {
        for _ in 0..n {
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
    };
    set(mine);
    getppid(300);
    // Another cgroup (no cgroup has this id): ours is no longer counted.
    set(u64::MAX);
    getppid(500);
    let me = std::process::id() as u64;
    let count = |h: &Harness| -> u64 {
        interval_records(h)
            .iter()
            .flat_map(|r| r.processes.iter())
            .filter(|p| p.id == me)
            .flat_map(|p| p.syscalls.iter())
            .filter(|s| s.syscall == "getppid")
            .map(|s| s.count)
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&h) < 300 {
        assert!(Instant::now() < deadline, "counted {}", count(&h));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&h), 300);
    // Only getppid passed the allow-list.
    for r in interval_records(&h) {
        for p in &r.processes {
            assert!(p.syscalls.iter().all(|s| s.syscall == "getppid"), "{p:?}");
        }
    }
}

#[test]
fn error_bursts_and_slow_calls_are_detected() {
    if !privileged("error_bursts_and_slow_calls_are_detected") {
        return;
    }
    let h = Harness::start_with(options(|o| {
        o.interval = Duration::from_millis(300);
        o.error_burst_per_s = 100.0;
        o.error_burst_min = 20;
    }));
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        go_rx.recv().unwrap();
        for _ in 0..500 {
            // SAFETY: closing an invalid descriptor only fails with EBADF.
            unsafe { libc::syscall(libc::SYS_close, -1) };
        }
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 30_000_000,
        };
        // SAFETY: valid timespec, no remainder pointer.
        unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &ts as *const libc::timespec,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
    });
    let tid = tid_rx.recv().unwrap();
    h.agent()
        .set_syscall_runtime(SyscallRuntime {
            tid: Some(tid),
            slow_ns: Some(10_000_000),
            ..SyscallRuntime::default()
        })
        .unwrap();
    go_tx.send(()).unwrap();
    worker.join().unwrap();

    let me = std::process::id() as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (burst, slow_alert, slow_event) = loop {
        let records = h.records();
        let alert = |kind, syscall: &str| {
            records.iter().find_map(|r| match &**r {
                Record::SyscallAlert(a) if a.kind == kind && a.id == me && a.syscall == syscall => {
                    Some(a.clone())
                }
                _ => None,
            })
        };
        let burst = alert(AlertKind::ErrorBurst, "close");
        let slow = alert(AlertKind::Slow, "nanosleep");
        let event = records.iter().find_map(|r| match &**r {
            Record::SyscallSlow(s) if s.tid == tid => Some(s.clone()),
            _ => None,
        });
        if let (Some(b), Some(s), Some(e)) = (burst, slow, event) {
            break (b, s, e);
        }
        assert!(
            Instant::now() < deadline,
            "no burst/slow alert or slow event"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(burst.syscall, "close");
    assert_eq!(burst.errno_name.as_deref(), Some("EBADF"));
    assert!(burst.count >= 20 && burst.count <= 500, "{burst:?}");
    assert_eq!(slow_alert.syscall, "nanosleep");
    assert_eq!(slow_alert.count, 1);
    assert_eq!(slow_event.syscall, "nanosleep");
    assert_eq!(slow_event.pid as u64, me);
    assert!(slow_event.latency_ns >= 30_000_000, "{slow_event:?}");
    assert_eq!(slow_event.result, 0);
    // Only calls over the threshold became detailed events: the closes did not.
    assert!(h
        .records()
        .iter()
        .all(|r| !matches!(&**r, Record::SyscallSlow(s) if s.syscall == "close")));
}

#[test]
fn slow_event_ring_overflow_is_counted_not_silent() {
    if !privileged("slow_event_ring_overflow_is_counted_not_silent") {
        return;
    }
    // A one-page ring and a 1 ns threshold: every call is a detailed event.
    let h = Harness::start_with(options(|o| {
        o.ring_bytes = 4096;
        o.security = false;
    }));
    const CALLS: u64 = 2000;
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        go_rx.recv().unwrap();
        for _ in 0..CALLS {
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
    });
    let tid = tid_rx.recv().unwrap();
    h.agent()
        .set_syscall_runtime(SyscallRuntime {
            tid: Some(tid),
            syscalls: vec![libc::SYS_getppid as u32],
            slow_ns: Some(1),
            ..SyscallRuntime::default()
        })
        .unwrap();
    go_tx.send(()).unwrap();
    worker.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut h = h;
    let stats = h.stop();
    let sys = &stats.kernel["syscalls"];
    let (emitted, lost) = (sys["events_emitted"], sys["events_lost_ring_full"]);
    assert!(lost > 0, "a 4 KiB ring cannot hold {CALLS} events: {stats}");
    assert_eq!(emitted + lost, CALLS, "{stats}");
    let received = h
        .records()
        .iter()
        .filter(|r| matches!(&***r, Record::SyscallSlow(s) if s.tid == tid))
        .count() as u64;
    assert_eq!(received, emitted, "{stats}");
    assert_eq!(
        stats.total_lost(),
        lost + stats.kernel["tcp"]["events_lost_ring_full"]
    );
}

fn default_watch_paths() -> Vec<String> {
    hostscope::loader::syscalls::DEFAULT_WATCH_PATHS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Opens `path` then `/etc/shadow` (watched by default) on this thread and waits for
/// the second's event: the ring delivers one thread's events in order, so any event of
/// `path` has arrived by then. Returns the events of `path` seen.
fn open_then_marker(h: &Harness, path: &str) -> Vec<SecurityRecord> {
    let before = security(h, "/etc/shadow").len();
    open_here(path);
    open_here("/etc/shadow");
    let deadline = Instant::now() + Duration::from_secs(2);
    while security(h, "/etc/shadow").len() <= before {
        assert!(
            Instant::now() < deadline,
            "no event for the default path /etc/shadow within 2 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    security(h, path)
}

#[test]
fn watched_paths_change_live() {
    if !privileged("watched_paths_change_live") {
        return;
    }
    let dir = WatchDir::new("live-watch");
    let secret = dir.path("watched/secret");
    let h = Harness::start_with(options(|_| {}));
    assert_eq!(
        open_then_marker(&h, &secret).len(),
        0,
        "watched before adding"
    );

    let mut paths = default_watch_paths();
    paths.push(secret.clone());
    h.agent()
        .set_watch_paths(&paths)
        .expect("add a watched path");
    assert!(h.agent().watch_paths().contains(&secret));
    let started = Instant::now();
    open_here(&secret);
    let deadline = started + Duration::from_secs(2);
    while security(&h, &secret).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no event for {secret} within 2 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Removed: no event, while a default path still reports.
    h.agent()
        .set_watch_paths(&default_watch_paths())
        .expect("remove a watched path");
    assert!(!h.agent().watch_paths().contains(&secret));
    assert_eq!(open_then_marker(&h, &secret).len(), 1, "still watched");

    // Refused changes leave the trie as it was.
    let before = h.agent().watch_paths();
    let err = h
        .agent()
        .set_watch_paths(&["relative/path".to_string()])
        .unwrap_err();
    assert!(err.to_string().contains("is not an absolute path"), "{err}");
    let too_many: Vec<String> = (0..=hostscope_common::syscalls::WATCHED_PATHS_MAX)
        .map(|i| format!("/hostscope-many/{i}"))
        .collect();
    let err = h.agent().set_watch_paths(&too_many).unwrap_err();
    assert!(err.to_string().contains("too many watched paths"), "{err}");
    assert_eq!(h.agent().watch_paths(), before);
    assert_eq!(open_then_marker(&h, &secret).len(), 1);

    let mut h = h;
    let stats = h.stop();
    assert_eq!(stats.kernel["syscalls"]["events_lost_ring_full"], 0);

    let off = Harness::start_with(options(|o| o.security = false));
    let err = off.agent().set_watch_paths(&[secret]).unwrap_err();
    assert!(err.to_string().contains("not attached"), "{err}");
}

fn close_bursts(h: &Harness) -> Vec<hostscope::events::syscalls::SyscallAlert> {
    let me = std::process::id() as u64;
    h.records()
        .iter()
        .filter_map(|r| match &**r {
            Record::SyscallAlert(a)
                if a.kind == AlertKind::ErrorBurst && a.id == me && a.syscall == "close" =>
            {
                Some(a.clone())
            }
            _ => None,
        })
        .collect()
}

fn close_ebadf(n: usize) {
    for _ in 0..n {
        // SAFETY: closing an invalid descriptor only fails with EBADF.
        unsafe { libc::syscall(libc::SYS_close, -1) };
    }
}

#[test]
fn syscall_alert_settings_change_live() {
    if !privileged("syscall_alert_settings_change_live") {
        return;
    }
    // A burst threshold no burst here reaches.
    let h = Harness::start_with(options(|o| {
        o.interval = Duration::from_millis(200);
        o.error_burst_per_s = 1e9;
        o.error_burst_min = 20;
    }));
    on_filtered_thread(&h, || close_ebadf(300));
    let t = settle(&h, |t| {
        t.errnos.get(&("close".into(), "EBADF".into())) == Some(&300)
    });
    assert_eq!(t.errnos[&("close".into(), "EBADF".into())], 300);
    assert!(close_bursts(&h).is_empty(), "{:?}", close_bursts(&h));

    // Lowered live: the same burst now alerts, with nothing reloaded or reset.
    h.agent()
        .set_syscall_alerts(Duration::from_millis(200), 100.0, 20)
        .unwrap();
    on_filtered_thread(&h, || close_ebadf(300));
    let deadline = Instant::now() + Duration::from_secs(5);
    while close_bursts(&h).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no error-burst alert after lowering"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let burst = &close_bursts(&h)[0];
    assert_eq!(burst.errno_name.as_deref(), Some("EBADF"));
    assert!((20..=300).contains(&burst.count), "{burst:?}");
    let t = settle(&h, |t| {
        t.errnos.get(&("close".into(), "EBADF".into())) == Some(&600)
    });
    assert_eq!(
        t.errnos[&("close".into(), "EBADF".into())],
        600,
        "lost or doubled"
    );

    // A longer interval applies from the next tick.
    h.agent()
        .set_syscall_alerts(Duration::from_millis(700), 100.0, 20)
        .unwrap();
    let seen = interval_records(&h).len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while interval_records(&h).len() < seen + 3 {
        assert!(Instant::now() < deadline, "intervals stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after: Vec<f64> = interval_records(&h)[seen + 1..]
        .iter()
        .map(|r| r.interval_s)
        .collect();
    assert!(
        after.iter().all(|s| (0.6..1.0).contains(s)),
        "intervals after the change: {after:?}"
    );

    let err = h
        .agent()
        .set_syscall_alerts(Duration::ZERO, 100.0, 20)
        .unwrap_err();
    assert!(err.to_string().contains("interval"), "{err}");
    let err = h
        .agent()
        .set_syscall_alerts(Duration::from_secs(1), f64::NAN, 20)
        .unwrap_err();
    assert!(err.to_string().contains("error-burst rate"), "{err}");
}
