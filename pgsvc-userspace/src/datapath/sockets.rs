//! The two ways the agent ends a connection at once, without waiting for its next packet:
//!
//! - [`RstSender`]: a full-NAT flow has no socket on this node, so the agent forges the RST each
//!   end would accept — from the address and port that end talks to, with the sequence number the
//!   other end sends next (kept per direction by the datapath) — and sends it on a raw IPv4 socket
//!   (`IPPROTO_RAW`, i.e. `IP_HDRINCL`) in the agent's network namespace. The packets are built
//!   with etherparse (headers and checksums), not by hand.
//! - [`SockDiag`]: a local member's connection and a local client's have a kernel socket on this
//!   node; netlink sock_diag `SOCK_DESTROY` aborts it (`CONFIG_INET_DIAG_DESTROY`), and the kernel
//!   sends the RST itself with the right sequence numbers (a local member's RST leaves through
//!   the TC egress program, which gives it the service address the client dialled). The messages
//!   are built and parsed with `netlink-packet-sock-diag`, which knows both `SOCK_DIAG_BY_FAMILY`
//!   dumps and `SOCK_DESTROY`. The same socket lists the namespace's TCP listeners (a dump in
//!   state LISTEN) for the agent's port-conflict check.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use etherparse::PacketBuilder;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagDestroy, SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// TTL of the forged RSTs (as the kernel's default).
const TTL: u8 = 64;

/// One end of a TCP connection as a RST must address it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RstTo {
    /// Where the RST appears to come from: the address and port this end talks to.
    pub from: SocketAddrV4,
    /// The end being reset.
    pub to: SocketAddrV4,
    /// The sequence number the other end sends next: the one this end expects (RFC 5961 makes the
    /// kernel accept a RST only at exactly that number).
    pub seq: u32,
    /// The sequence number this end sends next (acknowledged, as a RST+ACK).
    pub ack: u32,
}

/// An IPv4 + TCP RST+ACK with valid checksums.
#[must_use]
pub fn rst_packet(r: &RstTo) -> Vec<u8> {
    let b = PacketBuilder::ipv4(r.from.ip().octets(), r.to.ip().octets(), TTL)
        .tcp(r.from.port(), r.to.port(), r.seq, 0)
        .rst()
        .ack(r.ack);
    let mut out = Vec::with_capacity(b.size(0));
    // Writing into a Vec cannot fail, and a header-only TCP packet has no length to exceed.
    if b.write(&mut out, &[]).is_err() {
        out.clear();
    }
    out
}

/// A raw IPv4 socket that sends complete IP packets.
#[derive(Debug)]
pub struct RstSender {
    fd: OwnedFd,
}

impl RstSender {
    /// # Errors
    /// The socket cannot be opened (needs `CAP_NET_RAW`).
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends one RST.
    ///
    /// # Errors
    /// What sendto(2) reports (no route, ...).
    pub fn send(&self, r: &RstTo) -> io::Result<()> {
        let pkt = rst_packet(r);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(r.to.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: the buffer and the address outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&raw const sin).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A TCP socket of this network namespace as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSock {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub cookie: u64,
}

/// A TCP socket in LISTEN state as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpListening {
    /// The bound address (`0.0.0.0`, `::`, or an IPv4-mapped IPv6 address included).
    pub addr: IpAddr,
    pub port: u16,
    /// The socket's inode (`socket:[inode]` under `/proc/<pid>/fd`).
    pub inode: u32,
}

/// A netlink sock_diag socket of the agent's network namespace.
pub struct SockDiag {
    socket: Socket,
    seq: u32,
}

fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// The kernel's `idiag_cookie` (two host-order u32, low half first).
fn cookie_bytes(cookie: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
    b[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    b
}

fn cookie_of(b: [u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let hi = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
    (u64::from(hi) << 32) | u64::from(lo)
}

/// "Match any socket" for the cookie field (`INET_DIAG_NOCOOKIE`).
const NO_COOKIE: [u8; 8] = [0xff; 8];

impl SockDiag {
    /// # Errors
    /// The netlink socket cannot be opened or bound.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    fn request(
        &mut self,
        flags: u16,
        destroy: bool,
        (family, states): (u8, StateFlags),
        id: SocketId,
    ) -> io::Result<()> {
        let inner = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id: id,
        });
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        hdr.sequence_number = self.seq;
        let buf = if destroy {
            let mut m = NetlinkMessage::new(hdr, SockDiagDestroy::new(inner).into());
            m.finalize();
            let mut buf = vec![0; m.buffer_len()];
            m.serialize(&mut buf);
            buf
        } else {
            let mut m = NetlinkMessage::new(hdr, inner.into());
            m.finalize();
            let mut buf = vec![0; m.buffer_len()];
            m.serialize(&mut buf);
            buf
        };
        self.socket.send(&buf, 0)?;
        Ok(())
    }

