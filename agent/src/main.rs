//! The `hostscope` command line: parses flags and lays them over the configuration tree
//! (`hostscope::config`); everything else lives in the library. Each `run` flag names the
//! key it sets; its default is the key's (`hostscope config default` lists them all).
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use hostscope::{
    api::{self, config::DEFAULT_SOCKET, proto::EventsRequest},
    config::{self, Config},
    daemon::{self, Source},
    dump::{self, DumpFormat},
    events::syscalls::parse_syscall,
    export::config::{parse_buckets, parse_key_value, ExportOverrides, ProcessEnv},
    loader::{
        syscalls::{check_watch_path, CgroupRef, SyscallRef},
        tcp::check_ring_bytes,
        DEFAULT_PIN_DIR,
    },
};
use serde::de::DeserializeOwned;

/// Records `hostscope events` shows without --follow or --last (as `hubble observe`).
const DEFAULT_LAST: u32 = 20;

#[derive(Parser)]
#[command(
    name = "hostscope",
    version,
    about = "eBPF host telemetry: TCP latency and failures, TLS handshakes, syscalls and watched-path access, live"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the probes and print what they see, live (SIGINT or SIGTERM to stop; SIGHUP
    /// or a change of the --config file reloads it).
    Run(Box<RunArgs>),
    /// Print the decoded contents of one of the agent's pinned maps.
    Dump(DumpArgs),
    /// The configuration file: its defaults, and checking one.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Records from the running agent, through its API: by default the latest 20 that
    /// match, then exit (as `hubble observe`); --follow streams new ones.
    Events(Box<EventsArgs>),
    /// The running agent's status: probes, counters, drops, exporter, metadata, API clients.
    Status(StatusArgs),
}

