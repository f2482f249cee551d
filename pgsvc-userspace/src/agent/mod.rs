//! The running agent: joins the plan, the health checks and the datapath, and keeps every service's
//! backend set in the XDP maps true to the cluster's live roles.
//!
//! Lifecycle (in this order, so that bad input never touches the kernel): read and validate the
//! inventory → check the interface → load (or adopt) the pinned datapath → attach → add the VIP →
//! start health checks → write each service once its first check results are in → serve until
//! SIGINT/SIGTERM, re-reading the inventory on SIGHUP or `POST /reload` → detach and unpin (or, with
//! `--keep`, leave everything serving for the next agent).
//!
//! One task owns the datapath and the health monitor; the admin API only reads the [`Status`]
//! snapshot this loop publishes, so it stays responsive whatever the data plane is doing.

pub mod status;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use pgsvc_common::Algorithm;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use crate::{
    admin::{self, ReloadRequest},
    balance::{BalancedService, balance_service},
    datapath::{
        AttachMode, BackendSpec, Datapath, LoadOptions, ServiceSpec, Timeouts, XdpDatapath, neigh,
    },
    health::{
        Burst, CheckKey, HealthEvent, HealthMonitor, HealthState, ServerHealth, TlsSettings,
        log_transition, servers_checked_by,
    },
    plan::{self, Balance, BindAddr, Plan, ServicePlan},
};

pub use status::Status;

/// Everything `pgsvc run` was asked to do.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub config: PathBuf,
    pub cluster: Option<String>,
    pub iface: String,
    /// Address (and prefix) to add to the interface while running.
    pub vip: Option<(Ipv4Addr, u8)>,
    /// Source address of translated connections (default: the interface's first IPv4 address).
    pub snat_ip: Option<Ipv4Addr>,
    pub snat_ports: std::ops::RangeInclusive<u16>,
    pub xdp_mode: AttachMode,
    pub admin: SocketAddr,
    pub pin_dir: PathBuf,
    pub max_flows: u32,
    /// Leave program, link and maps pinned on exit, for the next agent to adopt.
    pub keep: bool,
    /// CA bundle for checks of `patroni_ssl_enabled` members.
    pub ca_file: Option<PathBuf>,
    pub timeouts: Timeouts,
    /// Burst checking during transitions and outages (`None`: HAProxy's schedule exactly).
    pub check_burst: Option<Duration>,
}

