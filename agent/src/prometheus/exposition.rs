//! `/metrics`: the agent's status document, read at scrape time, and (optionally) the
//! record metrics, written with `prometheus-client`'s encoders in the Prometheus text
//! format or OpenMetrics. Every family here is listed in docs/metrics.md (a test checks).

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    common::v1::{any_value, KeyValue},
    metrics::v1::{metric::Data, number_data_point, Metric},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use crate::{stats::AgentStats, status::Status};

/// What one scrape shows.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `None` when the run loop did not answer (the agent is stopping or stuck).
    pub status: Option<Status>,
    /// Record metrics (OTLP form, cumulative), empty unless `prometheus.records` is set.
    pub records: Vec<Metric>,
    /// Measurements folded into the overflow series of the record metrics.
    pub series_overflow: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the scraper's Accept header names it, the text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

pub fn encode(snapshot: Snapshot, format: Format) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("hostscope");
    registry.register_collector(Box::new(snapshot));
    let mut out = String::with_capacity(16 * 1024);
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

type Labels = Vec<(String, String)>;

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One family at a time: a descriptor, then its samples.
struct Out<'a> {
    enc: DescriptorEncoder<'a>,
}

enum Value {
    Int(u64),
    Float(f64),
}

impl Out<'_> {
    fn family(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        kind: MetricType,
        samples: impl IntoIterator<Item = (Labels, Value)>,
    ) -> std::fmt::Result {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return Ok(());
        }
        let mut m = self
            .enc
            .encode_descriptor(name, help, unit.as_ref(), kind)?;
        for (l, v) in samples {
            let mut s = m.encode_family(&l)?;
            match (kind, v) {
                (MetricType::Counter, Value::Int(v)) => {
                    s.encode_counter::<NoLabelSet, _, f64>(&v, None)?
                }
                (MetricType::Counter, Value::Float(v)) => {
                    s.encode_counter::<NoLabelSet, _, f64>(&v, None)?
                }
                (_, Value::Int(v)) => s.encode_gauge(&(v as i64))?,
                (_, Value::Float(v)) => s.encode_gauge(&v)?,
            }
        }
        Ok(())
    }

    fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) -> std::fmt::Result {
        let s = samples.into_iter().map(|(l, v)| (l, Value::Int(v)));
        self.family(name, help, None, MetricType::Counter, s)
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) -> std::fmt::Result {
        let s = samples.into_iter().map(|(l, v)| (l, Value::Float(v)));
        self.family(name, help, unit, MetricType::Gauge, s)
    }

    fn one_gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        v: f64,
    ) -> std::fmt::Result {
        self.gauge(name, help, unit, [(Labels::new(), v)])
    }

    fn one_counter(&mut self, name: &str, help: &str, v: u64) -> std::fmt::Result {
        self.counter(name, help, [(Labels::new(), v)])
    }
}

impl Collector for Snapshot {
    fn encode(&self, enc: DescriptorEncoder) -> std::fmt::Result {
        let mut out = Out { enc };
        out.one_gauge(
            "status_up",
            "1 when the agent's run loop answered this scrape's status request, 0 otherwise (then only this family is shown).",
            None,
            if self.status.is_some() { 1.0 } else { 0.0 },
        )?;
        if let Some(s) = &self.status {
            health(&mut out, s)?;
        }
        records(&mut out, &self.records, self.series_overflow)
    }
}

