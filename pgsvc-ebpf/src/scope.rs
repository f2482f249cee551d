//! What a service on `ip: "*"` accepts: only frames addressed to this node — the attached
//! interface's MAC (or a configured VIP MAC) and a destination that is one of the node's local
//! IPv4 addresses, as HAProxy's `bind *` only accepts local addresses. Both are written by the
//! agent (`LOCAL_SCOPE`, `LOCAL_ADDRS`) and kept current while it runs. Anything else (a
//! broadcast or a frame flooded by a bridge to a MAC that is not ours, a destination that is not
//! ours) passes to the kernel untouched.
//!
//! Checked only where a flow could be created or a RST sent: an established flow was admitted by
//! this check when it began.

use aya_ebpf::programs::XdpContext;
use pgsvc_common::Reason;

use crate::{
    maps::{LOCAL_ADDRS, LOCAL_SCOPE},
    parse::Pkt,
    xmit::{self, Mac},
};

#[inline(always)]
fn mac_eq(a: &Mac, b: &Mac) -> bool {
    ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2])) == 0
}

/// `Err(PassNotLocal)` unless the frame is addressed to this node (see the module comment). Nothing
/// is accepted before the agent wrote the interface's MAC.
#[inline(always)]
pub fn require_local(ctx: &XdpContext, pkt: &Pkt) -> Result<(), Reason> {
    let scope = LOCAL_SCOPE.get(0).ok_or(Reason::PassNotLocal)?;
    let (_, dst) = xmit::frame_macs(ctx)?;
    let (if_mac, vip_mac) = (xmit::mac(&scope.if_mac), xmit::mac(&scope.vip_mac));
    let ours = (!xmit::is_zero(&if_mac) && mac_eq(&dst, &if_mac))
        || (!xmit::is_zero(&vip_mac) && mac_eq(&dst, &vip_mac));
    if !ours {
        return Err(Reason::PassNotLocal);
    }
    // SAFETY: the value is a plain u8, not kept.
    if unsafe { LOCAL_ADDRS.get(pkt.daddr) }.is_none() {
        return Err(Reason::PassNotLocal);
    }
    Ok(())
}
