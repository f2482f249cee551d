//! Leader-key fencing of write services (checks `/primary`, `/leader`, `/master`), driven by the
//! DCS watch ([`crate::dcs`]):
//! - a member is eligible only while it holds the leader key: when the key leaves it, it is out of
//!   the active set at once (no waiting for `fall` failures) and, with `on-marked-down
//!   shutdown-sessions`, its sessions are reset — it is marked down the way a failed check marks it;
//! - when the key arrives at a member, one successful check after the arrival makes it UP (rise 1:
//!   the key plus a passing `/primary` is stronger evidence than `rise` passes without it);
//! - while Patroni's `/failover` key asks the holder to step down (a switchover or failover under
//!   way: its PostgreSQL is about to stop although it keeps the key until then), the holder is fenced
//!   too — new connections get no server, its sessions are reset the same way — and when the request
//!   goes away with the holder unchanged (Patroni refused it), it is back at once. Patroni's graceful
//!   demotion first runs a CHECKPOINT, during which the holder still takes writes as a direct client
//!   sees it: when the agent can watch the holder's REST API ([`super::stepdown`]), the fence waits
//!   for Patroni to report its PostgreSQL stopping (or for its API to stop answering), so the write
//!   service stays up through the checkpoint;
//! - read services keep HAProxy's semantics, and without a DCS view (`--dcs off`, etcd unreachable,
//!   the key absent under Patroni's `failsafe_mode`) REST checks alone decide, as before.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Instant,
};

use tracing::{info, warn};

use super::{checks::Checks, reconcile::Reconciler};
use crate::{
    balance::{AdminState, ServerStatus},
    datapath::Datapath,
    dcs::{DcsUpdate, LeaderView, is_write_check},
    health::{CheckKey, CheckOutcome, HealthState},
    plan::{ServerPlan, ServicePlan},
    status::DcsClusterStatus,
};

/// One holder's time with the key.
#[derive(Clone, Debug)]
pub(super) struct Tenure {
    pub holder: Option<String>,
    /// When the key arrived (as far as the agent knows).
    pub since: Instant,
    /// Each write check of the holder: how many results it had when the key arrived. A pass counts
    /// for rise 1 only when it came later.
    pub checks_at_arrival: HashMap<CheckKey, u64>,
    /// The holder was not UP when the key arrived: its slowstart runs from the arrival.
    pub rose_under_key: bool,
    /// The holder is asked to step down (why): fenced like the others, once `stopping` says its
    /// PostgreSQL stops when the agent watches for that (`watched`).
    pub leaving: Option<String>,
    /// The step-down is watched on the holder's REST API ([`super::stepdown`]): the holder stays in
    /// until `stopping`.
    pub watched: bool,
    /// The holder's Patroni reports its PostgreSQL stopping, or its API stopped answering (why).
    pub stopping: Option<String>,
    /// A new holder whose promotion is not yet confirmed ([`super::promotion`]): kept out.
    pub promoting: bool,
}

impl Tenure {
    /// Whether `server` may take the write services' traffic under this tenure.
    fn admits(&self, server: &str) -> bool {
        self.holder.as_deref() == Some(server) && !self.fenced_holder()
    }

    /// The holder steps down and no longer takes writes (or is not watched and may stop any time).
    fn fenced_holder(&self) -> bool {
        self.leaving.is_some() && (!self.watched || self.stopping.is_some())
    }

    /// The holder is asked to step down and is watched until its PostgreSQL stops.
    pub(super) fn watching(&self) -> bool {
        self.leaving.is_some() && self.watched && self.stopping.is_none()
    }
}

/// What the agent knows of one cluster's DCS.
#[derive(Debug, Default)]
pub(super) struct ClusterDcs {
    /// `None`: REST checks alone decide.
    pub tenure: Option<Tenure>,
    pub endpoint: Option<String>,
    pub fallback_reason: Option<String>,
    pub revision: i64,
    pub confirmed: Option<Instant>,
    pub fence_events: u64,
    pub fallbacks: u64,
}

/// Every watched cluster (none without a DCS).
#[derive(Debug, Default)]
pub struct Fencing {
    pub(super) clusters: BTreeMap<String, ClusterDcs>,
    /// The agent watches a stepping-down holder's REST API ([`super::stepdown`]); off, the holder
    /// is fenced on the request itself.
    pub(super) watch_stepdowns: bool,
    /// A new holder waits for its promotion ([`super::promotion`]); off, its check alone decides.
    pub(super) watch_promotions: bool,
}

