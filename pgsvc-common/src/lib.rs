//! The ABI between the pgsvc XDP program and its agent: map names, keys, values and limits.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding (each layout is asserted at compile time)
//! and is shared byte for byte with the kernel. Pinned maps outlive the agent, so a layout change must
//! bump [`ABI_VERSION`] and rename the affected map (`FLOWS` → `FLOWS_V2`); the agent refuses to adopt
//! pins written by another ABI version.
//!
//! Byte order: addresses and ports are stored in **network byte order** exactly as they appear in the
//! packet (the datapath never swaps), everything else in host order.
#![cfg_attr(not(test), no_std)]

use core::mem::size_of;

/// Bumped on any change of a pinned map's key or value layout.
pub const ABI_VERSION: u32 = 3;

/// Number of service ids (`SVC_STATE`, per-service stats).
pub const MAX_SERVICES: u32 = 256;
/// Number of backend slots (`BACKENDS`, per-backend counters). A backend is one server of one service.
pub const MAX_BACKENDS: u32 = 4096;
/// Backend set generations per service: the agent writes the inactive one, then flips.
pub const GENERATIONS: u32 = 2;
/// Length of a service's backend ring: the weighted round-robin sequence or the Maglev lookup table.
/// Prime, as Maglev requires.
pub const RING_SIZE: usize = 1021;
/// Servers considered by `leastconn` (the active set of one service).
pub const MAX_ACTIVE: usize = 32;
/// Default size of `FLOWS`, the table of established connections (the agent can size it at load
/// time with `--max-flows`; `FLOWS_PENDING` and `NAT_REV` are sized from it).
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// SNAT ports probed per SYN for a free one; see `pgsvc_ebpf::snat` for the rules.
pub const SNAT_TRIES: u32 = 32;
/// Size of `LOCAL_ADDRS`: local IPv4 addresses of the node that `ip: "*"` services accept.
pub const MAX_LOCAL_ADDRS: u32 = 256;

/// Map names, as the agent looks them up and pins them.
pub mod maps {
    pub const CONFIG: &str = "CONFIG";
    pub const SERVICES: &str = "SERVICES";
    pub const SVC_STATE: &str = "SVC_STATE";
    pub const SVC_RUNTIME: &str = "SVC_RUNTIME";
    pub const SVC_TABLE: &str = "SVC_TABLE";
    pub const BACKENDS: &str = "BACKENDS";
    pub const BACKEND_CONNS: &str = "BACKEND_CONNS";
    pub const BACKEND_RELEASED: &str = "BACKEND_RELEASED";
    pub const SVC_RELEASED: &str = "SVC_RELEASED";
    pub const PORTS: &str = "PORTS";
    pub const FLOWS: &str = "FLOWS";
    pub const NAT_REV: &str = "NAT_REV";
    pub const SVC_STATS: &str = "SVC_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const REASONS: &str = "REASONS";
    pub const LOCAL_SCOPE: &str = "LOCAL_SCOPE";
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    pub const SOCK_FLOWS: &str = "SOCK_FLOWS";
    pub const SOCK_SCOPE: &str = "SOCK_SCOPE";
    pub const FLOWS_PENDING: &str = "FLOWS_PENDING";
    pub const SNAT_CURSOR: &str = "SNAT_CURSOR";
    /// Every map the program declares (all pinned by name).
    pub const ALL: [&str; 21] = [
        CONFIG,
        SERVICES,
        SVC_STATE,
        SVC_RUNTIME,
        SVC_TABLE,
        BACKENDS,
        BACKEND_CONNS,
        BACKEND_RELEASED,
        SVC_RELEASED,
        PORTS,
        FLOWS,
        NAT_REV,
        SVC_STATS,
        BACKEND_STATS,
        REASONS,
        LOCAL_SCOPE,
        LOCAL_ADDRS,
        SOCK_FLOWS,
        SOCK_SCOPE,
        FLOWS_PENDING,
        SNAT_CURSOR,
    ];
}

