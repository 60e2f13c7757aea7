//! `lb run` refuses bad input with one clear line and a non-zero exit.

use std::process::Command;

use lb_testing::lb_exe;

fn lb_fails(cmd: &mut Command) -> String {
    let output = cmd.output().expect("running lb");
    assert!(!output.status.success(), "lb succeeded: {output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line, got {stderr:?}"
    );
    stderr
}

#[test]
fn run_on_a_missing_interface_says_so() {
    let stderr = lb_fails(Command::new(lb_exe()).args([
        "run",
        "--iface",
        "nosuchif0",
        "--pin-dir",
        format!("/sys/fs/bpf/lb-missing-if-{}", std::process::id()).as_str(),
    ]));
    assert!(
        stderr.contains("no network interface named `nosuchif0`"),
        "{stderr}"
    );
    assert!(stderr.contains("ip link"), "tells where to look: {stderr}");
}

/// Drops every capability (the user stays root, so the binary is still
/// readable) and checks that `lb run` asks for them.
#[test]
fn run_without_privileges_asks_for_root() {
    let stderr = lb_fails(
        Command::new("setpriv")
            .args([
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--bounding-set=-all",
                "--",
            ])
            .args([
                lb_exe(),
                "run",
                "--iface",
                "lo",
                "--pin-dir",
                format!("/sys/fs/bpf/lb-no-privileges-{}", std::process::id()).as_str(),
            ]),
    );
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(stderr.contains("sudo"), "{stderr}");
}

#[test]
fn stats_without_a_running_instance_explains() {
    let stderr = lb_fails(Command::new(lb_exe()).args([
        "stats",
        "--pin-dir",
        format!("/sys/fs/bpf/lb-nothing-here-{}", std::process::id()).as_str(),
    ]));
    assert!(stderr.contains("is `lb run` attached"), "{stderr}");
}

#[test]
fn unknown_xdp_mode_is_rejected() {
    let output = Command::new(lb_exe())
        .args(["run", "--iface", "lo", "--xdp-mode", "turbo"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("lb: error: invalid value 'turbo'"),
        "{stderr}"
    );
}
