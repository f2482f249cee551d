//! Turning a service's plan and its servers' health into the desired datapath state: who is UP, who
//! is in the active set (backup fallback, `allbackups`, weight 0), and each server's effective weight
//! and maxconn during slowstart. Pure functions of their inputs, `now` included, so the agent can
//! re-run them on every health event and at every slowstart step.
//!
//! HAProxy semantics reproduced (reference §3, HAProxy `backend.c`/`server.c`/`queue.c`):
//! - a server is usable when UP with a weight above 0; weight 0 is never picked;
//! - the active set is the usable non-backup servers; when there is none, the first usable backup in
//!   declaration order, or every usable backup with `option allbackups`;
//! - slowstart: after a DOWN → UP transition (never at start-up) weight and maxconn ramp linearly
//!   over the period, starting from 1.
//!
//! Administrative states ([`AdminState`], HAProxy's `set server … state`): a DRAIN server gets
//! weight 0 — out of the active set and never a backup candidate — but keeps its flows; a MAINT
//! server is left out of the backend set altogether, so the datapath retires its slot and resets its
//! flows (whatever shutdown-sessions says), and it does not hold a service's first write back.
//!
//! Killing flows of a server that goes DOWN is the datapath's job (`BackendSpec::up` plus
//! `ServiceSpec::shutdown_sessions`); [`sessions_to_shutdown`] is the rule, and every datapath (the
//! XDP one and the fake of the unit tests) applies it through this one function.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use crate::plan::model::{ServerPlan, ServicePlan};

mod admin;
pub use admin::{AdminState, UnknownAdminState};

/// One server of a service as the datapath should see it now: what balance computes and the
/// datapath writes (`crate::datapath` re-exports it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Server name (the metrics' `server` label); unique within the service.
    pub name: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Health: a flow whose backend is not up is reset (with shutdown-sessions).
    pub up: bool,
    /// In the active set: eligible for new flows (UP, weight > 0, and non-backup or backup in use).
    pub active: bool,
    /// Effective weight (after slowstart), 1..=256 when active.
    pub weight: u32,
    /// Effective per-server connection limit (after slowstart), 0 = unlimited.
    pub maxconn: u32,
}

/// HAProxy's highest server weight.
pub const MAX_WEIGHT: u32 = 256;

/// How often HAProxy's warm-up task recomputes a ramping server: every slowstart/20, at least 1 s.
const MIN_SLOWSTART_STEP: Duration = Duration::from_secs(1);
const SLOWSTART_STEPS: u32 = 20;

/// One server's health as balance needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerStatus {
    /// No check result yet: not UP, and the service is not settled (see [`BalancedService::pending`]).
    Unknown,
    /// UP since `since`; `at_startup` when the very first check decided it (no slowstart then).
    Up {
        since: Instant,
        at_startup: bool,
    },
    Down,
}

impl ServerStatus {
    fn is_up(self) -> bool {
        matches!(self, Self::Up { .. })
    }
}

/// Usable servers of a service, as HAProxy counts them in its log lines (`srv_act`, `srv_bck`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounts {
    /// Usable non-backup servers.
    pub active: u32,
    /// Usable backup servers (all of them, whether in use or not).
    pub backup: u32,
}

/// The desired datapath state of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalancedService {
    /// One entry per server of the plan not in MAINT, in declaration order.
    pub backends: Vec<BackendSpec>,
    pub counts: ServerCounts,
    /// The active set is made of backups.
    pub using_backups: bool,
    /// Some server has no check result yet. Applying now would treat it as DOWN — with
    /// shutdown-sessions that kills its flows, so after a restart wait until this is false.
    pub pending: bool,
    /// When the next slowstart step is due: call [`balance_service`] again then and re-apply.
    pub next_step: Option<Instant>,
}

/// Computes the desired backends of `service` at `now`; `status_of` gives each server's health.
/// Every server is READY; see [`balance_service_with`].
pub fn balance_service<F>(service: &ServicePlan, status_of: F, now: Instant) -> BalancedService
where
    F: FnMut(&ServerPlan) -> ServerStatus,
{
    balance_service_with(service, status_of, |_| AdminState::Ready, now)
}

