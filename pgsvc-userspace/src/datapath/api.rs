//! The control plane's view of the datapath: desired state per service, written atomically, plus
//! the periodic work (clock, flow GC, next hops) and the counters the agent reads back. The agent
//! uses nothing but this trait, so it runs the same over the XDP maps and over a fake.

use std::net::Ipv4Addr;

use pgsvc_common::{Algorithm, Reason};

/// One server of a service as the datapath should see it now (computed by [`crate::balance`]).
pub use crate::balance::BackendSpec;

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

/// Counters of one backend or service, summed over CPUs.
pub use pgsvc_common::TrafficStats;

/// What services on `ip: "*"` accept (HAProxy's `bind *` takes only the node's own addresses):
/// frames sent to `if_mac` (or `vip_mac`) whose destination is one of `addrs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalScope {
    pub if_mac: [u8; 6],
    pub vip_mac: Option<[u8; 6]>,
    /// The node's IPv4 addresses, on every interface (the kernel accepts them on any).
    pub addrs: Vec<Ipv4Addr>,
}

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
    /// Open connections of a service (flows not yet closing).
    fn service_conns(&self, service: &str) -> Result<u64, Self::Error>;
    /// Advances the datapath's clock; the agent calls this every second.
    fn tick(&mut self) -> Result<(), Self::Error>;
    /// One garbage-collection pass over the flow table.
    fn gc(&mut self, timeouts: &Timeouts) -> Result<GcReport, Self::Error>;
    /// Re-resolves the next hop of every backend and rewrites those that changed; returns how many.
    fn refresh_next_hops(&mut self) -> Result<usize, Self::Error>;
    /// Forgets what an earlier agent left (services and servers found at start) that no planned
    /// service or server claimed. Called once, when the first full plan has been applied.
    fn release_unclaimed(&mut self) -> Result<(), Self::Error>;
    /// Packets by reason, summed over CPUs.
    fn reason_counts(&self) -> Vec<(Reason, u64)>;
    /// Entries in the flow table.
    fn flow_count(&self) -> usize;
    /// Size of the flow table.
    fn max_flows(&self) -> u32;
    /// Occupancy of each flow table: (name, entries, capacity).
    fn flow_tables(&self) -> Vec<(&'static str, u64, u64)> {
        vec![(
            "established",
            self.flow_count() as u64,
            u64::from(self.max_flows()),
        )]
    }
    /// Reverse entries the GC reclaimed because their pending flow was gone (evicted from the LRU
    /// table of half-open and closing flows), since this agent started.
    fn flows_evicted(&self) -> u64 {
        0
    }
    /// Writes what `ip: "*"` services accept; returns whether anything changed.
    fn set_local_scope(&mut self, scope: &LocalScope) -> Result<bool, Self::Error>;
    /// SNAT ports held per server of a service, by server name (connections open or just
    /// finished; refreshed by [`Datapath::gc`]).
    fn snat_ports_in_use(&self, service: &str) -> Result<Vec<(String, u64)>, Self::Error>;
    /// Resets the established sessions `scope` names NOW, idle or not: both ends of a full-NAT
    /// flow get a RST they accept (the client from the service address it dialled, the server
    /// from the SNAT address), a socket on this node (a local member's, a local client's) is
    /// destroyed so that its kernel resets the connection; the flows are removed and the counters
    /// drop with them. Returns what was reset, per server (servers with nothing to reset are
    /// left out). A RST that cannot be sent is counted in [`ResetCount::failed`], not an error.
    fn reset_sessions(&mut self, scope: &ResetScope<'_>) -> Result<Vec<ResetCount>, Self::Error>;
}

/// Which sessions [`Datapath::reset_sessions`] resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetScope<'a> {
    /// Every session of these servers of one service (flows from the network and local clients).
    Servers {
        service: &'a str,
        servers: &'a [String],
    },
    /// Every flow from the network whose service address (the one the client dialled) is this
    /// address: it left the node, and its packets now reach another node, which has no flow.
    ServiceAddr(Ipv4Addr),
}

/// Sessions of one server reset by one [`Datapath::reset_sessions`] call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResetCount {
    pub service: String,
    pub server: String,
    /// Full-NAT flows: a RST sent to the client and one to the server.
    pub flows: u64,
    /// Flows to a member on this node: its socket destroyed.
    pub local_members: u64,
    /// Sockets of clients on this node (cgroup connect4) destroyed.
    pub local_clients: u64,
    /// Sessions removed without a reset reaching an end (no sequence number known yet, a send or
    /// a destroy refused); logged.
    pub failed: u64,
}

impl ResetCount {
    /// Sessions this count ended, reset or not.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.flows + self.local_members + self.local_clients + self.failed
    }
}

/// Flow timeouts used by [`Datapath::gc`].
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A half-open flow: the client's SYN went to a backend but the handshake did not complete.
    pub syn_ns: u64,
    /// After the first FIN or RST.
    pub closing_ns: u64,
    /// Established and silent (HAProxy `timeout client`/`server`, 24 h in Pigsty).
    pub idle_ns: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            syn_ns: 5 * 1_000_000_000,
            closing_ns: 10 * 1_000_000_000,
            idle_ns: 24 * 3600 * 1_000_000_000,
        }
    }
}

/// What one GC pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub scanned: usize,
    pub expired: usize,
    pub stale: usize,
    pub orphans: usize,
    /// Session counters corrected to the established flows that exist.
    pub reconciled: usize,
}
