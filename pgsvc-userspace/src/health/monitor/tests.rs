use super::*;
use crate::plan::model::{Balance, BindAddr, ServerOptions};
use std::sync::atomic::{AtomicU16, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A loopback Patroni whose answer status the test changes at run time.
async fn patroni(status: Arc<AtomicU16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let status = status.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                let code = status.load(Ordering::SeqCst);
                let line = format!("HTTP/1.0 {code} X\r\n\r\n");
                let _ = sock.write_all(line.as_bytes()).await;
            });
        }
    });
    port
}

fn service(name: &str, check: &str, ports: &[u16]) -> ServicePlan {
    let ms = Duration::from_millis;
    ServicePlan {
        name: name.to_owned(),
        short_name: name.to_owned(),
        cluster: "pg-test".to_owned(),
        ip: BindAddr::Any,
        port: 5433,
        dest: "default".to_owned(),
        check: check.to_owned(),
        maxconn: 5000,
        balance: Balance::RoundRobin,
        options: ServerOptions {
            inter: ms(40),
            fastinter: ms(20),
            downinter: ms(40),
            rise: 2,
            fall: 2,
            check_timeout: ms(500),
            ..ServerOptions::default()
        },
        options_line: String::new(),
        servers: ports
            .iter()
            .enumerate()
            .map(|(i, port)| ServerPlan {
                name: format!("pg-test-{}", i + 1),
                addr: Ipv4Addr::LOCALHOST,
                port: 6432,
                check_port: *port,
                check_tls: false,
                weight: 100,
                backup: false,
            })
            .collect(),
        allbackups: false,
    }
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<HealthEvent>) -> HealthEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5s")
        .expect("channel open")
}

#[tokio::test]
async fn checker_reports_startup_down_and_up() {
    let status = Arc::new(AtomicU16::new(200));
    let port = patroni(status.clone()).await;
    let svc = service("pg-test-primary", "/primary", &[port]);
    let (mut monitor, mut rx) = HealthMonitor::new(TlsSettings::default());
    monitor.sync([&svc]).expect("sync");
    assert_eq!(monitor.len(), 1);

    let ev = next_event(&mut rx).await;
    assert!(ev.transition.is_startup());
    assert_eq!(ev.transition.to, HealthState::Up);
    assert!(ev.outcome.passed());

    status.store(503, Ordering::SeqCst);
    let ev = next_event(&mut rx).await;
    assert_eq!(
        (ev.transition.from, ev.transition.to),
        (HealthState::Up, HealthState::Down)
    );
    assert_eq!(ev.outcome.result, Err(CheckFailure::L7Status { code: 503 }));
    assert_eq!(ev.health.up_down_total, 1);
    // fall 2: two failures counted from full health.
    assert_eq!(ev.health.failures_total, 2);
    let snap = monitor.server_health(&svc, &svc.servers[0]);
    assert_eq!(snap.state, HealthState::Down);
    assert_eq!(
        snap.last_failure(),
        Some(&CheckFailure::L7Status { code: 503 })
    );
    assert_eq!(
        snap.status_for_balance(),
        crate::balance::ServerStatus::Down
    );

    status.store(200, Ordering::SeqCst);
    let ev = next_event(&mut rx).await;
    assert_eq!(
        (ev.transition.from, ev.transition.to),
        (HealthState::Down, HealthState::Up)
    );
    assert!(!ev.health.up_at_startup);
    assert!(matches!(
        ev.health.status_for_balance(),
        crate::balance::ServerStatus::Up {
            at_startup: false,
            ..
        }
    ));
    monitor.shutdown().await;
}

#[tokio::test]
async fn services_with_the_same_check_share_one_checker() {
    let status = Arc::new(AtomicU16::new(200));
    let port = patroni(status.clone()).await;
    let primary = service("pg-test-primary", "/primary", &[port]);
    let default = service("pg-test-default", "/primary", &[port]);
    let replica = service("pg-test-replica", "/read-only", &[port]);
    let (mut monitor, mut rx) = HealthMonitor::new(TlsSettings::default());
    monitor.sync([&primary, &default, &replica]).expect("sync");
    assert_eq!(monitor.len(), 2, "/primary shared, /read-only separate");
    let users = servers_checked_by(
        [&primary, &default, &replica],
        &CheckKey::for_server(&primary, &primary.servers[0]),
    );
    let names: Vec<&str> = users.iter().map(|(svc, _)| svc.name.as_str()).collect();
    assert_eq!(names, ["pg-test-primary", "pg-test-default"]);
    let mut uris = vec![
        next_event(&mut rx).await.key.target.uri,
        next_event(&mut rx).await.key.target.uri,
    ];
    uris.sort();
    assert_eq!(uris, ["/primary", "/read-only"]);

    // Dropping a service that shares its check keeps the check (and its state) running.
    monitor.sync([&primary, &replica]).expect("sync");
    assert_eq!(monitor.len(), 2);
    assert_eq!(
        monitor.server_health(&primary, &primary.servers[0]).state,
        HealthState::Up
    );
    monitor.sync([&primary]).expect("sync");
    assert_eq!(monitor.len(), 1);
    assert_eq!(
        monitor.server_health(&replica, &replica.servers[0]).state,
        HealthState::Unknown,
        "a stopped check has no state"
    );
    monitor.shutdown().await;
}

#[tokio::test]
async fn bad_check_uri_leaves_the_monitor_unchanged() {
    let status = Arc::new(AtomicU16::new(200));
    let port = patroni(status).await;
    let good = service("pg-test-primary", "/primary", &[port]);
    let bad = service("pg-test-bad", "primary", &[port]);
    let (mut monitor, _rx) = HealthMonitor::new(TlsSettings::default());
    monitor.sync([&good]).expect("sync");
    let err = monitor.sync([&good, &bad]);
    assert!(matches!(err, Err(HealthError::Prober { .. })), "{err:?}");
    assert_eq!(monitor.len(), 1);
    monitor.shutdown().await;
}

#[test]
fn check_timeout_never_exceeds_inter() {
    let mut svc = service("s", "/primary", &[8008]);
    svc.options.inter = Duration::from_secs(2);
    svc.options.check_timeout = Duration::from_secs(3);
    let key = CheckKey::for_server(&svc, &svc.servers[0]);
    assert_eq!(key.timeout, Duration::from_secs(2));
    svc.options.check_timeout = Duration::from_secs(1);
    let key = CheckKey::for_server(&svc, &svc.servers[0]);
    assert_eq!(key.timeout, Duration::from_secs(1));
    assert_eq!(key.target.port, 8008);
    assert_eq!(key.target.uri, "/primary");
}
