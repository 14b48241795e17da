//! Records -> OTLP metrics: an in-process aggregation (counters, gauges, explicit-bucket
//! histograms) keyed by metric and attribute set, collected every export interval with
//! cumulative (default) or delta temporality. The series count is capped: a new attribute
//! set beyond the cap is folded into one `otel.metric.overflow=true` series and counted,
//! so a burst of new peers or processes cannot grow the agent's memory without bound.
//! The reference table of these metrics is docs/metrics.md.

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
    events::{
        dns::{DnsRecord, Transport},
        syscalls::SyscallsRecord,
        tcp::{Direction, TcpEventKind, TcpRecord},
        tls::{Outcome, TlsCertificateRecord, TlsRecord},
        Record,
    },
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

macro_rules! metrics {
    ($($id:ident = $name:literal, $inst:ident, $unit:literal, $own:literal, $bounds:expr, $desc:literal;)*) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        #[repr(usize)]
        pub enum M { $($id,)* }
        pub const METRICS: &[MetricDef] = &[$(MetricDef {
            name: $name, instrument: Instrument::$inst, unit: $unit, description: $desc,
            bounds: $bounds, own: $own,
        },)*];
    };
}

const NONE: &[f64] = &[];
metrics! {
    TcpConnectDuration = "tcp.connect.duration", Histogram, "s", false,
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        "Active connect latency, SYN sent to established (SYN retransmits land at 1 s, 3 s, ...).";
    TcpConnectFailures = "tcp.connect.failures", Counter, "{connection}", false, NONE,
        "Connects that failed, by reason (error.type: refused, timed_out, unreachable, ...).";
    TcpSynRetransmits = "tcp.connect.syn_retransmits", Counter, "{segment}", false, NONE,
        "SYNs retransmitted before a connect succeeded or failed.";
    TcpRtt = "tcp.rtt", Histogram, "s", false,
        &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
        "Smoothed round-trip time of a connection at close.";
    TcpRetransmits = "tcp.retransmits", Counter, "{segment}", false, NONE,
        "Segments retransmitted, counted at close.";
    TcpResets = "tcp.resets", Counter, "{reset}", false, NONE,
        "RSTs sent or received (tcp.reset.direction).";
    TcpConnectionDuration = "tcp.connection.duration", Histogram, "s", false,
        &[0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0],
        "Connection lifetime, open to close.";
    TcpConnectionIo = "tcp.connection.io", Counter, "By", false, NONE,
        "Sequence space acknowledged (transmit) and received (receive), counted at close.";
    TlsHandshakeDuration = "tls.handshake.duration", Histogram, "s", false,
        &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
        "ClientHello to handshake end, by outcome and failure reason.";
    TlsHandshakeFailures = "tls.handshake.failures", Counter, "{handshake}", false, NONE,
        "Failed handshakes by reason (error.type) and where it was learned.";
    TlsCertTimeToExpiry = "tls.certificate.time_to_expiry", Gauge, "s", false, NONE,
        "Seconds until the server certificate's notAfter (negative once expired).";
    DnsLookupDuration = "dns.lookup.duration", Histogram, "s", false,
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
        "DNS lookups, question sent to answer, by response code and question type (first attempt to answer, retries included).";
    DnsLookupFailures = "dns.lookup.failures", Counter, "{lookup}", false, NONE,
        "Lookups answered with an rcode other than NOERROR, or not answered (error.type: NXDOMAIN, SERVFAIL, TIMEOUT, ...).";
    DnsLookupRetries = "dns.lookup.retries", Counter, "{query}", false, NONE,
        "Questions sent again because no answer came (lost UDP packets, slow servers).";
    SyscallCalls = "syscall.calls", Counter, "{call}", false, NONE,
        "System calls, per syscall and process name.";
    SyscallErrors = "syscall.errors", Counter, "{call}", false, NONE,
        "Failed system calls by errno (error.type).";
    SyscallDuration = "syscall.duration", Histogram, "s", false,
        &[0.000001, 0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0],
        "System call latency (from the kernel's log2 histogram: each power-of-two bucket is placed by its midpoint).";
    OwnRecords = "hostscope.records", Counter, "{record}", true, NONE,
        "Records decoded from the kernel (hostscope.result=decoded), undecodable (decode_error), missed by a slow sink (lagged).";
    OwnProbeEvents = "hostscope.probe.events", Counter, "{event}", true, NONE,
        "Kernel-side counters per probe family (hostscope.probe.counter: emitted, ring_full, map_full, ...).";
    OwnProbeLost = "hostscope.probe.lost", Counter, "{event}", true, NONE,
        "Events a probe family could not deliver (ring full).";
    OwnExportQueueSize = "hostscope.export.queue.size", Gauge, "{request}", true, NONE,
        "Export requests waiting (memory and disk queue).";
    OwnExportQueueBytes = "hostscope.export.queue.bytes", Gauge, "By", true, NONE,
        "Bytes of export requests waiting.";
    OwnExportItems = "hostscope.export.items", Counter, "{item}", true, NONE,
        "Data points, spans and log records by hostscope.signal and hostscope.export.result (sent, failed, dropped, rejected) and error.type.";
    OwnExportRetries = "hostscope.export.retries", Counter, "{request}", true, NONE,
        "Export requests retried after a retryable failure.";
    OwnSeriesOverflow = "hostscope.metrics.series_overflow", Counter, "{measurement}", true, NONE,
        "Measurements folded into the overflow series because the series cap was reached.";
    OwnConfigReloads = "hostscope.config.reloads", Counter, "{reload}", true, NONE,
        "Configuration reloads by hostscope.config.result (applied, invalid, partial).";
    OwnConfigGeneration = "hostscope.config.generation", Gauge, "{generation}", true, NONE,
        "Generation of the running configuration: 1 at start, one more per reload taken.";
    OwnMetadataEvents = "hostscope.metadata.events", Counter, "{event}", true, NONE,
        "Identity resolution counters by hostscope.metadata.counter (cache_hits, identity_builds, cgroup_misses, cgroup_unresolved, unknown_runtimes, process_reads, processes_gone, kube_events, kube_errors, ...).";
    OwnMetadataCached = "hostscope.metadata.cached", Gauge, "{entry}", true, NONE,
        "Entries in the identity caches by hostscope.metadata.cache (identities, cgroups, processes, pods, services).";
}

