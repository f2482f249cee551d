//! Where the operator's server states (DRAIN, MAINT) outlive the agent: a small JSON file, rewritten
//! atomically (temporary file, fsync, rename) on every change and read once at start.
//!
//! Why a file and not the pin directory: bpffs holds only BPF objects (a regular file cannot be
//! created there), and a pinned map would be one more object that `pgsvc detach` and the unpinning
//! on exit must know about. The file is named after the pin directory, so two agents on one host
//! (two `--pin-dir`s) keep apart, and it lives under `/var/lib/pgsvc` so that a state survives an
//! agent restart, a stop and start, and a reboot alike: what the operator set holds until the
//! operator sets READY (HAProxy keeps such states only with `server-state-file`). States of servers
//! that no longer exist are dropped at start and on reload.
//!
//! ```json
//! {
//!   "schema": "pgsvc.server-state/v1",
//!   "servers": [ { "proxy": "pg-test-primary", "server": "pg-test-1", "state": "maint" } ]
//! }
//! ```

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::balance::AdminState;

/// Version of the file's shape.
pub const STATE_SCHEMA: &str = "pgsvc.server-state/v1";
/// Where the state files are kept.
pub const STATE_DIR: &str = "/var/lib/pgsvc/server-state";
/// A state file larger than this is not read (a few hundred servers take a few KB).
const MAX_SIZE: u64 = 1 << 20;

/// States other than READY, by (proxy, server).
pub type ServerStates = BTreeMap<(String, String), AdminState>;

