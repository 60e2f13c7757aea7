//! A conformance case: a configuration of the balancer's maps (VIPs with
//! every method and setting, workers in every state, flow entries and
//! sticky sessions old and fresh, stale generations and VIPs) and the
//! frames sent to it, valid and mutated; and how proptest generates them.
//!
//! Every type here prints (`{:?}`) as Rust that builds it again, but for
//! `Vec`s (`[…]`, which [`Case::to_rust`] turns into `vec![…]`), so that a
//! failing case can be pasted into a test.

use proptest::prelude::*;

/// How a VIP's packets reach its workers (the specification's methods).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// L2 direct server return.
    Dsr,
    /// IPIP (or IP6IP6, or across families).
    Ipip,
    /// GUE.
    Gue,
    /// Destination NAT, to the worker's own port.
    Nat,
    /// Source and destination NAT, to the worker's own port.
    Fullnat,
}

/// A VIP and its workers.
#[derive(Clone, Debug)]
pub struct VipCase {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// UDP (else TCP).
    pub udp: bool,
    /// The method.
    pub method: Method,
    /// Least-load (else Maglev).
    pub least_load: bool,
    /// Sticky sessions with this TTL, seconds.
    pub sticky_s: Option<u32>,
    /// Sessions and pins keyed by a /24 (IPv4) or /64 (IPv6), else by the
    /// whole address.
    pub wide_prefix: bool,
    /// The idle timeout, seconds.
    pub idle_s: u32,
    /// The Maglev table's size (a prime).
    pub table_size: u32,
    /// The workers.
    pub workers: Vec<WorkerCase>,
    /// A pin: client number and worker number (modulo the workers).
    pub pin: Option<(u8, u8)>,
}

/// A worker and its state.
#[derive(Clone, Debug)]
pub struct WorkerCase {
    /// An IPv6 worker (tunnels only: a DSR or NAT worker has the VIP's
    /// family).
    pub v6: bool,
    /// `BACKEND_DOWN`, `BACKEND_DRAINING`, `BACKEND_UNREACHABLE` bits.
    pub state: u8,
    /// Its MAC (or next hop's) is known.
    pub mac_known: bool,
    /// The slot's generation.
    pub generation: u32,
    /// Its load figure (`None`: unknown).
    pub load: Option<u32>,
    /// The largest packet its tunnel carries (IPIP and GUE).
    pub mtu: u16,
}

/// How long ago something was last used, next to the thresholds that
/// matter for it (never within the clocks' uncertainty of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Age {
    /// Under the flow entry's touch interval (1 s).
    Recent,
    /// Past the touch interval, far within any timeout.
    Seconds,
    /// Half a second short of the timeout (or TTL).
    JustBefore,
    /// Half a second past it.
    JustAfter,
    /// Days.
    Ancient,
}

/// A flow table entry.
#[derive(Clone, Debug)]
pub struct FlowCase {
    /// The VIP (modulo the VIPs).
    pub vip: u8,
    /// The client (0..6) and its port.
    pub client: u8,
    /// The client's port.
    pub port: u16,
    /// The worker recorded, numbered across all VIPs' workers; past them:
    /// an empty slot, then one past the array.
    pub worker: u8,
    /// Recorded for a VIP that has since been replaced.
    pub stale_vip: bool,
    /// The worker's generation recorded.
    pub generation: u32,
    /// Since it was last seen.
    pub age: Age,
    /// Marked closing.
    pub closing: bool,
}

