//! An instance's pins and attachment hold against other users, mistakes
//! and mismatched restarts, and bad input is refused: the pin directory
//! can't be pre-created, locked or emptied by an unprivileged user, a
//! removed link pin is restored by the controller, adoption refuses what
//! doesn't match (interface, XDP mode, table size) unless --force applies
//! it, and addresses that are no single host are refused. Needs root.

use std::{
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use lb_testing::{
    lb_exe,
    rig::{Rig, VIP4},
    testbed::{Host, LbProcess},
    wait::wait_until,
};

const VIP: &str = "192.0.2.100:80/tcp";

/// `lb run` in `host` with `args`, expected to fail: its one-line error.
fn refused_run(host: &Host, args: &[&str]) -> String {
    let (started, stderr) = host
        .run_lb_expecting_refusal(lb_exe().as_ref(), args, Duration::from_secs(20))
        .unwrap();
    assert!(!started, "lb run {args:?} was accepted");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    lines[0].to_owned()
}

/// Runs `args` as the unprivileged user nobody; whether it succeeded.
fn as_nobody(args: &[&str]) -> bool {
    Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn answers(rig: &Rig, count: usize) -> usize {
    rig.spread(IpAddr::V4(VIP4), count)
        .map_or(0, |spread| spread.values().sum())
}

#[test]
fn another_user_can_neither_plant_lock_nor_empty_the_pin_directory() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(Path::new(lb_exe()), 2, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let pin_dir = rig.lb.pin_dir().to_owned();
    let pins = pin_dir.to_string_lossy().into_owned();
    // lb made its pin directory root's alone.
    assert!(!as_nobody(&["ls", &pins]), "nobody could list {pins}");
    assert!(
        !as_nobody(&["flock", "-n", &pins, "true"]),
        "nobody could lock {pins}"
    );
    assert!(!as_nobody(&["rm", "-f", &format!("{pins}/link")]));

    // A removed link pin (root's mistake) no longer detaches the program:
    // the controller holds the link, notices and pins it again.
    std::fs::remove_file(pin_dir.join("link")).unwrap();
    assert_eq!(
        answers(&rig, 10),
        10,
        "forwarding stopped with the pin gone"
    );
    wait_until(Duration::from_secs(5), "the link pinned again", || {
        pin_dir.join("link").exists()
    });
    let status = rig.lb.status_json().unwrap();
    assert_eq!(status["attached"], true, "{status}");
    assert!(rig.lb.log().contains("pinned it again"), "{}", rig.lb.log());

    // A pin directory that another user created first is refused. The
    // user needs a bpffs where anyone may create directories: a 1777 one of
    // the test's own, whatever mode the machine's has.
    let open_bpffs = rig.bed.own_bpffs("1777").unwrap();
    let planted = open_bpffs.join("planted");
    let planted_text = planted.to_string_lossy().into_owned();
    assert!(
        as_nobody(&["mkdir", "-p", &planted_text]),
        "nobody could not create {planted_text} on a 1777 bpffs"
    );
    let socket = rig.bed.socket("planted");
    let error = refused_run(
        &rig.balancer,
        &[
            "--iface",
            "eth0",
            "--pin-dir",
            &planted_text,
            "--socket",
            &socket.to_string_lossy(),
            "--state-file",
            &socket.with_extension("json").to_string_lossy(),
        ],
    );
    assert!(error.contains("belongs to uid 65534"), "{error}");
    assert_eq!(
        std::fs::read_dir(&planted).unwrap().count(),
        0,
        "pins were made"
    );
}

/// `lb run` flags for another start on the rig's instance.
fn same_instance(rig: &Rig, extra: &[&str]) -> Vec<String> {
    let socket = rig.lb.state_file().with_extension("sock");
    let mut args: Vec<String> = [
        "--iface",
        "eth0",
        "--pin-dir",
        &rig.lb.pin_dir().to_string_lossy(),
        "--socket",
        &socket.to_string_lossy(),
        "--state-file",
        &rig.lb.state_file().to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn adoption_refuses_another_mode_or_size_unless_forced() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(Path::new(lb_exe()), 2, &["--max-flows", "1000"]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    rig.lb.stop().unwrap();
    let args = |extra: &[&str]| same_instance(&rig, extra);
    let refuse = |extra: &[&str]| {
        let args = args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused_run(&rig.balancer, &args)
    };
    let error = refuse(&["--max-flows", "5000"]);
    assert!(error.contains("--max-flows 1000, not 5000"), "{error}");
    let error = refuse(&["--max-flows", "1000", "--xdp-mode", "generic"]);
    assert!(error.contains("--xdp-mode native, not generic"), "{error}");
    assert_eq!(
        answers(&rig, 10),
        10,
        "a refused start disturbed forwarding"
    );

    rig.start_lb(&["--max-flows", "5000", "--force"]).unwrap();
    assert!(
        rig.lb.takeover_line.contains("replaced"),
        "{}",
        rig.lb.takeover_line
    );
    assert_eq!(rig.lb.status_json().unwrap()["max_flows"], 5000);
    assert_eq!(answers(&rig, 10), 10);
    rig.lb.stop().unwrap();

    rig.start_lb(&["--max-flows", "5000", "--xdp-mode", "generic", "--force"])
        .unwrap();
    assert!(
        rig.lb.takeover_line.contains("attached again"),
        "{}",
        rig.lb.takeover_line
    );
    let link = rig
        .balancer
        .run("ip", &["-d", "link", "show", "eth0"])
        .unwrap();
    assert!(link.contains("xdpgeneric"), "{link}");
    assert_eq!(rig.lb.status_json().unwrap()["xdp_mode"], "generic");
    assert_eq!(answers(&rig, 10), 10);
}

/// The error line of a CLI command expected to fail.
fn refused_cli(lb: &LbProcess, args: &[&str]) -> String {
    let output = lb.cli(args).unwrap();
    assert!(!output.status.success(), "lb {args:?} was accepted");
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}

#[test]
fn limits_are_set_at_start_enforced_and_kept_on_adoption() {
    lb_testing::needs_root!();
    let limits = ["--max-vips", "2", "--max-workers", "3"];
    let mut rig = Rig::new(Path::new(lb_exe()), 2, &limits).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let other = "192.0.2.101:80/tcp";
    let worker = rig.addr_for(other, &rig.workers[0]);
    rig.lb.cli_ok(&["vip", "add", other]).unwrap();
    rig.lb.cli_ok(&["backend", "add", other, &worker]).unwrap();
    let status_now = rig.lb.status_json().unwrap();
    assert_eq!(
        (
            status_now["max_vips"].as_u64(),
            status_now["max_workers"].as_u64()
        ),
        (Some(2), Some(3))
    );
    let second = rig.addr_for(other, &rig.workers[1]);
    let error = refused_cli(&rig.lb, &["backend", "add", other, &second]);
    assert!(error.contains("at most 3 workers"), "{error}");
    let error = refused_cli(&rig.lb, &["vip", "add", "192.0.2.102:80/tcp"]);
    assert!(error.contains("at most 2 VIPs"), "{error}");
    assert_eq!(answers(&rig, 10), 10);
    rig.lb.stop().unwrap();

    let args = |extra: &[&str]| same_instance(&rig, extra);
    let refuse = |extra: &[&str]| {
        let args = args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused_run(&rig.balancer, &args)
    };
    let error = refuse(&["--max-vips", "1", "--max-workers", "3"]);
    assert!(error.contains("at most 1 VIPs"), "{error}");
    let error = refuse(&["--max-vips", "2", "--max-workers", "8"]);
    assert!(error.contains("--max-workers 3, not 8"), "{error}");
    assert_eq!(
        answers(&rig, 10),
        10,
        "a refused start disturbed forwarding"
    );

    rig.start_lb(&["--max-vips", "4", "--max-workers", "8", "--force"])
        .unwrap();
    let status_now = rig.lb.status_json().unwrap();
    assert_eq!(
        (
            status_now["max_vips"].as_u64(),
            status_now["max_workers"].as_u64()
        ),
        (Some(4), Some(8))
    );
    rig.lb.cli_ok(&["backend", "add", other, &second]).unwrap();
    assert_eq!(answers(&rig, 10), 10);
}

#[test]
fn a_pin_directory_of_another_interface_a_busy_interface_and_a_huge_table_are_refused() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(Path::new(lb_exe()), 1, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    // The same pin directory, from a host whose eth0 is another interface.
    let other = rig
        .bed
        .add_host(
            "lb2",
            "192.0.2.3".parse().unwrap(),
            "2001:db8::3".parse().unwrap(),
        )
        .unwrap();
    rig.bed.accept_xdp_tx_from("lb2").unwrap();
    let socket = rig.bed.socket("lb2");
    let (socket, state) = (
        socket.to_string_lossy().into_owned(),
        socket.with_extension("json").to_string_lossy().into_owned(),
    );
    let pins = rig.lb.pin_dir().to_string_lossy().into_owned();
    rig.lb.stop().unwrap();
    let error = refused_run(
        &other,
        &[
            "--iface",
            "eth0",
            "--pin-dir",
            &pins,
            "--socket",
            &socket,
            "--state-file",
            &state,
        ],
    );
    assert!(error.contains("runs on another interface"), "{error}");
    assert_eq!(answers(&rig, 10), 10);

    // A second instance on the busy interface is told who holds it.
    let second = rig.bed.pin_dir("second");
    let error = refused_run(
        &rig.balancer,
        &[
            "--iface",
            "eth0",
            "--pin-dir",
            &second.to_string_lossy(),
            "--socket",
            &socket,
            "--state-file",
            &state,
        ],
    );
    assert!(error.contains("already runs XDP program lb_xdp"), "{error}");
    assert!(
        !second.join("LB_FLOWS").exists(),
        "the refused start left pins"
    );

    // A flow table beyond what the kernel accepts, before any pin.
    let huge = rig.bed.pin_dir("huge");
    let error = refused_run(
        &other,
        &[
            "--iface",
            "eth0",
            "--pin-dir",
            &huge.to_string_lossy(),
            "--socket",
            &socket,
            "--state-file",
            &state,
            "--max-flows",
            "4294967295",
        ],
    );
    assert!(error.contains("larger than the kernel accepts"), "{error}");
    assert!(!huge.exists(), "the refused start made {}", huge.display());
}

#[test]
fn addresses_that_are_no_single_host_and_port_zero_are_refused() {
    lb_testing::needs_root!();
    let rig = Rig::new(Path::new(lb_exe()), 1, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let before = (
        rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap(),
        rig.lb.cli_ok(&["backend", "list", "-o", "json"]).unwrap(),
    );
    let refused = |args: &[&str], wanted: &str| {
        let output = rig.lb.cli(args).unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    };
    for (worker, wanted) in [
        ("0.0.0.0", "no host"),
        ("127.0.0.1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("192.0.2.100", "the VIP's own address"),
        ("192.0.2.2", "an address of this balancer"),
    ] {
        refused(&["backend", "add", VIP, worker], wanted);
    }
    refused(&["vip", "add", "[::1]:80/tcp"], "loopback");
    refused(
        &["vip", "add", "[::ffff:192.0.2.100]:80/tcp"],
        "IPv4-mapped",
    );
    refused(
        &["vip", "add", "192.0.2.100:81/tcp", "--health-port", "0"],
        "port 0",
    );
    let after = (
        rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap(),
        rig.lb.cli_ok(&["backend", "list", "-o", "json"]).unwrap(),
    );
    assert_eq!(before.0, after.0);
    // Only check times move in the backend rows.
    let workers = |text: &str| -> Vec<String> {
        let rows: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
        rows.iter().map(|r| r["worker"].to_string()).collect()
    };
    assert_eq!(workers(&before.1), workers(&after.1));
}
