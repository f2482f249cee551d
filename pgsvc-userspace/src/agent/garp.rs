//! Gratuitous ARP: one broadcast ARP request for an address from the interface that just took it,
//! so that neighbours and switches map the address to this node's MAC at once instead of when their
//! cache entry ages out (the VIP after a switchover).

use std::{io, net::Ipv4Addr};

use crate::datapath::neigh;

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// The frame: Ethernet broadcast, ARP request "who has `addr`? tell `addr`" from `mac`.
fn frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    // Target hardware address left zero; target protocol address = the sender's (gratuitous).
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// Sends one gratuitous ARP for `addr` on `iface`.
///
/// # Errors
/// The interface does not exist, or the packet socket could not be opened or written.
pub fn send(iface: &str, addr: Ipv4Addr) -> io::Result<()> {
    let Some((ifindex, mac)) = neigh::interface(iface) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("interface {iface} does not exist"),
        ));
    };
    let f = frame(mac, addr);
    // SAFETY: a packet socket owned here and closed below; `sll` is fully initialised and its size
    // is passed; `f` outlives the call.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&BROADCAST);
        let sent = libc::sendto(
            fd,
            f.as_ptr().cast(),
            f.len(),
            0,
            std::ptr::addr_of!(sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if sent < 0 {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_broadcast_request_for_the_address_itself() {
        let mac = [2, 0, 0, 0, 0, 7];
        let vip = Ipv4Addr::new(198, 18, 0, 3);
        let f = frame(mac, vip);
        assert_eq!(&f[0..6], &BROADCAST);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "an ARP request");
        assert_eq!(&f[22..28], &mac, "sender hardware address");
        assert_eq!(&f[28..32], &vip.octets(), "sender protocol address");
        assert_eq!(&f[32..38], &[0; 6], "target hardware address");
        assert_eq!(&f[38..42], &vip.octets(), "target = sender: gratuitous");
    }
}
