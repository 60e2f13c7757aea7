//! The desired state on disk: written atomically (write, fsync, rename,
//! fsync the directory) after every change, read back when `lb run`
//! starts, so a restarted or upgraded controller picks up exactly where
//! the last one was, ids included (the pinned maps refer to them).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Read as _, Seek as _, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use self::disk::{Disk, Real};
use crate::{
    desired::instance::{self, Paths},
    desired::state::{Desired, StateError, VipState},
    kernel::private::{self, Exposure},
    service::Vip,
};

mod disk;

/// Version of the file's format: 3 records withdrawn VIP addresses, and
/// is written only when there are some, so that an lb from before
/// announcements can still adopt every other state (a downgrade); 2
/// records the owner and graceful removals; 1 (before instances had names)
/// is still read.
const FORMAT: u32 = 3;
/// The format of a state without withdrawals.
const FORMAT_WITHOUT_WITHDRAWALS: u32 = 2;
/// The oldest format this lb reads.
const OLDEST_FORMAT: u32 = 1;

/// A state file that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading failed.
    #[error("reading state file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Not a state file, or a damaged one.
    #[error("state file {path} is damaged ({reason}); lb left it untouched: repair it, or move it away to start from --config or from nothing")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Written by another format.
    #[error("state file {path} has format {found}, this lb reads formats {OLDEST_FORMAT} to {FORMAT}; move it away to start afresh")]
    Format {
        /// The file.
        path: PathBuf,
        /// Its format.
        found: u32,
    },
    /// Writing failed.
    #[error("writing state file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The state directory or lock file could not be created or opened.
    #[error("cannot use {path} for the state file's lock")]
    Lock {
        /// The directory or lock file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The state directory could be tampered with.
    #[error("state directory {path} {problem}: another user could replace lb's state; make it root's and not writable by others (`chown root: {path}; chmod 700 {path}`), or pass another --state-file")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: Exposure,
    },
    /// Another controller holds the lock.
    #[error("state file {path} is in use by another `lb run` ({holder}); stop it, or give this instance its own --name (or --state-file)")]
    Locked {
        /// The file.
        path: PathBuf,
        /// Who holds it, as far as its lock file says.
        holder: String,
    },
    /// The file belongs to another instance.
    #[error("state file {path} belongs to {found}, not to {this}: run that instance with its --name and --iface, or give this one its own --name (or --state-file)")]
    OtherOwner {
        /// The file.
        path: PathBuf,
        /// The instance it belongs to.
        found: String,
        /// The instance that wanted it.
        this: String,
    },
}

/// The instance a state file belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// The instance's name.
    pub name: String,
    /// Its interface.
    pub iface: String,
    /// The inode of its network namespace: the same interface name in
    /// another namespace is another interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

impl Owner {
    /// "instance `NAME` on IFACE", with its namespace if asked.
    fn describe(&self, with_netns: bool) -> String {
        let mut text = format!("instance `{}` on {}", self.name, self.iface);
        if with_netns {
            let netns = self.netns.map_or_else(|| "?".into(), |n| n.to_string());
            text.push_str(&format!(" in network namespace {netns}"));
        }
        text
    }

