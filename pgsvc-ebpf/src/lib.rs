//! Pure helpers of the XDP program: checksum arithmetic and flow hashing. No kernel access, so they
//! are unit-tested on the host (`cargo test -p pgsvc-ebpf --lib`) and reused by the packet tests.
#![cfg_attr(not(test), no_std)]

/// Internet checksum arithmetic (RFC 1071 / RFC 1624).
///
/// All values are 16-bit words exactly as they sit in the packet (read with native endianness): the
/// ones' complement sum is byte-order independent as long as every operand uses the same order, so no
/// swapping is needed anywhere.
pub mod csum {
    /// Folds a 32-bit accumulator into 16 bits with end-around carry.
    #[inline(always)]
    pub fn fold(mut sum: u32) -> u16 {
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        sum as u16
    }

    /// Adds the two halves of a 32-bit word to an accumulator.
    #[inline(always)]
    pub fn add32(sum: u32, v: u32) -> u32 {
        // Two 16-bit halves, each < 2^16: the accumulator never overflows for header-sized inputs.
        sum + (v & 0xffff) + (v >> 16)
    }

    /// RFC 1624 eqn. 3: the checksum after one 32-bit field changed from `old` to `new`.
    #[inline(always)]
    pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
        let mut sum = u32::from(!check);
        sum = add32(sum, !old);
        sum = add32(sum, new);
        !fold(sum)
    }

    /// RFC 1624 eqn. 3 for one 16-bit field.
    #[inline(always)]
    pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
        let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
        !fold(sum)
    }

    /// Adds to `diff` the change of one 32-bit field from `old` to `new` (RFC 1624 eqn. 3, before
    /// it is applied): the changes of several fields add up, and [`apply`] puts them into a
    /// checksum at once — one sum for the address changes serves both the IPv4 header checksum and
    /// the TCP checksum (whose pseudo-header holds the same addresses).
    #[inline(always)]
    pub fn diff32(diff: u32, old: u32, new: u32) -> u32 {
        add32(add32(diff, !old), new)
    }

    /// [`diff32`] for a 16-bit field.
    #[inline(always)]
    pub fn diff16(diff: u32, old: u16, new: u16) -> u32 {
        diff + u32::from(!old) + u32::from(new)
    }

    /// The checksum `check` after the changes summed in `diff` (at most a few dozen fields: the
    /// accumulator must not overflow).
    #[inline(always)]
    pub fn apply(check: u16, diff: u32) -> u16 {
        !fold(u32::from(!check) + u32::from(fold(diff)))
    }

    /// Full checksum over 16-bit words, starting from `seed` (e.g. a pseudo-header sum).
    #[inline(always)]
    pub fn of_words(seed: u32, words: &[u16]) -> u16 {
        let mut sum = seed;
        let mut i = 0;
        while i < words.len() {
            sum += u32::from(words[i]);
            i += 1;
        }
        !fold(sum)
    }
}

/// Flow hashing for Maglev and SNAT port choice.
pub mod hash {
    /// A 32-bit mix of the client-side 4-tuple (network-order values as read from the packet).
    /// Stable across kernels and CPUs, so every LB node with the same table picks the same backend.
    #[inline(always)]
    pub fn flow4(saddr: u32, daddr: u32, sport: u16, dport: u16) -> u32 {
        let mut h = mix64(
            (u64::from(saddr) << 32) | u64::from(daddr),
            (u64::from(sport) << 16) | u64::from(dport),
        );
        h ^= h >> 32;
        h as u32
    }

    /// A 64-bit finaliser (xor-shift-multiply), seeded by `b`.
    #[inline(always)]
    pub fn mix64(a: u64, b: u64) -> u64 {
        let mut h = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    }
}

#[cfg(test)]
mod tests {
    use super::csum::*;

    /// Reference: RFC 1071 straightforward sum of big-endian words.
    fn reference(bytes: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for c in bytes.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u64::from(w);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn ne_words(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks(2)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn full_checksum_matches_reference_in_either_byte_order() {
        // An IPv4 header from RFC 1071's worked style: checksum field zeroed.
        let hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0xc6, 0x12,
            0x00, 0x0a, 0xc6, 0x12, 0x00, 0x64,
        ];
        let want = reference(&hdr);
        let got = of_words(0, &ne_words(&hdr));
        // `got` is a native-order word to be stored as-is.
        assert_eq!(got.to_ne_bytes(), want.to_be_bytes());
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        let mut hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0xc6, 0x12,
            0x00, 0x0a, 0xc6, 0x12, 0x00, 0x64,
        ];
        let c = of_words(0, &ne_words(&hdr));
        hdr[10..12].copy_from_slice(&c.to_ne_bytes());
        // Rewrite the destination address and fix the checksum incrementally.
        let old = u32::from_ne_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
        let new_bytes = [0xc6, 0x12, 0x00, 0x0b];
        let new = u32::from_ne_bytes(new_bytes);
        let c2 = replace32(c, old, new);
        hdr[16..20].copy_from_slice(&new_bytes);
        hdr[10..12].copy_from_slice(&c2.to_ne_bytes());
        // A valid header sums to zero (checksum of the whole header including the field is 0).
        assert_eq!(reference(&hdr), 0);
        // 16-bit field update (a port), checked the same way over a fake 4-byte span.
        let mut span = [0x15u8, 0x39, 0x00, 0x00];
        let c = of_words(0, &ne_words(&span));
        span[2..4].copy_from_slice(&c.to_ne_bytes());
        let old = u16::from_ne_bytes([span[0], span[1]]);
        let new = u16::from_ne_bytes([0x19, 0x20]);
        let c2 = replace16(c, old, new);
        span[0..2].copy_from_slice(&[0x19, 0x20]);
        span[2..4].copy_from_slice(&c2.to_ne_bytes());
        assert_eq!(reference(&span), 0);
    }

