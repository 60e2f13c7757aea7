//! Per-packet cost: lb's program on each packet class next to the floor
//! programs, all through BPF_PROG_TEST_RUN, interleaved.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;

use aya::maps::HashMap as BpfHashMap;
use floors_common::{map_names as floor_maps, program_names as floor};
use lb_common::{
    balancer::{vip_filter_bit, FlowKey, FlowValue, FAMILY_V4},
    capture::{CaptureFilter, CAPTURE_ON, FILTER_CLIENT, MAX_SNAPLEN},
    map_names,
    nat::{hop_slot, NatClientHop, NatEntry, NatHop},
    packet::{widen, IPPROTO_TCP},
    program_names,
};
use lb_testing::{
    frames::{tcp, Packet},
    testrun::{configure_nat, configure_with, Loaded},
};
use lb_userspace::{
    dataplane::DEFAULT_MAX_FLOWS,
    desired::options::{Forward, VipOptions},
    service::Vip,
};

use super::{samples::Samples, Plan};
use crate::floors;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// Workers per VIP in the per-packet configuration.
pub const WORKERS: u32 = 100;

/// One measured packet class or floor.
pub struct Row {
    /// What was measured.
    pub name: &'static str,
    /// Mean run time of single runs, one sample per round (ns).
    pub single: Samples,
    /// Mean run time of `repeat`-runs, where the output is idempotent (ns).
    pub repeated: Option<Samples>,
}

/// Where a case's frames come from.
enum Frames {
    /// The same frame every run.
    Fixed(Vec<u8>),
    /// A packet with these TCP flags of a new connection to `vip`:80
    /// every run.
    NewFlows { next: u32, flags: u8, vip: IpAddr },
}

impl Frames {
    fn next(&mut self) -> Vec<u8> {
        match self {
            Self::Fixed(frame) => frame.clone(),
            Self::NewFlows { next, flags, vip } => {
                *next += 1;
                let [_, hi, lo_a, lo_b] = next.to_be_bytes();
                let src = IpAddr::V4(Ipv4Addr::new(198, 51, 100, hi));
                let sport = u16::from_be_bytes([lo_a, lo_b]);
                Packet::tcp(src, sport, *vip, 80, *flags).build()
            }
        }
    }
}

/// Which loaded object a case runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum On {
    /// The floor programs.
    Floors,
    /// lb as it ships, no capture running.
    Lb,
    /// lb built without the capture hook.
    LbWithoutHook,
    /// lb with a capture running whose filter matches nothing here.
    LbCapturing,
}

struct Case {
    name: &'static str,
    on: On,
    program: &'static str,
    frames: Frames,
    verdict: u32,
    repeatable: bool,
}

fn vip4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100))
}

fn vip6() -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100))
}

fn client4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))
}

/// The VIPs of the configuration: IPv4 TCP, IPv6 TCP, IPv4 UDP by DSR,
/// then IPv4 TCP by IPIP, by GUE, by `nat` and by `fullnat`.
pub fn vips() -> [Vip; 7] {
    [
        "192.0.2.100:80/tcp".parse().expect("valid"),
        "[2001:db8::100]:80/tcp".parse().expect("valid"),
        "192.0.2.100:53/udp".parse().expect("valid"),
        "192.0.2.101:80/tcp".parse().expect("valid"),
        "192.0.2.102:80/tcp".parse().expect("valid"),
        "192.0.2.103:80/tcp".parse().expect("valid"),
        "192.0.2.104:80/tcp".parse().expect("valid"),
    ]
}

/// The settings of VIP `index` of [`vips`]: its forwarding method.
pub fn vip_options(index: usize) -> VipOptions {
    let forward = match index {
        3 => Forward::Ipip,
        4 => Forward::Gue,
        5 => Forward::Nat,
        6 => Forward::Fullnat,
        _ => Forward::Dsr,
    };
    VipOptions {
        forward,
        ..VipOptions::default()
    }
}

/// Worker `n` of VIP `index`.
pub fn worker_addr(index: usize, n: u32) -> IpAddr {
    if index == 1 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n as u16 + 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, n as u8 + 1))
    }
}

