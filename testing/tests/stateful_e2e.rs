//! Stateful scheduling end to end: health checks, drain and graceful
//! removal, weights, load reports and least-load, sticky sessions and pins,
//! with real nginx workers in network namespaces. Needs root (CI is root).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use lb_testing::{
    lb_exe,
    rig::{spread_from, v6, Download, KeepAlive, Rig, TIMEOUT, VIP4},
    testbed::{http_get, Host, LbProcess, SLOW_BYTES},
    wait::wait_until,
};

const VIP: &str = "192.0.2.100:80/tcp";
/// Fast checks so that tests don't wait long: down after 2 × 200 ms.
const FAST_CHECKS: &[&str] = &["--health-interval", "200ms", "--health-timeout", "100ms"];
/// Longest time a worker may take to be marked down or up with
/// FAST_CHECKS: rise/fall × interval + timeout, plus scheduling slack.
const DETECTION: Duration = Duration::from_millis(2 * 200 + 100 + 900);
const LOAD_ENDPOINT: &str = "192.0.2.2:9470";
const TOKEN: &str = "test-token-0123456789abcdef";

fn rig(workers: u8, lb_args: &[&str]) -> Rig {
    Rig::new(lb_exe().as_ref(), workers, lb_args).unwrap()
}

fn vip_addr() -> IpAddr {
    IpAddr::V4(VIP4)
}

/// `lb backend list -o json`, as rows.
fn backends(lb: &LbProcess) -> Vec<serde_json::Value> {
    let text = lb.cli_ok(&["backend", "list", "-o", "json"]).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The `lb backend list` row of `worker`, if it is listed.
fn backend(lb: &LbProcess, worker: &Host) -> Option<serde_json::Value> {
    let addr = worker.ipv4.to_string();
    backends(lb).into_iter().find(|row| row["worker"] == addr)
}

fn state_of(lb: &LbProcess, worker: &Host) -> String {
    backend(lb, worker).map_or_else(
        || "absent".into(),
        |row| row["state"].as_str().unwrap().to_owned(),
    )
}

/// One request per iteration over a new connection until `stop` is set or
/// `limit` passes, counted in `made`; returns (when, answer or error) for
/// each.
fn request_loop(
    client: &Host,
    stop: &AtomicBool,
    made: &AtomicUsize,
    limit: Duration,
) -> Vec<(Instant, Result<String, String>)> {
    let target = SocketAddr::new(vip_addr(), 80);
    client
        .within(|| {
            let deadline = Instant::now() + limit;
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let result = http_get(target, Duration::from_secs(1)).map_err(|e| e.to_string());
                results.push((Instant::now(), result));
                made.fetch_add(1, Ordering::Relaxed);
                // Time that must pass: a steady rate of requests, not a flood.
                std::thread::sleep(Duration::from_millis(5));
            }
            results
        })
        .unwrap()
}

/// Waits until `made` has counted `more` further requests.
fn wait_for_requests(made: &AtomicUsize, more: usize) {
    let until = made.load(Ordering::Relaxed) + more;
    wait_until(Duration::from_secs(20), "the requests made", || {
        let now = made.load(Ordering::Relaxed);
        if now >= until {
            Ok(())
        } else {
            Err(format!("{now} of {until}"))
        }
    });
}

