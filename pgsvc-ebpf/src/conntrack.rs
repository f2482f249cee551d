//! Connection tracking: the forward path (client → VIP) and the reverse path (backend → SNAT
//! address). A client SYN creates a half-open flow in `FLOWS_PENDING`; the client's ACK of the
//! backend's SYN-ACK promotes it to `FLOWS`, where it counts as a session (see pending.rs). The first
//! FIN or RST either way drops the counters (exactly once) and moves the flow back to
//! `FLOWS_PENDING` as closing; the agent's GC or the datapath's resets remove it.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use pgsvc_common::{
    Action, Algorithm, BE_F_LOCAL, BE_F_UP, Config, Flow, FlowKey, GENERATIONS, NatKey, NatRev,
    Reason, SVC_F_ACTIVE, SVC_F_SHUTDOWN_SESSIONS, ServiceState, TCP_F_SYN, open_conns,
};
use pgsvc_ebpf::hash;

use crate::{
    Verdict, atomic,
    flow::{self, now, rev_key},
    local,
    maps::{
        self, BACKENDS, FLOWS, FLOWS_PENDING, NAT_REV, SVC_RELEASED, SVC_RUNTIME, SVC_STATE,
        SVC_TABLE,
    },
    nat::{self, Tuple},
    parse::{Pkt, TH_ACK, TH_FIN, TH_RST, TH_SYN},
    pending, rst, scope, select, snat, stats, verify, xmit,
};

/// Client → service packet, on a port where some service listens. The table of established flows
/// is consulted first: an established flow already knows its service, so the common case costs one
/// hash lookup.
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
            return established(ctx, pkt, cfg, svc, &key, flow);
        }
        // A new connection reusing the 4-tuple of a finished one: forget the old translation.
        remove_flow(&key, flow);
    } else if let Some(flow) = FLOWS_PENDING.get_ptr_mut(key) {
        // SAFETY: as above.
        let flow = unsafe { &mut *flow };
        if !(syn && flow.closing != 0) {
            let svc = SVC_STATE.get(flow.svc_id).ok_or(Reason::PassNotService)?;
            return pending::forward(ctx, pkt, cfg, svc, &key, flow);
        }
        pending::remove(&key, flow);
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
    // One place answers with a RST (each inlined copy of `rst::reply` costs stack): a non-SYN
    // without a flow, a SYN while the service has no usable server, or a SYN that found every SNAT
    // port live (snat.rs).
    let reason = if syn {
        match new_flow(ctx, pkt, cfg, svc_id, svc, &key) {
            Err(r @ (Reason::RstNoBackend | Reason::RstSnatExhausted)) => r,
            other => return other,
        }
    } else {
        Reason::RstNoFlow
    };
    let v = rst::reply(ctx, pkt, reason)?;
    if let Some(s) = stats::service(svc_id) {
        s.rst_sent += 1;
    }
    Ok(v)
}

#[inline(always)]
fn established(
    ctx: &XdpContext,
    pkt: &Pkt,
    cfg: &Config,
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
        // A removed entry's memory may be reused at once by another CPU: work on a copy.
        let f = *flow;
        remove_flow(key, flow);
        // Counted only once the RST is built (an incoming RST is not answered).
        let v = rst::reply(ctx, pkt, Reason::RstBackendDown)?;
        flow::count_rst(&f);
        return Ok(v);
    }
    flow::touch(&mut flow.last_seen_ns, &mut flow.client_flags, pkt.flags);
    flow::track_seq(&mut flow.client_next_seq, pkt);
    if pkt.flags & (TH_FIN | TH_RST) != 0 {
        // Translated before the flow is removed or moved (no copy of it on the stack).
        let v = flow::send_to_backend(ctx, pkt, cfg, be, flow, Reason::FwdEstablished);
        if pkt.flags & TH_RST != 0 {
            remove_flow(key, flow);
        } else {
            close_flow(key, flow);
        }
        return v;
    }
    flow::send_to_backend(ctx, pkt, cfg, be, flow, Reason::FwdEstablished)
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

