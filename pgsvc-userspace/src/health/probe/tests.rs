use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the in-process server does with each connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Write these bytes after the request head, then close.
    Reply(&'static [u8]),
    /// Write these bytes and keep the socket open (the client must not wait for more).
    ReplyKeepOpen(&'static [u8]),
    /// Read the request and never answer.
    Hang,
    /// Read the request and close without a byte.
    Close,
    /// Write these bytes as soon as the connection is accepted, without reading anything.
    Greet(&'static [u8]),
}

async fn read_head(sock: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// Serves `behaviour` on 127.0.0.1 and returns the port plus the captured request heads.
async fn serve(behaviour: Behaviour) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Behaviour::Greet(bytes) = behaviour {
                    let _ = sock.write_all(bytes).await;
                    return;
                }
                let head = read_head(&mut sock).await;
                let _ = tx.send(head);
                match behaviour {
                    Behaviour::Reply(bytes) => {
                        let _ = sock.write_all(bytes).await;
                    }
                    Behaviour::ReplyKeepOpen(bytes) => {
                        let _ = sock.write_all(bytes).await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Behaviour::Hang => tokio::time::sleep(Duration::from_secs(30)).await,
                    Behaviour::Close | Behaviour::Greet(_) => {}
                }
            });
        }
    });
    (port, rx)
}

fn prober(port: u16, uri: &str, timeout: Duration) -> Prober {
    Prober::new(Ipv4Addr::LOCALHOST, port, uri, None, timeout).expect("prober")
}

async fn probe_behaviour(behaviour: Behaviour) -> CheckOutcome {
    let (port, _rx) = serve(behaviour).await;
    let p = prober(port, "/primary", Duration::from_millis(500));
    // The prober has its own timeout; this outer bound only keeps a broken test from hanging.
    tokio::time::timeout(Duration::from_secs(5), p.probe())
        .await
        .expect("probe must finish within its timeout")
}

#[tokio::test]
async fn patroni_bare_http10_200_passes() {
    let out = probe_behaviour(Behaviour::Reply(b"HTTP/1.0 200 OK\r\n\r\n")).await;
    assert_eq!(out.result, Ok(()));
}

#[tokio::test]
async fn bare_http10_200_kept_open_does_not_wait_for_a_body() {
    let out = probe_behaviour(Behaviour::ReplyKeepOpen(b"HTTP/1.0 200 OK\r\n\r\n")).await;
    assert_eq!(out.result, Ok(()));
    assert!(
        out.duration < Duration::from_millis(400),
        "waited for a body: {:?}",
        out.duration
    );
}

#[tokio::test]
async fn http11_200_with_body_passes() {
    let out = probe_behaviour(Behaviour::ReplyKeepOpen(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ))
    .await;
    assert_eq!(out.result, Ok(()));
}

#[tokio::test]
async fn status_503_is_l7_status() {
    let out = probe_behaviour(Behaviour::Reply(
        b"HTTP/1.0 503 Service Unavailable\r\n\r\n",
    ))
    .await;
    assert_eq!(out.result, Err(CheckFailure::L7Status { code: 503 }));
    let st = out.haproxy_status();
    assert_eq!(st.description, "Layer7 wrong status");
    assert_eq!(st.code, Some(503));
    assert_eq!(st.info.as_deref(), Some("Service Unavailable"));
    assert_eq!(
        out.result.as_ref().map_err(ToString::to_string),
        Err("L7 status 503".to_owned())
    );
}

#[tokio::test]
async fn other_2xx_is_not_healthy() {
    // HAProxy `http-check expect status 200` is an exact match: 204 fails.
    let out = probe_behaviour(Behaviour::Reply(b"HTTP/1.0 204 No Content\r\n\r\n")).await;
    assert_eq!(out.result, Err(CheckFailure::L7Status { code: 204 }));
}

#[tokio::test]
async fn redirect_is_not_followed() {
    // Following the Location would reach /health (200 on a running replica) and pass.
    let out = probe_behaviour(Behaviour::Reply(
        b"HTTP/1.0 302 Found\r\nLocation: /health\r\n\r\n",
    ))
    .await;
    assert_eq!(out.result, Err(CheckFailure::L7Status { code: 302 }));
    assert_eq!(
        out.result.map_err(|e| e.to_string()),
        Err("L7 status 302".to_owned())
    );
}

#[tokio::test]
async fn garbage_is_invalid_response() {
    let out = probe_behaviour(Behaviour::Reply(b"this is not http at all\r\n\r\n")).await;
    assert!(
        matches!(out.result, Err(CheckFailure::InvalidResponse { .. })),
        "{:?}",
        out.result
    );
    assert_eq!(out.haproxy_status().description, "Layer7 invalid response");
}

#[tokio::test]
async fn close_without_answer_is_connection_closed() {
    let out = probe_behaviour(Behaviour::Close).await;
    assert_eq!(out.result, Err(CheckFailure::ConnectionClosed));
}

