//! Hostile inventories (issue 9, item 4): each becomes a clear error with its place in the file,
//! quickly, without deep recursion and without expanding in memory — in the library (on a thread
//! with a small stack, so the limits and not the planner's big stack are what hold) and through
//! `pgsvc check` (exit status 1).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgsvc::config::ConfigError;
use pgsvc::plan::{self, PlanError};

/// What each hostile input may take, in a debug build on a busy 2-core machine.
const QUICK: Duration = Duration::from_secs(1);

/// A valid one-cluster inventory with `services` as its `pg_services` list items.
fn inventory(services: &str) -> String {
    format!(
        "all:
  children:
    pg-test:
      hosts:
        198.18.0.11: {{ pg_seq: 1, pg_role: primary }}
        198.18.0.12: {{ pg_seq: 2, pg_role: replica }}
      vars:
        pg_cluster: pg-test
        pg_services: [{services}]
"
    )
}

/// A `pg_services` selector nested `depth` parentheses deep.
fn deep_selector(depth: usize) -> String {
    let selector = format!("[? {}pg_role{} ]", "(".repeat(depth), ")".repeat(depth));
    inventory(&format!(
        "{{ name: deep, port: 5440, selector: \"{selector}\" }}"
    ))
}

/// "Billion laughs": nine levels of nine aliases each, 414 bytes that expand to 9^9 scalars.
fn alias_bomb() -> String {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
        let refs = vec![format!("*{prev}"); 9].join(",");
        text.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    text
}

/// YAML nested `depth` flow sequences deep.
fn deep_yaml(depth: usize) -> String {
    format!("all: {}{}\n", "[".repeat(depth), "]".repeat(depth))
}

/// Block mappings nested `depth` levels deep (each level indented one more space).
fn deep_block_yaml(depth: usize) -> String {
    let mut text = String::new();
    for level in 0..depth {
        text.push_str(&" ".repeat(level));
        text.push_str("k:\n");
    }
    text
}

/// Runs `f` on a thread with a 1 MiB stack (half of a test thread's): the limits, not a big stack,
/// must keep every input below from recursing deeply. Returns its result and how long it took.
fn small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (T, Duration) {
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || {
            let started = Instant::now();
            let out = f();
            (out, started.elapsed())
        })
        .expect("spawn")
        .join()
        .expect("the planner must not panic")
}

fn plan_err(text: String) -> (PlanError, Duration) {
    let (result, took) =
        small_stack(move || plan::plan_from_str(&text, "hostile.yml", None).map_err(Box::new));
    match result {
        Ok(_) => panic!("a hostile inventory was accepted"),
        Err(err) => (*err, took),
    }
}

/// Held by the tests that measure peak memory and by those that allocate a lot, so that one's
/// allocations never show in another's measurement (tests run on parallel threads).
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[test]
fn a_selector_nested_ten_thousand_deep_is_a_clear_error() {
    let (err, took) = plan_err(deep_selector(10_000));
    let text = err.to_string();
    assert!(matches!(err, PlanError::InvalidSelector { .. }), "{text}");
    assert!(text.starts_with("hostile.yml:9:"), "{text}");
    assert!(text.contains("the limit is"), "{text}");
    assert!(took < QUICK, "took {took:?}");
    // At the limit the selector still works (the limit is not set below what it must accept).
    let text = deep_selector(60);
    let (ok, _) = small_stack(move || plan::plan_from_str(&text, "ok.yml", None).map_err(Box::new));
    let (plan, _) = ok.expect("a selector nested 60 deep is within the limits");
    let deep = &plan.clusters[0].services.last().expect("service").servers;
    assert_eq!(deep.len(), 2, "(pg_role) selects both members");
}

/// Every way of making the JMESPath tree deep — nesting and chains of operators — is accepted up to
/// the limit without needing more than a small stack, and refused past it.
#[test]
fn selectors_at_the_nesting_limit_work_and_past_it_are_refused() {
    let limit = plan::selector::MAX_SELECTOR_NESTING;
    // Each body has `[` plus (limit - 8) counted characters: within the limit.
    let n = limit - 8;
    let shapes = [
        (
            "or-chain",
            format!(
                "[? {}pg_role ]",
                "pg_seq |".repeat(n / 2).replace('|', "||")
            ),
        ),
        (
            "parentheses",
            format!("[? {}pg_role{} ]", "(".repeat(n), ")".repeat(n)),
        ),
        ("negations", format!("[? {}pg_role ]", "!!".repeat(n / 2))),
        ("dots", format!("[? {}pg_role ]", "a.".repeat(n))),
        (
            "comparisons",
            format!("[? {}pg_role ]", "pg_seq == ".repeat(n / 2)),
        ),
    ];
    for (what, selector) in shapes {
        let ok = inventory(&format!(
            "{{ name: s, port: 5440, selector: \"{selector}\" }}"
        ));
        let (result, took) = small_stack(move || {
            plan::plan_from_str(&ok, "ok.yml", None).map_err(|e| e.to_string())
        });
        if let Err(err) = &result {
            // Some shapes do not evaluate over these members (a comparison chain compares a
            // boolean with a number, fine); what matters is that none is refused as too deep.
            assert!(!err.contains("the limit is"), "{what} at the limit: {err}");
        }
        assert!(took < QUICK, "{what}: took {took:?}");
    }
    // Past it (and still short), refused before parsing.
    let past = format!("[? {}pg_role ]", "a||".repeat(limit));
    let (err, _) = plan_err(inventory(&format!(
        "{{ name: s, port: 5440, selector: \"{past}\" }}"
    )));
    assert!(err.to_string().contains("brackets and operators"), "{err}");
}

