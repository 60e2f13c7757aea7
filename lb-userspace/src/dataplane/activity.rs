//! Which flows are still alive, per worker, from the flow table.
//!
//! The data plane never deletes flows (the LRU does, when it needs room);
//! it marks a flow closing on FIN or RST, refreshes its last-seen time
//! about once a second, and schedules afresh a flow idle past its VIP's
//! idle timeout or recorded for a worker that is gone. A flow counts as
//! active until it has been closing for [`CLOSE_LINGER`], or until the
//! data plane would no longer follow it.

use std::{collections::HashMap, path::Path, time::Duration};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError};
use lb_common::{
    balancer::{Backend, FlowKey, FlowValue, VipTag, BACKEND_VALID, FLOW_CLOSING},
    map_names,
};

use crate::dataplane::maps;

/// How long a closing flow still counts: the last ACKs of a close.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Where a flow stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::Display, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum FlowState {
    /// Carrying packets.
    Active,
    /// FIN or RST seen, within the linger.
    Closing,
    /// FIN or RST seen, past the linger.
    Closed,
    /// Idle past its VIP's idle timeout: its next packet is scheduled
    /// afresh.
    Idle,
    /// Its VIP or worker is gone: its next packet is scheduled afresh.
    Stale,
}

impl FlowState {
    /// Whether the flow still counts for its worker.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Active | Self::Closing)
    }
}

/// What the data plane checks before it follows a flow: the VIP ids'
/// tags and idle timeouts, and the workers' slot generations.
#[derive(Debug, Default)]
pub struct Rules {
    vips: Vec<VipTag>,
    workers: Vec<Backend>,
}

impl Rules {
    /// Reads them from the maps pinned under `pin_dir`.
    pub fn read(pin_dir: &Path) -> Result<Self, MapError> {
        let tags: Array<MapData, VipTag> =
            maps::open_pinned(pin_dir, map_names::VIP_TAGS)?.try_into()?;
        let backends: Array<MapData, Backend> =
            maps::open_pinned(pin_dir, map_names::BACKENDS)?.try_into()?;
        Ok(Self {
            vips: tags.iter().collect::<Result<_, _>>()?,
            workers: backends.iter().collect::<Result<_, _>>()?,
        })
    }

    /// Where the flow `value` stands at `now_ns` (CLOCK_MONOTONIC).
    pub fn state(&self, value: &FlowValue, now_ns: u64) -> FlowState {
        let vip = self.vips.get(value.vip_id as usize);
        let worker = self.workers.get(value.backend_id as usize);
        let current = vip.is_some_and(|v| v.tag != 0 && v.tag == value.vip_tag)
            && worker.is_some_and(|w| {
                w.flags & BACKEND_VALID != 0 && w.generation == value.backend_generation
            });
        if !current {
            return FlowState::Stale;
        }
        let idle = Duration::from_nanos(now_ns.saturating_sub(value.last_seen_ns));
        let timeout = Duration::from_secs(vip.map_or(0, |v| u64::from(v.idle_timeout_s)));
        match (value.flags & FLOW_CLOSING != 0, idle) {
            (true, idle) if idle < CLOSE_LINGER => FlowState::Closing,
            (true, _) => FlowState::Closed,
            (false, idle) if idle <= timeout => FlowState::Active,
            (false, _) => FlowState::Idle,
        }
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
    let rules = Rules::read(pin_dir)?;
    let now = monotonic_ns();
    let mut scan = Scan::default();
    for (_, value) in flows.iter().filter_map(Result::ok) {
        scan.entries += 1;
        if rules.state(&value, now).is_active() {
            *scan.active.entry(value.backend_id).or_default() += 1;
        }
    }
    Ok(scan)
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the data plane's
/// timestamps.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn rules() -> Rules {
        let vip = |tag, idle_timeout_s| VipTag {
            tag,
            idle_timeout_s,
        };
        Rules {
            vips: vec![vip(11, 300), vip(22, 60), VipTag::default()],
            workers: vec![Backend {
                flags: BACKEND_VALID,
                generation: 3,
                ..Default::default()
            }],
        }
    }

    fn flow(vip_id: u32, vip_tag: u32, last_seen_s: u64, flags: u32) -> FlowValue {
        FlowValue {
            vip_id,
            vip_tag,
            backend_generation: 3,
            last_seen_ns: last_seen_s * SEC,
            flags,
            ..Default::default()
        }
    }

    #[test]
    fn closing_flows_linger_briefly_and_idle_ones_expire_by_their_vip() {
        let (rules, now) = (rules(), 1000 * SEC);
        let state = |v: FlowValue| rules.state(&v, now);
        assert_eq!(state(flow(0, 11, 999, FLOW_CLOSING)), FlowState::Closing);
        assert_eq!(state(flow(0, 11, 997, FLOW_CLOSING)), FlowState::Closed);
        assert_eq!(state(flow(0, 11, 800, 0)), FlowState::Active);
        assert_eq!(state(flow(0, 11, 600, 0)), FlowState::Idle);
        assert_eq!(state(flow(1, 22, 950, 0)), FlowState::Active);
        assert_eq!(state(flow(1, 22, 900, 0)), FlowState::Idle);
    }

    #[test]
    fn flows_of_a_gone_vip_or_worker_are_stale() {
        let (rules, now) = (rules(), 1000 * SEC);
        assert_eq!(rules.state(&flow(0, 99, 999, 0), now), FlowState::Stale);
        assert_eq!(rules.state(&flow(2, 0, 999, 0), now), FlowState::Stale);
        let mut other_worker = flow(0, 11, 999, 0);
        other_worker.backend_generation = 2;
        assert_eq!(rules.state(&other_worker, now), FlowState::Stale);
        let mut no_slot = flow(0, 11, 999, 0);
        no_slot.backend_id = 7;
        assert_eq!(rules.state(&no_slot, now), FlowState::Stale);
    }
}
