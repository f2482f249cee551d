//! Why a datapath operation failed, with the map, program, path or interface concerned.

use std::path::PathBuf;

use aya::maps::MapError;
use pgsvc_common::{MAX_BACKENDS, MAX_SERVICES};
use thiserror::Error;

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
    #[error("pinning {what} at {path} failed")]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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

pub(super) fn map_err(
    map: &'static str,
    op: &'static str,
) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        map,
        op,
        source: Box::new(source),
    }
}
