//! systemd readiness notifications (`sd_notify`): `READY=1`, `RELOADING=1`, `STOPPING=1`.
//!
//! Under `Type=notify` systemd passes a unix datagram socket in `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`) and waits for `READY=1` before it counts the unit as
//! started — so units ordered after pgsvc start once the maps serve traffic, not when the process
//! exists. Outside systemd the variable is unset and every call is a quiet no-op returning
//! `Ok(false)`. The protocol is one datagram of `KEY=VALUE` lines; no library is needed for it.
//!
//! Where the agent calls them: [`ready`] once the first plan is applied to the maps (when `/ready`
//! turns true); [`reloading`] when a SIGHUP or `POST /reload` starts re-reading the source, then
//! [`ready`] again when the new plan is applied or refused; [`stopping`] when SIGTERM/SIGINT starts
//! the shutdown.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("${NOTIFY_SOCKET_ENV}={socket:?} is neither an absolute path nor an @abstract name")]
    BadSocket { socket: String },
    #[error("sending {state:?} to the systemd notification socket {socket:?} failed: {source}")]
    Send {
        state: String,
        socket: String,
        source: std::io::Error,
    },
}

/// `READY=1`: start-up (or a reload) is complete and the services are served.
///
/// # Errors
/// `$NOTIFY_SOCKET` is malformed or the datagram cannot be sent.
pub fn ready() -> Result<bool, NotifyError> {
    notify("READY=1\nSTATUS=serving")
}

/// `RELOADING=1` (with the monotonic time systemd 253+ asks for): the configuration is being
/// re-read; follow with [`ready`] when done, whether the new plan was applied or refused.
///
/// # Errors
/// `$NOTIFY_SOCKET` is malformed or the datagram cannot be sent.
pub fn reloading() -> Result<bool, NotifyError> {
    notify(&reloading_state())
}

fn reloading_state() -> String {
    format!(
        "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC={}",
        monotonic_usec()
    )
}

/// `STOPPING=1`: the agent is shutting down.
///
/// # Errors
/// `$NOTIFY_SOCKET` is malformed or the datagram cannot be sent.
pub fn stopping() -> Result<bool, NotifyError> {
    notify("STOPPING=1\nSTATUS=stopping")
}

/// Sends `state` to `$NOTIFY_SOCKET`; `Ok(false)` when the variable is unset (not under systemd).
///
/// # Errors
/// `$NOTIFY_SOCKET` is malformed or the datagram cannot be sent.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    notify_to(std::env::var_os(NOTIFY_SOCKET_ENV), state)
}

fn notify_to(socket: Option<OsString>, state: &str) -> Result<bool, NotifyError> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    let display = socket.to_string_lossy().into_owned();
    let send_err = |source| NotifyError::Send {
        state: state.to_owned(),
        socket: display.clone(),
        source,
    };
    let addr = socket_addr(&socket).ok_or_else(|| NotifyError::BadSocket {
        socket: display.clone(),
    })?;
    let sock = UnixDatagram::unbound().map_err(send_err)?;
    sock.send_to_addr(state.as_bytes(), &addr)
        .map_err(send_err)?;
    Ok(true)
}

/// `/path` → a path address; `@name` → the abstract name `name` (Linux).
fn socket_addr(socket: &std::ffi::OsStr) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = socket.as_bytes();
    match bytes.first()? {
        b'/' => std::os::unix::net::SocketAddr::from_pathname(socket).ok(),
        b'@' => std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..]).ok(),
        _ => None,
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        assert!(!notify_to(None, "READY=1").expect("no-op"));
        assert!(!notify_to(Some(OsString::new()), "READY=1").expect("no-op"));
    }

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("pgsvc-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("bind");
        let sent = notify_to(
            Some(path.clone().into_os_string()),
            "READY=1\nSTATUS=serving",
        );
        let got = receive(&sock);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(sent.expect("sent"));
        assert_eq!(got, "READY=1\nSTATUS=serving");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("pgsvc-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        assert!(notify_to(Some(format!("@{name}").into()), "STOPPING=1").expect("sent"));
        assert_eq!(receive(&sock), "STOPPING=1");
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        let before = monotonic_usec();
        let state = reloading_state();
        let after = monotonic_usec();
        let usec: u64 = state
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .expect("MONOTONIC_USEC");
        assert!(state.starts_with("RELOADING=1\n"), "{state}");
        assert!(
            before <= usec && usec <= after,
            "{usec} not in {before}..={after}"
        );
    }

    #[test]
    fn a_relative_socket_is_an_error_not_a_panic() {
        let err = notify_to(Some("relative.sock".into()), "READY=1").expect_err("refused");
        assert!(matches!(err, NotifyError::BadSocket { .. }), "{err}");
        // A path with nobody listening: a send error naming the socket.
        let err = notify_to(Some("/nonexistent/pgsvc/notify.sock".into()), "READY=1")
            .expect_err("refused");
        assert!(
            err.to_string().contains("/nonexistent/pgsvc/notify.sock"),
            "{err}"
        );
    }
}
