//! NAT forwarding (`--forward nat|fullnat`): the layouts of its maps, the
//! port allocator's probe sequence and the connection states.
//!
//! `nat` rewrites a client's packet to the worker's address and port;
//! the worker's replies come back through the balancer (its gateway) and
//! are matched statelessly by the worker's address and port in
//! `LB_NAT_WORKERS` (one worker `ADDR:PORT/proto` serves one NAT VIP), so
//! they survive any loss of state. `fullnat` also rewrites the source to
//! one of lb's NAT source addresses and a port it allocates; the
//! connection is then one entry in `LB_NAT`, keyed by the reply as the
//! worker sends it, which the reverse path finds with one lookup. The
//! forward path finds its source and port in the flow table's entry.
//!
//! `LB_NAT` is a plain hash, not an LRU: an LRU would evict a live
//! connection's entry silently and hand its port to another client. A
//! full table refuses new connections instead, and entries leave only
//! through the controller's sweep ([`expired`]), which marks an entry
//! [`NAT_DEAD`] a sweep before it deletes the flow entry and then the
//! NAT entry, so no packet is ever sent with a port that is free.

use crate::balancer::{FlowKey, FAMILY_V4, FAMILY_V6};

/// How many ports the allocator tries for one new connection before it
/// gives up (`nat_ports_exhausted`). At an occupancy ρ of the range a new
/// connection fails with probability ρ^16 (2.8% at 80%).
pub const NAT_PROBES: u32 = 16;

/// NAT source slots per family (`LB_NAT_SOURCES` holds IPv4 in
/// `0..NAT_SOURCES_PER_FAMILY` and IPv6 after them).
pub const NAT_SOURCES_PER_FAMILY: u32 = 16;

/// `FlowValue::nat_source`: the flow has no NAT source (not `fullnat`).
pub const NO_NAT_SOURCE: u8 = 0xff;

/// How many `fullnat` connections an instance holds unless
/// `lb run --max-nat-flows` says otherwise.
pub const DEFAULT_MAX_NAT_FLOWS: u32 = 262_144;

/// The NAT port range unless `lb run --nat-ports` says otherwise: below
/// Linux's default `ip_local_port_range` (32768–60999), where the host's
/// own connections take their ports.
pub const DEFAULT_NAT_PORTS: (u16, u16) = (20_000, 32_767);

/// `NatEntry::state`: a TCP connection whose worker has not answered yet.
pub const NAT_OPENING: u8 = 0;
/// `NatEntry::state`: the worker answered (UDP: from the first packet).
pub const NAT_ESTABLISHED: u8 = 1;
/// `NatEntry::state`: a FIN or RST was seen from the worker.
pub const NAT_CLOSING: u8 = 2;

/// `NatEntry::flags`: the controller's sweep found the entry expired. The
/// data plane never follows or recovers it; the next sweep deletes it.
pub const NAT_DEAD: u8 = 1;

/// How long a TCP connection may stay [`NAT_OPENING`] or closing after its
/// last packet before its port is freed, in seconds.
pub const NAT_SHORT_TIMEOUT_S: u32 = 10;

/// `NatJob::kind`: a packet of an established NAT'd flow, to its worker.
pub const NAT_JOB_FLOW: u8 = 0;
/// `NatJob::kind`: the first packet of a NAT'd flow (for `fullnat`, it
/// needs a port).
pub const NAT_JOB_NEW_FLOW: u8 = 1;
/// `NatJob::kind`: a packet from a worker that may be a NAT'd reply.
pub const NAT_JOB_REPLY: u8 = 2;
/// `NatJob::kind`: an ICMP error from the client's side about a NAT'd
/// flow, to its worker (`l4_offset`: the ICMP header's).
pub const NAT_JOB_ICMP_TO_WORKER: u8 = 3;
/// `NatJob::kind`: an ICMP error about a packet a NAT worker was sent
/// (`key`: the reply tuple it quotes, as the worker would send it).
pub const NAT_JOB_ICMP_FROM_WORKER: u8 = 4;

/// Slot of `LB_NAT_PROG` holding the forward NAT program (`lb_nat`).
pub const NAT_PROG_FORWARD: u32 = 0;
/// Slot of `LB_NAT_PROG` holding the reverse NAT program (`lb_nat_reply`).
pub const NAT_PROG_REPLY: u32 = 1;
/// Slot of `LB_NAT_PROG` holding the NAT ICMP program (`lb_nat_icmp`).
pub const NAT_PROG_ICMP: u32 = 2;

