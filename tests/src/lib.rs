//! Shared helpers of pgsvc's integration tests: packet building and independent checksum
//! verification (packet tier), RAII guards for pins, namespaces and processes (netns tier), and the
//! skip record that keeps a test that did not run from counting as passed.

pub mod agent_rig;
pub mod etcd;
pub mod guard;
pub mod local_client;
pub mod netns;
pub mod packet;
pub mod sandbox;
pub mod write_errors;

use std::io::Write as _;

/// The file `cargo xtask test` names for skip records: one line per skipped test, appended.
pub const SKIP_FILE_ENV: &str = "PGSVC_TEST_SKIP_FILE";

/// True when running as root; otherwise records the calling test as skipped (see [`skip`]) and
/// returns false, and the test returns early. CI runs as root, so there these tests always run.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(
        test,
        "needs root (BPF, network namespaces); run `cargo xtask test` as root",
    );
    false
}

/// Records that the calling test did not run, and why.
///
/// libtest has no "skipped" outcome: a test that returns early is counted as passed, and its
/// `eprintln!` output is captured and thrown away when it passes. So the line goes straight to the
/// process's stderr (fd 2, which libtest does not capture), and — when `cargo xtask test` set
/// [`SKIP_FILE_ENV`] — a record `NAME<TAB>WHY` is appended to that file, from which xtask counts the
/// test as skipped instead of passed (and, under `CI=true`, fails the run).
///
/// NAME is the libtest name of the running test (its thread's name), so that a helper shared by
/// many tests records each of them; `label` is used outside a test thread.
pub fn skip(label: &str, why: &str) {
    let name = running_test(label);
    let line = format!("SKIPPED {name}: {why}\n");
    // SAFETY: write(2) on fd 2 with a valid buffer; a short or failed write only loses the line.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    if let Some(path) = std::env::var_os(SKIP_FILE_ENV) {
        let path = std::path::Path::new(&path);
        if let Err(e) = record_skip(path, &name, why) {
            panic!("{name}: cannot record the skip in {}: {e}", path.display());
        }
    }
}

/// The libtest name of the running test (libtest names each test's thread after it), else `label`.
fn running_test(label: &str) -> String {
    match std::thread::current().name() {
        Some(n) if n != "main" => n.to_owned(),
        _ => label.to_owned(),
    }
}

/// Appends `NAME<TAB>WHY<LF>` to `path` (tabs and newlines of WHY flattened). O_APPEND: records of
/// parallel tests and test binaries never interleave within a line.
fn record_skip(path: &std::path::Path, name: &str, why: &str) -> std::io::Result<()> {
    let why: String = why
        .chars()
        .map(|c| if c == '\t' || c == '\n' { ' ' } else { c })
        .collect();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(format!("{name}\t{why}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_records_append_one_line_each() {
        let dir = std::env::temp_dir().join(format!("pgsvc-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("skips");
        let _ = std::fs::remove_file(&file);
        record_skip(&file, "a::one", "needs root").expect("first record");
        record_skip(&file, "two", "x\ty\nz").expect("second record");
        let text = std::fs::read_to_string(&file).expect("skip file");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(text, "a::one\tneeds root\ntwo\tx y z\n");
    }

    #[test]
    fn a_skip_is_named_after_the_running_test() {
        let name = std::thread::Builder::new()
            .name("module::a_test".into())
            .spawn(|| running_test("label"))
            .expect("spawn")
            .join()
            .expect("join");
        assert_eq!(name, "module::a_test");
        // libtest names this test's own thread after the test, too.
        assert_eq!(
            running_test("label"),
            "tests::a_skip_is_named_after_the_running_test"
        );
    }
}
