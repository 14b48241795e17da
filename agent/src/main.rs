//! The `hostscope` command line.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use hostscope::{
    dump::{self, DumpFormat, DUMPABLE},
    events::syscalls::parse_syscall,
    loader::{
        syscalls::{check_watch_path, SyscallHooks, SyscallOptions, DEFAULT_WATCH_PATHS},
        LoaderConfig, DEFAULT_PIN_DIR,
    },
    output::{self, OutputFormat, Tagged},
    Agent, AgentConfig,
};

#[derive(Parser)]
#[command(
    name = "hostscope",
    version,
    about = "eBPF host telemetry: TCP latency and failures, syscalls and watched-path access, live"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the probes and print what they see, live (Ctrl-C to stop).
    Run(Box<RunArgs>),
    /// Print the decoded contents of one of the agent's pinned maps.
    Dump(DumpArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Record format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Directory (on a bpffs) where maps are pinned for `hostscope dump`.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Do not pin maps.
    #[arg(long)]
    no_pin: bool,
    /// Size of the TCP event ring in bytes (a power of two, at least one page).
    #[arg(long, default_value_t = hostscope_common::tcp::TCP_EVENTS_RING_BYTES, value_parser = parse_ring_bytes)]
    ring_bytes: u32,
    /// Connections tracked at once (beyond it, new ones are counted, not tracked).
    #[arg(long, default_value_t = hostscope_common::tcp::TCP_CONNS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Pending bytes that make a probe wake the agent (0: wake on every event).
    #[arg(long, default_value_t = hostscope_common::RingConfig::DEFAULT.wakeup_bytes)]
    wakeup_bytes: u64,
    /// Also probe SSL_read/SSL_write[_ex]: reports the outcome of handshakes that run
    /// implicitly inside them, at the cost of a uprobe trap on every TLS read and write.
    #[arg(long)]
    tls_uprobe_io: bool,
    /// Longest time a record waits in a ring before it is read, in milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    poll_ms: u64,
    /// Print the agent's counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 10)]
    stats_interval: u64,
    #[command(flatten)]
    syscalls: SyscallArgs,
    #[command(flatten)]
    metadata: hostscope::metadata::MetadataArgs,
    #[command(flatten)]
    export: Box<hostscope::export::ExportArgs>,
}

/// Syscall telemetry and security events.
#[derive(Args)]
struct SyscallArgs {
    /// Programs counting syscalls: tp_btf (cheapest) falling back to raw tracepoints.
    #[arg(long, value_enum, default_value_t = SyscallHooks::Auto)]
    syscall_hooks: SyscallHooks,
    /// Seconds between reads (and resets) of the in-kernel syscall aggregation.
    #[arg(long, default_value_t = 5.0, value_parser = parse_interval)]
    syscall_interval: f64,
    /// Aggregate per cgroup instead of per process.
    #[arg(long)]
    syscall_by_cgroup: bool,
    /// Count only this process (tgid).
    #[arg(long, value_name = "PID")]
    syscall_pid: Option<u32>,
    /// Count only this cgroup v2 (its id, or its directory under the cgroup2 mount).
    #[arg(long, value_name = "ID|PATH", value_parser = parse_cgroup)]
    syscall_cgroup: Option<u64>,
    /// Count only these syscalls (name or number; repeatable).
    #[arg(long = "syscall", value_name = "NAME", value_parser = parse_syscall)]
    syscall_allow: Vec<u32>,
    /// Report each syscall at least this slow (detailed events) and slow alerts.
    #[arg(long, value_name = "MS")]
    slow_ms: Option<f64>,
    /// Size of the syscall aggregation map in keys (default: fits 64 MiB on this
    /// machine's CPU count, at most 16384); beyond it calls are counted as lost.
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    syscall_max_keys: Option<u32>,
    /// Error-burst alert threshold: errors per second of one (process, syscall, errno).
    #[arg(long, default_value_t = 50.0)]
    error_burst_rate: f64,
    /// Watch opens/execs of this absolute path prefix (repeatable; a trailing `/`
    /// watches a directory tree). Added to the defaults.
    #[arg(long, value_name = "PATH", value_parser = parse_watch_path)]
    watch_path: Vec<String>,
    /// Do not watch the default paths (/etc/shadow, /etc/sudoers, /root/.ssh/, …).
    #[arg(long)]
    no_default_watch: bool,
    /// No security events (watched-path tracepoints not attached).
    #[arg(long)]
    no_security: bool,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.05..=3600.0).contains(&v) {
        return Err(format!("{v} is not between 0.05 and 3600 seconds"));
    }
    Ok(v)
}

/// A cgroup v2 id is the inode number of its directory.
fn parse_cgroup(s: &str) -> Result<u64, String> {
    if let Ok(id) = s.parse::<u64>() {
        return Ok(id);
    }
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(s).map_err(|e| format!("cgroup {s}: {e}"))?;
    if !m.is_dir() {
        return Err(format!("cgroup {s}: not a directory"));
    }
    Ok(m.ino())
}

