//! NAT forwarding end to end: real workers nobody changed (nginx on
//! 8080, no VIP on loopback, no sysctls, no `lb decap`) behind VIP:80,
//! over IPv4 and IPv6, `nat` and `fullnat`, on the one-arm sandbox
//! (`lb_testing::nat_rig`). Needs root.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_testing::{
    lb_exe,
    nat_rig::{NatRig, CLIENT4, CLIENT6, SOURCE4, SOURCE6},
    rig::{metric, v6, Download, KeepAlive, METRICS_ADDR, TIMEOUT, VIP4, VIP6},
    testbed::SLOW_BYTES,
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
    let rig = NatRig::new(lb_exe().as_ref(), 3, &["--metrics", METRICS_ADDR]).unwrap();
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
    // lb flows shows both tuples: the client's and the worker's side.
    let flows = rig.lb.cli_ok(&["flows", "-o", "json"]).unwrap();
    let flows: Vec<serde_json::Value> = serde_json::from_str(&flows).unwrap();
    let side = flows[0]["worker_side"]
        .as_str()
        .expect("a fullnat flow's worker side");
    assert!(
        side.starts_with(SOURCE4) || side.starts_with(&format!("[{SOURCE6}]")),
        "{side}"
    );
    assert!(side.ends_with(":8080"), "{side}");
    // The metrics count the allocations, and the connections per source
    // once the sweep has counted them.
    let scrape = || {
        rig.balancer
            .within(|| {
                use std::io::{Read as _, Write as _};
                let mut stream = std::net::TcpStream::connect(METRICS_ADDR).unwrap();
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n")
                    .unwrap();
                let mut text = String::new();
                stream.read_to_string(&mut text).unwrap();
                text
            })
            .unwrap()
    };
    let allocations = metric(&scrape(), "lb_nat_events_total{event=\"allocation\"}");
    assert!(allocations >= 62.0, "{allocations}");
    wait_until(TIMEOUT, "the NAT entries counted per source", || {
        let text = scrape();
        text.contains(&format!("lb_nat_entries{{source=\"{SOURCE4}\"}}"))
            && metric(&text, &format!("lb_nat_entries{{source=\"{SOURCE4}\"}}")) > 0.0
    });
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
    // A long transfer across the restart, too.
    let download = Download::start(&rig.client, IpAddr::V4(VIP4));
    rig.lb.kill().unwrap();
    rig.start_lb().unwrap();
    for _ in 0..5 {
        assert_eq!(connection.get().unwrap(), before, "the same worker");
    }
    assert_eq!(download.finish(), SLOW_BYTES, "the download completes");
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

/// `lb run`'s arguments for an instance of its own in `rig`'s bed,
/// whose paths the bed removes.
fn own_instance(rig: &mut NatRig, role: &str) -> Vec<String> {
    let paths = rig.bed.instance(role).unwrap();
    vec![
        "--iface".into(),
        "eth0".into(),
        "--name".into(),
        paths.name.to_string(),
    ]
}

