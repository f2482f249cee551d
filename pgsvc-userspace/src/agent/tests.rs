//! The reconciler without a kernel: a [`FakeDatapath`], a table of health snapshots for the checks,
//! and explicit instants for the clock.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use super::{
    checks::Checks,
    reconcile::{FIRST_RESULTS_GRACE, Identity, Reconciler, Settings, admit_queue},
};
use crate::{
    control::ReloadError,
    datapath::{
        BackendSpec, Datapath, ServiceSpec, Timeouts, TrafficStats,
        fake::{Call, FakeDatapath, Op},
    },
    health::{CheckKey, CheckOutcome, HealthEvent, HealthState, ServerHealth, Transition},
    plan::{Plan, ServerPlan, ServicePlan, plan_from_str},
    status::Status,
};

/// Pigsty-like timers; shutdown-sessions on, no slowstart, HAProxy's default maxqueue.
const OPTS: &str = "inter 1s fastinter 500ms downinter 1s rise 2 fall 2 on-marked-down shutdown-sessions slowstart 0s maxconn 3000 maxqueue 128 weight 100";
const NO_SHUTDOWN: &str =
    "inter 1s fastinter 500ms downinter 1s rise 2 fall 2 slowstart 0s maxconn 3000 weight 100";
const SLOW: &str = "inter 1s fastinter 500ms downinter 1s rise 2 fall 2 on-marked-down shutdown-sessions slowstart 20s maxconn 3000 maxqueue 128 weight 100";

const PRIMARY: &str = "pg-test-primary";
const REPLICA: &str = "pg-test-replica";
const OFFLINE: &str = "pg-test-offline";

