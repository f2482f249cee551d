//! netns tier of `--haproxy-config`: the real `pgsvc run` reads the HAProxy files Pigsty would write
//! for the rig's inventory (haproxy.cfg + one conf.d file per service, from `render haproxy`) and
//! serves the same routes as the inventory path; a reload re-reads the files, and a broken file is
//! refused with its file:line while the running plan keeps serving.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use pgsvc_tests::{
    agent_rig::{AgentRig, LB, inventory},
    guard::unique,
    require_root,
};

const FAST: &str = "inter 1s fastinter 500ms downinter 1s rise 2 fall 2 on-marked-down shutdown-sessions slowstart 0s maxconn 3000 weight 100";

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The directory the HAProxy files are written to, removed on drop (also when the test fails).
struct Files(PathBuf);

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `render haproxy` of `inventory_text`, laid out as Pigsty does: global/defaults in haproxy.cfg,
/// each listen in conf.d/<name>.cfg.
fn pigsty_layout(inventory_text: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let (plan, _) =
        pgsvc::plan::plan_from_str(inventory_text, "rig.yml", None).expect("rig inventory");
    let rendered = pgsvc::render::haproxy_config(&plan);
    let main = dir.join("haproxy.cfg");
    let confd = dir.join("conf.d");
    std::fs::create_dir_all(&confd).expect("conf.d");
    let (head, rest) = rendered
        .split_once("\nlisten ")
        .expect("rendered config has listens");
    std::fs::write(&main, format!("{head}\n")).expect("haproxy.cfg");
    for section in rest.split("\nlisten ") {
        let name = section.lines().next().expect("listen name").trim();
        std::fs::write(
            confd.join(format!("{name}.cfg")),
            format!("listen {section}\n"),
        )
        .expect("conf.d file");
    }
    (main, confd)
}

#[test]
fn haproxy_config_serves_the_inventory_routes_and_reloads() {
    if !require_root("haproxy_config") {
        return;
    }
    let files = Files(std::env::temp_dir().join(unique("hcfg")));
    std::fs::create_dir_all(&files.0).expect("temp dir");
    let (main, confd) = pigsty_layout(&inventory(FAST, ""), &files.0);
    assert_eq!(std::fs::read_dir(&confd).expect("conf.d").count(), 4);
    let (main_s, confd_s) = (main.display().to_string(), confd.display().to_string());
    let mut rig = AgentRig::start_with(
        // The rig writes this inventory too, but the agent is given only the HAProxy files.
        &inventory(FAST, ""),
        stub(),
        &["--haproxy-config", &main_s, "--haproxy-config", &confd_s],
    );
    let config = rig.status()["config"].as_str().unwrap_or("").to_owned();
    assert!(config.contains("conf.d"), "status config: {config}");
    // The same routes as netns_agent's inventory test.
    assert_eq!(set(&rig.land(5433, 6)), names(&["pg-test-1:6432"]));
    assert_eq!(set(&rig.land(5434, 6)), names(&["pg-test-2:6432"]));
    assert_eq!(set(&rig.land(5436, 4)), names(&["pg-test-1:5432"]));
    assert_eq!(set(&rig.land(5438, 4)), names(&["pg-test-3:5432"]));
    let mut keep = rig.connect(5433).expect("connect");
    assert_eq!(keep.echo(b"before").expect("echo"), b"before");

    // Reload re-reads the HAProxy files: the replica service moves to 5440.
    let replica = confd.join("pg-test-replica.cfg");
    let text = std::fs::read_to_string(&replica).expect("read");
    std::fs::write(&replica, text.replace(":5434", ":5440")).expect("write");
    let admin = format!("{LB}:{}", pgsvc_tests::agent_rig::ADMIN_PORT);
    let (code, out, err) = rig.pgsvc_cli(&["reload", "--admin", &admin]);
    assert_eq!(code, 0, "{out}{err}");
    rig.wait_for("5440 served", Duration::from_secs(6), |r| {
        r.land(5440, 1) == ["pg-test-2:6432"]
    });
    assert_eq!(set(&rig.land(5440, 4)), names(&["pg-test-2:6432"]));
    assert!(rig.connect(5434).is_err(), "5434 is no longer served");
    assert_eq!(keep.echo(b"after").expect("flow kept"), b"after");

    // A directive outside the subset: refused with file:line, the old plan keeps serving.
    let primary = confd.join("pg-test-primary.cfg");
    let text = std::fs::read_to_string(&primary).expect("read");
    std::fs::write(&primary, format!("{text}    stick-table type ip size 1m\n")).expect("write");
    let line = text.lines().count() + 1;
    let (code, out, err) = rig.pgsvc_cli(&["reload", "--admin", &admin]);
    assert_ne!(code, 0, "{out}");
    let at = format!("pg-test-primary.cfg:{line}:");
    assert!(err.contains(&at), "expected {at} in {err}");
    assert_eq!(set(&rig.land(5433, 2)), names(&["pg-test-1:6432"]));
    assert_eq!(keep.echo(b"still").expect("flow kept"), b"still");
    rig.agent
        .as_mut()
        .map(|a| a.signal_and_wait(libc::SIGTERM, Duration::from_secs(10)));
    rig.agent = None;
}
