//! Packet-exact cases: lb's real program with a real configuration, run on
//! frames built from descriptions with BPF_PROG_TEST_RUN. Each case names
//! the verdict, the exact output frame and the counters that must move
//! (every other counter must stay). Needs root (CAP_BPF).

use std::net::IpAddr;

use lb_common::program_names::BALANCER;
use lb_testing::{
    frames::{error_about, flow_key, tcp, Fragment, Packet, Transport, LB_MAC},
    testrun::{configure, counter_deltas, worker_mac, Loaded},
};
use lb_userspace::{desired::maglev, desired::state::Desired, service::Vip};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// lb loaded with four VIPs of three workers each, and one VIP without
/// workers.
struct Suite {
    lb: Loaded,
    desired: Desired,
    _maps: lb_userspace::dataplane::maps::ControlMaps,
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

const VIPS: [&str; 4] = [
    "192.0.2.100:80/tcp",
    "192.0.2.100:53/udp",
    "[2001:db8::100]:80/tcp",
    "[2001:db8::100]:53/udp",
];
const EMPTY_VIP: &str = "192.0.2.101:80/tcp";

impl Suite {
    fn new() -> Self {
        let mut lb = Loaded::lb(65_536).unwrap();
        let vips: Vec<Vip> = VIPS.iter().map(|v| v.parse().unwrap()).collect();
        let (mut desired, mut maps) = configure(&mut lb, &vips, 3, |index, n| {
            if index < 2 {
                ip(&format!("198.51.100.{}", 10 + n))
            } else {
                ip(&format!("2001:db8:1::{}", 10 + n))
            }
        })
        .unwrap();
        let empty: Vip = EMPTY_VIP.parse().unwrap();
        desired.add_vip(empty, Default::default()).unwrap();
        let state = desired.vip(&empty).unwrap();
        maps.install_vip(&empty, state, &[], desired.hash_seed)
            .unwrap();
        maps.commit().unwrap();
        Self {
            lb,
            desired,
            _maps: maps,
        }
    }

    /// The worker MAC Maglev gives `packet`'s flow.
    fn maglev_mac(&self, packet: &Packet) -> [u8; 6] {
        let key = flow_key(packet);
        let (dst, dport) = (key.dst, key.dport);
        let vip = self
            .desired
            .vips()
            .iter()
            .find(|(v, _)| v.key().addr == dst && v.key().port == dport)
            .map(|(_, s)| s)
            .expect("a VIP's packet");
        let size = vip.effective_table_size();
        let table = maglev::build(&vip.members(|_| true), size, self.desired.hash_seed);
        let slot = key.hash(self.desired.hash_seed) % size;
        worker_mac(table[slot as usize].expect("a worker in every slot"))
    }

    /// Runs `case` and checks its verdict, output and counters.
    fn check(&self, case: &Case) {
        let before = self.lb.counters().unwrap();
        let (verdict, output) = self.lb.run_frame(BALANCER, &case.frame).unwrap();
        let after = self.lb.counters().unwrap();
        assert_eq!(verdict, case.verdict, "{}: verdict", case.name);
        let expected = match case.to_worker {
            Some(mac) => forwarded(&case.frame, mac),
            None => case.frame.clone(),
        };
        assert_eq!(output, expected, "{}: output frame", case.name);
        let moved = counter_deltas(&before, &after);
        let mut wanted: Vec<(&str, u64)> = vec![
            ("packets", 1),
            ("bytes", case.frame.len() as u64),
            (case.class, 1),
        ];
        wanted.extend_from_slice(case.counters);
        wanted.sort();
        assert_eq!(moved, wanted, "{}: counters", case.name);
    }
}

/// The frame as lb sends it to a worker: destination MAC the worker's,
/// source MAC the balancer's; not a byte else.
fn forwarded(frame: &[u8], worker: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&worker);
    out[6..12].copy_from_slice(&LB_MAC);
    out
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    /// Forwarded to this worker MAC; `None`: the frame comes back as it was.
    to_worker: Option<[u8; 6]>,
    /// The packet class counter that must move by one.
    class: &'static str,
    /// Other counters that must move, by how much.
    counters: &'static [(&'static str, u64)],
}

fn client4() -> IpAddr {
    ip("203.0.113.7")
}

fn client6() -> IpAddr {
    ip("2001:db8:2::7")
}

fn vip4() -> IpAddr {
    ip("192.0.2.100")
}

