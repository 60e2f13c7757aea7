//! The data plane handle: loading lb's XDP program, attaching it or
//! adopting the one running ([`attach`]), the pin directory with its marks
//! and locks ([`pins`]), the controller's hold on its pins ([`guard`]),
//! typed handles on the maps ([`maps`]) and what is read from them (flows,
//! counters, sessions, captures).
#![warn(clippy::cast_possible_truncation)] // the values written to maps keep their width

pub mod activity;
mod attach;
pub(crate) mod capture;
pub(crate) mod counters;
mod guard;
pub mod maps;
pub(crate) mod memory;
pub mod nat;
pub mod object;
mod pins;
pub(crate) mod sessions;

use std::{io, path::PathBuf};

use aya::{
    programs::{ProgramError, XdpMode},
    EbpfError,
};
use lb_common::LAYOUT_VERSION;

pub use attach::{load_tail_calls, AttachOptions, Dataplane, ProgramStats, Takeover};
pub use guard::{PinCheck, PinGuard};
pub use pins::{
    capture_lock_path, check_pin_dir, check_private, detach_pins, has_pins, lock_path,
    pinned_ifaces, prepare_pin_dir, take_lock, LINK_PIN, LOCK_DIR,
};

/// Default capacity of the flow table.
pub const DEFAULT_MAX_FLOWS: u32 = 1_000_000;
/// Largest flow table the kernel accepts: a hash table has a power of two
/// of buckets (max_entries rounded up), 16 bytes each, and htab_map_alloc
/// refuses (E2BIG) more buckets than fit in a u32 of bytes (2^28 - 1), so
/// 2^27 entries is the most (measured: 2^27 + 1 is refused at once, 2^27
/// only for want of memory). Kernels built with lock debugging have
/// larger buckets, and take fewer.
pub const MAX_FLOWS: u32 = 1 << 27;
/// Most VIPs `--max-vips` allows.
pub const LIMIT_VIPS: u32 = 65_536;
/// Most workers `--max-workers` allows: their per-CPU counters take 24
/// bytes per CPU each, 400 MB at this many on 64 CPUs.
pub const LIMIT_WORKERS: u32 = 262_144;

/// How the program hooks into the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::Display, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before any socket buffer exists (the fast path).
    Native,
    /// In the kernel's generic receive path; works on every interface.
    Generic,
}

impl AttachMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }
}

/// Why the data plane could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// An interface was named twice.
    #[error("--iface {0} is given twice: name each interface once")]
    DuplicateInterface(String),
    /// More interfaces than the data plane has slots for.
    #[error("{0} interfaces given: lb runs on at most {max}", max = lb_common::balancer::MAX_INTERFACES)]
    TooManyInterfaces(usize),
    /// The interface does not exist in this network namespace.
    #[error("no network interface named `{0}` here; `ip link` lists the interfaces")]
    NoSuchInterface(String),
    /// The process may not load BPF programs or attach XDP.
    #[error("loading an XDP program needs root (CAP_BPF and CAP_NET_ADMIN); run it with sudo")]
    NotPermitted,
    /// The pin directory is not on a BPF filesystem.
    #[error("{0} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` or pass another --pin-dir")]
    NotBpffs(PathBuf),
    /// Another controller manages the pin directory.
    #[error("another `lb run` manages {0}; stop it first, or pass another --pin-dir")]
    PinDirInUse(PathBuf),
    /// The pin directory is marked with another instance's name.
    #[error("the pin directory {dir} belongs to lb instance `{found}`, not `{name}`: pass --name {found} to manage that instance, or another --pin-dir for this one")]
    OtherInstance {
        /// The pin directory.
        dir: PathBuf,
        /// The name it is marked with.
        found: String,
        /// This instance's name.
        name: String,
    },
    /// The pinned maps have another layout than this binary's.
    #[error("the maps pinned under {dir} have layout {found}, this lb has layout {LAYOUT_VERSION}: the flow table can't be carried over, so established connections would be scheduled afresh; the running program keeps forwarding until you run again with --force")]
    LayoutMismatch {
        /// The pin directory.
        dir: PathBuf,
        /// The layout found ("unknown" when unmarked).
        found: String,
    },
    /// The kernel attached XDP without a bpf_link (before Linux 5.9), which
    /// can't be pinned.
    #[error("this kernel attached XDP without a bpf_link, so the program can't outlive lb run; lb needs Linux 5.9 or later")]
    NoBpfLink,
    /// The pinned link could not be taken over.
    #[error("taking over the XDP link pinned at {path} failed; `lb detach --pin-dir {dir}` removes it", dir = path.parent().unwrap_or(path).display())]
    Adopt {
        /// The link's pin.
        path: PathBuf,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The pin directory could not be created or written.
    #[error("cannot use pin directory {path}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The object could not be loaded (maps or BTF rejected).
    #[error("loading lb's XDP object failed")]
    Load(#[source] Box<EbpfError>),
    /// The kernel's verifier rejected the program.
    #[error("the kernel rejected lb's XDP program")]
    Verify(#[source] Box<ProgramError>),
    /// Attaching to the interface failed.
    #[error("attaching to {iface} in {mode} mode failed{hint}")]
    Attach {
        /// The interface.
        iface: String,
        /// The mode that was tried.
        mode: &'static str,
        /// The kernel's answer.
        source: Box<ProgramError>,
        /// What to try next.
        hint: &'static str,
    },
    /// The flow table is larger than the kernel accepts.
    #[error("--max-flows {0} is larger than the kernel accepts for lb's flow table ({MAX_FLOWS}, 2^27); each flow takes about 150 bytes, so that many take about 20 GB")]
    TableTooLarge(u64),
    /// The pin directory (or lock directory) could be tampered with.
    #[error("{path} {problem}: another user could replace or remove lb's pins; remove it (check what it holds first) or pass another --pin-dir")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The pinned link runs on another interface or in another network
    /// namespace.
    #[error("the lb instance pinned under {dir} runs on another interface or in another network namespace (program {program}), not on {iface} here; use another --pin-dir for this interface")]
    ForeignLink {
        /// The pin directory.
        dir: PathBuf,
        /// The interface asked for.
        iface: String,
        /// The pinned link's program.
        program: u32,
    },
    /// What is pinned differs from what was asked.
    #[error("the lb instance pinned under {dir} runs with {what} {pinned}, not {asked}; run again with --force to apply {asked} ({consequence}), or with {what} {pinned} to adopt it as it is")]
    Mismatch {
        /// The pin directory.
        dir: PathBuf,
        /// Which setting.
        what: &'static str,
        /// What is pinned.
        pinned: String,
        /// What was asked.
        asked: String,
        /// What --force would cost.
        consequence: &'static str,
    },
    /// Another XDP program holds the interface.
    #[error("{iface} already runs XDP program {name} (id {id}, {mode} mode), which lb did not pin under {dir}: another lb instance (`lb status` with its --socket, or `lb detach --pin-dir` of its pin directory) or another tool (`bpftool net show dev {iface}`) holds it")]
    Busy {
        /// The interface.
        iface: String,
        /// The program's name.
        name: String,
        /// Its id.
        id: u32,
        /// How it is attached.
        mode: &'static str,
        /// The pin directory lb was given.
        dir: PathBuf,
    },
    /// A map could not be pinned.
    #[error("pinning map {map} under {path} failed")]
    Pin {
        /// The map.
        map: &'static str,
        /// The pin directory.
        path: PathBuf,
        /// What went wrong.
        source: aya::pin::PinError,
    },
}
