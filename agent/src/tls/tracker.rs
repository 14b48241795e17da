//! Joins the TLS sources into one record per handshake: wire events (per socket cookie)
//! give the parameters, the timing and cleartext alerts; OpenSSL events give the
//! verification error that TLS 1.3 hides; TCP records give the owner, the connection id
//! and the end of connections that close mid-handshake.
//!
//! Deterministic and clock-free (callers pass CLOCK_MONOTONIC `now`), so it is tested
//! without a kernel.

use std::{collections::HashMap, net::SocketAddr};

use hostscope_common::tls::{
    LIB_HANDSHAKE_DONE, LIB_HANDSHAKE_FAILED, LIB_VERIFY_ERROR, WIRE_APP_DATA_HEADER, WIRE_NOT_TLS,
    WIRE_RECORDS,
};

use super::{
    parser::{self, CertificateInfo, ClientHello, HandshakeReader, RecordReader, ServerHello},
    reason::{self, FailureReason},
};
use crate::events::{
    tcp::{TcpEventKind, TcpRecord},
    tls::*,
    Clock, Record,
};

/// How long a failure waits for the other sources (OpenSSL's reason, late wire events
/// from another ring) before it is reported.
pub const GRACE_NS: u64 = 300_000_000;
/// How long a success waits for the TCP record that names its owner.
pub const SETTLE_NS: u64 = 100_000_000;
/// A handshake without progress for this long is reported as stalled.
pub const STALL_NS: u64 = 30_000_000_000;
/// TLS 1.3 alert encrypted without padding: 2 bytes + content type + 16-byte AEAD tag.
const ENCRYPTED_ALERT_LEN: usize = 19;

#[derive(Clone, Debug, Default)]
struct Owner {
    conn_id: Option<u64>,
    pid: Option<u32>,
    comm: Option<String>,
    cgroup_id: Option<u64>,
    /// What the TCP record named the peer (the process's lookup of it).
    remote_name: Option<String>,
}

/// What the TCP records said about a 4-tuple. Kept for `TCP_MEMORY_NS` after the close,
/// because the rings are read by different tasks: a TLS event may be handled after the
/// TCP record of the same connection's close.
#[derive(Clone, Debug, Default)]
struct TcpView {
    owner: Owner,
    closed: Option<(u64, FailureReason)>,
}

const TCP_MEMORY_NS: u64 = 5_000_000_000;
/// How often closed TCP views are pruned. Pruning walks the whole map, which holds every
/// connection of the last few seconds (40k+ during a connect storm): once a second costs
/// a tenth of doing it at every 100 ms tick, and a view outlives its memory by at most this.
const TCP_PRUNE_EVERY_NS: u64 = 1_000_000_000;

#[derive(Debug)]
struct Flow {
    role: Role,
    local: SocketAddr,
    remote: SocketAddr,
    start_ns: u64,
    last_ns: u64,
    readers: [RecordReader; 2],
    handshake: [HandshakeReader; 2],
    ccs: [bool; 2],
    client_hello: Option<ClientHello>,
    server_hello: Option<ServerHello>,
    cert: Option<CertificateInfo>,
    outcome: Option<(Outcome, Option<TlsFailure>, u64)>,
    /// TCP ended before an outcome: (when, reason), decided after the grace period.
    closed: Option<(u64, FailureReason)>,
    lib: Option<LibEvent>,
    /// Certificate verification error OpenSSL reported for this handshake's process.
    verify_error: Option<u32>,
    owner: Owner,
}

impl Flow {
    fn dir_index(egress: bool) -> usize {
        if egress {
            0
        } else {
            1
        }
    }
    /// Index of the direction the client sends in.
    fn client_index(&self) -> usize {
        Self::dir_index(self.role == Role::Client)
    }
}

/// Counters the tracker keeps about what it could not use.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrackerStats {
    pub handshakes: u64,
    pub failures: u64,
    pub stream_gaps: u64,
    pub not_tls_bytes: u64,
    pub truncated_captures: u64,
    pub lib_events_unmatched: u64,
}

/// What one step produced.
#[derive(Debug, Default)]
pub struct Output {
    pub records: Vec<Record>,
    /// Failures to remember in the pinned failure map.
    pub failures: Vec<TlsRecord>,
    /// Socket cookies whose kernel-side flow can be forgotten.
    pub forget: Vec<u64>,
}

