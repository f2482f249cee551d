//! `pgsvc check`: validate an inventory and print the resolved services.

use std::process::ExitCode;

use clap::Args;

use super::InventoryArgs;

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub inventory: InventoryArgs,
    /// Machine-readable output (stable; see docs/check-json.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
