//! `export:` in the configuration, resolved against the standard `OTEL_EXPORTER_OTLP_*`
//! environment variables into a checked [`ExportConfig`]. For the keys the environment
//! can set too, a flag wins, then a per-signal variable, then the generic variable, then
//! the file, then the built-in default (the OTLP exporter specification orders the
//! variables).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use reqwest::{
    header::{HeaderName, HeaderValue},
    Url,
};
use serde::{Deserialize, Serialize};

use crate::config::Problems;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    /// OTLP/HTTP `Content-Encoding: zstd`, gRPC `grpc-encoding: zstd` (a receiver without
    /// zstd refuses it; see README).
    Zstd,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    Cumulative,
    Delta,
}

/// Built-in defaults of the keys the environment can also set (used when neither a flag,
/// a variable nor the file sets them).
pub const DEFAULT_PROTOCOL: Protocol = Protocol::Grpc;
pub const DEFAULT_COMPRESSION: Compression = Compression::Gzip;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `export:` in the configuration. No endpoint here, in a flag or in the environment: no
/// export. `null` keys take the environment's value, else the default in their help.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportSection {
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
    pub headers: BTreeMap<String, String>,
    pub compression: Option<Compression>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub max_batch: usize,
    pub queue_bytes: usize,
    pub disk_queue: Option<PathBuf>,
    pub disk_queue_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub max_retry: Duration,
    #[serde(with = "humantime_serde")]
    pub flush_timeout: Duration,
    pub temporality: Temporality,
    pub buckets: BTreeMap<String, Vec<f64>>,
    pub exponential_histograms: bool,
    pub series_limit: usize,
    pub metric_pids: bool,
    pub metric_peers: bool,
    pub metric_dns_names: bool,
    pub connection_spans: bool,
    pub failure_logs: bool,
    pub resource: BTreeMap<String, String>,
}

impl Default for ExportSection {
    fn default() -> Self {
        ExportSection {
            endpoint: None,
            protocol: None,
            headers: BTreeMap::new(),
            compression: None,
            timeout: None,
            ca: None,
            client_cert: None,
            client_key: None,
            interval: Duration::from_secs(10),
            max_batch: 512,
            queue_bytes: 16 << 20,
            disk_queue: None,
            disk_queue_bytes: 256 << 20,
            max_retry: Duration::from_secs(300),
            flush_timeout: Duration::from_secs(5),
            temporality: Temporality::Cumulative,
            buckets: BTreeMap::new(),
            exponential_histograms: false,
            series_limit: 10_000,
            metric_pids: false,
            metric_peers: false,
            metric_dns_names: false,
            connection_spans: false,
            failure_logs: false,
            resource: BTreeMap::new(),
        }
    }
}

