//! An instance is one identity, whatever happens around it: another
//! spelling of its paths (`//`, `/./`, `..`, a trailing `/`, a symbolic
//! link of root's) names the same instance, so its lock holds and `lb
//! detach` refuses; a directory another user owns anywhere above a pin
//! directory is refused by `lb run`, the readers and `lb decap`; pins
//! removed under a running controller are pinned again, or, where that is
//! not safe, reported; and a refused start leaves nothing behind that it
//! created. Real `lb run` processes in network namespaces; needs root.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use lb_testing::{
    lb_exe,
    rig::{metric, v6, Rig, METRICS_ADDR, VIP4},
    testbed::{Host, LbProcess, Testbed},
    wait::wait_until,
};
use lb_userspace::dataplane::{detach_pins, lock_path};

const VIP: &str = "192.0.2.100:80/tcp";

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

/// Runs `lb ARGS` in `host`, which must fail; returns its one line.
fn refused_cli(host: &Host, args: &[&str]) -> String {
    let output = host
        .command(lb_exe())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "lb {args:?} succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    stderr
}

/// Runs `args` as the unprivileged user nobody; whether it succeeded.
fn as_nobody(args: &[&str]) -> bool {
    Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
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

/// Whether an XDP program runs on `iface` in `host`.
fn xdp_on(host: &Host, iface: &str) -> bool {
    host.run("ip", &["link", "show", "dev", iface])
        .unwrap()
        .contains("prog/xdp")
}

fn answers(rig: &Rig, count: usize) -> usize {
    rig.spread(IpAddr::V4(VIP4), count)
        .map_or(0, |spread| spread.values().sum())
}

/// A directory of this test's own under the temporary directory, removed
/// when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lbt-{}-{what}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn another_spelling_of_a_running_instances_paths_names_the_same_instance() {
    lb_testing::needs_root!();
    let (mut bed, host) = bed();
    let a = LbProcess::start_named(lb_exe().as_ref(), &mut bed, &host, "a", &[]).unwrap();
    a.cli_ok(&["vip", "add", VIP]).unwrap();
    let paths = a.paths().clone();
    let (name, pins) = (paths.name.to_string(), text(&paths.pin_dir));
    let base = paths.pin_dir.file_name().unwrap().to_string_lossy();
    // A symbolic link of root's, in a directory of root's, to the bpffs.
    let temp = TempDir::new("alias");
    std::os::unix::fs::symlink("/sys/fs/bpf", temp.0.join("bpf")).unwrap();
    let spellings = [
        pins.replacen("/sys/fs/bpf/", "/sys/fs/bpf//", 1),
        pins.replacen("/sys/fs/bpf/", "/sys/fs/bpf/./", 1),
        pins.replacen("/sys/fs/bpf/", "/sys/fs/bpf/../bpf/", 1),
        format!("{pins}/"),
        text(&temp.0.join("bpf").join(&*base)),
    ];
    // Another start of instance `a`, with a socket and state file of its
    // own, so that only the pin directory is shared.
    let other = bed.socket("other");
    let (socket, state) = (text(&other), text(&other.with_extension("json")));
    for spelling in &spellings {
        let error = refused_run(
            &host,
            &[
                "--iface",
                "eth0",
                "--name",
                &name,
                "--pin-dir",
                spelling,
                "--socket",
                &socket,
                "--state-file",
                &state,
            ],
        );
        assert!(
            error.contains(&format!("another `lb run` manages {pins};")),
            "{spelling}: {error}"
        );
        let error = refused_cli(&host, &["detach", "--pin-dir", spelling]);
        assert!(
            error.contains(&format!("an `lb run` still manages {pins}:")),
            "{spelling}: {error}"
        );
        assert!(!Path::new(&state).exists(), "{spelling}: saved a state");
    }
    assert_eq!(vips(&a), [VIP], "the running instance kept its VIPs");
    assert!(paths.pin_dir.join("link").exists());
    assert_eq!(a.status_json().unwrap()["attached"], true);

    // The state file and socket are named as lb spells them too.
    let state_file = text(&paths.state_file);
    let other_pins = bed.pin_dir("other");
    let error = refused_run(
        &host,
        &[
            "--iface",
            "eth0",
            "--name",
            &name,
            "--pin-dir",
            &text(&other_pins),
            "--socket",
            &socket,
            "--state-file",
            &state_file.replacen("/var/lib/lb/", "/var/lib/lb/./", 1),
        ],
    );
    assert!(
        error.contains(&format!("state file {state_file} is in use")),
        "{error}"
    );
    assert!(!other_pins.exists(), "the refused start made its pin dir");
    let status = host
        .command(lb_exe())
        .args(["status", "-o", "json", "--socket"])
        .arg(text(&paths.socket).replacen("/run/lb/", "/run//lb/", 1))
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
}

