//! Loading lb's XDP program, attaching it to an interface and pinning its
//! maps.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::{map_names, program_names};

use crate::{iface, object, privileges};

/// Magic number of a BPF filesystem in `statfs`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where the machine's BPF filesystem is mounted by convention.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

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
    /// Another instance already pinned its maps in the pin directory.
    #[error("{0} already holds lb's maps: another `lb run` uses it; stop that one or pass another --pin-dir (if none is running, remove the stale pins with `rm -r {0}`)")]
    PinDirInUse(PathBuf),
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
    /// Capacity of the flow table.
    pub max_flows: u32,
}

/// lb's program attached to an interface, with its maps pinned. Dropping it
/// detaches the program and removes the pins.
pub struct Dataplane {
    ebpf: Ebpf,
    options: AttachOptions,
    program_id: u32,
}

impl Dataplane {
    /// Loads the embedded object, pins its maps and attaches the balancer.
    pub fn attach(options: AttachOptions) -> Result<Self, DataplaneError> {
        let if_index = iface::index_of(&options.iface)
            .ok_or_else(|| DataplaneError::NoSuchInterface(options.iface.clone()))?;
        if !privileges::can_manage_xdp() {
            return Err(DataplaneError::NotPermitted);
        }
        prepare_pin_dir(&options.pin_dir)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::FLOWS, options.max_flows)
            .load(object::LB_XDP)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let program: &mut Xdp = balancer(&mut ebpf)?;
        program.load().map_err(verify_error)?;
        let program_id = program.info().map_err(verify_error)?.id();
        program
            .attach_to_if_index(if_index, options.mode.xdp_mode())
            .map_err(|source| DataplaneError::Attach {
                iface: options.iface.clone(),
                mode: options.mode.name(),
                hint: match options.mode {
                    AttachMode::Native => {
                        " (if the driver has no native XDP, try --xdp-mode generic)"
                    }
                    AttachMode::Generic => "",
                },
                source: Box::new(source),
            })?;
        let dataplane = Self {
            ebpf,
            options,
            program_id,
        };
        dataplane.pin_maps()?;
        Ok(dataplane)
    }

    fn pin_maps(&self) -> Result<(), DataplaneError> {
        for &name in map_names::ALL {
            let map = self
                .ebpf
                .map(name)
                .expect("the object defines every pinned map");
            map.pin(self.options.pin_dir.join(name))
                .map_err(|source| DataplaneError::Pin {
                    map: name,
                    path: self.options.pin_dir.clone(),
                    source,
                })?;
        }
        Ok(())
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

impl Drop for Dataplane {
    fn drop(&mut self) {
        for name in map_names::ALL {
            let _ = fs::remove_file(self.options.pin_dir.join(name));
        }
        let _ = fs::remove_dir(&self.options.pin_dir);
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

/// Creates the pin directory and makes sure nothing else is pinned there.
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
    if map_names::ALL.iter().any(|name| dir.join(name).exists()) {
        return Err(DataplaneError::PinDirInUse(dir.to_owned()));
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