/// The NAT workers' ports: `nat`'s and `fullnat`'s workers share
/// addresses, not ports, so a reply names its VIP.
fn nat_worker_port(vip: &Vip) -> u16 {
    if vip.addr == nat_vip() {
        8080
    } else {
        8081
    }
}

fn nat_vip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 103))
}

fn fullnat_vip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 104))
}

/// The NAT source of the configuration.
const NAT_SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// A `nat` worker's answer to `client`.
fn nat_reply(client: IpAddr) -> Packet {
    let worker = worker_addr(5, 0);
    Packet::tcp(worker, 8080, client, 40000, tcp::ACK)
}

/// A client whose next hop is never cached (BPF_PROG_TEST_RUN's loopback
/// routes no reply back out of itself), in another cache slot than
/// [`client4`]'s.
fn uncached_client() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 8))
}

/// A next hop "found in the future": fresh however long the benchmark
/// runs, on the loopback device BPF_PROG_TEST_RUN runs on.
const CACHED_HOP: NatHop = NatHop {
    macs: [2, 0, 0, 0, 0, 0x77, 2, 0, 0, 0, 0, 0x66],
    ifindex: 1,
    found_ns: u64::MAX / 2,
};

fn established() -> [(&'static str, Packet); 7] {
    let client6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 7));
    let ipip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 101));
    let gue = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 102));
    [
        (
            "lb nat: IPv4 TCP, established flow (to the worker)",
            Packet::tcp(client4(), 40000, nat_vip(), 80, tcp::ACK),
        ),
        (
            "lb fullnat: IPv4 TCP, established flow (to the worker)",
            Packet::tcp(client4(), 40000, fullnat_vip(), 80, tcp::ACK),
        ),
        (
            "lb: IPv4 TCP, established flow",
            Packet::tcp(client4(), 40000, vip4(), 80, tcp::ACK),
        ),
        (
            "lb: IPv6 TCP, established flow",
            Packet::tcp(client6, 40000, vip6(), 80, tcp::ACK),
        ),
        (
            "lb: IPv4 UDP, established flow",
            Packet::udp(client4(), 40000, vip4(), 53),
        ),
        (
            "lb IPIP: IPv4 TCP, established flow",
            Packet::tcp(client4(), 40000, ipip, 80, tcp::ACK),
        ),
        (
            "lb GUE: IPv4 TCP, established flow",
            Packet::tcp(client4(), 40000, gue, 80, tcp::ACK),
        ),
    ]
}

/// A floor that records a new flow every run.
fn insert_floor(name: &'static str, program: &'static str) -> Case {
    Case {
        name,
        on: On::Floors,
        program,
        frames: Frames::NewFlows {
            next: 3 << 22,
            flags: tcp::SYN,
            vip: vip4(),
        },
        verdict: XDP_TX,
        repeatable: false,
    }
}

