//! netns tier of the DCS watch against etcd as Pigsty runs it: https only, client certificates of a
//! CA of the test's own (`--client-cert-auth`), RBAC on (root, and user `pg-test` with read-write on
//! `/pg/pg-test/`, its password `pg_etcd_password` in the inventory). etcd listens on a second address
//! of the client host (198.18.0.5, the sandbox's etcd address), so that a blackhole route inside the
//! LB's namespace cuts the agent off etcd and nothing else. The real `pgsvc run` reads the leader key
//! through it; Patroni stand-ins answer the REST checks.
//!
//! Checks: fencing through TLS + RBAC with the inventory's password; a wrong CA and a wrong password
//! stop the start with a clear error; DCS faults at runtime — the agent cut off etcd (fallback, then a
//! compaction past the watched revision while cut off: the resumed watch is cancelled by etcd and the
//! agent re-reads), a password changed and a read permission revoked under a running watch, etcd
//! restarted with a certificate of another CA (fallback with the reason, recovery once fixed) — each
//! logged with its reason, with the metrics, and the write service never routed to a member that
//! does not hold the key while the key is followed.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, Permission, RoleRevokePermissionOptions,
    TlsOptions,
};
use pgsvc_tests::{
    agent_rig::{AgentRig, pgsvc_bin},
    guard::{ChildGuard, PinDir, unique},
    netns::NsWorker,
    require_root,
};

const ETCD: &str = "/usr/bin/etcd";
/// etcd's address: a second address of the client host (the sandbox's etcd address).
const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
const LEADER_KEY: &str = "/pg/pg-test/leader";
const PREFIX: &str = "/pg/pg-test/";
/// Where the `/pg/pg-test/` prefix ends (etcdctl's `--prefix`).
const PREFIX_END: &str = "/pg/pg-test0";
const ROOT_PASSWORD: &str = "Etcd.Root";
/// `pg_etcd_password` of the test inventory.
const PASSWORD: &str = "Tls.PgTest";

/// HAProxy's schedule to the letter (`--check-burst 0`) with rise 3 every second.
const SLOW: &str = "inter 1s fastinter 1s downinter 1s rise 3 fall 3 on-marked-down shutdown-sessions slowstart 0s maxconn 3000 weight 100";

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

fn etcd_url() -> String {
    format!("https://{ETCD_ADDR}:2379")
}

/// Root and Debian's etcd-server and openssl (`cargo xtask setup` installs them), or a recorded skip.
fn can_run(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    for (path, what) in [(ETCD, "etcd-server"), ("/usr/bin/openssl", "openssl")] {
        if !Path::new(path).exists() {
            pgsvc_tests::skip(
                test,
                &format!("needs {path} (Debian's {what}; cargo xtask setup installs it)"),
            );
            return false;
        }
    }
    true
}

