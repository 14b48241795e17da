//! Record → cause: the one table of what each failure means, and the sentence that says
//! it. docs/rca.md documents this table (a test checks that every code is there).

use std::net::SocketAddr;

use crate::events::{
    dns::{DnsOutcome, DnsRecord},
    syscalls::{AlertKind, SyscallAlert},
    tcp::{Direction, FailureReason as TcpReason, TcpEventKind, TcpRecord},
    tls::{Outcome, Role, TlsRecord},
    Record,
};
use crate::tls::reason::FailureReason as TlsReason;

/// What ends an incident early (before its quiet period): the first success of this kind
/// from the same source to the same target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// An active connect that completed.
    TcpConnect,
    /// A connection that ended without an error.
    TcpCleanClose,
    /// A TLS handshake that completed.
    TlsHandshake,
    /// A lookup answered with NOERROR (by the server, or for the name, the incident is
    /// against).
    DnsAnswer,
    /// Nothing tells success: the incident ends after its quiet period.
    QuietOnly,
}

/// One row of the table.
#[derive(Debug, PartialEq, Eq)]
pub struct Cause {
    /// Stable snake_case code (`"cause"` in the record).
    pub code: &'static str,
    pub family: &'static str,
    pub recovery: Recovery,
}

macro_rules! causes {
    ($($name:ident = $code:literal, $family:literal, $recovery:ident;)*) => {
        $(pub const $name: Cause = Cause { code: $code, family: $family, recovery: Recovery::$recovery };)*
        /// Every cause, in the order docs/rca.md lists them.
        pub const CAUSES: &[&Cause] = &[$(&$name),*];
    };
}

