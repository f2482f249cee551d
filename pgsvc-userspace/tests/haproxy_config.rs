//! `--haproxy-config`: the HAProxy configuration Pigsty renders, read as a config source.
//!
//! Round trip: for every inventory of the tests, `render haproxy` split the way Pigsty lays out
//! `/etc/haproxy` (global/defaults in haproxy.cfg, one conf.d file per service) must give the plan
//! the inventory gives. A hand-written conf.d (with `check-ssl ca-file`, the stats page) is read as
//! written, and broken configurations fail with file:line and a non-zero exit from `pgsvc check`.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use pgsvc::plan::{self, BindAddr, Plan, ServicePlan, WarningKind};
use pgsvc::render;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "pgsvc-hcfg-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Splits `render haproxy` output as Pigsty lays it out: everything before the first `listen` in
/// `haproxy.cfg`, each `listen` section in `conf.d/<listen name>.cfg`.
fn write_pigsty_layout(rendered: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let main = dir.join("haproxy.cfg");
    let confd = dir.join("conf.d");
    std::fs::create_dir_all(&confd).unwrap();
    let mut head = String::new();
    let mut current: Option<(String, String)> = None;
    let flush = |cur: &mut Option<(String, String)>| {
        if let Some((name, text)) = cur.take() {
            std::fs::write(confd.join(format!("{name}.cfg")), text).unwrap();
        }
    };
    for line in rendered.lines() {
        if let Some(name) = line.strip_prefix("listen ") {
            flush(&mut current);
            current = Some((name.trim().to_owned(), String::new()));
        }
        match &mut current {
            Some((_, text)) => text.push_str(line),
            None => head.push_str(line),
        }
        match &mut current {
            Some((_, text)) => text.push('\n'),
            None => head.push('\n'),
        }
    }
    flush(&mut current);
    std::fs::write(&main, head).unwrap();
    (main, confd)
}

/// What both sources must agree on: clusters and services by name (conf.d is read in lexical
/// order), every field of every service but `dest` (HAProxy only knows the resolved port), and the
/// name, address and Patroni port/TLS of each instance that serves.
fn comparable(plan: &Plan) -> Vec<(String, Vec<ServicePlan>)> {
    let mut clusters: Vec<(String, Vec<ServicePlan>)> = plan
        .clusters
        .iter()
        .map(|c| {
            let mut services: Vec<ServicePlan> = c
                .services
                .iter()
                .map(|s| ServicePlan {
                    dest: String::new(),
                    ..s.clone()
                })
                .collect();
            services.sort_by(|a, b| a.name.cmp(&b.name));
            (c.name.clone(), services)
        })
        .collect();
    clusters.sort_by(|a, b| a.0.cmp(&b.0));
    clusters
}

/// Round trip of one inventory: each cluster on its own node, as Pigsty deploys it.
fn round_trip(inventory: &Path) -> usize {
    let text = std::fs::read_to_string(inventory).unwrap();
    let file = inventory.display().to_string();
    let (all, _) = plan::plan_from_str(&text, &file, None).unwrap();
    let mut services = 0;
    for cluster in &all.clusters {
        let (expected, _) = plan::plan_from_str(&text, &file, Some(&cluster.name)).unwrap();
        let dir = TempDir::new("rt");
        let (main, confd) = write_pigsty_layout(&render::haproxy_config(&expected), &dir.0);
        let (got, warnings) = plan::load_haproxy_plan(&[main, confd], None)
            .unwrap_or_else(|e| panic!("{file} cluster {}: {e}", cluster.name));
        assert!(
            warnings
                .iter()
                .all(|w| w.kind != WarningKind::IgnoredDirective),
            "{warnings:?}"
        );
        assert_eq!(
            comparable(&got),
            comparable(&expected),
            "{file} cluster {}",
            cluster.name
        );
        for got_cluster in &got.clusters {
            for i in &got_cluster.instances {
                let want = expected.clusters[0]
                    .instances
                    .iter()
                    .find(|w| w.name == i.name)
                    .unwrap_or_else(|| panic!("instance {} not in the inventory", i.name));
                assert_eq!(
                    (i.addr, i.patroni_port, i.patroni_tls, i.seq),
                    (want.addr, want.patroni_port, want.patroni_tls, want.seq)
                );
            }
        }
        services += cluster.services.len();
    }
    services
}

