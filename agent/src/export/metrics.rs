//! Records -> OTLP metrics: an in-process aggregation (counters, gauges, explicit-bucket
//! histograms) keyed by metric and attribute set, collected every export interval with
//! cumulative (default) or delta temporality. The series count is capped: a new attribute
//! set beyond the cap is folded into one `otel.metric.overflow=true` series and counted,
//! so a burst of new peers or processes cannot grow the agent's memory without bound.
//!
//! Each family defines its metrics ([`MetricDef`] statics, listed in its
//! `family::Descriptor`) and measures its records through a [`Meter`] ([`Measure`], next
//! to the family's code); the agent's own `hostscope.*` metrics are defined here. The
//! reference table of these metrics is docs/metrics.md.

use std::{collections::BTreeMap, sync::Arc};

use opentelemetry_proto::tonic::{
    common::v1::KeyValue,
    metrics::v1::{
        exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
        AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge,
        Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum,
    },
};

use super::{
    config::Temporality,
    resource::{attr_value, kv},
};
use crate::{
    events::Record,
    metadata::{AttrValue, Identity},
    stats::AgentStats,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instrument {
    /// Monotonic sum.
    Counter,
    Gauge,
    Histogram,
}

/// One metric. Each is a `static`: a measurement names it by reference.
#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub instrument: Instrument,
    pub unit: &'static str,
    pub description: &'static str,
    /// Explicit bounds for histograms (in `unit`), overridable with `--otlp-buckets`.
    pub bounds: &'static [f64],
    /// Agent health: never folded into the overflow series.
    pub own: bool,
}

impl MetricDef {
    pub const fn counter(
        name: &'static str,
        unit: &'static str,
        description: &'static str,
    ) -> Self {
        Self::new(name, Instrument::Counter, unit, &[], description)
    }

    pub const fn gauge(name: &'static str, unit: &'static str, description: &'static str) -> Self {
        Self::new(name, Instrument::Gauge, unit, &[], description)
    }

    pub const fn histogram(
        name: &'static str,
        unit: &'static str,
        bounds: &'static [f64],
        description: &'static str,
    ) -> Self {
        Self::new(name, Instrument::Histogram, unit, bounds, description)
    }

    const fn new(
        name: &'static str,
        instrument: Instrument,
        unit: &'static str,
        bounds: &'static [f64],
        description: &'static str,
    ) -> Self {
        MetricDef {
            name,
            instrument,
            unit,
            description,
            bounds,
            own: false,
        }
    }

    /// One of the agent's own health metrics.
    const fn own(self) -> Self {
        MetricDef { own: true, ..self }
    }
}

pub static OWN_RECORDS: MetricDef = MetricDef::counter("hostscope.records", "{record}",
    "Records decoded from the kernel (hostscope.result=decoded), undecodable (decode_error), missed by a slow sink (lagged).").own();
pub static OWN_PROBE_EVENTS: MetricDef = MetricDef::counter("hostscope.probe.events", "{event}",
    "Kernel-side counters per probe family (hostscope.probe.counter: emitted, ring_full, map_full, ...).").own();
pub static OWN_PROBE_LOST: MetricDef = MetricDef::counter(
    "hostscope.probe.lost",
    "{event}",
    "Events a probe family could not deliver (ring full).",
)
.own();
pub static OWN_EXPORT_QUEUE_SIZE: MetricDef = MetricDef::gauge(
    "hostscope.export.queue.size",
    "{request}",
    "Export requests waiting (memory and disk queue).",
)
.own();
pub static OWN_EXPORT_QUEUE_BYTES: MetricDef = MetricDef::gauge(
    "hostscope.export.queue.bytes",
    "By",
    "Bytes of export requests waiting.",
)
.own();
pub static OWN_EXPORT_ITEMS: MetricDef = MetricDef::counter("hostscope.export.items", "{item}",
    "Data points, spans and log records by hostscope.signal and hostscope.export.result (sent, failed, dropped, rejected) and error.type.").own();
