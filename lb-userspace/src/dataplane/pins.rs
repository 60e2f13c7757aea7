//! An instance's pin directory: made root's alone (mounting the machine's
//! bpffs if nobody has), on a path no other user could swap (every
//! directory above it checked), marked with the layout and the instance's
//! name, locked by the controller that manages it, and emptied by `lb
//! detach`.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use lb_common::{map_names, LAYOUT_VERSION};

use super::DataplaneError;
use crate::kernel::{
    bpffs,
    private::{self, Exposure},
};

/// Pin name of the bpf_link that holds the program on the first
/// interface (`lb run --iface`, the first given).
pub const LINK_PIN: &str = "link";
/// Prefix of the pin names of the links on the other interfaces, which
/// the interface's name follows (`link-eth1`).
const OTHER_LINK: &str = "link-";
/// Prefix of the directory that marks the layout of the pinned maps.
const LAYOUT_MARK: &str = "layout-";
/// Prefix of the directory that marks the name of the instance pinned
/// there.
const NAME_MARK: &str = "name-";
/// Prefix of the directories that name the interfaces the program is
/// attached to, `iface-INDEX-NAME`: an index means another interface, or
/// none, to a reader in another network namespace (`lb capture` run from
/// the host). lb before several interfaces marked `iface-NAME`.
const IFACE_MARK: &str = "iface-";

/// The pin name of the link on the `n`th interface (from 0), `iface`.
pub fn link_pin(n: usize, iface: &str) -> String {
    if n == 0 {
        LINK_PIN.to_owned()
    } else {
        format!("{OTHER_LINK}{iface}")
    }
}

/// The pin names of the links on interfaces other than the first pinned
/// under `dir`.
pub(super) fn other_links(dir: &Path) -> Vec<String> {
    marks(dir, OTHER_LINK)
        .map(|iface| format!("{OTHER_LINK}{iface}"))
        .collect()
}

/// Where controllers keep the lock files of the pin directories they
/// manage (bpffs holds no plain files, and a lock on the directory itself
/// could be taken by anyone who may open it).
pub const LOCK_DIR: &str = "/run/lb/locks";

/// Maps whose entries name a worker's slot with its generation (flows,
/// sessions, NAT connections).
const FOLLOWS_GENERATIONS: &[&str] = &[map_names::FLOWS, map_names::STICKY, map_names::NAT];

