//! OTLP export against a receiver we did not write: the OpenTelemetry project's Python
//! `opentelemetry-proto` messages and services on grpcio (and a plain http.server handler
//! for OTLP/HTTP), decoding what hostscope sends into JSON (tests/otlp/receiver.py).
//!
//! The first tests trigger real events under the real probes (a refused connect, an
//! expired-certificate handshake, a watched-file read) and check names, units, attributes
//! and values. The failure-path tests feed the exporter synthetic records so that every
//! item can be accounted for exactly: outages with the disk queue, retryable and
//! non-retryable answers, a slow receiver, TLS and mTLS, bad options.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use hostscope::{
    agent::SharedRecord,
    events::{
        tcp::{Direction, Failure, TcpEventKind, TcpRecord},
        Record,
    },
    export::{
        config::{Compression, Protocol},
        ExportConfig, ExportSection, ExportSnapshot, Exporter,
    },
    loader::{syscalls::SyscallOptions, LoaderConfig},
    metadata::Resolver,
    sink::SinkContext,
    status::StatusHandle,
    AgentConfig,
};
use hostscope_tests::{
    closed_port,
    otlp::{self, attr, int_value, latest_points, local_pki, Receiver},
    privileged,
    tls::{pki, s_client, Server, SERVER_NAME},
    Harness,
};
use serde_json::Value;
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(15);

fn args(endpoint: &str, protocol: Protocol) -> ExportSection {
    ExportSection {
        endpoint: Some(endpoint.into()),
        protocol: Some(protocol),
        interval: Duration::from_secs_f64(0.3),
        timeout: Some(Duration::from_millis(3000)),
        max_retry: Duration::from_secs_f64(60.0),
        // These tests count items through the per-failure log records (the RCA
        // incidents that replace them by default are tested in tests/tests/rca.rs).
        failure_logs: true,
        ..Default::default()
    }
}

fn resolve(a: ExportSection) -> ExportConfig {
    a.resolve(&Default::default(), &BTreeMap::<&str, &str>::new())
        .expect("valid options")
        .expect("an endpoint")
}

/// An exporter fed by the test through its own record channel.
struct Fed {
    rt: tokio::runtime::Runtime,
    tx: broadcast::Sender<SharedRecord>,
    exporter: Option<Exporter>,
}

impl Fed {
    fn start(config: ExportConfig) -> Fed {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = broadcast::channel(4096);
        let exporter = {
            let _g = rt.enter();
            Exporter::start(config, SinkContext::standalone(rx)).expect("exporter starts")
        };
        Fed {
            rt,
            tx,
            exporter: Some(exporter),
        }
    }

    fn send(&self, ids: std::ops::Range<u64>) {
        for id in ids {
            self.tx.send(Arc::new(failed_connect(id))).unwrap();
        }
    }

    fn snapshot(&self) -> ExportSnapshot {
        self.exporter.as_ref().unwrap().snapshot()
    }

    fn wait_snapshot(&self, what: &str, pred: impl Fn(&ExportSnapshot) -> bool) -> ExportSnapshot {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.snapshot();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what} not reached: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self, grace: Duration) -> ExportSnapshot {
        let e = self.exporter.take().unwrap();
        self.rt.block_on(e.stop(grace))
    }
}

/// A refused connect to 10.9.9.9:9, told apart by its connection id.
fn failed_connect(conn_id: u64) -> Record {
    Record::Tcp(TcpRecord {
        event: TcpEventKind::ConnectFailed,
        timestamp_unix_ns: 1_700_000_000_000_000_000 + conn_id,
        conn_id,
        direction: Direction::Active,
        local: "10.9.9.1:40000".parse().unwrap(),
        remote: "10.9.9.9:9".parse().unwrap(),
        remote_name: None,
        pid: Some(4242),
        tid: Some(4242),
        comm: Some("synthetic".into()),
        cgroup_id: Some(1),
        state: "CLOSE",
        previous_state: "SYN_SENT",
        connect_latency_us: None,
        handshake_rtt_us: None,
        syn_retransmits: 0,
        handshake_end_unseen: false,
        failure: Some(Failure::from_errno(libc::ECONNREFUSED as u32)),
        duration_us: Some(120.0),
        bytes_acked: None,
        bytes_received: None,
        srtt_us: None,
        retransmits: None,
        resets_sent: 0,
        resets_received: 0,
    })
}

/// Connection ids of the spans received, in order.
fn span_ids(requests: &[Value]) -> Vec<u64> {
    otlp::spans(requests)
        .iter()
        .filter_map(|(_, s)| attr(s, "hostscope.tcp.conn_id")?.parse().ok())
        .collect()
}

