//! `cargo xtask demo [--non-interactive] [--lb-host]`: pgsvc in front of a real Patroni cluster,
//! through a switchover, narrated.
//!
//! Brings the sandbox up (etcd, three Patroni/PostgreSQL 15/pgbouncer nodes, an LB host and a client
//! host in network namespaces on 198.18.0.0/24) and starts pgsvc in Pigsty's default topology: `pgsvc
//! run` on every database node, the VIP on the leader's node (moved with the leader key by the
//! sandbox's vip-manager stand-in), each node serving every service of the cluster — its own member
//! translated in place, the others forwarded. `--lb-host` runs the second topology instead: one
//! `pgsvc run` on a separate LB host that holds the VIP. Then it shows `pgsvc status`, which member
//! answers each service port (on every node address and the VIP), runs a write load through 5433 and a read load through
//! 5434 (a new connection every 50 ms each), switches over while they run, and prints what the
//! clients saw: errors, the write-unavailability window against the bound the timers imply, which
//! node took writes before and after, where reads went. Interactive mode waits for Enter before each
//! switchover and stays up until Ctrl-C; `--non-interactive` runs one switchover and exits: 0 when
//! every check held, 1 when one failed, 130 when interrupted. SIGINT/SIGTERM always tear down
//! everything (pgsvc, probes, namespaces, processes, pins).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use pgsvc_tests::sandbox::{
    ADMIN, Attempt, LB_ADDR, MEMBERS, Member, Pgsvc, Probe, Sandbox, VIP, epoch, norm,
    pgsvc_binary, preflight,
};
use pgsvc_tests::write_errors::WriteTally;
use serde_json::Value;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

fn check_stop() -> anyhow::Result<()> {
    if stopped() {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Sleeps in small steps, returning early (with an error) on SIGINT/SIGTERM.
fn pause(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_stop()?;
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    check_stop()
}

/// Waits for Enter on stdin, checking for a signal every 200 ms. False when stdin is closed.
fn wait_enter() -> anyhow::Result<bool> {
    loop {
        check_stop()?;
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        let n = unsafe { libc::poll(&raw mut pfd, 1, 200) };
        if n > 0 {
            let mut line = String::new();
            let read = std::io::stdin().read_line(&mut line).unwrap_or(0);
            return Ok(read > 0);
        }
    }
}

struct Narrator {
    interactive: bool,
    start: Instant,
    step: usize,
    total: usize,
    step_start: Instant,
}

impl Narrator {
    fn step(&mut self, title: &str) {
        self.step += 1;
        self.step_start = Instant::now();
        println!(
            "\n[{:>5.1}s] ({}/{}) {title}",
            self.start.elapsed().as_secs_f64(),
            self.step,
            self.total
        );
        let _ = std::io::stdout().flush();
    }

    fn done(&self, what: &str) {
        println!(
            "         {what} ({:.1}s)",
            self.step_start.elapsed().as_secs_f64()
        );
    }
}

fn indent(text: &str) -> String {
    text.lines().fold(String::new(), |mut out, l| {
        let _ = writeln!(out, "    {l}");
        out
    })
}

fn member_label(addr: &str) -> String {
    Member::by_addr(addr).map_or_else(|| addr.to_owned(), |m| format!("{} ({addr})", m.name))
}

/// The live view: a thread printing one line per second with what the probes did in that second;
/// stopped and joined on drop (also when the round ends early with an error).
struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn ticker(write_file: PathBuf, read_file: PathBuf, t_ref: f64) -> Ticker {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let stop = flag;
        let mut from = epoch();
        while !stop.load(Ordering::SeqCst) && !stopped() {
            std::thread::sleep(Duration::from_secs(1));
            let to = epoch();
            let w = tally(&write_file, from, to);
            let r = tally(&read_file, from, to);
            println!(
                "         t{:+5.1}s  writes via :5433 {:>2} ok {:>2} failed {:<22} | reads via :5434 {:>2} ok {:>2} failed {}",
                to - t_ref,
                w.0,
                w.1,
                w.2,
                r.0,
                r.1,
                r.2
            );
            let _ = std::io::stdout().flush();
            from = to;
        }
    });
    Ticker {
        stop,
        handle: Some(handle),
    }
}

