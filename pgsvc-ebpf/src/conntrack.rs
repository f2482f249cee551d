//! Connection tracking: the forward path (client → VIP) and the reverse path (backend → SNAT
//! address). Flows are created on a client SYN, translated on every packet, marked closing on the
//! first FIN or RST either way (counters drop then, exactly once), and removed by the agent's GC or
//! when the datapath resets them.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use pgsvc_common::{
    Action, BE_F_UP, Config, Flow, FlowKey, GENERATIONS, NatKey, NatRev, Reason, SVC_F_ACTIVE,
    SVC_F_SHUTDOWN_SESSIONS, ServiceState, TCP_F_ACK, TCP_F_FIN, TCP_F_RST, TCP_F_SYN, open_conns,
};
use pgsvc_ebpf::hash;

use crate::{
    Verdict, atomic,
    maps::{self, BACKENDS, FLOWS, NAT_REV, SVC_RELEASED, SVC_RUNTIME, SVC_STATE, SVC_TABLE},
    nat::{self, Tuple},
    parse::{Pkt, TH_ACK, TH_FIN, TH_RST, TH_SYN},
    rst, scope, select, snat, stats, verify, xmit,
};

/// `last_seen` is refreshed at most this often (keeps established packets from dirtying the entry).
const TOUCH_NS: u64 = 1_000_000_000;

/// The agent-maintained clock (see `Config::now_ns`).
#[inline(always)]
fn now() -> u64 {
    crate::maps::CONFIG.get(0).map_or(0, |c| c.now_ns)
}

#[inline(always)]
fn tcp_bits(flags: u8) -> u8 {
    let mut b = 0;
    if flags & TH_SYN != 0 {
        b |= TCP_F_SYN;
    }
    if flags & TH_ACK != 0 {
        b |= TCP_F_ACK;
    }
    if flags & TH_FIN != 0 {
        b |= TCP_F_FIN;
    }
    if flags & TH_RST != 0 {
        b |= TCP_F_RST;
    }
    b
}

/// Records activity on one direction of a flow, writing only what changed (an established flow's
/// packets then leave the entry's cache line clean most of the time).
#[inline(always)]
fn touch(last_seen_ns: &mut u64, seen_flags: &mut u8, tcp_flags: u8) {
    let t = now();
    if tcp_flags & (TH_FIN | TH_RST) != 0 {
        // Closing packets carry the exact time: SNAT port reuse waits for silence after them.
        *last_seen_ns = snat::exact_now();
    } else if t.wrapping_sub(*last_seen_ns) > TOUCH_NS {
        *last_seen_ns = t;
    }
    let bits = tcp_bits(tcp_flags);
    if *seen_flags & bits != bits {
        *seen_flags |= bits;
    }
}

/// Client → service packet, on a port where some service listens. The flow table is consulted
/// first: an established flow already knows its service, so the common case costs one hash lookup.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Pkt,
    cfg: &Config,
    port_flags: u8,
) -> Result<Verdict, Reason> {
    let key = FlowKey::of_packet(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport);
    let syn = pkt.flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN;
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: hash map value; fields other than `closing` are written by this flow's packets only.
        let flow = unsafe { &mut *flow };
        if !(syn && flow.closing != 0) {
            let svc = SVC_STATE.get(flow.svc_id).ok_or(Reason::PassNotService)?;
            return established(ctx, pkt, svc, &key, flow);
        }
        // A new connection reusing the 4-tuple of a finished one: forget the old translation.
        remove_flow(&key, flow, cfg);
    }
    let found =
        maps::lookup_service(pkt.daddr, pkt.dport, port_flags).ok_or(Reason::PassNotService)?;
    if found.wildcard {
        scope::require_local(ctx, pkt)?;
    }
    let svc_id = found.svc_id;
    let svc = SVC_STATE.get(svc_id).ok_or(Reason::PassNotService)?;
    if svc.flags & SVC_F_ACTIVE == 0 {
        return Err(Reason::PassNotService);
    }
    // From here on we create state or answer: only for frames whose checksums hold (see verify.rs
    // for why established packets are not verified).
    verify::require_checksums(ctx, pkt)?;
    if !syn {
        let v = rst::reply(ctx, pkt, Reason::RstNoFlow)?;
        if let Some(s) = stats::service(svc_id) {
            s.rst_sent += 1;
        }
        return Ok(v);
    }
    new_flow(ctx, pkt, cfg, svc_id, svc, &key)
}

