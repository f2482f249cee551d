//! The watch of one cluster's keys: connect (TLS, RBAC user), read the cluster's prefix (the leader
//! key, Patroni's `/failover` request and its `failsafe_mode` and `pause`, see [`super::keys`]),
//! watch the prefix from the next revision, ask for a progress answer every second (so a dead
//! etcd is noticed within [`SILENCE_LIMIT`]), re-read in full every [`FULL_READ_EVERY`] (a lost event
//! is corrected there), and start over on a cancelled or compacted watch. Every observation goes to
//! the agent as a [`DcsUpdate`]; while etcd cannot be reached the view is
//! [`LeaderView::Fallback`] with the reason, and the task keeps retrying every [`RETRY_EVERY`].
//!
//! After a lost connection the watch resumes at the revision after the last one seen (and reads the
//! key again beside it, so the view is current at once): when etcd compacted past that revision
//! meanwhile, it cancels the resumed watch with the compact revision, and the task logs that and
//! starts over with a fresh read.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
};
use thiserror::Error;
use tokio::{sync::mpsc, task::JoinHandle, time::timeout};
use tracing::{debug, info, warn};

use super::{
    DcsUpdate, EtcdSettings, LeaderView,
    keys::{ClusterKeys, prefix},
};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);
pub const FULL_READ_EVERY: Duration = Duration::from_secs(5);
/// No answer on the watch stream for this long, although progress is asked for every second: etcd
/// is gone (or partitioned away from this node).
pub const SILENCE_LIMIT: Duration = Duration::from_secs(3);
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Why etcd could not be read. [`DcsError::is_fatal`] errors are configuration mistakes that no
/// retry fixes: `pgsvc run` refuses to start with them rather than fall back silently.
#[derive(Debug, Error)]
pub enum DcsError {
    #[error("etcd refused the credentials of user {user:?}: {message}")]
    Credentials { user: String, message: String },
    #[error("TLS with etcd at {endpoints} failed: {message}")]
    Tls { endpoints: String, message: String },
    #[error("{path}: cannot read the etcd {what}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd at {endpoints} is unreachable: {message}")]
    Unreachable { endpoints: String, message: String },
    #[error("etcd at {endpoints} answered with an error: {message}")]
    Etcd { endpoints: String, message: String },
}

impl DcsError {
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Credentials { .. } | Self::Tls { .. } | Self::File { .. }
        )
    }
}

/// Connects and reads the leader key once: what `pgsvc run` checks before touching the kernel.
///
/// # Errors
/// As [`DcsError`]; only [`DcsError::is_fatal`] ones should stop a start.
pub async fn probe(cluster: &str, s: &EtcdSettings) -> Result<Option<String>, DcsError> {
    let mut client = connect(s).await?;
    read(&mut client, s, cluster).await.map(|r| r.keys.holder)
}

/// Starts the watch of `cluster`'s leader key; updates go to `tx` until the task is aborted.
pub fn spawn_watch(
    cluster: String,
    settings: EtcdSettings,
    tx: mpsc::UnboundedSender<DcsUpdate>,
) -> JoinHandle<()> {
    tokio::spawn(async move { run(cluster, settings, tx).await })
}

