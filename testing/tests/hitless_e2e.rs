//! Hitless operation end to end: the data plane outlives its controller,
//! a new controller (or a new program) takes over under load without a
//! failed request, and the saved state survives crashes. Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_testing::{
    lb_exe,
    nat_rig::NatRig,
    rig::{Download, KeepAlive, Rig, VIP4},
    temp::TempFile,
    testbed::{enter_netns, http_get, Host, SLOW_BYTES},
    wait::wait_until,
};

const VIP: &str = "192.0.2.100:80/tcp";

fn vip_addr() -> IpAddr {
    IpAddr::V4(VIP4)
}

/// Requests from the client until stopped: new connections in one thread,
/// one keep-alive connection in another. Every failure is kept.
struct Load {
    stop: Arc<AtomicBool>,
    /// Requests made so far, answered or not.
    made: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    fn start(client: &Host) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicUsize::new(0));
        let threads = [false, true]
            .into_iter()
            .map(|keep_alive| {
                let (stop, made, netns) = (stop.clone(), made.clone(), client.netns_path());
                std::thread::spawn(move || {
                    enter_netns(&netns).unwrap();
                    if keep_alive {
                        keep_alive_requests(&stop, &made)
                    } else {
                        new_connection_requests(&stop, &made)
                    }
                })
            })
            .collect();
        Self {
            stop,
            made,
            threads,
        }
    }

    /// Waits until `more` further requests have been made: the load ran
    /// through whatever happened meanwhile.
    fn wait_for(&self, more: usize) {
        let until = self.made.load(Ordering::Relaxed) + more;
        wait_until(LOAD_LIMIT, &format!("{more} more requests made"), || {
            let made = self.made.load(Ordering::Relaxed);
            if made >= until {
                Ok(())
            } else {
                Err(format!("{made} of {until}"))
            }
        });
    }

    /// Stops the load; returns how many requests were made and the
    /// failures.
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        let mut failures = Vec::new();
        for thread in self.threads {
            let (n, mut failed) = thread.join().unwrap();
            total += n;
            failures.append(&mut failed);
        }
        (total, failures)
    }
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound on any load run, whatever the test does.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

fn new_connection_requests(stop: &AtomicBool, made: &AtomicUsize) -> (usize, Vec<String>) {
    let target = SocketAddr::new(vip_addr(), 80);
    let started = Instant::now();
    let (mut total, mut failures) = (0, Vec::new());
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_LIMIT {
        total += 1;
        if let Err(error) = http_get(target, REQUEST_TIMEOUT) {
            failures.push(format!("new connection: {error:#}"));
        }
        made.fetch_add(1, Ordering::Relaxed);
        // Time that must pass: a steady rate of requests, not a flood.
        std::thread::sleep(Duration::from_millis(5));
    }
    (total, failures)
}

fn keep_alive_requests(stop: &AtomicBool, made: &AtomicUsize) -> (usize, Vec<String>) {
    let target = SocketAddr::new(vip_addr(), 80);
    let started = Instant::now();
    let (mut total, mut failures) = (0, Vec::new());
    let mut conn: Option<KeepAlive> = None;
    let mut worker = None;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_LIMIT {
        total += 1;
        let result = conn
            .take()
            .map_or_else(|| KeepAlive::connect(target, REQUEST_TIMEOUT), Ok)
            .and_then(|mut c| c.get().map(|answer| (c, answer)));
        match result {
            Ok((c, answer)) => {
                if *worker.get_or_insert_with(|| answer.clone()) != answer {
                    failures.push(format!("keep-alive connection moved to {answer}"));
                }
                conn = Some(c);
            }
            Err(error) => failures.push(format!("keep-alive: {error}")),
        }
        made.fetch_add(1, Ordering::Relaxed);
        // Time that must pass: a steady rate of requests, not a flood.
        std::thread::sleep(Duration::from_millis(10));
    }
    (total, failures)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

/// The clients (address and port) of the flows `lb flows` lists. Their
/// workers are not compared: a closed connection's port may be reused by
/// a new one that is scheduled afresh. The load's keep-alive connection
/// checks that established flows keep their worker.
fn flows(rig: &Rig) -> std::collections::BTreeSet<String> {
    json(&rig.lb.cli_ok(&["flows", "-o", "json"]).unwrap())
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["client"].to_string())
        .collect()
}