/// How long after start a service may wait for its first check results before it is written with
/// whatever is known (a check never takes longer than its timeout, so this is only a safety net).
const FIRST_RESULTS_GRACE: Duration = Duration::from_secs(10);
const GC_EVERY: u32 = 5;
const NEIGH_EVERY: u32 = 2;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs the agent until a signal stops it.
///
/// # Errors
/// Invalid inventory, unknown interface, BPF or XDP refused — each with its reason, before or
/// instead of touching traffic.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let (plan, warnings) = plan::load_plan(&opts.config, opts.cluster.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the inventory is not valid; nothing was changed")?;
    for w in &warnings {
        warn!("{w}");
    }
    let services = flatten(&plan);
    if services.is_empty() {
        bail!(
            "the inventory defines no service for {}",
            opts.cluster.as_deref().unwrap_or("any cluster")
        );
    }
    let Some((_, iface_mac)) = neigh::interface(&opts.iface) else {
        bail!("interface {} does not exist", opts.iface);
    };
    let snat_addr = match opts.snat_ip {
        Some(a) => a,
        None => first_ipv4(&opts.iface, opts.vip.map(|v| v.0)).with_context(|| {
            format!(
                "interface {} has no IPv4 address to use as SNAT source (give --snat-ip)",
                opts.iface
            )
        })?,
    };
    for s in &services {
        if opts.snat_ports.contains(&s.port) {
            bail!(
                "service {} listens on port {}, inside the SNAT port range {}-{}",
                s.name,
                s.port,
                opts.snat_ports.start(),
                opts.snat_ports.end()
            );
        }
    }
    reserve_ports(&opts.snat_ports)?;
    // Bound before the kernel is touched: a busy port fails the start with nothing to undo.
    let listener = tokio::net::TcpListener::bind(opts.admin)
        .await
        .with_context(|| format!("binding the admin API on {}", opts.admin))?;

    let mut lo = LoadOptions::new(&opts.pin_dir, snat_addr);
    lo.max_flows = opts.max_flows;
    lo.snat_ports = opts.snat_ports.clone();
    let mut dp = XdpDatapath::load(lo).context("loading the XDP program")?;
    if dp.adopted() {
        info!(pin_dir = %opts.pin_dir.display(), "adopting the datapath an earlier agent left pinned");
    }
    let mode = match dp.attach(&opts.iface, opts.xdp_mode) {
        Ok(mode) => mode,
        Err(e) => {
            abandon(dp);
            return Err(e).with_context(|| format!("attaching XDP to {}", opts.iface));
        }
    };
    info!(iface = opts.iface, mode, mac = ?iface_mac, snat = %snat_addr, "datapath ready");
    let vip_added = match opts.vip {
        // An adopted datapath's VIP was added by the agent before us: ours to remove on exit too.
        Some((addr, prefix)) => match add_vip(&opts.iface, addr, prefix) {
            Ok(added) => added || dp.adopted(),
            Err(e) => {
                abandon(dp);
                return Err(e);
            }
        },
        None => false,
    };

    let (mut monitor, events) = HealthMonitor::new(TlsSettings {
        ca_file: opts.ca_file.clone(),
        verify_hostname: false,
    });
    monitor.set_burst(opts.check_burst.map(|interval| Burst { interval }));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let status = Arc::new(RwLock::new(Status::default()));
    let admin_task = tokio::spawn(admin::serve(
        listener,
        status.clone(),
        reload_tx,
        shutdown_rx,
    ));
    info!(addr = %opts.admin, "admin API listening");

    let mut agent = Agent {
        started: Instant::now(),
        started_unix: unix_now(),
        opts: opts.clone(),
        mode,
        snat_addr,
        plan,
        services,
        dp,
        monitor,
        applied: HashMap::new(),
        hurried: HashSet::new(),
        next_steps: HashMap::new(),
        down_since: HashMap::new(),
        downtime: HashMap::new(),
        status,
        last_reload: None,
        ready: false,
    };
    let result = agent.main_loop(events, reload_rx).await;

    let _ = shutdown_tx.send(true);
    let _ = admin_task.await;
    let Agent { dp, monitor, .. } = agent;
    monitor.shutdown().await;
    if opts.keep {
        dp.leave_pinned();
    } else {
        if vip_added && let Some((addr, prefix)) = opts.vip {
            remove_vip(&opts.iface, addr, prefix);
        }
        dp.detach_and_unpin().context("detaching")?;
    }
    result
}

/// The SYN admission limit of each server: its (slowstart-ramped) `maxconn` plus `maxqueue`.
///
/// HAProxy refuses a connection only when the server's queue is full too: up to `maxqueue`
/// connections wait (milliseconds, typically) for a slot. pgsvc has no queue — a SYN over the limit
/// is dropped and the client retransmits a second later — so the limit that matches HAProxy's
/// refusals is `maxconn + maxqueue`. Without this, the ramp right after a failover (maxconn 1 at the
/// start of slowstart) would drop every concurrent connection to the new primary for a second.
fn admit_queue(backends: &mut [BackendSpec], maxqueue: u32) {
    for b in backends.iter_mut().filter(|b| b.maxconn > 0) {
        b.maxconn = b.maxconn.saturating_add(maxqueue);
    }
}

/// Undoes a start that failed after the datapath was loaded: a datapath of our own is detached and
/// unpinned; an adopted one stays as it was, still serving for whoever started it.
fn abandon(dp: XdpDatapath) {
    if dp.adopted() {
        dp.leave_pinned();
    } else if let Err(e) = dp.detach_and_unpin() {
        warn!(error = %e, "cleaning up after a failed start");
    }
}

