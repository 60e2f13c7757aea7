//! Balancers behind ECMP, end to end (issue 16): each `lb run
//! --announce-table 100` keeps its VIP's host route in kernel table 100,
//! BIRD (the configs in dist/bird/, as shipped) announces it to a router
//! that spreads new connections over every balancer announcing; planned
//! withdrawals, node failures (BFD), a node joining and every worker going
//! down move traffic without losing requests. Real BIRD, lb, nginx and
//! TCP in network namespaces; needs root and bird2 (`cargo xtask setup`).

use std::sync::Mutex;

use lb_testing::{
    bgp::{
        all_answer, keep_alives_through, link_cut, planned_withdrawal, BgpRig, Load, Node,
        ANNOUNCE_TABLE, ROUTE_LIMIT, SESSION_LIMIT, VIP,
    },
    lb_exe,
    rig::spread_from,
    wait::wait_until,
};

/// One rig at a time: each runs several daemons, BFD at 100 ms and a
/// load; side by side on a small machine they would time each other out.
static ONE_RIG: Mutex<()> = Mutex::new(());

fn one_rig() -> std::sync::MutexGuard<'static, ()> {
    ONE_RIG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
    let answers = spread_from(&rig.client, rig.target().ip(), 40).unwrap();
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

/// A rig whose balancers announce with `--announce-table`.
fn announcing(nodes: u8, workers: u8) -> BgpRig {
    let table = ANNOUNCE_TABLE.to_string();
    BgpRig::new(
        lb_exe().as_ref(),
        nodes,
        workers,
        &["--announce-table", &table],
    )
    .unwrap()
}

/// `lb announce list -o json` on `node`.
fn announce_list(node: &Node) -> Vec<serde_json::Value> {
    serde_json::from_str(&node.lb.cli_ok(&["announce", "list", "-o", "json"]).unwrap()).unwrap()
}

#[test]
fn both_balancers_announce_and_new_connections_spread_over_both() {
    lb_testing::needs_root!();
    let _one = one_rig();
    let rig = announcing(2, 3);
    rig.wait_next_hops(&[1, 2], SESSION_LIMIT).unwrap();
    for node in &rig.nodes {
        assert_eq!(node.announced().unwrap(), ["192.0.2.100"]);
        let list = announce_list(node);
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["address"], "192.0.2.100");
        assert_eq!(list[0]["announced"], true);
        assert!(list[0]["reason"].is_null(), "{list:?}");
        assert_eq!(list[0]["vips"], serde_json::json!([VIP]));
        let status = node.lb.status_json().unwrap();
        assert_eq!(status["announce_table"], ANNOUNCE_TABLE);
        assert_eq!(status["announced"], 1);
    }
    let before: Vec<u64> = rig.nodes.iter().map(|n| n.forwarded().unwrap()).collect();
    let answers = spread_from(&rig.client, rig.target().ip(), 60).unwrap();
    assert_eq!(answers.values().sum::<usize>(), 60);
    assert_eq!(answers.len(), 3, "every worker answers: {answers:?}");
    for (node, before) in rig.nodes.iter().zip(before) {
        assert!(
            node.forwarded().unwrap() > before,
            "{} forwarded nothing: ECMP sent it no new connection",
            node.host.role
        );
    }
}

#[test]
fn a_planned_withdrawal_moves_traffic_off_a_balancer_without_losing_a_request() {
    lb_testing::needs_root!();
    let _one = one_rig();
    let rig = announcing(2, 3);
    let done = planned_withdrawal(&rig).unwrap();
    eprintln!(
        "planned withdrawal: router route changed {:?} after `lb announce withdraw`, \
         last packet reached the withdrawn balancer {:?} after it; restored in {:?}; \
         {} requests, {} lost, {} slow",
        done.route_gone,
        done.last_packet,
        done.restored,
        done.load.ok + done.load.failed,
        done.load.failed,
        done.load.slow
    );
    assert_eq!(done.load.failed, 0, "{:?}", done.load);
}

#[test]
fn bfd_takes_a_dead_balancer_out_and_established_connections_survive() {
    lb_testing::needs_root!();
    let _one = one_rig();
    let rig = announcing(2, 3);
    let cut = link_cut(&rig, 100).unwrap();
    eprintln!(
        "link cut: router route changed {:?} after the cut; {} of 100 established \
         connections survived; {} new requests, {} failed, {} slow (SYN resent)",
        cut.detected,
        cut.survived,
        cut.load.ok + cut.load.failed,
        cut.load.failed,
        cut.load.slow
    );
    assert!(
        cut.survived >= 99,
        "only {} of 100 connections survived",
        cut.survived
    );
}

#[test]
fn a_third_balancer_joins_under_load_without_losing_a_request() {
    lb_testing::needs_root!();
    let _one = one_rig();
    let mut rig = announcing(2, 3);
    rig.wait_next_hops(&[1, 2], SESSION_LIMIT).unwrap();
    let mut connections = keep_alives_through(&rig, 0).unwrap();
    let load = Load::start(&rig.client, rig.target(), 2);
    load.wait_for(50);

    rig.start_node().unwrap();
    rig.router_bird.wait_established(3, SESSION_LIMIT).unwrap();
    rig.wait_next_hops(&[1, 2, 3], ROUTE_LIMIT).unwrap();
    let lb3 = &rig.nodes[2];
    wait_until(ROUTE_LIMIT, "lb3 forwarding", || {
        lb3.forwarded().unwrap() > 0
    });
    load.wait_for(100);
    all_answer(&mut connections).unwrap();
    let report = load.stop().unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
}

#[test]
fn a_balancer_with_no_worker_up_withdraws_the_vip_until_one_comes_back() {
    lb_testing::needs_root!();
    let _one = one_rig();
    let mut rig = announcing(2, 2);
    rig.wait_next_hops(&[1, 2], SESSION_LIMIT).unwrap();
    rig.stop_worker(0);
    rig.stop_worker(1);
    rig.wait_next_hops(&[], ROUTE_LIMIT).unwrap();
    for node in &rig.nodes {
        wait_until(ROUTE_LIMIT, "the table empty", || {
            node.announced().unwrap().is_empty()
        });
        let list = announce_list(node);
        assert_eq!(list[0]["announced"], false, "{list:?}");
        assert!(list[0]["reason"].is_string(), "{list:?}");
    }
    rig.start_worker(1).unwrap();
    rig.wait_next_hops(&[1, 2], ROUTE_LIMIT).unwrap();
    let answers = spread_from(&rig.client, rig.target().ip(), 10).unwrap();
    assert_eq!(answers.get("w2"), Some(&10), "{answers:?}");
}
