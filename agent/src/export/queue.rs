//! The export queue: encoded requests waiting to be sent, in order. In memory it is bounded
//! by bytes; with a directory it is on disk (one file per request, named by sequence
//! number) so an outage, or a restart during one, loses nothing up to the disk bound.
//! Either way a request that does not fit is dropped and counted by the caller.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::Signal;

#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub signal: Signal,
    /// Data points, spans or log records in the request.
    pub items: u64,
    /// The encoded Export*ServiceRequest.
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("disk queue {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    Memory,
    Disk,
    /// The disk write failed (counted as a drop with this reason).
    DiskError,
}

impl Full {
    /// The drop reason counted for it.
    pub fn reason(&self) -> &'static str {
        match self {
            Full::Memory => "queue_full",
            Full::Disk => "disk_queue_full",
            Full::DiskError => "disk_queue_error",
        }
    }
}

struct Disk {
    dir: PathBuf,
    limit: u64,
    bytes: u64,
    /// Sequence numbers on disk, oldest first.
    files: VecDeque<(u64, Signal, u64, u64)>,
    next_seq: u64,
    /// Set aside since the last [`Queue::take_corrupt`].
    corrupt: Vec<Corrupt>,
}

/// A queued request file that cannot be read or decoded (a disk error, a file truncated
/// or overwritten outside the agent): renamed to `<name>.corrupt` so that it is neither
/// retried forever nor lost without a trace.
#[derive(Debug, PartialEq)]
pub struct Corrupt {
    /// Where it is now (`….pb.corrupt`).
    pub path: PathBuf,
    pub signal: Signal,
    pub items: u64,
    pub why: String,
}

/// A request file's payload, if it is an Export*ServiceRequest of its signal.
fn load(path: &Path, signal: Signal) -> Result<Vec<u8>, String> {
    use opentelemetry_proto::tonic::collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    };
    use prost::Message;
    let payload = std::fs::read(path).map_err(|e| e.to_string())?;
    let decoded = match signal {
        Signal::Metrics => ExportMetricsServiceRequest::decode(payload.as_slice()).map(drop),
        Signal::Traces => ExportTraceServiceRequest::decode(payload.as_slice()).map(drop),
        Signal::Logs => ExportLogsServiceRequest::decode(payload.as_slice()).map(drop),
    };
    decoded.map_err(|e| format!("not an OTLP {} request: {e}", signal.as_str()))?;
    Ok(payload)
}

impl Disk {
    /// The oldest request that loads; those that do not are set aside on the way.
    fn front(&mut self) -> Option<Batch> {
        while let Some(&(seq, signal, items, len)) = self.files.front() {
            let path = self.dir.join(file_name(seq, signal, items));
            match load(&path, signal) {
                Ok(payload) => {
                    return Some(Batch {
                        signal,
                        items,
                        payload,
                    })
                }
                Err(why) => {
                    let aside = path.with_extension("pb.corrupt");
                    if std::fs::rename(&path, &aside).is_err() {
                        // Cannot even be moved: removed, so it is not met again.
                        let _ = std::fs::remove_file(&path);
                    }
                    self.files.pop_front();
                    self.bytes -= len;
                    self.corrupt.push(Corrupt {
                        path: aside,
                        signal,
                        items,
                        why,
                    });
                }
            }
        }
        None
    }
}

enum Store {
    Memory {
        items: VecDeque<Batch>,
        bytes: usize,
        limit: usize,
    },
    Disk(Disk),
}

impl Store {
    fn push(&mut self, batch: Batch) -> Result<(), Full> {
        match self {
            Store::Memory {
                items,
                bytes,
                limit,
            } => {
                if *bytes + batch.payload.len() > *limit {
                    return Err(Full::Memory);
                }
                *bytes += batch.payload.len();
                items.push_back(batch);
            }
            Store::Disk(d) => {
                let len = batch.payload.len() as u64;
                if d.bytes + len > d.limit {
                    return Err(Full::Disk);
                }
                let seq = d.next_seq;
                let name = file_name(seq, batch.signal, batch.items);
                let tmp = d.dir.join(format!("{name}.tmp"));
                // Written then renamed: a crash never leaves a half request to replay.
                let written = std::fs::write(&tmp, &batch.payload)
                    .and_then(|_| std::fs::rename(&tmp, d.dir.join(&name)));
                if written.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(Full::DiskError);
                }
                d.next_seq += 1;
                d.bytes += len;
                d.files.push_back((seq, batch.signal, batch.items, len));
            }
        }
        Ok(())
    }
}

pub struct Queue {
    store: Mutex<Store>,
    pub notify: tokio::sync::Notify,
}

/// A directory the agent can read but not write (a read-only mount, one root cannot
/// write either) would drop every request later: refused at start instead, by writing
/// and removing a file (mode bits alone do not tell, root bypasses them).
fn check_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".write-check.{}.tmp", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| std::io::Error::new(e.kind(), format!("not writable: {e}")))?;
    std::fs::remove_file(&probe)
}

