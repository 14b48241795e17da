//! Ring-buffer consumption on tokio. The probes wake us only when enough data is pending
//! (see probes/src/ring.rs), so we also drain on a short timer: a lone event waits at
//! most one `poll_interval`, and a burst is drained as soon as it crosses the threshold.
//! A [`Consumer`] hears of every record, then of the end of each drain, so that it can
//! hand a drain's records on together (one wakeup of the readers per batch, not one per
//! record).

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::watch,
};

/// What a ring's records go to.
pub trait Consumer: Send {
    fn record(&mut self, bytes: &[u8]);
    /// A drain begins (called before its first record).
    fn draining(&mut self) {}
    /// The ring is empty for now (called after every drain).
    fn drained(&mut self) {}
    /// What makes the ring be drained at once, besides its wakeups and timer.
    fn drain_now(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

impl<F: FnMut(&[u8]) + Send> Consumer for F {
    fn record(&mut self, bytes: &[u8]) {
        self(bytes)
    }
}

/// Feeds every record of `ring` to `on_record` until `shutdown` turns true, then drains
/// what is left once more.
pub async fn consume(
    ring: RingBuf<MapData>,
    poll_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut on_record: impl Consumer,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map fd and never swaps it; the AsyncFd owns the
    // RingBuf, so the fd stays open and the same for the AsyncFd's whole life.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut tick = tokio::time::interval(poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let drain_now = on_record.drain_now();
    let asked = || async {
        match &drain_now {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut on_record);
                guard.clear_ready();
            }
            _ = tick.tick() => drain(fd.get_mut(), &mut on_record),
            _ = asked() => drain(fd.get_mut(), &mut on_record),
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    drain(fd.get_mut(), &mut on_record);
                    return Ok(());
                }
            }
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, on_record: &mut impl Consumer) {
    on_record.draining();
    while let Some(item) = ring.next() {
        on_record.record(&item);
    }
    on_record.drained();
}
