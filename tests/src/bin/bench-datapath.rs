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
//!
//! Every path is also shown as the program's own cost: its gross figure minus the median of an
//! empty program (XDP_PASS only, the harness's floor). The own cost is compared with the budget in
//! `bench/budget.json` and with the previous recording in the `--out` file; the recording carries
//! the commit, whether the tree was dirty, and the UTC time, so a figure can be traced to its code.

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
/// The case whose median is subtracted from every other to give the program's own cost.
const FLOOR: &str = "empty_program_floor";
/// Per-path budgets of the program's own cost (ns per packet), relative to the workspace root.
const BUDGET_FILE: &str = "bench/budget.json";

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
    // Complete the handshake (the backend's SYN-ACK, the client's ACK): only then is the flow
    // established, and the measured packets take the established path.
    let synack = Tcp::new((VIP, 5433), (CLIENT, CLIENT_PORT), SYN | ACK).frame();
    let ack = Tcp::new((CLIENT, CLIENT_PORT), (VIP, 5433), ACK).frame();
    for (what, frame) in [("SYN-ACK", synack), ("ACK", ack)] {
        let r = dp.run_program(&frame, 1)?;
        if r.action != 3 {
            bail!("setup {what} was not transmitted (action {})", r.action);
        }
    }
    if dp.flow_tables().first().map(|t| t.1) != Some(1) {
        bail!("setup handshake did not establish the flow");
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
            name: FLOOR,
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
    let budget = read_budget(BUDGET_FILE)?;
    let previous: Option<serde_json::Value> = out
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok());
    let source = source_state();
    let recorded_at = utc_now();
    println!(
        "pgsvc datapath, BPF_PROG_TEST_RUN, repeat {repeat} x {rounds} rounds, kernel {kernel}, {cpu}"
    );
    println!(
        "commit {}{}, {recorded_at}",
        source.commit,
        if source.dirty { " (dirty tree)" } else { "" }
    );
    match &previous {
        Some(p) => println!(
            "previous recording: commit {}{}, {}",
            p["commit"].as_str().unwrap_or("not recorded"),
            if p["dirty"].as_bool() == Some(true) {
                " (dirty tree)"
            } else {
                ""
            },
            p["recorded_at"].as_str().unwrap_or("time not recorded")
        ),
        None => println!("previous recording: none"),
    }
    let mut floor = cases
        .iter()
        .find(|c| c.name == FLOOR)
        .map(|c| c.ns.clone())
        .context("no floor case measured")?;
    let floor = median(&mut floor);
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>8}   check",
        "path", "gross", "min", "own", "budget", "prev own"
    );
    let mut json_cases = serde_json::Map::new();
    let mut over = Vec::new();
    for c in &mut cases {
        let min = c.ns.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(&mut c.ns);
        let own = (c.name != FLOOR).then(|| (med - floor).max(0.0));
        let limit = budget.get(c.name).copied();
        let prev = previous
            .as_ref()
            .filter(|_| c.name != FLOOR)
            .and_then(|p| own_cost(p, c.name))
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let verdict = match (own, limit) {
            (Some(own), Some(limit)) if own > limit => {
                over.push(format!(
                    "{} (own {own:.1} ns > budget {limit:.0} ns)",
                    c.name
                ));
                "OVER BUDGET"
            }
            (Some(_), Some(_)) => "within budget",
            _ => "",
        };
        println!(
            "{:<22} {:>8.1} {:>8.1} {:>8} {:>8} {:>8}   {} {}",
            c.name,
            med,
            min,
            own.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
            limit.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
            prev,
            c.check,
            verdict
        );
        let mut v = serde_json::json!({
            "ns_per_packet_median": med,
            "ns_per_packet_min": min,
            "rounds_ns": c.ns,
            "check": c.check,
        });
        if let Some(own) = own {
            v["own_ns_median"] = serde_json::json!(own);
        }
        if let (Some(own), Some(limit)) = (own, limit) {
            v["budget_own_ns"] = serde_json::json!(limit);
            v["within_budget"] = serde_json::json!(own <= limit);
        }
        json_cases.insert(c.name.to_owned(), v);
    }
    println!("own = gross median − {FLOOR} median ({floor:.1} ns); budgets from {BUDGET_FILE}");
    if over.is_empty() {
        println!("budget: every path within its budget");
    } else {
        println!("budget: OVER on {}", over.join(", "));
    }
    let doc = serde_json::json!({
        "benchmark": "datapath",
        "method": "BPF_PROG_TEST_RUN with repeat; kernel-measured mean ns per run",
        "commit": source.commit,
        "dirty": source.dirty,
        "recorded_at": recorded_at,
        "repeat": repeat,
        "rounds": rounds,
        "kernel": kernel,
        "cpu": cpu,
        "floor_ns_median": floor,
        "budget_file": BUDGET_FILE,
        "over_budget": over,
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

/// `{"own_ns": {"path": ns, ...}}` from the budget file.
fn read_budget(path: &str) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("reading the datapath budget {path} (run from the workspace root)")
    })?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?;
    let table = doc["own_ns"]
        .as_object()
        .with_context(|| format!("{path}: no \"own_ns\" object"))?;
    table
        .iter()
        .map(|(k, v)| {
            v.as_f64()
                .map(|n| (k.clone(), n))
                .with_context(|| format!("{path}: own_ns.{k} is not a number"))
        })
        .collect()
}

/// A path's own cost in an earlier recording (recordings before `own_ns_median` existed: gross −
/// their floor).
fn own_cost(doc: &serde_json::Value, name: &str) -> Option<f64> {
    let r = &doc["results"][name];
    r["own_ns_median"].as_f64().or_else(|| {
        let floor = doc["results"][FLOOR]["ns_per_packet_median"].as_f64()?;
        Some((r["ns_per_packet_median"].as_f64()? - floor).max(0.0))
    })
}

struct Source {
    commit: String,
    dirty: bool,
}

/// The commit measured and whether the work tree differed from it (untracked files included).
fn source_state() -> Source {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(commit) => Source {
            commit,
            dirty: git(&["status", "--porcelain"]).is_none_or(|s| !s.is_empty()),
        },
        None => Source {
            commit: "unknown (not a git checkout)".into(),
            dirty: true,
        },
    }
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_from_unix(secs)
}

/// Seconds since 1970 as an RFC 3339 UTC time (days → civil date: the proleptic Gregorian calendar).
fn utc_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(utc_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_from_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_from_unix(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(utc_from_unix(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn own_cost_of_old_and_new_recordings() {
        let old = serde_json::json!({"results": {
            "empty_program_floor": {"ns_per_packet_median": 25.0},
            "established_forward": {"ns_per_packet_median": 73.0}}});
        assert_eq!(own_cost(&old, "established_forward"), Some(48.0));
        let new = serde_json::json!({"results": {
            "established_forward": {"ns_per_packet_median": 73.0, "own_ns_median": 40.0}}});
        assert_eq!(own_cost(&new, "established_forward"), Some(40.0));
        assert_eq!(own_cost(&new, "new_flow_syn"), None);
    }
}
