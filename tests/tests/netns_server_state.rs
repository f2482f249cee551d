//! netns tier of runtime server states (`pgsvc server set <proxy>/<server> ready|drain|maint`): the
//! real agent between a client and Patroni stand-ins that log every check they answer. DRAIN keeps
//! an open connection and sends new ones elsewhere; MAINT resets it and stops the server's checks;
//! both show in `/status`, `/metrics` and `pgsvc status`, and both survive `pgsvc reload` and a
//! SIGKILL followed by an adopting restart.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use pgsvc_tests::{
    agent_rig::{AgentRig, LB, inventory},
    require_root,
};

/// Fast timers, shutdown-sessions off: MAINT must reset the flows by itself.
const FAST: &str =
    "inter 1s fastinter 500ms downinter 1s rise 2 fall 2 slowstart 0s maxconn 3000 weight 100";

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Removes the agent's saved states if the test stops half-way (the agent removes the file itself
/// once every server is READY again).
struct StateFileGuard(PathBuf);

impl Drop for StateFileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        // And the directories the agent made for it, when nothing else is in them.
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
            if let Some(up) = dir.parent() {
                let _ = std::fs::remove_dir(up);
            }
        }
    }
}

fn admin() -> String {
    format!("{LB}:{}", pgsvc_tests::agent_rig::ADMIN_PORT)
}

fn server_set(rig: &AgentRig, target: &str, state: &str) -> String {
    let (code, out, err) = rig.pgsvc_cli(&["server", "set", target, state, "--admin", &admin()]);
    assert_eq!(code, 0, "pgsvc server set {target} {state}: {out}{err}");
    out
}

