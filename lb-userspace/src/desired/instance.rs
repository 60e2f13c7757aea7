//! An lb instance is one identity: a name, and the pin directory, admin
//! socket and state file derived from it (each can be overridden). Every
//! command finds its instance by name, so a second instance on the same
//! machine needs `--name` only. Each path is taken in its one spelling
//! ([`crate::kernel::private::canonical`]): `/sys/fs/bpf//lb` is the
//! instance at `/sys/fs/bpf/lb`, with the same lock, not another one.

use std::{
    fmt, fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    str::FromStr,
};

use crate::kernel::private::canonical;

/// The instance name when none is given.
pub const DEFAULT_NAME: &str = "lb";
/// Where instances pin their maps: `/sys/fs/bpf/NAME`.
pub const PIN_ROOT: &str = "/sys/fs/bpf";
/// Where instances' admin sockets are: `/run/lb/NAME.sock`.
pub const SOCKET_DIR: &str = "/run/lb";
/// Where instances save their state: `/var/lib/lb/NAME.json`.
pub const STATE_DIR: &str = "/var/lib/lb";
/// The default instance's state file before instances had names; read
/// (and renamed) when the default instance has no `lb.json` yet.
pub const LEGACY_STATE_FILE: &str = "state.json";
/// Longest name: socket paths stay far below the 108 bytes a Unix socket
/// address holds.
const MAX_NAME_LEN: usize = 32;

/// A valid instance name: 1 to 32 of a-z, 0-9, `_` and `-`, starting
/// with a letter or digit (it becomes a file name in three places).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name(String);

/// A name that can't name an instance.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("instance name {0:?} is not valid: use 1 to {MAX_NAME_LEN} of a-z, 0-9, _ and -, starting with a letter or digit")]
pub struct BadName(String);

impl FromStr for Name {
    type Err = BadName;

    fn from_str(text: &str) -> Result<Self, BadName> {
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        let first_ok = text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if first_ok && text.len() <= MAX_NAME_LEN && text.chars().all(allowed) {
            Ok(Self(text.to_owned()))
        } else {
            Err(BadName(text.to_owned()))
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Name {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where an instance keeps its things.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The instance's name.
    pub name: Name,
    /// Its pin directory on bpffs.
    pub pin_dir: PathBuf,
    /// Its controller's admin socket.
    pub socket: PathBuf,
    /// Its state file.
    pub state_file: PathBuf,
    /// The state file an lb before instance names used for this instance
    /// (the default one, with a derived state file only).
    pub legacy_state_file: Option<PathBuf>,
}

impl Paths {
    /// The paths of instance `name`, each derived from it unless given,
    /// and each in its one spelling: the lock on the pin directory is
    /// named after its path, and a path spelled another way (`//`, `/./`,
    /// `..`, a link of root's) must not name another instance.
    pub fn new(
        name: Name,
        pin_dir: Option<PathBuf>,
        socket: Option<PathBuf>,
        state_file: Option<PathBuf>,
    ) -> Self {
        let derived_state = state_file.is_none();
        let legacy_state_file = (derived_state && name.as_str() == DEFAULT_NAME)
            .then(|| canonical(&Path::new(STATE_DIR).join(LEGACY_STATE_FILE)));
        let pin_dir = pin_dir.unwrap_or_else(|| Path::new(PIN_ROOT).join(name.as_str()));
        let socket = socket.unwrap_or_else(|| Path::new(SOCKET_DIR).join(format!("{name}.sock")));
        let state_file =
            state_file.unwrap_or_else(|| Path::new(STATE_DIR).join(format!("{name}.json")));
        Self {
            pin_dir: canonical(&pin_dir),
            socket: canonical(&socket),
            state_file: canonical(&state_file),
            legacy_state_file,
            name,
        }
    }
}

/// The inode of this process's network namespace (as `ls -iL
/// /proc/self/ns/net` shows it): it tells namespaces apart.
pub fn netns() -> Option<u64> {
    fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
}

/// Whether the network namespace with inode `ino` still exists: some
/// process is in it, or `ip netns` holds it. A namespace that is gone
/// (after a reboot, or a container's restart) can't run another instance.
pub fn netns_exists(ino: u64) -> bool {
    let held = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let entered = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("ns/net"));
    held.chain(entered)
        .any(|path| fs::metadata(path).is_ok_and(|m| m.ino() == ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_words() {
        for good in ["lb", "a", "0", "edge-1", "lb_2", &"x".repeat(32)] {
            assert_eq!(good.parse::<Name>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "-lb",
            "_lb",
            "Lb",
            "lb.1",
            "lb/1",
            "..",
            "lb 1",
            "é",
            &"x".repeat(33),
        ] {
            let error = bad.parse::<Name>().unwrap_err().to_string();
            assert!(
                error.contains("not valid") && !error.contains('\n'),
                "{bad}"
            );
        }
    }

    #[test]
    fn paths_derive_from_the_name_unless_given() {
        let named = Paths::new("edge".parse().unwrap(), None, None, None);
        assert_eq!(named.pin_dir, Path::new("/sys/fs/bpf/edge"));
        assert_eq!(named.socket, Path::new("/run/lb/edge.sock"));
        assert_eq!(named.state_file, Path::new("/var/lib/lb/edge.json"));
        assert_eq!(named.legacy_state_file, None);
        let default = Paths::new(DEFAULT_NAME.parse().unwrap(), None, None, None);
        assert_eq!(default.pin_dir, Path::new("/sys/fs/bpf/lb"));
        assert_eq!(default.socket, Path::new("/run/lb/lb.sock"));
        assert_eq!(default.state_file, Path::new("/var/lib/lb/lb.json"));
        assert_eq!(
            default.legacy_state_file.as_deref(),
            Some(Path::new("/var/lib/lb/state.json"))
        );
        let given = Paths::new(
            DEFAULT_NAME.parse().unwrap(),
            Some("/p".into()),
            Some("/s".into()),
            Some("/f.json".into()),
        );
        assert_eq!(
            (given.pin_dir, given.socket, given.state_file),
            ("/p".into(), "/s".into(), "/f.json".into())
        );
        assert_eq!(given.legacy_state_file, None, "a given file is the file");
        let spelled = Paths::new(
            DEFAULT_NAME.parse().unwrap(),
            Some("/p//q/./r/".into()),
            Some("/s/../t.sock".into()),
            Some("/u///f.json".into()),
        );
        assert_eq!(
            (spelled.pin_dir, spelled.socket, spelled.state_file),
            ("/p/q/r".into(), "/t.sock".into(), "/u/f.json".into())
        );
    }

    #[test]
    fn this_namespace_exists() {
        let here = netns().unwrap();
        assert!(netns_exists(here));
        assert!(!netns_exists(1), "no namespace has inode 1");
    }
}
