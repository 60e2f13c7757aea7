//! UDP services behind lb with real DNS servers (dnsmasq) on the workers
//! and a real client (dig): health checks that route around a stopped
//! service and a dead host, deleted workers that keep no traffic, idle
//! flows scheduled afresh, and workers that never resolve. Needs root.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Duration,
};

use lb_testing::{
    lb_exe,
    rig::{Rig, VIP4, VIP6},
    testbed::{Host, Process},
    wait::wait_until,
};

const VIP: &str = "192.0.2.100:53/udp";
const VIP_V6: &str = "[2001:db8::100]:53/udp";
/// A client port that stays the same across queries, as a resolver's does.
const FIXED_PORT: u16 = 40_053;

/// A rig of `workers` workers, each running dnsmasq that answers
/// `who.test` with its own address in 203.0.113.0/24.
fn rig(workers: u8) -> (Rig, Vec<Option<Process>>) {
    let rig = Rig::new(Path::new(lb_exe()), workers, &[]).unwrap();
    let servers = rig
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let answer = Ipv4Addr::new(203, 0, 113, i as u8 + 1);
            let vips = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)];
            Some(rig.bed.start_dnsmasq(w, &vips, answer).unwrap())
        })
        .collect();
    (rig, servers)
}

/// The worker role whose dnsmasq gave `answer`.
fn role_of(answer: &str) -> String {
    let last: u8 = answer
        .trim()
        .rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an answer: {answer:?}"));
    format!("w{last}")
}

/// Sends `count` queries for `who.test` to `vip` from fresh source ports
/// (one dig process reading a batch) and returns how many each worker
/// answered and how many got no answer.
fn ask(client: &Host, vip: IpAddr, count: usize) -> (HashMap<String, usize>, usize) {
    // Tests run in parallel threads of one process: one file each call.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let batch = std::env::temp_dir().join(format!("lbt-{}-dig-{call}", std::process::id()));
    let line = format!("@{vip} who.test A\n");
    std::fs::write(&batch, line.repeat(count)).unwrap();
    let output = client
        .command("dig")
        .args(["+short", "+tries=1", "+time=1", "-f"])
        .arg(&batch)
        .output()
        .unwrap();
    std::fs::remove_file(&batch).unwrap();
    let mut spread = HashMap::new();
    let text = String::from_utf8_lossy(&output.stdout);
    for answer in text.lines().filter(|l| l.starts_with("203.0.113.")) {
        *spread.entry(role_of(answer)).or_default() += 1;
    }
    let answered: usize = spread.values().sum();
    (spread, count - answered)
}

