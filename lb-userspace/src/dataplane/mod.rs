//! Loading lb's XDP program, attaching it to an interface and pinning its
//! maps.

pub mod activity;
pub(crate) mod capture;
pub(crate) mod counters;
pub mod maps;
pub mod object;
pub(crate) mod sessions;

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, ProgramArray},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::{map_names, program_names, LAYOUT_VERSION};

use crate::{
    desired::state::Limits,
    kernel::iface,
    kernel::netlink::Netlink,
    kernel::private::{self, Exposure},
    kernel::privileges,
};

/// Magic number of a BPF filesystem in `statfs`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where the machine's BPF filesystem is mounted by convention.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Pin name of the bpf_link that holds the program on the interface.
pub const LINK_PIN: &str = "link";
/// Prefix of the directory that marks the layout of the pinned maps.
const LAYOUT_MARK: &str = "layout-";
/// Prefix of the directory that marks the name of the instance pinned
/// there.
const NAME_MARK: &str = "name-";

/// Default capacity of the flow table.
pub const DEFAULT_MAX_FLOWS: u32 = 1_000_000;
/// Largest flow table the kernel accepts: its hash tables round the
/// bucket count up to a power of two and refuse more than 2^31.
pub const MAX_FLOWS: u32 = 1 << 31;
/// Most VIPs `--max-vips` allows.
pub const LIMIT_VIPS: u32 = 65_536;
/// Most workers `--max-workers` allows: their per-CPU counters take 24
/// bytes per CPU each, 400 MB at this many on 64 CPUs.
pub const LIMIT_WORKERS: u32 = 262_144;
/// Where controllers keep the lock files of the pin directories they
/// manage (bpffs holds no plain files, and a lock on the directory itself
/// could be taken by anyone who may open it).
pub const LOCK_DIR: &str = "/run/lb/locks";

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
    #[error("--max-flows {0} is larger than the kernel accepts for a hash table ({MAX_FLOWS}); at 80 bytes or more per flow, a million flows take about 100 MB")]
    TableTooLarge(u32),
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

/// What to attach where.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// The instance's name, marked on the pin directory.
    pub name: String,
    /// Interface name in the current network namespace.
    pub iface: String,
    /// Native or generic XDP.
    pub mode: AttachMode,
    /// Directory on a BPF filesystem for this instance's pins.
    pub pin_dir: PathBuf,
    /// Capacity of the flow table (when it is created).
    pub max_flows: u32,
    /// Size of the per-VIP and per-worker maps (when they are created).
    pub limits: Limits,
    /// Replace pinned maps of another layout (losing the flow table).
    pub force: bool,
}

/// The kernel's statistics of lb's program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Runs of the program.
    pub runs: u64,
    /// Time spent in it.
    pub time: std::time::Duration,
}

/// What `Dataplane::attach` found on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// Nothing: the program was attached afresh.
    Fresh,
    /// A running lb: its maps were reused and the new program swapped in
    /// atomically on its link.
    Adopted {
        /// The program that was running.
        previous_program: u32,
    },
    /// A running lb with maps of another layout or size (`--force`):
    /// fresh maps, the new program swapped in atomically.
    Replaced {
        /// The program that was running.
        previous_program: u32,
    },
    /// A running lb in another XDP mode (`--force`): its maps kept, the
    /// program attached afresh in the mode asked for (forwarding pauses
    /// between the old link's removal and the new attachment).
    Reattached {
        /// The program that was running.
        previous_program: u32,
    },
}

/// lb's program attached to an interface through a pinned bpf_link, with
/// its maps pinned: it keeps forwarding when this process exits, until
/// [`Dataplane::detach`] (or `lb detach`) removes it.
pub struct Dataplane {
    ebpf: Ebpf,
    options: AttachOptions,
    program_id: u32,
    takeover: Takeover,
    link: Option<LinkGuard>,
    /// Held for as long as this controller manages the pin directory.
    _lock: fs::File,
}

/// What [`Dataplane::attach`] will do with what is pinned.
struct Plan {
    /// The program of the pinned link, if there is one.
    previous: Option<u32>,
    /// Unpin the maps first (another layout or size, with `--force`).
    replace_maps: bool,
    /// Attach afresh instead of swapping in (another XDP mode, `--force`).
    reattach: bool,
}

