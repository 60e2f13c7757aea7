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

use super::pins::{self, lock_path, try_lock, HeldLock};
use crate::kernel::{netlink::Netlink, private};

/// What stands for the lock file among the missing pins.
const LOCK_ENTRY: &str = "lock file";

/// References to an instance's links and maps, and a share of its pin
/// directory's lock, held by the controller.
pub struct PinGuard {
    dir: PathBuf,
    name: String,
    /// The links and every map, by the name of their pin.
    objects: Vec<(String, OwnedFd)>,
    /// Each link: its pin name, its interface's index and its id.
    links: Vec<(String, u32, u32)>,
    lock: HeldLock,
    program_id: u32,
}

/// A link of the program's: its pin name and its interface's index.
pub(super) type LinkPin = (String, u32);

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
    /// whose program `program_id` runs through `links`.
    pub(super) fn open(
        dir: &Path,
        name: &str,
        lock: &HeldLock,
        links: &[LinkPin],
        program_id: u32,
    ) -> io::Result<Self> {
        let links = links
            .iter()
            .map(|(pin, if_index)| Ok((pin.clone(), *if_index, link_id(&dir.join(pin))?)))
            .collect::<io::Result<Vec<_>>>()?;
        let objects = links
            .iter()
            .map(|(pin, ..)| pin.clone())
            .chain(map_names::ALL.iter().map(|&m| m.to_owned()))
            .map(|pin| {
                let fd = obj_get(&dir.join(&pin))?;
                Ok((pin, fd))
            })
            .collect::<io::Result<_>>()?;
        Ok(Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
            objects,
            links,
            lock: lock.share()?,
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
        let lost = self
            .links
            .iter()
            .find_map(|&(_, if_index, _)| self.lost_on(netlink, if_index));
        PinCheck {
            restored,
            unpinned,
            lost,
        }
    }

    /// Why interface `if_index` no longer runs lb's program; `None` while
    /// it does.
    fn lost_on(&self, netlink: &mut Netlink, if_index: u32) -> Option<String> {
        let iface = crate::kernel::iface::name_of(if_index)
            .unwrap_or_else(|| format!("interface {if_index}"));
        match netlink.xdp(if_index) {
            Ok(xdp) if xdp.program_id == self.program_id => None,
            Ok(xdp) if xdp.program_id == 0 => Some(format!("no XDP program runs on {iface}")),
            Ok(xdp) => Some(format!(
                "XDP program {} runs on {iface} instead",
                xdp.program_id
            )),
            Err(error) => Some(format!("{iface} can't be read: {error}")),
        }
    }

    /// The interfaces whose names are known now: their indexes and names.
    fn ifaces(&self) -> Vec<(u32, String)> {
        self.links
            .iter()
            .filter_map(|&(_, if_index, _)| {
                Some((if_index, crate::kernel::iface::name_of(if_index)?))
            })
            .collect()
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
        // The interfaces' names as they are now, for the marks `lb
        // capture` names them by.
        let ifaces = self.ifaces();
        let links: Vec<String> = self.links.iter().map(|(pin, ..)| pin.clone()).collect();
        let mut missing = pins::missing(&self.dir, &self.name, &links, &ifaces);
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
        pins::mark_all(&self.dir, &self.name, &ifaces).map_err(|e| format!("{e:#}"))?;
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

    /// Whether the program's links are pinned where the instance keeps
    /// them: if not, the program leaves an interface once no process
    /// holds its link.
    pub fn link_pinned(&self) -> bool {
        self.links
            .iter()
            .all(|(pin, _, id)| link_id(&self.dir.join(pin)).is_ok_and(|found| found == *id))
    }
}

/// The id of the link pinned at `path`.
fn link_id(path: &Path) -> io::Result<u32> {
    let link = FdLink::from(PinnedLink::from_pin(path).map_err(io::Error::other)?);
    Ok(link.info().map_err(io::Error::other)?.id())
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
