//! Real-cluster e2e tier: etcd + Patroni + PostgreSQL 15 + pgbouncer in network namespaces
//! (sandbox/pgsandbox), the real `pgsvc run` on the LB host with the sandbox's Pigsty inventory and
//! native XDP, clients on their own host talking to the VIP.
//!
//! - routing: `inet_server_addr()`, `pg_is_in_recovery()` and `inet_client_addr()` through each
//!   service port prove 5433 → the primary's pgbouncer, 5434 → the replica (the primary only while
//!   the replica is down), 5436 → the primary's postgres, 5438 → the offline instance;
//! - switchover and kill-primary under the writer probe (a new connection every 50 ms through 5433):
//!   no write acknowledged by a node that was not the primary, the demoted primary's sessions reset,
//!   writes resume on the new primary, and the write-unavailability window stays within the bound
//!   the timers imply.
//!
//! - the sandbox itself (issue 13): it comes up from a checkout the `postgres` user cannot enter, and
//!   a member that does not come up or a daemon that dies is named, with the end of its log.
//!
//! Each test brings up its own sandbox (unique PGSB_ID) and takes it down on any exit.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use pgsvc_tests::sandbox::{
    Failover, LB_ADDR, MEMBERS, Member, PrivateCheckout, Probe, Sandbox, VIP, epoch, norm,
    open_raw_session, require_sandbox,
};
use serde_json::Value;

/// Writes a line to the real stderr: libtest captures `eprintln!`, and the measured numbers belong
/// in `cargo xtask test`'s log even when the test passes.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "e2e: {line}");
}

/// The writer probe's wall-time limit of one attempt (writer_probe.py --timeout default).
const PROBE_TIMEOUT: f64 = 1.0;

const WHO: &str = "select host(inet_server_addr()), pg_is_in_recovery(), host(inet_client_addr())";

/// (server address, in recovery, client address as the server saw it) of one new connection.
fn who(sb: &Sandbox, port: u16) -> anyhow::Result<(String, bool, String)> {
    let out = sb.psql(port, WHO)?;
    let f: Vec<&str> = out.split_whitespace().collect();
    match f.as_slice() {
        [server, rec, client] => Ok(((*server).to_owned(), *rec == "t", (*client).to_owned())),
        _ => anyhow::bail!("unexpected answer {out:?} to {WHO:?}"),
    }
}

/// `n` new connections through `port`, each expected to answer exactly `want`.
fn assert_lands(sb: &Sandbox, port: u16, n: usize, want: (&str, bool, &str), what: &str) {
    for i in 0..n {
        let got =
            who(sb, port).unwrap_or_else(|e| panic!("{what}: connection {i} via {port}: {e}"));
        assert_eq!(
            (got.0.as_str(), got.1, got.2.as_str()),
            want,
            "{what}: connection {i} through {port} answered (server, in_recovery, client) = {got:?}"
        );
    }
    report(&format!(
        "{what}: {n}/{n} connections via :{port} -> server {} in_recovery={} (client seen as {})",
        want.0, want.1, want.2
    ));
}

/// Polls `port` until a new connection lands on `addr`; the time it took.
fn wait_lands_on(sb: &Sandbox, port: u16, addr: &str, timeout: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        let out = sb.psql_within(&VIP.to_string(), port, WHO, 1.5);
        if out.is_ok_and(|o| o.split_whitespace().next() == Some(addr)) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn agent_server<'a>(status: &'a Value, service: &str, server: &str) -> &'a Value {
    status["services"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["name"] == service))
        .and_then(|s| s["servers"].as_array())
        .and_then(|v| v.iter().find(|s| s["name"] == server))
        .unwrap_or_else(|| panic!("{service}/{server} missing from pgsvc's /status: {status}"))
}

fn service_rst(sb: &Sandbox, service: &str) -> u64 {
    let st = agent_status(sb);
    st["services"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["name"] == service))
        .and_then(|s| s["rst_sent"].as_u64())
        .unwrap_or_else(|| panic!("{service} rst_sent missing from pgsvc's /status: {st}"))
}

