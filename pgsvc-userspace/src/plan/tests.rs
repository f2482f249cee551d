//! Plan resolution tests: Pigsty's semantics on small inventories.

use std::time::Duration;

use super::*;

/// pg-test as in Pigsty's documentation (addresses moved into 198.18.0.0/15).
const PG_TEST: &str = r#"
all:
  children:
    pg-test:
      hosts:
        198.18.0.11: { pg_seq: 1, pg_role: primary }
        198.18.0.12: { pg_seq: 2, pg_role: replica, pg_weight: 50 }
        198.18.0.13: { pg_seq: 3, pg_role: replica, pg_offline_query: true }
      vars:
        pg_cluster: pg-test
        pg_vip_enabled: true
        pg_vip_address: 198.18.0.3/24
        pg_services:
          - { name: standby, port: 5435, ip: "*", selector: "[]", backup: "[? pg_role == `primary`]",
              dest: default, check: /sync, maxconn: 3000, balance: roundrobin }
          - { name: lagcheck, port: 5440, selector: "[? pg_role == `replica`]", dest: postgres,
              check: "/replica?lag=16MB", balance: leastconn }
  vars: { pg_default_service_dest: pgbouncer }
"#;

fn plan(src: &str) -> (Plan, Vec<Warning>) {
    plan_from_str(src, "inv.yml", None).unwrap_or_else(|e| panic!("{e}"))
}

fn err(src: &str) -> String {
    plan_from_str(src, "inv.yml", None).unwrap_err().to_string()
}

/// `name:port[:backup]` for each server, in declaration order.
fn servers(svc: &ServicePlan) -> Vec<String> {
    svc.servers
        .iter()
        .map(|s| {
            format!(
                "{}@{}:{}{}",
                s.name,
                s.addr,
                s.port,
                if s.backup { ":backup" } else { "" }
            )
        })
        .collect()
}

fn service<'a>(plan: &'a Plan, name: &str) -> &'a ServicePlan {
    plan.clusters
        .iter()
        .flat_map(|c| &c.services)
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

#[test]
fn default_services_of_pg_test() {
    let (plan, warnings) = plan(PG_TEST);
    assert!(warnings.is_empty(), "{warnings:?}");
    let cluster = &plan.clusters[0];
    let names: Vec<&str> = cluster.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "pg-test-primary",
            "pg-test-replica",
            "pg-test-default",
            "pg-test-offline",
            "pg-test-standby",
            "pg-test-lagcheck"
        ]
    );
    let primary = service(&plan, "pg-test-primary");
    assert_eq!(
        (primary.port, primary.check.as_str(), primary.dest.as_str()),
        (5433, "/primary", "default")
    );
    assert_eq!(
        servers(primary),
        [
            "pg-test-1@198.18.0.11:6432",
            "pg-test-2@198.18.0.12:6432",
            "pg-test-3@198.18.0.13:6432"
        ]
    );
    assert_eq!(
        servers(service(&plan, "pg-test-replica")),
        [
            "pg-test-1@198.18.0.11:6432:backup",
            "pg-test-2@198.18.0.12:6432",
            "pg-test-3@198.18.0.13:6432"
        ]
    );
    let default = service(&plan, "pg-test-default");
    assert_eq!((default.port, default.check.as_str()), (5436, "/primary"));
    assert_eq!(
        servers(default),
        [
            "pg-test-1@198.18.0.11:5432",
            "pg-test-2@198.18.0.12:5432",
            "pg-test-3@198.18.0.13:5432"
        ]
    );
    // Selected members first, then backup-only members.
    assert_eq!(
        servers(service(&plan, "pg-test-offline")),
        [
            "pg-test-3@198.18.0.13:5432",
            "pg-test-2@198.18.0.12:5432:backup"
        ]
    );
    let standby = service(&plan, "pg-test-standby");
    assert_eq!(
        (standby.port, standby.check.as_str(), standby.maxconn),
        (5435, "/sync", 3000)
    );
    assert_eq!(
        servers(standby),
        [
            "pg-test-1@198.18.0.11:6432:backup",
            "pg-test-2@198.18.0.12:6432",
            "pg-test-3@198.18.0.13:6432"
        ]
    );
    let lag = service(&plan, "pg-test-lagcheck");
    assert_eq!(
        (lag.check.as_str(), lag.balance),
        ("/replica?lag=16MB", Balance::LeastConn)
    );
    assert_eq!(
        servers(lag),
        ["pg-test-2@198.18.0.12:5432", "pg-test-3@198.18.0.13:5432"]
    );
    // pg_weight flows to every server line.
    assert_eq!(primary.servers[1].weight, 50);
    assert_eq!(primary.servers[0].weight, 100);
    assert_eq!(
        cluster.vip,
        Some(Vip {
            addr: Ipv4Addr::new(198, 18, 0, 3),
            prefix_len: 24
        })
    );
    assert_eq!(primary.options, ServerOptions::default());
    assert_eq!(primary.ip, BindAddr::Any);
    assert_eq!(primary.maxconn, 5000);
}

