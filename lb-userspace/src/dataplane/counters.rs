//! Reading the data plane's per-CPU counters.

use std::{borrow::Borrow, path::Path};

use aya::maps::{Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use lb_common::{
    balancer::{IfaceCounters, TrafficCounters},
    capture::CaptureCounters,
    counters::GlobalCounters,
    map_names,
};

/// Counters the data plane keeps one copy of per CPU, which add up field
/// by field.
pub trait PerCpuCounters: aya::Pod + Default {
    /// Adds another CPU's copy.
    fn add(&mut self, other: &Self);
}

impl PerCpuCounters for GlobalCounters {
    fn add(&mut self, other: &Self) {
        self.accumulate(other);
    }
}

impl PerCpuCounters for TrafficCounters {
    fn add(&mut self, other: &Self) {
        self.accumulate(other);
    }
}

impl PerCpuCounters for IfaceCounters {
    fn add(&mut self, other: &Self) {
        self.accumulate(other);
    }
}

impl PerCpuCounters for CaptureCounters {
    fn add(&mut self, other: &Self) {
        self.accumulate(other);
    }
}

/// Sums every CPU's copy of slot `index`.
pub fn sum<T: Borrow<MapData>, C: PerCpuCounters>(
    array: &PerCpuArray<T, C>,
    index: u32,
) -> Result<C, MapError> {
    let mut total = C::default();
    for cpu_copy in array.get(&index, 0)?.iter() {
        total.add(cpu_copy);
    }
    Ok(total)
}

/// Reads the global counters from the maps pinned under `pin_dir`, which
/// works whether or not a controller is running.
pub fn read_pinned(pin_dir: &Path) -> Result<GlobalCounters, MapError> {
    let data = MapData::from_pin(pin_dir.join(map_names::COUNTERS))?;
    let array = PerCpuArray::try_from(Map::from_map_data(data)?)?;
    sum(&array, 0)
}

/// One of lb's interfaces, as its controller named it, and what was
/// redirected out of it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InterfaceRow {
    /// Its name.
    pub iface: String,
    /// Its index (unknown in an older lb's mark).
    pub ifindex: Option<u32>,
    /// Frames lb redirected out of it from another of its interfaces.
    pub redirected_packets: u64,
    /// Their bytes.
    pub redirected_bytes: u64,
}

/// The interfaces of the instance pinned under `pin_dir`, by index, with
/// their counters (zero where there are none: one interface, or an lb
/// before them).
pub fn read_interfaces(pin_dir: &Path) -> Vec<InterfaceRow> {
    let counters = MapData::from_pin(pin_dir.join(map_names::IFACE_STATS))
        .ok()
        .and_then(|data| Map::from_map_data(data).ok())
        .and_then(|map| PerCpuHashMap::<_, u32, IfaceCounters>::try_from(map).ok());
    let mut rows: Vec<InterfaceRow> = crate::dataplane::pinned_ifaces(pin_dir)
        .into_iter()
        .map(|(ifindex, iface)| {
            let mut total = IfaceCounters::default();
            let copies = ifindex.and_then(|i| counters.as_ref()?.get(&i, 0).ok());
            for copy in copies.iter().flat_map(|c| c.iter()) {
                total.add(copy);
            }
            InterfaceRow {
                iface,
                ifindex,
                redirected_packets: total.redirected_packets,
                redirected_bytes: total.redirected_bytes,
            }
        })
        .collect();
    rows.sort_by_key(|row| row.ifindex);
    rows
}

/// The counters as `name value` lines, names padded into a column.
pub fn render_table(counters: &GlobalCounters) -> String {
    let width = GlobalCounters::NAMES
        .iter()
        .map(|n| n.len())
        .max()
        .unwrap_or(0);
    GlobalCounters::NAMES
        .iter()
        .zip(counters.values())
        .map(|(name, value)| format!("{name:<width$}  {value}\n"))
        .collect()
}
