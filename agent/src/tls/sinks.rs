//! What the sinks make of TLS records: metrics (the certificate countdown included),
//! failure logs and spans, RCA causes and recoveries, the API filter's failures.

use opentelemetry_proto::tonic::{
    common::v1::KeyValue,
    logs::v1::SeverityNumber,
    trace::v1::{span::SpanKind, status::StatusCode, Span, Status},
};

use crate::{
    api::filter::Filtered,
    events::{
        tls::{FailureSource, Outcome, Role, TlsCertificateRecord, TlsRecord},
        view::{list_bytes, opt_bytes, About},
        RecordView,
    },
    export::{
        logs::{LogEntry, Logged},
        metrics::{int, text, Key, Measure, Meter, MetricDef},
        resource::{int_value, kv, str_value},
        spans::{ids, start_of, Traced},
    },
    metadata::Subject,
    rca::classify::{Cause, Classified, Classify, KnownCertificate, Recovery, Success, Target},
    tls::reason::FailureReason as TlsReason,
};

pub static HANDSHAKE_DURATION: MetricDef = MetricDef::histogram(
    "tls.handshake.duration",
    "s",
    &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ],
    "ClientHello to handshake end, by outcome and failure reason.",
);
pub static HANDSHAKE_FAILURES: MetricDef = MetricDef::counter(
    "tls.handshake.failures",
    "{handshake}",
    "Failed handshakes by reason (error.type) and where it was learned.",
);
pub static CERT_TIME_TO_EXPIRY: MetricDef = MetricDef::gauge(
    "tls.certificate.time_to_expiry",
    "s",
    "Seconds until the server certificate's notAfter (negative once expired).",
);

/// The family's metrics (`family::Descriptor::metrics`).
pub static METRICS: &[&MetricDef] = &[
    &HANDSHAKE_DURATION,
    &HANDSHAKE_FAILURES,
    &CERT_TIME_TO_EXPIRY,
];

/// A TLS handshake that completed.
pub const HANDSHAKE: Recovery = Recovery("tls_handshake");

pub static CERTIFICATE_EXPIRED: Cause = Cause::new("tls_certificate_expired", "tls", HANDSHAKE);
pub static CERTIFICATE_NOT_YET_VALID: Cause =
    Cause::new("tls_certificate_not_yet_valid", "tls", HANDSHAKE);
pub static UNKNOWN_CA: Cause = Cause::new("tls_unknown_ca", "tls", HANDSHAKE);
pub static HOSTNAME_MISMATCH: Cause = Cause::new("tls_hostname_mismatch", "tls", HANDSHAKE);
pub static PROTOCOL_VERSION: Cause = Cause::new("tls_protocol_version", "tls", HANDSHAKE);
pub static CERTIFICATE_REJECTED: Cause = Cause::new("tls_certificate_rejected", "tls", HANDSHAKE);
pub static NO_COMMON_PARAMETERS: Cause = Cause::new("tls_no_common_parameters", "tls", HANDSHAKE);
pub static PEER_CLOSED: Cause = Cause::new("tls_peer_closed", "tls", HANDSHAKE);
pub static NOT_TLS: Cause = Cause::new("tls_not_tls", "tls", HANDSHAKE);
pub static STALLED: Cause = Cause::new("tls_stalled", "tls", HANDSHAKE);
pub static ERROR: Cause = Cause::new("tls_error", "tls", HANDSHAKE);

/// The family's causes, in the order docs/rca.md lists them.
pub static CAUSES: &[&Cause] = &[
    &CERTIFICATE_EXPIRED,
    &CERTIFICATE_NOT_YET_VALID,
    &UNKNOWN_CA,
    &HOSTNAME_MISMATCH,
    &PROTOCOL_VERSION,
    &CERTIFICATE_REJECTED,
    &NO_COMMON_PARAMETERS,
    &PEER_CLOSED,
    &NOT_TLS,
    &STALLED,
    &ERROR,
];

pub fn failure_source(s: FailureSource) -> &'static str {
    match s {
        FailureSource::AlertSent => "alert_sent",
        FailureSource::AlertReceived => "alert_received",
        FailureSource::X509Verify => "x509_verify",
        FailureSource::Connection => "connection",
    }
}

/// `TLSv1.3` / `TLS 1.3` -> `1.3`, as `tls.protocol.version` wants it.
pub fn tls_version(v: &str) -> String {
    v.trim_start_matches("TLSv")
        .trim_start_matches("TLS ")
        .trim_start_matches("TLS")
        .to_string()
}

