//! The RCA sink: a task on the agent's record stream (a [`SinkContext`]) that classifies failures, folds them
//! into incidents ([`super::engine`]) and publishes the incident records on the same
//! stream, where the printer, the exporter and the API see them like any other record.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{broadcast, broadcast::error::RecvError, watch},
    task::JoinHandle,
};

use super::{
    classify::{self, KnownCertificate, Target},
    engine::{Engine, EngineStats, Failure, Label, Settings},
    record::{Affected, RcaRecord},
    RcaSection,
};
use crate::{
    agent::SharedRecord,
    events::Record,
    metadata::{Identity, Resolver},
    sink::SinkContext,
    stats::Counters,
};

/// Records folded at most between two publishes while a storm is queued.
const BATCH: usize = 256;

/// Server certificates remembered for TLS 1.3 failures (by server address); beyond this
/// the memory starts afresh.
const MAX_CERTIFICATES: usize = 4096;

/// The sink's counters: the engine's, plus what it could not read.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RcaStats {
    #[serde(flatten)]
    pub engine: EngineStats,
    /// Records missed because the sink fell behind the stream (also in the agent's
    /// `records_lagged`).
    pub lagged: u64,
    /// Incident records published while nothing listened (not an error: no sink).
    pub unpublished: u64,
}

impl std::fmt::Display for RcaStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.engine;
        write!(
            f,
            "rca: {} open, {} opened, {} updated, {} closed ({} recovered), {} failures folded, {} overflow, {} lagged",
            e.open, e.opened, e.updated, e.closed, e.recovered, e.failures, e.overflow, self.lagged
        )
    }
}

/// Names remembered per identity and per target address; beyond this they are made
/// afresh.
const MAX_LABELS: usize = 4096;

/// A source's names, valid while the resolver hands out the same identity for it.
struct SourceNames {
    /// Held so that its address stays this identity's for as long as the entry lives.
    identity: Arc<Identity>,
    comm: Option<String>,
    source: Label,
    workload: Option<String>,
}

/// A target's name, valid while the resolver says the same about the address.
struct TargetName {
    peer: Option<Arc<Identity>>,
    looked_up: Option<String>,
    target: Label,
}

/// Turns records into engine input: names sources and targets with the resolver. Names
/// are remembered per identity (the resolver's cached `Arc`) and per address, so a storm
/// of failures from one process to one target formats them once.
pub struct Folder {
    pub engine: Engine,
    resolver: Arc<Resolver>,
    certificates: HashMap<SocketAddr, KnownCertificate>,
    sources: HashMap<usize, SourceNames, foldhash::fast::RandomState>,
    targets: HashMap<SocketAddr, TargetName, foldhash::fast::RandomState>,
    out: Vec<RcaRecord>,
    /// Reused for each record's successes.
    successes: Vec<classify::Success>,
}

impl Folder {
    pub fn new(settings: Settings, resolver: Arc<Resolver>) -> Folder {
        Folder {
            engine: Engine::new(settings),
            resolver,
            certificates: HashMap::new(),
            sources: HashMap::default(),
            targets: HashMap::default(),
            out: Vec::new(),
            successes: Vec::new(),
        }
    }

    /// The source's name and workload label for a record's identity and thread name.
    fn source(&mut self, identity: Arc<Identity>, comm: Option<&str>) -> (Label, Option<String>) {
        let key = Arc::as_ptr(&identity) as usize;
        if let Some(n) = self.sources.get(&key) {
            if Arc::ptr_eq(&n.identity, &identity) && n.comm.as_deref() == comm {
                return (n.source.clone(), n.workload.clone());
            }
        }
        if self.sources.len() >= MAX_LABELS {
            self.sources.clear();
        }
        let names = SourceNames {
            source: source_label(&identity, comm).into(),
            workload: identity.label(),
            comm: comm.map(str::to_string),
            identity,
        };
        let got = (names.source.clone(), names.workload.clone());
        self.sources.insert(key, names);
        got
    }