fn log_ids(requests: &[Value]) -> Vec<u64> {
    otlp::logs(requests)
        .iter()
        .filter_map(|(_, l)| attr(l, "hostscope.tcp.conn_id")?.parse().ok())
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn resource_attr(resource: &Value, key: &str) -> Option<String> {
    attr(resource, key)
}

// ---- real events under the real probes ----------------------------------------------

fn watched_dir() -> PathBuf {
    let d = otlp::temp_path("watched");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn harness_watching(dir: &std::path::Path) -> Harness {
    Harness::start_with(AgentConfig {
        loader: LoaderConfig {
            pin_dir: None,
            syscalls: SyscallOptions {
                watch_paths: vec![format!("{}/", dir.display())],
                ..SyscallOptions::default()
            },
            ..LoaderConfig::default()
        },
        ..AgentConfig::default()
    })
}

fn start_exporter(h: &Harness, config: ExportConfig) -> Exporter {
    let _g = h.rt.enter();
    let agent = h.agent();
    Exporter::start(
        config,
        SinkContext {
            resolver: Arc::new(Resolver::node_local()),
            ..agent.sink_context(StatusHandle::unavailable())
        },
    )
    .expect("exporter starts")
}

/// A refused connect made by a child process (the exporter leaves out the records of its
/// own process, which in these tests is the test process). Returns the child's pid.
fn refused_connect_from_child(target: std::net::SocketAddr) -> u32 {
    let mut child = Command::new("bash")
        .args([
            "-c",
            &format!("exec 3<>/dev/tcp/{}/{}", target.ip(), target.port()),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("bash");
    let pid = child.id();
    assert!(
        !child.wait().unwrap().success(),
        "the connect must be refused"
    );
    pid
}

fn point_with<'a>(points: &'a [Value], pairs: &[(&str, &str)]) -> Option<&'a Value> {
    points
        .iter()
        .find(|p| pairs.iter().all(|(k, v)| attr(p, k).as_deref() == Some(*v)))
}

#[test]
fn grpc_exports_refused_connect_expired_certificate_and_watched_file() {
    if !privileged("grpc_exports_refused_connect_expired_certificate_and_watched_file") {
        return;
    }
    let receiver = Receiver::start("grpc", &[]);
    let dir = watched_dir();
    let h = harness_watching(&dir);
    let mut a = args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::Grpc,
    );
    a.headers.insert("x-tenant".into(), "net-team".into());
    a.resource
        .insert("service.name".into(), "hostscope-test".into());
    a.resource
        .insert("deployment.environment".into(), "ci".into());
    let exporter = start_exporter(&h, resolve(a));

    // A refused connect, an expired certificate over TLS 1.2, a watched file read.
    // (From child processes: the test process is the agent, whose records are left out.)
    let target = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let connector = refused_connect_from_child(target).to_string();
    let server = Server::start(&pki().expired(), &["-tls1_2"]);
    let (_, ok) = s_client(server.addr, &[]);
    assert!(!ok, "s_client must reject the expired certificate");
    let secret = dir.join("secret");
    std::fs::write(&secret, b"not exported").unwrap();
    let mut cat = Command::new("cat")
        .arg(&secret)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let reader = cat.id().to_string();
    assert!(cat.wait().unwrap().success());
    let secret = secret.display().to_string();
    let port = target.port().to_string();

    let requests = receiver.wait(WAIT, "refused, TLS failure and file access", |r| {
        let failures = latest_points(r, "tcp.connect.failures");
        let tls = latest_points(r, "tls.handshake.failures");
        point_with(
            &failures,
            &[("error.type", "refused"), ("server.port", &port)],
        )
        .is_some()
            && point_with(&tls, &[("error.type", "certificate_expired")]).is_some()
            && otlp::logs(r)
                .iter()
                .any(|(_, l)| attr(l, "file.path").as_deref() == Some(secret.as_str()))
            && otlp::spans(r)
                .iter()
                .any(|(_, s)| {
                    s["name"] == "tls.handshake"
                        && s["kind"] == "SPAN_KIND_CLIENT"
                        && attr(s, "error.type").as_deref() == Some("certificate_expired")
                })
            && otlp::spans(r).iter().any(|(_, s)| {
                s["name"] == "tcp.connect"
                    && attr(s, "network.peer.port").as_deref() == Some(port.as_str())
            })
            // Logs travel in their own requests, after the spans of the same interval.
            && otlp::logs(r).iter().any(|(_, l)| {
                l["eventName"] == "hostscope.tls.handshake_failed"
                    && attr(l, "error.type").as_deref() == Some("certificate_expired")
            })
            && otlp::logs(r).iter().any(|(_, l)| {
                l["eventName"] == "hostscope.tcp.connect_failed"
                    && attr(l, "network.peer.port").as_deref() == Some(port.as_str())
            })
    });
    exporter.set_agent_stats(h.agent().stats());

    // Metrics: names, units, attributes, values.
    let all = otlp::metrics(&requests);
    let unit = |name: &str| {
        all.iter()
            .find(|m| m["name"] == name)
            .map(|m| m["unit"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(
        unit("tcp.connect.failures").as_deref(),
        Some("{connection}")
    );
    assert_eq!(unit("tls.handshake.duration").as_deref(), Some("s"));
    assert_eq!(unit("tls.certificate.time_to_expiry").as_deref(), Some("s"));
    let failures = latest_points(&requests, "tcp.connect.failures");
    let refused = point_with(
        &failures,
        &[("error.type", "refused"), ("server.port", &port)],
    )
    .unwrap();
    assert!(int_value(refused) >= 1, "{refused}");
    assert_eq!(attr(refused, "network.type").as_deref(), Some("ipv4"));
    assert!(
        attr(refused, "process.pid").is_none(),
        "pids are not metric attributes by default"
    );
    assert!(attr(refused, "network.peer.address").is_none());
    let sum = all
        .iter()
        .find(|m| m["name"] == "tcp.connect.failures")
        .unwrap();
    assert_eq!(sum["sum"]["isMonotonic"], true);
    assert_eq!(
        sum["sum"]["aggregationTemporality"],
        "AGGREGATION_TEMPORALITY_CUMULATIVE"
    );

    let hs = latest_points(&requests, "tls.handshake.duration");
    let failed = point_with(
        &hs,
        &[
            ("hostscope.tls.outcome", "failure"),
            ("error.type", "certificate_expired"),
        ],
    )
    .unwrap_or_else(|| panic!("no failed handshake duration point in {hs:?}"));
    assert!(failed["count"].as_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(failed["sum"].as_f64().unwrap() > 0.0 && failed["sum"].as_f64().unwrap() < 5.0);
    assert_eq!(failed["explicitBounds"].as_array().unwrap().len(), 11);

    let expiry = receiver.wait(WAIT, "certificate expiry gauge", |r| {
        point_with(
            &latest_points(r, "tls.certificate.time_to_expiry"),
            &[("server.address", SERVER_NAME)],
        )
        .is_some()
    });
    let points = latest_points(&expiry, "tls.certificate.time_to_expiry");
    let gauge = point_with(&points, &[("server.address", SERVER_NAME)]).unwrap();
    // Expired on 2020-02-01: years in the past.
    assert!(
        gauge["asDouble"].as_f64().unwrap() < -86_400.0 * 365.0,
        "{gauge}"
    );

    // Spans: failed connect and TLS handshake, error status, process on the resource.
    let spans = otlp::spans(&requests);
    let (res, connect) = spans
        .iter()
        .find(|(_, s)| {
            s["name"] == "tcp.connect"
                && attr(s, "network.peer.port").as_deref() == Some(port.as_str())
        })
        .expect("failed-connect span");
    assert_eq!(connect["status"]["code"], "STATUS_CODE_ERROR");
    assert_eq!(connect["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(attr(connect, "error.type").as_deref(), Some("refused"));
    assert_eq!(
        resource_attr(res, "process.pid").as_deref(),
        Some(connector.as_str())
    );
    assert_eq!(
        resource_attr(res, "service.name").as_deref(),
        Some("hostscope-test")
    );
    assert_eq!(
        resource_attr(res, "deployment.environment").as_deref(),
        Some("ci")
    );
    assert!(resource_attr(res, "host.name").is_some());
    let (_, tls) = spans
        .iter()
        .find(|(_, s)| {
            s["name"] == "tls.handshake"
                && s["kind"] == "SPAN_KIND_CLIENT"
                && attr(s, "error.type").as_deref() == Some("certificate_expired")
        })
        .expect("failed TLS handshake span from the client");
    assert_eq!(tls["status"]["code"], "STATUS_CODE_ERROR");
    assert_eq!(attr(tls, "server.address").as_deref(), Some(SERVER_NAME));
    assert_eq!(attr(tls, "tls.protocol.version").as_deref(), Some("1.2"));

    // Logs: the file access and the network root causes.
    let logs = otlp::logs(&requests);
    let (_, file) = logs
        .iter()
        .find(|(_, l)| attr(l, "file.path").as_deref() == Some(secret.as_str()))
        .unwrap();
    assert_eq!(file["severityText"], "WARN");
    assert_eq!(file["severityNumber"], "SEVERITY_NUMBER_WARN");
    assert_eq!(file["eventName"], "hostscope.security.file_access");
    assert_eq!(attr(file, "process.pid").as_deref(), Some(reader.as_str()));
    assert!(
        !file.to_string().contains("not exported"),
        "file contents never leave"
    );
    assert!(logs
        .iter()
        .any(|(_, l)| l["eventName"] == "hostscope.tcp.connect_failed"
            && attr(l, "network.peer.port").as_deref() == Some(port.as_str())));
    assert!(logs
        .iter()
        .any(|(_, l)| l["eventName"] == "hostscope.tls.handshake_failed"
            && attr(l, "error.type").as_deref() == Some("certificate_expired")));

    // Headers reach the backend; the agent's own health follows.
    assert!(requests
        .iter()
        .all(|r| r["headers"]["x-tenant"] == "net-team"));
    let health = receiver.wait(WAIT, "self metrics", |r| {
        point_with(
            &latest_points(r, "hostscope.records"),
            &[("hostscope.result", "decoded")],
        )
        .is_some_and(|p| int_value(p) > 0)
    });
    let sent = latest_points(&health, "hostscope.export.items");
    assert!(point_with(
        &sent,
        &[
            ("hostscope.signal", "traces"),
            ("hostscope.export.result", "sent")
        ]
    )
    .is_some_and(|p| int_value(p) >= 2));
    drop(server);
    let snap = h.rt.block_on(exporter.stop(Duration::from_secs(2)));
    assert_eq!(
        snap.count("traces", "failed") + snap.count("traces", "dropped"),
        0,
        "{snap}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn http_protobuf_gzip_exports_a_refused_connect() {
    if !privileged("http_protobuf_gzip_exports_a_refused_connect") {
        return;
    }
    let receiver = Receiver::start("http", &[]);
    let h = Harness::start();
    let mut a = args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::HttpProtobuf,
    );
    a.compression = Some(Compression::Gzip);
    let exporter = start_exporter(&h, resolve(a));
    let target = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    refused_connect_from_child(target);
    let port = target.port().to_string();
    let requests = receiver.wait(WAIT, "refused connect over HTTP", |r| {
        point_with(
            &latest_points(r, "tcp.connect.failures"),
            &[("error.type", "refused"), ("server.port", &port)],
        )
        .is_some()
            && otlp::spans(r)
                .iter()
                .any(|(_, s)| attr(s, "network.peer.port").as_deref() == Some(port.as_str()))
    });
    for r in &requests {
        assert_eq!(r["transport"], "http");
        assert_eq!(r["headers"]["content-encoding"], "gzip");
        assert_eq!(r["headers"]["content-type"], "application/x-protobuf");
    }
    let snap = h.rt.block_on(exporter.stop(Duration::from_secs(2)));
    assert!(
        snap.bytes_sent > 0 && snap.count("metrics", "sent") > 0,
        "{snap}"
    );
}

#[test]
fn connection_spans_cover_connect_to_close_with_resets_as_events() {
    if !privileged("connection_spans_cover_connect_to_close_with_resets_as_events") {
        return;
    }
    let receiver = Receiver::start("grpc", &[]);
    let h = Harness::start();
    let mut a = args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::Grpc,
    );
    a.connection_spans = true;
    let exporter = start_exporter(&h, resolve(a));

    // A clean connection with a payload, then one the server aborts with a RST, both
    // made by a child process: the test process is the agent, whose records are left out.
    const SCRIPT: &str = r#"
import socket, struct, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)
server = l.getsockname()[1]
c = socket.create_connection(("127.0.0.1", server)); a, _ = l.accept()
c.sendall(b"\x07" * 3000); got = b""
while len(got) < 3000:
    got += a.recv(3000 - len(got))
clean = c.getsockname()[1]; c.close(); a.close()
r = socket.create_connection(("127.0.0.1", server)); b, _ = l.accept()
reset = r.getsockname()[1]; r.sendall(b"hello"); time.sleep(0.05)
b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); b.close()
try:
    r.recv(16); was_reset = 0
except ConnectionResetError:
    was_reset = 1
r.close()
print(server, clean, reset, was_reset)
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ports: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let [server_port, clean_port, reset_port, was_reset] = &ports[..] else {
        panic!("script said {ports:?}");
    };
    assert_eq!(was_reset, "1", "the connection was reset");
    let (clean_port, reset_port) = (clean_port.clone(), reset_port.clone());

    let is_conn = |s: &Value, port: &str| {
        s["name"] == "tcp.connection"
            && attr(s, "network.local.port").as_deref() == Some(port)
            && s["kind"] == "SPAN_KIND_CLIENT"
    };
    let requests = receiver.wait(WAIT, "connection spans of both connections", |r| {
        let spans = otlp::spans(r);
        spans.iter().any(|(_, s)| is_conn(s, &clean_port))
            && spans.iter().any(|(_, s)| is_conn(s, &reset_port))
    });
    let spans = otlp::spans(&requests);
    let (_, ok) = spans.iter().find(|(_, s)| is_conn(s, &clean_port)).unwrap();
    assert_eq!(attr(ok, "server.port").as_ref(), Some(server_port));
    // tcp_info counts SYN and FIN too.
    let acked: u64 = attr(ok, "hostscope.tcp.bytes_acked")
        .unwrap()
        .parse()
        .unwrap();
    assert!((3000..=3002).contains(&acked), "bytes acked {acked}");
    assert!(ok["events"].as_array().is_none_or(|e| e.is_empty()), "{ok}");
    assert_ne!(ok["status"]["code"], "STATUS_CODE_ERROR", "{ok}");
    let start: u64 = ok["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = ok["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end > start, "{ok}");

    let (_, bad) = spans.iter().find(|(_, s)| is_conn(s, &reset_port)).unwrap();
    let events = bad["events"].as_array().expect("reset events");
    assert!(
        events.iter().any(|e| e["name"] == "tcp.reset_received"),
        "{bad}"
    );
    assert_eq!(bad["status"]["code"], "STATUS_CODE_ERROR", "{bad}");
    assert!(
        bad["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ECONNRESET")),
        "{bad}"
    );
    assert_eq!(
        attr(bad, "hostscope.tcp.resets_received").as_deref(),
        Some("1")
    );
    // The server side of the aborted connection: a server span with the RST it sent.
    assert!(
        spans.iter().any(|(_, s)| s["name"] == "tcp.connection"
            && s["kind"] == "SPAN_KIND_SERVER"
            && attr(s, "network.peer.port").as_deref() == Some(reset_port.as_str())
            && s["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["name"] == "tcp.reset_sent"))),
        "no server span with a reset_sent event"
    );
    let snap = h.rt.block_on(exporter.stop(Duration::from_secs(2)));
    assert_eq!(snap.count("traces", "dropped"), 0, "{snap}");
}

/// The exporter's own refused connects to a backend that is down (real records from the
/// probes: the test process is the agent here) are left out of spans, logs and metrics
/// and counted as excluded; another process's refused connect in the same outage is
/// exported. The backend then comes up (reconfigure) and gets the queue.
#[test]
fn the_agents_own_failed_export_connects_are_not_exported() {
    if !privileged("the_agents_own_failed_export_connects_are_not_exported") {
        return;
    }
    let down = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let h = Harness::start();
    let mut a = args(&format!("http://127.0.0.1:{}", down.port()), Protocol::Grpc);
    a.timeout = Some(Duration::from_millis(1000));
    let exporter = start_exporter(&h, resolve(a));
    let me = std::process::id();
    let own = h.wait_tcp(2, WAIT, |r| {
        r.event == TcpEventKind::ConnectFailed && r.remote == down && r.pid == Some(me)
    });
    assert!(!own.is_empty());
    let other = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    refused_connect_from_child(other);
    let deadline = Instant::now() + WAIT;
    while exporter.snapshot().count("records", "excluded") < 2 {
        assert!(Instant::now() < deadline, "{}", exporter.snapshot());
        std::thread::sleep(Duration::from_millis(50));
    }

    let receiver = Receiver::start("grpc", &[]);
    h.rt.block_on(exporter.reconfigure(resolve(args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::Grpc,
    ))))
    .expect("reconfigured");
    let other_port = other.port().to_string();
    let requests = receiver.wait(WAIT, "the other process's refused connect", |r| {
        otlp::spans(r)
            .iter()
            .any(|(_, s)| attr(s, "network.peer.port").as_deref() == Some(other_port.as_str()))
            && otlp::logs(r)
                .iter()
                .any(|(_, l)| attr(l, "network.peer.port").as_deref() == Some(other_port.as_str()))
            && point_with(
                &latest_points(r, "tcp.connect.failures"),
                &[("server.port", &other_port)],
            )
            .is_some()
    });
    let down_port = down.port().to_string();
    let own_span = otlp::spans(&requests)
        .into_iter()
        .find(|(_, s)| attr(s, "network.peer.port").as_deref() == Some(down_port.as_str()));
    assert!(own_span.is_none(), "own connect exported: {own_span:?}");
    let own_log = otlp::logs(&requests)
        .into_iter()
        .find(|(_, l)| attr(l, "network.peer.port").as_deref() == Some(down_port.as_str()));
    assert!(own_log.is_none(), "own connect exported: {own_log:?}");
    let failures = latest_points(&requests, "tcp.connect.failures");
    assert!(
        point_with(&failures, &[("server.port", &down_port)]).is_none(),
        "own connects counted in tcp.connect.failures: {failures:?}"
    );
    let snap = h.rt.block_on(exporter.stop(Duration::from_secs(2)));
    let excluded = snap
        .items
        .get(&("records", "excluded", "own_process".to_string()))
        .copied()
        .unwrap_or(0);
    assert!(excluded >= 2, "{snap}");
    assert!(
        snap.to_string().contains("records excluded (own_process)="),
        "{snap}"
    );
}

#[test]
fn http_protobuf_zstd_exports_a_refused_connect() {
    if !privileged("http_protobuf_zstd_exports_a_refused_connect") {
        return;
    }
    let receiver = Receiver::start("http", &[]);
    let h = Harness::start();
    let mut a = args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::HttpProtobuf,
    );
    a.compression = Some(Compression::Zstd);
    let exporter = start_exporter(&h, resolve(a));
    let target = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    refused_connect_from_child(target);
    let port = target.port().to_string();
    // The receiver decodes zstd bodies: the span and the metric arrive readable.
    let requests = receiver.wait(WAIT, "refused connect over HTTP with zstd", |r| {
        point_with(
            &latest_points(r, "tcp.connect.failures"),
            &[("error.type", "refused"), ("server.port", &port)],
        )
        .is_some()
            && otlp::spans(r)
                .iter()
                .any(|(_, s)| attr(s, "network.peer.port").as_deref() == Some(port.as_str()))
    });
    for r in &requests {
        assert_eq!(r["headers"]["content-encoding"], "zstd");
    }
    let snap = h.rt.block_on(exporter.stop(Duration::from_secs(2)));
    assert!(
        snap.bytes_sent > 0 && snap.count("metrics", "sent") > 0,
        "{snap}"
    );
}

/// grpcio (the receiver) has no zstd: the request is refused with INTERNAL, which is not
/// retryable, so it is counted as failed at once instead of retried in silence.
#[test]
fn grpc_zstd_to_a_receiver_without_zstd_fails_clearly() {
    let receiver = Receiver::start("grpc", &[]);
    let mut a = args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::Grpc,
    );
    a.compression = Some(Compression::Zstd);
    let fed = Fed::start(resolve(a));
    fed.send(0..3);
    let s = fed.wait_snapshot("spans failed", |s| s.count("traces", "failed") == 3);
    assert_eq!(s.retries, 0, "{s}");
    // grpcio cannot parse `grpc-encoding: zstd` and answers INTERNAL.
    assert!(
        s.items
            .contains_key(&("traces", "failed", "grpc_internal".to_string())),
        "{s}"
    );
    fed.stop(Duration::from_millis(200));
}

// ---- failure paths -------------------------------------------------------------------

#[test]
fn receiver_down_then_up_with_disk_queue_delivers_every_item_exactly_once() {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = otlp::temp_path("disk-queue");
    let config = || {
        let mut a = args(&endpoint, Protocol::Grpc);
        a.disk_queue = Some(dir.clone());
        a.max_batch = 10;
        a.timeout = Some(Duration::from_millis(1000));
        resolve(a)
    };
    // Backend down: 50 failed connects, in five batches, queue on disk.
    let fed = Fed::start(config());
    for b in 0..5 {
        fed.send(b * 10..b * 10 + 10);
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = fed.wait_snapshot("requests queued on disk while retrying", |s| {
        s.queue_len >= 10 && s.retries >= 1
    });
    assert_eq!(s.count("traces", "sent"), 0);
    // The agent restarts during the outage: the queue stays on disk.
    let s = fed.stop(Duration::from_millis(200));
    assert_eq!(
        s.count("traces", "dropped") + s.count("traces", "failed"),
        0,
        "{s}"
    );
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert!(on_disk >= 10, "{on_disk} files on disk");

    // Backend up; the next run replays in order.
    let receiver = Receiver::start_on("grpc", port, &otlp::temp_path("recv.jsonl"), &[]);
    let fed = Fed::start(config());
    let requests = receiver.wait(WAIT, "all 50 spans and logs", |r| {
        span_ids(r).len() >= 50 && log_ids(r).len() >= 50
    });
    std::thread::sleep(Duration::from_millis(700));
    let requests = std::cmp::max_by_key(requests, receiver.requests(), |r| r.len());
    let spans = span_ids(&requests);
    assert_eq!(
        spans,
        (0..50).collect::<Vec<_>>(),
        "every span once, in order"
    );
    assert_eq!(
        log_ids(&requests),
        (0..50).collect::<Vec<_>>(),
        "every log once, in order"
    );
    let s = fed.stop(Duration::from_secs(1));
    assert_eq!(s.queue_len, 0, "{s}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The end of a disk queue file's name for requests stored as `c` (the agent's queue
/// format: see agent/src/export/queue.rs).
fn stored_suffix(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => ".pb.gz",
        Compression::Zstd => ".pb.zst",
        Compression::None => ".pb",
    }
}

/// An outage with the disk queue: requests are stored compressed with the wire's encoding
/// (zstd for an uncompressed wire), the oldest files are turned back into the plain
/// protobuf a version before compressed storage wrote (an upgrade during an outage), and
/// once the receiver is back every span and log arrives once, in order, decoded, each
/// request with the wire's `Content-Encoding`.
fn outage_with_a_compressed_disk_queue(protocol: Protocol, wire: Compression) {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = otlp::temp_path("zip-queue");
    let config = || {
        let mut a = args(&endpoint, protocol);
        a.compression = Some(wire);
        a.disk_queue = Some(dir.clone());
        a.max_batch = 10;
        a.timeout = Some(Duration::from_millis(1000));
        resolve(a)
    };
    let fed = Fed::start(config());
    for b in 0..4 {
        fed.send(b * 10..b * 10 + 10);
        std::thread::sleep(Duration::from_millis(50));
    }
    fed.wait_snapshot("8 requests queued on disk while retrying", |s| {
        s.queue_len >= 8 && s.retries >= 1
    });
    let s = fed.stop(Duration::from_millis(200));
    assert_eq!(
        s.count("traces", "dropped") + s.count("traces", "failed"),
        0,
        "{s}"
    );
    let stored = hostscope::export::compress::stored(wire);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (mut stored_bytes, mut plain_bytes) = (0, 0);
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(stored_suffix(stored)), "{name}");
        let data = std::fs::read(f).unwrap();
        let plain = hostscope::export::compress::decompress(stored, &data).unwrap();
        stored_bytes += data.len();
        plain_bytes += plain.len();
    }
    assert!(
        stored_bytes * 2 < plain_bytes,
        "stored {stored_bytes} bytes for {plain_bytes} of requests"
    );
    assert_eq!(
        s.queue_bytes, stored_bytes as u64,
        "the queue counts the stored bytes: {s}"
    );
    // The first traces and logs requests as a version before compressed storage left them.
    for signal in ["traces", "logs"] {
        let f = files
            .iter()
            .find(|f| f.to_str().unwrap().contains(&format!(".{signal}.")))
            .unwrap();
        let plain =
            hostscope::export::compress::decompress(stored, &std::fs::read(f).unwrap()).unwrap();
        let name = f.file_name().unwrap().to_str().unwrap();
        let old = name.strip_suffix(stored_suffix(stored)).unwrap();
        std::fs::write(dir.join(format!("{old}.pb")), plain).unwrap();
        std::fs::remove_file(f).unwrap();
    }

    let proto = match protocol {
        Protocol::Grpc => "grpc",
        Protocol::HttpProtobuf => "http",
    };
    let receiver = Receiver::start_on(proto, port, &otlp::temp_path("recv.jsonl"), &[]);
    let fed = Fed::start(config());
    let requests = receiver.wait(WAIT, "all 40 spans and logs", |r| {
        span_ids(r).len() >= 40 && log_ids(r).len() >= 40
    });
    std::thread::sleep(Duration::from_millis(700));
    let requests = std::cmp::max_by_key(requests, receiver.requests(), |r| r.len());
    assert_eq!(
        span_ids(&requests),
        (0..40).collect::<Vec<_>>(),
        "every span once, in order"
    );
    assert_eq!(
        log_ids(&requests),
        (0..40).collect::<Vec<_>>(),
        "every log once, in order"
    );
    if protocol == Protocol::HttpProtobuf {
        let expected = match wire {
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
            Compression::None => None,
        };
        for r in &requests {
            assert_eq!(r["headers"]["content-encoding"].as_str(), expected, "{r}");
        }
    }
    let s = fed.stop(Duration::from_secs(1));
    assert_eq!(s.queue_len, 0, "{s}");
    assert_eq!(
        s.count("traces", "dropped") + s.count("traces", "failed"),
        0,
        "{s}"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn outage_with_a_gzip_disk_queue_over_grpc_delivers_old_and_new_files() {
    outage_with_a_compressed_disk_queue(Protocol::Grpc, Compression::Gzip);
}

#[test]
fn outage_with_a_zstd_disk_queue_over_http_delivers_old_and_new_files() {
    outage_with_a_compressed_disk_queue(Protocol::HttpProtobuf, Compression::Zstd);
}

/// An uncompressed wire: stored as zstd all the same, decompressed before sending.
#[test]
fn outage_with_an_uncompressed_wire_stores_zstd_and_sends_plain() {
    outage_with_a_compressed_disk_queue(Protocol::HttpProtobuf, Compression::None);
}

/// A backend that accepts connections and never answers: requests hang in flight until
/// their timeout. The accepted sockets are kept open for the life of the test process.
fn blackhole() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

/// Records queued for an endpoint that does not deliver, then `stop(1 s)`: returns within
/// 2 s although the request timeout is 10 s and retries would go on for a minute.
fn stop_within_deadline(
    endpoint: &str,
    protocol: Protocol,
    disk: Option<PathBuf>,
) -> ExportSnapshot {
    let mut a = args(endpoint, protocol);
    a.timeout = Some(Duration::from_millis(10_000));
    a.disk_queue = disk;
    let fed = Fed::start(resolve(a));
    fed.send(0..20);
    fed.wait_snapshot("spans and logs queued", |s| s.queue_len >= 2);
    let t = Instant::now();
    let s = fed.stop(Duration::from_secs(1));
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "stop(1s) to {endpoint} ({protocol:?}) took {took:?}: {s}"
    );
    s
}

fn shutdown_drops(s: &ExportSnapshot, signal: &'static str) -> u64 {
    s.items
        .get(&(signal, "dropped", "shutdown".to_string()))
        .copied()
        .unwrap_or(0)
}

#[test]
fn stop_holds_its_deadline_with_a_closed_port_and_a_blackhole() {
    let closed = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).port();
    let hole = blackhole();
    for (port, protocol) in [
        (closed, Protocol::Grpc),
        (closed, Protocol::HttpProtobuf),
        (hole, Protocol::Grpc),
        (hole, Protocol::HttpProtobuf),
    ] {
        let s = stop_within_deadline(&format!("http://127.0.0.1:{port}"), protocol, None);
        // Nothing was delivered: every span and log record is counted as a shutdown drop.
        assert_eq!(shutdown_drops(&s, "traces"), 20, "{s}");
        assert_eq!(shutdown_drops(&s, "logs"), 20, "{s}");
        assert_eq!(
            s.count("traces", "sent") + s.count("traces", "failed"),
            0,
            "{s}"
        );
        assert_eq!(s.queue_len, 0, "{s}");
    }
}

#[test]
fn stop_holds_its_deadline_with_a_disk_queue_which_keeps_the_requests() {
    let hole = blackhole();
    let dir = otlp::temp_path("stop-disk");
    let s = stop_within_deadline(
        &format!("http://127.0.0.1:{hole}"),
        Protocol::Grpc,
        Some(dir.clone()),
    );
    assert_eq!(
        s.count("traces", "dropped") + s.count("logs", "dropped"),
        0,
        "the disk queue keeps what was not delivered: {s}"
    );
    assert!(s.queue_len >= 2, "{s}");
    // The next start replays them.
    let receiver = Receiver::start("grpc", &[]);
    let mut a = args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::Grpc,
    );
    a.disk_queue = Some(dir.clone());
    let fed = Fed::start(resolve(a));
    let r = receiver.wait(WAIT, "the 20 spans and logs replayed", |r| {
        span_ids(r).len() >= 20 && log_ids(r).len() >= 20
    });
    assert_eq!(span_ids(&r), (0..20).collect::<Vec<_>>());
    fed.stop(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records exported to receiver A, A goes away, more records queue up, then the exporter
/// is reconfigured to receiver B (another protocol, so the transports really are rebuilt):
/// B gets everything A did not, exactly once, and the counters and the cumulative metric
/// totals carry over.
fn reconfigure_delivers_the_queue_to_the_new_endpoint(disk: bool) {
    let a_recv = Receiver::start("grpc", &[]);
    let dir = otlp::temp_path("reconf-disk");
    let config = |endpoint: String, protocol| {
        let mut a = args(&endpoint, protocol);
        a.max_batch = 10;
        a.timeout = Some(Duration::from_millis(1000));
        a.disk_queue = disk.then(|| dir.clone());
        resolve(a)
    };
    let fed = Fed::start(config(
        format!("http://127.0.0.1:{}", a_recv.port),
        Protocol::Grpc,
    ));
    fed.send(0..10);
    a_recv.wait(WAIT, "the first 10 spans and logs on A", |r| {
        span_ids(r).len() >= 10 && log_ids(r).len() >= 10
    });
    let on_a = a_recv.requests();
    a_recv.stop();
    fed.send(10..30);
    fed.wait_snapshot("spans and logs queued while A is gone", |s| {
        s.retries >= 1
            && s.count("traces", "sent") == 10
            && s.count("logs", "sent") == 10
            && s.queue_len >= 4
    });

    let b_recv = Receiver::start("http", &[]);
    fed.rt
        .block_on(fed.exporter.as_ref().unwrap().reconfigure(config(
            format!("http://127.0.0.1:{}", b_recv.port),
            Protocol::HttpProtobuf,
        )))
        .expect("reconfigured");
    fed.send(30..40);
    let on_b = b_recv.wait(
        WAIT,
        "spans and logs 10..40 and the metric totals on B",
        |r| {
            span_ids(r).len() >= 30
                && log_ids(r).len() >= 30
                && latest_points(r, "tcp.connect.failures")
                    .iter()
                    .map(int_value)
                    .sum::<i64>()
                    == 40
        },
    );
    // Nothing more trickles in (no second copy of anything).
    std::thread::sleep(Duration::from_millis(700));
    let on_b = std::cmp::max_by_key(on_b, b_recv.requests(), |r| r.len());
    assert_eq!(span_ids(&on_a), (0..10).collect::<Vec<_>>());
    assert_eq!(log_ids(&on_a), (0..10).collect::<Vec<_>>());
    assert_eq!(
        span_ids(&on_b),
        (10..40).collect::<Vec<_>>(),
        "queued then new spans, each once, in order"
    );
    assert_eq!(log_ids(&on_b), (10..40).collect::<Vec<_>>());
    let s = fed.stop(Duration::from_secs(1));
    // Counters were not reset by the reconfiguration.
    assert_eq!(s.count("traces", "sent"), 40, "{s}");
    assert_eq!(s.count("logs", "sent"), 40, "{s}");
    assert_eq!(
        s.count("traces", "dropped") + s.count("traces", "failed"),
        0,
        "{s}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reconfigure_delivers_the_memory_queue_to_the_new_endpoint() {
    reconfigure_delivers_the_queue_to_the_new_endpoint(false);
}

#[test]
fn reconfigure_delivers_the_disk_queue_to_the_new_endpoint() {
    reconfigure_delivers_the_queue_to_the_new_endpoint(true);
}

#[test]
fn reconfigure_to_an_unusable_disk_queue_is_an_error_and_changes_nothing() {
    let receiver = Receiver::start("grpc", &[]);
    let fed = Fed::start(resolve(args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::Grpc,
    )));
    let mut bad = resolve(args("https://127.0.0.1:1", Protocol::Grpc));
    bad.disk_queue = Some(PathBuf::from("/proc/hostscope-no-such-dir/queue"));
    let e = fed
        .rt
        .block_on(fed.exporter.as_ref().unwrap().reconfigure(bad))
        .expect_err("an unusable disk queue directory is refused");
    assert!(e.to_string().contains("/proc/hostscope-no-such-dir"), "{e}");
    fed.send(0..5);
    receiver.wait(WAIT, "spans still delivered to the old endpoint", |r| {
        span_ids(r).len() >= 5
    });
    fed.stop(Duration::from_secs(1));
}

/// Why items pile up: the last failure, with its endpoint and reason, is in the snapshot
/// (its Display and its JSON) while requests wait.
#[test]
fn an_unreachable_backend_leaves_its_reason_in_the_snapshot() {
    let closed = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).port();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let fed = Fed::start(resolve(args(
            &format!("http://127.0.0.1:{closed}"),
            protocol,
        )));
        fed.send(0..5);
        let s = fed.wait_snapshot("a failure reason", |s| s.last_failure.is_some());
        let f = s.last_failure.clone().unwrap();
        assert!(f.endpoint.contains(&format!("127.0.0.1:{closed}")), "{f}");
        assert!(
            f.message.contains("Connection refused"),
            "{protocol:?}: {f}"
        );
        assert!(f.retryable, "{f}");
        assert!(s.to_string().contains("last failure:"), "{s}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["last_failure"]["kind"], f.kind.as_str(), "{json}");
        fed.stop(Duration::from_millis(200));
    }
    let receiver = Receiver::start("http", &["--fail", "503", "--fail-count", "1000"]);
    let fed = Fed::start(resolve(args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::HttpProtobuf,
    )));
    fed.send(0..5);
    let s = fed.wait_snapshot("an HTTP 503 as the reason", |s| {
        s.last_failure
            .as_ref()
            .is_some_and(|f| f.kind == "http_503")
    });
    assert!(s.to_string().contains("http_503"), "{s}");
    fed.stop(Duration::from_millis(200));
}

/// A request file in the disk queue that is not a request (garbage placed there before
/// start) is set aside as `<name>.corrupt`, counted as dropped (`corrupt`) with its
/// items, and the requests behind it are delivered.
#[test]
fn a_corrupt_disk_queue_file_is_set_aside_and_counted() {
    let dir = otlp::temp_path("corrupt-queue");
    std::fs::create_dir_all(&dir).unwrap();
    let name = "0000000000000000.traces.7.pb";
    std::fs::write(dir.join(name), b"\x0a\xff\xff\x7f not a protobuf request").unwrap();
    let receiver = Receiver::start("grpc", &[]);
    let mut a = args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::Grpc,
    );
    a.disk_queue = Some(dir.clone());
    let fed = Fed::start(resolve(a));
    fed.send(0..5);
    receiver.wait(WAIT, "the spans queued behind the corrupt file", |r| {
        span_ids(r).len() >= 5
    });
    let s = fed.wait_snapshot("the corrupt file counted", |s| {
        s.count("traces", "dropped") > 0
    });
    assert_eq!(
        s.items.get(&("traces", "dropped", "corrupt".to_string())),
        Some(&7),
        "{s}"
    );
    assert_eq!(
        s.count("traces", "failed"),
        0,
        "not sent, so not failed: {s}"
    );
    assert!(dir.join(format!("{name}.corrupt")).exists());
    assert!(!dir.join(name).exists());
    fed.stop(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
}

fn retried_then_delivered(
    protocol: &str,
    fail: &str,
    count: &str,
    retry_flags: &[&str],
) -> (Vec<Value>, ExportSnapshot) {
    let mut extra = vec!["--fail", fail, "--fail-count", count];
    extra.extend(retry_flags);
    let receiver = Receiver::start(protocol, &extra);
    let p = if protocol == "grpc" {
        Protocol::Grpc
    } else {
        Protocol::HttpProtobuf
    };
    let mut a = args(&format!("http://127.0.0.1:{}", receiver.port), p);
    // Only spans: one request to follow through the retries.
    a.interval = Duration::from_secs_f64(0.5);
    let fed = Fed::start(resolve(a));
    fed.send(0..5);
    let requests = receiver.wait(WAIT, "spans after the failures", |r| span_ids(r).len() >= 5);
    let s = fed.stop(Duration::from_secs(1));
    assert_eq!(span_ids(&requests), vec![0, 1, 2, 3, 4], "delivered once");
    let failed_answers = requests.iter().filter(|r| r["answer"] == fail).count();
    assert_eq!(
        failed_answers.to_string(),
        count,
        "{fail} answered {count} times"
    );
    assert!(s.retries >= count.parse().unwrap(), "{s}");
    assert_eq!(
        s.count("traces", "failed") + s.count("metrics", "failed"),
        0,
        "{s}"
    );
    (requests, s)
}

#[test]
fn grpc_unavailable_and_resource_exhausted_are_retried() {
    retried_then_delivered("grpc", "UNAVAILABLE", "3", &[]);
    // RESOURCE_EXHAUSTED with RetryInfo of 1 s: the next attempt waits for it.
    let (requests, _) =
        retried_then_delivered("grpc", "RESOURCE_EXHAUSTED", "1", &["--retry-after", "1"]);
    let t: Vec<u64> = requests
        .iter()
        .map(|r| r["received_unix_ns"].as_u64().unwrap())
        .collect();
    assert!(
        t[1] - t[0] >= 900_000_000,
        "retried after {} ms",
        (t[1] - t[0]) / 1_000_000
    );
}

#[test]
fn http_503_and_429_are_retried_honouring_retry_after() {
    retried_then_delivered("http", "503", "2", &[]);
    // Retry-After as an HTTP-date 2 s ahead (whole seconds, so 1-2 s from the answer).
    let (requests, _) = retried_then_delivered(
        "http",
        "503",
        "1",
        &["--retry-after", "2", "--retry-after-date"],
    );
    let t: Vec<u64> = requests
        .iter()
        .map(|r| r["received_unix_ns"].as_u64().unwrap())
        .collect();
    assert!(
        t[1] - t[0] >= 900_000_000,
        "Retry-After HTTP-date honoured, retried after {} ms",
        (t[1] - t[0]) / 1_000_000
    );
    let (requests, _) = retried_then_delivered("http", "429", "1", &["--retry-after", "1"]);
    let t: Vec<u64> = requests
        .iter()
        .map(|r| r["received_unix_ns"].as_u64().unwrap())
        .collect();
    assert!(
        t[1] - t[0] >= 900_000_000,
        "Retry-After: 1 honoured, retried after {} ms",
        (t[1] - t[0]) / 1_000_000
    );
}

#[test]
fn bad_request_is_dropped_and_counted_not_retried() {
    for (protocol, p, fail, kind) in [
        ("http", Protocol::HttpProtobuf, "400", "http_400"),
        (
            "grpc",
            Protocol::Grpc,
            "INVALID_ARGUMENT",
            "grpc_invalid_argument",
        ),
        // Without RetryInfo the OTLP spec says RESOURCE_EXHAUSTED is not retryable.
        (
            "grpc",
            Protocol::Grpc,
            "RESOURCE_EXHAUSTED",
            "grpc_resource_exhausted",
        ),
    ] {
        let receiver = Receiver::start(protocol, &["--fail", fail, "--fail-count", "1000"]);
        let fed = Fed::start(resolve(args(
            &format!("http://127.0.0.1:{}", receiver.port),
            p,
        )));
        fed.send(0..7);
        let s = fed.wait_snapshot("spans failed", |s| s.count("traces", "failed") == 7);
        std::thread::sleep(Duration::from_millis(800));
        // Each span reached the receiver exactly once, in whatever requests: no retry.
        let requests = receiver.requests();
        let attempted: usize = requests
            .iter()
            .filter(|r| r["signal"] == "traces")
            .map(|r| {
                r["request"]["resourceSpans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|rs| rs["scopeSpans"].as_array().into_iter().flatten())
                    .map(|ss| ss["spans"].as_array().map_or(0, |s| s.len()))
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(attempted, 7, "{fail} is not retried");
        assert_eq!(s.retries, 0, "{s}");
        assert!(
            s.items
                .contains_key(&("traces", "failed", kind.to_string())),
            "{s}"
        );
        fed.stop(Duration::from_millis(200));
    }
    // The drop is visible in the exported self-metrics once the backend accepts again.
    let receiver = Receiver::start("grpc", &["--fail", "INVALID_ARGUMENT", "--fail-count", "1"]);
    let fed = Fed::start(resolve(args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::Grpc,
    )));
    let requests = receiver.wait(WAIT, "failed items in self metrics", |r| {
        point_with(
            &latest_points(r, "hostscope.export.items"),
            &[
                ("hostscope.export.result", "failed"),
                ("error.type", "grpc_invalid_argument"),
            ],
        )
        .is_some()
    });
    let p = latest_points(&requests, "hostscope.export.items");
    let failed = point_with(
        &p,
        &[
            ("hostscope.signal", "metrics"),
            ("hostscope.export.result", "failed"),
        ],
    )
    .unwrap();
    assert!(int_value(failed) >= 1);
    fed.stop(Duration::from_millis(200));
}

#[test]
fn partial_success_is_counted_as_rejected() {
    let receiver = Receiver::start("http", &["--partial", "2"]);
    let fed = Fed::start(resolve(args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::HttpProtobuf,
    )));
    fed.send(0..5);
    let s = fed.wait_snapshot("rejected spans", |s| s.count("traces", "rejected") == 2);
    assert_eq!(s.count("traces", "sent"), 3, "{s}");
    fed.stop(Duration::from_millis(200));
}

#[test]
fn slow_receiver_keeps_the_queue_within_its_bound_and_counts_drops() {
    let receiver = Receiver::start("http", &["--delay", "1.0"]);
    let mut a = args(
        &format!("http://127.0.0.1:{}", receiver.port),
        Protocol::HttpProtobuf,
    );
    a.max_batch = 5;
    a.queue_bytes = 4096;
    a.compression = Some(Compression::None);
    let fed = Fed::start(resolve(a));
    let mut max_bytes = 0;
    for b in 0..40u64 {
        fed.send(b * 5..b * 5 + 5);
        max_bytes = max_bytes.max(fed.snapshot().queue_bytes);
        std::thread::sleep(Duration::from_millis(25));
    }
    let s = fed.stop(Duration::from_secs(2));
    assert!(max_bytes <= 4096, "queue grew to {max_bytes} bytes");
    let sent = s.count("traces", "sent");
    let dropped = s.count("traces", "dropped");
    assert!(dropped > 0 && sent > 0, "{s}");
    assert!(
        s.items
            .contains_key(&("traces", "dropped", "queue_full".to_string())),
        "{s}"
    );
    assert_eq!(sent + dropped, 200, "every span sent or counted: {s}");
    receiver.wait(WAIT, "what was sent", |r| span_ids(r).len() as u64 >= sent);
}

#[test]
fn tls_with_a_test_ca_and_mutual_tls() {
    let pki = local_pki();
    let cert = pki.server_cert.to_str().unwrap();
    let key = pki.server_key.to_str().unwrap();
    let ca = pki.ca.to_str().unwrap();
    // gRPC over TLS, server verified with the test CA.
    let receiver = Receiver::start("grpc", &["--cert", cert, "--key", key]);
    let mut a = args(
        &format!("https://127.0.0.1:{}", receiver.port),
        Protocol::Grpc,
    );
    a.ca = Some(pki.ca.clone());
    let fed = Fed::start(resolve(a));
    fed.send(0..3);
    receiver.wait(WAIT, "spans over TLS", |r| span_ids(r).len() == 3);
    fed.stop(Duration::from_millis(200));

    // HTTP with mTLS: the receiver requires a client certificate from the test CA.
    for protocol in ["http", "grpc"] {
        let receiver =
            Receiver::start(protocol, &["--cert", cert, "--key", key, "--client-ca", ca]);
        let p = if protocol == "grpc" {
            Protocol::Grpc
        } else {
            Protocol::HttpProtobuf
        };
        let mut a = args(&format!("https://127.0.0.1:{}", receiver.port), p);
        a.ca = Some(pki.ca.clone());
        a.client_cert = Some(pki.client_cert.clone());
        a.client_key = Some(pki.client_key.clone());
        let fed = Fed::start(resolve(a));
        fed.send(0..3);
        receiver.wait(WAIT, "spans over mTLS", |r| span_ids(r).len() == 3);
        fed.stop(Duration::from_millis(200));

        // Without the client certificate nothing gets through, and it is retried.
        let mut a = args(&format!("https://127.0.0.1:{}", receiver.port), p);
        a.ca = Some(pki.ca.clone());
        let fed = Fed::start(resolve(a));
        fed.send(0..3);
        fed.wait_snapshot("retries without a client certificate", |s| s.retries >= 2);
        assert_eq!(
            span_ids(&receiver.requests()).len(),
            3,
            "no new span without mTLS"
        );
        let s = fed.stop(Duration::from_millis(200));
        assert_eq!(s.count("traces", "sent"), 0, "{s}");
    }
}

#[test]
fn invalid_endpoint_and_headers_are_clear_errors_at_start() {
    let bin = std::env::var_os("HOSTSCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hostscope")
        });
    assert!(
        bin.exists(),
        "{} missing: cargo build -p hostscope",
        bin.display()
    );
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["--otlp-endpoint", "collector:4317"],
            &[],
            "invalid OTLP endpoint",
        ),
        (
            &["--otlp-endpoint", "ftp://collector:21"],
            &[],
            "http or https expected",
        ),
        (
            &[
                "--otlp-endpoint",
                "http://c:4317",
                "--otlp-header",
                "no-equals",
            ],
            &[],
            "key=value expected",
        ),
        (
            &[
                "--otlp-endpoint",
                "http://c:4317",
                "--otlp-header",
                "bad name=1",
            ],
            &[],
            "invalid OTLP header",
        ),
        (
            &[],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://")],
            "invalid OTLP endpoint",
        ),
        (
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            &[
                "--otlp-endpoint",
                "http://c:4317",
                "--otlp-ca",
                "/nonexistent/ca.pem",
            ],
            &[],
            "reading /nonexistent/ca.pem (from --otlp-ca): No such file",
        ),
        (
            &[
                "--otlp-endpoint",
                "https://c:4317",
                "--otlp-ca",
                "/etc/hostname",
            ],
            &[],
            "no -----BEGIN CERTIFICATE----- block",
        ),
    ];
    for (flags, env, needle) in cases {
        let out = Command::new(&bin)
            .arg("run")
            .args(*flags)
            .envs(env.iter().copied())
            .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} {env:?} accepted");
        assert!(err.contains(needle), "{flags:?} {env:?}: {err}");
        // A cause is printed once, not repeated by the error chain.
        assert!(err.matches("(os error").count() <= 1, "{err}");
    }
}