/// Every case; `replies` are the workers' answers on the established
/// `fullnat` flows, next hop cached and not (their ports are allocated
/// at configuration).
fn cases(replies: &Replies) -> Vec<Case> {
    let tcp4 = established()[2].1.build();
    let floor_case = |name, program, verdict| Case {
        name,
        on: On::Floors,
        program,
        frames: Frames::Fixed(tcp4.clone()),
        verdict,
        repeatable: true,
    };
    let mut cases = vec![
        floor_case("floor: XDP_DROP", floor::DROP, XDP_DROP),
        floor_case("floor: parse + MAC swap + XDP_TX", floor::TX, XDP_TX),
        floor_case("floor: + 1 LRU hit (1M entries)", floor::LRU, XDP_TX),
        floor_case(
            "stage floor: lb's parse and counters + TX",
            floor::LB_PARSE,
            XDP_TX,
        ),
        floor_case("stage floor: + lb's VIP filter", floor::LB_FILTER, XDP_TX),
        floor_case(
            "stage floor: + flow-table hit with lb's key (1M entries)",
            floor::LB_FLOW,
            XDP_TX,
        ),
        insert_floor(
            "floor: + 1 LRU insert of a new flow (1M entries)",
            floor::INSERT,
        ),
        insert_floor(
            "floor: + 1 LRU insert, LRU list per CPU (1M entries)",
            floor::INSERT_PERCPU,
        ),
        Case {
            name: "lb: IPv4 TCP, new flow (SYN)",
            on: On::Lb,
            program: program_names::BALANCER,
            frames: Frames::NewFlows {
                next: 0,
                flags: tcp::SYN,
                vip: vip4(),
            },
            verdict: XDP_TX,
            repeatable: false,
        },
        Case {
            name: "lb IPIP: IPv4 TCP, new flow (SYN)",
            on: On::Lb,
            program: program_names::BALANCER,
            frames: Frames::NewFlows {
                next: 1 << 22,
                flags: tcp::SYN,
                vip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 101)),
            },
            verdict: XDP_TX,
            repeatable: false,
        },
        Case {
            name: "lb: IPv4 TCP, RST of no flow (scheduled, not recorded)",
            on: On::Lb,
            program: program_names::BALANCER,
            frames: Frames::NewFlows {
                next: 1 << 23,
                flags: tcp::RST,
                vip: vip4(),
            },
            verdict: XDP_TX,
            repeatable: true,
        },
    ];
    for (name, packet) in established() {
        // NAT's rewrite of a rewritten frame is another packet.
        let repeatable = packet.dst != nat_vip() && packet.dst != fullnat_vip();
        cases.push(Case {
            name,
            on: On::Lb,
            program: program_names::BALANCER,
            frames: Frames::Fixed(packet.build()),
            verdict: XDP_TX,
            repeatable,
        });
    }
    for (name, on) in [
        (
            "lb built without the capture hook: IPv4 TCP, established flow",
            On::LbWithoutHook,
        ),
        (
            "lb, a capture running that matches nothing here: IPv4 TCP, established flow",
            On::LbCapturing,
        ),
    ] {
        cases.push(Case {
            name,
            on,
            program: program_names::BALANCER,
            frames: Frames::Fixed(tcp4.clone()),
            verdict: XDP_TX,
            repeatable: true,
        });
    }
    // BPF_PROG_TEST_RUN runs on the loopback device, from which no route
    // leads to a client: the translated reply is passed to the kernel
    // (XDP_PASS) after the routing lookup a real reply also pays.
    // Most replies find their client's next hop cached (looked up at
    // most once a second per connection, or per client and CPU for nat):
    // those go straight out.
    for (name, frame, verdict) in [
        (
            "lb nat: IPv4 TCP, worker's reply (translated, routing lookup)",
            nat_reply(uncached_client()).build(),
            XDP_PASS,
        ),
        (
            "lb fullnat: IPv4 TCP, worker's reply (translated, routing lookup)",
            replies.fullnat_uncached.clone(),
            XDP_PASS,
        ),
        (
            "lb nat: IPv4 TCP, worker's reply (translated, next hop cached)",
            nat_reply(client4()).build(),
            XDP_TX,
        ),
        (
            "lb fullnat: IPv4 TCP, worker's reply (translated, next hop cached)",
            replies.fullnat_cached.clone(),
            XDP_TX,
        ),
    ] {
        cases.push(Case {
            name,
            on: On::Lb,
            program: program_names::BALANCER,
            frames: Frames::Fixed(frame),
            verdict,
            repeatable: false,
        });
    }
    cases.push(Case {
        name: "lb fullnat: IPv4 TCP, new flow (SYN, port allocated)",
        on: On::Lb,
        program: program_names::BALANCER,
        frames: Frames::NewFlows {
            next: 5 << 22,
            flags: tcp::SYN,
            vip: fullnat_vip(),
        },
        verdict: XDP_TX,
        repeatable: false,
    });
    let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
    cases.push(Case {
        name: "lb: IPv4 TCP, not for a VIP",
        on: On::Lb,
        program: program_names::BALANCER,
        frames: Frames::Fixed(Packet::tcp(client4(), 40000, other, 22, tcp::ACK).build()),
        verdict: XDP_PASS,
        repeatable: true,
    });
    cases
}

