//! `cargo xtask package`: a Debian package of pgsvc, built with `dpkg-deb` and checked before it is
//! reported.
//!
//! Contents: the release binary, the systemd unit (`packaging/pgsvc.service`), the options file
//! (`packaging/pgsvc.default` as the conffile `/etc/default/pgsvc`), the example inventory, man
//! pages (`pgsvc man`) and bash/zsh completions (`pgsvc completions`). The check lists the package
//! (`dpkg-deb -c`), unpacks it into an empty root (`dpkg -x`), runs the unpacked binary's
//! `--version`, and verifies the unit with `systemd-analyze verify` when systemd's tools are
//! installed, always with the project's own checks of the unit's key lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};

use crate::cmd;

/// Where each packaged file goes.
pub const BINARY: &str = "usr/bin/pgsvc";
pub const UNIT: &str = "lib/systemd/system/pgsvc.service";
pub const DEFAULTS: &str = "etc/default/pgsvc";
pub const EXAMPLE: &str = "usr/share/doc/pgsvc/examples/pigsty.yml";
pub const COPYRIGHT: &str = "usr/share/doc/pgsvc/copyright";
pub const MAN_DIR: &str = "usr/share/man/man1";
pub const BASH_COMPLETION: &str = "usr/share/bash-completion/completions/pgsvc";
pub const ZSH_COMPLETION: &str = "usr/share/zsh/vendor-completions/_pgsvc";

/// What a package is made of.
pub struct Inputs {
    pub binary: PathBuf,
    pub version: String,
    pub arch: String,
    /// The workspace root (packaging/, examples/).
    pub root: PathBuf,
}

