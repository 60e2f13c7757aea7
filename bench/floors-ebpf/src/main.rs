//! Floor programs for `cargo xtask bench`: what lb's per-packet cost is
//! measured against. Built like lb (same toolchain, same frame access:
//! lb-ebpf's `XdpFrame`).
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "aya-ebpf's map methods take `impl Borrow<K>`: a reference spares a copy of the key on the 512-byte BPF stack"
)]

use aya_ebpf::{
    bindings::{xdp_action, BPF_ANY, BPF_F_NO_COMMON_LRU},
    btf_maps::{Array, LruHashMap, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use floors_common::{ForwardTarget, FLOOR_FLOWS_CAPACITY};
use lb_common::{
    balancer::{vip_filter_bit, FlowKey, FlowValue, FAMILY_V4, VIP_FILTER_WORDS},
    counters::GlobalCounters,
    packet::{self, Frame as _, Ipv4Header, Parsed, TcpHeader, ETH_HLEN, ETH_P_IP, IPPROTO_TCP},
};
use lb_ebpf::frame::XdpFrame;

#[btf_map]
static FLOOR_FLOWS: LruHashMap<FlowKey, FlowValue, { FLOOR_FLOWS_CAPACITY as usize }> =
    LruHashMap::new();

/// As `FLOOR_FLOWS`, with an LRU list per CPU (`BPF_F_NO_COMMON_LRU`).
#[btf_map]
static FLOOR_FLOWS_PERCPU: LruHashMap<
    FlowKey,
    FlowValue,
    { FLOOR_FLOWS_CAPACITY as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

#[btf_map]
static FLOOR_TARGET: Array<ForwardTarget, 1> = Array::new();

/// lb's global counters, for the stage floors.
#[btf_map]
static FLOOR_COUNTERS: PerCpuArray<GlobalCounters, 1> = PerCpuArray::new();

/// A VIP filter laid out as lb's.
#[btf_map]
static FLOOR_VIP_FILTER: Array<u64, { VIP_FILTER_WORDS as usize }> = Array::new();

#[xdp]
pub fn floor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
pub fn floor_tx(ctx: XdpContext) -> u32 {
    let frame = XdpFrame::new(&ctx);
    if tcp_key(&frame).is_none() {
        return xdp_action::XDP_PASS;
    }
    swap_macs(&frame, None)
}

#[xdp]
pub fn floor_lru(ctx: XdpContext) -> u32 {
    let frame = XdpFrame::new(&ctx);
    let Some(key) = tcp_key(&frame) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: only tested for presence.
    if unsafe { FLOOR_FLOWS.get(&key) }.is_none() {
        return xdp_action::XDP_PASS;
    }
    swap_macs(&frame, None)
}

#[xdp]
pub fn floor_insert(ctx: XdpContext) -> u32 {
    insert_into(&ctx, &FLOOR_FLOWS)
}

#[xdp]
pub fn floor_insert_percpu(ctx: XdpContext) -> u32 {
    insert_into(&ctx, &FLOOR_FLOWS_PERCPU)
}

/// `floor_tx` plus recording the packet's 5-tuple in `flows`: what any
/// stateful balancer does with a new flow.
#[inline(always)]
fn insert_into<const FLAGS: usize>(
    ctx: &XdpContext,
    flows: &LruHashMap<FlowKey, FlowValue, { FLOOR_FLOWS_CAPACITY as usize }, FLAGS>,
) -> u32 {
    let frame = XdpFrame::new(ctx);
    let Some(key) = tcp_key(&frame) else {
        return xdp_action::XDP_PASS;
    };
    if flows
        .insert(&key, &FlowValue::default(), BPF_ANY.into())
        .is_err()
    {
        return xdp_action::XDP_PASS;
    }
    swap_macs(&frame, None)
}

/// lb's own first stages, one more per program, each then sending the
/// frame back out: where lb's time goes before its flow table decides.
#[xdp]
pub fn floor_lb_parse(ctx: XdpContext) -> u32 {
    lb_stages(&ctx, Stages::ParseAndCount)
}

#[xdp]
pub fn floor_lb_filter(ctx: XdpContext) -> u32 {
    lb_stages(&ctx, Stages::VipFilter)
}

#[xdp]
pub fn floor_lb_flow(ctx: XdpContext) -> u32 {
    lb_stages(&ctx, Stages::FlowHit)
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stages {
    /// `packet::parse` and `GlobalCounters::count`, as lb runs them.
    ParseAndCount,
    /// Then lb's VIP filter.
    VipFilter,
    /// Then a flow-table hit with lb's key.
    FlowHit,
}

#[inline(always)]
fn lb_stages(ctx: &XdpContext, upto: Stages) -> u32 {
    let frame = XdpFrame::new(ctx);
    let Some(counters) = FLOOR_COUNTERS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let counters = unsafe { &mut *counters };
    let parsed = packet::parse(&frame);
    counters.count(&parsed, frame.len() as u64);
    let Parsed::Ip(ip) = parsed else {
        return xdp_action::XDP_PASS;
    };
    if upto >= Stages::VipFilter {
        let bit = vip_filter_bit(&ip.dst, ip.dport, ip.proto);
        let hit = FLOOR_VIP_FILTER
            .get(bit >> 6)
            .is_some_and(|word| word & (1u64 << (bit & 63)) != 0);
        if !hit {
            return xdp_action::XDP_PASS;
        }
    }
    if upto >= Stages::FlowHit {
        let key = FlowKey {
            src: ip.src,
            dst: ip.dst,
            sport: ip.sport,
            dport: ip.dport,
            proto: ip.proto,
            family: FAMILY_V4,
            pad: [0; 2],
        };
        // SAFETY: only tested for presence.
        if unsafe { FLOOR_FLOWS.get(&key) }.is_none() {
            return xdp_action::XDP_PASS;
        }
    }
    swap_macs(&frame, None)
}

#[xdp]
pub fn floor_forward(ctx: XdpContext) -> u32 {
    let frame = XdpFrame::new(&ctx);
    let Some(target) = FLOOR_TARGET.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let is_ipv4 = frame
        .get::<[u8; 2]>(12)
        .is_some_and(|t| u16::from_be_bytes(*t) == ETH_P_IP);
    let Some(ip) = frame.get::<Ipv4Header>(ETH_HLEN).filter(|_| is_ipv4) else {
        return xdp_action::XDP_PASS;
    };
    if ip.dst != target.vip {
        return xdp_action::XDP_PASS;
    }
    swap_macs(&frame, Some(target.mac))
}

/// The 5-tuple of an Ethernet/IPv4/TCP frame.
#[inline(always)]
fn tcp_key(frame: &XdpFrame) -> Option<FlowKey> {
    let ethertype = frame.get::<[u8; 2]>(12)?;
    if u16::from_be_bytes(*ethertype) != ETH_P_IP {
        return None;
    }
    let ip = frame.get::<Ipv4Header>(ETH_HLEN)?;
    if ip.proto != IPPROTO_TCP {
        return None;
    }
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    let tcp = frame.get::<TcpHeader>(ETH_HLEN + ihl)?;
    // Built as lb builds its key: a floor that zeroes and copies bytes
    // would be slower than lb for reasons of its own.
    Some(FlowKey {
        src: packet::widen(ip.src),
        dst: packet::widen(ip.dst),
        sport: u16::from_ne_bytes(tcp.sport),
        dport: u16::from_ne_bytes(tcp.dport),
        proto: IPPROTO_TCP,
        family: FAMILY_V4,
        pad: [0; 2],
    })
}

/// Readdresses the frame (see `XdpFrame::readdress`) and sends it out.
#[inline(always)]
fn swap_macs(frame: &XdpFrame, to: Option<[u8; 6]>) -> u32 {
    if frame.readdress(to) {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_PASS
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
