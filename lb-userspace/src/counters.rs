//! Reading the data plane's per-CPU counters.

use std::{borrow::Borrow, path::Path};

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use lb_common::{counters::GlobalCounters, map_names};

/// Sums every CPU's copy of the global counters.
pub fn sum<T: Borrow<MapData>>(
    array: &PerCpuArray<T, GlobalCounters>,
) -> Result<GlobalCounters, MapError> {
    let mut total = GlobalCounters::default();
    for cpu_copy in array.get(&0, 0)?.iter() {
        total.accumulate(cpu_copy);
    }
    Ok(total)
}

/// Reads the global counters from the maps pinned under `pin_dir`, which
/// works whether or not a controller is running.
pub fn read_pinned(pin_dir: &Path) -> Result<GlobalCounters, MapError> {
    let data = MapData::from_pin(pin_dir.join(map_names::COUNTERS))?;
    let array = PerCpuArray::try_from(Map::from_map_data(data)?)?;
    sum(&array)
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
