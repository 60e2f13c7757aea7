//! NAT forwarding end to end: real workers nobody changed (nginx on
//! 8080, no VIP on loopback, no sysctls, no `lb decap`) behind VIP:80,
//! over IPv4 and IPv6, `nat` and `fullnat`, on the one-arm sandbox
//! (`lb_testing::nat_rig`). Needs root.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_testing::{
    lb_exe,
    nat_rig::{NatRig, CLIENT4, CLIENT6, SOURCE4, SOURCE6},
    rig::{KeepAlive, TIMEOUT, VIP4, VIP6},
    wait::wait_until,
};

const VIP4_TCP: &str = "192.0.2.100:80/tcp";
const VIP6_TCP: &str = "[2001:db8::100]:80/tcp";

/// (VIP text, VIP address, client address, NAT source)
fn families() -> [(&'static str, IpAddr, IpAddr, IpAddr); 2] {
    [
        (
            VIP4_TCP,
            IpAddr::V4(VIP4),
            IpAddr::V4(CLIENT4),
            SOURCE4.parse().unwrap(),
        ),
        (
            VIP6_TCP,
            IpAddr::V6(VIP6),
            IpAddr::V6(CLIENT6),
            SOURCE6.parse().unwrap(),
        ),
    ]
}

/// Which worker answered each of `n` new connections to `vip`.
fn spread(rig: &NatRig, vip: IpAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let body = rig.get(vip, "/").expect("a request through the VIP");
        *counts.entry(body).or_default() += 1;
    }
    counts
}

#[test]
fn nat_serves_unchanged_workers_on_their_own_port_and_they_see_the_client() {
    lb_testing::needs_root!();
    let rig = NatRig::new(lb_exe().as_ref(), 3, &[]).unwrap();
    for (vip, addr, client, _) in families() {
        rig.add_vip(vip, "nat").unwrap();
        let peer = rig.get(addr, "/peer").unwrap();
        assert_eq!(peer.parse::<IpAddr>().unwrap(), client, "{vip}");
        let counts = spread(&rig, addr, 30);
        assert_eq!(counts.len(), 3, "{vip}: every worker answers: {counts:?}");
    }
    let stats = rig.lb.stats().unwrap();
    assert!(
        stats.nat_replies > 0,
        "replies came back through lb: {stats:?}"
    );
    assert_eq!(stats.drop_no_nat, 0);
}

#[test]
fn fullnat_workers_see_a_nat_source_and_need_no_route_to_clients() {
    lb_testing::needs_root!();
    let rig = NatRig::new(lb_exe().as_ref(), 3, &[]).unwrap();
    // No way back to the client but through lb's NAT source.
    for worker in &rig.workers {
        worker.run("ip", &["route", "del", "default"]).unwrap();
        worker
            .run("ip", &["-6", "route", "del", "default"])
            .unwrap();
    }
    for (vip, addr, _, source) in families() {
        rig.add_vip(vip, "fullnat").unwrap();
        let peer = rig.get(addr, "/peer").unwrap();
        assert_eq!(peer.parse::<IpAddr>().unwrap(), source, "{vip}");
        let counts = spread(&rig, addr, 30);
        assert_eq!(counts.len(), 3, "{vip}: every worker answers: {counts:?}");
    }
    let stats = rig.lb.stats().unwrap();
    assert!(stats.nat_allocations >= 62, "{stats:?}");
    assert_eq!(stats.nat_ports_exhausted, 0);
}

#[test]
fn a_fullnat_keep_alive_connection_survives_a_kill_and_restart_of_lb() {
    lb_testing::needs_root!();
    let mut rig = NatRig::new(lb_exe().as_ref(), 2, &[]).unwrap();
    rig.add_vip(VIP4_TCP, "fullnat").unwrap();
    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    let mut connection = rig
        .client
        .within(move || KeepAlive::connect(target, TIMEOUT))
        .unwrap()
        .unwrap();
    let before = connection.get().unwrap();
    rig.lb.kill().unwrap();
    rig.start_lb().unwrap();
    for _ in 0..5 {
        assert_eq!(connection.get().unwrap(), before, "the same worker");
    }
}

#[test]
fn a_tiny_port_range_counts_exhaustion_and_serves_again_once_ports_free() {
    lb_testing::needs_root!();
    let rig = NatRig::new(lb_exe().as_ref(), 1, &["--nat-ports", "20000-20001"]).unwrap();
    rig.add_vip(VIP4_TCP, "fullnat").unwrap();
    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    let open = || {
        rig.client
            .within(move || KeepAlive::connect(target, Duration::from_secs(1)))
            .unwrap()
    };
    let mut first = open().unwrap();
    let mut second = open().unwrap();
    let (a, b) = (first.get().unwrap(), second.get().unwrap());
    assert_eq!((a.as_str(), b.as_str()), ("w1", "w1"));
    assert!(open().is_err(), "no third port");
    assert!(rig.lb.stats().unwrap().nat_ports_exhausted >= 1);
    // Each connection still answers on its own port.
    assert_eq!(first.get().unwrap(), "w1");
    assert_eq!(second.get().unwrap(), "w1");
    drop(first);
    // The closed connection's port is freed after its closing timeout
    // and a sweep.
    wait_until(Duration::from_secs(30), "a port freed", || {
        rig.client
            .within(move || KeepAlive::connect(target, Duration::from_secs(1)))
            .unwrap()
            .is_ok()
    });
    assert_eq!(second.get().unwrap(), "w1");
}
