//! Flow removal: flushing the flows of retired backends, the periodic GC of expired, stale and
//! orphaned entries with the released-connection accounting both need, and the reconciliation of
//! the session counters with the established flows that exist.
//!
//! Two forward tables (see `pgsvc_common::Flow`): `FLOWS` holds the established flows, each counted
//! once as a session of its service and backend while `closing == 0`; `FLOWS_PENDING` holds the
//! half-open and closing flows, which never count.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, MapData};
use pgsvc_common::{
    Flow, FlowKey, NatKey, NatRev, SockFlow, TCP_F_FIN, TCP_F_RST, TrafficStats, maps as map_names,
};

use super::{DatapathError, XdpDatapath, error::map_err, loader::monotonic_coarse_ns};
use crate::datapath::{
    api::{GcReport, Timeouts},
    keys,
};

type FlowMap = HashMap<MapData, FlowKey, Flow>;

/// A reverse entry without a flow is reclaimed this long after its last packet (the datapath
/// creates the reverse entry a moment before its flow; a backend retransmitting its SYN-ACK to an
/// evicted half-open flow refreshes it at most every few seconds).
const ORPHAN_GRACE_NS: u64 = 2_000_000_000;

/// A destination's SNAT allocation cursor (its port-0 reverse entry) is kept this long after its
/// last allocation. Once it is gone, the next SYN toward that server starts a new cursor at a
/// random port, which may be one the server still holds in TIME_WAIT from a connection it closed
/// first (Linux keeps that for 60 s, a constant): the new SYN reaches that state with its own
/// client's timestamp and sequence (both random per 4-tuple), so the server often answers it with
/// an ACK of the old connection, and the client loses its first SYN, often its first second.
/// Kept past those 60 s (plus the agent clock's lag), the cursor goes on after the last port it
/// gave, where the ports released longest ago are: a server that took no connection for a while
/// (a replica becoming primary in a switchover) gets its ports in order again, not at random.
const CURSOR_GRACE_NS: u64 = 65_000_000_000;

fn entries(map: &FlowMap) -> Vec<(FlowKey, Flow)> {
    map.iter().filter_map(Result::ok).collect()
}

/// Adds `n` to `map[id]` for every `(id, n)`.
pub(super) fn add_released(
    map: &mut aya::maps::Array<MapData, i64>,
    name: &'static str,
    released: StdHashMap<u32, i64>,
) -> Result<(), DatapathError> {
    for (id, n) in released {
        let cur = map.get(&id, 0).unwrap_or(0);
        map.set(id, cur.wrapping_add(n), 0)
            .map_err(map_err(name, "write"))?;
    }
    Ok(())
}

impl XdpDatapath {
    /// Entries in `FLOWS` (established flows).
    pub(super) fn established_count(&self) -> usize {
        self.maps.flows.keys().filter(Result::is_ok).count()
    }

    /// Entries in `FLOWS_PENDING` (half-open and closing flows).
    pub(super) fn pending_count(&self) -> usize {
        self.maps.flows_pending.keys().filter(Result::is_ok).count()
    }

    /// (name, entries, capacity) of `FLOWS`, `FLOWS_PENDING` and `NAT_REV`.
    pub(super) fn table_occupancy(&self) -> Vec<(&'static str, u64, u64)> {
        let max = self.opts.max_flows;
        vec![
            (
                "established",
                self.established_count() as u64,
                u64::from(max),
            ),
            (
                "pending",
                self.pending_count() as u64,
                u64::from(pgsvc_common::pending_capacity(max)),
            ),
            (
                "nat_rev",
                self.maps.nat_rev.keys().filter(Result::is_ok).count() as u64,
                u64::from(pgsvc_common::nat_rev_capacity(max)),
            ),
        ]
    }

    fn epoch_of(&self, backend_id: u32) -> u32 {
        self.maps
            .backends
            .get(&backend_id, 0)
            .map(|b| b.epoch)
            .unwrap_or(0)
    }

