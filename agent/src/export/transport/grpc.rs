//! OTLP/gRPC over tonic's channel (HTTP/2, TLS, reconnects, timeouts). The request is
//! framed here rather than by tonic's generated clients: those encode and compress the
//! message inside the call, while the queue already holds it compressed with the wire's
//! encoding ([`crate::export::compress`]), so the stored bytes go out as they are, in a
//! frame flagged compressed with their `grpc-encoding`. Statuses are read with tonic's
//! own parsing and classified as before.

use std::{str::FromStr, time::Duration};

use http_body_util::BodyExt;
use prost::Message;
use tonic::{
    codegen::{http, Bytes, Service},
    metadata::{MetadataKey, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Status,
};

use super::{Accepted, SendError, TransportError};
use crate::export::{
    compress,
    config::{Compression, ExportConfig},
    Signal,
};

pub struct GrpcTransport {
    metrics: Channel,
    traces: Channel,
    logs: Channel,
    compression: Compression,
    /// The configured headers, checked as gRPC metadata.
    headers: http::HeaderMap,
    timeout: Duration,
}

/// The OTLP services' export methods.
fn path(signal: Signal) -> &'static str {
    match signal {
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    }
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
        let mut headers = http::HeaderMap::new();
        for (name, value) in &config.headers {
            let bad = |why: String| TransportError::Endpoint {
                url: config.endpoints.metrics.to_string(),
                why: format!("header {name}: {why}"),
            };
            // What gRPC metadata allows: an ASCII key (not a binary `-bin` one) and value.
            MetadataKey::<tonic::metadata::Ascii>::from_str(name.as_str())
                .map_err(|e| bad(e.to_string()))?;
            value
                .to_str()
                .ok()
                .and_then(|v| MetadataValue::<tonic::metadata::Ascii>::from_str(v).ok())
                .ok_or_else(|| bad("value is not ASCII".into()))?;
            headers.append(name.clone(), value.clone());
        }
        Ok(GrpcTransport {
            metrics: channel(&config.endpoints.metrics)?,
            traces: channel(&config.endpoints.traces)?,
            logs: channel(&config.endpoints.logs)?,
            compression: config.compression,
            headers,
            timeout: config.timeout,
        })
    }

    /// Sends a request stored as `stored` (see [`super::Transport::send`]); the bytes on
    /// the wire are the 5-byte frame header and the message as sent (compressed).
    pub async fn send(
        &self,
        signal: Signal,
        stored: Compression,
        payload: &[u8],
    ) -> (Result<Accepted, SendError>, u64) {
        let (used, message) = match compress::for_wire(stored, payload, self.compression) {
            Ok(m) => m,
            Err(why) => return (Err(super::undecodable(why)), 0),
        };
        let Ok(len) = u32::try_from(message.len()) else {
            return (Err(super::undecodable("over 4 GiB".into())), 0);
        };
        let mut frame = Vec::with_capacity(5 + message.len());
        frame.push(u8::from(used != Compression::None));
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&message);
        let wire = frame.len() as u64;
        let mut req = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(frame),
        )));
        *req.method_mut() = http::Method::POST;
        *req.version_mut() = http::Version::HTTP_2;
        *req.uri_mut() = http::Uri::from_static(path(signal));
        let h = req.headers_mut();
        h.extend(self.headers.clone());
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        h.insert(
            "grpc-accept-encoding",
            http::HeaderValue::from_static("gzip,zstd"),
        );
        if used != Compression::None {
            h.insert(
                "grpc-encoding",
                http::HeaderValue::from_static(compress::name(used)),
            );
        }
        if let Ok(v) = http::HeaderValue::from_str(&format!("{}m", self.timeout.as_millis())) {
            h.insert("grpc-timeout", v);
        }
        let mut channel = match signal {
            Signal::Metrics => self.metrics.clone(),
            Signal::Traces => self.traces.clone(),
            Signal::Logs => self.logs.clone(),
        };
        let result = async {
            // Errors of the channel (refused connect, timeout, TLS) become the status
            // tonic's own clients give them.
            let local = |e: tonic::transport::Error| Status::from_error(Box::new(e));
            std::future::poll_fn(|cx| channel.poll_ready(cx))
                .await
                .map_err(local)?;
            let resp = channel.call(req).await.map_err(local)?;
            answer(signal, resp).await
        }
        .await;
        (result.map_err(classify), wire)
    }
}

/// The export's outcome from a gRPC response: its status (in the headers of a
/// trailers-only response, else in the trailers; without one, mapped from the HTTP status
/// as gRPC specifies) and the partial success of its message.
async fn answer(
    signal: Signal,
    resp: http::Response<tonic::body::Body>,
) -> Result<Accepted, Status> {
    let (parts, body) = resp.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        if status.code() != Code::Ok {
            return Err(status);
        }
    }
    let collected = body.collect().await?;
    let status = collected
        .trailers()
        .and_then(Status::from_header_map)
        .or_else(|| Status::from_header_map(&parts.headers))
        .unwrap_or_else(|| status_of_http(parts.status));
    if status.code() != Code::Ok {
        return Err(status);
    }
    let data = collected.to_bytes();
    // The server took the request; a reply that does not decode only loses its
    // partial-success counts (as over HTTP).
    let encoding = match parts.headers.get("grpc-encoding").map(|v| v.as_bytes()) {
        Some(b"gzip") => Compression::Gzip,
        Some(b"zstd") => Compression::Zstd,
        _ => Compression::None,
    };
    let message = match data.as_ref() {
        [0, _, _, _, _, m @ ..] => Some(m.to_vec()),
        [1, _, _, _, _, m @ ..] => compress::decompress(encoding, m).ok(),
        _ => None,
    };
    let Some(m) = message else {
        return Ok(Accepted::default());
    };
    Ok(Accepted::from_response(signal, &m))
}

/// A response without `grpc-status`: the code the gRPC HTTP mapping gives its HTTP
/// status (a proxy's 503, say).
fn status_of_http(status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!("no grpc-status in the response (HTTP {status})"),
    )
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
