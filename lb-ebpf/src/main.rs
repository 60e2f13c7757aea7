//! lb's XDP data plane: parse → the decision shared with `lb explain`
//! (`lb_common::decide`: flow table, VIP lookup, pins, sticky sessions,
//! Maglev, least-load; its writes in `flow` and `schedule`) →
//! transmit (`transmit`: L2 DSR, or IPIP/GUE encapsulation, with `pmtu`
//! answering what a tunnel can't carry); ICMP in `icmp`; every packet's
//! outcome, and its copy while `lb capture` runs, in `capture`.
#![no_std]
#![no_main]
// Lints beyond clippy's default for the product's code (the set and why:
// docs/VERIFICATION.md, "Static analysis"). Every exception is an
// `#[expect(lint, reason = "...")]` at the narrowest scope.
#![warn(
    clippy::allow_attributes,
    clippy::allow_attributes_without_reason,
    clippy::dbg_macro,
    clippy::mem_forget,
    clippy::todo,
    clippy::unimplemented,
    clippy::unnecessary_safety_comment,
    clippy::unnecessary_safety_doc,
    clippy::unwrap_used
)]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "aya-ebpf's map methods take `impl Borrow<K>`: a reference spares a copy of the key on the 512-byte BPF stack"
)]

mod capture;
mod flow;
mod icmp;
mod maps;
mod nat;
mod nat_icmp;
mod pmtu;
mod schedule;
mod transmit;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    balancer::{is_nat, vip_filter_bit, FAMILY_V4, FAMILY_V6},
    capture::{reason, NO_ID},
    counters::GlobalCounters,
    decide::{self, Decided},
    packet::{
        self, Frame as _, IpPacket, IpVersion, Parsed, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP,
    },
};

use lb_ebpf::frame::XdpFrame;

use crate::{capture::Outcome, maps::*};

/// The balancer: forwards packets for VIPs to their workers, passes
/// everything else to the kernel untouched.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let frame = XdpFrame::new(&ctx);
    // Slot 0 of a per-CPU array always exists; the verifier needs the check.
    let Some(counters) = LB_COUNTERS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let counters = unsafe { &mut *counters };
    let parsed = packet::parse(&frame);
    let len = frame.len() as u64;
    counters.count(&parsed, len);
    match parsed {
        Parsed::Ip(ip) => {
            let outcome = balance(&ctx, &frame, &ip, len, counters);
            let outcome = outcome.unwrap_or_else(|| not_vip(counters));
            capture::finish(&ctx, &outcome, &ip.src, family_of(&ip))
        }
        Parsed::NotIp | Parsed::Malformed => capture::finish(&ctx, &not_vip(counters), &[0; 16], 0),
    }
}

/// Counts a packet that goes to the kernel untouched.
#[inline(always)]
fn not_vip(counters: &mut GlobalCounters) -> Outcome {
    counters.pass_not_vip += 1;
    Outcome::NOT_VIP
}

#[inline(always)]
fn family_of(ip: &IpPacket) -> u8 {
    match ip.version {
        IpVersion::V4 => FAMILY_V4,
        IpVersion::V6 => FAMILY_V6,
    }
}

/// Forwards `ip` if it is for a VIP; `None` means "not ours, pass it".
#[inline(always)]
fn balance(
    ctx: &XdpContext,
    frame: &XdpFrame,
    ip: &IpPacket,
    len: u64,
    counters: &mut GlobalCounters,
) -> Option<Outcome> {
    if ip.later_fragment {
        return None;
    }
    let family = family_of(ip);
    let is_icmp = match ip.version {
        IpVersion::V4 => ip.proto == IPPROTO_ICMP,
        IpVersion::V6 => ip.proto == IPPROTO_ICMPV6,
    };
    if is_icmp {
        return icmp::handle(ctx, frame, ip, family, counters);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return None;
    }
    if !maybe_vip(ip) {
        return reply(ctx, ip, family, len);
    }
    let flow = flow::Flow::of(ip, family);
    let decision = match decide::decide(&XdpMaps, &flow.key, flow.is_syn()) {
        Decided::Established(followed) => flow::established(&flow, followed, counters),
        Decided::New { missed, vip, rule } => {
            flow::count_missed(missed, counters);
            let Some(decision) = schedule::new_flow(&flow, &vip, rule, counters) else {
                counters.drop_no_backend += 1;
                return Some(Outcome::drop(reason::NO_BACKEND, vip.id, NO_ID));
            };
            decision
        }
        Decided::NotVip(missed) => {
            flow::count_missed(missed, counters);
            return reply(ctx, ip, family, len);
        }
    };
    if is_nat(decision.backend.forward) {
        let packet = (len, ip.tcp_flags, ip.l4_offset);
        return Some(nat::to_worker(ctx, &flow.key, &decision, packet, counters));
    }
    transmit::to_worker(ctx, frame, &decision, &flow.key, len, counters)
}

/// Whether the VIP filter has the packet's destination's bit: if not, it
/// is not for a VIP (most such packets leave here, without a hash lookup).
#[inline(always)]
fn maybe_vip(ip: &IpPacket) -> bool {
    let bit = vip_filter_bit(&ip.dst, ip.dport, ip.proto);
    LB_VIP_FILTER
        .get(bit >> 6)
        .is_some_and(|word| word & (1u64 << (bit & 63)) != 0)
}

/// A TCP or UDP packet not for a VIP: a NAT worker's reply if the reply
/// filter has its source, handed to the NAT program; `None` (pass it)
/// otherwise.
#[inline(always)]
fn reply(ctx: &XdpContext, ip: &IpPacket, family: u8, len: u64) -> Option<Outcome> {
    if !nat::maybe_reply(&ip.src, ip.sport, ip.proto) {
        return None;
    }
    let key = flow::Flow::of(ip, family).key;
    nat::to_reverse(ctx, &key, (len, ip.tcp_flags, ip.l4_offset))
}

/// The balancer's second half for NAT'd flows, reached by a tail call.
#[xdp]
pub fn lb_nat(ctx: XdpContext) -> u32 {
    nat::run::<false>(&ctx)
}

/// The balancer's second half for NAT workers' replies, reached by a tail
/// call.
#[xdp]
pub fn lb_nat_reply(ctx: XdpContext) -> u32 {
    nat::run::<true>(&ctx)
}

/// ICMP errors about NAT'd connections, reached by a tail call.
#[xdp]
pub fn lb_nat_icmp(ctx: XdpContext) -> u32 {
    nat_icmp::run(&ctx)
}

/// The balancer's second half for IPIP and GUE, reached by a tail call.
#[xdp]
pub fn lb_tunnel(ctx: XdpContext) -> u32 {
    transmit::tunnel(&ctx)
}

/// Copies packets to `lb capture`'s ring buffer, reached by a tail call
/// while a capture runs.
#[xdp]
pub fn lb_capture(ctx: XdpContext) -> u32 {
    capture::run(&ctx)
}

/// Passes everything; test rigs attach it to veth peers that must accept
/// XDP_TX frames.
#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
