//! Filters of `GetEvents`, parsed once per call and evaluated in the agent before a record
//! is queued for the client. Conditions of different kinds must all hold; the values of
//! one kind are alternatives.
//!
//! Record fields are read from the record's JSON line (the one the client receives), so
//! every record type, including ones added later (`rca`), is filtered by the same names:
//! `type`, `pid`, `comm`, `local`/`remote`/`server`/`target_address`. Whether a record is
//! a failure, and the names of what went wrong, each record type says itself
//! ([`Filtered`], next to its family's code). Identity fields come from the record's
//! resolved identity.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::proto;
use crate::metadata::{AttrValue, Identity};

/// Every record type a filter may name: the `type` tags of `events::Record`, each probe
/// family's (from its `family::Descriptor`), then `rca`, the RCA engine's incidents.
pub fn record_types() -> impl Iterator<Item = &'static str> {
    crate::family::REGISTERED
        .iter()
        .flat_map(|f| f.record_types.iter().copied())
        .chain(["rca"])
}

/// Identity attributes that name a pod's workload, most specific first.
const WORKLOAD_KEYS: &[&str] = &[
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.cronjob.name",
    "k8s.job.name",
    "k8s.replicaset.name",
    "k8s.replicationcontroller.name",
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    #[error("unknown record type {0:?} (known: {known})", known = record_types().collect::<Vec<_>>().join(", "))]
    UnknownType(String),
    #[error("bad peer {0:?}: not an address or a CIDR (10.0.0.7, 10.0.0.0/8, fd00::/8)")]
    BadPeer(String),
    #[error("bad port {0}: ports are 1 to 65535")]
    BadPort(u32),
    #[error("empty {0} value")]
    Empty(&'static str),
}

#[derive(Clone, Debug, Default)]
pub struct Filter {
    types: Vec<String>,
    failures_only: bool,
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
    workload: Option<String>,
    comm: Option<String>,
    pid: Option<u32>,
    peers: Vec<IpNet>,
    ports: Vec<u16>,
    reasons: Vec<String>,
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

impl Filter {
    pub fn parse(r: &proto::EventsRequest) -> Result<Filter, FilterError> {
        let mut types = Vec::new();
        for t in &r.types {
            let t = t.trim().to_ascii_lowercase();
            if !record_types().any(|known| known == t) {
                return Err(FilterError::UnknownType(t));
            }
            types.push(t);
        }
        let mut peers = Vec::new();
        for p in &r.peers {
            peers.push(parse_peer(p)?);
        }
        let mut ports = Vec::new();
        for &p in &r.ports {
            match u16::try_from(p) {
                Ok(p) if p != 0 => ports.push(p),
                _ => return Err(FilterError::BadPort(p)),
            }
        }
        let mut reasons = Vec::new();
        for reason in &r.reasons {
            reasons.push(opt(reason).ok_or(FilterError::Empty("reason"))?);
        }
        // `ns/name` as `kubectl` and `hubble observe --pod` write it.
        let (mut namespace, mut pod) = (opt(&r.namespace), opt(&r.pod));
        if let Some((ns, name)) = pod.clone().as_deref().and_then(|p| p.split_once('/')) {
            namespace = opt(ns).or(namespace);
            pod = opt(name);
        }
        Ok(Filter {
            types,
            failures_only: r.failures_only,
            namespace,
            pod,
            container: opt(&r.container),
            workload: opt(&r.workload),
            comm: opt(&r.comm),
            pid: (r.pid != 0).then_some(r.pid),
            peers,
            ports,
            reasons,
        })
    }

    /// True when the record's fields are needed, not only its type and identity.
    pub fn needs_fields(&self) -> bool {
        self.failures_only
            || self.comm.is_some()
            || self.pid.is_some()
            || !self.peers.is_empty()
            || !self.ports.is_empty()
            || !self.reasons.is_empty()
    }

    pub fn matches(&self, record: &dyn Candidate) -> bool {
        if !self.types.is_empty() && !self.types.iter().any(|t| t == record.kind()) {
            return false;
        }
        if self.namespace.is_some()
            || self.pod.is_some()
            || self.container.is_some()
            || self.workload.is_some()
        {
            let Some(id) = record.identity() else {
                return false;
            };
            if !self.identity_matches(id) {
                return false;
            }
        }
        if !self.needs_fields() {
            return true;
        }
        if self.failures_only && !record.is_failure() {
            return false;
        }
        let f = record.fields();
        if let Some(comm) = &self.comm {
            if f.comm() != Some(comm.as_str()) {
                return false;
            }
        }
        if let Some(pid) = self.pid {
            let from_identity = record.identity().and_then(|i| match i.get("process.pid") {
                Some(AttrValue::Int(p)) => u32::try_from(*p).ok(),
                _ => None,
            });
            if f.pid().or(from_identity) != Some(pid) {
                return false;
            }
        }
        if !self.peers.is_empty() {
            let Some(peer) = f.peer() else { return false };
            if !self.peers.iter().any(|n| n.contains(&peer.ip())) {
                return false;
            }
        }
        if !self.ports.is_empty() && !f.ports().any(|p| self.ports.contains(&p)) {
            return false;
        }
        if !self.reasons.is_empty()
            && !record
                .reasons()
                .iter()
                .any(|r| self.reasons.iter().any(|x| x.eq_ignore_ascii_case(r)))
        {
            return false;
        }
        true
    }

    fn identity_matches(&self, id: &Identity) -> bool {
        if let Some(ns) = &self.namespace {
            if id.get_str("k8s.namespace.name") != Some(ns) {
                return false;
            }
        }
        if let Some(pod) = &self.pod {
            if !id
                .get_str("k8s.pod.name")
                .is_some_and(|p| p.starts_with(pod.as_str()))
            {
                return false;
            }
        }
        if let Some(c) = &self.container {
            let by_name = id.get_str("k8s.container.name") == Some(c);
            let by_id = id
                .get_str("container.id")
                .is_some_and(|i| i.starts_with(c.as_str()));
            if !by_name && !by_id {
                return false;
            }
        }
        if let Some(w) = &self.workload {
            if !WORKLOAD_KEYS.iter().any(|k| id.get_str(k) == Some(w)) {
                return false;
            }
        }
        true
    }
}

fn parse_peer(s: &str) -> Result<IpNet, FilterError> {
    let t = s.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    t.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| FilterError::BadPeer(s.to_string()))
}

/// What the failure filters ask of a record type: implemented next to its family's code.
pub trait Filtered {
    /// Whether it reports something that went wrong (`--failures`).
    fn is_failure(&self) -> bool {
        false
    }

    /// The names it gives what went wrong (`--reason`, matched without case): a failure
    /// reason, an errno name, a cause, a response code.
    fn reasons(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// What a filter looks at in a record.
pub trait Candidate {
    /// The record's `type` tag.
    fn kind(&self) -> &str;
    fn identity(&self) -> Option<&Identity>;
    /// The record's own fields, read from its JSON on first use.
    fn fields(&self) -> &Fields;
    /// The record's [`Filtered`] answers.
    fn is_failure(&self) -> bool;
    fn reasons(&self) -> Vec<&str>;
}

/// The fields of a record's JSON that filters read; everything else is skipped. Each is
/// kept as whatever JSON it is, so a record type that uses a name differently (a `cause`
/// object) does not make the others unreadable.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Fields {
    #[serde(rename = "type")]
    kind: Option<Value>,
    pid: Option<Value>,
    comm: Option<Value>,
    local: Option<Value>,
    remote: Option<Value>,
    /// tls_certificate records name their peer `server`.
    server: Option<Value>,
    /// rca incidents name theirs `target_address`.
    target_address: Option<Value>,
    /// Timestamps under the names the record types use.
    timestamp_unix_ns: Option<Value>,
    ts_unix_ns: Option<Value>,
}

fn text(v: &Option<Value>) -> Option<&str> {
    v.as_ref().and_then(Value::as_str)
}

fn addr(v: &Option<Value>) -> Option<SocketAddr> {
    text(v).and_then(|s| s.parse().ok())
}

impl Fields {
    /// The fields of one JSON line; a line that does not parse has none (and matches no
    /// field condition).
    pub fn from_json(json: &str) -> Fields {
        serde_json::from_str(json).unwrap_or_default()
    }

    pub fn kind(&self) -> Option<&str> {
        text(&self.kind)
    }

    pub fn comm(&self) -> Option<&str> {
        text(&self.comm)
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
            .as_ref()
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        addr(&self.remote)
            .or_else(|| addr(&self.server))
            .or_else(|| addr(&self.target_address))
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        [
            &self.local,
            &self.remote,
            &self.server,
            &self.target_address,
        ]
        .into_iter()
        .filter_map(addr)
        .map(|a| a.port())
    }

    pub fn time_unix_nano(&self) -> Option<u64> {
        self.timestamp_unix_ns
            .as_ref()
            .or(self.ts_unix_ns.as_ref())
            .and_then(Value::as_u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Record;

    struct Rec {
        kind: &'static str,
        identity: Option<Identity>,
        fields: Fields,
        record: Option<Record>,
    }

    impl Candidate for Rec {
        fn kind(&self) -> &str {
            self.kind
        }
        fn identity(&self) -> Option<&Identity> {
            self.identity.as_ref()
        }
        fn fields(&self) -> &Fields {
            &self.fields
        }
        fn is_failure(&self) -> bool {
            self.record.as_ref().is_some_and(|r| r.view().is_failure())
        }
        fn reasons(&self) -> Vec<&str> {
            self.record
                .as_ref()
                .map(|r| r.view().reasons())
                .unwrap_or_default()
        }
    }

    /// A real record, with the fields of its JSON line.
    fn of(record: Record) -> Rec {
        Rec {
            kind: record.kind(),
            identity: None,
            fields: Fields::from_json(&serde_json::to_string(&record).unwrap()),
            record: Some(record),
        }
    }

    fn refused() -> Rec {
        of(Record::Tcp(crate::events::tcp::sample_connect_failed(
            libc::ECONNREFUSED,
            0,
        )))
    }

    fn lookup(rcode: Option<u16>) -> Rec {
        of(Record::Dns(crate::events::dns::sample(rcode, "api.shop.")))
    }

    fn burst(errno: Option<i32>) -> Rec {
        of(Record::SyscallAlert(crate::events::syscalls::sample_alert(
            errno,
        )))
    }

    fn rec(json: &str) -> Rec {
        let fields = Fields::from_json(json);
        Rec {
            kind: match fields.kind() {
                Some("tcp") => "tcp",
                Some("tls") => "tls",
                Some("rca") => "rca",
                Some("syscall_alert") => "syscall_alert",
                _ => "security",
            },
            identity: None,
            fields,
            record: None,
        }
    }

    fn pod(ns: &str, name: &str, container: &str, deployment: &str) -> Identity {
        Identity {
            attributes: vec![
                ("process.pid".into(), AttrValue::Int(42)),
                ("container.id".into(), AttrValue::Str("abcdef0123".into())),
                ("k8s.namespace.name".into(), AttrValue::Str(ns.into())),
                ("k8s.pod.name".into(), AttrValue::Str(name.into())),
                (
                    "k8s.container.name".into(),
                    AttrValue::Str(container.into()),
                ),
                (
                    "k8s.deployment.name".into(),
                    AttrValue::Str(deployment.into()),
                ),
            ],
        }
    }

    fn filter(f: impl FnOnce(&mut proto::EventsRequest)) -> Filter {
        let mut r = proto::EventsRequest::default();
        f(&mut r);
        Filter::parse(&r).unwrap()
    }

    const REFUSED: &str = r#"{"type":"tcp","event":"connect_failed","timestamp_unix_ns":5,"conn_id":1,"direction":"active","local":"127.0.0.1:40000","remote":"10.1.2.3:8080","pid":7,"comm":"curl","failure":{"reason":"refused","errno":111,"errno_name":"ECONNREFUSED"},"identity":{"process.pid":7}}"#;
    const CONNECT: &str = r#"{"type":"tcp","event":"connect","timestamp_unix_ns":6,"local":"[::1]:40000","remote":"[::1]:443","pid":8,"comm":"wget"}"#;

    #[test]
    fn record_types_are_every_family_s_then_rca() {
        let types: Vec<&str> = record_types().collect();
        assert_eq!(
            types,
            [
                "tcp",
                "tls",
                "tls_certificate",
                "syscalls",
                "syscall_alert",
                "syscall_slow",
                "security",
                "dns",
                "rca"
            ]
        );
    }

    #[test]
    fn empty_filter_matches_everything() {
        let f = filter(|_| {});
        assert!(f.matches(&rec(REFUSED)));
        assert!(f.matches(&rec(CONNECT)));
        assert!(f.matches(&rec("not json")));
    }

    #[test]
    fn types_failures_comm_pid() {
        assert!(filter(|r| r.types = vec!["tcp".into()]).matches(&rec(REFUSED)));
        assert!(!filter(|r| r.types = vec!["tls".into(), "security".into()]).matches(&rec(REFUSED)));
        let failures = filter(|r| r.failures_only = true);
        assert!(failures.matches(&refused()));
        assert!(!failures.matches(&rec(CONNECT)));
        let mut connected = crate::events::tcp::sample_connect_failed(0, 0);
        connected.event = crate::events::tcp::TcpEventKind::Connect;
        connected.failure = None;
        assert!(!failures.matches(&of(Record::Tcp(connected))));
        assert!(failures.matches(&burst(Some(libc::EMFILE))));
        assert!(!failures.matches(&burst(None)));
        assert!(failures.matches(&lookup(Some(3))));
        assert!(failures.matches(&lookup(None)));
        assert!(!failures.matches(&lookup(Some(0))));
        assert!(filter(|r| r.comm = "curl".into()).matches(&rec(REFUSED)));
        assert!(!filter(|r| r.comm = "cur".into()).matches(&rec(REFUSED)));
        assert!(filter(|r| r.pid = 7).matches(&rec(REFUSED)));
        assert!(!filter(|r| r.pid = 8).matches(&rec(REFUSED)));
    }

    #[test]
    fn peers_ports_reasons() {
        let cidr = filter(|r| r.peers = vec!["10.0.0.0/8".into()]);
        assert!(cidr.matches(&rec(REFUSED)));
        assert!(!cidr.matches(&rec(CONNECT)));
        assert!(filter(|r| r.peers = vec!["::1".into()]).matches(&rec(CONNECT)));
        // A host address written with host bits set in a CIDR still means its network.
        assert!(filter(|r| r.peers = vec!["10.1.2.99/24".into()]).matches(&rec(REFUSED)));
        assert!(filter(|r| r.ports = vec![8080]).matches(&rec(REFUSED)));
        assert!(filter(|r| r.ports = vec![40000]).matches(&rec(REFUSED)));
        assert!(!filter(|r| r.ports = vec![443]).matches(&rec(REFUSED)));
        // An incident's peer is its target.
        let incident = r#"{"type":"rca","cause":"refused","target_address":"10.1.2.3:8080"}"#;
        assert!(cidr.matches(&rec(incident)));
        assert!(filter(|r| r.ports = vec![8080]).matches(&rec(incident)));
        assert!(filter(|r| r.reasons = vec!["refused".into()]).matches(&refused()));
        assert!(filter(|r| r.reasons = vec!["econnrefused".into()]).matches(&refused()));
        assert!(filter(|r| r.reasons = vec!["emfile".into()]).matches(&burst(Some(libc::EMFILE))));
        assert!(!filter(|r| r.reasons = vec!["timed_out".into()]).matches(&refused()));
        assert!(filter(|r| r.reasons = vec!["nxdomain".into()]).matches(&lookup(Some(3))));
        assert!(filter(|r| r.ports = vec![53]).matches(&lookup(Some(3))));
        assert!(filter(|r| r.reasons = vec!["timeout".into()]).matches(&lookup(None)));
        assert!(!filter(|r| r.reasons = vec!["refused".into()]).matches(&rec(CONNECT)));
    }

    #[test]
    fn identity_fields() {
        let mut r = rec(REFUSED);
        r.identity = Some(pod("shop", "checkout-7d9f-x2", "app", "checkout"));
        assert!(filter(|f| f.namespace = "shop".into()).matches(&r));
        assert!(!filter(|f| f.namespace = "shopping".into()).matches(&r));
        assert!(filter(|f| f.pod = "checkout".into()).matches(&r));
        assert!(filter(|f| f.pod = "shop/checkout-7d9f".into()).matches(&r));
        assert!(!filter(|f| f.pod = "other/checkout".into()).matches(&r));
        assert!(filter(|f| f.container = "app".into()).matches(&r));
        assert!(filter(|f| f.container = "abcdef".into()).matches(&r));
        assert!(!filter(|f| f.container = "sidecar".into()).matches(&r));
        assert!(filter(|f| f.workload = "checkout".into()).matches(&r));
        assert!(!filter(|f| f.workload = "cart".into()).matches(&r));
        // No identity: no pod condition can hold.
        assert!(!filter(|f| f.namespace = "shop".into()).matches(&rec(REFUSED)));
    }

    #[test]
    fn bad_filters_are_refused_with_their_value() {
        let bad = |f: fn(&mut proto::EventsRequest)| {
            let mut r = proto::EventsRequest::default();
            f(&mut r);
            Filter::parse(&r).unwrap_err()
        };
        let e = bad(|r| r.types = vec!["tcpp".into()]);
        assert_eq!(e, FilterError::UnknownType("tcpp".into()));
        assert!(e.to_string().contains("known: tcp, tls"), "{e}");
        assert_eq!(
            bad(|r| r.peers = vec!["10.0.0.0/33".into()]),
            FilterError::BadPeer("10.0.0.0/33".into())
        );
        assert_eq!(
            bad(|r| r.peers = vec!["example.com".into()]),
            FilterError::BadPeer("example.com".into())
        );
        assert_eq!(bad(|r| r.ports = vec![70000]), FilterError::BadPort(70000));
        assert_eq!(bad(|r| r.ports = vec![0]), FilterError::BadPort(0));
        // `rca` is accepted before its records exist.
        filter(|r| r.types = vec!["rca".into()]);
    }
}
