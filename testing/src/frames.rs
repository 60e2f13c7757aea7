//! Test frames built from readable descriptions: Ethernet, IPv4 or IPv6,
//! TCP or UDP, with correct lengths (unless a test claims others) and IPv4
//! header checksum. Used by the benchmarks and the packet tests.

use std::net::IpAddr;

use lb_common::{
    balancer::FlowKey,
    packet::{ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP},
};
use lb_userspace::service::addr_bytes;

/// TCP flag bits.
pub mod tcp {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// The transport part of a test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP with these flags.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Flags ([`tcp`]).
        flags: u8,
    },
    /// UDP.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMP (or ICMPv6 for IPv6): type, code, the 4 bytes after the
    /// checksum; the payload follows.
    Icmp {
        /// Type.
        kind: u8,
        /// Code.
        code: u8,
        /// Rest of the header (identifier/sequence, or MTU).
        rest: [u8; 4],
    },
    /// Any other protocol: just the payload.
    Raw {
        /// The IP protocol number.
        proto: u8,
    },
}

/// IP fragmentation of a test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset in 8-byte units.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
}

/// A test packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// 802.1Q tag (VLAN id), if tagged.
    pub vlan: Option<u16>,
    /// Source address (the family decides IPv4 or IPv6).
    pub src: IpAddr,
    /// Destination address, of the same family.
    pub dst: IpAddr,
    /// IPv4 options (padded to a multiple of 4 bytes).
    pub ipv4_options: Vec<u8>,
    /// An IPv6 hop-by-hop options header before the transport header.
    pub ipv6_hop_by_hop: bool,
    /// Fragmentation (IPv4 header fields, or an IPv6 fragment header).
    pub fragment: Option<Fragment>,
    /// TCP, UDP, ICMP or another protocol.
    pub transport: Transport,
    /// TTL or hop limit.
    pub ttl: u8,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Zero bytes appended to reach this frame length (Ethernet padding).
    pub pad_to: usize,
    /// IPv4 total length or IPv6 payload length to claim instead of the
    /// true one (the IPv4 checksum covers the claimed one).
    pub ip_len: Option<u16>,
}

/// The balancer's MAC in test frames.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The client's (or router's) MAC in test frames.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

const ETH_P_8021Q: u16 = 0x8100;
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_FRAGMENT: u8 = 44;

