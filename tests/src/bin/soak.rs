//! `cargo xtask soak [--switchovers N]`: N consecutive switchovers of the real-cluster sandbox with
//! pgsvc in front and the writer probe (a new connection every 50 ms, one committed row each) through
//! the primary service, 5433.
//!
//! Each switchover alternates between pg-test-1 and pg-test-2 and starts only once the cluster is
//! healthy again (pgsandbox waits for the demoted primary to stream and every pgbouncer to serve).
//! Afterwards every acknowledged row is looked up on the final primary. The run passes when all N
//! switchovers completed, no acknowledged row is missing or attributed to another node, and no write
//! was acknowledged by a node that was not the primary of its moment (in recovery, or the old
//! primary after the new one answered `/primary`, or the new one before the switchover began).
//!
//! Writes `--out` (bench/results/soak.json: counts, per-switchover windows and their median/p95/max,
//! commit, dirty flag, time) and the soak section of BENCHMARKS.md. The whole run is bounded by
//! `--time-limit-min`. Exit status: 0 passed, 1 failed (results still written when the probe ran),
//! 2 bad arguments, 130 interrupted. SIGINT/SIGTERM tear everything down.

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use pgsvc_tests::sandbox::{
    Attempt, Failover, Member, Pgsvc, SOAK_BEGIN, SOAK_END, Sandbox, epoch, pgsvc_binary,
    preflight, repo_root, splice_section,
};
use serde_json::{Value, json};

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

const USAGE: &str = "usage: soak [--switchovers N] [--time-limit-min M] [--out FILE] [--md FILE]

N switchovers (default 100) of the real-cluster sandbox under the writer probe through pgsvc's
port 5433; asserts 0 lost acknowledged rows and 0 writes on a non-primary. Results in --out
(default bench/results/soak.json) and the soak section of --md (default BENCHMARKS.md). The run
fails when it takes longer than M minutes (default 40). Needs root.";

#[derive(Debug)]
struct Opts {
    switchovers: usize,
    time_limit: Duration,
    out: PathBuf,
    md: PathBuf,
}

fn parse_args(args: &[String]) -> Result<Option<Opts>, String> {
    let root = repo_root();
    let mut o = Opts {
        switchovers: 100,
        time_limit: Duration::from_secs(40 * 60),
        out: root.join("bench/results/soak.json"),
        md: root.join("BENCHMARKS.md"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--switchovers" => {
                let v = value(a)?;
                o.switchovers = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| format!("--switchovers {v:?}: expected 1..=10000"))?;
            }
            "--time-limit-min" => {
                let v = value(a)?;
                let m: u64 = v
                    .parse()
                    .ok()
                    .filter(|m| (1..=24 * 60).contains(m))
                    .ok_or_else(|| format!("--time-limit-min {v:?}: expected 1..=1440"))?;
                o.time_limit = Duration::from_secs(m * 60);
            }
            "--out" => o.out = absolute(&value(a)?),
            "--md" => o.md = absolute(&value(a)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(o))
}

fn absolute(p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map_or(p.clone(), |d| d.join(&p))
    }
}

