//! VIP announcements (`lb run --announce-table`) end to end, read back
//! from the kernel's routing table with `ip route`: which addresses are
//! announced and when, what survives restarts, what detaching takes away,
//! and the one-line refusals. The routing daemons' side is bgp_e2e.rs.
//! Needs root.

use std::{collections::BTreeSet, io::Read as _, process::Stdio, time::Duration};

use lb_testing::{
    lb_exe,
    rig::Rig,
    testbed::{Host, Process},
    wait::wait_until,
};

const TABLE: &str = "100";
const VIP: &str = "192.0.2.100:80/tcp";
const VIP6: &str = "[2001:db8::100]:80/tcp";
const ADDR: &str = "192.0.2.100";
const ADDR6: &str = "2001:db8::100";
const WAIT: Duration = Duration::from_secs(10);

/// The addresses of lb's host routes in `host`'s table 100, both families.
fn announced(host: &Host) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for family in ["-4", "-6"] {
        let output = host
            .command("ip")
            .args([
                family, "-j", "route", "show", "table", TABLE, "proto", "250",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("FIB table does not exist") {
            continue;
        }
        assert!(output.status.success(), "ip route: {stderr}");
        let routes: Vec<serde_json::Value> =
            serde_json::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
        for route in routes {
            assert_eq!(route["dev"], "lo", "{route}");
            found.insert(route["dst"].as_str().unwrap().to_owned());
        }
    }
    found
}

fn set(addresses: &[&str]) -> BTreeSet<String> {
    addresses.iter().map(|a| (*a).to_owned()).collect()
}

fn wait_for(host: &Host, addresses: &[&str], what: &str) {
    wait_until(WAIT, what, || {
        let now = announced(host);
        if now == set(addresses) {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
}

/// `lb announce list -o json`, by address: (announced, reason).
fn listed(rig: &Rig) -> Vec<(String, bool, Option<String>)> {
    let json = rig.lb.cli_ok(&["announce", "list", "-o", "json"]).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    rows.iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_owned(),
                r["announced"].as_bool().unwrap(),
                r["reason"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn rig_announcing(extra: &[&str]) -> Rig {
    let mut args = vec!["--announce-table", TABLE];
    args.extend_from_slice(extra);
    let rig = Rig::new(lb_exe().as_ref(), 2, &args).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    rig
}

#[test]
fn addresses_are_announced_while_a_worker_takes_new_flows() {
    lb_testing::needs_root!();
    let mut rig = rig_announcing(&[]);
    rig.add_vip_with_workers(VIP6, &[]).unwrap();
    wait_for(&rig.balancer, &[ADDR, ADDR6], "both addresses announced");
    let status = rig.lb.status_json().unwrap();
    assert_eq!(status["announce_table"], 100, "{status}");
    assert_eq!(status["announced"], 2, "{status}");

    // Draining every worker of the IPv4 VIP leaves it nothing to serve.
    for worker in &rig.workers {
        let addr = worker.ipv4.to_string();
        rig.lb.cli_ok(&["backend", "drain", VIP, &addr]).unwrap();
    }
    wait_for(&rig.balancer, &[ADDR6], "the drained VIP withdrawn");
    assert!(listed(&rig).contains(&(ADDR.into(), false, Some("no worker takes new flows".into()))));
    let addr = rig.workers[1].ipv4.to_string();
    rig.lb.cli_ok(&["backend", "undrain", VIP, &addr]).unwrap();
    wait_for(&rig.balancer, &[ADDR, ADDR6], "back with one worker");

    // Failed health checks: every worker's server stops.
    for index in 0..rig.workers.len() {
        rig.stop_worker(index);
    }
    wait_for(&rig.balancer, &[], "withdrawn once every worker is down");
    // w1 is still drained on the IPv4 VIP: only w2 brings it back.
    rig.start_worker(0).unwrap();
    wait_for(
        &rig.balancer,
        &[ADDR6],
        "the IPv6 VIP announced once w1 is up",
    );
    rig.start_worker(1).unwrap();
    wait_for(
        &rig.balancer,
        &[ADDR, ADDR6],
        "both announced once w2 is up",
    );

    // A route someone else removed is put back.
    rig.balancer
        .run(
            "ip",
            &[
                "route",
                "del",
                "192.0.2.100/32",
                "table",
                TABLE,
                "proto",
                "250",
            ],
        )
        .unwrap();
    wait_for(&rig.balancer, &[ADDR, ADDR6], "the removed route restored");
    assert!(rig.lb.log().contains("changed behind lb's back"));
}

#[test]
fn withdrawals_persist_and_restarts_withdraw_nothing() {
    lb_testing::needs_root!();
    let mut rig = rig_announcing(&[]);
    wait_for(&rig.balancer, &[ADDR], "announced");
    let withdrew = rig.lb.cli_ok(&["announce", "withdraw", VIP]).unwrap();
    assert_eq!(withdrew.trim(), "withdrew 192.0.2.100");
    wait_for(&rig.balancer, &[], "withdrawn");
    assert_eq!(
        listed(&rig),
        vec![(
            ADDR.into(),
            false,
            Some("withdrawn (lb announce restore brings it back)".into())
        )]
    );
    // Withdrawn, the balancer still forwards what arrives.
    assert_eq!(rig.spread(ADDR.parse().unwrap(), 10).unwrap().len(), 2);

    rig.lb.stop().unwrap();
    rig.start_lb(&["--announce-table", TABLE]).unwrap();
    assert!(!listed(&rig)[0].1, "the withdrawal was saved");
    rig.lb.cli_ok(&["announce", "restore"]).unwrap();
    wait_for(&rig.balancer, &[ADDR], "restored");

    // A restart (or a crash) keeps the route in place throughout.
    let monitor = RouteMonitor::start(&rig.balancer);
    rig.lb.stop().unwrap();
    rig.start_lb(&["--announce-table", TABLE]).unwrap();
    rig.lb.kill().unwrap();
    assert_eq!(announced(&rig.balancer), set(&[ADDR]), "left by the crash");
    rig.start_lb(&["--announce-table", TABLE]).unwrap();
    assert!(listed(&rig)[0].1);
    let seen = monitor.finish();
    assert!(
        !seen
            .lines()
            .any(|l| l.starts_with("Deleted") && l.contains(ADDR)),
        "the route went away across restarts:\n{seen}"
    );
}

#[test]
fn a_restart_keeps_an_address_whose_workers_are_down_withdrawn() {
    lb_testing::needs_root!();
    let mut rig = rig_announcing(&[]);
    wait_for(&rig.balancer, &[ADDR], "announced");
    for index in 0..rig.workers.len() {
        rig.stop_worker(index);
    }
    wait_for(&rig.balancer, &[], "withdrawn once every worker is down");

    // The data plane recorded both down: the next controller starts with
    // them down instead of announcing until its checks fail again.
    let monitor = RouteMonitor::start(&rig.balancer);
    rig.lb.kill().unwrap();
    rig.start_lb(&["--announce-table", TABLE]).unwrap();
    let reason = Some("no worker takes new flows".to_owned());
    assert_eq!(listed(&rig), vec![(ADDR.into(), false, reason)]);
    rig.start_worker(0).unwrap();
    wait_for(&rig.balancer, &[ADDR], "announced once a worker is up");
    let seen = monitor.finish();
    let added: Vec<&str> = (seen.lines())
        .filter(|l| !l.starts_with("Deleted") && l.contains(ADDR))
        .collect();
    assert_eq!(added.len(), 1, "announced before a worker was up:\n{seen}");
}

#[test]
fn detaching_withdraws_everything() {
    lb_testing::needs_root!();
    let mut rig = rig_announcing(&["--detach-on-exit"]);
    wait_for(&rig.balancer, &[ADDR], "announced");
    rig.lb.stop().unwrap();
    assert_eq!(announced(&rig.balancer), set(&[]), "--detach-on-exit");

    rig.start_lb(&["--announce-table", TABLE]).unwrap();
    wait_for(&rig.balancer, &[ADDR], "announced again");
    rig.lb.kill().unwrap();
    let pin_dir = rig.lb.pin_dir().to_owned();
    let output = rig
        .balancer
        .command(lb_exe())
        .arg("detach")
        .arg("--pin-dir")
        .arg(&pin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("withdrew the announcements of 1 VIP addresses"),
        "{stdout}"
    );
    assert_eq!(announced(&rig.balancer), set(&[]), "lb detach");
}

#[test]
fn bad_announce_input_gets_one_line_and_changes_nothing() {
    lb_testing::needs_root!();
    let rig = rig_announcing(&[]);
    wait_for(&rig.balancer, &[ADDR], "announced");
    let cases: &[(&[&str], &str)] = &[
        (
            &["announce", "withdraw", "192.0.2.199"],
            "no VIP on 192.0.2.199",
        ),
        (
            &["announce", "withdraw", ADDR, "192.0.2.199"],
            "no VIP on 192.0.2.199",
        ),
        (
            &["announce", "restore", "192.0.2.100:81/tcp"],
            "no VIP 192.0.2.100:81/tcp",
        ),
        (
            &["announce", "withdraw", "not-an-address"],
            "neither a VIP address nor a VIP",
        ),
    ];
    for (args, wanted) in cases {
        let output = rig.lb.cli(args).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    }
    assert_eq!(announced(&rig.balancer), set(&[ADDR]), "nothing withdrawn");

    for table in ["0", "254", "main"] {
        let (ok, stderr) = rig
            .balancer
            .run_lb_expecting_refusal(
                lb_exe().as_ref(),
                &["--iface", "eth0", "--announce-table", table],
                WAIT,
            )
            .unwrap();
        assert!(!ok, "--announce-table {table}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains("--announce-table"), "{table}: {stderr}");
    }
}

#[test]
fn a_controller_without_a_table_says_so() {
    lb_testing::needs_root!();
    let rig = Rig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    for args in [
        &["announce", "list"][..],
        &["announce", "withdraw"],
        &["announce", "restore", ADDR],
    ] {
        let output = rig.lb.cli(args).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--announce-table N"), "{stderr}");
    }
    assert_eq!(announced(&rig.balancer), set(&[]));
}

/// `ip -o monitor route` in a namespace, known to be listening, writing
/// to a file of its own.
struct RouteMonitor {
    process: Process,
    file: std::path::PathBuf,
}

impl RouteMonitor {
    /// Starts it and waits until it reports a route change made for it.
    fn start(host: &Host) -> Self {
        let file = std::env::temp_dir().join(format!("lb-route-monitor-{}", std::process::id()));
        let output = std::fs::File::create(&file).unwrap();
        let process = Process::spawn(
            host.command("ip")
                .args(["-o", "monitor", "route"])
                .stdout(Stdio::from(output)),
            "ip monitor",
        )
        .unwrap();
        let marker = ["198.51.100.0/24", "dev", "lo", "table", "101"];
        let mut toggle = ["replace", "del"].into_iter().cycle();
        wait_until(WAIT, "ip monitor listening", || {
            let mut args = vec!["route", toggle.next().unwrap()];
            args.extend_from_slice(&marker);
            host.run("ip", &args).unwrap();
            std::fs::read_to_string(&file).is_ok_and(|seen| seen.contains("198.51.100.0/24"))
        });
        let _ = host.run("ip", &["route", "del", marker[0], "table", "101"]);
        Self { process, file }
    }

    /// Stops it and returns what it printed.
    fn finish(self) -> String {
        self.process.signal(libc::SIGTERM).unwrap();
        let mut seen = String::new();
        std::fs::File::open(&self.file)
            .unwrap()
            .read_to_string(&mut seen)
            .unwrap();
        seen
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}
