//! The admin API (default 127.0.0.1:9102): `/status` (the snapshot as JSON), `/metrics` (Prometheus
//! text under HAProxy's exporter names), `/ready`, `POST /reload`, and
//! `POST /servers/<proxy>/<server>/state` with a body of `ready`, `drain` or `maint` (HAProxy's
//! `set server <proxy>/<server> state …`; `GET` on the same path answers the current state); and the
//! read-only metrics listener (default *:9101, where Pigsty scrapes HAProxy): `GET /metrics` only,
//! with optional basic auth.
//!
//! It only reads the [`Status`] snapshot the agent publishes and forwards reloads and state changes
//! over channels, so
//! a slow or hostile client can never stall the agent. The HTTP is hand-rolled and deliberately
//! small (one request per connection, hard limits on size and time, see [`http`]).

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
    time::timeout,
};
use tracing::{debug, warn};

use crate::{
    balance::AdminState,
    control::{ReloadRequest, ServerStateRequest},
    status::Status,
};

pub mod auth;
pub mod http;
pub mod metrics;

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;

pub use auth::BasicAuth;
pub use metrics::render_metrics;

use http::{Request, Response};

/// Time a client has to send its request line and headers (and body).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A reload re-reads and re-plans the inventory; it answers within this or the client hears 504.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
pub use http::MAX_CONNECTIONS;
/// On shutdown, requests in flight get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

struct Shared {
    status: Arc<RwLock<Status>>,
    /// The admin API forwards reloads; the metrics listener has no sender and only reads.
    reload: Option<mpsc::Sender<ReloadRequest>>,
    /// Runtime server states (admin API only).
    states: Option<mpsc::Sender<ServerStateRequest>>,
    auth: Option<BasicAuth>,
}

/// Serves the admin API on `listener` until `shutdown` turns true (or its sender goes away).
pub async fn serve(
    listener: TcpListener,
    status: Arc<RwLock<Status>>,
    reload: mpsc::Sender<ReloadRequest>,
    states: mpsc::Sender<ServerStateRequest>,
    shutdown: watch::Receiver<bool>,
) {
    let shared = Shared {
        status,
        reload: Some(reload),
        states: Some(states),
        auth: None,
    };
    serve_shared(listener, shared, shutdown).await;
}

/// Serves the read-only metrics listener (`GET /metrics` only, behind `auth` when set) until
/// `shutdown` turns true.
pub async fn serve_metrics(
    listener: TcpListener,
    status: Arc<RwLock<Status>>,
    auth: Option<BasicAuth>,
    shutdown: watch::Receiver<bool>,
) {
    let shared = Shared {
        status,
        reload: None,
        states: None,
        auth,
    };
    serve_shared(listener, shared, shutdown).await;
}

async fn serve_shared(listener: TcpListener, shared: Shared, mut shutdown: watch::Receiver<bool>) {
    let shared = Arc::new(shared);
    let slots = http::Connections::new(MAX_CONNECTIONS);
    let mut tasks = JoinSet::new();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = slots.admit() else {
                        debug!(%peer, "admin API: every connection is serving a request, closing this one");
                        continue;
                    };
                    let shared = shared.clone();
                    tasks.spawn(async move {
                        handle_connection(stream, &shared, slot).await;
                    });
                }
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    warn!(%error, "admin API: accept failed");
                    slots.close_oldest_waiting();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(error) = joined {
                    warn!(%error, "admin API: connection task failed");
                }
            }
        }
    }
    let _ = timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
}

async fn handle_connection(mut stream: TcpStream, shared: &Shared, mut slot: http::Admission) {
    let read = slot
        .read(timeout(READ_TIMEOUT, http::read_request(&mut stream)))
        .await;
    let Some(read) = read else {
        debug!("admin API: closing a connection without a request to make room");
        return;
    };
    let response = match read {
        Err(_) => Some((Response::text(408, "timed out reading the request"), false)),
        Ok(Ok(request)) => Some((route(&request, shared).await, request.method == "HEAD")),
        Ok(Err(error)) => {
            debug!(%error, "admin API: bad request");
            error
                .status()
                .map(|code| (Response::text(code, error.to_string()), false))
        }
    };
    let Some((response, head_only)) = response else {
        return;
    };
    let bytes = response.to_bytes(head_only);
    match timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(Ok(())) => drain(&mut stream).await,
        Ok(Err(error)) => debug!(%error, "admin API: writing the response"),
        Err(_) => debug!("admin API: timed out writing the response"),
    }
}

/// Reads what the client still sends (the rest of an oversized head, say) before closing: closing a
/// socket with unread data makes the kernel send a reset, which can destroy the response in flight.
async fn drain(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let mut budget = 1usize << 20;
    let _ = timeout(Duration::from_secs(1), async {
        while budget > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    })
    .await;
}

async fn route(request: &Request, shared: &Shared) -> Response {
    let get = matches!(request.method.as_str(), "GET" | "HEAD");
    let Some(reload_tx) = &shared.reload else {
        return metrics_route(request, shared, get);
    };
    match request.path.as_str() {
        "/status" | "/metrics" | "/ready" if !get => Response::method_not_allowed("GET, HEAD"),
        "/status" => status_json(&snapshot(&shared.status)),
        "/metrics" => Response::new(
            200,
            http::PROMETHEUS,
            render_metrics(&snapshot(&shared.status)),
        ),
        "/ready" => {
            if snapshot_ready(&shared.status) {
                Response::text(200, "ready")
            } else {
                Response::text(503, "not ready: services not yet written to the datapath")
            }
        }
        "/reload" if request.method != "POST" => Response::method_not_allowed("POST"),
        "/reload" => reload(reload_tx).await,
        path if path.starts_with("/servers/") => server_state(request, shared).await,
        _ => Response::text(
            404,
            "not found; try /status, /metrics, /ready, POST /reload or POST /servers/<proxy>/<server>/state",
        ),
    }
}