/// Program names in the object file.
pub mod programs {
    /// The load balancer.
    pub const LB: &str = "pgsvc_xdp";
    /// In the separate `pgsvc-pass` object: passes everything. Attached to the peer of a veth so that
    /// native-mode `XDP_TX` frames are delivered (veth drops them when the peer has no XDP program).
    pub const PASS: &str = "pgsvc_pass";
    /// The TC egress (clsact) program on the attached interface: restores the service address and
    /// port on the replies of flows delivered to a local member (see `BE_F_LOCAL`).
    pub const TC_EGRESS: &str = "pgsvc_tc_egress";
    /// cgroup `connect4`: a local client's connect to a service goes to the selected server.
    pub const SOCK_CONNECT4: &str = "pgsvc_connect4";
    /// cgroup `getpeername4`: the client sees the address it dialled.
    pub const SOCK_GETPEERNAME4: &str = "pgsvc_getpeername4";
    /// cgroup `sock_release`: a local client's session stops counting.
    pub const SOCK_RELEASE: &str = "pgsvc_sock_release";
    /// The socket programs, with the names their cgroup links are pinned under (`link_*`, like the
    /// XDP links, so that `pgsvc detach` removes them too).
    pub const SOCK: [(&str, &str); 3] = [
        (SOCK_CONNECT4, "link_cgroup_connect4"),
        (SOCK_GETPEERNAME4, "link_cgroup_getpeername4"),
        (SOCK_RELEASE, "link_cgroup_sock_release"),
    ];
}

/// `CONFIG[0]`: global settings written by the agent before traffic is steered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Must equal [`ABI_VERSION`]; the program passes every packet untouched while it does not.
    pub abi_version: u32,
    /// Source address of translated flows (network order): the LB's own address toward the backends.
    pub snat_addr: u32,
    /// SNAT port range, inclusive, host order. Reserved from the kernel by the agent.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// `CFG_F_*` flags.
    pub flags: u32,
    /// CLOCK_MONOTONIC (coarse) in ns, refreshed by the agent every second: the timestamp flows
    /// record as `last_seen_ns`. Reading it costs an array load where `bpf_ktime_get_coarse_ns`
    /// costs ~20 ns per packet (measured); flows only need second granularity for their timeouts.
    pub now_ns: u64,
}
const _: () = assert!(size_of::<Config>() == 24);

/// Use `bpf_fib_lookup` when a backend's next-hop MAC is not known.
pub const CFG_F_FIB_FALLBACK: u32 = 1 << 0;

/// `SERVICES` key: where clients connect. `addr == 0` is the wildcard (`ip: "*"`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: u32,
    pub port: u16,
    /// IP protocol number (6 = TCP).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 8);

impl ServiceKey {
    /// The key of a service listening on `addr:port` (both network order).
    #[inline(always)]
    pub const fn exact(addr: u32, port: u16) -> Self {
        Self {
            addr,
            port,
            proto: IPPROTO_TCP,
            _pad: 0,
        }
    }

    /// The key of a service listening on every address (`ip: "*"`) at `port` (network order).
    #[inline(always)]
    pub const fn wildcard(port: u16) -> Self {
        Self::exact(0, port)
    }

    #[inline(always)]
    pub const fn is_wildcard(&self) -> bool {
        self.addr == 0
    }
}

pub const IPPROTO_TCP: u8 = 6;

/// `LOCAL_SCOPE[0]`: the link-layer destinations a service on `ip: "*"` accepts, written by the
/// agent. Its network-layer counterpart is `LOCAL_ADDRS` (local IPv4 address, network order → 1).
/// Until the agent wrote a MAC here, `*` services accept nothing (their packets pass).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalScope {
    /// The attached interface's MAC.
    pub if_mac: [u8; 6],
    /// A virtual MAC the VIP is also reachable at (VRRP); all zero = none.
    pub vip_mac: [u8; 6],
}
const _: () = assert!(size_of::<LocalScope>() == 12);

/// `PORTS[port]` bits: a service listens on this port at an exact address / at the wildcard.
pub const PORT_F_EXACT: u8 = 1 << 0;
pub const PORT_F_WILDCARD: u8 = 1 << 1;

/// `SVC_STATE[svc_id]`: a service's configuration; written whole by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// `SVC_F_*` flags; a service without `SVC_F_ACTIVE` steers nothing (its packets pass).
    pub flags: u32,
    /// Which `SVC_TABLE` generation is live (0 or 1).
    pub generation: u32,
    /// An [`Algorithm`] discriminant.
    pub algorithm: u32,
    /// Frontend connection limit (HAProxy `maxconn` of the listen section); 0 = unlimited.
    pub maxconn: u32,
}
const _: () = assert!(size_of::<ServiceState>() == 16);

pub const SVC_F_ACTIVE: u32 = 1 << 0;
/// `on-marked-down shutdown-sessions`: flows of a DOWN backend are reset.
pub const SVC_F_SHUTDOWN_SESSIONS: u32 = 1 << 1;

