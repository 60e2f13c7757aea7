//! Host tests of the header parser the XDP program runs.

use lb_common::counters::GlobalCounters;
use lb_common::packet::{
    parse, IpVersion, Parsed, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

const MACS: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

fn ether(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = MACS.to_vec();
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(proto: u8, frag: u16, options: &[u8], l4: &[u8]) -> Vec<u8> {
    let ihl = (20 + options.len()) / 4;
    let total = (20 + options.len() + l4.len()) as u16;
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&[192, 0, 2, 1, 192, 0, 2, 100]);
    h.extend_from_slice(options);
    h.extend_from_slice(l4);
    ether(0x0800, &h)
}

fn ipv6(next: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    src[15] = 1;
    let mut dst = src;
    dst[15] = 0x64;
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    ether(0x86dd, &h)
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0; 8]);
    t.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 8, 0, 0]);
    u
}

fn ip(frame: &[u8]) -> lb_common::packet::IpPacket {
    match parse(frame) {
        Parsed::Ip(p) => p,
        other => panic!("expected an IP packet, got {other:?}"),
    }
}

#[test]
fn ipv4_tcp_ports_flags_and_addresses() {
    let p = ip(&ipv4(IPPROTO_TCP, 0, &[], &tcp(40000, 80, 0x02)));
    assert_eq!(p.version, IpVersion::V4);
    assert_eq!(p.proto, IPPROTO_TCP);
    assert_eq!(u16::from_be(p.sport), 40000);
    assert_eq!(u16::from_be(p.dport), 80);
    assert_eq!(p.tcp_flags, 0x02);
    assert_eq!(&p.src[..4], &[192, 0, 2, 1]);
    assert_eq!(&p.dst[..4], &[192, 0, 2, 100]);
    assert!(p.src[4..].iter().all(|b| *b == 0));
    assert_eq!(p.l4_offset, 34);
}

#[test]
fn ipv4_options_move_the_transport_header() {
    let p = ip(&ipv4(
        IPPROTO_UDP,
        0,
        &[1, 1, 1, 1, 1, 1, 1, 0],
        &udp(5353, 53),
    ));
    assert_eq!(p.l4_offset, 14 + 28);
    assert_eq!(u16::from_be(p.dport), 53);
}

#[test]
fn ipv6_udp() {
    let p = ip(&ipv6(IPPROTO_UDP, &udp(1234, 4242)));
    assert_eq!(p.version, IpVersion::V6);
    assert_eq!(u16::from_be(p.sport), 1234);
    assert_eq!(p.dst[15], 0x64);
    assert_eq!(p.l4_offset, 54);
}

#[test]
fn later_ipv4_fragment_has_no_ports() {
    let p = ip(&ipv4(IPPROTO_TCP, 185, &[], &[0xaa; 16]));
    assert!(p.later_fragment);
    assert_eq!((p.sport, p.dport), (0, 0));
}

#[test]
fn first_ipv4_fragment_keeps_its_ports() {
    let p = ip(&ipv4(IPPROTO_UDP, 0x2000, &[], &udp(1, 2)));
    assert!(!p.later_fragment);
    assert_eq!(u16::from_be(p.dport), 2);
}

#[test]
fn arp_and_runt_frames_are_not_ip() {
    assert_eq!(parse(&ether(0x0806, &[0; 28])[..]), Parsed::NotIp);
    assert_eq!(parse(&MACS[..]), Parsed::NotIp);
    assert_eq!(parse(&[][..]), Parsed::NotIp);
}

#[test]
fn truncated_headers_at_every_boundary_are_malformed() {
    let frames = [
        ipv4(IPPROTO_TCP, 0, &[], &tcp(1, 2, 0x10)),
        ipv4(IPPROTO_UDP, 0, &[], &udp(1, 2)),
        ipv6(IPPROTO_TCP, &tcp(1, 2, 0x10)),
        ipv6(IPPROTO_UDP, &udp(1, 2)),
    ];
    for frame in &frames {
        for cut in 15..frame.len() {
            assert_eq!(
                parse(&frame[..cut]),
                Parsed::Malformed,
                "frame cut to {cut} of {} bytes",
                frame.len()
            );
        }
        assert!(matches!(parse(&frame[..]), Parsed::Ip(_)));
    }
}

