//! Sending a balanced packet on to its worker, counted per VIP and per
//! worker: L2 direct server return (the frame readdressed), or L3 in an
//! outer IPv4/IPv6 header (IPIP) or outer IP and UDP headers (GUE) to the
//! next hop toward the worker.
//!
//! L3 runs in a program of its own, `lb_tunnel`, which the balancer
//! tail-calls with the job in a per-CPU slot: a tail call starts with a
//! fresh 512-byte stack, and the balancer's own leaves too little for
//! building headers and "too big" answers (`pmtu`).

use aya_ebpf::{
    bindings::xdp_action, btf_maps::PerCpuArray, helpers::bpf_xdp_adjust_head, programs::XdpContext,
};
use lb_common::{
    balancer::{
        Backend, FlowKey, TrafficCounters, TunnelJob, BACKEND_MAC_KNOWN, FAMILY_V6, FORWARD_DSR,
        FORWARD_GUE, JOB_FLOW, JOB_ICMP_ERROR, JOB_NEW_FLOW,
    },
    capture::{reason, NO_ID},
    counters::GlobalCounters,
    encap::{
        flow_label_hash, gue_source_port, gue_udp_header, ipv4_header, ipv6_class, ipv6_fixed,
        IPPROTO_IPIP, IPPROTO_IPV6, IPV4_HLEN, IPV6_HLEN, UDP_HLEN,
    },
    packet::{Frame as _, Ipv4Header, Ipv6Header, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP},
};
use lb_ebpf::frame::XdpFrame;

use crate::{
    capture::{self, Outcome},
    flow::Decision,
    maps::{
        LB_BACKENDS, LB_BACKEND_STATS, LB_COUNTERS, LB_EGRESS, LB_IFACES, LB_IFACE_STATS,
        LB_TUNNEL_JOB, LB_TUNNEL_PROG, LB_VIP_STATS,
    },
    pmtu,
};

/// Sends a balanced packet of flow `key` to the worker `decision` names
/// and counts it; `None` (pass) if the frame is too short to rewrite.
#[inline(always)]
pub fn to_worker(
    ctx: &XdpContext,
    frame: &XdpFrame,
    decision: &Decision,
    key: &FlowKey,
    len: u64,
    counters: &mut GlobalCounters,
) -> Option<Outcome> {
    let backend = decision.backend;
    let (vip_id, backend_id) = (decision.vip_id, decision.backend_id);
    if backend.flags & BACKEND_MAC_KNOWN == 0 {
        counters.drop_no_neighbour += 1;
        return Some(Outcome::drop(reason::NO_NEIGHBOUR, vip_id, backend_id));
    }
    if backend.forward != FORWARD_DSR {
        let kind = if decision.new_flow {
            JOB_NEW_FLOW
        } else {
            JOB_FLOW
        };
        let job = (backend_id, vip_id, len, kind, decision.reason);
        return Some(to_tunnel(ctx, key, job, counters));
    }
    // L2 DSR: to the worker's MAC, from ours.
    if !frame.readdress(Some(backend.mac)) {
        return None;
    }
    let action = depart(ctx, frame, backend.egress);
    count_forwarded(vip_id, backend_id, len, decision.new_flow);
    counters.forwarded += 1;
    Some(Outcome::forward(
        action,
        decision.reason,
        vip_id,
        backend_id,
    ))
}

/// Sends an ICMP error about flow `key` to `backend` (id `backend_id`) by
/// its VIP's method; `None` (pass) if the frame is too short to rewrite.
#[inline(always)]
pub fn error_to_worker(
    ctx: &XdpContext,
    frame: &XdpFrame,
    key: &FlowKey,
    backend_id: u32,
    backend: &Backend,
    counters: &mut GlobalCounters,
) -> Option<Outcome> {
    let vip_id = backend.vip_id;
    if backend.flags & BACKEND_MAC_KNOWN == 0 {
        counters.drop_no_neighbour += 1;
        return Some(Outcome::drop(reason::NO_NEIGHBOUR, vip_id, backend_id));
    }
    if backend.forward != FORWARD_DSR {
        let job = (backend_id, vip_id, 0, JOB_ICMP_ERROR, reason::ICMP_ERROR);
        return Some(to_tunnel(ctx, key, job, counters));
    }
    if !frame.readdress(Some(backend.mac)) {
        return None;
    }
    let action = depart(ctx, frame, backend.egress);
    counters.icmp_errors_forwarded += 1;
    Some(Outcome::forward(
        action,
        reason::ICMP_ERROR,
        vip_id,
        backend_id,
    ))
}