fn health(out: &mut Out, s: &Status) -> std::fmt::Result {
    out.gauge(
        "build_info",
        "Always 1; the agent's version and the node's kernel release as labels.",
        None,
        [(labels([("version", s.version), ("kernel", &s.kernel)]), 1.0)],
    )?;
    out.one_gauge(
        "uptime",
        "Time since the agent started.",
        Some(Unit::Seconds),
        s.uptime_s,
    )?;
    out.gauge(
        "probe_state",
        "1 per BPF program and its attach state (attached, degraded, not_attached, off); the reason is in /readyz and `hostscope status`.",
        None,
        s.probes.iter().map(|p| {
            let state = match p.state {
                crate::loader::AttachState::Attached => "attached",
                crate::loader::AttachState::Degraded(_) => "degraded",
                crate::loader::AttachState::NotAttached(_) => "not_attached",
                crate::loader::AttachState::Off(_) => "off",
            };
            (
                labels([("family", p.family), ("program", p.program), ("state", state)]),
                1.0,
            )
        }),
    )?;
    out.gauge(
        "ring_readers",
        "Tasks reading the rings and aggregations, by state (running, ended: an ended one stopped its family's records).",
        None,
        [
            ("running", s.consumers.tasks - s.consumers.ended.min(s.consumers.tasks)),
            ("ended", s.consumers.ended),
        ]
        .map(|(k, v)| (labels([("state", k)]), v as f64)),
    )?;
    kernel(out, &s.agent)?;
    out.one_gauge(
        "bpf_stats_enabled",
        "1 when kernel.bpf_stats_enabled is on (the BPF program run counts and times need it).",
        None,
        if s.bpf_stats_enabled { 1.0 } else { 0.0 },
    )?;
    out.counter(
        "bpf_program_runs",
        "Times each BPF program ran (kernel.bpf_stats_enabled).",
        s.agent
            .programs
            .iter()
            .map(|p| (labels([("program", &p.program)]), p.run_count)),
    )?;
    out.counter(
        "bpf_program_runs_missed",
        "Runs the kernel skipped because another BPF program was running on the CPU (recursion_misses).",
        s.agent
            .programs
            .iter()
            .map(|p| (labels([("program", &p.program)]), p.runs_missed)),
    )?;
    out.family(
        "bpf_program_run",
        "Time spent in each BPF program (kernel.bpf_stats_enabled).",
        Some(Unit::Seconds),
        MetricType::Counter,
        s.agent.programs.iter().map(|p| {
            (
                labels([("program", &p.program)]),
                Value::Float(p.run_time_ns as f64 / 1e9),
            )
        }),
    )?;
    out.gauge(
        "map_entries",
        "Entries in use in each hash-like BPF map (a full map loses updates).",
        None,
        s.maps.iter().map(|m| {
            (
                labels([("map", &m.name), ("type", m.map_type)]),
                m.entries as f64,
            )
        }),
    )?;
    out.gauge(
        "map_max_entries",
        "Capacity of each hash-like BPF map.",
        None,
        s.maps.iter().map(|m| {
            (
                labels([("map", &m.name), ("type", m.map_type)]),
                m.max_entries as f64,
            )
        }),
    )?;
    let a = &s.agent;
    out.counter(
        "records",
        "Records decoded from the rings (result=decoded), undecodable (decode_error), missed by a slow sink (lagged), made from the syscall aggregation maps (aggregated).",
        [
            (labels([("result", "decoded")]), a.records_decoded),
            (labels([("result", "aggregated")]), a.records_aggregated),
            (labels([("result", "decode_error")]), a.decode_errors),
            (labels([("result", "lagged")]), a.records_lagged),
        ],
    )?;
    let t = &a.tls;
    out.counter(
        "tls_tracker_events",
        "TLS handshake tracker: handshakes seen, failures, stream gaps, truncated captures, library events without a connection.",
        [
            ("handshakes", t.handshakes),
            ("failures", t.failures),
            ("stream_gaps", t.stream_gaps),
            ("truncated_captures", t.truncated_captures),
            ("lib_events_unmatched", t.lib_events_unmatched),
        ]
        .map(|(k, v)| (labels([("event", k)]), v)),
    )?;
    out.family(
        "tls_tracker_not_tls",
        "Bytes the TLS tracker skipped as not TLS.",
        Some(Unit::Bytes),
        MetricType::Counter,
        [(Labels::new(), Value::Int(t.not_tls_bytes))],
    )?;
    out.counter(
        "family_events",
        "Userspace counters of each probe family's joiner or tracker (family=dns: answered, timeouts, retries, parse_errors, ...).",
        a.families.iter().flat_map(|(family, s)| {
            s.counters
                .iter()
                .map(move |(k, v)| (labels([("family", family), ("counter", k)]), *v))
        }),
    )?;
    out.gauge(
        "family_level",
        "Current levels of each probe family's joiner or tracker (family=dns: pending questions, tcp_streams).",
        None,
        a.families.iter().flat_map(|(family, s)| {
            s.gauges
                .iter()
                .map(move |(k, v)| (labels([("family", family), ("level", k)]), *v as f64))
        }),
    )?;
    let c = &a.config;
    out.one_gauge(
        "config_generation",
        "Generation of the running configuration: 1 at start, one more per reload taken.",
        None,
        c.generation as f64,
    )?;
    out.counter(
        "config_reloads",
        "Configuration reloads by result (applied, invalid, partial).",
        [
            ("applied", c.applied),
            ("invalid", c.invalid),
            ("partial", c.partial),
        ]
        .map(|(k, v)| (labels([("result", k)]), v)),
    )?;
    out.one_gauge(
        "config_pending_restart_keys",
        "Changed configuration keys that wait for a restart.",
        None,
        c.pending_restart.len() as f64,
    )?;
    export(out, s)?;
    metadata(out, s)?;
    sinks(out, &s.sinks)
}