#[test]
fn bad_nat_input_is_refused_in_one_line_with_nothing_changed() {
    lb_testing::needs_root!();
    let mut rig = NatRig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    // lb run: a NAT source that is no address here, an overlapping or
    // empty port range.
    for (flags, says) in [
        (
            &["--nat-source", "198.51.100.77"][..],
            "is not an address of this host",
        ),
        (
            &["--nat-ports", "30000-40000"][..],
            "overlaps the ports this host takes",
        ),
        (&["--nat-ports", "2000-1000"][..], "is empty"),
    ] {
        let mut args = own_instance(&mut rig, "lb-bad");
        args.extend(flags.iter().map(|f| f.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stderr) = rig
            .balancer
            .run_lb_expecting_refusal(lb_exe().as_ref(), &args, TIMEOUT)
            .unwrap();
        assert!(!ok, "{flags:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }

    // vip add and backend add.
    rig.lb
        .cli_ok(&["vip", "add", "192.0.2.110:80/tcp"])
        .unwrap();
    let refused = |args: &[&str], says: &str| {
        let output = rig.lb.cli(args).unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    refused(
        &["backend", "add", "192.0.2.110:80/tcp", "192.0.2.11:8080"],
        "only --forward nat or fullnat map ports",
    );
    refused(
        &["backend", "add", "192.0.2.110:80/tcp", "192.0.2.11:99999"],
        "is not a worker",
    );
    rig.lb
        .cli_ok(&["vip", "add", "192.0.2.111:80/tcp", "--forward", "nat"])
        .unwrap();
    rig.lb
        .cli_ok(&["backend", "add", "192.0.2.111:80/tcp", "192.0.2.11:8080"])
        .unwrap();
    rig.lb
        .cli_ok(&["vip", "add", "192.0.2.112:80/tcp", "--forward", "nat"])
        .unwrap();
    refused(
        &["backend", "add", "192.0.2.112:80/tcp", "192.0.2.11:8080"],
        "already serves nat VIP 192.0.2.111:80/tcp",
    );
    refused(
        &[
            "backend",
            "add",
            "192.0.2.112:80/tcp",
            "[2001:db8::11]:8080",
        ],
        "different IP families",
    );
    refused(
        &["vip", "set", "192.0.2.111:80/tcp", "--forward", "dsr"],
        "only --forward nat or fullnat map ports",
    );
    rig.balancer
        .run("sysctl", &["-qw", "net.ipv4.conf.eth0.forwarding=0"])
        .unwrap();
    refused(
        &["vip", "add", "192.0.2.113:80/tcp", "--forward", "nat"],
        "net.ipv4.conf.eth0.forwarding",
    );
    let listed = rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap();
    let vips: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(vips.len(), 3, "nothing added: {listed}");
}

#[test]
fn fullnat_without_a_nat_source_of_the_family_is_refused() {
    lb_testing::needs_root!();
    let rig = NatRig::without_sources(lb_exe().as_ref(), 1).unwrap();
    let output = rig
        .lb
        .cli(&["vip", "add", "192.0.2.110:80/tcp", "--forward", "fullnat"])
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--nat-source"), "{stderr}");
}

#[test]
fn fullnat_spreads_ten_thousand_connections_evenly_with_none_failed() {
    lb_testing::needs_root!();
    const CONNECTIONS: usize = 10_000;
    let rig = NatRig::new(lb_exe().as_ref(), 3, &[]).unwrap();
    rig.add_vip(VIP4_TCP, "fullnat").unwrap();
    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let answers = rig
        .client
        .within(move || {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            let mut failed = Vec::new();
            for i in 0..CONNECTIONS {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{i} connections in the time allowed"
                );
                match lb_testing::testbed::http_get(target, TIMEOUT) {
                    Ok(worker) => *counts.entry(worker).or_default() += 1,
                    Err(error) => failed.push(format!("{error:#}")),
                }
            }
            (counts, failed)
        })
        .unwrap();
    let (counts, failed) = answers;
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(counts.len(), 3, "{counts:?}");
    let even = CONNECTIONS as f64 / 3.0;
    for (worker, count) in &counts {
        let off = (*count as f64 - even).abs() / even;
        assert!(
            off <= 0.25,
            "{worker} took {count} of {CONNECTIONS}: {counts:?}"
        );
    }
    let stats = rig.lb.stats().unwrap();
    assert_eq!(
        stats.nat_ports_exhausted + stats.nat_table_full,
        0,
        "{stats:?}"
    );
}

/// As VIP addresses are, they stay announced while the data plane runs
/// (a stopped controller leaves it forwarding) and go with `lb detach`.
#[test]
fn nat_sources_are_announced_while_lb_runs() {
    lb_testing::needs_root!();
    let rig = NatRig::new(lb_exe().as_ref(), 1, &["--announce-table", "100"]).unwrap();
    let routes = |rig: &NatRig, family: &str| {
        rig.balancer
            .run("ip", &[family, "route", "show", "table", "100"])
            .unwrap()
    };
    wait_until(TIMEOUT, "the NAT sources announced", || {
        routes(&rig, "-4").contains(SOURCE4) && routes(&rig, "-6").contains(SOURCE6)
    });
    let listed = rig.lb.cli_ok(&["announce", "list", "-o", "json"]).unwrap();
    assert!(listed.contains(SOURCE4), "{listed}");
}

/// The worker's 1500-byte segments don't fit a router's 1280-byte link to
/// a far client: only the router's "fragmentation needed", sent to the
/// VIP and translated by lb to be about the worker's own connection,
/// lets the download through (both methods).
#[test]
fn path_mtu_discovery_works_through_nat_for_a_client_behind_a_small_mtu() {
    lb_testing::needs_root!();
    let mut rig = NatRig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    let router = rig
        .bed
        .add_host("router", Ipv4Addr::new(192, 0, 2, 254), v6(0xfe))
        .unwrap();
    router
        .run("ip", &["route", "add", "192.0.2.96/28", "via", "192.0.2.2"])
        .unwrap();
    let far = rig
        .bed
        .add_host_behind(
            "far",
            &router,
            Ipv4Addr::new(203, 0, 113, 2),
            Ipv4Addr::new(203, 0, 113, 1),
            1280,
        )
        .unwrap();
    rig.balancer
        .run(
            "ip",
            &["route", "add", "203.0.113.0/24", "via", "192.0.2.254"],
        )
        .unwrap();
    for (vip, forward) in [
        ("192.0.2.100:80/tcp", "nat"),
        ("192.0.2.101:80/tcp", "fullnat"),
    ] {
        rig.add_vip(vip, forward).unwrap();
        let addr: IpAddr = vip.split(':').next().unwrap().parse().unwrap();
        let before = rig.lb.stats().unwrap().icmp_errors_forwarded;
        let download = Download::start(&far, addr);
        assert_eq!(download.finish(), SLOW_BYTES, "{forward}");
        let after = rig.lb.stats().unwrap().icmp_errors_forwarded;
        assert!(
            after > before,
            "{forward}: the router's error reached the worker"
        );
        // The worker learnt the smaller MTU toward whom it talks to: the
        // client (nat) or lb's NAT source (fullnat); flush it for the next.
        rig.workers[0]
            .run("ip", &["route", "flush", "cache"])
            .unwrap();
    }
}

/// `lb capture --client` shows a NAT'd connection both ways: the client's
/// packets forwarded to the worker and the worker's replies translated
/// back to the client.
#[test]
fn a_capture_of_a_client_shows_its_natd_packets_both_ways() {
    lb_testing::needs_root!();
    let rig = NatRig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    rig.add_vip(VIP4_TCP, "fullnat").unwrap();
    let capture = std::process::Command::new(lb_exe())
        .args([
            "capture",
            "--client",
            &CLIENT4.to_string(),
            "--count",
            "6",
            "--pin-dir",
        ])
        .arg(rig.lb.pin_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Requests until the capture has its six packets and ends.
    let mut capture = capture;
    wait_until(TIMEOUT, "six packets captured", || {
        let _ = rig.get(IpAddr::V4(VIP4), "/");
        capture.try_wait().unwrap().is_some()
    });
    let output = capture.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(lines.contains("nat_replies"), "{lines}");
    assert!(
        lines.contains("new_flow") || lines.contains("flow_hits"),
        "{lines}"
    );
}

#[test]
fn a_saved_fullnat_vip_without_a_nat_source_refuses_the_start() {
    lb_testing::needs_root!();
    let mut rig = NatRig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    rig.add_vip(VIP4_TCP, "fullnat").unwrap();
    rig.lb.stop().unwrap();
    // The same instance again, without its NAT sources.
    let state = rig.lb.state_file();
    let pins = rig.lb.pin_dir().to_owned();
    let socket = rig.lb.paths().socket.clone();
    let args = [
        "--iface".to_owned(),
        "eth0".into(),
        "--pin-dir".into(),
        pins.display().to_string(),
        "--socket".into(),
        socket.display().to_string(),
        "--state-file".into(),
        state.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stderr) = rig
        .balancer
        .run_lb_expecting_refusal(lb_exe().as_ref(), &args, TIMEOUT)
        .unwrap();
    assert!(!ok);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("needs a NAT source of its family"),
        "{stderr}"
    );
}

/// The worker role whose dnsmasq gave `answer` (203.0.113.N is wN).
fn dns_worker(answer: &str) -> String {
    format!("w{}", answer.trim().rsplit('.').next().unwrap_or("?"))
}

/// One `PING` and one `ECHO` to redis at `target` over a new connection:
/// what it answered.
fn redis_ping(rig: &NatRig, target: SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    rig.client
        .within(move || {
            let mut stream = std::net::TcpStream::connect_timeout(&target, TIMEOUT).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            stream.write_all(b"PING\r\nECHO lb\r\nQUIT\r\n").unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        })
        .unwrap()
}

#[test]
fn dnsmasq_and_redis_on_their_own_ports_are_served_by_nat_and_fullnat() {
    lb_testing::needs_root!();
    let rig = NatRig::new(lb_exe().as_ref(), 2, &[]).unwrap();
    let mut _servers = Vec::new();
    for (n, worker) in rig.workers.iter().enumerate() {
        let answer = Ipv4Addr::new(203, 0, 113, n as u8 + 1);
        _servers.push(rig.bed.start_dnsmasq_on(worker, &[], answer, 5353).unwrap());
        _servers.push(rig.bed.start_redis(worker, 6380).unwrap());
    }
    let addrs = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)];
    for forward in ["nat", "fullnat"] {
        for addr in addrs {
            let dns = format!("{}/udp", SocketAddr::new(addr, 53));
            let check = ["--health", "dns", "--health-dns-name", "who.test"];
            let args: Vec<&str> = ["--forward", forward]
                .iter()
                .chain(&check)
                .copied()
                .collect();
            rig.add_vip_on(&dns, &args, 5353).unwrap();
            let mut answered = std::collections::BTreeSet::new();
            for _ in 0..16 {
                let out = rig
                    .client
                    .run(
                        "dig",
                        &[
                            "+short",
                            "+tries=2",
                            "+time=2",
                            &format!("@{addr}"),
                            "who.test",
                            "A",
                        ],
                    )
                    .unwrap();
                let answer = out.lines().find(|l| l.starts_with("203.0.113."));
                answered.insert(dns_worker(answer.expect("dnsmasq answered through lb")));
            }
            assert_eq!(answered.len(), 2, "{dns} {forward}: {answered:?}");
            rig.lb.cli_ok(&["vip", "del", &dns]).unwrap();

            let redis = format!("{}/tcp", SocketAddr::new(addr, 6379));
            rig.add_vip_on(&redis, &["--forward", forward], 6380)
                .unwrap();
            let answer = redis_ping(&rig, SocketAddr::new(addr, 6379));
            assert!(
                answer.starts_with("+PONG\r\n$2\r\nlb\r\n"),
                "{redis} {forward}: {answer:?}"
            );
            rig.lb.cli_ok(&["vip", "del", &redis]).unwrap();
        }
    }
}

/// Serves uploads on `host`'s port `port` until the test ends: reads a
/// connection to its end and answers with the number of bytes read.
fn upload_sink(host: &lb_testing::testbed::Host, port: u16) {
    use std::io::{Read as _, Write as _};
    let addr = SocketAddr::new(IpAddr::V4(host.ipv4), port);
    let listener = host
        .within(move || std::net::TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(TIMEOUT));
                let mut body = Vec::new();
                if stream.read_to_end(&mut body).is_ok() {
                    let _ = stream.write_all(body.len().to_string().as_bytes());
                }
            });
        }
    });
}

