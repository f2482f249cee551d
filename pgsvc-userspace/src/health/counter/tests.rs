use super::*;

const INTER: Duration = Duration::from_millis(2000);
const FAST: Duration = Duration::from_millis(1000);
const DOWNI: Duration = Duration::from_millis(5000);

fn params(rise: u32, fall: u32) -> CounterParams {
    CounterParams {
        rise,
        fall,
        inter: INTER,
        fastinter: FAST,
        downinter: DOWNI,
    }
}

/// One scenario: `checks` is a run of `P` (pass) and `F` (fail); after each check the state
/// (`U`/`D`), the raw health value, the interval class (`I` inter, `F` fastinter, `D` downinter)
/// and whether a transition was reported (`*`, else `.`) must match.
struct Case {
    name: &'static str,
    rise: u32,
    fall: u32,
    checks: &'static str,
    states: &'static str,
    health: &'static [u32],
    intervals: &'static str,
    transitions: &'static str,
}

const CASES: &[Case] = &[
    // pgsvc start-up rule (DESIGN.md §3, a deliberate deviation from HAProxy's "start UP at
    // health=rise"): the first pass decides UP at full health, at once.
    Case {
        name: "startup pass is UP at once",
        rise: 3,
        fall: 3,
        checks: "P P",
        states: "U U",
        health: &[5, 5],
        intervals: "I I",
        transitions: "* .",
    },
    // Same rule: the first failure decides DOWN at health 0, so downinter applies.
    Case {
        name: "startup fail is DOWN at once",
        rise: 3,
        fall: 3,
        checks: "F F",
        states: "D D",
        health: &[0, 0],
        intervals: "D D",
        transitions: "* .",
    },
    // HAProxy §5.2 "fall <count>": dead after <count> consecutive failed checks from full health;
    // check.c: each failure decrements health, and below `rise` it resets to 0 (DOWN).
    // srv_getinter: fastinter while in a transitional state, downinter at DOWN/0.
    Case {
        name: "fall 3 from full health",
        rise: 3,
        fall: 3,
        checks: "P F F F",
        states: "U U U D",
        health: &[5, 4, 3, 0],
        intervals: "I F F D",
        transitions: "* . . *",
    },
    // HAProxy §5.2 "rise <count>": operational after <count> consecutive successful checks;
    // check.c: reaching `rise` jumps health to rise+fall-1 (full), so inter applies again.
    Case {
        name: "rise 3 from DOWN",
        rise: 3,
        fall: 3,
        checks: "F P P P",
        states: "D D D U",
        health: &[0, 1, 2, 5],
        intervals: "D F F I",
        transitions: "* . . *",
    },
    // check.c: a success raises health by one and, as soon as it is at or above `rise`, jumps it
    // to full — so while UP a single pass restores full health (and inter) after any failures.
    Case {
        name: "one pass while UP restores full health",
        rise: 3,
        fall: 3,
        checks: "P F P F F P P",
        states: "U U U U U U U",
        health: &[5, 4, 5, 4, 3, 5, 5],
        intervals: "I F I F F I I",
        transitions: "* . . . . . .",
    },
    // check.c: a failure while DOWN below `rise` resets the count to 0: rise needs consecutive
    // passes (§5.2 "rise": "consecutive successful health checks").
    Case {
        name: "flapping while DOWN never rises",
        rise: 3,
        fall: 3,
        checks: "F P P F P P F",
        states: "D D D D D D D",
        health: &[0, 1, 2, 0, 1, 2, 0],
        intervals: "D F F D F F D",
        transitions: "* . . . . . .",
    },
    // §5.2 "fall": failures must be consecutive; an interleaved pass restores one step, so an
    // alternating server with fall 2 stays UP.
    Case {
        name: "flapping while UP with fall 2 stays UP",
        rise: 2,
        fall: 2,
        checks: "P F P F P F",
        states: "U U U U U U",
        health: &[3, 2, 3, 2, 3, 2],
        intervals: "I F I F I F",
        transitions: "* . . . . .",
    },
    // Full cycle UP → DOWN → UP → DOWN: each crossing reported exactly once.
    Case {
        name: "full flap cycle",
        rise: 2,
        fall: 2,
        checks: "P F F P P F F",
        states: "U U D D U U D",
        health: &[3, 2, 0, 1, 3, 2, 0],
        intervals: "I F D F I F D",
        transitions: "* . * . * . *",
    },
    // rise 1 / fall 1: health is 0..=1; one result flips the state (§5.2 rise/fall with count 1).
    Case {
        name: "rise 1 fall 1 flips on every result",
        rise: 1,
        fall: 1,
        checks: "P F P F",
        states: "U D U D",
        health: &[1, 0, 1, 0],
        intervals: "I D I D",
        transitions: "* * * *",
    },
    // fall 1 with rise 3: "up, but will fall down at first failure" range; max health = rise.
    Case {
        name: "fall 1 drops on the first failure",
        rise: 3,
        fall: 1,
        checks: "P F P P P",
        states: "U D D D U",
        health: &[3, 0, 1, 2, 3],
        intervals: "I D F F I",
        transitions: "* * . . *",
    },
];