#[test]
fn bogus_ihl_and_versions_are_malformed() {
    let mut short_ihl = ipv4(IPPROTO_TCP, 0, &[], &tcp(1, 2, 0));
    short_ihl[14] = 0x44;
    assert_eq!(parse(&short_ihl[..]), Parsed::Malformed);

    let mut long_ihl = ipv4(IPPROTO_UDP, 0, &[], &[]);
    long_ihl[14] = 0x4f;
    assert_eq!(parse(&long_ihl[..]), Parsed::Malformed);

    let mut v6_in_v4 = ipv4(IPPROTO_UDP, 0, &[], &udp(1, 2));
    v6_in_v4[14] = 0x65;
    assert_eq!(parse(&v6_in_v4[..]), Parsed::Malformed);

    let mut short_doff = ipv4(IPPROTO_TCP, 0, &[], &tcp(1, 2, 0));
    short_doff[14 + 20 + 12] = 4 << 4;
    assert_eq!(parse(&short_doff[..]), Parsed::Malformed);
}

#[test]
fn other_protocols_parse_without_ports() {
    let p = ip(&ipv4(IPPROTO_ICMP, 0, &[], &[8, 0, 0, 0, 0, 1, 0, 1]));
    assert_eq!(p.proto, IPPROTO_ICMP);
    assert_eq!((p.sport, p.dport), (0, 0));
}

#[test]
fn each_frame_counts_in_exactly_one_class() {
    let frames = [
        ether(0x0806, &[0; 28]),
        ipv4(IPPROTO_TCP, 0, &[], &tcp(1, 2, 0x02)),
        ipv4(IPPROTO_UDP, 0, &[], &udp(1, 2)),
        ipv4(IPPROTO_ICMP, 0, &[], &[8, 0, 0, 0, 0, 1, 0, 1]),
        ipv4(IPPROTO_TCP, 100, &[], &[0; 8]),
        ipv4(47, 0, &[], &[0; 8]),
        ipv6(IPPROTO_TCP, &tcp(1, 2, 0x02)),
        ipv6(IPPROTO_UDP, &udp(1, 2)),
        ipv6(58, &[135, 0, 0, 0, 0, 0, 0, 0]),
        ipv6(47, &[0; 8]),
        ipv4(IPPROTO_TCP, 0, &[], &[0; 4]),
    ];
    let mut counters = GlobalCounters::default();
    let mut bytes = 0;
    for frame in &frames {
        counters.count(&parse(&frame[..]), frame.len() as u64);
        bytes += frame.len() as u64;
    }
    assert_eq!(counters.packets, frames.len() as u64);
    assert_eq!(counters.bytes, bytes);
    assert_eq!(counters.class_total(), counters.packets);
    // Every class field is hit exactly once by the list above.
    let class_fields = &counters.values()[2..13];
    assert!(class_fields.iter().all(|v| *v == 1), "{counters:?}");
    assert_eq!(GlobalCounters::NAMES[12], "ipv6_other");
}

/// An IPv6 extension header: next header, then `len` × 8 + 6 bytes.
fn extension(next: u8, len: u8) -> Vec<u8> {
    let mut e = vec![next, len];
    e.resize(usize::from(len) * 8 + 8, 0);
    e
}

