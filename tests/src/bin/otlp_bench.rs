//! `cargo xtask bench --only otlp`: OTLP export figures.
//!
//! - encode+send throughput on one core: the exporter on a current-thread tokio runtime
//!   sending OTLP/HTTP to a local sink (a minimal HTTP/1.1 responder on other threads, so
//!   the receiver is not what is measured): spans per second (failed-connect records,
//!   each also a log record and metric updates) and metric data points per second;
//! - bytes on the wire per span and per data point, gzip and uncompressed;
//! - export latency, kernel event -> received by the backend, for real refused connects
//!   under the real probes (needs root), median and p99, at the configured interval;
//! - memory (RSS) during a backend outage at a steady record rate, memory queue; then the
//!   same outage with the disk queue (RSS, disk bytes, dropped) and, once the backend
//!   comes back, whether every record produced was delivered;
//! - outage capacity: bytes queued per failed-connect record (its span, log record and
//!   share of the metrics, as queued) and so the minutes of outage 100 MiB
//!   of queue covers at 2,000 failed connects/s, and the default disk queue's, against
//!   the target (10 minutes).
//!
//! `otlp_bench [SPANS]`; `OTLP_BENCH_INTERVAL=S` changes the export interval of the span
//! run (default 1 s), `OTLP_BENCH_SPANS_ONLY=1` stops after the throughput figures,
//! `OTLP_BENCH_OUTAGE_ONLY=1` runs only the outage figures. `OTLP_BENCH_OUTAGE_SECS`
//! (default 30) and `OTLP_BENCH_OUTAGE_RATE` (records/s, default 2000) shape the outage.
//! The span figure is bound by the sender (one request in flight, ~6 ms per 512-item
//! request to the local sink): 51,200 records (they fit in the record channel) deliver at
//! ~86k spans/s; longer runs, which must wait for the channel, end on whole seconds of
//! the 1 s interval (2.0, 3.0, 4.0 s) and read 50-66k: a lower bound, not explained yet.
//! Shorter intervals fill the 16 MiB queue and drop (counted).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hostscope::{
    agent::SharedRecord,
    events::{
        tcp::{Direction, Failure, TcpEventKind, TcpRecord},
        Record,
    },
    export::{
        config::{Compression, Protocol},
        ExportConfig, ExportSection, ExportSnapshot, Exporter,
    },
    metadata::Resolver,
    sink::SinkContext,
    status::StatusHandle,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::sync::broadcast;

#[derive(Default)]
struct Sink {
    requests: AtomicU64,
    bytes: AtomicU64,
    /// Span end time (the kernel event's time) -> receive time, for traces when decoding.
    latencies_ns: Mutex<Vec<u64>>,
    decode: AtomicBool,
    /// Distinct span ids seen when decoding, and all spans seen (the difference is
    /// duplicates: the disk queue delivers at least once).
    span_ids: Mutex<std::collections::HashSet<Vec<u8>>>,
    spans: AtomicU64,
    /// Latencies only of spans to this server port (0: every span): the latency run's
    /// own refused connects, not those other programs on the machine make meanwhile.
    latency_port: AtomicU64,
}

/// A span's `network.peer.port`.
fn peer_port(span: &opentelemetry_proto::tonic::trace::v1::Span) -> Option<i64> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let v = span
        .attributes
        .iter()
        .find(|kv| kv.key == "network.peer.port")?
        .value
        .as_ref()?;
    match v.value.as_ref()? {
        Value::IntValue(p) => Some(*p),
        Value::StringValue(p) => p.parse().ok(),
        _ => None,
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn serve(sink: Arc<Sink>) -> u16 {
    serve_on(sink, 0)
}

fn serve_on(sink: Arc<Sink>, port: u16) -> u16 {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind sink");
    let port = l.local_addr().expect("sink address").port();
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            let sink = sink.clone();
            std::thread::spawn(move || {
                let _ = connection(stream, &sink);
            });
        }
    });
    port
}

