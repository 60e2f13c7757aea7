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
/// ICMP and ICMPv6 headers: type, code, checksum and four more bytes.
const ICMP_HLEN: usize = 8;
/// Fragment offset bits of the IPv4 flags/offset field.
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// A header laid over frame bytes.
///
/// # Safety
///
/// Implementors are `#[repr(C)]` structs of `u8` and byte arrays only:
/// alignment 1, no padding, every bit pattern valid.
pub unsafe trait Header {}

// SAFETY: a byte has alignment 1 and no invalid values.
unsafe impl Header for u8 {}
// SAFETY: byte arrays have alignment 1 and no invalid values.
unsafe impl<const N: usize> Header for [u8; N] {}

/// Read access to a frame's bytes.
pub trait Frame {
    /// Length of the frame in bytes.
    fn len(&self) -> usize;

    /// Whether the frame has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The header `T` at `offset`, or `None` when it does not lie wholly
    /// inside the frame.
    fn get<T: Header>(&self, offset: usize) -> Option<&T>;
}

impl Frame for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn get<T: Header>(&self, offset: usize) -> Option<&T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get(offset..end)?;
        // SAFETY: `bytes` spans size_of::<T>() bytes, and `Header` types have
        // alignment 1 and accept any bit pattern.
        Some(unsafe { &*bytes.as_ptr().cast::<T>() })
    }
}

/// The fixed part of an IPv4 header.
#[repr(C)]
pub struct Ipv4Header {
    /// Version (high nibble) and header length in 32-bit words.
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Total length.
    pub total_len: [u8; 2],
    /// Identification.
    pub id: [u8; 2],
    /// Flags and fragment offset.
    pub frag: [u8; 2],
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub proto: u8,
    /// Header checksum.
    pub check: [u8; 2],
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
}

/// An IPv6 header.
#[repr(C)]
pub struct Ipv6Header {
    /// Version (high nibble), traffic class and flow label.
    pub version_class_flow: [u8; 4],
    /// Payload length.
    pub payload_len: [u8; 2],
    /// Next header.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
}

/// The fixed part of a TCP header.
#[repr(C)]
pub struct TcpHeader {
    /// Source port.
    pub sport: [u8; 2],
    /// Destination port.
    pub dport: [u8; 2],
    /// Sequence number.
    pub seq: [u8; 4],
    /// Acknowledgement number.
    pub ack: [u8; 4],
    /// Data offset in 32-bit words (high nibble).
    pub data_offset: u8,
    /// Flags (FIN, SYN, RST, PSH, ACK, ...).
    pub flags: u8,
    /// Window.
    pub window: [u8; 2],
    /// Checksum.
    pub check: [u8; 2],
    /// Urgent pointer.
    pub urgent: [u8; 2],
}

/// A UDP header.
#[repr(C)]
pub struct UdpHeader {
    /// Source port.
    pub sport: [u8; 2],
    /// Destination port.
    pub dport: [u8; 2],
    /// Length of header and payload.
    pub len: [u8; 2],
    /// Checksum.
    pub check: [u8; 2],
}

// SAFETY: repr(C) structs of u8 and byte arrays only.
unsafe impl Header for Ipv4Header {}
// SAFETY: as above.
unsafe impl Header for Ipv6Header {}
// SAFETY: as above.
unsafe impl Header for TcpHeader {}
// SAFETY: as above.
unsafe impl Header for UdpHeader {}

/// IP version of a parsed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// The headers of an IP packet that lb cares about.
// The addresses come first, 8-byte aligned, so that widening an IPv4
// address and copying either into a flow key are word stores rather than
// the byte loops of an out-of-line memset and memcpy.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    /// Source address; IPv4 uses the first four bytes, the rest are zero.
    pub src: [u8; 16],
    /// Destination address, laid out like `src`.
    pub dst: [u8; 16],
    /// Offset of the IP header in the frame.
    pub l3_offset: usize,
    /// Offset of the transport header in the frame.
    pub l4_offset: usize,
    /// Source port in network byte order; zero when there is none.
    pub sport: u16,
    /// Destination port in network byte order; zero when there is none.
    pub dport: u16,
    /// IPv4 or IPv6.
    pub version: IpVersion,
    /// IP protocol / IPv6 next header.
    pub proto: u8,
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
    let Some(ethertype) = frame.get::<[u8; 2]>(12) else {
        return Parsed::NotIp;
    };
    match u16::from_be_bytes(*ethertype) {
        ETH_P_IP => parse_ipv4(frame, ETH_HLEN),
        ETH_P_IPV6 => parse_ipv6(frame, ETH_HLEN),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(frame: &F, l3: usize) -> Parsed {
    let Some(header) = frame.get::<Ipv4Header>(l3) else {
        return Parsed::Malformed;
    };
    let ihl = usize::from(header.version_ihl & 0x0f) * 4;
    if header.version_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Parsed::Malformed;
    }
    let total = usize::from(u16::from_be_bytes(header.total_len));
    let end = l3 + total;
    // Ethernet padding may follow `end`; a packet inside the frame and no
    // shorter than its header has its options inside the frame too.
    if total < ihl || end > frame.len() {
        return Parsed::Malformed;
    }
    let later_fragment = u16::from_be_bytes(header.frag) & IPV4_OFFSET_MASK != 0;
    let packet = IpPacket {
        version: IpVersion::V4,
        l3_offset: l3,
        l4_offset: l3 + ihl,
        proto: header.proto,
        src: widen(header.src),
        dst: widen(header.dst),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        later_fragment,
    };
    if later_fragment {
        return Parsed::Ip(packet);
    }
    parse_l4(frame, packet, end)
}