fn kernel(out: &mut Out, a: &AgentStats) -> std::fmt::Result {
    out.counter(
        "probe_events",
        "Kernel-side counters per probe family (counter: events_lost_ring_full, conn_map_full, ring_wakeups, ...), summed over CPUs.",
        a.kernel.iter().flat_map(|(family, counters)| {
            counters
                .iter()
                .map(move |(k, v)| (labels([("family", family), ("counter", k)]), *v))
        }),
    )?;
    let ring_full = hostscope_common::stats::Stat::RingFull.name();
    out.counter(
        "probe_lost_events",
        "Events a probe family could not deliver because its ring was full.",
        a.kernel.iter().map(|(family, counters)| {
            (
                labels([("family", family)]),
                counters.get(ring_full).copied().unwrap_or(0),
            )
        }),
    )
}

fn export(out: &mut Out, s: &Status) -> std::fmt::Result {
    out.one_gauge(
        "export_enabled",
        "1 when an OTLP endpoint is configured (the other export families are shown then).",
        None,
        if s.export.is_some() { 1.0 } else { 0.0 },
    )?;
    let Some(e) = &s.export else {
        return Ok(());
    };
    out.one_gauge(
        "export_queue_requests",
        "Export requests waiting (memory and disk queue).",
        None,
        e.queue_len as f64,
    )?;
    out.one_gauge(
        "export_queue",
        "Bytes of export requests waiting.",
        Some(Unit::Bytes),
        e.queue_bytes as f64,
    )?;
    out.counter(
        "export_items",
        "Data points, spans and log records by signal, result (sent, failed, dropped, rejected, excluded) and reason.",
        e.items.iter().map(|((signal, result, reason), n)| {
            (
                labels([("signal", signal), ("result", result), ("reason", reason)]),
                *n,
            )
        }),
    )?;
    out.one_counter(
        "export_retries",
        "Export requests retried after a retryable failure.",
        e.retries,
    )?;
    out.one_counter("export_requests", "Export requests sent.", e.requests_sent)?;
    out.family(
        "export_sent",
        "Request bytes sent, as on the wire (after compression; gRPC with its 5-byte frame header).",
        Some(Unit::Bytes),
        MetricType::Counter,
        [(Labels::new(), Value::Int(e.bytes_sent))],
    )?;
    out.one_gauge(
        "export_series",
        "Metric series the OTLP exporter holds.",
        None,
        e.series as f64,
    )
}

fn metadata(out: &mut Out, s: &Status) -> std::fmt::Result {
    let m = &s.metadata;
    out.counter(
        "metadata_events",
        "Identity resolution counters (counter: cache_hits, identity_builds, cache_resets, cgroup_misses, ...).",
        [
            ("cache_hits", m.hits),
            ("identity_builds", m.builds),
            ("cache_resets", m.cache_resets),
            ("cgroup_misses", m.cgroups.misses),
            ("cgroup_handle_lookups", m.cgroups.handle_lookups),
            ("cgroup_walks", m.cgroups.walks),
            ("cgroup_unresolved", m.cgroups.unresolved),
            ("cgroup_pruned", m.cgroups.pruned),
            ("unknown_runtimes", m.cgroups.unknown_runtimes),
            ("process_reads", m.processes.reads),
            ("processes_gone", m.processes.gone),
            ("processes_evicted_exited", m.processes.evicted_exited),
            ("processes_evicted_reused", m.processes.evicted_reused),
            ("processes_evicted_exec", m.processes.evicted_exec),
            ("kubelet_scans", m.kubelet_scans),
            ("kube_events", m.kube.events),
            ("kube_errors", m.kube.errors),
        ]
        .map(|(k, v)| (labels([("counter", k)]), v)),
    )?;
    out.gauge(
        "metadata_cached",
        "Entries in the identity caches (cache: identities, cgroups, processes, pods, services).",
        None,
        [
            ("identities", m.identities_cached),
            ("cgroups", m.cgroups.cached),
            ("processes", m.processes.cached),
            ("pods", m.kube.pods),
            ("services", m.kube.services),
        ]
        .map(|(k, v)| (labels([("cache", k)]), v as f64)),
    )
}

