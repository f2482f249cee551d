//! The `haproxy_*` families against a real HAProxy 2.6 scrape, and the figures pgsvc computes for
//! them (peaks, rates, idle time, states).

use openmetrics_parser::{
    MetricsExposition, PrometheusType, PrometheusValue, prometheus::parse_prometheus,
};

use super::haproxy::{backend_limit, server_state};
use super::*;
use crate::admin::fixture::sample_status;
use crate::status::{Peaks, ProcessStatus};

type Parsed = MetricsExposition<PrometheusType, PrometheusValue>;

/// What Debian's HAProxy 2.6.12 served for testdata/haproxy-2.6-scrape.cfg (a Pigsty-style
/// `listen` with two unreachable servers, plus the exporter's own frontend).
const HAPROXY_SCRAPE: &str = include_str!("../../../testdata/haproxy-2.6-scrape.prom");
/// Every `haproxy_*` name Pigsty's dashboards and rules query.
const PIGSTY_NAMES: &str = include_str!("../../../testdata/pigsty-haproxy-metric-names.txt");
/// Names in Pigsty's list that HAProxy 2.6 does not emit for a TCP `listen`: HTTP request counts
/// (HTTP-mode backends only) and a per-server rate limit (added after 2.6). pgsvc emits them
/// (type and labels of their siblings, value 0) so the dashboards show 0 rather than nothing.
const NOT_IN_HAPROXY_26_TCP: [&str; 2] = [
    "haproxy_backend_http_requests_total",
    "haproxy_server_limit_session_rate",
];

fn parse(text: &str) -> Parsed {
    match parse_prometheus(text) {
        Ok(e) => e,
        Err(error) => panic!("not Prometheus text: {error}\n{text}"),
    }
}

fn shape(e: &Parsed, name: &str) -> Option<(String, Vec<String>)> {
    let f = e.families.get(name)?;
    Some((format!("{:?}", f.family_type), f.get_label_names().to_vec()))
}

fn sample_value(e: &Parsed, name: &str, labels: &[(&str, &str)]) -> f64 {
    let f = e
        .families
        .get(name)
        .unwrap_or_else(|| panic!("no family {name}"));
    f.iter_samples()
        .find_map(|sample| {
            let set = sample.get_labelset().ok()?;
            let hit = set.iter().count() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| set.get_label_value(k) == Some(*v));
            hit.then(|| match &sample.value {
                PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
                PrometheusValue::Counter(c) => c.value.as_f64(),
                other => panic!("unexpected value {other:?}"),
            })
        })
        .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
}

