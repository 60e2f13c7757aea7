//! What the data plane's maps cost in kernel memory, so that what an
//! operator asks for is refused in one line before the kernel (or the
//! OOM killer) refuses it. BPF maps are charged to lb's memory cgroup, and
//! their sizes follow from their entry counts: these are the kernel's own
//! allocations (`htab_map_alloc`, `array_map_alloc`) to within their small
//! headers.

use std::{mem::size_of, path::Path};

use crate::desired::state::mib;

use lb_common::{
    balancer::{
        Backend, FlowKey, FlowValue, StickyKey, StickyValue, TrafficCounters, VipInfo, VipKey,
        MAX_PINS, MAX_STICKY,
    },
    nat::{NatEntry, NatWorkerKey, NatWorkerValue},
};

/// A hash map element's header in the kernel (`struct htab_elem`: list
/// node, LRU node, hash), before its key and value.
const HASH_ELEMENT_HEADER: u64 = 48;
/// A hash bucket (list head and lock); buckets are a power of two.
const HASH_BUCKET: u64 = 16;

/// How much memory an instance may give its maps.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The maps sized by `lb run`'s flags alone don't fit.
    #[error(
        "the flow table and the other fixed maps need about {} (--max-flows {max_flows}, --max-nat-flows, --max-vips, --max-workers on {cpus} CPUs), more than --max-memory {}: give a larger --max-memory or a smaller --max-flows or --max-nat-flows",
        mib(*fixed),
        mib(*budget)
    )]
    FixedTooLarge {
        /// What they need.
        fixed: u64,
        /// The budget.
        budget: u64,
        /// The flow table's capacity.
        max_flows: u32,
        /// Possible CPUs, which per-CPU maps multiply.
        cpus: u64,
    },
    /// `--max-memory` that doesn't parse.
    #[error("--max-memory {0:?} is not a size: write bytes, or a number with K, M, G or T (powers of 1024), e.g. 2G")]
    BadSize(String),
}

fn round8(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(8) * 8
}

/// A preallocated hash or LRU hash map of `entries`.
fn hash<K, V>(entries: u32) -> u64 {
    let entries = u64::from(entries);
    entries * (HASH_ELEMENT_HEADER + round8(size_of::<K>()) + round8(size_of::<V>()))
        + entries.next_power_of_two() * HASH_BUCKET
}

/// An array map of `entries` (values rounded up to 8 bytes, once per CPU
/// for a per-CPU array).
fn array<V>(entries: u32, cpus: u64) -> u64 {
    u64::from(entries) * round8(size_of::<V>()) * cpus
}

/// The maps whose sizes `lb run`'s flags fix: everything but the Maglev
/// tables, which follow the VIPs asked for.
pub fn fixed(max_flows: u32, max_vips: u32, max_workers: u32, cpus: u64) -> u64 {
    hash::<FlowKey, FlowValue>(max_flows)
        + hash::<StickyKey, StickyValue>(MAX_STICKY)
        + hash::<StickyKey, u32>(MAX_PINS)
        + hash::<VipKey, VipInfo>(max_vips)
        + array::<Backend>(max_workers, 1)
        + array::<u32>(max_workers, 1)
        + array::<TrafficCounters>(max_vips, cpus)
        + array::<TrafficCounters>(max_workers, cpus)
}

/// The NAT maps `lb run`'s flags size, at their fullest: the NAT table
/// (allocated as used, so this is what a full one takes) and the `nat`
/// workers' reverse entries.
pub fn nat(max_nat_flows: u32, max_workers: u32) -> u64 {
    hash::<FlowKey, NatEntry>(max_nat_flows) + hash::<NatWorkerKey, NatWorkerValue>(max_workers)
}

/// The default budget: half of what the machine, or lb's memory cgroup if
/// it has a lower limit, holds; the rest is the kernel's, lb's own and
/// everyone else's.
pub fn default_budget() -> u64 {
    let total = meminfo_total().unwrap_or(u64::MAX);
    let cgroup = cgroup_limit().unwrap_or(u64::MAX);
    total.min(cgroup) / 2
}

/// Possible CPUs, for per-CPU maps.
pub fn possible_cpus() -> u64 {
    aya::util::nr_cpus().map_or(1, |n| n as u64)
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The lowest memory limit on lb's cgroup (v2) and the cgroups above it
/// (a slice's, a pod's), if any has one.
fn cgroup_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let own = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    own.ancestors()
        .take_while(|dir| dir.starts_with("/sys/fs/cgroup"))
        .filter_map(|dir| {
            let limit = std::fs::read_to_string(dir.join("memory.max")).ok()?;
            limit.trim().parse().ok()
        })
        .min()
}

/// Parses `--max-memory`: bytes, or a number with K, M, G or T.
pub fn parse_size(text: &str) -> Result<u64, MemoryError> {
    let bad = || MemoryError::BadSize(text.to_owned());
    let trimmed = text.trim();
    let (digits, shift) = match trimmed.char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => {
            let shift = match unit.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            #[expect(
                clippy::string_slice,
                reason = "`at` comes from char_indices: a char boundary"
            )]
            let digits = &trimmed[..at];
            (digits, shift)
        }
        _ => (trimmed, 0),
    };
    let number: u64 = digits.parse().map_err(|_| bad())?;
    number
        .checked_mul(1 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        for bad in ["", "G", "2X", "-1", "0", "1.5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_flow_table_dominates_and_grows_with_its_capacity() {
        let small = fixed(1_000, 1024, 4096, 2);
        let large = fixed(1_000_000, 1024, 4096, 2);
        // A flow costs its element and a bucket: about 100 bytes.
        let per_flow = (large - small) / 999_000;
        assert!((80..200).contains(&per_flow), "{per_flow}");
    }
}
