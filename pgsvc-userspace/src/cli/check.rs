//! `pgsvc check`: validate an inventory and print the resolved services.
//!
//! Human output goes to stdout, warnings and errors to stderr. With `--json`, stdout carries one
//! JSON document whose schema (`pgsvc.check/v1`) is documented in docs/check-json.md and consumed by
//! tests and tooling; it is printed for invalid inventories too. Exit status: 0 only when the
//! inventory is valid (no error and no warning of a kind that fails the check).

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::SourceArgs;
use crate::plan::options::haproxy_time;
use crate::plan::{
    self, Balance, BindAddr, ClusterPlan, Location, Plan, ServerOptions, ServicePlan, Warning,
    WarningKind,
};

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub inventory: SourceArgs,
    /// Machine-readable output (stable; see docs/check-json.md).
    #[arg(long)]
    pub json: bool,
}

/// Runs the check.
///
/// # Errors
/// Never for bad input (that is reported and turned into exit status 1); only if stdout fails.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let source = args.inventory.source();
    let file = source.to_string();
    let result = source.load_isolated(args.inventory.cluster.as_deref());
    let (plan, warnings, error) = match result {
        Ok((plan, warnings)) => (Some(plan), warnings, None),
        Err(err) => (None, Vec::new(), Some(err)),
    };
    let failing = warnings.iter().filter(|w| w.kind.fails_check()).count();
    let valid = error.is_none() && failing == 0;
    for warning in &warnings {
        eprintln!("pgsvc: {warning}");
    }
    if let Some(err) = &error {
        eprintln!("pgsvc: error: {err}");
    }
    if args.json {
        let report = report(&file, plan.as_ref(), &warnings, error.as_ref(), valid);
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if let Some(plan) = &plan {
        print!("{}", human(plan));
        if valid {
            println!(
                "ok: {} cluster(s), {} service(s), {} warning(s)",
                plan.clusters.len(),
                plan.clusters
                    .iter()
                    .map(|c| c.services.len())
                    .sum::<usize>(),
                warnings.len()
            );
        } else {
            println!("invalid: {failing} warning(s) that fail the check (see above)");
        }
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn bind_text(ip: BindAddr) -> String {
    match ip {
        BindAddr::Any => "*".to_owned(),
        BindAddr::Addr(a) => a.to_string(),
    }
}

fn balance_text(b: Balance) -> &'static str {
    match b {
        Balance::RoundRobin => "roundrobin",
        Balance::LeastConn => "leastconn",
        Balance::Maglev => "maglev",
    }
}

fn timers_text(o: &ServerOptions) -> String {
    let mut text = format!(
        "inter {} fastinter {} downinter {} rise {} fall {}",
        haproxy_time(o.inter),
        haproxy_time(o.fastinter),
        haproxy_time(o.downinter),
        o.rise,
        o.fall
    );
    if o.shutdown_sessions {
        text.push_str(" on-marked-down shutdown-sessions");
    }
    if !o.slowstart.is_zero() {
        text.push_str(&format!(" slowstart {}", haproxy_time(o.slowstart)));
    }
    text.push_str(&format!(" maxconn {} maxqueue {}", o.maxconn, o.maxqueue));
    if let Some(w) = o.weight {
        text.push_str(&format!(" weight {w}"));
    }
    text.push_str(&format!(" check-timeout {}", haproxy_time(o.check_timeout)));
    text
}

fn human(plan: &Plan) -> String {
    let mut out = String::new();
    for cluster in &plan.clusters {
        let vip = cluster
            .vip
            .map(|v| format!(" vip {}/{}", v.addr, v.prefix_len))
            .unwrap_or_default();
        out.push_str(&format!("cluster {}{vip}\n", cluster.name));
        for i in &cluster.instances {
            out.push_str(&format!(
                "  instance {} {} role {}{} weight {} patroni :{}{} pg :{} pgbouncer :{}\n",
                i.name,
                i.addr,
                i.role,
                if i.offline_query {
                    " offline_query"
                } else {
                    ""
                },
                i.weight,
                i.patroni_port,
                if i.patroni_tls { " tls" } else { "" },
                i.pg_port,
                i.pgbouncer_port
            ));
        }
        for s in &cluster.services {
            out.push_str(&format!(
                "  service {} {}:{} dest {} check OPTIONS {} balance {} maxconn {}\n",
                s.name,
                bind_text(s.ip),
                s.port,
                s.dest,
                s.check,
                balance_text(s.balance),
                s.maxconn
            ));
            out.push_str(&format!("    timers {}\n", timers_text(&s.options)));
            if s.servers.is_empty() {
                out.push_str("    (no servers)\n");
            }
            for v in &s.servers {
                out.push_str(&format!(
                    "    server {} {}:{} check :{}{} weight {}{}\n",
                    v.name,
                    v.addr,
                    v.port,
                    v.check_port,
                    if v.check_tls { " tls" } else { "" },
                    v.weight,
                    if v.backup { " backup" } else { "" }
                ));
            }
        }
    }
    out
}

// ---- JSON schema pgsvc.check/v1 (docs/check-json.md). Field names and meanings never change;
// ---- new fields may be added.

#[derive(Serialize)]
struct Report<'a> {
    schema: &'static str,
    file: &'a str,
    valid: bool,
    error: Option<ErrorJson>,
    warnings: Vec<WarningJson>,
    clusters: Vec<ClusterJson>,
}