/// Whether the pinned maps must be replaced: false when there are none or
/// they have this binary's layout, true when entries that follow slot
/// generations are pinned without the backend array.
pub(super) fn check_layout(dir: &Path, force: bool) -> Result<bool, DataplaneError> {
    let pinned = map_names::ALL.iter().any(|name| dir.join(name).exists());
    if !pinned {
        return Ok(false);
    }
    if orphaned_generations(dir) {
        // A fresh backend array starts every slot at generation 1 again,
        // so a kept flow could match a slot's next worker.
        tracing::warn!(
            "{} has flows but no worker slots: new maps, connections are scheduled afresh",
            dir.display()
        );
        return Ok(true);
    }
    if dir.join(layout_mark()).exists() {
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

/// Whether maps that name slots by generation are pinned without the
/// backend array that gave them out (its pin removed by hand while no
/// controller ran).
fn orphaned_generations(dir: &Path) -> bool {
    !dir.join(map_names::BACKENDS).exists()
        && FOLLOWS_GENERATIONS
            .iter()
            .any(|name| dir.join(name).exists())
}

fn layout_mark() -> String {
    format!("{LAYOUT_MARK}{LAYOUT_VERSION}")
}

/// Marks the pinned maps as this binary's layout (a directory on bpffs,
/// visible with `ls`).
pub(super) fn mark_layout(dir: &Path) -> Result<(), DataplaneError> {
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
/// Marks the pin directory with the instance's name.
pub(super) fn mark_name(dir: &Path, name: &str) -> Result<(), DataplaneError> {
    mark(dir, &format!("{NAME_MARK}{name}"))
}

/// Marks the pin directory with the interfaces' indexes and names, in
/// place of any other's (the program moved with `--force`, an interface
/// was renamed, added or left).
pub(super) fn mark_ifaces(dir: &Path, ifaces: &[(u32, String)]) -> Result<(), DataplaneError> {
    let wanted: Vec<String> = ifaces
        .iter()
        .map(|(index, name)| format!("{index}-{name}"))
        .collect();
    for old in marks(dir, IFACE_MARK).filter(|found| !wanted.contains(found)) {
        let _ = fs::remove_dir(dir.join(format!("{IFACE_MARK}{old}")));
    }
    wanted
        .iter()
        .try_for_each(|found| mark(dir, &format!("{IFACE_MARK}{found}")))
}

/// The interfaces the program pinned under `dir` is attached to, as the
/// controller that attached or adopted it named them: index (unknown in
/// a mark from an lb before several interfaces) and name.
pub fn pinned_ifaces(dir: &Path) -> Vec<(Option<u32>, String)> {
    marks(dir, IFACE_MARK)
        .map(|found| {
            let parsed = found
                .split_once('-')
                .and_then(|(index, name)| Some((index.parse().ok()?, name.to_owned())));
            match parsed {
                Some((index, name)) => (Some(index), name),
                None => (None, found),
            }
        })
        .collect()
}

pub(super) fn check_name(dir: &Path, name: &str) -> Result<(), DataplaneError> {
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
pub(super) fn remove_pins(dir: &Path) {
    for name in map_names::ALL {
        let _ = fs::remove_file(dir.join(name));
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(LAYOUT_MARK) {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// Removes every pin of an instance: the links (which detach the program
/// once no process holds it), the maps, its marks and its lock files.
/// The caller holds the pin directory's lock (a lock file is removed only
/// by its holder, see [`take_lock`]).
pub fn detach_pins(dir: &Path) {
    unpin_all(dir);
    let _ = fs::remove_dir(dir);
    let _ = fs::remove_file(lock_path(dir));
    let _ = fs::remove_file(capture_lock_path(dir));
}

/// Removes the link, the maps and the marks under `dir`, leaving the
/// directory and the lock files.
pub(super) fn unpin_all(dir: &Path) {
    remove_pins(dir);
    let _ = fs::remove_file(dir.join(LINK_PIN));
    for link in other_links(dir) {
        let _ = fs::remove_file(dir.join(link));
    }
    for prefix in [NAME_MARK, IFACE_MARK] {
        for name in marks(dir, prefix).collect::<Vec<_>>() {
            let _ = fs::remove_dir(dir.join(format!("{prefix}{name}")));
        }
    }
}

/// The names of the pins and marks an instance keeps under its pin
/// directory that are missing: what a controller pins again. `links` are
/// its links' pin names, `ifaces` its interfaces (index and name) whose
/// names are known.
pub(super) fn missing(
    dir: &Path,
    name: &str,
    links: &[String],
    ifaces: &[(u32, String)],
) -> Vec<String> {
    links
        .iter()
        .cloned()
        .chain(map_names::ALL.iter().map(|&m| m.to_owned()))
        .chain([layout_mark(), format!("{NAME_MARK}{name}")])
        .chain(
            ifaces
                .iter()
                .map(|(index, iface)| format!("{IFACE_MARK}{index}-{iface}")),
        )
        .filter(|entry| fs::symlink_metadata(dir.join(entry)).is_err())
        .collect()
}

/// Makes the marks of an instance named `name` on `ifaces` (those whose
/// names are known) that are missing.
pub(super) fn mark_all(
    dir: &Path,
    name: &str,
    ifaces: &[(u32, String)],
) -> Result<(), DataplaneError> {
    mark_layout(dir)?;
    mark_name(dir, name)?;
    mark_ifaces(dir, ifaces)
}

/// Whether anything of an instance is pinned under `dir`: a link, or maps
/// a start that failed left.
pub fn has_pins(dir: &Path) -> bool {
    std::iter::once(LINK_PIN)
        .chain(map_names::ALL.iter().copied())
        .any(|name| dir.join(name).exists())
        || !other_links(dir).is_empty()
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

/// A lock file held, and whether this process made it: a start that is
/// refused removes the lock file it made, while it still holds it.
#[derive(Debug)]
pub struct HeldLock {
    file: fs::File,
    path: PathBuf,
    made: bool,
}

impl HeldLock {
    /// Releases the lock, removing the file first if this process made it.
    pub fn discard(self) {
        if self.made {
            let _ = fs::remove_file(&self.path);
        }
    }

    /// Whether the file at its path is still the one locked: someone may
    /// have removed it (by hand, or a cleanup of /run).
    pub(super) fn in_place(&self) -> bool {
        private::same_file(&self.file, &self.path)
    }

    /// Another handle on the lock (flock follows the open file, so either
    /// keeps it).
    pub(super) fn share(&self) -> io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            path: self.path.clone(),
            made: false,
        })
    }
}

/// Takes the pin directory's lock: one controller per instance.
pub(super) fn lock_pin_dir(dir: &Path) -> Result<HeldLock, DataplaneError> {
    try_lock(&lock_path(dir))?.ok_or_else(|| DataplaneError::PinDirInUse(dir.to_owned()))
}

/// Takes lock file `path` (created if needed) in [`LOCK_DIR`]; `None`
/// when someone else holds it. The directory is root's alone, so no
/// other user can hold or replace a lock.
pub fn take_lock(path: &Path) -> Result<Option<fs::File>, DataplaneError> {
    Ok(try_lock(path)?.map(|held| held.file))
}

/// As [`take_lock`], saying whether this process made the file. A lock
/// file is removed only by its holder; one removed (or replaced) between
/// its opening and its locking here is no lock, so it is opened again.
pub(super) fn try_lock(path: &Path) -> Result<Option<HeldLock>, DataplaneError> {
    loop {
        let (file, made) = open_lock(path)?;
        match file.try_lock() {
            Ok(()) if private::same_file(&file, path) => {
                return Ok(Some(HeldLock {
                    file,
                    path: path.to_owned(),
                    made,
                }))
            }
            Ok(()) => continue,
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(source)) => {
                return Err(DataplaneError::PinDir {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

/// As [`take_lock`], waiting for whoever holds it.
fn wait_lock(path: &Path) -> Result<fs::File, DataplaneError> {
    let (file, _) = open_lock(path)?;
    file.lock().map_err(|source| DataplaneError::PinDir {
        path: path.to_owned(),
        source,
    })?;
    Ok(file)
}

/// Opens lock file `path`, creating it (and [`LOCK_DIR`]) if needed;
/// whether it was made here.
fn open_lock(path: &Path) -> Result<(fs::File, bool), DataplaneError> {
    let lock_dir = Path::new(LOCK_DIR);
    let lock_error = |source| DataplaneError::PinDir {
        path: lock_dir.to_owned(),
        source,
    };
    private::create_dir(lock_dir).map_err(lock_error)?;
    check_private(lock_dir)?;
    private::open_lock_file(path).map_err(lock_error)
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

/// Refuses a pin directory that another user could tamper with, or swap
/// for their own through a directory above it (see
/// [`private::check_tree`]); one that does not exist yet passes as far as
/// it goes. `lb run` and `lb decap` check before they pin, the commands
/// that read pins before they trust what they find: another user's
/// directory could hold links to another instance's maps.
pub fn check_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    private::check_tree(dir).map_err(|(path, exposure)| match exposure {
        Exposure::Inspect(source) => DataplaneError::PinDir { path, source },
        problem => DataplaneError::Unsafe {
            path,
            problem: problem.to_string(),
        },
    })
}

/// Creates the pin directory, readable by root alone (mounting the BPF
/// filesystem if needed), and refuses one another user could tamper with,
/// before creating anything and again once it exists. Returns the
/// directories it made, for a start that fails to remove.
pub fn prepare_pin_dir(dir: &Path) -> Result<Vec<PathBuf>, DataplaneError> {
    let pin_dir_error = |source| DataplaneError::PinDir {
        path: dir.to_owned(),
        source,
    };
    if dir.starts_with(bpffs::MOUNT_POINT) {
        mount_bpffs()?;
    }
    check_pin_dir(dir)?;
    let made = private::missing_dirs(dir);
    // The pin directory itself must be lb's own user's, not only root's:
    // lb keeps it (and may run as a user of its own).
    let prepared = private::create_dir(dir)
        .map_err(pin_dir_error)
        .and_then(|()| match bpffs::contains(dir) {
            Ok(true) => check_pin_dir(dir).and_then(|()| check_private(dir)),
            Ok(false) => Err(DataplaneError::NotBpffs(dir.to_owned())),
            Err(source) => Err(pin_dir_error(source)),
        });
    match prepared {
        Ok(()) => Ok(made),
        Err(error) => {
            private::remove_made(&made);
            Err(error)
        }
    }
}

/// Mounts a BPF filesystem on /sys/fs/bpf unless one is there already, as
/// systemd does on most distributions: root's alone (bpffs's own default is
/// 1777, which lets any user create directories lb would then use).
fn mount_bpffs() -> Result<(), DataplaneError> {
    let mount_point = Path::new(bpffs::MOUNT_POINT);
    let error = |source| DataplaneError::PinDir {
        path: mount_point.to_owned(),
        source,
    };
    if bpffs::contains(mount_point).map_err(error)? {
        return Ok(());
    }
    // Two lb starting at once on a machine without one would both mount,
    // the second over the first, hiding the first one's pins: the check
    // and the mount are made under a lock.
    let _lock = wait_lock(&Path::new(LOCK_DIR).join("bpffs.lock"))?;
    if bpffs::contains(mount_point).map_err(error)? {
        return Ok(());
    }
    bpffs::mount_root_only().map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory standing for a pin directory (only names are
    /// looked at), removed when dropped.
    struct PinDir(PathBuf);

    impl PinDir {
        fn new(test: &str, pinned: &[&str], marked: bool) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-pins-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir(&dir).expect("a scratch directory");
            for name in pinned {
                fs::write(dir.join(name), b"").expect("a file");
            }
            if marked {
                mark_layout(&dir).expect("the mark");
            }
            Self(dir)
        }
    }

    impl Drop for PinDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn maps_of_this_layout_are_adopted() {
        let dir = PinDir::new("adopted", map_names::ALL, true);
        assert!(!check_layout(&dir.0, false).unwrap());
    }

    #[test]
    fn flows_without_their_worker_slots_are_replaced() {
        for kept in FOLLOWS_GENERATIONS {
            let dir = PinDir::new(kept, &[kept, map_names::VIPS], true);
            assert!(check_layout(&dir.0, false).unwrap(), "{kept}");
        }
    }

    #[test]
    fn worker_slots_without_flows_are_adopted() {
        let dir = PinDir::new("slots", &[map_names::BACKENDS, map_names::VIPS], true);
        assert!(!check_layout(&dir.0, false).unwrap());
    }
}
