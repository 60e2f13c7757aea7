//! End-to-end balancing over L2 DSR in network namespaces, with nginx
//! workers holding the VIP on loopback. Needs root (CI runs as root).

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
};

use lb_testing::{
    lb_exe,
    rig::{v6, KeepAlive, Rig, METRICS_ADDR, TIMEOUT, UDP_PORT, VIP4, VIP6},
    testbed::LbProcess,
};

fn rig(workers: u8) -> Rig {
    Rig::new(lb_exe().as_ref(), workers, &[]).unwrap()
}

fn assert_even(counts: &BTreeMap<String, usize>, total: usize, workers: usize) {
    assert_eq!(counts.values().sum::<usize>(), total, "{counts:?}");
    assert_eq!(counts.len(), workers, "every worker answers: {counts:?}");
    let fair = total as f64 / workers as f64;
    for (worker, n) in counts {
        assert!(
            (*n as f64 - fair).abs() <= 0.25 * fair,
            "{worker} got {n} of {total}: {counts:?}"
        );
    }
}

#[test]
fn http_over_ipv4_spreads_evenly_over_three_workers() {
    lb_testing::needs_root!();
    let rig = rig(3);
    rig.add_vip_with_workers("192.0.2.100:80/tcp", &[]).unwrap();
    rig.wait_workers_up("192.0.2.100:80/tcp").unwrap();
    let counts = rig.spread(VIP4.into(), 300).unwrap();
    assert_even(&counts, 300, 3);

    let stats = rig.lb.stats_json().unwrap();
    let new_flows: u64 = stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["new_flows"].as_u64().unwrap())
        .sum();
    assert!(new_flows >= 300, "{stats}");
    assert!(
        stats["global"]["forwarded"].as_u64().unwrap() > 300 * 3,
        "{stats}"
    );
    let flows: serde_json::Value =
        serde_json::from_str(&rig.lb.cli_ok(&["flows", "-o", "json"]).unwrap()).unwrap();
    assert!(
        flows.as_array().unwrap().len() >= 300,
        "every connection is in the flow table"
    );
}

#[test]
fn http_over_ipv6_spreads_evenly_over_three_workers() {
    lb_testing::needs_root!();
    let rig = rig(3);
    rig.add_vip_with_workers("[2001:db8::100]:80/tcp", &[])
        .unwrap();
    rig.wait_workers_up("[2001:db8::100]:80/tcp").unwrap();
    let counts = rig.spread(VIP6.into(), 300).unwrap();
    assert_even(&counts, 300, 3);
}

#[test]
fn a_udp_flow_sticks_to_one_worker_and_source_ports_spread() {
    lb_testing::needs_root!();
    let rig = rig(3);
    rig.add_vip_with_workers("192.0.2.100:5353/udp", &[])
        .unwrap();
    let target = SocketAddr::new(VIP4.into(), UDP_PORT);
    let ask = |socket: &UdpSocket| {
        socket.send_to(b"who", target).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let (one_flow, spread) = rig
        .client
        .within(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.set_read_timeout(Some(TIMEOUT)).unwrap();
            let one: Vec<String> = (0..20).map(|_| ask(&socket)).collect();
            let many: Vec<String> = (0..60)
                .map(|_| {
                    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                    s.set_read_timeout(Some(TIMEOUT)).unwrap();
                    ask(&s)
                })
                .collect();
            (one, many)
        })
        .unwrap();
    assert!(one_flow.iter().all(|w| *w == one_flow[0]), "{one_flow:?}");
    let distinct: std::collections::HashSet<_> = spread.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "different source ports reach every worker: {spread:?}"
    );
}

