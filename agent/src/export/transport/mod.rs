//! Sending one encoded export request: OTLP/gRPC ([`grpc`]) or OTLP/HTTP protobuf
//! ([`http`]), with failures classified the way the OTLP specification says (retryable or
//! not, with the server's requested delay).

pub mod grpc;
pub mod http;

use std::time::Duration;

use super::{config::ExportConfig, Signal};

/// The server took the request; `rejected` items were refused (partial success).
#[derive(Debug, Default, PartialEq)]
pub struct Accepted {
    pub rejected: i64,
    pub message: String,
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

pub enum Transport {
    Grpc(grpc::GrpcTransport),
    Http(http::HttpTransport),
}

impl Transport {
    pub fn new(config: &ExportConfig) -> Result<Transport, TransportError> {
        Ok(match config.protocol {
            super::config::Protocol::Grpc => Transport::Grpc(grpc::GrpcTransport::new(config)?),
            super::config::Protocol::HttpProtobuf => {
                Transport::Http(http::HttpTransport::new(config)?)
            }
        })
    }

    /// `payload` is the encoded Export*ServiceRequest (uncompressed). Returns also the
    /// bytes put on the wire (after compression) for the benchmark and stats.
    pub async fn send(&self, signal: Signal, payload: &[u8]) -> (Result<Accepted, SendError>, u64) {
        match self {
            Transport::Grpc(t) => t.send(signal, payload).await,
            Transport::Http(t) => t.send(signal, payload).await,
        }
    }
}