fn program_id(rig: &Rig) -> u64 {
    rig.lb.status_json().unwrap()["program_id"]
        .as_u64()
        .unwrap()
}

fn assert_no_failures(total: usize, failures: &[String]) {
    println!("{total} requests, {} failed", failures.len());
    assert!(total > 100, "only {total} requests made");
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {failures:#?}",
        failures.len()
    );
}

#[test]
fn kill_9_of_the_controller_under_load_fails_nothing_and_a_new_one_adopts() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(lb_exe().as_ref(), 3, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &["--sticky", "60s"]).unwrap();
    let download = Download::start(&rig.client, vip_addr());
    let load = Load::start(&rig.client);
    load.wait_for(50);
    let status_before = json(&rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap());
    let workers_before = rig.lb.cli_ok(&["backend", "list"]).unwrap();
    let sessions_before = rig.lb.cli_ok(&["sessions", "list", "-o", "json"]).unwrap();
    let program_before = program_id(&rig);

    rig.lb.kill().unwrap();
    // The data plane serves on while no controller runs.
    load.wait_for(150);
    let flows_while_down = flows(&rig);
    assert!(!flows_while_down.is_empty());

    rig.start_lb(&[]).unwrap();
    assert!(
        rig.lb.takeover_line.contains("adopted"),
        "{}",
        rig.lb.takeover_line
    );
    assert_ne!(program_id(&rig), program_before, "a fresh program runs");
    assert_eq!(
        json(&rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap()),
        status_before
    );
    let columns = |text: &str| -> Vec<String> {
        // VIP, worker, state, weight: what the state says, not the live
        // figures (flows, check ages) that move under load.
        text.lines()
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(
        columns(&rig.lb.cli_ok(&["backend", "list"]).unwrap()),
        columns(&workers_before)
    );
    let sessions_after = rig.lb.cli_ok(&["sessions", "list", "-o", "json"]).unwrap();
    let clients = |text: &str| -> Vec<serde_json::Value> {
        json(text)
            .as_array()
            .unwrap()
            .iter()
            .map(|s| serde_json::json!([s["client"], s["worker"]]))
            .collect()
    };
    assert_eq!(clients(&sessions_after), clients(&sessions_before));
    let flows_after = flows(&rig);
    assert!(
        flows_while_down.is_subset(&flows_after),
        "flows lost in the takeover"
    );
    load.wait_for(100);
    let (total, failures) = load.finish();
    assert_no_failures(total, &failures);
    assert_eq!(download.finish(), SLOW_BYTES, "the download completed");
}

