//! The API's socket and gRPC service. The socket lives in a directory of its own, 0700
//! (0750 with `allowed_group`), and is 0600 (0660), owned by root. Every connection's
//! peer is checked once, by its credentials (SO_PEERCRED): uid 0, or a member of
//! `allowed_group`; any other peer gets PERMISSION_DENIED on every call, and is counted.

use std::{
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::Stream;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use serde::Serialize;
use tokio::{
    net::UnixListener,
    sync::{mpsc, watch},
    task::JoinSet,
};
use tonic::{Request, Response, Status};

use super::{
    config::ApiSection,
    filter::Filter,
    history::History,
    hub::{self, ClientStats, Hub, Queued, Refusal},
    proto::{self, agent_server::AgentServer, events_reply::Reply},
    API_VERSION,
};
use crate::{metadata::Resolver, sink::SinkContext, status::StatusHandle};

/// How long the API lets its clients take what they hold at stop, before it closes them.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the API socket {path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("another hostscope agent already serves the API at {0} (stop it, or give this one another api.socket / --api-socket, or --no-api)")]
    InUse(PathBuf),
    #[error("api.allowed_group: {0}")]
    Group(String),
}

fn socket_error(path: &Path, what: &str, e: impl std::fmt::Display) -> ServeError {
    ServeError::Socket {
        path: path.to_path_buf(),
        message: format!("{what}: {e}"),
    }
}

