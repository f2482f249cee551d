//! A Patroni REST API stand-in for the netns and e2e tests: answers the health endpoints the way
//! Patroni 4 does (reference §2) for a role the test controls, and misbehaves on request.
//!
//! ```text
//! patroni-stub --listen 198.18.0.11:8008 --state-file /run/t/pg-test-1.state [--name pg-test-1] [--scope pg-test]
//! ```
//! The state file holds a role word — `primary`, `replica`, `sync` (a synchronous replica), `offline`
//! (a replica; Pigsty renders `noloadbalance: false`, so it serves `/replica`) or `down` (Patroni up,
//! PostgreSQL not running) — optionally followed by a misbehaviour: `hang` (read the request, never
//! answer), `503` (answer 503 to everything), `garbage` (bytes that are not HTTP), `close` (close
//! without answering), `redirect` (302 to `/health`) or `stopping` (answers as usual, `GET` reports
//! PostgreSQL `stopping`: a leader shutting down after its demotion checkpoint) or `promoting` (answers
//! as usual, `GET` reports role `replica`: a new leader that holds the key, so `/primary` answers 200,
//! while its PostgreSQL is still in recovery). It is re-read on every
//! request, so a test flips the role by rewriting it. A missing or unreadable file answers like `down` and says so on stderr.
//!
//! Responses follow Patroni: `HTTP/1.0 <code> <msg>\r\n\r\n` for OPTIONS and HEAD, the same status
//! with a JSON body for GET, and the connection closed after each answer. Exits 0 on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str =
    "usage: patroni-stub --listen ADDR:PORT --state-file PATH [--name NAME] [--scope SCOPE]";
