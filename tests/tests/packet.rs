//! Packet tier: the real XDP object run through BPF_PROG_TEST_RUN with frames built byte by byte.
//! Each case seeds the maps through the agent's own datapath API, runs one frame and checks the
//! action, every rewritten field, and both checksums by an independent full recomputation.

use std::net::Ipv4Addr;

use pgsvc::datapath::{
    BackendSpec, Datapath, LoadOptions, LocalScope, NextHop, ServiceSpec, XdpDatapath,
};
use pgsvc_common::{Algorithm, Reason};
use pgsvc_tests::{
    guard::PinDir,
    packet::{
        ACK, BACKEND_MAC, CLIENT_MAC, FIN, LB_MAC, PSH, RST, SYN, Tcp, arp_request, ipv6_syn,
        parse_verified, udp,
    },
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const LB: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const B1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const B2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
const SNAT_PORTS: std::ops::RangeInclusive<u16> = 40000..=40999;
const SVC: &str = "pg-test-primary";

struct Rig {
    dp: XdpDatapath,
    _pins: PinDir,
}

fn backend(name: &str, addr: Ipv4Addr, up: bool) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        addr,
        port: 6432,
        up,
        active: up,
        weight: 100,
        maxconn: 0,
    }
}

fn rig(test: &str, algorithm: Algorithm, maxconn: u32, backends: &[BackendSpec]) -> Option<Rig> {
    rig_sized(test, algorithm, maxconn, backends, 4096)
}

fn rig_sized(
    test: &str,
    algorithm: Algorithm,
    maxconn: u32,
    backends: &[BackendSpec],
    max_flows: u32,
) -> Option<Rig> {
    if !require_root(test) {
        return None;
    }
    let pins = PinDir::new("pkt");
    let mut opts = LoadOptions::new(pins.path(), LB);
    opts.snat_ports = SNAT_PORTS;
    opts.fib_fallback = false;
    opts.max_flows = max_flows;
    let mut dp = XdpDatapath::load(opts).expect("load + verifier");
    for b in backends {
        // ifindex 0: out of the interface the frame came in on (XDP_TX).
        dp.set_static_next_hop(
            b.addr,
            NextHop {
                ifindex: 0,
                mac: BACKEND_MAC,
                src_mac: LB_MAC,
            },
        );
    }
    let spec = ServiceSpec {
        addrs: vec![VIP],
        port: 5433,
        algorithm,
        maxconn,
        shutdown_sessions: true,
    };
    dp.upsert_service(SVC, &spec).expect("service");
    dp.set_backends(SVC, backends).expect("backends");
    Some(Rig { dp, _pins: pins })
}

impl Rig {
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let r = self.dp.run_program(frame, 1).expect("test run");
        (r.action, r.output)
    }

    fn reason(&self, reason: Reason) -> u64 {
        self.dp
            .reason_counts()
            .into_iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| n)
    }

    /// Sends a client SYN and returns the translated frame.
    fn syn(&mut self, sport: u16) -> pgsvc_tests::packet::Parsed {
        let (action, out) = self.run(&Tcp::new((CLIENT, sport), (VIP, 5433), SYN).frame());
        assert_eq!(action, XDP_TX, "SYN must be transmitted");
        parse_verified(&out).expect("translated SYN checksums")
    }

    /// The backend's SYN-ACK to a translated SYN, run through the reverse path.
    fn synack(&mut self, to: &pgsvc_tests::packet::Parsed) -> u32 {
        let mut synack = Tcp::new((to.dst, to.dport), (LB, to.sport), SYN | ACK);
        synack.src_mac = BACKEND_MAC;
        self.run(&synack.frame()).0
    }

    /// A complete handshake (client SYN, backend SYN-ACK, client ACK); returns the translated SYN.
    fn open(&mut self, sport: u16) -> pgsvc_tests::packet::Parsed {
        let p = self.syn(sport);
        assert_eq!(self.synack(&p), XDP_TX, "SYN-ACK must be translated back");
        let (action, out) = self.run(&Tcp::new((CLIENT, sport), (VIP, 5433), ACK).frame());
        assert_eq!(action, XDP_TX, "handshake ACK must be forwarded");
        assert_eq!(parse_verified(&out).expect("valid frame").dst, p.dst);
        p
    }

    fn conns(&self) -> (u64, u64) {
        let svc = self.dp.service_conns(SVC).expect("datapath call");
        let be = self
            .dp
            .backend_conns(SVC)
            .expect("datapath call")
            .iter()
            .map(|(_, n)| n)
            .sum();
        (svc, be)
    }

    fn table(&self, name: &str) -> u64 {
        self.dp
            .flow_tables()
            .into_iter()
            .find(|t| t.0 == name)
            .map_or(0, |t| t.1)
    }
}

#[test]
fn every_program_passes_the_verifier() {
    // Loading runs the verifier over both programs; a rejection fails `rig`.
    let Some(r) = rig(
        "every_program_passes_the_verifier",
        Algorithm::RoundRobin,
        0,
        &[],
    ) else {
        return;
    };
    assert_eq!(r.dp.flow_count(), 0);
}

#[test]
fn syn_is_translated_to_the_backend_with_snat_and_valid_checksums() {
    let Some(mut r) = rig(
        "syn_translated",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    let mut t = Tcp::new((CLIENT, 33000), (VIP, 5433), SYN);
    t.tcp_options = vec![2, 4, 0x05, 0xb4]; // MSS 1460 survives untouched
    let (action, out) = r.run(&t.frame());
    assert_eq!(action, XDP_TX);
    let p = parse_verified(&out).expect("checksums");
    assert_eq!((p.src, p.dst, p.dport), (LB, B1, 6432));
    assert!(
        SNAT_PORTS.contains(&p.sport),
        "SNAT port {} outside range",
        p.sport
    );
    assert_eq!((p.dst_mac, p.src_mac), (BACKEND_MAC, LB_MAC));
    assert_eq!((p.seq, p.flags), (1000, SYN));
    assert_eq!(out.len(), t.frame().len());
    assert_eq!(r.reason(Reason::FwdNew), 1);
    assert_eq!(r.dp.flow_count(), 1);
    assert_eq!(
        r.dp.backend_conns(SVC).expect("datapath call"),
        vec![("pg-test-1".into(), 0)],
        "a half-open flow is no session"
    );
}

#[test]
fn backend_answer_is_translated_back_to_the_vip_and_client() {
    let Some(mut r) = rig(
        "reverse",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    let fwd = r.syn(33001);
    let mut synack = Tcp::new((B1, 6432), (LB, fwd.sport), SYN | ACK);
    synack.src_mac = BACKEND_MAC;
    synack.dst_mac = LB_MAC;
    synack.payload = b"hello".to_vec();
    let (action, out) = r.run(&synack.frame());
    assert_eq!(action, XDP_TX);
    let p = parse_verified(&out).expect("checksums");
    assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 5433, CLIENT, 33001));
    assert_eq!((p.dst_mac, p.src_mac), (CLIENT_MAC, LB_MAC));
    assert_eq!(p.payload, b"hello");
    assert_eq!(r.reason(Reason::Reverse), 1);
    // Established forward data follows the same translation.
    let mut data = Tcp::new((CLIENT, 33001), (VIP, 5433), PSH | ACK);
    data.payload = b"select 1;".to_vec();
    let (action, out) = r.run(&data.frame());
    assert_eq!(action, XDP_TX);
    let p = parse_verified(&out).expect("checksums");
    assert_eq!((p.src, p.sport, p.dst, p.dport), (LB, fwd.sport, B1, 6432));
    assert_eq!(p.payload, b"select 1;");
    let s = r.dp.service_stats(SVC).expect("datapath call");
    assert_eq!(
        (s.packets_in, s.bytes_in, s.packets_out, s.bytes_out),
        (2, 9, 1, 5)
    );
}

