//! Choosing a worker for a new flow: the client's pin or sticky session,
//! then the VIP's scheduler (Maglev, or least-load between two Maglev
//! picks).

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use lb_common::{
    balancer::{
        mask_prefix, FlowKey, StickyKey, StickyValue, VipInfo, LOAD_UNKNOWN, NO_BACKEND,
        SCHED_LEAST_LOAD, VIP_HAS_PINS, VIP_STICKY,
    },
    capture::reason,
    counters::GlobalCounters,
    decide,
};

use crate::{
    flow::{self, Decision, Flow},
    maps::{LB_BACKENDS, LB_CONFIG, LB_LOAD, LB_MAGLEV, LB_PINS, LB_STICKY},
};

/// The worker of a new flow of `vip` (recorded unless the packet is a
/// RST); `None` when the VIP has no usable worker.
#[inline(always)]
pub fn new_flow(flow: &Flow, vip: &VipInfo, counters: &mut GlobalCounters) -> Option<Decision> {
    let (backend_id, reason) = choose(&flow.key, vip, counters)?;
    let backend = LB_BACKENDS.get(backend_id)?;
    flow::record(flow, vip, backend_id, backend, counters);
    Some(Decision {
        backend_id,
        backend,
        vip_id: vip.id,
        new_flow: true,
        reason,
    })
}

/// The worker for a new flow, and why: the client's pin, its sticky
/// session, or the scheduler's pick (which then becomes the session).
#[inline(always)]
fn choose(key: &FlowKey, vip: &VipInfo, counters: &mut GlobalCounters) -> Option<(u32, u8)> {
    let scheduled = |id| (id, reason::NEW_FLOW);
    if vip.flags & (VIP_STICKY | VIP_HAS_PINS) == 0 {
        return schedule(key, vip).map(scheduled);
    }
    let client = StickyKey {
        client: mask_prefix(&key.src, vip.sticky_prefix),
        vip_id: vip.id,
    };
    if vip.flags & VIP_HAS_PINS != 0 {
        // SAFETY: the value is copied out at once.
        if let Some(&pinned) = unsafe { LB_PINS.get(&client) } {
            if usable(pinned, vip).is_some() {
                counters.pin_hits += 1;
                return Some((pinned, reason::PINNED));
            }
        }
    }
    if vip.flags & VIP_STICKY == 0 {
        return schedule(key, vip).map(scheduled);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(session) = LB_STICKY.get_ptr_mut(&client) {
        // SAFETY: as for flows: the element lives for this run.
        let session = unsafe { &mut *session };
        let backend_id = session.backend_id;
        let fresh = decide::session_fresh(now, session.last_ns, vip.sticky_ttl_s);
        if fresh && usable(backend_id, vip) == Some(session.backend_generation) {
            session.last_ns = now;
            counters.sticky_hits += 1;
            return Some((backend_id, reason::STICKY));
        }
    }
    let backend_id = schedule(key, vip)?;
    let session = StickyValue {
        backend_id,
        backend_generation: LB_BACKENDS.get(backend_id).map_or(0, |b| b.generation),
        last_ns: now,
    };
    // A full table evicts its least recently used session: nothing to count.
    let _ = LB_STICKY.insert(&client, &session, BPF_ANY.into());
    Some(scheduled(backend_id))
}

/// The generation of worker `id` if it can take a new flow of `vip`.
#[inline(always)]
fn usable(id: u32, vip: &VipInfo) -> Option<u32> {
    let backend = LB_BACKENDS.get(id)?;
    backend
        .takes_new_flows(vip.id)
        .then_some(backend.generation)
}

/// The VIP's scheduler: Maglev, or the less loaded of two Maglev picks
/// from independent hashes.
#[inline(always)]
pub fn schedule(key: &FlowKey, vip: &VipInfo) -> Option<u32> {
    if vip.table_size == 0 {
        return None;
    }
    let seed = LB_CONFIG.get(0).map_or(0, |config| config.hash_seed);
    let first = slot(vip, decide::first_hash(key, seed))?;
    if vip.scheduler != SCHED_LEAST_LOAD {
        return Some(first);
    }
    let Some(second) = slot(vip, decide::second_hash(key, seed)) else {
        return Some(first);
    };
    let first_load = LB_LOAD.get(first).copied().unwrap_or(LOAD_UNKNOWN);
    let second_load = LB_LOAD.get(second).copied().unwrap_or(LOAD_UNKNOWN);
    if decide::second_wins(first_load, second_load) {
        return Some(second);
    }
    Some(first)
}

/// The worker in the flow hash's slot of the VIP's Maglev table.
#[inline(always)]
fn slot(vip: &VipInfo, hash: u32) -> Option<u32> {
    let index = decide::slot_index(hash, vip.table_size);
    let backend_id = *LB_MAGLEV.get_value(vip.id, &index)?;
    (backend_id != NO_BACKEND).then_some(backend_id)
}
