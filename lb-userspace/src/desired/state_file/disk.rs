//! The file operations a save and a load of the state file do, behind a
//! trait, so that the crash tests can run the real save and load on a
//! disk that dies between any two of them. [`Real`] is the only one the
//! product uses.

use std::{
    ffi::OsString,
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use crate::kernel::private;

/// What saving and loading the state file do to the disk, one call per
/// step whose durability matters.
pub(super) trait Disk {
    /// A file written but perhaps not yet on the disk.
    type Written;

    /// Creates the directory `dir` and its missing parents, lb's alone.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes a new file at `path` (0600, never through a symbolic link)
    /// holding `bytes`.
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<Self::Written>;
    /// Waits until what [`Self::write_new`] wrote is on the disk.
    fn sync(&self, file: Self::Written) -> io::Result<()>;
    /// Renames `from` to `to`, replacing what `to` was.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Waits until the names in `dir` (creations, renames, removals) are on
    /// the disk.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes the file at `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names in `dir`; those that can't be read are left out.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// The file at `path`, as text.
    fn read(&self, path: &Path) -> io::Result<String>;
}

/// The file system itself.
pub(super) struct Real;

impl Disk for Real {
    type Written = fs::File;

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        private::create_dir(dir)
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<fs::File> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        file.write_all(bytes)?;
        Ok(file)
    }

    fn sync(&self, file: fs::File) -> io::Result<()> {
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        Ok(fs::read_dir(dir)?
            .flatten()
            .map(|entry| entry.file_name())
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }
}

#[cfg(test)]
pub(super) mod crash;
