//! Runtime server states (DRAIN, MAINT, READY) through the reconciler over the fake datapath.

use std::path::PathBuf;

use super::*;
use crate::{
    agent::state_file::{ServerStates, StateFile},
    balance::AdminState,
    control::{ServerStateError, ServerStateRequest},
};

const DEFAULT: &str = "pg-test-default";

fn set_state(h: &mut Harness, proxy: &str, server: &str, state: AdminState, at: f64) {
    let t = h.at(at);
    h.rec
        .set_server_state(proxy, server, state, t)
        .unwrap_or_else(|e| panic!("{proxy}/{server} {state}: {e}"));
}

fn server_status(h: &Harness, proxy: &str, server: &str) -> crate::status::ServerStatus {
    h.status()
        .services
        .into_iter()
        .find(|s| s.name == proxy)
        .and_then(|s| s.servers.into_iter().find(|v| v.name == server))
        .unwrap_or_else(|| panic!("{proxy}/{server} not in the status"))
}

fn names(set: &[BackendSpec]) -> Vec<&str> {
    set.iter().map(|b| b.name.as_str()).collect()
}

fn temp_file(tag: &str) -> (PathBuf, StateFile) {
    let dir = std::env::temp_dir().join(format!("pgsvc-agent-state-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = StateFile::new(dir.join("state.json"));
    (dir, file)
}

#[test]
fn drain_keeps_flows_and_leaves_the_active_set() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.dp().open(PRIMARY, "pg-test-1", 5);
    set_state(&mut h, PRIMARY, "pg-test-1", AdminState::Drain, 1.0);
    let w = h.last_write(PRIMARY);
    assert_eq!(active(&w), ["pg-test-2", "pg-test-3"]);
    let drained = w
        .iter()
        .find(|b| b.name == "pg-test-1")
        .expect("still in the set");
    assert!(drained.up, "a drained server keeps its flows");
    assert_eq!(drained.weight, 0);
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 5);
    assert!(h.rec.dp.flushed(PRIMARY).is_empty());
    let s = server_status(&h, PRIMARY, "pg-test-1");
    assert_eq!(
        (s.state.as_str(), s.admin_state),
        ("DRAIN", AdminState::Drain)
    );
    assert_eq!(s.effective_weight, 0);
    assert!(!s.active);
    // Checks keep running: the key is still synced, and the other services are untouched.
    assert!(h.rec.checks.running.contains(&h.key(PRIMARY, "pg-test-1")));
    assert_eq!(active(&h.last_write(DEFAULT)).len(), 3);
}

#[test]
fn maint_resets_flows_and_stops_checks_unless_another_service_uses_them() {
    // Without shutdown-sessions: MAINT resets the flows all the same.
    let mut h = started(plan(&inventory(NO_SHUTDOWN, "")), FakeDatapath::new());
    h.ready();
    h.dp().open(PRIMARY, "pg-test-1", 4);
    h.dp().open(DEFAULT, "pg-test-1", 2);
    let key = h.key(PRIMARY, "pg-test-1");
    assert_eq!(key, h.key(DEFAULT, "pg-test-1"), "/primary is one check");
    set_state(&mut h, PRIMARY, "pg-test-1", AdminState::Maint, 1.0);
    assert_eq!(names(&h.last_write(PRIMARY)), ["pg-test-2", "pg-test-3"]);
    assert_eq!(h.rec.dp.flushed(PRIMARY), ["pg-test-1"]);
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 0);
    assert_eq!(
        h.rec.dp.conns(DEFAULT, "pg-test-1"),
        2,
        "other service untouched"
    );
    assert!(
        h.rec.checks.running.contains(&key),
        "pg-test-default still needs the shared check"
    );
    let s = server_status(&h, PRIMARY, "pg-test-1");
    assert_eq!(
        (s.state.as_str(), s.admin_state),
        ("MAINT", AdminState::Maint)
    );
    // The same server in MAINT in the other service too: now the check stops.
    set_state(&mut h, DEFAULT, "pg-test-1", AdminState::Maint, 2.0);
    assert!(!h.rec.checks.running.contains(&key));
    assert_eq!(h.rec.dp.flushed(DEFAULT), ["pg-test-1"]);
    // An event of that check (one last result in flight) changes nothing for it.
    let writes = h.rec.dp.count(Op::SetBackends);
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        3.0,
    );
    assert_eq!(h.rec.dp.count(Op::SetBackends), writes);
    assert_eq!(server_status(&h, PRIMARY, "pg-test-1").state, "MAINT");
}

