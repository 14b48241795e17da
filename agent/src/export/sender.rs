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
    queue::{Queue, QueueError},
    retry,
    transport::Transport,
    Shared,
};

/// The sender's part of a new configuration.
pub(super) struct Update {
    pub transport: Transport,
    pub max_retry: Duration,
    pub disk_queue: Option<PathBuf>,
    pub queue_bytes: usize,
    pub disk_queue_bytes: u64,
    /// Told once applied, or why the queue could not be moved (nothing changed then).
    pub done: oneshot::Sender<Result<(), QueueError>>,
}

pub(super) struct Sender {
    pub transport: Transport,
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
    Reconfigure(Update),
    Stop,
}

impl Sender {
    pub async fn run(mut self) {
        'requests: loop {
            let stopping = *self.stop.borrow();
            if stopping.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let Some(batch) = self.queue.front() else {
                if stopping.is_some() {
                    // Everything was delivered before the deadline.
                    return;
                }
                let wake = tokio::select! {
                    _ = self.queue.notify.notified() => Wake::Done(()),
                    u = self.ctl.recv() => u.map_or(Wake::Stop, Wake::Reconfigure),
                    changed = self.stop.changed() => match changed {
                        Ok(()) => Wake::Done(()),
                        Err(_) => Wake::Stop,
                    },
                };
                match wake {
                    Wake::Done(()) => {}
                    Wake::Reconfigure(u) => self.apply(u),
                    Wake::Stop => return,
                }
                continue;
            };
            let signal = batch.signal.as_str();
            let first = Instant::now();
            let mut attempt = 0u32;
            loop {
                let wake = tokio::select! {
                    r = self.transport.send(batch.signal, &batch.payload) => Wake::Done(r),
                    u = self.ctl.recv() => u.map_or(Wake::Stop, Wake::Reconfigure),
                    _ = deadline(&mut self.stop) => Wake::Stop,
                };
                let (result, wire) = match wake {
                    Wake::Done(r) => r,
                    // Abandoned in flight: the request is still the queue's front.
                    Wake::Reconfigure(u) => {
                        self.apply(u);
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
                        break;
                    }
                    Err(e)
                        if e.retryable
                            && (self.queue.is_disk() || first.elapsed() < self.max_retry) =>
                    {
                        self.shared.retries.fetch_add(1, Ordering::Relaxed);
                        let wait = retry::delay(attempt, e.retry_after);
                        attempt = attempt.saturating_add(1);
                        let wake = tokio::select! {
                            _ = tokio::time::sleep(wait) => Wake::Done(()),
                            u = self.ctl.recv() => u.map_or(Wake::Stop, Wake::Reconfigure),
                            _ = deadline(&mut self.stop) => Wake::Stop,
                        };
                        match wake {
                            Wake::Done(()) => {}
                            Wake::Reconfigure(u) => {
                                self.apply(u);
                                continue 'requests;
                            }
                            Wake::Stop => return,
                        }
                    }
                    Err(e) => {
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
                self.max_retry = u.max_retry;
                let _ = u.done.send(Ok(()));
            }
            Err(e) => {
                let _ = u.done.send(Err(e));
            }
        }
    }
}
