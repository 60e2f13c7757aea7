//! The NAT maps the controller owns: the settings and sources the data
//! plane allocates from, the `nat` workers' reverse entries and the reply
//! filter (both rebuilt whole from the desired state and written as a
//! difference), and the sweep that frees `fullnat` connections' ports.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::IpAddr,
    str::FromStr,
};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use lb_common::{
    balancer::{
        vip_filter_bit, Backend, FlowKey, FlowValue, VipTag, FLOW_CLOSING, VIP_FILTER_WORDS,
    },
    map_names,
    nat::{
        self, NatConfig, NatEntry, NatSource, NatWorkerKey, NatWorkerValue, DEFAULT_NAT_PORTS,
        NAT_DEAD, NAT_SOURCES_PER_FAMILY,
    },
};

use crate::service;

/// A `--nat-ports` range, `LOW-HIGH`, both included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPorts {
    /// The lowest port.
    pub low: u16,
    /// The highest port.
    pub high: u16,
}

impl Default for NatPorts {
    fn default() -> Self {
        Self {
            low: DEFAULT_NAT_PORTS.0,
            high: DEFAULT_NAT_PORTS.1,
        }
    }
}

impl std::fmt::Display for NatPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl FromStr for NatPorts {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (low, high) = text
            .split_once('-')
            .ok_or_else(|| format!("{text:?} is not a range LOW-HIGH (say 20000-32767)"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
        };
        let (low, high) = (port(low)?, port(high)?);
        if low > high {
            return Err(format!("{text:?} is empty: LOW is above HIGH"));
        }
        Ok(Self { low, high })
    }
}

impl NatPorts {
    /// Whether it shares a port with `low..=high`.
    pub fn overlaps(&self, low: u16, high: u16) -> bool {
        self.low <= high && low <= self.high
    }
}

/// The NAT sources and port range of an instance (checked against the
/// host by `NatSettings::new`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatSettings {
    /// The NAT source addresses, in the order given.
    pub sources: Vec<IpAddr>,
    /// The port range.
    pub ports: NatPorts,
}

/// The NAT maps.
pub struct NatMaps {
    config: Array<MapData, NatConfig>,
    sources: Array<MapData, NatSource>,
    workers: HashMap<MapData, NatWorkerKey, NatWorkerValue>,
    filter: Array<MapData, u64>,
    /// What `filter` holds, to write only the words that change.
    filter_words: Vec<u64>,
    /// What `workers` holds, as last written.
    written: StdHashMap<NatWorkerKey, NatWorkerValue>,
}

/// A NAT worker as the desired state has it, for [`NatMaps::sync`].
pub struct NatWorker {
    /// Its address.
    pub addr: IpAddr,
    /// Its port (host order): its own or its VIP's.
    pub port: u16,
    /// Its VIP's address, port (host order), protocol.
    pub vip: (IpAddr, u16, u8),
    /// Its VIP's id.
    pub vip_id: u32,
    /// Its worker id.
    pub backend_id: u32,
    /// Whether its VIP is `nat` (stateless replies) rather than `fullnat`.
    pub stateless: bool,
}

/// `fullnat` connections in the NAT table by NAT source slot.
pub type NatEntries = [u64; 2 * NAT_SOURCES_PER_FAMILY as usize];

/// What one sweep of the NAT table found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Entries in the table (live and dead) before the sweep.
    pub entries: u64,
    /// Entries marked dead: expired or stale.
    pub marked: u64,
    /// Dead entries deleted, their ports free again.
    pub freed: u64,
    /// Entries left, by NAT source slot.
    pub per_slot: NatEntries,
}

/// `BPF_EXIST`: an update that only replaces an element still there.
const BPF_EXIST: u64 = 2;

fn take(ebpf: &mut aya::Ebpf, name: &str) -> Map {
    ebpf.take_map(name)
        .unwrap_or_else(|| panic!("the embedded object defines map {name}"))
}

