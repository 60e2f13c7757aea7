//! L3 forwarding end to end: workers on a network of their own behind a
//! router, reached by IPIP (IPv4, IPv6, and an IPv4 VIP served by IPv6
//! workers) and GUE, each worker running `lb decap attach`; real nginx,
//! real UDP, real uploads through Path MTU discovery. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    time::Duration,
};

use lb_testing::{
    lb_exe,
    rig::{far, KeepAlive, Rig, TIMEOUT, UDP_PORT, VIP4, VIP6},
    wait::wait_until,
};

const GUE_PORT: u16 = 6080;

fn rig(workers: u8) -> Rig {
    Rig::behind_router(Path::new(lb_exe()), workers, GUE_PORT, &[]).unwrap()
}

/// Every worker of the rig serves `vip`'s traffic within ±25% of an even
/// share over 300 new connections.
fn assert_spread(rig: &Rig, vip: IpAddr) {
    let spread = rig.spread(vip, 300).unwrap();
    assert_eq!(spread.len(), rig.workers.len(), "{vip}: {spread:?}");
    let share = 300 / rig.workers.len();
    for (worker, count) in &spread {
        assert!(
            count * 4 >= share * 3 && count * 4 <= share * 5,
            "{vip}: {worker} got {count} of 300: {spread:?}"
        );
    }
}

/// Adds `vip` with `args` and every worker, by address family `v6`.
fn add(rig: &Rig, vip: &str, args: &[&str], v6: bool) {
    let mut command = vec!["vip", "add", vip];
    command.extend_from_slice(args);
    rig.lb.cli_ok(&command).unwrap();
    for worker in &rig.workers {
        let addr = if v6 {
            worker.ipv6.to_string()
        } else {
            worker.ipv4.to_string()
        };
        rig.lb.cli_ok(&["backend", "add", vip, &addr]).unwrap();
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn ipip_and_gue_reach_workers_behind_a_router_over_both_families() {
    lb_testing::needs_root!();
    let rig = rig(2);
    add(&rig, "192.0.2.100:80/tcp", &["--forward", "ipip"], false);
    add(&rig, "[2001:db8::100]:80/tcp", &["--forward", "gue"], true);
    let backends = json(&rig.lb.cli_ok(&["backend", "list", "-o", "json"]).unwrap());
    for worker in backends.as_array().unwrap() {
        assert_eq!(worker["state"], "up", "{worker}");
    }
    let vips = json(&rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap());
    assert_eq!(vips[0]["forward"], "ipip", "{vips}");
    assert_eq!(vips[1]["forward"], "gue", "{vips}");
    assert_eq!(vips[1]["gue_port"], GUE_PORT, "{vips}");
    assert_spread(&rig, IpAddr::V4(VIP4));
    assert_spread(&rig, IpAddr::V6(VIP6));

    // An IPv4 VIP served by IPv6 workers: IPv4 inside IPv6.
    rig.lb
        .cli_ok(&["vip", "del", "192.0.2.100:80/tcp"])
        .unwrap();
    add(&rig, "192.0.2.100:80/tcp", &["--forward", "ipip"], true);
    assert_spread(&rig, IpAddr::V4(VIP4));
    let stats = rig.lb.stats().unwrap();
    assert_eq!(stats.drop_no_tunnel, 0);
    assert!(stats.forwarded >= 900, "{stats:?}");
}

#[test]
fn a_keep_alive_connection_and_a_udp_flow_keep_their_worker_through_changes() {
    lb_testing::needs_root!();
    let rig = rig(3);
    let vip = "192.0.2.100:80/tcp";
    let udp = format!("{VIP4}:{UDP_PORT}/udp");
    rig.lb
        .cli_ok(&["vip", "add", vip, "--forward", "gue"])
        .unwrap();
    rig.lb
        .cli_ok(&["vip", "add", &udp, "--forward", "ipip", "--health", "none"])
        .unwrap();
    for worker in &rig.workers[..2] {
        for v in [vip, udp.as_str()] {
            rig.lb
                .cli_ok(&["backend", "add", v, &worker.ipv4.to_string()])
                .unwrap();
        }
    }
    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    let (mut keep, first) = rig
        .client
        .within(move || {
            let mut keep = KeepAlive::connect(target, TIMEOUT).unwrap();
            let first = keep.get().unwrap();
            (keep, first)
        })
        .unwrap();
    let socket = rig
        .client
        .within(|| UdpSocket::bind(("192.0.2.1", 40555)))
        .unwrap()
        .unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let ask = |socket: &UdpSocket| {
        socket.send_to(b"who", (VIP4, UDP_PORT)).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let udp_first = ask(&socket);

    // A worker joins, another (not the one either flow is on) leaves.
    let third = rig.workers[2].ipv4.to_string();
    rig.lb.cli_ok(&["backend", "add", vip, &third]).unwrap();
    rig.lb.cli_ok(&["backend", "add", &udp, &third]).unwrap();
    let other = rig
        .workers
        .iter()
        .find(|w| w.role != first && w.role != udp_first && w.ipv4.to_string() != third)
        .map(|w| w.ipv4.to_string());
    if let Some(other) = other {
        rig.lb.cli_ok(&["backend", "del", vip, &other]).unwrap();
    }
    for _ in 0..10 {
        assert_eq!(
            keep.get().unwrap(),
            first,
            "the keep-alive connection moved"
        );
        assert_eq!(ask(&socket), udp_first, "the UDP flow moved");
    }
}

/// A sink on every worker: reads a connection to the end, answers with the
/// byte count.
fn start_sinks(rig: &Rig, port: u16) {
    for worker in &rig.workers {
        let listener = worker
            // Both families: Linux's IPv6 wildcard takes IPv4 too.
            .within(move || TcpListener::bind(("::", port)))
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(8) {
                let Ok(mut stream) = stream else { continue };
                let mut count = 0u64;
                let mut buf = [0u8; 65536];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    count += n as u64;
                }
                let _ = stream.write_all(count.to_string().as_bytes());
            }
        });
    }
}

