//! The running agent: loaded probes, one consumer task per ring, its own timers (the
//! OpenSSL library rescan, metadata upkeep), and a broadcast channel of decoded records
//! that every sink ([`crate::sink`]) subscribes to independently.

use std::{path::PathBuf, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};

use crate::{
    config::Problems,
    events::{self, Clock, Record},
    family::{self, Family, SharedEbpf},
    loader::{self, LoadError, LoaderConfig, ProbeStatus},
    metadata::{upkeep::MetadataTasks, MetadataOptions, Resolver},
    output::OutputFormat,
    sink::SinkContext,
    stats::{self, AgentStats, Counters},
    status::StatusHandle,
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

pub struct Agent {
    /// The loaded object, shared with the families' timers.
    ebpf: SharedEbpf,
    /// Every registered family, started.
    families: Vec<Box<dyn Family>>,
    report: Vec<ProbeStatus>,
    records: broadcast::Sender<SharedRecord>,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    /// Ring and aggregation readers (status counts them; one that ends is unhealthy).
    consumers: Vec<JoinHandle<std::io::Result<()>>>,
    /// The families' other tasks (trackers, timers), awaited after the readers at stop.
    tasks: Vec<JoinHandle<()>>,
    resolver: Arc<Resolver>,
    /// Metadata upkeep (eviction timer) and the Kubernetes API watch, when on.
    metadata_tasks: std::sync::Mutex<MetadataTasks>,
    /// The claim on the pin directory, released when the agent is dropped (or dies).
    pin_lock: Option<loader::pin::PinDirLock>,
}

impl Agent {
    /// Loads and attaches the probes and starts consuming; must run inside tokio.
    pub fn start(config: &AgentConfig) -> Result<Agent, AgentError> {
        let mut families = family::instantiate(config);
        let probes = loader::load(&config.loader, &mut families)?;
        if !probes.any_attached {
            let lines: Vec<String> = probes.report.iter().map(|s| s.to_string()).collect();
            return Err(AgentError::NothingAttached(lines.join("\n")));
        }
        let (records, _) = broadcast::channel(config.channel_capacity);
        let counters = Arc::new(Counters::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let clock = Clock::now();
        let ebpf: SharedEbpf = Arc::new(std::sync::Mutex::new(probes.ebpf));
        let mut consumers = Vec::new();
        let mut tasks = Vec::new();
        for f in families.iter_mut() {
            f.start(family::Start {
                ebpf: &ebpf,
                poll_interval: config.poll_interval,
                channel_capacity: config.channel_capacity,
                clock,
                records: &records,
                counters: &counters,
                shutdown: &shutdown_rx,
                consumers: &mut consumers,
                tasks: &mut tasks,
            })?;
        }
        let resolver = Arc::new(Resolver::new(config.metadata.clone()));
        let metadata_tasks =
            std::sync::Mutex::new(MetadataTasks::start(resolver.clone(), shutdown_rx.clone()));
        tokio::spawn(trim_heap(shutdown_rx.clone()));
        Ok(Agent {
            ebpf,
            families,
            report: probes.report,
            records,
            counters,
            shutdown,
            consumers,
            tasks,
            resolver,
            metadata_tasks,
            pin_lock: probes.pin_lock,
        })
    }

    /// The running families, in registration order.
    pub fn families(&self) -> impl Iterator<Item = &dyn Family> {
        self.families.iter().map(|f| f.as_ref())
    }

    /// One family by its type, for its own controls.
    pub fn family<F: Family>(&self) -> Option<&F> {
        self.families
            .iter()
            .find_map(|f| f.as_any().downcast_ref::<F>())
    }

    fn syscalls(&self) -> Result<&family::syscalls::Syscalls, AgentError> {
        self.family().ok_or(AgentError::SyscallsNotAttached)
    }

    fn tls(&self) -> Option<&family::tls::Tls> {
        self.family()
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
        self.syscalls()?.set_runtime(runtime)
    }

    /// Makes the kernel's watched-path trie hold exactly `paths`, live: new prefixes
    /// are inserted before stale ones are removed, the probes stay attached and no
    /// event of a path watched before and after is missed. Fails, leaving the trie
    /// as it was, on a path `check_watch_path` refuses or beyond the trie's capacity.
    pub fn set_watch_paths(&self, paths: &[String]) -> Result<(), AgentError> {
        self.syscalls()
            .map_err(|_| AgentError::SecurityNotAttached)?
            .set_watch_paths(paths)
    }

    /// The watched path prefixes in force (sorted); empty without security events.
    pub fn watch_paths(&self) -> Vec<String> {
        self.syscalls().map(|s| s.watch_paths()).unwrap_or_default()
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
        self.syscalls()?
            .set_alerts(events::syscalls::AlertSettings {
                interval,
                error_burst_per_s,
                error_burst_min,
            })
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
        let ebpf = family::lock(&self.ebpf);
        let kernel = self
            .families
            .iter()
            .filter_map(|f| Some((f.name(), f.counters(&ebpf)?)))
            .collect();
        let mut stats = AgentStats {
            kernel,
            records_decoded,
            decode_errors,
            records_lagged,
            records_aggregated,
            programs: stats::read_program_costs(&ebpf),
            tls: Default::default(),
            families: Default::default(),
            config: Default::default(),
        };
        for f in &self.families {
            f.add_stats(&mut stats);
        }
        stats
    }

    /// Entries in use of each hash-like map the probes use.
    pub fn map_fill(&self) -> Vec<crate::kernel::map_fill::MapFill> {
        crate::kernel::map_fill::read(&family::lock(&self.ebpf))
    }

    /// The OpenSSL libraries the uprobes are attached to.
    pub fn tls_libraries(&self) -> Vec<std::path::PathBuf> {
        self.tls().map(|t| t.libraries()).unwrap_or_default()
    }

    /// Attaches the OpenSSL probes to libraries that appeared since the last call (new
    /// containers, newly started programs with their own copy); the agent also does
    /// this every `library_rescan_interval`.
    pub fn refresh(&self) -> Vec<String> {
        self.tls().map(|t| t.refresh()).unwrap_or_default()
    }

    /// Drains the rings one last time, stops the consumers and detaches the probes.
    pub async fn stop(mut self) -> AgentStats {
        // The hooks first, so the rings' final drain sees every event they made; the
        // programs' costs are read while they are still loaded.
        let ebpf = self.ebpf.clone();
        let links: Vec<Box<dyn Send>> = self.families.iter().flat_map(|f| f.take_links()).collect();
        let programs = tokio::task::spawn_blocking(move || {
            let mut ebpf = family::lock(&ebpf);
            let costs = stats::read_program_costs(&ebpf);
            loader::detach_all(&mut ebpf, links);
            costs
        })
        .await
        .unwrap_or_default();
        let _ = self.shutdown.send(true);
        for task in self.consumers.drain(..) {
            let _ = task.await;
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
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
