//! The flow table's writes around the shared decision: a packet's flow,
//! the entry of a followed flow kept fresh (and marked closing on FIN or
//! RST, for the controller), and the recording of a new flow once its
//! worker is chosen.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
};
use lb_common::{
    balancer::{Backend, FlowKey, FlowValue, VipInfo, FLOW_CLOSING, FLOW_TOUCH_NS},
    capture::reason,
    counters::GlobalCounters,
    decide::{Followed, Missed},
    nat::NO_NAT_SOURCE,
    packet::{IpPacket, IPPROTO_TCP},
};

use crate::maps::{LB_BACKENDS, LB_CLOCK, LB_FLOWS, LB_VIP_TAGS};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Where a packet goes.
pub struct Decision {
    /// The worker's id.
    pub backend_id: u32,
    /// The worker, as its slot holds it (a reference, not a copy: the
    /// balancer's stack is 512 bytes; the controller replaces slots whole).
    pub backend: &'static Backend,
    /// The VIP's id.
    pub vip_id: u32,
    /// Whether this packet opened a flow.
    pub new_flow: bool,
    /// Why this worker (a `capture::reason` code).
    pub reason: u8,
    /// A `fullnat` flow's NAT source slot and port (network byte order),
    /// as its flow entry records them.
    pub nat: (u8, u16),
}

/// A packet's flow: what the flow table and the scheduler need to know
/// about it.
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

/// Where a flow the flow table decides goes: its entry touched, the hit
/// counted.
#[inline(always)]
pub fn established(
    flow: &Flow,
    followed: Followed<'static, &mut FlowValue>,
    counters: &mut GlobalCounters,
) -> Decision {
    counters.flow_hits += 1;
    let vip_id = followed.entry.vip_id;
    let nat = (followed.entry.nat_source, followed.entry.nat_port);
    touch(
        followed.entry,
        followed.now,
        flow.is_tcp && flow.tcp_flags & (TCP_FIN | TCP_RST) != 0,
    );
    Decision {
        backend_id: followed.backend_id,
        backend: followed.backend,
        vip_id,
        new_flow: false,
        reason: reason::FLOW,
        nat,
    }
}

/// Counts why the flow table did not decide, where that is news: an
/// expired flow, or one whose worker can't keep it.
#[inline(always)]
pub fn count_missed(missed: Missed, counters: &mut GlobalCounters) {
    match missed {
        Missed::Expired { .. } => counters.flow_expired += 1,
        Missed::WorkerRefuses => counters.flow_rescheduled += 1,
        _ => {}
    }
}

/// CLOCK_MONOTONIC_COARSE, as of this jiffy. The clock helper is a call
/// (its registers spilled around it: a sixth of an established packet's
/// time); `jiffies` is a single load the verifier inlines, and the coarse
/// clock only moves when it does, so each CPU reads the clock once a tick.
/// A reading can lag the clock by one tick (the tick raises jiffies just
/// before the clock), and another CPU's by as much: callers compare with
/// `saturating_sub`.
#[inline(always)]
pub fn coarse_now() -> u64 {
    // SAFETY: helpers without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cache) = LB_CLOCK.get_ptr_mut(0) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let cache = unsafe { &mut *cache };
    if cache.jiffies != jiffies {
        // SAFETY: as above.
        cache.ns = unsafe { bpf_ktime_get_coarse_ns() };
        cache.jiffies = jiffies;
    }
    cache.ns
}

/// Keeps `last_seen_ns` current to within [`FLOW_TOUCH_NS`] and marks the
/// flow closing on FIN or RST, so the controller can tell when a draining
/// worker's flows are over.
#[inline(always)]
fn touch(flow: &mut FlowValue, now: u64, closing: bool) {
    if closing {
        flow.flags |= FLOW_CLOSING;
        flow.last_seen_ns = now;
    } else if now.saturating_sub(flow.last_seen_ns) > FLOW_TOUCH_NS {
        flow.last_seen_ns = now;
    }
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

/// Records a new flow of `vip` on worker `backend_id`, unless the packet
/// is a RST.
#[inline(always)]
pub fn record(
    flow: &Flow,
    vip: &VipInfo,
    backend_id: u32,
    backend: &Backend,
    counters: &mut GlobalCounters,
) {
    // A reset ends the flow it would record: don't churn the table.
    if !(flow.is_tcp && flow.tcp_flags & TCP_RST != 0) {
        // The coarse clock, as in `touch`, so that idle time never exceeds
        // age.
        let now = coarse_now();
        let value = FlowValue {
            backend_id,
            vip_id: vip.id,
            created_ns: now,
            last_seen_ns: now,
            flags: 0,
            vip_tag: vip.tag,
            backend_generation: backend.generation,
            nat_port: 0,
            nat_source: NO_NAT_SOURCE,
            pad: 0,
        };
        if LB_FLOWS.insert(&flow.key, &value, BPF_ANY.into()).is_err() {
            counters.flow_insert_failed += 1;
        }
    }
}
