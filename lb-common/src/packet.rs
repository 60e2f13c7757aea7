//! Header parsing shared by the XDP program and host-side tests.
//!
//! The parser reads through [`Frame`], which the XDP program implements over
//! packet memory (with the bounds checks the verifier needs) and the host
//! implements over byte slices, so the same code is unit-tested here and
//! verified in the kernel.

use crate::counters::GlobalCounters;

/// Length of an Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// Fragment offset bits of the IPv4 flags/offset field.
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// Read access to a frame's bytes.
pub trait Frame {
    /// Length of the frame in bytes.
    fn len(&self) -> usize;

    /// Whether the frame has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the `T` at `offset`, or `None` when it does not lie wholly
    /// inside the frame. `T` must be plain bytes (integers, byte arrays).
    fn read<T: Copy>(&self, offset: usize) -> Option<T>;
}

impl Frame for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get(offset..end)?;
        // SAFETY: `bytes` holds exactly size_of::<T>() bytes and callers only
        // ask for plain-bytes types, for which every bit pattern is valid.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }
}

/// IP version of a parsed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// The headers of an IP packet that lb cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    /// IPv4 or IPv6.
    pub version: IpVersion,
    /// Offset of the IP header in the frame.
    pub l3_offset: usize,
    /// Offset of the transport header in the frame.
    pub l4_offset: usize,
    /// IP protocol / IPv6 next header.
    pub proto: u8,
    /// Source address; IPv4 uses the first four bytes, the rest are zero.
    pub src: [u8; 16],
    /// Destination address, laid out like `src`.
    pub dst: [u8; 16],
    /// Source port in network byte order; zero when there is none.
    pub sport: u16,
    /// Destination port in network byte order; zero when there is none.
    pub dport: u16,
    /// TCP flags byte (FIN=0x01, SYN=0x02, RST=0x04, ACK=0x10); zero otherwise.
    pub tcp_flags: u8,
    /// An IPv4 fragment after the first: it carries no transport header.
    pub later_fragment: bool,
}

/// What a frame turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6.
    NotIp,
    /// IP, but a header is cut short or inconsistent.
    Malformed,
    /// A well-formed IP packet.
    Ip(IpPacket),
}

/// Parses the Ethernet, IP and transport headers of `frame`.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(frame: &F) -> Parsed {
    let Some(ethertype) = frame.read::<[u8; 2]>(12) else {
        return Parsed::NotIp;
    };
    match u16::from_be_bytes(ethertype) {
        ETH_P_IP => parse_ipv4(frame, ETH_HLEN),
        ETH_P_IPV6 => parse_ipv6(frame, ETH_HLEN),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(frame: &F, l3: usize) -> Parsed {
    let Some(first) = frame.read::<u8>(l3) else {
        return Parsed::Malformed;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Parsed::Malformed;
    }
    let (Some(frag), Some(proto), Some(src), Some(dst)) = (
        frame.read::<[u8; 2]>(l3 + 6),
        frame.read::<u8>(l3 + 9),
        frame.read::<[u8; 4]>(l3 + 12),
        frame.read::<[u8; 4]>(l3 + 16),
    ) else {
        return Parsed::Malformed;
    };
    if frame.read::<u8>(l3 + ihl - 1).is_none() {
        return Parsed::Malformed;
    }
    let frag = u16::from_be_bytes(frag);
    let mut packet = IpPacket {
        version: IpVersion::V4,
        l3_offset: l3,
        l4_offset: l3 + ihl,
        proto,
        src: widen(src),
        dst: widen(dst),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        later_fragment: frag & IPV4_OFFSET_MASK != 0,
    };
    if packet.later_fragment {
        return Parsed::Ip(packet);
    }
    parse_l4(frame, &mut packet)
}

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized>(frame: &F, l3: usize) -> Parsed {
    let (Some(first), Some(next), Some(src), Some(dst)) = (
        frame.read::<u8>(l3),
        frame.read::<u8>(l3 + 6),
        frame.read::<[u8; 16]>(l3 + 8),
        frame.read::<[u8; 16]>(l3 + 24),
    ) else {
        return Parsed::Malformed;
    };
    if first >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut packet = IpPacket {
        version: IpVersion::V6,
        l3_offset: l3,
        l4_offset: l3 + IPV6_HLEN,
        proto: next,
        src,
        dst,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        later_fragment: false,
    };
    parse_l4(frame, &mut packet)
}

#[inline(always)]
fn parse_l4<F: Frame + ?Sized>(frame: &F, packet: &mut IpPacket) -> Parsed {
    let l4 = packet.l4_offset;
    match packet.proto {
        IPPROTO_TCP => {
            let (Some(ports), Some(doff), Some(flags)) = (
                frame.read::<[u16; 2]>(l4),
                frame.read::<u8>(l4 + 12),
                frame.read::<u8>(l4 + 13),
            ) else {
                return Parsed::Malformed;
            };
            let hlen = usize::from(doff >> 4) * 4;
            if hlen < TCP_MIN_HLEN || frame.read::<u8>(l4 + hlen - 1).is_none() {
                return Parsed::Malformed;
            }
            [packet.sport, packet.dport] = ports;
            packet.tcp_flags = flags;
        }
        IPPROTO_UDP => {
            let Some(ports) = frame.read::<[u16; 2]>(l4) else {
                return Parsed::Malformed;
            };
            if frame.read::<u8>(l4 + UDP_HLEN - 1).is_none() {
                return Parsed::Malformed;
            }
            [packet.sport, packet.dport] = ports;
        }
        _ => {}
    }
    Parsed::Ip(*packet)
}

#[inline(always)]
fn widen(v4: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = v4[0];
    out[1] = v4[1];
    out[2] = v4[2];
    out[3] = v4[3];
    out
}

impl GlobalCounters {
    /// Counts one frame of `len` bytes that parsed as `parsed`.
    #[inline(always)]
    pub fn count(&mut self, parsed: &Parsed, len: u64) {
        self.packets += 1;
        self.bytes += len;
        let field = match parsed {
            Parsed::NotIp => &mut self.non_ip,
            Parsed::Malformed => &mut self.malformed,
            Parsed::Ip(p) => match (p.version, p.proto) {
                (IpVersion::V4, _) if p.later_fragment => &mut self.ipv4_fragment,
                (IpVersion::V4, IPPROTO_TCP) => &mut self.ipv4_tcp,
                (IpVersion::V4, IPPROTO_UDP) => &mut self.ipv4_udp,
                (IpVersion::V4, IPPROTO_ICMP) => &mut self.ipv4_icmp,
                (IpVersion::V4, _) => &mut self.ipv4_other,
                (IpVersion::V6, IPPROTO_TCP) => &mut self.ipv6_tcp,
                (IpVersion::V6, IPPROTO_UDP) => &mut self.ipv6_udp,
                (IpVersion::V6, IPPROTO_ICMPV6) => &mut self.ipv6_icmp,
                (IpVersion::V6, _) => &mut self.ipv6_other,
            },
        };
        *field += 1;
    }
}
