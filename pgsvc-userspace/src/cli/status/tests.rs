use super::*;
use crate::admin::fixture::sample_status;

fn line_of<'a>(table: &'a str, needles: &[&str]) -> &'a str {
    table
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?} in\n{table}"))
}

#[test]
fn table_shows_maint_and_drain_first() {
    let mut s = sample_status();
    s.services[0].servers[0].admin_state = AdminState::Drain;
    s.services[0].servers[0].state = "DRAIN".into();
    s.services[0].servers[1].admin_state = AdminState::Maint;
    s.services[0].servers[1].state = "MAINT".into();
    s.services[0].servers[1].last_check = None;
    let table = render_table(&s);
    let drained = line_of(&table, &["pg-test-1", "198.18.0.11"]);
    assert!(drained.contains("DRAIN (UP 3/3)"), "{drained}");
    let maint = line_of(&table, &["pg-test-2", "198.18.0.12"]);
    assert!(maint.contains("MAINT"), "{maint}");
    assert!(maint.contains("not checked (maint)"), "{maint}");
    assert!(!maint.contains("DOWN"), "{maint}");
}

#[test]
fn table_shows_the_key_facts() {
    let table = render_table(&sample_status());
    let head = line_of(&table, &["pgsvc 0.1.0"]);
    for fact in [
        "pid 4242",
        "up 2h05m",
        "iface eth0",
        "xdp native",
        "READY",
        "flows 12/65536",
    ] {
        assert!(head.contains(fact), "{fact:?} missing from {head:?}");
    }
    assert!(
        table.contains("last reload 3m00s ago: ok: reloaded: 2 services\n"),
        "{table}"
    );
    assert!(table.contains("vip 198.18.0.100/24"), "{table}");
    assert!(
        line_of(&table, &["packets"]).contains("fwd_established 123456"),
        "{table}"
    );
    assert!(
        !line_of(&table, &["packets"]).contains("pass"),
        "zero counters are left out: {table}"
    );

    let primary = line_of(&table, &["pg-test-primary"]);
    for fact in [
        "*:5433",
        "check /primary",
        "roundrobin",
        "1 active / 0 backup",
        "sessions 3 (total 127)",
        "in 1.2 MiB out 8.4 MiB",
        "rst 4",
        "dropped 2",
    ] {
        assert!(primary.contains(fact), "{fact:?} missing from {primary:?}");
    }
    let up = line_of(&table, &["pg-test-1", "198.18.0.11:6432", "active"]);
    for fact in [
        "UP 3/3",
        "w100",
        "sess 3/120",
        "last check L7 OK 2ms",
        "UP for 2h03m",
    ] {
        assert!(up.contains(fact), "{fact:?} missing from {up:?}");
    }
    assert!(
        up.starts_with("  "),
        "servers are indented under their service"
    );
    let down = line_of(&table, &["pg-test-2"]);
    for fact in [
        "DOWN 0/2",
        "inactive",
        "last check L7 status 503 4ms",
        "DOWN for 42s",
        "failed checks 498",
        "rst 4",
    ] {
        assert!(down.contains(fact), "{fact:?} missing from {down:?}");
    }
    assert!(line_of(&table, &["pg-test-3", "UNKNOWN"]).contains("no check yet"));

    let offline = line_of(&table, &["pg-test-offline"]);
    assert!(
        offline.contains("USING BACKUPS") && offline.contains("0 active / 1 backup"),
        "{offline}"
    );
    let backup = line_of(&table, &["pg-test-1", "backup"]);
    assert!(
        backup.contains("backup,active") && backup.contains("w50/100") && backup.contains("0.4ms"),
        "{backup}"
    );
    assert!(
        line_of(&table, &["pg-test-3", "DOWN 0/2"]).contains("last check L4 timeout 3.0s"),
        "{table}"
    );
}

