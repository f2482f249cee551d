//! `cargo xtask`: the project's own build, setup and test driver (alias in .cargo/config.toml).
//!
//! ```text
//! cargo xtask setup [--no-apt]                  install what the build and the tests need (idempotent)
//! cargo xtask build [--release]                 build the pgsvc binary
//! cargo xtask run [--release] -- <pgsvc args>   build, then run pgsvc
//! cargo xtask test [--no-setup] [-- <args>]     fmt, clippy and every test tier (root for most)
//! cargo xtask bench [datapath|e2e|all]          benchmarks into bench/results/
//! cargo xtask demo [--non-interactive] [--lb-host]   the real-cluster failover demo
//! cargo xtask package                           the Debian package (target/debian/pgsvc_*.deb)
//! cargo xtask soak [--switchovers N]            N switchovers under the writer probe (not in `test`)
//! ```

mod cmd;
mod layout;
mod package;
mod setup;
mod soak;
mod test;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Build, set up and test pgsvc",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what the build and the tests need: nightly rust-src, bpf-linker (built against the
    /// nightly's LLVM), bpffs, Debian packages, the sandbox venv. Idempotent; quick when all is there.
    Setup {
        /// Skip system packages (Debian packages and the sandbox's Python venv).
        #[arg(long)]
        no_apt: bool,
    },
    /// Build the pgsvc binary (checks the nightly toolchain and bpf-linker first).
    Build {
        /// Optimised build (target/release/pgsvc).
        #[arg(long)]
        release: bool,
    },
    /// Build pgsvc, then run it with the given arguments (exit status passed through).
    Run {
        /// Run the optimised build.
        #[arg(long)]
        release: bool,
        /// Arguments for pgsvc, e.g. `-- check --config examples/pigsty.yml`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "PGSVC_ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Setup, rustfmt, clippy, then unit, packet, netns and e2e tests (most tiers need root).
    Test {
        /// Do not run `setup` first.
        #[arg(long)]
        no_setup: bool,
        /// With setup, skip system packages (Debian packages and the sandbox venv).
        #[arg(long)]
        no_apt: bool,
        /// Passed to every test binary (a name filter, `--nocapture`, ...).
        #[arg(last = true, value_name = "TEST_ARGS")]
        args: Vec<OsString>,
    },
    /// Benchmarks; results in bench/results/*.json.
    Bench {
        #[arg(value_enum, default_value_t = Bench::All)]
        which: Bench,
        /// Do not run `setup` first.
        #[arg(long)]
        no_setup: bool,
        /// Passed to the benchmark program(s), e.g. `-- --quick` or `-- --rounds 3`.
        #[arg(last = true, value_name = "BENCH_ARGS")]
        args: Vec<String>,
    },
    /// The real Patroni cluster in namespaces with pgsvc in front: failovers to watch.
    Demo {
        /// Run the scripted demo to its end without waiting for a key press.
        #[arg(long)]
        non_interactive: bool,
        /// pgsvc on a separate LB host holding the VIP (the second topology) instead of on every
        /// database node (Pigsty's default).
        #[arg(long)]
        lb_host: bool,
        /// Do not run `setup` first.
        #[arg(long)]
        no_setup: bool,
    },
    /// Build the Debian package: binary, systemd unit, /etc/default/pgsvc, example, man pages,
    /// completions; then list, unpack and verify it.
    Package,
    /// N switchovers of the real cluster under the writer probe through pgsvc: 0 lost rows, 0 writes
    /// on a non-primary; results in bench/results/soak.json and BENCHMARKS.md.
    Soak {
        /// How many switchovers (alternating pg-test-1 / pg-test-2).
        #[arg(long, default_value_t = 100)]
        switchovers: u32,
        /// Do not run `setup` first.
        #[arg(long)]
        no_setup: bool,
        /// Passed to the soak program, e.g. `-- --time-limit-min 60`.
        #[arg(last = true, value_name = "SOAK_ARGS")]
        args: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    /// XDP program cost per packet (BPF_PROG_TEST_RUN).
    Datapath,
    /// Through the real sandbox: pgbench, iperf3, failover windows; pgsvc vs HAProxy vs direct, on
    /// the database nodes (node-resident) and on an LB host (`-- --topology node|lb-host` for one).
    E2e,
    /// Both.
    All,
}

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn metadata() -> anyhow::Result<serde_json::Value> {
    let out = cmd::capture(cmd::cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    serde_json::from_str(&out).context("parsing `cargo metadata`")
}

/// Cargo's target directory (honours CARGO_TARGET_DIR and .cargo/config.toml).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let meta = metadata()?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` has no target_directory")
}

/// Whether `package` has a binary target named `bin`.
fn has_bin(package: &str, bin: &str) -> anyhow::Result<bool> {
    let meta = metadata()?;
    let packages = meta["packages"]
        .as_array()
        .context("`cargo metadata` has no packages")?;
    Ok(packages
        .iter()
        .filter(|p| p["name"] == package)
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .any(|t| {
            t["name"] == bin
                && t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
        }))
}

fn build(release: bool) -> anyhow::Result<PathBuf> {
    setup::toolchain()?;
    let mut c = cmd::cargo();
    c.args(["build", "-p", "pgsvc-userspace", "--bin", "pgsvc"]);
    if release {
        c.arg("--release");
    }
    cmd::run(&mut c)?;
    let binary = target_dir()?
        .join(if release { "release" } else { "debug" })
        .join("pgsvc");
    if !binary.is_file() {
        bail!("cargo build succeeded but {} is missing", binary.display());
    }
    println!("built: {}", binary.display());
    Ok(binary)
}

fn run(release: bool, args: &[OsString]) -> anyhow::Result<ExitCode> {
    let binary = build(release)?;
    let mut c = std::process::Command::new(&binary);
    c.args(args);
    println!("+ {}", cmd::display(&c));
    // exec: signals (Ctrl-C, SIGTERM) and the exit status are pgsvc's own.
    use std::os::unix::process::CommandExt as _;
    let err = c.exec();
    Err(err).with_context(|| format!("could not start {}", binary.display()))
}

/// `cargo run --release -p pgsvc-tests --bin NAME -- ARGS`, failing clearly when NAME is not written yet.
fn tests_bin(bin: &str, args: &[&str]) -> anyhow::Result<()> {
    if !has_bin("pgsvc-tests", bin)? {
        bail!(
            "the pgsvc-tests crate has no `{bin}` binary yet (tests/src/bin/{bin}.rs): nothing to run"
        );
    }
    let mut c = cmd::cargo();
    c.args(["run", "--release", "-p", "pgsvc-tests", "--bin", bin, "--"])
        .args(args);
    cmd::run(&mut c)
}

fn bench(which: Bench, no_setup: bool, extra: &[String]) -> anyhow::Result<()> {
    if !no_setup {
        match which {
            Bench::Datapath => setup::datapath()?,
            Bench::E2e | Bench::All => setup::full(setup::Options {
                system_packages: true,
            })?,
        }
    }
    let runs: &[(&str, &str)] = match which {
        Bench::Datapath => &[("bench-datapath", "datapath.json")],
        Bench::E2e => &[("bench-e2e", "e2e.json")],
        Bench::All => &[
            ("bench-datapath", "datapath.json"),
            ("bench-e2e", "e2e.json"),
        ],
    };
    let mut ran = 0;
    for (bin, out) in runs {
        if which == Bench::All && !has_bin("pgsvc-tests", bin)? {
            println!("bench: SKIPPED {bin}: not written yet (tests/src/bin/{bin}.rs)");
            continue;
        }
        let results = workspace_root().join("bench").join("results");
        std::fs::create_dir_all(&results)
            .with_context(|| format!("creating {}", results.display()))?;
        let out = format!("bench/results/{out}");
        let mut args: Vec<&str> = vec!["--out", &out];
        args.extend(extra.iter().map(String::as_str));
        tests_bin(bin, &args)?;
        println!("bench: results in {out}");
        ran += 1;
    }
    if ran == 0 {
        bail!("no benchmark binary exists yet (bench-datapath, bench-e2e in tests/src/bin/)");
    }
    Ok(())
}

fn demo(non_interactive: bool, lb_host: bool, no_setup: bool) -> anyhow::Result<()> {
    if !no_setup {
        setup::full(setup::Options {
            system_packages: true,
        })?;
    }
    // The release pgsvc, named to the demo through PGSVC_BIN.
    let pgsvc = build(true)?;
    if !has_bin("pgsvc-tests", "demo")? {
        bail!("the pgsvc-tests crate has no `demo` binary (tests/src/bin/demo.rs)");
    }
    let mut c = cmd::cargo();
    c.args([
        "run",
        "--release",
        "-p",
        "pgsvc-tests",
        "--bin",
        "demo",
        "--",
    ])
    .env("PGSVC_BIN", &pgsvc);
    if non_interactive {
        c.arg("--non-interactive");
    }
    if lb_host {
        c.arg("--lb-host");
    }
    println!("+ {}", cmd::display(&c));
    // exec (cargo run execs the demo in turn): Ctrl-C and SIGTERM reach the demo itself, which
    // tears the sandbox down, and its exit status is the command's.
    use std::os::unix::process::CommandExt as _;
    let err = c.exec();
    Err(err).context("could not start cargo run")
}

fn main() -> ExitCode {
    // `cargo xtask test | head` should end quietly, not panic in println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup { no_apt } => setup::full(setup::Options {
            system_packages: !no_apt,
        })
        .map(|()| ExitCode::SUCCESS),
        Cmd::Build { release } => build(release).map(|_| ExitCode::SUCCESS),
        Cmd::Run { release, args } => run(release, &args),
        Cmd::Test {
            no_setup,
            no_apt,
            args,
        } => (|| {
            if !no_setup {
                setup::full(setup::Options {
                    system_packages: !no_apt,
                })?;
            }
            Ok(if test::run(&args)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        })(),
        Cmd::Bench {
            which,
            no_setup,
            args,
        } => bench(which, no_setup, &args).map(|()| ExitCode::SUCCESS),
        Cmd::Demo {
            non_interactive,
            lb_host,
            no_setup,
        } => demo(non_interactive, lb_host, no_setup).map(|()| ExitCode::SUCCESS),
        Cmd::Package => package::package().map(|_| ExitCode::SUCCESS),
        Cmd::Soak {
            switchovers,
            no_setup,
            args,
        } => soak::run(switchovers, no_setup, &args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