/// A request head larger than this is refused (Patroni's requests are a few hundred bytes).
const MAX_HEAD: usize = 8 * 1024;
/// A client that sends no complete head within this is dropped.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of the `hang` misbehaviour per connection, so a forgotten stub cannot pile up sockets.
const HANG_LIMIT: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Args {
    listen: SocketAddr,
    state_file: PathBuf,
    name: String,
    scope: String,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut state_file = None;
    let mut name = None;
    let mut scope = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {v}: {e}"))?,
                );
            }
            "--state-file" => state_file = Some(PathBuf::from(value()?)),
            "--name" => name = Some(value()?),
            "--scope" => scope = Some(value()?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    let state_file = state_file.ok_or("--state-file is required")?;
    let name = name.unwrap_or_else(|| format!("stub-{}", listen.ip()));
    let scope = scope.unwrap_or_else(|| "pg-test".to_owned());
    Ok(Args {
        listen,
        state_file,
        name,
        scope,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Primary,
    Replica,
    /// A synchronous standby (a replica that also passes `/sync`).
    Sync,
    /// Pigsty's offline instance: a replica for Patroni.
    Offline,
    /// Patroni answers but PostgreSQL is not running.
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    Hang,
    Status503,
    Garbage,
    Close,
    Redirect,
    /// Answers as usual, but `GET` reports PostgreSQL `stopping` (Patroni shutting it down while the
    /// leader key is still held: a demotion after its checkpoint).
    Stopping,
    /// Answers as usual, but `GET` reports role `replica` (`pg_is_in_recovery()`): a new leader that
    /// holds the key while its promotion is not complete.
    Promoting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StubState {
    role: Role,
    mode: Mode,
}

fn parse_state(text: &str) -> Result<StubState, String> {
    let mut role = None;
    let mut mode = Mode::Normal;
    for word in text.split_whitespace() {
        match word.to_ascii_lowercase().as_str() {
            "primary" | "master" => role = Some(Role::Primary),
            "replica" => role = Some(Role::Replica),
            "sync" => role = Some(Role::Sync),
            "offline" => role = Some(Role::Offline),
            "down" => role = Some(Role::Down),
            "hang" => mode = Mode::Hang,
            "503" => mode = Mode::Status503,
            "garbage" => mode = Mode::Garbage,
            "close" => mode = Mode::Close,
            "redirect" => mode = Mode::Redirect,
            "stopping" => mode = Mode::Stopping,
            "promoting" => mode = Mode::Promoting,
            other => return Err(format!("unknown word {other:?} in the state file")),
        }
    }
    let role = role.ok_or("no role word in the state file")?;
    Ok(StubState { role, mode })
}

async fn read_state(path: &Path) -> StubState {
    let parsed = match tokio::fs::read_to_string(path).await {
        Ok(text) => parse_state(&text),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    };
    parsed.unwrap_or_else(|e| {
        eprintln!("patroni-stub: {e}; answering as down");
        StubState {
            role: Role::Down,
            mode: Mode::Normal,
        }
    })
}

impl Role {
    fn running(self) -> bool {
        self != Self::Down
    }

    /// Patroni's replica rule: role replica, state running, no `noloadbalance` tag.
    fn serves_replica(self) -> bool {
        matches!(self, Self::Replica | Self::Sync | Self::Offline)
    }

    fn patroni_role(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            _ => "replica",
        }
    }
}

/// Patroni's status code for a GET/OPTIONS of `path`, matched by substring in Patroni's order
/// (the more specific names first where one contains another).
fn route(get: bool, path: &str, role: Role) -> u16 {
    let path = path.split('?').next().unwrap_or(path);
    let path = if path == "/" { "/primary" } else { path };
    let ok = |cond: bool| if cond { 200 } else { 503 };
    let primary = role == Role::Primary;
    if path == "/patroni" {
        // The status document itself: always 200 for GET.
        return ok(get);
    }
    if path.contains("liveness") {
        // GET-only in Patroni; OPTIONS falls through to the generic handler (503).
        return ok(get);
    }
    if path.contains("readiness") {
        return ok(get && (primary || role.serves_replica()));
    }
    if path.contains("standby-leader") || path.contains("standby_leader") {
        return 503;
    }
    if path.contains("leader")
        || path.contains("primary")
        || path.contains("master")
        || path.contains("read-write")
    {
        return ok(primary);
    }
    if path.contains("read-only-sync") || path.contains("read-only-quorum") {
        return ok(primary || role == Role::Sync);
    }
    if path.contains("replica") {
        return ok(role.serves_replica());
    }
    if path.contains("read-only") {
        return ok(primary || role.serves_replica());
    }
    if path.contains("health") {
        return ok(role.running());
    }
    if path.contains("async") {
        return ok(matches!(role, Role::Replica | Role::Offline));
    }
    if path.contains("sync") || path.contains("quorum") {
        return ok(role == Role::Sync);
    }
    503
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        501 => "Unsupported method",
        _ => "Service Unavailable",
    }
}

fn status_json(role: Role, mode: Mode, args: &Args) -> String {
    let state = match (role.running(), mode == Mode::Stopping) {
        (true, false) => "running",
        (true, true) => "stopping",
        (false, _) => "stopped",
    };
    let body = serde_json::json!({
        "state": state,
        "role": if mode == Mode::Promoting { "replica" } else { role.patroni_role() },
        "server_version": 170_000,
        "timeline": 1,
        "xlog": if role == Role::Primary {
            serde_json::json!({ "location": 67_108_864 })
        } else {
            serde_json::json!({ "received_location": 67_108_864, "replayed_location": 67_108_864, "paused": false })
        },
        "dcs_last_seen": 0,
        "tags": {},
        "patroni": { "version": "4.1.0", "scope": args.scope, "name": args.name },
    });
    body.to_string()
}

/// What the stub sends back for one request; `None` means close without a byte.
fn answer(method: &str, path: &str, state: StubState, args: &Args) -> Option<Vec<u8>> {
    let get = method == "GET";
    let code = match state.mode {
        Mode::Garbage => return Some(b"\x00\x01 this is not HTTP \xff\r\n\r\n".to_vec()),
        Mode::Close | Mode::Hang => return None,
        Mode::Redirect => {
            // A prober that follows redirects lands on /health and wrongly passes.
            return Some(b"HTTP/1.0 302 Found\r\nLocation: /health\r\n\r\n".to_vec());
        }
        Mode::Status503 => 503,
        Mode::Normal | Mode::Stopping | Mode::Promoting
            if matches!(method, "GET" | "OPTIONS" | "HEAD") =>
        {
            route(get, path, state.role)
        }
        Mode::Normal | Mode::Stopping | Mode::Promoting => 501,
    };
    let mut out = format!("HTTP/1.0 {code} {}\r\n", reason_phrase(code));
    if get {
        let body = status_json(state.role, state.mode, args);
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        out.push_str("\r\n");
    }
    Some(out.into_bytes())
}

/// Reads up to the end of the request head; `None` on EOF, error, oversize or timeout.
async fn read_head<S: AsyncRead + Unpin>(sock: &mut S) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return true;
            }
            if buf.len() > MAX_HEAD {
                return false;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    };
    match tokio::time::timeout(HEAD_TIMEOUT, read).await {
        Ok(true) => Some(String::from_utf8_lossy(&buf).into_owned()),
        _ => None,
    }
}