pub static OWN_EXPORT_RETRIES: MetricDef = MetricDef::counter(
    "hostscope.export.retries",
    "{request}",
    "Export requests retried after a retryable failure.",
)
.own();
pub static OWN_SERIES_OVERFLOW: MetricDef = MetricDef::counter(
    "hostscope.metrics.series_overflow",
    "{measurement}",
    "Measurements folded into the overflow series because the series cap was reached.",
)
.own();
pub static OWN_CONFIG_RELOADS: MetricDef = MetricDef::counter(
    "hostscope.config.reloads",
    "{reload}",
    "Configuration reloads by hostscope.config.result (applied, invalid, partial).",
)
.own();
pub static OWN_CONFIG_GENERATION: MetricDef = MetricDef::gauge(
    "hostscope.config.generation",
    "{generation}",
    "Generation of the running configuration: 1 at start, one more per reload taken.",
)
.own();
pub static OWN_METADATA_EVENTS: MetricDef = MetricDef::counter("hostscope.metadata.events", "{event}",
    "Identity resolution counters by hostscope.metadata.counter (cache_hits, identity_builds, cgroup_misses, cgroup_unresolved, unknown_runtimes, process_reads, processes_gone, kube_events, kube_errors, ...).").own();
pub static OWN_METADATA_CACHED: MetricDef = MetricDef::gauge("hostscope.metadata.cached", "{entry}",
    "Entries in the identity caches by hostscope.metadata.cache (identities, cgroups, processes, pods, services).").own();

/// The agent's own metrics, after the families'.
const OWN: &[&MetricDef] = &[
    &OWN_RECORDS,
    &OWN_PROBE_EVENTS,
    &OWN_PROBE_LOST,
    &OWN_EXPORT_QUEUE_SIZE,
    &OWN_EXPORT_QUEUE_BYTES,
    &OWN_EXPORT_ITEMS,
    &OWN_EXPORT_RETRIES,
    &OWN_SERIES_OVERFLOW,
    &OWN_CONFIG_RELOADS,
    &OWN_CONFIG_GENERATION,
    &OWN_METADATA_EVENTS,
    &OWN_METADATA_CACHED,
];

/// Every metric: each registered family's, then the agent's own.
pub fn all() -> impl Iterator<Item = &'static MetricDef> {
    crate::family::REGISTERED
        .iter()
        .flat_map(|d| d.metrics.iter().copied())
        .chain(OWN.iter().copied())
}

pub fn is_histogram(name: &str) -> bool {
    all().any(|m| m.name == name && m.instrument == Instrument::Histogram)
}

/// How a record type adds to the metrics: implemented next to its family's code.
pub trait Measure {
    fn measure(&self, _meter: &mut Meter<'_>) {}
}

/// An attribute value that can key a series. Strings are shared (`Arc<str>`): a record
/// measured into several series clones its key for each, which is then a reference
/// count, not an allocation per attribute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Val {
    S(Arc<str>),
    I(i64),
    B(bool),
}

/// The attribute set of one series.
pub type Key = Vec<(Arc<str>, Val)>;

/// A string attribute.
pub fn text(name: &str, value: impl Into<Arc<str>>) -> (Arc<str>, Val) {
    (name.into(), Val::S(value.into()))
}

/// An integer attribute.
pub fn int(name: &str, value: i64) -> (Arc<str>, Val) {
    (name.into(), Val::I(value))
}

fn val(v: &AttrValue) -> Val {
    match v {
        AttrValue::Str(s) => Val::S(s.as_str().into()),
        AttrValue::Int(i) => Val::I(*i),
        AttrValue::Bool(b) => Val::B(*b),
    }
}

