//! "Fragmentation needed" (IPv4) and "packet too big" (IPv6) for packets
//! an encapsulating tunnel can't carry, built in place from the client's
//! packet and sent back where it came from, so Path MTU discovery works
//! through lb's tunnels. At most `ICMP_BURST` at once and 100 a second per
//! CPU: a flood of big packets can't turn lb into an ICMP flood.
//!
//! Part of the tunnel program. Regions are read whole (one bounds check
//! each): a loop of small reads gets its checks merged by LLVM into one
//! the verifier can't follow.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    balancer::{FlowKey, FAMILY_V6, ICMP_BURST, ICMP_TOKEN_NS},
    counters::GlobalCounters,
    encap::{advertised_mtu, finish, sum_words, IPV4_DF, IPV4_HLEN, IPV6_HLEN, OUTER_TTL},
    icmp::{ICMPV6_PACKET_TOO_BIG, ICMP_DEST_UNREACH, ICMP_HLEN},
    packet::{Frame as _, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6},
};
use lb_ebpf::frame::XdpFrame;

use crate::{maps::LB_ICMP_BUDGET, transmit::write};

/// ICMP code of "fragmentation needed and DF set".
const FRAG_NEEDED: u8 = 4;
/// What an answer quotes of the client's packet: its IP header and the
/// first 8 bytes of its payload (the ports), all a sender needs to find
/// the connection.
const V4_QUOTE: usize = IPV4_HLEN + 8;
const V6_QUOTE: usize = IPV6_HLEN + 8;
/// Where the answer's parts lie once the frame is reshaped.
const IP: usize = ETH_HLEN;
const V4_ICMP: usize = IP + IPV4_HLEN;
const V6_ICMP: usize = IP + IPV6_HLEN;
const V4_QUOTED: usize = V4_ICMP + ICMP_HLEN;
const V6_QUOTED: usize = V6_ICMP + ICMP_HLEN;

/// The way to a worker: what it carries and what the tunnel adds.
pub struct Path {
    /// The largest IP packet it carries.
    pub mtu: u16,
    /// The tunnel's headers.
    pub overhead: u16,
}

/// Answers a packet of flow `key` too big for `path`: XDP_TX with the
/// answer in the frame, or XDP_DROP when it can't or mustn't be answered.
#[inline(always)]
pub fn answer(ctx: &XdpContext, key: &FlowKey, path: &Path, counters: &mut GlobalCounters) -> u32 {
    let ipv6 = key.family == FAMILY_V6;
    let mtu = advertised_mtu(path.mtu, path.overhead, ipv6);
    let answered = if ipv6 {
        answer_v6(ctx, mtu)
    } else {
        answer_v4(ctx, mtu)
    };
    if answered.is_some() {
        counters.too_big_answered += 1;
        xdp_action::XDP_TX
    } else {
        counters.too_big_dropped += 1;
        xdp_action::XDP_DROP
    }
}

/// IPv4: only with DF set (without it the sender expects routers to
/// fragment, which XDP can't) and without IP options (the quote has a
/// fixed size).
#[inline(always)]
fn answer_v4(ctx: &XdpContext, mtu: u16) -> Option<()> {
    let frame = XdpFrame::new(ctx);
    let [version_ihl, _] = read::<[u8; 2]>(&frame, IP)?;
    let frag = u16::from_be_bytes(read::<[u8; 2]>(&frame, IP + 6)?);
    if version_ihl != 0x45 || frag & IPV4_DF == 0 {
        return None;
    }
    take_token()?;
    let frame = reshape(ctx, IPV4_HLEN + ICMP_HLEN, V4_QUOTE)?;
    swap_macs(&frame, ETH_P_IP)?;
    // The answer goes from the VIP (the quote's destination) to the client
    // (its source).
    let client = read::<[u8; 4]>(&frame, V4_QUOTED + 12)?;
    let vip = read::<[u8; 4]>(&frame, V4_QUOTED + 16)?;
    let total = (IPV4_HLEN + ICMP_HLEN + V4_QUOTE) as u16;
    let [t0, t1] = total.to_be_bytes();
    let [d0, d1] = IPV4_DF.to_be_bytes();
    write(
        &frame,
        IP,
        [0x45, 0, t0, t1, 0, 0, d0, d1, OUTER_TTL, IPPROTO_ICMP, 0, 0],
    )?;
    write(&frame, IP + 12, vip)?;
    write(&frame, IP + 16, client)?;
    let check = finish(sum_words(&read::<[u8; IPV4_HLEN]>(&frame, IP)?, 0));
    write(&frame, IP + 10, check.to_be_bytes())?;
    let [m0, m1] = mtu.to_be_bytes();
    write(
        &frame,
        V4_ICMP,
        [ICMP_DEST_UNREACH, FRAG_NEEDED, 0, 0, 0, 0, m0, m1],
    )?;
    let message = read::<[u8; ICMP_HLEN + V4_QUOTE]>(&frame, V4_ICMP)?;
    let check = finish(sum_words(&message, 0));
    write(&frame, V4_ICMP + 2, check.to_be_bytes())
}