/// The metrics listener: `GET /metrics` and nothing else, credentials first when configured.
fn metrics_route(request: &Request, shared: &Shared, get: bool) -> Response {
    if let Some(auth) = &shared.auth
        && !auth.accepts(request.authorization.as_deref())
    {
        return Response {
            challenge: true,
            ..Response::text(401, "authentication required")
        };
    }
    match request.path.as_str() {
        "/metrics" if !get => Response::method_not_allowed("GET, HEAD"),
        "/metrics" => Response::new(
            200,
            http::PROMETHEUS,
            render_metrics(&snapshot(&shared.status)),
        ),
        _ => Response::text(404, "not found; this listener serves GET /metrics only"),
    }
}

/// A copy of the snapshot, so rendering never holds the lock the agent writes under. A poisoned
/// lock still holds a whole snapshot (the agent replaces it in one assignment).
fn snapshot(status: &RwLock<Status>) -> Status {
    match status.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn snapshot_ready(status: &RwLock<Status>) -> bool {
    match status.read() {
        Ok(guard) => guard.ready,
        Err(poisoned) => poisoned.into_inner().ready,
    }
}

fn status_json(status: &Status) -> Response {
    match serde_json::to_vec_pretty(status) {
        Ok(mut body) => {
            body.push(b'\n');
            Response::new(200, http::JSON, body)
        }
        Err(error) => Response::text(500, format!("serialising the status: {error}")),
    }
}

async fn reload(agent: &mpsc::Sender<ReloadRequest>) -> Response {
    let (reply, answer) = oneshot::channel();
    match timeout(RELOAD_TIMEOUT, agent.send(ReloadRequest { reply })).await {
        Err(_) => return Response::text(503, "the agent is busy: too many reloads queued"),
        Ok(Err(_)) => {
            return Response::text(503, "the agent is not accepting reloads (shutting down)");
        }
        Ok(Ok(())) => {}
    }
    match timeout(RELOAD_TIMEOUT, answer).await {
        Err(_) => Response::text(
            504,
            format!(
                "the reload did not finish within {}s",
                RELOAD_TIMEOUT.as_secs()
            ),
        ),
        Ok(Err(_)) => Response::text(503, "the agent dropped the reload request (shutting down?)"),
        Ok(Ok(Ok(summary))) => Response::text(200, summary.to_string()),
        Ok(Ok(Err(error))) => Response::text(422, error.to_string()),
    }
}

/// `/servers/<proxy>/<server>/state`: GET answers the state, POST sets the one in the body.
async fn server_state(request: &Request, shared: &Shared) -> Response {
    let parts: Vec<&str> = request.path.split('/').collect();
    let ["", "servers", proxy, server, "state"] = parts.as_slice() else {
        return Response::text(
            404,
            "not found; the path is /servers/<proxy>/<server>/state",
        );
    };
    if proxy.is_empty() || server.is_empty() {
        return Response::text(
            404,
            "not found; the path is /servers/<proxy>/<server>/state",
        );
    }
    match request.method.as_str() {
        "GET" | "HEAD" => current_state(&snapshot(&shared.status), proxy, server),
        "POST" => {
            let body = String::from_utf8_lossy(&request.body);
            match body.parse::<AdminState>() {
                Ok(state) => match &shared.states {
                    Some(states) => set_state(states, proxy, server, state).await,
                    None => Response::text(404, "not found"),
                },
                Err(e) => Response::text(400, e.to_string()),
            }
        }
        _ => Response::method_not_allowed("GET, HEAD, POST"),
    }
}

fn current_state(status: &Status, proxy: &str, server: &str) -> Response {
    let Some(svc) = status.services.iter().find(|s| s.name == proxy) else {
        return Response::text(404, format!("no proxy (service) named {proxy:?}"));
    };
    match svc.servers.iter().find(|s| s.name == server) {
        Some(srv) => Response::text(200, srv.admin_state.as_str()),
        None => Response::text(404, format!("proxy {proxy} has no server named {server:?}")),
    }
}

async fn set_state(
    agent: &mpsc::Sender<ServerStateRequest>,
    proxy: &str,
    server: &str,
    state: AdminState,
) -> Response {
    let (reply, answer) = oneshot::channel();
    let req = ServerStateRequest {
        proxy: proxy.to_owned(),
        server: server.to_owned(),
        state,
        reply,
    };
    match timeout(RELOAD_TIMEOUT, agent.send(req)).await {
        Err(_) => return Response::text(503, "the agent is busy: too many requests queued"),
        Ok(Err(_)) => {
            return Response::text(503, "the agent is not accepting requests (shutting down)");
        }
        Ok(Ok(())) => {}
    }
    match timeout(RELOAD_TIMEOUT, answer).await {
        Err(_) => Response::text(504, "the agent did not answer in time"),
        Ok(Err(_)) => Response::text(503, "the agent dropped the request (shutting down?)"),
        Ok(Ok(Ok(change))) => Response::text(200, change.to_string()),
        Ok(Ok(Err(error))) if error.is_not_found() => Response::text(404, error.to_string()),
        Ok(Ok(Err(error))) => Response::text(422, error.to_string()),
    }
}
