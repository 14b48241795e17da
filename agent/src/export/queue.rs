//! The export queue: encoded requests waiting to be sent, in order, stored compressed
//! ([`super::compress`]). In memory it is bounded by bytes; with a directory it is on disk
//! (one file per request, named by sequence number) so an outage, or a restart during one,
//! loses nothing up to the disk bound. Bounds count the stored (compressed) bytes. Either
//! way a request that does not fit is dropped and counted by the caller.
//!
//! A file's name says how it is encoded: `<seq>.<signal>.<items>.pb` plain protobuf (what
//! versions before compressed storage wrote, still read after an upgrade), `….pb.gz`
//! gzip, `….pb.zst` zstd.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::{compress, config::Compression, Signal};

#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub signal: Signal,
    /// Data points, spans or log records in the request.
    pub items: u64,
    /// How `payload` is encoded.
    pub compression: Compression,
    /// The encoded Export*ServiceRequest, compressed as `compression` says.
    pub payload: Vec<u8>,
}

impl Batch {
    /// A request stored for a wire with `wire` compression ([`compress::stored`]).
    pub fn new(signal: Signal, items: u64, plain: &[u8], wire: Compression) -> Batch {
        let (compression, payload) =
            compress::compress(compress::stored(wire), plain, wire == Compression::None);
        Batch {
            signal,
            items,
            compression,
            payload,
        }
    }
}

/// What a queued file holds: its sequence number, signal, items, encoding and size.
#[derive(Clone, Copy)]
struct Entry {
    seq: u64,
    signal: Signal,
    items: u64,
    compression: Compression,
    len: u64,
}

impl Entry {
    fn name(&self) -> String {
        file_name(self.seq, self.signal, self.items, self.compression)
    }
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
    /// The files on disk, oldest first.
    files: VecDeque<Entry>,
    next_seq: u64,
    /// Set aside since the last [`Queue::take_corrupt`].
    corrupt: Vec<Corrupt>,
}

/// A queued request file that cannot be read or decoded (a disk error, a file truncated
/// or overwritten outside the agent): renamed to `<name>.corrupt` so that it is neither
/// retried forever nor lost without a trace.
#[derive(Debug, PartialEq)]
pub struct Corrupt {
    /// Where it is now (its name followed by `.corrupt`).
    pub path: PathBuf,
    pub signal: Signal,
    pub items: u64,
    pub why: String,
}

/// A request file's stored bytes, if they decompress (as its name says) into an
/// Export*ServiceRequest of its signal.
fn load(path: &Path, signal: Signal, compression: Compression) -> Result<Vec<u8>, String> {
    use opentelemetry_proto::tonic::collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    };
    use prost::Message;
    let stored = std::fs::read(path).map_err(|e| e.to_string())?;
    let plain = compress::decompress(compression, &stored)?;
    let decoded = match signal {
        Signal::Metrics => ExportMetricsServiceRequest::decode(plain.as_slice()).map(drop),
        Signal::Traces => ExportTraceServiceRequest::decode(plain.as_slice()).map(drop),
        Signal::Logs => ExportLogsServiceRequest::decode(plain.as_slice()).map(drop),
    };
    decoded.map_err(|e| format!("not an OTLP {} request: {e}", signal.as_str()))?;
    Ok(stored)
}

