//! lb on two interfaces (`lb run --iface eth0 --iface eth1`): clients on
//! one switch, workers on another, in different subnets (the two-arm
//! sandbox of `lb_testing::nat_rig`). What lb sends leaves by the other
//! interface than it came in on, redirected by the data plane; the
//! controller resolves each worker on its own interface. Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_testing::{
    lb_exe,
    nat_rig::{NatRig, CLIENT4, CLIENT6, SOURCE4, SOURCE6, WORKER_PORT},
    rig::{TIMEOUT, VIP4, VIP6},
    testbed::http_get_path,
    wait::wait_until,
};

/// (VIP text, VIP address, what a `nat` worker sees, what a `fullnat`
/// one sees)
fn families() -> [(&'static str, IpAddr, IpAddr, IpAddr); 2] {
    [
        (
            "192.0.2.100:80/tcp",
            IpAddr::V4(VIP4),
            IpAddr::V4(CLIENT4),
            SOURCE4.parse().unwrap(),
        ),
        (
            "[2001:db8::100]:80/tcp",
            IpAddr::V6(VIP6),
            IpAddr::V6(CLIENT6),
            SOURCE6.parse().unwrap(),
        ),
    ]
}

/// The XDP program id `iface` of `host` runs (0: none), as `ip link`
/// shows it.
fn xdp_program(host: &lb_testing::testbed::Host, iface: &str) -> u64 {
    let shown = host.run("ip", &["-d", "link", "show", iface]).unwrap();
    shown
        .split_whitespace()
        .skip_while(|word| *word != "prog/xdp")
        .nth(2)
        .and_then(|id| id.parse().ok())
        .unwrap_or(0)
}

#[test]
fn nat_and_fullnat_serve_workers_behind_another_interface() {
    lb_testing::needs_root!();
    let rig = NatRig::two_arm(lb_exe().as_ref(), 2, &[]).unwrap();
    let status = rig.lb.status_json().unwrap();
    assert_eq!(status["iface"], "eth0", "{status}");
    assert_eq!(status["ifaces"], serde_json::json!(["eth0", "eth1"]));
    let program = status["program_id"].as_u64().unwrap();
    assert_eq!(xdp_program(&rig.balancer, "eth0"), program);
    assert_eq!(xdp_program(&rig.balancer, "eth1"), program);
    for (vip, addr, client, source) in families() {
        for (forward, seen) in [("nat", client), ("fullnat", source)] {
            rig.add_vip(vip, forward).unwrap();
            let peer = rig.get(addr, "/peer").unwrap();
            assert_eq!(peer.parse::<IpAddr>().unwrap(), seen, "{vip} {forward}");
            let mut answered = std::collections::BTreeSet::new();
            for _ in 0..20 {
                answered.insert(rig.get(addr, "/").unwrap());
            }
            assert_eq!(answered.len(), 2, "{vip} {forward}: {answered:?}");
            rig.lb.cli_ok(&["vip", "del", vip]).unwrap();
        }
    }
    // Replies came in on eth1 and left by eth0 from the data plane: a
    // reply counted here was redirected, not sent back where it came in.
    let stats = rig.lb.stats().unwrap();
    assert!(stats.nat_replies > 0, "{stats:?}");
    assert_eq!(stats.drop_no_neighbour, 0, "{stats:?}");
    // Both ways were redirected, and counted on the interface they left by.
    let interfaces = rig.lb.stats_json().unwrap()["interfaces"].clone();
    let rows = interfaces.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{interfaces}");
    for row in rows {
        assert!(row["redirected_packets"].as_u64().unwrap() > 0, "{row}");
    }
}

#[test]
fn dsr_reaches_workers_on_the_other_interface() {
    lb_testing::needs_root!();
    let rig = NatRig::two_arm(lb_exe().as_ref(), 2, &[]).unwrap();
    let vips = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)];
    for worker in &rig.workers {
        worker.hold_vips_on_loopback(&vips).unwrap();
    }
    for vip in vips {
        let text = SocketAddr::new(vip, WORKER_PORT).to_string() + "/tcp";
        rig.lb
            .cli_ok(&["vip", "add", &text, "--forward", "dsr"])
            .unwrap();
        for worker in &rig.workers {
            let addr = if vip.is_ipv4() {
                worker.ipv4.to_string()
            } else {
                worker.ipv6.to_string()
            };
            rig.lb.cli_ok(&["backend", "add", &text, &addr]).unwrap();
        }
        wait_until(TIMEOUT, "every DSR worker up", || {
            let listed = rig
                .lb
                .cli_ok(&["backend", "list", &text, "-o", "json"])
                .unwrap();
            let rows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
            rows.iter().all(|r| r["state"] == "up")
        });
        let target = SocketAddr::new(vip, WORKER_PORT);
        let mut answered = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let body = rig
                .client
                .within(move || http_get_path(target, "/", TIMEOUT))
                .unwrap()
                .unwrap();
            answered.insert(body);
        }
        assert_eq!(answered.len(), 2, "{vip}: {answered:?}");
    }
}

#[test]
fn a_restart_adopts_every_interface_and_one_left_out_is_detached() {
    lb_testing::needs_root!();
    let mut rig = NatRig::two_arm(lb_exe().as_ref(), 1, &[]).unwrap();
    let (vip, addr, _, source) = families()[0];
    rig.add_vip(vip, "fullnat").unwrap();
    assert_eq!(rig.get(addr, "/peer").unwrap(), source.to_string());
    rig.lb.kill().unwrap();
    // The data plane goes on forwarding on both without its controller.
    assert_eq!(rig.get(addr, "/peer").unwrap(), source.to_string());
    rig.start_lb().unwrap();
    let status = rig.lb.status_json().unwrap();
    assert_eq!(status["attached"], true, "{status}");
    let program = status["program_id"].as_u64().unwrap();
    assert_eq!(xdp_program(&rig.balancer, "eth1"), program);
    assert_eq!(rig.get(addr, "/peer").unwrap(), source.to_string());
    // Started again on eth0 alone, lb leaves eth1.
    rig.lb.stop().unwrap();
    rig.start_lb_with(&["--nat-source", SOURCE4]).unwrap();
    let status = rig.lb.status_json().unwrap();
    assert_eq!(status["ifaces"], serde_json::json!(["eth0"]), "{status}");
    assert_eq!(xdp_program(&rig.balancer, "eth1"), 0);
    assert_eq!(
        xdp_program(&rig.balancer, "eth0"),
        status["program_id"].as_u64().unwrap()
    );
}

#[test]
fn an_unknown_or_repeated_interface_among_several_is_refused_and_nothing_changes() {
    lb_testing::needs_root!();
    let rig = NatRig::two_arm(lb_exe().as_ref(), 1, &[]).unwrap();
    let program = rig.lb.status_json().unwrap()["program_id"]
        .as_u64()
        .unwrap();
    let refusals = [
        (["--iface", "eth0", "--iface", "nosuchif1"], "nosuchif1"),
        (["--iface", "eth1", "--iface", "eth1"], "given twice"),
    ];
    for (args, said) in refusals {
        let (ok, stderr) = rig
            .balancer
            .run_lb_expecting_refusal(lb_exe().as_ref(), &args, Duration::from_secs(20))
            .unwrap();
        assert!(!ok, "{args:?} was refused");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    for iface in ["eth0", "eth1"] {
        assert_eq!(xdp_program(&rig.balancer, iface), program, "{iface}");
    }
    assert_eq!(rig.lb.status_json().unwrap()["attached"], true);
}
