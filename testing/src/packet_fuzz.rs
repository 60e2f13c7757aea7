//! A packet fuzzer for the data plane: random frames and mutations of
//! valid ones through lb's real program (BPF_PROG_TEST_RUN), checking
//! invariants on every run:
//!
//! - the verdict is XDP_PASS, XDP_TX or XDP_DROP, never XDP_ABORTED;
//! - a passed frame comes back unchanged, and a frame the shared parser
//!   calls malformed is passed (counted `malformed`);
//! - a forwarded frame parses (with the shared parser) as TCP or UDP to a
//!   configured VIP, and comes back as the input with only the MACs
//!   changed (destination a worker's, source the old destination) or, for
//!   an IPIP or GUE VIP, as the input's IP packet unchanged behind a new
//!   Ethernet header and exactly the method's outer headers, addressed to
//!   one of the VIP's workers;
//! - a frame for a `nat` or `fullnat` VIP (or an ICMP error about one)
//!   leaves addressed to one of the VIP's workers on its port (`fullnat`:
//!   from a NAT source, with an entry in the NAT table that maps the
//!   tuple back to the input's flow), and every checksum that verified
//!   before verifies after; a NAT worker's reply may leave translated
//!   (sent, or passed to the kernel), from its VIP;
//! - a transmitted frame's IP length field (IPv4 total length, IPv6
//!   payload length) is neither beyond the frame nor short of the headers
//!   lb read;
//! - a dropped frame is a VIP's too (or a NAT worker's, out of TTL);
//! - every run moves `packets` by one, exactly one packet class by one,
//!   and exactly one outcome counter, the one that matches the verdict.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use lb_common::{
    counters::GlobalCounters,
    icmp::{classify, IcmpMessage, ICMPV6_ECHO_REPLY, ICMP_ECHO_REPLY},
    packet::{parse, IpVersion, Parsed, IPPROTO_TCP, IPPROTO_UDP},
    program_names::BALANCER,
};

use lb_userspace::{
    dataplane::maps::ControlMaps,
    desired::options::{Forward, VipOptions},
    desired::state::Desired,
    service::{addr_bytes, Vip},
};

use crate::{
    frames::{tcp, with_transport_checksum, Fragment, Packet, Transport},
    testrun::{configure_nat, configure_with, worker_mac, Loaded},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// What a fuzz run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Frames run.
    pub iterations: u64,
    /// Of which forwarded, passed, dropped.
    pub forwarded: u64,
    /// Passed.
    pub passed: u64,
    /// Dropped.
    pub dropped: u64,
    /// The seed, to reproduce the run.
    pub seed: u64,
}

/// A VIP as the data plane keys it: address, port, protocol.
type VipId = ([u8; 16], u16, u8);

/// The data plane under fuzzing, with its configuration.
pub struct Target {
    lb: Loaded,
    vips: HashSet<VipId>,
    /// The IPIP and GUE VIPs, with their method and worker addresses.
    tunnelled: HashMap<VipId, (Forward, HashSet<IpAddr>)>,
    /// The NAT VIPs, with their method and workers (address bytes).
    natted: HashMap<VipId, (Forward, HashSet<[u8; 16]>)>,
    /// Each NAT worker's (address, port, protocol) and its VIP.
    nat_workers: HashMap<VipId, VipId>,
    /// The NAT source addresses.
    nat_sources: HashSet<[u8; 16]>,
    vip_addrs: HashSet<[u8; 16]>,
    workers: HashSet<[u8; 6]>,
    seeds: Vec<Vec<u8>>,
    _state: (Desired, ControlMaps),
}

const EMPTY_VIP: &str = "192.0.2.101:80/tcp";

const VIPS: [&str; 8] = [
    "192.0.2.100:80/tcp",
    "192.0.2.100:53/udp",
    "[2001:db8::100]:80/tcp",
    "[2001:db8::100]:53/udp",
    "192.0.2.102:80/tcp",
    "[2001:db8::102]:53/udp",
    "192.0.2.103:80/tcp",
    "[2001:db8::103]:53/udp",
];

