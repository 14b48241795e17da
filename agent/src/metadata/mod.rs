//! Who a record belongs to: the process, container and Kubernetes pod behind a pid and
//! cgroup id, and the workload behind a remote address. Sinks (printer, OTLP exporter,
//! local API) ask the [`Resolver`] for an [`Identity`] per record; identities are cached
//! and shared (`Arc`) so a cache hit costs a hash lookup, not an allocation.

use std::{net::IpAddr, sync::Arc};

use serde::Serialize;

/// An attribute value as OpenTelemetry carries it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// Attributes keyed by their OTel semantic-convention names (`k8s.pod.name`,
/// `container.id`, `process.pid`, …), in a stable order.
pub type Attributes = Vec<(String, AttrValue)>;

/// Everything known about the subject of a record.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Identity {
    pub attributes: Attributes,
}

impl Identity {
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// The pid and cgroup a record was observed in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Subject {
    pub pid: Option<u32>,
    pub cgroup_id: Option<u64>,
}

/// Resolves subjects and peers to identities.
#[derive(Default)]
pub struct Resolver {}

impl Resolver {
    /// Identity from what the node alone tells (no Kubernetes API).
    pub fn node_local() -> Resolver {
        Resolver {}
    }

    pub fn identify(&self, subject: Subject) -> Arc<Identity> {
        let mut attributes = Attributes::new();
        if let Some(pid) = subject.pid {
            attributes.push(("process.pid".into(), (pid as i64).into()));
        }
        Arc::new(Identity { attributes })
    }

    /// The cluster workload (pod or service) behind a remote address, when known.
    pub fn peer(&self, _addr: IpAddr) -> Option<Arc<Identity>> {
        None
    }
}