fn vip6() -> IpAddr {
    ip("2001:db8::100")
}

fn passed(name: &'static str, frame: Vec<u8>, class: &'static str) -> Case {
    Case {
        name,
        frame,
        verdict: XDP_PASS,
        to_worker: None,
        class,
        counters: &[("pass_not_vip", 1)],
    }
}

#[test]
fn every_packet_class_gets_its_verdict_its_exact_frame_and_its_counters() {
    lb_testing::needs_root!();
    let suite = Suite::new();
    let forward = |name, packet: Packet, class, counters| Case {
        name,
        frame: packet.build(),
        verdict: XDP_TX,
        to_worker: Some(suite.maglev_mac(&packet)),
        class,
        counters,
    };
    const NEW: &[(&str, u64)] = &[("forwarded", 1)];
    const HIT: &[(&str, u64)] = &[("forwarded", 1), ("flow_hits", 1)];
    let syn4 = Packet::tcp(client4(), 40000, vip4(), 80, tcp::SYN);
    let ack4 = Packet::tcp(client4(), 40000, vip4(), 80, tcp::ACK);
    let syn6 = Packet::tcp(client6(), 40000, vip6(), 80, tcp::SYN);
    let ack6 = Packet::tcp(client6(), 40000, vip6(), 80, tcp::ACK | tcp::PSH);
    let udp4 = Packet::udp(client4(), 5000, vip4(), 53);
    let udp6 = Packet::udp(client6(), 5000, vip6(), 53);
    let mut options = Packet::tcp(client4(), 40001, vip4(), 80, tcp::SYN);
    options.ipv4_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let mut ttl1 = Packet::tcp(client4(), 40002, vip4(), 80, tcp::SYN);
    ttl1.ttl = 1;
    let mut ttl0 = Packet::tcp(client4(), 40003, vip4(), 80, tcp::SYN);
    ttl0.ttl = 0;
    let mut minimum = Packet::tcp(client4(), 40004, vip4(), 80, tcp::SYN);
    minimum.payload.clear();
    minimum.pad_to = 60;
    let mut jumbo = Packet::tcp(client4(), 40005, vip4(), 80, tcp::SYN);
    jumbo.payload = vec![0x5a; 3000];
    let mut first_fragment = Packet::udp(client4(), 5001, vip4(), 53);
    first_fragment.fragment = Some(Fragment {
        offset: 0,
        more: true,
    });
    let rst = Packet::tcp(client4(), 40006, vip4(), 80, tcp::RST);
    let mut hop_by_hop = Packet::tcp(client6(), 40010, vip6(), 80, tcp::SYN);
    hop_by_hop.ipv6_hop_by_hop = true;
    let mut first6 = Packet::udp(client6(), 5010, vip6(), 53);
    first6.fragment = Some(Fragment {
        offset: 0,
        more: true,
    });
    let mut minimum_udp = Packet::udp(client4(), 5002, vip4(), 53);
    minimum_udp.payload.clear();
    minimum_udp.pad_to = 60;
    let mut padded6 = Packet::tcp(client6(), 40012, vip6(), 80, tcp::SYN);
    padded6.pad_to = padded6.build().len() + 8;
    let mut both6 = Packet::tcp(client6(), 40011, vip6(), 80, tcp::SYN);
    both6.ipv6_hop_by_hop = true;
    both6.fragment = Some(Fragment {
        offset: 0,
        more: true,
    });
    let cases = vec![
        forward("IPv4 TCP, new flow", syn4, "ipv4_tcp", NEW),
        forward("IPv4 TCP, established flow", ack4, "ipv4_tcp", HIT),
        forward("IPv6 TCP, new flow", syn6, "ipv6_tcp", NEW),
        forward("IPv6 TCP, established flow", ack6, "ipv6_tcp", HIT),
        forward("IPv4 UDP, new flow", udp4.clone(), "ipv4_udp", NEW),
        forward("IPv4 UDP, established flow", udp4, "ipv4_udp", HIT),
        forward("IPv6 UDP, new flow", udp6.clone(), "ipv6_udp", NEW),
        forward("IPv6 UDP, established flow", udp6, "ipv6_udp", HIT),
        forward("IPv4 with options", options, "ipv4_tcp", NEW),
        forward(
            "TTL 1 (lb is no router hop: unchanged)",
            ttl1,
            "ipv4_tcp",
            NEW,
        ),
        forward("TTL 0", ttl0, "ipv4_tcp", NEW),
        forward(
            "frame at the minimum length, padded",
            minimum,
            "ipv4_tcp",
            NEW,
        ),
        forward(
            "UDP frame at the minimum length, padded",
            minimum_udp,
            "ipv4_udp",
            NEW,
        ),
        forward(
            "IPv6 frame with bytes beyond its payload length",
            padded6,
            "ipv6_tcp",
            NEW,
        ),
        forward(
            "large frame (3 KB; test-run's limit)",
            jumbo,
            "ipv4_tcp",
            NEW,
        ),
        forward(
            "IPv4 first fragment: balanced on its ports",
            first_fragment,
            "ipv4_udp",
            NEW,
        ),
        forward(
            "RST with no flow: forwarded, not recorded",
            rst.clone(),
            "ipv4_tcp",
            NEW,
        ),
        forward("RST again: still no flow to hit", rst, "ipv4_tcp", NEW),
        forward(
            "IPv6 hop-by-hop header before TCP",
            hop_by_hop,
            "ipv6_tcp",
            NEW,
        ),
        forward(
            "IPv6 first fragment: balanced on its ports",
            first6,
            "ipv6_udp",
            NEW,
        ),
        forward(
            "IPv6 hop-by-hop and fragment headers",
            both6,
            "ipv6_tcp",
            NEW,
        ),
    ];
    for case in &cases {
        suite.check(case);
    }
}

