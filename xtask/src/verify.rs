//! `cargo xtask verify`: the data plane against its executable
//! specification, and the seeded bugs that check has to catch
//! (docs/VERIFICATION.md).

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::{cargo_command, seed_target, status, workspace_root};

/// Conformance cases at CI's budget, and with `--long`.
const CASES: u32 = 32;
const LONG_CASES: u32 = 400;
/// The generator's seed for the seeded bugs' runs.
const MUTANT_SEED: u64 = 1;

/// Runs the checks; `long` deeper.
pub fn verify(long: bool) -> anyhow::Result<()> {
    let cases = if long { LONG_CASES } else { CASES };
    step(
        &format!("conformance of the data plane to its specification, {cases} cases"),
        &["test", "-p", "lb-testing", "--test", "conformance"],
        &[("LB_CONFORMANCE_CASES", cases.to_string())],
    )?;
    if long {
        step(
            "the handover and announcement models, to the long bound",
            &["run", "--release", "-p", "lb-models", "--", "--long"],
            &[],
        )?;
    } else {
        step(
            "the handover and announcement models, to CI's bound",
            &["test", "-p", "lb-models"],
            &[],
        )?;
    }
    step(
        "the state file under a crash at every step",
        &["test", "-p", "lb-userspace", "--lib", "crash_"],
        &[],
    )?;
    step(
        "the controller's actor under shuttle's schedules",
        &["test", "-p", "lb-userspace", "--lib", "shuttle_"],
        &[],
    )?;
    step(
        "dependencies: licenses, bans, duplicate versions, sources",
        &[
            "deny",
            "--all-features",
            "check",
            "licenses",
            "bans",
            "sources",
        ],
        &[],
    )?;
    step(
        "lb-common's tests under Miri",
        &[
            "+nightly",
            "miri",
            "test",
            "-p",
            "lb-common",
            "--",
            // 10,000 rounds: minutes under Miri; its arithmetic is
            // lb-common's and runs under the other tests too.
            "--skip",
            "an_update_equals_a_recomputation",
        ],
        &[],
    )?;
    if long {
        step(
            "lb-userspace's pure parts under Miri",
            &[
                "+nightly",
                "miri",
                "test",
                "-p",
                "lb-userspace",
                "--lib",
                "--",
                "desired::maglev::tests::default_size",
                "desired::maglev::tests::no_members",
                "duration",
                "dataplane::memory",
                "desired::options",
                "desired::config",
                "commands::capture",
                "service",
            ],
            &[
                // proptest asks for the working directory.
                ("MIRIFLAGS", "-Zmiri-disable-isolation".into()),
                ("PROPTEST_CASES", "4".into()),
            ],
        )?;
    }
    Ok(())
}

