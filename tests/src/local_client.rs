//! Clients on the node itself, for the tiers that test the cgroup socket programs: a child cgroup
//! of the cgroup v2 root that one agent's programs are attached to (`--cgroup`), removed with its
//! processes on drop, and client processes started inside a namespace and that cgroup, so that
//! nothing else on the machine is touched.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use crate::guard::unique;

/// Where cgroup v2 is mounted on this machine.
#[must_use]
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// A child cgroup of the cgroup v2 root, removed on drop (its processes killed first).
pub struct TestCgroup(PathBuf);

impl TestCgroup {
    /// None when cgroup v2 is not mounted.
    ///
    /// # Panics
    /// When the cgroup cannot be created.
    #[must_use]
    pub fn new() -> Option<Self> {
        let path = cgroup2_root()?.join(unique("lc"));
        std::fs::create_dir(&path).expect("creating the test cgroup");
        Some(Self(path))
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The `--cgroup` argument.
    #[must_use]
    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }

    /// Makes `cmd`'s process move itself into this cgroup before it runs. The returned file must
    /// live until the process is spawned.
    ///
    /// # Panics
    /// When the cgroup's `cgroup.procs` cannot be opened.
    pub fn enter_on_spawn(&self, cmd: &mut Command) -> std::fs::File {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.0.join("cgroup.procs"))
            .expect("opening cgroup.procs");
        let fd = procs.as_raw_fd();
        // SAFETY: only write(2) between fork and exec: the child moves itself into the cgroup.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        procs
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let procs = self.0.join("cgroup.procs");
        for _ in 0..50 {
            let pids = std::fs::read_to_string(&procs).unwrap_or_default();
            if pids.trim().is_empty() && std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: plain kill(2) of a process of our own test cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove the test cgroup {}", self.0.display());
    }
}

/// The system interpreter starts in milliseconds; a pyenv shim takes seconds.
#[must_use]
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The client: connects, prints `GREETING|PEER` (the server's greeting names it and the address
/// it saw; PEER is what getpeername says), then holds the connection until stdin closes.
const CLIENT_PY: &str = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    line = s.makefile("r").readline().strip()
    p = s.getpeername()
    print(f"{line}|{p[0]}:{p[1]}", flush=True)
except OSError as e:
    print(f"ERR {e}", flush=True)
    sys.exit(0)
sys.stdin.read()
"#;

/// A client process inside a node namespace (and the cgroup, if given), holding its connection
/// until dropped.
pub struct LocalClient {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The server's name from its greeting (`pg-test-1:6432`).
    pub server: String,
    /// The client address the server saw.
    pub seen_by_server: SocketAddr,
    /// What the client's getpeername says.
    pub peer: SocketAddr,
}

impl LocalClient {
    /// Connects from namespace `ns` (inside `cgroup`) to `addr:port`.
    ///
    /// # Errors
    /// The client's own error line when it could not connect or read the greeting.
    ///
    /// # Panics
    /// When the client process cannot be spawned or read.
    pub fn open(
        ns: &str,
        cgroup: Option<&TestCgroup>,
        addr: Ipv4Addr,
        port: u16,
    ) -> Result<Self, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, python(), "-c", CLIENT_PY])
            .args([addr.to_string(), port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let procs = cgroup.map(|c| c.enter_on_spawn(&mut cmd));
        let mut child = cmd.spawn().expect("spawning the python client");
        drop(procs);
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("client stdout"))
            .read_line(&mut line)
            .expect("reading the client's line");
        let parse = || -> Option<(String, SocketAddr, SocketAddr)> {
            let (greeting, peer) = line.trim().split_once('|')?;
            let (server, seen) = greeting.split_once(' ')?;
            Some((server.to_owned(), seen.parse().ok()?, peer.parse().ok()?))
        };
        let Some((server, seen_by_server, peer)) = parse() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{addr}:{port}: {}", line.trim()));
        };
        Ok(Self {
            child,
            stdin,
            server,
            seen_by_server,
            peer,
        })
    }
}

impl Drop for LocalClient {
    fn drop(&mut self) {
        // Closing stdin lets the client exit and close its socket.
        drop(self.stdin.take());
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
