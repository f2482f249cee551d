//! Leader-key fencing through the reconciler over the fake datapath: write services follow the key,
//! read services keep HAProxy's semantics, a fallback restores REST checks alone.

use super::*;
use crate::{
    dcs::{DcsUpdate, LeaderView},
    health::CheckFailure,
};

pub(super) const DEFAULT: &str = "pg-test-default";

pub(super) fn leader(h: &mut Harness, holder: Option<&str>, at: f64) {
    let t = h.at(at);
    h.rec.on_leader("pg-test", holder.map(str::to_owned), t);
}

/// A server whose latest check result is `passed`, after `checks` checks in all.
pub(super) fn result(
    state: HealthState,
    passed: bool,
    checks: u64,
    since: Instant,
) -> ServerHealth {
    let mut s = snapshot(state, Some(since), false);
    s.checks_total = checks;
    s.health = match state {
        HealthState::Up => 3,
        _ => u32::from(passed),
    };
    s.last_check = Some(CheckOutcome {
        duration: Duration::from_millis(2),
        result: if passed {
            Ok(())
        } else {
            Err(CheckFailure::L4Refused)
        },
    });
    s
}

pub(super) fn set_all(h: &mut Harness, server: &str, health: &ServerHealth) {
    for svc in [PRIMARY, REPLICA, DEFAULT, OFFLINE] {
        let has = h.service(svc).servers.iter().any(|s| s.name == server);
        if has {
            h.set(svc, server, health.clone());
        }
    }
}

fn fenced(h: &Harness, service: &str, server: &str) -> bool {
    h.status()
        .services
        .iter()
        .find(|s| s.name == service)
        .and_then(|s| s.servers.iter().find(|v| v.name == server))
        .map(|v| v.fenced)
        .unwrap_or_else(|| panic!("{service}/{server} not in the status"))
}

#[test]
fn the_key_leaving_a_member_fences_it_at_once_and_resets_its_sessions() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    // All three pass /primary (the moment of a switchover where two nodes answer 200).
    assert_eq!(
        active(&h.last_write(PRIMARY)),
        ["pg-test-1", "pg-test-2", "pg-test-3"]
    );
    h.dp().open(PRIMARY, "pg-test-1", 4);
    h.dp().open(REPLICA, "pg-test-1", 2);
    let replica_writes = h.rec.dp.writes(REPLICA).len();
    leader(&mut h, Some("pg-test-2"), 1.0);
    for svc in [PRIMARY, DEFAULT] {
        let w = h.last_write(svc);
        assert_eq!(active(&w), ["pg-test-2"], "{svc}");
        assert!(
            w.iter().filter(|b| b.name != "pg-test-2").all(|b| !b.up),
            "{svc}: non-holders are marked down: {w:?}"
        );
    }
    assert_eq!(h.rec.dp.flushed(PRIMARY), ["pg-test-1", "pg-test-3"]);
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 0);
    // Read services keep HAProxy's semantics: nothing rewritten, no flow touched.
    assert_eq!(h.rec.dp.writes(REPLICA).len(), replica_writes);
    assert_eq!(h.rec.dp.conns(REPLICA, "pg-test-1"), 2);
    assert!(fenced(&h, PRIMARY, "pg-test-1") && !fenced(&h, PRIMARY, "pg-test-2"));
    assert!(!fenced(&h, REPLICA, "pg-test-1"));
    let dcs = h.status().dcs;
    assert_eq!(dcs.len(), 1);
    assert_eq!(dcs[0].leader.as_deref(), Some("pg-test-2"));
    assert!(dcs[0].fencing);
    // pg-test-1 and pg-test-3 out of two write services.
    assert_eq!(dcs[0].fence_events_total, 4);

    // The key moves back: the same at once the other way.
    leader(&mut h, Some("pg-test-1"), 2.0);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1"]);
    assert!(
        h.rec
            .dp
            .flushed(PRIMARY)
            .ends_with(&["pg-test-2".to_owned()])
    );
    assert_eq!(h.status().dcs[0].fence_events_total, 6);
}

#[test]
fn the_same_holder_again_rewrites_nothing() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    leader(&mut h, Some("pg-test-1"), 1.0);
    let writes = h.rec.dp.count(Op::SetBackends);
    let events = h.status().dcs[0].fence_events_total;
    let pokes = h.rec.checks.pokes.borrow().len();
    leader(&mut h, Some("pg-test-1"), 2.0);
    leader(&mut h, Some("pg-test-1"), 3.0);
    assert_eq!(h.rec.dp.count(Op::SetBackends), writes);
    assert_eq!(h.status().dcs[0].fence_events_total, events);
    // The tenure goes on (its start is the holder's slowstart origin): no new arrival, no check.
    assert_eq!(h.rec.checks.pokes.borrow().len(), pokes);
}

