//! The Prometheus endpoint: a sink that serves `/metrics` (the agent's status document
//! read at scrape time, and optionally the record metrics of the OTLP aggregation),
//! `/healthz` and `/readyz` on `prometheus.listen`.

pub mod config;
pub mod exposition;
pub mod health;
mod records;
mod server;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use serde::Serialize;

pub use config::PrometheusSection;

use crate::{export::metrics, sink::SinkContext};

#[derive(Debug, thiserror::Error)]
#[error("prometheus.listen {addr}: {source}")]
pub struct StartError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// What the endpoint did; shown under `sinks.prometheus` in the status document.
#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    scrapes: AtomicU64,
    not_found: AtomicU64,
    bad_method: AtomicU64,
    /// Connections closed unanswered: over the connection limit.
    refused: AtomicU64,
    /// Connections ended by the per-connection deadline (a slow or idle client).
    timed_out: AtomicU64,
    /// Scrapes during which the run loop did not answer.
    status_missing: AtomicU64,
}

#[derive(Serialize)]
struct CountsView {
    listen: SocketAddr,
    requests: u64,
    scrapes: u64,
    not_found: u64,
    bad_method: u64,
    connections_refused: u64,
    connections_timed_out: u64,
    status_missing: u64,
    records: bool,
}

pub struct Prometheus {
    addr: SocketAddr,
    records: bool,
    counts: Arc<Counts>,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    consumer: Option<tokio::task::JoinHandle<()>>,
}

/// The record metrics' bounds are the OTLP exporter's keys (`export.series_limit`,
/// `metric_pids`, `metric_peers`, `metric_dns_names`, `buckets`): one setting bounds both.
pub fn record_options(export: &crate::export::config::ExportSection) -> metrics::Options {
    metrics::Options {
        temporality: crate::export::config::Temporality::Cumulative,
        buckets: export.buckets.clone(),
        series_limit: export.series_limit.max(1),
        pids: export.metric_pids,
        peers: export.metric_peers,
        dns_names: export.metric_dns_names,
        exponential: false,
    }
}

impl Prometheus {
    /// Binds the listener now (a port in use is an error at start) and serves it from
    /// the current tokio runtime. `records`: the record metrics' aggregation options.
    pub fn start(
        section: &PrometheusSection,
        records: Option<metrics::Options>,
        ctx: SinkContext,
    ) -> Result<Prometheus, StartError> {
        let addr = section.listen;
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|source| StartError { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let counts = Arc::new(Counts::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let SinkContext {
            records: stream,
            resolver,
            counters,
            status,
            ..
        } = ctx;
        let (aggregation, consumer) = match records {
            Some(opts) => {
                let (agg, task) = records::spawn(opts, stream, resolver, counters);
                (Some(agg), Some(task))
            }
            // Not subscribed: the broadcast channel does not wait for this sink.
            None => (None, None),
        };
        let state = server::State {
            status,
            records: aggregation,
            counts: counts.clone(),
        };
        let server = tokio::spawn(server::serve(listener, Arc::new(state), stopped));
        Ok(Prometheus {
            addr,
            records: consumer.is_some(),
            counts,
            stop,
            server,
            consumer,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint's account, for `Status.sinks`.
    pub fn stats(&self) -> serde_json::Value {
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::to_value(CountsView {
            listen: self.addr,
            requests: get(&c.requests),
            scrapes: get(&c.scrapes),
            not_found: get(&c.not_found),
            bad_method: get(&c.bad_method),
            connections_refused: get(&c.refused),
            connections_timed_out: get(&c.timed_out),
            status_missing: get(&c.status_missing),
            records: self.records,
        })
        .unwrap_or_default()
    }

    /// Closes the listener and ends the connections in flight.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.server).await;
        if let Some(c) = self.consumer {
            c.abort();
        }
    }
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
