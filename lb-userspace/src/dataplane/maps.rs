//! Typed handles on the data plane's maps, for the controller (which owns
//! the writable ones) and for readers of the pinned maps.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{
    Array, ArrayOfMaps, DevMapHash, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
    PerCpuValues,
};
use lb_common::{
    balancer::{
        vip_filter_bit, vip_tag, Backend, Config, Egress, IfaceCounters, StickyKey,
        TrafficCounters, VipAddrKey, VipInfo, VipKey, VipTag, BACKEND_MAC_KNOWN, BACKEND_VALID,
        MAX_INTERFACES, NO_BACKEND, VIP_FILTER_WORDS, VIP_HAS_PINS, VIP_STICKY,
    },
    map_names, LAYOUT_VERSION,
};

use crate::{desired::maglev, desired::state::VipState, service, service::Vip};

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
    /// How its packets travel (`FORWARD_*`).
    pub forward: u8,
    /// Its GUE port (host order).
    pub gue_port: u16,
    /// Its own port for NAT methods (host order; 0: the VIP's).
    pub port: u16,
    /// The largest IP packet its tunnel carries.
    pub mtu: u16,
    /// Outer source of its tunnel, when its family has one.
    pub tunnel_source: Option<IpAddr>,
    /// The slot of the interface it is reached through
    /// ([`ControlMaps::write_interfaces`]); 0 with one interface.
    pub egress: u8,
}

/// Flags of every Maglev table, as the data plane's template has them:
/// BPF_F_INNER_MAP so that VIPs can have tables of different sizes, and
/// BPF_F_MMAPABLE so that a table is written with one copy rather than a
/// system call per slot (500 VIPs × 16,381 slots is 8 million calls).
const MAGLEV_FLAGS: u32 = (1 << 12) | (1 << 10);

/// The maps the controller writes.
pub struct ControlMaps {
    vips: HashMap<MapData, VipKey, VipInfo>,
    backends: Array<MapData, Backend>,
    maglev: ArrayOfMaps<MapData, MapData>,
    config: Array<MapData, Config>,
    load: Array<MapData, u32>,
    pins: HashMap<MapData, StickyKey, u32>,
    vip_filter: Array<MapData, u64>,
    vip_tags: Array<MapData, VipTag>,
    vip_addrs: HashMap<MapData, VipAddrKey, u8>,
    /// What `vip_filter` holds, to write only the words that change.
    filter_words: Vec<u64>,
    /// The Maglev map's own descriptor, for swapping tables in batches.
    maglev_fd: OwnedFd,
    /// First tables of VIPs, waiting for [`ControlMaps::commit`].
    new_tables: Vec<(Vip, VipInfo, MapData)>,
    /// The NAT maps.
    nat: super::nat::NatMaps,
    /// lb's interfaces by slot, for frames that leave by one of them.
    egress: Array<MapData, Egress>,
    /// lb's interfaces by index, for redirects to them.
    ifaces: DevMapHash<MapData>,
    /// What was redirected out of each, by index.
    iface_stats: PerCpuHashMap<MapData, u32, IfaceCounters>,
}

fn take(ebpf: &mut aya::Ebpf, name: &str) -> Map {
    ebpf.take_map(name)
        .unwrap_or_else(|| panic!("the embedded object defines map {name}"))
}

