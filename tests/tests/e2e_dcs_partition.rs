//! Real-cluster e2e tier: the leader's node partitioned from etcd (the sandbox's etcd runs as
//! Pigsty's: https, client certificates, RBAC user per cluster), with pgsvc on every node
//! (node-resident topology) reading the leader key through it, under two 50 ms writer probes — one
//! through the VIP, one through the offline member's fixed address.
//!
//! `pgsandbox etcd-cut` puts a blackhole route to etcd inside the leader's namespace only: its
//! Patroni can no longer renew the leader key and demotes itself, the key expires after its ttl and
//! another member takes it; the pgsvc on the cut node falls back to the REST checks alone (logged
//! with the reason), the others follow the key. Asserted: no write is ever acknowledged by a node
//! that was not the primary (none in recovery, none by the old primary after the new one was
//! promoted, none by the new one before the cut), the cut node's pgsvc logged the fallback and says
//! so in its status, and writes resume on the new primary through both paths.
//!
//! It brings up its own sandbox (unique PGSB_ID) and takes it down on any exit.

use std::{io::Write as _, time::Duration};

use pgsvc_tests::sandbox::{
    Failover, MEMBERS, Member, Pgsvc, Probe, Sandbox, VIP, epoch, require_sandbox,
};
use serde_json::Value;

fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "e2e-dcs: {line}");
}

fn logs(agents: &[Pgsvc]) -> String {
    agents
        .iter()
        .zip(MEMBERS)
        .map(|(a, m)| format!("--- pgsvc on {}:\n{}", m.name, a.log_text()))
        .collect()
}

/// The one member answering `/primary` that is not `old`, waited for (bounded); when it answered.
fn wait_new_leader(sb: &Sandbox, old: Member, timeout: Duration) -> Option<(Member, f64)> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < timeout {
        if let Ok(m) = sb.leader()
            && m != old
        {
            return Some((m, epoch()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// No acknowledged write on a node that was not the primary at the time.
fn check_writes(via: &str, p: &Probe, old: Member, new: Member, cut_t: f64, promoted_t: f64) {
    let s: Value = p.summary().expect("probe summary");
    let violations = s["violations"].as_array().cloned().unwrap_or_default();
    assert!(
        violations.is_empty(),
        "via {via}: safety violations: {violations:?}"
    );
    let (old_ip, new_ip) = (old.addr.to_string(), new.addr.to_string());
    let attempts = p.attempts();
    let cut = Failover {
        kind: "etcd-cut",
        event_t: cut_t,
        promoted_t,
        old,
        new,
    };
    cut.assert_writes_only_on_the_primary(&format!("via {via}"), &attempts);
    let last_old = attempts
        .iter()
        .filter(|a| a.ok && a.addr.as_deref() == Some(old_ip.as_str()))
        .map(|a| a.t1)
        .fold(f64::NAN, f64::max);
    let first_new = attempts
        .iter()
        .filter(|a| a.ok && a.addr.as_deref() == Some(new_ip.as_str()))
        .map(|a| a.t1)
        .fold(f64::NAN, f64::min);
    let verify = &s["verify"];
    assert_eq!(verify["addr_mismatch_count"], 0, "via {via}: {verify}");
    report(&format!(
        "via {via}: {} attempts, {} ok, {} failed; {} acknowledged rows, {} lost; last write on {} \
         {:.2}s after the cut, first on {} {:.2}s after it (promotion {:.2}s after it)",
        s["attempts"],
        s["ok"],
        s["failed"],
        verify["acknowledged"],
        verify["lost_count"],
        old.name,
        last_old - cut_t,
        new.name,
        first_new - cut_t,
        promoted_t - cut_t
    ));
}

#[test]
fn e2e_leader_node_cut_off_etcd_writes_only_on_the_leader() {
    if !require_sandbox("e2e_leader_node_cut_off_etcd_writes_only_on_the_leader") {
        return;
    }
    let mut sb = Sandbox::up().expect("sandbox up");
    sb.start_vip_follower().expect("pgsandbox vip start");
    let agents: Vec<Pgsvc> = MEMBERS
        .iter()
        .map(|m| {
            sb.start_node_pgsvc(*m, &[])
                .unwrap_or_else(|e| panic!("pgsvc on {}: {e:#}", m.name))
        })
        .collect();
    let old = sb.leader().expect("leader");
    // Every agent reads the key through TLS + RBAC before anything happens. An agent is ready once
    // its services are written; its watch's first view may land a moment later, so wait for it.
    for m in MEMBERS {
        let follows = |d: &Value| {
            d["fencing"] == true
                && d["leader"] == old.name
                && d["endpoint"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("https://"))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let d = loop {
            let (code, body) = sb.admin_get_at(m.addr, "/status").expect("status");
            assert_eq!(code, 200);
            let v: Value = serde_json::from_str(&body).expect("status JSON");
            let d = v["dcs"][0].clone();
            if follows(&d) || std::time::Instant::now() >= deadline {
                break d;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            follows(&d),
            "pgsvc on {} does not follow the key over https within 10 s: {d}\n{}",
            m.name,
            logs(&agents)
        );
    }
    let fixed = MEMBERS[2].addr;
    let probes: Vec<(String, Probe)> = [(VIP, "vip"), (fixed, "node3")]
        .into_iter()
        .map(|(host, label)| {
            let p = sb
                .probe_at(
                    host,
                    5433,
                    &format!("etcd-cut-{label}"),
                    false,
                    Duration::from_secs(240),
                )
                .expect("writer probe");
            (format!("{host}:5433"), p)
        })
        .collect();
    for (via, p) in &probes {
        p.wait_success_on(old.addr, epoch() - 1.0, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no write via {via} before the cut\n{}", logs(&agents)));
    }
    std::thread::sleep(Duration::from_secs(1));

    let cut_t = sb.etcd_cut(old.host).expect("pgsandbox etcd-cut");
    report(&format!("{} cut off etcd at {cut_t:.3}", old.name));
    // Patroni's ttl (30 s) runs out and another member takes the key; bounded by ttl + slack.
    let Some((new, promoted_t)) = wait_new_leader(&sb, old, Duration::from_secs(150)) else {
        panic!(
            "no other member became primary after the cut\n{}",
            logs(&agents)
        );
    };
    report(&format!(
        "{} answered /primary {:.2}s after the cut",
        new.name,
        promoted_t - cut_t
    ));
    // The cut node's pgsvc fell back to the REST checks alone, with the reason, and says so.
    let cut_agent = &agents[MEMBERS.iter().position(|m| *m == old).expect("member")];
    let log = cut_agent.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("fall back to REST checks alone") && l.contains("etcd")),
        "the cut node's pgsvc logged no fallback:\n{log}"
    );
    let (_, body) = sb.admin_get_at(old.addr, "/status").expect("status");
    let v: Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(v["dcs"][0]["fencing"], false, "{}", v["dcs"][0]);
    report(&format!(
        "pgsvc on {} (cut off): {}",
        old.name, v["dcs"][0]["fallback_reason"]
    ));
    for (via, p) in &probes {
        p.wait_success_on(new.addr, cut_t, Duration::from_secs(60))
            .unwrap_or_else(|| {
                panic!(
                    "writes via {via} never resumed on {}\n{}",
                    new.name,
                    logs(&agents)
                )
            });
    }
    std::thread::sleep(Duration::from_secs(2));
    sb.etcd_heal(old.host).expect("pgsandbox etcd-heal");
    std::thread::sleep(Duration::from_secs(2));
    for (via, mut p) in probes {
        p.stop();
        check_writes(&via, &p, old, new, cut_t, promoted_t);
    }
}
