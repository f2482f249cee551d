//! The one place userspace builds map keys (`ServiceKey`, `FlowKey`, `NatKey`) and derives open
//! connections from the opened/released counter pair. The XDP program builds the same values in
//! its own crate; keeping each rule in one function per side keeps the two easy to compare.

use std::net::Ipv4Addr;

#[cfg(test)]
use pgsvc_common::IPPROTO_TCP;
use pgsvc_common::{Flow, FlowKey, NatKey, NatRev, ServiceKey};

use super::api::ServiceSpec;

/// The listen key of a TCP service at `addr` (`None`: the wildcard) and `port` (host order).
#[must_use]
pub fn service_key(addr: Option<Ipv4Addr>, port: u16) -> ServiceKey {
    match addr {
        Some(a) => ServiceKey::exact(u32::from_ne_bytes(a.octets()), port.to_be()),
        None => ServiceKey::wildcard(port.to_be()),
    }
}

/// Every listen key of a service: one per address, or the wildcard key.
#[must_use]
pub fn service_keys(spec: &ServiceSpec) -> Vec<ServiceKey> {
    if spec.addrs.is_empty() {
        return vec![service_key(None, spec.port)];
    }
    spec.addrs
        .iter()
        .map(|a| service_key(Some(*a), spec.port))
        .collect()
}

/// The forward key of the flow a reverse entry belongs to.
#[must_use]
pub fn flow_key_of(rev: &NatRev) -> FlowKey {
    rev.flow_key()
}

/// The reverse key of a flow translated to the source address `snat` (network order).
#[must_use]
pub fn nat_key_of(flow: &Flow, snat: u32) -> NatKey {
    NatKey::of_flow(flow, snat)
}

/// The reverse key of the flow `key` → `flow`: full-NAT (`snat`, network order) or local (the
/// member's reply to the client).
#[must_use]
pub fn rev_key_of(key: &FlowKey, flow: &Flow, snat: u32) -> NatKey {
    NatKey::for_flow(key, flow, snat)
}

/// Whether the reverse entry `key` → `rev` belongs to a local member's flow (keyed by the member's
/// reply to the client itself, see [`rev_key_of`]): it holds no SNAT port. A full-NAT entry is
/// keyed by the SNAT address, which is never a client's.
#[must_use]
pub fn is_local_rev(key: &NatKey, rev: &NatRev) -> bool {
    key.snat_addr == rev.client_addr && key.snat_port == rev.client_port
}

/// Open connections from a pair of counters: opened by the datapath, released by either side
/// (never negative: a release may land before the open it pairs with is summed).
#[must_use]
pub fn open_conns(opened: i64, released: i64) -> u64 {
    pgsvc_common::open_conns(opened, released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connections_never_go_negative() {
        assert_eq!(open_conns(5, 2), 3);
        assert_eq!(open_conns(2, 5), 0);
    }

    #[test]
    fn wildcard_and_exact_keys() {
        let mut spec = ServiceSpec {
            addrs: Vec::new(),
            port: 5433,
            algorithm: pgsvc_common::Algorithm::RoundRobin,
            maxconn: 0,
            shutdown_sessions: false,
        };
        let keys = service_keys(&spec);
        assert_eq!(keys.len(), 1);
        assert_eq!((keys[0].addr, u16::from_be(keys[0].port)), (0, 5433));
        spec.addrs = vec![Ipv4Addr::new(198, 18, 0, 3), Ipv4Addr::new(198, 18, 0, 4)];
        let keys = service_keys(&spec);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].addr.to_ne_bytes(), [198, 18, 0, 4]);
        assert_eq!(keys[1].proto, IPPROTO_TCP);
    }

    #[test]
    fn local_reverse_entries_are_told_from_full_nat_ones() {
        let fk = FlowKey::of_packet(0x0a00_0001, 0x0a00_0003, 1234u16.to_be(), 5433u16.to_be());
        let mut flow = Flow {
            backend_addr: 0x0a00_0009,
            backend_port: 6432u16.to_be(),
            snat_port: 40000u16.to_be(),
            ..Flow::default()
        };
        let rev = NatRev {
            client_addr: fk.client_addr,
            client_port: fk.client_port,
            vip: fk.vip,
            vport: fk.vport,
            ..NatRev::default()
        };
        let snat = 0x0a00_0002;
        assert!(!is_local_rev(&rev_key_of(&fk, &flow, snat), &rev));
        flow.snat_port = 0;
        assert!(is_local_rev(&rev_key_of(&fk, &flow, snat), &rev));
    }
}
