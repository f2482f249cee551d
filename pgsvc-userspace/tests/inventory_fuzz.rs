//! Fuzzing the inventory reader and planner (issue 9, acceptance 5): mutated inventories — bytes
//! changed, inserted and deleted, lines duplicated and re-indented (nesting), anchors and aliases
//! injected, deep selectors, long scalars — must each end in a plan or an error, never a panic or an
//! abort, and each within [`PER_INPUT`].
//!
//! The run is seeded: the seed is printed first and repeated in any failure. Reproduce with
//! `PGSVC_FUZZ_SEED=<seed>`; change the number of cases with `PGSVC_FUZZ_CASES` (default 100,000,
//! split over two threads).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// What one input may take (debug build, shared 2-core machine).
const PER_INPUT: Duration = Duration::from_secs(1);
const DEFAULT_CASES: u32 = 100_000;
const THREADS: u64 = 2;

/// The inventories the mutations start from: the example, the CLI fixtures and a rig-like one.
fn corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts = vec![
        std::fs::read_to_string(root.join("../examples/pigsty.yml")).expect("examples/pigsty.yml"),
    ];
    let mut fixtures: Vec<_> = std::fs::read_dir(root.join("tests/fixtures"))
        .expect("tests/fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    fixtures.sort();
    for path in fixtures {
        texts.push(std::fs::read_to_string(&path).expect("fixture"));
    }
    texts.push(
        "base: &base { pg_cluster: pg-x, pg_rto: fast }
all:
  children:
    pg-x:
      hosts:
        198.18.0.21: { pg_seq: 1, pg_role: primary, pg_weight: 10 }
        198.18.0.22: { pg_seq: 2, pg_role: replica, pg_offline_query: true }
      vars:
        <<: *base
        pg_rto_plan: { fast: [ 15, 5, 5, 15, 5, 1s, 500ms, 1s, 2, 2 ] }
        pg_services:
          - { name: s1, port: 5440, ip: 198.18.0.2, selector: \"[? pg_role == `replica`]\", backup: \"[0]\", dest: 5432, check: /health, maxconn: 10, balance: leastconn, options: \"inter 1s rise 2\" }
"
        .to_owned(),
    );
    texts
}

/// Text the mutations insert: YAML structure, anchors and aliases, Pigsty variables, selectors.
const SNIPPETS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ": ",
    "- ",
    ",",
    "\n",
    "  ",
    "    ",
    "'",
    "\"",
    "`",
    "#",
    "?",
    "|",
    ">",
    "&a ",
    "&b ",
    "*a",
    "*b",
    "<<: *a\n",
    "<<: [*a, *b]",
    "!!str ",
    "!!int ",
    "!unsafe ",
    "~",
    "null",
    "yes",
    "0x1f",
    "0755",
    "1e3",
    "-.inf",
    ".nan",
    "\u{feff}",
    "\t",
    "\r",
    "\0",
    "pg_cluster: pg-test\n",
    "pg_seq: 1\n",
    "pg_role: primary\n",
    "pg_role: [x]\n",
    "pg_services: [ { name: z, port: 5499, selector: \"[]\" } ]\n",
    "port: 99999",
    "port: -1",
    "ip: \"*\"",
    "ip: 300.1.1.1",
    "dest: 7",
    "dest: nowhere",
    "check: x",
    "balance: first",
    "options: \"inter 0 rise 0\"",
    "options: \"fastinter 0.5s slowstart 99999999d\"",
    "selector: \"[? pg_role == `primary` ]\"",
    "selector: \"[? ]\"",
    "selector: \"reverse(@)\"",
    "selector: \"[].pg_seq\"",
    "selector: \"[? contains(pg_seq, `1`) ]\"",
    "backup: \"[0]\"",
    "pg_rto: wide\n",
    "pg_rto_plan: { norm: [1,2] }\n",
    "pg_vip_enabled: true\n",
    "pg_vip_address: 198.18.0.9/33\n",
    "pg_service_provider: infra\n",
    "children: { a: {} }\n",
    "hosts: { 198.18.0.99: { pg_seq: 9 } }\n",
    "vars: [1]\n",
    "ansible_group_priority: 9\n",
];

