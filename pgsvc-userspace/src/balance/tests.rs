//! Balance tests: HAProxy's active-set, backup and slowstart rules on small tables.

use super::*;
use crate::plan::model::{Balance, BindAddr, ServerOptions};

const SS: Duration = Duration::from_secs(30);

/// A server in a table: name, backup flag, weight.
type Srv = (&'static str, bool, u32);

fn service(servers: &[Srv], allbackups: bool) -> ServicePlan {
    ServicePlan {
        name: "pg-test-replica".to_owned(),
        short_name: "replica".to_owned(),
        cluster: "pg-test".to_owned(),
        ip: BindAddr::Any,
        port: 5434,
        dest: "default".to_owned(),
        check: "/read-only".to_owned(),
        maxconn: 5000,
        balance: Balance::RoundRobin,
        options: ServerOptions {
            slowstart: SS,
            maxconn: 3000,
            ..ServerOptions::default()
        },
        options_line: String::new(),
        servers: servers
            .iter()
            .enumerate()
            .map(|(i, (name, backup, weight))| ServerPlan {
                name: (*name).to_owned(),
                addr: Ipv4Addr::new(198, 18, 0, 11 + u8::try_from(i).unwrap_or(0)),
                port: 6432,
                check_port: 8008,
                check_tls: false,
                weight: *weight,
                backup: *backup,
            })
            .collect(),
        allbackups,
    }
}

/// Health letters per server: `U` up since start-up, `D` down, `?` unknown.
fn statuses(t0: Instant, letters: &str) -> Vec<ServerStatus> {
    letters
        .chars()
        .map(|c| match c {
            'U' => ServerStatus::Up {
                since: t0,
                at_startup: true,
            },
            'D' => ServerStatus::Down,
            _ => ServerStatus::Unknown,
        })
        .collect()
}

fn run(svc: &ServicePlan, st: &[ServerStatus], now: Instant) -> BalancedService {
    balance_service(
        svc,
        |server| {
            let i = svc
                .servers
                .iter()
                .position(|s| s.name == server.name)
                .unwrap_or(usize::MAX);
            st.get(i).copied().unwrap_or(ServerStatus::Unknown)
        },
        now,
    )
}

fn names(b: &BalancedService, pick: impl Fn(&BackendSpec) -> bool) -> Vec<&str> {
    b.backends
        .iter()
        .filter(|x| pick(x))
        .map(|x| x.name.as_str())
        .collect()
}

struct Case {
    name: &'static str,
    servers: &'static [Srv],
    allbackups: bool,
    health: &'static str,
    active: &'static [&'static str],
    up: &'static [&'static str],
    counts: (u32, u32),
    using_backups: bool,
}

const P: Srv = ("p", false, 100);
const R1: Srv = ("r1", false, 100);
const R2: Srv = ("r2", false, 100);
const B1: Srv = ("b1", true, 100);
const B2: Srv = ("b2", true, 100);
const R0: Srv = ("r0", false, 0);
const B0: Srv = ("b0", true, 0);

