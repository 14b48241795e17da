//! OTLP/gRPC with tonic and the generated service clients of `opentelemetry-proto`.

use std::{str::FromStr, time::Duration};

use opentelemetry_proto::tonic::collector::{
    logs::v1::{logs_service_client::LogsServiceClient, ExportLogsServiceRequest},
    metrics::v1::{metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest},
    trace::v1::{trace_service_client::TraceServiceClient, ExportTraceServiceRequest},
};
use prost::Message;
use tonic::{
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Request, Status,
};

use super::{Accepted, SendError, TransportError};
use crate::export::{
    config::{Compression, ExportConfig},
    Signal,
};

pub struct GrpcTransport {
    metrics: MetricsServiceClient<Channel>,
    traces: TraceServiceClient<Channel>,
    logs: LogsServiceClient<Channel>,
    metadata: MetadataMap,
    timeout: Duration,
}

impl GrpcTransport {
    pub fn new(config: &ExportConfig) -> Result<GrpcTransport, TransportError> {
        let channel = |url: &reqwest::Url| -> Result<Channel, TransportError> {
            let bad = |why: String| TransportError::Endpoint {
                url: url.to_string(),
                why,
            };
            let mut ep = Endpoint::from_shared(url.to_string())
                .map_err(|e| bad(e.to_string()))?
                .timeout(config.timeout)
                .connect_timeout(config.timeout);
            if url.scheme() == "https" {
                let mut tls = ClientTlsConfig::new();
                tls = match &config.tls.ca {
                    Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                    None => tls.with_native_roots(),
                };
                if let (Some(cert), Some(key)) = (&config.tls.client_cert, &config.tls.client_key) {
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                ep = ep
                    .tls_config(tls)
                    .map_err(|e| TransportError::Tls(e.to_string()))?;
            }
            // Lazy: the agent starts (and queues) while the backend is down.
            Ok(ep.connect_lazy())
        };
        let send_encoding = match config.compression {
            Compression::Gzip => Some(CompressionEncoding::Gzip),
            Compression::Zstd => Some(CompressionEncoding::Zstd),
            Compression::None => None,
        };
        let mut metadata = MetadataMap::new();
        for (name, value) in &config.headers {
            let key =
                MetadataKey::from_str(name.as_str()).map_err(|e| TransportError::Endpoint {
                    url: config.endpoints.metrics.to_string(),
                    why: format!("header {name}: {e}"),
                })?;
            let value = value
                .to_str()
                .ok()
                .and_then(|v| MetadataValue::from_str(v).ok())
                .ok_or_else(|| TransportError::Endpoint {
                    url: config.endpoints.metrics.to_string(),
                    why: format!("header {name}: value is not ASCII"),
                })?;
            metadata.append(key, value);
        }
        let with = |c: Channel| c;
        let mut metrics = MetricsServiceClient::new(with(channel(&config.endpoints.metrics)?));
        let mut traces = TraceServiceClient::new(with(channel(&config.endpoints.traces)?));
        let mut logs = LogsServiceClient::new(with(channel(&config.endpoints.logs)?));
        if let Some(e) = send_encoding {
            metrics = metrics.send_compressed(e);
            traces = traces.send_compressed(e);
            logs = logs.send_compressed(e);
        }
        for e in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
            metrics = metrics.accept_compressed(e);
            traces = traces.accept_compressed(e);
            logs = logs.accept_compressed(e);
        }
        Ok(GrpcTransport {
            metrics,
            traces,
            logs,
            metadata,
            timeout: config.timeout,
        })
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        *r.metadata_mut() = self.metadata.clone();
        r.set_timeout(self.timeout);
        r
    }

    pub async fn send(&self, signal: Signal, payload: &[u8]) -> (Result<Accepted, SendError>, u64) {
        // tonic compresses inside the call; compressing a second time only to count the
        // bytes would double the cost, so gRPC reports the message size before
        // compression (plus the 5-byte frame).
        let wire = payload.len() as u64 + 5;
        let decode_err = |e: prost::DecodeError| SendError {
            retryable: false,
            retry_after: None,
            kind: "encode".into(),
            message: e.to_string(),
        };
        let result = match signal {
            Signal::Metrics => match ExportMetricsServiceRequest::decode(payload) {
                Ok(m) => self
                    .metrics
                    .clone()
                    .export(self.request(m))
                    .await
                    .map(|r| {
                        partial(
                            r.into_inner()
                                .partial_success
                                .map(|p| (p.rejected_data_points, p.error_message)),
                        )
                    })
                    .map_err(classify),
                Err(e) => Err(decode_err(e)),
            },
            Signal::Traces => match ExportTraceServiceRequest::decode(payload) {
                Ok(m) => self
                    .traces
                    .clone()
                    .export(self.request(m))
                    .await
                    .map(|r| {
                        partial(
                            r.into_inner()
                                .partial_success
                                .map(|p| (p.rejected_spans, p.error_message)),
                        )
                    })
                    .map_err(classify),
                Err(e) => Err(decode_err(e)),
            },
            Signal::Logs => match ExportLogsServiceRequest::decode(payload) {
                Ok(m) => self
                    .logs
                    .clone()
                    .export(self.request(m))
                    .await
                    .map(|r| {
                        partial(
                            r.into_inner()
                                .partial_success
                                .map(|p| (p.rejected_log_records, p.error_message)),
                        )
                    })
                    .map_err(classify),
                Err(e) => Err(decode_err(e)),
            },
        };
        (result, wire)
    }
}