#[test]
fn a_dead_worker_is_routed_around_within_the_detection_time_and_comes_back() {
    lb_testing::needs_root!();
    let mut rig = rig(3, &[]);
    rig.add_vip_with_workers(VIP, FAST_CHECKS).unwrap();
    assert_eq!(rig.spread(vip_addr(), 60).unwrap().len(), 3);

    let (stop, made) = (AtomicBool::new(false), AtomicUsize::new(0));
    let client = rig.client.clone();
    let (killed_at, results) = std::thread::scope(|scope| {
        let load = scope.spawn(|| request_loop(&client, &stop, &made, Duration::from_secs(30)));
        wait_for_requests(&made, 20);
        let killed_at = Instant::now();
        rig.stop_worker(1);
        // Time that must pass: the requests checked are those after it.
        std::thread::sleep(DETECTION);
        wait_for_requests(&made, 100);
        stop.store(true, Ordering::Relaxed);
        (killed_at, load.join().unwrap())
    });
    let settled = killed_at + DETECTION;
    let late: Vec<_> = results.iter().filter(|(at, _)| *at > settled).collect();
    assert!(
        late.len() >= 50,
        "only {} requests after detection",
        late.len()
    );
    let late_failures: Vec<_> = late.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        late_failures.is_empty(),
        "requests failed after the detection time: {late_failures:?}"
    );
    assert!(late.iter().all(|(_, r)| r.as_deref() != Ok("w2")));
    let row = backend(&rig.lb, &rig.workers[1]).unwrap();
    assert_eq!(row["state"], "down", "{row}");
    assert_eq!(row["check"]["ok"], false, "{row}");

    rig.start_worker(1).unwrap();
    wait_until(DETECTION, "up again", || {
        state_of(&rig.lb, &rig.workers[1]) == "up"
    });
    let counts = rig.spread(vip_addr(), 60).unwrap();
    assert!(counts.get("w2").is_some_and(|n| *n > 5), "{counts:?}");
    assert_eq!(
        rig.lb
            .cli_ok(&["vip", "list", "-o", "json"])
            .unwrap()
            .matches("\"serving\":3")
            .count(),
        1
    );
}

#[test]
fn draining_lets_a_download_finish_and_graceful_removal_waits_for_it() {
    lb_testing::needs_root!();
    let rig = rig(3, &[]);
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let download = Download::start(&rig.client, vip_addr());
    let index = rig
        .workers
        .iter()
        .position(|w| w.role == download.worker)
        .unwrap();
    let worker = &rig.workers[index];
    let addr = worker.ipv4.to_string();

    rig.lb.cli_ok(&["backend", "drain", VIP, &addr]).unwrap();
    assert_eq!(state_of(&rig.lb, worker), "draining");
    let counts = rig.spread(vip_addr(), 60).unwrap();
    assert!(
        !counts.contains_key(&download.worker),
        "a draining worker got new connections: {counts:?}"
    );

    let answer = rig
        .lb
        .cli_ok(&[
            "backend",
            "del",
            VIP,
            &addr,
            "--graceful",
            "--timeout",
            "60s",
        ])
        .unwrap();
    assert!(answer.contains("draining"), "{answer}");
    wait_until(Duration::from_secs(3), "counting the download", || {
        backend(&rig.lb, worker).is_some_and(|row| row["flows"].as_u64() >= Some(1))
    });
    assert_eq!(state_of(&rig.lb, worker), "removing");

    assert_eq!(download.finish(), SLOW_BYTES, "the download completed");
    wait_until(Duration::from_secs(10), "removed", || {
        backend(&rig.lb, worker).is_none()
    });
    let counts = rig.spread(vip_addr(), 30).unwrap();
    assert_eq!(counts.len(), 2, "{counts:?}");
}

#[test]
fn weights_100_100_200_give_the_third_worker_half_of_new_connections() {
    lb_testing::needs_root!();
    let rig = rig(3, &[]);
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let third = rig.workers[2].ipv4.to_string();
    rig.lb
        .cli_ok(&["backend", "set", VIP, &third, "--weight", "200"])
        .unwrap();
    let counts = rig.spread(vip_addr(), 600).unwrap();
    let share = counts.get("w3").copied().unwrap_or(0) as f64 / 600.0;
    assert!(
        (0.4..=0.6).contains(&share),
        "w3 got {share:.2}: {counts:?}"
    );
    assert_eq!(backend(&rig.lb, &rig.workers[2]).unwrap()["weight"], 200);
}