#[test]
fn a_directory_another_user_owns_above_a_pin_directory_is_refused() {
    lb_testing::needs_root!();
    let (mut bed, host) = bed();
    // A bpffs where anyone may create directories, whatever the machine's
    // mode is; its root is sticky, so what root keeps there stays root's.
    let open = bed.own_bpffs("1777").unwrap();
    let theirs = open.join("theirs");
    let a = LbProcess::start_pinned(lb_exe().as_ref(), &mut bed, &host, "theirs", &theirs, &[])
        .unwrap();
    a.cli_ok(&["vip", "add", VIP]).unwrap();

    // nobody's directory, holding a pin directory of links to the running
    // instance's pins.
    let evil = open.join("evil");
    let fake = evil.join("pins");
    assert!(as_nobody(&["mkdir", "-p", &text(&fake)]));
    for name in lb_common::map_names::ALL.iter().chain(["link"].iter()) {
        let target = text(&theirs.join(name));
        assert!(as_nobody(&["ln", "-s", &target, &text(&fake.join(name))]));
    }
    let owner = format!("{} belongs to uid 65534", text(&evil));
    for args in [&["flows"][..], &["stats"], &["detach"]] {
        let mut all = args.to_vec();
        let fake = text(&fake);
        all.extend(["--pin-dir", &fake]);
        let error = refused_cli(&host, &all);
        assert!(error.contains(&owner), "{args:?}: {error}");
    }
    assert!(theirs.join("link").exists(), "detached through the links");

    // No pin directory is made under it, by lb run or lb decap.
    let mine = evil.join("mine");
    let socket = bed.socket("mine");
    let error = refused_run(
        &host,
        &[
            "--iface",
            "eth0",
            "--pin-dir",
            &text(&mine),
            "--socket",
            &text(&socket),
            "--state-file",
            &text(&socket.with_extension("json")),
        ],
    );
    assert!(error.contains(&owner), "{error}");
    assert!(!mine.exists(), "lb run made {}", mine.display());
    host.run(
        "ip",
        &[
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth2",
        ],
    )
    .unwrap();
    let decap = evil.join("decap");
    let error = refused_cli(
        &host,
        &[
            "decap",
            "attach",
            "--iface",
            "eth1",
            "--pin-dir",
            &text(&decap),
        ],
    );
    assert!(error.contains(&owner), "{error}");
    assert!(
        !decap.exists() && !xdp_on(&host, "eth1"),
        "lb decap attached"
    );
    assert_eq!(vips(&a), [VIP]);
}

#[test]
fn pins_removed_under_a_running_controller_are_pinned_again() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(lb_exe().as_ref(), 2, &["--metrics", METRICS_ADDR]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let pin_dir = rig.lb.pin_dir().to_owned();
    // What `lb detach` removes (it refuses while a controller runs; this
    // is a mistake by hand, or a detach that got past a lock file someone
    // removed): the link, the maps, the marks, the directory, the locks.
    detach_pins(&pin_dir);
    assert!(!pin_dir.exists());
    assert_eq!(answers(&rig, 10), 10, "forwarding stopped with the pins");
    let whole = || {
        let names = std::fs::read_dir(&pin_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        names.iter().any(|n| n.starts_with("layout-"))
            && names.iter().any(|n| n.starts_with("name-"))
            && names
                .iter()
                .any(|n| n.starts_with("iface-") && n.ends_with("-eth0"))
            && ["link", "LB_FLOWS", "LB_VIPS"]
                .iter()
                .all(|n| names.iter().any(|m| m == n))
            && lock_path(&pin_dir).exists()
    };
    wait_until(Duration::from_secs(5), "every pin restored", whole);
    let status = rig.lb.status_json().unwrap();
    assert_eq!(status["attached"], true, "{status}");
    assert_eq!(status["pinned"], true, "{status}");
    assert!(
        rig.lb.log().contains("pinned them again"),
        "{}",
        rig.lb.log()
    );
    let scrape = rig.scrape_metrics().unwrap();
    assert_eq!(metric(&scrape, "lb_pins_intact"), 1.0);
    assert!(metric(&scrape, "lb_pin_restores_total") >= 1.0, "{scrape}");
    assert!(rig.lb.stats().is_ok(), "the readers find the maps again");
    // The lock is back: a second controller and lb detach are refused.
    let error = refused_cli(&rig.balancer, &["detach", "--pin-dir", &text(&pin_dir)]);
    assert!(error.contains("still manages"), "{error}");

    // A plain stop leaves the program forwarding, and the next start
    // adopts it.
    rig.lb.stop().unwrap();
    assert!(xdp_on(&rig.balancer, "eth0"));
    assert_eq!(
        answers(&rig, 10),
        10,
        "the program left with the controller"
    );
    rig.start_lb(&[]).unwrap();
    assert!(
        rig.lb.takeover_line.contains("adopted"),
        "{}",
        rig.lb.takeover_line
    );
    assert_eq!(vips(&rig.lb), [VIP]);
}

#[test]
fn the_controller_pins_nothing_into_a_directory_another_user_took() {
    lb_testing::needs_root!();
    let (mut bed, host) = bed();
    let open = bed.own_bpffs("1777").unwrap();
    let pin_dir = open.join("lb");
    let mut lb =
        LbProcess::start_pinned(lb_exe().as_ref(), &mut bed, &host, "lb", &pin_dir, &[]).unwrap();
    lb.cli_ok(&["vip", "add", VIP]).unwrap();
    // The pin directory passes to nobody (as if nobody had swapped in a
    // directory of their own), and the link's pin goes.
    std::os::unix::fs::chown(&pin_dir, Some(65534), Some(65534)).unwrap();
    std::fs::remove_file(pin_dir.join("link")).unwrap();
    wait_until(Duration::from_secs(5), "lb status saying so", || {
        lb.status_json().unwrap()["pinned"] == false
    });
    let status = lb.status_json().unwrap();
    assert_eq!(status["attached"], true, "the controller holds the link");
    let why = status["unpinned_because"].as_str().unwrap_or_default();
    assert!(why.contains("belongs to uid 65534"), "{status}");
    assert!(lb.log().contains("not pinned again"), "{}", lb.log());
    assert!(
        !pin_dir.join("link").exists(),
        "pinned into nobody's directory"
    );
    // The stop says what is true: nothing keeps the program.
    let said = lb.stop().unwrap();
    assert!(said.contains("left eth0"), "{said}");
    assert!(!xdp_on(&host, "eth0"));
}

/// What a start may create, to look for afterwards.
fn leftovers(paths: &[&Path]) -> Vec<PathBuf> {
    paths
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.to_path_buf())
        .collect()
}

