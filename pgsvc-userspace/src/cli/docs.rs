//! `pgsvc completions SHELL` and `pgsvc man`: shell completions and man pages generated from the
//! command line's own definition, so they never drift from it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write pgsvc.1 and one pgsvc-COMMAND.1 per subcommand into this directory instead of printing
    /// pgsvc.1 to stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Writes the completion script of `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut cmd = super::Cli::command();
    clap_complete::generate(shell, &mut cmd, "pgsvc", out);
}

/// Every man page: `(file name, roff text)`, pgsvc.1 first.
///
/// # Errors
/// Rendering failed (an I/O error of the in-memory buffer).
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let cmd = super::Cli::command();
    let mut pages = Vec::new();
    let mut main = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut main)?;
    pages.push(("pgsvc.1".to_owned(), main));
    for sub in cmd.get_subcommands() {
        let name = format!("pgsvc-{}", sub.get_name());
        let mut text = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name.clone())).render(&mut text)?;
        pages.push((format!("{name}.1"), text));
    }
    Ok(pages)
}

pub fn run_completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    completions(args.shell, &mut std::io::stdout().lock());
    Ok(ExitCode::SUCCESS)
}

pub fn run_man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let pages = man_pages().context("rendering the man pages")?;
    match args.out_dir {
        None => {
            let (_, main) = &pages[0];
            std::io::stdout()
                .lock()
                .write_all(main)
                .context("writing to stdout")?;
        }
        Some(dir) => write_pages(&dir, &pages)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn write_pages(dir: &Path, pages: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in pages {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn completions_know_every_subcommand() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).expect("utf-8");
            for sub in super::super::Cli::command().get_subcommands() {
                assert!(
                    text.contains(sub.get_name()),
                    "{shell:?} completion lacks {}",
                    sub.get_name()
                );
            }
            assert!(text.contains("--pin-dir"), "{shell:?}: no run options");
        }
    }

    #[test]
    fn one_man_page_per_subcommand() {
        let pages = man_pages().expect("render");
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "pgsvc.1");
        for want in [
            "pgsvc-run.1",
            "pgsvc-check.1",
            "pgsvc-detach.1",
            "pgsvc-man.1",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let main = String::from_utf8_lossy(&pages[0].1);
        assert!(main.contains(".TH pgsvc 1"), "{main}");
        let run = String::from_utf8_lossy(&pages[1].1);
        assert!(run.contains("pin\\-dir"), "{run}");
    }

    #[test]
    fn every_subcommand_has_version() {
        let cmd = super::super::Cli::command();
        let subs: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        assert!(subs.len() >= 8, "{subs:?}");
        for sub in subs {
            let err = super::super::Cli::try_parse_from(["pgsvc", sub.as_str(), "--version"])
                .expect_err("--version exits");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::DisplayVersion,
                "pgsvc {sub} --version: {err}"
            );
            assert!(err.to_string().contains(env!("CARGO_PKG_VERSION")), "{err}");
        }
    }
}
