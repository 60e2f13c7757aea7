//! Packet-exact cases of NAT forwarding: lb's real programs (the balancer
//! and the NAT programs it tail-calls) with `nat` and `fullnat` VIPs, run
//! on frames with BPF_PROG_TEST_RUN. Expected frames are built here and
//! their checksums computed from scratch (`frames::with_transport_checksum`),
//! never by lb-common's incremental code. Needs root (CAP_BPF).
//!
//! BPF_PROG_TEST_RUN runs on the loopback device, which never routes to
//! a client: a translated reply is passed to the kernel (`XDP_PASS`) and
//! counted `nat_replies_unrouted`; the end-to-end tests see it routed.

use std::net::IpAddr;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use lb_common::{
    balancer::{FlowKey, FlowValue},
    map_names,
    nat::{NatClientHop, NatEntry, NatHop, NAT_CLOSING, NAT_DEAD, NAT_ESTABLISHED, NAT_OPENING},
    program_names::BALANCER,
};
use lb_testing::{
    frames::{checksums_valid, flow_key, tcp, with_transport_checksum, Packet, LB_MAC},
    testrun::{configure_nat, configure_with, counter_deltas, worker_mac, Loaded},
};
use lb_userspace::{
    dataplane::maps::ControlMaps,
    desired::maglev,
    desired::options::{Forward, VipOptions},
    desired::state::Desired,
    service::Vip,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// The NAT sources of the test configuration, one per family.
const SOURCE4: &str = "192.0.2.2";
const SOURCE6: &str = "2001:db8::2";
/// The workers' own port for TCP and UDP VIPs.
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

struct Suite {
    lb: Loaded,
    desired: Desired,
    _maps: ControlMaps,
}

impl Suite {
    /// lb with `vips` (each with `workers` workers on 203.0.113.0/24 or
    /// 2001:db8:9::/64, serving on [`TCP_PORT`] or [`UDP_PORT`]) and NAT
    /// ports `low..=high`.
    fn new(vips: &[(&str, Forward)], workers: u32, (low, high): (u16, u16)) -> Self {
        let mut lb = Loaded::lb(65_536).unwrap();
        let parsed: Vec<Vip> = vips.iter().map(|(v, _)| v.parse().unwrap()).collect();
        let worker = |n: u32, v6: bool| {
            if v6 {
                ip(&format!("2001:db8:9::{}", 10 + n))
            } else {
                ip(&format!("203.0.113.{}", 10 + n))
            }
        };
        let (desired, mut maps) = configure_with(
            &mut lb,
            &parsed,
            workers,
            |index, n| worker(n, parsed[index].addr.is_ipv6()),
            |index| VipOptions {
                forward: vips[index].1,
                ..VipOptions::default()
            },
        )
        .unwrap();
        let sources = [ip(SOURCE4), ip(SOURCE6)];
        configure_nat(&desired, &mut maps, worker_port, &sources, (low, high)).unwrap();
        Self {
            lb,
            desired,
            _maps: maps,
        }
    }

    /// The worker (id, address) Maglev gives `packet`'s flow.
    fn worker(&self, packet: &Packet) -> (u32, IpAddr) {
        let key = flow_key(packet);
        let (_, state) = self
            .desired
            .vips()
            .iter()
            .find(|(v, _)| v.key().addr == key.dst && v.key().port == key.dport)
            .expect("a VIP's packet");
        let size = state.effective_table_size();
        let table = maglev::build(&state.members(|_| true), size, self.desired.hash_seed);
        let id = table[(key.hash(self.desired.hash_seed) % size) as usize].unwrap();
        let addr = state.workers.iter().find(|(_, w)| w.id == id).unwrap().0;
        (id, *addr)
    }

    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>, Vec<(&'static str, u64)>) {
        let before = self.lb.counters().unwrap();
        let (verdict, output) = self.lb.run_frame(BALANCER, frame).unwrap();
        let after = self.lb.counters().unwrap();
        (verdict, output, counter_deltas(&before, &after))
    }

    fn nat_table(&self) -> BpfHashMap<&MapData, FlowKey, NatEntry> {
        BpfHashMap::try_from(self.lb.map(map_names::NAT).unwrap()).unwrap()
    }

    fn flow(&self, packet: &Packet) -> Option<FlowValue> {
        let flows: BpfHashMap<&MapData, FlowKey, FlowValue> =
            BpfHashMap::try_from(self.lb.map(map_names::FLOWS).unwrap()).unwrap();
        flows.get(&flow_key(packet), 0).ok()
    }
}

fn worker_port(vip: &Vip) -> u16 {
    if vip.key().proto == 6 {
        TCP_PORT
    } else {
        UDP_PORT
    }
}

/// `packet` as lb must send it on: readdressed to `(src, dst)` (address,
/// port), one hop older, between `macs`, every checksum recomputed
/// (a UDP datagram over IPv4 without one keeps none).
fn translated(
    packet: &Packet,
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    macs: Option<([u8; 6], [u8; 6])>,
) -> Vec<u8> {
    let mut out = packet.clone();
    out.src = src.0;
    out.dst = dst.0;
    out.ttl -= 1;
    match &mut out.transport {
        lb_testing::frames::Transport::Tcp { sport, dport, .. }
        | lb_testing::frames::Transport::Udp { sport, dport } => {
            *sport = src.1;
            *dport = dst.1;
        }
        _ => unreachable!("NAT tests send TCP and UDP"),
    }
    if let Some((dst_mac, src_mac)) = macs {
        out.dst_mac = dst_mac;
        out.src_mac = src_mac;
    }
    with_transport_checksum(out.build())
}

/// The source port of a TCP or UDP frame.
fn sport_of(frame: &[u8]) -> u16 {
    let l4 = if frame[12..14] == [0x86, 0xdd] {
        54
    } else {
        34
    };
    u16::from_be_bytes([frame[l4], frame[l4 + 1]])
}

fn client(v6: bool) -> IpAddr {
    if v6 {
        ip("2001:db8:5::7")
    } else {
        ip("198.51.100.7")
    }
}

#[test]
fn nat_rewrites_the_destination_and_the_replies_source_in_both_families() {
    lb_testing::needs_root!();
    let vips = [
        ("192.0.2.100:80/tcp", Forward::Nat),
        ("[2001:db8::100]:80/tcp", Forward::Nat),
        ("192.0.2.102:53/udp", Forward::Nat),
        ("[2001:db8::102]:53/udp", Forward::Nat),
    ];
    let suite = Suite::new(&vips, 3, (20_000, 20_999));
    for (vip, _) in vips {
        let vip: Vip = vip.parse().unwrap();
        let v6 = vip.addr.is_ipv6();
        let tcp_vip = vip.key().proto == 6;
        let packet = if tcp_vip {
            Packet::tcp(client(v6), 40_000, vip.addr, vip.port, tcp::SYN)
        } else {
            Packet::udp(client(v6), 40_000, vip.addr, vip.port)
        };
        let frame = with_transport_checksum(packet.build());
        let (id, worker) = suite.worker(&packet);
        let (verdict, output, moved) = suite.run(&frame);
        assert_eq!(verdict, XDP_TX, "{vip}: {moved:?}");
        let expected = translated(
            &packet,
            (client(v6), 40_000),
            (worker, worker_port(&vip)),
            Some((worker_mac(id), LB_MAC)),
        );
        assert_eq!(output, expected, "{vip}");
        assert!(checksums_valid(&output));
        assert!(moved.contains(&("forwarded", 1)), "{moved:?}");

        // The worker's answer, sent to the client through its gateway.
        let reply = if tcp_vip {
            Packet::tcp(
                worker,
                worker_port(&vip),
                client(v6),
                40_000,
                tcp::SYN | tcp::ACK,
            )
        } else {
            Packet::udp(worker, worker_port(&vip), client(v6), 40_000)
        };
        let frame = with_transport_checksum(reply.build());
        let (verdict, output, moved) = suite.run(&frame);
        assert_eq!(verdict, XDP_PASS, "{vip}: {moved:?}");
        let expected = translated(&reply, (vip.addr, vip.port), (client(v6), 40_000), None);
        assert_eq!(output, expected, "{vip} reply");
        assert!(moved.contains(&("nat_replies_unrouted", 1)), "{moved:?}");
    }
}

#[test]
fn fullnat_allocates_a_port_keeps_it_and_translates_the_reply_back() {
    lb_testing::needs_root!();
    let vips = [
        ("192.0.2.101:80/tcp", Forward::Fullnat),
        ("[2001:db8::101]:80/tcp", Forward::Fullnat),
        ("192.0.2.103:53/udp", Forward::Fullnat),
        ("[2001:db8::103]:53/udp", Forward::Fullnat),
    ];
    let suite = Suite::new(&vips, 3, (20_000, 20_999));
    for (vip, _) in vips {
        let vip: Vip = vip.parse().unwrap();
        let v6 = vip.addr.is_ipv6();
        let tcp_vip = vip.key().proto == 6;
        let source = ip(if v6 { SOURCE6 } else { SOURCE4 });
        let open = |flags| {
            if tcp_vip {
                Packet::tcp(client(v6), 40_001, vip.addr, vip.port, flags)
            } else {
                Packet::udp(client(v6), 40_001, vip.addr, vip.port)
            }
        };
        let syn = open(tcp::SYN);
        let (id, worker) = suite.worker(&syn);
        let (verdict, output, moved) = suite.run(&with_transport_checksum(syn.build()));
        assert_eq!(verdict, XDP_TX, "{vip}: {moved:?}");
        assert!(moved.contains(&("nat_allocations", 1)), "{moved:?}");
        let port = sport_of(&output);
        assert!((20_000..=20_999).contains(&port), "{port}");
        let expected = translated(
            &syn,
            (source, port),
            (worker, worker_port(&vip)),
            Some((worker_mac(id), LB_MAC)),
        );
        assert_eq!(output, expected, "{vip}");

        // The flow entry and the NAT entry name the same port.
        let flow = suite.flow(&syn).expect("the flow is recorded");
        assert_eq!(u16::from_be(flow.nat_port), port);
        let reply_key = flow_key(&if tcp_vip {
            Packet::tcp(worker, worker_port(&vip), source, port, 0)
        } else {
            Packet::udp(worker, worker_port(&vip), source, port)
        });
        let entry = suite.nat_table().get(&reply_key, 0).expect("a NAT entry");
        assert_eq!(entry.client, flow_key(&syn));
        let opening = if tcp_vip {
            NAT_OPENING
        } else {
            NAT_ESTABLISHED
        };
        assert_eq!(entry.state, opening);

        // A retransmitted first packet and the next one keep the port.
        for again in [open(tcp::SYN), open(tcp::ACK)] {
            let (verdict, output, moved) = suite.run(&with_transport_checksum(again.build()));
            assert_eq!(verdict, XDP_TX, "{vip}: {moved:?}");
            assert_eq!(sport_of(&output), port, "{vip}");
            assert!(!moved.iter().any(|(name, _)| *name == "nat_allocations"));
        }

        // The worker's answer goes back to the client, from the VIP.
        let reply = if tcp_vip {
            Packet::tcp(worker, worker_port(&vip), source, port, tcp::SYN | tcp::ACK)
        } else {
            Packet::udp(worker, worker_port(&vip), source, port)
        };
        let (verdict, output, moved) = suite.run(&with_transport_checksum(reply.build()));
        assert_eq!(verdict, XDP_PASS, "{vip}: {moved:?}");
        let expected = translated(&reply, (vip.addr, vip.port), (client(v6), 40_001), None);
        assert_eq!(output, expected, "{vip} reply");
        assert!(moved.contains(&("nat_replies_unrouted", 1)), "{moved:?}");
        let entry = suite.nat_table().get(&reply_key, 0).unwrap();
        assert_eq!(entry.state, NAT_ESTABLISHED);

        if tcp_vip {
            let fin = Packet::tcp(worker, worker_port(&vip), source, port, tcp::FIN | tcp::ACK);
            suite.run(&with_transport_checksum(fin.build()));
            let entry = suite.nat_table().get(&reply_key, 0).unwrap();
            assert_eq!(entry.state, NAT_CLOSING, "a FIN from the worker");
        }
    }
}

#[test]
fn a_udp_datagram_without_a_checksum_keeps_none_over_ipv4() {
    lb_testing::needs_root!();
    let vips = [
        ("192.0.2.102:53/udp", Forward::Nat),
        ("192.0.2.103:53/udp", Forward::Fullnat),
    ];
    let suite = Suite::new(&vips, 2, (20_000, 20_999));
    for (vip, _) in vips {
        let vip: Vip = vip.parse().unwrap();
        let packet = Packet::udp(client(false), 40_002, vip.addr, vip.port);
        let (verdict, output, moved) = suite.run(&packet.build());
        assert_eq!(verdict, XDP_TX, "{vip}: {moved:?}");
        let l4 = 34;
        assert_eq!(output[l4 + 6..l4 + 8], [0, 0], "{vip}: still none");
        assert!(checksums_valid(&output), "{vip}: the IPv4 header's");
    }
}

#[test]
fn an_exhausted_port_range_drops_new_flows_and_never_reuses_a_live_port() {
    lb_testing::needs_root!();
    let vips = [("192.0.2.101:80/tcp", Forward::Fullnat)];
    let mut suite = Suite::new(&vips, 1, (25_000, 25_001));
    let vip: Vip = vips[0].0.parse().unwrap();
    let mut ports = Vec::new();
    let mut exhausted = 0;
    for sport in 41_000..41_010 {
        let syn = Packet::tcp(client(false), sport, vip.addr, vip.port, tcp::SYN);
        let (verdict, output, moved) = suite.run(&with_transport_checksum(syn.build()));
        if verdict == XDP_TX {
            ports.push(sport_of(&output));
        } else {
            assert_eq!(verdict, XDP_DROP, "{moved:?}");
            assert!(moved.contains(&("nat_ports_exhausted", 1)), "{moved:?}");
            exhausted += 1;
        }
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 2, "both ports used once each: {ports:?}");
    assert_eq!(exhausted, 8, "every other connection refused");

    // Freed by the controller's sweep (here by hand: marked dead, then
    // deleted), a port serves a new connection again.
    let mut table: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
        BpfHashMap::try_from(suite.lb.map_mut(map_names::NAT).unwrap()).unwrap();
    let keys: Vec<FlowKey> = table.keys().map(Result::unwrap).collect();
    let mut dead = table.get(&keys[0], 0).unwrap();
    dead.flags |= NAT_DEAD;
    table.insert(keys[0], dead, 0).unwrap();
    let syn = Packet::tcp(client(false), 42_000, vip.addr, vip.port, tcp::SYN);
    let (verdict, _, _) = suite.run(&with_transport_checksum(syn.build()));
    assert_eq!(verdict, XDP_DROP, "a dead entry's port is not free yet");
    let mut table: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
        BpfHashMap::try_from(suite.lb.map_mut(map_names::NAT).unwrap()).unwrap();
    table.remove(&keys[0]).unwrap();
    let (verdict, output, moved) = suite.run(&with_transport_checksum(syn.build()));
    assert_eq!(verdict, XDP_TX, "{moved:?}");
    assert_eq!(sport_of(&output), u16::from_be(keys[0].dport));
}

#[test]
fn replies_of_unknown_or_dead_connections_pass_untouched_and_ttl_runs_out() {
    lb_testing::needs_root!();
    let vips = [("192.0.2.101:80/tcp", Forward::Fullnat)];
    let mut suite = Suite::new(&vips, 1, (20_000, 20_999));
    let vip: Vip = vips[0].0.parse().unwrap();
    // From the worker's port to a NAT source port nobody holds: the
    // host's own connection, say.
    let stray = Packet::tcp(ip("203.0.113.10"), TCP_PORT, ip(SOURCE4), 33_000, tcp::ACK);
    let frame = with_transport_checksum(stray.build());
    let (verdict, output, moved) = suite.run(&frame);
    assert_eq!((verdict, &output), (XDP_PASS, &frame), "{moved:?}");
    assert!(moved.contains(&("pass_not_vip", 1)), "{moved:?}");

    let mut syn = Packet::tcp(client(false), 43_000, vip.addr, vip.port, tcp::SYN);
    syn.ttl = 1;
    let (verdict, _, moved) = suite.run(&with_transport_checksum(syn.build()));
    assert_eq!(verdict, XDP_DROP, "{moved:?}");
    assert!(moved.contains(&("nat_ttl_expired", 1)), "{moved:?}");

    let syn = Packet::tcp(client(false), 43_001, vip.addr, vip.port, tcp::SYN);
    let (_, output, _) = suite.run(&with_transport_checksum(syn.build()));
    let port = sport_of(&output);
    let reply = Packet::tcp(ip("203.0.113.10"), TCP_PORT, ip(SOURCE4), port, tcp::ACK);
    let key = flow_key(&reply);
    let mut table: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
        BpfHashMap::try_from(suite.lb.map_mut(map_names::NAT).unwrap()).unwrap();
    let mut entry = table.get(&key, 0).unwrap();
    entry.flags |= NAT_DEAD;
    table.insert(key, entry, 0).unwrap();
    let frame = with_transport_checksum(reply.build());
    let (verdict, output, _) = suite.run(&frame);
    assert_eq!(
        (verdict, output),
        (XDP_PASS, frame),
        "a dead entry is no one's"
    );
}

/// An ICMP error from `router` to `to` quoting `about` (its first 28
/// bytes for IPv4, 48 for IPv6, as `frames::error_about` quotes), every
/// checksum computed from scratch: the quoted packet's before quoting.
fn error_frame(router: IpAddr, to: IpAddr, about: &Packet, ttl: u8) -> Packet {
    let (kind, code, rest) = if router.is_ipv4() {
        (3, 4, [0, 0, 0x05, 0x00])
    } else {
        (2, 0, [0, 0, 0x05, 0x00])
    };
    let mut packet = Packet::new(
        router,
        to,
        lb_testing::frames::Transport::Icmp { kind, code, rest },
    );
    let quoted = with_transport_checksum(about.build());
    let length = if router.is_ipv4() { 28 } else { 48 };
    packet.payload = quoted[14..14 + length].to_vec();
    packet.ttl = ttl;
    packet
}

/// `packet` from `src` to `dst` (address, port).
fn readdressed(packet: &Packet, src: (IpAddr, u16), dst: (IpAddr, u16)) -> Packet {
    let mut out = packet.clone();
    (out.src, out.dst) = (src.0, dst.0);
    match &mut out.transport {
        lb_testing::frames::Transport::Tcp { sport, dport, .. }
        | lb_testing::frames::Transport::Udp { sport, dport } => {
            (*sport, *dport) = (src.1, dst.1);
        }
        _ => unreachable!("NAT tests send TCP and UDP"),
    }
    out
}

#[test]
fn icmp_errors_about_natd_connections_are_translated_both_ways() {
    lb_testing::needs_root!();
    let vips = [
        ("192.0.2.100:80/tcp", Forward::Nat),
        ("[2001:db8::100]:53/udp", Forward::Nat),
        ("192.0.2.101:53/udp", Forward::Fullnat),
        ("[2001:db8::101]:80/tcp", Forward::Fullnat),
    ];
    let suite = Suite::new(&vips, 2, (20_000, 20_999));
    for (vip, forward) in vips {
        let vip: Vip = vip.parse().unwrap();
        let v6 = vip.addr.is_ipv6();
        let router = ip(if v6 {
            "2001:db8:5::fe"
        } else {
            "198.51.100.254"
        });
        let tcp_vip = vip.key().proto == 6;
        let first = if tcp_vip {
            Packet::tcp(client(v6), 40_003, vip.addr, vip.port, tcp::SYN)
        } else {
            Packet::udp(client(v6), 40_003, vip.addr, vip.port)
        };
        let (id, worker) = suite.worker(&first);
        let (verdict, output, _) = suite.run(&with_transport_checksum(first.build()));
        assert_eq!(verdict, XDP_TX);
        let wport = worker_port(&vip);
        let source = ip(if v6 { SOURCE6 } else { SOURCE4 });
        let nat_port = sport_of(&output);
        // What the worker sees of the connection, as (address, port).
        let worker_side = if forward == Forward::Fullnat {
            (source, nat_port)
        } else {
            (client(v6), 40_003)
        };

        // A router on the client's side can't deliver the VIP's reply.
        let reply = readdressed(&first, (vip.addr, vip.port), (client(v6), 40_003));
        let error = error_frame(router, vip.addr, &reply, 64);
        let frame = with_transport_checksum(error.build());
        let (verdict, output, moved) = suite.run(&frame);
        assert_eq!(verdict, XDP_TX, "{vip}: {moved:?}");
        let outer_src = if forward == Forward::Fullnat {
            source
        } else {
            router
        };
        let about = readdressed(&first, (worker, wport), worker_side);
        let mut expected = error_frame(outer_src, worker, &about, 63);
        (expected.dst_mac, expected.src_mac) = (worker_mac(id), LB_MAC);
        let expected = with_transport_checksum(expected.build());
        assert_eq!(output, expected, "{vip}: to the worker");
        assert!(checksums_valid(&output), "{vip}");
        assert!(moved.contains(&("icmp_errors_forwarded", 1)), "{moved:?}");

        // The worker's host can't deliver what lb sent it.
        let sent = readdressed(&first, worker_side, (worker, wport));
        let error = error_frame(worker, worker_side.0, &sent, 64);
        let frame = with_transport_checksum(error.build());
        let (verdict, output, moved) = suite.run(&frame);
        assert_eq!(verdict, XDP_PASS, "{vip}: {moved:?}");
        let about = readdressed(&first, (client(v6), 40_003), (vip.addr, vip.port));
        let expected = error_frame(vip.addr, client(v6), &about, 63);
        let expected = with_transport_checksum(expected.build());
        assert_eq!(output, expected, "{vip}: back to the client");
        assert!(moved.contains(&("nat_replies_unrouted", 1)), "{moved:?}");
    }
}

/// A reply whose client's next hop was looked up lately goes out at once
/// to the cached MACs (no routing lookup): per connection for `fullnat`,
/// per client and CPU for `nat`.
#[test]
fn replies_to_a_client_with_a_fresh_next_hop_go_straight_out() {
    lb_testing::needs_root!();
    let vips = [
        ("192.0.2.100:80/tcp", Forward::Nat),
        ("192.0.2.101:80/tcp", Forward::Fullnat),
    ];
    let mut suite = Suite::new(&vips, 1, (20_000, 20_999));
    // BPF_PROG_TEST_RUN runs on the loopback device (ifindex 1); a hop
    // found "in the future" stays fresh however long the test takes.
    let hop = NatHop {
        macs: [2, 0, 0, 0, 0, 0x77, 2, 0, 0, 0, 0, 0x66],
        ifindex: 1,
        found_ns: u64::MAX / 2,
    };
    let worker = ip("203.0.113.10");
    // nat: every slot of the per-CPU cache names the client.
    let mut hops: PerCpuArray<&mut MapData, NatClientHop> =
        PerCpuArray::try_from(suite.lb.map_mut(map_names::NAT_HOPS).unwrap()).unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    let (client_bytes, _) = lb_userspace::service::addr_bytes(client(false));
    for slot in 0..lb_common::nat::NAT_HOP_SLOTS {
        let value = NatClientHop {
            client: client_bytes,
            hop,
        };
        hops.set(slot, PerCpuValues::try_from(vec![value; cpus]).unwrap(), 0)
            .unwrap();
    }
    let reply = Packet::tcp(worker, TCP_PORT, client(false), 40_004, tcp::ACK);
    let (verdict, output, moved) = suite.run(&with_transport_checksum(reply.build()));
    assert_eq!(verdict, XDP_TX, "{moved:?}");
    assert_eq!(output[0..12], hop.macs, "nat: the cached MACs");
    assert!(moved.contains(&("nat_replies", 1)), "{moved:?}");

    // fullnat: the connection's own entry holds its client's hop.
    let vip: Vip = vips[1].0.parse().unwrap();
    let syn = Packet::tcp(client(false), 40_005, vip.addr, vip.port, tcp::SYN);
    let (_, sent, _) = suite.run(&with_transport_checksum(syn.build()));
    let port = sport_of(&sent);
    let reply = Packet::tcp(worker, TCP_PORT, ip(SOURCE4), port, tcp::SYN | tcp::ACK);
    let key = flow_key(&reply);
    let mut table: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
        BpfHashMap::try_from(suite.lb.map_mut(map_names::NAT).unwrap()).unwrap();
    let mut entry = table.get(&key, 0).unwrap();
    entry.hop = hop;
    table.insert(key, entry, 0).unwrap();
    let (verdict, output, moved) = suite.run(&with_transport_checksum(reply.build()));
    assert_eq!(verdict, XDP_TX, "{moved:?}");
    assert_eq!(output[0..12], hop.macs, "fullnat: the cached MACs");
    let expected = translated(&reply, (vip.addr, vip.port), (client(false), 40_005), None);
    assert_eq!(output[12..], expected[12..], "translated as ever");
}
