//! Address and port translation with incremental checksum updates (RFC 1624): an address change goes
//! into both the IP and the TCP checksum (pseudo-header), a port change into TCP only.

use network_types::{ip::Ipv4Hdr, tcp::TcpHdr};
use pgsvc_common::Reason;
use pgsvc_ebpf::csum::{replace16, replace32};

use aya_ebpf::programs::XdpContext;

use crate::{
    Verdict,
    parse::{Pkt, ptr_at},
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
    let ip: *mut Ipv4Hdr = ptr_at(ctx, pkt.l3)?;
    let th: *mut TcpHdr = ptr_at(ctx, pkt.l4)?;
    // SAFETY: both headers were bounds-checked by `ptr_at` above.
    unsafe {
        let mut check = u16::from_ne_bytes((*ip).check);
        check = replace32(check, pkt.saddr, to.saddr);
        check = replace32(check, pkt.daddr, to.daddr);
        (*ip).check = check.to_ne_bytes();
        (*ip).src_addr = to.saddr.to_ne_bytes();
        (*ip).dst_addr = to.daddr.to_ne_bytes();

        let mut check = u16::from_ne_bytes((*th).check);
        check = replace32(check, pkt.saddr, to.saddr);
        check = replace32(check, pkt.daddr, to.daddr);
        check = replace16(check, pkt.sport, to.sport);
        check = replace16(check, pkt.dport, to.dport);
        (*th).check = check.to_ne_bytes();
        (*th).source = to.sport.to_ne_bytes();
        (*th).dest = to.dport.to_ne_bytes();
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