/// A sticky session.
#[derive(Clone, Debug)]
pub struct SessionCase {
    /// The VIP (modulo the VIPs).
    pub vip: u8,
    /// The client.
    pub client: u8,
    /// The worker, numbered as in [`FlowCase::worker`].
    pub worker: u8,
    /// The worker's generation recorded.
    pub generation: u32,
    /// Since it was last used.
    pub age: Age,
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// TCP with these flags (UDP for a UDP VIP).
    Segment(u8),
    /// To the VIP's address on another port.
    OtherPort(u8),
    /// An echo request to the VIP's address.
    Echo,
    /// A router's ICMP error about the flow (a "too big" or "unreachable")
    /// from the client's side.
    Error,
    /// With IPv4 options or an IPv6 hop-by-hop header.
    Options(u8),
    /// A fragment at this offset (8-byte units).
    Fragment(u16),
    /// With Ethernet padding after the IP packet.
    Padded(u8),
    /// A worker's reply (TCP with these flags, UDP for a UDP VIP): for a
    /// `fullnat` VIP to one of its connections' NAT sources and ports
    /// (one of the NAT table's when it has some), otherwise to the client;
    /// the client's next hop cached as this says.
    Reply(u8, Hop),
}

/// Where a worker's reply finds its client's next hop, written into the
/// connection's NAT entry and the `nat` cache before the frame runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Found just now, out of the interface the frame came in by.
    Fresh,
    /// Found just now, out of an interface lb is not on.
    Elsewhere,
    /// Found seconds ago: lb asks the routing table again (outside the
    /// specification, so the check goes on from what lb did).
    Stale,
}

/// A frame sent to the balancer.
#[derive(Clone, Debug)]
pub struct FrameCase {
    /// The VIP it is about (modulo the VIPs).
    pub vip: u8,
    /// The client.
    pub client: u8,
    /// The client's port.
    pub port: u16,
    /// What it is.
    pub kind: Kind,
    /// Payload length.
    pub payload: u8,
    /// Bytes changed (offset modulo the frame's length, XOR mask), as the
    /// fuzzer mutates frames.
    pub flips: Vec<(u16, u8)>,
    /// Cut to this length (modulo the frame's length plus one).
    pub cut: Option<u16>,
    /// The "too big" answers left, written on every CPU before the frame.
    pub budget: Budget,
}

/// The token bucket of "too big" answers before a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Last refilled long ago: full again.
    Refills,
    /// This many tokens, refilled just now.
    Left(u8),
    /// None left, refilled just now.
    Spent,
}

/// A whole case.
#[derive(Clone, Debug)]
pub struct Case {
    /// The flow hash's seed.
    pub hash_seed: u32,
    /// NAT ports from 20000: four (collisions and exhaustion), or a
    /// thousand.
    pub few_nat_ports: bool,
    /// The VIPs (at least one).
    pub vips: Vec<VipCase>,
    /// Flow table entries.
    pub flows: Vec<FlowCase>,
    /// Sticky sessions.
    pub sessions: Vec<SessionCase>,
    /// The frames, in order.
    pub frames: Vec<FrameCase>,
}

impl Case {
    /// The case as Rust source that builds it.
    pub fn to_rust(&self) -> String {
        format!("{self:#?}").replace('[', "vec![")
    }
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Dsr),
        Just(Method::Ipip),
        Just(Method::Gue),
        Just(Method::Nat),
        Just(Method::Fullnat),
    ]
}

fn age() -> impl Strategy<Value = Age> {
    prop_oneof![
        Just(Age::Recent),
        Just(Age::Seconds),
        Just(Age::JustBefore),
        Just(Age::JustAfter),
        Just(Age::Ancient),
    ]
}

fn worker() -> impl Strategy<Value = WorkerCase> {
    (
        any::<bool>(),
        prop_oneof![8 => Just(0u8), 1 => Just(4), 1 => Just(8), 1 => Just(16), 1 => Just(12)],
        prop::bool::weighted(0.95),
        1u32..=3,
        prop_oneof![Just(None), (0u32..=1_000_000).prop_map(Some)],
        prop_oneof![3 => Just(1500u16), 1 => Just(100), 1 => Just(120), 1 => Just(160)],
    )
        .prop_map(|(v6, state, mac_known, generation, load, mtu)| WorkerCase {
            v6,
            state,
            mac_known,
            generation,
            load,
            mtu,
        })
}

