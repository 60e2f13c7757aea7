//! Directories only lb may write: the pin directory, its lock directory
//! and the state directory. Whoever can write there could remove or
//! replace what lb keeps in them; whoever can write a directory above
//! them could swap them for their own. And one spelling per path: an
//! instance's paths are compared (and its pin directory's lock named) as
//! [`canonical`] spells them.

use std::{
    ffi::OsString,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

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
    /// Something other than a directory stands where one must be.
    #[error("is not a directory")]
    NotDirectory,
}

/// Mode bits that let group or others write.
const GROUP_OTHER_WRITE: u32 = 0o022;
/// Longest chain of symbolic links followed, as the kernel's own limit.
const MAX_LINKS: usize = 40;

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

/// Opens lock file `path` for reading and writing (0600, never through a
/// symbolic link), making it if it is missing; whether it was made here.
pub fn open_lock_file(path: &Path) -> io::Result<(fs::File, bool)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let open = |make: bool| {
        fs::OpenOptions::new()
            .create_new(make)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    loop {
        match open(true) {
            Ok(file) => return Ok((file, true)),
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            Err(_) => {}
        }
        match open(false) {
            Ok(file) => return Ok((file, false)),
            // Removed in between: make it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether `path` names the file `file` is open on (a lock file someone
/// removed, or replaced, no longer does).
pub fn same_file(file: &fs::File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// lb's effective uid.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether `uid` may own what lies on the way to lb's directories: root
/// (who owns `/`, `/sys`, `/run` and the like) or lb's own user.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

/// Refuses a directory above one of lb's, as OpenSSH's StrictModes does:
/// it must be root's or lb's, and writable by no one else, unless its
/// sticky bit is set (`/tmp`, a bpffs mounted 1777): then others may add
/// entries but not rename or remove anyone else's, and every directory
/// below it on the way is checked in turn (its owner above all).
fn check_above(meta: &fs::Metadata) -> Result<(), Exposure> {
    if meta.file_type().is_symlink() {
        return Err(Exposure::Symlink);
    }
    if !meta.is_dir() {
        return Err(Exposure::NotDirectory);
    }
    if !trusted_owner(meta.uid()) {
        return Err(Exposure::Owner {
            owner: meta.uid(),
            me: euid(),
        });
    }
    let sticky = meta.mode() & libc::S_ISVTX != 0;
    if meta.mode() & GROUP_OTHER_WRITE != 0 && !sticky {
        return Err(Exposure::Writable(meta.mode() & 0o7777));
    }
    Ok(())
}

/// Refuses `dir` unless no other user could remove, replace or swap it:
/// every directory above it passes [`check_above`] (no symbolic link
/// among them: [`canonical`] has resolved the trusted ones), and `dir`
/// itself is root's or lb's and writable by no one else (sticky or not:
/// others could add entries to it). What does not exist yet passes (lb
/// creates it root's alone); the caller checks again once it does. So
/// does what this process may not look up: it can't be led through it
/// either, and fails on its own (a user without root, say, with the
/// command's own message). The error names the directory at fault, the
/// highest one.
pub fn check_tree(dir: &Path) -> Result<(), (PathBuf, Exposure)> {
    let mut above: Vec<&Path> = dir.ancestors().skip(1).collect();
    above.reverse();
    let out_of_reach = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
        )
    };
    for ancestor in above {
        match fs::symlink_metadata(ancestor) {
            Ok(meta) => check_above(&meta).map_err(|e| (ancestor.to_owned(), e))?,
            Err(e) if out_of_reach(&e) => return Ok(()),
            Err(e) => return Err((ancestor.to_owned(), Exposure::Inspect(e))),
        }
    }
    let closed = |meta: fs::Metadata| {
        check_above(&meta)?;
        match meta.mode() & GROUP_OTHER_WRITE {
            0 => Ok(()),
            _ => Err(Exposure::Writable(meta.mode() & 0o7777)),
        }
    };
    match fs::symlink_metadata(dir) {
        Ok(meta) => closed(meta).map_err(|e| (dir.to_owned(), e)),
        Err(e) if out_of_reach(&e) => Ok(()),
        Err(e) => Err((dir.to_owned(), Exposure::Inspect(e))),
    }
}

/// `dir` and those of its parents that do not exist, deepest first: what
/// [`create_dir`] would make, for a start that fails to remove again.
pub fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && fs::symlink_metadata(d).is_err())
        .map(Path::to_owned)
        .collect()
}

/// Removes the directories `dirs` (deepest first) that are empty: those
/// [`missing_dirs`] found, once a start that made them failed.
pub fn remove_made(dirs: &[PathBuf]) {
    for dir in dirs {
        let _ = fs::remove_dir(dir);
    }
}

