//! Checksum verification of the packets that create state or are answered by the program itself
//! (a SYN without a flow, a non-SYN without a flow → RST). A frame with a bad IPv4 header checksum
//! or a bad TCP checksum is passed to the kernel untouched, which drops it as the host would.
//!
//! Established packets are not verified: that would cost a pass over every payload byte, and it is
//! not needed — the translation updates both checksums incrementally (RFC 1624), which preserves an
//! error, so the receiving host still sees a bad checksum and drops the segment. Nor is the RST to a
//! flow whose server went down (rare: the agent flushes such flows at once; the connection is being
//! reset anyway).
//!
//! Cost: a SYN (20–60 bytes of TCP header) is a dozen word additions. Segments are verified up to
//! [`MAX_SEGMENT_WORDS`] × 4 bytes, a full segment of a 1500-byte MTU: the verifier walks every
//! iteration of the bounded loop, so a jumbo-sized bound would make loading the program several
//! times slower. A longer segment without a flow (jumbo frames) cannot be verified and is passed
//! like a bad one — the kernel then answers it (or drops it) itself.

use aya_ebpf::programs::XdpContext;
use pgsvc_common::Reason;
use pgsvc_ebpf::csum::{add32, fold};

use crate::parse::{Pkt, ptr_at};

/// Longest TCP segment verified, in 32-bit words: 1480 bytes, a full segment of a 1500-byte MTU.
const MAX_SEGMENT_WORDS: usize = 370;
/// An IPv4 header is at most 60 bytes.
const MAX_HEADER_WORDS: usize = 15;

/// Adds the bytes `[off, off + len)` of the frame to `sum` as 16-bit words in packet order (a
/// trailing odd byte padded with zero, RFC 1071). `None` when the region is longer than `MAX` × 4
/// bytes or leaves the frame.
#[inline(always)]
fn sum_region<const MAX: usize>(
    ctx: &XdpContext,
    off: usize,
    len: usize,
    seed: u32,
) -> Option<u32> {
    if len > MAX * 4 {
        return None;
    }
    let words = len / 4;
    let mut sum = seed;
    let mut at = off;
    let mut i = 0;
    while i < MAX {
        if i >= words {
            break;
        }
        // One word load (see `parse::Ip4` on unaligned packet access).
        let w: *const u32 = ptr_at(ctx, at).ok()?;
        // SAFETY: bounds checked by `ptr_at`.
        sum = add32(sum, unsafe { *w });
        at += 4;
        i += 1;
    }
    let rest = len & 3;
    if rest >= 2 {
        let w: *const u16 = ptr_at(ctx, at).ok()?;
        // SAFETY: bounds checked by `ptr_at`.
        sum += u32::from(unsafe { *w });
        at += 2;
    }
    if rest & 1 != 0 {
        let b: *const u8 = ptr_at(ctx, at).ok()?;
        // SAFETY: bounds checked by `ptr_at`.
        sum += u32::from(u16::from_ne_bytes([unsafe { *b }, 0]));
    }
    Some(sum)
}

/// Whether both the IPv4 header checksum and the TCP checksum of `pkt` are right.
#[inline(always)]
pub fn checksums_ok(ctx: &XdpContext, pkt: &Pkt) -> bool {
    let ihl = pkt.l4 - pkt.l3;
    match sum_region::<MAX_HEADER_WORDS>(ctx, pkt.l3, ihl, 0) {
        Some(sum) if fold(sum) == 0xffff => {}
        _ => return false,
    }
    let seg_len = pkt.end - pkt.l4;
    // Pseudo-header: addresses, zero + protocol, TCP length.
    let mut seed = add32(0, pkt.saddr);
    seed = add32(seed, pkt.daddr);
    seed += u32::from(u16::from_ne_bytes([0, pgsvc_common::IPPROTO_TCP]));
    seed += u32::from(u16::from_ne_bytes((seg_len as u16).to_be_bytes()));
    matches!(
        sum_region::<MAX_SEGMENT_WORDS>(ctx, pkt.l4, seg_len, seed),
        Some(sum) if fold(sum) == 0xffff
    )
}

/// `Err(PassBadChecksum)` unless [`checksums_ok`].
#[inline(always)]
pub fn require_checksums(ctx: &XdpContext, pkt: &Pkt) -> Result<(), Reason> {
    if checksums_ok(ctx, pkt) {
        Ok(())
    } else {
        Err(Reason::PassBadChecksum)
    }
}