#[test]
fn established_connections_survive_worker_changes_and_removed_workers_get_nothing_more() {
    lb_testing::needs_root!();
    let rig = rig(4);
    let vip = "192.0.2.100:80/tcp";
    rig.lb.cli_ok(&["vip", "add", vip]).unwrap();
    for w in &rig.workers[..3] {
        rig.lb
            .cli_ok(&["backend", "add", vip, &w.ipv4.to_string()])
            .unwrap();
    }
    let target = SocketAddr::new(VIP4.into(), 80);
    // One keep-alive connection per worker.
    let mut conns: HashMap<String, KeepAlive> = HashMap::new();
    for _ in 0..200 {
        let mut conn = KeepAlive::open(&rig.client, target).unwrap();
        let worker = conn.get().unwrap();
        conns.entry(worker).or_insert(conn);
        if conns.len() == 3 {
            break;
        }
    }
    assert_eq!(conns.len(), 3, "found a connection to each worker");

    rig.lb
        .cli_ok(&["backend", "add", vip, &rig.workers[3].ipv4.to_string()])
        .unwrap();
    for (worker, conn) in conns.iter_mut() {
        assert_eq!(
            &conn.get().unwrap(),
            worker,
            "adding a worker moved an established connection"
        );
    }
    let removed = rig.workers[0].role.clone();
    rig.lb
        .cli_ok(&["backend", "del", vip, &rig.workers[0].ipv4.to_string()])
        .unwrap();
    for (worker, conn) in conns.iter_mut() {
        if *worker == removed {
            // Removed without --graceful: nothing more goes there; the
            // worker its packets now reach resets the connection.
            assert!(
                conn.get().is_err(),
                "the connection to removed {removed} still reached it"
            );
            continue;
        }
        for _ in 0..5 {
            assert_eq!(
                &conn.get().unwrap(),
                worker,
                "removing {removed} disturbed another connection"
            );
        }
    }
    let counts = rig.spread(VIP4.into(), 90).unwrap();
    assert!(
        !counts.contains_key(&removed),
        "{removed} got new connections: {counts:?}"
    );
    assert_eq!(counts.len(), 3, "{counts:?}");
}

#[test]
fn traffic_to_the_balancer_itself_is_untouched() {
    lb_testing::needs_root!();
    let rig = rig(1);
    rig.add_vip_with_workers("192.0.2.100:80/tcp", &[]).unwrap();
    let own = SocketAddr::new(IpAddr::V4(rig.balancer.ipv4), 8080);
    let listener = rig
        .balancer
        .within(move || TcpListener::bind(own).unwrap())
        .unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.write_all(b"balancer host");
        }
    });
    let passed_before = rig.lb.stats().unwrap().pass_not_vip;
    let kernel_before = received(&rig.balancer);
    let answer = rig
        .client
        .within(move || {
            let mut stream = TcpStream::connect_timeout(&own, TIMEOUT).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        })
        .unwrap();
    assert_eq!(answer, "balancer host");
    rig.client
        .run(
            "ping",
            &["-c", "2", "-W", "2", &rig.balancer.ipv4.to_string()],
        )
        .unwrap();
    // Every echo request and TCP segment the balancer's kernel took in
    // went through lb as "not for a VIP" (ARP and neighbour discovery
    // count there too, hence at least).
    let passed = rig.lb.stats().unwrap().pass_not_vip - passed_before;
    let (echoes, segments) = received(&rig.balancer);
    let (echoes, segments) = (echoes - kernel_before.0, segments - kernel_before.1);
    assert!(
        echoes >= 2 && segments >= 3,
        "{echoes} echoes, {segments} segments"
    );
    assert!(
        passed >= echoes + segments,
        "lb passed {passed} packets, the kernel took {echoes} echo requests and {segments} TCP segments"
    );
}

/// Echo requests and TCP segments `host`'s kernel has taken in
/// (`/proc/net/snmp` InEchos and InSegs).
fn received(host: &lb_testing::testbed::Host) -> (u64, u64) {
    let snmp = host.proc_net("snmp").unwrap();
    let field = |proto: &str, name: &str| -> u64 {
        let mut lines = snmp
            .lines()
            .filter(|l| l.starts_with(&format!("{proto}: ")));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        let at = names.split_whitespace().position(|n| n == name).unwrap();
        values.split_whitespace().nth(at).unwrap().parse().unwrap()
    };
    (field("Icmp", "InEchos"), field("Tcp", "InSegs"))
}