/// (ok, failed, nodes that answered) of a probe file's attempts that started in [from, to).
fn tally(file: &PathBuf, from: f64, to: f64) -> (usize, usize, String) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let (mut ok, mut failed) = (0, 0);
    let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let t0 = v["t0"].as_f64().unwrap_or(0.0);
        if t0 < from || t0 >= to {
            continue;
        }
        if v["ok"].as_bool() == Some(true) {
            ok += 1;
            *nodes
                .entry(
                    Member::by_addr(v["addr"].as_str().unwrap_or("?"))
                        .map_or("?", |m| m.name)
                        .to_owned(),
                )
                .or_default() += 1;
        } else {
            failed += 1;
        }
    }
    let nodes = if nodes.is_empty() {
        "-".to_owned()
    } else {
        nodes.keys().cloned().collect::<Vec<_>>().join(",")
    };
    (ok, failed, nodes)
}

/// Where reads went: node → count, for attempts in [from, to).
fn read_distribution(attempts: &[Attempt], from: f64, to: f64) -> (BTreeMap<String, usize>, usize) {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for a in attempts.iter().filter(|a| a.t0 >= from && a.t0 < to) {
        if a.ok {
            let who = a
                .addr
                .as_deref()
                .map_or_else(|| "?".to_owned(), member_label);
            let role = if a.in_recovery == Some(true) {
                "replica"
            } else {
                "primary"
            };
            *by.entry(format!("{who} as {role}")).or_default() += 1;
        } else {
            failed += 1;
        }
    }
    (by, failed)
}