    #[test]
    fn summed_differences_equal_field_by_field_updates() {
        // Every field of a translation changed at once, against one replace per field, over
        // values that exercise the end-around carry (0, 0xffff…, and ordinary words).
        let words = [
            0u32,
            0xffff_ffff,
            0x0000_ffff,
            0xffff_0000,
            0xc612_000a,
            0x0a00_0064,
        ];
        let ports = [
            0u16,
            0xffff,
            5433u16.to_be(),
            6432u16.to_be(),
            41000u16.to_be(),
        ];
        for &check in &[0u16, 0xffff, 0x1234, 0xb861] {
            for (i, &a) in words.iter().enumerate() {
                let b = words[(i + 1) % words.len()];
                let c = words[(i + 3) % words.len()];
                let d = words[(i + 4) % words.len()];
                let (p, q) = (ports[i % ports.len()], ports[(i + 2) % ports.len()]);
                let seq = replace16(replace32(replace32(check, a, b), c, d), p, q);
                let diff = diff16(diff32(diff32(0, a, b), c, d), p, q);
                let one = apply(check, diff);
                // Equal as ones'-complement numbers (0 and 0xffff are both zero) and, for a
                // checksum that is not zero, bit for bit.
                assert_eq!(
                    u32::from(one) % 0xffff,
                    u32::from(seq) % 0xffff,
                    "check {check:#x}, {a:#x}->{b:#x}, {c:#x}->{d:#x}, {p}->{q}"
                );
                if seq != 0 && seq != 0xffff {
                    assert_eq!(one, seq);
                }
            }
        }
    }

    #[test]
    fn flow_hash_spreads_and_is_deterministic() {
        use super::hash::flow4;
        let a = flow4(1, 2, 3, 4);
        assert_eq!(a, flow4(1, 2, 3, 4));
        assert_ne!(a, flow4(1, 2, 4, 4));
        // Low bits spread over consecutive ports (what an LB sees from one client).
        let mut buckets = [0u32; 7];
        for p in 0..7000u16 {
            buckets[(flow4(0xc612_000a, 0xc612_0064, p, 5433) % 7) as usize] += 1;
        }
        for b in buckets {
            assert!((800..1200).contains(&b), "bucket {b} far from 1000");
        }
    }
}

/// SNAT port choice, the rules the XDP program's `snat.rs` applies (pure, so tested here).
///
/// Ports toward one backend are handed out in order from a cursor (the port after the last one
/// given), so the ports tried first are those released longest ago. A SYN probes [`SEQ_PROBES`]
/// ports from the cursor, then [`PROBES`] − [`SEQ_PROBES`] at random offsets drawn from a seed of its
/// own (so a retransmitted SYN tries other ports than the one before it, and a run of long-lived
/// connections at the cursor does not hide the free ports elsewhere). A free port wins at once.
/// Failing that, among the first [`REUSE_PROBES`] ports from the cursor, one whose connection is
/// over and has been silent for [`REUSE_QUIET_NS`] is taken over.
pub mod snat {
    use core::num::NonZeroU32;

    use pgsvc_common::{SNAT_TRIES, TCP_F_FIN, TCP_F_RST};

    /// Ports probed per SYN for a free one.
    pub const PROBES: u32 = SNAT_TRIES;
    /// Of those, how many follow the cursor (the rest are random).
    pub const SEQ_PROBES: u32 = PROBES / 2;
    /// How many ports from the cursor are examined for a finished connection to take over when
    /// none is free (each costs a flow lookup and many more verifier states than a free-port probe).
    pub const REUSE_PROBES: u32 = 4;
    /// A finished connection's port is reused only after this long without a packet either way:
    /// far more than a LAN round trip, so the last ACK of the close has reached the backend and a
    /// lost one has been retransmitted (a retransmitted FIN restarts the wait), and less than a
    /// client's first SYN retransmission (1 s), which therefore finds the port free.
    pub const REUSE_QUIET_NS: u64 = 500_000_000;
    /// A reverse entry without its forward flow (an evicted flow, or one being created right now)
    /// is reused after this much silence: longer than the agent clock's lag behind the kernel's
    /// (entries are stamped with the agent's clock, up to a second late).
    pub const ORPHAN_QUIET_NS: u64 = 5_000_000_000;

