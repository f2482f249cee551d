//! Reading the HAProxy configuration Pigsty writes (`/etc/haproxy/haproxy.cfg` and
//! `/etc/haproxy/conf.d/*.cfg`) as a second config source, next to the inventory.
//!
//! Files are read in HAProxy's own order: the paths in the order given, and for a directory its
//! `*.cfg` files in lexical order. The text is cut into sections and directives here; the directives
//! are interpreted in [`parse`], and turned into a [`crate::plan::Plan`] by
//! [`crate::plan::haproxy`]. Nothing here knows about the inventory.
//!
//! # The subset
//! Read and honoured:
//! - `global`: `maxconn` (the default of a `listen`'s `maxconn` when `defaults` sets none).
//! - `defaults`: `mode`, `maxconn`, `balance`, `default-server` (prepended to each listen's line),
//!   `timeout check` (the check timeout; without it HAProxy uses `inter`), `timeout connect`,
//!   `timeout queue`, `timeout client`, `timeout server`, `retries`.
//! - `listen NAME` with `mode tcp`: `bind IP:PORT` or `bind *:PORT` (one per listen), `maxconn`,
//!   `balance roundrobin|leastconn|source` (`source` is read as pgsvc's `maglev`, as `pgsvc render
//!   haproxy` writes it), `option httpchk [OPTIONS URI]`, `option http-keep-alive`,
//!   `option allbackups`, `http-check send meth OPTIONS uri URI`, `http-check expect status 200`,
//!   `default-server <options>`, `timeout check`, and
//!   `server NAME IP:PORT [check-ssl] [ca-file F] check [port N] [weight W] [backup]`.
//!
//! Ignored with a warning, because they do not change where connections go:
//! - `global`: `log`, `log-send-hostname`, `stats …`, `daemon`, `master-worker`, `user`, `group`,
//!   `uid`, `gid`, `chroot`, `pidfile`, `nbthread`, `nbproc`, `cpu-map`, `ulimit-n`, `ca-base`,
//!   `crt-base`, `ssl-default-*`, `tune.*`, `hard-stop-after`, `description`, `node`, `setenv`,
//!   `presetenv`, `spread-checks`.
//! - `defaults` and `listen`: `log`, `option dontlognull|dontlog-normal|tcplog|httplog|redispatch|
//!   tcpka|clitcpka|srvtcpka`, `description`, `timeout` other than `check` inside a listen.
//! - whole HTTP proxies (`listen`/`frontend`/`backend` whose `mode` is `http`: Pigsty's stats page
//!   and Prometheus exporter — pgsvc serves `/metrics` itself), and the sections `userlist`,
//!   `peers`, `resolvers`, `mailers`, `cache`, `http-errors`, `ring`, `program`.
//!
//! Everything else (a TCP `frontend`/`backend`, an unknown directive, a server keyword outside the
//! list, a hostname instead of an address, quoting, …) is an error naming file:line and the directive.

pub mod parse;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use parse::{Defaults, HaproxyConfig, Listen, Server};

use super::{Location, Warning};

/// Largest HAProxy file read (the same bound as an inventory's).
pub const MAX_FILE_BYTES: u64 = super::MAX_FILE_BYTES;
/// Most files read from the paths given (conf.d holds one file per service).
pub const MAX_FILES: usize = 10_000;

/// Why an HAProxy configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("{path}: cannot read HAProxy configuration: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: HAProxy configuration too large: {size} bytes, the limit is {limit} bytes")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{path}: more than {limit} configuration files")]
    TooManyFiles { path: PathBuf, limit: usize },
    #[error("{at}: `{directive}`: {reason}")]
    Directive {
        at: Location,
        directive: String,
        reason: String,
    },
    #[error("{files}: no TCP `listen` section: nothing to serve")]
    NoListen { files: String },
}

impl HaproxyError {
    /// Where the problem is, when it is about one line.
    pub fn location(&self) -> Option<&Location> {
        match self {
            HaproxyError::Directive { at, .. } => Some(at),
            _ => None,
        }
    }
}

/// One line of a file, cut into words (comments removed), with where it is.
#[derive(Clone, Debug)]
pub struct Line {
    pub at: Location,
    pub words: Vec<String>,
    /// The line has quotes or backslashes: refused wherever it is interpreted (an ignored section
    /// such as the stats page may have them).
    pub quoted: bool,
}

impl Line {
    /// The directive as written, for messages.
    pub fn text(&self) -> String {
        self.words.join(" ")
    }

    pub(crate) fn error(&self, reason: impl fmt::Display) -> HaproxyError {
        HaproxyError::Directive {
            at: self.at.clone(),
            directive: self.text(),
            reason: reason.to_string(),
        }
    }
}

/// The files `paths` name, in HAProxy's order: each path as given, a directory's `*.cfg` files in
/// lexical order (hidden files skipped).
///
/// # Errors
/// [`HaproxyError::Read`] for a missing path or unreadable directory.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, HaproxyError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| HaproxyError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| HaproxyError::Read {
                path: path.clone(),
                source,
            })?;
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| HaproxyError::Read {
                    path: path.clone(),
                    source,
                })?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".cfg") && !name.starts_with('.') {
                    found.push(entry.path());
                }
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
        if files.len() > MAX_FILES {
            return Err(HaproxyError::TooManyFiles {
                path: path.clone(),
                limit: MAX_FILES,
            });
        }
    }
    Ok(files)
}

/// Reads the files and directories `paths` (see [`expand_paths`]) into one configuration.
///
/// # Errors
/// Any [`HaproxyError`].
pub fn load(paths: &[PathBuf]) -> Result<(HaproxyConfig, Vec<Warning>), HaproxyError> {
    let mut texts = Vec::new();
    for file in expand_paths(paths)? {
        texts.push((file.display().to_string(), read_bounded(&file)?));
    }
    let sources: Vec<(&str, &str)> = texts
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    let names = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    parse_sources(&sources, &names)
}

/// Parses texts already read, `(file name, text)` in order; `names` names them all in messages.
///
/// # Errors
/// Any [`HaproxyError`] but the reading ones.
pub fn parse_sources(
    sources: &[(&str, &str)],
    names: &str,
) -> Result<(HaproxyConfig, Vec<Warning>), HaproxyError> {
    let mut reader = parse::Reader::default();
    for (file, text) in sources {
        reader.file(&tokenize(file, text))?;
    }
    reader.finish(names)
}

fn read_bounded(path: &Path) -> Result<String, HaproxyError> {
    let read = |source| HaproxyError::Read {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > MAX_FILE_BYTES {
        return Err(HaproxyError::TooLarge {
            path: path.to_owned(),
            size,
            limit: MAX_FILE_BYTES,
        });
    }
    std::fs::read_to_string(path).map_err(read)
}

/// Cuts a file into lines of words. `#` starts a comment; quotes and backslash escapes are outside
/// the subset (Pigsty writes none in its services) and are marked, to be refused rather than misread
/// wherever a line is interpreted.
pub fn tokenize(file: &str, text: &str) -> Vec<Line> {
    let file: Arc<str> = Arc::from(file);
    let mut lines = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap_or("");
        let words: Vec<String> = content.split_whitespace().map(str::to_owned).collect();
        if words.is_empty() {
            continue;
        }
        let column = raw.len() - raw.trim_start().len() + 1;
        let line = Line {
            at: Location {
                file: Arc::clone(&file),
                line: u32::try_from(n + 1).unwrap_or(u32::MAX),
                column: u32::try_from(column).unwrap_or(u32::MAX),
            },
            words,
            quoted: content.contains(['"', '\'', '\\']),
        };
        lines.push(line);
    }
    lines
}
