//! The DaemonSet manifest, its ConfigMap, the binary and the image stay in step: the
//! ConfigMap's file passes `hostscope config check`, the container's arguments parse, and
//! the image from `cargo xtask image` runs under Debian's `runc` with exactly the
//! capabilities, namespaces and host mounts the manifest names (read from the manifest
//! here, so the two cannot drift), attaches the TCP, TLS-wire and syscall programs, sees a
//! refused connect made on the host, and says why the OpenSSL uprobes do not attach
//! without CAP_SYS_ADMIN; the refused connect is also asked for with `hostscope events`
//! inside the container, `/readyz` answers on the probes' port, and SIGTERM ends it within
//! the grace period after the final flush. The host binary under `setpriv` with exactly
//! the manifest's capabilities, then with each one removed, reports what each gates by
//! name; with the manifest's opt-in CAP_SYS_ADMIN the OpenSSL uprobes attach and see a
//! real handshake. A private containerd imports the archive and runs it. A read-only
//! disk-queue directory is an error at start.
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
/// the ConfigMap from `config_dir`; `host_dirs` gives a volume another host directory, so
/// the test's socket and queue do not meet a real agent's). rlimits are dropped
/// (ENGINEERING.md §6).
fn bundle(
    dir: &Path,
    archive: &Path,
    docs: &[Value],
    config_dir: &Path,
    host_dirs: &[(&str, &Path)],
    args: &[String],
) {
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
        let name = str_of(&m["name"]);
        let source = if v["configMap"].is_mapping() {
            config_dir.to_path_buf()
        } else if let Some((_, p)) = host_dirs.iter().find(|(n, _)| *n == name) {
            std::fs::create_dir_all(p).unwrap();
            p.to_path_buf()
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

/// A private containerd (its own root, state and socket; the CRI plugin off), stopped on
/// drop: what `ctr images import` on a node talks to.
struct Containerd {
    child: std::process::Child,
    socket: PathBuf,
    state: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        // A socket path must fit sun_path: under the temporary directory, not the checkout.
        let state = std::env::temp_dir().join(format!("hostscope-ctrd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).unwrap();
        let socket = state.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = {:?}\n",
                dir.join("root"),
                state.join("state"),
                socket
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd");
        let c = Containerd {
            child,
            socket,
            state,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 30 s: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    /// `ctr run --rm` of `image` as container `name`, with `args` as its command line
    /// (none: the image's entrypoint and default command).
    fn run(&self, image: &str, name: &str, args: &[&str]) -> std::process::Output {
        let mut all = vec!["run", "--rm", "--snapshotter", "native", image, name];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "hostscope-test"])
            .args(args)
            .output()
            .expect("ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// The archive is what a node's runtime takes: containerd imports it (`ctr images
/// import`, the command the README gives), names it by its ref annotation, and runs it:
/// the binary answers `--version`, and the image's own entrypoint is the agent, which
/// without the manifest's capabilities and mounts stops with a clear error, not a panic.
#[test]
fn image_imports_into_containerd_and_runs() {
    if !privileged("image_imports_into_containerd_and_runs") {
        return;
    }
    if !["containerd", "ctr"].into_iter().all(have) {
        return;
    }
    let archive = image_archive();
    let dir = scratch("containerd");
    let ctrd = Containerd::start(&dir);
    let archive_arg = archive.display().to_string();
    let out = ctrd.ctr(&["images", "import", "--snapshotter", "native", &archive_arg]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ctr images import: {said}");
    let out = ctrd.ctr(&["images", "ls", "-q"]);
    let refs = String::from_utf8_lossy(&out.stdout).into_owned();
    let image = refs
        .lines()
        .find(|r| r.starts_with("hostscope:"))
        .unwrap_or_else(|| panic!("no hostscope:<tag> among the imported images: {refs}"))
        .to_string();
    let version = format!("hostscope {}", env!("CARGO_PKG_VERSION"));
    let out = ctrd.run(
        &image,
        "hostscope-version",
        &["/usr/local/bin/hostscope", "--version"],
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.trim() == version,
        "the image's binary under containerd: {printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The entrypoint alone: `hostscope run` with nothing granted.
    let out = ctrd.run(&image, "hostscope-entrypoint", &[]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && said.contains("hostscope: starting the agent:"),
        "the entrypoint is the agent, which stops saying why: {said}"
    );
    assert!(!said.contains("panicked"), "{said}");
}

/// A port nobody listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// The ConfigMap's configuration tree.
fn configmap_config(docs: &[Value]) -> Value {
    serde_yaml_ng::from_str(str_of(&kind(docs, "ConfigMap")["data"]["config.yaml"]))
        .expect("the ConfigMap's config.yaml is YAML")
}

/// The port the ConfigMap's `prometheus.listen` binds, checked against the container's
/// `metrics` port that the startup, liveness and readiness probes name.
fn probe_port(docs: &[Value]) -> u16 {
    let (_, container) = pod_and_container(docs);
    let listen: SocketAddr = str_of(&configmap_config(docs)["prometheus"]["listen"])
        .parse()
        .expect("prometheus.listen is ADDR:PORT");
    let named = container["ports"]
        .as_sequence()
        .expect("container ports")
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(u64::from(listen.port())))
        .unwrap_or_else(|| panic!("no container port {}", listen.port()));
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}: {get:?}");
        assert!(
            get["port"] == named["name"] || get["port"] == named["containerPort"],
            "{probe} names port {:?}, prometheus.listen is {listen}",
            get["port"]
        );
    }
    listen.port()
}

/// JSON lines of a command's stdout.
fn json_lines(out: &[u8]) -> Vec<Json> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
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
    let (pod, container) = pod_and_container(&docs);
    let with_sys_admin = manifest_capabilities(container)
        .iter()
        .any(|c| c == "CAP_SYS_ADMIN");
    let grace = Duration::from_secs(
        pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds"),
    );
    let port = probe_port(&docs);
    // The API socket: the ConfigMap's path, inside the `run` volume's mount.
    let config = configmap_config(&docs);
    let socket = PathBuf::from(str_of(&config["api"]["socket"]));
    let run_mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "run")
        .map(|m| PathBuf::from(str_of(&m["mountPath"])))
        .expect("a `run` volume mount");
    let socket_name = socket
        .strip_prefix(&run_mount)
        .unwrap_or_else(|_| panic!("api.socket {socket:?} is not in {run_mount:?}"))
        .to_path_buf();

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
            "60",
        ]
        .map(String::from),
    );
    let (host_run, host_queue) = (dir.join("run"), dir.join("queue"));
    bundle(
        &dir,
        &archive,
        &docs,
        &config_dir,
        &[("run", &host_run), ("queue", &host_queue)],
        &args,
    );

    // A process mapping libssl.so.3, for the uprobes to find through /proc/<pid>/root.
    let mut ssl_user = Command::new("/usr/bin/python3")
        .args(["-c", "import ssl, time; time.sleep(60)"])
        .spawn()
        .expect("python3 (maps libssl.so.3)");
    std::thread::sleep(Duration::from_millis(300));

    let id = format!("hostscope-test-{}", std::process::id());
    let started = Instant::now();
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
    // Removes the container whatever happens below.
    struct Container(String);
    impl Drop for Container {
        fn drop(&mut self) {
            let _ = Command::new("runc")
                .args(["delete", "-f", &self.0])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _container = Container(id.clone());

    let mut statuses: Vec<Json> = Vec::new();
    let mut refused = None;
    let target = closed_port();
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut next_connect = Instant::now();
    while Instant::now() < deadline && refused.is_none() {
        // Refused connects from the host, once the probes have reported.
        if !statuses.is_empty() && Instant::now() >= next_connect {
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, target)),
                Duration::from_secs(1),
            );
            next_connect = Instant::now() + Duration::from_millis(500);
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(v) if v["type"] == "probe_status" => statuses.push(v),
            Ok(v)
                if v["type"] == "tcp"
                    && v["event"] == "connect_failed"
                    && v["remote"] == format!("127.0.0.1:{target}") =>
            {
                refused = Some(v)
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let up_after = started.elapsed();

    // While it runs: /readyz on the manifest's port (host network), and the refused
    // connect asked for with `hostscope events` inside the container, on the socket the
    // manifest's volume gives it (which the node sees too).
    let ready = refused.is_some().then(|| {
        let (code, _, body) = hostscope_tests::http(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            "GET",
            "/readyz",
            None,
        );
        (code, body)
    });
    let mut inside = None;
    let mut exec_out = String::new();
    let exec_deadline = Instant::now() + Duration::from_secs(10);
    while refused.is_some() && inside.is_none() && Instant::now() < exec_deadline {
        let out = Command::new("runc")
            .args(["exec", &id, "/usr/local/bin/hostscope", "events"])
            .args(["--failures", "--type", "tcp", "--last", "50"])
            .args(["--output", "json", "--socket"])
            .arg(&socket)
            .output()
            .expect("runc exec");
        exec_out = format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        inside = json_lines(&out.stdout).into_iter().find(|v| {
            v["event"] == "connect_failed" && v["remote"] == format!("127.0.0.1:{target}")
        });
        if inside.is_none() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let socket_on_node = std::fs::metadata(host_run.join(&socket_name))
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));

    // SIGTERM, as the kubelet sends it; the grace period is the bound.
    let before_term: Vec<Json> = rx.try_iter().collect();
    let _ = Command::new("runc").args(["kill", &id, "TERM"]).status();
    let stopping = Instant::now();
    let exit = loop {
        if let Some(s) = agent.try_wait().unwrap() {
            break Some(s);
        }
        if stopping.elapsed() > grace {
            let _ = Command::new("runc").args(["kill", &id, "KILL"]).status();
            let _ = agent.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stopped_in = stopping.elapsed();
    let _ = ssl_user.kill();
    let _ = ssl_user.wait();
    let mut stderr = String::new();
    if let Some(mut e) = agent.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    // Everything printed after SIGTERM (the reader ends with the agent's stdout).
    let mut after_term = Vec::new();
    while let Ok(v) = rx.recv_timeout(Duration::from_secs(5)) {
        after_term.push(v);
    }
    eprintln!(
        "runc: records flowing after {up_after:?}, stopped {stopped_in:?} after SIGTERM; \
         {} lines before it",
        before_term.len()
    );

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
        panic!(
            "no connect_failed record for 127.0.0.1:{target} within 25 s\nagent stderr: {stderr}"
        )
    });
    assert_eq!(refused["failure"]["reason"], "refused", "{refused:#}");

    let (code, body) = ready.expect("asked when records flowed");
    assert_eq!(code, 200, "/readyz on :{port}: {body}");
    assert!(body.starts_with("ready"), "/readyz: {body}");
    if !with_sys_admin {
        assert!(
            body.contains("tls: degraded") && body.contains("CAP_SYS_ADMIN"),
            "/readyz names the degraded family and why: {body}"
        );
    }
    let inside = inside.unwrap_or_else(|| {
        panic!(
            "`hostscope events` inside the container did not show the refused connect to \
             127.0.0.1:{target}: {exec_out}"
        )
    });
    assert_eq!(inside["failure"]["reason"], "refused", "{inside:#}");
    assert!(
        socket_on_node,
        "the API socket is not at {} on the node",
        host_run.join(&socket_name).display()
    );

    // Within the grace period, exit 0, the final counters printed after the flush.
    let exit = exit.unwrap_or_else(|| {
        panic!("SIGTERM did not end the agent within the grace period {grace:?}: {stderr}")
    });
    assert!(exit.success(), "the agent exited with {exit}: {stderr}");
    let final_lines: Vec<&Json> = after_term
        .iter()
        .filter(|v| v["type"].as_str().is_some_and(|t| t.ends_with("_stats")))
        .collect();
    for kind in ["agent_stats", "metadata_stats", "export_stats"] {
        assert!(
            final_lines.iter().any(|v| v["type"] == kind),
            "no final {kind} line after SIGTERM (export_stats comes after the exporter's \
             flush): {final_lines:#?}\nagent stderr: {stderr}"
        );
    }
    // Records the probes saw went to the ConfigMap's disk queue (its collector does not
    // exist here): the flush kept them, on the node's queue directory.
    let export = final_lines
        .iter()
        .find(|v| v["type"] == "export_stats")
        .unwrap();
    assert!(
        export["queue_len"].as_u64().is_some_and(|n| n > 0),
        "nothing left in the disk queue for the next run: {export:#}"
    );
    let queued = std::fs::read_dir(&host_queue)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        // Request files: plain (`.pb`, before compressed storage), gzip or zstd.
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            [".pb", ".pb.gz", ".pb.zst"]
                .iter()
                .any(|s| name.ends_with(s))
        })
        .count();
    assert_eq!(
        Some(queued as u64),
        export["queue_len"].as_u64(),
        "request files in {} vs the final export_stats",
        host_queue.display()
    );
}

