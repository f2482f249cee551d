//! Port-conflict refusal: on a node that still runs HAProxy (or anything else listening on a service
//! port), starting pgsvc would silently take that listener's traffic. So `pgsvc run` first lists the
//! TCP listeners of its network namespace and refuses when one sits on a service port at an address
//! the service covers — naming the port and the process — unless `--takeover` is given.
//!
//! The listeners come from `/proc/net/tcp` and `/proc/net/tcp6` (the kernel's socket table of the
//! process's namespace, the same data sock_diag gives, without a netlink dependency); the owning
//! process from the `socket:[inode]` links under `/proc/*/fd`. A bind probe was not used: it cannot
//! see a listener bound with SO_REUSEPORT, nor name its owner.

use std::{fmt, net::Ipv4Addr};

use crate::plan::{BindAddr, ServicePlan};

/// A TCP socket in LISTEN state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// IPv4 address (or the IPv4 in an IPv4-mapped IPv6 address); `None` = every address
    /// (0.0.0.0 or ::).
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    pub inode: u64,
}

/// A service port already taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub service: String,
    pub port: u16,
    pub listener: Option<Ipv4Addr>,
    /// `name[pid]` of the owning process, when found.
    pub process: Option<String>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self
            .listener
            .map_or_else(|| "*".to_owned(), |a| a.to_string());
        write!(
            f,
            "port {} of service {} is already taken by a listener on {at}:{}",
            self.port, self.service, self.port
        )?;
        if let Some(p) = &self.process {
            write!(f, " ({p})")?;
        }
        Ok(())
    }
}

/// Parses `/proc/net/tcp` or `/proc/net/tcp6` text into its listeners.
pub fn parse_proc_net_tcp(text: &str) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let (addr_hex, port_hex) = f[1].split_once(':')?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let inode = f[9].parse().ok()?;
            let addr = match addr_hex.len() {
                // The kernel prints the address as a native-endian u32 (little-endian here).
                8 => u32::from_str_radix(addr_hex, 16).ok()?.swap_bytes(),
                32 => ipv4_of_v6(addr_hex)?,
                _ => return None,
            };
            Some(Listener {
                addr: (addr != 0).then(|| Ipv4Addr::from(addr)),
                port,
                inode,
            })
        })
        .collect()
}

/// An IPv6 address as `/proc/net/tcp6` prints it (four native-endian u32 words): `Some(0)` for
/// `::`, `Some(v4)` for `::ffff:v4`, `None` for any other address (no IPv4 client reaches it).
fn ipv4_of_v6(hex: &str) -> Option<u32> {
    let mut words = [0u32; 4];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
            .ok()?
            .swap_bytes();
    }
    match words {
        [0, 0, 0, 0] => Some(0),
        [0, 0, 0xffff, v4] => Some(v4),
        _ => None,
    }
}

/// Where a service listens: (name, address, port).
pub type Bound = (String, BindAddr, u16);

/// Where `services` listen.
pub fn bounds(services: &[ServicePlan]) -> Vec<Bound> {
    services
        .iter()
        .map(|s| (s.name.clone(), s.ip, s.port))
        .collect()
}

/// The listeners that take a port of `services`.
pub fn conflicts(services: &[Bound], listeners: &[Listener]) -> Vec<Conflict> {
    let mut out = Vec::new();
    for (name, ip, port) in services {
        for l in listeners.iter().filter(|l| l.port == *port) {
            let covered = match (ip, l.addr) {
                (BindAddr::Any, _) | (BindAddr::Addr(_), None) => true,
                (BindAddr::Addr(a), Some(b)) => *a == b,
            };
            if covered && !out.iter().any(|c: &Conflict| c.port == *port) {
                out.push(Conflict {
                    service: name.clone(),
                    port: *port,
                    listener: l.addr,
                    process: owner(l.inode),
                });
            }
        }
    }
    out
}

/// This namespace's TCP listeners (IPv4 and IPv6 tables).
pub fn listeners() -> Vec<Listener> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| parse_proc_net_tcp(&t))
        .collect()
}

/// `name[pid]` of a process holding socket `inode`.
fn owner(inode: u64) -> Option<String> {
    let needle = format!("socket:[{inode}]");
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = proc_entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        let found = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == needle.as_str())
        });
        if found {
            let comm = std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
            return Some(format!("{}[{pid}]", comm.trim()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1539 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0300A8C0:153A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:153E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000300A8C0:153F 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
   2: 000080FE00000000FF00000001000000:1540 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listeners_are_read_from_both_tables() {
        let v4 = parse_proc_net_tcp(TCP);
        assert_eq!(
            v4,
            vec![
                Listener {
                    addr: None,
                    port: 5433,
                    inode: 1001
                },
                Listener {
                    addr: Some(Ipv4Addr::new(192, 168, 0, 3)),
                    port: 5434,
                    inode: 1002
                },
            ]
        );
        let v6 = parse_proc_net_tcp(TCP6);
        assert_eq!(
            v6.iter().map(|l| (l.addr, l.port)).collect::<Vec<_>>(),
            vec![(None, 5438), (Some(Ipv4Addr::new(192, 168, 0, 3)), 5439)]
        );
    }

    fn service(name: &str, ip: BindAddr, port: u16) -> Bound {
        (name.to_owned(), ip, port)
    }

    #[test]
    fn a_listener_conflicts_where_the_service_listens() {
        let vip = Ipv4Addr::new(192, 168, 0, 3);
        let other = Ipv4Addr::new(192, 168, 0, 4);
        let l = |addr, port| Listener {
            addr,
            port,
            inode: 0,
        };
        let star = [service("pg-test-primary", BindAddr::Any, 5433)];
        // `*` services: any listener on the port.
        assert_eq!(conflicts(&star, &[l(Some(other), 5433)]).len(), 1);
        assert_eq!(conflicts(&star, &[l(None, 5433)]).len(), 1);
        assert!(conflicts(&star, &[l(None, 5434)]).is_empty());
        // A service on the VIP: a listener on the VIP or on every address, not on another one.
        let exact = [service("pg-test-primary", BindAddr::Addr(vip), 5433)];
        assert_eq!(conflicts(&exact, &[l(Some(vip), 5433)]).len(), 1);
        assert_eq!(conflicts(&exact, &[l(None, 5433)]).len(), 1);
        assert!(conflicts(&exact, &[l(Some(other), 5433)]).is_empty());
        let c = &conflicts(&star, &[l(None, 5433)])[0];
        assert_eq!(
            c.to_string(),
            "port 5433 of service pg-test-primary is already taken by a listener on *:5433"
        );
    }
}
