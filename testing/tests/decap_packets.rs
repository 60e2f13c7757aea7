//! Packet-exact cases of `lb_decap`, the worker side of L3 forwarding: the
//! real program run on frames with BPF_PROG_TEST_RUN. Tunnel frames are
//! built here byte by byte (the formats of lb-common's `encap`); the output
//! must be the outer frame's Ethernet header with the inner ethertype,
//! followed by the inner packet unchanged. Needs root (CAP_BPF).

use std::net::IpAddr;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use lb_common::{
    decap::{map_names, DecapConfig, DecapCounters, PROGRAM},
    encap::{DEFAULT_GUE_PORT, IPPROTO_IPIP, IPPROTO_IPV6},
    packet::IPPROTO_UDP,
};
use lb_testing::{
    frames::{ipv4_checksum, tcp, Packet, CLIENT_MAC, LB_MAC},
    testrun::Loaded,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The worker's own addresses: the outer destinations it decapsulates.
const WORKER: [&str; 2] = ["198.51.100.10", "2001:db8:1::10"];
/// Another host's addresses.
const OTHER: [&str; 2] = ["198.51.100.99", "2001:db8:1::99"];
/// The balancer's tunnel sources.
const SOURCE: [&str; 2] = ["192.0.2.2", "2001:db8::2"];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The decap object loaded with the worker's addresses and the default
/// GUE port.
fn decap() -> Loaded {
    let ebpf = aya::EbpfLoader::new()
        .load(lb_userspace::dataplane::object::LB_DECAP)
        .expect("loading the decap object");
    let mut loaded = Loaded::with_programs(ebpf, &[PROGRAM]).expect("the verifier takes lb_decap");
    let ebpf = loaded.ebpf_mut();
    let mut config: Array<&mut MapData, DecapConfig> =
        Array::try_from(ebpf.map_mut(map_names::CONFIG).unwrap()).unwrap();
    let value = DecapConfig {
        gue_port: DEFAULT_GUE_PORT.to_be(),
        pad: [0; 2],
    };
    config.set(0, value, 0).unwrap();
    let mut local: HashMap<&mut MapData, _, u8> =
        HashMap::try_from(ebpf.map_mut(map_names::LOCAL_ADDRS).unwrap()).unwrap();
    for addr in WORKER {
        local
            .insert(lb_common::decap::LocalAddrKey::new(ip(addr)), 1, 0)
            .unwrap();
    }
    loaded
}

fn counters(loaded: &mut Loaded) -> DecapCounters {
    let map: PerCpuArray<&MapData, DecapCounters> =
        PerCpuArray::try_from(loaded.ebpf_mut().map(map_names::COUNTERS).unwrap()).unwrap();
    let mut total = DecapCounters::default();
    for copy in map.get(&0, 0).unwrap().iter() {
        total.add(copy);
    }
    total
}

/// How the inner packet is carried.
#[derive(Clone, Copy, Debug)]
enum Tunnel {
    Ipip,
    Gue(u16),
}

/// `inner` (an Ethernet frame) wrapped for `dst` (outer family from it):
/// the frame's MACs, then the outer headers, then its IP packet.
fn wrap(inner: &[u8], dst: IpAddr, tunnel: Tunnel) -> Vec<u8> {
    let packet = &inner[14..];
    let inner_v6 = packet[0] >> 4 == 6;
    let mut udp = Vec::new();
    if let Tunnel::Gue(port) = tunnel {
        udp.extend_from_slice(&50000u16.to_be_bytes());
        udp.extend_from_slice(&port.to_be_bytes());
        udp.extend_from_slice(&((8 + packet.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
    }
    let proto = match (tunnel, inner_v6) {
        (Tunnel::Gue(_), _) => IPPROTO_UDP,
        (Tunnel::Ipip, false) => IPPROTO_IPIP,
        (Tunnel::Ipip, true) => IPPROTO_IPV6,
    };
    let payload = (udp.len() + packet.len()) as u16;
    let mut out = inner[..12].to_vec();
    match dst {
        IpAddr::V4(dst) => {
            out.extend_from_slice(&[0x08, 0x00]);
            let mut header = vec![0x45, 0];
            header.extend_from_slice(&(20 + payload).to_be_bytes());
            header.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            let IpAddr::V4(source) = ip(SOURCE[0]) else {
                unreachable!()
            };
            header.extend_from_slice(&source.octets());
            header.extend_from_slice(&dst.octets());
            let check = ipv4_checksum(&header);
            header[10..12].copy_from_slice(&check.to_be_bytes());
            out.extend_from_slice(&header);
        }
        IpAddr::V6(dst) => {
            out.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            out.extend_from_slice(&payload.to_be_bytes());
            out.extend_from_slice(&[proto, 64]);
            let IpAddr::V6(source) = ip(SOURCE[1]) else {
                unreachable!()
            };
            out.extend_from_slice(&source.octets());
            out.extend_from_slice(&dst.octets());
        }
    }
    out.extend_from_slice(&udp);
    out.extend_from_slice(packet);
    out
}

/// A client's TCP packet to a VIP of `family` (0: IPv4, 1: IPv6), as the
/// worker's stack must see it; its MACs are the outer frame's.
fn inner(family: usize) -> Vec<u8> {
    let (client, vip) = [
        ("203.0.113.7", "198.51.100.80"),
        ("2001:db8:2::7", "2001:db8:3::80"),
    ][family];
    let mut packet = Packet::tcp(ip(client), 40000, ip(vip), 80, tcp::SYN);
    packet.src_mac = LB_MAC;
    packet.dst_mac = CLIENT_MAC;
    packet.build()
}

#[test]
fn every_tunnel_shape_leaves_the_inner_packet_behind_the_same_macs() {
    lb_testing::needs_root!();
    let mut loaded = decap();
    let mut expected = DecapCounters::default();
    for tunnel in [Tunnel::Ipip, Tunnel::Gue(DEFAULT_GUE_PORT)] {
        for outer in 0..2 {
            for family in 0..2 {
                let want = inner(family);
                let frame = wrap(&want, ip(WORKER[outer]), tunnel);
                let (verdict, out) = loaded.run_frame(PROGRAM, &frame).unwrap();
                let case = format!(
                    "{tunnel:?}, outer v{}, inner v{}",
                    [4, 6][outer],
                    [4, 6][family]
                );
                assert_eq!(verdict, XDP_PASS, "{case}");
                assert_eq!(out, want, "{case}");
                match (tunnel, outer) {
                    (Tunnel::Gue(_), _) => expected.gue += 1,
                    (Tunnel::Ipip, 0) => expected.ipip += 1,
                    (Tunnel::Ipip, _) => expected.ip6ip6 += 1,
                }
            }
        }
    }
    assert_eq!(counters(&mut loaded), expected);
}

#[test]
fn what_is_not_a_tunnel_packet_for_us_passes_untouched() {
    lb_testing::needs_root!();
    let mut loaded = decap();
    let mut frames = Vec::new();
    for family in 0..2 {
        // A tunnel packet for another host, GUE to another port, and
        // plain traffic to us.
        frames.push(wrap(&inner(family), ip(OTHER[family]), Tunnel::Ipip));
        frames.push(wrap(
            &inner(family),
            ip(OTHER[family]),
            Tunnel::Gue(DEFAULT_GUE_PORT),
        ));
        frames.push(wrap(&inner(family), ip(WORKER[family]), Tunnel::Gue(6081)));
        let mut plain = Packet::udp(ip(SOURCE[family]), 5000, ip(WORKER[family]), 53);
        plain.dst_mac = CLIENT_MAC;
        frames.push(plain.build());
    }
    for frame in &frames {
        let (verdict, out) = loaded.run_frame(PROGRAM, frame).unwrap();
        assert_eq!((verdict, &out), (XDP_PASS, frame));
    }
    let passed = frames.len() as u64;
    assert_eq!(
        counters(&mut loaded),
        DecapCounters {
            passed,
            ..Default::default()
        }
    );
}

#[test]
fn malformed_tunnel_packets_for_us_are_dropped_and_counted() {
    lb_testing::needs_root!();
    let mut loaded = decap();
    let mut frames = Vec::new();
    for outer in 0..2 {
        for tunnel in [Tunnel::Ipip, Tunnel::Gue(DEFAULT_GUE_PORT)] {
            let good = wrap(&inner(outer), ip(WORKER[outer]), tunnel);
            let start = 14 + [20, 40][outer] + usize::from(matches!(tunnel, Tunnel::Gue(_))) * 8;
            // The frame ends before the outer packet does.
            frames.push(good[..good.len() - 4].to_vec());
            // The inner packet starts with neither 4 nor 6.
            let mut version = good.clone();
            version[start] = 0x55;
            frames.push(version);
            // The inner packet claims more than the outer one carries.
            let mut long = good.clone();
            let at = start + [2, 4][outer];
            long[at..at + 2].copy_from_slice(&1400u16.to_be_bytes());
            frames.push(long);
        }
        // The inner header itself is cut short.
        frames.push(wrap(
            &inner(outer)[..14 + 10],
            ip(WORKER[outer]),
            Tunnel::Ipip,
        ));
    }
    for (n, frame) in frames.iter().enumerate() {
        let (verdict, _) = loaded.run_frame(PROGRAM, frame).unwrap();
        assert_eq!(verdict, XDP_DROP, "frame {n}");
    }
    let malformed = frames.len() as u64;
    assert_eq!(
        counters(&mut loaded),
        DecapCounters {
            malformed,
            ..Default::default()
        }
    );
}

#[test]
fn ethernet_padding_after_the_outer_packet_is_left_for_the_stack_to_trim() {
    lb_testing::needs_root!();
    let mut loaded = decap();
    let want = inner(0);
    let mut frame = wrap(&want, ip(WORKER[0]), Tunnel::Ipip);
    frame.extend_from_slice(&[0; 6]);
    let (verdict, out) = loaded.run_frame(PROGRAM, &frame).unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, [want, vec![0; 6]].concat());
    assert_eq!(counters(&mut loaded).ipip, 1);
}
