//! ICMP through lb, end to end: ping answered for a VIP, and Path MTU
//! discovery working for a client behind a router with a small MTU (the
//! router's "fragmentation needed" reaches the worker through lb). Needs
//! root.

use std::net::{IpAddr, Ipv4Addr};

use lb_testing::lb_exe;

use lb_testing::rig::{v6, Download, Rig, VIP4, VIP6};

#[test]
fn ping_to_a_vip_is_answered_by_lb_over_ipv4_and_ipv6() {
    lb_testing::needs_root!();
    let rig = Rig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    rig.add_vip_with_workers("192.0.2.100:80/tcp", &[]).unwrap();
    rig.add_vip_with_workers("[2001:db8::100]:80/tcp", &[])
        .unwrap();
    for vip in [VIP4.to_string(), VIP6.to_string()] {
        rig.client
            .run("ping", &["-c", "3", "-i", "0.2", "-W", "2", &vip])
            .unwrap_or_else(|e| panic!("no answer from {vip}: {e:#}"));
    }
    assert_eq!(rig.lb.stats().unwrap().icmp_echo_replies, 6);
    rig.client
        .run("ping", &["-c", "1", "-W", "1", "192.0.2.102"])
        .unwrap_err();
}

#[test]
fn path_mtu_discovery_works_through_lb_for_a_client_behind_a_small_mtu() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    rig.add_vip_with_workers("192.0.2.100:80/tcp", &[]).unwrap();
    let router = rig
        .bed
        .add_host("router", Ipv4Addr::new(192, 0, 2, 254), v6(0xfe))
        .unwrap();
    router
        .run(
            "ip",
            &["route", "add", "192.0.2.100/32", "via", "192.0.2.2"],
        )
        .unwrap();
    let far = rig
        .bed
        .add_host_behind(
            "far",
            &router,
            Ipv4Addr::new(198, 51, 100, 2),
            Ipv4Addr::new(198, 51, 100, 1),
            1280,
        )
        .unwrap();
    let worker = &rig.workers[0];
    worker
        .run(
            "ip",
            &["route", "add", "198.51.100.0/24", "via", "192.0.2.254"],
        )
        .unwrap();

    // The worker's 1500-byte segments don't fit the router's 1280-byte
    // link: only the router's "fragmentation needed", sent to the VIP and
    // passed on by lb, lets the download through.
    let download = Download::start(&far, IpAddr::V4(VIP4));
    assert_eq!(download.finish(), lb_testing::testbed::SLOW_BYTES);
    assert!(rig.lb.stats().unwrap().icmp_errors_forwarded >= 1);
    let route = worker.run("ip", &["route", "get", "198.51.100.2"]).unwrap();
    assert!(
        route.contains("mtu 1280"),
        "the worker learnt the path MTU: {route}"
    );
}
