//! SNAT port allocation: the source port a translated connection uses toward its backend.
//!
//! A port is held by the `NAT_REV` entry `(backend, SNAT address, port)`; claiming one is inserting
//! that entry. Each SYN probes up to `SNAT_TRIES` ports: half in order from a per-destination cursor
//! (so ports are reused in the order they were released), half at random from a seed of its own (so
//! a retransmitted SYN tries other ports than the one before it). The probe sequence and the reuse
//! rules are in `pgsvc_ebpf::snat`, unit-tested on the host.
//!
//! **Reuse (TIME_WAIT-like).** The agent's GC frees a closed flow's port ≈ 10 s after its close; when
//! ports run short, a SYN takes over the port of a connection that is over — reset either way, or
//! closed with a FIN each way — once nothing has crossed it for `REUSE_QUIET_NS` (0.5 s; closing
//! packets are stamped with the kernel clock for this, see flow.rs `touch`), looking first at
//! the ports at the cursor, those released longest ago. What the backend's TCP sees then:
//! - the client closed first (PostgreSQL clients send Terminate and close): the backend went through
//!   LAST_ACK to CLOSED on the client's last ACK, long delivered after 0.5 s of silence; it keeps no
//!   state for the 4-tuple and the new SYN opens a fresh connection;
//! - a RST either way: no TIME_WAIT on either side;
//! - the backend closed first: it holds the 4-tuple in TIME_WAIT (60 s). Linux accepts a SYN there
//!   when its sequence number is beyond the old connection's or its timestamp newer; otherwise it
//!   answers with an ACK of the old connection, which the client (in SYN_SENT) answers with a RST
//!   carrying exactly the sequence the TIME_WAIT expects, which ends it (`tcp_rfc1337` off, the
//!   default). That RST also ends the new flow here, so the client's SYN retransmission (1 s) is a
//!   new flow on another port (the reset one is cooling). The client is delayed, never left hanging.
//!
//! Stray late packets of the old connection that reach the new one are out of its window and are
//! answered or dropped by the endpoints' TCP, as with any 4-tuple reuse.
//!
//! **Refusal.** A SYN finding no free or reusable port is refused with a RST at once when every
//! probed port carries a live connection (`RstSnatExhausted`: nothing will free up before the client
//! would retransmit); when some probed port only waits out its quiet time, the SYN is dropped
//! (`DropSnatExhausted`) and its retransmission a second later takes that port.

use core::num::NonZeroU32;

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use pgsvc_common::{Backend, Config, Flow, FlowKey, NatKey, NatRev, SNAT_TRIES};
use pgsvc_ebpf::snat::{Holder, REUSE_PROBES, SEQ_PROBES, candidate, holder};

use crate::{
    atomic,
    maps::{FLOWS, FLOWS_PENDING, NAT_REV},
};

/// `last_seen_ns` of a reverse entry being taken over by a CPU: others leave it alone.
const CLAIMED: u64 = u64::MAX;

/// The kernel's coarse monotonic clock: the agent's clock (`Config::now_ns`) without its up to
/// one-second lag. Read only for closing packets and for SYNs that find a port taken.
#[inline(always)]
pub fn exact_now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The outcome of a SYN's search for a port.
pub enum Alloc {
    /// Claimed (network order): the `NAT_REV` entry is written.
    Port(u16),
    /// Every probed port carries a live connection: refuse the SYN with a RST (`RstSnatExhausted`,
    /// answered by conntrack.rs `forward`).
    Refuse,
    /// A port is about to be free (its connection just ended): drop, the retransmission takes it.
    Retry,
}

/// Claims a port toward `be` for the connection described by `rev`; `now` is the agent's clock.
///
/// Two passes. The first looks for a free port and keeps no state from one probe to the next but
/// the index, which keeps the verifier's work per probe small. Only when it finds none does the
/// second look at the first `REUSE_PROBES` ports from the cursor for a finished connection's port
/// to take over, noting whether one is still cooling down.
#[inline(always)]
pub fn alloc_port(cfg: &Config, be: &Backend, rev: &NatRev, now: u64) -> Alloc {
    let min = u32::from(cfg.snat_port_min);
    let max = u32::from(cfg.snat_port_max);
    if max < min || min == 0 {
        return Alloc::Refuse;
    }
    let Some(range) = NonZeroU32::new(max - min + 1) else {
        return Alloc::Refuse;
    };
    // SAFETY: helper without arguments.
    let seed = unsafe { bpf_get_prandom_u32() };
    let Some(cur) = cursor(cfg, be, seed, now) else {
        return Alloc::Retry;
    };
    // SAFETY: map value; plain reads and writes, a stale cursor only costs a probe.
    let c = unsafe { (*cur).client_ifindex } % range;
    let key_of = |off: u32| {
        let port = ((min + off) as u16).to_be();
        NatKey::of_packet(be.addr, cfg.snat_addr, be.port, port)
    };
    let mut i = 0;
    while i < SNAT_TRIES {
        let off = candidate(c, seed, i, range);
        let key = key_of(off);
        // After a random probe, the cursor skips the taken run it started on.
        let next = if i < SEQ_PROBES {
            off + 1
        } else {
            c + SEQ_PROBES
        };
        i += 1;
        // Look before inserting: a failed insert into a full LRU map still evicts an entry.
        if NAT_REV.get_ptr(key).is_none()
            && NAT_REV.insert(key, rev, u64::from(BPF_NOEXIST)).is_ok()
        {
            // SAFETY: as above.
            unsafe { advance(cur, next, now) };
            return Alloc::Port(key.snat_port);
        }
    }
    let mut cooling = false;
    let mut i = 0;
    while i < range.get() && i < REUSE_PROBES {
        let off = candidate(c, seed, i, range);
        let key = key_of(off);
        i += 1;
        match holder_of(&key) {
            Holder::Live => {}
            Holder::Reusable if take_over(&key, rev) => {
                // SAFETY: as above.
                unsafe { advance(cur, off + 1, now) };
                return Alloc::Port(key.snat_port);
            }
            _ => cooling = true,
        }
    }
    if cooling { Alloc::Retry } else { Alloc::Refuse }
}

