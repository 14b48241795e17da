//! The local API as users meet it: `hostscope run` serving its socket, `hostscope events`
//! and `hostscope status` run as separate processes (some as an unprivileged user), real
//! connects and handshakes seen by the real probes.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use hostscope_tests::{
    closed_port, hostscope_bin,
    metadata::{container_id, pod_uid, CgroupTree, Connector, KubeletTree},
    privileged, tls,
};
use serde_json::Value;

/// An agent serving the API on a socket of its own (tests never touch the default one).
struct ApiAgent {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    /// The agent's own JSON lines, when it runs with `--output json`.
    stdout: Option<mpsc::Receiver<Value>>,
}

impl ApiAgent {
    fn start(tag: &str, extra: &[&str]) -> ApiAgent {
        Self::spawn(tag, "none", extra)
    }

    fn spawn(tag: &str, output: &str, extra: &[&str]) -> ApiAgent {
        let dir = PathBuf::from(format!("/tmp/hostscope-api-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let socket = dir.join("api.sock");
        let mut child = Command::new(hostscope_bin())
            .args([
                "run",
                "--no-pin",
                "--no-prometheus",
                "--poll-ms",
                "20",
                "--output",
                output,
            ])
            .arg("--api-socket")
            .arg(&socket)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let stdout = (output == "json").then_some(rx);
        let mut agent = ApiAgent {
            child,
            dir,
            socket,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = agent.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                agent
                    .child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("agent exited with {status}: {err}");
            }
            if agent.socket.exists() && agent.try_status().is_some() {
                return agent;
            }
            assert!(Instant::now() < deadline, "the agent's API never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(hostscope_bin());
        c.args(args).arg("--socket").arg(&self.socket);
        c
    }

    fn try_status(&self) -> Option<Value> {
        let out = self.cli(&["status", "--output", "json"]).output().unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("status prints JSON"))
    }

    fn status(&self) -> Value {
        let out = self.cli(&["status", "--output", "json"]).output().unwrap();
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status prints JSON")
    }

    /// `hostscope events ARGS --output json`, its stdout lines on a channel.
    fn events(&self, args: &[&str]) -> Events {
        let mut child = self
            .cli(&["events", "--output", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("events prints JSON lines ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Events { child, lines }
    }

    /// Waits until `n` clients stream.
    fn wait_clients(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status();
            if s["sinks"]["api"]["clients_now"].as_u64() == Some(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} clients never attached: {}",
                s["sinks"]["api"]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM; the exit status and how long the agent took to stop.
    fn stop(&mut self) -> (ExitStatus, Duration) {
        let t = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        (status, t.elapsed())
    }
}

impl Drop for ApiAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Events {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Events {
    /// The first line that satisfies `pred` within `within`.
    fn wait_for(&self, within: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if pred(&v) => return Some(v),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Everything it printed, once it exited; its exit status and stderr.
    fn finish(mut self, within: Duration) -> (ExitStatus, Vec<Value>, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("hostscope events did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let lines = self.lines.iter().collect();
        (status, lines, err)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_refused(v: &Value, to: std::net::SocketAddr) -> bool {
    v["type"] == "tcp" && v["event"] == "connect_failed" && v["remote"] == to.to_string().as_str()
}

#[test]
fn events_follow_shows_a_refused_connect_and_an_expired_certificate_within_a_second() {
    if !privileged("events_follow_shows_a_refused_connect_and_an_expired_certificate") {
        return;
    }
    let agent = ApiAgent::start("follow", &[]);
    let events = agent.events(&["--follow"]);
    agent.wait_clients(1);

    let refused = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let t = Instant::now();
    assert!(TcpStream::connect(refused).is_err());
    let v = events
        .wait_for(Duration::from_secs(1), |v| is_refused(v, refused))
        .unwrap_or_else(|| panic!("no refused connect to {refused} within 1 s"));
    eprintln!("refused connect shown after {:?}", t.elapsed());
    assert_eq!(v["pid"], std::process::id());
    assert_eq!(v["failure"]["reason"], "refused");
    assert_eq!(v["failure"]["errno_name"], "ECONNREFUSED");
    assert_eq!(v["direction"], "active");
    assert_eq!(v["identity"]["process.pid"], std::process::id());

    let expired = tls::Server::start(&tls::pki().expired(), &["-tls1_2"]);
    let t = Instant::now();
    let (_, ok) = tls::s_client(expired.addr, &[]);
    assert!(!ok);
    let v = events
        .wait_for(Duration::from_secs(1), |v| {
            v["type"] == "tls" && v["remote"] == expired.addr.to_string().as_str()
        })
        .unwrap_or_else(|| panic!("no TLS record for {} within 1 s", expired.addr));
    eprintln!(
        "expired handshake shown {:?} after s_client returned",
        t.elapsed()
    );
    assert_eq!(v["outcome"], "failure", "{v}");
    assert_eq!(v["failure"]["reason"], "certificate_expired", "{v}");
}

#[test]
fn text_output_is_runs_line() {
    if !privileged("text_output_is_runs_line") {
        return;
    }
    let agent = ApiAgent::start("text", &[]);
    let refused = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut child = agent
        .cli(&["events", "--follow", "--port", &refused.port().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    agent.wait_clients(1);
    assert!(TcpStream::connect(refused).is_err());
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    // `run`'s text form: time, family, event, addresses, the failure.
    assert!(
        line.contains("connect_failed") || line.contains("refused"),
        "{line}"
    );
    assert!(line.contains(&refused.to_string()), "{line}");
    assert!(
        !line.trim_start().starts_with('{'),
        "text, not JSON: {line}"
    );
}

#[test]
fn filters_exclude_and_include_what_they_should() {
    if !privileged("filters_exclude_and_include_what_they_should") {
        return;
    }
    let watched = format!("/tmp/hostscope-api-watched-{}", std::process::id());
    std::fs::write(&watched, "x").unwrap();
    let agent = ApiAgent::start("filters", &["--no-default-watch", "--watch-path", &watched]);
    let mut bash = Connector::spawn();
    let refused = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, bash.port));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap();
    let (rp, op) = (refused.port().to_string(), open.port().to_string());
    let me = std::process::id().to_string();
    let bash_pid = bash.pid().to_string();
    let clients = [
        (
            "security",
            agent.events(&["--follow", "--type", "security"]),
        ),
        (
            "failures",
            agent.events(&["--follow", "--failures", "--type", "tcp"]),
        ),
        ("port_open", agent.events(&["--follow", "--port", &op])),
        (
            "pid_me",
            agent.events(&["--follow", "--type", "tcp", "--pid", &me]),
        ),
        (
            "pid_bash",
            agent.events(&["--follow", "--type", "tcp", "--pid", &bash_pid]),
        ),
        (
            "comm_bash",
            agent.events(&["--follow", "--type", "tcp", "--comm", "bash"]),
        ),
        (
            "peer_lo",
            agent.events(&["--follow", "--peer", "127.0.0.0/8", "--port", &rp]),
        ),
        (
            "peer_10",
            agent.events(&["--follow", "--peer", "10.0.0.0/8", "--type", "tcp"]),
        ),
        (
            "reason",
            agent.events(&["--follow", "--reason", "refused", "--type", "tcp"]),
        ),
    ];
    agent.wait_clients(clients.len() as u64);

    bash.connect(); // bash → refused port
    let held = TcpStream::connect(open).unwrap(); // us → open port
    let (_server_side, _) = listener.accept().unwrap();
    drop(held);
    std::fs::read(&watched).unwrap(); // a security event
    std::thread::sleep(Duration::from_millis(800));
    let (status, took) = {
        let mut agent = agent;
        agent.stop()
    };
    assert!(status.success(), "agent: {status}");
    assert!(took < Duration::from_secs(5), "stop took {took:?}");

    let mut got = std::collections::BTreeMap::new();
    for (name, c) in clients {
        let (status, lines, err) = c.finish(Duration::from_secs(5));
        assert!(status.success(), "{name}: {status} {err}");
        assert!(err.contains("the agent is stopping"), "{name}: {err}");
        got.insert(name, lines);
    }
    let any = |name: &str, pred: &dyn Fn(&Value) -> bool| got[name].iter().any(pred);
    let all = |name: &str, pred: &dyn Fn(&Value) -> bool| got[name].iter().all(pred);
    let refused_line = |v: &Value| is_refused(v, refused);
    let to_open = |v: &Value| v["type"] == "tcp" && v["remote"] == open.to_string().as_str();

    assert!(
        any("security", &|v| v["path"]
            .as_str()
            .is_some_and(|p| p == watched)),
        "{:?}",
        got["security"]
    );
    assert!(
        all("security", &|v| v["type"] == "security"),
        "{:?}",
        got["security"]
    );

    assert!(any("failures", &refused_line), "{:?}", got["failures"]);
    assert!(!any("failures", &to_open), "{:?}", got["failures"]);

    assert!(any("port_open", &to_open), "{:?}", got["port_open"]);
    assert!(!any("port_open", &refused_line), "{:?}", got["port_open"]);

    assert!(any("pid_me", &to_open), "{:?}", got["pid_me"]);
    assert!(!any("pid_me", &refused_line));
    assert!(any("pid_bash", &refused_line), "{:?}", got["pid_bash"]);
    assert!(!any("pid_bash", &to_open));
    assert!(any("comm_bash", &refused_line), "{:?}", got["comm_bash"]);
    assert!(all("comm_bash", &|v| v["comm"] == "bash"));

    assert!(any("peer_lo", &refused_line), "{:?}", got["peer_lo"]);
    assert!(!any("peer_10", &|v| v["remote"]
        .as_str()
        .is_some_and(|r| r.starts_with("127."))));

    assert!(any("reason", &refused_line));
    assert!(all("reason", &|v| v["failure"]["reason"] == "refused"));
    let _ = std::fs::remove_file(&watched);
}

#[test]
fn namespace_filter_shows_one_pod_only() {
    if !privileged("namespace_filter_shows_one_pod_only") {
        return;
    }
    let kubelet = KubeletTree::new();
    let tree = CgroupTree::new();
    let mut pods = Vec::new();
    for (ns, pod) in [("shop", "checkout-1"), ("web", "front-1")] {
        let (uid, cid) = (pod_uid(), container_id());
        kubelet.add_pod(ns, pod, &uid, &[("app", &cid)]);
        let dir = tree.make(&format!(
            "kubepods.slice/kubepods-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        ));
        let c = Connector::spawn();
        c.move_to(&dir);
        pods.push(c);
    }
    let root = kubelet.root.to_str().unwrap().to_string();
    let agent = ApiAgent::start("namespace", &["--kubelet-log-root", &root]);
    let shop = agent.events(&["--follow", "--namespace", "shop", "--type", "tcp"]);
    let checkout = agent.events(&["--follow", "--pod", "shop/checkout", "--type", "tcp"]);
    agent.wait_clients(2);
    for c in &mut pods {
        c.connect();
    }
    let shop_port = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, pods[0].port));
    let web_port = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, pods[1].port));
    for events in [&shop, &checkout] {
        let v = events
            .wait_for(Duration::from_secs(3), |v| is_refused(v, shop_port))
            .expect("the shop pod's connect");
        assert_eq!(v["identity"]["k8s.namespace.name"], "shop");
        assert_eq!(v["identity"]["k8s.pod.name"], "checkout-1");
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut agent = agent;
    agent.stop();
    for events in [shop, checkout] {
        let (_, lines, _) = events.finish(Duration::from_secs(5));
        assert!(
            lines
                .iter()
                .all(|v| v["identity"]["k8s.namespace.name"] == "shop"),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|v| is_refused(v, web_port)), "{lines:?}");
    }
}

#[test]
fn last_returns_what_happened_before_the_client_connected() {
    if !privileged("last_returns_what_happened_before_the_client_connected") {
        return;
    }
    let agent = ApiAgent::start("last", &[]);
    let refused = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for _ in 0..3 {
        assert!(TcpStream::connect(refused).is_err());
    }
    std::thread::sleep(Duration::from_millis(500));
    let port = refused.port().to_string();
    let out = agent
        .cli(&[
            "events", "--output", "json", "--last", "10", "--type", "tcp", "--port", &port,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().filter(|v| is_refused(v, refused)).count(),
        3,
        "{lines:?}"
    );
    // Without --follow or --last: the latest 20 and exit.
    let out = agent.cli(&["events", "--output", "json"]).output().unwrap();
    assert!(out.status.success());
    let n = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!((1..=20).contains(&n), "{n} lines");
    // --last 1 --follow: the history part first, then live records.
    let follow = agent.events(&["--follow", "--last", "1", "--type", "tcp", "--port", &port]);
    let first = follow
        .wait_for(Duration::from_secs(2), |_| true)
        .expect("the history record");
    assert!(is_refused(&first, refused), "{first}");
    assert!(TcpStream::connect(refused).is_err());
    follow
        .wait_for(Duration::from_secs(1), |v| is_refused(v, refused))
        .expect("the live record after the history");
}

fn mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn as_nobody(agent: &ApiAgent, setpriv: &[&str], args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(setpriv)
        .arg(hostscope_bin())
        .args(args)
        .arg("--socket")
        .arg(&agent.socket)
        .output()
        .expect("setpriv")
}

const NOBODY: &[&str] = &["--reuid", "65534", "--regid", "65534", "--clear-groups"];

#[test]
fn unprivileged_clients_are_refused_and_counted() {
    if !privileged("unprivileged_clients_are_refused_and_counted") {
        return;
    }
    let agent = ApiAgent::start("perm", &[]);
    assert_eq!(mode(&agent.dir), (0o700, 0, 0), "socket directory");
    assert_eq!(mode(&agent.socket), (0o600, 0, 0), "socket");

    // The file permissions stop a non-root user first.
    let out = as_nobody(&agent, NOBODY, &["events"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("serves root"), "{err}");

    // With the files opened up (a mistake), the credential check still refuses, and the
    // agent counts the refusal.
    std::fs::set_permissions(&agent.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [&["events", "--follow"][..], &["status"][..]] {
        let out = as_nobody(&agent, NOBODY, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(
                "permission denied: the hostscope API serves root only; this client is uid 65534"
            ),
            "{args:?}: {err}"
        );
    }
    let api = &agent.status()["sinks"]["api"];
    assert_eq!(api["connections_refused"], 2, "{api}");
    assert!(api["connections_accepted"].as_u64().unwrap() >= 1, "{api}");
}

#[test]
fn allowed_group_members_are_served() {
    if !privileged("allowed_group_members_are_served") {
        return;
    }
    let dir = PathBuf::from(format!("/tmp/hostscope-api-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("hostscope.yaml");
    std::fs::write(&config, "api:\n  allowed_group: nogroup\n").unwrap();
    let agent = ApiAgent::start("group", &["--config", config.to_str().unwrap()]);
    let nogroup = 65534;
    assert_eq!(mode(&agent.dir), (0o750, 0, nogroup), "socket directory");
    assert_eq!(mode(&agent.socket), (0o660, 0, nogroup), "socket");
    // A member by its primary group, and one by a supplementary group.
    for setpriv in [
        NOBODY,
        &["--reuid", "65534", "--regid", "1", "--groups", "65534"][..],
    ] {
        let out = as_nobody(&agent, setpriv, &["status", "--output", "json"]);
        assert!(
            out.status.success(),
            "{setpriv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Not a member.
    let out = as_nobody(
        &agent,
        &["--reuid", "65534", "--regid", "1", "--clear-groups"],
        &["status"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sixteen_clients_all_get_the_record_survive_kills_and_end_cleanly_at_stop() {
    if !privileged("sixteen_clients_all_get_the_record") {
        return;
    }
    let mut agent = ApiAgent::start("sixteen", &[]);
    let refused = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let port = refused.port().to_string();
    let mut clients: Vec<Events> = (0..16)
        .map(|_| agent.events(&["--follow", "--port", &port]))
        .collect();
    agent.wait_clients(16);
    assert!(TcpStream::connect(refused).is_err());
    for (i, c) in clients.iter().enumerate() {
        c.wait_for(Duration::from_secs(2), |v| is_refused(v, refused))
            .unwrap_or_else(|| panic!("client {i} did not get the record"));
    }
    // Half are killed mid-stream; the agent notices and goes on serving the others.
    for mut c in clients.drain(..8) {
        c.child.kill().unwrap();
        c.child.wait().unwrap();
    }
    assert!(TcpStream::connect(refused).is_err());
    agent.wait_clients(8);
    for c in &clients {
        c.wait_for(Duration::from_secs(2), |v| is_refused(v, refused))
            .expect("a remaining client got the second record");
    }
    // The agent stops while 8 clients wait: each ends with the notice, exit 0.
    let (status, took) = agent.stop();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    for c in clients {
        let (status, _, err) = c.finish(Duration::from_secs(3));
        assert!(status.success(), "{status}: {err}");
        assert!(err.contains("the agent is stopping"), "{err}");
    }
}

#[test]
fn a_stuck_client_loses_records_alone_and_is_told() {
    if !privileged("a_stuck_client_loses_records_alone_and_is_told") {
        return;
    }
    const N: usize = 100_000;
    let agent = ApiAgent::start("stuck", &[]);
    let refused = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let port = refused.port().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The stuck client: opens its stream and reads nothing.
    let (stuck_client, mut stuck) = rt.block_on(async {
        let mut c = hostscope::api::client::Client::connect(&agent.socket)
            .await
            .unwrap();
        let s = c
            .events(hostscope::api::proto::EventsRequest {
                ports: vec![refused.port() as u32],
                // The failures themselves, not the RCA incident they make.
                types: vec!["tcp".into()],
                follow: true,
                ..Default::default()
            })
            .await
            .unwrap();
        (c, s)
    });
    // The reading client writes to a file: it never waits for the test to parse.
    let out_file = agent.dir.with_extension("reader.json");
    let mut reader = agent
        .cli(&[
            "events", "--follow", "--output", "json", "--type", "tcp", "--port", &port,
        ])
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    agent.wait_clients(2);
    let before = agent.status();
    // Paced by the reading client (at most 3,000 records ahead of it), so that a debug
    // build of the agent drains its rings too; the stuck client falls behind regardless.
    let mut file = std::fs::File::open(&out_file).unwrap();
    let mut read = 0usize;
    let mut count_lines = |file: &mut std::fs::File| {
        use std::io::Read;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).unwrap();
        read += buf.iter().filter(|&&b| b == b'\n').count();
        read
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sent = 0;
    while sent < N {
        for _ in 0..1_000 {
            assert!(TcpStream::connect(refused).is_err());
        }
        sent += 1_000;
        while count_lines(&mut file) + 3_000 < sent {
            assert!(
                Instant::now() < deadline,
                "the reading client is stuck at {read}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    while count_lines(&mut file) < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = std::fs::read_to_string(&out_file).unwrap();
    let _ = reader.kill();
    let _ = reader.wait();
    let _ = std::fs::remove_file(&out_file);
    let mut seen = 0;
    for line in lines.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(is_refused(&v, refused), "the reading client was told: {v}");
        seen += 1;
    }
    assert_eq!(seen, N, "the reading client got {seen} of {N} records");
    let after = agent.status();
    // Nothing lost in the kernel's rings, nor by the agent's channel.
    let lost = |s: &Value| {
        let families = s["agent"]["kernel"].as_object().unwrap();
        families
            .values()
            .map(|c| c["events_lost_ring_full"].as_u64().unwrap_or(0))
            .sum::<u64>()
            + s["agent"]["records_lagged"].as_u64().unwrap()
    };
    assert_eq!(
        lost(&after),
        lost(&before),
        "lost during the storm: {}",
        after["agent"]
    );
    let api = &after["sinks"]["api"];
    let stuck_stats = api["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["dropped"].as_u64().unwrap() > 0)
        .unwrap_or_else(|| panic!("no client with drops: {api}"));
    let dropped = stuck_stats["dropped"].as_u64().unwrap();
    assert!(dropped > 0 && dropped < N as u64, "{api}");
    assert_eq!(api["records_lagged"], 0, "{api}");

    // The stuck client reads again: what it holds, then the count of what it missed (told
    // once its buffer is read, with no record after it), then the next record; nothing is
    // unaccounted for.
    let (records, told, next) = rt.block_on(async {
        use hostscope::api::proto::events_reply::Reply;
        macro_rules! next {
            () => {
                tokio::time::timeout(Duration::from_secs(10), stuck_client.next(&mut stuck))
                    .await
                    .expect("the stuck client's stream goes on")
                    .unwrap()
                    .expect("a message")
                    .reply
            };
        }
        let (mut records, mut told) = (0u64, 0u64);
        while records + told < N as u64 {
            match next!() {
                Some(Reply::Record(_)) => records += 1,
                Some(Reply::Dropped(d)) => told += d.count,
                other => panic!("{other:?}"),
            }
        }
        assert!(TcpStream::connect(refused).is_err());
        (records, told, next!())
    });
    assert_eq!(
        told, dropped,
        "drops told to the client = drops in the status"
    );
    assert_eq!(records + told, N as u64);
    assert!(
        matches!(
            next,
            Some(hostscope::api::proto::events_reply::Reply::Record(_))
        ),
        "after the drops, the next record: {next:?}"
    );
}

#[test]
fn status_shows_a_family_off_by_configuration() {
    if !privileged("status_shows_a_family_off_by_configuration") {
        return;
    }
    let agent = ApiAgent::start("off", &["--syscall-hooks", "off", "--no-security"]);
    let s = agent.status();
    let probes = s["probes"].as_array().unwrap();
    let sys: Vec<&Value> = probes.iter().filter(|p| p["family"] == "sys").collect();
    assert!(!sys.is_empty(), "{probes:?}");
    for p in &sys {
        assert_eq!(p["state"], "off", "{p}");
        assert!(p["reason"].as_str().unwrap().contains("syscalls."), "{p}");
    }
    assert!(
        probes
            .iter()
            .any(|p| p["family"] == "tcp" && p["state"] == "attached"),
        "{probes:?}"
    );
    let out = agent.cli(&["status"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let families = text
        .lines()
        .find(|l| l.trim_start().starts_with("families: "))
        .unwrap_or_else(|| panic!("no families line:\n{text}"));
    assert!(families.contains("sys off"), "{families}");
    assert!(families.contains("tcp on"), "{families}");
}

#[test]
fn status_reports_probes_counters_and_the_api() {
    if !privileged("status_reports_probes_counters_and_the_api") {
        return;
    }
    let mut agent = ApiAgent::spawn("status", "json", &["--stats-interval", "0"]);
    let refused = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for _ in 0..5 {
        assert!(TcpStream::connect(refused).is_err());
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = agent.status();
    for key in [
        "version", "kernel", "uptime_s", "probes", "agent", "metadata", "sinks",
    ] {
        assert!(s.get(key).is_some(), "no {key} in {s}");
    }
    let probes = s["probes"].as_array().unwrap();
    for family in ["tcp", "tls", "sys"] {
        assert!(
            probes
                .iter()
                .any(|p| p["family"] == family && p["state"] == "attached"),
            "{family} not attached: {probes:?}"
        );
    }
    assert_eq!(s["sinks"]["api"]["api_version"], 1);
    assert_eq!(
        s["sinks"]["api"]["socket"],
        agent.socket.to_str().unwrap(),
        "{}",
        s["sinks"]["api"]
    );
    // The history holds the records the agent decoded, the refused connects among them.
    assert!(s["sinks"]["api"]["history_records"].as_u64().unwrap() >= 5);
    // The text form is the same document for people.
    let out = agent.cli(&["status"]).output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());

    // The agent's own account: the probes it reported at start are the status's, and
    // every counter of the status is at most the final one it prints at exit (they only
    // grow), TCP's within what happened after the status was read.
    let (status, _) = agent.stop();
    assert!(status.success());
    let lines: Vec<Value> = agent.stdout.take().unwrap().iter().collect();
    let reported: Vec<(Value, Value)> = lines
        .iter()
        .filter(|v| v["type"] == "probe_status")
        .map(|v| (v["program"].clone(), v["state"].clone()))
        .collect();
    let listed: Vec<(Value, Value)> = probes
        .iter()
        .map(|v| (v["program"].clone(), v["state"].clone()))
        .collect();
    assert_eq!(reported, listed);
    let last = lines
        .iter()
        .rev()
        .find(|v| v["type"] == "agent_stats")
        .expect("final agent_stats");
    for (family, counters) in s["agent"]["kernel"].as_object().unwrap() {
        for (name, value) in counters.as_object().unwrap() {
            let end = last["kernel"][family][name].as_u64().unwrap();
            assert!(
                value.as_u64().unwrap() <= end,
                "{family}.{name}: {value} > {end}"
            );
        }
    }
    let emitted = |v: &Value| v["kernel"]["tcp"]["events_emitted"].as_u64().unwrap();
    assert!(emitted(&s["agent"]) >= 5, "{}", s["agent"]);
    assert!(s["agent"]["records_decoded"].as_u64() <= last["records_decoded"].as_u64());
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    if !privileged("errors_are_clear_and_exit_non_zero") {
        return;
    }
    let fails = |args: &[&str], socket: &Path, wanted: &str| {
        let out = Command::new(hostscope_bin())
            .args(args)
            .arg("--socket")
            .arg(socket)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
    };
    let nowhere = PathBuf::from("/tmp/hostscope-api-nowhere/api.sock");
    fails(
        &["events"],
        &nowhere,
        "no hostscope agent at /tmp/hostscope-api-nowhere/api.sock: the socket does not exist",
    );
    fails(&["status"], &nowhere, "the socket does not exist");

    // A socket file nobody listens on (an agent that died): the client says so, and a
    // new agent replaces it.
    let dir = PathBuf::from(format!("/tmp/hostscope-api-stale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    fails(&["status"], &stale, "no hostscope agent listens at");

    let agent = ApiAgent::start("errors", &[]);
    fails(
        &["events", "--type", "tcpp"],
        &agent.socket,
        "bad filter: unknown record type \"tcpp\"",
    );
    fails(
        &["events", "--peer", "10.0.0.0/33"],
        &agent.socket,
        "bad filter: bad peer \"10.0.0.0/33\"",
    );
    fails(
        &["events", "--peer", "not-an-address"],
        &agent.socket,
        "not an address or a CIDR",
    );

    // A second agent on the same socket is a start-up error that says what to do.
    let out = Command::new(hostscope_bin())
        .args([
            "run",
            "--no-pin",
            "--no-prometheus",
            "--output",
            "none",
            "--duration",
            "1",
            "--api-socket",
        ])
        .arg(&agent.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("another hostscope agent already serves the API at"),
        "{err}"
    );
    // The first agent is untouched.
    agent.status();

    // The stale socket is replaced by a new agent.
    let mut replaced = Command::new(hostscope_bin())
        .args([
            "run",
            "--no-pin",
            "--no-prometheus",
            "--output",
            "none",
            "--duration",
            "20",
            "--api-socket",
        ])
        .arg(&stale)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(hostscope_bin())
            .args(["status", "--socket"])
            .arg(&stale)
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stale socket was not replaced"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = replaced.kill();
    let _ = replaced.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
