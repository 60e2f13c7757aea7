//! Instances end to end: names and the paths derived from them, the
//! state file's lock, owner and modes, the pin directory's name, graceful
//! removals across a crash of the controller, and how the CLI finds an
//! instance. Real `lb run` processes in network namespaces; needs root.
//!
//! Instances here are named after their testbed (`lbt-PID-N-ROLE`), so the
//! paths lb derives are unique and the testbed removes them: no test uses
//! the machine's default instance.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::Command,
    time::Duration,
};

use lb_testing::{
    lb_exe,
    rig::{v6, KeepAlive, Rig, VIP4},
    testbed::{Host, LbProcess, Testbed},
    wait::wait_until,
};

const VIP: &str = "192.0.2.100:80/tcp";
const INSTANCE_VARS: [&str; 3] = ["LB_NAME", "LB_SOCKET", "LB_PIN_DIR"];

/// A rig whose balancer runs an instance named `a` with derived paths.
fn named_rig(workers: u8) -> Rig {
    let mut rig = Rig::new(lb_exe().as_ref(), workers, &[]).unwrap();
    rig.lb.stop().unwrap();
    rig.lb.cli_ok(&["detach"]).unwrap();
    let balancer = rig.balancer.clone();
    rig.lb = LbProcess::start_named(lb_exe().as_ref(), &mut rig.bed, &balancer, "a", &[]).unwrap();
    rig
}

/// A testbed with one host, `lb` (192.0.2.2), for tests without traffic.
fn bed() -> (Testbed, Host) {
    let mut bed = Testbed::new().unwrap();
    let host = bed
        .add_host("lb", Ipv4Addr::new(192, 0, 2, 2), v6(2))
        .unwrap();
    (bed, host)
}

