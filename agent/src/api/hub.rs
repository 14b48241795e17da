//! Fans the agent's record stream out to the API's clients. One task receives every
//! record, notes its identity, keeps it in the history and offers it to each
//! client whose filter matches, with `try_send` into that client's bounded buffer: a full
//! buffer costs that client the record (counted, and told to it in order), never a wait.

use std::{
    borrow::Cow,
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Instant,
};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use super::{
    filter::{Candidate, Fields, Filter},
    history::History,
};
use crate::{
    agent::SharedRecord,
    events::Record,
    metadata::{Identity, Resolver},
    output,
    stats::Counters,
};

/// One record as the API sends it, shared by every client and the history. It keeps the
/// record and the identities it had when it arrived; its JSON and text lines are rendered
/// the first time a client needs them, so records nobody reads cost no formatting.
pub struct Entry {
    /// The record's `type` tag.
    pub kind: Cow<'static, str>,
    record: Option<SharedRecord>,
    identities: Option<Identities>,
    received_unix_ns: u64,
    /// The JSON line of `hostscope run --output json`.
    json: OnceLock<String>,
    fields: OnceLock<Fields>,
    text: OnceLock<String>,
}

/// What the resolver said about a record when it arrived.
struct Identities {
    identity: Option<Arc<Identity>>,
    peer_identity: Option<Arc<Identity>>,
    process_identities: Vec<Arc<Identity>>,
}

impl Entry {
    pub fn new(record: SharedRecord, resolver: Option<&Resolver>) -> Entry {
        let identities = resolver.map(|r| {
            let w = output::with_identity(r, &record);
            Identities {
                identity: w.identity,
                peer_identity: w.peer_identity,
                process_identities: w.process_identities,
            }
        });
        Entry {
            kind: Cow::Borrowed(record.kind()),
            // Records carry their own time; the clock is read only for one that does not.
            received_unix_ns: record.time_unix_ns().unwrap_or_else(now_unix_ns),
            record: Some(record),
            identities,
            json: OnceLock::new(),
            fields: OnceLock::new(),
            text: OnceLock::new(),
        }
    }

    /// An entry of a JSON line alone (tests).
    pub fn from_json(json: String) -> Entry {
        let kind = tag(&json)
            .map(str::to_string)
            .or_else(|| Fields::from_json(&json).kind().map(str::to_string))
            .unwrap_or_default();
        Entry {
            kind: Cow::Owned(kind),
            record: None,
            identities: None,
            received_unix_ns: now_unix_ns(),
            json: OnceLock::from(json),
            fields: OnceLock::new(),
            text: OnceLock::new(),
        }
    }

