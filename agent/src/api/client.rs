//! The client side of the API (`hostscope events`, `hostscope status`): connects over the
//! Unix socket and turns every way it can fail into an error that says what to do.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::{transport::Channel, Code, Status};

use super::{
    proto::{agent_client::AgentClient, EventsReply, EventsRequest, StatusReply, StatusRequest},
    API_PACKAGE, API_VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no hostscope agent at {0}: the socket does not exist (is `hostscope run` running, with the API on? another socket: --socket PATH)")]
    NoSocket(PathBuf),
    #[error("no hostscope agent listens at {0} (a socket left by an agent that stopped?)")]
    NotListening(PathBuf),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("the agent at {path} speaks API v{theirs}; this hostscope speaks v{API_VERSION}")]
    Version { path: PathBuf, theirs: u32 },
    #[error("the agent at {0} does not implement {API_PACKAGE} (an agent of another API version?); this hostscope speaks v{API_VERSION}")]
    Unimplemented(PathBuf),
    #[error("bad filter: {0}")]
    BadFilter(String),
    #[error("the agent refused the stream: {0}")]
    Busy(String),
    #[error("the agent is not available: {0}")]
    Unavailable(String),
    #[error("connecting to {path}: {message}")]
    Connect { path: PathBuf, message: String },
    #[error("the agent answered: {0}")]
    Other(String),
}

/// A connection to the agent's API.
pub struct Client {
    path: PathBuf,
    grpc: AgentClient<Channel>,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        // Connected here for an error that names the cause; the channel's first
        // connection is this one (the agent counts every connection).
        let first = match UnixStream::connect(path).await {
            Ok(s) => s,
            Err(e) => {
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound => ClientError::NoSocket(path.to_path_buf()),
                    std::io::ErrorKind::ConnectionRefused => {
                        ClientError::NotListening(path.to_path_buf())
                    }
                    std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(format!(
                        "cannot open {}: the hostscope API serves root (and members of the agent's api.allowed_group) only",
                        path.display()
                    )),
                    _ => ClientError::Connect {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    },
                })
            }
        };
        let first = std::sync::Arc::new(std::sync::Mutex::new(Some(first)));
        let socket = path.to_path_buf();
        // The URI is required by the HTTP layer and unused: the connector dials the socket.
        let channel = tonic::transport::Endpoint::from_static("http://hostscope.local")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                let first = first.lock().ok().and_then(|mut f| f.take());
                async move {
                    let stream = match first {
                        Some(s) => s,
                        None => UnixStream::connect(socket).await?,
                    };
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| ClientError::Connect {
                path: path.to_path_buf(),
                message: format!("{e}"),
            })?;
        Ok(Client {
            path: path.to_path_buf(),
            grpc: AgentClient::new(channel),
        })
    }

    fn error(&self, s: Status) -> ClientError {
        let message = s.message().to_string();
        match s.code() {
            Code::PermissionDenied => ClientError::PermissionDenied(
                message
                    .strip_prefix("permission denied: ")
                    .unwrap_or(&message)
                    .to_string(),
            ),
            Code::InvalidArgument => ClientError::BadFilter(message),
            Code::ResourceExhausted => ClientError::Busy(message),
            Code::Unimplemented => ClientError::Unimplemented(self.path.clone()),
            Code::Unavailable => ClientError::Unavailable(message),
            _ => ClientError::Other(format!("{:?}: {message}", s.code())),
        }
    }

    /// The stream of records that match `request`.
    pub async fn events(
        &mut self,
        request: EventsRequest,
    ) -> Result<tonic::Streaming<EventsReply>, ClientError> {
        match self.grpc.get_events(request).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.error(s)),
        }
    }

    /// The next message of an events stream; `None` at its end.
    pub async fn next(
        &self,
        stream: &mut tonic::Streaming<EventsReply>,
    ) -> Result<Option<EventsReply>, ClientError> {
        stream.message().await.map_err(|s| self.error(s))
    }

    /// The agent's status, after checking it speaks this API version.
    pub async fn status(&mut self) -> Result<StatusReply, ClientError> {
        let reply = match self.grpc.get_status(StatusRequest {}).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(self.error(s)),
        };
        if reply.api_version != API_VERSION {
            return Err(ClientError::Version {
                path: self.path.clone(),
                theirs: reply.api_version,
            });
        }
        Ok(reply)
    }
}
