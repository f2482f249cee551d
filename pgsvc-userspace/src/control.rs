//! What the admin API asks of the agent and what the agent answers: a reload request, and the
//! typed outcome of a reload. Both the agent and the admin API depend on this module; neither
//! depends on the other.

use std::fmt;

use thiserror::Error;
use tokio::sync::oneshot;

use crate::plan::PlanError;

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
