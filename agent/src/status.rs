//! The agent's status document (`hostscope status`, the API's `GetStatus`): what runs,
//! how it is attached, what it costs and what it lost. Built by the run loop on request
//! ([`StatusHandle::get`]), so every figure is read at the moment it is asked for.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::{
    export::ExportSnapshot, kernel::map_fill::MapFill, loader::ProbeStatus,
    metadata::MetadataStats, stats::AgentStats,
};

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    /// `uname -r` of the node.
    pub kernel: String,
    pub pid: u32,
    pub uptime_s: f64,
    /// Whether `kernel.bpf_stats_enabled` is on (per-program run time needs it).
    pub bpf_stats_enabled: bool,
    /// Per program: attached, degraded or not attached, and why.
    pub probes: Vec<ProbeStatus>,
    /// Entries in use per hash-like map (a full map loses updates).
    pub maps: Vec<MapFill>,
    /// The ring and aggregation readers (a dead one means a family's records stopped).
    pub consumers: Consumers,
    /// Kernel counters per family, records decoded / lagged, per-program cost, the TLS
    /// tracker and the configuration's generation and reloads.
    pub agent: AgentStats,
    pub metadata: MetadataStats,
    /// Absent without an OTLP endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportSnapshot>,
    /// Each sink's own account (`api`, `rca`, …), under its name.
    pub sinks: BTreeMap<&'static str, serde_json::Value>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Consumers {
    pub tasks: usize,
    pub ended: usize,
}

type Request = oneshot::Sender<Status>;

/// Asks the run loop for a [`Status`]. Cheap to clone; every sink gets one.
#[derive(Clone, Debug)]
pub struct StatusHandle {
    tx: Option<mpsc::Sender<Request>>,
}

/// The run loop's side: answers each request with a status built then.
pub struct StatusRequests {
    rx: mpsc::Receiver<Request>,
}

/// Requests waiting for the run loop at most; more wait for room (a status is small work).
const PENDING: usize = 64;

pub fn channel() -> (StatusHandle, StatusRequests) {
    let (tx, rx) = mpsc::channel(PENDING);
    (StatusHandle { tx: Some(tx) }, StatusRequests { rx })
}

impl StatusHandle {
    /// A handle that never has a status (a sink running outside the daemon).
    pub fn unavailable() -> StatusHandle {
        StatusHandle { tx: None }
    }

    /// The status now; `None` when the run loop is gone (the agent is stopping) or does
    /// not answer within a few seconds.
    pub async fn get(&self) -> Option<Status> {
        let tx = self.tx.as_ref()?;
        let (reply, answer) = oneshot::channel();
        tx.send(reply).await.ok()?;
        tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .ok()?
            .ok()
    }
}

impl StatusRequests {
    /// The next request; pending forever once every handle is gone.
    pub async fn next(&mut self) -> oneshot::Sender<Status> {
        match self.rx.recv().await {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

/// The text form of `hostscope status`: one section per concern, zero counters left out
/// where they would only be noise, losses always shown.
impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.agent;
        writeln!(
            f,
            "hostscope {} (pid {}), kernel {}, up {}, configuration generation {}",
            self.version,
            self.pid,
            self.kernel,
            humantime::format_duration(Duration::from_secs(self.uptime_s as u64)),
            a.config.generation
        )?;
        if !a.config.pending_restart.is_empty() {
            writeln!(
                f,
                "  changed keys waiting for a restart: {}",
                a.config.pending_restart.join(", ")
            )?;
        }
        writeln!(f, "\nprobes:")?;
        for p in &self.probes {
            writeln!(f, "  {p}")?;
        }
        let families: Vec<String> = crate::loader::FamilyHealth::of(&self.probes)
            .iter()
            .map(|(name, h)| {
                let word = if h.is_off() {
                    "off"
                } else if h.up == 0 {
                    "down"
                } else if h.degraded.is_empty() && h.down.is_empty() && h.off.is_empty() {
                    "on"
                } else {
                    "degraded"
                };
                format!("{name} {word}")
            })
            .collect();
        writeln!(f, "  families: {}", families.join(", "))?;
        writeln!(f, "\nprograms (kernel.bpf_stats_enabled):")?;
        if !self.bpf_stats_enabled {
            writeln!(
                f,
                "  run counts and times need `sysctl kernel.bpf_stats_enabled=1`"
            )?;
        }
        for p in a.programs.iter().filter(|p| p.run_count > 0) {
            writeln!(
                f,
                "  {:<28} {:>12} runs {:>8} ns/run",
                p.program,
                p.run_count,
                p.run_time_ns / p.run_count.max(1)
            )?;
        }
        for p in a.programs.iter().filter(|p| p.runs_missed > 0) {
            writeln!(
                f,
                "  {:<28} {:>12} runs skipped by the kernel (another BPF program was running on the CPU)",
                p.program, p.runs_missed
            )?;
        }
        writeln!(f, "\nmaps:")?;
        for m in &self.maps {
            writeln!(
                f,
                "  {:<20} {:<12} {:>8} / {:<8} {:5.1}%",
                m.name,
                m.map_type,
                m.entries,
                m.max_entries,
                m.percent()
            )?;
        }
        writeln!(f, "\nkernel counters:")?;
        for (family, counters) in &a.kernel {
            let line: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "  {family:<9} {}", line.join(" "))?;
        }
        writeln!(
            f,
            "\nrecords: {} decoded, {} decode errors, {} lagged (lost in total: {})",
            a.records_decoded,
            a.decode_errors,
            a.records_lagged,
            a.total_lost()
        )?;
        let t = &a.tls;
        writeln!(
            f,
            "tls tracker: {} handshakes, {} failures, {} stream gaps, {} truncated, {} unmatched",
            t.handshakes, t.failures, t.stream_gaps, t.truncated_captures, t.lib_events_unmatched
        )?;
        for (family, stats) in &a.families {
            writeln!(f, "{family}: {stats}")?;
        }
        match &self.export {
            Some(e) => writeln!(f, "\nexport: {e}")?,
            None => writeln!(f, "\nexport: off (no OTLP endpoint)")?,
        }
        let m = &self.metadata;
        writeln!(
            f,
            "\nmetadata: {} identities cached, {} hits, {} builds, {} resets; kube: {} pods, {} services, {} errors",
            m.identities_cached, m.hits, m.builds, m.cache_resets, m.kube.pods, m.kube.services, m.kube.errors
        )?;
        for (name, value) in &self.sinks {
            writeln!(f, "\n{name}: {value}")?;
        }
        Ok(())
    }
}
