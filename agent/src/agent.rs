//! The running agent: loaded probes, one consumer task per ring, its own timers (the
//! OpenSSL library rescan, metadata upkeep), and a broadcast channel of decoded records
//! that every sink ([`crate::sink`]) subscribes to independently.

use std::{
    path::PathBuf,
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
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{broadcast, mpsc, watch},
    task::JoinHandle,
};

use crate::{
    config::Problems,
    events::{self, Clock, Record},
    loader::{self, watch_paths::WatchedPaths, LoadError, LoaderConfig, ProbeStatus},
    metadata::{upkeep::MetadataTasks, MetadataOptions, Resolver},
    output::OutputFormat,
    ring,
    sink::SinkContext,
    stats::{self, AgentStats, Counters},
    status::StatusHandle,
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
    /// How often new OpenSSL copies (new containers, new programs) get their uprobes.
    pub library_rescan_interval: Duration,
    /// Records buffered per subscriber before a slow one starts missing them (counted).
    pub channel_capacity: usize,
    /// Process / container / pod identity of records.
    pub metadata: MetadataOptions,
}

impl Default for AgentConfig {
    /// The built-in configuration tree's defaults.
    fn default() -> Self {
        crate::config::Config::default()
            .agent_config()
            .expect("the built-in configuration is valid")
    }
}

/// `agent:` in the configuration: the agent's own machinery, shared by every family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    pub output: OutputFormat,
    pub pin: bool,
    pub pin_dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub channel_capacity: usize,
    pub wakeup_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            output: OutputFormat::Text,
            pin: true,
            pin_dir: PathBuf::from(crate::loader::DEFAULT_PIN_DIR),
            poll_interval: Duration::from_millis(50),
            channel_capacity: 65_536,
            wakeup_bytes: hostscope_common::RingConfig::DEFAULT.wakeup_bytes,
            stats_interval: Duration::from_secs(10),
        }
    }
}

impl AgentSection {
    pub const DOCS: crate::config::Docs = &[
        (
            "",
            "The agent's own machinery, shared by every probe family.",
        ),
        (
            "output",
            "Records on stdout: text, json (one object per line) or none.",
        ),
        (
            "pin",
            "Pin maps under pin_dir so that `hostscope dump` can read them.",
        ),
        (
            "pin_dir",
            "Directory on a bpffs for pinned maps; one agent per directory.",
        ),
        (
            "poll_interval",
            "Longest time a record waits in a ring before it is read (1ms to 10s).",
        ),
        (
            "channel_capacity",
            "Records buffered per sink before a slow sink misses some (counted).",
        ),
        (
            "wakeup_bytes",
            "Pending ring bytes that make a probe wake the agent (0: every event).",
        ),
        (
            "stats_interval",
            "How often the agent's counters are printed (0s: only at exit).",
        ),
    ];

    pub fn validate(&self, at: &str, p: &mut Problems) {
        if self.pin && !self.pin_dir.is_absolute() {
            p.push(
                format!("{at}.pin_dir"),
                format_args!("{:?} is not an absolute path", self.pin_dir),
            );
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&self.poll_interval) {
            p.push(
                format!("{at}.poll_interval"),
                format_args!(
                    "{} is not between 1ms and 10s",
                    humantime::format_duration(self.poll_interval)
                ),
            );
        }
        if self.channel_capacity == 0 || self.channel_capacity > 1 << 24 {
            p.push(
                format!("{at}.channel_capacity"),
                format_args!("{} is not between 1 and 16777216", self.channel_capacity),
            );
        }
    }
}

/// The loaded BPF object and what is attached to OpenSSL copies.
struct Probes {
    ebpf: Ebpf,
    tls: loader::tls::TlsAttachments,
}

impl Probes {
    fn refresh(&mut self) -> Vec<String> {
        loader::tls::refresh(&mut self.ebpf, &mut self.tls)
            .into_iter()
            .map(|(p, e)| format!("{p}: {e}"))
            .collect()
    }
}

/// Allocations at least this large are mmapped and unmapped when freed. glibc's own
/// threshold rises to the largest block freed (up to 32 MiB), after which a storm's
/// megabyte-sized records and the start-up BTF parse stay in the heap as fragments.
const HEAP_MMAP_THRESHOLD: i32 = 128 * 1024;
/// malloc arenas: glibc makes up to 8 per core, one per contending thread, each
/// holding its own free fragments; the agent's threads rarely allocate at once.
const HEAP_ARENAS: i32 = 2;

