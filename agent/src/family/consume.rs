//! The one path from a family's ring to the record stream: take the ring out of the
//! object, read it on tokio, decode each record and publish a drain's records together.

use std::sync::{atomic::Ordering, Arc};

use aya::maps::{MapData, RingBuf};
use tokio::sync::broadcast;

use super::{lock, Start};
use crate::{
    agent::{AgentError, SharedRecord},
    events::{self, Record},
    ring,
    stats::Counters,
};

/// Takes a ring buffer map out of the loaded object.
pub fn take_ring(start: &Start<'_>, name: &'static str) -> Result<RingBuf<MapData>, AgentError> {
    let map = lock(start.ebpf).take_map(name).ok_or(AgentError::Ring {
        name,
        source: aya::maps::MapError::InvalidName {
            name: name.to_string(),
        },
    })?;
    RingBuf::try_from(map).map_err(|source| AgentError::Ring { name, source })
}

/// Starts a reader of ring `name` whose records `decode` turns into records of the stream.
pub fn publish_ring<D>(
    start: &mut Start<'_>,
    name: &'static str,
    decode: D,
) -> Result<(), AgentError>
where
    D: FnMut(&[u8]) -> Result<Record, events::DecodeError> + Send + 'static,
{
    read_ring(
        start,
        name,
        Publisher::new(start.records.clone(), start.counters.clone(), decode),
    )
}

/// Starts a reader of ring `name` with a consumer of its own (one that feeds a tracker).
pub fn read_ring<C>(
    start: &mut Start<'_>,
    name: &'static str,
    consumer: C,
) -> Result<(), AgentError>
where
    C: ring::Consumer + Send + 'static,
{
    let ring = take_ring(start, name)?;
    start.consumers.push(tokio::spawn(ring::consume(
        ring,
        start.poll_interval,
        start.shutdown.clone(),
        consumer,
    )));
    Ok(())
}

/// Records decoded per batch at most before they are put on the stream.
const PUBLISH_BATCH: usize = 256;

/// A ring's consumer that decodes each record and puts a drain's records on the stream
/// together: sinks that keep up record by record would otherwise be woken for each one.
struct Publisher<D> {
    decode: D,
    tx: broadcast::Sender<SharedRecord>,
    counters: Arc<Counters>,
    batch: Vec<SharedRecord>,
}

impl<D> Publisher<D>
where
    D: FnMut(&[u8]) -> Result<Record, events::DecodeError> + Send,
{
    fn new(tx: broadcast::Sender<SharedRecord>, counters: Arc<Counters>, decode: D) -> Self {
        Publisher {
            decode,
            tx,
            counters,
            batch: Vec::with_capacity(PUBLISH_BATCH),
        }
    }

    fn publish(&mut self) {
        self.counters
            .records_decoded
            .fetch_add(self.batch.len() as u64, Ordering::Relaxed);
        for r in self.batch.drain(..) {
            // No subscriber is not an error: records are simply not shown.
            let _ = self.tx.send(r);
        }
    }
}

impl<D> ring::Consumer for Publisher<D>
where
    D: FnMut(&[u8]) -> Result<Record, events::DecodeError> + Send,
{
    fn record(&mut self, bytes: &[u8]) {
        match (self.decode)(bytes) {
            Ok(r) => {
                self.batch.push(Arc::new(r));
                if self.batch.len() >= PUBLISH_BATCH {
                    self.publish();
                }
            }
            Err(_) => {
                self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn drained(&mut self) {
        self.publish();
    }
}