#[test]
fn a_long_selector_is_a_clear_error() {
    let long = "pg_role == `primary` || ".repeat(400);
    let text = inventory(&format!(
        "{{ name: long, port: 5440, selector: \"[? {long} pg_seq ]\" }}"
    ));
    let (err, took) = plan_err(text);
    assert!(matches!(err, PlanError::InvalidSelector { .. }), "{err}");
    assert!(err.to_string().contains("bytes long"), "{err}");
    assert!(took < QUICK, "took {took:?}");
}

#[test]
fn the_alias_bomb_is_refused_before_it_expands() {
    let _heavy = heavy();
    let bomb = alias_bomb();
    assert!(bomb.len() < 450, "{}", bomb.len());
    let before = peak_rss_mib();
    let (err, took) = plan_err(bomb);
    let text = err.to_string();
    assert!(
        matches!(err, PlanError::Config(ConfigError::Limit { .. })),
        "{text}"
    );
    assert!(text.starts_with("hostile.yml:"), "{text}");
    assert!(text.contains("aliases expand to more than"), "{text}");
    assert!(took < QUICK, "took {took:?}");
    let grown = peak_rss_mib().saturating_sub(before);
    assert!(grown < 200, "peak RSS grew by {grown} MiB");
}

#[test]
fn deep_yaml_nesting_is_refused() {
    for (what, text) in [
        ("flow", deep_yaml(100_000)),
        ("block", deep_block_yaml(2_000)),
    ] {
        let (err, took) = plan_err(text);
        let message = err.to_string();
        assert!(
            matches!(err, PlanError::Config(ConfigError::Limit { .. })),
            "{what}: {message}"
        );
        assert!(message.contains("nesting deeper than"), "{what}: {message}");
        assert!(took < QUICK, "{what}: took {took:?}");
    }
}

fn temp_file(name: &str, fill: impl FnOnce(&mut std::fs::File)) -> PathBuf {
    let path = std::env::temp_dir().join(format!("pgsvc-limits-{}-{name}", std::process::id()));
    let mut file = std::fs::File::create(&path).expect("create temp file");
    fill(&mut file);
    path
}

/// Removes the file when the test ends, also on failure.
struct Removed(PathBuf);
impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A 50 MB inventory; `tag` keeps the tests that run at once apart.
fn fifty_mb_scalar(tag: &str) -> Removed {
    use std::io::Write;
    Removed(temp_file(&format!("50mb-{tag}.yml"), |f| {
        f.write_all(b"all:\n  vars:\n    x: ").expect("write");
        let chunk = vec![b'a'; 1024 * 1024];
        for _ in 0..50 {
            f.write_all(&chunk).expect("write");
        }
        f.write_all(b"\n").expect("write");
    }))
}

#[test]
fn a_fifty_megabyte_file_is_refused_unread() {
    let _heavy = heavy();
    let file = fifty_mb_scalar("refused");
    let before = peak_rss_mib();
    let started = Instant::now();
    let err = plan::load_plan(&file.0, None).expect_err("a 50 MB inventory");
    let took = started.elapsed();
    let text = err.to_string();
    assert!(
        matches!(err, PlanError::Config(ConfigError::FileTooLarge { .. })),
        "{text}"
    );
    assert!(text.contains("inventory too large"), "{text}");
    assert!(took < QUICK, "took {took:?}");
    let grown = peak_rss_mib().saturating_sub(before);
    assert!(
        grown < 40,
        "peak RSS grew by {grown} MiB: the file was read"
    );
    // The same text handed over as a string is refused as well.
    let big = format!("all:\n  vars:\n    x: {}\n", "a".repeat(50 << 20));
    let err = plan::plan_from_str(&big, "big.yml", None).expect_err("50 MB of text");
    assert!(
        err.to_string()
            .starts_with("big.yml:1:1: inventory too large"),
        "{err}"
    );
}

