//! Optional connection spans (`--otlp-connection-spans`): one span per TCP connection
//! from connect to close, built when its `close` record arrives (which carries the
//! lifetime, bytes, RTT and retransmits). Resets become span events: those before the
//! close are held per connection (only connections that had one, within a bound: beyond
//! it the missed event is counted as dropped); an abortive close sends its RST *after*
//! the state change to CLOSE, so a finished span waits [`SETTLE_NS`] for late resets
//! before it is handed to the batch.

use std::{collections::HashMap, sync::Arc};

use opentelemetry_proto::tonic::common::v1::KeyValue;

use opentelemetry_proto::tonic::trace::v1::{
    span::{Event, SpanKind},
    status::StatusCode,
    Span, Status,
};

use super::{
    resource::{int_value, kv, network_type_kv, str_value, tcp_endpoint_kvs},
    spans::ids,
};
use crate::{
    events::tcp::{Direction, TcpEventKind, TcpRecord},
    metadata::Identity,
};

/// Connections with pending reset events held at most.
pub const MAX_PENDING_CONNECTIONS: usize = 16_384;
/// Events kept per connection; more are counted in the span's `dropped_events_count`.
const MAX_EVENTS_PER_CONNECTION: usize = 8;
/// How long a closed connection's span waits for a reset sent by the close itself.
pub const SETTLE_NS: u64 = 100_000_000;

#[derive(Default)]
struct Pending {
    events: Vec<Event>,
    dropped: u32,
}

pub struct ConnectionSpans {
    pending: HashMap<u64, Pending>,
    /// Spans of closed connections settling, by connection, with their identity.
    closed: HashMap<u64, (Arc<Identity>, Span)>,
    max_pending: usize,
}

