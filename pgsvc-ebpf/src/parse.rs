//! Header parsing with a bounds check before every access. Only IPv4/TCP (behind at most one VLAN
//! tag) is ours; everything else is classified for the pass counters.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};
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
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3)?;
    // SAFETY: `ptr_at` checked that the whole header lies inside the packet.
    let (vihl, frags, proto, tot_len, saddr, daddr) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u32::from_ne_bytes((*ip).src_addr),
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    if vihl >> 4 != 4 {
        return Err(Reason::PassNotIpv4);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if !(Ipv4Hdr::LEN..=60).contains(&ihl) {
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
    let th: *const TcpHdr = ptr_at(ctx, l4)?;
    // SAFETY: bounds checked by `ptr_at`.
    let (sport, dport, seq, ack, off_flags) = unsafe {
        let raw = th as *const u8;
        (
            u16::from_ne_bytes((*th).source),
            u16::from_ne_bytes((*th).dest),
            u32::from_be_bytes((*th).seq),
            u32::from_be_bytes((*th).ack_seq),
            (*raw.add(12), *raw.add(13)),
        )
    };
    let doff = ((off_flags.0 >> 4) as usize) * 4;
    if doff < TcpHdr::LEN || tot_len < ihl + doff {
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
        let inner: *const [u8; 2] = ptr_at(ctx, off + 2)?;
        proto = u16::from_be_bytes(unsafe { *inner });
        off += VLAN_HLEN;
    }
    if proto != ETH_P_IP {
        return Err(Reason::PassNotIpv4);
    }
    Ok(off)
}
