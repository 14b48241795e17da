//! OTLP export: a sink on the agent's record channel that turns records into metrics
//! ([`metrics`]), spans ([`spans`]) and logs ([`logs`]), encodes them as OTLP requests,
//! queues them ([`queue`]) and sends them over gRPC or HTTP ([`transport`]) with retries
//! ([`retry`]). Every item that is not delivered is counted by signal and reason, shown in
//! the agent's stats and exported as self-metrics (`hostscope.export.*`).
//!
//! Two tasks: the encoder (records in, requests queued) and the sender ([`sender`]: one
//! request in flight, oldest first: order is kept, and with the disk queue an outage
//! replays in order). [`Exporter::reconfigure`] hands both a new configuration while they
//! run; the queue, the counters and the metric aggregation state carry over.

pub mod compress;
pub mod config;
pub mod connections;
pub mod failure;
pub mod logs;
pub mod metrics;
pub mod queue;
pub mod resource;
pub mod retry;
mod sender;
pub mod spans;
pub mod transport;

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

pub use config::{ConfigError, ExportConfig, ExportOverrides, ExportSection};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{ResourceMetrics, ScopeMetrics},
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message;
use serde::Serialize;
use tokio::{
    sync::{broadcast, broadcast::error::RecvError, mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{
    agent::SharedRecord,
    metadata::{Identity, Resolver},
    sink::SinkContext,
    stats::{AgentStats, Counters},
    status::StatusHandle,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Metrics,
    Traces,
    Logs,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Traces => "traces",
            Signal::Logs => "logs",
        }
    }

    pub fn parse(s: &str) -> Option<Signal> {
        match s {
            "metrics" => Some(Signal::Metrics),
            "traces" => Some(Signal::Traces),
            "logs" => Some(Signal::Logs),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    #[error("the exporter's {task} task has ended: cannot reconfigure it")]
    Stopped { task: &'static str },
}

/// What happened to exported items so far.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExportSnapshot {
    pub queue_len: usize,
    pub queue_bytes: u64,
    /// (signal, result, reason) -> items. Results: `sent`, `failed` (a non-retryable error
    /// or retries exhausted), `dropped` (never sent: queue full, lagged, shutdown),
    /// `rejected` (partial success).
    #[serde(serialize_with = "items_as_list")]
    pub items: BTreeMap<(&'static str, &'static str, String), u64>,
    pub retries: u64,
    pub requests_sent: u64,
    /// Request bytes sent, as on the wire: after compression (gRPC: with the 5-byte frame
    /// header).
    pub bytes_sent: u64,
    pub series: usize,
    /// The last failed attempt to send (why items pile up while a backend is down).
    pub last_failure: Option<failure::ExportFailure>,
}

fn items_as_list<S: serde::Serializer>(
    items: &BTreeMap<(&'static str, &'static str, String), u64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let list: Vec<_> = items
        .iter()
        .map(|((signal, result, reason), n)| {
            serde_json::json!({"signal": signal, "result": result, "reason": reason, "items": n})
        })
        .collect();
    list.serialize(s)
}

impl ExportSnapshot {
    pub fn count(&self, signal: &str, result: &str) -> u64 {
        self.items
            .iter()
            .filter(|((s, r, _), _)| *s == signal && *r == result)
            .map(|(_, n)| n)
            .sum()
    }
}

impl std::fmt::Display for ExportSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "export: queue {} requests / {} bytes, {} requests sent ({} bytes), {} retries, {} series",
            self.queue_len, self.queue_bytes, self.requests_sent, self.bytes_sent, self.retries, self.series
        )?;
        for ((signal, result, reason), n) in &self.items {
            write!(f, "; {signal} {result}")?;
            if !reason.is_empty() {
                write!(f, " ({reason})")?;
            }
            write!(f, "={n}")?;
        }
        if let Some(last) = &self.last_failure {
            write!(f, "; last failure: {last}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Shared {
    items: Mutex<BTreeMap<(&'static str, &'static str, String), u64>>,
    retries: std::sync::atomic::AtomicU64,
    requests_sent: std::sync::atomic::AtomicU64,
    bytes_sent: std::sync::atomic::AtomicU64,
    series: std::sync::atomic::AtomicUsize,
    agent: Mutex<Option<AgentStats>>,
    last_failure: Mutex<Option<failure::ExportFailure>>,
}

impl Shared {
    fn count(&self, signal: &'static str, result: &'static str, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        *items
            .entry((signal, result, reason.to_string()))
            .or_default() += n;
    }
}

pub struct Exporter {
    shared: Arc<Shared>,
    queue: Arc<queue::Queue>,
    encoder: JoinHandle<()>,
    sender: JoinHandle<()>,
    /// The instant the sender gives up (set by [`Exporter::stop`]).
    stop_sender: watch::Sender<Option<Instant>>,
    shutdown: watch::Sender<bool>,
    encoder_ctl: mpsc::Sender<EncoderUpdate>,
    sender_ctl: mpsc::Sender<sender::Update>,
    /// Reads the agent's stats for the self-metrics, once per export interval.
    stats_feed: JoinHandle<()>,
    stats_every: watch::Sender<Duration>,
    /// One reconfiguration at a time (the sender's and the encoder's parts in step).
    reconfiguring: tokio::sync::Mutex<()>,
}

/// A new configuration for the encoder, acknowledged once applied.
type EncoderUpdate = (Arc<ExportConfig>, oneshot::Sender<()>);

impl Exporter {
    /// Starts the encoder and sender tasks (inside tokio). Fails on a bad TLS file or an
    /// unusable disk queue; an unreachable backend is not an error (requests queue).
    pub fn start(config: ExportConfig, sink: SinkContext) -> Result<Exporter, ExportError> {
        let SinkContext {
            records,
            resolver,
            counters: agent_counters,
            status,
            ..
        } = sink;
        let transport = transport::Transport::new(&config)?;
        let queue = Arc::new(match &config.disk_queue {
            Some(dir) => queue::Queue::disk(dir, config.disk_queue_bytes)?,
            None => queue::Queue::memory(config.queue_bytes),
        });
        let shared = Arc::new(Shared::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (stop_sender, stop_rx) = watch::channel(None);
        let (encoder_ctl, encoder_ctl_rx) = mpsc::channel(1);
        let (sender_ctl, sender_ctl_rx) = mpsc::channel(1);
        let (stats_every, stats_every_rx) = watch::channel(config.interval);
        let stats_feed = tokio::spawn(feed_agent_stats(status, shared.clone(), stats_every_rx));
        let encoder = tokio::spawn(
            Encoder::new(&config, queue.clone(), shared.clone(), resolver).run(
                records,
                agent_counters,
                shutdown_rx,
                encoder_ctl_rx,
            ),
        );
        let sender = tokio::spawn(
            sender::Sender {
                transport,
                endpoints: config.endpoints.clone(),
                warnings: Default::default(),
                max_retry: config.max_retry,
                queue: queue.clone(),
                shared: shared.clone(),
                stop: stop_rx,
                ctl: sender_ctl_rx,
            }
            .run(),
        );
        Ok(Exporter {
            shared,
            queue,
            encoder,
            sender,
            stop_sender,
            shutdown,
            encoder_ctl,
            sender_ctl,
            stats_feed,
            stats_every,
            reconfiguring: tokio::sync::Mutex::new(()),
        })
    }

    /// The agent's latest stats, exported as self-metrics at the next interval.
    pub fn set_agent_stats(&self, stats: AgentStats) {
        *self.shared.agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
    }

    pub fn snapshot(&self) -> ExportSnapshot {
        snapshot(&self.shared, &self.queue)
    }

    /// Applies a new configuration to the running exporter without losing what is queued:
    /// transports (endpoints, protocol, headers, compression, timeouts, TLS), retry limit
    /// and queue bounds are replaced in the sender, and the requests waiting (in memory or
    /// on disk) go to the new endpoints; batching, interval, resource, temporality,
    /// buckets and series limit are replaced in the encoder, which keeps its metric
    /// aggregation state ([`metrics::MetricsState::reconfigure`] says what happens to
    /// histograms). Counters are never reset. A different `disk_queue` (or none) moves the
    /// queued requests into the new queue, in order; those beyond its bound are counted
    /// as dropped.
    ///
    /// A request in flight to the old endpoint is abandoned and sent again to the new one
    /// (it is delivered twice only if the old backend had taken it without answering).
    /// Returns once both tasks run with the new configuration. On error (a bad TLS file,
    /// an unusable disk queue directory) nothing has changed.
    pub async fn reconfigure(&self, config: ExportConfig) -> Result<(), ExportError> {
        let _one = self.reconfiguring.lock().await;
        let transport = transport::Transport::new(&config)?;
        let (done, applied) = oneshot::channel();
        let stopped = |task| ExportError::Stopped { task };
        self.sender_ctl
            .send(sender::Update {
                transport,
                endpoints: config.endpoints.clone(),
                max_retry: config.max_retry,
                disk_queue: config.disk_queue.clone(),
                queue_bytes: config.queue_bytes,
                disk_queue_bytes: config.disk_queue_bytes,
                done,
            })
            .await
            .map_err(|_| stopped("sender"))?;
        applied.await.map_err(|_| stopped("sender"))??;
        self.stats_every.send_replace(config.interval);
        let (done, applied) = oneshot::channel();
        self.encoder_ctl
            .send((Arc::new(config), done))
            .await
            .map_err(|_| stopped("encoder"))?;
        applied.await.map_err(|_| stopped("encoder"))
    }

    /// Encodes what is pending, then lets the sender deliver the queue until `grace` after
    /// the call, and returns by then (plus [`STOP_MARGIN`]) whatever the transport is doing:
    /// a request in flight, a connect or a backoff is abandoned at the deadline. A memory
    /// queue's leftovers are counted as dropped (`shutdown`); a disk queue keeps them for
    /// the next start.
    pub async fn stop(mut self, grace: Duration) -> ExportSnapshot {
        let deadline = Instant::now() + grace;
        self.stats_feed.abort();
        let _ = self.shutdown.send(true);
        // The encoder's last flush is CPU work (and disk writes), no network: awaited.
        let _ = (&mut self.encoder).await;
        let _ = self.stop_sender.send(Some(deadline));
        self.queue.notify.notify_one();
        // The sender honours the deadline itself; the margin only covers a future that
        // would not yield in time, which is then cut off.
        let hard = tokio::time::Instant::from_std(deadline + STOP_MARGIN);
        if tokio::time::timeout_at(hard, &mut self.sender)
            .await
            .is_err()
        {
            self.sender.abort();
        }
        for b in self.queue.drain_memory() {
            self.shared
                .count(b.signal.as_str(), "dropped", "shutdown", b.items);
        }
        snapshot(&self.shared, &self.queue)
    }
}

/// Keeps the self-metrics' copy of the agent's stats fresh: one status read per export
/// interval (a stopping agent's final stats come from [`Exporter::set_agent_stats`]).
async fn feed_agent_stats(
    status: StatusHandle,
    shared: Arc<Shared>,
    mut every: watch::Receiver<Duration>,
) {
    loop {
        let period = *every.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            // A new interval starts counting now.
            Ok(()) = every.changed() => continue,
        }
        if let Some(s) = status.get().await {
            *shared.agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.agent);
        }
    }
}

/// How late past its grace [`Exporter::stop`] may return at most.
pub const STOP_MARGIN: Duration = Duration::from_millis(250);

fn snapshot(shared: &Shared, queue: &queue::Queue) -> ExportSnapshot {
    let (queue_len, queue_bytes) = queue.len();
    ExportSnapshot {
        queue_len,
        queue_bytes,
        items: shared
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        retries: shared.retries.load(Ordering::Relaxed),
        requests_sent: shared.requests_sent.load(Ordering::Relaxed),
        bytes_sent: shared.bytes_sent.load(Ordering::Relaxed),
        series: shared.series.load(Ordering::Relaxed),
        last_failure: shared
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    }
}

/// Spans or logs waiting for a batch, grouped by the identity that goes on their resource.
struct Pending<T> {
    groups: Vec<(Arc<Identity>, Vec<T>)>,
    len: usize,
}

impl<T> Pending<T> {
    fn new() -> Self {
        Pending {
            groups: Vec::new(),
            len: 0,
        }
    }

    fn push(&mut self, identity: &Arc<Identity>, item: T) {
        self.len += 1;
        match self
            .groups
            .iter_mut()
            .find(|(id, _)| Arc::ptr_eq(id, identity) || **id == **identity)
        {
            Some((_, items)) => items.push(item),
            None => self.groups.push((identity.clone(), vec![item])),
        }
    }

    fn take(&mut self) -> Vec<(Arc<Identity>, Vec<T>)> {
        self.len = 0;
        std::mem::take(&mut self.groups)
    }
}

pub struct Encoder {
    node: Vec<(String, String)>,
    metrics: metrics::MetricsState,
    spans: Pending<Span>,
    logs: Pending<LogRecord>,
    /// Present with `--otlp-connection-spans`.
    connections: Option<connections::ConnectionSpans>,
    max_batch: usize,
    interval: Duration,
    /// Each signal's wire compression, which its requests are stored with.
    wire: Wire,
    queue: Arc<queue::Queue>,
    shared: Arc<Shared>,
    resolver: Arc<Resolver>,
    /// The agent's own pid: its records are not exported (see [`Encoder::handle`]).
    own_pid: u32,
    /// One log record per failure, besides the RCA incidents.
    failure_logs: bool,
}

impl Encoder {
    fn new(
        config: &ExportConfig,
        queue: Arc<queue::Queue>,
        shared: Arc<Shared>,
        resolver: Arc<Resolver>,
    ) -> Encoder {
        let now = crate::events::Clock::now().unix_ns(crate::events::monotonic_ns());
        Encoder {
            node: resource::node_resource(&config.resource),
            metrics: metrics::MetricsState::new(metrics_options(config), now),
            spans: Pending::new(),
            logs: Pending::new(),
            connections: config
                .connection_spans
                .then(|| connections::ConnectionSpans::new(connections::MAX_PENDING_CONNECTIONS)),
            max_batch: config.max_batch,
            interval: config.interval,
            wire: Wire::of(config),
            queue,
            shared,
            resolver,
            own_pid: std::process::id(),
            failure_logs: config.failure_logs,
        }
    }

    async fn run(
        mut self,
        mut records: broadcast::Receiver<SharedRecord>,
        agent_counters: Arc<Counters>,
        mut shutdown: watch::Receiver<bool>,
        mut ctl: mpsc::Receiver<EncoderUpdate>,
    ) {
        let new_tick = |every: Duration| {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        };
        let mut tick = new_tick(self.interval);
        loop {
            tokio::select! {
                r = records.recv() => match r {
                    Ok(record) => self.handle(&record),
                    Err(RecvError::Lagged(n)) => {
                        // The exporter fell behind the probes: counted twice, as the
                        // agent's lagged records and as exporter drops.
                        agent_counters.records_lagged.fetch_add(n, Ordering::Relaxed);
                        self.shared.count("records", "dropped", "lagged", n);
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = tick.tick() => self.flush_all(),
                Some((config, done)) = ctl.recv() => {
                    if config.interval != self.interval {
                        tick = new_tick(config.interval);
                    }
                    self.reconfigure(&config);
                    let _ = done.send(());
                }
                _ = shutdown.changed() => break,
            }
        }
        // What the channel still holds when we are told to stop is exported too.
        while let Ok(record) = records.try_recv() {
            self.handle(&record);
        }
        self.settle_connections(true);
        self.flush_all();
    }

    /// The encoder's part of [`Exporter::reconfigure`]: spans and logs waiting for their
    /// batch stay and go out with the new resource; metric series are kept.
    fn reconfigure(&mut self, config: &ExportConfig) {
        self.node = resource::node_resource(&config.resource);
        self.metrics
            .reconfigure(metrics_options(config), now_unix_ns());
        match (config.connection_spans, self.connections.is_some()) {
            (false, true) => {
                // Their spans so far are exported; no more are started.
                self.settle_connections(true);
                self.connections = None;
            }
            (true, false) => {
                self.connections = Some(connections::ConnectionSpans::new(
                    connections::MAX_PENDING_CONNECTIONS,
                ))
            }
            _ => {}
        }
        self.interval = config.interval;
        self.max_batch = config.max_batch;
        self.wire = Wire::of(config);
        self.failure_logs = config.failure_logs;
        if self.spans.len >= self.max_batch {
            self.flush_spans();
        }
        if self.logs.len >= self.max_batch {
            self.flush_logs();
        }
    }

    /// Records of the agent's own process are left out of spans, logs and metrics and
    /// counted (`records` / `excluded` / `own_process`): while the backend is down the
    /// exporter's own failed connects would otherwise be exported as connect failures,
    /// more of them the longer the outage, and they say nothing about the node.
    pub fn handle(&mut self, record: &crate::events::Record) {
        if record.subject().pid == Some(self.own_pid) {
            self.shared.count("records", "excluded", "own_process", 1);
            return;
        }
        let now = now_unix_ns();
        let identity = self.resolver.identify(record.subject());
        self.metrics.observe(record, &identity, now);
        // The remote workload (pod, service) when the resolver knows it: on spans and
        // logs only, as `hostscope.peer.<key>` (never on metrics: unbounded).
        let peer: Vec<_> = record
            .peer()
            .and_then(|addr| self.resolver.peer(addr.ip()))
            .map(|id| {
                id.attributes
                    .iter()
                    .map(|(k, v)| {
                        resource::kv(&format!("hostscope.peer.{k}"), resource::attr_value(v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let (Some(c), crate::events::Record::Tcp(t)) = (self.connections.as_mut(), record) {
            let dropped = c.observe(t, &identity, &peer);
            if dropped > 0 {
                self.shared.count(
                    Signal::Traces.as_str(),
                    "dropped",
                    "pending_connections_full",
                    dropped,
                );
            }
        }
        if let Some(mut span) = spans::span(record) {
            span.attributes.extend(peer.iter().cloned());
            self.spans.push(&identity, span);
            if self.spans.len >= self.max_batch {
                self.flush_spans();
            }
        }
        if let Some(mut log) = logs::log(record, now, self.failure_logs) {
            log.attributes.extend(peer);
            self.logs.push(&identity, log);
            if self.logs.len >= self.max_batch {
                self.flush_logs();
            }
        }
    }

    fn enqueue(&self, signal: Signal, items: u64, payload: Vec<u8>) {
        if items == 0 {
            return;
        }
        // Compressed once, here: the queue's bounds count what is stored, and the sender
        // sends these bytes as they are.
        let batch = queue::Batch::new(signal, items, &payload, self.wire.of_signal(signal));
        if let Err(full) = self.queue.push(batch) {
            self.shared
                .count(signal.as_str(), "dropped", full.reason(), items);
        }
    }

    pub fn flush_all(&mut self) {
        self.settle_connections(false);
        self.flush_metrics();
        self.flush_spans();
        self.flush_logs();
    }

    /// Connection spans whose late resets had time to arrive join the span batch.
    fn settle_connections(&mut self, all: bool) {
        let Some(c) = self.connections.as_mut() else {
            return;
        };
        for (identity, span) in c.take_settled(now_unix_ns(), all) {
            self.spans.push(&identity, span);
        }
    }

    fn flush_metrics(&mut self) {
        let now = now_unix_ns();
        let agent = self
            .shared
            .agent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let snap = snapshot(&self.shared, &self.queue);
        // Without the agent's stats (tests driving the encoder alone) the exporter's own
        // health is still reported.
        self.metrics
            .observe_health(&agent.unwrap_or_default(), &snap, now);
        self.metrics.observe_metadata(&self.resolver.stats(), now);
        let (metrics, points) = self.metrics.collect(now);
        self.shared
            .series
            .store(self.metrics.series_count(), Ordering::Relaxed);
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource::to_resource(&self.node, Vec::new())),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(resource::scope()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        self.enqueue(Signal::Metrics, points as u64, req.encode_to_vec());
    }

    fn flush_spans(&mut self) {
        let n = self.spans.len as u64;
        let groups = self.spans.take();
        let req = ExportTraceServiceRequest {
            resource_spans: groups
                .into_iter()
                .map(|(id, spans)| ResourceSpans {
                    resource: Some(resource::to_resource(
                        &self.node,
                        resource::identity_kvs(&id),
                    )),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(resource::scope()),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        };
        self.enqueue(Signal::Traces, n, req.encode_to_vec());
    }

    fn flush_logs(&mut self) {
        let n = self.logs.len as u64;
        let groups = self.logs.take();
        let req = ExportLogsServiceRequest {
            resource_logs: groups
                .into_iter()
                .map(|(id, log_records)| ResourceLogs {
                    resource: Some(resource::to_resource(
                        &self.node,
                        resource::identity_kvs(&id),
                    )),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(resource::scope()),
                        log_records,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        };
        self.enqueue(Signal::Logs, n, req.encode_to_vec());
    }
}

/// The wire compression of each signal (they may differ: per-signal variables).
#[derive(Clone, Copy)]
struct Wire([config::Compression; 3]);

impl Wire {
    fn of(config: &ExportConfig) -> Wire {
        Wire([Signal::Metrics, Signal::Traces, Signal::Logs].map(|s| config.signal(s).compression))
    }

    fn of_signal(&self, signal: Signal) -> config::Compression {
        match signal {
            Signal::Metrics => self.0[0],
            Signal::Traces => self.0[1],
            Signal::Logs => self.0[2],
        }
    }
}

fn metrics_options(config: &ExportConfig) -> metrics::Options {
    metrics::Options {
        temporality: config.temporality,
        buckets: config.buckets.clone(),
        series_limit: config.series_limit,
        pids: config.metric_pids,
        peers: config.metric_peers,
        dns_names: config.metric_dns_names,
        exponential: config.exponential_histograms,
    }
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