/// The services of every selected cluster.
fn flatten(plan: &Plan) -> Vec<ServicePlan> {
    plan.clusters
        .iter()
        .flat_map(|c| c.services.iter().cloned())
        .collect()
}

fn service_spec(s: &ServicePlan) -> ServiceSpec {
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

struct Agent {
    started: Instant,
    started_unix: f64,
    opts: AgentOptions,
    mode: &'static str,
    snat_addr: Ipv4Addr,
    plan: Plan,
    services: Vec<ServicePlan>,
    dp: XdpDatapath,
    monitor: HealthMonitor,
    /// What each service's backends were last written as.
    applied: HashMap<String, Vec<BackendSpec>>,
    /// Checks of services that have no usable server (checked at the burst interval).
    hurried: HashSet<CheckKey>,
    /// Pending slowstart steps per service.
    next_steps: HashMap<String, Instant>,
    /// For `downtime_seconds`: when each (service, server) went DOWN, and time accumulated.
    down_since: HashMap<(String, String), Instant>,
    downtime: HashMap<(String, String), Duration>,
    status: Arc<RwLock<Status>>,
    last_reload: Option<status::ReloadStatus>,
    ready: bool,
}

impl Agent {
    async fn main_loop(
        &mut self,
        mut events: mpsc::UnboundedReceiver<HealthEvent>,
        mut reloads: mpsc::Receiver<ReloadRequest>,
    ) -> anyhow::Result<()> {
        self.refresh_local_scope();
        for s in &self.services {
            self.dp
                .upsert_service(&s.name, &service_spec(s))
                .with_context(|| format!("service {}", s.name))?;
        }
        self.monitor
            .sync(self.services.iter())
            .context("starting health checks")?;
        let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Re-balance shortly after start, when most first results are in.
        let mut settle = tokio::time::interval(Duration::from_millis(100));
        let mut ticks: u32 = 0;
        self.publish();
        loop {
            tokio::select! {
                Some(ev) = events.recv() => self.on_health_event(&ev),
                _ = settle.tick(), if !self.ready => self.rebalance_all(),
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    self.on_tick(ticks);
                }
                Some(req) = reloads.recv() => {
                    let r = self.reload();
                    let _ = req.reply.send(r);
                }
                _ = sighup.recv() => {
                    let _ = self.reload();
                }
                _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            }
        }
        Ok(())
    }

    fn on_tick(&mut self, ticks: u32) {
        if let Err(e) = self.dp.tick() {
            warn!(error = %e, "advancing the datapath clock failed");
        }
        self.refresh_local_scope();
        let now = Instant::now();
        let due: Vec<String> = self
            .next_steps
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.next_steps.remove(&name);
            self.rebalance(&name);
        }
        if self.ready {
            self.update_hurry();
        } else {
            self.rebalance_all();
        }
        if ticks.is_multiple_of(NEIGH_EVERY)
            && let Err(e) = self.dp.refresh_next_hops()
        {
            warn!(error = %e, "refreshing next hops failed");
        }
        if ticks.is_multiple_of(GC_EVERY) {
            match self.dp.gc(&self.opts.timeouts) {
                Ok(r) if r.expired + r.stale + r.orphans > 0 => {
                    info!(
                        scanned = r.scanned,
                        expired = r.expired,
                        stale = r.stale,
                        orphans = r.orphans,
                        "flow GC"
                    );
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "flow GC failed"),
            }
        }
        self.publish();
    }

    /// What `ip: "*"` services accept: frames to the interface's MAC whose destination is one of the
    /// node's IPv4 addresses (on any interface, as the kernel accepts them). Addresses come and go at
    /// runtime (a VIP moved by vip-manager), hence on every tick.
    fn refresh_local_scope(&mut self) {
        let Some((_, mac)) = neigh::interface(&self.opts.iface) else {
            return;
        };
        let addrs = ipv4_addrs(None);
        match self.dp.set_local_scope(mac, None, &addrs) {
            Ok(true) => info!(addrs = ?addrs, "local addresses for ip \"*\" services updated"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "writing the local addresses failed"),
        }
    }

    fn health_of(&self, svc: &ServicePlan, server: &plan::ServerPlan) -> ServerHealth {
        self.monitor.server_health(svc, server)
    }

    fn balanced(&self, svc: &ServicePlan) -> BalancedService {
        let mut b = balance_service(
            svc,
            |s| self.health_of(svc, s).status_for_balance(),
            Instant::now(),
        );
        admit_queue(&mut b.backends, svc.options.maxqueue);
        b
    }

    fn on_health_event(&mut self, ev: &HealthEvent) {
        let affected: Vec<(String, String)> = servers_checked_by(self.services.iter(), &ev.key)
            .into_iter()
            .map(|(svc, srv)| (svc.name.clone(), srv.name.clone()))
            .collect();
        for (svc_name, srv_name) in affected {
            let key = (svc_name.clone(), srv_name.clone());
            match ev.transition.to {
                HealthState::Down => {
                    self.down_since.entry(key).or_insert_with(Instant::now);
                }
                _ => {
                    if let Some(since) = self.down_since.remove(&key) {
                        *self.downtime.entry(key).or_default() += since.elapsed();
                    }
                }
            }
            let counts = match self.services.iter().find(|s| s.name == svc_name) {
                Some(svc) => self.balanced(svc).counts,
                None => continue,
            };
            log_transition(&svc_name, &srv_name, &ev.transition, &ev.outcome, counts);
            self.rebalance(&svc_name);
            // A role moved: the other servers of this service are likely changing too (the new
            // primary of a switchover), so check them now rather than at their next interval.
            if let Some(svc) = self.services.iter().find(|s| s.name == svc_name) {
                for srv in svc.servers.iter().filter(|s| s.name != srv_name) {
                    self.monitor.poke(&CheckKey::for_server(svc, srv));
                }
            }
        }
        self.update_hurry();
        self.publish();
    }

    /// Services without any usable server get their checks hurried (see [`Burst`]).
    fn update_hurry(&mut self) {
        let mut want = HashSet::new();
        for svc in &self.services {
            if !self.applied.contains_key(&svc.name) {
                continue;
            }
            let c = self.balanced(svc).counts;
            if c.active == 0 && c.backup == 0 {
                want.extend(svc.servers.iter().map(|srv| CheckKey::for_server(svc, srv)));
            }
        }
        for key in want.difference(&self.hurried) {
            self.monitor.hurry(key, true);
        }
        for key in self.hurried.difference(&want) {
            self.monitor.hurry(key, false);
        }
        self.hurried = want;
    }

    fn rebalance_all(&mut self) {
        let names: Vec<String> = self.services.iter().map(|s| s.name.clone()).collect();
        for n in names {
            self.rebalance(&n);
        }
        self.update_hurry();
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
            self.publish();
        }
    }

    /// Writes one service's backend set when it changed.
    fn rebalance(&mut self, name: &str) {
        let Some(svc) = self.services.iter().find(|s| s.name == name) else {
            return;
        };
        let b = self.balanced(svc);
        let first = !self.applied.contains_key(name);
        // Before a service's first write, wait for its first check results: writing servers as DOWN
        // would reset the flows an earlier agent left serving (and send nothing anywhere anyway).
        if first && b.pending && self.started.elapsed() < FIRST_RESULTS_GRACE {
            return;
        }
        if let Some(step) = b.next_step {
            self.next_steps.insert(name.to_owned(), step);
        }
        if self.applied.get(name) == Some(&b.backends) {
            return;
        }
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

    /// Re-reads the inventory; a valid plan is applied as a diff, an invalid one changes nothing.
    fn reload(&mut self) -> Result<String, String> {
        let result = self.try_reload();
        let (ok, message) = match &result {
            Ok(m) => {
                info!("reload: {m}");
                (true, m.clone())
            }
            Err(e) => {
                error!("reload refused, the running configuration stays: {e}");
                (false, e.clone())
            }
        };
        self.last_reload = Some(status::ReloadStatus {
            at: unix_now(),
            ok,
            message,
        });
        self.publish();
        result
    }

    fn try_reload(&mut self) -> Result<String, String> {
        let (plan, warnings) = plan::load_plan(&self.opts.config, self.opts.cluster.as_deref())
            .map_err(|e| e.to_string())?;
        for w in &warnings {
            warn!("{w}");
        }
        let services = flatten(&plan);
        if services.is_empty() {
            return Err("the new inventory defines no service".into());
        }
        if let Some(s) = services
            .iter()
            .find(|s| self.opts.snat_ports.contains(&s.port))
        {
            return Err(format!(
                "service {} listens on port {}, inside the SNAT port range",
                s.name, s.port
            ));
        }
        // Checks first: a bad check setting refuses the reload before the datapath changes.
        self.monitor
            .sync(services.iter())
            .map_err(|e| e.to_string())?;
        let old: BTreeMap<String, ServicePlan> = self
            .services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let new: BTreeMap<String, ServicePlan> = services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let (mut added, mut changed, mut removed) = (0, 0, 0);
        for name in old.keys().filter(|n| !new.contains_key(*n)) {
            if let Err(e) = self.dp.remove_service(name) {
                warn!(service = name, error = %e, "removing service failed");
            }
            self.applied.remove(name);
            self.next_steps.remove(name);
            removed += 1;
        }
        for (name, svc) in &new {
            match old.get(name) {
                Some(o) if o == svc => continue,
                Some(_) => changed += 1,
                None => added += 1,
            }
            self.dp
                .upsert_service(name, &service_spec(svc))
                .map_err(|e| format!("service {name}: {e}"))?;
            // Rewrite its backends even if the set looks equal (selectors may have moved servers).
            self.applied.remove(name);
        }
        self.plan = plan;
        self.services = services;
        let names: Vec<String> = new.keys().cloned().collect();
        for n in names {
            self.rebalance(&n);
        }
        self.update_hurry();
        Ok(format!(
            "{added} added, {changed} changed, {removed} removed, {} unchanged",
            new.len() - added - changed
        ))
    }

    /// Rebuilds the status snapshot the admin API serves.
    fn publish(&self) {
        let reasons = self.dp.reason_counts();
        let mut services = Vec::with_capacity(self.services.len());
        for svc in &self.services {
            services.push(self.service_status(svc));
        }
        let snapshot = Status {
            schema: status::STATUS_SCHEMA.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at: self.started_unix,
            updated_at: unix_now(),
            ready: self.ready,
            config: self.opts.config.display().to_string(),
            clusters: self.plan.clusters.iter().map(|c| c.name.clone()).collect(),
            iface: self.opts.iface.clone(),
            xdp_mode: self.mode.to_owned(),
            snat_addr: self.snat_addr.to_string(),
            vip: self.opts.vip.map(|(a, p)| format!("{a}/{p}")),
            last_reload: self.last_reload.clone(),
            services,
            datapath: status::DatapathStatus {
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

    fn service_status(&self, svc: &ServicePlan) -> status::ServiceStatus {
        let b = self.balanced(svc);
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
                let h = self.health_of(svc, srv);
                let spec = applied.and_then(|a| a.iter().find(|s| s.name == srv.name));
                let st = bstats.get(&srv.name).copied().unwrap_or_default();
                let key = (svc.name.clone(), srv.name.clone());
                let mut downtime = self.downtime.get(&key).copied().unwrap_or_default();
                if let Some(since) = self.down_since.get(&key) {
                    downtime += since.elapsed();
                }
                status::ServerStatus {
                    name: srv.name.clone(),
                    addr: srv.addr.to_string(),
                    port: srv.port,
                    check_port: srv.check_port,
                    backup: srv.backup,
                    weight: srv.weight,
                    effective_weight: spec.map_or(0, |s| s.weight),
                    state: match h.state {
                        HealthState::Up => "UP",
                        HealthState::Down => "DOWN",
                        _ => "UNKNOWN",
                    }
                    .to_owned(),
                    active: spec.is_some_and(|s| s.active),
                    health: h.health,
                    health_status: h.status.clone(),
                    last_check: h.last_check.as_ref().map(|c| status::CheckStatus {
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
                    last_change_seconds: h.last_change.map(|t| t.elapsed().as_secs_f64()),
                    downtime_seconds: downtime.as_secs_f64(),
                    current_sessions: conns.get(&srv.name).copied().unwrap_or(0),
                    sessions_total: st.new_flows,
                    bytes_in: st.bytes_in,
                    bytes_out: st.bytes_out,
                    rst_sent: st.rst_sent,
                }
            })
            .collect();
        status::ServiceStatus {
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

/// The first IPv4 address of `iface` other than `except` (the VIP).
fn first_ipv4(iface: &str, except: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    ipv4_addrs(Some(iface))
        .into_iter()
        .find(|a| Some(*a) != except)
}

fn interface_has(iface: &str, addr: Ipv4Addr) -> bool {
    ipv4_addrs(Some(iface)).contains(&addr)
}

/// IPv4 addresses of `iface` (of every interface: `None`), in the kernel's order.
fn ipv4_addrs(iface: Option<&str>) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    // SAFETY: getifaddrs/freeifaddrs pair; every pointer is checked before use.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            if iface.is_some_and(|i| name != i) {
                continue;
            }
            let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            found.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
        libc::freeifaddrs(list);
    }
    found
}

/// Keeps the kernel's own ephemeral ports (health checks!) out of the SNAT range.
fn reserve_ports(range: &std::ops::RangeInclusive<u16>) -> anyhow::Result<()> {
    let path = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let want = format!("{}-{}", range.start(), range.end());
    let current = current.trim();
    if current.split(',').any(|r| r == want) {
        return Ok(());
    }
    let value = if current.is_empty() {
        want
    } else {
        format!("{current},{want}")
    };
    std::fs::write(path, &value).with_context(|| format!("reserving the SNAT ports in {path}"))?;
    Ok(())
}

/// Adds the VIP; `false` when it was already on the interface (then it is left there on exit).
fn add_vip(iface: &str, addr: Ipv4Addr, prefix: u8) -> anyhow::Result<bool> {
    let cidr = format!("{addr}/{prefix}");
    if interface_has(iface, addr) {
        info!(vip = cidr, iface, "VIP already present");
        return Ok(false);
    }
    let out = std::process::Command::new("ip")
        .args(["addr", "add", &cidr, "dev", iface])
        .output()
        .context("running ip addr add")?;
    if out.status.success() {
        info!(vip = cidr, iface, "VIP added");
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("File exists") {
        info!(
            vip = cidr,
            iface, "VIP already present; leaving it as it is on exit"
        );
        return Ok(false);
    }
    bail!("adding VIP {cidr} to {iface} failed: {}", stderr.trim())
}

fn remove_vip(iface: &str, addr: Ipv4Addr, prefix: u8) {
    let cidr = format!("{addr}/{prefix}");
    match std::process::Command::new("ip")
        .args(["addr", "del", &cidr, "dev", iface])
        .status()
    {
        Ok(s) if s.success() => info!(vip = cidr, iface, "VIP removed"),
        _ => warn!(vip = cidr, iface, "removing the VIP failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admission_limit_includes_haproxys_queue() {
        let spec = |maxconn| BackendSpec {
            name: "pg-test-1".into(),
            addr: Ipv4Addr::new(198, 18, 0, 11),
            port: 6432,
            up: true,
            active: true,
            weight: 100,
            maxconn,
        };
        // Right after DOWN→UP with slowstart, HAProxy's ramp gives maxconn 1 and queues 128 more.
        let mut b = vec![spec(1), spec(3000), spec(0)];
        admit_queue(&mut b, 128);
        let limits: Vec<u32> = b.iter().map(|s| s.maxconn).collect();
        // 0 stays unlimited.
        assert_eq!(limits, vec![129, 3128, 0]);
    }
}
