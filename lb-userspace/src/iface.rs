//! Network interface lookup.

use std::ffi::CString;

/// The index of interface `name` in this network namespace, if it exists.
pub fn index_of(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: c_name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}