#[test]
fn table_flags_trouble() {
    let mut s = sample_status();
    s.ready = false;
    s.services[0].active_servers = 0;
    s.last_reload = Some(crate::status::ReloadStatus {
        at: s.updated_at - 5.0,
        ok: false,
        message: "pigsty.yml:3:7: bad".into(),
    });
    let table = render_table(&s);
    assert!(
        line_of(&table, &["pgsvc 0.1.0"]).contains("NOT READY"),
        "{table}"
    );
    assert!(
        line_of(&table, &["pg-test-primary"]).contains("NO USABLE SERVER"),
        "{table}"
    );
    assert!(
        table.contains(
            "last reload 5s ago: FAILED, kept the previous services: pigsty.yml:3:7: bad"
        ),
        "{table}"
    );
    let empty = render_table(&Status::default());
    assert!(
        empty.contains("no services") && empty.contains("last reload: none"),
        "{empty}"
    );
}

#[test]
fn columns_line_up() {
    let table = render_table(&sample_status());
    let servers: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("  pg-test-"))
        .collect();
    assert_eq!(servers.len(), 5, "{table}");
    let col = |l: &str| l.find("198.18.").unwrap_or(usize::MAX);
    assert!(
        servers.iter().all(|l| col(l) == col(servers[0])),
        "addresses not aligned:\n{table}"
    );
    let col = |l: &str| l.find("sess ").unwrap_or(usize::MAX);
    assert!(
        servers.iter().all(|l| col(l) == col(servers[0])),
        "sessions not aligned:\n{table}"
    );
}

#[test]
fn units() {
    assert_eq!(bytes(0), "0 B");
    assert_eq!(bytes(1023), "1023 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(8_808_038), "8.4 MiB");
    assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    assert_eq!(duration(-3.0), "0s");
    assert_eq!(duration(f64::NAN), "0s");
    assert_eq!(duration(59.9), "59s");
    assert_eq!(duration(192.0), "3m12s");
    assert_eq!(duration(7380.0), "2h03m");
    assert_eq!(duration(370_000.0), "4d06h");
    assert_eq!(millis(0.44), "0.4ms");
    assert_eq!(millis(2.4), "2ms");
    assert_eq!(millis(3000.0), "3.0s");
}

#[test]
fn addresses() {
    assert_eq!(base_url("127.0.0.1:9101"), "http://127.0.0.1:9101");
    assert_eq!(base_url("[::1]:9101"), "http://[::1]:9101");
    assert_eq!(base_url("http://127.0.0.1:9101/"), "http://127.0.0.1:9101");
}

/// The client against a real listener on loopback: a closed port says so plainly.
#[test]
fn no_agent_is_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
        // dropped: nothing listens there any more
    };
    let admin = format!("127.0.0.1:{port}");
    let err = run(StatusArgs {
        admin: admin.clone(),
        json: false,
    })
    .expect_err("no agent");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("no pgsvc agent answers at {admin}")),
        "{msg}"
    );
    assert!(
        msg.contains("is `pgsvc run` running? (connection refused)"),
        "{msg}"
    );
    let err = reload(ReloadArgs { admin }).expect_err("no agent");
    assert!(err.to_string().contains("connection refused"), "{err}");
}