/// Sends a load report to the balancer from `from`'s namespace; returns
/// the HTTP status.
fn report(from: &Host, token: Option<&str>, body: &str) -> u16 {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST /load HTTP/1.1\r\nHost: lb\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = from
        .within(move || {
            let mut stream =
                TcpStream::connect_timeout(&LOAD_ENDPOINT.parse().unwrap(), TIMEOUT).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        })
        .unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

fn load_body(worker: &Host, load: &str) -> String {
    format!(
        r#"{{"vip":"{VIP}","worker":"{}","load":{load}}}"#,
        worker.ipv4
    )
}

fn rig_with_load_reports(workers: u8) -> (Rig, tempfile_guard::TokenFile) {
    let token = tempfile_guard::TokenFile::new(TOKEN);
    let path = token.path.to_string_lossy().into_owned();
    let rig = rig(
        workers,
        &["--load-listen", LOAD_ENDPOINT, "--load-token-file", &path],
    );
    (rig, token)
}

mod tempfile_guard {
    use super::*;

    /// A 0600 token file, removed on drop.
    pub struct TokenFile {
        pub path: std::path::PathBuf,
    }

    impl TokenFile {
        pub fn new(token: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "lbt-{}-{:?}-token",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::write(&path, token).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            Self { path }
        }
    }

    impl Drop for TokenFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[test]
fn least_load_spreads_evenly_at_equal_load_and_avoids_a_loaded_worker() {
    lb_testing::needs_root!();
    let (rig, _token) = rig_with_load_reports(3);
    rig.add_vip_with_workers(VIP, &["--scheduler", "least-load", "--load-ttl", "60s"])
        .unwrap();
    for worker in &rig.workers {
        assert_eq!(report(worker, Some(TOKEN), &load_body(worker, "0.2")), 204);
    }
    assert!(backends(&rig.lb)
        .iter()
        .all(|row| row["load"] == 0.2 && row["load_source"] == "push"));
    let even = rig.spread(vip_addr(), 300).unwrap();
    assert_eq!(even.len(), 3, "{even:?}");
    for (worker, n) in &even {
        assert!((75..=125).contains(n), "{worker} got {n} of 300: {even:?}");
    }

    let w1 = &rig.workers[0];
    assert_eq!(report(w1, Some(TOKEN), &load_body(w1, "0.9")), 204);
    for worker in &rig.workers[1..] {
        let addr = worker.ipv4.to_string();
        rig.lb
            .cli_ok(&["backend", "set", VIP, &addr, "--load", "0.1"])
            .unwrap();
    }
    let skewed = rig.spread(vip_addr(), 300).unwrap();
    let loaded = skewed.get("w1").copied().unwrap_or(0);
    assert!(
        loaded < 60,
        "the loaded worker got {loaded} of 300 (even share 100): {skewed:?}"
    );
}

#[test]
fn bad_load_reports_and_bad_settings_are_refused_and_change_nothing() {
    lb_testing::needs_root!();
    let (rig, _token) = rig_with_load_reports(2);
    rig.add_vip_with_workers(VIP, &["--scheduler", "least-load"])
        .unwrap();
    let (w1, w2) = (&rig.workers[0], &rig.workers[1]);
    assert_eq!(report(w1, Some(TOKEN), &load_body(w1, "0.5")), 204);
    let before = backends(&rig.lb);

    let reports = [
        (w1, None, load_body(w1, "0.7"), 401),
        (
            w1,
            Some("wrong-token-0123456789"),
            load_body(w1, "0.7"),
            401,
        ),
        (w2, Some(TOKEN), load_body(w1, "0.7"), 403),
        (w1, Some(TOKEN), "{\"vip\":".to_owned(), 400),
        (w1, Some(TOKEN), load_body(w1, "\"high\""), 400),
        (w1, Some(TOKEN), load_body(w1, "1.5"), 422),
        (w1, Some(TOKEN), load_body(w1, "-0.1"), 422),
        (
            w1,
            Some(TOKEN),
            load_body(w1, "0.7").replace("192.0.2.100:80", "192.0.2.100:81"),
            404,
        ),
    ];
    for (from, token, body, status) in reports {
        assert_eq!(report(from, token, &body), status, "{body}");
    }

    let w1_addr = w1.ipv4.to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["backend", "set", VIP, "192.0.2.77", "--weight", "5"],
            "is not on VIP",
        ),
        (&["backend", "set", VIP, &w1_addr, "--weight", "-5"], "-5"),
        (
            &["backend", "set", VIP, &w1_addr, "--weight", "0"],
            "weight 0",
        ),
        (
            &["backend", "set", VIP, &w1_addr, "--load", "1.5"],
            "out of range",
        ),
        (
            &["backend", "set", VIP, &w1_addr, "--load", "NaN"],
            "out of range",
        ),
        (&["backend", "set", VIP, &w1_addr], "nothing to set"),
        (&["backend", "drain", VIP, "192.0.2.77"], "is not on VIP"),
        (
            &["sessions", "pin", VIP, "198.51.100.1", "192.0.2.77"],
            "not a worker",
        ),
        (
            &["vip", "add", "192.0.2.101:80/tcp", "--sticky", "5x"],
            "unit",
        ),
        (
            &["vip", "add", "192.0.2.101:80/tcp", "--sticky-prefix", "40"],
            "too long",
        ),
        (
            &["vip", "add", "192.0.2.101:80/tcp", "--health-timeout", "2s"],
            "shorter than the interval",
        ),
        (
            &["vip", "add", "192.0.2.101:53/udp", "--health", "tcp"],
            "--health-port",
        ),
        (
            &["vip", "add", "192.0.2.101:53/udp", "--health", "dns"],
            "--health-dns-name",
        ),
        (
            &[
                "vip",
                "add",
                "192.0.2.101:53/udp",
                "--health-payload",
                "hex:zz",
            ],
            "hex: takes the digits 0-9 and a-f only",
        ),
        (
            &["vip", "add", "192.0.2.101:80/tcp", "--health-expect", "ok"],
            "applies to udp health checks only",
        ),
        (
            &["vip", "add", "192.0.2.101:80/tcp", "--idle-timeout", "1s"],
            "use 2s to 168h",
        ),
    ];
    for (args, reason) in cases {
        let output = rig.lb.cli(args).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    let strip = |rows: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        rows.into_iter()
            .map(|mut row| {
                row.as_object_mut().unwrap().remove("check");
                row
            })
            .collect()
    };
    assert_eq!(strip(before), strip(backends(&rig.lb)));
    let vips = rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap();
    assert!(!vips.contains("192.0.2.101"), "{vips}");
}

