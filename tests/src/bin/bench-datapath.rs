//! `bench-datapath`: ns per packet of the XDP program through BPF_PROG_TEST_RUN (repeat ≥ 1e6) for
//! the four paths that matter: new flow (SYN), established forward, established reverse, and
//! non-service pass. Prints a table and writes JSON (`--out FILE`).
//!
//! With `repeat`, the kernel runs the program again over the frame the previous round left behind.
//! Each case is therefore set up so that the program's output is the next round's input on the same
//! path:
//! - established forward/reverse: the service's only backend is the VIP:port itself and the SNAT
//!   address:port range is exactly the client's address:port, so translation maps the 4-tuple onto
//!   itself and every round hits the same established flow;
//! - new flow: 256 services (16 VIPs × 16 ports) whose backends are 16 of those same service
//!   endpoints; each round's output is a SYN from a fresh SNAT port to another service, i.e. a new
//!   flow — 1e6 distinct flows in one run, with the SNAT port space (256 × 59.5k) at most 7 % used.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, bail};
use pgsvc::datapath::{BackendSpec, Datapath, LoadOptions, NextHop, ServiceSpec, XdpDatapath};
use pgsvc_common::{Algorithm, Reason};
use pgsvc_tests::{
    guard::PinDir,
    packet::{ACK, BACKEND_MAC, LB_MAC, PSH, SYN, Tcp},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const CLIENT_PORT: u16 = 41000;

fn load(
    pins: &PinDir,
    snat: Ipv4Addr,
    ports: std::ops::RangeInclusive<u16>,
    flows: u32,
) -> anyhow::Result<XdpDatapath> {
    let mut opts = LoadOptions::new(pins.path(), snat);
    opts.snat_ports = ports;
    opts.fib_fallback = false;
    opts.max_flows = flows;
    Ok(XdpDatapath::load(opts)?)
}

fn hop() -> NextHop {
    NextHop {
        ifindex: 0,
        mac: BACKEND_MAC,
        src_mac: LB_MAC,
    }
}

fn backend(name: &str, addr: Ipv4Addr, port: u16) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        addr,
        port,
        up: true,
        active: true,
        weight: 100,
        maxconn: 0,
    }
}

fn count(dp: &XdpDatapath, r: Reason) -> u64 {
    dp.reason_counts()
        .into_iter()
        .find(|(x, _)| *x == r)
        .map_or(0, |(_, n)| n)
}

/// A datapath whose translation is the identity on (CLIENT:CLIENT_PORT ↔ VIP:5433).
fn identity_rig(pins: &PinDir) -> anyhow::Result<XdpDatapath> {
    let mut dp = load(pins, CLIENT, CLIENT_PORT..=CLIENT_PORT, 1024)?;
    dp.set_static_next_hop(VIP, hop());
    let svc = ServiceSpec {
        addrs: vec![VIP],
        port: 5433,
        algorithm: Algorithm::RoundRobin,
        maxconn: 0,
        shutdown_sessions: true,
    };
    dp.upsert_service("bench", &svc)?;
    dp.set_backends("bench", &[backend("self", VIP, 5433)])?;
    // Create the flow.
    let syn = Tcp::new((CLIENT, CLIENT_PORT), (VIP, 5433), SYN).frame();
    let r = dp.run_program(&syn, 1)?;
    if r.action != 3 {
        bail!("setup SYN was not transmitted (action {})", r.action);
    }
    Ok(dp)
}

struct Case {
    name: &'static str,
    ns: Vec<f64>,
    check: String,
}