fn agent_status(sb: &Sandbox) -> Value {
    let (code, body) = sb.admin_get("/status").expect("GET /status");
    assert_eq!(code, 200, "GET /status: {body}");
    serde_json::from_str(&body).expect("status JSON")
}

#[test]
fn e2e_services_route_by_role_with_backup_fallback() {
    if !require_sandbox("e2e_services_route_by_role_with_backup_fallback") {
        return;
    }
    let mut sb = Sandbox::up().expect("sandbox up");
    let agent = sb.start_pgsvc(&[]).expect("pgsvc run");
    sb.wait_writes(5433, 60)
        .unwrap_or_else(|e| panic!("{e}\npgsvc log:\n{}", agent.log_text()));
    let [p, r, o] = MEMBERS;
    assert_eq!(
        sb.leader().expect("leader"),
        p,
        "a fresh sandbox has pg-test-1 as primary"
    );
    let (p_ip, r_ip, o_ip, lb) = (
        p.addr.to_string(),
        r.addr.to_string(),
        o.addr.to_string(),
        LB_ADDR.to_string(),
    );

    // Through pgbouncer the server sees pgbouncer's own TCP connection from the node itself; to
    // postgres directly it sees the load balancer's SNAT address.
    assert_lands(
        &sb,
        5433,
        6,
        (&p_ip, false, &p_ip),
        "primary -> primary's pgbouncer",
    );
    assert_lands(
        &sb,
        5434,
        6,
        (&r_ip, true, &r_ip),
        "replica -> replica's pgbouncer",
    );
    assert_lands(
        &sb,
        5436,
        6,
        (&p_ip, false, &lb),
        "default -> primary's postgres",
    );
    assert_lands(
        &sb,
        5438,
        6,
        (&o_ip, true, &lb),
        "offline -> offline instance's postgres",
    );

    // The replica down: 5434 falls back to its first backup, the primary, within the time the
    // health checks need to mark it DOWN (inter + (fall-1)·fastinter) plus a second of margin.
    sb.stop(r).expect("pgsandbox stop pg-test-2");
    let stopped_t = sb
        .events()
        .iter()
        .rev()
        .find(|(_, what)| what == "stop pg-test-2")
        .map(|(t, _)| *t)
        .expect("the stop event in events.log");
    let bound = norm::INTER + (norm::FALL - 1.0) * norm::FASTINTER + 1.0;
    wait_lands_on(&sb, 5434, &p_ip, Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "5434 never fell back to the primary with pg-test-2 down; pgsvc log:\n{}",
            agent.log_text()
        )
    });
    // (the poll itself costs up to ~0.3 s: one failed psql plus the pause)
    let took = epoch() - stopped_t;
    report(&format!(
        "pg-test-2 stopped: 5434 served by the primary {took:.1}s later (bound {bound:.0}s + 0.5s polling)"
    ));
    assert!(
        took <= bound + 0.5,
        "fallback took {took:.2}s, bound {bound}s"
    );
    assert_lands(
        &sb,
        5434,
        6,
        (&p_ip, false, &p_ip),
        "replica down -> primary's pgbouncer",
    );
    assert_lands(
        &sb,
        5433,
        3,
        (&p_ip, false, &p_ip),
        "replica down: primary unchanged",
    );
    assert_lands(
        &sb,
        5438,
        3,
        (&o_ip, true, &lb),
        "replica down: offline unchanged",
    );
    let st = agent_status(&sb);
    assert_eq!(
        agent_server(&st, "pg-test-replica", "pg-test-2")["state"],
        "DOWN"
    );

    // Back: 5434 returns to the replica.
    sb.start(r).expect("pgsandbox start pg-test-2");
    wait_lands_on(&sb, 5434, &r_ip, Duration::from_secs(30)).unwrap_or_else(|| {
        panic!(
            "5434 never returned to pg-test-2; pgsvc log:\n{}",
            agent.log_text()
        )
    });
    assert_lands(
        &sb,
        5434,
        6,
        (&r_ip, true, &r_ip),
        "replica back -> replica's pgbouncer",
    );
    let log = agent.log_text();
    assert!(log.contains("pg-test-replica/pg-test-2 is DOWN"), "{log}");
    assert!(log.contains("pg-test-replica/pg-test-2 is UP"), "{log}");
}

