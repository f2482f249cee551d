//! Building Ethernet/IPv4/TCP frames byte by byte, and reading them back with checksums verified by a
//! straightforward RFC 1071 sum — deliberately not the datapath's incremental arithmetic.

use std::net::Ipv4Addr;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// A TCP segment description; [`Tcp::frame`] renders it.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
    /// IP options bytes (multiple of 4).
    pub ip_options: Vec<u8>,
    /// TCP options bytes (multiple of 4).
    pub tcp_options: Vec<u8>,
    /// Raw IPv4 flags+fragment offset field.
    pub frag: u16,
}

impl Tcp {
    pub fn new(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Self {
            src_mac: CLIENT_MAC,
            dst_mac: LB_MAC,
            vlan: None,
            src: src.0,
            dst: dst.0,
            sport: src.1,
            dport: dst.1,
            seq: 1000,
            ack: if flags & ACK != 0 { 5000 } else { 0 },
            flags,
            payload: Vec::new(),
            ip_options: Vec::new(),
            tcp_options: Vec::new(),
            frag: 0x4000,
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(tag) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tag.to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let ihl = 20 + self.ip_options.len();
        let thl = 20 + self.tcp_options.len();
        let total = ihl + thl + self.payload.len();
        let l3 = f.len();
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&(total as u16).to_be_bytes());
        f.extend_from_slice(&0x1234u16.to_be_bytes());
        f.extend_from_slice(&self.frag.to_be_bytes());
        f.push(64);
        f.push(6);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        f.extend_from_slice(&self.ip_options);
        let c = rfc1071(&f[l3..l3 + ihl]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        let l4 = f.len();
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.push(((thl / 4) as u8) << 4);
        f.push(self.flags);
        f.extend_from_slice(&64240u16.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&self.tcp_options);
        f.extend_from_slice(&self.payload);
        let c = tcp_checksum(self.src, self.dst, &f[l4..]);
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        f
    }
}

/// RFC 1071 checksum of big-endian 16-bit words (odd length padded with zero).
pub fn rfc1071(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for chunk in data.chunks(2) {
        let hi = u64::from(chunk[0]) << 8;
        let lo = chunk.get(1).map_or(0, |&b| u64::from(b));
        sum += hi | lo;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.push(0);
    pseudo.push(6);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    rfc1071(&pseudo)
}

/// A parsed frame with both checksums verified from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub ihl: usize,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

/// Parses an IPv4/TCP frame and verifies the IP header checksum and the TCP checksum by summing
/// everything (a valid header or segment sums to 0xffff, i.e. its complement is 0).
pub fn parse_verified(frame: &[u8]) -> Result<Parsed, String> {
    let mac = |o: usize| -> [u8; 6] { frame[o..o + 6].try_into().unwrap_or([0; 6]) };
    if frame.len() < 14 + 20 + 20 {
        return Err(format!("frame too short: {} bytes", frame.len()));
    }
    let mut l3 = 14;
    let mut vlan = None;
    if frame[12..14] == [0x81, 0x00] {
        vlan = Some(u16::from_be_bytes([frame[14], frame[15]]));
        l3 = 18;
    }
    if frame[l3 - 2..l3] != [0x08, 0x00] {
        return Err("not IPv4".into());
    }
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]));
    if frame.len() < l3 + total {
        return Err(format!("IP total length {total} exceeds the frame"));
    }
    if rfc1071(&frame[l3..l3 + ihl]) != 0 {
        return Err("bad IPv4 header checksum".into());
    }
    let ip4 = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
    let (src, dst) = (ip4(l3 + 12), ip4(l3 + 16));
    let l4 = l3 + ihl;
    let segment = &frame[l4..l3 + total];
    if tcp_checksum(src, dst, segment) != 0 {
        return Err("bad TCP checksum".into());
    }
    let thl = usize::from(segment[12] >> 4) * 4;
    Ok(Parsed {
        dst_mac: mac(0),
        src_mac: mac(6),
        vlan,
        src,
        dst,
        sport: u16::from_be_bytes([segment[0], segment[1]]),
        dport: u16::from_be_bytes([segment[2], segment[3]]),
        seq: u32::from_be_bytes([segment[4], segment[5], segment[6], segment[7]]),
        ack: u32::from_be_bytes([segment[8], segment[9], segment[10], segment[11]]),
        flags: segment[13],
        ihl,
        ttl: frame[l3 + 8],
        payload: segment[thl..].to_vec(),
    })
}

/// An ARP request frame.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// A UDP datagram to `dst` (checksum left zero, which UDP allows).
pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut f = LB_MAC.to_vec();
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total: u16 = 20 + 8 + 4;
    let l3 = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    let c = rfc1071(&f[l3..l3 + 20]);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&12u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, b'p', b'g', b's', b'v']);
    f
}

/// A minimal IPv6/TCP SYN frame to port `dport` (bytes only; the program must not touch it).
pub fn ipv6_syn(dport: u16) -> Vec<u8> {
    let mut f = LB_MAC.to_vec();
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, 6, 64]);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    f.extend_from_slice(&[0; 12]);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    f.extend_from_slice(&[0; 11]);
    f.push(1);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, SYN, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_verify_and_corruption_is_caught() {
        let mut t = Tcp::new(
            (Ipv4Addr::new(198, 18, 0, 10), 33000),
            (Ipv4Addr::new(198, 18, 0, 100), 5433),
            PSH | ACK,
        );
        t.payload = b"select 1".to_vec();
        t.vlan = Some(7);
        t.ip_options = vec![1, 1, 1, 0];
        let mut f = t.frame();
        let p = parse_verified(&f).expect("valid");
        assert_eq!(p.payload, b"select 1");
        assert_eq!(p.vlan, Some(7));
        assert_eq!(p.ihl, 24);
        let last = f.len() - 1;
        f[last] ^= 0x01;
        assert_eq!(
            parse_verified(&f).expect_err("corrupt frame"),
            "bad TCP checksum"
        );
        let mut f = t.frame();
        f[18 + 8] = 63; // TTL
        assert_eq!(
            parse_verified(&f).expect_err("corrupt frame"),
            "bad IPv4 header checksum"
        );
    }
}