#[inline(always)]
fn established(
    ctx: &XdpContext,
    pkt: &Pkt,
    svc: &ServiceState,
    key: &FlowKey,
    flow: &mut Flow,
) -> Result<Verdict, Reason> {
    let be = BACKENDS
        .get(flow.backend_id)
        .ok_or(Reason::PassNotService)?;
    let gone = be.epoch != flow.backend_epoch;
    let down = svc.flags & SVC_F_SHUTDOWN_SESSIONS != 0 && be.flags & BE_F_UP == 0;
    if gone || down {
        close_flow(flow);
        let _ = NAT_REV.remove(nat_key_of(flow));
        let _ = FLOWS.remove(key);
        // Counted only once the RST is built (an incoming RST is not answered).
        let v = rst::reply(ctx, pkt, Reason::RstBackendDown)?;
        if let Some(s) = stats::backend(flow.backend_id) {
            s.rst_sent += 1;
        }
        if let Some(s) = stats::service(flow.svc_id) {
            s.rst_sent += 1;
        }
        return Ok(v);
    }
    touch(&mut flow.last_seen_ns, &mut flow.client_flags, pkt.flags);
    if pkt.flags & (TH_FIN | TH_RST) != 0 {
        close_flow(flow);
    }
    let cfg = crate::config()?;
    let hop = match xmit::hop_to_backend(ctx, cfg, be, pkt) {
        Ok(hop) => hop,
        Err(reason) => return Ok(Verdict::of(reason)),
    };
    let to = Tuple {
        saddr: cfg.snat_addr,
        sport: flow.snat_port,
        daddr: flow.backend_addr,
        dport: flow.backend_port,
    };
    stats::count_in(flow.svc_id, flow.backend_id, pkt.payload_len);
    nat::rewrite_and_send(ctx, pkt, &to, &hop, Reason::FwdEstablished)
}

#[inline(always)]
fn new_flow(
    ctx: &XdpContext,
    pkt: &Pkt,
    cfg: &Config,
    svc_id: u32,
    svc: &ServiceState,
    key: &FlowKey,
) -> Result<Verdict, Reason> {
    let result = admit(ctx, pkt, cfg, svc_id, svc, key);
    if let Err(reason) = result
        && matches!(reason.action(), Action::Drop)
    {
        // The client retransmits its SYN: the drop acts as HAProxy's queue.
        if let Some(s) = stats::service(svc_id) {
            s.syn_dropped += 1;
        }
    }
    result
}

#[inline(always)]
fn admit(
    ctx: &XdpContext,
    pkt: &Pkt,
    cfg: &Config,
    svc_id: u32,
    svc: &ServiceState,
    key: &FlowKey,
) -> Result<Verdict, Reason> {
    let rt = SVC_RUNTIME
        .get_ptr_mut(svc_id)
        .ok_or(Reason::DropNoBackend)?;
    // SAFETY: array map value; `conns` is only modified atomically.
    let opened = unsafe { atomic::load_i64(&raw const (*rt).conns) };
    let open = open_conns(opened, SVC_RELEASED.get(svc_id).copied().unwrap_or(0));
    if svc.maxconn != 0 && open >= u64::from(svc.maxconn) {
        return Err(Reason::DropServiceMaxconn);
    }
    let set_idx = svc_id * GENERATIONS + (svc.generation & 1);
    let set = SVC_TABLE.get(set_idx).ok_or(Reason::DropNoBackend)?;
    let h = hash::flow4(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport);
    let backend_id = select::pick(svc.algorithm, set, rt, h)?;
    let be = BACKENDS.get(backend_id).ok_or(Reason::DropNoBackend)?;
    let hop = xmit::hop_to_backend(ctx, cfg, be, pkt)?;
    let (client_mac, lb_mac) = xmit::frame_macs(ctx)?;
    let t = now();
    let rev = NatRev {
        client_addr: pkt.saddr,
        vip: pkt.daddr,
        client_port: pkt.sport,
        vport: pkt.dport,
        client_ifindex: ctx.ingress_ifindex() as u32,
        client_mac,
        lb_mac,
        backend_id,
        svc_id,
        backend_flags: 0,
        _pad: [0; 3],
        last_seen_ns: t,
    };
    let snat_port = match snat::alloc_port(cfg, be, &rev, t) {
        snat::Alloc::Port(port) => port,
        snat::Alloc::Retry => return Err(Reason::DropSnatExhausted),
        snat::Alloc::Refuse => return snat::refuse(ctx, pkt, svc_id),
    };
    let flow = Flow {
        backend_id,
        backend_epoch: be.epoch,
        svc_id,
        backend_addr: be.addr,
        backend_port: be.port,
        snat_port,
        client_flags: TCP_F_SYN,
        _pad0: [0; 3],
        closing: 0,
        last_seen_ns: t,
    };
    if FLOWS.insert(key, flow, u64::from(BPF_NOEXIST)).is_err() {
        // Another CPU created this flow from a retransmitted SYN first: follow its choice.
        let _ = NAT_REV.remove(nat_key_of(&flow));
        return match FLOWS.get_ptr_mut(key) {
            // SAFETY: as in `forward`.
            Some(f) => established(ctx, pkt, svc, key, unsafe { &mut *f }),
            None => Err(Reason::DropFlowInsert),
        };
    }
    // SAFETY: as above, atomic access only.
    unsafe { atomic::add_i64(&raw mut (*rt).conns, 1) };
    select::add_backend_conns(backend_id, 1);
    if let Some(s) = stats::service(svc_id) {
        s.new_flows += 1;
    }
    if let Some(s) = stats::backend(backend_id) {
        s.new_flows += 1;
    }

    let to = Tuple {
        saddr: cfg.snat_addr,
        sport: snat_port,
        daddr: be.addr,
        dport: be.port,
    };
    stats::count_in(svc_id, backend_id, pkt.payload_len);
    nat::rewrite_and_send(ctx, pkt, &to, &hop, Reason::FwdNew)
}

