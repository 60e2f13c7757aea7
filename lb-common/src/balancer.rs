//! Map layouts of the balancer: VIPs, workers, Maglev tables, flows.
//!
//! Addresses are 16 bytes; IPv4 uses the first four and leaves the rest
//! zero, with `family` telling them apart. Ports are in network byte order.

/// `family` of IPv4 keys and workers.
pub const FAMILY_V4: u8 = 4;
/// `family` of IPv6 keys and workers.
pub const FAMILY_V6: u8 = 6;

/// How many VIPs an instance holds unless `lb run --max-vips` says
/// otherwise: the per-VIP maps' size in the object, which the loader
/// changes.
pub const DEFAULT_MAX_VIPS: u32 = 1024;
/// How many workers (across all VIPs) an instance holds unless
/// `lb run --max-workers` says otherwise: the per-worker maps' size in the
/// object, which the loader changes.
pub const DEFAULT_MAX_WORKERS: u32 = 4096;
/// Largest Maglev table a VIP may have.
pub const MAX_TABLE_SIZE: u32 = 1_048_573;
/// Maglev slot value meaning "no worker".
pub const NO_BACKEND: u32 = u32::MAX;

/// `Backend::flags`: the slot describes a worker.
pub const BACKEND_VALID: u8 = 1;
/// `Backend::flags`: `mac` holds the worker's resolved MAC address.
pub const BACKEND_MAC_KNOWN: u8 = 2;
/// `Backend::flags`: health checks failed. New flows avoid the worker and
/// its existing flows move to a healthy one (it can't answer them anyway).
pub const BACKEND_DOWN: u8 = 4;
/// `Backend::flags`: draining. No new flows or sticky sessions; its
/// existing flows stay until they end.
pub const BACKEND_DRAINING: u8 = 8;
/// `Backend::flags`: the worker's neighbour (or next hop) can't be
/// resolved. Treated like [`BACKEND_DOWN`]: nothing can reach it.
pub const BACKEND_UNREACHABLE: u8 = 16;

/// `VipInfo::scheduler`: the flow's slot in the VIP's Maglev table.
pub const SCHED_MAGLEV: u8 = 0;
/// `VipInfo::scheduler`: two slots from two independent flow hashes; the
/// less loaded of the two workers (power of two choices).
pub const SCHED_LEAST_LOAD: u8 = 1;

/// `VipInfo::flags`: new flows follow the client's sticky session.
pub const VIP_STICKY: u8 = 1;
/// `VipInfo::flags`: some clients of the VIP are pinned to a worker.
pub const VIP_HAS_PINS: u8 = 2;

/// Load figure meaning "no current report".
pub const LOAD_UNKNOWN: u32 = u32::MAX;
/// Load figure of a fully loaded worker (a reported load of 1.0).
pub const LOAD_SCALE: u32 = 1_000_000;
/// Mixed into the seed for the least-load scheduler's second choice.
pub const SECOND_CHOICE_SALT: u32 = 0x5bd1_e995;

/// `FlowValue::flags`: a FIN or RST was seen; the flow is ending.
pub const FLOW_CLOSING: u32 = 1;
/// The data plane refreshes `FlowValue::last_seen_ns` at most this often,
/// so an established flow costs a write only once a second.
pub const FLOW_TOUCH_NS: u64 = 1_000_000_000;

/// Words of the VIP filter: a bitmap with one bit set per VIP
/// (address, port, protocol), so most packets that are not for a VIP pass
/// without a hash lookup.
pub const VIP_FILTER_WORDS: u32 = 1024;

/// The VIP filter bit of a destination.
#[inline(always)]
#[expect(
    clippy::indexing_slicing,
    reason = "four-byte words at offsets 0, 4, 8 and 12 of a 16-byte array"
)]
pub fn vip_filter_bit(addr: &[u8; 16], port: u16, proto: u8) -> u32 {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let folded = word(0) ^ word(4) ^ word(8) ^ word(12) ^ (u32::from(port) << 8) ^ u32::from(proto);
    folded.wrapping_mul(0x9e37_79b1) >> 16
}

