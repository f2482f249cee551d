//! Every map of the program, pinned by name under the agent's pin directory so that flows and
//! configuration survive an agent restart. Layouts live in `pgsvc-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use pgsvc_common::{
    Backend, BackendSet, Config, DEFAULT_MAX_FLOWS, Flow, FlowKey, GENERATIONS, LocalScope,
    MAX_BACKENDS, MAX_LOCAL_ADDRS, MAX_SERVICES, MAX_SOCK_FLOWS, NatKey, NatRev, PORT_F_EXACT,
    PORT_F_WILDCARD, Reason, ServiceKey, ServiceRuntime, ServiceState, SockFlow, SockScope,
    TrafficStats, nat_rev_capacity, pending_capacity,
};

/// Global settings (one entry).
#[map]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

/// Listen (address, port) → service id; address 0 is the wildcard.
#[map]
pub static SERVICES: HashMap<ServiceKey, u32> = HashMap::pinned(MAX_SERVICES * 4, 0);

/// Per-service configuration, written whole by the agent.
#[map]
pub static SVC_STATE: Array<ServiceState> = Array::pinned(MAX_SERVICES, 0);

/// Per-service counters owned by the datapath (round-robin position, open connections).
#[map]
pub static SVC_RUNTIME: Array<ServiceRuntime> = Array::pinned(MAX_SERVICES, 0);

/// Per service × generation: the active backend set (ring and leastconn candidates).
#[map]
pub static SVC_TABLE: Array<BackendSet> = Array::pinned(MAX_SERVICES * GENERATIONS, 0);

/// Per backend slot: address, health flags, epoch, limits, next hop.
#[map]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_BACKENDS, 0);

/// Per backend: connections opened minus closed, updated atomically by the datapath.
#[map]
pub static BACKEND_CONNS: Array<i64> = Array::pinned(MAX_BACKENDS, 0);

/// Per backend: flows the agent removed while they were still counted (idle expiry); written only by
/// the agent. Active connections = `BACKEND_CONNS - BACKEND_RELEASED`.
#[map]
pub static BACKEND_RELEASED: Array<i64> = Array::pinned(MAX_BACKENDS, 0);

/// Per service: flows the agent removed while they were still counted; written only by the agent.
/// Open connections = `SVC_RUNTIME.conns - SVC_RELEASED`.
#[map]
pub static SVC_RELEASED: Array<i64> = Array::pinned(MAX_SERVICES, 0);

/// Forward conntrack of established connections: client 4-tuple → translation. Never evicts: when
/// it is full, a completing handshake is refused rather than a live connection sacrificed.
#[map]
pub static FLOWS: HashMap<FlowKey, Flow> = HashMap::pinned(DEFAULT_MAX_FLOWS, 0);

/// Forward conntrack of flows that do not count as sessions: half-open (SYN seen, handshake not
/// complete) and closing (after the first FIN or RST). LRU: a SYN flood evicts only these.
#[map]
pub static FLOWS_PENDING: LruHashMap<FlowKey, Flow> =
    LruHashMap::pinned(pending_capacity(DEFAULT_MAX_FLOWS), 0);

/// Reverse NAT: backend's view of a flow → client's view. Never evicts (see `nat_rev_capacity`).
#[map]
pub static NAT_REV: HashMap<NatKey, NatRev> =
    HashMap::pinned(nat_rev_capacity(DEFAULT_MAX_FLOWS), 0);

/// Slots of [`SNAT_CURSOR`] (a power of two).
pub const SNAT_CURSOR_SLOTS: u32 = 4096;

/// SNAT allocation cursors (see snat.rs): per destination slot (a hash of the server's address and
/// port), the offset into the port range after the last port given, plus one (0 = not started).
/// An array read costs a few instructions where the reverse-table entry that held the cursor
/// before cost a hash lookup per SYN. Pinned like the flow tables it belongs with: an agent that
/// adopts them (a restart, an upgrade) goes on after the last port given, not at a random port
/// that a server may still hold in TIME_WAIT.
#[map]
pub static SNAT_CURSOR: Array<u32> = Array::pinned(SNAT_CURSOR_SLOTS, 0);

/// Per-CPU traffic counters per service.
#[map]
pub static SVC_STATS: PerCpuArray<TrafficStats> = PerCpuArray::pinned(MAX_SERVICES, 0);

/// Per-CPU traffic counters per backend.
#[map]
pub static BACKEND_STATS: PerCpuArray<TrafficStats> = PerCpuArray::pinned(MAX_BACKENDS, 0);

/// Per-CPU packet counters per [`Reason`].
#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::pinned(Reason::COUNT, 0);

/// Per destination port (host order): `PORT_F_*` — whether any service listens there, so that
/// traffic to other ports (replication, ssh, the agent's own checks) passes after one array read.
#[map]
pub static PORTS: Array<u8> = Array::pinned(65536, 0);

/// What `ip: "*"` services accept at the link layer (one entry; see [`LocalScope`]).
#[map]
pub static LOCAL_SCOPE: Array<LocalScope> = Array::pinned(1, 0);

/// Local IPv4 addresses of the node (network order) → 1: the destinations `ip: "*"` services
/// accept. Kept current by the agent.
#[map]
pub static LOCAL_ADDRS: HashMap<u32, u8> = HashMap::pinned(MAX_LOCAL_ADDRS, 0);

#[inline(always)]
pub fn port_flags(dport: u16) -> u8 {
    PORTS
        .get(u32::from(u16::from_be(dport)))
        .copied()
        .unwrap_or(0)
}

/// A service found for a destination.
pub struct Found {
    pub svc_id: u32,
    /// Matched through the wildcard (`ip: "*"`) key.
    pub wildcard: bool,
}

/// Exact (address, port) first, then the wildcard — each only where `PORTS` says one exists.
#[inline(always)]
pub fn lookup_service(daddr: u32, dport: u16, port_flags: u8) -> Option<Found> {
    if port_flags & PORT_F_EXACT != 0 {
        // SAFETY: the value is a plain u32 copied out before the next helper call.
        if let Some(id) = unsafe { SERVICES.get(ServiceKey::exact(daddr, dport)) } {
            return Some(Found {
                svc_id: *id,
                wildcard: false,
            });
        }
    }
    if port_flags & PORT_F_WILDCARD == 0 {
        return None;
    }
    // SAFETY: as above.
    let id = unsafe { SERVICES.get(ServiceKey::wildcard(dport)) }.copied()?;
    Some(Found {
        svc_id: id,
        wildcard: true,
    })
}

/// Sessions of clients on the node itself, by socket cookie (see sock.rs). A plain hash map, not
/// LRU: an evicted entry would never be released and its counters would leak.
#[map]
pub static SOCK_FLOWS: HashMap<u64, SockFlow> = HashMap::pinned(MAX_SOCK_FLOWS, 0);

/// Which sockets the cgroup programs serve (one entry; see [`SockScope`]).
#[map]
pub static SOCK_SCOPE: Array<SockScope> = Array::pinned(1, 0);
