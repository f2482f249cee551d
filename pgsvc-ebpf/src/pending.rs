//! Flows in `FLOWS_PENDING`, which never count as sessions: half-open from the client's SYN until
//! the client acknowledges the backend's SYN-ACK (then promoted to `FLOWS` and counted), and closing
//! after the first FIN or RST (moved here from `FLOWS`, counters already dropped).
//!
//! The table is an LRU: a flood of SYNs from sources that never complete a handshake evicts only
//! other pending flows, never an established one, and costs no session of any server.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use pgsvc_common::{
    BE_F_UP, Config, Flow, FlowKey, Reason, SVC_F_SHUTDOWN_SESSIONS, ServiceState, TCP_F_ACK,
    TCP_F_FIN, TCP_F_SYN,
};

use crate::{
    Verdict,
    flow::{self, rev_key},
    maps::{BACKENDS, FLOWS, FLOWS_PENDING, NAT_REV},
    parse::{Pkt, TH_ACK, TH_FIN, TH_RST, TH_SYN},
    rst, snat,
};

const EEXIST: i64 = 17;

/// Forgets a pending flow and its reverse entry.
#[inline(always)]
pub fn remove(key: &FlowKey, flow: &Flow) {
    let _ = NAT_REV.remove(rev_key(key, flow));
    let _ = FLOWS_PENDING.remove(key);
}

/// Moves an established flow to the pending table once its counters were dropped (first FIN or
/// RST): a closing flow is no session and may be evicted under pressure.
#[inline(always)]
pub fn demote(key: &FlowKey, flow: &Flow) {
    let mut closing = *flow;
    closing.closing = 1;
    let _ = FLOWS_PENDING.insert(key, closing, 0);
    let _ = FLOWS.remove(key);
}

/// Whether the backend answered the SYN (its SYN-ACK went through the XDP reverse path, or for a
/// local member through the TC egress program).
#[inline(always)]
fn answered(key: &FlowKey, flow: &Flow) -> bool {
    // SAFETY: the value is copied out before the next helper call.
    unsafe { NAT_REV.get(rev_key(key, flow)) }
        .is_some_and(|r| r.backend_flags & (TCP_F_SYN | TCP_F_ACK) == TCP_F_SYN | TCP_F_ACK)
}

/// A pure ACK from a client that sent its FIN, once the backend sent its own: the end of a
/// graceful close.
#[inline(always)]
fn last_ack(pkt: &Pkt, key: &FlowKey, flow: &Flow) -> bool {
    pkt.flags & (TH_SYN | TH_FIN | TH_ACK) == TH_ACK
        && flow.client_flags & TCP_F_FIN != 0
        // SAFETY: the value is copied out before the next helper call.
        && unsafe { NAT_REV.get(rev_key(key, flow)) }.is_some_and(|r| r.backend_flags & TCP_F_FIN != 0)
}

/// Client → service packet of a pending flow.
#[inline(always)]
pub fn forward(
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
        let f = *flow;
        remove(key, flow);
        let v = rst::reply(ctx, pkt, Reason::RstBackendDown)?;
        flow::count_rst(&f);
        return Ok(v);
    }
    flow::touch(&mut flow.last_seen_ns, &mut flow.client_flags, pkt.flags);
    flow::track_seq(&mut flow.client_next_seq, pkt);
    let mut reason = Reason::FwdEstablished;
    if pkt.flags & TH_RST != 0 {
        // Reset: nothing of the connection is left to translate. A removed entry's memory may be
        // reused at once: send from a copy.
        let f = *flow;
        remove(key, flow);
        return flow::send_to_backend(ctx, pkt, cfg, be, &f, reason);
    }
    if flow.closing != 0 && last_ack(pkt, key, flow) {
        // The client's ACK of the backend's FIN after its own: the flow is over. Its SNAT port
        // stays held by the reverse entry, stamped now, until it has been quiet long enough for
        // the allocator to take it over (snat.rs) or the agent's GC collects it; a local flow
        // holds no port and goes entirely.
        let f = *flow;
        if f.is_local() {
            remove(key, flow);
        } else {
            if let Some(r) = NAT_REV.get_ptr_mut(rev_key(key, &f)) {
                // SAFETY: map value; a plain store of the time, as `touch` does.
                unsafe { (*r).last_seen_ns = snat::exact_now() };
            }
            let _ = FLOWS_PENDING.remove(key);
        }
        return flow::send_to_backend(ctx, pkt, cfg, be, &f, reason);
    }
    if flow.closing == 0 {
        if pkt.flags & TH_FIN != 0 {
            // Given up before it was established: nothing to uncount.
            flow.closing = 1;
        } else if pkt.flags & TH_SYN != 0 {
            // A retransmitted SYN keeps its backend and SNAT port.
            reason = Reason::FwdNew;
        } else if pkt.flags & TH_ACK != 0 && answered(key, flow) {
            return promote(ctx, pkt, cfg, key, flow, be);
        }
    }
    flow::send_to_backend(ctx, pkt, cfg, be, flow, reason)
}

/// The client completed the handshake: the flow moves to `FLOWS` and counts as a session. When
/// `FLOWS` is full the connection is refused with a RST (counted under `RstFlowTableFull`): no
/// established flow is ever evicted for a new one.
#[inline(always)]
fn promote(
    ctx: &XdpContext,
    pkt: &Pkt,
    cfg: &Config,
    key: &FlowKey,
    flow: &Flow,
    be: &pgsvc_common::Backend,
) -> Result<Verdict, Reason> {
    let est = *flow;
    match FLOWS.insert(key, est, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            flow::count_open(&est);
            let _ = FLOWS_PENDING.remove(key);
            flow::send_to_backend(ctx, pkt, cfg, be, &est, Reason::FwdEstablished)
        }
        // Another CPU promoted it first (the ACK and the first data segment raced).
        Err(e) if i64::from(e) == -EEXIST => {
            flow::send_to_backend(ctx, pkt, cfg, be, &est, Reason::FwdEstablished)
        }
        Err(_) => {
            remove(key, &est);
            let v = rst::reply(ctx, pkt, Reason::RstFlowTableFull)?;
            flow::count_rst(&est);
            Ok(v)
        }
    }
}
