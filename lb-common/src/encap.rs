//! The outer headers of lb's L3 forwarding and of its "too big" answers:
//! pure functions over header structs, shared by the data plane (which
//! writes them into packets) and by user space (which documents and
//! decapsulates the same format).
//!
//! IPIP: an outer IPv4 header (protocol 4 for an inner IPv4 packet, 41
//! for IPv6) or IPv6 header (next header 4 or 41) right before the inner
//! packet. GUE (variant 1, RFC 8086 style): outer IPv4 or IPv6, then UDP to
//! the GUE port, then the inner packet; the UDP checksum is zero, over
//! IPv6 too (RFC 6935), and the source port carries the flow's hash so
//! that receivers spread flows over their queues.

use crate::packet::{Ipv4Header, UdpHeader};

/// IP protocol number of IPv4 in IP (IPIP).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6 in IP.
pub const IPPROTO_IPV6: u8 = 41;
/// Outer IPv4 header length (no options).
pub const IPV4_HLEN: usize = 20;
/// Outer IPv6 header length (no extension headers).
pub const IPV6_HLEN: usize = 40;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// Hop limit of outer headers and answers.
pub const OUTER_TTL: u8 = 64;
/// GUE port workers listen on unless told otherwise.
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// The smallest MTU an IPv6 link may have: "packet too big" never says
/// less.
pub const IPV6_MIN_MTU: u16 = 1280;
/// The IPv4 "don't fragment" flag in the flags/fragment-offset field.
pub const IPV4_DF: u16 = 0x4000;

/// The one's complement sum of `bytes` as big-endian 16-bit words, added
/// to `sum` (an odd last byte is padded with zero).
#[inline(always)]
#[expect(
    clippy::indexing_slicing,
    reason = "the loop and the test keep i + 1 and i below bytes.len()"
)]
pub fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if i < bytes.len() {
        sum += u32::from(bytes[i]) << 8;
    }
    sum
}

/// Folds a one's complement sum to 16 bits and complements it: the
/// checksum field's value.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the second fold leaves at most 0xffff"
)]
pub fn finish(sum: u32) -> u16 {
    let folded = (sum & 0xffff) + (sum >> 16);
    !(((folded & 0xffff) + (folded >> 16)) as u16)
}

/// A 20-byte IPv4 header carrying `payload_len` bytes of `proto` from
/// `src` to `dst`, DF set, checksum filled in.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "IPV4_HLEN is 20")]
pub fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, tos: u8, payload_len: u16) -> Ipv4Header {
    let mut header = Ipv4Header {
        version_ihl: 0x45,
        tos,
        total_len: (IPV4_HLEN as u16 + payload_len).to_be_bytes(),
        id: [0; 2],
        frag: IPV4_DF.to_be_bytes(),
        ttl: OUTER_TTL,
        proto,
        check: [0; 2],
        src,
        dst,
    };
    header.check = ipv4_checksum(&header).to_be_bytes();
    header
}

/// The header checksum of `header` (its own checksum field counted as
/// zero).
#[inline(always)]
pub fn ipv4_checksum(header: &Ipv4Header) -> u16 {
    let mut sum = u32::from(u16::from_be_bytes([header.version_ihl, header.tos]));
    sum += u32::from(u16::from_be_bytes(header.total_len));
    sum += u32::from(u16::from_be_bytes(header.id));
    sum += u32::from(u16::from_be_bytes(header.frag));
    sum += u32::from(u16::from_be_bytes([header.ttl, header.proto]));
    sum = sum_words(&header.src, sum);
    sum = sum_words(&header.dst, sum);
    finish(sum)
}

/// The first 8 bytes of an IPv6 header (what precedes its addresses)
/// carrying `payload_len` bytes of `next_header`, with traffic class
/// `class` and the low 20 bits of `flow` as its flow label.
#[inline(always)]
pub fn ipv6_fixed(next_header: u8, class: u8, flow: u32, payload_len: u16) -> [u8; 8] {
    let first = (6u32 << 28) | (u32::from(class) << 20) | (flow & 0x000f_ffff);
    let [a, b, c, d] = first.to_be_bytes();
    let [e, f] = payload_len.to_be_bytes();
    [a, b, c, d, e, f, next_header, OUTER_TTL]
}

