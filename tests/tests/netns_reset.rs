//! netns tier of the active resets: an idle session — the client sends nothing — is reset at once
//! when its server is fenced (the leader key left it) or when the address it dialled (the VIP) left
//! the node: the client's socket reads ECONNRESET, the server's socket is gone, and the session
//! counters drop to the sessions that are really open. Without active resets such a session would
//! stay open to the demoted primary until it next spoke.

use std::{
    io::Read,
    net::TcpStream,
    process::Command,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use pgsvc_tests::{
    agent_rig::{AgentRig, LB, VIP, node_addr, pgsvc_bin},
    etcd::{self, Etcd, LEADER_KEY},
    guard::{ChildGuard, PinDir},
    local_client::{TestCgroup, python},
    netns::{Conn, http_request},
    require_root,
};

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

/// HAProxy's schedule (`--check-burst 0`), rise and fall 3 every second: nothing but the key can
/// take pg-test-1 out within the time these tests wait.
const SLOW: &str = "inter 1s fastinter 1s downinter 1s rise 3 fall 3 on-marked-down shutdown-sessions slowstart 0s maxconn 3000 weight 100";

/// The rig's inventory plus an `etcd` group on the LB host.
fn inventory_with_etcd(options: &str) -> String {
    pgsvc_tests::agent_rig::inventory(options, "").replacen(
        "  children:\n",
        &format!(
            "  children:\n    etcd:\n      hosts:\n        {LB}: {{ etcd_seq: 1 }}\n      vars: {{ etcd_cluster: etcd }}\n"
        ),
        1,
    )
}

/// What an idle client's blocked read returned, and when.
struct Outcome {
    at: Instant,
    result: std::io::Result<usize>,
}

/// Blocks in read(2) on a clone of the session's socket (the client sends nothing) for up to
/// `limit`; the thread reports when and how the read ended.
fn watch(conn: &Conn, limit: Duration) -> JoinHandle<Outcome> {
    let mut s: TcpStream = conn.stream.try_clone().expect("clone the client's socket");
    s.set_read_timeout(Some(limit)).expect("read timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let result = s.read(&mut buf);
        Outcome {
            at: Instant::now(),
            result,
        }
    })
}

/// Established TCP sockets on `port` in node `i`'s namespace (its pgbouncer's side of sessions).
fn server_sockets(rig: &AgentRig, i: usize, port: u16) -> usize {
    let out = rig
        .topo
        .host(2 + i)
        .ns
        .command("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn sessions(rig: &AgentRig, service: &str) -> u64 {
    let s = rig.status();
    s["services"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == service))
        .and_then(|x| x["current_sessions"].as_u64())
        .unwrap_or_else(|| panic!("{service} not in /status: {s}"))
}

/// Asserts the read ended in a reset and returns how long after `since` it did.
fn reset_after(o: Outcome, since: Instant, what: &str) -> Duration {
    match &o.result {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            o.at.saturating_duration_since(since)
        }
        other => panic!("{what}: the idle client's read ended with {other:?}, not a reset"),
    }
}

