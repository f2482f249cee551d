//! An in-memory [`Datapath`] for the agent's unit tests: services and the backend sets written to
//! them, open connections and traffic per server (injected by the test), every call recorded, and
//! failures injected per operation. It keeps the XDP datapath's rules where the agent depends on
//! them: a service found at start (adopted) keeps its servers and flows when it is claimed again,
//! servers that leave or change address lose their flows, and going DOWN flushes flows by the one
//! shutdown rule, [`crate::balance::sessions_to_shutdown`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use pgsvc_common::Reason;
use thiserror::Error;

use super::api::{
    BackendSpec, Datapath, GcReport, LocalScope, ResetCount, ResetScope, ServiceSpec, Timeouts,
    TrafficStats,
};
use crate::balance::sessions_to_shutdown;

mod resets;

/// An operation of the trait, to inject failures and to count calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Upsert,
    Remove,
    SetBackends,
    Tick,
    Gc,
    RefreshNextHops,
    ReleaseUnclaimed,
    Reset,
}

/// One recorded call (or consequence of one: `Flush` is a server's flows being removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Upsert {
        service: String,
        spec: ServiceSpec,
    },
    Remove {
        service: String,
    },
    SetBackends {
        service: String,
        backends: Vec<BackendSpec>,
    },
    Flush {
        service: String,
        server: String,
        conns: u64,
    },
    Tick,
    Gc,
    RefreshNextHops,
    ReleaseUnclaimed,
    /// An active reset of a server's sessions (`conns` of them).
    Reset {
        service: String,
        server: String,
        conns: u64,
    },
    /// An active reset of the flows to a service address.
    ResetAddr {
        addr: Ipv4Addr,
    },
}

#[derive(Debug, Error)]
pub enum FakeError {
    #[error("injected failure of {op:?} on service `{service}`")]
    Injected { op: Op, service: String },
    #[error("unknown service {service}")]
    UnknownService { service: String },
}

/// A service as the fake holds it.
#[derive(Clone, Debug)]
pub struct FakeService {
    pub spec: ServiceSpec,
    /// The backend set last written (empty until the first write).
    pub backends: Vec<BackendSpec>,
    /// Open connections per server name.
    pub conns: BTreeMap<String, u64>,
    /// Traffic per server name.
    pub traffic: BTreeMap<String, TrafficStats>,
    pub stats: TrafficStats,
}

#[derive(Debug)]
pub struct FakeDatapath {
    pub services: BTreeMap<String, FakeService>,
    /// Services found at start and not claimed by an upsert yet.
    pub unclaimed: BTreeSet<String>,
    pub calls: Vec<Call>,
    /// Operations that fail, by (operation, service); global operations use the service "".
    pub failing: BTreeSet<(Op, String)>,
    pub reasons: Vec<(Reason, u64)>,
    pub max_flows: u32,
    /// What `ip: "*"` services were last told to accept.
    pub local_scope: Option<LocalScope>,
    /// SNAT ports held, by (service, server) (injected by the test).
    pub snat_ports: BTreeMap<(String, String), u64>,
    /// Open connections through one service address, by (address, service, server) (injected by
    /// the test with [`FakeDatapath::open_at`]; also counted in the server's `conns`).
    pub addr_conns: BTreeMap<(Ipv4Addr, String, String), u64>,
}

impl Default for FakeDatapath {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            unclaimed: BTreeSet::new(),
            calls: Vec::new(),
            failing: BTreeSet::new(),
            reasons: Vec::new(),
            max_flows: 1024,
            local_scope: None,
            snat_ports: BTreeMap::new(),
            addr_conns: BTreeMap::new(),
        }
    }
}

impl FakeDatapath {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A service an earlier agent left behind, with its servers and open connections per server.
    pub fn adopt(&mut self, name: &str, spec: ServiceSpec, backends: Vec<BackendSpec>) {
        let conns = backends.iter().map(|b| (b.name.clone(), 0)).collect();
        self.services.insert(
            name.to_owned(),
            FakeService {
                spec,
                backends,
                conns,
                traffic: BTreeMap::new(),
                stats: TrafficStats::default(),
            },
        );
        self.unclaimed.insert(name.to_owned());
    }