    /// `service <ns>/<name>:<port>` or `pod <ns>/<name>:<port>` when the resolver knows
    /// the address, else the address.
    /// With the name the process looked the address up as (`remote_name`) after a bare
    /// address: `10.0.3.7:443 (payments.shop.svc.cluster.local)`.
    fn target(&mut self, addr: SocketAddr, looked_up: Option<&str>) -> Label {
        let peer = self.resolver.peer(addr.ip());
        if let Some(t) = self.targets.get(&addr) {
            let same = match (&t.peer, &peer) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same && t.looked_up.as_deref() == looked_up {
                return t.target.clone();
            }
        }
        if self.targets.len() >= MAX_LABELS {
            self.targets.clear();
        }
        let mut target = target_label(peer.as_deref(), addr);
        if let (None, Some(name)) = (&peer, looked_up) {
            target = format!("{target} ({name})");
        }
        let target: Label = target.into();
        self.targets.insert(
            addr,
            TargetName {
                peer,
                looked_up: looked_up.map(str::to_string),
                target: target.clone(),
            },
        );
        target
    }

    fn label(&mut self, target: &Target, looked_up: Option<&str>) -> Label {
        match target {
            Target::Address(a) => self.target(*a, looked_up),
            Target::Name(n) | Target::Syscall(n) => n.as_str().into(),
        }
    }

    /// Feeds one record; the incident records it causes are in [`Folder::take`].
    pub fn observe(&mut self, record: &Record, now: u64) {
        if let Some((server, known)) = record.view().certificate() {
            if self.certificates.len() >= MAX_CERTIFICATES {
                self.certificates.clear();
            }
            self.certificates.insert(server, known);
            return;
        }
        let cert = record.peer().and_then(|a| self.certificates.get(&a));
        if let Some(c) = classify::classify(record, cert) {
            let subject = record.subject();
            let identity = self.resolver.identify(subject);
            let (source, workload) = self.source(identity, c.comm.as_deref());
            let target = self.label(&c.target, remote_name(record));
            let target_address = match &c.target {
                Target::Address(a) => Some(*a),
                _ => None,
            };
            let failure = Failure {
                cause: c.cause,
                sentence: c.sentence,
                source,
                target,
                target_address,
                seen_unix_ns: c.seen_unix_ns,
                over_ns: c.over_ns,
                weight: c.weight,
                affected: Affected {
                    pid: subject.pid,
                    comm: c.comm,
                    workload,
                },
                cgroup_id: subject.cgroup_id,
                conn_id: c.conn_id,
            };
            self.engine.failure(failure, now, &mut self.out);
        } else if self.engine.open_count() > 0 {
            let mut successes = std::mem::take(&mut self.successes);
            classify::successes(record, &mut successes);
            for s in successes.drain(..) {
                let identity = self.resolver.identify(record.subject());
                let (source, _) = self.source(identity, s.comm.as_deref());
                let target = self.label(&s.target, remote_name(record));
                self.engine.success(
                    source,
                    target,
                    s.recovery,
                    s.seen_unix_ns,
                    now,
                    &mut self.out,
                );
            }
            self.successes = successes;
        }
    }

    pub fn tick(&mut self, now: u64) {
        self.engine.tick(now, &mut self.out);
    }

    pub fn close_all(&mut self, now: u64) {
        self.engine.close_all(now, &mut self.out);
    }

    pub fn take(&mut self) -> std::vec::Drain<'_, RcaRecord> {
        self.out.drain(..)
    }
}

/// The name a connection record's process looked its peer up as.
fn remote_name(record: &Record) -> Option<&str> {
    record.view().remote_name()
}

/// `service <ns>/<name>:<port>` or `pod <ns>/<name>:<port>` when the resolver knows the
/// address (`peer`), else the address.
fn target_label(peer: Option<&Identity>, addr: SocketAddr) -> String {
    match peer {
        Some(id) => match (
            id.get_str("k8s.namespace.name"),
            id.get_str("k8s.service.name"),
            id.get_str("k8s.pod.name"),
        ) {
            (Some(ns), Some(svc), _) => format!("service {ns}/{svc}:{}", addr.port()),
            (Some(ns), None, Some(pod)) => format!("pod {ns}/{pod}:{}", addr.port()),
            _ => addr.to_string(),
        },
        None => addr.to_string(),
    }
}

