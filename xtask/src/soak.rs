//! `cargo xtask soak [--switchovers N] [--no-setup] [-- <soak args>]`: the switchover soak
//! (tests/src/bin/soak.rs) with the release pgsvc. Not part of `cargo xtask test`: it runs for
//! about half a minute per switchover.

use anyhow::{Context as _, bail};

use crate::cmd;

/// Setup (unless `no_setup`), the release pgsvc, then the soak program; its exit status is the
/// command's (non-zero when a check failed).
pub fn run(switchovers: u32, no_setup: bool, extra: &[String]) -> anyhow::Result<()> {
    if switchovers == 0 {
        bail!("--switchovers must be at least 1");
    }
    if !no_setup {
        crate::setup::full(crate::setup::Options {
            system_packages: true,
        })?;
    }
    let pgsvc = crate::build(true)?;
    if !crate::has_bin("pgsvc-tests", "soak")? {
        bail!("the pgsvc-tests crate has no `soak` binary (tests/src/bin/soak.rs)");
    }
    let out = crate::workspace_root().join("bench/results/soak.json");
    let mut c = cmd::cargo();
    c.args([
        "run",
        "--release",
        "-p",
        "pgsvc-tests",
        "--bin",
        "soak",
        "--",
    ])
    .arg("--switchovers")
    .arg(switchovers.to_string())
    .arg("--out")
    .arg(&out)
    .args(extra)
    .env("PGSVC_BIN", &pgsvc);
    println!("+ {}", cmd::display(&c));
    // exec: Ctrl-C and SIGTERM reach the soak, which tears the sandbox down; its exit status is ours.
    use std::os::unix::process::CommandExt as _;
    let err = c.exec();
    Err(err).context("could not start cargo run")
}