/// A holder asked to step down whose REST API the agent watches until its PostgreSQL stops.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StepdownTarget {
    pub cluster: String,
    pub holder: String,
    pub addr: std::net::Ipv4Addr,
    /// Patroni's REST port and whether it speaks TLS.
    pub port: u16,
    pub tls: bool,
}

impl<D: Datapath, C: Checks> Reconciler<D, C> {
    /// One observation of a cluster's DCS from its watch.
    pub fn on_dcs(&mut self, u: &DcsUpdate, now: Instant) {
        let c = self.fence.clusters.entry(u.cluster.clone()).or_default();
        c.endpoint.clone_from(&u.endpoint);
        if u.revision > 0 {
            c.revision = u.revision;
        }
        c.confirmed = u.endpoint.is_some().then_some(u.confirmed);
        match &u.view {
            LeaderView::Leader(holder) => {
                self.on_key(&u.cluster, holder.clone(), u.leaving.clone(), now);
            }
            LeaderView::Fallback(reason) => self.on_dcs_fallback(&u.cluster, reason, now),
        }
    }

    /// The leader key of `cluster` is held by `holder` (None: no leader): fence its write services.
    pub fn on_leader(&mut self, cluster: &str, holder: Option<String>, now: Instant) {
        self.on_key(cluster, holder, None, now);
    }

    /// The leader key of `cluster` is held by `holder`, which is asked to step down when `leaving`
    /// says why: fence its write services on both.
    pub fn on_key(
        &mut self,
        cluster: &str,
        holder: Option<String>,
        leaving: Option<String>,
        now: Instant,
    ) {
        let c = self.fence.clusters.entry(cluster.to_owned()).or_default();
        if let Some(t) = c.tenure.as_mut()
            && t.holder == holder
        {
            if t.leaving == leaving {
                return;
            }
            let watched = self.fence.watch_stepdowns;
            match &leaving {
                Some(why) => log_stepdown(cluster, why, watched),
                None => info!(
                    cluster,
                    leader = holder.as_deref().unwrap_or("(none)"),
                    "the step-down request is gone and the leader kept the key: back in"
                ),
            }
            t.leaving = leaving;
            t.watched = watched;
            t.stopping = None;
            self.refence(cluster, now);
            return;
        }
        let write: Vec<ServicePlan> = self.write_services(cluster).cloned().collect();
        if let Some(h) = &holder
            && !write.is_empty()
            && !write.iter().any(|s| s.servers.iter().any(|v| &v.name == h))
        {
            let reason = format!(
                "the leader key names {h:?}, which is no server of {cluster}'s write services"
            );
            self.on_dcs_fallback(cluster, &reason, now);
            return;
        }
        let mut checks_at_arrival = HashMap::new();
        let mut was_up = false;
        for svc in &write {
            for srv in svc
                .servers
                .iter()
                .filter(|v| Some(&v.name) == holder.as_ref())
            {
                let h = self.checks.server_health(svc, srv);
                was_up |= h.state == HealthState::Up;
                checks_at_arrival.insert(CheckKey::for_server(svc, srv), h.checks_total);
            }
        }
        info!(
            cluster,
            leader = holder.as_deref().unwrap_or("(none)"),
            "leader key: write services follow its holder"
        );
        let c = self.fence.clusters.entry(cluster.to_owned()).or_default();
        c.fallback_reason = None;
        let watched = self.fence.watch_stepdowns;
        if let Some(why) = &leaving {
            log_stepdown(cluster, why, watched);
        }
        let rose_under_key = holder.is_some() && !was_up;
        let promoting = self.fence.watch_promotions && rose_under_key;
        let c = self.fence.clusters.entry(cluster.to_owned()).or_default();
        c.tenure = Some(Tenure {
            rose_under_key,
            holder,
            since: now,
            checks_at_arrival,
            leaving,
            watched,
            stopping: None,
            promoting,
        });
        self.refence(cluster, now);
    }

    /// Whether a holder asked to step down stays in until its REST API says its PostgreSQL stops
    /// (the agent then runs the watches [`Self::stepdown_targets`] lists).
    pub fn set_watch_stepdowns(&mut self, on: bool) {
        self.fence.watch_stepdowns = on;
    }

    /// The holders asked to step down that are still in and watched (see [`super::stepdown`]).
    #[must_use]
    pub fn stepdown_targets(&self) -> Vec<StepdownTarget> {
        self.fence_targets(Tenure::watching)
    }

