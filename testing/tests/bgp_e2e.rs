//! Balancers behind ECMP, end to end (issue 16): each `lb run
//! --announce-table 100` keeps its VIP's host route in kernel table 100,
//! BIRD (the configs in dist/bird/, as shipped) announces it to a router
//! that spreads new connections over every balancer announcing; planned
//! withdrawals, node failures (BFD), a node joining and every worker going
//! down move traffic without losing requests. Real BIRD, lb, nginx and
//! TCP in network namespaces; needs root and bird2 (`cargo xtask setup`).

use std::{sync::Mutex, time::Duration};

use lb_testing::{
    bgp::{BgpRig, Load, ANNOUNCE_TABLE},
    lb_exe,
    rig::wait_until,
};

/// One rig at a time: each runs several daemons, BFD at 100 ms and a
/// load; side by side on a small machine they would time each other out.
static ONE_RIG: Mutex<()> = Mutex::new(());

fn one_rig() -> std::sync::MutexGuard<'static, ()> {
    ONE_RIG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long the router may take to follow a change BIRD hears of at once.
const ROUTE_LIMIT: Duration = Duration::from_secs(5);

#[test]
fn the_shipped_bird_configs_announce_lbs_routes_from_its_table_and_only_those() {
    lb_testing::needs_root!();
    let _one = one_rig();
    let rig = BgpRig::new(lb_exe().as_ref(), 2, 2, &[]).unwrap();
    assert!(rig.next_hops().unwrap().is_empty(), "nothing announced yet");
    for node in &rig.nodes {
        node.route_by_hand(true).unwrap();
    }
    // Another program's route in the same table is not announced.
    let table = ANNOUNCE_TABLE.to_string();
    rig.nodes[0]
        .host
        .run(
            "ip",
            &[
                "route",
                "add",
                "192.0.2.200/32",
                "dev",
                "lo",
                "table",
                &table,
                "proto",
                "static",
            ],
        )
        .unwrap();
    rig.wait_next_hops(&[1, 2], ROUTE_LIMIT).unwrap();
    let before: Vec<u64> = rig.nodes.iter().map(|n| n.forwarded().unwrap()).collect();
    let answers = lb_testing::rig::spread_from(&rig.client, rig.target().ip(), 40).unwrap();
    assert_eq!(answers.values().sum::<usize>(), 40);
    for (node, before) in rig.nodes.iter().zip(before) {
        assert!(
            node.forwarded().unwrap() > before,
            "{} forwarded nothing",
            node.host.role
        );
    }
    let routes = rig.router_bird.birdc(&["show", "route"]).unwrap();
    assert!(!routes.contains("192.0.2.200"), "{routes}");

    rig.nodes[0].route_by_hand(false).unwrap();
    let took = rig.wait_next_hops(&[2], ROUTE_LIMIT).unwrap();
    eprintln!("a route deleted by hand left the router in {took:?}");
    let load = Load::start(&rig.client, rig.target(), 1);
    load.wait_for(20);
    let report = load.stop().unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    wait_until(ROUTE_LIMIT, "both sessions still up", || {
        rig.router_bird.established().unwrap().len() == 2
    });
}
