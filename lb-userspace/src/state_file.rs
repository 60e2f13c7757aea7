//! The desired state on disk: written atomically (write, fsync, rename,
//! fsync the directory) after every change, read back when `lb run`
//! starts, so a restarted or upgraded controller picks up exactly where
//! the last one was, ids included (the pinned maps refer to them).

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    service::Vip,
    state::{Desired, StateError, VipState},
};

/// Version of the file's format.
const FORMAT: u32 = 1;

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
    #[error("state file {path} has format {found}, this lb reads format {FORMAT}; move it away to start afresh")]
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
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    format: u32,
    hash_seed: u32,
    vips: BTreeMap<Vip, VipState>,
}

/// Reads the state saved at `path`; `None` when there is none yet.
/// Removes temporary files a controller killed while saving left behind.
pub fn load(path: &Path) -> Result<Option<Desired>, StateFileError> {
    remove_leftovers(path);
    let text = match fs::read_to_string(path) {
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

fn parse(text: &str, path: &Path) -> Result<Desired, StateFileError> {
    let damaged = |reason: String| StateFileError::Damaged {
        path: path.to_owned(),
        reason,
    };
    let saved: Saved = serde_json::from_str(text).map_err(|e| damaged(e.to_string()))?;
    if saved.format != FORMAT {
        return Err(StateFileError::Format {
            path: path.to_owned(),
            found: saved.format,
        });
    }
    Desired::restore(saved.hash_seed, saved.vips).map_err(|e: StateError| damaged(e.to_string()))
}

/// Writes `desired` to `path` so that the file is always either the old
/// state or the new one, whole, even if lb or the machine dies midway.
pub fn save(path: &Path, desired: &Desired) -> Result<(), StateFileError> {
    let saved = Saved {
        format: FORMAT,
        hash_seed: desired.hash_seed,
        vips: desired.vips().clone(),
    };
    let mut text = serde_json::to_string_pretty(&saved).expect("the state serialises");
    text.push('\n');
    write_atomically(path, text.as_bytes()).map_err(|source| StateFileError::Write {
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

fn remove_leftovers(path: &Path) {
    let prefix = temp_prefix(path);
    for entry in fs::read_dir(directory_of(path))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = directory_of(path);
    fs::create_dir_all(dir)?;
    let temp = dir.join(format!("{}{}.tmp", temp_prefix(path), std::process::id()));
    let written = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::VipOptions;

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
            .pin(
                &a,
                "198.51.100.7".parse().unwrap(),
                "192.0.2.11".parse().unwrap(),
            )
            .unwrap();
        desired
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("lb-state-test-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_saved_state_comes_back_with_its_ids() {
        let path = temp_path("round-trip.json");
        let desired = sample();
        save(&path, &desired).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.vips(), desired.vips());
        assert_eq!(back.hash_seed, 7);
        let mut back = back;
        let a: Vip = "192.0.2.100:80/tcp".parse().unwrap();
        let fresh = back
            .add_worker(&a, "192.0.2.20".parse().unwrap(), 1)
            .unwrap();
        let used: Vec<u32> = desired
            .vips()
            .values()
            .flat_map(|v| v.workers.values().map(|w| w.id))
            .collect();
        assert!(!used.contains(&fresh), "id {fresh} handed out twice");
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn damaged_files_are_refused_with_their_name_and_left_alone() {
        let path = temp_path("damaged.json");
        save(&path, &sample()).unwrap();
        let whole = fs::read_to_string(&path).unwrap();
        let cases = [
            whole[..whole.len() / 2].to_owned(),
            String::new(),
            "not json".to_owned(),
            whole.replace("\"format\": 1", "\"format\": 9"),
            whole.replacen("\"id\": 0", "\"id\": 1", 1),
        ];
        for text in cases {
            fs::write(&path, &text).unwrap();
            let error = load(&path).map(drop).unwrap_err().to_string();
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert_eq!(fs::read_to_string(&path).unwrap(), text, "left untouched");
        }
        fs::remove_file(&path).unwrap();
        assert!(load(&path).unwrap().is_none(), "no file: no state");
    }
}