fn connection(stream: TcpStream, sink: &Sink) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
        let mut gzip = false;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("content-encoding:") && lower.contains("gzip") {
                gzip = true;
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let received = now_ns();
        sink.requests.fetch_add(1, Ordering::Relaxed);
        sink.bytes.fetch_add(len as u64, Ordering::Relaxed);
        if sink.decode.load(Ordering::Relaxed) && path == "/v1/traces" {
            let raw = if gzip {
                let mut d = Vec::new();
                flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut d)?;
                d
            } else {
                body
            };
            if let Ok(req) = ExportTraceServiceRequest::decode(&raw[..]) {
                let mut lat = sink.latencies_ns.lock().unwrap_or_else(|p| p.into_inner());
                let mut ids = sink.span_ids.lock().unwrap_or_else(|p| p.into_inner());
                let port = sink.latency_port.load(Ordering::Relaxed);
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            if port == 0 || peer_port(&s) == Some(port as i64) {
                                lat.push(received.saturating_sub(s.end_time_unix_nano));
                            }
                            sink.spans.fetch_add(1, Ordering::Relaxed);
                            ids.insert(s.span_id);
                        }
                    }
                }
            }
        }
        out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        )?;
    }
}

fn config(
    port: u16,
    compression: Compression,
    interval: f64,
    f: impl FnOnce(&mut ExportSection),
) -> ExportConfig {
    let mut a = ExportSection {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        protocol: Some(Protocol::HttpProtobuf),
        compression: Some(compression),
        interval: Duration::from_secs_f64(interval),
        max_batch: 512,
        series_limit: 100_000,
        // The figures are per failed connect with its span, log record and metrics.
        failure_logs: true,
        ..Default::default()
    };
    f(&mut a);
    a.resolve(&Default::default(), &BTreeMap::<&str, &str>::new())
        .expect("bench options")
        .expect("endpoint")
}

fn failed_connect(id: u64, port: u16) -> Record {
    Record::Tcp(TcpRecord {
        event: TcpEventKind::ConnectFailed,
        timestamp_unix_ns: now_ns(),
        conn_id: id,
        direction: Direction::Active,
        local: "10.1.0.1:40000".parse().expect("address"),
        remote: std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), port),
        remote_name: None,
        pid: Some(1000 + (id % 50) as u32),
        tid: None,
        comm: Some("bench".into()),
        cgroup_id: Some(1),
        state: "CLOSE",
        previous_state: "SYN_SENT",
        connect_latency_us: None,
        handshake_rtt_us: None,
        syn_retransmits: 0,
        handshake_end_unseen: false,
        failure: Some(Failure::from_errno(libc::ECONNREFUSED as u32)),
        duration_us: Some(80.0),
        bytes_acked: None,
        bytes_received: None,
        srtt_us: None,
        retransmits: None,
        resets_sent: 0,
        resets_received: 0,
    })
}

/// The exporter alone on one thread (a current-thread runtime driven by its own thread):
/// what one core does. Snapshots are read from here; `finish` takes the runtime back.
struct OneCore {
    tx: broadcast::Sender<SharedRecord>,
    exporter: Exporter,
    stop: tokio::sync::oneshot::Sender<()>,
    driver: std::thread::JoinHandle<tokio::runtime::Runtime>,
    cpu_start: Duration,
}

fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; the clock exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl OneCore {
    fn start(config: ExportConfig) -> OneCore {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, rx) = broadcast::channel(65_536);
        let exporter = {
            let _g = rt.enter();
            Exporter::start(config, SinkContext::standalone(rx)).expect("exporter")
        };
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let driver = std::thread::spawn(move || {
            rt.block_on(async move {
                let _ = stop_rx.await;
            });
            rt
        });
        OneCore {
            tx,
            exporter,
            stop,
            driver,
            cpu_start: process_cpu(),
        }
    }

    fn snapshot(&self) -> ExportSnapshot {
        self.exporter.snapshot()
    }

    /// Sends without overrunning the channel (a lag would be counted, not measured).
    fn feed(&self, record: Record) {
        while self.tx.len() > 60_000 {
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = self.tx.send(Arc::new(record));
    }

    fn finish(self, grace: Duration) -> ExportSnapshot {
        let _ = self.stop.send(());
        match self.driver.join() {
            Ok(rt) => rt.block_on(self.exporter.stop(grace)),
            Err(_) => ExportSnapshot::default(),
        }
    }
}