    /// The JSON line of `hostscope run --output json`, rendered on first use.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| {
            let Some(record) = &self.record else {
                return String::new();
            };
            let json = match &self.identities {
                Some(ids) => serde_json::to_string(&output::WithIdentity {
                    record,
                    identity: ids.identity.clone(),
                    peer_identity: ids.peer_identity.clone(),
                    process_identities: ids.process_identities.clone(),
                }),
                None => serde_json::to_string(&**record),
            };
            // Records always serialize (plain data); an error would be a bug, shown in-line.
            json.unwrap_or_else(|e| format!(r#"{{"type":"error","error":"{e}"}}"#))
        })
    }

    /// What the history counts against its byte bound: the entry and its record in
    /// memory, without rendering anything (the JSON of a record a client read comes on
    /// top).
    pub fn bytes(&self) -> usize {
        let own = std::mem::size_of::<Entry>() + std::mem::size_of::<Identities>();
        match &self.record {
            Some(r) => own + std::mem::size_of::<Record>() + r.heap_bytes(),
            None => own + self.json.get().map_or(0, String::len),
        }
    }

    pub fn time_unix_nano(&self) -> u64 {
        self.record
            .as_ref()
            .and_then(|r| r.time_unix_ns())
            .or_else(|| self.fields().time_unix_nano())
            .unwrap_or(self.received_unix_ns)
    }

    /// The line `hostscope run --output text` prints.
    pub fn text(&self, resolver: Option<&Resolver>) -> &str {
        self.text.get_or_init(|| match &self.record {
            Some(r) => output::text_line(resolver, r),
            None => self.json().to_string(),
        })
    }
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The `type` of a record's JSON line, which serde writes first: `{"type":"tcp",…`.
fn tag(json: &str) -> Option<&str> {
    let rest = json.strip_prefix(r#"{"type":""#)?;
    let end = rest.find('"')?;
    Some(&rest[..end])
}

impl Candidate for Entry {
    fn kind(&self) -> &str {
        &self.kind
    }
    fn identity(&self) -> Option<&Identity> {
        self.identities.as_ref()?.identity.as_deref()
    }
    fn fields(&self) -> &Fields {
        self.fields.get_or_init(|| Fields::from_json(self.json()))
    }
    fn is_failure(&self) -> bool {
        self.record.as_ref().is_some_and(|r| r.view().is_failure())
    }
    fn reasons(&self) -> Vec<&str> {
        self.record
            .as_ref()
            .map(|r| r.view().reasons())
            .unwrap_or_default()
    }
}

/// What a client's buffer holds: a record, and how many records this client missed just
/// before it (its buffer was full).
pub struct Queued {
    pub missed_before: u64,
    pub entry: Arc<Entry>,
}

/// One client's account, shared by the hub (drops) and its stream (sent).
#[derive(Debug)]
pub struct ClientState {
    pub id: u64,
    pub pid: Option<i32>,
    pub uid: u32,
    pub connected: Instant,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    /// Drops not yet told to the client.
    pub untold: AtomicU64,
}

struct Slot {
    filter: Filter,
    tx: mpsc::Sender<Queued>,
    state: Arc<ClientState>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClientStats {
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub uid: u32,
    pub connected_s: f64,
    pub sent: u64,
    pub dropped: u64,
}

#[derive(Default)]
struct Inner {
    clients: Vec<Slot>,
    history: Option<History>,
}

/// Why a client cannot be added.
#[derive(Debug)]
pub enum Refusal {
    TooMany(usize),
    Stopped,
}

pub struct Hub {
    inner: Mutex<Inner>,
    max_clients: usize,
    client_buffer: usize,
    next_id: AtomicU64,
    stopped: std::sync::atomic::AtomicBool,
    /// Records this hub missed itself (the agent's channel lagged it).
    pub lagged: AtomicU64,
    /// Records every client missed, in total (including gone clients).
    pub dropped_total: AtomicU64,
    pub sent_total: AtomicU64,
    pub refused_max_clients: AtomicU64,
    pub streams_served: AtomicU64,
}

/// What a new client gets: its history part, its buffer and its account.
pub struct Subscription {
    pub history: VecDeque<Arc<Entry>>,
    pub rx: Option<mpsc::Receiver<Queued>>,
    pub state: Arc<ClientState>,
}

impl Hub {
    pub fn new(history: History, max_clients: usize, client_buffer: usize) -> Hub {
        Hub {
            inner: Mutex::new(Inner {
                clients: Vec::new(),
                history: history.enabled().then_some(history),
            }),
            max_clients,
            client_buffer,
            next_id: AtomicU64::new(1),
            stopped: Default::default(),
            lagged: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            sent_total: AtomicU64::new(0),
            refused_max_clients: AtomicU64::new(0),
            streams_served: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the vectors half-changed in a way
        // that matters here: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a client: the latest `last` matching records from the history, then (with
    /// `follow`) everything after them, with nothing missed or repeated in between.
    pub fn subscribe(
        &self,
        filter: Filter,
        last: usize,
        follow: bool,
        pid: Option<i32>,
        uid: u32,
    ) -> Result<Subscription, Refusal> {
        let mut inner = self.lock();
        if self.stopped.load(Ordering::Relaxed) {
            return Err(Refusal::Stopped);
        }
        inner.clients.retain(|c| !c.tx.is_closed());
        if follow && inner.clients.len() >= self.max_clients {
            self.refused_max_clients.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooMany(self.max_clients));
        }
        let history = match (&inner.history, last) {
            (Some(h), n) if n > 0 => h.last(n, &filter),
            _ => VecDeque::new(),
        };
        let state = Arc::new(ClientState {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            pid,
            uid,
            connected: Instant::now(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            untold: AtomicU64::new(0),
        });
        let rx = follow.then(|| {
            let (tx, rx) = mpsc::channel(self.client_buffer);
            inner.clients.push(Slot {
                filter,
                tx,
                state: state.clone(),
            });
            rx
        });
        self.streams_served.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription { history, rx, state })
    }

    /// Offers one record to the history and every client.
    pub fn publish(&self, record: SharedRecord, resolver: Option<&Resolver>) {
        let fields = {
            let inner = self.lock();
            if inner.clients.is_empty() && inner.history.is_none() {
                return;
            }
            inner.clients.iter().any(|c| c.filter.needs_fields())
        };
        // Made outside the lock (identity lookups, and the JSON a client's filter reads);
        // a client added meanwhile still gets it (it is in neither that client's history
        // part nor missed).
        let entry = Arc::new(Entry::new(record, resolver));
        if fields {
            entry.fields();
        }
        self.deliver(&mut self.lock(), entry);
    }

    fn deliver(&self, inner: &mut Inner, entry: Arc<Entry>) {
        if let Some(h) = &mut inner.history {
            h.push(entry.clone());
        }
        let mut gone = false;
        for c in &inner.clients {
            if !c.filter.matches(&*entry) {
                continue;
            }
            // Taken, not read: the client's stream may tell the same count itself once
            // its buffer is empty (`server::stream`); whoever takes it tells it.
            let missed = c.state.untold.swap(0, Ordering::Relaxed);
            let item = Queued {
                missed_before: missed,
                entry: entry.clone(),
            };
            match c.tx.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    c.state.untold.fetch_add(missed + 1, Ordering::Relaxed);
                    c.state.dropped.fetch_add(1, Ordering::Relaxed);
                    self.dropped_total.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone = true,
            }
        }
        if gone {
            inner.clients.retain(|c| !c.tx.is_closed());
        }
    }

    /// The agent is stopping: every client's buffer is closed (its stream sends what it
    /// holds, then the end notice) and no client is added any more.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.lock().clients.clear();
    }

    pub fn clients(&self) -> Vec<ClientStats> {
        let mut inner = self.lock();
        inner.clients.retain(|c| !c.tx.is_closed());
        inner
            .clients
            .iter()
            .map(|c| ClientStats {
                id: c.state.id,
                pid: c.state.pid,
                uid: c.state.uid,
                connected_s: c.state.connected.elapsed().as_secs_f64(),
                sent: c.state.sent.load(Ordering::Relaxed),
                dropped: c.state.dropped.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// (records, bytes) in the history.
    pub fn history_size(&self) -> (usize, usize) {
        let inner = self.lock();
        inner
            .history
            .as_ref()
            .map_or((0, 0), |h| (h.len(), h.bytes()))
    }
}

/// Feeds the hub from the agent's channel until it closes (the agent stopped and drained
/// its rings), then closes every client's buffer.
pub async fn run(
    hub: Arc<Hub>,
    mut records: broadcast::Receiver<SharedRecord>,
    resolver: Option<Arc<Resolver>>,
    counters: Arc<Counters>,
) {
    loop {
        match records.recv().await {
            Ok(r) => hub.publish(r, resolver.as_deref()),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                hub.lagged.fetch_add(n, Ordering::Relaxed);
                counters.records_lagged.fetch_add(n, Ordering::Relaxed);
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    hub.stop();
}

/// Delivers a JSON line as a record (tests of the hub and of the client streams).
#[cfg(test)]
pub(crate) fn publish_json(hub: &Hub, json: &str) {
    let mut inner = hub.lock();
    hub.deliver(&mut inner, Arc::new(Entry::from_json(json.to_string())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::EventsRequest;

    fn all() -> Filter {
        Filter::parse(&EventsRequest::default()).unwrap()
    }

    #[test]
    fn tag_is_read_from_the_line() {
        assert_eq!(tag(r#"{"type":"tcp","x":1}"#), Some("tcp"));
        assert_eq!(tag(r#"{"x":1}"#), None);
        assert_eq!(
            Entry::from_json(r#"{"x":1,"type":"rca"}"#.into()).kind,
            "rca"
        );
    }

    #[test]
    fn json_is_rendered_when_read_and_is_the_run_line() {
        use crate::events::syscalls::{ProcessSyscalls, SyscallsRecord};
        let resolver = Resolver::node_local();
        let record: SharedRecord = Arc::new(Record::Syscalls(SyscallsRecord {
            ts_unix_ns: 7,
            interval_s: 1.0,
            key_by: "pid",
            calls: 1,
            errors: 0,
            processes: vec![ProcessSyscalls {
                id: std::process::id() as u64,
                comm: "x".into(),
                calls: 1,
                errors: 0,
                syscalls: Vec::new(),
                errnos: Vec::new(),
            }],
        }));
        let entry = Entry::new(record.clone(), Some(&resolver));
        assert!(entry.json.get().is_none(), "rendered before anyone read it");
        assert!(entry.bytes() > std::mem::size_of::<Record>());
        let mut line = Vec::new();
        output::json_line(&mut line, Some(&resolver), &record).unwrap();
        assert_eq!(entry.json(), String::from_utf8(line).unwrap());
        assert!(entry.json().contains("process_identities"));
        assert_eq!(tag(entry.json()), Some(&*entry.kind));
        assert_eq!(entry.time_unix_nano(), 7);
    }

    #[test]
    fn a_full_buffer_drops_and_tells_in_order() {
        let hub = Hub::new(History::new(0, 0), 4, 2);
        let mut sub = hub.subscribe(all(), 0, true, None, 0).unwrap();
        for i in 0..5 {
            publish_json(&hub, &format!(r#"{{"type":"tcp","pid":{i}}}"#));
        }
        let rx = sub.rx.as_mut().unwrap();
        let a = rx.try_recv().unwrap();
        let b = rx.try_recv().unwrap();
        assert_eq!((a.missed_before, b.missed_before), (0, 0));
        assert!(rx.try_recv().is_err());
        publish_json(&hub, r#"{"type":"tcp","pid":9}"#);
        let c = rx.try_recv().unwrap();
        assert_eq!(c.missed_before, 3);
        assert_eq!(c.entry.json(), r#"{"type":"tcp","pid":9}"#);
        assert_eq!(sub.state.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(sub.state.untold.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn max_clients_and_stop() {
        let hub = Hub::new(History::new(10, 1000), 2, 8);
        let a = hub.subscribe(all(), 0, true, None, 0).unwrap();
        let _b = hub.subscribe(all(), 0, true, None, 0).unwrap();
        assert!(matches!(
            hub.subscribe(all(), 0, true, None, 0),
            Err(Refusal::TooMany(2))
        ));
        // History-only requests hold no slot.
        hub.subscribe(all(), 5, false, None, 0).unwrap();
        drop(a);
        hub.subscribe(all(), 0, true, None, 0).unwrap();
        hub.stop();
        assert!(matches!(
            hub.subscribe(all(), 0, true, None, 0),
            Err(Refusal::Stopped)
        ));
    }
}