/// `setpriv` running the host's agent as root with exactly `caps` (CAP_… names):
/// bounding, inheritable and ambient sets reduced to them, so the agent's effective set
/// after exec is the list (ENGINEERING.md §6: this machine lacks CAP_SYS_RESOURCE anyway).
/// `no_new_privs`: the manifest's `allowPrivilegeEscalation: false`. The agent's `run`
/// arguments follow.
fn agent_with_caps(caps: &[String], no_new_privs: bool) -> Command {
    let list: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let set = format!("-all,{}", list.join(","));
    let mut setpriv = Command::new("setpriv");
    if no_new_privs {
        setpriv.arg("--no-new-privs");
    }
    setpriv
        .arg(format!("--bounding-set={set}"))
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg("--")
        .arg(hostscope_bin())
        .args([
            "run",
            "--output",
            "json",
            "--no-pin",
            "--no-api",
            "--no-prometheus",
        ]);
    setpriv
}

/// One 3-second run of the agent with exactly `caps`.
/// Returns (exit status, JSON lines of stdout, stderr).
fn run_with_caps(
    caps: &[String],
    no_new_privs: bool,
) -> (std::process::ExitStatus, Vec<Json>, String) {
    let out = agent_with_caps(caps, no_new_privs)
        .args(["--duration", "3", "--stats-interval", "0"])
        .output()
        .expect("setpriv (util-linux)");
    (
        out.status,
        json_lines(&out.stdout),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a run reported: program -> (state, reason), and the metadata limits.
struct Report {
    probes: std::collections::BTreeMap<String, (String, String)>,
    limits: Vec<String>,
}

fn report(lines: &[Json]) -> Report {
    let probes = lines
        .iter()
        .filter(|v| v["type"] == "probe_status")
        .map(|v| {
            (
                v["program"].as_str().unwrap_or_default().to_string(),
                (
                    v["state"].as_str().unwrap_or_default().to_string(),
                    v["reason"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect();
    let limits = lines
        .iter()
        .find(|v| v["type"] == "metadata_stats")
        .and_then(|v| v["limits"].as_array())
        .expect("a final metadata_stats line with its limits")
        .iter()
        .map(|l| l.as_str().unwrap_or_default().to_string())
        .collect();
    Report { probes, limits }
}

/// The programs of the families the manifest promises (TCP, TLS wire, syscalls).
const PROMISED: [&str; 5] = [
    "tcp_state_change",
    "tls_wire_egress",
    "tls_wire_ingress",
    "syscall_enter",
    "syscall_exit",
];
const UPROBES: [&str; 4] = [
    "tls_ssl_call",
    "tls_ssl_call_return",
    "tls_ssl_free",
    "tls_verify_error_return",
];

#[test]
fn manifest_capabilities_attach_and_each_one_missing_is_named() {
    if !privileged("manifest_capabilities_attach_and_each_one_missing_is_named") || !have("setpriv")
    {
        return;
    }
    let docs = manifest();
    let (_, container) = pod_and_container(&docs);
    let caps = manifest_capabilities(container);
    let no_new_privs =
        container["securityContext"]["allowPrivilegeEscalation"].as_bool() == Some(false);
    // The full list, then each one removed in turn, all at once (3 s runs).
    let mut sets = vec![(None, caps.clone())];
    for c in &caps {
        let rest: Vec<String> = caps.iter().filter(|x| *x != c).cloned().collect();
        sets.push((Some(c.clone()), rest));
    }
    let started = Instant::now();
    let runs: Vec<(Option<String>, _)> = sets
        .into_iter()
        .map(|(removed, set)| {
            (
                removed,
                std::thread::spawn(move || run_with_caps(&set, no_new_privs)),
            )
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(removed, h)| (removed, h.join().expect("run thread")))
        .collect();
    eprintln!("{} capability sets in {:?}", runs.len(), started.elapsed());

    let with_sys_admin = caps.iter().any(|c| c == "CAP_SYS_ADMIN");
    for (removed, (status, lines, stderr)) in runs {
        let what = match &removed {
            None => format!("the manifest's capabilities {caps:?}"),
            Some(c) => format!("the manifest's capabilities without {c}"),
        };
        assert!(!stderr.contains("panicked"), "{what}: a panic: {stderr}");
        let exits = matches!(removed.as_deref(), Some("CAP_BPF" | "CAP_PERFMON"));
        if exits {
            // Nothing can load: a clear error naming the capability, exit 1.
            let cap = removed.as_deref().unwrap();
            assert!(
                !status.success() && stderr.contains(&format!("needs {cap}")),
                "{what}: expected the agent to stop with a reason naming {cap} ({status}): {stderr}"
            );
            continue;
        }
        assert!(status.success(), "{what}: exited with {status}: {stderr}");
        let r = report(&lines);
        let state = |p: &str| {
            r.probes
                .get(p)
                .cloned()
                .unwrap_or_else(|| panic!("{what}: no status for {p}: {:#?}", r.probes))
        };
        // What the removed capability gates, and the programs that stay attached.
        let gated: &[&str] = match removed.as_deref() {
            None => &[],
            Some("CAP_NET_ADMIN") => &["tls_wire_egress", "tls_wire_ingress"],
            Some("CAP_SYS_ADMIN") => &UPROBES,
            // Identities (the attach report is unchanged): said in metadata_stats.limits.
            Some("CAP_SYS_PTRACE" | "CAP_DAC_READ_SEARCH") => &[],
            Some(other) => panic!(
                "{other} is in the manifest but this test does not know what it gates: \
                 add it here and to docs/deploy.md"
            ),
        };
        for p in PROMISED.iter().filter(|p| !gated.contains(p)) {
            assert_eq!(state(p).0, "attached", "{what}: {p}: {:?}", state(p));
        }
        for p in gated.iter().filter(|p| PROMISED.contains(p)) {
            let (st, why) = state(p);
            let cap = removed.as_deref().unwrap();
            assert!(
                st == "not_attached" && why.contains(&format!("needs {cap}")),
                "{what}: {p} must be reported not attached because of {cap}: {st}: {why}"
            );
        }
        // The OpenSSL uprobes: attached only with CAP_SYS_ADMIN, else not attached saying so.
        let uprobes_up = with_sys_admin && removed.as_deref() != Some("CAP_SYS_ADMIN");
        for p in UPROBES {
            let (st, why) = state(p);
            if uprobes_up {
                assert_eq!(st, "attached", "{what}: {p}: {why}");
            } else {
                assert!(
                    st != "attached" && why.contains("needs CAP_SYS_ADMIN"),
                    "{what}: {p} must say it needs CAP_SYS_ADMIN: {st}: {why}"
                );
            }
        }
        // Identity lookups a capability gates: named when it is missing, else nothing.
        for cap in ["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"] {
            let named = r.limits.iter().any(|l| l.contains(&format!("needs {cap}")));
            let absent = !caps.contains(&cap.to_string()) || removed.as_deref() == Some(cap);
            assert_eq!(
                named, absent,
                "{what}: metadata_stats.limits {:?} (naming {cap} expected: {absent})",
                r.limits
            );
        }
    }
}

/// The capabilities the manifest names as opt-in: commented `# - NAME` entries of the
/// capability list (CAP_SYS_ADMIN for the OpenSSL uprobes, CAP_SYS_RESOURCE for old kernels).
fn manifest_opt_in_capabilities() -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join("deploy/kubernetes/hostscope.yaml"))
        .expect("reading the manifest");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("# - "))
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'))
        .map(|c| format!("CAP_{c}"))
        .collect()
}

/// The manifest's opt-in line for the OpenSSL uprobes, taken: with its capabilities plus
/// CAP_SYS_ADMIN the uprobes attach and a real handshake is seen through them (a TLS 1.3
/// expired certificate, whose reason only OpenSSL's verify result gives: the certificate
/// travels encrypted).
#[test]
fn opt_in_sys_admin_sees_a_handshake_through_the_uprobes() {
    use hostscope_tests::{
        json_agent::JsonAgent,
        tls::{pki, s_client, Server},
    };
    if !privileged("opt_in_sys_admin_sees_a_handshake_through_the_uprobes") || !have("setpriv") {
        return;
    }
    let docs = manifest();
    let (_, container) = pod_and_container(&docs);
    let opt_in = manifest_opt_in_capabilities();
    assert!(
        opt_in.iter().any(|c| c == "CAP_SYS_ADMIN"),
        "the manifest names SYS_ADMIN as the uprobes' opt-in: {opt_in:?}"
    );
    let mut caps = manifest_capabilities(container);
    caps.push("CAP_SYS_ADMIN".to_string());
    let no_new_privs =
        container["securityContext"]["allowPrivilegeEscalation"].as_bool() == Some(false);
    let mut cmd = agent_with_caps(&caps, no_new_privs);
    cmd.args(["--stats-interval", "1"]);
    let mut agent = JsonAgent::spawn(cmd, Duration::from_secs(60));
    for p in UPROBES {
        let st = agent
            .seen
            .iter()
            .find(|v| v["type"] == "probe_status" && v["program"] == p)
            .unwrap_or_else(|| panic!("no probe_status for {p}: {:#?}", agent.seen));
        assert_eq!(st["state"], "attached", "{p} with {caps:?}: {st}");
    }
    let server = Server::start(&pki().expired(), &["-tls1_3"]);
    let (pid, ok) = s_client(server.addr, &["-tls1_3"]);
    assert!(!ok, "s_client must reject an expired certificate");
    let rec = agent.wait(Duration::from_secs(20), "the client's TLS record", |v| {
        v["type"] == "tls" && v["pid"] == pid
    });
    assert!(
        rec["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x == "openssl")),
        "the uprobes contributed: {rec}"
    );
    assert_eq!(rec["failure"]["reason"], "certificate_expired", "{rec}");
    assert_eq!(rec["failure"]["source"], "x509_verify", "{rec}");
    assert_eq!(rec["failure"]["verify_error"], 10, "{rec}");
    agent.stop();
}

/// A read-only filesystem under the manifest's disk-queue directory: the agent stops at
/// start with an error naming the directory, whether the queue directory exists there
/// or would have to be created, instead of dropping every request later.
#[test]
fn read_only_disk_queue_is_an_error_at_start() {
    if !privileged("read_only_disk_queue_is_an_error_at_start") {
        return;
    }
    let dir = scratch("ro-queue");
    // A tmpfs with a queue directory in it, then remounted read-only (root ignores mode
    // bits, not a read-only mount).
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "hostscope-ro"])
            .arg(&dir),
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.clone());
    std::fs::create_dir(dir.join("queue")).unwrap();
    run_ok(Command::new("mount").args(["-o", "remount,ro"]).arg(&dir));

    let collector = SocketAddr::from((Ipv4Addr::LOCALHOST, closed_port()));
    for queue in [dir.join("queue"), dir.join("new")] {
        let started = Instant::now();
        let out = Command::new(hostscope_bin())
            .args(["run", "--duration", "20", "--output", "none"])
            .args(["--no-pin", "--no-api", "--no-prometheus"])
            .arg("--otlp-endpoint")
            .arg(format!("http://{collector}"))
            .arg("--otlp-disk-queue")
            .arg(&queue)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains(&format!("disk queue {}", queue.display()))
                && err.contains("Read-only file system")
                && !err.contains("panicked"),
            "{}: expected a start-up error naming the read-only queue ({}): {err}",
            queue.display(),
            out.status
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the error came after {:?}, not at start",
            started.elapsed()
        );
    }
}
