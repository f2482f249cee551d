//! `bench-e2e`: pgsvc vs HAProxy vs direct to pgbouncer, through the real sandbox, in one run, in
//! both topologies: node-resident (Pigsty's default, the LB on the database nodes) and LB host.
//!
//! One sandbox (`sandbox/pgsandbox up`, torn down by a guard on every exit, Ctrl-C included),
//! `pgbench -i -s 10` once against the primary's pgbouncer, then:
//!
//! 1. **Throughput rounds.** Each round visits its slots in a rotated order — direct, HAProxy and
//!    pgsvc on the LB host, then HAProxy and pgsvc on the nodes and direct through the same XDP hooks
//!    as pgsvc's, each passing every packet (the floor of an XDP datapath on veth; [`node`]); the
//!    next round starts one slot later. An LB-host slot runs pgbench select-only (simple and
//!    prepared protocol, `-c 8 -j 2`, per-transaction logs for the p99), `pgbench -C` (a new
//!    connection per transaction: connections per second), and iperf3 through a service port; a node
//!    slot runs pgbench against the primary's node (local member) and a replica's node (remote
//!    member), or, in the XDP-pass slot, against the primary's pgbouncer. Only the load balancer under test
//!    runs during its slot (none during direct), so no LB pays for the other's packets. CPU: the LB
//!    process's utime+stime and the machine's softirq, system and total busy time from /proc/stat,
//!    normalised per 1000 transactions / connections or per GB. `--topology lb-host|node` measures
//!    one topology (with direct).
//! 2. **Failover.** Both LBs run; for every switchover and killed primary four writer probes run at
//!    once: through HAProxy, through pgsvc, and straight to each pgbouncer that can become primary
//!    (the "direct" figure: what a client that always knows the primary would see).
//!
//! Writes `--out` (raw rounds, medians, ratios, machine facts, commands), BENCHMARKS.md at the
//! repository root and an SVG chart beside the JSON. `--from-json FILE` only regenerates those two.

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    fmt::Write as _,
    fs,
    io::{Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use pgsvc::datapath::pass::PassProgram;
use pgsvc_tests::netns::NsWorker;
use pgsvc_tests::sandbox::{Attempt, read_attempts};
use pgsvc_tests::write_errors::WriteTally;
use serde_json::{Value, json};

#[path = "bench-e2e/node.rs"]
mod node;
use node::{NodeLb, NodeLbs};

const LB_ADDR: &str = "198.18.0.2";
const VIP: &str = "198.18.0.3";
const VIP_CIDR: &str = "198.18.0.3/24";
const NODES: [&str; 3] = ["198.18.0.11", "198.18.0.12", "198.18.0.13"];
const MEMBERS: [&str; 3] = ["pg-test-1", "pg-test-2", "pg-test-3"];
const ADMIN: &str = "198.18.0.2:9102";
const DB_USER: &str = "dbuser_test";
const DB_PASS: &str = "DBUser.Test";
const DB_NAME: &str = "test";
const PRIMARY_PORT: u16 = 5433;
/// The LB-host HAProxy listens on its service ports + this (25433, ...): pgsvc serves Pigsty's
/// `ip: "*"` services on every address of the LB host while it runs, so HAProxy on the service ports
/// themselves would be reached through pgsvc's XDP program whenever both run (the failover phase).
const HAPROXY_PORT_OFFSET: u16 = 20000;

/// Where the LB-host HAProxy listens for the service on `port`.
const fn haproxy_port(port: u16) -> u16 {
    port + HAPROXY_PORT_OFFSET
}
const PGBOUNCER_PORT: u16 = 6432;
const IPERF_SVC_PORT: u16 = 5441;
const IPERF_PORT: u16 = 5201;
/// The service added to the bench's copy of the inventory for iperf3 (HAProxy gets it too, through
/// `pgsvc render haproxy`).
const IPERF_SERVICE: &str =
    r#"{ name: iperf, port: 5441, dest: 5201, check: /primary, selector: "[]" }"#;
const WATCHED_SERVICES: [&str; 2] = ["pg-test-primary", "pg-test-iperf"];
const SCHEMA: &str = "pgsvc.bench-e2e/v1";

// ------------------------------------------------------------------------------------------------
// interruption

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let handler = on_signal as extern "C" fn(libc::c_int);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn check_stop() -> Result<()> {
    if stopped() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, waking every 100 ms to notice an interruption.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("bench-e2e: {}", msg.as_ref());
}

// ------------------------------------------------------------------------------------------------
// processes

/// A command line as one string (for logs and the JSON's `commands`).
fn show(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    for a in cmd.get_args() {
        let s = a.to_string_lossy();
        if s.is_empty() || s.contains([' ', '"', '\'', '$']) {
            parts.push(format!("'{}'", s.replace('\'', r"'\''")));
        } else {
            parts.push(s.into_owned());
        }
    }
    parts.join(" ")
}

struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        let _ = tx.send(s);
    });
    rx
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child.
fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    // SAFETY: kill(2) of our own child, which has not been reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Runs a command to its end (bounded by `timeout`, stopped on interruption) and collects its output.
fn run(cmd: &mut Command, timeout: Duration) -> Result<Out> {
    let what = show(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let out_rx = reader(child.stdout.take());
    let err_rx = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            break st;
        }
        if stopped() {
            terminate(&mut child, Duration::from_secs(3));
            bail!("interrupted while running {what}");
        }
        if Instant::now() > deadline {
            terminate(&mut child, Duration::from_secs(3));
            bail!("{what} did not finish within {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A daemon started by the command may keep the pipes open: do not wait for it.
    let stdout = out_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    let stderr = err_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    Ok(Out {
        status,
        stdout,
        stderr,
    })
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// [`run`], failing (with the output's tail) on a non-zero exit.
fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Out> {
    let what = show(cmd);
    let out = run(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            tail(&out.stdout, 15),
            tail(&out.stderr, 25)
        );
    }
    Ok(out)
}

/// A background process, stopped (SIGTERM, then SIGKILL after `grace`) when dropped.
struct Bg {
    name: String,
    child: Option<Child>,
    grace: Duration,
}

impl Bg {
    fn spawn(name: &str, cmd: &mut Command, grace: Duration) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {}", show(cmd)))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            grace,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take()
            && terminate(&mut c, self.grace).is_none()
        {
            log(format!("{} did not exit", self.name));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------------------------------------
// the sandbox

#[derive(Clone)]
struct Sb {
    id: String,
    script: PathBuf,
    root: PathBuf,
    state: PathBuf,
    venv: PathBuf,
}

impl Sb {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.script);
        c.env("PGSB_ID", &self.id);
        c
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.id)
    }

    fn in_ns(&self, host: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)]).arg(program);
        c
    }

    fn python(&self) -> PathBuf {
        self.venv.join("bin").join("python")
    }

    fn probe_script(&self) -> PathBuf {
        self.root.join("sandbox").join("writer_probe.py")
    }
}

/// Takes the sandbox down on drop — on success, error, panic or interruption alike.
struct SandboxGuard(Sb);

impl SandboxGuard {
    fn up(root: &Path, id: &str) -> Result<Self> {
        let mut sb = Sb {
            id: id.to_owned(),
            script: root.join("sandbox").join("pgsandbox"),
            root: root.to_owned(),
            state: PathBuf::new(),
            venv: PathBuf::new(),
        };
        if !sb.script.is_file() {
            bail!("{} is missing", sb.script.display());
        }
        // The guard exists before `up` runs, so an interruption during `up` still tears it down.
        let mut guard = Self(sb.clone());
        log(format!("sandbox {id}: up"));
        run_ok(sb.cmd().arg("up"), Duration::from_secs(300))?;
        let env = run_ok(sb.cmd().arg("env"), Duration::from_secs(30))?.stdout;
        for line in env.lines() {
            if let Some(v) = line.strip_prefix("PGSB_STATE=") {
                sb.state = PathBuf::from(v);
            } else if let Some(v) = line.strip_prefix("PGSB_VENV=") {
                sb.venv = PathBuf::from(v);
            }
        }
        if sb.state.as_os_str().is_empty() || sb.venv.as_os_str().is_empty() {
            bail!("`pgsandbox env` did not name PGSB_STATE and PGSB_VENV:\n{env}");
        }
        guard.0 = sb;
        Ok(guard)
    }
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        log(format!("sandbox {}: down", self.0.id));
        let status = Command::new(&self.0.script)
            .arg("down")
            .arg(&self.0.id)
            .env("PGSB_ID", &self.0.id)
            .stdin(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            log(format!(
                "`pgsandbox down {}` failed ({status:?}); clean up with: sandbox/pgsandbox down {}",
                self.0.id, self.0.id
            ));
        }
    }
}

// ------------------------------------------------------------------------------------------------
// HTTP from the client host

fn http(
    client: &NsWorker<()>,
    addr: SocketAddr,
    method: &'static str,
    path: &str,
) -> Result<(u16, String)> {
    let (m, p) = (method.to_owned(), path.to_owned());
    let res = client.run(move |_| pgsvc_tests::netns::http_request(addr, &m, &p));
    res.map_err(|e| anyhow!("{method} http://{addr}{path}: {e}"))
}

fn sockaddr(host: &str, port: u16) -> Result<SocketAddr> {
    format!("{host}:{port}")
        .parse()
        .with_context(|| format!("bad address {host}:{port}"))
}

/// The member whose Patroni answers 200 on /primary, when exactly one does.
fn primary_index(client: &NsWorker<()>) -> Option<usize> {
    let mut found = Vec::new();
    for (i, node) in NODES.iter().enumerate() {
        let Ok(addr) = sockaddr(node, 8008) else {
            continue;
        };
        if let Ok((200, _)) = http(client, addr, "GET", "/primary") {
            found.push(i);
        }
    }
    if found.len() == 1 {
        Some(found[0])
    } else {
        None
    }
}

// ------------------------------------------------------------------------------------------------
// the load balancers

struct Haproxy {
    sb: Sb,
    config: PathBuf,
    sock: PathBuf,
    running: bool,
}

/// Pigsty's HAProxy config as `pgsvc render haproxy` renders it, with a stats socket that lets the
/// bench see when the health checks settled, and (for the LB host: `bind` = its own address, as pgsvc
/// owns the VIP there; the clients are otherwise identical) the binds changed from `*`.
fn haproxy_config(rendered: &str, sock: &Path, bind: Option<&str>) -> String {
    let mut out = String::new();
    for line in rendered.lines() {
        let trimmed = line.trim_start();
        if let (Some(rest), Some(addr)) = (trimmed.strip_prefix("bind *:"), bind) {
            let indent = &line[..line.len() - trimmed.len()];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (port, tail) = rest.split_at(digits);
            match port.parse::<u16>() {
                Ok(p) => {
                    let _ = writeln!(out, "{indent}bind {addr}:{}{tail}", haproxy_port(p));
                }
                Err(_) => {
                    let _ = writeln!(out, "{indent}bind {addr}:{rest}");
                }
            }
            continue;
        }
        let _ = writeln!(out, "{line}");
        if trimmed == "global" {
            let _ = writeln!(
                out,
                "    stats socket {} mode 600 level admin  # added by bench-e2e",
                sock.display()
            );
        }
    }
    out
}

impl Haproxy {
    fn start(&mut self) -> Result<()> {
        if self.running {
            return Ok(());
        }
        run_ok(
            self.sb
                .cmd()
                .args(["haproxy", "start", "--config"])
                .arg(&self.config)
                .args(["--port", &haproxy_port(PRIMARY_PORT).to_string()]),
            Duration::from_secs(30),
        )?;
        self.running = true;
        Ok(())
    }

    fn stop(&mut self) {
        if self.running {
            if let Err(e) = run_ok(
                self.sb.cmd().args(["haproxy", "stop"]),
                Duration::from_secs(30),
            ) {
                log(format!("stopping haproxy: {e:#}"));
            }
            self.running = false;
        }
    }

