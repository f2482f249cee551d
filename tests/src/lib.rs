//! Shared helpers of pgsvc's integration tests: packet building and independent checksum
//! verification (packet tier), RAII guards for pins, namespaces and processes (netns tier).

pub mod agent_rig;
pub mod guard;
pub mod netns;
pub mod packet;
pub mod sandbox;

/// True when running as root; otherwise prints why the calling test is skipped. CI runs as root,
/// so there these tests always run.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: needs root (BPF, network namespaces); run `cargo xtask test` as root"
    );
    false
}