#[test]
fn ready_restores_drain_at_once_and_maint_through_the_checks() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    set_state(&mut h, REPLICA, "pg-test-2", AdminState::Drain, 1.0);
    assert!(
        active(&h.last_write(REPLICA))
            .iter()
            .all(|n| *n != "pg-test-2")
    );
    set_state(&mut h, REPLICA, "pg-test-2", AdminState::Ready, 2.0);
    assert_eq!(active(&h.last_write(REPLICA)), ["pg-test-2"]);
    assert_eq!(server_status(&h, REPLICA, "pg-test-2").state, "UP");

    // /read-only of pg-test-2 is used by the replica service only.
    set_state(&mut h, REPLICA, "pg-test-2", AdminState::Maint, 3.0);
    let key = h.key(REPLICA, "pg-test-2");
    assert!(!h.rec.checks.running.contains(&key));
    set_state(&mut h, REPLICA, "pg-test-2", AdminState::Ready, 4.0);
    assert!(
        h.rec.checks.running.contains(&key),
        "the check starts again"
    );
    // Back in the set but not UP until its check says so.
    let w = h.last_write(REPLICA);
    let srv = w
        .iter()
        .find(|b| b.name == "pg-test-2")
        .expect("back in the set");
    assert!(!srv.up && !srv.active, "{srv:?}");
    assert_eq!(server_status(&h, REPLICA, "pg-test-2").state, "UNKNOWN");
    h.event(
        REPLICA,
        "pg-test-2",
        HealthState::Unknown,
        HealthState::Up,
        4.1,
    );
    assert_eq!(active(&h.last_write(REPLICA)), ["pg-test-2"]);
    let s = server_status(&h, REPLICA, "pg-test-2");
    assert_eq!((s.state.as_str(), s.admin_state), ("UP", AdminState::Ready));
}

#[test]
fn states_survive_a_reload_while_their_server_exists() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    set_state(&mut h, REPLICA, "pg-test-2", AdminState::Drain, 1.0);
    set_state(&mut h, OFFLINE, "pg-test-3", AdminState::Maint, 1.0);
    // A reload that changes the offline service (its check) and adds another.
    let changed = inventory(OPTS, LAG).replace(
        "check: /replica,   selector: \"[? pg_role == `offline` ]\"",
        "check: /replica?lag=16MB,   selector: \"[? pg_role == `offline` ]\"",
    );
    let summary = reload(&mut h, &changed, 2.0).expect("reload");
    assert_eq!((summary.added, summary.changed), (1, 1));
    assert_eq!(h.rec.admin_state(REPLICA, "pg-test-2"), AdminState::Drain);
    assert_eq!(h.rec.admin_state(OFFLINE, "pg-test-3"), AdminState::Maint);
    assert!(!names(&h.last_write(OFFLINE)).contains(&"pg-test-3"));
    let key = h.key(OFFLINE, "pg-test-3");
    assert!(
        !h.rec.checks.running.contains(&key),
        "the new check is not started"
    );
    assert_eq!(server_status(&h, OFFLINE, "pg-test-3").state, "MAINT");
    assert_eq!(server_status(&h, REPLICA, "pg-test-2").state, "DRAIN");
    // The offline service goes: its state goes with it; the drained replica stays drained.
    let without_offline: String = inventory(OPTS, "")
        .lines()
        .filter(|l| !l.contains("name: offline"))
        .map(|l| format!("{l}\n"))
        .collect();
    reload(&mut h, &without_offline, 3.0).expect("reload");
    assert_eq!(h.rec.admin_state(OFFLINE, "pg-test-3"), AdminState::Ready);
    assert_eq!(h.rec.admin.len(), 1);
    assert_eq!(h.rec.admin_state(REPLICA, "pg-test-2"), AdminState::Drain);
    assert!(!active(&h.last_write(REPLICA)).contains(&"pg-test-2"));
}

