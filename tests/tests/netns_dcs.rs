//! netns tier of the DCS watch: a real etcd (Debian's etcd-server) on the LB host, the real
//! `pgsvc run`, Patroni stand-ins whose role the test flips, and the leader key written by the test
//! the way Patroni writes it (`/pg/pg-test/leader` = member name). Checks that write services follow
//! the key at once (also while the old leader still passes `/primary`), that the key's holder is UP
//! after one passing check, that a stopped etcd falls back to REST checks alone with a log line and
//! metrics, that wrong credentials stop the start with a clear error, and that Patroni's `/failover`
//! key (a switchover under way) fences the holder while it still holds the leader key.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use etcd_client::Permission;
use pgsvc_tests::{
    agent_rig::{AgentRig, LB, pgsvc_bin},
    etcd::{ETCD, Etcd, LEADER_KEY},
    guard::PinDir,
    netns::Conn,
    require_root,
};

const FAILOVER_KEY: &str = "/pg/pg-test/failover";

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

fn etcd_url() -> String {
    format!("http://{LB}:2379")
}

/// HAProxy's schedule to the letter (`--check-burst 0`) with rise 3 every second: the REST checks
/// alone need 2–3 s to raise a new primary, and never drop a member that keeps answering 200.
const SLOW: &str = "inter 1s fastinter 1s downinter 1s rise 3 fall 3 on-marked-down shutdown-sessions slowstart 0s maxconn 3000 weight 100";

