//! The resolved service plan: what every other module consumes. Pure data, no I/O.

use std::net::Ipv4Addr;
use std::time::Duration;

/// Every cluster of an inventory (or the one selected), resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub clusters: Vec<ClusterPlan>,
}

/// One `pg_cluster`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPlan {
    /// `pg_cluster`, e.g. `pg-test`.
    pub name: String,
    /// `pg_vip_address` when `pg_vip_enabled`, e.g. 198.18.0.3/24.
    pub vip: Option<Vip>,
    /// Members in inventory order.
    pub instances: Vec<Instance>,
    /// `pg_default_services + pg_services`, in that order.
    pub services: Vec<ServicePlan>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vip {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// One member of a cluster (an inventory host with `pg_cluster`).
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// `{cluster}-{seq}`, e.g. `pg-test-1`.
    pub name: String,
    /// The inventory host key.
    pub addr: Ipv4Addr,
    pub seq: u32,
    /// Inventory `pg_role` (primary, replica, offline); classification only, health checks are live.
    pub role: String,
    pub offline_query: bool,
    /// `pg_weight` 0..=255 (default 100).
    pub weight: u32,
    /// `patroni_port` (8008) and `patroni_ssl_enabled`.
    pub patroni_port: u16,
    pub patroni_tls: bool,
    /// `pg_port` (5432) and `pgbouncer_port` (6432).
    pub pg_port: u16,
    pub pgbouncer_port: u16,
}

/// Where a service listens: `ip: "*"` or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindAddr {
    Any,
    Addr(Ipv4Addr),
}

/// How a service balances new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    /// pgsvc extension: consistent hashing (identical choices on every LB node).
    Maglev,
}

/// One service of one cluster, e.g. `pg-test-primary` on 5433.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePlan {
    /// `{cluster}-{name}`, the HAProxy `listen` name and the metrics' `proxy` label.
    pub name: String,
    /// The service's own `name` field (`primary`).
    pub short_name: String,
    pub cluster: String,
    pub ip: BindAddr,
    pub port: u16,
    /// The `dest` field as written (`default`, `postgres`, `pgbouncer`, or a number).
    pub dest: String,
    /// Check URI with its query string, e.g. `/primary` or `/replica?lag=16MB`.
    pub check: String,
    /// Frontend limit (`maxconn`, default 5000).
    pub maxconn: u32,
    pub balance: Balance,
    /// The `default-server` line, typed.
    pub options: ServerOptions,
    /// The raw `options` string as HAProxy would get it.
    pub options_line: String,
    /// Servers in HAProxy declaration order: selected members, then backup-only members.
    pub servers: Vec<ServerPlan>,
    /// `option allbackups`.
    pub allbackups: bool,
}

/// One `server` line.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerPlan {
    /// `{cluster}-{seq}`: the metrics' `server` label.
    pub name: String,
    pub addr: Ipv4Addr,
    /// Destination port (after `dest` resolution).
    pub port: u16,
    /// Patroni REST port and TLS.
    pub check_port: u16,
    pub check_tls: bool,
    /// `pg_weight` (0 = never picked).
    pub weight: u32,
    pub backup: bool,
}

/// HAProxy `default-server` parameters that pgsvc honours.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerOptions {
    pub inter: Duration,
    pub fastinter: Duration,
    pub downinter: Duration,
    pub rise: u32,
    pub fall: u32,
    /// `on-marked-down shutdown-sessions`.
    pub shutdown_sessions: bool,
    /// Zero when not set.
    pub slowstart: Duration,
    /// Per-server connection limit; 0 = unlimited.
    pub maxconn: u32,
    pub maxqueue: u32,
    /// `weight` in default-server (a server's own `pg_weight` wins).
    pub weight: Option<u32>,
    /// Check timeout (`timeout check`, 3 s in Pigsty's defaults).
    pub check_timeout: Duration,
}

impl Default for ServerOptions {
    /// Pigsty's `norm` RTO plan (v4): inter 2s fastinter 1s downinter 2s rise 3 fall 3, plus the fixed
    /// tail of the default-server line.
    fn default() -> Self {
        Self {
            inter: Duration::from_secs(2),
            fastinter: Duration::from_secs(1),
            downinter: Duration::from_secs(2),
            rise: 3,
            fall: 3,
            shutdown_sessions: true,
            slowstart: Duration::from_secs(30),
            maxconn: 3000,
            maxqueue: 128,
            weight: Some(100),
            check_timeout: Duration::from_secs(3),
        }
    }
}