    /// Refuses a file that `found` owns unless that is this instance. A
    /// file from before owners were recorded is adopted, and so is one
    /// whose namespace no longer exists (a reboot or a container's
    /// restart makes a new one).
    fn check(&self, path: &Path, found: Option<&Owner>) -> Result<(), StateFileError> {
        let Some(found) = found else {
            return Ok(());
        };
        let other_netns = match (found.netns, self.netns) {
            (Some(theirs), Some(ours)) if theirs != ours => {
                let exists = instance::netns_exists(theirs);
                if !exists {
                    tracing::info!(
                        "state file {} was last used in network namespace {theirs}, which no longer exists; adopting it",
                        path.display()
                    );
                }
                exists
            }
            _ => false,
        };
        if found.name != self.name || found.iface != self.iface || other_netns {
            return Err(StateFileError::OtherOwner {
                path: path.to_owned(),
                found: found.describe(other_netns),
                this: self.describe(other_netns),
            });
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    format: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<Owner>,
    hash_seed: u32,
    vips: BTreeMap<Vip, VipState>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    withdrawn: BTreeSet<IpAddr>,
}

/// What a state file holds.
#[derive(Debug)]
pub struct Loaded {
    /// The desired state.
    pub desired: Desired,
    /// Whose it is; `None` in files written before owners were recorded.
    pub owner: Option<Owner>,
}

/// A state file locked for one controller: it saves there, and no other
/// controller may use it while this exists.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    owner: Owner,
    lock: fs::File,
    /// Whether this start made the lock file (a refused one removes it).
    lock_made: bool,
}

/// The lock file a start made, with a handle that keeps it locked, so that
/// a start refused later removes it while still holding it: a lock file
/// removed by anyone else could be taken by two controllers at once.
#[derive(Debug)]
pub struct MadeLock {
    path: PathBuf,
    _file: fs::File,
}

impl MadeLock {
    /// Removes the lock file, then lets go of the lock.
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl StateFile {
    /// Locks instance `paths`'s state file for its controller on `iface`
    /// (creating the directory, root's alone, if needed) and reads it. A
    /// file another controller holds or another instance owns is refused
    /// and left as it is.
    pub fn open(paths: &Paths, iface: &str) -> Result<(Self, Option<Desired>), StateFileError> {
        let path = paths.state_file.clone();
        let holder = format!(
            "pid {}, pin dir {}, socket {}",
            std::process::id(),
            paths.pin_dir.display(),
            paths.socket.display()
        );
        let (lock, lock_made) = lock(&path, &holder)?;
        let owner = Owner {
            name: paths.name.to_string(),
            iface: iface.to_owned(),
            netns: instance::netns(),
        };
        let loaded = paths
            .legacy_state_file
            .as_deref()
            .map_or(Ok(()), |legacy| adopt_legacy(legacy, &path))
            .and_then(|()| load(&path))
            .and_then(|loaded| {
                if let Some(loaded) = &loaded {
                    owner.check(&path, loaded.owner.as_ref())?;
                }
                Ok(loaded)
            });
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                // Removed while still locked; the lock goes with `lock`.
                if lock_made {
                    let _ = fs::remove_file(lock_path(&path));
                }
                return Err(error);
            }
        };
        let state_file = Self {
            path,
            owner,
            lock,
            lock_made,
        };
        Ok((state_file, loaded.map(|l| l.desired)))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file, if this start made it, with a handle that keeps it
    /// locked for as long as the caller holds it.
    pub fn made_lock(&self) -> Option<MadeLock> {
        let file = self.lock.try_clone().ok()?;
        self.lock_made.then(|| MadeLock {
            path: lock_path(&self.path),
            _file: file,
        })
    }

    /// Saves `desired` with this instance as its owner.
    pub fn save(&self, desired: &Desired) -> Result<(), StateFileError> {
        save(&self.path, &self.owner, desired)
    }
}

/// The lock file of the state file at `path`: beside it, because the
/// state file itself is replaced on every save.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    path.with_file_name(name)
}

/// Takes the state file's lock and writes `holder` into the lock file for
/// the next controller's error message; whether this made the lock file.
/// A lock file is removed only by its holder, so one removed (or
/// replaced) between its opening and its locking here is no lock: it is
/// opened again.
fn lock(path: &Path, holder: &str) -> Result<(fs::File, bool), StateFileError> {
    let dir = directory_of(path);
    let lock_error = |path: &Path| {
        let path = path.to_owned();
        move |source| StateFileError::Lock { path, source }
    };
    private::create_dir(dir).map_err(lock_error(dir))?;
    private::check(dir).map_err(|problem| StateFileError::Unsafe {
        path: dir.to_owned(),
        problem,
    })?;
    let lock_file = lock_path(path);
    loop {
        let (file, made) = private::open_lock_file(&lock_file).map_err(lock_error(&lock_file))?;
        if let Some(file) = take_lock(file, path, &lock_file, holder)? {
            return Ok((file, made));
        }
    }
}

