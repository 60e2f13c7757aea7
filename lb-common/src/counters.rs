//! Global packet counters, one per-CPU copy summed by user space.

macro_rules! counters {
    ($(#[$doc:meta])* pub struct $name:ident { $($(#[$fdoc:meta])* $field:ident,)* }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: u64,)*
        }

        impl $name {
            /// Field names, in layout order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Field values, in the order of [`Self::NAMES`].
            pub fn values(&self) -> [u64; Self::NAMES.len()] {
                [$(self.$field),*]
            }

            /// Builds counters from values in the order of [`Self::NAMES`].
            pub fn from_values(values: [u64; Self::NAMES.len()]) -> Self {
                let [$($field),*] = values;
                Self { $($field),* }
            }

            /// Adds `other` field by field (summing per-CPU copies).
            pub fn accumulate(&mut self, other: &Self) {
                $(self.$field = self.$field.wrapping_add(other.$field);)*
            }
        }
    };
}

counters! {
    /// What the XDP program saw, by packet class. Every packet increments
    /// `packets` and exactly one class field.
    pub struct GlobalCounters {
        /// Every frame the program ran on.
        packets,
        /// Bytes of every frame, Ethernet header included.
        bytes,
        /// Ethernet frames that are neither IPv4 nor IPv6 (ARP, VLAN-tagged, ...).
        non_ip,
        /// IP frames whose headers are cut short or inconsistent.
        malformed,
        /// IPv4 TCP segments.
        ipv4_tcp,
        /// IPv4 UDP datagrams.
        ipv4_udp,
        /// IPv4 ICMP messages.
        ipv4_icmp,
        /// IPv4 fragments after the first (they carry no ports).
        ipv4_fragment,
        /// IPv4 with any other protocol.
        ipv4_other,
        /// IPv6 TCP segments.
        ipv6_tcp,
        /// IPv6 UDP datagrams.
        ipv6_udp,
        /// ICMPv6 messages (neighbour discovery included).
        ipv6_icmp,
        /// IPv6 with any other next header (extension headers included).
        ipv6_other,
        /// Passed to the kernel: not for a VIP.
        pass_not_vip,
        /// Sent to a worker (XDP_TX).
        forwarded,
        /// Packets of established flows found in the flow table.
        flow_hits,
        /// Dropped: the VIP has no worker to schedule on.
        drop_no_backend,
        /// Dropped: the worker's MAC address is not resolved yet (the
        /// controller resolves it; clients retransmit).
        drop_no_neighbour,
        /// New flows the flow table refused to record.
        flow_insert_failed,
        /// Established flows moved off a worker that went down, became
        /// unreachable or was deleted.
        flow_rescheduled,
        /// Flows idle past their VIP's idle timeout, scheduled afresh.
        flow_expired,
        /// New flows that followed the client's sticky session.
        sticky_hits,
        /// New flows that went to the worker their client is pinned to.
        pin_hits,
        /// ICMP echo requests to a VIP address, answered by lb.
        icmp_echo_replies,
        /// ICMP errors about a balanced flow, sent on to its worker.
        icmp_errors_forwarded,
    }
}

impl GlobalCounters {
    /// Sum of the per-class fields (`non_ip` to `ipv6_other`), which equals
    /// `packets` because every frame is in exactly one class.
    pub fn class_total(&self) -> u64 {
        [
            self.non_ip,
            self.malformed,
            self.ipv4_tcp,
            self.ipv4_udp,
            self.ipv4_icmp,
            self.ipv4_fragment,
            self.ipv4_other,
            self.ipv6_tcp,
            self.ipv6_udp,
            self.ipv6_icmp,
            self.ipv6_other,
        ]
        .iter()
        .sum()
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only u64 fields, no padding.
unsafe impl aya::Pod for GlobalCounters {}
