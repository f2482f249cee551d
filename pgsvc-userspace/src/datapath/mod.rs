//! Loading, attaching and pinning the XDP program, and writing its maps. The only module that touches
//! the kernel. The control plane drives it through [`Datapath`] (desired state per service); a fake
//! implementation backs the unit tests of the modules above.

pub mod api;
pub mod neigh;
pub mod pass;
pub mod ring;
pub mod xdp;

pub use api::*;
pub use neigh::NextHop;
pub use xdp::{
    AttachMode, DatapathError, GcReport, LoadOptions, ProgramRun, Timeouts, XdpDatapath,
};