/// `cargo xtask package`: builds the release binary, the .deb, and checks it. Returns its path.
pub fn package() -> anyhow::Result<PathBuf> {
    let binary = crate::build(true)?;
    let inputs = Inputs {
        binary,
        version: version()?,
        arch: arch(),
        root: crate::workspace_root(),
    };
    let work = crate::target_dir()?.join("debian");
    let deb = build_deb(&inputs, &work)?;
    verify_deb(&deb, &inputs.version, &work.join("check"))?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// pgsvc-userspace's version from `cargo metadata`.
fn version() -> anyhow::Result<String> {
    let out = cmd::capture(cmd::cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let meta: serde_json::Value = serde_json::from_str(&out).context("parsing `cargo metadata`")?;
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "pgsvc-userspace")
        .and_then(|p| p["version"].as_str())
        .map(str::to_owned)
        .context("`cargo metadata` has no pgsvc-userspace version")
}

/// dpkg's name of this machine's architecture.
fn arch() -> String {
    cmd::probe(Command::new("dpkg").arg("--print-architecture")).unwrap_or_else(|| {
        match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }
        .to_owned()
    })
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn write(to: &Path, text: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

/// Runs the packaged binary to produce a generated file (man pages, completions).
fn generated(binary: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("running {} {}", binary.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            binary.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn du_kib(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                total += du_kib(&path);
            } else if let Ok(m) = e.metadata() {
                total += m.len().div_ceil(1024);
            }
        }
    }
    total
}

/// Stages the package tree under `work/stage` and builds `work/pgsvc_VERSION_ARCH.deb`.
pub fn build_deb(inputs: &Inputs, work: &Path) -> anyhow::Result<PathBuf> {
    let stage = work.join("stage");
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let pkg = inputs.root.join("packaging");
    copy(&inputs.binary, &stage.join(BINARY), 0o755)?;
    copy(&pkg.join("pgsvc.service"), &stage.join(UNIT), 0o644)?;
    copy(&pkg.join("pgsvc.default"), &stage.join(DEFAULTS), 0o644)?;
    copy(
        &inputs.root.join("examples/pigsty.yml"),
        &stage.join(EXAMPLE),
        0o644,
    )?;
    write(
        &stage.join(COPYRIGHT),
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
          Upstream-Name: pgsvc\n\nFiles: *\nLicense: MIT OR Apache-2.0\n",
        0o644,
    )?;
    let man = stage.join(MAN_DIR);
    let listed = generated(
        &inputs.binary,
        &["man", "--out-dir", &man.to_string_lossy()],
    )?;
    ensure!(
        !listed.is_empty() && man.join("pgsvc.1").is_file(),
        "`pgsvc man --out-dir` wrote no pgsvc.1"
    );
    let mut gz = Command::new("gzip");
    gz.args(["-9", "-n", "-f"]);
    for e in std::fs::read_dir(&man).with_context(|| format!("reading {}", man.display()))? {
        gz.arg(e.context("reading the man pages")?.path());
    }
    cmd::run(&mut gz)?;
    write(
        &stage.join(BASH_COMPLETION),
        &generated(&inputs.binary, &["completions", "bash"])?,
        0o644,
    )?;
    write(
        &stage.join(ZSH_COMPLETION),
        &generated(&inputs.binary, &["completions", "zsh"])?,
        0o644,
    )?;

    let control = format!(
        "Package: pgsvc\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: pgsvc developers <pgsvc@example.invalid>\n\
         Installed-Size: {size}\n\
         Depends: libc6, iproute2\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://example.invalid/pgsvc\n\
         Description: Patroni-aware XDP load balancer for PostgreSQL services\n \
         pgsvc serves Pigsty's primary/replica/default/offline services of PostgreSQL\n \
         clusters run by Patroni, forwarding packets with an XDP program instead of\n \
         proxying them. Drop-in for the HAProxy service layer: same ports, same checks.\n",
        version = inputs.version,
        arch = inputs.arch,
        size = du_kib(&stage),
    );
    write(&stage.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    write(
        &stage.join("DEBIAN/conffiles"),
        format!("/{DEFAULTS}\n").as_bytes(),
        0o644,
    )?;
    // The unit is not enabled or started by the install: it needs an interface and an inventory.
    write(
        &stage.join("DEBIAN/postinst"),
        b"#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
        0o755,
    )?;

    let deb = work.join(format!("pgsvc_{}_{}.deb", inputs.version, inputs.arch));
    let mut c = Command::new("dpkg-deb");
    c.args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&stage)
        .arg(&deb);
    cmd::run(&mut c)?;
    Ok(deb)
}

/// Lists, unpacks and checks a package; `scratch` is emptied first and used as the install root.
pub fn verify_deb(deb: &Path, version: &str, scratch: &Path) -> anyhow::Result<()> {
    let listing = cmd::capture(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    for (path, mode) in [
        (BINARY, "-rwxr-xr-x"),
        (UNIT, "-rw-r--r--"),
        (DEFAULTS, "-rw-r--r--"),
        (EXAMPLE, "-rw-r--r--"),
        ("usr/share/man/man1/pgsvc.1.gz", "-rw-r--r--"),
        ("usr/share/man/man1/pgsvc-run.1.gz", "-rw-r--r--"),
        (BASH_COMPLETION, "-rw-r--r--"),
        (ZSH_COMPLETION, "-rw-r--r--"),
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!("./{path}")))
            .with_context(|| format!("{} lacks /{path}:\n{listing}", deb.display()))?;
        ensure!(
            line.starts_with(mode) && line.contains("root/root"),
            "/{path} in {} should be {mode} root/root: {line}",
            deb.display()
        );
    }
    let fields = cmd::capture(
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(deb)
            .args(["Package", "Version"]),
    )?;
    ensure!(
        fields.contains("Package: pgsvc") && fields.contains(&format!("Version: {version}")),
        "control fields of {}: {fields}",
        deb.display()
    );

    if scratch.exists() {
        std::fs::remove_dir_all(scratch)
            .with_context(|| format!("removing {}", scratch.display()))?;
    }
    let root = scratch.join("root");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    cmd::capture(Command::new("dpkg").arg("-x").arg(deb).arg(&root))?;
    let control = scratch.join("control");
    cmd::capture(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control))?;
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    ensure!(
        conffiles.lines().any(|l| l == format!("/{DEFAULTS}")),
        "/{DEFAULTS} is not a conffile: {conffiles:?}"
    );
    let binary = root.join(BINARY);
    let shown = cmd::capture(Command::new(&binary).arg("--version"))?;
    ensure!(
        shown.contains(version),
        "{} --version printed {shown:?}, not {version}",
        binary.display()
    );
    let unit_text = std::fs::read_to_string(root.join(UNIT))
        .with_context(|| format!("reading the unpacked /{UNIT}"))?;
    check_unit(&unit_text)?;
    systemd_verify(&unit_text, &root)?;
    println!(
        "package check: {} lists and unpacks with every file; unit checked",
        deb.display()
    );
    Ok(())
}