    fn pid(&self) -> Option<u32> {
        fs::read_to_string(self.sb.state.join("pids").join("haproxy.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Servers in state running (UP) of one backend.
    fn up_servers(&self, backend: &str) -> Result<Vec<String>> {
        haproxy_up_servers(&self.sock, backend)
    }
}

/// Servers in state running (UP) of one backend of the HAProxy behind `sock`, from `show servers state`.
fn haproxy_up_servers(sock: &Path, backend: &str) -> Result<Vec<String>> {
    let mut s =
        UnixStream::connect(sock).with_context(|| format!("connecting to {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"show servers state\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 5 && f[1] == backend && f[5] == "2").then(|| f[3].to_owned())
        })
        .collect())
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Pgsvc {
    bin: PathBuf,
    config: PathBuf,
    lb_ns: String,
    pin_base: PathBuf,
    log: PathBuf,
    starts: u32,
    agent: Option<Bg>,
    pass: NsWorker<Option<PassProgram>>,
    /// The LB host's certificates for the sandbox's etcd (https, client certificates, RBAC).
    etcd_certs: PathBuf,
}

impl Pgsvc {
    fn command(&self, pin: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--netns", &self.lb_ns, "run", "--config"])
            .arg(&self.config)
            .args(["--cluster", "pg-test", "--iface", "eth0", "--vip", VIP_CIDR])
            .args(["--xdp-mode", "native", "--admin", ADMIN, "--pin-dir"])
            .arg(pin)
            // HAProxy, the baseline, keeps listening on the LB's service ports between its rounds;
            // pgsvc's XDP program takes the traffic while it runs, so it starts beside it on purpose
            .arg("--takeover")
            .args(["--log", "info"]);
        for (flag, file) in [
            ("--etcd-ca", "ca.crt"),
            ("--etcd-cert", "server.crt"),
            ("--etcd-key", "server.key"),
        ] {
            c.arg(flag).arg(self.etcd_certs.join(file));
        }
        c
    }

    fn start(&mut self, client: &NsWorker<()>) -> Result<()> {
        if self.agent.is_some() {
            return Ok(());
        }
        // Native XDP on a veth: XDP_TX frames reach the peer only when it has a program too.
        self.pass
            .run(|p| {
                if p.is_none() {
                    *p = Some(PassProgram::attach("lb", None).map_err(|e| e.to_string())?);
                }
                Ok::<(), String>(())
            })
            .map_err(|e| anyhow!("attaching the pass-through XDP program to lb: {e}"))?;
        self.starts += 1;
        let pin = self.pin_base.join(format!("bench-{}", self.starts));
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = self.command(&pin);
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        self.agent = Some(Bg::spawn("pgsvc", &mut cmd, Duration::from_secs(10))?);
        let admin: SocketAddr = ADMIN.parse()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http(client, admin, "GET", "/ready") {
                return Ok(());
            }
            let alive = self.agent.as_mut().is_some_and(Bg::alive);
            if !alive || Instant::now() > deadline {
                let text = fs::read_to_string(&self.log).unwrap_or_default();
                self.stop();
                bail!(
                    "pgsvc {} ready in 30 s; log:\n{}",
                    if alive {
                        "did not become"
                    } else {
                        "exited before it was"
                    },
                    tail(&text, 30)
                );
            }
            pause(Duration::from_millis(100))?;
        }
    }

    fn stop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.stop();
        }
        self.pass.run(|p| {
            *p = None;
        });
    }

    fn pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(Bg::pid)
    }

    /// Servers in the active set of one service, from /status.
    fn active_servers(&self, client: &NsWorker<()>, service: &str) -> Result<Vec<String>> {
        pgsvc_active_servers(client, ADMIN.parse()?, service)
    }
}

/// Servers in the active set of one service of the pgsvc agent whose admin API is `admin`, from /status.
fn pgsvc_active_servers(
    client: &NsWorker<()>,
    admin: SocketAddr,
    service: &str,
) -> Result<Vec<String>> {
    let (code, body) = http(client, admin, "GET", "/status")?;
    if code != 200 {
        bail!("/status of {admin} answered {code}");
    }
    let v: Value = serde_json::from_str(&body).context("/status is not JSON")?;
    let svc = v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == service))
        .ok_or_else(|| anyhow!("{service} not in /status of {admin}"))?;
    Ok(svc["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["active"] == true)
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

impl Drop for Pgsvc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until every running LB sends the watched services to the primary only.
fn wait_converged(
    client: &NsWorker<()>,
    haproxy: &Haproxy,
    pgsvc: &Pgsvc,
    timeout: Duration,
) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        check_stop()?;
        if let Some(p) = primary_index(client) {
            let want = vec![MEMBERS[p].to_owned()];
            let mut ok = true;
            for svc in WATCHED_SERVICES {
                if haproxy.running {
                    match haproxy.up_servers(svc) {
                        Ok(v) if v == want => {}
                        Ok(v) => {
                            ok = false;
                            last = format!("haproxy {svc}: UP {v:?}, want {want:?}");
                        }
                        Err(e) => {
                            ok = false;
                            last = format!("haproxy {svc}: {e:#}");
                        }
                    }
                }
                if pgsvc.agent.is_some() {
                    match pgsvc.active_servers(client, svc) {
                        Ok(v) if v == want => {}
                        Ok(v) => {
                            ok = false;
                            last = format!("pgsvc {svc}: active {v:?}, want {want:?}");
                        }
                        Err(e) => {
                            ok = false;
                            last = format!("pgsvc {svc}: {e:#}");
                        }
                    }
                }
            }
            if ok {
                return Ok(p);
            }
        } else {
            last = "no single primary".into();
        }
        if Instant::now() > deadline {
            bail!("the load balancers did not converge within {timeout:?}: {last}");
        }
        pause(Duration::from_millis(250))?;
    }
}

// ------------------------------------------------------------------------------------------------
// CPU accounting

#[derive(Clone, Copy)]
struct Cpu {
    at: Instant,
    /// user nice system idle iowait irq softirq steal (clock ticks, all CPUs)
    machine: [u64; 8],
    process: Option<u64>,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn process_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let s = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let after = s
        .rsplit_once(')')
        .map(|(_, a)| a)
        .ok_or_else(|| anyhow!("{path}: no ')'"))?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // after the command: state(3) ... utime(14) stime(15) → indexes 11 and 12
    let utime: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    Ok(utime + stime)
}

fn cpu_now(pid: Option<u32>) -> Result<Cpu> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat has no cpu line"))?;
    let mut machine = [0u64; 8];
    for (slot, v) in machine.iter_mut().zip(line.split_whitespace().skip(1)) {
        *slot = v.parse().unwrap_or(0);
    }
    let process = match pid {
        Some(p) => Some(process_ticks(p)?),
        None => None,
    };
    Ok(Cpu {
        at: Instant::now(),
        machine,
        process,
    })
}

/// CPU seconds spent between two snapshots.
struct CpuDelta {
    wall_s: f64,
    process_s: Option<f64>,
    softirq_s: f64,
    system_s: f64,
    busy_s: f64,
}

fn cpu_delta(a: &Cpu, b: &Cpu) -> CpuDelta {
    let hz = clk_tck();
    let d = |i: usize| b.machine[i].saturating_sub(a.machine[i]) as f64 / hz;
    CpuDelta {
        wall_s: (b.at - a.at).as_secs_f64(),
        process_s: match (a.process, b.process) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / hz),
            _ => None,
        },
        softirq_s: d(6),
        system_s: d(2),
        // everything but idle and iowait
        busy_s: d(0) + d(1) + d(2) + d(5) + d(6) + d(7),
    }
}

impl CpuDelta {
    fn json(&self) -> Value {
        json!({
            "wall_s": round(self.wall_s, 3),
            "lb_process_s": self.process_s.map(|x| round(x, 3)),
            "softirq_s": round(self.softirq_s, 3),
            "system_s": round(self.system_s, 3),
            "busy_s": round(self.busy_s, 3),
        })
    }

    /// The four CPU figures per `units` (of 1000 transactions, or of GB): `<prefix>_<what>`.
    fn per(&self, metrics: &mut serde_json::Map<String, Value>, suffix: &str, units: f64) {
        if units <= 0.0 {
            return;
        }
        let scale = if suffix.starts_with("ms") {
            1000.0
        } else {
            1.0
        };
        let mut put = |name: &str, v: Option<f64>| {
            metrics.insert(
                format!("{name}_{suffix}"),
                v.map_or(Value::Null, |x| json!(round(x * scale / units, 4))),
            );
        };
        put("lb_cpu", self.process_s);
        put("softirq", Some(self.softirq_s));
        put("system", Some(self.system_s));
        put("busy", Some(self.busy_s));
    }
}

// ------------------------------------------------------------------------------------------------
// numbers

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn field_after(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix(key)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|x| x.parse().ok())
    })
}

// ------------------------------------------------------------------------------------------------
// targets and measurements

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Direct,
    Haproxy,
    Pgsvc,
}

const TARGETS: [Target; 3] = [Target::Direct, Target::Haproxy, Target::Pgsvc];

impl Target {
    fn key(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Haproxy => "haproxy",
            Target::Pgsvc => "pgsvc",
        }
    }

    /// Where pgbench connects (the primary is pg-test-1 during the throughput rounds).
    fn pg(self) -> (&'static str, u16) {
        match self {
            Target::Direct => (NODES[0], PGBOUNCER_PORT),
            Target::Haproxy => (LB_ADDR, haproxy_port(PRIMARY_PORT)),
            Target::Pgsvc => (VIP, PRIMARY_PORT),
        }
    }

    fn iperf(self) -> (&'static str, u16) {
        match self {
            Target::Direct => (NODES[0], IPERF_PORT),
            Target::Haproxy => (LB_ADDR, haproxy_port(IPERF_SVC_PORT)),
            Target::Pgsvc => (VIP, IPERF_SVC_PORT),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Simple,
    Prepared,
    Connect,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Simple => "select_simple",
            Kind::Prepared => "select_prepared",
            Kind::Connect => "connect",
        }
    }
}

/// Which topologies the throughput rounds measure (`--topology`); direct is the baseline of both.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    Both,
    LbHost,
    Node,
}

impl Topology {
    fn key(self) -> &'static str {
        match self {
            Topology::Both => "both",
            Topology::LbHost => "lb-host",
            Topology::Node => "node",
        }
    }

    fn node(self) -> bool {
        self != Topology::LbHost
    }

    /// The slots of one round, before the rotation.
    fn slots(self) -> Vec<Slot> {
        let mut v = vec![Slot::Lb(Target::Direct)];
        if self != Topology::Node {
            v.extend([Slot::Lb(Target::Haproxy), Slot::Lb(Target::Pgsvc)]);
        }
        if self.node() {
            v.extend([
                Slot::Node(NodeLb::Haproxy),
                Slot::Node(NodeLb::Pgsvc),
                Slot::Node(NodeLb::XdpPass),
            ]);
        }
        v
    }
}

/// A slot of a throughput round: one load balancer (or none, for direct) runs.
#[derive(Clone, Copy)]
enum Slot {
    /// The LB-host topology's targets, and direct.
    Lb(Target),
    /// HAProxy or pgsvc on the primary's and a replica's node, or (no LB) the same XDP hooks as
    /// pgsvc's, each passing every packet.
    Node(NodeLb),
}

