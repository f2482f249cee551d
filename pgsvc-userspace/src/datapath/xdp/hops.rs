//! Next hops (interface and MACs) of the backends: resolved from the kernel's neighbour table,
//! or set by hand in tests.

use std::net::Ipv4Addr;

use pgsvc_common::maps as map_names;

use super::{DatapathError, XdpDatapath, error::map_err};
use crate::datapath::neigh::{self, NextHop};

impl XdpDatapath {
    /// Uses `hop` for `addr` instead of the kernel's neighbour table.
    #[cfg(feature = "test-hooks")]
    pub fn set_static_next_hop(&mut self, addr: Ipv4Addr, hop: NextHop) {
        self.static_hops.insert(addr, hop);
    }

    pub(super) fn resolve_hop(&self, addr: Ipv4Addr) -> Option<NextHop> {
        if let Some(h) = self.static_hops.get(&addr) {
            return Some(*h);
        }
        let hop = neigh::resolve(addr);
        if hop.is_none() {
            neigh::poke(addr);
        }
        hop
    }

    /// Asks the kernel to resolve every backend's neighbour and waits (bounded) until all are known,
    /// then writes them. Saves the first clients a SYN retransmission.
    pub fn warm_next_hops(&mut self, timeout: std::time::Duration) -> Result<usize, DatapathError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let missing = self
                .services
                .values()
                .flat_map(|s| s.backends.values())
                .filter(|b| self.resolve_hop(b.spec.addr).is_none())
                .count();
            if missing == 0 || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.rewrite_next_hops()
    }

    /// Re-resolves next hops of every backend and rewrites those that changed. Called periodically:
    /// neighbours appear (the health checks resolve them) and change.
    pub(super) fn rewrite_next_hops(&mut self) -> Result<usize, DatapathError> {
        let mut writes = Vec::new();
        for svc in self.services.values() {
            for be in svc.backends.values() {
                let hop = self.resolve_hop(be.spec.addr);
                // A neighbour that vanished from the table keeps its last known MAC.
                if hop.is_some() && hop != be.hop {
                    writes.push((svc.id, be.spec.name.clone(), hop));
                }
            }
        }
        let changed = writes.len();
        for (svc_id, name, hop) in writes {
            let Some(svc) = self.services.values_mut().find(|s| s.id == svc_id) else {
                continue;
            };
            let Some(be) = svc.backends.get_mut(&name) else {
                continue;
            };
            be.hop = hop;
            let mut value = Self::backend_value(svc_id, be.epoch, &be.spec, hop);
            value.flags =
                super::tc::local_flag(value.flags, self.local_addrs.contains(&be.spec.addr));
            self.maps
                .backends
                .set(be.id, value, 0)
                .map_err(map_err(map_names::BACKENDS, "write"))?;
        }
        Ok(changed)
    }
}