    /// Sets the open connections of one server (as if clients had connected).
    pub fn open(&mut self, service: &str, server: &str, conns: u64) {
        if let Some(s) = self.services.get_mut(service) {
            s.conns.insert(server.to_owned(), conns);
        }
    }

    /// Open connections of one server, 0 when unknown.
    #[must_use]
    pub fn conns(&self, service: &str, server: &str) -> u64 {
        self.services
            .get(service)
            .and_then(|s| s.conns.get(server))
            .copied()
            .unwrap_or(0)
    }

    pub fn fail(&mut self, op: Op, service: &str) {
        self.failing.insert((op, service.to_owned()));
    }

    pub fn heal(&mut self) {
        self.failing.clear();
    }

    /// Every backend set written to `service`, oldest first.
    #[must_use]
    pub fn writes(&self, service: &str) -> Vec<Vec<BackendSpec>> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::SetBackends {
                    service: s,
                    backends,
                } if s == service => Some(backends.clone()),
                _ => None,
            })
            .collect()
    }

    /// How many times `op` was called.
    #[must_use]
    pub fn count(&self, op: Op) -> usize {
        self.calls
            .iter()
            .filter(|c| {
                matches!(
                    (op, c),
                    (Op::Upsert, Call::Upsert { .. })
                        | (Op::Remove, Call::Remove { .. })
                        | (Op::SetBackends, Call::SetBackends { .. })
                        | (Op::Tick, Call::Tick)
                        | (Op::Gc, Call::Gc)
                        | (Op::RefreshNextHops, Call::RefreshNextHops)
                        | (Op::ReleaseUnclaimed, Call::ReleaseUnclaimed)
                        | (Op::Reset, Call::Reset { .. } | Call::ResetAddr { .. })
                )
            })
            .count()
    }

    /// Servers whose flows were flushed in `service`, in order.
    #[must_use]
    pub fn flushed(&self, service: &str) -> Vec<String> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Flush {
                    service: s, server, ..
                } if s == service => Some(server.clone()),
                _ => None,
            })
            .collect()
    }

    fn check(&self, op: Op, service: &str) -> Result<(), FakeError> {
        if self.failing.contains(&(op, service.to_owned())) {
            return Err(FakeError::Injected {
                op,
                service: service.to_owned(),
            });
        }
        Ok(())
    }

    fn service(&self, name: &str) -> Result<&FakeService, FakeError> {
        self.services
            .get(name)
            .ok_or_else(|| FakeError::UnknownService {
                service: name.to_owned(),
            })
    }

    fn flush(&mut self, service: &str, server: &str) {
        let conns = self
            .services
            .get_mut(service)
            .and_then(|s| {
                s.traffic.remove(server);
                s.conns.insert(server.to_owned(), 0)
            })
            .unwrap_or(0);
        self.calls.push(Call::Flush {
            service: service.to_owned(),
            server: server.to_owned(),
            conns,
        });
    }
}

impl Datapath for FakeDatapath {
    type Error = FakeError;

    fn upsert_service(&mut self, name: &str, spec: &ServiceSpec) -> Result<(), FakeError> {
        self.calls.push(Call::Upsert {
            service: name.to_owned(),
            spec: spec.clone(),
        });
        self.check(Op::Upsert, name)?;
        self.unclaimed.remove(name);
        match self.services.get_mut(name) {
            Some(s) => s.spec = spec.clone(),
            None => {
                self.services.insert(
                    name.to_owned(),
                    FakeService {
                        spec: spec.clone(),
                        backends: Vec::new(),
                        conns: BTreeMap::new(),
                        traffic: BTreeMap::new(),
                        stats: TrafficStats::default(),
                    },
                );
            }
        }
        Ok(())
    }

    fn remove_service(&mut self, name: &str) -> Result<(), FakeError> {
        self.calls.push(Call::Remove {
            service: name.to_owned(),
        });
        self.check(Op::Remove, name)?;
        let servers: Vec<String> = self.service(name)?.conns.keys().cloned().collect();
        for server in servers {
            self.flush(name, &server);
        }
        self.services.remove(name);
        Ok(())
    }