/// Hands `job` to the tunnel program. A tail call does not return when it
/// works (the tunnel program returns the action, and shows the packet to
/// a running capture); when it doesn't (no tunnel program loaded), the
/// packet is dropped and counted.
/// `job` is (worker id, VIP id, frame length, kind, reason), written
/// straight into the slot: a whole `TunnelJob` built first would cost a
/// copy.
#[inline(always)]
fn to_tunnel(
    ctx: &XdpContext,
    key: &FlowKey,
    job: (u32, u32, u64, u8, u8),
    counters: &mut GlobalCounters,
) -> Outcome {
    if let Some(slot) = LB_TUNNEL_JOB.get_ptr_mut(0) {
        // SAFETY: per-CPU slot: nothing else touches it during this run.
        let slot: &mut TunnelJob = unsafe { &mut *slot };
        slot.key = *key;
        (
            slot.backend_id,
            slot.vip_id,
            slot.len,
            slot.kind,
            slot.reason,
        ) = job;
        // SAFETY: the context is the program's own.
        unsafe { LB_TUNNEL_PROG.tail_call(ctx, 0) };
    }
    counters.drop_no_tunnel += 1;
    Outcome::drop(reason::NO_TUNNEL, job.1, job.0)
}

/// The tunnel program's work: the job the balancer left, encapsulated, or
/// answered when too big, counted, and shown to a running capture.
#[inline(always)]
pub fn tunnel(ctx: &XdpContext) -> u32 {
    // Slot 0 of a per-CPU array always exists; the verifier needs the check.
    let (Some(job), Some(counters)) = (LB_TUNNEL_JOB.get(0), LB_COUNTERS.get_ptr_mut(0)) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let counters = unsafe { &mut *counters };
    let outcome = tunnel_job(ctx, job, counters);
    // An ICMP error's key is the flow it is about: its sender is a router,
    // not known here.
    let family = if job.kind == JOB_ICMP_ERROR {
        0
    } else {
        job.key.family
    };
    capture::finish(ctx, &outcome, &job.key.src, family)
}

/// Encapsulates or answers the packet of `job`.
#[inline(always)]
fn tunnel_job(ctx: &XdpContext, job: &TunnelJob, counters: &mut GlobalCounters) -> Outcome {
    let (vip_id, backend_id) = (job.vip_id, job.backend_id);
    let Some(backend) = LB_BACKENDS.get(backend_id) else {
        return Outcome::drop(reason::NO_BACKEND, vip_id, NO_ID);
    };
    let encapsulated = encapsulate(ctx, backend, &job.key);
    let departure = || depart(ctx, &XdpFrame::new(ctx), backend.egress);
    match encapsulated {
        Encapsulated::Yes if job.kind == JOB_ICMP_ERROR => {
            counters.icmp_errors_forwarded += 1;
            Outcome::forward(departure(), reason::ICMP_ERROR, vip_id, backend_id)
        }
        Encapsulated::Yes => {
            let new_flow = job.kind == JOB_NEW_FLOW;
            count_forwarded(vip_id, backend_id, job.len, new_flow);
            counters.forwarded += 1;
            Outcome::forward(departure(), job.reason, vip_id, backend_id)
        }
        // Never an ICMP error about an ICMP error.
        Encapsulated::TooBig if job.kind == JOB_ICMP_ERROR => {
            counters.too_big_dropped += 1;
            Outcome::drop(reason::TOO_BIG_DROPPED, vip_id, backend_id)
        }
        Encapsulated::TooBig => {
            let path = pmtu::Path {
                mtu: backend.mtu,
                overhead: overhead(backend) as u16,
            };
            if pmtu::answer(ctx, &job.key, &path, counters) == xdp_action::XDP_TX {
                Outcome::reply(reason::TOO_BIG_ANSWERED, vip_id)
            } else {
                Outcome::drop(reason::TOO_BIG_DROPPED, vip_id, backend_id)
            }
        }
        Encapsulated::TooShort => Outcome::drop(reason::TOO_SHORT, vip_id, backend_id),
    }
}

