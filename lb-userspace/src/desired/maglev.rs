//! Maglev consistent hashing with weights (Eisenbud et al., NSDI 2016).
//!
//! Every worker walks its own permutation of the table's slots, derived from
//! its name and the seed; workers take turns claiming the next free slot on
//! their permutation, a worker of weight w taking w turns for every
//! `max_weight` the heaviest takes. The result depends only on the seed, the
//! table size and the set of (name, weight) pairs, not on their order, so
//! every instance with the same configuration builds the same table.
#![warn(clippy::cast_possible_truncation)] // the values written to maps keep their width

/// Default table size: a prime above 100 × 100 workers.
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

/// A worker as Maglev sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Stable name (the worker's address); decides its permutation.
    pub name: String,
    /// Relative share of the table; zero takes no slots.
    pub weight: u32,
    /// What the table stores for this worker (its backend id).
    pub id: u32,
}

/// Builds a table of `size` slots (a prime) holding member ids, or
/// `None` in every slot when no member has a weight.
pub fn build(members: &[Member], size: u32, seed: u32) -> Vec<Option<u32>> {
    let mut table = vec![None; size as usize];
    let mut members: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let Some(max_weight) = members.iter().map(|m| u64::from(m.weight)).max() else {
        return table;
    };
    let size64 = u64::from(size);
    let permutations: Vec<(u64, u64)> = members
        .iter()
        .map(|m| {
            let offset = hash(&m.name, seed, 0x6f66_6673) % size64;
            let skip = hash(&m.name, seed, 0x736b_6970) % (size64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut credit = vec![0u64; members.len()];
    let mut filled = 0u32;
    while filled < size {
        for (i, member) in members.iter().enumerate() {
            credit[i] += u64::from(member.weight);
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let (offset, skip) = permutations[i];
            loop {
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "a remainder of the table's u32 size fits usize"
                )]
                let slot = ((offset + next[i] * skip) % size64) as usize;
                next[i] += 1;
                if table[slot].is_none() {
                    table[slot] = Some(member.id);
                    filled += 1;
                    break;
                }
            }
            if filled == size {
                break;
            }
        }
    }
    table
}

/// The smallest prime ≥ max(default, 100 × workers), so that shares stay
/// within about 1% of the weights.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the smallest prime from 100 × workers is far below u32::MAX for any worker count the maps can hold"
)]
pub fn table_size_for(workers: usize) -> u32 {
    let wanted = (workers as u64 * 100).max(u64::from(DEFAULT_TABLE_SIZE));
    (wanted..)
        .find(|n| is_prime(*n))
        .expect("primes are unbounded") as u32
}

/// Whether `n` is prime (trial division; table sizes are small).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    (2..)
        .take_while(|d| d * d <= n)
        .all(|d| !n.is_multiple_of(d))
}

/// FNV-1a over the seed, a salt and the name, then a 64-bit finaliser:
/// stable across platforms and Rust versions, unlike std's hasher.
fn hash(name: &str, seed: u32, salt: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed
        .to_le_bytes()
        .iter()
        .chain(&salt.to_le_bytes())
        .chain(name.as_bytes())
    {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the tests' worker counts and ids are small"
)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                name: format!("192.0.2.{}", i + 1),
                weight,
                id: i as u32,
            })
            .collect()
    }

    fn counts(table: &[Option<u32>]) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for id in table.iter().flatten() {
            *counts.entry(*id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn default_size_is_prime_and_grows_with_workers() {
        assert!(is_prime(u64::from(DEFAULT_TABLE_SIZE)));
        assert_eq!(table_size_for(3), DEFAULT_TABLE_SIZE);
        let big = table_size_for(1000);
        assert!(big >= 100_000 && is_prime(u64::from(big)));
    }

    #[test]
    fn no_members_leaves_every_slot_empty() {
        assert!(build(&[], 7, 0).iter().all(Option::is_none));
        assert!(build(&members(&[0, 0]), 7, 0).iter().all(Option::is_none));
    }

    #[test]
    fn every_slot_is_filled() {
        let table = build(&members(&[1, 1, 1]), DEFAULT_TABLE_SIZE, 0);
        assert!(table.iter().all(Option::is_some));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn unweighted_counts_differ_by_at_most_one(n in 1usize..60, seed: u32) {
            let table = build(&members(&vec![1; n]), DEFAULT_TABLE_SIZE, seed);
            let counts = counts(&table);
            let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
            prop_assert!(max - min <= 1, "min {min} max {max}");
            prop_assert_eq!(counts.len(), n);
        }

        #[test]
        fn weighted_shares_are_within_one_percent(weights in proptest::collection::vec(1u32..1000, 1..20), seed: u32) {
            let size = table_size_for(weights.len());
            let table = build(&members(&weights), size, seed);
            let counts = counts(&table);
            let total: u32 = weights.iter().sum();
            for (id, &weight) in weights.iter().enumerate() {
                let share = *counts.get(&(id as u32)).unwrap_or(&0) as f64 / f64::from(size);
                let wanted = f64::from(weight) / f64::from(total);
                prop_assert!((share - wanted).abs() <= 0.01, "worker {id}: {share} vs {wanted}");
            }
        }

        #[test]
        fn one_change_moves_few_other_entries(n in 2usize..40, seed: u32, remove in 0usize..40) {
            let all = members(&vec![1; n]);
            let size = table_size_for(n);
            let before = build(&all, size, seed);
            let gone = (remove % n) as u32;
            let fewer: Vec<Member> = all.iter().filter(|m| m.id != gone).cloned().collect();
            let after = build(&fewer, size, seed);
            // Removing one: entries of the others that moved.
            let others = before.iter().filter(|s| **s != Some(gone)).count();
            let moved = before.iter().zip(&after).filter(|(b, a)| **b != Some(gone) && b != a).count();
            // Maglev moves 1-2% of the others' entries on average; small
            // tables reach 3% (one in a few thousand inputs), a hash that
            // is not consistent moves most of them.
            prop_assert!(moved as f64 <= 0.05 * others as f64, "removal moved {moved} of {others}");
            // Adding it back is the same change in reverse.
            let moved_back = after.iter().zip(&before).filter(|(a, b)| **b != Some(gone) && a != b).count();
            prop_assert!(moved_back as f64 <= 0.05 * others as f64, "addition moved {moved_back} of {others}");
        }

        #[test]
        fn same_input_in_any_order_gives_the_same_table(n in 1usize..30, seed: u32) {
            let all = members(&(1..=n as u32).collect::<Vec<_>>());
            let mut reversed = all.clone();
            reversed.reverse();
            prop_assert_eq!(build(&all, 4093, seed), build(&reversed, 4093, seed));
        }
    }
}
