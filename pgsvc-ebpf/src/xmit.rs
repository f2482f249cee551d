//! Choosing the next hop and sending the rewritten frame: `XDP_TX` out of the interface it came in
//! on, `bpf_redirect` to another one.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use network_types::eth::EthHdr;
use pgsvc_common::{Backend, CFG_F_FIB_FALLBACK, Config, Reason};

use crate::parse::{Pkt, ptr_at};

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

/// Where a frame goes next.
pub struct Hop {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// 0 = the ingress interface.
    pub ifindex: u32,
}

#[inline(always)]
fn is_zero(mac: &[u8; 6]) -> bool {
    (mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]) == 0
}

/// The MACs the client's frame carried: (source = previous hop, destination = us).
#[inline(always)]
pub fn frame_macs(ctx: &XdpContext) -> Result<([u8; 6], [u8; 6]), Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { Ok(((*eth).src_addr, (*eth).dst_addr)) }
}

/// Next hop toward a backend: the agent-resolved MAC, else the kernel's FIB, else none (the caller drops it).
#[inline(always)]
pub fn hop_to_backend(
    ctx: &XdpContext,
    cfg: &Config,
    be: &Backend,
    pkt: &Pkt,
) -> Result<Hop, Reason> {
    let (_, our_mac) = frame_macs(ctx)?;
    if !is_zero(&be.next_hop_mac) {
        let src = if is_zero(&be.src_mac) {
            our_mac
        } else {
            be.src_mac
        };
        return Ok(Hop {
            dst: be.next_hop_mac,
            src,
            ifindex: be.ifindex,
        });
    }
    if cfg.flags & CFG_F_FIB_FALLBACK != 0 {
        return fib_hop(ctx, cfg.snat_addr, be.addr, pkt);
    }
    Err(Reason::DropNoNextHop)
}

#[inline(always)]
fn fib_hop(ctx: &XdpContext, saddr: u32, daddr: u32, pkt: &Pkt) -> Result<Hop, Reason> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = pgsvc_common::IPPROTO_TCP;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_3.ipv4_src = saddr;
    p.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: `p` is a valid, initialised request on our stack.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut p, size_of::<bpf_fib_lookup>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return Err(Reason::DropNoNextHop);
    }
    Ok(Hop {
        dst: p.dmac,
        src: p.smac,
        ifindex: p.ifindex,
    })
}

#[inline(always)]
pub fn set_macs(ctx: &XdpContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        (*eth).dst_addr = *dst;
        (*eth).src_addr = *src;
    }
    Ok(())
}

/// The action that sends the (already rewritten) frame out of `ifindex`.
#[inline(always)]
pub fn send(ctx: &XdpContext, ifindex: u32) -> u32 {
    if ifindex == 0 || ifindex == ctx.ingress_ifindex() as u32 {
        return xdp_action::XDP_TX;
    }
    // SAFETY: plain helper call; returns XDP_REDIRECT on success, XDP_ABORTED on bad flags.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}
