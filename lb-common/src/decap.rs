//! The worker side of lb's L3 forwarding: the layouts shared by the
//! `lb_decap` XDP program and `lb decap`. The formats it strips are those
//! of [`crate::encap`].

/// The decap program's name in its object.
pub const PROGRAM: &str = "lb_decap";

/// Names of the decap object's maps, which are also their pin names.
pub mod map_names {
    /// Per-CPU array of one [`super::DecapCounters`].
    pub const COUNTERS: &str = "DECAP_COUNTERS";
    /// Array of one [`super::DecapConfig`].
    pub const CONFIG: &str = "DECAP_CONFIG";
    /// Hash [`super::LocalAddrKey`] → `u8`: this host's addresses, the only
    /// outer destinations decapsulated.
    pub const LOCAL_ADDRS: &str = "DECAP_LOCAL_ADDRS";

    /// Every map, each pinned under the interface's pin directory.
    pub const ALL: &[&str] = &[COUNTERS, CONFIG, LOCAL_ADDRS];
}

/// Capacity of the local-address map.
pub const MAX_LOCAL_ADDRS: u32 = 1024;

pub use crate::balancer::{FAMILY_V4, FAMILY_V6};

/// Packet counters of the decap program, one per-CPU copy summed by user
/// space. Every packet is in exactly one field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct DecapCounters {
    /// IPIP over IPv4 (4in4 and 6in4) decapsulated.
    pub ipip: u64,
    /// IPIP over IPv6 (6in6 and 4in6) decapsulated.
    pub ip6ip6: u64,
    /// GUE (over IPv4 or IPv6) decapsulated.
    pub gue: u64,
    /// Passed untouched: not a tunnel packet, or not addressed to us.
    pub passed: u64,
    /// Tunnel packets to us that were cut short or inconsistent: dropped.
    pub malformed: u64,
}

impl DecapCounters {
    /// Field names, in layout order.
    pub const NAMES: &'static [&'static str] = &["ipip", "ip6ip6", "gue", "passed", "malformed"];

    /// Field values, in the order of [`Self::NAMES`].
    pub fn values(&self) -> [u64; 5] {
        [
            self.ipip,
            self.ip6ip6,
            self.gue,
            self.passed,
            self.malformed,
        ]
    }

    /// Adds `other` field by field (summing per-CPU copies).
    pub fn add(&mut self, other: &Self) {
        self.ipip += other.ipip;
        self.ip6ip6 += other.ip6ip6;
        self.gue += other.gue;
        self.passed += other.passed;
        self.malformed += other.malformed;
    }
}

/// The decap program's settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct DecapConfig {
    /// UDP port of GUE, in network byte order; 0 until configured (no GUE
    /// is decapsulated then).
    pub gue_port: u16,
    /// Always zero.
    pub pad: [u8; 2],
}

/// Key of the local-address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct LocalAddrKey {
    /// The address; IPv4 in the first four bytes, the rest zero.
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

impl LocalAddrKey {
    /// The key of `addr`.
    pub fn new(addr: core::net::IpAddr) -> Self {
        let mut key = Self::default();
        match addr {
            core::net::IpAddr::V4(v4) => {
                key.addr[..4].copy_from_slice(&v4.octets());
                key.family = FAMILY_V4;
            }
            core::net::IpAddr::V6(v6) => {
                key.addr = v6.octets();
                key.family = FAMILY_V6;
            }
        }
        key
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), integer and byte-array fields, no implicit padding.
    unsafe impl aya::Pod for DecapCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DecapConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LocalAddrKey {}
}

const _: () = {
    assert!(core::mem::size_of::<DecapCounters>() == 40);
    assert!(core::mem::size_of::<DecapConfig>() == 4);
    assert!(core::mem::size_of::<LocalAddrKey>() == 20);
};
