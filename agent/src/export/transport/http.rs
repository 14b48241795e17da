//! OTLP/HTTP with binary protobuf bodies (reqwest on rustls).

use std::time::Duration;

use reqwest::{
    header::{HeaderMap, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER},
    Certificate, Client, Identity, StatusCode,
};

use super::{Accepted, SendError, TransportError};
use crate::export::{
    compress,
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

    /// Sends a request stored as `stored` (see [`super::Transport::send`]).
    pub async fn send(
        &self,
        signal: Signal,
        stored: Compression,
        payload: &[u8],
    ) -> (Result<Accepted, SendError>, u64) {
        let url = match signal {
            Signal::Metrics => &self.config.endpoints.metrics,
            Signal::Traces => &self.config.endpoints.traces,
            Signal::Logs => &self.config.endpoints.logs,
        };
        let (used, body) = match compress::for_wire(stored, payload, self.config.compression) {
            Ok(b) => b,
            Err(why) => return (Err(super::undecodable(why)), 0),
        };
        let encoding = (used != Compression::None).then(|| compress::name(used));
        let body = body.into_owned();
        let wire = body.len() as u64;
        let mut req = self
            .client
            .post(url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/x-protobuf");
        if let Some(encoding) = encoding {
            req = req.header(CONTENT_ENCODING, encoding);
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
            let accepted = Accepted::from_response(signal, &bytes);
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

/// Retry-After in either form RFC 9110 allows: delay-seconds or an HTTP-date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    retry_after_at(v, std::time::SystemTime::now())
}

/// `now` is a parameter so the date form can be tested without a clock. A date already
/// past means "retry now" (zero), not "no advice": the server did answer.
fn retry_after_at(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
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
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn retry_after_http_date() {
        use std::time::{SystemTime, UNIX_EPOCH};
        // Wed, 21 Oct 2015 07:28:00 GMT = 1445412480.
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480 - 42);
        assert_eq!(retry_after_at(date, now), Some(Duration::from_secs(42)));
        // A date in the past: retry at once.
        let later = UNIX_EPOCH + Duration::from_secs(1_445_412_480 + 5);
        assert_eq!(retry_after_at(date, later), Some(Duration::ZERO));
        // The obsolete RFC 850 and asctime forms are HTTP-dates too.
        let rfc850 = "Wednesday, 21-Oct-15 07:28:00 GMT";
        assert_eq!(retry_after_at(rfc850, now), Some(Duration::from_secs(42)));
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
    }
}