fn write_config(path: &std::path::Path, rig: &Rig, workers: usize) {
    let backends: Vec<String> = rig.workers[..workers]
        .iter()
        .map(|w| format!("{{ address = \"{}\" }}", w.ipv4))
        .collect();
    let text = format!(
        "hash_seed = 7\n[[vip]]\naddress = \"{VIP}\"\nbackends = [{}]\n",
        backends.join(", ")
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_restart_with_a_worker_added_to_the_config_fails_nothing() {
    lb_testing::needs_root!();
    let config = TempFile::new("restart.toml");
    let mut rig = Rig::new(lb_exe().as_ref(), 3, &[]).unwrap();
    write_config(&config, &rig, 2);
    let path = config.to_string_lossy().into_owned();
    rig.lb.stop().unwrap();
    rig.start_lb(&["--config", &path]).unwrap();
    assert_eq!(rig.spread(vip_addr(), 30).unwrap().len(), 2);
    let load = Load::start(&rig.client);
    load.wait_for(50);
    let flows_before = flows(&rig);

    let stopped = rig.lb.stop().unwrap();
    assert!(stopped.contains("keeps forwarding"), "{stopped}");
    write_config(&config, &rig, 3);
    // The data plane serves on while no controller runs.
    load.wait_for(50);
    rig.start_lb(&["--config", &path]).unwrap();
    load.wait_for(100);
    let added = rig.workers[2].ipv4.to_string();
    wait_until(Duration::from_secs(10), "the added worker up", || {
        let list = json(&rig.lb.cli_ok(&["backend", "list", "-o", "json"]).unwrap());
        let row = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["worker"] == *added);
        match row {
            Some(row) if row["state"] == "up" => Ok(()),
            row => Err(format!("{row:?}")),
        }
    });
    let (total, failures) = load.finish();
    assert_no_failures(total, &failures);
    let after = flows(&rig);
    let lost: Vec<_> = flows_before.difference(&after).collect();
    assert!(lost.is_empty(), "flows lost: {lost:?}");
    let counts = rig.spread(vip_addr(), 60).unwrap();
    assert_eq!(
        counts.len(),
        3,
        "the added worker takes traffic: {counts:?}"
    );
}

/// An older build of lb (`cargo xtask upgrade-check` builds one and
/// names it here).
const UPGRADE_FROM: &str = "LB_UPGRADE_FROM";

#[test]
#[ignore = "needs an older lb binary: cargo xtask upgrade-check"]
fn an_upgrade_from_an_older_lb_binary_under_load_fails_nothing() {
    lb_testing::needs_root!();
    let old = std::env::var(UPGRADE_FROM).expect("LB_UPGRADE_FROM names the older lb");
    let mut rig = Rig::new(old.as_ref(), 3, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let load = Load::start(&rig.client);
    load.wait_for(50);
    let program_before = program_id(&rig);
    let flows_before = flows(&rig);

    rig.lb.stop().unwrap();
    // --force: across a layout change the maps start afresh, and the same
    // Maglev tables send established connections where they were.
    rig.start_lb_from(lb_exe().as_ref(), &["--force"]).unwrap();
    let takeover = rig.lb.takeover_line.clone();
    println!("upgrade from {old}: {}", takeover.trim());
    assert!(
        takeover.contains(&format!("program {program_before} replaced")),
        "{takeover}"
    );
    load.wait_for(100);
    let (total, failures) = load.finish();
    assert_no_failures(total, &failures);
    if takeover.contains("adopted") {
        assert!(flows_before.is_subset(&flows(&rig)), "flows lost");
    }
    let program_after = program_id(&rig);
    assert_ne!(program_after, program_before);
    let link = rig
        .balancer
        .run("ip", &["-j", "-d", "link", "show", "eth0"])
        .unwrap();
    assert!(
        link.contains(&format!("\"id\":{program_after}")),
        "the interface runs the new program: {link}"
    );
    let vips = json(&rig.lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap());
    assert_eq!(vips[0]["workers"], 3, "{vips}");
}

#[test]
#[ignore = "needs an older lb binary: cargo xtask upgrade-check"]
fn an_upgrade_from_an_older_lb_binary_keeps_fullnat_connections() {
    lb_testing::needs_root!();
    let old = std::env::var(UPGRADE_FROM).expect("LB_UPGRADE_FROM names the older lb");
    let help = std::process::Command::new(&old)
        .args(["run", "--help"])
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&help.stdout).contains("--nat-source") {
        println!("{old} has no NAT: nothing to carry over");
        return;
    }
    let mut rig = NatRig::new(old.as_ref(), 2, &[]).unwrap();
    rig.add_vip(VIP, "fullnat").unwrap();
    let target = SocketAddr::new(vip_addr(), 80);
    let mut connection = KeepAlive::open(&rig.client, target).unwrap();
    let before = connection.get().unwrap();
    let download = Download::start(&rig.client, vip_addr());
    rig.lb.stop().unwrap();
    rig.start_lb_from(lb_exe().as_ref(), &["--force"]).unwrap();
    let takeover = rig.lb.takeover_line.clone();
    println!("upgrade from {old}: {}", takeover.trim());
    if takeover.contains("adopted") {
        // The NAT table, ports and flows were adopted: the connections go on.
        for _ in 0..5 {
            assert_eq!(connection.get().unwrap(), before, "the same worker");
        }
        assert_eq!(download.finish(), SLOW_BYTES, "the download completes");
    }
    // Across a layout change (fresh maps) only new connections work.
    let fresh = KeepAlive::open(&rig.client, target).unwrap().get().unwrap();
    assert!(fresh.starts_with('w'), "{fresh}");
}

#[test]
fn a_damaged_state_file_is_refused_by_name_and_left_untouched() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(lb_exe().as_ref(), 2, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    rig.lb.stop().unwrap();
    let state_file = rig.lb.state_file();
    let whole = std::fs::read_to_string(&state_file).unwrap();
    for damaged in [&whole[..whole.len() / 2], "", "{\"format\": 1}"] {
        std::fs::write(&state_file, damaged).unwrap();
        let error = rig.start_lb(&[]).map(drop).unwrap_err().to_string();
        assert!(
            error.contains(&state_file.display().to_string()) && error.contains("move it away"),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&state_file).unwrap(), damaged);
        assert_eq!(
            rig.spread(vip_addr(), 10).unwrap().values().sum::<usize>(),
            10,
            "the data plane forwards while no controller runs"
        );
    }
    std::fs::write(&state_file, &whole).unwrap();
    rig.start_lb(&[]).unwrap();
    assert!(rig.lb.takeover_line.contains("adopted"));
    assert_eq!(rig.spread(vip_addr(), 20).unwrap().len(), 2);
}