/// The methods of [`VIPS`]: DSR but for an IPIP VIP served by IPv6
/// workers, a GUE VIP served by IPv4 ones, a `nat` and a `fullnat` VIP.
fn method(index: usize) -> Forward {
    match index {
        4 => Forward::Ipip,
        5 => Forward::Gue,
        6 => Forward::Nat,
        7 => Forward::Fullnat,
        _ => Forward::Dsr,
    }
}

/// The NAT workers' port for TCP and UDP VIPs.
fn nat_worker_port(vip: &Vip) -> u16 {
    if vip.key().proto == IPPROTO_TCP {
        8080
    } else {
        5353
    }
}

/// The NAT sources of the configuration.
const NAT_SOURCES: [&str; 2] = ["192.0.2.2", "2001:db8::2"];

/// Worker `n` of VIP `index`.
fn worker_addr(index: usize, n: u32) -> IpAddr {
    let text = match index {
        0 | 1 | 5 | 6 => format!("198.51.100.{}", 10 + n + 10 * index as u32),
        _ => format!("2001:db8:1::{}", 10 + n + 10 * index as u32),
    };
    text.parse().expect("valid")
}

impl Target {
    /// lb with the packet tests' configuration.
    pub fn new() -> anyhow::Result<Self> {
        let mut lb = Loaded::lb(65_536)?;
        let vips: Vec<Vip> = VIPS.iter().map(|v| v.parse().expect("valid")).collect();
        let (mut desired, mut maps) =
            configure_with(&mut lb, &vips, 3, worker_addr, |index| VipOptions {
                forward: method(index),
                ..VipOptions::default()
            })?;
        let sources: Vec<IpAddr> = NAT_SOURCES
            .iter()
            .map(|s| s.parse().expect("valid"))
            .collect();
        configure_nat(
            &desired,
            &mut maps,
            nat_worker_port,
            &sources,
            (20_000, 29_999),
        )?;
        let by_method = |wanted: &[Forward]| {
            vips.iter()
                .enumerate()
                .filter(|(index, _)| wanted.contains(&method(*index)))
                .map(|(index, vip)| {
                    let key = vip.key();
                    let workers = (0..3).map(|n| worker_addr(index, n)).collect();
                    ((key.addr, key.port, key.proto), (method(index), workers))
                })
                .collect::<HashMap<VipId, (Forward, HashSet<IpAddr>)>>()
        };
        let tunnelled = by_method(&[Forward::Ipip, Forward::Gue]);
        let natted: HashMap<VipId, (Forward, HashSet<[u8; 16]>)> =
            by_method(&[Forward::Nat, Forward::Fullnat])
                .into_iter()
                .map(|(vip, (forward, workers))| {
                    (
                        vip,
                        (
                            forward,
                            workers.into_iter().map(|a| addr_bytes(a).0).collect(),
                        ),
                    )
                })
                .collect();
        let nat_workers = vips
            .iter()
            .filter(|vip| natted.contains_key(&(vip.key().addr, vip.key().port, vip.key().proto)))
            .flat_map(|vip| {
                let key = vip.key();
                let port = nat_worker_port(vip).to_be();
                natted[&(key.addr, key.port, key.proto)]
                    .1
                    .iter()
                    .map(move |addr| ((*addr, port, key.proto), (key.addr, key.port, key.proto)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let nat_sources = sources.iter().map(|s| addr_bytes(*s).0).collect();
        // A VIP without workers: its packets are dropped.
        let empty: Vip = EMPTY_VIP.parse().expect("valid");
        desired.add_vip(empty, Default::default())?;
        maps.install_vip(&empty, desired.vip(&empty)?, &[], desired.hash_seed)?;
        maps.commit().map_err(|(_, error)| error)?;
        let workers = (0..32).map(worker_mac).collect();
        let vips: HashSet<VipId> = vips
            .iter()
            .chain([&empty])
            .map(|v| {
                let key = v.key();
                (key.addr, key.port, key.proto)
            })
            .collect();
        let vip_addrs = vips.iter().map(|(addr, _, _)| *addr).collect();
        Ok(Self {
            lb,
            vip_addrs,
            vips,
            tunnelled,
            natted,
            nat_workers,
            nat_sources,
            workers,
            seeds: seeds(),
            _state: (desired, maps),
        })
    }

    /// Runs `iterations` frames or until `limit` passes.
    pub fn run(&self, seed: u64, iterations: u64, limit: Duration) -> anyhow::Result<Report> {
        let mut random = Random(seed | 1);
        let mut report = Report {
            seed,
            ..Report::default()
        };
        let started = Instant::now();
        let mut before = self.lb.counters()?;
        while report.iterations < iterations && started.elapsed() < limit {
            let frame = self.frame(&mut random);
            let after = self.check(&frame, &before, &mut report).with_context(|| {
                format!(
                    "seed {seed}, iteration {}: frame {}",
                    report.iterations,
                    hex(&frame)
                )
            })?;
            before = after;
            report.iterations += 1;
        }
        Ok(report)
    }

    fn frame(&self, random: &mut Random) -> Vec<u8> {
        if random.below(8) == 0 {
            let len = random.below(160) as usize;
            return (0..len).map(|_| random.byte()).collect();
        }
        let mut frame = self.seeds[random.below(self.seeds.len() as u64) as usize].clone();
        for _ in 0..=random.below(4) {
            mutate(&mut frame, random);
        }
        frame
    }

    /// Runs one frame and checks every invariant; returns the counters
    /// after it.
    fn check(
        &self,
        frame: &[u8],
        before: &GlobalCounters,
        report: &mut Report,
    ) -> anyhow::Result<GlobalCounters> {
        let run = self.lb.run_frame(BALANCER, frame);
        let after = self.lb.counters()?;
        let Ok((verdict, output)) = run else {
            // The kernel refuses frames shorter than an Ethernet header.
            if frame.len() < 14 {
                return Ok(after);
            }
            bail!("test run failed: {:#}", run.unwrap_err());
        };
        let for_vip = self.is_vip_packet(frame);
        if parse(frame) == Parsed::Malformed
            && (verdict != XDP_PASS || after.malformed - before.malformed != 1)
        {
            bail!("a frame the parser calls malformed got verdict {verdict}, not a malformed pass");
        }
        match verdict {
            XDP_PASS => {
                report.passed += 1;
                if output != frame {
                    self.check_nat_reply(frame, &output)?;
                }
            }
            XDP_TX => {
                report.forwarded += 1;
                check_ip_length(&output)?;
                self.check_transmitted(frame, &output, for_vip)?;
            }
            XDP_DROP => {
                report.dropped += 1;
                if !for_vip && self.nat_vip_of_reply(frame).is_none() {
                    bail!("dropped a frame that is neither a VIP's nor a NAT worker's");
                }
            }
            other => bail!("verdict {other}"),
        }
        check_counters(before, &after, verdict, frame.len())?;
        Ok(after)
    }

    /// A transmitted frame is a VIP packet or an ICMP error about one sent
    /// to a worker, or an echo reply from a VIP address.
    fn check_transmitted(&self, frame: &[u8], output: &[u8], for_vip: bool) -> anyhow::Result<()> {
        if for_vip || self.is_icmp_error_for_vip(frame) {
            return self.check_forwarded(frame, output);
        }
        if self.nat_vip_of_reply(frame).is_some() {
            return self.check_nat_reply(frame, output);
        }
        let Parsed::Ip(ip) = parse(frame) else {
            bail!("transmitted a frame that is not IP");
        };
        if !matches!(classify(frame, &ip), IcmpMessage::EchoRequest) {
            bail!("transmitted a frame that is neither a VIP's nor ICMP to one");
        }
        if !self.vip_addrs.contains(&ip.dst) {
            bail!("answered an echo request to an address that is no VIP's");
        }
        check_echo_reply(frame, output, &ip)
    }

    fn is_icmp_error_for_vip(&self, frame: &[u8]) -> bool {
        let Parsed::Ip(ip) = parse(frame) else {
            return false;
        };
        matches!(classify(frame, &ip), IcmpMessage::Error(e) if self.vips.contains(&(e.vip, e.vip_port, e.proto)) || self.vip_addrs.contains(&ip.dst))
    }

    fn check_forwarded(&self, frame: &[u8], output: &[u8]) -> anyhow::Result<()> {
        if let Some((forward, workers)) = self.vip_of(frame).and_then(|k| self.natted.get(&k)) {
            return self.check_natted(frame, output, *forward, workers);
        }
        if let Some((forward, workers)) = self.vip_of(frame).and_then(|k| self.tunnelled.get(&k)) {
            return check_encapsulated(frame, output, *forward, workers, &self.workers);
        }
        if output.len() != frame.len() || output[12..] != frame[12..] {
            bail!("a forwarded frame changed beyond its MACs");
        }
        if output[6..12] != frame[0..6] {
            bail!("the source MAC is not the old destination");
        }
        let to: [u8; 6] = output[0..6].try_into().expect("six bytes");
        if !self.workers.contains(&to) {
            bail!("forwarded to {to:02x?}, not a worker");
        }
        Ok(())
    }

    /// The VIP key of a packet for a VIP, or of the flow an ICMP error is
    /// about.
    fn vip_of(&self, frame: &[u8]) -> Option<VipId> {
        let Parsed::Ip(ip) = parse(frame) else {
            return None;
        };
        match classify(frame, &ip) {
            IcmpMessage::Error(e) => Some((e.vip, e.vip_port, e.proto)),
            _ => Some((ip.dst, ip.dport, ip.proto)),
        }
    }

    /// A frame for a NAT VIP, or an ICMP error about a flow of one, sent
    /// on: to one of its workers on the worker port, `fullnat` from a NAT
    /// source with an entry mapping it back, checksums as valid as they
    /// were.
    fn check_natted(
        &self,
        frame: &[u8],
        output: &[u8],
        forward: Forward,
        workers: &HashSet<[u8; 16]>,
    ) -> anyhow::Result<()> {
        let (Parsed::Ip(input), Parsed::Ip(out)) = (parse(frame), parse(output)) else {
            bail!("a NAT'd frame does not parse");
        };
        let to: [u8; 6] = output[0..6].try_into().expect("six bytes");
        if !self.workers.contains(&to) || output[6..12] != frame[0..6] {
            bail!("a NAT'd frame's MACs are not the worker's and ours");
        }
        if !workers.contains(&out.dst) {
            bail!("NAT'd to an address that is none of the VIP's workers");
        }
        if forward == Forward::Fullnat && !self.nat_sources.contains(&out.src) {
            bail!("fullnat sent from an address that is no NAT source");
        }
        check_sums_kept(frame, &input, output, &out)?;
        let is_icmp = !(out.proto == IPPROTO_TCP || out.proto == IPPROTO_UDP);
        if is_icmp {
            return Ok(());
        }
        if forward == Forward::Fullnat {
            let reply = lb_common::balancer::FlowKey {
                src: out.dst,
                dst: out.src,
                sport: out.dport,
                dport: out.sport,
                proto: out.proto,
                family: family_of(&out),
                pad: [0; 2],
            };
            let entry = self
                .nat_entry(&reply)
                .context("no NAT entry for a fullnat tuple")?;
            let flow = lb_common::balancer::FlowKey {
                src: input.src,
                dst: input.dst,
                sport: input.sport,
                dport: input.dport,
                proto: input.proto,
                family: family_of(&input),
                pad: [0; 2],
            };
            if entry.client != flow {
                bail!("the NAT entry of the tuple is another flow's");
            }
        }
        Ok(())
    }

    /// A frame from a NAT worker translated back: from its VIP, the rest
    /// as valid as it was.
    fn check_nat_reply(&self, frame: &[u8], output: &[u8]) -> anyhow::Result<()> {
        let Some(vip) = self.nat_vip_of_reply(frame) else {
            bail!("a frame that is no NAT worker's reply changed");
        };
        let (Parsed::Ip(input), Parsed::Ip(out)) = (parse(frame), parse(output)) else {
            bail!("a translated reply does not parse");
        };
        let is_icmp = !(out.proto == IPPROTO_TCP || out.proto == IPPROTO_UDP);
        if out.src != vip.0 || (!is_icmp && out.sport != vip.1) {
            bail!("a translated reply does not come from its VIP");
        }
        check_sums_kept(frame, &input, output, &out)
    }

    /// The VIP of a NAT worker whose packet (or ICMP error about one it
    /// was sent) `frame` is.
    fn nat_vip_of_reply(&self, frame: &[u8]) -> Option<VipId> {
        let Parsed::Ip(ip) = parse(frame) else {
            return None;
        };
        let worker = match classify(frame, &ip) {
            IcmpMessage::Error(e) => (e.client, e.client_port, e.proto),
            _ => (ip.src, ip.sport, ip.proto),
        };
        self.nat_workers.get(&worker).copied()
    }

    fn nat_entry(&self, key: &lb_common::balancer::FlowKey) -> Option<lb_common::nat::NatEntry> {
        let map = self.lb.map(lb_common::map_names::NAT)?;
        let table: aya::maps::HashMap<_, lb_common::balancer::FlowKey, lb_common::nat::NatEntry> =
            aya::maps::HashMap::try_from(map).ok()?;
        table.get(key, 0).ok()
    }

    /// Whether the shared parser sees TCP or UDP to a configured VIP.
    fn is_vip_packet(&self, frame: &[u8]) -> bool {
        match parse(frame) {
            Parsed::Ip(ip) => {
                (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP)
                    && !ip.later_fragment
                    && self.vips.contains(&(ip.dst, ip.dport, ip.proto))
            }
            Parsed::NotIp | Parsed::Malformed => false,
        }
    }
}

fn family_of(ip: &lb_common::packet::IpPacket) -> u8 {
    match ip.version {
        IpVersion::V4 => lb_common::balancer::FAMILY_V4,
        IpVersion::V6 => lb_common::balancer::FAMILY_V6,
    }
}

/// Every checksum of a translated frame verifies if it did before: the
/// IPv4 header's, and the transport's (or the ICMP message's) over the
/// bytes the IP length covers.
fn check_sums_kept(
    frame: &[u8],
    input: &lb_common::packet::IpPacket,
    output: &[u8],
    out: &lb_common::packet::IpPacket,
) -> anyhow::Result<()> {
    if ip_header_valid(frame, input) && !ip_header_valid(output, out) {
        bail!("the IPv4 header checksum no longer verifies");
    }
    if transport_valid(frame, input) == Some(true) && transport_valid(output, out) != Some(true) {
        bail!("the transport checksum no longer verifies");
    }
    Ok(())
}

fn ip_header_valid(frame: &[u8], ip: &lb_common::packet::IpPacket) -> bool {
    ip.version == IpVersion::V6
        || crate::frames::ipv4_checksum(&frame[ip.l3_offset..ip.l4_offset]) == 0
}

/// Whether the TCP, UDP or ICMP checksum verifies over the bytes the IP
/// length covers (with the pseudo-header but for ICMPv4); `None` when the
/// length is beyond the frame or short of the transport header.
fn transport_valid(frame: &[u8], ip: &lb_common::packet::IpPacket) -> Option<bool> {
    let (l3, l4) = (ip.l3_offset, ip.l4_offset);
    let v6 = ip.version == IpVersion::V6;
    let end = if v6 {
        l3 + 40 + usize::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]))
    } else {
        l3 + usize::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]))
    };
    let segment = frame.get(l4..end)?;
    if ip.proto == IPPROTO_UDP && !v6 && segment.get(6..8)? == [0, 0] {
        return Some(true);
    }
    let mut bytes = Vec::new();
    if v6 {
        bytes.extend_from_slice(&frame[l3 + 8..l3 + 40]);
        bytes.extend_from_slice(&(segment.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, ip.proto]);
    } else if ip.proto != 1 {
        bytes.extend_from_slice(&frame[l3 + 12..l3 + 20]);
        bytes.extend_from_slice(&[0, ip.proto]);
        bytes.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    }
    bytes.extend_from_slice(segment);
    Some(crate::frames::ipv4_checksum(&bytes) == 0)
}