fn spans_per_second(
    sink: &Arc<Sink>,
    port: u16,
    compression: Compression,
    n: u64,
) -> (u64, u64, f64, f64, f64) {
    // Whole batches only: a partial last batch would wait for the interval and time that.
    let n = (n / 512).max(1) * 512;
    let before = sink.bytes.load(Ordering::Relaxed);
    let interval: f64 = std::env::var("OTLP_BENCH_INTERVAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let one = OneCore::start(config(port, compression, interval, |_| {}));
    let t0 = Instant::now();
    let cpu0 = one.cpu_start;
    for i in 0..n {
        one.feed(failed_connect(i, 9));
    }
    loop {
        let s = one.snapshot();
        if s.count("traces", "sent") + s.count("traces", "dropped") + s.count("traces", "failed")
            >= n
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = t0.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    let s = one.finish(Duration::from_secs(2));
    let wire = sink.bytes.load(Ordering::Relaxed) - before;
    let sent = s.count("traces", "sent");
    (
        n,
        sent,
        sent as f64 / elapsed.as_secs_f64(),
        // Spans, logs and metrics together, per span.
        wire as f64 / sent.max(1) as f64,
        cpu.as_secs_f64(),
    )
}

fn points_per_second(
    sink: &Arc<Sink>,
    port: u16,
    compression: Compression,
    series: u16,
) -> (f64, f64, u64) {
    let before = sink.bytes.load(Ordering::Relaxed);
    // Each distinct server port is one series of `tcp.connect.failures`; every interval
    // re-exports all of them (cumulative), more than one core can keep up with.
    let one = OneCore::start(config(port, compression, 0.01, |_| {}));
    for p in 0..series {
        one.feed(failed_connect(p as u64, 1 + p));
    }
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let s0 = one.snapshot();
    let elapsed = t0.elapsed();
    let s = one.finish(Duration::from_secs(2));
    let wire = sink.bytes.load(Ordering::Relaxed) - before;
    (
        s0.count("metrics", "sent") as f64 / elapsed.as_secs_f64(),
        wire as f64 / s.count("metrics", "sent").max(1) as f64,
        s.count("metrics", "dropped"),
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn outage_memory(seconds: u64, rate: u64) -> (u64, u64, ExportSnapshot) {
    // Nothing listens there: every request fails and is retried.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(1);
    let one = OneCore::start(config(port, Compression::Gzip, 1.0, |a| {
        a.timeout = Some(Duration::from_millis(500));
    }));
    let start_rss = rss_kib();
    let mut peak = start_rss;
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..rate / 10 {
            one.feed(failed_connect(i, (i % 200) as u16 + 1));
            i += 1;
        }
        peak = peak.max(rss_kib());
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = one.snapshot();
    let _ = one.finish(Duration::from_millis(100));
    (start_rss, peak, s)
}

/// Bytes of the files under `dir` (the disk queue's segments).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

struct DiskOutage {
    produced: u64,
    start_rss_kib: u64,
    peak_rss_kib: u64,
    peak_disk_bytes: u64,
    during: ExportSnapshot,
    /// Distinct spans the backend received after it came back, and all spans (duplicates
    /// included), and how long that took.
    delivered: u64,
    received: u64,
    drain: Duration,
    after: ExportSnapshot,
}

/// The outage with `--otlp-disk-queue`: nothing listens on the endpoint for `seconds`,
/// then a sink starts on that port and the queue is replayed. Waits up to
/// `seconds * 2 + 120` s for every record to arrive (the backoff is capped at 30 s).
fn outage_disk(seconds: u64, rate: u64) -> DiskOutage {
    // A port nothing listens on now, taken again when the backend "comes back".
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let dir = std::env::temp_dir().join(format!("otlp-bench-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let one = OneCore::start(config(port, Compression::Gzip, 1.0, |a| {
        a.timeout = Some(Duration::from_millis(500));
        a.disk_queue = Some(dir.clone());
    }));
    let start_rss_kib = rss_kib();
    let mut peak_rss_kib = start_rss_kib;
    let mut peak_disk_bytes = 0;
    let t0 = Instant::now();
    let mut produced = 0;
    while t0.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..rate / 10 {
            one.feed(failed_connect(produced, (produced % 200) as u16 + 1));
            produced += 1;
        }
        peak_rss_kib = peak_rss_kib.max(rss_kib());
        peak_disk_bytes = peak_disk_bytes.max(dir_bytes(&dir));
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = one.snapshot();
    let sink = Arc::new(Sink::default());
    sink.decode.store(true, Ordering::Relaxed);
    serve_on(sink.clone(), port);
    let back = Instant::now();
    let deadline = Duration::from_secs(seconds * 2 + 120);
    let distinct = |sink: &Sink| {
        sink.span_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64
    };
    while distinct(&sink) < produced && back.elapsed() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let drain = back.elapsed();
    let after = one.finish(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);
    DiskOutage {
        produced,
        start_rss_kib,
        peak_rss_kib,
        peak_disk_bytes,
        during,
        delivered: distinct(&sink),
        received: sink.spans.load(Ordering::Relaxed),
        drain,
        after,
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?}: a whole number expected, using {default}");
            default
        }),
        Err(_) => default,
    }
}

