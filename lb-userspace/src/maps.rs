//! Typed handles on the data plane's maps, for the controller (which owns
//! the writable ones) and for readers of the pinned maps.

use std::{net::IpAddr, path::Path, time::Duration, time::Instant};

use aya::maps::{Array, ArrayOfMaps, HashMap, Map, MapData, MapError, PerCpuArray};
use lb_common::{
    balancer::{
        vip_filter_bit, vip_tag, Backend, Config, StickyKey, TrafficCounters, VipAddrKey, VipInfo,
        VipKey, VipTag, BACKEND_MAC_KNOWN, BACKEND_VALID, NO_BACKEND, VIP_FILTER_WORDS,
        VIP_HAS_PINS, VIP_STICKY,
    },
    map_names, LAYOUT_VERSION,
};

use crate::{maglev, service, service::Vip, state::VipState};

/// What the data plane needs to know about a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerEntry {
    /// Its address.
    pub addr: IpAddr,
    /// Its MAC address, once resolved.
    pub mac: Option<[u8; 6]>,
    /// Its VIP's id.
    pub vip_id: u32,
    /// `BACKEND_DOWN`, `BACKEND_DRAINING`, `BACKEND_UNREACHABLE`.
    pub state_flags: u8,
    /// The slot's generation for this worker ([`ControlMaps::generation_for`]).
    pub generation: u32,
}

/// Flag inner maps need so that VIPs can have tables of different sizes.
const BPF_F_INNER_MAP: u32 = 1 << 12;

type MaglevTable = Array<MapData, u32>;

/// The maps the controller writes.
pub struct ControlMaps {
    vips: HashMap<MapData, VipKey, VipInfo>,
    backends: Array<MapData, Backend>,
    maglev: ArrayOfMaps<MapData, MaglevTable>,
    config: Array<MapData, Config>,
    load: Array<MapData, u32>,
    pins: HashMap<MapData, StickyKey, u32>,
    vip_filter: Array<MapData, u64>,
    vip_tags: Array<MapData, VipTag>,
    vip_addrs: HashMap<MapData, VipAddrKey, u8>,
    /// What `vip_filter` holds, to write only the words that change.
    filter_words: Vec<u64>,
}

fn take(ebpf: &mut aya::Ebpf, name: &str) -> Map {
    ebpf.take_map(name)
        .unwrap_or_else(|| panic!("the embedded object defines map {name}"))
}