/// A CA, a second unrelated CA, and certificates for etcd (IP SAN 198.18.0.5) and for its clients
/// (the agent, the test), made with openssl as the sandbox makes its own; removed on drop. No CN
/// in the leaf certificates, as the sandbox's (etcd's JSON gateway refuses a client certificate
/// with one; the agent speaks gRPC, but the files are the same kind).
struct Pki(PathBuf);

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("pki"));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let pki = Self(dir);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (ca, subject) in [
            ("ca", "/O=pgsvc-test/CN=test CA"),
            ("other-ca", "/O=elsewhere/CN=some other CA"),
        ] {
            pki.openssl(
                &[&["req", "-x509"], &ec[..]].concat(),
                &[
                    "-keyout",
                    &pki.path(&format!("{ca}.key")),
                    "-out",
                    &pki.path(&format!("{ca}.crt")),
                    "-days",
                    "2",
                    "-subj",
                    subject,
                ],
            );
        }
        for (name, ca, san) in [
            ("etcd", "ca", format!("IP:{ETCD_ADDR}")),
            ("client", "ca", "IP:198.18.0.2".into()),
            // etcd's certificate rotated to one of another CA
            ("etcd-other", "other-ca", format!("IP:{ETCD_ADDR}")),
        ] {
            let ext = pki.path(&format!("{name}.ext"));
            std::fs::write(
                &ext,
                format!(
                    "subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
                ),
            )
            .expect("extensions file");
            pki.openssl(
                &[&["req", "-new"], &ec[..]].concat(),
                &[
                    "-keyout",
                    &pki.path(&format!("{name}.key")),
                    "-out",
                    &pki.path(&format!("{name}.csr")),
                    "-subj",
                    &format!("/O=pgsvc-test/OU={name}"),
                ],
            );
            pki.openssl(
                &["x509", "-req"],
                &[
                    "-in",
                    &pki.path(&format!("{name}.csr")),
                    "-CA",
                    &pki.path(&format!("{ca}.crt")),
                    "-CAkey",
                    &pki.path(&format!("{ca}.key")),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &pki.path(&format!("{name}.crt")),
                    "-extfile",
                    &ext,
                ],
            );
        }
        pki
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.0.join(file)).expect("certificate file")
    }

    fn openssl(&self, head: &[&str], tail: &[&str]) {
        let out = Command::new("openssl")
            .args(head)
            .args(tail)
            .stdin(Stdio::null())
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {head:?} {tail:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The agent's `--etcd-ca/--etcd-cert/--etcd-key`, with the CA file `ca`.
    fn agent_args(&self, ca: &str) -> Vec<String> {
        [
            ("--etcd-ca", ca),
            ("--etcd-cert", "client.crt"),
            ("--etcd-key", "client.key"),
        ]
        .iter()
        .flat_map(|(flag, file)| [(*flag).to_owned(), self.path(file)])
        .collect()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The rig's inventory plus Pigsty's `etcd` group (198.18.0.5) and the cluster's etcd password.
fn inventory(options: &str) -> String {
    pgsvc_tests::agent_rig::inventory(options, "")
        .replacen(
            "  children:\n",
            &format!(
                "  children:\n    etcd:\n      hosts:\n        {ETCD_ADDR}: {{ etcd_seq: 1 }}\n      vars: {{ etcd_cluster: etcd }}\n"
            ),
            1,
        )
        .replacen(
            "        pg_cluster: pg-test\n",
            &format!("        pg_cluster: pg-test\n        pg_etcd_password: {PASSWORD}\n"),
            1,
        )
}

/// etcd with TLS, client certificates and RBAC on the client host's second address; the process
/// and its data go with the rig (the data lives in the rig's directory).
struct Etcd {
    proc: ChildGuard,
    worker: NsWorker<()>,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// The etcd process (its data in the rig's directory, kept across restarts), serving with the
/// certificate `<cert>.crt`/`<cert>.key` of `pki`.
fn spawn_etcd(rig: &AgentRig, pki: &Pki, cert: &str) -> ChildGuard {
    let cl = &rig.topo.host(0).ns;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(rig.dir.join("etcd.log"))
        .expect("etcd log");
    let url = etcd_url();
    let peer = format!("http://{ETCD_ADDR}:2380");
    let mut cmd = cl.command(ETCD);
    cmd.args(["--name", "dcs-tls", "--data-dir"])
        .arg(rig.dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--cert-file", &pki.path(&format!("{cert}.crt"))])
        .args(["--key-file", &pki.path(&format!("{cert}.key"))])
        .args([
            "--trusted-ca-file",
            &pki.path("ca.crt"),
            "--client-cert-auth",
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("dcs-tls={peer}")])
        .stdout(Stdio::null())
        .stderr(log);
    ChildGuard::spawn(cmd)
}

impl Etcd {
    fn start(rig: &AgentRig, pki: &Pki) -> Self {
        let cl = &rig.topo.host(0).ns;
        cl.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ETCD_ADDR}/24"),
            "dev",
            "eth0",
        ]);
        let etcd = Self {
            proc: spawn_etcd(rig, pki, "etcd"),
            worker: NsWorker::start(&cl.name, || ()),
            ca: pki.read("ca.crt"),
            cert: pki.read("client.crt"),
            key: pki.read("client.key"),
        };
        let t0 = Instant::now();
        // Auth is not on yet: the first put needs no user.
        while etcd
            .with(None, async |c| {
                c.put(LEADER_KEY, "pg-test-1", None).await.map(|_| ())
            })
            .is_err()
        {
            assert!(
                t0.elapsed() < Duration::from_secs(40),
                "etcd did not start; log:\n{}",
                std::fs::read_to_string(rig.dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Pigsty's RBAC: root, and a role per cluster with read-write on its prefix.
        etcd.with(None, async |c| {
            c.user_add("root", ROOT_PASSWORD, None).await?;
            c.user_grant_role("root", "root").await?;
            c.role_add("pg-test").await?;
            c.role_grant_permission(
                "pg-test",
                Permission::read_write(PREFIX).with_range_end(PREFIX_END),
            )
            .await?;
            c.user_add("pg-test", PASSWORD, None).await?;
            c.user_grant_role("pg-test", "pg-test").await?;
            c.auth_enable().await.map(|_| ())
        })
        .expect("RBAC set-up");
        etcd
    }

    /// Runs `f` with a TLS client (as `user`, when given) inside the client host's namespace.
    fn with<R: Send + 'static>(
        &self,
        user: Option<(&str, &str)>,
        f: impl AsyncFnOnce(&mut Client) -> Result<R, etcd_client::Error> + Send + 'static,
    ) -> Result<R, etcd_client::Error> {
        let user = user.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(self.ca.clone()))
            .identity(Identity::from_pem(self.cert.clone(), self.key.clone()));
        self.worker.run(move |_| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                // Generous: etcd commits each change with an fsync, slow while the machine builds.
                let mut o = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_tls(tls);
                if let Some((u, p)) = user {
                    o = o.with_user(u, p);
                }
                let mut c = tokio::time::timeout(
                    Duration::from_secs(15),
                    Client::connect([etcd_url()], Some(o)),
                )
                .await
                .map_err(|_| etcd_client::Error::InvalidArgs("connect timed out".into()))??;
                tokio::time::timeout(Duration::from_secs(20), f(&mut c))
                    .await
                    .map_err(|_| etcd_client::Error::InvalidArgs("request timed out".into()))?
            })
        })
    }

    /// Stops etcd (SIGKILL) and starts it again on the same data, serving with `cert`.
    fn restart_with(&mut self, rig: &AgentRig, pki: &Pki, cert: &str) {
        self.proc
            .signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
        self.proc = spawn_etcd(rig, pki, cert);
    }

    fn root<R: Send + 'static>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<R, etcd_client::Error> + Send + 'static,
    ) -> R {
        self.with(Some(("root", ROOT_PASSWORD)), f)
            .expect("etcd request as root")
    }

    fn put(&self, key: &'static str, value: &'static str) -> i64 {
        self.root(async move |c| {
            let r = c.put(key, value, None).await?;
            Ok(r.header().map_or(0, etcd_client::ResponseHeader::revision))
        })
    }
}