/// pg-test with Pigsty's four default services, `options` on each, plus `extra` services.
fn inventory(options: &str, extra: &str) -> String {
    format!(
        "all:
  children:
    pg-test:
      hosts:
        198.18.0.11: {{ pg_seq: 1, pg_role: primary }}
        198.18.0.12: {{ pg_seq: 2, pg_role: replica }}
        198.18.0.13: {{ pg_seq: 3, pg_role: offline }}
      vars:
        pg_cluster: pg-test
        pg_default_services:
          - {{ name: primary, port: 5433, dest: default,  check: /primary,   selector: \"[]\", options: \"{options}\" }}
          - {{ name: replica, port: 5434, dest: default,  check: /read-only, selector: \"[? pg_role == `replica` ]\", backup: \"[? pg_role == `primary` || pg_role == `offline` ]\", options: \"{options}\" }}
          - {{ name: default, port: 5436, dest: postgres, check: /primary,   selector: \"[]\", options: \"{options}\" }}
          - {{ name: offline, port: 5438, dest: postgres, check: /replica,   selector: \"[? pg_role == `offline` ]\", backup: \"[? pg_role == `replica` ]\", options: \"{options}\" }}
        pg_services: [{extra}]
  vars:
    pg_default_service_dest: pgbouncer
"
    )
}

fn plan(src: &str) -> Plan {
    plan_from_str(src, "pigsty.yml", None)
        .unwrap_or_else(|e| panic!("test inventory: {e}"))
        .0
}

#[derive(Debug, thiserror::Error)]
#[error("injected check set-up failure")]
struct CheckSetupFailed;

/// Health snapshots by check, and what the reconciler asked of the checks.
#[derive(Default)]
struct FakeChecks {
    health: HashMap<CheckKey, ServerHealth>,
    synced: Vec<Vec<String>>,
    /// The checks running after the last sync.
    running: HashSet<CheckKey>,
    fail_sync: bool,
    pokes: RefCell<Vec<CheckKey>>,
    hurried: RefCell<HashSet<CheckKey>>,
}

impl Checks for FakeChecks {
    type Error = CheckSetupFailed;

    fn sync(&mut self, services: &[ServicePlan]) -> Result<(), CheckSetupFailed> {
        if self.fail_sync {
            return Err(CheckSetupFailed);
        }
        self.synced
            .push(services.iter().map(|s| s.name.clone()).collect());
        let running: HashSet<CheckKey> = services
            .iter()
            .flat_map(|svc| svc.servers.iter().map(|srv| CheckKey::for_server(svc, srv)))
            .collect();
        // A stopped check forgets its state, as the real monitor's does.
        for gone in self.running.difference(&running) {
            self.health.remove(gone);
        }
        self.running = running;
        Ok(())
    }

    fn server_health(&self, service: &ServicePlan, server: &ServerPlan) -> ServerHealth {
        self.health
            .get(&CheckKey::for_server(service, server))
            .cloned()
            .unwrap_or_else(|| snapshot(HealthState::Unknown, None, false))
    }

    fn poke(&self, key: &CheckKey) {
        self.pokes.borrow_mut().push(key.clone());
    }

    fn hurry(&self, key: &CheckKey, on: bool) {
        let mut h = self.hurried.borrow_mut();
        if on {
            h.insert(key.clone());
        } else {
            h.remove(key);
        }
    }
}

fn snapshot(state: HealthState, since: Option<Instant>, at_startup: bool) -> ServerHealth {
    ServerHealth {
        state,
        health: match state {
            HealthState::Up => 3,
            _ => 0,
        },
        status: state.to_string(),
        last_check: None,
        checks_total: 1,
        failures_total: 0,
        up_down_total: 0,
        last_change: since,
        up_at_startup: at_startup,
    }
}

type Rec = Reconciler<FakeDatapath, FakeChecks>;

struct Harness {
    rec: Rec,
    t0: Instant,
}

fn identity() -> Identity {
    Identity {
        started_unix: 0.0,
        config: "pigsty.yml".to_owned(),
        iface: "lb0".to_owned(),
        xdp_mode: "native",
        snat_addr: Ipv4Addr::new(198, 18, 0, 2),
        vip: Some((Ipv4Addr::new(198, 18, 0, 3), 24)),
        local_clients: "served (cgroup /sys/fs/cgroup)".to_owned(),
    }
}

/// A started reconciler over `dp` (nothing written yet: every check is still unknown).
fn started(p: Plan, dp: FakeDatapath) -> Harness {
    let t0 = Instant::now();
    let settings = Settings {
        snat_ports: 40000..=59999,
        timeouts: Timeouts::default(),
    };
    let mut rec = Reconciler::new(dp, FakeChecks::default(), p, settings, identity(), t0);
    rec.start(t0).expect("start");
    Harness { rec, t0 }
}

impl Harness {
    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn service(&self, name: &str) -> ServicePlan {
        self.rec
            .services
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    fn key(&self, service: &str, server: &str) -> CheckKey {
        let svc = self.service(service);
        let srv = svc
            .servers
            .iter()
            .find(|s| s.name == server)
            .unwrap_or_else(|| panic!("no server {server} in {service}"));
        CheckKey::for_server(&svc, srv)
    }

    /// Sets one check's snapshot without an event.
    fn set(&mut self, service: &str, server: &str, health: ServerHealth) {
        let key = self.key(service, server);
        self.rec.checks.health.insert(key, health);
    }

    /// Every server of every service UP since start-up.
    fn all_up(&mut self) {
        let t0 = self.t0;
        let pairs: Vec<(String, String)> = self
            .rec
            .services
            .iter()
            .flat_map(|s| s.servers.iter().map(|v| (s.name.clone(), v.name.clone())))
            .collect();
        for (svc, srv) in pairs {
            self.set(&svc, &srv, snapshot(HealthState::Up, Some(t0), true));
        }
    }

    /// All UP, and every service written once: the agent is ready.
    fn ready(&mut self) {
        self.all_up();
        let t = self.at(0.2);
        self.rec.rebalance_all(t);
        assert!(self.rec.is_ready(), "every service written");
    }

    /// A check result changes `server`'s state in `service` at `at` seconds.
    fn event(&mut self, service: &str, server: &str, from: HealthState, to: HealthState, at: f64) {
        let now = self.at(at);
        let health = snapshot(to, Some(now), false);
        self.set(service, server, health.clone());
        let ev = HealthEvent {
            key: self.key(service, server),
            transition: Transition { from, to, at: now },
            outcome: CheckOutcome {
                duration: Duration::from_millis(3),
                result: Ok(()),
            },
            health,
        };
        self.rec.on_health_event(&ev, now);
    }

    fn dp(&mut self) -> &mut FakeDatapath {
        &mut self.rec.dp
    }

    fn last_write(&self, service: &str) -> Vec<BackendSpec> {
        self.rec
            .dp
            .writes(service)
            .pop()
            .unwrap_or_else(|| panic!("{service} never written"))
    }

    fn status(&self) -> Status {
        self.rec
            .status_handle()
            .read()
            .expect("status lock")
            .clone()
    }
}

fn active(set: &[BackendSpec]) -> Vec<&str> {
    set.iter()
        .filter(|b| b.active)
        .map(|b| b.name.as_str())
        .collect()
}

fn spec_of(port: u16, shutdown_sessions: bool) -> ServiceSpec {
    ServiceSpec {
        addrs: Vec::new(),
        port,
        algorithm: pgsvc_common::Algorithm::RoundRobin,
        maxconn: 5000,
        shutdown_sessions,
    }
}

fn backend(name: &str, last: u8, port: u16, up: bool) -> BackendSpec {
    BackendSpec {
        name: name.to_owned(),
        addr: Ipv4Addr::new(198, 18, 0, last),
        port,
        up,
        active: up,
        weight: 100,
        maxconn: 3128,
    }
}

// ---- start-up: first results, readiness, adoption ----

#[test]
fn start_creates_every_service_and_starts_the_checks() {
    let h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    let upserts: Vec<String> = h
        .rec
        .dp
        .calls
        .iter()
        .filter_map(|c| match c {
            Call::Upsert { service, .. } => Some(service.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        upserts,
        [PRIMARY, REPLICA, "pg-test-default", OFFLINE].map(String::from)
    );
    assert_eq!(h.rec.checks.synced.len(), 1);
    assert_eq!(h.rec.dp.count(Op::SetBackends), 0);
}

#[test]
fn nothing_is_written_before_the_first_results() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    let t = h.at(1.0);
    h.rec.rebalance_all(t);
    assert_eq!(h.rec.dp.count(Op::SetBackends), 0);
    assert!(!h.rec.is_ready());
    assert!(!h.status().ready);
}

#[test]
fn a_service_whose_results_are_in_is_written_while_others_wait() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    let t0 = h.t0;
    for srv in ["pg-test-1", "pg-test-2", "pg-test-3"] {
        h.set(PRIMARY, srv, snapshot(HealthState::Up, Some(t0), true));
    }
    let t = h.at(0.5);
    h.rec.rebalance_all(t);
    assert_eq!(h.rec.dp.writes(PRIMARY).len(), 1);
    assert!(h.rec.dp.writes(REPLICA).is_empty());
    assert!(!h.rec.is_ready());
}

#[test]
fn after_the_grace_period_services_are_written_with_what_is_known() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    let before = h.t0 + FIRST_RESULTS_GRACE - Duration::from_millis(1);
    h.rec.rebalance_all(before);
    assert_eq!(h.rec.dp.count(Op::SetBackends), 0);
    let after = h.t0 + FIRST_RESULTS_GRACE;
    h.rec.rebalance_all(after);
    assert_eq!(h.rec.dp.count(Op::SetBackends), 4);
    assert!(h.last_write(PRIMARY).iter().all(|b| !b.up && !b.active));
    assert!(h.rec.is_ready());
}

#[test]
fn ready_once_every_service_is_written_and_unclaimed_slots_are_released_once() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    assert_eq!(h.rec.dp.count(Op::ReleaseUnclaimed), 0);
    h.ready();
    assert!(h.status().ready);
    let t = h.at(0.3);
    h.rec.rebalance_all(t);
    h.rec.on_tick(1, h.at(1.0));
    assert_eq!(h.rec.dp.count(Op::ReleaseUnclaimed), 1);
}

#[test]
fn an_adopted_service_keeps_the_flows_of_its_up_servers() {
    let mut dp = FakeDatapath::new();
    dp.adopt(
        PRIMARY,
        spec_of(5433, true),
        vec![
            backend("pg-test-1", 11, 6432, true),
            backend("pg-test-2", 12, 6432, false),
            backend("pg-test-3", 13, 6432, false),
        ],
    );
    dp.open(PRIMARY, "pg-test-1", 5);
    let mut h = started(plan(&inventory(OPTS, "")), dp);
    h.ready();
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 5);
    assert!(h.rec.dp.flushed(PRIMARY).is_empty());
    assert!(!h.rec.dp.unclaimed.contains(PRIMARY));
}

#[test]
fn an_adopted_up_server_found_down_at_start_loses_its_flows_with_shutdown_sessions() {
    let mut dp = FakeDatapath::new();
    dp.adopt(
        PRIMARY,
        spec_of(5433, true),
        vec![backend("pg-test-1", 11, 6432, true)],
    );
    dp.open(PRIMARY, "pg-test-1", 4);
    let mut h = started(plan(&inventory(OPTS, "")), dp);
    h.all_up();
    let t0 = h.t0;
    h.set(
        PRIMARY,
        "pg-test-1",
        snapshot(HealthState::Down, Some(t0), false),
    );
    let t = h.at(0.2);
    h.rec.rebalance_all(t);
    assert_eq!(h.rec.dp.flushed(PRIMARY), ["pg-test-1"]);
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 0);
}

#[test]
fn an_adopted_service_no_longer_planned_is_released_when_ready_not_before() {
    let mut dp = FakeDatapath::new();
    dp.adopt(
        "pg-old-primary",
        spec_of(6000, true),
        vec![backend("pg-old-1", 21, 6432, true)],
    );
    dp.open("pg-old-primary", "pg-old-1", 2);
    let mut h = started(plan(&inventory(OPTS, "")), dp);
    let t = h.at(0.1);
    h.rec.rebalance_all(t);
    assert!(h.rec.dp.services.contains_key("pg-old-primary"));
    h.ready();
    assert!(!h.rec.dp.services.contains_key("pg-old-primary"));
    assert_eq!(h.rec.dp.flushed("pg-old-primary"), ["pg-old-1"]);
}

// ---- health events: shutdown-sessions, backups, hurry ----

#[test]
fn a_down_server_loses_its_flows_with_shutdown_sessions() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.dp().open(PRIMARY, "pg-test-1", 3);
    h.dp().open(PRIMARY, "pg-test-2", 2);
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        5.0,
    );
    assert_eq!(h.rec.dp.flushed(PRIMARY), ["pg-test-1"]);
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 0);
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-2"), 2);
    assert!(!h.last_write(PRIMARY)[0].up);
}

#[test]
fn a_down_server_keeps_its_flows_without_shutdown_sessions() {
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
    assert!(h.rec.dp.flushed(PRIMARY).is_empty());
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 3);
    let set = h.last_write(PRIMARY);
    assert!(
        !set[0].up && !set[0].active,
        "out of the active set all the same"
    );
}

#[test]
fn without_usable_servers_the_first_up_backup_takes_over() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    assert_eq!(active(&h.last_write(REPLICA)), ["pg-test-2"]);
    h.event(
        REPLICA,
        "pg-test-2",
        HealthState::Up,
        HealthState::Down,
        3.0,
    );
    assert_eq!(active(&h.last_write(REPLICA)), ["pg-test-1"]);
    assert!(h.status().services[1].using_backups);
    h.event(
        REPLICA,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        4.0,
    );
    assert_eq!(active(&h.last_write(REPLICA)), ["pg-test-3"]);
    h.event(
        REPLICA,
        "pg-test-2",
        HealthState::Down,
        HealthState::Up,
        6.0,
    );
    assert_eq!(active(&h.last_write(REPLICA)), ["pg-test-2"]);
}

