//! netns tier, issue 9 acceptance 5: `POST /reload` of a hostile inventory (a selector nested
//! 10,000 deep, an alias bomb, YAML nested 100,000 deep, a 50 MB file) is refused with its reason,
//! and the agent stays alive and keeps serving the plan it had. A valid reload afterwards still
//! works, so the reload path itself survived.

use std::{
    collections::BTreeSet,
    io::Write,
    time::{Duration, Instant},
};

use pgsvc_tests::{
    agent_rig::{AgentRig, inventory},
    require_root,
};

fn stub() -> &'static str {
    env!("CARGO_BIN_EXE_patroni-stub")
}

const FAST: &str = "inter 1s fastinter 500ms downinter 1s rise 2 fall 2 on-marked-down shutdown-sessions slowstart 0s maxconn 3000 weight 100";

fn lag(selector: &str) -> String {
    format!(
        "{{ name: lag, port: 5440, dest: postgres, check: /read-only, selector: \"{selector}\", options: \"{FAST}\" }}"
    )
}

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

/// Whether the agent process is still running (not exited, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Writes one hostile inventory into the (truncated) inventory file.
type Writer = Box<dyn Fn(&mut std::fs::File)>;

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

#[test]
fn hostile_reloads_leave_the_agent_serving_the_old_plan() {
    if !require_root("hostile_reloads") {
        return;
    }
    let mut rig = AgentRig::start(&inventory(FAST, &lag("[? pg_role == `replica` ]")), stub());
    let pid = rig.agent.as_ref().map(|a| a.pid()).expect("agent running");
    let old_5440: BTreeSet<String> = ["pg-test-2:5432".to_owned()].into();
    assert_eq!(set(&rig.land(5440, 4)), old_5440);
    let mut keep = rig.connect(5433).expect("connect");
    assert_eq!(keep.echo(b"before").expect("echo"), b"before");

    let deep = "(".repeat(10_000) + "pg_role" + &")".repeat(10_000);
    let hostile: Vec<(&str, Writer)> = vec![
        (
            "selector nested 10,000 deep",
            Box::new(move |f| {
                let text = inventory(FAST, &lag(&format!("[? {deep} == `replica` ]")));
                f.write_all(text.as_bytes()).expect("write");
            }),
        ),
        (
            "alias bomb",
            Box::new(|f| f.write_all(alias_bomb().as_bytes()).expect("write")),
        ),
        (
            "YAML nested 100,000 deep",
            Box::new(|f| {
                let text = format!("all: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
                f.write_all(text.as_bytes()).expect("write");
            }),
        ),
        (
            "50 MB scalar",
            Box::new(|f| {
                f.write_all(b"all:\n  vars:\n    x: ").expect("write");
                let chunk = vec![b'a'; 1 << 20];
                for _ in 0..50 {
                    f.write_all(&chunk).expect("write");
                }
            }),
        ),
    ];
    for (what, fill) in &hostile {
        let mut file = std::fs::File::create(&rig.config).expect("rewrite the inventory");
        fill(&mut file);
        drop(file);
        let started = Instant::now();
        let (code, body) = rig.http("POST", "/reload").expect("POST /reload");
        let took = started.elapsed();
        assert_eq!(code, 422, "{what}: {body}");
        assert!(
            body.contains("pigsty.yml"),
            "{what}: the refusal names the file: {body}"
        );
        assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
        assert!(
            alive(pid),
            "{what}: the agent died; log:\n{}",
            rig.log_text()
        );
        assert_eq!(rig.status()["last_reload"]["ok"], false, "{what}");
        assert_eq!(set(&rig.land(5440, 2)), old_5440, "{what}");
        assert_eq!(
            keep.echo(what.as_bytes()).expect("the open flow survives"),
            what.as_bytes()
        );
        eprintln!("{what}: refused in {took:?}");
    }

    // The reload path still works: a valid inventory moves 5440 to the offline node.
    std::fs::write(
        &rig.config,
        inventory(FAST, &lag("[? pg_role == `offline` ]")),
    )
    .expect("write");
    let (code, body) = rig.http("POST", "/reload").expect("POST /reload");
    assert_eq!(code, 200, "{body}");
    rig.wait_for("5440 on pg-test-3", Duration::from_secs(6), |r| {
        r.land(5440, 1) == ["pg-test-3:5432"]
    });
    assert!(alive(pid));
    rig.agent
        .as_mut()
        .map(|a| a.signal_and_wait(libc::SIGTERM, Duration::from_secs(10)));
    rig.agent = None;
}
