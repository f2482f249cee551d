//! `pgsvc run` refuses bad input with a clear message and a non-zero exit, before or instead of
//! touching traffic — and leaves nothing pinned behind. Each case runs in a namespace of its own.

use std::{path::Path, process::Command};

use pgsvc_tests::{
    agent_rig::{NORM, inventory, pgsvc_bin},
    guard::{NetNs, PinDir, unique},
    require_root,
};

struct Outcome {
    code: i32,
    stderr: String,
}

fn run_in(ns: &NetNs, pins: &Path, config: &Path, extra: &[&str]) -> Outcome {
    let out = Command::new(pgsvc_bin())
        .args(["--netns", &ns.name, "run", "--config"])
        .arg(config)
        .args(["--pin-dir"])
        .arg(pins)
        .args(extra)
        .output()
        .expect("running pgsvc");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let p = dir.join("pigsty.yml");
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn bad_input_is_refused_with_the_reason_and_leaves_nothing_behind() {
    if !require_root("run_errors") {
        return;
    }
    let ns = NetNs::new("err");
    ns.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    ns.exec(&["ip", "addr", "add", "198.18.0.2/24", "dev", "eth0"]);
    ns.exec(&["ip", "link", "set", "eth0", "up"]);
    let dir = std::env::temp_dir().join(unique("errcfg"));
    let good = write_config(&dir.join("good"), &inventory(NORM, ""));
    let pins = PinDir::new("err");

    // Malformed YAML: file:line:column, nothing loaded.
    let bad = write_config(&dir.join("bad"), "all:\n  children:\n    pg-test: [ oops\n");
    let o = run_in(&ns, pins.path(), &bad, &["--iface", "eth0"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("pigsty.yml:"), "{}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);

    // A missing interface.
    let o = run_in(&ns, pins.path(), &good, &["--iface", "nosuch0"]);
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("interface nosuch0 does not exist"),
        "{}",
        o.stderr
    );

    // A service port inside the SNAT range.
    let o = run_in(
        &ns,
        pins.path(),
        &good,
        &["--iface", "eth0", "--snat-ports", "5000-6000"],
    );
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("inside the SNAT port range"),
        "{}",
        o.stderr
    );

    // A kernel refusing XDP: loopback has no native (driver) XDP.
    let o = run_in(
        &ns,
        pins.path(),
        &good,
        &[
            "--iface",
            "lo",
            "--xdp-mode",
            "native",
            "--admin",
            "127.0.0.1:19101",
        ],
    );
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("attaching XDP to lo") && o.stderr.contains("native"),
        "{}",
        o.stderr
    );
    assert!(
        !pins.path().join("FLOWS").exists(),
        "a failed start left pins behind"
    );

    // The admin address already taken: refused before anything is loaded.
    let holder = pgsvc_tests::netns::NsWorker::start(&ns.name, || None);
    holder.run(|l: &mut Option<std::net::TcpListener>| {
        *l = Some(std::net::TcpListener::bind("127.0.0.1:19102").expect("hold the port"));
    });
    let o = run_in(
        &ns,
        pins.path(),
        &good,
        &["--iface", "eth0", "--admin", "127.0.0.1:19102"],
    );
    assert_ne!(o.code, 0);
    assert!(
        o.stderr
            .contains("binding the admin API on 127.0.0.1:19102"),
        "{}",
        o.stderr
    );
    assert!(
        !pins.path().exists(),
        "nothing may be pinned when the admin port is taken"
    );
    drop(holder);

    // An unknown cluster.
    let o = run_in(
        &ns,
        pins.path(),
        &good,
        &["--iface", "eth0", "--cluster", "pg-nope"],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("pg-nope"), "{}", o.stderr);

    // Started with `ip netns exec`, whose private /sys hides bpffs: refused with the way out.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(pgsvc_bin())
        .args(["run", "--config"])
        .arg(&good)
        .args(["--iface", "eth0", "--admin", "127.0.0.1:19103", "--pin-dir"])
        .arg(pins.path())
        .output()
        .expect("running pgsvc under ip netns exec");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("ip netns exec") && stderr.contains("--netns"),
        "{stderr}"
    );
    assert!(
        !pins.path().exists(),
        "nothing may be pinned under ip netns exec"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