/// What the balancer hands its NAT program (`lb_nat`, reached by a tail
/// call with a stack of its own) in a per-CPU slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatJob {
    /// The flow as the client sent it; for [`NAT_JOB_REPLY`], the reply
    /// as the worker sent it.
    pub key: FlowKey,
    /// The worker's id (not for replies).
    pub backend_id: u32,
    /// Its VIP's id (not for replies).
    pub vip_id: u32,
    /// The frame's length as it arrived, for the traffic counters.
    pub len: u64,
    /// [`NAT_JOB_FLOW`], [`NAT_JOB_NEW_FLOW`] or [`NAT_JOB_REPLY`].
    pub kind: u8,
    /// Why the worker was chosen (a [`crate::capture::reason`] code).
    pub reason: u8,
    /// The TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// [`FlowValue::nat_source`](crate::balancer::FlowValue) of an
    /// established `fullnat` flow.
    pub nat_source: u8,
    /// Offset of the transport header in the frame.
    pub l4_offset: u16,
    /// [`FlowValue::nat_port`](crate::balancer::FlowValue) of an
    /// established `fullnat` flow, network byte order.
    pub nat_port: u16,
}

/// Value of `LB_NAT`, keyed by the reply tuple as the worker sends it
/// (worker address and port → NAT source and allocated port): one
/// `fullnat` connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    /// The connection as the client sent it: its flow table key.
    pub client: FlowKey,
    /// The worker's id.
    pub backend_id: u32,
    /// The VIP's id.
    pub vip_id: u32,
    /// The VIP's tag when the port was allocated: an entry whose VIP id
    /// holds another tag now is stale.
    pub vip_tag: u32,
    /// [`Backend::generation`](crate::balancer::Backend) of the worker:
    /// an entry whose worker slot holds another generation is stale.
    pub backend_generation: u32,
    /// When the port was allocated (coarse monotonic clock, ns).
    pub created_ns: u64,
    /// When the worker last sent on it, to within a second (the client's
    /// side is in the flow entry).
    pub last_seen_ns: u64,
    /// [`NAT_OPENING`], [`NAT_ESTABLISHED`] or [`NAT_CLOSING`].
    pub state: u8,
    /// [`NAT_DEAD`].
    pub flags: u8,
    /// The NAT source's slot in `LB_NAT_SOURCES`.
    pub source: u8,
    /// Always zero.
    pub pad: [u8; 5],
    /// The client's next hop, as the reverse path last looked it up.
    pub hop: NatHop,
}

/// A client's next hop as the reverse path's routing lookup found it:
/// cached for [`NAT_HOP_TTL_NS`] so that most replies skip the lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatHop {
    /// The frame's destination and source MACs.
    pub macs: [u8; 12],
    /// The interface it leaves by.
    pub ifindex: u32,
    /// When it was looked up (coarse monotonic clock, ns); 0: never.
    pub found_ns: u64,
}

/// How long a cached next hop is used before it is looked up again: a
/// route or neighbour change reaches NAT replies within this.
pub const NAT_HOP_TTL_NS: u64 = 1_000_000_000;

/// Slots of the per-CPU next-hop cache of `nat` replies (`LB_NAT_HOPS`),
/// indexed by a hash of the client's address.
pub const NAT_HOP_SLOTS: u32 = 256;

/// A `nat` reply's client and its next hop, in `LB_NAT_HOPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatClientHop {
    /// The client's address.
    pub client: [u8; 16],
    /// Its next hop.
    pub hop: NatHop,
}

/// The reply filter's bit of NAT source `addr`: set for every address in
/// `LB_NAT_SOURCES`, so a worker's packet to any other address (a `nat`
/// reply to a client) skips the `fullnat` table.
#[inline(always)]
pub fn source_bit(addr: &[u8; 16]) -> u32 {
    crate::balancer::vip_filter_bit(addr, 0, 0)
}

/// The slot of `LB_NAT_HOPS` that caches client `client`'s next hop.
#[inline(always)]
#[expect(
    clippy::indexing_slicing,
    reason = "four-byte words at offsets 0, 4, 8 and 12 of a 16-byte array"
)]
pub fn hop_slot(client: &[u8; 16]) -> u32 {
    let word =
        |i: usize| u32::from_ne_bytes([client[i], client[i + 1], client[i + 2], client[i + 3]]);
    ((word(0) ^ word(4) ^ word(8) ^ word(12)).wrapping_mul(0x9e37_79b1) >> 24) % NAT_HOP_SLOTS
}

impl NatHop {
    /// Whether it may still be used at `now_ns` (the data plane checks
    /// that its interface is still one of lb's).
    #[inline(always)]
    pub fn fresh(&self, now_ns: u64) -> bool {
        self.found_ns != 0 && now_ns.saturating_sub(self.found_ns) < NAT_HOP_TTL_NS
    }
}

