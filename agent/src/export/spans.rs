//! Records -> OTLP spans: one span per TLS handshake (error status and reason when it
//! failed) and one per failed TCP connect. Records carry no trace context, so each span
//! is the root of its own trace; the process/pod identity goes on the resource.

use opentelemetry_proto::tonic::{
    common::v1::KeyValue,
    trace::v1::{span::SpanKind, status::StatusCode, Span, Status},
};

use super::resource::{int_value, kv, network_type_kv, str_value, tcp_endpoint_kvs};
use crate::events::{
    tcp::{TcpEventKind, TcpRecord},
    tls::{Outcome, Role, TlsRecord},
    Record,
};

pub fn span(record: &Record) -> Option<Span> {
    match record {
        Record::Tls(r) => Some(tls_span(r)),
        Record::Tcp(r) if r.event == TcpEventKind::ConnectFailed => Some(connect_failed_span(r)),
        _ => None,
    }
}

pub(super) fn ids() -> (Vec<u8>, Vec<u8>) {
    let trace: [u8; 16] = rand::random();
    let mut span: [u8; 8] = rand::random();
    // An all-zero id is invalid in OTLP.
    span[0] |= 1;
    (trace.to_vec(), span.to_vec())
}

fn start_of(end_ns: u64, duration_us: Option<f64>) -> u64 {
    let d = duration_us.unwrap_or(0.0).max(0.0) * 1_000.0;
    end_ns.saturating_sub(d as u64)
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
        attrs.push(kv(
            "tls.protocol.version",
            str_value(super::metrics::tls_version(v)),
        ));
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
                str_value(super::metrics::failure_source(f.source)),
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

fn connect_failed_span(r: &TcpRecord) -> Span {
    let (trace_id, span_id) = ids();
    let mut attrs = tcp_endpoint_kvs(r);
    attrs.extend([
        network_type_kv(r),
        // The name the process looked the server up as, when the DNS family saw it.
        kv(
            "server.address",
            str_value(
                r.remote_name
                    .clone()
                    .unwrap_or_else(|| r.remote.ip().to_string()),
            ),
        ),
        kv("server.port", int_value(r.remote.port() as i64)),
        kv(
            "hostscope.tcp.syn_retransmits",
            int_value(r.syn_retransmits as i64),
        ),
    ]);
    if let Some(comm) = &r.comm {
        attrs.push(kv("process.executable.name", str_value(comm)));
    }
    let message = match &r.failure {
        Some(f) => {
            let reason = super::metrics::reason_str(f.reason);
            attrs.push(kv("error.type", str_value(reason)));
            if !f.errno_name.is_empty() {
                attrs.push(kv("hostscope.errno", str_value(f.errno_name)));
            }
            format!("connect {reason} ({})", f.errno_name)
        }
        None => "connect failed".into(),
    };
    Span {
        trace_id,
        span_id,
        name: "tcp.connect".into(),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: start_of(r.timestamp_unix_ns, r.duration_us),
        end_time_unix_nano: r.timestamp_unix_ns,
        attributes: attrs,
        status: Some(Status {
            code: StatusCode::Error as i32,
            message,
        }),
        ..Default::default()
    }
}