impl RecordView for TlsRecord {
    fn about(&self) -> About {
        About {
            kind: "tls",
            time_unix_ns: self.timestamp_unix_ns,
            subject: Subject {
                pid: self.pid,
                cgroup_id: self.cgroup_id,
            },
        }
    }

    fn heap_bytes(&self) -> usize {
        opt_bytes(&self.comm)
            + opt_bytes(&self.remote_name)
            + opt_bytes(&self.server_name)
            + opt_bytes(&self.version)
            + opt_bytes(&self.cipher)
            + opt_bytes(&self.alpn)
            + opt_bytes(&self.cert_subject)
            + list_bytes(&self.offered_versions, String::capacity)
            + list_bytes(&self.alpn_offered, String::capacity)
            + list_bytes(&self.sources, |_| 0)
            + self.failure.as_ref().map_or(0, |f| f.detail.capacity())
    }

    fn peer(&self) -> Option<std::net::SocketAddr> {
        self.remote
    }

    fn remote_name(&self) -> Option<&str> {
        self.remote_name.as_deref()
    }
}

impl Measure for TlsRecord {
    fn measure(&self, meter: &mut Meter<'_>) {
        let r = self;
        let mut key: Key = Vec::new();
        if let Some(v) = &r.version {
            key.push(text("tls.protocol.version", tls_version(v)));
        }
        if let Some(port) = r.remote.zip(r.local).map(|(rem, loc)| match r.role {
            Some(Role::Server) => loc.port(),
            _ => rem.port(),
        }) {
            key.push(int("server.port", port as i64));
        }
        if meter.options().peers {
            if let Some(rem) = r.remote {
                key.push(text("network.peer.address", rem.ip().to_string()));
            }
        }
        meter.identity_key(&mut key);
        let outcome = match r.outcome {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        };
        let mut dkey = key.clone();
        dkey.push(text("hostscope.tls.outcome", outcome));
        if let Some(f) = &r.failure {
            dkey.push(text("error.type", f.reason.as_str()));
            let mut fkey = key;
            fkey.push(text("error.type", f.reason.as_str()));
            fkey.push(text(
                "hostscope.tls.failure.source",
                failure_source(f.source),
            ));
            meter.add(&HANDSHAKE_FAILURES, fkey, 1);
        }
        if let Some(us) = r.duration_us {
            meter.record(&HANDSHAKE_DURATION, dkey, us / 1e6);
        }
        if let (Some(name), Some(not_after)) = (&r.server_name, r.cert_not_after_unix) {
            count_down_certificate(meter, name, r.cert_subject.as_deref(), not_after);
        }
    }
}

/// The certificate gauge of `server_name`: it keeps counting down between handshakes.
fn count_down_certificate(
    meter: &mut Meter<'_>,
    server_name: &str,
    subject: Option<&str>,
    not_after: i64,
) {
    let mut key: Key = vec![text("server.address", server_name)];
    if let Some(s) = subject.filter(|s| !s.is_empty()) {
        key.push(text("tls.server.subject", s));
    }
    meter.count_down(&CERT_TIME_TO_EXPIRY, server_name, key, not_after);
}

impl Logged for TlsRecord {
    /// A failed handshake (`hostscope.tls.handshake_failed`).
    fn log_entry(&self) -> Option<LogEntry> {
        let r = self;
        if r.outcome != Outcome::Failure {
            return None;
        }
        let mut a = Vec::new();
        let reason = r
            .failure
            .as_ref()
            .map(|f| f.reason.as_str())
            .unwrap_or("other");
        a.push(kv("error.type", str_value(reason)));
        if let Some(f) = &r.failure {
            a.push(kv("hostscope.tls.failure.detail", str_value(&f.detail)));
            a.push(kv(
                "hostscope.tls.failure.source",
                str_value(failure_source(f.source)),
            ));
        }
        if let Some(n) = &r.server_name {
            a.push(kv("server.address", str_value(n)));
        }
        if let Some(rem) = r.remote {
            a.push(kv("network.peer.address", str_value(rem.ip().to_string())));
            a.push(kv("network.peer.port", int_value(rem.port() as i64)));
        }
        if let Some(v) = &r.version {
            a.push(kv("tls.protocol.version", str_value(tls_version(v))));
        }
        if let Some(pid) = r.pid {
            a.push(kv("process.pid", int_value(pid as i64)));
        }
        if let Some(comm) = &r.comm {
            a.push(kv("process.executable.name", str_value(comm)));
        }
        let peer = r
            .remote
            .map(|r| r.to_string())
            .unwrap_or_else(|| "?".into());
        let body = format!("TLS handshake with {peer} failed: {reason}");
        Some(LogEntry {
            time_unix_ns: r.timestamp_unix_ns,
            severity: SeverityNumber::Warn,
            event: "hostscope.tls.handshake_failed",
            body,
            attributes: a,
        })
    }