impl Dataplane {
    /// Loads the embedded object with its maps pinned (reusing maps an
    /// earlier lb pinned) and attaches the balancer, or swaps it in on the
    /// link an earlier lb pinned. What is pinned must be what was asked
    /// (interface, mode, table size), or `--force` must say to apply it.
    pub fn attach(options: AttachOptions) -> Result<Self, DataplaneError> {
        let if_index = iface::index_of(&options.iface)
            .ok_or_else(|| DataplaneError::NoSuchInterface(options.iface.clone()))?;
        if !privileges::can_manage_xdp() {
            return Err(DataplaneError::NotPermitted);
        }
        if options.max_flows > MAX_FLOWS {
            return Err(DataplaneError::TableTooLarge(options.max_flows));
        }
        let dir = options.pin_dir.clone();
        prepare_pin_dir(&dir)?;
        let lock = lock_pin_dir(&dir)?;
        check_name(&dir, &options.name)?;
        let plan = plan(&dir, &options, if_index)?;
        if plan.replace_maps {
            remove_pins(&dir);
        }
        if plan.reattach {
            // The old link goes with its last reference: the program stops
            // until the new attachment below.
            let _ = fs::remove_file(dir.join(LINK_PIN));
        }
        let had_maps = map_names::ALL.iter().any(|name| dir.join(name).exists());
        let (ebpf, program_id, takeover) = match load_and_attach(&options, if_index, &plan) {
            Ok(attached) => attached,
            Err(error) => {
                // Leave nothing behind that no program uses.
                if !had_maps {
                    remove_pins(&dir);
                }
                return Err(error);
            }
        };
        mark_layout(&dir)?;
        mark(&dir, &format!("{NAME_MARK}{}", options.name))?;
        let link = LinkGuard::open(&dir.join(LINK_PIN), if_index, program_id);
        if let Err(error) = &link {
            tracing::warn!("holding the link pinned under {}: {error}", dir.display());
        }
        Ok(Self {
            ebpf,
            options,
            program_id,
            takeover,
            link: link.ok(),
            _lock: lock,
        })
    }

    /// What the attach found and did.
    pub fn takeover(&self) -> Takeover {
        self.takeover
    }

    /// Detaches the program and removes every pin: forwarding stops and
    /// the maps (flows, sessions) go.
    pub fn detach(&mut self) {
        // Our own reference would keep the program attached.
        self.link = None;
        detach_pins(&self.options.pin_dir);
    }

    /// How often the program ran and for how long, as the kernel counts
    /// it while `kernel.bpf_stats_enabled` is on (read through the loaded
    /// program, so CAP_BPF is enough, unlike a lookup by id).
    pub fn program_stats(&self) -> Option<ProgramStats> {
        let info = self.ebpf.program(program_names::BALANCER)?.info().ok()?;
        Some(ProgramStats {
            runs: info.run_count(),
            time: info.run_time(),
        })
    }

    /// The kernel's id of the attached program (as `bpftool prog` shows it).
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    /// What this data plane was attached with.
    pub fn options(&self) -> &AttachOptions {
        &self.options
    }

    /// The loaded object, for map access.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The reference to the link, for the controller to watch.
    pub fn take_link(&mut self) -> Option<LinkGuard> {
        self.link.take()
    }
}

/// Decides what to do with what is pinned under `dir`, refusing what does
/// not match the options unless `--force` says to apply them.
fn plan(dir: &Path, options: &AttachOptions, if_index: u32) -> Result<Plan, DataplaneError> {
    let mut replace_maps = check_layout(dir, options.force)?;
    let link_path = dir.join(LINK_PIN);
    if !link_path.exists() {
        return Ok(Plan {
            previous: None,
            replace_maps,
            reattach: false,
        });
    }
    let previous = pinned_program(&link_path)?;
    let running = Netlink::open()
        .and_then(|mut netlink| netlink.xdp(if_index))
        .map_err(|source| DataplaneError::PinDir {
            path: dir.to_owned(),
            source,
        })?;
    if running.program_id != previous {
        return Err(DataplaneError::ForeignLink {
            dir: dir.to_owned(),
            iface: options.iface.clone(),
            program: previous,
        });
    }
    let mismatch = |what, pinned: String, asked: String, consequence| {
        Err(DataplaneError::Mismatch {
            dir: dir.to_owned(),
            what,
            pinned,
            asked,
            consequence,
        })
    };
    let reattach = running.mode != <&str>::from(options.mode);
    if reattach && !options.force {
        return mismatch(
            "--xdp-mode",
            running.mode.to_owned(),
            options.mode.to_string(),
            "forwarding pauses while the program is attached again; flows are kept",
        );
    }
    let sizes = [
        ("--max-flows", map_names::FLOWS, options.max_flows),
        ("--max-vips", map_names::VIPS, options.limits.vips),
        ("--max-workers", map_names::BACKENDS, options.limits.workers),
    ];
    for (what, map, asked) in sizes {
        let pinned = pinned_capacity(dir, map);
        if replace_maps || pinned.is_none_or(|c| c == asked) {
            continue;
        }
        if !options.force {
            return mismatch(
                what,
                pinned.unwrap_or_default().to_string(),
                asked.to_string(),
                "new maps: established connections are scheduled afresh",
            );
        }
        replace_maps = true;
    }
    Ok(Plan {
        previous: Some(previous),
        replace_maps,
        reattach,
    })
}

