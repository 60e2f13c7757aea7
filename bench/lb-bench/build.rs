//! Builds the floor programs (floors-ebpf) for bpfel-unknown-none and
//! leaves the object in OUT_DIR, where `floors.rs` embeds it: the same way
//! lb-userspace's build script builds lb's own program. Builds lb's program
//! once more without its capture hook, the reference for what the idle
//! hook costs.

use anyhow::{bail, Context as _};

fn main() -> anyhow::Result<()> {
    let missing: Vec<&str> = ["bpf-linker", "rustup"]
        .into_iter()
        .filter(|tool| which(tool).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "building the floor programs needs {}; run `cargo xtask setup` to install it",
            missing.join(" and ")
        );
    }
    let floors = aya_build::Package {
        name: "floors-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../floors-ebpf"),
        ..Default::default()
    };
    let lb_without_capture = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../../lb-ebpf"),
        no_default_features: true,
        features: &[],
    };
    // aya-build watches floors-ebpf itself; the floors also build on these.
    for dir in [
        "/../floors-common/src",
        "/../../lb-ebpf/src",
        "/../../lb-common/src",
    ] {
        println!("cargo:rerun-if-changed={}{dir}", env!("CARGO_MANIFEST_DIR"));
    }
    // The nested cargo's progress lines would all surface as warnings.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf([floors, lb_without_capture], aya_build::Toolchain::Nightly)
        .context("building floors-ebpf or lb-ebpf failed; `cargo xtask setup` installs the nightly toolchain pieces and bpf-linker it needs")
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}
