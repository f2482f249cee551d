//! Port-conflict refusal: on a node that still runs HAProxy (or anything else listening on a service
//! port), starting pgsvc would silently take that listener's traffic. So `pgsvc run` first lists the
//! TCP listeners of its network namespace and refuses when one sits on a service port at an address
//! the service covers — naming the port and the process — unless `--takeover` is given.
//!
//! The listeners come from a netlink sock_diag dump of the TCP sockets in state LISTEN, IPv4 and
//! IPv6 (the kernel's socket tables of the agent's namespace, through the agent's sock_diag client
//! [`SockDiag`]), with each socket's inode; the owning process from the `socket:[inode]` links
//! under `/proc/*/fd` (netlink has no socket → process map). A bind probe was not used: it cannot
//! see a listener bound with SO_REUSEPORT, nor name its owner.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use tracing::warn;

use crate::{
    datapath::sockets::{SockDiag, TcpListening},
    plan::{BindAddr, ServicePlan},
};

/// A TCP socket in LISTEN state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// IPv4 address (or the IPv4 in an IPv4-mapped IPv6 address); `None` = every address
    /// (0.0.0.0 or ::).
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    pub inode: u64,
}

/// A service port already taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub service: String,
    pub port: u16,
    pub listener: Option<Ipv4Addr>,
    /// `name[pid]` of the owning process, when found.
    pub process: Option<String>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self
            .listener
            .map_or_else(|| "*".to_owned(), |a| a.to_string());
        write!(
            f,
            "port {} of service {} is already taken by a listener on {at}:{}",
            self.port, self.service, self.port
        )?;
        if let Some(p) = &self.process {
            write!(f, " ({p})")?;
        }
        Ok(())
    }
}

/// Where an IPv4 client can reach a listener bound at `addr`: `Some(None)` for every address
/// (`0.0.0.0`, `::`, `::ffff:0.0.0.0`), `Some(Some(v4))` for an IPv4 or IPv4-mapped address, `None`
/// for any other IPv6 address (no IPv4 client reaches it).
pub fn ipv4_reach(addr: IpAddr) -> Option<Option<Ipv4Addr>> {
    let v4 = match addr {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) if a.is_unspecified() => Ipv4Addr::UNSPECIFIED,
        IpAddr::V6(a) => a.to_ipv4_mapped()?,
    };
    Some((!v4.is_unspecified()).then_some(v4))
}

/// The listeners an IPv4 client can reach among sock_diag's answers.
pub fn reachable(sockets: &[TcpListening]) -> Vec<Listener> {
    sockets
        .iter()
        .filter_map(|s| {
            Some(Listener {
                addr: ipv4_reach(s.addr)?,
                port: s.port,
                inode: u64::from(s.inode),
            })
        })
        .collect()
}

/// Where a service listens: (name, address, port).
pub type Bound = (String, BindAddr, u16);

/// Where `services` listen.
pub fn bounds(services: &[ServicePlan]) -> Vec<Bound> {
    services
        .iter()
        .map(|s| (s.name.clone(), s.ip, s.port))
        .collect()
}

/// The listeners that take a port of `services`.
pub fn conflicts(services: &[Bound], listeners: &[Listener]) -> Vec<Conflict> {
    let mut out = Vec::new();
    for (name, ip, port) in services {
        for l in listeners.iter().filter(|l| l.port == *port) {
            let covered = match (ip, l.addr) {
                (BindAddr::Any, _) | (BindAddr::Addr(_), None) => true,
                (BindAddr::Addr(a), Some(b)) => *a == b,
            };
            if covered && !out.iter().any(|c: &Conflict| c.port == *port) {
                out.push(Conflict {
                    service: name.clone(),
                    port: *port,
                    listener: l.addr,
                    process: owner(l.inode),
                });
            }
        }
    }
    out
}

/// This namespace's TCP listeners (IPv4 and IPv6 sockets). A family that cannot be listed is
/// logged and skipped: the check then sees less, as it would without the netlink socket.
pub fn listeners() -> Vec<Listener> {
    let mut diag = match SockDiag::open() {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot list the TCP listeners (sock_diag): port conflicts go unchecked");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for ipv6 in [false, true] {
        match diag.tcp_listeners(ipv6) {
            Ok(s) => out.extend(reachable(&s)),
            Err(e) => warn!(ipv6, error = %e, "cannot list the TCP listeners (sock_diag)"),
        }
    }
    out
}

