//! The TCP family on the [`Family`] interface: the tracepoints of `probes/src/tcp.rs`
//! (planned and attached by `loader::tcp`), one ring of connection records.

use std::collections::BTreeMap;

use aya::{Btf, Ebpf, EbpfLoader};
use hostscope_common::tcp::{TCP_CONNS_MAP, TCP_EVENTS_MAP, TCP_OFFSETS_GLOBAL, TCP_STATS_MAP};

use super::{consume, Descriptor, Family, KernelView, Start};
use crate::{
    agent::{AgentConfig, AgentError},
    events::{
        self,
        tcp::{Direction, TcpEventKind},
        Record,
    },
    loader::{self, tcp::TcpPlan, LoadError, LoaderConfig, ProbeStatus},
};

pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "tcp",
    pinned: crate::dump::tcp::MAPS,
    restart_keys: &["tcp.ring_bytes", "tcp.max_connections"],
    record_types: &["tcp"],
    docs: loader::tcp::TcpSection::DOCS,
    metrics: crate::tcp::sinks::METRICS,
    causes: crate::tcp::sinks::CAUSES,
    validate: |config, problems| config.tcp.validate("tcp", problems),
    new: |config| Box::new(Tcp::new(config)),
};

pub struct Tcp {
    config: LoaderConfig,
    plan: Option<TcpPlan>,
    attached: bool,
}

impl Tcp {
    fn new(config: &AgentConfig) -> Tcp {
        Tcp {
            config: config.loader.clone(),
            plan: None,
            attached: false,
        }
    }
}

impl Family for Tcp {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn plan(&mut self, kernel: &KernelView<'_>) {
        self.plan = Some(loader::tcp::plan(
            kernel.btf.ok(),
            kernel.btf.err(),
            kernel.tracefs,
        ));
    }

    fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        if let Some(plan) = &self.plan {
            loader.override_global(TCP_OFFSETS_GLOBAL, &plan.offsets, true);
        }
        loader
            .map_max_entries(TCP_EVENTS_MAP, self.config.tcp_ring_bytes)
            .map_max_entries(TCP_CONNS_MAP, self.config.tcp_max_conns);
    }

    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        _kernel_btf: Option<&Btf>,
        report: &mut Vec<ProbeStatus>,
    ) -> Result<bool, LoadError> {
        let Some(plan) = &self.plan else {
            return Ok(false);
        };
        self.attached = loader::tcp::attach(ebpf, plan, &self.config, report)?;
        Ok(self.attached)
    }

    fn start(&mut self, mut start: Start<'_>) -> Result<(), AgentError> {
        if !self.attached {
            return Ok(());
        }
        let clock = start.clock;
        let names = start.names.clone();
        consume::publish_ring(&mut start, TCP_EVENTS_MAP, move |bytes| {
            let mut r = events::tcp::decode(bytes, &clock)?;
            if r.direction == Direction::Active {
                let ip = r.remote.ip();
                // Only a connect waits for the DNS side: the records after it find the
                // name it found.
                r.remote_name = match r.event {
                    TcpEventKind::Connect | TcpEventKind::ConnectFailed => {
                        names.lookup_after_answers(r.pid, r.cgroup_id, ip, r.timestamp_unix_ns)
                    }
                    _ => names.lookup(r.pid, r.cgroup_id, ip, r.timestamp_unix_ns),
                };
            }
            Ok(Record::Tcp(r))
        })
    }

    fn counters(&self, ebpf: &Ebpf) -> Option<BTreeMap<&'static str, u64>> {
        crate::stats::read_kernel_counters(ebpf, TCP_STATS_MAP)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
