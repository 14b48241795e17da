//! TLS records: raw wire and OpenSSL events decoded from the rings
//! (probes/src/tls/{wire,openssl}.rs), and the handshake records the tracker
//! (`crate::tls::tracker`) builds from them.

use std::net::SocketAddr;

use hostscope_common::tls::*;
use serde::Serialize;

use super::{comm_string, format_time_of_day, DecodeError};
use crate::tls::reason::FailureReason;

/// A wire event, with endpoints from the socket's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireEvent {
    pub ts_ns: u64,
    pub cookie: u64,
    pub kind: u32,
    pub seq: u32,
    pub egress: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub truncated: bool,
    pub data: Vec<u8>,
}

pub fn decode_wire(bytes: &[u8]) -> Result<WireEvent, DecodeError> {
    let ev: TlsWireEvent = super::read_record(bytes, "tls")?;
    if !matches!(ev.kind, WIRE_RECORDS | WIRE_APP_DATA_HEADER | WIRE_NOT_TLS) {
        return Err(DecodeError::Kind {
            family: "tls",
            kind: ev.kind,
        });
    }
    let src = SocketAddr::new(super::ip_of(ev.family, &ev.saddr), ev.sport);
    let dst = SocketAddr::new(super::ip_of(ev.family, &ev.daddr), ev.dport);
    let egress = ev.direction == DIR_EGRESS;
    let (local, remote) = if egress { (src, dst) } else { (dst, src) };
    let len = (ev.len as usize).min(TLS_CAPTURE_MAX);
    Ok(WireEvent {
        ts_ns: ev.ts_ns,
        cookie: ev.cookie,
        kind: ev.kind,
        seq: ev.seq,
        egress,
        local,
        remote,
        truncated: ev.truncated != 0,
        data: ev.data[..len].to_vec(),
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibEvent {
    pub ts_ns: u64,
    pub start_ns: u64,
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub verify_error: u32,
    pub ret: i32,
}

pub fn decode_lib(bytes: &[u8]) -> Result<LibEvent, DecodeError> {
    let ev: TlsLibEvent = super::read_record(bytes, "tls")?;
    if !matches!(
        ev.kind,
        LIB_HANDSHAKE_DONE | LIB_HANDSHAKE_FAILED | LIB_HANDSHAKE_ABANDONED | LIB_VERIFY_ERROR
    ) {
        return Err(DecodeError::Kind {
            family: "tls",
            kind: ev.kind,
        });
    }
    Ok(LibEvent {
        ts_ns: ev.ts_ns,
        start_ns: ev.start_ns,
        kind: ev.kind,
        pid: ev.pid,
        tid: ev.tid,
        comm: comm_string(&ev.comm),
        cgroup_id: ev.cgroup_id,
        verify_error: ev.verify_error,
        ret: ev.ret,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

/// Where the failure reason was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureSource {
    /// This side sent an alert.
    AlertSent,
    /// The peer sent an alert.
    AlertReceived,
    /// OpenSSL's certificate verification (uprobes).
    X509Verify,
    /// The TCP connection ended, or the peer did not speak TLS.
    Connection,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsFailure {
    pub reason: FailureReason,
    pub source: FailureSource,
    /// The alert or verification code's own name (`certificate_expired`,
    /// `X509_V_ERR_CERT_HAS_EXPIRED`, …).
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_error: Option<u32>,
}

/// One TLS handshake as users see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TlsRecord {
    pub outcome: Outcome,
    pub timestamp_unix_ns: u64,
    /// None when only OpenSSL saw the handshake (no matching wire flow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
    /// The name the process looked `remote` up as (`crate::dns::names`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Versions the client offered (highest first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub offered_versions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn_offered: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn: Option<String>,
    /// ClientHello → handshake complete, or → failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<TlsFailure>,
    /// The server certificate, when it travelled in clear (TLS ≤ 1.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_not_after_unix: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_expires_in_s: Option<i64>,
    /// Which sources contributed: `wire`, `openssl`.
    pub sources: Vec<&'static str>,
}

/// A server certificate's validity, per server name, when first seen or when it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsCertificateRecord {
    pub timestamp_unix_ns: u64,
    pub server_name: String,
    pub server: SocketAddr,
    pub subject: String,
    pub issuer: String,
    pub not_after_unix: i64,
    /// Negative once expired.
    pub expires_in_s: i64,
}

fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

impl std::fmt::Display for TlsRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match (&self.pid, &self.comm) {
            (Some(pid), Some(comm)) => format!("{comm}[{pid}]"),
            _ => "?".to_string(),
        };
        let peer = match (&self.role, &self.remote) {
            (Some(Role::Client), Some(r)) => format!("to {r}"),
            (Some(Role::Server), Some(r)) => format!("from {r}"),
            _ => "(no wire view)".to_string(),
        };
        let name = self
            .server_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        write!(
            f,
            "{} tls {:<14} {who} {peer}{name}",
            format_time_of_day(self.timestamp_unix_ns),
            match self.outcome {
                Outcome::Success => "handshake",
                Outcome::Failure => "HANDSHAKE FAILED",
            }
        )?;
        if let Some(fail) = &self.failure {
            write!(f, ": {} ({}", fail.reason.as_str(), fail.detail)?;
            match fail.source {
                FailureSource::AlertSent => write!(f, ", alert sent")?,
                FailureSource::AlertReceived => write!(f, ", alert received")?,
                FailureSource::X509Verify => write!(f, ", certificate verification")?,
                FailureSource::Connection => {}
            }
            write!(f, ")")?;
        }
        if let Some(v) = &self.version {
            write!(f, " {v}")?;
        }
        if let Some(c) = &self.cipher {
            write!(f, " {c}")?;
        }
        if let Some(a) = &self.alpn {
            write!(f, " alpn {a}")?;
        }
        if let Some(d) = self.duration_us {
            write!(f, " in {}", ms(d))?;
        }
        if let Some(e) = self.cert_expires_in_s {
            if e < 0 {
                write!(f, ", certificate expired {} days ago", -e / 86_400)?;
            } else {
                write!(f, ", certificate expires in {} days", e / 86_400)?;
            }
        }
        if let Some(c) = self.conn_id {
            write!(f, " [conn {c:#x}]")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for TlsCertificateRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tls certificate    {} at {}: {} (issuer {}) {}",
            format_time_of_day(self.timestamp_unix_ns),
            self.server_name,
            self.server,
            self.subject,
            self.issuer,
            if self.expires_in_s < 0 {
                format!("EXPIRED {} days ago", -self.expires_in_s / 86_400)
            } else {
                format!("expires in {} days", self.expires_in_s / 86_400)
            }
        )
    }
}