#[derive(Args)]
struct EventsArgs {
    /// Keep streaming new records (Ctrl-C to stop).
    #[arg(long, short)]
    follow: bool,
    /// Start with the latest N matching records from before the call (default: 20
    /// without --follow, none with it).
    #[arg(long, value_name = "N")]
    last: Option<u32>,
    /// Only this record type, repeatable: tcp, tls, tls_certificate, syscalls,
    /// syscall_alert, syscall_slow, security, rca.
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    types: Vec<String>,
    /// Only failures (failed connects, resets, failed handshakes, error bursts, incidents).
    #[arg(long)]
    failures: bool,
    /// Only records of pods in this Kubernetes namespace.
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: Option<String>,
    /// Only records of this pod: a name or a prefix of one, or NS/NAME.
    #[arg(long, value_name = "POD")]
    pod: Option<String>,
    /// Only records of this container: its name, or (a prefix of) its id.
    #[arg(long, value_name = "NAME|ID")]
    container: Option<String>,
    /// Only records of pods of this workload (deployment, statefulset, daemonset, job …).
    #[arg(long, value_name = "NAME")]
    workload: Option<String>,
    /// Only records of processes with this name (comm).
    #[arg(long, value_name = "NAME")]
    comm: Option<String>,
    /// Only records of this process (tgid).
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pid: Option<u32>,
    /// Only records whose peer is this address or in this CIDR, repeatable.
    #[arg(long = "peer", value_name = "ADDR|CIDR")]
    peers: Vec<String>,
    /// Only records with this local or remote port, repeatable.
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u32).range(1..=65535))]
    ports: Vec<u32>,
    /// Only failures of this reason, repeatable: refused, timed_out, reset,
    /// certificate_expired, EMFILE, …
    #[arg(long = "reason", value_name = "REASON")]
    reasons: Vec<String>,
    /// text (as `hostscope run` prints) or json (one object per line, as `run --output json`).
    #[arg(long, value_parser = text_or_json, default_value = "text")]
    output: hostscope::output::OutputFormat,
    /// The agent's API socket [api.socket].
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(Args)]
struct StatusArgs {
    /// text or json.
    #[arg(long, value_parser = text_or_json, default_value = "text")]
    output: hostscope::output::OutputFormat,
    /// The agent's API socket [api.socket].
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

fn text_or_json(s: &str) -> Result<hostscope::output::OutputFormat, String> {
    match enum_value(s)? {
        f @ (hostscope::output::OutputFormat::Text | hostscope::output::OutputFormat::Json) => {
            Ok(f)
        }
        _ => Err("text or json".into()),
    }
}

impl EventsArgs {
    fn request(&self) -> EventsRequest {
        EventsRequest {
            types: self.types.clone(),
            failures_only: self.failures,
            namespace: self.namespace.clone().unwrap_or_default(),
            pod: self.pod.clone().unwrap_or_default(),
            container: self.container.clone().unwrap_or_default(),
            workload: self.workload.clone().unwrap_or_default(),
            comm: self.comm.clone().unwrap_or_default(),
            pid: self.pid.unwrap_or(0),
            peers: self.peers.clone(),
            ports: self.ports.clone(),
            reasons: self.reasons.clone(),
            last: self
                .last
                .unwrap_or(if self.follow { 0 } else { DEFAULT_LAST }),
            follow: self.follow,
            with_text: false,
        }
    }
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every setting with its default, as commented YAML.
    Default,
    /// Validate FILE and print the effective configuration, or the errors (exit 1).
    Check { file: PathBuf },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// YAML configuration file, reloaded when it changes; flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (defaults < file < environment < flags) as YAML
    /// and exit, without loading anything.
    #[arg(long)]
    print_config: bool,
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Record format on stdout: text, json or none [agent.output].
    #[arg(long, value_parser = enum_value::<hostscope::output::OutputFormat>)]
    output: Option<hostscope::output::OutputFormat>,
    /// Directory (on a bpffs) where maps are pinned for `hostscope dump` [agent.pin_dir].
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// Do not pin maps [agent.pin: false].
    #[arg(long)]
    no_pin: bool,
    /// Size of the TCP event ring in bytes, a power of two [tcp.ring_bytes].
    #[arg(long, value_parser = ring_bytes)]
    ring_bytes: Option<u32>,
    /// Connections tracked at once [tcp.max_connections].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Pending bytes that make a probe wake the agent, 0: every event [agent.wakeup_bytes].
    #[arg(long)]
    wakeup_bytes: Option<u64>,
    /// Also probe SSL_read/SSL_write[_ex] [tls.uprobe_io].
    #[arg(long)]
    tls_uprobe_io: bool,
    /// Longest time a record waits in a ring, in milliseconds [agent.poll_interval].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    poll_ms: Option<u64>,
    /// Seconds between counter lines, 0: only at exit [agent.stats_interval].
    #[arg(long, value_name = "SECONDS")]
    stats_interval: Option<u64>,
    /// The local API's socket [api.socket].
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// No local API [api.enabled: false].
    #[arg(long)]
    no_api: bool,
    #[command(flatten)]
    syscalls: SyscallFlags,
    #[command(flatten)]
    metadata: MetadataFlags,
    #[command(flatten)]
    export: ExportFlags,
    #[command(flatten)]
    prometheus: PrometheusFlags,
}

/// The Prometheus endpoint (/metrics, /healthz, /readyz).
#[derive(Args, Clone)]
struct PrometheusFlags {
    /// Serve the endpoint on ADDR:PORT, e.g. 127.0.0.1:9465 [prometheus.listen, prometheus.enabled: true].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_prometheus")]
    prometheus_listen: Option<std::net::SocketAddr>,
    /// Do not serve the endpoint [prometheus.enabled: false].
    #[arg(long)]
    no_prometheus: bool,
    /// Also expose the TCP, TLS and syscall metrics [prometheus.records].
    #[arg(long)]
    prometheus_records: bool,
}

/// Syscall telemetry and security events.
#[derive(Args, Clone)]
struct SyscallFlags {
    /// auto, tp-btf, raw-tp or off [syscalls.hooks].
    #[arg(long, value_parser = enum_value::<hostscope::loader::syscalls::SyscallHooks>)]
    syscall_hooks: Option<hostscope::loader::syscalls::SyscallHooks>,
    /// Seconds between reads of the in-kernel aggregation [syscalls.interval].
    #[arg(long, value_parser = interval_secs)]
    syscall_interval: Option<f64>,
    /// Aggregate per cgroup instead of per process [syscalls.by_cgroup].
    #[arg(long)]
    syscall_by_cgroup: bool,
    /// Count only this process (tgid) [syscalls.pid].
    #[arg(long, value_name = "PID")]
    syscall_pid: Option<u32>,
    /// Count only this cgroup v2, by id or directory [syscalls.cgroup].
    #[arg(long, value_name = "ID|PATH")]
    syscall_cgroup: Option<String>,
    /// Count only these syscalls, name or number, repeatable [syscalls.syscalls].
    #[arg(long = "syscall", value_name = "NAME", value_parser = syscall_name)]
    syscall_allow: Vec<String>,
    /// Report each syscall at least this slow, in ms [syscalls.slow_threshold].
    #[arg(long, value_name = "MS", value_parser = positive_ms)]
    slow_ms: Option<f64>,
    /// Size of the syscall aggregation map in keys [syscalls.max_keys].
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    syscall_max_keys: Option<u32>,
    /// Error-burst alert: errors per second of one (process, syscall, errno)
    /// [syscalls.error_burst_rate].
    #[arg(long)]
    error_burst_rate: Option<f64>,
    /// Watch opens/execs of this absolute path prefix, repeatable, added to the file's
    /// [syscalls.watch_paths].
    #[arg(long, value_name = "PATH", value_parser = watch_path)]
    watch_path: Vec<String>,
    /// Do not watch the default paths [syscalls.default_watch_paths: false].
    #[arg(long)]
    no_default_watch: bool,
    /// No security events [syscalls.security: false].
    #[arg(long)]
    no_security: bool,
}

/// Process / container / pod identity.
#[derive(Args, Clone)]
struct MetadataFlags {
    /// Do not resolve identity [metadata.enabled: false].
    #[arg(long)]
    no_metadata: bool,
    /// Do not read process details from /proc [metadata.processes: false].
    #[arg(long)]
    no_process_metadata: bool,
    /// Longest command line kept, in bytes [metadata.cmdline.max_bytes].
    #[arg(long)]
    cmdline_max_bytes: Option<usize>,
    /// Redact arguments whose name contains WORD, repeatable, replacing the defaults
    /// [metadata.cmdline.redact_keys].
    #[arg(long = "redact-arg", value_name = "WORD")]
    redact_args: Vec<String>,
    /// Parent of the kubelet's pods/ and containers/ directories [metadata.kubelet_log_root].
    #[arg(long, value_name = "DIR")]
    kubelet_log_root: Option<PathBuf>,
    /// Watch this node's pods and the services on the Kubernetes API [metadata.kube_api].
    #[arg(long)]
    kube_api: bool,
    /// kubeconfig for --kube-api [metadata.kubeconfig].
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// This node's name [metadata.node_name].
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
}

/// OTLP export. Flags win over OTEL_EXPORTER_OTLP_* variables, which win over the file.
#[derive(Args, Clone)]
struct ExportFlags {
    /// OTLP endpoint, e.g. http://collector:4317 [export.endpoint].
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// grpc or http/protobuf [export.protocol].
    #[arg(long, value_parser = enum_value::<hostscope::export::config::Protocol>)]
    otlp_protocol: Option<hostscope::export::config::Protocol>,
    /// Request header KEY=VALUE, repeatable [export.headers].
    #[arg(long = "otlp-header", value_name = "KEY=VALUE")]
    otlp_headers: Vec<String>,
    /// gzip, zstd or none [export.compression].
    #[arg(long, value_parser = enum_value::<hostscope::export::config::Compression>)]
    otlp_compression: Option<hostscope::export::config::Compression>,
    /// Per-request timeout in milliseconds [export.timeout].
    #[arg(long, value_name = "MS")]
    otlp_timeout_ms: Option<u64>,
    /// PEM CA bundle to verify the endpoint with [export.ca].
    #[arg(long, value_name = "FILE")]
    otlp_ca: Option<PathBuf>,
    /// PEM client certificate for mTLS [export.client_cert].
    #[arg(long, value_name = "FILE", requires = "otlp_client_key")]
    otlp_client_cert: Option<PathBuf>,
    /// PEM client key for mTLS [export.client_key].
    #[arg(long, value_name = "FILE", requires = "otlp_client_cert")]
    otlp_client_key: Option<PathBuf>,
    /// Seconds between metric exports [export.interval].
    #[arg(long, value_name = "SECONDS", value_parser = positive_secs)]
    otlp_interval: Option<f64>,
    /// Spans or log records per request at most [export.max_batch].
    #[arg(long, value_name = "N")]
    otlp_max_batch: Option<usize>,
    /// Memory queue bound in bytes [export.queue_bytes].
    #[arg(long, value_name = "BYTES")]
    otlp_queue_bytes: Option<usize>,
    /// Directory of an on-disk queue [export.disk_queue].
    #[arg(long, value_name = "DIR")]
    otlp_disk_queue: Option<PathBuf>,
    /// Disk queue bound in bytes [export.disk_queue_bytes].
    #[arg(long, value_name = "BYTES")]
    otlp_disk_queue_bytes: Option<u64>,
    /// Seconds a request is retried before it is dropped [export.max_retry].
    #[arg(long, value_name = "SECONDS", value_parser = positive_secs)]
    otlp_max_retry: Option<f64>,
    /// Seconds queued data may take to leave at stop [export.flush_timeout].
    #[arg(long, value_name = "SECONDS", value_parser = positive_secs)]
    otlp_flush_timeout: Option<f64>,
    /// cumulative or delta [export.temporality].
    #[arg(long, value_parser = enum_value::<hostscope::export::config::Temporality>)]
    otlp_temporality: Option<hostscope::export::config::Temporality>,
    /// Histogram bounds of one metric, NAME=b1,b2,…, repeatable [export.buckets].
    #[arg(long = "otlp-buckets", value_name = "NAME=BOUNDS", value_parser = parse_buckets)]
    otlp_buckets: Vec<(String, Vec<f64>)>,
    /// Base-2 exponential histograms [export.exponential_histograms].
    #[arg(long)]
    otlp_exponential_histograms: bool,
    /// Metric series kept at most [export.series_limit].
    #[arg(long, value_name = "N")]
    otlp_series_limit: Option<usize>,
    /// process.pid on metric data points [export.metric_pids].
    #[arg(long)]
    otlp_metric_pids: bool,
    /// Peer addresses on metric data points [export.metric_peers].
    #[arg(long)]
    otlp_metric_peers: bool,
    /// Looked-up names on DNS metric data points [export.metric_dns_names].
    #[arg(long)]
    otlp_metric_dns_names: bool,
    /// One span per TCP connection [export.connection_spans].
    #[arg(long)]
    otlp_connection_spans: bool,
    /// One log record per failure besides the RCA incidents [export.failure_logs].
    #[arg(long)]
    otlp_failure_logs: bool,
    /// Resource attribute KEY=VALUE, repeatable [export.resource].
    #[arg(long = "otlp-resource", value_name = "KEY=VALUE", value_parser = key_value)]
    otlp_resource: Vec<(String, String)>,
}

impl RunArgs {
    /// Sets the keys given as flags; what is not given keeps the file's (or default) value.
    fn lay_over(&self, c: &mut Config) {
        let a = &mut c.agent;
        set(&mut a.output, self.output);
        set(&mut a.pin_dir, self.pin_dir.clone());
        if self.no_pin {
            a.pin = false;
        }
        set(&mut a.wakeup_bytes, self.wakeup_bytes);
        set(
            &mut a.poll_interval,
            self.poll_ms.map(Duration::from_millis),
        );
        set(
            &mut a.stats_interval,
            self.stats_interval.map(Duration::from_secs),
        );
        set(&mut c.tcp.ring_bytes, self.ring_bytes);
        set(&mut c.tcp.max_connections, self.max_connections);
        if self.tls_uprobe_io {
            c.tls.uprobe_io = true;
        }
        set(&mut c.api.socket, self.api_socket.clone());
        if self.no_api {
            c.api.enabled = false;
        }
        let (f, p) = (&self.prometheus, &mut c.prometheus);
        if let Some(addr) = f.prometheus_listen {
            p.listen = addr;
            p.enabled = true;
        }
        if f.no_prometheus {
            p.enabled = false;
        }
        if f.prometheus_records {
            p.records = true;
        }

        let (f, s) = (&self.syscalls, &mut c.syscalls);
        set(&mut s.hooks, f.syscall_hooks);
        set(
            &mut s.interval,
            f.syscall_interval.map(Duration::from_secs_f64),
        );
        if f.syscall_by_cgroup {
            s.by_cgroup = true;
        }
        if f.syscall_pid.is_some() {
            s.pid = f.syscall_pid;
        }
        if let Some(cg) = &f.syscall_cgroup {
            s.cgroup = Some(CgroupRef::Path(cg.clone()));
        }
        if !f.syscall_allow.is_empty() {
            s.syscalls = f
                .syscall_allow
                .iter()
                .map(|n| SyscallRef::Name(n.clone()))
                .collect();
        }
        if let Some(ms) = f.slow_ms {
            s.slow_threshold = Some(Duration::from_secs_f64(ms / 1e3));
        }
        if f.syscall_max_keys.is_some() {
            s.max_keys = f.syscall_max_keys;
        }
        set(&mut s.error_burst_rate, f.error_burst_rate);
        for p in &f.watch_path {
            if !s.watch_paths.contains(p) {
                s.watch_paths.push(p.clone());
            }
        }
        if f.no_default_watch {
            s.default_watch_paths = false;
        }
        if f.no_security {
            s.security = false;
        }

        let (f, m) = (&self.metadata, &mut c.metadata);
        if f.no_metadata {
            m.enabled = false;
        }
        if f.no_process_metadata {
            m.processes = false;
        }
        set(&mut m.cmdline.max_bytes, f.cmdline_max_bytes);
        if !f.redact_args.is_empty() {
            m.cmdline.redact_keys = f.redact_args.clone();
        }
        set(&mut m.kubelet_log_root, f.kubelet_log_root.clone());
        if f.kube_api {
            m.kube_api = true;
        }
        if f.kubeconfig.is_some() {
            m.kubeconfig = f.kubeconfig.clone();
        }
        if f.node_name.is_some() {
            m.node_name = f.node_name.clone();
        }

        let (f, e) = (&self.export, &mut c.export);
        set(
            &mut e.interval,
            f.otlp_interval.map(Duration::from_secs_f64),
        );
        set(&mut e.max_batch, f.otlp_max_batch);
        set(&mut e.queue_bytes, f.otlp_queue_bytes);
        if f.otlp_disk_queue.is_some() {
            e.disk_queue = f.otlp_disk_queue.clone();
        }
        set(&mut e.disk_queue_bytes, f.otlp_disk_queue_bytes);
        set(
            &mut e.max_retry,
            f.otlp_max_retry.map(Duration::from_secs_f64),
        );
        set(
            &mut e.flush_timeout,
            f.otlp_flush_timeout.map(Duration::from_secs_f64),
        );
        set(&mut e.temporality, f.otlp_temporality);
        for (name, bounds) in &f.otlp_buckets {
            e.buckets.insert(name.clone(), bounds.clone());
        }
        if f.otlp_exponential_histograms {
            e.exponential_histograms = true;
        }
        set(&mut e.series_limit, f.otlp_series_limit);
        e.metric_pids |= f.otlp_metric_pids;
        e.metric_peers |= f.otlp_metric_peers;
        e.metric_dns_names |= f.otlp_metric_dns_names;
        e.connection_spans |= f.otlp_connection_spans;
        e.failure_logs |= f.otlp_failure_logs;
        for (k, v) in &f.otlp_resource {
            e.resource.insert(k.clone(), v.clone());
        }
    }

