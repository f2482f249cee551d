//! `pgsvc-pass`: an XDP program that passes every frame.
//!
//! Attached to the far end of a veth pair whose near end runs pgsvc in native mode: veth delivers
//! frames that XDP transmitted (`XDP_TX`/redirect) only when the peer runs an XDP program of its own.
//! A separate object without maps, so loading it touches nothing else.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn pgsvc_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
