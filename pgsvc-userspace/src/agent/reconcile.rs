//! The reconciler: from its inputs (the plan, health changes, the clock, reloads from the admin API
//! or SIGHUP) it computes each service's desired backend set ([`crate::balance`]) and applies the
//! difference through the [`Datapath`] trait. It owns no kernel object and no task, so the unit tests
//! run it over [`crate::datapath::fake::FakeDatapath`] with explicit instants.
//!
//! The DCS (Patroni's leader key) is one more input: [`super::fence`] keeps each cluster's leader
//! and the health balance sees for write services goes through [`Reconciler::fenced_status`].

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    ops::RangeInclusive,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use pgsvc_common::Algorithm;
use thiserror::Error;
use tracing::{error, info, warn};

use super::{
    checks::Checks,
    state_file::{ServerStates, StateFile},
};
use crate::{
    balance::{AdminState, BalancedService, balance_service_with},
    datapath::{BackendSpec, Datapath, LocalScope, ServiceSpec, Timeouts},
    health::{CheckKey, HealthEvent, HealthState, log_transition, servers_checked_by},
    plan::{Balance, BindAddr, Plan, ServicePlan},
    status::{ReloadStatus, Status},
};

/// How long after start a service may wait for its first check results before it is written with
/// whatever is known (a check never takes longer than its timeout, so this is only a safety net).
pub const FIRST_RESULTS_GRACE: Duration = Duration::from_secs(10);
/// Every how many ticks (seconds) the flow table is collected and next hops are refreshed.
pub const GC_EVERY: u32 = 5;
pub const NEIGH_EVERY: u32 = 2;

/// What the snapshot says about the agent itself, fixed at start.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Unix time the agent started.
    pub started_unix: f64,
    pub config: String,
    pub iface: String,
    /// native, skb or adopted.
    pub xdp_mode: &'static str,
    pub snat_addr: Ipv4Addr,
    pub vip: Option<(Ipv4Addr, u8)>,
    /// Whether clients on the node itself are served, and where (see `Status::local_clients`).
    pub local_clients: String,
}

/// What the reconciler needs of `pgsvc run`'s options.
#[derive(Clone, Debug)]
pub struct Settings {
    pub snat_ports: RangeInclusive<u16>,
    pub timeouts: Timeouts,
}

