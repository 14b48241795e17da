//! TCP records: decoded from `TcpEvent` (probes/src/tcp.rs), shown as text or JSON.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hostscope_common::tcp::*;
use serde::Serialize;

use super::{comm_string, format_time_of_day, Clock, DecodeError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpEventKind {
    Connect,
    ConnectFailed,
    Close,
    ResetSent,
    ResetReceived,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// We connected (SYN sent).
    Active,
    /// We accepted (SYN received).
    Passive,
}

/// Why a connection failed or ended abnormally, from the socket's `sk_err`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// RST in answer to our SYN (ECONNREFUSED).
    Refused,
    /// Retransmissions ran out (ETIMEDOUT): SYNs or data never acknowledged.
    TimedOut,
    /// ICMP host/network unreachable.
    Unreachable,
    /// The peer reset an established connection (ECONNRESET / EPIPE).
    Reset,
    /// Closed locally before the handshake completed, with no error.
    Aborted,
    /// Any other errno.
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub reason: FailureReason,
    pub errno: u32,
    pub errno_name: &'static str,
}

impl Failure {
    pub fn from_errno(errno: u32) -> Failure {
        let e = errno as i32;
        let reason = match e {
            0 => FailureReason::Aborted,
            libc::ECONNREFUSED => FailureReason::Refused,
            libc::ETIMEDOUT => FailureReason::TimedOut,
            libc::EHOSTUNREACH | libc::ENETUNREACH => FailureReason::Unreachable,
            libc::ECONNRESET | libc::EPIPE => FailureReason::Reset,
            _ => FailureReason::Error,
        };
        Failure {
            reason,
            errno,
            errno_name: errno_name(e),
        }
    }
}

fn errno_name(e: i32) -> &'static str {
    match e {
        0 => "",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EPROTO => "EPROTO",
        libc::ENOBUFS => "ENOBUFS",
        _ => "errno",
    }
}

/// One TCP record as users see it. Optional fields are left out of JSON when unknown.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TcpRecord {
    pub event: TcpEventKind,
    pub timestamp_unix_ns: u64,
    /// Stable for the connection's life: joins its connect, resets and close.
    pub conn_id: u64,
    pub direction: Direction,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The name the process looked `remote` up as, when the DNS family saw that lookup
    /// (active connections; `crate::dns::names`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_name: Option<String>,
    /// Owning process; unknown for a passive connection until its owner acts on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// TCP state at the event (`ESTABLISHED`, `SYN_SENT`, …) and the one before it; at
    /// close, `CLOSE_WAIT`/`LAST_ACK` before means the peer closed first.
    pub state: &'static str,
    pub previous_state: &'static str,
    /// Active connect: SYN sent → ESTABLISHED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_latency_us: Option<f64>,
    /// Handshake RTT sample at establishment (passive: SYN-ACK → ACK).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_rtt_us: Option<u32>,
    pub syn_retransmits: u32,
    /// The kernel skipped the probe run at ESTABLISHED (another BPF program was running
    /// on the CPU); this connect record was made at the socket's next transition, so it
    /// has no connect latency.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub handshake_end_unseen: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Failed connect: SYN → failure. Close: open → close (the connection's lifetime).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<f64>,
    /// At close, as `tcp_info` and `ss -i` report them: sequence space acknowledged by
    /// the peer and received, so payload plus one for each of SYN and FIN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_acked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srtt_us: Option<u32>,
    /// At close: the kernel's total retransmitted segments (SYNs included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u32>,
    pub resets_sent: u32,
    pub resets_received: u32,
}

