//! Next-hop resolution for backends from the kernel's own tables (`/proc/thread-self/net/route`,
//! `.../arp`, and interface ioctls), read in the calling thread's network namespace (so that a thread
//! moved into a namespace with setns sees that namespace, as `ip netns exec` would). The result goes
//! into `BACKENDS` so that the datapath rewrites MACs without a FIB lookup per packet.

use std::{fs, net::Ipv4Addr, net::UdpSocket};

/// Where frames toward a backend go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub src_mac: [u8; 6],
}

const RTF_UP: u32 = 0x1;
const ATF_COM: u32 = 0x2;

/// Resolves the next hop toward `addr`, or `None` when the route or the neighbour entry is missing.
pub fn resolve(addr: Ipv4Addr) -> Option<NextHop> {
    let routes = fs::read_to_string("/proc/thread-self/net/route").ok()?;
    let (iface, gateway) = best_route(&routes, addr)?;
    let hop_addr = if gateway == Ipv4Addr::UNSPECIFIED {
        addr
    } else {
        gateway
    };
    let arp = fs::read_to_string("/proc/thread-self/net/arp").ok()?;
    let mac = neighbour(&arp, hop_addr, &iface)?;
    let (ifindex, src_mac) = interface(&iface)?;
    Some(NextHop {
        ifindex,
        mac,
        src_mac,
    })
}

/// Index and MAC address of an interface in the calling thread's namespace.
pub fn interface(name: &str) -> Option<(u32, [u8; 6])> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return None;
    }
    // SAFETY: a datagram socket for the ioctl, closed below; `ifr` is zeroed and the name fits
    // (interface names are at most 15 bytes).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
        let data = ifr.ifr_ifru.ifru_hwaddr.sa_data;
        let mut mac = [0u8; 6];
        for (i, m) in mac.iter_mut().enumerate() {
            *m = data[i] as u8;
        }
        Some((ifindex, mac))
    }
}

/// Makes the kernel resolve the neighbour toward `addr` (a datagram to the discard port; its loss
/// does not matter, only the ARP request it causes).
pub fn poke(addr: Ipv4Addr) {
    if let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        let _ = sock.send_to(&[], (addr, 9));
    }
}

/// Longest-prefix match over `/proc/net/route` (hex fields in host byte order of a little-endian
/// kernel, i.e. the address bytes as they are in memory).
fn best_route(table: &str, addr: Ipv4Addr) -> Option<(String, Ipv4Addr)> {
    let target = u32::from_ne_bytes(addr.octets());
    let mut best: Option<(u32, String, Ipv4Addr)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dest), Ok(gw), Ok(flags), Ok(mask)) = (
            u32::from_str_radix(f[1], 16),
            u32::from_str_radix(f[2], 16),
            u32::from_str_radix(f[3], 16),
            u32::from_str_radix(f[7], 16),
        ) else {
            continue;
        };
        if flags & RTF_UP == 0 || target & mask != dest {
            continue;
        }
        let prefix = mask.count_ones();
        if best.as_ref().is_none_or(|(p, _, _)| prefix > *p) {
            best = Some((prefix, f[0].to_owned(), Ipv4Addr::from(gw.to_ne_bytes())));
        }
    }
    best.map(|(_, iface, gw)| (iface, gw))
}

fn neighbour(table: &str, addr: Ipv4Addr, iface: &str) -> Option<[u8; 6]> {
    let want = addr.to_string();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[0] != want || f[5] != iface {
            continue;
        }
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
        if flags & ATF_COM == 0 {
            return None;
        }
        return parse_mac(f[3]).filter(|m| *m != [0; 6]);
    }
    None
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth1\t000013C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    #[test]
    fn longest_prefix_wins_and_gateway_is_decoded() {
        assert_eq!(
            best_route(ROUTES, Ipv4Addr::new(198, 18, 0, 11)),
            Some(("eth0".into(), Ipv4Addr::UNSPECIFIED))
        );
        assert_eq!(
            best_route(ROUTES, Ipv4Addr::new(198, 19, 0, 7)),
            Some(("eth1".into(), Ipv4Addr::UNSPECIFIED))
        );
        // Off-link: the default route's gateway 198.18.0.1.
        assert_eq!(
            best_route(ROUTES, Ipv4Addr::new(198, 18, 1, 1)).map(|r| r.1),
            Some(Ipv4Addr::new(198, 18, 0, 1))
        );
    }

    #[test]
    fn incomplete_neighbours_are_ignored() {
        let arp = "IP address       HW type     Flags       HW address            Mask     Device\n\
            198.18.0.11      0x1         0x2         02:00:00:00:00:0b     *        eth0\n\
            198.18.0.12      0x1         0x0         00:00:00:00:00:00     *        eth0\n";
        assert_eq!(
            neighbour(arp, Ipv4Addr::new(198, 18, 0, 11), "eth0"),
            Some([2, 0, 0, 0, 0, 0x0b])
        );
        assert_eq!(neighbour(arp, Ipv4Addr::new(198, 18, 0, 12), "eth0"), None);
        assert_eq!(neighbour(arp, Ipv4Addr::new(198, 18, 0, 11), "eth1"), None);
        assert_eq!(parse_mac("02:00:00:00:00"), None);
    }
}