/// [`balance_service`] with each server's administrative state from `admin_of`.
pub fn balance_service_with<F, A>(
    service: &ServicePlan,
    mut status_of: F,
    mut admin_of: A,
    now: Instant,
) -> BalancedService
where
    F: FnMut(&ServerPlan) -> ServerStatus,
    A: FnMut(&ServerPlan) -> AdminState,
{
    let statuses: Vec<ServerStatus> = service.servers.iter().map(&mut status_of).collect();
    let admins: Vec<AdminState> = service.servers.iter().map(&mut admin_of).collect();
    let usable: Vec<bool> = service
        .servers
        .iter()
        .zip(&statuses)
        .zip(&admins)
        .map(|((server, status), admin)| {
            status.is_up() && server.weight > 0 && *admin == AdminState::Ready
        })
        .collect();
    let counts = ServerCounts {
        active: count(service, &usable, false),
        backup: count(service, &usable, true),
    };
    let using_backups = counts.active == 0;
    let first_backup = service
        .servers
        .iter()
        .zip(&usable)
        .position(|(server, usable)| server.backup && *usable);
    let slowstart = service.options.slowstart;
    let mut next_step: Option<Instant> = None;
    let backends = service
        .servers
        .iter()
        .zip(&statuses)
        .enumerate()
        .filter(|(i, _)| admins[*i] != AdminState::Maint)
        .map(|(i, (server, status))| {
            let active = usable[i]
                && if server.backup {
                    using_backups && (service.allbackups || first_backup == Some(i))
                } else {
                    true
                };
            let weight = server.weight.min(MAX_WEIGHT);
            let maxconn = service.options.maxconn;
            let (weight, maxconn) = match ramping_since(*status, slowstart, now) {
                // Drained: weight 0, never picked (HAProxy's DRAIN is an effective weight of 0).
                _ if admins[i] == AdminState::Drain => (0, maxconn),
                Some((since, elapsed)) => {
                    if let Some(step) = next_slowstart_step(since, slowstart, now) {
                        next_step = Some(next_step.map_or(step, |n| n.min(step)));
                    }
                    (
                        slowstart_weight(weight, elapsed, slowstart),
                        slowstart_maxconn(maxconn, elapsed, slowstart),
                    )
                }
                None => (weight, maxconn),
            };
            BackendSpec {
                name: server.name.clone(),
                addr: server.addr,
                port: server.port,
                up: status.is_up(),
                active,
                weight,
                maxconn,
            }
        })
        .collect();
    BalancedService {
        backends,
        counts,
        using_backups,
        // A server in MAINT is not checked: it has no result to wait for.
        pending: statuses
            .iter()
            .zip(&admins)
            .any(|(s, a)| *s == ServerStatus::Unknown && *a != AdminState::Maint),
        next_step,
    }
}

fn count(service: &ServicePlan, usable: &[bool], backup: bool) -> u32 {
    let n = service
        .servers
        .iter()
        .zip(usable)
        .filter(|(server, usable)| server.backup == backup && **usable)
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// When a server's slowstart began and how far into it it is, or `None` when it runs at full throttle: not UP, UP since
/// start-up, no slowstart configured, the period is over, or the clock went backwards (HAProxy then
/// goes to full throttle too).
fn ramping_since(
    status: ServerStatus,
    slowstart: Duration,
    now: Instant,
) -> Option<(Instant, Duration)> {
    match status {
        ServerStatus::Up {
            since,
            at_startup: false,
        } if !slowstart.is_zero() => {
            let elapsed = now.checked_duration_since(since)?;
            (elapsed < slowstart).then_some((since, elapsed))
        }
        _ => None,
    }
}

/// Effective weight `elapsed` into a slowstart of `slowstart`: linear from 1 to `weight`, rounded
/// up so it is never 0 while ramping; weight 0 stays 0 (never picked).
#[must_use]
pub fn slowstart_weight(weight: u32, elapsed: Duration, slowstart: Duration) -> u32 {
    if weight == 0 || slowstart.is_zero() || elapsed >= slowstart {
        return weight;
    }
    let w = u128::from(weight);
    let ramped = (w * elapsed.as_millis()).div_ceil(slowstart.as_millis().max(1));
    u32::try_from(ramped).unwrap_or(weight).clamp(1, weight)
}

/// Effective maxconn during slowstart: HAProxy `queue.c` ramps it as `max(1, maxconn·t/slowstart)`.
/// 0 (unlimited) stays unlimited.
#[must_use]
pub fn slowstart_maxconn(maxconn: u32, elapsed: Duration, slowstart: Duration) -> u32 {
    if maxconn == 0 || slowstart.is_zero() || elapsed >= slowstart {
        return maxconn;
    }
    let m = u128::from(maxconn);
    let ramped = m * elapsed.as_millis() / slowstart.as_millis().max(1);
    u32::try_from(ramped).unwrap_or(maxconn).clamp(1, maxconn)
}

/// The next instant at which a server that came UP at `since` changes its ramp, `None` once the
/// ramp is over. Steps are slowstart/20 apart (at least 1 s) like HAProxy's warm-up task, and the
/// last step lands exactly at the end of the period.
#[must_use]
pub fn next_slowstart_step(since: Instant, slowstart: Duration, now: Instant) -> Option<Instant> {
    if slowstart.is_zero() {
        return None;
    }
    let end = since.checked_add(slowstart)?;
    if now >= end {
        return None;
    }
    let step = (slowstart / SLOWSTART_STEPS).max(MIN_SLOWSTART_STEP);
    let elapsed = now.saturating_duration_since(since);
    let done = elapsed.as_nanos() / step.as_nanos().max(1);
    let next = u32::try_from(done + 1)
        .ok()
        .and_then(|k| step.checked_mul(k))
        .and_then(|offset| since.checked_add(offset))
        .unwrap_or(end);
    Some(next.min(end))
}

/// The backends whose established flows must be killed when going from `previous` to `next`:
/// servers that left the plan always (their backend slot is gone), servers that went from up to
/// down only with `on-marked-down shutdown-sessions` (without it HAProxy lets sessions finish).
#[must_use]
pub fn sessions_to_shutdown<'a>(
    previous: &'a [BackendSpec],
    next: &[BackendSpec],
    shutdown_sessions: bool,
) -> Vec<&'a str> {
    previous
        .iter()
        .filter(|old| match next.iter().find(|new| new.name == old.name) {
            None => true,
            Some(new) => shutdown_sessions && old.up && !new.up,
        })
        .map(|old| old.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests;