fn latency(
    sink: &Arc<Sink>,
    port: u16,
    interval: f64,
    connects: usize,
) -> Option<(f64, f64, usize)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("otlp latency: skipped (needs root to load the probes)");
        return None;
    }
    sink.latencies_ns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    sink.decode.store(true, Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .ok()?;
    let config = hostscope::AgentConfig {
        loader: hostscope::loader::LoaderConfig {
            pin_dir: None,
            ..Default::default()
        },
        ..Default::default()
    };
    let agent = rt
        .block_on(async { hostscope::Agent::start(&config) })
        .ok()?;
    let exporter = {
        let _g = rt.enter();
        Exporter::start(
            self::config(port, Compression::Gzip, interval, |_| {}),
            SinkContext {
                resolver: Arc::new(Resolver::node_local()),
                ..agent.sink_context(StatusHandle::unavailable())
            },
        )
        .ok()?
    };
    let target = {
        let l = TcpListener::bind("127.0.0.1:0").ok()?;
        l.local_addr().ok()?
    };
    sink.latency_port
        .store(target.port() as u64, Ordering::Relaxed);
    // A steady 100 refused connects per second, from a child process: the exporter leaves
    // out the records of its own process (this one).
    let script = format!(
        "for i in $(seq {connects}); do (exec 3<>/dev/tcp/{}/{}) 2>/dev/null; sleep 0.01; done",
        target.ip(),
        target.port()
    );
    let _ = std::process::Command::new("bash")
        .args(["-c", &script])
        .status();
    std::thread::sleep(Duration::from_secs_f64(interval * 2.0 + 0.5));
    let _ = rt.block_on(exporter.stop(Duration::from_secs(2)));
    sink.latency_port.store(0, Ordering::Relaxed);
    rt.block_on(agent.stop());
    let mut lat = sink
        .latencies_ns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    sink.decode.store(false, Ordering::Relaxed);
    if lat.is_empty() {
        return None;
    }
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize] as f64 / 1e6;
    Some((q(0.5), q(0.99), lat.len()))
}

fn main() {
    let spans: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let outage_secs = env_u64("OTLP_BENCH_OUTAGE_SECS", 30).max(1);
    let outage_rate = env_u64("OTLP_BENCH_OUTAGE_RATE", 2_000).max(10);
    if std::env::var_os("OTLP_BENCH_OUTAGE_ONLY").is_none() {
        throughput_and_latency(spans);
    }
    outage(outage_secs, outage_rate);
}