impl ConnectionSpans {
    pub fn new(max_pending: usize) -> ConnectionSpans {
        ConnectionSpans {
            pending: HashMap::new(),
            closed: HashMap::new(),
            max_pending: max_pending.max(1),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes one TCP record in; returns how many reset events could not be kept.
    /// `extra` attributes (the peer's workload) go on the connection's span.
    pub fn observe(&mut self, r: &TcpRecord, identity: &Arc<Identity>, extra: &[KeyValue]) -> u64 {
        match r.event {
            TcpEventKind::ResetSent | TcpEventKind::ResetReceived => {
                if let Some((_, span)) = self.closed.get_mut(&r.conn_id) {
                    push_event(
                        &mut span.events,
                        &mut span.dropped_events_count,
                        reset_event(r),
                    );
                    return 0;
                }
                if !self.pending.contains_key(&r.conn_id) && self.pending.len() >= self.max_pending
                {
                    return 1;
                }
                let p = self.pending.entry(r.conn_id).or_default();
                push_event(&mut p.events, &mut p.dropped, reset_event(r));
                0
            }
            TcpEventKind::Close => {
                let pending = self.pending.remove(&r.conn_id).unwrap_or_default();
                let mut span = connection_span(r, pending);
                span.attributes.extend(extra.iter().cloned());
                self.closed.insert(r.conn_id, (identity.clone(), span));
                0
            }
            // A connection that never opened has its own span (tcp.connect).
            TcpEventKind::ConnectFailed => {
                self.pending.remove(&r.conn_id);
                0
            }
            TcpEventKind::Connect => 0,
        }
    }

    /// Spans of connections closed at least [`SETTLE_NS`] before `now_ns` (all of them
    /// with `all`, at shutdown, or when more than the bound are settling).
    pub fn take_settled(&mut self, now_ns: u64, all: bool) -> Vec<(Arc<Identity>, Span)> {
        let all = all || self.closed.len() >= self.max_pending;
        let ready: Vec<u64> = self
            .closed
            .iter()
            .filter(|(_, (_, s))| all || s.end_time_unix_nano.saturating_add(SETTLE_NS) <= now_ns)
            .map(|(id, _)| *id)
            .collect();
        let mut out: Vec<(Arc<Identity>, Span)> = ready
            .into_iter()
            .filter_map(|id| self.closed.remove(&id))
            .collect();
        out.sort_by_key(|(_, s)| s.end_time_unix_nano);
        out
    }
}

fn push_event(events: &mut Vec<Event>, dropped: &mut u32, event: Event) {
    if events.len() < MAX_EVENTS_PER_CONNECTION {
        events.push(event);
    } else {
        *dropped += 1;
    }
}

fn reset_event(r: &TcpRecord) -> Event {
    Event {
        time_unix_nano: r.timestamp_unix_ns,
        name: match r.event {
            TcpEventKind::ResetSent => "tcp.reset_sent",
            _ => "tcp.reset_received",
        }
        .into(),
        attributes: vec![kv("hostscope.tcp.state", str_value(r.state))],
        dropped_attributes_count: 0,
    }
}

fn connection_span(r: &TcpRecord, pending: Pending) -> Span {
    let (trace_id, span_id) = ids();
    let server = match r.direction {
        Direction::Active => r.remote,
        Direction::Passive => r.local,
    };
    let mut attrs = tcp_endpoint_kvs(r);
    attrs.extend([
        network_type_kv(r),
        kv("server.address", str_value(server.ip().to_string())),
        kv("server.port", int_value(server.port() as i64)),
        kv("hostscope.tcp.resets_sent", int_value(r.resets_sent as i64)),
        kv(
            "hostscope.tcp.resets_received",
            int_value(r.resets_received as i64),
        ),
    ]);
    let optional = [
        ("hostscope.tcp.bytes_acked", r.bytes_acked),
        ("hostscope.tcp.bytes_received", r.bytes_received),
        ("hostscope.tcp.srtt_us", r.srtt_us.map(u64::from)),
        ("hostscope.tcp.retransmits", r.retransmits.map(u64::from)),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            attrs.push(kv(key, int_value(v as i64)));
        }
    }
    if let Some(comm) = &r.comm {
        attrs.push(kv("process.executable.name", str_value(comm)));
    }
    let status = match &r.failure {
        Some(f) => {
            attrs.push(kv(
                "error.type",
                str_value(crate::tcp::sinks::reason_str(f.reason)),
            ));
            Status {
                code: StatusCode::Error as i32,
                message: format!("connection ended by {}", f.errno_name),
            }
        }
        None => Status::default(),
    };
    let lifetime_ns = r.duration_us.unwrap_or(0.0).max(0.0) * 1_000.0;
    Span {
        trace_id,
        span_id,
        name: "tcp.connection".into(),
        kind: match r.direction {
            Direction::Active => SpanKind::Client,
            Direction::Passive => SpanKind::Server,
        } as i32,
        start_time_unix_nano: r.timestamp_unix_ns.saturating_sub(lifetime_ns as u64),
        end_time_unix_nano: r.timestamp_unix_ns,
        attributes: attrs,
        events: pending.events,
        dropped_events_count: pending.dropped,
        status: Some(status),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tcp::{Failure, FailureReason};

    fn record(event: TcpEventKind, conn_id: u64) -> TcpRecord {
        TcpRecord {
            event,
            timestamp_unix_ns: 2_000_000_000,
            conn_id,
            direction: Direction::Active,
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "10.0.0.2:443".parse().unwrap(),
            remote_name: None,
            pid: Some(7),
            tid: Some(7),
            comm: Some("curl".into()),
            cgroup_id: Some(1),
            state: "ESTABLISHED",
            previous_state: "SYN_SENT",
            connect_latency_us: None,
            handshake_rtt_us: None,
            syn_retransmits: 0,
            handshake_end_unseen: false,
            failure: None,
            duration_us: None,
            bytes_acked: None,
            bytes_received: None,
            srtt_us: None,
            retransmits: None,
            resets_sent: 0,
            resets_received: 0,
        }
    }

    fn id() -> Arc<Identity> {
        Arc::new(Identity::default())
    }

    fn observe(c: &mut ConnectionSpans, r: &TcpRecord) -> u64 {
        c.observe(r, &id(), &[])
    }

    #[test]
    fn close_ends_the_span_with_its_resets_as_events() {
        let mut c = ConnectionSpans::new(4);
        assert_eq!(observe(&mut c, &record(TcpEventKind::ResetReceived, 1)), 0);
        assert_eq!(c.pending(), 1);
        let mut close = record(TcpEventKind::Close, 1);
        close.duration_us = Some(1_500.0);
        close.bytes_acked = Some(5001);
        close.resets_received = 1;
        close.failure = Some(Failure::from_errno(libc::ECONNRESET as u32));
        observe(&mut c, &close);
        assert_eq!(c.pending(), 0);
        // Not handed out before it settled; then once.
        assert!(c.take_settled(close.timestamp_unix_ns, false).is_empty());
        let mut settled = c.take_settled(close.timestamp_unix_ns + SETTLE_NS, false);
        assert_eq!(settled.len(), 1);
        assert!(c.take_settled(u64::MAX, true).is_empty());
        let span = settled.remove(0).1;
        assert_eq!(span.name, "tcp.connection");
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            1_500_000
        );
        assert_eq!(span.events.len(), 1);
        assert_eq!(span.events[0].name, "tcp.reset_received");
        let status = span.status.unwrap();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert!(status.message.contains("ECONNRESET"), "{}", status.message);
        assert_eq!(
            close.failure.as_ref().map(|f| f.reason),
            Some(FailureReason::Reset)
        );
        assert!(span
            .attributes
            .iter()
            .any(|a| a.key == "hostscope.tcp.bytes_acked"));
    }

    #[test]
    fn pending_connections_and_events_are_bounded_and_counted() {
        let mut c = ConnectionSpans::new(2);
        for conn in 0..2 {
            observe(&mut c, &record(TcpEventKind::ResetSent, conn));
        }
        // A third connection with a reset does not fit: its event is reported dropped.
        assert_eq!(observe(&mut c, &record(TcpEventKind::ResetSent, 9)), 1);
        assert_eq!(c.pending(), 2);
        // Events beyond the per-connection bound land in dropped_events_count.
        for _ in 0..(MAX_EVENTS_PER_CONNECTION + 3) {
            observe(&mut c, &record(TcpEventKind::ResetSent, 0));
        }
        observe(&mut c, &record(TcpEventKind::Close, 0));
        let span = c.take_settled(0, true).remove(0).1;
        assert_eq!(span.events.len(), MAX_EVENTS_PER_CONNECTION);
        assert_eq!(span.dropped_events_count, 4);
        // A failed connect forgets what was pending for it.
        observe(&mut c, &record(TcpEventKind::ConnectFailed, 1));
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn a_reset_sent_by_the_close_itself_joins_the_closed_span() {
        let mut c = ConnectionSpans::new(4);
        let close = record(TcpEventKind::Close, 3);
        observe(&mut c, &close);
        let mut rst = record(TcpEventKind::ResetSent, 3);
        rst.state = "CLOSE";
        assert_eq!(observe(&mut c, &rst), 0);
        assert_eq!(
            c.pending(),
            0,
            "no entry left behind for a closed connection"
        );
        let span = c.take_settled(u64::MAX, false).remove(0).1;
        assert_eq!(span.events[0].name, "tcp.reset_sent");
    }
}