/// The flags that override the environment-backed keys (`--otlp-endpoint` …). Headers add
/// to the file's and the environment's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportOverrides {
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
    /// `key=value` items.
    pub headers: Vec<String>,
    pub compression: Option<Compression>,
    pub timeout_ms: Option<u64>,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl ExportSection {
    pub const DOCS: crate::config::Docs = &[
        (
            "",
            "OTLP export of metrics, spans and logs. Without an endpoint (here, in\n\
             --otlp-endpoint or in OTEL_EXPORTER_OTLP_ENDPOINT) nothing is exported.",
        ),
        (
            "endpoint",
            "e.g. http://collector:4317 (gRPC) or http://collector:4318 (HTTP);\n\
             null: OTEL_EXPORTER_OTLP_ENDPOINT.",
        ),
        (
            "protocol",
            "grpc or http/protobuf; null: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc.",
        ),
        (
            "headers",
            "Request headers (name: value), added to OTEL_EXPORTER_OTLP_HEADERS.",
        ),
        (
            "compression",
            "gzip, zstd or none; null: OTEL_EXPORTER_OTLP_COMPRESSION, else gzip.",
        ),
        (
            "timeout",
            "Per-request timeout; null: OTEL_EXPORTER_OTLP_TIMEOUT, else 10s.",
        ),
        (
            "ca",
            "PEM CA bundle to verify the endpoint; null: OTEL_EXPORTER_OTLP_CERTIFICATE.",
        ),
        (
            "client_cert",
            "PEM client certificate for mTLS; null: OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE.",
        ),
        (
            "client_key",
            "PEM client key for mTLS; null: OTEL_EXPORTER_OTLP_CLIENT_KEY.",
        ),
        (
            "interval",
            "Between metric exports, and the longest a span or log record waits.",
        ),
        (
            "max_batch",
            "Spans or log records per request at most (a full batch is sent at once).",
        ),
        (
            "queue_bytes",
            "Memory queue bound, bytes of encoded requests; beyond it requests are\n\
             dropped (counted).",
        ),
        (
            "disk_queue",
            "Directory of an on-disk queue: requests survive an outage and a restart,\n\
             and are replayed in order; null: memory only.",
        ),
        (
            "disk_queue_bytes",
            "Disk queue bound in bytes; beyond it new requests are dropped (counted).",
        ),
        (
            "max_retry",
            "How long a request is retried before it is dropped (memory queue only).",
        ),
        (
            "flush_timeout",
            "At stop, how long queued data may take to leave; what has not left by\n\
             then is counted as dropped (or stays in the disk queue).",
        ),
        ("temporality", "Metric temporality: cumulative or delta."),
        (
            "buckets",
            "Histogram bucket bounds per metric, in its unit (metric name: [bounds]).",
        ),
        (
            "exponential_histograms",
            "Export histograms as base-2 exponential histograms (buckets do not apply).",
        ),
        (
            "series_limit",
            "Metric series kept at most; new attribute sets beyond it go to one\n\
             overflow series (otel.metric.overflow=true) and are counted.",
        ),
        (
            "metric_pids",
            "Put process.pid on metric data points (unbounded cardinality).",
        ),
        (
            "metric_peers",
            "Put peer addresses (network.peer.address) on metric data points.",
        ),
        (
            "metric_dns_names",
            "Put looked-up names (dns.question.name) on DNS metric data points\n\
             (unbounded cardinality: every search-list expansion is a series).",
        ),
        (
            "connection_spans",
            "Also export one span per TCP connection, connect to close, with resets as\n\
             span events.",
        ),
        (
            "failure_logs",
            "Also export one log record per failure (connect failed, handshake failed,\n\
             syscall error burst); off: the RCA incidents summarise them as logs, and\n\
             metrics count every failure either way. Always on with rca.enabled: false.",
        ),
        (
            "resource",
            "Resource attributes (key: value), added to OTEL_RESOURCE_ATTRIBUTES.",
        ),
    ];

    /// Checks what can be checked without the environment (`resolve` checks the rest).
    pub fn validate(&self, at: &str, p: &mut Problems) {
        if let Some(url) = &self.endpoint {
            if let Err(e) = parse_url(url, "the file") {
                p.push(format!("{at}.endpoint"), e);
            }
        }
        for (k, v) in &self.headers {
            if let Err(e) = header(k, v, "the file") {
                p.push(format!("{at}.headers.{k}"), e);
            }
        }
        if self.timeout.is_some_and(|t| t < Duration::from_millis(1)) {
            p.push(format!("{at}.timeout"), "must be at least 1ms");
        }
        for (key, v) in [
            ("interval", self.interval),
            ("max_retry", self.max_retry),
            ("flush_timeout", self.flush_timeout),
        ] {
            if v.is_zero() || v > Duration::from_secs(86_400) {
                p.push(
                    format!("{at}.{key}"),
                    "must be more than 0s and at most 24h",
                );
            }
        }
        for (key, v) in [
            ("max_batch", self.max_batch as u64),
            ("queue_bytes", self.queue_bytes as u64),
            ("disk_queue_bytes", self.disk_queue_bytes),
            ("series_limit", self.series_limit as u64),
        ] {
            if v == 0 {
                p.push(format!("{at}.{key}"), "must be at least 1");
            }
        }
        for (name, bounds) in &self.buckets {
            if let Err(e) = check_buckets(name, bounds) {
                p.push(format!("{at}.buckets.{name}"), e);
            }
        }
        for (key, path) in [
            ("ca", &self.ca),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ] {
            if let Some(path) = path.as_ref().filter(|p| !p.is_absolute()) {
                p.push(
                    format!("{at}.{key}"),
                    format_args!("{} is not an absolute path", path.display()),
                );
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            p.push(
                format!("{at}.client_cert"),
                "a client certificate needs its key (client_key) and the other way round",
            );
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid OTLP endpoint {url:?} (from {origin}): {why}")]
    Endpoint {
        url: String,
        origin: &'static str,
        why: String,
    },
    #[error("invalid OTLP header {header:?} (from {origin}): {why}")]
    Header {
        header: String,
        origin: &'static str,
        why: String,
    },
    #[error("invalid {name} {value:?}: {why}")]
    Value {
        name: &'static str,
        value: String,
        why: String,
    },
    // The OS error is part of the message (not a #[source]) so it is printed once.
    #[error("reading {path} (from {origin}): {error}")]
    File {
        origin: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} (from {origin}) is not a PEM file: no {marker} block")]
    Pem {
        origin: &'static str,
        path: PathBuf,
        marker: &'static str,
    },
}

/// Where each signal goes (full URLs for HTTP; the same base for gRPC).
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub metrics: Url,
    pub traces: Url,
    pub logs: Url,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM bytes.
    pub ca: Option<Vec<u8>>,
    pub client_cert: Option<Vec<u8>>,
    pub client_key: Option<Vec<u8>>,
}

/// What one signal is sent with: the per-signal `OTEL_EXPORTER_OTLP_<SIGNAL>_*` variables
/// where set, else the generic ones; flags win over both.
#[derive(Clone, Debug)]
pub struct SignalSettings {
    pub protocol: Protocol,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub compression: Compression,
    pub timeout: Duration,
    pub tls: TlsFiles,
}

/// Checked export configuration. `protocol`, `headers`, `compression`, `timeout` and `tls`
/// are the generic settings; `signals` has what each signal really uses.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// Metrics, traces, logs (see [`ExportConfig::signal`]).
    pub signals: [SignalSettings; 3],
    pub protocol: Protocol,
    pub endpoints: Endpoints,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub compression: Compression,
    pub timeout: Duration,
    pub tls: TlsFiles,
    pub interval: Duration,
    pub max_batch: usize,
    pub queue_bytes: usize,
    pub disk_queue: Option<PathBuf>,
    pub disk_queue_bytes: u64,
    pub max_retry: Duration,
    pub temporality: Temporality,
    /// Metric name -> explicit bounds (overrides the defaults).
    pub buckets: BTreeMap<String, Vec<f64>>,
    pub exponential_histograms: bool,
    pub series_limit: usize,
    pub metric_pids: bool,
    pub metric_peers: bool,
    pub metric_dns_names: bool,
    pub connection_spans: bool,
    pub failure_logs: bool,
    /// Static resource attributes (config and OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME).
    pub resource: Vec<(String, String)>,
}

/// The environment as the resolver sees it (tests pass their own).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Env for BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.to_string())
    }
}

