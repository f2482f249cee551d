//! The agent's live state as the admin API publishes it (`/status` JSON, `/metrics`, `pgsvc status`).
//! One serialisable snapshot, rebuilt by the agent loop every second and after every change; readers
//! never touch the datapath or the health checkers directly, so the API stays responsive whatever
//! the data plane is doing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::balance::AdminState;

/// Version of this document's shape; bumped on incompatible changes.
pub const STATUS_SCHEMA: &str = "pgsvc.status/v1";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub schema: String,
    pub version: String,
    pub pid: u32,
    /// Unix time the agent started.
    pub started_at: f64,
    /// Unix time of this snapshot.
    pub updated_at: f64,
    /// Every service has been written to the datapath at least once.
    pub ready: bool,
    pub config: String,
    pub clusters: Vec<String>,
    pub iface: String,
    /// native, skb or adopted (a pinned attachment of an earlier agent was reused).
    pub xdp_mode: String,
    pub snat_addr: String,
    pub vip: Option<String>,
    pub last_reload: Option<ReloadStatus>,
    pub services: Vec<ServiceStatus>,
    pub datapath: DatapathStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub at: f64,
    pub ok: bool,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatapathStatus {
    /// Entries in the flow table, and its size.
    pub flows: u64,
    pub max_flows: u64,
    /// Packets by `Reason` label (`fwd_established`, `rst_no_flow`, ...), summed over CPUs.
    pub packets: BTreeMap<String, u64>,
}

/// One service (HAProxy `listen` section): the `proxy` label of the metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `{cluster}-{service}`.
    pub name: String,
    pub cluster: String,
    /// Listen address (`*` for all) and port.
    pub ip: String,
    pub port: u16,
    /// Check URI.
    pub check: String,
    pub balance: String,
    /// Frontend limit.
    pub maxconn: u32,
    /// Usable non-backup and backup servers (HAProxy's `srv_act`, `srv_bck`).
    pub active_servers: u32,
    pub backup_servers: u32,
    /// The active set is made of backup servers.
    pub using_backups: bool,
    /// Open connections, connections since start, bytes client→server and server→client.
    pub current_sessions: u64,
    pub sessions_total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Resets sent to clients and SYNs dropped (limits, no server).
    pub rst_sent: u64,
    pub syn_dropped: u64,
    pub servers: Vec<ServerStatus>,
}

/// One server of one service: the `server` label of the metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// `{cluster}-{seq}`.
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub check_port: u16,
    pub backup: bool,
    /// Configured weight and the weight in effect (slowstart ramps it).
    pub weight: u32,
    pub effective_weight: u32,
    /// MAINT or DRAIN when the operator set that state (HAProxy reports those first, whatever the
    /// health); else UP, DOWN or UNKNOWN (no check result yet).
    pub state: String,
    /// The state the operator set (`pgsvc server set`): ready, drain or maint.
    #[serde(default)]
    pub admin_state: AdminState,
    /// In the active set: receives new connections.
    pub active: bool,
    /// The health counter and HAProxy's "2/3 UP" rendering of it.
    pub health: u32,
    pub health_status: String,
    pub last_check: Option<CheckStatus>,
    pub checks_total: u64,
    pub check_failures_total: u64,
    pub check_up_down_total: u64,
    /// Seconds since the last UP/DOWN change (None before any).
    pub last_change_seconds: Option<f64>,
    /// Seconds spent DOWN since start.
    pub downtime_seconds: f64,
    pub current_sessions: u64,
    pub sessions_total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rst_sent: u64,
}

/// The most recent health check of a server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckStatus {
    pub passed: bool,
    /// "L7 status 503", "L4 timeout", "connection refused", ... ("L7 OK" when passed).
    pub reason: String,
    /// HTTP status when one was received.
    pub code: Option<u16>,
    pub duration_ms: f64,
}
