//! `hostscope run`: turns a validated configuration tree into the running agent and its
//! sinks ([`Running::start`]), applies a new tree to it ([`Running::apply`], on a change
//! of the file or SIGHUP), and stops it the same way on SIGINT, SIGTERM or the end of
//! `--duration`: final counters printed, a bounded flush.

mod reload;
mod watch;

use std::{path::PathBuf, time::Duration};

use serde::Serialize;

pub use reload::{ReloadReport, ReloadResult, ReloadStats};

use crate::{
    config::{self, Config},
    export::{
        config::{Env, ExportOverrides},
        ExportConfig, Exporter,
    },
    output::{self, OutputFormat, Tagged},
    status::{self, Status, StatusHandle},
    Agent,
};

/// Where the configuration comes from: the file (optional), then the environment, then
/// the command line's flags, laid over the built-in defaults in that order. Kept for the
/// agent's life: a reload reads the file again and lays the same flags over it.
pub struct Source {
    pub file: Option<PathBuf>,
    /// Sets the keys given as flags.
    pub flags: Box<dyn Fn(&mut Config) + Send + Sync>,
    /// Flags of the keys the environment can set too (they win over it).
    pub export_flags: ExportOverrides,
    pub env: Box<dyn Env + Send + Sync>,
}

/// Each message carries its cause, and no variant is also a `source`: printed with `{:#}`
/// a cause would otherwise appear twice.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    File(#[from] config::FileError),
    #[error("invalid configuration:\n{0}")]
    Invalid(config::Problems),
    #[error(transparent)]
    Export(#[from] crate::export::ConfigError),
    #[error("hostscope run needs root (CAP_BPF, CAP_PERFMON and access to tracefs)")]
    NotRoot,
    #[error("starting the agent: {0}")]
    Agent(crate::agent::AgentError),
    #[error("starting the OTLP exporter: {0}")]
    Exporter(crate::export::ExportError),
    #[error("writing to stdout: {0}")]
    Output(std::io::Error),
    #[error("watching the configuration file: {0}")]
    Watch(notify::Error),
    #[error("starting the local API: {0}")]
    Api(crate::api::ServeError),
    #[error("starting the Prometheus endpoint: {0}")]
    Prometheus(crate::prometheus::StartError),
}

impl From<std::io::Error> for DaemonError {
    fn from(e: std::io::Error) -> Self {
        DaemonError::Output(e)
    }
}

/// A configuration read from its sources and checked, with what it resolves to.
pub struct Loaded {
    pub config: Config,
    pub export: Option<ExportConfig>,
    /// The file's text, to tell a real change from a touch.
    pub text: Option<String>,
}

impl Source {
    /// Reads the file (if any), lays the flags over it and checks everything, including
    /// export settings that are unused without an endpoint.
    pub fn load(&self) -> Result<Loaded, DaemonError> {
        let (mut config, text) = match &self.file {
            Some(path) => {
                config::check_file_ownership(path)?;
                let (c, t) = config::load_file(path)?;
                (c, Some(t))
            }
            None => (Config::default(), None),
        };
        (self.flags)(&mut config);
        config.validate().map_err(DaemonError::Invalid)?;
        let mut export = config.export.resolve(&self.export_flags, &*self.env)?;
        // Without incidents, the per-failure log records are the only failure logs.
        if let Some(e) = &mut export {
            e.failure_logs |= !config.rca.enabled;
        }
        Ok(Loaded {
            config,
            export,
            text,
        })
    }
}

impl Source {
    /// The tree with the export keys that flags or the environment decided filled in
    /// (what `run --print-config` shows).
    pub fn effective(&self, loaded: &Loaded) -> Config {
        let mut c = loaded.config.clone();
        let f = &self.export_flags;
        for (slot, flag) in [
            (&mut c.export.ca, &f.ca),
            (&mut c.export.client_cert, &f.client_cert),
            (&mut c.export.client_key, &f.client_key),
        ] {
            if flag.is_some() {
                slot.clone_from(flag);
            }
        }
        if let Some(e) = &loaded.export {
            let x = &mut c.export;
            let base = e.endpoints.metrics.as_str();
            x.endpoint = Some(base.trim_end_matches("v1/metrics").to_string());
            x.protocol = Some(e.protocol);
            x.compression = Some(e.compression);
            x.timeout = Some(e.timeout);
            for (k, v) in &e.headers {
                x.headers
                    .insert(k.to_string(), v.to_str().unwrap_or("(binary)").to_string());
            }
            for (k, v) in &e.resource {
                x.resource.insert(k.clone(), v.clone());
            }
        }
        c
    }
}

