//! netns tier of the datapath: a client host, an LB host with the XDP program attached to its
//! interface, and backend hosts running TCP servers that greet with their name and the peer address
//! they see. Everything lives in namespaces created here, on 198.18.0.0/24, removed by guards.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use pgsvc::datapath::{
    AttachMode, BackendSpec, Datapath, LoadOptions, ServiceSpec, XdpDatapath, pass::PassProgram,
};
use pgsvc_common::{Algorithm, Reason};
use pgsvc_tests::{
    guard::PinDir,
    netns::{Conn, NameServer, NsWorker, Topology},
    require_root,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const LB: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const SVC: &str = "pg-test-primary";
const SNAT: std::ops::RangeInclusive<u16> = 40000..=59999;

fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + i as u8)
}

fn spec(i: usize, up: bool) -> BackendSpec {
    BackendSpec {
        name: format!("b{}", i + 1),
        addr: backend_addr(i),
        port: 6432,
        up,
        active: up,
        weight: 100,
        maxconn: 0,
    }
}

struct Rig {
    client: NsWorker<()>,
    lb: NsWorker<Option<XdpDatapath>>,
    _pass: Option<NsWorker<Option<PassProgram>>>,
    _servers: Vec<NameServer>,
    topo: Topology,
    _pins: PinDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.lb.run(|dp| {
            if let Some(dp) = dp.take() {
                let _ = dp.detach_and_unpin();
            }
        });
    }
}

/// Builds client + LB + `n` backends; the LB serves VIP:5433 → backends:6432.
fn rig(test: &str, mode: AttachMode, algorithm: Algorithm, n: usize) -> Option<Rig> {
    if !require_root(test) {
        return None;
    }
    let mut hosts = vec![("cl", CLIENT), ("lb", LB)];
    let tags = ["b1", "b2", "b3", "b4"];
    for (i, tag) in tags.iter().enumerate().take(n) {
        hosts.push((tag, backend_addr(i)));
    }
    let topo = Topology::new(&hosts);
    let lb_ns = topo.host(1).ns.name.clone();
    topo.host(1)
        .ns
        .exec(&["ip", "addr", "add", &format!("{VIP}/24"), "dev", "eth0"]);
    topo.host(1).ns.exec(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_local_reserved_ports=40000-59999",
    ]);
    let servers: Vec<NameServer> = (0..n)
        .map(|i| {
            NameServer::start(
                &topo.host(2 + i).ns.name,
                SocketAddr::from((backend_addr(i), 6432)),
                &format!("b{}", i + 1),
            )
        })
        .collect();
    // Native XDP_TX on a veth needs an XDP program on the peer (the bridge port).
    let pass = (mode != AttachMode::Skb).then(|| {
        let port = topo.host(1).port.clone();
        let w = NsWorker::start(&topo.sw.name, || None);
        w.run(move |p: &mut Option<PassProgram>| {
            *p = Some(PassProgram::attach(&port, None).expect("pass program on the bridge port"));
        });
        w
    });
    let pins = PinDir::new("netns");
    let pin_dir = pins.path().to_path_buf();
    let lb = NsWorker::start(&lb_ns, || None);
    let specs: Vec<BackendSpec> = (0..n).map(|i| spec(i, true)).collect();
    lb.run(move |slot: &mut Option<XdpDatapath>| {
        let mut opts = LoadOptions::new(pin_dir, LB);
        opts.snat_ports = SNAT;
        opts.max_flows = 65536;
        let mut dp = XdpDatapath::load(opts).expect("load");
        dp.attach("eth0", mode).expect("attach");
        let svc = ServiceSpec {
            addrs: vec![VIP],
            port: 5433,
            algorithm,
            maxconn: 0,
            shutdown_sessions: true,
        };
        dp.upsert_service(SVC, &svc).expect("service");
        dp.set_backends(SVC, &specs).expect("backends");
        dp.warm_next_hops(Duration::from_secs(3))
            .expect("neighbours");
        *slot = Some(dp);
    });
    let client = NsWorker::start(&topo.host(0).ns.name, || ());
    Some(Rig {
        client,
        lb,
        _pass: pass,
        _servers: servers,
        topo,
        _pins: pins,
    })
}