pub fn state_name(state: u32) -> &'static str {
    match state {
        TCP_ESTABLISHED => "ESTABLISHED",
        TCP_SYN_SENT => "SYN_SENT",
        TCP_SYN_RECV => "SYN_RECV",
        TCP_FIN_WAIT1 => "FIN_WAIT1",
        TCP_FIN_WAIT2 => "FIN_WAIT2",
        TCP_TIME_WAIT => "TIME_WAIT",
        TCP_CLOSE => "CLOSE",
        TCP_CLOSE_WAIT => "CLOSE_WAIT",
        TCP_LAST_ACK => "LAST_ACK",
        TCP_LISTEN => "LISTEN",
        TCP_CLOSING => "CLOSING",
        TCP_NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Local and remote socket addresses of a connection.
pub fn endpoints(conn: &TcpConn) -> (SocketAddr, SocketAddr) {
    let ip = |raw: &[u8; 16]| -> IpAddr {
        if conn.family == AF_INET6 {
            IpAddr::V6(Ipv6Addr::from(*raw))
        } else {
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        }
    };
    (
        SocketAddr::new(ip(&conn.saddr), conn.sport),
        SocketAddr::new(ip(&conn.daddr), conn.dport),
    )
}

fn us_between(from_ns: u64, to_ns: u64) -> Option<f64> {
    (from_ns != 0 && to_ns >= from_ns).then(|| (to_ns - from_ns) as f64 / 1_000.0)
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8], clock: &Clock) -> Result<TcpRecord, DecodeError> {
    let ev: TcpEvent = super::read_record(bytes, "tcp")?;
    from_event(&ev, clock)
}

pub fn from_event(ev: &TcpEvent, clock: &Clock) -> Result<TcpRecord, DecodeError> {
    let c = &ev.conn;
    let event = match ev.kind {
        TCP_EVENT_CONNECT => TcpEventKind::Connect,
        TCP_EVENT_CONNECT_FAILED => TcpEventKind::ConnectFailed,
        TCP_EVENT_CLOSE => TcpEventKind::Close,
        TCP_EVENT_RESET_SENT => TcpEventKind::ResetSent,
        TCP_EVENT_RESET_RECEIVED => TcpEventKind::ResetReceived,
        kind => {
            return Err(DecodeError::Kind {
                family: "tcp",
                kind,
            })
        }
    };
    let direction = if c.direction == DIR_PASSIVE {
        Direction::Passive
    } else {
        Direction::Active
    };
    let (local, remote) = endpoints(c);
    let known = |v: u32| (c.pid != 0).then_some(v);
    let closing = matches!(event, TcpEventKind::Close | TcpEventKind::ConnectFailed);
    let failure = match event {
        TcpEventKind::ConnectFailed => Some(Failure::from_errno(ev.sk_err)),
        TcpEventKind::Close if ev.sk_err != 0 => Some(Failure::from_errno(ev.sk_err)),
        _ => None,
    };
    Ok(TcpRecord {
        event,
        timestamp_unix_ns: clock.unix_ns(ev.ts_ns),
        conn_id: c.conn_id,
        direction,
        local,
        remote,
        remote_name: None,
        pid: known(c.pid),
        tid: known(c.tid),
        comm: (c.pid != 0).then(|| comm_string(&c.comm)),
        cgroup_id: (c.pid != 0).then_some(c.cgroup_id),
        state: state_name(ev.new_state),
        previous_state: state_name(ev.old_state),
        connect_latency_us: match (event, direction) {
            (TcpEventKind::Connect, Direction::Active) => us_between(c.start_ns, c.established_ns),
            _ => None,
        },
        handshake_rtt_us: (event == TcpEventKind::Connect && ev.srtt_us != 0).then_some(ev.srtt_us),
        syn_retransmits: c.syn_retrans,
        handshake_end_unseen: c.flags & CONN_ESTABLISHED_UNSEEN != 0,
        failure,
        duration_us: if closing {
            us_between(c.start_ns, c.closed_ns)
        } else {
            None
        },
        bytes_acked: closing.then_some(ev.bytes_acked),
        bytes_received: closing.then_some(ev.bytes_received),
        srtt_us: (closing && ev.srtt_us != 0).then_some(ev.srtt_us),
        retransmits: closing.then_some(ev.total_retrans),
        resets_sent: c.rst_sent,
        resets_received: c.rst_recv,
    })
}