#[test]
fn traffic_that_is_not_ours_passes_byte_for_byte() {
    let Some(mut r) = rig(
        "pass",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        (
            "other port",
            Tcp::new((CLIENT, 33000), (VIP, 5432), SYN).frame(),
            Reason::PassNotService,
        ),
        (
            "other address",
            Tcp::new((CLIENT, 33000), (B2, 5433), SYN).frame(),
            Reason::PassNotService,
        ),
        ("udp", udp((CLIENT, 5353), (VIP, 5433)), Reason::PassNotTcp),
        ("arp", arp_request(CLIENT, VIP), Reason::PassNotIpv4),
        ("ipv6", ipv6_syn(5433), Reason::PassNotIpv4),
        // The LB host's own connection answered on an SNAT-range port with no translation.
        (
            "no nat entry",
            Tcp::new((B1, 8008), (LB, 40500), SYN | ACK).frame(),
            Reason::PassNoNat,
        ),
    ];
    for (name, frame, reason) in cases {
        let before = r.reason(reason);
        let (action, out) = r.run(&frame);
        assert_eq!(action, XDP_PASS, "{name}");
        assert_eq!(out, frame, "{name}: bytes changed");
        assert_eq!(
            r.reason(reason),
            before + 1,
            "{name}: counted as {reason:?}"
        );
    }
    assert_eq!(r.dp.flow_count(), 0);
}

#[test]
fn malformed_frames_get_a_defined_verdict() {
    let Some(mut r) = rig(
        "malformed",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    let syn = Tcp::new((CLIENT, 33000), (VIP, 5433), SYN).frame();
    // Every truncation of a valid SYN: never a crash, always a pass of the bytes as they were.
    for len in [15, 20, 33, 34, 40, 53] {
        // (The kernel itself refuses test runs of an Ethernet header or less.)
        let (action, out) = r.run(&syn[..len]);
        assert_eq!(action, XDP_PASS, "truncated to {len}");
        assert_eq!(out, &syn[..len], "truncated to {len}");
    }
    // IHL below 5, TCP data offset below 5.
    let mut bad = syn.clone();
    bad[14] = 0x44;
    assert_eq!(r.run(&bad).0, XDP_PASS);
    let mut bad = syn.clone();
    bad[14 + 20 + 12] = 0x40;
    assert_eq!(r.run(&bad).0, XDP_PASS);
    // Fragments (MF set; non-zero offset) pass.
    for frag in [0x2000u16, 0x0010] {
        let mut t = Tcp::new((CLIENT, 33000), (VIP, 5433), SYN);
        t.frag = frag;
        let f = t.frame();
        let (action, out) = r.run(&f);
        assert_eq!((action, out), (XDP_PASS, f));
    }
    assert!(r.reason(Reason::PassFragment) >= 2);
    assert!(r.reason(Reason::PassTruncated) >= 6);
    assert_eq!(r.dp.flow_count(), 0);
}

#[test]
fn ip_options_and_vlan_tags_are_translated_in_place() {
    let Some(mut r) = rig(
        "options",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    let mut t = Tcp::new((CLIENT, 33002), (VIP, 5433), SYN);
    t.ip_options = vec![0x94, 0x04, 0, 0]; // Router Alert
    t.vlan = Some(42);
    let (action, out) = r.run(&t.frame());
    assert_eq!(action, XDP_TX);
    let p = parse_verified(&out).expect("checksums");
    assert_eq!((p.ihl, p.vlan, p.dst, p.dport), (24, Some(42), B1, 6432));
}

#[test]
fn non_syn_without_a_flow_gets_a_reset_with_correct_numbers() {
    let Some(mut r) = rig(
        "rst_no_flow",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    // With ACK: RST takes its seq from the ACK field, no ACK flag.
    let mut t = Tcp::new((CLIENT, 33003), (VIP, 5433), PSH | ACK);
    t.seq = 7000;
    t.ack = 123_456;
    t.payload = b"select 1;".to_vec();
    t.ip_options = vec![1, 1, 1, 0];
    let (action, out) = r.run(&t.frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(out.len(), 14 + 40, "options and payload cut");
    let p = parse_verified(&out).expect("checksums");
    assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 5433, CLIENT, 33003));
    assert_eq!((p.dst_mac, p.src_mac), (CLIENT_MAC, LB_MAC));
    assert_eq!((p.flags, p.seq), (RST, 123_456));
    // Without ACK (a FIN alone): seq 0, ACK = seq + len + FIN.
    let mut t = Tcp::new((CLIENT, 33004), (VIP, 5433), FIN);
    t.seq = 9000;
    t.payload = vec![0; 3];
    let (action, out) = r.run(&t.frame());
    assert_eq!(action, XDP_TX);
    let p = parse_verified(&out).expect("checksums");
    assert_eq!((p.flags, p.seq, p.ack), (RST | ACK, 0, 9004));
    assert_eq!(r.reason(Reason::RstNoFlow), 2);
    // A RST is never answered.
    let (action, _) = r.run(&Tcp::new((CLIENT, 33005), (VIP, 5433), RST).frame());
    assert_eq!(action, XDP_DROP);
}

#[test]
fn flows_of_a_backend_marked_down_are_reset() {
    let Some(mut r) = rig(
        "down",
        Algorithm::RoundRobin,
        0,
        &[
            backend("pg-test-1", B1, true),
            backend("pg-test-2", B2, true),
        ],
    ) else {
        return;
    };
    let first = r.syn(33010);
    assert_eq!(first.dst, B1);
    let second = r.syn(33011);
    assert_eq!(second.dst, B2);
    r.dp.set_backends(
        SVC,
        &[
            backend("pg-test-1", B1, false),
            backend("pg-test-2", B2, true),
        ],
    )
    .expect("datapath call");
    let mut data = Tcp::new((CLIENT, 33010), (VIP, 5433), PSH | ACK);
    data.ack = 777;
    data.payload = b"insert".to_vec();
    let (action, out) = r.run(&data.frame());
    assert_eq!(action, XDP_TX);
    let p = parse_verified(&out).expect("checksums");
    assert_eq!((p.flags, p.seq, p.src, p.dst), (RST, 777, VIP, CLIENT));
    // The other flow is untouched, and new flows avoid the down server.
    let mut data = Tcp::new((CLIENT, 33011), (VIP, 5433), PSH | ACK);
    data.payload = b"x".to_vec();
    let (action, out) = r.run(&data.frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(parse_verified(&out).expect("valid frame").dst, B2);
    for port in 33020..33026 {
        assert_eq!(r.syn(port).dst, B2);
    }
}

#[test]
fn syns_over_maxconn_or_without_backends_are_dropped() {
    let Some(mut r) = rig(
        "maxconn",
        Algorithm::RoundRobin,
        2,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    r.open(33030);
    r.open(33031);
    let (action, _) = r.run(&Tcp::new((CLIENT, 33032), (VIP, 5433), SYN).frame());
    assert_eq!(action, XDP_DROP);
    assert_eq!(r.reason(Reason::DropServiceMaxconn), 1);
    // A FIN from one client frees a slot.
    let (action, _) = r.run(&Tcp::new((CLIENT, 33030), (VIP, 5433), FIN | ACK).frame());
    assert_eq!(action, XDP_TX);
    r.syn(33032);
    // Per-server maxconn.
    let mut b = backend("pg-test-1", B1, true);
    b.maxconn = 1;
    let Some(mut r) = rig("maxconn_server", Algorithm::LeastConn, 0, &[b]) else {
        return;
    };
    r.open(33040);
    assert_eq!(
        r.run(&Tcp::new((CLIENT, 33041), (VIP, 5433), SYN).frame())
            .0,
        XDP_DROP
    );
    assert_eq!(r.reason(Reason::DropBackendMaxconn), 1);
    let Some(mut r) = rig(
        "no_backend",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, false)],
    ) else {
        return;
    };
    // No usable server at all: the SYN is refused with a RST at once (as HAProxy closes such a
    // connection), not dropped into a 1 s retransmission.
    let mut t = Tcp::new((CLIENT, 33050), (VIP, 5433), SYN);
    t.seq = 41_000;
    let (action, out) = r.run(&t.frame());
    assert_eq!(action, XDP_TX);
    let p = parse_verified(&out).expect("checksums");
    assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 5433, CLIENT, 33050));
    assert_eq!((p.dst_mac, p.src_mac), (CLIENT_MAC, LB_MAC));
    assert_eq!((p.flags, p.seq, p.ack), (RST | ACK, 0, 41_001));
    assert_eq!(r.reason(Reason::RstNoBackend), 1);
    assert_eq!(
        r.dp.service_stats(SVC).expect("stats").rst_sent,
        1,
        "counted as sent"
    );
    assert_eq!(
        (r.table("pending"), r.table("established")),
        (0, 0),
        "no flow for a refused SYN"
    );
}

