//! netns tier: SNAT port allocation with the real agent (issue 9, acceptance 4). With a range of
//! 100 ports, 100 concurrent connections to one server all succeed, the 101st is refused with a RST
//! at once, the gauge shows the 100 ports held, and once the connections are closed their ports
//! serve new connections within 2 s.

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use pgsvc_tests::{
    agent_rig::{AgentRig, NORM, VIP, inventory},
    netns::Conn,
    require_root,
};

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

const RANGE: std::ops::RangeInclusive<u16> = 41000..=41099;

/// The value of the one sample of `name{labels}` in the agent's /metrics.
fn sample(rig: &AgentRig, series: &str) -> Option<f64> {
    let (code, text) = rig.http("GET", "/metrics").ok()?;
    assert_eq!(code, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_range_of_100_ports_takes_100_connections_refuses_the_next_and_is_reused_after_close() {
    if !require_root("snat_range_of_100") {
        return;
    }
    let range = format!("{}-{}", RANGE.start(), RANGE.end());
    let rig = AgentRig::start_with(&inventory(NORM, ""), stub(), &["--snat-ports", &range]);
    let held = "pgsvc_server_snat_ports_in_use{proxy=\"pg-test-primary\",server=\"pg-test-1\"}";

    let conns: Vec<Conn> = (0..100)
        .map(|i| {
            rig.connect(5433)
                .unwrap_or_else(|e| panic!("connection {} of 100: {e}", i + 1))
        })
        .collect();
    let ports: BTreeSet<u16> = conns.iter().map(|c| c.peer_seen.port()).collect();
    assert_eq!(ports.len(), 100, "each connection on its own SNAT port");
    assert!(ports.iter().all(|p| RANGE.contains(p)), "{ports:?}");
    assert!(conns.iter().all(|c| c.server == "pg-test-1:6432"));

    // The 101st: refused at once, not left to time out.
    let t = Instant::now();
    let refused = rig.client.run(|_| {
        TcpStream::connect_timeout(&SocketAddr::from((VIP, 5433)), Duration::from_secs(5))
    });
    let took = t.elapsed();
    let err = refused.expect_err("a 101st connection with every SNAT port held");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    eprintln!("101st connection refused after {took:?}");
    // The snapshot is rebuilt every second.
    rig.wait_for("the refusal counted", Duration::from_secs(3), |r| {
        r.status()["datapath"]["packets"]["rst_snat_exhausted"].as_u64() >= Some(1)
    });
    assert_eq!(rig.status()["datapath"]["snat_ports"], 100);
    assert_eq!(sample(&rig, "pgsvc_snat_ports"), Some(100.0));
    // The gauge is counted at every flow GC pass (5 s).
    rig.wait_for(
        "the gauge to show 100 ports held",
        Duration::from_secs(8),
        |r| sample(r, held) == Some(100.0),
    );
    // The open connections still work.
    let mut conns = conns;
    for c in conns.iter_mut().take(5) {
        assert_eq!(c.echo(b"ping").expect("echo"), b"ping");
    }

    // Closed by the clients (FIN first, as PostgreSQL clients close): the ports serve new
    // connections within 2 s.
    drop(conns);
    let closed = Instant::now();
    let again: Vec<Conn> = (0..100)
        .map(|i| {
            rig.connect(5433)
                .unwrap_or_else(|e| panic!("new connection {} after the close: {e}", i + 1))
        })
        .collect();
    let took = closed.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "100 new connections took {took:?}"
    );
    eprintln!("100 new connections on the released ports within {took:?} of the close");
    let ports: BTreeSet<u16> = again.iter().map(|c| c.peer_seen.port()).collect();
    assert_eq!(ports.len(), 100);
    drop(again);
}
