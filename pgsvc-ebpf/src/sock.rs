//! Clients on the node itself (`psql -h 127.0.0.1 -p 5433`, the node's address, the VIP): their
//! packets never cross the XDP program (loopback, or locally delivered), so they are balanced at the
//! socket instead, by cgroup v2 programs the agent attaches to a cgroup (the root by default):
//!
//! - `connect4` rewrites a TCP connect to a service address — the exact service address, or for an
//!   `ip: "*"` service any local address including 127.0.0.0/8 — to the server the XDP path would
//!   pick (same maps, same selection: weights, round robin, leastconn, Maglev on the socket
//!   cookie, backups, maxconn, DRAIN/MAINT as the agent wrote them), and counts the session in the
//!   same service and backend counters;
//! - `getpeername4` shows the client the address and port it dialled;
//! - `sock_release` ends the session's count when the socket goes away.
//!
//! The programs see every process of the cgroup whatever its network namespace; only sockets of the
//! agent's namespace are served (`SOCK_SCOPE`). A connect the programs cannot place (no usable
//! server, maxconn reached, session table full) is left as the client wrote it: the kernel then
//! refuses it (or routes it to the address dialled), and the attempt counts as `syn_dropped`.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::{SockAddrContext, SockContext},
};
use pgsvc_common::{GENERATIONS, IPPROTO_TCP, SVC_F_ACTIVE, ServiceState, SockFlow, open_conns};

use crate::{
    atomic,
    maps::{
        self, BACKENDS, LOCAL_ADDRS, SOCK_FLOWS, SOCK_SCOPE, SVC_RELEASED, SVC_RUNTIME, SVC_STATE,
        SVC_TABLE,
    },
    select, stats,
};

/// Let the syscall proceed (cgroup sock programs return 1 to allow, 0 to refuse).
const ALLOW: i32 = 1;

/// 127.0.0.0/8 in network order, as read natively from the socket address.
#[inline(always)]
fn is_loopback(addr: u32) -> bool {
    addr.to_ne_bytes()[0] == 127
}

/// Whether `ctx`'s socket lives in the agent's network namespace.
#[inline(always)]
fn in_scope(ctx: &SockAddrContext) -> bool {
    let Some(scope) = SOCK_SCOPE.get(0) else {
        return false;
    };
    // SAFETY: helper on our own context.
    let ns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    scope.netns_cookie != 0 && ns == scope.netns_cookie
}

pub fn connect4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid `bpf_sock_addr`; these fields are readable for connect4.
    let (proto, daddr, dport) = unsafe { ((*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    if proto != u32::from(IPPROTO_TCP) {
        return ALLOW;
    }
    // The port sits in network order in the low 16 bits (as a packet carries it).
    let dport = dport as u16;
    let flags = maps::port_flags(dport);
    if flags == 0 || crate::config().is_err() || !in_scope(ctx) {
        return ALLOW;
    }
    let Some(found) = maps::lookup_service(daddr, dport, flags) else {
        return ALLOW;
    };
    // SAFETY: the value is a plain u8, not kept.
    if found.wildcard && !is_loopback(daddr) && unsafe { LOCAL_ADDRS.get(daddr) }.is_none() {
        return ALLOW;
    }
    // SAFETY: helper on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A connect retried on the same socket (non-blocking clients) keeps its server.
    // SAFETY: the value is copied out before the next helper call.
    if let Some(f) = unsafe { SOCK_FLOWS.get(cookie) }.copied() {
        rewrite(ctx, f.backend_addr, f.backend_port);
        return ALLOW;
    }
    let Some(svc) = SVC_STATE.get(found.svc_id) else {
        return ALLOW;
    };
    if svc.flags & SVC_F_ACTIVE == 0 {
        return ALLOW;
    }
    if place(ctx, cookie, found.svc_id, svc, daddr, dport).is_err()
        && let Some(s) = stats::service(found.svc_id)
    {
        s.syn_dropped += 1;
    }
    ALLOW
}

#[inline(always)]
fn rewrite(ctx: &SockAddrContext, addr: u32, port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: user_ip4 and user_port are writable for connect4 and getpeername4.
    unsafe {
        (*sa).user_ip4 = addr;
        (*sa).user_port = u32::from(port);
    }
}

/// Picks the server, records the session and rewrites the destination.
#[inline(always)]
fn place(
    ctx: &SockAddrContext,
    cookie: u64,
    svc_id: u32,
    svc: &ServiceState,
    vip: u32,
    vport: u16,
) -> Result<(), ()> {
    let rt = SVC_RUNTIME.get_ptr_mut(svc_id).ok_or(())?;
    // SAFETY: array map value; `conns` is only modified atomically.
    let opened = unsafe { atomic::load_i64(&raw const (*rt).conns) };
    let open = open_conns(opened, SVC_RELEASED.get(svc_id).copied().unwrap_or(0));
    if svc.maxconn != 0 && open >= u64::from(svc.maxconn) {
        return Err(());
    }
    let set = SVC_TABLE
        .get(svc_id * GENERATIONS + (svc.generation & 1))
        .ok_or(())?;
    let backend_id = select::pick(svc.algorithm, set, rt, cookie as u32).map_err(|_| ())?;
    let be = BACKENDS.get(backend_id).ok_or(())?;
    let flow = SockFlow {
        svc_id,
        backend_id,
        backend_epoch: be.epoch,
        vip,
        backend_addr: be.addr,
        vport,
        backend_port: be.port,
    };
    SOCK_FLOWS
        .insert(cookie, flow, u64::from(BPF_NOEXIST))
        .map_err(|_| ())?;
    // SAFETY: atomic access to a shared array value.
    unsafe { atomic::add_i64(&raw mut (*rt).conns, 1) };
    select::add_backend_conns(backend_id, 1);
    if let Some(s) = stats::service(svc_id) {
        s.new_flows += 1;
    }
    if let Some(s) = stats::backend(backend_id) {
        s.new_flows += 1;
    }
    rewrite(ctx, be.addr, be.port);
    Ok(())
}

pub fn getpeername4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: helper on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    let Some(f) = (unsafe { SOCK_FLOWS.get(cookie) }).copied() else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    // SAFETY: readable fields of getpeername4's context.
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    if addr == f.backend_addr && port == f.backend_port {
        rewrite(ctx, f.vip, f.vport);
    }
    ALLOW
}

pub fn sock_release(ctx: &SockContext) -> i32 {
    // SAFETY: helper on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    let Some(f) = (unsafe { SOCK_FLOWS.get(cookie) }).copied() else {
        return ALLOW;
    };
    // Whoever removes the entry drops the counters (two agents' programs may both run here while
    // one replaces the other).
    if SOCK_FLOWS.remove(cookie).is_err() {
        return ALLOW;
    }
    if let Some(rt) = SVC_RUNTIME.get_ptr_mut(f.svc_id) {
        // SAFETY: atomic access to a shared array value.
        unsafe { atomic::add_i64(&raw mut (*rt).conns, -1) };
    }
    // A reassigned slot's counter belongs to its new server already (the agent zeroed it).
    if BACKENDS.get(f.backend_id).map(|b| b.epoch) == Some(f.backend_epoch) {
        select::add_backend_conns(f.backend_id, -1);
    }
    if let Some(s) = stats::service(f.svc_id) {
        s.closed_flows += 1;
    }
    if let Some(s) = stats::backend(f.backend_id) {
        s.closed_flows += 1;
    }
    ALLOW
}