causes! {
    REFUSED = "refused", "tcp", TcpConnect;
    TIMED_OUT = "timed_out", "tcp", TcpConnect;
    UNREACHABLE = "unreachable", "tcp", TcpConnect;
    CONNECT_ERROR = "connect_error", "tcp", TcpConnect;
    RESET = "reset", "tcp", TcpCleanClose;
    TLS_CERTIFICATE_EXPIRED = "tls_certificate_expired", "tls", TlsHandshake;
    TLS_CERTIFICATE_NOT_YET_VALID = "tls_certificate_not_yet_valid", "tls", TlsHandshake;
    TLS_UNKNOWN_CA = "tls_unknown_ca", "tls", TlsHandshake;
    TLS_HOSTNAME_MISMATCH = "tls_hostname_mismatch", "tls", TlsHandshake;
    TLS_PROTOCOL_VERSION = "tls_protocol_version", "tls", TlsHandshake;
    TLS_CERTIFICATE_REJECTED = "tls_certificate_rejected", "tls", TlsHandshake;
    TLS_NO_COMMON_PARAMETERS = "tls_no_common_parameters", "tls", TlsHandshake;
    TLS_PEER_CLOSED = "tls_peer_closed", "tls", TlsHandshake;
    TLS_NOT_TLS = "tls_not_tls", "tls", TlsHandshake;
    TLS_STALLED = "tls_stalled", "tls", TlsHandshake;
    TLS_ERROR = "tls_error", "tls", TlsHandshake;
    DNS_NXDOMAIN = "dns_nxdomain", "dns", DnsAnswer;
    DNS_SERVFAIL = "dns_servfail", "dns", DnsAnswer;
    DNS_REFUSED = "dns_refused", "dns", DnsAnswer;
    DNS_TIMEOUT = "dns_timeout", "dns", DnsAnswer;
    DNS_ERROR = "dns_error", "dns", DnsAnswer;
    FD_LIMIT = "fd_limit", "syscalls", QuietOnly;
    SYSTEM_FD_LIMIT = "system_fd_limit", "syscalls", QuietOnly;
    NO_SPACE = "no_space", "syscalls", QuietOnly;
    PERMISSION_DENIED = "permission_denied", "syscalls", QuietOnly;
    OUT_OF_MEMORY = "out_of_memory", "syscalls", QuietOnly;
    SYSCALL_CONNECTION_REFUSED = "syscall_connection_refused", "syscalls", QuietOnly;
    SYSCALL_ERRORS = "syscall_errors", "syscalls", QuietOnly;
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

/// The failure a record reports, if any.
pub fn classify(record: &Record, cert: Option<&KnownCertificate>) -> Option<Classified> {
    match record {
        // What we connected to failed us. A reset from one of our clients (passive) or a
        // client's failed handshake with us (server role) has a new ephemeral port each
        // time: not a target that failures can be folded on.
        Record::Tcp(r) if r.direction == Direction::Active => tcp(r),
        Record::Tls(r) if r.outcome == Outcome::Failure && r.role != Some(Role::Server) => {
            tls(r, cert)
        }
        Record::SyscallAlert(r) if r.kind == AlertKind::ErrorBurst => syscall(r),
        Record::Dns(r) => dns(r),
        _ => None,
    }
}

/// The successes a record reports that can end incidents, into `out`: a NOERROR answer
/// recovers incidents against its server and against its name (and the name its search
/// list expanded).
pub fn successes(record: &Record, out: &mut Vec<Success>) {
    if let Record::Dns(r) = record {
        if r.outcome == DnsOutcome::Answered && r.rcode.as_deref() == Some("NOERROR") {
            let mut push = |target| {
                out.push(Success {
                    recovery: Recovery::DnsAnswer,
                    target,
                    comm: r.comm.clone(),
                    seen_unix_ns: r.timestamp_unix_ns,
                })
            };
            push(Target::Address(r.server));
            push(Target::Name(r.query_name.clone()));
            if let Some(s) = &r.search {
                push(Target::Name(s.base.clone()));
            }
        }
        return;
    }
    out.extend(success(record));
}

/// The success a connection record reports, if it can end an incident.
fn success(record: &Record) -> Option<Success> {
    match record {
        Record::Tcp(r) if r.direction == Direction::Active => {
            let recovery = match (r.event, &r.failure) {
                (TcpEventKind::Connect, _) => Recovery::TcpConnect,
                (TcpEventKind::Close, None) => Recovery::TcpCleanClose,
                _ => return None,
            };
            Some(Success {
                recovery,
                target: Target::Address(r.remote),
                comm: r.comm.clone(),
                seen_unix_ns: r.timestamp_unix_ns,
            })
        }
        Record::Tls(r) if r.outcome == Outcome::Success && r.role != Some(Role::Server) => {
            Some(Success {
                recovery: Recovery::TlsHandshake,
                target: Target::Address(r.remote?),
                comm: r.comm.clone(),
                seen_unix_ns: r.timestamp_unix_ns,
            })
        }
        _ => None,
    }
}

fn tcp(r: &TcpRecord) -> Option<Classified> {
    let f = r.failure.as_ref()?;
    let (cause, sentence) = match (r.event, f.reason) {
        (TcpEventKind::ConnectFailed, TcpReason::Refused) => (
            &REFUSED,
            "connect refused — the peer answered with a RST: nothing listens on that port"
                .to_string(),
        ),
        (TcpEventKind::ConnectFailed, TcpReason::TimedOut) => (
            &TIMED_OUT,
            format!(
                "connect timed out — no SYN-ACK after {} SYN retransmits: the peer is down or traffic is filtered",
                r.syn_retransmits
            ),
        ),
        (TcpEventKind::ConnectFailed, TcpReason::Unreachable) => (
            &UNREACHABLE,
            format!(
                "connect failed — {} unreachable ({}): an ICMP error says there is no route to the peer",
                if f.errno as i32 == libc::ENETUNREACH { "network" } else { "host" },
                f.errno_name
            ),
        ),
        (TcpEventKind::ConnectFailed | TcpEventKind::Close, TcpReason::Reset) => (
            &RESET,
            format!(
                "connection reset by the peer mid-connection ({}): the peer aborted it",
                f.errno_name
            ),
        ),
        (TcpEventKind::ConnectFailed, TcpReason::Error) => (
            &CONNECT_ERROR,
            format!("connect failed with {} (errno {})", f.errno_name, f.errno),
        ),
        // Aborted locally (no fault on the path), or a close that ended otherwise.
        _ => return None,
    };
    Some(Classified {
        cause,
        sentence,
        target: Target::Address(r.remote),
        weight: 1,
        conn_id: Some(r.conn_id),
        comm: r.comm.clone(),
        seen_unix_ns: r.timestamp_unix_ns,
        over_ns: 0,
    })
}

fn tls(r: &TlsRecord, cert: Option<&KnownCertificate>) -> Option<Classified> {
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
                    format!("expired {} ago", super::record::human_duration(ago.max(0) as u64 * 1_000_000_000))
                }
                None => "has expired".to_string(),
            };
            (&TLS_CERTIFICATE_EXPIRED, format!("{failed} certificate for {name} {when} ({detail})"))
        }
        TlsReason::CertificateNotYetValid => (
            &TLS_CERTIFICATE_NOT_YET_VALID,
            format!("{failed} certificate for {name} is not valid yet ({detail}): check the clocks"),
        ),
        TlsReason::UnknownCa => (
            &TLS_UNKNOWN_CA,
            format!("{failed} the certificate for {name} is signed by a CA the client does not trust ({detail})"),
        ),
        TlsReason::HostnameMismatch => (
            &TLS_HOSTNAME_MISMATCH,
            format!("{failed} the certificate presented does not name {name} ({detail})"),
        ),
        TlsReason::ProtocolVersion => {
            let offered = if r.offered_versions.is_empty() {
                String::new()
            } else {
                format!(", the client offered {}", r.offered_versions.join(", "))
            };
            (
                &TLS_PROTOCOL_VERSION,
                format!("{failed} client and server share no TLS version{offered} ({detail})"),
            )
        }
        TlsReason::BadCertificate
        | TlsReason::UnsupportedCertificate
        | TlsReason::CertificateRevoked
        | TlsReason::CertificateUnknown
        | TlsReason::CertificateRequired => (
            &TLS_CERTIFICATE_REJECTED,
            format!("{failed} a certificate was rejected: {} ({detail})", reason.as_str()),
        ),
        TlsReason::HandshakeFailure
        | TlsReason::InsufficientSecurity
        | TlsReason::UnrecognizedName
        | TlsReason::NoApplicationProtocol
        | TlsReason::IllegalParameter => (
            &TLS_NO_COMMON_PARAMETERS,
            format!("{failed} the peers found no parameters both accept: {} ({detail})", reason.as_str()),
        ),
        TlsReason::PeerClosed => (
            &TLS_PEER_CLOSED,
            format!("{failed} {name} closed the connection during the handshake"),
        ),
        TlsReason::NotTls => (
            &TLS_NOT_TLS,
            format!("{failed} the peer does not speak TLS on that port"),
        ),
        TlsReason::Stalled => (
            &TLS_STALLED,
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
            &TLS_ERROR,
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

fn syscall(r: &SyscallAlert) -> Option<Classified> {
    let errno = r.errno? as i32;
    let name = r.errno_name.as_deref().unwrap_or("an error");
    let call = &r.syscall;
    let (cause, meaning) = match errno {
        libc::EMFILE => (
            &FD_LIMIT,
            "the process hit its file-descriptor limit (RLIMIT_NOFILE)".to_string(),
        ),
        libc::ENFILE => (
            &SYSTEM_FD_LIMIT,
            "the system-wide open-file table is full (fs.file-max)".to_string(),
        ),
        libc::ENOSPC => (
            &NO_SPACE,
            "no space left on the device (blocks or inodes)".to_string(),
        ),
        libc::EACCES | libc::EPERM => (
            &PERMISSION_DENIED,
            "permission denied: file modes, capabilities or a security module refuse it"
                .to_string(),
        ),
        libc::ENOMEM => (
            &OUT_OF_MEMORY,
            "the kernel could not allocate memory for the call".to_string(),
        ),
        libc::ECONNREFUSED => (
            &SYSCALL_CONNECTION_REFUSED,
            "nothing listens at the address connected to".to_string(),
        ),
        _ => (&SYSCALL_ERRORS, errno_meaning(errno)),
    };
    Some(Classified {
        cause,
        sentence: format!("{call} failed with {name} — {meaning}"),
        target: Target::Syscall(call.clone()),
        weight: r.count.max(1),
        conn_id: None,
        comm: Some(r.comm.clone()),
        seen_unix_ns: r.ts_unix_ns,
        // count / rate is the interval the burst was measured over.
        over_ns: if r.rate_per_s > 0.0 {
            (r.count as f64 / r.rate_per_s * 1e9) as u64
        } else {
            0
        },
    })
}

/// A failed lookup. NXDOMAIN is against the name (the server answered: the name is
/// wrong); the others are against the server. NXDOMAINs of a search-list walk's
/// expansions are the resolver's routine, not failures: only the name as asked (the
/// walk's base) is, once every expansion failed too.
fn dns(r: &DnsRecord) -> Option<Classified> {
    let kind = r.failure_kind()?;
    let name = &r.query_name;
    let server = r.server;
    let (cause, sentence, target) = match kind {
        "NXDOMAIN" => {
            let sentence = match &r.search {
                Some(s) if s.base != *name => return None,
                Some(s) => format!(
                    "lookup of {name} failed — NXDOMAIN for the name and its {} search-list expansions: no such name (a wrong service or namespace name?)",
                    s.nxdomain_before
                ),
                None => format!(
                    "lookup of {name} failed — NXDOMAIN: no such name (a wrong service or namespace name?)"
                ),
            };
            (&DNS_NXDOMAIN, sentence, Target::Name(name.clone()))
        }
        "SERVFAIL" => (
            &DNS_SERVFAIL,
            format!(
                "lookup of {name} failed — SERVFAIL from {server}: the server could not get an answer (its upstream is failing, or the zone is broken)"
            ),
            Target::Address(server),
        ),
        "REFUSED" => (
            &DNS_REFUSED,
            format!(
                "lookup of {name} failed — REFUSED by {server}: the server will not answer this client (an ACL, or not a recursive resolver)"
            ),
            Target::Address(server),
        ),
        "TIMEOUT" => (
            &DNS_TIMEOUT,
            format!(
                "DNS server {server} not answering — no answer to {} {name} after {} retries: the server is overloaded or its packets are dropped",
                r.query_type, r.retries
            ),
            Target::Address(server),
        ),
        rcode => (
            &DNS_ERROR,
            format!("lookup of {name} failed — {rcode} from {server}"),
            Target::Address(server),
        ),
    };
    Some(Classified {
        cause,
        sentence,
        target,
        weight: 1,
        conn_id: None,
        comm: r.comm.clone(),
        seen_unix_ns: r.timestamp_unix_ns,
        over_ns: 0,
    })
}

/// The C library's description of an errno, without Rust's "(os error N)" suffix.
fn errno_meaning(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error") {
        Some(i) => text[..i].to_lowercase(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tcp::Failure;
    use crate::events::tls::{FailureSource, TlsFailure};

    pub(crate) fn tcp_failed(errno: i32, syn_retransmits: u32) -> TcpRecord {
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
    fn tcp_failures_by_errno() {
        let c = classify(&Record::Tcp(tcp_failed(libc::ECONNREFUSED, 0)), None).unwrap();
        assert_eq!(c.cause.code, "refused");
        assert!(c.sentence.contains("nothing listens"), "{}", c.sentence);
        let c = classify(&Record::Tcp(tcp_failed(libc::ETIMEDOUT, 5)), None).unwrap();
        assert_eq!(c.cause.code, "timed_out");
        assert!(
            c.sentence.contains("after 5 SYN retransmits"),
            "{}",
            c.sentence
        );
        let c = classify(&Record::Tcp(tcp_failed(libc::ENETUNREACH, 0)), None).unwrap();
        assert_eq!(c.cause.code, "unreachable");
        assert!(c.sentence.contains("network unreachable (ENETUNREACH)"));
        assert!(
            classify(&Record::Tcp(tcp_failed(0, 0)), None).is_none(),
            "aborted"
        );
        let mut reset = tcp_failed(libc::ECONNRESET, 0);
        reset.event = TcpEventKind::Close;
        assert_eq!(
            classify(&Record::Tcp(reset), None).unwrap().cause.code,
            "reset"
        );
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

    #[test]
    fn error_bursts_by_errno() {
        let alert = |errno: i32, name: &str| SyscallAlert {
            kind: AlertKind::ErrorBurst,
            ts_unix_ns: 1,
            id: 42,
            key_by: "pid",
            comm: "python3".into(),
            syscall: "openat".into(),
            nr: 257,
            errno: Some(errno as u32),
            errno_name: Some(name.into()),
            count: 250,
            rate_per_s: 250.0,
            max_latency_ns: None,
        };
        let c = classify(&Record::SyscallAlert(alert(libc::EMFILE, "EMFILE")), None).unwrap();
        assert_eq!(c.cause.code, "fd_limit");
        assert_eq!(c.weight, 250);
        assert!(c
            .sentence
            .contains("openat failed with EMFILE — the process hit its file-descriptor limit"));
        let c = classify(&Record::SyscallAlert(alert(libc::ENOENT, "ENOENT")), None).unwrap();
        assert_eq!(c.cause.code, "syscall_errors");
        assert!(
            c.sentence.ends_with("no such file or directory"),
            "{}",
            c.sentence
        );
    }

    fn lookup(rcode: Option<u16>) -> DnsRecord {
        crate::events::dns::sample(rcode, "payments.shop.svc.cluster.local")
    }

    #[test]
    fn dns_failures_name_the_name_or_the_server() {
        let c = classify(&Record::Dns(lookup(Some(3))), None).unwrap();
        assert_eq!(c.cause.code, "dns_nxdomain");
        assert_eq!(
            c.target,
            Target::Name("payments.shop.svc.cluster.local".into())
        );
        assert!(
            c.sentence.contains("NXDOMAIN: no such name"),
            "{}",
            c.sentence
        );
        let c = classify(&Record::Dns(lookup(Some(2))), None).unwrap();
        assert_eq!(c.cause.code, "dns_servfail");
        assert_eq!(c.target, Target::Address("10.96.0.10:53".parse().unwrap()));
        let c = classify(&Record::Dns(lookup(None)), None).unwrap();
        assert_eq!(c.cause.code, "dns_timeout");
        assert!(
            c.sentence
                .starts_with("DNS server 10.96.0.10:53 not answering")
                && c.sentence.contains("after 2 retries"),
            "{}",
            c.sentence
        );
        assert_eq!(
            classify(&Record::Dns(lookup(Some(5))), None)
                .unwrap()
                .cause
                .code,
            "dns_refused"
        );
        assert_eq!(
            classify(&Record::Dns(lookup(Some(4))), None)
                .unwrap()
                .cause
                .code,
            "dns_error"
        );
        assert!(classify(&Record::Dns(lookup(Some(0))), None).is_none());
        // A search-list expansion's NXDOMAIN is routine; the name as asked failing is not.
        let mut expansion = lookup(Some(3));
        expansion.search = Some(crate::events::dns::SearchExpansion {
            base: "payments".into(),
            nxdomain_before: 1,
        });
        assert!(classify(&Record::Dns(expansion.clone()), None).is_none());
        expansion.query_name = "payments".into();
        expansion.search.as_mut().unwrap().nxdomain_before = 4;
        let c = classify(&Record::Dns(expansion), None).unwrap();
        assert!(
            c.sentence.contains("its 4 search-list expansions"),
            "{}",
            c.sentence
        );
    }

    #[test]
    fn a_noerror_answer_recovers_its_server_and_its_names() {
        let mut ok = lookup(Some(0));
        ok.search = Some(crate::events::dns::SearchExpansion {
            base: "payments".into(),
            nxdomain_before: 2,
        });
        let mut out = Vec::new();
        successes(&Record::Dns(ok), &mut out);
        let targets: Vec<_> = out.iter().map(|s| s.target.clone()).collect();
        assert_eq!(
            targets,
            [
                Target::Address("10.96.0.10:53".parse().unwrap()),
                Target::Name("payments.shop.svc.cluster.local".into()),
                Target::Name("payments".into())
            ]
        );
        assert!(out.iter().all(|s| s.recovery == Recovery::DnsAnswer));
        out.clear();
        successes(&Record::Dns(lookup(Some(3))), &mut out);
        assert!(out.is_empty(), "an NXDOMAIN recovers nothing");
    }

    #[test]
    fn successes_that_recover() {
        let mut ok = tcp_failed(0, 0);
        ok.event = TcpEventKind::Connect;
        ok.failure = None;
        assert_eq!(
            success(&Record::Tcp(ok.clone())).unwrap().recovery,
            Recovery::TcpConnect
        );
        ok.direction = Direction::Passive;
        assert!(
            success(&Record::Tcp(ok)).is_none(),
            "an accepted connection says nothing of ours"
        );
    }

    #[test]
    fn every_cause_is_in_the_docs_table() {
        let doc = include_str!("../../../docs/rca.md");
        let codes: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        for cause in CAUSES {
            assert!(
                codes.contains(&cause.code),
                "{} missing from docs/rca.md",
                cause.code
            );
        }
        for code in &codes {
            assert!(
                CAUSES.iter().any(|c| c.code == *code),
                "docs/rca.md lists unknown cause {code}"
            );
        }
    }
}