/// One endpoint measured in a slot.
struct SlotRun {
    topology: &'static str,
    key: &'static str,
    to: (&'static str, u16),
    lb_pid: Option<u32>,
    kinds: Vec<Kind>,
    /// pgbench for `connect_secs` instead of `bench_secs` (the time budget).
    short: bool,
    /// iperf3 through the LB-host topology's service port.
    iperf: Option<Target>,
}

/// What a slot measures: the LB-host target (pgbench and iperf3), or the node slot's local and
/// remote members (pgbench).
fn slot_runs(
    slot: Slot,
    haproxy: &Haproxy,
    pgsvc: &Pgsvc,
    node_lbs: &NodeLbs,
    prepared: bool,
) -> Result<Vec<SlotRun>> {
    Ok(match slot {
        Slot::Lb(target) => {
            let lb_pid = match target {
                Target::Direct => None,
                Target::Haproxy => Some(haproxy.pid().ok_or_else(|| {
                    anyhow!("no haproxy pid file in {}", haproxy.sb.state.display())
                })?),
                Target::Pgsvc => pgsvc.pid(),
            };
            let mut kinds = vec![Kind::Simple];
            if prepared {
                kinds.push(Kind::Prepared);
            }
            kinds.push(Kind::Connect);
            vec![SlotRun {
                topology: if target == Target::Direct {
                    "both"
                } else {
                    "lb_host"
                },
                key: target.key(),
                to: target.pg(),
                lb_pid,
                kinds,
                short: false,
                iperf: Some(target),
            }]
        }
        Slot::Node(lb) => node::NODE_TARGETS
            .iter()
            .filter(|t| t.lb == lb)
            .map(|t| SlotRun {
                topology: "node",
                key: t.key(),
                to: t.pg(),
                lb_pid: node_lbs.pid(*t),
                kinds: t.kinds(prepared),
                short: !t.local,
                iperf: None,
            })
            .collect(),
    })
}

struct Opts {
    out: PathBuf,
    md: PathBuf,
    svg: PathBuf,
    quick: bool,
    rounds: usize,
    bench_secs: u64,
    connect_secs: u64,
    iperf_secs: u64,
    warmup_secs: u64,
    failover_rounds: usize,
    prepared: bool,
    wait_quiet: u64,
    from_json: Option<PathBuf>,
    keep_work: bool,
    topology: Topology,
}

struct Bench<'a> {
    sb: &'a Sb,
    opts: &'a Opts,
    work: PathBuf,
    foreign: Foreign,
}

impl Bench<'_> {
    fn pgbench_cmd(
        &self,
        (host, port): (&str, u16),
        kind: Kind,
        secs: u64,
        log_prefix: Option<&Path>,
    ) -> Command {
        let mut c = self.sb.in_ns("cl", "pgbench");
        c.env("PGPASSWORD", DB_PASS).args([
            "-n",
            "-S",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &secs.to_string(),
        ]);
        match kind {
            Kind::Simple => {}
            Kind::Prepared => {
                c.args(["-M", "prepared"]);
            }
            Kind::Connect => {
                c.arg("-C");
            }
        }
        if let Some(p) = log_prefix {
            c.arg("-l").arg(format!("--log-prefix={}", p.display()));
        }
        c.args(["-h", host, "-p", &port.to_string(), "-U", DB_USER, DB_NAME]);
        c
    }

    fn note_foreign(&mut self) {
        self.foreign.note();
    }

    fn warmup(&self, to: (&str, u16)) -> Result<()> {
        let mut c = self.pgbench_cmd(to, Kind::Simple, self.opts.warmup_secs, None);
        run_ok(&mut c, Duration::from_secs(self.opts.warmup_secs + 60))?;
        Ok(())
    }

    /// One pgbench run against `to`; `short` runs it for `connect_secs` (the remote member's rounds).
    fn pgbench(
        &mut self,
        to: (&str, u16),
        kind: Kind,
        short: bool,
        lb_pid: Option<u32>,
        tag: &str,
    ) -> Result<Value> {
        let secs = if kind == Kind::Connect || short {
            self.opts.connect_secs
        } else {
            self.opts.bench_secs
        };
        let dir = self.work.join("pgbench").join(tag);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let prefix = dir.join("tx");
        let logs = (kind != Kind::Connect).then_some(prefix.as_path());
        let mut cmd = self.pgbench_cmd(to, kind, secs, logs);
        let command = show(&cmd);
        let a = cpu_now(lb_pid)?;
        let out = run(&mut cmd, Duration::from_secs(secs + 120))?;
        let b = cpu_now(lb_pid)?;
        self.note_foreign();
        if !out.status.success() {
            bail!(
                "pgbench failed ({}):\n{}\n{}",
                out.status,
                tail(&out.stdout, 10),
                tail(&out.stderr, 10)
            );
        }
        let text = &out.stdout;
        let tps = field_after(text, "tps =").ok_or_else(|| anyhow!("no tps in:\n{text}"))?;
        let txs = field_after(text, "number of transactions actually processed:")
            .ok_or_else(|| anyhow!("no transaction count in:\n{text}"))?;
        let failed = field_after(text, "number of failed transactions:").unwrap_or(0.0);
        let lat = field_after(text, "latency average =");
        let cpu = cpu_delta(&a, &b);
        let mut m = serde_json::Map::new();
        m.insert("transactions".into(), json!(txs));
        m.insert("failed".into(), json!(failed));
        if kind == Kind::Connect {
            m.insert("conn_per_s".into(), json!(round(tps, 1)));
            m.insert(
                "conn_time_ms".into(),
                json!(field_after(text, "average connection time =").map(|x| round(x, 3))),
            );
            m.insert("lat_mean_ms".into(), json!(lat));
        } else {
            m.insert("tps".into(), json!(round(tps, 1)));
            m.insert("lat_mean_ms".into(), json!(lat));
            let mut lats = read_pgbench_logs(&dir)?;
            lats.sort_unstable();
            let p = |q: f64| percentile(&lats, q).map(|us| round(us as f64 / 1000.0, 3));
            m.insert("lat_p50_ms".into(), json!(p(50.0)));
            m.insert("lat_p99_ms".into(), json!(p(99.0)));
            m.insert("lat_p999_ms".into(), json!(p(99.9)));
            m.insert("logged_transactions".into(), json!(lats.len()));
        }
        cpu.per(&mut m, "ms_per_1k", txs / 1000.0);
        let _ = fs::remove_dir_all(&dir);
        Ok(json!({ "metrics": m, "cpu": cpu.json(), "command": command }))
    }

    fn iperf(&mut self, target: Target, lb_pid: Option<u32>) -> Result<Value> {
        let (host, port) = target.iperf();
        let mut cmd = self.sb.in_ns("cl", "iperf3");
        cmd.args(["-c", host, "-p", &port.to_string()])
            .args(["-t", &self.opts.iperf_secs.to_string(), "-J"])
            .args(["--connect-timeout", "3000"]);
        let command = show(&cmd);
        let a = cpu_now(lb_pid)?;
        let out = run(&mut cmd, Duration::from_secs(self.opts.iperf_secs + 60))?;
        let b = cpu_now(lb_pid)?;
        self.note_foreign();
        let v: Value = serde_json::from_str(&out.stdout).with_context(|| {
            format!(
                "iperf3 output is not JSON ({}):\n{}\n{}",
                out.status,
                tail(&out.stdout, 10),
                tail(&out.stderr, 10)
            )
        })?;
        if let Some(e) = v["error"].as_str() {
            bail!("iperf3: {e}");
        }
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .ok_or_else(|| anyhow!("iperf3 JSON has no end.sum_received.bits_per_second"))?;
        let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
        let cpu = cpu_delta(&a, &b);
        let mut m = serde_json::Map::new();
        m.insert("gbit_s".into(), json!(round(bps / 1e9, 3)));
        m.insert("bytes".into(), json!(bytes));
        m.insert(
            "retransmits".into(),
            v["end"]["sum_sent"]["retransmits"].clone(),
        );
        cpu.per(&mut m, "s_per_gb", bytes / 1e9);
        Ok(json!({ "metrics": m, "cpu": cpu.json(), "command": command }))
    }
}

/// Per-transaction latencies (µs) from every `-l` log file in `dir`.
fn read_pgbench_logs(dir: &Path) -> Result<Vec<u64>> {
    let mut lats = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        // client_id transaction_no time script_no time_epoch time_us
        lats.extend(text.lines().filter_map(|l| {
            l.split_whitespace()
                .nth(2)
                .and_then(|x| x.parse::<u64>().ok())
        }));
    }
    if lats.is_empty() {
        bail!("no per-transaction log lines in {}", dir.display());
    }
    Ok(lats)
}

// ------------------------------------------------------------------------------------------------
// failover

struct Probe {
    target: &'static str,
    file: PathBuf,
    host: &'static str,
    port: u16,
    bg: Bg,
}

/// One record of writer_probe.py: (t0, t1, ok).
fn probe_records(path: &Path) -> Result<Vec<(f64, f64, bool)>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v: Vec<(f64, f64, bool)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| Some((r["t0"].as_f64()?, r["t1"].as_f64()?, r["ok"].as_bool()?)))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(v)
}

/// writer_probe.py's window: first failed attempt at/after the event → end of the first success
/// after the last failure (0 when nothing failed; None when it never recovered).
fn lb_window(recs: &[(f64, f64, bool)], event: f64) -> Option<f64> {
    let span: Vec<_> = recs.iter().filter(|r| r.0 >= event).collect();
    let Some(first_fail) = span.iter().find(|r| !r.2) else {
        return Some(0.0);
    };
    let last_fail = span.iter().rev().find(|r| !r.2)?;
    span.iter()
        .find(|r| r.2 && r.0 > last_fail.0)
        .map(|ok| ok.1 - first_fail.0)
}

/// The direct figure: a client writing straight to whichever pgbouncer fronts the primary. From the
/// old primary's first failed write after the event to the first write committed by the node that
/// takes writes at the end (after its own last failure). Returns (window, old index, new index).
fn oracle_window(probes: &[Vec<(f64, f64, bool)>], event: f64) -> Option<(f64, usize, usize)> {
    let old = probes
        .iter()
        .position(|recs| recs.iter().rfind(|r| r.0 < event).is_some_and(|r| r.2))?;
    // the writer at the end: the probe with the latest committed write
    let new = probes
        .iter()
        .enumerate()
        .filter_map(|(i, recs)| {
            recs.iter()
                .filter(|r| r.2)
                .map(|r| r.1)
                .reduce(f64::max)
                .map(|t| (i, t))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))?
        .0;
    let Some(first_fail) = probes[old]
        .iter()
        .find(|r| r.0 >= event && !r.2)
        .map(|r| r.0)
    else {
        return Some((0.0, old, new));
    };
    let last_fail = probes[new]
        .iter()
        .filter(|r| !r.2 && r.0 >= first_fail)
        .map(|r| r.0)
        .fold(first_fail, f64::max);
    probes[new]
        .iter()
        .find(|r| r.2 && r.0 > last_fail)
        .map(|r| (r.1 - first_fail, old, new))
}

/// The failed attempts of a client that follows the primary itself: the old primary's direct probe
/// until the new primary's first commit after the event, the new one's from then on.
fn direct_tally(
    direct: &[Vec<Attempt>],
    oracle: Option<(f64, usize, usize)>,
    event: f64,
) -> Option<WriteTally> {
    let (_, old, new) = oracle?;
    let switch = direct[new]
        .iter()
        .find(|a| a.ok && a.t0 >= event)
        .map_or(f64::INFINITY, |a| a.t0);
    let mut follow: Vec<Attempt> = if old == new {
        direct[old].clone()
    } else {
        direct[old]
            .iter()
            .filter(|a| a.t0 < switch)
            .chain(direct[new].iter().filter(|a| a.t0 >= switch))
            .cloned()
            .collect()
    };
    follow.sort_by(|a, b| a.t0.total_cmp(&b.t0));
    Some(WriteTally::of(&follow, event, f64::INFINITY))
}

fn start_probe(
    sb: &Sb,
    work: &Path,
    target: &'static str,
    host: &'static str,
    port: u16,
    run_id: &str,
) -> Result<Probe> {
    let file = work.join(format!("{run_id}-{target}.jsonl"));
    let mut cmd = sb.in_ns("cl", sb.python());
    cmd.arg(sb.probe_script())
        .args(["run", "--host", host, "--port", &port.to_string()])
        .args([
            "--duration",
            "300",
            "--run-id",
            &format!("{run_id}-{target}"),
        ])
        .arg("--out")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(Probe {
        target,
        file,
        host,
        port,
        bg: Bg::spawn(
            &format!("writer probe {target}"),
            &mut cmd,
            Duration::from_secs(5),
        )?,
    })
}

