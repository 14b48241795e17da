//! The Prometheus endpoint of the real agent binary: scraped by a real Prometheus server
//! (Debian's `prometheus`, on loopback), its exposition checked by `promtool`, the health
//! endpoints and bad requests answered as docs/metrics.md says.
//!
//! Every agent here gets its own port on 127.0.0.1 and no pinning, so none collides with
//! an agent running with the defaults.

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hostscope_tests::{closed_port, hostscope_bin, http, privileged};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn free_port() -> u16 {
    let l = TcpListener::bind((LOOPBACK, 0)).expect("bind");
    l.local_addr().unwrap().port()
}

struct Agent {
    child: Child,
    addr: SocketAddr,
}

impl Agent {
    fn start(extra: &[&str]) -> Agent {
        Agent::start_under(&[], extra)
    }

    /// The agent run by `wrapper` (a command and its arguments, e.g. `setpriv …`), when
    /// not empty.
    fn start_under(wrapper: &[&str], extra: &[&str]) -> Agent {
        let addr = SocketAddr::new(LOOPBACK, free_port());
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(hostscope_bin());
                c
            }
            None => Command::new(hostscope_bin()),
        };
        let child = cmd
            .args([
                "run",
                "--output",
                "none",
                "--no-pin",
                "--no-api",
                "--poll-ms",
                "20",
            ])
            .args(["--stats-interval", "0", "--prometheus-listen"])
            .arg(addr.to_string())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting hostscope");
        let mut agent = Agent { child, addr };
        // Up once /healthz answers (the probes are loaded before the endpoint binds).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                let mut err = String::new();
                let _ = agent.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("the agent exited ({status}) before serving: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "no endpoint on {addr} after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        agent
    }

    fn get(&self, path: &str) -> (u16, String, String) {
        http(self.addr, "GET", path, None)
    }

    /// Polls /readyz until it answers 200 (10 s); returns its body.
    fn wait_ready(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, _, body) = self.get("/readyz");
            if code == 200 {
                return body;
            }
            assert!(Instant::now() < deadline, "/readyz still {code}: {body}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn require(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("{tool} not found: `cargo xtask setup` installs Debian's prometheus")
    })
}