#[test]
fn instances_carry_their_variables() {
    let (plan, _) = plan(
        "all:\n  children:\n    c:\n      hosts:\n        198.18.0.21: { pg_seq: 7, pg_role: primary, patroni_port: 8009, patroni_ssl_enabled: true, pg_port: 5555, pgbouncer_port: 6666 }\n      vars: { pg_cluster: c }\n",
    );
    let i = &plan.clusters[0].instances[0];
    assert_eq!(i.name, "c-7");
    assert_eq!(
        (i.seq, i.role.as_str(), i.offline_query, i.weight),
        (7, "primary", false, 100)
    );
    assert_eq!(
        (i.patroni_port, i.patroni_tls, i.pg_port, i.pgbouncer_port),
        (8009, true, 5555, 6666)
    );
    let primary = service(&plan, "c-primary");
    assert_eq!(
        (primary.servers[0].port, primary.servers[0].check_port),
        (6666, 8009)
    );
    assert!(primary.servers[0].check_tls);
    assert_eq!(service(&plan, "c-default").servers[0].port, 5555);
}

#[test]
fn dest_resolution() {
    let src = |default_dest: &str, dest: &str| {
        format!(
            "all:\n  children:\n    c:\n      hosts: {{ 198.18.0.21: {{ pg_seq: 1, pg_role: primary, pg_port: 5000 }} }}\n      vars:\n        pg_cluster: c\n        pg_default_services: []\n        pg_default_service_dest: {default_dest}\n        pg_services: [ {{ name: s, port: 6000, selector: '[]', dest: {dest} }} ]\n"
        )
    };
    for (default_dest, dest, port) in [
        ("pgbouncer", "default", 6432),
        ("postgres", "default", 5000),
        ("7000", "default", 7000),
        ("postgres", "pgbouncer", 6432),
        ("pgbouncer", "postgres", 5000),
        ("pgbouncer", "9999", 9999),
    ] {
        let (plan, _) = plan(&src(default_dest, dest));
        assert_eq!(
            plan.clusters[0].services[0].servers[0].port, port,
            "{default_dest} {dest}"
        );
        assert_eq!(plan.clusters[0].services[0].dest, dest);
    }
    let message = err(&src("pgbouncer", "pgpool"));
    assert_eq!(
        message,
        "inv.yml:9:69: unknown `dest` of service `c-s` \"pgpool\": expected default, postgres, pgbouncer or a port number"
    );
    assert!(
        err(&src("default", "default")).contains("unknown `pg_default_service_dest` \"default\"")
    );
}

#[test]
fn host_variables_win_over_group_and_all() {
    let (plan, _) = plan(
        "all:\n  vars: { pg_weight: 10 }\n  children:\n    c:\n      vars: { pg_cluster: c, pg_weight: 20 }\n      hosts:\n        198.18.0.21: { pg_seq: 1, pg_role: primary, pg_weight: 0 }\n        198.18.0.22: { pg_seq: 2, pg_role: replica }\n",
    );
    let weights: Vec<u32> = plan.clusters[0]
        .instances
        .iter()
        .map(|i| i.weight)
        .collect();
    assert_eq!(weights, [0, 20]);
}