/// The one worker all of `counts` went to.
fn only_worker(counts: &BTreeMap<String, usize>) -> String {
    assert_eq!(counts.len(), 1, "not sticky: {counts:?}");
    counts.keys().next().unwrap().clone()
}

#[test]
fn sticky_sessions_follow_the_client_prefix_until_ttl_flush_pin_or_failure() {
    lb_testing::needs_root!();
    let mut rig = rig(3, &[]);
    let mut args = vec!["--sticky", "2s", "--sticky-prefix", "24"];
    args.extend_from_slice(FAST_CHECKS);
    rig.add_vip_with_workers(VIP, &args).unwrap();
    let neighbour = rig
        .add_client("client2", Ipv4Addr::new(192, 0, 2, 5), v6(5))
        .unwrap();

    let sticky = only_worker(&rig.spread(vip_addr(), 50).unwrap());
    let from_neighbour = spread_from(&neighbour, vip_addr(), 10).unwrap();
    assert_eq!(
        only_worker(&from_neighbour),
        sticky,
        "same /24, same worker"
    );
    let sessions: serde_json::Value =
        serde_json::from_str(&rig.lb.cli_ok(&["sessions", "list", "-o", "json"]).unwrap()).unwrap();
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["client"], "192.0.2.0");
    assert_eq!(sessions[0]["prefix"], 24);

    // Past the TTL each client is scheduled afresh: over several rounds the
    // first connection lands on more than one worker, and the rest of each
    // round follow it.
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..8 {
        // Time that must pass: the session's 2 s TTL.
        std::thread::sleep(Duration::from_millis(2200));
        let round = rig.spread(vip_addr(), 4).unwrap();
        firsts.insert(only_worker(&round));
    }
    assert!(firsts.len() > 1, "sessions never expired: {firsts:?}");

    let answer = rig.lb.cli_ok(&["sessions", "flush", VIP]).unwrap();
    assert!(answer.contains("flushed 1"), "{answer}");
    let current = only_worker(&rig.spread(vip_addr(), 10).unwrap());

    let pinned_to = rig.workers.iter().find(|w| w.role != current).unwrap();
    rig.lb
        .cli_ok(&[
            "sessions",
            "pin",
            VIP,
            "192.0.2.1",
            &pinned_to.ipv4.to_string(),
        ])
        .unwrap();
    assert_eq!(
        only_worker(&rig.spread(vip_addr(), 20).unwrap()),
        pinned_to.role
    );
    rig.lb
        .cli_ok(&["sessions", "unpin", VIP, "192.0.2.1"])
        .unwrap();

    let holder = only_worker(&rig.spread(vip_addr(), 5).unwrap());
    let index = rig.workers.iter().position(|w| w.role == holder).unwrap();
    rig.stop_worker(index);
    wait_until(DETECTION, "down", || {
        state_of(&rig.lb, &rig.workers[index]) == "down"
    });
    let moved = only_worker(&rig.spread(vip_addr(), 20).unwrap());
    assert_ne!(moved, holder, "a down worker kept its sticky clients");
}