/// A Prometheus server on loopback scraping `target` every second; removed on drop.
struct PromServer {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl PromServer {
    fn start(target: SocketAddr) -> PromServer {
        let bin = require("prometheus");
        let dir = std::env::temp_dir().join(format!("hostscope-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: hostscope\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = SocketAddr::new(LOOPBACK, free_port());
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("starting prometheus");
        let server = PromServer { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(addr).is_ok() && http(addr, "GET", "/-/ready", None).0 == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 30 s: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// The value of an instant query returning one sample, if it returned one.
    fn query(&self, promql: &str) -> Option<f64> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, _, body) = http(self.addr, "GET", &format!("/api/v1/query?query={q}"), None);
        assert_eq!(code, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn promtool_check(exposition: &str, dir: &Path) -> (bool, String) {
    let file = dir.join("exposition.txt");
    std::fs::write(&file, exposition).unwrap();
    let out = Command::new(require("promtool"))
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.trim().is_empty(), text)
}

#[test]
fn prometheus_counts_the_refused_connects_and_promtool_finds_no_problem() {
    if !privileged("prometheus_counts_the_refused_connects_and_promtool_finds_no_problem") {
        return;
    }
    let agent = Agent::start(&["--prometheus-records"]);
    let prom = PromServer::start(agent.addr);

    // Refused connects to a port of our own: no other traffic on the node has it.
    let target = closed_port(LOOPBACK);
    const REFUSED: usize = 7;
    for _ in 0..REFUSED {
        let e = TcpStream::connect(target).expect_err("connect to a closed port");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }
    let promql = format!(
        "sum(hostscope_tcp_connect_failures_total{{server_port=\"{}\",error_type=\"refused\"}})",
        target.port()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        last = prom.query(&promql);
        if last == Some(REFUSED as f64) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        last,
        Some(REFUSED as f64),
        "{promql} in Prometheus; its log: {}",
        prom.log()
    );
    // The agent's own health went through Prometheus too.
    assert_eq!(prom.query("hostscope_status_up"), Some(1.0));
    assert!(
        prom.query("sum(hostscope_records_total{result=\"decoded\"})")
            .is_some_and(|v| v >= REFUSED as f64),
        "records decoded"
    );
    assert_eq!(prom.query("up{job=\"hostscope\"}"), Some(1.0));

    // The exposition in both formats passes promtool's checks.
    let (code, head, text) = agent.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    for family in [
        "# TYPE hostscope_probe_events_total counter",
        "# TYPE hostscope_records_total counter",
        "# TYPE hostscope_tcp_connect_failures_total counter",
        "# TYPE hostscope_probe_state gauge",
        "# TYPE hostscope_map_entries gauge",
        "# TYPE hostscope_sink_stat gauge",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    let (ok, problems) = promtool_check(&text, &prom.dir);
    assert!(ok, "promtool check metrics: {problems}\n{text}");
    let (code, head, om) = http(
        agent.addr,
        "GET",
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
}

#[test]
fn health_endpoints_and_bad_requests() {
    if !privileged("health_endpoints_and_bad_requests") {
        return;
    }
    let agent = Agent::start(&[]);
    let (code, _, body) = agent.get("/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ok: run loop answered"), "{body}");
    assert!(body.contains("ring readers running"), "{body}");
    // Ready once records flow: the syscall aggregation's first interval at the latest.
    let body = agent.wait_ready();
    assert!(body.starts_with("ready: "), "{body}");
    for family in ["tcp: ok", "tls: ok", "sys: ok"] {
        assert!(body.contains(family), "{family}: {body}");
    }

    let (code, _, body) = agent.get("/nothing-here");
    assert_eq!(code, 404);
    assert!(body.contains("no such path: /nothing-here"), "{body}");
    let (code, head, body) = http(agent.addr, "POST", "/metrics", None);
    assert_eq!(code, 405);
    assert!(head.contains("allow: get, head"), "{head}");
    assert!(body.contains("only GET and HEAD"), "{body}");

    // A client that connects and sends nothing does not hold the endpoint: the others
    // are answered meanwhile.
    let _idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(agent.addr).unwrap())
        .collect();
    let started = Instant::now();
    assert_eq!(agent.get("/healthz").0, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The endpoint's own account, in the status it serves.
    let (_, _, text) = agent.get("/metrics");
    assert!(
        text.contains("hostscope_ring_readers{state=\"ended\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("hostscope_sink_stat{sink=\"prometheus\",key=\"not_found\"} 1"),
        "{text}"
    );
}

#[test]
fn readyz_names_a_degraded_family_and_why() {
    if !privileged("readyz_names_a_degraded_family_and_why") {
        return;
    }
    // The syscall hooks off: the family's security programs still attach, its
    // enter/exit programs (and the aggregation whose interval records would flow on
    // their own) do not. Ready once a record flows: a refused connect.
    let agent = Agent::start(&["--syscall-hooks", "off"]);
    let _ = TcpStream::connect(closed_port(LOOPBACK));
    let body = agent.wait_ready();
    let sys = body
        .lines()
        .find(|l| l.starts_with("sys: "))
        .unwrap_or_else(|| panic!("no sys line: {body}"));
    assert!(sys.starts_with("sys: degraded"), "{body}");
    assert!(sys.contains("syscall hooks off"), "{body}");
    assert!(body.contains("tcp: ok"), "{body}");
    assert_eq!(agent.get("/healthz").0, 200);
    let (_, _, text) = agent.get("/metrics");
    assert!(
        text.lines().any(|l| l.starts_with("hostscope_probe_state{")
            && l.contains("family=\"sys\"")
            && l.contains("program=\"syscall_exit\"")
            && l.contains("state=\"off\"")),
        "probe_state shows the hooks off:\n{text}"
    );
}

/// A family the configuration turns off entirely (the syscalls family: no hooks, no
/// security events) is "off", not down: the agent is ready once the others' records flow.
#[test]
fn a_family_off_by_configuration_leaves_the_agent_ready() {
    if !privileged("a_family_off_by_configuration_leaves_the_agent_ready") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hostscope-prom-off-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hostscope.yaml");
    std::fs::write(&file, "syscalls:\n  hooks: off\n  security: false\n").unwrap();
    let agent = Agent::start(&["--config", file.to_str().unwrap()]);
    let _ = TcpStream::connect(closed_port(LOOPBACK));
    let body = agent.wait_ready();
    assert!(body.starts_with("ready: "), "{body}");
    let sys = body
        .lines()
        .find(|l| l.starts_with("sys: "))
        .unwrap_or_else(|| panic!("no sys line: {body}"));
    assert!(
        sys.starts_with("sys: off: ") && sys.contains("syscalls.hooks: off"),
        "{body}"
    );
    assert!(sys.contains("syscalls.security: false"), "{body}");
    assert!(body.contains("tcp: ok"), "{body}");
    let (_, _, text) = agent.get("/metrics");
    let sys_states: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("hostscope_probe_state{") && l.contains("family=\"sys\""))
        .collect();
    assert!(!sys_states.is_empty(), "{text}");
    assert!(
        sys_states.iter().all(|l| l.contains("state=\"off\"")),
        "{sys_states:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A family with no program attached makes the agent unready, for as long as it lasts:
/// the TLS family with neither its wire programs (CAP_NET_ADMIN) nor its uprobes
/// (CAP_SYS_ADMIN), as a DaemonSet missing both would run. The body names the family and
/// the capability; liveness is unaffected.
#[test]
fn readyz_is_unavailable_while_a_family_has_nothing_attached() {
    if !privileged("readyz_is_unavailable_while_a_family_has_nothing_attached") {
        return;
    }
    let agent = Agent::start_under(
        &["setpriv", "--bounding-set=-net_admin,-sys_admin", "--"],
        &[],
    );
    let _ = TcpStream::connect(closed_port(LOOPBACK));
    // Records flow (the TCP and syscall families work) and it stays unready.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut last = (0, String::new());
    while Instant::now() < deadline {
        let (_, _, text) = agent.get("/metrics");
        let (code, _, body) = agent.get("/readyz");
        last = (code, body);
        let flowing = text.lines().any(|l| {
            l.starts_with("hostscope_records_total{result=\"decoded\"}") && !l.ends_with(" 0")
        });
        if flowing {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, body) = last;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("not ready: a probe family has no program attached"),
        "{body}"
    );
    let tls = body
        .lines()
        .find(|l| l.starts_with("tls: "))
        .unwrap_or_else(|| panic!("no tls line: {body}"));
    assert!(
        tls.starts_with("tls: down") && tls.contains("needs CAP_NET_ADMIN"),
        "{body}"
    );
    assert!(body.contains("tcp: ok"), "{body}");
    assert_eq!(agent.get("/healthz").0, 200, "liveness is not readiness");
}

#[test]
fn a_port_in_use_is_a_clear_error_at_start() {
    if !privileged("a_port_in_use_is_a_clear_error_at_start") {
        return;
    }
    let taken = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(hostscope_bin())
        .args([
            "run",
            "--output",
            "none",
            "--no-pin",
            "--no-api",
            "--duration",
            "5",
        ])
        .args(["--prometheus-listen", &addr.to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a port in use: {err}");
    assert!(
        err.contains(&format!("prometheus.listen {addr}")) && err.contains("in use"),
        "{err}"
    );

    let out = Command::new(hostscope_bin())
        .args(["run", "--prometheus-listen", "localhost"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--prometheus-listen"), "{err}");
}
