//! `pgsvc render haproxy`: the HAProxy configuration Pigsty would generate.

use std::process::ExitCode;

use clap::Subcommand;

use super::InventoryArgs;

#[derive(Debug, Subcommand)]
pub enum RenderTarget {
    /// HAProxy `listen` sections, as Pigsty renders them.
    Haproxy(InventoryArgs),
}

pub fn run(_target: RenderTarget) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
