//! Per-CPU counters: one per [`Reason`], and traffic per service and per backend. Per-CPU maps need no
//! atomics; the agent sums the CPUs.

use pgsvc_common::{Reason, TrafficStats};

use crate::maps::{BACKEND_STATS, REASONS, SVC_STATS};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(p) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot of this CPU; nothing else writes it while we run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn service(id: u32) -> Option<&'static mut TrafficStats> {
    // SAFETY: per-CPU slot of this CPU.
    SVC_STATS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn backend(id: u32) -> Option<&'static mut TrafficStats> {
    // SAFETY: per-CPU slot of this CPU.
    BACKEND_STATS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

/// Client → server packet of a service/backend pair.
#[inline(always)]
pub fn count_in(svc_id: u32, backend_id: u32, payload: u32) {
    if let Some(s) = service(svc_id) {
        s.packets_in += 1;
        s.bytes_in += u64::from(payload);
    }
    if let Some(s) = backend(backend_id) {
        s.packets_in += 1;
        s.bytes_in += u64::from(payload);
    }
}

/// Server → client packet.
#[inline(always)]
pub fn count_out(svc_id: u32, backend_id: u32, payload: u32) {
    if let Some(s) = service(svc_id) {
        s.packets_out += 1;
        s.bytes_out += u64::from(payload);
    }
    if let Some(s) = backend(backend_id) {
        s.packets_out += 1;
        s.bytes_out += u64::from(payload);
    }
}
