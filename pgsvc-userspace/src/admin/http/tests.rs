use super::*;

fn parse(s: &str) -> Result<Request, RequestError> {
    parse_head(s.as_bytes())
}

#[test]
fn parses_request_line_headers_and_query() {
    let r = parse("GET /metrics?name=x HTTP/1.1\r\nHost: localhost\r\nAccept: */*").expect("valid");
    assert_eq!(
        r,
        Request {
            method: "GET".into(),
            path: "/metrics".into(),
            content_length: 0,
            authorization: None,
            body: Vec::new(),
        }
    );
    let r = parse("POST /reload HTTP/1.1\r\nContent-Length:  12 \r\ncontent-length: 12")
        .expect("valid");
    assert_eq!(r.content_length, 12);
}

#[test]
fn rejects_malformed_heads() {
    for bad in [
        "",
        "GET",
        "GET /status",
        "GET  /status HTTP/1.1",
        "GET /status HTTP/1.1 extra",
        "GET status HTTP/1.1",
        "G(T /status HTTP/1.1",
        "GET /status FTP/1.1",
        "GET /st\u{e9}tus HTTP/1.1",
        "GET /status HTTP/1.1\r\nNo colon here",
        "GET /status HTTP/1.1\r\n folded: header",
        "GET /status HTTP/1.1\r\nBad Name: x",
        "GET /status HTTP/1.1\r\nContent-Length: -1",
        "GET /status HTTP/1.1\r\nContent-Length: 99999999999999999999",
        "GET /status HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",
        "POST /reload HTTP/1.1\r\nTransfer-Encoding: chunked",
        "GET /status HTTP/1.1\r\nX: a\u{1}b",
    ] {
        let err = parse(bad).expect_err(bad);
        assert_eq!(err.status(), Some(400), "{bad:?}: {err}");
    }
    assert_eq!(parse("GET / HTTP/2.0").expect_err("h2").status(), Some(505));
    assert_eq!(
        parse("POST /reload HTTP/1.1\r\nContent-Length: 70000")
            .expect_err("big")
            .status(),
        Some(413)
    );
    let many = format!("GET / HTTP/1.1{}", "\r\nX-A: b".repeat(MAX_HEADERS + 1));
    assert_eq!(parse(&many).expect_err("many").status(), Some(431));
}

#[tokio::test]
async fn reads_head_and_body() {
    let mut input: &[u8] = b"POST /reload HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    let r = read_request(&mut input).await.expect("request");
    assert_eq!(r.path, "/reload");
    assert_eq!(r.body, b"hello");
    assert!(input.is_empty(), "body left unread");
    let mut lf_only: &[u8] = b"GET /ready HTTP/1.0\n\n";
    assert_eq!(
        read_request(&mut lf_only).await.expect("request").path,
        "/ready"
    );
}

#[tokio::test]
async fn limits_and_truncation() {
    let mut empty: &[u8] = b"";
    assert!(matches!(
        read_request(&mut empty).await,
        Err(RequestError::Closed)
    ));
    let mut cut: &[u8] = b"GET /status HTTP/1.1\r\nHost: x\r\n";
    assert_eq!(
        read_request(&mut cut).await.expect_err("cut").status(),
        Some(400)
    );
    let mut short_body: &[u8] = b"POST /reload HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
    assert_eq!(
        read_request(&mut short_body)
            .await
            .expect_err("short")
            .status(),
        Some(400)
    );
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    let mut big: &[u8] = big.as_bytes();
    assert_eq!(
        read_request(&mut big).await.expect_err("big").status(),
        Some(431)
    );
    let endless = "a".repeat(MAX_HEAD + 10);
    let mut endless: &[u8] = endless.as_bytes();
    assert_eq!(
        read_request(&mut endless)
            .await
            .expect_err("endless")
            .status(),
        Some(431)
    );
}

#[test]
fn response_bytes() {
    let r = Response::method_not_allowed("GET, HEAD");
    let wire = String::from_utf8(r.to_bytes(false)).expect("utf8");
    assert!(
        wire.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{wire}"
    );
    assert!(wire.contains("\r\nAllow: GET, HEAD\r\n"), "{wire}");
    assert!(wire.contains("\r\nConnection: close\r\n"), "{wire}");
    let body = "method not allowed; use GET, HEAD\n";
    assert!(wire.ends_with(&format!("Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\nAllow: GET, HEAD\r\n\r\n{body}", body.len())), "{wire}");
    let head = String::from_utf8(Response::text(200, "ok").to_bytes(true)).expect("utf8");
    assert!(
        head.ends_with("\r\n\r\n") && head.contains("Content-Length: 3\r\n"),
        "{head}"
    );
}
