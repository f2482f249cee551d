//! netns tier, hostile traffic against the flow tables: a spoofed-SYN flood from sources that do not
//! exist (raw frames written from the client host with an AF_PACKET socket), and a churn of short
//! connections many times the size of `--max-flows`. Half-open flows must not count as sessions nor
//! displace established ones, and the session counters must equal the established flows.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use pgsvc_tests::{
    agent_rig::{AgentRig, VIP, inventory},
    netns::Conn,
    packet::{SYN, Tcp},
    require_root,
};

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

/// Fast checks and a per-server maxconn of 100: the primary's limit the flood is measured against.
const OPTS: &str = "inter 1s fastinter 500ms downinter 1s rise 2 fall 2 on-marked-down shutdown-sessions slowstart 0s maxconn 100 weight 100";
const MAXCONN: usize = 100;

fn mac_of(ns: &pgsvc_tests::guard::NetNs) -> [u8; 6] {
    let text = ns.exec(&["cat", "/sys/class/net/eth0/address"]);
    let mut mac = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).expect("MAC octet");
    }
    mac
}

/// An AF_PACKET socket bound to `eth0` of the calling thread's namespace, for writing whole frames.
struct RawSender {
    fd: i32,
    addr: libc::sockaddr_ll,
}

impl RawSender {
    fn open(dst_mac: [u8; 6]) -> Self {
        // SAFETY: plain socket calls; the fd is owned by the returned value and closed on drop.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            assert!(ifindex != 0, "eth0 not found in the client namespace");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&dst_mac);
            Self { fd, addr }
        }
    }

    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: valid buffer and address for the call's duration.
        let n = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const self.addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        n == frame.len() as isize
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.fd) };
    }
}

/// Sends `count` SYNs to VIP:5433 from addresses in 198.19.0.0/16 that no host has, spread over
/// about `over`; returns how many frames were written. Runs in the client's namespace.
fn spoofed_syns(
    rig: &AgentRig,
    count: usize,
    over: Duration,
    first: usize,
) -> std::thread::JoinHandle<usize> {
    let client_mac = mac_of(&rig.topo.host(0).ns);
    let lb_mac = mac_of(&rig.topo.host(1).ns);
    rig.client.run(move |_| {
        // Threads started here share the client's namespace.
        std::thread::spawn(move || {
            let tx = RawSender::open(lb_mac);
            let batch = 20;
            let pause = over / (count / batch).max(1) as u32;
            let mut sent = 0;
            for i in first..first + count {
                let src = Ipv4Addr::new(198, 19, (i / 200 % 250) as u8, (i % 200 + 1) as u8);
                let mut t = Tcp::new((src, 1024 + (i % 60000) as u16), (VIP, 5433), SYN);
                t.seq = i as u32;
                t.src_mac = client_mac;
                t.dst_mac = lb_mac;
                if tx.send(&t.frame()) {
                    sent += 1;
                }
                if (i + 1) % batch == 0 {
                    std::thread::sleep(pause);
                }
            }
            sent
        })
    })
}