/// Each sink's own account (`status.sinks`: the API, RCA, …) is free-form JSON: every
/// numeric leaf becomes one sample, keyed by its path. A sink that wants typed families
/// of its own adds them here.
fn sinks(out: &mut Out, sinks: &BTreeMap<&'static str, serde_json::Value>) -> std::fmt::Result {
    let mut samples = Vec::new();
    for (name, value) in sinks {
        let mut leaves = Vec::new();
        numeric_leaves("", value, &mut leaves);
        for (key, v) in leaves {
            samples.push((labels([("sink", name), ("key", &key)]), v));
        }
    }
    out.gauge(
        "sink_stat",
        "Numeric values a sink reports in the status document (sink: api, rca, ...; key: its path there).",
        None,
        samples,
    )
}

fn numeric_leaves(at: &str, v: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.push((at.to_string(), f));
            }
        }
        serde_json::Value::Bool(b) => out.push((at.to_string(), if *b { 1.0 } else { 0.0 })),
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                numeric_leaves(&join(k), v, out);
            }
        }
        // Arrays (lists of incidents, clients) have no stable key per element.
        _ => {}
    }
}

/// The Prometheus name of an OTLP record metric, before the prefix and the suffixes the
/// encoder adds (`_seconds`, `_bytes`, `_total`): dots become underscores.
pub fn base_name(otlp: &str) -> String {
    otlp.replace('.', "_")
}

/// The OTLP unit as a Prometheus base unit (only seconds and bytes are used).
pub fn unit(otlp: &str) -> Option<Unit> {
    match otlp {
        "s" => Some(Unit::Seconds),
        "By" => Some(Unit::Bytes),
        _ => None,
    }
}

/// The exposed name of a family, as the encoders write it (prefix, unit, `_total`).
pub fn exposed_name(base: &str, unit: Option<&Unit>, kind: MetricType) -> String {
    let mut n = format!("hostscope_{base}");
    if let Some(u) = unit {
        n.push('_');
        n.push_str(u.as_str());
    }
    if kind == MetricType::Counter {
        n.push_str("_total");
    }
    n
}

fn label_set(attrs: &[KeyValue]) -> Labels {
    attrs
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                _ => String::new(),
            };
            (kv.key.replace('.', "_"), v)
        })
        .collect()
}

