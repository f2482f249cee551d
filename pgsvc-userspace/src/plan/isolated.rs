//! [`load_plan_isolated`]: [`load_plan`] that can never take its caller down.
//!
//! The limits in `config` and `selector` already keep every known hostile inventory from
//! overflowing the stack or exhausting memory. This is defence in depth for the agent, whose reload
//! must leave it serving the old plan whatever the file holds: the plan is built on a thread of its
//! own with a large stack, and a panic there (a defect in pgsvc or in a parser it uses) comes back
//! as [`PlanError::Internal`] instead of unwinding through the caller.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{Plan, PlanError, Warning, load_haproxy_plan, load_plan};

/// Stack of the planning thread: far above what the bounded parsers need (well under 1 MiB), so
/// that an unforeseen deep recursion still ends as an error rather than a crash. It is virtual
/// memory; only the pages touched are ever committed.
pub const PLANNER_STACK: usize = 64 * 1024 * 1024;

/// [`load_plan`] on a worker thread with a [`PLANNER_STACK`] stack; a panic while planning becomes
/// [`PlanError::Internal`]. Blocks the calling thread until the plan is built (call it from
/// `spawn_blocking` in async code).
///
/// # Errors
/// As [`load_plan`], plus [`PlanError::Internal`] when the planner panicked or its thread could
/// not be started.
pub fn load_plan_isolated(
    path: &Path,
    cluster: Option<&str>,
) -> Result<(Plan, Vec<Warning>), PlanError> {
    let path = path.to_owned();
    let cluster = cluster.map(str::to_owned);
    isolate(path.display().to_string(), move || {
        load_plan(&path, cluster.as_deref())
    })
}

/// Where the plan comes from: a Pigsty inventory (`--config`) or HAProxy files and directories
/// (`--haproxy-config`). The agent re-reads the same source on reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    Inventory(PathBuf),
    Haproxy(Vec<PathBuf>),
}

impl ConfigSource {
    /// Reads and resolves the source on the isolated planning thread (see [`load_plan_isolated`]).
    ///
    /// # Errors
    /// As [`load_plan`] or [`load_haproxy_plan`], plus [`PlanError::Internal`].
    pub fn load_isolated(&self, cluster: Option<&str>) -> Result<(Plan, Vec<Warning>), PlanError> {
        match self {
            ConfigSource::Inventory(path) => load_plan_isolated(path, cluster),
            ConfigSource::Haproxy(paths) => {
                let paths = paths.clone();
                let cluster = cluster.map(str::to_owned);
                isolate(self.to_string(), move || {
                    load_haproxy_plan(&paths, cluster.as_deref())
                })
            }
        }
    }
}

impl ConfigSource {
    /// The first `ca-file` of a `check-ssl` server in HAProxy files (read once, at start), for
    /// checks when `--ca-file` is not given. `None` for an inventory or unreadable files.
    pub fn haproxy_ca_file(&self) -> Option<PathBuf> {
        let ConfigSource::Haproxy(paths) = self else {
            return None;
        };
        let (config, _) = crate::config::haproxy::load(paths).ok()?;
        config
            .listens
            .iter()
            .flat_map(|l| &l.servers)
            .find(|s| s.check_tls)
            .and_then(|s| s.ca_file.as_ref())
            .map(PathBuf::from)
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Inventory(path) => write!(f, "{}", path.display()),
            ConfigSource::Haproxy(paths) => {
                let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                write!(f, "haproxy:{}", names.join(","))
            }
        }
    }
}

/// Runs `load` on the planning thread; `file` names the source in internal errors.
fn isolate<F>(file: String, load: F) -> Result<(Plan, Vec<Warning>), PlanError>
where
    F: FnOnce() -> Result<(Plan, Vec<Warning>), PlanError> + Send + 'static,
{
    let internal = |reason: String| PlanError::Internal {
        file: file.clone(),
        reason,
    };
    let worker = std::thread::Builder::new()
        .name("pgsvc-planner".to_owned())
        .stack_size(PLANNER_STACK)
        .spawn(move || {
            // `catch_unwind` as well as `join`: the payload is read here, where its type is known.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(load))
                .map_err(|payload| panic_message(payload.as_ref()))
        })
        .map_err(|err| internal(format!("cannot start the planning thread: {err}")))?;
    match worker.join() {
        Ok(Ok(result)) => result,
        Ok(Err(message)) => Err(internal(format!("the planner panicked: {message}"))),
        Err(payload) => Err(internal(format!(
            "the planning thread failed: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}
