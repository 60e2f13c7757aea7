//! Packet memory behind the shared parser's [`Frame`] trait.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::packet::{Frame, Header};

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

impl XdpFrame {
    /// A pointer to the `T` at `offset`, or `None` when it does not lie
    /// wholly inside the frame.
    #[inline(always)]
    pub fn ptr_mut<T>(&self, offset: usize) -> Option<*mut T> {
        let at = self.start + offset;
        // The verifier needs to see this comparison against data_end right
        // before the access.
        if at + size_of::<T>() > self.end {
            return None;
        }
        Some(at as *mut T)
    }
}

impl XdpFrame {
    /// Readdresses the frame for XDP_TX: destination MAC `to` (or the old
    /// source, sending it back where it came from), source MAC the old
    /// destination (this interface's). False if the frame is too short.
    #[inline(always)]
    pub fn readdress(&self, to: Option<[u8; 6]>) -> bool {
        let Some(macs) = self.ptr_mut::<[u8; 12]>(0) else {
            return false;
        };
        // SAFETY: ptr_mut checked the 12 bytes against data_end.
        unsafe {
            let dst: [u8; 6] = core::ptr::read_unaligned(macs.cast::<[u8; 6]>());
            let src: [u8; 6] =
                core::ptr::read_unaligned(macs.cast::<u8>().add(6).cast::<[u8; 6]>());
            core::ptr::write_unaligned(macs.cast::<[u8; 6]>(), to.unwrap_or(src));
            core::ptr::write_unaligned(macs.cast::<u8>().add(6).cast::<[u8; 6]>(), dst);
        }
        true
    }
}

impl Frame for XdpFrame {
    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline(always)]
    fn get<T: Header>(&self, offset: usize) -> Option<&T> {
        // SAFETY: ptr_mut checked the range against data_end; Header types
        // have alignment 1 and accept any bit pattern.
        self.ptr_mut::<T>(offset).map(|at| unsafe { &*at })
    }
}
