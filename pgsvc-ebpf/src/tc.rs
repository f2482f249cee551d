//! The TC egress (clsact) program on the attached interface: the reverse half of the node-resident
//! path (local.rs). A reply of a local member to a client it got through a service (member address
//! and port → client) leaves with the source the client dialled (the service address and port).
//!
//! The packet is an skb here, possibly `CHECKSUM_PARTIAL` (the TCP checksum field then holds only
//! the pseudo-header sum, the NIC or the stack finishes it): the kernel's checksum helpers keep
//! both cases right — `bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR` for the address (part of the
//! pseudo-header), without it for the port, `bpf_l3_csum_replace` for the IP header. Everything
//! else (the node's own traffic, full-NAT packets XDP sent) leaves untouched.

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, macros::classifier, programs::TcContext};
use pgsvc_common::{IPPROTO_TCP, NatKey, Reason};

use crate::{
    conntrack,
    maps::NAT_REV,
    parse::{TH_FIN, TH_RST},
    stats,
};

/// `TC_ACT_OK` / `TC_ACT_SHOT` (pkt_cls.h), typed as the program returns them.
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
/// Offsets inside the IPv4 and TCP headers.
const IP_CHECK: usize = 10;
const IP_SADDR: usize = 12;
const TCP_CHECK: usize = 16;

/// The fields of an outgoing IPv4/TCP packet (addresses and ports in network order).
struct Out {
    l3: usize,
    l4: usize,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    flags: u8,
    payload_len: u32,
}

#[classifier]
pub fn pgsvc_tc_egress(ctx: TcContext) -> i32 {
    match reverse_local(&ctx) {
        Ok(reason) => {
            stats::count_reason(reason);
            // A reply whose rewrite failed half-way carries a wrong address or checksum: drop it
            // (TCP retransmits) rather than send it.
            if matches!(reason, Reason::DropXmit) {
                TC_ACT_SHOT
            } else {
                TC_ACT_OK
            }
        }
        Err(()) => TC_ACT_OK,
    }
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Out> {
    let mut proto = u16::from_be(ctx.load::<u16>(12).ok()?);
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q {
        proto = u16::from_be(ctx.load::<u16>(16).ok()?);
        l3 += 4;
    }
    if proto != ETH_P_IP {
        return None;
    }
    let vihl = ctx.load::<u8>(l3).ok()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let frags = u16::from_be(ctx.load::<u16>(l3 + 6).ok()?);
    if frags & 0x3fff != 0 || ctx.load::<u8>(l3 + 9).ok()? != IPPROTO_TCP {
        return None;
    }
    let tot_len = usize::from(u16::from_be(ctx.load::<u16>(l3 + 2).ok()?));
    let l4 = l3 + ihl;
    let doff = usize::from(ctx.load::<u8>(l4 + 12).ok()? >> 4) * 4;
    Some(Out {
        l3,
        l4,
        saddr: ctx.load::<u32>(l3 + IP_SADDR).ok()?,
        daddr: ctx.load::<u32>(l3 + 16).ok()?,
        sport: ctx.load::<u16>(l4).ok()?,
        dport: ctx.load::<u16>(l4 + 2).ok()?,
        flags: ctx.load::<u8>(l4 + 13).ok()?,
        payload_len: tot_len.saturating_sub(ihl + doff) as u32,
    })
}

/// `Ok(reason)` when the packet was a local member's reply (translated or not); `Err(())` for
/// everything else, which is not counted (the node's own traffic is none of our business).
#[inline(always)]
fn reverse_local(ctx: &TcContext) -> Result<Reason, ()> {
    let p = parse(ctx).ok_or(())?;
    let key = NatKey::of_packet(p.saddr, p.daddr, p.sport, p.dport);
    let rev = NAT_REV.get_ptr_mut(key).ok_or(())?;
    // SAFETY: hash map value, written by this flow's replies only.
    let rev = unsafe { &mut *rev };
    // A full-NAT entry is keyed by (backend, SNAT address): it can only look like ours when its
    // client is the SNAT address itself, which never happens; checked anyway.
    if rev.client_addr != p.daddr || rev.client_port != p.dport {
        return Err(());
    }
    conntrack::touch_rev(rev, p.flags);
    // The entry may be removed below: keep what the rewrite needs.
    let (vip, vport) = (rev.vip, rev.vport);
    let (svc_id, backend_id) = (rev.svc_id, rev.backend_id);
    if p.flags & (TH_FIN | TH_RST) != 0 {
        conntrack::backend_ends(&rev.flow_key(), p.flags & TH_RST != 0);
    }
    let tcp_check = p.l4 + TCP_CHECK;
    let ok = ctx
        .l4_csum_replace(
            tcp_check,
            u64::from(p.saddr),
            u64::from(vip),
            u64::from(BPF_F_PSEUDO_HDR) | 4,
        )
        .is_ok()
        && ctx
            .l3_csum_replace(p.l3 + IP_CHECK, u64::from(p.saddr), u64::from(vip), 4)
            .is_ok()
        && ctx.store(p.l3 + IP_SADDR, &vip, 0).is_ok()
        && ctx
            .l4_csum_replace(tcp_check, u64::from(p.sport), u64::from(vport), 2)
            .is_ok()
        && ctx.store(p.l4, &vport, 0).is_ok();
    if !ok {
        return Ok(Reason::DropXmit);
    }
    stats::count_out(svc_id, backend_id, p.payload_len);
    Ok(Reason::ReverseLocal)
}