/// A VIP's tag: a hash of its key, never zero (zero marks a free id).
pub fn vip_tag(key: &VipKey) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let bytes = key
        .addr
        .iter()
        .copied()
        .chain(key.port.to_ne_bytes())
        .chain([key.proto, key.family]);
    for byte in bytes {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    hash | 1
}

/// How many sticky sessions the table holds before LRU eviction.
pub const MAX_STICKY: u32 = 262_144;
/// How many pinned clients one instance can hold.
pub const MAX_PINS: u32 = 65_536;

/// Key of the VIP map: the service's destination address, port, protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// Destination address.
    pub addr: [u8; 16],
    /// Destination port, network byte order.
    pub port: u16,
    /// IP protocol (6 = TCP, 17 = UDP).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// Key of the VIP address set: every address some VIP uses, whatever its
/// port (ICMP to it is lb's to answer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipAddrKey {
    /// The address.
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Value of the VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index of the VIP in the per-VIP maps (Maglev tables, counters).
    pub id: u32,
    /// Number of slots in the VIP's Maglev table (a prime).
    pub table_size: u32,
    /// Sticky-session lifetime in seconds (with [`VIP_STICKY`]).
    pub sticky_ttl_s: u32,
    /// [`SCHED_MAGLEV`] or [`SCHED_LEAST_LOAD`].
    pub scheduler: u8,
    /// Client prefix length that sticky sessions and pins are keyed by.
    pub sticky_prefix: u8,
    /// [`VIP_STICKY`] | [`VIP_HAS_PINS`].
    pub flags: u8,
    /// Always zero.
    pub pad: u8,
    /// [`vip_tag`] of the VIP's key: recorded in its flows, and in
    /// `LB_VIP_TAGS` at its id while it exists.
    pub tag: u32,
}

/// One worker, in the backend array at its id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// The worker's address.
    pub addr: [u8; 16],
    /// The next hop's MAC address, valid with [`BACKEND_MAC_KNOWN`]: the
    /// worker's own for DSR, the router's toward it for IPIP and GUE (or
    /// the worker's, when it is on this link).
    pub mac: [u8; 6],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`BACKEND_VALID`] | [`BACKEND_MAC_KNOWN`] | [`BACKEND_DOWN`] |
    /// [`BACKEND_DRAINING`].
    pub flags: u8,
    /// The VIP the worker serves: a flow or session naming a reused id of
    /// another VIP is scheduled afresh.
    pub vip_id: u32,
    /// Generation of the slot, never zero for a worker: a new worker in a
    /// slot gets a new one, so flows and sessions recorded for a deleted
    /// worker (which carry its generation) never follow the slot's next
    /// worker.
    pub generation: u32,
    /// How its packets travel: [`FORWARD_DSR`], [`FORWARD_IPIP`],
    /// [`FORWARD_GUE`], [`FORWARD_NAT`] or [`FORWARD_FULLNAT`] (its VIP's
    /// method).
    pub forward: u8,
    /// The interface the worker is reached through: its slot in
    /// `LB_EGRESS` (an [`Egress`]); 0 sends the frame back out of the
    /// interface it came in on (an instance on one interface).
    pub egress: u8,
    /// GUE destination port, network byte order (with [`FORWARD_GUE`]).
    pub gue_port: u16,
    /// The largest IP packet the way to the worker carries (the
    /// interface's or the tunnel MTU): an encapsulated packet beyond it is
    /// answered with "fragmentation needed" / "packet too big".
    pub mtu: u16,
    /// The worker's port for NAT methods, network byte order (0: the
    /// VIP's).
    pub port: u16,
    /// Outer source address of encapsulated packets, of the worker's
    /// family.
    pub tunnel_source: [u8; 16],
}

