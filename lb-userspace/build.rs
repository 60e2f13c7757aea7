//! Builds lb-ebpf for bpfel-unknown-none and leaves the objects in OUT_DIR,
//! where `object.rs` embeds them.

use anyhow::{bail, Context as _};

fn main() -> anyhow::Result<()> {
    let missing: Vec<&str> = ["bpf-linker", "rustup"]
        .into_iter()
        .filter(|tool| which(tool).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "building lb's XDP program needs {}; run `cargo xtask setup` to install it",
            missing.join(" and ")
        );
    }
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-common/src")
    );
    // Under `cargo miri` the nested cargo would inherit Miri as its
    // compiler wrapper, which refuses to run outside `cargo miri`; the
    // eBPF object is built by the plain compiler either way.
    if std::env::var_os("RUSTC_WRAPPER")
        .is_some_and(|w| std::path::Path::new(&w).ends_with("cargo-miri"))
    {
        std::env::remove_var("RUSTC_WRAPPER");
    }
    // The nested cargo's progress lines would all surface as warnings.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly)
        .context("building lb-ebpf failed; `cargo xtask setup` installs the nightly toolchain pieces and bpf-linker it needs")
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}