#[test]
fn rto_plans_and_options() {
    let src = |extra: &str| {
        format!(
            "all:\n  children:\n    c:\n      hosts: {{ 198.18.0.21: {{ pg_seq: 1, pg_role: primary }} }}\n      vars: {{ pg_cluster: c, {extra} }}\n"
        )
    };
    let (fast, _) = plan(&src("pg_rto: fast"));
    let opts = &service(&fast, "c-primary").options;
    assert_eq!(
        (opts.inter, opts.fastinter, opts.downinter),
        (
            Duration::from_secs(1),
            Duration::from_millis(500),
            Duration::from_secs(1)
        )
    );
    assert!(
        service(&fast, "c-primary")
            .options_line
            .starts_with("inter 1s fastinter 500ms downinter 1s rise 3 fall 3")
    );
    let (wide, _) = plan(&src("pg_rto: wide"));
    assert_eq!(
        service(&wide, "c-replica").options.inter,
        Duration::from_secs(4)
    );
    let (custom, _) = plan(&src(
        "pg_rto: mine, pg_rto_plan: { mine: [1, 2, 3, 4, 5, 7s, 700ms, 9s, 4, 5] }",
    ));
    let opts = &service(&custom, "c-offline").options;
    assert_eq!(
        (
            opts.inter,
            opts.fastinter,
            opts.downinter,
            opts.rise,
            opts.fall
        ),
        (
            Duration::from_secs(7),
            Duration::from_millis(700),
            Duration::from_secs(9),
            4,
            5
        )
    );
    assert!(err(&src("pg_rto: turbo")).starts_with(
        "inv.yml:5:38: unknown `pg_rto` \"turbo\": expected one of fast, norm, safe, wide"
    ));
    assert!(
        err(&src("pg_rto: x, pg_rto_plan: { x: [1, 2] }"))
            .contains("`pg_rto_plan` entry `x`: expected 10 values, found 2")
    );
}

#[test]
fn options_string_replaces_the_default_server_line() {
    let (p, warnings) = plan(
        "all:\n  children:\n    c:\n      hosts: { 198.18.0.21: { pg_seq: 1, pg_role: primary } }\n      vars:\n        pg_cluster: c\n        pg_default_services: []\n        pg_services:\n          - { name: s, port: 6000, selector: '[]', options: 'inter 5s rise 2 fall 4 agent-check' }\n",
    );
    let svc = service(&p, "c-s");
    assert_eq!(svc.options_line, "inter 5s rise 2 fall 4 agent-check");
    assert_eq!(
        (
            svc.options.inter,
            svc.options.fastinter,
            svc.options.rise,
            svc.options.fall
        ),
        (Duration::from_secs(5), Duration::from_secs(5), 2, 4)
    );
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].kind, WarningKind::UnknownServerOption);
    assert!(
        warnings[0]
            .to_string()
            .starts_with("inv.yml:9:61: warning: `options` of service `c-s`: `agent-check`"),
        "{}",
        warnings[0]
    );
}

#[test]
fn empty_service_is_valid_and_warned() {
    let (p, warnings) = plan(
        "all:\n  children:\n    c:\n      hosts: { 198.18.0.21: { pg_seq: 1, pg_role: primary } }\n      vars: { pg_cluster: c }\n",
    );
    // A single primary: the offline service selects nothing and has no replica to back it up.
    assert!(service(&p, "c-offline").servers.is_empty());
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].kind, WarningKind::EmptyService);
    assert!(
        warnings[0]
            .message
            .contains("service `c-offline` selects no member")
    );
    assert!(
        warnings[0]
            .to_string()
            .starts_with("<built-in pg_default_services>:5:"),
        "{}",
        warnings[0]
    );
}