#[tokio::test]
async fn hang_after_connect_is_l7_timeout() {
    let out = probe_behaviour(Behaviour::Hang).await;
    assert_eq!(out.result, Err(CheckFailure::L7Timeout));
    assert!(
        out.duration >= Duration::from_millis(450),
        "{:?}",
        out.duration
    );
    assert!(out.duration < Duration::from_secs(2), "{:?}", out.duration);
}

#[tokio::test]
async fn closed_port_is_connection_refused() {
    // Bind then drop to find a loopback port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let p = prober(port, "/primary", Duration::from_millis(500));
    let out = tokio::time::timeout(Duration::from_secs(5), p.probe())
        .await
        .expect("bounded");
    assert_eq!(out.result, Err(CheckFailure::L4Refused));
    assert_eq!(
        out.haproxy_status().info.as_deref(),
        Some("Connection refused")
    );
}

#[tokio::test]
async fn unanswered_syn_is_l4_timeout() {
    // A listener with a full accept queue that never accepts: Linux drops further SYNs, so the
    // next connect hangs — an L4 timeout without leaving loopback.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    let p = prober(addr.port(), "/primary", Duration::from_millis(500));
    let out = tokio::time::timeout(Duration::from_secs(5), p.probe())
        .await
        .expect("bounded");
    assert_eq!(out.result, Err(CheckFailure::L4Timeout));
    assert_eq!(out.haproxy_status().description, "Layer4 timeout");
    drop(listener);
}

#[tokio::test]
async fn sends_options_with_the_query_over_http11() {
    let (port, mut rx) = serve(Behaviour::Reply(b"HTTP/1.0 200 OK\r\n\r\n")).await;
    let p = prober(port, "/replica?lag=16MB", Duration::from_millis(500));
    let out = p.probe().await;
    assert_eq!(out.result, Ok(()));
    let head = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("request seen")
        .expect("channel open");
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("OPTIONS /replica?lag=16MB HTTP/1.1\r\n"),
        "{head}"
    );
}

#[tokio::test]
async fn keep_alive_reuses_the_connection() {
    // An HTTP/1.1 server answering with Content-Length: 0 and keeping the socket: the second
    // probe must ride the same connection (one accept for two requests).
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let _ = tx.send(());
            tokio::spawn(async move {
                for _ in 0..4 {
                    if read_head(&mut sock).await.is_empty() {
                        break;
                    }
                    if sock
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    let p = prober(port, "/primary", Duration::from_millis(500));
    assert_eq!(p.probe().await.result, Ok(()));
    assert_eq!(p.probe().await.result, Ok(()));
    let mut accepts = 0;
    while let Ok(Some(())) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
        accepts += 1;
    }
    assert_eq!(accepts, 1);
}

#[test]
fn relative_uri_is_rejected() {
    let err = Prober::new(
        Ipv4Addr::LOCALHOST,
        8008,
        "primary",
        None,
        Duration::from_secs(1),
    );
    assert!(matches!(err, Err(ProbeError::InvalidUri { .. })));
}

#[test]
fn missing_ca_file_is_reported() {
    let tls = TlsSettings {
        ca_file: Some(PathBuf::from("/nonexistent/pgsvc-test-ca.crt")),
        verify_hostname: false,
    };
    let err = Prober::new(
        Ipv4Addr::LOCALHOST,
        8008,
        "/",
        Some(&tls),
        Duration::from_secs(1),
    );
    assert!(matches!(err, Err(ProbeError::ReadCaFile { .. })), "{err:?}");
}

#[tokio::test]
async fn tls_against_plain_http_is_l6() {
    // The server speaks plain HTTP at once: the TLS client gets bytes that are no TLS record.
    let (port, _rx) = serve(Behaviour::Greet(b"HTTP/1.0 200 OK\r\n\r\n")).await;
    let tls = TlsSettings::default();
    let p = Prober::new(
        Ipv4Addr::LOCALHOST,
        port,
        "/primary",
        Some(&tls),
        Duration::from_millis(500),
    )
    .expect("prober");
    assert!(p.url().starts_with("https://127.0.0.1:"));
    let out = tokio::time::timeout(Duration::from_secs(5), p.probe())
        .await
        .expect("bounded");
    assert!(out.result.is_err(), "plain HTTP must not pass a TLS check");
    assert!(
        matches!(out.result, Err(CheckFailure::Tls { .. })),
        "{:?}",
        out.result
    );
}

#[test]
fn connect_timeout_leaves_a_margin() {
    assert_eq!(
        connect_timeout(Duration::from_secs(3)),
        Duration::from_millis(2900)
    );
    assert_eq!(
        connect_timeout(Duration::from_millis(500)),
        Duration::from_millis(450)
    );
    assert_eq!(connect_timeout(Duration::ZERO), Duration::from_millis(1));
}