/// One change to the text; positions are taken modulo its length when applied.
#[derive(Debug, Clone)]
enum Mutation {
    SetByte(Index, u8),
    Insert(Index, &'static str),
    Delete(Index, usize),
    DuplicateLines(Index, usize, Index),
    Indent(Index, usize),
    Anchor(Index, u8),
    Alias(Index, u8),
    DeepSelector(Index, usize, char),
    LongScalar(Index, usize),
    Nest(Index, usize),
    Bomb(u8),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        6 => (any::<Index>(), proptest::sample::select(SNIPPETS)).prop_map(|(i, s)| Mutation::Insert(i, s)),
        2 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<Index>(), 1usize..8, any::<Index>()).prop_map(|(a, n, b)| Mutation::DuplicateLines(a, n, b)),
        2 => (any::<Index>(), 1usize..12).prop_map(|(i, n)| Mutation::Indent(i, n)),
        2 => (any::<Index>(), 0u8..3).prop_map(|(i, n)| Mutation::Anchor(i, n)),
        2 => (any::<Index>(), 0u8..3).prop_map(|(i, n)| Mutation::Alias(i, n)),
        // Sizes stay a few KB, past every limit (64 selector levels, 64 and 255 YAML levels) but
        // cheap to scan in a debug build; tests/inventory_limits.rs has the 10,000-deep selector,
        // the 100,000-deep YAML and the 50 MB file.
        1 => (any::<Index>(), 1usize..1_000, proptest::sample::select(vec!['(', '[', '{', '!', '&'])).prop_map(|(i, n, c)| Mutation::DeepSelector(i, n, c)),
        1 => (any::<Index>(), 1usize..4_096).prop_map(|(i, n)| Mutation::LongScalar(i, n)),
        1 => (any::<Index>(), 1usize..400).prop_map(|(i, n)| Mutation::Nest(i, n)),
        // Small bombs only: one that reaches the node limit costs ~10^6 node copies first, too
        // slow for 100k cases; tests/inventory_limits.rs has the full-size one.
        1 => (1u8..5).prop_map(Mutation::Bomb),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// Byte offset `i` of `text`, moved back to a character boundary.
fn at(text: &str, i: &Index) -> usize {
    let mut pos = i.index(text.len() + 1);
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    pos
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .filter(|&i| i <= text.len())
        .collect()
}

fn apply(text: &mut String, m: &Mutation) {
    match m {
        Mutation::SetByte(i, b) => {
            let pos = at(text, i);
            if pos < text.len() {
                let end = text[pos..]
                    .chars()
                    .next()
                    .map_or(pos, |c| pos + c.len_utf8());
                let c = char::from(*b);
                text.replace_range(pos..end, c.encode_utf8(&mut [0; 4]));
            }
        }
        Mutation::Insert(i, s) => text.insert_str(at(text, i), s),
        Mutation::Delete(i, n) => {
            let start = at(text, i);
            let mut end = (start + n).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            text.replace_range(start..end, "");
        }
        Mutation::DuplicateLines(from, n, to) => {
            let starts = line_starts(text);
            let a = starts[from.index(starts.len())];
            let b = starts
                .iter()
                .copied()
                .filter(|&s| s > a)
                .nth(n - 1)
                .unwrap_or(text.len());
            let block = text[a..b].to_owned();
            let dest = starts[to.index(starts.len())];
            text.insert_str(dest, &block);
        }
        Mutation::Indent(i, n) => {
            let starts = line_starts(text);
            text.insert_str(starts[i.index(starts.len())], &" ".repeat(*n));
        }
        Mutation::Anchor(i, n) | Mutation::Alias(i, n) => {
            let starts = line_starts(text);
            let start = starts[i.index(starts.len())];
            let line_end = text[start..].find('\n').map_or(text.len(), |e| start + e);
            let name = char::from(b'a' + n);
            if let Some(colon) = text[start..line_end].find(": ") {
                let value = start + colon + 2;
                if matches!(m, Mutation::Anchor(..)) {
                    text.insert_str(value, &format!("&{name} "));
                } else {
                    text.replace_range(value..line_end, &format!("*{name}"));
                }
            }
        }
        Mutation::DeepSelector(i, n, c) => {
            let close = match c {
                '(' => ")",
                '[' => "]",
                '{' => "}",
                _ => "",
            };
            let body = format!("{}pg_role{}", c.to_string().repeat(*n), close.repeat(*n));
            text.insert_str(at(text, i), &format!("selector: \"[? {body} ]\""));
        }
        Mutation::LongScalar(i, n) => text.insert_str(at(text, i), &"x".repeat(*n)),
        Mutation::Nest(i, n) => {
            let pos = at(text, i);
            text.insert_str(pos, &format!("{}{}", "[".repeat(*n), "]".repeat(*n)));
        }
        Mutation::Bomb(levels) => {
            let mut bomb = String::from("l0: &l0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
            for l in 1..*levels {
                let refs = vec![format!("*l{}", l - 1); 9].join(",");
                bomb.push_str(&format!("l{l}: &l{l} [{refs}]\n"));
            }
            text.insert_str(0, &bomb);
        }
        Mutation::Truncate(i) => {
            let pos = at(text, i);
            text.truncate(pos);
        }
    }
}

fn input() -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    let seeds = corpus().len();
    (0..seeds, proptest::collection::vec(mutation(), 1..6))
}

fn seed() -> u64 {
    match std::env::var("PGSVC_FUZZ_SEED") {
        Ok(text) => text.trim().parse().expect("PGSVC_FUZZ_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

fn cases() -> u32 {
    std::env::var("PGSVC_FUZZ_CASES")
        .ok()
        .map_or(DEFAULT_CASES, |t| {
            t.trim().parse().expect("PGSVC_FUZZ_CASES must be a number")
        })
}

/// Runs `cases` cases from `seed`; the slowest input's time in µs goes to `slowest`.
fn run(seed: u64, cases: u32, slowest: &AtomicU64) -> Result<(), String> {
    let corpus = corpus();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::XorShift, &bytes));
    let outcome = runner.run(&input(), |(base, mutations)| {
        let mut text = corpus[base].clone();
        for m in &mutations {
            apply(&mut text, m);
        }
        let started = Instant::now();
        // Ok or Err are both fine: what must not happen is a panic (caught by the runner and
        // reported as a failure) or an abort (the whole test dies), or a slow input.
        let _ = pgsvc::plan::plan_from_str(&text, "fuzz.yml", None);
        let took = started.elapsed();
        slowest.fetch_max(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if took > PER_INPUT {
            return Err(TestCaseError::fail(format!("took {took:?}")));
        }
        Ok(())
    });
    outcome.map_err(|err| format!("{err}"))
}

#[test]
fn mutated_inventories_never_panic_and_are_checked_quickly() {
    let seed = seed();
    let cases = cases();
    eprintln!(
        "inventory fuzz: seed {seed} (PGSVC_FUZZ_SEED={seed}), {cases} cases on {THREADS} threads"
    );
    let slowest = AtomicU64::new(0);
    let started = Instant::now();
    let per_thread = cases.div_ceil(THREADS as u32);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let slowest = &slowest;
                // Each thread gets its own stream, derived from the one printed seed.
                std::thread::Builder::new()
                    .stack_size(8 << 20)
                    .spawn_scoped(scope, move || {
                        run(seed.wrapping_add(t), per_thread, slowest)
                    })
                    .expect("spawn")
            })
            .collect();
        workers
            .into_iter()
            .enumerate()
            .filter_map(|(t, w)| match w.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!(
                    "thread {t} (seed {}): {e}",
                    seed.wrapping_add(t as u64)
                )),
                Err(_) => Some(format!("thread {t}: the runner itself panicked")),
            })
            .collect()
    });
    let slowest = Duration::from_micros(slowest.load(Ordering::Relaxed));
    eprintln!(
        "inventory fuzz: {} cases in {:?}, slowest input {slowest:?}",
        per_thread * THREADS as u32,
        started.elapsed()
    );
    assert!(failures.is_empty(), "seed {seed}: {}", failures.join("\n"));
}
