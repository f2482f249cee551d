//! The Patroni prober: one `OPTIONS <check>` request per call over HTTP/1.1 (keep-alive, optional TLS),
//! classified the way HAProxy reports check results. Healthy only on exactly 200 — like HAProxy's
//! `http-check expect status 200`, a redirect or any other status is a failure.
//!
//! Patroni answers OPTIONS with a bare `HTTP/1.0 200 OK\r\n\r\n`: no body, no Content-Length, so the
//! body is close-delimited. The verdict is taken from the status line alone; the body is never
//! awaited, so a server that keeps such a socket open cannot stall the check.

use std::error::Error as _;
use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};

/// Why a check failed, with HAProxy's vocabulary. `Display` gives the short reason used in logs and
/// the admin API ("L7 status 503", "L4 timeout", …).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailure {
    /// The TCP connection was not established within the check timeout.
    #[error("L4 timeout")]
    L4Timeout,
    #[error("L4 connection refused")]
    L4Refused,
    /// Any other connect-level failure (unreachable, reset during connect, …).
    #[error("L4 connection problem: {detail}")]
    L4Error { detail: String },
    /// The TLS handshake failed (bad certificate, not TLS, …).
    #[error("L6 TLS error: {detail}")]
    Tls { detail: String },
    /// Connected, but no complete response head within the check timeout.
    #[error("L7 timeout")]
    L7Timeout,
    /// A well-formed response whose status is not 200 (redirects included).
    #[error("L7 status {code}")]
    L7Status { code: u16 },
    /// Bytes that are not an HTTP response.
    #[error("L7 response error: invalid HTTP response ({detail})")]
    InvalidResponse { detail: String },
    /// The server closed the connection before a complete response head.
    #[error("L7 response error: connection closed")]
    ConnectionClosed,
    /// The request could not be sent for a local reason.
    #[error("socket error: {detail}")]
    Socket { detail: String },
}

/// The parts HAProxy prints in its check log lines and the stats `check_status` field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaproxyStatus {
    /// Stats short code: `L7OK`, `L7STS`, `L4TOUT`, …
    pub code_name: &'static str,
    /// Log description: "Layer7 wrong status", …
    pub description: &'static str,
    /// HTTP status, when there was one.
    pub code: Option<u16>,
    /// Extra detail ("Service Unavailable", "Connection refused", …).
    pub info: Option<String>,
}

impl CheckFailure {
    /// How HAProxy would name this failure.
    #[must_use]
    pub fn haproxy_status(&self) -> HaproxyStatus {
        let (code_name, description, code, info) = match self {
            Self::L4Timeout => ("L4TOUT", "Layer4 timeout", None, None),
            Self::L4Refused => (
                "L4CON",
                "Layer4 connection problem",
                None,
                Some("Connection refused".to_owned()),
            ),
            Self::L4Error { detail } => (
                "L4CON",
                "Layer4 connection problem",
                None,
                Some(detail.clone()),
            ),
            Self::Tls { detail } => (
                "L6RSP",
                "Layer6 invalid response",
                None,
                Some(detail.clone()),
            ),
            Self::L7Timeout => ("L7TOUT", "Layer7 timeout", None, None),
            Self::L7Status { code } => (
                "L7STS",
                "Layer7 wrong status",
                Some(*code),
                StatusCode::from_u16(*code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .map(str::to_owned),
            ),
            Self::InvalidResponse { detail } => (
                "L7RSP",
                "Layer7 invalid response",
                None,
                Some(detail.clone()),
            ),
            Self::ConnectionClosed => (
                "L7RSP",
                "Layer7 invalid response",
                None,
                Some("connection closed".to_owned()),
            ),
            Self::Socket { detail } => ("SOCKERR", "Socket error", None, Some(detail.clone())),
        };
        HaproxyStatus {
            code_name,
            description,
            code,
            info,
        }
    }
}

/// The status HAProxy reports for a passed HTTP check.
#[must_use]
pub fn haproxy_passed_status() -> HaproxyStatus {
    HaproxyStatus {
        code_name: "L7OK",
        description: "Layer7 check passed",
        code: Some(200),
        info: None,
    }
}

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    /// From sending the request (connect included) to the response head or the failure.
    pub duration: Duration,
    pub result: Result<(), CheckFailure>,
}