    /// The `i`-th candidate, as an offset into a range of `range` ports (≥ 1), for a SYN that found
    /// the cursor at `cursor` and drew `seed`.
    #[inline(always)]
    pub fn candidate(cursor: u32, seed: u32, i: u32, range: NonZeroU32) -> u32 {
        // `u32 % NonZeroU32` cannot panic (the XDP program has no panic path to take).
        if i < SEQ_PROBES {
            (cursor % range + i) % range
        } else {
            (super::hash::mix64(u64::from(seed), u64::from(i)) as u32) % range
        }
    }

    /// What holds a probed port.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Holder {
        /// A connection that is not over: never taken.
        Live,
        /// Over, but not silent long enough yet: free within [`REUSE_QUIET_NS`].
        Cooling,
        /// Over and silent: may be taken over.
        Reusable,
    }

    /// The connection holding a port, from its forward flow (`None` when the flow is gone; else its
    /// `closing` mark and the `TCP_F_*` the client sent), the `TCP_F_*` the backend sent, and the
    /// time since the last packet either way.
    ///
    /// Over means reset (RST either way: no TIME_WAIT anywhere) or closed both ways (FIN each way).
    #[inline(always)]
    pub fn holder(flow: Option<(bool, u8)>, backend_flags: u8, quiet_ns: u64) -> Holder {
        let (over, wait) = match flow {
            Some((closing, client)) => {
                let reset = (client | backend_flags) & TCP_F_RST != 0;
                let fins = client & backend_flags & TCP_F_FIN != 0;
                (closing && (reset || fins), REUSE_QUIET_NS)
            }
            None if backend_flags & (TCP_F_FIN | TCP_F_RST) != 0 => (true, REUSE_QUIET_NS),
            None => (true, ORPHAN_QUIET_NS),
        };
        if !over {
            Holder::Live
        } else if quiet_ns >= wait {
            Holder::Reusable
        } else {
            Holder::Cooling
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use pgsvc_common::{TCP_F_ACK, TCP_F_SYN};

        #[test]
        fn ports_follow_the_cursor_then_spread_at_random() {
            let nz = |n| NonZeroU32::new(n).expect("non-zero");
            let range = nz(20_000);
            let probes = |seed| {
                (0..PROBES)
                    .map(|i| candidate(19_990, seed, i, range))
                    .collect::<Vec<_>>()
            };
            let a = probes(1);
            assert!(a.iter().all(|&c| c < range.get()));
            // In order from the cursor, wrapping at the end of the range.
            let seq: Vec<u32> = (0..SEQ_PROBES).map(|i| (19_990 + i) % range).collect();
            assert_eq!(a[..SEQ_PROBES as usize], seq[..]);
            // The rest: not a run of neighbours, mostly distinct.
            let rest = &a[SEQ_PROBES as usize..];
            let mut d = rest.to_vec();
            d.sort_unstable();
            d.dedup();
            assert!(d.len() + 2 >= rest.len(), "{} distinct", d.len());
            assert!(rest.windows(2).all(|w| w[0].abs_diff(w[1]) > 1), "{rest:?}");
            // Another seed (a retransmitted SYN) probes other ports.
            let b = probes(2);
            let common = rest
                .iter()
                .filter(|c| b[SEQ_PROBES as usize..].contains(c))
                .count();
            assert!(common <= 1, "{common} random ports in common");
            // A cursor beyond a small range wraps into it.
            assert_eq!(candidate(250, 7, 0, nz(100)), 50);
            assert_eq!(candidate(99, 7, 1, nz(100)), 0);
            assert_eq!(candidate(u32::MAX, 7, 3, nz(1)), 0);
        }

        #[test]
        fn only_finished_and_silent_connections_give_up_their_port() {
            let q = REUSE_QUIET_NS;
            let est = TCP_F_SYN | TCP_F_ACK;
            // Live: open, idle for a day; half closed (one FIN); closing mark without a full close.
            assert_eq!(holder(Some((false, est)), est, u64::MAX), Holder::Live);
            assert_eq!(
                holder(Some((true, est | TCP_F_FIN)), est, u64::MAX),
                Holder::Live
            );
            assert_eq!(
                holder(Some((true, est)), est | TCP_F_FIN, u64::MAX),
                Holder::Live
            );
            // Flags of a finished connection without its closing mark: still counted, not taken.
            assert_eq!(
                holder(Some((false, est | TCP_F_FIN)), est | TCP_F_FIN, u64::MAX),
                Holder::Live
            );
            // Closed both ways, or reset either way: reusable once silent.
            for (client, backend) in [
                (est | TCP_F_FIN, est | TCP_F_FIN),
                (est | TCP_F_RST, est),
                (est, est | TCP_F_RST),
            ] {
                assert_eq!(
                    holder(Some((true, client)), backend, q - 1),
                    Holder::Cooling
                );
                assert_eq!(holder(Some((true, client)), backend, q), Holder::Reusable);
            }
            // No forward flow: soon after the backend's FIN/RST, else after the longer wait.
            assert_eq!(holder(None, est | TCP_F_FIN, q), Holder::Reusable);
            assert_eq!(holder(None, est, q), Holder::Cooling);
            assert_eq!(holder(None, est, ORPHAN_QUIET_NS), Holder::Reusable);
        }
    }
}
