//! The DNS family on the [`Family`] interface: the cgroup_skb programs of
//! `probes/src/dns.rs` (attached by `loader::dns`), one ring of copied messages feeding
//! the family's task (`crate::dns::task`: TCP framing, parsing, the joiner), which
//! publishes `dns` records and writes the pinned failures map.

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc, Mutex},
};

use aya::{maps::Array, Btf, Ebpf, EbpfLoader};
use hostscope_common::dns::{DnsPorts, DNS_EVENTS_MAP, DNS_FAILURES_MAP, DNS_STATS_MAP};
use tokio::sync::{mpsc, watch};

use super::{consume, lock, Descriptor, Failed, Family, KernelView, Start};
use crate::{
    agent::{AgentConfig, AgentError},
    config::Config,
    dns::task::{Batch, DnsStats, DnsTask, LiveConfig},
    events::{self, dns::WireMessage},
    loader::{self, dns::DnsSection, LoadError, ProbeStatus},
    ring,
    stats::{AgentStats, Counters},
};

pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "dns",
    pinned: crate::dump::dns::MAPS,
    restart_keys: &["dns.enabled", "dns.ports", "dns.ring_bytes"],
    record_types: &["dns"],
    docs: DnsSection::DOCS,
    metrics: crate::dns::sinks::METRICS,
    causes: crate::dns::sinks::CAUSES,
    validate: |config, problems| config.dns.validate("dns", problems),
    new: |config| Box::new(Dns::new(config)),
};

pub struct Dns {
    config: loader::LoaderConfig,
    /// The load-time ports, kept here for the loader's borrow.
    ports: DnsPorts,
    attached: bool,
    join_config: watch::Sender<LiveConfig>,
    stats: Arc<Mutex<DnsStats>>,
    /// The resolved-names table it writes, for its counters.
    names: Option<Arc<crate::dns::names::ResolvedNames>>,
}

fn join_config(section: &DnsSection) -> LiveConfig {
    LiveConfig {
        timeout: section.timeout,
        max_pending: section.max_pending,
    }
}

impl Dns {
    fn new(config: &AgentConfig) -> Dns {
        Dns {
            ports: DnsPorts::new(&config.loader.dns.ports),
            join_config: watch::channel(join_config(&config.loader.dns)).0,
            config: config.loader.clone(),
            attached: false,
            stats: Default::default(),
            names: None,
        }
    }
}

/// Messages handed to the task at once at most.
const BATCH: usize = 256;

/// The ring's consumer: decodes each record and hands the task a drain's messages
/// together, so that a lookup storm wakes the task once per drain, not per message.
struct Reader {
    tx: mpsc::Sender<Batch>,
    counters: Arc<Counters>,
    batch: Vec<WireMessage>,
    clock: events::Clock,
    /// When the current drain began (Unix ns): what the task has processed once it has
    /// its last batch.
    drain_started_ns: u64,
    /// Rung by a connect that the DNS side has not caught up with
    /// (`ResolvedNames::lookup_after_answers`).
    drain_now: Arc<tokio::sync::Notify>,
}

impl Reader {
    /// Hands the messages read so far to the task; the drain's last batch (`end`) says
    /// how far the ring was read, even with no message.
    fn flush(&mut self, end: bool) {
        if self.batch.is_empty() && !end {
            return;
        }
        let batch = Batch {
            messages: std::mem::take(&mut self.batch),
            read_through_ns: end.then_some(self.drain_started_ns),
        };
        // A full channel means the task fell behind: every message of the batch counted.
        if let Err(e) = self.tx.try_send(batch) {
            let lost = e.into_inner().messages.len() as u64;
            self.counters
                .records_lagged
                .fetch_add(lost, Ordering::Relaxed);
        }
    }
}

impl ring::Consumer for Reader {
    fn record(&mut self, bytes: &[u8]) {
        match events::dns::decode(bytes) {
            Ok(m) => {
                self.batch.push(m);
                if self.batch.len() >= BATCH {
                    self.flush(false);
                }
            }
            Err(_) => {
                self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn draining(&mut self) {
        self.drain_started_ns = self.clock.unix_ns(events::monotonic_ns());
    }

    fn drained(&mut self) {
        self.flush(true);
    }

    fn drain_now(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.drain_now.clone())
    }
}

impl Family for Dns {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    /// Nothing to read beforehand: the cgroup mount is found at attach.
    fn plan(&mut self, _kernel: &KernelView<'_>) {}

    fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader::dns::configure(&self.config.dns, &self.ports, loader);
    }

    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        _kernel_btf: Option<&Btf>,
        report: &mut Vec<ProbeStatus>,
    ) -> Result<bool, LoadError> {
        self.attached = loader::dns::attach(ebpf, &self.config, report)?;
        Ok(self.attached)
    }

    fn start(&mut self, mut start: Start<'_>) -> Result<(), AgentError> {
        if !self.attached {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel(start.channel_capacity);
        self.names = Some(start.names.clone());
        let drain_now = Arc::new(tokio::sync::Notify::new());
        start.names.attach_dns(drain_now.clone());
        let reader = Reader {
            tx,
            counters: start.counters.clone(),
            batch: Vec::new(),
            clock: start.clock,
            drain_started_ns: 0,
            drain_now,
        };
        consume::read_ring(&mut start, DNS_EVENTS_MAP, reader)?;
        let failures = lock(start.ebpf)
            .take_map(DNS_FAILURES_MAP)
            .and_then(|m| Array::try_from(m).ok());
        start.tasks.push(tokio::spawn(
            DnsTask {
                input: rx,
                out: start.records.clone(),
                failures,
                config: self.join_config.subscribe(),
                clock: start.clock,
                counters: start.counters.clone(),
                stats: self.stats.clone(),
                names: start.names.clone(),
            }
            .run(),
        ));
        Ok(())
    }

    fn counters(&self, ebpf: &Ebpf) -> Option<BTreeMap<&'static str, u64>> {
        crate::stats::read_kernel_counters(ebpf, DNS_STATS_MAP)
    }

    fn add_stats(&self, stats: &mut AgentStats) {
        let s = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        let mut family = s.family_stats();
        if let Some(n) = self.names.as_ref().map(|n| n.stats()) {
            family.gauges.insert("names_cached".into(), n.cached);
            for (name, v) in [
                ("names_evicted", n.evicted),
                ("names_given", n.named),
                ("names_waited", n.waited),
                ("names_after_wait", n.named_after_wait),
                ("names_wait_timeouts", n.wait_timeouts),
            ] {
                family.counters.insert(name.into(), v);
            }
        }
        stats.families.insert(DESCRIPTOR.name, family);
    }

    fn reload(&self, _old: &Config, new: &mut Config, _failed: &mut Failed) {
        let config = join_config(&new.dns);
        self.join_config.send_if_modified(|c| {
            let changed = *c != config;
            *c = config;
            changed
        });
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