/// The rig with the agent on the TLS etcd (certificates from `pki`, user and password from the
/// inventory), fencing on pg-test-1.
fn rig_with_tls_etcd(pki: &Pki) -> (AgentRig, Etcd) {
    let mut args = vec!["--check-burst".to_owned(), "0".to_owned()];
    args.extend(pki.agent_args("ca.crt"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // etcd is not there yet: the agent starts on REST checks alone and finds it by itself.
    let rig = AgentRig::start_with(&inventory(SLOW), stub(), &args);
    let etcd = Etcd::start(&rig, pki);
    rig.wait_for("fencing on pg-test-1", Duration::from_secs(30), |r| {
        let d = &r.status()["dcs"][0];
        d["fencing"] == true && d["leader"] == "pg-test-1"
    });
    (rig, etcd)
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn one(name: &str) -> BTreeSet<String> {
    BTreeSet::from([name.to_owned()])
}

/// A metric's value in the agent's /metrics (None when the series is absent).
fn metric(rig: &AgentRig, series: &str) -> Option<f64> {
    let (code, body) = rig.http("GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
}

/// Waits for the fallback and returns its reason; checks the metrics and the log line that go with it.
fn wait_fallback(rig: &AgentRig, what: &str, limit: Duration) -> (Duration, String) {
    let took = rig.wait_for(what, limit, |r| r.status()["dcs"][0]["fencing"] == false);
    let d = &rig.status()["dcs"][0];
    let reason = d["fallback_reason"].as_str().unwrap_or_default().to_owned();
    assert!(!reason.is_empty(), "a fallback without a reason: {d}");
    assert_eq!(
        metric(rig, "pgsvc_dcs_fallback{cluster=\"pg-test\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(rig, "pgsvc_dcs_fencing{cluster=\"pg-test\"}"),
        Some(0.0)
    );
    // The log quotes the reason (its inner quotes escaped): its start, up to a quote, is there.
    let start: String = reason
        .split('"')
        .next()
        .unwrap_or_default()
        .chars()
        .take(40)
        .collect();
    let log = rig.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("fall back to REST checks alone") && l.contains(&start)),
        "no fallback line with the reason {reason:?} in the log:\n{log}"
    );
    (took, reason)
}

fn wait_fencing_on(rig: &AgentRig, leader: &str, limit: Duration) -> Duration {
    rig.wait_for(&format!("fencing on {leader} again"), limit, |r| {
        let d = &r.status()["dcs"][0];
        d["fencing"] == true && d["leader"] == leader && d["connected"] == true
    })
}

#[test]
fn the_leader_key_is_read_over_tls_as_the_clusters_rbac_user() {
    if !can_run("the_leader_key_is_read_over_tls_as_the_clusters_rbac_user") {
        return;
    }
    let pki = Pki::new();
    let (rig, etcd) = rig_with_tls_etcd(&pki);
    let d = &rig.status()["dcs"][0];
    assert!(
        d["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("https://{ETCD_ADDR}:2379"))),
        "{d}"
    );
    // The cluster's user reads its own prefix only (as Pigsty grants it).
    let denied = etcd.with(Some(("pg-test", PASSWORD)), async |c| {
        c.get("/pg/other-cluster/leader", None).await.map(|_| ())
    });
    assert!(denied.is_err(), "pg-test reads outside /pg/pg-test/");
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-1:6432"));
    rig.set_patroni(0, "replica");
    rig.set_patroni(1, "primary");
    let moved = Instant::now();
    etcd.put(LEADER_KEY, "pg-test-2");
    rig.wait_for("fencing on pg-test-2", Duration::from_secs(5), |r| {
        let d = &r.status()["dcs"][0];
        d["leader"] == "pg-test-2"
            && r.server_status("pg-test-primary", "pg-test-2")["active"] == true
    });
    assert_eq!(set(&rig.land(5433, 6)), one("pg-test-2:6432"));
    eprintln!(
        "dcs over TLS + RBAC: pg-test-2 active {:?} after the key moved",
        moved.elapsed()
    );
}

/// `pgsvc run --dcs etcd` with the TLS etcd and `extra` flags; its exit status and stderr. An
/// agent still running after 30 s started when it should not have: it is killed and the test fails.
fn refused_start(rig: &AgentRig, pki: &Pki, ca: &str, extra: &[&str]) -> (Option<i32>, String) {
    let pins = PinDir::new("dcs-tls-wrong");
    let stderr_path = rig.dir.join(format!("refused-{}.err", unique("start")));
    let stderr_file = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut cmd = Command::new(pgsvc_bin());
    cmd.args(["--netns", rig.lb_ns(), "run", "--config"])
        .arg(&rig.config)
        .args(["--iface", "eth0", "--metrics", "off", "--pin-dir"])
        .arg(pins.path())
        .args([
            "--admin",
            &SocketAddr::from((Ipv4Addr::new(198, 18, 0, 2), 9199)).to_string(),
        ])
        .args(["--dcs", "etcd"])
        .args(pki.agent_args(ca))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file);
    let mut agent = ChildGuard::spawn(cmd);
    let t0 = Instant::now();
    let status = loop {
        let child = agent.0.as_mut().expect("child");
        if let Some(st) = child.try_wait().expect("wait for pgsvc run") {
            break Some(st);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_none() {
        // a clean stop (pins removed) before the guard's SIGKILL
        agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    }
    drop(agent);
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let Some(status) = status else {
        panic!("pgsvc run started (still running after 30 s) with {ca} {extra:?}:\n{stderr}");
    };
    assert!(!pins.path().exists(), "a refused start left pins behind");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (status.code(), stderr)
}

#[test]
fn a_wrong_ca_or_password_stops_the_start_with_a_clear_error() {
    if !can_run("a_wrong_ca_or_password_stops_the_start_with_a_clear_error") {
        return;
    }
    let pki = Pki::new();
    let (rig, _etcd) = rig_with_tls_etcd(&pki);

    // A CA that did not sign etcd's certificate.
    let (code, stderr) = refused_start(&rig, &pki, "other-ca.crt", &[]);
    assert_ne!(code, Some(0), "started with a wrong CA: {stderr}");
    assert!(
        stderr.contains(&format!("TLS with etcd at https://{ETCD_ADDR}:2379 failed")),
        "unclear error for a wrong CA: {stderr}"
    );
    assert!(
        stderr.contains("pg-test") && stderr.contains("--dcs off"),
        "{stderr}"
    );
    eprintln!("wrong CA: {}", stderr.lines().last().unwrap_or_default());

    // The right CA, the inventory's password overridden with a wrong one.
    let (code, stderr) = refused_start(&rig, &pki, "ca.crt", &["--etcd-password", "wrong"]);
    assert_ne!(code, Some(0), "started with a wrong password: {stderr}");
    assert!(
        stderr.contains("refused the credentials of user \"pg-test\""),
        "unclear error for a wrong password: {stderr}"
    );
    assert!(stderr.contains("--dcs off"), "{stderr}");

    // The agent that runs with the right settings still follows the key (nothing changed).
    assert_eq!(rig.status()["dcs"][0]["fencing"], true);
}

#[test]
fn cut_off_etcd_falls_back_and_a_compaction_meanwhile_makes_the_resumed_watch_resync() {
    if !can_run("cut_off_etcd_falls_back_and_a_compaction_meanwhile") {
        return;
    }
    let pki = Pki::new();
    let (rig, etcd) = rig_with_tls_etcd(&pki);
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-1:6432"));
    let fallbacks = metric(&rig, "pgsvc_dcs_fallbacks_total{cluster=\"pg-test\"}").unwrap_or(0.0);

    // The LB cannot reach etcd any more; the client host and the nodes still can.
    let lb = &rig.topo.host(1).ns;
    let route = format!("{ETCD_ADDR}/32");
    lb.exec(&["ip", "route", "add", "blackhole", &route]);
    let cut = Instant::now();
    let (took, reason) = wait_fallback(&rig, "the fallback after the cut", Duration::from_secs(10));
    assert!(reason.contains("etcd"), "{reason}");
    assert_eq!(metric(&rig, "pgsvc_dcs_up{cluster=\"pg-test\"}"), Some(0.0));
    assert_eq!(
        metric(&rig, "pgsvc_dcs_fallbacks_total{cluster=\"pg-test\"}"),
        Some(fallbacks + 1.0)
    );
    eprintln!("dcs: fallback {took:?} after the cut: {reason}");
    // REST checks alone: pg-test-1 is the only member passing /primary.
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-1:6432"));

    // A switchover while the agent is cut off, and etcd compacts its history past it.
    rig.set_patroni(0, "replica");
    rig.set_patroni(1, "primary");
    etcd.put(LEADER_KEY, "pg-test-2");
    let rev = etcd.put("/pg/pg-test/history", "switchover");
    etcd.root(async move |c| c.compact(rev, None).await.map(|_| ()));

    lb.exec(&["ip", "route", "del", "blackhole", &route]);
    let healed = Instant::now();
    let back = wait_fencing_on(&rig, "pg-test-2", Duration::from_secs(15));
    // The watch resumed where it stood before the cut; etcd had compacted that history away and
    // cancelled it with the compact revision; the agent logged it and read the key afresh.
    let compacted = rig.wait_for(
        "the compaction line in the log",
        Duration::from_secs(5),
        |r| {
            r.log_text()
                .contains("etcd compacted past the watched revision")
        },
    );
    let log = rig.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("etcd compacted past the watched revision"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("oldest kept: {rev}")),
        "the compaction line does not name the compact revision {rev}: {line}"
    );
    assert!(
        line.contains("re-reading the leader key"),
        "the compaction did not lead to a re-read: {line}"
    );
    assert_eq!(metric(&rig, "pgsvc_dcs_up{cluster=\"pg-test\"}"), Some(1.0));
    assert_eq!(
        rig.server_status("pg-test-primary", "pg-test-1")["fenced"],
        true
    );
    rig.wait_for("pg-test-2 active", Duration::from_secs(10), |r| {
        r.server_status("pg-test-primary", "pg-test-2")["active"] == true
    });
    assert_eq!(set(&rig.land(5433, 6)), one("pg-test-2:6432"));
    eprintln!(
        "dcs: cut {:?} in all; following pg-test-2 {back:?} after the heal, compaction logged {compacted:?} later",
        cut.elapsed() - healed.elapsed()
    );
}

#[test]
fn credentials_and_permissions_withdrawn_at_runtime_fall_back_with_the_reason() {
    if !can_run("credentials_and_permissions_withdrawn_at_runtime") {
        return;
    }
    let pki = Pki::new();
    let (rig, etcd) = rig_with_tls_etcd(&pki);

    // The cluster's password changes under the running watch (the agent still has the old one).
    etcd.root(async |c| {
        c.user_change_password("pg-test", "rotated")
            .await
            .map(|_| ())
    });
    let (took, reason) = wait_fallback(
        &rig,
        "the fallback after the password change",
        Duration::from_secs(15),
    );
    assert!(
        reason.contains("refused the credentials of user \"pg-test\""),
        "{reason}"
    );
    eprintln!("dcs: fallback {took:?} after the password changed: {reason}");
    // While falling back, REST checks alone: pg-test-1 is the only member passing /primary.
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-1:6432"));
    etcd.root(async |c| {
        c.user_change_password("pg-test", PASSWORD)
            .await
            .map(|_| ())
    });
    let back = wait_fencing_on(&rig, "pg-test-1", Duration::from_secs(15));
    eprintln!("dcs: following the key again {back:?} after the password was restored");

    // The role loses its read permission on the prefix under the running watch.
    etcd.root(async |c| {
        c.role_revoke_permission(
            "pg-test",
            PREFIX,
            Some(RoleRevokePermissionOptions::new().with_range_end(PREFIX_END)),
        )
        .await
        .map(|_| ())
    });
    let (took, reason) = wait_fallback(
        &rig,
        "the fallback after the revocation",
        Duration::from_secs(15),
    );
    assert!(reason.contains("permission denied"), "{reason}");
    eprintln!("dcs: fallback {took:?} after the permission was revoked: {reason}");
    etcd.root(async |c| {
        c.role_grant_permission(
            "pg-test",
            Permission::read_write(PREFIX).with_range_end(PREFIX_END),
        )
        .await
        .map(|_| ())
    });
    let back = wait_fencing_on(&rig, "pg-test-1", Duration::from_secs(15));
    eprintln!("dcs: following the key again {back:?} after the permission was granted back");
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-1:6432"));
}

#[test]
fn etcd_serving_a_certificate_of_another_ca_at_runtime_falls_back_with_the_reason() {
    if !can_run("etcd_serving_a_certificate_of_another_ca_at_runtime") {
        return;
    }
    let pki = Pki::new();
    let (rig, mut etcd) = rig_with_tls_etcd(&pki);
    // etcd comes back with a certificate the agent's CA did not sign.
    etcd.restart_with(&rig, &pki, "etcd-other");
    let (took, reason) = wait_fallback(
        &rig,
        "the fallback after the certificate changed",
        Duration::from_secs(15),
    );
    // The first reason may be the broken stream; the next attempt names the certificate.
    rig.wait_for(
        "the TLS reason in the status",
        Duration::from_secs(10),
        |r| {
            r.status()["dcs"][0]["fallback_reason"]
                .as_str()
                .is_some_and(|x| x.contains("TLS with etcd") && x.contains("UnknownIssuer"))
        },
    );
    let log = rig.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("fall back to REST checks alone") && l.contains("TLS with etcd")),
        "no fallback line naming TLS in the log:\n{log}"
    );
    assert!(
        log.contains("etcd refuses the watch: check the --etcd-* settings"),
        "no warning about the settings:\n{log}"
    );
    eprintln!("dcs: fallback {took:?} after etcd's certificate changed: {reason}");
    assert_eq!(set(&rig.land(5433, 4)), one("pg-test-1:6432"));
    // Its own certificate again: the agent follows the key.
    etcd.restart_with(&rig, &pki, "etcd");
    let back = wait_fencing_on(&rig, "pg-test-1", Duration::from_secs(30));
    eprintln!("dcs: following the key again {back:?} after etcd's certificate was restored");
}
