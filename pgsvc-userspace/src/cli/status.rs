//! `pgsvc status` and `pgsvc reload`: talk to a running agent's admin API.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct StatusArgs {}

#[derive(Debug, Args)]
pub struct ReloadArgs {}

pub fn run(_args: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

pub fn reload(_args: ReloadArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
