//! Answering a client with a TCP RST built in place of its packet, as a server with no such
//! connection would (RFC 793 "Reset Generation"; the same choice of seq/ack as Linux).

use aya_ebpf::{
    EbpfContext, bindings::xdp_action, helpers::bpf_xdp_adjust_tail, programs::XdpContext,
};
use pgsvc_common::Reason;
use pgsvc_ebpf::csum::{add32, fold};

use crate::{
    Verdict,
    parse::{Pkt, TH_ACK, TH_FIN, TH_RST, TH_SYN, ptr_at},
    xmit,
};

/// IPv4 header (no options) + TCP header (no options).
const RST_LEN: usize = 40;

#[inline(always)]
pub fn reply(ctx: &XdpContext, pkt: &Pkt, reason: Reason) -> Result<Verdict, Reason> {
    // Never answer a RST with a RST.
    if pkt.flags & TH_RST != 0 {
        return Err(Reason::DropRstUnanswered);
    }
    let (seq, ack, flags) = if pkt.flags & TH_ACK != 0 {
        (pkt.ack, 0u32, TH_RST)
    } else {
        let mut len = pkt.payload_len;
        if pkt.flags & TH_SYN != 0 {
            len += 1;
        }
        if pkt.flags & TH_FIN != 0 {
            len += 1;
        }
        (0u32, pkt.seq.wrapping_add(len), TH_RST | TH_ACK)
    };

    let (client_mac, our_mac) = xmit::frame_macs(ctx)?;
    xmit::set_macs(ctx, &client_mac, &our_mac)?;
    write_headers(ctx, pkt, seq, ack, flags)?;

    // Cut the frame right after the new TCP header (drops options, payload and padding).
    let want = pkt.l3 + RST_LEN;
    let have = ctx.data_end() - ctx.data();
    if have > want {
        let delta = want as i32 - have as i32;
        // SAFETY: shrinking the tail of our own frame.
        if unsafe { bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, delta) } != 0 {
            return Err(Reason::DropXmit);
        }
    }
    Ok(Verdict {
        action: xdp_action::XDP_TX,
        reason,
    })
}

/// Overwrites the start of the L3 header with a fresh 20-byte IPv4 header and 20-byte TCP header,
/// addresses and ports swapped, checksums computed in full. Every input was copied out of the packet
/// before, so writing over it is safe even when the old headers had options.
#[inline(always)]
fn write_headers(ctx: &XdpContext, pkt: &Pkt, seq: u32, ack: u32, flags: u8) -> Result<(), Reason> {
    let b: *mut [u8; RST_LEN] = ptr_at(ctx, pkt.l3)?;
    // SAFETY: `ptr_at` checked that RST_LEN bytes from l3 are inside the packet (a parsed packet always
    // has at least a 20-byte IP and a 20-byte TCP header).
    let b = unsafe { &mut *b };
    let (src, dst) = (pkt.daddr.to_ne_bytes(), pkt.saddr.to_ne_bytes());

    // IPv4: version 4, IHL 5, total length 40, DF, TTL 64, TCP.
    b[0] = 0x45;
    b[1] = 0;
    b[2] = 0;
    b[3] = RST_LEN as u8;
    b[4] = 0;
    b[5] = 0;
    b[6] = 0x40;
    b[7] = 0;
    b[8] = 64;
    b[9] = 6;
    b[10] = 0;
    b[11] = 0;
    b[12..16].copy_from_slice(&src);
    b[16..20].copy_from_slice(&dst);
    let ip_check = (!fold(sum_words(0, b, 0, 20))).to_ne_bytes();
    b[10] = ip_check[0];
    b[11] = ip_check[1];

    // TCP: ports swapped, no options (data offset 5), window 0.
    b[20..22].copy_from_slice(&pkt.dport.to_ne_bytes());
    b[22..24].copy_from_slice(&pkt.sport.to_ne_bytes());
    b[24..28].copy_from_slice(&seq.to_be_bytes());
    b[28..32].copy_from_slice(&ack.to_be_bytes());
    b[32] = 0x50;
    b[33] = flags;
    b[34] = 0;
    b[35] = 0;
    b[36] = 0;
    b[37] = 0;
    b[38] = 0;
    b[39] = 0;
    // Pseudo-header: addresses, zero + protocol, TCP length.
    let mut sum = add32(0, pkt.daddr);
    sum = add32(sum, pkt.saddr);
    sum += u32::from(u16::from_ne_bytes([0, 6]));
    sum += u32::from(u16::from_ne_bytes([0, 20]));
    let sum = sum_words(sum, b, 20, RST_LEN);
    let tcp_check = (!fold(sum)).to_ne_bytes();
    b[36] = tcp_check[0];
    b[37] = tcp_check[1];
    Ok(())
}

/// Adds the 16-bit words of `b[from..to]` (as they sit in the packet) to `sum`.
#[inline(always)]
fn sum_words(mut sum: u32, b: &[u8; RST_LEN], from: usize, to: usize) -> u32 {
    let mut i = from;
    while i + 1 < to {
        sum += u32::from(u16::from_ne_bytes([b[i], b[i + 1]]));
        i += 2;
    }
    sum
}
