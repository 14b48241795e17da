//! The `hostscope` command line.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use hostscope::{
    dump::{self, DumpFormat, DUMPABLE},
    loader::{LoaderConfig, DEFAULT_PIN_DIR},
    output::{self, OutputFormat, Tagged},
    Agent, AgentConfig,
};

#[derive(Parser)]
#[command(
    name = "hostscope",
    version,
    about = "eBPF host telemetry: TCP latency and failures, live"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the probes and print what they see, live (Ctrl-C to stop).
    Run(RunArgs),
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
            .and_then(|rt| rt.block_on(run(args))),
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
        },
        poll_interval: Duration::from_millis(args.poll_ms),
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
    let printer = output::spawn_printer(agent.subscribe(), args.output, agent.counters());

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
            _ = ticker.tick(), if args.stats_interval > 0 => print_stats(&agent.stats(), args.output)?,
            _ = rescan.tick() => {
                for problem in agent.refresh() {
                    eprintln!("tls uprobes: {problem}");
                }
            }
        }
    }
    let stats = agent.stop().await;
    // The agent's channel is closed now; the printer finishes what it has.
    let _ = tokio::task::spawn_blocking(move || printer.join()).await;
    print_stats(&stats, args.output)?;
    Ok(())
}

fn print_stats(stats: &hostscope::stats::AgentStats, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_tagged("agent_stats", stats)?,
        _ => eprintln!("{stats}"),
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