/// What one failover under the writer probe looked like, after the common checks.
struct Observed {
    window: f64,
    recovered_t: f64,
}

/// Runs `failover` under the writer probe through 5433 with a raw session to the old primary open,
/// and checks what every failover must satisfy: the session reset, writes resumed on the new
/// primary, no write acknowledged by a node that was not the primary, none lost.
fn failover_under_probe(
    sb: &Sandbox,
    agent: &pgsvc_tests::sandbox::Pgsvc,
    name: &str,
    failover: impl FnOnce(&Sandbox) -> anyhow::Result<Failover>,
    expect_no_loss: bool,
) -> (Failover, Observed) {
    let old = sb.leader().expect("leader");
    let mut raw = open_raw_session(sb, 5433).expect("raw session through 5433");
    // Counted before the event: pgsvc resets the old primary's sessions the moment it marks the
    // server down or fenced, long before the test looks at the session.
    let rst_before = service_rst(sb, "pg-test-primary");
    let mut probe: Probe = sb
        .probe(5433, name, false, Duration::from_secs(170))
        .expect("writer probe");
    probe
        .wait_success_on(old.addr, epoch() - 1.0, Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "no write through 5433 before the {name}: {:?}",
                probe.attempts().last()
            )
        });
    std::thread::sleep(Duration::from_secs(1));

    let f =
        failover(sb).unwrap_or_else(|e| panic!("{name}: {e:#}\npgsvc log:\n{}", agent.log_text()));
    assert_eq!(f.old, old);
    report(&format!(
        "{name}: {} -> {}, new leader answered /primary {:.2}s after the event",
        f.old.name,
        f.new.name,
        f.promotion_s()
    ));
    let resumed = probe
        .wait_success_on(f.new.addr, f.event_t, Duration::from_secs(40))
        .unwrap_or_else(|| {
            panic!(
                "{name}: writes never resumed on {}; pgsvc log:\n{}",
                f.new.name,
                agent.log_text()
            )
        });
    std::thread::sleep(Duration::from_secs(2));
    probe.stop();

    // The session opened before the event was reset by the load balancer: the reset happens and
    // pgsvc's RST counter of the primary service counts it (its snapshot refreshes about every second).
    check_reset(&mut raw, name);
    let t0 = Instant::now();
    let mut rst_after = service_rst(sb, "pg-test-primary");
    while rst_after <= rst_before && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(250));
        rst_after = service_rst(sb, "pg-test-primary");
    }
    report(&format!(
        "{name}: pg-test-primary rst_sent {rst_before} -> {rst_after} (the reset came from pgsvc)"
    ));
    assert!(
        rst_after > rst_before,
        "{name}: pgsvc did not count the reset of the old session (rst_sent {rst_before} -> {rst_after})"
    );

    let attempts = probe.attempts();
    let s = probe.summary().expect("probe summary");
    report(&format!(
        "{name}: {} attempts, {} ok, {} failed; writers {}",
        s["attempts"],
        s["ok"],
        s["failed"],
        s["writers"]
            .as_array()
            .map(|w| w
                .iter()
                .map(|x| format!("{}×{}", x["addr"].as_str().unwrap_or("?"), x["writes"]))
                .collect::<Vec<_>>()
                .join(" then "))
            .unwrap_or_default()
    ));
    let violations = s["violations"].as_array().cloned().unwrap_or_default();
    assert!(
        violations.is_empty(),
        "{name}: safety violations: {violations:?}"
    );
    f.assert_writes_only_on_the_primary(name, &attempts);
    let (old_ip, new_ip) = (f.old.addr.to_string(), f.new.addr.to_string());
    let verify = &s["verify"];
    report(&format!(
        "{name}: verify: {} acknowledged rows, {} lost, {} on another node",
        verify["acknowledged"], verify["lost_count"], verify["addr_mismatch_count"]
    ));
    assert_eq!(verify["addr_mismatch_count"], 0, "{name}: {verify}");
    if expect_no_loss {
        assert_eq!(
            verify["lost_count"], 0,
            "{name}: acknowledged writes lost: {verify}"
        );
    }
    let ev = s["events"]
        .as_array()
        .and_then(|v| {
            v.iter()
                .find(|e| e["event"].as_str().is_some_and(|w| w.starts_with(f.kind)))
        })
        .unwrap_or_else(|| panic!("{name}: no {} event in the summary: {s}", f.kind))
        .clone();
    assert_eq!(
        ev["writer_before"],
        serde_json::json!([old_ip]),
        "{name}: {ev}"
    );
    assert_eq!(
        ev["writer_after"],
        serde_json::json!([new_ip]),
        "{name}: {ev}"
    );
    let window = ev["window_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: writes did not recover inside the probe: {ev}"));
    let recovered_t = ev["recovered_after_event_s"]
        .as_f64()
        .map_or(resumed, |r| f.event_t + r);
    report(&format!(
        "{name}: write-unavailability window {window:.2}s (first failure {}s after the event, \
         writes back {:.2}s after it, {:.2}s after the promotion); max gap {}s; errors {}",
        ev["first_fail_after_event_s"],
        recovered_t - f.event_t,
        recovered_t - f.promoted_t,
        ev["max_gap_s"],
        ev["errors"]
    ));
    // pgsvc's own detection, from its log: the new leader UP in the primary service no earlier than
    // its promotion and at most downinter + (rise-1)·fastinter (+1 s margin) after it.
    let up_t = agent
        .log_times(&format!("pg-test-primary/{} is UP", f.new.name))
        .into_iter()
        .find(|t| *t >= f.event_t)
        .unwrap_or_else(|| {
            panic!(
                "{name}: pgsvc never logged {} UP in pg-test-primary:\n{}",
                f.new.name,
                agent.log_text()
            )
        });
    let detect = up_t - f.promoted_t;
    let detect_bound = norm::DETECT_UP + 1.0;
    // The test sees the promotion by polling /primary every 100 ms; with the leader key (`--dcs`,
    // on by default where the inventory names etcd) pgsvc may have the new leader UP before that
    // poll does: up to one poll interval and a request early is not "before the promotion".
    let detect_floor = -0.25;
    report(&format!(
        "{name}: pgsvc marked {} UP in pg-test-primary {detect:.2}s after it answered /primary \
         (bound downinter 2s + (rise-1)·fastinter 2s + 1s = {detect_bound:.0}s)",
        f.new.name
    ));
    assert!(
        (detect_floor..=detect_bound).contains(&detect),
        "{name}: pgsvc marked the new leader UP {detect:.2}s after its promotion (allowed {detect_floor}..{detect_bound}s)"
    );
    (
        f,
        Observed {
            window,
            recovered_t,
        },
    )
}