/// `systemd-analyze verify` of the unit, with `/usr/bin/pgsvc` pointing into the unpacked root (it
/// checks that executables exist). Any warning fails: systemd-analyze exits 0 on most of them.
fn systemd_verify(unit_text: &str, root: &Path) -> anyhow::Result<()> {
    if cmd::probe(Command::new("systemd-analyze").arg("--version")).is_none() {
        println!(
            "package check: systemd-analyze is not installed; the unit had the parser checks only"
        );
        return Ok(());
    }
    let dir = root.parent().unwrap_or(root).join("unit");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let unit = dir.join("pgsvc.service");
    let text = unit_text.replace(&format!("/{BINARY}"), &root.join(BINARY).to_string_lossy());
    std::fs::write(&unit, text).with_context(|| format!("writing {}", unit.display()))?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .context("running systemd-analyze verify")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{}",
        unit.display(),
        out.status,
        stderr.trim()
    );
    println!("package check: systemd-analyze verify accepts the unit");
    Ok(())
}

/// `(section, key, value)` of every assignment; comments and blank lines skipped.
fn parse_unit(text: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .with_context(|| format!("unit line {}: not KEY=VALUE: {line}", n + 1))?;
        ensure!(
            !section.is_empty(),
            "unit line {}: outside a section",
            n + 1
        );
        out.push((
            section.clone(),
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    Ok(out)
}

/// The unit's contract (issue 12): notify, check before start, SIGHUP reload, --keep with the
/// stop/restart decision in ExecStopPost, file limit, bpffs ordering, the options file.
pub fn check_unit(text: &str) -> anyhow::Result<()> {
    let entries = parse_unit(text)?;
    let get = |section: &str, key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    let one = |section: &str, key: &str| -> anyhow::Result<&str> {
        match get(section, key).as_slice() {
            [v] => Ok(*v),
            [] => bail!("the unit has no {key}= in [{section}]"),
            many => bail!("the unit has {} {key}= lines in [{section}]", many.len()),
        }
    };
    ensure!(one("Service", "Type")? == "notify", "Type= must be notify");
    ensure!(
        one("Service", "ExecStartPre")?.starts_with(&format!("/{BINARY} check ")),
        "ExecStartPre= must run `pgsvc check`"
    );
    let start = one("Service", "ExecStart")?;
    ensure!(
        start.starts_with(&format!("/{BINARY} run "))
            && start.split_whitespace().any(|w| w == "--keep"),
        "ExecStart= must run `pgsvc run ... --keep`: {start}"
    );
    ensure!(
        one("Service", "ExecReload")?.contains("-HUP $MAINPID"),
        "ExecReload= must send SIGHUP to $MAINPID"
    );
    ensure!(
        one("Service", "ExecStopPost")?.contains("detach --systemd-stop-post"),
        "ExecStopPost= must run `pgsvc detach --systemd-stop-post`"
    );
    let nofile = one("Service", "LimitNOFILE")?;
    ensure!(
        nofile == "infinity" || nofile.parse::<u64>().is_ok_and(|n| n >= 4096),
        "LimitNOFILE={nofile} is too low"
    );
    ensure!(
        get("Service", "EnvironmentFile").contains(&"-/etc/default/pgsvc"),
        "EnvironmentFile=-/etc/default/pgsvc missing"
    );
    ensure!(
        get("Unit", "RequiresMountsFor")
            .iter()
            .any(|v| v.split_whitespace().any(|p| p == "/sys/fs/bpf")),
        "RequiresMountsFor=/sys/fs/bpf missing (ordering after the bpffs mount)"
    );
    ensure!(
        get("Unit", "After")
            .iter()
            .any(|v| v.split_whitespace().any(|u| u == "sys-fs-bpf.mount")),
        "After=sys-fs-bpf.mount missing"
    );
    ensure!(
        !get("Install", "WantedBy").is_empty(),
        "[Install] WantedBy= missing"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit() -> String {
        std::fs::read_to_string(crate::workspace_root().join("packaging/pgsvc.service"))
            .expect("packaging/pgsvc.service")
    }

    #[test]
    fn the_unit_meets_its_contract() {
        check_unit(&unit()).expect("packaging/pgsvc.service");
    }

    #[test]
    fn unit_checks_catch_each_broken_line() {
        let good = unit();
        for (from, to) in [
            ("Type=notify", "Type=simple"),
            ("--admin ${PGSVC_ADMIN} --keep", "--admin ${PGSVC_ADMIN}"),
            ("ExecReload=/bin/kill -HUP $MAINPID", "ExecReload=/bin/true"),
            ("RequiresMountsFor=/sys/fs/bpf", "RequiresMountsFor=/var"),
            ("LimitNOFILE=65536", "LimitNOFILE=1024"),
            (
                "ExecStartPre=/usr/bin/pgsvc check",
                "ExecStartPre=/usr/bin/pgsvc status",
            ),
            ("detach --systemd-stop-post", "detach"),
            (
                "EnvironmentFile=-/etc/default/pgsvc",
                "EnvironmentFile=/etc/pgsvc.env",
            ),
            ("[Install]", "[Install]\nNotAssignment"),
        ] {
            assert!(good.contains(from), "test case out of date: {from}");
            let bad = good.replacen(from, to, 1);
            assert!(check_unit(&bad).is_err(), "accepted with {from:?} → {to:?}");
        }
    }

    /// A stand-in for the pgsvc binary: enough of `man`, `completions` and `--version`.
    const STUB: &str = r##"#!/bin/sh
case "$1" in
  man) mkdir -p "$3"; for p in pgsvc pgsvc-run; do printf '.TH %s 1\n' "$p" > "$3/$p.1"; echo "$3/$p.1"; done ;;
  completions) echo "# $2 completion for pgsvc" ;;
  --version) echo "pgsvc 9.8.7" ;;
  *) exit 2 ;;
