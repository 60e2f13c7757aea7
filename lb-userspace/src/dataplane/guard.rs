//! The controller's hold on its instance's pins. It keeps a reference to
//! the link and to every map, so the program goes on running when someone
//! removes the pins (by hand, or an `lb detach` that got past a lock file
//! someone removed), and it pins them again, with the marks and the lock
//! file, where that is safe: a pin directory no other user could swap.
//! Where it is not, it pins nothing and says why; the program then runs
//! for as long as the controller does.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};
use lb_common::map_names;

use super::pins::{self, lock_path, try_lock, HeldLock, LINK_PIN};
use crate::kernel::{netlink::Netlink, private};

/// What stands for the lock file among the missing pins.
const LOCK_ENTRY: &str = "lock file";

/// References to an instance's link and maps, and a share of its pin
/// directory's lock, held by the controller.
pub struct PinGuard {
    dir: PathBuf,
    name: String,
    /// The link and every map, by the name of their pin.
    objects: Vec<(&'static str, OwnedFd)>,
    link_id: u32,
    lock: HeldLock,
    if_index: u32,
    program_id: u32,
}

/// What [`PinGuard::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinCheck {
    /// Pins, marks or the lock file that had been removed and were made
    /// again.
    pub restored: Vec<String>,
    /// Why the pins are not whole, or not in a directory only lb may
    /// write, and were not pinned again; `None` while they are.
    pub unpinned: Option<String>,
    /// Why the interface no longer runs lb's program; `None` while it
    /// does.
    pub lost: Option<String>,
}

impl PinGuard {
    /// Takes references to what is pinned under `dir` for instance `name`,
    /// whose program `program_id` runs on interface `if_index`.
    pub(super) fn open(
        dir: &Path,
        name: &str,
        lock: &HeldLock,
        if_index: u32,
        program_id: u32,
    ) -> io::Result<Self> {
        let link_id =
            FdLink::from(PinnedLink::from_pin(dir.join(LINK_PIN)).map_err(io::Error::other)?)
                .info()
                .map_err(io::Error::other)?
                .id();
        let objects = std::iter::once(LINK_PIN)
            .chain(map_names::ALL.iter().copied())
            .map(|pin| Ok((pin, obj_get(&dir.join(pin))?)))
            .collect::<io::Result<_>>()?;
        Ok(Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
            objects,
            link_id,
            lock: lock.share()?,
            if_index,
            program_id,
        })
    }

    /// Checks that every pin is in place, in a directory only lb may write
    /// (pinning again what was removed), and that the interface still
    /// runs lb's program.
    pub fn check(&mut self, netlink: &mut Netlink) -> PinCheck {
        let (restored, unpinned) = match self.restore() {
            Ok(restored) => (restored, None),
            Err(why) => (Vec::new(), Some(why)),
        };
        let lost = match netlink.xdp(self.if_index) {
            Ok(xdp) if xdp.program_id == self.program_id => None,
            Ok(xdp) if xdp.program_id == 0 => Some("no XDP program runs".into()),
            Ok(xdp) => Some(format!("XDP program {} runs instead", xdp.program_id)),
            Err(error) => Some(format!("the interface can't be read: {error}")),
        };
        PinCheck {
            restored,
            unpinned,
            lost,
        }
    }

    /// Pins again what is missing; what that was, or why nothing was
    /// pinned.
    fn restore(&mut self) -> Result<Vec<String>, String> {
        // A directory another user could swap is no place for pins: what
        // lb pinned there could be theirs tomorrow, and lb's readers
        // refuse it.
        let unsafe_dir = |(path, exposure): (PathBuf, private::Exposure)| {
            format!("{} {exposure}", path.display())
        };
        private::check_tree(&self.dir).map_err(unsafe_dir)?;
        // The interface's name as it is now, for the mark `lb capture`
        // names it by.
        let iface = crate::kernel::iface::name_of(self.if_index);
        let mut missing = pins::missing(&self.dir, &self.name, iface.as_deref());
        if !self.lock.in_place() {
            missing.push(LOCK_ENTRY.into());
        }
        if missing.is_empty() {
            return Ok(missing);
        }
        private::create_dir(&self.dir)
            .map_err(|e| format!("{} can't be made again: {e}", self.dir.display()))?;
        private::check_tree(&self.dir).map_err(unsafe_dir)?;
        for (pin, fd) in &self.objects {
            if missing.iter().any(|m| m == pin) {
                obj_pin(fd, &self.dir.join(pin))
                    .map_err(|e| format!("pinning {pin} again failed: {e}"))?;
            }
        }
        pins::mark_all(&self.dir, &self.name, iface.as_deref()).map_err(|e| format!("{e:#}"))?;
        if missing.iter().any(|m| m == LOCK_ENTRY) {
            let path = lock_path(&self.dir);
            self.lock = try_lock(&path)
                .map_err(|e| format!("{e:#}"))?
                .ok_or_else(|| {
                    format!(
                        "its lock file {} was removed, and another process holds the new one",
                        path.display()
                    )
                })?;
        }
        Ok(missing)
    }

    /// Whether the program's link is pinned where the instance keeps it:
    /// if not, the program leaves the interface once no process holds
    /// the link.
    pub fn link_pinned(&self) -> bool {
        PinnedLink::from_pin(self.dir.join(LINK_PIN))
            .and_then(|pinned| FdLink::from(pinned).info())
            .is_ok_and(|info| info.id() == self.link_id)
    }
}

/// A new reference to the BPF object pinned at `path` (BPF_OBJ_GET).
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use aya_obj::generated::{bpf_attr, bpf_cmd};
    let path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: bpf_attr is plain data, all zeroes is its empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: this member is the one BPF_OBJ_GET reads.
    let object = unsafe { &mut attr.__bindgen_anon_4 };
    object.pathname = path.as_ptr() as u64;
    // SAFETY: the attribute points at `path`, which outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET as libc::c_long,
            &raw mut attr,
            size_of::<bpf_attr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins the BPF object `fd` refers to at `path` (BPF_OBJ_PIN). Unlike
/// aya's `FdLink::pin`, it leaves the reference with the caller whatever
/// happens: a failed pin must not drop the link, which would take the
/// program off the interface.
fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    use aya_obj::generated::{bpf_attr, bpf_cmd};
    let path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: bpf_attr is plain data, all zeroes is its empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: this member is the one BPF_OBJ_PIN reads.
    let object = unsafe { &mut attr.__bindgen_anon_4 };
    object.pathname = path.as_ptr() as u64;
    object.bpf_fd = fd.as_raw_fd() as u32;
    // SAFETY: the attribute points at `path`, which outlives the call, and
    // names a descriptor this process holds.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_PIN as libc::c_long,
            &raw mut attr,
            size_of::<bpf_attr>(),
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