    /// Removes the flows of the given backend ids (by id and stale epoch) and their NAT entries.
    pub(super) fn flush_flows_of(&mut self, ids: &[u32]) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let snat = u32::from_ne_bytes(self.opts.snat_addr.octets());
        let mut released: StdHashMap<u32, i64> = StdHashMap::new();
        let mut flushed = 0;
        for pending in [false, true] {
            let map = if pending {
                &self.maps.flows_pending
            } else {
                &self.maps.flows
            };
            let victims: Vec<(FlowKey, Flow)> = entries(map)
                .into_iter()
                .filter(|(_, f)| ids.contains(&f.backend_id))
                .collect();
            flushed += victims.len();
            for (key, flow) in &victims {
                if self.epoch_of(flow.backend_id) == flow.backend_epoch {
                    // Still counted and not reset by an epoch change (cannot happen for flushed
                    // ids, which always get a new epoch first; kept for safety).
                    continue;
                }
                let _ = self.maps.nat_rev.remove(&keys::rev_key_of(key, flow, snat));
                let map = if pending {
                    &mut self.maps.flows_pending
                } else {
                    &mut self.maps.flows
                };
                if map.remove(key).is_ok() && !pending && flow.closing == 0 {
                    *released.entry(flow.svc_id).or_default() += 1;
                }
            }
        }
        let _ = add_released(
            &mut self.maps.svc_released,
            map_names::SVC_RELEASED,
            released,
        );
        flushed
    }

    /// One garbage-collection pass over the flow tables, then the counter reconciliation.
    ///
    /// # Errors
    /// Only when the released counters cannot be written.
    pub(super) fn collect_flows(&mut self, t: &Timeouts) -> Result<GcReport, DatapathError> {
        self.write_config()?;
        let now = monotonic_coarse_ns();
        let snat = u32::from_ne_bytes(self.opts.snat_addr.octets());
        let mut report = GcReport::default();
        let mut svc_rel: StdHashMap<u32, i64> = StdHashMap::new();
        let mut be_rel: StdHashMap<u32, i64> = StdHashMap::new();
        for pending in [false, true] {
            let flows = entries(if pending {
                &self.maps.flows_pending
            } else {
                &self.maps.flows
            });
            report.scanned += flows.len();
            for (key, flow) in &flows {
                let nat_key = keys::rev_key_of(key, flow, snat);
                let rev = self.maps.nat_rev.get(&nat_key, 0).ok();
                // The clock stands still while no agent runs: activity during that time is stamped
                // with the moment it stopped, so idleness is never counted from before this agent
                // started.
                // A half-open flow is idle while its client is: a backend retransmitting its
                // SYN-ACK to a spoofed source must not keep it alive.
                let half_open = pending && flow.closing == 0;
                let last = match rev {
                    Some(r) if !half_open => r.last_seen_ns.max(flow.last_seen_ns),
                    _ => flow.last_seen_ns,
                }
                .max(self.started_ns);
                let idle = now.saturating_sub(last);
                let stale = self.epoch_of(flow.backend_id) != flow.backend_epoch;
                let limit = if flow.closing != 0 {
                    t.closing_ns
                } else if pending {
                    // Half-open: the client never completed the handshake.
                    t.syn_ns
                } else {
                    t.idle_ns
                };
                if !stale && idle <= limit {
                    continue;
                }
                self.remove_nat_of(&nat_key, key);
                let map = if pending {
                    &mut self.maps.flows_pending
                } else {
                    &mut self.maps.flows
                };
                if map.remove(key).is_err() {
                    continue;
                }
                if stale {
                    report.stale += 1;
                } else {
                    report.expired += 1;
                }
                if !pending && flow.closing == 0 {
                    *svc_rel.entry(flow.svc_id).or_default() += 1;
                    if !stale {
                        *be_rel.entry(flow.backend_id).or_default() += 1;
                    }
                }
            }
        }
        add_released(
            &mut self.maps.svc_released,
            map_names::SVC_RELEASED,
            svc_rel,
        )?;
        add_released(
            &mut self.maps.backend_released,
            map_names::BACKEND_RELEASED,
            be_rel,
        )?;
        report.orphans = self.collect_orphans(now, ORPHAN_GRACE_NS.min(t.syn_ns));
        self.orphans_reclaimed += report.orphans as u64;
        report.reconciled = self.reconcile_counters()?;
        Ok(report)
    }

    /// Reverse entries whose flow is gone: a pending flow the LRU evicted (a SYN flood), or a race
    /// with the datapath's own removal. Kept `grace_ns` after their last packet. A destination's
    /// SNAT allocation cursor (port 0) is kept [`CURSOR_GRACE_NS`] after its last allocation and
    /// counts neither as an orphan nor as a port. Recounts the SNAT ports held per backend from
    /// what remains (local members' entries hold no SNAT port).
    fn collect_orphans(&mut self, now: u64, grace_ns: u64) -> usize {
        let revs: Vec<(NatKey, NatRev)> = self.maps.nat_rev.iter().filter_map(Result::ok).collect();
        let mut n = 0;
        let mut held = Vec::with_capacity(revs.len());
        for (k, r) in revs {
            let cursor = Self::is_snat_cursor(&k);
            let fk = keys::flow_key_of(&r);
            let grace = if cursor { CURSOR_GRACE_NS } else { grace_ns };
            if now.saturating_sub(r.last_seen_ns.max(self.started_ns)) > grace
                && self.maps.flows.get(&fk, 0).is_err()
                && self.maps.flows_pending.get(&fk, 0).is_err()
                && self.maps.nat_rev.remove(&k).is_ok()
            {
                // An ended connection's entry (kept for its SNAT port's quiet time) was not
                // evicted; neither was a cursor.
                n += usize::from(!cursor && r.backend_flags & (TCP_F_FIN | TCP_F_RST) == 0);
            } else if !cursor && !keys::is_local_rev(&k, &r) {
                held.push(r);
            }
        }
        self.count_snat_ports(held.iter());
        n
    }

    /// Sets each service's and backend's released counter so that its open connections equal
    /// the established flows that exist for it, whatever happened before (an older agent's leak, a
    /// lost race). A counter is only corrected when its flow activity (sessions opened and closed)
    /// stood still while the table was counted, so that a busy service is never miscorrected;
    /// returns how many counters were corrected.
    fn reconcile_counters(&mut self) -> Result<usize, DatapathError> {
        let svc_ids: Vec<u32> = self.services.values().map(|e| e.id).collect();
        let be_ids: Vec<(u32, u32)> = self
            .services
            .values()
            .flat_map(|e| e.backends.values().map(|b| (b.id, b.epoch)))
            .collect();
        let svc_before: Vec<(i64, u64)> = svc_ids.iter().map(|&id| self.svc_activity(id)).collect();
        let be_before: Vec<(i64, u64)> = be_ids
            .iter()
            .map(|&(id, _)| self.backend_activity(id))
            .collect();
        let mut per_svc: StdHashMap<u32, i64> = StdHashMap::new();
        let mut per_be: StdHashMap<u32, i64> = StdHashMap::new();
        for (_, f) in entries(&self.maps.flows) {
            if f.closing != 0 {
                continue;
            }
            *per_svc.entry(f.svc_id).or_default() += 1;
            if self.epoch_of(f.backend_id) == f.backend_epoch {
                *per_be.entry(f.backend_id).or_default() += 1;
            }
        }
        // Local clients' sessions (cgroup connect4) count in the same counters until their socket
        // is released: they are sessions that exist too.
        for f in self.sock_flows()? {
            *per_svc.entry(f.svc_id).or_default() += 1;
            if self.epoch_of(f.backend_id) == f.backend_epoch {
                *per_be.entry(f.backend_id).or_default() += 1;
            }
        }
        let mut fixed = 0;
        for (i, &id) in svc_ids.iter().enumerate() {
            let (opened, moved) = self.svc_activity(id);
            if (opened, moved) != svc_before[i] {
                continue;
            }
            let want = opened.wrapping_sub(per_svc.get(&id).copied().unwrap_or(0));
            if self.maps.svc_released.get(&id, 0).unwrap_or(0) != want {
                self.maps
                    .svc_released
                    .set(id, want, 0)
                    .map_err(map_err(map_names::SVC_RELEASED, "write"))?;
                fixed += 1;
            }
        }
        for (i, &(id, epoch)) in be_ids.iter().enumerate() {
            let (opened, moved) = self.backend_activity(id);
            if (opened, moved) != be_before[i] || self.epoch_of(id) != epoch {
                continue;
            }
            let want = opened.wrapping_sub(per_be.get(&id).copied().unwrap_or(0));
            if self.maps.backend_released.get(&id, 0).unwrap_or(0) != want {
                self.maps
                    .backend_released
                    .set(id, want, 0)
                    .map_err(map_err(map_names::BACKEND_RELEASED, "write"))?;
                fixed += 1;
            }
        }
        Ok(fixed)
    }

    /// The sessions of clients on the node itself (`SOCK_FLOWS`, by socket cookie).
    pub(super) fn sock_flows(&self) -> Result<Vec<SockFlow>, DatapathError> {
        let Some(map) = self.ebpf.map(map_names::SOCK_FLOWS) else {
            return Ok(Vec::new());
        };
        let flows: HashMap<&MapData, u64, SockFlow> =
            HashMap::try_from(map).map_err(map_err(map_names::SOCK_FLOWS, "open"))?;
        Ok(flows
            .iter()
            .filter_map(Result::ok)
            .map(|(_, f)| f)
            .collect())
    }

    /// A service's opened counter and its sessions opened + closed (changes with any activity).
    fn svc_activity(&self, id: u32) -> (i64, u64) {
        let opened = self
            .maps
            .svc_runtime
            .get(&id, 0)
            .map(|r| r.conns)
            .unwrap_or(0);
        (opened, activity(&Self::sum_stats(&self.maps.svc_stats, id)))
    }

    fn backend_activity(&self, id: u32) -> (i64, u64) {
        let opened = self.maps.backend_conns.get(&id, 0).unwrap_or(0);
        (
            opened,
            activity(&Self::sum_stats(&self.maps.backend_stats, id)),
        )
    }
}

fn activity(s: &TrafficStats) -> u64 {
    s.new_flows.wrapping_add(s.closed_flows)
}

#[cfg(feature = "test-hooks")]
impl XdpDatapath {
    /// Adds `phantom` sessions to a service's and its backends' counters without any flow, as a
    /// leak of an older version would have (tests of the GC's reconciliation).
    pub fn leak_sessions(&mut self, service: &str, phantom: i64) -> Result<(), DatapathError> {
        let e = self
            .services
            .get(service)
            .ok_or_else(|| DatapathError::UnknownService {
                service: service.to_owned(),
            })?;
        let (id, be_ids): (u32, Vec<u32>) = (e.id, e.backends.values().map(|b| b.id).collect());
        let cur = self.maps.svc_released.get(&id, 0).unwrap_or(0);
        self.maps
            .svc_released
            .set(id, cur - phantom, 0)
            .map_err(map_err(map_names::SVC_RELEASED, "write"))?;
        for b in be_ids {
            let cur = self.maps.backend_released.get(&b, 0).unwrap_or(0);
            self.maps
                .backend_released
                .set(b, cur - phantom, 0)
                .map_err(map_err(map_names::BACKEND_RELEASED, "write"))?;
        }
        Ok(())
    }
}