/// Serves one connection: one request, one answer (Patroni speaks HTTP/1.0 and closes).
async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    state_file: &Path,
    args: &Args,
) {
    let Some(head) = read_head(&mut sock).await else {
        return;
    };
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(path)) = (words.next(), words.next()) else {
        let _ = sock.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
        return;
    };
    let state = read_state(state_file).await;
    let reply = answer(method, path, state, args);
    let status_line = reply
        .as_deref()
        .and_then(|r| r.split(|b| *b == b'\r').next())
        .map_or_else(|| "(no answer)".into(), String::from_utf8_lossy);
    eprintln!(
        "patroni-stub {}: {method} {path} as {:?}/{:?} -> {status_line}",
        args.name, state.role, state.mode
    );
    match (reply, state.mode) {
        (Some(bytes), _) => {
            let _ = sock.write_all(&bytes).await;
            let _ = sock.shutdown().await;
        }
        (None, Mode::Hang) => {
            // Keep the socket open, reading until the client gives up.
            let mut sink = [0u8; 512];
            let drain = async { while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(HANG_LIMIT, drain).await;
        }
        (None, _) => {}
    }
}

async fn run(listener: TcpListener, args: Args) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let args = std::sync::Arc::new(args);
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => {
                    let args = args.clone();
                    tokio::spawn(async move { serve_conn(sock, &args.state_file, &args).await });
                }
                // Out of descriptors and the like: keep serving the next ones.
                Err(e) => {
                    eprintln!("patroni-stub: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("patroni-stub: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("patroni-stub: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("patroni-stub {} listening on {addr}", args.name),
        Err(e) => eprintln!("patroni-stub: local address: {e}"),
    }
    match run(listener, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("patroni-stub: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgsvc::health::probe::{CheckFailure, Prober};
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn args() -> Args {
        Args {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_file: PathBuf::new(),
            name: "pg-test-1".to_owned(),
            scope: "pg-test".to_owned(),
        }
    }

    #[test]
    fn parses_cli() {
        let a = parse_args(
            [
                "--listen",
                "198.18.0.11:8008",
                "--state-file",
                "/tmp/s",
                "--name",
                "pg-test-1",
            ]
            .into_iter()
            .map(str::to_owned),
        )
        .expect("valid");
        assert_eq!(a.listen, SocketAddr::from(([198, 18, 0, 11], 8008)));
        assert_eq!(a.state_file, PathBuf::from("/tmp/s"));
        assert_eq!(a.name, "pg-test-1");
        assert!(parse_args(["--listen".to_owned()].into_iter()).is_err());
        assert!(parse_args(["--listen", "nope"].into_iter().map(str::to_owned)).is_err());
        assert!(parse_args(["--state-file", "/x"].into_iter().map(str::to_owned)).is_err());
        assert!(parse_args(["--bogus"].into_iter().map(str::to_owned)).is_err());
    }

    #[test]
    fn parses_state_words() {
        let s = |role, mode| Ok(StubState { role, mode });
        assert_eq!(parse_state("primary\n"), s(Role::Primary, Mode::Normal));
        assert_eq!(
            parse_state(" replica 503 "),
            s(Role::Replica, Mode::Status503)
        );
        assert_eq!(parse_state("offline hang"), s(Role::Offline, Mode::Hang));
        assert_eq!(
            parse_state("garbage primary"),
            s(Role::Primary, Mode::Garbage)
        );
        assert_eq!(parse_state("down"), s(Role::Down, Mode::Normal));
        assert_eq!(parse_state("sync redirect"), s(Role::Sync, Mode::Redirect));
        assert_eq!(parse_state("replica close"), s(Role::Replica, Mode::Close));
        assert!(parse_state("").is_err());
        assert!(parse_state("hang").is_err());
        assert!(parse_state("leader").is_err());
    }

    #[test]
    fn routes_like_patroni() {
        use Role::{Down, Offline, Primary, Replica, Sync};
        // (path, role, OPTIONS status) — reference §2 routing table.
        let cases: &[(&str, Role, u16)] = &[
            ("/", Primary, 200),
            ("/", Replica, 503),
            ("/primary", Primary, 200),
            ("/primary", Replica, 503),
            ("/master", Primary, 200),
            ("/read-write", Primary, 200),
            ("/leader", Primary, 200),
            ("/leader", Replica, 503),
            ("/replica", Replica, 200),
            ("/replica", Offline, 200),
            ("/replica", Sync, 200),
            ("/replica", Primary, 503),
            ("/replica", Down, 503),
            ("/replica?lag=16MB", Replica, 200),
            ("/read-only", Primary, 200),
            ("/read-only", Replica, 200),
            ("/read-only", Down, 503),
            ("/health", Replica, 200),
            ("/health", Primary, 200),
            ("/health", Down, 503),
            ("/sync", Sync, 200),
            ("/sync", Replica, 503),
            ("/synchronous", Sync, 200),
            ("/async", Replica, 200),
            ("/async", Sync, 503),
            ("/asynchronous", Offline, 200),
            ("/read-only-sync", Primary, 200),
            ("/read-only-sync", Sync, 200),
            ("/read-only-sync", Replica, 503),
            ("/standby-leader", Primary, 503),
            ("/liveness", Primary, 503),
            ("/readiness", Primary, 503),
            ("/nonsense", Primary, 503),
        ];
        for (path, role, want) in cases {
            assert_eq!(
                route(false, path, *role),
                *want,
                "OPTIONS {path} as {role:?}"
            );
        }
        assert_eq!(route(true, "/liveness", Role::Down), 200, "GET /liveness");
        assert_eq!(
            route(true, "/readiness", Role::Replica),
            200,
            "GET /readiness"
        );
    }

    #[test]
    fn answers_in_patroni_format() {
        let st = StubState {
            role: Role::Primary,
            mode: Mode::Normal,
        };
        let a = args();
        assert_eq!(
            answer("OPTIONS", "/primary", st, &a),
            Some(b"HTTP/1.0 200 OK\r\n\r\n".to_vec())
        );
        assert_eq!(
            answer("OPTIONS", "/replica", st, &a),
            Some(b"HTTP/1.0 503 Service Unavailable\r\n\r\n".to_vec())
        );
        assert_eq!(
            answer("HEAD", "/", st, &a),
            Some(b"HTTP/1.0 200 OK\r\n\r\n".to_vec())
        );
        assert_eq!(
            answer("POST", "/primary", st, &a),
            Some(b"HTTP/1.0 501 Unsupported method\r\n\r\n".to_vec())
        );
        let get = String::from_utf8(answer("GET", "/patroni", st, &a).unwrap_or_default())
            .unwrap_or_default();
        let (head, body) = get.split_once("\r\n\r\n").unwrap_or_default();
        // Patroni's status document: 200 whatever the role.
        assert!(head.starts_with("HTTP/1.0 200 "), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(json["role"], "primary");
        assert_eq!(json["state"], "running");
        assert_eq!(json["patroni"]["name"], "pg-test-1");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        // A leader shutting down after its demotion checkpoint: still 200 on /primary (it holds the
        // key), `stopping` in its status.
        let stopping = StubState {
            role: Role::Primary,
            mode: Mode::Stopping,
        };
        assert_eq!(
            answer("OPTIONS", "/primary", stopping, &a),
            Some(b"HTTP/1.0 200 OK\r\n\r\n".to_vec())
        );
        let get = String::from_utf8(answer("GET", "/patroni", stopping, &a).unwrap_or_default())
            .unwrap_or_default();
        let (_, body) = get.split_once("\r\n\r\n").unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(json["state"], "stopping");
        // A new leader whose promotion is under way: 200 on /primary (it holds the key), role
        // `replica` in its status (still in recovery).
        let promoting = StubState {
            role: Role::Primary,
            mode: Mode::Promoting,
        };
        assert_eq!(parse_state("primary promoting"), Ok(promoting));
        assert_eq!(
            answer("OPTIONS", "/primary", promoting, &a),
            Some(b"HTTP/1.0 200 OK\r\n\r\n".to_vec())
        );
        let get = String::from_utf8(answer("GET", "/patroni", promoting, &a).unwrap_or_default())
            .unwrap_or_default();
        let (_, body) = get.split_once("\r\n\r\n").unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(
            (&json["role"], &json["state"]),
            (&"replica".into(), &"running".into())
        );
    }

    /// A state file in the system temp dir, removed on drop.
    struct StateFile(PathBuf);

    impl StateFile {
        fn new(content: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let path =
                std::env::temp_dir().join(format!("patroni-stub-test-{}-{n}", std::process::id()));
            std::fs::write(&path, content).expect("write state file");
            Self(path)
        }

        fn set(&self, content: &str) {
            std::fs::write(&self.0, content).expect("rewrite state file");
        }
    }

    impl Drop for StateFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Runs the stub's accept loop in-process on 127.0.0.1 with an ephemeral port.
    async fn start_stub(state: &StateFile) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let args = Args {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            state_file: state.0.clone(),
            ..args()
        };
        tokio::spawn(async move {
            let _ = run(listener, args).await;
        });
        port
    }

    async fn probe(port: u16, uri: &str) -> Result<(), CheckFailure> {
        let p = Prober::new(
            Ipv4Addr::LOCALHOST,
            port,
            uri,
            None,
            Duration::from_millis(500),
        )
        .expect("prober");
        tokio::time::timeout(Duration::from_secs(5), p.probe())
            .await
            .expect("probe bounded by its timeout")
            .result
    }

    #[tokio::test]
    async fn prober_reads_the_stub_and_follows_role_flips() {
        let state = StateFile::new("primary");
        let port = start_stub(&state).await;
        assert_eq!(probe(port, "/primary").await, Ok(()));
        assert_eq!(
            probe(port, "/replica").await,
            Err(CheckFailure::L7Status { code: 503 })
        );
        assert_eq!(probe(port, "/read-only").await, Ok(()));
        state.set("replica\n");
        assert_eq!(
            probe(port, "/primary").await,
            Err(CheckFailure::L7Status { code: 503 })
        );
        assert_eq!(probe(port, "/replica").await, Ok(()));
        state.set("down");
        assert_eq!(
            probe(port, "/read-only").await,
            Err(CheckFailure::L7Status { code: 503 })
        );
    }

    #[tokio::test]
    async fn misbehaving_stub_is_reported_with_the_right_reason() {
        let state = StateFile::new("primary");
        let port = start_stub(&state).await;
        state.set("primary 503");
        assert_eq!(
            probe(port, "/primary").await,
            Err(CheckFailure::L7Status { code: 503 })
        );
        state.set("primary redirect");
        assert_eq!(
            probe(port, "/primary").await,
            Err(CheckFailure::L7Status { code: 302 })
        );
        state.set("primary hang");
        assert_eq!(probe(port, "/primary").await, Err(CheckFailure::L7Timeout));
        state.set("primary close");
        assert_eq!(
            probe(port, "/primary").await,
            Err(CheckFailure::ConnectionClosed)
        );
        state.set("primary garbage");
        let got = probe(port, "/primary").await;
        assert!(
            matches!(got, Err(CheckFailure::InvalidResponse { .. })),
            "{got:?}"
        );
        state.set("primary");
        assert_eq!(probe(port, "/primary").await, Ok(()));
    }

    #[tokio::test]
    async fn missing_state_file_answers_as_down() {
        let state = StateFile::new("primary");
        let port = start_stub(&state).await;
        let _ = std::fs::remove_file(&state.0);
        assert_eq!(
            probe(port, "/primary").await,
            Err(CheckFailure::L7Status { code: 503 })
        );
        assert_eq!(
            probe(port, "/health").await,
            Err(CheckFailure::L7Status { code: 503 })
        );
    }

    #[tokio::test]
    async fn bad_requests_do_not_kill_the_stub() {
        let state = StateFile::new("primary");
        let port = start_stub(&state).await;
        for junk in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"\xff\xfe\x00\r\n\r\n",
            &[b'A'; 20_000],
        ] {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let _ = s.write_all(junk).await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        }
        assert_eq!(probe(port, "/primary").await, Ok(()), "still serving");
    }
}