/// One switchover under load; whether every check held.
fn switchover_round(
    sb: &Sandbox,
    agent: &Pgsvc,
    n: &mut Narrator,
    round: usize,
) -> anyhow::Result<bool> {
    n.step(
        "write load through 5433 and read load through 5434 (a new connection every 50 ms each)",
    );
    let leader = sb.leader().context("finding the primary")?;
    let mut writes: Probe = sb.probe(
        5433,
        &format!("demo-w{round}"),
        false,
        Duration::from_secs(300),
    )?;
    let mut reads: Probe = sb.probe(
        5434,
        &format!("demo-r{round}"),
        true,
        Duration::from_secs(300),
    )?;
    writes
        .wait_success_on(leader.addr, epoch() - 1.0, Duration::from_secs(30))
        .ok_or_else(|| {
            check_stop()
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("no write through 5433 committed in 30 s"))
        })?;
    n.done(&format!(
        "writes commit on {}",
        member_label(&leader.addr.to_string())
    ));
    let tick = ticker(writes.out.clone(), reads.out.clone(), epoch());
    if n.interactive {
        println!(
            "\n    Load is running. Press Enter to switch over (Ctrl-C tears everything down).\n"
        );
        if !wait_enter()? {
            pause(Duration::from_secs(3))?;
        }
    } else {
        pause(Duration::from_secs(3))?;
    }

    n.step("switchover (patronictl switchover --force) while the load runs");
    let f = sb.switchover()?;
    println!(
        "         {} -> {}: the new leader answered /primary {:.2}s after the command",
        f.old.name,
        f.new.name,
        f.promotion_s()
    );
    let resumed = writes.wait_success_on(f.new.addr, f.event_t, Duration::from_secs(40));
    check_stop()?;
    pause(Duration::from_secs(2))?;
    drop(tick);
    writes.stop();
    reads.stop();
    n.done("switchover finished, cluster healthy, load stopped");

    n.step("what the clients saw");
    let mut ok = true;
    let s = writes.summary()?;
    let ev = s["events"]
        .as_array()
        .and_then(|v| {
            v.iter().find(|e| {
                e["event"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("switchover"))
            })
        })
        .cloned()
        .unwrap_or(Value::Null);
    let bound = f.promotion_s() + norm::DETECT_UP + 1.0;
    println!(
        "    writes via {VIP}:5433   {} attempts, {} committed, {} failed",
        s["attempts"], s["ok"], s["failed"]
    );
    if let Some(errs) = ev["errors"].as_array() {
        for e in errs {
            println!("        {:>4} x {}", e[1], e[0].as_str().unwrap_or("?"));
        }
    }
    let writer = |k: &str| {
        ev[k]
            .as_array()
            .and_then(|v| v.first())
            .and_then(Value::as_str)
            .map_or_else(|| "-".to_owned(), member_label)
    };
    println!(
        "      writes served by     {} before, {} after",
        writer("writer_before"),
        writer("writer_after")
    );
    match ev["window_s"].as_f64() {
        Some(w) => {
            let within = w <= bound;
            ok &= within;
            println!(
                "      write-unavailability {w:.2}s (first failure {}s after the command, writes back {}s after it)",
                ev["first_fail_after_event_s"], ev["recovered_after_event_s"]
            );
            println!(
                "      bound                {bound:.2}s = promotion {:.2}s + downinter 2s + (rise-1)·fastinter 2s + 1s margin: {}",
                f.promotion_s(),
                if within { "within" } else { "EXCEEDED" }
            );
        }
        None => {
            ok = false;
            println!("      write-unavailability: writes did not recover while the probe ran");
        }
    }
    println!("      longest gap between commits {}s", ev["max_gap_s"]);
    // Failures after writes first came back on the new primary: the window above ends at the first
    // success after the LAST failure, so a later outage is named here rather than hidden.
    let attempts = writes.attempts();
    // Issue 11: attempts the demoting primary's pgbouncer answered, and writes on a non-leader.
    let tally = WriteTally::of(&attempts, f.event_t, f64::INFINITY);
    println!(
        "      failed by kind       {}",
        if tally.by_kind.is_empty() {
            "none".to_owned()
        } else {
            tally
                .by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!(
        "      demoting primary     {} attempt(s) answered \"server login has been failing\"",
        tally.login_failing()
    );
    println!(
        "      non-leader writes    {} ({} refused read-only, {} acknowledged in recovery, {} by a second writer)",
        tally.non_leader(),
        tally.by_kind.get("read_only").copied().unwrap_or(0),
        tally.acked_in_recovery,
        tally.acked_off_leader
    );
    let new_addr = f.new.addr.to_string();
    if let Some(back) = attempts
        .iter()
        .find(|a| a.ok && a.t0 > f.event_t && a.addr.as_deref() == Some(new_addr.as_str()))
    {
        let late: Vec<_> = attempts
            .iter()
            .filter(|a| !a.ok && a.t0 > back.t1)
            .collect();
        if !late.is_empty() {
            println!(
                "      after writes came back on {} ({:.2}s after the command), {} more failed:",
                f.new.name,
                back.t1 - f.event_t,
                late.len()
            );
            for a in late.iter().take(10) {
                println!(
                    "        t+{:.2}s..{:.2}s  {}",
                    a.t0 - f.event_t,
                    a.t1 - f.event_t,
                    a.err.as_deref().unwrap_or("?")
                );
            }
        }
    }
    let first_after = |needle: String| {
        agent
            .log_times(&needle)
            .into_iter()
            .find(|t| *t >= f.event_t)
    };
    let fmt_s = |t: Option<f64>, from: f64| {
        t.map_or_else(|| "?".to_owned(), |t| format!("{:.2}", t - from))
    };
    println!(
        "      pgsvc                {} DOWN in pg-test-primary {}s after the command, {} UP {}s after the promotion",
        f.old.name,
        fmt_s(
            first_after(format!("pg-test-primary/{} is DOWN", f.old.name)),
            f.event_t
        ),
        f.new.name,
        fmt_s(
            first_after(format!("pg-test-primary/{} is UP", f.new.name)),
            f.promoted_t
        ),
    );
    println!(
        "      pgsvc                {} asked to step down (its failover key) {}s after the command, fenced when its postgres stopped {}s after the command",
        f.old.name,
        fmt_s(first_after("asked to step down".to_owned()), f.event_t),
        fmt_s(first_after("the leader steps down".to_owned()), f.event_t)
    );
    if resumed.is_none() {
        ok = false;
        println!(
            "      FAILED: no write committed on {} within 40 s",
            f.new.name
        );
    }
    let violations = s["violations"].as_array().cloned().unwrap_or_default();
    if violations.is_empty() {
        println!(
            "      safety               every write was acknowledged by the primary of its moment"
        );
    } else {
        ok = false;
        for v in &violations {
            println!("      VIOLATION: {}", v.as_str().unwrap_or("?"));
        }
    }
    let v = &s["verify"];
    let lost = v["lost_count"].as_u64().unwrap_or(u64::MAX);
    let moved = v["addr_mismatch_count"].as_u64().unwrap_or(u64::MAX);
    ok &= lost == 0 && moved == 0;
    println!(
        "      durability           {} acknowledged rows: {lost} missing on the new primary, {moved} with another node's address",
        v["acknowledged"]
    );
    let attempts = reads.attempts();
    let (before, failed_before) = read_distribution(&attempts, 0.0, f.event_t);
    let (after, failed_after) = read_distribution(&attempts, f.event_t, f64::MAX);
    println!(
        "    reads via {VIP}:5434    {} attempts, {} failed",
        attempts.len(),
        failed_before + failed_after
    );
    for (label, dist, failed) in [
        ("before", &before, failed_before),
        ("after ", &after, failed_after),
    ] {
        let parts: Vec<String> = dist.iter().map(|(k, v)| format!("{v} by {k}")).collect();
        println!(
            "      {label} the switchover  {}{}",
            if parts.is_empty() {
                "-".to_owned()
            } else {
                parts.join(", ")
            },
            if failed > 0 {
                format!("; {failed} failed")
            } else {
                String::new()
            }
        );
    }
    println!(
        "      (5434's active server is the inventory's replica, pg-test-2, whatever its live role: \
         Patroni answers /read-only with 200 on a primary too, as HAProxy sees it)"
    );
    Ok(ok)
}

/// Where pgsvc runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// On every database node (Pigsty's default), the VIP on the leader's node.
    Node,
    /// On a separate LB host holding the VIP.
    LbHost,
}

