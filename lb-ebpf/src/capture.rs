//! `lb capture` in the data plane: every packet's outcome, and while a
//! capture runs, its hand-over to the capture program, which filters it and
//! copies the frame as it leaves (after MAC rewrite or encapsulation) to
//! the capture ring buffer.
//!
//! With no capture running, a packet costs one read of
//! [`CaptureFilter::enabled`]. The capture program runs by tail call with a
//! stack of its own, so the balancer's stack and verifier budget stay as
//! they were.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_ringbuf_output, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use lb_common::{
    balancer::mask_prefix,
    capture::{
        reason, CaptureFilter, CaptureScratch, ACTION_DROP, ACTION_FORWARD, ACTION_PASS,
        ACTION_REPLY, CAPTURE_ON, FILTER_CLIENT, FILTER_VIP, FILTER_WORKER, MAX_SNAPLEN, NO_ID,
    },
};

use crate::maps::{
    LB_BACKENDS, LB_CAPTURE, LB_CAPTURE_PROG, LB_CAPTURE_RING, LB_CAPTURE_SCRATCH, LB_CAPTURE_STATS,
};

/// What the data plane did with a packet, and why.
#[derive(Clone, Copy)]
pub struct Outcome {
    /// The XDP action.
    pub xdp_action: u32,
    /// `ACTION_*`.
    pub action: u8,
    /// A [`reason`] code.
    pub reason: u8,
    /// The VIP's id, or [`NO_ID`].
    pub vip_id: u32,
    /// The worker's id, or [`NO_ID`].
    pub worker_id: u32,
}

impl Outcome {
    /// Passed to the kernel: not for a VIP.
    pub const NOT_VIP: Self = Self {
        xdp_action: xdp_action::XDP_PASS,
        action: ACTION_PASS,
        reason: reason::NOT_VIP,
        vip_id: NO_ID,
        worker_id: NO_ID,
    };

    /// Sent on to worker `worker_id` of VIP `vip_id` (or a worker's reply
    /// to its client) by `xdp_action`: `XDP_TX` back out of the interface
    /// it came in on, `XDP_REDIRECT` to another of lb's (see
    /// [`crate::transmit::depart`]).
    #[inline(always)]
    pub const fn forward(xdp_action: u32, reason: u8, vip_id: u32, worker_id: u32) -> Self {
        Self {
            xdp_action,
            action: ACTION_FORWARD,
            reason,
            vip_id,
            worker_id,
        }
    }

    /// Dropped.
    #[inline(always)]
    pub const fn drop(reason: u8, vip_id: u32, worker_id: u32) -> Self {
        Self {
            xdp_action: xdp_action::XDP_DROP,
            action: ACTION_DROP,
            reason,
            vip_id,
            worker_id,
        }
    }

    /// Answered by lb, back to the sender.
    #[inline(always)]
    pub const fn reply(reason: u8, vip_id: u32) -> Self {
        Self {
            xdp_action: xdp_action::XDP_TX,
            action: ACTION_REPLY,
            reason,
            vip_id,
            worker_id: NO_ID,
        }
    }
}

/// The packet's XDP action, once a running capture has seen it. `client`
/// is the packet's sender and its family (0: not IP, or not known).
#[inline(always)]
pub fn finish(ctx: &XdpContext, outcome: &Outcome, client: &[u8; 16], family: u8) -> u32 {
    if running() {
        hand_over(ctx, outcome, client, family);
    }
    outcome.xdp_action
}

/// Whether a capture runs: the one read a packet pays when none does.
#[cfg(feature = "capture")]
#[inline(always)]
pub fn running() -> bool {
    LB_CAPTURE
        .get(0)
        .is_some_and(|filter| filter.enabled == CAPTURE_ON)
}

/// Built without the capture hook (`--no-default-features`): the
/// benchmark's reference for what the hook costs.
#[cfg(not(feature = "capture"))]
#[inline(always)]
pub fn running() -> bool {
    false
}

/// Leaves the outcome in this CPU's scratch and tail-calls the capture
/// program, which returns the action itself. If the tail call fails (no
/// capture program loaded), the caller returns the action uncaptured.
#[inline(always)]
fn hand_over(ctx: &XdpContext, outcome: &Outcome, client: &[u8; 16], family: u8) {
    let Some(scratch) = LB_CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let scratch = unsafe { &mut *scratch };
    let job = &mut scratch.job;
    copy_address(&mut job.client, client);
    job.family = family;
    job.xdp_action = outcome.xdp_action;
    scratch.record.action = outcome.action;
    scratch.record.reason = outcome.reason;
    scratch.record.vip_id = outcome.vip_id;
    scratch.record.worker_id = outcome.worker_id;
    // SAFETY: the context is the program's own.
    unsafe { LB_CAPTURE_PROG.tail_call(ctx, 0) };
}