/// How a service picks the backend of a new flow.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Weighted round robin over the ring sequence, one global counter per service.
    RoundRobin = 0,
    /// Fewest active connections relative to weight among the active set.
    LeastConn = 1,
    /// Consistent hash of the 5-tuple into the Maglev lookup table in the ring.
    Maglev = 2,
}

impl Algorithm {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::RoundRobin),
            1 => Some(Self::LeastConn),
            2 => Some(Self::Maglev),
            _ => None,
        }
    }
}

/// `SVC_RUNTIME[svc_id]`: counters owned by the datapath (atomics); the agent only zeroes them when it
/// assigns the service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceRuntime {
    /// Round-robin position.
    pub rr_counter: u64,
    /// Flows opened minus flows closed (frontend sessions).
    pub conns: i64,
}
const _: () = assert!(size_of::<ServiceRuntime>() == 16);

/// `SVC_TABLE[svc_id * GENERATIONS + generation]`: one generation of a service's active set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSet {
    /// Entries of `ring` in use (0 = no usable backend: new flows are refused).
    pub ring_len: u32,
    /// Entries of `active` in use.
    pub n_active: u32,
    /// Backend ids of the active set (leastconn candidates), with their effective weights.
    pub active: [u32; MAX_ACTIVE],
    pub weights: [u32; MAX_ACTIVE],
    /// Backend ids: the weighted round-robin sequence or the Maglev table.
    pub ring: [u16; RING_SIZE],
    pub _pad: u16,
}
const _: () = assert!(size_of::<BackendSet>() == 8 + 4 * MAX_ACTIVE * 2 + 2 * RING_SIZE + 2);

impl Default for BackendSet {
    fn default() -> Self {
        Self {
            ring_len: 0,
            n_active: 0,
            active: [0; MAX_ACTIVE],
            weights: [0; MAX_ACTIVE],
            ring: [0; RING_SIZE],
            _pad: 0,
        }
    }
}

/// `BACKENDS[backend_id]`: one server of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Server address and port (network order).
    pub addr: u32,
    pub port: u16,
    /// `BE_F_*` flags.
    pub flags: u16,
    /// Incremented whenever the slot is (re)assigned or its flows are flushed; a flow remembers the
    /// epoch it was created under and is reset when the two differ.
    pub epoch: u32,
    /// Connection limit (HAProxy `maxconn`, ramped by slowstart); 0 = unlimited.
    pub maxconn: u32,
    /// Egress interface toward the server (0 = the interface the client's packet came in on).
    pub ifindex: u32,
    /// The service this slot belongs to (lets a restarted agent rebuild its id tables from the maps).
    pub svc_id: u32,
    /// The next hop's MAC (all zero = unknown: `bpf_fib_lookup`, else the packet passes).
    pub next_hop_mac: [u8; 6],
    /// Source MAC on the egress interface (all zero = the MAC the client's packet was sent to).
    pub src_mac: [u8; 6],
}
const _: () = assert!(size_of::<Backend>() == 36);

/// The server is UP; a flow whose backend lacks it (with `SVC_F_SHUTDOWN_SESSIONS`) is reset.
pub const BE_F_UP: u16 = 1 << 0;
/// The slot is in use by a server of `svc_id`.
pub const BE_F_ALLOCATED: u16 = 1 << 1;
/// The server's address is a local address of this node (the node-resident topology): its flows
/// keep the client's source address, are translated to the member's address and port in place and
/// passed to the node's own stack; the TC egress program translates the replies back. Such a flow
/// has `snat_port == 0` ([`Flow::is_local`]).
pub const BE_F_LOCAL: u16 = 1 << 2;

/// `FLOWS` key: a client connection as it arrives (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client_addr: u32,
    pub vip: u32,
    pub client_port: u16,
    pub vport: u16,
}
const _: () = assert!(size_of::<FlowKey>() == 12);

impl FlowKey {
    /// The flow of a client → service packet (fields as read from the packet, network order).
    #[inline(always)]
    pub const fn of_packet(saddr: u32, daddr: u32, sport: u16, dport: u16) -> Self {
        Self {
            client_addr: saddr,
            vip: daddr,
            client_port: sport,
            vport: dport,
        }
    }
}

/// Size of `FLOWS_PENDING`, the LRU table of flows that do not count as sessions (half-open: the
/// client's SYN was forwarded but the handshake is not complete; closing: after the first FIN or
/// RST): an eighth of `max_flows`, at least 256. A SYN flood can only evict other pending flows.
pub const fn pending_capacity(max_flows: u32) -> u32 {
    let n = max_flows / 8;
    if n < 256 { 256 } else { n }
}