/// The source workload: a pod (all its containers), another container, or a host
/// process by name (the process's, not the thread's, when the resolver knows it).
fn source_label(identity: &Identity, comm: Option<&str>) -> String {
    if let (Some(ns), Some(pod)) = (
        identity.get_str("k8s.namespace.name"),
        identity.get_str("k8s.pod.name"),
    ) {
        return format!("pod {ns}/{pod}");
    }
    if let Some(uid) = identity.get_str("k8s.pod.uid") {
        return format!("pod uid {uid}");
    }
    if let Some(c) = identity.get_str("container.id") {
        return format!("container {}", &c[..c.len().min(12)]);
    }
    let name = identity.get_str("process.executable.name").or(comm);
    format!("process {}", name.unwrap_or("?"))
}

pub fn settings(section: &RcaSection) -> Settings {
    Settings {
        window: section.window,
        update_interval: section.update_interval,
        max_open: section.max_open,
    }
}

/// How often open incidents are looked at for updates and quiet closes.
fn tick_period(s: &Settings) -> Duration {
    (s.update_interval.min(s.window) / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The running sink.
pub struct RcaSink {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    settings: watch::Sender<Settings>,
    stats: Arc<Mutex<RcaStats>>,
}

impl RcaSink {
    /// Starts the task (inside tokio). `publisher` is the agent's record stream, where
    /// incidents go. The sink holds a sender of that stream, so the stream closes only
    /// once it is stopped: [`RcaSink::stop`] after the agent's rings are drained (the
    /// context's `shutdown` comes too early, while records are still being read).
    pub fn start(
        section: &RcaSection,
        context: SinkContext,
        publisher: broadcast::Sender<SharedRecord>,
    ) -> RcaSink {
        let (stop, stop_rx) = watch::channel(false);
        let (settings_tx, settings_rx) = watch::channel(settings(section));
        let stats = Arc::new(Mutex::new(RcaStats::default()));
        let task = tokio::spawn(run(
            Folder::new(settings(section), context.resolver),
            context.records,
            publisher,
            context.counters,
            stop_rx,
            settings_rx,
            stats.clone(),
        ));
        RcaSink {
            task,
            stop,
            settings: settings_tx,
            stats,
        }
    }

    /// Live: `window`, `update_interval` and `max_open`.
    pub fn set_settings(&self, section: &RcaSection) {
        self.settings.send_replace(settings(section));
    }

    pub fn stats(&self) -> RcaStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads what the stream still holds, closes every open incident with a final
    /// record and lets go of the stream (call after the agent stopped its consumers:
    /// the stream closes when the sink is gone).
    pub async fn stop(self) -> RcaStats {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.clone()
    }
}

async fn run(
    mut folder: Folder,
    mut records: broadcast::Receiver<SharedRecord>,
    publisher: broadcast::Sender<SharedRecord>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
    mut settings: watch::Receiver<Settings>,
    stats: Arc<Mutex<RcaStats>>,
) {
    let mut lagged = 0u64;
    let mut unpublished = 0u64;
    let new_tick = |s: &Settings| {
        let p = tick_period(s);
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    };
    let mut tick = new_tick(&folder.engine.settings());
    let mut publish = |folder: &mut Folder, lagged: u64| {
        for r in folder.take() {
            if publisher.send(Arc::new(Record::Rca(r))).is_err() {
                unpublished += 1;
            }
        }
        let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
        *s = RcaStats {
            engine: folder.engine.stats(),
            lagged,
            unpublished,
        };
    };
    loop {
        tokio::select! {
            r = records.recv() => match r {
                Ok(record) => {
                    // A storm: what is already queued is folded before publishing (one
                    // clock read, one stats update per batch, not per record).
                    let now = now_unix_ns();
                    folder.observe(&record, now);
                    for _ in 0..BATCH {
                        match records.try_recv() {
                            Ok(record) => folder.observe(&record, now),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                lagged += n;
                                counters.records_lagged.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    lagged += n;
                    counters.records_lagged.fetch_add(n, Ordering::Relaxed);
                }
                Err(RecvError::Closed) => break,
            },
            _ = tick.tick() => folder.tick(now_unix_ns()),
            Ok(()) = settings.changed() => {
                let s = *settings.borrow_and_update();
                folder.engine.set_settings(s);
                tick = new_tick(&s);
            }
            _ = stop.changed() => break,
        }
        publish(&mut folder, lagged);
    }
    // The agent has drained its rings: what the stream still holds is folded first.
    loop {
        match records.try_recv() {
            Ok(record) => folder.observe(&record, now_unix_ns()),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                lagged += n;
                counters.records_lagged.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => break,
        }
    }
    folder.close_all(now_unix_ns());
    publish(&mut folder, lagged);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tcp::{Direction, Failure as TcpFailure, TcpEventKind, TcpRecord};

    fn tcp(event: TcpEventKind, errno: Option<i32>, conn_id: u64) -> Record {
        Record::Tcp(TcpRecord {
            event,
            timestamp_unix_ns: 1_000 + conn_id,
            conn_id,
            direction: Direction::Active,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:9".parse().unwrap(),
            remote_name: None,
            pid: Some(std::process::id()),
            tid: None,
            comm: Some("storm".into()),
            cgroup_id: None,
            state: "CLOSE",
            previous_state: "SYN_SENT",
            connect_latency_us: None,
            handshake_rtt_us: None,
            syn_retransmits: 0,
            handshake_end_unseen: false,
            failure: errno.map(|e| TcpFailure::from_errno(e as u32)),
            duration_us: None,
            bytes_acked: None,
            bytes_received: None,
            srtt_us: None,
            retransmits: None,
            resets_sent: 0,
            resets_received: 0,
        })
    }

    #[test]
    fn records_in_incidents_out_and_own_records_ignored() {
        let section = RcaSection::default();
        let mut folder = Folder::new(settings(&section), Arc::new(Resolver::node_local()));
        for i in 0..100 {
            folder.observe(
                &tcp(TcpEventKind::ConnectFailed, Some(libc::ECONNREFUSED), i),
                1_000,
            );
        }
        let out: Vec<RcaRecord> = folder.take().collect();
        assert_eq!(out.len(), 1, "one open, no update within the interval");
        assert_eq!(out[0].target, "127.0.0.1:9");
        assert!(out[0].source.starts_with("process "), "{}", out[0].source);
        // Its own records are not input.
        folder.observe(&Record::Rca(out[0].clone()), 2_000);
        assert_eq!(folder.engine.stats().failures, 100);
        folder.observe(&tcp(TcpEventKind::Connect, None, 101), 3_000);
        let closed: Vec<RcaRecord> = folder.take().collect();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].count, 100);
        assert_eq!(
            closed[0].ended,
            Some(super::super::record::Ending::Recovered)
        );
    }

    #[test]
    fn a_looked_up_target_is_named_and_a_lookup_answer_recovers_its_server() {
        let section = RcaSection::default();
        let mut folder = Folder::new(settings(&section), Arc::new(Resolver::node_local()));
        let Record::Tcp(mut refused) =
            tcp(TcpEventKind::ConnectFailed, Some(libc::ECONNREFUSED), 1)
        else {
            unreachable!()
        };
        refused.remote_name = Some("payments.shop.test".into());
        folder.observe(&Record::Tcp(refused), 1_000);
        let out: Vec<RcaRecord> = folder.take().collect();
        assert_eq!(out[0].target, "127.0.0.1:9 (payments.shop.test)");

        use crate::events::dns::*;
        let mut lookup = DnsRecord {
            timestamp_unix_ns: 2_000,
            pid: Some(std::process::id()),
            comm: Some("storm".into()),
            server: "127.0.0.77:53".parse().unwrap(),
            ..sample(None, "x.test")
        };
        folder.observe(&Record::Dns(lookup.clone()), 2_000);
        let out: Vec<RcaRecord> = folder.take().collect();
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].cause, out[0].target.as_str()),
            ("dns_timeout", "127.0.0.77:53")
        );
        lookup.outcome = DnsOutcome::Answered;
        lookup.rcode = Some(rcode_name(0));
        lookup.query_name = "y.test".into();
        folder.observe(&Record::Dns(lookup), 3_000);
        let closed: Vec<RcaRecord> = folder.take().collect();
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert_eq!(closed[0].cause, "dns_timeout");
        assert_eq!(
            closed[0].ended,
            Some(super::super::record::Ending::Recovered)
        );
    }
}