/// A session to the demoted primary must be gone with a reset: any byte sent draws a RST (or the
/// RST already arrived). A live session would answer (pgbouncer rejects the bytes with an error
/// message) or time out.
fn check_reset(raw: &mut TcpStream, name: &str) {
    raw.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("read timeout");
    if let Err(e) = raw.write_all(&[0, 0, 0, 8, 0, 0, 0, 0]) {
        assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "{name}: writing to the old session failed with {e}, not a reset"
        );
        report(&format!(
            "{name}: the old primary's session was reset ({e})"
        ));
        return;
    }
    let mut buf = [0u8; 256];
    match raw.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {
            report(&format!(
                "{name}: the old primary's session was reset ({e})"
            ));
        }
        other => panic!(
            "{name}: the session opened through 5433 before the event was not reset: read gave {:?}",
            other.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        ),
    }
}

#[test]
fn e2e_switchover_under_writer_probe() {
    if !require_sandbox("e2e_switchover_under_writer_probe") {
        return;
    }
    let mut sb = Sandbox::up().expect("sandbox up");
    let agent = sb.start_pgsvc(&[]).expect("pgsvc run");
    sb.wait_writes(5433, 60)
        .unwrap_or_else(|e| panic!("{e}\npgsvc log:\n{}", agent.log_text()));
    let (f, seen) = failover_under_probe(&sb, &agent, "switchover", Sandbox::switchover, true);
    // Bound: Patroni's promotion (measured) + what pgsvc needs to have the new leader UP in the
    // primary service after it answers /primary (downinter + (rise-1)·fastinter) + 1 s margin.
    let bound = f.promotion_s() + norm::DETECT_UP + 1.0;
    report(&format!(
        "switchover: window {:.2}s <= bound {bound:.2}s (promotion {:.2}s + downinter 2s + (rise-1)·fastinter 2s + 1s)",
        seen.window,
        f.promotion_s()
    ));
    assert!(
        seen.window <= bound,
        "switchover window {:.2}s exceeds {bound:.2}s; pgsvc log:\n{}",
        seen.window,
        agent.log_text()
    );
    let log = agent.log_text();
    assert!(log.contains("pg-test-primary/pg-test-1 is DOWN"), "{log}");
    assert!(log.contains("pg-test-primary/pg-test-2 is UP"), "{log}");
    // The demoted primary is a replica now: 5433 and 5436 lead to the new one.
    let new_ip = f.new.addr.to_string();
    assert_lands(
        &sb,
        5433,
        3,
        (&new_ip, false, &new_ip),
        "after switchover: primary",
    );
    assert_lands(
        &sb,
        5436,
        3,
        (&new_ip, false, &LB_ADDR.to_string()),
        "after switchover: default",
    );
}