fn event_time(out: &Out) -> Result<f64> {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("event ").and_then(|t| t.trim().parse().ok()))
        .ok_or_else(|| anyhow!("no `event <time>` line in:\n{}", tail(&out.stdout, 10)))
}

fn wait_writes(sb: &Sb, host: &str, port: u16, secs: u64) -> Result<()> {
    run_ok(
        sb.cmd()
            .args(["wait-writes", &format!("{host}:{port}"), &secs.to_string()]),
        Duration::from_secs(secs + 30),
    )?;
    Ok(())
}

/// One event (switchover, or kill-primary) with four probes running; returns the raw record.
#[allow(clippy::too_many_arguments)]
fn failover_event(
    sb: &Sb,
    work: &Path,
    client: &NsWorker<()>,
    haproxy: &Haproxy,
    pgsvc: &Pgsvc,
    kind: &str,
    round_no: usize,
) -> Result<Value> {
    let before = wait_converged(client, haproxy, pgsvc, Duration::from_secs(120))?;
    let run_id = format!("{kind}-{round_no}");
    let mut probes = vec![
        start_probe(
            sb,
            work,
            "haproxy",
            LB_ADDR,
            haproxy_port(PRIMARY_PORT),
            &run_id,
        )?,
        start_probe(sb, work, "pgsvc", VIP, PRIMARY_PORT, &run_id)?,
        start_probe(
            sb,
            work,
            "direct-pg-test-1",
            NODES[0],
            PGBOUNCER_PORT,
            &run_id,
        )?,
        start_probe(
            sb,
            work,
            "direct-pg-test-2",
            NODES[1],
            PGBOUNCER_PORT,
            &run_id,
        )?,
    ];
    pause(Duration::from_secs(3))?;
    let out = match kind {
        "switchover" => run_ok(sb.cmd().arg("switchover"), Duration::from_secs(240))?,
        _ => run_ok(sb.cmd().arg("kill-primary"), Duration::from_secs(60))?,
    };
    let event = event_time(&out)?;
    for (h, p) in [(LB_ADDR, haproxy_port(PRIMARY_PORT)), (VIP, PRIMARY_PORT)] {
        wait_writes(sb, h, p, 150)?;
    }
    pause(Duration::from_secs(3))?;
    for p in &mut probes {
        p.bg.stop();
    }
    let mut rec = json!({
        "kind": kind, "round": round_no, "event_time": event,
        "primary_before": MEMBERS[before],
        "event_output": tail(&out.stdout, 6),
    });
    let mut direct = Vec::new();
    let mut direct_attempts = Vec::new();
    for p in &probes {
        let recs = probe_records(&p.file)?;
        if p.target.starts_with("direct") {
            direct.push(recs);
            direct_attempts.push(read_attempts(&p.file));
            continue;
        }
        let errors = WriteTally::of(&read_attempts(&p.file), event, f64::INFINITY);
        let w = lb_window(&recs, event).map(|w| round(w, 3));
        // writer_probe.py's own summary: its window, safety checks and lost-write verification
        let summary = run(
            sb.in_ns("cl", sb.python())
                .arg(sb.probe_script())
                .arg("summary")
                .arg(&p.file)
                .arg("--events-file")
                .arg(sb.state.join("events.log"))
                .args([
                    "--verify-host",
                    p.host,
                    "--verify-port",
                    &p.port.to_string(),
                ])
                .arg("--json"),
            Duration::from_secs(60),
        )
        .ok()
        .and_then(|o| serde_json::from_str::<Value>(&o.stdout).ok());
        let ev = summary.as_ref().map(|s| s["events"][0].clone());
        rec[p.target] = json!({
            "window_s": w,
            "probe_summary_window_s": ev.as_ref().map(|e| e["window_s"].clone()),
            "max_gap_s": ev.as_ref().map(|e| e["max_gap_s"].clone()),
            "failed_attempts": ev.as_ref().map(|e| e["failed"].clone()),
            "attempts": ev.as_ref().map(|e| e["attempts"].clone()),
            "violations": summary.as_ref().map(|s| s["violations"].clone()),
            "lost_writes": summary.as_ref().map(|s| s["verify"]["lost_count"].clone()),
            "errors": errors.to_json(),
        });
    }
    let oracle = oracle_window(&direct, event);
    rec["direct"] = json!({
        "window_s": oracle.map(|(w, _, _)| round(w, 3)),
        "writer_before": oracle.map(|(_, o, _)| MEMBERS[o]),
        "writer_after": oracle.map(|(_, _, n)| MEMBERS[n]),
        "probes": direct.iter().enumerate().map(|(i, recs)| json!({
            "member": MEMBERS[i],
            "attempts": recs.len(),
            "ok": recs.iter().filter(|r| r.2).count(),
            "first_ok_after_event_s": recs.iter().find(|r| r.2 && r.0 >= event).map(|r| round(r.1 - event, 3)),
            "last_fail_after_event_s": recs.iter().filter(|r| !r.2 && r.0 >= event).map(|r| round(r.0 - event, 3)).reduce(f64::max),
        })).collect::<Vec<_>>(),
        "definition": "first failed write on the old primary's pgbouncer -> first write committed on the new primary's pgbouncer (probes straight to pg-test-1:6432 and pg-test-2:6432)",
        "errors": direct_tally(&direct_attempts, oracle, event).map(|t| t.to_json()),
    });
    if kind != "switchover" {
        run_ok(sb.cmd().arg("revive"), Duration::from_secs(420))?;
    }
    // pgbouncer's server_login_retry can refuse clients for up to 15 s after a restart
    for (h, p) in [(LB_ADDR, haproxy_port(PRIMARY_PORT)), (VIP, PRIMARY_PORT)] {
        wait_writes(sb, h, p, 120)?;
    }
    Ok(rec)
}

// ------------------------------------------------------------------------------------------------
// machine facts and quiet check

/// Other network namespaces that have processes in them (other sandboxes, netns tests, demos),
/// with those processes.
fn foreign_namespaces(own_id: &str) -> Vec<(String, Vec<u32>)> {
    let own = format!("{own_id}-");
    let names: Vec<String> = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .filter(|n| !n.starts_with(&own))
                .collect()
        })
        .unwrap_or_default();
    names
        .into_iter()
        .filter_map(|n| {
            let pids: Vec<u32> = Command::new("ip")
                .args(["netns", "pids", &n])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            (!pids.is_empty()).then_some((n, pids))
        })
        .collect()
}

/// Keeps track of the CPU used by processes in other namespaces while the bench runs.
#[derive(Default)]
struct Foreign {
    own_id: String,
    /// pid → (namespace, ticks when first seen, ticks when last seen)
    pids: std::collections::BTreeMap<u32, (String, u64, u64)>,
    names: BTreeSet<String>,
}

impl Foreign {
    fn note(&mut self) {
        for (ns, pids) in foreign_namespaces(&self.own_id) {
            self.names.insert(ns.clone());
            for pid in pids {
                if let Ok(t) = process_ticks(pid) {
                    let e = self.pids.entry(pid).or_insert((ns.clone(), t, t));
                    e.2 = t;
                }
            }
        }
    }

    /// CPU seconds the foreign processes used between their first and last sighting.
    fn cpu_s(&self) -> f64 {
        self.pids
            .values()
            .map(|(_, a, b)| b.saturating_sub(*a) as f64)
            .sum::<f64>()
            / clk_tck()
    }
}

/// Machine busy time (CPUs) over `d`.
fn machine_busy(d: Duration) -> Result<f64> {
    let a = cpu_now(None)?;
    pause(d)?;
    let b = cpu_now(None)?;
    let x = cpu_delta(&a, &b);
    Ok(x.busy_s / x.wall_s.max(1e-3))
}

/// Waits (bounded) for a quiet machine: no other namespace whose processes use CPU, and the machine
/// idle (< 0.2 CPUs busy over 5 s; our sandbox does not exist yet). Returns (quiet, waited s, facts).
fn wait_quiet(own_id: &str, max: Duration) -> Result<(bool, f64, Value)> {
    let t0 = Instant::now();
    let mut last_report: Option<Instant> = None;
    loop {
        let mut f = Foreign {
            own_id: own_id.to_owned(),
            ..Foreign::default()
        };
        f.note();
        let busy = machine_busy(Duration::from_secs(5))?;
        f.note();
        let foreign_cpu = f.cpu_s() / 5.0;
        // A namespace counts when it holds more than one process (a sandbox, a test rig) or its
        // processes use more than 1 % of a CPU; a lone idle process (e.g. an agent some test left
        // behind) does not disturb the measurements and is only reported.
        let active: Vec<String> = {
            let mut by_ns: std::collections::BTreeMap<&str, (u64, usize)> = Default::default();
            for (ns, a, b) in f.pids.values() {
                let e = by_ns.entry(ns.as_str()).or_default();
                e.0 += b.saturating_sub(*a);
                e.1 += 1;
            }
            by_ns
                .into_iter()
                .filter(|(_, (t, n))| *n > 1 || *t as f64 / clk_tck() > 0.05)
                .map(|(n, _)| n.to_owned())
                .collect()
        };
        let quiet = busy < 0.2 && active.is_empty();
        let facts = json!({
            "machine_busy_cpus": round(busy, 3),
            "foreign_cpu_cpus": round(foreign_cpu, 3),
            "namespaces_with_processes": f.names.iter().cloned().collect::<Vec<_>>(),
            "namespaces_using_cpu": active,
        });
        if quiet || t0.elapsed() >= max {
            return Ok((quiet, round(t0.elapsed().as_secs_f64(), 1), facts));
        }
        if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            log(format!(
                "waiting for a quiet machine ({}s of at most {}s): {}",
                t0.elapsed().as_secs(),
                max.as_secs(),
                facts
            ));
            last_report = Some(Instant::now());
        }
        pause(Duration::from_secs(10))?;
    }
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn machine_facts(sb: &Sb, pgsvc_bin: &Path) -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = field_after(&meminfo, "MemTotal:").unwrap_or(0.0);
    let git = |args: &[&str]| first_line(Command::new("git").arg("-C").arg(&sb.root).args(args));
    json!({
        "cpu_model": model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": round(mem_kb / 1024.0 / 1024.0, 1),
        "kernel": first_line(Command::new("uname").arg("-r")),
        "loadavg_at_start": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "clk_tck": clk_tck(),
        "pgsvc": first_line(Command::new(pgsvc_bin).arg("--version")),
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        "haproxy": first_line(Command::new("haproxy").arg("-v")),
        "pgbench": first_line(Command::new("pgbench").arg("--version")),
        "pgbouncer": first_line(Command::new("pgbouncer").arg("--version")),
        "postgres": first_line(Command::new("/usr/lib/postgresql/15/bin/postgres").arg("--version")),
        "iperf3": first_line(Command::new("iperf3").arg("--version")),
        "patroni": first_line(Command::new(sb.venv.join("bin").join("patroni")).arg("--version")),
    })
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn utc_now() -> String {
    first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
}

// ------------------------------------------------------------------------------------------------
// figures: medians and ratios

struct Fig {
    key: &'static str,
    section: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_better: bool,
}

const fn fig(
    key: &'static str,
    section: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_better: bool,
) -> Fig {
    Fig {
        key,
        section,
        label,
        unit,
        higher_better,
    }
}