#[test]
fn many_hosts_past_the_limit_are_a_clear_error() {
    let _heavy = heavy();
    let hosts = pgsvc::config::MAX_HOSTS + 1;
    let mut text = String::from("all:\n  children:\n    g:\n      hosts:\n");
    for i in 0..hosts {
        text.push_str(&format!("        h{i}: {{}}\n"));
    }
    let (err, took) = plan_err(text);
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("hostile.yml:{}:9: inventory too large", hosts + 4)),
        "{message}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// A big `all.vars` under many hosts would multiply: the hosts share their groups' variables
/// instead of each holding a copy, and what selectors see as JSON is bounded with a clear error.
#[test]
fn variables_multiplied_by_hosts_are_bounded() {
    let _heavy = heavy();
    let hosts = |n: usize| {
        (0..n)
            .map(|i| {
                format!(
                    "        198.18.{}.{}: {{ pg_seq: {}, pg_role: replica }}\n",
                    i / 250,
                    i % 250 + 1,
                    i + 1
                )
            })
            .collect::<String>()
    };
    // 100,000 variables × 2,000 hosts: 200 million if each host had a copy.
    let mut text = String::from("all:\n  vars:\n");
    for i in 0..100_000 {
        text.push_str(&format!("    v{i}: {i}\n"));
    }
    text.push_str("  children:\n    pg-big:\n      vars: { pg_cluster: pg-big }\n      hosts:\n");
    text.push_str(&hosts(2_000));
    let before = peak_rss_mib();
    let (result, took) = small_stack(move || {
        plan::plan_from_str(&text, "big.yml", None)
            .map(|(plan, _)| plan.clusters[0].instances.len())
            .map_err(|e| e.to_string())
    });
    assert_eq!(result, Ok(2_000));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let grown = peak_rss_mib().saturating_sub(before);
    assert!(grown < 300, "peak RSS grew by {grown} MiB");
    eprintln!("100,000 variables × 2,000 hosts planned in {took:?}, peak RSS +{grown} MiB");
    // One variable of 100,000 values, seen by a selector on 50 members: past the selector data.
    let list = (0..100_000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let text = format!(
        "all:\n  vars:\n    big: [{list}]\n  children:\n    pg-big:\n      vars:\n        pg_cluster: pg-big\n        pg_services: [ {{ name: s, port: 5440, selector: \"[? big ]\" }} ]\n      hosts:\n{}",
        hosts(50)
    );
    let before = peak_rss_mib();
    let (err, took) = plan_err(text);
    let message = err.to_string();
    assert!(
        message.contains("add up to more than") && message.contains("`[? big ]`"),
        "{message}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let grown = peak_rss_mib().saturating_sub(before);
    assert!(grown < 1024, "peak RSS grew by {grown} MiB");
    eprintln!("bounded in {took:?}, peak RSS +{grown} MiB");
}

/// The isolated loader turns what it is given into results, never into a crash of the caller.
#[test]
fn the_isolated_loader_reports_errors_like_load_plan() {
    let file = fifty_mb_scalar("isolated");
    let err = plan::load_plan_isolated(&file.0, None).expect_err("too large");
    assert!(
        matches!(err, PlanError::Config(ConfigError::FileTooLarge { .. })),
        "{err}"
    );
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pigsty.yml");
    let (direct, _) = plan::load_plan(&example, None).expect("example");
    let (isolated, _) = plan::load_plan_isolated(&example, None).expect("example");
    assert_eq!(format!("{direct:?}"), format!("{isolated:?}"));
}

#[test]
fn check_exits_1_with_the_place_for_each_hostile_file() {
    let inputs = [
        (
            "deep-selector.yml",
            deep_selector(10_000),
            "hostile-deep-selector.yml:9:",
        ),
        ("alias-bomb.yml", alias_bomb(), "inventory too large"),
        ("deep-yaml.yml", deep_yaml(100_000), "nesting deeper than"),
    ];
    let mut files = Vec::new();
    for (name, text, _) in &inputs {
        use std::io::Write;
        let path = temp_file(&format!("hostile-{name}"), |f| {
            f.write_all(text.as_bytes()).expect("write");
        });
        files.push(Removed(path));
    }
    let big = fifty_mb_scalar("check");
    let mut cases: Vec<(&Path, &str)> = files
        .iter()
        .zip(&inputs)
        .map(|(f, (_, _, expect))| (f.0.as_path(), *expect))
        .collect();
    cases.push((&big.0, "inventory too large"));
    for (path, expect) in cases {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_pgsvc"))
            .args(["check", "--config"])
            .arg(path)
            .output()
            .expect("run pgsvc");
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", path.display());
        assert!(
            stderr.contains("pgsvc: error: ") && stderr.contains(expect),
            "{}: {stderr}",
            path.display()
        );
        assert!(
            took < Duration::from_secs(3),
            "{}: took {took:?}",
            path.display()
        );
    }
}
