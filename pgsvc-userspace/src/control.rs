//! What the admin API asks of the agent and what the agent answers: a reload request and a server
//! state change (HAProxy's `set server <proxy>/<server> state …`), and their typed outcomes. Both the agent and the admin API depend on this module; neither
//! depends on the other.

use std::fmt;

use thiserror::Error;
use tokio::sync::oneshot;

use crate::{balance::AdminState, plan::PlanError};

/// A reload asked for over the API; the agent answers with what it did, or why it refused (and
/// then keeps serving the previous inventory).
#[derive(Debug)]
pub struct ReloadRequest {
    pub reply: oneshot::Sender<Result<ReloadSummary, ReloadError>>,
}

/// What a reload changed, service by service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} added, {} changed, {} removed, {} unchanged",
            self.added, self.changed, self.removed, self.unchanged
        )
    }
}

/// Why a reload was refused; the running configuration stays in every case.
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error(transparent)]
    Inventory { source: Box<PlanError> },
    #[error("the new inventory defines no service")]
    NoServices,
    #[error("service {service} listens on port {port}, inside the SNAT port range {min}-{max}")]
    PortInSnatRange {
        service: String,
        port: u16,
        min: u16,
        max: u16,
    },
    #[error(transparent)]
    Checks {
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The new plan does not fit this node (a local member off `--iface`).
    #[error(transparent)]
    Host {
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("service {service}: {source}")]
    Datapath {
        service: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<PlanError> for ReloadError {
    fn from(e: PlanError) -> Self {
        Self::Inventory {
            source: Box::new(e),
        }
    }
}

/// `set server <proxy>/<server> state <state>` asked over the API.
#[derive(Debug)]
pub struct ServerStateRequest {
    pub proxy: String,
    pub server: String,
    pub state: AdminState,
    pub reply: oneshot::Sender<Result<ServerStateChange, ServerStateError>>,
}

/// A server state change the agent applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStateChange {
    pub proxy: String,
    pub server: String,
    pub from: AdminState,
    pub to: AdminState,
    /// Why the new state could not be saved for the next agent (it is in effect all the same).
    pub not_saved: Option<String>,
}

impl fmt::Display for ServerStateChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}: {} -> {}",
            self.proxy, self.server, self.from, self.to
        )?;
        if let Some(why) = &self.not_saved {
            write!(f, " (in effect, but not saved for the next agent: {why})")?;
        }
        Ok(())
    }
}

/// Why a server state change was refused; nothing changed.
#[derive(Debug, Error)]
pub enum ServerStateError {
    #[error("no proxy (service) named {proxy:?}")]
    UnknownProxy { proxy: String },
    #[error("proxy {proxy} has no server named {server:?}")]
    UnknownServer { proxy: String, server: String },
    #[error("{proxy}/{server}: (re)starting health checks failed: {source}")]
    Checks {
        proxy: String,
        server: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ServerStateError {
    /// The proxy or the server does not exist (HTTP 404).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::UnknownProxy { .. } | Self::UnknownServer { .. })
    }
}
