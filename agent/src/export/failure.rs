//! Why items pile up: the last export failure (kept in the snapshot, so `hostscope run`'s
//! stats and the JSON output say it) and a rate-limited line on stderr while a backend
//! keeps failing, so an operator sees the endpoint and the reason without a log flood.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::Signal;

/// At most one stderr line per signal in this time.
pub const WARN_EVERY: Duration = Duration::from_secs(30);

/// The last failed attempt to send a request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExportFailure {
    pub signal: &'static str,
    pub endpoint: String,
    /// Short, stable label (`connect`, `timeout`, `http_503`, `grpc_unavailable`, …).
    pub kind: String,
    /// What the transport said (e.g. `… Connection refused (os error 111)`).
    pub message: String,
    /// Retried (the request stays queued) or given up on.
    pub retryable: bool,
    /// When it happened, Unix seconds.
    pub at_unix_s: u64,
}

impl std::fmt::Display for ExportFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} to {}: {}: {}",
            self.signal, self.endpoint, self.kind, self.message
        )
    }
}

/// Decides when a failure earns a stderr line: the first of an outage at once, then at
/// most one per [`WARN_EVERY`] per signal, saying how many were not printed.
#[derive(Default)]
pub struct Warnings {
    /// Per signal: when the last line was printed, and failures since then.
    last: [Option<Instant>; 3],
    quiet: [u64; 3],
}

fn index(signal: Signal) -> usize {
    match signal {
        Signal::Metrics => 0,
        Signal::Traces => 1,
        Signal::Logs => 2,
    }
}

impl Warnings {
    /// `Some(failures not printed since the last line)` when this one is to be printed.
    pub fn due(&mut self, signal: Signal, now: Instant) -> Option<u64> {
        let i = index(signal);
        match self.last[i] {
            Some(at) if now.duration_since(at) < WARN_EVERY => {
                self.quiet[i] += 1;
                None
            }
            _ => {
                self.last[i] = Some(now);
                Some(std::mem::take(&mut self.quiet[i]))
            }
        }
    }

    /// A request of `signal` went through: the next failure is news again.
    pub fn recovered(&mut self, signal: Signal) -> bool {
        let i = index(signal);
        self.quiet[i] = 0;
        self.last[i].take().is_some()
    }
}

/// The stderr line for a failure, with what is waiting behind it.
pub fn line(f: &ExportFailure, queued: (usize, u64), unprinted: u64) -> String {
    let what = if f.retryable {
        "retrying"
    } else {
        "request dropped"
    };
    let mut s = format!(
        "hostscope: OTLP {} export to {} failing ({what}): {}: {}; queued: {} requests, {} bytes",
        f.signal, f.endpoint, f.kind, f.message, queued.0, queued.1
    );
    if unprinted > 0 {
        s.push_str(&format!(
            " ({unprinted} more failures since the last message)"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_signal_per_period_counting_the_quiet_ones() {
        let mut w = Warnings::default();
        let t0 = Instant::now();
        assert_eq!(w.due(Signal::Traces, t0), Some(0));
        assert_eq!(w.due(Signal::Traces, t0 + Duration::from_secs(1)), None);
        assert_eq!(w.due(Signal::Traces, t0 + Duration::from_secs(2)), None);
        // Another signal has its own budget.
        assert_eq!(w.due(Signal::Logs, t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(w.due(Signal::Traces, t0 + WARN_EVERY), Some(2));
        // After a success the next failure is printed at once.
        assert!(w.recovered(Signal::Traces));
        assert_eq!(
            w.due(Signal::Traces, t0 + WARN_EVERY + Duration::from_secs(1)),
            Some(0)
        );
        let f = ExportFailure {
            signal: "traces",
            endpoint: "http://127.0.0.1:4317/".into(),
            kind: "grpc_unavailable".into(),
            message: "tcp connect error: Connection refused".into(),
            retryable: true,
            at_unix_s: 0,
        };
        let l = line(&f, (3, 1200), 2);
        assert!(l.contains("http://127.0.0.1:4317/"), "{l}");
        assert!(l.contains("Connection refused"), "{l}");
        assert!(l.contains("3 requests, 1200 bytes"), "{l}");
        assert!(l.contains("2 more failures"), "{l}");
    }
}