#[test]
fn cluster_filter_and_order() {
    let src = "all:\n  children:\n    b: { hosts: { 198.18.0.2: { pg_seq: 1, pg_role: primary } }, vars: { pg_cluster: pg-b } }\n    a: { hosts: { 198.18.0.1: { pg_seq: 1, pg_role: primary } }, vars: { pg_cluster: pg-a } }\n";
    let (all, _) = plan(src);
    let names: Vec<&str> = all.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["pg-b", "pg-a"]);
    let (one, _) = plan_from_str(src, "inv.yml", Some("pg-a")).unwrap();
    assert_eq!(one.clusters.len(), 1);
    assert_eq!(one.clusters[0].name, "pg-a");
    let e = plan_from_str(src, "inv.yml", Some("pg-c")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "inv.yml: unknown cluster `pg-c` (the inventory has: pg-b, pg-a)"
    );
    assert!(e.location().is_none());
}

#[test]
fn errors_point_at_the_offending_value() {
    let base = |host: &str, services: &str| {
        format!(
            "all:\n  children:\n    c:\n      hosts:\n        {host}\n        198.18.0.22: {{ pg_seq: 2, pg_role: replica }}\n      vars:\n        pg_cluster: c\n        pg_services:\n{services}"
        )
    };
    let ok_host = "198.18.0.21: { pg_seq: 1, pg_role: primary }";
    let cases: Vec<(String, &str)> = vec![
        (
            base(
                ok_host,
                "          - { name: x, port: 5433, selector: '[]' }\n",
            ),
            "inv.yml:10:30: service `c-x` listens on *:5433, which service `c-primary` already uses (at <built-in pg_default_services>:2:",
        ),
        (
            base(
                ok_host,
                "          - { name: x, port: 70000, selector: '[]' }\n",
            ),
            "inv.yml:10:30: port 70000 of service `c-x` is out of range 1..=65535",
        ),
        (
            base(
                ok_host,
                "          - { name: x, port: 0, selector: '[]' }\n",
            ),
            "inv.yml:10:30: port 0 of service `c-x` is out of range",
        ),
        (
            base(
                ok_host,
                "          - { name: x, port: 6000, ip: 198.18.0.300, selector: '[]' }\n",
            ),
            "inv.yml:10:40: invalid address `198.18.0.300` for `ip` of service `c-x`",
        ),
        (
            base(
                ok_host,
                "          - { name: x, port: 6000, selector: '[? pg_role == ]' }\n",
            ),
            "inv.yml:10:46: invalid JMESPath in `selector` of service `c-x`: `[? pg_role == ]` at position 14: Parse error",
        ),
        (
            base(
                ok_host,
                "          - { name: x, port: 6000, selector: '[]', backup: '[?' }\n",
            ),
            "inv.yml:10:60: invalid JMESPath in `backup` of service `c-x`: `[?` at position 2",
        ),
        (
            base(ok_host, "          - { name: x, port: 6000 }\n"),
            "inv.yml:10:13: service `c-x` has no `selector`",
        ),
        (
            base(
                ok_host,
                "          - { name: primary, port: 6000, selector: '[]' }\n",
            ),
            "inv.yml:10:13: service `c-primary` is already defined in cluster `c`",
        ),
        (
            base(
                ok_host,
                "          - { name: x, port: 6000, selector: '[]', balance: random }\n",
            ),
            "inv.yml:10:61: `balance` of service `c-x` must be roundrobin, leastconn or maglev, found \"random\"",
        ),
        (
            base(
                ok_host,
                "          - { name: x, port: 6000, selector: '[]', check: primary }\n",
            ),
            "inv.yml:10:59: `check` of service `c-x` must be a Patroni REST path",
        ),
        (
            base(
                ok_host,
                "          - { name: x, port: 6000, selector: '[]', options: 'rise 0' }\n",
            ),
            "inv.yml:10:61: `options` of service `c-x`: `rise` `0` is not an integer in 1..=4294967295",
        ),
        (
            base(
                ok_host,
                "          - { name: x, port: 6000, selector: '[].pg_seq' }\n",
            ),
            "inv.yml:10:46: `selector` of service `c-x` (`[].pg_seq`) failed: it must yield a list of cluster members",
        ),
        (
            base(
                "198.18.0.21: { pg_seq: 2, pg_role: primary }",
                "          []\n",
            ),
            "inv.yml:6:32: `pg_seq` 2 of host `198.18.0.22` is already used by `198.18.0.21` in cluster `c`",
        ),
        (
            base(
                "pg-host-1: { pg_seq: 1, pg_role: primary }",
                "          []\n",
            ),
            "inv.yml:5:9: invalid address `pg-host-1` for a host of cluster `c`",
        ),
        (
            base("198.18.0.21: { pg_role: primary }", "          []\n"),
            "inv.yml:5:9: host `198.18.0.21` of cluster `c` has no `pg_seq`",
        ),
        (
            base(
                "198.18.0.21: { pg_seq: 1, pg_role: primary, pg_weight: 256 }",
                "          []\n",
            ),
            "inv.yml:5:64: `pg_weight` of host `198.18.0.21` must be an integer 0..=255, found 256",
        ),
        (
            base(ok_host, "          { name: x }\n"),
            "inv.yml:10:11: `pg_services` of cluster `c` must be a list of services, found a mapping",
        ),
    ];
    for (src, expected) in cases {
        let e = err(&src);
        assert!(
            e.starts_with(expected),
            "expected {expected:?}\n     got {e:?}\n{src}"
        );
    }
}

