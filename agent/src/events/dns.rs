//! DNS records: one per lookup (a question sent to a server and its answer, its
//! retries, or its timeout), built by the family's joiner (`crate::dns::join`) from
//! the packets the wire probe copies (probes/src/dns.rs).

use std::net::{IpAddr, SocketAddr};

use hostscope_common::dns::{
    DnsEventHeader, DIR_EGRESS, DIR_INGRESS, DNS_CAPTURE_MAX, DNS_EVENT_HEADER_BYTES, IPPROTO_TCP,
    IPPROTO_UDP,
};
use serde::Serialize;

use super::{comm_string, format_time_of_day, DecodeError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsOutcome {
    /// The server answered (any rcode: NXDOMAIN and SERVFAIL are answers).
    Answered,
    /// No answer within the configured time after the last attempt.
    Timeout,
}

/// A lookup that is one step of a resolver's search-list walk: the name it was asked
/// for (`base`) with a search domain appended, after `nxdomain_before` expansions of the
/// same base that got NXDOMAIN (the `ndots` pattern).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SearchExpansion {
    pub base: String,
    pub nxdomain_before: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DnsRecord {
    /// When the question was first sent.
    pub timestamp_unix_ns: u64,
    pub outcome: DnsOutcome,
    /// The process that sent the question; the wire sees it only on egress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    pub transport: Transport,
    pub local: SocketAddr,
    pub server: SocketAddr,
    /// Transaction id of the answered (or last) attempt.
    pub id: u16,
    /// The question, as presentation text (`\DDD` escapes for odd bytes).
    pub query_name: String,
    /// `A`, `AAAA`, … or `TYPE<n>` for a type without a mnemonic.
    pub query_type: String,
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, `REFUSED`, … or `RCODE<n>`; none on a timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcode: Option<String>,
    pub answer_count: u16,
    /// The A and AAAA addresses of the answer section.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// First send → answer; none on a timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<f64>,
    /// Attempts after the first for the same question to the same server.
    pub retries: u32,
    /// A UDP answer came back truncated (TC) and the question was asked again over TCP;
    /// this record is the TCP answer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub after_truncation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchExpansion>,
}

impl DnsRecord {
    /// A failure worth a log record and an incident: a timeout, or an rcode other than
    /// NOERROR (an empty NOERROR answer is not a failure).
    pub fn is_failure(&self) -> bool {
        match self.outcome {
            DnsOutcome::Timeout => true,
            DnsOutcome::Answered => self.rcode.as_deref().is_some_and(|r| r != "NOERROR"),
        }
    }

    /// What went wrong, for metrics and incidents: the rcode or `TIMEOUT`.
    pub fn failure_kind(&self) -> Option<&str> {
        if !self.is_failure() {
            return None;
        }
        Some(match self.outcome {
            DnsOutcome::Timeout => "TIMEOUT",
            DnsOutcome::Answered => self.rcode.as_deref().unwrap_or("UNKNOWN"),
        })
    }
}

/// The mnemonic of an rcode (RFC 1035 §4.1.1, RFC 6895 §2.3).
pub fn rcode_name(rcode: u16) -> String {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        n => return format!("RCODE{n}"),
    }
    .to_string()
}

/// The mnemonic of a query type.
pub fn qtype_name(qtype: u16) -> String {
    match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        n => return format!("TYPE{n}"),
    }
    .to_string()
}

/// A lookup of `name` (type A, from curl[42] to 10.96.0.10:53) answered with `rcode`, or
/// timed out after 2 retries when None: the sinks' tests start from it.
#[cfg(test)]
pub(crate) fn sample(rcode: Option<u16>, name: &str) -> DnsRecord {
    DnsRecord {
        timestamp_unix_ns: 1_700_000_000_000_000_000,
        outcome: match rcode {
            Some(_) => DnsOutcome::Answered,
            None => DnsOutcome::Timeout,
        },
        pid: Some(42),
        comm: Some("curl".into()),
        cgroup_id: None,
        transport: Transport::Udp,
        local: "10.0.0.1:40000".parse().expect("address"),
        server: "10.96.0.10:53".parse().expect("address"),
        id: 1,
        query_name: name.into(),
        query_type: qtype_name(1),
        rcode: rcode.map(rcode_name),
        answer_count: 0,
        addresses: Vec::new(),
        latency_us: rcode.map(|_| 900.0),
        retries: if rcode.is_some() { 0 } else { 2 },
        after_truncation: false,
        search: None,
    }
}