#[test]
fn a_new_holder_is_up_after_one_check_passed_after_the_key_arrived() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    let t0 = h.t0;
    // pg-test-2 is a replica: its /primary check fails (DOWN); pg-test-1 is the primary.
    set_all(
        &mut h,
        "pg-test-2",
        &result(HealthState::Down, false, 5, t0),
    );
    set_all(
        &mut h,
        "pg-test-3",
        &result(HealthState::Down, false, 5, t0),
    );
    let t = h.at(0.5);
    h.rec.rebalance_all(t);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1"]);

    leader(&mut h, Some("pg-test-2"), 1.0);
    // The old primary is out at once; the new holder has no passing check yet.
    assert!(active(&h.last_write(PRIMARY)).is_empty());
    assert!(h.rec.fence_awaiting());
    let key2 = h.key(PRIMARY, "pg-test-2");
    assert!(
        h.rec.checks.pokes.borrow().contains(&key2),
        "the holder is checked now"
    );
    assert!(h.rec.checks.hurried.borrow().contains(&key2), "and hurried");

    // A pass from before the key arrived does not count.
    set_all(&mut h, "pg-test-2", &result(HealthState::Down, true, 5, t0));
    let t = h.at(1.1);
    h.rec.on_fence_poll(t);
    assert!(active(&h.last_write(PRIMARY)).is_empty());

    // One pass after it: UP with rise 1, although its health counter is still DOWN 1/2.
    set_all(&mut h, "pg-test-2", &result(HealthState::Down, true, 6, t0));
    let t = h.at(1.2);
    h.rec.on_fence_poll(t);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-2"]);
    assert_eq!(active(&h.last_write(DEFAULT)), ["pg-test-2"]);
    assert!(!h.rec.fence_awaiting());
    assert!(!h.rec.checks.hurried.borrow().contains(&key2));

    // A failed check after that takes it out again (rise 1 is not a latch).
    set_all(
        &mut h,
        "pg-test-2",
        &result(HealthState::Down, false, 7, t0),
    );
    let t = h.at(1.3);
    h.rec.rebalance_all(t);
    assert!(active(&h.last_write(PRIMARY)).is_empty());
}

#[test]
fn without_the_key_rest_checks_need_rise_passes() {
    // The same pass, but no DCS: HAProxy's rise 2 holds, the server stays out.
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    let t0 = h.t0;
    set_all(&mut h, "pg-test-2", &result(HealthState::Down, true, 6, t0));
    let t = h.at(0.5);
    h.rec.rebalance_all(t);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1", "pg-test-3"]);
}

#[test]
fn no_leader_leaves_write_services_without_a_server() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    leader(&mut h, None, 1.0);
    assert!(active(&h.last_write(PRIMARY)).is_empty());
    assert!(!active(&h.last_write(REPLICA)).is_empty());
    assert!(!h.rec.fence_awaiting());
}

#[test]
fn a_fallback_gives_write_services_back_to_the_rest_checks() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    leader(&mut h, Some("pg-test-2"), 1.0);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-2"]);
    let t = h.at(2.0);
    h.rec.on_dcs_fallback(
        "pg-test",
        "etcd at http://198.18.0.5:2379 is unreachable",
        t,
    );
    assert_eq!(
        active(&h.last_write(PRIMARY)),
        ["pg-test-1", "pg-test-2", "pg-test-3"]
    );
    let dcs = &h.status().dcs[0];
    assert!(!dcs.fencing);
    assert_eq!(dcs.leader, None);
    assert!(
        dcs.fallback_reason
            .as_deref()
            .is_some_and(|r| r.contains("unreachable"))
    );
    assert_eq!(dcs.fallbacks_total, 1);
    assert!(!fenced(&h, PRIMARY, "pg-test-1"));
    // The same reason again is no new fallback.
    let t = h.at(3.0);
    h.rec.on_dcs_fallback(
        "pg-test",
        "etcd at http://198.18.0.5:2379 is unreachable",
        t,
    );
    assert_eq!(h.status().dcs[0].fallbacks_total, 1);
    // etcd back: fencing again.
    leader(&mut h, Some("pg-test-1"), 4.0);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1"]);
    assert!(h.status().dcs[0].fallback_reason.is_none());
}

#[test]
fn a_key_naming_no_server_falls_back_instead_of_emptying_write_services() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    leader(&mut h, Some("pg-elsewhere-9"), 1.0);
    assert_eq!(
        active(&h.last_write(PRIMARY)),
        ["pg-test-1", "pg-test-2", "pg-test-3"]
    );
    let dcs = &h.status().dcs[0];
    assert!(!dcs.fencing);
    assert!(
        dcs.fallback_reason
            .as_deref()
            .is_some_and(|r| r.contains("pg-elsewhere-9"))
    );
}