/// Sends `bytes` to `target` in full-size segments and returns what the
/// sink counted.
fn upload(target: SocketAddr, bytes: usize) -> u64 {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(&vec![0x5a; bytes]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.parse().unwrap()
}

#[test]
fn uploads_of_full_size_segments_complete_through_path_mtu_discovery() {
    lb_testing::needs_root!();
    let rig = rig(1);
    let worker = rig.workers[0].ipv4.to_string();
    let worker6 = rig.workers[0].ipv6.to_string();
    for (forward, port) in [("ipip", 9000), ("gue", 9001)] {
        start_sinks(&rig, port);
        for (vip, addr) in [
            (format!("{VIP4}:{port}/tcp"), worker.as_str()),
            (format!("[{VIP6}]:{port}/tcp"), worker6.as_str()),
        ] {
            // No checks: the sinks count the connections they take.
            rig.lb
                .cli_ok(&["vip", "add", &vip, "--forward", forward, "--health", "none"])
                .unwrap();
            rig.lb.cli_ok(&["backend", "add", &vip, addr]).unwrap();
        }
    }
    for port in [9000, 9001] {
        for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
            let before = rig.lb.stats().unwrap().too_big_answered;
            let target = SocketAddr::new(vip, port);
            let got = rig.client.within(move || upload(target, 300_000)).unwrap();
            assert_eq!(got, 300_000, "{target}: the upload arrived whole");
            let answered = rig.lb.stats().unwrap().too_big_answered - before;
            assert!(
                answered >= 1,
                "{target}: lb answered {answered} packets too big for the tunnel"
            );
        }
    }
}

#[test]
fn bad_l3_input_is_refused_in_one_line_and_changes_nothing() {
    lb_testing::needs_root!();
    let rig = rig(1);
    let refused = |args: &[&str], wanted: &str| {
        let output = rig.lb.cli(args).unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        let error = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = error.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.iter().any(|l| l.contains(wanted)),
            "{args:?}: {error}"
        );
    };
    refused(
        &["vip", "add", "192.0.2.100:80/tcp", "--forward", "vxlan"],
        "vxlan",
    );
    refused(
        &[
            "vip",
            "add",
            "192.0.2.100:80/tcp",
            "--forward",
            "gue",
            "--gue-port",
            "0",
        ],
        "--gue-port must be 1 to 65535",
    );
    refused(
        &["vip", "add", "192.0.2.100:80/tcp", "--gue-port", "7000"],
        "--gue-port is for --forward gue only",
    );
    rig.lb
        .cli_ok(&["vip", "add", "192.0.2.100:80/tcp", "--forward", "ipip"])
        .unwrap();
    // Nothing routes 198.51.100.0/24 from the balancer.
    refused(
        &["backend", "add", "192.0.2.100:80/tcp", "198.51.100.77"],
        "no route to 198.51.100.77",
    );
    // DSR can't cross families.
    rig.lb
        .cli_ok(&["vip", "add", "192.0.2.101:80/tcp"])
        .unwrap();
    refused(
        &[
            "backend",
            "add",
            "192.0.2.101:80/tcp",
            &far(0x11).to_string(),
        ],
        "different IP families",
    );
    let vips = json(&rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap());
    assert_eq!(vips.as_array().unwrap().len(), 2, "{vips}");
    assert_eq!(vips[0]["workers"], 0, "{vips}");

    // A route that goes away takes the worker out, with its reason.
    let worker = rig.workers[0].ipv4.to_string();
    rig.lb
        .cli_ok(&["backend", "add", "192.0.2.100:80/tcp", &worker])
        .unwrap();
    rig.balancer
        .run("ip", &["route", "del", "203.0.113.0/24"])
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the worker without a route is unreachable",
        || {
            let list = json(&rig.lb.cli_ok(&["backend", "list", "-o", "json"]).unwrap());
            list[0]["state"] == "unreachable"
                && list[0]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("no route"))
        },
    );
}

