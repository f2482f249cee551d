//! The running agent: joins the plan, the health checks and the datapath, and keeps every service's
//! backend set in the XDP maps true to the cluster's live roles.
//!
//! Lifecycle (in this order, so that bad input never touches the kernel): read and validate the
//! inventory → check the interface → load (or adopt) the pinned datapath → attach → add the VIP →
//! start health checks → write each service once its first check results are in → serve until
//! SIGINT/SIGTERM, re-reading the inventory on SIGHUP or `POST /reload` → detach and unpin (or, with
//! `--keep`, leave everything serving for the next agent).
//!
//! One concern per file: [`lifecycle`] (the above, and the event loop), [`reconcile`] (inputs →
//! desired state → diff through the [`crate::datapath::Datapath`] trait), [`reload`] (the plan
//! diff), [`project`] (the status snapshot), [`checks`] (the health input as a trait), [`fence`]
//! (write services follow the DCS leader key), [`resets`] (sessions reset at once), [`host`]
//! (addresses, VIP, reserved ports), [`netlink`] (address changes and the VIP through rtnetlink),
//! [`vip`] and [`garp`] (`--own-vip`: the VIP held while this node leads), [`server_state`] (DRAIN
//! and MAINT set by the operator) and
//! [`state_file`] (where those are saved). One task owns the reconciler; the admin API only reads the
//! snapshot it publishes, so it stays responsive whatever the data plane is doing.

pub mod bpffs;
pub mod checks;
pub mod fence;
pub mod garp;
pub mod host;
pub mod lifecycle;
pub mod listeners;
pub mod netlink;
pub mod project;
pub mod promotion;
pub mod reconcile;
pub mod reload;
pub mod resets;
pub mod server_state;
pub mod state_file;
pub mod stepdown;
#[cfg(test)]
mod tests;
pub mod vip;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use std::net::Ipv4Addr;

use crate::datapath::{AttachMode, Timeouts};

pub use checks::Checks;
pub use lifecycle::run;
pub use reconcile::{Reconciler, Settings};

/// Worker threads of the agent's async runtime (HAProxy's `nbthread` in `/metrics`).
pub const WORKER_THREADS: usize = 2;

/// Everything `pgsvc run` was asked to do.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The inventory or HAProxy files, re-read on reload.
    pub source: crate::plan::ConfigSource,
    pub cluster: Option<String>,
    pub iface: String,
    /// Address (and prefix) to add to the interface while running.
    pub vip: Option<(Ipv4Addr, u8)>,
    /// Source address of translated connections (default: the interface's first IPv4 address).
    pub snat_ip: Option<Ipv4Addr>,
    pub snat_ports: std::ops::RangeInclusive<u16>,
    pub xdp_mode: AttachMode,
    pub admin: SocketAddr,
    /// Read-only metrics listener (None: off) and its optional basic-auth credentials.
    pub metrics: Option<SocketAddr>,
    pub metrics_auth: Option<crate::admin::BasicAuth>,
    pub pin_dir: PathBuf,
    pub max_flows: u32,
    /// Leave program, link and maps pinned on exit, for the next agent to adopt.
    pub keep: bool,
    /// CA bundle for checks of `patroni_ssl_enabled` members.
    pub ca_file: Option<PathBuf>,
    pub timeouts: Timeouts,
    /// Burst checking during transitions and outages (`None`: HAProxy's schedule exactly).
    pub check_burst: Option<Duration>,
    /// Whether to watch Patroni's leader key in etcd, and the `--etcd-*` flags.
    pub dcs: crate::dcs::DcsMode,
    pub etcd: crate::dcs::EtcdOverrides,
    /// The cgroup (v2) whose processes are served as local clients (`None`: the cgroup v2 root).
    pub cgroup: Option<PathBuf>,
    /// Start even when another process listens on a service port (warn instead of refusing).
    pub takeover: bool,
    /// `--own-vip`: hold the cluster's VIP while this node's member holds the leader key, keeping
    /// it this long (the key's TTL) while etcd does not answer.
    pub own_vip: Option<Duration>,
}
