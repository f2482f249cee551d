//! `cargo xtask setup`: everything the build and the tests need on a fresh machine, idempotently.
//! Every step checks first and acts only when something is missing, so a second run is a quick no-op.
//!
//! 1. the nightly toolchain with `rust-src` (the XDP program is built with `-Z build-std=core`);
//! 2. bpf-linker, built against the nightly's own LLVM (see shared/TOOLCHAIN.md) and rebuilt when the
//!    nightly changes;
//! 3. bpffs at /sys/fs/bpf (pinned maps);
//! 4. the Debian packages the tests use;
//! 5. the real-cluster sandbox's Python venv (`sandbox/pgsandbox install`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;

/// bpf-linker's version known to build against LLVM 22 with rustc 1.95.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPFFS: &str = "/sys/fs/bpf";

/// Debian packages of the packet, netns and e2e tiers and of the benchmarks.
const APT_PACKAGES: &[&str] = &[
    "haproxy",
    "iproute2",
    "ethtool",
    "iperf3",
    "postgresql",
    "pgbouncer",
    "etcd-server",
    "python3-venv",
    "procps",
    "psmisc",
    // systemd-analyze verifies the packaged unit (xtask package and its tests).
    "systemd",
    // protoc: etcd-client (pgsvc's DCS watch) compiles etcd's .proto files at build time.
    "protobuf-compiler",
    // the sandbox's CA and certificates for its etcd (TLS with client certificates, as Pigsty's);
    // the netns tier's TLS etcd tests make theirs the same way
    "openssl",
];
/// Installed when the archive has them; a note otherwise.
const OPTIONAL_APT_PACKAGES: &[&str] = &["bpftool"];

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Install Debian packages and the sandbox venv (steps 4 and 5).
    pub system_packages: bool,
}

/// All five steps.
pub fn full(opts: Options) -> anyhow::Result<()> {
    let root = is_root();
    if !root {
        println!(
            "setup: not running as root: bpffs, Debian packages and the sandbox venv are only checked \
             or skipped (run as root to install them)"
        );
    }
    toolchain()?;
    bpffs(root)?;
    if opts.system_packages {
        apt(root)?;
        sandbox(root)?;
    } else {
        println!("setup [4/5] Debian packages: skipped (--no-apt)");
        println!("setup [5/5] sandbox venv: skipped (--no-apt)");
    }
    println!("setup: done");
    Ok(())
}

/// Steps 1 and 2: what `cargo build` needs.
pub fn toolchain() -> anyhow::Result<()> {
    nightly()?;
    bpf_linker()
}

/// Steps 1–3: what the packet tier and the datapath benchmark need.
pub fn datapath() -> anyhow::Result<()> {
    toolchain()?;
    bpffs(is_root())
}

