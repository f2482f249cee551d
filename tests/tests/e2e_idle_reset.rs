//! Real-cluster e2e of issue 11's idle-session reset: a logged-in `psql` session through 5433 sits
//! idle (it sends nothing) across a switchover. pgsvc must reset it as soon as the leader key moves
//! — not at its next query — and a new session must land on the new primary.
//!
//! pgbouncer pools by transaction, as Pigsty configures it: the idle session holds no server
//! connection, so nothing but the load balancer ends it when the old primary steps down.
//!
//! The test watches psql's own socket: it takes a duplicate of psql's descriptor (`pidfd_getfd`)
//! and blocks in poll(2) on it, so the moment the RST arrives is measured on the client's socket
//! itself, without a byte sent. The key's move is taken from pgsvc's log (the line it writes when
//! its etcd watch delivers the new leader), and the delay between the two is printed: the goal is
//! ≤ 100 ms (issue 11, acceptance 2); the test asserts only that the reset came from the key
//! event (within a generous bound), since timing goals belong in benchmarks and notes.

use std::{
    io::{BufRead, BufReader, Write as _},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pgsvc_tests::{
    guard::ChildGuard,
    sandbox::{Sandbox, TEST_DSN, VIP, epoch, parse_rfc3339_utc, require_sandbox},
};

fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "e2e: {line}");
}

/// A descriptor of another process, duplicated into this one (`pidfd_getfd`, root).
fn steal_fd(pid: u32, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: raw syscalls with plain integer arguments; every result is checked.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as i32;
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd);
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) as i32;
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(dup))
    }
}

/// psql's TCP socket: its only socket descriptor.
fn socket_fd_of(pid: u32) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

/// How the idle socket's wait ended: Ok(epoch of the reset) or what happened instead.
fn wait_for_reset(fd: &OwnedFd, limit: Duration) -> Result<f64, String> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&raw mut p, 1, limit.as_millis() as i32) };
    let at = epoch();
    if n == 0 {
        return Err(format!("no reset within {limit:?}"));
    }
    let mut b = [0u8; 1];
    // SAFETY: a 1-byte buffer we own; MSG_PEEK leaves psql's data where it is.
    let r = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let e = std::io::Error::last_os_error();
    match r {
        -1 if e.raw_os_error() == Some(libc::ECONNRESET) => Ok(at),
        -1 => Err(format!("socket error {e}, not a reset")),
        0 => Err("an orderly close (FIN), not a reset".into()),
        _ => Err(format!("data arrived instead ({:?})", b[0] as char)),
    }
}

/// Epoch of the first pgsvc log line after `after` containing every one of `needles` and not
/// `unless`.
fn log_time(log: &str, after: f64, needles: &[&str], unless: &str) -> Option<(f64, String)> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)) && !l.contains(unless))
        .filter_map(|l| {
            Some((
                parse_rfc3339_utc(l.split_whitespace().next()?)?,
                l.to_owned(),
            ))
        })
        .find(|(t, _)| *t >= after)
}