#[test]
fn tunnel_sources_two_of_a_family_or_not_unicast_are_refused() {
    lb_testing::needs_root!();
    let mut rig = rig(1);
    rig.lb.stop().unwrap();
    let socket = rig.lb.state_file().with_extension("sock");
    let (pins, state) = (rig.lb.pin_dir().to_owned(), rig.lb.state_file());
    let refused = |extra: &[&str]| {
        let mut args = vec!["--iface", "eth0", "--pin-dir"];
        let (pins, socket, state) = (
            pins.to_string_lossy(),
            socket.to_string_lossy(),
            state.to_string_lossy(),
        );
        args.extend([pins.as_ref(), "--socket", socket.as_ref()]);
        args.extend(["--state-file", state.as_ref()]);
        args.extend_from_slice(extra);
        let (started, stderr) = rig
            .balancer
            .run_lb_expecting_refusal(lb_exe().as_ref(), &args, Duration::from_secs(20))
            .unwrap();
        assert!(!started, "lb run {extra:?} was accepted");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "not one line: {stderr}");
        lines[0].to_owned()
    };
    let error = refused(&[
        "--tunnel-source",
        "192.0.2.2",
        "--tunnel-source",
        "192.0.2.3",
    ]);
    assert!(error.contains("both IPv4"), "{error}");
    let error = refused(&["--tunnel-source", "224.0.0.9"]);
    assert!(error.contains("not a unicast address"), "{error}");
    let error = refused(&["--tunnel-mtu", "9000"]);
    assert!(error.contains("larger than eth0's MTU"), "{error}");
    // One of each family is fine, and what `lb run` was given.
    rig.start_lb(&[
        "--tunnel-source",
        "192.0.2.2",
        "--tunnel-source",
        "2001:db8::2",
    ])
    .unwrap();
    rig.lb
        .cli_ok(&["vip", "add", "192.0.2.100:80/tcp", "--forward", "ipip"])
        .unwrap();
}

#[test]
fn an_ipip_data_plane_outlives_its_controller_and_is_adopted() {
    lb_testing::needs_root!();
    let mut rig = rig(2);
    add(&rig, "192.0.2.100:80/tcp", &["--forward", "ipip"], false);
    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    let mut keep = KeepAlive::open(&rig.client, target).unwrap();
    let first = keep.get().unwrap();
    rig.lb.stop().unwrap();
    // The data plane keeps forwarding, the tunnel program included.
    assert_spread(&rig, IpAddr::V4(VIP4));
    rig.start_lb(&[]).unwrap();
    assert!(
        rig.lb.takeover_line.contains("adopted"),
        "{}",
        rig.lb.takeover_line
    );
    assert_eq!(
        keep.get().unwrap(),
        first,
        "the keep-alive connection moved"
    );
    assert_spread(&rig, IpAddr::V4(VIP4));
}

#[test]
fn sticky_sessions_and_least_load_work_through_the_tunnels() {
    lb_testing::needs_root!();
    let rig = rig(2);
    let sticky = "192.0.2.100:80/tcp";
    add(
        &rig,
        sticky,
        &["--forward", "gue", "--sticky", "60s"],
        false,
    );
    let spread = rig.spread(IpAddr::V4(VIP4), 20).unwrap();
    assert_eq!(spread.len(), 1, "a sticky client moved: {spread:?}");

    let least = "[2001:db8::100]:80/tcp";
    add(
        &rig,
        least,
        &["--forward", "ipip", "--scheduler", "least-load"],
        true,
    );
    let (busy, idle) = (
        rig.workers[0].ipv6.to_string(),
        rig.workers[1].ipv6.to_string(),
    );
    rig.lb
        .cli_ok(&["backend", "set", least, &busy, "--load", "1"])
        .unwrap();
    rig.lb
        .cli_ok(&["backend", "set", least, &idle, "--load", "0"])
        .unwrap();
    let spread = rig.spread(IpAddr::V6(VIP6), 200).unwrap();
    let to_idle = spread.get(&rig.workers[1].role).copied().unwrap_or(0);
    // Two choices: the idle worker wins unless both picks are the busy one.
    assert!(
        to_idle >= 120,
        "{to_idle} of 200 to the idle worker: {spread:?}"
    );
}

