//! The real-cluster sandbox (`sandbox/pgsandbox`: etcd, three Patroni/PostgreSQL/pgbouncer nodes, an
//! LB host and a client host, each a network namespace on 198.18.0.0/24) as an RAII guard for the e2e
//! tests and the demo.
//!
//! [`Sandbox::up`] brings a sandbox up under an id of its own (so concurrent runs never collide) and
//! takes it down again on drop — namespaces, processes, state and bpffs pins — also when the caller
//! panics. [`Sandbox::start_pgsvc`] runs the real `pgsvc run` on the LB host with the sandbox's Pigsty
//! inventory; [`Probe`] wraps `sandbox/writer_probe.py`, which opens a new connection every 50 ms.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use pgsvc::datapath::pass::PassProgram;
use serde_json::Value;

use crate::{
    guard::{ChildGuard, ensure_bpffs},
    netns::NsWorker,
};

/// The VIP pgsvc raises on the LB host (`pg_vip_address` of sandbox/pigsty.yml).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// The LB host's own address (pgsvc's SNAT address).
pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The client host's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// pgsvc's admin API, on the LB's address so that the client host reaches it.
pub const ADMIN: &str = "198.18.0.2:9102";
/// The sandbox's test user and database.
pub const TEST_DSN: &str = "user=dbuser_test password=DBUser.Test dbname=test";

/// Pigsty's `norm` timers, as the sandbox inventory uses them (pg_rto: norm), in seconds.
pub mod norm {
    /// HAProxy `inter`, `fastinter`, `downinter`, `rise`, `fall`.
    pub const INTER: f64 = 2.0;
    pub const FASTINTER: f64 = 1.0;
    pub const DOWNINTER: f64 = 2.0;
    pub const RISE: f64 = 3.0;
    pub const FALL: f64 = 3.0;
    /// Patroni's leader key ttl and loop_wait (the sandbox's PGSB_TTL / PGSB_LOOP_WAIT defaults).
    pub const TTL: f64 = 30.0;
    pub const LOOP_WAIT: f64 = 5.0;
    /// How long after Patroni's new leader answers `/primary` pgsvc has it UP in the primary
    /// service at the latest: the server is DOWN there, checked every `downinter`, and needs `rise`
    /// passing checks, the later ones `fastinter` apart.
    pub const DETECT_UP: f64 = DOWNINTER + (RISE - 1.0) * FASTINTER;
}

/// One database node of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Patroni member name, `pg-test-N`.
    pub name: &'static str,
    /// pgsandbox host name, `nN`.
    pub host: &'static str,
    pub addr: Ipv4Addr,
}

pub const MEMBERS: [Member; 3] = [
    Member {
        name: "pg-test-1",
        host: "n1",
        addr: Ipv4Addr::new(198, 18, 0, 11),
    },
    Member {
        name: "pg-test-2",
        host: "n2",
        addr: Ipv4Addr::new(198, 18, 0, 12),
    },
    Member {
        name: "pg-test-3",
        host: "n3",
        addr: Ipv4Addr::new(198, 18, 0, 13),
    },
];

impl Member {
    pub fn by_addr(addr: &str) -> Option<Self> {
        MEMBERS.iter().copied().find(|m| m.addr.to_string() == addr)
    }

    pub fn by_name(name: &str) -> Option<Self> {
        MEMBERS.iter().copied().find(|m| m.name == name)
    }
}

/// The repository root (this crate's parent directory).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

pub fn pgsandbox_path() -> PathBuf {
    repo_root().join("sandbox").join("pgsandbox")
}

pub fn inventory_path() -> PathBuf {
    repo_root().join("sandbox").join("pigsty.yml")
}

/// Epoch seconds, the clock of pgsandbox's events and of the writer probe's records.
pub fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A sandbox id (`[a-z][a-z0-9]{0,11}`) unique to this process and call: `<prefix><pid>n<seq>`.
pub fn unique_id(prefix: &str) -> String {
    let id = format!(
        "{prefix}{}n{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    assert!(
        id.len() <= 12
            && id.starts_with(|c: char| c.is_ascii_lowercase())
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "sandbox id {id:?} must match [a-z][a-z0-9]{{0,11}}"
    );
    id
}

/// The `pgsvc` binary: `$PGSVC_BIN`, else beside the running executable (a binary of this crate in
/// target/<profile>/), else the one `cargo test` builds (see [`crate::agent_rig::pgsvc_bin`]).
pub fn pgsvc_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PGSVC_BIN") {
        return PathBuf::from(p);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let beside = dir.join("pgsvc");
        if beside.is_file() {
            return beside;
        }
    }
    crate::agent_rig::pgsvc_bin()
}

/// Whether everything `pgsandbox up` needs is installed (`pgsandbox preflight`): the reason if not.
pub fn preflight() -> Result<(), String> {
    match Command::new(pgsandbox_path()).arg("preflight").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stderr);
            let text = text.trim();
            Err(text
                .split_once("error: ")
                .map_or(text, |(_, why)| why)
                .to_owned())
        }
        Err(e) => Err(format!("cannot run {}: {e}", pgsandbox_path().display())),
    }
}

