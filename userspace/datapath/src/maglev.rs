//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Katran and Cilium use it: every
//! node computes the same table from the same backends, so external traffic for one flow picks
//! the same backend whichever node it lands on, and a backend change moves few flows.

use petrel_common::fnv1a64_seeded;

/// Default table size: a prime, so every skip value generates a full permutation.
pub const DEFAULT_SIZE: u32 = 16381;

/// Whether `n` is prime (table sizes are small: trial division is enough).
pub fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The lookup table of size `m` (prime) for `backends` (id, stable name such as "10.0.0.1:80"):
/// position -> backend id. Empty when there are no backends.
pub fn table(backends: &[(u32, String)], m: u32) -> Vec<u32> {
    assert!(is_prime(m), "Maglev table size {m} must be prime");
    if backends.is_empty() {
        return Vec::new();
    }
    // Order by name so the table does not depend on the order backends were listed in.
    let mut sorted: Vec<&(u32, String)> = backends.iter().collect();
    sorted.sort_by(|a, b| a.1.cmp(&b.1));
    let m64 = u64::from(m);
    let perms: Vec<(u64, u64)> = sorted
        .iter()
        .map(|(_, name)| {
            (
                fnv1a64_seeded(name.as_bytes(), 0) % m64,
                fnv1a64_seeded(name.as_bytes(), 1) % (m64 - 1) + 1,
            )
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut entry = vec![u32::MAX; m as usize];
    let mut filled = 0usize;
    'fill: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + skip * next[i]) % m64;
            while entry[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + skip * next[i]) % m64;
            }
            entry[c as usize] = sorted[i].0;
            next[i] += 1;
            filled += 1;
            if filled == m as usize {
                break 'fill;
            }
        }
    }
    entry
}

pub use petrel_common::flow_hash;

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u32) -> Vec<(u32, String)> {
        (1..=n)
            .map(|i| (i, format!("10.0.{}.{}:8080", i / 256, i % 256)))
            .collect()
    }

    #[test]
    fn every_position_is_filled_and_spread_is_even() {
        let t = table(&backends(10), 1021);
        assert_eq!(t.len(), 1021);
        for id in 1..=10u32 {
            let n = t.iter().filter(|x| **x == id).count();
            assert!(
                (100..=105).contains(&n),
                "backend {id} has {n} of 1021 positions"
            );
        }
    }

    #[test]
    fn independent_of_input_order() {
        let mut b = backends(7);
        let t1 = table(&b, 251);
        b.reverse();
        assert_eq!(t1, table(&b, 251));
    }

    #[test]
    fn removing_one_backend_moves_few_positions() {
        let all = backends(10);
        let t1 = table(&all, DEFAULT_SIZE);
        let t2 = table(&all[..9], DEFAULT_SIZE);
        let moved = t1
            .iter()
            .zip(&t2)
            .filter(|(a, b)| a != b && **a != 10)
            .count();
        // Positions that belonged to the surviving backends mostly stay put.
        assert!(
            moved < DEFAULT_SIZE as usize / 10,
            "{moved} positions of surviving backends moved"
        );
    }

    #[test]
    fn sizes_must_be_prime() {
        assert!(is_prime(16381) && is_prime(1021) && !is_prime(16384));
        assert!(table(&[], 251).is_empty());
    }
}
