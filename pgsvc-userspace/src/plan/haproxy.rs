//! The [`Plan`] of an HAProxy configuration in Pigsty's layout (see [`crate::config::haproxy`]).
//!
//! Each TCP `listen` is one service. Its cluster is the common `{cluster}` of its servers' names
//! (`{cluster}-{seq}`, as Pigsty names them) when the listen name starts with `{cluster}-`; for a
//! listen without servers, the longest cluster already known that prefixes it, else the name up to
//! its last `-`. Instances are the distinct servers of a cluster in order of first appearance.
//!
//! What an HAProxy file cannot say is filled in neutrally: no VIP, `role` `unknown`, ports
//! 5432/6432, and `dest` is the servers' port when they share one (`default` otherwise). The agent
//! uses none of these; services, servers, checks and timers are exactly what the file says.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::options;
use super::{
    Balance, BindAddr, ClusterPlan, Instance, Plan, PlanError, ServerPlan, ServicePlan, Warning,
    WarningKind,
};
use crate::config::haproxy::{self, HaproxyConfig, Listen};

/// Reads the HAProxy files and directories `paths` and resolves them (all clusters, or `cluster`).
///
/// # Errors
/// Any [`PlanError`]: unreadable file, a directive outside the subset (file:line), bad values.
pub fn load_haproxy_plan(
    paths: &[PathBuf],
    cluster: Option<&str>,
) -> Result<(Plan, Vec<Warning>), PlanError> {
    let (config, warnings) = haproxy::load(paths)?;
    plan_from_haproxy(&config, cluster, warnings)
}

