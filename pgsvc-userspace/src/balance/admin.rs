//! A server's administrative state, set by the operator at run time like HAProxy's
//! `set server <proxy>/<server> state ready|drain|maint`, independent of its health.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What the operator asked of one server of one service.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Normal operation: health decides.
    #[default]
    Ready,
    /// No new connections (weight 0: neither in the active set nor a backup candidate); existing
    /// connections stay and checks keep running.
    Drain,
    /// Out of service: no new and no existing traffic (its flows are reset), no health checks.
    Maint,
}

impl AdminState {
    /// The word of the command line and the API (`ready`, `drain`, `maint`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Drain => "drain",
            Self::Maint => "maint",
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown server state {given:?}: expected ready, drain or maint")]
pub struct UnknownAdminState {
    pub given: String,
}

impl FromStr for AdminState {
    type Err = UnknownAdminState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ready" => Ok(Self::Ready),
            "drain" => Ok(Self::Drain),
            "maint" => Ok(Self::Maint),
            _ => Err(UnknownAdminState {
                given: s.chars().take(64).collect(),
            }),
        }
    }
}
