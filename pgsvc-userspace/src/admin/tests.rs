//! The admin API end to end on loopback, and `/metrics` through a strict Prometheus text parser.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use openmetrics_parser::{
    MetricsExposition, PrometheusType, PrometheusValue, prometheus::parse_prometheus,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::fixture::sample_status;
use super::metrics::SERVER_STATES;
use super::*;
use crate::control::{ReloadError, ReloadSummary, ServerStateChange, ServerStateError};

type Exposition = MetricsExposition<PrometheusType, PrometheusValue>;

fn parse(text: &str) -> Exposition {
    match parse_prometheus(text) {
        Ok(exposition) => exposition,
        Err(error) => panic!("/metrics is not Prometheus text: {error}\n{text}"),
    }
}

/// The value of the series of `family` whose labels are exactly `labels`.
fn value(e: &Exposition, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = e.families.get(family)?;
    family.iter_samples().find_map(|sample| {
        let set = sample.get_labelset().ok()?;
        let matches = set.iter().count() == labels.len()
            && labels
                .iter()
                .all(|(name, want)| set.get_label_value(name) == Some(*want));
        if !matches {
            return None;
        }
        Some(match &sample.value {
            PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
            PrometheusValue::Counter(c) => c.value.as_f64(),
            other => panic!("unexpected value {other:?}"),
        })
    })
}

fn must(e: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    value(e, family, labels).unwrap_or_else(|| panic!("no series {family}{labels:?}"))
}

const P: &str = "pg-test-primary";
const O: &str = "pg-test-offline";

#[test]
fn the_parser_is_strict() {
    // Guards the guard: a broken exposition must not slip through the parser used below.
    for broken in [
        "x{a=\"b} 1\n",
        "x 1 2 3\n",
        "# TYPE x counter\nx{a=\"1\"} -1\n",
        "x{a=\"1\",a=\"2\"} 1\n",
        "x one\n",
    ] {
        assert!(parse_prometheus(broken).is_err(), "accepted {broken:?}");
    }
}

