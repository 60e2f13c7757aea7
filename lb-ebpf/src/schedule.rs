//! Choosing a worker: the flow table first, Maglev for new flows.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use lb_common::{
    balancer::{FlowKey, FlowValue, VipInfo, NO_BACKEND},
    counters::GlobalCounters,
    packet::{IpPacket, IPPROTO_TCP},
};

use crate::maps::{LB_CONFIG, LB_FLOWS, LB_MAGLEV};

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The worker for this packet and whether its flow is new; `None` when the
/// VIP has no worker.
#[inline(always)]
pub fn pick(
    ip: &IpPacket,
    family: u8,
    vip: &VipInfo,
    counters: &mut GlobalCounters,
) -> Option<(u32, bool)> {
    let key = FlowKey {
        src: ip.src,
        dst: ip.dst,
        sport: ip.sport,
        dport: ip.dport,
        proto: ip.proto,
        family,
        pad: [0; 2],
    };
    let is_tcp = ip.proto == IPPROTO_TCP;
    // A SYN opens a new connection by definition: skip the lookup.
    let syn = is_tcp && ip.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !syn {
        // SAFETY: the value is copied out at once.
        if let Some(flow) = unsafe { LB_FLOWS.get(&key) } {
            counters.flow_hits += 1;
            return Some((flow.backend_id, false));
        }
    }
    let backend_id = maglev(&key, vip)?;
    // A reset ends the flow it would record: don't churn the table.
    if !(is_tcp && ip.tcp_flags & TCP_RST != 0) {
        let value = FlowValue {
            backend_id,
            vip_id: vip.id,
            // SAFETY: helper without arguments.
            created_ns: unsafe { bpf_ktime_get_ns() },
        };
        if LB_FLOWS.insert(&key, &value, BPF_ANY.into()).is_err() {
            counters.flow_insert_failed += 1;
        }
    }
    Some((backend_id, true))
}

/// The worker in the flow's slot of the VIP's Maglev table.
#[inline(always)]
fn maglev(key: &FlowKey, vip: &VipInfo) -> Option<u32> {
    if vip.table_size == 0 {
        return None;
    }
    let seed = LB_CONFIG.get(0).map_or(0, |config| config.hash_seed);
    let slot = key.hash(seed) % vip.table_size;
    let backend_id = *LB_MAGLEV.get_value(vip.id, &slot)?;
    (backend_id != NO_BACKEND).then_some(backend_id)
}