const CASES: &[Case] = &[
    // HAProxy §5.2 "backup": backups are only used when no non-backup server is usable.
    Case {
        name: "normal servers up, backup idle",
        servers: &[R1, R2, B1],
        allbackups: false,
        health: "UUU",
        active: &["r1", "r2"],
        up: &["r1", "r2", "b1"],
        counts: (2, 1),
        using_backups: false,
    },
    // Same rule: one normal server is enough to keep backups out.
    Case {
        name: "one normal server left",
        servers: &[R1, R2, B1],
        allbackups: false,
        health: "DUU",
        active: &["r2"],
        up: &["r2", "b1"],
        counts: (1, 1),
        using_backups: false,
    },
    // §5.2 "backup" + backend.c `recount_servers`: with every normal server down the first usable
    // backup in declaration order takes all the traffic.
    Case {
        name: "backup activation picks the first backup",
        servers: &[R1, B1, B2],
        allbackups: false,
        health: "DUU",
        active: &["b1"],
        up: &["b1", "b2"],
        counts: (0, 2),
        using_backups: true,
    },
    // Same rule: a DOWN first backup is skipped for the next usable one.
    Case {
        name: "first usable backup, not first declared",
        servers: &[R1, B1, B2],
        allbackups: false,
        health: "DDU",
        active: &["b2"],
        up: &["b2"],
        counts: (0, 1),
        using_backups: true,
    },
    // §4.2 "option allbackups": all usable backups share the load when no normal server is up.
    Case {
        name: "allbackups uses every usable backup",
        servers: &[R1, B1, B2],
        allbackups: true,
        health: "DUU",
        active: &["b1", "b2"],
        up: &["b1", "b2"],
        counts: (0, 2),
        using_backups: true,
    },
    // allbackups changes nothing while a normal server is usable.
    Case {
        name: "allbackups idle while a normal server is up",
        servers: &[R1, B1, B2],
        allbackups: true,
        health: "UUU",
        active: &["r1"],
        up: &["r1", "b1", "b2"],
        counts: (1, 2),
        using_backups: false,
    },
    // Backup deactivation: when a normal server is usable again, new flows leave the backup. It
    // stays `up`, so flows already on it survive (no `on-marked-up shutdown-backup-sessions`).
    Case {
        name: "backup deactivates when a normal server returns",
        servers: &[P, B1],
        allbackups: false,
        health: "UU",
        active: &["p"],
        up: &["p", "b1"],
        counts: (1, 1),
        using_backups: false,
    },
    // §5.2 "weight": weight 0 is never picked, and (server.c `srv_willbe_usable`) does not count
    // as usable — so backups take over from an UP weight-0 normal server.
    Case {
        name: "weight 0 normal server does not block backups",
        servers: &[R0, B1],
        allbackups: false,
        health: "UU",
        active: &["b1"],
        up: &["r0", "b1"],
        counts: (0, 1),
        using_backups: true,
    },
    // Same rule for backups: a weight-0 backup is skipped for the next usable one.
    Case {
        name: "weight 0 backup is skipped",
        servers: &[R1, B0, B1],
        allbackups: false,
        health: "DUU",
        active: &["b1"],
        up: &["b0", "b1"],
        counts: (0, 1),
        using_backups: true,
    },
    // Nothing usable: empty active set (HAProxy: "has no server available!").
    Case {
        name: "nothing usable",
        servers: &[P, B1],
        allbackups: false,
        health: "DD",
        active: &[],
        up: &[],
        counts: (0, 0),
        using_backups: true,
    },
    // pgsvc start-up rule: before its first result a server is not UP.
    Case {
        name: "unknown is not up",
        servers: &[R1, R2],
        allbackups: false,
        health: "?U",
        active: &["r2"],
        up: &["r2"],
        counts: (1, 0),
        using_backups: false,
    },
];

#[test]
fn active_set_table() {
    let t0 = Instant::now();
    for case in CASES {
        let svc = service(case.servers, case.allbackups);
        let st = statuses(t0, case.health);
        let b = run(&svc, &st, t0 + Duration::from_secs(1));
        assert_eq!(
            names(&b, |x| x.active),
            case.active,
            "{}: active",
            case.name
        );
        assert_eq!(names(&b, |x| x.up), case.up, "{}: up", case.name);
        assert_eq!(
            (b.counts.active, b.counts.backup),
            case.counts,
            "{}: counts",
            case.name
        );
        assert_eq!(
            b.using_backups, case.using_backups,
            "{}: using backups",
            case.name
        );
        assert_eq!(
            b.pending,
            case.health.contains('?'),
            "{}: pending",
            case.name
        );
        assert_eq!(
            b.backends.len(),
            case.servers.len(),
            "{}: one spec per server",
            case.name
        );
        for spec in &b.backends {
            assert!(
                !spec.active || spec.weight > 0,
                "{}: active with weight 0",
                case.name
            );
        }
    }
}

