//! Test frames built from readable descriptions: Ethernet, IPv4 or IPv6,
//! TCP or UDP, with correct lengths and IPv4 header checksum. Used by the
//! benchmarks and the packet tests.

use std::net::IpAddr;

use lb_common::packet::{ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP};

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
}

/// A test packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source address (the family decides IPv4 or IPv6).
    pub src: IpAddr,
    /// Destination address, of the same family.
    pub dst: IpAddr,
    /// TCP or UDP.
    pub transport: Transport,
    /// TTL or hop limit.
    pub ttl: u8,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// The balancer's MAC in test frames.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The client's (or router's) MAC in test frames.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

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

    fn new(src: IpAddr, dst: IpAddr, transport: Transport) -> Self {
        Self {
            src_mac: CLIENT_MAC,
            dst_mac: LB_MAC,
            src,
            dst,
            transport,
            ttl: 64,
            payload: b"lb test payload".to_vec(),
        }
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let l4 = self.transport_bytes();
        let mut frame = Vec::with_capacity(14 + 40 + l4.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        let proto = match self.transport {
            Transport::Tcp { .. } => IPPROTO_TCP,
            Transport::Udp { .. } => IPPROTO_UDP,
        };
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let total = (20 + l4.len()) as u16;
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[6] = 0x40; // don't fragment
                ip[8] = self.ttl;
                ip[9] = proto;
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                let check = ipv4_checksum(&ip);
                ip[10..12].copy_from_slice(&check.to_be_bytes());
                frame.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
                ip[6] = proto;
                ip[7] = self.ttl;
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                frame.extend_from_slice(&ip);
            }
            _ => panic!("test packet with mixed address families"),
        }
        frame.extend_from_slice(&l4);
        frame
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
        };
        bytes.extend_from_slice(&self.payload);
        bytes
    }
}

/// The one's complement checksum of an IPv4 header (its checksum field
/// zero).
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
