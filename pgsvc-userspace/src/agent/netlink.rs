//! The node's IPv4 addresses through rtnetlink, the kernel interface `ip addr` itself uses: adding
//! and removing the VIP, and a notification on every address change, so that `ip: "*"` services
//! follow an address vip-manager (or Patroni's callback) moves within milliseconds instead of at
//! the next poll.

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
};

use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{Handle, MulticastGroup};
use thiserror::Error;
use tokio::sync::mpsc;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket")]
    Socket(#[source] io::Error),
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("{op} {cidr} on {iface}")]
    Request {
        op: &'static str,
        cidr: String,
        iface: String,
        #[source]
        source: io::Error,
    },
}

/// A request connection, its task spawned on the current runtime (it ends with the handle).
fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

fn index_of(iface: &str) -> Result<u32, NetlinkError> {
    let name =
        std::ffi::CString::new(iface).map_err(|_| NetlinkError::NoInterface(iface.to_owned()))?;
    // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(NetlinkError::NoInterface(iface.to_owned())),
        index => Ok(index),
    }
}

/// The kernel's errno for a refused request, else the library's message.
fn io_of(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn request_error(
    op: &'static str,
    addr: Ipv4Addr,
    prefix: u8,
    iface: &str,
    source: io::Error,
) -> NetlinkError {
    NetlinkError::Request {
        op,
        cidr: format!("{addr}/{prefix}"),
        iface: iface.to_owned(),
        source,
    }
}

/// Adds `addr/prefix` to `iface`; `Ok(false)` when the kernel already had it there.
///
/// # Errors
/// The interface does not exist, or the kernel refused the address.
pub async fn add_addr(iface: &str, addr: Ipv4Addr, prefix: u8) -> Result<bool, NetlinkError> {
    let index = index_of(iface)?;
    let handle = connect()?;
    match handle
        .address()
        .add(index, IpAddr::V4(addr), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(true),
        Err(e) => {
            let io = io_of(e);
            if io.raw_os_error() == Some(libc::EEXIST) {
                Ok(false)
            } else {
                Err(request_error("adding", addr, prefix, iface, io))
            }
        }
    }
}

/// Removes `addr/prefix` from `iface`; `Ok(false)` when it was not there.
///
/// # Errors
/// The interface does not exist, or the kernel refused to list or remove the address.
pub async fn del_addr(iface: &str, addr: Ipv4Addr, prefix: u8) -> Result<bool, NetlinkError> {
    let index = index_of(iface)?;
    let handle = connect()?;
    let mut found = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(IpAddr::V4(addr))
        .set_prefix_length_filter(prefix)
        .execute();
    let mut removed = false;
    while let Some(msg) = found
        .try_next()
        .await
        .map_err(|e| request_error("listing", addr, prefix, iface, io_of(e)))?
    {
        handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(|e| request_error("removing", addr, prefix, iface, io_of(e)))?;
        removed = true;
    }
    Ok(removed)
}

/// [`del_addr`] for callers outside the agent's runtime (`pgsvc detach`).
///
/// # Errors
/// As [`del_addr`], or no runtime could be built.
pub fn del_addr_blocking(iface: &str, addr: Ipv4Addr, prefix: u8) -> Result<bool, NetlinkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetlinkError::Socket)?
        .block_on(del_addr(iface, addr, prefix))
}

/// One notification (coalesced: at most one pending) each time an IPv4 address is added to or
/// removed from any interface of the node. The channel closes if the kernel closes the socket;
/// callers keep a slower poll as a backstop.
///
/// # Errors
/// The multicast socket could not be opened or bound.
pub fn address_changes() -> Result<mpsc::Receiver<()>, NetlinkError> {
    let (conn, handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Ifaddr])
            .map_err(NetlinkError::Socket)?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        // The handle lives as long as the listener: the connection task ends with the last one.
        let _handle = handle;
        while messages.next().await.is_some() {
            if tx.is_closed() {
                break;
            }
            // Full: a notification is already pending, and one re-read covers both.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_interface_is_a_clear_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let err = rt
            .block_on(add_addr("pgsvc-no-such0", Ipv4Addr::new(198, 18, 9, 9), 32))
            .expect_err("no such interface");
        assert_eq!(err.to_string(), "interface pgsvc-no-such0 does not exist");
    }
}
