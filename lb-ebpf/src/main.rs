//! lb's XDP data plane.
#![no_std]
#![no_main]

mod frame;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::PerCpuArray,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{counters::GlobalCounters, packet};

use crate::frame::XdpFrame;

#[btf_map]
static LB_COUNTERS: PerCpuArray<GlobalCounters, 1> = PerCpuArray::new();

/// The balancer: classifies and counts every frame, then lets it pass.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let frame = XdpFrame::new(&ctx);
    let parsed = packet::parse(&frame);
    if let Some(counters) = LB_COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, so no other program run touches it.
        unsafe { (*counters).count(&parsed, frame_len(&frame)) };
    }
    xdp_action::XDP_PASS
}

/// Passes everything; test rigs attach it to veth peers that must accept
/// XDP_TX frames.
#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn frame_len(frame: &XdpFrame) -> u64 {
    use lb_common::packet::Frame as _;
    frame.len() as u64
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