/// The program of the link pinned at `path`.
fn pinned_program(path: &Path) -> Result<u32, DataplaneError> {
    let adopt_error = |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Adopt {
        path: path.to_owned(),
        source,
    };
    let link: FdLink = PinnedLink::from_pin(path)
        .map_err(|e| adopt_error(Box::new(e)))?
        .into();
    Ok(link
        .info()
        .map_err(|e| adopt_error(Box::new(e)))?
        .program_id())
}

/// The capacity of map `name` pinned under `dir`, if there is one.
fn pinned_capacity(dir: &Path, name: &str) -> Option<u32> {
    let map = MapData::from_pin(dir.join(name)).ok()?;
    Some(map.info().ok()?.max_entries())
}

/// Loads the object and attaches or swaps in its balancer as planned.
fn load_and_attach(
    options: &AttachOptions,
    if_index: u32,
    plan: &Plan,
) -> Result<(Ebpf, u32, Takeover), DataplaneError> {
    let mut ebpf = load(options)?;
    load_tail_calls(&mut ebpf)?;
    let program: &mut Xdp = balancer(&mut ebpf)?;
    program.load().map_err(verify_error)?;
    let program_id = program.info().map_err(verify_error)?.id();
    let link_path = options.pin_dir.join(LINK_PIN);
    let takeover = match plan.previous {
        Some(previous_program) if !plan.reattach => {
            swap_in(program, &link_path)?;
            if plan.replace_maps {
                Takeover::Replaced { previous_program }
            } else {
                Takeover::Adopted { previous_program }
            }
        }
        previous => {
            attach_fresh(program, if_index, options, &link_path)?;
            match previous {
                None => Takeover::Fresh,
                Some(previous_program) if plan.replace_maps => {
                    Takeover::Replaced { previous_program }
                }
                Some(previous_program) => Takeover::Reattached { previous_program },
            }
        }
    };
    Ok((ebpf, program_id, takeover))
}

/// A reference to lb's pinned link, held by the controller: the program
/// stays attached even if someone removes the pin, and [`LinkGuard::check`]
/// notices that (and pins it again) or that the interface lost it.
pub struct LinkGuard {
    link: Option<FdLink>,
    path: PathBuf,
    if_index: u32,
    program_id: u32,
}

/// What [`LinkGuard::check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkCheck {
    /// Pinned, and the interface runs lb's program.
    Attached,
    /// The pin had been removed; it is pinned again.
    Repinned,
    /// The interface no longer runs lb's program: why.
    Lost(String),
}

impl LinkGuard {
    fn open(path: &Path, if_index: u32, program_id: u32) -> Result<Self, LinkError> {
        let link: FdLink = PinnedLink::from_pin(path)?.into();
        Ok(Self {
            link: Some(link),
            path: path.to_owned(),
            if_index,
            program_id,
        })
    }

    /// Checks that the link is pinned and that the interface still runs
    /// lb's program; pins the link again if its pin was removed.
    pub fn check(&mut self, netlink: &mut Netlink) -> LinkCheck {
        let mut found = LinkCheck::Attached;
        if !self.path.exists() {
            if let Some(link) = self.link.take() {
                match link.pin(&self.path) {
                    Ok(pinned) => {
                        self.link = Some(pinned.into());
                        found = LinkCheck::Repinned;
                    }
                    Err(error) => {
                        return LinkCheck::Lost(format!("its pin could not be restored: {error}"))
                    }
                }
            }
        }
        match netlink.xdp(self.if_index) {
            Ok(xdp) if xdp.program_id == self.program_id => found,
            Ok(xdp) if xdp.program_id == 0 => LinkCheck::Lost("no XDP program runs".into()),
            Ok(xdp) => LinkCheck::Lost(format!("XDP program {} runs instead", xdp.program_id)),
            Err(error) => LinkCheck::Lost(format!("the interface can't be read: {error}")),
        }
    }
}