impl ControlMaps {
    /// Takes the writable maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapError> {
        let maglev = take(ebpf, map_names::MAGLEV);
        let Map::ArrayOfMaps(outer) = &maglev else {
            panic!(
                "the embedded object's {} is an array of maps",
                map_names::MAGLEV
            );
        };
        let maglev_fd = outer
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|io_error| {
                MapError::SyscallError(aya::sys::SyscallError {
                    call: "dup",
                    io_error,
                })
            })?;
        Ok(Self {
            vips: take(ebpf, map_names::VIPS).try_into()?,
            backends: take(ebpf, map_names::BACKENDS).try_into()?,
            maglev: maglev.try_into()?,
            config: take(ebpf, map_names::CONFIG).try_into()?,
            load: take(ebpf, map_names::LOAD).try_into()?,
            pins: take(ebpf, map_names::PINS).try_into()?,
            vip_filter: take(ebpf, map_names::VIP_FILTER).try_into()?,
            vip_tags: take(ebpf, map_names::VIP_TAGS).try_into()?,
            vip_addrs: take(ebpf, map_names::VIP_ADDRS).try_into()?,
            // Unknown (an adopted map may hold anything): the first
            // refresh writes every word.
            filter_words: vec![u64::MAX; VIP_FILTER_WORDS as usize],
            maglev_fd,
            new_tables: Vec::new(),
            nat: super::nat::NatMaps::take(ebpf)?,
            egress: take(ebpf, map_names::EGRESS).try_into()?,
            ifaces: take(ebpf, map_names::IFACES).try_into()?,
            iface_stats: take(ebpf, map_names::IFACE_STATS).try_into()?,
        })
    }

    /// Writes lb's interfaces (index and MAC, in `--iface` order) into
    /// the egress slots from 1 on, the device map and the counters (kept
    /// where they are), and removes any other. With one interface every
    /// frame leaves where it came in: nothing is written, and workers'
    /// slots stay 0.
    pub fn write_interfaces(&mut self, ifaces: &[(u32, [u8; 6])]) -> anyhow::Result<()> {
        let several = if ifaces.len() > 1 { ifaces } else { &[] };
        self.write_iface_counters(several)?;
        for (slot, &(ifindex, mac)) in (1..).zip(several) {
            let egress = Egress {
                ifindex,
                mac,
                pad: [0; 2],
            };
            self.egress.set(slot, egress, 0)?;
            self.ifaces.insert(ifindex, ifindex, None, 0).map_err(|e| {
                anyhow::anyhow!("adding interface {ifindex} to the device map: {e}")
            })?;
        }
        #[expect(
            clippy::cast_possible_truncation,
            reason = "the interfaces were checked against MAX_INTERFACES (15) before"
        )]
        for slot in several.len() as u32 + 1..=MAX_INTERFACES {
            self.egress.set(slot, Egress::default(), 0)?;
        }
        let stale: Vec<u32> = self
            .ifaces
            .keys()
            .flatten()
            .filter(|k| !several.iter().any(|&(ifindex, _)| ifindex == *k))
            .collect();
        for key in stale {
            self.ifaces.remove(key)?;
        }
        Ok(())
    }

    /// Gives each of `ifaces` its counters, zero where it has none yet,
    /// and removes any other interface's.
    fn write_iface_counters(&mut self, ifaces: &[(u32, [u8; 6])]) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow::anyhow!("counting CPUs: {e}"))?;
        for &(ifindex, _) in ifaces {
            let zero = PerCpuValues::try_from(vec![IfaceCounters::default(); cpus])?;
            // BPF_NOEXIST: an adopted interface keeps what it counted.
            match self.iface_stats.insert(ifindex, zero, 1) {
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(17) => {}
                other => other?,
            }
        }
        let stale: Vec<u32> = (self.iface_stats.keys().flatten())
            .filter(|k| !ifaces.iter().any(|&(ifindex, _)| ifindex == *k))
            .collect();
        for key in stale {
            self.iface_stats.remove(&key)?;
        }
        Ok(())
    }

    /// The NAT maps.
    pub fn nat(&mut self) -> &mut super::nat::NatMaps {
        &mut self.nat
    }

    /// Rewrites the VIP filter words that differ from what the VIP map
    /// holds now. A bit is set just after its VIP's entry is written and
    /// cleared after it is gone: a missing bit only ever sends a packet to
    /// the kernel, never misforwards it.
    fn refresh_filter(&mut self) -> Result<(), MapError> {
        let keys = self.vip_keys();
        self.refresh_addresses(&keys)?;
        let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
        for key in &keys {
            let bit = vip_filter_bit(&key.addr, key.port, key.proto);
            words[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
        for (index, (&want, have)) in (0u32..).zip(words.iter().zip(&mut self.filter_words)) {
            if want != *have {
                self.vip_filter.set(index, want, 0)?;
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
            forward: worker.forward,
            egress: worker.egress,
            gue_port: worker.gue_port.to_be(),
            mtu: worker.mtu,
            port: worker.port.to_be(),
            tunnel_source: worker
                .tunnel_source
                .map_or([0; 16], |source| service::addr_bytes(source).0),
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

    /// The ids of the worker slots that hold a worker.
    pub fn valid_backend_ids(&self) -> Vec<u32> {
        (0u32..)
            .zip(self.backends.iter())
            .filter_map(|(id, slot)| {
                slot.ok()
                    .filter(|b| b.flags & BACKEND_VALID != 0)
                    .map(|_| id)
            })
            .collect()
    }

    /// The generation worker `addr` gets in slot `id`: the one the slot
    /// has if it already holds `addr` (adopting a running data plane keeps
    /// its flows), else the next one.
    pub fn generation_for(&self, id: u32, addr: IpAddr) -> Result<u32, MapError> {
        Ok(next_generation(&self.backends.get(&id, 0)?, addr))
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

    /// Builds the VIP's Maglev table and writes it over the one installed
    /// if that has the same size, else into a fresh inner map swapped in;
    /// then (re)writes the VIP entry. A new VIP's table and entry wait for
    /// [`Self::commit`]. Returns the table size and how long
    /// the build took. The VIP filter is left to [`Self::commit`], once for
    /// every VIP a round installs.
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
        let slots: Vec<u32> = table.iter().map(|b| b.unwrap_or(NO_BACKEND)).collect();
        let options = &state.options;
        let mut flags = 0;
        if options.sticky.is_some() {
            flags |= VIP_STICKY;
        }
        if !state.pins.is_empty() {
            flags |= VIP_HAS_PINS;
        }
        // Whole seconds, rounded up: never shorter than asked.
        #[expect(
            clippy::cast_possible_truncation,
            reason = "validation keeps the sticky TTL within 7 days"
        )]
        let sticky_ttl_s = options.sticky.map_or(0, |t| t.as_secs_f64().ceil() as u32);
        let info = VipInfo {
            id: state.id,
            table_size: size,
            sticky_ttl_s,
            scheduler: options.scheduler.code(),
            sticky_prefix: options.prefix_for(vip),
            flags,
            pad: 0,
            tag: vip_tag(&vip.key()),
        };
        #[expect(
            clippy::cast_possible_truncation,
            reason = "validation keeps the idle timeout within 7 days"
        )]
        let idle_timeout_s = options.idle_timeout_for(vip).as_secs() as u32;
        let tag = VipTag {
            tag: info.tag,
            idle_timeout_s,
        };
        self.vip_tags.set(state.id, tag, 0)?;
        // Replacing an inner map makes the kernel wait for an RCU grace
        // period (milliseconds: seconds for hundreds of VIPs); rewriting
        // one of the same size does not.
        let current = self.maglev.get(&state.id, 0).ok();
        if let Some(table) = current.filter(|t| table_fits(t, size)) {
            write_slots(&table, &slots)?;
            self.vips.insert(vip.key(), info, 0)?;
            return Ok((size, built));
        }
        let inner = maglev_table(&slots)?;
        let Ok(previous) = self.vips.get(&vip.key(), 0) else {
            self.new_tables.push((*vip, info, inner));
            return Ok((size, built));
        };
        // A packet indexes with the size it read from the VIP entry: grow
        // the table before the entry, shrink it after, so the index always
        // lies inside whichever table the packet finds.
        if previous.table_size <= size {
            self.maglev.set(state.id, &inner, 0)?;
            self.vips.insert(vip.key(), info, 0)?;
        } else {
            self.vips.insert(vip.key(), info, 0)?;
            self.maglev.set(state.id, &inner, 0)?;
        }
        Ok((size, built))
    }

    /// Ends a round of [`Self::install_vip`]: swaps in the tables of new
    /// VIPs with one system call and writes their entries (the kernel
    /// waits out an RCU grace period once for the batch instead of once
    /// per VIP: seconds at a start with hundreds), then refreshes the VIP
    /// filter. On failure, the VIPs left uninstalled.
    pub fn commit(&mut self) -> Result<(), (Vec<Vip>, MapError)> {
        self.commit_new_tables()?;
        self.refresh_filter().map_err(|error| (Vec::new(), error))
    }

    fn commit_new_tables(&mut self) -> Result<(), (Vec<Vip>, MapError)> {
        let batch = std::mem::take(&mut self.new_tables);
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<u32> = batch.iter().map(|(_, info, _)| info.id).collect();
        let fds: Vec<u32> = batch
            .iter()
            .map(|(_, _, table)| table.fd().as_fd().as_raw_fd() as u32)
            .collect();
        let all = |error| (batch.iter().map(|(vip, _, _)| *vip).collect(), error);
        if let Err(io_error) = update_batch(self.maglev_fd.as_fd(), &ids, &fds) {
            return Err(all(MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_batch",
                io_error,
            })));
        }
        let mut failed = Vec::new();
        let mut last = None;
        for (vip, info, _) in &batch {
            if let Err(error) = self.vips.insert(vip.key(), info, 0) {
                failed.push(*vip);
                last = Some(error);
            }
        }
        match last {
            None => Ok(()),
            Some(error) => Err((failed, error)),
        }
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

    /// Worker `id`'s slot as an earlier controller of an adopted data
    /// plane left it, if it is `addr`'s: its MAC and its down mark carry
    /// over to the new controller.
    pub fn adopted_slot(&self, id: u32, addr: IpAddr) -> Option<Backend> {
        let backend = self.backends.get(&id, 0).ok()?;
        let (bytes, family) = service::addr_bytes(addr);
        (backend.addr == bytes && backend.family == family).then_some(backend)
    }
}