/// IPv6 extension headers lb walks past (hop-by-hop, routing,
/// destination options; fragment separately), at most this many.
const MAX_IPV6_EXTENSIONS: usize = 4;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized>(frame: &F, l3: usize) -> Parsed {
    let Some(header) = frame.get::<Ipv6Header>(l3) else {
        return Parsed::Malformed;
    };
    if header.version_class_flow[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    // XDP never sees jumbograms, so payload length 0 means an empty payload.
    let end = l3 + IPV6_HLEN + usize::from(u16::from_be_bytes(header.payload_len));
    if end > frame.len() {
        return Parsed::Malformed;
    }
    let mut next = header.next_header;
    let mut at = l3 + IPV6_HLEN;
    let mut later_fragment = false;
    let mut walked = 0;
    while walked < MAX_IPV6_EXTENSIONS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                let Some(ext) = frame.get::<[u8; 2]>(at) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                at += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let Some(ext) = frame.get::<[u8; 4]>(at) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                later_fragment = u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0;
                at += 8;
            }
            _ => break,
        }
        walked += 1;
    }
    // One check after the walk: a header ending beyond the payload moves
    // `at` beyond it too.
    if at > end {
        return Parsed::Malformed;
    }
    let packet = IpPacket {
        version: IpVersion::V6,
        l3_offset: l3,
        l4_offset: at,
        proto: next,
        src: header.src,
        dst: header.dst,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        later_fragment,
    };
    if later_fragment {
        return Parsed::Ip(packet);
    }
    parse_l4(frame, packet, end)
}

/// Parses the transport header of `packet`, which must end by `end`, the
/// end of the IP packet (at most the frame's length).
#[inline(always)]
fn parse_l4<F: Frame + ?Sized>(frame: &F, mut packet: IpPacket, end: usize) -> Parsed {
    let l4 = packet.l4_offset;
    match packet.proto {
        IPPROTO_TCP => {
            let Some(tcp) = frame.get::<TcpHeader>(l4) else {
                return Parsed::Malformed;
            };
            let hlen = usize::from(tcp.data_offset >> 4) * 4;
            // Ending by `end` puts the options inside the frame as well.
            if hlen < TCP_MIN_HLEN || l4 + hlen > end {
                return Parsed::Malformed;
            }
            packet.sport = u16::from_ne_bytes(tcp.sport);
            packet.dport = u16::from_ne_bytes(tcp.dport);
            packet.tcp_flags = tcp.flags;
        }
        IPPROTO_UDP => {
            let Some(udp) = frame.get::<UdpHeader>(l4) else {
                return Parsed::Malformed;
            };
            if l4 + core::mem::size_of::<UdpHeader>() > end {
                return Parsed::Malformed;
            }
            packet.sport = u16::from_ne_bytes(udp.sport);
            packet.dport = u16::from_ne_bytes(udp.dport);
        }
        // lb answers echoes and forwards errors: their 8-byte header must
        // lie within the IP packet, not in the frame's padding.
        IPPROTO_ICMP | IPPROTO_ICMPV6 if is_icmp(&packet) && l4 + ICMP_HLEN > end => {
            return Parsed::Malformed;
        }
        _ => {}
    }
    Parsed::Ip(packet)
}

/// Whether the packet's transport is ICMP of its IP version.
#[inline(always)]
fn is_icmp(packet: &IpPacket) -> bool {
    match packet.version {
        IpVersion::V4 => packet.proto == IPPROTO_ICMP,
        IpVersion::V6 => packet.proto == IPPROTO_ICMPV6,
    }
}

/// The IPv4 address in an IPv6-sized field. Built from words: zeroing
/// the twelve bytes as bytes compiles to a call of the byte-by-byte
/// memset the BPF target links in.
#[inline(always)]
pub fn widen(v4: [u8; 4]) -> [u8; 16] {
    let words = [u32::from_ne_bytes(v4), 0, 0, 0];
    // SAFETY: same size, and every bit pattern is a valid value of both.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
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
                (IpVersion::V6, _) if p.later_fragment => &mut self.ipv6_other,
                (IpVersion::V6, IPPROTO_TCP) => &mut self.ipv6_tcp,
                (IpVersion::V6, IPPROTO_UDP) => &mut self.ipv6_udp,
                (IpVersion::V6, IPPROTO_ICMPV6) => &mut self.ipv6_icmp,
                (IpVersion::V6, _) => &mut self.ipv6_other,
            },
        };
        *field += 1;
    }
}
