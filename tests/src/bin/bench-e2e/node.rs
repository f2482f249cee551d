//! The node-resident topology of `bench-e2e` — Pigsty's default, the service layer on every database
//! node — measured in the same run as the LB-host topology, interleaved with it.
//!
//! Two slots join every round: *node HAProxy* (HAProxy with Pigsty's config, `bind *:PORT`, on the
//! primary's node and on a replica's node) and *node pgsvc* (`pgsvc run` in both nodes' namespaces,
//! no `--vip`, no `--takeover`: the node's HAProxy is stopped first, as an upgrade in place does it).
//! Only the slot's LB runs; the shared *direct* slot (`<primary>:6432`, no LB) is the baseline of both
//! topologies. In each node slot the client dials
//! - `<primary>:5433` — the **local member**: pgsvc translates 5433 → 6432 in XDP and passes the
//!   packet to the node's own stack; HAProxy proxies to its own node's pgbouncer;
//! - `<replica>:5433` — a **remote member**: the replica's node forwards to the primary (pgsvc: XDP
//!   full NAT; HAProxy: a proxied connection).
//!
//! A third slot, *node XDP pass*, is the floor of any XDP datapath on this veth test bed: no LB runs,
//! but the pass-through program (`XDP_PASS` only) sits natively on both nodes' `eth0` and on their
//! switch ports — every XDP hook the pgsvc slot has — and the client dials `<primary>:6432` as direct
//! does. On a veth, native XDP copies each cloned skb (every TCP data segment) into an XDP buffer and
//! builds a new skb after `XDP_PASS`; a physical NIC does none of that.

use super::*;

/// The node of the primary during the throughput rounds (pg-test-1) and the replica's node whose
/// 5433 forwards to it (pg-test-2).
const PRIMARY_NODE: usize = 0;
const REPLICA_NODE: usize = 1;
const NODE_IDX: [usize; 2] = [PRIMARY_NODE, REPLICA_NODE];
/// Where the node agents serve their admin API (on each node's own address).
const NODE_ADMIN_PORT: u16 = 9102;
/// How long a node LB may take to answer after its start (HAProxy reads every CA certificate first).
const READY_TIMEOUT_S: u64 = 90;
/// The acceptance target of the local member: pgsvc's select-only TPS ≥ this × direct.
pub(super) const LOCAL_TPS_TARGET: f64 = 0.97;

fn host(node: usize) -> String {
    format!("n{}", node + 1)
}

/// The load balancer of a node slot (`XdpPass`: none, only the XDP hooks pgsvc's slot has, each
/// running the pass-through program).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum NodeLb {
    Haproxy,
    Pgsvc,
    XdpPass,
}

impl NodeLb {
    pub(super) fn key(self) -> &'static str {
        match self {
            NodeLb::Haproxy => "node_haproxy",
            NodeLb::Pgsvc => "node_pgsvc",
            NodeLb::XdpPass => "node_xdp_pass",
        }
    }
}

/// What the client dials in a node slot: the LB, and whether the dialled node holds the member (the
/// XDP-pass slot has one target, the local member's pgbouncer dialled directly).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct NodeTarget {
    pub(super) lb: NodeLb,
    pub(super) local: bool,
}

/// The node targets in the order of the tables' columns.
pub(super) const NODE_TARGETS: [NodeTarget; 5] = [
    NodeTarget {
        lb: NodeLb::XdpPass,
        local: true,
    },
    NodeTarget {
        lb: NodeLb::Haproxy,
        local: true,
    },
    NodeTarget {
        lb: NodeLb::Pgsvc,
        local: true,
    },
    NodeTarget {
        lb: NodeLb::Haproxy,
        local: false,
    },
    NodeTarget {
        lb: NodeLb::Pgsvc,
        local: false,
    },
];

impl NodeTarget {
    /// The target's key in `measurements` and in the node figures.
    pub(super) fn key(self) -> &'static str {
        match (self.lb, self.local) {
            (NodeLb::Haproxy, true) => "haproxy_local",
            (NodeLb::Pgsvc, true) => "pgsvc_local",
            (NodeLb::Haproxy, false) => "haproxy_remote",
            (NodeLb::Pgsvc, false) => "pgsvc_remote",
            (NodeLb::XdpPass, _) => "direct_xdp_pass",
        }
    }

    fn node(self) -> usize {
        if self.local {
            PRIMARY_NODE
        } else {
            REPLICA_NODE
        }
    }

    /// Where pgbench connects: the service port of the dialled node's own address; with only the
    /// XDP hooks, the primary's pgbouncer itself (direct's address).
    pub(super) fn pg(self) -> (&'static str, u16) {
        let port = if self.lb == NodeLb::XdpPass {
            PGBOUNCER_PORT
        } else {
            PRIMARY_PORT
        };
        (NODES[self.node()], port)
    }

    /// The measurements of this target: the local member (and direct through the XDP hooks) gets
    /// what the LB-host targets get but iperf3; the remote member select-only with the simple
    /// protocol, for half as long (the time budget: the node slots add about 11 minutes to a full run).
    pub(super) fn kinds(self, prepared: bool) -> Vec<Kind> {
        let mut k = vec![Kind::Simple];
        if self.local {
            if prepared {
                k.push(Kind::Prepared);
            }
            k.push(Kind::Connect);
        }
        k
    }
}

/// The load balancers of the node slots: HAProxy or pgsvc on the primary's and the replica's node.
pub(super) struct NodeLbs {
    sb: Sb,
    bin: PathBuf,
    inventory: PathBuf,
    work: PathBuf,
    /// The HAProxy config of each node (its own stats socket), and the sockets.
    haproxy_cfg: Vec<PathBuf>,
    haproxy_sock: Vec<PathBuf>,
    /// The config text (node pg-test-1's), for the JSON.
    pub(super) haproxy_text: String,
    running: Option<NodeLb>,
    /// One process per node in NODE_IDX order while `running` is set.
    procs: Vec<Bg>,
    starts: u32,
    /// The pass-through XDP program on the nodes' switch ports while pgsvc runs, or the XDP-pass
    /// slot (native XDP_TX on a veth reaches the peer only when the peer runs XDP too).
    pass: NsWorker<Vec<PassProgram>>,
    /// One worker in each node's namespace (NODE_IDX order) holding the pass-through program on the
    /// node's `eth0` during the XDP-pass slot, where pgsvc's own program sits during its slot.
    node_pass: Vec<NsWorker<Option<PassProgram>>>,
}