impl NatMaps {
    /// Takes the NAT maps the controller writes out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            config: take(ebpf, map_names::NAT_CONFIG).try_into()?,
            sources: take(ebpf, map_names::NAT_SOURCES).try_into()?,
            workers: take(ebpf, map_names::NAT_WORKERS).try_into()?,
            filter: take(ebpf, map_names::REPLY_FILTER).try_into()?,
            // Unknown (an adopted map may hold anything): the first sync
            // writes every word.
            filter_words: vec![u64::MAX; VIP_FILTER_WORDS as usize],
            written: StdHashMap::new(),
        })
    }

    /// Writes the sources and the port range. A pinned seed is kept (a
    /// restarted controller must find the same ports), and so is each
    /// pinned source's slot: flows record slots, not addresses. A source
    /// no longer given keeps its slot (its connections still use it) but
    /// takes no new ones.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "slots are below 2 × NAT_SOURCES_PER_FAMILY (32) and a family has at most NAT_SOURCES_PER_FAMILY (16) active: both fit the u8 the data plane reads"
    )]
    pub fn write_settings(
        &mut self,
        settings: &NatSettings,
        fresh_seed: u32,
    ) -> Result<(), MapError> {
        let old = self.config.get(&0, 0)?;
        let mut config = NatConfig {
            seed: if old.seed != 0 {
                old.seed
            } else {
                fresh_seed | 1
            },
            port_low: settings.ports.low,
            port_high: settings.ports.high,
            ..NatConfig::default()
        };
        for v6 in [false, true] {
            let base = if v6 { NAT_SOURCES_PER_FAMILY } else { 0 };
            let slots: Vec<u32> = (base..base + NAT_SOURCES_PER_FAMILY).collect();
            let pinned: Vec<Option<IpAddr>> = slots
                .iter()
                .map(|&slot| {
                    let source = self.sources.get(&slot, 0).ok()?;
                    service::addr_from_bytes(source.addr, source.family)
                })
                .collect();
            let mut active = Vec::new();
            for source in settings.sources.iter().filter(|s| s.is_ipv6() == v6) {
                let index = match pinned.iter().position(|p| *p == Some(*source)) {
                    Some(index) => index,
                    None => {
                        let free = (0..slots.len())
                            .find(|i| pinned[*i].is_none() && !active.contains(&(slots[*i] as u8)));
                        // NatSettings holds at most 16 a family; a slot kept
                        // for an old source can crowd a new one out.
                        let Some(free) = free else {
                            tracing::warn!("no NAT source slot left for {source}: sources dropped earlier still hold theirs until lb starts with --force");
                            continue;
                        };
                        let (addr, family) = service::addr_bytes(*source);
                        self.sources.set(
                            slots[free],
                            NatSource {
                                addr,
                                family,
                                pad: [0; 3],
                            },
                            0,
                        )?;
                        free
                    }
                };
                active.push(slots[index] as u8);
            }
            let (list, count) = if v6 {
                (&mut config.v6_slots, &mut config.v6_count)
            } else {
                (&mut config.v4_slots, &mut config.v4_count)
            };
            for (i, slot) in active.iter().enumerate() {
                list[i] = *slot;
            }
            *count = active.len() as u8;
        }
        self.config.set(0, config, 0)
    }

    /// Makes the `nat` workers' reverse entries and the reply filter what
    /// `workers` says (and the NAT sources, in the filter): entries are
    /// added before, and removed after, the filter bits that lead to them.
    /// Call after [`NatMaps::write_settings`].
    pub fn sync(&mut self, workers: &[NatWorker]) -> Result<(), MapError> {
        let mut wanted = StdHashMap::new();
        let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
        for worker in workers {
            let (addr, family) = service::addr_bytes(worker.addr);
            let (vip_addr, vip_port, proto) = worker.vip;
            let bit = vip_filter_bit(&addr, worker.port.to_be(), proto);
            words[(bit >> 6) as usize] |= 1 << (bit & 63);
            if worker.stateless {
                let key = NatWorkerKey {
                    addr,
                    port: worker.port.to_be(),
                    proto,
                    family,
                };
                let value = NatWorkerValue {
                    vip: service::addr_bytes(vip_addr).0,
                    vip_port: vip_port.to_be(),
                    pad: 0,
                    vip_id: worker.vip_id,
                    backend_id: worker.backend_id,
                };
                wanted.insert(key, value);
            }
        }
        // Every pinned source, given or not: a dropped one's connections
        // still answer to it.
        for slot in 0..2 * NAT_SOURCES_PER_FAMILY {
            let source = self.sources.get(&slot, 0)?;
            if source.family != 0 {
                let bit = nat::source_bit(&source.addr);
                words[(bit >> 6) as usize] |= 1 << (bit & 63);
            }
        }
        for (key, value) in &wanted {
            if self.written.get(key) != Some(value) {
                self.workers.insert(*key, *value, 0)?;
            }
        }
        for (index, (&want, have)) in (0u32..).zip(words.iter().zip(&mut self.filter_words)) {
            if want != *have {
                self.filter.set(index, want, 0)?;
                *have = want;
            }
        }
        let pinned: Vec<NatWorkerKey> = self.workers.keys().filter_map(Result::ok).collect();
        for key in pinned {
            if !wanted.contains_key(&key) {
                self.workers.remove(&key)?;
            }
        }
        self.written = wanted;
        Ok(())
    }
}

