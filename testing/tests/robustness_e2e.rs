//! Hostile input around the data plane and the controller: an admin
//! socket in a directory others can write, clients that send garbage or
//! hang, more connections than the controller may open files, and a flood
//! of new flows from random source ports while established connections
//! carry on. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::fs::PermissionsExt as _,
    },
    time::{Duration, Instant},
};

use lb_testing::{
    frames::{tcp, Packet},
    lb_exe,
    rig::{KeepAlive, Rig, METRICS_ADDR, VIP4},
    testbed::{enter_netns, Host, LbProcess},
    wait::wait_until,
};

const VIP: &str = "192.0.2.100:80/tcp";

#[test]
fn an_admin_socket_in_a_directory_others_can_write_is_refused() {
    lb_testing::needs_root!();
    let mut rig = Rig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    rig.lb.stop().unwrap();
    let dir = std::env::temp_dir().join(format!("lbt-{}-open-dir", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.join("lb.sock");
    let pin_dir = rig.bed.pin_dir("open");
    let state = dir.join("state.json");
    let args = [
        "--iface",
        "eth0",
        "--pin-dir",
        &pin_dir.to_string_lossy(),
        "--socket",
        &socket.to_string_lossy(),
        "--state-file",
        &state.to_string_lossy(),
    ]
    .map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (started, stderr) = rig
        .balancer
        .run_lb_expecting_refusal(lb_exe().as_ref(), &args, Duration::from_secs(10))
        .unwrap();
    assert!(!started);
    assert!(stderr.contains("writable by others"), "{stderr}");
    assert!(
        !pin_dir.join("link").exists(),
        "refused before touching the NIC"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn clients_that_send_garbage_or_hang_do_not_stall_the_controller() {
    lb_testing::needs_root!();
    let rig = Rig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    let socket = rig.lb.state_file().with_extension("sock");
    let mut hanging: Vec<std::os::unix::net::UnixStream> = (0..20)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    for stream in hanging.iter_mut().take(10) {
        stream.write_all(&[0xff; 1000]).unwrap();
        stream.write_all(b"\n").unwrap();
    }
    let mut huge = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let _ = huge.write_all(&vec![b'{'; 200_000]);
    let started = Instant::now();
    rig.lb.cli_ok(&["vip", "add", VIP]).unwrap();
    rig.lb.cli_ok(&["status"]).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the controller stalled for {:?}",
        started.elapsed()
    );
    let mut answer = String::new();
    hanging[0].read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("{\"ok\":false"),
        "garbage is refused: {answer}"
    );
}

/// The open-file limit the controller runs under in the tests below: the
/// soft limit systemd gives a unit that sets none.
const NOFILE: u64 = 1024;
/// Where the balancer takes load reports (it serves metrics at
/// [`METRICS_ADDR`]).
const LOAD: &str = "192.0.2.2:9470";

/// Raises this test process's own open-file limit, so that it can hold
/// more connections than the controller may.
fn allow_many_open_files() {
    let limit = lb_userspace::net::listen::raise_descriptor_limit().unwrap();
    assert!(
        limit > 2 * NOFILE,
        "the test needs {} open files, may have {limit}",
        2 * NOFILE
    );
}

/// Opens `count` connections from `host`, alternately to each of `targets`;
/// every other pair sends the start of a request head and stalls. Returns
/// those that connected.
fn slowloris(host: &Host, targets: [SocketAddr; 2], count: usize) -> Vec<TcpStream> {
    host.within(move || {
        (0..count)
            .filter_map(|i| {
                let mut stream =
                    TcpStream::connect_timeout(&targets[i % 2], Duration::from_secs(2)).ok()?;
                if i % 4 < 2 {
                    let _ = stream.write_all(b"POST /load HTTP/1.1\r\nHost: lb\r\n");
                }
                Some(stream)
            })
            .collect()
    })
    .unwrap()
}

/// How long a request in the tests below waits for its answer: long
/// enough to tell how late a late one is.
const PATIENCE: Duration = Duration::from_secs(20);

/// `GET /metrics` over a new connection, answered within `patience`; the
/// status line, if any.
fn scrape(rig: &Rig, patience: Duration) -> Option<String> {
    rig.balancer
        .within(|| {
            let mut stream =
                TcpStream::connect_timeout(&METRICS_ADDR.parse().unwrap(), patience).ok()?;
            stream.set_read_timeout(Some(patience)).ok()?;
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n")
                .ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).ok()?;
            answer.lines().next().map(str::to_owned)
        })
        .unwrap()
}

/// A 0600 load token file, removed on drop.
struct TokenFile(std::path::PathBuf);

impl TokenFile {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("lbt-{}-robust-token", std::process::id()));
        std::fs::write(&path, "0123456789abcdef0123").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self(path)
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A load report for `worker` (one of [`VIP`]'s), pushed from its own
/// address; the HTTP status and how long the answer took.
fn push_load(worker: &Host, token: &str) -> (Option<u16>, Duration) {
    let body = format!(r#"{{"vip":"{VIP}","worker":"{}","load":0.5}}"#, worker.ipv4);
    let request = format!(
        "POST /load HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    worker
        .within(move || {
            let started = Instant::now();
            let status = (|| {
                let mut stream =
                    TcpStream::connect_timeout(&LOAD.parse().unwrap(), PATIENCE).ok()?;
                stream.set_read_timeout(Some(PATIENCE)).ok()?;
                stream.write_all(request.as_bytes()).ok()?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer).ok()?;
                answer.split(' ').nth(1)?.parse().ok()
            })();
            (status, started.elapsed())
        })
        .unwrap()
}

#[test]
fn a_slowloris_of_more_connections_than_the_open_file_limit_delays_no_scrape_or_load_report() {
    lb_testing::needs_root!();
    allow_many_open_files();
    let token = TokenFile::new();
    let token_path = token.0.to_string_lossy().into_owned();
    let args = [
        "--metrics",
        METRICS_ADDR,
        "--load-listen",
        LOAD,
        "--load-token-file",
        &token_path,
    ];
    let mut rig = Rig::new(lb_exe().as_ref(), 3, &args).unwrap();
    rig.lb.stop().unwrap();
    rig.start_lb_limited(&args, NOFILE).unwrap();
    rig.lb.cli_ok(&["vip", "add", VIP]).unwrap();
    for worker in &rig.workers[..2] {
        rig.lb
            .cli_ok(&["backend", "add", VIP, &worker.ipv4.to_string()])
            .unwrap();
    }

    let count = NOFILE as usize + 100;
    let targets = [METRICS_ADDR.parse().unwrap(), LOAD.parse().unwrap()];
    let held = slowloris(&rig.client, targets, count);
    assert!(
        held.len() > NOFILE as usize,
        "only {} of {count} connections opened",
        held.len()
    );
    // While the flood holds its connections, a scraper and a worker (each
    // from an address of its own) are answered at once: within 2 s, and a
    // load report within 1 s, a tenth of the default load TTL.
    for _ in 0..3 {
        let (loaded, load_took) = push_load(&rig.workers[0], "0123456789abcdef0123");
        let started = Instant::now();
        let scraped = scrape(&rig, PATIENCE);
        let scrape_took = started.elapsed();
        assert!(
            scraped.as_deref().is_some_and(|s| s.starts_with("HTTP/1.1 200"))
                && scrape_took < Duration::from_secs(2)
                && loaded == Some(204)
                && load_took < Duration::from_secs(1),
            "during the flood, a scrape got {scraped:?} after {scrape_took:?}, a load report {loaded:?} after {load_took:?}"
        );
        println!("during the flood: a scrape took {scrape_took:?}, a load report {load_took:?}");
    }
    let backends: serde_json::Value =
        serde_json::from_str(&rig.lb.cli_ok(&["backend", "list", "-o", "json"]).unwrap()).unwrap();
    let w1 = rig.workers[0].ipv4.to_string();
    assert!(
        backends
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["worker"] == w1.as_str() && row["load"] == 0.5),
        "the load report was taken: {backends}"
    );
    rig.lb.cli_ok(&["status"]).unwrap();
    let w3 = rig.workers[2].ipv4.to_string();
    rig.lb.cli_ok(&["backend", "add", VIP, &w3]).unwrap();
    let answers = rig.spread(IpAddr::V4(VIP4), 30).unwrap();
    assert_eq!(answers.values().sum::<usize>(), 30, "{answers:?}");
    rig.lb.cli_ok(&["status"]).unwrap();

    drop(held);
    wait_until(
        Duration::from_secs(60),
        "metrics served after the flood",
        || {
            scrape(&rig, Duration::from_secs(2))
                .is_some_and(|status| status.starts_with("HTTP/1.1 200"))
        },
    );
    let log = rig.lb.log();
    assert!(
        !log.contains("Too many open files"),
        "the caps kept the controller within its limit:\n{log}"
    );
    assert!(
        log.contains("closed") && log.contains("to make room"),
        "the controller says it closed connections for room:\n{log}"
    );
    rig.lb.stop().unwrap();
}

#[test]
fn a_thousand_held_admin_connections_delay_no_command() {
    lb_testing::needs_root!();
    allow_many_open_files();
    let mut rig = Rig::new(lb_exe().as_ref(), 2, &[]).unwrap();
    rig.lb.stop().unwrap();
    rig.start_lb_limited(&[], NOFILE).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let socket = rig.lb.state_file().with_extension("sock");
    // Each starts a request and stops, as a stuck or hostile client would.
    let held: Vec<std::os::unix::net::UnixStream> = (0..1000)
        .map(|_| {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            stream.write_all(b"{\"cmd\":").unwrap();
            stream
        })
        .collect();
    let answers = rig.spread(IpAddr::V4(VIP4), 20).unwrap();
    assert_eq!(answers.values().sum::<usize>(), 20, "{answers:?}");
    for _ in 0..3 {
        let started = Instant::now();
        let output = rig.lb.cli(&["status"]).unwrap();
        let took = started.elapsed();
        assert!(
            output.status.success() && took < Duration::from_secs(1),
            "lb status under 1,000 held connections took {took:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        println!("lb status under 1,000 held connections took {took:?}");
    }
    rig.lb
        .cli_ok(&["backend", "drain", VIP, &rig.workers[0].ipv4.to_string()])
        .unwrap();
    drop(held);
    rig.lb.cli_ok(&["backend", "list"]).unwrap();
    let log = rig.lb.log();
    assert!(
        !log.contains("Too many open files"),
        "the cap kept the controller within its limit:\n{log}"
    );
    rig.lb.stop().unwrap();
}

/// `lb run` stopped with SIGSTOP, continued (SIGCONT) when dropped, so
/// that a failing test leaves no stopped process behind.
struct Stopped<'a>(&'a LbProcess);

impl<'a> Stopped<'a> {
    fn new(lb: &'a LbProcess) -> Self {
        lb.signal(libc::SIGSTOP).unwrap();
        Self(lb)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal(libc::SIGCONT);
    }
}

/// `worker`'s state in `lb backend list`.
fn worker_state(rig: &Rig, worker: &str) -> String {
    let rows: serde_json::Value =
        serde_json::from_str(&rig.lb.cli_ok(&["backend", "list", "-o", "json"]).unwrap()).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|row| row["worker"] == worker)
        .and_then(|row| row["state"].as_str())
        .unwrap_or_else(|| panic!("no {worker} in {rows}"))
        .to_owned()
}

#[test]
fn a_change_whose_client_stopped_waiting_is_not_made_later() {
    lb_testing::needs_root!();
    let rig = Rig::new(lb_exe().as_ref(), 2, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let w1 = rig.workers[0].ipv4.to_string();
    let stopped = Stopped::new(&rig.lb);
    let started = Instant::now();
    let output = rig.lb.cli(&["backend", "drain", VIP, &w1]).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    println!(
        "lb backend drain gave up after {:?}: {stderr}",
        started.elapsed()
    );
    assert!(!output.status.success(), "{stderr}");
    // The controller takes the request only now, past its deadline.
    drop(stopped);
    wait_until(
        Duration::from_secs(20),
        "the controller taking the late request",
        || worker_state(&rig, &w1) == "draining" || rig.lb.log().contains("after its deadline"),
    );
    assert_eq!(
        worker_state(&rig, &w1),
        "up",
        "the drain was made after its client had stopped waiting:\n{}",
        rig.lb.log()
    );
    assert!(
        stderr.contains("did not answer")
            && stderr.contains("either made by then or will not be")
            && stderr.contains("`lb backend list`"),
        "the error says whether the drain may still be made: {stderr}"
    );
    // A client that waits is served as before.
    rig.lb.cli_ok(&["backend", "drain", VIP, &w1]).unwrap();
    assert_eq!(worker_state(&rig, &w1), "draining");
}

#[test]
fn a_change_saved_as_the_controller_stops_is_not_reported_as_failed() {
    lb_testing::needs_root!();
    let rig = Rig::new(lb_exe().as_ref(), 1, &[]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    // No host answers for this worker: the answer to adding it waits
    // half a second for its MAC, after the change is saved.
    let absent = "192.0.2.99";
    let mut cli = std::process::Command::new(lb_exe())
        .args(["backend", "add", VIP, absent, "--socket"])
        .arg(&rig.lb.paths().socket)
        .arg("--pin-dir")
        .arg(rig.lb.pin_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let state_file = rig.lb.state_file();
    wait_until(Duration::from_secs(10), "the new worker saved", || {
        std::fs::read_to_string(&state_file).is_ok_and(|state| state.contains(absent))
    });
    rig.lb.signal(libc::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cli.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "lb backend add still waits");
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = cli.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    println!(
        "lb backend add as the controller stopped: {} {stderr}",
        output.status
    );
    // Its answer, or, should the process end before it is written, word
    // that the change may have been made: never a failure.
    assert!(
        output.status.success() || stderr.contains("it may have made and saved the change"),
        "the saved change was reported as failed: {stderr}"
    );
}

/// Sends `count` SYNs from random 203.0.113.0/24 addresses and ports to
/// the VIP, as raw frames from `host`'s eth0 to `lb_mac`.
fn syn_flood(host: &Host, lb_mac: [u8; 6], count: u32) -> std::thread::JoinHandle<u32> {
    let netns = host.netns_path();
    std::thread::spawn(move || {
        enter_netns(&netns).unwrap();
        // SAFETY: plain socket calls on a descriptor we own.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor nothing else owns.
        let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = index as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&lb_mac);
        let mut random = 0x2545_f491_4f6c_dd1du64;
        let mut sent = 0;
        let started = Instant::now();
        for _ in 0..count {
            if started.elapsed() > Duration::from_secs(30) {
                break;
            }
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let src = IpAddr::V4(Ipv4Addr::new(203, 0, 113, random as u8));
            let sport = (random >> 8) as u16 | 1024;
            let mut packet = Packet::tcp(src, sport, IpAddr::V4(VIP4), 80, tcp::SYN);
            packet.dst_mac = lb_mac;
            let frame = packet.build();
            // SAFETY: frame and address outlive the call.
            let n = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const address).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n > 0 {
                sent += 1;
            }
        }
        sent
    })
}

#[test]
fn established_connections_survive_a_flood_of_new_flows_that_churns_the_table() {
    lb_testing::needs_root!();
    let rig = Rig::new(lb_exe().as_ref(), 3, &["--max-flows", "4096"]).unwrap();
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    let mut conns: Vec<(KeepAlive, String)> = (0..30)
        .map(|_| {
            let mut conn = KeepAlive::open(&rig.client, target).unwrap();
            let worker = conn.get().unwrap();
            (conn, worker)
        })
        .collect();
    let link: serde_json::Value = serde_json::from_str(
        &rig.balancer
            .run("ip", &["-j", "link", "show", "eth0"])
            .unwrap(),
    )
    .unwrap();
    let lb_mac =
        lb_userspace::kernel::neighbour::parse_mac(link[0]["address"].as_str().unwrap()).unwrap();
    let flood = syn_flood(&rig.client, lb_mac, 100_000);
    let mut failures = 0;
    while !flood.is_finished() {
        for (stream, worker) in &mut conns {
            if stream.get().ok().as_ref() != Some(worker) {
                failures += 1;
            }
        }
    }
    let sent = flood.join().unwrap();
    for (stream, worker) in &mut conns {
        assert_eq!(&stream.get().unwrap(), worker, "after the flood");
    }
    assert_eq!(failures, 0, "established requests failed during the flood");
    let stats = rig.lb.stats().unwrap();
    println!("{sent} SYNs sent; {} packets forwarded", stats.forwarded);
    assert!(sent >= 50_000, "only {sent} SYNs sent");
    let flows: serde_json::Value =
        serde_json::from_str(&rig.lb.cli_ok(&["flows", "-o", "json"]).unwrap()).unwrap();
    assert!(
        flows.as_array().unwrap().len() <= 4096,
        "the flow table stays within its capacity"
    );
}
