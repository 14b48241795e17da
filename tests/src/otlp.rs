//! OTLP fixtures: the Python receiver (tests/otlp/receiver.py, on the OpenTelemetry
//! project's `opentelemetry-proto` package) as a child process writing what it decoded as
//! JSON lines, an exporter wired to a record channel, and a localhost certificate signed
//! by the test CA for TLS and mTLS.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{atomic::AtomicU64, atomic::Ordering, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The receiver's Python, in the virtualenv `cargo xtask setup` makes.
pub fn python() -> PathBuf {
    let p = std::env::var_os("HOSTSCOPE_OTLP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/otlp-venv/bin/python3")
        });
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup` (it installs the OTLP test receiver)",
        p.display()
    );
    p
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("otlp/receiver.py")
}

static SEQ: AtomicU64 = AtomicU64::new(0);

pub fn temp_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "hostscope-otlp-{}-{tag}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A running receiver; killed on drop.
pub struct Receiver {
    child: Child,
    pub port: u16,
    pub out: PathBuf,
}

impl Receiver {
    /// `protocol`: `grpc` or `http`; `extra`: receiver flags (`--fail 503 --fail-count 2`).
    pub fn start(protocol: &str, extra: &[&str]) -> Receiver {
        Self::start_on(protocol, 0, &temp_path("recv.jsonl"), extra)
    }

    pub fn start_on(protocol: &str, port: u16, out: &Path, extra: &[&str]) -> Receiver {
        let mut child = Command::new(python())
            .arg(script())
            .args(["--protocol", protocol, "--port", &port.to_string(), "--out"])
            .arg(out)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the OTLP receiver");
        let stdout = child.stdout.take().expect("receiver stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("receiver READY line");
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("receiver said {line:?} instead of READY <port>"));
        Receiver {
            child,
            port,
            out: out.to_path_buf(),
        }
    }

    /// Every request received so far (answered or not), in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        read_requests(&self.out)
    }

    /// Waits until `pred` holds for the requests received, or panics after `timeout`.
    pub fn wait(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.requests();
            if pred(&r) {
                return r;
            }
            if Instant::now() > deadline {
                panic!(
                    "receiver: {what} not seen within {timeout:?}; {} requests: {}",
                    r.len(),
                    summary(&r)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_requests(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn summary(requests: &[Value]) -> String {
    let mut s = String::new();
    for r in requests.iter().take(20) {
        s.push_str(&format!(
            "[{} {}: {} metrics, {} spans, {} logs] ",
            r["signal"],
            r["answer"],
            metrics(std::slice::from_ref(r)).len(),
            spans(std::slice::from_ref(r)).len(),
            logs(std::slice::from_ref(r)).len()
        ));
    }
    s
}

fn answered_ok(r: &Value) -> bool {
    r["answer"] == "ok"
}

/// Every metric (JSON as MessageToDict writes it) in requests answered with success.
pub fn metrics(requests: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for r in requests
        .iter()
        .filter(|r| answered_ok(r) && r["signal"] == "metrics")
    {
        for rm in r["request"]["resourceMetrics"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                out.extend(sm["metrics"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    out
}

/// (resource attributes, span) pairs from successful trace requests.
pub fn spans(requests: &[Value]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for r in requests
        .iter()
        .filter(|r| answered_ok(r) && r["signal"] == "traces")
    {
        for rs in r["request"]["resourceSpans"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push((rs["resource"].clone(), s.clone()));
                }
            }
        }
    }
    out
}

/// (resource attributes, log record) pairs from successful log requests.
pub fn logs(requests: &[Value]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for r in requests
        .iter()
        .filter(|r| answered_ok(r) && r["signal"] == "logs")
    {
        for rl in r["request"]["resourceLogs"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                for l in sl["logRecords"].as_array().into_iter().flatten() {
                    out.push((rl["resource"].clone(), l.clone()));
                }
            }
        }
    }
    out
}

/// An attribute's value from a MessageToDict `attributes` list, as a string (int64 values
/// are strings in proto3 JSON).
pub fn attr(item: &Value, key: &str) -> Option<String> {
    item["attributes"]
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| {
            let v = &kv["value"];
            for k in ["stringValue", "intValue", "doubleValue", "boolValue"] {
                if let Some(x) = v.get(k) {
                    return match x {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                }
            }
            v.to_string()
        })
}

/// Data points of a metric (sum, gauge or histogram).
pub fn points(metric: &Value) -> Vec<Value> {
    for k in ["sum", "gauge", "histogram"] {
        if let Some(dp) = metric[k]["dataPoints"].as_array() {
            return dp.clone();
        }
    }
    Vec::new()
}

/// The last exported data points of metric `name` (cumulative: the latest totals).
pub fn latest_points(requests: &[Value], name: &str) -> Vec<Value> {
    metrics(requests)
        .iter()
        .rev()
        .find(|m| m["name"] == name)
        .map(points)
        .unwrap_or_default()
}

/// A point's integer value (`asInt`, a string in proto3 JSON).
pub fn int_value(point: &Value) -> i64 {
    match &point["asInt"] {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// Certificates for TLS tests against 127.0.0.1/localhost, signed by the test CA.
pub struct LocalPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn local_pki() -> &'static LocalPki {
    static PKI: OnceLock<LocalPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let base = crate::tls::pki();
        let dir = base.dir.join("otlp");
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ca = base.ca();
        let ca_key = base.dir.join("ca.key");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for who in ["server", "client"] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN=otlp {who}"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                ca.to_str().unwrap(),
                "-CAkey",
                ca_key.to_str().unwrap(),
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "5",
                "-extfile",
                &format!("{who}.ext"),
            ]);
        }
        LocalPki {
            ca,
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    })
}
