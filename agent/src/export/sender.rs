//! The sender task: one request in flight, oldest first (order is kept, and with the disk
//! queue an outage replays in order). A retryable failure is retried with backoff (memory
//! queue: for up to `max_retry`; disk queue: until delivered, the disk bound protecting the
//! node); a non-retryable one drops the request, counted.
//!
//! Stopping: `Exporter::stop` sets a deadline. Everything the sender awaits (a request in
//! flight, a connect, a backoff sleep) is raced against it, so the deadline holds whatever
//! the transport is doing. The request in flight when it passes is abandoned but stays at
//! the front of the queue: a memory queue's leftovers are then counted as dropped
//! (`shutdown`), a disk queue keeps them for the next start (at-least-once: a request the
//! backend had taken without answering yet is sent again).
//!
//! Reconfiguring: an [`Update`] is raced the same way. It is applied between two requests
//! (the one in flight is abandoned, still at the front of the queue), so the queue can be
//! moved and the transport replaced without the sender holding a request of the old one;
//! the abandoned request then goes to the new endpoint with a fresh backoff.

use std::{
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    config::Endpoints,
    failure::{self, ExportFailure, Warnings},
    queue::{Queue, QueueError},
    retry,
    transport::{SendError, Transport},
    Shared, Signal,
};

/// The sender's part of a new configuration.
pub(super) struct Update {
    pub transport: Transport,
    pub endpoints: Endpoints,
    pub max_retry: Duration,
    pub disk_queue: Option<PathBuf>,
    pub queue_bytes: usize,
    pub disk_queue_bytes: u64,
    /// Told once applied, or why the queue could not be moved (nothing changed then).
    pub done: oneshot::Sender<Result<(), QueueError>>,
}

pub(super) struct Sender {
    pub transport: Transport,
    /// For failure reports.
    pub endpoints: Endpoints,
    pub warnings: Warnings,
    pub max_retry: Duration,
    pub queue: Arc<Queue>,
    pub shared: Arc<Shared>,
    /// Set once, by `Exporter::stop`: give up at this instant.
    pub stop: watch::Receiver<Option<Instant>>,
    pub ctl: mpsc::Receiver<Update>,
}

