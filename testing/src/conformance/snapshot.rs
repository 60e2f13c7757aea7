//! Reading lb's maps into the specification's [`Maps`], and writing the
//! flow entries and sessions a case asks for: through descriptors of
//! their own (by map id), since the controller's `ControlMaps` holds the
//! object's.

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::maps::{Array, ArrayOfMaps, DevMapHash, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use lb_common::{
    balancer::{
        Backend, Config, FlowKey, FlowValue, IcmpBudget, StickyKey, StickyValue, TrafficCounters,
        VipAddrKey, VipInfo, VipKey, VipTag, LOAD_UNKNOWN,
    },
    counters::GlobalCounters,
    map_names,
    nat::{NatClientHop, NatConfig, NatEntry, NatHop, NatSource, NatWorkerKey, NatWorkerValue},
};
use lb_spec::Maps;

use crate::testrun::Loaded;

/// VIP ids read back (cases have fewer VIPs).
pub const READ_VIPS: u32 = 8;
/// Worker ids read back (cases have fewer workers; [`EMPTY_SLOT`] is one).
pub const READ_WORKERS: u32 = 48;
/// A worker slot no case writes.
pub const EMPTY_SLOT: u32 = 40;

/// The ids of the maps the specification covers.
pub struct MapIds(BTreeMap<&'static str, u32>);

/// BPF_PROG_TEST_RUN's frames come in on the loopback device.
pub const LOOPBACK: u32 = 1;

const COVERED: [&str; 21] = [
    map_names::CONFIG,
    map_names::VIPS,
    map_names::VIP_ADDRS,
    map_names::VIP_TAGS,
    map_names::BACKENDS,
    map_names::MAGLEV,
    map_names::LOAD,
    map_names::FLOWS,
    map_names::STICKY,
    map_names::PINS,
    map_names::COUNTERS,
    map_names::VIP_STATS,
    map_names::BACKEND_STATS,
    map_names::NAT_CONFIG,
    map_names::NAT_SOURCES,
    map_names::NAT,
    map_names::NAT_WORKERS,
    map_names::REPLY_FILTER,
    map_names::NAT_HOPS,
    map_names::IFACES,
    map_names::ICMP_BUDGET,
];

fn data(map: &Map) -> &MapData {
    match map {
        Map::Array(data)
        | Map::ArrayOfMaps(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::DevMapHash(data) => data,
        _ => panic!("the specification covers no other kind of map"),
    }
}

impl MapIds {
    /// The ids of `loaded`'s maps (before the controller takes them).
    pub fn of(loaded: &Loaded) -> anyhow::Result<Self> {
        let mut ids = BTreeMap::new();
        for name in COVERED {
            let map = loaded.map(name).with_context(|| format!("no map {name}"))?;
            ids.insert(name, data(map).info()?.id());
        }
        Ok(Self(ids))
    }

    fn open(&self, name: &str) -> anyhow::Result<Map> {
        let id = self.0[name];
        Ok(Map::from_map_data(MapData::from_id(id)?)?)
    }

    /// Writes flow entries.
    pub fn write_flows(&self, flows: &[(FlowKey, FlowValue)]) -> anyhow::Result<()> {
        let mut map: HashMap<MapData, FlowKey, FlowValue> =
            self.open(map_names::FLOWS)?.try_into()?;
        for (key, value) in flows {
            map.insert(key, value, 0)?;
        }
        Ok(())
    }

    /// Writes sticky sessions.
    pub fn write_sessions(&self, sessions: &[(StickyKey, StickyValue)]) -> anyhow::Result<()> {
        let mut map: HashMap<MapData, StickyKey, StickyValue> =
            self.open(map_names::STICKY)?.try_into()?;
        for (key, value) in sessions {
            map.insert(key, value, 0)?;
        }
        Ok(())
    }

    /// Sets the next hop cached in the NAT entry of the connection whose
    /// replies carry `key`.
    pub fn write_connection_hop(&self, key: &FlowKey, hop: NatHop) -> anyhow::Result<()> {
        let mut map: HashMap<MapData, FlowKey, NatEntry> = self.open(map_names::NAT)?.try_into()?;
        let entry = NatEntry {
            hop,
            ..map.get(key, 0)?
        };
        map.insert(key, entry, 0)?;
        Ok(())
    }

    /// Writes slot `slot` of the `nat` next-hop cache, on every CPU.
    pub fn write_client_hop(&self, slot: u32, cached: NatClientHop) -> anyhow::Result<()> {
        let mut map: PerCpuArray<MapData, NatClientHop> =
            self.open(map_names::NAT_HOPS)?.try_into()?;
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| error)?;
        map.set(slot, PerCpuValues::try_from(vec![cached; cpus])?, 0)?;
        Ok(())
    }

    /// Sets every CPU's "too big" budget to `budget`.
    pub fn write_budget(&self, budget: IcmpBudget) -> anyhow::Result<()> {
        let mut map: PerCpuArray<MapData, IcmpBudget> =
            self.open(map_names::ICMP_BUDGET)?.try_into()?;
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| error)?;
        map.set(0, PerCpuValues::try_from(vec![budget; cpus])?, 0)?;
        Ok(())
    }

    /// The budget of the CPU a frame ran on, every CPU's having been set
    /// to `written` before: the one copy that changed, if one did.
    pub fn read_budget(&self, written: IcmpBudget) -> anyhow::Result<IcmpBudget> {
        let map: PerCpuArray<MapData, IcmpBudget> =
            self.open(map_names::ICMP_BUDGET)?.try_into()?;
        let copies = map.get(&0, 0)?;
        let mut changed = copies.iter().filter(|copy| **copy != written);
        let first = changed.next().copied();
        anyhow::ensure!(changed.next().is_none(), "two CPUs' budgets changed");
        Ok(first.unwrap_or(written))
    }

    /// Everything the specification reads.
    pub fn read(&self) -> anyhow::Result<Maps> {
        let config: Array<MapData, Config> = self.open(map_names::CONFIG)?.try_into()?;
        let vips: HashMap<MapData, VipKey, VipInfo> = self.open(map_names::VIPS)?.try_into()?;
        let vips: std::collections::HashMap<_, _> = vips.iter().collect::<Result<_, _>>()?;
        let addrs: HashMap<MapData, VipAddrKey, u8> =
            self.open(map_names::VIP_ADDRS)?.try_into()?;
        let tags: Array<MapData, VipTag> = self.open(map_names::VIP_TAGS)?.try_into()?;
        let backends: Array<MapData, Backend> = self.open(map_names::BACKENDS)?.try_into()?;
        let loads: Array<MapData, u32> = self.open(map_names::LOAD)?.try_into()?;
        let pins: HashMap<MapData, StickyKey, u32> = self.open(map_names::PINS)?.try_into()?;
        let mut maps = Maps {
            hash_seed: config.get(&0, 0)?.hash_seed,
            vip_addrs: addrs.keys().collect::<Result<_, _>>()?,
            max_vips: tags.len(),
            max_backends: backends.len(),
            tables: self.tables(&vips)?,
            vips,
            pins: pins.iter().collect::<Result<_, _>>()?,
            ..Maps::default()
        };
        for id in 0..READ_VIPS {
            maps.vip_tags.insert(id, tags.get(&id, 0)?);
        }
        for id in 0..READ_WORKERS {
            maps.backends.insert(id, backends.get(&id, 0)?);
            let load = loads.get(&id, 0)?;
            if load != LOAD_UNKNOWN {
                maps.loads.insert(id, load);
            }
        }
        self.read_nat(&mut maps)?;
        self.read_written(&mut maps)?;
        Ok(maps)
    }

    fn read_nat(&self, maps: &mut Maps) -> anyhow::Result<()> {
        let config: Array<MapData, NatConfig> = self.open(map_names::NAT_CONFIG)?.try_into()?;
        maps.nat_config = config.get(&0, 0)?;
        let sources: Array<MapData, NatSource> = self.open(map_names::NAT_SOURCES)?.try_into()?;
        for slot in 0..sources.len() {
            let source = sources.get(&slot, 0)?;
            if source != NatSource::default() {
                maps.nat_sources.insert(slot as u8, source);
            }
        }
        let workers: HashMap<MapData, NatWorkerKey, NatWorkerValue> =
            self.open(map_names::NAT_WORKERS)?.try_into()?;
        maps.nat_workers = workers.iter().collect::<Result<_, _>>()?;
        let filter: Array<MapData, u64> = self.open(map_names::REPLY_FILTER)?.try_into()?;
        maps.reply_filter = (0..filter.len())
            .map(|i| filter.get(&i, 0))
            .collect::<Result<_, _>>()?;
        let hops: PerCpuArray<MapData, NatClientHop> =
            self.open(map_names::NAT_HOPS)?.try_into()?;
        for slot in 0..hops.len() {
            let copies = hops.get(&slot, 0)?;
            let first = copies.iter().next().copied().unwrap_or_default();
            if first != NatClientHop::default() && copies.iter().all(|copy| *copy == first) {
                maps.nat_hops.insert(slot, first);
            }
        }
        let ifaces: DevMapHash<MapData> = self.open(map_names::IFACES)?.try_into()?;
        maps.ifaces = ifaces.keys().collect::<Result<_, _>>()?;
        maps.ingress = LOOPBACK;
        Ok(())
    }

    fn tables(
        &self,
        vips: &std::collections::HashMap<VipKey, VipInfo>,
    ) -> anyhow::Result<std::collections::HashMap<u32, Vec<u32>>> {
        let outer: ArrayOfMaps<MapData, MapData> = self.open(map_names::MAGLEV)?.try_into()?;
        let mut tables = std::collections::HashMap::new();
        for info in vips.values() {
            let inner: Array<MapData, u32> = Map::Array(outer.get(&info.id, 0)?).try_into()?;
            let slots = (0..inner.len())
                .map(|i| inner.get(&i, 0))
                .collect::<Result<_, _>>()?;
            tables.insert(info.id, slots);
        }
        Ok(tables)
    }

    /// What the data plane writes: flows, sessions, counters, statistics.
    pub fn read_written(&self, maps: &mut Maps) -> anyhow::Result<()> {
        let flows: HashMap<MapData, FlowKey, FlowValue> =
            self.open(map_names::FLOWS)?.try_into()?;
        maps.flows = flows.iter().collect::<Result<_, _>>()?;
        let sessions: HashMap<MapData, StickyKey, StickyValue> =
            self.open(map_names::STICKY)?.try_into()?;
        maps.sessions = sessions.iter().collect::<Result<_, _>>()?;
        let nat: HashMap<MapData, FlowKey, NatEntry> = self.open(map_names::NAT)?.try_into()?;
        maps.nat = nat.iter().collect::<Result<_, _>>()?;
        let counters: PerCpuArray<MapData, GlobalCounters> =
            self.open(map_names::COUNTERS)?.try_into()?;
        maps.counters = GlobalCounters::default();
        for copy in counters.get(&0, 0)?.iter() {
            maps.counters.accumulate(copy);
        }
        maps.vip_stats = self.traffic(map_names::VIP_STATS, READ_VIPS)?;
        maps.backend_stats = self.traffic(map_names::BACKEND_STATS, READ_WORKERS)?;
        Ok(())
    }

    fn traffic(&self, name: &str, ids: u32) -> anyhow::Result<BTreeMap<u32, TrafficCounters>> {
        let array: PerCpuArray<MapData, TrafficCounters> = self.open(name)?.try_into()?;
        let mut read = BTreeMap::new();
        for id in 0..ids {
            let mut total = TrafficCounters::default();
            for copy in array.get(&id, 0)?.iter() {
                total.accumulate(copy);
            }
            if total != TrafficCounters::default() {
                read.insert(id, total);
            }
        }
        Ok(read)
    }
}
