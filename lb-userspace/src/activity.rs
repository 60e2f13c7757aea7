//! Which flows are still alive, per worker, from the flow table.
//!
//! The data plane never deletes flows (the LRU does, when it needs room);
//! it marks a flow closing on FIN or RST and refreshes its last-seen time
//! about once a second. A flow counts as active until it has been closing
//! for [`CLOSE_LINGER`], or idle for [`TCP_IDLE`] / [`UDP_IDLE`].

use std::{collections::HashMap, path::Path, time::Duration};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use lb_common::{
    balancer::{FlowKey, FlowValue, FLOW_CLOSING},
    map_names,
    packet::IPPROTO_TCP,
};

use crate::maps;

/// How long a closing flow still counts: the last ACKs of a close.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// A TCP flow with no packets for this long counts as gone.
pub const TCP_IDLE: Duration = Duration::from_secs(300);
/// A UDP flow with no packets for this long counts as gone.
pub const UDP_IDLE: Duration = Duration::from_secs(60);

/// Whether a flow is still alive at `now_ns` (CLOCK_MONOTONIC).
pub fn is_active(key: &FlowKey, value: &FlowValue, now_ns: u64) -> bool {
    let idle = Duration::from_nanos(now_ns.saturating_sub(value.last_seen_ns));
    if value.flags & FLOW_CLOSING != 0 {
        return idle < CLOSE_LINGER;
    }
    idle < if key.proto == IPPROTO_TCP {
        TCP_IDLE
    } else {
        UDP_IDLE
    }
}

/// What a scan of the flow table found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Active flows per worker id.
    pub active: HashMap<u32, u64>,
    /// Entries in the table, active or not.
    pub entries: u64,
}

/// Scans the flow table pinned under `pin_dir`. Costs two system calls
/// per flow: the controller paces it.
pub fn count(pin_dir: &Path) -> Result<Scan, MapError> {
    let flows: BpfHashMap<MapData, FlowKey, FlowValue> =
        maps::open_pinned(pin_dir, map_names::FLOWS)?.try_into()?;
    let now = monotonic_ns();
    let mut scan = Scan::default();
    for (key, value) in flows.iter().filter_map(Result::ok) {
        scan.entries += 1;
        if is_active(&key, &value, now) {
            *scan.active.entry(value.backend_id).or_default() += 1;
        }
    }
    Ok(scan)
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the data plane's
/// timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn flow(proto: u8, last_seen_s: u64, flags: u32) -> (FlowKey, FlowValue) {
        let key = FlowKey {
            proto,
            ..Default::default()
        };
        let value = FlowValue {
            last_seen_ns: last_seen_s * SEC,
            flags,
            ..Default::default()
        };
        (key, value)
    }

    #[test]
    fn closing_flows_linger_briefly_and_idle_ones_expire() {
        let now = 1000 * SEC;
        let (k, v) = flow(IPPROTO_TCP, 999, FLOW_CLOSING);
        assert!(is_active(&k, &v, now), "closed a second ago: last ACKs");
        let (k, v) = flow(IPPROTO_TCP, 997, FLOW_CLOSING);
        assert!(!is_active(&k, &v, now));
        let (k, v) = flow(IPPROTO_TCP, 800, 0);
        assert!(is_active(&k, &v, now), "an idle TCP flow lasts 5 minutes");
        let (k, v) = flow(17, 900, 0);
        assert!(!is_active(&k, &v, now), "an idle UDP flow lasts a minute");
    }
}