/// The allocator's settings for a long-running agent; call before any thread starts.
/// Measured on the lifecycle bench's storm: start-up peak 32.8 → 28.8 MB, heap after
/// it a few MB lower.
pub fn tune_heap() {
    // SAFETY: mallopt only changes allocator parameters; no thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, HEAP_ARENAS);
    }
}

/// How often freed heap goes back to the system.
const HEAP_TRIM_EVERY: Duration = Duration::from_secs(10);

/// glibc keeps what a burst freed in its arenas: after 10,000 short-lived processes had
/// each made a refused connect, the heap held 22 MB live but 44 MB resident. Trimming
/// every few seconds hands the free pages back (a pass takes about a millisecond).
async fn trim_heap(mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEAP_TRIM_EVERY) => {}
            _ = crate::sink::stopping(&mut shutdown) => return,
        }
        // SAFETY: malloc_trim only releases free memory.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

/// The agent's own timer: new OpenSSL copies get their uprobes. The scan (procfs maps
/// of every process) runs on a blocking thread, away from the record consumers.
async fn rescan_libraries(
    probes: Arc<std::sync::Mutex<Probes>>,
    mut every: watch::Receiver<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let period = *every.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            Ok(()) = every.changed() => continue,
            _ = crate::sink::stopping(&mut shutdown) => return,
        }
        let probes = probes.clone();
        let problems = tokio::task::spawn_blocking(move || {
            probes.lock().unwrap_or_else(|p| p.into_inner()).refresh()
        })
        .await
        .unwrap_or_default();
        for problem in problems {
            eprintln!("tls uprobes: {problem}");
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
    #[error("watched-path security events are not attached (started with security off, or no tracepoint could attach)")]
    SecurityNotAttached,
    #[error(transparent)]
    WatchPaths(#[from] loader::watch_paths::WatchPathError),
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

/// Records decoded per batch at most before they are put on the stream.
const PUBLISH_BATCH: usize = 256;

/// A ring's consumer that decodes each record and puts a drain's records on the stream
/// together: sinks that keep up record by record would otherwise be woken for each one.
struct Publisher<D> {
    decode: D,
    tx: broadcast::Sender<SharedRecord>,
    counters: Arc<Counters>,
    batch: Vec<SharedRecord>,
}

impl<D> Publisher<D>
where
    D: FnMut(&[u8]) -> Result<Record, events::DecodeError> + Send,
{
    fn new(tx: broadcast::Sender<SharedRecord>, counters: Arc<Counters>, decode: D) -> Self {
        Publisher {
            decode,
            tx,
            counters,
            batch: Vec::with_capacity(PUBLISH_BATCH),
        }
    }

    fn publish(&mut self) {
        self.counters
            .records_decoded
            .fetch_add(self.batch.len() as u64, Ordering::Relaxed);
        for r in self.batch.drain(..) {
            // No subscriber is not an error: records are simply not shown.
            let _ = self.tx.send(r);
        }
    }
}

impl<D> ring::Consumer for Publisher<D>
where
    D: FnMut(&[u8]) -> Result<Record, events::DecodeError> + Send,
{
    fn record(&mut self, bytes: &[u8]) {
        match (self.decode)(bytes) {
            Ok(r) => {
                self.batch.push(Arc::new(r));
                if self.batch.len() >= PUBLISH_BATCH {
                    self.publish();
                }
            }
            Err(_) => {
                self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn drained(&mut self) {
        self.publish();
    }
}

pub struct Agent {
    /// The loaded object and the OpenSSL attachments, shared with the rescan timer.
    probes: Arc<std::sync::Mutex<Probes>>,
    library_rescan: watch::Sender<Duration>,
    rescanner: JoinHandle<()>,
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
    metadata_tasks: std::sync::Mutex<MetadataTasks>,
    /// The watched-path trie, when the security tracepoints attached.
    watched: Option<std::sync::Mutex<WatchedPaths>>,
    /// The syscall aggregator's interval and error-burst thresholds, changed live.
    syscall_alerts: Option<watch::Sender<events::syscalls::AlertSettings>>,
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
            consumers.push(tokio::spawn(ring::consume(
                ring,
                config.poll_interval,
                shutdown_rx.clone(),
                Publisher::new(records.clone(), counters.clone(), move |bytes| {
                    events::tcp::decode(bytes, &clock).map(Record::Tcp)
                }),
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
                    move |bytes: &[u8]| {
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
        let mut syscall_alerts = None;
        let mut watched = None;
        if probes.syscalls_attached.security {
            watched = Some(std::sync::Mutex::new(WatchedPaths::take(
                &mut ebpf,
                &config.loader.syscalls.watch_paths,
            )?));
        }
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
            consumers.push(tokio::spawn(ring::consume(
                ring,
                config.poll_interval,
                shutdown_rx.clone(),
                Publisher::new(records.clone(), counters.clone(), move |bytes| {
                    events::syscalls::decode(bytes, &clock)
                }),
            )));
        }
        if probes.syscalls_attached.aggregation {
            let options = config.loader.syscalls.clone();
            let maps = Arc::new(std::sync::Mutex::new(events::syscalls::SyscallMaps::take(
                &mut ebpf,
                options.runtime.clone(),
            )?));
            let (alerts_tx, alerts_rx) =
                watch::channel(events::syscalls::AlertSettings::from_options(&options));
            consumers.push(tokio::spawn(events::syscalls::run_aggregator(
                maps.clone(),
                alerts_rx,
                clock,
                records.clone(),
                counters.clone(),
                shutdown_rx.clone(),
            )));
            syscalls = Some(maps);
            syscall_alerts = Some(alerts_tx);
        }
        let resolver = Arc::new(Resolver::new(config.metadata.clone()));
        let metadata_tasks =
            std::sync::Mutex::new(MetadataTasks::start(resolver.clone(), shutdown_rx.clone()));
        let shared_probes = Arc::new(std::sync::Mutex::new(Probes {
            ebpf,
            tls: probes.tls,
        }));
        let (library_rescan, rescan_rx) = watch::channel(config.library_rescan_interval);
        tokio::spawn(trim_heap(shutdown_rx.clone()));
        let rescanner = tokio::spawn(rescan_libraries(
            shared_probes.clone(),
            rescan_rx,
            shutdown_rx.clone(),
        ));
        Ok(Agent {
            watched,
            syscall_alerts,
            pin_lock: probes.pin_lock,
            resolver,
            metadata_tasks,
            probes: shared_probes,
            library_rescan,
            rescanner,
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

    /// The tasks that read the rings and aggregations: how many there are, and how many
    /// have ended. One ends only on a read error (or at stop): its family's records stop.
    pub fn consumers(&self) -> crate::status::Consumers {
        crate::status::Consumers {
            tasks: self.consumers.len(),
            ended: self.consumers.iter().filter(|c| c.is_finished()).count(),
        }
    }

    pub fn report(&self) -> &[ProbeStatus] {
        &self.report
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// What a sink gets: the record stream from now on, identities, counters, the
    /// status (through `status`) and the agent's shutdown signal.
    pub fn sink_context(&self, status: StatusHandle) -> SinkContext {
        SinkContext {
            records: self.records.subscribe(),
            resolver: self.resolver.clone(),
            counters: self.counters.clone(),
            status,
            shutdown: self.shutdown.subscribe(),
        }
    }

    /// Puts derived records (RCA incidents) on the stream every sink reads.
    pub fn publisher(&self) -> broadcast::Sender<SharedRecord> {
        self.records.clone()
    }

    fn probes(&self) -> std::sync::MutexGuard<'_, Probes> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes how often new OpenSSL copies are looked for, from the next tick.
    pub fn set_library_rescan_interval(&self, every: Duration) {
        self.library_rescan.send_if_modified(|d| {
            let changed = *d != every;
            *d = every;
            changed
        });
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

    /// Makes the kernel's watched-path trie hold exactly `paths`, live: new prefixes
    /// are inserted before stale ones are removed, the probes stay attached and no
    /// event of a path watched before and after is missed. Fails, leaving the trie
    /// as it was, on a path `check_watch_path` refuses or beyond the trie's capacity.
    pub fn set_watch_paths(&self, paths: &[String]) -> Result<(), AgentError> {
        let watched = self
            .watched
            .as_ref()
            .ok_or(AgentError::SecurityNotAttached)?;
        let mut watched = watched.lock().unwrap_or_else(|p| p.into_inner());
        Ok(watched.set(paths)?)
    }

    /// The watched path prefixes in force (sorted); empty without security events.
    pub fn watch_paths(&self) -> Vec<String> {
        self.watched
            .as_ref()
            .map(|w| w.lock().unwrap_or_else(|p| p.into_inner()).paths())
            .unwrap_or_default()
    }

    /// Changes the syscall aggregation interval and error-burst thresholds live: the
    /// thresholds apply from the next interval record, the interval from the next tick
    /// (one new interval after the last read). No map is reset, no count lost.
    pub fn set_syscall_alerts(
        &self,
        interval: Duration,
        error_burst_per_s: f64,
        error_burst_min: u64,
    ) -> Result<(), AgentError> {
        let tx = self
            .syscall_alerts
            .as_ref()
            .ok_or(AgentError::SyscallsNotAttached)?;
        let settings = events::syscalls::AlertSettings {
            interval,
            error_burst_per_s,
            error_burst_min,
        };
        settings.check()?;
        tx.send_replace(settings);
        Ok(())
    }

    /// Applies new metadata options live: the resolver rebuilds identities cached
    /// under the old ones, the Kubernetes watch restarts if `enabled`, `kube_api`,
    /// `kubeconfig` or `node_name` changed, and the eviction timer takes the new
    /// period. Returns the keys that could not be applied live (none today).
    pub fn set_metadata_options(&self, options: MetadataOptions) -> Vec<&'static str> {
        self.metadata_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(options)
    }

    /// Whether the Kubernetes API watch task is running.
    pub fn kube_watch_running(&self) -> bool {
        self.metadata_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .kube_watch_running()
    }

    pub fn stats(&self) -> AgentStats {
        let (records_decoded, decode_errors, records_lagged, records_aggregated) =
            stats::snapshot_counters(&self.counters);
        let probes = self.probes();
        let ebpf = &probes.ebpf;
        let mut kernel = std::collections::BTreeMap::new();
        if let Some(c) = stats::read_kernel_counters(ebpf, TCP_STATS_MAP) {
            kernel.insert("tcp", c);
        }
        if let Some(c) = stats::read_kernel_counters(ebpf, TLS_STATS_MAP) {
            kernel.insert("tls", c);
        }
        if let Some(c) = stats::read_syscall_counters(ebpf) {
            kernel.insert("syscalls", c);
        }
        AgentStats {
            kernel,
            records_decoded,
            decode_errors,
            records_lagged,
            records_aggregated,
            programs: stats::read_program_costs(ebpf),
            tls: self.tls_stats.lock().map(|s| s.clone()).unwrap_or_default(),
            config: Default::default(),
        }
    }

    /// Entries in use of each hash-like map the probes use.
    pub fn map_fill(&self) -> Vec<crate::kernel::map_fill::MapFill> {
        crate::kernel::map_fill::read(&self.probes().ebpf)
    }

    /// The OpenSSL libraries the uprobes are attached to.
    pub fn tls_libraries(&self) -> Vec<std::path::PathBuf> {
        self.probes().tls.libraries.clone()
    }

    /// Attaches the OpenSSL probes to libraries that appeared since the last call (new
    /// containers, newly started programs with their own copy); the agent also does
    /// this every `library_rescan_interval`.
    pub fn refresh(&self) -> Vec<String> {
        self.probes().refresh()
    }

    /// Drains the rings one last time, stops the consumers and detaches the probes.
    pub async fn stop(mut self) -> AgentStats {
        // The hooks first, so the rings' final drain sees every event they made; the
        // programs' costs are read while they are still loaded.
        let probes = self.probes.clone();
        let programs = tokio::task::spawn_blocking(move || {
            let mut p = probes.lock().unwrap_or_else(|p| p.into_inner());
            let costs = stats::read_program_costs(&p.ebpf);
            let links = p.tls.take_links();
            loader::detach_all(&mut p.ebpf, links);
            costs
        })
        .await
        .unwrap_or_default();
        let _ = self.shutdown.send(true);
        for task in self.consumers.drain(..) {
            let _ = task.await;
        }
        if let Some(t) = self.tracker.take() {
            let _ = t.await;
        }
        let _ = (&mut self.rescanner).await;
        self.metadata_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop();
        AgentStats {
            programs,
            ..self.stats()
        }
    }
}