/// Runs `lb run ARGS` in `host`, which must refuse to start; returns the
/// one line it printed.
fn refused_run(host: &Host, args: &[&str]) -> String {
    let (started, stderr) = host
        .run_lb_expecting_refusal(lb_exe().as_ref(), args, Duration::from_secs(15))
        .unwrap();
    assert!(!started, "lb run {args:?} started: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    stderr
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

fn vips(lb: &LbProcess) -> Vec<String> {
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&lb.cli_ok(&["vip", "list", "-o", "json"]).unwrap()).unwrap();
    rows.iter()
        .map(|r| r["vip"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn two_named_instances_with_derived_paths_keep_apart_across_restarts() {
    lb_testing::needs_root!();
    let mut rig = named_rig(2);
    let second = rig
        .add_balancer(
            "lb2",
            Ipv4Addr::new(192, 0, 2, 3),
            v6(3),
            Ipv4Addr::new(192, 0, 2, 101),
        )
        .unwrap();
    let mut b = LbProcess::start_named(lb_exe().as_ref(), &mut rig.bed, &second, "b", &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    b.cli_ok(&["vip", "add", "192.0.2.101:80/tcp"]).unwrap();
    let w2 = rig.workers[1].ipv4.to_string();
    b.cli_ok(&["backend", "add", "192.0.2.101:80/tcp", &w2])
        .unwrap();

    for round in ["first start", "restart"] {
        assert_eq!(vips(&rig.lb), [VIP], "{round}");
        assert_eq!(vips(&b), ["192.0.2.101:80/tcp"], "{round}");
        assert_eq!(rig.spread(VIP4.into(), 20).unwrap().len(), 2, "{round}");
        let only_w2 = rig.spread("192.0.2.101".parse().unwrap(), 10).unwrap();
        assert_eq!(only_w2.keys().collect::<Vec<_>>(), ["w2"], "{round}");
        if round == "first start" {
            rig.lb.kill().unwrap();
            b.stop().unwrap();
            let balancer = rig.balancer.clone();
            rig.lb = LbProcess::start_named(lb_exe().as_ref(), &mut rig.bed, &balancer, "a", &[])
                .unwrap();
            b = LbProcess::start_named(lb_exe().as_ref(), &mut rig.bed, &second, "b", &[]).unwrap();
            for lb in [&rig.lb, &b] {
                assert!(lb.takeover_line.contains("adopted"), "{}", lb.takeover_line);
            }
        }
    }

    for lb in [&rig.lb, &b] {
        let paths = lb.paths();
        let name = paths.name.to_string();
        assert_eq!(
            paths.state_file,
            Path::new(&format!("/var/lib/lb/{name}.json"))
        );
        assert_eq!(paths.pin_dir, Path::new(&format!("/sys/fs/bpf/{name}")));
        let meta = std::fs::metadata(&paths.state_file).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&paths.state_file).unwrap()).unwrap();
        assert_eq!(saved["format"], 2);
        assert_eq!(saved["owner"]["name"], name.as_str());
        assert_eq!(saved["owner"]["iface"], "eth0");
        assert!(paths.pin_dir.join(format!("name-{name}")).is_dir());
        let status = lb.status_json().unwrap();
        assert_eq!(status["name"], name.as_str());
    }
}

#[test]
fn a_second_controller_on_a_locked_state_file_is_refused_with_one_line() {
    lb_testing::needs_root!();
    let (mut bed, host) = bed();
    let a = LbProcess::start_named(lb_exe().as_ref(), &mut bed, &host, "a", &[]).unwrap();
    let b = bed.instance("b").unwrap();
    let state_file = a.state_file();
    let error = refused_run(
        &host,
        &[
            "--iface",
            "eth0",
            "--name",
            b.name.as_str(),
            "--state-file",
            &text(&state_file),
        ],
    );
    assert!(
        error.contains(&format!(
            "state file {} is in use by another `lb run`",
            text(&state_file)
        )),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "pin dir {}, socket {}",
            text(&a.paths().pin_dir),
            text(&a.paths().socket)
        )),
        "names the holder: {error}"
    );
    assert!(!b.pin_dir.join("link").exists(), "refused before attaching");
    assert_eq!(vips(&a), Vec::<String>::new(), "the holder goes on");
}

#[test]
fn a_state_file_or_pin_dir_of_another_instance_or_interface_is_refused_and_left_alone() {
    lb_testing::needs_root!();
    let (mut bed, host) = bed();
    let elsewhere = bed
        .add_host("lb2", Ipv4Addr::new(192, 0, 2, 3), v6(3))
        .unwrap();
    let mut a = LbProcess::start_named(lb_exe().as_ref(), &mut bed, &host, "a", &[]).unwrap();
    a.cli_ok(&["vip", "add", VIP]).unwrap();
    a.stop().unwrap();
    let (a_name, state_file) = (a.paths().name.to_string(), a.state_file());
    let whole = std::fs::read(&state_file).unwrap();
    host.run(
        "ip",
        &[
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth2",
        ],
    )
    .unwrap();
    let b = bed.instance("b").unwrap();
    let b_name = b.name.to_string();
    let (state, pins) = (text(&state_file), text(a.pin_dir()));
    let cases: [(&Host, Vec<&str>, String); 4] = [
        (
            &host,
            vec!["--iface", "eth0", "--name", &b_name, "--state-file", &state],
            format!("belongs to instance `{a_name}` on eth0, not to instance `{b_name}` on eth0"),
        ),
        (
            &host,
            vec!["--iface", "eth1", "--name", &a_name],
            format!("belongs to instance `{a_name}` on eth0, not to instance `{a_name}` on eth1"),
        ),
        (
            &elsewhere,
            vec!["--iface", "eth0", "--name", &a_name],
            format!("belongs to instance `{a_name}` on eth0 in network namespace"),
        ),
        (
            &host,
            vec!["--iface", "eth0", "--name", &b_name, "--pin-dir", &pins],
            format!("the pin directory {pins} belongs to lb instance `{a_name}`, not `{b_name}`"),
        ),
    ];
    for (on, args, expected) in cases {
        let error = refused_run(on, &args);
        assert!(error.contains(&expected), "{args:?}: {error}");
        if !expected.contains("pin directory") {
            assert!(error.contains(&state), "names the file: {error}");
        }
        assert_eq!(std::fs::read(&state_file).unwrap(), whole, "{args:?}");
    }
    let a = LbProcess::start_named(lb_exe().as_ref(), &mut bed, &host, "a", &[]).unwrap();
    assert!(a.takeover_line.contains("adopted"), "{}", a.takeover_line);
    assert_eq!(vips(&a), [VIP]);
}

/// `lb backend list -o json`: each worker's state.
fn worker_states(lb: &LbProcess) -> Vec<(String, String)> {
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&lb.cli_ok(&["backend", "list", "-o", "json"]).unwrap()).unwrap();
    rows.iter()
        .map(|r| {
            let field = |f: &str| r[f].as_str().unwrap().to_owned();
            (field("worker"), field("state"))
        })
        .collect()
}

fn state_of(lb: &LbProcess, worker: &Host) -> String {
    let addr = worker.ipv4.to_string();
    worker_states(lb)
        .into_iter()
        .find(|(w, _)| *w == addr)
        .map_or_else(|| "absent".into(), |(_, state)| state)
}

