//! Export options: command-line flags (serde-deserializable too, so a config file can carry
//! them later) resolved against the standard `OTEL_EXPORTER_OTLP_*` environment variables
//! into a checked [`ExportConfig`]. Flags win over the environment, per-signal variables
//! over the generic ones, as the OTLP exporter specification says.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use reqwest::{
    header::{HeaderName, HeaderValue},
    Url,
};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    #[value(name = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    /// OTLP/HTTP `Content-Encoding: zstd`, gRPC `grpc-encoding: zstd` (a receiver without
    /// zstd refuses it; see README).
    Zstd,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    Cumulative,
    Delta,
}

/// OTLP export flags (`hostscope run --otlp-endpoint …`). Nothing set, no endpoint in the
/// environment: no export.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ExportArgs {
    /// OTLP endpoint (e.g. http://collector:4317 for gRPC, http://collector:4318 for
    /// HTTP); default: OTEL_EXPORTER_OTLP_ENDPOINT. Without one nothing is exported.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Transport; default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc.
    #[arg(long, value_enum)]
    pub otlp_protocol: Option<Protocol>,
    /// Extra request header `key=value` (repeatable); added to OTEL_EXPORTER_OTLP_HEADERS.
    #[arg(long = "otlp-header", value_name = "KEY=VALUE")]
    pub otlp_headers: Vec<String>,
    /// Request compression; default: OTEL_EXPORTER_OTLP_COMPRESSION, else gzip.
    #[arg(long, value_enum)]
    pub otlp_compression: Option<Compression>,
    /// Per-request timeout in milliseconds; default: OTEL_EXPORTER_OTLP_TIMEOUT, else 10000.
    #[arg(long, value_name = "MS")]
    pub otlp_timeout_ms: Option<u64>,
    /// PEM CA bundle to verify the endpoint with; default: OTEL_EXPORTER_OTLP_CERTIFICATE.
    #[arg(long, value_name = "FILE")]
    pub otlp_ca: Option<PathBuf>,
    /// PEM client certificate for mTLS; default: OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE.
    #[arg(long, value_name = "FILE", requires = "otlp_client_key")]
    pub otlp_client_cert: Option<PathBuf>,
    /// PEM client key for mTLS; default: OTEL_EXPORTER_OTLP_CLIENT_KEY.
    #[arg(long, value_name = "FILE", requires = "otlp_client_cert")]
    pub otlp_client_key: Option<PathBuf>,
    /// Seconds between metric exports (and the longest a span or log waits).
    #[arg(long, value_name = "SECONDS")]
    pub otlp_interval: Option<f64>,
    /// Spans or log records per request at most (a full batch is sent at once).
    #[arg(long, value_name = "N")]
    pub otlp_max_batch: Option<usize>,
    /// Memory queue bound in bytes of encoded requests; beyond it requests are dropped
    /// (counted).
    #[arg(long, value_name = "BYTES")]
    pub otlp_queue_bytes: Option<usize>,
    /// Directory of an on-disk queue: requests survive an outage (and a restart) and are
    /// replayed in order.
    #[arg(long, value_name = "DIR")]
    pub otlp_disk_queue: Option<PathBuf>,
    /// Disk queue bound in bytes; beyond it new requests are dropped (counted).
    #[arg(long, value_name = "BYTES")]
    pub otlp_disk_queue_bytes: Option<u64>,
    /// How long a request is retried before it is dropped (memory queue only: the disk
    /// queue retries until delivered).
    #[arg(long, value_name = "SECONDS")]
    pub otlp_max_retry: Option<f64>,
    /// Metric temporality.
    #[arg(long, value_enum)]
    pub otlp_temporality: Option<Temporality>,
    /// Histogram bucket bounds of one metric, in its unit: `NAME=b1,b2,…` (repeatable).
    #[arg(long = "otlp-buckets", value_name = "NAME=BOUNDS")]
    pub otlp_buckets: Vec<String>,
    /// Export histograms as base-2 exponential histograms (no bucket bounds to choose;
    /// --otlp-buckets then does not apply).
    #[arg(long)]
    pub otlp_exponential_histograms: bool,
    /// Metric series kept at most; new attribute sets beyond it go to one overflow series
    /// (`otel.metric.overflow=true`) and are counted.
    #[arg(long, value_name = "N")]
    pub otlp_series_limit: Option<usize>,
    /// Put `process.pid` on metric data points (unbounded cardinality).
    #[arg(long)]
    pub otlp_metric_pids: bool,
    /// Put peer addresses (`network.peer.address`) on metric data points.
    #[arg(long)]
    pub otlp_metric_peers: bool,
    /// Also export one span per TCP connection, connect to close, with its resets as
    /// span events (one span per connection: sized for services, not for storms).
    #[arg(long)]
    pub otlp_connection_spans: bool,
    /// Resource attribute `key=value` (repeatable), e.g. `service.version=1.2`; added to
    /// OTEL_RESOURCE_ATTRIBUTES.
    #[arg(long = "otlp-resource", value_name = "KEY=VALUE")]
    pub otlp_resource: Vec<String>,
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
    #[error("reading {what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
    pub connection_spans: bool,
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

