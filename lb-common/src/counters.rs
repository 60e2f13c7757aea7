//! Global packet counters, one per-CPU copy summed by user space.

macro_rules! counters {
    (
        $(#[$doc:meta])*
        pub struct $name:ident {
            totals {
                $($(#[$tdoc:meta])* $total:ident,)*
            }
            classes {
                $($(#[$cdoc:meta])* $class:ident,)*
            }
            outcomes {
                $($(#[$odoc:meta])* $outcome:ident,)*
            }
        }
    ) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
        pub struct $name {
            $($(#[$tdoc])* pub $total: u64,)*
            $($(#[$cdoc])* pub $class: u64,)*
            $($(#[$odoc])* pub $outcome: u64,)*
        }

        impl $name {
            /// Field names, in layout order.
            pub const NAMES: &'static [&'static str] =
                &[$(stringify!($total),)* $(stringify!($class),)* $(stringify!($outcome)),*];

            /// The packet classes: every packet is in exactly one.
            pub const CLASSES: &'static [&'static str] = &[$(stringify!($class)),*];

            /// Each class's name and count, in the order of [`Self::CLASSES`].
            pub fn classes(&self) -> [(&'static str, u64); Self::CLASSES.len()] {
                [$((stringify!($class), self.$class)),*]
            }

            /// Field values, in the order of [`Self::NAMES`].
            pub fn values(&self) -> [u64; Self::NAMES.len()] {
                [$(self.$total,)* $(self.$class,)* $(self.$outcome),*]
            }

            /// Builds counters from values in the order of [`Self::NAMES`].
            pub fn from_values(values: [u64; Self::NAMES.len()]) -> Self {
                let [$($total,)* $($class,)* $($outcome),*] = values;
                Self { $($total,)* $($class,)* $($outcome),* }
            }

            /// Adds `other` field by field (summing per-CPU copies).
            pub fn accumulate(&mut self, other: &Self) {
                $(self.$total = self.$total.wrapping_add(other.$total);)*
                $(self.$class = self.$class.wrapping_add(other.$class);)*
                $(self.$outcome = self.$outcome.wrapping_add(other.$outcome);)*
            }

            /// Sum of the class fields, which equals `packets` because every
            /// frame is in exactly one class.
            pub fn class_total(&self) -> u64 {
                0 $(+ self.$class)*
            }
        }
    };
}

counters! {
    /// What the XDP program saw, by packet class. Every packet increments
    /// `packets` and exactly one class field.
    pub struct GlobalCounters {
        totals {
            /// Every frame the program ran on.
            packets,
            /// Bytes of every frame, Ethernet header included.
            bytes,
        }
        classes {
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
        }
        outcomes {
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
            /// Dropped: for an IPIP or GUE worker, with no tunnel program
            /// loaded to encapsulate it.
            drop_no_tunnel,
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
            /// Packets too big for the tunnel to their worker, answered with
            /// "fragmentation needed" (IPv4) or "packet too big" (IPv6).
            too_big_answered,
            /// Packets too big for the tunnel, dropped unanswered: IPv4
            /// without DF or with IP options, or over the answers' rate limit.
            too_big_dropped,
            /// Dropped: for a NAT worker, with no NAT program loaded.
            drop_no_nat,
            /// Replies from NAT workers translated back and sent toward
            /// their clients (XDP_TX).
            nat_replies,
            /// Replies from NAT workers (and ICMP errors from their side)
            /// translated back and handed to the kernel to forward: the
            /// route to the client leaves by another interface, or its
            /// neighbour is not resolved.
            nat_replies_unrouted,
            /// Packets from a NAT worker's address and port that were no
            /// reply lb translates (the host's own connections to it, a
            /// `fullnat` connection already freed): passed as they are.
            nat_reply_misses,
            /// Ports allocated to new `fullnat` connections.
            nat_allocations,
            /// `fullnat` connections whose flow entry was gone (evicted),
            /// found again through their NAT entry.
            nat_recovered,
            /// New `fullnat` connections dropped: every port probed was
            /// taken (or no NAT source of the family).
            nat_ports_exhausted,
            /// New `fullnat` connections dropped: the NAT table is full.
            nat_table_full,
            /// NAT'd packets dropped because their TTL or hop limit ran out.
            nat_ttl_expired,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only u64 fields, no padding.
unsafe impl aya::Pod for GlobalCounters {}
