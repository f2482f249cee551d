//! netns tier of the agent: the real `pgsvc run` on an LB host, Patroni stand-ins whose role the
//! test flips, and TCP servers that name themselves. Checks routing by live role with backup
//! fallbacks, failover timing against the HAProxy timer bounds, misbehaving Patroni, metrics and
//! status, reload, and restart with adoption of the pinned datapath.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use pgsvc_tests::{
    agent_rig::{AgentRig, NORM, inventory},
    require_root,
};

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// A fast default-server line for tests that cycle servers many times.
const FAST: &str = "inter 1s fastinter 500ms downinter 1s rise 2 fall 2 on-marked-down shutdown-sessions slowstart 0s maxconn 3000 weight 100";

#[test]
fn services_follow_live_roles_and_fall_back_to_backups() {
    if !require_root("services_follow_live_roles") {
        return;
    }
    let rig = AgentRig::start(&inventory(FAST, ""), stub());
    assert_eq!(set(&rig.land(5433, 6)), names(&["pg-test-1:6432"]));
    assert_eq!(set(&rig.land(5434, 6)), names(&["pg-test-2:6432"]));
    assert_eq!(set(&rig.land(5436, 4)), names(&["pg-test-1:5432"]));
    assert_eq!(set(&rig.land(5438, 4)), names(&["pg-test-3:5432"]));

    // Every replica-role server down: 5434 falls back to the first usable backup, the primary.
    rig.set_patroni(1, "down");
    rig.wait_for("pg-test-2 DOWN", Duration::from_secs(6), |r| {
        r.server_status("pg-test-replica", "pg-test-2")["state"] == "DOWN"
    });
    assert_eq!(set(&rig.land(5434, 6)), names(&["pg-test-1:6432"]));

    // The offline instance down: 5438 falls back to the replica.
    rig.set_patroni(1, "replica");
    rig.set_patroni(2, "down");
    rig.wait_for("pg-test-3 DOWN", Duration::from_secs(6), |r| {
        r.server_status("pg-test-offline", "pg-test-3")["state"] == "DOWN"
    });
    rig.wait_for("pg-test-2 UP", Duration::from_secs(6), |r| {
        r.server_status("pg-test-offline", "pg-test-2")["state"] == "UP"
    });
    assert_eq!(set(&rig.land(5438, 4)), names(&["pg-test-2:5432"]));
    // 5434 is back on the replica (backups are only used while no normal server is usable) once its
    // own check — /read-only, a separate task from the offline service's /replica — has seen it.
    rig.wait_for("pg-test-2 UP for 5434", Duration::from_secs(6), |r| {
        r.server_status("pg-test-replica", "pg-test-2")["state"] == "UP"
    });
    assert_eq!(set(&rig.land(5434, 4)), names(&["pg-test-2:6432"]));
}

