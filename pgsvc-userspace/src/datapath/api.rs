//! The control plane's view of the datapath: desired state per service, written atomically.

use std::net::Ipv4Addr;

use pgsvc_common::Algorithm;

/// What clients connect to and how new flows are placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Listen addresses; empty means the wildcard (`ip: "*"`).
    pub addrs: Vec<Ipv4Addr>,
    pub port: u16,
    pub algorithm: Algorithm,
    /// Frontend connection limit, 0 = unlimited.
    pub maxconn: u32,
    /// `on-marked-down shutdown-sessions`.
    pub shutdown_sessions: bool,
}

/// One server of a service as the datapath should see it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Server name (the metrics' `server` label); unique within the service.
    pub name: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Health: a flow whose backend is not up is reset (with shutdown-sessions).
    pub up: bool,
    /// In the active set: eligible for new flows (UP, weight > 0, and non-backup or backup in use).
    pub active: bool,
    /// Effective weight (after slowstart), 1..=256 when active.
    pub weight: u32,
    /// Effective per-server connection limit (after slowstart), 0 = unlimited.
    pub maxconn: u32,
}

/// Counters of one backend or service, summed over CPUs.
pub use pgsvc_common::TrafficStats;

/// The datapath as the agent drives it. Every call is idempotent: the agent re-applies the desired
/// state after a restart.
pub trait Datapath {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Creates or updates a service (by name).
    fn upsert_service(&mut self, name: &str, spec: &ServiceSpec) -> Result<(), Self::Error>;
    /// Removes a service: its listen keys go first (new packets pass), then its flows are flushed.
    fn remove_service(&mut self, name: &str) -> Result<(), Self::Error>;
    /// Replaces the backend set of a service in one generation flip. Backends missing from `backends`
    /// leave the service (their flows are flushed); backends going from up to down have their flows
    /// flushed when the service has shutdown-sessions.
    fn set_backends(&mut self, service: &str, backends: &[BackendSpec]) -> Result<(), Self::Error>;
    /// Active connections per backend of a service, by server name.
    fn backend_conns(&self, service: &str) -> Result<Vec<(String, u64)>, Self::Error>;
    /// Traffic counters per backend of a service, by server name.
    fn backend_stats(&self, service: &str) -> Result<Vec<(String, TrafficStats)>, Self::Error>;
    /// Traffic counters of a service.
    fn service_stats(&self, service: &str) -> Result<TrafficStats, Self::Error>;
}
