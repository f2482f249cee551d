//! Route, neighbour and link look-ups over a synchronous rtnetlink socket (netlink-sys for the
//! socket, netlink-packet-route for the messages): the kernel's own route decision toward an
//! address (`RTM_GETROUTE`, as `ip route get`), one neighbour entry (`RTM_GETNEIGH`, as
//! `ip neigh get`) and an interface's MAC address (`RTM_GETLINK`). Each is one request and one
//! answer, no dump.
//!
//! A netlink socket belongs to the network namespace of the thread that opens it, so a thread moved
//! into a namespace with setns(2) asks that namespace's tables. The socket is non-blocking: the
//! kernel queues the answer to a `GET` request before send(2) returns, so an empty queue means no
//! answer will come, and a look-up never hangs the caller.

use std::{io, net::Ipv4Addr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Where the kernel sends packets toward an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Output interface.
    pub ifindex: u32,
    /// The next hop when the address is not on the link (`None`: the address itself is the hop).
    pub gateway: Option<Ipv4Addr>,
}

/// A NETLINK_ROUTE socket of the opening thread's network namespace.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl Rtnl {
    /// # Errors
    /// The netlink socket cannot be opened, bound or made non-blocking.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        socket.set_non_blocking(true)?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one `GET` request and returns the kernel's answer; `Ok(None)` when it answers that no
    /// such object exists (`ENOENT`).
    fn ask(&mut self, msg: RouteNetlinkMessage) -> io::Result<Option<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST;
        hdr.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        loop {
            // WouldBlock here means the kernel sent nothing: an error for the caller.
            let (buf, _) = self.socket.recv_from_full()?;
            let mut off = 0;
            while off < buf.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..])
                    .map_err(invalid)?;
                let len = msg.header.length as usize;
                // Answers to an earlier request that failed half-way are skipped.
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::InnerMessage(m) => return Ok(Some(m)),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                Some(c) if c.get() == -libc::ENOENT => Ok(None),
                                Some(_) => Err(e.to_io()),
                                None => Ok(None),
                            };
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// The kernel's route toward `addr` (policy rules, every table, metrics: the decision the
    /// kernel itself takes for a packet to `addr`). `Ok(None)` when it is not a unicast route out of
    /// an interface (a local address, a blackhole).
    ///
    /// # Errors
    /// Netlink failures, an answer that does not parse, or no route (`ENETUNREACH`).
    pub fn route_to(&mut self, addr: Ipv4Addr) -> io::Result<Option<Route>> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 32;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(addr)));
        Ok(match self.ask(RouteNetlinkMessage::GetRoute(m))? {
            Some(RouteNetlinkMessage::NewRoute(r)) => route_of(&r),
            _ => None,
        })
    }

    /// The MAC address of neighbour `addr` on interface `ifindex`, when the entry is complete.
    ///
    /// # Errors
    /// Netlink failures or an answer that does not parse.
    pub fn neighbour(&mut self, ifindex: u32, addr: Ipv4Addr) -> io::Result<Option<[u8; 6]>> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = ifindex;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        Ok(match self.ask(RouteNetlinkMessage::GetNeighbour(m))? {
            Some(RouteNetlinkMessage::NewNeighbour(n)) => neighbour_mac(&n),
            _ => None,
        })
    }

    /// The MAC address of interface `ifindex`.
    ///
    /// # Errors
    /// Netlink failures or an answer that does not parse.
    pub fn link_mac(&mut self, ifindex: u32) -> io::Result<Option<[u8; 6]>> {
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        Ok(match self.ask(RouteNetlinkMessage::GetLink(m))? {
            Some(RouteNetlinkMessage::NewLink(l)) => link_mac(&l),
            _ => None,
        })
    }
}

/// The output interface and gateway of a unicast IPv4 route; `None` for any other kind of route,
/// or one whose next hop is not an IPv4 address (`RTA_VIA`).
pub fn route_of(r: &RouteMessage) -> Option<Route> {
    if r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut ifindex = None;
    let mut gateway = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => return None,
            _ => {}
        }
    }
    Some(Route {
        ifindex: ifindex?,
        gateway,
    })
}