/// A switchover under norm timers; returns (last connection to the demoted primary, first to the new
/// one) after the role flip.
fn switchover(test: &str, agent_args: &[&str]) -> Option<(Option<Duration>, Duration)> {
    if !require_root(test) {
        return None;
    }
    let rig = AgentRig::start_with(&inventory(NORM, ""), stub(), agent_args);
    let mut old = rig.connect(5433).expect("connect");
    assert_eq!(old.server, "pg-test-1:6432");
    // norm timers: DOWN within inter + (fall-1)·fastinter = 2 + 2·1 s; UP within downinter +
    // (rise-1)·fastinter = 2 + 2·1 s; plus one second of margin each (the bound).
    let down_bound = Duration::from_secs(2 + 2 + 1);
    let up_bound = Duration::from_secs(2 + 2 + 1);

    let flip = Instant::now();
    rig.set_patroni(0, "replica");
    rig.set_patroni(1, "primary");
    let mut last_old: Option<Duration> = None;
    let mut first_new: Option<Duration> = None;
    while flip.elapsed() < Duration::from_secs(12) {
        let t = flip.elapsed();
        let landed = rig.client.run(|_| {
            pgsvc_tests::netns::Conn::open_timeout(
                std::net::SocketAddr::from((pgsvc_tests::agent_rig::VIP, 5433)),
                Duration::from_millis(200),
            )
        });
        if let Ok(c) = landed {
            match c.server.as_str() {
                "pg-test-1:6432" => last_old = Some(t),
                "pg-test-2:6432" => {
                    first_new.get_or_insert(t);
                }
                other => panic!("5433 landed on {other}"),
            }
            c.abort();
            if first_new.is_some() && t > down_bound {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let first_new = first_new.expect("the new primary never got a 5433 connection");
    eprintln!(
        "{test}: last connection to the demoted primary at {last_old:?}, first to the new one at {first_new:?}"
    );
    if let Some(t) = last_old {
        assert!(
            t <= down_bound,
            "the demoted primary got a connection {t:?} after the flip (bound {down_bound:?}); agent log:\n{}",
            rig.log_text()
        );
    }
    assert!(
        first_new <= up_bound,
        "the new primary got its first connection {first_new:?} after the flip (bound {up_bound:?}); agent log:\n{}",
        rig.log_text()
    );
    // The session opened before the flip was shut down with the server.
    let err = old
        .echo(b"insert")
        .expect_err("the old primary's session must be reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let log = rig.log_text();
    assert!(log.contains("pg-test-primary/pg-test-1 is DOWN"), "{log}");
    assert!(log.contains("pg-test-primary/pg-test-2 is UP"), "{log}");
    Some((last_old, first_new))
}

#[test]
fn switchover_with_haproxy_schedule_stays_within_the_timer_bounds() {
    // `--check-burst 0`: inter/fastinter/downinter exactly as HAProxy schedules them.
    let _ = switchover("switchover_haproxy_schedule", &["--check-burst", "0"]);
}

#[test]
fn switchover_with_burst_checks_is_faster_and_resets_the_old_sessions() {
    let Some((last_old, first_new)) = switchover("switchover_burst", &[]) else {
        return;
    };
    // Burst checking: rise/fall still count 3, but at 100 ms once a change is under way and right
    // after the old primary went DOWN. The new primary takes writes well inside HAProxy's bound.
    assert!(
        first_new <= Duration::from_millis(3500),
        "new primary first used {first_new:?} after the flip"
    );
    if let Some(t) = last_old {
        assert!(
            t <= Duration::from_millis(3500),
            "demoted primary still used {t:?} after the flip"
        );
    }
}

#[test]
fn misbehaving_patroni_is_marked_down_with_the_reason() {
    if !require_root("misbehaving_patroni") {
        return;
    }
    let rig = AgentRig::start(&inventory(FAST, ""), stub());
    let cases = [
        ("replica 503", "L7 status 503"),
        ("replica hang", "timeout"),
        ("replica garbage", "L7"),
        ("replica close", "closed"),
        ("replica redirect", "L7 status 302"),
    ];
    for (state, reason) in cases {
        rig.set_patroni(1, state);
        rig.wait_for(
            &format!("pg-test-2 DOWN for {state}"),
            Duration::from_secs(8),
            |r| r.server_status("pg-test-replica", "pg-test-2")["state"] == "DOWN",
        );
        let s = rig.server_status("pg-test-replica", "pg-test-2");
        let got = s["last_check"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            got.contains(reason),
            "{state}: reason {got:?}, expected {reason:?}; {s}"
        );
        assert_eq!(s["last_check"]["passed"], false);
        rig.set_patroni(1, "replica");
        rig.wait_for(
            &format!("pg-test-2 UP after {state}"),
            Duration::from_secs(8),
            |r| r.server_status("pg-test-replica", "pg-test-2")["state"] == "UP",
        );
    }
    let log = rig.log_text();
    assert!(log.contains("pg-test-replica/pg-test-2 is DOWN"), "{log}");
    assert!(log.contains("503"), "{log}");
    let s = rig.server_status("pg-test-replica", "pg-test-2");
    assert_eq!(s["check_up_down_total"], 5, "{s}");
}

#[test]
fn metrics_parse_and_match_the_traffic_and_status_shows_the_same() {
    if !require_root("metrics_match") {
        return;
    }
    let rig = AgentRig::start(&inventory(FAST, ""), stub());
    let mut c = rig.connect(5433).expect("connect");
    let greeting = format!("pg-test-1:6432 {}\n", c.peer_seen).len() as f64;
    let payload = vec![b'x'; 1000];
    assert_eq!(c.echo(&payload).expect("echo"), payload);
    assert_eq!(c.echo(&payload[..234]).expect("echo"), &payload[..234]);
    let sent = 1234.0;
    drop(c);
    // The agent republishes every second.
    std::thread::sleep(Duration::from_millis(2500));
    let (code, text) = rig.http("GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text: {e:?}\n{text}"));
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let family = exposition
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in\n{text}"));
        family
            .iter_samples()
            .find(|s| {
                let set = s.get_labelset().expect("labels");
                labels
                    .iter()
                    .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .map(|s| match &s.value {
                openmetrics_parser::PrometheusValue::Counter(c) => c.value.as_f64(),
                openmetrics_parser::PrometheusValue::Gauge(n)
                | openmetrics_parser::PrometheusValue::Unknown(n) => n.as_f64(),
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{text}"))
    };
    let srv = [("proxy", "pg-test-primary"), ("server", "pg-test-1")];
    assert_eq!(value("haproxy_server_bytes_in_total", &srv), sent);
    assert_eq!(
        value("haproxy_server_bytes_out_total", &srv),
        sent + greeting
    );
    assert_eq!(value("haproxy_server_sessions_total", &srv), 1.0);
    assert_eq!(value("haproxy_server_current_sessions", &srv), 0.0);
    assert_eq!(
        value(
            "haproxy_server_status",
            &[
                ("proxy", "pg-test-primary"),
                ("server", "pg-test-1"),
                ("state", "UP")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            "haproxy_server_status",
            &[
                ("proxy", "pg-test-primary"),
                ("server", "pg-test-2"),
                ("state", "DOWN")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            "haproxy_backend_active_servers",
            &[("proxy", "pg-test-primary")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "haproxy_backend_active_servers",
            &[("proxy", "pg-test-replica")]
        ),
        1.0
    );
    assert!(value("pgsvc_packets_total", &[("reason", "fwd_new")]) >= 1.0);

    let (code, table, err) = rig.pgsvc_cli(&[
        "status",
        "--admin",
        &format!("{}:9102", pgsvc_tests::agent_rig::LB),
    ]);
    assert_eq!(code, 0, "{err}");
    let line = table
        .lines()
        .find(|l| l.contains("pg-test-1") && l.contains("6432"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("UP"), "{line}");
    let (code, json, err) = rig.pgsvc_cli(&[
        "status",
        "--json",
        "--admin",
        &format!("{}:9102", pgsvc_tests::agent_rig::LB),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("status --json");
    let primary = v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "pg-test-primary"))
        .cloned()
        .expect("service");
    assert_eq!(primary["bytes_in"].as_f64(), Some(sent));
    // No agent: a clear error and a non-zero exit.
    let (code, _, err) = rig.pgsvc_cli(&["status", "--admin", "127.0.0.1:9"]);
    assert_ne!(code, 0);
    assert!(err.contains("127.0.0.1:9"), "{err}");
}

#[test]
fn reload_moves_new_connections_keeps_other_flows_and_refuses_broken_inventories() {
    if !require_root("reload") {
        return;
    }
    let lag = |selector: &str| {
        format!(
            "{{ name: lag, port: 5440, dest: postgres, check: /read-only, selector: \"{selector}\", options: \"{FAST}\" }}"
        )
    };
    let mut rig = AgentRig::start(&inventory(FAST, &lag("[? pg_role == `replica` ]")), stub());
    assert_eq!(set(&rig.land(5440, 4)), names(&["pg-test-2:5432"]));
    let mut keep = rig.connect(5433).expect("connect");
    assert_eq!(keep.echo(b"before").expect("echo"), b"before");

    std::fs::write(
        &rig.config,
        inventory(FAST, &lag("[? pg_role == `offline` ]")),
    )
    .expect("write");
    let (code, out, err) = rig.pgsvc_cli(&[
        "reload",
        "--admin",
        &format!("{}:9102", pgsvc_tests::agent_rig::LB),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    rig.wait_for("5440 on pg-test-3", Duration::from_secs(6), |r| {
        r.land(5440, 1) == ["pg-test-3:5432"]
    });
    assert_eq!(set(&rig.land(5440, 4)), names(&["pg-test-3:5432"]));
    assert_eq!(
        keep.echo(b"after reload").expect("unrelated flow kept"),
        b"after reload"
    );

    // A broken inventory is refused with the reason; the old plan keeps serving.
    std::fs::write(&rig.config, "all: { children: [ broken").expect("write");
    let (code, out, err) = rig.pgsvc_cli(&[
        "reload",
        "--admin",
        &format!("{}:9102", pgsvc_tests::agent_rig::LB),
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("pigsty.yml"),
        "the refusal names the file: {err}"
    );
    // SIGHUP takes the same path.
    if let Some(a) = &rig.agent {
        // SAFETY: plain kill(2) of our child.
        unsafe { libc::kill(a.pid() as i32, libc::SIGHUP) };
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rig.status()["last_reload"]["ok"], false);
    assert_eq!(
        keep.echo(b"still here")
            .expect("flow survives a refused reload"),
        b"still here"
    );
    assert_eq!(set(&rig.land(5440, 2)), names(&["pg-test-3:5432"]));
    assert_eq!(set(&rig.land(5433, 2)), names(&["pg-test-1:6432"]));
    rig.agent
        .as_mut()
        .map(|a| a.signal_and_wait(libc::SIGTERM, Duration::from_secs(10)));
    rig.agent = None;
}

#[test]
fn a_killed_agent_is_replaced_without_losing_established_connections() {
    if !require_root("restart_adopt") {
        return;
    }
    let mut rig = AgentRig::start(&inventory(FAST, ""), stub());
    let mut long = rig.connect(5433).expect("connect");
    assert_eq!(long.echo(b"before").expect("echo"), b"before");
    // Kill it hard, under traffic.
    if let Some(mut a) = rig.agent.take() {
        a.signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
            .expect("agent killed");
    }
    assert_eq!(
        long.echo(b"no agent")
            .expect("the pinned datapath keeps serving"),
        b"no agent"
    );
    let during = rig.land(5433, 5);
    assert_eq!(
        set(&during),
        names(&["pg-test-1:6432"]),
        "new connections while no agent runs"
    );
    rig.start_agent();
    assert_eq!(rig.status()["xdp_mode"], "adopted");
    assert_eq!(
        long.echo(b"after restart")
            .expect("the long-lived connection survives"),
        b"after restart"
    );
    assert_eq!(set(&rig.land(5433, 5)), names(&["pg-test-1:6432"]));
    // The adopted flow is still counted.
    let s = rig.server_status("pg-test-primary", "pg-test-1");
    assert!(s["current_sessions"].as_u64().unwrap_or(0) >= 1, "{s}");
}
