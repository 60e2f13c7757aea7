//! `lb decap` end to end: a balancer running `lb run` forwards real TCP
//! (HTTP to nginx) and UDP to a worker over IPIP or GUE, in every mix of IPv4 and
//! IPv6; the worker runs `lb decap attach` (the real binary) and answers
//! straight to the client. Bad input to `lb decap` gets one-line errors.
//! Needs root.

use std::{
    net::{IpAddr, UdpSocket},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_testing::{
    lb_exe,
    rig::{Rig, UDP_PORT, VIP4, VIP6},
    testbed::Host,
    wait::wait_until,
};

/// Runs `lb decap ARGS` on `host`; returns whether it succeeded, stdout
/// and stderr.
fn decap(host: &Host, args: &[&str]) -> (bool, String, String) {
    let output = host
        .command(lb_exe())
        .arg("decap")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn decap_ok(host: &Host, args: &[&str]) -> String {
    let (ok, stdout, stderr) = decap(host, args);
    assert!(ok, "lb decap {args:?} failed: {stderr}");
    stdout
}

/// A rig with one worker that runs `lb decap` on its eth0, pinned under
/// the returned directory.
fn rig() -> (Rig, PathBuf) {
    let mut rig = Rig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    let pins = rig.bed.pin_dir("decap");
    let dir = pins.to_str().unwrap();
    let attached = decap_ok(
        &rig.workers[0],
        &["attach", "--iface", "eth0", "--pin-dir", dir],
    );
    assert!(attached.contains("attached to eth0"), "{attached}");
    (rig, pins)
}

fn counters(worker: &Host, pins: &Path) -> serde_json::Value {
    let text = decap_ok(
        worker,
        &["stats", "--pin-dir", pins.to_str().unwrap(), "-o", "json"],
    );
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc[0]["counters"].clone()
}

/// `n` HTTP requests to `vip` are all answered by the worker.
fn served(rig: &Rig, vip: IpAddr, n: usize) {
    let counts = rig.spread(vip, n).unwrap();
    assert_eq!(counts.get("w1"), Some(&n), "{vip}: {counts:?}");
}

/// A datagram to the IPv4 VIP's UDP echo from `client`: the answer, if
/// one of a few tries gets one.
fn udp_answer(client: &Host) -> Option<String> {
    client
        .within(|| {
            let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
            socket.connect((VIP4, UDP_PORT)).ok()?;
            socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            let mut buf = [0u8; 64];
            (0..5).find_map(|_| {
                socket.send(b"who").ok()?;
                let n = socket.recv(&mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).into_owned())
            })
        })
        .unwrap()
}

/// Forwards the IPv4 and the IPv6 VIP with `method` to the worker's
/// addresses of family `worker_v6`, and a UDP VIP; checks every request is
/// answered and counted as `counter` on the worker.
fn forward_both(method: &str, worker_v6: bool, counter: &str) {
    let (rig, pins) = rig();
    let worker = &rig.workers[0];
    let addr = if worker_v6 {
        worker.ipv6.to_string()
    } else {
        worker.ipv4.to_string()
    };
    for vip in [format!("{VIP4}:80/tcp"), format!("[{VIP6}]:80/tcp")] {
        rig.lb
            .cli_ok(&["vip", "add", &vip, "--forward", method])
            .unwrap();
        rig.lb.cli_ok(&["backend", "add", &vip, &addr]).unwrap();
    }
    served(&rig, IpAddr::V4(VIP4), 20);
    served(&rig, IpAddr::V6(VIP6), 20);
    let udp_vip = format!("{VIP4}:{UDP_PORT}/udp");
    rig.lb
        .cli_ok(&["vip", "add", &udp_vip, "--forward", method])
        .unwrap();
    rig.lb.cli_ok(&["backend", "add", &udp_vip, &addr]).unwrap();
    assert_eq!(
        udp_answer(&rig.client).as_deref(),
        Some("w1"),
        "UDP over {method}"
    );
    let counted = counters(worker, &pins);
    // Each connection is at least a SYN, an ACK with the request and a
    // FIN from the client.
    assert!(counted[counter].as_u64().unwrap() >= 40 * 3, "{counted}");
    assert_eq!(counted["malformed"], 0, "{counted}");

    let dir = pins.to_str().unwrap();
    let detached = decap_ok(worker, &["detach", "--iface", "eth0", "--pin-dir", dir]);
    assert!(detached.contains("detached"), "{detached}");
    assert!(!pins.exists(), "pins left behind");
    // The link goes with its last reference, a moment after the pin.
    wait_until(Duration::from_secs(5), "XDP gone from eth0", || {
        let link = worker.run("ip", &["-j", "link", "show", "eth0"]).unwrap();
        !link.contains("\"xdp\"")
    });
}

#[test]
fn ipip_over_ipv4_serves_http_for_both_vip_families() {
    lb_testing::needs_root!();
    forward_both("ipip", false, "ipip");
}

#[test]
fn ipip_over_ipv6_serves_http_for_both_vip_families() {
    lb_testing::needs_root!();
    forward_both("ipip", true, "ip6ip6");
}

#[test]
fn gue_over_ipv4_serves_http_for_both_vip_families() {
    lb_testing::needs_root!();
    forward_both("gue", false, "gue");
}

#[test]
fn gue_over_ipv6_serves_http_for_both_vip_families() {
    lb_testing::needs_root!();
    forward_both("gue", true, "gue");
}

#[test]
fn attaching_again_refreshes_addresses_and_port() {
    lb_testing::needs_root!();
    let (rig, pins) = rig();
    let worker = &rig.workers[0];
    worker
        .run("ip", &["addr", "add", "198.51.100.10/32", "dev", "lo"])
        .unwrap();
    let dir = pins.to_str().unwrap();
    let args = [
        "attach",
        "--iface",
        "eth0",
        "--pin-dir",
        dir,
        "--gue-port",
        "7000",
    ];
    let refreshed = decap_ok(worker, &args);
    assert!(
        refreshed.contains("refreshed") && refreshed.contains("7000"),
        "{refreshed}"
    );
    // GUE to the new port now reaches the worker through lb.
    let vip = format!("{VIP4}:80/tcp");
    rig.lb
        .cli_ok(&["vip", "add", &vip, "--forward", "gue", "--gue-port", "7000"])
        .unwrap();
    rig.lb
        .cli_ok(&["backend", "add", &vip, &worker.ipv4.to_string()])
        .unwrap();
    served(&rig, IpAddr::V4(VIP4), 5);
    assert!(counters(worker, &pins)["gue"].as_u64().unwrap() >= 5);
}

fn one_line_error(stderr: &str, wanted: &str) {
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(wanted), "{stderr}");
}

