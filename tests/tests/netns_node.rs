//! netns tier of the node-resident topology (Pigsty's default): three database nodes, each running
//! the real `pgsvc run` on its own interface next to its Patroni stand-in and the TCP servers that
//! play its pgbouncer (6432) and postgres (5432), and a client host on the same bridge. Every
//! service port on every node address must land on the right member — the node's own member
//! through the local path (destination translated in XDP, replies restored by TC egress; the member
//! sees the client's own address), the others through full NAT (they see the node's address) —
//! and the VIP, moved between nodes at runtime as vip-manager would, must keep working without a
//! restart, its old flows reset rather than black-holed. Processes inside each node (127.0.0.1, the
//! node's address, the VIP) reach the same members through that node's cgroup socket programs
//! (each agent has its own test cgroup).

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pgsvc_tests::{
    agent_rig::{CLIENT, VIP, inventory, node_addr, pgsvc_bin},
    guard::{ChildGuard, PinDir, unique},
    local_client::{LocalClient, TestCgroup},
    netns::{Conn, NameServer, NsWorker, Topology, http_request},
    require_root, skip,
};

const ADMIN_PORT: u16 = 9102;
/// Fast timers: the backup steps below wait for DOWN/UP on three agents.
const FAST: &str = "inter 1s fastinter 500ms downinter 1s rise 2 fall 2 on-marked-down shutdown-sessions slowstart 0s maxconn 3000 weight 100";

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

struct NodeRig {
    agents: Vec<ChildGuard>,
    stubs: Vec<ChildGuard>,
    client: NsWorker<()>,
    _servers: Vec<NameServer>,
    _pass: NsWorker<Vec<pgsvc::datapath::pass::PassProgram>>,
    _pins: Vec<PinDir>,
    /// Each agent's cgroup for its socket programs (none without cgroup v2; dropped after the
    /// agents).
    cgroups: Vec<TestCgroup>,
    dir: std::path::PathBuf,
    topo: Topology,
}

impl NodeRig {
    /// Client = host 0, nodes = hosts 1..=3 (pg-test-1 primary, -2 replica, -3 offline), each
    /// with its own agent.
    fn start() -> Self {
        let topo = Topology::new(&[
            ("cl", CLIENT),
            ("n1", node_addr(0)),
            ("n2", node_addr(1)),
            ("n3", node_addr(2)),
        ]);
        let dir = std::env::temp_dir().join(unique("node"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("pigsty.yml");
        std::fs::write(&config, inventory(FAST, "")).expect("inventory");
        // Native XDP on a veth delivers XDP_TX frames only when the peer runs XDP too.
        let ports: Vec<String> = (1..=3).map(|i| topo.host(i).port.clone()).collect();
        let pass = NsWorker::start(&topo.sw.name, Vec::new);
        pass.run(move |v| {
            for p in &ports {
                v.push(pgsvc::datapath::pass::PassProgram::attach(p, None).expect("pass program"));
            }
        });
        let mut rig = Self {
            agents: Vec::new(),
            stubs: Vec::new(),
            client: NsWorker::start(&topo.host(0).ns.name, || ()),
            _servers: Vec::new(),
            _pass: pass,
            _pins: Vec::new(),
            cgroups: (0..3).map_while(|_| TestCgroup::new()).collect(),
            dir,
            topo,
        };
        for (i, role) in ["primary", "replica", "offline"].iter().enumerate() {
            let host = rig.topo.host(1 + i);
            let name = format!("pg-test-{}", i + 1);
            for port in [6432u16, 5432] {
                rig._servers.push(NameServer::start(
                    &host.ns.name,
                    SocketAddr::from((host.addr, port)),
                    &format!("{name}:{port}"),
                ));
            }
            let state = rig.dir.join(format!("{name}.state"));
            std::fs::write(&state, role).expect("state file");
            let mut cmd = host.ns.command(stub());
            cmd.args(["--listen", &format!("{}:8008", host.addr), "--state-file"])
                .arg(&state)
                .args(["--name", &name, "--scope", "pg-test"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            rig.stubs.push(ChildGuard::spawn(cmd));
        }
        for i in 0..3 {
            let pins = PinDir::new("node");
            let host = rig.topo.host(1 + i);
            let log = std::fs::File::create(rig.log_path(i)).expect("log file");
            let mut cmd = Command::new(pgsvc_bin());
            cmd.args(["--netns", &host.ns.name, "run", "--config"])
                .arg(&config)
                .args(["--iface", "eth0", "--xdp-mode", "native"])
                .args(["--admin", &format!("{}:{ADMIN_PORT}", host.addr)])
                .args(["--metrics", "off", "--pin-dir"])
                .arg(pins.path())
                .args(["--log", "info"])
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            if let Some(cg) = rig.cgroups.get(i) {
                cmd.args(["--cgroup", &cg.arg()]);
            }
            rig.agents.push(ChildGuard::spawn(cmd));
            rig._pins.push(pins);
        }
        for i in 0..3 {
            rig.wait_for(&format!("agent {i} ready"), Duration::from_secs(20), |r| {
                matches!(r.http(i, "/ready"), Ok((200, _)))
            });
        }
        rig
    }

    fn log_path(&self, i: usize) -> std::path::PathBuf {
        self.dir.join(format!("agent-{i}.log"))
    }

    fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                format!(
                    "--- agent on node {i} ---\n{}",
                    std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
                )
            })
            .collect()
    }

    fn http(&self, node: usize, path: &str) -> std::io::Result<(u16, String)> {
        let (addr, path) = (
            SocketAddr::from((node_addr(node), ADMIN_PORT)),
            path.to_owned(),
        );
        self.client.run(move |_| http_request(addr, "GET", &path))
    }

    fn server_state(&self, node: usize, service: &str, server: &str) -> String {
        let Ok((200, body)) = self.http(node, "/status") else {
            return String::new();
        };
        let s: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        s["services"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["name"] == service))
            .and_then(|svc| {
                svc["servers"]
                    .as_array()
                    .and_then(|v| v.iter().find(|x| x["name"] == server))
                    .map(|x| x["state"].as_str().unwrap_or_default().to_owned())
            })
            .unwrap_or_default()
    }