const FIGS: &[Fig] = &[
    fig(
        "select_simple.tps",
        "pgbench -S simple",
        "select-only TPS (simple)",
        "tx/s",
        true,
    ),
    fig(
        "select_simple.lat_mean_ms",
        "pgbench -S simple",
        "mean latency (simple)",
        "ms",
        false,
    ),
    fig(
        "select_simple.lat_p99_ms",
        "pgbench -S simple",
        "p99 latency (simple)",
        "ms",
        false,
    ),
    fig(
        "select_simple.lb_cpu_ms_per_1k",
        "pgbench -S simple",
        "LB process CPU per 1k tx",
        "ms",
        false,
    ),
    fig(
        "select_simple.softirq_ms_per_1k",
        "pgbench -S simple",
        "machine softirq per 1k tx",
        "ms",
        false,
    ),
    fig(
        "select_simple.system_ms_per_1k",
        "pgbench -S simple",
        "machine system per 1k tx",
        "ms",
        false,
    ),
    fig(
        "select_simple.busy_ms_per_1k",
        "pgbench -S simple",
        "machine busy CPU per 1k tx",
        "ms",
        false,
    ),
    fig(
        "select_prepared.tps",
        "pgbench -S prepared",
        "select-only TPS (prepared)",
        "tx/s",
        true,
    ),
    fig(
        "select_prepared.lat_mean_ms",
        "pgbench -S prepared",
        "mean latency (prepared)",
        "ms",
        false,
    ),
    fig(
        "select_prepared.lat_p99_ms",
        "pgbench -S prepared",
        "p99 latency (prepared)",
        "ms",
        false,
    ),
    fig(
        "select_prepared.lb_cpu_ms_per_1k",
        "pgbench -S prepared",
        "LB process CPU per 1k tx",
        "ms",
        false,
    ),
    fig(
        "select_prepared.softirq_ms_per_1k",
        "pgbench -S prepared",
        "machine softirq per 1k tx",
        "ms",
        false,
    ),
    fig(
        "select_prepared.system_ms_per_1k",
        "pgbench -S prepared",
        "machine system per 1k tx",
        "ms",
        false,
    ),
    fig(
        "select_prepared.busy_ms_per_1k",
        "pgbench -S prepared",
        "machine busy CPU per 1k tx",
        "ms",
        false,
    ),
    fig(
        "connect.conn_per_s",
        "pgbench -C",
        "new connections per second",
        "conn/s",
        true,
    ),
    fig(
        "connect.conn_time_ms",
        "pgbench -C",
        "mean connection time",
        "ms",
        false,
    ),
    fig(
        "connect.lb_cpu_ms_per_1k",
        "pgbench -C",
        "LB process CPU per 1k connections",
        "ms",
        false,
    ),
    fig(
        "connect.softirq_ms_per_1k",
        "pgbench -C",
        "machine softirq per 1k connections",
        "ms",
        false,
    ),
    fig(
        "connect.system_ms_per_1k",
        "pgbench -C",
        "machine system per 1k connections",
        "ms",
        false,
    ),
    fig(
        "connect.busy_ms_per_1k",
        "pgbench -C",
        "machine busy CPU per 1k connections",
        "ms",
        false,
    ),
    fig(
        "iperf.gbit_s",
        "iperf3",
        "throughput through the service port",
        "Gbit/s",
        true,
    ),
    fig(
        "iperf.lb_cpu_s_per_gb",
        "iperf3",
        "LB process CPU per GB",
        "s",
        false,
    ),
    fig(
        "iperf.softirq_s_per_gb",
        "iperf3",
        "machine softirq per GB",
        "s",
        false,
    ),
    fig(
        "iperf.system_s_per_gb",
        "iperf3",
        "machine system per GB",
        "s",
        false,
    ),
    fig(
        "iperf.busy_s_per_gb",
        "iperf3",
        "machine busy CPU per GB",
        "s",
        false,
    ),
    fig(
        "switchover.window_s",
        "failover",
        "write unavailability, switchover",
        "s",
        false,
    ),
    fig(
        "kill_primary.window_s",
        "failover",
        "write unavailability, killed primary",
        "s",
        false,
    ),
];

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(round(a / b, 3)),
        _ => None,
    }
}

