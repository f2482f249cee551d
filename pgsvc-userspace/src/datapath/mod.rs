//! Loading, attaching and pinning the XDP program, and writing its maps. The only module that touches
//! the kernel. The control plane drives it through [`Datapath`] (desired state per service);
//! [`fake::FakeDatapath`] implements the same trait in memory for the unit tests of the agent.

pub mod api;
#[cfg(any(test, feature = "test-hooks"))]
pub mod fake;
pub mod keys;
pub mod neigh;
#[cfg(feature = "test-hooks")]
pub mod pass;
pub mod ring;
pub mod rtnl;
pub mod sockets;
pub mod xdp;

pub use api::*;
pub use neigh::NextHop;
#[cfg(feature = "test-hooks")]
pub use xdp::ProgramRun;
pub use xdp::{AttachMode, DatapathError, LoadOptions, LocalClientsError, XdpDatapath};