#[derive(Serialize)]
struct LocationJson {
    file: String,
    line: u32,
    column: u32,
}

impl From<&Location> for LocationJson {
    fn from(l: &Location) -> Self {
        Self {
            file: l.file.to_string(),
            line: l.line,
            column: l.column,
        }
    }
}

#[derive(Serialize)]
struct ErrorJson {
    message: String,
    location: Option<LocationJson>,
}

#[derive(Serialize)]
struct WarningJson {
    kind: WarningKind,
    fails_check: bool,
    message: String,
    location: Option<LocationJson>,
}

#[derive(Serialize)]
struct ClusterJson {
    name: String,
    vip: Option<String>,
    instances: Vec<InstanceJson>,
    services: Vec<ServiceJson>,
}

#[derive(Serialize)]
struct InstanceJson {
    name: String,
    address: String,
    seq: u32,
    role: String,
    offline_query: bool,
    weight: u32,
    patroni_port: u16,
    patroni_tls: bool,
    pg_port: u16,
    pgbouncer_port: u16,
}

#[derive(Serialize)]
struct ServiceJson {
    name: String,
    service: String,
    cluster: String,
    ip: String,
    port: u16,
    dest: String,
    check: CheckJson,
    maxconn: u32,
    balance: &'static str,
    allbackups: bool,
    default_server: String,
    timers: TimersJson,
    servers: Vec<ServerJson>,
}

#[derive(Serialize)]
struct CheckJson {
    method: &'static str,
    uri: String,
    expect_status: u16,
}

#[derive(Serialize)]
struct TimersJson {
    inter_ms: u128,
    fastinter_ms: u128,
    downinter_ms: u128,
    rise: u32,
    fall: u32,
    shutdown_sessions: bool,
    slowstart_ms: u128,
    maxconn: u32,
    maxqueue: u32,
    weight: Option<u32>,
    check_timeout_ms: u128,
}

#[derive(Serialize)]
struct ServerJson {
    name: String,
    address: String,
    port: u16,
    check_port: u16,
    check_tls: bool,
    weight: u32,
    backup: bool,
}

fn report<'a>(
    file: &'a str,
    plan: Option<&Plan>,
    warnings: &[Warning],
    error: Option<&plan::PlanError>,
    valid: bool,
) -> Report<'a> {
    Report {
        schema: "pgsvc.check/v1",
        file,
        valid,
        error: error.map(|e| ErrorJson {
            message: e.to_string(),
            location: e.location().map(LocationJson::from),
        }),
        warnings: warnings
            .iter()
            .map(|w| WarningJson {
                kind: w.kind,
                fails_check: w.kind.fails_check(),
                message: w.message.clone(),
                location: w.at.as_ref().map(LocationJson::from),
            })
            .collect(),
        clusters: plan
            .map(|p| p.clusters.iter().map(cluster_json).collect())
            .unwrap_or_default(),
    }
}

fn cluster_json(c: &ClusterPlan) -> ClusterJson {
    ClusterJson {
        name: c.name.clone(),
        vip: c.vip.map(|v| format!("{}/{}", v.addr, v.prefix_len)),
        instances: c
            .instances
            .iter()
            .map(|i| InstanceJson {
                name: i.name.clone(),
                address: i.addr.to_string(),
                seq: i.seq,
                role: i.role.clone(),
                offline_query: i.offline_query,
                weight: i.weight,
                patroni_port: i.patroni_port,
                patroni_tls: i.patroni_tls,
                pg_port: i.pg_port,
                pgbouncer_port: i.pgbouncer_port,
            })
            .collect(),
        services: c.services.iter().map(service_json).collect(),
    }
}

fn service_json(s: &ServicePlan) -> ServiceJson {
    let o = &s.options;
    ServiceJson {
        name: s.name.clone(),
        service: s.short_name.clone(),
        cluster: s.cluster.clone(),
        ip: bind_text(s.ip),
        port: s.port,
        dest: s.dest.clone(),
        check: CheckJson {
            method: "OPTIONS",
            uri: s.check.clone(),
            expect_status: 200,
        },
        maxconn: s.maxconn,
        balance: balance_text(s.balance),
        allbackups: s.allbackups,
        default_server: s.options_line.clone(),
        timers: TimersJson {
            inter_ms: o.inter.as_millis(),
            fastinter_ms: o.fastinter.as_millis(),
            downinter_ms: o.downinter.as_millis(),
            rise: o.rise,
            fall: o.fall,
            shutdown_sessions: o.shutdown_sessions,
            slowstart_ms: o.slowstart.as_millis(),
            maxconn: o.maxconn,
            maxqueue: o.maxqueue,
            weight: o.weight,
            check_timeout_ms: o.check_timeout.as_millis(),
        },
        servers: s
            .servers
            .iter()
            .map(|v| ServerJson {
                name: v.name.clone(),
                address: v.addr.to_string(),
                port: v.port,
                check_port: v.check_port,
                check_tls: v.check_tls,
                weight: v.weight,
                backup: v.backup,
            })
            .collect(),
    }
}