/// Medians over rounds of every figure for every target, and the ratios.
fn figures(measurements: &[Value]) -> Vec<Value> {
    FIGS.iter()
        .map(|f| {
            let (kind, metric) = f.key.split_once('.').unwrap_or((f.key, ""));
            let vals = |t: Target| -> Vec<f64> {
                measurements
                    .iter()
                    .filter(|m| m["kind"] == kind && m["target"] == t.key())
                    .filter_map(|m| m["metrics"][metric].as_f64())
                    .collect()
            };
            let (d, h, p) = (
                vals(Target::Direct),
                vals(Target::Haproxy),
                vals(Target::Pgsvc),
            );
            let (md, mh, mp) = (median(&d), median(&h), median(&p));
            let r = |x: Option<f64>| x.map(|v| round(v, 4));
            json!({
                "key": f.key, "section": f.section, "label": f.label, "unit": f.unit,
                "better": if f.higher_better { "higher" } else { "lower" },
                "direct": r(md), "haproxy": r(mh), "pgsvc": r(mp),
                "rounds": { "direct": d, "haproxy": h, "pgsvc": p },
                "ratios": {
                    "haproxy_vs_direct": ratio(mh, md),
                    "pgsvc_vs_direct": ratio(mp, md),
                    "pgsvc_vs_haproxy": ratio(mp, mh),
                },
            })
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// BENCHMARKS.md and the SVG

fn num(v: &Value) -> String {
    match v.as_f64() {
        None => "—".into(),
        Some(x) => {
            let a = x.abs();
            if a >= 1000.0 {
                format!("{x:.0}")
            } else if a >= 100.0 {
                format!("{x:.1}")
            } else if a >= 10.0 {
                format!("{x:.2}")
            } else {
                format!("{x:.3}")
            }
        }
    }
}

fn rat(v: &Value) -> String {
    v.as_f64().map_or("—".into(), |x| {
        if x < 0.1 {
            format!("{x:.3}×")
        } else {
            format!("{x:.2}×")
        }
    })
}

fn find_fig<'a>(figs: &'a [Value], key: &str) -> Option<&'a Value> {
    figs.iter().find(|f| f["key"] == key)
}

/// "pgsvc 0.95× direct, HAProxy 0.71× direct" for a figure.
fn quote(figs: &[Value], key: &str) -> String {
    find_fig(figs, key).map_or("n/a".into(), |f| {
        format!(
            "pgsvc {} ({} {}), HAProxy {} ({} {}), direct {} {}",
            rat(&f["ratios"]["pgsvc_vs_direct"]),
            num(&f["pgsvc"]),
            f["unit"].as_str().unwrap_or(""),
            rat(&f["ratios"]["haproxy_vs_direct"]),
            num(&f["haproxy"]),
            f["unit"].as_str().unwrap_or(""),
            num(&f["direct"]),
            f["unit"].as_str().unwrap_or(""),
        )
    })
}

fn markdown(doc: &Value, datapath: Option<&Value>, svg_rel: &str, json_rel: &str) -> String {
    let empty = Vec::new();
    let figs = doc["figures"].as_array().unwrap_or(&empty);
    let p = &doc["params"];
    let q = &doc["quiet"];
    let m = &doc["machine"];
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench e2e` (tests/src/bin/bench-e2e.rs) from `{}`; regenerate this file \
         and the chart without measuring with `cargo run --release -p pgsvc-tests --bin bench-e2e -- --from-json {}`.\n",
        json_rel, json_rel,
    );
    let _ = writeln!(
        s,
        "Run {} ({} mode, {:.0} s), {} × {} CPUs, {:.0} GiB, kernel {}; pgsvc `{}` ({}{}); {}; {}; {}; {}.\n",
        doc["started_at"].as_str().unwrap_or("?"),
        doc["mode"].as_str().unwrap_or("?"),
        doc["duration_s"].as_f64().unwrap_or(0.0),
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cpus"],
        m["memory_gib"].as_f64().unwrap_or(0.0),
        m["kernel"].as_str().unwrap_or("?"),
        m["pgsvc"].as_str().unwrap_or("?"),
        m["git_commit"]
            .as_str()
            .unwrap_or("?")
            .chars()
            .take(10)
            .collect::<String>(),
        if m["git_dirty"] == true {
            ", uncommitted changes"
        } else {
            ""
        },
        m["haproxy"].as_str().unwrap_or("?"),
        m["pgbench"].as_str().unwrap_or("?"),
        m["pgbouncer"].as_str().unwrap_or("?"),
        m["iperf3"].as_str().unwrap_or("?"),
    );
    let quiet_text = if q["quiet_throughout"] == true {
        format!(
            "quiet — no other sandbox or test used CPU during the run (processes in other namespaces used {} CPU s)",
            num(&q["foreign_cpu_s_during"])
        )
    } else {
        format!(
            "**not quiet** — other namespaces with processes during the run: {} (they used {} CPU s; \
             at the start the machine was {} CPUs busy) — treat the numbers as disturbed",
            q["seen_during"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .take(8)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            num(&q["foreign_cpu_s_during"]),
            num(&q["at_start_facts"]["machine_busy_cpus"]),
        )
    };
    let _ = writeln!(s, "Machine: {quiet_text}.\n");

    // the node-resident topology (Pigsty's default) first, when measured
    s.push_str(&node::markdown(doc));
    let _ = writeln!(
        s,
        "## LB-host topology: pgsvc vs HAProxy vs direct (end to end, one run)\n"
    );
    let _ = writeln!(
        s,
        "Medians over {} interleaved round(s) (failover: over {} event(s) each). Ratios are target / direct \
         (and pgsvc / HAProxy); the `better` column says which direction is good: for TPS, throughput and \
         connection rate **higher is better**, for latency, CPU and unavailability windows **lower is better**.\n",
        p["rounds"], p["failover_rounds"],
    );
    let _ = writeln!(
        s,
        "| figure | unit | better | direct | HAProxy | pgsvc | HAProxy/direct | pgsvc/direct | pgsvc/HAProxy |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|");
    let mut section = "";
    for f in figs {
        let sec = f["section"].as_str().unwrap_or("");
        if sec != section {
            let _ = writeln!(s, "| **{sec}** | | | | | | | | |");
            section = sec;
        }
        let direct = if f["key"].as_str().is_some_and(|k| k.contains("lb_cpu")) {
            "— (no LB)".to_string()
        } else {
            num(&f["direct"])
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f["label"].as_str().unwrap_or(""),
            f["unit"].as_str().unwrap_or(""),
            f["better"].as_str().unwrap_or(""),
            direct,
            num(&f["haproxy"]),
            num(&f["pgsvc"]),
            rat(&f["ratios"]["haproxy_vs_direct"]),
            rat(&f["ratios"]["pgsvc_vs_direct"]),
            rat(&f["ratios"]["pgsvc_vs_haproxy"]),
        );
    }
    let _ = writeln!(s, "\n![ratios to direct]({svg_rel})\n");

    let _ = writeln!(s, "### Notes (ratios quoted from the table)\n");
    for (key, what) in [
        ("select_simple.tps", "Select-only TPS, simple protocol"),
        ("select_prepared.tps", "Select-only TPS, prepared"),
        ("select_simple.lat_mean_ms", "Mean latency, simple"),
        ("select_simple.lat_p99_ms", "p99 latency, simple"),
        ("connect.conn_per_s", "New connections per second"),
        ("iperf.gbit_s", "iperf3 throughput"),
        (
            "select_simple.busy_ms_per_1k",
            "Machine CPU per 1000 select-only transactions",
        ),
        (
            "iperf.busy_s_per_gb",
            "Machine CPU per GB through the service port",
        ),
        ("switchover.window_s", "Write unavailability, switchover"),
        (
            "kill_primary.window_s",
            "Write unavailability, killed primary",
        ),
    ] {
        let _ = writeln!(s, "- {what}: {}.", quote(figs, key));
    }
    if let (Some(h), Some(pg)) = (
        find_fig(figs, "select_simple.lb_cpu_ms_per_1k"),
        find_fig(figs, "iperf.lb_cpu_s_per_gb"),
    ) {
        let _ = writeln!(
            s,
            "- LB process CPU (user+system of the process, no direct counterpart): per 1000 select-only \
             transactions HAProxy {} ms, the pgsvc agent {} ms ({}); per GB of iperf3 HAProxy {} s, pgsvc {} s. \
             pgsvc forwards in the XDP program, which runs in softirq context and is charged to no process: \
             its cost is in the machine's softirq and busy columns.",
            num(&h["haproxy"]),
            num(&h["pgsvc"]),
            rat(&h["ratios"]["pgsvc_vs_haproxy"]).replace('×', "× HAProxy"),
            num(&pg["haproxy"]),
            num(&pg["pgsvc"]),
        );
    }
    let errors = doc["errors"].as_array().map_or(0, Vec::len);
    if errors > 0 {
        let _ = writeln!(
            s,
            "- **{errors} measurement(s) failed** and are left out of the medians; see `errors` in the JSON."
        );
    }

    let _ = writeln!(s, "\n### Failover events\n");
    let _ = writeln!(
        s,
        "| event | primary before | direct (s) | HAProxy (s) | pgsvc (s) | HAProxy lost writes | pgsvc lost writes | \"server login has been failing\" direct / HAProxy / pgsvc | writes on a non-leader direct / HAProxy / pgsvc |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let per_lb = |e: &Value, field: &str| {
        ["direct", "haproxy", "pgsvc"]
            .iter()
            .map(|t| match e[*t]["errors"][field].as_u64() {
                Some(n) => n.to_string(),
                None => "–".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for e in doc["failover_events"].as_array().unwrap_or(&empty) {
        let _ = writeln!(
            s,
            "| {} {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            e["kind"].as_str().unwrap_or(""),
            e["round"],
            e["primary_before"].as_str().unwrap_or(""),
            num(&e["direct"]["window_s"]),
            num(&e["haproxy"]["window_s"]),
            num(&e["pgsvc"]["window_s"]),
            e["haproxy"]["lost_writes"],
            e["pgsvc"]["lost_writes"],
            per_lb(e, "login_failing"),
            per_lb(e, "non_leader_writes"),
        );
    }
    let _ = writeln!(
        s,
        "\n\"server login has been failing\": attempts answered so by a pgbouncer whose postgres is stopping \
         (the demoting primary). Writes on a non-leader: attempts refused as read-only, writes acknowledged \
         in recovery, and writes acknowledged by another node after the final writer's first. Direct = a \
         client following the primary (the old primary's direct probe until the new one's first commit). \
         Every failed attempt by kind is under `errors` in the JSON."
    );

    let _ = writeln!(s, "\n## How it is measured\n");
    let _ = writeln!(
        s,
        "- **Sandbox**: `sandbox/pgsandbox` — etcd, three Patroni 4 / PostgreSQL 15 / pgbouncer nodes, an LB host \
         and a client host, each a network namespace on one bridge, all on the same {} CPUs. pgbench \
         is initialised once (`pgbench -i -s 10`) through the primary's pgbouncer.",
        m["cpus"]
    );
    let _ = writeln!(
        s,
        "- **Targets**: direct = the primary's pgbouncer {}:{}; HAProxy = {}:{} on the LB host's own address, \
         configured with what `pgsvc render haproxy` renders for the same inventory (Pigsty's config, same \
         timers: `inter 2s fastinter 1s downinter 2s rise 3 fall 3 on-marked-down shutdown-sessions`), binds \
         changed from `*:PORT` to the LB address and PORT + {HAPROXY_PORT_OFFSET} (pgsvc serves Pigsty's \
         `ip: \"*\"` services on every local address, so while both run — the failover phase — HAProxy on the \
         service ports themselves would be reached through pgsvc) and a stats socket added; pgsvc = the VIP \
         {}:{} (`pgsvc run --xdp-mode native`). The LB host address and the VIP are on the same interface and \
         path, so the clients are identical.",
        NODES[0],
        PGBOUNCER_PORT,
        LB_ADDR,
        haproxy_port(PRIMARY_PORT),
        VIP,
        PRIMARY_PORT
    );
    let _ = writeln!(
        s,
        "- **Interleaving**: every round visits the three targets (and the node-resident slots above, when \
         measured) in a rotated order; during a target's slot only its LB runs (neither LB during direct; the pass-through XDP program that native XDP on a \
         veth needs on the switch port is attached only while pgsvc runs). A {} s warm-up precedes each slot.",
        p["warmup_secs"]
    );
    let _ = writeln!(
        s,
        "- **pgbench**: `pgbench -n -S -c 8 -j 2 -T {}` (simple, and `-M prepared`) with `-l` per-transaction \
         logs; TPS and mean latency from pgbench's report, p99 from the logs (nearest rank over every \
         transaction). New connections per second: `pgbench -n -S -C -c 8 -j 2 -T {}` (a new connection — \
         including pgbouncer's SCRAM authentication — per transaction).",
        p["bench_secs"], p["connect_secs"]
    );
    let _ = writeln!(
        s,
        "- **iperf3**: `iperf3 -c TARGET -t {}` from the client; `iperf3 -s` on pg-test-1; the service \
         `{}` is added to the bench's copy of the inventory, so HAProxy (rendered) and pgsvc both forward \
         port {} to 5201 of the primary; direct = pg-test-1:5201.",
        p["iperf_secs"], IPERF_SERVICE, IPERF_SVC_PORT
    );
    let _ = writeln!(
        s,
        "- **CPU** (per run, normalised per 1000 transactions / connections or per GB received):\n  \
         - *LB process CPU*: utime+stime of the HAProxy process, or of the `pgsvc run` agent (health checks, \
         map updates — pgsvc's packet forwarding is not in any process). Direct has no LB process.\n  \
         - *machine softirq*: softirq time of all CPUs from /proc/stat. XDP programs and the kernel's TCP/IP \
         receive path run here — pgsvc's forwarding cost lands in this column. It includes every host of the \
         sandbox (client, pgbouncer, postgres), so compare it with direct's.\n  \
         - *machine system*: kernel time on behalf of processes (syscalls: HAProxy's recv/send, pgbench, \
         pgbouncer, postgres), all CPUs.\n  \
         - *machine busy*: everything but idle and iowait, all CPUs — the total price of one unit of work on \
         this machine, whoever pays it. The most honest single CPU figure here."
    );
    let _ = writeln!(
        s,
        "- **Failover**: both LBs run; for each event four `sandbox/writer_probe.py` probes (a new connection \
         and one committed INSERT every 50 ms, 1 s limit per attempt) run at once: through HAProxy, through \
         pgsvc, and straight to pg-test-1's and pg-test-2's pgbouncers. Window = first failed write at/after the \
         event → first committed write after the last failure (writer_probe's definition). Direct = a client \
         that always writes to the current primary's pgbouncer: old primary's first failure → first commit on \
         the new primary. Events: `pgsandbox switchover` and `pgsandbox kill-primary` (SIGKILL of Patroni and \
         postgres; the node is revived after writes work again, and the next event waits until both LBs send \
         the primary service to the primary only). The probes' acknowledged writes are verified on the final \
         primary (lost writes column)."
    );
    let _ = writeln!(s, "\n## Caveats\n");
    let _ = writeln!(
        s,
        "- Everything — client, LB, three database nodes, etcd — shares {} CPUs, so the client competes with \
         the servers and the LB; runs vary by about ±10 %: compare within this run, not across runs. TPS here is \
         CPU-bound on the whole machine, so an LB that costs less CPU leaves more for pgbench and postgres.",
        m["cpus"]
    );
    let _ = writeln!(
        s,
        "- veth, not a NIC: native XDP on a veth needs a pass-through XDP program on the peer, and veth's XDP \
         path handles GSO/GRO differently from a real driver, so bulk throughput through pgsvc on veth \
         understates what a NIC driver would do; HAProxy's numbers include the same veth path but not the XDP peer \
         program. Checksum offload is off on every host interface (sandbox requirement)."
    );
    let _ = writeln!(
        s,
        "- The HAProxy global maxconn is capped by the sandbox (hard open-files limit 20000); irrelevant to \
         8 clients. pgbouncer uses SCRAM, which dominates the new-connection rate for every target."
    );
    let _ = writeln!(
        s,
        "- Failover windows depend on Patroni's timers (ttl 30, loop_wait 5) and on where in the 2 s check \
         interval an event falls; with {} events per kind the median is coarse.",
        p["failover_rounds"]
    );

    if let Some(dp) = datapath {
        let _ = writeln!(s, "\n## XDP datapath (bench/results/datapath.json)\n");
        let _ = writeln!(
            s,
            "`cargo xtask bench datapath`: {} (repeat {}), {} rounds, CPU {}, kernel {}.\n",
            dp["method"].as_str().unwrap_or("?"),
            dp["repeat"],
            dp["rounds"],
            dp["cpu"].as_str().unwrap_or("?"),
            dp["kernel"].as_str().unwrap_or("?"),
        );
        let _ = writeln!(s, "| path | ns/packet (median) | min | check |");
        let _ = writeln!(s, "|---|---:|---:|---|");
        if let Some(r) = dp["results"].as_object() {
            for (name, v) in r {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} |",
                    num(&v["ns_per_packet_median"]),
                    num(&v["ns_per_packet_min"]),
                    v["check"].as_str().unwrap_or("")
                );
            }
        }
    }
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One bar of every row of an SVG panel: the ratio under `ratios.<key>`.
struct Series {
    key: &'static str,
    legend: &'static str,
    color: &'static str,
}

/// One panel of the chart: a title, its series, and the figures (rows) that have at least one ratio.
struct Panel<'a> {
    title: String,
    series: Vec<&'static Series>,
    rows: Vec<&'a Value>,
    bar: f64,
}

const LB_SERIES: &[Series] = &[
    Series {
        key: "haproxy_vs_direct",
        legend: "HAProxy / direct",
        color: "#d9822b",
    },
    Series {
        key: "pgsvc_vs_direct",
        legend: "pgsvc / direct",
        color: "#2b6cb0",
    },
];

const NODE_SERIES: &[Series] = &[
    Series {
        key: "direct_xdp_pass_vs_direct",
        legend: "direct, XDP_PASS hooks",
        color: "#9a9a9a",
    },
    Series {
        key: "haproxy_local_vs_direct",
        legend: "HAProxy, local member",
        color: "#d9822b",
    },
    Series {
        key: "pgsvc_local_vs_direct",
        legend: "pgsvc, local member",
        color: "#2b6cb0",
    },
    Series {
        key: "haproxy_remote_vs_direct",
        legend: "HAProxy, remote member",
        color: "#f0c08a",
    },
    Series {
        key: "pgsvc_remote_vs_direct",
        legend: "pgsvc, remote member",
        color: "#8fb8e8",
    },
];

impl Panel<'_> {
    fn row_height(&self) -> f64 {
        self.bar * self.series.len() as f64 + 12.0
    }

    /// Title, legend, gridlines and bars from `top`; returns the y below the panel.
    fn draw(&self, s: &mut String, top: f64, max: f64) -> f64 {
        let (left, right) = (360.0, 900.0);
        let scale = |r: f64| left + (right - 60.0 - left) * r / max;
        let _ = writeln!(
            s,
            r#"<text x="10" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
            top + 14.0,
            xml(&self.title)
        );
        let mut x = 10.0;
        for se in &self.series {
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                top + 24.0,
                se.color,
                x + 16.0,
                top + 34.0,
                xml(se.legend)
            );
            x += 30.0 + 7.0 * se.legend.chars().count() as f64;
        }
        let rows_top = top + 46.0;
        let bottom = rows_top + self.row_height() * self.rows.len() as f64;
        let mut g = 0.0;
        while g <= max + 1e-9 {
            let x = scale(g);
            let (stroke, w) = if (g - 1.0).abs() < 1e-9 {
                ("#333", 1.5)
            } else {
                ("#ddd", 1.0)
            };
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{rows_top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="{stroke}" stroke-width="{w}"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{g:.1}</text>"##,
                bottom + 14.0
            );
            g += if max > 4.0 { 1.0 } else { 0.5 };
        }
        for (i, f) in self.rows.iter().enumerate() {
            let y = rows_top + self.row_height() * i as f64 + 6.0;
            let arrow = if f["better"] == "higher" {
                "↑"
            } else {
                "↓"
            };
            let label = format!(
                "{} — {} {arrow}",
                f["section"].as_str().unwrap_or(""),
                f["label"].as_str().unwrap_or("")
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 8.0,
                y + self.bar * self.series.len() as f64 / 2.0 + 4.0,
                xml(&label)
            );
            for (j, se) in self.series.iter().enumerate() {
                let yy = y + self.bar * j as f64;
                if let Some(r) = f["ratios"][se.key].as_f64() {
                    let w = (scale(r) - left).max(1.0);
                    let _ = writeln!(
                        s,
                        r#"<rect x="{left}" y="{yy:.1}" width="{w:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="10">{r:.2}×</text>"#,
                        self.bar - 1.0,
                        se.color,
                        left + w + 4.0,
                        yy + self.bar - 2.5
                    );
                } else {
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#888">not measured</text>"##,
                        left + 4.0,
                        yy + self.bar - 2.5
                    );
                }
            }
        }
        bottom + 30.0
    }
}