/// Copies an address by words.
#[inline(always)]
fn copy_address(to: &mut [u8; 16], from: &[u8; 16]) {
    let [first, second] = words(from);
    let to = to.as_mut_ptr().cast::<u64>();
    // SAFETY: 16 bytes; unaligned writes suit any address.
    unsafe {
        core::ptr::write_unaligned(to, first);
        core::ptr::write_unaligned(to.add(1), second);
    }
}

/// The capture program's work: the packet recorded if the capture's
/// filter takes it, and the action the balancer decided returned.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(scratch) = LB_CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU slot: nothing else touches it during this run.
    let scratch = unsafe { &mut *scratch };
    if let Some(filter) = LB_CAPTURE.get(0) {
        if filter.enabled == CAPTURE_ON && matches(filter, scratch) {
            record(ctx, filter, scratch);
        }
    }
    scratch.job.xdp_action
}

/// Whether the capture's filter takes the packet.
#[inline(always)]
fn matches(filter: &CaptureFilter, scratch: &CaptureScratch) -> bool {
    let record = &scratch.record;
    if filter.actions & (1 << record.action) == 0 {
        return false;
    }
    if filter.flags & FILTER_VIP != 0 && record.vip_id != filter.vip_id {
        return false;
    }
    if filter.flags & FILTER_WORKER != 0 {
        let Some(worker) = LB_BACKENDS.get(record.worker_id) else {
            return false;
        };
        if worker.family != filter.worker_family || !same(&worker.addr, &filter.worker) {
            return false;
        }
    }
    if filter.flags & FILTER_CLIENT != 0 {
        let job = &scratch.job;
        let client = mask_prefix(&job.client, filter.client_prefix);
        if job.family != filter.client_family || !same(&client, &filter.client) {
            return false;
        }
    }
    true
}

/// An address as two words: byte-array `==` and assignment would be
/// calls to an out-of-line memcmp and memmove.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u64; 2] {
    let at = addr.as_ptr().cast::<u64>();
    // SAFETY: 16 bytes; unaligned reads suit any address.
    unsafe {
        [
            core::ptr::read_unaligned(at),
            core::ptr::read_unaligned(at.add(1)),
        ]
    }
}

/// Address equality by words.
#[inline(always)]
fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let ([a0, a1], [b0, b1]) = (words(a), words(b));
    a0 == b0 && a1 == b1
}

/// Copies the frame's first `snaplen` bytes after the record and sends
/// both to the ring buffer; a full ring buffer loses the record (counted),
/// never delays the packet.
#[inline(always)]
fn record(ctx: &XdpContext, filter: &CaptureFilter, scratch: &mut CaptureScratch) {
    let Some(stats) = LB_CAPTURE_STATS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot.
    let stats = unsafe { &mut *stats };
    stats.matched += 1;
    let frame_len = (ctx.data_end() - ctx.data()) as u32;
    let mut cap_len = frame_len.min(filter.snaplen);
    if cap_len > 0 {
        // The verifier needs the length's bounds (1..=MAX_SNAPLEN) in the
        // instructions: a mask, a no-op for the lengths `lb capture` sets.
        cap_len = ((cap_len - 1) & (MAX_SNAPLEN - 1)) + 1;
        let data = scratch.data.as_mut_ptr().cast();
        // SAFETY: 1..=MAX_SNAPLEN bytes into the scratch's data.
        if unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, data, cap_len) } != 0 {
            cap_len = 0;
        }
    }
    let record = &mut scratch.record;
    // SAFETY: helpers without arguments.
    let (ts_ns, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    (record.ts_ns, record.cpu) = (ts_ns, cpu);
    record.ifindex = ctx.ingress_ifindex() as u32;
    record.frame_len = frame_len;
    record.cap_len = cap_len;
    let size = size_of_val(record) as u64 + u64::from(cap_len);
    let ring = core::ptr::from_ref(&LB_CAPTURE_RING).cast_mut().cast();
    let from = core::ptr::from_mut(record).cast();
    // SAFETY: the record and the data behind it lie in the scratch value.
    if unsafe { bpf_ringbuf_output(ring, from, size, 0) } < 0 {
        stats.lost += 1;
    } else {
        stats.captured += 1;
    }
}
