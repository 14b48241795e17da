//! The record metrics behind `/metrics` when `prometheus.records` is set: the OTLP
//! exporter's aggregation (same instruments, attributes and series cap), fed from the
//! record stream and read at scrape time.

use std::sync::{atomic::Ordering, Arc, Mutex};

use tokio::sync::broadcast::{error::RecvError, Receiver};

use crate::{
    agent::SharedRecord,
    export::metrics::{MetricsState, Options},
    metadata::Resolver,
    stats::Counters,
};

pub type Aggregation = Arc<Mutex<MetricsState>>;

pub fn spawn(
    opts: Options,
    mut stream: Receiver<SharedRecord>,
    resolver: Arc<Resolver>,
    counters: Arc<Counters>,
) -> (Aggregation, tokio::task::JoinHandle<()>) {
    let agg = Arc::new(Mutex::new(MetricsState::new(opts, super::now_unix_ns())));
    let state = agg.clone();
    let own_pid = std::process::id();
    let task = tokio::spawn(async move {
        loop {
            match stream.recv().await {
                Ok(record) => {
                    // The agent's own traffic (scrapes, exports) says nothing about the node.
                    if record.subject().pid == Some(own_pid) {
                        continue;
                    }
                    let identity = resolver.identify(record.subject());
                    let mut m = state.lock().unwrap_or_else(|p| p.into_inner());
                    m.observe(&record, &identity, super::now_unix_ns());
                }
                Err(RecvError::Lagged(n)) => {
                    counters.records_lagged.fetch_add(n, Ordering::Relaxed);
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
    (agg, task)
}

/// The metrics now (cumulative) and the overflow count.
pub fn read(agg: &Aggregation) -> (Vec<opentelemetry_proto::tonic::metrics::v1::Metric>, i64) {
    let mut m = agg.lock().unwrap_or_else(|p| p.into_inner());
    let (metrics, _) = m.collect(super::now_unix_ns());
    (metrics, m.overflowed())
}
