//! The one contract of every consumer of the record stream (the printer, the OTLP
//! exporter, the local API, the RCA engine, the Prometheus endpoint): what it gets from
//! the agent. A sink consumes `records` until the channel closes (the agent stopped and
//! drained its rings); `shutdown` tells it earlier that the agent is stopping, for sinks
//! with clients or timers of their own.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::{
    agent::SharedRecord,
    metadata::Resolver,
    stats::Counters,
    status::{self, StatusHandle},
};

pub struct SinkContext {
    /// Every record decoded from the moment the context was made.
    pub records: broadcast::Receiver<SharedRecord>,
    /// Identities of records (process, container, pod, peer workload).
    pub resolver: Arc<Resolver>,
    /// The agent's counters; a sink that misses records (lagged) adds them here.
    pub counters: Arc<Counters>,
    /// The agent's whole status, on request.
    pub status: StatusHandle,
    /// Turns true when the agent begins to stop.
    pub shutdown: watch::Receiver<bool>,
}

impl SinkContext {
    /// A context fed by the caller's channel, outside a running agent (tests, benches):
    /// node-local identities, fresh counters, no status, never shut down.
    pub fn standalone(records: broadcast::Receiver<SharedRecord>) -> SinkContext {
        let (tx, shutdown) = watch::channel(false);
        // The receiver reports a change only when a value is sent; keeping the sender
        // alive is not needed for `borrow()`, and `changed()` then errors, which sinks
        // treat as "never".
        drop(tx);
        SinkContext {
            records,
            resolver: Arc::new(Resolver::node_local()),
            counters: Arc::new(Counters::default()),
            status: status::StatusHandle::unavailable(),
            shutdown,
        }
    }
}

/// Waits until `shutdown` turns true; forever if its sender is gone without that.
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
