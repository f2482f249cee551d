//! Runtime server states, HAProxy's `set server <proxy>/<server> state ready|drain|maint`:
//! - DRAIN: weight 0 for new connections (not in the active set, not even as a backup), existing
//!   connections stay, checks keep running; back to READY takes effect at once.
//! - MAINT: no new and no existing traffic — the server leaves the backend set, so its flows are
//!   reset whatever shutdown-sessions says — and its health check stops (a check shared with a
//!   service where the same server is not in MAINT keeps running for that one). Back to READY, the
//!   check starts again and the server re-enters through it: like at start-up, the first result
//!   decides (HAProxy instead starts it UP at the lowest health and checks at once).
//!
//! States are kept per (proxy, server) name, survive reloads while the server exists, and are saved
//! to a [`StateFile`] on every change, to be restored by the next agent.

use std::time::Instant;

use tracing::{info, warn};

use super::{checks::Checks, reconcile::Reconciler, state_file::StateFile};
use crate::{
    balance::AdminState,
    control::{ServerStateChange, ServerStateError, ServerStateRequest},
    datapath::Datapath,
    health::HealthState,
    plan::{ServerPlan, ServicePlan},
};

impl<D: Datapath, C: Checks> Reconciler<D, C> {
    /// The state the operator set for `server` of `service` (READY unless set).
    pub fn admin_state(&self, service: &str, server: &str) -> AdminState {
        self.admin
            .get(&(service.to_owned(), server.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// `services` as the health checks see them: servers in MAINT left out.
    pub(super) fn checked(&self, services: &[ServicePlan]) -> Vec<ServicePlan> {
        services
            .iter()
            .map(|svc| {
                let mut svc = svc.clone();
                svc.servers
                    .retain(|srv| self.admin_state(&svc.name, &srv.name) != AdminState::Maint);
                svc
            })
            .collect()
    }

    /// Answers a request of the admin API.
    pub fn on_server_state(&mut self, req: ServerStateRequest, now: Instant) {
        let result = self.set_server_state(&req.proxy, &req.server, req.state, now);
        // The client may have given up; the change stands either way.
        let _ = req.reply.send(result);
    }

    /// Sets the state of `server` in `proxy`, applies it to the datapath and the checks, and saves
    /// it for the next agent.
    ///
    /// # Errors
    /// Unknown proxy or server, or a check that cannot be restarted (then nothing changed).
    pub fn set_server_state(
        &mut self,
        proxy: &str,
        server: &str,
        state: AdminState,
        now: Instant,
    ) -> Result<ServerStateChange, ServerStateError> {
        let svc = self
            .services
            .iter()
            .find(|s| s.name == proxy)
            .ok_or_else(|| ServerStateError::UnknownProxy {
                proxy: proxy.to_owned(),
            })?;
        let srv = find_server(svc, server).ok_or_else(|| ServerStateError::UnknownServer {
            proxy: proxy.to_owned(),
            server: server.to_owned(),
        })?;
        let health = self.checks.server_health(svc, srv).state;
        let key = (proxy.to_owned(), server.to_owned());
        let from = self.admin_state(proxy, server);
        let mut change = ServerStateChange {
            proxy: proxy.to_owned(),
            server: server.to_owned(),
            from,
            to: state,
            not_saved: None,
        };
        if from == state {
            return Ok(change);
        }
        set(&mut self.admin, key.clone(), state);
        if from == AdminState::Maint || state == AdminState::Maint {
            let checked = self.checked(&self.services);
            if let Err(e) = self.checks.sync(&checked) {
                set(&mut self.admin, key, from);
                return Err(ServerStateError::Checks {
                    proxy: proxy.to_owned(),
                    server: server.to_owned(),
                    source: Box::new(e),
                });
            }
        }
        // MAINT counts as downtime, as in HAProxy; leaving it, the check says what comes next.
        if state == AdminState::Maint {
            self.down_since.entry(key).or_insert(now);
        } else if from == AdminState::Maint
            && health == HealthState::Up
            && let Some(since) = self.down_since.remove(&key)
        {
            *self.downtime.entry(key).or_default() += now.saturating_duration_since(since);
        }
        info!(
            "server {proxy}/{server} is {}",
            match (from, state) {
                (_, AdminState::Maint) => "going DOWN for maintenance (its sessions are reset)",
                (AdminState::Maint, _) => "leaving forced maintenance (checks resume)",
                (_, AdminState::Drain) => "entering drain: no new sessions",
                _ => "leaving drain: READY",
            }
        );
        self.rebalance(proxy, now);
        self.update_hurry(now);
        change.not_saved = self.save_states();
        self.publish(now);
        Ok(change)
    }

    /// Uses `file` for the server states: restores what it holds for servers of the current plan
    /// (before [`Self::start`], so that checks of servers in MAINT never start) and saves there on
    /// every change. A file that cannot be read is reported and every server starts READY.
    pub fn restore_server_states(&mut self, file: StateFile) {
        match file.load() {
            Ok(saved) => {
                let total = saved.len();
                self.admin = saved;
                self.state_file = Some(file);
                if self.prune_states() {
                    warn!(
                        dropped = total - self.admin.len(),
                        "saved server states of servers no longer planned were dropped"
                    );
                    if let Some(why) = self.save_states() {
                        warn!("{why}");
                    }
                }
                for ((proxy, server), state) in &self.admin {
                    info!("server {proxy}/{server} restored in state {state}");
                }
            }
            Err(e) => {
                let cause = std::error::Error::source(&e).map(ToString::to_string);
                warn!(error = %e, cause, "the saved server states cannot be read: every server starts READY");
                self.state_file = Some(file);
            }
        }
    }

    /// Drops states of servers the plan no longer has; true when any went.
    pub(super) fn prune_states(&mut self) -> bool {
        let before = self.admin.len();
        let services = &self.services;
        self.admin.retain(|(proxy, server), _| {
            services
                .iter()
                .find(|s| s.name == *proxy)
                .and_then(|s| find_server(s, server))
                .is_some()
        });
        self.admin.len() != before
    }

    /// Saves the states; why not, when that failed.
    pub(super) fn save_states(&self) -> Option<String> {
        let file = self.state_file.as_ref()?;
        match file.save(&self.admin) {
            Ok(()) => None,
            Err(e) => {
                let why = match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                };
                warn!("saving the server states failed: {why}");
                Some(why)
            }
        }
    }
}

fn find_server<'a>(svc: &'a ServicePlan, name: &str) -> Option<&'a ServerPlan> {
    svc.servers.iter().find(|s| s.name == name)
}

/// Records `state` (READY is the absence of an entry).
fn set(admin: &mut super::state_file::ServerStates, key: (String, String), state: AdminState) {
    if state == AdminState::Ready {
        admin.remove(&key);
    } else {
        admin.insert(key, state);
    }
}