/// One pass over the NAT table in `pin_dir`, at `now_ns` (coarse
/// monotonic clock): deletes the entries the last pass marked dead (and
/// their flow entries, where those still name the entry's port), then
/// marks dead those expired ([`nat::expired`]) or stale (their VIP or
/// worker slot holds another tag or generation). Two passes, so that the
/// data plane, which never follows a dead entry, has stopped using a port
/// before it is free.
pub fn sweep(pin_dir: &std::path::Path, now_ns: u64) -> Result<Swept, MapError> {
    let open = |name| super::maps::open_pinned(pin_dir, name);
    let mut table: HashMap<MapData, FlowKey, NatEntry> = open(map_names::NAT)?.try_into()?;
    let mut flows: HashMap<MapData, FlowKey, FlowValue> = open(map_names::FLOWS)?.try_into()?;
    let tags: Array<MapData, VipTag> = open(map_names::VIP_TAGS)?.try_into()?;
    let backends: Array<MapData, Backend> = open(map_names::BACKENDS)?.try_into()?;
    let keys: Vec<FlowKey> = table.keys().filter_map(Result::ok).collect();
    let mut swept = Swept {
        entries: keys.len() as u64,
        ..Swept::default()
    };
    let mut seen = HashSet::new();
    for key in keys {
        let Ok(mut entry) = table.get(&key, 0) else {
            continue;
        };
        if !seen.insert(key) {
            continue;
        }
        let flow = flows.get(&entry.client, 0).ok();
        let ours = flow.filter(|f| f.nat_source == entry.source && f.nat_port == key.dport);
        if entry.flags & NAT_DEAD != 0 {
            if ours.is_some() {
                // Gone already if the LRU evicted it meanwhile.
                let _ = flows.remove(&entry.client);
            }
            table.remove(&key)?;
            swept.freed += 1;
            continue;
        }
        let tag = tags.get(&entry.vip_id, 0).ok();
        let backend = backends.get(&entry.backend_id, 0).ok();
        let stale = tag.is_none_or(|t| t.tag != entry.vip_tag)
            || backend.is_none_or(|b| b.generation != entry.backend_generation);
        let last_seen = ours.map_or(entry.last_seen_ns, |f| {
            f.last_seen_ns.max(entry.last_seen_ns)
        });
        let closing = ours.is_some_and(|f| f.flags & FLOW_CLOSING != 0);
        let idle_timeout = tag.map_or(0, |t| t.idle_timeout_s);
        if stale || nat::expired(entry.state, closing, last_seen, now_ns, idle_timeout) {
            entry.flags |= NAT_DEAD;
            // Only if still there: never bring back an entry gone meanwhile.
            if table.insert(key, entry, BPF_EXIST).is_ok() {
                swept.marked += 1;
            }
        }
        if let Some(count) = swept.per_slot.get_mut(usize::from(entry.source)) {
            *count += 1;
        }
    }
    Ok(swept)
}

/// The NAT sources by slot, as pinned: for showing flows' NAT tuples and
/// labelling entry counts.
pub fn sources(pin_dir: &std::path::Path) -> StdHashMap<u8, IpAddr> {
    let Ok(map) = super::maps::open_pinned(pin_dir, map_names::NAT_SOURCES) else {
        return StdHashMap::new();
    };
    let Ok(array) = Array::<MapData, NatSource>::try_from(map) else {
        return StdHashMap::new();
    };
    (0..2 * NAT_SOURCES_PER_FAMILY)
        .filter_map(|slot| {
            let source = array.get(&slot, 0).ok()?;
            Some((
                u8::try_from(slot).ok()?,
                service::addr_from_bytes(source.addr, source.family)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_bad_ones_say_why() {
        assert_eq!(
            "20000-20001".parse(),
            Ok(NatPorts {
                low: 20000,
                high: 20001
            })
        );
        assert_eq!("7-7".parse(), Ok(NatPorts { low: 7, high: 7 }));
        for bad in ["20000", "2-1", "0-10", "10-70000", "a-b", ""] {
            assert!(bad.parse::<NatPorts>().is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap_is_any_shared_port() {
        let ports = NatPorts {
            low: 20000,
            high: 32767,
        };
        assert!(!ports.overlaps(32768, 60999));
        assert!(ports.overlaps(32767, 60999));
        assert!(ports.overlaps(1024, 20000));
        assert!(!ports.overlaps(1024, 19999));
    }
}