fn vip() -> impl Strategy<Value = VipCase> {
    (
        (any::<bool>(), any::<bool>(), method(), any::<bool>()),
        (
            prop_oneof![Just(None), (2u32..=30).prop_map(Some)],
            any::<bool>(),
            2u32..=30,
            prop_oneof![Just(7u32), Just(13), Just(31)],
        ),
        prop::collection::vec(worker(), 0..=4),
        prop::option::of((0u8..6, any::<u8>())),
    )
        .prop_map(
            |(
                (v6, udp, method, least_load),
                (sticky_s, wide_prefix, idle_s, table_size),
                workers,
                pin,
            )| {
                VipCase {
                    v6,
                    udp,
                    method,
                    least_load,
                    sticky_s,
                    wide_prefix,
                    idle_s,
                    table_size,
                    workers,
                    pin,
                }
            },
        )
}

fn flow() -> impl Strategy<Value = FlowCase> {
    (
        (any::<u8>(), 0u8..6, 40_000u16..40_004, any::<u8>()),
        (
            prop::bool::weighted(0.1),
            1u32..=3,
            age(),
            prop::bool::weighted(0.2),
        ),
    )
        .prop_map(
            |((vip, client, port, worker), (stale_vip, generation, age, closing))| FlowCase {
                vip,
                client,
                port,
                worker,
                stale_vip,
                generation,
                age,
                closing,
            },
        )
}

fn session() -> impl Strategy<Value = SessionCase> {
    (any::<u8>(), 0u8..6, any::<u8>(), 1u32..=3, age()).prop_map(
        |(vip, client, worker, generation, age)| SessionCase {
            vip,
            client,
            worker,
            generation,
            age,
        },
    )
}

fn tcp_flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(0x02u8),
        Just(0x10),
        Just(0x18),
        Just(0x11),
        Just(0x04),
        Just(0x14),
        Just(0x12)
    ]
}

fn budget() -> impl Strategy<Value = Budget> {
    prop_oneof![
        4 => Just(Budget::Refills),
        1 => (1u8..=3).prop_map(Budget::Left),
        1 => Just(Budget::Spent),
    ]
}

fn hop() -> impl Strategy<Value = Hop> {
    prop_oneof![6 => Just(Hop::Fresh), 1 => Just(Hop::Elsewhere), 1 => Just(Hop::Stale)]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        8 => tcp_flags().prop_map(Kind::Segment),
        3 => (tcp_flags(), hop()).prop_map(|(flags, hop)| Kind::Reply(flags, hop)),
        1 => any::<u8>().prop_map(Kind::OtherPort),
        1 => Just(Kind::Echo),
        2 => Just(Kind::Error),
        1 => (1u8..=3).prop_map(Kind::Options),
        1 => prop_oneof![Just(0u16), Just(1), Just(185)].prop_map(Kind::Fragment),
        1 => (1u8..=40).prop_map(Kind::Padded),
    ]
}

fn frame() -> impl Strategy<Value = FrameCase> {
    (
        (any::<u8>(), 0u8..6, 40_000u16..40_004, kind(), 0u8..=64),
        prop_oneof![
            6 => Just(Vec::new()),
            1 => prop::collection::vec((any::<u16>(), 1u8..=255), 1..=3),
        ],
        prop_oneof![9 => Just(None), 1 => any::<u16>().prop_map(Some)],
        budget(),
    )
        .prop_map(
            |((vip, client, port, kind, payload), flips, cut, budget)| FrameCase {
                vip,
                client,
                port,
                kind,
                payload,
                flips,
                cut,
                budget,
            },
        )
}

/// Cases of one to three VIPs, up to eight flow entries and sessions, and
/// up to 32 frames (a case's cost is loading the program: frames are cheap).
pub fn case() -> impl Strategy<Value = Case> {
    (
        (any::<u32>(), any::<bool>()),
        prop::collection::vec(vip(), 1..=3),
        prop::collection::vec(flow(), 0..=8),
        prop::collection::vec(session(), 0..=6),
        prop::collection::vec(frame(), 1..=32),
    )
        .prop_map(
            |((hash_seed, few_nat_ports), vips, flows, sessions, frames)| Case {
                hash_seed,
                few_nat_ports,
                vips,
                flows,
                sessions,
                frames,
            },
        )
}
