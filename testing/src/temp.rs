//! Files a test makes outside its testbed, removed when the test ends,
//! whether it passed or panicked.

use std::path::{Path, PathBuf};

/// A path under the temporary directory, unique to this process and
/// `name`, whose file is removed on drop.
pub struct TempFile(PathBuf);

impl TempFile {
    /// `lbt-PID-NAME` in the temporary directory; nothing is created.
    pub fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("lbt-{}-{name}", std::process::id())))
    }
}

impl std::ops::Deref for TempFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempFile {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
