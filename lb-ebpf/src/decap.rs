//! `lb_decap`: the worker side of lb's L3 forwarding. Frames carrying IPIP
//! (any mix of IPv4 and IPv6) or GUE to one of this host's addresses lose
//! their outer IP (and UDP) header and go to the kernel as the inner
//! packet; everything else passes untouched. The formats are lb-common's
//! `encap`.
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
    reason = "aya-ebpf's map methods take `impl Borrow<K>`: a reference spares a copy of the key"
)]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, PerCpuArray},
    helpers::bpf_xdp_adjust_head,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    decap::{DecapConfig, DecapCounters, LocalAddrKey, FAMILY_V4, FAMILY_V6, MAX_LOCAL_ADDRS},
    encap::{IPPROTO_IPIP, IPPROTO_IPV6, IPV4_HLEN, IPV6_HLEN, UDP_HLEN},
    packet::{
        Frame as _, Ipv4Header, Ipv6Header, UdpHeader, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP,
    },
};
use lb_ebpf::frame::XdpFrame;

#[btf_map]
static DECAP_COUNTERS: PerCpuArray<DecapCounters, 1> = PerCpuArray::new();

#[btf_map]
static DECAP_CONFIG: Array<DecapConfig, 1> = Array::new();

#[btf_map]
static DECAP_LOCAL_ADDRS: HashMap<LocalAddrKey, u8, { MAX_LOCAL_ADDRS as usize }> = HashMap::new();

/// What a frame turned out to be.
enum Verdict {
    /// Not a tunnel packet for us: the kernel takes it as it is.
    Pass,
    /// A tunnel packet for us, cut short or inconsistent.
    Malformed,
    /// A tunnel packet for us whose inner packet starts `outer` bytes after
    /// the Ethernet header, with this ethertype.
    Strip {
        outer: usize,
        ethertype: u16,
        kind: Kind,
    },
}

