//! `cargo xtask test`: formatting, lints and every test tier, in one run that keeps going after a
//! failure and ends with `tests: N passed, M failed`, then checks that nothing was left behind.
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

/// Runs every step; `Ok(true)` when all passed.
pub fn run(extra: &[OsString]) -> anyhow::Result<bool> {
    let started = std::time::Instant::now();
    let mut total = Counts::default();
    let mut failed_steps = Vec::new();
    let before = Leftovers::now();
    for Step { name, mut cmd } in steps(extra)? {
        println!("\n==== xtask test: {name}");
        let mut counts = Counts::default();
        let status = cmd::run_tee(&mut cmd, |line| {
            if let Some(c) = parse_result_line(line) {
                counts.passed += c.passed;
                counts.failed += c.failed;
                counts.ignored += c.ignored;
            }
        })?;
        total.passed += counts.passed;
        total.failed += counts.failed;
        total.ignored += counts.ignored;
        if !status.success() {
            // A step that failed without a failing test (fmt, clippy, a build error) counts as one.
            if counts.failed == 0 {
                total.failed += 1;
            }
            println!("==== xtask test: {name}: FAILED ({status})");
            failed_steps.push(name);
        }
    }
    // Every namespace, pin and process a test creates must be gone when it ends (network safety).
    println!("\n==== xtask test: nothing left behind");
    let left = Leftovers::now().minus(&before);
    if left.is_empty() {
        println!("no namespace, bpffs pin or test process left behind");
        total.passed += 1;
    } else {
        println!("left behind by the tests:\n{left}");
        total.failed += 1;
        failed_steps.push("nothing left behind".to_owned());
    }
    println!();
    if !failed_steps.is_empty() {
        println!("xtask test: failed steps:");
        for name in &failed_steps {
            println!("  - {name}");
        }
    }
    println!(
        "xtask test: {} ignored, {} s",
        total.ignored,
        started.elapsed().as_secs()
    );
    // The closing line alone, in the plain form CI reads.
    println!("tests: {} passed, {} failed", total.passed, total.failed);
    Ok(failed_steps.is_empty())
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
}
