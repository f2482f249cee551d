//! The pgsvc XDP program: full-NAT (one-arm) layer-4 load balancing of TCP services.
//!
//! The entry reads as a list of steps — parse → lookup service → conntrack → select backend → NAT →
//! transmit — each a short `#[inline(always)]` function returning `Result<_, Reason>`. The `#[xdp]`
//! function only counts the outcome's [`Reason`] and returns its action; a packet that is not
//! transmitted gets the action its reason stands for ([`Reason::action`], shared with the agent).
#![no_std]
#![no_main]
// Atomic read-modify-write on map values (see atomic.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod atomic;
mod conntrack;
mod flow;
mod local;
mod maps;
mod nat;
mod parse;
mod pending;
mod rst;
mod scope;
mod select;
mod snat;
mod sock;
mod stats;
mod tc;
mod verify;
mod xmit;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{cgroup_sock, cgroup_sock_addr, xdp},
    programs::{SockAddrContext, SockContext, XdpContext},
};
use pgsvc_common::{ABI_VERSION, Action, Config, Reason};

use crate::parse::Pkt;

/// What to do with the packet, and why.
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

impl Verdict {
    /// A packet left as it is: passed or dropped, as its reason says.
    #[inline(always)]
    pub const fn of(reason: Reason) -> Self {
        // `Reason::action` folded into two constant bit sets (a match over every variant costs a
        // chain of branches on the pass path).
        const PASS: u32 = Reason::mask(Action::Pass);
        const DROP: u32 = Reason::mask(Action::Drop);
        let bit = 1u32 << (reason as u32 & 31);
        let action = if PASS & bit != 0 {
            xdp_action::XDP_PASS
        } else if DROP & bit != 0 {
            xdp_action::XDP_DROP
        } else {
            // A transmit reason without a rewritten frame is a bug of this program: abort (visible
            // in the xdp:xdp_exception tracepoint) rather than send a frame nobody built.
            xdp_action::XDP_ABORTED
        };
        Self { action, reason }
    }
}

// Inlined into the entry the macro generates: a BPF-to-BPF call costs a call and a return per
// packet (each return goes through the CPU's return-thunk mitigation where it has one).
#[xdp]
#[inline(always)]
pub fn pgsvc_xdp(ctx: XdpContext) -> u32 {
    let verdict = match process(&ctx) {
        Ok(v) => v,
        Err(reason) => Verdict::of(reason),
    };
    stats::count_reason(verdict.reason);
    verdict.action
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Result<Verdict, Reason> {
    let pkt = parse::parse_ipv4_tcp(ctx)?;
    let cfg = config()?;
    let port_flags = maps::port_flags(pkt.dport);
    if port_flags != 0 {
        return conntrack::forward(ctx, &pkt, cfg, port_flags);
    }
    if svc_is_snat_target(&pkt, cfg) {
        return conntrack::reverse(ctx, &pkt);
    }
    Err(Reason::PassNotService)
}

#[inline(always)]
fn config() -> Result<&'static Config, Reason> {
    match maps::CONFIG.get(0) {
        Some(cfg) if cfg.abi_version == ABI_VERSION => Ok(cfg),
        _ => Err(Reason::PassNotReady),
    }
}

/// A packet addressed to our SNAT address and port range is (maybe) a backend's answer.
#[inline(always)]
fn svc_is_snat_target(pkt: &Pkt, cfg: &Config) -> bool {
    let port = u16::from_be(pkt.dport);
    pkt.daddr == cfg.snat_addr && port >= cfg.snat_port_min && port <= cfg.snat_port_max
}

/// Local clients: see sock.rs.
#[cgroup_sock_addr(connect4)]
pub fn pgsvc_connect4(ctx: SockAddrContext) -> i32 {
    sock::connect4(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn pgsvc_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::getpeername4(&ctx)
}

#[cgroup_sock(sock_release)]
pub fn pgsvc_sock_release(ctx: SockContext) -> i32 {
    sock::sock_release(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
