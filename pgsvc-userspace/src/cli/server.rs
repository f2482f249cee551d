//! `pgsvc server set <proxy>/<server> ready|drain|maint`: HAProxy's `set server … state …` through a
//! running agent's admin API. The state holds across reloads and restarts until set back to ready.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};

use super::status::{DEFAULT_ADMIN, base_url, block_on, client, unreachable_agent};
use crate::balance::AdminState;

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Set a server's state: ready (normal), drain (no new connections, open ones stay) or maint
    /// (no traffic at all, open connections reset, health checks stopped).
    Set(SetArgs),
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// The server as `<proxy>/<server>`, e.g. pg-test-primary/pg-test-1 (names as `pgsvc status`
    /// shows them).
    #[arg(value_parser = parse_target, value_name = "PROXY/SERVER")]
    pub target: (String, String),
    #[arg(value_enum)]
    pub state: StateArg,
    /// Admin API of the agent (`host:port`, as given to `pgsvc run --admin`).
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Ready,
    Drain,
    Maint,
}

impl From<StateArg> for AdminState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Ready => Self::Ready,
            StateArg::Drain => Self::Drain,
            StateArg::Maint => Self::Maint,
        }
    }
}

fn parse_target(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((proxy, server))
            if !proxy.is_empty() && !server.is_empty() && !server.contains('/') =>
        {
            Ok((proxy.to_owned(), server.to_owned()))
        }
        _ => Err(format!(
            "{s:?}: give the server as <proxy>/<server>, e.g. pg-test-primary/pg-test-1"
        )),
    }
}

pub fn run(command: ServerCommand) -> anyhow::Result<ExitCode> {
    match command {
        ServerCommand::Set(args) => set(&args),
    }
}

fn set(args: &SetArgs) -> anyhow::Result<ExitCode> {
    let (proxy, server) = &args.target;
    let state = AdminState::from(args.state);
    let (code, body) = block_on(post_state(&args.admin, proxy, server, state))?;
    let message = body.trim_end();
    match code {
        200 => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        404 | 422 => {
            eprintln!("pgsvc: {message}");
            Ok(ExitCode::FAILURE)
        }
        _ => bail!("the agent at {} answered {code}: {message}", args.admin),
    }
}

async fn post_state(
    admin: &str,
    proxy: &str,
    server: &str,
    state: AdminState,
) -> anyhow::Result<(u16, String)> {
    let response = client(Duration::from_secs(75))?
        .post(format!(
            "{}/servers/{proxy}/{server}/state",
            base_url(admin)
        ))
        .body(state.as_str())
        .send()
        .await
        .map_err(|e| unreachable_agent(admin, &e))?;
    let code = response.status().as_u16();
    let body = response
        .text()
        .await
        .with_context(|| format!("reading the answer of {admin}"))?;
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_need_a_proxy_and_a_server() {
        assert_eq!(
            parse_target("pg-test-primary/pg-test-1"),
            Ok(("pg-test-primary".to_owned(), "pg-test-1".to_owned()))
        );
        for bad in ["pg-test-1", "/pg-test-1", "pg-test-primary/", "a/b/c", ""] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
    }
}
