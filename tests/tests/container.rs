//! The DaemonSet manifest, its ConfigMap, the binary and the image stay in step: the
//! ConfigMap's file passes `hostscope config check`, the container's arguments parse, and
//! the image from `cargo xtask image` runs under Debian's `runc` with exactly the
//! capabilities, namespaces and host mounts the manifest names (read from the manifest
//! here, so the two cannot drift), attaches the TCP, TLS-wire and syscall programs, sees a
//! refused connect made on the host, and says why the OpenSSL uprobes do not attach
//! without CAP_SYS_ADMIN.
//!
//! The image: `$HOSTSCOPE_IMAGE` (an OCI archive; `cargo xtask test` builds it once),
//! else `cargo xtask image` is run here.

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use hostscope_tests::{hostscope_bin, privileged};
use serde_json::{json, Value as Json};
use serde_yaml_ng::Value;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every document of deploy/kubernetes/hostscope.yaml.
fn manifest() -> Vec<Value> {
    let path = workspace().join("deploy/kubernetes/hostscope.yaml");
    let text = std::fs::read_to_string(&path).expect("reading the manifest");
    text.split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).expect("the manifest is valid YAML"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("the manifest has no {kind}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string: {v:?}"))
}

/// The pod spec and the hostscope container of the DaemonSet.
fn pod_and_container(docs: &[Value]) -> (&Value, &Value) {
    let pod = &kind(docs, "DaemonSet")["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_sequence()
        .and_then(|c| c.iter().find(|c| c["name"].as_str() == Some("hostscope")))
        .expect("a container named hostscope");
    (pod, container)
}

fn container_args(container: &Value) -> Vec<String> {
    container["args"]
        .as_sequence()
        .expect("container args")
        .iter()
        .map(|a| str_of(a).to_string())
        .collect()
}

/// The capabilities the manifest adds, as runc names them (CAP_…).
fn manifest_capabilities(container: &Value) -> Vec<String> {
    container["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("securityContext.capabilities.add")
        .iter()
        .map(|c| format!("CAP_{}", str_of(c)))
        .collect()
}

/// The ConfigMap's config.yaml written to a file.
fn configmap_file(docs: &[Value], dir: &Path) -> PathBuf {
    let text = str_of(&kind(docs, "ConfigMap")["data"]["config.yaml"]);
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn scratch(name: &str) -> PathBuf {
    let dir = workspace().join("target/container-test").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn configmap_passes_config_check() {
    let docs = manifest();
    let file = configmap_file(&docs, &scratch("configmap"));
    let out = Command::new(hostscope_bin())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hostscope config check on the ConfigMap's file failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn container_args_parse_and_read_the_configmap() {
    let docs = manifest();
    let (_, container) = pod_and_container(&docs);
    let args = container_args(container);
    assert_eq!(args[0], "run", "the container runs the agent: {args:?}");
    // The file the args name is the ConfigMap's, mounted at its mountPath.
    let config_at = args
        .iter()
        .position(|a| a == "--config")
        .map(|i| PathBuf::from(&args[i + 1]))
        .expect("--config in the args");
    let dir = scratch("args");
    let file = configmap_file(&docs, &dir);
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if Path::new(a) == config_at {
                file.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let out = Command::new(hostscope_bin())
        .args(&args)
        .arg("--print-config")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hostscope {args:?} --print-config failed: {printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let endpoint = kind(&docs, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .and_then(|t| serde_yaml_ng::from_str::<Value>(t).ok())
        .and_then(|c| c["export"]["endpoint"].as_str().map(String::from))
        .expect("the ConfigMap names an OTLP endpoint");
    assert!(
        printed.contains(&endpoint),
        "the effective configuration does not come from the ConfigMap:\n{printed}"
    );
}

#[test]
fn security_context_is_least_privilege() {
    let docs = manifest();
    let (pod, container) = pod_and_container(&docs);
    let sc = &container["securityContext"];
    assert_ne!(sc["privileged"].as_bool(), Some(true), "privileged: true");
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    let drop: Vec<&str> = sc["capabilities"]["drop"]
        .as_sequence()
        .expect("capabilities.drop")
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(drop, ["ALL"]);
    let add = manifest_capabilities(container);
    for needed in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
        assert!(add.iter().any(|c| c == needed), "{needed} missing: {add:?}");
    }
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    // Every mount names a volume that exists, and every hostPath is absolute.
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    for m in container["volumeMounts"].as_sequence().expect("mounts") {
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume for {m:?}"));
        if let Some(p) = v["hostPath"]["path"].as_str() {
            assert!(p.starts_with('/'), "{p}");
        }
    }
}

/// A tool the container test needs; under CI=true its absence fails the test.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let why = format!("{tool} missing (cargo xtask image installs it)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{why} (CI=true: this test must run)");
        }
        eprintln!("SKIPPED: {why}");
    }
    found
}

fn run_ok(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The OCI archive: $HOSTSCOPE_IMAGE, or `cargo xtask image` run now.
fn image_archive() -> PathBuf {
    if let Some(p) = std::env::var_os("HOSTSCOPE_IMAGE") {
        return PathBuf::from(p);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_ok(
        Command::new(cargo)
            .current_dir(workspace())
            .args(["xtask", "image"]),
    );
    workspace().join("target/image/hostscope-oci.tar")
}

/// The runc bundle: the image unpacked, its config.json made from the manifest's pod:
/// capabilities (exactly the `add` list), namespaces (hostPID, hostNetwork), the
/// read-only root, and every volume mount (hostPath bind-mounted like the kubelet does,
/// the ConfigMap from `config_dir`). rlimits are dropped (ENGINEERING.md §6).
fn bundle(dir: &Path, archive: &Path, docs: &[Value], config_dir: &Path, args: &[String]) {
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg("-q")
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("oci:{}:hostscope", layout.display())),
    );
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:hostscope", layout.display()))
            .arg(&bundle),
    );
    let path = bundle.join("config.json");
    let mut spec: Json = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let (pod, container) = pod_and_container(docs);

    let caps = manifest_capabilities(container);
    spec["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps,
    });
    spec["process"].as_object_mut().unwrap().remove("rlimits");
    spec["process"]["terminal"] = json!(false);
    spec["process"]["noNewPrivileges"] =
        json!(container["securityContext"]["allowPrivilegeEscalation"].as_bool() == Some(false));
    let mut argv = vec!["/usr/local/bin/hostscope".to_string()];
    argv.extend(args.iter().cloned());
    spec["process"]["args"] = json!(argv);
    spec["root"]["readonly"] =
        json!(container["securityContext"]["readOnlyRootFilesystem"].as_bool() == Some(true));

    let mut host_ns = Vec::new();
    if pod["hostPID"].as_bool() == Some(true) {
        host_ns.push("pid");
    }
    if pod["hostNetwork"].as_bool() == Some(true) {
        host_ns.push("network");
    }
    let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| !host_ns.contains(&n["type"].as_str().unwrap_or("")));

    // The runtime's own /sys/fs/cgroup (the container's cgroup) is replaced by the
    // manifest's host mount.
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
    let volumes = pod["volumes"].as_sequence().unwrap();
    for m in container["volumeMounts"].as_sequence().unwrap() {
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
        let source = if v["configMap"].is_mapping() {
            config_dir.to_path_buf()
        } else {
            let p = PathBuf::from(str_of(&v["hostPath"]["path"]));
            // DirectoryOrCreate, and the log directories a non-Kubernetes host lacks.
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let mut options = vec!["rbind", "rprivate"];
        if m["readOnly"].as_bool() == Some(true) {
            options.push("ro");
        }
        mounts.push(json!({
            "destination": str_of(&m["mountPath"]),
            "type": "bind",
            "source": source,
            "options": options,
        }));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

/// A port nobody listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn image_runs_under_runc_with_the_manifest_capabilities() {
    if !privileged("image_runs_under_runc_with_the_manifest_capabilities") {
        return;
    }
    if !["runc", "skopeo", "umoci"].into_iter().all(have) {
        return;
    }
    let docs = manifest();
    let (_, container) = pod_and_container(&docs);
    let with_sys_admin = manifest_capabilities(container)
        .iter()
        .any(|c| c == "CAP_SYS_ADMIN");
    let archive = image_archive();
    let dir = scratch("runc");
    let config_dir = dir.join("configmap");
    configmap_file(&docs, &config_dir);
    // The manifest's command, plus what the test reads: records as JSON on stdout, a
    // pin directory of its own (another agent may hold the default), a bounded run.
    let mut args = container_args(container);
    args.extend(
        [
            "--output",
            "json",
            "--pin-dir",
            "/sys/fs/bpf/hostscope-container-test",
            "--duration",
            "30",
        ]
        .map(String::from),
    );
    bundle(&dir, &archive, &docs, &config_dir, &args);

    // A process mapping libssl.so.3, for the uprobes to find through /proc/<pid>/root.
    let mut ssl_user = Command::new("/usr/bin/python3")
        .args(["-c", "import ssl, time; time.sleep(60)"])
        .spawn()
        .expect("python3 (maps libssl.so.3)");
    std::thread::sleep(Duration::from_millis(300));

    let id = format!("hostscope-test-{}", std::process::id());
    let mut agent = Command::new("runc")
        .arg("run")
        .arg("-b")
        .arg(dir.join("bundle"))
        .arg(&id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runc run");
    let (tx, rx) = mpsc::channel::<Json>();
    let stdout = agent.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Json>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });

    let mut statuses: Vec<Json> = Vec::new();
    let mut refused = None;
    let port = closed_port();
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut next_connect = Instant::now();
    while Instant::now() < deadline && refused.is_none() {
        // Refused connects from the host, once the probes have reported.
        if !statuses.is_empty() && Instant::now() >= next_connect {
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                Duration::from_secs(1),
            );
            next_connect = Instant::now() + Duration::from_millis(500);
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(v) if v["type"] == "probe_status" => statuses.push(v),
            Ok(v)
                if v["type"] == "tcp"
                    && v["event"] == "connect_failed"
                    && v["remote"] == format!("127.0.0.1:{port}") =>
            {
                refused = Some(v)
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = Command::new("runc").args(["kill", &id, "TERM"]).status();
    let stopped = Instant::now();
    let status = agent.wait().unwrap();
    let _ = Command::new("runc").args(["delete", "-f", &id]).status();
    let _ = ssl_user.kill();
    let _ = ssl_user.wait();
    let mut stderr = String::new();
    if let Some(mut e) = agent.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }

    let state = |program: &str| {
        statuses
            .iter()
            .find(|s| s["program"] == program)
            .unwrap_or_else(|| {
                panic!("no status for {program}: {statuses:#?}\nagent stderr: {stderr}")
            })
            .clone()
    };
    for program in [
        "tcp_state_change",
        "tls_wire_egress",
        "tls_wire_ingress",
        "syscall_enter",
        "syscall_exit",
    ] {
        assert_eq!(
            state(program)["state"],
            "attached",
            "{program} with the manifest's capabilities: {:#}",
            state(program)
        );
    }
    let uprobe = state("tls_ssl_call");
    if with_sys_admin {
        assert_eq!(uprobe["state"], "attached", "{uprobe:#}");
    } else {
        let reason = uprobe["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("needs CAP_SYS_ADMIN") && reason.contains("perf_event_paranoid"),
            "the OpenSSL uprobe's reason must name the missing capability: {uprobe:#}"
        );
    }
    let refused = refused.unwrap_or_else(|| {
        panic!("no connect_failed record for 127.0.0.1:{port} within 25 s\nagent stderr: {stderr}")
    });
    assert_eq!(refused["failure"]["reason"], "refused", "{refused:#}");
    // SIGTERM ends it well within the manifest's grace period.
    let grace = pod_and_container(&docs).0["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    assert!(
        stopped.elapsed() < Duration::from_secs(grace),
        "the agent took {:?} to stop",
        stopped.elapsed()
    );
    assert!(status.success(), "the agent exited with {status}: {stderr}");
}