/// The NAT program's per-CPU workspace: what would not fit beside the
/// rest on its 512-byte stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatScratch {
    /// A new connection's entry, built before it is inserted.
    pub entry: NatEntry,
    /// The parameters of a routing lookup (`struct bpf_fib_lookup`).
    pub fib: [u8; 64],
}

impl Default for NatScratch {
    fn default() -> Self {
        Self {
            entry: NatEntry::default(),
            fib: [0; 64],
        }
    }
}

/// The NAT settings (array of one), written by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// Seed of the probe sequence: random once per instance and kept with
    /// its pins, so a restarted controller finds the same ports.
    pub seed: u32,
    /// Lowest port of the NAT port range (host byte order).
    pub port_low: u16,
    /// Highest port of the range (host byte order).
    pub port_high: u16,
    /// How many of `v4_slots` are in use.
    pub v4_count: u8,
    /// How many of `v6_slots` are in use.
    pub v6_count: u8,
    /// Always zero.
    pub pad: [u8; 6],
    /// The slots of the IPv4 sources new connections may use.
    pub v4_slots: [u8; NAT_SOURCES_PER_FAMILY as usize],
    /// The slots of the IPv6 sources new connections may use.
    pub v6_slots: [u8; NAT_SOURCES_PER_FAMILY as usize],
}

