//! The `pgsvc` command line: `run`, `check`, `render`, `status`, `reload`, `server`, `detach`,
//! `completions`, `man`.
//!
//! Each subcommand lives in its own file and returns an exit code; errors are printed here with their
//! causes and turned into a non-zero exit, never a panic.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

pub mod check;
pub mod detach;
pub mod docs;
pub mod logging;
pub mod render_cmd;
pub mod run;
pub mod server;
pub mod status;

#[derive(Debug, Parser)]
#[command(
    name = "pgsvc",
    version,
    propagate_version = true,
    about = "Patroni-aware XDP load balancer for PostgreSQL services"
)]
pub struct Cli {
    /// Run inside this network namespace (a name under /run/netns, as `ip netns` creates), without
    /// leaving the current mount namespace — unlike `ip netns exec`, which remounts /sys and so hides
    /// the bpffs pins that let a restarted agent adopt the running datapath.
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
    /// Log lines as plain text (no colours unless stdout is a terminal) or JSON, one object a line.
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    pub log_format: logging::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Moves the process (its only thread, before any other starts) into a named network namespace.
fn enter_netns(name: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    if name.contains('/') || name.is_empty() {
        anyhow::bail!("--netns {name:?}: give a namespace name as `ip netns list` shows it");
    }
    let path = format!("/run/netns/{name}");
    let f = std::fs::File::open(&path)
        .map_err(|e| anyhow::anyhow!("--netns {name}: cannot open {path}: {e}"))?;
    // SAFETY: setns on an open namespace fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!(
            "--netns {name}: setns failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: attach the XDP program and keep every service true to Patroni's roles.
    Run(Box<run::RunArgs>),
    /// Validate an inventory and print the resolved services.
    Check(check::CheckArgs),
    /// Render the configuration another load balancer would need for the same services.
    Render {
        #[command(subcommand)]
        target: render_cmd::RenderTarget,
    },
    /// Show live services, servers, health and connections of a running agent.
    Status(status::StatusArgs),
    /// Ask a running agent to re-read its inventory (same as SIGHUP).
    Reload(status::ReloadArgs),
    /// Set a server's state in a running agent (HAProxy's `set server <proxy>/<server> state`).
    Server {
        #[command(subcommand)]
        command: server::ServerCommand,
    },
    /// Remove what an agent run with --keep left attached: XDP link, pinned maps, VIP.
    Detach(detach::DetachArgs),
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions(docs::CompletionsArgs),
    /// Print the man page, or write every page into a directory.
    Man(docs::ManArgs),
}

/// `--config` and `--cluster`, shared by the commands that read an inventory.
#[derive(Debug, Args, Clone)]
pub struct InventoryArgs {
    /// Pigsty inventory (YAML).
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Only this cluster (`pg_cluster`); all clusters when absent.
    #[arg(long)]
    pub cluster: Option<String>,
}

/// Where `run` and `check` read their services: a Pigsty inventory, or the HAProxy configuration
/// Pigsty renders on each node.
#[derive(Debug, Args, Clone)]
pub struct SourceArgs {
    /// Pigsty inventory (YAML).
    #[arg(long, short = 'c', required_unless_present = "haproxy_config")]
    pub config: Option<PathBuf>,
    /// HAProxy configuration file or directory (its `*.cfg` files in lexical order), repeatable and
    /// read in the order given, e.g. `--haproxy-config /etc/haproxy/haproxy.cfg --haproxy-config
    /// /etc/haproxy/conf.d`. Only the subset Pigsty writes is read (see the README).
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    pub haproxy_config: Vec<PathBuf>,
    /// Only this cluster (`pg_cluster`, or the cluster part of the listen names); all when absent.
    #[arg(long)]
    pub cluster: Option<String>,
}

impl SourceArgs {
    /// The source the flags name (clap guarantees exactly one kind).
    pub fn source(&self) -> crate::plan::ConfigSource {
        match &self.config {
            Some(path) => crate::plan::ConfigSource::Inventory(path.clone()),
            None => crate::plan::ConfigSource::Haproxy(self.haproxy_config.clone()),
        }
    }
}

pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    if let Command::Run(args) = &cli.command {
        // `--log` given on the command line wins over RUST_LOG; its default does not.
        let given = matches
            .subcommand_matches("run")
            .is_some_and(|m| m.value_source("log") == Some(clap::parser::ValueSource::CommandLine));
        if let Err(err) = logging::init(&args.log, given, cli.log_format) {
            eprintln!("pgsvc: error: {err}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(ns) = &cli.netns
        && let Err(err) = enter_netns(ns)
    {
        eprintln!("pgsvc: error: {err}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Check(args) => check::run(args),
        Command::Render { target } => render_cmd::run(target),
        Command::Status(args) => status::run(args),
        Command::Reload(args) => status::reload(args),
        Command::Server { command } => server::run(command),
        Command::Detach(args) => detach::run(args),
        Command::Completions(args) => docs::run_completions(args),
        Command::Man(args) => docs::run_man(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pgsvc: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