fn ms(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else {
        format!("{:.3} ms", us / 1_000.0)
    }
}

/// A failed active connect of curl[42] from 10.0.0.1:40000 to 10.0.3.7:443 with `errno`:
/// the sinks' tests start from it.
#[cfg(test)]
pub(crate) fn sample_connect_failed(errno: i32, syn_retransmits: u32) -> TcpRecord {
    TcpRecord {
        event: TcpEventKind::ConnectFailed,
        timestamp_unix_ns: 1_700_000_000_000_000_000,
        conn_id: 7,
        direction: Direction::Active,
        local: "10.0.0.1:40000".parse().unwrap(),
        remote: "10.0.3.7:443".parse().unwrap(),
        remote_name: None,
        pid: Some(42),
        tid: Some(42),
        comm: Some("curl".into()),
        cgroup_id: Some(1),
        state: "CLOSE",
        previous_state: "SYN_SENT",
        connect_latency_us: None,
        handshake_rtt_us: None,
        syn_retransmits,
        handshake_end_unseen: false,
        failure: Some(Failure::from_errno(errno as u32)),
        duration_us: Some(80.0),
        bytes_acked: None,
        bytes_received: None,
        srtt_us: None,
        retransmits: None,
        resets_sent: 0,
        resets_received: 0,
    }
}

