//! A new leader-key holder waits for its promotion ([`crate::agent::promotion`]) before write
//! services send it connections, through the reconciler over the fake datapath.

use super::fence::*;
use super::*;

/// pg-test-1 the primary, the replicas failing /primary; promotions watched when `watch`.
fn replicas_down(watch: bool) -> Harness {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.rec.set_watch_promotions(watch);
    let t0 = h.t0;
    for replica in ["pg-test-2", "pg-test-3"] {
        set_all(&mut h, replica, &result(HealthState::Down, false, 5, t0));
    }
    let t = h.at(0.5);
    h.rec.rebalance_all(t);
    h
}

/// pg-test-2's latest /primary check passed (its 6th).
fn passes(h: &mut Harness) {
    let t0 = h.t0;
    set_all(h, "pg-test-2", &result(HealthState::Down, true, 6, t0));
}

#[test]
fn a_new_holder_is_kept_out_until_its_promotion_is_reported() {
    let mut h = replicas_down(true);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1"]);
    assert!(h.rec.promotion_targets().is_empty(), "nothing to wait for");

    // The key moves to pg-test-2; its /primary passes at once (Patroni answers 200 from the key
    // on), but its PostgreSQL is still in recovery: kept out, its role watched.
    leader(&mut h, Some("pg-test-2"), 1.0);
    passes(&mut h);
    let t = h.at(1.05);
    h.rec.on_fence_poll(t);
    assert!(
        active(&h.last_write(PRIMARY)).is_empty(),
        "admitted before its promotion"
    );
    let targets = h.rec.promotion_targets();
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(
        (targets[0].cluster.as_str(), targets[0].holder.as_str()),
        ("pg-test", "pg-test-2")
    );

    // A report for another holder or cluster changes nothing.
    let t = h.at(1.06);
    h.rec.on_promoted("pg-test", "pg-test-3", None, t);
    h.rec.on_promoted("pg-other", "pg-test-2", None, t);
    assert!(active(&h.last_write(PRIMARY)).is_empty());

    // Promoted: in at once, on the check that already passed.
    let t = h.at(1.08);
    h.rec.on_promoted("pg-test", "pg-test-2", None, t);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-2"]);
    assert_eq!(active(&h.last_write(DEFAULT)), ["pg-test-2"]);
    assert!(h.rec.promotion_targets().is_empty());
    // Read services were never affected.
    assert!(!active(&h.last_write(REPLICA)).is_empty());
}

#[test]
fn an_unreadable_promotion_leaves_the_decision_to_the_check() {
    let mut h = replicas_down(true);
    leader(&mut h, Some("pg-test-2"), 1.0);
    let t = h.at(1.1);
    h.rec.on_promoted(
        "pg-test",
        "pg-test-2",
        Some("GET /patroni reports no role"),
        t,
    );
    assert!(h.rec.promotion_targets().is_empty());
    // No pass yet: still out.
    assert!(active(&h.last_write(PRIMARY)).is_empty());
    passes(&mut h);
    let t = h.at(1.2);
    h.rec.on_fence_poll(t);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-2"]);
}

#[test]
fn a_holder_up_when_the_key_arrives_or_unwatched_is_not_held_back() {
    // Without the watch (tests, or an agent that cannot run it) the check alone decides.
    let mut h = replicas_down(false);
    leader(&mut h, Some("pg-test-2"), 1.0);
    passes(&mut h);
    let t = h.at(1.1);
    h.rec.on_fence_poll(t);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-2"]);
    assert!(h.rec.promotion_targets().is_empty());

    // With the watch: the primary already UP when the key names it (agent start, a re-read).
    let mut h = replicas_down(true);
    leader(&mut h, Some("pg-test-1"), 1.0);
    assert_eq!(active(&h.last_write(PRIMARY)), ["pg-test-1"]);
    assert!(h.rec.promotion_targets().is_empty());
}
