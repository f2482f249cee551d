//! Just enough HTTP/1.1 for the admin API: one request per connection, read under hard limits
//! (head size, header count, body size, and a deadline the caller applies), then `Connection: close`.
//! Everything a client sends is untrusted: every malformed input maps to a status code, never a panic.
//!
//! [`Connections`] decides which connections are served: up to [`MAX_CONNECTIONS`] at once, and when
//! all are taken a new one closes the *oldest connection that has not yet sent its request* instead
//! of being refused. Clients that connect and stay silent can then only take slots from each other,
//! never from a client that sends a request (a health probe, `pgsvc status`): that one is always the
//! newest, and once its request is in, its slot cannot be taken away.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;

/// Connections served at once. Each costs a socket, a small task and a 4 KB read buffer; 1024 keep
/// well inside the usual open-file limit while leaving room for hundreds of idle clients.
pub const MAX_CONNECTIONS: usize = 1024;

/// The admin API's connections: which are still waiting for their request (and so may be closed
/// to make room) and how many are being served.
#[derive(Debug)]
pub struct Connections {
    capacity: usize,
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// Connections still reading their request, oldest first, with the switch that closes them.
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
    /// Connections whose request is complete (being routed, answered, drained).
    serving: usize,
}

impl Connections {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Connections {
            capacity: capacity.max(1),
            inner: Mutex::new(Table::default()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table holds plain counters and senders: a panic elsewhere leaves it consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection. When all are taken, the oldest connection still waiting for its
    /// request is closed to make room; None only when every slot is serving a complete request.
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        let mut table = self.table();
        if table.waiting.len() + table.serving >= self.capacity && !Self::evict(&mut table) {
            return None;
        }
        let id = table.next_id;
        table.next_id += 1;
        let (close, closed) = oneshot::channel();
        table.waiting.insert(id, close);
        Some(Admission {
            table: Arc::clone(self),
            id,
            closed: Some(closed),
            serving: false,
        })
    }

    /// Closes the oldest connection still waiting for its request (when accept fails for want of
    /// descriptors, say). False when there is none.
    pub fn close_oldest_waiting(&self) -> bool {
        Self::evict(&mut self.table())
    }

    fn evict(table: &mut Table) -> bool {
        match table.waiting.pop_first() {
            Some((_, close)) => {
                // The receiver may already be gone (the connection is ending on its own): fine.
                let _ = close.send(());
                true
            }
            None => false,
        }
    }

    /// (waiting for a request, serving one).
    pub fn counts(&self) -> (usize, usize) {
        let table = self.table();
        (table.waiting.len(), table.serving)
    }
}

/// One connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Admission {
    table: Arc<Connections>,
    id: u64,
    closed: Option<oneshot::Receiver<()>>,
    serving: bool,
}

impl Admission {
    /// Runs `read` (the request read, under its deadline) unless the slot is taken away first;
    /// None when it was (the caller closes the connection without an answer). After a read that
    /// finished, the slot is the connection's until it is dropped.
    pub async fn read<F: Future>(&mut self, read: F) -> Option<F::Output> {
        let closed = self.closed.take()?;
        let output = tokio::select! {
            output = read => Some(output),
            // Taken away (or the table went away): either way, stop serving this connection.
            _ = closed => None,
        };
        let mut table = self.table.table();
        if table.waiting.remove(&self.id).is_some() && output.is_some() {
            table.serving += 1;
            self.serving = true;
        }
        drop(table);
        if self.serving { output } else { None }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut table = self.table.table();
        if self.serving {
            table.serving = table.serving.saturating_sub(1);
        } else {
            table.waiting.remove(&self.id);
        }
    }
}

/// Request line and headers together.
pub const MAX_HEAD: usize = 16 * 1024;
pub const MAX_HEADERS: usize = 100;
/// Bodies are kept (only `POST /servers/…/state` uses one, a word); this bounds them.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request line and headers exceed {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("request body exceeds {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("bad request: {0}")]
    Malformed(&'static str),
    #[error("HTTP version not supported")]
    Version,
    /// The peer went away before a whole request arrived: nobody to answer.
    #[error("connection closed before a complete request")]
    Closed,
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
}