/// A variable's generic name and its per-signal names (metrics, traces, logs), static so
/// that errors can name the variable that was wrong.
macro_rules! otlp_var {
    ($key:literal) => {
        [
            concat!("OTEL_EXPORTER_OTLP_", $key),
            concat!("OTEL_EXPORTER_OTLP_METRICS_", $key),
            concat!("OTEL_EXPORTER_OTLP_TRACES_", $key),
            concat!("OTEL_EXPORTER_OTLP_LOGS_", $key),
        ]
    };
}

impl ExportConfig {
    /// The settings `signal` is sent with.
    pub fn signal(&self, signal: super::Signal) -> &SignalSettings {
        &self.signals[signal_index(signal)]
    }

    /// This configuration with the generic settings replaced by `signal`'s (what a
    /// transport for that signal alone is built from).
    pub fn for_signal(&self, signal: super::Signal) -> ExportConfig {
        let s = self.signal(signal).clone();
        ExportConfig {
            protocol: s.protocol,
            headers: s.headers,
            compression: s.compression,
            timeout: s.timeout,
            tls: s.tls,
            ..self.clone()
        }
    }
}

fn signal_index(signal: super::Signal) -> usize {
    match signal {
        super::Signal::Metrics => 0,
        super::Signal::Traces => 1,
        super::Signal::Logs => 2,
    }
}

