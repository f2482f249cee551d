//! The node-resident path: a flow whose selected server is a member on this node itself.
//!
//! Such a flow cannot be full-NATed to the node's own address (the kernel drops a packet from
//! outside whose source is one of its own addresses), so it keeps the client's source address: the
//! destination is translated in place to the member's address and port (5433 → 6432) and the frame
//! is passed to the node's stack, which delivers it to the member's listener like any direct
//! client's — conntrack, rp_filter and the firewall see the real client. The flow is recorded as
//! usual (`FLOWS`, with no SNAT port) plus a reverse entry keyed by the member's reply
//! (member → client), which the TC egress program (`tc.rs`) uses to restore the source address and
//! port the client dialled.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use pgsvc_common::Reason;

use crate::{
    Verdict,
    maps::LOCAL_ADDRS,
    nat::{self, Tuple},
    parse::Pkt,
};

/// `Err(PassNotLocal)` unless the packet's destination is one of the node's own addresses: only a
/// connection addressed to this node may be handed to its own member (a frame flooded to us for a
/// VIP that another node holds must not reach our pgbouncer).
#[inline(always)]
pub fn require_local_daddr(pkt: &Pkt) -> Result<(), Reason> {
    // SAFETY: the value is a plain u8, not kept.
    if unsafe { LOCAL_ADDRS.get(pkt.daddr) }.is_none() {
        return Err(Reason::PassNotLocal);
    }
    Ok(())
}

/// Translates the destination to the local member (`addr`, `port`, network order), keeps the
/// source, and passes the frame to the stack.
#[inline(always)]
pub fn dnat_and_pass(
    ctx: &XdpContext,
    pkt: &Pkt,
    addr: u32,
    port: u16,
    reason: Reason,
) -> Result<Verdict, Reason> {
    let to = Tuple {
        saddr: pkt.saddr,
        sport: pkt.sport,
        daddr: addr,
        dport: port,
    };
    nat::xlate_v4(ctx, pkt, &to)?;
    Ok(Verdict {
        action: xdp_action::XDP_PASS,
        reason,
    })
}
