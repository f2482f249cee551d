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
    /// The agent process (CPU, threads, limits) and connection peaks over all services.
    #[serde(default)]
    pub process: ProcessStatus,
    /// Patroni's DCS per watched cluster (empty: REST checks alone, `--dcs off` or no etcd).
    #[serde(default)]
    pub dcs: Vec<DcsClusterStatus>,
    /// Clients on the node itself (cgroup socket programs): `served (cgroup PATH)` or
    /// `not served: WHY`.
    #[serde(default)]
    pub local_clients: String,
    /// Sessions reset at once (not at their next packet) since the agent started.
    #[serde(default)]
    pub sessions_reset: Vec<SessionsReset>,
}

/// Sessions of one server reset at once for one reason (`down`, `fenced`, `address_left`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsReset {
    pub service: String,
    pub server: String,
    pub reason: String,
    pub sessions: u64,
}

/// One cluster's leader key as the agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DcsClusterStatus {
    pub cluster: String,
    /// etcd answers the watch.
    pub connected: bool,
    /// The endpoints answering (None while none does).
    pub endpoint: Option<String>,
    /// Write services are fenced on the leader key; false: REST checks alone decide.
    pub fencing: bool,
    /// The member holding the leader key (None: no leader, or unknown while not fencing).
    pub leader: Option<String>,
    /// The holder is asked to step down (Patroni's `/failover` key): why. It is fenced meanwhile.
    #[serde(default)]
    pub leader_leaving: Option<String>,
    /// Why REST checks alone decide (None while fencing).
    pub fallback_reason: Option<String>,
    /// etcd revision the view is current at.
    pub revision: i64,
    /// Seconds since etcd last confirmed the view (a read, an event or a progress answer).
    pub watch_lag_seconds: Option<f64>,
    /// Servers taken out of a write service because they do not hold the key.
    pub fence_events_total: u64,
    /// Switches from fencing to REST checks alone.
    pub fallbacks_total: u64,
}

/// The agent process, for HAProxy's `haproxy_process_*` figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// CPU time (user + system) the agent used since it started, seconds.
    pub cpu_seconds: f64,
    /// 100 − the agent's CPU use over the last measured interval, as a share of its worker
    /// threads (HAProxy's idle time): 100 when idle.
    pub idle_percent: f64,
    /// Async worker threads (HAProxy's `nbthread`).
    pub nbthread: u32,
    /// Open-file limit (RLIMIT_NOFILE).
    pub max_fds: u64,
    /// Connections over all services: peaks and rates.
    pub peaks: Peaks,
    #[serde(skip)]
    pub cpu_base: (f64, f64),
}

impl ProcessStatus {
    /// The next measurement, `cpu` seconds of CPU at unix time `now`: the idle share moves only
    /// after a full second, so publishes right after a change do not make it jump.
    pub fn next(prev: Option<&Self>, cpu: f64, now: f64, nbthread: u32, max_fds: u64) -> Self {
        let mut n = Self {
            cpu_seconds: cpu,
            idle_percent: 100.0,
            nbthread,
            max_fds,
            peaks: Peaks::default(),
            cpu_base: (now, cpu),
        };
        if let Some(p) = prev {
            n.idle_percent = p.idle_percent;
            n.cpu_base = p.cpu_base;
            n.peaks = p.peaks.clone();
            let (at, base) = p.cpu_base;
            let wall = now - at;
            if wall >= 1.0 {
                let busy = (cpu - base).max(0.0) / (wall * f64::from(nbthread.max(1)));
                n.idle_percent = (100.0 * (1.0 - busy)).clamp(0.0, 100.0).round();
                n.cpu_base = (now, cpu);
            }
        }
        n
    }
}

/// Session peaks and rates HAProxy keeps per proxy and server: `max_sessions` (`smax`),
/// `session_rate`/`max_session_rate` (`rate`, `rate_max`: new sessions per second over the last
/// second), and when the last new session arrived (`lastsess`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Peaks {
    pub max_sessions: u64,
    pub session_rate: u64,
    pub max_session_rate: u64,
    /// Unix time of the last new session; None when none arrived since the agent started.
    pub last_session_at: Option<f64>,
    /// `sessions_total` at the previous snapshot, and where the current rate window started.
    #[serde(skip)]
    pub last_total: u64,
    #[serde(skip)]
    pub rate_base: (f64, u64),
}

impl Peaks {
    /// The peaks after a snapshot with `current` open and `total` sessions so far at unix time
    /// `now`, given those of the previous snapshot (None for a new service or server). A total
    /// below the previous one (counters recreated) restarts the window.
    pub fn next(prev: Option<&Self>, current: u64, total: u64, now: f64) -> Self {
        let Some(p) = prev.filter(|p| total >= p.last_total) else {
            return Self {
                max_sessions: current,
                last_total: total,
                rate_base: (now, total),
                ..Self::default()
            };
        };
        let mut n = p.clone();
        n.max_sessions = p.max_sessions.max(current);
        if total > p.last_total {
            n.last_session_at = Some(now);
        }
        n.last_total = total;
        let (at, base) = p.rate_base;
        let wall = now - at;
        if wall >= 1.0 {
            // Whole sessions per second; a window longer than a second spreads its sessions.
            n.session_rate = ((total - base) as f64 / wall).round() as u64;
            n.max_session_rate = p.max_session_rate.max(n.session_rate);
            n.rate_base = (now, total);
        }
        n
    }

    /// Seconds since the last new session at `now`, or -1 (HAProxy's "never").
    pub fn last_session_seconds(&self, now: f64) -> f64 {
        self.last_session_at
            .map_or(-1.0, |at| (now - at).max(0.0).floor())
    }
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
    /// Occupancy per flow table (`established`, `pending`, `nat_rev`).
    #[serde(default)]
    pub tables: Vec<FlowTableStatus>,
    /// Pending flows found evicted by the GC since the agent started.
    #[serde(default)]
    pub flows_evicted: u64,
    /// Packets by `Reason` label (`fwd_established`, `rst_no_flow`, ...), summed over CPUs.
    pub packets: BTreeMap<String, u64>,
    /// Size of the SNAT port range: the ports each server can be reached from.
    #[serde(default)]
    pub snat_ports: u64,
}

/// Entries and capacity of one flow table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowTableStatus {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
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
    /// Session peaks and rates of the frontend (also the backend's: one `listen`).
    #[serde(default)]
    pub peaks: Peaks,
    /// UP→DOWN transitions of the whole backend (no usable server left).
    #[serde(default)]
    pub down_transitions: u64,
    /// Server options in effect (`default-server maxconn` and `maxqueue`; 0 = unlimited).
    #[serde(default)]
    pub server_maxconn: u32,
    #[serde(default)]
    pub server_maxqueue: u32,
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
    #[serde(default)]
    pub peaks: Peaks,
    /// Out of a write service because another member holds the leader key.
    #[serde(default)]
    pub fenced: bool,
    /// SNAT ports this server's connections hold (open, or finished and not yet reused or
    /// collected), as of the last flow GC; the range ([`DatapathStatus::snat_ports`]) is shared by
    /// the services that send to the same address and port.
    #[serde(default)]
    pub snat_ports_in_use: u64,
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
    /// HAProxy's check status code (`L7OK`, `L7STS`, `L4CON`, `L4TOUT`, ...).
    #[serde(default)]
    pub code_name: String,
}
