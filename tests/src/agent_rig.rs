//! A whole pgsvc deployment in namespaces, with stand-ins for the database side: a client host, an
//! LB host running the real `pgsvc run` (as a process, so tests can signal and kill it), and three
//! "nodes" each running a Patroni stand-in (`patroni-stub`, role set through a file) plus TCP servers
//! on 6432 (pgbouncer) and 5432 (postgres) that greet with their node and port.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    guard::{ChildGuard, PinDir, unique},
    netns::{Conn, NameServer, NsWorker, Topology},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const LB: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const ADMIN_PORT: u16 = 9102;

pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + i as u8)
}

/// The inventory the rig's agent reads: pg-test with pg-test-1 primary, pg-test-2 replica, pg-test-3
/// offline, `options` as given (HAProxy default-server syntax), plus extra `pg_services` lines.
pub fn inventory(options: &str, extra_services: &str) -> String {
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
          - {{ name: replica, port: 5434, dest: default,  check: /read-only, selector: \"[]\", backup: \"[? pg_role == `primary` || pg_role == `offline` ]\", options: \"{options}\" }}
          - {{ name: default, port: 5436, dest: postgres, check: /primary,   selector: \"[]\", options: \"{options}\" }}
          - {{ name: offline, port: 5438, dest: postgres, check: /replica,   selector: \"[? pg_role == `offline` || pg_offline_query ]\", backup: \"[? pg_role == `replica` && !pg_offline_query]\", options: \"{options}\" }}
        pg_services: [{extra_services}]
  vars:
    pg_default_service_dest: pgbouncer
"
    )
}

/// Pigsty's `norm` timers, as the default-server line.
pub const NORM: &str = "inter 2s fastinter 1s downinter 2s rise 3 fall 3 on-marked-down shutdown-sessions slowstart 30s maxconn 3000 maxqueue 128 weight 100";

pub struct AgentRig {
    pub client: NsWorker<()>,
    pub agent: Option<ChildGuard>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    stubs: Vec<ChildGuard>,
    _servers: Vec<NameServer>,
    _pass: NsWorker<Option<pgsvc::datapath::pass::PassProgram>>,
    pub topo: Topology,
    pub pins: PinDir,
    /// Extra `pgsvc run` arguments.
    pub agent_args: Vec<String>,
}

/// The `pgsvc` binary built beside the test (cargo xtask test builds it first).
pub fn pgsvc_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PGSVC_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("pgsvc");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p pgsvc-userspace; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

impl AgentRig {
    /// Builds the hosts, starts the stand-ins with the inventory roles, writes `inventory_text` and
    /// starts the agent; waits until it reports ready.
    pub fn start(inventory_text: &str, stub_bin: &str) -> Self {
        Self::start_with(inventory_text, stub_bin, &[])
    }

    /// As [`AgentRig::start`], with extra `pgsvc run` arguments.
    pub fn start_with(inventory_text: &str, stub_bin: &str, agent_args: &[&str]) -> Self {
        let topo = Topology::new(&[
            ("cl", CLIENT),
            ("lb", LB),
            ("n1", node_addr(0)),
            ("n2", node_addr(1)),
            ("n3", node_addr(2)),
        ]);
        let dir = std::env::temp_dir().join(unique("rig"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut servers = Vec::new();
        let mut stubs = Vec::new();
        for (i, role) in ["primary", "replica", "offline"].iter().enumerate() {
            let host = topo.host(2 + i);
            let name = format!("pg-test-{}", i + 1);
            for port in [6432u16, 5432] {
                servers.push(NameServer::start(
                    &host.ns.name,
                    SocketAddr::from((host.addr, port)),
                    &format!("{name}:{port}"),
                ));
            }
            let state = dir.join(format!("{name}.state"));
            std::fs::write(&state, role).expect("state file");
            // The stand-in logs one line per request: what `check_requests` counts.
            let requests =
                std::fs::File::create(dir.join(format!("{name}.requests"))).expect("request log");
            let mut cmd = host.ns.command(stub_bin);
            cmd.args(["--listen", &format!("{}:8008", host.addr), "--state-file"])
                .arg(&state)
                .args(["--name", &name, "--scope", "pg-test"])
                .stdout(Stdio::null())
                .stderr(requests);
            stubs.push(ChildGuard::spawn(cmd));
        }
        let port = topo.host(1).port.clone();
        let pass = NsWorker::start(&topo.sw.name, || None);
        pass.run(move |p| {
            *p = Some(
                pgsvc::datapath::pass::PassProgram::attach(&port, None).expect("pass program"),
            );
        });
        let config = dir.join("pigsty.yml");
        std::fs::write(&config, inventory_text).expect("inventory");
        let client = NsWorker::start(&topo.host(0).ns.name, || ());
        let mut rig = Self {
            client,
            agent: None,
            log: dir.join("agent.log"),
            config,
            dir,
            stubs,
            _servers: servers,
            _pass: pass,
            topo,
            pins: PinDir::new("agent"),
            agent_args: agent_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        rig.start_agent();
        rig
    }

    pub fn lb_ns(&self) -> &str {
        &self.topo.host(1).ns.name
    }

    /// Starts `pgsvc run` (appending to the log) and waits for /ready.
    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(pgsvc_bin());
        cmd.args(["--netns", self.lb_ns(), "run"]);
        // A test that gives its own `--haproxy-config` does not also get the inventory.
        if !self.agent_args.iter().any(|a| a == "--haproxy-config") {
            cmd.arg("--config").arg(&self.config);
        }
        cmd.args([
            "--iface",
            "eth0",
            "--vip",
            &format!("{VIP}/24"),
            "--xdp-mode",
            "native",
        ])
        .args(["--admin", &format!("{LB}:{ADMIN_PORT}"), "--pin-dir"])
        .arg(self.pins.path())
        .args(["--log", "info"])
        .args(&self.agent_args)
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
        self.agent = Some(ChildGuard::spawn(cmd));
        self.wait_ready(Duration::from_secs(20));
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.http("GET", "/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the agent did not become ready in {timeout:?}; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An HTTP request to the admin API from the client host: (status, body).
    pub fn http(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let (method, path) = (method.to_owned(), path.to_owned());
        self.client.run(move |_| {
            crate::netns::http_request(SocketAddr::from((LB, ADMIN_PORT)), &method, &path)
        })
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.http("GET", "/status").expect("GET /status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// The server object of `service`/`server` in /status.
    pub fn server_status(&self, service: &str, server: &str) -> serde_json::Value {
        let s = self.status();
        s["services"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["name"] == service))
            .and_then(|svc| {
                svc["servers"]
                    .as_array()
                    .and_then(|v| v.iter().find(|x| x["name"] == server))
                    .cloned()
            })
            .unwrap_or_else(|| panic!("{service}/{server} not in /status: {s}"))
    }

    /// Rewrites node `i`'s Patroni stand-in state (role and optional misbehaviour).
    pub fn set_patroni(&self, i: usize, state: &str) {
        std::fs::write(self.dir.join(format!("pg-test-{}.state", i + 1)), state)
            .expect("state file");
    }

    /// How many `OPTIONS <uri>` checks node `i`'s Patroni stand-in has answered so far.
    pub fn check_requests(&self, i: usize, uri: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.join(format!("pg-test-{}.requests", i + 1)))
            .unwrap_or_default();
        let needle = format!(": OPTIONS {uri} as ");
        log.lines().filter(|l| l.contains(&needle)).count()
    }

    /// Connects to VIP:port from the client and returns the greeting's server name ("pg-test-1:6432").
    pub fn connect(&self, port: u16) -> std::io::Result<Conn> {
        self.client
            .run(move |_| Conn::open(SocketAddr::from((VIP, port)), None))
    }

    /// Where `n` new connections to `port` land.
    pub fn land(&self, port: u16, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let c = self
                    .connect(port)
                    .unwrap_or_else(|e| panic!("connect to {VIP}:{port}: {e}"));
                let s = c.server.clone();
                c.abort();
                s
            })
            .collect()
    }

    /// Polls `f` every 100 ms until it holds; panics with `what` and the agent log after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Self) -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if f(self) {
                return t0.elapsed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}; agent log:\n{}",
            self.log_text()
        );
    }

    /// `pgsvc <args>` run in the client's namespace (status, reload): (exit code, stdout, stderr).
    pub fn pgsvc_cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(pgsvc_bin())
            .args(["--netns", &self.topo.host(0).ns.name])
            .args(args)
            .output()
            .expect("running pgsvc");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for AgentRig {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
        }
        self.stubs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