#[test]
fn allbackups_puts_every_up_backup_in_the_active_set() {
    let mut p = plan(&inventory(OPTS, ""));
    for svc in &mut p.clusters[0].services {
        svc.allbackups = true;
    }
    let mut h = started(p, FakeDatapath::new());
    h.ready();
    h.event(
        REPLICA,
        "pg-test-2",
        HealthState::Up,
        HealthState::Down,
        3.0,
    );
    assert_eq!(active(&h.last_write(REPLICA)), ["pg-test-1", "pg-test-3"]);
}

#[test]
fn an_outage_hurries_the_services_checks_and_recovery_calms_them() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.event(
        OFFLINE,
        "pg-test-3",
        HealthState::Up,
        HealthState::Down,
        1.0,
    );
    assert!(h.rec.checks.hurried.borrow().is_empty(), "a backup remains");
    h.event(
        OFFLINE,
        "pg-test-2",
        HealthState::Up,
        HealthState::Down,
        2.0,
    );
    let want: HashSet<CheckKey> = [h.key(OFFLINE, "pg-test-2"), h.key(OFFLINE, "pg-test-3")]
        .into_iter()
        .collect();
    assert_eq!(*h.rec.checks.hurried.borrow(), want);
    h.event(
        OFFLINE,
        "pg-test-3",
        HealthState::Down,
        HealthState::Up,
        3.0,
    );
    assert!(h.rec.checks.hurried.borrow().is_empty());
}