#[test]
fn every_test_inventory_round_trips_through_rendered_conf_d() {
    let mut inventories = vec![
        manifest().join("../examples/pigsty.yml"),
        manifest().join("../sandbox/pigsty.yml"),
    ];
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(manifest().join("tests/fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    fixtures.sort();
    let mut valid_fixtures = 0;
    for f in fixtures {
        // Fixtures of broken inventories have no plan to compare.
        if plan::load_plan(&f, None).is_ok() {
            inventories.push(f);
            valid_fixtures += 1;
        }
    }
    assert!(valid_fixtures >= 2, "expected some valid fixtures");
    let inline = TempDir::new("inv");
    let path = inline.0.join("mixed.yml");
    std::fs::write(&path, MIXED).unwrap();
    inventories.push(path);
    let mut total = 0;
    for inv in &inventories {
        total += round_trip(inv);
    }
    assert!(total >= 10, "only {total} services compared");
}

/// TLS checks, maglev, leastconn, weight 0, numeric dest, own options, allbackups-free backups.
const MIXED: &str = "all:\n  children:\n    c:\n      hosts:\n        198.18.0.21: { pg_seq: 1, pg_role: primary, patroni_ssl_enabled: true }\n        198.18.0.22: { pg_seq: 2, pg_role: replica, pg_weight: 0 }\n        198.18.0.23: { pg_seq: 3, pg_role: replica, patroni_port: 8009 }\n      vars:\n        pg_cluster: c\n        pg_rto: fast\n        pg_services:\n          - { name: ro, port: 6000, ip: 198.18.0.9, selector: '[? pg_role == `replica`]', backup: '[? pg_role == `primary`]', balance: maglev, check: '/replica?lag=16MB', maxconn: 10, options: 'inter 1s' }\n          - { name: lc, port: 6001, selector: '[]', balance: leastconn, dest: 7000 }\n          - { name: my-svc, port: 6002, selector: '[? pg_seq == `9`]' }\n";

fn pgsvc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgsvc"))
        .args(args)
        .output()
        .expect("run pgsvc")
}

const MAIN_CFG: &str = "global\n    log stdout format iso local0 info\n    stats socket /run/haproxy.sock mode 600 level admin\n    maxconn 65535\n\ndefaults\n    mode tcp\n    log global\n    option dontlognull\n    retries 3\n    timeout connect 3s\n    timeout client 24h\n    timeout server 24h\n    timeout check 2500ms\n\nlisten stats\n    bind *:9101\n    mode http\n    http-request use-service prometheus-exporter if { path /metrics }\n    stats enable\n    stats realm \"pgsvc stats\"\n";

const TLS_LISTEN: &str = "listen pg-test-primary\n    bind 198.18.0.2:5433\n    mode tcp\n    maxconn 5000\n    balance roundrobin\n    option httpchk\n    option http-keep-alive\n    http-check send meth OPTIONS uri /primary\n    http-check expect status 200\n    default-server inter 3s fastinter 1s downinter 5s rise 3 fall 3 on-marked-down shutdown-sessions slowstart 30s maxconn 3000 maxqueue 128 weight 100\n    server pg-test-1 198.18.0.11:6432 check-ssl ca-file /pg/cert/ca.crt check port 8008 weight 100\n    server pg-test-2 198.18.0.12:6432 check-ssl ca-file /pg/cert/ca.crt check port 8008 weight 50 backup\n";

#[test]
fn hand_written_conf_d_with_check_ssl_is_read_as_written() {
    let dir = TempDir::new("hand");
    let confd = dir.0.join("conf.d");
    std::fs::create_dir_all(&confd).unwrap();
    std::fs::write(dir.0.join("haproxy.cfg"), MAIN_CFG).unwrap();
    std::fs::write(confd.join("pg-test-primary.cfg"), TLS_LISTEN).unwrap();
    // Not a *.cfg file: HAProxy skips it, so must pgsvc.
    std::fs::write(confd.join("README"), "not haproxy").unwrap();
    let (plan, warnings) =
        plan::load_haproxy_plan(&[dir.0.join("haproxy.cfg"), confd.clone()], None).unwrap();
    assert_eq!(plan.clusters.len(), 1);
    let c = &plan.clusters[0];
    assert_eq!(c.name, "pg-test");
    let s = &c.services[0];
    assert_eq!((s.short_name.as_str(), s.port), ("primary", 5433));
    assert_eq!(s.ip, BindAddr::Addr("198.18.0.2".parse().unwrap()));
    assert_eq!(s.check, "/primary");
    assert_eq!(s.options.inter, std::time::Duration::from_secs(3));
    assert_eq!(s.options.downinter, std::time::Duration::from_secs(5));
    assert_eq!(
        s.options.check_timeout,
        std::time::Duration::from_millis(2500)
    );
    let servers: Vec<_> = s
        .servers
        .iter()
        .map(|v| {
            (
                v.name.as_str(),
                v.check_tls,
                v.check_port,
                v.weight,
                v.backup,
            )
        })
        .collect();
    assert_eq!(
        servers,
        [
            ("pg-test-1", true, 8008, 100, false),
            ("pg-test-2", true, 8008, 50, true)
        ]
    );
    // Checks verify with the CA the `check-ssl` servers name when `--ca-file` is not given.
    let source = plan::ConfigSource::Haproxy(vec![dir.0.join("haproxy.cfg"), confd.clone()]);
    assert_eq!(
        source.haproxy_ca_file(),
        Some(PathBuf::from("/pg/cert/ca.crt"))
    );
    // The stats page and the process/logging lines are warned about, not errors.
    let ignored = warnings
        .iter()
        .filter(|w| w.kind == WarningKind::IgnoredDirective)
        .count();
    assert!(ignored >= 4, "{warnings:?}");
    let out = pgsvc(&[
        "check",
        "--haproxy-config",
        dir.0.join("haproxy.cfg").to_str().unwrap(),
        "--haproxy-config",
        confd.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("pg-test-primary"), "{stdout}");
}

#[test]
fn config_and_haproxy_config_are_exclusive_and_one_is_required() {
    let inv = manifest().join("../examples/pigsty.yml");
    let both = pgsvc(&[
        "check",
        "--config",
        inv.to_str().unwrap(),
        "--haproxy-config",
        "/nonexistent",
    ]);
    assert_eq!(both.status.code(), Some(2));
    let none = pgsvc(&["check"]);
    assert_eq!(none.status.code(), Some(2));
}

/// Broken variants of [`TLS_LISTEN`]: (what, line to replace (1-based, 0 = append), new text,
/// expected line of the error, text the message must contain).
const BROKEN: [(&str, usize, &str, usize, &str); 12] = [
    (
        "unknown directive",
        0,
        "    stick-table type ip size 1m",
        13,
        "stick-table",
    ),
    (
        "hostname bind",
        2,
        "    bind db.example.com:5433",
        2,
        "db.example.com",
    ),
    (
        "server without check",
        11,
        "    server pg-test-1 198.18.0.11:6432 port 8008",
        11,
        "without `check`",
    ),
    ("unknown balance", 5, "    balance uri", 5, "balance uri"),
    (
        "other expect",
        9,
        "    http-check expect status 503",
        9,
        "expect status 503",
    ),
    (
        "server keyword",
        12,
        "    server pg-test-2 198.18.0.12:6432 check ssl",
        12,
        "`ssl`",
    ),
    (
        "bad default-server",
        10,
        "    default-server inter 0s",
        10,
        "inter",
    ),
    ("bad maxconn", 4, "    maxconn lots", 4, "lots"),
    ("second bind", 3, "    bind *:5434", 3, "second `bind`"),
    (
        "quoting",
        8,
        "    http-check send meth OPTIONS uri \"/primary\"",
        8,
        "quotes",
    ),
    (
        "check method",
        8,
        "    http-check send meth GET uri /primary",
        8,
        "meth GET",
    ),
    (
        "bad weight",
        11,
        "    server pg-test-1 198.18.0.11:6432 check weight 999",
        11,
        "999",
    ),
];

fn broken_check(dir: &Path, name: &str, text: &str, line: usize, needle: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let out = pgsvc(&["check", "--haproxy-config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
    let at = format!("{}:{line}:", path.display());
    assert!(stderr.contains(&at), "{name}: expected {at} in {stderr}");
    assert!(
        stderr.contains(needle),
        "{name}: expected {needle:?} in {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn broken_haproxy_configs_name_file_and_line() {
    let dir = TempDir::new("broken");
    for (i, (what, replace, new, line, needle)) in BROKEN.iter().enumerate() {
        let mut lines: Vec<&str> = TLS_LISTEN.lines().collect();
        if *replace == 0 {
            lines.push(new);
        } else {
            lines[replace - 1] = new;
        }
        let text = lines.join("\n") + "\n";
        broken_check(&dir.0, &format!("b{i}.cfg"), &text, *line, needle);
        eprintln!("ok: {what}");
    }
    // Across sections and files.
    let tcp_frontend = "frontend fe\n    bind *:5433\n    mode tcp\n";
    broken_check(&dir.0, "fe.cfg", tcp_frontend, 1, "frontend fe");
    let dup = format!("{TLS_LISTEN}{TLS_LISTEN}");
    broken_check(&dir.0, "dup.cfg", &dup, 13, "already defined");
    let clash = format!(
        "{TLS_LISTEN}{}",
        TLS_LISTEN
            .replace("pg-test-primary", "pg-test-other")
            .replace("198.18.0.2:5433", "*:5433")
    );
    broken_check(&dir.0, "clash.cfg", &clash, 14, "already uses");
    broken_check(
        &dir.0,
        "outside.cfg",
        "maxconn 10\n",
        1,
        "outside any section",
    );
    let no_bind = TLS_LISTEN.replace("    bind 198.18.0.2:5433\n", "");
    broken_check(&dir.0, "nobind.cfg", &no_bind, 1, "no `bind");
}

#[test]
fn reading_a_missing_path_is_an_error() {
    let out = pgsvc(&["check", "--haproxy-config", "/nonexistent/pgsvc/conf.d"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pgsvc/conf.d"));
}
