//! `pgsvc status` and `pgsvc reload`: talk to a running agent's admin API.
//!
//! `status` fetches `/status` and renders it as a table a DBA reads at a glance (or prints the JSON
//! as received with `--json`); `reload` posts `/reload`, the API twin of SIGHUP.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    balance::AdminState,
    status::{STATUS_SCHEMA, ServerStatus, ServiceStatus, Status},
};

pub(super) const DEFAULT_ADMIN: &str = "127.0.0.1:9102";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Admin API of the agent (`host:port`, as given to `pgsvc run --admin`).
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: String,
    /// Print the agent's JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Admin API of the agent (`host:port`, as given to `pgsvc run --admin`).
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: String,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let body = block_on(get_status(&args.admin))?;
    if args.json {
        let value: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("the agent at {} sent invalid JSON", args.admin))?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let status: Status = serde_json::from_str(&body).with_context(|| {
        format!(
            "the agent at {} sent a status this pgsvc cannot read",
            args.admin
        )
    })?;
    if status.schema != STATUS_SCHEMA {
        eprintln!(
            "pgsvc: warning: the agent speaks {:?}, this pgsvc {STATUS_SCHEMA:?}",
            status.schema
        );
    }
    let age = unix_now() - status.updated_at;
    if age > 5.0 {
        eprintln!(
            "pgsvc: warning: the agent's snapshot is {} old: its main loop may be stuck",
            duration(age)
        );
    }
    print!("{}", render_table(&status));
    Ok(ExitCode::SUCCESS)
}

pub fn reload(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    let (code, body) = block_on(post_reload(&args.admin))?;
    let message = body.trim_end();
    match code {
        200 => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        422 => {
            eprintln!("pgsvc: reload refused, the agent keeps its current services: {message}");
            Ok(ExitCode::FAILURE)
        }
        _ => bail!("the agent at {} answered {code}: {message}", args.admin),
    }
}

pub(super) fn block_on<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(work)
}

pub(super) fn base_url(admin: &str) -> String {
    let admin = admin.trim_end_matches('/');
    if admin.contains("://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    }
}

pub(super) fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    // The admin API is local: never send it through an HTTP proxy from the environment.
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(3))
        .timeout(timeout)
        .build()
        .context("building the HTTP client")
}

async fn get_status(admin: &str) -> anyhow::Result<String> {
    let response = client(Duration::from_secs(10))?
        .get(format!("{}/status", base_url(admin)))
        .send()
        .await
        .map_err(|e| unreachable_agent(admin, &e))?;
    let code = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("reading the answer of {admin}"))?;
    if !code.is_success() {
        bail!("the agent at {admin} answered {code}: {}", body.trim_end());
    }
    Ok(body)
}