fn to_kvs(key: &Key) -> Vec<KeyValue> {
    key.iter()
        .map(|(k, v)| {
            let av = match v {
                Val::S(s) => AttrValue::Str(s.to_string()),
                Val::I(i) => AttrValue::Int(*i),
                Val::B(b) => AttrValue::Bool(*b),
            };
            kv(k, attr_value(&av))
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Hist {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Hist {
    fn new(n_bounds: usize) -> Hist {
        Hist {
            counts: vec![0; n_bounds + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn record(&mut self, bounds: &[f64], v: f64, n: u64) {
        // Bucket i holds (bounds[i-1], bounds[i]], as OTLP defines explicit buckets.
        let i = bounds.partition_point(|b| *b < v);
        self.counts[i] += n;
        self.count += n;
    }
}

/// Base-2 exponential histogram (OTLP `ExponentialHistogram`): starts at the finest scale
/// and halves its resolution whenever the values seen need more than `EXP_MAX_BUCKETS`
/// buckets, so no bucket bounds have to be chosen.
#[derive(Clone, Debug)]
struct ExpHist {
    scale: i32,
    zero_count: u64,
    buckets: BTreeMap<i32, u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

pub const EXP_MAX_BUCKETS: usize = 160;
const EXP_MAX_SCALE: i32 = 20;

impl ExpHist {
    fn new() -> ExpHist {
        ExpHist {
            scale: EXP_MAX_SCALE,
            zero_count: 0,
            buckets: BTreeMap::new(),
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Bucket `i` holds (base^i, base^(i+1)] with base = 2^(2^-scale).
    fn index(v: f64, scale: i32) -> i32 {
        (v.log2() * 2f64.powi(scale)).ceil() as i32 - 1
    }

    fn record(&mut self, v: f64, n: u64) {
        self.count += n;
        if v <= 0.0 || !v.is_finite() {
            self.zero_count += n;
            return;
        }
        *self.buckets.entry(Self::index(v, self.scale)).or_default() += n;
        while let (Some((&lo, _)), Some((&hi, _))) = (
            self.buckets.first_key_value(),
            self.buckets.last_key_value(),
        ) {
            if ((hi - lo) as usize) < EXP_MAX_BUCKETS {
                break;
            }
            // One scale down: buckets 2i and 2i+1 merge into i (floor division).
            let old = std::mem::take(&mut self.buckets);
            for (i, c) in old {
                *self.buckets.entry(i >> 1).or_default() += c;
            }
            self.scale -= 1;
        }
    }

    fn point(&self, key: &Key, start: u64, now: u64) -> ExponentialHistogramDataPoint {
        let positive = match (
            self.buckets.first_key_value(),
            self.buckets.last_key_value(),
        ) {
            (Some((&lo, _)), Some((&hi, _))) => Some(Buckets {
                offset: lo,
                bucket_counts: (lo..=hi)
                    .map(|i| self.buckets.get(&i).copied().unwrap_or(0))
                    .collect(),
            }),
            _ => None,
        };
        ExponentialHistogramDataPoint {
            attributes: to_kvs(key),
            start_time_unix_nano: start,
            time_unix_nano: now,
            count: self.count,
            sum: Some(self.sum),
            scale: self.scale,
            zero_count: self.zero_count,
            positive,
            min: self.min.is_finite().then_some(self.min),
            max: self.max.is_finite().then_some(self.max),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug)]
enum Value {
    Exponential(ExpHist),
    /// Cumulative total and what the last delta export reported.
    Counter {
        total: i64,
        reported: i64,
    },
    Gauge(f64),
    Histogram(Hist),
}

#[derive(Clone, Debug)]
struct Series {
    start_ns: u64,
    value: Value,
}

pub struct Options {
    pub temporality: Temporality,
    pub buckets: BTreeMap<String, Vec<f64>>,
    pub series_limit: usize,
    pub pids: bool,
    pub peers: bool,
    /// `dns.question.name` on DNS metric data points.
    pub dns_names: bool,
    /// Histograms as base-2 exponential histograms instead of explicit buckets.
    pub exponential: bool,
}

pub struct MetricsState {
    opts: Options,
    /// Per metric; shared so that a measurement borrows them without a copy.
    bounds: Vec<Arc<[f64]>>,
    series: Vec<BTreeMap<Key, Series>>,
    /// Series of non-own metrics, against the cap.
    user_series: usize,
    overflowed: i64,
    last_collect_ns: u64,
    /// Every metric, in the order of `series` and `bounds`.
    defs: Vec<&'static MetricDef>,
    /// (metric, subject) -> (series key, deadline in unix s): gauges computed at
    /// collection time, so they keep counting down between records
    /// ([`Meter::count_down`]).
    countdowns: BTreeMap<(usize, String), (Key, i64)>,
    /// The last identity's attributes as they go into series keys: records come in runs
    /// from one process, and building them allocates per attribute.
    identity_memo: Option<(Arc<Identity>, Key)>,
}

impl MetricsState {
    pub fn new(opts: Options, now_ns: u64) -> MetricsState {
        let defs: Vec<&'static MetricDef> = all().collect();
        let bounds = defs
            .iter()
            .map(|m| {
                opts.buckets
                    .get(m.name)
                    .map(|b| Arc::from(b.as_slice()))
                    .unwrap_or_else(|| Arc::from(m.bounds))
            })
            .collect();
        MetricsState {
            opts,
            bounds,
            series: defs.iter().map(|_| BTreeMap::new()).collect(),
            user_series: 0,
            overflowed: 0,
            last_collect_ns: now_ns,
            defs,
            countdowns: BTreeMap::new(),
            identity_memo: None,
        }
    }

    /// New options with every series and its totals kept (live reconfiguration). Counters
    /// keep counting, whatever the temporality: a cumulative total goes on, a delta one
    /// reports what changed since the last export. Histograms cannot be re-bucketed from
    /// their counts, so the series of a histogram whose bounds changed, all histograms
    /// when switching to or from exponential histograms, and all histograms when the
    /// temporality changes, restart from zero with `now_ns` as their start time (a new
    /// stream for the backend; what they had counted since the last export is lost). A
    /// lower series limit bars new series only; existing ones stay. `pids` / `peers`
    /// apply to measurements from now on.
    pub fn reconfigure(&mut self, opts: Options, now_ns: u64) {
        let restart_all =
            opts.exponential != self.opts.exponential || opts.temporality != self.opts.temporality;
        for (i, def) in self.defs.iter().enumerate() {
            if !matches!(def.instrument, Instrument::Histogram) {
                continue;
            }
            let bounds: Arc<[f64]> = opts
                .buckets
                .get(def.name)
                .map(|b| Arc::from(b.as_slice()))
                .unwrap_or_else(|| Arc::from(def.bounds));
            let rebucketed = !opts.exponential && bounds != self.bounds[i];
            self.bounds[i] = bounds;
            if !(restart_all || rebucketed) {
                continue;
            }
            let n_bounds = self.bounds[i].len();
            for s in self.series[i].values_mut() {
                s.start_ns = now_ns;
                s.value = if opts.exponential {
                    Value::Exponential(ExpHist::new())
                } else {
                    Value::Histogram(Hist::new(n_bounds))
                };
            }
        }
        self.opts = opts;
        // `pids` may have changed what the identity contributes.
        self.identity_memo = None;
    }

    /// Identity attributes allowed on data points: pids only when asked.
    fn identity_key(&mut self, identity: &Arc<Identity>, key: &mut Key) {
        match &self.identity_memo {
            Some((last, attrs)) if Arc::ptr_eq(last, identity) => {}
            _ => {
                let attrs = identity
                    .attributes
                    .iter()
                    .filter(|(k, _)| {
                        self.opts.pids || (k != "process.pid" && k != "process.parent_pid")
                    })
                    .map(|(k, v)| (k.as_str().into(), val(v)))
                    .collect();
                self.identity_memo = Some((identity.clone(), attrs));
            }
        }
        if let Some((_, attrs)) = &self.identity_memo {
            key.extend(attrs.iter().cloned());
        }
    }

    /// The position of a metric in `defs`; None for one no family registered (a bug,
    /// caught by the registry's test, not a reason to stop measuring the others).
    fn index(&self, def: &'static MetricDef) -> Option<usize> {
        let i = self.defs.iter().position(|d| std::ptr::eq(*d, def));
        debug_assert!(i.is_some(), "metric {} is in no family's list", def.name);
        i
    }

    fn slot(&mut self, m: usize, mut key: Key, now_ns: u64) -> &mut Series {
        let def = self.defs[m];
        key.sort();
        let map = &mut self.series[m];
        if !def.own && !map.contains_key(&key) {
            if self.user_series >= self.opts.series_limit {
                self.overflowed += 1;
                key = vec![("otel.metric.overflow".into(), Val::B(true))];
            } else {
                self.user_series += 1;
            }
        }
        let n_bounds = self.bounds[m].len();
        let exponential = self.opts.exponential;
        map.entry(key).or_insert_with(|| Series {
            start_ns: now_ns,
            value: match def.instrument {
                Instrument::Counter => Value::Counter {
                    total: 0,
                    reported: 0,
                },
                Instrument::Gauge => Value::Gauge(0.0),
                Instrument::Histogram if exponential => Value::Exponential(ExpHist::new()),
                Instrument::Histogram => Value::Histogram(Hist::new(n_bounds)),
            },
        })
    }

    fn add(&mut self, m: usize, key: Key, n: i64, now_ns: u64) {
        if let Value::Counter { total, .. } = &mut self.slot(m, key, now_ns).value {
            *total += n;
        }
    }

    /// For totals kept elsewhere (the agent's own counters).
    fn set_total(&mut self, m: usize, key: Key, n: i64, now_ns: u64) {
        if let Value::Counter { total, .. } = &mut self.slot(m, key, now_ns).value {
            *total = n;
        }
    }

    fn set_gauge(&mut self, m: usize, key: Key, v: f64, now_ns: u64) {
        if let Value::Gauge(g) = &mut self.slot(m, key, now_ns).value {
            *g = v;
        }
    }

    fn record(&mut self, m: usize, key: Key, v: f64, now_ns: u64) {
        let bounds = self.bounds[m].clone();
        match &mut self.slot(m, key, now_ns).value {
            Value::Histogram(h) => {
                h.record(&bounds, v, 1);
                h.sum += v;
                h.min = h.min.min(v);
                h.max = h.max.max(v);
            }
            Value::Exponential(h) => {
                h.record(v, 1);
                h.sum += v;
                h.min = h.min.min(v);
                h.max = h.max.max(v);
            }
            _ => {}
        }
    }

    /// Measurements folded into the overflow series so far.
    pub fn overflowed(&self) -> i64 {
        self.overflowed
    }

    pub fn series_count(&self) -> usize {
        self.series.iter().map(|m| m.len()).sum()
    }

    /// Adds one record's measurements (its family's [`Measure`]).
    pub fn observe(&mut self, record: &Record, identity: &Arc<Identity>, now_ns: u64) {
        record.view().measure(&mut Meter {
            state: self,
            identity,
            now_ns,
        });
    }

    /// Sets the agent's own metric `def` (totals kept elsewhere).
    fn own_total(&mut self, def: &'static MetricDef, key: Key, n: i64, now: u64) {
        if let Some(m) = self.index(def) {
            self.set_total(m, key, n, now);
        }
    }

    fn own_gauge(&mut self, def: &'static MetricDef, key: Key, v: f64, now: u64) {
        if let Some(m) = self.index(def) {
            self.set_gauge(m, key, v, now);
        }
    }

    /// The agent's and the exporter's own counters, as totals since start.
    pub fn observe_health(&mut self, stats: &AgentStats, export: &super::ExportSnapshot, now: u64) {
        let r = |s: &str| vec![("hostscope.result".into(), Val::S(s.into()))];
        self.own_total(
            &OWN_RECORDS,
            r("decoded"),
            stats.records_decoded as i64,
            now,
        );
        self.own_total(
            &OWN_RECORDS,
            r("decode_error"),
            stats.decode_errors as i64,
            now,
        );
        self.own_total(&OWN_RECORDS, r("lagged"), stats.records_lagged as i64, now);
        for (family, counters) in &stats.kernel {
            for (name, v) in counters {
                let key = vec![
                    ("hostscope.probe.family".into(), Val::S((*family).into())),
                    ("hostscope.probe.counter".into(), Val::S((*name).into())),
                ];
                self.own_total(&OWN_PROBE_EVENTS, key, *v as i64, now);
            }
            let lost = counters
                .get(hostscope_common::stats::Stat::RingFull.name())
                .copied()
                .unwrap_or(0);
            let key = vec![("hostscope.probe.family".into(), Val::S((*family).into()))];
            self.own_total(&OWN_PROBE_LOST, key, lost as i64, now);
        }
        let t = &stats.tls;
        for (name, v) in [
            ("stream_gaps", t.stream_gaps),
            ("truncated_captures", t.truncated_captures),
            ("lib_events_unmatched", t.lib_events_unmatched),
        ] {
            let key = vec![
                (
                    "hostscope.probe.family".into(),
                    Val::S("tls_tracker".into()),
                ),
                ("hostscope.probe.counter".into(), Val::S(name.into())),
            ];
            self.own_total(&OWN_PROBE_EVENTS, key, v as i64, now);
        }
        self.own_gauge(
            &OWN_EXPORT_QUEUE_SIZE,
            Vec::new(),
            export.queue_len as f64,
            now,
        );
        self.own_gauge(
            &OWN_EXPORT_QUEUE_BYTES,
            Vec::new(),
            export.queue_bytes as f64,
            now,
        );
        for ((signal, result, reason), n) in &export.items {
            let mut key = vec![
                ("hostscope.signal".into(), Val::S((*signal).into())),
                ("hostscope.export.result".into(), Val::S((*result).into())),
            ];
            if !reason.is_empty() {
                key.push(("error.type".into(), Val::S(reason.as_str().into())));
            }
            self.own_total(&OWN_EXPORT_ITEMS, key, *n as i64, now);
        }
        self.own_total(&OWN_EXPORT_RETRIES, Vec::new(), export.retries as i64, now);
        let c = &stats.config;
        for (result, n) in [
            ("applied", c.applied),
            ("invalid", c.invalid),
            ("partial", c.partial),
        ] {
            let key = vec![("hostscope.config.result".into(), Val::S(result.into()))];
            self.own_total(&OWN_CONFIG_RELOADS, key, n as i64, now);
        }
        self.own_gauge(&OWN_CONFIG_GENERATION, Vec::new(), c.generation as f64, now);
        let overflowed = self.overflowed;
        self.own_total(&OWN_SERIES_OVERFLOW, Vec::new(), overflowed, now);
    }

    /// The identity resolver's health: a Kubernetes API that keeps failing shows here.
    pub fn observe_metadata(&mut self, m: &crate::metadata::MetadataStats, now: u64) {
        let counters = [
            ("cache_hits", m.hits),
            ("identity_builds", m.builds),
            ("cache_resets", m.cache_resets),
            ("cgroup_misses", m.cgroups.misses),
            ("cgroup_unresolved", m.cgroups.unresolved),
            ("unknown_runtimes", m.cgroups.unknown_runtimes),
            ("process_reads", m.processes.reads),
            ("processes_gone", m.processes.gone),
            ("kubelet_scans", m.kubelet_scans),
            ("kube_events", m.kube.events),
            ("kube_errors", m.kube.errors),
        ];
        for (name, v) in counters {
            let key = vec![("hostscope.metadata.counter".into(), Val::S(name.into()))];
            self.own_total(&OWN_METADATA_EVENTS, key, v as i64, now);
        }
        let cached = [
            ("identities", m.identities_cached),
            ("cgroups", m.cgroups.cached),
            ("processes", m.processes.cached),
            ("pods", m.kube.pods),
            ("services", m.kube.services),
        ];
        for (name, v) in cached {
            let key = vec![("hostscope.metadata.cache".into(), Val::S(name.into()))];
            self.own_gauge(&OWN_METADATA_CACHED, key, v as f64, now);
        }
    }

    /// The metrics to export now, and their number of data points. Delta temporality
    /// reports what changed since the last collection and leaves out unchanged series.
    pub fn collect(&mut self, now_ns: u64) -> (Vec<Metric>, usize) {
        let delta = self.opts.temporality == Temporality::Delta;
        let temporality = if delta {
            AggregationTemporality::Delta
        } else {
            AggregationTemporality::Cumulative
        } as i32;
        let since = self.last_collect_ns;
        self.last_collect_ns = now_ns;
        let now_s = (now_ns / 1_000_000_000) as i64;
        // Countdowns: recomputed at each collection.
        let countdowns: Vec<_> = self
            .countdowns
            .iter()
            .map(|((m, _), (key, deadline))| (*m, key.clone(), *deadline))
            .collect();
        for (m, key, deadline) in countdowns {
            self.set_gauge(m, key, (deadline - now_s) as f64, now_ns);
        }

        let mut out = Vec::new();
        let mut points = 0;
        for (i, def) in self.defs.iter().enumerate() {
            let bounds = &self.bounds[i];
            let map = &mut self.series[i];
            let data = match def.instrument {
                Instrument::Counter => {
                    let mut dps = Vec::new();
                    for (key, s) in map.iter_mut() {
                        let Value::Counter { total, reported } = &mut s.value else {
                            continue;
                        };
                        let (v, start) = if delta {
                            (*total - *reported, since)
                        } else {
                            (*total, s.start_ns)
                        };
                        *reported = *total;
                        if delta && v == 0 {
                            continue;
                        }
                        dps.push(number_point(
                            key,
                            start,
                            now_ns,
                            number_data_point::Value::AsInt(v),
                        ));
                    }
                    (!dps.is_empty()).then_some(Data::Sum(Sum {
                        data_points: dps,
                        aggregation_temporality: temporality,
                        is_monotonic: true,
                    }))
                }
                Instrument::Gauge => {
                    let dps: Vec<_> = map
                        .iter()
                        .filter_map(|(key, s)| match s.value {
                            Value::Gauge(g) => Some(number_point(
                                key,
                                s.start_ns,
                                now_ns,
                                number_data_point::Value::AsDouble(g),
                            )),
                            _ => None,
                        })
                        .collect();
                    (!dps.is_empty()).then_some(Data::Gauge(Gauge { data_points: dps }))
                }
                Instrument::Histogram if self.opts.exponential => {
                    let mut dps = Vec::new();
                    for (key, s) in map.iter_mut() {
                        let Value::Exponential(h) = &mut s.value else {
                            continue;
                        };
                        if delta && h.count == 0 {
                            continue;
                        }
                        dps.push(h.point(key, if delta { since } else { s.start_ns }, now_ns));
                        if delta {
                            *h = ExpHist::new();
                        }
                    }
                    (!dps.is_empty()).then_some(Data::ExponentialHistogram(ExponentialHistogram {
                        data_points: dps,
                        aggregation_temporality: temporality,
                    }))
                }
                Instrument::Histogram => {
                    let mut dps = Vec::new();
                    for (key, s) in map.iter_mut() {
                        let Value::Histogram(h) = &mut s.value else {
                            continue;
                        };
                        if delta && h.count == 0 {
                            continue;
                        }
                        dps.push(HistogramDataPoint {
                            attributes: to_kvs(key),
                            start_time_unix_nano: if delta { since } else { s.start_ns },
                            time_unix_nano: now_ns,
                            count: h.count,
                            sum: Some(h.sum),
                            bucket_counts: h.counts.clone(),
                            explicit_bounds: bounds.to_vec(),
                            min: h.min.is_finite().then_some(h.min),
                            max: h.max.is_finite().then_some(h.max),
                            ..Default::default()
                        });
                        if delta {
                            *h = Hist::new(bounds.len());
                        }
                    }
                    (!dps.is_empty()).then_some(Data::Histogram(Histogram {
                        data_points: dps,
                        aggregation_temporality: temporality,
                    }))
                }
            };
            if let Some(data) = data {
                points += match &data {
                    Data::Sum(s) => s.data_points.len(),
                    Data::Gauge(g) => g.data_points.len(),
                    Data::Histogram(h) => h.data_points.len(),
                    Data::ExponentialHistogram(h) => h.data_points.len(),
                    _ => 0,
                };
                out.push(Metric {
                    name: def.name.into(),
                    description: def.description.into(),
                    unit: def.unit.into(),
                    data: Some(data),
                    ..Default::default()
                });
            }
        }
        (out, points)
    }
}

/// What a record's [`Measure`] measures into: the aggregation, with the record's identity
/// and the time.
pub struct Meter<'a> {
    state: &'a mut MetricsState,
    identity: &'a Arc<Identity>,
    now_ns: u64,
}

impl Meter<'_> {
    pub fn options(&self) -> &Options {
        &self.state.opts
    }

    /// Adds the record's identity attributes that data points may carry (pids only when
    /// asked).
    pub fn identity_key(&mut self, key: &mut Key) {
        self.state.identity_key(self.identity, key);
    }

    /// Adds `n` to a counter.
    pub fn add(&mut self, def: &'static MetricDef, key: Key, n: i64) {
        if let Some(m) = self.state.index(def) {
            self.state.add(m, key, n, self.now_ns);
        }
    }

    /// Records one value into a histogram.
    pub fn record(&mut self, def: &'static MetricDef, key: Key, v: f64) {
        if let Some(m) = self.state.index(def) {
            self.state.record(m, key, v, self.now_ns);
        }
    }

    /// Merges a kernel log2 histogram of nanoseconds (`hist[i]` counts values in
    /// [2^i, 2^(i+1)) ns, each placed by its midpoint) with its sum and maximum.
    pub fn merge_log2(
        &mut self,
        def: &'static MetricDef,
        key: Key,
        hist: &[u64],
        total_ns: u64,
        max_ns: u64,
    ) {
        let Some(m) = self.state.index(def) else {
            return;
        };
        let bounds = self.state.bounds[m].clone();
        let slot = &mut self.state.slot(m, key, self.now_ns).value;
        for (i, &n) in hist.iter().enumerate() {
            if n > 0 {
                let mid_s = 1.5 * (1u64 << i.min(62)) as f64 / 1e9;
                match slot {
                    Value::Histogram(h) => h.record(&bounds, mid_s, n),
                    Value::Exponential(h) => h.record(mid_s, n),
                    _ => {}
                }
            }
        }
        let (sum, max) = (total_ns as f64 / 1e9, max_ns as f64 / 1e9);
        match slot {
            Value::Histogram(h) => {
                h.sum += sum;
                h.max = h.max.max(max);
            }
            Value::Exponential(h) => {
                h.sum += sum;
                h.max = h.max.max(max);
            }
            _ => {}
        }
    }

    /// A gauge of the seconds left until `deadline_unix_s` (negative once past), computed
    /// at each collection. `subject` names what it counts down for: a later call for the
    /// same subject replaces its key and deadline.
    pub fn count_down(
        &mut self,
        def: &'static MetricDef,
        subject: &str,
        key: Key,
        deadline_unix_s: i64,
    ) {
        if let Some(m) = self.state.index(def) {
            self.state
                .countdowns
                .insert((m, subject.to_string()), (key, deadline_unix_s));
        }
    }
}

fn number_point(
    key: &Key,
    start: u64,
    now: u64,
    value: number_data_point::Value,
) -> NumberDataPoint {
    NumberDataPoint {
        attributes: to_kvs(key),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(value),
        ..Default::default()
    }
}

#[cfg(test)]
pub mod tests_support {
    use super::ExpHist;

    pub struct Exp(ExpHist);

    pub fn new_exp() -> Exp {
        Exp(ExpHist::new())
    }

    pub fn record(h: &mut Exp, v: f64) {
        h.0.record(v, 1);
    }

    /// (scale, offset, dense counts)
    pub fn buckets(h: &Exp) -> (i32, i32, Vec<u64>) {
        let p = h.0.point(&Vec::new(), 0, 0);
        let b = p.positive.unwrap_or_default();
        (p.scale, b.offset, b.bucket_counts)
    }
}

#[cfg(test)]
mod registry_tests {
    /// Two families defining one name would merge their series under one description.
    #[test]
    fn every_metric_name_is_defined_once() {
        let mut names: Vec<&str> = super::all().map(|m| m.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a metric name is defined twice");
        assert!(n >= 29, "{n} metrics");
    }
}
