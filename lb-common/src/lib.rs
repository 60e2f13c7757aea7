//! The contract between lb's XDP program and its user space.
//!
//! Every map key and value, every constant both sides must agree on, and the
//! header parser itself live here, once. Layouts are `#[repr(C)]` with
//! explicit, always-zero padding; addresses and ports are kept in network
//! byte order exactly as they appear on the wire.
//!
//! With the `user` feature the layouts implement [`aya::Pod`] so user space
//! can read and write them in maps. The data plane builds this crate without
//! that feature; it must never pull in `aya-ebpf` (its `memcpy` would replace
//! libc's in the host binary).
#![no_std]
// Lints beyond clippy's default for the product's code (the set and why:
// docs/VERIFICATION.md, "Static analysis"). Every exception is an
// `#[expect(lint, reason = "...")]` at the narrowest scope.
#![warn(
    clippy::allow_attributes_without_reason,
    clippy::cast_possible_truncation,
    clippy::dbg_macro,
    clippy::indexing_slicing,
    clippy::mem_forget,
    clippy::todo,
    clippy::unimplemented,
    clippy::unnecessary_safety_comment,
    clippy::unnecessary_safety_doc,
    clippy::unwrap_used
)]
#![cfg_attr(not(test), warn(clippy::allow_attributes))]
#![cfg_attr(
    test,
    allow(
        clippy::cast_possible_truncation,
        clippy::indexing_slicing,
        clippy::unwrap_used,
        reason = "unit tests stay under clippy's default set: a panic there is a failed test"
    )
)]

pub mod balancer;
pub mod capture;
pub mod counters;
pub mod csum;
pub mod decap;
pub mod decide;
pub mod encap;
pub mod icmp;
pub mod nat;
pub mod packet;

/// Version of every layout in this crate. A binary refuses to reuse maps
/// pinned by a binary with another version.
pub const LAYOUT_VERSION: u32 = 8;

/// Names of the maps in the XDP object, which are also their pin names.
pub mod map_names {
    /// Per-CPU array with one [`crate::counters::GlobalCounters`].
    pub const COUNTERS: &str = "LB_COUNTERS";
    /// Hash map [`crate::balancer::VipKey`] → [`crate::balancer::VipInfo`].
    pub const VIPS: &str = "LB_VIPS";
    /// Array of [`crate::balancer::Backend`] indexed by worker id.
    pub const BACKENDS: &str = "LB_BACKENDS";
    /// Array of maps: per VIP id, its Maglev table (array of worker ids).
    pub const MAGLEV: &str = "LB_MAGLEV";
    /// LRU hash [`crate::balancer::FlowKey`] → [`crate::balancer::FlowValue`].
    pub const FLOWS: &str = "LB_FLOWS";
    /// Array of one [`crate::balancer::Config`].
    pub const CONFIG: &str = "LB_CONFIG";
    /// Per-CPU array of [`crate::balancer::TrafficCounters`] per VIP id.
    pub const VIP_STATS: &str = "LB_VIP_STATS";
    /// Per-CPU array of [`crate::balancer::TrafficCounters`] per worker id.
    pub const BACKEND_STATS: &str = "LB_BACKEND_STATS";
    /// Array of worker load figures (`u32`, [`crate::balancer::LOAD_SCALE`]
    /// = fully loaded) indexed by worker id.
    pub const LOAD: &str = "LB_LOAD";
    /// LRU hash [`crate::balancer::StickyKey`] →
    /// [`crate::balancer::StickyValue`].
    pub const STICKY: &str = "LB_STICKY";
    /// Hash [`crate::balancer::StickyKey`] → worker id: pinned clients.
    pub const PINS: &str = "LB_PINS";
    /// Array of `u64` words: the VIP filter bitmap
    /// ([`crate::balancer::vip_filter_bit`]).
    pub const VIP_FILTER: &str = "LB_VIP_FILTER";
    /// Array of [`crate::balancer::VipTag`] per VIP id: the tag and idle
    /// timeout of the VIP holding the id (tag 0: none).
    pub const VIP_TAGS: &str = "LB_VIP_TAGS";
    /// Hash [`crate::balancer::VipAddrKey`] → `u8`: the VIP addresses.
    pub const VIP_ADDRS: &str = "LB_VIP_ADDRS";

    /// Per-CPU array of one [`crate::balancer::IcmpBudget`]: the rate
    /// limit of "too big" answers.
    pub const ICMP_BUDGET: &str = "LB_ICMP_BUDGET";

    /// Per-CPU array of one [`crate::balancer::TunnelJob`]: what the
    /// balancer hands its tunnel program.
    pub const TUNNEL_JOB: &str = "LB_TUNNEL_JOB";
    /// Program array of one: the tunnel program (`lb_tunnel`), which the
    /// balancer tail-calls for IPIP and GUE.
    pub const TUNNEL_PROG: &str = "LB_TUNNEL_PROG";

    /// Per-CPU array of one [`crate::balancer::ClockCache`].
    pub const CLOCK: &str = "LB_CLOCK";

    /// Array of one [`crate::capture::CaptureFilter`]: what a running
    /// `lb capture` asks for.
    pub const CAPTURE: &str = "LB_CAPTURE";
    /// Ring buffer of [`crate::capture::CaptureRecord`]s, each followed by
    /// the frame's bytes.
    pub const CAPTURE_RING: &str = "LB_CAPTURE_RING";
    /// Per-CPU array of one [`crate::capture::CaptureCounters`].
    pub const CAPTURE_STATS: &str = "LB_CAPTURE_STATS";
    /// Per-CPU array of one [`crate::capture::CaptureScratch`]: the
    /// capture program's workspace.
    pub const CAPTURE_SCRATCH: &str = "LB_CAPTURE_SCRATCH";
    /// Program array of one: the capture program (`lb_capture`), which the
    /// balancer and the tunnel program tail-call while a capture runs.
    pub const CAPTURE_PROG: &str = "LB_CAPTURE_PROG";