fn file_name(seq: u64, signal: Signal, items: u64) -> String {
    format!("{seq:016x}.{}.{items}.pb", signal.as_str())
}

fn parse_name(name: &str) -> Option<(u64, Signal, u64)> {
    let mut parts = name.strip_suffix(".pb")?.split('.');
    let seq = u64::from_str_radix(parts.next()?, 16).ok()?;
    let signal = Signal::parse(parts.next()?)?;
    let items = parts.next()?.parse().ok()?;
    Some((seq, signal, items))
}

impl Queue {
    pub fn memory(limit_bytes: usize) -> Queue {
        Queue {
            store: Mutex::new(Store::Memory {
                items: VecDeque::new(),
                bytes: 0,
                limit: limit_bytes,
            }),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Opens (creating it if needed) a disk queue; requests left by an earlier run are
    /// kept and sent first.
    pub fn disk(dir: &Path, limit_bytes: u64) -> Result<Queue, QueueError> {
        let io = |source| QueueError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        check_writable(dir).map_err(io)?;
        let mut files = Vec::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some((seq, signal, items)) = name.to_str().and_then(parse_name) else {
                // Partial writes (`.tmp`) of a crashed run are not requests.
                continue;
            };
            let len = entry.metadata().map_err(io)?.len();
            bytes += len;
            files.push((seq, signal, items, len));
        }
        files.sort_by_key(|f| f.0);
        let next_seq = files.last().map(|f| f.0 + 1).unwrap_or(0);
        Ok(Queue {
            store: Mutex::new(Store::Disk(Disk {
                dir: dir.to_path_buf(),
                limit: limit_bytes,
                bytes,
                files: files.into(),
                next_seq,
                corrupt: Vec::new(),
            })),
            notify: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, batch: Batch) -> Result<(), Full> {
        self.lock().push(batch)?;
        self.notify.notify_one();
        Ok(())
    }

    /// The oldest request, left in the queue until [`Queue::done`].
    /// Disk: a file that does not load is set aside (see [`Queue::take_corrupt`]).
    pub fn front(&self) -> Option<Batch> {
        let mut store = self.lock();
        match &mut *store {
            Store::Memory { items, .. } => items.front().cloned(),
            Store::Disk(d) => d.front(),
        }
    }

    /// Request files set aside as corrupt since the last call, to be reported and counted.
    pub fn take_corrupt(&self) -> Vec<Corrupt> {
        match &mut *self.lock() {
            Store::Disk(d) => std::mem::take(&mut d.corrupt),
            Store::Memory { .. } => Vec::new(),
        }
    }

    /// Removes the oldest request (sent, or given up on).
    pub fn done(&self) {
        let mut store = self.lock();
        match &mut *store {
            Store::Memory { items, bytes, .. } => {
                if let Some(b) = items.pop_front() {
                    *bytes -= b.payload.len();
                }
            }
            Store::Disk(d) => {
                if let Some((seq, signal, items, len)) = d.files.pop_front() {
                    let _ = std::fs::remove_file(d.dir.join(file_name(seq, signal, items)));
                    d.bytes -= len;
                }
            }
        }
    }

    /// Requests and bytes waiting.
    pub fn len(&self) -> (usize, u64) {
        let store = self.lock();
        match &*store {
            Store::Memory { items, bytes, .. } => (items.len(), *bytes as u64),
            Store::Disk(d) => (d.files.len(), d.bytes),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len().0 == 0
    }

    pub fn is_disk(&self) -> bool {
        matches!(&*self.lock(), Store::Disk(_))
    }

    /// Applies a new queue configuration (`disk`: the directory of a disk queue, `None` for
    /// memory) without losing what is queued. Same kind and directory: only the bound
    /// changes (a lower bound refuses new requests until the queue has drained below it;
    /// nothing queued is dropped for it). Another kind or directory: the queued requests
    /// move, in order, after any that the new directory already held; those that do not
    /// fit the new bound are returned, to be counted as dropped by the caller. Called by
    /// the sender between two requests, so the front it works on is never moved under it.
    pub fn reconfigure(
        &self,
        disk: Option<&Path>,
        memory_limit: usize,
        disk_limit: u64,
    ) -> Result<Vec<(Batch, Full)>, QueueError> {
        let mut store = self.lock();
        match (&mut *store, disk) {
            (Store::Memory { limit, .. }, None) => {
                *limit = memory_limit;
                return Ok(Vec::new());
            }
            (Store::Disk(d), Some(dir)) if d.dir == dir => {
                d.limit = disk_limit;
                return Ok(Vec::new());
            }
            _ => {}
        }
        let new = match disk {
            Some(dir) => Queue::disk(dir, disk_limit)?,
            None => Queue::memory(memory_limit),
        };
        let old = std::mem::replace(&mut *store, new.into_store());
        // Moved under the lock: a request the encoder queues meanwhile goes after them.
        let mut refused = Vec::new();
        for batch in drain_store(old) {
            if let Err(full) = store.push(batch.clone()) {
                refused.push((batch, full));
            }
        }
        drop(store);
        self.notify.notify_one();
        Ok(refused)
    }

    fn into_store(self) -> Store {
        self.store.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// Empties a memory queue, returning what was in it (to be counted as dropped).
    pub fn drain_memory(&self) -> Vec<Batch> {
        let mut store = self.lock();
        match &mut *store {
            Store::Memory { items, bytes, .. } => {
                *bytes = 0;
                items.drain(..).collect()
            }
            Store::Disk(_) => Vec::new(),
        }
    }
}

/// Every request of a store, oldest first; a disk store's files are removed as they are
/// read (one that does not load is set aside as corrupt, and not reported: rare enough
/// on a reconfiguration that its name on disk is the trace).
fn drain_store(store: Store) -> Vec<Batch> {
    match store {
        Store::Memory { items, .. } => items.into(),
        Store::Disk(mut d) => {
            let mut out = Vec::new();
            while let Some(b) = d.front() {
                if let Some((seq, signal, items, _)) = d.files.pop_front() {
                    let _ = std::fs::remove_file(d.dir.join(file_name(seq, signal, items)));
                }
                out.push(b);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 100-byte logs request: one unknown length-delimited field (number 15, 98 bytes
    /// of `n`), which decoding skips.
    fn batch(n: u8) -> Batch {
        let mut payload = vec![(15 << 3) | 2, 98];
        payload.extend([n; 98]);
        Batch {
            signal: Signal::Logs,
            items: n as u64,
            payload,
        }
    }

    #[test]
    fn memory_bound_in_bytes_and_order() {
        let q = Queue::memory(250);
        q.push(batch(1)).unwrap();
        q.push(batch(2)).unwrap();
        assert_eq!(q.push(batch(3)), Err(Full::Memory));
        assert_eq!(q.front().unwrap().items, 1);
        q.done();
        assert_eq!(q.front().unwrap().items, 2);
        assert_eq!(q.len(), (1, 100));
    }

    #[test]
    fn disk_survives_reopen_in_order_and_enforces_its_bound() {
        let dir = std::env::temp_dir().join(format!("hostscope-q-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let q = Queue::disk(&dir, 300).unwrap();
            for n in 1..=3 {
                q.push(batch(n)).unwrap();
            }
            assert_eq!(q.push(batch(4)), Err(Full::Disk));
            q.done();
        }
        std::fs::write(dir.join("junk.tmp"), b"x").unwrap();
        let q = Queue::disk(&dir, 300).unwrap();
        assert_eq!(q.len(), (2, 200));
        assert_eq!(q.front().unwrap(), batch(2));
        q.done();
        q.push(batch(5)).unwrap();
        assert_eq!(q.front().unwrap(), batch(3));
        q.done();
        assert_eq!(q.front().unwrap(), batch(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reconfigure_moves_requests_between_memory_and_disk_in_order() {
        let dir = std::env::temp_dir().join(format!("hostscope-qr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let q = Queue::memory(1000);
        for n in 1..=3 {
            q.push(batch(n)).unwrap();
        }
        // Memory -> disk with room for two: the third is handed back, counted by the caller.
        let refused = q.reconfigure(Some(&dir), 1000, 200).unwrap();
        assert_eq!(refused, vec![(batch(3), Full::Disk)]);
        assert!(q.is_disk());
        assert_eq!(q.len(), (2, 200));
        // Same directory: only the bound changes.
        assert!(q.reconfigure(Some(&dir), 1000, 1000).unwrap().is_empty());
        q.push(batch(4)).unwrap();
        // Disk -> memory: in order, files gone.
        assert!(q.reconfigure(None, 1000, 0).unwrap().is_empty());
        assert!(!q.is_disk());
        for n in [1, 2, 4] {
            assert_eq!(q.front().unwrap(), batch(n));
            q.done();
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_set_aside_and_reported_once() {
        let dir = std::env::temp_dir().join(format!("hostscope-qc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Field 1, length-delimited, with a length far beyond the end: never decodes.
        std::fs::write(
            dir.join(file_name(0, Signal::Traces, 7)),
            [0x0a, 0xff, 0xff, 0x7f],
        )
        .unwrap();
        let q = Queue::disk(&dir, 1000).unwrap();
        let good = Batch {
            signal: Signal::Logs,
            items: 0,
            payload: Vec::new(),
        };
        q.push(good.clone()).unwrap();
        assert_eq!(q.front().unwrap(), good);
        let corrupt = q.take_corrupt();
        assert_eq!(corrupt.len(), 1);
        assert_eq!((corrupt[0].signal, corrupt[0].items), (Signal::Traces, 7));
        assert!(corrupt[0].path.to_string_lossy().ends_with(".pb.corrupt"));
        assert!(corrupt[0].path.exists());
        assert!(q.take_corrupt().is_empty());
        assert_eq!(q.len(), (1, 0));
        // Not picked up again by the next run.
        drop(q);
        assert_eq!(Queue::disk(&dir, 1000).unwrap().len(), (1, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