#[test]
fn dcs_updates_set_the_view_connection_and_lag() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    let confirmed = h.at(1.0);
    let update = |view, endpoint: Option<&str>| DcsUpdate {
        cluster: "pg-test".into(),
        view,
        leaving: None,
        endpoint: endpoint.map(str::to_owned),
        revision: 42,
        confirmed,
    };
    let t = h.at(1.5);
    h.rec.on_dcs(
        &update(
            LeaderView::Leader(Some("pg-test-2".into())),
            Some("http://198.18.0.5:2379"),
        ),
        t,
    );
    let t = h.at(3.5);
    h.rec.publish(t);
    let dcs = &h.status().dcs[0];
    assert!(dcs.connected && dcs.fencing);
    assert_eq!(dcs.revision, 42);
    assert_eq!(dcs.watch_lag_seconds, Some(2.5));
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-2"]);
    let t = h.at(4.0);
    h.rec.on_dcs(
        &update(LeaderView::Fallback("etcd stopped".into()), None),
        t,
    );
    let dcs = &h.status().dcs[0];
    assert!(!dcs.connected && !dcs.fencing && dcs.watch_lag_seconds.is_none());
    assert_eq!(
        active(&h.last_write(PRIMARY)),
        ["pg-test-1", "pg-test-2", "pg-test-3"]
    );
}

#[test]
fn a_holder_in_maint_is_not_awaited() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    for svc in [PRIMARY, DEFAULT] {
        let t = h.at(0.5);
        h.rec
            .set_server_state(svc, "pg-test-2", crate::balance::AdminState::Maint, t)
            .expect("maint");
    }
    leader(&mut h, Some("pg-test-2"), 1.0);
    assert!(active(&h.last_write(PRIMARY)).is_empty());
    assert!(!h.rec.fence_awaiting());
}

fn key(h: &mut Harness, holder: &str, leaving: Option<&str>, at: f64) {
    let t = h.at(at);
    h.rec.on_key(
        "pg-test",
        Some(holder.to_owned()),
        leaving.map(str::to_owned),
        t,
    );
}

#[test]
fn a_holder_asked_to_step_down_is_fenced_and_back_at_once_when_refused() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    leader(&mut h, Some("pg-test-1"), 1.0);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1"]);
    h.dp().open(PRIMARY, "pg-test-1", 4);
    h.dp().open(REPLICA, "pg-test-1", 2);
    let replica_writes = h.rec.dp.writes(REPLICA).len();
    let events = h.status().dcs[0].fence_events_total;

    // Patroni's failover key names pg-test-1 as the leader to leave; it still holds the key and
    // its /primary still passes.
    key(&mut h, "pg-test-1", Some("switchover to pg-test-2"), 2.0);
    for svc in [PRIMARY, DEFAULT] {
        let w = h.last_write(svc);
        assert!(active(&w).is_empty(), "{svc}: {w:?}");
        assert!(w.iter().all(|b| !b.up), "{svc}: every server down: {w:?}");
    }
    assert!(
        h.rec.dp.flushed(PRIMARY).contains(&"pg-test-1".to_owned()),
        "its sessions are reset"
    );
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 0);
    assert_eq!(h.rec.dp.writes(REPLICA).len(), replica_writes);
    assert_eq!(h.rec.dp.conns(REPLICA, "pg-test-1"), 2);
    assert!(fenced(&h, PRIMARY, "pg-test-1"));
    assert!(!fenced(&h, REPLICA, "pg-test-1"));
    assert!(
        !h.rec.fence_awaiting(),
        "a leaving holder is not awaited: no hurried checks"
    );
    let dcs = &h.status().dcs[0];
    assert_eq!(dcs.leader.as_deref(), Some("pg-test-1"));
    assert_eq!(
        dcs.leader_leaving.as_deref(),
        Some("switchover to pg-test-2")
    );
    // pg-test-1 out of two write services.
    assert_eq!(dcs.fence_events_total, events + 2);

    // The same request again changes nothing.
    let writes = h.rec.dp.count(Op::SetBackends);
    key(&mut h, "pg-test-1", Some("switchover to pg-test-2"), 2.5);
    assert_eq!(h.rec.dp.count(Op::SetBackends), writes);

    // Patroni refuses (it writes `{}`): the holder is back at once, no check awaited.
    key(&mut h, "pg-test-1", None, 3.0);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1"]);
    assert_eq!(active(&h.last_write(DEFAULT)), ["pg-test-1"]);
    assert!(!fenced(&h, PRIMARY, "pg-test-1"));
    assert_eq!(h.status().dcs[0].leader_leaving, None);
}

