//! `pgsvc detach`: removes what an agent run with `--keep` left serving — the XDP link(s), the
//! pinned maps, and (given `--iface`/`--vip`) the VIP — once no agent runs on that pin directory.
//!
//! The systemd unit runs the agent with `--keep` and calls `pgsvc detach --systemd-stop-post` as
//! `ExecStopPost=`: a plain `systemctl stop` detaches, while `systemctl restart` (a restart job is
//! queued for the unit) and a crash (`SERVICE_RESULT` is not `success`; `Restart=` brings the agent
//! back) leave the datapath serving for the next agent to adopt.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// The agent's pin directory (bpffs).
    #[arg(long, default_value = "/sys/fs/bpf/pgsvc")]
    pub pin_dir: PathBuf,
    /// Interface to remove `--vip` from.
    #[arg(long, requires = "vip")]
    pub iface: Option<String>,
    /// VIP the agent added (ADDR/PREFIX), removed from `--iface`.
    #[arg(long, requires = "iface", value_parser = parse_vip)]
    pub vip: Option<(Ipv4Addr, u8)>,
    /// Called as the unit's ExecStopPost: keep the datapath when systemd restarts the unit or the
    /// agent failed (reads `$SERVICE_RESULT` and systemd's job queue).
    #[arg(long)]
    pub systemd_stop_post: bool,
    /// The unit whose restart job keeps the datapath (systemd's `%n`).
    #[arg(long, default_value = "pgsvc.service")]
    pub unit: String,
}

fn parse_vip(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected ADDR/PREFIX"))?;
    let addr = a
        .parse()
        .map_err(|_| format!("{s:?}: {a:?} is not an IPv4 address"))?;
    match p.parse::<u8>() {
        Ok(prefix) if prefix <= 32 => Ok((addr, prefix)),
        _ => Err(format!("{s:?}: prefix length must be 0-32")),
    }
}

/// What ExecStopPost does.
#[derive(Debug, PartialEq, Eq)]
pub enum StopPost {
    Detach,
    Keep(String),
}

/// The decision of `--systemd-stop-post` from `$SERVICE_RESULT` and `systemctl list-jobs` output
/// (`JOB UNIT TYPE STATE` lines; `None` when systemctl could not be asked).
pub fn stop_post_decision(
    service_result: Option<&str>,
    jobs: Option<&str>,
    unit: &str,
) -> StopPost {
    if let Some(result) = service_result.filter(|r| *r != "success") {
        return StopPost::Keep(format!(
            "the agent ended with SERVICE_RESULT={result}; systemd's Restart= brings it back to adopt the datapath"
        ));
    }
    let restarting = jobs.unwrap_or("").lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() >= 3 && f[1] == unit && f[2].contains("restart")
    });
    if restarting {
        StopPost::Keep(format!("systemd is restarting {unit}"))
    } else {
        StopPost::Detach
    }
}

pub fn run(args: DetachArgs) -> anyhow::Result<ExitCode> {
    if args.systemd_stop_post {
        let result = std::env::var("SERVICE_RESULT").ok();
        // The job queue only matters after a clean exit (a crash keeps the datapath anyway).
        let jobs = if result.as_deref().is_none_or(|r| r == "success") {
            let jobs = std::process::Command::new("systemctl")
                .args(["list-jobs", "--no-legend", "--no-pager", &args.unit])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            if jobs.is_none() {
                eprintln!("pgsvc detach: cannot ask systemd for its jobs; treating this as a stop");
            }
            jobs
        } else {
            None
        };
        if let StopPost::Keep(why) =
            stop_post_decision(result.as_deref(), jobs.as_deref(), &args.unit)
        {
            println!("pgsvc detach: {why}: leaving the XDP program attached for the next agent");
            return Ok(ExitCode::SUCCESS);
        }
    }
    if let Some(pid) = agent_on(&args.pin_dir) {
        bail!(
            "an agent (pid {pid}) runs on {}: stop it first (it detaches by itself without --keep)",
            args.pin_dir.display()
        );
    }
    detach_pins(&args.pin_dir)?;
    if let (Some(iface), Some((addr, prefix))) = (&args.iface, args.vip) {
        remove_vip(iface, addr, prefix)?;
    }
    Ok(ExitCode::SUCCESS)
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs with a NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// Unpins the XDP links first (the program leaves the interface), then the maps, then the
/// directory. Entries pgsvc does not know are left alone and reported.
fn detach_pins(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        println!("pgsvc detach: nothing pinned at {}", dir.display());
        return Ok(());
    }
    if !is_bpffs(dir) {
        bail!(
            "{} is not on bpffs: not a pgsvc pin directory",
            dir.display()
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| !n.starts_with("link_"));
    let mut unknown = Vec::new();
    for name in names {
        let known = name.starts_with("link_") || pgsvc_common::maps::ALL.contains(&name.as_str());
        if !known {
            unknown.push(name);
            continue;
        }
        let path = dir.join(&name);
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        if let Some(hook) = name.strip_prefix("link_cgroup_") {
            println!("pgsvc detach: local-client socket program ({hook}) detached from its cgroup");
        } else if let Some(iface) = name.strip_prefix("link_") {
            println!("pgsvc detach: XDP program detached from {iface}");
        }
    }
    if !unknown.is_empty() {
        bail!(
            "{} also holds entries pgsvc does not own ({}): left in place",
            dir.display(),
            unknown.join(", ")
        );
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    println!("pgsvc detach: maps unpinned, {} removed", dir.display());
    Ok(())
}

/// The pid of a running `pgsvc run` that uses `pin_dir`, if any.
fn agent_on(pin_dir: &Path) -> Option<u32> {
    let me = std::process::id();
    let default = Path::new("/sys/fs/bpf/pgsvc");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if runs_agent_on(&argv, pin_dir, default) {
            return Some(pid);
        }
    }
    None
}

/// Whether `argv` is `pgsvc … run …` on `pin_dir` (`--pin-dir X`, `--pin-dir=X`, or the default).
fn runs_agent_on(argv: &[String], pin_dir: &Path, default: &Path) -> bool {
    let is_pgsvc = argv
        .first()
        .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "pgsvc"));
    if !is_pgsvc || !argv.iter().any(|a| a == "run") {
        return false;
    }
    let mut used = default.to_path_buf();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == "--pin-dir" {
            if let Some(v) = it.next() {
                used = PathBuf::from(v);
            }
        } else if let Some(v) = a.strip_prefix("--pin-dir=") {
            used = PathBuf::from(v);
        }
    }
    used == pin_dir
}

