//! The capture stage's state, for the controller and the metrics:
//! whether an `lb capture` runs, what captures counted, and turning off
//! one whose reader died. `lb capture` itself is a command.

use std::path::Path;

use aya::maps::{Array, MapData, PerCpuArray};
use lb_common::{
    capture::{CaptureCounters, CaptureFilter, CAPTURE_ON},
    map_names,
};

use super::{capture_lock_path, counters, maps, take_lock};

/// What an instance's captures amount to, for `lb status` and the metrics.
#[derive(Debug, Default)]
pub struct Activity {
    /// Whether an `lb capture` has the data plane copying packets now (each
    /// packet then pays a tail call and the filter).
    pub running: bool,
    /// What every capture since the maps were created counted.
    pub counters: CaptureCounters,
}

/// Reads [`Activity`] from the pinned maps.
pub fn activity(pin_dir: &Path) -> anyhow::Result<Activity> {
    let stats: PerCpuArray<MapData, CaptureCounters> =
        maps::open_pinned(pin_dir, map_names::CAPTURE_STATS)?.try_into()?;
    Ok(Activity {
        running: running(pin_dir)?,
        counters: counters::sum(&stats, 0)?,
    })
}

/// Whether an `lb capture` has the data plane copying packets now.
pub fn running(pin_dir: &Path) -> anyhow::Result<bool> {
    is_on(&pinned_filter(pin_dir)?)
}

fn pinned_filter(pin_dir: &Path) -> anyhow::Result<Array<MapData, CaptureFilter>> {
    Ok(maps::open_pinned(pin_dir, map_names::CAPTURE)?.try_into()?)
}

fn is_on(filter: &Array<MapData, CaptureFilter>) -> anyhow::Result<bool> {
    Ok(filter.get(&0, 0)?.enabled == CAPTURE_ON)
}

/// Turns off a capture whose reader died without doing so (killed): the
/// controller calls this now and then, so the data plane does not go on
/// copying packets for nobody. True if it turned one off.
pub fn clear_abandoned(pin_dir: &Path) -> anyhow::Result<bool> {
    let mut filter = pinned_filter(pin_dir)?;
    if !is_on(&filter)? {
        return Ok(false);
    }
    // Held while turning it off, so no capture starting meanwhile loses
    // its filter.
    let Some(_lock) = take_lock(&capture_lock_path(pin_dir))? else {
        return Ok(false);
    };
    filter.set(0, CaptureFilter::default(), 0)?;
    Ok(true)
}