/// Measures every class and floor; rows in the order of [`cases`].
pub fn run(plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let (lb, replies) = configured(Loaded::lb(DEFAULT_MAX_FLOWS)?)?;
    let (without_hook, _) = configured(Loaded::lb_from(
        floors::LB_WITHOUT_CAPTURE,
        DEFAULT_MAX_FLOWS,
    )?)?;
    let (mut capturing, _) = configured(Loaded::lb(DEFAULT_MAX_FLOWS)?)?;
    capture_nothing(&mut capturing)?;
    let mut floors = floors::load()?;
    prepare_floor_lru(&mut floors)?;
    prepare_floor_filter(&mut floors)?;
    let mut cases = cases(&replies);
    let mut rows: Vec<Row> = cases
        .iter()
        .map(|c| Row {
            name: c.name,
            single: Samples::default(),
            repeated: c.repeatable.then(Samples::default),
        })
        .collect();
    for _ in 0..plan.rounds {
        for (case, row) in cases.iter_mut().zip(&mut rows) {
            let target = match case.on {
                On::Floors => &floors,
                On::Lb => &lb,
                On::LbWithoutHook => &without_hook,
                On::LbCapturing => &capturing,
            };
            row.single.push(single_runs(target, case, plan.singles)?);
            if let Some(repeated) = &mut row.repeated {
                let frame = case.frames.next();
                repeated.push(target.run(case.program, &frame, plan.repeat)?.1);
            }
        }
    }
    Ok(rows)
}

/// The workers' answers on two established `fullnat` flows: one whose
/// client's next hop is cached, one whose isn't.
pub struct Replies {
    fullnat_cached: Vec<u8>,
    fullnat_uncached: Vec<u8>,
}

/// `lb` with the benchmark's configuration and its established flows
/// recorded, and the workers' answers on its `fullnat` flows, with the
/// next hop of [`client4`] cached (nat: in every CPU's slot; fullnat: in
/// its connection's entry).
fn configured(mut lb: Loaded) -> anyhow::Result<(Loaded, Replies)> {
    // The configuration lives in the maps; the handle is not needed after.
    let (desired, mut maps) = configure_with(&mut lb, &vips(), WORKERS, worker_addr, vip_options)?;
    let sources = [IpAddr::V4(NAT_SOURCE)];
    configure_nat(
        &desired,
        &mut maps,
        nat_worker_port,
        &sources,
        (20_000, 32_767),
    )?;
    let mut cached = Vec::new();
    for (_, packet) in established() {
        // The first packet records the flow; the rest hit it.
        let (verdict, output) = lb.run_frame(program_names::BALANCER, &packet.build())?;
        anyhow::ensure!(verdict == XDP_TX, "lb did not forward {packet:?}");
        if packet.dst == fullnat_vip() {
            cached = turned_around(&output);
        }
    }
    let other = Packet::tcp(uncached_client(), 40000, fullnat_vip(), 80, tcp::ACK);
    let (verdict, output) = lb.run_frame(program_names::BALANCER, &other.build())?;
    anyhow::ensure!(verdict == XDP_TX, "lb did not forward {other:?}");
    let replies = Replies {
        fullnat_uncached: turned_around(&output),
        fullnat_cached: cached,
    };
    cache_hops(&mut lb, &replies.fullnat_cached)?;
    Ok((lb, replies))
}

/// Caches [`CACHED_HOP`] for [`client4`]: in its `nat` cache slot on
/// every CPU, and in the NAT entry of the `fullnat` connection `reply`
/// answers.
fn cache_hops(lb: &mut Loaded, reply: &[u8]) -> anyhow::Result<()> {
    let (client, _) = lb_userspace::service::addr_bytes(client4());
    anyhow::ensure!(
        hop_slot(&client) != hop_slot(&lb_userspace::service::addr_bytes(uncached_client()).0),
        "the uncached client shares the cached one's slot"
    );
    let mut hops: aya::maps::PerCpuArray<_, NatClientHop> = lb
        .map_mut(map_names::NAT_HOPS)
        .context("no NAT hop cache")?
        .try_into()?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let value = NatClientHop {
        client,
        hop: CACHED_HOP,
    };
    hops.set(
        hop_slot(&client),
        aya::maps::PerCpuValues::try_from(vec![value; cpus])?,
        0,
    )?;
    let mut table: BpfHashMap<_, FlowKey, NatEntry> = lb
        .map_mut(map_names::NAT)
        .context("no NAT table")?
        .try_into()?;
    let key = flow_key_of(reply).context("the reply is no TCP/IP frame")?;
    let mut entry = table.get(&key, 0)?;
    entry.hop = CACHED_HOP;
    table.insert(key, entry, 0)?;
    Ok(())
}