/// Loads the tunnel program (IPIP and GUE) and the capture program and
/// puts them where the balancer's tail calls find them, in place of an
/// adopted one's. A kernel that refuses the capture program (before 5.18,
/// which brought `bpf_xdp_load_bytes`) runs lb without `lb capture`: the
/// balancer's tail call into the empty slot fails and the packet goes on.
pub fn load_tail_calls(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    load_into(ebpf, program_names::TUNNEL, map_names::TUNNEL_PROG)?;
    if let Err(error) = load_into(ebpf, program_names::CAPTURE, map_names::CAPTURE_PROG) {
        tracing::warn!("lb capture is unavailable on this kernel: {error}");
    }
    Ok(())
}

/// Loads program `name` and puts it in slot 0 of program array `array`.
fn load_into(ebpf: &mut Ebpf, name: &str, array: &str) -> Result<(), DataplaneError> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .unwrap_or_else(|| panic!("the embedded object defines program {name}"))
        .try_into()
        .map_err(verify_error)?;
    program.load().map_err(verify_error)?;
    let fd = program
        .fd()
        .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .map_err(verify_error)?;
    let map = ebpf
        .map_mut(array)
        .unwrap_or_else(|| panic!("the embedded object defines program array {array}"));
    let mut array: ProgramArray<&mut MapData> = ProgramArray::try_from(map)
        .map_err(|e| DataplaneError::Load(Box::new(EbpfError::MapError(e))))?;
    array
        .set(0, &fd, 0)
        .map_err(|e| DataplaneError::Load(Box::new(EbpfError::MapError(e))))
}

fn balancer(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(program_names::BALANCER)
        .expect("the embedded object defines the balancer program")
        .try_into()
        .map_err(verify_error)
}

fn verify_error(error: ProgramError) -> DataplaneError {
    DataplaneError::Verify(Box::new(error))
}

/// The object, with every map pinned under the pin directory (an existing
/// pin is reused, so an adopting lb shares the running one's maps).
fn load(options: &AttachOptions) -> Result<Ebpf, DataplaneError> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(map_names::FLOWS, options.max_flows);
    for &name in map_names::PER_VIP {
        loader.map_max_entries(name, options.limits.vips);
    }
    for &name in map_names::PER_WORKER {
        loader.map_max_entries(name, options.limits.workers);
    }
    for &name in map_names::ALL {
        loader.map_pin_path(name, options.pin_dir.join(name));
    }
    loader
        .load(object::LB_XDP)
        .map_err(|e| DataplaneError::Load(Box::new(e)))
}

/// Swaps `program` in on the pinned link atomically; returns the id of the
/// program it replaced.
fn swap_in(program: &mut Xdp, link_path: &Path) -> Result<u32, DataplaneError> {
    let adopt_error = |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Adopt {
        path: link_path.to_owned(),
        source,
    };
    let link: FdLink = PinnedLink::from_pin(link_path)
        .map_err(|e| adopt_error(Box::new(e)))?
        .into();
    let previous = link
        .info()
        .map_err(|e| adopt_error(Box::new(e)))?
        .program_id();
    let link = XdpLink::try_from(link).map_err(|e: LinkError| adopt_error(Box::new(e)))?;
    program
        .attach_to_link(link)
        .map_err(|e| adopt_error(Box::new(e)))?;
    Ok(previous)
}

/// Attaches `program` to the interface and pins the bpf_link that holds it.
fn attach_fresh(
    program: &mut Xdp,
    if_index: u32,
    options: &AttachOptions,
    link_path: &Path,
) -> Result<(), DataplaneError> {
    let attach_error = |source: Box<ProgramError>| DataplaneError::Attach {
        iface: options.iface.clone(),
        mode: options.mode.into(),
        hint: match options.mode {
            AttachMode::Native => " (if the driver has no native XDP, try --xdp-mode generic)",
            AttachMode::Generic => "",
        },
        source,
    };
    let id = program
        .attach_to_if_index(if_index, options.mode.xdp_mode())
        .map_err(|e| busy(if_index, options).unwrap_or_else(|| attach_error(Box::new(e))))?;
    let link = program
        .take_link(id)
        .map_err(|e| attach_error(Box::new(e)))?;
    let link: FdLink = link.try_into().map_err(|_| DataplaneError::NoBpfLink)?;
    link.pin(link_path).map_err(|source| DataplaneError::Pin {
        map: LINK_PIN,
        path: options.pin_dir.clone(),
        source,
    })?;
    Ok(())
}

