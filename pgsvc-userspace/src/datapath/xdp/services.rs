//! Services: their listen keys, state (algorithm, limits, generation) and the per-port flags.

use pgsvc_common::{
    BackendSet, GENERATIONS, PORT_F_EXACT, PORT_F_WILDCARD, SVC_F_ACTIVE, SVC_F_SHUTDOWN_SESSIONS,
    ServiceRuntime, ServiceState, maps as map_names,
};
use tracing::info;

use super::{DatapathError, ServiceEntry, XdpDatapath, error::map_err};
use crate::datapath::{api::ServiceSpec, keys};

impl XdpDatapath {
    /// [`crate::datapath::Datapath::upsert_service`]: a new service claims a slot (the one an earlier
    /// agent left listening on the same keys, else a free one); an existing one is rewritten in place.
    pub(super) fn write_service(
        &mut self,
        name: &str,
        spec: &ServiceSpec,
    ) -> Result<(), DatapathError> {
        let (min, max) = (*self.opts.snat_ports.start(), *self.opts.snat_ports.end());
        if (min..=max).contains(&spec.port) {
            return Err(DatapathError::PortInSnatRange {
                service: name.to_owned(),
                port: spec.port,
                min,
                max,
            });
        }
        let keys = keys::service_keys(spec);
        let (id, generation, old_keys) = match self.services.get(name) {
            Some(e) => (e.id, e.generation, e.keys.clone()),
            None => {
                let (id, adopted) = self.claim_service_id(&keys)?;
                let generation = match adopted {
                    Some(st) => st.generation & 1,
                    None => {
                        self.maps
                            .svc_runtime
                            .set(id, ServiceRuntime::default(), 0)
                            .map_err(map_err(map_names::SVC_RUNTIME, "write"))?;
                        self.maps
                            .svc_released
                            .set(id, 0, 0)
                            .map_err(map_err(map_names::SVC_RELEASED, "write"))?;
                        Self::zero_stats(&mut self.maps.svc_stats, id, map_names::SVC_STATS)?;
                        // An empty live set until backends are written.
                        for g in 0..GENERATIONS {
                            self.maps
                                .svc_table
                                .set(id * GENERATIONS + g, BackendSet::default(), 0)
                                .map_err(map_err(map_names::SVC_TABLE, "write"))?;
                        }
                        0
                    }
                };
                (id, generation, Vec::new())
            }
        };
        self.maps
            .svc_state
            .set(id, Self::service_state(spec, generation), 0)
            .map_err(map_err(map_names::SVC_STATE, "write"))?;
        for key in &keys {
            self.maps
                .services
                .insert(key, id, 0)
                .map_err(map_err(map_names::SERVICES, "insert"))?;
        }
        for key in old_keys.iter().filter(|k| !keys.contains(k)) {
            let _ = self.maps.services.remove(key);
        }
        let backends = self
            .services
            .remove(name)
            .map(|e| e.backends)
            .unwrap_or_default();
        self.services.insert(
            name.to_owned(),
            ServiceEntry {
                id,
                spec: spec.clone(),
                keys,
                generation,
                backends,
            },
        );
        self.write_port_flags(spec.port)?;
        if let Some(p) = old_keys
            .first()
            .map(|k| u16::from_be(k.port))
            .filter(|p| *p != spec.port)
        {
            self.write_port_flags(p)?;
        }
        Ok(())
    }

    /// [`crate::datapath::Datapath::remove_service`].
    pub(super) fn drop_service(&mut self, name: &str) -> Result<(), DatapathError> {
        let Some(entry) = self.services.remove(name) else {
            return Err(DatapathError::UnknownService {
                service: name.to_owned(),
            });
        };
        for key in &entry.keys {
            let _ = self.maps.services.remove(key);
        }
        self.maps
            .svc_state
            .set(entry.id, ServiceState::default(), 0)
            .map_err(map_err(map_names::SVC_STATE, "write"))?;
        let mut flushed = Vec::new();
        for be in entry.backends.values() {
            self.retire_backend_slot(be.id)?;
            flushed.push(be.id);
        }
        self.flush_flows_of(&flushed);
        self.free_backends.extend(flushed);
        self.free_services.push(entry.id);
        self.write_port_flags(entry.spec.port)?;
        info!(service = name, "service removed");
        Ok(())
    }

    pub(super) fn service_state(spec: &ServiceSpec, generation: u32) -> ServiceState {
        let mut flags = SVC_F_ACTIVE;
        if spec.shutdown_sessions {
            flags |= SVC_F_SHUTDOWN_SESSIONS;
        }
        ServiceState {
            flags,
            generation,
            algorithm: spec.algorithm as u32,
            maxconn: spec.maxconn,
        }
    }

    /// Recomputes `PORTS[port]` from the services that listen there.
    pub(super) fn write_port_flags(&mut self, port: u16) -> Result<(), DatapathError> {
        let mut flags = 0u8;
        for e in self.services.values().filter(|e| e.spec.port == port) {
            flags |= if e.spec.addrs.is_empty() {
                PORT_F_WILDCARD
            } else {
                PORT_F_EXACT
            };
        }
        self.maps
            .ports
            .set(u32::from(port), flags, 0)
            .map_err(map_err(map_names::PORTS, "write"))
    }
}
