//! The XDP implementation of [`Datapath`]: loads the program, pins its maps and link, allocates
//! service and backend slots, writes backend sets with a generation flip, flushes and collects flows.
//!
//! A restarted agent adopts what it finds pinned: services are recognised by their listen keys and
//! backends by (service id, address, port), so established flows keep their slots and epochs.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    fs,
    net::Ipv4Addr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use pgsvc_common::{
    ABI_VERSION, Algorithm, BE_F_ALLOCATED, BE_F_UP, Backend, BackendSet, CFG_F_FIB_FALLBACK,
    Config, DEFAULT_MAX_FLOWS, Flow, FlowKey, GENERATIONS, IPPROTO_TCP, LocalScope, MAX_ACTIVE,
    MAX_BACKENDS, MAX_SERVICES, NatKey, NatRev, PORT_F_EXACT, PORT_F_WILDCARD, Reason,
    SVC_F_ACTIVE, SVC_F_SHUTDOWN_SESSIONS, ServiceKey, ServiceRuntime, ServiceState, TCP_F_ACK,
    TrafficStats, maps as map_names, programs,
};
use thiserror::Error;
use tracing::{debug, info, warn};

use super::{
    api::{BackendSpec, Datapath, ServiceSpec},
    neigh::{self, NextHop},
    ring::{RingMember, maglev_table, rr_sequence},
};

/// The compiled XDP object (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pgsvc"));

/// bpffs magic number (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error(
        "this pgsvc was built without its XDP program (AYA_BUILD_SKIP=1); rebuild it with `cargo xtask build`"
    )]
    NoObject,
    #[error("{path} is not on a BPF filesystem (mount it: mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { path: PathBuf },
    #[error(
        "pinned maps in {path} were written by ABI version {found}, this pgsvc speaks {expected}; stop the other agent and remove the pins (rm -r {path})"
    )]
    AbiMismatch {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("loading the XDP object failed")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the kernel rejected program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {map} is missing from the XDP object")]
    MissingMap { map: &'static str },
    #[error("map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("interface {iface} does not exist")]
    NoInterface { iface: String },
    #[error("attaching XDP to {iface} in {mode} mode failed")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning {what} at {path} failed: {reason}")]
    Pin {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free service slot (at most {MAX_SERVICES} services)")]
    TooManyServices,
    #[error("no free backend slot (at most {MAX_BACKENDS} servers over all services)")]
    TooManyBackends,
    #[error("service {service} listens on port {port}, inside the SNAT port range {min}-{max}")]
    PortInSnatRange {
        service: String,
        port: u16,
        min: u16,
        max: u16,
    },
    #[error("unknown service {service}")]
    UnknownService { service: String },
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        map,
        op,
        source: Box::new(source),
    }
}

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
    /// Size of `FLOWS` and `NAT_REV` (only when they are created, not when adopted).
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

/// Flow timeouts used by [`XdpDatapath::gc`].
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A flow whose backend never answered (no SYN-ACK).
    pub syn_ns: u64,
    /// After the first FIN or RST.
    pub closing_ns: u64,
    /// Established and silent (HAProxy `timeout client`/`server`, 24 h in Pigsty).
    pub idle_ns: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            syn_ns: 30 * 1_000_000_000,
            closing_ns: 10 * 1_000_000_000,
            idle_ns: 24 * 3600 * 1_000_000_000,
        }
    }
}

/// What one GC pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub scanned: usize,
    pub expired: usize,
    pub stale: usize,
    pub orphans: usize,
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
}

/// The outcome of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug)]
pub struct ProgramRun {
    pub action: u32,
    pub output: Vec<u8>,
    /// Mean time per run as the kernel measured it.
    pub duration: std::time::Duration,
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs on a valid C string into a zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DatapathError::MissingMap { map: name })?;
    T::try_from(map).map_err(map_err(name, "open"))
}

