//! The `hostscope` binary as a user runs it: `run --output json` with live records,
//! `dump` of pinned maps while it runs and after it exited, and clear errors on bad input.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use hostscope_tests::{closed_port, privileged, tls};

/// Built by `cargo xtask test` before the integration tests run.
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

fn dump(pin_dir: &PathBuf, map: &str) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
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
fn run_json_streams_records_and_dump_reads_pinned_maps() {
    if !privileged("run_json_streams_records_and_dump_reads_pinned_maps") {
        return;
    }
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/hostscope-test-{}", std::process::id()));
    let mut child = Command::new(bin())
        .args([
            "run",
            "--no-api",
            "--output",
            "json",
            "--duration",
            "6",
            "--poll-ms",
            "20",
            "--pin-dir",
        ])
        .arg(&pin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    // Ready once every probe reported its status.
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines
        .iter()
        .filter(|v: &&serde_json::Value| v["type"] == "probe_status")
        .count()
        < 21
    {
        let v = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("probe status lines");
        lines.push(v);
    }
    // Every program is attached, but for fallbacks that were not needed.
    assert!(
        lines.iter().all(|v| v["state"] == "attached"
            || v["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("not needed"))),
        "{lines:?}"
    );
    for (family, n) in [("tcp", 5), ("tls", 6), ("sys", 10)] {
        assert_eq!(
            lines.iter().filter(|v| v["family"] == family).count(),
            n,
            "{family}"
        );
    }

    let refused = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(TcpStream::connect(refused).is_err());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let held = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_held_server, _) = listener.accept().unwrap();

    let expired = tls::Server::start(&tls::pki().expired(), &["-tls1_2"]);
    let (_, ok) = tls::s_client(expired.addr, &[]);
    assert!(!ok);

    // While the agent runs, the pinned connection map shows the open connection.
    let local = held.local_addr().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let conns = dump(&pin_dir, "TCP_CONNS");
        if conns
            .iter()
            .any(|c| c["local"] == local.as_str() && c["state"] == "ESTABLISHED")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{local} not in TCP_CONNS: {conns:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let status = child.wait().unwrap();
    assert!(status.success(), "hostscope run exited with {status}");
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let failed = lines
        .iter()
        .find(|v| {
            v["type"] == "tcp"
                && v["event"] == "connect_failed"
                && v["remote"] == refused.to_string().as_str()
        })
        .unwrap_or_else(|| panic!("no connect_failed for {refused} in {lines:#?}"));
    assert_eq!(failed["failure"]["reason"], "refused");
    assert_eq!(failed["pid"], std::process::id());
    let stats = lines
        .iter()
        .rev()
        .find(|v| v["type"] == "agent_stats")
        .expect("final agent_stats line");
    assert_eq!(stats["kernel"]["tcp"]["events_lost_ring_full"], 0);

    // After exit the pins remain, and dump reads them.
    let counters = dump(&pin_dir, "TCP_STATS");
    assert!(
        counters[0]["events_emitted"].as_u64().unwrap() >= 2,
        "{counters:?}"
    );
    let failures = dump(&pin_dir, "TLS_FAILURES");
    let f = failures
        .iter()
        .find(|f| f["remote"] == expired.addr.to_string().as_str())
        .unwrap_or_else(|| panic!("no failure to {} in {failures:?}", expired.addr));
    assert_eq!(f["reason"], "certificate_expired");
    assert_eq!(f["server_name"], tls::SERVER_NAME);
    assert_eq!(f["version"], "TLSv1.2");
    let tls_line = lines
        .iter()
        .find(|v| v["type"] == "tls" && v["remote"] == expired.addr.to_string().as_str())
        .expect("the failed handshake, live");
    assert_eq!(tls_line["failure"]["reason"], "certificate_expired");
    let config = dump(&pin_dir, "TCP_CONFIG");
    assert_eq!(config[0]["keep_until_destroy"], true);
    let _ = std::fs::remove_dir_all(&pin_dir);
}

fn fails_with(args: &[&str], expected: &str) {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(expected),
        "{args:?}: stderr {err:?} lacks {expected:?}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    fails_with(&["run", "--ring-bytes", "1000"], "not a power of two");
    fails_with(&["run", "--output", "xml"], "invalid value 'xml'");
    fails_with(
        &["dump", "NOPE"],
        "known maps: TCP_CONNS, TCP_STATS, TCP_CONFIG, TLS_FAILURES",
    );
    fails_with(
        &["dump", "TCP_CONNS", "--pin-dir", "/nonexistent/hostscope"],
        "no pinned map at /nonexistent/hostscope/TCP_CONNS",
    );
}

/// The DaemonSet under deploy/ must not drift from the binary: every flag it passes is
/// one `hostscope run` accepts, and the RBAC grants the watch the metadata layer makes.
#[test]
fn deploy_manifest_uses_real_flags_and_grants_the_watch() {
    let manifest = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/hostscope.yaml"),
    )
    .unwrap();
    let help = Command::new(bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|t| t.starts_with("--"))
        .collect();
    assert_eq!(flags, ["--config"], "the ConfigMap configures the agent");
    for flag in &flags {
        assert!(
            help.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
                .any(|w| w == *flag),
            "deploy manifest passes {flag}, which `hostscope run` does not accept"
        );
    }
    // The ConfigMap's file is one the binary accepts, and asks for the API watch.
    let block: Vec<&str> = manifest
        .lines()
        .skip_while(|l| l.trim() != "config.yaml: |")
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    let config = block.join("\n");
    assert!(config.contains("kube_api: true"), "{config}");
    let dir = std::env::temp_dir().join(format!("hostscope-cm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yaml");
    std::fs::write(&file, &config).unwrap();
    let check = Command::new(bin())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "hostscope config check on the ConfigMap: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    for needed in [
        "mountPath: /etc/hostscope",
        "name: hostscope-config",
        "resources: [\"pods\", \"services\"]",
        "verbs: [\"get\", \"list\", \"watch\"]",
        "fieldPath: spec.nodeName",
        "hostPID: true",
    ] {
        assert!(manifest.contains(needed), "manifest lacks {needed}");
    }
}

/// A `hostscope run` in the background on `pin_dir`, ready once its maps are pinned.
fn run_pinned(pin_dir: &PathBuf, secs: &str) -> std::process::Child {
    let mut child = Command::new(bin())
        .args([
            "run",
            "--no-api",
            "--duration",
            secs,
            "--stats-interval",
            "0",
            "--pin-dir",
        ])
        .arg(pin_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pin_dir.join("TCP_CONNS").exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("hostscope run exited early ({status}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "maps never pinned in {pin_dir:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[test]
fn one_agent_per_pin_dir_and_a_killed_one_does_not_block() {
    if !privileged("one_agent_per_pin_dir_and_a_killed_one_does_not_block") {
        return;
    }
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/hostscope-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pin_dir);
    let mut first = run_pinned(&pin_dir, "60");
    let pinned_id = |dir: &PathBuf| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join("TCP_CONNS")).unwrap().ino()
    };
    let before = pinned_id(&pin_dir);

    // The second one refuses before loading anything, naming the first.
    let started = Instant::now();
    let out = Command::new(bin())
        .args(["run", "--no-api", "--duration", "5", "--pin-dir"])
        .arg(&pin_dir)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        !out.status.success(),
        "a second agent on the same pin dir started"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for needed in [
        format!("pid {}", first.id()),
        format!("kill {}", first.id()),
        "--pin-dir".to_string(),
        "--no-pin".to_string(),
    ] {
        assert!(err.contains(&needed), "stderr lacks {needed:?}: {err}");
    }
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    // The running agent's pins were not replaced.
    assert_eq!(pinned_id(&pin_dir), before);
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first agent stopped"
    );

    // SIGKILL: no clean-up runs; the kernel drops the lock with the process.
    first.kill().unwrap();
    first.wait().unwrap();
    let mut next = run_pinned(&pin_dir, "1");
    let status = next.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    next.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "agent after a killed one: {status}: {err}"
    );
    assert_ne!(
        pinned_id(&pin_dir),
        before,
        "the new agent pinned its own maps"
    );
    let _ = std::fs::remove_dir_all(&pin_dir);
}

#[test]
fn pin_dir_off_bpffs_fails_at_once() {
    if !privileged("pin_dir_off_bpffs_fails_at_once") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hostscope-not-bpffs-{}/pins", std::process::id()));
    let started = Instant::now();
    let out = Command::new(bin())
        .args(["run", "--no-api", "--duration", "5", "--pin-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(!out.status.success(), "pinning under /tmp succeeded?");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not on a bpffs"), "{err}");
    assert!(
        err.contains(&format!("mount -t bpf bpf {}", dir.display())),
        "{err}"
    );
    assert!(
        !err.contains("BPF_OBJ_PIN"),
        "failed late, while pinning: {err}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // Nothing was created there.
    assert!(!dir.exists());
}
