//! The floor programs (floors-ebpf), embedded and loaded for test runs.

use anyhow::Context as _;
use aya::EbpfLoader;
use floors_common::{map_names, program_names as floor, FLOOR_FLOWS_CAPACITY};
use lb_testing::testrun::Loaded;

/// The floors object, built by this crate's build script.
pub static LB_FLOORS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-floors"));

/// lb's object built without the capture hook, by this crate's build
/// script.
pub static LB_WITHOUT_CAPTURE: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));

/// The floors object with every floor program loaded.
pub fn load() -> anyhow::Result<Loaded> {
    load_with_flows(FLOOR_FLOWS_CAPACITY)
}

/// The floors object with an LRU hash of `capacity` entries.
pub fn load_with_flows(capacity: u32) -> anyhow::Result<Loaded> {
    let ebpf = EbpfLoader::new()
        .map_max_entries(map_names::FLOWS, capacity)
        .map_max_entries(map_names::FLOWS_PERCPU, capacity)
        .load(LB_FLOORS)
        .context("loading the floors object")?;
    Loaded::with_programs(
        ebpf,
        &[
            floor::DROP,
            floor::TX,
            floor::LRU,
            floor::INSERT,
            floor::INSERT_PERCPU,
            floor::LB_PARSE,
            floor::LB_FILTER,
            floor::LB_FLOW,
            floor::FORWARD,
        ],
    )
}