/// The one spelling of `path`: absolute, without `.`, `..`, repeated or
/// trailing slashes, and through the symbolic links on the way that no
/// other user could have made or changed (root's or lb's, in a directory
/// [`check_above`] passes), the way the kernel would follow them. The
/// part that does not exist yet is taken as written, `..` included. A
/// symbolic link another user could control is not resolved: it stays in
/// the path, for [`check_tree`] to refuse where that matters (the pin
/// directory); resolving it would let its owner choose which instance a
/// spelling names.
pub fn canonical(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().map_or_else(|_| path.to_owned(), |cwd| cwd.join(path))
    };
    let mut pending: Vec<OsString> = parts(&absolute);
    pending.reverse();
    let mut resolved = PathBuf::from("/");
    // Whether to look at the file system: not below what does not exist
    // or an untrusted link.
    let mut looking = true;
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            // `resolved` holds no symbolic link while looking, so its
            // parent is the directory `..` names.
            resolved.pop();
            continue;
        }
        let next = resolved.join(&part);
        if looking {
            match fs::symlink_metadata(&next) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = (links < MAX_LINKS && trusted_entry(&resolved, &meta))
                        .then(|| fs::read_link(&next).ok())
                        .flatten();
                    if let Some(target) = target {
                        links += 1;
                        if target.is_absolute() {
                            resolved = PathBuf::from("/");
                        }
                        pending.extend(parts(&target).into_iter().rev());
                        continue;
                    }
                    looking = false;
                }
                Ok(_) => {}
                Err(_) => looking = false,
            }
        }
        resolved = next;
    }
    resolved
}

/// The names in `path`, `..` included, without the root and `.`.
fn parts(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Whether an entry of `dir` (its metadata `entry`) is as it was made: in
/// a directory [`check_above`] passes, and, where others may add entries
/// (a sticky directory), root's or lb's.
fn trusted_entry(dir: &Path, entry: &fs::Metadata) -> bool {
    fs::symlink_metadata(dir).is_ok_and(|meta| {
        check_above(&meta).is_ok()
            && (meta.mode() & GROUP_OTHER_WRITE == 0 || trusted_owner(entry.uid()))
    })
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

    #[test]
    fn one_spelling_per_path() {
        let base = std::env::temp_dir().join(format!("lb-canonical-test-{}", std::process::id()));
        let dir = base.join("a/b");
        create_dir(&dir).unwrap();
        let base = canonical(&base);
        std::os::unix::fs::symlink(base.join("a"), base.join("alias")).unwrap();
        let b = base.join("a/b");
        let text = base.display().to_string();
        for spelling in [
            format!("{text}/a/b"),
            format!("{text}//a/./b/"),
            format!("{text}/a/b/../b"),
            format!("{text}/alias/b"),
            format!("{text}/alias/../a/b"),
        ] {
            assert_eq!(canonical(Path::new(&spelling)), b, "{spelling}");
        }
        // What does not exist is taken as written, `..` included.
        assert_eq!(
            canonical(&base.join("a/new/../b/c//d")),
            base.join("a/b/c/d")
        );
        assert_eq!(canonical(Path::new("/../x")), Path::new("/x"));
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            canonical(Path::new("rel/x")),
            canonical(&here).join("rel/x")
        );
        if euid() == 0 {
            // Another user's link is not followed.
            std::os::unix::fs::lchown(base.join("alias"), Some(65534), None).unwrap();
            fs::set_permissions(&base, fs::Permissions::from_mode(0o1777)).unwrap();
            assert_eq!(canonical(&base.join("alias/b")), base.join("alias/b"));
            fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).unwrap();
        }
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn every_directory_above_must_be_safe_and_sticky_ones_may_be_open() {
        let base = std::env::temp_dir().join(format!("lb-tree-test-{}", std::process::id()));
        let dir = base.join("a/b");
        create_dir(&dir).unwrap();
        let base = canonical(&base);
        let dir = base.join("a/b");
        check_tree(&dir).unwrap();
        check_tree(&dir.join("missing/below")).unwrap();
        let a = base.join("a");
        fs::set_permissions(&a, fs::Permissions::from_mode(0o777)).unwrap();
        let (at, exposure) = check_tree(&dir).unwrap_err();
        assert_eq!(
            (at, matches!(exposure, Exposure::Writable(0o777))),
            (a.clone(), true)
        );
        fs::set_permissions(&a, fs::Permissions::from_mode(0o1777)).unwrap();
        check_tree(&dir).unwrap();
        if euid() == 0 {
            std::os::unix::fs::chown(&a, Some(65534), None).unwrap();
            let (at, exposure) = check_tree(&dir).unwrap_err();
            assert_eq!(at, a);
            assert!(matches!(exposure, Exposure::Owner { owner: 65534, .. }));
        }
        assert_eq!(
            missing_dirs(&dir.join("x/y")),
            [dir.join("x/y"), dir.join("x")]
        );
        fs::remove_dir_all(&base).unwrap();
    }
}
