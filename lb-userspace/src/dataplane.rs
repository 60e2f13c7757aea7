//! Loading lb's XDP program, attaching it to an interface and pinning its
//! maps.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::{map_names, program_names, LAYOUT_VERSION};

use crate::{iface, object, privileges};

/// Magic number of a BPF filesystem in `statfs`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where the machine's BPF filesystem is mounted by convention.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Pin name of the bpf_link that holds the program on the interface.
pub const LINK_PIN: &str = "link";
/// Prefix of the directory that marks the layout of the pinned maps.
const LAYOUT_MARK: &str = "layout-";
/// Name of the read-only global a test build sets to load a program that
/// differs from the default one.
const VARIANT_GLOBAL: &str = "LB_VARIANT";

/// Default capacity of the flow table.
pub const DEFAULT_MAX_FLOWS: u32 = 1_000_000;

/// How the program hooks into the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    /// The mode's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
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
    /// Interface name in the current network namespace.
    pub iface: String,
    /// Native or generic XDP.
    pub mode: AttachMode,
    /// Directory on a BPF filesystem for this instance's pins.
    pub pin_dir: PathBuf,
    /// Capacity of the flow table (when it is created).
    pub max_flows: u32,
    /// Replace pinned maps of another layout (losing the flow table).
    pub force: bool,
    /// Value of the program's `LB_VARIANT` global: tests load a program
    /// that differs from the default build by setting it.
    pub variant: u32,
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
    /// A running lb with maps of another layout (`--force`): fresh maps,
    /// the new program swapped in atomically.
    Replaced {
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
    /// Held for as long as this controller manages the pin directory.
    _lock: fs::File,
}

impl Dataplane {
    /// Loads the embedded object with its maps pinned (reusing maps an
    /// earlier lb pinned) and attaches the balancer, or swaps it in on the
    /// link an earlier lb pinned.
    pub fn attach(options: AttachOptions) -> Result<Self, DataplaneError> {
        let if_index = iface::index_of(&options.iface)
            .ok_or_else(|| DataplaneError::NoSuchInterface(options.iface.clone()))?;
        if !privileges::can_manage_xdp() {
            return Err(DataplaneError::NotPermitted);
        }
        let dir = options.pin_dir.clone();
        prepare_pin_dir(&dir)?;
        let lock = lock_pin_dir(&dir)?;
        let replacing = check_layout(&dir, options.force)?;
        if replacing {
            remove_pins(&dir);
        }
        let mut ebpf = load(&options)?;
        let program: &mut Xdp = balancer(&mut ebpf)?;
        program.load().map_err(verify_error)?;
        let program_id = program.info().map_err(verify_error)?.id();
        let link_path = dir.join(LINK_PIN);
        let takeover = if link_path.exists() {
            let previous_program = swap_in(program, &link_path)?;
            if replacing {
                Takeover::Replaced { previous_program }
            } else {
                Takeover::Adopted { previous_program }
            }
        } else {
            attach_fresh(program, if_index, &options, &link_path)?;
            Takeover::Fresh
        };
        mark_layout(&dir)?;
        Ok(Self {
            ebpf,
            options,
            program_id,
            takeover,
            _lock: lock,
        })
    }

    /// What the attach found and did.
    pub fn takeover(&self) -> Takeover {
        self.takeover
    }

    /// Detaches the program and removes every pin: forwarding stops and
    /// the maps (flows, sessions) go.
    pub fn detach(self) {
        detach_pins(&self.options.pin_dir);
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
    for &name in map_names::ALL {
        loader.map_pin_path(name, options.pin_dir.join(name));
    }
    if options.variant != 0 {
        loader.override_global(VARIANT_GLOBAL, &options.variant, true);
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
        mode: options.mode.name(),
        hint: match options.mode {
            AttachMode::Native => " (if the driver has no native XDP, try --xdp-mode generic)",
            AttachMode::Generic => "",
        },
        source,
    };
    let id = program
        .attach_to_if_index(if_index, options.mode.xdp_mode())
        .map_err(|e| attach_error(Box::new(e)))?;
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
    match fs::create_dir(dir.join(layout_mark())) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(DataplaneError::PinDir {
            path: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
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
/// once no process holds it) and the maps.
pub fn detach_pins(dir: &Path) {
    remove_pins(dir);
    let _ = fs::remove_file(dir.join(LINK_PIN));
    let _ = fs::remove_dir(dir);
}

/// Takes the pin directory's lock: one controller per instance.
fn lock_pin_dir(dir: &Path) -> Result<fs::File, DataplaneError> {
    use std::os::fd::AsRawFd as _;
    let file = fs::File::open(dir).map_err(|source| DataplaneError::PinDir {
        path: dir.to_owned(),
        source,
    })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(DataplaneError::PinDirInUse(dir.to_owned()));
    }
    Ok(file)
}

/// Whether a controller holds the pin directory's lock.
pub fn pin_dir_locked(dir: &Path) -> bool {
    lock_pin_dir(dir).is_err()
}

/// Creates the pin directory (mounting the BPF filesystem if needed).
fn prepare_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    let pin_dir_error = |source| DataplaneError::PinDir {
        path: dir.to_owned(),
        source,
    };
    if dir.starts_with(BPFFS_MOUNT) {
        mount_bpffs().map_err(pin_dir_error)?;
    }
    fs::create_dir_all(dir).map_err(pin_dir_error)?;
    if !on_bpffs(dir).map_err(pin_dir_error)? {
        return Err(DataplaneError::NotBpffs(dir.to_owned()));
    }
    Ok(())
}

/// Mounts a BPF filesystem on /sys/fs/bpf unless one is there already, as
/// systemd does on most distributions.
fn mount_bpffs() -> io::Result<()> {
    if on_bpffs(Path::new(BPFFS_MOUNT))? {
        return Ok(());
    }
    let (source, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: all arguments are NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
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
