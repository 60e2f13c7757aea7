//! Choosing a worker: the flow table first; for new flows, the client's pin
//! or sticky session, then the VIP's scheduler.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};
use lb_common::{
    balancer::{
        mask_prefix, Backend, FlowKey, FlowValue, StickyKey, StickyValue, VipInfo, FLOW_CLOSING,
        FLOW_TOUCH_NS, LOAD_UNKNOWN, NO_BACKEND, SCHED_LEAST_LOAD, SECOND_CHOICE_SALT,
        VIP_HAS_PINS, VIP_STICKY,
    },
    counters::GlobalCounters,
    packet::{IpPacket, IPPROTO_TCP},
};

use crate::maps::{
    LB_BACKENDS, LB_CONFIG, LB_FLOWS, LB_LOAD, LB_MAGLEV, LB_PINS, LB_STICKY, LB_VIP_TAGS,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Where a packet goes.
pub struct Decision {
    /// The worker's id.
    pub backend_id: u32,
    /// The worker.
    pub backend: Backend,
    /// The VIP's id.
    pub vip_id: u32,
    /// Whether this packet opened a flow.
    pub new_flow: bool,
}

/// What the scheduler needs to know about a packet.
pub struct Flow {
    /// Its 5-tuple.
    pub key: FlowKey,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// Whether it is TCP.
    pub is_tcp: bool,
}

impl Flow {
    /// The flow of an IP packet.
    #[inline(always)]
    pub fn of(ip: &IpPacket, family: u8) -> Self {
        Self {
            key: FlowKey {
                src: ip.src,
                dst: ip.dst,
                sport: ip.sport,
                dport: ip.dport,
                proto: ip.proto,
                family,
                pad: [0; 2],
            },
            tcp_flags: ip.tcp_flags,
            is_tcp: ip.proto == IPPROTO_TCP,
        }
    }

    /// A SYN opens a new connection by definition: no lookup needed.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.is_tcp && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// The worker of a new flow of `vip` (recorded unless the packet is a
/// RST); `None` when the VIP has no usable worker.
#[inline(always)]
pub fn new_flow(flow: &Flow, vip: &VipInfo, counters: &mut GlobalCounters) -> Option<Decision> {
    let key = &flow.key;
    let backend_id = choose(key, vip, counters)?;
    let backend = *LB_BACKENDS.get(backend_id)?;
    // A reset ends the flow it would record: don't churn the table.
    if !(flow.is_tcp && flow.tcp_flags & TCP_RST != 0) {
        // SAFETY: helper without arguments. The coarse clock, as in
        // `touch`, so that idle time never exceeds age.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let value = FlowValue {
            backend_id,
            vip_id: vip.id,
            created_ns: now,
            last_seen_ns: now,
            flags: 0,
            vip_tag: vip.tag,
            backend_generation: backend.generation,
            pad: 0,
        };
        if LB_FLOWS.insert(key, &value, BPF_ANY.into()).is_err() {
            counters.flow_insert_failed += 1;
        }
    }
    Some(Decision {
        backend_id,
        backend,
        vip_id: vip.id,
        new_flow: true,
    })
}

/// The flow's recorded worker, if the flow is still its VIP's, has not
/// been idle past the VIP's idle timeout, and the worker may keep it; no
/// VIP lookup needed. Otherwise the caller schedules the packet afresh,
/// which re-records the flow.
#[inline(always)]
pub fn established(flow: &Flow, counters: &mut GlobalCounters) -> Option<Decision> {
    let value = LB_FLOWS.get_ptr_mut(&flow.key)?;
    // SAFETY: the kernel keeps the element alive for this run;
    // concurrent writers only ever store whole aligned fields.
    let value = unsafe { &mut *value };
    let vip_id = value.vip_id;
    let vip = LB_VIP_TAGS.get(vip_id)?;
    if vip.tag != value.vip_tag {
        return None;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(value.last_seen_ns) > u64::from(vip.idle_timeout_s) * 1_000_000_000 {
        counters.flow_expired += 1;
        return None;
    }
    let backend_id = value.backend_id;
    let backend = *LB_BACKENDS.get(backend_id)?;
    if !backend.keeps_flows(vip_id, value.backend_generation) {
        counters.flow_rescheduled += 1;
        return None;
    }
    counters.flow_hits += 1;
    touch(
        value,
        now,
        flow.is_tcp && flow.tcp_flags & (TCP_FIN | TCP_RST) != 0,
    );
    Some(Decision {
        backend_id,
        backend,
        vip_id,
        new_flow: false,
    })
}

/// Keeps `last_seen_ns` current to within [`FLOW_TOUCH_NS`] and marks the
/// flow closing on FIN or RST, so the controller can tell when a draining
/// worker's flows are over.
#[inline(always)]
fn touch(flow: &mut FlowValue, now: u64, closing: bool) {
    if closing {
        flow.flags |= FLOW_CLOSING;
        flow.last_seen_ns = now;
    } else if now.wrapping_sub(flow.last_seen_ns) > FLOW_TOUCH_NS {
        flow.last_seen_ns = now;
    }
}

/// The worker for a new flow: the client's pin, its sticky session, or the
/// scheduler's pick (which then becomes the session).
#[inline(always)]
fn choose(key: &FlowKey, vip: &VipInfo, counters: &mut GlobalCounters) -> Option<u32> {
    if vip.flags & (VIP_STICKY | VIP_HAS_PINS) == 0 {
        return schedule(key, vip);
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
                return Some(pinned);
            }
        }
    }
    if vip.flags & VIP_STICKY == 0 {
        return schedule(key, vip);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(session) = LB_STICKY.get_ptr_mut(&client) {
        // SAFETY: as for flows: the element lives for this run.
        let session = unsafe { &mut *session };
        let ttl_ns = u64::from(vip.sticky_ttl_s) * 1_000_000_000;
        let backend_id = session.backend_id;
        let fresh = now.wrapping_sub(session.last_ns) < ttl_ns;
        if fresh && usable(backend_id, vip) == Some(session.backend_generation) {
            session.last_ns = now;
            counters.sticky_hits += 1;
            return Some(backend_id);
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
    Some(backend_id)
}

/// The generation of worker `id` if it can take a new flow of `vip`.
#[inline(always)]
fn usable(id: u32, vip: &VipInfo) -> Option<u32> {
    let backend = LB_BACKENDS.get(id)?;
    backend
        .takes_new_flows(vip.id)
        .then_some(backend.generation)
}

/// The worker the flow table records for `key`, if its VIP still holds
/// the flow's id and the worker is the one recorded (no side effects: for
/// ICMP errors about the flow).
#[inline(always)]
pub fn recorded_worker(key: &FlowKey) -> Option<u32> {
    // SAFETY: copied out at once.
    let value = unsafe { LB_FLOWS.get(key) }?;
    let vip = LB_VIP_TAGS.get(value.vip_id)?;
    let backend = LB_BACKENDS.get(value.backend_id)?;
    let current = vip.tag == value.vip_tag && backend.generation == value.backend_generation;
    current.then_some(value.backend_id)
}

/// The VIP's scheduler: Maglev, or the less loaded of two Maglev picks
/// from independent hashes.
#[inline(always)]
pub fn schedule(key: &FlowKey, vip: &VipInfo) -> Option<u32> {
    if vip.table_size == 0 {
        return None;
    }
    let seed = LB_CONFIG.get(0).map_or(0, |config| config.hash_seed);
    let first = slot(vip, key.hash(seed))?;
    if vip.scheduler != SCHED_LEAST_LOAD {
        return Some(first);
    }
    let Some(second) = slot(vip, key.hash(seed ^ SECOND_CHOICE_SALT)) else {
        return Some(first);
    };
    let first_load = LB_LOAD.get(first).copied().unwrap_or(LOAD_UNKNOWN);
    let second_load = LB_LOAD.get(second).copied().unwrap_or(LOAD_UNKNOWN);
    // Without both figures there is nothing to compare: Maglev decides.
    if first_load == LOAD_UNKNOWN || second_load == LOAD_UNKNOWN || first_load <= second_load {
        return Some(first);
    }
    Some(second)
}

/// The worker in slot `hash % table_size` of the VIP's Maglev table.
#[inline(always)]
fn slot(vip: &VipInfo, hash: u32) -> Option<u32> {
    let index = hash % vip.table_size;
    let backend_id = *LB_MAGLEV.get_value(vip.id, &index)?;
    (backend_id != NO_BACKEND).then_some(backend_id)
}