#[test]
fn packets_lb_does_not_balance_pass_untouched_or_drop_with_a_reason() {
    lb_testing::needs_root!();
    let suite = Suite::new();
    let mut cases = Vec::new();
    cases.push(passed(
        "not a VIP",
        Packet::tcp(client4(), 40000, ip("192.0.2.2"), 22, tcp::SYN).build(),
        "ipv4_tcp",
    ));
    cases.push(passed(
        "VIP address, wrong port",
        Packet::tcp(client4(), 40000, vip4(), 8080, tcp::SYN).build(),
        "ipv4_tcp",
    ));
    cases.push(passed(
        "VIP address, unknown protocol (SCTP)",
        Packet::new(client4(), vip4(), Transport::Raw { proto: 132 }).build(),
        "ipv4_other",
    ));
    let mut tagged = Packet::tcp(client4(), 40000, vip4(), 80, tcp::SYN);
    tagged.vlan = Some(100);
    cases.push(passed(
        "802.1Q-tagged frame (passed)",
        tagged.build(),
        "non_ip",
    ));
    let mut later = Packet::udp(client4(), 5000, vip4(), 53);
    later.fragment = Some(Fragment {
        offset: 185,
        more: false,
    });
    cases.push(passed(
        "IPv4 later fragment (no ports: passed)",
        later.build(),
        "ipv4_fragment",
    ));
    let mut later6 = Packet::udp(client6(), 5000, vip6(), 53);
    later6.fragment = Some(Fragment {
        offset: 185,
        more: false,
    });
    cases.push(passed(
        "IPv6 later fragment (no ports: passed)",
        later6.build(),
        "ipv6_other",
    ));
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    cases.push(passed("ARP", arp, "non_ip"));
    cases.push(Case {
        name: "VIP without a worker: dropped",
        frame: Packet::tcp(client4(), 40000, ip("192.0.2.101"), 80, tcp::SYN).build(),
        verdict: XDP_DROP,
        to_worker: None,
        class: "ipv4_tcp",
        counters: &[("drop_no_backend", 1)],
    });
    for case in &cases {
        suite.check(case);
    }
}

