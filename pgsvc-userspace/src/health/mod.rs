//! HAProxy-compatible health checking of Patroni's REST API: the only agent module that touches the
//! network.
//!
//! - [`counter`]: the pure rise/fall state machine (what HAProxy's `check.c` does), driven by results
//!   and `Instant`s handed in.
//! - [`probe`]: one `OPTIONS <check>` request, classified as HAProxy would (L4 timeout, L7 status 503…).
//! - [`log`]: the HAProxy-style transition log line.
//! - this file: [`HealthMonitor`], one tokio task per distinct check. Services that check the same
//!   (address, port, URI, TLS) with the same timers share one task, as they would otherwise hammer
//!   Patroni with identical requests. Each task publishes a [`ServerHealth`] snapshot through a
//!   `watch` channel and sends every UP/DOWN change as a [`HealthEvent`] so the agent can re-balance
//!   at once instead of polling.

pub mod counter;
pub mod log;
mod monitor;
pub mod probe;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use counter::{CounterParams, HealthCounter, HealthState, Transition};
pub use log::{format_transition, log_transition};
pub use monitor::{Burst, HealthMonitor};
pub use probe::{CheckFailure, CheckOutcome, HaproxyStatus, ProbeError, Prober, TlsSettings};

use crate::plan::model::{ServerPlan, ServicePlan};

/// Where a check goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckTarget {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Path and query, e.g. `/replica?lag=16MB`.
    pub uri: String,
    pub tls: bool,
}

/// One distinct check: a target plus the timers it runs with. The unit of sharing between services.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckKey {
    pub target: CheckTarget,
    pub params: CounterParams,
    /// Bound on one check; never longer than `inter` (DESIGN.md §3).
    pub timeout: Duration,
}

impl CheckKey {
    /// The check HAProxy would run for `server` in `service`.
    #[must_use]
    pub fn for_server(service: &ServicePlan, server: &ServerPlan) -> Self {
        let o = &service.options;
        let params = CounterParams {
            rise: o.rise,
            fall: o.fall,
            inter: o.inter,
            fastinter: o.fastinter,
            downinter: o.downinter,
        };
        // A zero timeout or inter would make every check fail at once; treat zero as "use the other".
        let timeout = match (o.check_timeout.is_zero(), o.inter.is_zero()) {
            (false, false) => o.check_timeout.min(o.inter),
            (false, true) => o.check_timeout,
            (true, _) => o.inter,
        };
        Self {
            target: CheckTarget {
                addr: server.addr,
                port: server.check_port,
                uri: service.check.clone(),
                tls: server.check_tls,
            },
            params,
            timeout: timeout.max(MIN_TIMEOUT),
        }
    }
}

/// The (service, server) pairs of `services` checked by `key`: who to re-balance and log for when
/// an event about `key` arrives.
pub fn servers_checked_by<'a>(
    services: impl IntoIterator<Item = &'a ServicePlan>,
    key: &CheckKey,
) -> Vec<(&'a ServicePlan, &'a ServerPlan)> {
    services
        .into_iter()
        .flat_map(|svc| svc.servers.iter().map(move |srv| (svc, srv)))
        .filter(|(svc, srv)| CheckKey::for_server(svc, srv) == *key)
        .collect()
}

const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Floor of any sleep between checks, so a zero interval in a plan cannot spin a task.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// A point-in-time view of one check, for balance, the admin API and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHealth {
    pub state: HealthState,
    /// The raw counter (0..=rise+fall-1) and HAProxy's "2/3 UP" form of it.
    pub health: u32,
    pub status: String,
    /// The most recent result, `None` before the first check completes.
    pub last_check: Option<CheckOutcome>,
    pub checks_total: u64,
    /// HAProxy `check_failures_total` (failures while health > 0).
    pub failures_total: u64,
    /// HAProxy `check_up_down_total`.
    pub up_down_total: u64,
    /// When the state last changed.
    pub last_change: Option<Instant>,
    /// UP since the very first check (no slowstart for this UP period).
    pub up_at_startup: bool,
}

impl ServerHealth {
    fn unknown() -> Self {
        Self {
            state: HealthState::Unknown,
            health: 0,
            status: "UNKNOWN".to_owned(),
            last_check: None,
            checks_total: 0,
            failures_total: 0,
            up_down_total: 0,
            last_change: None,
            up_at_startup: false,
        }
    }

    fn from_counter(counter: &HealthCounter, last: &CheckOutcome) -> Self {
        Self {
            state: counter.state(),
            health: counter.health(),
            status: counter.status_string(),
            last_check: Some(last.clone()),
            checks_total: counter.checks_total(),
            failures_total: counter.failures_total(),
            up_down_total: counter.up_down_total(),
            last_change: counter.last_change(),
            up_at_startup: counter.up_at_startup(),
        }
    }

    /// The reason of the last result ("L7 status 503"), `None` when it passed or never ran.
    #[must_use]
    pub fn last_failure(&self) -> Option<&CheckFailure> {
        self.last_check
            .as_ref()
            .and_then(|c| c.result.as_ref().err())
    }

    /// The input [`crate::balance`] needs.
    #[must_use]
    pub fn status_for_balance(&self) -> crate::balance::ServerStatus {
        use crate::balance::ServerStatus;
        match (self.state, self.last_change) {
            (HealthState::Up, Some(since)) => ServerStatus::Up {
                since,
                at_startup: self.up_at_startup,
            },
            (HealthState::Down, _) => ServerStatus::Down,
            _ => ServerStatus::Unknown,
        }
    }
}

/// An UP/DOWN change of one check, sent as it happens.
#[derive(Clone, Debug)]
pub struct HealthEvent {
    pub key: CheckKey,
    pub transition: Transition,
    /// The check result that caused it (reason and duration for the log line).
    pub outcome: CheckOutcome,
    /// The snapshot right after the change.
    pub health: ServerHealth,
}

/// Errors of the health layer.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot check {uri} on {addr}:{port}")]
    Prober {
        addr: Ipv4Addr,
        port: u16,
        uri: String,
        #[source]
        source: ProbeError,
    },
}