#[test]
fn graceful_removals_survive_a_kill_9_of_the_controller() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(lb_exe().as_ref(), 2, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    // One keep-alive connection on each worker (Maglev picks: try a few).
    let mut held: Vec<(String, KeepAlive)> = Vec::new();
    for _ in 0..50 {
        let mut connection = KeepAlive::open(&rig.client, target).unwrap();
        let worker = connection.get().unwrap();
        if !held.iter().any(|(w, _)| *w == worker) {
            held.push((worker, connection));
        }
        if held.len() == 2 {
            break;
        }
    }
    assert_eq!(held.len(), 2, "no connection reached both workers");
    let (mut slow, quick) = (held.remove(0), held.remove(0));
    let host = |role: &str| rig.workers.iter().find(|w| w.role == role).unwrap().clone();
    let (slow_host, quick_host) = (host(&slow.0), host(&quick.0));
    // The slow one waits for its connection; the quick one's deadline
    // passes while its connection is still open.
    for (worker, timeout) in [(&slow_host, "120s"), (&quick_host, "3s")] {
        let addr = worker.ipv4.to_string();
        rig.lb
            .cli_ok(&[
                "backend",
                "del",
                VIP,
                &addr,
                "--graceful",
                "--timeout",
                timeout,
            ])
            .unwrap();
    }
    let saved = std::fs::read_to_string(rig.lb.state_file()).unwrap();
    assert_eq!(saved.matches("\"remove_by\"").count(), 2, "{saved}");

    rig.lb.kill().unwrap();
    rig.start_lb(&[]).unwrap();
    assert!(rig.lb.takeover_line.contains("adopted"));
    assert_eq!(state_of(&rig.lb, &slow_host), "removing");
    wait_until(Duration::from_secs(15), "removed at its deadline", || {
        state_of(&rig.lb, &quick_host) == "absent"
    });
    assert_eq!(
        state_of(&rig.lb, &slow_host),
        "removing",
        "its connection is open and its deadline far"
    );
    assert_eq!(slow.1.get().unwrap(), slow.0, "its connection goes on");
    drop(slow);
    wait_until(
        Duration::from_secs(15),
        "removed once its flow ended",
        || state_of(&rig.lb, &slow_host) == "absent",
    );
    let saved = std::fs::read_to_string(rig.lb.state_file()).unwrap();
    assert!(!saved.contains("remove_by"), "{saved}");
}

/// CLI arguments, an environment variable to set, and what the output
/// must contain.
type CliCase<'a> = (Vec<&'a str>, Option<(&'a str, &'a str)>, &'a str);

#[test]
fn every_command_finds_its_instance_by_name_socket_or_pin_dir_before_or_after_it() {
    lb_testing::needs_root!();
    let (mut bed, host) = bed();
    let a = LbProcess::start_named(lb_exe().as_ref(), &mut bed, &host, "a", &[]).unwrap();
    a.cli_ok(&["vip", "add", VIP]).unwrap();
    let paths = a.paths();
    let (name, socket, pins) = (
        paths.name.to_string(),
        text(&paths.socket),
        text(&paths.pin_dir),
    );
    let cases: [CliCase; 10] = [
        (vec!["--socket", &socket, "vip", "list"], None, VIP),
        (vec!["vip", "list", "--socket", &socket], None, VIP),
        (vec!["vip", "list"], Some(("LB_SOCKET", &socket)), VIP),
        (vec!["--name", &name, "vip", "list"], None, VIP),
        (vec!["vip", "list", "--name", &name], None, VIP),
        (vec!["vip", "list"], Some(("LB_NAME", &name)), VIP),
        (vec!["--pin-dir", &pins, "stats"], None, "forwarded"),
        (vec!["stats"], Some(("LB_PIN_DIR", &pins)), "forwarded"),
        (vec!["flows", "--name", &name], None, "CLIENT"),
        (vec!["--name", &name, "status"], None, &name),
    ];
    for (args, env, expected) in cases {
        let mut cmd = Command::new(lb_exe());
        cmd.args(&args);
        for var in INSTANCE_VARS {
            cmd.env_remove(var);
        }
        if let Some((var, value)) = env {
            cmd.env(var, value);
        }
        let output = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{args:?} {env:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains(expected), "{args:?} {env:?}: {stdout}");
    }
    let output = Command::new(lb_exe())
        .args(["--name", "Not/A/Name", "vip", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr
            .lines()
            .next()
            .unwrap()
            .contains("is not valid: use 1 to 32"),
        "{stderr}"
    );
}

#[test]
fn the_state_directory_is_private_and_a_token_file_of_another_user_is_refused() {
    lb_testing::needs_root!();
    let (mut bed, host) = bed();
    let dir = std::env::temp_dir().join(format!("lbt-{}-modes", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state_file = dir.join("state/sub/lb.json");
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&token, Some(65534), None).unwrap();
    let pin_dir = bed.pin_dir("modes");
    let error = refused_run(
        &host,
        &[
            "--iface",
            "eth0",
            "--pin-dir",
            &text(&pin_dir),
            "--socket",
            &text(&dir.join("lb.sock")),
            "--state-file",
            &text(&state_file),
            "--load-listen",
            "192.0.2.2:9470",
            "--load-token-file",
            &text(&token),
        ],
    );
    assert!(
        error.contains("belongs to uid 65534")
            && error.contains(&format!("chown root: {}", text(&token))),
        "{error}"
    );
    assert!(!pin_dir.join("link").exists(), "refused before attaching");
    assert!(
        !dir.join("state").exists(),
        "the refused start left its files"
    );
    // Started, lb makes what it keeps root's alone.
    let mut lb = LbProcess::start_named(
        lb_exe().as_ref(),
        &mut bed,
        &host,
        "modes",
        &["--state-file", &text(&state_file)],
    )
    .unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().mode() & 0o777;
    assert_eq!(mode(&dir.join("state")), 0o700);
    assert_eq!(mode(&dir.join("state/sub")), 0o700);
    assert_eq!(mode(&dir.join("state/sub/lb.json.lock")), 0o600);
    assert_eq!(mode(&state_file), 0o600);
    lb.stop().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