#[test]
fn two_instances_with_their_own_pins_and_sockets_keep_apart() {
    lb_testing::needs_root!();
    let mut rig = rig(2);
    let second = rig
        .add_balancer(
            "lb2",
            Ipv4Addr::new(192, 0, 2, 3),
            v6(3),
            Ipv4Addr::new(192, 0, 2, 101),
        )
        .unwrap();
    let mut lb2 = LbProcess::start(lb_exe().as_ref(), &mut rig.bed, &second, "lb2", &[]).unwrap();
    rig.add_vip_with_workers("192.0.2.100:80/tcp", &[]).unwrap();
    lb2.cli_ok(&["vip", "add", "192.0.2.101:80/tcp"]).unwrap();
    lb2.cli_ok(&[
        "backend",
        "add",
        "192.0.2.101:80/tcp",
        &rig.workers[1].ipv4.to_string(),
    ])
    .unwrap();

    assert_eq!(rig.spread(VIP4.into(), 40).unwrap().len(), 2);
    let only_w2 = rig.spread("192.0.2.101".parse().unwrap(), 20).unwrap();
    assert_eq!(only_w2.keys().collect::<Vec<_>>(), vec!["w2"]);
    let first_vips = rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap();
    assert!(first_vips.contains("192.0.2.100:80/tcp") && !first_vips.contains("192.0.2.101"));
    lb2.stop().unwrap();
    assert_eq!(
        rig.spread(VIP4.into(), 20).unwrap().values().sum::<usize>(),
        20,
        "stopping one leaves the other"
    );
}