    fn failure_log(&self) -> bool {
        self.outcome == Outcome::Failure
    }
}

impl Traced for TlsRecord {
    /// Every handshake (`tls.handshake`; error status when it failed).
    fn span(&self) -> Option<Span> {
        Some(tls_span(self))
    }
}

fn tls_span(r: &TlsRecord) -> Span {
    let (trace_id, span_id) = ids();
    let mut attrs: Vec<KeyValue> = Vec::new();
    if let Some(name) = &r.server_name {
        attrs.push(kv("server.address", str_value(name)));
        attrs.push(kv("tls.client.server_name", str_value(name)));
    } else if let Some(name) = &r.remote_name {
        attrs.push(kv("server.address", str_value(name)));
    }
    if let Some(rem) = r.remote {
        attrs.push(kv("network.peer.address", str_value(rem.ip().to_string())));
        attrs.push(kv("network.peer.port", int_value(rem.port() as i64)));
    }
    let server_port = match (r.role, r.local, r.remote) {
        (Some(Role::Server), Some(l), _) => Some(l.port()),
        (_, _, Some(rem)) => Some(rem.port()),
        _ => None,
    };
    if let Some(p) = server_port {
        attrs.push(kv("server.port", int_value(p as i64)));
    }
    attrs.push(kv("network.transport", str_value("tcp")));
    if let Some(v) = &r.version {
        attrs.push(kv("tls.protocol.name", str_value("tls")));
        attrs.push(kv("tls.protocol.version", str_value(tls_version(v))));
    }
    if let Some(c) = &r.cipher {
        attrs.push(kv("tls.cipher", str_value(c)));
    }
    if let Some(a) = &r.alpn {
        attrs.push(kv("tls.next_protocol", str_value(a)));
    }
    if let Some(s) = &r.cert_subject {
        attrs.push(kv("tls.server.subject", str_value(s)));
    }
    if let Some(t) = r.cert_not_after_unix {
        attrs.push(kv("hostscope.tls.server.not_after_unix", int_value(t)));
    }
    if let Some(comm) = &r.comm {
        attrs.push(kv("process.executable.name", str_value(comm)));
    }
    if let Some(id) = r.conn_id {
        attrs.push(kv("hostscope.tcp.conn_id", int_value(id as i64)));
    }
    attrs.push(kv("hostscope.tls.sources", str_value(r.sources.join(","))));
    let status = match (&r.outcome, &r.failure) {
        (Outcome::Failure, Some(f)) => {
            attrs.push(kv("error.type", str_value(f.reason.as_str())));
            attrs.push(kv(
                "hostscope.tls.failure.source",
                str_value(failure_source(f.source)),
            ));
            attrs.push(kv("hostscope.tls.failure.detail", str_value(&f.detail)));
            Status {
                code: StatusCode::Error as i32,
                message: format!("{}: {}", f.reason.as_str(), f.detail),
            }
        }
        (Outcome::Failure, None) => Status {
            code: StatusCode::Error as i32,
            message: "handshake failed".into(),
        },
        (Outcome::Success, _) => Status::default(),
    };
    Span {
        trace_id,
        span_id,
        name: "tls.handshake".into(),
        kind: match r.role {
            Some(Role::Client) => SpanKind::Client,
            Some(Role::Server) => SpanKind::Server,
            None => SpanKind::Internal,
        } as i32,
        start_time_unix_nano: start_of(r.timestamp_unix_ns, r.duration_us),
        end_time_unix_nano: r.timestamp_unix_ns,
        attributes: attrs,
        status: Some(status),
        ..Default::default()
    }
}

impl Classify for TlsRecord {
    /// A handshake that failed us; a client's failed handshake with us (server role) has
    /// a new ephemeral port each time: not a target that failures can be folded on.
    fn classify(&self, cert: Option<&KnownCertificate>) -> Option<Classified> {
        if self.outcome != Outcome::Failure || self.role == Some(Role::Server) {
            return None;
        }
        classify_failure(self, cert)
    }

