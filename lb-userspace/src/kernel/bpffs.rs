//! The BPF filesystem: whether a directory is on one, and mounting the
//! machine's where nobody has.

use std::{io, path::Path};

use rustix::{
    fs::statfs,
    mount::{mount, MountFlags},
};

/// Magic number of a BPF filesystem in `statfs`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where the machine's BPF filesystem is mounted by convention.
pub const MOUNT_POINT: &str = "/sys/fs/bpf";

/// Mounts a BPF filesystem on [`MOUNT_POINT`], root's alone: bpffs's own
/// default, 1777, lets any user create directories lb would then use.
pub fn mount_root_only() -> io::Result<()> {
    mount("bpf", MOUNT_POINT, "bpf", MountFlags::empty(), c"mode=0700")?;
    Ok(())
}

/// Whether `dir` is on a BPF filesystem.
pub fn contains(dir: &Path) -> io::Result<bool> {
    Ok(statfs(dir)?.f_type as i64 == BPF_FS_MAGIC)
}