impl Packet {
    /// A TCP packet from the client MAC to the balancer MAC.
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Self {
        Self::new(
            src,
            dst,
            Transport::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    /// A UDP packet from the client MAC to the balancer MAC.
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self::new(src, dst, Transport::Udp { sport, dport })
    }

    /// A packet of any transport from the client MAC to the balancer MAC.
    pub fn new(src: IpAddr, dst: IpAddr, transport: Transport) -> Self {
        Self {
            src_mac: CLIENT_MAC,
            dst_mac: LB_MAC,
            vlan: None,
            src,
            dst,
            ipv4_options: Vec::new(),
            ipv6_hop_by_hop: false,
            fragment: None,
            transport,
            ttl: 64,
            payload: b"lb test payload".to_vec(),
            pad_to: 0,
            ip_len: None,
        }
    }

    fn proto(&self) -> u8 {
        match self.transport {
            Transport::Tcp { .. } => IPPROTO_TCP,
            Transport::Udp { .. } => IPPROTO_UDP,
            Transport::Icmp { .. } if self.src.is_ipv4() => 1,
            Transport::Icmp { .. } => 58,
            Transport::Raw { proto } => proto,
        }
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let l4 = self.transport_bytes();
        let mut frame = Vec::with_capacity(18 + 60 + l4.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        if let Some(vlan) = self.vlan {
            frame.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            frame.extend_from_slice(&vlan.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
                frame.extend_from_slice(&self.ipv4_header(src.octets(), dst.octets(), l4.len()));
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                frame.extend_from_slice(&self.ipv6_headers(src.octets(), dst.octets(), l4.len()));
            }
            _ => panic!("test packet with mixed address families"),
        }
        frame.extend_from_slice(&l4);
        if frame.len() < self.pad_to {
            frame.resize(self.pad_to, 0);
        }
        frame
    }

    fn ipv4_header(&self, src: [u8; 4], dst: [u8; 4], l4_len: usize) -> Vec<u8> {
        let mut options = self.ipv4_options.clone();
        options.resize(options.len().div_ceil(4) * 4, 0);
        let header_len = 20 + options.len();
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | (header_len / 4) as u8;
        let total = self.ip_len.unwrap_or((header_len + l4_len) as u16);
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let frag = match self.fragment {
            None => 0x4000, // don't fragment
            Some(f) => f.offset & 0x1fff | if f.more { 0x2000 } else { 0 },
        };
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = self.proto();
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        ip.extend_from_slice(&options);
        let check = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        ip
    }

    fn ipv6_headers(&self, src: [u8; 16], dst: [u8; 16], l4_len: usize) -> Vec<u8> {
        // Extension headers in order: hop-by-hop, then fragment.
        let mut chain: Vec<(u8, [u8; 8])> = Vec::new();
        if self.ipv6_hop_by_hop {
            // Next header filled below; PadN option fills the 6 bytes.
            chain.push((NEXT_HOP_BY_HOP, [0, 0, 1, 4, 0, 0, 0, 0]));
        }
        if let Some(f) = self.fragment {
            let field = (f.offset << 3) | u16::from(f.more);
            let [hi, lo] = field.to_be_bytes();
            chain.push((NEXT_FRAGMENT, [0, 0, hi, lo, 0, 0, 0, 1]));
        }
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        let payload = self.ip_len.unwrap_or((chain.len() * 8 + l4_len) as u16);
        ip[4..6].copy_from_slice(&payload.to_be_bytes());
        ip[6] = chain.first().map_or(self.proto(), |(kind, _)| *kind);
        ip[7] = self.ttl;
        ip[8..24].copy_from_slice(&src);
        ip[24..40].copy_from_slice(&dst);
        for (i, (_, mut header)) in chain.iter().copied().enumerate() {
            header[0] = chain.get(i + 1).map_or(self.proto(), |(kind, _)| *kind);
            ip.extend_from_slice(&header);
        }
        ip
    }

    fn transport_bytes(&self) -> Vec<u8> {
        let mut bytes = match self.transport {
            Transport::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut tcp = vec![0u8; 20];
                tcp[0..2].copy_from_slice(&sport.to_be_bytes());
                tcp[2..4].copy_from_slice(&dport.to_be_bytes());
                tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
                tcp[12] = 5 << 4;
                tcp[13] = flags;
                tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
                tcp
            }
            Transport::Udp { sport, dport } => {
                let mut udp = vec![0u8; 8];
                udp[0..2].copy_from_slice(&sport.to_be_bytes());
                udp[2..4].copy_from_slice(&dport.to_be_bytes());
                let len = (8 + self.payload.len()) as u16;
                udp[4..6].copy_from_slice(&len.to_be_bytes());
                udp
            }
            Transport::Icmp { kind, code, rest } => {
                let mut icmp = vec![kind, code, 0, 0];
                icmp.extend_from_slice(&rest);
                icmp
            }
            Transport::Raw { .. } => Vec::new(),
        };
        bytes.extend_from_slice(&self.payload);
        if let (Transport::Icmp { .. }, IpAddr::V4(_)) = (self.transport, self.src) {
            let check = ipv4_checksum(&bytes);
            bytes[2..4].copy_from_slice(&check.to_be_bytes());
        }
        bytes
    }
}

/// The flow-table key of `packet`'s flow.
pub fn flow_key(packet: &Packet) -> FlowKey {
    let (sport, dport, proto) = match packet.transport {
        Transport::Tcp { sport, dport, .. } => (sport, dport, 6),
        Transport::Udp { sport, dport } => (sport, dport, 17),
        _ => panic!("no ports"),
    };
    let (src, family) = addr_bytes(packet.src);
    let (dst, _) = addr_bytes(packet.dst);
    FlowKey {
        src,
        dst,
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        family,
        pad: [0; 2],
    }
}

/// An ICMP error from a router about `about` (a packet a worker sent).
pub fn error_about(router: IpAddr, about: &Packet) -> Packet {
    let (kind, code, rest) = if router.is_ipv4() {
        (3, 4, [0, 0, 0x05, 0x00]) // fragmentation needed, MTU 1280
    } else {
        (2, 0, [0, 0, 0x05, 0x00]) // packet too big, MTU 1280
    };
    let mut packet = Packet::new(router, about.src, Transport::Icmp { kind, code, rest });
    let embedded = about.build();
    packet.payload = embedded[14..]
        .iter()
        .copied()
        .take(if router.is_ipv4() { 28 } else { 48 })
        .collect();
    packet
}

/// Where the transport header of a frame built by [`Packet::build`]
/// (no VLAN tag, IPv4 options or IPv6 extension headers) starts, and its
/// protocol.
fn transport_of(frame: &[u8]) -> (usize, u8) {
    if frame[12..14] == ETH_P_IPV6.to_be_bytes() {
        (54, frame[20])
    } else {
        (14 + usize::from(frame[14] & 0x0f) * 4, frame[23])
    }
}

/// The checksum over the TCP, UDP or ICMPv6 pseudo-header (none for
/// ICMP) and segment of `frame`, its checksum field as is: 0 when it
/// verifies.
fn transport_sum(frame: &[u8]) -> u16 {
    let (l4, proto) = transport_of(frame);
    let segment = &frame[l4..];
    let mut pseudo = Vec::new();
    if frame[12..14] == ETH_P_IPV6.to_be_bytes() {
        pseudo.extend_from_slice(&frame[22..54]);
        pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    } else if proto != 1 {
        pseudo.extend_from_slice(&frame[26..34]);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    }
    pseudo.extend_from_slice(segment);
    ipv4_checksum(&pseudo)
}

/// Where the checksum of a transport header of protocol `proto` lies.
fn check_offset(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => 2, // ICMP, ICMPv6
    }
}