    fn successes(&self, out: &mut Vec<Success>) {
        if self.outcome != Outcome::Success || self.role == Some(Role::Server) {
            return;
        }
        if let Some(remote) = self.remote {
            out.push(Success {
                recovery: HANDSHAKE,
                target: Target::Address(remote),
                comm: self.comm.clone(),
                seen_unix_ns: self.timestamp_unix_ns,
            });
        }
    }
}

fn classify_failure(r: &TlsRecord, cert: Option<&KnownCertificate>) -> Option<Classified> {
    let (reason, detail) = match &r.failure {
        Some(f) => (f.reason, f.detail.as_str()),
        None => (TlsReason::Other, "no reason known"),
    };
    let name = r
        .server_name
        .clone()
        .or_else(|| r.remote.map(|a| a.to_string()))
        .unwrap_or_else(|| "the server".to_string());
    let failed = "TLS handshake failed —";
    let (cause, sentence) = match reason {
        TlsReason::CertificateExpired => {
            let not_after = r
                .cert_not_after_unix
                .or(cert.map(|c| c.not_after_unix));
            let when = match not_after {
                Some(t) => {
                    let ago = (r.timestamp_unix_ns / 1_000_000_000) as i64 - t;
                    format!("expired {} ago", crate::rca::record::human_duration(ago.max(0) as u64 * 1_000_000_000))
                }
                None => "has expired".to_string(),
            };
            (&CERTIFICATE_EXPIRED, format!("{failed} certificate for {name} {when} ({detail})"))
        }
        TlsReason::CertificateNotYetValid => (
            &CERTIFICATE_NOT_YET_VALID,
            format!("{failed} certificate for {name} is not valid yet ({detail}): check the clocks"),
        ),
        TlsReason::UnknownCa => (
            &UNKNOWN_CA,
            format!("{failed} the certificate for {name} is signed by a CA the client does not trust ({detail})"),
        ),
        TlsReason::HostnameMismatch => (
            &HOSTNAME_MISMATCH,
            format!("{failed} the certificate presented does not name {name} ({detail})"),
        ),
        TlsReason::ProtocolVersion => {
            let offered = if r.offered_versions.is_empty() {
                String::new()
            } else {
                format!(", the client offered {}", r.offered_versions.join(", "))
            };
            (
                &PROTOCOL_VERSION,
                format!("{failed} client and server share no TLS version{offered} ({detail})"),
            )
        }
        TlsReason::BadCertificate
        | TlsReason::UnsupportedCertificate
        | TlsReason::CertificateRevoked
        | TlsReason::CertificateUnknown
        | TlsReason::CertificateRequired => (
            &CERTIFICATE_REJECTED,
            format!("{failed} a certificate was rejected: {} ({detail})", reason.as_str()),
        ),
        TlsReason::HandshakeFailure
        | TlsReason::InsufficientSecurity
        | TlsReason::UnrecognizedName
        | TlsReason::NoApplicationProtocol
        | TlsReason::IllegalParameter => (
            &NO_COMMON_PARAMETERS,
            format!("{failed} the peers found no parameters both accept: {} ({detail})", reason.as_str()),
        ),
        TlsReason::PeerClosed => (
            &PEER_CLOSED,
            format!("{failed} {name} closed the connection during the handshake"),
        ),
        TlsReason::NotTls => (
            &NOT_TLS,
            format!("{failed} the peer does not speak TLS on that port"),
        ),
        TlsReason::Stalled => (
            &STALLED,
            "TLS handshake stalled — no progress for too long".to_string(),
        ),
        // This side gave up without an alert: nothing failed on the path.
        TlsReason::Aborted => return None,
        TlsReason::DecodeError
        | TlsReason::DecryptError
        | TlsReason::InternalError
        | TlsReason::AccessDenied
        | TlsReason::UserCanceled
        | TlsReason::EncryptedAlert
        | TlsReason::Other => (
            &ERROR,
            format!("{failed} {} ({detail})", reason.as_str()),
        ),
    };
    let target = match (r.remote, &r.server_name) {
        (Some(a), _) => Target::Address(a),
        (None, Some(n)) => Target::Name(n.clone()),
        (None, None) => Target::Name("unknown server".to_string()),
    };
    Some(Classified {
        cause,
        sentence,
        target,
        weight: 1,
        conn_id: r.conn_id,
        comm: r.comm.clone(),
        seen_unix_ns: r.timestamp_unix_ns,
        over_ns: 0,
    })
}