#[test]
fn metrics_carry_the_snapshot_values() {
    let e = parse(&render_metrics(&sample_status()));
    let srv = |s: &'static str| [("proxy", P), ("server", s)];
    assert_eq!(
        must(&e, "haproxy_server_current_sessions", &srv("pg-test-1")),
        3.0
    );
    assert_eq!(
        must(&e, "haproxy_server_sessions_total", &srv("pg-test-1")),
        120.0
    );
    assert_eq!(
        must(&e, "haproxy_server_bytes_in_total", &srv("pg-test-1")),
        1_258_291.0
    );
    assert_eq!(
        must(&e, "haproxy_server_bytes_out_total", &srv("pg-test-1")),
        8_808_038.0
    );
    assert_eq!(
        must(&e, "haproxy_server_check_failures_total", &srv("pg-test-2")),
        498.0
    );
    assert_eq!(
        must(&e, "haproxy_server_check_up_down_total", &srv("pg-test-2")),
        2.0
    );
    assert_eq!(
        must(
            &e,
            "haproxy_server_downtime_seconds_total",
            &srv("pg-test-2")
        ),
        1234.5
    );
    assert_eq!(
        must(
            &e,
            "haproxy_server_check_duration_seconds",
            &srv("pg-test-1")
        ),
        0.002
    );
    assert_eq!(
        must(&e, "haproxy_server_check_code", &srv("pg-test-2")),
        503.0
    );
    assert_eq!(
        must(
            &e,
            "haproxy_server_check_last_change_seconds",
            &srv("pg-test-2")
        ),
        42.0
    );
    assert_eq!(
        must(&e, "pgsvc_server_rst_sent_total", &srv("pg-test-2")),
        4.0
    );
    assert_eq!(
        must(
            &e,
            "haproxy_server_weight",
            &[("proxy", O), ("server", "pg-test-1")]
        ),
        50.0
    );
    assert_eq!(
        must(
            &e,
            "pgsvc_server_backup",
            &[("proxy", O), ("server", "pg-test-1")]
        ),
        1.0
    );
    assert_eq!(
        must(
            &e,
            "pgsvc_server_active",
            &[("proxy", O), ("server", "pg-test-3")]
        ),
        0.0
    );
    // Never checked: no duration or code to report.
    assert_eq!(
        value(
            &e,
            "haproxy_server_check_duration_seconds",
            &srv("pg-test-3")
        ),
        None
    );
    assert_eq!(
        value(
            &e,
            "haproxy_server_check_code",
            &[("proxy", O), ("server", "pg-test-3")]
        ),
        None
    );

    let proxy = |p: &'static str| [("proxy", p)];
    assert_eq!(
        must(&e, "haproxy_frontend_current_sessions", &proxy(P)),
        3.0
    );
    assert_eq!(
        must(&e, "haproxy_frontend_sessions_total", &proxy(P)),
        127.0
    );
    assert_eq!(
        must(&e, "haproxy_frontend_bytes_in_total", &proxy(P)),
        1_258_391.0
    );
    assert_eq!(
        must(&e, "haproxy_frontend_bytes_out_total", &proxy(P)),
        8_810_086.0
    );
    assert_eq!(
        must(&e, "haproxy_frontend_limit_sessions", &proxy(P)),
        5000.0
    );
    assert_eq!(must(&e, "haproxy_backend_active_servers", &proxy(P)), 1.0);
    assert_eq!(must(&e, "haproxy_backend_backup_servers", &proxy(O)), 1.0);
    assert_eq!(must(&e, "haproxy_backend_weight", &proxy(P)), 100.0);
    assert_eq!(must(&e, "haproxy_backend_weight", &proxy(O)), 50.0);
    assert_eq!(must(&e, "haproxy_backend_sessions_total", &proxy(P)), 127.0);
    assert_eq!(must(&e, "pgsvc_service_syn_dropped_total", &proxy(P)), 2.0);
    assert_eq!(must(&e, "pgsvc_service_rst_sent_total", &proxy(P)), 4.0);
    assert_eq!(must(&e, "pgsvc_service_using_backups", &proxy(O)), 1.0);

    assert_eq!(must(&e, "haproxy_process_current_connections", &[]), 4.0);
    assert_eq!(
        must(&e, "haproxy_process_start_time_seconds", &[]),
        1_700_000_000.0
    );
    assert_eq!(must(&e, "haproxy_process_uptime_seconds", &[]), 7500.5);
    assert_eq!(
        must(&e, "pgsvc_packets_total", &[("reason", "fwd_established")]),
        123_456.0
    );
    assert_eq!(must(&e, "pgsvc_packets_total", &[("reason", "pass")]), 0.0);
    assert_eq!(must(&e, "pgsvc_flows", &[]), 12.0);
    assert_eq!(must(&e, "pgsvc_flow_table_size", &[]), 65536.0);
    assert_eq!(must(&e, "pgsvc_ready", &[]), 1.0);
    assert_eq!(must(&e, "pgsvc_last_reload_success", &[]), 1.0);
    assert_eq!(must(&e, "pgsvc_build_info", &[("version", "0.1.0")]), 1.0);
    assert_eq!(
        must(
            &e,
            "pgsvc_xdp_info",
            &[("iface", "eth0"), ("mode", "native")]
        ),
        1.0
    );
}

#[test]
fn server_status_is_a_state_set() {
    let e = parse(&render_metrics(&sample_status()));
    let family = &e.families["haproxy_server_status"];
    assert_eq!(family.get_label_names(), ["proxy", "server", "state"]);
    // 5 servers over two services, one series per HAProxy state each.
    assert_eq!(family.iter_samples().count(), 5 * SERVER_STATES.len());
    for (proxy, server, current) in [
        (P, "pg-test-1", Some("UP")),
        (P, "pg-test-2", Some("DOWN")),
        (P, "pg-test-3", None), // UNKNOWN: no HAProxy state applies
        (O, "pg-test-3", Some("DOWN")),
        (O, "pg-test-1", Some("UP")),
    ] {
        for state in SERVER_STATES {
            let want = if Some(state) == current { 1.0 } else { 0.0 };
            let got = must(
                &e,
                "haproxy_server_status",
                &[("proxy", proxy), ("server", server), ("state", state)],
            );
            assert_eq!(got, want, "{proxy}/{server} state {state}");
        }
    }
    assert_eq!(
        must(
            &e,
            "haproxy_backend_status",
            &[("proxy", P), ("state", "UP")]
        ),
        1.0
    );
    assert_eq!(
        must(
            &e,
            "haproxy_backend_status",
            &[("proxy", P), ("state", "DOWN")]
        ),
        0.0
    );

    let mut dark = sample_status();
    dark.services[0].active_servers = 0;
    dark.services[0].servers[0].state = "DOWN".into();
    let e = parse(&render_metrics(&dark));
    assert_eq!(
        must(
            &e,
            "haproxy_backend_status",
            &[("proxy", P), ("state", "UP")]
        ),
        0.0
    );
    assert_eq!(
        must(
            &e,
            "haproxy_backend_status",
            &[("proxy", P), ("state", "DOWN")]
        ),
        1.0
    );
    let up: f64 = SERVER_STATES
        .iter()
        .map(|s| {
            must(
                &e,
                "haproxy_server_status",
                &[("proxy", P), ("server", "pg-test-1"), ("state", s)],
            )
        })
        .sum();
    assert_eq!(up, 1.0);
}

