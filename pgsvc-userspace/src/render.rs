//! Rendering a plan as the HAProxy configuration Pigsty would generate for it.
//!
//! One `listen {cls}-{svc}` section per service, laid out like Pigsty's `service.cfg` template, under
//! global/defaults sections carrying the values of Pigsty's `haproxy.cfg.j2` that matter to
//! services, so the output validates on its own with `haproxy -c`. Pure text, no I/O: it lets an
//! operator diff pgsvc's reading of an inventory against the HAProxy config it replaces, and run
//! HAProxy side by side for comparisons.

use std::fmt::Write as _;

use crate::plan::{Balance, BindAddr, Plan, ServicePlan};

/// The full configuration: global and defaults sections, then every service of every cluster.
pub fn haproxy_config(plan: &Plan) -> String {
    let mut out = String::new();
    out.push_str(
        "# Rendered by `pgsvc render haproxy`: the services Pigsty would give HAProxy for this inventory.\n\
         # Pigsty's stats/exporter listener and userlist are left out; pgsvc serves /metrics itself.\n\
         global\n    maxconn     65535\n\n\
         defaults\n    mode               tcp\n    retries            3\n    timeout queue      3s\n    \
         timeout connect    3s\n    timeout client     24h\n    timeout server     24h\n    \
         timeout check      3s\n",
    );
    if plan.clusters.len() > 1 {
        out.push_str(
            "\n# Several clusters: Pigsty gives each cluster's nodes only that cluster's sections\n\
             # (unless pg_service_provider is set); use --cluster for one node's configuration.\n",
        );
    }
    for cluster in &plan.clusters {
        for service in &cluster.services {
            out.push('\n');
            out.push_str(&haproxy_listen(service));
        }
    }
    out
}

/// One service's `listen` section, as Pigsty's template renders it.
pub fn haproxy_listen(svc: &ServicePlan) -> String {
    let bind = match svc.ip {
        BindAddr::Any => "*".to_owned(),
        BindAddr::Addr(a) => a.to_string(),
    };
    let servers_of = |backup: bool| {
        svc.servers
            .iter()
            .filter(|s| s.backup == backup)
            .map(|s| s.addr.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    // `write!` into a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(
        out,
        "#---------------------------------------------------------------------"
    );
    let _ = writeln!(out, "# service: {} @ {bind}:{}", svc.name, svc.port);
    let _ = writeln!(
        out,
        "#---------------------------------------------------------------------"
    );
    let _ = writeln!(
        out,
        "{}",
        format!("# service instances {}", servers_of(false)).trim_end()
    );
    let _ = writeln!(
        out,
        "{}",
        format!("# service backups   {}", servers_of(true)).trim_end()
    );
    let _ = writeln!(out, "listen {}", svc.name);
    let _ = writeln!(out, "    bind {bind}:{}", svc.port);
    let _ = writeln!(out, "    mode tcp");
    let _ = writeln!(out, "    maxconn {}", svc.maxconn);
    match svc.balance {
        Balance::RoundRobin => {
            let _ = writeln!(out, "    balance roundrobin");
        }
        Balance::LeastConn => {
            let _ = writeln!(out, "    balance leastconn");
        }
        Balance::Maglev => {
            let _ = writeln!(
                out,
                "    # pgsvc `balance: maglev` (consistent hashing across LB nodes); HAProxy's nearest is source hashing"
            );
            let _ = writeln!(out, "    balance source");
        }
    }
    if svc.allbackups {
        let _ = writeln!(out, "    option allbackups");
    }
    let _ = writeln!(out, "    option httpchk");
    let _ = writeln!(out, "    option http-keep-alive");
    let _ = writeln!(out, "    http-check send meth OPTIONS uri {}", svc.check);
    let _ = writeln!(out, "    http-check expect status 200");
    let _ = writeln!(out, "    default-server {}", svc.options_line);
    let _ = writeln!(out);
    let _ = writeln!(out, "    # servers");
    for s in &svc.servers {
        let tls = if s.check_tls {
            " check-ssl ca-file /pg/cert/ca.crt"
        } else {
            ""
        };
        let backup = if s.backup { " backup" } else { "" };
        let _ = writeln!(
            out,
            "    server {} {}:{}{tls} check port {} weight {}{backup}",
            s.name, s.addr, s.port, s.check_port, s.weight
        );
    }
    out
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]
mod tests {
    use super::*;
    use crate::plan::plan_from_str;

    const INV: &str = "all:\n  children:\n    c:\n      hosts:\n        198.18.0.21: { pg_seq: 1, pg_role: primary, patroni_ssl_enabled: true }\n        198.18.0.22: { pg_seq: 2, pg_role: replica, pg_weight: 0 }\n      vars:\n        pg_cluster: c\n        pg_default_services: []\n        pg_services:\n          - { name: ro, port: 6000, ip: 198.18.0.9, selector: '[? pg_role == `replica`]', backup: '[? pg_role == `primary`]', balance: maglev, check: /replica, maxconn: 10, options: 'inter 1s' }\n";

    #[test]
    fn listen_section_lines() {
        let (plan, _) = plan_from_str(INV, "inv.yml", None).unwrap();
        let text = haproxy_listen(&plan.clusters[0].services[0]);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(
            lines,
            [
                "listen c-ro",
                "    bind 198.18.0.9:6000",
                "    mode tcp",
                "    maxconn 10",
                "    balance source",
                "    option httpchk",
                "    option http-keep-alive",
                "    http-check send meth OPTIONS uri /replica",
                "    http-check expect status 200",
                "    default-server inter 1s",
                "    server c-2 198.18.0.22:6432 check port 8008 weight 0",
                "    server c-1 198.18.0.21:6432 check-ssl ca-file /pg/cert/ca.crt check port 8008 weight 100 backup",
            ]
        );
        assert!(text.contains("# service backups   198.18.0.21\n"));
        assert!(text.contains("maglev"));
    }

    #[test]
    fn full_config_has_pigsty_defaults_and_every_service() {
        let (plan, _) = plan_from_str(INV, "inv.yml", None).unwrap();
        let text = haproxy_config(&plan);
        for line in [
            "    maxconn     65535",
            "    retries            3",
            "    timeout queue      3s",
            "    timeout connect    3s",
            "    timeout client     24h",
            "    timeout server     24h",
            "    timeout check      3s",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?}");
        }
        assert_eq!(text.matches("\nlisten ").count(), 1);
    }
}
