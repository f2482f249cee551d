//! Compiles the XDP program (pgsvc-ebpf) with the nightly toolchain and bpf-linker, and places the
//! object at `$OUT_DIR/pgsvc` for `include_bytes!`.
//!
//! This is what `aya_build::build_ebpf` does, plus `-C target-cpu=v3`: the program uses atomic
//! fetch-and-add and exchange on map values (round-robin counter, exactly-once close accounting),
//! which need the BPF v3 instruction set (kernel ≥ 5.12); v3's 32-bit sub-registers also make the
//! program shorter. aya-build 0.2 offers no way to add rustflags.
//!
//! With `AYA_BUILD_SKIP=1` (clippy, pure unit tests) an empty object is written instead; loading it
//! then fails with a clear message.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const EBPF_PACKAGE: &str = "pgsvc-ebpf";
const EBPF_BIN: &str = "pgsvc";
const PASS_BIN: &str = "pgsvc-pass";
const TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join(EBPF_BIN);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!(
            "cargo:warning=AYA_BUILD_SKIP=1: the XDP program is not built; `pgsvc run` will refuse to start"
        );
        fs::write(&object, b"").context("writing the placeholder eBPF object")?;
        fs::write(out_dir.join(PASS_BIN), b"").context("writing the placeholder eBPF object")?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("no workspace directory"))?;
    for dir in [
        "pgsvc-ebpf/src",
        "pgsvc-ebpf/Cargo.toml",
        "pgsvc-common/src",
        "pgsvc-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let target_dir = out_dir.join("ebpf-target");

    let mut flags = OsString::new();
    for (i, f) in [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        "-Ctarget-cpu=v3".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            flags.push("\x1f");
        }
        flags.push(f);
    }

    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace)
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            EBPF_PACKAGE,
            "--bins",
            "--release",
        ])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        // The outer (stable) cargo's settings must not leak into the nightly build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    let output = cmd.output().with_context(|| {
        format!("spawning {cmd:?} (is rustup installed? run `cargo xtask setup`)")
    })?;
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the XDP program failed (nightly + rust-src + bpf-linker needed: run `cargo xtask setup`)"
        );
    }
    let release = target_dir.join(TARGET).join("release");
    copy(&release.join(EBPF_BIN), &object)?;
    copy(&release.join(PASS_BIN), &out_dir.join(PASS_BIN))
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}