pub fn is_root() -> bool {
    // The effective uid is the second field of `Uid:` (real, effective, saved, fs).
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------- 1. nightly + rust-src

fn has_nightly(list: &str) -> bool {
    // `nightly-<host>` is what `+nightly` resolves to; dated nightlies (`nightly-2026-...`) are not.
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| {
            name == "nightly"
                || name
                    .strip_prefix("nightly-")
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
}

fn nightly() -> anyhow::Result<()> {
    let list = cmd::capture(Command::new("rustup").args(["toolchain", "list"]))?;
    if has_nightly(&list) {
        println!("setup [1/5] nightly toolchain: present");
    } else {
        println!("setup [1/5] nightly toolchain: missing, installing");
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context(
            "installing the nightly toolchain failed: the XDP program needs a nightly rustc \
             (shared/TOOLCHAIN.md); install it with rustup",
        )?;
    }
    let installed = cmd::capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        println!("setup [1/5] nightly rust-src: present");
    } else {
        println!("setup [1/5] nightly rust-src: missing, adding");
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- 2. bpf-linker

fn llvm_cache() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache").join("pgsvc-llvm"))
}

/// `rustup run nightly bpf-linker --version`: the only way it finds the nightly's libLLVM.
fn bpf_linker_version() -> Option<String> {
    cmd::probe(cmd::nightly("bpf-linker").arg("--version")).filter(|v| !v.is_empty())
}

/// The LLVM shared library of the nightly's sysroot, and its major version
/// (`libLLVM.so.22.1-rust-1.97.0-nightly` → 22).
fn nightly_libllvm() -> anyhow::Result<(PathBuf, String)> {
    let sysroot = cmd::capture(cmd::nightly("rustc").args(["--print", "sysroot"]))?;
    let lib = Path::new(&sysroot).join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", lib.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("libLLVM.so.")
            && name.contains("-rust-")
            && let Some(major) = version.split('.').next()
            && !major.is_empty()
            && major.chars().all(|c| c.is_ascii_digit())
        {
            found.push((entry.path(), major.to_owned()));
        }
    }
    found.sort();
    match found.pop() {
        Some(hit) => Ok(hit),
        None => bail!(
            "no libLLVM.so.*-rust-* in {} (bpf-linker must be built against the nightly's LLVM)",
            lib.display()
        ),
    }
}

fn bpf_linker() -> anyhow::Result<()> {
    let nightly = cmd::capture(cmd::nightly("rustc").arg("--version"))?;
    let cache = llvm_cache()?;
    let stamp = cache.join("nightly-version");
    let recorded = fs::read_to_string(&stamp).ok().map(|s| s.trim().to_owned());
    let working = bpf_linker_version();

    let reason = match (&working, &recorded) {
        (Some(version), Some(built_for)) if *built_for == nightly => {
            println!("setup [2/5] bpf-linker: {version}, built for {nightly}");
            return Ok(());
        }
        (Some(version), None) => {
            // Built by hand before this stamp existed, and it loads the current nightly's libLLVM.
            fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
            fs::write(&stamp, format!("{nightly}\n"))
                .with_context(|| format!("writing {}", stamp.display()))?;
            println!(
                "setup [2/5] bpf-linker: {version} works with {nightly}; recorded in {}",
                stamp.display()
            );
            return Ok(());
        }
        (Some(_), Some(built_for)) => {
            format!("it was built for {built_for}, the nightly is now {nightly}")
        }
        (None, _) => "it is missing or cannot load the nightly's LLVM".to_owned(),
    };
    println!(
        "setup [2/5] bpf-linker: building {BPF_LINKER_VERSION} ({reason}; takes a few minutes)"
    );

    let (libllvm, major) = nightly_libllvm()?;
    let prefix_lib = cache.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let link = prefix_lib.join("libLLVM.so");
    if fs::symlink_metadata(&link).is_ok() {
        fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    println!("setup [2/5] {} -> {}", link.display(), libllvm.display());

    let feature = format!("llvm-{major}");
    let install = |locked: bool| {
        let mut c = Command::new("cargo");
        c.env("LLVM_PREFIX", &cache)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", &feature, "--force"]);
        if locked {
            c.arg("--locked");
        }
        for var in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "CARGO",
        ] {
            c.env_remove(var);
        }
        cmd::run(&mut c)
    };
    if let Err(err) = install(false) {
        println!("setup [2/5] bpf-linker build failed ({err:#}); retrying with its own Cargo.lock");
        install(true).context(format!(
            "building bpf-linker {BPF_LINKER_VERSION} with feature {feature} failed \
             (see shared/TOOLCHAIN.md)"
        ))?;
    }
    let Some(version) = bpf_linker_version() else {
        bail!(
            "bpf-linker was built but `rustup run nightly bpf-linker --version` fails \
             (is ~/.cargo/bin on PATH?)"
        );
    };
    fs::write(&stamp, format!("{nightly}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    println!("setup [2/5] bpf-linker: {version}, built for {nightly}");
    Ok(())
}

// ---------------------------------------------------------------- 3. bpffs

fn bpffs_mounted() -> anyhow::Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut fields = l.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}

fn bpffs(root: bool) -> anyhow::Result<()> {
    if bpffs_mounted()? {
        println!("setup [3/5] bpffs: mounted at {BPFFS}");
        return Ok(());
    }
    if !root {
        println!("setup [3/5] bpffs: NOT mounted at {BPFFS}; as root: mount -t bpf bpf {BPFFS}");
        return Ok(());
    }
    println!("setup [3/5] bpffs: not mounted, mounting");
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

// ---------------------------------------------------------------- 4. Debian packages

fn dpkg_installed(package: &str) -> bool {
    cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.ends_with("install ok installed"))
}

/// Whether the archive offers the package (`apt-cache policy` shows a candidate).
fn apt_candidate(package: &str) -> bool {
    cmd::probe(Command::new("apt-cache").args(["policy", package])).is_some_and(|out| {
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate:"))
            .any(|c| !c.trim().is_empty() && c.trim() != "(none)")
    })
}

/// A `/usr/sbin/policy-rc.d` that refuses every service start while packages are installed, so
/// their maintainer scripts (postgresql creates and starts a cluster) start no daemons on a
/// machine without systemd. Removed again on drop; an existing one is left alone.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn install() -> anyhow::Result<Self> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(Self(None));
        }
        fs::write(
            &path,
            "#!/bin/sh\n# written by cargo xtask setup for one apt-get install\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
        println!(
            "setup [4/5] {} (exit 101) while installing: no daemons are started",
            path.display()
        );
        Ok(Self(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.0
            && let Err(err) = fs::remove_file(path)
        {
            eprintln!("setup: could not remove {}: {err}", path.display());
        }
    }
}

fn apt_env(c: &mut Command) -> &mut Command {
    c.env("DEBIAN_FRONTEND", "noninteractive")
}

fn apt(root: bool) -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    let missing_optional: Vec<&str> = OPTIONAL_APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() && missing_optional.is_empty() {
        println!("setup [4/5] Debian packages: all installed");
        return Ok(());
    }
    let wanted: Vec<&str> = missing.iter().chain(&missing_optional).copied().collect();
    if !root {
        println!(
            "setup [4/5] Debian packages: missing {} — skipped (not root); as root: apt-get install {}",
            wanted.join(" "),
            wanted.join(" ")
        );
        return Ok(());
    }
    // An optional package missing from the current lists is not worth an `apt-get update` on
    // every run; anything required is (a fresh machine may have no lists at all).
    let offered_now: Vec<&str> = missing_optional
        .iter()
        .copied()
        .filter(|p| apt_candidate(p))
        .collect();
    if missing.is_empty() && offered_now.is_empty() {
        println!(
            "setup [4/5] Debian packages: all installed; {} not in the archive, skipped \
             (optional: used only for debugging)",
            missing_optional.join(" ")
        );
        return Ok(());
    }
    println!(
        "setup [4/5] Debian packages: installing {}",
        wanted.join(" ")
    );
    cmd::run(apt_env(&mut Command::new("apt-get")).args(["update", "-q"]))?;
    let mut install: Vec<&str> = missing.clone();
    for p in &missing_optional {
        if apt_candidate(p) {
            install.push(p);
        } else {
            println!(
                "setup [4/5] {p}: not available from the configured archive, skipped (optional)"
            );
        }
    }
    let guard = NoServiceStarts::install()?;
    let result = cmd::run(
        apt_env(&mut Command::new("apt-get"))
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&install),
    );
    drop(guard);
    result?;
    let still: Vec<&str> = install
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get install finished but these are not installed: {}",
            still.join(" ")
        );
    }
    println!("setup [4/5] Debian packages: installed");
    Ok(())
}

// ---------------------------------------------------------------- 5. sandbox venv

fn sandbox(root: bool) -> anyhow::Result<()> {
    let script = crate::workspace_root().join("sandbox").join("pgsandbox");
    if !script.exists() {
        println!(
            "setup [5/5] sandbox venv: skipped ({} does not exist yet)",
            script.display()
        );
        return Ok(());
    }
    if !root {
        println!(
            "setup [5/5] sandbox venv: skipped (not root); as root: sandbox/pgsandbox install"
        );
        return Ok(());
    }
    println!("setup [5/5] sandbox venv: sandbox/pgsandbox install");
    let mut c = Command::new("bash");
    c.arg(&script)
        .arg("install")
        .current_dir(crate::workspace_root());
    apt_env(&mut c);
    cmd::run(&mut c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_in_toolchain_list() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(!has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2026-05-19-x86_64-unknown-linux-gnu\n"
        ));
    }
}
