//! Balancers behind ECMP, end to end (issue 16): each `lb run
//! --announce-table 100` keeps its VIP's host route in kernel table 100,
//! BIRD (the configs in dist/bird/, as shipped) announces it to a router
//! that spreads new connections over every balancer announcing; planned
//! withdrawals, node failures (BFD), a node joining and every worker going
//! down move traffic without losing requests. Real BIRD, lb, nginx and
//! TCP in network namespaces; needs root and bird2 (`cargo xtask setup`).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_testing::{
    bgp::{BgpRig, Load, Node, ANNOUNCE_TABLE, SESSION_LIMIT, VIP},
    lb_exe,
    rig::{spread_from, wait_until, KeepAlive},
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

fn withdraw(node: &Node) {
    node.lb.cli_ok(&["announce", "withdraw"]).unwrap();
}

fn restore(node: &Node) {
    node.lb.cli_ok(&["announce", "restore"]).unwrap();
}

/// Opens keep-alive connections to the VIP until one goes through
/// balancer `index` (told by its forwarded counter, with no other load
/// running), at most 16; returns them all with the worker each reached.
fn keep_alives_through(rig: &BgpRig, index: usize) -> Vec<(KeepAlive, String)> {
    let mut connections = Vec::new();
    for _ in 0..16 {
        let before = rig.nodes[index].forwarded().unwrap();
        let mut connection = KeepAlive::open(&rig.client, rig.target()).unwrap();
        let worker = connection.get().unwrap();
        let through = rig.nodes[index].forwarded().unwrap() > before;
        connections.push((connection, worker));
        if through {
            return connections;
        }
    }
    panic!(
        "16 connections and none through {}",
        rig.nodes[index].host.role
    );
}

/// Every connection answers again, from the same worker.
fn all_answer(connections: &mut [(KeepAlive, String)]) {
    for (connection, worker) in connections {
        assert_eq!(
            &connection.get().unwrap(),
            worker,
            "the connection moved worker"
        );
    }
}

/// Polls `node`'s forwarded counter until it has stood still for `quiet`;
/// returns how long after `since` it last moved. Fails after `limit`.
fn last_forwarded(node: &Node, since: Instant, quiet: Duration, limit: Duration) -> Duration {
    let mut last = node.forwarded().unwrap();
    let mut moved = Instant::now();
    while moved.elapsed() < quiet {
        assert!(
            since.elapsed() < limit,
            "{} still forwards {limit:?} after its withdrawal",
            node.host.role
        );
        std::thread::sleep(Duration::from_millis(5));
        let now = node.forwarded().unwrap();
        if now != last {
            (last, moved) = (now, Instant::now());
        }
    }
    moved.saturating_duration_since(since)
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
        let status: serde_json::Value =
            serde_json::from_str(&node.lb.cli_ok(&["status", "-o", "json"]).unwrap()).unwrap();
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
    rig.wait_next_hops(&[1, 2], SESSION_LIMIT).unwrap();
    let mut connections = keep_alives_through(&rig, 0);
    let load = Load::start(&rig.client, rig.target(), 2);
    load.wait_for(50);
    let (lb1, lb2) = (&rig.nodes[0], &rig.nodes[1]);

    let withdrawn = Instant::now();
    withdraw(lb1);
    rig.wait_next_hops(&[2], ROUTE_LIMIT).unwrap();
    let route_gone = withdrawn.elapsed();
    let last_packet = last_forwarded(lb1, withdrawn, Duration::from_secs(1), ROUTE_LIMIT * 2);
    assert!(lb1.announced().unwrap().is_empty());
    let list = announce_list(lb1);
    assert_eq!(list[0]["announced"], false, "{list:?}");
    assert!(list[0]["reason"].is_string(), "{list:?}");
    all_answer(&mut connections);
    // lb1 is out of the path: its counter stands still while the load and
    // the keep-alive connections go on through lb2.
    let (quiet1, busy2) = (lb1.forwarded().unwrap(), lb2.forwarded().unwrap());
    load.wait_for(200);
    all_answer(&mut connections);
    assert_eq!(lb1.forwarded().unwrap(), quiet1, "lb1 still forwards");
    assert!(lb2.forwarded().unwrap() > busy2);

    restore(lb1);
    let back = rig.wait_next_hops(&[1, 2], ROUTE_LIMIT).unwrap();
    let again = lb1.forwarded().unwrap();
    wait_until(ROUTE_LIMIT, "lb1 forwarding again", || {
        lb1.forwarded().unwrap() > again
    });
    all_answer(&mut connections);
    load.wait_for(100);
    let report = load.stop().unwrap();
    eprintln!(
        "planned withdrawal: router route changed {route_gone:?} after `lb announce withdraw`, \
         last packet reached the withdrawn balancer {last_packet:?} after it; restored in {back:?}; \
         {} requests, {} lost, {} slow",
        report.ok + report.failed,
        report.failed,
        report.slow
    );
    assert_eq!(report.failed, 0, "{report:?}");
}

#[test]
fn bfd_takes_a_dead_balancer_out_and_established_connections_survive() {
    lb_testing::needs_root!();
    let _one = one_rig();
    let rig = announcing(2, 3);
    rig.wait_next_hops(&[1, 2], SESSION_LIMIT).unwrap();
    let mut connections: Vec<(KeepAlive, String)> = (0..100)
        .map(|_| {
            let mut connection = KeepAlive::open(&rig.client, rig.target()).unwrap();
            let worker = connection.get().unwrap();
            (connection, worker)
        })
        .collect();
    let load = Load::start(&rig.client, rig.target(), 2);
    load.wait_for(50);

    let cut = Instant::now();
    rig.nodes[0].cut_link().unwrap();
    // The connections talk while BFD is still deciding: those through lb1
    // retransmit until the router sends them to lb2.
    let survivors = std::thread::spawn(move || {
        connections
            .iter_mut()
            .map(|(connection, worker)| connection.get().is_ok_and(|w| w == *worker))
            .filter(|survived| *survived)
            .count()
    });
    rig.wait_next_hops(&[2], ROUTE_LIMIT).unwrap();
    let detected = cut.elapsed();
    let survived = survivors.join().unwrap();
    load.wait_for(100);
    let report = load.stop().unwrap();
    eprintln!(
        "link cut: router route changed {detected:?} after the cut; {survived} of 100 \
         established connections survived; {} new requests, {} failed, {} slow (SYN resent)",
        report.ok + report.failed,
        report.failed,
        report.slow
    );
    assert!(
        survived >= 99,
        "only {survived} of 100 connections survived"
    );
}

#[test]
fn a_third_balancer_joins_under_load_without_losing_a_request() {
    lb_testing::needs_root!();
    let _one = one_rig();
    let mut rig = announcing(2, 3);
    rig.wait_next_hops(&[1, 2], SESSION_LIMIT).unwrap();
    let mut connections = keep_alives_through(&rig, 0);
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
    all_answer(&mut connections);
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