pub struct Tracker {
    clock: Clock,
    flows: HashMap<u64, Flow>,
    /// Every TCP connection of the last `TCP_MEMORY_NS`: touched once per TCP record.
    tcp: HashMap<(SocketAddr, SocketAddr), TcpView, foldhash::fast::RandomState>,
    tcp_pruned_ns: u64,
    lib_pending: Vec<LibEvent>,
    certs: HashMap<String, i64>,
    pub stats: TrackerStats,
}

impl Tracker {
    pub fn new(clock: Clock) -> Tracker {
        Tracker {
            clock,
            flows: HashMap::new(),
            tcp: HashMap::default(),
            tcp_pruned_ns: 0,
            lib_pending: Vec::new(),
            certs: HashMap::new(),
            stats: TrackerStats::default(),
        }
    }

    pub fn on_wire(&mut self, ev: WireEvent, out: &mut Output) {
        if ev.truncated {
            self.stats.truncated_captures += 1;
        }
        if !self.flows.contains_key(&ev.cookie) {
            // Only a ClientHello opens a flow (the probe starts there too); later events
            // of a flow already reported are ignored.
            let client_hello = ev.kind == WIRE_RECORDS
                && ev.data.first() == Some(&parser::CONTENT_HANDSHAKE)
                && ev.data.get(5) == Some(&parser::HS_CLIENT_HELLO);
            if !client_hello {
                return;
            }
            let view = self
                .tcp
                .get(&(ev.local, ev.remote))
                .cloned()
                .unwrap_or_default();
            self.flows.insert(
                ev.cookie,
                Flow {
                    role: if ev.egress {
                        Role::Client
                    } else {
                        Role::Server
                    },
                    local: ev.local,
                    remote: ev.remote,
                    start_ns: ev.ts_ns,
                    last_ns: ev.ts_ns,
                    readers: Default::default(),
                    handshake: Default::default(),
                    ccs: [false; 2],
                    client_hello: None,
                    server_hello: None,
                    cert: None,
                    outcome: None,
                    closed: view.closed,
                    lib: None,
                    verify_error: None,
                    owner: view.owner,
                },
            );
        }
        let Some(flow) = self.flows.get_mut(&ev.cookie) else {
            return;
        };
        flow.last_ns = ev.ts_ns;
        let di = Flow::dir_index(ev.egress);
        let from_client = di == flow.client_index();
        match ev.kind {
            WIRE_RECORDS => {
                let mut records = Vec::new();
                match flow.readers[di].push(ev.seq, &ev.data, &mut records) {
                    Ok(()) => {}
                    Err(parser::WireError::Gap) => self.stats.stream_gaps += 1,
                    Err(parser::WireError::NotTls) => {
                        self.stats.not_tls_bytes += 1;
                        if !from_client && flow.server_hello.is_none() {
                            decide_not_tls(flow, ev.ts_ns);
                        }
                    }
                }
                for rec in records {
                    on_record(
                        flow,
                        &mut self.certs,
                        di,
                        from_client,
                        rec,
                        ev.ts_ns,
                        &self.clock,
                        out,
                    );
                }
            }
            WIRE_APP_DATA_HEADER => {
                let len = ev
                    .data
                    .get(3..5)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                    .unwrap_or(0);
                let tls13 = flow
                    .server_hello
                    .as_ref()
                    .is_some_and(|sh| sh.version == parser::TLS1_3);
                if flow.outcome.is_none() && flow.server_hello.is_some() {
                    if from_client && tls13 && len == ENCRYPTED_ALERT_LEN {
                        decide_failure(
                            flow,
                            ev.ts_ns,
                            FailureReason::EncryptedAlert,
                            FailureSource::AlertSent,
                            "encrypted alert from the client".into(),
                            None,
                        );
                    } else if !from_client
                        && tls13
                        && len == ENCRYPTED_ALERT_LEN
                        && flow.readers_quiet_client()
                    {
                        // A server alert right after its flight: it rejected us.
                        decide_failure(
                            flow,
                            ev.ts_ns,
                            FailureReason::EncryptedAlert,
                            FailureSource::AlertReceived,
                            "encrypted alert from the server".into(),
                            None,
                        );
                    } else if from_client || !tls13 {
                        flow.outcome = Some((Outcome::Success, None, ev.ts_ns));
                    }
                }
            }
            WIRE_NOT_TLS => {
                self.stats.not_tls_bytes += 1;
                decide_not_tls(flow, ev.ts_ns);
            }
            _ => {}
        }
        self.try_match_lib();
        self.flush(ev.ts_ns, out);
    }