/// `name[pid]` of a process holding socket `inode`.
fn owner(inode: u64) -> Option<String> {
    let needle = format!("socket:[{inode}]");
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = proc_entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        let found = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == needle.as_str())
        });
        if found {
            let comm = std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
            return Some(format!("{}[{pid}]", comm.trim()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_to_what_an_ipv4_client_reaches() {
        let vip = Ipv4Addr::new(198, 18, 0, 3);
        let v6 = |s: &str| IpAddr::V6(s.parse().expect("an IPv6 address"));
        assert_eq!(ipv4_reach(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), Some(None));
        assert_eq!(ipv4_reach(IpAddr::V4(vip)), Some(Some(vip)));
        assert_eq!(ipv4_reach(v6("::")), Some(None));
        assert_eq!(ipv4_reach(v6("::ffff:198.18.0.3")), Some(Some(vip)));
        assert_eq!(ipv4_reach(v6("::ffff:0.0.0.0")), Some(None));
        assert_eq!(ipv4_reach(v6("fe80::1")), None);
        assert_eq!(ipv4_reach(v6("::1")), None);
        let socks = [
            TcpListening {
                addr: v6("fe80::1"),
                port: 5440,
                inode: 3,
            },
            TcpListening {
                addr: v6("::ffff:198.18.0.3"),
                port: 5439,
                inode: 4,
            },
        ];
        assert_eq!(
            reachable(&socks),
            vec![Listener {
                addr: Some(vip),
                port: 5439,
                inode: 4
            }]
        );
    }

    /// Needs no privilege (a sock_diag dump lists every socket of the namespace). The listeners of
    /// this test process are found in both families, with inodes that name this process.
    #[test]
    fn this_process_listeners_are_found_with_their_owner() {
        let me = format!("[{}]", std::process::id());
        let l4 = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("an IPv4 listener");
        let p4 = l4.local_addr().expect("its address").port();
        let found = listeners();
        let l = found
            .iter()
            .find(|l| l.port == p4)
            .expect("the IPv4 listener is listed");
        assert_eq!(l.addr, Some(Ipv4Addr::LOCALHOST));
        assert!(
            owner(l.inode).is_some_and(|o| o.ends_with(&me)),
            "owner of {l:?}"
        );
        // IPv6 may be off where the tests run; then only the IPv4 table is checked.
        let Ok(l6) = std::net::TcpListener::bind("[::]:0") else {
            eprintln!("skip: no IPv6 listener possible here");
            return;
        };
        let p6 = l6.local_addr().expect("its address").port();
        let l1 = std::net::TcpListener::bind("[::1]:0").expect("an IPv6 loopback listener");
        let p1 = l1.local_addr().expect("its address").port();
        let found = listeners();
        let l = found
            .iter()
            .find(|l| l.port == p6)
            .expect("the IPv6 wildcard listener is listed");
        assert_eq!(l.addr, None);
        assert!(
            owner(l.inode).is_some_and(|o| o.ends_with(&me)),
            "owner of {l:?}"
        );
        // ::1 is not reachable over IPv4.
        assert!(!found.iter().any(|l| l.port == p1));
    }

    fn service(name: &str, ip: BindAddr, port: u16) -> Bound {
        (name.to_owned(), ip, port)
    }

    #[test]
    fn a_listener_conflicts_where_the_service_listens() {
        let vip = Ipv4Addr::new(198, 18, 0, 3);
        let other = Ipv4Addr::new(198, 18, 0, 4);
        let l = |addr, port| Listener {
            addr,
            port,
            inode: 0,
        };
        let star = [service("pg-test-primary", BindAddr::Any, 5433)];
        // `*` services: any listener on the port.
        assert_eq!(conflicts(&star, &[l(Some(other), 5433)]).len(), 1);
        assert_eq!(conflicts(&star, &[l(None, 5433)]).len(), 1);
        assert!(conflicts(&star, &[l(None, 5434)]).is_empty());
        // A service on the VIP: a listener on the VIP or on every address, not on another one.
        let exact = [service("pg-test-primary", BindAddr::Addr(vip), 5433)];
        assert_eq!(conflicts(&exact, &[l(Some(vip), 5433)]).len(), 1);
        assert_eq!(conflicts(&exact, &[l(None, 5433)]).len(), 1);
        assert!(conflicts(&exact, &[l(Some(other), 5433)]).is_empty());
        let c = &conflicts(&star, &[l(None, 5433)])[0];
        assert_eq!(
            c.to_string(),
            "port 5433 of service pg-test-primary is already taken by a listener on *:5433"
        );
    }
}