#[test]
fn truncated_and_bogus_headers_pass_as_malformed() {
    lb_testing::needs_root!();
    let suite = Suite::new();
    let tcp4 = Packet::tcp(client4(), 40000, vip4(), 80, tcp::SYN).build();
    let tcp6 = Packet::tcp(client6(), 40000, vip6(), 80, tcp::SYN).build();
    let udp4 = Packet::udp(client4(), 5000, vip4(), 53).build();
    // Every cut, in the headers or the payload: the IP length then claims
    // more than the frame holds.
    let mut cases: Vec<Case> = Vec::new();
    for frame in [&tcp4, &tcp6, &udp4] {
        for len in 14..frame.len() {
            cases.push(passed("truncated", frame[..len].to_vec(), "malformed"));
        }
    }
    for len in 0..14 {
        cases.push(passed(
            "shorter than Ethernet",
            tcp4[..len].to_vec(),
            "non_ip",
        ));
    }
    let mut ihl3 = tcp4.clone();
    ihl3[14] = 0x43;
    cases.push(passed("IHL 3", ihl3, "malformed"));
    let mut ihl15 = tcp4.clone();
    ihl15[14] = 0x4f;
    ihl15.truncate(14 + 40);
    cases.push(passed("IHL 15 beyond the frame", ihl15, "malformed"));
    let mut version5 = tcp4.clone();
    version5[14] = 0x55;
    cases.push(passed("IP version 5", version5, "malformed"));
    let mut offset2 = tcp4.clone();
    offset2[14 + 20 + 12] = 2 << 4;
    cases.push(passed("TCP data offset 2", offset2, "malformed"));
    for case in &cases {
        if case.class == "non_ip" && case.frame.len() < 14 {
            continue;
        }
        suite.check(case);
    }
    for case in cases.iter().filter(|c| c.frame.len() < 14) {
        check_runt(&suite, case);
    }
}

/// Frames shorter than Ethernet: the kernel's test-run may refuse them
/// (it needs an Ethernet header); when it runs them, they pass as non-IP.
fn check_runt(suite: &Suite, case: &Case) {
    let before = suite.lb.counters().unwrap();
    let Ok((verdict, output)) = suite.lb.run_frame(BALANCER, &case.frame) else {
        return;
    };
    let after = suite.lb.counters().unwrap();
    assert_eq!(
        (verdict, output.as_slice()),
        (XDP_PASS, case.frame.as_slice())
    );
    assert_eq!(after.non_ip - before.non_ip, 1);
}

#[test]
fn ip_lengths_beyond_the_frame_or_short_of_the_headers_pass_as_malformed() {
    lb_testing::needs_root!();
    // Balanced, they would hand a worker a cut packet or ports read beyond
    // the packet; passed, the local stack discards them.
    let suite = Suite::new();
    let claiming = |mut packet: Packet, len: u16| {
        packet.ip_len = Some(len);
        packet.build()
    };
    let tcp4 = Packet::tcp(client4(), 40100, vip4(), 80, tcp::SYN);
    let udp4 = Packet::udp(client4(), 5100, vip4(), 53);
    let tcp6 = Packet::tcp(client6(), 40100, vip6(), 80, tcp::SYN);
    let udp6 = Packet::udp(client6(), 5100, vip6(), 53);
    let reply = Packet::tcp(vip4(), 80, client4(), 40100, tcp::ACK);
    let error = error_about(ip("198.51.100.254"), &reply);
    let total4 = (tcp4.build().len() - 14) as u16;
    let payload6 = (tcp6.build().len() - 14 - 40) as u16;
    let error_total = (error.build().len() - 14) as u16;
    let cases = [
        (
            "IPv4 total length beyond the frame",
            claiming(tcp4.clone(), 9000),
        ),
        (
            "IPv4 total length one beyond the frame",
            claiming(tcp4.clone(), total4 + 1),
        ),
        (
            "IPv4 total length shorter than IHL",
            claiming(tcp4.clone(), 19),
        ),
        (
            "IPv4 total length shorter than TCP's header",
            claiming(tcp4, 20 + 19),
        ),
        (
            "IPv4 total length shorter than UDP's header",
            claiming(udp4, 20 + 7),
        ),
        (
            "IPv6 payload length beyond the frame",
            claiming(tcp6.clone(), 9000),
        ),
        (
            "IPv6 payload length one beyond the frame",
            claiming(tcp6.clone(), payload6 + 1),
        ),
        (
            "IPv6 payload length 0 before TCP",
            claiming(tcp6.clone(), 0),
        ),
        ("IPv6 payload shorter than TCP's header", claiming(tcp6, 19)),
        ("IPv6 payload shorter than UDP's header", claiming(udp6, 7)),
        (
            "ICMP error whose own total length is beyond the frame",
            claiming(error, error_total + 1),
        ),
    ];
    for (name, frame) in cases {
        suite.check(&passed(name, frame, "malformed"));
    }
}

/// An echo request from the client to `dst`.
fn echo(src: IpAddr, dst: IpAddr) -> Packet {
    let kind = if dst.is_ipv4() { 8 } else { 128 };
    Packet::new(
        src,
        dst,
        Transport::Icmp {
            kind,
            code: 0,
            rest: [0x12, 0x34, 0, 1],
        },
    )
}