#[test]
fn a_refused_start_leaves_nothing_behind_that_it_created() {
    lb_testing::needs_root!();
    let (mut bed, host) = bed();
    let spare = bed
        .add_host("lb2", Ipv4Addr::new(192, 0, 2, 3), v6(3))
        .unwrap();
    let a = LbProcess::start_named(lb_exe().as_ref(), &mut bed, &host, "a", &[]).unwrap();
    let temp = TempDir::new("refused");
    let state_dir = temp.0.join("state");
    let state_file = state_dir.join("sub/b.json");
    let socket_dir = temp.0.join("run");
    let socket = socket_dir.join("sub/b.sock");
    let pin_parent = bed.pin_dir("refused");
    let pin_dir = pin_parent.join("sub/b");
    let bad_config = temp.0.join("bad.toml");
    std::fs::write(&bad_config, "[[vip]]\naddress = \"not an address\"\n").unwrap();
    let (state_text, socket_text, pins_text) = (text(&state_file), text(&socket), text(&pin_dir));
    let mine = [
        "--socket",
        &socket_text,
        "--state-file",
        &state_text,
        "--pin-dir",
        &pins_text,
    ];
    let a_pins = text(a.pin_dir());
    // A socket path longer than a Unix socket address holds: refused
    // only when the socket is bound, after the data plane is up.
    let long_socket = text(&socket_dir.join("x".repeat(120)));
    let config = text(&bad_config);
    let cases: [(&Host, Vec<&str>, &str); 5] = [
        (
            &host,
            vec!["--iface", "eth9"],
            "no network interface named `eth9`",
        ),
        (&host, vec!["--config", &config], "bad.toml"),
        (
            &host,
            vec!["--pin-dir", &a_pins],
            "another `lb run` manages",
        ),
        (&host, vec![], "already runs XDP program"),
        (
            &spare,
            vec!["--socket", &long_socket],
            "binding the admin socket",
        ),
    ];
    for (on, extra, expected) in cases {
        // The case's flags, then this start's paths where it gives none.
        let mut args: Vec<&str> = extra.clone();
        if !args.contains(&"--iface") {
            args.extend(["--iface", "eth0"]);
        }
        for pair in mine.chunks(2) {
            if !args.contains(&pair[0]) {
                args.extend(pair);
            }
        }
        let error = refused_run(on, &args);
        assert!(error.contains(expected), "{extra:?}: {error}");
        let left = leftovers(&[&state_dir, &socket_dir, &pin_parent, &lock_path(&pin_dir)]);
        assert!(left.is_empty(), "{extra:?} left {left:?}");
        assert!(!xdp_on(&spare, "eth0"), "{extra:?} left XDP on lb2");
    }
    assert!(a.pin_dir().join("link").exists());
    assert_eq!(vips(&a), Vec::<String>::new());
}