    /// Flags of the keys the environment can set too: they win over it.
    fn export_overrides(&self) -> ExportOverrides {
        let f = &self.export;
        ExportOverrides {
            endpoint: f.otlp_endpoint.clone(),
            protocol: f.otlp_protocol,
            headers: f.otlp_headers.clone(),
            compression: f.otlp_compression,
            timeout_ms: f.otlp_timeout_ms,
            ca: f.otlp_ca.clone(),
            client_cert: f.otlp_client_cert.clone(),
            client_key: f.otlp_client_key.clone(),
        }
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// A library enum from its configuration-file spelling (`json`, `tp-btf`, `http/protobuf`).
fn enum_value<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    use serde::de::{value::StrDeserializer, IntoDeserializer};
    let de: StrDeserializer<'_, serde::de::value::Error> = s.into_deserializer();
    T::deserialize(de).map_err(|e| e.to_string())
}

fn ring_bytes(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    check_ring_bytes(v)?;
    Ok(v)
}

fn interval_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.05..=3600.0).contains(&v) {
        return Err(format!("{v} is not between 0.05 and 3600 seconds"));
    }
    Ok(v)
}

fn positive_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(v > 0.0 && v <= 86_400.0) {
        return Err(format!("{v} is not between 0 and 86400 seconds"));
    }
    Ok(v)
}