fn interval_class(c: char) -> Duration {
    match c {
        'I' => INTER,
        'F' => FAST,
        'D' => DOWNI,
        other => panic!("bad interval class {other}"),
    }
}

#[test]
fn haproxy_counter_table() {
    let t0 = Instant::now();
    for case in CASES {
        let mut counter = HealthCounter::new(params(case.rise, case.fall));
        let checks: Vec<&str> = case.checks.split(' ').collect();
        let states: Vec<&str> = case.states.split(' ').collect();
        let intervals: Vec<&str> = case.intervals.split(' ').collect();
        let transitions: Vec<&str> = case.transitions.split(' ').collect();
        assert_eq!(checks.len(), states.len(), "{}: table shape", case.name);
        assert_eq!(
            checks.len(),
            case.health.len(),
            "{}: table shape",
            case.name
        );
        assert_eq!(checks.len(), intervals.len(), "{}: table shape", case.name);
        assert_eq!(
            checks.len(),
            transitions.len(),
            "{}: table shape",
            case.name
        );
        for (i, check) in checks.iter().enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            let prev = counter.state();
            let tr = counter.record(*check == "P", now);
            let want_state = if states[i] == "U" {
                HealthState::Up
            } else {
                HealthState::Down
            };
            assert_eq!(counter.state(), want_state, "{} step {i}: state", case.name);
            assert_eq!(
                counter.health(),
                case.health[i],
                "{} step {i}: health",
                case.name
            );
            let want_inter = interval_class(intervals[i].chars().next().unwrap_or('?'));
            assert_eq!(
                counter.interval(),
                want_inter,
                "{} step {i}: interval",
                case.name
            );
            match (transitions[i], tr) {
                ("*", Some(t)) => {
                    assert_eq!(t.from, prev, "{} step {i}: from", case.name);
                    assert_eq!(t.to, want_state, "{} step {i}: to", case.name);
                    assert_eq!(t.at, now, "{} step {i}: at", case.name);
                    assert_eq!(t.is_startup(), i == 0, "{} step {i}: startup", case.name);
                    assert_eq!(counter.last_change(), Some(now));
                }
                (".", None) => {}
                (want, got) => {
                    panic!("{} step {i}: transition want {want} got {got:?}", case.name)
                }
            }
        }
    }
}