#[test]
fn e2e_kill_primary_under_writer_probe() {
    if !require_sandbox("e2e_kill_primary_under_writer_probe") {
        return;
    }
    let mut sb = Sandbox::up().expect("sandbox up");
    let agent = sb.start_pgsvc(&[]).expect("pgsvc run");
    sb.wait_writes(5433, 60)
        .unwrap_or_else(|e| panic!("{e}\npgsvc log:\n{}", agent.log_text()));
    // Asynchronous replication may lose the killed primary's last acknowledged commits (a Patroni
    // property, not the load balancer's): lost rows are reported, not asserted.
    let (f, seen) = failover_under_probe(&sb, &agent, "kill-primary", Sandbox::kill_primary, false);
    // Asserted bounds:
    // 1. the whole window: the leader key expires at most ttl after the kill (it was refreshed
    //    before), the replica notices it at its next HA loop (≤ loop_wait) and promotes, pgsvc has
    //    it UP within downinter + (rise-1)·fastinter, plus 1 s: 30 + 5 + 4 + 1 = 40 s;
    // 2. what clients see of pgsvc's share: from the new leader answering /primary (measured) to
    //    the first write it took, at most downinter + (rise-1)·fastinter, plus one probe attempt
    //    (its timeout, 1 s: pgsvc refuses SYNs with a RST while the service has no server, so an
    //    attempt normally ends at once), plus 1 s = 6 s. (pgsvc's
    //    detection alone, from its log, is held to 5 s for every failover above.)
    let total_bound = norm::TTL + norm::LOOP_WAIT + norm::DETECT_UP + 1.0;
    let lb_share = seen.recovered_t - f.promoted_t;
    let lb_bound = norm::DETECT_UP + PROBE_TIMEOUT + 1.0;
    report(&format!(
        "kill-primary: window {:.2}s <= {total_bound:.0}s (ttl 30 + loop_wait 5 + downinter 2 + (rise-1)·fastinter 2 + 1); \
         writes back {lb_share:.2}s after the promotion <= {lb_bound:.0}s (downinter 2 + (rise-1)·fastinter 2 + probe timeout 1 + 1)",
        seen.window
    ));
    assert!(
        seen.window <= total_bound,
        "kill-primary window {:.2}s exceeds {total_bound}s; pgsvc log:\n{}",
        seen.window,
        agent.log_text()
    );
    assert!(
        lb_share <= lb_bound,
        "writes came back {lb_share:.2}s after the promotion (bound {lb_bound}s); pgsvc log:\n{}",
        agent.log_text()
    );
    let log = agent.log_text();
    assert!(
        log.contains(&format!("pg-test-primary/{} is DOWN", f.old.name)),
        "{log}"
    );
    assert!(
        log.contains(&format!("pg-test-primary/{} is UP", f.new.name)),
        "{log}"
    );

    // Revive: the old primary rejoins as a replica; the services stay on the new primary.
    let t0 = Instant::now();
    sb.revive().expect("pgsandbox revive");
    report(&format!(
        "kill-primary: {} revived as a replica in {:.1}s",
        f.old.name,
        t0.elapsed().as_secs_f64()
    ));
    assert_eq!(sb.leader().expect("leader"), f.new);
    let status = sb.status_json().expect("pgsandbox status");
    let old_row = status
        .as_array()
        .and_then(|v| v.iter().find(|m| m["name"] == f.old.name))
        .unwrap_or_else(|| panic!("{} missing from {status}", f.old.name));
    assert_eq!(old_row["role"], "replica", "{status}");
    let new_ip = f.new.addr.to_string();
    assert_lands(
        &sb,
        5433,
        3,
        (&new_ip, false, &new_ip),
        "after revive: primary",
    );
    assert_lands(
        &sb,
        5436,
        3,
        (&new_ip, false, &LB_ADDR.to_string()),
        "after revive: default",
    );
    let old_member: Member = f.old;
    let st = agent_status(&sb);
    assert_eq!(
        agent_server(&st, "pg-test-primary", old_member.name)["state"],
        "DOWN",
        "the revived replica must stay out of the primary service"
    );
}

