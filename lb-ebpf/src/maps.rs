//! The data plane's maps. Names are the pin names in lb-common's
//! `map_names`; sizes marked "set by the controller" are overridden at load.

use aya_ebpf::{
    bindings::{BPF_F_INNER_MAP, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    btf_maps::{
        Array, ArrayOfMaps, DevMapHash, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap,
        ProgramArray, RingBuf,
    },
    helpers::bpf_ktime_get_ns,
    macros::btf_map,
};
use lb_common::{
    balancer::{
        Backend, ClockCache, Config, Egress, FlowKey, FlowValue, IcmpBudget, IfaceCounters,
        StickyKey, StickyValue, TrafficCounters, TunnelJob, VipAddrKey, VipInfo, VipKey, VipTag,
        DEFAULT_MAX_VIPS, DEFAULT_MAX_WORKERS, LOAD_UNKNOWN, MAX_INTERFACES, MAX_PINS, MAX_STICKY,
        VIP_FILTER_WORDS,
    },
    capture::{CaptureCounters, CaptureFilter, CaptureRecord, CaptureScratch, RING_BYTES},
    counters::GlobalCounters,
    decide::DecisionMaps,
    nat::{
        NatClientHop, NatConfig, NatEntry, NatJob, NatScratch, NatSource, NatWorkerKey,
        NatWorkerValue, DEFAULT_MAX_NAT_FLOWS, NAT_HOP_SLOTS, NAT_SOURCES_PER_FAMILY,
    },
};

use crate::flow;

// The per-VIP and per-worker maps' sizes are set by the controller
// (`--max-vips`, `--max-workers`); these are the defaults.
const VIPS: usize = DEFAULT_MAX_VIPS as usize;
const BACKENDS: usize = DEFAULT_MAX_WORKERS as usize;
const STICKY: usize = MAX_STICKY as usize;
const PINS: usize = MAX_PINS as usize;

/// A VIP's Maglev table: slot → worker id. Inner maps of different sizes
/// need BPF_F_INNER_MAP; BPF_F_MMAPABLE lets the controller write a whole
/// table with one copy. It creates them with the same flags, as the kernel
/// requires of every inner map.
pub type MaglevTable = Array<u32, 1, { (BPF_F_INNER_MAP | BPF_F_MMAPABLE) as usize }>;

#[btf_map]
pub static LB_COUNTERS: PerCpuArray<GlobalCounters, 1> = PerCpuArray::new();

#[btf_map]
pub static LB_CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub static LB_VIPS: HashMap<VipKey, VipInfo, VIPS> = HashMap::new();

#[btf_map]
pub static LB_BACKENDS: Array<Backend, BACKENDS> = Array::new();

/// lb's interfaces by slot; slot 0 stays empty ([`Backend::egress`] 0
/// means the interface a frame came in on).
#[btf_map]
pub static LB_EGRESS: Array<Egress, { MAX_INTERFACES as usize + 1 }> = Array::new();

/// lb's interfaces by index, for `XDP_REDIRECT` to one of them.
#[btf_map]
pub static LB_IFACES: DevMapHash<{ MAX_INTERFACES as usize }> = DevMapHash::new();

/// What was redirected out of each of lb's interfaces, by index.
#[btf_map]
pub static LB_IFACE_STATS: PerCpuHashMap<u32, IfaceCounters, { MAX_INTERFACES as usize }> =
    PerCpuHashMap::new();

#[btf_map]
pub static LB_MAGLEV: ArrayOfMaps<MaglevTable, VIPS> = ArrayOfMaps::new();

/// Size set by the controller (`--max-flows`).
#[btf_map]
pub static LB_FLOWS: LruHashMap<FlowKey, FlowValue, 1_000_000> = LruHashMap::new();

#[btf_map]
pub static LB_VIP_STATS: PerCpuArray<TrafficCounters, VIPS> = PerCpuArray::new();

#[btf_map]
pub static LB_BACKEND_STATS: PerCpuArray<TrafficCounters, BACKENDS> = PerCpuArray::new();

/// Worker load figures by worker id, written by the controller.
#[btf_map]
pub static LB_LOAD: Array<u32, BACKENDS> = Array::new();

/// Sticky sessions: the data plane writes them, the controller expires them.
#[btf_map]
pub static LB_STICKY: LruHashMap<StickyKey, StickyValue, STICKY> = LruHashMap::new();

/// Pinned clients, written by the controller only.
#[btf_map]
pub static LB_PINS: HashMap<StickyKey, u32, PINS> = HashMap::new();

/// The VIP filter bitmap, written by the controller.
#[btf_map]
pub static LB_VIP_FILTER: Array<u64, { VIP_FILTER_WORDS as usize }> = Array::new();

/// Per VIP id, the tag and idle timeout of the VIP holding it (tag 0:
/// none).
#[btf_map]
pub static LB_VIP_TAGS: Array<VipTag, VIPS> = Array::new();

/// The VIP addresses (for ICMP), written by the controller.
#[btf_map]
pub static LB_VIP_ADDRS: HashMap<VipAddrKey, u8, VIPS> = HashMap::new();

/// Per-CPU budget of "too big" answers, the data plane's own.
#[btf_map]
pub static LB_ICMP_BUDGET: PerCpuArray<IcmpBudget, 1> = PerCpuArray::new();

/// What the balancer hands the tunnel program, per CPU.
#[btf_map]
pub static LB_TUNNEL_JOB: PerCpuArray<TunnelJob, 1> = PerCpuArray::new();

/// The tunnel program, set by the controller when it loads the object.
#[btf_map]
pub static LB_TUNNEL_PROG: ProgramArray<1> = ProgramArray::new();

/// The coarse clock's last reading on each CPU (see `flow::coarse_now`).
#[btf_map]
pub static LB_CLOCK: PerCpuArray<ClockCache, 1> = PerCpuArray::new();

/// What a running `lb capture` asks for, written by it.
#[btf_map]
pub static LB_CAPTURE: Array<CaptureFilter, 1> = Array::new();

/// Captured packets, read by `lb capture`.
#[btf_map]
pub static LB_CAPTURE_RING: RingBuf<CaptureRecord, { RING_BYTES as usize }> = RingBuf::new();

/// Packets captured and lost, per CPU.
#[btf_map]
pub static LB_CAPTURE_STATS: PerCpuArray<CaptureCounters, 1> = PerCpuArray::new();

/// The capture program's workspace, per CPU.
#[btf_map]
pub static LB_CAPTURE_SCRATCH: PerCpuArray<CaptureScratch, 1> = PerCpuArray::new();

/// The capture program, set by the controller when it loads the object.
#[btf_map]
pub static LB_CAPTURE_PROG: ProgramArray<1> = ProgramArray::new();

/// The `fullnat` connections, keyed by the reply as the worker sends it.
/// A plain hash (never evicting a live connection's port), allocated as
/// used; size set by the controller (`--max-nat-flows`).
#[btf_map]
pub static LB_NAT: HashMap<
    FlowKey,
    NatEntry,
    { DEFAULT_MAX_NAT_FLOWS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// The `nat` workers, whose replies are rewritten to their VIP; written
/// by the controller.
#[btf_map]
pub static LB_NAT_WORKERS: HashMap<NatWorkerKey, NatWorkerValue, BACKENDS> = HashMap::new();

/// Bitmap of NAT workers (address, port, protocol) by the VIP filter's
/// bit function, written by the controller: most packets that are not
/// for a VIP are no reply either, and leave without a hash lookup.
#[btf_map]
pub static LB_REPLY_FILTER: Array<u64, { VIP_FILTER_WORDS as usize }> = Array::new();

/// The NAT source addresses by slot, written by the controller.
#[btf_map]
pub static LB_NAT_SOURCES: Array<NatSource, { 2 * NAT_SOURCES_PER_FAMILY as usize }> = Array::new();

/// The NAT settings, written by the controller.
#[btf_map]
pub static LB_NAT_CONFIG: Array<NatConfig, 1> = Array::new();

/// What the balancer hands the NAT program, per CPU.
#[btf_map]
pub static LB_NAT_JOB: PerCpuArray<NatJob, 1> = PerCpuArray::new();

/// The next hops of `nat` replies' clients, per CPU.
#[btf_map]
pub static LB_NAT_HOPS: PerCpuArray<NatClientHop, { NAT_HOP_SLOTS as usize }> = PerCpuArray::new();

/// The NAT program's workspace, per CPU.
#[btf_map]
pub static LB_NAT_SCRATCH: PerCpuArray<NatScratch, 1> = PerCpuArray::new();

/// The NAT programs (forward, reply, ICMP), set by the controller when it
/// loads the object.
#[btf_map]
pub static LB_NAT_PROG: ProgramArray<3> = ProgramArray::new();

/// The maps as the shared decision (`lb_common::decide`) reads them.
pub struct XdpMaps;

impl DecisionMaps for XdpMaps {
    // The kernel keeps an element alive for the program's run; concurrent
    // writers only ever store whole aligned fields.
    type Entry<'a, T: 'a> = &'a mut T;

    #[inline(always)]
    fn flow(&self, key: &FlowKey) -> Option<&mut FlowValue> {
        // SAFETY: see `Entry`.
        LB_FLOWS
            .get_ptr_mut(key)
            .map(|value| unsafe { &mut *value })
    }

    #[inline(always)]
    fn vip_tag(&self, vip_id: u32) -> Option<&VipTag> {
        LB_VIP_TAGS.get(vip_id)
    }

    #[inline(always)]
    fn vip(&self, key: &VipKey) -> Option<VipInfo> {
        // SAFETY: copied out at once; hash map updates replace elements whole.
        unsafe { LB_VIPS.get(key) }.copied()
    }

    #[inline(always)]
    fn backend(&self, id: u32) -> Option<&Backend> {
        LB_BACKENDS.get(id)
    }

    #[inline(always)]
    fn pin(&self, client: &StickyKey) -> Option<u32> {
        // SAFETY: copied out at once.
        unsafe { LB_PINS.get(client) }.copied()
    }

    #[inline(always)]
    fn session(&self, client: &StickyKey) -> Option<&mut StickyValue> {
        // SAFETY: see `Entry`.
        LB_STICKY
            .get_ptr_mut(client)
            .map(|value| unsafe { &mut *value })
    }

    #[inline(always)]
    fn slot(&self, vip_id: u32, index: u32) -> Option<u32> {
        LB_MAGLEV.get_value(vip_id, &index).copied()
    }

    #[inline(always)]
    fn load(&self, id: u32) -> u32 {
        LB_LOAD.get(id).copied().unwrap_or(LOAD_UNKNOWN)
    }

    #[inline(always)]
    fn hash_seed(&self) -> u32 {
        LB_CONFIG.get(0).map_or(0, |config| config.hash_seed)
    }

    #[inline(always)]
    fn coarse_now(&self) -> u64 {
        flow::coarse_now()
    }

    #[inline(always)]
    fn now(&self) -> u64 {
        // SAFETY: helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    }
}
