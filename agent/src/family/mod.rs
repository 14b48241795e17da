//! A probe family (`tcp`, `tls`, `syscalls`, …) behind one interface that the loader, the
//! agent, `dump`, the counters and the reload iterate: a new family implements
//! [`Family`], describes its pinned maps, and is registered once, in [`REGISTERED`].

pub mod consume;
pub mod dns;
pub mod syscalls;
pub mod tcp;
pub mod tls;

use std::{
    any::Any,
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::{Btf, Ebpf, EbpfLoader};
use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};

use crate::{
    agent::{AgentConfig, AgentError, SharedRecord},
    config::Config,
    dump::PinnedMap,
    events::Clock,
    kernel::{
        btf::{BtfError, KernelBtf},
        tracefs::Tracefs,
    },
    loader::{LoadError, ProbeStatus},
    stats::{AgentStats, Counters},
};

/// Every family, in the order they are planned, attached, started and reported.
pub const REGISTERED: &[Descriptor] = &[
    tcp::DESCRIPTOR,
    tls::DESCRIPTOR,
    syscalls::DESCRIPTOR,
    dns::DESCRIPTOR,
];

/// What is known of a family without a running agent: its name, the maps it pins (which
/// `hostscope dump` decodes) and how to make it from the configuration.
pub struct Descriptor {
    /// Its configuration section and kernel-counter key (`tcp`, `tls`, `syscalls`).
    pub name: &'static str,
    pub pinned: &'static [PinnedMap],
    /// Keys of its section fixed when the probes load (sizes, which programs attach): a
    /// change waits for a restart. The others apply live through [`Family::reload`].
    pub restart_keys: &'static [&'static str],
    /// The `type` tags of its records (`hostscope events --type`).
    pub record_types: &'static [&'static str],
    /// Help for every key of its section (`hostscope config default`).
    pub docs: crate::config::Docs,
    /// Its OTLP and Prometheus metrics (docs/metrics.md).
    pub metrics: &'static [&'static crate::export::metrics::MetricDef],
    /// The causes its failures are classified into (docs/rca.md).
    pub causes: &'static [&'static crate::rca::classify::Cause],
    /// Checks its section of the tree, naming each problem by its key path.
    pub validate: fn(&Config, &mut crate::config::Problems),
    pub new: fn(&AgentConfig) -> Box<dyn Family>,
}

/// The families of one agent, made from its configuration.
pub fn instantiate(config: &AgentConfig) -> Vec<Box<dyn Family>> {
    REGISTERED.iter().map(|d| (d.new)(config)).collect()
}

/// Every map any family pins, with its decoder.
pub fn pinned_maps() -> impl Iterator<Item = &'static PinnedMap> {
    REGISTERED.iter().flat_map(|d| d.pinned.iter())
}

/// What the running kernel offers, for the families' plans. The parsed BTF is large: it
/// is dropped once every family has planned, before aya parses its own copy.
pub struct KernelView<'a> {
    pub btf: Result<&'a KernelBtf, &'a BtfError>,
    pub tracefs: &'a Tracefs,
}

/// The loaded object, shared by the agent's timers, its status and its stop.
pub type SharedEbpf = Arc<Mutex<Ebpf>>;

/// Locks the object; a task that panicked while holding it left nothing half-written
/// that matters (maps are the kernel's), so a poisoned lock is taken as is.
pub fn lock(ebpf: &SharedEbpf) -> std::sync::MutexGuard<'_, Ebpf> {
    ebpf.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a family's consumers are started with, and where their tasks go.
pub struct Start<'a> {
    pub ebpf: &'a SharedEbpf,
    pub poll_interval: Duration,
    /// Records buffered between a family's readers and its own tracker, if it has one.
    pub channel_capacity: usize,
    pub clock: Clock,
    pub records: &'a broadcast::Sender<SharedRecord>,
    pub counters: &'a Arc<Counters>,
    /// Names of resolved addresses: the DNS family writes them, connection records read
    /// them (`remote_name`).
    pub names: &'a Arc<crate::dns::names::ResolvedNames>,
    pub shutdown: &'a watch::Receiver<bool>,
    /// Ring and aggregation readers: counted by status, one that ends is unhealthy.
    pub consumers: &'a mut Vec<JoinHandle<std::io::Result<()>>>,
    /// The family's other tasks (trackers, timers): awaited at stop after the readers.
    pub tasks: &'a mut Vec<JoinHandle<()>>,
}

/// A reload's failures: (key path, why), each key keeping its running value.
pub type Failed = Vec<(String, String)>;

/// One probe family. The loader calls `plan`, `configure` and `attach` in that order
/// (every family's plan before the object loads), then the agent calls `start`; the rest
/// is asked while it runs.
pub trait Family: Send + Sync + Any {
    /// Its [`Descriptor::name`].
    fn name(&self) -> &'static str;

    /// Reads what it needs of the running kernel (offsets, hook availability).
    fn plan(&mut self, kernel: &KernelView<'_>);

    /// Sets its load-time constants and map sizes.
    fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>);

    /// Attaches its programs, one report line each; returns whether any part is up. An
    /// error is a fault of the object or the configuration, not of the kernel's hooks.
    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        kernel_btf: Option<&Btf>,
        report: &mut Vec<ProbeStatus>,
    ) -> Result<bool, LoadError>;

    /// Starts its ring readers and tasks for what attached.
    fn start(&mut self, start: Start<'_>) -> Result<(), AgentError>;

    /// Its kernel counters, summed over CPUs; None when its stats map cannot be read.
    fn counters(&self, ebpf: &Ebpf) -> Option<BTreeMap<&'static str, u64>>;

    /// Adds its userspace account to the agent's (the TLS tracker's counters).
    fn add_stats(&self, _stats: &mut AgentStats) {}

    /// Applies the live keys of its section that changed from `old` to `new`; a key that
    /// fails is put back in `new` and named in `failed`.
    fn reload(&self, _old: &Config, _new: &mut Config, _failed: &mut Failed) {}

    /// Attachments it owns outside the object (uprobe links), taken to be dropped at
    /// stop together with the programs' detach.
    fn take_links(&self) -> Vec<Box<dyn Send>> {
        Vec::new()
    }

    /// For the family's own controls (`Agent::family`).
    fn as_any(&self) -> &dyn Any;
}
