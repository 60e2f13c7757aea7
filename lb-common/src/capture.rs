//! Packet capture (`lb capture`): what a capture asks the data plane for,
//! and the records the data plane writes to the capture ring buffer.
//!
//! The balancer only reads [`CaptureFilter::enabled`] per packet; while a
//! capture runs, it hands each packet's outcome to the capture program
//! (`lb_capture`, a tail call) in a per-CPU [`CaptureScratch`], and the
//! capture program filters, copies the frame as it leaves and writes a
//! [`CaptureRecord`] followed by the bytes to the ring buffer.

/// Most bytes of a frame a record holds: an XDP frame (without
/// multi-buffer) fits in one page.
pub const MAX_SNAPLEN: u32 = 4096;

/// Size of the capture ring buffer in bytes (a power of two, in pages).
pub const RING_BYTES: u32 = 4 << 20;

/// Value of [`CaptureFilter::enabled`] while a capture runs.
pub const CAPTURE_ON: u32 = 1;

/// [`CaptureRecord::action`]: sent on to a worker (XDP_TX).
pub const ACTION_FORWARD: u8 = 1;
/// [`CaptureRecord::action`]: passed to the kernel (XDP_PASS).
pub const ACTION_PASS: u8 = 2;
/// [`CaptureRecord::action`]: dropped (XDP_DROP).
pub const ACTION_DROP: u8 = 3;
/// [`CaptureRecord::action`]: answered by lb itself, back to the sender
/// (XDP_TX): echo replies, "fragmentation needed" / "packet too big".
pub const ACTION_REPLY: u8 = 4;

/// [`CaptureFilter::flags`]: only packets of VIP `vip_id`.
pub const FILTER_VIP: u8 = 1;
/// [`CaptureFilter::flags`]: only packets to the worker at `worker`.
pub const FILTER_WORKER: u8 = 2;
/// [`CaptureFilter::flags`]: only packets from `client`/`client_prefix`.
pub const FILTER_CLIENT: u8 = 4;

/// "No VIP" or "no worker" in a record.
pub const NO_ID: u32 = u32::MAX;

/// Why the data plane did what it did: which counter moved
/// ([`CaptureRecord::reason`]).
pub mod reason {
    /// Not for a VIP (`pass_not_vip`): not IP, malformed, another
    /// destination, port or protocol, or a later fragment.
    pub const NOT_VIP: u8 = 1;
    /// A packet of an established flow (`flow_hits`).
    pub const FLOW: u8 = 2;
    /// The first packet of a flow, scheduled by the VIP's scheduler (the
    /// VIP's `new_flows`).
    pub const NEW_FLOW: u8 = 3;
    /// The first packet of a flow, sent where the client's sticky session
    /// points (`sticky_hits`).
    pub const STICKY: u8 = 4;
    /// The first packet of a flow, sent to the worker its client is pinned
    /// to (`pin_hits`).
    pub const PINNED: u8 = 5;
    /// An ICMP error about a balanced flow, sent to its worker
    /// (`icmp_errors_forwarded`).
    pub const ICMP_ERROR: u8 = 6;
    /// An echo request to a VIP address, answered (`icmp_echo_replies`).
    pub const ECHO_REPLY: u8 = 7;
    /// Too big for the tunnel, answered (`too_big_answered`).
    pub const TOO_BIG_ANSWERED: u8 = 8;
    /// Too big for the tunnel, dropped (`too_big_dropped`).
    pub const TOO_BIG_DROPPED: u8 = 9;
    /// The VIP has no worker for a new flow (`drop_no_backend`).
    pub const NO_BACKEND: u8 = 10;
    /// The worker's MAC address is not resolved (`drop_no_neighbour`).
    pub const NO_NEIGHBOUR: u8 = 11;
    /// For an IPIP or GUE worker, with no tunnel program (`drop_no_tunnel`).
    pub const NO_TUNNEL: u8 = 12;
    /// The frame could not be rewritten (too short).
    pub const TOO_SHORT: u8 = 13;
    /// A worker's reply, translated back to its client (`nat_replies`).
    pub const NAT_REPLY: u8 = 14;
    /// For a NAT worker, with no NAT program (`drop_no_nat`).
    pub const NO_NAT: u8 = 15;
    /// No NAT port for a new `fullnat` connection (`nat_ports_exhausted`,
    /// `nat_table_full`).
    pub const NAT_EXHAUSTED: u8 = 16;
    /// A NAT'd packet whose TTL ran out (`nat_ttl_expired`).
    pub const TTL_EXPIRED: u8 = 17;