pub fn is_histogram(name: &str) -> bool {
    METRICS
        .iter()
        .any(|m| m.name == name && m.instrument == Instrument::Histogram)
}

/// An attribute value that can key a series. Strings are shared (`Arc<str>`): a record
/// measured into several series clones its key for each, which is then a reference
/// count, not an allocation per attribute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Val {
    S(Arc<str>),
    I(i64),
    B(bool),
}

type Key = Vec<(Arc<str>, Val)>;

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
    /// server name -> (notAfter unix s, certificate subject): the gauge is computed at
    /// collection time, so it keeps counting down between handshakes.
    certs: BTreeMap<String, (i64, String)>,
}

impl MetricsState {
    pub fn new(opts: Options, now_ns: u64) -> MetricsState {
        let bounds = METRICS
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
            series: METRICS.iter().map(|_| BTreeMap::new()).collect(),
            user_series: 0,
            overflowed: 0,
            last_collect_ns: now_ns,
            certs: BTreeMap::new(),
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
        for (i, def) in METRICS.iter().enumerate() {
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
    }

    /// Identity attributes allowed on data points: pids only when asked.
    fn identity_key(&self, identity: &Identity, key: &mut Key) {
        for (k, v) in &identity.attributes {
            if !self.opts.pids && (k == "process.pid" || k == "process.parent_pid") {
                continue;
            }
            key.push((k.as_str().into(), val(v)));
        }
    }

    fn slot(&mut self, m: M, mut key: Key, now_ns: u64) -> &mut Series {
        let def = &METRICS[m as usize];
        key.sort();
        let map = &mut self.series[m as usize];
        if !def.own && !map.contains_key(&key) {
            if self.user_series >= self.opts.series_limit {
                self.overflowed += 1;
                key = vec![("otel.metric.overflow".into(), Val::B(true))];
            } else {
                self.user_series += 1;
            }
        }
        let n_bounds = self.bounds[m as usize].len();
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

    fn add(&mut self, m: M, key: Key, n: i64, now_ns: u64) {
        if let Value::Counter { total, .. } = &mut self.slot(m, key, now_ns).value {
            *total += n;
        }
    }

    /// For totals kept elsewhere (the agent's own counters).
    fn set_total(&mut self, m: M, key: Key, n: i64, now_ns: u64) {
        if let Value::Counter { total, .. } = &mut self.slot(m, key, now_ns).value {
            *total = n;
        }
    }

    fn set_gauge(&mut self, m: M, key: Key, v: f64, now_ns: u64) {
        if let Value::Gauge(g) = &mut self.slot(m, key, now_ns).value {
            *g = v;
        }
    }

    fn record(&mut self, m: M, key: Key, v: f64, now_ns: u64) {
        let bounds = self.bounds[m as usize].clone();
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

    pub fn observe(&mut self, record: &Record, identity: &Identity, now_ns: u64) {
        match record {
            Record::Tcp(r) => self.observe_tcp(r, identity, now_ns),
            Record::Tls(r) => self.observe_tls(r, identity, now_ns),
            Record::TlsCertificate(r) => self.observe_cert(r),
            Record::Dns(r) => self.observe_dns(r, identity, now_ns),
            Record::Syscalls(r) => self.observe_syscalls(r, now_ns),
            // Alerts, slow calls and security events are exported as logs.
            Record::SyscallAlert(_) | Record::SyscallSlow(_) | Record::Security(_) => {}
            // Incidents are logs; each of their failures is counted from its own record.
            Record::Rca(_) => {}
        }
    }

    fn observe_tcp(&mut self, r: &TcpRecord, identity: &Identity, now: u64) {
        let mut key: Key = vec![
            (
                "network.type".into(),
                Val::S(if r.remote.is_ipv4() { "ipv4" } else { "ipv6" }.into()),
            ),
            // The service side's port: bounded by what listens, unlike the client's.
            (
                "server.port".into(),
                Val::I(match r.direction {
                    Direction::Active => r.remote.port(),
                    Direction::Passive => r.local.port(),
                } as i64),
            ),
            (
                "hostscope.tcp.direction".into(),
                Val::S(
                    match r.direction {
                        Direction::Active => "active",
                        Direction::Passive => "passive",
                    }
                    .into(),
                ),
            ),
        ];
        if self.opts.peers {
            key.push((
                "network.peer.address".into(),
                Val::S(r.remote.ip().to_string().into()),
            ));
        }
        self.identity_key(identity, &mut key);
        match r.event {
            TcpEventKind::Connect => {
                if let Some(us) = r.connect_latency_us {
                    self.record(M::TcpConnectDuration, key.clone(), us / 1e6, now);
                }
                if r.syn_retransmits > 0 {
                    self.add(M::TcpSynRetransmits, key, r.syn_retransmits as i64, now);
                }
            }
            TcpEventKind::ConnectFailed => {
                let mut k = key.clone();
                if let Some(f) = &r.failure {
                    k.push(("error.type".into(), Val::S(reason_str(f.reason).into())));
                }
                self.add(M::TcpConnectFailures, k, 1, now);
                if r.syn_retransmits > 0 {
                    self.add(M::TcpSynRetransmits, key, r.syn_retransmits as i64, now);
                }
            }
            TcpEventKind::Close => {
                if let Some(us) = r.duration_us {
                    self.record(M::TcpConnectionDuration, key.clone(), us / 1e6, now);
                }
                if let Some(srtt) = r.srtt_us {
                    self.record(M::TcpRtt, key.clone(), srtt as f64 / 1e6, now);
                }
                if let Some(n) = r.retransmits {
                    self.add(M::TcpRetransmits, key.clone(), n as i64, now);
                }
                for (dir, bytes) in [("transmit", r.bytes_acked), ("receive", r.bytes_received)] {
                    if let Some(b) = bytes {
                        let mut k = key.clone();
                        k.push(("network.io.direction".into(), Val::S(dir.into())));
                        self.add(M::TcpConnectionIo, k, b as i64, now);
                    }
                }
            }
            TcpEventKind::ResetSent | TcpEventKind::ResetReceived => {
                let dir = if r.event == TcpEventKind::ResetSent {
                    "sent"
                } else {
                    "received"
                };
                key.push(("tcp.reset.direction".into(), Val::S(dir.into())));
                self.add(M::TcpResets, key, 1, now);
            }
        }
    }

    fn observe_tls(&mut self, r: &TlsRecord, identity: &Identity, now: u64) {
        let mut key: Key = Vec::new();
        if let Some(v) = &r.version {
            key.push(("tls.protocol.version".into(), Val::S(tls_version(v).into())));
        }
        if let Some(port) = r.remote.zip(r.local).map(|(rem, loc)| match r.role {
            Some(crate::events::tls::Role::Server) => loc.port(),
            _ => rem.port(),
        }) {
            key.push(("server.port".into(), Val::I(port as i64)));
        }
        if self.opts.peers {
            if let Some(rem) = r.remote {
                key.push((
                    "network.peer.address".into(),
                    Val::S(rem.ip().to_string().into()),
                ));
            }
        }
        self.identity_key(identity, &mut key);
        let outcome = match r.outcome {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        };
        let mut dkey = key.clone();
        dkey.push(("hostscope.tls.outcome".into(), Val::S(outcome.into())));
        if let Some(f) = &r.failure {
            dkey.push(("error.type".into(), Val::S(f.reason.as_str().into())));
            let mut fkey = key;
            fkey.push(("error.type".into(), Val::S(f.reason.as_str().into())));
            fkey.push((
                "hostscope.tls.failure.source".into(),
                Val::S(failure_source(f.source).into()),
            ));
            self.add(M::TlsHandshakeFailures, fkey, 1, now);
        }
        if let Some(us) = r.duration_us {
            self.record(M::TlsHandshakeDuration, dkey, us / 1e6, now);
        }
        if let (Some(name), Some(not_after)) = (&r.server_name, r.cert_not_after_unix) {
            let subject = r.cert_subject.clone().unwrap_or_default();
            self.certs.insert(name.clone(), (not_after, subject));
        }
    }

    /// Query names are unbounded (every pod's search-list expansions): on data points
    /// only when asked (`export.metric_dns_names`).
    fn observe_dns(&mut self, r: &DnsRecord, identity: &Identity, now: u64) {
        let transport = match r.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        let mut key: Key = vec![
            ("network.transport".into(), Val::S(transport.into())),
            (
                "server.address".into(),
                Val::S(r.server.ip().to_string().into()),
            ),
            ("server.port".into(), Val::I(r.server.port() as i64)),
            (
                "hostscope.dns.question.type".into(),
                Val::S(r.query_type.as_str().into()),
            ),
        ];
        if self.opts.dns_names {
            key.push((
                "dns.question.name".into(),
                Val::S(r.query_name.as_str().into()),
            ));
        }
        self.identity_key(identity, &mut key);
        if r.retries > 0 {
            self.add(M::DnsLookupRetries, key.clone(), r.retries as i64, now);
        }
        if let Some(kind) = r.failure_kind() {
            let mut k = key.clone();
            k.push(("error.type".into(), Val::S(kind.into())));
            self.add(M::DnsLookupFailures, k, 1, now);
        }
        if let (Some(us), Some(rcode)) = (r.latency_us, &r.rcode) {
            key.push((
                "hostscope.dns.response_code".into(),
                Val::S(rcode.as_str().into()),
            ));
            self.record(M::DnsLookupDuration, key, us / 1e6, now);
        }
    }

    fn observe_cert(&mut self, r: &TlsCertificateRecord) {
        self.certs
            .insert(r.server_name.clone(), (r.not_after_unix, r.subject.clone()));
    }

    fn observe_syscalls(&mut self, r: &SyscallsRecord, now: u64) {
        let by_pid = r.key_by == "pid";
        for p in &r.processes {
            let mut base: Key = vec![(
                "process.executable.name".into(),
                Val::S(p.comm.as_str().into()),
            )];
            if by_pid && self.opts.pids {
                base.push(("process.pid".into(), Val::I(p.id as i64)));
            }
            if !by_pid {
                base.push(("hostscope.cgroup.id".into(), Val::I(p.id as i64)));
            }
            for row in &p.syscalls {
                let mut k = base.clone();
                k.push(("syscall.name".into(), Val::S(row.syscall.as_str().into())));
                self.add(M::SyscallCalls, k.clone(), row.count as i64, now);
                if row.timed > 0 {
                    self.merge_log2(M::SyscallDuration, k, row, now);
                }
            }
            for e in &p.errnos {
                let mut k = base.clone();
                k.push(("syscall.name".into(), Val::S(e.syscall.as_str().into())));
                k.push(("error.type".into(), Val::S(e.errno_name.as_str().into())));
                self.add(M::SyscallErrors, k, e.count as i64, now);
            }
        }
    }

    fn merge_log2(&mut self, m: M, key: Key, row: &crate::events::syscalls::SyscallRow, now: u64) {
        let bounds = self.bounds[m as usize].clone();
        let slot = &mut self.slot(m, key, now).value;
        for (i, &n) in row.hist.iter().enumerate() {
            if n > 0 {
                // [2^i, 2^(i+1)) ns, placed by its midpoint.
                let mid_s = 1.5 * (1u64 << i.min(62)) as f64 / 1e9;
                match slot {
                    Value::Histogram(h) => h.record(&bounds, mid_s, n),
                    Value::Exponential(h) => h.record(mid_s, n),
                    _ => {}
                }
            }
        }
        let (sum, max) = (row.total_ns as f64 / 1e9, row.max_ns as f64 / 1e9);
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

    /// The agent's and the exporter's own counters, as totals since start.
    pub fn observe_health(&mut self, stats: &AgentStats, export: &super::ExportSnapshot, now: u64) {
        let r = |s: &str| vec![("hostscope.result".into(), Val::S(s.into()))];
        self.set_total(
            M::OwnRecords,
            r("decoded"),
            stats.records_decoded as i64,
            now,
        );
        self.set_total(
            M::OwnRecords,
            r("decode_error"),
            stats.decode_errors as i64,
            now,
        );
        self.set_total(M::OwnRecords, r("lagged"), stats.records_lagged as i64, now);
        for (family, counters) in &stats.kernel {
            for (name, v) in counters {
                let key = vec![
                    ("hostscope.probe.family".into(), Val::S((*family).into())),
                    ("hostscope.probe.counter".into(), Val::S((*name).into())),
                ];
                self.set_total(M::OwnProbeEvents, key, *v as i64, now);
            }
            let lost = counters
                .get(hostscope_common::stats::Stat::RingFull.name())
                .copied()
                .unwrap_or(0);
            let key = vec![("hostscope.probe.family".into(), Val::S((*family).into()))];
            self.set_total(M::OwnProbeLost, key, lost as i64, now);
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
            self.set_total(M::OwnProbeEvents, key, v as i64, now);
        }
        self.set_gauge(
            M::OwnExportQueueSize,
            Vec::new(),
            export.queue_len as f64,
            now,
        );
        self.set_gauge(
            M::OwnExportQueueBytes,
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
            self.set_total(M::OwnExportItems, key, *n as i64, now);
        }
        self.set_total(M::OwnExportRetries, Vec::new(), export.retries as i64, now);
        let c = &stats.config;
        for (result, n) in [
            ("applied", c.applied),
            ("invalid", c.invalid),
            ("partial", c.partial),
        ] {
            let key = vec![("hostscope.config.result".into(), Val::S(result.into()))];
            self.set_total(M::OwnConfigReloads, key, n as i64, now);
        }
        self.set_gauge(M::OwnConfigGeneration, Vec::new(), c.generation as f64, now);
        let overflowed = self.overflowed;
        self.set_total(M::OwnSeriesOverflow, Vec::new(), overflowed, now);
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
            self.set_total(M::OwnMetadataEvents, key, v as i64, now);
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
            self.set_gauge(M::OwnMetadataCached, key, v as f64, now);
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
        // Certificates: recomputed at each collection.
        let certs: Vec<_> = self
            .certs
            .iter()
            .map(|(name, (not_after, subject))| (name.clone(), *not_after, subject.clone()))
            .collect();
        for (name, not_after, subject) in certs {
            let mut key = vec![("server.address".into(), Val::S(name.into()))];
            if !subject.is_empty() {
                key.push(("tls.server.subject".into(), Val::S(subject.into())));
            }
            self.set_gauge(
                M::TlsCertTimeToExpiry,
                key,
                (not_after - now_s) as f64,
                now_ns,
            );
        }

        let mut out = Vec::new();
        let mut points = 0;
        for (i, def) in METRICS.iter().enumerate() {
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

pub fn reason_str(r: crate::events::tcp::FailureReason) -> &'static str {
    use crate::events::tcp::FailureReason::*;
    match r {
        Refused => "refused",
        TimedOut => "timed_out",
        Unreachable => "unreachable",
        Reset => "reset",
        Aborted => "aborted",
        Error => "error",
    }
}

pub fn failure_source(s: crate::events::tls::FailureSource) -> &'static str {
    use crate::events::tls::FailureSource::*;
    match s {
        AlertSent => "alert_sent",
        AlertReceived => "alert_received",
        X509Verify => "x509_verify",
        Connection => "connection",
    }
}

/// `TLSv1.3` / `TLS 1.3` -> `1.3`, as `tls.protocol.version` wants it.
pub fn tls_version(v: &str) -> String {
    v.trim_start_matches("TLSv")
        .trim_start_matches("TLS ")
        .trim_start_matches("TLS")
        .to_string()
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
