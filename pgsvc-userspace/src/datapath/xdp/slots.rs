//! Service and backend slots: which are free, which an earlier agent left (adoption), claiming,
//! retiring and releasing them, and the counters a slot starts from.

use std::{net::Ipv4Addr, path::PathBuf};

use aya::maps::{MapData, PerCpuArray};
use pgsvc_common::{
    BE_F_ALLOCATED, Backend, MAX_BACKENDS, MAX_SERVICES, SVC_F_ACTIVE, ServiceKey, ServiceState,
    TrafficStats, maps as map_names,
};
use tracing::debug;

use super::{DatapathError, XdpDatapath, error::map_err};
use crate::datapath::api::BackendSpec;

impl XdpDatapath {
    /// Records which slots the maps already use (after a restart) and builds the free lists.
    pub(super) fn scan_slots(&mut self) -> Result<(), DatapathError> {
        let mut max_epoch = 0;
        for id in (0..MAX_BACKENDS).rev() {
            let be = self
                .maps
                .backends
                .get(&id, 0)
                .map_err(map_err(map_names::BACKENDS, "read"))?;
            max_epoch = max_epoch.max(be.epoch);
            if be.flags & BE_F_ALLOCATED != 0 {
                self.unclaimed_backends.insert(id, be);
            } else {
                self.free_backends.push(id);
            }
        }
        for id in (0..MAX_SERVICES).rev() {
            let st = self
                .maps
                .svc_state
                .get(&id, 0)
                .map_err(map_err(map_names::SVC_STATE, "read"))?;
            if st.flags & SVC_F_ACTIVE != 0 {
                self.unclaimed_services.insert(id, st);
            } else {
                self.free_services.push(id);
            }
        }
        self.next_epoch = max_epoch.wrapping_add(1).max(1);
        Ok(())
    }

    /// Forgets slots found pinned that no planned service or server claimed: their listen keys are
    /// removed and their flows flushed. Called once the first full plan has been applied.
    pub(super) fn release_unclaimed_slots(&mut self) -> Result<(), DatapathError> {
        let stale_services: Vec<u32> = self.unclaimed_services.keys().copied().collect();
        let keys: Vec<ServiceKey> = self.maps.services.keys().filter_map(Result::ok).collect();
        for key in keys {
            if let Ok(id) = self.maps.services.get(&key, 0)
                && stale_services.contains(&id)
            {
                let _ = self.maps.services.remove(&key);
            }
        }
        for port in 0..=u16::MAX {
            let want = self.services.values().any(|e| e.spec.port == port);
            if !want && self.maps.ports.get(&u32::from(port), 0).unwrap_or(0) != 0 {
                self.write_port_flags(port)?;
            }
        }
        for id in stale_services {
            self.maps
                .svc_state
                .set(id, ServiceState::default(), 0)
                .map_err(map_err(map_names::SVC_STATE, "write"))?;
            self.free_services.push(id);
        }
        self.unclaimed_services.clear();
        let stale_backends: Vec<(u32, Backend)> = self.unclaimed_backends.drain().collect();
        for (id, be) in stale_backends {
            self.retire_backend_slot(id)?;
            debug!(id, addr = %Ipv4Addr::from(be.addr.to_ne_bytes()), "released a stale backend slot");
            self.free_backends.push(id);
        }
        Ok(())
    }

    pub(super) fn bump_epoch(&mut self) -> u32 {
        let e = self.next_epoch;
        self.next_epoch = self.next_epoch.wrapping_add(1).max(1);
        e
    }

    /// Takes a backend slot out of use: a fresh epoch (so every flow still pointing at it is reset
    /// at its next packet, and flushed by the caller) and zeroed connection counters.
    pub(super) fn retire_backend_slot(&mut self, id: u32) -> Result<(), DatapathError> {
        let epoch = self.bump_epoch();
        let blank = Backend {
            epoch,
            ..Default::default()
        };
        self.maps
            .backends
            .set(id, blank, 0)
            .map_err(map_err(map_names::BACKENDS, "write"))?;
        self.reset_backend_counters(id)
    }

    /// Zeroes the per-CPU traffic counters of a slot that changes hands.
    pub(super) fn zero_stats(
        map: &mut PerCpuArray<MapData, TrafficStats>,
        id: u32,
        name: &'static str,
    ) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Io {
            op: "counting CPUs in",
            path: PathBuf::from("/sys/devices/system/cpu/possible"),
            source: e,
        })?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![TrafficStats::default(); cpus])
            .map_err(|source| DatapathError::Io {
                op: "building zeroed per-CPU values for",
                path: PathBuf::from(name),
                source,
            })?;
        map.set(id, zeros, 0).map_err(map_err(name, "zero"))
    }

    pub(super) fn reset_backend_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        self.maps
            .backend_conns
            .set(id, 0, 0)
            .map_err(map_err(map_names::BACKEND_CONNS, "write"))?;
        self.maps
            .backend_released
            .set(id, 0, 0)
            .map_err(map_err(map_names::BACKEND_RELEASED, "write"))
    }

    /// The service id to use for `keys`: an unclaimed pinned one listening there, else a free one.
    pub(super) fn claim_service_id(
        &mut self,
        keys: &[ServiceKey],
    ) -> Result<(u32, Option<ServiceState>), DatapathError> {
        for key in keys {
            if let Ok(id) = self.maps.services.get(key, 0)
                && let Some(st) = self.unclaimed_services.remove(&id)
            {
                return Ok((id, Some(st)));
            }
        }
        let id = self
            .free_services
            .pop()
            .ok_or(DatapathError::TooManyServices)?;
        Ok((id, None))
    }

    pub(super) fn claim_backend_id(
        &mut self,
        svc_id: u32,
        spec: &BackendSpec,
    ) -> Result<(u32, u32), DatapathError> {
        let addr = u32::from_ne_bytes(spec.addr.octets());
        let port = spec.port.to_be();
        let found = self
            .unclaimed_backends
            .iter()
            .find(|(_, b)| b.svc_id == svc_id && b.addr == addr && b.port == port)
            .map(|(id, b)| (*id, b.epoch));
        if let Some((id, epoch)) = found {
            self.unclaimed_backends.remove(&id);
            return Ok((id, epoch));
        }
        let id = self
            .free_backends
            .pop()
            .ok_or(DatapathError::TooManyBackends)?;
        let epoch = self.bump_epoch();
        self.start_backend_counters(id)?;
        Ok((id, epoch))
    }

    /// Counters of a slot that starts serving another server: connections and traffic from zero.
    pub(super) fn start_backend_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        self.reset_backend_counters(id)?;
        Self::zero_stats(&mut self.maps.backend_stats, id, map_names::BACKEND_STATS)
    }
}