fn run(interactive: bool, topology: Topology) -> anyhow::Result<bool> {
    let mut n = Narrator {
        interactive,
        start: Instant::now(),
        step: 0,
        total: 9,
        step_start: Instant::now(),
    };
    println!(
        "pgsvc demo: a real Patroni cluster (etcd, PostgreSQL 15, pgbouncer) with pgsvc in front"
    );
    println!("    pgsvc binary: {}", pgsvc_binary().display());

    n.step("sandbox up: namespaces on 198.18.0.0/24, etcd, pg-test-1..3 (Patroni, postgres, pgbouncer)");
    let mut sb = Sandbox::up_with_prefix("dm")?;
    check_stop()?;
    sb.set_cancel(&STOP);
    n.done(&format!("sandbox {} is up", sb.id));
    println!(
        "    hosts (namespaces {id}-*): cl 198.18.0.10 (clients) -- br0 -- {lb}\n    \
         etcd 198.18.0.5; pg-test-1 198.18.0.11 (primary), pg-test-2 198.18.0.12 (replica), \
         pg-test-3 198.18.0.13 (offline)",
        id = sb.id,
        lb = if topology == Topology::Node {
            format!("the three nodes (the VIP {VIP} on the leader's)")
        } else {
            format!("lb {LB_ADDR} + VIP {VIP}")
        }
    );
    let result = (|| -> anyhow::Result<bool> {
        if topology == Topology::Node {
            return node_resident(&mut sb, &mut n, interactive);
        }
        n.step("pgsvc run on the LB host, native XDP on eth0, with the sandbox's Pigsty inventory");
        println!(
            "    pgsvc --netns {} run --config sandbox/pigsty.yml --cluster pg-test --iface eth0 \\\n        \
             --vip {VIP}/24 --xdp-mode native --admin {ADMIN} --pin-dir {} \\\n        \
             --etcd-ca {dir}/ca.crt --etcd-cert {dir}/server.crt --etcd-key {dir}/server.key\n    \
             (the leader key from the sandbox's etcd: https, client certificate, RBAC user pg-test)",
            sb.ns("lb"),
            sb.pin_dir().display(),
            dir = sb.cert_dir("lb").display()
        );
        let agent = sb.start_pgsvc(&[])?;
        n.done(&format!("pgsvc (pid {}) is ready", agent.pid()));
        sb.wait_writes(5433, 60)?;

        n.step("pgsvc status");
        print!("{}", indent(&sb.pgsvc_status(false)?));

        n.step("one connection per service port: who answers");
        for (port, what) in [
            (5433, "primary  (pgbouncer)"),
            (5434, "replica  (pgbouncer)"),
            (5436, "default  (postgres) "),
            (5438, "offline  (postgres) "),
        ] {
            check_stop()?;
            let out = sb.psql(
                port,
                "select host(inet_server_addr()), pg_is_in_recovery(), host(inet_client_addr())",
            )?;
            let f: Vec<&str> = out.split_whitespace().collect();
            let (server, rec, client) = (
                f.first().copied().unwrap_or("?"),
                f.get(1).copied() == Some("t"),
                f.get(2).copied().unwrap_or("?"),
            );
            println!(
                "    {VIP}:{port} {what} -> {} {}, sees the client as {client}{}",
                member_label(server),
                if rec { "in recovery" } else { "read-write" },
                if client == server {
                    " (its local pgbouncer)"
                } else {
                    " (the LB)"
                }
            );
        }

        let mut all_ok = switchover_round(&sb, &agent, &mut n, 1)?;

        n.step("pgsvc status after the switchover");
        print!("{}", indent(&sb.pgsvc_status(false)?));

        if interactive {
            all_ok &= more_rounds(&sb, &agent, &mut n, ADMIN)?;
        }
        drop(agent);
        Ok(all_ok)
    })();

    n.step("teardown: pgsvc, probes, sandbox namespaces, processes and pins");
    if !matches!(result, Ok(true))
        && let Some(dest) = sb.keep_logs()
    {
        println!(
            "    logs, events and probe records kept in {}",
            dest.display()
        );
    }
    let id = sb.id.clone();
    let pins = sb.pin_dir().to_path_buf();
    drop(sb);
    let leftovers = leftovers(&id, &pins);
    if leftovers.is_empty() {
        n.done("nothing left behind");
    } else {
        println!("    LEFT BEHIND: {}", leftovers.join(", "));
    }
    let ok = result?;
    Ok(ok && leftovers.is_empty())
}