    /// Waits until every agent sees `server` of `service` in `state`.
    fn wait_state(&self, service: &str, server: &str, state: &str) {
        self.wait_for(
            &format!("{service}/{server} {state} on every node"),
            Duration::from_secs(10),
            |r| (0..3).all(|n| r.server_state(n, service, server) == state),
        );
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Self) -> bool) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            self.logs()
        );
    }

    fn set_patroni(&self, i: usize, state: &str) {
        std::fs::write(self.dir.join(format!("pg-test-{}.state", i + 1)), state)
            .expect("state file");
    }

    fn connect(&self, to: Ipv4Addr, port: u16) -> std::io::Result<Conn> {
        self.client
            .run(move |_| Conn::open(SocketAddr::from((to, port)), None))
    }

    /// Connects to `to:port`, checks the greeting's server and the client address the server saw,
    /// and closes.
    fn expect_lands(&self, to: Ipv4Addr, port: u16, server: &str, peer: Ipv4Addr) {
        let c = self
            .connect(to, port)
            .unwrap_or_else(|e| panic!("connect to {to}:{port}: {e}\n{}", self.logs()));
        assert_eq!(c.server, server, "{to}:{port} landed on the wrong member");
        assert_eq!(
            c.peer_seen.ip(),
            std::net::IpAddr::V4(peer),
            "{to}:{port} → {server}: the member saw the wrong client address"
        );
        c.abort();
    }

    /// The value of the first metric line that starts with `name{` and contains every label.
    fn metric(&self, node: usize, name: &str, labels: &[&str]) -> Option<f64> {
        let (code, body) = self.http(node, "/metrics").ok()?;
        assert_eq!(code, 200);
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Moves the VIP to node `to` (from wherever it is), as vip-manager does, and makes the
    /// client re-resolve it (what vip-manager's gratuitous ARP achieves).
    fn move_vip(&self, to: usize) {
        let cidr = format!("{VIP}/24");
        for i in 0..3 {
            let ns = &self.topo.host(1 + i).ns.name;
            let _ = Command::new("ip")
                .args(["-n", ns, "addr", "del", &cidr, "dev", "eth0"])
                .stderr(Stdio::null())
                .status();
        }
        self.topo
            .host(1 + to)
            .ns
            .exec(&["ip", "addr", "add", &cidr, "dev", "eth0"]);
        self.topo
            .host(0)
            .ns
            .exec(&["ip", "neigh", "flush", "dev", "eth0"]);
    }
}