/// Issue 13: a checkout the `postgres` user cannot enter (a clone under /root, or in a 0700
/// `mktemp -d` folder) must not matter. The sandbox comes up from such a checkout, run from inside
/// it, and none of its processes has its working directory, its command line or an open file under
/// the checkout.
#[test]
fn e2e_sandbox_runs_from_a_checkout_postgres_cannot_enter() {
    if !require_sandbox("e2e_sandbox_runs_from_a_checkout_postgres_cannot_enter") {
        return;
    }
    // declared first: dropped after the sandbox, whose `down` runs the copied script
    let private = PrivateCheckout::new().expect("private checkout");
    // the premise: the daemons' user cannot enter it
    let enters = std::process::Command::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "test",
            "-x",
        ])
        .arg(&private.root)
        .current_dir("/")
        .status()
        .expect("running setpriv");
    assert!(
        !enters.success(),
        "user postgres can enter {}: the test would prove nothing",
        private.root.display()
    );
    let t0 = Instant::now();
    let sb = Sandbox::up_from("pc", private.pgsandbox(), Some(private.checkout.clone()))
        .unwrap_or_else(|e| panic!("sandbox up from {}: {e:#}", private.checkout.display()));
    report(&format!(
        "private checkout: sandbox {} up from {} (mode 0700) in {:.1}s",
        sb.id,
        private.root.display(),
        t0.elapsed().as_secs_f64()
    ));
    let pids = sb.pids();
    assert!(
        pids.len() >= 10,
        "expected etcd, 3 Patroni, 3 postgres clusters and 3 pgbouncers, found pids {pids:?}"
    );
    let under = |p: &std::path::Path| p.starts_with(&private.root);
    let mut offending = Vec::new();
    for pid in &pids {
        let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if let Ok(cwd) = std::fs::read_link(proc_dir.join("cwd"))
            && under(&cwd)
        {
            offending.push(format!("{comm}[{pid}] cwd {}", cwd.display()));
        }
        let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
        let root = private.root.to_string_lossy().into_owned();
        if String::from_utf8_lossy(&cmdline).contains(&root) {
            offending.push(format!("{comm}[{pid}] command line mentions {root}"));
        }
        for fd in std::fs::read_dir(proc_dir.join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = std::fs::read_link(fd.path())
                && under(&target)
            {
                offending.push(format!("{comm}[{pid}] has {} open", target.display()));
            }
        }
    }
    report(&format!(
        "private checkout: {} processes in the sandbox's namespaces, {} use the checkout",
        pids.len(),
        offending.len()
    ));
    assert!(
        offending.is_empty(),
        "sandbox processes depend on the checkout: {offending:?}"
    );
    // The cluster works as usual: a write through the primary's pgbouncer.
    let out = sb
        .psql_at("198.18.0.11", 6432, "select pg_is_in_recovery()")
        .expect("psql through pg-test-1's pgbouncer");
    assert_eq!(out, "f");
}