/// An encapsulated frame: a new Ethernet header (to a worker's MAC, from
/// the old destination), the method's outer headers to one of the VIP's
/// `workers`, then the input's IP packet byte for byte.
fn check_encapsulated(
    frame: &[u8],
    output: &[u8],
    forward: Forward,
    workers: &HashSet<IpAddr>,
    macs: &HashSet<[u8; 6]>,
) -> anyhow::Result<()> {
    let to: [u8; 6] = output[0..6].try_into().expect("six bytes");
    if !macs.contains(&to) || output[6..12] != frame[0..6] {
        bail!("an encapsulated frame is not from the old destination to a worker");
    }
    let inner_v6 = frame[12..14] == [0x86, 0xdd];
    let (worker, outer, proto_at): (IpAddr, usize, usize) = match (output[12], output[13]) {
        (0x08, 0x00) => {
            let dst: [u8; 4] = output[30..34].try_into().expect("four bytes");
            if crate::frames::ipv4_checksum(&output[14..34]) != 0 || output[14] != 0x45 {
                bail!("the outer IPv4 header is not a valid 20-byte one");
            }
            (IpAddr::from(dst), 20, 23)
        }
        (0x86, 0xdd) => {
            let dst: [u8; 16] = output[38..54].try_into().expect("sixteen bytes");
            (IpAddr::from(dst), 40, 20)
        }
        _ => bail!("an encapsulated frame that is neither IPv4 nor IPv6"),
    };
    if !workers.contains(&worker) {
        bail!("encapsulated to {worker}, not one of the VIP's workers");
    }
    let udp = if forward == Forward::Gue { 8 } else { 0 };
    let proto = match (forward, inner_v6) {
        (Forward::Gue, _) => IPPROTO_UDP,
        (_, false) => 4,
        (_, true) => 41,
    };
    if output[proto_at] != proto {
        bail!("outer protocol {} for {forward:?}", output[proto_at]);
    }
    if output.len() != frame.len() + outer + udp || output[14 + outer + udp..] != frame[14..] {
        bail!("the inner packet is not the input's, whole and unchanged");
    }
    Ok(())
}