/// One query from [`FIXED_PORT`]: the worker that answered, if any.
fn ask_from_fixed_port(client: &Host, vip: IpAddr) -> Option<String> {
    let source = match vip {
        IpAddr::V4(_) => IpAddr::V4(client.ipv4),
        IpAddr::V6(_) => IpAddr::V6(client.ipv6),
    };
    let output = client
        .command("dig")
        .args(["+short", "+tries=1", "+time=2", "-b"])
        .arg(format!("{source}#{FIXED_PORT}"))
        .arg(format!("@{vip}"))
        .args(["who.test", "A"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find(|l| l.starts_with("203.0.113."))
        .map(role_of)
}

/// Waits until the VIP answers: fresh namespaces take a moment to settle
/// IPv6 (link-local addresses go through duplicate address detection), and
/// a first query could time out for reasons that are not lb's.
fn wait_for_answers(client: &Host, vip: IpAddr) {
    wait_until(Duration::from_secs(10), "answering", || {
        ask(client, vip, 1).1 == 0
    });
}

fn backend_rows(rig: &Rig) -> Vec<serde_json::Value> {
    let out = rig.lb.cli_ok(&["backend", "list", "-o", "json"]).unwrap();
    serde_json::from_str(&out).unwrap()
}

fn state_of(rig: &Rig, worker: &str) -> String {
    backend_rows(rig)
        .into_iter()
        .find(|row| row["worker"] == worker)
        .map_or_else(
            || "absent".into(),
            |row| row["state"].as_str().unwrap().to_owned(),
        )
}

#[test]
fn default_checks_route_around_a_stopped_service_and_a_dead_host() {
    lb_testing::needs_root!();
    let (rig, mut servers) = rig(3);
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let vips: Vec<serde_json::Value> =
        serde_json::from_str(&rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(vips[0]["health"], "udp", "UDP VIPs are checked by default");
    wait_for_answers(&rig.client, VIP4.into());
    let (spread, failed) = ask(&rig.client, VIP4.into(), 60);
    assert_eq!((failed, spread.len()), (0, 3), "all healthy: {spread:?}");

    // w1's service stops: its host answers with port unreachable.
    servers[0] = None;
    let w1 = rig.workers[0].ipv4.to_string();
    wait_until(Duration::from_secs(10), "w1 down", || {
        state_of(&rig, &w1) == "down"
    });
    let (spread, failed) = ask(&rig.client, VIP4.into(), 300);
    println!("service stopped on w1: {spread:?}, {failed} failed of 300");
    assert_eq!(failed, 0, "{spread:?}");
    assert!(!spread.contains_key("w1"), "{spread:?}");

    // w2's host goes away: nothing answers its ARP any more.
    rig.workers[1]
        .run("ip", &["link", "set", "eth0", "down"])
        .unwrap();
    let w2 = rig.workers[1].ipv4.to_string();
    wait_until(Duration::from_secs(30), "w2 out of scheduling", || {
        matches!(state_of(&rig, &w2).as_str(), "down" | "unreachable")
    });
    let (spread, failed) = ask(&rig.client, VIP4.into(), 300);
    println!("host of w2 down: {spread:?}, {failed} failed of 300");
    assert_eq!(failed, 0, "{spread:?}");
    assert_eq!(spread.keys().collect::<Vec<_>>(), ["w3"], "{spread:?}");

    // Both come back and take queries again.
    servers[0] = Some(
        rig.bed
            .start_dnsmasq(
                &rig.workers[0],
                &[IpAddr::V4(VIP4), IpAddr::V6(VIP6)],
                Ipv4Addr::new(203, 0, 113, 1),
            )
            .unwrap(),
    );
    rig.workers[1]
        .run("ip", &["link", "set", "eth0", "up"])
        .unwrap();
    wait_until(Duration::from_secs(30), "w1 and w2 up", || {
        state_of(&rig, &w1) == "up" && state_of(&rig, &w2) == "up"
    });
    let (spread, failed) = ask(&rig.client, VIP4.into(), 90);
    assert_eq!((failed, spread.len()), (0, 3), "{spread:?}");
}

#[test]
fn a_deleted_workers_flow_moves_at_once_and_does_not_come_back() {
    lb_testing::needs_root!();
    let (rig, _servers) = rig(3);
    rig.add_vip_with_workers(VIP_V6, &[]).unwrap();
    let vip = IpAddr::V6(VIP6);
    wait_for_answers(&rig.client, vip);
    let first = ask_from_fixed_port(&rig.client, vip).expect("an answer");
    assert_eq!(
        ask_from_fixed_port(&rig.client, vip).as_deref(),
        Some(first.as_str()),
        "one 5-tuple, one worker"
    );
    let host = rig.workers.iter().find(|w| w.role == first).unwrap();
    let addr = host.ipv6.to_string();
    rig.lb.cli_ok(&["backend", "del", VIP_V6, &addr]).unwrap();
    let moved = ask_from_fixed_port(&rig.client, vip).expect("an answer after the delete");
    assert_ne!(moved, first, "the deleted worker still got the flow");
    let stats = rig.lb.stats().unwrap();
    assert!(stats.flow_rescheduled >= 1, "{stats:?}");

    rig.lb.cli_ok(&["backend", "add", VIP_V6, &addr]).unwrap();
    for _ in 0..3 {
        assert_eq!(
            ask_from_fixed_port(&rig.client, vip).as_deref(),
            Some(moved.as_str()),
            "re-adding {first} took the flow back"
        );
    }
}

#[test]
fn a_flow_idle_past_its_vips_timeout_is_scheduled_afresh() {
    lb_testing::needs_root!();
    let (rig, _servers) = rig(2);
    rig.add_vip_with_workers(VIP, &["--idle-timeout", "3s"])
        .unwrap();
    let vip = IpAddr::V4(VIP4);
    wait_for_answers(&rig.client, vip);
    let first = ask_from_fixed_port(&rig.client, vip).expect("an answer");
    let host = rig.workers.iter().find(|w| w.role == first).unwrap();
    // Draining keeps established flows but takes no new ones: the flow
    // stays while it is busy and moves once it has been idle too long.
    rig.lb
        .cli_ok(&["backend", "drain", VIP, &host.ipv4.to_string()])
        .unwrap();
    assert_eq!(
        ask_from_fixed_port(&rig.client, vip).as_deref(),
        Some(first.as_str()),
        "a busy flow stays on its draining worker"
    );
    let vips: Vec<serde_json::Value> =
        serde_json::from_str(&rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(vips[0]["idle_timeout"], "3s");
    let expired_before = rig.lb.stats().unwrap().flow_expired;
    // The data plane expires a flow at its next packet; lb flows tells
    // when that packet will find it idle past the timeout.
    let client = format!("{}:{FIXED_PORT}", rig.client.ipv4);
    wait_until(Duration::from_secs(10), "the flow idle", || {
        let flows = rig.lb.cli_ok(&["flows", "-o", "json"]).unwrap();
        let flows: Vec<serde_json::Value> = serde_json::from_str(&flows).unwrap();
        let flow = flows.iter().find(|f| f["client"] == *client);
        match flow {
            Some(flow) if flow["state"] == "idle" => Ok(()),
            flow => Err(format!("{flow:?}")),
        }
    });
    let after = ask_from_fixed_port(&rig.client, vip).expect("an answer after the idle time");
    assert_ne!(after, first, "an idle flow was still followed");
    assert_eq!(rig.lb.stats().unwrap().flow_expired, expired_before + 1);
}

#[test]
fn a_worker_that_never_resolves_is_unreachable_and_loses_nothing() {
    lb_testing::needs_root!();
    let (rig, _servers) = rig(2);
    rig.add_vip_with_workers(VIP_V6, &[]).unwrap();
    wait_for_answers(&rig.client, IpAddr::V6(VIP6));
    let typo = "2001:db8::99";
    rig.lb.cli_ok(&["backend", "add", VIP_V6, typo]).unwrap();
    let row = backend_rows(&rig)
        .into_iter()
        .find(|row| row["worker"] == typo)
        .unwrap();
    assert_eq!(row["state"], "unreachable", "{row}");
    assert_eq!(row["reason"], "no neighbour advertisement", "{row}");
    let status = rig.lb.status_json().unwrap();
    assert_eq!(status["workers_unreachable"], 1, "{status}");
    assert!(rig.lb.log().contains("is unreachable"), "{}", rig.lb.log());

    let (spread, failed) = ask(&rig.client, IpAddr::V6(VIP6), 100);
    println!("with an unresolvable worker: {spread:?}, {failed} of 100 lost");
    assert_eq!(failed, 0, "{spread:?}");
    assert_eq!(rig.lb.stats().unwrap().drop_no_neighbour, 0);
}