impl CheckOutcome {
    #[must_use]
    pub fn passed(&self) -> bool {
        self.result.is_ok()
    }

    /// HAProxy's view of this result (for log lines and metrics).
    #[must_use]
    pub fn haproxy_status(&self) -> HaproxyStatus {
        match &self.result {
            Ok(()) => haproxy_passed_status(),
            Err(f) => f.haproxy_status(),
        }
    }
}

/// TLS settings of checks made with `check_tls` (Patroni's `patroni_ssl_enabled`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// CA bundle (PEM) that signs Patroni's certificate; Pigsty uses `/pg/cert/ca.crt`. `None` trusts
    /// the built-in web roots, which a Patroni certificate will rarely chain to.
    pub ca_file: Option<PathBuf>,
    /// Check that the certificate names the address. HAProxy's `check-ssl ca-file` verifies the chain
    /// only (no `verifyhost`), so this is off by default for parity.
    pub verify_hostname: bool,
}

/// Errors building a prober (configuration problems, reported before any check runs).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("check URI {uri:?} must start with '/'")]
    InvalidUri { uri: String },
    #[error("reading the check CA file {path}")]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the check CA file {path} holds no usable PEM certificate")]
    InvalidCaFile {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("building the HTTP client for {url}")]
    BuildClient {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// Bodies up to this size (with a Content-Length) are drained so the connection can be reused.
const MAX_DRAINED_BODY: u64 = 64 * 1024;

/// Probes one (address, port, URI, TLS) with a fixed timeout.
#[derive(Clone, Debug)]
pub struct Prober {
    client: Client,
    url: String,
    timeout: Duration,
}

impl Prober {
    /// Builds the prober. `timeout` bounds the whole check (connect, TLS, response head).
    ///
    /// # Errors
    /// A URI that does not start with `/`, an unreadable or invalid CA file, or a client that cannot
    /// be built.
    pub fn new(
        addr: Ipv4Addr,
        port: u16,
        uri: &str,
        tls: Option<&TlsSettings>,
        timeout: Duration,
    ) -> Result<Self, ProbeError> {
        if !uri.starts_with('/') {
            return Err(ProbeError::InvalidUri {
                uri: uri.to_owned(),
            });
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}:{port}{uri}");
        let mut builder = Client::builder()
            // A health check must hit the server itself, never a proxy from the environment.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            // The connect deadline sits a little before the overall one, so a SYN that is never
            // answered is reported as an L4 timeout rather than racing the L7 timer.
            .connect_timeout(connect_timeout(timeout));
        if let Some(tls) = tls {
            builder = builder
                .https_only(true)
                .danger_accept_invalid_hostnames(!tls.verify_hostname);
            if let Some(path) = &tls.ca_file {
                builder = builder
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(read_ca(path)?);
            }
        }
        let client = builder.build().map_err(|source| ProbeError::BuildClient {
            url: url.clone(),
            source,
        })?;
        Ok(Self {
            client,
            url,
            timeout,
        })
    }

    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs one check. Never fails as a call: every problem is a [`CheckFailure`] in the outcome.
    pub async fn probe(&self) -> CheckOutcome {
        let start = Instant::now();
        let sent = self
            .client
            .request(Method::OPTIONS, &self.url)
            .timeout(self.timeout)
            .send()
            .await;
        let duration = start.elapsed();
        let result = match sent {
            Ok(response) if response.status() == StatusCode::OK => {
                drain_small_body(response, self.timeout.saturating_sub(duration)).await;
                Ok(())
            }
            Ok(response) => Err(CheckFailure::L7Status {
                code: response.status().as_u16(),
            }),
            Err(err) => Err(classify(&err)),
        };
        CheckOutcome { duration, result }
    }
}

impl Prober {
    /// `GET` of the URL: the status and the body (at most 64 KiB), within the timeout. For reading
    /// Patroni's state (`/patroni`), not for checks (those are HAProxy's `OPTIONS`, status only).
    ///
    /// # Errors
    /// The request failed or timed out, or the body is larger than 64 KiB.
    pub async fn get(&self) -> Result<(u16, Vec<u8>), CheckFailure> {
        let fetch = async {
            let response = self
                .client
                .get(&self.url)
                .send()
                .await
                .map_err(|e| classify(&e))?;
            let status = response.status().as_u16();
            if response
                .content_length()
                .is_some_and(|len| len > MAX_DRAINED_BODY)
            {
                return Err(CheckFailure::L7Status { code: status });
            }
            let body = response.bytes().await.map_err(|e| classify(&e))?;
            if body.len() as u64 > MAX_DRAINED_BODY {
                return Err(CheckFailure::L7Status { code: status });
            }
            Ok((status, body.to_vec()))
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .unwrap_or(Err(CheckFailure::L7Timeout))
    }
}

/// Reads a short, length-delimited body so the keep-alive connection goes back to the pool. The
/// verdict is already taken: errors and timeouts here only cost the connection.
async fn drain_small_body(response: reqwest::Response, budget: Duration) {
    if response
        .content_length()
        .is_some_and(|len| len > 0 && len <= MAX_DRAINED_BODY)
    {
        let _ = tokio::time::timeout(budget, response.bytes()).await;
    }
}

fn connect_timeout(total: Duration) -> Duration {
    let margin = (total / 10).min(Duration::from_millis(100));
    total.saturating_sub(margin).max(Duration::from_millis(1))
}

fn read_ca(path: &Path) -> Result<reqwest::Certificate, ProbeError> {
    let pem = std::fs::read(path).map_err(|source| ProbeError::ReadCaFile {
        path: path.to_owned(),
        source,
    })?;
    reqwest::Certificate::from_pem(&pem).map_err(|source| ProbeError::InvalidCaFile {
        path: path.to_owned(),
        source,
    })
}

/// Maps a reqwest error onto HAProxy's result classes. reqwest exposes the phase (connect or not) and
/// timeouts; the rest is read from the source chain (io kinds first, hyper's message as a last resort
/// because hyper is not a direct dependency).
fn classify(err: &reqwest::Error) -> CheckFailure {
    let kinds = io_kinds(err);
    let detail = innermost_message(err);
    if err.is_timeout() {
        return if err.is_connect() {
            CheckFailure::L4Timeout
        } else {
            CheckFailure::L7Timeout
        };
    }
    if err.is_connect() {
        if kinds.contains(&io::ErrorKind::ConnectionRefused) {
            return CheckFailure::L4Refused;
        }
        // tokio-rustls reports handshake failures (bad certificate, non-TLS peer) as InvalidData.
        if kinds.contains(&io::ErrorKind::InvalidData) {
            return CheckFailure::Tls { detail };
        }
        return CheckFailure::L4Error { detail };
    }
    if err.is_builder() {
        return CheckFailure::Socket { detail };
    }
    let closed = kinds.iter().any(|k| {
        matches!(
            k,
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
        )
    }) || chain_text(err).contains("connection closed");
    if closed {
        CheckFailure::ConnectionClosed
    } else {
        CheckFailure::InvalidResponse { detail }
    }
}

/// The errors below `err`, outermost first. An `io::Error` wrapping another error reports that
/// error's *source* as its own, skipping the wrapped error itself (where tokio-rustls keeps the
/// `InvalidData` kind), so descend through `get_ref` instead.
fn causes(err: &reqwest::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = err.source();
    while let Some(e) = next {
        out.push(e);
        if out.len() > 32 {
            break;
        }
        next = match e.downcast_ref::<io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    out
}

fn io_kinds(err: &reqwest::Error) -> Vec<io::ErrorKind> {
    causes(err)
        .into_iter()
        .filter_map(|e| e.downcast_ref::<io::Error>().map(io::Error::kind))
        .collect()
}

fn chain_text(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    for e in causes(err) {
        let _ = write!(text, ": {e}");
    }
    text.to_ascii_lowercase()
}

fn innermost_message(err: &reqwest::Error) -> String {
    causes(err)
        .last()
        .map_or_else(|| err.to_string(), ToString::to_string)
}

#[cfg(test)]
mod tests;