fn fragment_header(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let [hi, lo] = field.to_be_bytes();
    vec![next, 0, hi, lo, 0, 0, 0, 1]
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_transport_header() {
    let mut chain = extension(43, 0); // hop-by-hop, then routing
    chain.extend(extension(60, 1)); // routing (16 bytes), then destination options
    chain.extend(extension(6, 0)); // destination options, then TCP
    chain.extend(tcp(40000, 80, 0x02));
    let packet = ip(&ipv6(0, &chain));
    assert_eq!(packet.proto, 6);
    assert_eq!(
        (packet.sport, packet.dport),
        (40000u16.to_be(), 80u16.to_be())
    );
    assert_eq!(packet.l4_offset, 14 + 40 + 8 + 16 + 8);
}

#[test]
fn ipv6_fragments_first_keeps_its_ports_later_has_none() {
    let mut first = fragment_header(17, 0, true);
    first.extend(udp(5000, 53));
    let packet = ip(&ipv6(44, &first));
    assert_eq!((packet.proto, packet.dport), (17, 53u16.to_be()));
    assert!(!packet.later_fragment);
    let mut later = fragment_header(17, 185, false);
    later.extend([0u8; 16]);
    let packet = ip(&ipv6(44, &later));
    assert!(packet.later_fragment);
    assert_eq!(packet.dport, 0);
    let mut counters = lb_common::counters::GlobalCounters::default();
    counters.count(&parse(ipv6(44, &later).as_slice()), 0);
    assert_eq!(
        counters.ipv6_other, 1,
        "later IPv6 fragments count as other"
    );
}

#[test]
fn too_many_or_cut_short_ipv6_extension_headers() {
    let mut five = Vec::new();
    for _ in 0..5 {
        five.extend(extension(0, 0));
    }
    five.extend(udp(1, 2));
    assert_eq!(ip(&ipv6(0, &five)).proto, 0, "stops after four: not lb's");
    let cut = &extension(6, 1)[..10];
    assert_eq!(parse(ipv6(0, cut).as_slice()), Parsed::Malformed);
    assert_eq!(parse(ipv6(0, &[]).as_slice()), Parsed::Malformed);
}

/// `frame` with its IP length field (IPv4 total length, IPv6 payload
/// length) set to `len`.
fn with_ip_len(mut frame: Vec<u8>, len: u16) -> Vec<u8> {
    let at = if frame[14] >> 4 == 4 { 16 } else { 18 };
    frame[at..at + 2].copy_from_slice(&len.to_be_bytes());
    frame
}

/// `frame` with Ethernet padding (zero bytes) up to `len`.
fn padded(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.resize(len.max(frame.len()), 0);
    frame
}

#[test]
fn ipv4_total_length_beyond_the_frame_is_malformed() {
    for frame in [
        ipv4(IPPROTO_TCP, 0, &[], &tcp(1, 2, 0x02)),
        ipv4(IPPROTO_UDP, 0, &[], &udp(1, 2)),
        ipv4(IPPROTO_ICMP, 0, &[], &[8, 0, 0, 0, 0, 1, 0, 1]),
        ipv4(IPPROTO_TCP, 185, &[], &[0xaa; 16]),
    ] {
        let len = (frame.len() - 14) as u16;
        assert!(matches!(parse(&frame[..]), Parsed::Ip(_)));
        for claimed in [len + 1, 9000, u16::MAX] {
            let frame = with_ip_len(frame.clone(), claimed);
            assert_eq!(parse(&frame[..]), Parsed::Malformed, "total {claimed}");
        }
    }
}

#[test]
fn ipv4_total_length_shorter_than_the_headers_is_malformed() {
    let cases = [
        ("below IHL", ipv4(IPPROTO_TCP, 0, &[], &tcp(1, 2, 0x02)), 19),
        ("zero", ipv4(IPPROTO_UDP, 0, &[], &udp(1, 2)), 0),
        (
            "below IHL with options",
            ipv4(IPPROTO_UDP, 0, &[1, 1, 1, 0], &udp(1, 2)),
            20,
        ),
        (
            "IP header only, TCP",
            ipv4(IPPROTO_TCP, 0, &[], &tcp(1, 2, 0x02)),
            20,
        ),
        ("cuts TCP", ipv4(IPPROTO_TCP, 0, &[], &tcp(1, 2, 0x02)), 39),
        ("cuts UDP", ipv4(IPPROTO_UDP, 0, &[], &udp(1, 2)), 27),
        (
            "cuts UDP after options",
            ipv4(IPPROTO_UDP, 0, &[1, 1, 1, 0], &udp(1, 2)),
            31,
        ),
    ];
    for (name, frame, total) in cases {
        let frame = with_ip_len(frame, total);
        assert_eq!(parse(&frame[..]), Parsed::Malformed, "{name}");
    }
}

#[test]
fn the_icmp_header_must_lie_within_the_ip_packet() {
    // An echo request: type 8, code 0, checksum, id and sequence.
    let echo = [8u8, 0, 0, 0, 0, 1, 0, 1];
    let frame = ipv4(IPPROTO_ICMP, 0, &[], &echo);
    assert!(matches!(parse(&frame[..]), Parsed::Ip(_)));
    // Only the IP header counted: the echo sits in what would be padding.
    assert_eq!(
        parse(&with_ip_len(frame.clone(), 20)[..]),
        Parsed::Malformed
    );
    assert_eq!(parse(&with_ip_len(frame, 27)[..]), Parsed::Malformed);
    let frame = ipv6(IPPROTO_ICMPV6, &[128, 0, 0, 0, 0, 1, 0, 1]);
    assert!(matches!(parse(&frame[..]), Parsed::Ip(_)));
    assert_eq!(parse(&with_ip_len(frame, 4)[..]), Parsed::Malformed);
    // Protocol 58 means nothing under IPv4: no ICMP header is asked for.
    let frame = with_ip_len(ipv4(IPPROTO_ICMPV6, 0, &[], &[0; 8]), 20);
    assert!(matches!(parse(&frame[..]), Parsed::Ip(_)));
}

#[test]
fn tcp_options_must_end_within_the_ip_packet() {
    // Data offset 6: four option bytes, present in the frame but beyond
    // the total length.
    let mut segment = tcp(1, 2, 0x02);
    segment[12] = 6 << 4;
    segment.extend_from_slice(&[1, 1, 1, 0]);
    let frame = ipv4(IPPROTO_TCP, 0, &[], &segment);
    assert!(matches!(parse(&frame[..]), Parsed::Ip(_)));
    assert_eq!(parse(&with_ip_len(frame, 40)[..]), Parsed::Malformed);
    let frame = ipv6(IPPROTO_TCP, &segment);
    assert!(matches!(parse(&frame[..]), Parsed::Ip(_)));
    assert_eq!(parse(&with_ip_len(frame, 20)[..]), Parsed::Malformed);
}

#[test]
fn later_ipv4_fragments_need_no_transport_header_within_the_length() {
    let frame = with_ip_len(ipv4(IPPROTO_TCP, 185, &[], &[0xaa; 16]), 20);
    assert!(ip(&frame).later_fragment);
}

#[test]
fn ipv6_payload_length_beyond_the_frame_is_malformed() {
    let mut later = fragment_header(17, 185, false);
    later.extend([0u8; 16]);
    for frame in [
        ipv6(IPPROTO_TCP, &tcp(1, 2, 0x02)),
        ipv6(IPPROTO_UDP, &udp(1, 2)),
        ipv6(58, &[135, 0, 0, 0, 0, 0, 0, 0]),
        ipv6(44, &later),
    ] {
        let len = (frame.len() - 54) as u16;
        assert!(matches!(parse(&frame[..]), Parsed::Ip(_)));
        for claimed in [len + 1, 9000, u16::MAX] {
            let frame = with_ip_len(frame.clone(), claimed);
            assert_eq!(parse(&frame[..]), Parsed::Malformed, "payload {claimed}");
        }
    }
}

#[test]
fn ipv6_payload_shorter_than_its_headers_is_malformed() {
    let mut hop_udp = extension(17, 0);
    hop_udp.extend(udp(1, 2));
    let mut later = fragment_header(17, 185, false);
    later.extend([0u8; 16]);
    let cases = [
        ("zero, TCP", ipv6(IPPROTO_TCP, &tcp(1, 2, 0x02)), 0),
        ("cuts TCP", ipv6(IPPROTO_TCP, &tcp(1, 2, 0x02)), 19),
        ("zero, UDP", ipv6(IPPROTO_UDP, &udp(1, 2)), 0),
        ("cuts UDP", ipv6(IPPROTO_UDP, &udp(1, 2)), 7),
        ("cuts UDP after hop-by-hop", ipv6(0, &hop_udp), 15),
        ("cuts hop-by-hop", ipv6(0, &hop_udp), 7),
        ("cuts a later fragment's header", ipv6(44, &later), 7),
    ];
    for (name, frame, payload) in cases {
        let frame = with_ip_len(frame, payload);
        assert_eq!(parse(&frame[..]), Parsed::Malformed, "{name}");
    }
}

#[test]
fn padded_frames_parse_like_unpadded_ones() {
    let mut later6 = fragment_header(17, 185, false);
    later6.extend([0u8; 16]);
    let frames = [
        ipv4(IPPROTO_TCP, 0, &[], &tcp(40000, 80, 0x02)),
        ipv4(IPPROTO_UDP, 0, &[1, 1, 1, 0], &udp(5353, 53)),
        ipv4(IPPROTO_ICMP, 0, &[], &[8, 0, 0, 0, 0, 1, 0, 1]),
        ipv4(IPPROTO_TCP, 185, &[], &[0xaa; 8]),
        ipv6(IPPROTO_TCP, &tcp(40000, 80, 0x02)),
        ipv6(IPPROTO_UDP, &udp(1234, 53)),
        ipv6(44, &later6),
        ipv6(59, &[]), // no next header
    ];
    for frame in frames {
        let unpadded = ip(&frame);
        for len in [60, frame.len() + 1, frame.len() + 64] {
            let padded = padded(frame.clone(), len);
            assert_eq!(
                ip(&padded),
                unpadded,
                "{} bytes padded to {len}",
                frame.len()
            );
        }
    }
}

#[test]
fn an_icmp_error_quoting_a_cut_packet_is_not_malformed() {
    // The quote holds the inner IP header and 8 bytes: its total length
    // claims more, as every real quote's does.
    let inner = ipv4(IPPROTO_TCP, 0, &[], &tcp(80, 40000, 0x10));
    let mut message = vec![3, 4, 0, 0, 0, 0, 5, 0];
    message.extend_from_slice(&inner[14..14 + 28]);
    let outer = ipv4(IPPROTO_ICMP, 0, &[], &message);
    let packet = ip(&outer);
    assert!(matches!(
        lb_common::icmp::classify(&outer[..], &packet),
        lb_common::icmp::IcmpMessage::Error(e) if e.vip_port == 80u16.to_be()
    ));
    let too_long = with_ip_len(outer, 9000);
    assert_eq!(
        parse(&too_long[..]),
        Parsed::Malformed,
        "the outer packet is checked"
    );
}