/// status and reload against the real admin server.
#[test]
fn against_the_admin_server() {
    use std::sync::{Arc, RwLock};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (addr, _shutdown) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (reload_tx, mut reloads) =
            tokio::sync::mpsc::channel::<crate::control::ReloadRequest>(1);
        let (state_tx, mut states) =
            tokio::sync::mpsc::channel::<crate::control::ServerStateRequest>(1);
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let status = Arc::new(RwLock::new(sample_status()));
        tokio::spawn(crate::admin::serve(
            listener,
            status,
            reload_tx,
            state_tx,
            shutdown_rx,
        ));
        tokio::spawn(async move {
            while let Some(req) = states.recv().await {
                let answer = if req.server == "pg-test-1" {
                    Ok(crate::control::ServerStateChange {
                        proxy: req.proxy,
                        server: req.server,
                        from: AdminState::Ready,
                        to: req.state,
                        not_saved: None,
                    })
                } else {
                    Err(crate::control::ServerStateError::UnknownServer {
                        proxy: req.proxy,
                        server: req.server,
                    })
                };
                let _ = req.reply.send(answer);
            }
        });
        tokio::spawn(async move {
            let mut first = true;
            while let Some(req) = reloads.recv().await {
                let answer = if first {
                    Ok(crate::control::ReloadSummary::default())
                } else {
                    Err(crate::control::ReloadError::NoServices)
                };
                first = false;
                let _ = req.reply.send(answer);
            }
        });
        (addr, shutdown)
    });
    let admin = addr.to_string();
    assert_eq!(
        run(StatusArgs {
            admin: admin.clone(),
            json: false
        })
        .expect("status"),
        ExitCode::SUCCESS
    );
    assert_eq!(
        run(StatusArgs {
            admin: admin.clone(),
            json: true
        })
        .expect("status --json"),
        ExitCode::SUCCESS
    );
    assert_eq!(
        reload(ReloadArgs {
            admin: admin.clone()
        })
        .expect("reload"),
        ExitCode::SUCCESS
    );
    assert_eq!(
        reload(ReloadArgs {
            admin: admin.clone()
        })
        .expect("refused reload"),
        ExitCode::FAILURE
    );
    // `pgsvc server set`: 0 when applied, non-zero for an unknown server.
    let set = |server: &str| {
        crate::cli::server::run(crate::cli::server::ServerCommand::Set(
            crate::cli::server::SetArgs {
                target: ("pg-test-primary".to_owned(), server.to_owned()),
                state: crate::cli::server::StateArg::Drain,
                admin: admin.clone(),
            },
        ))
    };
    assert_eq!(set("pg-test-1").expect("set"), ExitCode::SUCCESS);
    assert_eq!(set("pg-test-9").expect("unknown server"), ExitCode::FAILURE);
    // The body the table is built from is the agent's snapshot, field for field.
    let body = block_on(get_status(&admin)).expect("GET /status");
    assert_eq!(
        serde_json::from_str::<Status>(&body).expect("parse"),
        sample_status()
    );
}

#[test]
fn table_shows_the_leader_key_and_fenced_servers() {
    let mut s = sample_status();
    assert!(
        !render_table(&s).contains("dcs "),
        "no DCS line without a DCS"
    );
    s.dcs = vec![crate::status::DcsClusterStatus {
        cluster: "pg-test".into(),
        connected: true,
        endpoint: Some("https://198.18.0.5:2379".into()),
        fencing: true,
        leader: Some("pg-test-1".into()),
        revision: 812,
        watch_lag_seconds: Some(0.4),
        fence_events_total: 2,
        ..Default::default()
    }];
    s.services[0].servers[1].fenced = true;
    let t = render_table(&s);
    let line = line_of(&t, &["dcs pg-test:"]);
    assert!(
        line.contains("leader pg-test-1 (write services follow the key)"),
        "{line}"
    );
    assert!(
        line.contains("etcd https://198.18.0.5:2379 rev 812 lag 0.4s"),
        "{line}"
    );
    assert!(line.contains("fenced 2"), "{line}");
    let fenced = line_of(&t, &[&s.services[0].servers[1].name, "fenced"]);
    assert!(fenced.contains("not the leader-key holder"), "{fenced}");

    s.dcs[0].leader_leaving = Some("pg-test-1 is asked to step down for pg-test-2".into());
    let t = render_table(&s);
    let line = line_of(&t, &["dcs pg-test:"]);
    assert!(
        line.contains("leader pg-test-1 STEPPING DOWN, fenced: pg-test-1 is asked"),
        "{line}"
    );

    s.dcs[0].fencing = false;
    s.dcs[0].endpoint = None;
    s.dcs[0].fallback_reason = Some("etcd at https://198.18.0.5:2379 is unreachable".into());
    let t = render_table(&s);
    let line = line_of(&t, &["dcs pg-test:"]);
    assert!(line.contains("REST checks alone: etcd at"), "{line}");
    assert!(line.contains("etcd UNREACHABLE"), "{line}");
}