fn remove_vip(iface: &str, addr: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    let cidr = format!("{addr}/{prefix}");
    if crate::agent::netlink::del_addr_blocking(iface, addr, prefix)
        .with_context(|| format!("removing VIP {cidr} from {iface}"))?
    {
        println!("pgsvc detach: VIP {cidr} removed from {iface}");
    } else {
        println!("pgsvc detach: VIP {cidr} was not on {iface}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "pgsvc.service";

    #[test]
    fn a_plain_stop_detaches() {
        assert_eq!(
            stop_post_decision(Some("success"), Some(""), UNIT),
            StopPost::Detach
        );
        let other = "17 other.service restart running\n18 pgsvc.service stop running\n";
        assert_eq!(
            stop_post_decision(Some("success"), Some(other), UNIT),
            StopPost::Detach
        );
        // systemctl unavailable: a stop must detach.
        assert_eq!(
            stop_post_decision(Some("success"), None, UNIT),
            StopPost::Detach
        );
    }

    #[test]
    fn a_restart_keeps_the_datapath() {
        let jobs = "4711 pgsvc.service restart running\n";
        assert!(matches!(
            stop_post_decision(Some("success"), Some(jobs), UNIT),
            StopPost::Keep(why) if why.contains("restarting")
        ));
        let jobs = "12 pgsvc.service try-restart running\n";
        assert_ne!(
            stop_post_decision(Some("success"), Some(jobs), UNIT),
            StopPost::Detach
        );
    }

    #[test]
    fn a_crash_keeps_the_datapath() {
        for result in ["exit-code", "signal", "core-dump", "timeout", "watchdog"] {
            assert!(
                matches!(stop_post_decision(Some(result), Some(""), UNIT), StopPost::Keep(why) if why.contains(result)),
                "{result}"
            );
        }
    }

    #[test]
    fn finds_agents_by_pin_dir() {
        let argv = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let default = Path::new("/sys/fs/bpf/pgsvc");
        let other = Path::new("/sys/fs/bpf/x");
        assert!(runs_agent_on(
            &argv("/usr/bin/pgsvc run --iface eth0"),
            default,
            default
        ));
        assert!(!runs_agent_on(
            &argv("/usr/bin/pgsvc run --iface eth0"),
            other,
            default
        ));
        assert!(runs_agent_on(
            &argv("pgsvc run --pin-dir /sys/fs/bpf/x"),
            other,
            default
        ));
        assert!(runs_agent_on(
            &argv("pgsvc --netns n run --pin-dir=/sys/fs/bpf/x"),
            other,
            default
        ));
        assert!(!runs_agent_on(&argv("pgsvc status"), default, default));
        assert!(!runs_agent_on(&argv("/bin/less run"), default, default));
    }

    #[test]
    fn a_directory_off_bpffs_is_refused() {
        let dir = std::env::temp_dir().join(format!("pgsvc-detach-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("CONFIG"), b"not a pin").expect("file");
        let err = detach_pins(&dir).expect_err("refused");
        let kept = dir.join("CONFIG").exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.to_string().contains("not on bpffs"), "{err}");
        assert!(kept, "a file off bpffs was removed");
        // A missing directory is nothing to do.
        detach_pins(&dir).expect("nothing pinned");
    }

    #[test]
    fn vip_arguments() {
        assert_eq!(
            parse_vip("198.18.0.3/24"),
            Ok((Ipv4Addr::new(198, 18, 0, 3), 24))
        );
        assert!(parse_vip("198.18.0.3").is_err());
        assert!(parse_vip("198.18.0.3/33").is_err());
        assert!(parse_vip("x/24").is_err());
    }
}
