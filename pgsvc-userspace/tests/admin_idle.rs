//! The admin API under idle clients (issue 9, item 6): connections that are opened and never send a
//! request must not keep `/status` from answering. Loopback only, no root.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pgsvc::admin::{MAX_CONNECTIONS, serve};
use pgsvc::status::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How long `/status` may take while the idle clients hold their connections.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let status = Status {
        ready: true,
        ..Status::default()
    };
    let (reload_tx, _reloads) = mpsc::channel(1);
    let (state_tx, _states) = mpsc::channel(1);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(serve(
        listener,
        Arc::new(RwLock::new(status)),
        reload_tx,
        state_tx,
        shutdown_rx,
    ));
    Server {
        addr,
        shutdown,
        task,
    }
}

/// `count` connections that never send anything; each is known to be accepted by the server's
/// kernel queue (connect returned).
async fn idle_clients(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(
            TcpStream::connect(addr)
                .await
                .expect("connect an idle client"),
        );
    }
    // Let the server accept them all before the probe, so the probe really is the newest.
    tokio::time::sleep(Duration::from_millis(300)).await;
    clients
}

/// GET /status; the status line, or why there was none.
async fn probe(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    text.lines()
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| "closed without an answer".to_owned())
}

/// Probes `/status` `times` times; the slowest answer, failing on any error or late answer.
async fn probes_answer(addr: SocketAddr, times: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..times {
        let started = Instant::now();
        let answer = tokio::time::timeout(ANSWER_WITHIN, probe(addr)).await;
        let elapsed = started.elapsed();
        match answer {
            Ok(Ok(line)) => assert_eq!(line, "HTTP/1.1 200 OK", "probe {i}"),
            Ok(Err(why)) => panic!("probe {i}: /status failed after {elapsed:?}: {why}"),
            Err(_) => panic!("probe {i}: /status did not answer within {ANSWER_WITHIN:?}"),
        }
        slowest = slowest.max(elapsed);
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_connections_do_not_block_status() {
    let server = start().await;
    let idle = idle_clients(server.addr, 500).await;
    let slowest = probes_answer(server.addr, 30).await;
    eprintln!("500 idle connections: slowest of 30 /status answers {slowest:?}");
    drop(idle);
    server.shutdown.send(true).expect("server still running");
    server.task.await.expect("server task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_idle_connections_than_slots_take_the_oldest_slots() {
    let server = start().await;
    // Past the capacity: the server must make room by closing the oldest silent connections.
    let mut idle = idle_clients(server.addr, MAX_CONNECTIONS + 200).await;
    let slowest = probes_answer(server.addr, 30).await;
    eprintln!(
        "{} idle connections: slowest of 30 /status answers {slowest:?}",
        MAX_CONNECTIONS + 200
    );
    // The very first idle client was among those closed to make room: it reads end-of-file.
    let mut byte = [0u8; 1];
    let first = tokio::time::timeout(Duration::from_secs(1), idle[0].read(&mut byte)).await;
    assert!(
        matches!(first, Ok(Ok(0)) | Ok(Err(_))),
        "the oldest idle connection was not closed: {first:?}"
    );
    drop(idle);
    server.shutdown.send(true).expect("server still running");
    server.task.await.expect("server task");
}