impl std::fmt::Display for TcpRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match (&self.pid, &self.comm) {
            (Some(pid), Some(comm)) => format!("{comm}[{pid}]"),
            _ => "?".to_string(),
        };
        let arrow = match self.direction {
            Direction::Active => "->",
            Direction::Passive => "<-",
        };
        write!(
            f,
            "{} tcp {:<14} {who} {} {arrow} {} ",
            format_time_of_day(self.timestamp_unix_ns),
            match self.event {
                TcpEventKind::Connect => "connect",
                TcpEventKind::ConnectFailed => "CONNECT FAILED",
                TcpEventKind::Close => "close",
                TcpEventKind::ResetSent => "RESET SENT",
                TcpEventKind::ResetReceived => "RESET RECEIVED",
            },
            self.local,
            self.remote,
        )?;
        if let Some(name) = &self.remote_name {
            write!(f, "({name}) ")?;
        }
        match self.event {
            TcpEventKind::Connect => {
                if let Some(l) = self.connect_latency_us {
                    write!(f, "latency {}", ms(l))?;
                } else if self.handshake_end_unseen {
                    write!(f, "established (handshake end not seen: probe run skipped)")?;
                } else {
                    write!(f, "accepted")?;
                }
                if let Some(rtt) = self.handshake_rtt_us {
                    write!(f, ", rtt {}", ms(rtt as f64))?;
                }
                if self.syn_retransmits > 0 {
                    write!(f, ", {} SYN retransmits", self.syn_retransmits)?;
                }
            }
            TcpEventKind::ConnectFailed => {
                let why = self.failure.as_ref();
                let reason = match why.map(|w| w.reason) {
                    Some(FailureReason::Refused) => "refused",
                    Some(FailureReason::TimedOut) => "timed out",
                    Some(FailureReason::Unreachable) => "unreachable",
                    Some(FailureReason::Reset) => "reset",
                    Some(FailureReason::Aborted) => "aborted locally",
                    _ => "failed",
                };
                write!(f, "{reason}")?;
                if let Some(w) = why.filter(|w| w.errno != 0) {
                    write!(f, " ({})", w.errno_name)?;
                }
                if let Some(d) = self.duration_us {
                    write!(f, " after {}", ms(d))?;
                }
                write!(f, ", {} SYN retransmits", self.syn_retransmits)?;
            }
            TcpEventKind::Close => {
                if let Some(d) = self.duration_us {
                    write!(f, "lifetime {}", ms(d))?;
                }
                write!(
                    f,
                    ", acked {} B, received {} B",
                    self.bytes_acked.unwrap_or(0),
                    self.bytes_received.unwrap_or(0)
                )?;
                if let Some(s) = self.srtt_us {
                    write!(f, ", srtt {}", ms(s as f64))?;
                }
                write!(f, ", {} retransmits", self.retransmits.unwrap_or(0))?;
                if self.resets_sent + self.resets_received > 0 {
                    write!(
                        f,
                        ", resets sent {} received {}",
                        self.resets_sent, self.resets_received
                    )?;
                }
                if let Some(w) = &self.failure {
                    write!(f, ", ended by {}", w.errno_name)?;
                }
            }
            TcpEventKind::ResetSent | TcpEventKind::ResetReceived => {
                write!(f, "in {}", self.state)?;
            }
        }
        write!(f, " [conn {:#x}]", self.conn_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u32) -> TcpEvent {
        let mut conn = TcpConn::ZERO;
        conn.conn_id = 7;
        conn.family = AF_INET;
        conn.direction = DIR_ACTIVE;
        conn.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        conn.daddr[..4].copy_from_slice(&[10, 0, 3, 7]);
        conn.sport = 40000;
        conn.dport = 443;
        conn.pid = 42;
        conn.comm[..4].copy_from_slice(b"curl");
        conn.start_ns = 1_000_000;
        conn.established_ns = 1_250_000;
        TcpEvent {
            kind,
            sk_err: 0,
            ts_ns: 2_000_000,
            srtt_us: 0,
            total_retrans: 0,
            bytes_acked: 0,
            bytes_received: 0,
            old_state: TCP_SYN_SENT,
            new_state: TCP_ESTABLISHED,
            conn,
        }
    }

    #[test]
    fn connect_latency_and_addresses() {
        let clock = Clock::now();
        let r = from_event(&event(TCP_EVENT_CONNECT), &clock).unwrap();
        assert_eq!(r.connect_latency_us, Some(250.0));
        assert_eq!(r.remote, "10.0.3.7:443".parse().unwrap());
        assert_eq!(r.comm.as_deref(), Some("curl"));
        let line = r.to_string();
        assert!(
            line.contains("127.0.0.1:40000 -> 10.0.3.7:443 latency 0.250 ms"),
            "{line}"
        );
    }

    #[test]
    fn refused_connect_reads_like_a_cause() {
        let mut ev = event(TCP_EVENT_CONNECT_FAILED);
        ev.sk_err = libc::ECONNREFUSED as u32;
        ev.conn.established_ns = 0;
        ev.conn.closed_ns = 1_080_000;
        ev.new_state = TCP_CLOSE;
        let r = from_event(&ev, &Clock::now()).unwrap();
        assert_eq!(r.failure.as_ref().unwrap().reason, FailureReason::Refused);
        assert!(r
            .to_string()
            .contains("-> 10.0.3.7:443 refused (ECONNREFUSED) after 0.080 ms"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["failure"]["reason"], "refused");
        assert_eq!(json["event"], "connect_failed");
    }

    #[test]
    fn passive_owner_unknown_is_not_pid_zero() {
        let mut ev = event(TCP_EVENT_CONNECT);
        ev.conn.pid = 0;
        ev.conn.direction = DIR_PASSIVE;
        let r = from_event(&ev, &Clock::now()).unwrap();
        assert_eq!(r.pid, None);
        assert_eq!(r.connect_latency_us, None);
        assert!(serde_json::to_value(&r).unwrap().get("pid").is_none());
    }

    #[test]
    fn short_or_unknown_records_are_errors() {
        assert!(decode(&[0u8; 10], &Clock::now()).is_err());
        assert!(from_event(&event(99), &Clock::now()).is_err());
    }

    #[test]
    fn ipv6_endpoints() {
        let mut ev = event(TCP_EVENT_CONNECT);
        ev.conn.family = AF_INET6;
        ev.conn.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        let r = from_event(&ev, &Clock::now()).unwrap();
        assert_eq!(r.remote, "[::1]:443".parse().unwrap());
    }
}