/// One of lb's interfaces, as a frame leaving by it needs it: in
/// `LB_EGRESS`, at the slot [`Backend::egress`] names.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Egress {
    /// Its index; 0: the slot is empty.
    pub ifindex: u32,
    /// Its MAC address: the source of frames sent out of it.
    pub mac: [u8; 6],
    /// Always zero.
    pub pad: [u8; 2],
}

/// Most interfaces one lb instance attaches to (`lb run --iface`,
/// repeated); `LB_EGRESS` has a slot more, slot 0 being unused.
pub const MAX_INTERFACES: u32 = 15;

/// `Backend::forward`: L2 direct server return (the frame readdressed to
/// the worker's MAC on this link).
pub const FORWARD_DSR: u8 = 0;
/// `Backend::forward`: the packet inside an outer IPv4 or IPv6 header
/// (IPIP, IP6IP6, or across families) to the worker's address.
pub const FORWARD_IPIP: u8 = 1;
/// `Backend::forward`: the packet inside outer IP and UDP headers to the
/// worker's GUE port (GUE variant 1: the inner IP packet follows UDP).
pub const FORWARD_GUE: u8 = 2;
/// `Backend::forward`: destination NAT, the packet readdressed to the
/// worker's address and port; its replies come back through lb.
pub const FORWARD_NAT: u8 = 3;
/// `Backend::forward`: source and destination NAT, the packet also sent
/// from one of lb's NAT sources and a port lb allocates.
pub const FORWARD_FULLNAT: u8 = 4;

/// Whether `forward` is one of the NAT methods, which the NAT program
/// (`lb_nat`) carries out.
#[inline(always)]
pub fn is_nat(forward: u8) -> bool {
    forward == FORWARD_NAT || forward == FORWARD_FULLNAT
}

/// What the balancer hands its tunnel program (`lb_tunnel`, reached by a
/// tail call with a stack of its own) in a per-CPU slot: which packet of
/// which flow goes to which worker.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelJob {
    /// The flow the packet belongs to (the embedded one, for an ICMP
    /// error).
    pub key: FlowKey,
    /// The worker's id.
    pub backend_id: u32,
    /// Its VIP's id.
    pub vip_id: u32,
    /// The frame's length as it arrived, for the traffic counters.
    pub len: u64,
    /// [`JOB_FLOW`], [`JOB_NEW_FLOW`] or [`JOB_ICMP_ERROR`].
    pub kind: u8,
    /// Why the worker was chosen (a [`crate::capture::reason`] code), for
    /// a running capture.
    pub reason: u8,
    /// Always zero.
    pub pad: [u8; 6],
}

/// `TunnelJob::kind`: a packet of an established flow.
pub const JOB_FLOW: u8 = 0;
/// `TunnelJob::kind`: the first packet of a flow.
pub const JOB_NEW_FLOW: u8 = 1;
/// `TunnelJob::kind`: an ICMP error about a flow (never answered with
/// another ICMP error).
pub const JOB_ICMP_ERROR: u8 = 2;

/// Per-CPU budget of "fragmentation needed" / "packet too big" answers: a
/// token bucket refilled as time passes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcmpBudget {
    /// Answers that may be sent now.
    pub tokens: u64,
    /// When tokens were last added (coarse monotonic clock, ns).
    pub refilled_ns: u64,
}

/// The coarse monotonic clock as one CPU last read it, with the jiffy it
/// read it in: that clock only moves at a tick, so within one jiffy the
/// data plane reuses the reading instead of calling the clock helper for
/// every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockCache {
    /// `jiffies` when `ns` was read.
    pub jiffies: u64,
    /// CLOCK_MONOTONIC_COARSE then, in nanoseconds.
    pub ns: u64,
}

