//! Flow removal: flushing the flows of retired backends, and the periodic GC of expired, stale and
//! orphaned entries, with the released-connection accounting both need.

use std::collections::HashMap as StdHashMap;

use pgsvc_common::{Flow, FlowKey, NatKey, NatRev, TCP_F_ACK, maps as map_names};

use super::{DatapathError, XdpDatapath, error::map_err, loader::monotonic_coarse_ns};
use crate::datapath::{
    api::{GcReport, Timeouts},
    keys,
};

impl XdpDatapath {
    /// Removes the flows of the given backend ids (by id and stale epoch) and their NAT entries.
    pub(super) fn flush_flows_of(&mut self, ids: &[u32]) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let victims: Vec<(FlowKey, Flow)> = self
            .maps
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, f)| ids.contains(&f.backend_id))
            .collect();
        let snat = u32::from_ne_bytes(self.opts.snat_addr.octets());
        let mut released: StdHashMap<u32, i64> = StdHashMap::new();
        for (key, flow) in &victims {
            let current = self
                .maps
                .backends
                .get(&flow.backend_id, 0)
                .map(|b| b.epoch)
                .unwrap_or(0);
            if current == flow.backend_epoch {
                // Still counted and not reset by an epoch change (cannot happen for flushed ids, which
                // always get a new epoch first; kept for safety).
                continue;
            }
            let _ = self.maps.nat_rev.remove(&keys::nat_key_of(flow, snat));
            if self.maps.flows.remove(key).is_ok() && flow.closing == 0 {
                *released.entry(flow.svc_id).or_default() += 1;
            }
        }
        for (svc_id, n) in released {
            let cur = self.maps.svc_released.get(&svc_id, 0).unwrap_or(0);
            let _ = self.maps.svc_released.set(svc_id, cur + n, 0);
        }
        victims.len()
    }

    /// One garbage-collection pass over the flow tables.
    ///
    /// # Errors
    /// Only when the released counters cannot be written.
    pub(super) fn collect_flows(&mut self, t: &Timeouts) -> Result<GcReport, DatapathError> {
        self.write_config()?;
        let now = monotonic_coarse_ns();
        let snat = u32::from_ne_bytes(self.opts.snat_addr.octets());
        let mut report = GcReport::default();
        let flows: Vec<(FlowKey, Flow)> = self.maps.flows.iter().filter_map(Result::ok).collect();
        report.scanned = flows.len();
        let mut svc_rel: StdHashMap<u32, i64> = StdHashMap::new();
        let mut be_rel: StdHashMap<u32, i64> = StdHashMap::new();
        for (key, flow) in &flows {
            let nat_key = keys::nat_key_of(flow, snat);
            let rev = self.maps.nat_rev.get(&nat_key, 0).ok();
            // The clock stands still while no agent runs: activity during that time is stamped with
            // the moment it stopped, so idleness is never counted from before this agent started.
            let last = rev
                .map_or(flow.last_seen_ns, |r| r.last_seen_ns.max(flow.last_seen_ns))
                .max(self.started_ns);
            let idle = now.saturating_sub(last);
            let epoch = self
                .maps
                .backends
                .get(&flow.backend_id, 0)
                .map(|b| b.epoch)
                .unwrap_or(0);
            let stale = epoch != flow.backend_epoch;
            let answered = rev.is_some_and(|r| r.backend_flags & TCP_F_ACK != 0);
            let expire = if stale {
                true
            } else if flow.closing != 0 {
                idle > t.closing_ns
            } else if !answered {
                idle > t.syn_ns
            } else {
                idle > t.idle_ns
            };
            if !expire {
                continue;
            }
            self.remove_nat_of(&nat_key, key);
            if self.maps.flows.remove(key).is_err() {
                continue;
            }
            if stale {
                report.stale += 1;
            } else {
                report.expired += 1;
            }
            if flow.closing == 0 {
                *svc_rel.entry(flow.svc_id).or_default() += 1;
                if !stale {
                    *be_rel.entry(flow.backend_id).or_default() += 1;
                }
            }
        }
        for (id, n) in svc_rel {
            let cur = self.maps.svc_released.get(&id, 0).unwrap_or(0);
            self.maps
                .svc_released
                .set(id, cur + n, 0)
                .map_err(map_err(map_names::SVC_RELEASED, "write"))?;
        }
        for (id, n) in be_rel {
            let cur = self.maps.backend_released.get(&id, 0).unwrap_or(0);
            self.maps
                .backend_released
                .set(id, cur + n, 0)
                .map_err(map_err(map_names::BACKEND_RELEASED, "write"))?;
        }
        // Reverse entries whose flow is gone (a race with the datapath's own removal, or LRU eviction).
        let revs: Vec<(NatKey, NatRev)> = self.maps.nat_rev.iter().filter_map(Result::ok).collect();
        let mut held = Vec::with_capacity(revs.len());
        for (k, r) in revs {
            let fk = keys::flow_key_of(&r);
            if self.maps.flows.get(&fk, 0).is_err()
                && now.saturating_sub(r.last_seen_ns) > 5_000_000_000
            {
                let _ = self.maps.nat_rev.remove(&k);
                report.orphans += usize::from(!Self::is_snat_cursor(&k));
            } else if !Self::is_snat_cursor(&k) {
                held.push(r);
            }
        }
        self.count_snat_ports(held.iter());
        Ok(report)
    }
}