#[test]
fn idle_sessions_of_a_fenced_member_are_reset_at_once() {
    let test = "idle_sessions_of_a_fenced_member_are_reset_at_once";
    if !require_root(test) {
        return;
    }
    if !etcd::available() {
        pgsvc_tests::skip(test, "needs /usr/bin/etcd (cargo xtask setup installs it)");
        return;
    }
    let mut rig = AgentRig::start_with(&inventory_with_etcd(SLOW), stub(), &["--check-burst", "0"]);
    let lb = rig.topo.host(1).ns.name.clone();
    let etcd = Etcd::start(
        &lb,
        |bin| rig.topo.host(1).ns.command(bin),
        LB,
        &rig.dir,
        "pg-test-1",
    );
    rig.wait_for("fencing on pg-test-1", Duration::from_secs(30), |r| {
        let d = &r.status()["dcs"][0];
        d["fencing"] == true && d["leader"] == "pg-test-1"
    });
    rig.agent_args = vec!["--check-burst".into(), "0".into()];

    // Two idle sessions to the primary (full NAT to pg-test-1's pgbouncer): one that spoke once,
    // one that only read the greeting; and one to the offline service, which must survive.
    let mut spoke = rig.connect(5433).expect("session to 5433");
    assert_eq!(spoke.server, "pg-test-1:6432");
    assert_eq!(spoke.echo(b"select 1").expect("echo"), b"select 1");
    let quiet = rig.connect(5433).expect("second session to 5433");
    assert_eq!(quiet.server, "pg-test-1:6432");
    let mut other = rig.connect(5438).expect("session to 5438");
    assert_eq!(other.server, "pg-test-3:5432");
    rig.wait_for("3 sessions counted", Duration::from_secs(5), |r| {
        sessions(r, "pg-test-primary") == 2 && sessions(r, "pg-test-offline") == 1
    });
    assert_eq!(server_sockets(&rig, 0, 6432), 2);

    let watchers = [
        watch(&spoke, Duration::from_secs(5)),
        watch(&quiet, Duration::from_secs(5)),
    ];
    let moved = Instant::now();
    etcd.put(LEADER_KEY, "pg-test-2").expect("move the key");
    let put_took = moved.elapsed();
    let delays: Vec<Duration> = watchers
        .into_iter()
        .zip(["the session that spoke", "the quiet session"])
        .map(|(w, what)| reset_after(w.join().expect("watcher"), moved, what))
        .collect();
    // The servers' side: their sockets were reset too (not left to a 24 h idle timeout).
    rig.wait_for("pg-test-1's sockets reset", Duration::from_secs(2), |r| {
        server_sockets(r, 0, 6432) == 0
    });
    // The counters: only the offline session is left.
    rig.wait_for(
        "counters back to the true value",
        Duration::from_secs(3),
        |r| sessions(r, "pg-test-primary") == 0 && sessions(r, "pg-test-offline") == 1,
    );
    assert_eq!(
        other.echo(b"still").expect("the offline session survives"),
        b"still"
    );
    let log = rig.log_text();
    assert!(
        log.contains("sessions reset now") && log.contains("fenced"),
        "no reset line in the log:\n{log}"
    );
    let (code, body) = rig.http("GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    let line = "pgsvc_sessions_reset_total{proxy=\"pg-test-primary\",server=\"pg-test-1\",reason=\"fenced\"} 2";
    assert!(body.contains(line), "no `{line}` in /metrics:\n{body}");
    eprintln!(
        "reset: idle sessions of the fenced pg-test-1 reset {:?} and {:?} after the key write started (the write itself took {put_took:?})",
        delays[0], delays[1]
    );
    // Issue 11's bound, counted from the moment etcd acknowledged the write (the write itself
    // can take hundreds of ms on a busy machine: etcd syncs its log). Without active resets the
    // reads would run into their 5 s timeout.
    for d in &delays {
        assert!(
            d.saturating_sub(put_took) <= Duration::from_millis(100),
            "reset {d:?} after the key write started, which took {put_took:?}"
        );
    }
}

#[test]
fn an_idle_flow_to_the_vip_is_reset_when_the_vip_leaves_the_node() {
    let test = "an_idle_flow_to_the_vip_is_reset_when_the_vip_leaves_the_node";
    if !require_root(test) {
        return;
    }
    let rig = AgentRig::start(&pgsvc_tests::agent_rig::inventory(SLOW, ""), stub());
    let session = rig.connect(5433).expect("session to the VIP");
    assert_eq!(session.server, "pg-test-1:6432");
    rig.wait_for("1 session counted", Duration::from_secs(5), |r| {
        sessions(r, "pg-test-primary") == 1
    });
    assert_eq!(server_sockets(&rig, 0, 6432), 1);
    let watcher = watch(&session, Duration::from_secs(6));
    // vip-manager moves the VIP away (the leader moved): the agent sees it at its next look at
    // the node's addresses (every second).
    let gone = Instant::now();
    let st = Command::new("ip")
        .args([
            "-n",
            rig.lb_ns(),
            "addr",
            "del",
            &format!("{VIP}/24"),
            "dev",
            "eth0",
        ])
        .status()
        .expect("ip addr del");
    assert!(st.success(), "removing the VIP failed");
    let took = reset_after(watcher.join().expect("watcher"), gone, "the VIP's session");
    rig.wait_for("pg-test-1's socket reset", Duration::from_secs(2), |r| {
        server_sockets(r, 0, 6432) == 0
    });
    rig.wait_for("no session counted", Duration::from_secs(3), |r| {
        sessions(r, "pg-test-primary") == 0
    });
    let (_, body) = rig.http("GET", "/metrics").expect("GET /metrics");
    assert!(
        body.contains("reason=\"address_left\"} 1"),
        "no address_left reset in /metrics:\n{body}"
    );
    eprintln!(
        "reset: the VIP's idle session reset {took:?} after the VIP was removed (addresses polled every second)"
    );
}

/// A client on the node itself: connects, prints the greeting, then blocks reading its socket
/// (sending nothing) and prints how and when (epoch seconds) the read ended.
const IDLE_CLIENT_PY: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.makefile("r").readline().strip(), flush=True)
s.settimeout(10)
try:
    n = len(s.recv(64))
    print(f"DATA {n} {time.time()}", flush=True)
except OSError as e:
    print(f"{type(e).__name__} {time.time()}", flush=True)
"#;

/// The idle local client, in namespace `ns` and cgroup `cg`.
struct IdleLocalClient {
    child: ChildGuard,
    out: std::io::BufReader<std::process::ChildStdout>,
    server: String,
}

impl IdleLocalClient {
    fn open(ns: &str, cg: &TestCgroup, addr: std::net::Ipv4Addr, port: u16) -> Self {
        use std::io::BufRead as _;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, python(), "-c", IDLE_CLIENT_PY])
            .args([addr.to_string(), port.to_string()])
            .stdout(std::process::Stdio::piped());
        let procs = cg.enter_on_spawn(&mut cmd);
        let mut child = ChildGuard::spawn(cmd);
        drop(procs);
        let stdout = child
            .0
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("stdout");
        let mut out = std::io::BufReader::new(stdout);
        let mut line = String::new();
        out.read_line(&mut line).expect("the client's greeting");
        let server = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        Self { child, out, server }
    }

    /// How the idle read ended: (exception name or DATA, epoch seconds).
    fn ended(&mut self) -> (String, f64) {
        use std::io::BufRead as _;
        let mut line = String::new();
        self.out
            .read_line(&mut line)
            .expect("the client's last line");
        let mut f = line.split_whitespace();
        let what = f.next().unwrap_or("EOF").to_owned();
        let at = f.last().and_then(|t| t.parse().ok()).unwrap_or(0.0);
        let _ = &self.child;
        (what, at)
    }
}

