//! Real-cluster e2e tier, node-resident topology (Pigsty's default): no LB host — `pgsvc run` in every
//! member's own namespace on its eth0, the VIP moved with the leader key by the sandbox's vip-manager
//! stand-in (`pgsandbox vip`), clients on their own host dialling each node's address and the VIP.
//!
//! - routing: every service port on every node address and on the VIP lands on the right member,
//!   the node's own member (translated in place, the client's address kept) or a remote one (full
//!   NAT from the node's address), proven by `inet_server_addr()`, `pg_is_in_recovery()` and
//!   `inet_client_addr()`;
//! - switchover and kill-primary under two writer probes (a new connection every 50 ms through 5433),
//!   one through the VIP and one through the offline member's fixed address (always a remote path):
//!   no write acknowledged by a node that was not the primary, no acknowledged row lost, windows
//!   reported.
//!
//! Each test brings up its own sandbox (unique PGSB_ID) and takes it down on any exit.

use std::{io::Write as _, net::Ipv4Addr, time::Duration};

use pgsvc_tests::sandbox::{
    CLIENT_ADDR, Failover, MEMBERS, Member, Pgsvc, Probe, Sandbox, VIP, epoch, require_sandbox,
};
use serde_json::Value;

fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "e2e-node: {line}");
}

const WHO: &str = "select host(inet_server_addr()), pg_is_in_recovery(), host(inet_client_addr())";

/// pgsvc on all three members and the VIP on the leader; the agents (stopped on drop).
fn node_resident(sb: &mut Sandbox) -> Vec<Pgsvc> {
    sb.start_vip_follower().expect("pgsandbox vip start");
    let agents: Vec<Pgsvc> = MEMBERS
        .iter()
        .map(|m| {
            sb.start_node_pgsvc(*m, &[])
                .unwrap_or_else(|e| panic!("pgsvc on {}: {e:#}", m.name))
        })
        .collect();
    for host in MEMBERS.iter().map(|m| m.addr).chain([VIP]) {
        sb.wait_writes_at(host, 5433, 60)
            .unwrap_or_else(|e| panic!("writes via {host}:5433: {e:#}\n{}", logs(&agents)));
    }
    agents
}

fn logs(agents: &[Pgsvc]) -> String {
    agents
        .iter()
        .zip(MEMBERS)
        .map(|(a, m)| format!("--- pgsvc on {}:\n{}", m.name, a.log_text()))
        .collect()
}

/// (server, in recovery, client as the server saw it) of one new connection to host:port.
fn who(sb: &Sandbox, host: Ipv4Addr, port: u16) -> anyhow::Result<(String, bool, String)> {
    let out = sb.psql_at(&host.to_string(), port, WHO)?;
    let f: Vec<&str> = out.split_whitespace().collect();
    match f.as_slice() {
        [server, rec, client] => Ok(((*server).to_owned(), *rec == "t", (*client).to_owned())),
        _ => anyhow::bail!("unexpected answer {out:?} to {WHO:?}"),
    }
}

/// The node that receives a connection to `host` (the VIP is on the leader's node).
fn receiver(host: Ipv4Addr, leader: Member) -> Member {
    if host == VIP {
        leader
    } else {
        MEMBERS
            .iter()
            .copied()
            .find(|m| m.addr == host)
            .expect("a member address")
    }
}

/// What a connection to `host:port` must answer: the serving member, whether it is in recovery,
/// and the client address postgres sees — through pgbouncer (5433/5434) the serving node's own
/// pgbouncer; direct to postgres (5436/5438) the client itself when the receiving node serves it
/// (translated in place), else the receiving node's address (full NAT).
fn expected(host: Ipv4Addr, port: u16, leader: Member) -> (String, bool, String) {
    let replica = MEMBERS[1];
    let offline = MEMBERS[2];
    let (server, in_recovery) = match port {
        5433 | 5436 => (leader, false),
        // the inventory's replica; the primary only while it is down
        5434 => (replica, replica != leader),
        5438 => (offline, true),
        _ => unreachable!("no such service port {port}"),
    };
    let client = if matches!(port, 5433 | 5434) {
        server.addr
    } else if receiver(host, leader) == server {
        CLIENT_ADDR
    } else {
        receiver(host, leader).addr
    };
    (server.addr.to_string(), in_recovery, client.to_string())
}

fn check_matrix(sb: &Sandbox, agents: &[Pgsvc], what: &str) {
    let leader = sb.leader().expect("leader");
    let mut lines = Vec::new();
    for host in MEMBERS.iter().map(|m| m.addr).chain([VIP]) {
        for port in [5433, 5434, 5436, 5438] {
            let want = expected(host, port, leader);
            for i in 0..3 {
                let got = who(sb, host, port).unwrap_or_else(|e| {
                    panic!(
                        "{what}: connection {i} via {host}:{port}: {e:#}\n{}",
                        logs(agents)
                    )
                });
                assert_eq!(
                    got, want,
                    "{what}: connection {i} via {host}:{port} answered (server, in_recovery, client) = {got:?}"
                );
            }
            lines.push(format!(
                "{host}:{port} -> {} (client seen as {})",
                want.0, want.2
            ));
        }
    }
    report(&format!(
        "{what} (leader {}): {}",
        leader.name,
        lines.join("; ")
    ));
}

