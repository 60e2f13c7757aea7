//! The maps the specification reads and writes, as plain collections, and
//! what one frame's run produces.

use std::collections::{BTreeMap, HashMap};

use lb_common::{
    balancer::{
        Backend, FlowKey, FlowValue, IcmpBudget, StickyKey, StickyValue, TrafficCounters,
        VipAddrKey, VipInfo, VipKey, VipTag,
    },
    counters::GlobalCounters,
    nat::{NatClientHop, NatConfig, NatEntry, NatSource, NatWorkerKey, NatWorkerValue},
};

/// What the data plane reads and writes for the VIP path, one field per
/// map. Arrays are maps from index to value with their capacity beside
/// them: an index past the capacity is absent, one within it but never
/// written reads as zeros.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maps {
    /// `LB_CONFIG`'s flow hash seed.
    pub hash_seed: u32,
    /// `LB_VIPS`.
    pub vips: HashMap<VipKey, VipInfo>,
    /// `LB_VIP_ADDRS`: the addresses echoes are answered for.
    pub vip_addrs: Vec<VipAddrKey>,
    /// `LB_VIP_TAGS`, by VIP id.
    pub vip_tags: BTreeMap<u32, VipTag>,
    /// `LB_VIP_TAGS`'s capacity.
    pub max_vips: u32,
    /// `LB_BACKENDS`, by worker id.
    pub backends: BTreeMap<u32, Backend>,
    /// `LB_BACKENDS`'s capacity.
    pub max_backends: u32,
    /// `LB_MAGLEV`: each VIP id's table of worker ids.
    pub tables: HashMap<u32, Vec<u32>>,
    /// `LB_LOAD`, by worker id (absent: unknown).
    pub loads: HashMap<u32, u32>,
    /// `LB_FLOWS`.
    pub flows: HashMap<FlowKey, FlowValue>,
    /// `LB_STICKY`.
    pub sessions: HashMap<StickyKey, StickyValue>,
    /// `LB_PINS`.
    pub pins: HashMap<StickyKey, u32>,
    /// `LB_NAT_CONFIG`: the NAT sources' slots and the port range.
    pub nat_config: NatConfig,
    /// `LB_NAT_SOURCES`, by slot.
    pub nat_sources: BTreeMap<u8, NatSource>,
    /// `LB_NAT`: `fullnat` connections by the reply tuple.
    pub nat: HashMap<FlowKey, NatEntry>,
    /// `LB_NAT_WORKERS`: `nat` workers by address and port.
    pub nat_workers: HashMap<NatWorkerKey, NatWorkerValue>,
    /// `LB_NAT_HOPS` (`nat` clients' next hops) by slot, where every CPU's
    /// copy agrees.
    pub nat_hops: HashMap<u32, NatClientHop>,
    /// `LB_IFACES`: the interfaces lb is on, by index.
    pub ifaces: Vec<u32>,
    /// The interface the frame comes in on (not a map: the context's
    /// `ingress_ifindex`; BPF_PROG_TEST_RUN's is the loopback device).
    pub ingress: u32,
    /// `LB_REPLY_FILTER`'s words.
    pub reply_filter: Vec<u64>,
    /// `LB_ICMP_BUDGET` of the CPU the frame runs on.
    pub icmp_budget: IcmpBudget,
    /// `LB_COUNTERS`, summed over CPUs.
    pub counters: GlobalCounters,
    /// `LB_VIP_STATS`, summed over CPUs, where not zero.
    pub vip_stats: BTreeMap<u32, TrafficCounters>,
    /// `LB_BACKEND_STATS`, summed over CPUs, where not zero.
    pub backend_stats: BTreeMap<u32, TrafficCounters>,
}

impl Maps {
    /// Worker slot `id`: zeros if never written, `None` past the array.
    pub fn backend(&self, id: u32) -> Option<Backend> {
        (id < self.max_backends).then(|| self.backends.get(&id).copied().unwrap_or_default())
    }

    /// VIP id `id`'s tag: zeros if never written, `None` past the array.
    pub fn vip_tag(&self, id: u32) -> Option<VipTag> {
        (id < self.max_vips).then(|| self.vip_tags.get(&id).copied().unwrap_or_default())
    }
}

/// The two clocks the data plane reads, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// CLOCK_MONOTONIC_COARSE, which times flows.
    pub coarse: u64,
    /// CLOCK_MONOTONIC, which times sticky sessions.
    pub monotonic: u64,
}

/// An XDP verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// XDP_DROP.
    Drop,
    /// XDP_PASS: to the kernel, untouched.
    Pass,
    /// XDP_TX: back out of the interface it came in by.
    Tx,
}

impl Verdict {
    /// The XDP action's number.
    pub fn code(self) -> u32 {
        match self {
            Self::Drop => 1,
            Self::Pass => 2,
            Self::Tx => 3,
        }
    }
}

/// What one frame's run did, beside the changes to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// The verdict.
    pub verdict: Verdict,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}