#[test]
fn after_stepping_down_the_key_moves_and_the_new_holder_rises_on_one_check() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    let t0 = h.t0;
    set_all(
        &mut h,
        "pg-test-2",
        &result(HealthState::Down, false, 5, t0),
    );
    leader(&mut h, Some("pg-test-1"), 1.0);
    let t = h.at(1.0);
    h.update_dcs(
        LeaderView::Leader(Some("pg-test-1".into())),
        Some("pg-test-1 is asked to step down"),
        t,
    );
    assert!(active(&h.last_write(PRIMARY)).is_empty());
    // Patroni releases the key once PostgreSQL stopped, then pg-test-2 takes it.
    leader(&mut h, None, 2.0);
    assert!(active(&h.last_write(PRIMARY)).is_empty());
    let t = h.at(2.5);
    h.update_dcs(LeaderView::Leader(Some("pg-test-2".into())), None, t);
    assert!(active(&h.last_write(PRIMARY)).is_empty());
    assert!(h.rec.fence_awaiting());
    set_all(&mut h, "pg-test-2", &result(HealthState::Down, true, 6, t0));
    let t = h.at(2.6);
    h.rec.on_fence_poll(t);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-2"]);
    assert_eq!(h.status().dcs[0].leader_leaving, None);
}

#[test]
fn a_watched_holder_takes_writes_through_its_checkpoint_and_is_fenced_when_it_stops() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.rec.set_watch_stepdowns(true);
    leader(&mut h, Some("pg-test-1"), 1.0);
    h.dp().open(PRIMARY, "pg-test-1", 4);
    assert!(h.rec.stepdown_targets().is_empty(), "nothing to watch yet");

    // The request: the holder stays in (its PostgreSQL still takes writes) and is watched on its
    // REST API.
    key(&mut h, "pg-test-1", Some("switchover to pg-test-2"), 2.0);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1"]);
    assert!(!fenced(&h, PRIMARY, "pg-test-1"));
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 4, "no reset yet");
    let targets = h.rec.stepdown_targets();
    assert_eq!(targets.len(), 1, "{targets:?}");
    let srv = h
        .service(PRIMARY)
        .servers
        .iter()
        .find(|v| v.name == "pg-test-1")
        .cloned()
        .expect("pg-test-1");
    assert_eq!(
        (
            targets[0].cluster.as_str(),
            targets[0].holder.as_str(),
            targets[0].addr,
            targets[0].port,
            targets[0].tls
        ),
        (
            "pg-test",
            "pg-test-1",
            srv.addr,
            srv.check_port,
            srv.check_tls
        )
    );
    assert_eq!(
        h.status().dcs[0].leader_leaving.as_deref(),
        Some("switchover to pg-test-2")
    );

    // A report for another holder or cluster changes nothing.
    let t = h.at(2.2);
    h.rec
        .on_stepdown_stopping("pg-test", "pg-test-2", "stopping", t);
    h.rec
        .on_stepdown_stopping("pg-other", "pg-test-1", "stopping", t);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1"]);

    // Patroni reports its PostgreSQL stopping: fenced and reset, not watched any more.
    let t = h.at(2.5);
    h.rec.on_stepdown_stopping(
        "pg-test",
        "pg-test-1",
        "Patroni reports its PostgreSQL stopping",
        t,
    );
    assert!(active(&h.last_write(PRIMARY)).is_empty());
    assert!(fenced(&h, PRIMARY, "pg-test-1"));
    assert!(h.rec.dp.flushed(PRIMARY).contains(&"pg-test-1".to_owned()));
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 0);
    assert!(h.rec.stepdown_targets().is_empty());

    // Refused after all: back at once; a new request is watched anew.
    key(&mut h, "pg-test-1", None, 3.0);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1"]);
    key(&mut h, "pg-test-1", Some("failover to pg-test-3"), 4.0);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1"]);
    assert_eq!(h.rec.stepdown_targets().len(), 1);
    // The key moves before any report: the new tenure has nothing to watch.
    leader(&mut h, Some("pg-test-2"), 5.0);
    assert!(h.rec.stepdown_targets().is_empty());
    assert!(fenced(&h, PRIMARY, "pg-test-1"));
}

impl Harness {
    fn update_dcs(&mut self, view: LeaderView, leaving: Option<&str>, now: Instant) {
        self.rec.on_dcs(
            &DcsUpdate {
                cluster: "pg-test".into(),
                view,
                leaving: leaving.map(str::to_owned),
                endpoint: Some("http://198.18.0.5:2379".into()),
                revision: 7,
                confirmed: now,
            },
            now,
        );
    }
}