/// The TCP/TLS/syscall metrics of the OTLP aggregation (cumulative, explicit buckets),
/// under the same series cap. The aggregation's own `hostscope.*` health metrics are left
/// out: the status document gives them.
fn records(out: &mut Out, metrics: &[Metric], overflow: i64) -> std::fmt::Result {
    for m in metrics.iter().filter(|m| !m.name.starts_with("hostscope.")) {
        let name = base_name(&m.name);
        let unit = unit(&m.unit);
        let number = |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
            Some(number_data_point::Value::AsInt(i)) => Value::Float(i as f64),
            Some(number_data_point::Value::AsDouble(d)) => Value::Float(d),
            None => Value::Float(0.0),
        };
        match &m.data {
            Some(Data::Sum(s)) => out.family(
                &name,
                &m.description,
                unit,
                MetricType::Counter,
                s.data_points
                    .iter()
                    .map(|p| (label_set(&p.attributes), number(p))),
            )?,
            Some(Data::Gauge(g)) => out.family(
                &name,
                &m.description,
                unit,
                MetricType::Gauge,
                g.data_points
                    .iter()
                    .map(|p| (label_set(&p.attributes), number(p))),
            )?,
            Some(Data::Histogram(h)) if !h.data_points.is_empty() => {
                let mut enc = out.enc.encode_descriptor(
                    &name,
                    &m.description,
                    unit.as_ref(),
                    MetricType::Histogram,
                )?;
                for p in &h.data_points {
                    let l = label_set(&p.attributes);
                    let mut buckets: Vec<(f64, u64)> = p
                        .explicit_bounds
                        .iter()
                        .copied()
                        .zip(p.bucket_counts.iter().copied())
                        .collect();
                    let last = p.bucket_counts.get(p.explicit_bounds.len()).copied();
                    buckets.push((f64::INFINITY, last.unwrap_or(0)));
                    enc.encode_family(&l)?.encode_histogram::<NoLabelSet>(
                        p.sum.unwrap_or(0.0),
                        p.count,
                        &buckets,
                        None,
                    )?;
                }
            }
            _ => {}
        }
    }
    out.counter(
        "metrics_series_overflow",
        "Record measurements folded into the overflow series because the series cap (export.series_limit) was reached.",
        [(Labels::new(), overflow.max(0) as u64)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        export::metrics::{self, Instrument},
        kernel::map_fill::MapFill,
        loader::{AttachState, ProbeStatus},
        stats::ProgramCost,
    };

    /// A status with every part filled, so that every family is emitted.
    fn full_status() -> Status {
        let mut agent = AgentStats::default();
        agent
            .kernel
            .insert("tcp", [("emitted", 5), ("events_lost_ring_full", 1)].into());
        agent.programs.push(ProgramCost {
            program: "tcp_state_change".into(),
            run_count: 10,
            run_time_ns: 5_000,
            runs_missed: 2,
        });
        let mut export = crate::export::ExportSnapshot::default();
        export.items.insert(("metrics", "sent", String::new()), 3);
        Status {
            version: "0.0.0",
            kernel: "6.18".into(),
            pid: 1,
            uptime_s: 2.5,
            bpf_stats_enabled: true,
            probes: vec![
                ProbeStatus {
                    family: "tcp",
                    program: "tcp_state_change",
                    hook: "sock:inet_sock_set_state".into(),
                    state: AttachState::Attached,
                },
                ProbeStatus {
                    family: "sys",
                    program: "sys_exit",
                    hook: "raw_syscalls:sys_exit".into(),
                    state: AttachState::NotAttached("syscall hooks off".into()),
                },
            ],
            maps: vec![MapFill {
                name: "TCP_CONNS".into(),
                map_type: "hash",
                entries: 3,
                max_entries: 10,
            }],
            consumers: crate::status::Consumers { tasks: 3, ended: 0 },
            agent,
            metadata: Default::default(),
            export: Some(export),
            sinks: [("api", serde_json::json!({"clients": 2, "nested": {"n": 1}}))].into(),
        }
    }

    /// `# TYPE <name> <type>` lines: the families an exposition has.
    fn families(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    fn docs() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
            .expect("docs/metrics.md")
    }

    #[test]
    fn every_health_family_is_documented() {
        let snapshot = Snapshot {
            status: Some(full_status()),
            ..Default::default()
        };
        let text = encode(snapshot, Format::Prometheus).unwrap();
        let found = families(&text);
        assert!(found.len() >= 25, "only {} families:\n{text}", found.len());
        let docs = docs();
        for (name, _) in &found {
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} is emitted but not in docs/metrics.md"
            );
        }
        // Counters carry _total, units their base unit.
        assert!(
            text.contains(
                "hostscope_bpf_program_run_seconds_total{program=\"tcp_state_change\"} 0.000005"
            ),
            "{text}"
        );
        assert!(
            text.contains("hostscope_probe_lost_events_total{family=\"tcp\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hostscope_sink_stat{sink=\"api\",key=\"nested.n\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn every_record_family_is_documented() {
        let docs = docs();
        for def in metrics::all().filter(|m| !m.own) {
            let kind = match def.instrument {
                Instrument::Counter => MetricType::Counter,
                Instrument::Gauge => MetricType::Gauge,
                Instrument::Histogram => MetricType::Histogram,
            };
            let name = exposed_name(&base_name(def.name), unit(def.unit).as_ref(), kind);
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} (from {}) is not in docs/metrics.md",
                def.name
            );
        }
    }

    #[test]
    fn run_loop_gone_shows_only_status_up() {
        let text = encode(Snapshot::default(), Format::Prometheus).unwrap();
        assert!(text.contains("hostscope_status_up 0"), "{text}");
        assert!(!text.contains("hostscope_records_total"), "{text}");
    }

    #[test]
    fn openmetrics_on_request() {
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        let text = encode(Snapshot::default(), Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