/// Size of `NAT_REV` (never evicting): one reverse entry per established and per pending flow, plus
/// as many again for the entries of pending flows the LRU evicted until the agent's GC reclaims them.
pub const fn nat_rev_capacity(max_flows: u32) -> u32 {
    max_flows.saturating_add(pending_capacity(max_flows).saturating_mul(2))
}

/// `FLOWS` / `FLOWS_PENDING` value: the forward half of a translated connection.
///
/// A flow lives in one of two tables. `FLOWS_PENDING` (LRU) holds a flow from the client's SYN until
/// the client completes the handshake (half-open, `closing == 0`), and again from its first FIN or
/// RST (closing, `closing == 1`); these never count as sessions. `FLOWS` (never evicting) holds the
/// established flows, exactly the ones the session counters count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_id: u32,
    pub backend_epoch: u32,
    pub svc_id: u32,
    /// The server this flow was sent to (network order): kept here so that a flow whose backend slot
    /// was reassigned can still find and remove its `NAT_REV` entry.
    pub backend_addr: u32,
    pub backend_port: u16,
    /// SNAT port (network order).
    pub snat_port: u16,
    /// `TCP_F_*` seen from the client.
    pub client_flags: u8,
    pub _pad0: [u8; 3],
    /// 1 once the flow stopped counting as a connection (first FIN or RST either way, or reset by the
    /// datapath); set with an atomic exchange so the counters drop exactly once.
    /// (u64: the BPF target without alu32 has 64-bit atomics only.)
    pub closing: u64,
    /// Last packet from the client, by `Config::now_ns` (CLOCK_MONOTONIC, coarse), refreshed
    /// at most once a second.
    pub last_seen_ns: u64,
    /// The sequence number the client sends next (host order): the highest `seq + payload + SYN +
    /// FIN` of its forwarded packets, so that the agent can reset an idle connection at once with
    /// a RST the backend accepts (ABI 3). The backend's side is in [`NatRev::backend_next_seq`].
    pub client_next_seq: u32,
    pub _pad1: u32,
}
const _: () = assert!(size_of::<Flow>() == 48);

impl Flow {
    /// Delivered to a local member (no SNAT port: SNAT ports are never 0).
    #[inline(always)]
    pub const fn is_local(&self) -> bool {
        self.snat_port == 0
    }
}

/// `NAT_REV` key: a translated connection as the backend answers it (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub backend_addr: u32,
    pub snat_addr: u32,
    pub backend_port: u16,
    pub snat_port: u16,
}
const _: () = assert!(size_of::<NatKey>() == 12);

impl NatKey {
    /// The reverse entry a backend → SNAT address packet looks up (network order, as read).
    #[inline(always)]
    pub const fn of_packet(saddr: u32, daddr: u32, sport: u16, dport: u16) -> Self {
        Self {
            backend_addr: saddr,
            snat_addr: daddr,
            backend_port: sport,
            snat_port: dport,
        }
    }

    /// The reverse entry of the flow `key` → `flow`: for a full-NAT flow the backend's answer to
    /// (`snat_addr`, SNAT port); for a local flow ([`Flow::is_local`]) the local member's answer
    /// to the client itself (member address and port → client address and port), as the TC
    /// egress program reads it from the reply.
    #[inline(always)]
    pub const fn for_flow(key: &FlowKey, flow: &Flow, snat_addr: u32) -> Self {
        if flow.is_local() {
            Self::of_packet(
                flow.backend_addr,
                key.client_addr,
                flow.backend_port,
                key.client_port,
            )
        } else {
            Self::of_flow(flow, snat_addr)
        }
    }

    /// The reverse entry of a forward flow translated from `snat_addr`.
    #[inline(always)]
    pub const fn of_flow(flow: &Flow, snat_addr: u32) -> Self {
        Self {
            backend_addr: flow.backend_addr,
            snat_addr,
            backend_port: flow.backend_port,
            snat_port: flow.snat_port,
        }
    }
}

/// `NAT_REV` value: everything the reverse path needs to restore the client's view.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatRev {
    pub client_addr: u32,
    pub vip: u32,
    pub client_port: u16,
    pub vport: u16,
    /// Interface the client side lives behind; MACs to use toward it.
    pub client_ifindex: u32,
    pub client_mac: [u8; 6],
    pub lb_mac: [u8; 6],
    pub backend_id: u32,
    pub svc_id: u32,
    /// `TCP_F_*` seen from the backend.
    pub backend_flags: u8,
    pub _pad: [u8; 3],
    /// Last packet from the backend (as `Flow::last_seen_ns`).
    pub last_seen_ns: u64,
    /// The sequence number the backend sends next (host order), as [`Flow::client_next_seq`]:
    /// what a RST to the client must carry. Kept here, where the reverse path already writes,
    /// so that no packet pays a second lookup (ABI 3).
    pub backend_next_seq: u32,
    pub _pad1: u32,
}
const _: () = assert!(size_of::<NatRev>() == 56);

