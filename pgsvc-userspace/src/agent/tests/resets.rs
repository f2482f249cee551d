//! Active resets decided by the reconciler, over the fake datapath: which servers' sessions are
//! reset at once, for which reason, before the write that marks them down; flows to an address
//! that left the node.

use super::*;

fn resets_of(h: &Harness) -> Vec<(String, String, String, u64)> {
    h.status()
        .sessions_reset
        .into_iter()
        .map(|r| (r.service, r.server, r.reason, r.sessions))
        .collect()
}

fn position(calls: &[Call], f: impl Fn(&Call) -> bool) -> usize {
    calls
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("call not found in {calls:?}"))
}

#[test]
fn a_server_marked_down_with_shutdown_sessions_is_reset_before_it_is_written_down() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.dp().open(PRIMARY, "pg-test-1", 3);
    h.dp().open(PRIMARY, "pg-test-2", 2);
    let writes = h.rec.dp.writes(PRIMARY).len();
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        5.0,
    );
    assert_eq!(
        h.rec.dp.resets(),
        [(PRIMARY.to_owned(), "pg-test-1".to_owned(), 3)]
    );
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-2"), 2);
    // The reset comes first: once the server is written down its flows are gone.
    let calls = &h.rec.dp.calls;
    let reset = position(calls, |c| matches!(c, Call::Reset { .. }));
    let down = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, Call::SetBackends { service, .. } if service == PRIMARY))
        .nth(writes)
        .map(|(i, _)| i)
        .expect("the write marking pg-test-1 down");
    assert!(reset < down, "reset at {reset}, write at {down}");
    assert_eq!(
        resets_of(&h),
        [(PRIMARY.into(), "pg-test-1".into(), "down".into(), 3)]
    );
}

#[test]
fn without_shutdown_sessions_a_down_server_keeps_its_sessions() {
    let mut h = started(plan(&inventory(NO_SHUTDOWN, "")), FakeDatapath::new());
    h.ready();
    h.dp().open(PRIMARY, "pg-test-1", 3);
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        5.0,
    );
    assert!(h.rec.dp.resets().is_empty());
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 3);
    assert!(resets_of(&h).is_empty());
}

#[test]
fn a_fenced_member_is_reset_even_without_shutdown_sessions_and_read_services_are_not() {
    let mut h = started(plan(&inventory(NO_SHUTDOWN, "")), FakeDatapath::new());
    h.ready();
    h.dp().open(PRIMARY, "pg-test-1", 4);
    h.dp().open(REPLICA, "pg-test-1", 2);
    let t = h.at(1.0);
    h.rec.on_leader("pg-test", Some("pg-test-2".into()), t);
    assert_eq!(
        h.rec.dp.resets(),
        [(PRIMARY.to_owned(), "pg-test-1".to_owned(), 4)]
    );
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 0);
    assert_eq!(h.rec.dp.conns(REPLICA, "pg-test-1"), 2);
    assert_eq!(
        resets_of(&h),
        [(PRIMARY.into(), "pg-test-1".into(), "fenced".into(), 4)]
    );
    // The same holder again: nothing more.
    let t = h.at(2.0);
    h.rec.on_leader("pg-test", Some("pg-test-2".into()), t);
    assert_eq!(h.rec.dp.resets().len(), 1);
}

#[test]
fn flows_to_an_address_that_left_the_node_are_reset() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    let node = Ipv4Addr::new(198, 18, 0, 11);
    let vip = Ipv4Addr::new(198, 18, 0, 100);
    let mut scope = crate::datapath::LocalScope {
        if_mac: [2, 0, 0, 0, 0, 1],
        vip_mac: None,
        addrs: vec![node],
    };
    h.rec.on_local_scope(&scope);
    // The VIP arrives: nothing to reset.
    scope.addrs.push(vip);
    h.rec.on_local_scope(&scope);
    h.dp().open_at(vip, PRIMARY, "pg-test-1", 2);
    h.dp().open_at(node, PRIMARY, "pg-test-1", 1);
    assert_eq!(h.rec.dp.count(Op::Reset), 0);
    // The VIP leaves with the leader: its flows are reset, the node address's are not.
    scope.addrs.retain(|a| *a != vip);
    h.rec.on_local_scope(&scope);
    assert!(h.rec.dp.calls.contains(&Call::ResetAddr { addr: vip }));
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 1);
    let t = h.at(3.0);
    h.rec.on_tick(1, t);
    assert_eq!(
        resets_of(&h),
        [(PRIMARY.into(), "pg-test-1".into(), "address_left".into(), 2)]
    );
    // Unchanged addresses: no more resets.
    let n = h.rec.dp.count(Op::Reset);
    h.rec.on_local_scope(&scope);
    assert_eq!(h.rec.dp.count(Op::Reset), n);
}

#[test]
fn a_failed_reset_is_logged_and_the_server_is_still_written_down() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.dp().open(PRIMARY, "pg-test-1", 3);
    h.dp().fail(Op::Reset, PRIMARY);
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        5.0,
    );
    assert!(!h.last_write(PRIMARY)[0].up);
    assert!(resets_of(&h).is_empty());
}
