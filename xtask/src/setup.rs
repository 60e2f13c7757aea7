//! `cargo xtask setup`: checks for and installs what lb's build and tests
//! need, one line per step. Running it again changes nothing.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// The bpf-linker release lb is built with.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests, the demo and the bpftool recipes use.
const RUNTIME_PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "ethtool",
    "util-linux",
    "iputils-ping",
    "nginx-light",
    "systemd",
    "dnsmasq-base",
    // A worker nobody changed, on a port of its own, behind a NAT VIP.
    "redis-server",
    // libfaketime: steps the wall clock of one `lb run` in a test.
    "faketime",
    "bind9-dnsutils",
    "bird2",
    // The real reader of `lb capture`'s pcapng files.
    "tcpdump",
    // vtysh, to check the shipped FRR configs; no test starts FRR.
    "frr",
    // promtool, to check the metrics' format; no test starts Prometheus.
    "prometheus",
];

/// Debian packages only `cargo xtask bench` uses: the load generators and
/// the balancers lb is compared with.
const BENCH_PACKAGES: &[&str] = &["wrk", "iperf3", "haproxy", "nftables"];

/// Installs what the benchmarks need beyond `setup`.
pub fn bench_packages() -> anyhow::Result<()> {
    let missing: Vec<String> = BENCH_PACKAGES
        .iter()
        .filter(|p| !deb_installed(p))
        .map(|p| p.to_string())
        .collect();
    apt_install(&missing)
}

/// The cargo-deny release `cargo xtask verify` checks dependencies with.
const CARGO_DENY_VERSION: &str = "0.20.2";

/// Installs what `cargo xtask verify` needs beyond `setup`: cargo-deny
/// and the nightly's Miri (set up for the host).
pub fn verify_tools() -> anyhow::Result<()> {
    let what = format!("cargo-deny {CARGO_DENY_VERSION}");
    let current = capture("cargo", &["deny", "--version"]).unwrap_or_default();
    if current.trim() == format!("cargo-deny {CARGO_DENY_VERSION}") {
        step(&what, "present");
    } else {
        step(&what, "building (several minutes)");
        run(Command::new("cargo").args([
            "install",
            "--locked",
            &format!("cargo-deny@{CARGO_DENY_VERSION}"),
        ]))?;
    }
    nightly_component("miri")?;
    step("Miri's sysroot", "preparing");
    run(Command::new("cargo").args(["+nightly", "miri", "setup"]))
}

/// Installs whatever is missing.
pub fn setup() -> anyhow::Result<()> {
    let llvm = nightly_llvm_major()?;
    rust_src()?;
    let mut packages: Vec<String> = [
        format!("llvm-{llvm}-dev"),
        format!("libpolly-{llvm}-dev"),
        "libzstd-dev".into(),
    ]
    .into_iter()
    .chain(RUNTIME_PACKAGES.iter().map(|p| p.to_string()))
    .collect();
    packages.retain(|p| !deb_installed(p));
    apt_install(&packages)?;
    bpf_linker(llvm)
}

fn step(what: &str, outcome: &str) {
    println!("setup: {what:<42} {outcome}");
}

/// LLVM major version of the nightly toolchain that builds the XDP object.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let output = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("running `rustc +nightly -vV`; is rustup installed?")?;
    if !output.status.success() {
        bail!(
            "no nightly Rust toolchain; install one with `rustup toolchain install nightly` ({})",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let major = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    step("nightly toolchain", &format!("present (LLVM {major})"));
    Ok(major)
}

/// The nightly's `rust-src` (to build core for the BPF target) and
/// `clippy` (to lint the eBPF crate for that target).
fn rust_src() -> anyhow::Result<()> {
    let installed = capture(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    for component in ["rust-src", "clippy"] {
        install_component(&installed, component)?;
    }
    Ok(())
}

/// The nightly's `component`, installed unless it is.
fn nightly_component(component: &str) -> anyhow::Result<()> {
    let installed = capture(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    install_component(&installed, component)
}

fn install_component(installed: &str, component: &str) -> anyhow::Result<()> {
    let what = format!("{component} for nightly");
    if installed.lines().any(|l| l.starts_with(component)) {
        step(&what, "present");
        return Ok(());
    }
    step(&what, "installing");
    run(Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]))
}

fn deb_installed(package: &str) -> bool {
    capture("dpkg-query", &["-W", "-f=${Status}", package])
        .map(|status| status.contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_install(packages: &[String]) -> anyhow::Result<()> {
    if packages.is_empty() {
        step("Debian packages", "present");
        return Ok(());
    }
    let list = packages.join(" ");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root
        || Command::new("apt-get")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
    {
        bail!("missing packages: {list}; install them as root with `apt-get update && apt-get install -y {list}`");
    }
    step("Debian packages", &format!("installing {list}"));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Installs bpf-linker built against the nightly's LLVM unless the one on
/// PATH already links that LLVM.
fn bpf_linker(llvm: u32) -> anyhow::Result<()> {
    let what = format!("bpf-linker {BPF_LINKER_VERSION} (LLVM {llvm})");
    let current = capture("bpf-linker", &["--version"]).unwrap_or_default();
    let links_llvm = which("bpf-linker")
        .and_then(|path| capture("ldd", &[&path]).ok())
        .is_some_and(|libs| libs.contains(&format!("libLLVM.so.{llvm}")));
    if current.trim() == format!("bpf-linker {BPF_LINKER_VERSION}") && links_llvm {
        step(&what, "present");
        return Ok(());
    }
    step(&what, "building (a few minutes)");
    run(Command::new("cargo")
        .args([
            "install",
            "--force",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm}"),
        ])
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}")))
}

fn which(tool: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
}

fn capture(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
