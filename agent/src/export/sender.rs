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

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{queue::Queue, retry, transport::Transport, Shared};

pub(super) struct Sender {
    pub transport: Transport,
    pub max_retry: Duration,
    pub queue: Arc<Queue>,
    pub shared: Arc<Shared>,
    /// Set once, by `Exporter::stop`: give up at this instant.
    pub stop: watch::Receiver<Option<Instant>>,
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

impl Sender {
    pub async fn run(mut self) {
        let disk = self.queue.is_disk();
        loop {
            let stopping = *self.stop.borrow();
            if stopping.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let Some(batch) = self.queue.front() else {
                if stopping.is_some() {
                    // Everything was delivered before the deadline.
                    return;
                }
                tokio::select! {
                    _ = self.queue.notify.notified() => {}
                    changed = self.stop.changed() => if changed.is_err() { return },
                }
                continue;
            };
            let signal = batch.signal.as_str();
            let first = Instant::now();
            let mut attempt = 0u32;
            loop {
                let (result, wire) = tokio::select! {
                    r = self.transport.send(batch.signal, &batch.payload) => r,
                    // Abandoned in flight: the request is still the queue's front.
                    _ = deadline(&mut self.stop) => return,
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
                    Err(e) if e.retryable && (disk || first.elapsed() < self.max_retry) => {
                        self.shared.retries.fetch_add(1, Ordering::Relaxed);
                        let wait = retry::delay(attempt, e.retry_after);
                        attempt = attempt.saturating_add(1);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = deadline(&mut self.stop) => return,
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
}