#[test]
fn least_load_on_active_flows_avoids_the_worker_holding_connections() {
    lb_testing::needs_root!();
    let rig = rig(3, &[]);
    rig.add_vip_with_workers(
        VIP,
        &["--scheduler", "least-load", "--load-signal", "flows"],
    )
    .unwrap();
    let target = SocketAddr::new(vip_addr(), 80);
    // Hold 30 open connections on w1; the others close at once.
    let held: Vec<TcpStream> = rig
        .client
        .within(move || {
            let mut held = Vec::new();
            for _ in 0..400 {
                let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).unwrap();
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: lb-test\r\n\r\n")
                    .unwrap();
                let mut answer = [0u8; 512];
                let n = stream.read(&mut answer).unwrap();
                if String::from_utf8_lossy(&answer[..n]).contains("X-Worker: w1") {
                    held.push(stream);
                }
                if held.len() == 30 {
                    break;
                }
            }
            held
        })
        .unwrap();
    assert_eq!(held.len(), 30);
    wait_until(Duration::from_secs(10), "counting w1's flows", || {
        let rows = backends(&rig.lb);
        rows[0]["flows"].as_u64() >= Some(30)
            && rows[1..].iter().all(|r| r["flows"].as_u64() < Some(5))
    });
    let counts = rig.spread(vip_addr(), 45).unwrap();
    let w1 = counts.get("w1").copied().unwrap_or(0);
    assert!(w1 < 15, "w1 holds 30 flows yet got {w1} of 45: {counts:?}");
    drop(held);
}

