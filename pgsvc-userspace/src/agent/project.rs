//! Status projection: the reconciler's state, the health view and the datapath's counters turned
//! into the [`Status`] snapshot the admin API serves.

use std::{
    collections::HashMap,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use super::{checks::Checks, reconcile::Reconciler};
use crate::{
    balance::AdminState,
    datapath::Datapath,
    health::HealthState,
    plan::{Balance, BindAddr, ServicePlan},
    status::{CheckStatus, DatapathStatus, STATUS_SCHEMA, ServerStatus, ServiceStatus, Status},
};

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl<D: Datapath, C: Checks> Reconciler<D, C> {
    /// Rebuilds the status snapshot the admin API serves.
    pub fn publish(&self, now: Instant) {
        let reasons = self.dp.reason_counts();
        let mut services = Vec::with_capacity(self.services.len());
        for svc in &self.services {
            services.push(self.service_status(svc, now));
        }
        let snapshot = Status {
            schema: STATUS_SCHEMA.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at: self.identity.started_unix,
            updated_at: unix_now(),
            ready: self.ready,
            config: self.identity.config.clone(),
            clusters: self.plan.clusters.iter().map(|c| c.name.clone()).collect(),
            iface: self.identity.iface.clone(),
            xdp_mode: self.identity.xdp_mode.to_owned(),
            snat_addr: self.identity.snat_addr.to_string(),
            vip: self.identity.vip.map(|(a, p)| format!("{a}/{p}")),
            last_reload: self.last_reload.clone(),
            services,
            datapath: DatapathStatus {
                flows: self.dp.flow_count() as u64,
                max_flows: u64::from(self.dp.max_flows()),
                packets: reasons
                    .into_iter()
                    .map(|(r, n)| (r.name().to_owned(), n))
                    .collect(),
            },
        };
        match self.status.write() {
            Ok(mut s) => *s = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    fn service_status(&self, svc: &ServicePlan, now: Instant) -> ServiceStatus {
        let b = self.balanced(svc, now);
        let applied = self.applied.get(&svc.name);
        let stats = self.dp.service_stats(&svc.name).unwrap_or_default();
        let conns: HashMap<String, u64> = self
            .dp
            .backend_conns(&svc.name)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let bstats: HashMap<String, pgsvc_common::TrafficStats> = self
            .dp
            .backend_stats(&svc.name)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let servers = svc
            .servers
            .iter()
            .map(|srv| {
                let h = self.checks.server_health(svc, srv);
                let admin = self.admin_state(&svc.name, &srv.name);
                let spec = applied.and_then(|a| a.iter().find(|s| s.name == srv.name));
                let st = bstats.get(&srv.name).copied().unwrap_or_default();
                let key = (svc.name.clone(), srv.name.clone());
                let mut downtime = self.downtime.get(&key).copied().unwrap_or_default();
                if let Some(since) = self.down_since.get(&key) {
                    downtime += now.saturating_duration_since(*since);
                }
                ServerStatus {
                    name: srv.name.clone(),
                    addr: srv.addr.to_string(),
                    port: srv.port,
                    check_port: srv.check_port,
                    backup: srv.backup,
                    weight: srv.weight,
                    effective_weight: spec.map_or(0, |s| s.weight),
                    // HAProxy reports an operator's state before the health.
                    state: match (admin, h.state) {
                        (AdminState::Maint, _) => "MAINT",
                        (AdminState::Drain, _) => "DRAIN",
                        (_, HealthState::Up) => "UP",
                        (_, HealthState::Down) => "DOWN",
                        _ => "UNKNOWN",
                    }
                    .to_owned(),
                    admin_state: admin,
                    active: spec.is_some_and(|s| s.active),
                    health: h.health,
                    health_status: h.status.clone(),
                    last_check: h.last_check.as_ref().map(|c| CheckStatus {
                        passed: c.passed(),
                        reason: match &c.result {
                            Ok(()) => "L7 OK".to_owned(),
                            Err(f) => f.to_string(),
                        },
                        code: c.haproxy_status().code,
                        duration_ms: c.duration.as_secs_f64() * 1000.0,
                    }),
                    checks_total: h.checks_total,
                    check_failures_total: h.failures_total,
                    check_up_down_total: h.up_down_total,
                    last_change_seconds: h
                        .last_change
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                    downtime_seconds: downtime.as_secs_f64(),
                    current_sessions: conns.get(&srv.name).copied().unwrap_or(0),
                    sessions_total: st.new_flows,
                    bytes_in: st.bytes_in,
                    bytes_out: st.bytes_out,
                    rst_sent: st.rst_sent,
                }
            })
            .collect();
        ServiceStatus {
            name: svc.name.clone(),
            cluster: svc.cluster.clone(),
            ip: match svc.ip {
                BindAddr::Any => "*".to_owned(),
                BindAddr::Addr(a) => a.to_string(),
            },
            port: svc.port,
            check: svc.check.clone(),
            balance: match svc.balance {
                Balance::RoundRobin => "roundrobin",
                Balance::LeastConn => "leastconn",
                Balance::Maglev => "maglev",
            }
            .to_owned(),
            maxconn: svc.maxconn,
            active_servers: b.counts.active,
            backup_servers: b.counts.backup,
            using_backups: b.using_backups,
            current_sessions: self.dp.service_conns(&svc.name).unwrap_or(0),
            sessions_total: stats.new_flows,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            rst_sent: stats.rst_sent,
            syn_dropped: stats.syn_dropped,
            servers,
        }
    }
}
