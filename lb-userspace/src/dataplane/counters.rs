//! Reading the data plane's per-CPU counters.

use std::{borrow::Borrow, path::Path};

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use lb_common::{
    balancer::TrafficCounters, capture::CaptureCounters, counters::GlobalCounters, map_names,
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
