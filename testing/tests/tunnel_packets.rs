//! Packet-exact cases of L3 forwarding: lb's real programs (the balancer
//! and the tunnel program it tail-calls) with VIPs of every method, run on
//! frames with BPF_PROG_TEST_RUN. Expected outer headers and "too big"
//! answers are built here byte by byte, independently of the data plane's
//! code; the GUE source port and the IPv6 flow label (a hash of the flow)
//! are checked for their rules and copied. Needs root (CAP_BPF).

use std::net::IpAddr;

use lb_common::program_names::BALANCER;
use lb_testing::{
    frames::{error_about, flow_key, ipv4_checksum, tcp, Fragment, Packet, CLIENT_MAC, LB_MAC},
    testrun::{configure_with, counter_deltas, worker_mac, Loaded, TUNNEL_MTU, TUNNEL_SOURCES},
};
use lb_userspace::{
    desired::maglev,
    desired::options::{Forward, VipOptions},
    desired::state::Desired,
    service::Vip,
};

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// (VIP, method, worker family): every shape, across families too.
const VIPS: [(&str, Forward, bool); 6] = [
    ("192.0.2.100:80/tcp", Forward::Ipip, false),
    ("[2001:db8::100]:80/tcp", Forward::Ipip, true),
    ("192.0.2.102:80/tcp", Forward::Ipip, true),
    ("[2001:db8::102]:80/tcp", Forward::Ipip, false),
    ("192.0.2.103:53/udp", Forward::Gue, false),
    ("[2001:db8::103]:53/udp", Forward::Gue, true),
];
const GUE_PORT: u16 = 7777;

struct Suite {
    lb: Loaded,
    desired: Desired,
    _maps: lb_userspace::dataplane::maps::ControlMaps,
}

impl Suite {
    fn new() -> Self {
        let mut lb = Loaded::lb(65_536).unwrap();
        let vips: Vec<Vip> = VIPS.iter().map(|(v, _, _)| v.parse().unwrap()).collect();
        let (desired, maps) = configure_with(
            &mut lb,
            &vips,
            3,
            |index, n| {
                if VIPS[index].2 {
                    ip(&format!("2001:db8:9::{}", 10 + n))
                } else {
                    ip(&format!("203.0.113.{}", 10 + n))
                }
            },
            |index| VipOptions {
                forward: VIPS[index].1,
                gue_port: (VIPS[index].1 == Forward::Gue).then_some(GUE_PORT),
                ..VipOptions::default()
            },
        )
        .unwrap();
        Self {
            lb,
            desired,
            _maps: maps,
        }
    }

    /// The worker (id, address) Maglev gives `packet`'s flow.
    fn worker(&self, packet: &Packet) -> (u32, IpAddr) {
        let key = flow_key(packet);
        let (vip, state) = self
            .desired
            .vips()
            .iter()
            .find(|(v, _)| v.key().addr == key.dst && v.key().port == key.dport)
            .expect("a VIP's packet");
        let size = state.effective_table_size();
        let table = maglev::build(&state.members(|_| true), size, self.desired.hash_seed);
        let id = table[(key.hash(self.desired.hash_seed) % size) as usize].unwrap();
        let addr = state
            .workers
            .iter()
            .find(|(_, w)| w.id == id)
            .map(|(a, _)| *a)
            .unwrap_or_else(|| panic!("worker {id} of {vip}"));
        (id, addr)
    }

    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>, Vec<(&'static str, u64)>) {
        let before = self.lb.counters().unwrap();
        let (verdict, output) = self.lb.run_frame(BALANCER, frame).unwrap();
        let after = self.lb.counters().unwrap();
        (verdict, output, counter_deltas(&before, &after))
    }
}