/// The link-layer address of a neighbour entry that is complete, as the ARP table's `ATF_COM`:
/// REACHABLE, STALE, DELAY, PROBE, PERMANENT or NOARP (`NUD_VALID`), and a non-zero MAC. Not
/// INCOMPLETE or FAILED (no address yet / none found).
pub fn neighbour_mac(n: &NeighbourMessage) -> Option<[u8; 6]> {
    let complete = matches!(
        n.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    if !complete {
        return None;
    }
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => mac_of(b),
        _ => None,
    })
}

/// The Ethernet address of an interface (`IFLA_ADDRESS`).
pub fn link_mac(l: &LinkMessage) -> Option<[u8; 6]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

/// A 6-byte, non-zero MAC address.
fn mac_of(b: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(b).ok().filter(|m| *m != [0; 6])
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::neighbour::NeighbourHeader;

    use super::*;

    fn route(kind: RouteType, attrs: Vec<RouteAttribute>) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.kind = kind;
        r.attributes = attrs;
        r
    }

    #[test]
    fn a_unicast_route_gives_its_interface_and_gateway() {
        let gw = Ipv4Addr::new(198, 18, 0, 1);
        let on_link = route(RouteType::Unicast, vec![RouteAttribute::Oif(3)]);
        assert_eq!(
            route_of(&on_link),
            Some(Route {
                ifindex: 3,
                gateway: None
            })
        );
        let via = route(
            RouteType::Unicast,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet(gw)),
                RouteAttribute::Oif(4),
            ],
        );
        assert_eq!(
            route_of(&via),
            Some(Route {
                ifindex: 4,
                gateway: Some(gw)
            })
        );
        // A local address (answered through `lo`), a blackhole, a route without an interface.
        assert_eq!(
            route_of(&route(RouteType::Local, vec![RouteAttribute::Oif(1)])),
            None
        );
        assert_eq!(route_of(&route(RouteType::BlackHole, vec![])), None);
        assert_eq!(route_of(&route(RouteType::Unicast, vec![])), None);
    }

    fn neigh(state: NeighbourState, lladdr: &[u8]) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header = NeighbourHeader {
            family: AddressFamily::Inet,
            ifindex: 2,
            state,
            ..NeighbourHeader::default()
        };
        n.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(198, 18, 0, 11))),
            NeighbourAttribute::LinkLayerAddress(lladdr.to_vec()),
        ];
        n
    }

    #[test]
    fn only_complete_neighbours_give_a_mac() {
        let mac = [2, 0, 0, 0, 0, 0x0b];
        for ok in [
            NeighbourState::Reachable,
            NeighbourState::Stale,
            NeighbourState::Delay,
            NeighbourState::Probe,
            NeighbourState::Permanent,
        ] {
            assert_eq!(neighbour_mac(&neigh(ok, &mac)), Some(mac), "{ok:?}");
        }
        for not in [
            NeighbourState::Incomplete,
            NeighbourState::Failed,
            NeighbourState::None,
        ] {
            assert_eq!(neighbour_mac(&neigh(not, &mac)), None, "{not:?}");
        }
        assert_eq!(neighbour_mac(&neigh(NeighbourState::Stale, &[0; 6])), None);
        assert_eq!(
            neighbour_mac(&neigh(NeighbourState::Stale, &mac[..5])),
            None
        );
    }

    /// Needs no privilege: rtnetlink `GET`s are open to every user. The namespace the tests run in
    /// has a loopback interface whose addresses are local routes.
    #[test]
    fn the_kernel_answers_route_and_link_requests() {
        let mut nl = Rtnl::open().expect("a NETLINK_ROUTE socket");
        // SAFETY: a valid C string.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_ne!(lo, 0, "no lo interface");
        assert_eq!(nl.link_mac(lo).expect("RTM_GETLINK of lo"), Some([0; 6]));
        // 127.0.0.1 is a local address: no next hop.
        assert_eq!(
            nl.route_to(Ipv4Addr::LOCALHOST).expect("RTM_GETROUTE"),
            None
        );
        assert!(
            nl.neighbour(lo, Ipv4Addr::LOCALHOST)
                .expect("RTM_GETNEIGH")
                .is_none()
        );
        // No interface 0x7fff_fff0: the kernel's refusal is an error, not a hang.
        assert!(nl.link_mac(0x7fff_fff0).is_err());
    }
}
