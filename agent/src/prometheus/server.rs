//! The HTTP side: hyper's HTTP/1 server on the bound listener, three GET paths, bounded
//! connections and deadlines so that a slow or hostile client costs a task, never the
//! agent's loops.

use std::{
    convert::Infallible,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header, Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};

use super::{
    exposition::{self, Format, Snapshot},
    health, records, Counts,
};
use crate::status::StatusHandle;

/// Connections served at once; more are closed at once (and counted): scrapers and
/// probes need a handful.
const MAX_CONNECTIONS: usize = 32;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection lives at most this long (a client that reads the answer slowly, or keeps
/// an idle connection, is cut).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// The status the endpoints wait for; a run loop slower than this is not turning. Below
/// the kubelet's default probe timeout (1 s) plus slack, so the probe reads our body.
pub const STATUS_WAIT: Duration = Duration::from_millis(900);

pub struct State {
    pub status: StatusHandle,
    pub records: Option<records::Aggregation>,
    pub counts: Arc<Counts>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                // Out of file descriptors and the like: try again shortly.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = crate::sink::stopping(&mut stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state.counts.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(|req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if tokio::time::timeout(CONNECTION_DEADLINE, conn)
                .await
                .is_err()
            {
                state.counts.timed_out.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    connections.shutdown().await;
}

type Answer = Response<Full<Bytes>>;

fn text(code: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(state: &State, req: Request<Incoming>) -> Answer {
    let counts = &state.counts;
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        counts.not_found.fetch_add(1, Ordering::Relaxed);
        return text(
            StatusCode::NOT_FOUND,
            format!("no such path: {path} (try /metrics, /healthz or /readyz)\n"),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        counts.bad_method.fetch_add(1, Ordering::Relaxed);
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {path}: only GET and HEAD are served\n", req.method()),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let started = Instant::now();
    let status = tokio::time::timeout(STATUS_WAIT, state.status.get())
        .await
        .ok()
        .flatten();
    if status.is_none() {
        counts.status_missing.fetch_add(1, Ordering::Relaxed);
    }
    let code = |ok| {
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    match path {
        "/healthz" => {
            let v = health::healthz(status.as_ref(), started.elapsed(), STATUS_WAIT);
            text(code(v.ok), v.body)
        }
        "/readyz" => {
            let v = health::readyz(status.as_ref());
            text(code(v.ok), v.body)
        }
        _ => {
            counts.scrapes.fetch_add(1, Ordering::Relaxed);
            let format = Format::negotiate(
                req.headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            let (records, series_overflow) = match &state.records {
                Some(agg) => records::read(agg),
                None => (Vec::new(), 0),
            };
            let snapshot = Snapshot {
                status,
                records,
                series_overflow,
            };
            match exposition::encode(snapshot, format) {
                Ok(body) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(format.content_type()),
                    );
                    r
                }
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding the metrics failed\n",
                ),
            }
        }
    }
}