impl Drop for NodeRig {
    fn drop(&mut self) {
        // Agents first, so that they detach and unpin while their namespaces still exist.
        for a in &mut self.agents {
            a.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
        }
        self.stubs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where each service lands, and on which node (index) that member lives.
const MATRIX: [(u16, &str, usize); 4] = [
    (5433, "pg-test-1:6432", 0),
    (5434, "pg-test-2:6432", 1),
    (5436, "pg-test-1:5432", 0),
    (5438, "pg-test-3:5432", 2),
];

/// The client address a member on node `member` sees for a connection through node `via`: the
/// client's own for a local member, the node's for a remote one (full NAT).
fn seen(via: usize, member: usize) -> Ipv4Addr {
    if via == member {
        CLIENT
    } else {
        node_addr(via)
    }
}

#[test]
fn every_service_on_every_node_lands_on_the_right_member() {
    if !require_root("every_service_on_every_node_lands_on_the_right_member") {
        return;
    }
    let rig = NodeRig::start();
    for via in 0..3 {
        for (port, server, member) in MATRIX {
            rig.expect_lands(node_addr(via), port, server, seen(via, member));
        }
    }
    // Local flows are counted like remote ones: three more to the primary's own node.
    for _ in 0..3 {
        rig.expect_lands(node_addr(0), 5433, "pg-test-1:6432", CLIENT);
    }
    // (The agent publishes its counters once a second.)
    rig.wait_for(
        "4 sessions of the local member in node 0's /metrics",
        Duration::from_secs(5),
        |r| {
            r.metric(
                0,
                "haproxy_server_sessions_total",
                &["proxy=\"pg-test-primary\"", "server=\"pg-test-1\""],
            ) == Some(4.0)
        },
    );
    let local_new = rig.metric(0, "pgsvc_packets_total", &["reason=\"pass_local_new\""]);
    // One SYN per local connection (5433 ×4, 5436 ×1); no retransmission on a quiet bridge.
    assert_eq!(local_new, Some(5.0), "local SYNs counted");

    // Every replica-role server down: 5434 falls back to its first backup, the primary, from
    // every node (locally on the primary's own node).
    rig.set_patroni(1, "down");
    rig.wait_state("pg-test-replica", "pg-test-2", "DOWN");
    for via in 0..3 {
        rig.expect_lands(node_addr(via), 5434, "pg-test-1:6432", seen(via, 0));
    }
    // The offline instance down: 5438 falls back to the replica.
    rig.set_patroni(1, "replica");
    rig.set_patroni(2, "down");
    rig.wait_state("pg-test-offline", "pg-test-3", "DOWN");
    rig.wait_state("pg-test-offline", "pg-test-2", "UP");
    for via in 0..3 {
        rig.expect_lands(node_addr(via), 5438, "pg-test-2:5432", seen(via, 1));
    }
    // The replica node itself is DOWN for 5438's normal server and still serves 5433 and 5436.
    rig.expect_lands(node_addr(2), 5433, "pg-test-1:6432", node_addr(2));
    rig.expect_lands(node_addr(2), 5436, "pg-test-1:5432", node_addr(2));
}

#[test]
fn clients_inside_each_node_land_on_the_right_member_through_every_local_address() {
    let test = "clients_inside_each_node_land_on_the_right_member";
    if !require_root(test) {
        return;
    }
    let rig = NodeRig::start();
    if rig.cgroups.len() < 3 {
        skip(test, "cgroup v2 is not mounted on this machine");
        return;
    }
    for node in 0..3 {
        // The VIP on this node, as vip-manager puts it on the leader; the agent follows the
        // address at runtime.
        rig.move_vip(node);
        let ns = rig.topo.host(1 + node).ns.name.clone();
        for addr in [Ipv4Addr::LOCALHOST, node_addr(node), VIP] {
            for (port, server, _) in MATRIX {
                let t0 = Instant::now();
                let c = loop {
                    match LocalClient::open(&ns, Some(&rig.cgroups[node]), addr, port) {
                        Ok(c) => break c,
                        // The VIP just arrived: the agent adds it to its scope on the address
                        // event.
                        Err(e) if addr == VIP && t0.elapsed() < Duration::from_secs(3) => {
                            eprintln!("{test}: node {node} {addr}:{port}: {e}, retrying");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => panic!("node {node}, {addr}:{port}: {e}\n{}", rig.logs()),
                    }
                };
                assert_eq!(
                    c.server, server,
                    "node {node}, {addr}:{port} landed on the wrong member"
                );
                assert_eq!(
                    c.peer,
                    SocketAddr::from((addr, port)),
                    "node {node}, {addr}:{port}: getpeername"
                );
                // The member sees the node's own address: the socket's source, chosen for the
                // member's address (local or remote alike).
                assert_eq!(
                    c.seen_by_server.ip(),
                    std::net::IpAddr::V4(node_addr(node)),
                    "node {node}, {addr}:{port} → {server}: the member saw the wrong client"
                );
            }
        }
    }
    // Counted by each node's own agent: three local clients of 5433 each (one per address).
    for node in 0..3 {
        rig.wait_for(
            &format!("3 local sessions of pg-test-primary in node {node}'s /metrics"),
            Duration::from_secs(5),
            |r| {
                r.metric(
                    node,
                    "haproxy_server_sessions_total",
                    &["proxy=\"pg-test-primary\"", "server=\"pg-test-1\""],
                ) == Some(3.0)
            },
        );
    }
    // A process outside the node's cgroup is not balanced: nothing listens on the node's 5433.
    let outside = LocalClient::open(&rig.topo.host(2).ns.name, None, Ipv4Addr::LOCALHOST, 5433);
    assert!(
        outside.is_err(),
        "a client outside the cgroup was balanced to {:?}",
        outside.map(|c| c.server.clone())
    );
}

#[test]
fn the_vip_moves_between_nodes_without_a_restart_and_old_flows_are_reset() {
    if !require_root("the_vip_moves_between_nodes_without_a_restart_and_old_flows_are_reset") {
        return;
    }
    let rig = NodeRig::start();
    let pids: Vec<u32> = rig.agents.iter().map(ChildGuard::pid).collect();
    // The VIP on the primary's node: 5433 is its own pgbouncer (local path).
    rig.move_vip(0);
    rig.wait_for("VIP usable on node 0", Duration::from_secs(5), |r| {
        r.connect(VIP, 5433)
            .is_ok_and(|c| c.server == "pg-test-1:6432" && c.peer_seen.ip() == CLIENT)
    });
    let mut old = rig.connect(VIP, 5433).expect("connect through the VIP");
    assert_eq!(old.echo(b"ping").expect("echo"), b"ping");
    // 5434 through the VIP on node 0 goes to the replica (full NAT from node 0).
    rig.expect_lands(VIP, 5434, "pg-test-2:6432", node_addr(0));

    // vip-manager moves the VIP to node 1.
    rig.move_vip(1);
    rig.wait_for("VIP usable on node 1", Duration::from_secs(5), |r| {
        r.connect(VIP, 5433)
            .is_ok_and(|c| c.server == "pg-test-1:6432" && c.peer_seen.ip() == node_addr(1))
    });
    rig.expect_lands(VIP, 5434, "pg-test-2:6432", CLIENT);
    // The connection opened through node 0 is reset by the VIP's new holder, not left hanging.
    let t0 = Instant::now();
    let err = old
        .echo(b"ping")
        .expect_err("a flow whose address left its node must not keep working");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset,
        "reset, not black-holed ({err})"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "reset took {:?}",
        t0.elapsed()
    );

    // And back: node 0 serves the VIP locally again.
    rig.move_vip(0);
    rig.wait_for("VIP back on node 0", Duration::from_secs(5), |r| {
        r.connect(VIP, 5433)
            .is_ok_and(|c| c.server == "pg-test-1:6432" && c.peer_seen.ip() == CLIENT)
    });
    let now: Vec<u32> = rig.agents.iter().map(ChildGuard::pid).collect();
    assert_eq!(pids, now, "no agent restarted");
    for (i, a) in rig.agents.iter().enumerate() {
        assert!(a.0.is_some(), "agent {i} exited\n{}", rig.logs());
    }
}

#[test]
fn a_local_member_off_the_interface_is_refused_with_nothing_attached() {
    if !require_root("a_local_member_off_the_interface_is_refused_with_nothing_attached") {
        return;
    }
    // Node 1's own address is on eth0; pg-test-3's address sits on another interface of the same
    // node (a second NIC): its replies could never pass the TC program on eth0.
    let ns = pgsvc_tests::guard::NetNs::new("offif");
    ns.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    ns.exec(&["ip", "addr", "add", "198.18.0.11/24", "dev", "eth0"]);
    ns.exec(&["ip", "link", "set", "eth0", "up"]);
    ns.exec(&[
        "ip", "link", "add", "nic2", "type", "veth", "peer", "name", "nic3",
    ]);
    ns.exec(&["ip", "addr", "add", "198.18.0.13/32", "dev", "nic2"]);
    ns.exec(&["ip", "link", "set", "nic2", "up"]);
    let dir = std::env::temp_dir().join(unique("offif"));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("pigsty.yml");
    std::fs::write(&config, inventory(FAST, "")).expect("inventory");
    let pins = PinDir::new("offif");
    let err_path = dir.join("stderr");
    let mut cmd = Command::new(pgsvc_bin());
    cmd.args(["--netns", &ns.name, "run", "--config"])
        .arg(&config)
        .args(["--iface", "eth0", "--metrics", "off", "--pin-dir"])
        .arg(pins.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    // Bounded: an agent that wrongly starts is stopped (and the test fails) after 20 s.
    let mut agent = ChildGuard::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(Ok(Some(st))) = agent.0.as_mut().map(std::process::Child::try_wait) {
            agent.0 = None;
            break Some(st);
        }
        if Instant::now() >= deadline {
            break agent
                .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
                .and(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.unwrap_or_else(|| panic!("pgsvc started instead of refusing:\n{stderr}"));
    assert_ne!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "server pg-test-3 at 198.18.0.13 is an address of this node, but not on --iface eth0"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!pins.path().exists(), "nothing pinned");
    let link = ns.exec(&["ip", "link", "show", "eth0"]);
    assert!(!link.contains("xdp"), "nothing attached: {link}");
}