fn service(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["services"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in /status: {status}"))
}

/// Sum of `current_sessions` over every service.
fn sessions(status: &serde_json::Value) -> u64 {
    status["services"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|s| s["current_sessions"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn table(status: &serde_json::Value, name: &str) -> (u64, u64) {
    let t = status["datapath"]["tables"]
        .as_array()
        .and_then(|v| v.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("table {name} not in /status: {}", status["datapath"]));
    (
        t["entries"].as_u64().unwrap_or(0),
        t["capacity"].as_u64().unwrap_or(0),
    )
}

fn primary_sessions(rig: &AgentRig) -> u64 {
    rig.server_status("pg-test-primary", "pg-test-1")["current_sessions"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[test]
fn a_spoofed_syn_flood_of_ten_times_maxconn_costs_no_session() {
    if !require_root("spoofed_syn_flood") {
        return;
    }
    let rig = AgentRig::start(&inventory(OPTS, ""), stub());
    // Three idle clients hold sessions through the flood: the true value.
    let mut held: Vec<Conn> = (0..3)
        .map(|_| rig.connect(5433).expect("connect before the flood"))
        .collect();
    rig.wait_for("3 sessions on the primary", Duration::from_secs(5), |r| {
        primary_sessions(r) == 3
    });
    let flood = 10 * MAXCONN;
    let flood_time = Duration::from_secs(4);
    let flooding = spoofed_syns(&rig, flood, flood_time, 0);
    // Legitimate connections meanwhile, each given 2 s (a SYN dropped once is retried after 1 s).
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let legit = rig.client.run(move |_| {
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop2.load(Ordering::Relaxed) {
                match Conn::open_timeout(SocketAddr::from((VIP, 5433)), Duration::from_secs(2)) {
                    Ok(c) if c.server == "pg-test-1:6432" => {
                        ok += 1;
                        c.abort();
                    }
                    Ok(c) => failed.push(format!("landed on {}", c.server)),
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    });
    let sent = flooding.join().expect("flood thread");
    let flood_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = legit.join().expect("client thread");
    let total = ok + failed.len();
    eprintln!("flood: {sent} spoofed SYNs; legitimate connections {ok}/{total} succeeded");
    assert_eq!(sent, flood, "every spoofed frame written");
    assert!(
        ok * 100 >= total * 99,
        "{ok}/{total} legitimate connections succeeded during the flood; failures: {failed:?}"
    );
    assert!(
        total >= 20,
        "too few legitimate attempts ({total}) to judge"
    );
    let back = rig.wait_for(
        "current_sessions back to the 3 held connections",
        Duration::from_secs(10),
        |r| primary_sessions(r) == 3 && sessions(&r.status()) == 3,
    );
    eprintln!(
        "current_sessions true {:?} after the flood",
        flood_end.elapsed().min(back + Duration::from_millis(100))
    );
    for c in &mut held {
        assert_eq!(c.echo(b"still here").expect("echo"), b"still here");
    }
    let s = rig.status();
    assert!(
        service(&s, "pg-test-primary")["current_sessions"] == 3,
        "{}",
        s["services"]
    );
}

#[test]
fn established_flows_survive_churn_and_a_flood_with_a_small_table() {
    if !require_root("small_table_churn") {
        return;
    }
    let rig = AgentRig::start_with(&inventory(OPTS, ""), stub(), &["--max-flows", "1024"]);
    let mut idle = rig.connect(5433).expect("connect the idle client");
    assert_eq!(idle.echo(b"ping").expect("echo"), b"ping");
    // Churn: 20 × the table in short connections from 4 threads, each closed with a RST.
    let churn = 20 * 1024;
    let threads = 4;
    let handles = rig.client.run(move |_| {
        (0..threads)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut failed = 0usize;
                    for _ in 0..churn / threads {
                        match Conn::open_timeout(
                            SocketAddr::from((VIP, 5433)),
                            Duration::from_secs(3),
                        ) {
                            Ok(c) => c.abort(),
                            Err(_) => failed += 1,
                        }
                    }
                    failed
                })
            })
            .collect::<Vec<_>>()
    });
    let t0 = Instant::now();
    let failed: usize = handles
        .into_iter()
        .map(|h| h.join().expect("churn thread"))
        .sum();
    eprintln!(
        "churn: {churn} connections in {:?}, {failed} failed",
        t0.elapsed()
    );
    assert_eq!(
        idle.echo(b"after churn")
            .expect("idle connection after the churn"),
        b"after churn"
    );
    let sent = spoofed_syns(&rig, 4 * 1024, Duration::from_secs(2), 100_000)
        .join()
        .expect("flood thread");
    assert_eq!(sent, 4 * 1024);
    assert_eq!(
        idle.echo(b"after flood")
            .expect("idle connection after the flood"),
        b"after flood"
    );
    // Counters equal the established flows: the idle connection only.
    rig.wait_for(
        "session counters equal to the established flows",
        Duration::from_secs(15),
        |r| {
            let s = r.status();
            let (established, capacity) = table(&s, "established");
            capacity == 1024 && established == 1 && sessions(&s) == 1 && primary_sessions(r) == 1
        },
    );
    assert!(
        failed * 100 <= churn,
        "{failed} of {churn} short connections failed"
    );
}