/// Opens a map pinned by an lb instance.
pub fn open_pinned(pin_dir: &Path, name: &str) -> Result<Map, MapError> {
    Map::from_map_data(MapData::from_pin(pin_dir.join(name))?)
}

/// The addresses of the VIPs an instance pinned under `pin_dir` holds.
pub fn pinned_vip_addresses(pin_dir: &Path) -> Result<BTreeSet<IpAddr>, MapError> {
    let vips: HashMap<MapData, VipKey, VipInfo> =
        open_pinned(pin_dir, map_names::VIPS)?.try_into()?;
    Ok(vips
        .keys()
        .filter_map(Result::ok)
        .filter_map(|key| Vip::from_key(&key))
        .map(|vip| vip.addr)
        .collect())
}

/// The Maglev table of VIP `vip_id` in an instance pinned under
/// `pin_dir`: slot → worker id ([`NO_BACKEND`]: none).
pub fn pinned_maglev_table(pin_dir: &Path, vip_id: u32) -> Result<Vec<u32>, MapError> {
    let outer: ArrayOfMaps<MapData, MapData> =
        open_pinned(pin_dir, map_names::MAGLEV)?.try_into()?;
    read_slots(&outer.get(&vip_id, 0)?)
}

/// The generation worker `addr` gets in a slot that holds `backend`: the
/// slot's own if it already holds `addr`, else the next one (never 0), so
/// that flows recorded for the slot's previous worker are not followed to
/// this one.
pub fn next_generation(backend: &Backend, addr: IpAddr) -> u32 {
    let (bytes, family) = service::addr_bytes(addr);
    let same = backend.flags & BACKEND_VALID != 0
        && backend.addr == bytes
        && backend.family == family
        && backend.generation != 0;
    if same {
        return backend.generation;
    }
    backend.generation.wrapping_add(1).max(1)
}