/// A client SYN without a flow: picks a backend and an SNAT port and creates a half-open flow in
/// `FLOWS_PENDING`. Nothing is counted until the client completes the handshake.
///
/// A flow to a member on this node (`BE_F_LOCAL`) gets no SNAT port and a reverse entry keyed by
/// the member's reply (the TC egress program translates the reply and marks the member's SYN-ACK
/// on it); its packets are translated in place and passed to the stack (see local.rs). It too
/// counts as a session only once the client completes the handshake.
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
        .ok_or(Reason::RstNoBackend)?;
    if svc.maxconn != 0 {
        // SAFETY: array map value; `conns` is only modified atomically.
        let opened = unsafe { atomic::load_i64(&raw const (*rt).conns) };
        let open = open_conns(opened, SVC_RELEASED.get(svc_id).copied().unwrap_or(0));
        if open >= u64::from(svc.maxconn) {
            return Err(Reason::DropServiceMaxconn);
        }
    }
    let set_idx = svc_id * GENERATIONS + (svc.generation & 1);
    let set = SVC_TABLE.get(set_idx).ok_or(Reason::RstNoBackend)?;
    // Only Maglev hashes the flow.
    let h = if svc.algorithm == Algorithm::Maglev as u32 {
        hash::flow4(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport)
    } else {
        0
    };
    let backend_id = select::pick(svc.algorithm, set, rt, h)?;
    let be = BACKENDS.get(backend_id).ok_or(Reason::RstNoBackend)?;
    let local = be.flags & BE_F_LOCAL != 0;
    let hop = if local {
        local::require_local_daddr(pkt)?;
        None
    } else {
        Some(xmit::hop_to_backend(ctx, cfg, be, pkt)?)
    };
    let (client_mac, lb_mac) = xmit::frame_macs(ctx)?;
    let t = now();
    let rev = NatRev {
        client_addr: pkt.saddr,
        vip: pkt.daddr,
        client_port: pkt.sport,
        vport: pkt.dport,
        client_ifindex: ctx.ingress_ifindex() as u32,
        client_mac: xmit::mac_bytes(client_mac),
        lb_mac: xmit::mac_bytes(lb_mac),
        backend_id,
        svc_id,
        backend_flags: 0,
        _pad: [0; 3],
        last_seen_ns: t,
        backend_next_seq: 0,
        _pad1: 0,
    };
    // A local flow holds no SNAT port: it stays out of the allocator.
    let snat_port = if local {
        0
    } else {
        match snat::alloc_port(cfg, be, &rev) {
            snat::Alloc::Port(port) => port,
            snat::Alloc::Retry => return Err(Reason::DropSnatExhausted),
            snat::Alloc::Refuse => return Err(Reason::RstSnatExhausted),
        }
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
        client_next_seq: pkt.seq.wrapping_add(1),
        _pad1: 0,
    };
    if FLOWS_PENDING
        .insert(key, flow, u64::from(BPF_NOEXIST))
        .is_err()
    {
        // Another CPU created this flow from a retransmitted SYN first: follow its choice (a SYN
        // of a pending flow is only forwarded; the reverse entry is the other CPU's).
        if !local {
            let _ = NAT_REV.remove(rev_key(key, &flow));
        }
        // SAFETY: the value is copied out before the next helper call.
        return match unsafe { FLOWS_PENDING.get(key) } {
            Some(f) => {
                let f = *f;
                flow::send_to_backend(ctx, pkt, cfg, be, &f, Reason::FwdNew)
            }
            None => Err(Reason::DropFlowInsert),
        };
    }
    let Some(hop) = hop else {
        // Keyed by the member's reply; a leftover entry of an earlier flow with the same 4-tuple
        // is simply replaced (the forward insert above decided that this flow is the new one).
        if NAT_REV.insert(rev_key(key, &flow), rev, 0).is_err() {
            let _ = FLOWS_PENDING.remove(key);
            return Err(Reason::DropFlowInsert);
        }
        stats::count_in(svc_id, backend_id, pkt.payload_len);
        return local::dnat_and_pass(ctx, pkt, be.addr, be.port, Reason::PassLocalNew);
    };
    stats::count_in(svc_id, backend_id, pkt.payload_len);
    let to = Tuple {
        saddr: cfg.snat_addr,
        sport: snat_port,
        daddr: be.addr,
        dport: be.port,
    };
    nat::rewrite_and_send(ctx, pkt, &to, &hop, Reason::FwdNew)
}

