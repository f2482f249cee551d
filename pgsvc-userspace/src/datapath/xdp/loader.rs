//! Loading the program, adopting or creating the pinned maps (after an ABI check), the config
//! map (the datapath's clock included), and removing the pins again.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    fs,
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapError},
    programs::Xdp,
};
use pgsvc_common::{ABI_VERSION, CFG_F_FIB_FALLBACK, Config, maps as map_names, programs};
use tracing::warn;

use super::{DatapathError, LoadOptions, Maps, XdpDatapath, error::map_err};

/// The compiled XDP object (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pgsvc"));

/// bpffs magic number (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

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
            .map_max_entries(
                map_names::FLOWS_PENDING,
                pgsvc_common::pending_capacity(opts.max_flows),
            )
            .map_max_entries(
                map_names::NAT_REV,
                pgsvc_common::nat_rev_capacity(opts.max_flows),
            )
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
        super::tc::load_tc_egress(&mut ebpf)?;
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
            flows_pending: take(&mut ebpf, map_names::FLOWS_PENDING)?,
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
            local_addrs: std::collections::HashSet::new(),
            orphans_reclaimed: 0,
            snat_in_use: StdHashMap::new(),
        };
        dp.scan_slots()?;
        dp.write_config()?;
        Ok(dp)
    }

    pub(super) fn write_config(&mut self) -> Result<(), DatapathError> {
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
}

/// Removes every map pin of ours under `dir` (and the socket programs' links), then `dir` itself if
/// it is empty.
pub(super) fn remove_pins(dir: &Path) {
    super::cgroup::remove_sock_links(dir);
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
