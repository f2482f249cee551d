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
mod tests {
    use super::*;
    use crate::admin::fixture::sample_status;

    fn line_of<'a>(table: &'a str, needles: &[&str]) -> &'a str {
        table
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no line with {needles:?} in\n{table}"))
    }

    #[test]
    fn table_shows_maint_and_drain_first() {
        let mut s = sample_status();
        s.services[0].servers[0].admin_state = AdminState::Drain;
        s.services[0].servers[0].state = "DRAIN".into();
        s.services[0].servers[1].admin_state = AdminState::Maint;
        s.services[0].servers[1].state = "MAINT".into();
        s.services[0].servers[1].last_check = None;
        let table = render_table(&s);
        let drained = line_of(&table, &["pg-test-1", "198.18.0.11"]);
        assert!(drained.contains("DRAIN (UP 3/3)"), "{drained}");
        let maint = line_of(&table, &["pg-test-2", "198.18.0.12"]);
        assert!(maint.contains("MAINT"), "{maint}");
        assert!(maint.contains("not checked (maint)"), "{maint}");
        assert!(!maint.contains("DOWN"), "{maint}");
    }

    #[test]
    fn table_shows_the_key_facts() {
        let table = render_table(&sample_status());
        let head = line_of(&table, &["pgsvc 0.1.0"]);
        for fact in [
            "pid 4242",
            "up 2h05m",
            "iface eth0",
            "xdp native",
            "READY",
            "flows 12/65536",
        ] {
            assert!(head.contains(fact), "{fact:?} missing from {head:?}");
        }
        assert!(
            table.contains("last reload 3m00s ago: ok: reloaded: 2 services\n"),
            "{table}"
        );
        assert!(table.contains("vip 198.18.0.100/24"), "{table}");
        assert!(
            line_of(&table, &["packets"]).contains("fwd_established 123456"),
            "{table}"
        );
        assert!(
            !line_of(&table, &["packets"]).contains("pass"),
            "zero counters are left out: {table}"
        );

        let primary = line_of(&table, &["pg-test-primary"]);
        for fact in [
            "*:5433",
            "check /primary",
            "roundrobin",
            "1 active / 0 backup",
            "sessions 3 (total 127)",
            "in 1.2 MiB out 8.4 MiB",
            "rst 4",
            "dropped 2",
        ] {
            assert!(primary.contains(fact), "{fact:?} missing from {primary:?}");
        }
        let up = line_of(&table, &["pg-test-1", "198.18.0.11:6432", "active"]);
        for fact in [
            "UP 3/3",
            "w100",
            "sess 3/120",
            "last check L7 OK 2ms",
            "UP for 2h03m",
        ] {
            assert!(up.contains(fact), "{fact:?} missing from {up:?}");
        }
        assert!(
            up.starts_with("  "),
            "servers are indented under their service"
        );
        let down = line_of(&table, &["pg-test-2"]);
        for fact in [
            "DOWN 0/2",
            "inactive",
            "last check L7 status 503 4ms",
            "DOWN for 42s",
            "failed checks 498",
            "rst 4",
        ] {
            assert!(down.contains(fact), "{fact:?} missing from {down:?}");
        }
        assert!(line_of(&table, &["pg-test-3", "UNKNOWN"]).contains("no check yet"));

        let offline = line_of(&table, &["pg-test-offline"]);
        assert!(
            offline.contains("USING BACKUPS") && offline.contains("0 active / 1 backup"),
            "{offline}"
        );
        let backup = line_of(&table, &["pg-test-1", "backup"]);
        assert!(
            backup.contains("backup,active")
                && backup.contains("w50/100")
                && backup.contains("0.4ms"),
            "{backup}"
        );
        assert!(
            line_of(&table, &["pg-test-3", "DOWN 0/2"]).contains("last check L4 timeout 3.0s"),
            "{table}"
        );
    }

    #[test]
    fn table_flags_trouble() {
        let mut s = sample_status();
        s.ready = false;
        s.services[0].active_servers = 0;
        s.last_reload = Some(crate::status::ReloadStatus {
            at: s.updated_at - 5.0,
            ok: false,
            message: "pigsty.yml:3:7: bad".into(),
        });
        let table = render_table(&s);
        assert!(
            line_of(&table, &["pgsvc 0.1.0"]).contains("NOT READY"),
            "{table}"
        );
        assert!(
            line_of(&table, &["pg-test-primary"]).contains("NO USABLE SERVER"),
            "{table}"
        );
        assert!(
            table.contains(
                "last reload 5s ago: FAILED, kept the previous services: pigsty.yml:3:7: bad"
            ),
            "{table}"
        );
        let empty = render_table(&Status::default());
        assert!(
            empty.contains("no services") && empty.contains("last reload: none"),
            "{empty}"
        );
    }

    #[test]
    fn columns_line_up() {
        let table = render_table(&sample_status());
        let servers: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("  pg-test-"))
            .collect();
        assert_eq!(servers.len(), 5, "{table}");
        let col = |l: &str| l.find("198.18.").unwrap_or(usize::MAX);
        assert!(
            servers.iter().all(|l| col(l) == col(servers[0])),
            "addresses not aligned:\n{table}"
        );
        let col = |l: &str| l.find("sess ").unwrap_or(usize::MAX);
        assert!(
            servers.iter().all(|l| col(l) == col(servers[0])),
            "sessions not aligned:\n{table}"
        );
    }

    #[test]
    fn units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(8_808_038), "8.4 MiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(duration(-3.0), "0s");
        assert_eq!(duration(f64::NAN), "0s");
        assert_eq!(duration(59.9), "59s");
        assert_eq!(duration(192.0), "3m12s");
        assert_eq!(duration(7380.0), "2h03m");
        assert_eq!(duration(370_000.0), "4d06h");
        assert_eq!(millis(0.44), "0.4ms");
        assert_eq!(millis(2.4), "2ms");
        assert_eq!(millis(3000.0), "3.0s");
    }

    #[test]
    fn addresses() {
        assert_eq!(base_url("127.0.0.1:9101"), "http://127.0.0.1:9101");
        assert_eq!(base_url("[::1]:9101"), "http://[::1]:9101");
        assert_eq!(base_url("http://127.0.0.1:9101/"), "http://127.0.0.1:9101");
    }

    /// The client against a real listener on loopback: a closed port says so plainly.
    #[test]
    fn no_agent_is_a_clear_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
            // dropped: nothing listens there any more
        };
        let admin = format!("127.0.0.1:{port}");
        let err = run(StatusArgs {
            admin: admin.clone(),
            json: false,
        })
        .expect_err("no agent");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("no pgsvc agent answers at {admin}")),
            "{msg}"
        );
        assert!(
            msg.contains("is `pgsvc run` running? (connection refused)"),
            "{msg}"
        );
        let err = reload(ReloadArgs { admin }).expect_err("no agent");
        assert!(err.to_string().contains("connection refused"), "{err}");
    }

    /// status and reload against the real admin server.
    #[test]
    fn against_the_admin_server() {
        use std::sync::{Arc, RwLock};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (addr, _shutdown) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (reload_tx, mut reloads) =
                tokio::sync::mpsc::channel::<crate::control::ReloadRequest>(1);
            let (state_tx, mut states) =
                tokio::sync::mpsc::channel::<crate::control::ServerStateRequest>(1);
            let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
            let status = Arc::new(RwLock::new(sample_status()));
            tokio::spawn(crate::admin::serve(
                listener,
                status,
                reload_tx,
                state_tx,
                shutdown_rx,
            ));
            tokio::spawn(async move {
                while let Some(req) = states.recv().await {
                    let answer = if req.server == "pg-test-1" {
                        Ok(crate::control::ServerStateChange {
                            proxy: req.proxy,
                            server: req.server,
                            from: AdminState::Ready,
                            to: req.state,
                            not_saved: None,
                        })
                    } else {
                        Err(crate::control::ServerStateError::UnknownServer {
                            proxy: req.proxy,
                            server: req.server,
                        })
                    };
                    let _ = req.reply.send(answer);
                }
            });
            tokio::spawn(async move {
                let mut first = true;
                while let Some(req) = reloads.recv().await {
                    let answer = if first {
                        Ok(crate::control::ReloadSummary::default())
                    } else {
                        Err(crate::control::ReloadError::NoServices)
                    };
                    first = false;
                    let _ = req.reply.send(answer);
                }
            });
            (addr, shutdown)
        });
        let admin = addr.to_string();
        assert_eq!(
            run(StatusArgs {
                admin: admin.clone(),
                json: false
            })
            .expect("status"),
            ExitCode::SUCCESS
        );
        assert_eq!(
            run(StatusArgs {
                admin: admin.clone(),
                json: true
            })
            .expect("status --json"),
            ExitCode::SUCCESS
        );
        assert_eq!(
            reload(ReloadArgs {
                admin: admin.clone()
            })
            .expect("reload"),
            ExitCode::SUCCESS
        );
        assert_eq!(
            reload(ReloadArgs {
                admin: admin.clone()
            })
            .expect("refused reload"),
            ExitCode::FAILURE
        );
        // `pgsvc server set`: 0 when applied, non-zero for an unknown server.
        let set = |server: &str| {
            crate::cli::server::run(crate::cli::server::ServerCommand::Set(
                crate::cli::server::SetArgs {
                    target: ("pg-test-primary".to_owned(), server.to_owned()),
                    state: crate::cli::server::StateArg::Drain,
                    admin: admin.clone(),
                },
            ))
        };
        assert_eq!(set("pg-test-1").expect("set"), ExitCode::SUCCESS);
        assert_eq!(set("pg-test-9").expect("unknown server"), ExitCode::FAILURE);
        // The body the table is built from is the agent's snapshot, field for field.
        let body = block_on(get_status(&admin)).expect("GET /status");
        assert_eq!(
            serde_json::from_str::<Status>(&body).expect("parse"),
            sample_status()
        );
    }
}