async fn post_reload(admin: &str) -> anyhow::Result<(u16, String)> {
    // The agent answers once the reload is applied or refused; it gives up itself after 60 s.
    let response = client(Duration::from_secs(75))?
        .post(format!("{}/reload", base_url(admin)))
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

/// "no pgsvc agent answers at ADDR — is `pgsvc run` running? (connection refused)", with the
/// innermost cause rather than reqwest's generic wording.
pub(super) fn unreachable_agent(admin: &str, error: &reqwest::Error) -> anyhow::Error {
    let mut cause = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause = match inner.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused".into()
            }
            _ => inner.to_string(),
        };
        source = inner.source();
    }
    if error.is_timeout() {
        cause = "timed out".into();
    }
    if error.is_connect() || error.is_timeout() {
        anyhow::anyhow!("no pgsvc agent answers at {admin} — is `pgsvc run` running? ({cause})")
    } else {
        anyhow::anyhow!("talking to the agent at {admin}: {cause}")
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The human view of a snapshot: a header on the agent, then each service with its servers.
/// Ages are relative to the snapshot's own time, so the output depends on the snapshot alone.
pub fn render_table(s: &Status) -> String {
    let mut out = String::new();
    let ready = if s.ready { "READY" } else { "NOT READY" };
    let uptime = duration(s.updated_at - s.started_at);
    let _ = writeln!(
        out,
        "pgsvc {}  pid {}  up {uptime}  iface {}  xdp {}  {ready}  flows {}/{}",
        s.version, s.pid, s.iface, s.xdp_mode, s.datapath.flows, s.datapath.max_flows
    );
    let clusters = if s.clusters.is_empty() {
        "-".to_owned()
    } else {
        s.clusters.join(",")
    };
    let vip = s
        .vip
        .as_deref()
        .map(|v| format!("  vip {v}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "config {}  clusters {clusters}  snat {}{vip}",
        s.config, s.snat_addr
    );
    match &s.last_reload {
        Some(r) => {
            let result = if r.ok {
                "ok"
            } else {
                "FAILED, kept the previous services"
            };
            let ago = duration(s.updated_at - r.at);
            let _ = writeln!(out, "last reload {ago} ago: {result}: {}", r.message);
        }
        None => out.push_str("last reload: none since start\n"),
    }
    let packets: Vec<String> = s
        .datapath
        .packets
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    if !packets.is_empty() {
        let _ = writeln!(out, "packets {}", packets.join("  "));
    }
    for d in &s.dcs {
        let _ = writeln!(out, "{}", dcs_line(d));
    }
    if s.services.is_empty() {
        out.push_str("\nno services\n");
        return out;
    }

    let headers: Vec<Vec<String>> = s.services.iter().map(service_cells).collect();
    let rows: Vec<Vec<Vec<String>>> = s
        .services
        .iter()
        .map(|svc| svc.servers.iter().map(server_cells).collect())
        .collect();
    let header_widths = widths(headers.iter());
    let row_widths = widths(rows.iter().flatten());
    for ((svc, header), rows) in s.services.iter().zip(&headers).zip(&rows) {
        out.push('\n');
        push_row(&mut out, "", header, &header_widths);
        if svc.servers.is_empty() {
            out.push_str("  (no servers)\n");
        }
        for row in rows {
            push_row(&mut out, "  ", row, &row_widths);
        }
    }
    out
}

fn service_cells(svc: &ServiceStatus) -> Vec<String> {
    let mut notes = Vec::new();
    if svc.active_servers + svc.backup_servers == 0 {
        notes.push("NO USABLE SERVER".to_owned());
    } else if svc.using_backups {
        notes.push("USING BACKUPS".to_owned());
    }
    if svc.rst_sent > 0 {
        notes.push(format!("rst {}", svc.rst_sent));
    }
    if svc.syn_dropped > 0 {
        notes.push(format!("dropped {}", svc.syn_dropped));
    }
    vec![
        svc.name.clone(),
        format!("{}:{}", svc.ip, svc.port),
        format!("check {}", svc.check),
        svc.balance.clone(),
        format!(
            "{} active / {} backup",
            svc.active_servers, svc.backup_servers
        ),
        format!(
            "sessions {} (total {})",
            svc.current_sessions, svc.sessions_total
        ),
        format!("in {} out {}", bytes(svc.bytes_in), bytes(svc.bytes_out)),
        format!("maxconn {}", svc.maxconn),
        notes.join("  "),
    ]
}

/// One cluster's leader key: who holds it and whether write services follow it, or why not.
fn dcs_line(d: &crate::status::DcsClusterStatus) -> String {
    let view = if d.fencing {
        match &d.leader_leaving {
            None => format!(
                "leader {} (write services follow the key)",
                d.leader.as_deref().unwrap_or("none")
            ),
            Some(why) => format!(
                "leader {} STEPPING DOWN, fenced: {why}",
                d.leader.as_deref().unwrap_or("none")
            ),
        }
    } else {
        format!(
            "REST checks alone: {}",
            d.fallback_reason.as_deref().unwrap_or("no DCS view yet")
        )
    };
    let etcd = match (&d.endpoint, d.watch_lag_seconds) {
        (Some(e), Some(lag)) => format!("etcd {e} rev {} lag {lag:.1}s", d.revision),
        (Some(e), None) => format!("etcd {e}"),
        (None, _) => "etcd UNREACHABLE".to_owned(),
    };
    format!(
        "dcs {}: {view}  {etcd}  fenced {}  fallbacks {}",
        d.cluster, d.fence_events_total, d.fallbacks_total
    )
}

fn server_cells(v: &ServerStatus) -> Vec<String> {
    let health = if v.health_status.is_empty() {
        v.state.clone()
    } else {
        v.health_status.clone()
    };
    // The operator's state first, as HAProxy shows it; a drained server's health still matters.
    let state = match v.admin_state {
        AdminState::Maint => "MAINT".to_owned(),
        AdminState::Drain => format!("DRAIN ({health})"),
        AdminState::Ready => health,
    };
    let role = match (v.backup, v.active) {
        (false, true) => "active",
        (false, false) => "inactive",
        (true, true) => "backup,active",
        (true, false) => "backup",
    };
    let weight = if v.effective_weight == v.weight {
        format!("w{}", v.weight)
    } else {
        format!("w{}/{}", v.effective_weight, v.weight)
    };
    let check = match &v.last_check {
        Some(c) => format!("last check {} {}", c.reason, millis(c.duration_ms)),
        None if v.admin_state == AdminState::Maint => "not checked (maint)".to_owned(),
        None => "no check yet".to_owned(),
    };
    let mut notes = Vec::new();
    if let Some(changed) = v.last_change_seconds
        && v.admin_state == AdminState::Ready
    {
        notes.push(format!("{} for {}", v.state, duration(changed)));
    }
    if v.check_failures_total > 0 {
        notes.push(format!("failed checks {}", v.check_failures_total));
    }
    if v.rst_sent > 0 {
        notes.push(format!("rst {}", v.rst_sent));
    }
    if v.fenced {
        notes.push("fenced (not the leader-key holder)".to_owned());
    }
    vec![
        v.name.clone(),
        format!("{}:{}", v.addr, v.port),
        state,
        role.to_owned(),
        weight,
        format!("sess {}/{}", v.current_sessions, v.sessions_total),
        format!("in {} out {}", bytes(v.bytes_in), bytes(v.bytes_out)),
        check,
        notes.join("  "),
    ]
}

fn widths<'a>(rows: impl Iterator<Item = &'a Vec<String>>) -> Vec<usize> {
    let mut widths = Vec::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    widths
}

fn push_row(out: &mut String, indent: &str, cells: &[String], widths: &[usize]) {
    let mut line = String::from(indent);
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push_str("  ");
        }
        line.push_str(cell);
        if i + 1 < cells.len() {
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// 1.2 MiB, 512 B.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// 45s, 3m12s, 2h03m, 4d07h.
fn duration(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// 0.4ms, 2ms, 3.0s.
fn millis(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        "?ms".to_owned()
    } else if ms < 1.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests;