    fn set_backends(&mut self, service: &str, backends: &[BackendSpec]) -> Result<(), FakeError> {
        self.calls.push(Call::SetBackends {
            service: service.to_owned(),
            backends: backends.to_vec(),
        });
        self.check(Op::SetBackends, service)?;
        let current = self.service(service)?;
        let shutdown = current.spec.shutdown_sessions;
        let previous = current.backends.clone();
        // A server that kept its name but not its address is another server: its slot starts over.
        let moved: Vec<String> = previous
            .iter()
            .filter(|old| {
                backends
                    .iter()
                    .any(|b| b.name == old.name && (b.addr, b.port) != (old.addr, old.port))
            })
            .map(|old| old.name.clone())
            .collect();
        let mut gone: Vec<String> = sessions_to_shutdown(&previous, backends, shutdown)
            .into_iter()
            .map(str::to_owned)
            .collect();
        gone.extend(moved);
        for server in &gone {
            self.flush(service, server);
        }
        if let Some(s) = self.services.get_mut(service) {
            s.conns
                .retain(|name, _| backends.iter().any(|b| &b.name == name));
            for b in backends {
                s.conns.entry(b.name.clone()).or_insert(0);
            }
            s.backends = backends.to_vec();
        }
        Ok(())
    }

    fn backend_conns(&self, service: &str) -> Result<Vec<(String, u64)>, FakeError> {
        Ok(self
            .service(service)?
            .conns
            .iter()
            .map(|(n, c)| (n.clone(), *c))
            .collect())
    }

    fn backend_stats(&self, service: &str) -> Result<Vec<(String, TrafficStats)>, FakeError> {
        Ok(self
            .service(service)?
            .traffic
            .iter()
            .map(|(n, t)| (n.clone(), *t))
            .collect())
    }

    fn service_stats(&self, service: &str) -> Result<TrafficStats, FakeError> {
        Ok(self.service(service)?.stats)
    }

    fn service_conns(&self, service: &str) -> Result<u64, FakeError> {
        Ok(self.service(service)?.conns.values().sum())
    }

    fn tick(&mut self) -> Result<(), FakeError> {
        self.calls.push(Call::Tick);
        self.check(Op::Tick, "")
    }

    fn gc(&mut self, _timeouts: &Timeouts) -> Result<GcReport, FakeError> {
        self.calls.push(Call::Gc);
        self.check(Op::Gc, "")?;
        Ok(GcReport::default())
    }

    fn refresh_next_hops(&mut self) -> Result<usize, FakeError> {
        self.calls.push(Call::RefreshNextHops);
        self.check(Op::RefreshNextHops, "")?;
        Ok(0)
    }

    fn release_unclaimed(&mut self) -> Result<(), FakeError> {
        self.calls.push(Call::ReleaseUnclaimed);
        self.check(Op::ReleaseUnclaimed, "")?;
        let stale: Vec<String> = std::mem::take(&mut self.unclaimed).into_iter().collect();
        for name in stale {
            let servers: Vec<String> = self
                .services
                .get(&name)
                .map(|s| s.conns.keys().cloned().collect())
                .unwrap_or_default();
            for server in servers {
                self.flush(&name, &server);
            }
            self.services.remove(&name);
        }
        Ok(())
    }

    fn reason_counts(&self) -> Vec<(Reason, u64)> {
        self.reasons.clone()
    }

    fn flow_count(&self) -> usize {
        let total: u64 = self.services.values().flat_map(|s| s.conns.values()).sum();
        usize::try_from(total).unwrap_or(usize::MAX)
    }

    fn max_flows(&self) -> u32 {
        self.max_flows
    }

    fn set_local_scope(&mut self, scope: &LocalScope) -> Result<bool, FakeError> {
        let changed = self.local_scope.as_ref() != Some(scope);
        self.local_scope = Some(scope.clone());
        Ok(changed)
    }

    fn reset_sessions(&mut self, scope: &ResetScope<'_>) -> Result<Vec<ResetCount>, FakeError> {
        self.reset_now(scope)
    }

    fn snat_ports_in_use(&self, service: &str) -> Result<Vec<(String, u64)>, FakeError> {
        Ok(self
            .service(service)?
            .conns
            .keys()
            .map(|server| {
                let key = (service.to_owned(), server.clone());
                (
                    server.clone(),
                    self.snat_ports.get(&key).copied().unwrap_or(0),
                )
            })
            .collect())
    }
}