/// The IP length field of a transmitted frame, read from its bytes, must
/// stay inside the frame and cover the headers up to the end of TCP's or
/// UDP's: an independent check on the shared parser, which lb also runs.
fn check_ip_length(frame: &[u8]) -> anyhow::Result<()> {
    let Parsed::Ip(ip) = parse(frame) else {
        bail!("transmitted a frame that is not IP");
    };
    let (l3, l4) = (ip.l3_offset, ip.l4_offset);
    let field = |at: usize| usize::from(u16::from_be_bytes([frame[at], frame[at + 1]]));
    let end = match ip.version {
        IpVersion::V4 => l3 + field(l3 + 2),
        IpVersion::V6 => l3 + 40 + field(l3 + 4),
    };
    let transport = match ip.proto {
        _ if ip.later_fragment => 0,
        IPPROTO_TCP => usize::from(frame[l4 + 12] >> 4) * 4,
        IPPROTO_UDP => 8,
        _ => 0,
    };
    if end > frame.len() {
        bail!(
            "transmitted a frame whose IP length ends at {end}, beyond its {} bytes",
            frame.len()
        );
    }
    if end < l4 + transport {
        bail!("transmitted a frame whose IP length ends at {end}, inside its headers");
    }
    Ok(())
}

fn check_counters(
    before: &GlobalCounters,
    after: &GlobalCounters,
    verdict: u32,
    len: usize,
) -> anyhow::Result<()> {
    let delta = |f: fn(&GlobalCounters) -> u64| f(after) - f(before);
    if delta(|c| c.packets) != 1 || delta(|c| c.bytes) != len as u64 {
        bail!("packets or bytes did not move by one frame");
    }
    if delta(GlobalCounters::class_total) != 1 {
        bail!("not exactly one packet class moved");
    }
    let outcomes = [
        (
            XDP_TX,
            delta(|c| {
                c.forwarded
                    + c.icmp_echo_replies
                    + c.icmp_errors_forwarded
                    + c.too_big_answered
                    + c.nat_replies
            }),
        ),
        (XDP_PASS, delta(|c| c.pass_not_vip + c.nat_replies_unrouted)),
        (
            XDP_DROP,
            delta(|c| {
                c.drop_no_backend
                    + c.drop_no_neighbour
                    + c.drop_no_tunnel
                    + c.too_big_dropped
                    + c.drop_no_nat
                    + c.nat_ports_exhausted
                    + c.nat_table_full
                    + c.nat_ttl_expired
            }),
        ),
    ];
    for (outcome, moved) in outcomes {
        let expected = u64::from(outcome == verdict);
        if moved != expected {
            bail!("outcome counter of verdict {outcome} moved by {moved}, verdict {verdict}");
        }
    }
    Ok(())
}

