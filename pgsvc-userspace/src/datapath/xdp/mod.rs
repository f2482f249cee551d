//! The XDP implementation of [`Datapath`]: loads the program, pins its maps and link, allocates
//! service and backend slots, writes backend sets with a generation flip, flushes and collects flows.
//!
//! A restarted agent adopts what it finds pinned: services are recognised by their listen keys and
//! backends by (service id, address, port), so established flows keep their slots and epochs.
//!
//! One concern per file: [`loader`] (load, pins, config), [`link`] (attach, detach), [`slots`]
//! (service and backend slot allocation, adoption), [`services`] (listen keys, service state),
//! [`backends`] (backend sets and the generation flip), [`hops`] (next hops), [`flows`] (flush and
//! GC), [`reset`] (active session resets), [`stats`] (counters read back).

mod backends;
mod cgroup;
mod error;
mod flows;
mod hops;
mod link;
mod loader;
mod reset;
mod scope;
mod services;
mod slots;
mod snat;
mod stats;
mod tc;
#[cfg(feature = "test-hooks")]
mod testrun;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet},
    net::Ipv4Addr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
};
use pgsvc_common::{
    Backend, BackendSet, Config, DEFAULT_MAX_FLOWS, Flow, FlowKey, NatKey, NatRev, Reason,
    ServiceKey, ServiceRuntime, ServiceState, TrafficStats,
};

use super::{
    api::{
        BackendSpec, Datapath, GcReport, LocalScope, ResetCount, ResetScope, ServiceSpec, Timeouts,
    },
    neigh::NextHop,
};

pub use cgroup::{LocalClientsError, cgroup2_root, is_cgroup2};
pub use error::DatapathError;
pub use loader::monotonic_coarse_ns;
#[cfg(feature = "test-hooks")]
pub use testrun::ProgramRun;

/// How to attach: `auto` tries native (driver) mode and falls back to generic (skb) mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttachMode {
    #[default]
    Auto,
    Native,
    Skb,
}

/// Settings fixed at load time.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where maps and links are pinned (on bpffs).
    pub pin_dir: PathBuf,
    /// Size of `FLOWS` (`FLOWS_PENDING` and `NAT_REV` are sized from it; only when they are
    /// created, not when adopted).
    pub max_flows: u32,
    /// Source address of translated connections.
    pub snat_addr: Ipv4Addr,
    pub snat_ports: RangeInclusive<u16>,
    /// Fall back to `bpf_fib_lookup` when a backend's MAC is unknown.
    pub fib_fallback: bool,
}

impl LoadOptions {
    pub fn new(pin_dir: impl Into<PathBuf>, snat_addr: Ipv4Addr) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            max_flows: DEFAULT_MAX_FLOWS,
            snat_addr,
            snat_ports: 40000..=59999,
            fib_fallback: true,
        }
    }
}

struct Maps {
    config: Array<MapData, Config>,
    services: HashMap<MapData, ServiceKey, u32>,
    svc_state: Array<MapData, ServiceState>,
    svc_runtime: Array<MapData, ServiceRuntime>,
    svc_table: Array<MapData, BackendSet>,
    svc_released: Array<MapData, i64>,
    ports: Array<MapData, u8>,
    backends: Array<MapData, Backend>,
    backend_conns: Array<MapData, i64>,
    backend_released: Array<MapData, i64>,
    flows: HashMap<MapData, FlowKey, Flow>,
    nat_rev: HashMap<MapData, NatKey, NatRev>,
    svc_stats: PerCpuArray<MapData, TrafficStats>,
    backend_stats: PerCpuArray<MapData, TrafficStats>,
    reasons: PerCpuArray<MapData, u64>,
    flows_pending: HashMap<MapData, FlowKey, Flow>,
}

struct ServiceEntry {
    id: u32,
    spec: ServiceSpec,
    keys: Vec<ServiceKey>,
    generation: u32,
    backends: BTreeMap<String, BackendEntry>,
}

struct BackendEntry {
    id: u32,
    epoch: u32,
    spec: BackendSpec,
    hop: Option<NextHop>,
}

