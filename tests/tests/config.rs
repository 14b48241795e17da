//! The configuration as an operator meets it, through the real binary: `config default`
//! and `config check`, bad files refused at start with the key path and line, precedence
//! of file < environment < flags, and hot reload of a running agent (a rewritten file, a
//! ConfigMap-style `..data` swap, SIGHUP, an invalid file, a restart-only key, 100 rapid
//! rewrites) with real security events, real connects and the agent's own counters.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use hostscope_tests::{closed_port, json_agent::JsonAgent, privileged};
use serde_json::Value;

fn bin() -> PathBuf {
    hostscope_tests::hostscope_bin()
}

/// A directory of its own per test, root-owned and not group/world-writable (the agent
/// refuses a config file others could rewrite).
fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/tmp/hostscope-config-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Replaces `path` atomically, as editors and `kubectl apply` tooling do.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn hostscope(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().unwrap()
}

#[test]
fn config_default_documents_every_key_and_checks_clean() {
    let out = hostscope(&["config", "default"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for key in [
        "agent:",
        "tcp:",
        "tls:",
        "syscalls:",
        "metadata:",
        "export:",
    ] {
        assert!(text.contains(key), "{key} missing:\n{text}");
    }
    assert!(text.contains("# "), "no help comments");
    let dir = test_dir("default");
    let file = dir.join("config.yaml");
    std::fs::write(&file, &text).unwrap();
    let out = hostscope(&["config", "check", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective = String::from_utf8(out.stdout).unwrap();
    assert!(
        effective.contains("pin_dir: /sys/fs/bpf/hostscope"),
        "{effective}"
    );
}

/// Every bad file is refused at start, naming the key or line, with a non-zero exit.
#[test]
fn bad_files_are_refused_with_key_path_and_line() {
    let dir = test_dir("bad");
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown",
            "syscalls:\n  watch_pathz: [/x]\n",
            &["line 2", "unknown field `watch_pathz`"],
        ),
        (
            "type",
            "tcp:\n  ring_bytes: lots\n",
            &["line 2", "tcp.ring_bytes", "invalid"],
        ),
        (
            "range",
            "agent:\n  poll_interval: 1h\n",
            &["agent.poll_interval", "not between 1ms and 10s"],
        ),
        (
            "relative",
            "syscalls:\n  watch_paths:\n    - /etc/a\n    - /etc/b\n    - etc/shadow\n",
            &[
                "line 5",
                "syscalls.watch_paths[2]",
                "\"etc/shadow\" is not an absolute path",
            ],
        ),
        ("syntax", "tcp:\n  ring_bytes: [1\n", &["line "]),
        ("empty", "", &["empty"]),
        (
            "power",
            "tcp:\n  ring_bytes: 1000\n",
            &["tcp.ring_bytes", "not a power of two"],
        ),
    ];
    for (name, text, needles) in cases {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, text).unwrap();
        for args in [
            vec![
                "run",
                "--no-api",
                "--no-prometheus",
                "--config",
                file.to_str().unwrap(),
                "--duration",
                "1",
            ],
            vec!["config", "check", file.to_str().unwrap()],
        ] {
            let started = Instant::now();
            let out = hostscope(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name}: accepted: {err}");
            for n in *needles {
                assert!(err.contains(n), "{name}: {n:?} not in: {err}");
            }
            // Refused before any probe is loaded.
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{name}: slow refusal"
            );
        }
    }
    let missing = dir.join("missing.yaml");
    let out = hostscope(&["run", "--config", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missing.yaml") && err.contains("No such file"),
        "{err}"
    );
    // A directory is not a file.
    let out = hostscope(&["config", "check", dir.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn unreadable_and_foreign_writable_files_are_refused() {
    if !privileged("unreadable_and_foreign_writable_files_are_refused") {
        return;
    }
    let dir = test_dir("perm");
    let file = dir.join("config.yaml");
    std::fs::write(&file, "{}\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Unreadable: checked as the nobody user, to whom a 0600 root file is closed.
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(bin())
        .args(["config", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "{err}"
    );
    // Writable by a non-root user: refused when the agent runs as root.
    std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
    let out = hostscope(&[
        "run",
        "--no-api",
        "--no-prometheus",
        "--config",
        file.to_str().unwrap(),
        "--duration",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("uid 65534"), "{err}");
    std::os::unix::fs::chown(&file, Some(0), None).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = hostscope(&["config", "check", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("everyone"), "{err}");
    // And a directory others may write into (they could swap the file).
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = hostscope(&["config", "check", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(dir.to_str().unwrap()),
        "{err}"
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(hostscope(&["config", "check", file.to_str().unwrap()])
        .status
        .success());
}

/// `run --print-config` shows the tree after the file and the flags, without loading.
fn effective(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(bin())
        .arg("run")
        .args(args)
        .arg("--print-config")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let dir = test_dir("precedence");
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        "agent:\n  poll_interval: 200ms\nexport:\n  endpoint: http://file.example:4317\n  timeout: 2s\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env.example:4317"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
    ];
    // The file alone.
    let t = effective(&["--config", f], &[]);
    assert!(t.contains("poll_interval: 200ms"), "{t}");
    assert!(t.contains("endpoint: http://file.example:4317/"), "{t}");
    assert!(t.contains("timeout: 2s"), "{t}");
    // The environment over the file.
    let t = effective(&["--config", f], &env);
    assert!(t.contains("endpoint: http://env.example:4317/"), "{t}");
    assert!(t.contains("timeout: 3s"), "{t}");
    // Flags over both.
    let t = effective(
        &[
            "--config",
            f,
            "--poll-ms",
            "30",
            "--otlp-endpoint",
            "http://flag.example:4317",
            "--otlp-timeout-ms",
            "700",
        ],
        &env,
    );
    assert!(t.contains("poll_interval: 30ms"), "{t}");
    assert!(t.contains("endpoint: http://flag.example:4317/"), "{t}");
    assert!(t.contains("timeout: 700ms"), "{t}");
}

/// Every `run` flag the README documents is accepted and lands in the tree.
#[test]
fn every_documented_flag_lands_in_the_tree() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    // (flag and value, what the effective tree then shows)
    let cases: &[(&[&str], &str)] = &[
        (&["--output", "json"], "output: json"),
        (&["--pin-dir", "/sys/fs/bpf/x"], "pin_dir: /sys/fs/bpf/x"),
        (&["--no-pin"], "pin: false"),
        (&["--ring-bytes", "8192"], "ring_bytes: 8192"),
        (&["--max-connections", "77"], "max_connections: 77"),
        (&["--wakeup-bytes", "123"], "wakeup_bytes: 123"),
        (&["--tls-uprobe-io"], "uprobe_io: true"),
        (&["--poll-ms", "7"], "poll_interval: 7ms"),
        (&["--stats-interval", "3"], "stats_interval: 3s"),
        (&["--syscall-hooks", "raw-tp"], "hooks: raw-tp"),
        (&["--syscall-interval", "2"], "interval: 2s"),
        (&["--syscall-by-cgroup"], "by_cgroup: true"),
        (&["--syscall-pid", "42"], "pid: 42"),
        (&["--syscall-cgroup", "4242"], "cgroup: '4242'"),
        (&["--syscall", "openat"], "- openat"),
        (&["--slow-ms", "250"], "slow_threshold: 250ms"),
        (&["--syscall-max-keys", "2048"], "max_keys: 2048"),
        (&["--error-burst-rate", "7.5"], "error_burst_rate: 7.5"),
        (&["--watch-path", "/srv/secret"], "- /srv/secret"),
        (
            &["--no-default-watch", "--watch-path", "/x"],
            "default_watch_paths: false",
        ),
        (&["--no-security"], "security: false"),
        (&["--no-metadata"], "enabled: false"),
        (&["--no-process-metadata"], "processes: false"),
        (&["--cmdline-max-bytes", "99"], "max_bytes: 99"),
        (&["--redact-arg", "pin"], "- pin"),
        (&["--kubelet-log-root", "/k"], "kubelet_log_root: /k"),
        (&["--kube-api"], "kube_api: true"),
        (&["--node-name", "n1"], "node_name: n1"),
        (
            &["--otlp-endpoint", "http://c:4318"],
            "endpoint: http://c:4318/",
        ),
        (
            &[
                "--otlp-endpoint",
                "http://c:4318",
                "--otlp-protocol",
                "http/protobuf",
            ],
            "protocol: http/protobuf",
        ),
        (
            &["--otlp-endpoint", "http://c:4318", "--otlp-header", "k=v"],
            "k: v",
        ),
        (
            &[
                "--otlp-endpoint",
                "http://c:4318",
                "--otlp-compression",
                "zstd",
            ],
            "compression: zstd",
        ),
        (
            &[
                "--otlp-endpoint",
                "http://c:4318",
                "--otlp-timeout-ms",
                "1500",
            ],
            "timeout: 1s 500ms",
        ),
        (&["--otlp-interval", "4"], "interval: 4s"),
        (&["--otlp-max-batch", "64"], "max_batch: 64"),
        (&["--otlp-queue-bytes", "4096"], "queue_bytes: 4096"),
        (&["--otlp-disk-queue", "/var/q"], "disk_queue: /var/q"),
        (
            &["--otlp-disk-queue-bytes", "8192"],
            "disk_queue_bytes: 8192",
        ),
        (&["--otlp-max-retry", "30"], "max_retry: 30s"),
        (&["--otlp-flush-timeout", "2"], "flush_timeout: 2s"),
        (&["--otlp-temporality", "delta"], "temporality: delta"),
        (
            &["--otlp-buckets", "tcp.connect.duration=0.001,0.01"],
            "tcp.connect.duration:",
        ),
        (
            &["--otlp-exponential-histograms"],
            "exponential_histograms: true",
        ),
        (&["--otlp-series-limit", "99"], "series_limit: 99"),
        (&["--otlp-metric-pids"], "metric_pids: true"),
        (&["--otlp-metric-dns-names"], "metric_dns_names: true"),
        (&["--otlp-metric-peers"], "metric_peers: true"),
        (&["--otlp-connection-spans"], "connection_spans: true"),
        (&["--otlp-failure-logs"], "failure_logs: true"),
        (&["--api-socket", "/run/x/a.sock"], "socket: /run/x/a.sock"),
        (&["--no-api"], "api:\n  enabled: false"),
        (
            &["--prometheus-listen", "127.0.0.1:9999"],
            "listen: 127.0.0.1:9999",
        ),
        (&["--no-prometheus"], "prometheus:\n  enabled: false"),
        (&["--prometheus-records"], "records: true"),
        (
            &["--otlp-resource", "service.version=1.2"],
            "service.version: '1.2'",
        ),
    ];
    for (args, shows) in cases {
        let t = effective(args, &[]);
        assert!(t.contains(shows), "{args:?}: {shows:?} not in:\n{t}");
    }
    // The PEM files are read (and checked) at start.
    let dir = test_dir("pem");
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\ny\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nz\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let t = effective(
        &[
            "--otlp-ca",
            ca.to_str().unwrap(),
            "--otlp-client-cert",
            cert.to_str().unwrap(),
            "--otlp-client-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    for p in [&ca, &cert, &key] {
        assert!(t.contains(p.to_str().unwrap()), "{t}");
    }
    // A kubeconfig must exist.
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, "apiVersion: v1\n").unwrap();
    let t = effective(&["--kubeconfig", kubeconfig.to_str().unwrap()], &[]);
    assert!(
        t.contains(&format!("kubeconfig: {}", kubeconfig.display())),
        "{t}"
    );
    let pem_flags = [
        "--otlp-ca",
        "--otlp-client-cert",
        "--otlp-client-key",
        "--kubeconfig",
    ];
    // Every flag in the README's tables is one of the above (or a non-tree flag).
    for word in readme.split(|c: char| c.is_whitespace() || c == '`' || c == '|') {
        if !word.starts_with("--") || word.len() < 4 {
            continue;
        }
        let flag = word.trim_end_matches([',', '.', ')', ';', ':']);
        let flag = flag.split('=').next().unwrap_or(flag);
        if [
            "--config",
            "--duration",
            "--print-config",
            "--list",
            "--format",
            "--help",
            "--version",
        ]
        .contains(&flag)
            || !flag
                .chars()
                .skip(2)
                .all(|c| c.is_ascii_lowercase() || c == '-')
            || !readme_flag_is_run_flag(flag)
        {
            continue;
        }
        assert!(
            cases.iter().any(|(a, _)| a.contains(&flag)) || pem_flags.contains(&flag),
            "README flag {flag} has no test here"
        );
    }
}

/// `run --help` knows it (the README also mentions cargo's and other tools' flags).
fn readme_flag_is_run_flag(flag: &str) -> bool {
    let help = Command::new(bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&help.stdout).contains(&format!("{flag} "))
        || String::from_utf8_lossy(&help.stdout).contains(&format!("{flag}\n"))
}

/// A running `hostscope run --output json` with this suite's flags.
struct Agent(JsonAgent);

impl std::ops::Deref for Agent {
    type Target = JsonAgent;
    fn deref(&self) -> &JsonAgent {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut JsonAgent {
        &mut self.0
    }
}

impl Agent {
    fn start(config: &Path, extra: &[&str]) -> Agent {
        let mut cmd = Command::new(bin());
        cmd.args([
            "run",
            "--no-api",
            "--no-prometheus",
            "--output",
            "json",
            "--no-pin",
            "--poll-ms",
            "20",
            "--stats-interval",
            "1",
        ])
        .arg("--config")
        .arg(config)
        .args(extra);
        Agent(JsonAgent::spawn(cmd, Duration::from_secs(15)))
    }

    /// Waits for a line matching `pred` (among those not yet returned) and returns it.
    fn wait(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.0.wait(timeout, "a matching line", pred)
    }

    fn reload(&mut self, timeout: Duration) -> Value {
        self.wait(timeout, |v| v["type"] == "config_reload")
    }

    fn security(&mut self, path: &str, timeout: Duration) -> Value {
        let p = path.to_string();
        self.wait(timeout, move |v| {
            v["type"] == "security" && v["path"] == p.as_str()
        })
    }

    fn stop(self) -> Vec<Value> {
        self.0.stop()
    }
}

fn stats_after(lines: &[Value]) -> Value {
    lines
        .iter()
        .rev()
        .find(|v| v["type"] == "agent_stats")
        .cloned()
        .expect("final agent_stats")
}

/// Nothing lost: no ring overflow, no lagged or undecodable record.
fn assert_nothing_lost(stats: &Value) {
    assert_eq!(stats["records_lagged"], 0, "{stats}");
    assert_eq!(stats["decode_errors"], 0, "{stats}");
    for (family, counters) in stats["kernel"].as_object().unwrap() {
        for (name, v) in counters.as_object().unwrap() {
            if name.contains("ring_full") || name.contains("lost") {
                assert_eq!(v, 0, "{family}.{name}: {stats}");
            }
        }
    }
}

fn touch_read(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, "secret").unwrap();
    let _ = std::fs::read(path).unwrap();
}

#[test]
fn reload_applies_watch_paths_live_rewrite_symlink_swap_and_sighup() {
    if !privileged("reload_applies_watch_paths_live_rewrite_symlink_swap_and_sighup") {
        return;
    }
    let dir = test_dir("reload");
    let secrets = dir.join("secrets");
    let (a, b, c) = (secrets.join("a"), secrets.join("b"), secrets.join("c"));
    // ConfigMap layout: config.yaml -> ..data/config.yaml, ..data -> ..v1
    let v1 = dir.join("..v1");
    std::fs::create_dir_all(&v1).unwrap();
    let yaml = |paths: &[&Path]| {
        let mut t = String::from("syscalls:\n  watch_paths:\n");
        for p in paths {
            t.push_str(&format!("    - {}\n", p.display()));
        }
        t
    };
    std::fs::write(v1.join("config.yaml"), yaml(&[&a])).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    let file = dir.join("config.yaml");
    std::os::unix::fs::symlink("..data/config.yaml", &file).unwrap();

    let mut agent = Agent::start(&file, &[]);
    let pid = agent.pid();
    touch_read(&a);
    agent.security(a.to_str().unwrap(), Duration::from_secs(5));
    let before = agent.wait(Duration::from_secs(3), |v| v["type"] == "agent_stats");

    // ConfigMap-style update: a new versioned directory, then `..data` swapped by rename.
    let v2 = dir.join("..v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("config.yaml"), yaml(&[&a, &b])).unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    let swapped = Instant::now();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let r = agent.reload(Duration::from_secs(5));
    assert_eq!(r["result"], "applied", "{r}");
    assert_eq!(r["generation"], 2, "{r}");
    assert!(
        r["applied"].to_string().contains("syscalls.watch_paths"),
        "{r}"
    );
    touch_read(&b);
    agent.security(b.to_str().unwrap(), Duration::from_secs(2));
    assert!(
        swapped.elapsed() < Duration::from_secs(3),
        "reload to event took {:?}",
        swapped.elapsed()
    );

    // A plain rewrite of the real file (through the symlink) and SIGHUP.
    std::fs::remove_file(dir.join("..data")).unwrap();
    std::fs::remove_file(&file).unwrap();
    write_atomic(&file, &yaml(&[&a, &b, &c]));
    let r = agent.reload(Duration::from_secs(5));
    assert_eq!(r["generation"], 3, "{r}");
    touch_read(&c);
    agent.security(c.to_str().unwrap(), Duration::from_secs(2));
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let r = agent.reload(Duration::from_secs(5));
    assert_eq!(r["result"], "applied", "{r}");
    assert_eq!(r["generation"], 4, "{r}");

    // An invalid file: refused, the running configuration keeps working.
    write_atomic(&file, "syscalls:\n  watch_paths: [relative/path]\n");
    let r = agent.reload(Duration::from_secs(5));
    assert_eq!(r["result"], "invalid", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("syscalls.watch_paths[0]"),
        "{r}"
    );
    touch_read(&b);
    agent.security(b.to_str().unwrap(), Duration::from_secs(2));
    assert!(agent.alive());

    // A restart-only key: reported, the running value kept.
    write_atomic(
        &file,
        &format!("{}tcp:\n  ring_bytes: 8388608\n", yaml(&[&a])),
    );
    let r = agent.reload(Duration::from_secs(5));
    assert_eq!(r["result"], "applied", "{r}");
    assert_eq!(
        r["needs_restart"],
        serde_json::json!(["tcp.ring_bytes"]),
        "{r}"
    );
    // Still the same agent, its probes still attached: a refused connect is reported.
    let refused = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(TcpStream::connect(refused).is_err());
    let remote = refused.to_string();
    agent.wait(Duration::from_secs(3), |v| {
        v["type"] == "tcp" && v["event"] == "connect_failed" && v["remote"] == remote.as_str()
    });
    let lines = agent.stop();
    let after = stats_after(&lines);
    // Counters were not reset by the reloads.
    assert!(
        after["records_decoded"].as_u64() >= before["records_decoded"].as_u64(),
        "{before} -> {after}"
    );
    assert_eq!(after["config"]["generation"], 5, "{after}");
    assert_eq!(after["config"]["invalid"], 1, "{after}");
    assert_eq!(
        after["config"]["pending_restart"],
        serde_json::json!(["tcp.ring_bytes"])
    );
    assert_nothing_lost(&after);
}

#[test]
fn reload_changes_a_syscall_filter() {
    if !privileged("reload_changes_a_syscall_filter") {
        return;
    }
    let dir = test_dir("filter");
    let file = dir.join("config.yaml");
    std::fs::write(&file, "syscalls:\n  interval: 500ms\n").unwrap();
    let mut agent = Agent::start(&file, &[]);
    // Only this test process's syscalls are counted once the filter is in.
    let me = std::process::id();
    write_atomic(
        &file,
        &format!("syscalls:\n  interval: 500ms\n  pid: {me}\n"),
    );
    let r = agent.reload(Duration::from_secs(5));
    assert_eq!(r["result"], "applied", "{r}");
    assert!(r["applied"].to_string().contains("syscalls.pid"), "{r}");
    // A call in flight across the reload (another process's 2 s read) is counted at its
    // exit under the old filter; after that, intervals hold this process alone. Without
    // the filter every interval would also hold the agent's own calls.
    let agent_pid = agent.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for _ in 0..100 {
            // SAFETY: getppid has no preconditions.
            unsafe { libc::getppid() };
        }
        let agg = agent.wait(Duration::from_secs(5), |v| v["type"] == "syscalls");
        let ids: Vec<u64> = agg["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .collect();
        if ids == [me as u64] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "intervals still count other processes (agent {agent_pid}): {ids:?}"
        );
    }
    agent.stop();
}

#[test]
fn a_hundred_rapid_rewrites_end_on_the_last_file() {
    if !privileged("a_hundred_rapid_rewrites_end_on_the_last_file") {
        return;
    }
    let dir = test_dir("rapid");
    let file = dir.join("config.yaml");
    let last = dir.join("secret-99");
    std::fs::write(&file, "{}\n").unwrap();
    let mut agent = Agent::start(&file, &[]);
    for i in 0..100 {
        write_atomic(
            &file,
            &format!(
                "syscalls:\n  watch_paths: [{}]\n",
                dir.join(format!("secret-{i}")).display()
            ),
        );
    }
    // The last file's path reports; an earlier one no longer does.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        touch_read(&last);
        let p = last.to_str().unwrap().to_string();
        seen = (0..10).any(|_| {
            matches!(agent.lines.recv_timeout(Duration::from_millis(100)), Ok(v) if v["type"] == "security" && v["path"] == p.as_str())
        });
    }
    assert!(seen, "the last configuration is not in effect");
    let early = dir.join("secret-3");
    touch_read(&early);
    assert!(agent.alive());
    let lines = agent.stop();
    assert!(
        !lines
            .iter()
            .any(|v| v["type"] == "security" && v["path"] == early.to_str().unwrap()),
        "an earlier file's path still reports"
    );
    let stats = stats_after(&lines);
    assert_eq!(stats["config"]["invalid"], 0, "{stats}");
    assert_nothing_lost(&stats);
}

#[test]
fn sigterm_and_sigint_stop_every_mode_with_final_counters() {
    if !privileged("sigterm_and_sigint_stop_every_mode_with_final_counters") {
        return;
    }
    for (signal, duration) in [
        (libc::SIGTERM, None),
        (libc::SIGINT, None),
        (libc::SIGTERM, Some("60")),
        (libc::SIGINT, Some("60")),
    ] {
        let mut cmd = Command::new(bin());
        cmd.args([
            "run",
            "--no-api",
            "--no-prometheus",
            "--output",
            "json",
            "--no-pin",
            "--stats-interval",
            "1",
        ]);
        if let Some(d) = duration {
            cmd.args(["--duration", d]);
        }
        // Started the way a script's background job is: SIGINT ignored on entry.
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Running: a first counters line.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("agent_stats line")
            .contains("agent_stats")
        {}
        let sent = Instant::now();
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "signal {signal}, duration {duration:?}: {status}"
        );
        assert!(
            sent.elapsed() < Duration::from_secs(3),
            "stop took {:?}",
            sent.elapsed()
        );
        // Every line up to the exit: the reader ends when stdout closes.
        let rest: Vec<String> = rx.iter().collect();
        assert!(
            rest.iter().any(|l| l.contains("\"agent_stats\"")),
            "no final counters after signal {signal}"
        );
    }
}

#[test]
fn reload_moves_export_to_another_endpoint() {
    if !privileged("reload_moves_export_to_another_endpoint") {
        return;
    }
    use hostscope_tests::otlp::{attr, logs, Receiver};
    let (first, second) = (Receiver::start("http", &[]), Receiver::start("http", &[]));
    let dir = test_dir("export");
    let file = dir.join("config.yaml");
    let yaml = |port: u16| {
        format!(
            "export:\n  endpoint: http://127.0.0.1:{port}\n  protocol: http/protobuf\n  interval: 300ms\n"
        )
    };
    std::fs::write(&file, yaml(first.port)).unwrap();
    let mut agent = Agent::start(&file, &[]);
    let refused_log = |r: &Receiver, port: u16| {
        r.wait(
            Duration::from_secs(10),
            "the refused connect's log",
            |reqs| {
                logs(reqs)
                    .iter()
                    .any(|(_, l)| attr(l, "network.peer.port") == Some(port.to_string()))
            },
        );
    };
    let a = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(TcpStream::connect(a).is_err());
    refused_log(&first, a.port());

    write_atomic(&file, &yaml(second.port));
    let r = agent.reload(Duration::from_secs(5));
    assert_eq!(r["result"], "applied", "{r}");
    assert_eq!(r["applied"], serde_json::json!(["export.endpoint"]), "{r}");
    let sent_to_first = first.requests().len();
    let b = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(TcpStream::connect(b).is_err());
    refused_log(&second, b.port());
    let lines = agent.stop();
    // Nothing new went to the old endpoint once the new one was in effect (a request
    // in flight at the switch may still land there).
    assert!(first.requests().len() <= sent_to_first + 1);
    let export = lines
        .iter()
        .rev()
        .find(|v| v["type"] == "export_stats")
        .expect("final export_stats");
    assert!(export.to_string().contains("sent"), "{export}");
}