#[test]
fn a_transition_pokes_the_other_servers_of_the_service() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        1.0,
    );
    let pokes = h.rec.checks.pokes.borrow().clone();
    // The /primary check of pg-test-1 serves two services (primary and default): each pokes its
    // other servers, never the server that changed.
    let others = [h.key(PRIMARY, "pg-test-2"), h.key(PRIMARY, "pg-test-3")];
    assert_eq!(pokes.len(), 4, "{pokes:?}");
    assert!(pokes.iter().all(|k| others.contains(k)), "{pokes:?}");
}

#[test]
fn an_unchanged_desired_state_is_not_rewritten() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    let writes = h.rec.dp.count(Op::SetBackends);
    for i in 1..=5 {
        h.rec.on_tick(i, h.at(f64::from(i)));
        h.rec.rebalance_all(h.at(f64::from(i) + 0.5));
        h.rec.rebalance(PRIMARY, h.at(f64::from(i) + 0.7));
    }
    assert_eq!(h.rec.dp.count(Op::SetBackends), writes);
}

#[test]
fn a_failed_write_is_retried_at_the_next_change() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.dp().fail(Op::SetBackends, PRIMARY);
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        1.0,
    );
    assert!(h.rec.dp.services[PRIMARY].backends[0].up, "not applied");
    h.dp().heal();
    let t = h.at(2.0);
    h.rec.rebalance(PRIMARY, t);
    assert!(!h.rec.dp.services[PRIMARY].backends[0].up);
}

// ---- slowstart and admission ----