/// Locks the state file `path`'s lock file `lock_file`, open as `file`,
/// and records `holder` in it; refuses with what the holder recorded
/// when another controller has it. `None` when the file is no longer at
/// its path (see [`lock`]).
fn take_lock(
    mut file: fs::File,
    path: &Path,
    lock_file: &Path,
    holder: &str,
) -> Result<Option<fs::File>, StateFileError> {
    if file.try_lock().is_err() {
        if !private::same_file(&file, lock_file) {
            return Ok(None);
        }
        let mut recorded = String::new();
        let _ = file.read_to_string(&mut recorded);
        let recorded = recorded.trim();
        let holder = if recorded.is_empty() {
            format!("it holds {}", lock_file.display())
        } else {
            recorded.to_owned()
        };
        return Err(StateFileError::Locked {
            path: path.to_owned(),
            holder,
        });
    }
    if !private::same_file(&file, lock_file) {
        return Ok(None);
    }
    let recorded = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{holder}"));
    if let Err(error) = recorded {
        tracing::warn!("recording the holder in {}: {error}", lock_file.display());
    }
    Ok(Some(file))
}

/// Moves the default instance's state file of an lb before instance names
/// to where this lb keeps it, unless there is one there already.
fn adopt_legacy(legacy: &Path, path: &Path) -> Result<(), StateFileError> {
    if path.exists() || !legacy.exists() {
        return Ok(());
    }
    fs::rename(legacy, path).map_err(|source| StateFileError::Read {
        path: legacy.to_owned(),
        source,
    })?;
    tracing::info!(
        "moved the state file {} to {}, where this lb keeps the default instance's state",
        legacy.display(),
        path.display()
    );
    Ok(())
}

/// Reads the state saved at `path`; `None` when there is none yet.
/// Removes temporary files a controller killed while saving left behind.
pub fn load(path: &Path) -> Result<Option<Loaded>, StateFileError> {
    load_from(&Real, path)
}

/// [`load`] from `disk`.
fn load_from(disk: &impl Disk, path: &Path) -> Result<Option<Loaded>, StateFileError> {
    remove_leftovers(disk, path);
    let text = match disk.read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateFileError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    parse(&text, path).map(Some)
}

fn parse(text: &str, path: &Path) -> Result<Loaded, StateFileError> {
    let damaged = |reason: String| StateFileError::Damaged {
        path: path.to_owned(),
        reason,
    };
    let saved: Saved = serde_json::from_str(text).map_err(|e| damaged(e.to_string()))?;
    if !(OLDEST_FORMAT..=FORMAT).contains(&saved.format) {
        return Err(StateFileError::Format {
            path: path.to_owned(),
            found: saved.format,
        });
    }
    let desired = Desired::restore(saved.hash_seed, saved.vips)
        .map_err(|e: StateError| damaged(e.to_string()))?
        .with_withdrawn(saved.withdrawn);
    Ok(Loaded {
        desired,
        owner: saved.owner,
    })
}

/// Writes `desired`, owned by `owner`, to `path` so that the file is
/// always either the old state or the new one, whole, even if lb or the
/// machine dies midway. Only its owner may read it (0600).
pub fn save(path: &Path, owner: &Owner, desired: &Desired) -> Result<(), StateFileError> {
    save_to(&Real, path, owner, desired)
}

/// [`save`] to `disk`.
fn save_to(
    disk: &impl Disk,
    path: &Path,
    owner: &Owner,
    desired: &Desired,
) -> Result<(), StateFileError> {
    let withdrawn = desired.withdrawn().clone();
    let saved = Saved {
        format: if withdrawn.is_empty() {
            FORMAT_WITHOUT_WITHDRAWALS
        } else {
            FORMAT
        },
        owner: Some(owner.clone()),
        hash_seed: desired.hash_seed,
        vips: desired.vips().clone(),
        withdrawn,
    };
    let mut text = serde_json::to_string_pretty(&saved).expect("the state serialises");
    text.push('\n');
    write_atomically(disk, path, text.as_bytes()).map_err(|source| StateFileError::Write {
        path: path.to_owned(),
        source,
    })
}

fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `.NAME.PID.tmp`, next to the state file.
fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
}

fn remove_leftovers(disk: &impl Disk, path: &Path) {
    let prefix = temp_prefix(path);
    let dir = directory_of(path);
    for name in disk.list(dir).unwrap_or_default() {
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            let _ = disk.remove(&dir.join(&*name));
        }
    }
}

fn write_atomically(disk: &impl Disk, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = directory_of(path);
    disk.create_dir(dir)?;
    let temp = dir.join(format!("{}{}.tmp", temp_prefix(path), std::process::id()));
    let written = (|| {
        // A file left by a killed controller of the same pid would keep
        // its mode: start from a new one.
        let _ = disk.remove(&temp);
        let file = disk.write_new(&temp, bytes)?;
        disk.sync(file)?;
        disk.rename(&temp, path)?;
        disk.sync_dir(dir)
    })();
    if written.is_err() {
        let _ = disk.remove(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::desired::options::VipOptions;

    fn sample() -> Desired {
        let mut desired = Desired::new(7);
        let a: Vip = "192.0.2.100:80/tcp".parse().unwrap();
        let b: Vip = "[2001:db8::100]:53/udp".parse().unwrap();
        desired.add_vip(a, VipOptions::default()).unwrap();
        desired.add_vip(b, VipOptions::default()).unwrap();
        for last in 11..15 {
            let worker = format!("192.0.2.{last}").parse().unwrap();
            desired.add_worker(&a, worker, 100 + last).unwrap();
        }
        desired
            .del_worker(&a, "192.0.2.12".parse().unwrap())
            .unwrap();
        desired
            .add_worker(&b, "2001:db8::11".parse().unwrap(), 5)
            .unwrap();
        desired
            .set_drain(&a, "192.0.2.13".parse().unwrap(), true)
            .unwrap();
        desired
            .remove_by(&a, "192.0.2.14".parse().unwrap(), 1_900_000_000)
            .unwrap();
        desired
            .pin(
                &a,
                "198.51.100.7".parse().unwrap(),
                "192.0.2.11".parse().unwrap(),
            )
            .unwrap();
        desired
    }

    fn owner() -> Owner {
        Owner {
            name: "lb".into(),
            iface: "eth0".into(),
            netns: instance::netns(),
        }
    }

    /// A fresh directory of this test's own (the temporary directory is
    /// writable by everyone, which `StateFile::open` refuses).
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-state-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn paths(dir: &Path, name: &str) -> Paths {
        Paths::new(
            name.parse().unwrap(),
            Some("/sys/fs/bpf/test".into()),
            Some("/run/lb/test.sock".into()),
            Some(dir.join(format!("{name}.json"))),
        )
    }

    #[test]
    fn a_saved_state_comes_back_with_its_ids_owner_and_removals() {
        let dir = temp_dir("round-trip");
        let path = dir.join("state.json");
        let desired = sample();
        save(&path, &owner(), &desired).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.owner, Some(owner()));
        let mut back = back.desired;
        assert_eq!(back.vips(), desired.vips());
        assert_eq!(back.hash_seed, 7);
        let a: Vip = "192.0.2.100:80/tcp".parse().unwrap();
        let removing = back.worker(&a, "192.0.2.14".parse().unwrap()).unwrap();
        assert_eq!(
            (removing.drain, removing.remove_by),
            (true, Some(1_900_000_000))
        );
        let fresh = back
            .add_worker(&a, "192.0.2.20".parse().unwrap(), 1)
            .unwrap();
        let used: Vec<u32> = desired
            .vips()
            .values()
            .flat_map(|v| v.workers.values().map(|w| w.id))
            .collect();
        assert!(!used.contains(&fresh), "id {fresh} handed out twice");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn withdrawals_are_saved_in_format_3_and_only_then() {
        let dir = temp_dir("withdrawn");
        let path = dir.join("state.json");
        let mut desired = sample();
        save(&path, &owner(), &desired).unwrap();
        assert!(fs::read_to_string(&path).unwrap().contains("\"format\": 2"));
        let addr: IpAddr = "2001:db8::100".parse().unwrap();
        desired.set_withdrawn(&[addr], true).unwrap();
        save(&path, &owner(), &desired).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"format\": 3"), "{text}");
        let back = load(&path).unwrap().unwrap().desired;
        assert_eq!(back.withdrawn(), &BTreeSet::from([addr]));
        // Within limits (as `lb run` applies them) the withdrawal stays.
        let back = back
            .within(crate::desired::state::Limits::default())
            .unwrap();
        assert_eq!(back.withdrawn(), &BTreeSet::from([addr]));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_format_1_file_is_read_and_adopted() {
        let dir = temp_dir("format-1");
        let paths = paths(&dir, "edge");
        private::create_dir(&dir).unwrap();
        let old = r#"{
  "format": 1,
  "hash_seed": 9,
  "vips": {
    "192.0.2.100:80/tcp": {
      "id": 0,
      "options": {},
      "workers": {
        "192.0.2.11": { "id": 0, "weight": 100, "drain": false },
        "192.0.2.12": { "id": 1, "weight": 50, "drain": true }
      },
      "pins": { "198.51.100.0": "192.0.2.11" }
    }
  }
}
"#;
        fs::write(&paths.state_file, old).unwrap();
        let (file, desired) = StateFile::open(&paths, "eth1").unwrap();
        let desired = desired.unwrap();
        let a: Vip = "192.0.2.100:80/tcp".parse().unwrap();
        let w12 = desired.worker(&a, "192.0.2.12".parse().unwrap()).unwrap();
        assert_eq!(
            (w12.id, w12.weight, w12.drain, w12.remove_by),
            (1, 50, true, None)
        );
        assert_eq!(desired.hash_seed, 9);
        file.save(&desired).unwrap();
        let saved = load(&paths.state_file).unwrap().unwrap();
        assert_eq!(
            saved.owner.map(|o| (o.name, o.iface)),
            Some(("edge".to_owned(), "eth1".to_owned())),
            "the next save records the owner"
        );
        let text = fs::read_to_string(&paths.state_file).unwrap();
        assert!(text.contains("\"format\": 2"), "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_of_another_instance_or_interface_is_refused_and_left_alone() {
        let dir = temp_dir("owner");
        let mine = paths(&dir, "lb");
        let (file, _) = StateFile::open(&mine, "eth0").unwrap();
        file.save(&sample()).unwrap();
        drop(file);
        let whole = fs::read(&mine.state_file).unwrap();
        let other_name = Paths {
            name: "edge".parse().unwrap(),
            ..mine.clone()
        };
        for (paths, iface, found, this) in [
            (
                &other_name,
                "eth0",
                "instance `lb` on eth0",
                "instance `edge` on eth0",
            ),
            (
                &mine,
                "eth1",
                "instance `lb` on eth0",
                "instance `lb` on eth1",
            ),
        ] {
            let error = StateFile::open(paths, iface).unwrap_err().to_string();
            assert!(
                error.contains(&format!("belongs to {found}, not to {this}")),
                "{error}"
            );
            assert!(
                error.contains(&mine.state_file.display().to_string()),
                "{error}"
            );
            assert_eq!(fs::read(&mine.state_file).unwrap(), whole);
        }
        let mut elsewhere = owner();
        elsewhere.netns = Some(1);
        save(&mine.state_file, &elsewhere, &sample()).unwrap();
        StateFile::open(&mine, "eth0").expect("a namespace that is gone is no one's");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_locked_file_is_refused_naming_the_holder() {
        let dir = temp_dir("lock");
        let paths = paths(&dir, "lb");
        let (held, _) = StateFile::open(&paths, "eth0").unwrap();
        let error = StateFile::open(&paths, "eth0").unwrap_err().to_string();
        assert!(error.contains("is in use by another `lb run`"), "{error}");
        assert!(
            error.contains(&format!(
                "pid {}, pin dir /sys/fs/bpf/test, socket /run/lb/test.sock",
                std::process::id()
            )),
            "{error}"
        );
        drop(held);
        StateFile::open(&paths, "eth0").expect("free again once the holder is gone");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_are_root_s_alone() {
        let dir = temp_dir("modes");
        let paths = paths(&dir.join("sub"), "lb");
        let (file, _) = StateFile::open(&paths, "eth0").unwrap();
        file.save(&sample()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir.join("sub")), 0o700);
        assert_eq!(mode(&paths.state_file), 0o600);
        assert_eq!(mode(&lock_path(&paths.state_file)), 0o600);
        drop(file);
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(dir.join("sub"), fs::Permissions::from_mode(0o777)).unwrap();
        let error = StateFile::open(&paths, "eth0").unwrap_err().to_string();
        assert!(
            error.contains("may be written by other users") && error.contains("chmod 700"),
            "{error}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_default_instance_takes_over_the_state_file_of_an_lb_before_names() {
        let dir = temp_dir("legacy");
        let mut paths = paths(&dir, "lb");
        let legacy = dir.join("state.json");
        paths.legacy_state_file = Some(legacy.clone());
        private::create_dir(&dir).unwrap();
        save(&legacy, &owner(), &sample()).unwrap();
        let (_file, desired) = StateFile::open(&paths, "eth0").unwrap();
        assert_eq!(desired.unwrap().vips(), sample().vips());
        assert!(!legacy.exists() && paths.state_file.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_refused_with_their_name_and_left_alone() {
        let dir = temp_dir("damaged");
        let path = dir.join("state.json");
        save(&path, &owner(), &sample()).unwrap();
        let whole = fs::read_to_string(&path).unwrap();
        let cases = [
            whole[..whole.len() / 2].to_owned(),
            String::new(),
            "not json".to_owned(),
            whole.replace("\"format\": 2", "\"format\": 9"),
            whole.replace("\"format\": 2", "\"format\": 0"),
            whole.replacen("\"id\": 0", "\"id\": 1", 1),
            whole.replace("\"iface\"", "\"interface\""),
        ];
        for text in cases {
            fs::write(&path, &text).unwrap();
            let error = load(&path).map(drop).unwrap_err().to_string();
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert_eq!(fs::read_to_string(&path).unwrap(), text, "left untouched");
        }
        fs::remove_file(&path).unwrap();
        assert!(load(&path).unwrap().is_none(), "no file: no state");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The crash tests: the real save and load on a disk that fails or
    /// dies at every step.
    mod crash {
        use proptest::prelude::*;

        use super::*;
        use crate::desired::state_file::disk::crash::{CrashDisk, Fault, Image};

        const VIPS: [&str; 3] = [
            "192.0.2.100:80/tcp",
            "[2001:db8::100]:53/udp",
            "198.51.100.1:443/tcp",
        ];

        /// One change: which VIP, which worker, its weight, and what to do
        /// (0 and 1 add, 2 removes, 3 withdraws or restores the address).
        type Edit = (usize, u8, u32, u8);

        fn edits() -> impl Strategy<Value = Vec<Vec<Edit>>> {
            let edit = (0..VIPS.len(), 1u8..12, 1u32..200, 0u8..4);
            proptest::collection::vec(proptest::collection::vec(edit, 1..5), 1..5)
        }

        /// The states a controller saves one after the other: each round
        /// of edits applied to the one before (refused edits change
        /// nothing, as in lb).
        fn states(seed: u32, rounds: &[Vec<Edit>]) -> Vec<Desired> {
            let mut desired = Desired::new(seed);
            rounds
                .iter()
                .map(|round| {
                    round.iter().for_each(|edit| apply(&mut desired, *edit));
                    desired.clone()
                })
                .collect()
        }

        fn apply(desired: &mut Desired, (v, last, weight, what): Edit) {
            let vip: Vip = VIPS[v].parse().unwrap();
            let _ = desired.add_vip(vip, VipOptions::default());
            let worker: IpAddr = match v {
                1 => format!("2001:db8::{last}"),
                _ => format!("192.0.2.{last}"),
            }
            .parse()
            .unwrap();
            let _ = match what {
                2 => desired.del_worker(&vip, worker).map(drop),
                3 => {
                    let withdrawn = desired.withdrawn().contains(&vip.addr);
                    desired.set_withdrawn(&[vip.addr], !withdrawn).map(drop)
                }
                _ => desired.add_worker(&vip, worker, weight).map(drop),
            };
        }

        fn path() -> PathBuf {
            PathBuf::from("/var/lib/lb/state.json")
        }

        /// The bytes a save of `desired` leaves in the file.
        fn text_of(desired: &Desired) -> Vec<u8> {
            let disk = CrashDisk::new(Image::default());
            save_to(&disk, &path(), &owner(), desired).unwrap();
            disk.image().contents(&path()).unwrap().to_vec()
        }

        /// Saves `states` in turn on `disk`; which saves succeeded.
        fn save_all(disk: &CrashDisk, states: &[Desired]) -> Vec<bool> {
            states
                .iter()
                .map(|desired| save_to(disk, &path(), &owner(), desired).is_ok())
                .collect()
        }

        fn no_leftovers(image: &Image) -> bool {
            image
                .names()
                .all(|name| !name.to_string_lossy().ends_with(".tmp"))
        }

        /// Restarts on `image`: the file must be one of `allowed` (`None`:
        /// no file) exactly, lb's loader must accept it as that state and
        /// clear the saves' leftovers, and lb must save again there.
        fn restart(image: Image, allowed: &[Option<&Desired>]) -> Result<(), TestCaseError> {
            let found = image.contents(&path()).map(<[u8]>::to_vec);
            let matched = allowed
                .iter()
                .find(|state| state.map(text_of) == found)
                .ok_or_else(|| {
                    TestCaseError::fail(format!(
                        "torn or stale: {:?}",
                        found.as_deref().map(String::from_utf8_lossy)
                    ))
                })?;
            let disk = CrashDisk::new(image);
            let loaded =
                load_from(&disk, &path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(
                loaded.as_ref().map(|l| l.desired.vips()),
                matched.map(Desired::vips)
            );
            prop_assert_eq!(
                loaded.as_ref().map(|l| l.desired.withdrawn()),
                matched.map(Desired::withdrawn)
            );
            prop_assert!(no_leftovers(&disk.image()), "leftovers stay");
            let next = Desired::new(1);
            prop_assert!(save_to(&disk, &path(), &owner(), &next).is_ok());
            let back = load_from(&disk, &path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(back.is_some_and(|l| l.desired.hash_seed == 1));
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]

            /// A machine that dies before any step of a run of saves, or
            /// just after it, comes back with the last acknowledged state
            /// or the one being saved, whole; never anything else.
            #[test]
            fn crash_at_every_step_keeps_the_old_or_the_new_state(
                seed: u32,
                rounds in edits(),
            ) {
                let states = states(seed, &rounds);
                let clean = CrashDisk::new(Image::default());
                save_all(&clean, &states);
                for at in 0..=clean.steps() {
                    let disk = CrashDisk::failing(Image::default(), at, Fault::Crash);
                    let saved = save_all(&disk, &states);
                    let acked = saved.iter().rposition(|&ok| ok);
                    let in_flight = saved.iter().position(|&ok| !ok);
                    prop_assert_eq!(disk.dead(), at < clean.steps());
                    let allowed = [acked.map(|i| &states[i]), in_flight.map(|i| &states[i])];
                    for image in disk.image().after_crash() {
                        restart(image, &allowed)?;
                    }
                }
            }

            /// An I/O error at any step fails only its own save, leaves
            /// nothing behind, and a machine that dies after the run comes
            /// back with the last acknowledged state or a later
            /// unacknowledged one (lb reports those as in force but
            /// perhaps not saved).
            #[test]
            fn crash_after_an_io_error_at_any_step_keeps_an_acknowledged_state(
                seed: u32,
                rounds in edits(),
            ) {
                let states = states(seed, &rounds);
                let clean = CrashDisk::new(Image::default());
                save_all(&clean, &states);
                for at in 0..clean.steps() {
                    let disk = CrashDisk::failing(Image::default(), at, Fault::Error);
                    let saved = save_all(&disk, &states);
                    prop_assert!(saved.iter().filter(|&&ok| !ok).count() <= 1);
                    prop_assert!(no_leftovers(&disk.image()));
                    let acked = saved.iter().rposition(|&ok| ok);
                    let since = acked.unwrap_or(0);
                    let mut allowed: Vec<_> = states[since..].iter().map(Some).collect();
                    if acked.is_none() {
                        allowed.push(None);
                    }
                    for image in disk.image().after_crash() {
                        restart(image, &allowed)?;
                    }
                }
            }
        }

        /// Temporary files a crash left, of this pid or another, don't stop
        /// a start; other files beside them are left alone.
        #[test]
        fn crash_leftover_temporary_files_do_not_stop_a_start() {
            let state = sample();
            let dir = path().parent().unwrap().to_owned();
            let ours = dir.join(format!(".state.json.{}.tmp", std::process::id()));
            let theirs = dir.join(".state.json.1.tmp");
            let unrelated = dir.join(".other.json.1.tmp");
            let image = Image::default()
                .with(&path(), &text_of(&state))
                .with(&ours, b"{\"format\": 2, \"hash_")
                .with(&theirs, &[0; 40])
                .with(&unrelated, b"someone else's");
            let disk = CrashDisk::new(image);
            let loaded = load_from(&disk, &path()).unwrap().unwrap();
            assert_eq!(loaded.desired.vips(), state.vips());
            let names: Vec<PathBuf> = disk.image().names().map(Path::to_owned).collect();
            assert_eq!(names, [unrelated.clone(), path()]);
            save_to(&disk, &path(), &owner(), &Desired::new(3)).unwrap();
            assert_eq!(
                disk.image().contents(&unrelated),
                Some(&b"someone else's"[..])
            );
        }

        /// The same on the real file system, through `StateFile::open`: a
        /// leftover of this very pid, readable by others, is replaced by a
        /// file of lb's own.
        #[test]
        fn crash_leftover_temporary_files_do_not_stop_a_real_start() {
            use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
            let dir = temp_dir("leftovers");
            let paths = paths(&dir, "lb");
            private::create_dir(&dir).unwrap();
            save(&paths.state_file, &owner(), &sample()).unwrap();
            let ours = dir.join(format!(".lb.json.{}.tmp", std::process::id()));
            fs::write(&ours, "{\"format\":").unwrap();
            fs::set_permissions(&ours, fs::Permissions::from_mode(0o644)).unwrap();
            fs::write(dir.join(".lb.json.1.tmp"), [0; 16]).unwrap();
            let (file, desired) = StateFile::open(&paths, "eth0").unwrap();
            assert_eq!(desired.unwrap().vips(), sample().vips());
            assert!(!ours.exists() && !dir.join(".lb.json.1.tmp").exists());
            fs::write(&ours, "left by a controller of the same pid").unwrap();
            file.save(&sample()).unwrap();
            assert_eq!(
                fs::metadata(&paths.state_file).unwrap().mode() & 0o777,
                0o600
            );
            assert!(!ours.exists());
            fs::remove_dir_all(&dir).unwrap();
        }
    }
}