/// Sums the per-CPU copies of every entry of a traffic counter array.
pub fn traffic(pin_dir: &Path, name: &str, index: u32) -> Result<TrafficCounters, MapError> {
    let array: PerCpuArray<MapData, TrafficCounters> = open_pinned(pin_dir, name)?.try_into()?;
    crate::dataplane::counters::sum(&array, index)
}

/// A new Maglev table holding `slots`.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the sizes of u32, and a Maglev table's length: at most MAX_TABLE_SIZE"
)]
fn maglev_table(slots: &[u32]) -> Result<MapData, MapError> {
    let obj = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        size_of::<u32>() as u32,
        size_of::<u32>() as u32,
        slots.len() as u32,
        MAGLEV_FLAGS,
    );
    let table = MapData::create(obj, "lb_maglev", None)?;
    write_slots(&table, slots)?;
    Ok(table)
}

/// Sets `keys[i]` to `values[i]` in the map `map` with one system call.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the batches are Maglev tables: at most MAX_TABLE_SIZE entries"
)]
fn update_batch(map: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    use aya_obj::generated::{bpf_attr, bpf_cmd};
    // SAFETY: bpf_attr is plain data, all zeroes is its empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the batch member is the one BPF_MAP_UPDATE_BATCH reads.
    let batch = unsafe { &mut attr.batch };
    batch.keys = keys.as_ptr() as u64;
    batch.values = values.as_ptr() as u64;
    batch.count = keys.len().min(values.len()) as u32;
    batch.map_fd = map.as_raw_fd() as u32;
    // SAFETY: the attribute points at `keys` and `values`, which outlive
    // the call; the kernel reads `count` of each.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_UPDATE_BATCH as libc::c_long,
            &raw mut attr,
            size_of::<bpf_attr>(),
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `table` is a Maglev table of `size` slots that can be written
/// through a shared mapping.
fn table_fits(table: &MapData, size: u32) -> bool {
    table
        .info()
        .is_ok_and(|i| i.max_entries() == size && i.map_flags() == MAGLEV_FLAGS)
}

/// Writes `slots` over a Maglev table of as many slots through a shared
/// mapping: one copy instead of a system call per slot. A packet reading
/// the table meanwhile finds each slot old or new, a worker either way.
fn write_slots(table: &MapData, slots: &[u32]) -> Result<(), MapError> {
    // The kernel stores array values 8 bytes apart, whatever their size.
    let padded: Vec<u32> = slots.iter().flat_map(|&slot| [slot, 0]).collect();
    let bytes = std::mem::size_of_val(padded.as_slice());
    let fd = table.fd().as_fd().as_raw_fd();
    let failed = |call: &'static str| {
        MapError::SyscallError(aya::sys::SyscallError {
            call,
            io_error: std::io::Error::last_os_error(),
        })
    };
    // SAFETY: a fresh shared mapping of the map's own fd, no larger than
    // its values (the caller checked the size); it is gone before return.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if at == libc::MAP_FAILED {
            return Err(failed("mmap"));
        }
        std::ptr::copy_nonoverlapping(padded.as_ptr(), at.cast::<u32>(), padded.len());
        if libc::munmap(at, bytes) != 0 {
            return Err(failed("munmap"));
        }
    }
    Ok(())
}