impl Rig {
    fn dp<R: Send + 'static>(&self, f: impl FnOnce(&mut XdpDatapath) -> R + Send + 'static) -> R {
        self.lb
            .run(move |slot| f(slot.as_mut().expect("datapath loaded")))
    }

    fn set_backends(&self, specs: Vec<BackendSpec>) {
        self.dp(move |dp| {
            dp.set_backends(SVC, &specs).expect("backends");
            dp.warm_next_hops(Duration::from_secs(3))
                .expect("neighbours");
        });
    }

    fn connect(&self, local_port: Option<u16>) -> Conn {
        self.client
            .run(move |_| Conn::open(SocketAddr::from((VIP, 5433)), local_port))
            .expect("connect to the VIP")
    }

    fn reason(&self, r: Reason) -> u64 {
        self.dp(move |dp| {
            dp.reason_counts()
                .into_iter()
                .find(|(x, _)| *x == r)
                .map_or(0, |(_, n)| n)
        })
    }
}

fn tally(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}

fn lands_with_port_translation(test: &str, mode: AttachMode) {
    let Some(r) = rig(test, mode, Algorithm::RoundRobin, 1) else {
        return;
    };
    let c = r.connect(None);
    assert_eq!(c.server, "b1");
    // The backend listens on 6432 only and sees the LB's SNAT address: 5433 → 6432, full NAT.
    assert_eq!(c.peer_seen.ip(), std::net::IpAddr::V4(LB));
    assert!(
        SNAT.contains(&c.peer_seen.port()),
        "SNAT port {}",
        c.peer_seen.port()
    );
    assert_eq!(r.reason(Reason::FwdNew), 1);
    assert_eq!(r.topo.hosts.len(), 3);
}

#[test]
fn native_connections_land_on_the_backend_port_through_full_nat() {
    lands_with_port_translation("native_land", AttachMode::Native);
}

#[test]
fn skb_mode_connections_land_on_the_backend_port_through_full_nat() {
    lands_with_port_translation("skb_land", AttachMode::Skb);
}

#[test]
fn round_robin_spreads_exactly() {
    let Some(r) = rig("rr_exact", AttachMode::Native, Algorithm::RoundRobin, 3) else {
        return;
    };
    let mut seen = Vec::new();
    for _ in 0..30 {
        let c = r.connect(None);
        seen.push(c.server.clone());
        c.abort();
    }
    let t = tally(&seen);
    assert_eq!(
        t.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{t:?}"
    );
    // A strict rotation: every window of three names all three servers.
    for w in seen.windows(3) {
        let mut w = w.to_vec();
        w.sort();
        w.dedup();
        assert_eq!(w.len(), 3, "{seen:?}");
    }
}

