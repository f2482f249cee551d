//! Choosing the next hop and sending the rewritten frame: `XDP_TX` out of the interface it came in
//! on, `bpf_redirect` to another one.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use pgsvc_common::{Backend, CFG_F_FIB_FALLBACK, Config, Reason};

use crate::parse::{Pkt, ptr_at};

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

/// A MAC address as three 16-bit words, as it sits in the frame (native order): copied, compared
/// and stored with three word accesses instead of six byte accesses.
pub type Mac = [u16; 3];

/// The Ethernet header as words.
#[repr(C)]
struct Eth {
    dst: Mac,
    src: Mac,
    proto: u16,
}

/// A MAC address field of a map value (`Backend`, `NatRev`, `LocalScope` keep theirs at even
/// offsets of 8-byte aligned values, so a word read is aligned) or of a copy of one.
#[inline(always)]
pub fn mac(m: &[u8; 6]) -> Mac {
    // SAFETY: `m` is a valid [u8; 6] at an even address (see above); [u16; 3] has the same size.
    unsafe { core::ptr::read(m.as_ptr().cast::<Mac>()) }
}

/// The bytes of a MAC address, to store into a map value.
#[inline(always)]
pub fn mac_bytes(m: Mac) -> [u8; 6] {
    // SAFETY: same size, every bit pattern valid.
    unsafe { core::mem::transmute::<Mac, [u8; 6]>(m) }
}

/// Where a frame goes next.
pub struct Hop {
    pub dst: Mac,
    pub src: Mac,
    /// 0 = the ingress interface.
    pub ifindex: u32,
}

#[inline(always)]
pub fn is_zero(mac: &Mac) -> bool {
    (mac[0] | mac[1] | mac[2]) == 0
}

/// The MACs the client's frame carried: (source = previous hop, destination = us).
#[inline(always)]
pub fn frame_macs(ctx: &XdpContext) -> Result<(Mac, Mac), Reason> {
    let eth: *const Eth = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { Ok(((*eth).src, (*eth).dst)) }
}

/// Next hop toward a backend: the agent-resolved MAC, else the kernel's FIB, else none (the caller drops it).
#[inline(always)]
pub fn hop_to_backend(
    ctx: &XdpContext,
    cfg: &Config,
    be: &Backend,
    pkt: &Pkt,
) -> Result<Hop, Reason> {
    let next_hop = mac(&be.next_hop_mac);
    if !is_zero(&next_hop) {
        let src = match mac(&be.src_mac) {
            m if is_zero(&m) => frame_macs(ctx)?.1,
            m => m,
        };
        return Ok(Hop {
            dst: next_hop,
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
        dst: mac(&p.dmac),
        src: mac(&p.smac),
        ifindex: p.ifindex,
    })
}

#[inline(always)]
pub fn set_macs(ctx: &XdpContext, dst: &Mac, src: &Mac) -> Result<(), Reason> {
    let eth: *mut Eth = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        (*eth).dst = *dst;
        (*eth).src = *src;
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
