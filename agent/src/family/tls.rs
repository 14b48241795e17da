//! The TLS family on the [`Family`] interface: the wire programs and the OpenSSL uprobes
//! (`loader::tls`), two rings feeding the handshake tracker (`crate::tls`), and its own
//! timer that gives new OpenSSL copies their uprobes.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap},
    Btf, Ebpf, EbpfLoader,
};
use hostscope_common::tls::{
    TLS_FAILURES_MAP, TLS_FLOWS_MAP, TLS_LIB_EVENTS_MAP, TLS_STATS_MAP, TLS_WIRE_EVENTS_MAP,
};
use tokio::sync::{mpsc, watch};

use super::{consume, lock, Descriptor, Failed, Family, KernelView, SharedEbpf, Start};
use crate::{
    agent::{AgentConfig, AgentError},
    config::Config,
    events,
    loader::{self, tls::TlsAttachments, LoadError, LoaderConfig, ProbeStatus},
    stats::AgentStats,
    tls::{
        task::{TlsInput, TlsMaps, TrackerTask},
        tracker::TrackerStats,
    },
};

pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "tls",
    pinned: crate::dump::tls::MAPS,
    restart_keys: &["tls.uprobe_io"],
    record_types: &["tls", "tls_certificate"],
    docs: loader::tls::TlsSection::DOCS,
    metrics: crate::tls::sinks::METRICS,
    causes: crate::tls::sinks::CAUSES,
    validate: |config, problems| config.tls.validate("tls", problems),
    new: |config| Box::new(Tls::new(config)),
};

pub struct Tls {
    config: LoaderConfig,
    /// What is attached to OpenSSL copies; locked after the object, never before.
    attachments: Arc<Mutex<TlsAttachments>>,
    stats: Arc<Mutex<TrackerStats>>,
    rescan_every: watch::Sender<Duration>,
    /// The object, once started: the rescan attaches uprobes to it.
    ebpf: Option<SharedEbpf>,
}

impl Tls {
    fn new(config: &AgentConfig) -> Tls {
        Tls {
            config: config.loader.clone(),
            attachments: Default::default(),
            stats: Default::default(),
            rescan_every: watch::channel(config.library_rescan_interval).0,
            ebpf: None,
        }
    }

    fn attachments(&self) -> std::sync::MutexGuard<'_, TlsAttachments> {
        self.attachments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The OpenSSL libraries the uprobes are attached to.
    pub fn libraries(&self) -> Vec<PathBuf> {
        self.attachments().libraries.clone()
    }

    /// Attaches the uprobes to OpenSSL copies that appeared since the last look.
    pub fn refresh(&self) -> Vec<String> {
        match &self.ebpf {
            Some(ebpf) => refresh(ebpf, &self.attachments),
            None => Vec::new(),
        }
    }

    /// Changes how often new OpenSSL copies are looked for, from the next tick.
    pub fn set_rescan_interval(&self, every: Duration) {
        self.rescan_every.send_if_modified(|d| {
            let changed = *d != every;
            *d = every;
            changed
        });
    }
}

fn refresh(ebpf: &SharedEbpf, attachments: &Mutex<TlsAttachments>) -> Vec<String> {
    let mut ebpf = lock(ebpf);
    let mut attachments = attachments.lock().unwrap_or_else(|p| p.into_inner());
    loader::tls::refresh(&mut ebpf, &mut attachments)
        .into_iter()
        .map(|(p, e)| format!("{p}: {e}"))
        .collect()
}

/// The family's timer: new OpenSSL copies get their uprobes. The scan (procfs maps of
/// every process) runs on a blocking thread, away from the record consumers.
async fn rescan_libraries(
    ebpf: SharedEbpf,
    attachments: Arc<Mutex<TlsAttachments>>,
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
        let (ebpf, attachments) = (ebpf.clone(), attachments.clone());
        let problems = tokio::task::spawn_blocking(move || refresh(&ebpf, &attachments))
            .await
            .unwrap_or_default();
        for problem in problems {
            eprintln!("tls uprobes: {problem}");
        }
    }
}

impl Family for Tls {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    /// Nothing to read beforehand: the cgroup mount and the libraries are found at attach.
    fn plan(&mut self, _kernel: &KernelView<'_>) {}

    fn configure<'a>(&'a self, _loader: &mut EbpfLoader<'a>) {}

    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        _kernel_btf: Option<&Btf>,
        report: &mut Vec<ProbeStatus>,
    ) -> Result<bool, LoadError> {
        let attached = loader::tls::attach(ebpf, &self.config, report)?;
        let up = attached.wire || !attached.libraries.is_empty();
        *self.attachments() = attached;
        Ok(up)
    }

    fn start(&mut self, mut start: Start<'_>) -> Result<(), AgentError> {
        self.ebpf = Some(start.ebpf.clone());
        let up = {
            let a = self.attachments();
            a.wire || !a.libraries.is_empty()
        };
        if up {
            let (tx, rx) = mpsc::channel(start.channel_capacity);
            for (name, wire) in [(TLS_WIRE_EVENTS_MAP, true), (TLS_LIB_EVENTS_MAP, false)] {
                let tx = tx.clone();
                let c = start.counters.clone();
                consume::read_ring(&mut start, name, move |bytes: &[u8]| {
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
                })?;
            }
            let (flows, failures) = {
                let mut ebpf = lock(start.ebpf);
                (
                    ebpf.take_map(TLS_FLOWS_MAP)
                        .and_then(|m| HashMap::try_from(m).ok()),
                    ebpf.take_map(TLS_FAILURES_MAP)
                        .and_then(|m| Array::try_from(m).ok()),
                )
            };
            start.tasks.push(tokio::spawn(
                TrackerTask {
                    input: rx,
                    tcp: start.records.subscribe(),
                    out: start.records.clone(),
                    maps: TlsMaps { flows, failures },
                    clock: start.clock,
                    counters: start.counters.clone(),
                    stats: self.stats.clone(),
                    shutdown: start.shutdown.clone(),
                }
                .run(),
            ));
        }
        // Libraries that appear later get their uprobes, whether any was found at start.
        start.tasks.push(tokio::spawn(rescan_libraries(
            start.ebpf.clone(),
            self.attachments.clone(),
            self.rescan_every.subscribe(),
            start.shutdown.clone(),
        )));
        Ok(())
    }

    fn counters(&self, ebpf: &Ebpf) -> Option<BTreeMap<&'static str, u64>> {
        crate::stats::read_kernel_counters(ebpf, TLS_STATS_MAP)
    }

    fn add_stats(&self, stats: &mut AgentStats) {
        stats.tls = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
    }

    fn reload(&self, _old: &Config, new: &mut Config, _failed: &mut Failed) {
        self.set_rescan_interval(new.tls.library_rescan_interval);
    }

    fn take_links(&self) -> Vec<Box<dyn Send>> {
        self.attachments()
            .take_links()
            .into_iter()
            .map(|l| Box::new(l) as Box<dyn Send>)
            .collect()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