/// Grouped horizontal bar charts of the ratios to direct: the node-resident topology (HAProxy and
/// pgsvc on the database node, local and remote member) when measured, then the LB-host topology.
fn svg(doc: &Value) -> String {
    let empty = Vec::new();
    let with_ratios = |figs: &'static [Series], v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap_or(&empty)
            .iter()
            .filter(|f| figs.iter().any(|se| f["ratios"][se.key].is_number()))
            .cloned()
            .collect()
    };
    let node_rows = with_ratios(NODE_SERIES, &doc["node_resident"]["figures"]);
    let lb_rows = with_ratios(LB_SERIES, &doc["figures"]);
    let mut panels = Vec::new();
    if !node_rows.is_empty() {
        panels.push(Panel {
            title: format!(
                "Node-resident (Pigsty's default) — {}:5433 local member, {}:5433 remote",
                MEMBERS[0], MEMBERS[1]
            ),
            // an older JSON has no floor (direct through the XDP hooks): that series is left out
            // (a target that failed in every round still shows as "not measured")
            series: NODE_SERIES
                .iter()
                .filter(|se| {
                    se.key != "direct_xdp_pass_vs_direct"
                        || node_rows.iter().any(|f| f["ratios"][se.key].is_number())
                })
                .collect(),
            rows: node_rows.iter().collect(),
            bar: 10.0,
        });
    }
    panels.push(Panel {
        title: "LB host: HAProxy on the LB host's address, pgsvc on the VIP".into(),
        series: LB_SERIES.iter().collect(),
        rows: lb_rows.iter().collect(),
        bar: 13.0,
    });
    let max = panels
        .iter()
        .flat_map(|p| {
            p.rows
                .iter()
                .flat_map(|f| p.series.iter().map(|se| f["ratios"][se.key].as_f64()))
        })
        .flatten()
        .fold(1.2f64, f64::max)
        * 1.12;
    let top = 56.0;
    let height = top
        + panels
            .iter()
            .map(|p| 46.0 + p.row_height() * p.rows.len() as f64 + 30.0)
            .sum::<f64>()
        + 10.0;
    let right = 900.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{right}" height="{height}" viewBox="0 0 {right} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="16" font-weight="bold">pgsvc and HAProxy relative to direct (1.0 = direct)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="42" fill="#555">{} — medians, {} mode; ↑ higher is better, ↓ lower is better</text>"##,
        xml(doc["started_at"].as_str().unwrap_or("")),
        xml(doc["mode"].as_str().unwrap_or(""))
    );
    let mut y = top;
    for p in &panels {
        y = p.draw(&mut s, y, max);
    }
    let _ = writeln!(s, "</svg>");
    s
}

