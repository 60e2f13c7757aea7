//! `lb run --max-memory`: what the maps would take beyond it is refused in
//! one line, at start for the flow table, at `vip add` for the Maglev
//! tables, before the kernel or the OOM killer says no. Needs root.

use std::{path::Path, time::Duration};

use lb_testing::{lb_exe, rig::Rig};

#[test]
fn a_flow_table_beyond_the_budget_is_refused_at_start() {
    lb_testing::needs_root!();
    let rig = Rig::new(Path::new(lb_exe()), 1, &[]).unwrap();
    let pins = format!("/sys/fs/bpf/lb-memory-test-{}", std::process::id());
    let (started, stderr) = rig
        .client
        .run_lb_expecting_refusal(
            lb_exe().as_ref(),
            &[
                "--iface",
                "eth0",
                "--max-memory",
                "16M",
                "--max-flows",
                "1000000",
                "--pin-dir",
                &pins,
            ],
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(!started, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--max-flows 1000000"), "{stderr}");
    assert!(stderr.contains("more than --max-memory 16 MiB"), "{stderr}");
}

#[test]
fn maglev_tables_beyond_the_budget_are_refused_in_one_line() {
    lb_testing::needs_root!();
    let args = [
        "--max-memory",
        "64M",
        "--max-flows",
        "1000",
        "--max-nat-flows",
        "1000",
    ];
    let rig = Rig::new(Path::new(lb_exe()), 1, &args).unwrap();
    let mut accepted = 0;
    let refusal = (100..120).find_map(|last| {
        let vip = format!("192.0.2.{last}:80/tcp");
        let output = rig
            .lb
            .cli(&[
                "vip",
                "add",
                &vip,
                "--table-size",
                "1048573",
                "--health",
                "none",
            ])
            .unwrap();
        if output.status.success() {
            accepted += 1;
            return None;
        }
        Some(String::from_utf8_lossy(&output.stderr).into_owned())
    });
    let refusal = refusal.expect("twenty tables of 8 MiB fit in 64 MiB");
    assert!(accepted >= 1, "{refusal}");
    assert_eq!(refusal.trim().lines().count(), 1, "{refusal}");
    assert!(
        refusal.contains("the Maglev tables would need about"),
        "{refusal}"
    );
    assert!(refusal.contains("--max-memory"), "{refusal}");
    let listed = rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap();
    let vips: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        vips.as_array().unwrap().len(),
        accepted,
        "the refused one changed nothing"
    );
}