impl Filtered for TlsRecord {
    fn is_failure(&self) -> bool {
        self.outcome == Outcome::Failure
    }

    fn reasons(&self) -> Vec<&str> {
        self.failure.iter().map(|f| f.reason.as_str()).collect()
    }
}

impl RecordView for TlsCertificateRecord {
    fn about(&self) -> About {
        About {
            kind: "tls_certificate",
            time_unix_ns: self.timestamp_unix_ns,
            ..Default::default()
        }
    }

    fn heap_bytes(&self) -> usize {
        self.server_name.capacity() + self.subject.capacity() + self.issuer.capacity()
    }

    fn peer(&self) -> Option<std::net::SocketAddr> {
        Some(self.server)
    }
}

impl Measure for TlsCertificateRecord {
    fn measure(&self, meter: &mut Meter<'_>) {
        count_down_certificate(
            meter,
            &self.server_name,
            Some(&self.subject),
            self.not_after_unix,
        );
    }
}

impl Logged for TlsCertificateRecord {}
impl Traced for TlsCertificateRecord {}
impl Filtered for TlsCertificateRecord {}

impl Classify for TlsCertificateRecord {
    /// What later TLS 1.3 handshakes with this server cannot show: the certificate
    /// travels encrypted there.
    fn certificate(&self) -> Option<(std::net::SocketAddr, KnownCertificate)> {
        Some((
            self.server,
            KnownCertificate {
                not_after_unix: self.not_after_unix,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{tls::TlsFailure, Record},
        rca::classify::classify,
    };

    fn tls_failed(reason: TlsReason, detail: &str) -> TlsRecord {
        TlsRecord {
            outcome: Outcome::Failure,
            timestamp_unix_ns: 1_700_000_000_000_000_000,
            role: Some(Role::Client),
            local: None,
            remote: Some("10.0.3.7:443".parse().unwrap()),
            remote_name: None,
            conn_id: Some(9),
            pid: Some(42),
            comm: Some("curl".into()),
            cgroup_id: None,
            server_name: Some("api.x".into()),
            offered_versions: Vec::new(),
            version: None,
            cipher: None,
            alpn_offered: Vec::new(),
            alpn: None,
            duration_us: None,
            failure: Some(TlsFailure {
                reason,
                source: FailureSource::X509Verify,
                detail: detail.into(),
                alert: None,
                verify_error: None,
            }),
            cert_subject: None,
            cert_not_after_unix: None,
            cert_expires_in_s: None,
            sources: vec!["openssl"],
        }
    }

    #[test]
    fn expired_certificate_says_how_long_ago() {
        let mut r = tls_failed(TlsReason::CertificateExpired, "X509_V_ERR_CERT_HAS_EXPIRED");
        let now_s = (r.timestamp_unix_ns / 1_000_000_000) as i64;
        let c = classify(&Record::Tls(r.clone()), None).unwrap();
        assert_eq!(c.cause.code, "tls_certificate_expired");
        assert_eq!(
            c.sentence,
            "TLS handshake failed — certificate for api.x has expired (X509_V_ERR_CERT_HAS_EXPIRED)"
        );
        let known = KnownCertificate {
            not_after_unix: now_s - 3 * 86_400,
        };
        let c = classify(&Record::Tls(r.clone()), Some(&known)).unwrap();
        assert!(
            c.sentence
                .contains("certificate for api.x expired 3 days ago (X509_V_ERR_CERT_HAS_EXPIRED)"),
            "{}",
            c.sentence
        );
        r.cert_not_after_unix = Some(now_s - 4 * 86_400);
        let c = classify(&Record::Tls(r), Some(&known)).unwrap();
        assert!(
            c.sentence.contains("expired 4 days ago"),
            "the record's own certificate first"
        );
    }

    #[test]
    fn tls_reasons_map_to_causes() {
        for (reason, code) in [
            (TlsReason::UnknownCa, "tls_unknown_ca"),
            (TlsReason::HostnameMismatch, "tls_hostname_mismatch"),
            (TlsReason::ProtocolVersion, "tls_protocol_version"),
            (TlsReason::HandshakeFailure, "tls_no_common_parameters"),
            (TlsReason::EncryptedAlert, "tls_error"),
        ] {
            let c = classify(&Record::Tls(tls_failed(reason, "x")), None).unwrap();
            assert_eq!(c.cause.code, code);
        }
        assert!(classify(&Record::Tls(tls_failed(TlsReason::Aborted, "x")), None).is_none());
    }
}
