//! The data plane's decisions that do not touch a map: when a flow has
//! been idle too long, when a sticky session is fresh, which Maglev slot a
//! hash picks, which of two least-load candidates wins. The XDP program
//! and `lb explain` both call these, so the explanation can't drift from
//! what the data plane does.

use crate::balancer::{FlowKey, LOAD_UNKNOWN, SECOND_CHOICE_SALT};

const NS_PER_S: u64 = 1_000_000_000;

/// Whether a flow last seen at `last_seen_ns` has been idle past its VIP's
/// idle timeout at `now_ns` (the coarse monotonic clock, which may lag
/// another CPU's reading: a flow seen "later" than now is not idle).
#[inline(always)]
pub fn flow_expired(now_ns: u64, last_seen_ns: u64, idle_timeout_s: u32) -> bool {
    now_ns.saturating_sub(last_seen_ns) > u64::from(idle_timeout_s) * NS_PER_S
}

/// Whether a sticky session last used at `last_ns` is still fresh at
/// `now_ns` (CLOCK_MONOTONIC) for a VIP with a TTL of `ttl_s` seconds.
#[inline(always)]
pub fn session_fresh(now_ns: u64, last_ns: u64, ttl_s: u32) -> bool {
    now_ns.wrapping_sub(last_ns) < u64::from(ttl_s) * NS_PER_S
}

/// The flow hash of the scheduler's first choice (Maglev's only one).
#[inline(always)]
pub fn first_hash(key: &FlowKey, seed: u32) -> u32 {
    key.hash(seed)
}

/// The flow hash of the least-load scheduler's second choice: independent
/// of the first.
#[inline(always)]
pub fn second_hash(key: &FlowKey, seed: u32) -> u32 {
    key.hash(seed ^ SECOND_CHOICE_SALT)
}

/// The Maglev slot a flow hash picks in a table of `table_size` slots
/// (never 0: the caller checks).
#[inline(always)]
pub fn slot_index(hash: u32, table_size: u32) -> u32 {
    hash % table_size
}

/// Whether the least-load scheduler takes its second candidate over its
/// first: only when both loads are known and the second is strictly
/// lower (without both figures there is nothing to compare, and a tie
/// goes to the first, so equal loads leave it to Maglev).
#[inline(always)]
pub fn second_wins(first_load: u32, second_load: u32) -> bool {
    first_load != LOAD_UNKNOWN && second_load != LOAD_UNKNOWN && second_load < first_load
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NS_PER_S;

    #[test]
    fn a_flow_expires_only_past_its_idle_timeout() {
        assert!(!flow_expired(310 * SEC, 10 * SEC, 300));
        assert!(flow_expired(310 * SEC + 1, 10 * SEC, 300));
        assert!(
            !flow_expired(5 * SEC, 6 * SEC, 300),
            "a reading from the future"
        );
    }

    #[test]
    fn a_session_is_fresh_strictly_within_its_ttl() {
        assert!(session_fresh(10 * SEC, 9 * SEC, 2));
        assert!(!session_fresh(11 * SEC, 9 * SEC, 2));
        assert!(!session_fresh(10 * SEC, 9 * SEC, 0));
    }

    #[test]
    fn least_load_takes_the_second_only_when_it_is_known_and_lower() {
        assert!(second_wins(500, 100));
        assert!(!second_wins(100, 500));
        assert!(!second_wins(100, 100), "ties go to the first");
        assert!(!second_wins(LOAD_UNKNOWN, 100));
        assert!(!second_wins(500, LOAD_UNKNOWN));
    }

    #[test]
    fn the_two_hashes_differ_and_index_within_the_table() {
        let key = FlowKey {
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: 4,
            ..FlowKey::default()
        };
        assert_ne!(first_hash(&key, 7), second_hash(&key, 7));
        assert!(slot_index(first_hash(&key, 7), 13) < 13);
    }
}