impl NatRev {
    /// The forward flow this reverse entry belongs to.
    #[inline(always)]
    pub const fn flow_key(&self) -> FlowKey {
        FlowKey::of_packet(self.client_addr, self.vip, self.client_port, self.vport)
    }
}

/// Open connections from a pair of counters: `opened` (incremented by the datapath on a new flow,
/// decremented when a flow closes) minus `released` (flows the agent removed while they still
/// counted). Wrapping subtraction, so that neither side's overflow can trap or flip the sign of the
/// result; a negative difference (a transient race between the two writers) reads as 0.
#[inline(always)]
pub const fn open_conns(opened: i64, released: i64) -> u64 {
    let n = opened.wrapping_sub(released);
    if n < 0 { 0 } else { n as u64 }
}

pub const TCP_F_SYN: u8 = 1 << 0;
pub const TCP_F_ACK: u8 = 1 << 1;
pub const TCP_F_FIN: u8 = 1 << 2;
pub const TCP_F_RST: u8 = 1 << 3;

/// Per-service and per-backend traffic counters (`SVC_STATS`, `BACKEND_STATS`, per CPU).
/// "in" is client → server, "out" is server → client, as HAProxy counts bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Flows created (sessions).
    pub new_flows: u64,
    /// Resets sent to clients (no flow, backend down).
    pub rst_sent: u64,
    /// SYNs dropped (maxconn, no backend, no SNAT port).
    pub syn_dropped: u64,
    /// Flows that ended (first FIN/RST either way, or reset by the datapath).
    pub closed_flows: u64,
}
const _: () = assert!(size_of::<TrafficStats>() == 64);

impl TrafficStats {
    /// Sums per-CPU values.
    pub fn add(&mut self, o: &Self) {
        self.packets_in += o.packets_in;
        self.bytes_in += o.bytes_in;
        self.packets_out += o.packets_out;
        self.bytes_out += o.bytes_out;
        self.new_flows += o.new_flows;
        self.rst_sent += o.rst_sent;
        self.syn_dropped += o.syn_dropped;
        self.closed_flows += o.closed_flows;
    }
}

/// Why the program did what it did with a packet; indexes `REASONS` (per-CPU u64 counters) and is the
/// `reason` label of `pgsvc_packets_total`. Append only: never renumber, retire variants instead.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4 (ARP, IPv6, ...): passed.
    PassNotIpv4 = 0,
    /// IPv4 but not TCP: passed.
    PassNotTcp = 1,
    /// TCP not addressed to a service nor to an SNAT port: passed.
    PassNotService = 2,
    /// IPv4 fragment: passed to the kernel (services never see fragments from PostgreSQL clients).
    PassFragment = 3,
    /// Headers shorter than they claim: passed for the kernel to drop.
    PassTruncated = 4,
    /// Reverse-looking packet with no `NAT_REV` entry: the LB host's own traffic, passed.
    PassNoNat = 5,
    /// No next-hop MAC known and no FIB answer: dropped (the kernel would answer a VIP packet with a
    /// RST; TCP retransmits while the agent resolves the neighbour).
    DropNoNextHop = 6,
    /// The maps are not configured (ABI mismatch or agent not ready): passed.
    PassNotReady = 7,
    /// Forward packet of a new flow translated.
    FwdNew = 8,
    /// Forward packet of an established flow translated.
    FwdEstablished = 9,
    /// Reverse packet translated.
    Reverse = 10,
    /// Non-SYN packet with no flow: RST to the client.
    RstNoFlow = 11,
    /// Flow whose backend is DOWN or gone: RST to the client.
    RstBackendDown = 12,
    /// SYN over the service's maxconn: dropped.
    DropServiceMaxconn = 13,
    /// SYN with every active backend at its maxconn: dropped.
    DropBackendMaxconn = 14,
    /// SYN while the service has no usable backend: RST to the client, which learns at once that
    /// the service is unavailable (HAProxy, too, closes such a connection at once). A dropped SYN
    /// would hold it until its retransmission (1 s, then 3 s) even when a server came back meanwhile
    /// — the new primary of a failover.
    RstNoBackend = 15,
    /// SYN with no free SNAT port, but one about to be (its connection just ended): dropped, the
    /// client's retransmission finds it.
    DropSnatExhausted = 16,
    /// Flow table insert failed: dropped.
    DropFlowInsert = 17,
    /// A packet that would need a RST but carries IP options: dropped.
    DropIpOptions = 18,
    /// `bpf_redirect` or `bpf_xdp_adjust_tail` failed: dropped.
    DropXmit = 19,
    /// An incoming RST that would otherwise be answered with a RST (no flow, or its flow is being
    /// reset): dropped, never answered.
    DropRstUnanswered = 20,
    /// On the port of an `ip: "*"` service, but not addressed to this node (a MAC that is not the
    /// interface's, or a destination that is not a local address): passed untouched.
    PassNotLocal = 21,
    /// A packet that would create a flow or be answered with a RST has a bad IPv4 header or TCP
    /// checksum (or a segment too long to verify, over 1480 bytes): passed untouched for the
    /// kernel to drop (or answer) as the host would.
    PassBadChecksum = 22,
    /// The IPv4 total length claims more bytes than the frame has: passed untouched (the kernel
    /// drops it).
    PassBadLength = 23,
    /// Client → service packet opening a flow to a local member: translated in place (destination
    /// → the member's address and port, source kept) and passed to the node's stack.
    PassLocalNew = 24,
    /// Client → service packet of an established flow to a local member: translated and passed.
    PassLocalEstablished = 25,
    /// Local member → client reply translated back by the TC egress program (source → the
    /// address and port the client dialled).
    ReverseLocal = 26,
    /// The client completed a handshake but the table of established flows (`FLOWS`, `--max-flows`)
    /// is full: RST to the client (a live connection is never evicted to make room).
    RstFlowTableFull = 27,
    /// SYN refused with a RST: every SNAT port toward the chosen server carries a live connection
    /// (no port will be free before the client would retransmit).
    RstSnatExhausted = 28,
}

