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
    status::{
        CheckStatus, DatapathStatus, FlowTableStatus, Peaks, ProcessStatus, STATUS_SCHEMA,
        ServerStatus, ServiceStatus, Status,
    },
};

/// CPU time (user + system) of this process so far, seconds (0 when the kernel will not say).
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// The soft open-file limit (0 when unknown or unlimited).
pub fn max_fds() -> u64 {
    // SAFETY: getrlimit only writes the struct it is given.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `rl` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0
        || rl.rlim_cur == libc::RLIM_INFINITY
    {
        return 0;
    }
    rl.rlim_cur
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl<D: Datapath, C: Checks> Reconciler<D, C> {
    /// Rebuilds the status snapshot the admin API serves.
    pub fn publish(&self, now: Instant) {
        let reasons = self.dp.reason_counts();
        // The previous snapshot carries the peaks and rate windows forward.
        let prev = match self.status.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        // Unix time on the monotonic clock the reconciler is driven by (tests inject it).
        let wall =
            self.identity.started_unix + now.saturating_duration_since(self.started).as_secs_f64();
        let published = !prev.schema.is_empty();
        let mut services = Vec::with_capacity(self.services.len());
        for svc in &self.services {
            let before = prev.services.iter().find(|p| p.name == svc.name);
            services.push(self.service_status(svc, now, before, wall));
        }
        let (current, total) = services.iter().fold((0, 0), |(c, t), s| {
            (c + s.current_sessions, t + s.sessions_total)
        });
        let mut process = ProcessStatus::next(
            published.then_some(&prev.process),
            process_cpu_seconds(),
            wall,
            super::WORKER_THREADS as u32,
            max_fds(),
        );
        process.peaks = Peaks::next(
            published.then_some(&prev.process.peaks),
            current,
            total,
            wall,
        );
        let snapshot = Status {
            schema: STATUS_SCHEMA.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at: self.identity.started_unix,
            updated_at: wall,
            ready: self.ready,
            config: self.identity.config.clone(),
            clusters: self.plan.clusters.iter().map(|c| c.name.clone()).collect(),
            iface: self.identity.iface.clone(),
            xdp_mode: self.identity.xdp_mode.to_owned(),
            snat_addr: self.identity.snat_addr.to_string(),
            vip: self.identity.vip.map(|(a, p)| format!("{a}/{p}")),
            local_clients: self.identity.local_clients.clone(),
            last_reload: self.last_reload.clone(),
            services,
            datapath: DatapathStatus {
                flows: self.dp.flow_count() as u64,
                max_flows: u64::from(self.dp.max_flows()),
                tables: self
                    .dp
                    .flow_tables()
                    .into_iter()
                    .map(|(name, entries, capacity)| FlowTableStatus {
                        name: name.to_owned(),
                        entries,
                        capacity,
                    })
                    .collect(),
                flows_evicted: self.dp.flows_evicted(),
                packets: reasons
                    .into_iter()
                    .map(|(r, n)| (r.name().to_owned(), n))
                    .collect(),
                snat_ports: self.settings.snat_ports.clone().count() as u64,
            },
            process,
            dcs: self.dcs_status(now),
            sessions_reset: self.resets.status(),
        };
        match self.status.write() {
            Ok(mut s) => *s = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    fn service_status(
        &self,
        svc: &ServicePlan,
        now: Instant,
        prev: Option<&ServiceStatus>,
        wall: f64,
    ) -> ServiceStatus {
        let b = self.balanced(svc, now);
        let applied = self.applied.get(&svc.name);
        let stats = self.dp.service_stats(&svc.name).unwrap_or_default();
        let conns: HashMap<String, u64> = self
            .dp
            .backend_conns(&svc.name)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let snat: HashMap<String, u64> = self
            .dp
            .snat_ports_in_use(&svc.name)
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
                    // HAProxy reports MAINT before the health, and DRAIN only while the server is UP.
                    state: match (admin, h.state) {
                        (AdminState::Maint, _) => "MAINT",
                        (AdminState::Drain, HealthState::Up) => "DRAIN",
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
                        code_name: c.haproxy_status().code_name.to_owned(),
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
                    rst_sent: st.rst_sent + self.resets.of(&svc.name, Some(&srv.name)),
                    peaks: Peaks::next(
                        prev.and_then(|p| p.servers.iter().find(|v| v.name == srv.name))
                            .map(|v| &v.peaks),
                        conns.get(&srv.name).copied().unwrap_or(0),
                        st.new_flows,
                        wall,
                    ),
                    fenced: self.is_fenced(svc, srv),
                    snat_ports_in_use: snat.get(&srv.name).copied().unwrap_or(0),
                }
            })
            .collect();
        let current = self.dp.service_conns(&svc.name).unwrap_or(0);
        let usable = b.counts.active + b.counts.backup > 0;
        let was_usable = prev.is_some_and(|p| p.active_servers + p.backup_servers > 0);
        ServiceStatus {
            peaks: Peaks::next(prev.map(|p| &p.peaks), current, stats.new_flows, wall),
            down_transitions: prev.map_or(0, |p| p.down_transitions)
                + u64::from(was_usable && !usable),
            server_maxconn: svc.options.maxconn,
            server_maxqueue: svc.options.maxqueue,
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
            current_sessions: current,
            sessions_total: stats.new_flows,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            rst_sent: stats.rst_sent + self.resets.of(&svc.name, None),
            syn_dropped: stats.syn_dropped,
            servers,
        }
    }
}