fn positive_ms(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err("a positive number of milliseconds expected".into());
    }
    Ok(v)
}

fn syscall_name(s: &str) -> Result<String, String> {
    parse_syscall(s)?;
    Ok(s.to_string())
}

fn watch_path(s: &str) -> Result<String, String> {
    check_watch_path(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn key_value(s: &str) -> Result<(String, String), String> {
    parse_key_value(s, "--otlp-resource").map_err(|e| e.to_string())
}

#[derive(Args)]
struct DumpArgs {
    /// Map to print; `--list` shows them.
    #[arg(required_unless_present = "list")]
    map: Option<String>,
    #[arg(long, value_parser = enum_value::<DumpFormat>, default_value = "table")]
    format: DumpFormat,
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// List the maps that can be dumped.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            hostscope::agent::tune_heap();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")
                .and_then(|rt| rt.block_on(run(*args)))
        }
        Command::Dump(args) => run_dump(args),
        Command::Config(ConfigCommand::Default) => {
            print!("{}", config::default_yaml());
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => check(&file),
        Command::Events(args) => client_runtime().and_then(|rt| {
            let request = args.request();
            let mut out = std::io::stdout().lock();
            rt.block_on(api::cli::events(
                &args.socket,
                request,
                args.output,
                &mut out,
            ))
            .map_err(anyhow::Error::from)
        }),
        Command::Status(args) => client_runtime().and_then(|rt| {
            let mut out = std::io::stdout().lock();
            rt.block_on(api::cli::status(&args.socket, args.output, &mut out))
                .map_err(anyhow::Error::from)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostscope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let duration = args.duration.map(|s| Duration::from_secs_f64(s.max(0.0)));
    let flags = args.clone();
    let source = Source {
        file: args.config.clone(),
        flags: Box::new(move |c| flags.lay_over(c)),
        export_flags: args.export_overrides(),
        env: Box::new(ProcessEnv),
    };
    if args.print_config {
        let loaded = source.load()?;
        print!("{}", serde_yaml_ng::to_string(&source.effective(&loaded))?);
        return Ok(());
    }
    daemon::run(source, duration).await?;
    Ok(())
}

/// `config check FILE`: the effective configuration (defaults < file < environment for
/// export), or every problem with its key path and line.
fn check(file: &std::path::Path) -> anyhow::Result<()> {
    config::check_file_ownership(file)?;
    let (config, _) = config::load_file(file)?;
    config
        .export
        .resolve(&ExportOverrides::default(), &ProcessEnv)
        .context("export")?;
    print!(
        "{}",
        serde_yaml_ng::to_string(&config).context("printing the configuration")?
    );
    eprintln!("{}: ok", file.display());
    Ok(())
}

fn run_dump(args: DumpArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.list {
        use std::io::Write;
        for (name, what) in dump::dumpable() {
            writeln!(out, "{name:<14} {what}")?;
        }
        return Ok(());
    }
    let map = args.map.unwrap_or_default();
    dump::dump(&args.pin_dir, &map, args.format, &mut out)?;
    Ok(())
}
