//! The OTLP resource (who is reporting: `service.name`, `host.name`, `k8s.node.name`,
//! `k8s.cluster.name`, static attributes from config) and attribute helpers.

use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    resource::v1::Resource,
};

use crate::metadata::{AttrValue, Identity};

pub fn kv(key: &str, value: impl Into<any_value::Value>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(value.into()),
        }),
        ..Default::default()
    }
}

pub fn str_value(s: impl Into<String>) -> any_value::Value {
    any_value::Value::StringValue(s.into())
}

pub fn int_value(i: i64) -> any_value::Value {
    any_value::Value::IntValue(i)
}

pub fn attr_value(v: &AttrValue) -> any_value::Value {
    match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
    }
}

/// The attributes every TCP span and log record carries: transport, both endpoints and
/// the connection id that joins a connection's records.
pub fn tcp_endpoint_kvs(r: &crate::events::tcp::TcpRecord) -> Vec<KeyValue> {
    // Room for what spans and logs add after these, so the vector grows once.
    let mut kvs = Vec::with_capacity(16);
    kvs.extend([
        kv("network.transport", str_value("tcp")),
        kv("network.peer.address", str_value(r.remote.ip().to_string())),
        kv("network.peer.port", int_value(r.remote.port() as i64)),
        kv("network.local.address", str_value(r.local.ip().to_string())),
        kv("network.local.port", int_value(r.local.port() as i64)),
        kv("hostscope.tcp.conn_id", int_value(r.conn_id as i64)),
    ]);
    kvs
}

/// `network.type` of a connection.
pub fn network_type_kv(r: &crate::events::tcp::TcpRecord) -> KeyValue {
    kv(
        "network.type",
        str_value(if r.remote.is_ipv4() { "ipv4" } else { "ipv6" }),
    )
}

pub fn identity_kvs(identity: &Identity) -> Vec<KeyValue> {
    identity
        .attributes
        .iter()
        .map(|(k, v)| kv(k, attr_value(v)))
        .collect()
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "hostscope".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The node's own resource attributes. Later entries win (config over environment over
/// discovery), so a user can always correct what was discovered.
pub fn node_resource(static_attrs: &[(String, String)]) -> Vec<(String, String)> {
    let mut attrs: Vec<(String, String)> = vec![
        ("service.name".into(), "hostscope".into()),
        ("telemetry.sdk.name".into(), "hostscope".into()),
        ("telemetry.sdk.language".into(), "rust".into()),
        (
            "telemetry.sdk.version".into(),
            env!("CARGO_PKG_VERSION").into(),
        ),
    ];
    if let Some(host) = hostname() {
        attrs.push(("host.name".into(), host));
    }
    // The downward API's usual names for a DaemonSet's node and cluster.
    for (var, key) in [
        ("K8S_NODE_NAME", "k8s.node.name"),
        ("NODE_NAME", "k8s.node.name"),
        ("K8S_CLUSTER_NAME", "k8s.cluster.name"),
    ] {
        if let Ok(v) = std::env::var(var) {
            if !v.is_empty() {
                attrs.push((key.into(), v));
            }
        }
    }
    attrs.extend(static_attrs.iter().cloned());
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in attrs {
        match out.iter_mut().find(|(ok, _)| *ok == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out
}

pub fn to_resource(attrs: &[(String, String)], extra: Vec<KeyValue>) -> Resource {
    let mut attributes: Vec<KeyValue> = attrs.iter().map(|(k, v)| kv(k, str_value(v))).collect();
    attributes.extend(extra);
    Resource {
        attributes,
        ..Default::default()
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_overrides_discovered_attributes() {
        let attrs = node_resource(&[
            ("service.name".into(), "edge-agent".into()),
            ("deployment.environment".into(), "prod".into()),
        ]);
        let get = |k: &str| {
            attrs
                .iter()
                .find(|(ak, _)| ak == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("service.name"), Some("edge-agent"));
        assert_eq!(get("deployment.environment"), Some("prod"));
        assert!(get("host.name").is_some());
        assert_eq!(attrs.iter().filter(|(k, _)| k == "service.name").count(), 1);
    }
}