fn measure(dp: &mut XdpDatapath, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let r = dp.run_program(frame, repeat)?;
    Ok(r.duration.as_nanos() as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut out = None;
    let mut repeat: u32 = 1_000_000;
    let mut rounds = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next(),
            "--repeat" => repeat = args.next().context("--repeat N")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds N")?.parse()?,
            other => bail!(
                "unknown argument {other} (usage: bench-datapath [--out FILE] [--repeat N] [--rounds N])"
            ),
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-datapath needs root (BPF_PROG_TEST_RUN)");
    }
    let mut cases = Vec::new();

    // Established forward and reverse.
    {
        let pins = PinDir::new("bench");
        let mut dp = identity_rig(&pins)?;
        let mut fwd = Tcp::new((CLIENT, CLIENT_PORT), (VIP, 5433), PSH | ACK);
        fwd.payload = vec![b'q'; 64];
        let fwd = fwd.frame();
        let mut rev = Tcp::new((VIP, 5433), (CLIENT, CLIENT_PORT), PSH | ACK);
        rev.payload = vec![b'r'; 64];
        let rev = rev.frame();
        let (f0, r0) = (
            count(&dp, Reason::FwdEstablished),
            count(&dp, Reason::Reverse),
        );
        let mut fns = Vec::new();
        let mut rns = Vec::new();
        for _ in 0..rounds {
            fns.push(measure(&mut dp, &fwd, repeat)?);
            rns.push(measure(&mut dp, &rev, repeat)?);
        }
        let (f1, r1) = (
            count(&dp, Reason::FwdEstablished) - f0,
            count(&dp, Reason::Reverse) - r0,
        );
        let want = u64::from(repeat) * rounds as u64;
        cases.push(Case {
            name: "established_forward",
            ns: fns,
            check: format!("{f1}/{want} rounds counted fwd_established"),
        });
        cases.push(Case {
            name: "established_reverse",
            ns: rns,
            check: format!("{r1}/{want} rounds counted reverse"),
        });
        if f1 != want || r1 != want {
            bail!("the established cases did not stay on their path ({f1}, {r1} of {want})");
        }
        let _ = dp.detach_and_unpin();
    }

    // Non-service pass.
    {
        let pins = PinDir::new("bench");
        let mut dp = identity_rig(&pins)?;
        let other = Tcp::new((CLIENT, CLIENT_PORT), (VIP, 22), PSH | ACK).frame();
        let before = count(&dp, Reason::PassNotService);
        let mut ns = Vec::new();
        for _ in 0..rounds {
            ns.push(measure(&mut dp, &other, repeat)?);
        }
        let n = count(&dp, Reason::PassNotService) - before;
        cases.push(Case {
            name: "non_service_pass",
            ns,
            check: format!("{n} passed"),
        });
        let _ = dp.detach_and_unpin();
    }

    // New flows: a chain of SYNs across 32 VIPs (one fresh rig per round: the flows stay).
    {
        let mut ns = Vec::new();
        let mut created = 0;
        for _ in 0..rounds {
            let pins = PinDir::new("bench");
            let snat = Ipv4Addr::new(198, 18, 1, 1);
            let flows = (repeat + repeat / 2).max(1024);
            let mut dp = load(&pins, snat, 6000..=65535, flows)?;
            let endpoints: Vec<(Ipv4Addr, u16)> = (0..256u32)
                .map(|i| {
                    (
                        Ipv4Addr::new(198, 18, 2, 1 + (i / 16) as u8),
                        5433 + (i % 16) as u16,
                    )
                })
                .collect();
            for (a, _) in &endpoints {
                dp.set_static_next_hop(*a, hop());
            }
            for (k, (addr, port)) in endpoints.iter().enumerate() {
                let name = format!("chain{k}");
                let svc = ServiceSpec {
                    addrs: vec![*addr],
                    port: *port,
                    algorithm: Algorithm::RoundRobin,
                    maxconn: 0,
                    shutdown_sessions: true,
                };
                dp.upsert_service(&name, &svc)?;
                let backends: Vec<BackendSpec> = (0..16)
                    .map(|j| {
                        let (a, p) = endpoints[(k + 17 * j) % endpoints.len()];
                        backend(&format!("e{j}"), a, p)
                    })
                    .collect();
                dp.set_backends(&name, &backends)?;
            }
            let vips = [endpoints[0].0];
            let syn = Tcp::new((snat, 1024), (vips[0], 5433), SYN).frame();
            let before = count(&dp, Reason::FwdNew);
            ns.push(measure(&mut dp, &syn, repeat)?);
            created += count(&dp, Reason::FwdNew) - before;
            let _ = dp.detach_and_unpin();
        }
        let want = u64::from(repeat) * rounds as u64;
        cases.push(Case {
            name: "new_flow_syn",
            ns,
            check: format!("{created}/{want} rounds created a flow"),
        });
        if created < want * 99 / 100 {
            bail!("the SYN chain stopped creating flows ({created} of {want})");
        }
    }

    // The harness's own floor: an XDP program that only returns XDP_PASS.
    {
        let frame = Tcp::new((CLIENT, CLIENT_PORT), (VIP, 22), PSH | ACK).frame();
        let mut ns = Vec::new();
        for _ in 0..rounds {
            ns.push(pgsvc::datapath::pass::baseline_run(&frame, repeat)?.as_nanos() as f64);
        }
        cases.push(Case {
            name: "empty_program_floor",
            ns,
            check: "XDP_PASS only (harness overhead)".into(),
        });
    }

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "pgsvc datapath, BPF_PROG_TEST_RUN, repeat {repeat} x {rounds} rounds, kernel {kernel}, {cpu}"
    );
    println!(
        "{:<22} {:>10} {:>10}   check",
        "path", "median ns", "min ns"
    );
    let mut json_cases = serde_json::Map::new();
    for c in &mut cases {
        let min = c.ns.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(&mut c.ns);
        println!("{:<22} {:>10.1} {:>10.1}   {}", c.name, med, min, c.check);
        json_cases.insert(
            c.name.to_owned(),
            serde_json::json!({ "ns_per_packet_median": med, "ns_per_packet_min": min, "rounds_ns": c.ns, "check": c.check }),
        );
    }
    let doc = serde_json::json!({
        "benchmark": "datapath",
        "method": "BPF_PROG_TEST_RUN with repeat; kernel-measured mean ns per run",
        "repeat": repeat,
        "rounds": rounds,
        "kernel": kernel,
        "cpu": cpu,
        "budget_established_ns": 60,
        "results": json_cases,
    });
    if let Some(path) = out {
        if let Some(dir) = std::path::Path::new(&path).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {path}"))?;
        println!("wrote {path}");
    }
    let _ = Duration::ZERO;
    Ok(())
}