/// The allocation cursor of a destination: the reverse entry of its port 0 (never a SNAT port,
/// ranges start at 1), cursor in `client_ifindex`, created at a random port. Every allocation
/// refreshes its `last_seen_ns`; the agent collects it 65 s after the last (longer than the 60 s a
/// server holds a 4-tuple it closed first in TIME_WAIT, see datapath/xdp/flows.rs), and the next
/// SYN starts a new one.
#[inline(always)]
fn cursor(cfg: &Config, be: &Backend, seed: u32, now: u64) -> Option<*mut NatRev> {
    let key = NatKey::of_packet(be.addr, cfg.snat_addr, be.port, 0);
    if let Some(p) = NAT_REV.get_ptr_mut(key) {
        return Some(p);
    }
    let fresh = NatRev {
        client_ifindex: seed,
        last_seen_ns: now,
        ..NatRev::default()
    };
    let _ = NAT_REV.insert(key, fresh, u64::from(BPF_NOEXIST));
    NAT_REV.get_ptr_mut(key)
}

/// Moves the cursor past the port just given.
#[inline(always)]
unsafe fn advance(cur: *mut NatRev, next: u32, now: u64) {
    // SAFETY: the caller passes the cursor entry's value.
    unsafe {
        (*cur).client_ifindex = next;
        (*cur).last_seen_ns = now;
    }
}

/// Who holds the port of `key` (a free port counts as cooling: it was freed just now).
#[inline(always)]
fn holder_of(key: &NatKey) -> Holder {
    let Some(held) = NAT_REV.get_ptr(key) else {
        return Holder::Cooling;
    };
    // SAFETY: hash map value, read only.
    let held = unsafe { &*held };
    let last_rev = held.last_seen_ns;
    if last_rev == CLAIMED {
        return Holder::Live;
    }
    let flow = flow_of(&held.flow_key()).and_then(|f| {
        // SAFETY: hash map value, read only.
        let f = unsafe { &*f };
        // The flow at that key may be a newer connection of the same client port on another
        // SNAT port: only the one translated through this port counts.
        (f.snat_port == key.snat_port && f.backend_addr == key.backend_addr).then_some((
            f.closing != 0,
            f.client_flags,
            f.last_seen_ns,
        ))
    });
    let last = match flow {
        Some((_, _, l)) if l > last_rev => l,
        _ => last_rev,
    };
    let quiet = exact_now().saturating_sub(last);
    holder(flow.map(|(c, f, _)| (c, f)), held.backend_flags, quiet)
}

/// Takes over the port of a finished connection: marks its reverse entry claimed (one CPU wins),
/// rewrites it for the new connection and removes the old forward flow (its counters dropped when
/// it closed).
#[inline(always)]
fn take_over(key: &NatKey, rev: &NatRev) -> bool {
    let Some(held) = NAT_REV.get_ptr_mut(key) else {
        // Collected meanwhile: the port is simply free.
        return NAT_REV.insert(key, rev, u64::from(BPF_NOEXIST)).is_ok();
    };
    // SAFETY: map value; `last_seen_ns` is swapped atomically so that two SYNs cannot both win.
    let was = unsafe { atomic::swap_u64(&raw mut (*held).last_seen_ns, CLAIMED) };
    if was == CLAIMED {
        return false;
    }
    // SAFETY: as above; the key is copied out before the entry is rewritten.
    let old: FlowKey = unsafe { (*held).flow_key() };
    if NAT_REV.insert(key, rev, u64::from(BPF_EXIST)).is_err()
        && NAT_REV.insert(key, rev, u64::from(BPF_NOEXIST)).is_err()
    {
        return false;
    }
    // A finished flow waits out its close in `FLOWS_PENDING`; `FLOWS` is checked too in case
    // it was never demoted.
    if let Some(f) = FLOWS_PENDING.get_ptr(old) {
        // SAFETY: hash map value, read only.
        let f = unsafe { &*f };
        if f.snat_port == key.snat_port && f.backend_addr == key.backend_addr && f.closing != 0 {
            let _ = FLOWS_PENDING.remove(old);
        }
    } else if let Some(f) = FLOWS.get_ptr(old) {
        // SAFETY: hash map value, read only.
        let f = unsafe { &*f };
        if f.snat_port == key.snat_port && f.backend_addr == key.backend_addr && f.closing != 0 {
            let _ = FLOWS.remove(old);
        }
    }
    true
}

/// The forward flow at `key`, established (`FLOWS`) or half-open/closing (`FLOWS_PENDING`).
#[inline(always)]
fn flow_of(key: &FlowKey) -> Option<*const Flow> {
    FLOWS.get_ptr(key).or_else(|| FLOWS_PENDING.get_ptr(key))
}
