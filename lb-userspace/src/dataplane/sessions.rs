//! Sticky sessions: the data plane records which worker each client (or
//! client prefix) of a sticky VIP used last; the controller lists, flushes
//! and expires them.

use std::{collections::HashMap, path::Path, time::Duration};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use lb_common::{
    balancer::{StickyKey, StickyValue},
    map_names,
};

use crate::dataplane::maps;

type StickyMap = BpfHashMap<MapData, StickyKey, StickyValue>;

fn open(pin_dir: &Path) -> Result<StickyMap, MapError> {
    maps::open_pinned(pin_dir, map_names::STICKY)?.try_into()
}

/// Every session in the table.
pub fn read_all(pin_dir: &Path) -> Result<Vec<(StickyKey, StickyValue)>, MapError> {
    Ok(open(pin_dir)?.iter().filter_map(Result::ok).collect())
}

/// Deletes the sessions `doomed` picks; returns how many went.
pub fn remove_where(
    pin_dir: &Path,
    doomed: impl Fn(&StickyKey, &StickyValue) -> bool,
) -> Result<usize, MapError> {
    let mut map = open(pin_dir)?;
    let keys: Vec<StickyKey> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| doomed(k, v))
        .map(|(k, _)| k)
        .collect();
    let mut removed = 0;
    for key in &keys {
        // Gone already (LRU eviction, a concurrent flush): nothing to do.
        if map.remove(key).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Deletes sessions older than their VIP's TTL, and those of VIPs that are
/// no longer sticky (absent from `ttls`). The data plane ignores expired
/// sessions anyway; this frees their room. Returns (removed, remaining).
pub fn expire(
    pin_dir: &Path,
    ttls: &HashMap<u32, Duration>,
    now_ns: u64,
) -> Result<(usize, usize), MapError> {
    let removed = remove_where(pin_dir, |key, value| match ttls.get(&key.vip_id) {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "validation keeps sticky TTLs within 7 days: far below u64::MAX nanoseconds"
        )]
        Some(ttl) => now_ns.saturating_sub(value.last_ns) >= ttl.as_nanos() as u64,
        None => true,
    })?;
    Ok((removed, open(pin_dir)?.keys().count()))
}