/// `frame` (built by [`Packet::build`]: TCP, UDP, ICMP or ICMPv6) with
/// its transport checksum computed from scratch.
pub fn with_transport_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let (l4, proto) = transport_of(&frame);
    let at = l4 + check_offset(proto);
    frame[at..at + 2].copy_from_slice(&[0, 0]);
    let check = match transport_sum(&frame) {
        0 if proto == IPPROTO_UDP => 0xffff,
        check => check,
    };
    frame[at..at + 2].copy_from_slice(&check.to_be_bytes());
    frame
}

/// Whether every checksum of `frame` (built by [`Packet::build`], TCP or
/// UDP) verifies: the IPv4 header's, and the transport's (a UDP
/// datagram over IPv4 may have none).
pub fn checksums_valid(frame: &[u8]) -> bool {
    let (l4, proto) = transport_of(frame);
    let v4 = frame[12..14] == ETH_P_IP.to_be_bytes();
    if v4 && ipv4_checksum(&frame[14..l4]) != 0 {
        return false;
    }
    if v4 && proto == IPPROTO_UDP && frame[l4 + 6..l4 + 8] == [0, 0] {
        return true;
    }
    transport_sum(frame) == 0
}

/// The Internet checksum of `header` (an IPv4 header with its checksum
/// field zero, or an ICMP message).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::packet::{parse, Parsed};

    #[test]
    fn built_frames_parse_as_described() {
        let v4 = Packet::tcp(
            "198.51.100.1".parse().unwrap(),
            40000,
            "192.0.2.100".parse().unwrap(),
            80,
            tcp::SYN,
        );
        let Parsed::Ip(ip) = parse(v4.build().as_slice()) else {
            panic!("not IP");
        };
        assert_eq!((ip.sport, ip.dport), (40000u16.to_be(), 80u16.to_be()));
        assert_eq!(ip.tcp_flags, tcp::SYN);
        let v6 = Packet::udp(
            "2001:db8::1".parse().unwrap(),
            5000,
            "2001:db8::100".parse().unwrap(),
            53,
        );
        assert!(matches!(parse(v6.build().as_slice()), Parsed::Ip(ip) if ip.proto == IPPROTO_UDP));
    }

    #[test]
    fn transport_checksums_verify_and_catch_a_changed_byte() {
        for (src, dst) in [
            ("198.51.100.1", "192.0.2.100"),
            ("2001:db8::1", "2001:db8::100"),
        ] {
            let (src, dst) = (src.parse().unwrap(), dst.parse().unwrap());
            for packet in [
                Packet::tcp(src, 40000, dst, 80, tcp::SYN),
                Packet::udp(src, 5000, dst, 53),
            ] {
                let mut frame = with_transport_checksum(packet.build());
                assert!(checksums_valid(&frame));
                let last = frame.len() - 1;
                frame[last] ^= 1;
                assert!(!checksums_valid(&frame));
            }
        }
    }

    #[test]
    fn ipv4_checksum_verifies() {
        let frame = Packet::udp(
            "198.51.100.1".parse().unwrap(),
            1,
            "192.0.2.100".parse().unwrap(),
            2,
        )
        .build();
        assert_eq!(
            ipv4_checksum(&frame[14..34]),
            0,
            "a correct header sums to zero"
        );
    }
}