/// What lb must send for `frame` (whose inner packet is `frame[14..]`)
/// encapsulated to `worker` with MAC `mac`, by `forward`; with `port` and
/// `label` as the output has them (checked separately).
fn encapsulated(
    frame: &[u8],
    worker: IpAddr,
    mac: [u8; 6],
    forward: Forward,
    sport: u16,
    label: u32,
) -> Vec<u8> {
    let inner = &frame[14..];
    let inner_v6 = frame[12..14] == [0x86, 0xdd];
    let class = if inner_v6 {
        (inner[0] << 4) | (inner[1] >> 4)
    } else {
        inner[1]
    };
    let mut udp = Vec::new();
    if forward == Forward::Gue {
        udp.extend_from_slice(&sport.to_be_bytes());
        udp.extend_from_slice(&GUE_PORT.to_be_bytes());
        udp.extend_from_slice(&((8 + inner.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]); // zero checksum, over IPv6 too
    }
    let proto = match (forward, inner_v6) {
        (Forward::Gue, _) => 17,
        (_, false) => 4,
        (_, true) => 41,
    };
    let payload = (udp.len() + inner.len()) as u16;
    let mut out = Vec::new();
    out.extend_from_slice(&mac);
    out.extend_from_slice(&LB_MAC);
    match worker {
        IpAddr::V4(worker) => {
            out.extend_from_slice(&[0x08, 0x00]);
            let mut header = vec![0x45, class];
            header.extend_from_slice(&(20 + payload).to_be_bytes());
            header.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            let IpAddr::V4(source) = ip(TUNNEL_SOURCES[0]) else {
                unreachable!()
            };
            header.extend_from_slice(&source.octets());
            header.extend_from_slice(&worker.octets());
            let check = ipv4_checksum(&header);
            header[10..12].copy_from_slice(&check.to_be_bytes());
            out.extend_from_slice(&header);
        }
        IpAddr::V6(worker) => {
            out.extend_from_slice(&[0x86, 0xdd]);
            let first = (6u32 << 28) | (u32::from(class) << 20) | label;
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&payload.to_be_bytes());
            out.extend_from_slice(&[proto, 64]);
            let IpAddr::V6(source) = ip(TUNNEL_SOURCES[1]) else {
                unreachable!()
            };
            out.extend_from_slice(&source.octets());
            out.extend_from_slice(&worker.octets());
        }
    }
    out.extend_from_slice(&udp);
    out.extend_from_slice(inner);
    out
}

/// The GUE source port and IPv6 flow label of an output frame.
fn hash_fields(output: &[u8], worker: IpAddr, forward: Forward) -> (u16, u32) {
    let udp = 14 + if worker.is_ipv4() { 20 } else { 40 };
    let sport = if forward == Forward::Gue {
        u16::from_be_bytes([output[udp], output[udp + 1]])
    } else {
        0
    };
    let label = if worker.is_ipv6() {
        u32::from_be_bytes([0, output[15] & 0x0f, output[16], output[17]])
    } else {
        0
    };
    (sport, label)
}

fn packet_for(vip: &str, sport: u16, flags: u8) -> Packet {
    let vip: Vip = vip.parse().unwrap();
    let client = if vip.addr.is_ipv4() {
        ip("198.51.100.7")
    } else {
        ip("2001:db8:2::7")
    };
    if vip.proto == lb_userspace::service::Protocol::Udp {
        Packet::udp(client, sport, vip.addr, vip.port)
    } else {
        Packet::tcp(client, sport, vip.addr, vip.port, flags)
    }
}

#[test]
fn every_method_puts_the_packet_whole_inside_exact_outer_headers() {
    lb_testing::needs_root!();
    let suite = Suite::new();
    for (vip, forward, _) in VIPS {
        let mut ports = std::collections::BTreeSet::new();
        for (round, sport) in [40000u16, 40001, 40000].into_iter().enumerate() {
            let flags = if round == 0 { tcp::SYN } else { tcp::ACK };
            let packet = packet_for(vip, sport, flags);
            let frame = packet.build();
            let (id, worker) = suite.worker(&packet);
            let (verdict, output, moved) = suite.run(&frame);
            assert_eq!(verdict, XDP_TX, "{vip} {sport}: verdict");
            let (port, label) = hash_fields(&output, worker, forward);
            if forward == Forward::Gue {
                assert!(port >= 49152, "{vip}: GUE source port {port}");
                ports.insert((sport, port));
            }
            let expected = encapsulated(&frame, worker, worker_mac(id), forward, port, label);
            assert_eq!(output, expected, "{vip} {sport}: output frame");
            assert!(
                moved.contains(&("forwarded", 1)),
                "{vip} {sport}: counters {moved:?}"
            );
        }
        // One flow, one source port: the receiver keeps it on one queue.
        assert!(ports.len() <= 2, "{vip}: {ports:?}");
    }
}