impl ControlMaps {
    /// Takes the writable maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            vips: take(ebpf, map_names::VIPS).try_into()?,
            backends: take(ebpf, map_names::BACKENDS).try_into()?,
            maglev: take(ebpf, map_names::MAGLEV).try_into()?,
            config: take(ebpf, map_names::CONFIG).try_into()?,
            load: take(ebpf, map_names::LOAD).try_into()?,
            pins: take(ebpf, map_names::PINS).try_into()?,
            vip_filter: take(ebpf, map_names::VIP_FILTER).try_into()?,
            vip_tags: take(ebpf, map_names::VIP_TAGS).try_into()?,
            vip_addrs: take(ebpf, map_names::VIP_ADDRS).try_into()?,
            // Unknown (an adopted map may hold anything): the first
            // refresh writes every word.
            filter_words: vec![u64::MAX; VIP_FILTER_WORDS as usize],
        })
    }

    /// Rewrites the VIP filter words that differ from what the VIP map
    /// holds now. A bit is set before its VIP's entry is reachable and
    /// cleared after it is gone: a missing bit only ever sends a packet to
    /// the kernel, never misforwards it.
    pub fn refresh_filter(&mut self) -> Result<(), MapError> {
        let keys = self.vip_keys();
        self.refresh_addresses(&keys)?;
        let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
        for key in &keys {
            let bit = vip_filter_bit(&key.addr, key.port, key.proto);
            words[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
        for (index, (&want, have)) in words.iter().zip(&mut self.filter_words).enumerate() {
            if want != *have {
                self.vip_filter.set(index as u32, want, 0)?;
                *have = want;
            }
        }
        Ok(())
    }

    /// Writes the data plane's settings.
    pub fn write_config(&mut self, hash_seed: u32) -> Result<(), MapError> {
        let config = Config {
            hash_seed,
            layout_version: LAYOUT_VERSION,
        };
        self.config.set(0, config, 0)
    }

    /// Writes worker `id`; without a MAC the data plane counts and drops
    /// its packets until the neighbour is resolved.
    pub fn write_backend(&mut self, id: u32, worker: &WorkerEntry) -> Result<(), MapError> {
        let (bytes, family) = service::addr_bytes(worker.addr);
        let mac_flag = if worker.mac.is_some() {
            BACKEND_MAC_KNOWN
        } else {
            0
        };
        let backend = Backend {
            addr: bytes,
            mac: worker.mac.unwrap_or_default(),
            family,
            flags: BACKEND_VALID | mac_flag | worker.state_flags,
            vip_id: worker.vip_id,
            generation: worker.generation,
        };
        self.backends.set(id, backend, 0)
    }

    /// Empties slot `id`: its flows and sessions are scheduled afresh at
    /// their next packet. The generation stays, so the slot's next worker
    /// gets a new one.
    pub fn clear_backend(&mut self, id: u32) -> Result<(), MapError> {
        let generation = self.backends.get(&id, 0)?.generation;
        let empty = Backend {
            generation,
            ..Backend::default()
        };
        self.backends.set(id, empty, 0)
    }

    /// The generation worker `addr` gets in slot `id`: the one the slot
    /// has if it already holds `addr` (adopting a running data plane keeps
    /// its flows), else the next one.
    pub fn generation_for(&self, id: u32, addr: IpAddr) -> Result<u32, MapError> {
        let backend = self.backends.get(&id, 0)?;
        let (bytes, family) = service::addr_bytes(addr);
        let same = backend.flags & BACKEND_VALID != 0
            && backend.addr == bytes
            && backend.family == family
            && backend.generation != 0;
        if same {
            return Ok(backend.generation);
        }
        Ok(backend.generation.wrapping_add(1).max(1))
    }

    /// Writes worker `id`'s load figure (`LOAD_UNKNOWN` when none).
    pub fn write_load(&mut self, id: u32, load: u32) -> Result<(), MapError> {
        self.load.set(id, load, 0)
    }

    /// Makes the VIP address set hold exactly the addresses of the VIPs in
    /// the VIP map (ICMP to them is answered or sent on).
    fn refresh_addresses(&mut self, keys: &[VipKey]) -> Result<(), MapError> {
        let wanted: std::collections::HashSet<VipAddrKey> = keys
            .iter()
            .map(|k| VipAddrKey {
                addr: k.addr,
                family: k.family,
                pad: [0; 3],
            })
            .collect();
        let present: Vec<VipAddrKey> = self.vip_addrs.keys().filter_map(Result::ok).collect();
        for key in present.iter().filter(|k| !wanted.contains(k)) {
            self.vip_addrs.remove(key)?;
        }
        for key in wanted.iter().filter(|k| !present.contains(k)) {
            self.vip_addrs.insert(key, 1, 0)?;
        }
        Ok(())
    }

    /// Pins a client key to worker `id`.
    pub fn write_pin(&mut self, key: StickyKey, id: u32) -> Result<(), MapError> {
        self.pins.insert(key, id, 0)
    }

    /// Removes a pin; one that isn't there is fine.
    pub fn remove_pin(&mut self, key: &StickyKey) -> Result<(), MapError> {
        match self.pins.remove(key) {
            Err(MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Builds the VIP's Maglev table into a fresh inner map and swaps it in,
    /// then (re)writes the VIP entry. Returns the table size and how long
    /// the build took.
    pub fn install_vip(
        &mut self,
        vip: &Vip,
        state: &VipState,
        members: &[maglev::Member],
        seed: u32,
    ) -> Result<(u32, Duration), MapError> {
        let size = state.effective_table_size();
        let started = Instant::now();
        let table = maglev::build(members, size, seed);
        let built = started.elapsed();
        let mut inner = MaglevTable::create(size, BPF_F_INNER_MAP)?;
        for (slot, backend) in table.iter().enumerate() {
            inner.set(slot as u32, backend.unwrap_or(NO_BACKEND), 0)?;
        }
        let options = &state.options;
        let mut flags = 0;
        if options.sticky.is_some() {
            flags |= VIP_STICKY;
        }
        if !state.pins.is_empty() {
            flags |= VIP_HAS_PINS;
        }
        let info = VipInfo {
            id: state.id,
            table_size: size,
            // Whole seconds, rounded up: never shorter than asked.
            sticky_ttl_s: options.sticky.map_or(0, |t| t.as_secs_f64().ceil() as u32),
            scheduler: options.scheduler.code(),
            sticky_prefix: options.prefix_for(vip),
            flags,
            pad: 0,
            tag: vip_tag(&vip.key()),
        };
        let tag = VipTag {
            tag: info.tag,
            idle_timeout_s: options.idle_timeout_for(vip).as_secs() as u32,
        };
        self.vip_tags.set(state.id, tag, 0)?;
        let previous = self.vips.get(&vip.key(), 0).ok();
        // A packet indexes with the size it read from the VIP entry: grow
        // the table before the entry, shrink it after, so the index always
        // lies inside whichever table the packet finds.
        let growing = previous.is_none_or(|p| p.table_size <= size);
        if growing {
            self.maglev.set(state.id, &inner, 0)?;
            self.vips.insert(vip.key(), info, 0)?;
        } else {
            self.vips.insert(vip.key(), info, 0)?;
            self.maglev.set(state.id, &inner, 0)?;
        }
        self.refresh_filter()?;
        Ok((size, built))
    }

    /// Stops balancing a VIP: its packets pass to the kernel again.
    pub fn remove_vip(&mut self, vip: &Vip) -> Result<(), MapError> {
        self.remove_vip_key(&vip.key())
    }

    /// Removes a VIP entry by key; its flows stop being followed (its tag
    /// goes) and its filter bit is cleared.
    pub fn remove_vip_key(&mut self, key: &VipKey) -> Result<(), MapError> {
        let Ok(info) = self.vips.get(key, 0) else {
            return Ok(());
        };
        match self.vips.remove(key) {
            Err(MapError::KeyNotFound) | Ok(()) => {}
            Err(error) => return Err(error),
        }
        self.vip_tags.set(info.id, VipTag::default(), 0)?;
        self.refresh_filter()
    }

    /// The VIPs in the map.
    pub fn vip_keys(&self) -> Vec<VipKey> {
        self.vips.keys().filter_map(Result::ok).collect()
    }

    /// The pinned clients in the map.
    pub fn pin_keys(&self) -> Vec<StickyKey> {
        self.pins.keys().filter_map(Result::ok).collect()
    }

    /// The MAC worker `id` has in the map, if it is `addr`'s and known
    /// (written by an earlier controller of an adopted data plane).
    pub fn known_mac(&self, id: u32, addr: IpAddr) -> Option<[u8; 6]> {
        let backend = self.backends.get(&id, 0).ok()?;
        let (bytes, family) = service::addr_bytes(addr);
        let same = backend.addr == bytes && backend.family == family;
        (same && backend.flags & BACKEND_MAC_KNOWN != 0).then_some(backend.mac)
    }
}

/// Opens a map pinned by an lb instance.
pub fn open_pinned(pin_dir: &Path, name: &str) -> Result<Map, MapError> {
    Map::from_map_data(MapData::from_pin(pin_dir.join(name))?)
}

/// Sums the per-CPU copies of every entry of a traffic counter array.
pub fn traffic(pin_dir: &Path, name: &str, index: u32) -> Result<TrafficCounters, MapError> {
    let array: PerCpuArray<MapData, TrafficCounters> = open_pinned(pin_dir, name)?.try_into()?;
    let mut total = TrafficCounters::default();
    for copy in array.get(&index, 0)?.iter() {
        total.accumulate(copy);
    }
    Ok(total)
}