impl Disk {
    /// The oldest request that loads; those that do not are set aside on the way.
    fn front(&mut self) -> Option<Batch> {
        while let Some(&e) = self.files.front() {
            let name = e.name();
            let path = self.dir.join(&name);
            match load(&path, e.signal, e.compression) {
                Ok(payload) => {
                    return Some(Batch {
                        signal: e.signal,
                        items: e.items,
                        compression: e.compression,
                        payload,
                    })
                }
                Err(why) => {
                    let aside = self.dir.join(format!("{name}.corrupt"));
                    if std::fs::rename(&path, &aside).is_err() {
                        // Cannot even be moved: removed, so it is not met again.
                        let _ = std::fs::remove_file(&path);
                    }
                    self.files.pop_front();
                    self.bytes -= e.len;
                    self.corrupt.push(Corrupt {
                        path: aside,
                        signal: e.signal,
                        items: e.items,
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
                let entry = Entry {
                    seq: d.next_seq,
                    signal: batch.signal,
                    items: batch.items,
                    compression: batch.compression,
                    len,
                };
                let name = entry.name();
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
                d.files.push_back(entry);
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

/// The name's ending for each encoding (plain: the format of versions before compression).
fn suffix(compression: Compression) -> &'static str {
    match compression {
        Compression::None => ".pb",
        Compression::Gzip => ".pb.gz",
        Compression::Zstd => ".pb.zst",
    }
}

fn file_name(seq: u64, signal: Signal, items: u64, compression: Compression) -> String {
    format!(
        "{seq:016x}.{}.{items}{}",
        signal.as_str(),
        suffix(compression)
    )
}

fn parse_name(name: &str) -> Option<(u64, Signal, u64, Compression)> {
    let (rest, compression) = [Compression::None, Compression::Gzip, Compression::Zstd]
        .into_iter()
        .find_map(|c| Some((name.strip_suffix(suffix(c))?, c)))?;
    let mut parts = rest.split('.');
    let seq = u64::from_str_radix(parts.next()?, 16).ok()?;
    let signal = Signal::parse(parts.next()?)?;
    let items = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((seq, signal, items, compression))
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
            let Some((seq, signal, items, compression)) = name.to_str().and_then(parse_name) else {
                // Partial writes (`.tmp`) of a crashed run are not requests.
                continue;
            };
            let len = entry.metadata().map_err(io)?.len();
            bytes += len;
            files.push(Entry {
                seq,
                signal,
                items,
                compression,
                len,
            });
        }
        files.sort_by_key(|f| f.seq);
        let next_seq = files.last().map(|f| f.seq + 1).unwrap_or(0);
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
                if let Some(e) = d.files.pop_front() {
                    let _ = std::fs::remove_file(d.dir.join(e.name()));
                    d.bytes -= e.len;
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
                if let Some(e) = d.files.pop_front() {
                    let _ = std::fs::remove_file(d.dir.join(e.name()));
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
    fn plain(n: u8) -> Vec<u8> {
        let mut payload = vec![(15 << 3) | 2, 98];
        payload.extend([n; 98]);
        payload
    }

    /// [`plain`] stored uncompressed, so that sizes are round.
    fn batch(n: u8) -> Batch {
        Batch {
            signal: Signal::Logs,
            items: n as u64,
            compression: Compression::None,
            payload: plain(n),
        }
    }

    /// A real, compressible logs request of `n` records (the same attributes in each,
    /// as in an outage of refused connects).
    fn logs_request(n: usize) -> Vec<u8> {
        use opentelemetry_proto::tonic::{
            collector::logs::v1::ExportLogsServiceRequest,
            common::v1::{any_value::Value, AnyValue, KeyValue},
            logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
        };
        use prost::Message;
        let kv = |k: &str, v: String| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v)),
            }),
            ..Default::default()
        };
        let log_records = (0..n)
            .map(|i| LogRecord {
                time_unix_nano: 1_700_000_000_000_000_000 + i as u64 * 500_000,
                body: Some(AnyValue {
                    value: Some(Value::StringValue("connect refused".into())),
                }),
                attributes: vec![
                    kv("network.peer.address", "10.1.0.2".into()),
                    kv("network.peer.port", format!("{}", 1 + i % 200)),
                    kv("error.type", "refused".into()),
                    kv("process.pid", format!("{}", 1000 + i % 50)),
                ],
                ..Default::default()
            })
            .collect();
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hostscope-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn round_trip_per_compression_in_memory_and_on_disk_across_a_restart() {
        let dir = temp_dir("qz");
        let request = logs_request(100);
        let wires = [Compression::Gzip, Compression::Zstd, Compression::None];
        {
            let q = Queue::disk(&dir, 1 << 20).unwrap();
            for (i, wire) in wires.into_iter().enumerate() {
                q.push(Batch::new(Signal::Logs, i as u64, &request, wire))
                    .unwrap();
            }
        }
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "0000000000000000.logs.0.pb.gz",
                "0000000000000001.logs.1.pb.zst",
                // An uncompressed wire: stored as zstd all the same.
                "0000000000000002.logs.2.pb.zst",
            ]
        );
        let disk = Queue::disk(&dir, 1 << 20).unwrap();
        let memory = Queue::memory(1 << 20);
        for (i, wire) in wires.into_iter().enumerate() {
            memory
                .push(Batch::new(Signal::Logs, i as u64, &request, wire))
                .unwrap();
        }
        for (i, wire) in wires.into_iter().enumerate() {
            for q in [&disk, &memory] {
                let b = q.front().unwrap();
                assert_eq!(b.items, i as u64);
                assert_eq!(b.compression, compress::stored(wire));
                assert!(b.payload.len() * 4 < request.len(), "{wire:?}");
                assert_eq!(
                    compress::decompress(b.compression, &b.payload).unwrap(),
                    request
                );
                q.done();
            }
        }
        assert!(disk.is_empty() && memory.is_empty());
        assert!(disk.take_corrupt().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bounds_count_the_stored_compressed_bytes() {
        let request = logs_request(500);
        let stored = Batch::new(Signal::Logs, 500, &request, Compression::Gzip);
        let size = stored.payload.len();
        assert!(size * 4 < request.len(), "{size} of {}", request.len());
        // Room for three stored requests, not one of them uncompressed.
        let bound = size * 3 + size / 2;
        assert!(bound < request.len());
        let dir = temp_dir("qzb");
        for q in [
            Queue::memory(bound),
            Queue::disk(&dir, bound as u64).unwrap(),
        ] {
            for _ in 0..3 {
                q.push(stored.clone()).unwrap();
            }
            let full = if q.is_disk() {
                Full::Disk
            } else {
                Full::Memory
            };
            assert_eq!(q.push(stored.clone()), Err(full));
            assert_eq!(q.len(), (3, 3 * size as u64));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Files an earlier version wrote (plain protobuf, `….pb`) are read and sent after an
    /// upgrade, in order with the compressed ones queued after them.
    #[test]
    fn files_of_a_version_before_compression_are_still_read_in_order() {
        let dir = temp_dir("qzold");
        std::fs::create_dir_all(&dir).unwrap();
        let old = logs_request(20);
        std::fs::write(dir.join("0000000000000000.logs.20.pb"), &old).unwrap();
        std::fs::write(dir.join("0000000000000001.logs.3.pb"), plain(3)).unwrap();
        let q = Queue::disk(&dir, 1 << 20).unwrap();
        assert_eq!(q.len(), (2, (old.len() + 100) as u64));
        q.push(Batch::new(Signal::Logs, 9, &plain(9), Compression::Gzip))
            .unwrap();
        let first = q.front().unwrap();
        assert_eq!(
            (first.items, first.compression, &first.payload),
            (20, Compression::None, &old)
        );
        q.done();
        assert_eq!(q.front().unwrap(), batch(3));
        q.done();
        let new = q.front().unwrap();
        assert_eq!((new.items, new.compression), (9, Compression::Gzip));
        assert_eq!(
            compress::decompress(new.compression, &new.payload).unwrap(),
            plain(9)
        );
        q.done();
        assert!(q.is_empty());
        assert!(q.take_corrupt().is_empty());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A compressed file that does not decompress, or decompresses into something that is
    /// not a request, is set aside like a plain one.
    #[test]
    fn a_damaged_compressed_file_is_set_aside() {
        let dir = temp_dir("qzbad");
        std::fs::create_dir_all(&dir).unwrap();
        let good = Batch::new(Signal::Traces, 4, &logs_request(50), Compression::Gzip);
        let mut truncated = good.payload.clone();
        truncated.truncate(truncated.len() / 2);
        std::fs::write(dir.join("0000000000000000.traces.4.pb.gz"), &truncated).unwrap();
        let (_, not_otlp) = compress::compress(Compression::Zstd, &[0x0a, 0xff, 0xff, 0x7f], true);
        std::fs::write(dir.join("0000000000000001.metrics.6.pb.zst"), not_otlp).unwrap();
        let q = Queue::disk(&dir, 1 << 20).unwrap();
        q.push(batch(1)).unwrap();
        assert_eq!(q.front().unwrap(), batch(1));
        let corrupt = q.take_corrupt();
        let seen: Vec<_> = corrupt
            .iter()
            .map(|c| (c.signal, c.items, c.path.file_name().unwrap().to_owned()))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    Signal::Traces,
                    4,
                    "0000000000000000.traces.4.pb.gz.corrupt".into()
                ),
                (
                    Signal::Metrics,
                    6,
                    "0000000000000001.metrics.6.pb.zst.corrupt".into()
                ),
            ]
        );
        assert!(corrupt[0].why.contains("gzip"), "{}", corrupt[0].why);
        assert!(
            corrupt[1].why.contains("not an OTLP metrics request"),
            "{}",
            corrupt[1].why
        );
        assert_eq!(q.len(), (1, 100));
        std::fs::remove_dir_all(&dir).unwrap();
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
            dir.join(file_name(0, Signal::Traces, 7, Compression::None)),
            [0x0a, 0xff, 0xff, 0x7f],
        )
        .unwrap();
        let q = Queue::disk(&dir, 1000).unwrap();
        let good = Batch {
            signal: Signal::Logs,
            items: 0,
            compression: Compression::None,
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