#[test]
fn every_pigsty_name_has_haproxys_type_and_labels() {
    let haproxy = parse(HAPROXY_SCRAPE);
    let ours = parse(&render_metrics(&sample_status()));
    let names: Vec<&str> = PIGSTY_NAMES.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(names.len(), 96, "the reference list changed");
    let mut problems = Vec::new();
    for name in &names {
        let Some(got) = shape(&ours, name) else {
            problems.push(format!("{name}: missing from pgsvc"));
            continue;
        };
        match shape(&haproxy, name) {
            Some(want) if want != got => {
                problems.push(format!("{name}: HAProxy {want:?}, pgsvc {got:?}"));
            }
            Some(_) => {}
            None if NOT_IN_HAPROXY_26_TCP.contains(name) => {}
            None => problems.push(format!("{name}: not in the HAProxy scrape")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_haproxy_family_pgsvc_emits_is_haproxys() {
    let haproxy = parse(HAPROXY_SCRAPE);
    let ours = parse(&render_metrics(&sample_status()));
    let mut problems = Vec::new();
    for name in ours.families.keys().filter(|n| n.starts_with("haproxy_")) {
        let got = shape(&ours, name);
        match shape(&haproxy, name) {
            Some(want) if Some(&want) != got.as_ref() => {
                problems.push(format!("{name}: HAProxy {want:?}, pgsvc {got:?}"));
            }
            Some(_) => {}
            None if NOT_IN_HAPROXY_26_TCP.contains(&name.as_str()) => {}
            None => problems.push(format!("{name}: HAProxy 2.6 has no such family")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn haproxy_state_sets_use_haproxys_states() {
    let haproxy = parse(HAPROXY_SCRAPE);
    for (family, labels, ours) in [
        (
            "haproxy_server_status",
            ("pg-test-primary", Some("pg-test-1")),
            &SERVER_STATES[..],
        ),
        (
            "haproxy_server_check_status",
            ("pg-test-primary", Some("pg-test-1")),
            &CHECK_STATES[..],
        ),
        (
            "haproxy_backend_status",
            ("pg-test-primary", None),
            &BACKEND_STATES[..],
        ),
        (
            "haproxy_frontend_status",
            ("pg-test-primary", None),
            &BACKEND_STATES[..],
        ),
    ] {
        let f = &haproxy.families[family];
        let mut states: Vec<String> = f
            .iter_samples()
            .filter_map(|s| {
                let set = s.get_labelset().ok()?;
                let same = set.get_label_value("proxy") == Some(labels.0)
                    && set.get_label_value("server") == labels.1;
                same.then(|| set.get_label_value("state").map(str::to_owned))?
            })
            .collect();
        states.sort();
        let mut want: Vec<String> = ours.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(states, want, "{family}");
    }
}

#[test]
fn figures_come_from_the_snapshot() {
    let mut s = sample_status();
    s.updated_at = 1000.0;
    s.process.idle_percent = 87.0;
    s.process.nbthread = 2;
    s.services[0].maxconn = 3000;
    s.services[0].server_maxconn = 2500;
    s.services[0].server_maxqueue = 128;
    s.services[0].peaks = Peaks {
        max_sessions: 42,
        max_session_rate: 7,
        last_session_at: Some(990.5),
        ..Peaks::default()
    };
    s.services[0].servers[0].peaks.max_sessions = 11;
    s.services[0].servers[0].state = "DRAIN".into();
    s.services[0].servers[1].state = "MAINT".into();
    let e = parse(&render_metrics(&s));
    let p = [("proxy", "pg-test-primary")];
    let v = [("proxy", "pg-test-primary"), ("server", "pg-test-1")];
    let v2 = [("proxy", "pg-test-primary"), ("server", "pg-test-2")];
    assert_eq!(
        sample_value(&e, "haproxy_process_idle_time_percent", &[]),
        87.0
    );
    assert_eq!(sample_value(&e, "haproxy_process_nbthread", &[]), 2.0);
    assert_eq!(sample_value(&e, "haproxy_frontend_max_sessions", &p), 42.0);
    assert_eq!(
        sample_value(&e, "haproxy_frontend_max_session_rate", &p),
        7.0
    );
    assert_eq!(
        sample_value(&e, "haproxy_frontend_limit_sessions", &p),
        3000.0
    );
    assert_eq!(
        sample_value(&e, "haproxy_backend_limit_sessions", &p),
        300.0
    );
    assert_eq!(
        sample_value(&e, "haproxy_backend_last_session_seconds", &p),
        9.0
    );
    assert_eq!(sample_value(&e, "haproxy_server_max_sessions", &v), 11.0);
    assert_eq!(
        sample_value(&e, "haproxy_server_limit_sessions", &v),
        2500.0
    );
    assert_eq!(sample_value(&e, "haproxy_server_queue_limit", &v), 128.0);
    // Never a session: HAProxy's -1.
    assert_eq!(
        sample_value(&e, "haproxy_server_last_session_seconds", &v),
        -1.0
    );
    let sessions = s.services[0].servers[0].sessions_total as f64;
    assert_eq!(
        sample_value(&e, "haproxy_server_loadbalanced_total", &v),
        sessions
    );
    assert_eq!(
        sample_value(&e, "haproxy_server_connection_attempts_total", &v),
        sessions
    );
    let state = |labels: &[(&str, &str)], st: &str| {
        let mut l = labels.to_vec();
        l.push(("state", st));
        sample_value(&e, "haproxy_server_status", &l)
    };
    assert_eq!(state(&v, "DRAIN"), 1.0);
    assert_eq!(state(&v, "UP"), 0.0);
    assert_eq!(state(&v2, "MAINT"), 1.0);
    assert_eq!(state(&v2, "DOWN"), 0.0);
    let check = |labels: &[(&str, &str)], st: &str| {
        let mut l = labels.to_vec();
        l.push(("state", st));
        sample_value(&e, "haproxy_server_check_status", &l)
    };
    assert_eq!(check(&v, "L7OK"), 1.0);
    assert_eq!(check(&v2, "L7STS"), 1.0);
    assert_eq!(check(&v2, "L7OK"), 0.0);
    assert_eq!(
        sample_value(
            &e,
            "haproxy_frontend_status",
            &[("proxy", "pg-test-primary"), ("state", "UP")]
        ),
        if s.ready { 1.0 } else { 0.0 }
    );
}

#[test]
fn server_states_map_as_haproxy_does() {
    for (ours, haproxy) in [
        ("UP", "UP"),
        ("DOWN", "DOWN"),
        ("MAINT", "MAINT"),
        ("DRAIN", "DRAIN"),
        ("NOLB", "NOLB"),
        ("UNKNOWN", ""),
    ] {
        assert_eq!(server_state(ours), haproxy, "{ours}");
    }
    assert_eq!(backend_limit(3000), 300);
    assert_eq!(backend_limit(5), 1);
    assert_eq!(backend_limit(0), 0);
}

#[test]
fn peaks_track_maxima_rates_and_the_last_session() {
    let p0 = Peaks::next(None, 3, 10, 100.0);
    assert_eq!(
        (p0.max_sessions, p0.session_rate, p0.last_session_at),
        (3, 0, None)
    );
    // Half a second later: the rate window is not over yet, the new session is seen.
    let p1 = Peaks::next(Some(&p0), 5, 14, 100.5);
    assert_eq!(p1.max_sessions, 5);
    assert_eq!(p1.session_rate, 0);
    assert_eq!(p1.last_session_at, Some(100.5));
    // Two seconds after the window opened: 20 sessions over 2 s.
    let p2 = Peaks::next(Some(&p1), 1, 30, 102.0);
    assert_eq!(
        (p2.max_sessions, p2.session_rate, p2.max_session_rate),
        (5, 10, 10)
    );
    assert_eq!(p2.last_session_at, Some(102.0));
    // A quiet second: the rate drops, its maximum and the last session time stay.
    let p3 = Peaks::next(Some(&p2), 0, 30, 103.0);
    assert_eq!((p3.session_rate, p3.max_session_rate), (0, 10));
    assert_eq!(p3.last_session_at, Some(102.0));
    assert_eq!(p3.last_session_seconds(110.4), 8.0);
    assert_eq!(Peaks::default().last_session_seconds(110.0), -1.0);
    // Counters recreated (lower total): start over instead of underflowing.
    let p4 = Peaks::next(Some(&p3), 2, 4, 104.0);
    assert_eq!((p4.max_sessions, p4.session_rate, p4.last_total), (2, 0, 4));
}

#[test]
fn idle_time_is_the_share_of_worker_time_not_spent() {
    let first = ProcessStatus::next(None, 5.0, 100.0, 2, 1024);
    assert_eq!(first.idle_percent, 100.0);
    assert_eq!((first.nbthread, first.max_fds), (2, 1024));
    // 0.5 s of CPU over 2 s on 2 threads: 12.5 % busy.
    let later = ProcessStatus::next(Some(&first), 5.5, 102.0, 2, 1024);
    assert_eq!(later.idle_percent, 88.0);
    // Less than a second later: unchanged, the window keeps its start.
    let soon = ProcessStatus::next(Some(&later), 6.5, 102.5, 2, 1024);
    assert_eq!(soon.idle_percent, 88.0);
    assert_eq!(soon.cpu_base, later.cpu_base);
    // Saturated: never below 0.
    let busy = ProcessStatus::next(Some(&soon), 20.0, 104.0, 2, 1024);
    assert_eq!(busy.idle_percent, 0.0);
}
