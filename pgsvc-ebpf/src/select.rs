//! Backend selection for a new flow: weighted round robin, leastconn, Maglev. The agent prepares the
//! ring (weighted sequence or Maglev table) and the active set; this file only reads them.

use pgsvc_common::{
    Algorithm, BackendSet, MAX_ACTIVE, RING_SIZE, Reason, ServiceRuntime, open_conns,
};

use crate::{
    atomic,
    maps::{BACKEND_CONNS, BACKEND_RELEASED, BACKENDS},
};

/// Hides an index from the optimiser so that the bounds check after it survives.
///
/// Verifier workaround (every kernel so far): the verifier does not derive bounds from `%`, while LLVM
/// proves `x % n < n <= RING_SIZE` and deletes our explicit `idx >= RING_SIZE` check — leaving an
/// unbounded offset into the map value, which the verifier rejects.
#[inline(always)]
fn opaque(x: usize) -> usize {
    core::hint::black_box(x)
}

/// Successors tried when the chosen server is at its maxconn (HAProxy skips full servers).
const RR_TRIES: u64 = 4;

#[inline(always)]
pub fn pick(
    algorithm: u32,
    set: &BackendSet,
    rt: *mut ServiceRuntime,
    hash: u32,
) -> Result<u32, Reason> {
    match Algorithm::from_u32(algorithm) {
        Some(Algorithm::LeastConn) => leastconn(set, rt),
        Some(Algorithm::Maglev) => maglev(set, hash),
        _ => roundrobin(set, rt),
    }
}

#[inline(always)]
fn next_rr(rt: *mut ServiceRuntime) -> u64 {
    // SAFETY: `rt` points into an array map value that lives as long as the program; concurrent CPUs
    // only touch it through atomics.
    unsafe { atomic::fetch_add_u64(&raw mut (*rt).rr_counter, 1) }
}

#[inline(always)]
fn roundrobin(set: &BackendSet, rt: *mut ServiceRuntime) -> Result<u32, Reason> {
    let n = u64::from(set.ring_len);
    if n == 0 || n > RING_SIZE as u64 {
        return Err(Reason::RstNoBackend);
    }
    let start = next_rr(rt);
    let mut i = 0;
    while i < RR_TRIES {
        let idx = opaque(((start + i) % n) as usize);
        if idx >= RING_SIZE {
            break;
        }
        let id = u32::from(set.ring[idx]);
        if !backend_full(id) {
            return Ok(id);
        }
        i += 1;
    }
    Err(Reason::DropBackendMaxconn)
}

#[inline(always)]
fn maglev(set: &BackendSet, hash: u32) -> Result<u32, Reason> {
    let n = set.ring_len;
    if n == 0 || n as usize > RING_SIZE {
        return Err(Reason::RstNoBackend);
    }
    let idx = opaque((hash % n) as usize);
    if idx >= RING_SIZE {
        return Err(Reason::RstNoBackend);
    }
    let id = u32::from(set.ring[idx]);
    if backend_full(id) {
        return Err(Reason::DropBackendMaxconn);
    }
    Ok(id)
}

/// Fewest active connections relative to weight; ties broken by a rotating start so that equal
/// servers take turns (HAProxy round-robins among equally loaded servers).
#[inline(always)]
fn leastconn(set: &BackendSet, rt: *mut ServiceRuntime) -> Result<u32, Reason> {
    let n = set.n_active as u64;
    if n == 0 || n > MAX_ACTIVE as u64 {
        return Err(Reason::RstNoBackend);
    }
    let start = next_rr(rt);
    let mut best: Option<(u32, u64, u64)> = None;
    let mut i = 0u64;
    while i < MAX_ACTIVE as u64 {
        if i >= n {
            break;
        }
        let slot = opaque(((start + i) % n) as usize);
        if slot >= MAX_ACTIVE {
            break;
        }
        let id = set.active[slot];
        let weight = u64::from(set.weights[slot].max(1));
        if let Some(conns) = usable_conns(id) {
            // Compare (conns+1)/weight without division.
            let better = match best {
                None => true,
                Some((_, bc, bw)) => (conns + 1) * bw < (bc + 1) * weight,
            };
            if better {
                best = Some((id, conns, weight));
            }
        }
        i += 1;
    }
    match best {
        Some((id, _, _)) => Ok(id),
        None => Err(Reason::DropBackendMaxconn),
    }
}

/// Active connections of a backend (opened − closed − released by the agent).
#[inline(always)]
pub fn active_conns(id: u32) -> u64 {
    let opened = BACKEND_CONNS.get(id).copied().unwrap_or(0);
    let released = BACKEND_RELEASED.get(id).copied().unwrap_or(0);
    open_conns(opened, released)
}

/// `Some(active connections)` when the backend can take one more.
#[inline(always)]
fn usable_conns(id: u32) -> Option<u64> {
    let maxconn = BACKENDS.get(id).map(|b| b.maxconn).unwrap_or(0);
    let conns = active_conns(id);
    if maxconn != 0 && conns >= u64::from(maxconn) {
        return None;
    }
    Some(conns)
}

/// Whether a backend is at its maxconn; its counters are read only when it has one.
#[inline(always)]
fn backend_full(id: u32) -> bool {
    let maxconn = BACKENDS.get(id).map(|b| b.maxconn).unwrap_or(0);
    maxconn != 0 && active_conns(id) >= u64::from(maxconn)
}

/// Adds `delta` to a backend's connection count.
#[inline(always)]
pub fn add_backend_conns(id: u32, delta: i64) {
    if let Some(p) = BACKEND_CONNS.get_ptr_mut(id) {
        // SAFETY: array map value shared between CPUs, only touched atomically.
        unsafe { atomic::add_i64(p, delta) };
    }
}