/// Why the first write of the plan failed (the agent then stops).
#[derive(Debug, Error)]
pub enum StartError {
    #[error("service {service}")]
    Service {
        service: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("starting health checks")]
    Checks {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub struct Reconciler<D: Datapath, C: Checks> {
    pub(super) dp: D,
    pub(super) checks: C,
    pub(super) settings: Settings,
    pub(super) identity: Identity,
    pub(super) started: Instant,
    pub(super) plan: Plan,
    pub(super) services: Vec<ServicePlan>,
    /// What each service's backends were last written as.
    pub(super) applied: HashMap<String, Vec<BackendSpec>>,
    /// Checks of services that have no usable server (checked at the burst interval).
    pub(super) hurried: HashSet<CheckKey>,
    /// Pending slowstart steps per service.
    pub(super) next_steps: HashMap<String, Instant>,
    /// For `downtime_seconds`: when each (service, server) went DOWN, and time accumulated.
    pub(super) down_since: HashMap<(String, String), Instant>,
    pub(super) downtime: HashMap<(String, String), Duration>,
    pub(super) status: Arc<RwLock<Status>>,
    pub(super) last_reload: Option<ReloadStatus>,
    pub(super) ready: bool,
    /// Server states the operator set (DRAIN, MAINT), by (service, server); READY is no entry.
    pub(super) admin: ServerStates,
    /// Where they are saved for the next agent (none in unit tests unless given).
    pub(super) state_file: Option<StateFile>,
    /// Each watched cluster's leader key (empty without a DCS).
    pub(super) fence: super::fence::Fencing,
    /// Sessions reset at once, and the node addresses last seen (see [`super::resets`]).
    pub(super) resets: super::resets::ResetTotals,
}

impl<D: Datapath, C: Checks> Reconciler<D, C> {
    /// A reconciler over a loaded datapath and a health view; nothing is written until [`Self::start`].
    pub fn new(
        dp: D,
        checks: C,
        plan: Plan,
        settings: Settings,
        identity: Identity,
        started: Instant,
    ) -> Self {
        let services = flatten(&plan);
        Self {
            dp,
            checks,
            settings,
            identity,
            started,
            plan,
            services,
            applied: HashMap::new(),
            hurried: HashSet::new(),
            next_steps: HashMap::new(),
            down_since: HashMap::new(),
            downtime: HashMap::new(),
            status: Arc::new(RwLock::new(Status::default())),
            last_reload: None,
            ready: false,
            admin: ServerStates::new(),
            state_file: None,
            fence: super::fence::Fencing::default(),
            resets: super::resets::ResetTotals::default(),
        }
    }

    /// The snapshot the admin API serves (rewritten by [`Self::publish`]).
    pub fn status_handle(&self) -> Arc<RwLock<Status>> {
        self.status.clone()
    }

    /// Every service has been written at least once.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn datapath(&self) -> &D {
        &self.dp
    }

    /// Hands back the datapath and the checks (for the lifecycle's teardown).
    pub fn into_parts(self) -> (D, C) {
        (self.dp, self.checks)
    }

    /// Creates every planned service (no backends yet) and starts the checks.
    ///
    /// # Errors
    /// A service the datapath refuses, or checks that cannot be set up.
    pub fn start(&mut self, now: Instant) -> Result<(), StartError> {
        for s in &self.services {
            self.dp
                .upsert_service(&s.name, &service_spec(s))
                .map_err(|e| StartError::Service {
                    service: s.name.clone(),
                    source: Box::new(e),
                })?;
        }
        self.checks
            .sync(&self.checked(&self.services))
            .map_err(|e| StartError::Checks {
                source: Box::new(e),
            })?;
        self.publish(now);
        Ok(())
    }

    /// The node's MACs and addresses, which `ip: "*"` services accept: before [`Self::start`] (so a
    /// wildcard service never answers for foreign addresses) and on every tick (addresses come and
    /// go at runtime).
    pub fn on_local_scope(&mut self, scope: &LocalScope) {
        match self.dp.set_local_scope(scope) {
            Ok(true) => {
                info!(addrs = ?scope.addrs, "local addresses for ip \"*\" services updated")
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "writing the local addresses failed"),
        }
        self.reset_departed_addrs(&scope.addrs);
    }

    /// Once a second: the datapath's clock, due slowstart steps, the first writes until ready, next
    /// hops every [`NEIGH_EVERY`] and flow GC every [`GC_EVERY`] ticks.
    pub fn on_tick(&mut self, ticks: u32, now: Instant) {
        if let Err(e) = self.dp.tick() {
            warn!(error = %e, "advancing the datapath clock failed");
        }
        let due: Vec<String> = self
            .next_steps
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.next_steps.remove(&name);
            self.rebalance(&name, now);
        }
        if self.ready {
            self.update_hurry(now);
        } else {
            self.rebalance_all(now);
        }
        if ticks.is_multiple_of(NEIGH_EVERY)
            && let Err(e) = self.dp.refresh_next_hops()
        {
            warn!(error = %e, "refreshing next hops failed");
        }
        if ticks.is_multiple_of(GC_EVERY) {
            match self.dp.gc(&self.settings.timeouts) {
                Ok(r) if r.expired + r.stale + r.orphans + r.reconciled > 0 => {
                    info!(
                        scanned = r.scanned,
                        expired = r.expired,
                        stale = r.stale,
                        orphans = r.orphans,
                        reconciled = r.reconciled,
                        "flow GC"
                    );
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "flow GC failed"),
            }
        }
        self.publish(now);
    }

    /// The desired state of one service at `now`.
    pub(super) fn balanced(&self, svc: &ServicePlan, now: Instant) -> BalancedService {
        let mut b = balance_service_with(
            svc,
            |s| self.fenced_status(svc, s),
            |s| self.admin_state(&svc.name, &s.name),
            now,
        );
        admit_queue(&mut b.backends, svc.options.maxqueue);
        b
    }

    /// A check changed state: re-balance every service it serves, and check their other servers now.
    pub fn on_health_event(&mut self, ev: &HealthEvent, now: Instant) {
        let affected: Vec<(String, String)> = servers_checked_by(self.services.iter(), &ev.key)
            .into_iter()
            .map(|(svc, srv)| (svc.name.clone(), srv.name.clone()))
            // A check shared with a server in MAINT: not that server's business (it is not checked).
            .filter(|(svc, srv)| self.admin_state(svc, srv) != AdminState::Maint)
            .collect();
        for (svc_name, srv_name) in affected {
            let key = (svc_name.clone(), srv_name.clone());
            match ev.transition.to {
                HealthState::Down => {
                    self.down_since.entry(key).or_insert(now);
                }
                _ => {
                    if let Some(since) = self.down_since.remove(&key) {
                        *self.downtime.entry(key).or_default() +=
                            now.saturating_duration_since(since);
                    }
                }
            }
            let counts = match self.services.iter().find(|s| s.name == svc_name) {
                Some(svc) => self.balanced(svc, now).counts,
                None => continue,
            };
            log_transition(&svc_name, &srv_name, &ev.transition, &ev.outcome, counts);
            self.rebalance(&svc_name, now);
            // A role moved: the other servers of this service are likely changing too (the new
            // primary of a switchover), so check them now rather than at their next interval.
            if let Some(svc) = self.services.iter().find(|s| s.name == svc_name) {
                for srv in svc.servers.iter().filter(|s| s.name != srv_name) {
                    self.checks.poke(&CheckKey::for_server(svc, srv));
                }
            }
        }
        self.update_hurry(now);
        self.publish(now);
    }

