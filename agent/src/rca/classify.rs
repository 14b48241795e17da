//! Record → cause: what each failure means, and the sentence that says it. Each family
//! defines its causes ([`Cause`] statics, listed in its `family::Descriptor`) and
//! classifies its records ([`Classify`], next to its family's code); docs/rca.md
//! documents every cause (a test checks that every code is there).

use std::net::SocketAddr;

use crate::events::Record;

/// What ends an incident early (before its quiet period): the first success of this kind
/// from the same source to the same target. Each family names its own (`tcp_connect`,
/// `tls_handshake`, `dns_answer`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery(pub &'static str);

impl Recovery {
    /// Nothing tells success: the incident ends after its quiet period.
    pub const QUIET_ONLY: Recovery = Recovery("quiet_only");
}

/// One cause of failure.
#[derive(Debug, PartialEq, Eq)]
pub struct Cause {
    /// Stable snake_case code (`"cause"` in the record).
    pub code: &'static str,
    pub family: &'static str,
    pub recovery: Recovery,
}

impl Cause {
    pub const fn new(code: &'static str, family: &'static str, recovery: Recovery) -> Cause {
        Cause {
            code,
            family,
            recovery,
        }
    }
}

/// Every cause, family by family in registration order (docs/rca.md lists them).
pub fn all_causes() -> impl Iterator<Item = &'static Cause> {
    crate::family::REGISTERED
        .iter()
        .flat_map(|d| d.causes.iter().copied())
}

/// What a failure is against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The remote end of a connection.
    Address(SocketAddr),
    /// A TLS server known only by name (no wire view of the handshake), or a name
    /// that does not resolve.
    Name(String),
    /// A syscall (error bursts).
    Syscall(String),
}

/// One failure, classified.
#[derive(Clone, Debug, PartialEq)]
pub struct Classified {
    pub cause: &'static Cause,
    pub sentence: String,
    pub target: Target,
    /// Failures this record stands for (an error burst counts its errors).
    pub weight: u64,
    pub conn_id: Option<u64>,
    pub comm: Option<String>,
    pub seen_unix_ns: u64,
    /// An error burst stands for failures over its interval, which ended at `seen`.
    pub over_ns: u64,
}

/// A success that can end incidents (see [`Recovery`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Success {
    pub recovery: Recovery,
    pub target: Target,
    pub comm: Option<String>,
    pub seen_unix_ns: u64,
}

/// Validity of a server certificate, learned from `tls_certificate` records, for TLS 1.3
/// handshakes whose certificate travelled encrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownCertificate {
    pub not_after_unix: i64,
}

/// How a record type takes part in incidents: implemented next to its family's code.
pub trait Classify {
    /// The failure it reports, if any; `cert` is what is known of its peer's certificate.
    fn classify(&self, _cert: Option<&KnownCertificate>) -> Option<Classified> {
        None
    }

    /// The successes it reports that can end incidents, into `out`.
    fn successes(&self, _out: &mut Vec<Success>) {}

    /// A server certificate's validity it tells, for later handshakes with that server.
    fn certificate(&self) -> Option<(SocketAddr, KnownCertificate)> {
        None
    }
}

/// The failure a record reports, if any.
pub fn classify(record: &Record, cert: Option<&KnownCertificate>) -> Option<Classified> {
    record.view().classify(cert)
}

/// The successes a record reports that can end incidents, into `out`.
pub fn successes(record: &Record, out: &mut Vec<Success>) {
    record.view().successes(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_is_in_the_docs_table() {
        let doc = include_str!("../../../docs/rca.md");
        let codes: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        for cause in all_causes() {
            assert!(
                codes.contains(&cause.code),
                "{} missing from docs/rca.md",
                cause.code
            );
        }
        for code in &codes {
            assert!(
                all_causes().any(|c| c.code == *code),
                "docs/rca.md lists unknown cause {code}"
            );
        }
    }
}
