//! What both flow tables share: the clock, activity stamps, the session counters and the forward
//! translation of a flow's packets. `FLOWS` holds established flows (the ones counted as sessions),
//! `FLOWS_PENDING` the half-open and closing ones (see `pgsvc_common::Flow`).

use aya_ebpf::programs::XdpContext;
use pgsvc_common::{
    Backend, Config, Flow, FlowKey, NatKey, Reason, TCP_F_ACK, TCP_F_FIN, TCP_F_RST, TCP_F_SYN,
};

use crate::{
    Verdict, atomic, local,
    maps::{BACKENDS, CONFIG, SVC_RUNTIME},
    nat::{self, Tuple},
    parse::{Pkt, TH_ACK, TH_FIN, TH_RST, TH_SYN},
    select, snat, stats, xmit,
};

/// `last_seen` is refreshed at most this often (keeps established packets from dirtying the entry).
const TOUCH_NS: u64 = 1_000_000_000;

/// The agent-maintained clock (see `Config::now_ns`).
#[inline(always)]
pub fn now() -> u64 {
    CONFIG.get(0).map_or(0, |c| c.now_ns)
}

/// The `TCP_F_*` bits of a TCP flags byte, without branches.
#[inline(always)]
fn tcp_bits(flags: u8) -> u8 {
    const _: () = assert!(
        TH_SYN >> 1 == TCP_F_SYN
            && TH_ACK >> 3 == TCP_F_ACK
            && TH_FIN << 2 == TCP_F_FIN
            && TH_RST << 1 == TCP_F_RST
    );
    ((flags & TH_SYN) >> 1)
        | ((flags & TH_ACK) >> 3)
        | ((flags & TH_FIN) << 2)
        | ((flags & TH_RST) << 1)
}

/// Records activity on one direction of a flow, writing only what changed (an established flow's
/// packets then leave the entry's cache line clean most of the time).
#[inline(always)]
pub fn touch(last_seen_ns: &mut u64, seen_flags: &mut u8, tcp_flags: u8) {
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

/// Records the sequence number a direction of a flow sends next (`seq` + payload + SYN + FIN of
/// its packet) when it moved forward (wrap-aware), or on a SYN (the first value): retransmissions
/// and keep-alive probes (one byte before it) never move it back, and a pure ACK leaves the entry
/// untouched. The agent forges its active resets from it (`Flow::client_next_seq`).
#[inline(always)]
pub fn track_seq(next: &mut u32, pkt: &Pkt) {
    let mut end = pkt.seq.wrapping_add(pkt.payload_len);
    if pkt.flags & TH_SYN != 0 {
        end = end.wrapping_add(1);
    }
    if pkt.flags & TH_FIN != 0 {
        end = end.wrapping_add(1);
    }
    if pkt.flags & TH_SYN != 0 || (end.wrapping_sub(*next) as i32) > 0 {
        *next = end;
    }
}

/// The reverse entry of the flow `key` → `flow`: keyed by the backend's reply to the SNAT address
/// for a full-NAT flow, by the local member's reply to the client for a local one.
#[inline(always)]
pub fn rev_key(key: &FlowKey, flow: &Flow) -> NatKey {
    let snat_addr = CONFIG.get(0).map(|c| c.snat_addr).unwrap_or(0);
    NatKey::for_flow(key, flow, snat_addr)
}

/// Counts a flow that became established as a session of its service and backend.
#[inline(always)]
pub fn count_open(flow: &Flow) {
    if let Some(rt) = SVC_RUNTIME.get_ptr_mut(flow.svc_id) {
        // SAFETY: atomic access to a shared array value.
        unsafe { atomic::add_i64(&raw mut (*rt).conns, 1) };
    }
    select::add_backend_conns(flow.backend_id, 1);
    if let Some(s) = stats::service(flow.svc_id) {
        s.new_flows += 1;
    }
    if let Some(s) = stats::backend(flow.backend_id) {
        s.new_flows += 1;
    }
}

/// Marks an established flow closing; the first caller drops the service's and the backend's
/// counters and gets `true`.
#[inline(always)]
pub fn release(flow: &mut Flow) -> bool {
    // SAFETY: `closing` is only accessed atomically once the flow is in the map.
    let was = unsafe { atomic::swap_u64(&raw mut flow.closing, 1) };
    if was != 0 {
        return false;
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
    true
}

/// Counts a RST sent to a flow's client.
#[inline(always)]
pub fn count_rst(flow: &Flow) {
    if let Some(s) = stats::backend(flow.backend_id) {
        s.rst_sent += 1;
    }
    if let Some(s) = stats::service(flow.svc_id) {
        s.rst_sent += 1;
    }
}

/// Translates a client packet of `flow` toward its backend and sends it; a local flow's packet is
/// translated in place and passed to the node's stack (local.rs).
#[inline(always)]
pub fn send_to_backend(
    ctx: &XdpContext,
    pkt: &Pkt,
    cfg: &Config,
    be: &Backend,
    flow: &Flow,
    reason: Reason,
) -> Result<Verdict, Reason> {
    if flow.is_local() {
        let reason = if matches!(reason, Reason::FwdNew) {
            Reason::PassLocalNew
        } else {
            Reason::PassLocalEstablished
        };
        stats::count_in(flow.svc_id, flow.backend_id, pkt.payload_len);
        return local::dnat_and_pass(ctx, pkt, flow.backend_addr, flow.backend_port, reason);
    }
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
    nat::rewrite_and_send(ctx, pkt, &to, &hop, reason)
}