#[inline(always)]
fn nat_key_of(flow: &Flow) -> NatKey {
    let snat_addr = crate::maps::CONFIG.get(0).map(|c| c.snat_addr).unwrap_or(0);
    NatKey::of_flow(flow, snat_addr)
}

/// Marks a flow closing; the first caller drops the service's and the backend's counters.
#[inline(always)]
fn close_flow(flow: &mut Flow) {
    // SAFETY: `closing` is only accessed atomically once the flow is in the map.
    let was = unsafe { atomic::swap_u64(&raw mut flow.closing, 1) };
    if was != 0 {
        return;
    }
    if let Some(rt) = SVC_RUNTIME.get_ptr_mut(flow.svc_id) {
        // SAFETY: atomic access to a shared array value.
        unsafe { atomic::add_i64(&raw mut (*rt).conns, -1) };
    }
    // A reassigned slot's counter belongs to its new server already (the agent zeroed it).
    if BACKENDS.get(flow.backend_id).map(|b| b.epoch) == Some(flow.backend_epoch) {
        select::add_backend_conns(flow.backend_id, -1);
    }
    if let Some(s) = stats::service(flow.svc_id) {
        s.closed_flows += 1;
    }
    if let Some(s) = stats::backend(flow.backend_id) {
        s.closed_flows += 1;
    }
}

#[inline(always)]
fn remove_flow(key: &FlowKey, flow: &mut Flow, _cfg: &Config) {
    close_flow(flow);
    let _ = NAT_REV.remove(nat_key_of(flow));
    let _ = FLOWS.remove(key);
}

/// Backend → SNAT address packet.
#[inline(always)]
pub fn reverse(ctx: &XdpContext, pkt: &Pkt) -> Result<Verdict, Reason> {
    let key = NatKey::of_packet(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport);
    let rev = NAT_REV.get_ptr_mut(key).ok_or(Reason::PassNoNat)?;
    // SAFETY: hash map value, written by this flow's reverse packets only.
    let rev = unsafe { &mut *rev };
    touch(&mut rev.last_seen_ns, &mut rev.backend_flags, pkt.flags);
    if pkt.flags & (TH_FIN | TH_RST) != 0
        && let Some(flow) = FLOWS.get_ptr_mut(rev.flow_key())
    {
        // SAFETY: as in `forward`.
        close_flow(unsafe { &mut *flow });
    }
    let to = Tuple {
        saddr: rev.vip,
        sport: rev.vport,
        daddr: rev.client_addr,
        dport: rev.client_port,
    };
    let hop = xmit::Hop {
        dst: rev.client_mac,
        src: rev.lb_mac,
        ifindex: rev.client_ifindex,
    };
    stats::count_out(rev.svc_id, rev.backend_id, pkt.payload_len);
    nat::rewrite_and_send(ctx, pkt, &to, &hop, Reason::Reverse)
}