/// Resolves a configuration already read; `warnings` are the reader's.
///
/// # Errors
/// As [`load_haproxy_plan`].
pub fn plan_from_haproxy(
    config: &HaproxyConfig,
    cluster: Option<&str>,
    mut warnings: Vec<Warning>,
) -> Result<(Plan, Vec<Warning>), PlanError> {
    let mut plan = Plan {
        clusters: Vec::new(),
    };
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut binds: Vec<(&Listen, BindAddr, u16)> = Vec::new();
    for listen in &config.listens {
        let known: Vec<&str> = plan.clusters.iter().map(|c| c.name.as_str()).collect();
        let cluster_name = cluster_of(listen, &known);
        let service = service(config, listen, &cluster_name, &mut warnings)?;
        for (other, ip, port) in &binds {
            let clash = *port == service.port
                && match (ip, service.ip) {
                    (BindAddr::Addr(a), BindAddr::Addr(b)) => *a == b,
                    _ => true,
                };
            if clash {
                return Err(PlanError::PortClash {
                    at: bind_at(listen),
                    service: service.name.clone(),
                    bind: bind_text(service.ip),
                    port: service.port,
                    other: other.name.clone(),
                    other_at: bind_at(other),
                });
            }
        }
        binds.push((listen, service.ip, service.port));
        let i = *index.entry(cluster_name.clone()).or_insert_with(|| {
            plan.clusters.push(ClusterPlan {
                name: cluster_name.clone(),
                vip: None,
                instances: Vec::new(),
                services: Vec::new(),
            });
            plan.clusters.len() - 1
        });
        let c = &mut plan.clusters[i];
        for s in &service.servers {
            if !c.instances.iter().any(|inst| inst.name == s.name) {
                c.instances.push(instance(&cluster_name, s));
            }
        }
        c.services.push(service);
    }
    if let Some(wanted) = cluster {
        if !plan.clusters.iter().any(|c| c.name == wanted) {
            return Err(PlanError::UnknownCluster {
                file: Arc::from(
                    config
                        .listens
                        .first()
                        .map_or_else(String::new, |l| l.at.file.to_string()),
                ),
                name: wanted.to_owned(),
                known: plan
                    .clusters
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        plan.clusters.retain(|c| c.name == wanted);
    }
    Ok((plan, warnings))
}

fn bind_at(listen: &Listen) -> crate::config::Location {
    listen
        .bind
        .as_ref()
        .map_or_else(|| listen.at.clone(), |(_, at)| at.clone())
}

fn bind_text(ip: BindAddr) -> String {
    match ip {
        BindAddr::Any => "*".to_owned(),
        BindAddr::Addr(a) => a.to_string(),
    }
}

/// The cluster a listen belongs to (see the module docs).
fn cluster_of(listen: &Listen, known: &[&str]) -> String {
    let prefix_of = |server: &str| server.rsplit_once('-').map(|(c, _)| c.to_owned());
    let mut names = listen.servers.iter().map(|s| prefix_of(&s.name));
    if let Some(Some(first)) = names.next()
        && names.all(|n| n.as_deref() == Some(first.as_str()))
        && listen.name.starts_with(&format!("{first}-"))
    {
        return first;
    }
    if let Some(best) = known
        .iter()
        .filter(|c| listen.name.starts_with(&format!("{c}-")))
        .max_by_key(|c| c.len())
    {
        return (*best).to_owned();
    }
    listen
        .name
        .rsplit_once('-')
        .map_or_else(|| listen.name.clone(), |(c, _)| c.to_owned())
}

fn instance(cluster: &str, s: &ServerPlan) -> Instance {
    let seq = s
        .name
        .strip_prefix(cluster)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    Instance {
        name: s.name.clone(),
        addr: s.addr,
        seq,
        role: "unknown".to_owned(),
        offline_query: false,
        weight: s.weight,
        patroni_port: s.check_port,
        patroni_tls: s.check_tls,
        pg_port: 5432,
        pgbouncer_port: 6432,
    }
}

fn service(
    config: &HaproxyConfig,
    listen: &Listen,
    cluster: &str,
    warnings: &mut Vec<Warning>,
) -> Result<ServicePlan, PlanError> {
    let name = listen.name.clone();
    let (options_line, options_at) = listen
        .default_server
        .clone()
        .unwrap_or_else(|| (String::new(), listen.at.clone()));
    let mut opts = super::parse_service_options(
        &options_line,
        &options_at,
        &name,
        &format!("`default-server` of `{name}`"),
        "",
        warnings,
    )?;
    opts.check_timeout = match &listen.timeout_check {
        Some((text, at)) => match options::parse_time(text) {
            Ok((d, _)) if !d.is_zero() => d,
            _ => {
                return Err(PlanError::InvalidValue {
                    at: at.clone(),
                    what: "`timeout check`".to_owned(),
                    expected: "a time greater than zero (e.g. 3s)",
                    found: text.clone(),
                });
            }
        },
        // HAProxy: without `timeout check`, `inter` bounds the whole check.
        None => opts.inter,
    };
    let balance = match listen.balance.as_ref().map(|(b, _)| b.as_str()) {
        Some("leastconn") => Balance::LeastConn,
        Some("source") => Balance::Maglev,
        _ => Balance::RoundRobin,
    };
    let mut servers: Vec<ServerPlan> = Vec::with_capacity(listen.servers.len());
    for s in &listen.servers {
        if servers.iter().any(|o| o.name == s.name) {
            return Err(PlanError::InvalidValue {
                at: s.at.clone(),
                what: format!("server name in `{name}`"),
                expected: "a name used once per listen",
                found: s.name.clone(),
            });
        }
        servers.push(ServerPlan {
            name: s.name.clone(),
            addr: s.addr,
            port: s.port,
            check_port: s.check_port.unwrap_or(s.port),
            check_tls: s.check_tls,
            weight: s.weight.or(opts.weight).unwrap_or(1),
            backup: s.backup,
        });
    }
    if servers.is_empty() {
        warnings.push(Warning {
            kind: WarningKind::EmptyService,
            at: Some(listen.at.clone()),
            message: format!("listen `{name}` has no server: it will refuse every connection"),
        });
    }
    let dest = match servers.first() {
        Some(first) if servers.iter().all(|s| s.port == first.port) => first.port.to_string(),
        _ => "default".to_owned(),
    };
    let ((ip, port), _) = listen.bind.clone().ok_or_else(|| PlanError::MissingField {
        at: listen.at.clone(),
        service: name.clone(),
        field: "bind",
    })?;
    let (check, _) = listen
        .check_uri
        .clone()
        .ok_or_else(|| PlanError::MissingField {
            at: listen.at.clone(),
            service: name.clone(),
            field: "http-check send uri",
        })?;
    Ok(ServicePlan {
        short_name: name
            .strip_prefix(cluster)
            .and_then(|r| r.strip_prefix('-'))
            .unwrap_or(&name)
            .to_owned(),
        name,
        cluster: cluster.to_owned(),
        ip: ip.map_or(BindAddr::Any, BindAddr::Addr),
        port,
        dest,
        check,
        maxconn: listen
            .maxconn
            .or(listen.defaults.maxconn)
            .or(config.global_maxconn)
            .unwrap_or(5000),
        balance,
        options: opts,
        options_line,
        servers,
        allbackups: listen.allbackups,
    })
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Plan {
        let (config, _) = haproxy::parse_sources(&[("t.cfg", text)], "t.cfg").unwrap();
        plan_from_haproxy(&config, None, Vec::new()).unwrap().0
    }

    const HEAD: &str = "listen pg-a-b-primary\n    bind *:5433\n    option httpchk\n    http-check send meth OPTIONS uri /primary\n";

    #[test]
    fn cluster_comes_from_server_names_then_known_clusters_then_last_dash() {
        let text = format!(
            "{HEAD}    server pg-a-b-1 198.18.0.11:6432 check port 8008\n\
             listen pg-a-b-my-svc\n    bind *:5440\n    option httpchk\n    http-check send meth OPTIONS uri /\n\
             listen solo-x\n    bind *:5441\n    option httpchk\n    http-check send meth OPTIONS uri /\n"
        );
        let p = plan(&text);
        let names: Vec<(&str, Vec<&str>)> = p
            .clusters
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.services.iter().map(|s| s.short_name.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [("pg-a-b", vec!["primary", "my-svc"]), ("solo", vec!["x"])]
        );
        let i = &p.clusters[0].instances[0];
        assert_eq!(
            (i.name.as_str(), i.seq, i.patroni_port),
            ("pg-a-b-1", 1, 8008)
        );
    }

    #[test]
    fn haproxy_defaults_apply_without_explicit_values() {
        let text = format!(
            "global\n    maxconn 777\ndefaults\n    balance leastconn\n    default-server inter 4s weight 7\n{HEAD}    default-server fall 5\n    server pg-a-b-1 198.18.0.11:6432 check\n"
        );
        let s = &plan(&text).clusters[0].services[0];
        assert_eq!(s.maxconn, 777);
        assert_eq!(s.balance, Balance::LeastConn);
        assert_eq!(s.options_line, "inter 4s weight 7 fall 5");
        assert_eq!(
            (s.options.fall, s.options.check_timeout),
            (5, s.options.inter)
        );
        // No `port`: HAProxy checks the server's own port; no `weight`: the default-server's.
        assert_eq!((s.servers[0].check_port, s.servers[0].weight), (6432, 7));
        assert_eq!(s.dest, "6432");
    }
}