#[test]
fn detection_time_matches_haproxy_formula() {
    // Pigsty's RTO doc / HAProxy: DOWN is detected within inter + (fall-1)·fastinter after the
    // last good check, UP within downinter + (rise-1)·fastinter. Sum the intervals the counter asks for.
    let mut c = HealthCounter::new(params(3, 3));
    let t0 = Instant::now();
    let mut now = t0;
    assert!(c.record(true, now).is_some());
    let mut waited = Duration::ZERO;
    loop {
        let step = c.interval();
        waited += step;
        now += step;
        if c.record(false, now).is_some() {
            break;
        }
        assert!(waited < Duration::from_secs(60), "never went DOWN");
    }
    assert_eq!(waited, INTER + 2 * FAST);
    let mut waited = Duration::ZERO;
    loop {
        let step = c.interval();
        waited += step;
        now += step;
        if c.record(true, now).is_some() {
            break;
        }
        assert!(waited < Duration::from_secs(60), "never came UP");
    }
    assert_eq!(waited, DOWNI + 2 * FAST);
}

#[test]
fn unset_fastinter_and_downinter_fall_back_to_inter() {
    // HAProxy §5.2 "fastinter"/"downinter": "If not set, the standard 'inter' value is used".
    let mut c = HealthCounter::new(CounterParams {
        fastinter: Duration::ZERO,
        downinter: Duration::ZERO,
        ..params(2, 2)
    });
    let t0 = Instant::now();
    c.record(true, t0);
    c.record(false, t0);
    assert_eq!(c.interval(), INTER, "transitional state");
    c.record(false, t0);
    assert_eq!(c.state(), HealthState::Down);
    assert_eq!(c.interval(), INTER, "down state");
}

#[test]
fn statistics_follow_haproxy_counters() {
    let mut c = HealthCounter::new(params(2, 2));
    let t0 = Instant::now();
    // pass, fail, fail (DOWN), fail (ignored by chkfail: health already 0), pass, pass (UP),
    // fail, fail (DOWN).
    for passed in [true, false, false, false, true, true, false, false] {
        c.record(passed, t0);
    }
    assert_eq!(c.checks_total(), 8);
    // chkfail counts failures while health > 0 only: 2 + 2.
    assert_eq!(c.failures_total(), 4);
    // chkdown: UP → DOWN twice; the start-up decision is not an UP→DOWN.
    assert_eq!(c.up_down_total(), 2);

    let mut d = HealthCounter::new(params(2, 2));
    d.record(false, t0);
    assert_eq!(
        d.up_down_total(),
        0,
        "start-up DOWN is not an UP→DOWN transition"
    );
    assert_eq!(d.failures_total(), 1);
}

#[test]
fn up_at_startup_only_for_the_first_up_period() {
    let mut c = HealthCounter::new(params(1, 1));
    let t0 = Instant::now();
    c.record(true, t0);
    assert!(c.up_at_startup());
    c.record(false, t0 + Duration::from_secs(1));
    assert!(!c.up_at_startup());
    c.record(true, t0 + Duration::from_secs(2));
    assert!(
        !c.up_at_startup(),
        "a DOWN→UP transition is not start-up: slowstart applies"
    );
}

#[test]
fn status_string_like_haproxy() {
    let mut c = HealthCounter::new(params(3, 3));
    let t0 = Instant::now();
    c.record(true, t0);
    assert_eq!(c.status_string(), "3/3 UP");
    c.record(false, t0);
    assert_eq!(c.status_string(), "2/3 UP");
    c.record(false, t0);
    c.record(false, t0);
    assert_eq!(c.status_string(), "0/3 DOWN");
    c.record(true, t0);
    assert_eq!(c.status_string(), "1/3 DOWN");
}

#[test]
fn zero_rise_and_fall_are_treated_as_one() {
    let mut c = HealthCounter::new(params(0, 0));
    let t0 = Instant::now();
    assert_eq!(c.params().max_health(), 1);
    c.record(true, t0);
    assert_eq!((c.state(), c.health()), (HealthState::Up, 1));
    c.record(false, t0);
    assert_eq!((c.state(), c.health()), (HealthState::Down, 0));
}
