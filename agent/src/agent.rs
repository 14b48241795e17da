//! The running agent: loaded probes, one consumer task per ring, and a broadcast channel
//! of decoded records that every sink (the printer today; exporters and the local API
//! later) subscribes to independently.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap, RingBuf},
    Ebpf,
};
use hostscope_common::{
    tcp::{TCP_EVENTS_MAP, TCP_STATS_MAP},
    tls::{
        TLS_FAILURES_MAP, TLS_FLOWS_MAP, TLS_LIB_EVENTS_MAP, TLS_STATS_MAP, TLS_WIRE_EVENTS_MAP,
    },
};
use tokio::{
    sync::{broadcast, mpsc, watch},
    task::JoinHandle,
};

use crate::{
    events::{self, Clock, Record},
    loader::{self, LoadError, LoaderConfig, ProbeStatus},
    metadata::{MetadataOptions, Resolver},
    ring,
    stats::{self, AgentStats, Counters},
    tls::{
        task::{TlsInput, TlsMaps, TrackerTask},
        tracker::TrackerStats,
    },
};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub loader: LoaderConfig,
    /// Upper bound on how long a record waits in a ring before we read it.
    pub poll_interval: Duration,
    /// Records buffered per subscriber before a slow one starts missing them (counted).
    pub channel_capacity: usize,
    /// Process / container / pod identity of records.
    pub metadata: MetadataOptions,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            loader: LoaderConfig::default(),
            poll_interval: Duration::from_millis(50),
            channel_capacity: 65_536,
            metadata: MetadataOptions::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("no probe family could be attached:\n{0}")]
    NothingAttached(String),
    #[error("syscall aggregation is not attached")]
    SyscallsNotAttached,
    #[error("syscalls aggregator: {0}")]
    Syscalls(#[from] events::syscalls::AggregatorError),
    #[error("ring buffer {name}: {source}")]
    Ring {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

pub type SharedRecord = Arc<Record>;

pub struct Agent {
    ebpf: Ebpf,
    tls: loader::tls::TlsAttachments,
    tls_stats: Arc<std::sync::Mutex<TrackerStats>>,
    tracker: Option<JoinHandle<()>>,
    report: Vec<ProbeStatus>,
    records: broadcast::Sender<SharedRecord>,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    consumers: Vec<JoinHandle<std::io::Result<()>>>,
    /// The syscalls family's aggregation maps and runtime config, when it attached.
    syscalls: Option<events::syscalls::SharedSyscallMaps>,
    resolver: Arc<Resolver>,
    /// Metadata upkeep (eviction timer) and the Kubernetes API watch, when on.
    metadata_tasks: Vec<JoinHandle<()>>,
    /// The claim on the pin directory, released when the agent is dropped (or dies).
    pin_lock: Option<loader::pin::PinDirLock>,
}

impl Agent {
    /// Loads and attaches the probes and starts consuming; must run inside tokio.
    pub fn start(config: &AgentConfig) -> Result<Agent, AgentError> {
        let probes = loader::load(&config.loader)?;
        let mut ebpf = probes.ebpf;
        let tls_up = probes.tls.wire || !probes.tls.libraries.is_empty();
        if !probes.tcp_attached && !tls_up && !probes.syscalls_attached.any() {
            let lines: Vec<String> = probes.report.iter().map(|s| s.to_string()).collect();
            return Err(AgentError::NothingAttached(lines.join("\n")));
        }
        let (records, _) = broadcast::channel(config.channel_capacity);
        let counters = Arc::new(Counters::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let clock = Clock::now();

        let mut consumers = Vec::new();
        if probes.tcp_attached {
            let map = ebpf.take_map(TCP_EVENTS_MAP).ok_or(AgentError::Ring {
                name: TCP_EVENTS_MAP,
                source: aya::maps::MapError::InvalidName {
                    name: TCP_EVENTS_MAP.to_string(),
                },
            })?;
            let ring = RingBuf::try_from(map).map_err(|source| AgentError::Ring {
                name: TCP_EVENTS_MAP,
                source,
            })?;
            let tx = records.clone();
            let c = counters.clone();
            consumers.push(tokio::spawn(ring::consume(
                ring,
                config.poll_interval,
                shutdown_rx.clone(),
                move |bytes| match events::tcp::decode(bytes, &clock) {
                    Ok(r) => {
                        c.records_decoded.fetch_add(1, Ordering::Relaxed);
                        // No subscriber is not an error: records are simply not shown.
                        let _ = tx.send(Arc::new(Record::Tcp(r)));
                    }
                    Err(_) => {
                        c.decode_errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )));
        }
        let tls_stats = Arc::new(std::sync::Mutex::new(TrackerStats::default()));
        let mut tracker = None;
        if tls_up {
            let (tx, rx) = mpsc::channel(config.channel_capacity);
            for (name, wire) in [(TLS_WIRE_EVENTS_MAP, true), (TLS_LIB_EVENTS_MAP, false)] {
                let map = ebpf.take_map(name).ok_or(AgentError::Ring {
                    name,
                    source: aya::maps::MapError::InvalidName {
                        name: name.to_string(),
                    },
                })?;
                let ring =
                    RingBuf::try_from(map).map_err(|source| AgentError::Ring { name, source })?;
                let tx = tx.clone();
                let c = counters.clone();
                consumers.push(tokio::spawn(ring::consume(
                    ring,
                    config.poll_interval,
                    shutdown_rx.clone(),
                    move |bytes| {
                        let input = if wire {
                            events::tls::decode_wire(bytes).map(TlsInput::Wire)
                        } else {
                            events::tls::decode_lib(bytes).map(TlsInput::Lib)
                        };
                        match input {
                            // A full channel means the tracker fell behind: counted.
                            Ok(i) => {
                                if tx.try_send(i).is_err() {
                                    c.records_lagged.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => {
                                c.decode_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    },
                )));
            }
            let flows = ebpf
                .take_map(TLS_FLOWS_MAP)
                .and_then(|m| HashMap::try_from(m).ok());
            let failures = ebpf
                .take_map(TLS_FAILURES_MAP)
                .and_then(|m| Array::try_from(m).ok());
            tracker = Some(tokio::spawn(
                TrackerTask {
                    input: rx,
                    tcp: records.subscribe(),
                    out: records.clone(),
                    maps: TlsMaps { flows, failures },
                    clock,
                    counters: counters.clone(),
                    stats: tls_stats.clone(),
                    shutdown: shutdown_rx.clone(),
                }
                .run(),
            ));
        }
        // -- syscalls family: event ring consumer and interval aggregator
        let mut syscalls = None;
        if probes.syscalls_attached.any() {
            use hostscope_common::syscalls::SYSCALL_EVENTS_MAP;
            let map = ebpf.take_map(SYSCALL_EVENTS_MAP).ok_or(AgentError::Ring {
                name: SYSCALL_EVENTS_MAP,
                source: aya::maps::MapError::InvalidName {
                    name: SYSCALL_EVENTS_MAP.to_string(),
                },
            })?;
            let ring = RingBuf::try_from(map).map_err(|source| AgentError::Ring {
                name: SYSCALL_EVENTS_MAP,
                source,
            })?;
            let tx = records.clone();
            let c = counters.clone();
            consumers.push(tokio::spawn(ring::consume(
                ring,
                config.poll_interval,
                shutdown_rx.clone(),
                move |bytes| match events::syscalls::decode(bytes, &clock) {
                    Ok(r) => {
                        c.records_decoded.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(Arc::new(r));
                    }
                    Err(_) => {
                        c.decode_errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )));
        }
        if probes.syscalls_attached.aggregation {
            let options = config.loader.syscalls.clone();
            let maps = Arc::new(std::sync::Mutex::new(events::syscalls::SyscallMaps::take(
                &mut ebpf,
                options.runtime.clone(),
            )?));
            consumers.push(tokio::spawn(events::syscalls::run_aggregator(
                maps.clone(),
                options,
                clock,
                records.clone(),
                shutdown_rx.clone(),
            )));
            syscalls = Some(maps);
        }
        let (resolver, metadata_tasks) = start_metadata(&config.metadata, shutdown_rx.clone());
        Ok(Agent {
            pin_lock: probes.pin_lock,
            resolver,
            metadata_tasks,
            ebpf,
            tls: probes.tls,
            tls_stats,
            tracker,
            report: probes.report,
            records,
            counters,
            shutdown,
            consumers,
            syscalls,
        })
    }

    /// A new stream of every record decoded from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SharedRecord> {
        self.records.subscribe()
    }

    /// Identity of records (process, container, pod, peer workload), shared by the sinks.
    pub fn resolver(&self) -> Arc<Resolver> {
        self.resolver.clone()
    }

    pub fn report(&self) -> &[ProbeStatus] {
        &self.report
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The pin directory this agent holds, if it pins its maps.
    pub fn pin_dir(&self) -> Option<&std::path::Path> {
        self.pin_lock.as_ref().map(|l| l.dir())
    }

    /// Changes the syscall filters / slow threshold without reloading. Fails if the
    /// syscall aggregation is not attached.
    pub fn set_syscall_runtime(
        &self,
        runtime: loader::syscalls::SyscallRuntime,
    ) -> Result<(), AgentError> {
        let maps = self
            .syscalls
            .as_ref()
            .ok_or(AgentError::SyscallsNotAttached)?;
        let mut maps = maps.lock().unwrap_or_else(|p| p.into_inner());
        Ok(maps.set_runtime(runtime)?)
    }

    pub fn stats(&self) -> AgentStats {
        let (records_decoded, decode_errors, records_lagged) =
            stats::snapshot_counters(&self.counters);
        let mut kernel = std::collections::BTreeMap::new();
        if let Some(c) = stats::read_kernel_counters(&self.ebpf, TCP_STATS_MAP) {
            kernel.insert("tcp", c);
        }
        if let Some(c) = stats::read_kernel_counters(&self.ebpf, TLS_STATS_MAP) {
            kernel.insert("tls", c);
        }
        if let Some(c) = stats::read_syscall_counters(&self.ebpf) {
            kernel.insert("syscalls", c);
        }
        AgentStats {
            kernel,
            records_decoded,
            decode_errors,
            records_lagged,
            programs: stats::read_program_costs(&self.ebpf),
            tls: self.tls_stats.lock().map(|s| s.clone()).unwrap_or_default(),
        }
    }

    /// The OpenSSL libraries the uprobes are attached to.
    pub fn tls_libraries(&self) -> &[std::path::PathBuf] {
        &self.tls.libraries
    }

    /// Attaches the OpenSSL probes to libraries that appeared since the last call (new
    /// containers, newly started programs with their own copy).
    pub fn refresh(&mut self) -> Vec<String> {
        loader::tls::refresh(&mut self.ebpf, &mut self.tls)
            .into_iter()
            .map(|(p, e)| format!("{p}: {e}"))
            .collect()
    }

    /// Drains the rings one last time, stops the consumers and detaches the probes.
    pub async fn stop(mut self) -> AgentStats {
        let _ = self.shutdown.send(true);
        for task in self.consumers.drain(..) {
            let _ = task.await;
        }
        if let Some(t) = self.tracker.take() {
            let _ = t.await;
        }
        for t in self.metadata_tasks.drain(..) {
            t.abort();
        }
        self.stats()
    }
}

/// The resolver, its eviction timer and (when asked) the Kubernetes API watch. Nothing
/// here can fail the agent: what cannot start is counted in the resolver's stats.
fn start_metadata(
    options: &MetadataOptions,
    mut shutdown: watch::Receiver<bool>,
) -> (Arc<Resolver>, Vec<JoinHandle<()>>) {
    let resolver = Arc::new(Resolver::new(options.clone()));
    let mut tasks = Vec::new();
    if !options.enabled {
        return (resolver, tasks);
    }
    let r = resolver.clone();
    let every = Duration::from_millis(options.revalidate_ms.max(100));
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let r = r.clone();
                    // /proc and cgroupfs reads block: off the async workers.
                    let _ = tokio::task::spawn_blocking(move || r.maintain()).await;
                }
                _ = shutdown.changed() => break,
            }
        }
    }));
    if options.kube_api {
        tasks.push(resolver.spawn_kube_watch(None, crate::metadata::kube::Backoff::default()));
    }
    (resolver, tasks)
}