#[test]
fn families_are_typed_and_documented() {
    let e = parse(&render_metrics(&sample_status()));
    assert!(e.families.len() > 40, "only {} families", e.families.len());
    for (name, family) in &e.families {
        assert!(!family.help.is_empty(), "{name} has no HELP");
        let counter = family.family_type == PrometheusType::Counter;
        assert_eq!(
            counter,
            name.ends_with("_total"),
            "{name}: counters and only counters end in _total"
        );
        assert!(
            name.starts_with("haproxy_") || name.starts_with("pgsvc_"),
            "{name}"
        );
        let labels = family.get_label_names();
        if name.starts_with("haproxy_server_") || name.starts_with("pgsvc_server_") {
            assert_eq!(&labels[..2], ["proxy", "server"], "{name}");
        } else if name.starts_with("haproxy_backend_") || name.starts_with("haproxy_frontend_") {
            assert_eq!(labels[0], "proxy", "{name}");
        }
    }
}

#[test]
fn label_values_are_escaped() {
    let mut s = sample_status();
    let odd = "we\"ird\\name\nwith, commas={}";
    s.services[0].name = odd.into();
    s.iface = "eth\"0".into();
    let text = render_metrics(&s);
    let e = parse(&text);
    assert_eq!(
        must(&e, "haproxy_frontend_sessions_total", &[("proxy", odd)]),
        127.0
    );
    assert_eq!(
        must(
            &e,
            "haproxy_server_status",
            &[("proxy", odd), ("server", "pg-test-1"), ("state", "UP")]
        ),
        1.0
    );
    assert_eq!(
        must(
            &e,
            "pgsvc_xdp_info",
            &[("iface", "eth\"0"), ("mode", "native")]
        ),
        1.0
    );
}

#[test]
fn an_empty_snapshot_still_parses() {
    let e = parse(&render_metrics(&Status::default()));
    assert_eq!(must(&e, "pgsvc_ready", &[]), 0.0);
    assert_eq!(must(&e, "haproxy_process_current_connections", &[]), 0.0);
    assert!(!e.families.contains_key("haproxy_server_status"));
    assert!(!e.families.contains_key("pgsvc_last_reload_success"));
}

#[test]
fn non_finite_values_use_prometheus_spelling() {
    let mut s = sample_status();
    s.services[0].servers[1].downtime_seconds = f64::INFINITY;
    s.services[0].servers[0].last_check = Some(crate::status::CheckStatus {
        duration_ms: f64::NAN,
        ..Default::default()
    });
    let text = render_metrics(&s);
    assert!(text.contains("haproxy_server_downtime_seconds_total{proxy=\"pg-test-primary\",server=\"pg-test-2\"} +Inf\n"), "{text}");
    let e = parse(&text);
    assert!(
        must(
            &e,
            "haproxy_server_check_duration_seconds",
            &[("proxy", P), ("server", "pg-test-1")]
        )
        .is_nan()
    );
}

// ---- the HTTP server, on loopback ----

struct TestServer {
    addr: std::net::SocketAddr,
    status: Arc<RwLock<Status>>,
    reloads: Option<mpsc::Receiver<ReloadRequest>>,
    states: Option<mpsc::Receiver<ServerStateRequest>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn start() -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let status = Arc::new(RwLock::new(sample_status()));
    let (reload_tx, reloads) = mpsc::channel(4);
    let (state_tx, states) = mpsc::channel(4);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(serve(
        listener,
        status.clone(),
        reload_tx,
        state_tx,
        shutdown_rx,
    ));
    TestServer {
        addr,
        status,
        reloads: Some(reloads),
        states: Some(states),
        shutdown,
        task,
    }
}