/// Which counter a stripped packet goes to.
#[derive(Clone, Copy)]
enum Kind {
    Ipip,
    Ip6ip6,
    Gue,
}

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    // Slot 0 of a per-CPU array always exists; the verifier needs the check.
    let Some(counters) = DECAP_COUNTERS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let counters = unsafe { &mut *counters };
    match classify(&XdpFrame::new(&ctx)) {
        Verdict::Pass => {
            counters.passed += 1;
            xdp_action::XDP_PASS
        }
        Verdict::Malformed => {
            counters.malformed += 1;
            xdp_action::XDP_DROP
        }
        Verdict::Strip {
            outer,
            ethertype,
            kind,
        } => {
            if strip(&ctx, outer, ethertype).is_none() {
                counters.malformed += 1;
                return xdp_action::XDP_DROP;
            }
            match kind {
                Kind::Ipip => counters.ipip += 1,
                Kind::Ip6ip6 => counters.ip6ip6 += 1,
                Kind::Gue => counters.gue += 1,
            }
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn classify(frame: &XdpFrame) -> Verdict {
    let Some(ethertype) = frame.get::<[u8; 2]>(12) else {
        return Verdict::Pass;
    };
    match u16::from_be_bytes(*ethertype) {
        ETH_P_IP => classify_v4(frame),
        ETH_P_IPV6 => classify_v6(frame),
        _ => Verdict::Pass,
    }
}

/// The GUE port in network byte order, 0 when none is set.
#[inline(always)]
fn gue_port() -> u16 {
    DECAP_CONFIG.get(0).map_or(0, |config| config.gue_port)
}

#[inline(always)]
fn is_local(addr: [u8; 16], family: u8) -> bool {
    let key = LocalAddrKey {
        addr,
        family,
        pad: [0; 3],
    };
    // SAFETY: the value is only tested for presence.
    unsafe { DECAP_LOCAL_ADDRS.get(&key) }.is_some()
}

#[inline(always)]
fn classify_v4(frame: &XdpFrame) -> Verdict {
    let Some(ip) = frame.get::<Ipv4Header>(ETH_HLEN) else {
        return Verdict::Pass;
    };
    // lb's outer headers never carry options or fragments; anything else
    // is left to the kernel.
    let fragment = u16::from_be_bytes(ip.frag) & 0x3fff != 0;
    if ip.version_ihl != 0x45 || fragment {
        return Verdict::Pass;
    }
    let tunnel = match ip.proto {
        IPPROTO_IPIP | IPPROTO_IPV6 => Some(ip.proto),
        IPPROTO_UDP if is_gue(frame, ETH_HLEN + IPV4_HLEN) => None,
        _ => return Verdict::Pass,
    };
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&ip.dst);
    if !is_local(dst, FAMILY_V4) {
        return Verdict::Pass;
    }
    let total = usize::from(u16::from_be_bytes(ip.total_len));
    if total < IPV4_HLEN || ETH_HLEN + total > frame.len() {
        return Verdict::Malformed;
    }
    inner(
        frame,
        ETH_HLEN + IPV4_HLEN,
        ETH_HLEN + total,
        tunnel,
        Kind::Ipip,
    )
}

#[inline(always)]
fn classify_v6(frame: &XdpFrame) -> Verdict {
    let Some(ip) = frame.get::<Ipv6Header>(ETH_HLEN) else {
        return Verdict::Pass;
    };
    let tunnel = match ip.next_header {
        IPPROTO_IPIP | IPPROTO_IPV6 => Some(ip.next_header),
        IPPROTO_UDP if is_gue(frame, ETH_HLEN + IPV6_HLEN) => None,
        _ => return Verdict::Pass,
    };
    if ip.version_class_flow[0] >> 4 != 6 || !is_local(ip.dst, FAMILY_V6) {
        return Verdict::Pass;
    }
    let end = ETH_HLEN + IPV6_HLEN + usize::from(u16::from_be_bytes(ip.payload_len));
    if end > frame.len() {
        return Verdict::Malformed;
    }
    inner(frame, ETH_HLEN + IPV6_HLEN, end, tunnel, Kind::Ip6ip6)
}

/// Whether the UDP datagram at `l4` goes to the GUE port (and one is set).
#[inline(always)]
fn is_gue(frame: &XdpFrame, l4: usize) -> bool {
    let port = gue_port();
    port != 0
        && frame
            .get::<UdpHeader>(l4)
            .is_some_and(|udp| u16::from_ne_bytes(udp.dport) == port)
}

/// Checks the inner packet of a tunnel packet for us whose outer IP
/// payload starts at `payload` and ends at `end`: IPIP's `proto`
/// (`Some`), or GUE (`None`, the payload starting with UDP).
#[inline(always)]
fn inner(frame: &XdpFrame, payload: usize, end: usize, proto: Option<u8>, ipip: Kind) -> Verdict {
    let (start, kind) = match proto {
        Some(_) => (payload, ipip),
        None => {
            let Some(udp) = frame.get::<UdpHeader>(payload) else {
                return Verdict::Malformed;
            };
            let udp_len = usize::from(u16::from_be_bytes(udp.len));
            if udp_len < UDP_HLEN || payload + udp_len > end {
                return Verdict::Malformed;
            }
            (payload + UDP_HLEN, Kind::Gue)
        }
    };
    let Some(first) = frame.get::<u8>(start) else {
        return Verdict::Malformed;
    };
    let (ethertype, inner_len) = match (first >> 4, proto) {
        (4, None | Some(IPPROTO_IPIP)) => {
            let Some(ip) = frame.get::<Ipv4Header>(start) else {
                return Verdict::Malformed;
            };
            if ip.version_ihl & 0x0f < 5 {
                return Verdict::Malformed;
            }
            (ETH_P_IP, usize::from(u16::from_be_bytes(ip.total_len)))
        }
        (6, None | Some(IPPROTO_IPV6)) => {
            let Some(ip) = frame.get::<Ipv6Header>(start) else {
                return Verdict::Malformed;
            };
            (
                ETH_P_IPV6,
                IPV6_HLEN + usize::from(u16::from_be_bytes(ip.payload_len)),
            )
        }
        _ => return Verdict::Malformed,
    };
    if start + inner_len > end {
        return Verdict::Malformed;
    }
    Verdict::Strip {
        outer: start - ETH_HLEN,
        ethertype,
        kind,
    }
}

/// Removes the `outer` bytes after the Ethernet header and writes the
/// Ethernet header again in front of the inner packet: same MAC addresses,
/// the inner packet's ethertype.
#[inline(always)]
fn strip(ctx: &XdpContext, outer: usize, ethertype: u16) -> Option<()> {
    let macs: [u8; 12] = *XdpFrame::new(ctx).get::<[u8; 12]>(0)?;
    // SAFETY: the context is the program's own; the frame is looked at
    // afresh below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer as i32) } != 0 {
        return None;
    }
    let header = XdpFrame::new(ctx).ptr_mut::<[u8; ETH_HLEN]>(0)?;
    let mut bytes = [0u8; ETH_HLEN];
    bytes[..12].copy_from_slice(&macs);
    bytes[12..].copy_from_slice(&ethertype.to_be_bytes());
    // SAFETY: ptr_mut checked the 14 bytes against data_end.
    unsafe { core::ptr::write_unaligned(header, bytes) };
    Some(())
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
