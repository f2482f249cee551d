//! SNAT ports seen from the agent: how many each backend holds (counted at every GC pass, which
//! reads the whole reverse table anyway), and the GC's removal of a reverse entry that the datapath
//! may have handed to a new connection meanwhile (it takes over the ports of finished connections;
//! see pgsvc-ebpf/src/snat.rs).

use std::collections::HashMap as StdHashMap;

use pgsvc_common::{FlowKey, NatKey, NatRev};

use super::{DatapathError, XdpDatapath};
use crate::datapath::keys;

impl XdpDatapath {
    /// Recounts the ports held per backend slot from the reverse entries that remain. The entry of
    /// port 0 is a destination's allocation cursor, not a port.
    pub(super) fn count_snat_ports<'a>(&mut self, remaining: impl Iterator<Item = &'a NatRev>) {
        let mut counts: StdHashMap<u32, u64> = StdHashMap::new();
        for rev in remaining {
            *counts.entry(rev.backend_id).or_default() += 1;
        }
        self.snat_in_use = counts;
    }

    /// Whether `key` is a destination's allocation cursor rather than a port.
    pub(super) fn is_snat_cursor(key: &NatKey) -> bool {
        key.snat_port == 0
    }

    /// Removes the reverse entry `key` of the flow `flow` — unless the datapath gave its port to
    /// another connection since the GC read the flow.
    pub(super) fn remove_nat_of(&mut self, key: &NatKey, flow: &FlowKey) {
        match self.maps.nat_rev.get(key, 0) {
            Ok(rev) if keys::flow_key_of(&rev) != *flow => {}
            _ => {
                let _ = self.maps.nat_rev.remove(key);
            }
        }
    }

    /// SNAT ports held per server of a service (as of the last GC pass).
    pub(super) fn snat_ports_by_backend(
        &self,
        service: &str,
    ) -> Result<Vec<(String, u64)>, DatapathError> {
        let e = self
            .services
            .get(service)
            .ok_or_else(|| DatapathError::UnknownService {
                service: service.to_owned(),
            })?;
        Ok(e.backends
            .iter()
            .map(|(name, b)| {
                (
                    name.clone(),
                    self.snat_in_use.get(&b.id).copied().unwrap_or(0),
                )
            })
            .collect())
    }
}