#[test]
fn killing_the_controller_while_it_saves_never_leaves_a_partial_state_file() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(lb_exe().as_ref(), 2, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let w1 = rig.workers[0].ipv4.to_string();
    let state_file = rig.lb.state_file();
    for round in 0..5u64 {
        let exe = rig.lb.exe().to_owned();
        let socket = socket_of(&rig);
        let written = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (w1, exe, written) = (w1.clone(), exe.clone(), written.clone());
            std::thread::spawn(move || {
                for weight in 1..=200u32 {
                    let ok = std::process::Command::new(&exe)
                        .args(["backend", "set", VIP, &w1, "--weight", &weight.to_string()])
                        .arg("--socket")
                        .arg(&socket)
                        .output()
                        .map(|o| o.status.success())
                        .unwrap_or(false);
                    if !ok {
                        return;
                    }
                    written.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // Each round kills the controller further into the writes, with the
        // writer still changing the weight.
        let changes = 3 + 8 * round as usize;
        wait_until(Duration::from_secs(60), "the weights being set", || {
            written.load(Ordering::Relaxed) >= changes
        });
        rig.lb.kill().unwrap();
        writer.join().unwrap();
        let saved = std::fs::read_to_string(&state_file).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&saved)
            .unwrap_or_else(|e| panic!("round {round}: partial state file ({e}): {saved}"));
        assert!(
            parsed["vips"][VIP]["workers"][&w1]["weight"].is_u64(),
            "{saved}"
        );
        rig.start_lb(&[]).unwrap();
        assert!(rig.lb.takeover_line.contains("adopted"));
    }
    let leftovers: Vec<_> = std::fs::read_dir(state_file.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "a restart removes temporary files: {leftovers:?}"
    );
}

fn socket_of(rig: &Rig) -> std::path::PathBuf {
    rig.lb.state_file().with_extension("sock")
}

#[test]
fn another_layout_is_refused_until_forced_and_the_old_program_keeps_forwarding() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(lb_exe().as_ref(), 2, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    rig.lb.kill().unwrap();
    let pin_dir = rig.lb.pin_dir().to_owned();
    let mark = format!("layout-{}", lb_common::LAYOUT_VERSION);
    std::fs::remove_dir(pin_dir.join(&mark)).unwrap();
    std::fs::create_dir(pin_dir.join("layout-1")).unwrap();

    let error = rig.start_lb(&[]).map(drop).unwrap_err().to_string();
    assert!(
        error.contains("layout 1") && error.contains("--force"),
        "{error}"
    );
    assert_eq!(
        rig.spread(vip_addr(), 10).unwrap().len(),
        2,
        "old program forwards"
    );

    rig.start_lb(&["--force"]).unwrap();
    assert!(
        rig.lb
            .takeover_line
            .contains("replaced the running data plane"),
        "{}",
        rig.lb.takeover_line
    );
    assert!(pin_dir.join(&mark).exists() && !pin_dir.join("layout-1").exists());
    assert_eq!(
        rig.spread(vip_addr(), 20).unwrap().len(),
        2,
        "new program forwards"
    );
}

#[test]
fn lb_detach_removes_a_stopped_instance_and_refuses_a_running_one() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let pin_dir = rig.lb.pin_dir().to_string_lossy().into_owned();
    let detach = |rig: &Rig| {
        rig.balancer
            .command(rig.lb.exe())
            .args(["detach", "--pin-dir", &pin_dir])
            .output()
            .unwrap()
    };
    let refused = detach(&rig);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop it first"));

    rig.lb.stop().unwrap();
    let xdp_attached = |rig: &Rig| {
        rig.balancer
            .run("ip", &["-j", "-d", "link", "show", "eth0"])
            .unwrap()
            .contains("\"xdp\"")
    };
    assert!(xdp_attached(&rig), "the program outlives the controller");
    let done = detach(&rig);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    // The stopped controller's last reference to the link may go a moment
    // after its process is reaped.
    wait_until(Duration::from_secs(5), "detached", || !xdp_attached(&rig));
    assert!(!std::path::Path::new(&pin_dir).exists());
}

#[test]
fn two_instances_behind_ecmp_pick_the_same_workers_so_connections_survive_losing_one() {
    lb_testing::needs_root!();
    let config = TempFile::new("ecmp.toml");
    let backends: Vec<String> = (11..=13)
        .map(|n| format!("{{ address = \"192.0.2.{n}\" }}"))
        .collect();
    std::fs::write(
        &config,
        format!(
            "hash_seed = 42\n[[vip]]\naddress = \"{VIP}\"\nbackends = [{}]\n",
            backends.join(", ")
        ),
    )
    .unwrap();
    let path = config.to_string_lossy().into_owned();
    let mut rig = Rig::new(lb_exe().as_ref(), 3, &["--config", &path]).unwrap();
    let second = rig
        .bed
        .add_host(
            "lb2",
            std::net::Ipv4Addr::new(192, 0, 2, 3),
            lb_testing::rig::v6(3),
        )
        .unwrap();
    rig.bed.accept_xdp_tx_from("lb2").unwrap();
    let lb2 = lb_testing::testbed::LbProcess::start(
        lb_exe().as_ref(),
        &mut rig.bed,
        &second,
        "lb2",
        &["--config", &path],
    )
    .unwrap();
    let client = &rig.client;
    // Layer-4 hashing: flows of one client spread over both next hops.
    client
        .within(|| std::fs::write("/proc/sys/net/ipv4/fib_multipath_hash_policy", "1"))
        .unwrap()
        .unwrap();
    let route = format!("{VIP4}/32");
    client
        .run(
            "ip",
            &[
                "route",
                "replace",
                &route,
                "nexthop",
                "via",
                "192.0.2.2",
                "nexthop",
                "via",
                "192.0.2.3",
            ],
        )
        .unwrap();

    const CONNECTIONS: usize = 100;
    let target = SocketAddr::new(vip_addr(), 80);
    let mut conns: Vec<(KeepAlive, String)> = client
        .within(move || {
            (0..CONNECTIONS)
                .map(|_| {
                    let mut conn = KeepAlive::connect(target, REQUEST_TIMEOUT).unwrap();
                    let worker = conn.get().unwrap();
                    (conn, worker)
                })
                .collect()
        })
        .unwrap();
    let new_flows = |lb: &lb_testing::testbed::LbProcess| {
        lb.stats_json().unwrap()["vips"][0]["new_flows"]
            .as_u64()
            .unwrap()
    };
    let (first, other) = (new_flows(&rig.lb), new_flows(&lb2));
    assert!(
        first >= 10 && other >= 10,
        "ECMP spreads connections over both instances: {first} and {other}"
    );
    let download = Download::start(client, vip_addr());

    // The first instance dies: the router withdraws its route.
    client
        .run("ip", &["route", "replace", &route, "via", "192.0.2.3"])
        .unwrap();
    let kept = conns
        .iter_mut()
        .filter_map(|(conn, worker)| conn.get().ok().filter(|w| w == worker))
        .count();
    println!("{kept} of {CONNECTIONS} established connections survived ({first} and {other} new flows per instance)");
    assert!(
        kept * 100 >= CONNECTIONS * 99,
        "only {kept} of {CONNECTIONS} established connections survived"
    );
    assert_eq!(download.finish(), SLOW_BYTES, "the transfer finished");
    assert_eq!(rig.spread(vip_addr(), 30).unwrap().len(), 3);
    drop(lb2);
}

#[test]
fn maps_left_by_a_start_that_failed_before_attaching_are_replaced_not_refused() {
    lb_testing::needs_root!();
    // Regression: a verifier rejection or a failed native attach left maps
    // pinned without a link, and every later start refused them as
    // "layout unknown" although no program used them.
    let mut rig = Rig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    rig.lb.stop().unwrap();
    let pin_dir = rig.lb.pin_dir().to_owned();
    let link = pin_dir.join("link");
    std::fs::remove_file(&link).unwrap();
    for entry in std::fs::read_dir(&pin_dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("layout-") {
            std::fs::remove_dir(entry.path()).unwrap();
        }
    }
    rig.start_lb(&[]).unwrap();
    assert!(
        rig.lb.takeover_line.contains("new data plane"),
        "{}",
        rig.lb.takeover_line
    );
    assert_eq!(rig.spread(vip_addr(), 10).unwrap().len(), 1);
}

#[test]
fn flows_whose_worker_slots_were_unpinned_are_not_adopted() {
    lb_testing::needs_root!();
    // A fresh backend array starts its slots at generation 1 again: a
    // kept flow could match the slot's next worker, so the flow table goes
    // too (found by the handover model, docs/VERIFICATION.md).
    let mut rig = Rig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    assert_eq!(rig.spread(vip_addr(), 3).unwrap().len(), 1);
    assert!(!flows(&rig).is_empty(), "the requests left flows");
    rig.lb.kill().unwrap();
    let backends = rig.lb.pin_dir().join(lb_common::map_names::BACKENDS);
    std::fs::remove_file(&backends).unwrap();
    rig.start_lb(&[]).unwrap();
    assert!(
        (rig.lb.takeover_line).contains("flows pinned without their worker slots"),
        "{}",
        rig.lb.takeover_line
    );
    assert!(rig.lb.log().contains("has flows but no worker slots"));
    assert!(flows(&rig).is_empty(), "{:?}", flows(&rig));
    assert_eq!(rig.spread(vip_addr(), 10).unwrap().len(), 1);
}