    /// The counter or word that names a reason.
    pub fn name(reason: u8) -> &'static str {
        match reason {
            NOT_VIP => "pass_not_vip",
            FLOW => "flow_hits",
            NEW_FLOW => "new_flow",
            STICKY => "sticky_hits",
            PINNED => "pin_hits",
            ICMP_ERROR => "icmp_errors_forwarded",
            ECHO_REPLY => "icmp_echo_replies",
            TOO_BIG_ANSWERED => "too_big_answered",
            TOO_BIG_DROPPED => "too_big_dropped",
            NO_BACKEND => "drop_no_backend",
            NO_NEIGHBOUR => "drop_no_neighbour",
            NO_TUNNEL => "drop_no_tunnel",
            TOO_SHORT => "too_short",
            NAT_REPLY => "nat_replies",
            NO_NAT => "drop_no_nat",
            NAT_EXHAUSTED => "nat_ports_exhausted",
            TTL_EXPIRED => "nat_ttl_expired",
            _ => "unknown",
        }
    }
}

/// What a running capture asks for (array of one, written by
/// `lb capture`; all zero when none runs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureFilter {
    /// [`CAPTURE_ON`] while a capture runs: the one field the balancer
    /// reads per packet.
    pub enabled: u32,
    /// Bytes of each frame to keep, at most [`MAX_SNAPLEN`].
    pub snaplen: u32,
    /// With [`FILTER_VIP`]: the VIP's id.
    pub vip_id: u32,
    /// Bit `1 << ACTION_*` for each action to capture.
    pub actions: u8,
    /// [`FILTER_VIP`] | [`FILTER_WORKER`] | [`FILTER_CLIENT`].
    pub flags: u8,
    /// With [`FILTER_CLIENT`]: the client prefix length.
    pub client_prefix: u8,
    /// With [`FILTER_CLIENT`]: the client's family (`FAMILY_V4`/`_V6`).
    pub client_family: u8,
    /// With [`FILTER_CLIENT`]: the client address, masked to the prefix.
    pub client: [u8; 16],
    /// With [`FILTER_WORKER`]: the worker's address.
    pub worker: [u8; 16],
    /// With [`FILTER_WORKER`]: the worker's family.
    pub worker_family: u8,
    /// Always zero.
    pub pad: [u8; 7],
}

/// A packet's outcome, as the balancer (or the tunnel program) hands it
/// to the capture program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureJob {
    /// The sender of the packet as it arrived (the client).
    pub client: [u8; 16],
    /// The client's family; 0 when the frame is not IP.
    pub family: u8,
    /// Always zero.
    pub pad: [u8; 3],
    /// The XDP action the capture program returns.
    pub xdp_action: u32,
}

/// Header of a ring buffer record; the frame's first `cap_len` bytes
/// follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureRecord {
    /// When (CLOCK_MONOTONIC, nanoseconds).
    pub ts_ns: u64,
    /// The interface the packet arrived on.
    pub ifindex: u32,
    /// The frame's length as it left lb.
    pub frame_len: u32,
    /// Bytes of it that follow.
    pub cap_len: u32,
    /// The VIP's id, or [`NO_ID`].
    pub vip_id: u32,
    /// The worker's id, or [`NO_ID`].
    pub worker_id: u32,
    /// The CPU that handled the packet.
    pub cpu: u32,
    /// `ACTION_*`.
    pub action: u8,
    /// A [`reason`] code.
    pub reason: u8,
    /// Always zero.
    pub pad: [u8; 6],
}

/// The capture program's per-CPU workspace: the job, then the record and
/// the frame's bytes, contiguous so that one copy sends both.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CaptureScratch {
    /// What the balancer handed over.
    pub job: CaptureJob,
    /// The record being built.
    pub record: CaptureRecord,
    /// The frame's bytes.
    pub data: [u8; MAX_SNAPLEN as usize],
}

/// What captures cost the data plane, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct CaptureCounters {
    /// Packets that matched a running capture's filter.
    pub matched: u64,
    /// Of those, records written to the ring buffer.
    pub captured: u64,
    /// Of those, not captured: the ring buffer was full (the capture
    /// reader fell behind). The packets themselves went on undelayed.
    pub lost: u64,
}

impl CaptureCounters {
    /// Adds `other` field by field (summing per-CPU copies).
    pub fn accumulate(&mut self, other: &Self) {
        self.matched = self.matched.wrapping_add(other.matched);
        self.captured = self.captured.wrapping_add(other.captured);
        self.lost = self.lost.wrapping_add(other.lost);
    }

    /// What moved since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            matched: self.matched.wrapping_sub(earlier.matched),
            captured: self.captured.wrapping_sub(earlier.captured),
            lost: self.lost.wrapping_sub(earlier.lost),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C) of integers and byte arrays without implicit padding
    // (the size assertions below).
    unsafe impl aya::Pod for CaptureFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CaptureCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CaptureRecord {}
}

const _: () = {
    assert!(core::mem::size_of::<CaptureFilter>() == 56);
    assert!(core::mem::size_of::<CaptureJob>() == 24);
    assert!(core::mem::size_of::<CaptureRecord>() == 40);
    assert!(core::mem::offset_of!(CaptureScratch, record) == 24);
    assert!(core::mem::offset_of!(CaptureScratch, data) == 64);
    assert!(core::mem::size_of::<CaptureCounters>() == 24);
    assert!(RING_BYTES.is_power_of_two());
};
