//! Which sessions the reconciler resets at once ([`crate::datapath::Datapath::reset_sessions`]),
//! rather than leaving them to the datapath's lazy reset at their next packet:
//! - a server that goes DOWN in a service with `on-marked-down shutdown-sessions` (`down`);
//! - a member of a write service fenced because the leader key left it (`fenced`), whatever
//!   shutdown-sessions says: its sessions are writes to a node that is no longer the leader;
//! - the flows to a node address that left the node, typically the VIP moved to the new primary
//!   by vip-manager (`address_left`): its clients' packets now reach another node, which has no
//!   flow, and the server side would otherwise stay open until the idle timeout.
//!
//! Each batch is logged with its counts and counted in `pgsvc_sessions_reset_total{proxy,server,
//! reason}`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use tracing::{info, warn};

use super::{checks::Checks, reconcile::Reconciler};
use crate::{
    datapath::{BackendSpec, Datapath, ResetCount, ResetScope},
    plan::ServicePlan,
    status::SessionsReset,
};

/// Why sessions were reset (the metric's `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResetReason {
    Down,
    Fenced,
    AddressLeft,
}

impl ResetReason {
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            ResetReason::Down => "down",
            ResetReason::Fenced => "fenced",
            ResetReason::AddressLeft => "address_left",
        }
    }
}

/// Sessions reset since the agent started, by (service, server, reason).
#[derive(Debug, Default)]
pub struct ResetTotals {
    pub(super) by: BTreeMap<(String, String, ResetReason), u64>,
    /// The node's addresses as last seen (None before the first look).
    pub(super) local_addrs: Option<Vec<Ipv4Addr>>,
}

impl ResetTotals {
    /// Sessions of `service` (of its `server`, when given) reset at once: added to the datapath's
    /// own `rst_sent` (resets sent to clients at their next packet) in the status.
    #[must_use]
    pub fn of(&self, service: &str, server: Option<&str>) -> u64 {
        self.by
            .iter()
            .filter(|((svc, srv, _), _)| svc == service && server.is_none_or(|s| s == srv))
            .map(|(_, n)| *n)
            .sum()
    }

    /// The status snapshot's view.
    #[must_use]
    pub fn status(&self) -> Vec<SessionsReset> {
        self.by
            .iter()
            .map(|((service, server, reason), n)| SessionsReset {
                service: service.clone(),
                server: server.clone(),
                reason: reason.label().to_owned(),
                sessions: *n,
            })
            .collect()
    }
}

/// The servers of `svc` whose sessions are reset when its backend set goes from `previous` to
/// `next`: those that were up and are not any more, fenced ones always, the others with
/// shutdown-sessions. Servers leaving the plan are not reset here (the datapath retires them).
pub(super) fn resets_for(
    svc: &ServicePlan,
    previous: &[BackendSpec],
    next: &[BackendSpec],
    fenced: impl Fn(&str) -> bool,
) -> Vec<(String, ResetReason)> {
    previous
        .iter()
        .filter(|old| old.up)
        .filter_map(|old| {
            let new = next.iter().find(|n| n.name == old.name)?;
            if new.up || (new.addr, new.port) != (old.addr, old.port) {
                return None;
            }
            if fenced(&old.name) {
                Some((old.name.clone(), ResetReason::Fenced))
            } else if svc.options.shutdown_sessions {
                Some((old.name.clone(), ResetReason::Down))
            } else {
                None
            }
        })
        .collect()
}

impl<D: Datapath, C: Checks> Reconciler<D, C> {
    /// Resets the sessions of the servers of `service` that are about to be written DOWN (called
    /// just before the write, while their flows still exist).
    pub(super) fn reset_going_down(&mut self, service: &str, next: &[BackendSpec]) {
        let Some(svc) = self.services.iter().find(|s| s.name == service) else {
            return;
        };
        let Some(previous) = self.applied.get(service) else {
            return;
        };
        let wanted = resets_for(svc, previous, next, |name| {
            svc.servers
                .iter()
                .any(|srv| srv.name == name && self.is_fenced(svc, srv))
        });
        for reason in [ResetReason::Fenced, ResetReason::Down] {
            let servers: Vec<String> = wanted
                .iter()
                .filter(|(_, r)| *r == reason)
                .map(|(s, _)| s.clone())
                .collect();
            if servers.is_empty() {
                continue;
            }
            let scope = ResetScope::Servers {
                service,
                servers: &servers,
            };
            self.reset(&scope, reason);
        }
    }

    /// The node's addresses changed: flows to an address that left are reset.
    pub(super) fn reset_departed_addrs(&mut self, addrs: &[Ipv4Addr]) {
        let gone: Vec<Ipv4Addr> = match &self.resets.local_addrs {
            Some(old) => old.iter().filter(|a| !addrs.contains(a)).copied().collect(),
            None => Vec::new(),
        };
        self.resets.local_addrs = Some(addrs.to_vec());
        for a in gone {
            self.reset(&ResetScope::ServiceAddr(a), ResetReason::AddressLeft);
        }
    }

    fn reset(&mut self, scope: &ResetScope<'_>, reason: ResetReason) {
        let counts: Vec<ResetCount> = match self.dp.reset_sessions(scope) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, ?scope, reason = reason.label(), "resetting sessions failed");
                return;
            }
        };
        for c in counts {
            info!(
                service = c.service,
                server = c.server,
                reason = reason.label(),
                flows = c.flows,
                local_members = c.local_members,
                local_clients = c.local_clients,
                failed = c.failed,
                "sessions reset now"
            );
            *self
                .resets
                .by
                .entry((c.service.clone(), c.server.clone(), reason))
                .or_default() += c.total();
        }
    }
}