#[test]
fn slowstart_ramps_the_weight_in_steps_over_the_period() {
    let mut h = started(plan(&inventory(SLOW, "")), FakeDatapath::new());
    h.ready();
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        1.0,
    );
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Down,
        HealthState::Up,
        10.0,
    );
    for s in 1..=25 {
        h.rec.on_tick(s, h.at(10.0 + f64::from(s)));
    }
    let weights: Vec<u32> = h
        .rec
        .dp
        .writes(PRIMARY)
        .iter()
        .skip(2)
        .map(|set| set[0].weight)
        .collect();
    assert_eq!(weights.first(), Some(&1), "{weights:?}");
    assert_eq!(weights.last(), Some(&100), "{weights:?}");
    assert_eq!(weights.len(), 21, "one write per 1 s step: {weights:?}");
    assert!(weights.windows(2).all(|w| w[0] < w[1]), "{weights:?}");
}

#[test]
fn slowstart_steps_are_not_written_before_they_are_due() {
    let mut h = started(plan(&inventory(SLOW, "")), FakeDatapath::new());
    h.ready();
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        1.0,
    );
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Down,
        HealthState::Up,
        10.0,
    );
    let writes = h.rec.dp.writes(PRIMARY).len();
    h.rec.on_tick(1, h.at(10.5));
    assert_eq!(h.rec.dp.writes(PRIMARY).len(), writes);
    h.rec.on_tick(2, h.at(11.0));
    assert_eq!(h.rec.dp.writes(PRIMARY).len(), writes + 1);
}

#[test]
fn slowstart_ramps_maxconn_and_the_limit_keeps_the_queue() {
    let mut h = started(plan(&inventory(SLOW, "")), FakeDatapath::new());
    h.ready();
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        1.0,
    );
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Down,
        HealthState::Up,
        10.0,
    );
    assert_eq!(h.last_write(PRIMARY)[0].maxconn, 1 + 128);
    h.rec.on_tick(1, h.at(20.0));
    assert_eq!(h.last_write(PRIMARY)[0].maxconn, 1500 + 128);
}

#[test]
fn no_slowstart_for_servers_up_since_start_up() {
    let mut h = started(plan(&inventory(SLOW, "")), FakeDatapath::new());
    h.ready();
    let set = h.last_write(PRIMARY);
    assert!(set.iter().all(|b| b.weight == 100 && b.maxconn == 3128));
    assert!(h.rec.next_steps.is_empty());
}

#[test]
fn the_admission_limit_is_maxconn_plus_maxqueue() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    assert!(h.last_write(PRIMARY).iter().all(|b| b.maxconn == 3128));
    let mut h = started(plan(&inventory(NO_SHUTDOWN, "")), FakeDatapath::new());
    h.ready();
    assert!(h.last_write(PRIMARY).iter().all(|b| b.maxconn == 3000));
}

#[test]
fn the_admission_limit_includes_haproxys_queue() {
    let spec = |maxconn| BackendSpec {
        maxconn,
        ..backend("pg-test-1", 11, 6432, true)
    };
    // Right after DOWN→UP with slowstart, HAProxy's ramp gives maxconn 1 and queues 128 more.
    let mut b = vec![spec(1), spec(3000), spec(0)];
    admit_queue(&mut b, 128);
    let limits: Vec<u32> = b.iter().map(|s| s.maxconn).collect();
    // 0 stays unlimited.
    assert_eq!(limits, vec![129, 3128, 0]);
}

// ---- periodic work ----

#[test]
fn ticks_drive_the_clock_next_hops_and_gc_on_their_schedules() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    for i in 1..=10 {
        h.rec.on_tick(i, h.at(f64::from(i)));
    }
    assert_eq!(h.rec.dp.count(Op::Tick), 10);
    assert_eq!(h.rec.dp.count(Op::RefreshNextHops), 5);
    assert_eq!(h.rec.dp.count(Op::Gc), 2);
}

#[test]
fn failing_periodic_work_does_not_stop_the_reconciler() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    for op in [Op::Tick, Op::Gc, Op::RefreshNextHops] {
        h.dp().fail(op, "");
    }
    for i in 1..=5 {
        h.rec.on_tick(i, h.at(f64::from(i)));
    }
    h.event(
        PRIMARY,
        "pg-test-1",
        HealthState::Up,
        HealthState::Down,
        6.0,
    );
    assert!(!h.last_write(PRIMARY)[0].up);
}

// ---- reload ----

fn reload(
    h: &mut Harness,
    src: &str,
    at: f64,
) -> Result<crate::control::ReloadSummary, ReloadError> {
    let t = h.at(at);
    h.rec.reload(plan_from_str(src, "pigsty.yml", None), t)
}

const LAG: &str = "{ name: lag, port: 5440, dest: postgres, check: /read-only, selector: \"[? pg_role == `replica` ]\" }";