/// What [`encapsulate`] did.
enum Encapsulated {
    /// The frame is the encapsulated packet.
    Yes,
    /// The packet is too big for the tunnel; the frame is unchanged.
    TooBig,
    /// The frame could not be rewritten.
    TooShort,
}

/// The bytes `backend`'s method puts in front of a packet.
#[inline(always)]
fn overhead(backend: &Backend) -> usize {
    let ip = if backend.family == FAMILY_V6 {
        IPV6_HLEN
    } else {
        IPV4_HLEN
    };
    if backend.forward == FORWARD_GUE {
        ip + UDP_HLEN
    } else {
        ip
    }
}

/// Puts the frame's packet inside the outer headers of `backend`'s method.
#[inline(always)]
fn encapsulate(ctx: &XdpContext, backend: &Backend, key: &FlowKey) -> Encapsulated {
    let frame = XdpFrame::new(ctx);
    let overhead = overhead(backend);
    let Some(inner_len) = frame.len().checked_sub(ETH_HLEN) else {
        return Encapsulated::TooShort;
    };
    if inner_len + overhead > usize::from(backend.mtu) {
        return Encapsulated::TooBig;
    }
    let Some(inner) = Inner::of(&frame, key) else {
        return Encapsulated::TooShort;
    };
    // SAFETY: the context is the program's own; every pointer into the
    // frame is taken afresh below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(overhead as i32)) } != 0 {
        return Encapsulated::TooShort;
    }
    match write_outer(ctx, backend, key, &inner, inner_len) {
        Some(()) => Encapsulated::Yes,
        None => Encapsulated::TooShort,
    }
}

/// Writes the outer headers in front of the inner packet (`inner_len`
/// bytes), in the room made for them.
#[inline(always)]
fn write_outer(
    ctx: &XdpContext,
    backend: &Backend,
    key: &FlowKey,
    inner: &Inner,
    inner_len: usize,
) -> Option<()> {
    let gue = backend.forward == FORWARD_GUE;
    let outer_v6 = backend.family == FAMILY_V6;
    let frame = XdpFrame::new(ctx);
    let hash = flow_label_hash(&key.src, key.sport, key.dport);
    let ethertype = if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP };
    write(&frame, 0, backend.mac)?;
    write(&frame, 6, inner.our_mac)?;
    write(&frame, 12, ethertype.to_be_bytes())?;
    let payload = inner_len as u16 + if gue { UDP_HLEN as u16 } else { 0 };
    let proto = if gue { IPPROTO_UDP } else { inner.proto };
    let ip_len = if outer_v6 {
        write(
            &frame,
            ETH_HLEN,
            ipv6_fixed(proto, inner.class, hash, payload),
        )?;
        write(&frame, ETH_HLEN + 8, backend.tunnel_source)?;
        write(&frame, ETH_HLEN + 24, backend.addr)?;
        IPV6_HLEN
    } else {
        let header = ipv4_header(
            v4(&backend.tunnel_source),
            v4(&backend.addr),
            proto,
            inner.class,
            payload,
        );
        write(&frame, ETH_HLEN, header)?;
        IPV4_HLEN
    };
    if gue {
        let udp = gue_udp_header(gue_source_port(hash), backend.gue_port, inner_len as u16);
        write(&frame, ETH_HLEN + ip_len, udp)?;
    }
    Some(())
}

/// What the outer headers take from the frame before they are prepended.
struct Inner {
    /// This interface's MAC (the frame's destination).
    our_mac: [u8; 6],
    /// IPIP protocol number of the inner packet (4 or 41).
    proto: u8,
    /// Its DSCP and ECN, copied to the outer header (RFC 6040 normal mode).
    class: u8,
}