/// Pigsty's HAProxy config for a database node: what `pgsvc render haproxy` renders, binds kept as
/// `*`, a stats socket added, and the global maxconn capped as `pgsandbox haproxy` caps it (HAProxy
/// refuses to start when the open-files hard limit cannot carry it).
fn node_haproxy_config(rendered: &str, sock: &Path) -> String {
    let mut hard: libc::rlimit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut hard) } == 0;
    let cap = if got {
        (hard.rlim_max.saturating_sub(200) / 2).min(65535)
    } else {
        4096
    };
    let text = haproxy_config(rendered, sock, None);
    let mut out = String::new();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with([' ', '\t', '#']) && !line.is_empty() {
            section = line.split_whitespace().next().unwrap_or("");
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if section == "global"
            && f.len() == 2
            && f[0] == "maxconn"
            && f[1].parse::<u64>().is_ok_and(|m| m > cap)
        {
            let _ = writeln!(
                out,
                "    maxconn {cap}  # capped by bench-e2e to the open-files hard limit (was {})",
                f[1]
            );
            continue;
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

impl NodeLbs {
    pub(super) fn new(
        sb: &Sb,
        bin: &Path,
        inventory: &Path,
        rendered: &str,
        work: &Path,
    ) -> Result<Self> {
        let mut haproxy_cfg = Vec::new();
        let mut haproxy_sock = Vec::new();
        let mut haproxy_text = String::new();
        for node in NODE_IDX {
            let sock = work.join(format!("haproxy-{}.sock", host(node)));
            let cfg = work.join(format!("haproxy-{}.cfg", host(node)));
            let text = node_haproxy_config(rendered, &sock);
            fs::write(&cfg, &text).with_context(|| format!("writing {}", cfg.display()))?;
            run_ok(
                sb.in_ns(&host(node), "haproxy")
                    .args(["-c", "-q", "-f"])
                    .arg(&cfg),
                // HAProxy reads every CA certificate at start: seconds on a machine busy with I/O
                Duration::from_secs(120),
            )
            .context("haproxy rejects the node config")?;
            if node == PRIMARY_NODE {
                haproxy_text = text;
            }
            haproxy_cfg.push(cfg);
            haproxy_sock.push(sock);
        }
        Ok(Self {
            sb: sb.clone(),
            bin: bin.to_owned(),
            inventory: inventory.to_owned(),
            work: work.to_owned(),
            haproxy_cfg,
            haproxy_sock,
            haproxy_text,
            running: None,
            procs: Vec::new(),
            starts: 0,
            pass: NsWorker::start(&sb.ns("sw"), Vec::new),
            node_pass: NODE_IDX
                .into_iter()
                .map(|node| NsWorker::start(&sb.ns(&host(node)), || None))
                .collect(),
        })
    }

    fn admin(node: usize) -> Result<SocketAddr> {
        sockaddr(NODES[node], NODE_ADMIN_PORT)
    }

    /// `pgsvc run` in a node's namespace: the node-resident topology as Pigsty would run it (no
    /// `--vip`: vip-manager owns the VIP; no `--takeover`: the node's HAProxy is stopped first).
    pub(super) fn pgsvc_command(&self, node: usize, pin: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--netns", &self.sb.ns(&host(node)), "run", "--config"])
            .arg(&self.inventory)
            .args(["--cluster", "pg-test", "--iface", "eth0"])
            .args(["--xdp-mode", "native", "--admin"])
            .arg(format!("{}:{NODE_ADMIN_PORT}", NODES[node]))
            .arg("--pin-dir")
            .arg(pin)
            .args(["--log", "info"]);
        c
    }

    fn log_file(&self, name: &str) -> Result<(PathBuf, fs::File)> {
        let path = self.work.join(name);
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok((path, f))
    }

    /// Runs `lb` on both nodes (and nothing else of the node slots); waits until every instance is up.
    pub(super) fn start(&mut self, lb: NodeLb, client: &NsWorker<()>) -> Result<()> {
        if self.running == Some(lb) {
            return Ok(());
        }
        self.stop();
        self.running = Some(lb);
        if let Err(e) = self.spawn(lb) {
            self.stop();
            return Err(e);
        }
        self.wait_ready(lb, client)
    }

    /// The pass-through program, native, on both nodes' switch ports (in the switch namespace).
    fn attach_switch_pass(&self) -> Result<()> {
        self.pass
            .run(|p| -> Result<(), String> {
                for node in NODE_IDX {
                    p.push(
                        PassProgram::attach(&host(node), None)
                            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?,
                    );
                }
                Ok(())
            })
            .map_err(|e| anyhow!("attaching the pass-through XDP program: {e}"))
    }

    /// Starts `lb`'s processes on both nodes (and the pass-through programs for pgsvc); for the
    /// XDP-pass slot only attaches the pass-through program on the switch ports and on both nodes'
    /// `eth0` (native, inside the node's namespace: where `pgsvc run --iface eth0 --xdp-mode native`
    /// attaches its own).
    fn spawn(&mut self, lb: NodeLb) -> Result<()> {
        match lb {
            NodeLb::Haproxy => {
                for (i, node) in NODE_IDX.into_iter().enumerate() {
                    let (_, logf) = self.log_file(&format!("haproxy-{}.log", host(node)))?;
                    // the daemons of pgsandbox run with the open-files soft limit raised to the hard one
                    let mut cmd = Command::new("bash");
                    cmd.args(["-c", r#"ulimit -n "$(ulimit -Hn)" && exec "$@""#, "bash"])
                        .args(["ip", "netns", "exec", &self.sb.ns(&host(node))])
                        .arg("haproxy")
                        .args(["-db", "-f"])
                        .arg(&self.haproxy_cfg[i])
                        .stdin(Stdio::null())
                        .stdout(logf.try_clone()?)
                        .stderr(logf);
                    let name = format!("haproxy on {}", MEMBERS[node]);
                    self.procs
                        .push(Bg::spawn(&name, &mut cmd, Duration::from_secs(10))?);
                }
            }
            NodeLb::XdpPass => {
                self.attach_switch_pass()?;
                for (i, node) in NODE_IDX.into_iter().enumerate() {
                    self.node_pass[i]
                        .run(|p| -> Result<(), String> {
                            // with the cause: EBUSY here means an XDP program is still on eth0
                            // (e.g. a pinned link of a pgsvc that was killed)
                            let prog = PassProgram::attach("eth0", None)
                                .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
                            *p = Some(prog);
                            Ok(())
                        })
                        .map_err(|e| {
                            anyhow!(
                                "attaching the pass-through XDP program to eth0 of {}: {e}",
                                MEMBERS[node]
                            )
                        })?;
                }
            }
            NodeLb::Pgsvc => {
                self.attach_switch_pass()?;
                self.starts += 1;
                for node in NODE_IDX {
                    let pin = PathBuf::from("/sys/fs/bpf")
                        .join(self.sb.ns(&host(node)))
                        .join(format!("bench-{}", self.starts));
                    let (_, logf) = self.log_file(&format!("pgsvc-{}.log", host(node)))?;
                    let mut cmd = self.pgsvc_command(node, &pin);
                    cmd.stdin(Stdio::null())
                        .stdout(logf.try_clone()?)
                        .stderr(logf);
                    let name = format!("pgsvc on {}", MEMBERS[node]);
                    self.procs
                        .push(Bg::spawn(&name, &mut cmd, Duration::from_secs(10))?);
                }
            }
        }
        Ok(())
    }

    /// Waits until every instance of `lb` answers (HAProxy: its stats socket; pgsvc: `/ready`); the
    /// XDP-pass slot has no process and is ready once attached.
    fn wait_ready(&mut self, lb: NodeLb, client: &NsWorker<()>) -> Result<()> {
        if lb == NodeLb::XdpPass {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(READY_TIMEOUT_S);
        loop {
            let mut pending = Vec::new();
            for (i, node) in NODE_IDX.into_iter().enumerate() {
                let alive = self.procs.get_mut(i).is_some_and(Bg::alive);
                let up = alive
                    && match lb {
                        NodeLb::Haproxy => UnixStream::connect(&self.haproxy_sock[i]).is_ok(),
                        NodeLb::Pgsvc => matches!(
                            http(client, Self::admin(node)?, "GET", "/ready"),
                            Ok((200, _))
                        ),
                        NodeLb::XdpPass => true,
                    };
                if !alive {
                    let log = self.log_tail(lb, node);
                    self.stop();
                    bail!(
                        "{} on {} exited while starting; log:\n{log}",
                        lb.key(),
                        MEMBERS[node]
                    );
                }
                if !up {
                    pending.push(MEMBERS[node]);
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.log_tail(lb, NODE_IDX[0]);
                self.stop();
                bail!(
                    "{} not ready in {READY_TIMEOUT_S} s on {pending:?}; log of {}:\n{log}",
                    lb.key(),
                    MEMBERS[NODE_IDX[0]]
                );
            }
            pause(Duration::from_millis(100))?;
        }
    }

    fn log_tail(&self, lb: NodeLb, node: usize) -> String {
        let name = match lb {
            NodeLb::Haproxy => format!("haproxy-{}.log", host(node)),
            NodeLb::Pgsvc => format!("pgsvc-{}.log", host(node)),
            NodeLb::XdpPass => return String::new(),
        };
        tail(
            &fs::read_to_string(self.work.join(name)).unwrap_or_default(),
            30,
        )
    }

    /// Stops whatever runs on the nodes, and takes the pass-through programs off (dropping a
    /// [`PassProgram`] detaches it), so that pgsvc's slot finds `eth0` free of XDP.
    pub(super) fn stop(&mut self) {
        for mut p in self.procs.drain(..) {
            p.stop();
        }
        self.pass.run(Vec::clear);
        for w in &self.node_pass {
            w.run(|p| *p = None);
        }
        self.running = None;
    }

    /// The LB process serving `target` (the dialled node's instance).
    pub(super) fn pid(&self, target: NodeTarget) -> Option<u32> {
        if self.running != Some(target.lb) {
            return None;
        }
        let i = NODE_IDX.iter().position(|n| *n == target.node())?;
        self.procs.get(i).and_then(Bg::pid)
    }

    /// Waits until pg-test-1 is the only primary and every running node LB sends the watched
    /// services to it only.
    pub(super) fn wait_converged(&self, client: &NsWorker<()>, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let want = vec![MEMBERS[PRIMARY_NODE].to_owned()];
        loop {
            check_stop()?;
            let last = match primary_index(client) {
                Some(PRIMARY_NODE) => self.disagreement(client, &want),
                Some(p) => Some(format!(
                    "the primary is {}, the node rounds need {}",
                    MEMBERS[p], MEMBERS[PRIMARY_NODE]
                )),
                None => Some("no single primary".into()),
            };
            let Some(last) = last else {
                return Ok(());
            };
            if Instant::now() > deadline {
                bail!("the node load balancers did not converge within {timeout:?}: {last}");
            }
            pause(Duration::from_millis(250))?;
        }
    }

    /// The first node LB whose watched services do not send to `want` only, as a message.
    fn disagreement(&self, client: &NsWorker<()>, want: &[String]) -> Option<String> {
        let lb = self.running?;
        for (i, node) in NODE_IDX.into_iter().enumerate() {
            for svc in WATCHED_SERVICES {
                let got = match lb {
                    NodeLb::Haproxy => haproxy_up_servers(&self.haproxy_sock[i], svc),
                    NodeLb::Pgsvc => {
                        Self::admin(node).and_then(|a| pgsvc_active_servers(client, a, svc))
                    }
                    // no LB: the client dials the primary's pgbouncer
                    NodeLb::XdpPass => return None,
                };
                match got {
                    Ok(v) if v == want => {}
                    Ok(v) => {
                        return Some(format!(
                            "{} on {} {svc}: {v:?}, want {want:?}",
                            lb.key(),
                            MEMBERS[node]
                        ));
                    }
                    Err(e) => return Some(format!("{} on {}: {e:#}", lb.key(), MEMBERS[node])),
                }
            }
        }
        None
    }
}

impl Drop for NodeLbs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `node_resident` section of the JSON: placement, medians and ratios of every node target, and
/// the local member's TPS target.
pub(super) fn document(measurements: &[Value], lbs: &NodeLbs, sb: &Sb) -> Value {
    let figs = node_figures(measurements);
    json!({
        "placement": {
            "direct": format!("{}:{PGBOUNCER_PORT} (pg-test-1's pgbouncer; the direct slot shared with the LB-host topology)", NODES[PRIMARY_NODE]),
            "haproxy_local": format!("{}:{PRIMARY_PORT} — HAProxy on pg-test-1's node, proxying to its own pgbouncer", NODES[PRIMARY_NODE]),
            "pgsvc_local": format!("{}:{PRIMARY_PORT} — pgsvc on pg-test-1's node, XDP translates 5433 → 6432 and passes to the node's stack", NODES[PRIMARY_NODE]),
            "haproxy_remote": format!("{}:{PRIMARY_PORT} — HAProxy on pg-test-2's node (a replica), proxying to pg-test-1", NODES[REPLICA_NODE]),
            "pgsvc_remote": format!("{}:{PRIMARY_PORT} — pgsvc on pg-test-2's node (a replica), XDP full NAT to pg-test-1", NODES[REPLICA_NODE]),
            "direct_xdp_pass": format!("{}:{PGBOUNCER_PORT} — direct, no LB, through the same XDP hooks as node pgsvc, each running the pass-through program (XDP_PASS only)", NODES[PRIMARY_NODE]),
        },
        "slots": "node HAProxy = HAProxy on pg-test-1's and pg-test-2's nodes; node pgsvc = pgsvc on both; node XDP pass = no LB, the pass-through XDP program natively on both nodes' eth0 and on their switch ports; only the slot's LB (or hooks) run",
        "floor": "direct_xdp_pass is the floor of any XDP datapath on this veth test bed: native XDP on a veth copies each cloned skb (every TCP data segment) into an XDP buffer and builds a new skb after XDP_PASS, which a physical NIC does not",
        "kinds": {
            "local": "select_simple, select_prepared, connect (also direct_xdp_pass)",
            "remote": "select_simple, for connect_secs (half of bench_secs)",
        },
        "target": local_target(&figs),
        "haproxy_config": lbs.haproxy_text,
        "pgsvc_command": show(&lbs.pgsvc_command(
            PRIMARY_NODE,
            Path::new("/sys/fs/bpf/<sandbox id>-n1/bench-<n>"),
        ))
        .replace(&sb.id, "<sandbox id>"),
        "pass_program": "pgsvc::datapath::pass::PassProgram, native, on the switch ports n1 and n2 while pgsvc runs; in the XDP-pass slot on those ports and on eth0 inside pg-test-1's and pg-test-2's namespaces",
        "pgsvc_log_tail": lbs.log_tail(NodeLb::Pgsvc, PRIMARY_NODE),
        "figures": figs,
    })
}

/// The acceptance target of the local member from the node figures: pgsvc_local / direct of the
/// select-only TPS, simple and prepared (`met` is null when the simple round was not measured).
/// Beside it, for information only, pgsvc_local against the floor (direct through the same XDP
/// hooks) and the floor against direct.
fn local_target(figs: &[Value]) -> Value {
    let target =
        |key: &str, ratio: &str| find_fig(figs, key).and_then(|f| f["ratios"][ratio].as_f64());
    let both = |ratio: &str| {
        (
            target("select_simple.tps", ratio),
            target("select_prepared.tps", ratio),
        )
    };
    let (simple, prepared) = both("pgsvc_local_vs_direct");
    let met =
        simple.map(|s| s >= LOCAL_TPS_TARGET && prepared.is_none_or(|p| p >= LOCAL_TPS_TARGET));
    let (floor_simple, floor_prepared) = both("pgsvc_local_vs_direct_xdp_pass");
    let (hooks_simple, hooks_prepared) = both("direct_xdp_pass_vs_direct");
    json!({
        "rule": format!("pgsvc_local select-only TPS >= {LOCAL_TPS_TARGET} x direct (simple and prepared)"),
        "select_simple": simple,
        "select_prepared": prepared,
        "met": met,
        "vs_floor": {
            "what": "information, not the rule: pgsvc_local / direct_xdp_pass (direct through the same XDP hooks, XDP_PASS only), and the floor / direct",
            "select_simple": floor_simple,
            "select_prepared": floor_prepared,
            "floor_vs_direct_simple": hooks_simple,
            "floor_vs_direct_prepared": hooks_prepared,
        },
    })
}

/// Medians over rounds of the pgbench figures for direct and every node target, and their ratios.
pub(super) fn node_figures(measurements: &[Value]) -> Vec<Value> {
    FIGS.iter()
        .filter(|f| {
            ["select_simple", "select_prepared", "connect"]
                .iter()
                .any(|k| f.key.starts_with(&format!("{k}.")))
        })
        .map(|f| {
            let (kind, metric) = f.key.split_once('.').unwrap_or((f.key, ""));
            let vals = |target: &str| -> Vec<f64> {
                measurements
                    .iter()
                    .filter(|m| m["kind"] == kind && m["target"] == target)
                    .filter_map(|m| m["metrics"][metric].as_f64())
                    .collect()
            };
            let mut medians = serde_json::Map::new();
            let mut rounds = serde_json::Map::new();
            let keys = std::iter::once("direct").chain(NODE_TARGETS.iter().map(|t| t.key()));
            for key in keys {
                let v = vals(key);
                medians.insert(key.into(), json!(median(&v).map(|x| round(x, 4))));
                rounds.insert(key.into(), json!(v));
            }
            let m = |k: &str| medians[k].as_f64();
            let mut doc = json!({
                "key": f.key, "section": f.section, "label": f.label, "unit": f.unit,
                "better": if f.higher_better { "higher" } else { "lower" },
                "rounds": rounds,
                "ratios": {
                    "haproxy_local_vs_direct": ratio(m("haproxy_local"), m("direct")),
                    "pgsvc_local_vs_direct": ratio(m("pgsvc_local"), m("direct")),
                    "haproxy_remote_vs_direct": ratio(m("haproxy_remote"), m("direct")),
                    "pgsvc_remote_vs_direct": ratio(m("pgsvc_remote"), m("direct")),
                    "pgsvc_local_vs_haproxy_local": ratio(m("pgsvc_local"), m("haproxy_local")),
                    "pgsvc_remote_vs_haproxy_remote": ratio(m("pgsvc_remote"), m("haproxy_remote")),
                    "direct_xdp_pass_vs_direct": ratio(m("direct_xdp_pass"), m("direct")),
                    "pgsvc_local_vs_direct_xdp_pass": ratio(m("pgsvc_local"), m("direct_xdp_pass")),
                },
            });
            for (k, v) in medians {
                doc[k] = v;
            }
            doc
        })
        .collect()
}

/// The node-resident section of BENCHMARKS.md (empty when the JSON has none).
pub(super) fn markdown(doc: &Value) -> String {
    let nr = &doc["node_resident"];
    let empty = Vec::new();
    let figs = nr["figures"].as_array().unwrap_or(&empty);
    let mut s = String::new();
    if figs.is_empty() {
        return s;
    }
    let p = &doc["params"];
    let _ = writeln!(
        s,
        "## Node-resident topology (Pigsty's default): the service layer on the database node\n"
    );
    let _ = writeln!(
        s,
        "Medians over {} round(s), interleaved with the LB-host topology's below (the same direct slot is the \
         baseline of both). **Local member**: the client dials `{}:{PRIMARY_PORT}`, the primary's own node — \
         pgsvc there translates 5433 → 6432 in XDP and hands the packet to the node's own stack (replies get \
         the dialled address back in a TC egress program); HAProxy there (Pigsty's config, `bind *:5433`) proxies \
         to its node's pgbouncer. **Remote member**: the client dials `{}:{PRIMARY_PORT}`, a replica's node, which \
         forwards to the primary — pgsvc by XDP full NAT, HAProxy by proxying. Ratios are target / direct; \
         HAProxy and pgsvc run on both nodes during their slot, never together.\n",
        p["rounds"], NODES[PRIMARY_NODE], NODES[REPLICA_NODE],
    );
    // an older JSON has no floor slot: its text and columns are left out, the rest renders as before
    let has_floor = figs.iter().any(|f| f["direct_xdp_pass"].is_number());
    if has_floor {
        let _ = writeln!(
            s,
            "**Direct through the same XDP hooks (XDP_PASS only)** is the floor of any XDP datapath on this veth \
             test bed: no LB runs, the client dials `{}:{PGBOUNCER_PORT}` as direct does, and the pass-through XDP \
             program (it only returns `XDP_PASS`) is attached natively wherever pgsvc's slot has XDP — on both \
             nodes' `eth0` and on their switch ports. On a veth, native XDP copies each cloned skb (every TCP data \
             segment is one) into an XDP buffer and builds a new skb after `XDP_PASS`; a physical NIC does none of \
             that. (pgsvc's slot also has its TC egress program and its cgroup socket programs; the floor has \
             neither.)\n",
            NODES[PRIMARY_NODE],
        );
    }
    let t = &nr["target"];
    let verdict = match t["met"].as_bool() {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    };
    let _ = writeln!(
        s,
        "Target: pgsvc on the local member ≥ {LOCAL_TPS_TARGET} × direct select-only TPS — {verdict} \
         (simple {}, prepared {}).\n",
        rat(&t["select_simple"]),
        rat(&t["select_prepared"]),
    );
    let fl = &t["vs_floor"];
    if fl["select_simple"].is_number() || fl["select_prepared"].is_number() {
        let _ = writeln!(
            s,
            "Against the floor (information; the target above stays against direct): pgsvc on the local member \
             = simple {}, prepared {} × direct through the same XDP hooks; the floor itself = simple {}, \
             prepared {} × direct.\n",
            rat(&fl["select_simple"]),
            rat(&fl["select_prepared"]),
            rat(&fl["floor_vs_direct_simple"]),
            rat(&fl["floor_vs_direct_prepared"]),
        );
    }
    let mut head = vec!["figure", "unit", "better", "direct"];
    if has_floor {
        head.extend([
            "direct through the same XDP hooks (XDP_PASS only)",
            "XDP hooks/direct",
        ]);
    }
    head.extend([
        "HAProxy local",
        "pgsvc local",
        "HAProxy local/direct",
        "pgsvc local/direct",
    ]);
    if has_floor {
        head.push("pgsvc local/XDP hooks");
    }
    head.extend([
        "pgsvc/HAProxy local",
        "HAProxy remote",
        "pgsvc remote",
        "HAProxy remote/direct",
        "pgsvc remote/direct",
    ]);
    let row = |cells: &[String]| format!("| {} |", cells.join(" | "));
    let _ = writeln!(s, "| {} |", head.join(" | "));
    let _ = writeln!(
        s,
        "|---|---|---|{}",
        "---:|".repeat(head.len().saturating_sub(3))
    );
    let mut section = "";
    for f in figs {
        let sec = f["section"].as_str().unwrap_or("");
        if sec != section {
            let mut cells = vec![format!("**{sec}**")];
            cells.resize(head.len(), String::new());
            let _ = writeln!(s, "{}", row(&cells).replace("  ", " "));
            section = sec;
        }
        let no_lb = f["key"].as_str().is_some_and(|k| k.contains("lb_cpu"));
        let base = |key: &str| {
            if no_lb {
                "— (no LB)".to_string()
            } else {
                num(&f[key])
            }
        };
        let r = &f["ratios"];
        let mut cells = vec![
            f["label"].as_str().unwrap_or("").to_owned(),
            f["unit"].as_str().unwrap_or("").to_owned(),
            f["better"].as_str().unwrap_or("").to_owned(),
            base("direct"),
        ];
        if has_floor {
            cells.extend([
                base("direct_xdp_pass"),
                rat(&r["direct_xdp_pass_vs_direct"]),
            ]);
        }
        cells.extend([
            num(&f["haproxy_local"]),
            num(&f["pgsvc_local"]),
            rat(&r["haproxy_local_vs_direct"]),
            rat(&r["pgsvc_local_vs_direct"]),
        ]);
        if has_floor {
            cells.push(rat(&r["pgsvc_local_vs_direct_xdp_pass"]));
        }
        cells.extend([
            rat(&r["pgsvc_local_vs_haproxy_local"]),
            num(&f["haproxy_remote"]),
            num(&f["pgsvc_remote"]),
            rat(&r["haproxy_remote_vs_direct"]),
            rat(&r["pgsvc_remote_vs_direct"]),
        ]);
        let _ = writeln!(s, "{}", row(&cells));
    }
    let _ = writeln!(s, "\n### How the node-resident rounds are measured\n");
    let (floor_slot, floor_text, floor_kinds) = if has_floor {
        (
            ", *node pgsvc* and *node XDP pass*",
            " The *node XDP pass* slot (the floor) runs no LB: the pass-through program natively on both switch \
             ports and on `eth0` inside both nodes' namespaces, taken off again before any other slot starts \
             (pgsvc's native attach needs `eth0` free of XDP).",
            "local member and the floor",
        )
    } else {
        (" and *node pgsvc*", "", "local member")
    };
    let _ = writeln!(
        s,
        "- **Slots**: every round visits direct, HAProxy on the LB host, pgsvc on the LB host, *node HAProxy*\
         {floor_slot} in a rotated order. In a node slot the LB runs on pg-test-1's node (the primary) and on \
         pg-test-2's node (a replica) at once; the node's HAProxy is stopped before its pgsvc starts (the upgrade \
         in place, no `--takeover`). pgsvc: `{}` (and the same on pg-test-2's node), with the pass-through XDP \
         program on both nodes' switch ports (native `XDP_TX` on a veth needs it on the peer).{floor_text}",
        nr["pgsvc_command"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        s,
        "- **HAProxy on the node**: what `pgsvc render haproxy` renders for the bench's inventory (Pigsty's \
         services and timers), binds left at `*` as Pigsty has them, a stats socket added for the bench, \
         the global maxconn capped to the open-files hard limit (the config is in the JSON)."
    );
    let _ = writeln!(
        s,
        "- **Measurements**: {floor_kinds}: pgbench -S simple and `-M prepared`, and `pgbench -C`, the same \
         commands and CPU accounting as the LB-host rounds (no iperf3); remote member: pgbench -S simple only, \
         for {} s instead of {} s (time budget). *LB process CPU* is the serving node's HAProxy or pgsvc agent; *machine busy* (all CPUs, \
         every host of the sandbox) per 1000 transactions is the node's total price of a transaction here.",
        p["connect_secs"], p["bench_secs"],
    );
    let _ = writeln!(s);
    s
}

/// The node-resident medians on stdout after the run (nothing when not measured).
pub(super) fn print_table(doc: &Value) {
    let nr = &doc["node_resident"];
    let Some(figs) = nr["figures"].as_array() else {
        return;
    };
    println!(
        "\nnode-resident: {:<44} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "figure (median)",
        "direct",
        "xdp-pass",
        "hap-loc",
        "pgsvc-loc",
        "hap-rem",
        "pgsvc-rem",
        "loc/dir",
        "loc/xdp",
        "rem/dir"
    );
    for f in figs {
        println!(
            "{:<59} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
            format!(
                "{} {} [{}]",
                f["section"].as_str().unwrap_or(""),
                f["label"].as_str().unwrap_or(""),
                f["unit"].as_str().unwrap_or("")
            ),
            num(&f["direct"]),
            num(&f["direct_xdp_pass"]),
            num(&f["haproxy_local"]),
            num(&f["pgsvc_local"]),
            num(&f["haproxy_remote"]),
            num(&f["pgsvc_remote"]),
            rat(&f["ratios"]["pgsvc_local_vs_direct"]),
            rat(&f["ratios"]["pgsvc_local_vs_direct_xdp_pass"]),
            rat(&f["ratios"]["pgsvc_remote_vs_direct"]),
        );
    }
    let t = &nr["target"];
    println!(
        "target pgsvc local >= {LOCAL_TPS_TARGET} x direct TPS: met = {} (simple {}, prepared {}); \
         against direct through the same XDP hooks (information): simple {}, prepared {}",
        t["met"],
        rat(&t["select_simple"]),
        rat(&t["select_prepared"]),
        rat(&t["vs_floor"]["select_simple"]),
        rat(&t["vs_floor"]["select_prepared"]),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A measurement as the throughput rounds record it.
    fn m(target: &str, kind: &str, metric: &str, v: f64) -> Value {
        json!({ "target": target, "kind": kind, "metrics": { metric: v } })
    }

    /// Three rounds of select-only TPS for direct, the node targets and the LB host's pgsvc.
    /// (`prepared` is pgsvc_local's prepared TPS minus `local`; direct's is the same as simple;
    /// direct through the XDP hooks does 940 simple, 960 prepared.)
    fn rounds_with(direct: f64, local: f64, prepared: f64) -> Vec<Value> {
        let mut v = rounds_without_floor(direct, local, prepared);
        for d in [-5.0, 0.0, 5.0] {
            v.push(m("direct_xdp_pass", "select_simple", "tps", 940.0 + d));
            v.push(m("direct_xdp_pass", "select_prepared", "tps", 960.0 + d));
        }
        v
    }

    /// The same as an older run recorded them: no direct through the XDP hooks.
    fn rounds_without_floor(direct: f64, local: f64, prepared: f64) -> Vec<Value> {
        let mut v = Vec::new();
        for d in [-5.0, 0.0, 5.0] {
            v.push(m("direct", "select_simple", "tps", direct + d));
            v.push(m("pgsvc_local", "select_simple", "tps", local + d));
            v.push(m("haproxy_local", "select_simple", "tps", 700.0 + d));
            v.push(m("pgsvc_remote", "select_simple", "tps", 800.0 + d));
            v.push(m("haproxy_remote", "select_simple", "tps", 600.0 + d));
            // the LB host's pgsvc must not leak into the node figures
            v.push(m("pgsvc", "select_simple", "tps", 1.0));
            v.push(m("direct", "select_prepared", "tps", direct + d));
            v.push(m(
                "pgsvc_local",
                "select_prepared",
                "tps",
                local + prepared + d,
            ));
        }
        v
    }

    fn rounds(direct: f64, local: f64) -> Vec<Value> {
        rounds_with(direct, local, 10.0)
    }

    #[test]
    fn node_figures_take_medians_per_target_and_ratios_to_direct() {
        let figs = node_figures(&rounds(1000.0, 980.0));
        let tps = find_fig(&figs, "select_simple.tps").expect("a TPS figure");
        assert_eq!(tps["direct"], json!(1000.0));
        assert_eq!(tps["pgsvc_local"], json!(980.0));
        assert_eq!(tps["haproxy_local"], json!(700.0));
        assert_eq!(tps["pgsvc_remote"], json!(800.0));
        let r = &tps["ratios"];
        assert_eq!(r["pgsvc_local_vs_direct"], json!(0.98));
        assert_eq!(r["haproxy_local_vs_direct"], json!(0.7));
        assert_eq!(r["pgsvc_remote_vs_direct"], json!(0.8));
        assert_eq!(r["haproxy_remote_vs_direct"], json!(0.6));
        assert_eq!(r["pgsvc_local_vs_haproxy_local"], json!(1.4));
        assert_eq!(r["pgsvc_remote_vs_haproxy_remote"], json!(1.333));
        assert_eq!(tps["rounds"]["pgsvc_local"], json!([975.0, 980.0, 985.0]));
        // the floor: direct through the same XDP hooks, and pgsvc against it
        assert_eq!(tps["direct_xdp_pass"], json!(940.0));
        assert_eq!(r["direct_xdp_pass_vs_direct"], json!(0.94));
        assert_eq!(r["pgsvc_local_vs_direct_xdp_pass"], json!(1.043));
        // prepared: the remote member is not measured there
        let prep = find_fig(&figs, "select_prepared.tps").expect("a prepared figure");
        assert_eq!(prep["ratios"]["pgsvc_local_vs_direct"], json!(0.99));
        assert_eq!(prep["ratios"]["pgsvc_remote_vs_direct"], Value::Null);
        assert_eq!(prep["ratios"]["direct_xdp_pass_vs_direct"], json!(0.96));
        assert_eq!(
            prep["ratios"]["pgsvc_local_vs_direct_xdp_pass"],
            json!(1.031)
        );
        // an older run without the floor: its ratios are null, the rest as before
        let old = node_figures(&rounds_without_floor(1000.0, 980.0, 10.0));
        let old_tps = find_fig(&old, "select_simple.tps").expect("a TPS figure");
        assert_eq!(old_tps["direct_xdp_pass"], Value::Null);
        assert_eq!(
            old_tps["ratios"]["pgsvc_local_vs_direct_xdp_pass"],
            Value::Null
        );
        assert_eq!(old_tps["ratios"]["pgsvc_local_vs_direct"], json!(0.98));
        // only the pgbench sections
        assert!(figs.iter().all(|f| {
            let k = f["key"].as_str().unwrap_or("");
            !k.starts_with("iperf.") && !k.contains("window")
        }));
    }

    #[test]
    fn local_target_is_met_only_at_or_above_the_ratio() {
        let met = |direct: f64, local: f64| local_target(&node_figures(&rounds(direct, local)));
        assert_eq!(met(1000.0, 975.0)["met"], json!(true));
        assert_eq!(met(1000.0, 975.0)["select_simple"], json!(0.975));
        assert_eq!(met(1000.0, 960.0)["met"], json!(false));
        // prepared below the target fails it too
        let prepared_low = local_target(&node_figures(&rounds_with(1000.0, 990.0, -30.0)));
        assert_eq!(prepared_low["select_simple"], json!(0.99));
        assert_eq!(prepared_low["select_prepared"], json!(0.96));
        assert_eq!(prepared_low["met"], json!(false));
        // against the floor, information only: 990 / 940 simple, 960 / 960 prepared
        let fl = &prepared_low["vs_floor"];
        assert_eq!(fl["select_simple"], json!(1.053));
        assert_eq!(fl["select_prepared"], json!(1.0));
        assert_eq!(fl["floor_vs_direct_simple"], json!(0.94));
        assert_eq!(fl["floor_vs_direct_prepared"], json!(0.96));
        // the floor does not move the rule: above it, still not met against direct
        let below = local_target(&node_figures(&rounds(1000.0, 950.0)));
        assert!(below["vs_floor"]["select_simple"].as_f64() > Some(1.0));
        assert_eq!(below["met"], json!(false));
        // exactly at the target is met
        assert_eq!(met(1000.0, 970.0)["met"], json!(true));
        assert_eq!(local_target(&node_figures(&[]))["met"], Value::Null);
        assert_eq!(
            local_target(&node_figures(&[]))["vs_floor"]["select_simple"],
            Value::Null
        );
    }

    #[test]
    fn node_haproxy_config_keeps_pigstys_binds_and_caps_the_global_maxconn() {
        let rendered = "global\n    maxconn     65535\n\ndefaults\n    mode tcp\n\nlisten pg-test-primary\n    bind *:5433\n    maxconn 5000\n";
        let cfg = node_haproxy_config(rendered, Path::new("/tmp/x.sock"));
        assert!(cfg.contains("    bind *:5433\n"), "{cfg}");
        assert!(cfg.contains("stats socket /tmp/x.sock"), "{cfg}");
        // the listen section's own maxconn stays
        assert!(cfg.contains("    maxconn 5000\n"), "{cfg}");
        let mut hard = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut hard) },
            0
        );
        let global: u64 = cfg
            .lines()
            .skip_while(|l| *l != "global")
            .take_while(|l| *l != "defaults")
            .find_map(|l| l.trim().strip_prefix("maxconn"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|x| x.parse().ok())
            .expect("a global maxconn");
        // pgsandbox's rule: half of what the hard limit leaves after 200 descriptors
        let want = (hard.rlim_max.saturating_sub(200) / 2).min(65535);
        assert_eq!(global, want, "hard limit {}", hard.rlim_max);
        // the LB host's config rewrites the binds: its address, the service port + the offset
        // (pgsvc serves the service ports themselves on every local address)
        let lb = haproxy_config(rendered, Path::new("/tmp/x.sock"), Some(LB_ADDR));
        assert!(lb.contains(&format!("    bind {LB_ADDR}:25433\n")), "{lb}");
        assert!(!lb.contains(":5433\n"), "{lb}");
    }

    #[test]
    fn node_targets_dial_the_primarys_and_a_replicas_node() {
        let by_key = |k: &str| {
            *NODE_TARGETS
                .iter()
                .find(|t| t.key() == k)
                .expect("a node target")
        };
        assert_eq!(by_key("pgsvc_local").pg(), (NODES[0], PRIMARY_PORT));
        assert_eq!(by_key("haproxy_local").pg(), (NODES[0], PRIMARY_PORT));
        assert_eq!(by_key("pgsvc_remote").pg(), (NODES[1], PRIMARY_PORT));
        assert_eq!(by_key("haproxy_remote").pg(), (NODES[1], PRIMARY_PORT));
        // the floor dials direct's address: the primary's pgbouncer
        assert_eq!(by_key("direct_xdp_pass").pg(), (NODES[0], PGBOUNCER_PORT));
        assert_eq!(by_key("direct_xdp_pass").lb, NodeLb::XdpPass);
        let kinds = |k: &str, prepared| -> Vec<&str> {
            by_key(k)
                .kinds(prepared)
                .into_iter()
                .map(Kind::key)
                .collect()
        };
        assert_eq!(
            kinds("pgsvc_local", true),
            ["select_simple", "select_prepared", "connect"]
        );
        assert_eq!(kinds("pgsvc_local", false), ["select_simple", "connect"]);
        assert_eq!(kinds("pgsvc_remote", true), ["select_simple"]);
        assert_eq!(
            kinds("direct_xdp_pass", true),
            ["select_simple", "select_prepared", "connect"]
        );
    }

    #[test]
    fn every_round_visits_each_slot_once_and_direct_is_shared() {
        let names = |t: Topology| -> Vec<&str> {
            t.slots()
                .iter()
                .map(|s| match s {
                    Slot::Lb(t) => t.key(),
                    Slot::Node(lb) => lb.key(),
                })
                .collect()
        };
        assert_eq!(
            names(Topology::Both),
            [
                "direct",
                "haproxy",
                "pgsvc",
                "node_haproxy",
                "node_pgsvc",
                "node_xdp_pass"
            ]
        );
        assert_eq!(names(Topology::LbHost), ["direct", "haproxy", "pgsvc"]);
        assert_eq!(
            names(Topology::Node),
            ["direct", "node_haproxy", "node_pgsvc", "node_xdp_pass"]
        );
    }

    /// A document as real_main writes it, with or without the node-resident part.
    fn doc(with_node: bool) -> Value {
        doc_from(rounds(1000.0, 980.0), with_node)
    }

    fn doc_from(mut ms: Vec<Value>, with_node: bool) -> Value {
        for d in [-5.0, 0.0, 5.0] {
            ms.push(m("haproxy", "select_simple", "tps", 690.0 + d));
            ms.push(m("pgsvc", "select_simple", "tps", 860.0 + d));
        }
        let figs = node_figures(&ms);
        json!({
            "started_at": "2026-12-02T02:00:00Z", "mode": "quick", "duration_s": 1.0,
            "machine": {}, "quiet": {}, "params": { "rounds": 3, "failover_rounds": 0 },
            "figures": figures(&ms),
            "node_resident": if with_node {
                json!({
                    "figures": figs.clone(),
                    "target": local_target(&figs),
                    "pgsvc_command": "pgsvc --netns X run",
                })
            } else {
                Value::Null
            },
            "failover_events": [], "errors": [],
        })
    }

    #[test]
    fn benchmarks_md_shows_the_node_topology_first_then_the_lb_host() {
        let md = crate::markdown(&doc(true), None, "e2e.svg", "e2e.json");
        let node = md
            .find("## Node-resident topology")
            .expect("a node-resident section");
        let lb = md.find("## LB-host topology").expect("an LB-host section");
        assert!(node < lb, "{md}");
        let row = md
            .lines()
            .find(|l| l.starts_with("| select-only TPS (simple) |"))
            .expect("a TPS row");
        // direct, the floor and its ratio, HAProxy local, pgsvc local, ratios (pgsvc local to direct
        // and to the floor), HAProxy remote, pgsvc remote, ratios
        assert_eq!(
            row,
            "| select-only TPS (simple) | tx/s | higher | 1000 | 940.0 | 0.94× | 700.0 | 980.0 | 0.70× | 0.98× | 1.04× | 1.40× | 600.0 | 800.0 | 0.60× | 0.80× |"
        );
        let header = md
            .lines()
            .find(|l| l.starts_with("| figure | unit | better | direct |"))
            .expect("a header");
        assert!(header.starts_with(
            "| figure | unit | better | direct | direct through the same XDP hooks (XDP_PASS only) | XDP hooks/direct |"
        ));
        // the rule is unchanged; the floor is beside it
        assert!(
            md.contains("— **met** (simple 0.98×, prepared 0.99×)"),
            "{md}"
        );
        assert!(
            md.contains("= simple 1.04×, prepared 1.03× × direct through the same XDP hooks; the floor itself = simple 0.94×, prepared 0.96× × direct"),
            "{md}"
        );
        assert!(md.contains("floor of any XDP datapath on this veth"));
        // a run without the floor (an older JSON): no floor columns, text or sentence; the row as before
        let no_floor = crate::markdown(
            &doc_from(rounds_without_floor(1000.0, 980.0, 10.0), true),
            None,
            "e2e.svg",
            "e2e.json",
        );
        let row = no_floor
            .lines()
            .find(|l| l.starts_with("| select-only TPS (simple) |"))
            .expect("a TPS row");
        assert_eq!(
            row,
            "| select-only TPS (simple) | tx/s | higher | 1000 | 700.0 | 980.0 | 0.70× | 0.98× | 1.40× | 600.0 | 800.0 | 0.60× | 0.80× |"
        );
        assert!(!no_floor.contains("XDP_PASS"), "{no_floor}");
        assert!(!no_floor.contains("Against the floor"), "{no_floor}");
        assert!(no_floor.contains("*node HAProxy* and *node pgsvc* in a rotated order"));
        assert!(md.contains("*node HAProxy*, *node pgsvc* and *node XDP pass* in a rotated order"));
        // every table line has as many cells as its header
        for text in [&md, &no_floor] {
            let table: Vec<&str> = text
                .lines()
                .skip_while(|l| !l.starts_with("| figure | unit | better | direct |"))
                .take_while(|l| l.starts_with('|'))
                .collect();
            assert!(table.len() > 3, "{text}");
            let cells = table[0].matches('|').count();
            assert!(
                table.iter().all(|l| l.matches('|').count() == cells),
                "{table:#?}"
            );
        }
        // an older JSON without the node-resident part renders as before
        let old = crate::markdown(&doc(false), None, "e2e.svg", "e2e.json");
        assert!(!old.contains("Node-resident"), "{old}");
        assert!(old.contains("## LB-host topology"));
    }

    #[test]
    fn the_svg_has_a_node_panel_with_five_bars_per_measured_row() {
        let with = crate::svg(&doc(true));
        let without = crate::svg(&doc(false));
        assert!(with.contains("Node-resident (Pigsty's default)"));
        assert!(!without.contains("Node-resident"));
        assert!(with.contains("LB host:") && without.contains("LB host:"));
        // the node panel's bars are 9 px high, the LB host's 12
        let bars = |s: &str, h: &str, color: &str| {
            s.matches(&format!("height=\"{h}\" fill=\"{color}\""))
                .count()
        };
        // node panel: TPS simple has all five ratios, TPS prepared the floor and pgsvc local
        assert_eq!(bars(&with, "9.0", "#9a9a9a"), 2);
        assert_eq!(bars(&with, "9.0", "#2b6cb0"), 2);
        assert_eq!(bars(&with, "9.0", "#d9822b"), 1);
        assert_eq!(bars(&with, "9.0", "#8fb8e8"), 1);
        assert_eq!(bars(&with, "9.0", "#f0c08a"), 1);
        assert_eq!(bars(&without, "9.0", "#2b6cb0"), 0);
        // LB-host panel: TPS simple, HAProxy and pgsvc, in both
        for s in [&with, &without] {
            assert_eq!(bars(s, "12.0", "#2b6cb0"), 1);
            assert_eq!(bars(s, "12.0", "#d9822b"), 1);
        }
        assert!(with.contains(">0.98×</text>") && with.contains(">0.80×</text>"));
        assert!(with.contains(">0.94×</text>") && with.contains(">0.96×</text>"));
        // an older run without the floor: no grey bar, the others as before
        let old = crate::svg(&doc_from(rounds_without_floor(1000.0, 980.0, 10.0), true));
        assert_eq!(bars(&old, "9.0", "#9a9a9a"), 0);
        assert!(with.contains("XDP_PASS hooks") && !old.contains("XDP_PASS hooks"));
        assert_eq!(bars(&old, "9.0", "#2b6cb0"), 2);
    }
}