/// What the XDP program does with a packet, by [`Reason::action`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `XDP_PASS`: the frame goes to the kernel exactly as it arrived.
    Pass,
    /// `XDP_DROP`.
    Drop,
    /// The frame was rewritten and leaves again (`XDP_TX`, or `XDP_REDIRECT` toward another
    /// interface).
    Transmit,
}

// `Reason::mask` is a u32 bit set.
const _: () = assert!(Reason::COUNT <= 32);

impl Reason {
    pub const COUNT: u32 = 29;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Self::PassNotIpv4,
        Self::PassNotTcp,
        Self::PassNotService,
        Self::PassFragment,
        Self::PassTruncated,
        Self::PassNoNat,
        Self::DropNoNextHop,
        Self::PassNotReady,
        Self::FwdNew,
        Self::FwdEstablished,
        Self::Reverse,
        Self::RstNoFlow,
        Self::RstBackendDown,
        Self::DropServiceMaxconn,
        Self::DropBackendMaxconn,
        Self::RstNoBackend,
        Self::DropSnatExhausted,
        Self::DropFlowInsert,
        Self::DropIpOptions,
        Self::DropXmit,
        Self::DropRstUnanswered,
        Self::PassNotLocal,
        Self::PassBadChecksum,
        Self::PassBadLength,
        Self::PassLocalNew,
        Self::PassLocalEstablished,
        Self::ReverseLocal,
        Self::RstFlowTableFull,
        Self::RstSnatExhausted,
    ];

    /// The reason with discriminant `v`.
    pub const fn from_u32(v: u32) -> Option<Self> {
        if v < Self::COUNT {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// The verdict this reason stands for. The single source of truth for both sides: the XDP
    /// program derives its action from it, so a new drop reason can never pass by accident. Keep the
    /// match exhaustive (no `_` arm): a new variant does not compile until it is classified.
    #[inline(always)]
    pub const fn action(self) -> Action {
        match self {
            Self::PassNotIpv4
            | Self::PassNotTcp
            | Self::PassNotService
            | Self::PassFragment
            | Self::PassTruncated
            | Self::PassNoNat
            | Self::PassNotReady
            | Self::PassNotLocal
            | Self::PassBadChecksum
            | Self::PassBadLength
            | Self::PassLocalNew
            | Self::PassLocalEstablished => Action::Pass,
            Self::DropNoNextHop
            | Self::DropServiceMaxconn
            | Self::DropBackendMaxconn
            | Self::DropSnatExhausted
            | Self::DropFlowInsert
            | Self::DropIpOptions
            | Self::DropXmit
            | Self::DropRstUnanswered => Action::Drop,
            Self::FwdNew
            | Self::FwdEstablished
            | Self::Reverse
            | Self::RstNoFlow
            | Self::RstBackendDown
            | Self::RstNoBackend
            | Self::ReverseLocal
            | Self::RstFlowTableFull
            | Self::RstSnatExhausted => Action::Transmit,
        }
    }

    /// The reasons whose [`action`](Self::action) is `a`, as a bit set (bit `reason as u32`).
    /// Computed at compile time, it gives the XDP program the same verdicts as `action()` with one
    /// test of a constant instead of a branch over every variant.
    pub const fn mask(a: Action) -> u32 {
        let mut m = 0;
        let mut i = 0;
        while i < Self::COUNT as usize {
            let same = matches!(
                (Self::ALL[i].action(), a),
                (Action::Pass, Action::Pass)
                    | (Action::Drop, Action::Drop)
                    | (Action::Transmit, Action::Transmit)
            );
            if same {
                m |= 1 << i;
            }
            i += 1;
        }
        m
    }

    /// The metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PassNotIpv4 => "pass_not_ipv4",
            Self::PassNotTcp => "pass_not_tcp",
            Self::PassNotService => "pass_not_service",
            Self::PassFragment => "pass_fragment",
            Self::PassTruncated => "pass_truncated",
            Self::PassNoNat => "pass_no_nat",
            Self::DropNoNextHop => "drop_no_next_hop",
            Self::PassNotReady => "pass_not_ready",
            Self::FwdNew => "fwd_new",
            Self::FwdEstablished => "fwd_established",
            Self::Reverse => "reverse",
            Self::RstNoFlow => "rst_no_flow",
            Self::RstBackendDown => "rst_backend_down",
            Self::DropServiceMaxconn => "drop_service_maxconn",
            Self::DropBackendMaxconn => "drop_backend_maxconn",
            Self::RstNoBackend => "rst_no_backend",
            Self::DropSnatExhausted => "drop_snat_exhausted",
            Self::DropFlowInsert => "drop_flow_insert",
            Self::DropIpOptions => "drop_ip_options",
            Self::DropXmit => "drop_xmit",
            Self::DropRstUnanswered => "drop_rst_unanswered",
            Self::PassNotLocal => "pass_not_local",
            Self::PassBadChecksum => "pass_bad_checksum",
            Self::PassBadLength => "pass_bad_length",
            Self::PassLocalNew => "pass_local_new",
            Self::PassLocalEstablished => "pass_local_established",
            Self::ReverseLocal => "reverse_local",
            Self::RstFlowTableFull => "rst_flow_table_full",
            Self::RstSnatExhausted => "rst_snat_exhausted",
        }
    }
}

