//! The contract between the floor programs (floors-ebpf) and the
//! benchmarks that load them (lb-bench): the least any XDP balancer must
//! do, built and run the same way as lb, for `cargo xtask bench` to measure
//! lb against. With the `user` feature its layouts implement [`aya::Pod`]
//! for the benchmarks; the floor programs build it without (as lb-common).
#![no_std]

/// Program names in the floors object.
pub mod program_names {
    /// Returns XDP_DROP.
    pub const DROP: &str = "floor_drop";
    /// Parses Ethernet/IPv4/TCP, swaps the MACs, returns XDP_TX.
    pub const TX: &str = "floor_tx";
    /// `floor_tx` plus one lookup (that hits) in a 1M-entry LRU hash keyed
    /// by the 5-tuple.
    pub const LRU: &str = "floor_lru";
    /// `floor_tx` plus one insert of the 5-tuple into that LRU hash.
    pub const INSERT: &str = "floor_insert";
    /// The same insert into an LRU hash with a list per CPU
    /// (`BPF_F_NO_COMMON_LRU`).
    pub const INSERT_PERCPU: &str = "floor_insert_percpu";
    /// lb's own parse and global counters, then the MAC swap and XDP_TX.
    pub const LB_PARSE: &str = "floor_lb_parse";
    /// `floor_lb_parse` plus lb's VIP filter (a hit).
    pub const LB_FILTER: &str = "floor_lb_filter";
    /// `floor_lb_filter` plus a hit in the 1M-entry LRU hash with lb's key.
    pub const LB_FLOW: &str = "floor_lb_flow";
    /// A stateless forwarder: IPv4 to the target VIP gets the target
    /// worker's MAC and goes out with XDP_TX; everything else passes.
    pub const FORWARD: &str = "floor_forward";
}

/// Map names in the floors object.
pub mod map_names {
    /// LRU hash of lb-common's `FlowKey` → `FlowValue`.
    pub const FLOWS: &str = "FLOOR_FLOWS";
    /// The same with an LRU list per CPU.
    pub const FLOWS_PERCPU: &str = "FLOOR_FLOWS_PERCPU";
    /// A VIP filter laid out as lb's (`LB_VIP_FILTER`).
    pub const VIP_FILTER: &str = "FLOOR_VIP_FILTER";
    /// Array of one [`super::ForwardTarget`].
    pub const TARGET: &str = "FLOOR_TARGET";
}

/// Capacity of the floor's LRU hash.
pub const FLOOR_FLOWS_CAPACITY: u32 = 1_000_000;

/// Where `floor_forward` sends the VIP's packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardTarget {
    /// The VIP (IPv4, network order).
    pub vip: [u8; 4],
    /// The worker's MAC.
    pub mac: [u8; 6],
    /// Always zero.
    pub pad: [u8; 2],
}

#[cfg(feature = "user")]
// SAFETY: repr(C) of byte arrays, no implicit padding (size checked below).
unsafe impl aya::Pod for ForwardTarget {}

const _: () = assert!(core::mem::size_of::<ForwardTarget>() == 12);