#[test]
fn vip_errors() {
    let src = |vip: &str| {
        format!(
            "all:\n  children:\n    c:\n      hosts: {{ 198.18.0.21: {{ pg_seq: 1, pg_role: primary }} }}\n      vars: {{ pg_cluster: c, pg_vip_enabled: true, {vip} }}\n"
        )
    };
    assert!(
        err(&src("pg_vip_address: 198.18.0.3"))
            .starts_with("inv.yml:5:68: invalid address `198.18.0.3` for `pg_vip_address`")
    );
    assert!(err(&src("pg_vip_address: 198.18.0.3/33")).contains("invalid address"));
    assert!(err(&src("x: 1")).contains("has no `pg_vip_address`"));
    let (p, _) = plan(&src("pg_vip_address: 198.18.1.3/16"));
    assert_eq!(
        p.clusters[0].vip,
        Some(Vip {
            addr: Ipv4Addr::new(198, 18, 1, 3),
            prefix_len: 16
        })
    );
}

#[test]
fn unknown_service_fields_are_warned_by_name() {
    let (_, warnings) = plan(
        "all:\n  children:\n    c:\n      hosts: { 198.18.0.21: { pg_seq: 1, pg_role: primary } }\n      vars:\n        pg_cluster: c\n        pg_default_services: []\n        pg_services:\n          - { name: s, port: 6000, selector: '[]', chek: /primary }\n",
    );
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].kind, WarningKind::UnknownServiceField);
    assert!(warnings[0].kind.fails_check());
    assert!(
        warnings[0]
            .to_string()
            .starts_with("inv.yml:9:52: warning: unknown field `chek` in service `c-s`"),
        "{}",
        warnings[0]
    );
}

#[test]
fn shared_provider_ports_must_be_unique_across_clusters() {
    let src = "all:\n  vars: { pg_service_provider: proxy }\n  children:\n    a: { hosts: { 198.18.0.1: { pg_seq: 1, pg_role: primary } }, vars: { pg_cluster: pg-a } }\n    b: { hosts: { 198.18.0.2: { pg_seq: 1, pg_role: primary } }, vars: { pg_cluster: pg-b } }\n";
    assert!(err(src).contains(
        "service `pg-b-primary` listens on *:5433, which service `pg-a-primary` already uses"
    ));
    // Without a provider each cluster's nodes serve only their own services.
    assert!(
        plan_from_str(
            &src.replace("pg_service_provider: proxy", "x: 1"),
            "inv.yml",
            None
        )
        .is_ok()
    );
}

#[test]
fn no_clusters_and_empty_inventories() {
    assert_eq!(
        err("all:\n  hosts: { 198.18.0.1: { node: 1 } }\n"),
        "inv.yml: no PostgreSQL cluster: no host sets `pg_cluster`"
    );
    assert_eq!(
        err("# nothing\n"),
        "inv.yml: inventory is empty: no hosts under `all`"
    );
}