    pub fn on_lib(&mut self, ev: LibEvent, now: u64, out: &mut Output) {
        self.lib_pending.push(ev);
        self.try_match_lib();
        self.flush(now, out);
    }

    pub fn on_tcp(&mut self, r: &TcpRecord, now: u64, out: &mut Output) {
        let key = (r.local, r.remote);
        // Made only where it is kept (the thread name is a copy).
        let owner = || Owner {
            conn_id: Some(r.conn_id),
            pid: r.pid,
            comm: r.comm.clone(),
            cgroup_id: r.cgroup_id,
            remote_name: r.remote_name.clone(),
        };
        let ended = matches!(
            r.event,
            TcpEventKind::Close | TcpEventKind::ConnectFailed | TcpEventKind::ResetReceived
        );
        let closed = ended.then(|| {
            let by_peer = r.event == TcpEventKind::ResetReceived
                || matches!(r.previous_state, "CLOSE_WAIT" | "LAST_ACK")
                || r.resets_received > 0;
            let reason = if by_peer {
                FailureReason::PeerClosed
            } else {
                FailureReason::Aborted
            };
            (now, reason)
        });
        for flow in self.flows.values_mut() {
            if flow.local == r.local && flow.remote == r.remote {
                if flow.owner.conn_id.is_none() || flow.owner.pid.is_none() {
                    flow.owner = owner();
                }
                if flow.outcome.is_none() && flow.closed.is_none() {
                    flow.closed = closed;
                }
            }
        }
        // A connect that failed never carried a byte, so no handshake can follow it: it
        // is not remembered (a refused-connect storm would fill the map for nothing), and
        // only a view of the same 4-tuple already there learns of it.
        let view = if r.event == TcpEventKind::ConnectFailed {
            self.tcp.get_mut(&key)
        } else {
            Some(self.tcp.entry(key).or_default())
        };
        if let Some(view) = view {
            if view.owner.pid.is_none() || view.owner.conn_id != Some(r.conn_id) {
                view.owner = owner();
            }
            if view.closed.is_none() {
                view.closed = closed;
            }
        }
        self.flush(now, out);
    }

    /// Periodic: reports failures whose grace period ended and stalled handshakes.
    pub fn tick(&mut self, now: u64, out: &mut Output) {
        self.try_match_lib();
        // Library events nobody claimed: report failures on their own.
        let mut keep = Vec::new();
        for ev in std::mem::take(&mut self.lib_pending) {
            if now.saturating_sub(ev.ts_ns) < GRACE_NS {
                keep.push(ev);
            } else if ev.kind == LIB_HANDSHAKE_DONE
                || ev.kind == LIB_VERIFY_ERROR
                || ev.verify_error == 0
            {
                // Nothing precise to add (an SSL freed mid-way may well have succeeded:
                // `openssl s_client` handshakes inside a zero-length SSL_write).
                self.stats.lib_events_unmatched += 1;
            } else {
                let rec = lib_only_record(&ev, &self.clock);
                self.stats.failures += 1;
                out.failures.push(rec.clone());
                out.records.push(Record::Tls(rec));
            }
        }
        self.lib_pending = keep;
        if now.saturating_sub(self.tcp_pruned_ns) >= TCP_PRUNE_EVERY_NS {
            self.tcp_pruned_ns = now;
            self.tcp.retain(|_, v| {
                v.closed
                    .is_none_or(|(at, _)| now.saturating_sub(at) < TCP_MEMORY_NS)
            });
        }
        for flow in self.flows.values_mut() {
            if flow.outcome.is_none() {
                if let Some((at, reason)) = flow.closed {
                    if now.saturating_sub(at) >= GRACE_NS {
                        let detail = match reason {
                            FailureReason::PeerClosed => "the peer closed the connection",
                            _ => "the connection was closed by this side",
                        };
                        decide_failure(
                            flow,
                            at,
                            reason,
                            FailureSource::Connection,
                            detail.into(),
                            None,
                        );
                    }
                } else if now.saturating_sub(flow.last_ns) >= STALL_NS {
                    decide_failure(
                        flow,
                        now,
                        FailureReason::Stalled,
                        FailureSource::Connection,
                        "no handshake progress".into(),
                        None,
                    );
                }
            }
        }
        self.flush(now, out);
    }