/// One NAT source address (`LB_NAT_SOURCES` slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatSource {
    /// The address.
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`]; 0 for an empty slot.
    pub family: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Key of `LB_NAT_WORKERS`: a `nat` worker's address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatWorkerKey {
    /// The worker's address.
    pub addr: [u8; 16],
    /// The worker's port, network byte order.
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// Value of `LB_NAT_WORKERS`: what a `nat` worker's replies are rewritten
/// to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatWorkerValue {
    /// The VIP's address.
    pub vip: [u8; 16],
    /// The VIP's port, network byte order.
    pub vip_port: u16,
    /// Always zero.
    pub pad: u16,
    /// The VIP's id.
    pub vip_id: u32,
    /// The worker's id.
    pub backend_id: u32,
}

impl NatConfig {
    /// The active source slots of `family`.
    #[inline(always)]
    pub fn slots(&self, family: u8) -> (&[u8; NAT_SOURCES_PER_FAMILY as usize], u8) {
        if family == FAMILY_V6 {
            (&self.v6_slots, self.v6_count)
        } else {
            (&self.v4_slots, self.v4_count)
        }
    }
}

/// Where probe `probe` of flow `key` looks: the index among the family's
/// active sources and the port (host byte order). The same sequence for
/// the same flow, seed and settings, so a connection's entry can be found
/// again from its flow alone.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "port_low + (hash >> 8) % range stays within port_low..=port_high (port_low alone when the range is empty), so in u16"
)]
pub fn probe(key: &FlowKey, seed: u32, probe: u32, config: &NatConfig) -> (u32, u16) {
    let hash = key.hash(seed ^ probe.wrapping_mul(0x9e37_79b9));
    let (_, count) = config.slots(key.family);
    let source = if count == 0 {
        0
    } else {
        (hash & 0xff) % u32::from(count)
    };
    let range = u32::from(config.port_high.saturating_sub(config.port_low)) + 1;
    let port = config.port_low as u32 + (hash >> 8) % range;
    (source, port as u16)
}

/// The state a `fullnat` connection's entry moves to when the worker
/// sends a segment with TCP flags `tcp_flags` (UDP: 0, `is_tcp` false).
#[inline(always)]
pub fn state_after_reply(state: u8, is_tcp: bool, tcp_flags: u8) -> u8 {
    const FIN_OR_RST: u8 = 0x01 | 0x04;
    if !is_tcp {
        NAT_ESTABLISHED
    } else if tcp_flags & FIN_OR_RST != 0 || state == NAT_CLOSING {
        NAT_CLOSING
    } else {
        NAT_ESTABLISHED
    }
}

/// Whether a `fullnat` connection's port may be freed at `now_ns`: TCP
/// still opening, or closing (a FIN or RST from either side,
/// `client_closing` for the client's), for [`NAT_SHORT_TIMEOUT_S`] since
/// its last packet; otherwise its VIP's idle timeout. `last_seen_ns` is
/// the later of the client's and the worker's last packet.
pub fn expired(
    state: u8,
    client_closing: bool,
    last_seen_ns: u64,
    now_ns: u64,
    idle_timeout_s: u32,
) -> bool {
    let short = state != NAT_ESTABLISHED || client_closing;
    let timeout_s = if short {
        NAT_SHORT_TIMEOUT_S.min(idle_timeout_s)
    } else {
        idle_timeout_s
    };
    crate::decide::flow_expired(now_ns, last_seen_ns, timeout_s)
}

/// The key of `LB_NAT` for a connection of `client` (a flow as the client
/// sent it) to worker `worker:worker_port` through `source:port`.
#[inline(always)]
pub fn reply_key(
    client: &FlowKey,
    worker: &[u8; 16],
    worker_port: u16,
    source: &[u8; 16],
    port: u16,
) -> FlowKey {
    FlowKey {
        src: *worker,
        dst: *source,
        sport: worker_port,
        dport: port,
        proto: client.proto,
        family: client.family,
        pad: [0; 2],
    }
}

/// Whether `family` is one NAT serves.
#[inline(always)]
pub fn is_family(family: u8) -> bool {
    family == FAMILY_V4 || family == FAMILY_V6
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is repr(C) of integers and byte arrays with no
    // implicit padding (checked by the size assertions below).
    unsafe impl aya::Pod for NatJob {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NatEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NatConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NatScratch {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NatHop {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NatClientHop {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NatSource {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NatWorkerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NatWorkerValue {}
}

const _: () = {
    assert!(core::mem::size_of::<NatJob>() == 64);
    assert!(core::mem::size_of::<NatEntry>() == 104);
    assert!(core::mem::size_of::<NatHop>() == 24);
    assert!(core::mem::size_of::<NatClientHop>() == 40);
    assert!(core::mem::size_of::<NatConfig>() == 48);
    assert!(core::mem::size_of::<NatScratch>() == 168);
    assert!(core::mem::size_of::<NatSource>() == 20);
    assert!(core::mem::size_of::<NatWorkerKey>() == 20);
    assert!(core::mem::size_of::<NatWorkerValue>() == 28);
};

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{collections::HashSet, vec::Vec};

    use super::*;

    fn config(low: u16, high: u16, v4: u8) -> NatConfig {
        NatConfig {
            seed: 7,
            port_low: low,
            port_high: high,
            v4_count: v4,
            ..NatConfig::default()
        }
    }

    fn flow(sport: u16) -> FlowKey {
        FlowKey {
            src: [192, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [203, 0, 113, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: FAMILY_V4,
            pad: [0; 2],
        }
    }

    #[test]
    fn probes_stay_in_the_range_and_among_the_sources() {
        let config = config(20_000, 20_009, 3);
        for sport in 0..500 {
            for i in 0..NAT_PROBES {
                let (source, port) = probe(&flow(sport), config.seed, i, &config);
                assert!(source < 3);
                assert!((20_000..=20_009).contains(&port));
            }
        }
    }

    #[test]
    fn the_sequence_is_the_same_every_time_and_differs_between_probes() {
        let config = config(20_000, 32_767, 2);
        let a: Vec<_> = (0..NAT_PROBES)
            .map(|i| probe(&flow(4242), 7, i, &config))
            .collect();
        let b: Vec<_> = (0..NAT_PROBES)
            .map(|i| probe(&flow(4242), 7, i, &config))
            .collect();
        assert_eq!(a, b);
        let distinct: HashSet<_> = a.iter().collect();
        assert!(distinct.len() > NAT_PROBES as usize / 2, "{a:?}");
    }

    #[test]
    fn a_range_of_one_port_always_probes_it() {
        let config = config(25_000, 25_000, 1);
        assert_eq!(probe(&flow(1), 7, 3, &config), (0, 25_000));
    }

    #[test]
    fn replies_move_the_state_forward_only() {
        assert_eq!(state_after_reply(NAT_OPENING, true, 0x12), NAT_ESTABLISHED);
        assert_eq!(state_after_reply(NAT_ESTABLISHED, true, 0x11), NAT_CLOSING);
        assert_eq!(state_after_reply(NAT_CLOSING, true, 0x10), NAT_CLOSING);
        assert_eq!(state_after_reply(NAT_OPENING, false, 0), NAT_ESTABLISHED);
    }

    #[test]
    fn opening_and_closing_connections_expire_sooner() {
        const S: u64 = 1_000_000_000;
        let now = 1_000 * S;
        let last = now - 11 * S;
        assert!(expired(NAT_OPENING, false, last, now, 300));
        assert!(expired(NAT_CLOSING, false, last, now, 300));
        assert!(expired(NAT_ESTABLISHED, true, last, now, 300));
        assert!(!expired(NAT_ESTABLISHED, false, last, now, 300));
        assert!(expired(NAT_ESTABLISHED, false, now - 301 * S, now, 300));
        // A VIP idle timeout shorter than the short one wins.
        assert!(expired(NAT_OPENING, false, now - 6 * S, now, 5));
    }
}