/// Size of `SOCK_FLOWS`: sessions of clients on the node itself open at once.
pub const MAX_SOCK_FLOWS: u32 = 65536;

/// `SOCK_FLOWS` value, keyed by socket cookie (u64): a local client's connection that the cgroup
/// `connect4` program sent to a server. Counted like a flow from the network (service and backend
/// connection counters) from the connect until the socket is released.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockFlow {
    pub svc_id: u32,
    pub backend_id: u32,
    pub backend_epoch: u32,
    /// The address and port the client dialled (network order): what `getpeername` shows.
    pub vip: u32,
    pub backend_addr: u32,
    pub vport: u16,
    pub backend_port: u16,
}
const _: () = assert!(size_of::<SockFlow>() == 24);

/// `SOCK_SCOPE[0]`: which sockets the cgroup programs serve. They see every process of the cgroup
/// whatever its network namespace; only sockets of the agent's own namespace are balanced, as
/// HAProxy's `bind` only serves its own namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockScope {
    /// The agent's network-namespace cookie (`SO_NETNS_COOKIE`); 0 = serve nothing yet.
    pub netns_cookie: u64,
}
const _: () = assert!(size_of::<SockScope>() == 8);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is repr(C), Copy, has no padding bytes (sizes asserted above) and is valid for
    // any bit pattern.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceState {}
    unsafe impl aya::Pod for ServiceRuntime {}
    unsafe impl aya::Pod for BackendSet {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for NatRev {}
    unsafe impl aya::Pod for TrafficStats {}
    unsafe impl aya::Pod for LocalScope {}
    unsafe impl aya::Pod for SockFlow {}
    unsafe impl aya::Pod for SockScope {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_once_in_discriminant_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{r:?} out of place in Reason::ALL");
            assert_eq!(Reason::from_u32(i as u32), Some(*r));
        }
        assert_eq!(Reason::from_u32(Reason::COUNT), None);
    }

    /// Every variant's verdict agrees with its label (`pass_*` passes, `drop_*` drops, everything
    /// else transmits), and the label set is exactly the variant set: a drop reason classified as
    /// a pass, or a pass reason that drops, fails here.
    #[test]
    fn every_reason_has_the_action_its_name_says() {
        let mut names = std::collections::HashSet::new();
        for r in Reason::ALL {
            let name = r.name();
            assert!(names.insert(name), "label {name} used twice");
            let want = if name.starts_with("pass_") {
                Action::Pass
            } else if name.starts_with("drop_") {
                Action::Drop
            } else {
                assert!(
                    ["fwd_", "reverse", "rst_"]
                        .iter()
                        .any(|p| name.starts_with(p)),
                    "{name}: a label must say what happens (pass_, drop_, fwd_, reverse, rst_)"
                );
                Action::Transmit
            };
            assert_eq!(r.action(), want, "{r:?} ({name})");
        }
        assert_eq!(names.len(), Reason::COUNT as usize);
    }

    #[test]
    fn masks_agree_with_action_and_partition_the_reasons() {
        let all = [Action::Pass, Action::Drop, Action::Transmit];
        for r in Reason::ALL {
            for a in all {
                let bit = Reason::mask(a) & (1 << r as u32) != 0;
                assert_eq!(bit, r.action() == a, "{r:?} in the {a:?} mask");
            }
        }
        let union = all.iter().fold(0, |m, &a| m | Reason::mask(a));
        assert_eq!(union, (1u32 << Reason::COUNT) - 1);
    }

    #[test]
    fn keys_round_trip_between_a_flow_and_its_reverse_entry() {
        let (client, vip, backend, snat) = (0x0a00_0001, 0x0a00_0064, 0x0a00_000b, 0x0a00_0002);
        let (cport, vport, bport, sport) = (
            40000u16.to_be(),
            5433u16.to_be(),
            6432u16.to_be(),
            41000u16.to_be(),
        );
        let fk = FlowKey::of_packet(client, vip, cport, vport);
        assert_eq!(
            (fk.client_addr, fk.vip, fk.client_port, fk.vport),
            (client, vip, cport, vport)
        );
        let flow = Flow {
            backend_addr: backend,
            backend_port: bport,
            snat_port: sport,
            ..Flow::default()
        };
        let nk = NatKey::of_flow(&flow, snat);
        // The backend's answer (backend → SNAT address) finds the same entry.
        assert_eq!(nk, NatKey::of_packet(backend, snat, bport, sport));
        let rev = NatRev {
            client_addr: client,
            vip,
            client_port: cport,
            vport,
            ..NatRev::default()
        };
        assert_eq!(rev.flow_key(), fk);
        // A local flow (no SNAT port): the member's reply to the client itself.
        let local = Flow {
            snat_port: 0,
            ..flow
        };
        assert!(local.is_local() && !flow.is_local());
        assert_eq!(
            NatKey::for_flow(&fk, &local, snat),
            NatKey::of_packet(backend, client, bport, cport)
        );
        assert_eq!(NatKey::for_flow(&fk, &flow, snat), nk);
        // Swapped ports or addresses are different flows.
        assert_ne!(FlowKey::of_packet(client, vip, vport, cport), fk);
        assert_ne!(NatKey::of_packet(snat, backend, sport, bport), nk);
    }

    #[test]
    fn service_keys_exact_and_wildcard() {
        let k = ServiceKey::exact(0x0a00_0064, 5433u16.to_be());
        assert_eq!((k.proto, k._pad, k.is_wildcard()), (IPPROTO_TCP, 0, false));
        let w = ServiceKey::wildcard(5433u16.to_be());
        assert_eq!(
            (w.addr, w.port, w.proto, w.is_wildcard()),
            (0, k.port, IPPROTO_TCP, true)
        );
    }

    #[test]
    fn open_conns_is_opened_minus_released_and_never_traps() {
        assert_eq!(open_conns(5, 2), 3);
        assert_eq!(open_conns(2, 2), 0);
        // A release seen before the datapath's decrement: 0, not a huge number.
        assert_eq!(open_conns(1, 2), 0);
        // Both counters wrapped past i64::MAX: the difference is still right.
        assert_eq!(open_conns(i64::MIN.wrapping_add(2), i64::MAX), 3);
        assert_eq!(open_conns(i64::MIN, i64::MIN), 0);
    }
}