    /// Attaches pending OpenSSL events to the flow of the same process.
    fn try_match_lib(&mut self) {
        let mut unmatched = Vec::new();
        for ev in std::mem::take(&mut self.lib_pending) {
            let best = self
                .flows
                .iter_mut()
                .filter(|(_, f)| f.owner.pid == Some(ev.pid))
                .filter(|(_, f)| f.start_ns <= ev.ts_ns)
                .max_by_key(|(_, f)| f.start_ns)
                .map(|(c, _)| *c);
            match best {
                Some(cookie) => {
                    if let Some(flow) = self.flows.get_mut(&cookie) {
                        apply_lib(flow, ev);
                    }
                }
                None => unmatched.push(ev),
            }
        }
        self.lib_pending = unmatched;
    }

    /// Emits decided flows: successes at once, failures after the grace period.
    fn flush(&mut self, now: u64, out: &mut Output) {
        let ready: Vec<u64> = self
            .flows
            .iter()
            .filter(|(_, f)| match &f.outcome {
                Some((Outcome::Success, _, at)) => {
                    f.owner.conn_id.is_some() && now.saturating_sub(*at) >= SETTLE_NS
                        || now.saturating_sub(*at) >= GRACE_NS
                }
                Some((Outcome::Failure, _, at)) => now.saturating_sub(*at) >= GRACE_NS,
                None => false,
            })
            .map(|(c, _)| *c)
            .collect();
        for cookie in ready {
            if let Some(flow) = self.flows.remove(&cookie) {
                let rec = flow_record(&flow, &self.clock);
                self.stats.handshakes += 1;
                if rec.outcome == Outcome::Failure {
                    self.stats.failures += 1;
                    out.failures.push(rec.clone());
                }
                out.records.push(Record::Tls(rec));
                out.forget.push(cookie);
            }
        }
    }

    pub fn open_flows(&self) -> usize {
        self.flows.len()
    }
}

impl Flow {
    /// True while the client has sent nothing encrypted (no CCS either).
    fn readers_quiet_client(&self) -> bool {
        !self.ccs[self.client_index()]
    }
}

fn decide_failure(
    flow: &mut Flow,
    at: u64,
    reason: FailureReason,
    source: FailureSource,
    detail: String,
    alert: Option<u8>,
) {
    if flow.outcome.is_some() {
        return;
    }
    flow.outcome = Some((
        Outcome::Failure,
        Some(TlsFailure {
            reason,
            source,
            detail,
            alert,
            verify_error: None,
        }),
        at,
    ));
}

fn decide_not_tls(flow: &mut Flow, at: u64) {
    decide_failure(
        flow,
        at,
        FailureReason::NotTls,
        FailureSource::Connection,
        "peer is not speaking TLS".into(),
        None,
    );
}