fn parse_watch_path(s: &str) -> Result<String, String> {
    check_watch_path(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

impl SyscallArgs {
    fn options(&self) -> anyhow::Result<SyscallOptions> {
        let mut o = SyscallOptions {
            hooks: self.syscall_hooks,
            security: !self.no_security,
            interval: Duration::from_secs_f64(self.syscall_interval),
            error_burst_per_s: self.error_burst_rate,
            max_keys: self.syscall_max_keys,
            ..SyscallOptions::default()
        };
        if self.no_default_watch {
            o.watch_paths.clear();
        }
        o.watch_paths.extend(self.watch_path.iter().cloned());
        if o.security && o.watch_paths.is_empty() {
            bail!("no watched paths: drop --no-default-watch, add --watch-path, or pass --no-security");
        }
        debug_assert!(DEFAULT_WATCH_PATHS
            .iter()
            .all(|p| check_watch_path(p).is_ok()));
        let r = &mut o.runtime;
        r.key_by_cgroup = self.syscall_by_cgroup;
        r.pid = self.syscall_pid;
        r.cgroup_id = self.syscall_cgroup;
        r.syscalls = self.syscall_allow.clone();
        if let Some(ms) = self.slow_ms {
            if !(ms > 0.0 && ms.is_finite()) {
                bail!("--slow-ms must be a positive number of milliseconds");
            }
            r.slow_ns = Some((ms * 1e6) as u64);
        }
        // Checks the filters (e.g. syscall numbers beyond the bitmap) before loading.
        r.to_config(0, hostscope_common::RingConfig::DEFAULT)?;
        Ok(o)
    }
}

#[derive(Args)]
struct DumpArgs {
    /// Map to print; `--list` shows them.
    #[arg(required_unless_present = "list")]
    map: Option<String>,
    #[arg(long, value_enum, default_value_t = DumpFormat::Table)]
    format: DumpFormat,
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// List the maps that can be dumped.
    #[arg(long)]
    list: bool,
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!("{v} is not a power of two of at least 4096"));
    }
    Ok(v)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(run(*args))),
        Command::Dump(args) => run_dump(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostscope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Bad options are reported before privileges are.
    let syscalls = args.syscalls.options()?;
    let export = args
        .export
        .resolve(&hostscope::export::config::ProcessEnv)
        .context("OTLP export options")?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("hostscope run needs root (CAP_BPF, CAP_PERFMON and access to tracefs)");
    }
    let config = AgentConfig {
        loader: LoaderConfig {
            pin_dir: (!args.no_pin).then(|| args.pin_dir.clone()),
            tcp_ring_bytes: args.ring_bytes,
            tcp_max_conns: args.max_connections,
            wakeup_bytes: args.wakeup_bytes,
            tls_uprobe_io: args.tls_uprobe_io,
            syscalls,
        },
        poll_interval: Duration::from_millis(args.poll_ms),
        metadata: args.metadata.options(),
        ..AgentConfig::default()
    };
    let mut agent = Agent::start(&config).context("starting the agent")?;
    for status in agent.report() {
        // A probe that is not attached says why; the agent runs with what it has.
        match args.output {
            OutputFormat::Json => print_tagged("probe_status", status)?,
            _ => eprintln!("probe {status}"),
        }
    }
    let printer = output::spawn_printer_with(
        agent.subscribe(),
        args.output,
        agent.counters(),
        args.metadata.options().enabled.then(|| agent.resolver()),
    );
    let (exporter, mut export_tick) = match export {
        Some(config) => {
            let tick = tokio::time::interval(config.interval);
            let e = hostscope::export::Exporter::start(
                config,
                agent.subscribe(),
                agent.resolver(),
                agent.counters(),
            )
            .context("starting the OTLP exporter")?;
            (Some(e), Some(tick))
        }
        None => (None, None),
    };

    let stop = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await,
            None => wait_for_signal().await,
        }
    };
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(Duration::from_secs(args.stats_interval.max(1)));
    ticker.tick().await;
    // New OpenSSL copies (new containers, new programs) get their uprobes.
    let mut rescan = tokio::time::interval(Duration::from_secs(5));
    rescan.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick(), if args.stats_interval > 0 => {
                print_stats(&agent.stats(), args.output)?;
                print_metadata_stats(&agent.resolver().stats(), args.output)?;
                if let Some(e) = &exporter {
                    print_export(&e.snapshot(), args.output)?;
                }
            }
            // The agent's health goes out with the exporter's own metrics.
            _ = async {
                match export_tick.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                if let Some(e) = &exporter {
                    e.set_agent_stats(agent.stats());
                }
            }
            _ = rescan.tick() => {
                for problem in agent.refresh() {
                    eprintln!("tls uprobes: {problem}");
                }
            }
        }
    }
    if let Some(e) = &exporter {
        e.set_agent_stats(agent.stats());
    }
    let metadata = agent.resolver();
    let stats = agent.stop().await;
    // The agent's channel is closed now; the printer finishes what it has.
    let _ = tokio::task::spawn_blocking(move || printer.join()).await;
    print_stats(&stats, args.output)?;
    print_metadata_stats(&metadata.stats(), args.output)?;
    if let Some(e) = exporter {
        print_export(&e.stop(Duration::from_secs(5)).await, args.output)?;
    }
    Ok(())
}

fn print_metadata_stats(
    stats: &hostscope::metadata::MetadataStats,
    format: OutputFormat,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_tagged("metadata_stats", stats)?,
        _ => eprintln!("{stats}"),
    }
    Ok(())
}

fn print_stats(stats: &hostscope::stats::AgentStats, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_tagged("agent_stats", stats)?,
        _ => eprintln!("{stats}"),
    }
    Ok(())
}

fn print_export(s: &hostscope::export::ExportSnapshot, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_tagged("export_stats", s)?,
        _ => eprintln!("{s}"),
    }
    Ok(())
}

fn print_tagged(kind: &str, value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(&Tagged { kind, value })?);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn run_dump(args: DumpArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.list {
        use std::io::Write;
        for (name, what) in DUMPABLE {
            writeln!(out, "{name:<14} {what}")?;
        }
        return Ok(());
    }
    let map = args.map.unwrap_or_default();
    dump::dump(&args.pin_dir, &map, args.format, &mut out)?;
    Ok(())
}
