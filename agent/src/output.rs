//! The built-in sink: records printed live, as readable lines or JSON lines.

use std::{
    io::Write,
    sync::{atomic::Ordering, Arc},
};

use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::{agent::SharedRecord, stats::Counters};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    /// Print nothing per record (benchmarks, or when only the stats matter).
    None,
}

/// Prints records on a dedicated thread until the channel closes or stdout goes away
/// (e.g. `| head`). Missed records are counted, never silently skipped.
pub fn spawn_printer(
    mut rx: broadcast::Receiver<SharedRecord>,
    format: OutputFormat,
    counters: Arc<Counters>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // Not `stdout.lock()` for the thread's life: `run` prints its stats lines on
        // stdout too (JSON), and would block on the lock forever. Whole lines are
        // written at once so the two never interleave within a line.
        let mut out = std::io::BufWriter::new(std::io::stdout());
        let mut line = Vec::with_capacity(512);
        loop {
            let record = match rx.blocking_recv() {
                Ok(r) => r,
                Err(RecvError::Lagged(n)) => {
                    counters.records_lagged.fetch_add(n, Ordering::Relaxed);
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            line.clear();
            let formatted = match format {
                OutputFormat::Text => writeln!(line, "{record}"),
                OutputFormat::Json => write_json(&mut line, &*record),
                OutputFormat::None => Ok(()),
            };
            let written = formatted.and_then(|_| out.write_all(&line));
            let flushed = if rx.is_empty() { out.flush() } else { Ok(()) };
            if written.and(flushed).is_err() {
                break;
            }
        }
        let _ = out.flush();
    })
}

pub fn write_json(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// A JSON line with a `type` tag for values that are not records (status, stats).
#[derive(Serialize)]
pub struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(flatten)]
    pub value: &'a T,
}