fn throughput_and_latency(spans: u64) {
    let sink = Arc::new(Sink::default());
    let port = serve(sink.clone());
    println!("== OTLP export (OTLP/HTTP protobuf to a local sink; exporter on one core)");
    for (name, c) in [("gzip", Compression::Gzip), ("none", Compression::None)] {
        let (n, sent, rate, bytes, cpu) = spans_per_second(&sink, port, c, spans);
        println!(
            "spans ({name:4}): {n} failed-connect records, {sent} spans delivered (the rest dropped and counted: queue full) -> {rate:>9.0} spans/s (each also a log record and metric updates), {bytes:6.1} wire bytes per span (spans+logs+metrics), CPU of the whole bench process (exporter + feeder + sink) {cpu:.2} s"
        );
    }
    for (name, c) in [("gzip", Compression::Gzip), ("none", Compression::None)] {
        let (rate, bytes, dropped) = points_per_second(&sink, port, c, 5_000);
        println!(
            "data points ({name:4}): 5000 series re-exported every 10 ms (saturated) -> {rate:>9.0} data points/s sent, {bytes:5.1} wire bytes per point, {dropped} points dropped (queue full)"
        );
    }
    if std::env::var_os("OTLP_BENCH_SPANS_ONLY").is_some() {
        std::process::exit(0);
    }
    for interval in [1.0, 0.1] {
        match latency(&sink, port, interval, 500) {
            Some((p50, p99, n)) => println!(
                "latency (interval {interval} s): kernel event -> received, {n} refused connects at 100/s: median {p50:.1} ms, p99 {p99:.1} ms"
            ),
            None => println!("latency (interval {interval} s): not measured"),
        }
    }
}

/// The rate of failed connects the outage capacity is stated at, and the target: the
/// default disk queue covers this many minutes of it.
const CAPACITY_RATE: f64 = 2_000.0;
const CAPACITY_TARGET_MINUTES: f64 = 10.0;

fn outage(secs: u64, rate: u64) {
    let (start, peak, s) = outage_memory(secs, rate);
    println!(
        "outage: {secs} s with no backend at {rate} records/s, memory queue 16 MiB: RSS {} -> peak {} MiB; queue {} requests / {} KiB; dropped {} spans (queue_full), {} retries",
        start / 1024,
        peak / 1024,
        s.queue_len,
        s.queue_bytes / 1024,
        s.count("traces", "dropped"),
        s.retries
    );
    let d = outage_disk(secs, rate);
    let dropped = d.after.count("traces", "dropped") + d.after.count("traces", "failed");
    let default_disk = ExportSection::default().disk_queue_bytes;
    println!(
        "outage: {secs} s with no backend at {rate} records/s, disk queue {} MiB: RSS {} -> peak {} MiB; disk peak {} KiB; queue at the end of the outage {} requests / {} KiB; dropped {} spans during it, {} retries",
        default_disk >> 20,
        d.start_rss_kib / 1024,
        d.peak_rss_kib / 1024,
        d.peak_disk_bytes / 1024,
        d.during.queue_len,
        d.during.queue_bytes / 1024,
        d.during.count("traces", "dropped"),
        d.during.retries
    );
    let verdict = if d.delivered == d.produced {
        "delivered = produced"
    } else {
        "MISSING SPANS"
    };
    println!(
        "outage (disk) recovery: backend back, {} of {} produced spans delivered ({} received, duplicates included) in {:.1} s; {} dropped or failed in all: {verdict}",
        d.delivered,
        d.produced,
        d.received,
        d.drain.as_secs_f64(),
        dropped
    );
    // Nothing was sent during the outage: the queue holds every record produced.
    let per_record = d.during.queue_bytes as f64 / d.produced.max(1) as f64;
    let minutes = |bytes: f64| bytes / per_record / CAPACITY_RATE / 60.0;
    let covered = minutes(default_disk as f64);
    let verdict_capacity = if covered >= CAPACITY_TARGET_MINUTES {
        "target met"
    } else {
        "BELOW TARGET"
    };
    println!(
        "outage capacity: {per_record:.0} queued bytes per failed-connect record (span + log + metrics, as queued for a gzip wire) -> {:.1} minutes of outage per 100 MiB at {CAPACITY_RATE:.0} failed connects/s; default disk queue ({} MiB) {covered:.1} minutes (target >= {CAPACITY_TARGET_MINUTES:.0}): {verdict_capacity}",
        minutes(100.0 * 1024.0 * 1024.0),
        default_disk >> 20,
    );
    if d.delivered != d.produced {
        std::process::exit(1);
    }
}