#[test]
fn e2e_node_resident_routes_every_service_on_every_node() {
    if !require_sandbox("e2e_node_resident_routes_every_service_on_every_node") {
        return;
    }
    let mut sb = Sandbox::up().expect("sandbox up");
    let agents = node_resident(&mut sb);
    assert_eq!(
        sb.vip_holder(),
        Some(sb.leader().expect("leader")),
        "the VIP is on the leader's node"
    );
    check_matrix(&sb, &agents, "node-resident");
    // every node counted the flows it carried (new connections, local and remote members alike);
    // /metrics is a snapshot the agent refreshes periodically: poll it for a while
    for m in &MEMBERS {
        let t0 = std::time::Instant::now();
        let (total, body) = loop {
            let (code, body) = sb.admin_get_at(m.addr, "/metrics").expect("GET /metrics");
            assert_eq!(code, 200, "{}: {body}", m.name);
            let total: f64 = body
                .lines()
                .filter(|l| l.starts_with("haproxy_server_sessions_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if total >= 12.0 || t0.elapsed() > Duration::from_secs(15) {
                break (total, body);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        report(&format!(
            "{}: haproxy_server_sessions_total sums to {total} ({:.1}s after the matrix)",
            m.name,
            t0.elapsed().as_secs_f64()
        ));
        assert!(
            total >= 12.0,
            "{}: {total} sessions counted for its 12+ connections:\n{body}",
            m.name
        );
    }
    drop(agents);
}

/// Failover under two writer probes through 5433: via the VIP and via pg-test-3's own address.
/// With `expect_no_loss` every acknowledged row must be on the new primary; without it (a killed
/// primary: asynchronous replication may lose its last commits, a Patroni property) lost rows are
/// reported.
fn failover_under_probes(
    kind: &str,
    failover: impl FnOnce(&Sandbox) -> anyhow::Result<Failover>,
    expect_no_loss: bool,
) {
    let mut sb = Sandbox::up().expect("sandbox up");
    let agents = node_resident(&mut sb);
    let old = sb.leader().expect("leader");
    let fixed = MEMBERS[2].addr;
    let probes: Vec<(String, Probe)> = [(VIP, "vip"), (fixed, "node3")]
        .into_iter()
        .map(|(host, label)| {
            let p = sb
                .probe_at(
                    host,
                    5433,
                    &format!("{kind}-{label}"),
                    false,
                    Duration::from_secs(150),
                )
                .expect("writer probe");
            (format!("{host}:5433"), p)
        })
        .collect();
    for (via, p) in &probes {
        p.wait_success_on(old.addr, epoch() - 1.0, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{kind}: no write via {via} before the event"));
    }
    std::thread::sleep(Duration::from_secs(1));
    let f = failover(&sb).unwrap_or_else(|e| panic!("{kind}: {e:#}\n{}", logs(&agents)));
    report(&format!(
        "{kind}: {} -> {}, new leader answered /primary {:.2}s after the event",
        f.old.name,
        f.new.name,
        f.promotion_s()
    ));
    for (via, p) in &probes {
        p.wait_success_on(f.new.addr, f.event_t, Duration::from_secs(40))
            .unwrap_or_else(|| {
                panic!(
                    "{kind}: writes via {via} never resumed on {}\n{}",
                    f.new.name,
                    logs(&agents)
                )
            });
    }
    std::thread::sleep(Duration::from_secs(2));
    for (via, mut p) in probes {
        p.stop();
        check_probe(kind, &via, &p, &f, expect_no_loss);
    }
    report(&format!(
        "{kind}: the VIP is on {:?} afterwards",
        sb.vip_holder().map(|m| m.name)
    ));
}

fn check_probe(kind: &str, via: &str, p: &Probe, f: &Failover, expect_no_loss: bool) {
    let name = format!("{kind} via {via}");
    let s: Value = p.summary().expect("probe summary");
    let violations = s["violations"].as_array().cloned().unwrap_or_default();
    assert!(
        violations.is_empty(),
        "{name}: safety violations: {violations:?}"
    );
    f.assert_writes_only_on_the_primary(&name, &p.attempts());
    let verify = &s["verify"];
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
        .cloned()
        .unwrap_or(Value::Null);
    report(&format!(
        "{name}: {} attempts, {} ok, {} failed; {} acknowledged rows, {} lost; write-unavailability \
         {}s (first failure {}s after the event, back {}s after it); max gap {}s; errors {}",
        s["attempts"],
        s["ok"],
        s["failed"],
        verify["acknowledged"],
        verify["lost_count"],
        ev["window_s"],
        ev["first_fail_after_event_s"],
        ev["recovered_after_event_s"],
        ev["max_gap_s"],
        ev["errors"]
    ));
}

#[test]
fn e2e_node_resident_switchover_under_writer_probes() {
    if !require_sandbox("e2e_node_resident_switchover_under_writer_probes") {
        return;
    }
    failover_under_probes("switchover", Sandbox::switchover, true);
}

#[test]
fn e2e_node_resident_kill_primary_under_writer_probes() {
    if !require_sandbox("e2e_node_resident_kill_primary_under_writer_probes") {
        return;
    }
    failover_under_probes("kill-primary", Sandbox::kill_primary, false);
}