impl RequestError {
    /// The status to answer with, or None when there is nobody left to answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            RequestError::HeadTooLarge | RequestError::TooManyHeaders => Some(431),
            RequestError::BodyTooLarge => Some(413),
            RequestError::Malformed(_) => Some(400),
            RequestError::Version => Some(505),
            RequestError::Closed | RequestError::Io(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    pub content_length: usize,
    /// The `Authorization` header, when sent.
    pub authorization: Option<String>,
    /// The body, as received (at most [`MAX_BODY`] bytes).
    pub body: Vec<u8>,
}

/// Reads one request head and its body. The caller bounds the time it may take.
pub async fn read_request<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Request, RequestError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_len, body_start) = loop {
        if let Some(found) = find_head_end(&buf) {
            break found;
        }
        if buf.len() > MAX_HEAD {
            return Err(RequestError::HeadTooLarge);
        }
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                RequestError::Closed
            } else {
                RequestError::Malformed("connection closed inside the request head")
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_len > MAX_HEAD {
        return Err(RequestError::HeadTooLarge);
    }
    let mut request = parse_head(&buf[..head_len])?;
    let mut body = buf.split_off(body_start);
    body.truncate(request.content_length);
    while body.len() < request.content_length {
        let want = (request.content_length - body.len()).min(chunk.len());
        let n = reader.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(RequestError::Malformed(
                "connection closed inside the request body",
            ));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    request.body = body;
    Ok(request)
}

/// Length of the head (without its blank line) and where the body starts. Bare `\n` line ends are
/// accepted, as most servers do.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some((nl, nl + 2)),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some((nl, nl + 3)),
            _ => i = nl + 1,
        }
    }
    None
}

/// Parses the request line and headers (the bytes before the blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, RequestError> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines
        .next()
        .ok_or(RequestError::Malformed("empty request"))?;
    let (method, target) = parse_request_line(request_line)?;
    let path = target.split('?').next().unwrap_or(target).to_owned();

    let mut content_length: Option<usize> = None;
    let mut authorization = None;
    for (count, line) in lines.enumerate() {
        if count >= MAX_HEADERS {
            return Err(RequestError::TooManyHeaders);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(RequestError::Malformed("header without a colon"))?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            // Also rejects obsolete line folding (a line starting with whitespace).
            return Err(RequestError::Malformed("invalid header name"));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(RequestError::Malformed(
                "control character in a header value",
            ));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(RequestError::Malformed(
                    "conflicting Content-Length headers",
                ));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"authorization") {
            authorization = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(RequestError::Malformed(
                "Transfer-Encoding is not supported",
            ));
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(RequestError::BodyTooLarge);
    }
    Ok(Request {
        method: method.to_owned(),
        path,
        content_length,
        authorization,
        body: Vec::new(),
    })
}

fn parse_request_line(line: &[u8]) -> Result<(&str, &str), RequestError> {
    let line = std::str::from_utf8(line)
        .map_err(|_| RequestError::Malformed("request line is not UTF-8"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed(
            "request line is not `METHOD /path HTTP/1.1`",
        ));
    };
    if method.is_empty() || method.len() > 16 || !method.bytes().all(is_token) {
        return Err(RequestError::Malformed("invalid method"));
    }
    if !target.starts_with('/')
        || target.len() > 2048
        || !target.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(RequestError::Malformed("invalid request target"));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => Ok((method, target)),
        v if v.starts_with("HTTP/")
            && v.len() > 5
            && v[5..].bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            Err(RequestError::Version)
        }
        _ => Err(RequestError::Malformed("invalid HTTP version")),
    }
}

fn parse_length(value: &[u8]) -> Result<usize, RequestError> {
    if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::Malformed("invalid Content-Length"));
    }
    value
        .iter()
        .try_fold(0usize, |acc, &d| {
            acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        })
        .ok_or(RequestError::Malformed("invalid Content-Length"))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// RFC 9110 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A complete response; always `Connection: close`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// `Allow` header of a 405.
    pub allow: Option<&'static str>,
    /// 401 answers ask for basic auth (`WWW-Authenticate`).
    pub challenge: bool,
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
            allow: None,
            challenge: false,
        }
    }

    /// A plain-text answer; a line end is added when missing so curl output stays tidy.
    pub fn text(status: u16, message: impl Into<String>) -> Self {
        let mut body = message.into();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Response::new(status, TEXT, body)
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        Response {
            allow: Some(allow),
            ..Response::text(405, format!("method not allowed; use {allow}"))
        }
    }

    /// The bytes on the wire; `head_only` for HEAD requests (same headers, no body).
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            out.push_str("Allow: ");
            out.push_str(allow);
            out.push_str("\r\n");
        }
        if self.challenge {
            out.push_str("WWW-Authenticate: Basic realm=\"pgsvc metrics\"\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests;
