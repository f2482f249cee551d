//! Counters read back: packets by reason, traffic and connections per service and backend.

use aya::maps::{MapData, PerCpuArray};
use pgsvc_common::{Reason, TrafficStats};

use super::{DatapathError, ServiceEntry, XdpDatapath};
use crate::datapath::keys;

impl XdpDatapath {
    /// Per-CPU packet counters summed, by reason.
    pub(super) fn sum_reasons(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|&r| {
                let n = self
                    .maps
                    .reasons
                    .get(&(r as u32), 0)
                    .map(|v| v.iter().sum::<u64>())
                    .unwrap_or(0);
                (r, n)
            })
            .collect()
    }

    pub(super) fn sum_stats(map: &PerCpuArray<MapData, TrafficStats>, id: u32) -> TrafficStats {
        let mut total = TrafficStats::default();
        if let Ok(values) = map.get(&id, 0) {
            for v in values.iter() {
                total.add(v);
            }
        }
        total
    }

    fn entry(&self, service: &str) -> Result<&ServiceEntry, DatapathError> {
        self.services
            .get(service)
            .ok_or_else(|| DatapathError::UnknownService {
                service: service.to_owned(),
            })
    }

    /// Open connections of a service (flows not yet closing).
    pub(super) fn conns_of_service(&self, service: &str) -> Result<u64, DatapathError> {
        let e = self.entry(service)?;
        let opened = self
            .maps
            .svc_runtime
            .get(&e.id, 0)
            .map(|r| r.conns)
            .unwrap_or(0);
        let released = self.maps.svc_released.get(&e.id, 0).unwrap_or(0);
        Ok(keys::open_conns(opened, released))
    }

    /// Slot ids of a service's backends (tests and debugging).
    #[cfg(feature = "test-hooks")]
    pub fn backend_ids(&self, service: &str) -> Result<Vec<(String, u32)>, DatapathError> {
        Ok(self
            .entry(service)?
            .backends
            .iter()
            .map(|(n, b)| (n.clone(), b.id))
            .collect())
    }

    pub(super) fn conns_by_backend(
        &self,
        service: &str,
    ) -> Result<Vec<(String, u64)>, DatapathError> {
        let e = self.entry(service)?;
        Ok(e.backends
            .iter()
            .map(|(name, b)| {
                let opened = self.maps.backend_conns.get(&b.id, 0).unwrap_or(0);
                let released = self.maps.backend_released.get(&b.id, 0).unwrap_or(0);
                (name.clone(), keys::open_conns(opened, released))
            })
            .collect())
    }

    pub(super) fn stats_by_backend(
        &self,
        service: &str,
    ) -> Result<Vec<(String, TrafficStats)>, DatapathError> {
        let e = self.entry(service)?;
        Ok(e.backends
            .iter()
            .map(|(name, b)| {
                (
                    name.clone(),
                    Self::sum_stats(&self.maps.backend_stats, b.id),
                )
            })
            .collect())
    }

    pub(super) fn stats_of_service(&self, service: &str) -> Result<TrafficStats, DatapathError> {
        let e = self.entry(service)?;
        Ok(Self::sum_stats(&self.maps.svc_stats, e.id))
    }
}
