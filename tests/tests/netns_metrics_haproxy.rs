//! netns tier: pgsvc's read-only metrics listener against a real HAProxy 2.6 serving the same
//! services. HAProxy runs Pigsty's configuration (`pgsvc render haproxy` plus the exporter frontend
//! Pigsty adds) in a namespace of its own with only loopback, its servers unreachable: only the
//! shapes matter. Every family Pigsty's dashboards and rules query must exist in pgsvc's scrape with
//! HAProxy's TYPE and label names; the listener serves GET /metrics only, behind basic auth.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use openmetrics_parser::{
    MetricsExposition, PrometheusType, PrometheusValue, prometheus::parse_prometheus,
};
use pgsvc_tests::{
    agent_rig::{AgentRig, LB, NORM, inventory, pgsvc_bin},
    guard::{ChildGuard, NetNs},
    netns::NsWorker,
    require_root, skip,
};

type Parsed = MetricsExposition<PrometheusType, PrometheusValue>;

const PIGSTY_NAMES: &str =
    include_str!("../../pgsvc-userspace/testdata/pigsty-haproxy-metric-names.txt");
/// In Pigsty's list but not emitted by HAProxy 2.6 for a TCP `listen` (HTTP backends only; added
/// after 2.6): pgsvc still emits them, so only pgsvc's side is checked.
const NOT_IN_HAPROXY_26_TCP: [&str; 2] = [
    "haproxy_backend_http_requests_total",
    "haproxy_server_limit_session_rate",
];
const METRICS_PORT: u16 = 9101;
/// base64("prom:s3cret")
const AUTH: &str = "Basic cHJvbTpzM2NyZXQ=";

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

/// One GET/POST with an optional Authorization header: (status, head, body).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (code, head.to_owned(), body)
}

/// The body of a chunked answer (HAProxy's exporter streams).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

fn parse(what: &str, text: &str) -> Parsed {
    parse_prometheus(text).unwrap_or_else(|e| panic!("{what} is not Prometheus text: {e}\n{text}"))
}

/// name -> (TYPE, label names) of every family.
fn shapes(e: &Parsed) -> BTreeMap<String, (String, Vec<String>)> {
    e.families
        .iter()
        .map(|(name, f)| {
            (
                name.clone(),
                (format!("{:?}", f.family_type), f.get_label_names().to_vec()),
            )
        })
        .collect()
}

