//! Map layouts of the balancer: VIPs, workers, Maglev tables, flows.
//!
//! Addresses are 16 bytes; IPv4 uses the first four and leaves the rest
//! zero, with `family` telling them apart. Ports are in network byte order.

/// `family` of IPv4 keys and workers.
pub const FAMILY_V4: u8 = 4;
/// `family` of IPv6 keys and workers.
pub const FAMILY_V6: u8 = 6;

/// How many VIPs one instance can hold (size of the per-VIP maps).
pub const MAX_VIPS: u32 = 1024;
/// How many workers one instance can hold across all VIPs.
pub const MAX_BACKENDS: u32 = 4096;
/// Largest Maglev table a VIP may have.
pub const MAX_TABLE_SIZE: u32 = 1_048_573;
/// Maglev slot value meaning "no worker".
pub const NO_BACKEND: u32 = u32::MAX;

/// `Backend::flags`: the slot describes a worker.
pub const BACKEND_VALID: u8 = 1;
/// `Backend::flags`: `mac` holds the worker's resolved MAC address.
pub const BACKEND_MAC_KNOWN: u8 = 2;

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

/// Value of the VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index of the VIP in the per-VIP maps (Maglev tables, counters).
    pub id: u32,
    /// Number of slots in the VIP's Maglev table (a prime).
    pub table_size: u32,
}

/// One worker, in the backend array at its id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// The worker's address.
    pub addr: [u8; 16],
    /// The worker's MAC address, valid with [`BACKEND_MAC_KNOWN`].
    pub mac: [u8; 6],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`BACKEND_VALID`] | [`BACKEND_MAC_KNOWN`].
    pub flags: u8,
}

/// Key of the flow table: a connection as the client sent it.
#[repr(C)]
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
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for TrafficCounters {}
}

const _: () = {
    assert!(core::mem::size_of::<VipKey>() == 20);
    assert!(core::mem::size_of::<VipInfo>() == 8);
    assert!(core::mem::size_of::<Backend>() == 24);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowValue>() == 16);
    assert!(core::mem::size_of::<Config>() == 8);
    assert!(core::mem::size_of::<TrafficCounters>() == 24);
};