/// The error for an interface that already runs an XDP program, if it
/// does.
fn busy(if_index: u32, options: &AttachOptions) -> Option<DataplaneError> {
    let running = Netlink::open().ok()?.xdp(if_index).ok()?;
    if running.program_id == 0 {
        return None;
    }
    let name = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == running.program_id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    Some(DataplaneError::Busy {
        iface: options.iface.clone(),
        name,
        id: running.program_id,
        mode: running.mode,
        dir: options.pin_dir.clone(),
    })
}

/// Whether the pinned maps must be replaced: false when there are none or
/// they have this binary's layout.
fn check_layout(dir: &Path, force: bool) -> Result<bool, DataplaneError> {
    let pinned = map_names::ALL.iter().any(|name| dir.join(name).exists());
    if !pinned || dir.join(layout_mark()).exists() {
        return Ok(false);
    }
    if !dir.join(LINK_PIN).exists() {
        // Maps without a link: left by a start that failed before it
        // attached; no program uses them.
        return Ok(true);
    }
    if force {
        return Ok(true);
    }
    let found = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(LAYOUT_MARK).map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into());
    Err(DataplaneError::LayoutMismatch {
        dir: dir.to_owned(),
        found,
    })
}

fn layout_mark() -> String {
    format!("{LAYOUT_MARK}{LAYOUT_VERSION}")
}

/// Marks the pinned maps as this binary's layout (a directory on bpffs,
/// visible with `ls`).
fn mark_layout(dir: &Path) -> Result<(), DataplaneError> {
    mark(dir, &layout_mark())
}

/// Creates the marker directory `mark` in the pin directory.
fn mark(dir: &Path, mark: &str) -> Result<(), DataplaneError> {
    match fs::create_dir(dir.join(mark)) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(DataplaneError::PinDir {
            path: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Refuses a pin directory marked with another instance's name (one
/// marked with none was pinned before instances had names: it is adopted).
fn check_name(dir: &Path, name: &str) -> Result<(), DataplaneError> {
    let other = marks(dir, NAME_MARK).find(|found| found != name);
    match other {
        Some(found) => Err(DataplaneError::OtherInstance {
            dir: dir.to_owned(),
            found,
            name: name.to_owned(),
        }),
        None => Ok(()),
    }
}

/// What follows `prefix` in the names of the pin directory's entries that
/// start with it.
fn marks<'a>(dir: &Path, prefix: &'a str) -> impl Iterator<Item = String> + 'a {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(prefix).map(str::to_owned)
        })
}

