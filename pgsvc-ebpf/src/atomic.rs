//! Atomic operations on map values. The bpfel target reports no atomic CAS, so `core::sync::atomic`
//! offers no read-modify-write methods there; the intrinsics lower to the BPF atomic instructions
//! (`lock xadd`, and `BPF_FETCH`/`BPF_XCHG`, which need kernel ≥ 5.12 — long below what we support).
//!
//! Toolchain workaround (LLVM 22 BPF backend, seen with bpf-linker 0.13): a `Relaxed` fetch-add is
//! emitted as a plain `lock +=` whose "result" is the addend, and a `Relaxed` exchange vanishes. The
//! read-modify-write operations whose result we use are therefore `SeqCst`, which selects the real
//! `atomic_fetch_add`/`xchg` instructions (BPF has no weaker fetching forms anyway). The packet tests
//! catch a regression: round robin would stop rotating and closing would stop counting.

use core::intrinsics::{AtomicOrdering, atomic_xadd, atomic_xchg};

/// `*p += v`, returning the previous value.
#[inline(always)]
pub unsafe fn fetch_add_u64(p: *mut u64, v: u64) -> u64 {
    // SAFETY: the caller passes a pointer into a live map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, v) }
}

/// `*p += v` (result unused: plain `lock xadd`).
#[inline(always)]
pub unsafe fn add_i64(p: *mut i64, v: i64) {
    // SAFETY: as above.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// `*p = v`, returning the previous value.
#[inline(always)]
pub unsafe fn swap_u64(p: *mut u64, v: u64) -> u64 {
    // SAFETY: as above.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(p, v) }
}

/// A single load (no tearing on 64-bit BPF).
#[inline(always)]
pub unsafe fn load_i64(p: *const i64) -> i64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(p) }
}
