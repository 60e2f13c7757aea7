//! ICMP and ICMPv6 messages lb acts on: echo requests to a VIP address
//! (answered by the data plane) and errors about a balanced flow (sent on
//! to the flow's worker, so that Path MTU discovery works through lb).

use crate::packet::{
    widen, Frame, IpPacket, IpVersion, Ipv4Header, Ipv6Header, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_TCP, IPPROTO_UDP,
};

/// ICMP echo request.
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMP echo reply.
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ICMP destination unreachable (code 4: fragmentation needed).
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP time exceeded.
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMPv6 destination unreachable.
pub const ICMPV6_DEST_UNREACH: u8 = 1;
/// ICMPv6 packet too big.
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// ICMPv6 time exceeded.
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// ICMPv6 echo request.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
/// ICMPv6 echo reply.
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Length of the ICMP header before an error's embedded packet.
pub const ICMP_HLEN: usize = 8;

/// The packet an ICMP error is about, seen from the client: the worker
/// sent it from the VIP to the client, so the flow it belongs to runs
/// from its destination to its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddedFlow {
    /// The client (the embedded packet's destination).
    pub client: [u8; 16],
    /// The VIP (the embedded packet's source).
    pub vip: [u8; 16],
    /// The client's port, network byte order.
    pub client_port: u16,
    /// The VIP's port, network byte order.
    pub vip_port: u16,
    /// TCP or UDP.
    pub proto: u8,
}

/// What an ICMP message means to lb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpMessage {
    /// An echo request: answer it if it is for a VIP address.
    EchoRequest,
    /// An error about a TCP or UDP packet.
    Error(EmbeddedFlow),
    /// Anything else: not lb's business.
    Other,
}

/// Classifies the ICMP or ICMPv6 message in `ip` (whose protocol must be
/// ICMP for its version).
#[inline(always)]
pub fn classify<F: Frame + ?Sized>(frame: &F, ip: &IpPacket) -> IcmpMessage {
    let Some(header) = frame.get::<[u8; 2]>(ip.l4_offset) else {
        return IcmpMessage::Other;
    };
    let kind = header[0];
    let inner = ip.l4_offset + ICMP_HLEN;
    match (ip.version, ip.proto, kind) {
        (IpVersion::V4, IPPROTO_ICMP, ICMP_ECHO_REQUEST)
        | (IpVersion::V6, IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST) => IcmpMessage::EchoRequest,
        (IpVersion::V4, IPPROTO_ICMP, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED) => {
            embedded_v4(frame, inner).map_or(IcmpMessage::Other, IcmpMessage::Error)
        }
        (
            IpVersion::V6,
            IPPROTO_ICMPV6,
            ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED,
        ) => embedded_v6(frame, inner).map_or(IcmpMessage::Other, IcmpMessage::Error),
        _ => IcmpMessage::Other,
    }
}

#[inline(always)]
fn embedded_v4<F: Frame + ?Sized>(frame: &F, at: usize) -> Option<EmbeddedFlow> {
    let header = frame.get::<Ipv4Header>(at)?;
    let ihl = usize::from(header.version_ihl & 0x0f) * 4;
    if header.version_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let (vip, client) = (widen(header.src), widen(header.dst));
    ports(frame, at + ihl, header.proto, vip, client)
}

#[inline(always)]
fn embedded_v6<F: Frame + ?Sized>(frame: &F, at: usize) -> Option<EmbeddedFlow> {
    let header = frame.get::<Ipv6Header>(at)?;
    if header.version_class_flow[0] >> 4 != 6 {
        return None;
    }
    ports(frame, at + 40, header.next_header, header.src, header.dst)
}

#[inline(always)]
fn ports<F: Frame + ?Sized>(
    frame: &F,
    at: usize,
    proto: u8,
    vip: [u8; 16],
    client: [u8; 16],
) -> Option<EmbeddedFlow> {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    // The first four bytes of TCP and UDP: source port, destination port.
    let ports = frame.get::<[u8; 4]>(at)?;
    Some(EmbeddedFlow {
        client,
        vip,
        vip_port: u16::from_ne_bytes([ports[0], ports[1]]),
        client_port: u16::from_ne_bytes([ports[2], ports[3]]),
        proto,
    })
}

/// A one's complement checksum after a 16-bit word of what it covers
/// changed from `old` to `new` (RFC 1624, eqn. 3).
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the second fold leaves at most 0xffff"
)]
pub fn checksum_update(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    let folded = (sum & 0xffff) + (sum >> 16);
    !(((folded & 0xffff) + (folded >> 16)) as u16)
}
