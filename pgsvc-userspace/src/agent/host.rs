//! Host networking the agent does around the datapath: the interface's IPv4 addresses (the SNAT
//! source), the VIP (added and removed through rtnetlink, [`super::netlink`]) and the kernel's
//! reserved ports (the SNAT range).

use std::net::Ipv4Addr;

use thiserror::Error;
use tracing::{info, warn};

use crate::datapath::{LocalScope, neigh};

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

#[derive(Debug, Error)]
pub enum HostError {
    #[error("reading {path}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reserving the SNAT ports in {path}")]
    Reserve {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("adding the VIP")]
    AddVip(#[source] super::netlink::NetlinkError),
    #[error(
        "server {server} at {addr} is an address of this node, but not on --iface {iface}: a local member is served only through the interface pgsvc is attached to (its replies are translated there); attach pgsvc to the interface that holds {addr}, or move the address to {iface}"
    )]
    LocalMemberOffIface {
        server: String,
        addr: Ipv4Addr,
        iface: String,
    },
}

/// Refuses a plan with a member whose address is local to this node but not on `iface`: its
/// replies would leave through another interface, past the TC program that translates them, so
/// the flows could never work. Checked at start, before anything is attached.
///
/// # Errors
/// [`HostError::LocalMemberOffIface`] for the first such server.
pub fn check_local_members<'a>(
    servers: impl IntoIterator<Item = (&'a str, Ipv4Addr)>,
    iface: &str,
) -> Result<(), HostError> {
    misplaced_member(servers, &ipv4_addrs(Some(iface)), &ipv4_addrs(None)).map_or(
        Ok(()),
        |(server, addr)| {
            Err(HostError::LocalMemberOffIface {
                server: server.to_owned(),
                addr,
                iface: iface.to_owned(),
            })
        },
    )
}

/// The first server at a node address (`all`) that is not an address of the interface (`on_iface`).
fn misplaced_member<'a>(
    servers: impl IntoIterator<Item = (&'a str, Ipv4Addr)>,
    on_iface: &[Ipv4Addr],
    all: &[Ipv4Addr],
) -> Option<(&'a str, Ipv4Addr)> {
    servers
        .into_iter()
        .find(|(_, a)| all.contains(a) && !on_iface.contains(a))
}

/// The first IPv4 address of `iface` other than `except` (the VIP).
pub fn first_ipv4(iface: &str, except: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    ipv4_addrs(Some(iface))
        .into_iter()
        .find(|a| Some(*a) != except)
}

fn interface_has(iface: &str, addr: Ipv4Addr) -> bool {
    ipv4_addrs(Some(iface)).contains(&addr)
}

/// What `ip: "*"` services accept on `iface`: frames to its MAC whose destination is one of the
/// node's IPv4 addresses (on any interface, as the kernel accepts them). `None` when the interface
/// is gone.
pub fn local_scope(iface: &str) -> Option<LocalScope> {
    let (_, if_mac) = neigh::interface(iface)?;
    Some(LocalScope {
        if_mac,
        vip_mac: None,
        addrs: ipv4_addrs(None),
    })
}

/// Every IPv4 address of the node, on any interface.
#[must_use]
pub fn node_addrs() -> Vec<Ipv4Addr> {
    ipv4_addrs(None)
}

/// IPv4 addresses of `iface` (of every interface: `None`), in the kernel's order.
fn ipv4_addrs(iface: Option<&str>) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    // SAFETY: getifaddrs/freeifaddrs pair; every pointer is checked before use.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            if iface.is_some_and(|i| name != i) {
                continue;
            }
            let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            found.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
        libc::freeifaddrs(list);
    }
    found
}

/// Keeps the kernel's own ephemeral ports (health checks!) out of the SNAT range.
pub fn reserve_ports(range: &std::ops::RangeInclusive<u16>) -> Result<(), HostError> {
    let path = RESERVED_PORTS;
    let current =
        std::fs::read_to_string(path).map_err(|source| HostError::Read { path, source })?;
    let want = format!("{}-{}", range.start(), range.end());
    let current = current.trim();
    if current.split(',').any(|r| r == want) {
        return Ok(());
    }
    let value = if current.is_empty() {
        want
    } else {
        format!("{current},{want}")
    };
    std::fs::write(path, &value).map_err(|source| HostError::Reserve { path, source })
}

/// Adds the VIP; `false` when it was already on the interface (then it is left there on exit).
///
/// # Errors
/// The interface is gone or the kernel refused the address.
pub async fn add_vip(iface: &str, addr: Ipv4Addr, prefix: u8) -> Result<bool, HostError> {
    let cidr = format!("{addr}/{prefix}");
    if interface_has(iface, addr) {
        info!(vip = cidr, iface, "VIP already present");
        return Ok(false);
    }
    match super::netlink::add_addr(iface, addr, prefix).await {
        Ok(true) => {
            info!(vip = cidr, iface, "VIP added");
            Ok(true)
        }
        Ok(false) => {
            info!(
                vip = cidr,
                iface, "VIP already present; leaving it as it is on exit"
            );
            Ok(false)
        }
        Err(e) => Err(HostError::AddVip(e)),
    }
}

/// Removes the VIP the agent added.
pub async fn remove_vip(iface: &str, addr: Ipv4Addr, prefix: u8) {
    let cidr = format!("{addr}/{prefix}");
    match super::netlink::del_addr(iface, addr, prefix).await {
        Ok(true) => info!(vip = cidr, iface, "VIP removed"),
        Ok(false) => warn!(vip = cidr, iface, "the VIP was no longer on the interface"),
        Err(e) => warn!(vip = cidr, iface, error = %e, "removing the VIP failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_member_must_be_on_the_interface() {
        let node = Ipv4Addr::new(198, 18, 0, 11);
        let other_nic = Ipv4Addr::new(198, 18, 1, 11);
        let remote = Ipv4Addr::new(198, 18, 0, 12);
        let on_iface = [node];
        let all = [Ipv4Addr::LOCALHOST, node, other_nic];
        let ok = [("pg-test-1", node), ("pg-test-2", remote)];
        assert_eq!(misplaced_member(ok, &on_iface, &all), None);
        let bad = [("pg-test-1", node), ("pg-test-3", other_nic)];
        assert_eq!(
            misplaced_member(bad, &on_iface, &all),
            Some(("pg-test-3", other_nic))
        );
        let lo = [("pg-test-1", Ipv4Addr::LOCALHOST)];
        assert_eq!(
            misplaced_member(lo, &on_iface, &all),
            Some(("pg-test-1", Ipv4Addr::LOCALHOST))
        );
    }
}