/// The rig's inventory plus an `etcd` group on the LB host, as Pigsty lists its DCS.
fn inventory(options: &str) -> String {
    pgsvc_tests::agent_rig::inventory(options, "").replacen(
        "  children:\n",
        &format!(
            "  children:\n    etcd:\n      hosts:\n        {LB}: {{ etcd_seq: 1 }}\n      vars: {{ etcd_cluster: etcd }}\n"
        ),
        1,
    )
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn one(name: &str) -> BTreeSet<String> {
    BTreeSet::from([name.to_owned()])
}

/// The rig's agent restarted with `args` once etcd runs (the first one started without it).
/// Root and Debian's etcd-server (`cargo xtask setup` installs it), or a recorded skip.
fn can_run(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if !std::path::Path::new(ETCD).exists() {
        pgsvc_tests::skip(
            test,
            "needs /usr/bin/etcd (Debian's etcd-server; cargo xtask setup installs it)",
        );
        return false;
    }
    true
}

fn rig_with_etcd(options: &str, args: &[&str]) -> (AgentRig, Etcd) {
    let mut rig = AgentRig::start_with(&inventory(options), stub(), args);
    let etcd = Etcd::start(
        rig.lb_ns(),
        |bin| rig.topo.host(1).ns.command(bin),
        LB,
        &rig.dir,
        "pg-test-1",
    );
    // The watch retries every second: the agent finds etcd by itself.
    rig.wait_for("fencing on pg-test-1", Duration::from_secs(30), |r| {
        let d = &r.status()["dcs"][0];
        d["fencing"] == true && d["leader"] == "pg-test-1"
    });
    rig.agent_args = args.iter().map(|a| (*a).to_owned()).collect();
    (rig, etcd)
}

#[test]
fn moving_the_leader_key_fences_at_once() {
    if !can_run("moving_the_leader_key_fences_at_once") {
        return;
    }
    let (rig, etcd) = rig_with_etcd(SLOW, &["--check-burst", "0"]);
    assert_eq!(set(&rig.land(5433, 6)), one("pg-test-1:6432"));

    // pg-test-2 answers 200 on /primary too — the moment of a switchover where the demoting leader
    // and the new one both pass. Its check goes UP, but it does not hold the key: no traffic.
    rig.set_patroni(1, "primary");
    rig.wait_for(
        "pg-test-2's /primary check UP",
        Duration::from_secs(10),
        |r| r.server_status("pg-test-primary", "pg-test-2")["state"] == "UP",
    );
    let s = rig.server_status("pg-test-primary", "pg-test-2");
    assert_eq!(s["active"], false, "{s}");
    assert_eq!(s["fenced"], true, "{s}");
    assert_eq!(set(&rig.land(5433, 8)), one("pg-test-1:6432"));
    assert_eq!(set(&rig.land(5436, 4)), one("pg-test-1:5432"));

    // A session to the old leader, then the key moves. pg-test-1 keeps answering 200 on /primary:
    // its REST check would never take it out.
    let mut session = rig.connect(5433).expect("session to 5433");
    assert_eq!(session.server, "pg-test-1:6432");
    assert_eq!(session.echo(b"ping").expect("echo before"), b"ping");
    let moved = Instant::now();
    etcd.put(LEADER_KEY, "pg-test-2").expect("move the key");
    // Watched through the status, not with connections: one opened to pg-test-1 just before the
    // fence would be cut with it and wait for its greeting.
    let took = rig.wait_for(
        "pg-test-1 fenced, pg-test-2 active",
        Duration::from_secs(3),
        |r| {
            let old = r.server_status("pg-test-primary", "pg-test-1");
            let new = r.server_status("pg-test-primary", "pg-test-2");
            old["fenced"] == true && old["active"] == false && new["active"] == true
        },
    );
    assert!(
        moved.elapsed() < Duration::from_secs(3),
        "the fence took {took:?}"
    );
    assert_eq!(set(&rig.land(5433, 8)), one("pg-test-2:6432"));
    assert_eq!(set(&rig.land(5436, 4)), one("pg-test-2:5432"));
    // The old leader's session was reset (shutdown-sessions), although its check still passes.
    assert!(
        session.echo(b"pong").is_err(),
        "the old leader's session survived"
    );
    assert_eq!(
        rig.server_status("pg-test-primary", "pg-test-1")["state"],
        "UP"
    );
    let d = &rig.status()["dcs"][0];
    assert_eq!(d["leader"], "pg-test-2", "{d}");
    assert!(d["fence_events_total"].as_u64().unwrap_or(0) >= 2, "{d}");
    let log = rig.log_text();
    assert!(log.contains("fenced"), "no fence line in the log:\n{log}");
    eprintln!(
        "dcs: pg-test-1 fenced and pg-test-2 active {took:?} after the key moved (status polled every 100 ms)"
    );
}

#[test]
fn the_key_holder_is_up_after_one_passing_check() {
    if !can_run("the_key_holder_is_up_after_one_passing_check") {
        return;
    }
    let (rig, etcd) = rig_with_etcd(SLOW, &["--check-burst", "0"]);
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-1:6432"));
    // A switchover: roles flip and the key moves together.
    rig.set_patroni(0, "replica");
    rig.set_patroni(1, "primary");
    etcd.put(LEADER_KEY, "pg-test-2").expect("move the key");
    // pg-test-2 takes connections while its health counter is still below rise (3): one pass did it.
    let t0 = Instant::now();
    let mut seen = None;
    while t0.elapsed() < Duration::from_secs(6) {
        let s = rig.server_status("pg-test-primary", "pg-test-2");
        if s["active"] == true {
            seen = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = seen.unwrap_or_else(|| {
        panic!(
            "pg-test-2 never became active; agent log:\n{}",
            rig.log_text()
        )
    });
    let health = s["health"].as_u64().expect("health");
    assert!(
        health < 3,
        "pg-test-2 became active only at health {health} (rise 3): no rise 1 for the key holder: {s}"
    );
    assert_eq!(set(&rig.land(5433, 6)), one("pg-test-2:6432"));
    eprintln!(
        "dcs: key holder active {:?} after the key moved, at health {health}/3",
        t0.elapsed()
    );
}

/// A metric's value in the agent's /metrics (None when the series is absent).
fn metric(rig: &AgentRig, series: &str) -> Option<f64> {
    let (code, body) = rig.http("GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
}

#[test]
fn a_stopped_etcd_falls_back_to_rest_checks_with_a_log_line_and_metrics() {
    if !can_run("a_stopped_etcd_falls_back_to_rest_checks") {
        return;
    }
    let (rig, mut etcd) = rig_with_etcd(SLOW, &["--check-burst", "0"]);
    assert_eq!(metric(&rig, "pgsvc_dcs_up{cluster=\"pg-test\"}"), Some(1.0));
    assert_eq!(
        metric(&rig, "pgsvc_dcs_fallback{cluster=\"pg-test\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &rig,
            "pgsvc_dcs_leader{cluster=\"pg-test\",member=\"pg-test-1\"}"
        ),
        Some(1.0)
    );
    // While fencing, a second member passing /primary gets nothing.
    rig.set_patroni(1, "primary");
    rig.wait_for(
        "pg-test-2's /primary check UP",
        Duration::from_secs(10),
        |r| r.server_status("pg-test-primary", "pg-test-2")["state"] == "UP",
    );
    assert_eq!(set(&rig.land(5433, 6)), one("pg-test-1:6432"));

    let fallbacks = metric(&rig, "pgsvc_dcs_fallbacks_total{cluster=\"pg-test\"}").unwrap_or(0.0);
    let stopped = Instant::now();
    etcd.proc
        .signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    let took = rig.wait_for("the fallback", Duration::from_secs(10), |r| {
        let d = &r.status()["dcs"][0];
        d["fencing"] == false && d["connected"] == false
    });
    let d = &rig.status()["dcs"][0];
    let reason = d["fallback_reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("etcd"), "{d}");
    assert_eq!(metric(&rig, "pgsvc_dcs_up{cluster=\"pg-test\"}"), Some(0.0));
    assert_eq!(
        metric(&rig, "pgsvc_dcs_fallback{cluster=\"pg-test\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&rig, "pgsvc_dcs_fallbacks_total{cluster=\"pg-test\"}"),
        Some(fallbacks + 1.0)
    );
    let log = rig.log_text();
    assert!(
        log.contains("fall back to REST checks alone"),
        "no fallback line in the log:\n{log}"
    );
    // REST checks alone decide again: both members passing /primary take connections.
    assert_eq!(
        set(&rig.land(5433, 8)),
        BTreeSet::from(["pg-test-1:6432".to_owned(), "pg-test-2:6432".to_owned()])
    );
    eprintln!(
        "dcs: fallback {took:?} after etcd was killed ({:?} in all): {reason}",
        stopped.elapsed()
    );
}

#[test]
fn a_wrong_etcd_password_stops_the_start_with_a_clear_error() {
    if !can_run("a_wrong_etcd_password_stops_the_start") {
        return;
    }
    let (rig, etcd) = rig_with_etcd(SLOW, &[]);
    // RBAC as Pigsty sets it up: root, and a read role on the cluster's prefix for user pg-test.
    etcd.with(None, async |c| {
        c.user_add("root", "rootpw", None).await?;
        c.user_grant_role("root", "root").await?;
        c.role_add("pg-test").await?;
        c.role_grant_permission(
            "pg-test",
            Permission::read("/pg/pg-test/").with_range_end("/pg/pg-test0"),
        )
        .await?;
        c.user_add("pg-test", "right", None).await?;
        c.user_grant_role("pg-test", "pg-test").await?;
        c.auth_enable().await.map(|_| ())
    })
    .expect("RBAC set-up");
    // The right password reads the key (so the refusal below is the password's doing).
    let leader = etcd
        .with(Some(("pg-test", "right")), async |c| {
            let r = c.get(LEADER_KEY, None).await?;
            Ok(r.kvs()
                .first()
                .and_then(|kv| kv.value_str().ok())
                .map(str::to_owned))
        })
        .expect("read with the right password");
    assert_eq!(leader.as_deref(), Some("pg-test-1"));

    let pins = PinDir::new("dcs-wrong");
    let out = Command::new(pgsvc_bin())
        .args(["--netns", rig.lb_ns(), "run", "--config"])
        .arg(&rig.config)
        .args(["--iface", "eth0", "--metrics", "off", "--pin-dir"])
        .arg(pins.path())
        .args(["--admin", &SocketAddr::from((LB, 9199)).to_string()])
        .args(["--dcs", "etcd", "--etcd-endpoints", &etcd_url()])
        .args(["--etcd-user", "pg-test", "--etcd-password", "wrong"])
        .output()
        .expect("pgsvc run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(0),
        "started with a wrong password: {stderr}"
    );
    assert!(
        stderr.contains("refused the credentials of user \"pg-test\""),
        "unclear error: {stderr}"
    );
    assert!(
        stderr.contains("pg-test") && stderr.contains("--dcs off"),
        "{stderr}"
    );
    assert!(!pins.path().exists(), "a refused start left pins behind");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Where each of `n` new connections to `port` lands, or why it did not (connect timeout 300 ms:
/// a SYN the agent drops for want of a server times out).
fn try_land(rig: &AgentRig, port: u16, n: usize) -> Vec<Result<String, String>> {
    (0..n)
        .map(|_| {
            rig.client.run(move |_| {
                Conn::open_timeout(
                    SocketAddr::from((pgsvc_tests::agent_rig::VIP, port)),
                    Duration::from_millis(300),
                )
                .map(|c| {
                    let s = c.server.clone();
                    c.abort();
                    s
                })
                .map_err(|e| e.to_string())
            })
        })
        .collect()
}

/// An ISO 8601 UTC time `ahead` from now, as Patroni writes `scheduled_at`.
fn iso_in(ahead: Duration) -> String {
    let at = std::time::SystemTime::now() + ahead;
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S+00:00"])
        .output()
        .expect("date");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn stepping_down(rig: &AgentRig) -> bool {
    let s = rig.server_status("pg-test-primary", "pg-test-1");
    s["fenced"] == true && s["active"] == false
}

#[test]
fn a_failover_key_fences_the_holder_that_keeps_the_leader_key() {
    if !can_run("a_failover_key_fences_the_holder_that_keeps_the_leader_key") {
        return;
    }
    let (rig, etcd) = rig_with_etcd(SLOW, &["--check-burst", "0"]);
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-1:6432"));
    let mut session = rig.connect(5433).expect("session to 5433");
    assert_eq!(session.server, "pg-test-1:6432");
    assert_eq!(session.echo(b"ping").expect("echo before"), b"ping");

    // `patronictl switchover`: Patroni's REST API writes the failover key; the leader keeps the
    // leader key (and answers 200 on /primary) while it demotes: first a CHECKPOINT, during which
    // its PostgreSQL still takes writes (its REST API says `running`), then the shutdown.
    let asked = Instant::now();
    etcd.put(
        FAILOVER_KEY,
        r#"{"leader":"pg-test-1","member":"pg-test-2"}"#,
    )
    .expect("failover key");
    rig.wait_for("the step-down request seen", Duration::from_secs(3), |r| {
        r.status()["dcs"][0]["leader_leaving"]
            .as_str()
            .is_some_and(|w| w.contains("pg-test-2"))
    });
    // Through the checkpoint the holder keeps taking new connections (as a direct client's).
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !stepping_down(&rig),
        "fenced while its PostgreSQL still runs"
    );
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-1:6432"));
    assert_eq!(
        session.echo(b"ckpt").expect("echo in the checkpoint"),
        b"ckpt"
    );
    // Patroni reports its PostgreSQL stopping: fenced now.
    let stopping = Instant::now();
    rig.set_patroni(0, "primary stopping");
    let took = rig.wait_for("pg-test-1 fenced", Duration::from_secs(3), stepping_down);
    let d = &rig.status()["dcs"][0];
    assert_eq!(d["leader"], "pg-test-1", "{d}");
    // From that moment no new connection reaches the holder, on either write port.
    for port in [5433, 5436] {
        let tries = try_land(&rig, port, 4);
        assert!(
            tries
                .iter()
                .all(|t| !matches!(t, Ok(s) if s.starts_with("pg-test-1:"))),
            "a new connection to {port} reached the stepping-down holder: {tries:?}"
        );
    }
    assert!(
        session.echo(b"pong").is_err(),
        "the stepping-down holder's session survived"
    );
    // Its REST check never failed: the failover key and the holder's state did it.
    assert_eq!(
        rig.server_status("pg-test-primary", "pg-test-1")["state"],
        "UP"
    );
    let log = rig.log_text();
    assert!(
        log.contains("steps down"),
        "no step-down line in the log:\n{log}"
    );
    assert!(
        log.contains("PostgreSQL stopping"),
        "no line naming the holder's state in the log:\n{log}"
    );
    eprintln!(
        "dcs: holder fenced {took:?} after its REST API said stopping ({:?} after the failover key, {:?} after the stopping state)",
        asked.elapsed(),
        stopping.elapsed()
    );

    // Patroni refuses the request and writes `{}`: the holder is back at once.
    rig.set_patroni(0, "primary");
    etcd.put(FAILOVER_KEY, "{}")
        .expect("clean the failover key");
    rig.wait_for("pg-test-1 back", Duration::from_secs(3), |r| {
        r.server_status("pg-test-primary", "pg-test-1")["active"] == true
    });
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-1:6432"));
    assert_eq!(
        rig.status()["dcs"][0]["leader_leaving"],
        serde_json::Value::Null
    );

    // A scheduled switchover fences nothing before its time, and the holder from then on (its
    // REST API already says stopping: the step-down watch starts at the scheduled time).
    rig.set_patroni(0, "primary stopping");
    let scheduled = Instant::now();
    etcd.put(
        FAILOVER_KEY,
        &format!(
            r#"{{"leader":"pg-test-1","scheduled_at":"{}"}}"#,
            iso_in(Duration::from_secs(3))
        ),
    )
    .expect("scheduled switchover");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(set(&rig.land(5433, 3)), one("pg-test-1:6432"));
    rig.wait_for(
        "the scheduled step-down",
        Duration::from_secs(8),
        stepping_down,
    );
    let at = scheduled.elapsed();
    // The key's time has whole seconds: due 2–3 s after it was written.
    assert!(
        at >= Duration::from_millis(1900),
        "fenced {at:?} after a switchover scheduled 2–3 s ahead"
    );
    etcd.delete(FAILOVER_KEY).expect("delete the failover key");
    rig.wait_for("pg-test-1 back", Duration::from_secs(3), |r| {
        r.server_status("pg-test-primary", "pg-test-1")["active"] == true
    });
    eprintln!("dcs: a switchover scheduled 2–3 s ahead fenced the holder after {at:?}");
}

#[test]
fn a_new_holder_takes_writes_only_once_its_promotion_is_complete() {
    if !can_run("a_new_holder_takes_writes_only_once_its_promotion_is_complete") {
        return;
    }
    let (rig, etcd) = rig_with_etcd(SLOW, &["--check-burst", "0"]);
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-1:6432"));
    // A switchover: pg-test-2 takes the key. Patroni answers 200 on /primary from that moment, but
    // its PostgreSQL is still in recovery (GET /patroni: role replica) — a write there is refused.
    rig.set_patroni(0, "replica");
    rig.set_patroni(1, "primary promoting");
    let checks_before = rig.server_status("pg-test-primary", "pg-test-2")["checks_total"]
        .as_u64()
        .unwrap_or(0);
    etcd.put(LEADER_KEY, "pg-test-2").expect("move the key");
    // Its /primary check passes after the key moved (it would be in on rise 1 without the wait).
    rig.wait_for(
        "a passing /primary check of pg-test-2 after the key moved",
        Duration::from_secs(5),
        |r| {
            let s = r.server_status("pg-test-primary", "pg-test-2");
            s["checks_total"].as_u64().unwrap_or(0) > checks_before
                && s["last_check"]["passed"] == true
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let s = rig.server_status("pg-test-primary", "pg-test-2");
    assert_eq!(
        s["active"],
        false,
        "the new holder took writes before its promotion completed: {s}\n{}",
        rig.log_text()
    );
    for port in [5433, 5436] {
        let tries = try_land(&rig, port, 3);
        assert!(
            tries.iter().all(Result::is_err),
            "a new connection to {port} landed while no member is writable: {tries:?}"
        );
    }
    // The promotion completes: in at once.
    let promoted = Instant::now();
    rig.set_patroni(1, "primary");
    let took = rig.wait_for("pg-test-2 active", Duration::from_secs(3), |r| {
        r.server_status("pg-test-primary", "pg-test-2")["active"] == true
    });
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-2:6432"));
    assert_eq!(set(&rig.land(5436, 2)), one("pg-test-2:5432"));
    let log = rig.log_text();
    assert!(
        log.contains("is promoted (out of recovery)"),
        "no promotion line in the log:\n{log}"
    );
    eprintln!(
        "dcs: new holder active {took:?} after its REST API reported the promotion ({:?} measured here)",
        promoted.elapsed()
    );
}