impl ExportArgs {
    /// Settings of one signal (`which`: None for the generic ones, else 0..3 = metrics,
    /// traces, logs): flag, else the per-signal variable, else the generic variable.
    fn settings(&self, env: &dyn Env, which: Option<usize>) -> Result<SignalSettings, ConfigError> {
        // (value, variable it came from)
        let var = |names: [&'static str; 4]| -> Option<(String, &'static str)> {
            which
                .and_then(|i| env.var(names[i + 1]).map(|v| (v, names[i + 1])))
                .or_else(|| env.var(names[0]).map(|v| (v, names[0])))
        };
        let protocol = match self.otlp_protocol {
            Some(p) => p,
            None => match var(otlp_var!("PROTOCOL")) {
                None => Protocol::Grpc,
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
        if let Some((h, name)) = var(otlp_var!("HEADERS")) {
            for item in h.split(',').filter(|s| !s.trim().is_empty()) {
                headers.push(parse_header(item, name)?);
            }
        }
        for item in &self.otlp_headers {
            headers.push(parse_header(item, "--otlp-header")?);
        }

        let compression = match self.otlp_compression {
            Some(c) => c,
            None => match var(otlp_var!("COMPRESSION")) {
                None => Compression::Gzip,
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
        let timeout_ms = match self.otlp_timeout_ms {
            Some(ms) => ms,
            None => match var(otlp_var!("TIMEOUT")) {
                None => 10_000,
                Some((v, name)) => v.trim().parse().map_err(|e| ConfigError::Value {
                    name,
                    value: v.clone(),
                    why: format!("{e} (milliseconds expected)"),
                })?,
            },
        };
        if timeout_ms == 0 {
            return Err(ConfigError::Value {
                name: "OTLP timeout",
                value: "0".into(),
                why: "must be at least 1 ms".into(),
            });
        }
        let file = |flag: &Option<PathBuf>, names: [&'static str; 4], what: &'static str| {
            let path = flag
                .clone()
                .or_else(|| var(names).map(|(v, _)| PathBuf::from(v)));
            path.map(|p| {
                std::fs::read(&p).map_err(|source| ConfigError::File {
                    what,
                    path: p,
                    source,
                })
            })
            .transpose()
        };
        let tls = TlsFiles {
            ca: file(&self.otlp_ca, otlp_var!("CERTIFICATE"), "CA")?,
            client_cert: file(
                &self.otlp_client_cert,
                otlp_var!("CLIENT_CERTIFICATE"),
                "client certificate",
            )?,
            client_key: file(&self.otlp_client_key, otlp_var!("CLIENT_KEY"), "client key")?,
        };
        // Checked here so a wrong file is named at start, not retried as a connect error.
        for (pem, what, marker) in [
            (
                &tls.ca,
                "--otlp-ca / OTEL_EXPORTER_OTLP_[<SIGNAL>_]CERTIFICATE",
                "-----BEGIN CERTIFICATE-----",
            ),
            (
                &tls.client_cert,
                "--otlp-client-cert / OTEL_EXPORTER_OTLP_[<SIGNAL>_]CLIENT_CERTIFICATE",
                "-----BEGIN CERTIFICATE-----",
            ),
            (
                &tls.client_key,
                "--otlp-client-key / OTEL_EXPORTER_OTLP_[<SIGNAL>_]CLIENT_KEY",
                "PRIVATE KEY-----",
            ),
        ] {
            if let Some(bytes) = pem {
                if !String::from_utf8_lossy(bytes).contains(marker) {
                    return Err(ConfigError::Value {
                        name: "PEM file",
                        value: what.into(),
                        why: format!("no {marker} block"),
                    });
                }
            }
        }
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
            timeout: Duration::from_millis(timeout_ms),
            tls,
        })
    }

    /// None when no endpoint is configured anywhere: the agent runs without export.
    pub fn resolve(&self, env: &dyn Env) -> Result<Option<ExportConfig>, ConfigError> {
        let generic = self
            .otlp_endpoint
            .clone()
            .map(|u| (u, "--otlp-endpoint"))
            .or_else(|| {
                env.var("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|u| (u, "OTEL_EXPORTER_OTLP_ENDPOINT"))
            });
        let per_signal = |name: &'static str| env.var(name).map(|u| (u, name));
        let metrics_env = per_signal("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
        let traces_env = per_signal("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let logs_env = per_signal("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT");
        if generic.is_none() && metrics_env.is_none() && traces_env.is_none() && logs_env.is_none()
        {
            return Ok(None);
        }
        let generic_settings = self.settings(env, None)?;
        let signals = [
            self.settings(env, Some(0))?,
            self.settings(env, Some(1))?,
            self.settings(env, Some(2))?,
        ];
        let signal = |own: Option<(String, &'static str)>, protocol: Protocol, path: &str| {
            // A per-signal variable is the full URL; the generic one is a base to which
            // HTTP appends /v1/<signal> (gRPC routes by service, not path).
            if self.otlp_endpoint.is_none() {
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

        let interval = positive_secs(self.otlp_interval, 10.0, "--otlp-interval")?;
        let max_retry = positive_secs(self.otlp_max_retry, 300.0, "--otlp-max-retry")?;
        let max_batch = self.otlp_max_batch.unwrap_or(512).max(1);

        let mut buckets = BTreeMap::new();
        for spec in &self.otlp_buckets {
            let (name, bounds) = parse_buckets(spec)?;
            buckets.insert(name, bounds);
        }

        let mut resource = Vec::new();
        if let Some(attrs) = env.var("OTEL_RESOURCE_ATTRIBUTES") {
            for item in attrs.split(',').filter(|s| !s.trim().is_empty()) {
                resource.push(parse_kv(item, "OTEL_RESOURCE_ATTRIBUTES")?);
            }
        }
        if let Some(name) = env.var("OTEL_SERVICE_NAME") {
            resource.push(("service.name".into(), name));
        }
        for item in &self.otlp_resource {
            resource.push(parse_kv(item, "--otlp-resource")?);
        }

        Ok(Some(ExportConfig {
            signals,
            protocol,
            endpoints,
            headers,
            compression,
            timeout,
            tls,
            interval,
            max_batch,
            queue_bytes: self.otlp_queue_bytes.unwrap_or(16 << 20).max(1),
            disk_queue: self.otlp_disk_queue.clone(),
            disk_queue_bytes: self.otlp_disk_queue_bytes.unwrap_or(256 << 20).max(1),
            max_retry,
            temporality: self.otlp_temporality.unwrap_or(Temporality::Cumulative),
            buckets,
            exponential_histograms: self.otlp_exponential_histograms,
            series_limit: self.otlp_series_limit.unwrap_or(10_000).max(1),
            metric_pids: self.otlp_metric_pids,
            metric_peers: self.otlp_metric_peers,
            connection_spans: self.otlp_connection_spans,
            resource,
        }))
    }
}

fn positive_secs(
    v: Option<f64>,
    default: f64,
    name: &'static str,
) -> Result<Duration, ConfigError> {
    let v = v.unwrap_or(default);
    if !(v > 0.0 && v <= 86_400.0) {
        return Err(ConfigError::Value {
            name,
            value: v.to_string(),
            why: "must be between 0 and 86400 seconds".into(),
        });
    }
    Ok(Duration::from_secs_f64(v))
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

fn parse_buckets(spec: &str) -> Result<(String, Vec<f64>), ConfigError> {
    let err = |why: &str| ConfigError::Value {
        name: "--otlp-buckets",
        value: spec.to_string(),
        why: why.to_string(),
    };
    let (name, list) = spec
        .split_once('=')
        .ok_or_else(|| err("NAME=b1,b2,… expected"))?;
    let bounds = list
        .split(',')
        .map(|b| b.trim().parse::<f64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| err("bounds must be numbers"))?;
    if bounds.is_empty()
        || bounds.iter().any(|b| !b.is_finite())
        || bounds.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(err("bounds must be finite and strictly increasing"));
    }
    if !super::metrics::is_histogram(name.trim()) {
        return Err(err("not a histogram metric (see docs/metrics.md)"));
    }
    Ok((name.trim().to_string(), bounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> BTreeMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn no_endpoint_no_export() {
        assert!(ExportArgs::default().resolve(&env(&[])).unwrap().is_none());
    }

    #[test]
    fn http_appends_signal_paths_and_per_signal_env_is_used_as_is() {
        let c = ExportArgs::default()
            .resolve(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "https://l:1/custom"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x-team=net"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
                ("OTEL_SERVICE_NAME", "edge"),
            ]))
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
        let args = ExportArgs {
            otlp_endpoint: Some("http://flag:4317".into()),
            otlp_protocol: Some(Protocol::Grpc),
            ..Default::default()
        };
        let c = args
            .resolve(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]))
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
            let args = ExportArgs {
                otlp_endpoint: Some(url.into()),
                ..Default::default()
            };
            let e = args.resolve(&env(&[])).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let e = ExportArgs::default()
            .resolve(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key=value expected"), "{e}");
        let args = ExportArgs {
            otlp_endpoint: Some("http://c:4317".into()),
            otlp_headers: vec!["bad name=x".into()],
            ..Default::default()
        };
        assert!(args.resolve(&env(&[])).is_err());
        let args = ExportArgs {
            otlp_endpoint: Some("http://c:4317".into()),
            otlp_buckets: vec!["tcp.connect.duration=0.1,0.01".into()],
            ..Default::default()
        };
        assert!(args.resolve(&env(&[])).is_err());
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
        let c = ExportArgs::default()
            .resolve(&env(&[
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
            ]))
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
        let args = ExportArgs {
            otlp_endpoint: Some("http://flag:4317".into()),
            otlp_timeout_ms: Some(700),
            otlp_compression: Some(Compression::Gzip),
            otlp_headers: vec!["f=1".into()],
            ..Default::default()
        };
        let c = args
            .resolve(&env(&[
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3000"),
                ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "e=2"),
            ]))
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
            let e = ExportArgs::default()
                .resolve(&env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    (var, value),
                ]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(var), "{e}");
        }
        let e = ExportArgs::default()
            .resolve(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "novalue"),
            ]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_LOGS_HEADERS"), "{e}");
    }

    #[test]
    fn args_deserialize_from_config() {
        let a: ExportArgs = serde_json::from_str(
            r#"{"otlp_endpoint":"http://c:4318","otlp_protocol":"http/protobuf","otlp_buckets":["tcp.connect.duration=0.001,0.01"]}"#,
        )
        .unwrap();
        let c = a.resolve(&env(&[])).unwrap().unwrap();
        assert_eq!(c.buckets["tcp.connect.duration"], vec![0.001, 0.01]);
    }
}