    /// Dumps the TCP sockets of `family` in `states`, handing each answer to `each`.
    fn dump(
        &mut self,
        family: u8,
        states: StateFlags,
        mut each: impl FnMut(&InetResponseHeader),
    ) -> io::Result<()> {
        let mut id = if family == AF_INET6 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        };
        id.cookie = NO_COOKIE;
        self.request(NLM_F_DUMP, false, (family, states), id)?;
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            let mut off = 0;
            while off < buf.len() {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        each(&r.header);
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// Every IPv4 TCP socket of this namespace (all states).
    ///
    /// # Errors
    /// Netlink failures, or an answer that does not parse.
    pub fn tcp4_sockets(&mut self) -> io::Result<Vec<TcpSock>> {
        let mut out = Vec::new();
        self.dump(AF_INET, StateFlags::all(), |h| {
            let s = &h.socket_id;
            out.push(TcpSock {
                local: SocketAddrV4::new(v4(s.source_address), s.source_port),
                remote: SocketAddrV4::new(v4(s.destination_address), s.destination_port),
                cookie: cookie_of(s.cookie),
            });
        })?;
        Ok(out)
    }

    /// The TCP sockets of this namespace in LISTEN state, of one address family (`ipv6`: the
    /// AF_INET6 sockets, whose addresses may be IPv4-mapped).
    ///
    /// # Errors
    /// Netlink failures, or an answer that does not parse.
    pub fn tcp_listeners(&mut self, ipv6: bool) -> io::Result<Vec<TcpListening>> {
        let mut out = Vec::new();
        let family = if ipv6 { AF_INET6 } else { AF_INET };
        self.dump(family, StateFlags::LISTEN, |h| {
            out.push(TcpListening {
                addr: h.socket_id.source_address,
                port: h.socket_id.source_port,
                inode: h.inode,
            });
        })?;
        Ok(out)
    }

    /// Aborts the TCP socket `local` ↔ `remote` (and, when given, only the one with that cookie):
    /// the kernel sends its peer a RST and its owner reads `ECONNABORTED`. `Ok(false)` when no such
    /// socket exists (it closed meanwhile).
    ///
    /// # Errors
    /// Netlink failures, or the kernel refusing (`EOPNOTSUPP` without `CONFIG_INET_DIAG_DESTROY`,
    /// `EPERM` without `CAP_NET_ADMIN`).
    pub fn destroy(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        cookie: Option<u64>,
    ) -> io::Result<bool> {
        let id = SocketId {
            source_port: local.port(),
            destination_port: remote.port(),
            source_address: IpAddr::V4(*local.ip()),
            destination_address: IpAddr::V4(*remote.ip()),
            interface_id: 0,
            cookie: cookie.map_or(NO_COOKIE, cookie_bytes),
        };
        self.request(NLM_F_ACK, true, (AF_INET, StateFlags::all()), id)?;
        let (buf, _) = self.socket.recv_from_full()?;
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        match msg.payload {
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(true),
                Some(c) if c.get() == -libc::ENOENT => Ok(false),
                Some(_) => Err(e.to_io()),
            },
            _ => Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    #[test]
    fn a_forged_rst_carries_the_tuple_the_sequence_numbers_and_valid_checksums() {
        let r = RstTo {
            from: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 5433),
            to: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 7), 40001),
            seq: 0xfedc_ba98,
            ack: 17,
        };
        let pkt = rst_packet(&r);
        let p = SlicedPacket::from_ip(&pkt).expect("a valid IPv4 packet");
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        let h = ip.header();
        assert_eq!(h.source_addr(), *r.from.ip());
        assert_eq!(h.destination_addr(), *r.to.ip());
        assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!("not TCP")
        };
        assert_eq!((tcp.source_port(), tcp.destination_port()), (5433, 40001));
        assert_eq!(
            (tcp.sequence_number(), tcp.acknowledgment_number()),
            (r.seq, 17)
        );
        assert!(tcp.rst() && tcp.ack() && !tcp.syn() && !tcp.fin());
        assert!(tcp.payload().is_empty());
        let want = tcp
            .to_header()
            .calc_checksum_ipv4(&h.to_header(), &[])
            .expect("checksum");
        assert_eq!(tcp.checksum(), want);
    }

    #[test]
    fn cookies_round_trip_through_the_kernel_layout() {
        for c in [0u64, 1, 0x1234_5678_9abc_def0, u64::MAX - 1] {
            assert_eq!(cookie_of(cookie_bytes(c)), c);
        }
        assert_eq!(&cookie_bytes(5)[..4], &5u32.to_ne_bytes());
    }
}