/// BENCHMARKS.md and the SVG from the JSON document stored at `json`.
fn write_reports(doc: &Value, json: &Path, opts: &Opts, root: &Path) -> Result<()> {
    let datapath: Option<Value> = fs::read_to_string(root.join("bench/results/datapath.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let svg_rel = opts
        .svg
        .strip_prefix(root)
        .unwrap_or(&opts.svg)
        .display()
        .to_string();
    let json_rel = json
        .strip_prefix(root)
        .unwrap_or(json)
        .display()
        .to_string();
    let mut md = markdown(doc, datapath.as_ref(), &svg_rel, &json_rel);
    // the soak's own section (`cargo xtask soak`) stays
    {
        use pgsvc_tests::sandbox::{SOAK_BEGIN, SOAK_END, find_section, splice_section};
        if let Some(soak) = fs::read_to_string(&opts.md)
            .ok()
            .and_then(|old| find_section(&old, SOAK_BEGIN, SOAK_END))
        {
            md = splice_section(&md, SOAK_BEGIN, SOAK_END, &soak);
        }
    }
    fs::write(&opts.md, md).with_context(|| format!("writing {}", opts.md.display()))?;
    fs::write(&opts.svg, svg(doc)).with_context(|| format!("writing {}", opts.svg.display()))?;
    log(format!(
        "wrote {} and {}",
        opts.md.display(),
        opts.svg.display()
    ));
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// main

fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

const USAGE: &str =
    "usage: bench-e2e [--out FILE] [--quick] [--rounds N] [--failover-rounds N] [--seconds S]
                 [--no-prepared] [--keep-work] [--wait-quiet SECS] [--md FILE] [--svg FILE]
                 [--topology both|lb-host|node] | --from-json FILE";

fn parse_args() -> Result<Opts> {
    let root = repo_root();
    let mut out = root.join("bench/results/e2e.json");
    let mut md = None;
    let mut svg = None;
    let mut quick = false;
    let mut rounds = None;
    let mut failover_rounds = None;
    let mut seconds = None;
    let mut prepared = true;
    let mut wait_quiet = None;
    let mut from_json = None;
    let mut keep_work = false;
    let mut topology = Topology::Both;
    let mut args = std::env::args().skip(1);
    let num = |a: Option<String>, what: &str| -> Result<u64> {
        a.ok_or_else(|| anyhow!("{what} needs a value"))?
            .parse()
            .map_err(|e| anyhow!("{what}: {e}"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = absolute(Path::new(&args.next().context("--out FILE")?)),
            "--md" => md = Some(absolute(Path::new(&args.next().context("--md FILE")?))),
            "--svg" => svg = Some(absolute(Path::new(&args.next().context("--svg FILE")?))),
            "--quick" => quick = true,
            "--rounds" => rounds = Some(num(args.next(), "--rounds")?.min(20) as usize),
            "--failover-rounds" => {
                failover_rounds = Some(num(args.next(), "--failover-rounds")?.min(10) as usize)
            }
            "--seconds" => seconds = Some(num(args.next(), "--seconds")?.clamp(2, 600)),
            "--no-prepared" => prepared = false,
            "--keep-work" => keep_work = true,
            "--topology" => {
                topology = match args.next().as_deref() {
                    Some("both") => Topology::Both,
                    Some("lb-host") => Topology::LbHost,
                    Some("node") => Topology::Node,
                    other => {
                        bail!("--topology needs both, lb-host or node (got {other:?})\n{USAGE}")
                    }
                }
            }
            "--wait-quiet" => wait_quiet = Some(num(args.next(), "--wait-quiet")?.min(7200)),
            "--from-json" => {
                from_json = Some(absolute(Path::new(
                    &args.next().context("--from-json FILE")?,
                )))
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let bench_secs = seconds.unwrap_or(if quick { 5 } else { 20 });
    Ok(Opts {
        md: md.unwrap_or_else(|| root.join("BENCHMARKS.md")),
        svg: svg.unwrap_or_else(|| out.with_extension("svg")),
        out,
        quick,
        rounds: rounds.unwrap_or(if quick { 1 } else { 3 }),
        bench_secs,
        connect_secs: (bench_secs / 2).max(3),
        iperf_secs: (bench_secs / 2).max(3),
        warmup_secs: if quick { 1 } else { 2 },
        failover_rounds: failover_rounds.unwrap_or(if quick { 1 } else { 3 }),
        prepared,
        wait_quiet: wait_quiet.unwrap_or(if quick { 0 } else { 1200 }),
        from_json,
        keep_work,
        topology,
    })
}

/// The pgsvc binary: PGSVC_BIN, or target/release/pgsvc beside this program (built here when started
/// through cargo, which builds only this package's binaries).
fn pgsvc_binary(root: &Path) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PGSVC_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut c = Command::new(cargo);
        c.current_dir(root).args([
            "build",
            "--release",
            "-p",
            "pgsvc-userspace",
            "--bin",
            "pgsvc",
        ]);
        log(format!("+ {}", show(&c)));
        let st = c.status().context("running cargo build")?;
        if !st.success() {
            bail!("building pgsvc failed ({st})");
        }
    }
    let exe = std::env::current_exe().context("locating this program")?;
    let bin = exe
        .parent()
        .map(|d| d.join("pgsvc"))
        .ok_or_else(|| anyhow!("no directory for {}", exe.display()))?;
    if !bin.is_file() {
        bail!(
            "{} is missing: build it (cargo build --release -p pgsvc-userspace) or set PGSVC_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

fn main() {
    install_signal_handlers();
    match real_main() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("bench-e2e: error: {e:#}");
            std::process::exit(if stopped() { 130 } else { 1 });
        }
    }
}

fn real_main() -> Result<()> {
    let opts = parse_args()?;
    let root = repo_root();
    if let Some(src) = opts.from_json.clone() {
        let text =
            fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
        let doc: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", src.display()))?;
        let mut o = opts;
        if o.svg == o.out.with_extension("svg") {
            o.svg = src.with_extension("svg");
        }
        return write_reports(&doc, &src, &o, &root);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-e2e needs root (network namespaces, XDP, the sandbox)");
    }
    let pgsvc_bin = pgsvc_binary(&root)?;
    if let Some(dir) = opts.out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let id = format!("pgsbe{}", std::process::id() % 10_000_000);
    let started = epoch();
    let started_at = utc_now();

    let (quiet_at_start, waited_s, quiet_facts) =
        wait_quiet(&id, Duration::from_secs(opts.wait_quiet))?;
    if !quiet_at_start {
        log(format!(
            "the machine is not quiet ({quiet_facts}); measuring anyway and saying so in the JSON"
        ));
    }

    let work = std::env::temp_dir().join(format!("pgsvc-bench-e2e-{id}"));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _work_guard = WorkDir(work.clone(), opts.keep_work);

    // the inventory copy with the iperf service, and HAProxy's rendering of it
    let inventory_src = root.join("sandbox/pigsty.yml");
    let inv_text = fs::read_to_string(&inventory_src)
        .with_context(|| format!("reading {}", inventory_src.display()))?;
    let marker = "        pg_users:";
    if !inv_text.contains(marker) {
        bail!(
            "{} has no `pg_users:` line to put the iperf service before",
            inventory_src.display()
        );
    }
    let inv_text = inv_text.replacen(
        marker,
        &format!("        pg_services:\n          - {IPERF_SERVICE}\n{marker}"),
        1,
    );
    let inventory = work.join("pigsty-bench.yml");
    fs::write(&inventory, &inv_text)?;
    let rendered = run_ok(
        Command::new(&pgsvc_bin)
            .args(["render", "haproxy", "--config"])
            .arg(&inventory)
            .args(["--cluster", "pg-test"]),
        Duration::from_secs(30),
    )?
    .stdout;

    let guard = SandboxGuard::up(&root, &id)?;
    let sb = guard.0.clone();
    let sock = sb.state.join("bench-haproxy.sock");
    let haproxy_cfg = work.join("haproxy-bench.cfg");
    let haproxy_text = haproxy_config(&rendered, &sock, Some(LB_ADDR));
    fs::write(&haproxy_cfg, &haproxy_text)?;
    let mut haproxy = Haproxy {
        sb: sb.clone(),
        config: haproxy_cfg,
        sock,
        running: false,
    };
    let client = NsWorker::start(&sb.ns("cl"), || ());
    let mut pgsvc = Pgsvc {
        bin: pgsvc_bin.clone(),
        config: inventory.clone(),
        lb_ns: sb.ns("lb"),
        pin_base: PathBuf::from("/sys/fs/bpf").join(&sb.id),
        log: work.join("pgsvc.log"),
        starts: 0,
        agent: None,
        pass: NsWorker::start(&sb.ns("sw"), || None),
        etcd_certs: sb.state.join("lb").join("cert"),
    };
    let mut node_lbs = NodeLbs::new(&sb, &pgsvc_bin, &inventory, &rendered, &work)?;
    let machine = machine_facts(&sb, &pgsvc_bin);

    log("pgbench -i -s 10 through the primary's pgbouncer");
    let mut init = sb.in_ns("cl", "pgbench");
    init.env("PGPASSWORD", DB_PASS)
        .args([
            "-i",
            "-s",
            "10",
            "-h",
            NODES[0],
            "-p",
            &PGBOUNCER_PORT.to_string(),
        ])
        .args(["-U", DB_USER, DB_NAME]);
    let init_cmd = show(&init);
    run_ok(&mut init, Duration::from_secs(300))?;

    let mut iperf_server = {
        let mut c = sb.in_ns("n1", "iperf3");
        c.args(["-s", "-B", NODES[0], "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Bg::spawn("iperf3 -s", &mut c, Duration::from_secs(3))?
    };
    pause(Duration::from_millis(500))?;

    let mut bench = Bench {
        sb: &sb,
        opts: &opts,
        work: work.clone(),
        foreign: Foreign {
            own_id: id.clone(),
            ..Foreign::default()
        },
    };
    let mut measurements: Vec<Value> = Vec::new();
    let mut errors: Vec<Value> = Vec::new();
    let t_throughput = Instant::now();
    let slots = opts.topology.slots();
    for round in 0..opts.rounds {
        for k in 0..slots.len() {
            let slot = slots[(round + k) % slots.len()];
            check_stop()?;
            // only the LB under test runs
            match slot {
                Slot::Lb(Target::Direct) => {
                    haproxy.stop();
                    pgsvc.stop();
                    node_lbs.stop();
                }
                Slot::Lb(Target::Haproxy) => {
                    pgsvc.stop();
                    node_lbs.stop();
                    haproxy.start()?;
                }
                Slot::Lb(Target::Pgsvc) => {
                    haproxy.stop();
                    node_lbs.stop();
                    pgsvc.start(&client)?;
                }
                Slot::Node(lb) => {
                    haproxy.stop();
                    pgsvc.stop();
                    node_lbs.start(lb, &client)?;
                }
            }
            wait_converged(&client, &haproxy, &pgsvc, Duration::from_secs(60))?;
            if let Slot::Node(_) = slot {
                node_lbs.wait_converged(&client, Duration::from_secs(60))?;
            }
            if !iperf_server.alive() {
                bail!("iperf3 -s on pg-test-1 exited");
            }
            for run in slot_runs(slot, &haproxy, &pgsvc, &node_lbs, opts.prepared)? {
                bench.warmup(run.to)?;
                let mut record = |kind: &str, res: Result<Value>| -> Result<()> {
                    check_stop()?;
                    match res {
                        Ok(mut v) => {
                            v["round"] = json!(round + 1);
                            v["topology"] = json!(run.topology);
                            v["target"] = json!(run.key);
                            v["kind"] = json!(kind);
                            log(format!(
                                "round {}/{} {:<14} {:<15} {}",
                                round + 1,
                                opts.rounds,
                                run.key,
                                kind,
                                summary_line(&v["metrics"])
                            ));
                            measurements.push(v);
                        }
                        Err(e) => {
                            log(format!(
                                "round {} {} {kind} FAILED: {e:#}",
                                round + 1,
                                run.key
                            ));
                            errors.push(json!({
                                "round": round + 1, "topology": run.topology, "target": run.key,
                                "kind": kind, "error": format!("{e:#}"),
                            }));
                        }
                    }
                    Ok(())
                };
                for kind in &run.kinds {
                    let tag = format!("r{}-{}-{}", round + 1, run.key, kind.key());
                    let res = bench.pgbench(run.to, *kind, run.short, run.lb_pid, &tag);
                    record(kind.key(), res)?;
                }
                if let Some(target) = run.iperf {
                    let res = bench.iperf(target, run.lb_pid);
                    record("iperf", res)?;
                }
            }
        }
    }
    haproxy.stop();
    pgsvc.stop();
    node_lbs.stop();
    iperf_server.stop();
    let throughput_s = t_throughput.elapsed().as_secs_f64();

    // failover: both LBs at once, four probes per event
    let t_failover = Instant::now();
    let mut events = Vec::new();
    if opts.failover_rounds > 0 {
        haproxy.start()?;
        pgsvc.start(&client)?;
        for round in 1..=opts.failover_rounds {
            for kind in ["switchover", "kill_primary"] {
                check_stop()?;
                log(format!(
                    "failover round {round}/{}: {kind}",
                    opts.failover_rounds
                ));
                let ev = failover_event(&sb, &work, &client, &haproxy, &pgsvc, kind, round)?;
                bench.note_foreign();
                log(format!(
                    "  windows: direct {} s, haproxy {} s, pgsvc {} s",
                    ev["direct"]["window_s"], ev["haproxy"]["window_s"], ev["pgsvc"]["window_s"]
                ));
                for t in TARGETS {
                    measurements.push(json!({
                        "round": round, "target": t.key(), "kind": kind,
                        "metrics": { "window_s": ev[t.key()]["window_s"].clone() },
                    }));
                }
                events.push(ev);
            }
        }
    }
    let failover_s = t_failover.elapsed().as_secs_f64();
    bench.note_foreign();
    let foreign_cpu_s = bench.foreign.cpu_s();
    let seen_during: Vec<String> = bench.foreign.names.iter().cloned().collect();
    let run_wall_s = epoch() - started;
    let at_start: BTreeSet<String> = quiet_facts["namespaces_with_processes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let new_during: Vec<&String> = seen_during
        .iter()
        .filter(|n| !at_start.contains(*n))
        .collect();
    let quiet_throughout =
        quiet_at_start && new_during.is_empty() && foreign_cpu_s < 0.01 * run_wall_s;
    let pgsvc_command = show(&pgsvc.command(Path::new("/sys/fs/bpf/<sandbox id>/bench-<n>")));
    let pgsvc_log_tail = tail(&fs::read_to_string(&pgsvc.log).unwrap_or_default(), 40);
    let node_resident = if opts.topology.node() {
        node::document(&measurements, &node_lbs, &sb)
    } else {
        Value::Null
    };
    drop(node_lbs);
    drop(pgsvc);
    drop(haproxy);
    drop(client);
    drop(guard);

    let out_rel = opts
        .out
        .strip_prefix(&root)
        .unwrap_or(&opts.out)
        .display()
        .to_string();
    let figs = figures(&measurements);
    let doc = json!({
        "benchmark": "e2e",
        "schema": SCHEMA,
        "out": out_rel,
        "mode": if opts.quick { "quick" } else { "full" },
        "started_at": started_at,
        "finished_at": utc_now(),
        "duration_s": round(epoch() - started, 1),
        "phase_s": { "throughput": round(throughput_s, 1), "failover": round(failover_s, 1) },
        "machine": machine,
        "quiet": {
            "waited_s": waited_s,
            "at_start": quiet_at_start,
            "at_start_facts": quiet_facts,
            "seen_during": seen_during,
            "new_during": new_during,
            "foreign_cpu_s_during": round(foreign_cpu_s, 2),
            "quiet_throughout": quiet_throughout,
            "rule": "quiet at start = no other network namespace (sandbox, netns test, demo) holding more than one process or using > 1 % of a CPU, and the machine < 0.2 CPUs busy over 5 s; throughout = also no new namespace with processes appeared during the run and processes in other namespaces used < 1 % of one CPU over the run",
        },
        "params": {
            "rounds": opts.rounds,
            "bench_secs": opts.bench_secs,
            "connect_secs": opts.connect_secs,
            "iperf_secs": opts.iperf_secs,
            "warmup_secs": opts.warmup_secs,
            "prepared": opts.prepared,
            "failover_rounds": opts.failover_rounds,
            "topology": opts.topology.key(),
            "order": format!(
                "round r visits [{}] rotated by r; only the LB under test runs",
                opts.topology.slots().iter().map(|s| match s {
                    Slot::Lb(t) => t.key(),
                    Slot::Node(lb) => lb.key(),
                }).collect::<Vec<_>>().join(", ")
            ),
        },
        "setup": {
            "sandbox_id": sb.id,
            "placement": format!("direct = {}:{} (pg-test-1's pgbouncer); haproxy = {LB_ADDR}:{} (LB host address, service port + {HAPROXY_PORT_OFFSET}); pgsvc = VIP {VIP}:{PRIMARY_PORT}", NODES[0], PGBOUNCER_PORT, haproxy_port(PRIMARY_PORT)),
            "inventory": "sandbox/pigsty.yml + pg_services: [ ".to_string() + IPERF_SERVICE + " ]",
            "haproxy_config": haproxy_text,
            "pgsvc_command": pgsvc_command,
            "pass_program": "pgsvc::datapath::pass::PassProgram on the switch port `lb` while pgsvc runs",
            "pgbench_init": init_cmd,
            "iperf_server": format!("ip netns exec {} iperf3 -s -B {} -p {IPERF_PORT}", sb.ns("n1"), NODES[0]),
            "writer_probe": "sandbox/writer_probe.py run --host H --port P (every 50 ms: new connection + INSERT)",
        },
        "pgsvc_log_tail": pgsvc_log_tail,
        "figures": figs,
        "node_resident": node_resident,
        "measurements": measurements,
        "failover_events": events,
        "errors": errors,
    });
    let text = serde_json::to_string_pretty(&doc)?;
    fs::write(&opts.out, text + "\n").with_context(|| format!("writing {}", opts.out.display()))?;
    log(format!("wrote {}", opts.out.display()));
    write_reports(&doc, &opts.out, &opts, &root)?;
    print_table(&doc);
    node::print_table(&doc);
    Ok(())
}

fn summary_line(m: &Value) -> String {
    let g = |k: &str| m[k].as_f64();
    if let Some(t) = g("tps") {
        format!(
            "{t:.0} tps, mean {} ms, p99 {} ms, busy {} ms/1k tx",
            num(&m["lat_mean_ms"]),
            num(&m["lat_p99_ms"]),
            num(&m["busy_ms_per_1k"])
        )
    } else if let Some(c) = g("conn_per_s") {
        format!(
            "{c:.0} conn/s, busy {} ms/1k conn",
            num(&m["busy_ms_per_1k"])
        )
    } else if let Some(b) = g("gbit_s") {
        format!("{b:.2} Gbit/s, busy {} s/GB", num(&m["busy_s_per_gb"]))
    } else {
        m.to_string()
    }
}

fn print_table(doc: &Value) {
    let empty = Vec::new();
    println!(
        "\n{:<58} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "figure (median)", "direct", "haproxy", "pgsvc", "hap/dir", "pgsvc/dir"
    );
    for f in doc["figures"].as_array().unwrap_or(&empty) {
        println!(
            "{:<58} {:>10} {:>10} {:>10} {:>8} {:>8}",
            format!(
                "{} {} [{}] {}",
                f["section"].as_str().unwrap_or(""),
                f["label"].as_str().unwrap_or(""),
                f["unit"].as_str().unwrap_or(""),
                if f["better"] == "higher" {
                    "↑"
                } else {
                    "↓"
                }
            ),
            num(&f["direct"]),
            num(&f["haproxy"]),
            num(&f["pgsvc"]),
            rat(&f["ratios"]["haproxy_vs_direct"]),
            rat(&f["ratios"]["pgsvc_vs_direct"]),
        );
    }
}

/// The bench's scratch directory, removed on exit.
struct WorkDir(PathBuf, bool);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.1 {
            log(format!("kept {}", self.0.display()));
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