esac
"##;

    #[test]
    fn the_package_holds_binary_unit_defaults_example_and_docs() {
        use std::os::unix::fs::PermissionsExt as _;
        if cmd::probe(Command::new("dpkg-deb").arg("--version")).is_none() {
            panic!(
                "dpkg-deb is not installed (Debian's dpkg package): the package cannot be built"
            );
        }
        let work = std::env::temp_dir().join(format!("pgsvc-xtask-deb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("work dir");
        let stub = work.join("pgsvc-stub");
        std::fs::write(&stub, STUB).expect("stub");
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let inputs = Inputs {
            binary: stub,
            version: "9.8.7".into(),
            arch: arch(),
            root: crate::workspace_root(),
        };
        let result = build_deb(&inputs, &work)
            .and_then(|deb| verify_deb(&deb, "9.8.7", &work.join("check")).map(|()| deb));
        let unpacked_unit = std::fs::read_to_string(work.join("check/root").join(UNIT));
        let unpacked_defaults = std::fs::read_to_string(work.join("check/root").join(DEFAULTS));
        let _ = std::fs::remove_dir_all(&work);
        let deb = result.expect("package built and checked");
        assert!(deb.ends_with(format!("pgsvc_9.8.7_{}.deb", arch())));
        assert_eq!(unpacked_unit.expect("unit unpacked"), unit());
        assert!(
            unpacked_defaults
                .expect("defaults unpacked")
                .contains("PGSVC_SOURCE=")
        );
    }

    #[test]
    fn a_package_without_the_unit_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let work = std::env::temp_dir().join(format!("pgsvc-xtask-deb-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("work dir");
        let stub = work.join("pgsvc-stub");
        std::fs::write(&stub, STUB).expect("stub");
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let inputs = Inputs {
            binary: stub,
            version: "9.8.7".into(),
            arch: arch(),
            root: crate::workspace_root(),
        };
        let deb = build_deb(&inputs, &work).expect("package built");
        // Rebuild it without the unit.
        std::fs::remove_file(work.join("stage").join(UNIT)).expect("unit staged");
        let mut c = Command::new("dpkg-deb");
        c.args(["--root-owner-group", "--build"])
            .arg(work.join("stage"))
            .arg(&deb);
        let built = c.output().expect("dpkg-deb").status.success();
        let err = verify_deb(&deb, "9.8.7", &work.join("check")).map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&work);
        assert!(built);
        let err = err.expect_err("a package without its unit must be refused");
        assert!(err.contains("pgsvc.service"), "{err}");
    }
}
