//! Header parsing with a bounds check before every access. Only IPv4/TCP (behind at most one VLAN
//! tag) is ours; everything else is classified for the pass counters.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use network_types::eth::EthHdr;
use pgsvc_common::{IPPROTO_TCP, Reason};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;

/// TCP flag bits as in the header's 14th byte.
pub const TH_FIN: u8 = 0x01;
pub const TH_SYN: u8 = 0x02;
pub const TH_RST: u8 = 0x04;
pub const TH_ACK: u8 = 0x10;

/// An IPv4 header (without options) with word-sized fields.
///
/// The program reads and writes headers through these rather than through `network-types`, whose
/// byte-array fields make LLVM split every 32-bit field into four byte loads (or stores) with the
/// shifts to join them: measured, that was a fifth of an established packet's instructions. A
/// header in a frame need not sit at its natural alignment (the IPv4 header usually starts 2 bytes
/// past a word boundary); the verifier accepts unaligned packet access on the architectures with
/// efficient unaligned loads (x86-64, arm64), and refuses the program at load time elsewhere rather
/// than misbehave.
#[repr(C)]
pub struct Ip4 {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frags: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// A TCP header (without options) with word-sized fields; see [`Ip4`].
#[repr(C)]
pub struct Tcp4 {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub doff: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg: u16,
}

const _: () = assert!(size_of::<Ip4>() == 20 && size_of::<Tcp4>() == 20);

/// The fields of a parsed IPv4/TCP packet. Addresses and ports in network order.
pub struct Pkt {
    /// Offset of the IPv4 header (14, or 18 behind a VLAN tag).
    pub l3: usize,
    /// Offset of the TCP header.
    pub l4: usize,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// Raw TCP flags byte.
    pub flags: u8,
    /// TCP sequence and acknowledgement numbers (host order).
    pub seq: u32,
    pub ack: u32,
    /// TCP payload bytes (from the IP total length, so Ethernet padding is not counted).
    pub payload_len: u32,
    /// Offset just past the IP packet (`l3` + total length; Ethernet padding may follow).
    pub end: usize,
}

/// Returns a pointer to a `T` at `off`, or `PassTruncated` when the packet is shorter.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, Reason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(Reason::PassTruncated);
    }
    Ok((start + off) as *mut T)
}

#[inline(always)]
pub fn parse_ipv4_tcp(ctx: &XdpContext) -> Result<Pkt, Reason> {
    let l3 = parse_eth(ctx)?;
    let ip: *const Ip4 = ptr_at(ctx, l3)?;
    // SAFETY: `ptr_at` checked that the whole header lies inside the packet.
    let (vihl, frags, proto, tot_len, saddr, daddr) = unsafe {
        (
            (*ip).vihl,
            u16::from_be((*ip).frags),
            (*ip).proto,
            u16::from_be((*ip).tot_len) as usize,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    if vihl >> 4 != 4 {
        return Err(Reason::PassNotIpv4);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if !(size_of::<Ip4>()..=60).contains(&ihl) {
        return Err(Reason::PassTruncated);
    }
    // MF set or a non-zero offset: a fragment. Only the first one carries ports; none is ours.
    if frags & 0x3fff != 0 {
        return Err(Reason::PassFragment);
    }
    if proto != IPPROTO_TCP {
        return Err(Reason::PassNotTcp);
    }
    let l4 = l3 + ihl;
    let th: *const Tcp4 = ptr_at(ctx, l4)?;
    // SAFETY: bounds checked by `ptr_at`.
    let (sport, dport, seq, ack, off_flags) = unsafe {
        (
            (*th).sport,
            (*th).dport,
            u32::from_be((*th).seq),
            u32::from_be((*th).ack),
            ((*th).doff, (*th).flags),
        )
    };
    let doff = ((off_flags.0 >> 4) as usize) * 4;
    if doff < size_of::<Tcp4>() || tot_len < ihl + doff {
        return Err(Reason::PassTruncated);
    }
    if ctx.data() + l3 + tot_len > ctx.data_end() {
        return Err(Reason::PassBadLength);
    }
    Ok(Pkt {
        l3,
        l4,
        saddr,
        daddr,
        sport,
        dport,
        flags: off_flags.1,
        seq,
        ack,
        payload_len: (tot_len - ihl - doff) as u32,
        end: l3 + tot_len,
    })
}

/// Returns the offset of the L3 header if the frame carries IPv4.
#[inline(always)]
fn parse_eth(ctx: &XdpContext) -> Result<usize, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    let mut proto = u16::from_be(unsafe { (*eth).ether_type });
    let mut off = EthHdr::LEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        // The inner EtherType sits in the last two bytes of the 4-byte tag.
        let inner: *const u16 = ptr_at(ctx, off + 2)?;
        // SAFETY: bounds checked by `ptr_at`.
        proto = u16::from_be(unsafe { *inner });
        off += VLAN_HLEN;
    }
    if proto != ETH_P_IP {
        return Err(Reason::PassNotIpv4);
    }
    Ok(off)
}