/// Interactive mode after the first round: a switchover under load per Enter, until stdin closes;
/// then up until a signal. Whether every check of those rounds held.
fn more_rounds(sb: &Sandbox, agent: &Pgsvc, n: &mut Narrator, admin: &str) -> anyhow::Result<bool> {
    println!(
        "\n    The sandbox stays up. From another shell (as root), for example:\n      \
         ip netns exec {cl} psql 'host={VIP} port=5433 user=dbuser_test password=DBUser.Test dbname=test'\n      \
         {bin} --netns {cl} status --admin {admin}\n      \
         PGSB_ID={id} sandbox/pgsandbox status\n    \
         Press Enter for another switchover under load; Ctrl-C tears everything down.",
        cl = sb.ns("cl"),
        bin = pgsvc_binary().display(),
        id = sb.id
    );
    let mut all_ok = true;
    let mut round = 1;
    while wait_enter()? {
        round += 1;
        n.total += 3;
        all_ok &= switchover_round(sb, agent, n, round)?;
        println!("\n    Press Enter for another switchover; Ctrl-C tears everything down.");
    }
    // stdin closed: stay up until a signal
    while !stopped() {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(all_ok)
}

/// The node-resident topology: pgsvc on every member's node, the VIP following the leader key.
fn node_resident(sb: &mut Sandbox, n: &mut Narrator, interactive: bool) -> anyhow::Result<bool> {
    n.step("pgsvc run on every node (Pigsty's default topology), native XDP on each eth0");
    println!(
        "    on each of pg-test-1..3: pgsvc --netns <node> run --config sandbox/pigsty.yml --cluster pg-test \\\n        \
         --iface eth0 --xdp-mode native --admin <node address>:9102 \\\n        \
         --etcd-ca <state>/<node>/cert/ca.crt --etcd-cert <...>/server.crt --etcd-key <...>/server.key\n    \
         and the VIP {VIP} on the leader's eth0, moved with Patroni's leader key (pgsandbox vip, as vip-manager does)"
    );
    sb.start_vip_follower()?;
    let mut agents = Vec::new();
    for m in MEMBERS {
        check_stop()?;
        agents.push(sb.start_node_pgsvc(m, &[])?);
    }
    n.done(&format!(
        "pgsvc is ready on all three nodes (pids {}); the VIP is on {}",
        agents
            .iter()
            .map(|a| a.pid().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        sb.vip_holder().map_or("nobody", |m| m.name)
    ));
    sb.wait_writes(5433, 60)?;

    n.step("pgsvc status on pg-test-2 (a replica's node: its 5433 forwards to the primary)");
    print!(
        "{}",
        indent(&sb.pgsvc_status_of(&format!("{}:9102", MEMBERS[1].addr), false)?)
    );

    n.step("one connection per service port on every node address and on the VIP: who answers");
    let leader = sb.leader().context("finding the primary")?;
    for host in MEMBERS.iter().map(|m| m.addr).chain([VIP]) {
        let receiver = if host == VIP {
            leader
        } else {
            MEMBERS
                .iter()
                .copied()
                .find(|m| m.addr == host)
                .unwrap_or(leader)
        };
        for (port, what) in [
            (5433, "primary (pgbouncer)"),
            (5434, "replica (pgbouncer)"),
            (5436, "default (postgres) "),
            (5438, "offline (postgres) "),
        ] {
            check_stop()?;
            let out = sb.psql_at(
                &host.to_string(),
                port,
                "select host(inet_server_addr()), pg_is_in_recovery(), host(inet_client_addr())",
            )?;
            let f: Vec<&str> = out.split_whitespace().collect();
            let (server, rec, client) = (
                f.first().copied().unwrap_or("?"),
                f.get(1).copied() == Some("t"),
                f.get(2).copied().unwrap_or("?"),
            );
            let path = if server == receiver.addr.to_string() {
                "its own member, translated in place"
            } else {
                "forwarded"
            };
            println!(
                "    {:<17} {what} -> {} {} ({path}), sees the client as {client}",
                format!("{host}:{port}"),
                member_label(server),
                if rec { "in recovery" } else { "read-write" },
            );
        }
    }

    // pg-test-3's pgsvc never serves the primary from its own node: its log times the primary
    // service's changes as any forwarding node sees them.
    let mut all_ok = switchover_round(sb, &agents[2], n, 1)?;

    n.step("pgsvc status on the new primary's node after the switchover");
    let now_leader = sb.leader().context("finding the primary")?;
    print!(
        "{}",
        indent(&sb.pgsvc_status_of(&format!("{}:9102", now_leader.addr), false)?)
    );
    println!(
        "    the VIP is on {}",
        sb.vip_holder().map_or("nobody", |m| m.name)
    );
    if interactive {
        all_ok &= more_rounds(sb, &agents[2], n, "198.18.0.12:9102")?;
    }
    drop(agents);
    Ok(all_ok)
}

/// Namespaces, pins and state of sandbox `id` that still exist.
fn leftovers(id: &str, pins: &std::path::Path) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    {
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = l.split_whitespace().next()
                && name.starts_with(&format!("{id}-"))
            {
                left.push(format!("namespace {name}"));
            }
        }
    }
    for p in [
        pins.to_path_buf(),
        PathBuf::from(format!("/sys/fs/bpf/{id}")),
        PathBuf::from(format!("/sys/fs/bpf/{id}-n1")),
        PathBuf::from(format!("/sys/fs/bpf/{id}-n2")),
        PathBuf::from(format!("/sys/fs/bpf/{id}-n3")),
        PathBuf::from(format!("/run/pgsvc-sandbox/{id}")),
    ] {
        if p.exists() {
            left.push(p.display().to_string());
        }
    }
    left
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut interactive = true;
    let mut topology = Topology::Node;
    for a in &args {
        match a.as_str() {
            "--non-interactive" => interactive = false,
            "--lb-host" => topology = Topology::LbHost,
            "-h" | "--help" => {
                println!(
                    "usage: demo [--non-interactive] [--lb-host]\n\nRuns pgsvc on every node of \
                     the real-cluster sandbox (with --lb-host: on a separate LB host) and switches \
                     over under load. Needs root and the sandbox's packages (cargo xtask setup)."
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("demo: unknown argument {other:?} (see --help)");
                return ExitCode::from(2);
            }
        }
    }
    install_handlers();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("demo: needs root (network namespaces, XDP); run `cargo xtask demo` as root");
        return ExitCode::from(2);
    }
    if let Err(why) = preflight() {
        eprintln!(
            "demo: the sandbox's packages are missing: {why}\n      run `cargo xtask setup` (as root)"
        );
        return ExitCode::FAILURE;
    }
    let t0 = Instant::now();
    match run(interactive, topology) {
        Ok(true) => {
            println!(
                "\ndemo: every check held ({:.0}s)",
                t0.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!(
                "\ndemo: FAILED: a check did not hold (see above) ({:.0}s)",
                t0.elapsed().as_secs_f64()
            );
            ExitCode::FAILURE
        }
        Err(e) if stopped() || e.downcast_ref::<Interrupted>().is_some() => {
            println!(
                "\ndemo: interrupted; everything was torn down ({:.0}s)",
                t0.elapsed().as_secs_f64()
            );
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("\ndemo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
