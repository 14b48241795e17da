//! DNS records: one per lookup (a question sent to a server and its answer, its
//! retries, or its timeout), built by the family's joiner (`crate::dns::join`) from
//! the packets the wire probe copies (probes/src/dns.rs).

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::format_time_of_day;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> DnsRecord {
        DnsRecord {
            timestamp_unix_ns: 1_700_000_000_000_000_000,
            outcome: DnsOutcome::Answered,
            pid: Some(42),
            comm: Some("curl".into()),
            cgroup_id: Some(7),
            transport: Transport::Udp,
            local: "127.0.0.1:40000".parse().unwrap(),
            server: "127.0.0.53:53".parse().unwrap(),
            id: 0x1234,
            query_name: "payments.shop.svc.cluster.local".into(),
            query_type: qtype_name(1),
            rcode: Some(rcode_name(3)),
            answer_count: 0,
            addresses: vec![],
            latency_us: Some(1_250.0),
            retries: 1,
            after_truncation: false,
            search: None,
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
}