#[test]
fn too_big_for_the_tunnel_is_answered_so_path_mtu_discovery_works() {
    lb_testing::needs_root!();
    let suite = Suite::new();
    // IPv4 with DF, to IPv4 workers by IPIP: 20 bytes of tunnel.
    let mut big = packet_for(VIPS[0].0, 40100, tcp::SYN);
    big.payload = vec![0x55; usize::from(TUNNEL_MTU) - 40 - 20 + 1];
    let frame = big.build();
    let (verdict, output, moved) = suite.run(&frame);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(output, frag_needed(&frame, TUNNEL_MTU - 20));
    assert!(moved.contains(&("too_big_answered", 1)), "{moved:?}");
    assert!(
        !moved.iter().any(|(name, _)| *name == "forwarded"),
        "{moved:?}"
    );

    // The largest packet that fits goes through.
    let mut fits = packet_for(VIPS[0].0, 40101, tcp::SYN);
    fits.payload = vec![0x55; usize::from(TUNNEL_MTU) - 40 - 20];
    assert_eq!(suite.run(&fits.build()).0, XDP_TX);

    // IPv4 without DF can't be answered (routers would fragment it): dropped.
    let mut no_df = packet_for(VIPS[0].0, 40102, tcp::SYN);
    no_df.payload = big.payload.clone();
    no_df.fragment = Some(Fragment {
        offset: 0,
        more: false,
    });
    let (verdict, _, moved) = suite.run(&no_df.build());
    assert_eq!(verdict, XDP_DROP);
    assert!(moved.contains(&("too_big_dropped", 1)), "{moved:?}");

    // IPv6 to IPv6 workers by GUE: 48 bytes of tunnel.
    let mut big6 = packet_for(VIPS[5].0, 40103, 0);
    big6.payload = vec![0x66; usize::from(TUNNEL_MTU) - 48 - 40 - 8 + 1];
    let frame = big6.build();
    let (verdict, output, moved) = suite.run(&frame);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(output, packet_too_big(&frame, TUNNEL_MTU - 48));
    assert!(moved.contains(&("too_big_answered", 1)), "{moved:?}");
}

#[test]
fn icmp_errors_about_a_flow_reach_its_worker_inside_the_tunnel() {
    lb_testing::needs_root!();
    let suite = Suite::new();
    for (vip, forward, _) in [VIPS[0], VIPS[1], VIPS[2]] {
        let client = packet_for(vip, 40200, tcp::ACK);
        let reply = Packet::tcp(client.dst, 80, client.src, 40200, tcp::ACK);
        let router = if client.src.is_ipv4() {
            ip("198.51.100.1")
        } else {
            ip("2001:db8:2::1")
        };
        let frame = error_about(router, &reply).build();
        let (id, worker) = suite.worker(&client);
        let (verdict, output, moved) = suite.run(&frame);
        assert_eq!(verdict, XDP_TX, "{vip}: verdict");
        let (_, label) = hash_fields(&output, worker, forward);
        let expected = encapsulated(&frame, worker, worker_mac(id), forward, 0, label);
        assert_eq!(output, expected, "{vip}: output frame");
        assert!(
            moved.contains(&("icmp_errors_forwarded", 1)),
            "{vip}: {moved:?}"
        );
    }
}

/// ICMP "fragmentation needed" for the IPv4 `frame`: from the VIP to the
/// client, quoting the packet's IP header and 8 bytes.
fn frag_needed(frame: &[u8], mtu: u16) -> Vec<u8> {
    let original = &frame[14..];
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&original[..28]);
    let check = ipv4_checksum(&icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut header = vec![0x45, 0];
    header.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    header.extend_from_slice(&original[16..20]);
    header.extend_from_slice(&original[12..16]);
    let check = ipv4_checksum(&header);
    header[10..12].copy_from_slice(&check.to_be_bytes());
    let mut out = CLIENT_MAC.to_vec();
    out.extend_from_slice(&LB_MAC);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&header);
    out.extend_from_slice(&icmp);
    out
}

/// ICMPv6 "packet too big" for the IPv6 `frame`, quoting its IPv6 header
/// and 8 bytes.
fn packet_too_big(frame: &[u8], mtu: u16) -> Vec<u8> {
    let original = &frame[14..];
    let (client, vip) = (&original[8..24], &original[24..40]);
    let mut icmp = vec![2, 0, 0, 0];
    icmp.extend_from_slice(&u32::from(mtu).to_be_bytes());
    icmp.extend_from_slice(&original[..48]);
    let mut pseudo = vip.to_vec();
    pseudo.extend_from_slice(client);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let check = ipv4_checksum(&pseudo);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut out = CLIENT_MAC.to_vec();
    out.extend_from_slice(&LB_MAC);
    out.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    out.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    out.extend_from_slice(&[58, 64]);
    out.extend_from_slice(vip);
    out.extend_from_slice(client);
    out.extend_from_slice(&icmp);
    out
}