async fn run(cluster: String, s: EtcdSettings, tx: mpsc::UnboundedSender<DcsUpdate>) {
    let mut last_error: Option<String> = None;
    // The last revision seen: where a watch resumes after a lost connection.
    let mut resume: Option<i64> = None;
    loop {
        match connect(&s).await {
            Ok(mut client) => {
                if last_error.take().is_some() {
                    info!(cluster, "etcd reachable again");
                }
                loop {
                    match session(&mut client, &s, &cluster, &tx, &mut resume).await {
                        Ended::Resync(reason) => {
                            warn!(cluster, reason, "re-reading the leader key");
                            resume = None;
                        }
                        Ended::Lost(e) => {
                            report(&cluster, &e, &mut last_error, &tx);
                            break;
                        }
                        Ended::AgentGone => return,
                    }
                }
            }
            Err(e) => report(&cluster, &e, &mut last_error, &tx),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

fn report(
    cluster: &str,
    e: &DcsError,
    last: &mut Option<String>,
    tx: &mpsc::UnboundedSender<DcsUpdate>,
) {
    let message = e.to_string();
    if last.as_deref() != Some(message.as_str()) {
        if e.is_fatal() {
            // Credentials, certificates: no retry fixes these; the agent logs the fallback too.
            warn!(cluster, error = %message, "etcd refuses the watch: check the --etcd-* settings");
        } else {
            debug!(cluster, error = %message, "etcd watch failed");
        }
    }
    *last = Some(message.clone());
    let _ = tx.send(DcsUpdate {
        cluster: cluster.to_owned(),
        view: LeaderView::Fallback(message),
        leaving: None,
        endpoint: None,
        revision: 0,
        confirmed: Instant::now(),
    });
}

enum Ended {
    /// Read again and watch anew (cancelled or compacted watch, a full read that disagrees).
    Resync(String),
    Lost(DcsError),
    AgentGone,
}

/// The cluster's keys at a revision.
struct Read {
    keys: ClusterKeys,
    revision: i64,
}

/// The update for `keys` at `revision`, and when to look again (a scheduled switchover).
fn update(
    cluster: &str,
    endpoint: &str,
    keys: &ClusterKeys,
    revision: i64,
) -> (DcsUpdate, Option<SystemTime>) {
    let (leaving, again) = keys.leaving(SystemTime::now());
    let u = DcsUpdate {
        cluster: cluster.to_owned(),
        view: keys.view(),
        leaving,
        endpoint: Some(endpoint.to_owned()),
        revision,
        confirmed: Instant::now(),
    };
    (u, again)
}

/// A scheduled switchover's time as a deadline of the runtime's clock.
fn deadline(at: Option<SystemTime>) -> Option<tokio::time::Instant> {
    let wait = at?.duration_since(SystemTime::now()).unwrap_or_default();
    // A millisecond late rather than early: the holder's step-down is decided on the wall clock.
    Some(tokio::time::Instant::now() + wait + Duration::from_millis(1))
}

/// One watch: from `resume + 1` when set (a connection was lost: the watch resumes where it was,
/// and the key is read beside it), else from a fresh read. `resume` follows every revision seen.
async fn session(
    client: &mut Client,
    s: &EtcdSettings,
    cluster: &str,
    tx: &mpsc::UnboundedSender<DcsUpdate>,
    resume: &mut Option<i64>,
) -> Ended {
    let endpoint = s.endpoints.join(",");
    let mut due: Option<tokio::time::Instant> = None;
    let send = |keys: &ClusterKeys, revision: i64, due: &mut Option<tokio::time::Instant>| {
        let (u, again) = update(cluster, &endpoint, keys, revision);
        *due = deadline(again);
        tx.send(u).is_ok()
    };
    let pfx = prefix(&s.namespace, cluster);
    let watch = async |client: &mut Client, from: i64| {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        match timeout(REQUEST_TIMEOUT, client.watch(pfx.as_str(), Some(opts))).await {
            Ok(Ok(w)) => Ok(w),
            Ok(Err(e)) => Err(classify(s, e)),
            Err(_) => Err(silent(s, REQUEST_TIMEOUT)),
        }
    };
    // Resuming: the watch first (from the last revision seen, so that etcd says whether it still
    // has the history since), then the read that makes the view current.
    let resumed = match *resume {
        Some(r) => match watch(client, r + 1).await {
            Ok(w) => Some(w),
            Err(e) => return Ended::Lost(e),
        },
        None => None,
    };
    let first = match read(client, s, cluster).await {
        Ok(r) => r,
        Err(e) => return Ended::Lost(e),
    };
    let (mut keys, mut revision) = (first.keys, first.revision);
    // Events at or below the revision of the last full read adopted are already in `keys`.
    let mut floor = revision;
    // The revision the watch started after (the read's, or the one resumed from).
    let watched_from = resume.unwrap_or(revision) + 1;
    *resume = Some(revision);
    if !send(&keys, revision, &mut due) {
        return Ended::AgentGone;
    }
    let mut stream = match resumed {
        Some(w) => w,
        None => match watch(client, revision + 1).await {
            Ok(w) => w,
            Err(e) => return Ended::Lost(e),
        },
    };
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut full = tokio::time::interval(FULL_READ_EVERY);
    full.tick().await;
    let mut last_answer = Instant::now();
    loop {
        let at = due;
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ended::Lost(DcsError::Unreachable {
                        endpoints: endpoint.clone(),
                        message: "etcd closed the watch stream".to_owned(),
                    }),
                    Err(e) => return Ended::Lost(classify(s, e)),
                };
                last_answer = Instant::now();
                if resp.canceled() {
                    return Ended::Resync(if resp.compact_revision() > 0 {
                        format!(
                            "etcd compacted past the watched revision {watched_from} (oldest kept: {})",
                            resp.compact_revision()
                        )
                    } else {
                        format!("etcd cancelled the watch: {}", resp.cancel_reason())
                    });
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    // A resumed watch replays what the read already reflects: only newer events count.
                    if kv.mod_revision() <= floor {
                        continue;
                    }
                    revision = revision.max(kv.mod_revision());
                    let value = match ev.event_type() {
                        EventType::Put => Some(kv.value()),
                        EventType::Delete => None,
                    };
                    keys.apply(&pfx, kv.key(), value);
                }
                if let Some(h) = resp.header() {
                    revision = revision.max(h.revision());
                }
                *resume = Some(revision);
                if !send(&keys, revision, &mut due) {
                    return Ended::AgentGone;
                }
            }
            () = async { tokio::time::sleep_until(at.unwrap_or_else(tokio::time::Instant::now)).await },
                if at.is_some() =>
            {
                // A scheduled switchover is due: the holder steps down now.
                if !send(&keys, revision, &mut due) {
                    return Ended::AgentGone;
                }
            }
            _ = progress.tick() => {
                if last_answer.elapsed() > SILENCE_LIMIT {
                    return Ended::Lost(silent(s, SILENCE_LIMIT));
                }
                if let Err(e) = stream.request_progress().await {
                    return Ended::Lost(classify(s, e));
                }
            }
            _ = full.tick() => {
                let r = match read(client, s, cluster).await {
                    Ok(r) => r,
                    Err(e) => return Ended::Lost(e),
                };
                if r.revision >= revision {
                    if r.keys.holder != keys.holder {
                        return Ended::Resync(format!(
                            "a full read found leader {:?} where the watch said {:?} (a lost event)",
                            r.keys.holder, keys.holder
                        ));
                    }
                    if r.keys != keys && r.revision == revision {
                        warn!(cluster, "a full read corrected the failover or config key (a lost event)");
                    }
                    keys = r.keys;
                    revision = r.revision;
                    floor = r.revision;
                }
                *resume = Some(revision);
                if !send(&keys, revision, &mut due) {
                    return Ended::AgentGone;
                }
            }
        }
    }
}

