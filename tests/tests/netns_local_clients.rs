//! netns tier of local clients: processes on the node itself (`psql -h 127.0.0.1 -p 5433`, the
//! node's address, the VIP) are balanced by the cgroup socket programs of the real `pgsvc run`. The
//! agent runs in the rig's LB namespace, which plays the node; its programs are attached to a child
//! cgroup this test creates (`--cgroup`), and the test's clients run inside that cgroup and that
//! namespace, so nothing else on the machine is touched. Also: the port-conflict refusal
//! (`--takeover`), a bad `--cgroup`, and an agent on a host without cgroup v2.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pgsvc_tests::{
    agent_rig::{AgentRig, LB, VIP, inventory, pgsvc_bin},
    guard::{PinDir, unique},
    local_client::{LocalClient, TestCgroup},
    netns::{NsWorker, Topology, http_request},
    require_root, skip,
};

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

const FAST: &str = "inter 1s fastinter 500ms downinter 1s rise 2 fall 2 on-marked-down shutdown-sessions slowstart 0s maxconn 3000 weight 100";

fn current_sessions(rig: &AgentRig, service: &str) -> u64 {
    let s = rig.status();
    s["services"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == service))
        .and_then(|svc| svc["current_sessions"].as_u64())
        .unwrap_or_else(|| panic!("{service} not in /status: {s}"))
}

/// The value of the metric line starting with `prefix` (name and labels).
fn metric(rig: &AgentRig, prefix: &str) -> Option<f64> {
    let (code, body) = rig.http("GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn clients_on_the_node_reach_the_right_member_through_every_local_address() {
    if !require_root("clients_on_the_node_reach_the_right_member") {
        return;
    }
    let Some(cg) = TestCgroup::new() else {
        skip(
            "clients_on_the_node_reach_the_right_member",
            "cgroup v2 is not mounted on this machine",
        );
        return;
    };
    let mut rig = AgentRig::start_with(&inventory(FAST, ""), stub(), &["--cgroup", &cg.arg()]);
    let node = rig.lb_ns().to_owned();
    let st = rig.status();
    assert_eq!(
        st["local_clients"].as_str(),
        Some(format!("served (cgroup {})", cg.arg()).as_str()),
        "{st}"
    );
    assert_eq!(metric(&rig, "pgsvc_local_clients_served "), Some(1.0));

    // Every local address, both services: the right member, and getpeername shows what was
    // dialled. The member sees the node's own address as the client (the socket's own source).
    for addr in [Ipv4Addr::LOCALHOST, LB, VIP] {
        for (port, want) in [(5433, "pg-test-1:6432"), (5434, "pg-test-2:6432")] {
            let c = LocalClient::open(&node, Some(&cg), addr, port)
                .unwrap_or_else(|e| panic!("local client: {e}\n{}", rig.log_text()));
            assert_eq!(c.server, want, "{addr}:{port}");
            assert_eq!(c.peer, SocketAddr::from((addr, port)), "getpeername");
            assert_eq!(
                c.seen_by_server.ip(),
                std::net::IpAddr::V4(LB),
                "{addr}:{port}: the member should see the node's address"
            );
        }
    }

    // Sessions count while open (status and /metrics), and drop to 0 once the sockets are closed.
    let held: Vec<LocalClient> = (0..3)
        .map(|_| LocalClient::open(&node, Some(&cg), LB, 5433).expect("held client"))
        .collect();
    rig.wait_for("3 local sessions on 5433", Duration::from_secs(5), |r| {
        current_sessions(r, "pg-test-primary") == 3
    });
    assert_eq!(
        metric(
            &rig,
            "haproxy_frontend_current_sessions{proxy=\"pg-test-primary\"}"
        ),
        Some(3.0)
    );
    // They stay counted across the flow GC's passes (every 5 s), which reconcile the counters with
    // the sessions that exist: a local client's session is one of them.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        current_sessions(&rig, "pg-test-primary"),
        3,
        "local sessions lost after a GC pass; log:\n{}",
        rig.log_text()
    );
    drop(held);
    rig.wait_for("local sessions back to 0", Duration::from_secs(5), |r| {
        current_sessions(r, "pg-test-primary") == 0
    });

    // A process outside the cgroup is not balanced: nothing listens on the node's 5433.
    let outside = LocalClient::open(&node, None, Ipv4Addr::LOCALHOST, 5433);
    assert!(
        outside.is_err(),
        "a client outside the cgroup was balanced to {:?}",
        outside.map(|c| c.server.clone())
    );

    // A crashed agent leaves its pinned links serving; the next one replaces them (not doubles
    // them), and a session opened under the old programs is released under the new ones.
    let across = LocalClient::open(&node, Some(&cg), VIP, 5433).expect("client across restart");
    if let Some(mut a) = rig.agent.take() {
        a.signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
            .expect("agent killed");
    }
    assert_eq!(
        bpftool_cgroup_show(cg.path()).len(),
        3,
        "links after a crash"
    );
    let during = LocalClient::open(&node, Some(&cg), LB, 5433).expect("client while no agent");
    assert_eq!(during.server, "pg-test-1:6432");
    drop(during);
    rig.start_agent();
    assert_eq!(
        rig.status()["local_clients"].as_str(),
        Some(format!("served (cgroup {})", cg.arg()).as_str()),
        "after the restart:\n{}",
        rig.log_text()
    );
    let attached = bpftool_cgroup_show(cg.path());
    assert_eq!(attached.len(), 3, "links after the restart: {attached:?}");
    let after = LocalClient::open(&node, Some(&cg), LB, 5433).expect("client after restart");
    assert_eq!(after.server, "pg-test-1:6432");
    rig.wait_for(
        "2 sessions after the restart",
        Duration::from_secs(5),
        |r| current_sessions(r, "pg-test-primary") == 2,
    );
    drop((across, after));
    rig.wait_for(
        "sessions released after the restart",
        Duration::from_secs(5),
        |r| current_sessions(r, "pg-test-primary") == 0,
    );

    // Every replica-role server down: 5434 falls back to the backup, the primary, for local
    // clients too.
    rig.set_patroni(1, "down");
    rig.wait_for("pg-test-2 DOWN", Duration::from_secs(6), |r| {
        r.server_status("pg-test-replica", "pg-test-2")["state"] == "DOWN"
    });
    for addr in [Ipv4Addr::LOCALHOST, VIP] {
        let c = LocalClient::open(&node, Some(&cg), addr, 5434).expect("local client");
        assert_eq!(
            c.server, "pg-test-1:6432",
            "{addr}:5434 with the replica down"
        );
    }

    // The agent's exit detaches its socket programs from the cgroup.
    let attached = bpftool_cgroup_show(cg.path());
    assert_eq!(attached.len(), 3, "attached while running: {attached:?}");
    drop(rig);
    let left = bpftool_cgroup_show(cg.path());
    assert!(left.is_empty(), "still attached after exit: {left:?}");
}