/// The state and check detail of `worker` on `vip`, from `backend list`.
fn worker_state(rig: &Rig, vip: &str, worker: IpAddr) -> (String, String) {
    let rows = json(
        &rig.lb
            .cli_ok(&["backend", "list", vip, "-o", "json"])
            .unwrap(),
    );
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["worker"] == worker.to_string())
        .unwrap_or_else(|| panic!("{worker} not in {rows}"))
        .clone();
    let detail = row["check"]["detail"].as_str().unwrap_or_default();
    (row["state"].as_str().unwrap().to_owned(), detail.to_owned())
}

#[test]
fn a_worker_that_cannot_decapsulate_is_checked_down_through_its_tunnel() {
    lb_testing::needs_root!();
    let mut rig = rig(3);
    let pins = rig.bed.pin_dir("decap-w1");
    let (gue, ipip) = ("192.0.2.100:80/tcp", "[2001:db8::100]:80/tcp");
    let fast = ["--health-interval", "200ms", "--health-timeout", "150ms"];
    add(
        &rig,
        gue,
        &[&["--forward", "gue"][..], &fast].concat(),
        false,
    );
    add(
        &rig,
        ipip,
        &[&["--forward", "ipip"][..], &fast].concat(),
        true,
    );
    let (w1, w1_v6) = (
        IpAddr::V4(rig.workers[0].ipv4),
        IpAddr::V6(rig.workers[0].ipv6),
    );
    let checked = |vip, worker| {
        let (state, detail) = worker_state(&rig, vip, worker);
        state == "up" && detail.starts_with("connected")
    };
    wait_until(
        TIMEOUT,
        "every worker checked up through both tunnels",
        || {
            rig.workers
                .iter()
                .all(|w| checked(gue, IpAddr::V4(w.ipv4)) && checked(ipip, IpAddr::V6(w.ipv6)))
        },
    );

    // The worker's decap goes: its direct check still connects, the
    // tunnel's echo goes unanswered.
    let detached = rig.workers[0]
        .command(lb_exe())
        .args(["decap", "detach", "--iface", "eth0", "--pin-dir"])
        .arg(&pins)
        .status()
        .unwrap();
    assert!(detached.success());
    let down_saying = |vip, worker, words: &str| {
        let (state, detail) = worker_state(&rig, vip, worker);
        state == "down" && detail.contains(words)
    };
    wait_until(TIMEOUT, "w1 down for its tunnels", || {
        down_saying(gue, w1, "no answer through the GUE (port 6080) tunnel")
            && down_saying(ipip, w1_v6, "no answer through the IPIP tunnel")
    });
    for worker in &rig.workers[1..] {
        let gue_state = worker_state(&rig, gue, IpAddr::V4(worker.ipv4));
        assert_eq!(gue_state.0, "up", "{gue_state:?}");
        let ipip_state = worker_state(&rig, ipip, IpAddr::V6(worker.ipv6));
        assert_eq!(ipip_state.0, "up", "{ipip_state:?}");
    }
    // Every new connection reaches a worker that can take it.
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let spread = rig.spread(vip, 30).unwrap();
        assert_eq!(spread.values().sum::<usize>(), 30, "{vip}: {spread:?}");
        assert_eq!(spread.len(), 2, "{vip}: {spread:?}");
    }

    // Who wants the direct check keeps it.
    rig.lb
        .cli_ok(
            &[
                &["vip", "set", gue, "--forward", "gue", "--health-direct"][..],
                &fast,
            ]
            .concat(),
        )
        .unwrap();
    wait_until(TIMEOUT, "w1 up when checked directly", || checked(gue, w1));
    let refused = rig
        .lb
        .cli(&["vip", "add", "192.0.2.100:81/tcp", "--health-direct"])
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--health-direct (direct) is for --forward ipip and gue only"),
        "{stderr}"
    );
}