impl ExportSection {
    /// Settings of one signal (`which`: None for the generic ones, else 0..3 = metrics,
    /// traces, logs): flag, else the per-signal variable, else the generic variable, else
    /// the file, else the default.
    fn settings(
        &self,
        flags: &ExportOverrides,
        env: &dyn Env,
        which: Option<usize>,
    ) -> Result<SignalSettings, ConfigError> {
        // (value, variable it came from)
        let var = |names: [&'static str; 4]| -> Option<(String, &'static str)> {
            which
                .and_then(|i| env.var(names[i + 1]).map(|v| (v, names[i + 1])))
                .or_else(|| env.var(names[0]).map(|v| (v, names[0])))
        };
        let protocol = match flags.protocol {
            Some(p) => p,
            None => match var(otlp_var!("PROTOCOL")) {
                None => self.protocol.unwrap_or(DEFAULT_PROTOCOL),
                Some((v, name)) => match v.as_str() {
                    "grpc" => Protocol::Grpc,
                    "http/protobuf" => Protocol::HttpProtobuf,
                    other => {
                        return Err(ConfigError::Value {
                            name,
                            value: other.into(),
                            why: "supported: grpc, http/protobuf".into(),
                        })
                    }
                },
            },
        };

        let mut headers = Vec::new();
        for (k, v) in &self.headers {
            headers.push(header(k, v, "export.headers")?);
        }
        if let Some((h, name)) = var(otlp_var!("HEADERS")) {
            for item in h.split(',').filter(|s| !s.trim().is_empty()) {
                headers.push(parse_header(item, name)?);
            }
        }
        for item in &flags.headers {
            headers.push(parse_header(item, "--otlp-header")?);
        }

        let compression = match flags.compression {
            Some(c) => c,
            None => match var(otlp_var!("COMPRESSION")) {
                None => self.compression.unwrap_or(DEFAULT_COMPRESSION),
                Some((v, name)) => match v.as_str() {
                    "gzip" => Compression::Gzip,
                    "zstd" => Compression::Zstd,
                    "none" => Compression::None,
                    other => {
                        return Err(ConfigError::Value {
                            name,
                            value: other.into(),
                            why: "supported: gzip, zstd, none".into(),
                        })
                    }
                },
            },
        };
        let timeout = match flags.timeout_ms {
            Some(ms) => Duration::from_millis(ms),
            None => match var(otlp_var!("TIMEOUT")) {
                None => self.timeout.unwrap_or(DEFAULT_TIMEOUT),
                Some((v, name)) => {
                    Duration::from_millis(v.trim().parse().map_err(|e| ConfigError::Value {
                        name,
                        value: v.clone(),
                        why: format!("{e} (milliseconds expected)"),
                    })?)
                }
            },
        };
        if timeout < Duration::from_millis(1) {
            return Err(ConfigError::Value {
                name: "OTLP timeout",
                value: format!("{timeout:?}"),
                why: "must be at least 1 ms".into(),
            });
        }
        // (flag, variables, file key, what, PEM marker)
        let file = |flag: &Option<PathBuf>,
                    names: [&'static str; 4],
                    file: &Option<PathBuf>,
                    key: &'static str,
                    marker: &'static str| {
            let found = flag
                .clone()
                .map(|p| (p, key_flag(key)))
                .or_else(|| var(names).map(|(v, name)| (PathBuf::from(v), name)))
                .or_else(|| file.clone().map(|p| (p, key)));
            found
                .map(|(path, origin)| read_pem(path, origin, marker))
                .transpose()
        };
        let tls = TlsFiles {
            ca: file(
                &flags.ca,
                otlp_var!("CERTIFICATE"),
                &self.ca,
                "export.ca",
                CERT_MARKER,
            )?,
            client_cert: file(
                &flags.client_cert,
                otlp_var!("CLIENT_CERTIFICATE"),
                &self.client_cert,
                "export.client_cert",
                CERT_MARKER,
            )?,
            client_key: file(
                &flags.client_key,
                otlp_var!("CLIENT_KEY"),
                &self.client_key,
                "export.client_key",
                KEY_MARKER,
            )?,
        };
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err(ConfigError::Value {
                name: "mTLS",
                value: String::new(),
                why: "a client certificate needs its key and the other way round".into(),
            });
        }
        Ok(SignalSettings {
            protocol,
            headers,
            compression,
            timeout,
            tls,
        })
    }

    /// None when no endpoint is configured anywhere: the agent runs without export. Every
    /// setting is checked either way, so a wrong one is named at start even when unused.
    pub fn resolve(
        &self,
        flags: &ExportOverrides,
        env: &dyn Env,
    ) -> Result<Option<ExportConfig>, ConfigError> {
        let generic_settings = self.settings(flags, env, None)?;
        let signals = [
            self.settings(flags, env, Some(0))?,
            self.settings(flags, env, Some(1))?,
            self.settings(flags, env, Some(2))?,
        ];
        let mut buckets = BTreeMap::new();
        for (name, bounds) in &self.buckets {
            check_buckets(name, bounds).map_err(|why| ConfigError::Value {
                name: "export.buckets",
                value: name.clone(),
                why,
            })?;
            buckets.insert(name.clone(), bounds.clone());
        }
        let mut resource: Vec<(String, String)> = self
            .resource
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(attrs) = env.var("OTEL_RESOURCE_ATTRIBUTES") {
            for item in attrs.split(',').filter(|s| !s.trim().is_empty()) {
                resource.push(parse_kv(item, "OTEL_RESOURCE_ATTRIBUTES")?);
            }
        }
        if let Some(name) = env.var("OTEL_SERVICE_NAME") {
            resource.push(("service.name".into(), name));
        }

        let generic = flags
            .endpoint
            .clone()
            .map(|u| (u, "--otlp-endpoint"))
            .or_else(|| {
                env.var("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|u| (u, "OTEL_EXPORTER_OTLP_ENDPOINT"))
            })
            .or_else(|| self.endpoint.clone().map(|u| (u, "export.endpoint")));
        if let Some((url, origin)) = &generic {
            parse_url(url, origin)?;
        }
        let per_signal = |name: &'static str| env.var(name).map(|u| (u, name));
        let metrics_env = per_signal("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
        let traces_env = per_signal("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let logs_env = per_signal("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT");
        if generic.is_none() && metrics_env.is_none() && traces_env.is_none() && logs_env.is_none()
        {
            return Ok(None);
        }
        let signal = |own: Option<(String, &'static str)>, protocol: Protocol, path: &str| {
            // A per-signal variable is the full URL; the generic one is a base to which
            // HTTP appends /v1/<signal> (gRPC routes by service, not path).
            if flags.endpoint.is_none() {
                if let Some((url, origin)) = own {
                    return parse_url(&url, origin);
                }
            }
            let default_base = match protocol {
                Protocol::Grpc => "http://localhost:4317",
                Protocol::HttpProtobuf => "http://localhost:4318",
            };
            let (base, origin) = generic
                .clone()
                .unwrap_or_else(|| (default_base.to_string(), "default"));
            let url = parse_url(&base, origin)?;
            match protocol {
                Protocol::Grpc => Ok(url),
                Protocol::HttpProtobuf => {
                    let joined = format!("{}/{path}", base.trim_end_matches('/'));
                    parse_url(&joined, origin)
                }
            }
        };
        let endpoints = Endpoints {
            metrics: signal(metrics_env, signals[0].protocol, "v1/metrics")?,
            traces: signal(traces_env, signals[1].protocol, "v1/traces")?,
            logs: signal(logs_env, signals[2].protocol, "v1/logs")?,
        };
        let SignalSettings {
            protocol,
            headers,
            compression,
            timeout,
            tls,
        } = generic_settings;
        Ok(Some(ExportConfig {
            signals,
            protocol,
            endpoints,
            headers,
            compression,
            timeout,
            tls,
            interval: self.interval,
            max_batch: self.max_batch.max(1),
            queue_bytes: self.queue_bytes.max(1),
            disk_queue: self.disk_queue.clone(),
            disk_queue_bytes: self.disk_queue_bytes.max(1),
            max_retry: self.max_retry,
            temporality: self.temporality,
            buckets,
            exponential_histograms: self.exponential_histograms,
            series_limit: self.series_limit.max(1),
            metric_pids: self.metric_pids,
            metric_peers: self.metric_peers,
            metric_dns_names: self.metric_dns_names,
            connection_spans: self.connection_spans,
            failure_logs: self.failure_logs,
            resource,
        }))
    }
}

const CERT_MARKER: &str = "-----BEGIN CERTIFICATE-----";
const KEY_MARKER: &str = "PRIVATE KEY-----";

/// The flag that sets an environment-backed key, for messages.
fn key_flag(key: &'static str) -> &'static str {
    match key {
        "export.ca" => "--otlp-ca",
        "export.client_cert" => "--otlp-client-cert",
        "export.client_key" => "--otlp-client-key",
        _ => key,
    }
}

/// Reads a PEM file, checked here so that a wrong file is named at start, not retried
/// as a connect error.
fn read_pem(
    path: PathBuf,
    origin: &'static str,
    marker: &'static str,
) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(&path).map_err(|error| ConfigError::File {
        origin,
        path: path.clone(),
        error,
    })?;
    if !String::from_utf8_lossy(&bytes).contains(marker) {
        return Err(ConfigError::Pem {
            origin,
            path,
            marker,
        });
    }
    Ok(bytes)
}

fn parse_url(url: &str, origin: &'static str) -> Result<Url, ConfigError> {
    let err = |why: String| ConfigError::Endpoint {
        url: url.to_string(),
        origin,
        why,
    };
    let parsed = Url::parse(url.trim()).map_err(|e| err(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(err(format!(
            "scheme {:?}: http or https expected",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(|h| h.is_empty()) {
        return Err(err("no host".into()));
    }
    Ok(parsed)
}

/// `key=value` of a flag, percent-decoded as the OTLP exporter specification says.
pub fn parse_key_value(item: &str, origin: &'static str) -> Result<(String, String), ConfigError> {
    parse_kv(item, origin)
}

/// `key=value`, percent-decoded as the OTLP exporter specification says for headers.
fn parse_kv(item: &str, origin: &'static str) -> Result<(String, String), ConfigError> {
    let err = |why: &str| ConfigError::Header {
        header: item.to_string(),
        origin,
        why: why.to_string(),
    };
    let (k, v) = item
        .split_once('=')
        .ok_or_else(|| err("key=value expected"))?;
    let k = percent_decode(k.trim()).ok_or_else(|| err("bad percent-encoding"))?;
    let v = percent_decode(v.trim()).ok_or_else(|| err("bad percent-encoding"))?;
    if k.is_empty() {
        return Err(err("empty key"));
    }
    Ok((k, v))
}

fn parse_header(
    item: &str,
    origin: &'static str,
) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let (k, v) = parse_kv(item, origin)?;
    let err = |why: String| ConfigError::Header {
        header: item.to_string(),
        origin,
        why,
    };
    let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
        .map_err(|e| err(format!("name: {e}")))?;
    let value = HeaderValue::from_str(&v).map_err(|e| err(format!("value: {e}")))?;
    Ok((name, value))
}

/// A header from the file (`name: value`, not percent-encoded).
fn header(
    k: &str,
    v: &str,
    origin: &'static str,
) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let err = |why: String| ConfigError::Header {
        header: format!("{k}: {v}"),
        origin,
        why,
    };
    let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
        .map_err(|e| err(format!("name: {e}")))?;
    let value = HeaderValue::from_str(v).map_err(|e| err(format!("value: {e}")))?;
    Ok((name, value))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `NAME=b1,b2,…` of `--otlp-buckets`.
pub fn parse_buckets(spec: &str) -> Result<(String, Vec<f64>), String> {
    let (name, list) = spec
        .split_once('=')
        .ok_or_else(|| "NAME=b1,b2,… expected".to_string())?;
    let bounds = list
        .split(',')
        .map(|b| b.trim().parse::<f64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "bounds must be numbers".to_string())?;
    let name = name.trim().to_string();
    check_buckets(&name, &bounds)?;
    Ok((name, bounds))
}

pub fn check_buckets(name: &str, bounds: &[f64]) -> Result<(), String> {
    if bounds.is_empty()
        || bounds.iter().any(|b| !b.is_finite())
        || bounds.windows(2).any(|w| w[0] >= w[1])
    {
        return Err("bounds must be finite and strictly increasing".into());
    }
    if !super::metrics::is_histogram(name) {
        return Err(format!(
            "{name} is not a histogram metric (see docs/metrics.md)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> BTreeMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn no_endpoint_no_export() {
        assert!(ExportSection::default()
            .resolve(&ExportOverrides::default(), &env(&[]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn http_appends_signal_paths_and_per_signal_env_is_used_as_is() {
        let c = ExportSection::default()
            .resolve(
                &ExportOverrides::default(),
                &env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                    ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "https://l:1/custom"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x-team=net"),
                    ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
                    ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                    ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
                    ("OTEL_SERVICE_NAME", "edge"),
                ]),
            )
            .unwrap()
            .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoints.metrics.as_str(), "http://c:4318/v1/metrics");
        assert_eq!(c.endpoints.traces.as_str(), "http://c:4318/v1/traces");
        assert_eq!(c.endpoints.logs.as_str(), "https://l:1/custom");
        assert_eq!(c.headers[0].1, "a b");
        assert_eq!(c.headers[1].0.as_str(), "x-team");
        assert_eq!(c.compression, Compression::None);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert!(c.resource.contains(&("service.name".into(), "edge".into())));
    }

    #[test]
    fn flags_win_over_env() {
        let flags = ExportOverrides {
            endpoint: Some("http://flag:4317".into()),
            protocol: Some(Protocol::Grpc),
            ..Default::default()
        };
        let c = ExportSection::default()
            .resolve(
                &flags,
                &env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ]),
            )
            .unwrap()
            .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoints.metrics.host_str(), Some("flag"));
    }

    #[test]
    fn bad_endpoint_header_and_buckets_are_clear_errors() {
        for (url, needle) in [
            ("not a url", "invalid OTLP endpoint"),
            ("ftp://x:1", "http or https expected"),
        ] {
            let flags = ExportOverrides {
                endpoint: Some(url.into()),
                ..Default::default()
            };
            let e = ExportSection::default()
                .resolve(&flags, &env(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
        let e = ExportSection::default()
            .resolve(
                &ExportOverrides::default(),
                &env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
                ]),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("key=value expected"), "{e}");
        let flags = ExportOverrides {
            endpoint: Some("http://c:4317".into()),
            headers: vec!["bad name=x".into()],
            ..Default::default()
        };
        assert!(ExportSection::default().resolve(&flags, &env(&[])).is_err());
        assert!(parse_buckets("tcp.connect.duration=0.1,0.01").is_err());
        let mut section = ExportSection::default();
        section
            .buckets
            .insert("tcp.connect.duration".into(), vec![0.1, 0.01]);
        let mut p = Problems::default();
        section.validate("export", &mut p);
        assert_eq!(p.0[0].path, "export.buckets.tcp.connect.duration");
    }

    #[test]
    fn per_signal_variables_override_the_generic_ones_for_their_signal() {
        use crate::export::Signal;
        let dir = std::env::temp_dir().join(format!("hostscope-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("traces-ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let cert = dir.join("logs-cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\ny\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let key = dir.join("logs-key.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nz\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let ca_s: &'static str = Box::leak(ca.display().to_string().into_boxed_str());
        let cert_s: &'static str = Box::leak(cert.display().to_string().into_boxed_str());
        let key_s: &'static str = Box::leak(key.display().to_string().into_boxed_str());
        let c = ExportSection::default()
            .resolve(
                &ExportOverrides::default(),
                &env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "k=generic"),
                    ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
                    ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "k=traces,t=1"),
                    ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3000"),
                    ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca_s),
                    ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
                    ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "zstd"),
                    ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf"),
                    ("OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE", cert_s),
                    ("OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY", key_s),
                ]),
            )
            .unwrap()
            .unwrap();
        let (m, t, l) = (
            c.signal(Signal::Metrics),
            c.signal(Signal::Traces),
            c.signal(Signal::Logs),
        );
        // Generic settings where no per-signal variable is set.
        assert_eq!(m.protocol, Protocol::Grpc);
        assert_eq!(m.headers.len(), 1);
        assert_eq!(m.headers[0].1, "generic");
        assert_eq!(m.timeout, Duration::from_millis(1000));
        assert!(m.tls.ca.is_none() && m.tls.client_cert.is_none());
        // Per-signal values replace (not add to) the generic ones.
        assert_eq!(m.compression, Compression::None);
        assert_eq!(t.compression, Compression::Gzip);
        assert_eq!(t.headers.len(), 2);
        assert_eq!(t.headers[0].1, "traces");
        assert_eq!(t.timeout, Duration::from_millis(3000));
        assert!(t
            .tls
            .ca
            .as_deref()
            .unwrap()
            .starts_with(b"-----BEGIN CERTIFICATE"));
        assert_eq!(l.protocol, Protocol::HttpProtobuf);
        assert_eq!(l.compression, Compression::Zstd);
        assert!(l.tls.client_cert.is_some() && l.tls.client_key.is_some());
        assert!(t.tls.client_cert.is_none());
        // A signal whose protocol is HTTP gets its /v1/<signal> path from the generic
        // endpoint; gRPC ones keep the base.
        assert_eq!(c.endpoints.logs.as_str(), "http://c:4317/v1/logs");
        assert_eq!(c.endpoints.metrics.as_str(), "http://c:4317/");
        // for_signal hands a transport the signal's settings.
        let tc = c.for_signal(Signal::Traces);
        assert_eq!(tc.timeout, Duration::from_millis(3000));
        assert_eq!(c.timeout, Duration::from_millis(1000));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flags_win_over_per_signal_variables_and_bad_ones_are_named() {
        use crate::export::Signal;
        let flags = ExportOverrides {
            endpoint: Some("http://flag:4317".into()),
            timeout_ms: Some(700),
            compression: Some(Compression::Gzip),
            headers: vec!["f=1".into()],
            ..Default::default()
        };
        let c = ExportSection::default()
            .resolve(
                &flags,
                &env(&[
                    ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3000"),
                    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
                    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "e=2"),
                ]),
            )
            .unwrap()
            .unwrap();
        let t = c.signal(Signal::Traces);
        assert_eq!(t.timeout, Duration::from_millis(700));
        assert_eq!(t.compression, Compression::Gzip);
        // Headers add up: the variable's, then the flag's.
        let names: Vec<_> = t.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["e", "f"]);
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "brotli"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon"),
        ] {
            let e = ExportSection::default()
                .resolve(
                    &ExportOverrides::default(),
                    &env(&[
                        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                        (var, value),
                    ]),
                )
                .unwrap_err()
                .to_string();
            assert!(e.contains(var), "{e}");
        }
        let e = ExportSection::default()
            .resolve(
                &ExportOverrides::default(),
                &env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "novalue"),
                ]),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_LOGS_HEADERS"), "{e}");
    }

    #[test]
    fn file_values_sit_below_the_environment_and_flags() {
        let section: ExportSection = serde_json::from_str(
            r#"{"endpoint":"http://file:4318","protocol":"http/protobuf","timeout":"2s",
                "buckets":{"tcp.connect.duration":[0.001,0.01]},"headers":{"x-file":"1"}}"#,
        )
        .unwrap();
        let c = section
            .resolve(&ExportOverrides::default(), &env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoints.metrics.as_str(), "http://file:4318/v1/metrics");
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.buckets["tcp.connect.duration"], vec![0.001, 0.01]);
        assert_eq!(c.headers[0].0.as_str(), "x-file");
        // The environment beats the file; a flag beats both.
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
        ]);
        let c = section
            .resolve(&ExportOverrides::default(), &e)
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoints.metrics.host_str(), Some("env"));
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.timeout, Duration::from_secs(3));
        let flags = ExportOverrides {
            endpoint: Some("http://flag:4317".into()),
            timeout_ms: Some(700),
            ..Default::default()
        };
        let c = section.resolve(&flags, &e).unwrap().unwrap();
        assert_eq!(c.endpoints.metrics.host_str(), Some("flag"));
        assert_eq!(c.timeout, Duration::from_millis(700));
    }

    #[test]
    fn settings_are_checked_without_an_endpoint() {
        let none = ExportOverrides::default();
        let bad_header = ExportOverrides {
            headers: vec!["novalue".into()],
            ..Default::default()
        };
        let e = ExportSection::default()
            .resolve(&bad_header, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key=value expected"), "{e}");
        let missing_ca = ExportOverrides {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = ExportSection::default()
            .resolve(&missing_ca, &env(&[]))
            .unwrap_err()
            .to_string();
        // The OS reason once, the file and where it came from named.
        assert_eq!(e.matches("No such file").count(), 1, "{e}");
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("--otlp-ca"),
            "{e}"
        );
        let e = ExportSection::default()
            .resolve(&none, &env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "bogus")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_pem_is_named() {
        let path = std::env::temp_dir().join(format!("hostscope-notpem-{}", std::process::id()));
        std::fs::write(&path, "hello").unwrap();
        let flags = ExportOverrides {
            ca: Some(path.clone()),
            ..Default::default()
        };
        let e = ExportSection::default()
            .resolve(&flags, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("not a PEM file"),
            "{e}"
        );
        let _ = std::fs::remove_file(&path);
    }
}
