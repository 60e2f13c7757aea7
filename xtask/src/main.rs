//! `cargo xtask`: the one entry point a newcomer needs.

mod docs;
mod setup;
mod verify;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set up, build, test and demo lb")]
struct Xtask {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing lb needs (idempotent).
    Setup,
    /// Build the `lb` binary (the XDP object is embedded in it).
    Build {
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
    },
    /// Run every test of every crate: unit, property and end-to-end (the
    /// end-to-end ones need root).
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter or
        /// `-p lb-testing --test NAME`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run lb on a sandbox of network namespaces and show what it does (needs root).
    Demo {
        /// How lb reaches the workers: dsr (on its link), or ipip or gue
        /// (behind a router, each running `lb decap`).
        #[arg(long, default_value = "dsr")]
        forward: String,
    },
    /// Write shell completions and the man page to target/dist (built from
    /// the `lb` binary's own command line).
    Dist,
    /// Fuzz the data plane with random and mutated frames (needs root).
    Fuzz {
        /// Frames to run.
        #[arg(long, default_value_t = 2_000_000)]
        iterations: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Build lb as of an older commit and upgrade from it to this tree's lb
    /// under load, on real namespaces: no request may fail (needs root).
    UpgradeCheck {
        /// The commit to upgrade from.
        #[arg(long, default_value = "HEAD~1")]
        from: String,
    },
    /// Measure lb against floors and references; writes docs/BENCHMARKS.md (needs root).
    Bench {
        /// A short run that checks the bench works; rough figures.
        #[arg(long)]
        quick: bool,
        /// Where to write the report.
        #[arg(long, default_value = "docs/BENCHMARKS.md")]
        out: String,
    },
    /// Check the data plane against its executable specification
    /// (docs/VERIFICATION.md; needs root).
    Verify {
        /// Deeper: more conformance cases, the models to their long bound.
        #[arg(long)]
        long: bool,
        /// Instead, put each seeded bug into a scratch copy of the tree and
        /// check that the conformance check catches it.
        #[arg(long)]
        mutants: bool,
    },
    /// Write docs/cli.md from `lb man --markdown`, then check every
    /// relative link in README.md and docs/.
    Docs {
        /// Write nothing: fail if docs/cli.md is stale (and on broken links).
        #[arg(long)]
        check: bool,
    },
}

fn main() {
    if let Err(error) = run(Xtask::parse().command) {
        eprintln!("xtask: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::setup(),
        Task::Build { release } => {
            setup::setup()?;
            cargo(&build_args(release, &[LB]))
        }
        Task::Test { args } => {
            setup::setup()?;
            test(args)
        }
        Task::Dist => {
            setup::setup()?;
            cargo(&build_args(true, &[LB]))?;
            dist()
        }
        Task::Fuzz {
            iterations,
            seconds,
        } => {
            setup::setup()?;
            cargo(&build_args(true, &[("lb-testing", "lb-fuzz")]))?;
            status(
                Command::new(workspace_root().join("target/release/lb-fuzz"))
                    .arg("--iterations")
                    .arg(iterations.to_string())
                    .arg("--seconds")
                    .arg(seconds.to_string()),
            )
        }
        Task::Bench { quick, out } => {
            setup::setup()?;
            setup::bench_packages()?;
            cargo(&build_args(true, &[LB, ("lb-bench", "lb-bench")]))?;
            let mut bench = Command::new(workspace_root().join("target/release/lb-bench"));
            bench.arg("--out").arg(&out).current_dir(workspace_root());
            if quick {
                bench.arg("--quick");
            }
            if let Ok(commit) = capture_git_head() {
                bench.env("LB_BENCH_COMMIT", commit);
            }
            status(&mut bench)
        }
        Task::UpgradeCheck { from } => {
            setup::setup()?;
            upgrade_check(&from)
        }
        Task::Verify { long, mutants } => {
            setup::setup()?;
            setup::verify_tools()?;
            if mutants {
                verify::mutants()
            } else {
                verify::verify(long)
            }
        }
        Task::Docs { check } => {
            setup::setup()?;
            docs::docs(check)
        }
        Task::Demo { forward } => {
            setup::setup()?;
            cargo(&build_args(false, &[LB, ("lb-testing", "lb-demo")]))?;
            status(
                Command::new(workspace_root().join("target/debug/lb-demo"))
                    .args(["--forward", &forward]),
            )
        }
    }
}

/// The product's binary, as (package, binary).
const LB: (&str, &str) = ("lb-userspace", "lb");

/// The eBPF crates: built for bpfel-unknown-none by build scripts, never
/// for the host.
const EBPF_PACKAGES: [&str; 2] = ["lb-ebpf", "floors-ebpf"];

/// `cargo build` of the given (package, binary) pairs.
fn build_args(release: bool, binaries: &[(&str, &str)]) -> Vec<String> {
    let mut args = vec!["build".to_owned()];
    for (package, binary) in binaries {
        args.extend(["--package".into(), (*package).into()]);
        args.extend(["--bin".into(), (*binary).into()]);
    }
    if release {
        args.push("--release".into());
    }
    args
}

/// Builds `lb` (the end-to-end tests run it, and cargo builds a binary
/// only for its own package's tests), then tests every host crate of the
/// workspace, or the packages `args` name.
fn test(args: Vec<String>) -> anyhow::Result<()> {
    let release = args.iter().any(|arg| arg == "--release" || arg == "-r");
    cargo(&build_args(release, &[LB]))?;
    let mut test_args = vec!["test".to_owned()];
    let names_packages = args
        .iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg.starts_with("-p") || arg.starts_with("--package"));
    if !names_packages {
        test_args.push("--workspace".into());
        for package in EBPF_PACKAGES {
            test_args.extend(["--exclude".into(), package.into()]);
        }
    }
    test_args.extend(args);
    cargo(&test_args)
}

fn cargo(args: &[String]) -> anyhow::Result<()> {
    status(cargo_command().args(args).current_dir(workspace_root()))
}

/// The cargo that runs xtask.
fn cargo_command() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Completions for bash, zsh and fish and the man pages, from `lb` itself.
fn dist() -> anyhow::Result<()> {
    let lb = workspace_root().join("target/release/lb");
    let out = workspace_root().join("target/dist");
    std::fs::create_dir_all(out.join("completions"))?;
    let files = [
        (vec!["completions", "bash"], "completions/lb.bash"),
        (vec!["completions", "zsh"], "completions/_lb"),
        (vec!["completions", "fish"], "completions/lb.fish"),
    ];
    for (args, file) in files {
        let output = Command::new(&lb).args(&args).output()?;
        anyhow::ensure!(output.status.success(), "lb {args:?} failed");
        std::fs::write(out.join(file), output.stdout)?;
        println!("dist: wrote target/dist/{file}");
    }
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    status(Command::new(&lb).arg("man").arg("--out-dir").arg(&man))?;
    println!("dist: wrote target/dist/man/lb.1 and a page per command");
    Ok(())
}

/// Builds `lb` as of commit `from` in a worktree of its own (sharing the
/// already built dependencies), then runs the upgrade test with it.
fn upgrade_check(from: &str) -> anyhow::Result<()> {
    let root = workspace_root();
    let tree = root.join("target/upgrade-from/tree");
    let target = root.join("target/upgrade-from/target");
    let git = |args: &[&str]| status(Command::new("git").args(args).current_dir(&root));
    let _ = std::fs::remove_dir_all(&tree);
    git(&["worktree", "prune"])?;
    git(&["worktree", "add", "--detach", &tree.to_string_lossy(), from])?;
    let built = build_in(&tree, &target, &root);
    git(&["worktree", "remove", "--force", &tree.to_string_lossy()])?;
    built?;
    let old = target.join("debug/lb");
    println!("upgrade-check: upgrading from {from} ({})", old.display());
    cargo(&build_args(false, &[LB]))?;
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    status(
        Command::new(cargo_bin)
            .args([
                "test",
                "--package",
                "lb-testing",
                "--test",
                "hitless_e2e",
                "an_upgrade_from_an_older_lb_binary",
                "--",
                "--ignored",
                "--nocapture",
            ])
            .env("LB_UPGRADE_FROM", &old)
            .current_dir(&root),
    )
}

/// Builds `lb` in `tree` into `target`, seeded with hard links to this
/// tree's dependency builds so that only lb's own crates compile.
fn build_in(
    tree: &std::path::Path,
    target: &std::path::Path,
    root: &std::path::Path,
) -> anyhow::Result<()> {
    seed_target(target, root)?;
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    status(
        Command::new(cargo_bin)
            .args(["build", "--package", "lb-userspace", "--bin", "lb"])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(tree),
    )
}

/// Seeds a new target directory with hard links to this tree's debug
/// builds, so that a build elsewhere compiles only what differs.
fn seed_target(target: &std::path::Path, root: &std::path::Path) -> anyhow::Result<()> {
    if !target.exists() && root.join("target/debug").exists() {
        std::fs::create_dir_all(target)?;
        // Hard links: cargo only adds files next to the fresh ones.
        let _ = Command::new("cp")
            .args(["-al"])
            .arg(root.join("target/debug"))
            .arg(target)
            .status();
    }
    Ok(())
}

fn capture_git_head() -> anyhow::Result<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(workspace_root())
        .output()?;
    anyhow::ensure!(output.status.success(), "not a git checkout");
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}