#[test]
fn backend_spec_carries_plan_fields() {
    let t0 = Instant::now();
    let svc = service(&[P, R0], false);
    let b = run(&svc, &statuses(t0, "UU"), t0);
    assert_eq!(
        b.backends[0],
        BackendSpec {
            name: "p".to_owned(),
            addr: Ipv4Addr::new(198, 18, 0, 11),
            port: 6432,
            up: true,
            active: true,
            weight: 100,
            maxconn: 3000,
        }
    );
    assert_eq!(b.backends[1].weight, 0, "weight 0 stays 0");
    assert!(b.backends[1].up && !b.backends[1].active);
}

#[test]
fn slowstart_ramp_points() {
    // HAProxy §5.2 "slowstart": weight grows linearly from about 1 to 100% over the period;
    // queue.c ramps maxconn as MAX(1, maxconn·t/slowstart). Points for weight 100, maxconn 3000,
    // slowstart 30s.
    let points: &[(u64, u32, u32)] = &[
        (0, 1, 1),           // starts at the minimal step, never 0
        (1_000, 4, 100),     // ceil(100/30) ; 3000/30
        (7_500, 25, 750),    // a quarter
        (15_000, 50, 1500),  // half
        (29_999, 100, 2999), // just before the end
        (30_000, 100, 3000), // full throttle at the end
        (90_000, 100, 3000), // and after
    ];
    let t0 = Instant::now();
    let svc = service(&[P], false);
    for (ms, weight, maxconn) in points {
        let st = [ServerStatus::Up {
            since: t0,
            at_startup: false,
        }];
        let b = run(&svc, &st, t0 + Duration::from_millis(*ms));
        assert_eq!(b.backends[0].weight, *weight, "weight at {ms}ms");
        assert_eq!(b.backends[0].maxconn, *maxconn, "maxconn at {ms}ms");
        assert!(b.backends[0].active, "ramping server is active at {ms}ms");
    }
}

#[test]
fn no_slowstart_at_startup_or_when_unset() {
    // Reference §3: slowstart applies "only after a failure, never at process start".
    let t0 = Instant::now();
    let svc = service(&[P], false);
    let st = [ServerStatus::Up {
        since: t0,
        at_startup: true,
    }];
    let b = run(&svc, &st, t0);
    assert_eq!((b.backends[0].weight, b.backends[0].maxconn), (100, 3000));
    assert_eq!(b.next_step, None);

    let mut svc = service(&[P], false);
    svc.options.slowstart = Duration::ZERO;
    let st = [ServerStatus::Up {
        since: t0,
        at_startup: false,
    }];
    let b = run(&svc, &st, t0);
    assert_eq!((b.backends[0].weight, b.backends[0].maxconn), (100, 3000));
    assert_eq!(b.next_step, None);
}

#[test]
fn slowstart_keeps_weight_zero_and_unlimited_maxconn() {
    assert_eq!(slowstart_weight(0, Duration::from_secs(10), SS), 0);
    assert_eq!(slowstart_maxconn(0, Duration::from_secs(10), SS), 0);
    assert_eq!(slowstart_weight(1, Duration::ZERO, SS), 1);
    assert_eq!(slowstart_weight(256, Duration::from_secs(15), SS), 128);
}

#[test]
fn next_step_schedule() {
    let t0 = Instant::now();
    // 30s / 20 = 1.5s steps.
    let step = Duration::from_millis(1500);
    assert_eq!(next_slowstart_step(t0, SS, t0), Some(t0 + step));
    assert_eq!(
        next_slowstart_step(t0, SS, t0 + Duration::from_millis(1600)),
        Some(t0 + 2 * step)
    );
    assert_eq!(
        next_slowstart_step(t0, SS, t0 + Duration::from_millis(29_000)),
        Some(t0 + SS),
        "the last step lands on the end"
    );
    assert_eq!(next_slowstart_step(t0, SS, t0 + SS), None);
    // Short periods step at least 1s apart (HAProxy: MAX(1000, slowstart/20) ms).
    let short = Duration::from_secs(5);
    assert_eq!(
        next_slowstart_step(t0, short, t0),
        Some(t0 + Duration::from_secs(1))
    );
    assert_eq!(next_slowstart_step(t0, Duration::ZERO, t0), None);
}