impl Inner {
    #[inline(always)]
    fn of(frame: &XdpFrame, key: &FlowKey) -> Option<Self> {
        let our_mac = frame.ptr_mut::<[u8; 6]>(0)?;
        // SAFETY: ptr_mut checked the bytes against data_end.
        let our_mac = unsafe { core::ptr::read_unaligned(our_mac) };
        let (proto, class) = if key.family == FAMILY_V6 {
            // SAFETY: as above; headers are byte arrays (alignment 1).
            let header = unsafe { &*frame.ptr_mut::<Ipv6Header>(ETH_HLEN)? };
            (IPPROTO_IPV6, ipv6_class(header.version_class_flow))
        } else {
            // SAFETY: as above.
            let header = unsafe { &*frame.ptr_mut::<Ipv4Header>(ETH_HLEN)? };
            (IPPROTO_IPIP, header.tos)
        };
        Some(Self {
            our_mac,
            proto,
            class,
        })
    }
}

/// The first four bytes of an address field (an IPv4 address).
#[inline(always)]
fn v4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

/// The action that sends a frame, already addressed to its next hop from
/// the interface it came in on, out of the interface in egress slot
/// `slot` ([`Backend::egress`]): `XDP_TX` when that is the one it came in
/// on (or the slot is 0 or empty), else the source MAC made the other
/// interface's and a redirect through the device map (a drop if the map
/// lost the interface).
#[inline(always)]
pub fn depart(ctx: &XdpContext, frame: &XdpFrame, slot: u8) -> u32 {
    if slot == 0 {
        return xdp_action::XDP_TX;
    }
    let Some(egress) = LB_EGRESS.get(u32::from(slot)) else {
        return xdp_action::XDP_TX;
    };
    // SAFETY: the context pointer is valid for the program's run.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if egress.ifindex == 0 || egress.ifindex == ingress {
        return xdp_action::XDP_TX;
    }
    if write(frame, 6, egress.mac).is_none() {
        return xdp_action::XDP_DROP;
    }
    redirect(ctx, egress.ifindex)
}

/// The action that sends a frame, its MACs already those of the way out,
/// out of interface `ifindex`: `XDP_TX` when it came in there, a redirect
/// when it is another of lb's, `None` when it is none of lb's (the kernel
/// must forward it).
#[inline(always)]
pub fn leaves_by(ctx: &XdpContext, ifindex: u32) -> Option<u32> {
    // SAFETY: the context pointer is valid for the program's run.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if ifindex == ingress {
        return Some(xdp_action::XDP_TX);
    }
    LB_IFACES.get_ifindex(ifindex)?;
    Some(redirect(ctx, ifindex))
}

/// Redirects the frame to lb's interface `ifindex`, counted there:
/// `XDP_REDIRECT`, or a drop when the device map no longer has it.
#[inline(always)]
fn redirect(ctx: &XdpContext, ifindex: u32) -> u32 {
    let action = LB_IFACES
        .redirect(ifindex, u64::from(xdp_action::XDP_DROP))
        .unwrap_or_else(|action| action);
    if action == xdp_action::XDP_REDIRECT {
        if let Some(counters) = LB_IFACE_STATS.get_ptr_mut(ifindex) {
            // SAFETY: per-CPU value: nothing else touches it during this run.
            let counters = unsafe { &mut *counters };
            counters.redirected_packets += 1;
            counters.redirected_bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    action
}

/// Writes `value` at `offset` of the frame; `None` if it doesn't fit.
#[inline(always)]
pub fn write<T>(frame: &XdpFrame, offset: usize, value: T) -> Option<()> {
    let at = frame.ptr_mut::<T>(offset)?;
    // SAFETY: ptr_mut checked the range against data_end; T is a header
    // of byte arrays, so any address suits it.
    unsafe { core::ptr::write_unaligned(at, value) };
    Some(())
}

/// Counts a forwarded packet for its VIP and its worker.
#[inline(always)]
pub fn count_forwarded(vip_id: u32, backend_id: u32, len: u64, new_flow: bool) {
    count_traffic(&LB_VIP_STATS, vip_id, len, new_flow);
    count_traffic(&LB_BACKEND_STATS, backend_id, len, new_flow);
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