impl std::fmt::Display for DnsRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match (&self.pid, &self.comm) {
            (Some(pid), Some(comm)) => format!("{comm}[{pid}]"),
            _ => "?".to_string(),
        };
        let what = match self.outcome {
            DnsOutcome::Timeout => "LOOKUP TIMEOUT",
            DnsOutcome::Answered if self.is_failure() => "LOOKUP FAILED",
            DnsOutcome::Answered => "lookup",
        };
        write!(
            f,
            "{} dns {what:<14} {who} {} {} via {}",
            format_time_of_day(self.timestamp_unix_ns),
            self.query_type,
            self.query_name,
            self.server,
        )?;
        if self.transport == Transport::Tcp {
            write!(f, "/tcp")?;
        }
        if let Some(rcode) = &self.rcode {
            write!(f, ": {rcode}")?;
        }
        if let Some(us) = self.latency_us {
            write!(f, " in {:.3} ms", us / 1_000.0)?;
        }
        if !self.addresses.is_empty() {
            let list: Vec<String> = self.addresses.iter().map(|a| a.to_string()).collect();
            write!(f, " → {}", list.join(", "))?;
        } else if self.outcome == DnsOutcome::Answered && self.answer_count > 0 {
            write!(f, " ({} answers)", self.answer_count)?;
        }
        match self.retries {
            0 => {}
            1 => write!(f, " after 1 retry")?,
            n => write!(f, " after {n} retries")?,
        }
        if self.after_truncation {
            write!(f, " (UDP answer truncated, asked again over TCP)")?;
        }
        if let Some(s) = &self.search {
            write!(
                f,
                " (search list for {}, {} NXDOMAIN before)",
                s.base, s.nxdomain_before
            )?;
        }
        Ok(())
    }
}

/// One DNS message the probe copied, with endpoints from the local socket's point of
/// view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireMessage {
    /// CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub cookie: u64,
    pub cgroup_id: u64,
    /// Sent by a local socket (a question out); else received (an answer in).
    pub egress: bool,
    pub transport: Transport,
    /// The sender, known on egress only.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// TCP sequence number of `data[0]`.
    pub seq: u32,
    /// What was copied: the message (UDP) or the segment's payload (TCP), from its start.
    pub data: Vec<u8>,
    /// Bytes of the message or segment not copied (beyond the probe's bound).
    pub uncaptured: usize,
}