    /// Services without any usable server get their checks hurried (see [`crate::health::Burst`]).
    pub(super) fn update_hurry(&mut self, now: Instant) {
        let mut want = HashSet::new();
        for svc in &self.services {
            if !self.applied.contains_key(&svc.name) {
                continue;
            }
            let c = self.balanced(svc, now).counts;
            if c.active == 0 && c.backup == 0 {
                want.extend(
                    svc.servers
                        .iter()
                        .filter(|srv| self.admin_state(&svc.name, &srv.name) != AdminState::Maint)
                        .map(|srv| CheckKey::for_server(svc, srv)),
                );
            }
        }
        for key in want.difference(&self.hurried) {
            self.checks.hurry(key, true);
        }
        for key in self.hurried.difference(&want) {
            self.checks.hurry(key, false);
        }
        self.hurried = want;
    }

    /// Writes every service whose desired state changed; the first time all are written, releases
    /// what an earlier agent left unclaimed and turns ready.
    pub fn rebalance_all(&mut self, now: Instant) {
        let names: Vec<String> = self.services.iter().map(|s| s.name.clone()).collect();
        for n in names {
            self.rebalance(&n, now);
        }
        self.update_hurry(now);
        if !self.ready
            && self
                .services
                .iter()
                .all(|s| self.applied.contains_key(&s.name))
        {
            self.ready = true;
            if let Err(e) = self.dp.release_unclaimed() {
                warn!(error = %e, "releasing slots of services no longer planned failed");
            }
            info!(
                services = self.services.len(),
                "all services written to the datapath: ready"
            );
            self.publish(now);
        }
    }

    /// Writes one service's backend set when it changed.
    pub fn rebalance(&mut self, name: &str, now: Instant) {
        let Some(svc) = self.services.iter().find(|s| s.name == name) else {
            return;
        };
        let b = self.balanced(svc, now);
        let first = !self.applied.contains_key(name);
        // Before a service's first write, wait for its first check results: writing servers as DOWN
        // would reset the flows an earlier agent left serving (and send nothing anywhere anyway).
        if first && b.pending && now.saturating_duration_since(self.started) < FIRST_RESULTS_GRACE {
            return;
        }
        if let Some(step) = b.next_step {
            self.next_steps.insert(name.to_owned(), step);
        }
        if self.applied.get(name) == Some(&b.backends) {
            return;
        }
        // Servers going DOWN (or fenced) lose their sessions now, while their flows still exist.
        self.reset_going_down(name, &b.backends);
        match self.dp.set_backends(name, &b.backends) {
            Ok(()) => {
                if b.counts.active == 0 && b.counts.backup == 0 {
                    error!(service = name, "has no server available");
                }
                self.applied.insert(name.to_owned(), b.backends);
            }
            Err(e) => error!(service = name, error = %e, "writing the backend set failed"),
        }
    }
}

/// The SYN admission limit of each server: its (slowstart-ramped) `maxconn` plus `maxqueue`.
///
/// HAProxy refuses a connection only when the server's queue is full too: up to `maxqueue`
/// connections wait (milliseconds, typically) for a slot. pgsvc has no queue — a SYN over the limit
/// is dropped and the client retransmits a second later — so the limit that matches HAProxy's
/// refusals is `maxconn + maxqueue`. Without this, the ramp right after a failover (maxconn 1 at the
/// start of slowstart) would drop every concurrent connection to the new primary for a second.
pub(super) fn admit_queue(backends: &mut [BackendSpec], maxqueue: u32) {
    for b in backends.iter_mut().filter(|b| b.maxconn > 0) {
        b.maxconn = b.maxconn.saturating_add(maxqueue);
    }
}

/// The services of every selected cluster.
pub fn flatten(plan: &Plan) -> Vec<ServicePlan> {
    plan.clusters
        .iter()
        .flat_map(|c| c.services.iter().cloned())
        .collect()
}

/// A service as the datapath sees it.
pub fn service_spec(s: &ServicePlan) -> ServiceSpec {
    ServiceSpec {
        addrs: match s.ip {
            BindAddr::Any => Vec::new(),
            BindAddr::Addr(a) => vec![a],
        },
        port: s.port,
        algorithm: match s.balance {
            Balance::RoundRobin => Algorithm::RoundRobin,
            Balance::LeastConn => Algorithm::LeastConn,
            Balance::Maglev => Algorithm::Maglev,
        },
        maxconn: s.maxconn,
        shutdown_sessions: s.options.shutdown_sessions,
    }
}