/// A pinned XDP attachment.
struct Attachment {
    iface: String,
    mode: &'static str,
    pin: PathBuf,
}

pub struct XdpDatapath {
    ebpf: Ebpf,
    maps: Maps,
    opts: LoadOptions,
    services: BTreeMap<String, ServiceEntry>,
    free_services: Vec<u32>,
    free_backends: Vec<u32>,
    /// Slots found allocated in pinned maps and not yet claimed by a planned service or server.
    unclaimed_services: StdHashMap<u32, ServiceState>,
    unclaimed_backends: StdHashMap<u32, Backend>,
    next_epoch: u32,
    attachments: Vec<Attachment>,
    adopted: bool,
    /// Next hops set by hand (tests; hosts whose neighbours the agent cannot read).
    static_hops: StdHashMap<Ipv4Addr, NextHop>,
    /// When this agent loaded (monotonic coarse ns).
    started_ns: u64,
    /// The node's IPv4 addresses: a backend at one of them is a local member (`BE_F_LOCAL`).
    local_addrs: HashSet<Ipv4Addr>,
    /// Reverse entries of evicted pending flows reclaimed by the GC (cumulative).
    orphans_reclaimed: u64,
    /// SNAT ports held per backend slot, counted at the last GC pass.
    snat_in_use: StdHashMap<u32, u64>,
}

impl XdpDatapath {
    /// Whether pinned maps of an earlier agent were found (and are being adopted).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pin_dir(&self) -> &Path {
        &self.opts.pin_dir
    }
}

impl Datapath for XdpDatapath {
    type Error = DatapathError;

    fn upsert_service(&mut self, name: &str, spec: &ServiceSpec) -> Result<(), DatapathError> {
        self.write_service(name, spec)
    }

    fn remove_service(&mut self, name: &str) -> Result<(), DatapathError> {
        self.drop_service(name)
    }

    fn set_backends(
        &mut self,
        service: &str,
        backends: &[BackendSpec],
    ) -> Result<(), DatapathError> {
        self.write_backends(service, backends)
    }

    fn backend_conns(&self, service: &str) -> Result<Vec<(String, u64)>, DatapathError> {
        self.conns_by_backend(service)
    }

    fn backend_stats(&self, service: &str) -> Result<Vec<(String, TrafficStats)>, DatapathError> {
        self.stats_by_backend(service)
    }

    fn service_stats(&self, service: &str) -> Result<TrafficStats, DatapathError> {
        self.stats_of_service(service)
    }

    fn service_conns(&self, service: &str) -> Result<u64, DatapathError> {
        self.conns_of_service(service)
    }

    fn tick(&mut self) -> Result<(), DatapathError> {
        self.write_config()
    }

    fn gc(&mut self, timeouts: &Timeouts) -> Result<GcReport, DatapathError> {
        self.collect_flows(timeouts)
    }

    fn refresh_next_hops(&mut self) -> Result<usize, DatapathError> {
        self.rewrite_next_hops()
    }

    fn release_unclaimed(&mut self) -> Result<(), DatapathError> {
        self.release_unclaimed_slots()
    }

    fn reason_counts(&self) -> Vec<(Reason, u64)> {
        self.sum_reasons()
    }

    fn flow_count(&self) -> usize {
        self.established_count() + self.pending_count()
    }

    fn max_flows(&self) -> u32 {
        self.opts.max_flows
    }

    fn flow_tables(&self) -> Vec<(&'static str, u64, u64)> {
        self.table_occupancy()
    }

    fn flows_evicted(&self) -> u64 {
        self.orphans_reclaimed
    }

    fn set_local_scope(&mut self, scope: &LocalScope) -> Result<bool, DatapathError> {
        let changed = self.write_local_scope(scope)?;
        Ok(self.set_local_addrs(&scope.addrs)? > 0 || changed)
    }

    fn snat_ports_in_use(&self, service: &str) -> Result<Vec<(String, u64)>, DatapathError> {
        self.snat_ports_by_backend(service)
    }

    fn reset_sessions(&mut self, scope: &ResetScope<'_>) -> Result<Vec<ResetCount>, DatapathError> {
        self.reset_now(scope)
    }
}