impl XdpDatapath {
    /// Loads (or adopts) the maps under `opts.pin_dir` and loads the program into the kernel. Nothing
    /// is attached yet.
    ///
    /// # Errors
    /// A missing object, a pin directory off bpffs, pins of another ABI version, a verifier rejection.
    pub fn load(opts: LoadOptions) -> Result<Self, DatapathError> {
        let pin_dir = opts.pin_dir.clone();
        let had_pins = pin_dir.join(map_names::CONFIG).exists();
        let result = Self::load_inner(opts);
        if result.is_err() && !had_pins {
            // Nothing of ours may stay pinned after a failed load (a verifier rejection, say).
            remove_pins(&pin_dir);
        }
        result
    }

    fn load_inner(opts: LoadOptions) -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        fs::create_dir_all(&opts.pin_dir).map_err(|source| DatapathError::Io {
            op: "creating",
            path: opts.pin_dir.clone(),
            source,
        })?;
        if !is_bpffs(&opts.pin_dir) {
            return Err(DatapathError::NotBpffs {
                path: opts.pin_dir.clone(),
            });
        }
        let config_pin = opts.pin_dir.join(map_names::CONFIG);
        let adopted = config_pin.exists();
        if adopted {
            check_pinned_abi(&opts.pin_dir)?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&opts.pin_dir)
            .map_max_entries(map_names::FLOWS, opts.max_flows)
            .map_max_entries(map_names::NAT_REV, opts.max_flows)
            .load(OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        let name = programs::LB;
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingMap { map: "program" })?
            .try_into()
            .map_err(|e| DatapathError::Program {
                program: name,
                source: Box::new(e),
            })?;
        prog.load().map_err(|e| DatapathError::Program {
            program: name,
            source: Box::new(e),
        })?;
        let maps = Maps {
            config: take(&mut ebpf, map_names::CONFIG)?,
            services: take(&mut ebpf, map_names::SERVICES)?,
            svc_state: take(&mut ebpf, map_names::SVC_STATE)?,
            svc_runtime: take(&mut ebpf, map_names::SVC_RUNTIME)?,
            svc_table: take(&mut ebpf, map_names::SVC_TABLE)?,
            svc_released: take(&mut ebpf, map_names::SVC_RELEASED)?,
            ports: take(&mut ebpf, map_names::PORTS)?,
            backends: take(&mut ebpf, map_names::BACKENDS)?,
            backend_conns: take(&mut ebpf, map_names::BACKEND_CONNS)?,
            backend_released: take(&mut ebpf, map_names::BACKEND_RELEASED)?,
            flows: take(&mut ebpf, map_names::FLOWS)?,
            nat_rev: take(&mut ebpf, map_names::NAT_REV)?,
            svc_stats: take(&mut ebpf, map_names::SVC_STATS)?,
            backend_stats: take(&mut ebpf, map_names::BACKEND_STATS)?,
            reasons: take(&mut ebpf, map_names::REASONS)?,
        };
        let mut dp = Self {
            ebpf,
            maps,
            opts,
            services: BTreeMap::new(),
            free_services: Vec::new(),
            free_backends: Vec::new(),
            unclaimed_services: StdHashMap::new(),
            unclaimed_backends: StdHashMap::new(),
            next_epoch: 1,
            attachments: Vec::new(),
            adopted,
            static_hops: StdHashMap::new(),
            started_ns: monotonic_coarse_ns(),
        };
        dp.scan_slots()?;
        dp.write_config()?;
        Ok(dp)
    }

    /// Uses `hop` for `addr` instead of the kernel's neighbour table.
    pub fn set_static_next_hop(&mut self, addr: Ipv4Addr, hop: NextHop) {
        self.static_hops.insert(addr, hop);
    }

    fn resolve_hop(&self, addr: Ipv4Addr) -> Option<NextHop> {
        if let Some(h) = self.static_hops.get(&addr) {
            return Some(*h);
        }
        let hop = neigh::resolve(addr);
        if hop.is_none() {
            neigh::poke(addr);
        }
        hop
    }

    /// Runs the load balancer once (or `repeat` times) over `input` with `BPF_PROG_TEST_RUN`.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_program(&mut self, input: &[u8], repeat: u32) -> Result<ProgramRun, DatapathError> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = vec![0u8; input.len() + 256];
        let prog = self.lb_program()?;
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                repeat: repeat.max(1),
                ..Default::default()
            })
            .map_err(|e| DatapathError::Program {
                program: programs::LB,
                source: Box::new(e),
            })?;
        out.truncate(res.data_size_out as usize);
        Ok(ProgramRun {
            action: res.return_value,
            output: out,
            duration: res.duration,
        })
    }

    /// Whether pinned maps of an earlier agent were found (and are being adopted).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pin_dir(&self) -> &Path {
        &self.opts.pin_dir
    }

    /// Records which slots the maps already use (after a restart) and builds the free lists.
    fn scan_slots(&mut self) -> Result<(), DatapathError> {
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

    fn write_config(&mut self) -> Result<(), DatapathError> {
        let cfg = Config {
            abi_version: ABI_VERSION,
            snat_addr: u32::from_ne_bytes(self.opts.snat_addr.octets()),
            snat_port_min: *self.opts.snat_ports.start(),
            snat_port_max: *self.opts.snat_ports.end(),
            flags: if self.opts.fib_fallback {
                CFG_F_FIB_FALLBACK
            } else {
                0
            },
            now_ns: monotonic_coarse_ns(),
        };
        self.maps
            .config
            .set(0, cfg, 0)
            .map_err(map_err(map_names::CONFIG, "write"))
    }

    /// Advances the datapath's clock (`Config::now_ns`); the agent calls this every second.
    ///
    /// # Errors
    /// When the config map cannot be written.
    pub fn tick(&mut self) -> Result<(), DatapathError> {
        self.write_config()
    }

    /// Writes what services on `ip: "*"` accept: frames sent to `if_mac` (or `vip_mac`) whose
    /// destination is one of `addrs`, the node's local addresses (HAProxy's `bind *`). Addresses no
    /// longer listed are removed. Returns whether anything changed. The agent calls this at start and
    /// on every tick, as addresses come and go at runtime.
    ///
    /// # Errors
    /// When a map cannot be opened, read or written (`addrs` longer than `MAX_LOCAL_ADDRS`).
    pub fn set_local_scope(
        &mut self,
        if_mac: [u8; 6],
        vip_mac: Option<[u8; 6]>,
        addrs: &[Ipv4Addr],
    ) -> Result<bool, DatapathError> {
        let mut changed = false;
        let want = LocalScope {
            if_mac,
            vip_mac: vip_mac.unwrap_or_default(),
        };
        let name = map_names::LOCAL_SCOPE;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { map: name })?;
        let mut scope: Array<&mut MapData, LocalScope> =
            Array::try_from(map).map_err(map_err(name, "open"))?;
        if scope.get(&0, 0).map_err(map_err(name, "read"))? != want {
            scope.set(0, want, 0).map_err(map_err(name, "write"))?;
            changed = true;
        }
        let name = map_names::LOCAL_ADDRS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { map: name })?;
        let mut set: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(map).map_err(map_err(name, "open"))?;
        let want: std::collections::HashSet<u32> = addrs
            .iter()
            .map(|a| u32::from_ne_bytes(a.octets()))
            .collect();
        let have: Vec<u32> = set.keys().filter_map(Result::ok).collect();
        for k in have.iter().filter(|k| !want.contains(k)) {
            set.remove(k).map_err(map_err(name, "delete"))?;
            changed = true;
        }
        for k in want.iter().filter(|k| !have.contains(k)) {
            set.insert(k, 1, 0).map_err(map_err(name, "write"))?;
            changed = true;
        }
        Ok(changed)
    }

    fn lb_program(&mut self) -> Result<&mut Xdp, DatapathError> {
        self.ebpf
            .program_mut(programs::LB)
            .ok_or(DatapathError::MissingMap { map: "program" })?
            .try_into()
            .map_err(|e| DatapathError::Program {
                program: programs::LB,
                source: Box::new(e),
            })
    }

    /// Attaches the load balancer to `iface` and pins the link, or — when a pinned link for `iface`
    /// exists (an earlier agent left it with `--keep`, or crashed) — swaps this program into it
    /// atomically, so traffic never goes unhandled.
    ///
    /// # Errors
    /// Unknown interface, or the kernel refusing XDP in the requested mode(s).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<&'static str, DatapathError> {
        let ifindex = if_index(iface)?;
        let pin = self.opts.pin_dir.join(format!("link_{iface}"));
        if pin.exists() {
            match self.replace_pinned(&pin) {
                Ok(()) => {
                    info!(
                        iface,
                        ifindex, "adopted the pinned XDP link; program replaced in place"
                    );
                    self.attachments.push(Attachment {
                        iface: iface.to_owned(),
                        mode: "adopted",
                        pin,
                    });
                    return Ok("adopted");
                }
                Err(e) => {
                    warn!(iface, error = %e, "the pinned XDP link could not be adopted; attaching anew");
                    let _ = fs::remove_file(&pin);
                }
            }
        }
        let prog = self.lb_program()?;
        let tries: &[(XdpMode, &'static str)] = match mode {
            AttachMode::Native => &[(XdpMode::Driver, "native")],
            AttachMode::Skb => &[(XdpMode::Skb, "skb")],
            AttachMode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "skb")],
        };
        let mut last_err = None;
        let mut attached = None;
        for &(m, name) in tries {
            match prog.attach_to_if_index(ifindex, m) {
                Ok(id) => {
                    attached = Some((id, name));
                    break;
                }
                Err(e) => {
                    if tries.len() > 1 && name == "native" {
                        warn!(iface, error = %e, "native XDP refused by the driver; falling back to generic (skb) mode");
                    }
                    last_err = Some((name, e));
                }
            }
        }
        let Some((link_id, mode_name)) = attached else {
            let (name, e) = last_err.ok_or(DatapathError::NoInterface {
                iface: iface.to_owned(),
            })?;
            return Err(DatapathError::Attach {
                iface: iface.to_owned(),
                mode: name,
                source: Box::new(e),
            });
        };
        let link = prog
            .take_link(link_id)
            .map_err(|e| DatapathError::Program {
                program: programs::LB,
                source: Box::new(e),
            })?;
        match FdLink::try_from(link) {
            Ok(fd_link) => {
                fd_link.pin(&pin).map_err(|e| DatapathError::Pin {
                    what: "XDP link",
                    path: pin.clone(),
                    reason: e.to_string(),
                })?;
            }
            Err(e) => {
                // Netlink-attached (no bpf_link support): works, but cannot survive the agent.
                warn!(iface, error = %e, "XDP attached without a bpf_link; it will detach when pgsvc exits");
            }
        }
        info!(iface, ifindex, mode = mode_name, "XDP program attached");
        self.attachments.push(Attachment {
            iface: iface.to_owned(),
            mode: mode_name,
            pin,
        });
        Ok(mode_name)
    }

    fn replace_pinned(&mut self, pin: &Path) -> Result<(), DatapathError> {
        let pinned = PinnedLink::from_pin(pin).map_err(|e| DatapathError::Pin {
            what: "XDP link",
            path: pin.to_path_buf(),
            reason: e.to_string(),
        })?;
        let fd_link: FdLink = pinned.into();
        let xdp_link = XdpLink::try_from(fd_link).map_err(|e| DatapathError::Pin {
            what: "XDP link",
            path: pin.to_path_buf(),
            reason: e.to_string(),
        })?;
        let prog = self.lb_program()?;
        let id = prog
            .attach_to_link(xdp_link)
            .map_err(|e| DatapathError::Program {
                program: programs::LB,
                source: Box::new(e),
            })?;
        // The link stays pinned; keep our handle out of the program's drop list so that dropping the
        // program does not matter either way.
        let _ = prog.take_link(id);
        Ok(())
    }

    /// Attach modes in use, by interface.
    pub fn attachments(&self) -> Vec<(String, &'static str)> {
        self.attachments
            .iter()
            .map(|a| (a.iface.clone(), a.mode))
            .collect()
    }

    /// Detaches from every interface and removes all pins: traffic goes back to the kernel.
    pub fn detach_and_unpin(mut self) -> Result<(), DatapathError> {
        for a in self.attachments.drain(..) {
            if a.pin.exists() {
                match PinnedLink::from_pin(&a.pin) {
                    Ok(link) => match link.unpin() {
                        Ok(fd) => drop(fd),
                        Err(e) => {
                            warn!(iface = a.iface, error = %e, "unpinning the XDP link failed")
                        }
                    },
                    Err(e) => {
                        warn!(iface = a.iface, error = %e, "opening the pinned XDP link failed")
                    }
                }
            }
            info!(iface = a.iface, "XDP program detached");
        }
        remove_pins(&self.opts.pin_dir);
        Ok(())
    }

    /// Leaves program, link and maps pinned so that a new agent can adopt them (`--keep`).
    pub fn leave_pinned(self) {
        info!(pin_dir = %self.opts.pin_dir.display(), "leaving the XDP program attached and its maps pinned");
    }

    /// Forgets slots found pinned that no planned service or server claimed: their listen keys are
    /// removed and their flows flushed. Called once the first full plan has been applied.
    pub fn release_unclaimed(&mut self) -> Result<(), DatapathError> {
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

    fn bump_epoch(&mut self) -> u32 {
        let e = self.next_epoch;
        self.next_epoch = self.next_epoch.wrapping_add(1).max(1);
        e
    }

    /// Takes a backend slot out of use: a fresh epoch (so every flow still pointing at it is reset
    /// at its next packet, and flushed by the caller) and zeroed connection counters.
    fn retire_backend_slot(&mut self, id: u32) -> Result<(), DatapathError> {
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
    fn zero_stats(
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

    fn reset_backend_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        self.maps
            .backend_conns
            .set(id, 0, 0)
            .map_err(map_err(map_names::BACKEND_CONNS, "write"))?;
        self.maps
            .backend_released
            .set(id, 0, 0)
            .map_err(map_err(map_names::BACKEND_RELEASED, "write"))
    }

    fn service_keys(spec: &ServiceSpec) -> Vec<ServiceKey> {
        let port = spec.port.to_be();
        if spec.addrs.is_empty() {
            return vec![ServiceKey {
                addr: 0,
                port,
                proto: IPPROTO_TCP,
                _pad: 0,
            }];
        }
        spec.addrs
            .iter()
            .map(|a| ServiceKey {
                addr: u32::from_ne_bytes(a.octets()),
                port,
                proto: IPPROTO_TCP,
                _pad: 0,
            })
            .collect()
    }

    fn service_state(spec: &ServiceSpec, generation: u32) -> ServiceState {
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

    /// The service id to use for `keys`: an unclaimed pinned one listening there, else a free one.
    fn claim_service_id(
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

    fn claim_backend_id(
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
        self.reset_backend_counters(id)?;
        Self::zero_stats(&mut self.maps.backend_stats, id, map_names::BACKEND_STATS)?;
        Ok((id, epoch))
    }

    fn backend_value(svc_id: u32, epoch: u32, spec: &BackendSpec, hop: Option<NextHop>) -> Backend {
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
        self.refresh_next_hops()
    }

    /// Re-resolves next hops of every backend and rewrites those that changed. Called periodically:
    /// neighbours appear (the health checks resolve them) and change.
    pub fn refresh_next_hops(&mut self) -> Result<usize, DatapathError> {
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
            let value = Self::backend_value(svc_id, be.epoch, &be.spec, hop);
            self.maps
                .backends
                .set(be.id, value, 0)
                .map_err(map_err(map_names::BACKENDS, "write"))?;
        }
        Ok(changed)
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

    /// Removes the flows of the given backend ids (by id and stale epoch) and their NAT entries.
    fn flush_flows_of(&mut self, ids: &[u32]) -> usize {
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
            let _ = self.maps.nat_rev.remove(&NatKey {
                backend_addr: flow.backend_addr,
                snat_addr: snat,
                backend_port: flow.backend_port,
                snat_port: flow.snat_port,
            });
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
    pub fn gc(&mut self, t: &Timeouts) -> Result<GcReport, DatapathError> {
        self.write_config()?;
        let now = monotonic_coarse_ns();
        let snat = u32::from_ne_bytes(self.opts.snat_addr.octets());
        let mut report = GcReport::default();
        let flows: Vec<(FlowKey, Flow)> = self.maps.flows.iter().filter_map(Result::ok).collect();
        report.scanned = flows.len();
        let mut svc_rel: StdHashMap<u32, i64> = StdHashMap::new();
        let mut be_rel: StdHashMap<u32, i64> = StdHashMap::new();
        for (key, flow) in &flows {
            let nat_key = NatKey {
                backend_addr: flow.backend_addr,
                snat_addr: snat,
                backend_port: flow.backend_port,
                snat_port: flow.snat_port,
            };
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
            let _ = self.maps.nat_rev.remove(&nat_key);
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
        for (k, r) in revs {
            let fk = FlowKey {
                client_addr: r.client_addr,
                vip: r.vip,
                client_port: r.client_port,
                vport: r.vport,
            };
            if self.maps.flows.get(&fk, 0).is_err()
                && now.saturating_sub(r.last_seen_ns) > 5_000_000_000
            {
                let _ = self.maps.nat_rev.remove(&k);
                report.orphans += 1;
            }
        }
        Ok(report)
    }

    /// Per-CPU packet counters summed, by reason.
    pub fn reason_counts(&self) -> Vec<(Reason, u64)> {
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

    /// Entries in the forward flow table.
    pub fn flow_count(&self) -> usize {
        self.maps.flows.keys().filter(Result::is_ok).count()
    }

    /// The configured flow table size.
    pub fn max_flows(&self) -> u32 {
        self.opts.max_flows
    }

    fn sum_stats(map: &PerCpuArray<MapData, TrafficStats>, id: u32) -> TrafficStats {
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
    pub fn service_conns(&self, service: &str) -> Result<u64, DatapathError> {
        let e = self.entry(service)?;
        let opened = self
            .maps
            .svc_runtime
            .get(&e.id, 0)
            .map(|r| r.conns)
            .unwrap_or(0);
        let released = self.maps.svc_released.get(&e.id, 0).unwrap_or(0);
        Ok((opened - released).max(0) as u64)
    }

    /// Slot ids of a service's backends (tests and debugging).
    pub fn backend_ids(&self, service: &str) -> Result<Vec<(String, u32)>, DatapathError> {
        Ok(self
            .entry(service)?
            .backends
            .iter()
            .map(|(n, b)| (n.clone(), b.id))
            .collect())
    }
}

impl Datapath for XdpDatapath {
    type Error = DatapathError;

    fn upsert_service(&mut self, name: &str, spec: &ServiceSpec) -> Result<(), DatapathError> {
        let (min, max) = (*self.opts.snat_ports.start(), *self.opts.snat_ports.end());
        if (min..=max).contains(&spec.port) {
            return Err(DatapathError::PortInSnatRange {
                service: name.to_owned(),
                port: spec.port,
                min,
                max,
            });
        }
        let keys = Self::service_keys(spec);
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

    fn remove_service(&mut self, name: &str) -> Result<(), DatapathError> {
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

    fn set_backends(
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

    fn backend_conns(&self, service: &str) -> Result<Vec<(String, u64)>, DatapathError> {
        let e = self.entry(service)?;
        Ok(e.backends
            .iter()
            .map(|(name, b)| {
                let opened = self.maps.backend_conns.get(&b.id, 0).unwrap_or(0);
                let released = self.maps.backend_released.get(&b.id, 0).unwrap_or(0);
                (name.clone(), (opened - released).max(0) as u64)
            })
            .collect())
    }

    fn backend_stats(&self, service: &str) -> Result<Vec<(String, TrafficStats)>, DatapathError> {
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

    fn service_stats(&self, service: &str) -> Result<TrafficStats, DatapathError> {
        let e = self.entry(service)?;
        Ok(Self::sum_stats(&self.maps.svc_stats, e.id))
    }
}

impl XdpDatapath {
    fn apply_backends(
        &mut self,
        entry: &mut ServiceEntry,
        specs: &[BackendSpec],
    ) -> Result<(), DatapathError> {
        let mut next: BTreeMap<String, BackendEntry> = BTreeMap::new();
        let mut flush = Vec::new();
        for spec in specs {
            let prev = entry.backends.remove(&spec.name);
            let (id, mut epoch, hop) = match prev {
                // Same name but another address or port: a different server, a fresh slot epoch.
                Some(p) if p.spec.addr == spec.addr && p.spec.port == spec.port => {
                    (p.id, p.epoch, p.hop)
                }
                Some(p) => {
                    flush.push(p.id);
                    (p.id, self.bump_epoch(), None)
                }
                None => {
                    let (id, epoch) = self.claim_backend_id(entry.id, spec)?;
                    (id, epoch, None)
                }
            };
            let hop = hop.or_else(|| self.resolve_hop(spec.addr));
            let previous_up = self.previous_up(id);
            if entry.spec.shutdown_sessions && previous_up && !spec.up {
                epoch = self.bump_epoch();
                self.reset_backend_counters(id)?;
                flush.push(id);
                info!(port = entry.spec.port, server = %spec.name, "server down: its sessions are shut down");
            }
            let value = Self::backend_value(entry.id, epoch, spec, hop);
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

    /// Recomputes `PORTS[port]` from the services that listen there.
    fn write_port_flags(&mut self, port: u16) -> Result<(), DatapathError> {
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

    fn previous_up(&self, id: u32) -> bool {
        self.maps
            .backends
            .get(&id, 0)
            .is_ok_and(|b| b.flags & BE_F_UP != 0 && b.flags & BE_F_ALLOCATED != 0)
    }
}

fn if_index(iface: &str) -> Result<u32, DatapathError> {
    let c = std::ffi::CString::new(iface).map_err(|_| DatapathError::NoInterface {
        iface: iface.to_owned(),
    })?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DatapathError::NoInterface {
            iface: iface.to_owned(),
        });
    }
    Ok(idx)
}

/// Removes every map pin of ours under `dir`, then `dir` itself if it is empty.
fn remove_pins(dir: &Path) {
    for name in map_names::ALL {
        let path = dir.join(name);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %path.display(), error = %e, "removing a map pin failed");
        }
    }
    let _ = fs::remove_dir(dir);
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the clock of `bpf_ktime_get_coarse_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Reads the ABI version from pinned maps without loading anything.
fn check_pinned_abi(pin_dir: &Path) -> Result<(), DatapathError> {
    let path = pin_dir.join(map_names::CONFIG);
    let data = MapData::from_pin(&path).map_err(map_err(map_names::CONFIG, "open pinned"))?;
    let map = aya::maps::Map::Array(data);
    let arr: Array<MapData, Config> =
        Array::try_from(map).map_err(map_err(map_names::CONFIG, "open pinned"))?;
    let cfg = arr
        .get(&0, 0)
        .map_err(map_err(map_names::CONFIG, "read pinned"))?;
    if cfg.abi_version != 0 && cfg.abi_version != ABI_VERSION {
        return Err(DatapathError::AbiMismatch {
            path: pin_dir.to_path_buf(),
            found: cfg.abi_version,
            expected: ABI_VERSION,
        });
    }
    Ok(())
}