/// Reads the cluster's prefix in one request (one revision): the leader key, the failover request
/// and the configuration.
async fn read(client: &mut Client, s: &EtcdSettings, cluster: &str) -> Result<Read, DcsError> {
    let pfx = prefix(&s.namespace, cluster);
    let opts = GetOptions::new().with_prefix();
    let resp = match timeout(REQUEST_TIMEOUT, client.get(pfx.as_str(), Some(opts))).await {
        Ok(r) => r.map_err(|e| classify(s, e))?,
        Err(_) => return Err(silent(s, REQUEST_TIMEOUT)),
    };
    let revision = resp
        .header()
        .map_or(0, etcd_client::ResponseHeader::revision);
    let mut keys = ClusterKeys::default();
    for kv in resp.kvs() {
        keys.apply(&pfx, kv.key(), Some(kv.value()));
    }
    Ok(Read { keys, revision })
}

fn silent(s: &EtcdSettings, after: Duration) -> DcsError {
    DcsError::Unreachable {
        endpoints: s.endpoints.join(","),
        message: format!("no answer within {after:?}"),
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, DcsError> {
    std::fs::read(path).map_err(|source| DcsError::File {
        what,
        path: path.to_owned(),
        source,
    })
}

fn options(s: &EtcdSettings) -> Result<ConnectOptions, DcsError> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_auto_token_refresh(true);
    if s.ca.is_some() || s.identity.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &s.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read_file("CA", ca)?));
        }
        if let Some((cert, key)) = &s.identity {
            tls = tls.identity(Identity::from_pem(
                read_file("client certificate", cert)?,
                read_file("client key", key)?,
            ));
        }
        o = o.with_tls(tls);
    }
    Ok(o)
}

