//! Directories only lb may write: the pin directory, its lock directory
//! and the state directory. Whoever can write there could remove or
//! replace what lb keeps in them.

use std::{fs, io, os::unix::fs::MetadataExt as _, path::Path};

/// Why a directory is not lb's alone.
#[derive(Debug, thiserror::Error)]
pub enum Exposure {
    /// It could not be inspected.
    #[error("can't be inspected")]
    Inspect(#[source] io::Error),
    /// A symbolic link, which could be pointed elsewhere.
    #[error("is a symbolic link")]
    Symlink,
    /// Another user owns it.
    #[error("belongs to uid {owner}, not to lb's uid {me}")]
    Owner {
        /// Its owner.
        owner: u32,
        /// lb's effective uid.
        me: u32,
    },
    /// Group or others may write to it.
    #[error("may be written by other users (mode {0:o})")]
    Writable(u32),
}

/// Creates `dir` and its missing parents, each readable by lb's user
/// alone.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Refuses a directory that another user owns or may write.
pub fn check(dir: &Path) -> Result<(), Exposure> {
    let meta = fs::symlink_metadata(dir).map_err(Exposure::Inspect)?;
    if meta.file_type().is_symlink() {
        return Err(Exposure::Symlink);
    }
    let me = euid();
    if meta.uid() != me {
        return Err(Exposure::Owner {
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Exposure::Writable(meta.mode() & 0o7777));
    }
    Ok(())
}

/// lb's effective uid.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn open_foreign_and_linked_directories_are_refused() {
        let base = std::env::temp_dir().join(format!("lb-private-test-{}", std::process::id()));
        let dir = base.join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        check(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
        assert!(matches!(check(&dir), Err(Exposure::Writable(0o770))));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(check(&link), Err(Exposure::Symlink)));
        if euid() == 0 {
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            assert!(matches!(
                check(&dir),
                Err(Exposure::Owner { owner: 65534, .. })
            ));
        }
        fs::remove_dir_all(&base).unwrap();
    }
}