/// Resolves when the stop deadline is set and has passed, or when the exporter is gone
/// (its `Exporter` dropped without `stop`): both mean "stop sending now".
async fn deadline(stop: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let at = *stop.borrow_and_update();
        if let Some(at) = at {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// What interrupted a wait (a request in flight, a backoff, an empty queue).
enum Wake<T> {
    Done(T),
    Reconfigure(Box<Update>),
    Stop,
}

impl Sender {
    pub async fn run(mut self) {
        'requests: loop {
            let stopping = *self.stop.borrow();
            if stopping.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let front = self.queue.front();
            self.report_corrupt();
            let Some(batch) = front else {
                if stopping.is_some() {
                    // Everything was delivered before the deadline.
                    return;
                }
                let wake = tokio::select! {
                    _ = self.queue.notify.notified() => Wake::Done(()),
                    u = self.ctl.recv() => u.map_or(Wake::Stop, |u| Wake::Reconfigure(Box::new(u))),
                    changed = self.stop.changed() => match changed {
                        Ok(()) => Wake::Done(()),
                        Err(_) => Wake::Stop,
                    },
                };
                match wake {
                    Wake::Done(()) => {}
                    Wake::Reconfigure(u) => self.apply(*u),
                    Wake::Stop => return,
                }
                continue;
            };
            let signal = batch.signal.as_str();
            let first = Instant::now();
            let mut attempt = 0u32;
            loop {
                let wake = tokio::select! {
                    r = self.transport.send(batch.signal, batch.compression, &batch.payload) => Wake::Done(r),
                    u = self.ctl.recv() => u.map_or(Wake::Stop, |u| Wake::Reconfigure(Box::new(u))),
                    _ = deadline(&mut self.stop) => Wake::Stop,
                };
                let (result, wire) = match wake {
                    Wake::Done(r) => r,
                    // Abandoned in flight: the request is still the queue's front.
                    Wake::Reconfigure(u) => {
                        self.apply(*u);
                        continue 'requests;
                    }
                    Wake::Stop => return,
                };
                match result {
                    Ok(accepted) => {
                        self.shared.requests_sent.fetch_add(1, Ordering::Relaxed);
                        self.shared.bytes_sent.fetch_add(wire, Ordering::Relaxed);
                        let rejected = (accepted.rejected as u64).min(batch.items);
                        self.shared
                            .count(signal, "sent", "", batch.items - rejected);
                        self.shared
                            .count(signal, "rejected", "partial_success", rejected);
                        self.queue.done();
                        if self.warnings.recovered(batch.signal) {
                            eprintln!(
                                "hostscope: OTLP {signal} export to {} recovered",
                                self.endpoint(batch.signal)
                            );
                        }
                        break;
                    }
                    Err(e)
                        if e.retryable
                            && (self.queue.is_disk() || first.elapsed() < self.max_retry) =>
                    {
                        self.failed(batch.signal, &e, true);
                        self.shared.retries.fetch_add(1, Ordering::Relaxed);
                        let wait = retry::delay(attempt, e.retry_after);
                        attempt = attempt.saturating_add(1);
                        let wake = tokio::select! {
                            _ = tokio::time::sleep(wait) => Wake::Done(()),
                            u = self.ctl.recv() => u.map_or(Wake::Stop, |u| Wake::Reconfigure(Box::new(u))),
                            _ = deadline(&mut self.stop) => Wake::Stop,
                        };
                        match wake {
                            Wake::Done(()) => {}
                            Wake::Reconfigure(u) => {
                                self.apply(*u);
                                continue 'requests;
                            }
                            Wake::Stop => return,
                        }
                    }
                    Err(e) => {
                        self.failed(batch.signal, &e, false);
                        let reason = if e.retryable {
                            format!("{}_retries_exhausted", e.kind)
                        } else {
                            e.kind.clone()
                        };
                        self.shared.count(signal, "failed", &reason, batch.items);
                        self.queue.done();
                        break;
                    }
                }
            }
        }
    }

    fn endpoint(&self, signal: Signal) -> &reqwest::Url {
        match signal {
            Signal::Metrics => &self.endpoints.metrics,
            Signal::Traces => &self.endpoints.traces,
            Signal::Logs => &self.endpoints.logs,
        }
    }

    /// Disk queue files that did not load: named on stderr (each once) and counted as
    /// dropped with reason `corrupt`.
    fn report_corrupt(&self) {
        for c in self.queue.take_corrupt() {
            eprintln!(
                "hostscope: OTLP disk queue: {} ({} {}) is corrupt, set aside: {}",
                c.path.display(),
                c.items,
                c.signal.as_str(),
                c.why
            );
            self.shared
                .count(c.signal.as_str(), "dropped", "corrupt", c.items);
        }
    }

    /// Keeps the failure as the last one and says it on stderr, rate-limited.
    fn failed(&mut self, signal: Signal, e: &SendError, retrying: bool) {
        let f = ExportFailure {
            signal: signal.as_str(),
            endpoint: self.endpoint(signal).to_string(),
            kind: e.kind.clone(),
            message: e.message.clone(),
            retryable: retrying,
            at_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        if let Some(unprinted) = self.warnings.due(signal, Instant::now()) {
            eprintln!("{}", failure::line(&f, self.queue.len(), unprinted));
        }
        *self
            .shared
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// Moves the queue if its kind or directory changed, then takes the new transport.
    fn apply(&mut self, u: Update) {
        match self
            .queue
            .reconfigure(u.disk_queue.as_deref(), u.queue_bytes, u.disk_queue_bytes)
        {
            Ok(refused) => {
                for (b, full) in refused {
                    self.shared
                        .count(b.signal.as_str(), "dropped", full.reason(), b.items);
                }
                self.transport = u.transport;
                self.endpoints = u.endpoints;
                self.max_retry = u.max_retry;
                let _ = u.done.send(Ok(()));
            }
            Err(e) => {
                let _ = u.done.send(Err(e));
            }
        }
    }
}
