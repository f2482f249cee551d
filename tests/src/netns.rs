//! Hosts as network namespaces on one machine: a switch namespace with a bridge, and hosts joined to
//! it by veth pairs created directly inside their namespaces (the root namespace is never touched).
//! Code runs "on" a host through an [`NsWorker`]: a thread moved into that namespace with setns(2),
//! so sockets, interface lookups and `/proc/thread-self/net` all see the host's network.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::guard::{NetNs, sh};

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A thread living in a network namespace, running jobs against its own state `S`.
pub struct NsWorker<S: 'static> {
    tx: Option<mpsc::Sender<Job<S>>>,
    handle: Option<JoinHandle<()>>,
}

/// Moves the calling thread into the named namespace.
pub fn enter_netns(name: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on an open namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl<S: 'static> NsWorker<S> {
    /// Starts the thread, enters `ns`, and builds the state there.
    pub fn start(ns: &str, init: impl FnOnce() -> S + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel::<Job<S>>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let ns = ns.to_owned();
        let handle = std::thread::spawn(move || {
            if let Err(e) = enter_netns(&ns) {
                let _ = ready_tx.send(Err(format!("setns {ns}: {e}")));
                return;
            }
            let mut state = init();
            let _ = ready_tx.send(Ok(()));
            while let Ok(job) = rx.recv() {
                job(&mut state);
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("namespace worker died while starting"),
        }
        Self {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Runs `f` on the worker thread and returns its result.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce(&mut S) -> R + Send + 'static) -> R {
        let (rtx, rrx) = mpsc::channel();
        let job: Job<S> = Box::new(move |s| {
            let _ = rtx.send(f(s));
        });
        self.tx
            .as_ref()
            .expect("worker running")
            .send(job)
            .expect("worker alive");
        rrx.recv().expect("worker job panicked")
    }
}

impl<S: 'static> Drop for NsWorker<S> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One host: its namespace, address, and the name of its bridge port in the switch namespace.
pub struct Host {
    pub ns: NetNs,
    pub addr: Ipv4Addr,
    pub port: String,
}

/// A bridge (in its own namespace) and hosts on 198.18.0.0/24.
pub struct Topology {
    pub sw: NetNs,
    pub hosts: Vec<Host>,
}

impl Topology {
    /// Creates the switch and one host per `(tag, address)`; each host's interface is `eth0` with tx
    /// checksum offload off (veth would otherwise hand XDP partial checksums).
    pub fn new(hosts: &[(&str, Ipv4Addr)]) -> Self {
        let sw = NetNs::new("sw");
        sw.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        sw.exec(&["ip", "link", "set", "br0", "up"]);
        let mut out = Vec::new();
        for (i, (tag, addr)) in hosts.iter().enumerate() {
            let ns = NetNs::new(tag);
            let port = format!("p{i}");
            sh(&[
                "ip", "link", "add", "eth0", "netns", &ns.name, "type", "veth", "peer", "name",
                &port, "netns", &sw.name,
            ]);
            sw.exec(&["ip", "link", "set", &port, "master", "br0", "up"]);
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ns.exec(&["ip", "link", "set", "eth0", "up"]);
            ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
            out.push(Host {
                ns,
                addr: *addr,
                port,
            });
        }
        Self { sw, hosts: out }
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Hosts first (their veths vanish with them), then the switch.
        self.hosts.clear();
    }
}

/// A TCP server that greets every connection with `"<name> <peer ip:port>\n"`, then echoes.
pub struct NameServer {
    stop: Arc<AtomicBool>,
    _worker: NsWorker<()>,
}

impl NameServer {
    pub fn start(ns: &str, listen: SocketAddr, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = NsWorker::start(ns, || ());
        let (stop2, name) = (stop.clone(), name.to_owned());
        worker.run(move |_| {
            let listener =
                TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
            listener.set_nonblocking(true).expect("nonblocking");
            // Threads spawned here inherit this thread's namespace.
            std::thread::spawn(move || serve(listener, &name, &stop2));
        });
        Self {
            stop,
            _worker: worker,
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(listener: TcpListener, name: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, peer)) => {
                let greeting = format!("{name} {peer}\n");
                std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                    if s.write_all(greeting.as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
}

/// A client connection that read its greeting.
pub struct Conn {
    pub stream: TcpStream,
    pub server: String,
    pub peer_seen: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects with a short connect timeout (for polling loops) and reads the greeting.
    pub fn open_timeout(to: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&to, timeout)?;
        Self::greet(stream)
    }

    fn greet(stream: TcpStream) -> std::io::Result<Self> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let mut parts = line.split_whitespace();
        let server = parts.next().unwrap_or_default().to_owned();
        let peer_seen = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad greeting {line:?}")))?;
        Ok(Self {
            stream,
            server,
            peer_seen,
            reader,
        })
    }

    /// Connects (from `local_port` if given) and reads the greeting.
    pub fn open(to: SocketAddr, local_port: Option<u16>) -> std::io::Result<Self> {
        let stream = match local_port {
            None => TcpStream::connect_timeout(&to, Duration::from_secs(5))?,
            Some(p) => connect_from(to, p)?,
        };
        Self::greet(stream)
    }

    /// Sends `data` and reads the echo back.
    pub fn echo(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        self.stream.write_all(data)?;
        let mut back = vec![0u8; data.len()];
        self.reader.read_exact(&mut back)?;
        Ok(back)
    }

    /// Closes with a RST (SO_LINGER 0), leaving no TIME_WAIT behind: the same source port can
    /// connect again at once.
    pub fn abort(self) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our own socket with a valid struct.
        unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const l).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            );
        }
    }
}

fn connect_from(to: SocketAddr, port: u16) -> std::io::Result<TcpStream> {
    // SAFETY: plain socket calls on an fd we own until it is wrapped in TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            4,
        );
        // Bounds connect(2) too.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let local = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        if libc::bind(
            fd,
            (&raw const local).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let SocketAddr::V4(v4) = to else {
            return Err(std::io::Error::other("IPv4 only"));
        };
        let remote = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        if libc::connect(
            fd,
            (&raw const remote).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// One HTTP/1.1 request (no body) with `Connection: close`: (status code, body). Used against the
/// admin API from whichever namespace the calling thread is in.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        addr.ip()
    );
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