#[allow(clippy::too_many_arguments)]
fn on_record(
    flow: &mut Flow,
    certs: &mut HashMap<String, i64>,
    di: usize,
    from_client: bool,
    rec: parser::Record,
    ts: u64,
    clock: &Clock,
    out: &mut Output,
) {
    match rec.content_type {
        parser::CONTENT_CHANGE_CIPHER_SPEC => flow.ccs[di] = true,
        parser::CONTENT_ALERT => {
            if flow.outcome.is_some() {
                return;
            }
            let source = if di == 0 {
                FailureSource::AlertSent
            } else {
                FailureSource::AlertReceived
            };
            match parser::parse_alert(&rec.payload) {
                Some((level, desc)) if level == 2 || desc == 0 => {
                    let (reason, name) = reason::from_alert(desc);
                    decide_failure(flow, ts, reason, source, name.into(), Some(desc));
                }
                Some(_) => {}
                None => decide_failure(
                    flow,
                    ts,
                    FailureReason::EncryptedAlert,
                    source,
                    "encrypted alert".into(),
                    None,
                ),
            }
        }
        parser::CONTENT_HANDSHAKE => {
            if flow.ccs[di] {
                // Encrypted Finished (TLS ≤ 1.2): the server's ends the handshake.
                if !from_client && flow.outcome.is_none() {
                    flow.outcome = Some((Outcome::Success, None, ts));
                }
                return;
            }
            let mut msgs = Vec::new();
            flow.handshake[di].push(&rec.payload, &mut msgs);
            for m in msgs {
                match m.msg_type {
                    parser::HS_CLIENT_HELLO if from_client && flow.client_hello.is_none() => {
                        flow.client_hello = parser::parse_client_hello(&m.body);
                    }
                    parser::HS_SERVER_HELLO if !from_client => {
                        if let Some(sh) = parser::parse_server_hello(&m.body) {
                            if !sh.hello_retry_request {
                                flow.server_hello = Some(sh);
                            }
                        }
                    }
                    parser::HS_CERTIFICATE if !from_client && flow.cert.is_none() => {
                        flow.cert = parser::parse_certificate(&m.body);
                        if let Some(cert) = &flow.cert {
                            let server = if flow.role == Role::Client {
                                flow.remote
                            } else {
                                flow.local
                            };
                            let name = flow
                                .client_hello
                                .as_ref()
                                .and_then(|c| c.server_name.clone())
                                .unwrap_or_else(|| server.ip().to_string());
                            if certs.insert(name.clone(), cert.not_after_unix)
                                != Some(cert.not_after_unix)
                            {
                                let now_unix = (clock.unix_ns(ts) / 1_000_000_000) as i64;
                                out.records
                                    .push(Record::TlsCertificate(TlsCertificateRecord {
                                        timestamp_unix_ns: clock.unix_ns(ts),
                                        server_name: name,
                                        server,
                                        subject: cert.subject.clone(),
                                        issuer: cert.issuer.clone(),
                                        not_after_unix: cert.not_after_unix,
                                        expires_in_s: cert.not_after_unix - now_unix,
                                    }));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Folds an OpenSSL event into a flow. A verification error only annotates (the
/// handshake may go on, as with `curl -k`); a failed handshake call decides; the
/// annotation then names the reason of any failure this side decided (alert sent,
/// encrypted alert, abort) more precisely than the wire can.
fn apply_lib(flow: &mut Flow, ev: LibEvent) {
    if ev.verify_error != 0 {
        flow.verify_error = Some(ev.verify_error);
    }
    if ev.kind == LIB_HANDSHAKE_FAILED && flow.outcome.is_none() {
        flow.outcome = Some((Outcome::Failure, None, ev.ts_ns));
    }
    if flow.owner.pid.is_none() {
        flow.owner.pid = Some(ev.pid);
        flow.owner.comm = Some(ev.comm.clone());
        flow.owner.cgroup_id = Some(ev.cgroup_id);
    }
    // Any library event shows OpenSSL took part; the latest is kept.
    flow.lib = Some(ev);
}

/// The failure to report: the wire's, refined by OpenSSL's verification error unless
/// the peer's own alert says why.
fn refined_failure(flow: &Flow, failure: Option<TlsFailure>) -> Option<TlsFailure> {
    let Some(code) = flow.verify_error else {
        return failure;
    };
    if failure
        .as_ref()
        .is_some_and(|f| f.source == FailureSource::AlertReceived)
    {
        return failure;
    }
    let (reason, name) = reason::from_verify_error(code);
    Some(TlsFailure {
        reason,
        source: FailureSource::X509Verify,
        detail: name.into(),
        alert: failure.as_ref().and_then(|f| f.alert),
        verify_error: Some(code),
    })
}

fn flow_record(flow: &Flow, clock: &Clock) -> TlsRecord {
    let (outcome, failure, at) =
        flow.outcome
            .clone()
            .unwrap_or((Outcome::Failure, None, flow.last_ns));
    let failure = if outcome == Outcome::Failure {
        refined_failure(flow, failure).or_else(|| {
            Some(TlsFailure {
                reason: FailureReason::Other,
                source: FailureSource::Connection,
                detail: "OpenSSL reported the handshake failed".into(),
                alert: None,
                verify_error: None,
            })
        })
    } else {
        None
    };
    let ch = flow.client_hello.as_ref();
    let sh = flow.server_hello.as_ref();
    let mut offered: Vec<u16> = ch
        .map(|c| {
            if c.supported_versions.is_empty() {
                vec![c.legacy_version]
            } else {
                c.supported_versions.clone()
            }
        })
        .unwrap_or_default();
    offered.sort_unstable_by(|a, b| b.cmp(a));
    let now_unix = (clock.unix_ns(at) / 1_000_000_000) as i64;
    let mut sources = vec!["wire"];
    if flow.lib.is_some() {
        sources.push("openssl");
    }
    TlsRecord {
        outcome,
        timestamp_unix_ns: clock.unix_ns(at),
        role: Some(flow.role),
        local: Some(flow.local),
        remote: Some(flow.remote),
        remote_name: flow.owner.remote_name.clone(),
        conn_id: flow.owner.conn_id,
        pid: flow.owner.pid,
        comm: flow.owner.comm.clone(),
        cgroup_id: flow.owner.cgroup_id,
        server_name: ch.and_then(|c| c.server_name.clone()),
        offered_versions: offered.into_iter().map(parser::version_name).collect(),
        version: sh.map(|s| parser::version_name(s.version)),
        cipher: sh.map(|s| parser::cipher_name(s.cipher_suite)),
        alpn_offered: ch.map(|c| c.alpn.clone()).unwrap_or_default(),
        alpn: sh.and_then(|s| s.alpn.clone()),
        duration_us: (at >= flow.start_ns).then(|| (at - flow.start_ns) as f64 / 1000.0),
        failure,
        cert_subject: flow.cert.as_ref().map(|c| c.subject.clone()),
        cert_not_after_unix: flow.cert.as_ref().map(|c| c.not_after_unix),
        cert_expires_in_s: flow.cert.as_ref().map(|c| c.not_after_unix - now_unix),
        sources,
    }
}

fn lib_only_record(ev: &LibEvent, clock: &Clock) -> TlsRecord {
    let failure = if ev.verify_error != 0 {
        let (reason, name) = reason::from_verify_error(ev.verify_error);
        TlsFailure {
            reason,
            source: FailureSource::X509Verify,
            detail: name.into(),
            alert: None,
            verify_error: Some(ev.verify_error),
        }
    } else {
        TlsFailure {
            reason: FailureReason::Aborted,
            source: FailureSource::Connection,
            detail: "SSL freed before its handshake completed".into(),
            alert: None,
            verify_error: None,
        }
    };
    TlsRecord {
        outcome: Outcome::Failure,
        timestamp_unix_ns: clock.unix_ns(ev.ts_ns),
        role: None,
        local: None,
        remote: None,
        remote_name: None,
        conn_id: None,
        pid: Some(ev.pid),
        comm: Some(ev.comm.clone()),
        cgroup_id: Some(ev.cgroup_id),
        server_name: None,
        offered_versions: Vec::new(),
        version: None,
        cipher: None,
        alpn_offered: Vec::new(),
        alpn: None,
        duration_us: (ev.ts_ns >= ev.start_ns).then(|| (ev.ts_ns - ev.start_ns) as f64 / 1000.0),
        failure: Some(failure),
        cert_subject: None,
        cert_not_after_unix: None,
        cert_expires_in_s: None,
        sources: vec!["openssl"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::parser::samples::*;

    const CLIENT: &str = "10.0.0.1:40000";
    const SERVER: &str = "10.0.0.2:443";

    fn wire(ts: u64, egress: bool, kind: u32, seq: u32, data: Vec<u8>) -> WireEvent {
        WireEvent {
            ts_ns: ts,
            cookie: 7,
            kind,
            seq,
            egress,
            local: CLIENT.parse().unwrap(),
            remote: SERVER.parse().unwrap(),
            truncated: false,
            data,
        }
    }

    fn tcp_connect() -> TcpRecord {
        let mut conn = hostscope_common::tcp::TcpConn::ZERO;
        conn.family = hostscope_common::tcp::AF_INET;
        conn.direction = hostscope_common::tcp::DIR_ACTIVE;
        conn.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        conn.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        conn.sport = 40000;
        conn.dport = 443;
        conn.pid = 99;
        conn.conn_id = 5;
        let ev = hostscope_common::tcp::TcpEvent {
            kind: hostscope_common::tcp::TCP_EVENT_CONNECT,
            sk_err: 0,
            ts_ns: 1,
            srtt_us: 0,
            total_retrans: 0,
            bytes_acked: 0,
            bytes_received: 0,
            old_state: hostscope_common::tcp::TCP_SYN_SENT,
            new_state: hostscope_common::tcp::TCP_ESTABLISHED,
            conn,
        };
        crate::events::tcp::from_event(&ev, &Clock::now()).unwrap()
    }

    fn tls_records(out: &Output) -> Vec<TlsRecord> {
        out.records
            .iter()
            .filter_map(|r| match r {
                Record::Tls(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// ClientHello out, ServerHello in, then the client's first encrypted record.
    fn handshake_13(t: &mut Tracker, out: &mut Output, client_record_len: u16) {
        t.on_tcp(&tcp_connect(), 1, out);
        t.on_wire(
            wire(
                1_000,
                true,
                WIRE_RECORDS,
                100,
                wrap(1, &client_hello("api.test")),
            ),
            out,
        );
        t.on_wire(
            wire(2_000, false, WIRE_RECORDS, 500, wrap(2, &server_hello_13())),
            out,
        );
        let mut header = vec![23, 3, 3];
        header.extend_from_slice(&client_record_len.to_be_bytes());
        t.on_wire(
            wire(3_000_000, true, WIRE_APP_DATA_HEADER, 9_000, header),
            out,
        );
    }

    #[test]
    fn tls13_success_from_the_wire_alone() {
        let mut t = Tracker::new(Clock::now());
        let mut out = Output::default();
        handshake_13(&mut t, &mut out, 53);
        assert!(tls_records(&out).is_empty(), "waits for its settle time");
        t.tick(3_000_000 + SETTLE_NS, &mut out);
        let r = &tls_records(&out)[0];
        assert_eq!(r.outcome, Outcome::Success);
        assert_eq!(r.version.as_deref(), Some("TLSv1.3"));
        assert_eq!(r.cipher.as_deref(), Some("TLS_AES_256_GCM_SHA384"));
        assert_eq!(r.server_name.as_deref(), Some("api.test"));
        assert_eq!((r.pid, r.conn_id), (Some(99), Some(5)));
        assert_eq!(r.duration_us, Some(2_999.0));
        assert_eq!(out.forget, vec![7]);
        assert_eq!(t.open_flows(), 0);
    }

    #[test]
    fn tls13_encrypted_alert_gets_openssl_reason() {
        let mut t = Tracker::new(Clock::now());
        let mut out = Output::default();
        handshake_13(&mut t, &mut out, 19);
        let lib = LibEvent {
            ts_ns: 3_100_000,
            start_ns: 900,
            kind: hostscope_common::tls::LIB_HANDSHAKE_FAILED,
            pid: 99,
            tid: 99,
            comm: "curl".into(),
            cgroup_id: 1,
            verify_error: 10,
            ret: -1,
        };
        t.on_lib(lib, 3_200_000, &mut out);
        t.tick(3_000_000 + GRACE_NS, &mut out);
        let r = &tls_records(&out)[0];
        let f = r.failure.as_ref().unwrap();
        assert_eq!(f.reason, FailureReason::CertificateExpired);
        assert_eq!(f.source, FailureSource::X509Verify);
        assert_eq!(r.sources, vec!["wire", "openssl"]);
        assert_eq!(out.failures.len(), 1);
    }

    #[test]
    fn garbage_and_strays_open_nothing() {
        let mut t = Tracker::new(Clock::now());
        let mut out = Output::default();
        t.on_wire(
            wire(1, true, WIRE_RECORDS, 0, b"GET / HTTP/1.1\r\n".to_vec()),
            &mut out,
        );
        t.on_wire(
            wire(2, false, WIRE_APP_DATA_HEADER, 0, vec![23, 3, 3, 0, 40]),
            &mut out,
        );
        t.tick(10 * STALL_NS, &mut out);
        assert_eq!(t.open_flows(), 0);
        assert!(out.records.is_empty());
    }
}
