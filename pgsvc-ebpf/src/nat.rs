//! Address and port translation with incremental checksum updates (RFC 1624): an address change goes
//! into both the IP and the TCP checksum (pseudo-header), a port change into TCP only.

use pgsvc_common::Reason;
use pgsvc_ebpf::csum::{apply, diff16, diff32};

use aya_ebpf::programs::XdpContext;

use crate::{
    Verdict,
    parse::{Ip4, Pkt, Tcp4, ptr_at},
    xmit::{self, Hop},
};

/// The new 4-tuple of a packet (network order).
pub struct Tuple {
    pub saddr: u32,
    pub sport: u16,
    pub daddr: u32,
    pub dport: u16,
}

#[inline(always)]
pub fn xlate_v4(ctx: &XdpContext, pkt: &Pkt, to: &Tuple) -> Result<(), Reason> {
    let ip: *mut Ip4 = ptr_at(ctx, pkt.l3)?;
    let th: *mut Tcp4 = ptr_at(ctx, pkt.l4)?;
    // The addresses are in the IPv4 header and in TCP's pseudo-header: one difference for both.
    let addrs = diff32(diff32(0, pkt.saddr, to.saddr), pkt.daddr, to.daddr);
    let ports = diff16(diff16(addrs, pkt.sport, to.sport), pkt.dport, to.dport);
    // SAFETY: both headers were bounds-checked by `ptr_at` above.
    unsafe {
        (*ip).check = apply((*ip).check, addrs);
        (*ip).saddr = to.saddr;
        (*ip).daddr = to.daddr;
        (*th).check = apply((*th).check, ports);
        (*th).sport = to.sport;
        (*th).dport = to.dport;
    }
    Ok(())
}

/// Rewrites the 4-tuple and the MACs, then hands the frame to `hop`'s interface.
#[inline(always)]
pub fn rewrite_and_send(
    ctx: &XdpContext,
    pkt: &Pkt,
    to: &Tuple,
    hop: &Hop,
    reason: Reason,
) -> Result<Verdict, Reason> {
    xlate_v4(ctx, pkt, to)?;
    xmit::set_macs(ctx, &hop.dst, &hop.src)?;
    Ok(Verdict {
        action: xmit::send(ctx, hop.ifindex),
        reason,
    })
}
