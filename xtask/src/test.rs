//! `cargo xtask test`: formatting, lints and every test tier, in one run that keeps going after a
//! failure, checks that nothing was left behind, and ends with `tests: N passed, S skipped, M failed`.
//!
//! A test that did not run is a skip, never a pass. libtest has no skipped outcome (a test that
//! returns early passes), so tests that cannot run here (no root, no sandbox packages) record
//! themselves through `pgsvc_tests::skip` in a file this driver names in `PGSVC_TEST_SKIP_FILE`;
//! they are moved from "passed" to "skipped", listed by name, and under `CI=true` any skip fails
//! the run. Only libtest results are counted as tests: rustfmt, clippy, a build error and the
//! leftover check are steps, reported by name, and a failed step fails the run without being
//! counted as a test.
//!
//! Steps:
//! 1. `cargo fmt --all -- --check`
//! 2. `cargo clippy` of the host crates (all targets, `-D warnings`); pgsvc-ebpf is linted apart
//!    (feature unification would pull std into it): its XDP program with the nightly for
//!    `bpfel-unknown-none` exactly as pgsvc-userspace/build.rs builds it, its pure lib (and the
//!    lib's unit tests) on the host;
//! 3. unit tests of every host crate except the integration-test crate, and pgsvc-ebpf's lib tests;
//! 4. the integration-test crate (`tests/`): its own unit tests, then `tests/tests/*.rs` — files
//!    named `netns*`/`e2e*` one at a time with `--test-threads=1` (namespaces, real daemons),
//!    the others together.

use std::ffi::OsString;
use std::fs;
use std::process::Command;

use anyhow::Context as _;

use crate::cmd;

/// The XDP target, and the flags of pgsvc-userspace/build.rs (`CARGO_ENCODED_RUSTFLAGS`).
const BPF_TARGET: &str = "bpfel-unknown-none";

fn ebpf_rustflags() -> String {
    [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        "-Ctarget-cpu=v3".to_owned(),
    ]
    .join("\x1f")
}

/// The variable the test helpers read (`pgsvc_tests::SKIP_FILE_ENV`).
const SKIP_FILE_ENV: &str = "PGSVC_TEST_SKIP_FILE";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// Adds up one libtest summary line:
/// `test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 2 filtered out; finished in 0.01s`.
fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = &line[line.find("test result:")? + "test result:".len()..];
    let mut counts = Counts::default();
    for part in rest.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        for pair in words.windows(2) {
            let Ok(n) = pair[0].parse::<u64>() else {
                continue;
            };
            match pair[1] {
                "passed" => counts.passed += n,
                "failed" => counts.failed += n,
                "ignored" => counts.ignored += n,
                _ => {}
            }
        }
    }
    Some(counts)
}

/// The name of a test libtest reports as passed: `test NAME ... ok`.
fn parse_ok_line(line: &str) -> Option<&str> {
    line.strip_prefix("test ")?.strip_suffix(" ... ok")
}

/// The skip records of one step: `NAME<TAB>WHY` per line, first reason per name, in order.
fn parse_skip_records(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (name, why) = line.split_once('\t').unwrap_or((line, ""));
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_owned(), why.to_owned()));
        }
    }
    out
}

/// What one step reported: its libtest counts, the names libtest passed, and the skip records.
#[derive(Debug, Default)]
struct StepReport {
    counts: Counts,
    ok: std::collections::HashSet<String>,
    skips: Vec<(String, String)>,
}

/// The totals of a run, and the verdict.
#[derive(Debug, Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// `(step, test, why)` of every test that did not run.
    skipped: Vec<(String, String, String)>,
    failed_steps: Vec<String>,
}

impl Tally {
    /// Adds a step: a recorded skip that libtest counted as passed moves from passed to skipped.
    /// (With a quiet output format there are no per-test lines; then every record counts.)
    fn add(&mut self, step: &str, report: StepReport, success: bool) {
        let mut moved = 0;
        for (name, why) in report.skips {
            if report.ok.is_empty() || report.ok.contains(&name) {
                moved += 1;
                self.skipped.push((step.to_owned(), name, why));
            }
        }
        self.passed += report.counts.passed.saturating_sub(moved);
        self.failed += report.counts.failed;
        self.ignored += report.counts.ignored;
        if !success {
            self.failed_steps.push(step.to_owned());
        }
    }

    /// A step that is not a test (the leftover check): its result decides the run, not the counts.
    fn add_check(&mut self, step: &str, success: bool) {
        if !success {
            self.failed_steps.push(step.to_owned());
        }
    }