/// The reply lb must make of `request`: MACs and addresses swapped, type
/// changed, checksum updated.
fn echo_reply(request: &Packet) -> Vec<u8> {
    let mut reply = request.clone();
    std::mem::swap(&mut reply.src, &mut reply.dst);
    std::mem::swap(&mut reply.src_mac, &mut reply.dst_mac);
    if let Transport::Icmp { kind, .. } = &mut reply.transport {
        *kind = if *kind == 8 { 0 } else { 129 };
    }
    let mut frame = reply.build();
    if request.src.is_ipv6() {
        // The builder leaves ICMPv6 checksums zero; lb updates the
        // request's zero checksum incrementally.
        let l4 = 14 + 40;
        let updated = lb_common::icmp::checksum_update(0, 128 << 8, 129 << 8);
        frame[l4 + 2..l4 + 4].copy_from_slice(&updated.to_be_bytes());
    }
    frame
}

#[test]
fn icmp_echo_to_a_vip_is_answered_and_errors_about_a_flow_reach_its_worker() {
    lb_testing::needs_root!();
    let suite = Suite::new();
    for (client, vip) in [(client4(), vip4()), (client6(), vip6())] {
        let request = echo(client, vip);
        let (verdict, output) = suite.lb.run_frame(BALANCER, &request.build()).unwrap();
        assert_eq!(verdict, XDP_TX, "echo to {vip}");
        assert_eq!(output, echo_reply(&request), "echo reply from {vip}");
        if vip.is_ipv4() {
            let sum = lb_testing::frames::ipv4_checksum(&output[34..]);
            assert_eq!(sum, 0, "the reply's ICMP checksum verifies");
        }
    }
    let not_vip = echo(client4(), ip("192.0.2.2")).build();
    suite.check(&passed("echo to a non-VIP", not_vip, "ipv4_icmp"));

    let routers = [ip("198.51.100.254"), ip("2001:db8:3::254")];
    for (router, (client, vip)) in routers
        .into_iter()
        .zip([(client4(), vip4()), (client6(), vip6())])
    {
        // Record the flow, then a router complains about a reply of it.
        let request = Packet::tcp(client, 41000, vip, 80, tcp::SYN);
        let worker = suite.maglev_mac(&request);
        suite.lb.run_frame(BALANCER, &request.build()).unwrap();
        let reply = Packet::tcp(vip, 80, client, 41000, tcp::ACK);
        let error = error_about(router, &reply).build();
        let class = if vip.is_ipv4() {
            "ipv4_icmp"
        } else {
            "ipv6_icmp"
        };
        suite.check(&Case {
            name: "ICMP error about a recorded flow",
            frame: error.clone(),
            verdict: XDP_TX,
            to_worker: Some(worker),
            class,
            counters: &[("icmp_errors_forwarded", 1)],
        });
        // A flow the table no longer knows goes where Maglev sends it.
        let unknown = Packet::tcp(vip, 80, client, 41001, tcp::ACK);
        let expected = suite.maglev_mac(&Packet::tcp(client, 41001, vip, 80, tcp::ACK));
        suite.check(&Case {
            name: "ICMP error about an unrecorded flow",
            frame: error_about(router, &unknown).build(),
            verdict: XDP_TX,
            to_worker: Some(expected),
            class,
            counters: &[("icmp_errors_forwarded", 1)],
        });
    }
    let foreign = Packet::tcp(ip("192.0.2.2"), 22, client4(), 50000, tcp::ACK);
    suite.check(&passed(
        "ICMP error about a packet of no VIP",
        error_about(routers[0], &foreign).build(),
        "ipv4_icmp",
    ));
}