#[test]
fn probed_loads_steer_new_flows_and_expire_to_unknown() {
    lb_testing::needs_root!();
    let rig = rig(3, &[]);
    let args = [
        "--scheduler",
        "least-load",
        "--load-probe",
        "/load",
        "--load-ttl",
        "2s",
    ];
    rig.add_vip_with_workers(VIP, &args).unwrap();
    for (worker, load) in rig.workers.iter().zip(["0.9", "0.1", "0.1"]) {
        rig.bed.set_load(worker, load).unwrap();
    }
    wait_until(Duration::from_secs(5), "probing the loads", || {
        backends(&rig.lb)
            .iter()
            .map(|r| r["load"].as_f64())
            .eq([Some(0.9), Some(0.1), Some(0.1)])
    });
    assert!(backends(&rig.lb)
        .iter()
        .all(|r| r["load_source"] == "probe"));
    let counts = rig.spread(vip_addr(), 300).unwrap();
    let loaded = counts.get("w1").copied().unwrap_or(0);
    assert!(
        loaded < 60,
        "w1 reports 0.9 yet got {loaded} of 300: {counts:?}"
    );

    // A report the probe can't renew expires to unknown.
    let w2 = rig.workers[1].ipv4.to_string();
    rig.bed.set_load(&rig.workers[1], "not a number").unwrap();
    rig.lb
        .cli_ok(&["backend", "set", VIP, &w2, "--load", "0.3"])
        .unwrap();
    assert_eq!(backend(&rig.lb, &rig.workers[1]).unwrap()["load"], 0.3);
    wait_until(Duration::from_secs(5), "the report expiring", || {
        backend(&rig.lb, &rig.workers[1]).unwrap()["load"].is_null()
    });
}