/// Connects, logging in as the RBAC user when etcd has authentication on (an etcd without it, such
/// as a test cluster, is read without credentials).
async fn connect(s: &EtcdSettings) -> Result<Client, DcsError> {
    let base = options(s)?;
    let attempt = |o: ConnectOptions| async move {
        match timeout(
            CONNECT_TIMEOUT + REQUEST_TIMEOUT,
            Client::connect(&s.endpoints, Some(o)),
        )
        .await
        {
            Ok(r) => r.map_err(|e| classify(s, e)),
            Err(_) => Err(silent(s, CONNECT_TIMEOUT + REQUEST_TIMEOUT)),
        }
    };
    let Some((user, password)) = &s.user else {
        return attempt(base).await;
    };
    match attempt(base.clone().with_user(user, password)).await {
        Err(DcsError::Etcd { message, .. })
            if message.contains("authentication is not enabled") =>
        {
            debug!("etcd has no authentication enabled: reading without credentials");
            attempt(base).await
        }
        other => other,
    }
}

/// The error and its causes in one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

fn classify(s: &EtcdSettings, e: etcd_client::Error) -> DcsError {
    let endpoints = s.endpoints.join(",");
    let user = s.user.as_ref().map_or_else(String::new, |(u, _)| u.clone());
    match e {
        etcd_client::Error::GRpcStatus(st) => {
            let message = st.message().to_owned();
            let lower = message.to_ascii_lowercase();
            let code = st.code() as i32;
            let denied = matches!(
                code,
                tonic_code::UNAUTHENTICATED | tonic_code::PERMISSION_DENIED
            ) || lower.contains("authentication failed")
                || lower.contains("invalid user id or password")
                || lower.contains("permission denied");
            if denied {
                DcsError::Credentials { user, message }
            } else if matches!(
                code,
                tonic_code::CANCELLED
                    | tonic_code::UNKNOWN
                    | tonic_code::DEADLINE_EXCEEDED
                    | tonic_code::INTERNAL
                    | tonic_code::UNAVAILABLE
            ) {
                // The connection broke (a stopped etcd shows as an h2 error on the open stream).
                let message = chain(&st);
                if is_tls(&message) {
                    DcsError::Tls { endpoints, message }
                } else {
                    DcsError::Unreachable { endpoints, message }
                }
            } else {
                DcsError::Etcd { endpoints, message }
            }
        }
        other => {
            let message = chain(&other);
            if is_tls(&message) {
                DcsError::Tls { endpoints, message }
            } else {
                DcsError::Unreachable { endpoints, message }
            }
        }
    }
}

fn is_tls(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    // A peer gone mid-stream (etcd killed) is no TLS problem, though rustls names TLS in it.
    !m.contains("close_notify")
        && ["certificate", "tls", "handshake", "unknownissuer", "x509"]
            .iter()
            .any(|w| m.contains(w))
}

/// gRPC status codes (the numbers of tonic's `Code`, which etcd-client does not re-export).
mod tonic_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

#[cfg(test)]
mod tests;