/// A DNS event of the ring (`probes/src/dns.rs`): the header, then the copied bytes
/// (records have one of several capacities, `DNS_DATA_SIZES`).
pub fn decode(bytes: &[u8]) -> Result<WireMessage, DecodeError> {
    let ev: DnsEventHeader = super::read_record(bytes, "dns")?;
    let data = &bytes[DNS_EVENT_HEADER_BYTES..];
    let len = ev.len as usize;
    if len > data.len() || len > DNS_CAPTURE_MAX {
        return Err(DecodeError::Size {
            family: "dns",
            len: bytes.len(),
            expected: DNS_EVENT_HEADER_BYTES + len,
        });
    }
    let transport = match ev.protocol as u8 {
        IPPROTO_UDP => Transport::Udp,
        IPPROTO_TCP => Transport::Tcp,
        other => {
            return Err(DecodeError::Kind {
                family: "dns",
                kind: other as u32,
            })
        }
    };
    let egress = match ev.direction {
        DIR_EGRESS => true,
        DIR_INGRESS => false,
        other => {
            return Err(DecodeError::Kind {
                family: "dns",
                kind: other as u32,
            })
        }
    };
    let src = SocketAddr::new(super::ip_of(ev.family, &ev.saddr), ev.sport);
    let dst = SocketAddr::new(super::ip_of(ev.family, &ev.daddr), ev.dport);
    let (local, remote) = if egress { (src, dst) } else { (dst, src) };
    let comm = comm_string(&ev.comm);
    Ok(WireMessage {
        ts_ns: ev.ts_ns,
        cookie: ev.cookie,
        cgroup_id: ev.cgroup_id,
        egress,
        transport,
        pid: (egress && ev.pid_tgid != 0).then_some((ev.pid_tgid >> 32) as u32),
        comm: (egress && !comm.is_empty()).then_some(comm),
        local,
        remote,
        seq: ev.seq,
        data: data[..len].to_vec(),
        uncaptured: (ev.orig_len as usize).saturating_sub(len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostscope_common::dns::DnsEvent;

    fn record() -> DnsRecord {
        DnsRecord {
            server: "127.0.0.53:53".parse().unwrap(),
            latency_us: Some(1_250.0),
            retries: 1,
            ..sample(Some(3), "payments.shop.svc.cluster.local")
        }
    }

    #[test]
    fn a_failure_is_a_timeout_or_an_rcode_other_than_noerror() {
        let mut r = record();
        assert_eq!(r.failure_kind(), Some("NXDOMAIN"));
        r.rcode = Some(rcode_name(0));
        assert!(!r.is_failure());
        r.outcome = DnsOutcome::Timeout;
        r.rcode = None;
        assert_eq!(r.failure_kind(), Some("TIMEOUT"));
    }

    #[test]
    fn text_and_json_name_the_question_the_answer_and_the_retries() {
        let r = record();
        let text = r.to_string();
        assert!(text.contains("LOOKUP FAILED"), "{text}");
        assert!(
            text.contains(
                "curl[42] A payments.shop.svc.cluster.local via 127.0.0.53:53: NXDOMAIN in 1.250 ms after 1 retry"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rcode"], "NXDOMAIN");
        assert_eq!(json["transport"], "udp");
        assert!(json.get("addresses").is_none());
        assert_eq!(rcode_name(23), "RCODE23");
        assert_eq!(qtype_name(99), "TYPE99");
    }

    fn event(direction: u16, protocol: u8) -> DnsEvent<128> {
        let mut header = DnsEventHeader {
            ts_ns: 5,
            cookie: 9,
            cgroup_id: 3,
            pid_tgid: (1234u64 << 32) | 1240,
            seq: 77,
            len: 3,
            orig_len: 1500,
            direction,
            protocol: protocol as u16,
            family: hostscope_common::tcp::AF_INET,
            sport: 40000,
            dport: 53,
            _pad: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; 16],
        };
        header.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        header.daddr[..4].copy_from_slice(&[127, 0, 0, 77]);
        header.comm[..3].copy_from_slice(b"dig");
        let mut ev = DnsEvent {
            header,
            data: [0; 128],
        };
        ev.data[..3].copy_from_slice(&[1, 2, 3]);
        ev
    }

    fn bytes<const N: usize>(ev: &DnsEvent<N>) -> Vec<u8> {
        // SAFETY: DnsEvent is plain old data without padding.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const DnsEvent<N>).cast::<u8>(),
                size_of::<DnsEvent<N>>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decode_gives_the_local_view_the_sender_and_the_uncaptured_rest() {
        let m = decode(&bytes(&event(DIR_EGRESS, IPPROTO_UDP))).unwrap();
        assert!(m.egress);
        assert_eq!(m.transport, Transport::Udp);
        assert_eq!(m.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(m.remote, "127.0.0.77:53".parse().unwrap());
        assert_eq!((m.pid, m.comm.as_deref()), (Some(1234), Some("dig")));
        assert_eq!((m.data.as_slice(), m.uncaptured), (&[1u8, 2, 3][..], 1497));

        // An answer: the packet's destination is the local socket; no sender.
        let m = decode(&bytes(&event(DIR_INGRESS, IPPROTO_TCP))).unwrap();
        assert!(!m.egress);
        assert_eq!(m.transport, Transport::Tcp);
        assert_eq!(m.local, "127.0.0.77:53".parse().unwrap());
        assert_eq!((m.pid, m.comm), (None, None));
        assert_eq!(m.seq, 77);
    }

    #[test]
    fn decode_refuses_short_records_and_unknown_kinds() {
        let ok = bytes(&event(DIR_EGRESS, IPPROTO_UDP));
        assert!(matches!(
            decode(&ok[..100]),
            Err(DecodeError::Size { family: "dns", .. })
        ));
        // A length beyond the record's data.
        let mut long = event(DIR_EGRESS, IPPROTO_UDP);
        long.header.len = 129;
        assert!(decode(&bytes(&long)).is_err());
        assert!(decode(&bytes(&event(DIR_EGRESS, 1))).is_err());
        assert!(decode(&bytes(&event(7, IPPROTO_UDP))).is_err());
    }
}
