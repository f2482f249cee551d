//! The agent's lifecycle around the reconciler: validate the inventory, check the interface, load
//! (or adopt) and attach the XDP datapath, add the VIP, start the admin API and the checks, hand the
//! loaded datapath to the [`Reconciler`], run the event loop until a signal, then tear down (or, with
//! `--keep`, leave everything serving for the next agent). The only part of the agent that holds
//! kernel-only objects and tokio tasks.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use super::{
    AgentOptions, bpffs, host, listeners, netlink,
    project::unix_now,
    promotion,
    reconcile::{Identity, Reconciler, Settings, flatten},
    state_file::StateFile,
    stepdown,
    vip::{self, VipOwner},
};
use crate::{
    admin,
    control::{ReloadError, ReloadRequest, ServerStateRequest},
    datapath::{LoadOptions, XdpDatapath, neigh},
    dcs::{self, DcsUpdate},
    health::{Burst, HealthEvent, HealthMonitor, TlsSettings},
    notify,
};

type Agent = Reconciler<XdpDatapath, HealthMonitor>;

/// Runs the agent until a signal stops it.
///
/// # Errors
/// Invalid inventory, unknown interface, BPF or XDP refused — each with its reason, before or
/// instead of touching traffic.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let (plan, warnings) = opts
        .source
        .load_isolated(opts.cluster.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the configuration is not valid; nothing was changed")?;
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
    let etcd = start_dcs_checks(&opts, &plan).await?;
    // Checked before the kernel is touched, like the rest of the configuration.
    let mut vip_owners = match opts.own_vip {
        None => Vec::new(),
        Some(_) if etcd.is_empty() => return Err(vip::VipError::NoDcs.into()),
        Some(ttl) => vip::VipOwner::for_node(&plan, &host::node_addrs(), &opts.iface, ttl)?,
    };
    for o in &vip_owners {
        info!(
            cluster = o.cluster,
            member = o.member,
            vip = %format_args!("{}/{}", o.addr, o.prefix),
            "--own-vip: the VIP is held while this node's member holds the leader key"
        );
    }
    let Some((_, iface_mac)) = neigh::interface(&opts.iface) else {
        bail!("interface {} does not exist", opts.iface);
    };
    host::check_local_members(
        services
            .iter()
            .flat_map(|s| s.servers.iter().map(|m| (m.name.as_str(), m.addr))),
        &opts.iface,
    )?;
    let snat_addr = match opts.snat_ip {
        Some(a) => a,
        None => host::first_ipv4(&opts.iface, opts.vip.map(|v| v.0)).with_context(|| {
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
    refuse_taken_ports(&services, opts.takeover)?;
    host::reserve_ports(&opts.snat_ports)?;
    // Bound before the kernel is touched: a busy port fails the start with nothing to undo.
    let listener = tokio::net::TcpListener::bind(opts.admin)
        .await
        .with_context(|| format!("binding the admin API on {}", opts.admin))?;
    let metrics_listener = match opts.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| {
                    format!("binding the metrics listener on {addr} (move it with --metrics ADDR, or --metrics off)")
                })?,
        ),
        None => None,
    };

    bpffs::ensure(&opts.pin_dir)?;
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
    let local_clients = match dp.attach_local_clients(opts.cgroup.as_deref()) {
        Ok(cgroup) => format!("served (cgroup {})", cgroup.display()),
        Err(e) if opts.cgroup.is_some() && !dp.adopted() => {
            abandon(dp);
            return Err(e).context("--cgroup: local clients cannot be served there");
        }
        Err(e) => {
            let why = error_chain(&e);
            warn!(
                "local clients are NOT served: {why}; clients reaching the node over {} still are (XDP)",
                opts.iface
            );
            format!("not served: {why}")
        }
    };
    let vip_added = match opts.vip {
        // An adopted datapath's VIP was added by the agent before us: ours to remove on exit too.
        Some((addr, prefix)) => match host::add_vip(&opts.iface, addr, prefix).await {
            Ok(added) => added || dp.adopted(),
            Err(e) => {
                abandon(dp);
                return Err(e.into());
            }
        },
        None => false,
    };

    let check_tls = TlsSettings {
        // `--ca-file` wins; with HAProxy files, the `ca-file` their `check-ssl` servers name.
        ca_file: opts
            .ca_file
            .clone()
            .or_else(|| opts.source.haproxy_ca_file()),
        verify_hostname: false,
    };
    let (mut monitor, events) = HealthMonitor::new(check_tls.clone());
    monitor.set_burst(opts.check_burst.map(|interval| Burst { interval }));
    let identity = Identity {
        started_unix: unix_now(),
        config: opts.source.to_string(),
        iface: opts.iface.clone(),
        xdp_mode: mode,
        snat_addr,
        vip: opts.vip,
        local_clients,
    };
    let settings = Settings {
        snat_ports: opts.snat_ports.clone(),
        timeouts: opts.timeouts,
    };
    let mut agent = Reconciler::new(dp, monitor, plan, settings, identity, Instant::now());
    agent.restore_server_states(StateFile::for_pin_dir(&opts.pin_dir));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let (state_tx, state_rx) = mpsc::channel::<ServerStateRequest>(4);
    let admin_task = tokio::spawn(admin::serve(
        listener,
        agent.status_handle(),
        reload_tx,
        state_tx,
        shutdown_rx.clone(),
    ));
    info!(addr = %opts.admin, "admin API listening");
    let metrics_task = metrics_listener.map(|listener| {
        tokio::spawn(admin::serve_metrics(
            listener,
            agent.status_handle(),
            opts.metrics_auth.clone(),
            shutdown_rx.clone(),
        ))
    });
    if let Some(addr) = opts.metrics {
        info!(%addr, auth = opts.metrics_auth.is_some(), "metrics listening");
    }

    let (dcs_tx, dcs_rx) = mpsc::unbounded_channel::<DcsUpdate>();
    let watches: Vec<_> = etcd
        .into_iter()
        .map(|(cluster, s)| dcs::spawn_watch(cluster, s, dcs_tx.clone()))
        .collect();
    drop(dcs_tx);

    let inputs = Inputs {
        events,
        reloads: reload_rx,
        states: state_rx,
        dcs: dcs_rx,
        check_tls,
    };
    let result = main_loop(&mut agent, &opts, inputs, &mut vip_owners).await;
    for w in &watches {
        w.abort();
    }

    let _ = shutdown_tx.send(true);
    let _ = admin_task.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    let (dp, monitor) = agent.into_parts();
    monitor.shutdown().await;
    if opts.keep {
        dp.leave_pinned();
    } else {
        for o in vip_owners.iter().filter(|o| o.held()) {
            o.apply(vip::Change::Remove).await;
        }
        if vip_added && let Some((addr, prefix)) = opts.vip {
            host::remove_vip(&opts.iface, addr, prefix).await;
        }
        dp.detach_and_unpin().context("detaching")?;
    }
    result
}