fn state_of(rig: &AgentRig, proxy: &str, server: &str) -> (String, String) {
    let s = rig.server_status(proxy, server);
    (
        s["state"].as_str().unwrap_or_default().to_owned(),
        s["admin_state"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Checks node `i` answers for `uri` over `window`.
fn checks_during(rig: &AgentRig, i: usize, uri: &str, window: Duration) -> usize {
    let before = rig.check_requests(i, uri);
    std::thread::sleep(window);
    rig.check_requests(i, uri) - before
}

fn metric_is_one(text: &str, proxy: &str, server: &str, state: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("haproxy_server_status{")
            && l.contains(&format!("proxy=\"{proxy}\""))
            && l.contains(&format!("server=\"{server}\""))
            && l.contains(&format!("state=\"{state}\""))
            && l.trim_end().ends_with(" 1")
    })
}

/// DRAIN on pg-test-replica/pg-test-2 and MAINT on pg-test-offline/pg-test-3, as they must hold now.
fn assert_states_hold(rig: &AgentRig, what: &str) {
    assert_eq!(
        state_of(rig, "pg-test-replica", "pg-test-2"),
        ("DRAIN".to_owned(), "drain".to_owned()),
        "{what}"
    );
    assert_eq!(
        state_of(rig, "pg-test-offline", "pg-test-3"),
        ("MAINT".to_owned(), "maint".to_owned()),
        "{what}"
    );
    // New connections go elsewhere: the first backup of 5434, the backup of 5438.
    assert_eq!(
        set(&rig.land(5434, 4)),
        names(&["pg-test-1:6432"]),
        "{what}"
    );
    assert_eq!(
        set(&rig.land(5438, 4)),
        names(&["pg-test-2:5432"]),
        "{what}"
    );
    // No check reaches the server in MAINT (/replica of node 3 serves pg-test-offline only); the
    // drained server is still checked (/read-only of node 2, inter 1 s).
    let window = Duration::from_millis(3500);
    let before_drained = rig.check_requests(1, "/read-only");
    assert_eq!(
        checks_during(rig, 2, "/replica", window),
        0,
        "{what}: MAINT checked"
    );
    assert!(
        rig.check_requests(1, "/read-only") >= before_drained + 2,
        "{what}: the drained server is no longer checked"
    );
}

#[test]
fn drain_and_maint_hold_across_reload_and_restart() {
    if !require_root("server_state") {
        return;
    }
    let mut rig = AgentRig::start(&inventory(FAST, ""), stub());
    let _state_file = StateFileGuard(
        pgsvc::agent::state_file::StateFile::for_pin_dir(rig.pins.path())
            .path()
            .to_path_buf(),
    );
    assert_eq!(set(&rig.land(5434, 4)), names(&["pg-test-2:6432"]));
    assert_eq!(set(&rig.land(5438, 4)), names(&["pg-test-3:5432"]));

    // DRAIN: the open connection keeps working, new ones go to the first backup.
    let mut kept = rig.connect(5434).expect("connect 5434");
    assert_eq!(kept.server, "pg-test-2:6432");
    let out = server_set(&rig, "pg-test-replica/pg-test-2", "drain");
    assert!(out.contains("ready -> drain"), "{out}");
    assert_eq!(
        kept.echo(b"drained")
            .expect("a drained server keeps its sessions"),
        b"drained"
    );

    // MAINT: the open connection is reset (shutdown-sessions is off: MAINT does it anyway).
    let mut reset = rig.connect(5438).expect("connect 5438");
    assert_eq!(reset.server, "pg-test-3:5432");
    assert_eq!(reset.echo(b"before").expect("echo"), b"before");
    server_set(&rig, "pg-test-offline/pg-test-3", "maint");
    let err = reset
        .echo(b"after maint")
        .expect_err("a session of a server in MAINT must be reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    // Let a check that was in flight at the change land before counting.
    std::thread::sleep(Duration::from_millis(1200));
    assert_states_hold(&rig, "after the change");
    assert_eq!(kept.echo(b"still").expect("drained session"), b"still");

    // Reflected in /metrics, in the API and in `pgsvc status`.
    let (code, metrics) = rig.http("GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(
        metric_is_one(&metrics, "pg-test-replica", "pg-test-2", "DRAIN"),
        "{metrics}"
    );
    assert!(
        metric_is_one(&metrics, "pg-test-offline", "pg-test-3", "MAINT"),
        "{metrics}"
    );
    let (code, body) = rig
        .http("GET", "/servers/pg-test-replica/pg-test-2/state")
        .expect("GET state");
    assert_eq!((code, body.as_str()), (200, "drain\n"));
    let (code, table, err) = rig.pgsvc_cli(&["status", "--admin", &admin()]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("DRAIN (2/2 UP)"), "{table}");
    assert!(table.contains("MAINT"), "{table}");

    // Unknown names: 404 from the API, a non-zero exit from the CLI, nothing changes.
    let (code, _) = rig
        .http("GET", "/servers/pg-test-replica/pg-test-9/state")
        .expect("GET state");
    assert_eq!(code, 404);
    let (code, _, err) = rig.pgsvc_cli(&[
        "server",
        "set",
        "pg-test-replica/pg-test-9",
        "maint",
        "--admin",
        &admin(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("pg-test-9"), "{err}");
    let (code, _, err) = rig.pgsvc_cli(&[
        "server",
        "set",
        "pg-test-nope/pg-test-1",
        "drain",
        "--admin",
        &admin(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("pg-test-nope"), "{err}");

    // A reload keeps both.
    let (code, out, err) = rig.pgsvc_cli(&["reload", "--admin", &admin()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_states_hold(&rig, "after pgsvc reload");
    assert_eq!(
        kept.echo(b"reloaded").expect("drained session"),
        b"reloaded"
    );

    // SIGKILL and an adopting restart keep both, and the drained session.
    if let Some(mut a) = rig.agent.take() {
        a.signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
            .expect("agent killed");
    }
    rig.start_agent();
    assert_eq!(rig.status()["xdp_mode"], "adopted");
    assert_eq!(
        kept.echo(b"restarted").expect("drained session"),
        b"restarted"
    );
    assert_states_hold(&rig, "after a restart");
    assert!(
        rig.log_text()
            .contains("server pg-test-offline/pg-test-3 restored in state maint"),
        "{}",
        rig.log_text()
    );

    // READY: DRAIN ends at once; MAINT ends through the checks, which start again.
    server_set(&rig, "pg-test-replica/pg-test-2", "ready");
    rig.wait_for("5434 back on pg-test-2", Duration::from_secs(2), |r| {
        r.land(5434, 1) == ["pg-test-2:6432"]
    });
    let before = rig.check_requests(2, "/replica");
    server_set(&rig, "pg-test-offline/pg-test-3", "ready");
    rig.wait_for("5438 back on pg-test-3", Duration::from_secs(5), |r| {
        r.land(5438, 1) == ["pg-test-3:5432"]
    });
    assert!(rig.check_requests(2, "/replica") > before, "checks resumed");
    assert_eq!(state_of(&rig, "pg-test-offline", "pg-test-3").0, "UP");
    assert_eq!(kept.echo(b"ready").expect("session"), b"ready");
    assert!(
        !_state_file.0.exists(),
        "every server READY: no saved state left at {}",
        _state_file.0.display()
    );
}
