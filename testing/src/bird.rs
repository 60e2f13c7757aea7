//! BIRD 2 routing daemons in testbed namespaces, run from the configs lb
//! ships in `dist/bird/` with only their `define`s rewritten.
//!
//! Each [`Bird`] has a directory of its own (config, control socket, pid
//! file, what BIRD printed) and is stopped, by its process id, and its
//! directory removed when dropped, on panic too.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _};

use crate::{
    testbed::{Host, Process},
    wait::poll,
};

/// The shipped BIRD configs.
pub const DIST_BIRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/bird");

static NEXT_BIRD: AtomicU32 = AtomicU32::new(0);

/// A shipped config with its `define NAME = VALUE;` lines rewritten.
pub fn shipped_config(file: &str, defines: &[(&str, &str)]) -> anyhow::Result<String> {
    let path = Path::new(DIST_BIRD).join(file);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    set_defines(&text, defines)
}

/// Rewrites `define NAME = ...;` for each `(NAME, VALUE)`; fails if the
/// text has no such define, so that a renamed one in a shipped file shows.
pub fn set_defines(text: &str, defines: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (name, value) in defines {
        let prefix = format!("define {name} =");
        let line = lines
            .iter_mut()
            .find(|line| line.starts_with(&prefix))
            .with_context(|| format!("the config has no `define {name} = ...;`"))?;
        *line = format!("{prefix} {value};");
    }
    Ok(lines.join("\n") + "\n")
}

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One `bird -f` in a testbed host's namespace.
pub struct Bird {
    /// Declared before `dir`: BIRD is stopped (SIGTERM by its pid, then
    /// SIGKILL) before its socket and pid file go.
    process: Process,
    dir: TempDir,
    netns: String,
}

impl Bird {
    /// Starts BIRD with `config` in `host` and waits until its control
    /// socket answers. Fails with a clear message if BIRD is not
    /// installed or refuses the config.
    pub fn start(host: &Host, config: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "lbt-bird-{}-{}-{}",
            std::process::id(),
            NEXT_BIRD.fetch_add(1, Ordering::Relaxed),
            host.role
        ));
        fs::create_dir_all(&dir)?;
        let dir = TempDir(dir);
        let conf = dir.0.join("bird.conf");
        fs::write(&conf, config)?;
        let log = fs::File::create(dir.0.join("bird.log"))?;
        let mut cmd = host.command("bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.0.join("bird.ctl"))
            .arg("-P")
            .arg(dir.0.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let process = Process::spawn(&mut cmd, &format!("bird in {}", host.netns))?;
        let mut bird = Self {
            process,
            dir,
            netns: host.netns.clone(),
        };
        bird.wait_for_socket()?;
        Ok(bird)
    }

    /// The control socket answers once BIRD has read its config; BIRD
    /// exits at once on a bad one.
    fn wait_for_socket(&mut self) -> anyhow::Result<()> {
        let what = format!("bird in {} answering on its control socket", self.netns);
        // Done when it answers or when it has exited.
        let exited = poll(
            Duration::from_millis(20),
            Duration::from_secs(10),
            &what,
            || {
                if let Some(status) = self.process.child().try_wait()? {
                    return Ok(Some(Some(status)));
                }
                self.birdc(&["show", "status"]).map(|_| Some(None))
            },
        )?;
        if let Some(status) = exited {
            let log = fs::read_to_string(self.dir.0.join("bird.log")).unwrap_or_default();
            bail!(
                "bird in {} exited with {status} (is bird2 installed? `cargo xtask setup` \
                 installs it): {}",
                self.netns,
                log.trim()
            );
        }
        Ok(())
    }

    /// Runs one `birdc` command on this daemon's control socket.
    pub fn birdc(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = std::process::Command::new("birdc")
            .arg("-s")
            .arg(self.dir.0.join("bird.ctl"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running birdc (cargo xtask setup installs bird2)")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        ensure!(
            output.status.success() && !stdout.contains("Unable to connect"),
            "birdc {args:?} in {}: {}{}",
            self.netns,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(stdout)
    }

    /// Names of its BGP sessions that are Established.
    pub fn established(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .birdc(&["show", "protocols"])?
            .lines()
            .filter(|line| line.contains(" BGP ") && line.trim_end().ends_with("Established"))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect())
    }

    /// Addresses of its BFD sessions that are Up.
    pub fn bfd_up(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .birdc(&["show", "bfd", "sessions"])?
            .lines()
            .filter_map(
                |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                    [address, _iface, "Up", ..] => Some(address.to_owned()),
                    _ => None,
                },
            )
            .collect())
    }

    /// Waits up to `limit` until at least `sessions` BGP sessions are
    /// Established and as many BFD sessions Up. BIRD waits a few seconds
    /// before it first connects, and BFD comes up after BGP: until it is
    /// up, BGP would not hear of a dead peer before its hold time.
    pub fn wait_established(&self, sessions: usize, limit: Duration) -> anyhow::Result<()> {
        let what = format!(
            "{sessions} BGP sessions established with BFD up in {}",
            self.netns
        );
        poll(Duration::from_millis(100), limit, &what, || {
            if self.established()?.len() >= sessions && self.bfd_up()?.len() >= sessions {
                return Ok(());
            }
            let protocols = self.birdc(&["show", "protocols"])?;
            let bfd = self.birdc(&["show", "bfd", "sessions"])?;
            Err(anyhow::anyhow!("\n{protocols}{bfd}"))
        })
    }
}