#[inline(always)]
fn answer_v6(ctx: &XdpContext, mtu: u16) -> Option<()> {
    take_token()?;
    let frame = reshape(ctx, IPV6_HLEN + ICMP_HLEN, V6_QUOTE)?;
    swap_macs(&frame, ETH_P_IPV6)?;
    let length = (ICMP_HLEN + V6_QUOTE) as u16;
    let [l0, l1] = length.to_be_bytes();
    write(
        &frame,
        IP,
        [0x60, 0, 0, 0, l0, l1, IPPROTO_ICMPV6, OUTER_TTL],
    )?;
    let vip = read::<[u8; 16]>(&frame, V6_QUOTED + 24)?;
    write(&frame, IP + 8, vip)?;
    let client = read::<[u8; 16]>(&frame, V6_QUOTED + 8)?;
    write(&frame, IP + 24, client)?;
    let [m0, m1, m2, m3] = u32::from(mtu).to_be_bytes();
    write(
        &frame,
        V6_ICMP,
        [ICMPV6_PACKET_TOO_BIG, 0, 0, 0, m0, m1, m2, m3],
    )?;
    // The checksum covers the pseudo-header: addresses, length, next header.
    let pseudo = sum_words(
        &vip,
        sum_words(&client, u32::from(length) + u32::from(IPPROTO_ICMPV6)),
    );
    let message = read::<[u8; ICMP_HLEN + V6_QUOTE]>(&frame, V6_ICMP)?;
    let check = finish(sum_words(&message, pseudo));
    write(&frame, V6_ICMP + 2, check.to_be_bytes())
}

/// Readdresses the frame back to the sender, from this interface, with
/// `ethertype`.
#[inline(always)]
fn swap_macs(frame: &XdpFrame, ethertype: u16) -> Option<()> {
    // The old Ethernet header now starts after the room made in front.
    if !frame.readdress(None) {
        return None;
    }
    write(frame, 12, ethertype.to_be_bytes())
}

/// Makes room for `headers` bytes of answer headers in front of the
/// client's IP header, which with what follows it becomes the quote, cut
/// to `quote` bytes, and moves the Ethernet header to the new front.
#[inline(always)]
fn reshape(ctx: &XdpContext, headers: usize, quote: usize) -> Option<XdpFrame> {
    // SAFETY: the program's own context; frame pointers are taken afresh.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(headers as i32)) } != 0 {
        return None;
    }
    let grown = XdpFrame::new(ctx);
    let macs = read::<[u8; 12]>(&grown, headers)?;
    write(&grown, 0, macs)?;
    let cut = (ETH_HLEN + headers + quote) as i32 - grown.len() as i32;
    // SAFETY: as above.
    if cut > 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, cut) } != 0 {
        return None;
    }
    Some(XdpFrame::new(ctx))
}

/// A copy of the `T` at `offset`.
#[inline(always)]
fn read<T: Copy>(frame: &XdpFrame, offset: usize) -> Option<T> {
    let at = frame.ptr_mut::<T>(offset)?;
    // SAFETY: ptr_mut checked the range against data_end; byte arrays.
    Some(unsafe { core::ptr::read_unaligned(at) })
}

/// Takes one answer from this CPU's budget, refilling it for the time
/// passed; `None` when it is spent.
#[inline(always)]
fn take_token() -> Option<()> {
    let budget = LB_ICMP_BUDGET.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let budget = unsafe { &mut *budget };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let earned = now.wrapping_sub(budget.refilled_ns) / ICMP_TOKEN_NS;
    if earned > 0 {
        budget.tokens = (budget.tokens + earned).min(ICMP_BURST);
        budget.refilled_ns = now;
    }
    budget.tokens = budget.tokens.checked_sub(1)?;
    Some(())
}
