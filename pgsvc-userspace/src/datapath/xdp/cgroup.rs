//! Clients on the node itself: the cgroup v2 socket programs (`connect4`, `getpeername4`,
//! `sock_release`; see the eBPF crate's sock.rs) attached to a cgroup — the cgroup v2 root by
//! default, so every process of the node is served, as HAProxy's `bind *:5433` serves them.
//!
//! Links are pinned beside the XDP link (`link_cgroup_*`): with `--keep` they stay attached for the
//! next agent, which attaches its own programs first and only then drops the pinned ones, so a
//! connect is never left unbalanced (for a moment both run; the second sees an address that is no
//! longer a service's and leaves it, and a released socket is counted down once, by whichever
//! program removes its session entry). Attaching is all or nothing: a failure leaves the earlier
//! agent's links (if any) as they were and none of ours.

use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, MapError},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError,
        links::{FdLink, PinnedLink},
    },
};
use pgsvc_common::{SockScope, maps as map_names, programs};
use thiserror::Error;
use tracing::{info, warn};

use super::XdpDatapath;

/// `statfs.f_type` of cgroup v2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Why local clients cannot be served.
#[derive(Debug, Error)]
pub enum LocalClientsError {
    #[error("cgroup v2 is not mounted (no cgroup2 file system in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    #[error("opening cgroup {path} failed")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the kernel refused the cgroup socket program {program} (needs Linux 5.8 or later with CONFIG_CGROUP_BPF)"
    )]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching {program} to cgroup {path} failed")]
    Attach {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("pinning the {program} link at {path} failed")]
    Pin {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading this network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14) failed")]
    NetnsCookie(#[source] std::io::Error),
    #[error("map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` when it is cgroup v2 (unified hierarchy), else the
/// first cgroup2 mount (hybrid hierarchies mount it at `/sys/fs/cgroup/unified`).
///
/// # Errors
/// [`LocalClientsError::NoCgroup2`] when no cgroup2 file system is mounted.
pub fn cgroup2_root() -> Result<PathBuf, LocalClientsError> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = cgroup2_mounts(&text);
    let preferred = Path::new("/sys/fs/cgroup");
    if mounts.iter().any(|m| m == preferred) {
        return Ok(preferred.to_path_buf());
    }
    mounts
        .into_iter()
        .find(|m| is_cgroup2(m))
        .ok_or(LocalClientsError::NoCgroup2)
}

/// Mount points of cgroup2 file systems in a mountinfo text.
fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(mount_point.replace("\\040", " ")))
        })
        .collect()
}

