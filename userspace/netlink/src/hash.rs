//! FNV-1a 64: a hash that is stable across releases and machines (the standard library's hasher
//! is not). petrel derives persistent names from it (host interface names of pods, Maglev
//! permutations), so its output must never change.

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_seeded(bytes, 0)
}

/// FNV-1a 64 with the offset basis perturbed by `seed` (seed 0 is plain FNV-1a), for the
/// independent hash functions Maglev needs.
pub fn fnv1a64_seeded(bytes: &[u8], seed: u64) -> u64 {
    let mut h = OFFSET_BASIS ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_values() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // petrel-cni's host interface name of ("abc", "eth0") before this crate existed:
        // "pet" + the top 48 bits of the hash of "abc/eth0".
        assert_eq!(
            format!("pet{:012x}", fnv1a64(b"abc/eth0") >> 16),
            GOLDEN_HOST_IF
        );
    }

    /// Computed with the FNV-1a loop petrel-cni's link.rs carried (see the commit adding this).
    const GOLDEN_HOST_IF: &str = "pet561a69de51a6";
}
