//! Attaching the program to an interface (or taking over a pinned link of an earlier agent),
//! detaching it, or leaving it pinned for the next agent.

use std::{fs, path::Path};

use aya::programs::{
    Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use pgsvc_common::programs;
use tracing::{info, warn};

use super::{AttachMode, Attachment, DatapathError, XdpDatapath, loader::remove_pins};

impl XdpDatapath {
    pub(super) fn lb_program(&mut self) -> Result<&mut Xdp, DatapathError> {
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
                    self.attach_tc_egress(iface)?;
                    return Ok("adopted");
                }
                Err(e) => {
                    let cause = std::error::Error::source(&e).map(ToString::to_string);
                    warn!(iface, error = %e, cause, "the pinned XDP link could not be adopted; attaching anew");
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
                    source: Box::new(e),
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
        self.attach_tc_egress(iface)?;
        Ok(mode_name)
    }

    fn replace_pinned(&mut self, pin: &Path) -> Result<(), DatapathError> {
        let pinned = PinnedLink::from_pin(pin).map_err(|e| DatapathError::Pin {
            what: "XDP link",
            path: pin.to_path_buf(),
            source: Box::new(e),
        })?;
        let fd_link: FdLink = pinned.into();
        let xdp_link = XdpLink::try_from(fd_link).map_err(|e| DatapathError::Pin {
            what: "XDP link",
            path: pin.to_path_buf(),
            source: Box::new(e),
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