/// The agent, its sinks and the configuration they run with.
pub struct Running {
    agent: Agent,
    config: Config,
    export: Option<ExportConfig>,
    exporter: Option<Exporter>,
    prometheus: Option<crate::prometheus::Prometheus>,
    printer: Option<std::thread::JoinHandle<()>>,
    api: Option<crate::api::ApiServer>,
    /// Incidents folded from failures (`rca.enabled`).
    rca: Option<crate::rca::sink::RcaSink>,
    reloads: ReloadStats,
    /// The file's text the running configuration came from.
    text: Option<String>,
    /// Given to every sink: the run loop answers it.
    status: StatusHandle,
    started: std::time::Instant,
}

impl Running {
    /// Loads the probes and starts the sinks the configuration asks for; `status` is the
    /// handle the sinks ask the run loop's status with.
    pub fn start(loaded: Loaded, status: StatusHandle) -> Result<Running, DaemonError> {
        let Loaded {
            config,
            export,
            text,
        } = loaded;
        let agent_config = config.agent_config().map_err(DaemonError::Invalid)?;
        // The socket first: a second agent on it fails before loading anything.
        let api = match config.api.enabled {
            true => Some(crate::api::ApiServer::bind(&config.api).map_err(DaemonError::Api)?),
            false => None,
        };
        let agent = Agent::start(&agent_config).map_err(DaemonError::Agent)?;
        let format = config.agent.output;
        // `--output none` prints nothing: no printer reads the stream (`agent.output`
        // needs a restart, so none is needed later either).
        let printer = (format != OutputFormat::None).then(|| {
            output::spawn_printer(
                agent.sink_context(status.clone()),
                format,
                config.metadata.enabled,
            )
        });
        let exporter = match &export {
            Some(e) => Some(
                Exporter::start(e.clone(), agent.sink_context(status.clone()))
                    .map_err(DaemonError::Exporter)?,
            ),
            None => None,
        };
        let rca = config.rca.enabled.then(|| {
            crate::rca::sink::RcaSink::start(
                &config.rca,
                agent.sink_context(status.clone()),
                agent.publisher(),
            )
        });
        let api = api.map(|a| a.serve(agent.sink_context(status.clone()), config.metadata.enabled));
        let p = &config.prometheus;
        let prometheus = match p.enabled {
            true => Some(
                crate::prometheus::Prometheus::start(
                    p,
                    p.records
                        .then(|| crate::prometheus::record_options(&config.export)),
                    agent.sink_context(status.clone()),
                )
                .map_err(DaemonError::Prometheus)?,
            ),
            false => None,
        };
        // After the sinks subscribed: once the report is out, every record reaches them.
        for status in agent.report() {
            // A probe that is not attached says why; the agent runs with what it has.
            match format {
                OutputFormat::Json => print_tagged("probe_status", status)?,
                _ => eprintln!("probe {status}"),
            }
        }
        Ok(Running {
            agent,
            config,
            export,
            exporter,
            prometheus,
            printer,
            api,
            rca,
            reloads: ReloadStats::default(),
            text,
            status,
            started: std::time::Instant::now(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The agent's counters with the configuration's reload counters.
    pub fn stats(&self) -> crate::stats::AgentStats {
        let mut s = self.agent.stats();
        s.config = self.reloads.clone();
        s
    }

    /// Everything `hostscope status` shows, read now.
    pub fn status(&self) -> Status {
        let mut sinks = std::collections::BTreeMap::new();
        if let Some(api) = &self.api {
            sinks.insert("api", serde_json::to_value(api.stats()).unwrap_or_default());
        }
        if let Some(p) = &self.prometheus {
            sinks.insert("prometheus", p.stats());
        }
        if let Some(r) = &self.rca {
            sinks.insert("rca", serde_json::to_value(r.stats()).unwrap_or_default());
        }
        Status {
            version: env!("CARGO_PKG_VERSION"),
            kernel: status::kernel_release(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            bpf_stats_enabled: status::bpf_stats_enabled(),
            probes: self.agent.report().to_vec(),
            maps: self.agent.map_fill(),
            consumers: self.agent.consumers(),
            agent: self.stats(),
            metadata: self.agent.resolver().stats(),
            export: self.exporter.as_ref().map(|e| e.snapshot()),
            sinks,
        }
    }

    fn print_stats(&self) -> Result<(), DaemonError> {
        let format = self.config.agent.output;
        print(format, "agent_stats", &self.stats())?;
        print(format, "metadata_stats", &self.agent.resolver().stats())?;
        if let Some(e) = &self.exporter {
            print(format, "export_stats", &e.snapshot())?;
        }
        if let Some(r) = &self.rca {
            print(format, "rca_stats", &r.stats())?;
        }
        Ok(())
    }

    /// Detaches the probes, lets the printer finish and gives the exporter its flush
    /// deadline; prints the final counters.
    pub async fn stop(mut self) -> Result<(), DaemonError> {
        let format = self.config.agent.output;
        if let Some(p) = self.prometheus.take() {
            // First: the run loop that answers its status requests is gone.
            p.stop().await;
        }
        let final_stats = self.stats();
        if let Some(e) = &self.exporter {
            e.set_agent_stats(final_stats);
        }
        let metadata = self.agent.resolver();
        let mut stats = self.agent.stop().await;
        stats.config = self.reloads.clone();
        // The rings are drained: the RCA sink folds what is left, closes its incidents
        // with a final record and lets go of the stream, which then closes.
        let rca = match self.rca.take() {
            Some(r) => Some(r.stop().await),
            None => None,
        };
        if let Some(printer) = self.printer.take() {
            // The agent's channel is closed now; the printer finishes what it has.
            let _ = tokio::task::spawn_blocking(move || printer.join()).await;
        }
        if let Some(api) = self.api.take() {
            // Clients get what they hold and the end notice, within a bound.
            api.stop(crate::api::server::STOP_GRACE).await;
        }
        print(format, "agent_stats", &stats)?;
        print(format, "metadata_stats", &metadata.stats())?;
        if let Some(r) = &rca {
            print(format, "rca_stats", r)?;
        }
        if let Some(e) = self.exporter.take() {
            let snapshot = e.stop(self.config.export.flush_timeout).await;
            print(format, "export_stats", &snapshot)?;
        }
        Ok(())
    }
}

/// Runs until SIGINT or SIGTERM (or `duration`), reloading on file changes and SIGHUP.
pub async fn run(source: Source, duration: Option<Duration>) -> Result<(), DaemonError> {
    let loaded = source.load()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DaemonError::NotRoot);
    }
    // Signals first: a stop requested while the probes load is not lost, and a SIGINT
    // inherited as ignored (a script's background job) is ours again.
    let mut signals = Signals::new()?;
    let (status_handle, mut status_requests) = status::channel();
    let mut running = Running::start(loaded, status_handle)?;
    let mut watcher = match &source.file {
        Some(path) => Some(watch::FileWatch::new(path).map_err(DaemonError::Watch)?),
        None => None,
    };
    let stop_at = duration.map(|d| tokio::time::Instant::now() + d);
    let mut stats_tick = interval(running.config.agent.stats_interval);
    loop {
        let stats_on = !running.config.agent.stats_interval.is_zero();
        tokio::select! {
            _ = sleep_until(stop_at) => break,
            signal = signals.next() => match signal {
                Wanted::Stop => break,
                Wanted::Reload => running.reload(&source, true).await?,
            },
            _ = changed(&mut watcher) => {
                running.reload(&source, false).await?;
            }
            _ = stats_tick.tick(), if stats_on => running.print_stats()?,
            // A sink asked for the status (an API client, the exporter's self-metrics).
            reply = status_requests.next() => {
                let _ = reply.send(running.status());
            }
        }
        // Intervals the last reload changed.
        if stats_tick.period() != period(running.config.agent.stats_interval) {
            stats_tick = interval(running.config.agent.stats_interval);
        }
    }
    running.stop().await
}

fn period(d: Duration) -> Duration {
    d.max(Duration::from_millis(100))
}

/// A ticker whose first tick is one period from now.
fn interval(d: Duration) -> tokio::time::Interval {
    let p = period(d);
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn changed(watcher: &mut Option<watch::FileWatch>) {
    match watcher {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// SIGINT and SIGTERM stop the agent; SIGHUP reloads its configuration.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Wanted {
        tokio::select! {
            _ = self.int.recv() => Wanted::Stop,
            _ = self.term.recv() => Wanted::Stop,
            _ = self.hup.recv() => Wanted::Reload,
        }
    }
}

enum Wanted {
    Stop,
    Reload,
}

pub(crate) fn print<T: Serialize + std::fmt::Display>(
    format: OutputFormat,
    kind: &str,
    value: &T,
) -> Result<(), std::io::Error> {
    match format {
        OutputFormat::Json => print_tagged(kind, value),
        _ => {
            eprintln!("{value}");
            Ok(())
        }
    }
}

pub(crate) fn print_tagged(kind: &str, value: &impl Serialize) -> Result<(), std::io::Error> {
    let line = serde_json::to_string(&Tagged { kind, value }).map_err(std::io::Error::other)?;
    println!("{line}");
    Ok(())
}