#[test]
fn states_are_saved_on_change_and_restored_before_the_first_write() {
    let (dir, file) = temp_file("restore");
    let mut saved = ServerStates::new();
    saved.insert((PRIMARY.into(), "pg-test-1".into()), AdminState::Maint);
    saved.insert((DEFAULT.into(), "pg-test-1".into()), AdminState::Maint);
    saved.insert((REPLICA.into(), "pg-test-2".into()), AdminState::Drain);
    saved.insert(
        ("pg-test-gone".into(), "pg-test-1".into()),
        AdminState::Drain,
    );
    file.save(&saved).expect("save");

    // An adopted primary with flows on the server the operator had put in MAINT... and a restart.
    let mut dp = FakeDatapath::new();
    dp.adopt(
        PRIMARY,
        spec_of(5433, true),
        vec![
            backend("pg-test-2", 12, 6432, true),
            backend("pg-test-3", 13, 6432, true),
        ],
    );
    dp.open(PRIMARY, "pg-test-2", 3);
    let t0 = Instant::now();
    let settings = Settings {
        snat_ports: 40000..=59999,
        timeouts: Timeouts::default(),
    };
    let p = plan(&inventory(OPTS, ""));
    let mut rec = Reconciler::new(dp, FakeChecks::default(), p, settings, identity(), t0);
    rec.restore_server_states(file.clone());
    rec.start(t0).expect("start");
    let mut h = Harness { rec, t0 };
    assert_eq!(h.rec.admin.len(), 3, "the unknown proxy's entry is dropped");
    assert_eq!(file.load().expect("rewritten").len(), 3);
    let key = h.key(PRIMARY, "pg-test-1");
    assert!(!h.rec.checks.running.contains(&key), "no check for MAINT");
    // Every other server UP: the MAINT one (never checked) does not hold the first write back.
    let others: Vec<(String, String)> = h
        .rec
        .services
        .iter()
        .flat_map(|s| s.servers.iter().map(|v| (s.name.clone(), v.name.clone())))
        .filter(|(s, v)| !(v == "pg-test-1" && (s == PRIMARY || s == DEFAULT)))
        .collect();
    for (s, v) in others {
        h.set(&s, &v, snapshot(HealthState::Up, Some(t0), true));
    }
    let t = h.at(0.2);
    h.rec.rebalance_all(t);
    assert!(h.rec.is_ready());
    assert_eq!(names(&h.last_write(PRIMARY)), ["pg-test-2", "pg-test-3"]);
    assert_eq!(
        h.rec.dp.conns(PRIMARY, "pg-test-2"),
        3,
        "adopted flows kept"
    );
    assert!(!active(&h.last_write(REPLICA)).contains(&"pg-test-2"));
    assert_eq!(server_status(&h, PRIMARY, "pg-test-1").state, "MAINT");

    // A change is saved at once; READY everywhere removes the file.
    set_state(&mut h, REPLICA, "pg-test-2", AdminState::Ready, 1.0);
    let now = file.load().expect("load");
    assert_eq!(now.len(), 2);
    assert!(!now.contains_key(&(REPLICA.to_owned(), "pg-test-2".to_owned())));
    set_state(&mut h, PRIMARY, "pg-test-1", AdminState::Ready, 2.0);
    set_state(&mut h, DEFAULT, "pg-test-1", AdminState::Ready, 2.0);
    assert!(!file.path().exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreadable_state_file_starts_every_server_ready() {
    let (dir, file) = temp_file("corrupt");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(file.path(), "{ not json").expect("write");
    let t0 = Instant::now();
    let settings = Settings {
        snat_ports: 40000..=59999,
        timeouts: Timeouts::default(),
    };
    let p = plan(&inventory(OPTS, ""));
    let mut rec = Reconciler::new(
        FakeDatapath::new(),
        FakeChecks::default(),
        p,
        settings,
        identity(),
        t0,
    );
    rec.restore_server_states(file.clone());
    assert!(rec.admin.is_empty());
    rec.start(t0).expect("start");
    // The next change replaces the bad file.
    rec.set_server_state(PRIMARY, "pg-test-2", AdminState::Drain, t0)
        .expect("drain");
    assert_eq!(file.load().expect("valid now").len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_proxy_or_server_is_a_typed_error_and_changes_nothing() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    let writes = h.rec.dp.count(Op::SetBackends);
    let t = h.at(1.0);
    let e = h
        .rec
        .set_server_state("pg-test-nope", "pg-test-1", AdminState::Maint, t)
        .expect_err("unknown proxy");
    assert!(matches!(e, ServerStateError::UnknownProxy { .. }), "{e}");
    assert!(e.is_not_found());
    let e = h
        .rec
        .set_server_state(PRIMARY, "pg-test-9", AdminState::Drain, t)
        .expect_err("unknown server");
    assert!(matches!(e, ServerStateError::UnknownServer { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "proxy pg-test-primary has no server named \"pg-test-9\""
    );
    assert!(h.rec.admin.is_empty());
    assert_eq!(h.rec.dp.count(Op::SetBackends), writes);

    // Through the request channel, as the admin API sends it.
    let (reply, mut answer) = tokio::sync::oneshot::channel();
    h.rec.on_server_state(
        ServerStateRequest {
            proxy: PRIMARY.into(),
            server: "pg-test-3".into(),
            state: AdminState::Drain,
            reply,
        },
        t,
    );
    let change = answer.try_recv().expect("answered").expect("applied");
    assert_eq!(
        change.to_string(),
        "pg-test-primary/pg-test-3: ready -> drain"
    );
}

#[test]
fn checks_that_cannot_restart_refuse_the_change() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.rec.checks.fail_sync = true;
    let t = h.at(1.0);
    let e = h
        .rec
        .set_server_state(REPLICA, "pg-test-2", AdminState::Maint, t)
        .expect_err("checks refuse");
    assert!(matches!(e, ServerStateError::Checks { .. }), "{e}");
    assert!(!e.is_not_found());
    assert_eq!(h.rec.admin_state(REPLICA, "pg-test-2"), AdminState::Ready);
    // DRAIN does not touch the checks.
    set_state(&mut h, REPLICA, "pg-test-2", AdminState::Drain, 2.0);
}

#[test]
fn states_on_backup_servers() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    // The replica down: the first backup (pg-test-1, the primary) takes over.
    h.event(
        REPLICA,
        "pg-test-2",
        HealthState::Up,
        HealthState::Down,
        1.0,
    );
    assert_eq!(active(&h.last_write(REPLICA)), ["pg-test-1"]);
    // Drained, it is no backup candidate either: the next backup takes over.
    set_state(&mut h, REPLICA, "pg-test-1", AdminState::Drain, 2.0);
    assert_eq!(active(&h.last_write(REPLICA)), ["pg-test-3"]);
    let svc = h
        .status()
        .services
        .into_iter()
        .find(|s| s.name == REPLICA)
        .expect("replica");
    assert_eq!((svc.active_servers, svc.backup_servers), (0, 1));
    assert!(svc.using_backups);
    // The last backup in MAINT: nothing left.
    set_state(&mut h, REPLICA, "pg-test-3", AdminState::Maint, 3.0);
    assert!(active(&h.last_write(REPLICA)).is_empty());
    // READY again: the first backup is back at once.
    set_state(&mut h, REPLICA, "pg-test-1", AdminState::Ready, 4.0);
    assert_eq!(active(&h.last_write(REPLICA)), ["pg-test-1"]);
}

#[test]
fn all_servers_drained_leaves_the_service_without_a_server_but_with_its_flows() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.dp().open(PRIMARY, "pg-test-1", 7);
    for (i, srv) in ["pg-test-1", "pg-test-2", "pg-test-3"].iter().enumerate() {
        set_state(&mut h, PRIMARY, srv, AdminState::Drain, 1.0 + i as f64);
    }
    let w = h.last_write(PRIMARY);
    assert!(active(&w).is_empty());
    assert!(w.iter().all(|b| b.up && b.weight == 0), "{w:?}");
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 7);
    let svc = h
        .status()
        .services
        .into_iter()
        .find(|s| s.name == PRIMARY)
        .expect("primary");
    assert_eq!((svc.active_servers, svc.backup_servers), (0, 0));
    assert!(svc.servers.iter().all(|s| s.state == "DRAIN"));
}