/// Whether `path` is a directory of a cgroup v2 file system.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs on a valid C string into a zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// The network-namespace cookie of the calling thread's namespace.
fn netns_cookie() -> Result<u64, LocalClientsError> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(LocalClientsError::NetnsCookie(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a u64 we own, with its size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(LocalClientsError::NetnsCookie(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(cookie)
}

fn program_err(program: &'static str) -> impl FnOnce(ProgramError) -> LocalClientsError {
    move |e| LocalClientsError::Program {
        program,
        source: Box::new(e),
    }
}

fn attach_err(
    program: &'static str,
    path: &Path,
) -> impl FnOnce(ProgramError) -> LocalClientsError {
    let path = path.to_path_buf();
    move |e| LocalClientsError::Attach {
        program,
        path,
        source: Box::new(e),
    }
}

impl XdpDatapath {
    /// Serves clients on the node: loads the socket programs, scopes them to this network
    /// namespace and attaches them to `cgroup` (the cgroup v2 root when `None`). Returns the cgroup.
    ///
    /// # Errors
    /// No cgroup v2, a path that is not a cgroup v2 directory, a kernel without the program types;
    /// nothing of ours is left attached then.
    pub fn attach_local_clients(
        &mut self,
        cgroup: Option<&Path>,
    ) -> Result<PathBuf, LocalClientsError> {
        let path = match cgroup {
            Some(p) => p.to_path_buf(),
            None => cgroup2_root()?,
        };
        if !is_cgroup2(&path) {
            return Err(LocalClientsError::NotCgroup2 { path });
        }
        let dir = fs::File::open(&path).map_err(|source| LocalClientsError::Open {
            path: path.clone(),
            source,
        })?;
        self.write_sock_scope(netns_cookie()?)?;
        let mut links = Vec::new();
        for (name, pin) in programs::SOCK {
            links.push((name, pin, self.attach_sock_program(name, &dir, &path)?));
        }
        // Everything attached: only now replace an earlier agent's links, then pin ours.
        let mut pinned: Vec<PathBuf> = Vec::new();
        for (name, pin, link) in links {
            let at = self.opts.pin_dir.join(pin);
            if at.exists() {
                if let Err(e) = fs::remove_file(&at) {
                    warn!(path = %at.display(), error = %e, "dropping the earlier agent's socket-program link failed");
                } else {
                    info!(
                        program = name,
                        "replaced the pinned socket-program link of an earlier agent"
                    );
                }
            }
            if let Err(e) = link.pin(&at) {
                for p in &pinned {
                    let _ = fs::remove_file(p);
                }
                return Err(LocalClientsError::Pin {
                    program: name,
                    path: at,
                    source: Box::new(e),
                });
            }
            pinned.push(at);
        }
        info!(cgroup = %path.display(), "local clients served: socket programs attached");
        Ok(path)
    }

    /// Loads (once) and attaches one socket program; the link is returned unpinned, so dropping it
    /// detaches. A bpf_link on a cgroup always coexists with other programs there (the kernel
    /// refuses any attach flag with `bpf_link_create`; `Single` sends none).
    fn attach_sock_program(
        &mut self,
        name: &'static str,
        cgroup: &fs::File,
        path: &Path,
    ) -> Result<FdLink, LocalClientsError> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(LocalClientsError::Program {
                program: name,
                source: Box::new(ProgramError::NotLoaded),
            })?;
        let link = if name == programs::SOCK_RELEASE {
            let p: &mut CgroupSock = prog.try_into().map_err(program_err(name))?;
            if p.fd().is_err() {
                p.load().map_err(program_err(name))?;
            }
            let id = p
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(attach_err(name, path))?;
            FdLink::try_from(p.take_link(id).map_err(attach_err(name, path))?)
        } else {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(program_err(name))?;
            if p.fd().is_err() {
                p.load().map_err(program_err(name))?;
            }
            let id = p
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(attach_err(name, path))?;
            FdLink::try_from(p.take_link(id).map_err(attach_err(name, path))?)
        };
        link.map_err(|e| LocalClientsError::Pin {
            program: name,
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    fn write_sock_scope(&mut self, netns_cookie: u64) -> Result<(), LocalClientsError> {
        let map_err = |op| {
            move |e| LocalClientsError::Map {
                map: map_names::SOCK_SCOPE,
                op,
                source: Box::new(e),
            }
        };
        let map = self
            .ebpf
            .map_mut(map_names::SOCK_SCOPE)
            .ok_or(LocalClientsError::Map {
                map: map_names::SOCK_SCOPE,
                op: "open",
                source: Box::new(MapError::InvalidName {
                    name: map_names::SOCK_SCOPE.to_owned(),
                }),
            })?;
        let mut arr: Array<_, SockScope> = Array::try_from(map).map_err(map_err("open"))?;
        arr.set(0, SockScope { netns_cookie }, 0)
            .map_err(map_err("write"))
    }
}

/// Removes the pinned socket-program links under `dir` (which detaches them).
pub(super) fn remove_sock_links(dir: &Path) {
    for (_, pin) in programs::SOCK {
        let path = dir.join(pin);
        if !path.exists() {
            continue;
        }
        match PinnedLink::from_pin(&path).map(PinnedLink::unpin) {
            Ok(Ok(fd)) => drop(fd),
            _ => {
                if let Err(e) = fs::remove_file(&path) {
                    warn!(path = %path.display(), error = %e, "removing a socket-program link pin failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_mounts_are_found_in_unified_and_hybrid_layouts() {
        let hybrid = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            cgroup2_mounts(hybrid),
            vec![PathBuf::from("/sys/fs/cgroup/unified")]
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mounts(unified),
            vec![PathBuf::from("/sys/fs/cgroup")]
        );
        let none = "25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw\n32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert!(cgroup2_mounts(none).is_empty());
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        assert!(!is_cgroup2(&std::env::temp_dir()));
        assert!(!is_cgroup2(Path::new("/nonexistent/pgsvc")));
    }
}