#[test]
fn leastconn_balances_open_connections() {
    let Some(r) = rig("leastconn", AttachMode::Native, Algorithm::LeastConn, 3) else {
        return;
    };
    let mut conns: Vec<Conn> = (0..30).map(|_| r.connect(None)).collect();
    let t = tally(&conns.iter().map(|c| c.server.clone()).collect::<Vec<_>>());
    assert_eq!(
        t.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{t:?}"
    );
    // Close six of b1's: the next six connections all go to b1.
    let mut closed = 0;
    conns.retain(|c| {
        if c.server == "b1" && closed < 6 {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            closed += 1;
            false
        } else {
            true
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let next: Vec<String> = (0..6).map(|_| r.connect(None).server).collect();
    assert!(next.iter().all(|s| s == "b1"), "{next:?}");
    let held = r.dp(|dp| dp.backend_conns(SVC).expect("conns"));
    assert_eq!(
        held.iter().find(|(n, _)| n == "b2").map(|x| x.1),
        Some(10),
        "{held:?}"
    );
}

#[test]
fn maglev_keeps_unaffected_clients_when_a_backend_is_added() {
    let Some(r) = rig("maglev", AttachMode::Native, Algorithm::Maglev, 4) else {
        return;
    };
    // Start with three of the four servers.
    r.set_backends((0..3).map(|i| spec(i, true)).collect());
    let ports: Vec<u16> = (0..60).map(|i| 45000 + i).collect();
    let mut before = BTreeMap::new();
    for &p in &ports {
        let c = r.connect(Some(p));
        before.insert(p, c.server.clone());
        c.abort();
    }
    assert!(
        tally(&before.values().cloned().collect::<Vec<_>>()).len() == 3,
        "{before:?}"
    );
    r.set_backends((0..4).map(|i| spec(i, true)).collect());
    let (mut moved_to_new, mut shuffled) = (0, Vec::new());
    for &p in &ports {
        let c = r.connect(Some(p));
        if c.server == "b4" {
            moved_to_new += 1;
        } else if c.server != before[&p] {
            shuffled.push((p, before[&p].clone(), c.server.clone()));
        }
        c.abort();
    }
    // About a quarter moves to the new server; Maglev shuffles only a few percent of the rest (the
    // table is near-minimal, not perfectly minimal), where a modulo hash would move most clients.
    assert!(
        (5..=30).contains(&moved_to_new),
        "{moved_to_new} of 60 moved to the new backend"
    );
    assert!(
        shuffled.len() <= 4,
        "moved between old backends: {shuffled:?}"
    );
}

#[test]
fn an_established_connection_survives_adding_a_backend() {
    let Some(r) = rig("survive_add", AttachMode::Native, Algorithm::RoundRobin, 3) else {
        return;
    };
    r.set_backends(vec![spec(0, true)]);
    let mut c = r.connect(None);
    assert_eq!(c.server, "b1");
    assert_eq!(c.echo(b"before").expect("echo"), b"before");
    r.set_backends((0..3).map(|i| spec(i, true)).collect());
    assert_eq!(
        c.echo(b"after the change")
            .expect("echo after adding backends"),
        b"after the change"
    );
    let others: Vec<String> = (0..3).map(|_| r.connect(None).server).collect();
    assert!(others.iter().any(|s| s != "b1"), "{others:?}");
}

#[test]
fn marking_a_backend_down_resets_its_clients_at_their_next_send() {
    let Some(r) = rig("mark_down", AttachMode::Native, Algorithm::RoundRobin, 2) else {
        return;
    };
    let mut c1 = r.connect(None);
    let mut c2 = r.connect(None);
    assert_eq!((c1.server.as_str(), c2.server.as_str()), ("b1", "b2"));
    r.set_backends(vec![spec(0, false), spec(1, true)]);
    let err = c1.echo(b"insert into t values (1)").expect_err("a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(c2.echo(b"still fine").expect("unaffected"), b"still fine");
    // The agent flushed the flow at once (RstNoFlow); had a packet raced the flush, the datapath's own
    // down check answers it (RstBackendDown).
    assert!(r.reason(Reason::RstBackendDown) + r.reason(Reason::RstNoFlow) >= 1);
    assert_eq!(r.connect(None).server, "b2");
}

#[test]
fn counters_match_what_was_sent() {
    let Some(r) = rig("counters", AttachMode::Native, Algorithm::RoundRobin, 1) else {
        return;
    };
    let mut c = r.connect(None);
    let greeting = format!("b1 {}\n", c.peer_seen).len() as u64;
    let mut sent = 0u64;
    for i in 0..10u8 {
        let chunk = vec![b'a' + i; 100 + usize::from(i)];
        assert_eq!(c.echo(&chunk).expect("echo"), chunk);
        sent += chunk.len() as u64;
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let (svc, per_backend, conns) = r.dp(|dp| {
        (
            dp.service_stats(SVC).expect("stats"),
            dp.backend_stats(SVC).expect("stats"),
            dp.service_conns(SVC).expect("conns"),
        )
    });
    assert_eq!(svc.new_flows, 1);
    assert_eq!(svc.bytes_in, sent);
    assert_eq!(svc.bytes_out, greeting + sent);
    assert_eq!(svc.closed_flows, 1);
    assert_eq!(conns, 0);
    assert_eq!(per_backend, vec![("b1".to_owned(), svc)]);
}
