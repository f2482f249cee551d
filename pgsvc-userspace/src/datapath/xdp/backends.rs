//! Backend sets: each server's slot value, and the active set written to the idle generation and
//! flipped in one update. Flows of servers that left, changed address, or went down with
//! shutdown-sessions are flushed here.

use std::collections::BTreeMap;

use pgsvc_common::{
    Algorithm, BE_F_ALLOCATED, BE_F_UP, Backend, BackendSet, GENERATIONS, MAX_ACTIVE,
    maps as map_names,
};
use tracing::{debug, info};

use super::{BackendEntry, DatapathError, ServiceEntry, XdpDatapath, error::map_err};
use crate::{
    balance::sessions_to_shutdown,
    datapath::{
        api::BackendSpec,
        neigh::NextHop,
        ring::{RingMember, maglev_table, rr_sequence},
    },
};

impl XdpDatapath {
    /// [`crate::datapath::Datapath::set_backends`].
    pub(super) fn write_backends(
        &mut self,
        service: &str,
        backends: &[BackendSpec],
    ) -> Result<(), DatapathError> {
        let mut entry =
            self.services
                .remove(service)
                .ok_or_else(|| DatapathError::UnknownService {
                    service: service.to_owned(),
                })?;
        let result = self.apply_backends(&mut entry, backends);
        self.services.insert(service.to_owned(), entry);
        result
    }

    fn apply_backends(
        &mut self,
        entry: &mut ServiceEntry,
        specs: &[BackendSpec],
    ) -> Result<(), DatapathError> {
        let mut flush = Vec::new();
        // Each server's slot, and the server as the slot last had it (its UP flag as written, by this
        // agent or by the one before it).
        let mut slots: Vec<(u32, u32, Option<NextHop>)> = Vec::with_capacity(specs.len());
        let mut previous: Vec<BackendSpec> = Vec::with_capacity(specs.len());
        for spec in specs {
            let prev = entry.backends.remove(&spec.name);
            let (id, epoch, hop) = match prev {
                Some(p) if p.spec.addr == spec.addr && p.spec.port == spec.port => {
                    (p.id, p.epoch, p.hop)
                }
                // Same name but another address or port: a different server in the same slot, so a
                // fresh epoch (the old server's flows are flushed) and counters from zero.
                Some(p) => {
                    flush.push(p.id);
                    self.start_backend_counters(p.id)?;
                    (p.id, self.bump_epoch(), None)
                }
                None => self
                    .claim_backend_id(entry.id, spec)
                    .map(|(id, e)| (id, e, None))?,
            };
            slots.push((id, epoch, hop.or_else(|| self.resolve_hop(spec.addr))));
            previous.push(BackendSpec {
                up: self.previous_up(id),
                ..spec.clone()
            });
        }
        let shut_down = sessions_to_shutdown(&previous, specs, entry.spec.shutdown_sessions);
        let mut next: BTreeMap<String, BackendEntry> = BTreeMap::new();
        for (spec, (id, mut epoch, hop)) in specs.iter().zip(slots) {
            if shut_down.contains(&spec.name.as_str()) {
                epoch = self.bump_epoch();
                self.reset_backend_counters(id)?;
                flush.push(id);
                info!(port = entry.spec.port, server = %spec.name, "server down: its sessions are shut down");
            }
            let mut value = Self::backend_value(entry.id, epoch, spec, hop);
            value.flags = super::tc::local_flag(value.flags, self.local_addrs.contains(&spec.addr));
            self.maps
                .backends
                .set(id, value, 0)
                .map_err(map_err(map_names::BACKENDS, "write"))?;
            next.insert(
                spec.name.clone(),
                BackendEntry {
                    id,
                    epoch,
                    spec: spec.clone(),
                    hop,
                },
            );
        }
        // Servers that left the plan: their slot is retired with a new epoch (flows reset).
        let leaving: Vec<BackendEntry> =
            std::mem::take(&mut entry.backends).into_values().collect();
        let mut freed = Vec::new();
        for be in &leaving {
            self.retire_backend_slot(be.id)?;
            flush.push(be.id);
            freed.push(be.id);
        }

        // The new active set, written to the idle generation, then flipped in one update.
        let members: Vec<RingMember<'_>> = specs
            .iter()
            .filter(|s| s.active && s.up && s.weight > 0)
            .filter_map(|s| {
                next.get(&s.name).map(|b| RingMember {
                    id: b.id as u16,
                    name: &s.name,
                    weight: s.weight,
                })
            })
            .collect();
        let set = Self::build_set(entry.spec.algorithm, &members);
        let idle = (entry.generation + 1) % GENERATIONS;
        self.maps
            .svc_table
            .set(entry.id * GENERATIONS + idle, set, 0)
            .map_err(map_err(map_names::SVC_TABLE, "write"))?;
        self.maps
            .svc_state
            .set(entry.id, Self::service_state(&entry.spec, idle), 0)
            .map_err(map_err(map_names::SVC_STATE, "write"))?;
        entry.generation = idle;
        entry.backends = next;
        let flushed = self.flush_flows_of(&flush);
        if flushed > 0 {
            debug!(flushed, "flows flushed");
        }
        self.free_backends.extend(freed);
        Ok(())
    }

    fn previous_up(&self, id: u32) -> bool {
        self.maps
            .backends
            .get(&id, 0)
            .is_ok_and(|b| b.flags & BE_F_UP != 0 && b.flags & BE_F_ALLOCATED != 0)
    }

    pub(super) fn backend_value(
        svc_id: u32,
        epoch: u32,
        spec: &BackendSpec,
        hop: Option<NextHop>,
    ) -> Backend {
        let mut flags = BE_F_ALLOCATED;
        if spec.up {
            flags |= BE_F_UP;
        }
        let (ifindex, next_hop_mac, src_mac) = match hop {
            Some(h) => (h.ifindex, h.mac, h.src_mac),
            None => (0, [0; 6], [0; 6]),
        };
        Backend {
            addr: u32::from_ne_bytes(spec.addr.octets()),
            port: spec.port.to_be(),
            flags,
            epoch,
            maxconn: spec.maxconn,
            ifindex,
            svc_id,
            next_hop_mac,
            src_mac,
        }
    }

    fn build_set(algorithm: Algorithm, members: &[RingMember<'_>]) -> BackendSet {
        let mut set = BackendSet::default();
        let ring = match algorithm {
            Algorithm::Maglev => maglev_table(members),
            _ => rr_sequence(members),
        };
        set.ring_len = ring.len() as u32;
        set.ring[..ring.len()].copy_from_slice(&ring);
        for (i, m) in members.iter().take(MAX_ACTIVE).enumerate() {
            set.active[i] = u32::from(m.id);
            set.weights[i] = m.weight;
        }
        set.n_active = members.len().min(MAX_ACTIVE) as u32;
        set
    }
}