/// Issue 13: when a member does not come up, or a daemon dies, pgsandbox names it and quotes the end
/// of its own log (for a node, postgres's too) instead of only saying "timed out".
#[test]
fn e2e_sandbox_failures_name_the_daemon_and_quote_its_log() {
    if !require_sandbox("e2e_sandbox_failures_name_the_daemon_and_quote_its_log") {
        return;
    }
    let sb = Sandbox::up().expect("sandbox up");
    let replica = MEMBERS[1];
    let run_fail = |args: &[&str]| -> String {
        let out = sb
            .command(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running pgsandbox");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "pgsandbox {args:?} should have failed:\n{text}"
        );
        text
    };

    // 1. postgres of pg-test-2 cannot start (a preload library that does not exist): Patroni keeps
    //    running, the member never runs, the wait times out.
    sb.stop(replica).expect("stop pg-test-2");
    let marker = format!("pgsb_planted_{}", std::process::id());
    let auto_conf = sb.state.join("n2/data/postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto_conf).expect("postgresql.auto.conf");
    conf.push_str(&format!("shared_preload_libraries = '{marker}'\n"));
    std::fs::write(&auto_conf, conf).expect("writing postgresql.auto.conf");
    let text = run_fail(&["start", replica.name, "--timeout", "20"]);
    report(&format!(
        "planted postgres failure: pgsandbox said {:?}",
        pgsvc_tests::sandbox::first_cause(&text)
    ));
    assert!(
        text.contains("timed out after 20s waiting for pg-test-2 to run again"),
        "{text}"
    );
    assert!(
        text.contains("patroni-n2 (pg-test-2's Patroni) runs"),
        "the daemon is not named:\n{text}"
    );
    assert!(
        text.contains("postgres of pg-test-2"),
        "postgres's log is not quoted:\n{text}"
    );
    let quoted = text
        .lines()
        .filter(|l| l.starts_with("    | ") && l.contains(&marker))
        .count();
    assert!(
        quoted > 0,
        "postgres's complaint about {marker} is not quoted:\n{text}"
    );

    // 2. pg-test-2's Patroni dies at start (its configuration is not YAML): named at once, with
    //    the last lines of its log.
    sb.stop(replica).expect("stop pg-test-2 again");
    let conf = sb.state.join("n2/patroni.yml");
    std::fs::write(&conf, "scope: [unclosed\n").expect("writing patroni.yml");
    let t0 = Instant::now();
    let text = run_fail(&["start", replica.name, "--timeout", "60"]);
    let took = t0.elapsed();
    report(&format!(
        "planted Patroni death: pgsandbox gave up after {:.1}s and said {:?}",
        took.as_secs_f64(),
        pgsvc_tests::sandbox::first_cause(&text)
    ));
    assert!(
        text.contains(
            "patroni-n2 (pg-test-2's Patroni) died while waiting for pg-test-2 to run again"
        ),
        "{text}"
    );
    let log = std::fs::read_to_string(sb.state.join("logs/patroni-n2.log")).expect("Patroni log");
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("Patroni logged why it stopped");
    assert!(
        text.contains(&format!("    | {last}")),
        "the end of patroni-n2's log ({last:?}) is not quoted:\n{text}"
    );
    assert!(
        took < Duration::from_secs(30),
        "a dead daemon must end the wait at once, not at its timeout ({took:?})"
    );
}