#[test]
fn next_step_is_the_earliest_ramping_server() {
    let t0 = Instant::now();
    let svc = service(&[R1, R2], false);
    let st = [
        ServerStatus::Up {
            since: t0,
            at_startup: false,
        },
        ServerStatus::Up {
            since: t0 + Duration::from_millis(1000),
            at_startup: false,
        },
    ];
    let now = t0 + Duration::from_millis(2000);
    let b = run(&svc, &st, now);
    // r1 next at 3.0s, r2 next at 1.0 + 1.5·1 ... = 2.5s.
    assert_eq!(b.next_step, Some(t0 + Duration::from_millis(2500)));
    let later = run(&svc, &st, t0 + Duration::from_secs(40));
    assert_eq!(later.next_step, None);
}

#[test]
fn shutdown_sessions_table() {
    let spec = |name: &str, up: bool| BackendSpec {
        name: name.to_owned(),
        addr: Ipv4Addr::new(198, 18, 0, 11),
        port: 6432,
        up,
        active: up,
        weight: 100,
        maxconn: 3000,
    };
    // (name, previous, next, shutdown-sessions, flows killed)
    type Case<'a> = (
        &'a str,
        Vec<BackendSpec>,
        Vec<BackendSpec>,
        bool,
        Vec<&'a str>,
    );
    let cases: &[Case] = &[
        // §5.2 "on-marked-down shutdown-sessions": sessions are killed when the server goes DOWN.
        (
            "down with option",
            vec![spec("a", true)],
            vec![spec("a", false)],
            true,
            vec!["a"],
        ),
        // Without the option HAProxy leaves established sessions alone.
        (
            "down without option",
            vec![spec("a", true)],
            vec![spec("a", false)],
            false,
            vec![],
        ),
        // DESIGN.md §3: a server leaving the plan loses its flows either way (its slot is gone).
        (
            "removed from plan",
            vec![spec("a", true), spec("b", true)],
            vec![spec("b", true)],
            false,
            vec!["a"],
        ),
        // Coming UP, or a backup merely going inactive, kills nothing (no fail-back kill).
        (
            "up or inactive",
            vec![spec("a", false), spec("b", true)],
            vec![
                spec("a", true),
                BackendSpec {
                    active: false,
                    ..spec("b", true)
                },
            ],
            true,
            vec![],
        ),
        // Already DOWN stays DOWN: nothing new to kill.
        (
            "still down",
            vec![spec("a", false)],
            vec![spec("a", false)],
            true,
            vec![],
        ),
    ];
    for (name, prev, next, opt, want) in cases {
        assert_eq!(&sessions_to_shutdown(prev, next, *opt), want, "{name}");
    }
}

#[test]
fn down_transition_reports_down_and_inactive() {
    // What the datapath acts on for shutdown-sessions: the DOWN server is neither up nor active,
    // whatever the option says.
    let t0 = Instant::now();
    for shutdown in [true, false] {
        let mut svc = service(&[P, B1], false);
        svc.options.shutdown_sessions = shutdown;
        let before = run(&svc, &statuses(t0, "UU"), t0);
        let after = run(&svc, &statuses(t0, "DU"), t0);
        assert!(before.backends[0].up && before.backends[0].active);
        assert!(!after.backends[0].up && !after.backends[0].active);
        let killed = sessions_to_shutdown(&before.backends, &after.backends, shutdown);
        assert_eq!(killed.is_empty(), !shutdown, "shutdown-sessions {shutdown}");
    }
}