#[test]
fn hostscope_run_exports_with_env_endpoint_and_reports_export_stats() {
    if !privileged("hostscope_run_exports_with_env_endpoint_and_reports_export_stats") {
        return;
    }
    let bin = std::env::var_os("HOSTSCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hostscope")
        });
    let receiver = Receiver::start("http", &[]);
    let mut child = Command::new(&bin)
        .args([
            "run",
            "--no-api",
            "--no-prometheus",
            "--no-pin",
            "--output",
            "json",
            "--duration",
            "5",
            "--otlp-interval",
            "0.5",
            "--stats-interval",
            "1",
        ])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.port),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20t0ken")
        .env("OTEL_SERVICE_NAME", "node-agent")
        .env("K8S_NODE_NAME", "node-7")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The probe report is printed once every probe is attached: connect after it, not
    // after a guess of the start-up time (a loaded machine starts slower).
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut stdout = Vec::new();
    while !stdout.iter().any(|l: &String| l.contains("probe_status")) {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the agent reports its probes");
        stdout.push(line);
    }
    let target = closed_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(TcpStream::connect(target).is_err());
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    stdout.extend(lines.try_iter());
    let stats: Vec<Value> = stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "export_stats")
        .collect();
    let last = stats.last().expect("export_stats lines in the JSON output");
    let sent: u64 = last["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["result"] == "sent" && i["signal"] == "traces")
        .map(|i| i["items"].as_u64().unwrap())
        .sum();
    assert!(sent >= 1, "{last}");
    assert_eq!(last["queue_len"], 0, "delivered before exit: {last}");

    let requests = receiver.requests();
    let port = target.port().to_string();
    assert!(otlp::spans(&requests)
        .iter()
        .any(|(_, s)| attr(s, "network.peer.port").as_deref() == Some(port.as_str())));
    let (res, _) = &otlp::spans(&requests)[0];
    assert_eq!(
        resource_attr(res, "service.name").as_deref(),
        Some("node-agent")
    );
    assert_eq!(
        resource_attr(res, "k8s.node.name").as_deref(),
        Some("node-7")
    );
    assert!(requests
        .iter()
        .all(|r| r["headers"]["authorization"] == "Bearer t0ken"));
    // The agent's own health, from `Agent::stats`, exported.
    let lost = latest_points(&requests, "hostscope.probe.lost");
    assert!(
        point_with(&lost, &[("hostscope.probe.family", "tcp")]).is_some(),
        "{lost:?}"
    );
    let emitted = latest_points(&requests, "hostscope.probe.events");
    let tcp = point_with(
        &emitted,
        &[
            ("hostscope.probe.family", "tcp"),
            ("hostscope.probe.counter", "events_emitted"),
        ],
    )
    .expect("tcp events_emitted");
    assert!(int_value(tcp) >= 1);
}