#[test]
fn reload_reports_added_changed_removed_and_unchanged_services() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    let mut next = inventory(OPTS, LAG);
    // offline goes, default changes its port.
    next = next.replace(
        "          - { name: offline, port: 5438, dest: postgres, check: /replica,   selector: \"[? pg_role == `offline` ]\", backup: \"[? pg_role == `replica` ]\", options: \"inter 1s fastinter 500ms downinter 1s rise 2 fall 2 on-marked-down shutdown-sessions slowstart 0s maxconn 3000 maxqueue 128 weight 100\" }\n",
        "",
    );
    next = next.replace("name: default, port: 5436", "name: default, port: 5437");
    let summary = reload(&mut h, &next, 1.0).expect("valid inventory");
    assert_eq!(
        (
            summary.added,
            summary.changed,
            summary.removed,
            summary.unchanged
        ),
        (1, 1, 1, 2)
    );
    assert_eq!(
        summary.to_string(),
        "1 added, 1 changed, 1 removed, 2 unchanged"
    );
    let st = h.status();
    let last = st.last_reload.expect("recorded");
    assert!(last.ok);
    assert_eq!(last.message, summary.to_string());
}

#[test]
fn reload_leaves_unchanged_services_alone() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.dp().open(PRIMARY, "pg-test-1", 7);
    h.dp().calls.clear();
    reload(&mut h, &inventory(OPTS, LAG), 1.0).expect("valid inventory");
    for c in &h.rec.dp.calls {
        match c {
            Call::Upsert { service, .. }
            | Call::SetBackends { service, .. }
            | Call::Remove { service }
            | Call::Flush { service, .. } => assert_eq!(service, "pg-test-lag", "{c:?}"),
            _ => {}
        }
    }
    assert_eq!(h.rec.dp.conns(PRIMARY, "pg-test-1"), 7);
}

#[test]
fn reload_removes_services_and_their_flows() {
    let mut h = started(plan(&inventory(OPTS, LAG)), FakeDatapath::new());
    h.ready();
    h.dp().open("pg-test-lag", "pg-test-2", 4);
    reload(&mut h, &inventory(OPTS, ""), 1.0).expect("valid inventory");
    assert!(!h.rec.dp.services.contains_key("pg-test-lag"));
    assert_eq!(h.rec.dp.flushed("pg-test-lag"), ["pg-test-2"]);
    assert!(h.status().services.iter().all(|s| s.name != "pg-test-lag"));
}

#[test]
fn reload_rewrites_a_changed_service_and_moves_its_servers() {
    let mut h = started(plan(&inventory(OPTS, LAG)), FakeDatapath::new());
    h.ready();
    h.dp().open("pg-test-lag", "pg-test-2", 4);
    let moved = LAG.replace("pg_role == `replica`", "pg_role == `offline`");
    reload(&mut h, &inventory(OPTS, &moved), 1.0).expect("valid inventory");
    // The new member has no result yet for this check: it waits, it is not written as DOWN.
    assert_eq!(h.rec.dp.writes("pg-test-lag").len(), 1);
    let t0 = h.t0;
    h.set(
        "pg-test-lag",
        "pg-test-3",
        snapshot(HealthState::Up, Some(t0), true),
    );
    h.rec.rebalance_all(h.at(1.5));
    let set = h.last_write("pg-test-lag");
    assert_eq!(active(&set), ["pg-test-3"]);
    assert_eq!(
        h.rec.dp.flushed("pg-test-lag"),
        ["pg-test-2"],
        "a server that left"
    );
}

#[test]
fn an_invalid_inventory_is_refused_and_the_old_plan_stays() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.dp().calls.clear();
    let before = h.rec.services.clone();
    let err = reload(&mut h, "all: { children: [ broken", 1.0).expect_err("refused");
    assert!(matches!(err, ReloadError::Inventory { .. }), "{err:?}");
    assert!(err.to_string().contains("pigsty.yml"), "{err}");
    assert_eq!(h.rec.services, before);
    assert!(h.rec.dp.calls.is_empty(), "{:?}", h.rec.dp.calls);
    let last = h.status().last_reload.expect("recorded");
    assert!(!last.ok);
    assert_eq!(last.message, err.to_string());
}

#[test]
fn an_inventory_without_services_is_refused() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    let empty = inventory(OPTS, "").replace(
        "pg_default_services:",
        "pg_default_services: []\n        unused:",
    );
    let err = reload(&mut h, &empty, 1.0).expect_err("refused");
    assert!(matches!(err, ReloadError::NoServices), "{err:?}");
    assert_eq!(h.rec.services.len(), 4);
}

#[test]
fn a_service_inside_the_snat_range_is_refused_with_the_values() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.dp().calls.clear();
    let bad = LAG.replace("5440", "45000");
    let err = reload(&mut h, &inventory(OPTS, &bad), 1.0).expect_err("refused");
    match err {
        ReloadError::PortInSnatRange {
            service,
            port,
            min,
            max,
        } => assert_eq!(
            (service.as_str(), port, min, max),
            ("pg-test-lag", 45000, 40000, 59999)
        ),
        other => panic!("{other:?}"),
    }
    assert!(h.rec.dp.calls.is_empty());
}