/// Pigsty's configuration for the rig's inventory, with the exporter frontend Pigsty adds, every
/// service bound on loopback (the namespace has nothing else).
fn haproxy_config(rig: &AgentRig) -> String {
    let out = Command::new(pgsvc_bin())
        .args(["render", "haproxy", "--config"])
        .arg(&rig.config)
        .output()
        .expect("pgsvc render haproxy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout);
    let mut cfg = String::new();
    for line in rendered.lines() {
        // Pigsty's global maxconn needs ~131k descriptors; the shapes do not depend on it.
        if line.trim_start().starts_with("maxconn")
            && line.split_whitespace().nth(1) == Some("65535")
        {
            cfg.push_str("    maxconn 4096\n");
            continue;
        }
        match line.trim_start().strip_prefix("bind ") {
            Some(addr) => {
                let port = addr.rsplit(':').next().expect("bind port");
                cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
            }
            None => {
                cfg.push_str(line);
                cfg.push('\n');
            }
        }
    }
    cfg.push_str(&format!(
        "\nfrontend stats\n    mode http\n    bind 127.0.0.1:{METRICS_PORT}\n    \
         http-request use-service prometheus-exporter if {{ path /metrics }}\n"
    ));
    cfg
}

#[test]
fn pgsvc_metrics_have_every_family_pigsty_reads_from_haproxy() {
    if !require_root("pgsvc_metrics_have_every_family_pigsty_reads_from_haproxy") {
        return;
    }
    if Command::new("haproxy").arg("-v").output().is_err() {
        skip(
            "pgsvc_metrics_have_every_family_pigsty_reads_from_haproxy",
            "haproxy is not installed (apt-get install haproxy)",
        );
        return;
    }
    let rig = AgentRig::start_with(
        &inventory(NORM, ""),
        stub(),
        &[
            "--metrics",
            &format!("{LB}:{METRICS_PORT}"),
            "--metrics-auth",
            "prom:s3cret",
        ],
    );
    // Some traffic, so rates, peaks and last-session figures are live.
    assert!(!rig.land(5433, 3).is_empty());

    // HAProxy with the same services, alone in a loopback-only namespace.
    let ns = NetNs::new("hap");
    let cfg_path = rig.dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, haproxy_config(&rig)).expect("haproxy.cfg");
    let check = Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(&cfg_path)
        .output()
        .expect("haproxy -c");
    assert!(
        check.status.success(),
        "haproxy refuses the rendered config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let log_path = rig.dir.join("haproxy.log");
    let log = std::fs::File::create(&log_path).expect("haproxy log");
    let mut cmd = ns.command("haproxy");
    cmd.args(["-db", "-f"])
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(log);
    let mut haproxy = ChildGuard::spawn(cmd);
    let local = NsWorker::start(&ns.name, || ());
    let stats = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
    let deadline = Instant::now() + Duration::from_secs(10);
    let haproxy_text = loop {
        let got = local.run(move |_| {
            TcpStream::connect_timeout(&stats, Duration::from_millis(200))
                .ok()
                .map(|_| request(stats, "GET", "/metrics", None))
        });
        match got {
            Some((200, _, body)) => break body,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!(
                "HAProxy's exporter did not answer: {other:?}; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ),
        }
    };
    haproxy.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));

    // pgsvc's metrics listener, from the client.
    let addr = SocketAddr::from((LB, METRICS_PORT));
    let (code, head, _) = rig
        .client
        .run(move |_| request(addr, "GET", "/metrics", None));
    assert_eq!(code, 401, "{head}");
    assert!(head.contains("WWW-Authenticate: Basic"), "{head}");
    let (code, _, _) = rig
        .client
        .run(move |_| request(addr, "GET", "/metrics", Some("Basic cHJvbTp3cm9uZw==")));
    assert_eq!(code, 401, "wrong password accepted");
    let (code, _, _) = rig
        .client
        .run(move |_| request(addr, "POST", "/reload", Some(AUTH)));
    assert_eq!(code, 404, "the metrics listener must not reload");
    let (code, _, _) = rig
        .client
        .run(move |_| request(addr, "POST", "/metrics", Some(AUTH)));
    assert_eq!(code, 405);
    let (code, _, _) = rig
        .client
        .run(move |_| request(addr, "GET", "/status", Some(AUTH)));
    assert_eq!(code, 404);
    let (code, head, pgsvc_text) = rig
        .client
        .run(move |_| request(addr, "GET", "/metrics", Some(AUTH)));
    assert_eq!(code, 200, "{head}");

    let theirs = shapes(&parse("HAProxy's /metrics", &haproxy_text));
    let ours = shapes(&parse("pgsvc's /metrics", &pgsvc_text));
    let names: Vec<&str> = PIGSTY_NAMES.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(names.len(), 96);
    let mut problems = Vec::new();
    for name in names {
        let got = ours.get(name);
        match (theirs.get(name), got) {
            (_, None) => problems.push(format!("{name}: missing from pgsvc")),
            (Some(want), Some(got)) if want != got => {
                problems.push(format!("{name}: HAProxy {want:?}, pgsvc {got:?}"));
            }
            (None, Some(_)) if !NOT_IN_HAPROXY_26_TCP.contains(&name) => {
                problems.push(format!("{name}: not in HAProxy's scrape"));
            }
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!(
        "HAProxy: {} families, pgsvc: {} families ({} haproxy_*)",
        theirs.len(),
        ours.len(),
        ours.keys().filter(|n| n.starts_with("haproxy_")).count()
    );
}
