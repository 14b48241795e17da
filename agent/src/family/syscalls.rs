//! The syscalls family on the [`Family`] interface: the aggregation programs and the
//! watched-path security tracepoints (`loader::syscalls`), the slow-call and security
//! ring, the interval aggregator over the in-kernel maps, and the live controls
//! (filters, watched paths, alert thresholds) that a reload changes.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use aya::{Btf, Ebpf, EbpfLoader};
use hostscope_common::syscalls::{
    SyscallStat, SYSCALL_AGG_MAP, SYSCALL_AGG_SLOTS_MAP, SYSCALL_EVENTS_MAP,
    SYSCALL_OFFSETS_GLOBAL, SYSCALL_START_MAP, SYSCALL_STATS_MAP,
};
use tokio::sync::watch;

use super::{consume, Descriptor, Failed, Family, KernelView, Start};
use crate::{
    agent::{AgentConfig, AgentError},
    config::Config,
    events::syscalls::{AlertSettings, SharedSyscallMaps, SyscallMaps},
    loader::{
        self,
        syscalls::{SyscallOptions, SyscallPlan, SyscallRuntime, SyscallsAttached},
        watch_paths::WatchedPaths,
        LoadError, ProbeStatus,
    },
};

pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "syscalls",
    pinned: crate::dump::syscalls::MAPS,
    restart_keys: &[
        "syscalls.hooks",
        "syscalls.ring_bytes",
        "syscalls.max_keys",
        "syscalls.security",
    ],
    record_types: &["syscalls", "syscall_alert", "syscall_slow", "security"],
    docs: loader::syscalls::SyscallsSection::DOCS,
    metrics: crate::syscalls::sinks::METRICS,
    causes: crate::syscalls::sinks::CAUSES,
    validate: |config, problems| config.syscalls.validate("syscalls", problems),
    new: |config| Box::new(Syscalls::new(config)),
};

pub struct Syscalls {
    options: SyscallOptions,
    wakeup_bytes: u64,
    plan: Option<SyscallPlan>,
    attached: SyscallsAttached,
    /// The aggregation maps and runtime config, when the aggregation attached.
    maps: Option<SharedSyscallMaps>,
    /// The aggregator's interval and error-burst thresholds, changed live.
    alerts: Option<watch::Sender<AlertSettings>>,
    /// The watched-path trie, when the security tracepoints attached.
    watched: Option<Mutex<WatchedPaths>>,
}

impl Syscalls {
    fn new(config: &AgentConfig) -> Syscalls {
        Syscalls {
            options: config.loader.syscalls.clone(),
            wakeup_bytes: config.loader.wakeup_bytes,
            plan: None,
            attached: SyscallsAttached::default(),
            maps: None,
            alerts: None,
            watched: None,
        }
    }

    /// Changes the filters / slow threshold without reloading.
    pub fn set_runtime(&self, runtime: SyscallRuntime) -> Result<(), AgentError> {
        let maps = self.maps.as_ref().ok_or(AgentError::SyscallsNotAttached)?;
        let mut maps = maps.lock().unwrap_or_else(|p| p.into_inner());
        Ok(maps.set_runtime(runtime)?)
    }

    /// Makes the kernel's watched-path trie hold exactly `paths`, live (see
    /// [`WatchedPaths::set`]).
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

    /// Changes the aggregation interval and error-burst thresholds live.
    pub fn set_alerts(&self, settings: AlertSettings) -> Result<(), AgentError> {
        let tx = self
            .alerts
            .as_ref()
            .ok_or(AgentError::SyscallsNotAttached)?;
        settings.check()?;
        tx.send_replace(settings);
        Ok(())
    }
}

impl Family for Syscalls {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn plan(&mut self, kernel: &KernelView<'_>) {
        self.plan = Some(loader::syscalls::plan(
            kernel.btf.ok(),
            kernel.tracefs,
            &self.options,
        ));
    }

    fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        if let Some(plan) = &self.plan {
            loader
                .override_global(SYSCALL_OFFSETS_GLOBAL, &plan.offsets, true)
                .map_max_entries(SYSCALL_START_MAP, plan.slots)
                // Both generations' slots.
                .map_max_entries(SYSCALL_AGG_SLOTS_MAP, 2 * (plan.offsets.agg_slot_mask + 1));
        }
        loader
            .map_max_entries(SYSCALL_EVENTS_MAP, self.options.ring_bytes)
            .map_max_entries(SYSCALL_AGG_MAP, loader::syscalls::max_keys(&self.options));
    }

    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        kernel_btf: Option<&Btf>,
        report: &mut Vec<ProbeStatus>,
    ) -> Result<bool, LoadError> {
        let Some(plan) = &self.plan else {
            return Ok(false);
        };
        self.attached = loader::syscalls::attach(
            ebpf,
            plan,
            &self.options,
            self.wakeup_bytes,
            kernel_btf,
            report,
        )?;
        Ok(self.attached.any())
    }

    fn start(&mut self, mut start: Start<'_>) -> Result<(), AgentError> {
        if self.attached.security {
            let trie = WatchedPaths::take(&mut super::lock(start.ebpf), &self.options.watch_paths)?;
            self.watched = Some(Mutex::new(trie));
        }
        if self.attached.any() {
            let clock = start.clock;
            consume::publish_ring(&mut start, SYSCALL_EVENTS_MAP, move |bytes| {
                crate::events::syscalls::decode(bytes, &clock)
            })?;
        }
        if self.attached.aggregation {
            let maps =
                SyscallMaps::take(&mut super::lock(start.ebpf), self.options.runtime.clone())?;
            let maps = Arc::new(Mutex::new(maps));
            let (alerts, alerts_rx) = watch::channel(AlertSettings::from_options(&self.options));
            start
                .consumers
                .push(tokio::spawn(crate::events::syscalls::run_aggregator(
                    maps.clone(),
                    alerts_rx,
                    start.clock,
                    start.records.clone(),
                    start.counters.clone(),
                    start.shutdown.clone(),
                )));
            self.maps = Some(maps);
            self.alerts = Some(alerts);
        }
        Ok(())
    }

    fn counters(&self, ebpf: &Ebpf) -> Option<BTreeMap<&'static str, u64>> {
        crate::stats::read_counters(
            ebpf,
            SYSCALL_STATS_MAP,
            SyscallStat::ALL.map(|s| (s as u32, s.name())),
        )
    }

    fn reload(&self, old: &Config, effective: &mut Config, failed: &mut Failed) {
        let (o, n) = (&old.syscalls, &effective.syscalls);
        let options = match n.options() {
            Ok(o) => o,
            Err(e) => {
                failed.push(("syscalls".into(), e));
                effective.syscalls = old.syscalls.clone();
                return;
            }
        };
        let filters_changed = o.by_cgroup != n.by_cgroup
            || o.pid != n.pid
            || o.cgroup != n.cgroup
            || o.syscalls != n.syscalls
            || o.slow_threshold != n.slow_threshold;
        if filters_changed {
            if let Err(e) = self.set_runtime(options.runtime.clone()) {
                failed.push(("syscalls.filters".into(), e.to_string()));
                let s = &mut effective.syscalls;
                s.by_cgroup = o.by_cgroup;
                s.pid = o.pid;
                s.cgroup = o.cgroup.clone();
                s.syscalls = o.syscalls.clone();
                s.slow_threshold = o.slow_threshold;
            }
        }
        if o.effective_watch_paths() != effective.syscalls.effective_watch_paths() {
            if let Err(e) = self.set_watch_paths(&options.watch_paths) {
                failed.push(("syscalls.watch_paths".into(), e.to_string()));
                effective.syscalls.watch_paths = o.watch_paths.clone();
                effective.syscalls.default_watch_paths = o.default_watch_paths;
            }
        }
        let n = &effective.syscalls;
        if o.interval != n.interval
            || o.error_burst_rate != n.error_burst_rate
            || o.error_burst_min != n.error_burst_min
        {
            let settings = AlertSettings {
                interval: n.interval,
                error_burst_per_s: n.error_burst_rate,
                error_burst_min: n.error_burst_min,
            };
            if let Err(e) = self.set_alerts(settings) {
                failed.push(("syscalls.alerts".into(), e.to_string()));
                let s = &mut effective.syscalls;
                s.interval = o.interval;
                s.error_burst_rate = o.error_burst_rate;
                s.error_burst_min = o.error_burst_min;
            }
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