#[test]
fn bad_input_gets_one_line_errors_and_changes_nothing() {
    lb_testing::needs_root!();
    let mut bed = lb_testing::testbed::Testbed::new().unwrap();
    let host = bed
        .add_host(
            "w",
            "192.0.2.11".parse().unwrap(),
            lb_testing::rig::v6(0x11),
        )
        .unwrap();
    let pins = bed.pin_dir("decap");
    let dir = pins.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["attach", "--iface", "nope0", "--pin-dir", dir],
            "no network interface named `nope0`",
        ),
        (
            &[
                "attach",
                "--iface",
                "eth0",
                "--pin-dir",
                dir,
                "--gue-port",
                "0",
            ],
            "`--gue-port` must be 1–65535",
        ),
        (
            &["detach", "--iface", "eth0", "--pin-dir", dir],
            "no lb decap is attached",
        ),
        (
            &["stats", "--iface", "eth0", "--pin-dir", dir],
            "no lb decap is attached",
        ),
        (
            &["stats", "--pin-dir", dir, "-o", "json"],
            "no lb decap is attached",
        ),
    ];
    for (args, wanted) in cases {
        let (ok, _, stderr) = decap(&host, args);
        assert!(!ok, "{args:?} succeeded");
        one_line_error(&stderr, wanted);
        assert!(!pins.exists(), "{args:?} left pins");
    }
    // Not root: refused before anything is loaded or pinned.
    let output = host
        .command("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args([
            lb_exe(),
            "decap",
            "attach",
            "--iface",
            "eth0",
            "--pin-dir",
            dir,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    one_line_error(&String::from_utf8_lossy(&output.stderr), "needs root");
    assert!(!pins.exists());
}