/// First FIN or RST of an established flow: the first caller drops its counters and moves it to
/// the pending table, where it may be evicted under pressure.
#[inline(always)]
fn close_flow(key: &FlowKey, flow: &mut Flow) {
    if flow::release(flow) {
        pending::demote(key, flow);
    }
}

/// Removes an established flow and its reverse entry, dropping its counters if they still count
/// it. After a RST nothing of the connection is left to translate: keeping it would only hold a
/// reverse entry and an SNAT port.
#[inline(always)]
fn remove_flow(key: &FlowKey, flow: &mut Flow) {
    flow::release(flow);
    let _ = NAT_REV.remove(rev_key(key, flow));
    let _ = FLOWS.remove(key);
}

/// Records a packet of the backend's direction on its reverse entry (the XDP reverse path and the
/// TC egress program for local members): its SYN-ACK there is what lets the client's ACK promote
/// the flow.
#[inline(always)]
pub fn touch_rev(rev: &mut NatRev, tcp_flags: u8) {
    flow::touch(&mut rev.last_seen_ns, &mut rev.backend_flags, tcp_flags);
}

/// A FIN or RST from the backend of the flow `fk` (full-NAT or local): a RST removes the flow and
/// its reverse entry at once, a FIN uncounts an established flow once and demotes it to
/// `FLOWS_PENDING` as closing, or marks a pending flow closing.
#[inline(always)]
pub fn backend_ends(fk: &FlowKey, reset: bool) {
    if let Some(f) = FLOWS.get_ptr_mut(fk) {
        // SAFETY: as in `forward`.
        let f = unsafe { &mut *f };
        if reset {
            remove_flow(fk, f);
        } else {
            close_flow(fk, f);
        }
    } else if let Some(f) = FLOWS_PENDING.get_ptr_mut(fk) {
        // SAFETY: as in `forward`; a pending flow counts nothing, a plain store will do.
        let f = unsafe { &mut *f };
        if reset {
            pending::remove(fk, f);
        } else {
            f.closing = 1;
        }
    }
}

/// Backend → SNAT address packet.
#[inline(always)]
pub fn reverse(ctx: &XdpContext, pkt: &Pkt) -> Result<Verdict, Reason> {
    let key = NatKey::of_packet(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport);
    let rev = NAT_REV.get_ptr_mut(key).ok_or(Reason::PassNoNat)?;
    // SAFETY: hash map value, written by this flow's reverse packets only.
    let rev = unsafe { &mut *rev };
    touch_rev(rev, pkt.flags);
    flow::track_seq(&mut rev.backend_next_seq, pkt);
    if pkt.flags & (TH_FIN | TH_RST) != 0 {
        // The entries may be removed below: work on a copy.
        let r = *rev;
        backend_ends(&r.flow_key(), pkt.flags & TH_RST != 0);
        return to_client(ctx, pkt, &r);
    }
    to_client(ctx, pkt, rev)
}

#[inline(always)]
fn to_client(ctx: &XdpContext, pkt: &Pkt, rev: &NatRev) -> Result<Verdict, Reason> {
    let to = Tuple {
        saddr: rev.vip,
        sport: rev.vport,
        daddr: rev.client_addr,
        dport: rev.client_port,
    };
    let hop = xmit::Hop {
        dst: xmit::mac(&rev.client_mac),
        src: xmit::mac(&rev.lb_mac),
        ifindex: rev.client_ifindex,
    };
    stats::count_out(rev.svc_id, rev.backend_id, pkt.payload_len);
    nat::rewrite_and_send(ctx, pkt, &to, &hop, Reason::Reverse)
}