struct Answer {
    code: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("send");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("answer within 10s")
        .expect("read");
    let text = String::from_utf8(got).expect("utf-8 answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {head:?}"));
    let answer = Answer {
        code,
        head: head.to_owned(),
        body: body.to_owned(),
    };
    let length: usize = answer
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .expect("Content-Length");
    if !raw.starts_with(b"HEAD ") {
        assert_eq!(length, answer.body.len(), "Content-Length");
    }
    answer
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Answer {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test]
async fn status_metrics_and_ready() {
    let srv = start().await;
    let a = get(srv.addr, "/status").await;
    assert_eq!(a.code, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let back: Status = serde_json::from_str(&a.body).expect("status JSON");
    assert_eq!(back, sample_status());

    let a = get(srv.addr, "/metrics?x=1").await;
    assert_eq!(a.code, 200);
    assert!(
        a.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{}",
        a.head
    );
    assert_eq!(
        must(
            &parse(&a.body),
            "haproxy_server_current_sessions",
            &[("proxy", P), ("server", "pg-test-1")]
        ),
        3.0
    );

    let a = exchange(srv.addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!((a.code, a.body.as_str()), (200, ""));
    assert!(a.header("content-length").is_some_and(|l| l != "0"));

    assert_eq!(get(srv.addr, "/ready").await.code, 200);
    srv.status.write().expect("lock").ready = false;
    assert_eq!(get(srv.addr, "/ready").await.code, 503);
    // The snapshot is read per request.
    srv.status.write().expect("lock").services[0].servers[0].current_sessions = 9;
    let a = get(srv.addr, "/metrics").await;
    assert_eq!(
        must(
            &parse(&a.body),
            "haproxy_server_current_sessions",
            &[("proxy", P), ("server", "pg-test-1")]
        ),
        9.0
    );
}

#[tokio::test]
async fn reload_ok_and_refused() {
    let mut srv = start().await;
    let mut reloads = srv.reloads.take().expect("receiver");
    let agent = tokio::spawn(async move {
        let mut n = 0;
        while let Some(req) = reloads.recv().await {
            n += 1;
            let answer = if n == 1 {
                Ok(ReloadSummary {
                    added: 1,
                    changed: 0,
                    removed: 0,
                    unchanged: 2,
                })
            } else {
                Err(ReloadError::PortInSnatRange {
                    service: "pg-test-extra".to_owned(),
                    port: 41000,
                    min: 40000,
                    max: 59999,
                })
            };
            let _ = req.reply.send(answer);
        }
    });
    let post = b"POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n";
    let a = exchange(srv.addr, post).await;
    assert_eq!(
        (a.code, a.body.as_str()),
        (200, "1 added, 0 changed, 0 removed, 2 unchanged\n")
    );
    let a = exchange(
        srv.addr,
        b"POST /reload HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert_eq!(
        (a.code, a.body.as_str()),
        (
            422,
            "service pg-test-extra listens on port 41000, inside the SNAT port range 40000-59999\n"
        )
    );
    // The agent has stopped taking reloads.
    let _ = srv.shutdown.send(true);
    agent.abort();
    let _ = agent.await;
    drop(srv.task);
}

#[tokio::test]
async fn reload_without_an_agent_is_503() {
    let mut srv = start().await;
    drop(srv.reloads.take());
    let a = exchange(srv.addr, b"POST /reload HTTP/1.1\r\n\r\n").await;
    assert_eq!(a.code, 503, "{}", a.body);
}

#[tokio::test]
async fn wrong_routes_and_methods() {
    let srv = start().await;
    assert_eq!(get(srv.addr, "/nope").await.code, 404);
    assert_eq!(get(srv.addr, "/").await.code, 404);
    let a = exchange(srv.addr, b"POST /status HTTP/1.1\r\n\r\n").await;
    assert_eq!((a.code, a.header("allow")), (405, Some("GET, HEAD")));
    let a = get(srv.addr, "/reload").await;
    assert_eq!((a.code, a.header("allow")), (405, Some("POST")));
    assert_eq!(
        exchange(srv.addr, b"DELETE /metrics HTTP/1.1\r\n\r\n")
            .await
            .code,
        405
    );
}

#[tokio::test]
async fn bad_requests_get_4xx_and_the_server_survives() {
    let srv = start().await;
    assert_eq!(exchange(srv.addr, b"hello\r\n\r\n").await.code, 400);
    assert_eq!(
        exchange(srv.addr, b"GET /status HTTP/1.1\r\nbroken header\r\n\r\n")
            .await
            .code,
        400
    );
    assert_eq!(
        exchange(srv.addr, b"GET /status HTTP/3\r\n\r\n").await.code,
        505
    );
    assert_eq!(
        exchange(
            srv.addr,
            b"POST /reload HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n"
        )
        .await
        .code,
        413
    );
    // Binary junk followed by end of input.
    let mut junk = TcpStream::connect(srv.addr).await.expect("connect");
    junk.write_all(&[0, 159, 146, 150, 255, 13])
        .await
        .expect("send");
    junk.shutdown().await.expect("half-close");
    let mut got = Vec::new();
    junk.read_to_end(&mut got).await.expect("read");
    assert!(
        got.starts_with(b"HTTP/1.1 400 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // 20 KiB of headers: refused whole, and the answer still arrives intact.
    let big = format!(
        "GET /status HTTP/1.1\r\n{}\r\n",
        "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(400)
    );
    assert!(big.len() > http::MAX_HEAD);
    assert_eq!(exchange(srv.addr, big.as_bytes()).await.code, 431);
    // A head just under the limit is fine.
    let fits = format!(
        "GET /ready HTTP/1.1\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(http::MAX_HEAD - 100)
    );
    assert_eq!(exchange(srv.addr, fits.as_bytes()).await.code, 200);
    // A client that connects and leaves without a word gets nothing and costs nothing.
    drop(TcpStream::connect(srv.addr).await.expect("connect"));
    assert_eq!(get(srv.addr, "/ready").await.code, 200);
}

#[tokio::test]
async fn concurrent_clients() {
    let srv = start().await;
    let clients: Vec<_> = (0..32)
        .map(|_| tokio::spawn(get(srv.addr, "/metrics")))
        .collect();
    for c in clients {
        assert_eq!(c.await.expect("client").code, 200);
    }
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let srv = start().await;
    assert_eq!(get(srv.addr, "/ready").await.code, 200);
    // An idle connection must not hold the shutdown up for longer than the grace period.
    let _idle = TcpStream::connect(srv.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    srv.shutdown.send(true).expect("send shutdown");
    tokio::time::timeout(Duration::from_secs(3), srv.task)
        .await
        .expect("serve returns")
        .expect("no panic");
    assert!(
        TcpStream::connect(srv.addr).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test]
async fn shutdown_already_set_returns_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let (reload_tx, _reloads) = mpsc::channel(1);
    let (state_tx, _states) = mpsc::channel(1);
    let (_tx, rx) = watch::channel(true);
    let served = serve(
        listener,
        Arc::new(RwLock::new(Status::default())),
        reload_tx,
        state_tx,
        rx,
    );
    tokio::time::timeout(Duration::from_secs(1), served)
        .await
        .expect("returns at once");
}

// ---- the read-only metrics listener ----

async fn start_metrics(auth: Option<BasicAuth>) -> (std::net::SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let status = Arc::new(RwLock::new(sample_status()));
    let (shutdown, shutdown_rx) = watch::channel(false);
    tokio::spawn(serve_metrics(listener, status, auth, shutdown_rx));
    (addr, shutdown)
}

#[tokio::test]
async fn the_metrics_listener_serves_get_metrics_only() {
    let (addr, _shutdown) = start_metrics(None).await;
    let a = get(addr, "/metrics").await;
    assert_eq!(a.code, 200);
    assert_eq!(a.header("content-type"), Some(http::PROMETHEUS));
    let e = parse(&a.body);
    assert!(e.families.contains_key("haproxy_process_idle_time_percent"));
    // Nothing that changes state, and none of the admin routes.
    for raw in [
        &b"POST /reload HTTP/1.1\r\n\r\n"[..],
        b"GET /reload HTTP/1.1\r\n\r\n",
        b"GET /status HTTP/1.1\r\n\r\n",
        b"GET /ready HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(exchange(addr, raw).await.code, 404, "{raw:?}");
    }
    let a = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!((a.code, a.header("allow")), (405, Some("GET, HEAD")));
    let a = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!((a.code, a.body.as_str()), (200, ""));
}

#[tokio::test]
async fn the_metrics_listener_asks_for_basic_auth() {
    let auth = BasicAuth::parse("prom:s3cret").expect("credentials");
    let (addr, _shutdown) = start_metrics(Some(auth)).await;
    let a = get(addr, "/metrics").await;
    assert_eq!(a.code, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some("Basic realm=\"pgsvc metrics\"")
    );
    // base64("prom:wrong"), then base64("prom:s3cret").
    let wrong = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nAuthorization: Basic cHJvbTp3cm9uZw==\r\n\r\n",
    )
    .await;
    assert_eq!(wrong.code, 401);
    let right = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nAuthorization: Basic cHJvbTpzM2NyZXQ=\r\n\r\n",
    )
    .await;
    assert_eq!(right.code, 200);
    assert!(right.body.contains("haproxy_server_status{"));
}

#[tokio::test]
async fn server_state_is_set_through_the_agent_and_read_from_the_snapshot() {
    let mut srv = start().await;
    let mut states = srv.states.take().expect("receiver");
    let agent = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(req) = states.recv().await {
            seen.push((req.proxy.clone(), req.server.clone(), req.state));
            let answer = if req.proxy != P {
                Err(ServerStateError::UnknownProxy { proxy: req.proxy })
            } else if req.server == "pg-test-9" {
                Err(ServerStateError::UnknownServer {
                    proxy: req.proxy,
                    server: req.server,
                })
            } else {
                Ok(ServerStateChange {
                    proxy: req.proxy,
                    server: req.server,
                    from: AdminState::Ready,
                    to: req.state,
                    not_saved: None,
                })
            };
            let _ = req.reply.send(answer);
        }
        seen
    });
    let post = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let a = exchange(
        srv.addr,
        post("/servers/pg-test-primary/pg-test-1/state", "drain\n").as_bytes(),
    )
    .await;
    assert_eq!(
        (a.code, a.body.as_str()),
        (200, "pg-test-primary/pg-test-1: ready -> drain\n")
    );
    let a = exchange(
        srv.addr,
        post("/servers/pg-test-nope/pg-test-1/state", "maint").as_bytes(),
    )
    .await;
    assert_eq!(a.code, 404, "{}", a.body);
    assert!(a.body.contains("pg-test-nope"), "{}", a.body);
    let a = exchange(
        srv.addr,
        post("/servers/pg-test-primary/pg-test-9/state", "MAINT").as_bytes(),
    )
    .await;
    assert_eq!(a.code, 404, "{}", a.body);
    // A body that is not a state never reaches the agent.
    let a = exchange(
        srv.addr,
        post("/servers/pg-test-primary/pg-test-1/state", "off").as_bytes(),
    )
    .await;
    assert_eq!(a.code, 400, "{}", a.body);
    assert!(a.body.contains("ready, drain or maint"), "{}", a.body);
    let a = exchange(
        srv.addr,
        post("/servers/pg-test-primary/state", "drain").as_bytes(),
    )
    .await;
    assert_eq!(a.code, 404, "{}", a.body);
    let a = exchange(
        srv.addr,
        b"DELETE /servers/pg-test-primary/pg-test-1/state HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!((a.code, a.header("allow")), (405, Some("GET, HEAD, POST")));
    // GET answers from the snapshot.
    if let Ok(mut s) = srv.status.write() {
        s.services[0].servers[0].admin_state = AdminState::Maint;
    }
    let a = get(srv.addr, "/servers/pg-test-primary/pg-test-1/state").await;
    assert_eq!((a.code, a.body.as_str()), (200, "maint\n"));
    let a = get(srv.addr, "/servers/pg-test-primary/pg-test-2/state").await;
    assert_eq!((a.code, a.body.as_str()), (200, "ready\n"));
    assert_eq!(
        get(srv.addr, "/servers/pg-test-primary/pg-test-9/state")
            .await
            .code,
        404
    );
    let _ = srv.shutdown.send(true);
    let _ = srv.task.await;
    let seen = agent.await.expect("agent task");
    assert_eq!(
        seen,
        [
            (P.to_owned(), "pg-test-1".to_owned(), AdminState::Drain),
            (
                "pg-test-nope".to_owned(),
                "pg-test-1".to_owned(),
                AdminState::Maint
            ),
            (P.to_owned(), "pg-test-9".to_owned(), AdminState::Maint),
        ]
    );
}