/// Most answers one CPU sends in a burst.
pub const ICMP_BURST: u64 = 50;
/// One more answer per this many nanoseconds (100 a second per CPU).
pub const ICMP_TOKEN_NS: u64 = 10_000_000;

impl Backend {
    /// Whether a new flow of VIP `vip_id` may go to this worker.
    #[inline(always)]
    pub fn takes_new_flows(&self, vip_id: u32) -> bool {
        let unusable = BACKEND_DOWN | BACKEND_DRAINING | BACKEND_UNREACHABLE;
        self.flags & (BACKEND_VALID | unusable) == BACKEND_VALID && self.vip_id == vip_id
    }

    /// Whether an established flow of VIP `vip_id`, recorded on this slot's
    /// worker of `generation`, may stay on it.
    #[inline(always)]
    pub fn keeps_flows(&self, vip_id: u32, generation: u32) -> bool {
        self.flags & (BACKEND_VALID | BACKEND_DOWN | BACKEND_UNREACHABLE) == BACKEND_VALID
            && self.vip_id == vip_id
            && self.generation == generation
    }
}

/// Key of the flow table: a connection as the client sent it. Aligned to
/// 8 (its size is 40 either way) so that its copies and the flow hash
/// read and write words, not bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address.
    pub src: [u8; 16],
    /// VIP address.
    pub dst: [u8; 16],
    /// Client port, network byte order.
    pub sport: u16,
    /// VIP port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub pad: [u8; 2],
}

/// Value of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// The worker the flow is pinned to.
    pub backend_id: u32,
    /// The flow's VIP.
    pub vip_id: u32,
    /// When the flow was recorded (CLOCK_MONOTONIC, nanoseconds).
    pub created_ns: u64,
    /// When a packet of the flow was last seen, to within
    /// [`FLOW_TOUCH_NS`].
    pub last_seen_ns: u64,
    /// [`FLOW_CLOSING`].
    pub flags: u32,
    /// The VIP's tag when the flow was recorded: a flow is only followed
    /// while `LB_VIP_TAGS[vip_id]` still holds it (the VIP was not removed
    /// or its id given to another VIP).
    pub vip_tag: u32,
    /// [`Backend::generation`] of the worker when the flow was recorded.
    pub backend_generation: u32,
    /// A `fullnat` flow's allocated port, network byte order.
    pub nat_port: u16,
    /// A `fullnat` flow's NAT source slot; [`crate::nat::NO_NAT_SOURCE`]
    /// for every other flow.
    pub nat_source: u8,
    /// Always zero.
    pub pad: u8,
}

/// Key of the sticky-session and pin tables: a client (masked to the VIP's
/// sticky prefix) of a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StickyKey {
    /// Client address, masked with [`mask_prefix`].
    pub client: [u8; 16],
    /// The VIP's id.
    pub vip_id: u32,
}

/// Value of the sticky-session table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StickyValue {
    /// The worker the client used last.
    pub backend_id: u32,
    /// [`Backend::generation`] of that worker: a session never follows a
    /// slot to its next worker.
    pub backend_generation: u32,
    /// When the client last opened a flow (CLOCK_MONOTONIC, nanoseconds).
    pub last_ns: u64,
}

/// `addr` with every bit past the first `bits` cleared.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    clippy::indexing_slicing,
    reason = "i < 16 indexes both 16-byte arrays and fits in u32"
)]
pub fn mask_prefix(addr: &[u8; 16], bits: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let start = (i as u32) * 8;
        let bits = u32::from(bits);
        out[i] = if bits >= start + 8 {
            addr[i]
        } else if bits > start {
            addr[i] & (0xffu8 << (8 - (bits - start)))
        } else {
            0
        };
        i += 1;
    }
    out
}

/// What `LB_VIP_TAGS` holds per VIP id: enough to follow an established
/// flow without the VIP lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipTag {
    /// [`vip_tag`] of the VIP holding the id; 0 when the id is free.
    pub tag: u32,
    /// A flow idle for longer than this is scheduled afresh on its next
    /// packet, so a reused 5-tuple never follows a worker chosen long ago.
    pub idle_timeout_s: u32,
}