/// Uploads `bytes` from `client` to `target` and returns what the sink
/// counted.
fn upload(client: &lb_testing::testbed::Host, target: SocketAddr, bytes: usize) -> String {
    use std::io::{Read as _, Write as _};
    client
        .within(move || {
            let mut stream = std::net::TcpStream::connect_timeout(&target, TIMEOUT)?;
            stream.set_write_timeout(Some(TIMEOUT))?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.write_all(&vec![b'u'; bytes])?;
            stream.shutdown(std::net::Shutdown::Write)?;
            let mut counted = String::new();
            stream.read_to_string(&mut counted)?;
            std::io::Result::Ok(counted)
        })
        .unwrap()
        .unwrap()
}

/// The client's 1500-byte segments don't fit a router's 1280-byte link to
/// the worker: only the router's "fragmentation needed", sent toward the
/// client (`nat`) or lb's NAT source (`fullnat`) and translated by lb to
/// be about the client's connection to the VIP, lets the upload through.
#[test]
fn path_mtu_discovery_works_through_nat_for_a_worker_behind_a_small_mtu() {
    lb_testing::needs_root!();
    let mut rig = NatRig::new(lb_exe().as_ref(), 0, &[]).unwrap();
    let router = rig
        .bed
        .add_host("router", Ipv4Addr::new(192, 0, 2, 254), v6(0xfe))
        .unwrap();
    // Whatever goes to the client, replies and errors, crosses lb.
    router
        .run(
            "ip",
            &["route", "add", "198.51.100.0/24", "via", "192.0.2.2"],
        )
        .unwrap();
    let worker = rig
        .bed
        .add_host_behind(
            "wfar",
            &router,
            Ipv4Addr::new(203, 0, 113, 2),
            Ipv4Addr::new(203, 0, 113, 1),
            1280,
        )
        .unwrap();
    rig.balancer
        .run(
            "ip",
            &["route", "add", "203.0.113.0/24", "via", "192.0.2.254"],
        )
        .unwrap();
    rig.client
        .run(
            "ip",
            &["route", "add", "192.0.2.101/32", "via", "198.51.100.2"],
        )
        .unwrap();
    upload_sink(&worker, 8080);
    for (vip, forward) in [
        ("192.0.2.100:80/tcp", "nat"),
        ("192.0.2.101:80/tcp", "fullnat"),
    ] {
        rig.lb
            .cli_ok(&["vip", "add", vip, "--forward", forward])
            .unwrap();
        rig.lb
            .cli_ok(&["backend", "add", vip, "203.0.113.2:8080"])
            .unwrap();
        wait_until(TIMEOUT, "the far worker up", || {
            let listed = rig
                .lb
                .cli_ok(&["backend", "list", vip, "-o", "json"])
                .unwrap();
            listed.contains("\"state\":\"up\"")
        });
        let addr: IpAddr = vip.split(':').next().unwrap().parse().unwrap();
        let before = rig.lb.stats().unwrap().icmp_errors_forwarded;
        let counted = upload(&rig.client, SocketAddr::new(addr, 80), SLOW_BYTES);
        assert_eq!(counted, SLOW_BYTES.to_string(), "{forward}");
        let after = rig.lb.stats().unwrap().icmp_errors_forwarded;
        assert!(
            after > before,
            "{forward}: the router's error reached the client"
        );
        // The client learnt the smaller MTU toward the VIP; flush it for
        // the next.
        rig.client.run("ip", &["route", "flush", "cache"]).unwrap();
    }
}
