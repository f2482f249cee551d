use super::*;

fn params() -> CounterParams {
    CounterParams {
        rise: 3,
        fall: 3,
        inter: Duration::from_secs(2),
        fastinter: Duration::from_secs(1),
        downinter: Duration::from_secs(5),
    }
}

const BURST: Option<Burst> = Some(Burst {
    interval: Duration::from_millis(100),
});

#[test]
fn burst_only_shortens_transitions_and_outages() {
    let t = Instant::now();
    let pace = Pace::default();
    let mut c = HealthCounter::new(params());
    // Settled UP (the first result decides): HAProxy's `inter`, burst or not.
    assert!(c.record(true, t).is_some());
    assert_eq!(next_interval(&c, &pace, BURST), Duration::from_secs(2));
    // One failure: transitional. HAProxy uses fastinter, burst uses its interval.
    assert!(c.record(false, t).is_none());
    assert_eq!(next_interval(&c, &pace, None), Duration::from_secs(1));
    assert_eq!(next_interval(&c, &pace, BURST), Duration::from_millis(100));
    // fall still needs the configured number of failures.
    assert!(c.record(false, t).is_none());
    assert_eq!(c.record(false, t).map(|tr| tr.to), Some(HealthState::Down));
    // Settled DOWN: downinter, unless the service is in an outage.
    assert_eq!(next_interval(&c, &pace, BURST), Duration::from_secs(5));
    pace.hurry.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(next_interval(&c, &pace, BURST), Duration::from_millis(100));
    assert_eq!(
        next_interval(&c, &pace, None),
        Duration::from_secs(5),
        "no burst: HAProxy exactly"
    );
    // rise still needs three passes.
    assert!(c.record(true, t).is_none());
    assert!(c.record(true, t).is_none());
    assert_eq!(c.record(true, t).map(|tr| tr.to), Some(HealthState::Up));
    // Back at full health, an outage flag no longer shortens anything.
    assert_eq!(next_interval(&c, &pace, BURST), Duration::from_secs(2));
}

#[test]
fn a_peer_starting_to_change_hurries_the_others_for_a_while() {
    let t = Instant::now();
    let (a, b) = (Arc::new(Pace::default()), Arc::new(Pace::default()));
    if let Ok(mut p) = a.peers.lock() {
        p.push(Arc::downgrade(&b));
    }
    let mut down = HealthCounter::new(params());
    assert!(down.record(false, t).is_some());
    assert_eq!(next_interval(&down, &b, BURST), Duration::from_secs(5));
    a.stir_peers();
    assert_eq!(next_interval(&down, &b, BURST), Duration::from_millis(100));
    // The stirring peer itself is not hurried by its own change.
    assert_eq!(next_interval(&down, &a, BURST), Duration::from_secs(5));
    // A settled-UP peer keeps `inter`.
    let mut up = HealthCounter::new(params());
    assert!(up.record(true, t).is_some());
    assert_eq!(next_interval(&up, &b, BURST), Duration::from_secs(2));
}