/// What the reconciler listens to besides signals and timers.
struct Inputs {
    events: mpsc::UnboundedReceiver<HealthEvent>,
    reloads: mpsc::Receiver<ReloadRequest>,
    states: mpsc::Receiver<ServerStateRequest>,
    dcs: mpsc::UnboundedReceiver<DcsUpdate>,
    /// For reading a stepping-down leader's state on its REST API.
    check_tls: TlsSettings,
}

/// Feeds the reconciler (and the VIP owners) their inputs until SIGINT or SIGTERM.
async fn main_loop(
    agent: &mut Agent,
    opts: &AgentOptions,
    inputs: Inputs,
    vip_owners: &mut [VipOwner],
) -> anyhow::Result<()> {
    let Inputs {
        mut events,
        mut reloads,
        mut states,
        mut dcs,
        check_tls,
    } = inputs;
    let (stop_tx, mut stops) = mpsc::unbounded_channel();
    let (promoted_tx, mut promoted) = mpsc::unbounded_channel();
    let mut promotions = stepdown::Watches::new(check_tls.clone(), promoted_tx, promotion::spawn);
    let mut stepdowns = stepdown::Watches::new(check_tls, stop_tx, stepdown::spawn);
    agent.set_watch_stepdowns(true);
    agent.set_watch_promotions(true);
    if let Some(scope) = host::local_scope(&opts.iface) {
        agent.on_local_scope(&scope);
    }
    agent.start(Instant::now())?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    // Address changes (a VIP moved by vip-manager) reach the `*` scope at once; the 1 s tick stays
    // as the backstop should the netlink socket fail.
    let (_no_changes, idle) = mpsc::channel(1);
    let mut addr_changes = netlink::address_changes().unwrap_or_else(|e| {
        warn!(error = %error_chain(&e), "address changes are not watched: the `*` scope follows them within 1 s");
        idle
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Re-balance shortly after start, when most first results are in.
    let mut settle = tokio::time::interval(Duration::from_millis(100));
    let mut ticks: u32 = 0;
    // While a new leader-key holder awaits its first passing check, look at its checks this often.
    let mut fence_poll = tokio::time::interval(Duration::from_millis(25));
    fence_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // On a worker with its own big stack, panics caught: a hostile inventory cannot take the agent down.
    // A local member off `--iface` is refused on reload as at start (its replies would bypass TC).
    let reread = || -> Result<_, ReloadError> {
        let (plan, warnings) = opts.source.load_isolated(opts.cluster.as_deref())?;
        host::check_local_members(
            flatten(&plan)
                .iter()
                .flat_map(|s| s.servers.iter().map(|m| (m.name.as_str(), m.addr))),
            &opts.iface,
        )
        .map_err(|e| ReloadError::Host {
            source: Box::new(e),
        })?;
        Ok((plan, warnings))
    };
    let mut notified_ready = false;
    loop {
        tokio::select! {
            Some(ev) = events.recv() => agent.on_health_event(&ev, Instant::now()),
            Some(()) = addr_changes.recv() => {
                if let Some(scope) = host::local_scope(&opts.iface) {
                    agent.on_local_scope(&scope);
                }
            }
            Some(u) = dcs.recv() => {
                // The VIP first: a node losing the key lets go of the address before anything else.
                for o in vip_owners.iter_mut() {
                    if let Some(change) = o.decide(&u) {
                        o.apply(change).await;
                    }
                }
                agent.on_dcs(&u, Instant::now());
                stepdown::sync_all(agent, &mut stepdowns, &mut promotions);
            }
            Some(r) = promoted.recv() => {
                agent.on_promoted(&r.target.cluster, &r.target.holder, r.unreadable.as_deref(), Instant::now());
                stepdown::sync_all(agent, &mut stepdowns, &mut promotions);
            }
            Some(s) = stops.recv() => {
                agent.on_stepdown_stopping(&s.target.cluster, &s.target.holder, &s.why, Instant::now());
                stepdown::sync_all(agent, &mut stepdowns, &mut promotions);
            }
            _ = fence_poll.tick(), if agent.fence_awaiting() => agent.on_fence_poll(Instant::now()),
            _ = settle.tick(), if !agent.is_ready() => agent.rebalance_all(Instant::now()),
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                for o in vip_owners.iter_mut() {
                    if let Some(change) = o.decide_tick(Instant::now()) {
                        o.apply(change).await;
                    }
                }
                if let Some(scope) = host::local_scope(&opts.iface) {
                    agent.on_local_scope(&scope);
                }
                agent.on_tick(ticks, Instant::now());
            }
            Some(req) = reloads.recv() => {
                sd_notify(notify::reloading());
                let r = agent.reload(reread(), Instant::now());
                let _ = req.reply.send(r);
                notified_ready = false;
                stepdown::sync_all(agent, &mut stepdowns, &mut promotions);
            }
            Some(req) = states.recv() => agent.on_server_state(req, Instant::now()),
            _ = sighup.recv() => {
                sd_notify(notify::reloading());
                let _ = agent.reload(reread(), Instant::now());
                notified_ready = false;
            }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
        }
        // systemd (Type=notify) learns the agent is ready once every service is written, and again
        // after each reload, applied or refused.
        if !notified_ready && agent.is_ready() {
            sd_notify(notify::ready());
            notified_ready = true;
        }
    }
    sd_notify(notify::stopping());
    Ok(())
}

/// The etcd settings of every planned cluster, each tried once before the kernel is touched: wrong
/// credentials, CA or certificate files stop the start (no silent fallback); an etcd that does not
/// answer now only means REST checks alone until it does.
async fn start_dcs_checks(
    opts: &AgentOptions,
    plan: &crate::plan::Plan,
) -> anyhow::Result<Vec<(String, dcs::EtcdSettings)>> {
    let clusters: Vec<String> = plan.clusters.iter().map(|c| c.name.clone()).collect();
    let etcd = dcs::settings_for_clusters(&opts.source, &clusters, opts.dcs, &opts.etcd)
        .context("the DCS settings are not valid; nothing was changed")?;
    if etcd.is_empty() {
        info!("no DCS: write services follow the REST checks alone");
    }
    for (cluster, s) in &etcd {
        match dcs::probe(cluster, s).await {
            Ok(leader) => info!(
                cluster,
                endpoints = s.endpoints.join(","),
                leader = leader.as_deref().unwrap_or("(none)"),
                "etcd answers: write services follow the leader key"
            ),
            Err(e) if e.is_fatal() => {
                return Err(e).with_context(|| {
                    format!(
                        "cluster {cluster}: cannot read its leader key (fix the etcd settings, or run with --dcs off); nothing was changed"
                    )
                });
            }
            Err(e) => warn!(
                cluster,
                error = %e,
                "etcd does not answer: REST checks alone until it does"
            ),
        }
    }
    Ok(etcd)
}

/// A failed notification is logged, never fatal: the agent serves the same without systemd.
fn sd_notify(sent: Result<bool, notify::NotifyError>) {
    if let Err(e) = sent {
        warn!(error = %e, "notifying systemd failed");
    }
}

/// Refuses to start (or, with `--takeover`, warns) when another process listens on a service port
/// at an address a service covers (HAProxy still running on the node).
fn refuse_taken_ports(services: &[crate::plan::ServicePlan], takeover: bool) -> anyhow::Result<()> {
    let taken = listeners::conflicts(&listeners::bounds(services), &listeners::listeners());
    if taken.is_empty() {
        return Ok(());
    }
    let what = taken
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if takeover {
        warn!("--takeover: {what}; pgsvc takes its traffic over");
        return Ok(());
    }
    bail!(
        "{what}: stop that process first (HAProxy still running?), or start pgsvc with --takeover; nothing was changed"
    )
}

/// `error: cause: cause` in one line.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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