/// Removes the map pins and layout marks (not the link).
fn remove_pins(dir: &Path) {
    for name in map_names::ALL {
        let _ = fs::remove_file(dir.join(name));
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(LAYOUT_MARK) {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// Removes every pin of an instance: the link (which detaches the program
/// once no process holds it), the maps, its marks and its lock files.
pub fn detach_pins(dir: &Path) {
    remove_pins(dir);
    let _ = fs::remove_file(dir.join(LINK_PIN));
    for name in marks(dir, NAME_MARK).collect::<Vec<_>>() {
        let _ = fs::remove_dir(dir.join(format!("{NAME_MARK}{name}")));
    }
    let _ = fs::remove_dir(dir);
    let _ = fs::remove_file(lock_path(dir));
    let _ = fs::remove_file(capture_lock_path(dir));
}

/// Whether anything of an instance is pinned under `dir`: a link, or maps
/// a start that failed left.
pub fn has_pins(dir: &Path) -> bool {
    std::iter::once(LINK_PIN)
        .chain(map_names::ALL.iter().copied())
        .any(|name| dir.join(name).exists())
}

/// The lock file of pin directory `dir`: its path, escaped as systemd
/// escapes unit names (`/sys/fs/bpf/lb` → `sys-fs-bpf-lb.lock`).
pub fn lock_path(dir: &Path) -> PathBuf {
    let text = dir.to_string_lossy();
    let escaped: String = text
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            '/' => "-".to_owned(),
            c if c.is_ascii_alphanumeric() || c == '_' || c == '.' => c.to_string(),
            c => format!("\\x{:02x}", u32::from(c) & 0xff),
        })
        .collect();
    Path::new(LOCK_DIR).join(format!("{escaped}.lock"))
}

/// The lock file of `lb capture` on pin directory `dir`, beside the
/// controller's: the ring buffer has one reader.
pub fn capture_lock_path(dir: &Path) -> PathBuf {
    lock_path(dir).with_extension("capture.lock")
}

/// Takes the pin directory's lock: one controller per instance.
fn lock_pin_dir(dir: &Path) -> Result<fs::File, DataplaneError> {
    take_lock(&lock_path(dir))?.ok_or_else(|| DataplaneError::PinDirInUse(dir.to_owned()))
}

/// Whether a controller holds the pin directory's lock.
pub fn pin_dir_locked(dir: &Path) -> bool {
    let Ok(file) = fs::File::open(lock_path(dir)) else {
        return false;
    };
    file.try_lock().is_err()
}

/// Takes lock file `path` (created if needed) in [`LOCK_DIR`]; `None`
/// when someone else holds it. The directory is root's alone, so no
/// other user can hold or replace a lock.
pub fn take_lock(path: &Path) -> Result<Option<fs::File>, DataplaneError> {
    let file = open_lock(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(source)) => Err(DataplaneError::PinDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// As [`take_lock`], waiting for whoever holds it.
fn wait_lock(path: &Path) -> Result<fs::File, DataplaneError> {
    let file = open_lock(path)?;
    file.lock().map_err(|source| DataplaneError::PinDir {
        path: path.to_owned(),
        source,
    })?;
    Ok(file)
}

fn open_lock(path: &Path) -> Result<fs::File, DataplaneError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let lock_dir = Path::new(LOCK_DIR);
    let lock_error = |source| DataplaneError::PinDir {
        path: lock_dir.to_owned(),
        source,
    };
    private::create_dir(lock_dir).map_err(lock_error)?;
    check_private(lock_dir)?;
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(lock_error)
}

/// Refuses a directory that another user owns or may write: they could
/// remove or replace what lb keeps there.
pub fn check_private(dir: &Path) -> Result<(), DataplaneError> {
    private::check(dir).map_err(|exposure| match exposure {
        Exposure::Inspect(source) => DataplaneError::PinDir {
            path: dir.to_owned(),
            source,
        },
        problem => DataplaneError::Unsafe {
            path: dir.to_owned(),
            problem: problem.to_string(),
        },
    })
}

/// Creates the pin directory, readable by root alone (mounting the BPF
/// filesystem if needed), and refuses one another user could tamper with.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    let pin_dir_error = |source| DataplaneError::PinDir {
        path: dir.to_owned(),
        source,
    };
    if dir.starts_with(BPFFS_MOUNT) {
        mount_bpffs()?;
    }
    private::create_dir(dir).map_err(pin_dir_error)?;
    if !on_bpffs(dir).map_err(pin_dir_error)? {
        return Err(DataplaneError::NotBpffs(dir.to_owned()));
    }
    check_private(dir)
}

/// Mounts a BPF filesystem on /sys/fs/bpf unless one is there already, as
/// systemd does on most distributions: root's alone (bpffs's own default is
/// 1777, which lets any user create directories lb would then use).
fn mount_bpffs() -> Result<(), DataplaneError> {
    let mount_point = Path::new(BPFFS_MOUNT);
    let error = |source| DataplaneError::PinDir {
        path: mount_point.to_owned(),
        source,
    };
    if on_bpffs(mount_point).map_err(error)? {
        return Ok(());
    }
    // Two lb starting at once on a machine without one would both mount,
    // the second over the first, hiding the first one's pins: the check
    // and the mount are made under a lock.
    let _lock = wait_lock(&Path::new(LOCK_DIR).join("bpffs.lock"))?;
    if on_bpffs(mount_point).map_err(error)? {
        return Ok(());
    }
    mount_root_only_bpffs().map_err(error)
}

fn mount_root_only_bpffs() -> io::Result<()> {
    let (source, target, fstype, data) = (c"bpf", c"/sys/fs/bpf", c"bpf", c"mode=0700");
    // SAFETY: all arguments are NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn on_bpffs(dir: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is plain data; zeroed is a valid initial value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid out pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}
