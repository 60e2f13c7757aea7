//! Sending a balanced packet on to its worker, counted per VIP and per
//! worker. Today that is L2 direct server return; encapsulation for
//! workers beyond this network (L3) goes here.

use aya_ebpf::{bindings::xdp_action, btf_maps::PerCpuArray};
use lb_common::{
    balancer::{TrafficCounters, BACKEND_MAC_KNOWN},
    counters::GlobalCounters,
};
use lb_ebpf::frame::XdpFrame;

use crate::{
    flow::Decision,
    maps::{LB_BACKEND_STATS, LB_VIP_STATS},
};

/// Sends the frame to the worker `decision` names: XDP_TX, or XDP_DROP
/// while the worker's MAC is unknown; `None` (pass) if the frame is too
/// short to readdress.
#[inline(always)]
pub fn to_worker(
    frame: &XdpFrame,
    decision: &Decision,
    len: u64,
    counters: &mut GlobalCounters,
) -> Option<u32> {
    let backend = &decision.backend;
    if backend.flags & BACKEND_MAC_KNOWN == 0 {
        counters.drop_no_neighbour += 1;
        return Some(xdp_action::XDP_DROP);
    }
    // L2 DSR: to the worker's MAC, from ours.
    if !frame.readdress(Some(backend.mac)) {
        return None;
    }
    count_traffic(&LB_VIP_STATS, decision.vip_id, len, decision.new_flow);
    count_traffic(
        &LB_BACKEND_STATS,
        decision.backend_id,
        len,
        decision.new_flow,
    );
    counters.forwarded += 1;
    Some(xdp_action::XDP_TX)
}

/// Counts the packet in slot `index` (a VIP's or a worker's id) of `map`.
#[inline(always)]
fn count_traffic<const N: usize>(
    map: &PerCpuArray<TrafficCounters, N>,
    index: u32,
    len: u64,
    new_flow: bool,
) {
    if let Some(stats) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        let stats = unsafe { &mut *stats };
        stats.packets += 1;
        stats.bytes += len;
        stats.new_flows += u64::from(new_flow);
    }
}
