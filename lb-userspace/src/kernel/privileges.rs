//! Checks that the process may load and attach XDP programs, so that a
//! missing privilege is one clear line instead of an EPERM from deep inside
//! the loader.

use std::fs;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process.
fn effective_capabilities() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Whether this process may create BPF maps and programs and attach XDP
/// (CAP_NET_ADMIN plus CAP_BPF, or CAP_SYS_ADMIN on its own for BPF).
pub fn can_manage_xdp() -> bool {
    let caps = effective_capabilities();
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}