/// An echo reply made in place: MACs and addresses swapped, type changed,
/// checksum still right, nothing else touched.
fn check_echo_reply(
    frame: &[u8],
    output: &[u8],
    ip: &lb_common::packet::IpPacket,
) -> anyhow::Result<()> {
    let (l3, l4) = (ip.l3_offset, ip.l4_offset);
    let (src, dst, reply) = match ip.version {
        IpVersion::V4 => (l3 + 12..l3 + 16, l3 + 16..l3 + 20, ICMP_ECHO_REPLY),
        IpVersion::V6 => (l3 + 8..l3 + 24, l3 + 24..l3 + 40, ICMPV6_ECHO_REPLY),
    };
    let mut expected = frame.to_vec();
    expected[0..6].copy_from_slice(&frame[6..12]);
    expected[6..12].copy_from_slice(&frame[0..6]);
    expected[src.clone()].copy_from_slice(&frame[dst.clone()]);
    expected[dst].copy_from_slice(&frame[src]);
    let old = u16::from_be_bytes([frame[l4], frame[l4 + 1]]);
    expected[l4] = reply;
    let new = u16::from_be_bytes([expected[l4], expected[l4 + 1]]);
    let check = u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]);
    let updated = lb_common::icmp::checksum_update(check, old, new);
    expected[l4 + 2..l4 + 4].copy_from_slice(&updated.to_be_bytes());
    if output != expected.as_slice() {
        bail!("the echo reply is not the request turned around");
    }
    Ok(())
}

