//! The pass-through XDP program (`pgsvc-pass` object), for the far end of a veth pair: native-mode
//! `XDP_TX` frames are only delivered to a veth peer that runs an XDP program itself.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, links::FdLink},
};
use pgsvc_common::programs;

use super::DatapathError;

static PASS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pgsvc-pass"));

/// A loaded and attached pass program; detached on drop unless it was pinned.
pub struct PassProgram {
    _ebpf: Ebpf,
    pin: Option<PathBuf>,
}

/// Loads the pass object and its program into the kernel.
fn load() -> Result<Ebpf, DatapathError> {
    if PASS_OBJECT.is_empty() {
        return Err(DatapathError::NoObject);
    }
    let mut ebpf = Ebpf::load(PASS_OBJECT).map_err(|e| DatapathError::Load(Box::new(e)))?;
    program(&mut ebpf)?
        .load()
        .map_err(|e| DatapathError::Program {
            program: programs::PASS,
            source: Box::new(e),
        })?;
    Ok(ebpf)
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    ebpf.program_mut(programs::PASS)
        .ok_or(DatapathError::MissingMap { map: "program" })?
        .try_into()
        .map_err(|e| DatapathError::Program {
            program: programs::PASS,
            source: Box::new(e),
        })
}

impl PassProgram {
    /// Attaches the pass program to `iface` (in the calling thread's namespace), native mode. With
    /// `pin`, the link is pinned there and outlives this process.
    ///
    /// # Errors
    /// Missing object, unknown interface, or the kernel refusing native XDP.
    pub fn attach(iface: &str, pin: Option<&Path>) -> Result<Self, DatapathError> {
        let mut ebpf = load()?;
        let prog = program(&mut ebpf)?;
        let (ifindex, _) =
            super::neigh::interface(iface).ok_or_else(|| DatapathError::NoInterface {
                iface: iface.to_owned(),
            })?;
        let id = prog
            .attach_to_if_index(ifindex, XdpMode::Driver)
            .map_err(|e| DatapathError::Attach {
                iface: iface.to_owned(),
                mode: "native",
                source: Box::new(e),
            })?;
        if let Some(pin) = pin {
            let link = prog.take_link(id).map_err(|e| DatapathError::Program {
                program: programs::PASS,
                source: Box::new(e),
            })?;
            let fd = FdLink::try_from(link).map_err(|e| DatapathError::Pin {
                what: "pass link",
                path: pin.to_path_buf(),
                source: Box::new(e),
            })?;
            fd.pin(pin).map_err(|e| DatapathError::Pin {
                what: "pass link",
                path: pin.to_path_buf(),
                source: Box::new(e),
            })?;
        }
        Ok(Self {
            _ebpf: ebpf,
            pin: pin.map(Path::to_path_buf),
        })
    }

    /// Where the link is pinned, if it is.
    pub fn pin(&self) -> Option<&Path> {
        self.pin.as_deref()
    }
}

/// Detaches a pass program pinned by [`PassProgram::attach`].
pub fn unpin(pin: &Path) -> std::io::Result<()> {
    std::fs::remove_file(pin)
}

/// Runs the pass program over `frame` with `BPF_PROG_TEST_RUN` and returns the kernel's mean time
/// per run: the floor of what any XDP program costs in this harness (benchmarks report it beside
/// the load balancer's own figures).
///
/// # Errors
/// Missing object or a refused load/run.
pub fn baseline_run(frame: &[u8], repeat: u32) -> Result<std::time::Duration, DatapathError> {
    use aya::programs::{TestRun, TestRunOptions};
    let mut ebpf = load()?;
    let prog = program(&mut ebpf)?;
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .map_err(|e| DatapathError::Program {
            program: programs::PASS,
            source: Box::new(e),
        })?;
    Ok(r.duration)
}