/// The flow key of a TCP or UDP frame as the shared parser reads it.
fn flow_key_of(frame: &[u8]) -> Option<FlowKey> {
    let lb_common::packet::Parsed::Ip(ip) = lb_common::packet::parse(frame) else {
        return None;
    };
    Some(FlowKey {
        src: ip.src,
        dst: ip.dst,
        sport: ip.sport,
        dport: ip.dport,
        proto: ip.proto,
        family: FAMILY_V4,
        pad: [0; 2],
    })
}

/// The answer to an IPv4 TCP frame lb sent a worker: addresses, ports and
/// MACs swapped (the checksums are not checked on the way).
fn turned_around(sent: &[u8]) -> Vec<u8> {
    let mut reply = sent.to_vec();
    reply[0..6].copy_from_slice(&sent[6..12]);
    reply[6..12].copy_from_slice(&sent[0..6]);
    reply[26..30].copy_from_slice(&sent[30..34]);
    reply[30..34].copy_from_slice(&sent[26..30]);
    reply[34..36].copy_from_slice(&sent[36..38]);
    reply[36..38].copy_from_slice(&sent[34..36]);
    reply
}

/// Starts a capture on `lb` whose filter (a client no case uses) matches
/// nothing: what every packet then pays is the hand-over and the filter.
fn capture_nothing(lb: &mut Loaded) -> anyhow::Result<()> {
    let mut filter: aya::maps::Array<_, CaptureFilter> = lb
        .ebpf_mut()
        .map_mut(map_names::CAPTURE)
        .context("no capture map")?
        .try_into()?;
    let wanted = CaptureFilter {
        enabled: CAPTURE_ON,
        snaplen: MAX_SNAPLEN,
        actions: u8::MAX,
        flags: FILTER_CLIENT,
        client_prefix: 32,
        client_family: FAMILY_V4,
        client: widen([198, 51, 100, 250]),
        ..CaptureFilter::default()
    };
    filter.set(0, wanted, 0)?;
    Ok(())
}

/// The mean kernel-reported time of `count` single runs.
fn single_runs(target: &Loaded, case: &mut Case, count: u32) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for _ in 0..count {
        let (verdict, ns) = target.run(case.program, &case.frames.next(), 1)?;
        anyhow::ensure!(
            verdict == case.verdict,
            "{}: verdict {verdict}, expected {}",
            case.name,
            case.verdict
        );
        total += ns;
    }
    Ok(total / f64::from(count))
}

/// Sets the floor frame's bit in the floors' VIP filter.
fn prepare_floor_filter(floors: &mut Loaded) -> anyhow::Result<()> {
    let mut filter: aya::maps::Array<_, u64> = floors
        .ebpf_mut()
        .map_mut(floor_maps::VIP_FILTER)
        .context("no floor VIP filter")?
        .try_into()?;
    let mut vip = [0u8; 16];
    vip[..4].copy_from_slice(&[192, 0, 2, 100]);
    let bit = vip_filter_bit(&vip, 80u16.to_be(), IPPROTO_TCP);
    filter.set(bit >> 6, 1u64 << (bit & 63), 0)?;
    Ok(())
}

/// Puts the floor frame's 5-tuple in the floor's LRU hash.
fn prepare_floor_lru(floors: &mut Loaded) -> anyhow::Result<()> {
    let mut map: BpfHashMap<_, FlowKey, FlowValue> = floors.flows(floor_maps::FLOWS)?;
    let mut key = FlowKey {
        proto: IPPROTO_TCP,
        family: FAMILY_V4,
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        ..FlowKey::default()
    };
    key.src[..4].copy_from_slice(&[203, 0, 113, 7]);
    key.dst[..4].copy_from_slice(&[192, 0, 2, 100]);
    map.insert(key, FlowValue::default(), 0)?;
    Ok(())
}
