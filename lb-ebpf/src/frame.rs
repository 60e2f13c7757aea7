//! Packet memory behind the shared parser's [`Frame`] trait.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::packet::Frame;

/// The bytes between `data` and `data_end` of an XDP context.
pub struct XdpFrame {
    start: usize,
    end: usize,
}

impl XdpFrame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }
}

impl Frame for XdpFrame {
    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        let at = self.start + offset;
        // The verifier needs to see this exact comparison against data_end
        // right before the access.
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: the range was checked against data_end above; T is plain
        // bytes, and packet data has no alignment guarantee.
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }
}