fn partial(p: Option<(i64, String)>) -> Accepted {
    match p {
        Some((rejected, message)) => Accepted {
            rejected: rejected.max(0),
            message,
        },
        None => Accepted::default(),
    }
}

/// Retryable codes per the OTLP specification; anything else is dropped and counted.
/// RESOURCE_EXHAUSTED is retryable only when the server attached a RetryInfo: the spec
/// reads a bare one as "this request can never fit" (e.g. over a size limit), and retrying
/// it would only resend the same refused bytes.
pub fn classify(status: Status) -> SendError {
    let code = status.code();
    let retry_after = retry_info(status.details());
    // tonic reports a connection that broke under the request (the backend went away) as
    // UNKNOWN, with the transport error as its source; an UNKNOWN the server sent has no
    // source. The former is a transport failure like a refused connect: retried.
    let local = std::error::Error::source(&status).is_some();
    if code == Code::Unknown && local {
        return SendError {
            retryable: true,
            retry_after,
            kind: "grpc_transport".into(),
            message: message_with_causes(&status),
        };
    }
    let retryable = match code {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => retry_after.is_some(),
        _ => false,
    };
    SendError {
        retryable,
        retry_after,
        kind: format!("grpc_{}", code_name(code)),
        message: message_with_causes(&status),
    }
}

/// The status message and the errors under it: a failed connect is only "tcp connect
/// error" on its own, the cause ("Connection refused", a timeout) is in the chain.
fn message_with_causes(status: &Status) -> String {
    let mut s = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        let text = e.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = e.source();
    }
    s
}

fn code_name(code: Code) -> String {
    // `Code`'s Debug is CamelCase: `ResourceExhausted` -> `resource_exhausted`.
    let mut out = String::new();
    for (i, ch) in format!("{code:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

// google.rpc.Status / google.protobuf.Any / google.rpc.RetryInfo, just the fields we read
// from `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

pub fn retry_info(details: &[u8]) -> Option<Duration> {
    if details.is_empty() {
        return None;
    }
    let status = RpcStatus::decode(details).ok()?;
    let any = status
        .details
        .iter()
        .find(|a| a.type_url.ends_with("google.rpc.RetryInfo"))?;
    let d = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some(Duration::new(
        d.seconds.max(0) as u64,
        d.nanos.max(0) as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_and_retry_info() {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: 2,
                nanos: 500_000_000,
            }),
        };
        let details = RpcStatus {
            code: Code::ResourceExhausted as i32,
            message: "slow down".into(),
            details: vec![ProtoAny {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: info.encode_to_vec(),
            }],
        }
        .encode_to_vec();
        let e = classify(Status::with_details(
            Code::ResourceExhausted,
            "slow down",
            details.into(),
        ));
        assert!(e.retryable);
        assert_eq!(e.kind, "grpc_resource_exhausted");
        assert_eq!(e.retry_after, Some(Duration::from_millis(2500)));
        let e = classify(Status::invalid_argument("bad"));
        assert!(!e.retryable);
        assert_eq!(e.kind, "grpc_invalid_argument");
        assert!(classify(Status::unavailable("down")).retryable);
    }

    #[test]
    fn a_connection_broken_under_the_request_is_retried_a_server_unknown_is_not() {
        let broken = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let e = classify(Status::from_error(Box::new(broken)));
        assert!(e.retryable);
        assert_eq!(e.kind, "grpc_transport");
        assert!(e.message.contains("broken pipe"), "{}", e.message);
        let e = classify(Status::unknown("the server did not like it"));
        assert!(!e.retryable);
        assert_eq!(e.kind, "grpc_unknown");
    }

    #[test]
    fn resource_exhausted_without_retry_info_is_not_retried() {
        let e = classify(Status::resource_exhausted("too big"));
        assert!(!e.retryable);
        assert_eq!(e.kind, "grpc_resource_exhausted");
        assert_eq!(e.retry_after, None);
        // Details that are not a RetryInfo do not make it retryable either.
        let details = RpcStatus {
            code: Code::ResourceExhausted as i32,
            message: "quota".into(),
            details: vec![ProtoAny {
                type_url: "type.googleapis.com/google.rpc.QuotaFailure".into(),
                value: vec![],
            }],
        }
        .encode_to_vec();
        let e = classify(Status::with_details(
            Code::ResourceExhausted,
            "quota",
            details.into(),
        ));
        assert!(!e.retryable);
    }
}