/// The UDP header of a GUE packet carrying `payload_len` bytes.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "UDP_HLEN is 8")]
pub fn gue_udp_header(source_port: u16, gue_port_be: u16, payload_len: u16) -> UdpHeader {
    UdpHeader {
        sport: source_port.to_be_bytes(),
        dport: gue_port_be.to_ne_bytes(),
        len: (UDP_HLEN as u16 + payload_len).to_be_bytes(),
        check: [0; 2],
    }
}

/// GUE's outer source port for a flow hash: in the dynamic range
/// 49152–65535, so it never looks like a well-known service.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the port takes the hash's low 14 bits"
)]
pub fn gue_source_port(hash: u32) -> u16 {
    0xc000 | (hash as u16 & 0x3fff)
}

/// A cheap hash of a flow's addresses and ports, for the GUE source port
/// and the outer flow label: equal for every packet of the flow.
#[inline(always)]
#[expect(
    clippy::indexing_slicing,
    reason = "four-byte words at offsets 0, 4, 8 and 12 of a 16-byte array"
)]
pub fn flow_label_hash(src: &[u8; 16], sport: u16, dport: u16) -> u32 {
    let word = |i: usize| u32::from_ne_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]]);
    let mut h =
        word(0) ^ word(4) ^ word(8) ^ word(12) ^ (u32::from(sport) << 16 | u32::from(dport));
    h ^= h >> 16;
    h = h.wrapping_mul(0x045d_9f3b);
    h ^ (h >> 16)
}

/// The traffic class (DSCP and ECN) of an IPv6 header's first word.
#[inline(always)]
pub fn ipv6_class(first: [u8; 4]) -> u8 {
    (first[0] << 4) | (first[1] >> 4)
}

/// The MTU a "too big" answer advertises: what is left of `path_mtu` after
/// the tunnel's `overhead`, never under the IPv6 minimum for IPv6.
#[inline(always)]
pub fn advertised_mtu(path_mtu: u16, overhead: u16, ipv6: bool) -> u16 {
    let left = path_mtu.saturating_sub(overhead);
    if ipv6 {
        left.max(IPV6_MIN_MTU)
    } else {
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_header_checksums_to_zero() {
        let header = ipv4_header([192, 0, 2, 2], [203, 0, 113, 11], IPPROTO_IPIP, 0, 60);
        assert_eq!(header.total_len, 80u16.to_be_bytes());
        // SAFETY: a repr(C) struct of 20 bytes and byte arrays.
        let bytes: [u8; 20] = unsafe { core::mem::transmute(header) };
        // A correct header sums to 0xffff, i.e. checksums to zero.
        assert_eq!(finish(sum_words(&bytes, 0)), 0);
        // RFC 1071's example words.
        let words = [0x00u8, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum_words(&words, 0), 0x2_ddf0);
        assert_eq!(finish(0x2_ddf0), !0xddf2);
    }

    #[test]
    fn an_ipv6_header_has_version_class_and_label() {
        let fixed = ipv6_fixed(IPPROTO_IPV6, 0xb8, 0x0fff_2345, 100);
        assert_eq!(
            fixed,
            [0x6b, 0x8f, 0x23, 0x45, 0, 100, IPPROTO_IPV6, OUTER_TTL]
        );
        assert_eq!(ipv6_class([fixed[0], fixed[1], fixed[2], fixed[3]]), 0xb8);
    }

    #[test]
    fn gue_ports_and_advertised_mtus() {
        assert!(gue_source_port(0) >= 49152 && gue_source_port(u32::MAX) >= 49152);
        let udp = gue_udp_header(50000, 6080u16.to_be(), 52);
        assert_eq!(udp.dport, 6080u16.to_be_bytes());
        assert_eq!(udp.len, 60u16.to_be_bytes());
        assert_eq!(advertised_mtu(1500, 20, false), 1480);
        assert_eq!(advertised_mtu(1300, 48, true), 1280);
    }
}
