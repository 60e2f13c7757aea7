//! Established-flow cost as the flow table fills: 1K to 10M active flows,
//! packets drawn at random from the whole set, and the table's memory.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData};
use lb_common::{
    balancer::{FlowKey, FlowValue, FAMILY_V4},
    map_names,
    packet::IPPROTO_TCP,
    program_names,
};
use lb_testing::{
    frames::{tcp, Packet},
    testrun::{configure, Loaded},
};

use super::{
    packet::{vips, worker_addr, WORKERS},
    samples::Samples,
    Plan,
};
use crate::floors;

/// Flows per client address in the generated flow set.
const PORTS_PER_CLIENT: u32 = 50_000;

/// One flow-table size.
pub struct Row {
    /// Active flows.
    pub flows: u32,
    /// Mean run time of an established-flow packet (ns), per round.
    pub cost: Samples,
    /// The LRU floor on the same flows in a table of the same size (ns).
    pub floor: Samples,
    /// Memory the kernel charges for the flow table (bytes).
    pub table_bytes: u64,
}

struct Instance {
    loaded: Loaded,
    floor: Loaded,
    flows: u32,
    table_bytes: u64,
}

/// Client address and port of flow `i` (203.0.113.0/24 × ports).
fn client(i: u32) -> (IpAddr, u16) {
    let host = (i / PORTS_PER_CLIENT) as u8;
    let port = 10_000 + (i % PORTS_PER_CLIENT) as u16;
    (IpAddr::V4(Ipv4Addr::new(203, 0, 113, host)), port)
}

fn key(i: u32) -> FlowKey {
    let (IpAddr::V4(src), sport) = client(i) else {
        unreachable!("IPv4 clients")
    };
    let mut key = FlowKey {
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto: IPPROTO_TCP,
        family: FAMILY_V4,
        ..FlowKey::default()
    };
    key.src[..4].copy_from_slice(&src.octets());
    key.dst[..4].copy_from_slice(&[192, 0, 2, 100]);
    key
}

fn frame(i: u32) -> Vec<u8> {
    let (src, sport) = client(i);
    let vip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100));
    Packet::tcp(src, sport, vip, 80, tcp::ACK).build()
}

fn instance(flows: u32) -> anyhow::Result<Instance> {
    let capacity = (flows + flows / 4).max(1024);
    let mut loaded = Loaded::lb(capacity)?;
    let _config = configure(&mut loaded, &vips()[..1], WORKERS, worker_addr)?;
    let mut table = loaded.flows(map_names::FLOWS)?;
    let mut floor = floors::load_with_flows(capacity)?;
    let mut floor_table = floor.flows(floors_common::map_names::FLOWS)?;
    let now = lb_userspace::dataplane::activity::monotonic_ns();
    let vip_tag = lb_common::balancer::vip_tag(&vips()[0].key());
    for i in 0..flows {
        let value = FlowValue {
            backend_id: i % WORKERS,
            vip_id: 0,
            created_ns: now,
            last_seen_ns: now,
            flags: 0,
            vip_tag,
            backend_generation: 1,
            nat_port: 0,
            nat_source: lb_common::nat::NO_NAT_SOURCE,
            pad: 0,
        };
        table
            .insert(key(i), value, 0)
            .with_context(|| format!("recording flow {i} of {flows}"))?;
        floor_table.insert(key(i), value, 0)?;
    }
    let table_bytes = memlock(&table)?;
    Ok(Instance {
        loaded,
        floor,
        flows,
        table_bytes,
    })
}

/// The `memlock` the kernel reports for a map (its memory).
fn memlock(map: &BpfHashMap<MapData, FlowKey, FlowValue>) -> anyhow::Result<u64> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in the map's fdinfo")
}

/// Measures every size in `plan.scale_sizes`, interleaved.
pub fn run(plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let instances = plan
        .scale_sizes
        .iter()
        .map(|&n| instance(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut costs = vec![(Samples::default(), Samples::default()); instances.len()];
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for _ in 0..plan.rounds {
        for (instance, (cost, floor)) in instances.iter().zip(&mut costs) {
            let lb = (&instance.loaded, program_names::BALANCER);
            cost.push(random_flows(lb, instance.flows, plan.singles, &mut random)?);
            let base = (&instance.floor, floors_common::program_names::LRU);
            floor.push(random_flows(
                base,
                instance.flows,
                plan.singles,
                &mut random,
            )?);
        }
    }
    Ok(instances
        .into_iter()
        .zip(costs)
        .map(|(i, (cost, floor))| Row {
            flows: i.flows,
            cost,
            floor,
            table_bytes: i.table_bytes,
        })
        .collect())
}

/// xorshift64: reproducible flow picks.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(n)) as u32
    }
}

/// The mean run time of `count` single runs of `program` on flows drawn
/// at random from the first `flows`.
fn random_flows(
    (target, program): (&Loaded, &str),
    flows: u32,
    count: u32,
    random: &mut Random,
) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for _ in 0..count {
        let i = random.below(flows);
        let (verdict, ns) = target.run(program, &frame(i), 1)?;
        anyhow::ensure!(verdict == 3, "{program}: flow {i} was not forwarded");
        total += ns;
    }
    Ok(total / f64::from(count))
}
