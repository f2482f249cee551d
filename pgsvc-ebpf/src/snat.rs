//! SNAT port allocation: the source port a translated connection uses toward its backend.

use aya_ebpf::bindings::BPF_NOEXIST;
use pgsvc_common::{Backend, Config, NatKey, NatRev, Reason, SNAT_TRIES};

use crate::maps::NAT_REV;

/// Claims a free SNAT port toward this backend by inserting the reverse entry; tries a few hashed
/// candidates before giving up.
#[inline(always)]
pub fn alloc_snat_port(cfg: &Config, be: &Backend, rev: &NatRev, h: u32) -> Result<u16, Reason> {
    let min = u32::from(cfg.snat_port_min);
    let max = u32::from(cfg.snat_port_max);
    if max < min {
        return Err(Reason::DropSnatExhausted);
    }
    let range = max - min + 1;
    let mut i = 0;
    while i < SNAT_TRIES {
        let port = (min + (h.wrapping_add(i.wrapping_mul(0x9e37_79b1)) % range)) as u16;
        let key = NatKey::of_packet(be.addr, cfg.snat_addr, be.port, port.to_be());
        if NAT_REV.insert(key, rev, u64::from(BPF_NOEXIST)).is_ok() {
            return Ok(port.to_be());
        }
        i += 1;
    }
    Err(Reason::DropSnatExhausted)
}
