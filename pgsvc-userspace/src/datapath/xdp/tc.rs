//! The node-resident path's userspace half: the TC egress program (loaded with the XDP program,
//! sharing its maps), its attachment to the interface as a pinned TCX link (adopted across
//! restarts like the XDP link), and which backends are local to this node (`BE_F_LOCAL`, from the
//! node's addresses the agent refreshes every second).

use std::{collections::HashSet, fs, net::Ipv4Addr, path::Path};

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use pgsvc_common::{BE_F_LOCAL, maps as map_names, programs};
use tracing::{info, warn};

use super::{Attachment, DatapathError, XdpDatapath, error::map_err};

/// Loads the TC egress program into the kernel (not attached yet).
pub(super) fn load_tc_egress(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    tc_program(ebpf)?
        .load()
        .map_err(|e| DatapathError::Program {
            program: programs::TC_EGRESS,
            source: Box::new(e),
        })
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DatapathError> {
    ebpf.program_mut(programs::TC_EGRESS)
        .ok_or(DatapathError::MissingMap { map: "program" })?
        .try_into()
        .map_err(|e| DatapathError::Program {
            program: programs::TC_EGRESS,
            source: Box::new(e),
        })
}

impl XdpDatapath {
    /// Attaches the TC egress program to `iface` (a TCX link, pinned as `link_tc_egress_<iface>` so
    /// that `pgsvc detach` removes it with the XDP link), or
    /// swaps it into the pinned link an earlier agent left.
    ///
    /// # Errors
    /// The kernel refusing the program or the link (TCX needs Linux ≥ 6.6).
    pub(super) fn attach_tc_egress(&mut self, iface: &str) -> Result<(), DatapathError> {
        let pin = self.opts.pin_dir.join(format!("link_tc_egress_{iface}"));
        let prog = tc_program(&mut self.ebpf)?;
        if pin.exists() {
            match adopt(prog, &pin) {
                Ok(()) => {
                    info!(
                        iface,
                        "adopted the pinned TC egress link; program replaced in place"
                    );
                    self.attachments.push(Attachment {
                        iface: iface.to_owned(),
                        mode: "tc-egress",
                        pin,
                    });
                    return Ok(());
                }
                Err(e) => {
                    warn!(iface, error = %e, "the pinned TC egress link could not be adopted; attaching anew");
                    let _ = fs::remove_file(&pin);
                }
            }
        }
        let attach_err = |e| DatapathError::Attach {
            iface: iface.to_owned(),
            mode: "tc-egress",
            source: Box::new(e),
        };
        let id = match prog.attach(iface, TcAttachType::Egress) {
            Ok(id) => id,
            // Before Linux 6.6 (no TCX) the program goes on a clsact qdisc, which may be missing.
            Err(_) => {
                let _ = aya::programs::tc::qdisc_add_clsact(iface);
                prog.attach(iface, TcAttachType::Egress)
                    .map_err(attach_err)?
            }
        };
        let link = prog.take_link(id).map_err(attach_err)?;
        match FdLink::try_from(link) {
            Ok(fd_link) => {
                fd_link.pin(&pin).map_err(|e| DatapathError::Pin {
                    what: "TC egress link",
                    path: pin.clone(),
                    source: Box::new(e),
                })?;
            }
            Err(e) => {
                // A netlink (pre-6.6) attachment: it stays on the interface until removed; this
                // agent cannot hand it over, so it is left to the qdisc's owner.
                warn!(iface, error = %e, "TC egress attached without a bpf_link");
            }
        }
        info!(
            iface,
            "TC egress program attached (replies of local members)"
        );
        self.attachments.push(Attachment {
            iface: iface.to_owned(),
            mode: "tc-egress",
            pin,
        });
        Ok(())
    }

    /// Records the node's addresses and rewrites the `BE_F_LOCAL` flag of every backend whose
    /// locality changed. Returns how many backends were rewritten.
    pub(super) fn set_local_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<usize, DatapathError> {
        let next: HashSet<Ipv4Addr> = addrs.iter().copied().collect();
        if next == self.local_addrs {
            return Ok(0);
        }
        self.local_addrs = next;
        let mut changed = 0;
        let ids: Vec<(u32, Ipv4Addr)> = self
            .services
            .values()
            .flat_map(|s| s.backends.values().map(|b| (b.id, b.spec.addr)))
            .collect();
        for (id, addr) in ids {
            let Ok(mut be) = self.maps.backends.get(&id, 0) else {
                continue;
            };
            let flags = local_flag(be.flags, self.local_addrs.contains(&addr));
            if flags != be.flags {
                be.flags = flags;
                self.maps
                    .backends
                    .set(id, be, 0)
                    .map_err(map_err(map_names::BACKENDS, "write"))?;
                changed += 1;
            }
        }
        if changed > 0 {
            info!(changed, "local members changed with the node's addresses");
        }
        Ok(changed)
    }
}

#[cfg(feature = "test-hooks")]
impl XdpDatapath {
    /// Runs the TC egress program once over `input` (an Ethernet frame) with `BPF_PROG_TEST_RUN`.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_tc_egress(&mut self, input: &[u8]) -> Result<super::ProgramRun, DatapathError> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = vec![0u8; input.len() + 256];
        let res = tc_program(&mut self.ebpf)?
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .map_err(|e| DatapathError::Program {
                program: programs::TC_EGRESS,
                source: Box::new(e),
            })?;
        out.truncate(res.data_size_out as usize);
        Ok(super::ProgramRun {
            action: res.return_value,
            output: out,
            duration: res.duration,
        })
    }
}

/// `flags` with `BE_F_LOCAL` set or cleared.
#[must_use]
pub(super) fn local_flag(flags: u16, local: bool) -> u16 {
    if local {
        flags | BE_F_LOCAL
    } else {
        flags & !BE_F_LOCAL
    }
}

fn adopt(prog: &mut SchedClassifier, pin: &Path) -> Result<(), DatapathError> {
    let pin_err = |e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Pin {
        what: "TC egress link",
        path: pin.to_path_buf(),
        source: e,
    };
    let pinned = PinnedLink::from_pin(pin).map_err(|e| pin_err(Box::new(e)))?;
    let fd_link: FdLink = pinned.into();
    let link = SchedClassifierLink::try_from(fd_link).map_err(|e| pin_err(Box::new(e)))?;
    let id = prog
        .attach_to_link(link)
        .map_err(|e| DatapathError::Program {
            program: programs::TC_EGRESS,
            source: Box::new(e),
        })?;
    // The link stays pinned; forget our handle so that dropping the program changes nothing.
    let _ = prog.take_link(id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgsvc_common::{BE_F_ALLOCATED, BE_F_UP};

    #[test]
    fn the_local_flag_is_set_and_cleared_alone() {
        let f = BE_F_UP | BE_F_ALLOCATED;
        assert_eq!(local_flag(f, true), f | BE_F_LOCAL);
        assert_eq!(local_flag(f | BE_F_LOCAL, false), f);
        assert_eq!(local_flag(f, false), f);
    }
}