/// Settings the controller writes for the data plane (array of one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Seed of the flow hash; part of the configuration so that every
    /// instance with the same configuration picks the same workers.
    pub hash_seed: u32,
    /// [`crate::LAYOUT_VERSION`] of the controller that wrote it.
    pub layout_version: u32,
}

/// Per-VIP and per-worker traffic, one per-CPU copy each.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded, Ethernet header included.
    pub bytes: u64,
    /// Flows recorded (first packets scheduled by Maglev).
    pub new_flows: u64,
}

/// What lb sent out of one of its interfaces from another
/// (`XDP_REDIRECT`), one per-CPU copy per interface, in
/// `LB_IFACE_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Frames redirected out of it.
    pub redirected_packets: u64,
    /// Their bytes, Ethernet header included.
    pub redirected_bytes: u64,
}

impl IfaceCounters {
    /// Adds `other` field by field (summing per-CPU copies).
    pub fn accumulate(&mut self, other: &Self) {
        self.redirected_packets = self
            .redirected_packets
            .wrapping_add(other.redirected_packets);
        self.redirected_bytes = self.redirected_bytes.wrapping_add(other.redirected_bytes);
    }
}

impl TrafficCounters {
    /// Adds `other` field by field (summing per-CPU copies).
    pub fn accumulate(&mut self, other: &Self) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
    }
}

impl FlowKey {
    /// The flow hash Maglev indexes with; identical in kernel and user
    /// space and on every instance with the same seed.
    #[inline(always)]
    #[expect(
        clippy::indexing_slicing,
        reason = "four-byte words at i = 0, 4, 8, 12 of 16-byte arrays"
    )]
    pub fn hash(&self, seed: u32) -> u32 {
        let mut h = seed ^ 0x9e37_79b9;
        let mut i = 0;
        while i < 16 {
            h = mix(
                h,
                u32::from_ne_bytes([
                    self.src[i],
                    self.src[i + 1],
                    self.src[i + 2],
                    self.src[i + 3],
                ]),
            );
            h = mix(
                h,
                u32::from_ne_bytes([
                    self.dst[i],
                    self.dst[i + 1],
                    self.dst[i + 2],
                    self.dst[i + 3],
                ]),
            );
            i += 4;
        }
        h = mix(h, (u32::from(self.sport) << 16) | u32::from(self.dport));
        h = mix(h, u32::from(self.proto));
        finalize(h)
    }
}

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finalize(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is repr(C) of integers and byte arrays with no
    // implicit padding (checked by the size assertions below).
    unsafe impl aya::Pod for VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: repr(C) with explicit padding, so every byte is initialised.
    unsafe impl aya::Pod for Egress {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StickyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipAddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StickyValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipTag {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IcmpBudget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ClockCache {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TunnelJob {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TrafficCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IfaceCounters {}
}

const _: () = {
    assert!(core::mem::size_of::<VipKey>() == 20);
    assert!(core::mem::size_of::<VipInfo>() == 20);
    assert!(core::mem::size_of::<Backend>() == 56);
    assert!(core::mem::size_of::<IcmpBudget>() == 16);
    assert!(core::mem::size_of::<ClockCache>() == 16);
    assert!(core::mem::size_of::<TunnelJob>() == 64);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowValue>() == 40);
    assert!(core::mem::size_of::<StickyKey>() == 20);
    assert!(core::mem::size_of::<VipAddrKey>() == 20);
    assert!(core::mem::size_of::<StickyValue>() == 16);
    assert!(core::mem::size_of::<Config>() == 8);
    assert!(core::mem::size_of::<VipTag>() == 8);
    assert!(core::mem::size_of::<TrafficCounters>() == 24);
};