#[test]
fn flows_of_a_worker_that_goes_down_move_to_a_healthy_one_and_undrain_restores_it() {
    lb_testing::needs_root!();
    let mut rig = rig(3, &[]);
    let udp = "192.0.2.100:5353/udp";
    let mut args = vec!["--health", "tcp", "--health-port", "80"];
    args.extend_from_slice(FAST_CHECKS);
    rig.add_vip_with_workers(udp, &args).unwrap();
    let target = SocketAddr::new(vip_addr(), lb_testing::rig::UDP_PORT);
    let socket = rig
        .client
        .within(|| std::net::UdpSocket::bind("0.0.0.0:0").unwrap())
        .unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let ask = || {
        socket.send_to(b"who", target).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = ask();
    assert_eq!(ask(), first, "one flow, one worker");
    let index = rig.workers.iter().position(|w| w.role == first).unwrap();
    rig.stop_worker(index);
    wait_until(DETECTION, "down", || {
        state_of(&rig.lb, &rig.workers[index]) == "down"
    });
    let moved = ask();
    assert_ne!(moved, first, "the flow stayed on a down worker");
    assert_eq!(ask(), moved, "the moved flow sticks to its new worker");
    assert!(rig.lb.stats().unwrap().flow_rescheduled >= 1);

    let other = rig.workers.iter().find(|w| w.role == moved).unwrap();
    let addr = other.ipv4.to_string();
    rig.lb.cli_ok(&["backend", "drain", udp, &addr]).unwrap();
    assert_eq!(ask(), moved, "draining keeps established flows");
    rig.lb.cli_ok(&["backend", "undrain", udp, &addr]).unwrap();
    assert_eq!(state_of(&rig.lb, other), "up");
}

/// At the default interval, so that the workers' kernels, which send at
/// most about one ICMP error a second to the balancer, answer every check.
#[test]
fn udp_vips_are_udp_checked_by_default_and_a_port_nobody_serves_takes_workers_down() {
    lb_testing::needs_root!();
    let rig = rig(2, &[]);
    let served = "192.0.2.100:5353/udp";
    let unserved = "192.0.2.100:5354/udp";
    rig.add_vip_with_workers(served, &[]).unwrap();
    rig.add_vip_with_workers(unserved, &[]).unwrap();
    let rows_of = |vip: &str| -> Vec<serde_json::Value> {
        backends(&rig.lb)
            .into_iter()
            .filter(|row| row["vip"] == vip)
            .collect()
    };
    wait_until(
        Duration::from_secs(5),
        "the unserved VIP's workers down",
        || {
            rows_of(unserved)
                .iter()
                .all(|row| row["state"] == "down" && row["check"]["detail"] == "port unreachable")
        },
    );
    for row in rows_of(served) {
        assert_eq!(row["state"], "up", "{row}");
        assert_eq!(row["check"]["detail"], "answered", "{row}");
    }
    let vips: Vec<serde_json::Value> =
        serde_json::from_str(&rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap()).unwrap();
    for vip in &vips {
        assert_eq!(vip["health"], "udp", "{vip}");
        assert_eq!(vip["idle_timeout"], "1m", "{vip}");
    }
}

#[test]
fn vip_set_changes_settings_in_place_keeping_workers_and_established_flows() {
    lb_testing::needs_root!();
    let rig = rig(3, &[]);
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    assert_eq!(
        rig.spread(vip_addr(), 30).unwrap().len(),
        3,
        "not sticky yet"
    );
    let target = SocketAddr::new(vip_addr(), 80);
    let mut conn = KeepAlive::open(&rig.client, target).unwrap();
    let worker = conn.get().unwrap();

    rig.lb
        .cli_ok(&[
            "vip",
            "set",
            VIP,
            "--sticky",
            "60s",
            "--scheduler",
            "least-load",
        ])
        .unwrap();
    let vips: serde_json::Value =
        serde_json::from_str(&rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(vips[0]["scheduler"], "least-load");
    assert_eq!(vips[0]["sticky"], "1m");
    assert_eq!(vips[0]["workers"], 3);
    assert_eq!(
        conn.get().unwrap(),
        worker,
        "the established connection stayed"
    );
    only_worker(&rig.spread(vip_addr(), 20).unwrap());

    let w1 = rig.workers[0].ipv4.to_string();
    rig.lb
        .cli_ok(&["sessions", "pin", VIP, "192.0.2.1", &w1])
        .unwrap();
    let refused = rig
        .lb
        .cli(&[
            "vip",
            "set",
            VIP,
            "--sticky",
            "60s",
            "--sticky-prefix",
            "24",
        ])
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unpin"));
}

#[test]
fn a_step_of_the_wall_clock_moves_no_graceful_removal_deadline() {
    lb_testing::needs_root!();
    let mut rig = rig(2, &[]);
    // lb again, its wall clock under the test's hand.
    let clock = rig.bed.socket("clock").with_extension("faketime");
    std::fs::write(&clock, "+0").unwrap();
    rig.lb.stop().unwrap();
    rig.lb = LbProcess::start_with_clock(
        lb_exe().as_ref(),
        &mut rig.bed,
        &rig.balancer,
        "lb",
        &[],
        &clock,
    )
    .unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let mut connection = KeepAlive::open(&rig.client, SocketAddr::new(vip_addr(), 80)).unwrap();
    let role = connection.get().unwrap();
    let worker = rig.workers.iter().find(|w| role.contains(&w.role)).unwrap();
    let addr = worker.ipv4.to_string();
    rig.lb
        .cli_ok(&[
            "backend",
            "del",
            VIP,
            &addr,
            "--graceful",
            "--timeout",
            "60s",
        ])
        .unwrap();
    wait_until(Duration::from_secs(3), "counting the connection", || {
        backend(&rig.lb, worker).is_some_and(|row| row["flows"].as_u64() >= Some(1))
    });

    std::fs::write(&clock, "+2h").unwrap();
    // Time must pass: three of the controller's once-a-second ticks read
    // the stepped clock.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        state_of(&rig.lb, worker),
        "removing",
        "the 60 s are not over"
    );
    assert!(connection.get().unwrap().contains(&worker.role));

    drop(connection);
    wait_until(
        Duration::from_secs(15),
        "removed once its flow ended",
        || backend(&rig.lb, worker).is_none(),
    );
}