/// Reads a whole Maglev table through a shared read-only mapping: one
/// copy instead of a system call per slot (a table has up to a million).
fn read_slots(table: &MapData) -> Result<Vec<u32>, MapError> {
    let size = table.info()?.max_entries() as usize;
    // The kernel stores array values 8 bytes apart, whatever their size.
    let bytes = size * 8;
    let fd = table.fd().as_fd().as_raw_fd();
    let failed = |call: &'static str| {
        MapError::SyscallError(aya::sys::SyscallError {
            call,
            io_error: std::io::Error::last_os_error(),
        })
    };
    let mut padded = vec![0u32; size * 2];
    // SAFETY: a fresh shared mapping of the map's own fd, exactly as large
    // as its values; it is gone before return.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if at == libc::MAP_FAILED {
            return Err(failed("mmap"));
        }
        std::ptr::copy_nonoverlapping(at.cast::<u32>(), padded.as_mut_ptr(), padded.len());
        if libc::munmap(at, bytes) != 0 {
            return Err(failed("munmap"));
        }
    }
    Ok(padded.into_iter().step_by(2).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_maglev_table_holds_its_slots() {
        if !crate::kernel::privileges::can_manage_xdp() {
            eprintln!("skipped: creating a BPF map needs root (CAP_BPF)");
            return;
        }
        let slots = [5, 6, 7, 8, 9, 10, u32::MAX];
        let table = super::maglev_table(&slots).unwrap();
        assert_eq!(super::read_slots(&table).unwrap(), slots);
        let array: aya::maps::Array<aya::maps::MapData, u32> =
            aya::maps::Map::Array(table).try_into().unwrap();
        let read: Vec<u32> = (0..7).map(|i| array.get(&i, 0).unwrap()).collect();
        assert_eq!(read, slots);
    }
}
