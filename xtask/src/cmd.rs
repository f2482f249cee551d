//! Running subprocesses: every command is printed (`+ cargo test ...`) before it runs, inherits the
//! terminal, and a failure names the command and its exit status.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context as _, bail};

/// Variables that a surrounding `cargo`/`rustup` sets for the stable toolchain and that must not
/// leak into a nightly invocation (they would pick the wrong compiler or flags).
const NIGHTLY_ENV_REMOVE: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO",
];

/// A `Command` of `rustup run nightly <program>` with a clean environment.
pub fn nightly(program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", program]);
    for var in NIGHTLY_ENV_REMOVE {
        cmd.env_remove(var);
    }
    cmd
}

/// A plain `cargo` (the stable one the workspace builds with).
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(crate::workspace_root());
    cmd
}

/// Quotes one word for a shell, only when needed.
fn quote(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if safe {
        s.into_owned()
    } else if s.chars().any(char::is_control) {
        // bash's $'...' so that separators such as CARGO_ENCODED_RUSTFLAGS' \x1f stay visible.
        let mut out = String::from("$'");
        for c in s.chars() {
            match c {
                '\\' | '\'' => {
                    out.push('\\');
                    out.push(c);
                }
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('\'');
        out
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command line as a shell would read it, with the variables it sets in front.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn announce(cmd: &Command) {
    println!("+ {}", display(cmd));
    // Keep our line ahead of the child's output when stdout is a pipe (CI logs).
    let _ = std::io::stdout().flush();
}

/// Runs a command with the terminal inherited; an error if it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed: {}", display(cmd), status);
    }
    Ok(())
}

/// Runs a command with the terminal inherited and returns how it ended.
pub fn status(cmd: &mut Command) -> anyhow::Result<ExitStatus> {
    announce(cmd);
    cmd.status()
        .with_context(|| format!("could not start `{}`", display(cmd)))
}

/// Runs a quiet check and returns its trimmed stdout, or `None` if it failed or could not start.
/// Not printed: checks are reported by the step that asks.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Like [`probe`] but an error (with the command and its stderr) when it fails.
pub fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}\n{}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs a command whose stdout is copied through line by line, handing each line to `each`
/// (stderr stays on the terminal). Returns how it ended.
pub fn run_tee(cmd: &mut Command, mut each: impl FnMut(&str)) -> anyhow::Result<ExitStatus> {
    announce(cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout();
        for line in BufReader::new(out).split(b'\n') {
            let line = line.with_context(|| format!("reading the output of `{}`", display(cmd)))?;
            let text = String::from_utf8_lossy(&line);
            let _ = writeln!(stdout, "{text}");
            let _ = stdout.flush();
            each(&text);
        }
    }
    child
        .wait()
        .with_context(|| format!("waiting for `{}`", display(cmd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--", "a b", "it's"]).env("X", "1");
        assert_eq!(display(&cmd), r"X=1 cargo test -- 'a b' 'it'\''s'");
        let mut cmd = Command::new("cargo");
        cmd.env("F", "-Ca\x1f-Cb'");
        assert_eq!(display(&cmd), r"F=$'-Ca\x1f-Cb\'' cargo");
    }
}