#[test]
fn checks_that_cannot_be_set_up_refuse_the_reload_before_the_datapath_changes() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.dp().calls.clear();
    h.rec.checks.fail_sync = true;
    let err = reload(&mut h, &inventory(OPTS, LAG), 1.0).expect_err("refused");
    assert!(matches!(err, ReloadError::Checks { .. }), "{err:?}");
    assert!(h.rec.dp.calls.is_empty());
    assert_eq!(h.rec.services.len(), 4);
}

#[test]
fn a_datapath_refusal_names_the_service() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.dp().fail(Op::Upsert, "pg-test-lag");
    let err = reload(&mut h, &inventory(OPTS, LAG), 1.0).expect_err("refused");
    match &err {
        ReloadError::Datapath { service, .. } => assert_eq!(service, "pg-test-lag"),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("service pg-test-lag: injected failure"),
        "{err}"
    );
    assert_eq!(h.rec.services.len(), 4, "the old plan stays");
}

// ---- status projection ----

#[test]
fn the_status_projects_health_datapath_counters_and_the_written_state() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.event(
        PRIMARY,
        "pg-test-2",
        HealthState::Up,
        HealthState::Down,
        2.0,
    );
    h.dp().open(PRIMARY, "pg-test-1", 6);
    let traffic = TrafficStats {
        new_flows: 9,
        bytes_in: 1000,
        bytes_out: 2000,
        ..TrafficStats::default()
    };
    if let Some(s) = h.dp().services.get_mut(PRIMARY) {
        s.traffic.insert("pg-test-1".to_owned(), traffic);
        s.stats = traffic;
    }
    h.dp().reasons = vec![(pgsvc_common::Reason::ALL[0], 42)];
    h.rec.publish(h.at(7.0));
    let st = h.status();
    assert_eq!((st.iface.as_str(), st.xdp_mode.as_str()), ("lb0", "native"));
    assert_eq!(st.vip.as_deref(), Some("198.18.0.3/24"));
    assert_eq!(st.datapath.flows, 6);
    assert_eq!(st.datapath.max_flows, 1024);
    assert_eq!(
        st.datapath.packets.get(pgsvc_common::Reason::ALL[0].name()),
        Some(&42)
    );
    let primary = &st.services[0];
    assert_eq!(primary.name, PRIMARY);
    assert_eq!((primary.port, primary.active_servers), (5433, 2));
    assert_eq!(
        (
            primary.current_sessions,
            primary.bytes_in,
            primary.sessions_total
        ),
        (6, 1000, 9)
    );
    let s1 = &primary.servers[0];
    assert_eq!(
        (s1.state.as_str(), s1.active, s1.effective_weight),
        ("UP", true, 100)
    );
    assert_eq!((s1.current_sessions, s1.bytes_out), (6, 2000));
    let s2 = &primary.servers[1];
    assert_eq!((s2.state.as_str(), s2.active), ("DOWN", false));
    assert_eq!(s2.downtime_seconds, 5.0);
    assert_eq!(s2.last_change_seconds, Some(5.0));
}

#[test]
fn servers_without_results_show_unknown_and_no_effective_weight() {
    let h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    let st = h.status();
    let s = &st.services[0].servers[0];
    assert_eq!(
        (s.state.as_str(), s.effective_weight, s.active),
        ("UNKNOWN", 0, false)
    );
}

#[test]
fn downtime_accumulates_over_down_periods() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    h.event(
        PRIMARY,
        "pg-test-2",
        HealthState::Up,
        HealthState::Down,
        2.0,
    );
    h.event(
        PRIMARY,
        "pg-test-2",
        HealthState::Down,
        HealthState::Up,
        5.0,
    );
    h.event(
        PRIMARY,
        "pg-test-2",
        HealthState::Up,
        HealthState::Down,
        10.0,
    );
    h.rec.publish(h.at(11.5));
    assert_eq!(h.status().services[0].servers[1].downtime_seconds, 4.5);
}

#[test]
fn a_server_whose_address_changed_starts_from_zero_in_the_fake_too() {
    let mut dp = FakeDatapath::new();
    dp.upsert_service(PRIMARY, &spec_of(5433, false))
        .expect("upsert");
    dp.set_backends(PRIMARY, &[backend("pg-test-1", 11, 6432, true)])
        .expect("write");
    dp.open(PRIMARY, "pg-test-1", 3);
    dp.set_backends(PRIMARY, &[backend("pg-test-1", 21, 6432, true)])
        .expect("write");
    assert_eq!(dp.conns(PRIMARY, "pg-test-1"), 0);
}