#[test]
fn flows_recorded_for_a_replaced_worker_or_idle_past_the_timeout_are_scheduled_afresh() {
    lb_testing::needs_root!();
    let mut suite = Suite::new();
    let mut flows = suite.lb.flows(lb_common::map_names::FLOWS).unwrap();
    let syn = Packet::tcp(client4(), 41000, vip4(), 80, tcp::SYN);
    let ack = Packet::tcp(client4(), 41000, vip4(), 80, tcp::ACK);
    let key = flow_key(&ack);
    let forward = |name, packet: &Packet, counters| Case {
        name,
        frame: packet.build(),
        verdict: XDP_TX,
        to_worker: Some(suite.maglev_mac(packet)),
        class: "ipv4_tcp",
        counters,
    };
    const HIT: &[(&str, u64)] = &[("forwarded", 1), ("flow_hits", 1)];
    suite.check(&forward("new flow", &syn, &[("forwarded", 1)]));
    suite.check(&forward("established", &ack, HIT));

    // The slot now holds another worker (a new generation): the flow was
    // recorded for the one before, so it is scheduled afresh.
    let mut value = flows.get(&key, 0).unwrap();
    let recorded = value.backend_generation;
    value.backend_generation = recorded.wrapping_add(1);
    flows.insert(key, value, 0).unwrap();
    let rescheduled = &[("flow_rescheduled", 1), ("forwarded", 1)];
    suite.check(&forward(
        "recorded for a replaced worker",
        &ack,
        rescheduled,
    ));
    assert_eq!(flows.get(&key, 0).unwrap().backend_generation, recorded);
    suite.check(&forward("re-recorded", &ack, HIT));

    // Idle for longer than the VIP's idle timeout (TCP: 300 s).
    let mut value = flows.get(&key, 0).unwrap();
    value.last_seen_ns -= 301 * 1_000_000_000;
    flows.insert(key, value, 0).unwrap();
    let expired = &[("flow_expired", 1), ("forwarded", 1)];
    suite.check(&forward("idle past its VIP's timeout", &ack, expired));
    suite.check(&forward("recorded again", &ack, HIT));

    // Seen "later" than this CPU's clock reads: another CPU's reading can
    // be a tick ahead of this one's, which is no idle time at all.
    let mut value = flows.get(&key, 0).unwrap();
    value.last_seen_ns += 3_600 * 1_000_000_000;
    flows.insert(key, value, 0).unwrap();
    suite.check(&forward("seen after this CPU's clock", &ack, HIT));
}

/// A worker reached through another of lb's interfaces: its frame leaves
/// by a redirect to that interface, from that interface's MAC; a worker on
/// the interface the frame came in on (the test run's is loopback) still
/// leaves by `XDP_TX` from the MAC the frame was sent to.
#[test]
fn a_worker_behind_another_interface_is_redirected_there_from_its_mac() {
    lb_testing::needs_root!();
    const XDP_REDIRECT: u32 = 4;
    const OTHER_MAC: [u8; 6] = [0x02, 0, 0x5e, 0, 0, 0x99];
    // A namespace of the test's own: the device map takes only devices
    // of the caller's namespace, and test runs arrive on its loopback.
    let mut bed = lb_testing::testbed::Testbed::new().unwrap();
    let host = bed
        .add_host("lb", "192.0.2.2".parse().unwrap(), lb_testing::rig::v6(2))
        .unwrap();
    host.within(|| {
        // SAFETY: a NUL-terminated name; the call only reads it.
        let other = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        assert_ne!(other, 0, "the host's eth0");
        let mut lb = Loaded::lb(1024).unwrap();
        let vip: Vip = VIPS[0].parse().unwrap();
        let (desired, mut maps) =
            configure(&mut lb, &[vip], 1, |_, _| ip("198.51.100.10")).unwrap();
        maps.write_interfaces(&[(1, [0; 6]), (other, OTHER_MAC)])
            .unwrap();
        let state = desired.vip(&vip).unwrap();
        let id = state.workers[&ip("198.51.100.10")].id;
        let syn = Packet::tcp(client4(), 40000, vip4(), 80, tcp::SYN).build();
        for (slot, verdict, source) in [(2, XDP_REDIRECT, OTHER_MAC), (1, XDP_TX, LB_MAC)] {
            let entry = lb_userspace::dataplane::maps::WorkerEntry {
                addr: ip("198.51.100.10"),
                mac: Some(worker_mac(id)),
                vip_id: state.id,
                state_flags: 0,
                generation: 1,
                forward: 0,
                gue_port: 0,
                port: 0,
                mtu: 1500,
                tunnel_source: None,
                egress: slot,
            };
            maps.write_backend(id, &entry).unwrap();
            let (got, output) = lb.run_frame(BALANCER, &syn).unwrap();
            assert_eq!(got, verdict, "egress slot {slot}");
            let mut expected = syn.clone();
            expected[0..6].copy_from_slice(&worker_mac(id));
            expected[6..12].copy_from_slice(&source);
            assert_eq!(output, expected, "egress slot {slot}: the frame");
        }
    })
    .unwrap();
}
