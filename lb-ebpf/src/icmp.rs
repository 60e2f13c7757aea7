//! ICMP to VIP addresses: echo requests are answered here (the VIP lives
//! on the workers' loopbacks, so nobody else would), errors about a
//! balanced flow go to the flow's worker by its VIP's method (Path MTU
//! discovery needs the "fragmentation needed" / "packet too big" to reach
//! the sender), translated for NAT workers (`nat_icmp`), as are errors
//! from a NAT worker's side about the packets lb sent it.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    balancer::{is_nat, Backend, FlowKey, VipAddrKey, VipKey},
    capture::{reason, NO_ID},
    counters::GlobalCounters,
    decide,
    icmp::{
        checksum_update, classify, EmbeddedFlow, IcmpMessage, ICMPV6_ECHO_REPLY, ICMP_ECHO_REPLY,
    },
    packet::{IpPacket, IpVersion, Ipv4Header, Ipv6Header},
};

use lb_ebpf::frame::XdpFrame;

use crate::{
    capture::Outcome,
    flow,
    maps::{XdpMaps, LB_BACKENDS, LB_VIPS, LB_VIP_ADDRS},
    nat_icmp, transmit,
};

/// Handles an ICMP packet; `None` passes it to the kernel.
#[inline(always)]
pub fn handle(
    ctx: &XdpContext,
    frame: &XdpFrame,
    ip: &IpPacket,
    family: u8,
    counters: &mut GlobalCounters,
) -> Option<Outcome> {
    match classify(frame, ip) {
        IcmpMessage::EchoRequest => {
            let key = VipAddrKey {
                addr: ip.dst,
                family,
                pad: [0; 3],
            };
            // SAFETY: only tested for presence.
            unsafe { LB_VIP_ADDRS.get(&key) }?;
            answer_echo(frame, ip)?;
            counters.icmp_echo_replies += 1;
            Some(Outcome::reply(reason::ECHO_REPLY, NO_ID))
        }
        IcmpMessage::Error(embedded) => {
            let Some((key, backend_id, backend)) = worker_of(&embedded, family) else {
                return nat_icmp::from_worker(ctx, &embedded, family, ip.l4_offset);
            };
            if is_nat(backend.forward) {
                let l4 = ip.l4_offset;
                return Some(nat_icmp::to_worker(
                    ctx, &key, backend_id, backend, l4, counters,
                ));
            }
            transmit::error_to_worker(ctx, frame, &key, backend_id, backend, counters)
        }
        IcmpMessage::Other => None,
    }
}

/// The flow the error is about and the worker that owns it: the one its
/// flow entry names or, when the flow table has forgotten it, the one the
/// scheduler picks (the same one, unless the workers changed since).
#[inline(always)]
fn worker_of(embedded: &EmbeddedFlow, family: u8) -> Option<(FlowKey, u32, &'static Backend)> {
    let flow = flow::Flow {
        key: FlowKey {
            src: embedded.client,
            dst: embedded.vip,
            sport: embedded.client_port,
            dport: embedded.vip_port,
            proto: embedded.proto,
            family,
            pad: [0; 2],
        },
        tcp_flags: 0,
        is_tcp: false,
    };
    let backend_id = match flow::recorded_worker(&flow.key) {
        Some(id) => id,
        None => {
            let vip_key = VipKey {
                addr: embedded.vip,
                port: embedded.vip_port,
                proto: embedded.proto,
                family,
            };
            // SAFETY: copied out at once.
            let vip = unsafe { LB_VIPS.get(&vip_key) }.copied()?;
            decide::schedule(&XdpMaps, &flow.key, &vip).worker()?
        }
    };
    Some((flow.key, backend_id, LB_BACKENDS.get(backend_id)?))
}

/// Turns an echo request into its reply in place: addresses swapped (no
/// checksum changes), type changed (checksum updated), MACs swapped.
#[inline(always)]
fn answer_echo(frame: &XdpFrame, ip: &IpPacket) -> Option<()> {
    let icmp = frame.ptr_mut::<[u8; 4]>(ip.l4_offset)?;
    // SAFETY: ptr_mut checked every pointer against data_end; headers are
    // byte arrays (alignment 1).
    unsafe {
        match ip.version {
            IpVersion::V4 => {
                let header = &mut *frame.ptr_mut::<Ipv4Header>(ip.l3_offset)?;
                core::mem::swap(&mut header.src, &mut header.dst);
                set_type(&mut *icmp, ICMP_ECHO_REPLY);
            }
            IpVersion::V6 => {
                let header = &mut *frame.ptr_mut::<Ipv6Header>(ip.l3_offset)?;
                core::mem::swap(&mut header.src, &mut header.dst);
                set_type(&mut *icmp, ICMPV6_ECHO_REPLY);
            }
        }
    }
    frame.readdress(None).then_some(())
}

/// Sets the ICMP type (first byte of the first checksummed word) and
/// updates the checksum.
#[inline(always)]
fn set_type(header: &mut [u8; 4], kind: u8) {
    let old = u16::from_be_bytes([header[0], header[1]]);
    header[0] = kind;
    let new = u16::from_be_bytes([header[0], header[1]]);
    let check = u16::from_be_bytes([header[2], header[3]]);
    let [hi, lo] = checksum_update(check, old, new).to_be_bytes();
    header[2] = hi;
    header[3] = lo;
}
