//! OTLP/HTTP with binary protobuf bodies (reqwest on rustls).

use std::time::Duration;

use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
    trace::v1::ExportTraceServiceResponse,
};
use prost::Message;
use reqwest::{
    header::{HeaderMap, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER},
    Certificate, Client, Identity, StatusCode,
};

use super::{Accepted, SendError, TransportError};
use crate::export::{
    config::{Compression, ExportConfig},
    Signal,
};

pub struct HttpTransport {
    client: Client,
    config: ExportConfig,
    headers: HeaderMap,
}

impl HttpTransport {
    pub fn new(config: &ExportConfig) -> Result<HttpTransport, TransportError> {
        let mut b = Client::builder()
            .use_rustls_tls()
            .timeout(config.timeout)
            .connect_timeout(config.timeout);
        if let Some(ca) = &config.tls.ca {
            let certs = Certificate::from_pem_bundle(ca)
                .map_err(|e| TransportError::Tls(format!("CA: {e}")))?;
            if certs.is_empty() {
                return Err(TransportError::Tls("CA: no certificate in the file".into()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let (Some(cert), Some(key)) = (&config.tls.client_cert, &config.tls.client_key) {
            let mut pem = cert.clone();
            pem.push(b'\n');
            pem.extend_from_slice(key);
            let id = Identity::from_pem(&pem)
                .map_err(|e| TransportError::Tls(format!("client certificate/key: {e}")))?;
            b = b.identity(id);
        }
        let client = b.build().map_err(TransportError::Client)?;
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            headers.append(k.clone(), v.clone());
        }
        Ok(HttpTransport {
            client,
            config: config.clone(),
            headers,
        })
    }

    pub async fn send(&self, signal: Signal, payload: &[u8]) -> (Result<Accepted, SendError>, u64) {
        let url = match signal {
            Signal::Metrics => &self.config.endpoints.metrics,
            Signal::Traces => &self.config.endpoints.traces,
            Signal::Logs => &self.config.endpoints.logs,
        };
        let gzip = self.config.compression == Compression::Gzip;
        let body = if gzip {
            crate::export::gzip(payload)
        } else {
            payload.to_vec()
        };
        let wire = body.len() as u64;
        let mut req = self
            .client
            .post(url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/x-protobuf");
        if gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                // Connection refused, reset, timeout: the backend may come back.
                let kind = if e.is_timeout() { "timeout" } else { "connect" };
                return (
                    Err(SendError {
                        retryable: true,
                        retry_after: None,
                        kind: kind.into(),
                        message: error_chain(&e),
                    }),
                    wire,
                );
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = resp.bytes().await.unwrap_or_default();
        if status.is_success() {
            let p = match signal {
                Signal::Metrics => ExportMetricsServiceResponse::decode(bytes.as_ref())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map(|p| (p.rejected_data_points, p.error_message)),
                Signal::Traces => ExportTraceServiceResponse::decode(bytes.as_ref())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map(|p| (p.rejected_spans, p.error_message)),
                Signal::Logs => ExportLogsServiceResponse::decode(bytes.as_ref())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map(|p| (p.rejected_log_records, p.error_message)),
            };
            let accepted = p
                .map(|(rejected, message)| Accepted {
                    rejected: rejected.max(0),
                    message,
                })
                .unwrap_or_default();
            return (Ok(accepted), wire);
        }
        (
            Err(SendError {
                retryable: is_retryable(status),
                retry_after,
                kind: format!("http_{}", status.as_u16()),
                message: String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).into_owned(),
            }),
            wire,
        )
    }
}

/// 429, 502, 503, 504: retryable per the OTLP/HTTP specification; other errors are not.
pub fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// Retry-After as delay-seconds (the HTTP-date form is rare for OTLP backends and is
/// treated as absent: the exponential backoff applies).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses() {
        for s in [429, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 500] {
            assert!(!is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