#[test]
fn round_robin_is_exact_and_a_retransmitted_syn_keeps_its_backend() {
    let Some(mut r) = rig(
        "rr",
        Algorithm::RoundRobin,
        0,
        &[
            backend("pg-test-1", B1, true),
            backend("pg-test-2", B2, true),
        ],
    ) else {
        return;
    };
    let picks: Vec<Ipv4Addr> = (0..10).map(|i| r.syn(34000 + i).dst).collect();
    assert_eq!(picks.iter().filter(|&&a| a == B1).count(), 5);
    assert!(picks.windows(2).all(|w| w[0] != w[1]), "{picks:?}");
    let again = r.syn(34000);
    assert_eq!(again.dst, picks[0]);
    assert_eq!(r.dp.flow_count(), 10);
}

#[test]
fn gc_removes_closed_and_unanswered_flows_and_keeps_live_ones() {
    use pgsvc::datapath::Timeouts;
    let Some(mut r) = rig(
        "gc",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    // A: established and alive.
    r.open(35000);
    // B: the backend never answered (half-open).
    r.syn(35001);
    // C: established, then closed by the client.
    r.open(35002);
    assert_eq!(
        r.run(&Tcp::new((CLIENT, 35002), (VIP, 5433), FIN | ACK).frame())
            .0,
        XDP_TX
    );
    assert_eq!(r.dp.flow_count(), 3);
    assert_eq!(
        r.dp.backend_conns(SVC).expect("datapath call")[0].1,
        1,
        "C stopped counting at its FIN, B never counted"
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = Timeouts {
        syn_ns: 0,
        closing_ns: 0,
        idle_ns: 3600 * 1_000_000_000,
    };
    let report = r.dp.gc(&t).expect("gc");
    assert_eq!((report.scanned, report.expired), (3, 2), "{report:?}");
    assert_eq!(r.dp.flow_count(), 1);
    // B never counted, C stopped at its FIN: only A is counted.
    assert_eq!(r.dp.backend_conns(SVC).expect("datapath call")[0].1, 1);
    assert_eq!(r.dp.service_conns(SVC).expect("datapath call"), 1);
    // A keeps flowing; C's next packet finds no flow and is reset.
    let (action, out) = r.run(&Tcp::new((CLIENT, 35000), (VIP, 5433), ACK).frame());
    assert_eq!(
        (action, parse_verified(&out).expect("valid frame").dst),
        (XDP_TX, B1)
    );
    let (_, out) = r.run(&Tcp::new((CLIENT, 35002), (VIP, 5433), ACK).frame());
    assert_eq!(parse_verified(&out).expect("valid frame").flags, RST);
}

#[test]
fn a_slot_reused_for_a_server_whose_address_changed_starts_from_zero_counters() {
    let Some(mut r) = rig(
        "slot_reuse_counters",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    r.dp.set_static_next_hop(
        B2,
        NextHop {
            ifindex: 0,
            mac: BACKEND_MAC,
            src_mac: LB_MAC,
        },
    );
    r.open(34000);
    r.open(34001);
    assert_eq!(r.dp.backend_conns(SVC).expect("datapath call")[0].1, 2);
    assert_eq!(
        r.dp.backend_stats(SVC).expect("datapath call")[0]
            .1
            .new_flows,
        2
    );
    let slots = r.dp.backend_ids(SVC).expect("datapath call");
    // Same name, another address: another server, in the same slot.
    r.dp.set_backends(SVC, &[backend("pg-test-1", B2, true)])
        .expect("backends");
    assert_eq!(
        r.dp.backend_ids(SVC).expect("datapath call"),
        slots,
        "slot reused"
    );
    assert_eq!(r.dp.flow_count(), 0, "the old server's flows are flushed");
    assert_eq!(
        r.dp.backend_conns(SVC).expect("datapath call"),
        vec![("pg-test-1".into(), 0)],
        "connections of the old server"
    );
    assert_eq!(
        r.dp.backend_stats(SVC).expect("datapath call")[0].1,
        pgsvc_common::TrafficStats::default(),
        "traffic of the old server"
    );
    let p = r.open(34002);
    assert_eq!(p.dst, B2);
    assert_eq!(r.dp.backend_conns(SVC).expect("datapath call")[0].1, 1);
    assert_eq!(
        r.dp.backend_stats(SVC).expect("datapath call")[0]
            .1
            .new_flows,
        1
    );
}

/// A datapath with one service on `ip: "*"` port 5433 and the node's scope: the LB's MAC, the
/// local addresses LB and VIP.
fn wildcard_rig(test: &str) -> Option<Rig> {
    if !require_root(test) {
        return None;
    }
    let pins = PinDir::new("pkt");
    let mut opts = LoadOptions::new(pins.path(), LB);
    opts.snat_ports = SNAT_PORTS;
    opts.fib_fallback = false;
    opts.max_flows = 4096;
    let mut dp = XdpDatapath::load(opts).expect("load + verifier");
    dp.set_static_next_hop(
        B1,
        NextHop {
            ifindex: 0,
            mac: BACKEND_MAC,
            src_mac: LB_MAC,
        },
    );
    let spec = ServiceSpec {
        addrs: Vec::new(),
        port: 5433,
        algorithm: Algorithm::RoundRobin,
        maxconn: 0,
        shutdown_sessions: true,
    };
    dp.upsert_service(SVC, &spec).expect("service");
    dp.set_backends(SVC, &[backend("pg-test-1", B1, true)])
        .expect("backends");
    let changed = dp
        .set_local_scope(&LocalScope {
            if_mac: LB_MAC,
            vip_mac: None,
            addrs: vec![LB, VIP],
        })
        .expect("local scope");
    assert!(changed, "a fresh datapath had no local scope");
    Some(Rig { dp, _pins: pins })
}

const FOREIGN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

#[test]
fn wildcard_service_takes_only_frames_addressed_to_this_node() {
    let Some(mut r) = wildcard_rig("wildcard_scope") else {
        return;
    };
    let to = |dst: Ipv4Addr, dst_mac: [u8; 6], sport: u16, flags: u8| {
        let mut t = Tcp::new((CLIENT, sport), (dst, 5433), flags);
        t.dst_mac = dst_mac;
        t.frame()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not a local address", to(B2, LB_MAC, 36000, SYN)),
        ("the backend's address", to(B1, LB_MAC, 36001, SYN)),
        (
            "limited broadcast",
            to(Ipv4Addr::BROADCAST, LB_MAC, 36002, SYN),
        ),
        ("foreign unicast MAC", to(LB, FOREIGN_MAC, 36003, SYN)),
        ("broadcast MAC", to(LB, BROADCAST_MAC, 36004, SYN)),
        (
            "broadcast MAC, no flow",
            to(LB, BROADCAST_MAC, 36005, PSH | ACK),
        ),
        ("not local, no flow", to(B2, LB_MAC, 36006, PSH | ACK)),
    ];
    for (name, frame) in &cases {
        let before = r.reason(Reason::PassNotLocal);
        let (action, out) = r.run(frame);
        assert_eq!(action, XDP_PASS, "{name}");
        assert_eq!(&out, frame, "{name}: bytes changed");
        assert_eq!(r.reason(Reason::PassNotLocal), before + 1, "{name}");
    }
    assert_eq!(r.dp.flow_count(), 0);
    assert_eq!(r.dp.service_stats(SVC).expect("stats").rst_sent, 0);
    // Addressed to us, at either local address: translated.
    for (dst, sport) in [(LB, 36010), (VIP, 36011)] {
        let (action, out) = r.run(&to(dst, LB_MAC, sport, SYN));
        assert_eq!(action, XDP_TX, "SYN to {dst}");
        let p = parse_verified(&out).expect("translated SYN");
        assert_eq!((p.dst, p.dport), (B1, 6432));
    }
    // The node's addresses change at runtime: VIP no longer local → passed; the flow already
    // admitted keeps flowing.
    let changed =
        r.dp.set_local_scope(&LocalScope {
            if_mac: LB_MAC,
            vip_mac: None,
            addrs: vec![LB],
        })
        .expect("scope");
    assert!(changed);
    assert!(
        !r.dp
            .set_local_scope(&LocalScope {
                if_mac: LB_MAC,
                vip_mac: None,
                addrs: vec![LB],
            })
            .expect("scope")
    );
    let f = to(VIP, LB_MAC, 36012, SYN);
    assert_eq!(r.run(&f), (XDP_PASS, f.clone()));
    let (action, _) = r.run(&to(VIP, LB_MAC, 36011, PSH | ACK));
    assert_eq!(action, XDP_TX, "established flow to a former local address");
    // A configured VIP MAC is ours too.
    let vmac = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x07];
    let f = to(LB, vmac, 36013, SYN);
    assert_eq!(r.run(&f), (XDP_PASS, f.clone()));
    r.dp.set_local_scope(&LocalScope {
        if_mac: LB_MAC,
        vip_mac: Some(vmac),
        addrs: vec![LB],
    })
    .expect("scope");
    assert_eq!(r.run(&f).0, XDP_TX);
}

/// Sets the IPv4 header's checksum field to a wrong value.
fn break_ip_checksum(frame: &mut [u8]) {
    frame[14 + 10] ^= 0x5a;
}

/// Flips a bit in the TCP checksum field.
fn break_tcp_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[14 + ihl + 16] ^= 0x01;
}

#[test]
fn frames_with_bad_checksums_pass_untouched_where_we_would_create_state_or_answer() {
    let Some(mut r) = rig(
        "bad_checksums",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    let mut data = Tcp::new((CLIENT, 37002), (VIP, 5433), PSH | ACK);
    data.payload = b"select 1;".to_vec();
    let mut odd = Tcp::new((CLIENT, 37003), (VIP, 5433), PSH | ACK);
    odd.payload = b"select 42;".to_vec();
    odd.payload.push(b'!'); // 11 bytes: an odd segment length
    let syn = Tcp::new((CLIENT, 37000), (VIP, 5433), SYN).frame();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut f = syn.clone();
    break_ip_checksum(&mut f);
    cases.push(("SYN, bad IP checksum", f));
    let mut f = syn.clone();
    break_tcp_checksum(&mut f);
    cases.push(("SYN, bad TCP checksum", f));
    let mut f = data.frame();
    break_tcp_checksum(&mut f);
    cases.push(("data without a flow, bad TCP checksum", f));
    let mut f = data.frame();
    let last = f.len() - 1;
    f[last] ^= 0x20; // payload corrupted, checksum as sent
    cases.push(("data without a flow, corrupted payload", f));
    let mut f = odd.frame();
    let last = f.len() - 1;
    f[last] ^= 0x01;
    cases.push(("odd-length payload corrupted in its last byte", f));
    let mut t = Tcp::new((CLIENT, 37004), (VIP, 5433), SYN);
    t.ip_options = vec![1, 1, 1, 0];
    let mut f = t.frame();
    f[14 + 21] = 0x02; // an option byte changed: only the header checksum can tell
    cases.push(("SYN with IP options, bad IP checksum", f));
    for (name, frame) in &cases {
        let before = r.reason(Reason::PassBadChecksum);
        let (action, out) = r.run(frame);
        assert_eq!(action, XDP_PASS, "{name}");
        assert_eq!(&out, frame, "{name}: bytes changed");
        assert_eq!(r.reason(Reason::PassBadChecksum), before + 1, "{name}");
    }
    assert_eq!(r.dp.flow_count(), 0);
    assert_eq!(r.dp.service_stats(SVC).expect("stats").rst_sent, 0);
    // The same frames intact: answered (odd length included) and translated.
    let (action, out) = r.run(&odd.frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(parse_verified(&out).expect("RST").flags, RST);
    assert_eq!(r.run(&data.frame()).0, XDP_TX);
    assert_eq!(r.dp.service_stats(SVC).expect("stats").rst_sent, 2);
    assert_eq!(r.syn(37000).dst, B1);
    assert_eq!(r.syn(37004).dst, B1);
    let mut t = Tcp::new((CLIENT, 37005), (VIP, 5433), SYN);
    t.payload = vec![7; 5]; // odd-length data on a SYN (TCP Fast Open)
    assert_eq!(r.run(&t.frame()).0, XDP_TX);
    // A full 1500-MTU segment is verified and answered; a longer one (jumbo) cannot be verified
    // and is left to the kernel.
    let mut t = Tcp::new((CLIENT, 37006), (VIP, 5433), PSH | ACK);
    t.payload = vec![0x5a; 1460];
    let (action, out) = r.run(&t.frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(parse_verified(&out).expect("RST").flags, RST);
    t.payload.push(0x5a);
    let f = t.frame();
    let (action, out) = r.run(&f);
    assert_eq!(action, XDP_PASS, "1481-byte segment");
    assert!(out == f, "1481-byte segment: bytes changed");
    assert_eq!(r.dp.service_stats(SVC).expect("stats").rst_sent, 3);
}

#[test]
fn ip_total_length_beyond_the_frame_passes_under_its_own_reason() {
    let Some(mut r) = rig(
        "bad_length",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    let mut t = Tcp::new((CLIENT, 38000), (VIP, 5433), PSH | ACK);
    t.payload = b"select 1;".to_vec();
    for extra in [1u16, 100] {
        let mut f = t.frame();
        let total = u16::from_be_bytes([f[16], f[17]]) + extra;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[24..26].copy_from_slice(&[0, 0]);
        let c = pgsvc_tests::packet::rfc1071(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let before = r.reason(Reason::PassBadLength);
        let (action, out) = r.run(&f);
        assert_eq!((action, &out), (XDP_PASS, &f), "total length +{extra}");
        assert_eq!(r.reason(Reason::PassBadLength), before + 1);
    }
    // A shorter total length than the frame is Ethernet padding: fine.
    let mut f = Tcp::new((CLIENT, 38001), (VIP, 5433), SYN).frame();
    f.extend_from_slice(&[0; 6]);
    assert_eq!(r.run(&f).0, XDP_TX);
    assert_eq!(r.dp.service_stats(SVC).expect("stats").rst_sent, 0);
}

#[test]
fn rst_sent_counts_only_resets_that_were_transmitted() {
    let Some(mut r) = rig(
        "rst_count",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    let rst_sent = |r: &Rig| r.dp.service_stats(SVC).expect("stats").rst_sent;
    // An incoming RST without a flow: dropped, not answered, not counted as sent.
    for port in 39000..39003 {
        let (action, _) = r.run(&Tcp::new((CLIENT, port), (VIP, 5433), RST | ACK).frame());
        assert_eq!(action, XDP_DROP);
    }
    assert_eq!(rst_sent(&r), 0);
    assert_eq!(r.reason(Reason::DropRstUnanswered), 3);
    assert_eq!(r.reason(Reason::RstNoFlow), 0);
    // A data segment without a flow: answered, counted once.
    let (action, _) = r.run(&Tcp::new((CLIENT, 39010), (VIP, 5433), ACK).frame());
    assert_eq!(action, XDP_TX);
    assert_eq!((rst_sent(&r), r.reason(Reason::RstNoFlow)), (1, 1));
    // Flows of a server marked down (the agent flushes them at once): the client's RST is not
    // answered, its data is.
    r.syn(39020);
    r.syn(39021);
    r.dp.set_backends(SVC, &[backend("pg-test-1", B1, false)])
        .expect("datapath call");
    let (action, _) = r.run(&Tcp::new((CLIENT, 39020), (VIP, 5433), RST | ACK).frame());
    assert_eq!(action, XDP_DROP);
    assert_eq!(rst_sent(&r), 1);
    let (action, _) = r.run(&Tcp::new((CLIENT, 39021), (VIP, 5433), ACK).frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(rst_sent(&r), 2);
    assert_eq!(r.reason(Reason::DropRstUnanswered), 4);
}

/// The node-resident topology: the VIP service's only member is on this node itself (at the
/// node's address `LB`), and a remote member `B1` for the second service.
fn local_rig(test: &str) -> Option<Rig> {
    let mut r = rig(
        test,
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", LB, true)],
    )?;
    let changed =
        r.dp.set_local_scope(&LocalScope {
            if_mac: LB_MAC,
            vip_mac: None,
            addrs: vec![LB, VIP],
        })
        .expect("local scope");
    assert!(changed);
    Some(r)
}

const TC_ACT_OK: u32 = 0;

#[test]
fn a_local_member_gets_its_flows_translated_in_place_and_passed_to_the_stack() {
    let Some(mut r) = local_rig("local_member_dnat") else {
        return;
    };
    // SYN to VIP:5433 → the node's own pgbouncer at LB:6432, client address kept, frame passed.
    let syn = Tcp::new((CLIENT, 34000), (VIP, 5433), SYN).frame();
    let (action, out) = r.run(&syn);
    assert_eq!(action, XDP_PASS, "a local member's SYN goes to the stack");
    let p = parse_verified(&out).expect("checksums of the translated SYN");
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (CLIENT, 34000, LB, 6432),
        "destination translated, source kept"
    );
    assert_eq!(
        (p.dst_mac, p.src_mac),
        (LB_MAC, CLIENT_MAC),
        "MACs untouched"
    );
    assert_eq!(r.reason(Reason::PassLocalNew), 1);
    assert_eq!(r.reason(Reason::FwdNew), 0);
    assert_eq!(r.dp.flow_count(), 1);
    assert_eq!(r.conns(), (0, 0), "a local SYN alone is no session");
    assert_eq!((r.table("pending"), r.table("established")), (1, 0));
    // A blind ACK before the member's SYN-ACK is passed translated but establishes nothing.
    let (action, out) = r.run(&Tcp::new((CLIENT, 34000), (VIP, 5433), ACK).frame());
    assert_eq!(action, XDP_PASS);
    assert_eq!(parse_verified(&out).expect("checksums").dport, 6432);
    assert_eq!(r.conns(), (0, 0), "ACK before the member's SYN-ACK");

    // The member's SYN-ACK leaves through TC egress with the address and port the client dialled.
    let mut reply = Tcp::new((LB, 6432), (CLIENT, 34000), SYN | ACK);
    reply.src_mac = LB_MAC;
    reply.dst_mac = CLIENT_MAC;
    reply.payload = b"hello".to_vec();
    let run = r.dp.run_tc_egress(&reply.frame()).expect("tc test run");
    assert_eq!(run.action, TC_ACT_OK);
    let p = parse_verified(&run.output).expect("checksums of the translated reply");
    assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 5433, CLIENT, 34000));
    assert_eq!(p.payload, b"hello");
    assert_eq!(r.reason(Reason::ReverseLocal), 1);
    assert_eq!(r.conns(), (0, 0), "SYN-ACK without the client's ACK");

    // The client's ACK after it (with data) establishes the flow: now it is a session.
    let mut data = Tcp::new((CLIENT, 34000), (VIP, 5433), PSH | ACK);
    data.payload = b"select 1;".to_vec();
    let (action, out) = r.run(&data.frame());
    assert_eq!(action, XDP_PASS);
    let p = parse_verified(&out).expect("checksums");
    assert_eq!((p.src, p.dst, p.dport), (CLIENT, LB, 6432));
    assert_eq!(p.payload, b"select 1;");
    assert_eq!(r.reason(Reason::PassLocalEstablished), 2);
    assert_eq!(r.conns(), (1, 1), "established after the client's ACK");
    assert_eq!((r.table("pending"), r.table("established")), (0, 1));
    assert_eq!(
        r.dp.backend_conns(SVC).expect("datapath call"),
        vec![("pg-test-1".into(), 1)]
    );
    let s = r.dp.service_stats(SVC).expect("stats");
    assert_eq!(
        (s.new_flows, s.packets_in, s.packets_out, s.bytes_out),
        (1, 3, 1, 5)
    );

    // The node's own traffic from the same port to another peer leaves byte for byte.
    let own = Tcp::new((LB, 6432), (CLIENT, 34001), PSH | ACK).frame();
    let run = r.dp.run_tc_egress(&own).expect("tc test run");
    assert_eq!((run.action, run.output), (TC_ACT_OK, own));
    assert_eq!(r.reason(Reason::ReverseLocal), 1);

    // A FIN from the member closes the flow: the connection stops counting and the flow waits
    // out its close in the pending table.
    let fin = Tcp::new((LB, 6432), (CLIENT, 34000), FIN | ACK).frame();
    let run = r.dp.run_tc_egress(&fin).expect("tc test run");
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(
        r.dp.backend_conns(SVC).expect("datapath call"),
        vec![("pg-test-1".into(), 0)]
    );
    assert_eq!(r.dp.service_conns(SVC).expect("conns"), 0);
    assert_eq!((r.table("pending"), r.table("established")), (1, 0));
    assert_eq!(r.dp.service_stats(SVC).expect("stats").closed_flows, 1);
    // The client's FIN and its last ACK end it: flow and reverse entry gone.
    let (action, _) = r.run(&Tcp::new((CLIENT, 34000), (VIP, 5433), FIN | ACK).frame());
    assert_eq!(action, XDP_PASS);
    let (action, _) = r.run(&Tcp::new((CLIENT, 34000), (VIP, 5433), ACK).frame());
    assert_eq!(action, XDP_PASS);
    assert_eq!((r.dp.flow_count(), r.table("nat_rev")), (0, 0));
    assert_eq!(r.dp.service_stats(SVC).expect("stats").closed_flows, 1);
}

/// The handshake of a local flow: client SYN (XDP), the member's SYN-ACK (TC egress), the
/// client's ACK (XDP).
fn open_local(r: &mut Rig, sport: u16) {
    let (action, _) = r.run(&Tcp::new((CLIENT, sport), (VIP, 5433), SYN).frame());
    assert_eq!(action, XDP_PASS);
    let synack = Tcp::new((LB, 6432), (CLIENT, sport), SYN | ACK).frame();
    let run = r.dp.run_tc_egress(&synack).expect("tc test run");
    assert_eq!(run.action, TC_ACT_OK);
    let (action, _) = r.run(&Tcp::new((CLIENT, sport), (VIP, 5433), ACK).frame());
    assert_eq!(action, XDP_PASS);
}

#[test]
fn local_member_flows_obey_shutdown_sessions_and_the_node_addresses() {
    let Some(mut r) = local_rig("local_member_down") else {
        return;
    };
    open_local(&mut r, 34100);
    assert_eq!(r.conns(), (1, 1));
    // A RST from the member removes its flow at once (and the reverse entry).
    open_local(&mut r, 34102);
    assert_eq!(r.conns(), (2, 2));
    let rst = Tcp::new((LB, 6432), (CLIENT, 34102), RST | ACK).frame();
    let run = r.dp.run_tc_egress(&rst).expect("tc test run");
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(r.conns(), (1, 1), "the member's RST ends its session");
    assert_eq!((r.dp.flow_count(), r.table("nat_rev")), (1, 1));
    // The member goes DOWN (shutdown-sessions): the client's next packet is answered with a RST.
    r.dp.set_backends(SVC, &[backend("pg-test-1", LB, false)])
        .expect("backends");
    let (action, out) = r.run(&Tcp::new((CLIENT, 34100), (VIP, 5433), PSH | ACK).frame());
    assert_eq!(action, XDP_TX);
    let p = parse_verified(&out).expect("RST checksums");
    assert_eq!((p.src, p.dst, p.flags & RST), (VIP, CLIENT, RST));
    assert_eq!(r.dp.flow_count(), 0);
    assert_eq!(r.conns(), (0, 0));
    // Back UP; the VIP leaves the node: a SYN to it is not handed to the local member.
    r.dp.set_backends(SVC, &[backend("pg-test-1", LB, true)])
        .expect("backends");
    r.dp.set_local_scope(&LocalScope {
        if_mac: LB_MAC,
        vip_mac: None,
        addrs: vec![LB],
    })
    .expect("scope");
    let f = Tcp::new((CLIENT, 34101), (VIP, 5433), SYN).frame();
    assert_eq!(r.run(&f), (XDP_PASS, f.clone()), "passed untouched");
    assert_eq!(r.reason(Reason::PassNotLocal), 1);
    assert_eq!(r.dp.flow_count(), 0);
}

#[test]
fn a_half_open_flow_counts_nothing_until_the_client_completes_the_handshake() {
    let Some(mut r) = rig(
        "half_open_counts",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    let p = r.syn(36000);
    assert_eq!(r.conns(), (0, 0), "SYN alone");
    assert_eq!((r.table("pending"), r.table("established")), (1, 0));
    // A blind ACK before the backend answered (a spoofer guessing) is forwarded but not promoted.
    let (action, _) = r.run(&Tcp::new((CLIENT, 36000), (VIP, 5433), ACK).frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(r.conns(), (0, 0), "ACK before the SYN-ACK");
    assert_eq!(r.synack(&p), XDP_TX);
    assert_eq!(r.conns(), (0, 0), "SYN-ACK without the client's ACK");
    let (action, _) = r.run(&Tcp::new((CLIENT, 36000), (VIP, 5433), SYN).frame());
    assert_eq!(action, XDP_TX, "retransmitted SYN");
    assert_eq!(r.conns(), (0, 0), "retransmitted SYN");
    let (action, out) = r.run(&Tcp::new((CLIENT, 36000), (VIP, 5433), ACK).frame());
    assert_eq!(action, XDP_TX);
    let fwd = parse_verified(&out).expect("valid frame");
    assert_eq!((fwd.dst, fwd.sport), (B1, p.sport), "same translation");
    assert_eq!(r.conns(), (1, 1), "established after the client's ACK");
    assert_eq!((r.table("pending"), r.table("established")), (0, 1));
    assert_eq!(r.dp.service_stats(SVC).expect("stats").new_flows, 1);
    // More data does not count it again; the FIN uncounts it and moves it to the pending table.
    let (action, _) = r.run(&Tcp::new((CLIENT, 36000), (VIP, 5433), PSH | ACK).frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(r.conns(), (1, 1));
    let (action, _) = r.run(&Tcp::new((CLIENT, 36000), (VIP, 5433), FIN | ACK).frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(r.conns(), (0, 0), "closing");
    assert_eq!((r.table("pending"), r.table("established")), (1, 0));
    let (action, _) = r.run(&Tcp::new((CLIENT, 36000), (VIP, 5433), ACK).frame());
    assert_eq!(
        action, XDP_TX,
        "the last ACK of a closing flow still goes through"
    );
    assert_eq!(r.dp.service_stats(SVC).expect("stats").closed_flows, 1);
}

#[test]
fn half_open_expiry_leaves_the_session_counters_alone() {
    use pgsvc::datapath::Timeouts;
    let Some(mut r) = rig(
        "half_open_expiry",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    r.open(36100);
    for port in 36101..36111 {
        let p = r.syn(port);
        if port % 2 == 0 {
            assert_eq!(r.synack(&p), XDP_TX);
        }
    }
    assert_eq!(r.conns(), (1, 1));
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = Timeouts {
        syn_ns: 0,
        closing_ns: 3600 * 1_000_000_000,
        idle_ns: 3600 * 1_000_000_000,
    };
    let report = r.dp.gc(&t).expect("gc");
    assert_eq!(report.expired, 10, "{report:?}");
    assert_eq!(report.reconciled, 0, "nothing to correct: {report:?}");
    assert_eq!(r.conns(), (1, 1), "half-open expiry released nothing");
    assert_eq!((r.table("pending"), r.table("established")), (0, 1));
    assert_eq!(
        r.table("nat_rev"),
        1,
        "reverse entries of the half-open flows gone (the established flow's stays)"
    );
    let (action, _) = r.run(&Tcp::new((CLIENT, 36100), (VIP, 5433), PSH | ACK).frame());
    assert_eq!(action, XDP_TX);
}

#[test]
fn a_reset_in_half_open_is_forwarded_and_counts_nothing() {
    let Some(mut r) = rig(
        "half_open_rst",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    // The client gives up before the handshake completes: its RST reaches the backend and the
    // flow is gone, reverse entry included.
    let p = r.syn(36200);
    let (action, out) = r.run(&Tcp::new((CLIENT, 36200), (VIP, 5433), RST).frame());
    assert_eq!(action, XDP_TX, "the RST reaches the backend");
    let fwd = parse_verified(&out).expect("valid frame");
    assert_eq!((fwd.dst, fwd.sport, fwd.flags), (B1, p.sport, RST));
    // Nothing stays in `nat_rev`: no port is held (the allocation cursor lives apart).
    assert_eq!((r.dp.flow_count(), r.table("nat_rev")), (0, 0));
    // A late SYN-ACK is the host's business; a late ACK establishes nothing.
    assert_eq!(r.synack(&p), XDP_PASS);
    let (_, out) = r.run(&Tcp::new((CLIENT, 36200), (VIP, 5433), ACK).frame());
    assert_eq!(parse_verified(&out).expect("valid frame").flags, RST);
    assert_eq!(r.conns(), (0, 0));
    // The backend refuses the next one: its RST reaches the client, the flow is gone.
    let q = r.syn(36201);
    let mut rst = Tcp::new((B1, 6432), (LB, q.sport), RST | ACK);
    rst.src_mac = BACKEND_MAC;
    let (action, out) = r.run(&rst.frame());
    assert_eq!(action, XDP_TX, "the RST reaches the client");
    assert_eq!(parse_verified(&out).expect("valid frame").dst, CLIENT);
    assert_eq!((r.dp.flow_count(), r.table("nat_rev")), (0, 0));
    assert_eq!(r.conns(), (0, 0));
    let s = r.dp.service_stats(SVC).expect("stats");
    assert_eq!(
        (s.new_flows, s.closed_flows),
        (0, 0),
        "no session began or ended"
    );
    // The same 4-tuple can start over.
    r.open(36200);
    assert_eq!(r.conns(), (1, 1));
}

#[test]
fn established_flows_survive_a_syn_flood_of_twenty_times_the_table() {
    let Some(mut r) = rig_sized(
        "syn_flood_lru",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
        256,
    ) else {
        return;
    };
    r.open(36300);
    let flood = 20 * 256;
    for i in 0..flood {
        let src = Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250 + 1) as u8);
        let (action, _) =
            r.run(&Tcp::new((src, 40000 + (i % 1000) as u16), (VIP, 5433), SYN).frame());
        assert!(
            action == XDP_TX || action == XDP_DROP,
            "SYN {i}: action {action}"
        );
    }
    assert_eq!(r.conns(), (1, 1), "spoofed SYNs are no sessions");
    let (action, out) = r.run(&Tcp::new((CLIENT, 36300), (VIP, 5433), PSH | ACK).frame());
    assert_eq!(action, XDP_TX, "the established flow survived");
    let p = parse_verified(&out).expect("valid frame");
    assert_eq!((p.dst, p.flags), (B1, PSH | ACK));
    assert_eq!(r.table("established"), 1);
}

#[test]
fn a_full_established_table_refuses_new_handshakes_with_a_reset() {
    let Some(mut r) = rig_sized(
        "flows_full",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
        2,
    ) else {
        return;
    };
    r.open(36400);
    r.open(36401);
    let p = r.syn(36402);
    assert_eq!(r.synack(&p), XDP_TX);
    let mut ack = Tcp::new((CLIENT, 36402), (VIP, 5433), ACK);
    ack.ack = 4242;
    let (action, out) = r.run(&ack.frame());
    assert_eq!(action, XDP_TX);
    let rst = parse_verified(&out).expect("valid frame");
    assert_eq!((rst.flags, rst.seq, rst.dst), (RST, 4242, CLIENT));
    assert_eq!(r.reason(Reason::RstFlowTableFull), 1);
    assert_eq!(r.conns(), (2, 2));
    assert_eq!(r.table("established"), 2);
    for port in [36400, 36401] {
        let (action, out) = r.run(&Tcp::new((CLIENT, port), (VIP, 5433), PSH | ACK).frame());
        assert_eq!(action, XDP_TX);
        assert_eq!(parse_verified(&out).expect("valid frame").dst, B1);
    }
    // Room again after a close.
    let (action, _) = r.run(&Tcp::new((CLIENT, 36400), (VIP, 5433), FIN | ACK).frame());
    assert_eq!(action, XDP_TX);
    r.open(36403);
    assert_eq!(r.conns(), (2, 2));
}

#[test]
fn gc_corrects_session_counters_to_the_established_flows() {
    use pgsvc::datapath::Timeouts;
    let Some(mut r) = rig(
        "reconcile",
        Algorithm::RoundRobin,
        0,
        &[backend("pg-test-1", B1, true)],
    ) else {
        return;
    };
    r.open(36500);
    r.open(36501);
    r.syn(36502);
    r.dp.leak_sessions(SVC, 40).expect("test hook");
    assert_eq!(r.conns(), (42, 42), "phantom sessions planted");
    let report = r.dp.gc(&Timeouts::default()).expect("gc");
    assert_eq!(
        report.reconciled, 2,
        "service and backend counter: {report:?}"
    );
    assert_eq!(r.conns(), (2, 2), "counters equal the established flows");
    // Nothing to correct the next time.
    assert_eq!(r.dp.gc(&Timeouts::default()).expect("gc").reconciled, 0);
    r.open(36503);
    assert_eq!(r.conns(), (3, 3));
}

// SNAT port allocation (issue 9, item 5).

/// One server behind the service, and a SNAT range of `ports`.
/// The program loaded with `ports` for SNAT on the pins in `dir` (adopting what is there), with
/// the backend's next hop set.
fn snat_load(dir: &std::path::Path, ports: std::ops::RangeInclusive<u16>) -> XdpDatapath {
    let mut opts = LoadOptions::new(dir, LB);
    opts.snat_ports = ports;
    opts.fib_fallback = false;
    opts.max_flows = 4096;
    let mut dp = XdpDatapath::load(opts).expect("load + verifier");
    dp.set_static_next_hop(
        B1,
        NextHop {
            ifindex: 0,
            mac: BACKEND_MAC,
            src_mac: LB_MAC,
        },
    );
    dp
}

fn snat_rig(test: &str, ports: std::ops::RangeInclusive<u16>) -> Option<Rig> {
    if !require_root(test) {
        return None;
    }
    let pins = PinDir::new("pkt");
    let mut dp = snat_load(pins.path(), ports);
    let spec = ServiceSpec {
        addrs: vec![VIP],
        port: 5433,
        algorithm: Algorithm::RoundRobin,
        maxconn: 0,
        shutdown_sessions: true,
    };
    dp.upsert_service(SVC, &spec).expect("service");
    dp.set_backends(SVC, &[backend("pg-test-1", B1, true)])
        .expect("backends");
    Some(Rig { dp, _pins: pins })
}

impl Rig {
    /// The server's segment to the SNAT address and port `snat_port`.
    fn backend_sends(&mut self, snat_port: u16, flags: u8) -> u32 {
        let mut t = Tcp::new((B1, 6432), (LB, snat_port), flags);
        t.src_mac = BACKEND_MAC;
        self.run(&t.frame()).0
    }

    /// A connection from client port `sport` through the handshake and a full close (the client's
    /// FIN first, as PostgreSQL clients close); returns its SNAT port.
    fn open_and_close(&mut self, sport: u16) -> u16 {
        let snat = self.syn(sport).sport;
        assert_eq!(self.backend_sends(snat, SYN | ACK), XDP_TX);
        let client = |r: &mut Self, flags| {
            r.run(&Tcp::new((CLIENT, sport), (VIP, 5433), flags).frame())
                .0
        };
        assert_eq!(client(self, ACK), XDP_TX);
        assert_eq!(client(self, FIN | ACK), XDP_TX);
        assert_eq!(self.backend_sends(snat, FIN | ACK), XDP_TX);
        assert_eq!(client(self, ACK), XDP_TX);
        snat
    }
}

#[test]
fn a_full_snat_range_refuses_a_syn_with_a_reset_at_once() {
    let Some(mut r) = snat_rig("snat_full", 41000..=41003) else {
        return;
    };
    let mut ports: Vec<u16> = (0..4).map(|i| r.open(42000 + i).sport).collect();
    ports.sort_unstable();
    assert_eq!(
        ports,
        vec![41000, 41001, 41002, 41003],
        "every port of the range used once"
    );
    for round in 0..2 {
        let mut t = Tcp::new((CLIENT, 42010), (VIP, 5433), SYN);
        t.seq = 7000;
        let (action, out) = r.run(&t.frame());
        assert_eq!(action, XDP_TX, "round {round}: the SYN is answered");
        let p = parse_verified(&out).expect("RST checksums");
        assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 5433, CLIENT, 42010));
        assert_eq!(
            (p.flags, p.seq, p.ack),
            (RST | ACK, 0, 7001),
            "round {round}"
        );
        assert_eq!((p.dst_mac, p.src_mac), (CLIENT_MAC, LB_MAC));
        // Live connections keep their ports however long they are idle.
        std::thread::sleep(std::time::Duration::from_millis(600));
    }
    assert_eq!(r.reason(Reason::RstSnatExhausted), 2);
    assert_eq!(r.reason(Reason::DropSnatExhausted), 0);
    let s = r.dp.service_stats(SVC).expect("stats");
    assert_eq!((s.rst_sent, s.syn_dropped, s.new_flows), (2, 0, 4));
    assert_eq!(r.dp.flow_count(), 4, "no flow for the refused SYN");
    // The established connections are untouched.
    let (action, out) = r.run(&Tcp::new((CLIENT, 42000), (VIP, 5433), ACK).frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(parse_verified(&out).expect("valid frame").dst, B1);
}

#[test]
fn a_syn_tried_again_from_the_same_client_port_gets_another_snat_port() {
    let Some(mut r) = snat_rig("snat_retry_ports", 41000..=41999) else {
        return;
    };
    // The client gives up (RST) and tries again from the same port: each attempt is a new flow,
    // and it must not be sent to the server on the 4-tuple it just reset.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let p = r.syn(42500);
        seen.push(p.sport);
        let (action, _) = r.run(&Tcp::new((CLIENT, 42500), (VIP, 5433), RST).frame());
        assert_eq!(action, XDP_TX, "the client's RST goes to the server");
    }
    let mut distinct = seen.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "SNAT ports of the attempts: {seen:?}"
    );
}

#[test]
fn ports_of_finished_connections_are_reused_after_half_a_second_of_quiet() {
    let Some(mut r) = snat_rig("snat_reuse", 41000..=41003) else {
        return;
    };
    let mut closed: Vec<u16> = (0..3).map(|i| r.open_and_close(43000 + i)).collect();
    closed.sort_unstable();
    // The fourth port: half closed (the client's FIN only) — the server may still send.
    let half = r.syn(43003).sport;
    assert_eq!(r.backend_sends(half, SYN | ACK), XDP_TX);
    let fin = Tcp::new((CLIENT, 43003), (VIP, 5433), FIN | ACK).frame();
    assert_eq!(r.run(&fin).0, XDP_TX);
    // Right after the close: not yet reusable, and not refused either — dropped, so that the
    // client's retransmission a second later finds the port.
    let syn = Tcp::new((CLIENT, 43100), (VIP, 5433), SYN).frame();
    assert_eq!(r.run(&syn).0, XDP_DROP);
    assert_eq!(r.reason(Reason::DropSnatExhausted), 1);
    assert_eq!(r.reason(Reason::RstSnatExhausted), 0);
    std::thread::sleep(std::time::Duration::from_millis(600));
    let mut reused = Vec::new();
    for sport in [43100, 43101, 43102] {
        let p = r.syn(sport);
        assert!(
            closed.contains(&p.sport),
            "{} is not a closed connection's port",
            p.sport
        );
        reused.push(p.sport);
        assert_eq!(r.backend_sends(p.sport, SYN | ACK), XDP_TX);
    }
    reused.sort_unstable();
    assert_eq!(reused, closed, "each finished connection's port taken once");
    // The server's answers now reach the new clients, and the old flows are gone.
    assert_eq!(r.dp.flow_count(), 4);
    // The half-closed connection keeps its port: the range is full of live connections now.
    let (action, out) = r.run(&Tcp::new((CLIENT, 43103), (VIP, 5433), SYN).frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(parse_verified(&out).expect("RST").flags, RST | ACK);
    assert_eq!(r.reason(Reason::RstSnatExhausted), 1);
}

#[test]
fn snat_ports_after_an_adopting_restart_follow_the_last_one_given() {
    let Some(mut r) = snat_rig("snat_cursor_adopted", 41000..=41999) else {
        return;
    };
    let next_of = |p: u16| 41000 + (p - 41000 + 1) % 1000;
    let first: Vec<u16> = (0..3).map(|i| r.open_and_close(44100 + i)).collect();
    // The agent restarts (a crash, an upgrade) and a new program adopts the pinned maps. Its SNAT
    // cursors must be the old ones: a new cursor starts at a random port, maybe one a server still
    // holds in TIME_WAIT from a connection it closed first (see the test below).
    let dp = snat_load(r._pins.path(), 41000..=41999);
    assert!(dp.adopted(), "the second load did not adopt the pins");
    r.dp = dp;
    let next: Vec<u16> = (0..2).map(|i| r.open_and_close(44110 + i)).collect();
    assert_eq!(
        next,
        vec![next_of(first[2]), next_of(next_of(first[2]))],
        "after the restart, the ports after the last one given ({first:?}), not at random"
    );
}

#[test]
fn snat_ports_after_an_idle_server_follow_the_last_one_given_not_a_random_start() {
    use pgsvc::datapath::Timeouts;
    let Some(mut r) = snat_rig("snat_cursor_kept", 41000..=41999) else {
        return;
    };
    let next_of = |p: u16| 41000 + (p - 41000 + 1) % 1000;
    let first: Vec<u16> = (0..3).map(|i| r.open_and_close(44000 + i)).collect();
    assert_eq!(
        (first[1], first[2]),
        (next_of(first[0]), next_of(first[1])),
        "in order from the cursor: {first:?}"
    );
    // The server then takes no connection for a while (a replica, until a switchover promotes
    // it): the GC collects the finished connections' ports, but the allocation cursor (its own
    // array slot, which the GC never collects) stays. A new cursor would start at a random port, maybe one the server still holds in TIME_WAIT from a
    // connection it closed first; a SYN reaching that state from another client port (another
    // timestamp and sequence) is often answered with an ACK of the old connection, and the
    // client loses its first SYN, often a whole second: the writes that failed one at a time
    // after recovering from a switchover in the 100-switchover soak.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = Timeouts {
        syn_ns: 0,
        closing_ns: 0,
        idle_ns: 3600 * 1_000_000_000,
    };
    let report = r.dp.gc(&t).expect("gc");
    assert_eq!(r.table("nat_rev"), 0, "the ports are free: {report:?}");
    let next: Vec<u16> = (0..2).map(|i| r.open_and_close(44010 + i)).collect();
    assert_eq!(
        next,
        vec![next_of(first[2]), next_of(next_of(first[2]))],
        "the ports after the last one given ({first:?}), not at random"
    );
}