#[test]
fn the_local_scope_reaches_the_datapath_and_follows_address_changes() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    assert_eq!(h.rec.dp.local_scope, None);
    let mut scope = crate::datapath::LocalScope {
        if_mac: [2, 0, 0, 0, 0, 1],
        vip_mac: None,
        addrs: vec![Ipv4Addr::new(198, 18, 0, 2)],
    };
    h.rec.on_local_scope(&scope);
    assert_eq!(h.rec.dp.local_scope.as_ref(), Some(&scope));
    // The VIP arrives on the node (vip-manager): wildcard services must answer for it too.
    scope.addrs.push(Ipv4Addr::new(198, 18, 0, 3));
    h.rec.on_local_scope(&scope);
    assert_eq!(
        h.rec.dp.local_scope.as_ref().map(|s| s.addrs.clone()),
        Some(vec![
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 0, 3)
        ])
    );
}

#[test]
fn the_status_keeps_session_peaks_rates_and_backend_outages() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.ready();
    let set = |h: &mut Harness, conns: u64, flows: u64| {
        h.dp().open(PRIMARY, "pg-test-1", conns);
        let traffic = TrafficStats {
            new_flows: flows,
            ..TrafficStats::default()
        };
        if let Some(s) = h.dp().services.get_mut(PRIMARY) {
            s.traffic.insert("pg-test-1".to_owned(), traffic);
            s.stats = traffic;
        }
    };
    // The rate window opens at 1.5 s with no session yet.
    set(&mut h, 0, 0);
    h.rec.publish(h.at(1.5));
    assert_eq!(h.status().services[0].peaks.last_session_at, None);
    set(&mut h, 4, 10);
    h.rec.publish(h.at(2.0));
    set(&mut h, 9, 30);
    h.rec.publish(h.at(3.5));
    set(&mut h, 2, 30);
    h.rec.publish(h.at(4.5));
    let st = h.status();
    let p = &st.services[0];
    assert_eq!(p.name, PRIMARY);
    // 30 sessions over the 2 s window 1.5..3.5, then a quiet second.
    assert_eq!(
        (
            p.peaks.max_sessions,
            p.peaks.session_rate,
            p.peaks.max_session_rate
        ),
        (9, 0, 15)
    );
    assert_eq!(p.peaks.last_session_seconds(st.updated_at), 1.0);
    let s1 = &p.servers[0];
    assert_eq!((s1.peaks.max_sessions, s1.peaks.max_session_rate), (9, 15));
    assert_eq!(st.process.peaks.max_session_rate, 15);
    assert_eq!(st.process.nbthread, super::WORKER_THREADS as u32);
    assert!((0.0..=100.0).contains(&st.process.idle_percent));
    assert_eq!((p.server_maxconn, p.server_maxqueue), (3000, 128));
    assert_eq!(p.down_transitions, 0);

    // Every server of the service goes DOWN: one backend UP->DOWN transition, counted once.
    for server in ["pg-test-1", "pg-test-2", "pg-test-3"] {
        h.event(PRIMARY, server, HealthState::Up, HealthState::Down, 5.0);
    }
    h.rec.publish(h.at(5.5));
    h.rec.publish(h.at(6.5));
    let st = h.status();
    assert_eq!(
        st.services[0].active_servers + st.services[0].backup_servers,
        0
    );
    assert_eq!(st.services[0].down_transitions, 1);
}

#[path = "tests/fence.rs"]
mod fence;
#[path = "tests/promotion.rs"]
mod promotion;
#[path = "tests/resets.rs"]
mod resets;
mod server_state;

#[test]
fn the_snapshot_shows_snat_ports_held_per_server_and_the_range_size() {
    let mut h = started(plan(&inventory(OPTS, "")), FakeDatapath::new());
    h.all_up();
    h.ready();
    h.dp()
        .snat_ports
        .insert((PRIMARY.to_owned(), "pg-test-1".to_owned()), 100);
    h.dp()
        .snat_ports
        .insert((REPLICA.to_owned(), "pg-test-2".to_owned()), 7);
    h.rec.publish(h.at(3.0));
    let st = h.status();
    assert_eq!(st.datapath.snat_ports, 20_000, "40000-59999");
    let held = |svc: &str, srv: &str| {
        st.services
            .iter()
            .find(|s| s.name == svc)
            .and_then(|s| s.servers.iter().find(|v| v.name == srv))
            .map(|v| v.snat_ports_in_use)
    };
    assert_eq!(held(PRIMARY, "pg-test-1"), Some(100));
    assert_eq!(held(PRIMARY, "pg-test-2"), Some(0));
    assert_eq!(held(REPLICA, "pg-test-2"), Some(7));
    let text = crate::admin::metrics::render_metrics(&st);
    assert!(text.contains("\npgsvc_snat_ports 20000\n"), "{text}");
    assert!(
        text.contains(
            "\npgsvc_server_snat_ports_in_use{proxy=\"pg-test-primary\",server=\"pg-test-1\"} 100\n"
        ),
        "{text}"
    );
}