#[test]
fn e2e_an_idle_session_is_reset_when_the_leader_key_moves() {
    if !require_sandbox("e2e_an_idle_session_is_reset_when_the_leader_key_moves") {
        return;
    }
    // Pigsty's pgbouncer pools by transaction: an idle client holds no server connection, so the
    // demoting primary's shutdown does not end its session — only the load balancer can. (The
    // sandbox defaults to session pooling, where postgres's shutdown ends it with an error first.)
    // SAFETY: the only test of this binary sets it before it starts any thread of its own; the
    // sandbox's commands inherit it.
    unsafe { std::env::set_var("PGSB_POOL_MODE", "transaction") };
    let mut sb = Sandbox::up().expect("sandbox up");
    let agent = sb.start_pgsvc(&[]).expect("pgsvc run");
    sb.wait_writes(5433, 60)
        .unwrap_or_else(|e| panic!("{e}\npgsvc log:\n{}", agent.log_text()));
    let old = sb.leader().expect("leader");

    // A logged-in psql through 5433, one query, then idle with its input open.
    let dsn = format!("host={VIP} port=5433 {TEST_DSN} connect_timeout=3");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &sb.ns("cl"),
        "psql",
        "-X",
        "-q",
        "-A",
        "-t",
        "-F",
        " ",
        &dsn,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut psql = ChildGuard::spawn(cmd);
    let child = psql.0.as_mut().expect("psql runs");
    let pid = child.id();
    let mut input = child.stdin.take().expect("psql stdin");
    let mut output = BufReader::new(child.stdout.take().expect("psql stdout"));
    input
        .write_all(b"select host(inet_server_addr()), pg_is_in_recovery();\n")
        .expect("query");
    let mut line = String::new();
    output.read_line(&mut line).expect("psql answers");
    assert_eq!(
        line.trim(),
        format!("{} f", old.addr),
        "the session is not on the primary"
    );
    let fd = socket_fd_of(pid).expect("psql's socket");
    let sock = steal_fd(pid, fd).expect("pidfd_getfd of psql's socket");
    let watcher = std::thread::spawn(move || wait_for_reset(&sock, Duration::from_secs(150)));

    let t0 = Instant::now();
    let f = sb
        .switchover()
        .unwrap_or_else(|e| panic!("switchover: {e:#}\npgsvc log:\n{}", agent.log_text()));
    let reset = watcher.join().expect("watcher");
    let log = agent.log_text();
    let reset_t = reset.unwrap_or_else(|why| {
        panic!("the idle session through 5433 was not reset ({why}); pgsvc log:\n{log}")
    });
    // pgsvc's etcd watch delivered the key's move: the first leader line after the switchover
    // was issued that no longer names the old leader (it releases the key — `(none)` — and then
    // the new one takes it).
    let (key_t, key_line) = log_time(
        &log,
        f.event_t - 1.0,
        &["follow its holder"],
        &format!("leader=\"{}\"", old.name),
    )
    .unwrap_or_else(|| panic!("no leader-key line in pgsvc's log:\n{log}"));
    let reset_line = log_time(
        &log,
        f.event_t - 1.0,
        &["sessions reset now", old.name],
        "\0",
    )
    .map(|(_, l)| l)
    .unwrap_or_else(|| panic!("no reset line for {} in pgsvc's log:\n{log}", old.name));
    // Patroni's step-down request (its `/failover` key) fences the leader before the key moves:
    // the DCS event that resets the session is the earlier of the two.
    let step_down = log_time(&log, f.event_t - 1.0, &["the leader steps down"], "\0");
    let (signal_t, signal_line) = match step_down {
        Some((t, l)) if t < key_t => (t, l),
        _ => (key_t, key_line.clone()),
    };
    let delay = reset_t - signal_t;
    report(&format!(
        "idle reset: {} -> {}, the idle psql session's socket was reset {:.0} ms after pgsvc saw the DCS say the leader leaves ({:.2}s after the switchover was issued; promotion {:.2}s; whole switchover {:?})",
        f.old.name,
        f.new.name,
        delay * 1000.0,
        reset_t - f.event_t,
        f.promotion_s(),
        t0.elapsed()
    ));
    report(&format!("idle reset: key line: {key_line}"));
    report(&format!("idle reset: DCS signal: {signal_line}"));
    report(&format!("idle reset: reset line: {reset_line}"));
    // Correctness bounds, not the latency goal: the reset follows the key event (log lines carry
    // microseconds), and comes from it rather than from a REST check failing `fall` times.
    assert!(
        delay > -0.01 && delay < 2.0,
        "the reset came {delay:.3}s after the DCS signal; pgsvc log:\n{log}"
    );

    // The next query, on a new connection, lands on the new primary.
    drop(input);
    drop(psql);
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_ip = f.new.addr.to_string();
    loop {
        match sb.psql_within(
            &VIP.to_string(),
            5433,
            "select host(inet_server_addr()), pg_is_in_recovery()",
            3.0,
        ) {
            Ok(out) if out == format!("{new_ip} f") => break,
            other => assert!(
                Instant::now() < deadline,
                "the reconnect never reached the new primary {new_ip}: last {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    report(&format!(
        "idle reset: the reconnect landed on the new primary {new_ip}"
    ));
}