    /// The closing lines (the last one is the plain `tests: N passed, S skipped, M failed`) and
    /// whether the run passed; under CI a skip fails it.
    fn summary(&self, ci: bool) -> (Vec<String>, bool) {
        let mut lines = Vec::new();
        if !self.skipped.is_empty() {
            lines.push(format!(
                "xtask test: {} test(s) did not run (skipped, not counted as passed):",
                self.skipped.len()
            ));
            for (step, name, why) in &self.skipped {
                lines.push(format!("  - {name} [{step}]: {why}"));
            }
        }
        let skip_fails = ci && !self.skipped.is_empty();
        if skip_fails {
            lines.push(format!(
                "xtask test: CI is set and {} test(s) were skipped: every test must run on CI",
                self.skipped.len()
            ));
        }
        if !self.failed_steps.is_empty() {
            lines.push("xtask test: failed steps:".to_owned());
            for name in &self.failed_steps {
                lines.push(format!("  - {name}"));
            }
        }
        lines.push(format!(
            "tests: {} passed, {} skipped, {} failed",
            self.passed,
            self.skipped.len(),
            self.failed
        ));
        (lines, self.failed_steps.is_empty() && !skip_fails)
    }
}

/// `CI` set to anything but empty, `0` or `false` (case-insensitive).
fn ci_from(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| {
        let v = v.to_string_lossy().trim().to_ascii_lowercase();
        !(v.is_empty() || v == "0" || v == "false")
    })
}

/// The integration-test targets of the tests crate: `tests/tests/NAME.rs` and `tests/tests/NAME/main.rs`.
fn integration_tests() -> anyhow::Result<Vec<String>> {
    let dir = crate::workspace_root().join("tests").join("tests");
    let mut names = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if path.join("main.rs").is_file() {
                names.push(name);
            }
        } else if let Some(stem) = name.strip_suffix(".rs") {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Test files that create namespaces or real daemons run one test at a time.
fn is_serial(name: &str) -> bool {
    name.starts_with("netns") || name.starts_with("e2e")
}

struct Step {
    name: String,
    cmd: Command,
}

fn step(name: impl Into<String>, cmd: Command) -> Step {
    Step {
        name: name.into(),
        cmd,
    }
}

fn cargo_test(args: &[&str], extra: &[OsString], serial: bool) -> Command {
    let mut c = cmd::cargo();
    c.arg("test").arg("--no-fail-fast").args(args).arg("--");
    if serial {
        c.arg("--test-threads=1");
    }
    c.args(extra);
    c
}

fn steps(extra: &[OsString]) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();

    let mut fmt = cmd::cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    steps.push(step("rustfmt", fmt));

    let mut clippy = cmd::cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        "pgsvc-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    steps.push(step("clippy (host crates)", clippy));

    let mut clippy_xdp = cmd::nightly("cargo");
    clippy_xdp
        .current_dir(crate::workspace_root())
        .env("CARGO_ENCODED_RUSTFLAGS", ebpf_rustflags())
        .args(["clippy", "-p", "pgsvc-ebpf", "--lib", "--bins", "--release"])
        .args(["--target", BPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(crate::target_dir()?.join("ebpf-clippy"))
        .args(["--", "-D", "warnings"]);
    steps.push(step("clippy (XDP program, nightly bpfel)", clippy_xdp));

    let mut clippy_lib = cmd::cargo();
    // `--profile test` lints the lib with cfg(test), i.e. its unit tests too; the bin needs nightly.
    clippy_lib.args([
        "clippy",
        "-p",
        "pgsvc-ebpf",
        "--lib",
        "--profile",
        "test",
        "--",
        "-D",
        "warnings",
    ]);
    steps.push(step("clippy (pgsvc-ebpf lib on the host)", clippy_lib));

    steps.push(step(
        "unit tests",
        cargo_test(
            &[
                "--workspace",
                "--exclude",
                "pgsvc-ebpf",
                "--exclude",
                "pgsvc-tests",
            ],
            extra,
            false,
        ),
    ));
    steps.push(step(
        "pgsvc-ebpf lib tests",
        cargo_test(&["-p", "pgsvc-ebpf", "--lib"], extra, false),
    ));
    steps.push(step(
        "pgsvc-tests unit tests",
        cargo_test(&["-p", "pgsvc-tests", "--lib", "--bins"], extra, false),
    ));

    let files = integration_tests()?;
    let (serial, parallel): (Vec<&String>, Vec<&String>) = files.iter().partition(|n| is_serial(n));
    if !parallel.is_empty() {
        let mut args = vec!["-p", "pgsvc-tests"];
        for name in &parallel {
            args.push("--test");
            args.push(name.as_str());
        }
        let names: Vec<&str> = parallel.iter().map(|n| n.as_str()).collect();
        steps.push(step(
            format!("integration: {}", names.join(", ")),
            cargo_test(&args, extra, false),
        ));
    }
    for name in serial {
        steps.push(step(
            format!("integration: {name} (one at a time)"),
            cargo_test(&["-p", "pgsvc-tests", "--test", name], extra, true),
        ));
    }
    Ok(steps)
}

/// What tests could leave behind: network namespaces, bpffs entries, and processes the tests start.
#[derive(Debug, Default)]
struct Leftovers {
    netns: Vec<String>,
    pins: Vec<String>,
    procs: Vec<String>,
}

impl Leftovers {
    fn now() -> Self {
        let netns = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let pins = std::fs::read_dir("/sys/fs/bpf")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "maps.debug" && n != "progs.debug")
                    .collect()
            })
            .unwrap_or_default();
        let mut procs = Vec::new();
        if let Ok(d) = std::fs::read_dir("/proc") {
            for e in d.flatten() {
                let pid = e.file_name().to_string_lossy().into_owned();
                if !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                let comm = comm.trim();
                if [
                    "pgsvc",
                    "patroni-stub",
                    "haproxy",
                    "patroni",
                    "pgbouncer",
                    "etcd",
                ]
                .contains(&comm)
                {
                    procs.push(format!("{comm}[{pid}]"));
                }
            }
        }
        Self { netns, pins, procs }
    }

    fn minus(self, before: &Self) -> Self {
        Self {
            netns: self
                .netns
                .into_iter()
                .filter(|n| !before.netns.contains(n))
                .collect(),
            pins: self
                .pins
                .into_iter()
                .filter(|n| !before.pins.contains(n))
                .collect(),
            procs: self
                .procs
                .into_iter()
                .filter(|n| !before.procs.contains(n))
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.netns.is_empty() && self.pins.is_empty() && self.procs.is_empty()
    }
}

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  network namespaces: {:?}", self.netns)?;
        writeln!(f, "  /sys/fs/bpf entries: {:?}", self.pins)?;
        write!(f, "  processes: {:?}", self.procs)
    }
}