    /// The REST API of each cluster's key holder whose tenure `pick` selects.
    pub(super) fn fence_targets(&self, pick: impl Fn(&Tenure) -> bool) -> Vec<StepdownTarget> {
        let mut out = Vec::new();
        for (cluster, c) in &self.fence.clusters {
            let Some(t) = c.tenure.as_ref().filter(|t| pick(t)) else {
                continue;
            };
            let Some(holder) = t.holder.as_deref() else {
                continue;
            };
            let srv = self
                .write_services(cluster)
                .flat_map(|s| s.servers.iter())
                .find(|v| v.name == holder);
            if let Some(v) = srv {
                out.push(StepdownTarget {
                    cluster: cluster.clone(),
                    holder: holder.to_owned(),
                    addr: v.addr,
                    port: v.check_port,
                    tls: v.check_tls,
                });
            }
        }
        out
    }

    /// The stepping-down `holder` of `cluster` stops taking writes (`why`): fenced now.
    pub fn on_stepdown_stopping(&mut self, cluster: &str, holder: &str, why: &str, now: Instant) {
        let Some(t) = self
            .fence
            .clusters
            .get_mut(cluster)
            .and_then(|c| c.tenure.as_mut())
            .filter(|t| t.watching() && t.holder.as_deref() == Some(holder))
        else {
            return;
        };
        t.stopping = Some(why.to_owned());
        warn!(
            cluster,
            leader = holder,
            reason = why,
            "the leader steps down and its PostgreSQL stops: fenced"
        );
        self.refence(cluster, now);
    }

    /// REST checks alone decide for `cluster` from now on (etcd unreachable, failsafe), for `reason`.
    pub fn on_dcs_fallback(&mut self, cluster: &str, reason: &str, now: Instant) {
        let c = self.fence.clusters.entry(cluster.to_owned()).or_default();
        if c.tenure.is_none() && c.fallback_reason.as_deref() == Some(reason) {
            return;
        }
        let was_fencing = c.tenure.take().is_some();
        // A new reason while already falling back is logged, not counted as another fallback.
        if was_fencing || c.fallback_reason.is_none() {
            c.fallbacks += 1;
        }
        c.fallback_reason = Some(reason.to_owned());
        warn!(
            cluster,
            reason, "DCS: write services fall back to REST checks alone"
        );
        if was_fencing {
            self.refence(cluster, now);
        } else {
            self.publish(now);
        }
    }

    /// The holder of some watched cluster's key is not yet in its write services: its checks are
    /// watched closely (see [`Self::on_fence_poll`]).
    pub fn fence_awaiting(&self) -> bool {
        self.fence.clusters.keys().any(|c| self.awaits_holder(c))
    }

    /// Re-balances write services whose key holder awaits its first passing check.
    pub fn on_fence_poll(&mut self, now: Instant) {
        let waiting: Vec<String> = self
            .fence
            .clusters
            .keys()
            .filter(|c| self.awaits_holder(c))
            .cloned()
            .collect();
        for cluster in waiting {
            let names: Vec<String> = self
                .write_services(&cluster)
                .map(|s| s.name.clone())
                .collect();
            let before = names
                .iter()
                .map(|n| self.applied.get(n).cloned())
                .collect::<Vec<_>>();
            for n in &names {
                self.rebalance(n, now);
            }
            let after = names
                .iter()
                .map(|n| self.applied.get(n).cloned())
                .collect::<Vec<_>>();
            if before != after {
                self.update_hurry(now);
                self.publish(now);
            }
        }
    }

    /// The health of `srv` in `svc` as balance sees it, fencing applied.
    pub(super) fn fenced_status(&self, svc: &ServicePlan, srv: &ServerPlan) -> ServerStatus {
        let h = self.checks.server_health(svc, srv);
        let base = h.status_for_balance();
        let Some(t) = self.tenure_for(svc) else {
            return base;
        };
        if !t.admits(&srv.name) || t.promoting {
            return ServerStatus::Down;
        }
        match base {
            ServerStatus::Up { since, at_startup } => ServerStatus::Up {
                since: if t.rose_under_key {
                    since.min(t.since)
                } else {
                    since
                },
                at_startup,
            },
            _ if h.last_check.as_ref().is_some_and(CheckOutcome::passed)
                && h.checks_total
                    > t.checks_at_arrival
                        .get(&CheckKey::for_server(svc, srv))
                        .copied()
                        .unwrap_or(0) =>
            {
                ServerStatus::Up {
                    since: t.since,
                    at_startup: false,
                }
            }
            other => other,
        }
    }