#[derive(Debug, Error)]
pub enum StateFileError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_SIZE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not a server state file")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has schema {found:?}, this pgsvc reads {STATE_SCHEMA:?}")]
    Schema { path: PathBuf, found: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Document {
    schema: String,
    servers: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    proxy: String,
    server: String,
    state: AdminState,
}

/// The state file of one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file of the agent pinned at `pin_dir`: `/var/lib/pgsvc/server-state/<pin dir>.json`,
    /// the pin directory's path with `/` turned into `-` (`sys-fs-bpf-pgsvc.json`).
    #[must_use]
    pub fn for_pin_dir(pin_dir: &Path) -> Self {
        Self::new(Path::new(STATE_DIR).join(format!("{}.json", escape(pin_dir))))
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved states; none when the file does not exist.
    ///
    /// # Errors
    /// The file cannot be read, is too large, or is not a state file of this schema.
    pub fn load(&self) -> Result<ServerStates, StateFileError> {
        let path = || self.path.clone();
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ServerStates::new()),
            Err(source) => {
                return Err(StateFileError::Read {
                    path: path(),
                    source,
                });
            }
        };
        let mut text = String::new();
        file.take(MAX_SIZE + 1)
            .read_to_string(&mut text)
            .map_err(|source| StateFileError::Read {
                path: path(),
                source,
            })?;
        if text.len() as u64 > MAX_SIZE {
            return Err(StateFileError::TooLarge { path: path() });
        }
        decode(&text).map_err(|e| match e {
            Decode::Json(source) => StateFileError::Parse {
                path: path(),
                source,
            },
            Decode::Schema(found) => StateFileError::Schema {
                path: path(),
                found,
            },
        })
    }

    /// Replaces the file with `states` (READY entries are not written); with no state left the
    /// file is removed.
    ///
    /// # Errors
    /// The directory or the file cannot be written.
    pub fn save(&self, states: &ServerStates) -> Result<(), StateFileError> {
        let err = |source| StateFileError::Write {
            path: self.path.clone(),
            source,
        };
        if states.values().all(|s| *s == AdminState::Ready) {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
                _ => Ok(()),
            };
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self
            .path
            .with_extension(format!("json.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(encode(states).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })?;
        // The rename itself reaches the disk with the directory (best effort: some filesystems refuse).
        if let Some(dir) = self.path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The file's text for `states` (sorted, READY left out).
#[must_use]
pub fn encode(states: &ServerStates) -> String {
    let doc = Document {
        schema: STATE_SCHEMA.to_owned(),
        servers: states
            .iter()
            .filter(|(_, s)| **s != AdminState::Ready)
            .map(|((proxy, server), state)| Entry {
                proxy: proxy.clone(),
                server: server.clone(),
                state: *state,
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

enum Decode {
    Json(serde_json::Error),
    Schema(String),
}

fn decode(text: &str) -> Result<ServerStates, Decode> {
    let doc: Document = serde_json::from_str(text).map_err(Decode::Json)?;
    if doc.schema != STATE_SCHEMA {
        return Err(Decode::Schema(doc.schema.chars().take(64).collect()));
    }
    Ok(doc
        .servers
        .into_iter()
        .filter(|e| e.state != AdminState::Ready)
        .map(|e| ((e.proxy, e.server), e.state))
        .collect())
}

/// A path as one file name: `/` separates with `-`, and every byte outside `[A-Za-z0-9_]` (`-` and
/// `.` included, so that no two paths meet and no name is special) is written `%XX`.
fn escape(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut out = String::new();
    for (i, part) in path
        .as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push('-');
        }
        for b in part {
            if b.is_ascii_alphanumeric() || *b == b'_' {
                out.push(char::from(*b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if out.is_empty() {
        out.push_str("root");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(v: &[(&str, &str, AdminState)]) -> ServerStates {
        v.iter()
            .map(|(p, s, a)| (((*p).to_owned(), (*s).to_owned()), *a))
            .collect()
    }

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("pgsvc-state-{tag}-{}", std::process::id()))
    }

    #[test]
    fn the_format_is_stable_and_leaves_ready_out() {
        let s = states(&[
            ("pg-test-replica", "pg-test-2", AdminState::Drain),
            ("pg-test-primary", "pg-test-1", AdminState::Maint),
            ("pg-test-primary", "pg-test-2", AdminState::Ready),
        ]);
        let text = encode(&s);
        assert_eq!(
            text,
            r#"{
  "schema": "pgsvc.server-state/v1",
  "servers": [
    {
      "proxy": "pg-test-primary",
      "server": "pg-test-1",
      "state": "maint"
    },
    {
      "proxy": "pg-test-replica",
      "server": "pg-test-2",
      "state": "drain"
    }
  ]
}
"#
        );
        let back = decode(&text).unwrap_or_else(|_| panic!("decodes"));
        assert_eq!(back.len(), 2);
        assert_eq!(
            back.get(&("pg-test-primary".to_owned(), "pg-test-1".to_owned())),
            Some(&AdminState::Maint)
        );
    }

    #[test]
    fn save_load_round_trip_and_removal_when_all_ready() {
        let dir = temp("rt");
        let file = StateFile::new(dir.join("sub").join("agent.json"));
        assert!(file.load().expect("missing file").is_empty());
        let s = states(&[("pg-test-offline", "pg-test-3", AdminState::Drain)]);
        file.save(&s).expect("save");
        assert_eq!(file.load().expect("load"), s);
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("sub"))
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
        file.save(&states(&[("p", "s", AdminState::Ready)]))
            .expect("save ready");
        assert!(!file.path().exists(), "nothing but READY: no file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let dir = temp("bad");
        std::fs::create_dir_all(&dir).expect("dir");
        let file = StateFile::new(dir.join("agent.json"));
        for (text, want) in [
            ("not json", "not a server state file"),
            (
                r#"{"schema":"pgsvc.server-state/v9","servers":[]}"#,
                "schema",
            ),
            (
                r#"{"schema":"pgsvc.server-state/v1","servers":[{"proxy":"p","server":"s","state":"gone"}]}"#,
                "not a server state file",
            ),
        ] {
            std::fs::write(file.path(), text).expect("write");
            let e = file.load().expect_err(text);
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pin_dirs_map_to_distinct_file_names() {
        let name = |p: &str| {
            StateFile::for_pin_dir(Path::new(p))
                .path()
                .to_string_lossy()
                .into_owned()
        };
        assert_eq!(
            name("/sys/fs/bpf/pgsvc"),
            "/var/lib/pgsvc/server-state/sys-fs-bpf-pgsvc.json"
        );
        assert_ne!(name("/sys/fs/bpf/a-b"), name("/sys/fs/bpf/a/b"));
        assert_ne!(name("/x/.."), name("/x"));
    }
}