/// Valid frames to mutate: every class the packet tests use.
fn seeds() -> Vec<Vec<u8>> {
    let ip = |t: &str| -> IpAddr { t.parse().expect("valid") };
    let (c4, c6, v4, v6) = (
        ip("203.0.113.7"),
        ip("2001:db8:2::7"),
        ip("192.0.2.100"),
        ip("2001:db8::100"),
    );
    let mut packets = vec![
        Packet::tcp(c4, 40000, v4, 80, tcp::SYN),
        Packet::tcp(c4, 40000, v4, 80, tcp::ACK),
        Packet::tcp(c6, 40000, v6, 80, tcp::SYN),
        Packet::udp(c4, 5000, v4, 53),
        Packet::udp(c6, 5000, v6, 53),
        Packet::tcp(c4, 40000, ip("192.0.2.2"), 22, tcp::ACK),
        Packet::tcp(c4, 40000, ip("192.0.2.101"), 80, tcp::SYN),
        Packet::tcp(c4, 40000, ip("192.0.2.102"), 80, tcp::SYN),
        Packet::tcp(c4, 40000, ip("192.0.2.102"), 80, tcp::ACK),
        Packet::udp(c6, 5000, ip("2001:db8::102"), 53),
        Packet::new(
            c4,
            v4,
            Transport::Icmp {
                kind: 8,
                code: 0,
                rest: [0, 1, 0, 1],
            },
        ),
    ];
    let mut options = Packet::tcp(c4, 40001, v4, 80, tcp::SYN);
    options.ipv4_options = vec![1, 1, 1, 0];
    packets.push(options);
    let mut fragment = Packet::udp(c4, 5001, v4, 53);
    fragment.fragment = Some(Fragment {
        offset: 0,
        more: true,
    });
    packets.push(fragment);
    let mut tagged = Packet::tcp(c4, 40000, v4, 80, tcp::SYN);
    tagged.vlan = Some(7);
    packets.push(tagged);
    let mut hop = Packet::tcp(c6, 40000, v6, 80, tcp::SYN);
    hop.ipv6_hop_by_hop = true;
    packets.push(hop);
    for (router, client, vip, kind, cut) in [
        (ip("198.51.100.254"), c4, v4, 3, 28),
        (ip("2001:db8:3::254"), c6, v6, 2, 48),
    ] {
        let about = Packet::tcp(vip, 80, client, 40000, tcp::ACK).build();
        let mut error = Packet::new(
            router,
            vip,
            Transport::Icmp {
                kind,
                code: if kind == 3 { 4 } else { 0 },
                rest: [0, 0, 5, 0],
            },
        );
        error.payload = about[14..14 + cut].to_vec();
        packets.push(error);
    }
    let mut frames: Vec<Vec<u8>> = packets.iter().map(Packet::build).collect();
    // NAT VIPs, and their workers' replies (to the client for `nat`, to
    // a NAT source for `fullnat`, mostly on no allocated port), with
    // transport checksums that verify: NAT must keep them so.
    let (nat4, nat6) = (ip("192.0.2.103"), ip("2001:db8::103"));
    let nat = [
        Packet::tcp(c4, 40000, nat4, 80, tcp::SYN),
        Packet::tcp(c4, 40000, nat4, 80, tcp::ACK),
        Packet::udp(c6, 5000, nat6, 53),
        Packet::tcp(ip("198.51.100.70"), 8080, c4, 40000, tcp::SYN | tcp::ACK),
        Packet::udp(ip("2001:db8:1::80"), 5353, c6, 5000),
        Packet::udp(ip("2001:db8:1::81"), 5353, ip(NAT_SOURCES[1]), 20_000),
    ];
    frames.extend(nat.iter().map(|p| with_transport_checksum(p.build())));
    frames
}