    /// `srv` is out of `svc` because another member holds the key.
    pub(super) fn is_fenced(&self, svc: &ServicePlan, srv: &ServerPlan) -> bool {
        self.tenure_for(svc).is_some_and(|t| !t.admits(&srv.name))
    }

    /// The DCS part of the status snapshot.
    pub(super) fn dcs_status(&self, now: Instant) -> Vec<DcsClusterStatus> {
        self.fence
            .clusters
            .iter()
            .map(|(name, c)| DcsClusterStatus {
                cluster: name.clone(),
                connected: c.endpoint.is_some(),
                endpoint: c.endpoint.clone(),
                fencing: c.tenure.is_some(),
                leader: c.tenure.as_ref().and_then(|t| t.holder.clone()),
                leader_leaving: c.tenure.as_ref().and_then(|t| t.leaving.clone()),
                fallback_reason: c.fallback_reason.clone(),
                revision: c.revision,
                watch_lag_seconds: c
                    .confirmed
                    .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                fence_events_total: c.fence_events,
                fallbacks_total: c.fallbacks,
            })
            .collect()
    }

    fn tenure_for(&self, svc: &ServicePlan) -> Option<&Tenure> {
        if !is_write_check(&svc.check) {
            return None;
        }
        self.fence.clusters.get(&svc.cluster)?.tenure.as_ref()
    }

    fn write_services<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a ServicePlan> {
        self.services
            .iter()
            .filter(move |s| s.cluster == cluster && is_write_check(&s.check))
    }

    fn awaits_holder(&self, cluster: &str) -> bool {
        let Some(holder) = self
            .fence
            .clusters
            .get(cluster)
            .and_then(|c| c.tenure.as_ref())
            .filter(|t| t.leaving.is_none())
            .and_then(|t| t.holder.as_deref())
        else {
            return false;
        };
        self.write_services(cluster).any(|svc| {
            svc.servers.iter().any(|v| v.name == holder)
                && self.admin_state(&svc.name, holder) != AdminState::Maint
                && !self
                    .applied
                    .get(&svc.name)
                    .is_some_and(|set| set.iter().any(|b| b.name == holder && b.up))
        })
    }

    /// Re-balances `cluster`'s write services after its view changed: logs and counts the servers
    /// the key took out, and checks the holder now.
    pub(super) fn refence(&mut self, cluster: &str, now: Instant) {
        let services: Vec<ServicePlan> = self.write_services(cluster).cloned().collect();
        let tenure = self
            .fence
            .clusters
            .get(cluster)
            .and_then(|c| c.tenure.clone());
        let mut fenced = 0;
        for svc in &services {
            let up_before: HashSet<String> = self
                .applied
                .get(&svc.name)
                .map(|set| {
                    set.iter()
                        .filter(|b| b.up)
                        .map(|b| b.name.clone())
                        .collect()
                })
                .unwrap_or_default();
            self.rebalance(&svc.name, now);
            if let Some(t) = &tenure {
                let holder = t.holder.as_deref();
                let set = self.applied.get(&svc.name);
                for name in &up_before {
                    let up_now = set.is_some_and(|s| s.iter().any(|b| &b.name == name && b.up));
                    if !up_now && !t.admits(name) {
                        fenced += 1;
                        warn!(
                            service = svc.name,
                            server = name,
                            leader = holder.unwrap_or("(none)"),
                            "fenced: {}; out of the active set",
                            if holder == Some(name.as_str()) {
                                "holds the leader key but is asked to step down"
                            } else {
                                "does not hold the leader key"
                            }
                        );
                    }
                }
                for srv in svc.servers.iter().filter(|v| t.admits(&v.name)) {
                    self.checks.poke(&CheckKey::for_server(svc, srv));
                }
            }
        }
        if let Some(c) = self.fence.clusters.get_mut(cluster) {
            c.fence_events += fenced;
        }
        self.update_hurry(now);
        self.publish(now);
    }
}

fn log_stepdown(cluster: &str, why: &str, watched: bool) {
    if watched {
        info!(
            cluster,
            reason = why,
            "the leader is asked to step down: it takes writes until its PostgreSQL stops (watching its REST API)"
        );
    } else {
        warn!(cluster, reason = why, "the leader steps down: fenced");
    }
}