fn step(what: &str, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<()> {
    println!("verify: {what}");
    // A toolchain (`+nightly`) is chosen by rustup's cargo, not by the
    // cargo that runs xtask.
    let mut command = if args.first().is_some_and(|a| a.starts_with('+')) {
        Command::new("cargo")
    } else {
        cargo_command()
    };
    command.args(args).current_dir(workspace_root());
    for (name, value) in env {
        command.env(name, value);
    }
    status(&mut command).with_context(|| format!("verify: {what}"))
}

/// A seeded bug: `from`, which must occur exactly once in `file`, becomes
/// `to`.
struct Mutant {
    name: &'static str,
    file: &'static str,
    from: &'static str,
    to: &'static str,
}

/// The seeded bugs, each one the data plane could plausibly have.
const MUTANTS: [Mutant; 16] = [
    Mutant {
        name: "least-load takes the more loaded candidate",
        file: "lb-common/src/decide.rs",
        from: "second_load < first_load",
        to: "second_load > first_load",
    },
    Mutant {
        name: "a flow expires a second early",
        file: "lb-common/src/decide.rs",
        from: "> u64::from(idle_timeout_s) * NS_PER_S",
        to: "> u64::from(idle_timeout_s).saturating_sub(1) * NS_PER_S",
    },
    Mutant {
        name: "a flow follows a worker slot whose generation changed",
        file: "lb-common/src/balancer.rs",
        from: "&& self.generation == generation",
        to: "&& generation == generation",
    },
    Mutant {
        name: "an echo reply's checksum is not updated",
        file: "lb-ebpf/src/icmp.rs",
        from: "header[2] = hi;\n    header[3] = lo;",
        to: "let _ = (hi, lo);",
    },
    Mutant {
        name: "the outer IPv4 header's checksum is left zero",
        file: "lb-common/src/encap.rs",
        from: "header.check = ipv4_checksum(&header).to_be_bytes();",
        to: "let _ = ipv4_checksum(&header);",
    },
    Mutant {
        name: "GUE's destination port in the wrong byte order",
        file: "lb-common/src/encap.rs",
        from: "dport: gue_port_be.to_ne_bytes(),",
        to: "dport: gue_port_be.to_be_bytes(),",
    },
    Mutant {
        name: "TCP's destination port read in the wrong byte order",
        file: "lb-common/src/packet.rs",
        from: "packet.dport = u16::from_ne_bytes(tcp.dport);",
        to: "packet.dport = u16::from_be_bytes(tcp.dport);",
    },
    Mutant {
        name: "a sticky session is not refreshed when it is used",
        file: "lb-ebpf/src/schedule.rs",
        from: "session.last_ns = now;",
        to: "let _ = (&session, now);",
    },
    Mutant {
        name: "a draining worker takes new flows",
        file: "lb-common/src/balancer.rs",
        from: "let unusable = BACKEND_DOWN | BACKEND_DRAINING | BACKEND_UNREACHABLE;",
        to: "let unusable = BACKEND_DOWN | BACKEND_UNREACHABLE;",
    },
    Mutant {
        name: "NAT leaves the TTL as it was",
        file: "lb-ebpf/src/nat.rs",
        from: "header[8] = ttl - 1;",
        to: "header[8] = ttl;",
    },
    Mutant {
        name: "a full NAT claim takes a port another connection holds",
        file: "lb-ebpf/src/nat.rs",
        from: "LB_NAT.insert(&key, &*entry, BPF_NOEXIST.into())",
        to: "LB_NAT.insert(&key, &*entry, BPF_ANY.into())",
    },
    Mutant {
        name: "a nat reply leaves from the worker's port, not the VIP's",
        file: "lb-ebpf/src/nat.rs",
        from: "port: value.vip_port,",
        to: "port: key.sport,",
    },
    Mutant {
        name: "a full NAT connection stays established after its worker's FIN",
        file: "lb-common/src/nat.rs",
        from: "} else if tcp_flags & FIN_OR_RST != 0 || state == NAT_CLOSING {",
        to: "} else if state == NAT_CLOSING {",
    },
    Mutant {
        name: "an ICMP error to a NAT worker still quotes the VIP",
        file: "lb-ebpf/src/nat_icmp.rs",
        from: "inner_src: Some(worker),",
        to: "inner_src: None,",
    },
    Mutant {
        name: "a \"too big\" answer advertises the MTU without the tunnel's headers",
        file: "lb-ebpf/src/transmit.rs",
        from: "overhead: overhead(backend) as u16,",
        to: "overhead: 0,",
    },
    Mutant {
        name: "\"too big\" answers never run out of tokens",
        file: "lb-ebpf/src/pmtu.rs",
        from: "budget.tokens = budget.tokens.checked_sub(1)?;",
        to: "budget.tokens = budget.tokens.saturating_sub(1);",
    },
];

/// Puts each seeded bug in turn into a scratch copy of the tree and runs
/// the conformance check there: each must fail it. Fails if one is missed.
pub fn mutants() -> anyhow::Result<()> {
    let root = workspace_root();
    let scratch = root.join("target/mutants/tree");
    copy_tree(&root, &scratch)?;
    let target = root.join("target/mutants/target");
    seed_target(&target, &root)?;
    // The control: without a seeded bug the same run must pass, or a
    // "caught" would mean nothing.
    anyhow::ensure!(
        run_in(&scratch, &target)? == Outcome::Passed,
        "the conformance check fails without a seeded bug: fix that first"
    );
    println!("verify: without a seeded bug the check passes");
    let mut missed = Vec::new();
    for mutant in &MUTANTS {
        let caught = try_mutant(&scratch, &target, mutant)?;
        println!(
            "verify: mutant \"{}\": {}",
            mutant.name,
            if caught { "caught" } else { "MISSED" }
        );
        if !caught {
            missed.push(mutant.name);
        }
    }
    if !missed.is_empty() {
        bail!(
            "the conformance check missed {} seeded bug(s): {}",
            missed.len(),
            missed.join("; ")
        );
    }
    println!("verify: every one of {} seeded bugs caught", MUTANTS.len());
    Ok(())
}

/// The tree's files (committed or not, but not ignored) copied to `to`.
fn copy_tree(root: &Path, to: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to)?;
    let files = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()?;
    anyhow::ensure!(files.status.success(), "git ls-files failed");
    for name in files.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name)?;
        let (from, dest) = (root.join(name), to.join(name));
        if !from.is_file() {
            continue;
        }
        std::fs::create_dir_all(dest.parent().expect("a file has a directory"))?;
        std::fs::copy(&from, &dest).with_context(|| format!("copying {name}"))?;
    }
    Ok(())
}

/// Whether the conformance check fails with `mutant` in the scratch tree
/// (the file is restored after).
fn try_mutant(scratch: &Path, target: &Path, mutant: &Mutant) -> anyhow::Result<bool> {
    let path = scratch.join(mutant.file);
    let original = std::fs::read_to_string(&path)?;
    let found = original.matches(mutant.from).count();
    anyhow::ensure!(
        found == 1,
        "mutant \"{}\" finds its text {found} times in {}: update the list",
        mutant.name,
        mutant.file
    );
    std::fs::write(&path, original.replacen(mutant.from, mutant.to, 1))?;
    let result = run_in(scratch, target);
    std::fs::write(&path, original)?;
    Ok(result? == Outcome::Failed)
}

/// How a conformance run in the scratch tree ended.
#[derive(PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
}

fn run_in(scratch: &Path, target: &Path) -> anyhow::Result<Outcome> {
    let args = ["test", "-p", "lb-testing", "--test", "conformance"];
    let mut build = cargo_command();
    build.args(args).arg("--no-run");
    build.env("CARGO_TARGET_DIR", target).current_dir(scratch);
    status(&mut build).context("building the mutant")?;
    let mut run = cargo_command();
    run.args(args)
        .env("CARGO_TARGET_DIR", target)
        .env("LB_CONFORMANCE_CASES", CASES.to_string())
        .env("LB_CONFORMANCE_SHRINK", "0")
        // One seed, so that whether a bug is caught never depends on luck.
        .env("LB_CONFORMANCE_SEED", MUTANT_SEED.to_string())
        .current_dir(scratch);
    let outcome = run.output()?;
    Ok(if outcome.status.success() {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}