fn epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn status_at(rig: &AgentRig, addr: std::net::Ipv4Addr) -> serde_json::Value {
    let (code, body) = rig
        .client
        .run(move |_| http_request(std::net::SocketAddr::from((addr, 9102)), "GET", "/status"))
        .expect("GET /status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status JSON")
}

#[test]
fn a_local_members_and_a_local_clients_idle_sessions_are_reset_when_fenced() {
    let test = "a_local_members_and_a_local_clients_idle_sessions_are_reset_when_fenced";
    if !require_root(test) {
        return;
    }
    if !etcd::available() {
        pgsvc_tests::skip(test, "needs /usr/bin/etcd (cargo xtask setup installs it)");
        return;
    }
    let (Some(cg_lb), Some(cg_n1)) = (TestCgroup::new(), TestCgroup::new()) else {
        pgsvc_tests::skip(test, "cgroup v2 is not mounted on this machine");
        return;
    };
    // The LB host serves local clients (its cgroup); a second agent on pg-test-1's own node makes
    // pg-test-1 a local member there (node-resident).
    let mut rig = AgentRig::start_with(
        &inventory_with_etcd(SLOW),
        stub(),
        &["--check-burst", "0", "--cgroup", &cg_lb.arg()],
    );
    let lb = rig.topo.host(1).ns.name.clone();
    let etcd = Etcd::start(
        &lb,
        |bin| rig.topo.host(1).ns.command(bin),
        LB,
        &rig.dir,
        "pg-test-1",
    );
    rig.wait_for("fencing on pg-test-1", Duration::from_secs(30), |r| {
        let d = &r.status()["dcs"][0];
        d["fencing"] == true && d["leader"] == "pg-test-1"
    });
    rig.agent_args = vec![];
    let n1 = node_addr(0);
    let pins = PinDir::new("rst-n1");
    let n1_log = rig.dir.join("agent-n1.log");
    let log = std::fs::File::create(&n1_log).expect("log file");
    let mut cmd = Command::new(pgsvc_bin());
    cmd.args(["--netns", &rig.topo.host(2).ns.name, "run", "--config"])
        .arg(&rig.config)
        .args(["--iface", "eth0", "--xdp-mode", "skb", "--check-burst", "0"])
        .args([
            "--admin",
            &format!("{n1}:9102"),
            "--metrics",
            "off",
            "--pin-dir",
        ])
        .arg(pins.path())
        .args(["--cgroup", &cg_n1.arg(), "--log", "info"])
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let _n1_agent = ChildGuard::spawn(cmd);
    let n1_log_text = || std::fs::read_to_string(&n1_log).unwrap_or_default();
    let t0 = Instant::now();
    loop {
        let ok = rig
            .client
            .run(move |_| http_request(std::net::SocketAddr::from((n1, 9102)), "GET", "/ready"))
            .is_ok_and(|(c, _)| c == 200)
            && status_at(&rig, n1)["dcs"][0]["leader"] == "pg-test-1";
        if ok {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "pg-test-1's node agent not ready and fencing; log:\n{}",
            n1_log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A client host's session to pg-test-1's node address: its own member, delivered locally
    // (the member sees the client's own address).
    let member_session = rig
        .client
        .run(move |_| Conn::open(std::net::SocketAddr::from((n1, 5433)), None))
        .expect("session to pg-test-1:5433");
    assert_eq!(member_session.server, "pg-test-1:6432");
    assert_eq!(
        member_session.peer_seen.ip(),
        std::net::IpAddr::V4(pgsvc_tests::agent_rig::CLIENT),
        "not the local path: the member saw {}",
        member_session.peer_seen
    );
    // A client on the LB host itself (cgroup connect4) to the primary service.
    let mut local_client = IdleLocalClient::open(&lb, &cg_lb, LB, 5433);
    assert_eq!(local_client.server, "pg-test-1:6432");
    let t0 = Instant::now();
    while sessions(&rig, "pg-test-primary") != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the local client is not counted: {}",
            rig.status()["services"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server_sockets(&rig, 0, 6432), 2);

    let watcher = watch(&member_session, Duration::from_secs(5));
    let moved = Instant::now();
    let moved_epoch = epoch();
    etcd.put(LEADER_KEY, "pg-test-2").expect("move the key");
    let put_took = moved.elapsed();
    let member_delay = reset_after(
        watcher.join().expect("watcher"),
        moved,
        "the local member's session",
    );
    let (how, at) = local_client.ended();
    // A destroyed local socket reports ECONNABORTED to its owner (the kernel's tcp_abort); a RST
    // from the server would be ECONNRESET. Either way the session ended without a byte sent.
    assert!(
        how == "ConnectionAbortedError" || how == "ConnectionResetError",
        "the local client's idle read ended with {how}, not a reset or abort; LB log:\n{}",
        rig.log_text()
    );
    let client_delay = at - moved_epoch;
    rig.wait_for("pg-test-1's sockets reset", Duration::from_secs(2), |r| {
        server_sockets(r, 0, 6432) == 0
    });
    rig.wait_for("the LB's counters back to 0", Duration::from_secs(3), |r| {
        sessions(r, "pg-test-primary") == 0
    });
    let t0 = Instant::now();
    loop {
        let s = status_at(&rig, n1);
        let n = s["services"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["name"] == "pg-test-primary"))
            .and_then(|x| x["current_sessions"].as_u64());
        if n == Some(0) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "pg-test-1's node still counts {n:?} sessions; log:\n{}",
            n1_log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        n1_log_text().contains("local_members=1"),
        "no local-member reset in pg-test-1's node log:\n{}",
        n1_log_text()
    );
    assert!(
        rig.log_text().contains("local_clients=1"),
        "no local-client reset in the LB log:\n{}",
        rig.log_text()
    );
    eprintln!(
        "reset: local member's idle session reset {member_delay:?}, local client's socket {how} {:.0} ms after the key write started (the write took {put_took:?})",
        client_delay * 1000.0
    );
    // As above: within 100 ms of etcd acknowledging the key's move.
    for d in [member_delay.as_secs_f64(), client_delay] {
        let after = d - put_took.as_secs_f64();
        assert!(
            after <= 0.1,
            "reset {d:.3}s after the key write started, which took {put_took:?}"
        );
    }
}
