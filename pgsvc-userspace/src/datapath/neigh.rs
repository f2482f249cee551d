//! Next-hop resolution for backends from the kernel's own tables, asked over rtnetlink
//! ([`super::rtnl`]): the route the kernel takes toward the backend (output interface and gateway),
//! the neighbour entry of that next hop, and the interface's MAC. The netlink socket is opened by
//! the calling thread, so it asks that thread's network namespace (a thread moved into a namespace
//! with setns sees that namespace, as `ip netns exec` would). The result goes into `BACKENDS` so
//! that the datapath rewrites MACs without a FIB lookup per packet.

use std::{net::Ipv4Addr, net::UdpSocket};

use super::rtnl::Rtnl;

/// Where frames toward a backend go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// Resolves the next hop toward `addr`, or `None` when the route or the neighbour entry is missing
/// (or netlink fails: logged at debug level, the caller retries on its next pass).
pub fn resolve(addr: Ipv4Addr) -> Option<NextHop> {
    let asked = (|| {
        let mut nl = Rtnl::open()?;
        let Some(route) = nl.route_to(addr)? else {
            return Ok(None);
        };
        let hop_addr = route.gateway.unwrap_or(addr);
        let Some(mac) = nl.neighbour(route.ifindex, hop_addr)? else {
            return Ok(None);
        };
        Ok(nl.link_mac(route.ifindex)?.map(|src_mac| NextHop {
            ifindex: route.ifindex,
            mac,
            src_mac,
        }))
    })();
    asked.unwrap_or_else(|e: std::io::Error| {
        tracing::debug!(%addr, error = %e, "next hop look-up failed");
        None
    })
}

/// Index and MAC address of an interface in the calling thread's namespace, by name (an ioctl:
/// the callers hold a name from the command line, [`resolve`] asks netlink by index).
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
