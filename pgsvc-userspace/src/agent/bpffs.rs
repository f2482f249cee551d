//! The BPF filesystem the datapath pins its maps and link on: mounted by the agent when the host
//! has none at `/sys/fs/bpf` (a fresh node, no systemd mount unit), and a clear refusal when the
//! agent was started with `ip netns exec`, whose private remount of /sys would hide the pins from
//! the next agent (and lose them when it exits).

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use thiserror::Error;
use tracing::info;

/// Where bpffs is mounted on every distribution pgsvc targets.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum BpffsError {
    #[error(
        "{BPFFS} is not a BPF filesystem in this mount namespace: this looks like `ip netns exec`, \
         which remounts /sys privately, so the pins under {pin_dir} would be invisible to the next \
         agent and gone when this one exits; run `pgsvc --netns NAME run ...` instead"
    )]
    PrivateMounts { pin_dir: PathBuf },
    #[error("{BPFFS} is not a BPF filesystem and mounting one there failed: {source}")]
    Mount {
        #[source]
        source: std::io::Error,
    },
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs on a valid C string into a zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The name under /run/netns of the network namespace this process is in, if it has one:
/// `ip netns exec NAME` puts its command there (and in a private mount namespace with its own /sys).
fn named_netns() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = std::fs::metadata("/proc/self/ns/net").ok()?;
    std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .find_map(|e| {
            let m = std::fs::metadata(e.path()).ok()?;
            (m.dev() == me.dev() && m.ino() == me.ino())
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
}

/// Whether this process shares PID 1's mount namespace (`ip netns exec` unshares it).
fn in_init_mount_ns() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        // Unknown: do not guess that we are somewhere unusual.
        _ => true,
    }
}

/// Makes sure `pin_dir` can live on bpffs. Only pin directories under [`BPFFS`] are handled; any
/// other path is left to the datapath's own check (which names the path when it is not bpffs).
///
/// # Errors
/// `ip netns exec` detected, or a mount that the kernel refused.
pub fn ensure(pin_dir: &Path) -> Result<(), BpffsError> {
    let root = Path::new(BPFFS);
    if !pin_dir.starts_with(root) || is_bpffs(root) || is_bpffs(pin_dir) {
        return Ok(());
    }
    if named_netns().is_some() || !in_init_mount_ns() {
        return Err(BpffsError::PrivateMounts {
            pin_dir: pin_dir.to_owned(),
        });
    }
    std::fs::create_dir_all(root).map_err(|source| BpffsError::Mount { source })?;
    let (Ok(fs), Ok(target)) = (CString::new("bpf"), CString::new(BPFFS)) else {
        return Ok(());
    };
    // SAFETY: mount(2) with valid C strings and no data.
    let rc = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(BpffsError::Mount {
            source: std::io::Error::last_os_error(),
        });
    }
    info!(
        path = BPFFS,
        "mounted the BPF filesystem (none was mounted)"
    );
    Ok(())
}