    /// Hash [`crate::balancer::FlowKey`] (a reply as the worker sends it) →
    /// [`crate::nat::NatEntry`]: the `fullnat` connections.
    pub const NAT: &str = "LB_NAT";
    /// Hash [`crate::nat::NatWorkerKey`] → [`crate::nat::NatWorkerValue`]:
    /// the `nat` workers, whose replies are rewritten to their VIP.
    pub const NAT_WORKERS: &str = "LB_NAT_WORKERS";
    /// Array of `u64` words: the bitmap of worker (address, port,
    /// protocol) whose packets may be NAT'd replies, by
    /// [`crate::balancer::vip_filter_bit`] of their source.
    pub const REPLY_FILTER: &str = "LB_REPLY_FILTER";
    /// Array of [`crate::nat::NatSource`]: the NAT source addresses.
    pub const NAT_SOURCES: &str = "LB_NAT_SOURCES";
    /// Array of one [`crate::nat::NatConfig`].
    pub const NAT_CONFIG: &str = "LB_NAT_CONFIG";
    /// Per-CPU array of one [`crate::nat::NatJob`]: what the balancer hands
    /// its NAT program.
    pub const NAT_JOB: &str = "LB_NAT_JOB";
    /// Per-CPU array of [`crate::nat::NatClientHop`]: the next hops of
    /// `nat` replies' clients, by a hash of the address.
    pub const NAT_HOPS: &str = "LB_NAT_HOPS";
    /// Per-CPU array of one [`crate::nat::NatScratch`]: the NAT program's
    /// workspace.
    pub const NAT_SCRATCH: &str = "LB_NAT_SCRATCH";
    /// Program array of three: the NAT programs (`lb_nat` in slot
    /// [`crate::nat::NAT_PROG_FORWARD`], `lb_nat_reply` in
    /// [`crate::nat::NAT_PROG_REPLY`], `lb_nat_icmp` in
    /// [`crate::nat::NAT_PROG_ICMP`]), which the balancer tail-calls for
    /// NAT'd flows, their replies and ICMP errors about them.
    pub const NAT_PROG: &str = "LB_NAT_PROG";

    /// Array of [`crate::balancer::Egress`], by the slot
    /// [`crate::balancer::Backend::egress`] names: lb's interfaces.
    pub const EGRESS: &str = "LB_EGRESS";
    /// Device map (hash) of lb's interfaces by index: where a frame
    /// leaving by another of them is redirected (`XDP_REDIRECT`).
    pub const IFACES: &str = "LB_IFACES";
    /// Per-CPU hash of lb's interfaces by index →
    /// [`crate::balancer::IfaceCounters`]: what was redirected out of
    /// each.
    pub const IFACE_STATS: &str = "LB_IFACE_STATS";

    /// Every map, each pinned under the instance's pin directory.
    pub const ALL: &[&str] = &[
        COUNTERS,
        CONFIG,
        VIPS,
        BACKENDS,
        MAGLEV,
        FLOWS,
        VIP_STATS,
        BACKEND_STATS,
        LOAD,
        STICKY,
        PINS,
        VIP_FILTER,
        VIP_TAGS,
        VIP_ADDRS,
        ICMP_BUDGET,
        TUNNEL_JOB,
        TUNNEL_PROG,
        CLOCK,
        CAPTURE,
        CAPTURE_RING,
        CAPTURE_STATS,
        CAPTURE_SCRATCH,
        CAPTURE_PROG,
        NAT,
        NAT_WORKERS,
        REPLY_FILTER,
        NAT_SOURCES,
        NAT_CONFIG,
        NAT_JOB,
        NAT_HOPS,
        NAT_SCRATCH,
        NAT_PROG,
        EGRESS,
        IFACES,
        IFACE_STATS,
    ];

    /// The maps with an entry per VIP id (or VIP address), sized by
    /// `lb run --max-vips`.
    pub const PER_VIP: &[&str] = &[VIPS, MAGLEV, VIP_STATS, VIP_TAGS, VIP_ADDRS];

    /// The maps with an entry per worker id (or `nat` worker), sized by
    /// `lb run --max-workers`.
    pub const PER_WORKER: &[&str] = &[BACKENDS, BACKEND_STATS, LOAD, NAT_WORKERS];
}

/// Names of the programs in the XDP objects.
pub mod program_names {
    /// The balancer itself.
    pub const BALANCER: &str = "lb_xdp";
    /// The balancer's second half for IPIP and GUE: encapsulation and
    /// "too big" answers, reached by a tail call.
    pub const TUNNEL: &str = "lb_tunnel";
    /// A program that passes every packet; test rigs put it on the peers of
    /// veths that receive XDP_TX frames.
    pub const PASS: &str = "lb_pass";
    /// The capture program: filters a packet's outcome and copies the
    /// frame to the capture ring buffer, reached by a tail call while a
    /// capture runs.
    pub const CAPTURE: &str = "lb_capture";
    /// The balancer's second half for NAT'd flows: translation to the
    /// worker and port allocation, reached by a tail call.
    pub const NAT: &str = "lb_nat";
    /// The balancer's second half for NAT workers' replies: translation
    /// back to the client and the routing lookup, reached by a tail call.
    pub const NAT_REPLY: &str = "lb_nat_reply";
    /// ICMP errors about NAT'd connections, translated both ways, reached
    /// by a tail call.
    pub const NAT_ICMP: &str = "lb_nat_icmp";
}
