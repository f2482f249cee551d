//! `pgsvc render haproxy`: the HAProxy configuration Pigsty would generate.
//!
//! The config goes to stdout (ready for `haproxy -c -f -`), warnings to stderr; an invalid
//! inventory is an error with its file:line:column and a non-zero exit, as in `pgsvc check`.

use std::process::ExitCode;

use clap::Subcommand;

use super::InventoryArgs;
use crate::{plan, render};

#[derive(Debug, Subcommand)]
pub enum RenderTarget {
    /// HAProxy `listen` sections, as Pigsty renders them.
    Haproxy(InventoryArgs),
}

/// Renders the requested configuration.
///
/// # Errors
/// The inventory's [`plan::PlanError`] when it cannot be resolved.
pub fn run(target: RenderTarget) -> anyhow::Result<ExitCode> {
    match target {
        RenderTarget::Haproxy(inventory) => {
            let (plan, warnings) =
                plan::load_plan_isolated(&inventory.config, inventory.cluster.as_deref())?;
            for warning in &warnings {
                eprintln!("pgsvc: {warning}");
            }
            print!("{}", render::haproxy_config(&plan));
            Ok(ExitCode::SUCCESS)
        }
    }
}