/// Runs every step; `Ok(true)` when all passed (and, under CI, none was skipped).
pub fn run(extra: &[OsString]) -> anyhow::Result<bool> {
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    let before = Leftovers::now();
    let skip_dir = crate::target_dir()?.join("xtask-test");
    fs::create_dir_all(&skip_dir).with_context(|| format!("creating {}", skip_dir.display()))?;
    for (i, Step { name, mut cmd }) in steps(extra)?.into_iter().enumerate() {
        println!("\n==== xtask test: {name}");
        let skip_file = skip_dir.join(format!("skips-{i}.txt"));
        match fs::remove_file(&skip_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", skip_file.display())),
        }
        cmd.env(SKIP_FILE_ENV, &skip_file);
        let mut report = StepReport::default();
        let status = cmd::run_tee(&mut cmd, |line| {
            if let Some(c) = parse_result_line(line) {
                report.counts.passed += c.passed;
                report.counts.failed += c.failed;
                report.counts.ignored += c.ignored;
            } else if let Some(test) = parse_ok_line(line) {
                report.ok.insert(test.to_owned());
            }
        })?;
        match fs::read_to_string(&skip_file) {
            Ok(text) => report.skips = parse_skip_records(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", skip_file.display())),
        }
        if !report.skips.is_empty() {
            println!(
                "==== xtask test: {name}: {} test(s) skipped",
                report.skips.len()
            );
        }
        if !status.success() {
            println!("==== xtask test: {name}: FAILED ({status})");
        }
        tally.add(&name, report, status.success());
    }
    // Every namespace, pin and process a test creates must be gone when it ends (network safety).
    // A check of the run, not a test: it decides the verdict but is not counted.
    let check = "leftover check (namespaces, bpffs pins, processes)";
    println!("\n==== xtask test: {check}");
    let left = Leftovers::now().minus(&before);
    if left.is_empty() {
        println!("==== xtask test: {check}: ok, nothing left behind");
    } else {
        println!("left behind by the tests:\n{left}");
        println!("==== xtask test: {check}: FAILED");
    }
    tally.add_check(check, left.is_empty());
    println!();
    println!(
        "xtask test: {} ignored, {} s",
        tally.ignored,
        started.elapsed().as_secs()
    );
    let (lines, ok) = tally.summary(ci_from(std::env::var_os("CI").as_deref()));
    // The closing line last, in the plain form CI reads.
    for line in lines {
        println!("{line}");
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.00s"
            ),
            Some(Counts {
                passed: 12,
                failed: 0,
                ignored: 3
            })
        );
        assert_eq!(
            parse_result_line(
                "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 5 filtered out"
            ),
            Some(Counts {
                passed: 1,
                failed: 2,
                ignored: 0
            })
        );
        assert_eq!(parse_result_line("running 3 tests"), None);
    }

    #[test]
    fn namespace_tests_run_serially() {
        assert!(is_serial("netns"));
        assert!(is_serial("netns_failover"));
        assert!(is_serial("e2e_switchover"));
        assert!(!is_serial("packet"));
        assert!(!is_serial("cli_config"));
    }

    fn report(passed: u64, failed: u64, ok: &[&str], skips: &str) -> StepReport {
        StepReport {
            counts: Counts {
                passed,
                failed,
                ignored: 0,
            },
            ok: ok.iter().map(|s| (*s).to_owned()).collect(),
            skips: parse_skip_records(skips),
        }
    }

    #[test]
    fn recognises_passed_test_lines() {
        assert_eq!(parse_ok_line("test a::b ... ok"), Some("a::b"));
        assert_eq!(parse_ok_line("test a::b ... FAILED"), None);
        assert_eq!(parse_ok_line("test a::b ... ignored"), None);
        assert_eq!(parse_ok_line("running 3 tests"), None);
    }

    #[test]
    fn skip_records_are_deduplicated_by_test() {
        let r = parse_skip_records("a\tneeds root\nb\tno packages\na\tneeds root again\n\n");
        assert_eq!(
            r,
            vec![
                ("a".to_owned(), "needs root".to_owned()),
                ("b".to_owned(), "no packages".to_owned())
            ]
        );
    }

    #[test]
    fn skipped_tests_are_not_counted_as_passed() {
        let mut t = Tally::default();
        t.add("unit tests", report(10, 0, &["u1", "u2"], ""), true);
        t.add(
            "integration: packet",
            report(
                5,
                1,
                &["p1", "p2", "p3", "p4", "p5"],
                "p2\tneeds root\np4\tneeds root\n",
            ),
            false,
        );
        let (lines, ok) = t.summary(false);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("tests: 13 passed, 2 skipped, 1 failed")
        );
        assert!(!ok, "a failed step fails the run");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("p2 [integration: packet]: needs root"))
        );
    }

    #[test]
    fn a_skip_of_a_test_that_did_not_pass_is_not_subtracted() {
        let mut t = Tally::default();
        // `x` recorded a skip and then failed: it stays a failure, and passed is untouched.
        t.add("s", report(2, 1, &["a", "b"], "x\twhy\n"), false);
        let (lines, _) = t.summary(false);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("tests: 2 passed, 0 skipped, 1 failed")
        );
    }

    #[test]
    fn quiet_output_counts_every_skip_record() {
        let mut t = Tally::default();
        t.add("s", report(3, 0, &[], "a\twhy\nb\twhy\n"), true);
        let (lines, ok) = t.summary(false);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("tests: 1 passed, 2 skipped, 0 failed")
        );
        assert!(ok, "skips alone pass outside CI");
    }

    #[test]
    fn under_ci_a_skip_fails_the_run_and_names_the_test() {
        let mut t = Tally::default();
        t.add("s", report(3, 0, &["a", "b", "c"], "b\tneeds root\n"), true);
        assert!(t.summary(false).1);
        let (lines, ok) = t.summary(true);
        assert!(!ok);
        assert!(
            lines.iter().any(|l| l.contains("  - b [s]: needs root")),
            "{lines:?}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("tests: 2 passed, 1 skipped, 0 failed")
        );
    }

    #[test]
    fn the_leftover_check_is_not_a_test() {
        let mut t = Tally::default();
        t.add("s", report(4, 0, &[], ""), true);
        t.add_check("leftover check", true);
        assert_eq!(
            t.summary(true),
            (
                vec!["tests: 4 passed, 0 skipped, 0 failed".to_owned()],
                true
            )
        );
        t.add_check("leftover check", false);
        let (lines, ok) = t.summary(false);
        assert!(!ok);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("tests: 4 passed, 0 skipped, 0 failed")
        );
        assert!(lines.contains(&"  - leftover check".to_owned()));
    }

    #[test]
    fn ci_values() {
        use std::ffi::OsStr;
        assert!(ci_from(Some(OsStr::new("true"))));
        assert!(ci_from(Some(OsStr::new("1"))));
        assert!(!ci_from(Some(OsStr::new("false"))));
        assert!(!ci_from(Some(OsStr::new("0"))));
        assert!(!ci_from(Some(OsStr::new(""))));
        assert!(!ci_from(None));
    }
}