/// One random change: flip a bit, set a byte, truncate, extend, or set the
/// IP length field.
fn mutate(frame: &mut Vec<u8>, random: &mut Random) {
    if frame.is_empty() {
        frame.push(random.byte());
        return;
    }
    let at = random.below(frame.len() as u64) as usize;
    match random.below(6) {
        0 => frame[at] ^= 1 << random.below(8),
        1 => frame[at] = random.byte(),
        2 => frame.truncate(at),
        3 => frame.extend((0..=random.below(16)).map(|_| random.byte())),
        4 => set_ip_length(frame, random),
        // Header bytes matter most: hit the first 80 often.
        _ => {
            let at = random.below(frame.len().min(80) as u64) as usize;
            frame[at] = random.byte();
        }
    }
}

/// Sets the IPv4 total length or IPv6 payload length of an untagged frame:
/// mostly within 40 of what the frame holds, where off-by-some bugs hide.
fn set_ip_length(frame: &mut [u8], random: &mut Random) {
    let (field, headers) = match frame.get(12..14) {
        Some([0x08, 0x00]) => (16, 14),
        Some([0x86, 0xdd]) => (18, 14 + 40),
        _ => return,
    };
    if frame.len() < field + 2 {
        return;
    }
    let held = frame.len().saturating_sub(headers) as i64;
    let len = if random.below(4) == 0 {
        random.next() as u16
    } else {
        (held + random.below(81) as i64 - 40).clamp(0, i64::from(u16::MAX)) as u16
    };
    frame[field..field + 2].copy_from_slice(&len.to_be_bytes());
}

/// xorshift64*.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}