/// `admin` letters per server: `R` ready, `D` drain, `M` maint.
fn run_admin(svc: &ServicePlan, st: &[ServerStatus], admin: &str, now: Instant) -> BalancedService {
    let admins: Vec<AdminState> = admin
        .chars()
        .map(|c| match c {
            'D' => AdminState::Drain,
            'M' => AdminState::Maint,
            _ => AdminState::Ready,
        })
        .collect();
    let index = |server: &ServerPlan| {
        svc.servers
            .iter()
            .position(|s| s.name == server.name)
            .unwrap_or(usize::MAX)
    };
    balance_service_with(
        svc,
        |server| {
            st.get(index(server))
                .copied()
                .unwrap_or(ServerStatus::Unknown)
        },
        |server| admins.get(index(server)).copied().unwrap_or_default(),
        now,
    )
}

#[test]
fn drain_is_weight_zero_and_maint_leaves_the_set() {
    let t0 = Instant::now();
    let svc = service(&[R1, R2, B1, B2], false);
    let st = statuses(t0, "UUUU");
    // r1 drained: out of the active set, still up (flows stay), weight 0.
    let b = run_admin(&svc, &st, "DRRR", t0);
    assert_eq!(names(&b, |x| x.active), ["r2"]);
    let r1 = &b.backends[0];
    assert!(r1.up && !r1.active && r1.weight == 0, "{r1:?}");
    assert_eq!(
        b.counts,
        ServerCounts {
            active: 1,
            backup: 2
        }
    );
    // Both normal servers drained: the first backup takes over.
    let b = run_admin(&svc, &st, "DDRR", t0);
    assert_eq!(names(&b, |x| x.active), ["b1"]);
    // A drained backup is no candidate: the next one is.
    let b = run_admin(&svc, &st, "DDDR", t0);
    assert_eq!(names(&b, |x| x.active), ["b2"]);
    // MAINT: gone from the set (the datapath resets its flows), not counted.
    let b = run_admin(&svc, &st, "MDDM", t0);
    assert_eq!(names(&b, |_| true), ["r2", "b1"]);
    assert_eq!(b.counts, ServerCounts::default());
    assert!(names(&b, |x| x.active).is_empty());
}

#[test]
fn a_server_in_maint_is_not_waited_for() {
    let t0 = Instant::now();
    let svc = service(&[R1, R2], false);
    let st = statuses(t0, "?U");
    assert!(run_admin(&svc, &st, "RR", t0).pending);
    assert!(
        run_admin(&svc, &st, "DR", t0).pending,
        "a drained server is checked"
    );
    assert!(!run_admin(&svc, &st, "MR", t0).pending);
}

#[test]
fn drain_overrides_slowstart_and_ready_resumes_it() {
    let t0 = Instant::now();
    let svc = service(&[R1], false);
    let st = [ServerStatus::Up {
        since: t0,
        at_startup: false,
    }];
    let mid = t0 + SS / 2;
    let b = run_admin(&svc, &st, "D", mid);
    assert_eq!(b.backends[0].weight, 0);
    let b = run_admin(&svc, &st, "R", mid);
    assert_eq!(b.backends[0].weight, 50);
    assert!(b.next_step.is_some());
}

#[test]
fn admin_states_parse_and_print_as_haproxy_spells_them() {
    for (text, state) in [
        ("ready", AdminState::Ready),
        ("DRAIN", AdminState::Drain),
        (" maint\n", AdminState::Maint),
    ] {
        assert_eq!(text.parse::<AdminState>(), Ok(state));
        assert_eq!(state.to_string(), text.trim().to_ascii_lowercase());
    }
    let e = "up".parse::<AdminState>().expect_err("not a state");
    assert_eq!(
        e.to_string(),
        "unknown server state \"up\": expected ready, drain or maint"
    );
    assert_eq!(
        serde_json::to_string(&AdminState::Maint).expect("json"),
        "\"maint\""
    );
}