#[test]
fn bad_cli_input_fails_with_one_line_and_changes_nothing() {
    lb_testing::needs_root!();
    let rig = rig(1);
    rig.add_vip_with_workers("192.0.2.100:80/tcp", &[]).unwrap();
    let before = desired_state(&rig.lb);
    let w1 = rig.workers[0].ipv4.to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["vip", "add", "192.0.2.300:80/tcp"], "not ADDRESS:PORT"),
        (&["vip", "add", "192.0.2.100:70000/tcp"], "not ADDRESS:PORT"),
        (&["vip", "add", "192.0.2.100:0/tcp"], "port 0"),
        (&["vip", "add", "192.0.2.100:80"], "no protocol"),
        (&["vip", "add", "192.0.2.100:80/tcp"], "exists already"),
        (
            &["vip", "add", "192.0.2.102:80/tcp", "--table-size", "1000"],
            "must be a prime",
        ),
        (&["vip", "del", "192.0.2.199:80/tcp"], "no VIP"),
        (
            &["backend", "add", "192.0.2.199:80/tcp", "192.0.2.11"],
            "no VIP",
        ),
        (
            &["backend", "add", "192.0.2.100:80/tcp", &w1],
            "already on VIP",
        ),
        (
            &["backend", "add", "192.0.2.100:80/tcp", "2001:db8::11"],
            "different IP families",
        ),
        (
            &[
                "backend",
                "add",
                "192.0.2.100:80/tcp",
                "192.0.2.12",
                "--weight",
                "0",
            ],
            "weight 0",
        ),
        (
            &["backend", "add", "192.0.2.100:80/tcp", "not-an-ip"],
            "`not-an-ip` is not a worker",
        ),
        (
            &["backend", "del", "192.0.2.100:80/tcp", "192.0.2.77"],
            "is not on VIP",
        ),
        // The edges of the balancer's own subnets (192.0.2.0/24 and
        // 2001:db8::/64 on eth0) are no host.
        (
            &["vip", "add", "192.0.2.255:80/tcp"],
            "broadcast address of 192.0.2.0/24",
        ),
        (
            &["vip", "add", "192.0.2.0:80/tcp"],
            "network address of 192.0.2.0/24",
        ),
        (
            &["backend", "add", "192.0.2.100:80/tcp", "192.0.2.255"],
            "broadcast address of 192.0.2.0/24",
        ),
        (
            &["backend", "add", "192.0.2.100:80/tcp", "192.0.2.0"],
            "network address of 192.0.2.0/24",
        ),
        (
            &["vip", "add", "[2001:db8::]:80/tcp"],
            "subnet-router anycast address of 2001:db8::/64",
        ),
        (&["vip", "add", "[::192.0.2.100]:80/tcp"], "IPv4-compatible"),
        (
            &["sessions", "pin", "192.0.2.100:80/tcp", "0.0.0.0", &w1],
            "client 0.0.0.0 ",
        ),
    ];
    for (args, reason) in cases {
        let output = rig.lb.cli(args).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    assert_eq!(before, desired_state(&rig.lb));
    let output = std::process::Command::new(lb_exe())
        .args(["vip", "list", "--socket", "/nonexistent/lb.sock"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("start one with `sudo lb run"));
}

#[test]
fn a_vip_that_would_hide_lbs_own_metrics_is_refused() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(lb_exe().as_ref(), 1, &["--metrics", METRICS_ADDR]).unwrap();
    let before = desired_state(&rig.lb);
    // The balancer's own address and the metrics port, over TCP: the data
    // plane would send the scrapes to the workers.
    let hiding = format!("{METRICS_ADDR}/tcp");
    let output = rig.lb.cli(&["vip", "add", &hiding]).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{hiding} was added");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("metrics endpoint {METRICS_ADDR}")),
        "{stderr}"
    );
    assert_eq!(before, desired_state(&rig.lb));
    // UDP there, and TCP on that port of an address not the balancer's,
    // hide nothing.
    for vip in [format!("{METRICS_ADDR}/udp"), "192.0.2.100:9469/tcp".into()] {
        rig.lb.cli_ok(&["vip", "add", &vip]).unwrap();
    }
    // Clients still reach the metrics over the wire, past the data plane.
    let target: SocketAddr = METRICS_ADDR.parse().unwrap();
    let scrape = rig
        .client
        .within(move || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })
        .unwrap()
        .unwrap();
    assert!(scrape.contains("lb_flow_table_capacity"), "{scrape}");

    // At start: a config's VIP on the port of metrics served on every
    // address, refused before anything is pinned.
    let socket = rig.bed.socket("hiding");
    let config = socket.with_extension("toml");
    std::fs::write(&config, "[[vip]]\naddress = \"192.0.2.2:9470/tcp\"\n").unwrap();
    let pins = rig.bed.pin_dir("hiding");
    let state = socket.with_extension("json");
    let args = [
        "--iface",
        "eth0",
        "--metrics",
        "0.0.0.0:9470",
        "--config",
        config.to_str().unwrap(),
        "--pin-dir",
        pins.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
        "--state-file",
        state.to_str().unwrap(),
    ];
    let (started, stderr) = rig
        .balancer
        .run_lb_expecting_refusal(lb_exe().as_ref(), &args, TIMEOUT * 4)
        .unwrap();
    assert!(!started, "lb run {args:?} was accepted");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("VIP 192.0.2.2:9470/tcp would hide lb's own metrics endpoint 0.0.0.0:9470"),
        "{stderr}"
    );
    assert!(!pins.exists(), "the refused start made {}", pins.display());
}

/// `lb vip list` and `lb backend list` without what changes by itself
/// (health check timings).
fn desired_state(lb: &LbProcess) -> (serde_json::Value, serde_json::Value) {
    let vips = serde_json::from_str(&lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap()).unwrap();
    let mut workers: serde_json::Value =
        serde_json::from_str(&lb.cli_ok(&["backend", "list", "-o", "json"]).unwrap()).unwrap();
    for worker in workers.as_array_mut().unwrap() {
        worker.as_object_mut().unwrap().remove("check");
    }
    (vips, workers)
}