fn say(line: &str) {
    println!("[{}] soak: {line}", utc_now());
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The first three fields of /proc/loadavg.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One completed switchover and what the probe saw around it.
#[derive(Debug, Clone)]
struct Round {
    f: Failover,
    /// When pgsvc logged the new leader UP in pg-test-primary (epoch), if it did.
    pgsvc_up_t: Option<f64>,
}

/// What the run produced before the analysis.
struct Run {
    /// `git rev-parse HEAD` and whether tracked files differed from it, when the run began.
    commit: Option<String>,
    dirty: Option<bool>,
    /// /proc/loadavg when the run began and ended (the machine may be shared).
    load: [String; 2],
    p0: Member,
    rounds: Vec<Round>,
    aborted: Option<String>,
    /// When the switchover that failed began (epoch): what happened after it (perhaps that
    /// switchover, perhaps a failover Patroni made on its own) has no timeline to check against.
    aborted_at: Option<f64>,
    attempts: Vec<Attempt>,
    summary: Value,
    started: f64,
    ended: f64,
}

fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sandbox up, pgsvc in front, the probe, N switchovers. Errors before the probe ran are returned;
/// later ones end the loop and are recorded in `aborted`.
fn soak(o: &Opts, sb: &mut Sandbox, t0: Instant) -> anyhow::Result<Run> {
    let agent: Pgsvc = sb.start_pgsvc(&[]).context("starting pgsvc")?;
    say(&format!("pgsvc (pid {}) is ready", agent.pid()));
    sb.wait_writes(5433, 60)
        .context("no write through 5433 within 60 s of pgsvc being ready")?;
    let p0 = sb.leader().context("finding the primary")?;
    let started = epoch();
    let commit = git(&["rev-parse", "HEAD"]);
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    let load_start = loadavg();
    let mut probe = sb.probe(5433, "soak", false, o.time_limit + Duration::from_secs(60))?;
    probe
        .wait_success_on(p0.addr, started - 1.0, Duration::from_secs(30))
        .context("no write through the probe within 30 s")?;
    say(&format!(
        "writer probe commits on {} through 5433; {} switchovers follow",
        p0.name, o.switchovers
    ));
    let mut rounds: Vec<Round> = Vec::new();
    let mut aborted = None;
    let mut aborted_at = None;
    for i in 1..=o.switchovers {
        let step_t = epoch();
        let step = (|| -> anyhow::Result<Round> {
            check_stop()?;
            if t0.elapsed() > o.time_limit {
                bail!(
                    "time limit of {} min reached after {} switchovers",
                    o.time_limit.as_secs() / 60,
                    i - 1
                );
            }
            let f = sb.switchover()?;
            probe
                .wait_success_on(f.new.addr, f.event_t, Duration::from_secs(60))
                .with_context(|| {
                    format!(
                        "writes did not resume on {} within 60 s of the switchover",
                        f.new.name
                    )
                })?;
            let pgsvc_up_t = agent
                .log_times(&format!("pg-test-primary/{} is UP", f.new.name))
                .into_iter()
                .find(|t| *t >= f.event_t);
            Ok(Round { f, pgsvc_up_t })
        })();
        match step {
            Ok(r) => {
                say(&format!(
                    "switchover {i}/{}: {} -> {}, promoted after {:.2}s ({:.0}s into the run)",
                    o.switchovers,
                    r.f.old.name,
                    r.f.new.name,
                    r.f.promotion_s(),
                    t0.elapsed().as_secs_f64()
                ));
                rounds.push(r);
            }
            Err(e) => {
                say(&format!("switchover {i} failed: {e:#}"));
                aborted = Some(format!("switchover {i}: {e:#}"));
                aborted_at = Some(step_t);
                break;
            }
        }
    }
    // the last switchover's tail, then the verdict on every acknowledged row
    std::thread::sleep(Duration::from_secs(2));
    probe.stop();
    let ended = epoch();
    let attempts = probe.attempts();
    // the rows are looked up through 5433: after an aborted switchover that may take a while
    sb.wait_writes(5433, 120)
        .context("no write through 5433 to verify the acknowledged rows with")?;
    let summary = probe.summary().context("writer_probe.py summary")?;
    drop(agent);
    Ok(Run {
        commit,
        dirty,
        load: [load_start, loadavg()],
        p0,
        rounds,
        aborted,
        aborted_at,
        attempts,
        summary,
        started,
        ended,
    })
}

/// Why an acknowledged write came from a node that was not the primary of its moment, if it did.
/// The primary before switchover k+1 is the new leader of switchover k (p0 before the first); it
/// may acknowledge a write that began before switchover k+1 only until the next leader answered
/// `/primary`, and the next one only writes that began after its switchover started.
fn non_primary_write(a: &Attempt, p0: Member, rounds: &[Round]) -> Option<String> {
    if !a.ok {
        return None;
    }
    if a.in_recovery != Some(false) {
        return Some(format!(
            "seq {} acknowledged by {:?} in recovery ({:?})",
            a.seq, a.addr, a.in_recovery
        ));
    }
    let addr = a.addr.as_deref().unwrap_or("?");
    let k = rounds.iter().filter(|r| r.f.event_t <= a.t0).count();
    let current = if k == 0 { p0 } else { rounds[k - 1].f.new };
    let ok_current = addr == current.addr.to_string()
        && rounds.get(k).is_none_or(|next| a.t1 <= next.f.promoted_t);
    let ok_previous =
        k > 0 && addr == rounds[k - 1].f.old.addr.to_string() && a.t1 <= rounds[k - 1].f.promoted_t;
    if ok_current || ok_previous {
        None
    } else {
        Some(format!(
            "seq {} (t0 {:.3}, t1 {:.3}) acknowledged by {addr}; the primary was {} after {} switchover(s)",
            a.seq, a.t0, a.t1, current.name, k
        ))
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

fn stats(values: &[f64]) -> Value {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let r3 = |x: Option<f64>| x.map(|x| (x * 1000.0).round() / 1000.0);
    json!({
        "n": v.len(),
        "median": r3(percentile(&v, 50.0)),
        "p95": r3(percentile(&v, 95.0)),
        "max": r3(v.last().copied()),
        "min": r3(v.first().copied()),
    })
}

fn round_events(summary: &Value) -> Vec<Value> {
    summary["events"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|e| {
                    e["event"]
                        .as_str()
                        .is_some_and(|w| w.starts_with("switchover"))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The result document and whether the run passed.
fn analyse(o: &Opts, run: &Run) -> (Value, bool) {
    let events = round_events(&run.summary);
    let mut per = Vec::new();
    let (mut windows, mut gaps, mut promotions, mut detects) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut unrecovered = 0;
    for (i, r) in run.rounds.iter().enumerate() {
        // the summary's event of this switchover: the one recorded at its event time
        let ev = events
            .iter()
            .find(|e| {
                e["event_time"]
                    .as_f64()
                    .is_some_and(|t| (t - r.f.event_t).abs() < 0.01)
            })
            .or_else(|| events.get(i))
            .cloned()
            .unwrap_or(Value::Null);
        let window = ev["window_s"].as_f64();
        match window {
            Some(w) => windows.push(w),
            None => unrecovered += 1,
        }
        if let Some(g) = ev["max_gap_s"].as_f64() {
            gaps.push(g);
        }
        promotions.push(r.f.promotion_s());
        let detect = r.pgsvc_up_t.map(|t| t - r.f.promoted_t);
        if let Some(d) = detect {
            detects.push(d);
        }
        per.push(json!({
            "n": i + 1,
            "from": r.f.old.name,
            "to": r.f.new.name,
            "event_t": r.f.event_t,
            "promotion_s": (r.f.promotion_s() * 1000.0).round() / 1000.0,
            "window_s": window,
            "max_gap_s": ev["max_gap_s"],
            "failed_attempts": ev["failed"],
            "first_fail_after_event_s": ev["first_fail_after_event_s"],
            "recovered_after_event_s": ev["recovered_after_event_s"],
            // (+ 0.0: no "-0.0" for a detection within the same millisecond)
            "pgsvc_up_after_promotion_s": detect.map(|d| (d * 1000.0).round() / 1000.0 + 0.0),
        }));
    }
    let non_primary: Vec<String> = run
        .attempts
        .iter()
        .filter_map(|a| match run.aborted_at {
            // after an aborted switchover only "not in recovery" can be checked
            Some(t) if a.t0 >= t => (a.ok && a.in_recovery != Some(false))
                .then(|| format!("seq {} acknowledged by {:?} in recovery", a.seq, a.addr)),
            _ => non_primary_write(a, run.p0, &run.rounds),
        })
        .collect();
    let s = &run.summary;
    let verify = &s["verify"];
    let lost = verify["lost_count"].as_u64();
    let moved = verify["addr_mismatch_count"].as_u64();
    let violations = s["violations"].as_array().cloned().unwrap_or_default();
    let done = run.rounds.len();
    let mut reasons = Vec::new();
    if let Some(a) = &run.aborted {
        reasons.push(format!("aborted: {a}"));
    }
    if done < o.switchovers {
        reasons.push(format!("{done} of {} switchovers completed", o.switchovers));
    }
    if lost != Some(0) {
        reasons.push(format!("lost acknowledged rows: {lost:?}"));
    }
    if moved != Some(0) {
        reasons.push(format!(
            "rows stored with another node's address: {moved:?}"
        ));
    }
    if !non_primary.is_empty() {
        reasons.push(format!("{} writes on a non-primary", non_primary.len()));
    }
    if !violations.is_empty() {
        reasons.push(format!("{} probe violations", violations.len()));
    }
    if unrecovered > 0 {
        reasons.push(format!(
            "{unrecovered} switchovers without recovery inside the probe"
        ));
    }
    let pass = reasons.is_empty();
    let doc = json!({
        "kind": "pgsvc switchover soak",
        "generated": utc_now(),
        "commit": run.commit,
        "dirty": run.dirty,
        "command": format!("cargo xtask soak --switchovers {}", o.switchovers),
        "pass": pass,
        "failures": reasons,
        "switchovers_requested": o.switchovers,
        "switchovers_done": done,
        "duration_s": ((run.ended - run.started) * 10.0).round() / 10.0,
        "time_limit_s": o.time_limit.as_secs(),
        "probe": {
            "port": 5433,
            "interval_s": 0.05,
            "attempts": s["attempts"],
            "ok": s["ok"],
            "failed": s["failed"],
        },
        "acknowledged_rows": verify["acknowledged"],
        "lost_acknowledged_rows": lost,
        "rows_with_another_nodes_address": moved,
        "writes_on_non_primary": non_primary.len(),
        "writes_on_non_primary_examples": non_primary.iter().take(10).collect::<Vec<_>>(),
        "probe_violations": violations,
        "window_s": stats(&windows),
        "max_gap_s": stats(&gaps),
        "promotion_s": stats(&promotions),
        "pgsvc_up_after_promotion_s": stats(&detects),
        "machine": {
            "loadavg_start": run.load[0],
            "loadavg_end": run.load[1],
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
            "kernel": Command::new("uname").arg("-r").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
        },
        "per_switchover": per,
    });
    (doc, pass)
}

fn fmt_s(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "–".to_owned(), |x| format!("{x:.2}"))
}

fn triple(st: &Value) -> String {
    format!(
        "{} / {} / {}",
        fmt_s(&st["median"]),
        fmt_s(&st["p95"]),
        fmt_s(&st["max"])
    )
}

/// The soak section of BENCHMARKS.md, from the result document.
fn markdown(doc: &Value, json_rel: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Switchover soak ({json_rel})\n");
    let commit = doc["commit"].as_str().unwrap_or("unknown");
    let _ = writeln!(
        s,
        "`{}` on {}: commit {}{}, {} s. The real-cluster sandbox with pgsvc in front (native XDP, \
         the VIP), the writer probe opening a new connection every 50 ms through 5433 and committing \
         one row each, and consecutive switchovers alternating between pg-test-1 and pg-test-2, each \
         started once the cluster was healthy again. Then every acknowledged row was looked up on the \
         final primary.\n",
        doc["command"].as_str().unwrap_or("?"),
        doc["generated"].as_str().unwrap_or("?"),
        &commit[..commit.len().min(10)],
        match doc["dirty"].as_bool() {
            Some(true) => " (with uncommitted changes)",
            Some(false) => "",
            None => " (dirty state unknown)",
        },
        doc["duration_s"]
    );
    let _ = writeln!(
        s,
        "Machine: {} CPUs, kernel {}, load average {} at the start and {} at the end (1/5/15 min; \
         the windows include whatever else ran).\n",
        doc["machine"]["cpus"],
        doc["machine"]["kernel"].as_str().unwrap_or("?"),
        doc["machine"]["loadavg_start"].as_str().unwrap_or("?"),
        doc["machine"]["loadavg_end"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(s, "| figure | value |\n|---|---:|");
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "| {k} | {v} |");
    };
    row(
        &mut s,
        "switchovers completed",
        format!(
            "{} / {}",
            doc["switchovers_done"], doc["switchovers_requested"]
        ),
    );
    row(
        &mut s,
        "probe attempts (ok / failed)",
        format!(
            "{} ({} / {})",
            doc["probe"]["attempts"], doc["probe"]["ok"], doc["probe"]["failed"]
        ),
    );
    row(
        &mut s,
        "acknowledged rows",
        doc["acknowledged_rows"].to_string(),
    );
    row(
        &mut s,
        "**lost acknowledged rows**",
        format!("**{}**", doc["lost_acknowledged_rows"]),
    );
    row(
        &mut s,
        "**writes acknowledged by a non-primary**",
        format!("**{}**", doc["writes_on_non_primary"]),
    );
    row(
        &mut s,
        "write-unavailability window per switchover, median / p95 / max (s)",
        triple(&doc["window_s"]),
    );
    row(
        &mut s,
        "longest gap between commits per switchover, median / p95 / max (s)",
        triple(&doc["max_gap_s"]),
    );
    row(
        &mut s,
        "Patroni promotion (command → new leader answers /primary), median / p95 / max (s)",
        triple(&doc["promotion_s"]),
    );
    row(
        &mut s,
        "pgsvc has the new leader UP after its promotion, median / p95 / max (s)",
        triple(&doc["pgsvc_up_after_promotion_s"]),
    );
    let verdict = if doc["pass"].as_bool() == Some(true) {
        "PASS".to_owned()
    } else {
        let why: Vec<&str> = doc["failures"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        format!("FAIL: {}", why.join("; "))
    };
    row(&mut s, "result", verdict);
    let _ = writeln!(
        s,
        "\nThe window of one switchover runs from the first failed attempt after the command to the end of \
         the first successful one after the last failure; a write counts as on a non-primary when the \
         node was in recovery, or was the old primary after the new one answered `/primary`, or the new \
         one before the command. Not part of `cargo xtask test`; rerun with `cargo xtask soak \
         [--switchovers N]`."
    );
    s
}

fn write_results(o: &Opts, doc: &Value) -> anyhow::Result<()> {
    if let Some(dir) = o.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(doc).context("serialising the results")?;
    std::fs::write(&o.out, text + "\n").with_context(|| format!("writing {}", o.out.display()))?;
    let root = repo_root();
    let rel = o
        .out
        .strip_prefix(&root)
        .unwrap_or(&o.out)
        .display()
        .to_string();
    let old = std::fs::read_to_string(&o.md).unwrap_or_default();
    let md = splice_section(&old, SOAK_BEGIN, SOAK_END, &markdown(doc, &rel));
    std::fs::write(&o.md, md).with_context(|| format!("writing {}", o.md.display()))?;
    say(&format!(
        "results in {} and {}",
        o.out.display(),
        o.md.display()
    ));
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_args(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("soak: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    install_handlers();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("soak: needs root (network namespaces, XDP); run `cargo xtask soak` as root");
        return ExitCode::from(2);
    }
    if let Err(why) = preflight() {
        eprintln!("soak: the sandbox's packages are missing: {why}\n      run `cargo xtask setup`");
        return ExitCode::FAILURE;
    }
    let t0 = Instant::now();
    say(&format!(
        "{} switchovers, time limit {} min; pgsvc {}",
        o.switchovers,
        o.time_limit.as_secs() / 60,
        pgsvc_binary().display()
    ));
    let result = (|| -> anyhow::Result<(Value, bool)> {
        let mut sb = Sandbox::up_with_prefix("sk")?;
        sb.set_cancel(&STOP);
        say(&format!("sandbox {} is up", sb.id));
        let run = soak(&o, &mut sb, t0);
        let run = match run {
            Ok(run) => run,
            Err(e) => {
                if let Some(dest) = sb.keep_logs() {
                    say(&format!("logs kept in {}", dest.display()));
                }
                return Err(e);
            }
        };
        let (doc, pass) = analyse(&o, &run);
        if !pass && let Some(dest) = sb.keep_logs() {
            say(&format!("logs kept in {}", dest.display()));
        }
        drop(sb);
        Ok((doc, pass))
    })();
    match result {
        Ok((doc, pass)) => {
            if let Err(e) = write_results(&o, &doc) {
                eprintln!("soak: error: {e:#}");
                return ExitCode::FAILURE;
            }
            say(&format!(
                "{} of {} switchovers in {:.0} s; {} acknowledged rows, {} lost, {} writes on a non-primary; \
                 window median {} p95 {} max {} s",
                doc["switchovers_done"],
                doc["switchovers_requested"],
                t0.elapsed().as_secs_f64(),
                doc["acknowledged_rows"],
                doc["lost_acknowledged_rows"],
                doc["writes_on_non_primary"],
                fmt_s(&doc["window_s"]["median"]),
                fmt_s(&doc["window_s"]["p95"]),
                fmt_s(&doc["window_s"]["max"]),
            ));
            if pass {
                say("PASS");
                ExitCode::SUCCESS
            } else {
                say(&format!("FAIL: {}", doc["failures"]));
                ExitCode::FAILURE
            }
        }
        Err(e) if STOP.load(Ordering::SeqCst) => {
            eprintln!("soak: interrupted ({e:#}); everything was torn down");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("soak: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgsvc_tests::sandbox::MEMBERS;

    fn round(old: Member, new: Member, event_t: f64, promoted_t: f64) -> Round {
        Round {
            f: Failover {
                kind: "switchover",
                event_t,
                promoted_t,
                old,
                new,
            },
            pgsvc_up_t: None,
        }
    }

    fn ack(seq: u64, t0: f64, t1: f64, m: Member) -> Attempt {
        Attempt {
            seq,
            t0,
            t1,
            ok: true,
            addr: Some(m.addr.to_string()),
            in_recovery: Some(false),
            err: None,
        }
    }

    #[test]
    fn writes_on_a_non_primary_are_found() {
        let [a, b, c] = MEMBERS;
        // a leads, switchover at 10 (b answers /primary at 12), back at 20 (a at 22)
        let rounds = [round(a, b, 10.0, 12.0), round(b, a, 20.0, 22.0)];
        let fine = [
            ack(1, 1.0, 1.1, a),
            ack(2, 9.9, 11.5, a), // began before the switchover, acked before b's promotion
            ack(3, 10.5, 11.9, a), // the old primary until b is promoted
            ack(4, 12.5, 12.6, b),
            ack(5, 19.0, 21.0, b),
            ack(6, 23.0, 23.1, a),
        ];
        for w in &fine {
            assert_eq!(non_primary_write(w, a, &rounds), None, "{w:?}");
        }
        let bad = [
            ack(7, 1.0, 1.1, b),    // b before its switchover
            ack(8, 11.0, 12.5, a),  // a after b was promoted
            ack(9, 15.0, 15.1, c),  // the offline instance
            ack(10, 19.5, 22.5, b), // b after a was promoted again
            Attempt {
                in_recovery: Some(true),
                ..ack(11, 1.0, 1.1, a)
            },
        ];
        for w in &bad {
            assert!(non_primary_write(w, a, &rounds).is_some(), "{w:?}");
        }
        let failed = Attempt {
            ok: false,
            ..ack(12, 1.0, 1.1, c)
        };
        assert_eq!(non_primary_write(&failed, a, &rounds), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[3.0], 95.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn arguments() {
        let o = parse_args(&["--switchovers".into(), "5".into()])
            .expect("valid")
            .expect("not help");
        assert_eq!(o.switchovers, 5);
        assert!(parse_args(&["--switchovers".into(), "0".into()]).is_err());
        assert!(parse_args(&["--switchovers".into()]).is_err());
        assert!(parse_args(&["--bogus".into()]).is_err());
        assert!(parse_args(&["--help".into()]).expect("help").is_none());
    }
}
