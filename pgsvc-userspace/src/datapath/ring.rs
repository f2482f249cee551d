//! Building a service's backend ring: the weighted round-robin sequence and the Maglev lookup table.
//! Pure functions; the datapath copies their output into `SVC_TABLE`.

use pgsvc_common::RING_SIZE;

/// One active backend: its slot id, a stable name (Maglev hashes it) and its weight (> 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingMember<'a> {
    pub id: u16,
    pub name: &'a str,
    pub weight: u32,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Weights reduced by their gcd and, if their sum exceeds `limit`, scaled down (each stays ≥ 1).
fn reduced_weights(members: &[RingMember<'_>], limit: usize) -> Vec<u32> {
    let g = members.iter().fold(0, |g, m| gcd(g, m.weight.max(1)));
    let mut w: Vec<u32> = members.iter().map(|m| m.weight.max(1) / g.max(1)).collect();
    let sum: u64 = w.iter().map(|&x| u64::from(x)).sum();
    if sum > limit as u64 {
        let scale = limit as f64 / sum as f64;
        for x in &mut w {
            *x = ((f64::from(*x) * scale).floor() as u32).max(1);
        }
    }
    w
}

/// Smooth weighted round robin: the sequence in which a round-robin counter visits the backends.
/// Each backend appears in proportion to its weight, interleaved (weights 2:1 give A B A, not A A B),
/// so that consecutive connections spread as HAProxy's weighted round robin spreads them.
pub fn rr_sequence(members: &[RingMember<'_>]) -> Vec<u16> {
    if members.is_empty() {
        return Vec::new();
    }
    let weights = reduced_weights(members, RING_SIZE);
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; members.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..members.len() {
            current[i] += i64::from(weights[i]);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(members[best].id);
    }
    seq
}

/// FNV-1a, 64 bit, over a server name: stable across hosts and releases (Maglev needs every LB node to
/// derive the same permutation).
fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so that names differing in one trailing digit diverge in the low bits too.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The Maglev lookup table (Eisenbud et al., NSDI 2016) of size [`RING_SIZE`] (prime), weighted by
/// letting each backend claim `weight` entries per round. Adding or removing one backend moves only
/// about 1/N of the entries.
///
/// The table depends on the member *set* only, not on the order it is given in: members take turns
/// in the order of their names (then slot id and weight, for duplicates), so every LB node builds
/// the same table whatever order its inventory or health events listed them in.
pub fn maglev_table(members: &[RingMember<'_>]) -> Vec<u16> {
    if members.is_empty() {
        return Vec::new();
    }
    let mut members = members.to_vec();
    members.sort_unstable_by(|a, b| (a.name, a.id, a.weight).cmp(&(b.name, b.id, b.weight)));
    let members = members.as_slice();
    let m = RING_SIZE as u64;
    let weights = reduced_weights(members, RING_SIZE);
    let perms: Vec<(u64, u64)> = members
        .iter()
        .map(|b| {
            let offset = fnv1a(0x5bd1_e995, b.name.as_bytes()) % m;
            let skip = fnv1a(0x1b87_3593, b.name.as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut table: Vec<Option<u16>> = vec![None; RING_SIZE];
    let mut filled = 0usize;
    'fill: loop {
        for (i, b) in members.iter().enumerate() {
            for _ in 0..weights[i] {
                let (offset, skip) = perms[i];
                // Walk this backend's permutation to its next free entry (always terminates: m is
                // prime, so the permutation visits every entry).
                let mut slot = ((offset + next[i] * skip) % m) as usize;
                while table[slot].is_some() {
                    next[i] += 1;
                    slot = ((offset + next[i] * skip) % m) as usize;
                }
                table[slot] = Some(b.id);
                next[i] += 1;
                filled += 1;
                if filled == RING_SIZE {
                    break 'fill;
                }
            }
        }
    }
    table.into_iter().map(|e| e.unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(u16, &'static str, u32)]) -> Vec<RingMember<'static>> {
        spec.iter()
            .map(|&(id, name, weight)| RingMember { id, name, weight })
            .collect()
    }

    #[test]
    fn rr_equal_weights_is_plain_rotation() {
        let m = members(&[(1, "a", 100), (2, "b", 100), (3, "c", 100)]);
        assert_eq!(rr_sequence(&m), vec![1, 2, 3]);
    }

    #[test]
    fn rr_weights_are_proportional_and_interleaved() {
        let m = members(&[(1, "a", 200), (2, "b", 100)]);
        let seq = rr_sequence(&m);
        assert_eq!(seq.len(), 3);
        assert_eq!(seq.iter().filter(|&&x| x == 1).count(), 2);
        // Interleaved: never all five of the heavy one in a row, also across the wrap (a naive
        // sequence a a a a a b c would be).
        let m = members(&[(1, "a", 5), (2, "b", 1), (3, "c", 1)]);
        let seq = rr_sequence(&m);
        assert_eq!(seq.len(), 7);
        assert_eq!(seq.iter().filter(|&&x| x == 1).count(), 5);
        let doubled: Vec<u16> = seq.iter().chain(seq.iter()).copied().collect();
        assert!(
            doubled.windows(5).all(|w| !w.iter().all(|&x| x == 1)),
            "{seq:?}"
        );
    }

    #[test]
    fn rr_huge_coprime_weights_fit_the_ring() {
        let m: Vec<RingMember<'static>> = (0..20u16)
            .map(|i| RingMember {
                id: i,
                name: "x",
                weight: 200 + u32::from(i) * 3 + 1,
            })
            .collect();
        let seq = rr_sequence(&m);
        assert!(seq.len() <= RING_SIZE && !seq.is_empty());
        for i in 0..20u16 {
            assert!(seq.contains(&i), "backend {i} lost by scaling");
        }
    }

    #[test]
    fn maglev_fills_evenly_by_weight() {
        let m = members(&[
            (1, "pg-test-1", 100),
            (2, "pg-test-2", 100),
            (3, "pg-test-3", 200),
        ]);
        let t = maglev_table(&m);
        assert_eq!(t.len(), RING_SIZE);
        let count = |id| t.iter().filter(|&&x| x == id).count();
        let (a, b, c) = (count(1), count(2), count(3));
        assert_eq!(a + b + c, RING_SIZE);
        assert!(a.abs_diff(b) <= 2, "{a} {b}");
        assert!(c.abs_diff(2 * a) <= 4, "{a} {c}");
    }

    #[test]
    fn maglev_moves_little_when_a_backend_is_added() {
        let before = maglev_table(&members(&[
            (1, "pg-test-1", 1),
            (2, "pg-test-2", 1),
            (3, "pg-test-3", 1),
        ]));
        let after = maglev_table(&members(&[
            (1, "pg-test-1", 1),
            (2, "pg-test-2", 1),
            (3, "pg-test-3", 1),
            (4, "pg-test-4", 1),
        ]));
        let moved_elsewhere = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && **a != 4)
            .count();
        let to_new = after.iter().filter(|&&x| x == 4).count();
        // About a quarter goes to the new backend; almost nothing shuffles between the old ones.
        assert!((200..320).contains(&to_new), "{to_new}");
        assert!(
            moved_elsewhere < RING_SIZE / 20,
            "{moved_elsewhere} entries moved between old backends"
        );
    }

    #[test]
    fn maglev_is_deterministic() {
        let a = maglev_table(&members(&[(1, "x", 1), (2, "y", 1)]));
        let b = maglev_table(&members(&[(1, "x", 1), (2, "y", 1)]));
        assert_eq!(a, b);
    }

    /// Fisher–Yates with a fixed xorshift64 stream: the same 100 orders on every run and host.
    fn shuffled<T: Clone>(items: &[T], state: &mut u64) -> Vec<T> {
        let mut v = items.to_vec();
        for i in (1..v.len()).rev() {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            let j = (*state % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }

    /// Every LB node must build the same table from the same member set, whatever order its
    /// inventory, health events or slot scan listed the members in.
    #[test]
    fn maglev_table_does_not_depend_on_member_order() {
        let set = members(&[
            (3, "pg-test-1", 100),
            (7, "pg-test-2", 100),
            (1, "pg-test-3", 50),
            (9, "pg-meta-1", 100),
            (4, "pg-test-10", 200),
            (2, "pg-test-4", 1),
            (8, "pg-test-5", 100),
        ]);
        let want = maglev_table(&set);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut orders = std::collections::HashSet::new();
        for round in 0..100 {
            let order = shuffled(&set, &mut state);
            orders.insert(order.iter().map(|m| m.id).collect::<Vec<_>>());
            assert!(
                maglev_table(&order) == want,
                "round {round}: a different table for order {:?}",
                order.iter().map(|m| m.name).collect::<Vec<_>>()
            );
        }
        // The shuffle really produced many different orders.
        assert!(orders.len() > 90, "only {} distinct orders", orders.len());
    }
}