/// The programs attached to a cgroup, as `bpftool cgroup show` lists them (one line each).
fn bpftool_cgroup_show(cgroup: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("running bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits up to `timeout` for `child` to exit; kills it otherwise. `Some(success)` when it exited.
fn exit_within(child: &mut Child, timeout: Duration) -> Option<bool> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st.success());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_listener_on_a_service_port_refuses_the_start_unless_takeover() {
    if !require_root("a_listener_on_a_service_port_refuses_the_start") {
        return;
    }
    let topo = Topology::new(&[("lcnode", LB)]);
    let ns = topo.host(0).ns.name.clone();
    // Something (HAProxy, say) already listens on *:5433 in the node's namespace.
    let holder = NsWorker::start(&ns, || {
        TcpListener::bind(("0.0.0.0", 5433)).expect("listening on 5433")
    });
    let dir = std::env::temp_dir().join(unique("lc-taken"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("pigsty.yml");
    std::fs::write(&config, inventory(FAST, "")).expect("inventory");
    let pins = PinDir::new("lc-taken");
    // Socket programs of every agent started here go to a test cgroup, not the machine's root.
    let cg = TestCgroup::new();
    let cg_arg = cg.as_ref().map(TestCgroup::arg);
    let agent = |extra: &[&str]| {
        let mut cmd = Command::new(pgsvc_bin());
        cmd.args(["--netns", &ns, "run", "--config"])
            .arg(&config)
            .args(["--iface", "eth0", "--admin", &format!("{LB}:9102")])
            .args(["--metrics", "off", "--pin-dir"])
            .arg(pins.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(a) = cg_arg.as_deref().filter(|_| !extra.contains(&"--cgroup")) {
            cmd.args(["--cgroup", a]);
        }
        cmd.spawn().expect("spawning pgsvc run")
    };

    let mut refused = agent(&[]);
    let exited = exit_within(&mut refused, Duration::from_secs(20));
    let mut err = String::new();
    if let Some(mut e) = refused.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(exited, Some(false), "pgsvc run should refuse: {err}");
    let me = format!("[{}]", std::process::id());
    assert!(
        err.contains(
            "port 5433 of service pg-test-primary is already taken by a listener on *:5433"
        ) && err.contains(&me)
            && err.contains("--takeover"),
        "{err}"
    );
    assert!(!pins.path().exists(), "a refused start left pins behind");

    // A --cgroup that is not a cgroup v2 directory: refused, nothing left attached or pinned.
    let mut bad = agent(&["--takeover", "--cgroup", &dir.display().to_string()]);
    let exited = exit_within(&mut bad, Duration::from_secs(20));
    let mut err = String::new();
    if let Some(mut e) = bad.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(exited, Some(false), "a bad --cgroup should refuse: {err}");
    assert!(err.contains("is not a cgroup v2 directory"), "{err}");
    assert!(!pins.path().exists(), "a refused start left pins behind");

    // --takeover: starts, with a warning naming the port.
    let mut taken = agent(&["--takeover"]);
    let up = holder.run(|_| {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok((200, _)) = http_request(SocketAddr::from((LB, 9102)), "GET", "/status") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    // The admin API answers just before the agent installs its signal handlers.
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(taken.id() as i32, libc::SIGTERM) };
    let exited = exit_within(&mut taken, Duration::from_secs(10));
    let mut log = String::new();
    if let Some(mut o) = taken.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut log);
    }
    if let Some(mut e) = taken.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut log);
    }
    assert!(up, "pgsvc run --takeover did not start: {log}");
    assert_eq!(exited, Some(true), "{log}");
    assert!(
        log.contains("--takeover: port 5433 of service pg-test-primary"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_cgroup_v2_the_agent_serves_the_network_and_says_local_clients_are_not() {
    if !require_root("without_cgroup_v2") {
        return;
    }
    // The agent runs in a private mount namespace whose cgroup2 mounts are gone.
    let dir = std::env::temp_dir().join(unique("lc-nocg"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let wrapper = dir.join("pgsvc-without-cgroup2");
    let real = pgsvc_bin();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c 'grep \" - cgroup2 \" /proc/self/mountinfo | cut -d\" \" -f5 | while read -r m; do umount -l \"$m\" || exit 1; done; exec \"$0\" \"$@\"' {} \"$@\"\n",
            real.display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    // SAFETY: this file's tests run one at a time (xtask runs netns files with one thread);
    // the variable is removed again right after the agent started.
    unsafe { std::env::set_var("PGSVC_BIN", &wrapper) };
    let rig = AgentRig::start(&inventory(FAST, ""), stub());
    // SAFETY: as above.
    unsafe { std::env::remove_var("PGSVC_BIN") };

    let st = rig.status();
    let lc = st["local_clients"].as_str().unwrap_or_default().to_owned();
    assert!(
        lc.starts_with("not served: cgroup v2 is not mounted"),
        "status local_clients: {st}"
    );
    assert_eq!(metric(&rig, "pgsvc_local_clients_served "), Some(0.0));
    assert!(
        rig.log_text().contains(
            "local clients are NOT served: cgroup v2 is not mounted (no cgroup2 file system in /proc/self/mountinfo); clients reaching the node over eth0 still are (XDP)"
        ),
        "{}",
        rig.log_text()
    );
    // The XDP path serves clients from the network as ever.
    let landed = rig.land(5433, 3);
    assert!(landed.iter().all(|s| s == "pg-test-1:6432"), "{landed:?}");
    let leftover: Vec<_> = std::fs::read_dir(rig.pins.path())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("link_cgroup"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftover.is_empty(),
        "socket-program links pinned: {leftover:?}"
    );
    drop(rig);
    let _ = std::fs::remove_dir_all(&dir);
}