/// The group id of a group name or number.
pub fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name =
        std::ffi::CString::new(group).map_err(|_| format!("{group:?} is not a group name"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero is a valid `group`; the pointers are valid for the call and
        // `buf` outlives the use of the result's strings (only gr_gid is read).
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(format!(
                "looking up group {group:?}: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        if result.is_null() {
            return Err(format!("no group named {group:?}"));
        }
        return Ok(grp.gr_gid);
    }
}

/// Who may use the API.
#[derive(Clone, Debug)]
struct Access {
    group: Option<(String, u32)>,
}

impl Access {
    /// `Ok` for root or a member of the allowed group, else the message the peer gets.
    fn check(&self, cred: Option<tokio::net::unix::UCred>) -> Result<(), String> {
        let who = match cred {
            Some(c) if c.uid() == 0 => return Ok(()),
            Some(c) => {
                if let Some((_, gid)) = &self.group {
                    if c.gid() == *gid || supplementary_groups(c.pid()).contains(gid) {
                        return Ok(());
                    }
                }
                match c.pid() {
                    Some(pid) => format!("uid {} (pid {pid})", c.uid()),
                    None => format!("uid {}", c.uid()),
                }
            }
            None => "a peer whose credentials could not be read".to_string(),
        };
        let allowed = match &self.group {
            Some((name, gid)) => format!("root and members of group {name} (gid {gid})"),
            None => "root only".to_string(),
        };
        Err(format!(
            "permission denied: the hostscope API serves {allowed}; this client is {who}"
        ))
    }
}

/// The supplementary groups of a process, from `/proc/<pid>/status` (`Groups:`).
fn supplementary_groups(pid: Option<i32>) -> Vec<u32> {
    let Some(pid) = pid else { return Vec::new() };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Creates the socket's directory (or sets its mode and group when it is ours), replaces
/// a stale socket left by a dead agent, and binds.
fn bind(path: &Path, gid: Option<u32>) -> Result<UnixListener, ServeError> {
    let dir = path
        .parent()
        .ok_or_else(|| socket_error(path, "no directory", "the path has none"))?;
    let dir_mode = if gid.is_some() { 0o750 } else { 0o700 };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(dir)
            .map_err(|e| socket_error(path, "creating its directory", e))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| socket_error(path, "its directory", e))?;
    // A shared directory such as /tmp (world-writable) is not ours to change; the
    // socket's own mode and the credential check still hold.
    if meta.mode() & 0o002 == 0 {
        std::os::unix::fs::chown(dir, Some(0), Some(gid.unwrap_or(0)))
            .map_err(|e| socket_error(path, "owning its directory", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))
            .map_err(|e| socket_error(path, "setting its directory's mode", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ServeError::InUse(path.to_path_buf())),
                // Nobody listens: a socket left by an agent that died.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(|e| socket_error(path, "removing the stale socket", e))?;
                }
                Err(e) => return Err(socket_error(path, "checking the existing socket", e)),
            }
        }
        Ok(_) => {
            return Err(socket_error(
                path,
                "exists and is not a socket",
                "remove it or choose another api.socket",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_error(path, "checking it", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| socket_error(path, "binding", e))?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::os::unix::fs::chown(path, Some(0), Some(gid.unwrap_or(0)))
        .map_err(|e| socket_error(path, "owning it", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| socket_error(path, "setting its mode", e))?;
    Ok(listener)
}

#[derive(Default)]
struct Connections {
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// The API's account, in the status document under `sinks.api`.
#[derive(Clone, Debug, Serialize)]
pub struct ApiStats {
    pub socket: PathBuf,
    pub api_version: u32,
    /// Connections whose peer was served / refused by its credentials.
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Event streams refused because `max_clients` were streaming.
    pub streams_refused_max_clients: u64,
    pub streams_served: u64,
    /// Streaming clients now, with what each was sent and missed.
    pub clients_now: usize,
    pub clients: Vec<ClientStats>,
    pub records_sent: u64,
    /// Records clients missed because their buffer was full, all clients together.
    pub records_dropped: u64,
    /// Records the API missed itself (it fell behind the agent's channel).
    pub records_lagged: u64,
    pub history_records: usize,
    pub history_bytes: usize,
}

/// The running API: its accept loop and the hub feeding its clients.
pub struct ApiServer {
    socket: PathBuf,
    hub: Arc<Hub>,
    connections: Arc<Connections>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<JoinSet<()>>,
    feeder: tokio::task::JoinHandle<()>,
}

/// The API's socket, bound before the probes load so that a second agent on the same
/// socket fails at once; [`Bound::serve`] starts serving it.
pub struct Bound {
    listener: UnixListener,
    config: ApiSection,
    group: Option<(String, u32)>,
}

impl ApiServer {
    /// Binds the socket with its directory, modes and owner; must run inside tokio.
    pub fn bind(config: &ApiSection) -> Result<Bound, ServeError> {
        let group = match &config.allowed_group {
            Some(g) => Some((g.clone(), group_id(g).map_err(ServeError::Group)?)),
            None => None,
        };
        let listener = bind(&config.socket, group.as_ref().map(|(_, gid)| *gid))?;
        Ok(Bound {
            listener,
            config: config.clone(),
            group,
        })
    }
}

impl Bound {
    /// Serves the agent's records and status. `identities`: whether records carry their
    /// identity (metadata on), as `run`'s printer does.
    pub fn serve(self, ctx: SinkContext, identities: bool) -> ApiServer {
        let Bound {
            listener,
            config,
            group,
        } = self;
        let hub = Arc::new(Hub::new(
            History::new(config.history_records, config.history_bytes),
            config.max_clients,
            config.client_buffer,
        ));
        let resolver = identities.then(|| ctx.resolver.clone());
        let feeder = tokio::spawn(hub::run(
            hub.clone(),
            ctx.records,
            resolver.clone(),
            ctx.counters.clone(),
        ));
        let connections = Arc::new(Connections::default());
        let (stop, stopping) = watch::channel(false);
        let service = Service {
            hub: hub.clone(),
            resolver,
            status: ctx.status,
            peer: None,
        };
        let accept = tokio::spawn(accept_loop(
            listener,
            Access { group },
            service,
            connections.clone(),
            stopping,
        ));
        ApiServer {
            socket: config.socket,
            hub,
            connections,
            stop,
            accept,
            feeder,
        }
    }
}

impl ApiServer {
    pub fn stats(&self) -> ApiStats {
        let clients = self.hub.clients();
        let (history_records, history_bytes) = self.hub.history_size();
        ApiStats {
            socket: self.socket.clone(),
            api_version: API_VERSION,
            connections_accepted: self.connections.accepted.load(Ordering::Relaxed),
            connections_refused: self.connections.refused.load(Ordering::Relaxed),
            streams_refused_max_clients: self.hub.refused_max_clients.load(Ordering::Relaxed),
            streams_served: self.hub.streams_served.load(Ordering::Relaxed),
            clients_now: clients.len(),
            clients,
            records_sent: self.hub.sent_total.load(Ordering::Relaxed),
            records_dropped: self.hub.dropped_total.load(Ordering::Relaxed),
            records_lagged: self.hub.lagged.load(Ordering::Relaxed),
            history_records,
            history_bytes,
        }
    }

    /// Stops after the agent's channel closed (or `grace` passed): clients get what they
    /// hold and the end notice, then the connections close; the socket file is removed.
    /// Takes at most about `grace` beyond the feeder's end.
    pub async fn stop(mut self, grace: Duration) -> ApiStats {
        // The feeder ends when the agent's channel closes; a feeder still running after
        // `grace` (channel not closed by the caller) is ended here.
        let abort = self.feeder.abort_handle();
        if tokio::time::timeout(grace, &mut self.feeder).await.is_err() {
            abort.abort();
        }
        self.hub.stop();
        let stats = self.stats();
        let _ = self.stop.send(true);
        let _ = std::fs::remove_file(&self.socket);
        if let Ok(mut connections) = self.accept.await {
            let drained = async { while connections.join_next().await.is_some() {} };
            if tokio::time::timeout(grace, drained).await.is_err() {
                connections.abort_all();
            }
        }
        stats
    }
}

async fn accept_loop(
    listener: UnixListener,
    access: Access,
    service: Service,
    counts: Arc<Connections>,
    mut stopping: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = stopped(&mut stopping) => break,
            // Finished connections are reaped as they go.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    eprintln!("api: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let cred = stream.peer_cred().ok();
        let refused = access.check(cred).err();
        match &refused {
            None => counts.accepted.fetch_add(1, Ordering::Relaxed),
            Some(_) => counts.refused.fetch_add(1, Ordering::Relaxed),
        };
        let mut svc = service.clone();
        svc.peer = Some(Arc::new(Peer {
            refused,
            pid: cred.and_then(|c| c.pid()),
            uid: cred.map_or(u32::MAX, |c| c.uid()),
        }));
        let mut stop = stopping.clone();
        connections.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(AgentServer::new(svc)),
            );
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stopped(&mut stop) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    connections
}

/// Until the server is told to stop (the watch's guard is not held across awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// The peer of one connection.
#[derive(Debug)]
struct Peer {
    /// Why it is not served, when it is not.
    refused: Option<String>,
    pid: Option<i32>,
    uid: u32,
}

#[derive(Clone)]
struct Service {
    hub: Arc<Hub>,
    resolver: Option<Arc<Resolver>>,
    status: StatusHandle,
    peer: Option<Arc<Peer>>,
}

impl Service {
    fn peer(&self) -> Result<&Peer, Status> {
        let peer = self
            .peer
            .as_deref()
            .ok_or_else(|| Status::internal("connection without a peer"))?;
        match &peer.refused {
            Some(why) => Err(Status::permission_denied(why.clone())),
            None => Ok(peer),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::EventsReply, Status>> + Send>>;

#[tonic::async_trait]
impl proto::agent_server::Agent for Service {
    type GetEventsStream = EventStream;

    async fn get_events(
        &self,
        request: Request<proto::EventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let peer = self.peer()?;
        let req = request.into_inner();
        let filter = Filter::parse(&req).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sub = self
            .hub
            .subscribe(filter, req.last as usize, req.follow, peer.pid, peer.uid)
            .map_err(|r| match r {
                Refusal::TooMany(n) => Status::resource_exhausted(format!(
                    "the agent already streams to {n} clients (api.max_clients)"
                )),
                Refusal::Stopped => Status::unavailable("the agent is stopping"),
            })?;
        let text = req.with_text.then(|| self.resolver.clone());
        Ok(Response::new(Box::pin(stream(sub, self.hub.clone(), text))))
    }

    async fn get_status(
        &self,
        _: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        self.peer()?;
        let status = self.status.get().await.ok_or_else(|| {
            Status::unavailable("the agent's status is not available (it is stopping)")
        })?;
        let json = serde_json::to_string(&status)
            .map_err(|e| Status::internal(format!("serializing the status: {e}")))?;
        Ok(Response::new(proto::StatusReply {
            api_version: API_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            json,
            text: status.to_string(),
        }))
    }
}

fn record(entry: &hub::Entry, text: &Option<Option<Arc<Resolver>>>) -> Reply {
    Reply::Record(proto::Record {
        r#type: entry.kind.to_string(),
        time_unix_nano: entry.time_unix_nano(),
        json: entry.json().to_string(),
        text: match text {
            Some(resolver) => entry.text(resolver.as_deref()).to_string(),
            None => String::new(),
        },
    })
}

fn reply(r: Reply) -> Result<proto::EventsReply, Status> {
    Ok(proto::EventsReply { reply: Some(r) })
}

/// How often a client waiting on an empty buffer looks for drops not yet told.
const UNTOLD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// A client's stream: its history part, then its buffer (a `Dropped` notice before a
/// record that follows missed ones, or once the buffer is empty), then what it missed at
/// the end and the end notice.
fn stream(
    sub: hub::Subscription,
    hub: Arc<Hub>,
    text: Option<Option<Arc<Resolver>>>,
) -> impl Stream<Item = Result<proto::EventsReply, Status>> + Send {
    enum Next {
        Pending(Reply),
        Live,
        Done,
    }
    let hub::Subscription { history, rx, state } = sub;
    let follow = rx.is_some();
    let sent = move |state: &hub::ClientState, hub: &Hub| {
        state.sent.fetch_add(1, Ordering::Relaxed);
        hub.sent_total.fetch_add(1, Ordering::Relaxed);
    };
    futures::stream::unfold(
        (history, rx, Next::Live),
        move |(mut history, mut rx, next)| {
            let (state, hub, text) = (state.clone(), hub.clone(), text.clone());
            async move {
                match next {
                    Next::Done => return None,
                    Next::Pending(r) => {
                        sent(&state, &hub);
                        return Some((reply(r), (history, rx, Next::Live)));
                    }
                    Next::Live => {}
                }
                if let Some(e) = history.pop_front() {
                    sent(&state, &hub);
                    return Some((reply(record(&e, &text)), (history, rx, Next::Live)));
                }
                let Some(buffer) = rx.as_mut() else {
                    let end = Reply::End(proto::End {
                        reason: if follow {
                            "the agent is stopping"
                        } else {
                            "end of history"
                        }
                        .into(),
                    });
                    return Some((reply(end), (history, rx, Next::Done)));
                };
                let queued = match buffer.try_recv() {
                    Ok(q) => Some(q),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    // Drops after the last record the buffer held have no record to go
                    // before: told as soon as the buffer is empty, and checked again while
                    // nothing comes (the hub adds a drop back an instant after a full
                    // buffer refused it).
                    Err(mpsc::error::TryRecvError::Empty) => loop {
                        let untold = state.untold.swap(0, Ordering::Relaxed);
                        if untold > 0 {
                            let dropped = Reply::Dropped(proto::Dropped { count: untold });
                            return Some((reply(dropped), (history, rx, Next::Live)));
                        }
                        if let Ok(q) = tokio::time::timeout(UNTOLD_CHECK, buffer.recv()).await {
                            break q;
                        }
                    },
                };
                match queued {
                    Some(Queued {
                        missed_before,
                        entry,
                    }) => {
                        let r = record(&entry, &text);
                        if missed_before > 0 {
                            let dropped = Reply::Dropped(proto::Dropped {
                                count: missed_before,
                            });
                            Some((reply(dropped), (history, rx, Next::Pending(r))))
                        } else {
                            sent(&state, &hub);
                            Some((reply(r), (history, rx, Next::Live)))
                        }
                    }
                    None => {
                        // The agent is stopping: what was missed last, then the end.
                        let untold = state.untold.swap(0, Ordering::Relaxed);
                        rx = None;
                        if untold > 0 {
                            let dropped = Reply::Dropped(proto::Dropped { count: untold });
                            Some((reply(dropped), (history, rx, Next::Live)))
                        } else {
                            let end = Reply::End(proto::End {
                                reason: "the agent is stopping".into(),
                            });
                            Some((reply(end), (history, rx, Next::Done)))
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::api::{filter::Filter, history::History, hub::publish_json};

    /// Records dropped after the last one a full buffer held have no record to go before:
    /// the client is told once it has read the buffer, not at the next record (which may
    /// never come).
    #[tokio::test]
    async fn drops_after_the_last_record_are_told_once_the_buffer_is_empty() {
        let hub = Arc::new(Hub::new(History::new(0, 0), 4, 2));
        let all = Filter::parse(&proto::EventsRequest::default()).unwrap();
        let sub = hub.subscribe(all, 0, true, None, 0).unwrap();
        for i in 0..5 {
            publish_json(&hub, &format!(r#"{{"type":"tcp","pid":{i}}}"#));
        }
        let replies: Vec<Reply> = tokio::time::timeout(
            Duration::from_secs(5),
            Box::pin(stream(sub, hub.clone(), None))
                .take(3)
                .collect::<Vec<_>>(),
        )
        .await
        .expect("the drops are told without a further record")
        .into_iter()
        .map(|r| r.unwrap().reply.unwrap())
        .collect();
        assert!(matches!(replies[0], Reply::Record(_)), "{replies:?}");
        assert!(matches!(replies[1], Reply::Record(_)), "{replies:?}");
        assert!(
            matches!(replies[2], Reply::Dropped(proto::Dropped { count: 3 })),
            "{replies:?}"
        );
    }
}