/// The gate of every e2e test: false (with a visible SKIPPED line) when not root, or when the
/// sandbox's packages are missing outside CI. On CI (`CI` set) missing packages are a failure:
/// `cargo xtask setup` installs them, so their absence there is a broken setup, not a reason to skip.
pub fn require_sandbox(test: &str) -> bool {
    // A skip is recorded, not passed: see `crate::skip`.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        crate::skip(
            test,
            "needs root (network namespaces, XDP, daemons); run `cargo xtask test` as root",
        );
        return false;
    }
    match preflight() {
        Ok(()) => true,
        Err(why) => {
            let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
            assert!(
                !ci,
                "{test}: the real-cluster sandbox cannot run on this CI machine: {why} \
                 (`cargo xtask setup` installs its packages: sandbox/pgsandbox install)"
            );
            crate::skip(
                test,
                &format!(
                    "the sandbox's packages are missing ({why}); \
                     run `cargo xtask setup` (or sandbox/pgsandbox install) as root"
                ),
            );
            false
        }
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A failover the sandbox performed, with the times that bound it (epoch seconds).
#[derive(Debug, Clone)]
pub struct Failover {
    /// "switchover" or "kill-primary".
    pub kind: &'static str,
    /// When pgsandbox issued it (its `events.log` entry).
    pub event_t: f64,
    /// When the new leader first answered 200 on `/primary`, polled every 100 ms from the client host.
    pub promoted_t: f64,
    pub old: Member,
    pub new: Member,
}

impl Failover {
    /// Seconds from the event until the new leader answered `/primary`.
    pub fn promotion_s(&self) -> f64 {
        self.promoted_t - self.event_t
    }

    /// Asserts that no write in `attempts` was acknowledged by a node while it was not the
    /// primary: none in recovery, the old primary's last ack before the new one was promoted, the
    /// new one's first ack after the event, and no other node at all.
    ///
    /// # Panics
    /// On the first write that breaks it, named `name`.
    pub fn assert_writes_only_on_the_primary(&self, name: &str, attempts: &[Attempt]) {
        let (old_ip, new_ip) = (self.old.addr.to_string(), self.new.addr.to_string());
        for a in attempts.iter().filter(|a| a.ok) {
            assert_eq!(
                a.in_recovery,
                Some(false),
                "{name}: write acknowledged in recovery: {a:?}"
            );
            match a.addr.as_deref() {
                Some(x) if x == old_ip => assert!(
                    a.t1 <= self.promoted_t,
                    "{name}: the old primary acknowledged a write after the new one was promoted: {a:?}"
                ),
                Some(x) if x == new_ip => assert!(
                    a.t0 >= self.event_t,
                    "{name}: the new primary acknowledged a write before the event: {a:?}"
                ),
                other => panic!("{name}: write acknowledged by {other:?}: {a:?}"),
            }
        }
    }
}

/// A running sandbox; dropped means down.
pub struct Sandbox {
    pub id: String,
    /// `/run/pgsvc-sandbox/<id>`: configs, logs, pid files, `events.log`.
    pub state: PathBuf,
    /// `pgsandbox env`, parsed.
    pub env: BTreeMap<String, String>,
    /// Where `pgsandbox up` said what it did (its stderr log).
    pub up_log: String,
    cl: Option<NsWorker<()>>,
    pass: Option<NsWorker<Option<PassProgram>>>,
    /// Pass programs on the members' bridge ports (the node-resident topology).
    node_pass: Option<NsWorker<Vec<PassProgram>>>,
    pin_dir: PathBuf,
    cancel: Option<&'static AtomicBool>,
    /// The pgsandbox script this sandbox runs ([`pgsandbox_path`] unless [`Self::up_from`]).
    script: PathBuf,
    /// The working directory of every pgsandbox command (the caller's unless [`Self::up_from`]).
    cwd: Option<PathBuf>,
}

impl Sandbox {
    /// `pgsandbox up` under a fresh id (`te<pid>n<seq>`).
    pub fn up() -> anyhow::Result<Self> {
        Self::up_with_prefix("te")
    }

    /// `pgsandbox up` under a fresh id starting with `prefix` (two lowercase letters).
    pub fn up_with_prefix(prefix: &str) -> anyhow::Result<Self> {
        Self::up_from(prefix, pgsandbox_path(), None)
    }

    /// `up_with_prefix`, with another copy of the pgsandbox script, every pgsandbox command run from
    /// `cwd` (a checkout the `postgres` user cannot enter, as an e2e test does).
    pub fn up_from(prefix: &str, script: PathBuf, cwd: Option<PathBuf>) -> anyhow::Result<Self> {
        let id = unique_id(prefix);
        // The guard exists before anything is created: whatever `up` leaves behind, drop removes.
        let mut sb = Self {
            script,
            cwd,
            state: PathBuf::from("/run/pgsvc-sandbox").join(&id),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{id}-pgsvc")),
            id,
            env: BTreeMap::new(),
            up_log: String::new(),
            cl: None,
            pass: None,
            node_pass: None,
            cancel: None,
        };
        let out = sb
            .command(&["up"])
            .stdin(Stdio::null())
            .output()
            .context("running pgsandbox up")?;
        sb.up_log = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!(
                "pgsandbox up (PGSB_ID={}) failed ({}): {}\n{}",
                sb.id,
                out.status,
                first_cause(&sb.up_log),
                output_text(&out)
            );
        }
        let env = sb.run(&["env"])?;
        for line in env.lines() {
            if let Some((k, v)) = line.split_once('=') {
                sb.env.insert(k.to_owned(), v.trim_matches('\'').to_owned());
            }
        }
        if let Some(state) = sb.env.get("PGSB_STATE") {
            sb.state = PathBuf::from(state);
        }
        let cl = sb.ns("cl");
        sb.cl = Some(NsWorker::start(&cl, || ()));
        Ok(sb)
    }

    /// Makes the long waits (pgsvc readiness, switchover, promotion, probe waits) give up with an
    /// "interrupted" error once `flag` is set (the demo's SIGINT/SIGTERM handler sets it).
    pub fn set_cancel(&mut self, flag: &'static AtomicBool) {
        self.cancel = Some(flag);
    }

    fn check_cancel(&self) -> anyhow::Result<()> {
        if self.cancel.is_some_and(|f| f.load(Ordering::Relaxed)) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// The namespace of a sandbox host (sw etcd n1 n2 n3 lb cl).
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.id)
    }

    /// A `sandbox/pgsandbox ARGS` command aimed at this sandbox.
    /// (Falls back to the repository's script and the caller's directory when those of
    /// [`Self::up_from`] are gone, so that `down` always runs.)
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = if self.script.is_file() {
            Command::new(&self.script)
        } else {
            Command::new(pgsandbox_path())
        };
        c.args(args).env("PGSB_ID", &self.id);
        if let Some(dir) = self.cwd.as_ref().filter(|d| d.is_dir()) {
            c.current_dir(dir);
        }
        c
    }

    /// Runs `pgsandbox ARGS`; its stdout, or an error with everything it printed.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running pgsandbox {args:?}"))?;
        if !out.status.success() {
            bail!(
                "pgsandbox {} failed ({}):\n{}",
                args.join(" "),
                out.status,
                output_text(&out)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `args` on a sandbox host (`ip netns exec`); the output whatever the exit status.
    pub fn exec(&self, host: &str, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {args:?} on {host}"))
    }

    /// `psql` on the client host against VIP:port as the test user; unaligned output, fields
    /// separated by one space, trimmed.
    pub fn psql(&self, port: u16, sql: &str) -> anyhow::Result<String> {
        self.psql_at(&VIP.to_string(), port, sql)
    }

    /// `psql` on the client host against host:port as the test user, killed after 15 s.
    pub fn psql_at(&self, host: &str, port: u16, sql: &str) -> anyhow::Result<String> {
        self.psql_within(host, port, sql, 15.0)
    }

    /// `psql` against host:port, killed after `secs` of wall time. Polls need this: a client that
    /// pgbouncer parks waiting for a dead server waits up to server_connect_timeout (15 s), and
    /// libpq's connect_timeout does not end that wait.
    pub fn psql_within(
        &self,
        host: &str,
        port: u16,
        sql: &str,
        secs: f64,
    ) -> anyhow::Result<String> {
        let dsn = format!("host={host} port={port} {TEST_DSN} connect_timeout=3");
        let limit = format!("{secs:.1}");
        let args = [
            "timeout",
            &limit,
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-F",
            " ",
            "-v",
            "ON_ERROR_STOP=1",
            &dsn,
            "-c",
            sql,
        ];
        let out = self.exec("cl", &args)?;
        if !out.status.success() {
            bail!(
                "psql {host}:{port} {sql:?} failed ({}): {}",
                out.status,
                output_text(&out).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `pgsandbox status --json`: one object per member (name, addr, role, state, lag, pgbouncer, …).
    pub fn status_json(&self) -> anyhow::Result<Value> {
        let out = self.run(&["status", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("pgsandbox status --json: {out}"))
    }

    /// The member whose own REST API answers 200 on `/primary` (exactly one, or an error).
    pub fn leader(&self) -> anyhow::Result<Member> {
        let leaders: Vec<Member> = MEMBERS
            .iter()
            .copied()
            .filter(|m| self.rest_code(m.addr, "/primary") == Some(200))
            .collect();
        match leaders.as_slice() {
            [one] => Ok(*one),
            other => bail!("expected one member answering /primary, found {other:?}"),
        }
    }

    /// The HTTP status of `GET path` on a member's Patroni REST API, asked from the client host;
    /// None when it does not answer within a second.
    pub fn rest_code(&self, addr: Ipv4Addr, path: &str) -> Option<u16> {
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        self.on_client(move || {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from((addr, 8008)),
                Duration::from_millis(500),
            )
            .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            s.write_all(req.as_bytes()).ok()?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).ok()?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
    }

    /// Runs `f` on a thread inside the client host's namespace (sockets made there stay there).
    pub fn on_client<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.cl
            .as_ref()
            .expect("the client worker exists while the sandbox is up")
            .run(move |()| f())
    }

    /// An HTTP GET of the admin API of the pgsvc at `addr`:9102 from the client host.
    pub fn admin_get_at(&self, addr: Ipv4Addr, path: &str) -> std::io::Result<(u16, String)> {
        let path = path.to_owned();
        self.on_client(move || {
            crate::netns::http_request(SocketAddr::from((addr, 9102)), "GET", &path)
        })
    }

    /// An HTTP GET of pgsvc's admin API from the client host: (status, body).
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let path = path.to_owned();
        self.on_client(move || {
            let addr: SocketAddr = ADMIN.parse().map_err(std::io::Error::other)?;
            crate::netns::http_request(addr, "GET", &path)
        })
    }

    /// `pgsvc status [--json]` of the agent, run in the client's namespace.
    pub fn pgsvc_status(&self, json: bool) -> anyhow::Result<String> {
        self.pgsvc_status_of(ADMIN, json)
    }

    /// `pgsvc status [--json]` of the agent whose admin API is at `admin`, from the client host.
    pub fn pgsvc_status_of(&self, admin: &str, json: bool) -> anyhow::Result<String> {
        let mut c = Command::new(pgsvc_binary());
        c.args(["--netns", &self.ns("cl"), "status", "--admin", admin]);
        if json {
            c.arg("--json");
        }
        let out = c.output().context("running pgsvc status")?;
        if !out.status.success() {
            bail!(
                "pgsvc status failed ({}): {}",
                out.status,
                output_text(&out)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Attaches the pass-through XDP program to the LB's bridge port (`lb` in the switch namespace):
    /// native-mode `XDP_TX` frames are only delivered to a veth peer that runs XDP itself.
    pub fn attach_pass(&mut self) -> anyhow::Result<()> {
        if self.pass.is_some() {
            return Ok(());
        }
        let worker = NsWorker::start(&self.ns("sw"), || None);
        worker
            .run(|p: &mut Option<PassProgram>| {
                PassProgram::attach("lb", None).map(|prog| *p = Some(prog))
            })
            .context("attaching the pass program to the LB's bridge port")?;
        self.pass = Some(worker);
        Ok(())
    }

    /// Where [`Self::start_pgsvc`] pins pgsvc's datapath.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Starts `pgsvc run` on the LB host with the sandbox inventory (native XDP on eth0, the VIP,
    /// the admin API on the LB's address) plus `extra` arguments, logging to
    /// `<state>/logs/pgsvc.log`; waits until `/ready` answers 200.
    pub fn start_pgsvc(&mut self, extra: &[&str]) -> anyhow::Result<Pgsvc> {
        self.attach_pass()?;
        let pin_dir = self.pin_dir.display().to_string();
        let vip = format!("{VIP}/24");
        let mut args = vec!["--vip", &vip, "--admin", ADMIN, "--pin-dir", &pin_dir];
        args.extend_from_slice(extra);
        self.spawn_pgsvc("lb", "pgsvc.log", LB_ADDR, &args, "pgsvc")
    }

    /// The certificates of a sandbox host, laid out as Pigsty's `/pg/cert` (`ca.crt`, `server.crt`,
    /// `server.key`): what that host's pgsvc presents to the sandbox's etcd (https, client
    /// certificates required, RBAC user `pg-test` with `pg_etcd_password` from the inventory).
    pub fn cert_dir(&self, host: &str) -> PathBuf {
        self.state.join(host).join("cert")
    }

    /// `--etcd-ca/--etcd-cert/--etcd-key` with `host`'s certificates: how a pgsvc on that host
    /// reaches the sandbox's etcd (a Pigsty node has them in `/pg/cert`, which pgsvc reads by
    /// default; the sandbox cannot write there). The user and password come from the inventory.
    pub fn etcd_tls_args(&self, host: &str) -> Vec<String> {
        let dir = self.cert_dir(host);
        [
            ("--etcd-ca", "ca.crt"),
            ("--etcd-cert", "server.crt"),
            ("--etcd-key", "server.key"),
        ]
        .iter()
        .flat_map(|(flag, file)| [(*flag).to_owned(), dir.join(file).display().to_string()])
        .collect()
    }

    /// Cuts `host` off etcd (a blackhole route to etcd's address in its namespace only) until
    /// [`Self::etcd_heal`]; returns the event time.
    pub fn etcd_cut(&self, host: &str) -> anyhow::Result<f64> {
        let out = self.run(&["etcd-cut", host])?;
        parse_event(&out).context("pgsandbox etcd-cut printed no event time")
    }

    /// Undoes [`Self::etcd_cut`]; returns the event time.
    pub fn etcd_heal(&self, host: &str) -> anyhow::Result<f64> {
        let out = self.run(&["etcd-heal", host])?;
        parse_event(&out).context("pgsandbox etcd-heal printed no event time")
    }

    /// `pgsvc --netns <host> run` with the sandbox inventory on eth0 (native XDP), the host's etcd
    /// certificates ([`Self::etcd_tls_args`]) plus `args`, logging to `<state>/logs/<log_name>`;
    /// waits until `/ready` answers 200 at `admin`:9102.
    fn spawn_pgsvc(
        &self,
        host: &str,
        log_name: &str,
        admin: Ipv4Addr,
        args: &[&str],
        what: &str,
    ) -> anyhow::Result<Pgsvc> {
        ensure_bpffs();
        let log = self.state.join("logs").join(log_name);
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(pgsvc_binary());
        cmd.args(["--netns", &self.ns(host), "run", "--config"])
            .arg(inventory_path())
            .args([
                "--cluster",
                "pg-test",
                "--iface",
                "eth0",
                "--xdp-mode",
                "native",
            ])
            .args(["--log", "info"])
            .args(self.etcd_tls_args(host))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("log file")?)
            .stderr(file)
            // its own process group: a terminal's Ctrl-C reaches the caller, which stops it in order
            .process_group(0);
        let agent = Pgsvc {
            child: ChildGuard::spawn(cmd),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.admin_get_at(admin, "/ready") {
                return Ok(agent);
            }
            self.check_cancel()?;
            if Instant::now() > deadline {
                bail!(
                    "{what} did not become ready in 30 s; its log:\n{}",
                    agent.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where [`Self::start_node_pgsvc`] pins member `m`'s pgsvc.
    pub fn node_pin_dir(&self, m: Member) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}-{}", self.id, m.host))
    }

    /// The node-resident topology (Pigsty's default): `pgsvc run` in member `m`'s own namespace on its
    /// eth0 (native XDP), with the sandbox inventory and the admin API on the member's address, plus
    /// `extra` arguments; no `--vip` (`pgsandbox vip start` moves the VIP with the leader key, as
    /// vip-manager does). Logs to `<state>/logs/pgsvc-<host>.log`; waits until `/ready` answers 200.
    pub fn start_node_pgsvc(&mut self, m: Member, extra: &[&str]) -> anyhow::Result<Pgsvc> {
        self.attach_node_pass()?;
        let admin = format!("{}:9102", m.addr);
        let pin_dir = self.node_pin_dir(m).display().to_string();
        let mut args = vec!["--admin", &admin, "--pin-dir", &pin_dir];
        args.extend_from_slice(extra);
        self.spawn_pgsvc(
            m.host,
            &format!("pgsvc-{}.log", m.host),
            m.addr,
            &args,
            &format!("pgsvc on {}", m.name),
        )
    }

    /// Attaches the pass-through XDP program to the members' bridge ports (n1..n3 in the switch
    /// namespace), for the native-mode `XDP_TX` of a pgsvc on every node.
    fn attach_node_pass(&mut self) -> anyhow::Result<()> {
        if self.node_pass.is_some() {
            return Ok(());
        }
        let worker = NsWorker::start(&self.ns("sw"), Vec::new);
        worker
            .run(|progs: &mut Vec<PassProgram>| -> anyhow::Result<()> {
                for port in ["n1", "n2", "n3"] {
                    progs.push(PassProgram::attach(port, None)?);
                }
                Ok(())
            })
            .context("attaching the pass program to the members' bridge ports")?;
        self.node_pass = Some(worker);
        Ok(())
    }

    /// `pgsandbox vip start`: the VIP follows the leader key (the sandbox's vip-manager).
    pub fn start_vip_follower(&self) -> anyhow::Result<()> {
        self.run(&["vip", "start"]).map(drop)
    }

    /// The member whose eth0 holds the VIP now (`pgsandbox vip status`), if any.
    pub fn vip_holder(&self) -> Option<Member> {
        let out = self.run(&["vip", "status"]).ok()?;
        out.lines().find_map(Member::by_name)
    }

    /// `pgsandbox wait-writes VIP:port SECONDS`: until one write through the service commits.
    pub fn wait_writes(&self, port: u16, secs: u32) -> anyhow::Result<()> {
        self.wait_writes_at(VIP, port, secs)
    }

    /// `pgsandbox wait-writes host:port SECONDS`.
    pub fn wait_writes_at(&self, host: Ipv4Addr, port: u16, secs: u32) -> anyhow::Result<()> {
        self.run(&["wait-writes", &format!("{host}:{port}"), &secs.to_string()])
            .map(drop)
    }

    /// Polls member `m`'s `/primary` every 100 ms until it answers 200; the epoch time it did.
    fn wait_promoted(&self, m: Member, timeout: Duration) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.rest_code(m.addr, "/primary") == Some(200) {
                return Ok(epoch());
            }
            self.check_cancel()?;
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{} did not answer /primary within {timeout:?}", m.name)
    }

    /// `pgsandbox switchover --to <the other of pg-test-1/2>`, measuring when the new leader answers
    /// `/primary`; returns once pgsandbox saw the whole cluster healthy again (old primary streaming,
    /// every pgbouncer serving).
    pub fn switchover(&self) -> anyhow::Result<Failover> {
        let old = self.leader()?;
        let new = if old.name == "pg-test-2" {
            MEMBERS[0]
        } else {
            MEMBERS[1]
        };
        let out_path = self.state.join("logs").join(format!(
            "switchover-{}.out",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let out = fs::File::create(&out_path).context("switchover output file")?;
        let mut cmd = self.command(&["switchover", "--to", new.name]);
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().context("switchover output file")?)
            .stderr(out)
            .process_group(0);
        let mut child = ChildGuard::spawn(cmd);
        let read_out = || fs::read_to_string(&out_path).unwrap_or_default();
        let t0 = Instant::now();
        let mut promoted_t = None;
        let status = loop {
            if promoted_t.is_none() && self.rest_code(new.addr, "/primary") == Some(200) {
                promoted_t = Some(epoch());
            }
            if let Some(c) = child.0.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                child.0 = None;
                break status;
            }
            self.check_cancel()?;
            if t0.elapsed() > Duration::from_secs(180) {
                bail!(
                    "pgsandbox switchover still runs after 180 s:\n{}",
                    read_out()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let text = read_out();
        if !status.success() {
            bail!("pgsandbox switchover failed ({status}):\n{text}");
        }
        let event_t = parse_event(&text)
            .with_context(|| format!("no `event T` line from pgsandbox switchover:\n{text}"))?;
        let promoted_t = match promoted_t {
            Some(t) => t,
            None => self.wait_promoted(new, Duration::from_secs(5))?,
        };
        Ok(Failover {
            kind: "switchover",
            event_t,
            promoted_t,
            old,
            new,
        })
    }

    /// `pgsandbox kill-primary` (SIGKILL of the primary's Patroni and postgres; its pgbouncer stays),
    /// then waits (≤ 90 s) until the other failover candidate answers `/primary`. Does not revive.
    pub fn kill_primary(&self) -> anyhow::Result<Failover> {
        let old = self.leader()?;
        let new = if old.name == "pg-test-2" {
            MEMBERS[0]
        } else {
            MEMBERS[1]
        };
        let text = self.run(&["kill-primary"])?;
        let event_t = parse_event(&text)
            .with_context(|| format!("no `event T` line from pgsandbox kill-primary:\n{text}"))?;
        let promoted_t = self.wait_promoted(new, Duration::from_secs(90))?;
        Ok(Failover {
            kind: "kill-primary",
            event_t,
            promoted_t,
            old,
            new,
        })
    }

    /// `pgsandbox revive`: restarts what was killed, waits until the cluster is healthy.
    pub fn revive(&self) -> anyhow::Result<()> {
        self.run(&["revive"]).map(drop)
    }

    /// `pgsandbox stop NODE`: SIGKILL of that member's Patroni and postgres.
    pub fn stop(&self, m: Member) -> anyhow::Result<()> {
        self.run(&["stop", m.name]).map(drop)
    }

    /// `pgsandbox start NODE`: restarts a stopped member, waits until the cluster is healthy.
    pub fn start(&self, m: Member) -> anyhow::Result<()> {
        self.run(&["start", m.name]).map(drop)
    }

    /// The sandbox's events (`<epoch> <what>` lines of events.log).
    pub fn events(&self) -> Vec<(f64, String)> {
        fs::read_to_string(self.state.join("events.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (t, what) = l.split_once(' ')?;
                Some((t.parse().ok()?, what.to_owned()))
            })
            .collect()
    }

    /// Starts the writer probe (or, with `read`, the read probe) on the client host: a new
    /// connection to VIP:port every 50 ms, one JSON line per attempt in `<state>/probe-<name>.jsonl`.
    /// Stops after `max` at the latest.
    pub fn probe(&self, port: u16, name: &str, read: bool, max: Duration) -> anyhow::Result<Probe> {
        self.probe_at(VIP, port, name, read, max)
    }

    /// [`Self::probe`] through `host:port` (a node's own address in the node-resident topology).
    pub fn probe_at(
        &self,
        host: Ipv4Addr,
        port: u16,
        name: &str,
        read: bool,
        max: Duration,
    ) -> anyhow::Result<Probe> {
        let out = self.state.join(format!("probe-{name}.jsonl"));
        let run_id = format!("{}-{name}", self.id);
        let mut args = vec![
            "probe".to_owned(),
            "run".to_owned(),
            "--host".to_owned(),
            host.to_string(),
            "--port".to_owned(),
            port.to_string(),
            "--interval".to_owned(),
            "0.05".to_owned(),
            "--duration".to_owned(),
            max.as_secs().to_string(),
            "--run-id".to_owned(),
            run_id,
            "--out".to_owned(),
            out.display().to_string(),
        ];
        if read {
            args.push("--read".to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = self.command(&args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        Ok(Probe {
            child: ChildGuard::spawn(cmd),
            out,
            port,
            sandbox_id: self.id.clone(),
            script: self.script.clone(),
            state: self.state.clone(),
            cancel: self.cancel,
        })
    }
}

/// A copy of the sandbox scripts in a checkout the `postgres` user cannot enter: `<tmp>/pgsvc-private-
/// <unique>/` (mode 0700) holds `checkout/sandbox/*`, as a clone into `mktemp -d` or /root has it.
/// Removed on drop.
pub struct PrivateCheckout {
    pub root: PathBuf,
    pub checkout: PathBuf,
}

impl PrivateCheckout {
    pub fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let root = std::env::temp_dir().join(crate::guard::unique("private"));
        fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
        let me = Self {
            checkout: root.join("checkout"),
            root,
        };
        fs::set_permissions(&me.root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", me.root.display()))?;
        let dest = me.checkout.join("sandbox");
        fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
        let src = repo_root().join("sandbox");
        for e in fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))? {
            let e = e.with_context(|| format!("reading {}", src.display()))?;
            if e.path().is_file() {
                fs::copy(e.path(), dest.join(e.file_name()))
                    .with_context(|| format!("copying {}", e.path().display()))?;
            }
        }
        Ok(me)
    }

    pub fn pgsandbox(&self) -> PathBuf {
        self.checkout.join("sandbox").join("pgsandbox")
    }
}

impl Drop for PrivateCheckout {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

impl Sandbox {
    /// Every process in the sandbox's namespaces (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for host in ["sw", "etcd", "n1", "n2", "n3", "lb", "cl"] {
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &self.ns(host)])
                .output()
            {
                pids.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
        pids
    }
}

/// `2026-11-25T20:32:39.202797Z` → epoch seconds.
pub fn parse_rfc3339_utc(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

/// The first line of pgsandbox's log that says what went wrong (a timeout, a daemon that died, an
/// error), without its timestamp; "see below" when there is none.
pub fn first_cause(log: &str) -> &str {
    log.lines()
        .map(|l| l.split_once(" pgsandbox: ").map_or(l, |(_, m)| m))
        .find(|m| {
            m.starts_with("timed out") || m.contains(" died while ") || m.starts_with("error: ")
        })
        .unwrap_or("see below")
}

/// The markers around the soak's section of BENCHMARKS.md (tests/src/bin/soak.rs writes it; bench-e2e
/// keeps it when it rewrites the file).
pub const SOAK_BEGIN: &str = "<!-- soak:begin -->";
pub const SOAK_END: &str = "<!-- soak:end -->";

/// `doc` with the lines from `begin` to `end` (marker lines included) replaced by `begin`, `section`
/// and `end`; appended (after a blank line) when `doc` has no such block. Lets two generators share
/// one Markdown file (BENCHMARKS.md: bench-e2e writes the file, the soak keeps its own section).
pub fn splice_section(doc: &str, begin: &str, end: &str, section: &str) -> String {
    let block = format!("{begin}\n{}\n{end}\n", section.trim_end());
    let lines: Vec<&str> = doc.lines().collect();
    let b = lines.iter().position(|l| l.trim() == begin);
    let e = b.and_then(|b| {
        lines[b..]
            .iter()
            .position(|l| l.trim() == end)
            .map(|e| b + e)
    });
    match (b, e) {
        (Some(b), Some(e)) => {
            let mut out = String::new();
            for l in &lines[..b] {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str(&block);
            for l in &lines[e + 1..] {
                out.push_str(l);
                out.push('\n');
            }
            out
        }
        _ if doc.trim().is_empty() => block,
        _ => format!("{}\n\n{block}", doc.trim_end()),
    }
}

/// What stands between the `begin` and `end` marker lines of `doc`, if it has them.
pub fn find_section(doc: &str, begin: &str, end: &str) -> Option<String> {
    let start = doc.find(begin)? + begin.len();
    let stop = start + doc[start..].find(end)?;
    Some(doc[start..stop].trim_matches('\n').to_owned())
}

/// `event <epoch>` as pgsandbox prints it after a switchover or kill-primary.
fn parse_event(text: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("event "))
        .find_map(|t| t.trim().parse().ok())
}

impl Sandbox {
    /// Copies the logs, events and probe records out of the state directory (which `down`
    /// removes) to `/tmp/pgsvc-sandbox-logs/<id>`; the destination.
    pub fn keep_logs(&self) -> Option<PathBuf> {
        let dest = PathBuf::from("/tmp/pgsvc-sandbox-logs").join(&self.id);
        fs::create_dir_all(&dest).ok()?;
        let mut sources: Vec<PathBuf> = fs::read_dir(self.state.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        sources.extend(
            fs::read_dir(&self.state)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file()),
        );
        for n in ["n1", "n2", "n3"] {
            sources.push(self.state.join(n).join("log").join("postgresql.log"));
        }
        for src in sources.iter().filter(|p| p.is_file()) {
            let name = src
                .strip_prefix(&self.state)
                .map_or_else(|_| src.clone(), Path::to_path_buf)
                .to_string_lossy()
                .replace('/', "_");
            let _ = fs::copy(src, dest.join(name));
        }
        Some(dest)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dest) = self.keep_logs()
        {
            eprintln!(
                "sandbox {}: logs kept in {} (the sandbox itself is taken down)",
                self.id,
                dest.display()
            );
        }
        self.cl.take();
        // detach before the namespace (and its veth) goes
        self.pass.take();
        self.node_pass.take();
        // its own process group: a second Ctrl-C does not cut the teardown short
        match self
            .command(&["down", &self.id])
            .stdin(Stdio::null())
            .process_group(0)
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "sandbox {}: pgsandbox down failed ({}): {}",
                self.id,
                out.status,
                output_text(&out)
            ),
            Err(e) => eprintln!("sandbox {}: cannot run pgsandbox down: {e}", self.id),
        }
        if self.pin_dir.exists() {
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
    }
}

/// A running `pgsvc run`: SIGTERM on drop (it detaches, removes the VIP and unpins), SIGKILL when it
/// has not exited after 10 s.
pub struct Pgsvc {
    child: ChildGuard,
    pub log: PathBuf,
}

impl Pgsvc {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Epoch times of the log lines containing `needle` (pgsvc logs UTC RFC 3339 timestamps).
    pub fn log_times(&self, needle: &str) -> Vec<f64> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| parse_rfc3339_utc(l.split_whitespace().next()?))
            .collect()
    }

    /// Stops it (SIGTERM, bounded wait); its exit status if it exited.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
    }
}

impl Drop for Pgsvc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// One attempt of the writer (or read) probe.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub seq: u64,
    pub t0: f64,
    pub t1: f64,
    pub ok: bool,
    pub addr: Option<String>,
    pub in_recovery: Option<bool>,
    pub err: Option<String>,
}

/// Every attempt a writer probe recorded in `path` (one JSON line each), in order.
#[must_use]
pub fn read_attempts(path: &Path) -> Vec<Attempt> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut v: Vec<Attempt> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|r| Attempt {
            seq: r["seq"].as_u64().unwrap_or(0),
            t0: r["t0"].as_f64().unwrap_or(0.0),
            t1: r["t1"].as_f64().unwrap_or(0.0),
            ok: r["ok"].as_bool().unwrap_or(false),
            addr: r["addr"].as_str().map(str::to_owned),
            in_recovery: r["in_recovery"].as_bool(),
            err: r["err"].as_str().map(str::to_owned),
        })
        .collect();
    v.sort_by(|a, b| a.t0.total_cmp(&b.t0));
    v
}

/// The writer probe running on the client host; stopped on drop.
pub struct Probe {
    child: ChildGuard,
    pub out: PathBuf,
    pub port: u16,
    sandbox_id: String,
    script: PathBuf,
    state: PathBuf,
    cancel: Option<&'static AtomicBool>,
}

impl Probe {
    /// Stops it (SIGTERM; it finishes the attempt under way).
    pub fn stop(&mut self) {
        // (still running after 5 s: the guard's drop kills it)
        let _ = self
            .child
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    }

    /// Every attempt so far, in order.
    pub fn attempts(&self) -> Vec<Attempt> {
        read_attempts(&self.out)
    }

    /// Waits (bounded) until an attempt that started after `after` (epoch) succeeded on `addr`;
    /// the time it finished.
    pub fn wait_success_on(&self, addr: Ipv4Addr, after: f64, timeout: Duration) -> Option<f64> {
        let t0 = Instant::now();
        let want = addr.to_string();
        while t0.elapsed() < timeout {
            if let Some(a) = self
                .attempts()
                .into_iter()
                .find(|a| a.ok && a.t0 > after && a.addr.as_deref() == Some(want.as_str()))
            {
                return Some(a.t1);
            }
            if self.cancel.is_some_and(|f| f.load(Ordering::Relaxed)) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// `writer_probe.py summary --json` over the sandbox's events, verifying every acknowledged
    /// row through VIP:port (see sandbox/writer_probe.py): windows per event, writers, violations.
    pub fn summary(&self) -> anyhow::Result<Value> {
        let out = Command::new(&self.script)
            .env("PGSB_ID", &self.sandbox_id)
            .args(["probe", "summary"])
            .arg(&self.out)
            .arg("--events-file")
            .arg(self.state.join("events.log"))
            .args(["--verify-host", &VIP.to_string()])
            .args(["--verify-port", &self.port.to_string(), "--json"])
            .stdin(Stdio::null())
            .output()
            .context("running writer_probe.py summary")?;
        // exit status 1 means "violations", which the JSON lists
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "writer_probe.py summary ({}) printed no JSON: {}",
                out.status,
                output_text(&out)
            )
        })
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A raw TCP session from the client host to VIP:port, proven alive by a PostgreSQL SSLRequest
/// (pgbouncer and postgres both answer `N` without SSL) and then left open: whatever resets it later
/// is the load balancer, not the database (a session that never authenticated has no server side).
pub fn open_raw_session(sb: &Sandbox, port: u16) -> std::io::Result<TcpStream> {
    sb.on_client(move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((VIP, port)), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        // SSLRequest: length 8, code 80877103
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        if b[0] != b'N' {
            return Err(std::io::Error::other(format!(
                "unexpected answer {:?} to SSLRequest",
                b[0] as char
            )));
        }
        Ok(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(
            parse_rfc3339_utc("2000-03-01T00:00:00Z"),
            Some(951_868_800.0)
        );
        let t = parse_rfc3339_utc("2026-11-25T20:32:39.25Z").expect("parses");
        assert!((t - 1_795_638_759.25).abs() < 1e-6, "{t}");
        assert_eq!(parse_rfc3339_utc("2026-11-25 20:32:39"), None);
    }

    #[test]
    fn event_lines() {
        assert_eq!(
            parse_event("x\nevent 1795638366.119\n"),
            Some(1_795_638_366.119)
        );
        assert_eq!(parse_event("no event here"), None);
    }

    #[test]
    fn sections_are_spliced_in_place_or_appended() {
        let (b, e) = ("<!-- x:begin -->", "<!-- x:end -->");
        let doc = "# T\n\ntext\n";
        let once = splice_section(doc, b, e, "## X\n1\n");
        assert_eq!(
            once,
            "# T\n\ntext\n\n<!-- x:begin -->\n## X\n1\n<!-- x:end -->\n"
        );
        let twice = splice_section(&format!("{once}tail\n"), b, e, "## X\n2");
        assert_eq!(
            twice,
            "# T\n\ntext\n\n<!-- x:begin -->\n## X\n2\n<!-- x:end -->\ntail\n"
        );
        assert_eq!(find_section(&twice, b, e).as_deref(), Some("## X\n2"));
        assert_eq!(find_section(doc, b, e), None);
        assert_eq!(splice_section("", b, e, "s"), format!("{b}\ns\n{e}\n"));
    }

    #[test]
    fn first_cause_of_a_failed_up() {
        let log = "12:00:00.000 pgsandbox: etcd\n\
                   12:01:30.000 pgsandbox: timed out after 90s waiting for pg-test-1 to lead\n\
                   12:01:30.001 pgsandbox: patroni-n1 (pg-test-1's Patroni) runs (pid 7)\n";
        assert_eq!(
            first_cause(log),
            "timed out after 90s waiting for pg-test-1 to lead"
        );
        assert_eq!(first_cause("12:00:00.000 pgsandbox: etcd\n"), "see below");
    }

    #[test]
    fn ids_fit_pgsandbox() {
        let id = unique_id("te");
        assert!(id.starts_with("te") && id.len() <= 12, "{id}");
        assert_ne!(unique_id("te"), unique_id("te"));
    }
}
