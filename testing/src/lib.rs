//! lb's test rigs and harnesses, kept out of the product: network namespace
//! testbeds ([`testbed`]) and the ready-made L2 DSR sandbox on them
//! ([`rig`]) and NAT sandbox ([`nat_rig`]), test frames ([`frames`]), test runs of lb's program with
//! BPF_PROG_TEST_RUN ([`testrun`]), the packet fuzzer ([`packet_fuzz`]), and
//! balancers behind a BGP router doing ECMP ([`bgp`]), with BIRD daemons run
//! from the shipped configs ([`bird`]). The end-to-end tests in `tests/`,
//! `lb-demo`, `lb-fuzz` and the benchmarks are built on them, and wait for
//! what they expect with [`wait::wait_until`].

use std::{io::Write as _, sync::OnceLock};

use anyhow::Context as _;

pub mod bgp;
pub mod bird;
pub mod conformance;
pub mod frames;
pub mod nat_rig;
pub mod packet_fuzz;
pub mod rig;
pub mod temp;
pub mod testbed;
pub mod testrun;
pub mod wait;

/// The `lb` binary the tests and the demo run: `$LB_EXE` if set, else the
/// `lb` in the running executable's directory or the one above it (a test
/// binary lives in `target/<profile>/deps/`, `lb` in `target/<profile>/`).
/// Cargo builds `lb` only for its own package, so `cargo xtask test` builds
/// it before the tests; anyone running them with cargo directly builds it
/// first too (`cargo build -p lb-userspace --bin lb`). Panics if there is
/// none.
pub fn lb_exe() -> &'static str {
    static LB: OnceLock<String> = OnceLock::new();
    LB.get_or_init(|| find_lb().unwrap_or_else(|error| panic!("{error:#}")))
}

fn find_lb() -> anyhow::Result<String> {
    let found = match std::env::var_os("LB_EXE") {
        Some(path) => path.into(),
        None => {
            let exe = std::env::current_exe().context("locating this executable")?;
            exe.ancestors()
                .skip(1)
                .take(2)
                .map(|dir| dir.join("lb"))
                .find(|candidate| candidate.is_file())
                .with_context(|| {
                    format!(
                        "no lb binary next to {} or one directory up: build it first \
                         (cargo build -p lb-userspace --bin lb; cargo xtask test does) \
                         or set LB_EXE",
                        exe.display()
                    )
                })?
        }
    };
    found
        .into_os_string()
        .into_string()
        .map_err(|path| anyhow::anyhow!("the lb binary's path is not UTF-8: {path:?}"))
}

/// Whether this process may build rigs and load XDP programs. If it may
/// not, says so for the calling test (named after its thread, as the test
/// harness names them), so that a non-root `cargo test` lists what it
/// skipped.
pub fn has_root() -> bool {
    if lb_userspace::kernel::privileges::can_manage_xdp() {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    // Written to stderr directly: the harness captures print! and eprint!
    // of passing tests, and this line is for the person running them.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: needs root (CAP_BPF, CAP_NET_ADMIN): run cargo xtask test as root"
    );
    false
}

/// Returns from the calling test, saying it was skipped, unless the
/// process may build rigs and load XDP programs ([`has_root`]). The first
/// line of every test that needs root.
#[macro_export]
macro_rules! needs_root {
    () => {
        if !$crate::has_root() {
            return;
        }
    };
}
