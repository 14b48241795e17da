//! Sending one encoded export request: OTLP/gRPC ([`grpc`]) or OTLP/HTTP protobuf
//! ([`http`]), with failures classified the way the OTLP specification says (retryable or
//! not, with the server's requested delay).

pub mod grpc;
pub mod http;

use std::time::Duration;

use super::{
    config::{Compression, ExportConfig},
    Signal,
};

/// The server took the request; `rejected` items were refused (partial success).
#[derive(Debug, Default, PartialEq)]
pub struct Accepted {
    pub rejected: i64,
    pub message: String,
}

impl Accepted {
    /// From an Export*ServiceResponse body of `signal` (gRPC message or HTTP body): its
    /// partial success, if any. A body that does not decode is taken as full success (the
    /// server said OK; only its detail is lost).
    pub fn from_response(signal: Signal, body: &[u8]) -> Accepted {
        use opentelemetry_proto::tonic::collector::{
            logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
            trace::v1::ExportTraceServiceResponse,
        };
        use prost::Message;
        let p = match signal {
            Signal::Metrics => ExportMetricsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map(|p| (p.rejected_data_points, p.error_message)),
            Signal::Traces => ExportTraceServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map(|p| (p.rejected_spans, p.error_message)),
            Signal::Logs => ExportLogsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map(|p| (p.rejected_log_records, p.error_message)),
        };
        match p {
            Some((rejected, message)) => Accepted {
                rejected: rejected.max(0),
                message,
            },
            None => Accepted::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct SendError {
    pub retryable: bool,
    /// Retry-After (HTTP) or RetryInfo (gRPC).
    pub retry_after: Option<Duration>,
    /// Short, stable label for metrics (`http_503`, `grpc_unavailable`, `connect`, …).
    pub kind: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("OTLP TLS configuration: {0}")]
    Tls(String),
    #[error("OTLP endpoint {url}: {why}")]
    Endpoint { url: String, why: String },
    #[error("OTLP HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

// Boxed: both clients are large (~1 KB HTTP, ~640 B gRPC) and built once.
enum OneTransport {
    Grpc(Box<grpc::GrpcTransport>),
    Http(Box<http::HttpTransport>),
}

/// One transport per signal: each may have its own protocol, headers, compression,
/// timeout and TLS files (the per-signal OTEL_EXPORTER_OTLP_<SIGNAL>_* variables). gRPC
/// channels connect lazily, so the two a signal does not use cost no connection.
pub struct Transport {
    metrics: OneTransport,
    traces: OneTransport,
    logs: OneTransport,
}

impl OneTransport {
    fn new(config: &ExportConfig) -> Result<OneTransport, TransportError> {
        Ok(match config.protocol {
            super::config::Protocol::Grpc => {
                OneTransport::Grpc(Box::new(grpc::GrpcTransport::new(config)?))
            }
            super::config::Protocol::HttpProtobuf => {
                OneTransport::Http(Box::new(http::HttpTransport::new(config)?))
            }
        })
    }
}

impl Transport {
    pub fn new(config: &ExportConfig) -> Result<Transport, TransportError> {
        Ok(Transport {
            metrics: OneTransport::new(&config.for_signal(Signal::Metrics))?,
            traces: OneTransport::new(&config.for_signal(Signal::Traces))?,
            logs: OneTransport::new(&config.for_signal(Signal::Logs))?,
        })
    }

    /// `payload` is the encoded Export*ServiceRequest as queued, compressed as `stored`
    /// says: sent as it is when that is the signal's wire compression, else recompressed
    /// for the wire. Returns also the bytes put on the wire (after compression) for the
    /// benchmark and stats.
    pub async fn send(
        &self,
        signal: Signal,
        stored: Compression,
        payload: &[u8],
    ) -> (Result<Accepted, SendError>, u64) {
        let t = match signal {
            Signal::Metrics => &self.metrics,
            Signal::Traces => &self.traces,
            Signal::Logs => &self.logs,
        };
        match t {
            OneTransport::Grpc(t) => t.send(signal, stored, payload).await,
            OneTransport::Http(t) => t.send(signal, stored, payload).await,
        }
    }
}

/// A queued request that does not decompress (it was checked when queued or loaded, so
/// only damage in memory gets here): never sendable, so not retried.
fn undecodable(why: String) -> SendError {
    SendError {
        retryable: false,
        retry_after: None,
        kind: "undecodable".into(),
        message: why,
    }
}
