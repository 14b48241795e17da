//! `prometheus:` in the configuration: the node-local scrape endpoint (`/metrics`,
//! `/healthz`, `/readyz`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// The endpoint is on by default, as the peers' are (Tetragon :2112, Retina :10093,
/// ebpf_exporter :9435): the DaemonSet's liveness and readiness probes need it.
///
/// It binds all addresses because, with `hostNetwork: true`, the kubelet's HTTP probes
/// and an in-cluster Prometheus reach the pod at the node's IP, never at 127.0.0.1: a
/// loopback default would make every probe fail. What it serves is the agent's own
/// counters (no record content, no write path); the per-record metrics, whose labels name
/// processes and peers, are off unless `records` is set. A bare host that wants it
/// private sets `listen: 127.0.0.1:9465`.
///
/// Port 9465: clear of the peers above, of Prometheus' own (9090-9094), node_exporter
/// (9100) and the OpenTelemetry SDKs' Prometheus exporter (9464), which often runs on the
/// same node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusSection {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub records: bool,
}

pub const DEFAULT_PORT: u16 = 9465;

impl Default for PrometheusSection {
    fn default() -> Self {
        PrometheusSection {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            records: false,
        }
    }
}

impl PrometheusSection {
    pub const DOCS: crate::config::Docs = &[
        (
            "",
            "The Prometheus endpoint: /metrics (the agent's health), /healthz and /readyz.",
        ),
        (
            "enabled",
            "Serve the endpoint (the DaemonSet's probes use it).",
        ),
        (
            "listen",
            "Address and port; all addresses by default, so that probes and scrapes reach a hostNetwork pod at the node's IP.",
        ),
        (
            "records",
            "Also expose the TCP, TLS and syscall metrics, bounded like OTLP's (export.series_limit, metric_pids, metric_peers, buckets).",
        ),
    ];

    pub fn validate(&self, at: &str, p: &mut Problems) {
        if self.enabled && self.listen.port() == 0 {
            p.push(
                format!("{at}.listen"),
                "port 0 picks a random port that no scrape configuration can name",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_refused() {
        let mut p = Problems::default();
        let s = PrometheusSection {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        };
        s.validate("prometheus", &mut p);
        assert_eq!(p.0.len(), 1);
        assert_eq!(p.0[0].path, "prometheus.listen");
    }
}
