//! `lb capture` on a real rig: what it records is what lb sent (read back
//! by the real tcpdump and by a pcapng reader), counted like `lb stats`
//! counts it; a capture that can't keep up loses records, says so, and
//! leaves forwarding alone; bad requests get one-line errors. Needs root.

use std::{
    io::Read as _,
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use lb_common::{capture::CaptureFilter, map_names};
use lb_testing::{
    lb_exe,
    rig::{metric, Rig, METRICS_ADDR, UDP_PORT, VIP4, VIP6},
    temp::TempFile,
    testbed::{Host, HOST_IFACE},
    wait::wait_until,
};
use pcap_file::pcapng::{
    blocks::{
        enhanced_packet::EnhancedPacketOption, interface_description::InterfaceDescriptionOption,
    },
    Block, PcapNgReader,
};

const VIP: &str = "192.0.2.100:5353/udp";
/// A VIP without workers: lb drops its packets.
const EMPTY_VIP: &str = "192.0.2.100:5354/udp";
const BALANCER_PORT: u16 = 5399;

fn rig() -> Rig {
    let rig = Rig::new(Path::new(lb_exe()), 2, &["--metrics", METRICS_ADDR]).unwrap();
    rig.add_vip_with_workers(VIP, &["--health", "none"])
        .unwrap();
    rig.lb.cli_ok(&["vip", "add", EMPTY_VIP]).unwrap();
    rig
}

/// `lb capture ARGS` on the rig's instance, its stdout and stderr piped.
fn start_capture(rig: &Rig, args: &[&str]) -> Child {
    start_capture_with(Command::new(lb_exe()), rig, args)
}

/// As [`start_capture`], `lb` run by `lb_command` (in a namespace, say).
fn start_capture_with(mut lb_command: Command, rig: &Rig, args: &[&str]) -> Child {
    let mut child = lb_command
        .arg("capture")
        .args(args)
        .arg("--pin-dir")
        .arg(rig.lb.pin_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line on stderr says it captures.
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8];
    while !seen.ends_with(b"\n") {
        assert_eq!(stderr.read(&mut byte).unwrap(), 1, "lb capture ended");
        seen.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&seen);
    assert!(line.contains("capturing"), "{line}");
    child.stderr = Some(stderr);
    child
}

/// Stops a capture as Ctrl-C would; its stdout (read to the end) and the
/// rest of its stderr.
fn stop_capture(mut child: Child) -> (Vec<u8>, String) {
    // SAFETY: signalling a child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "lb capture failed: {stderr}");
    (stdout, stderr)
}

/// Sends `count` datagrams of `size` bytes from one client port to
/// `target`, in batches, each batch waiting until lb has seen it (the
/// veth backlog drops bursts it cannot queue). Returns the socket: while
/// it is open, the workers' answers don't make the client send "port
/// unreachable" errors, which lb would forward (and a capture see).
fn send(rig: &Rig, target: SocketAddr, count: u64, size: usize) -> UdpSocket {
    let source = match target {
        SocketAddr::V4(_) => SocketAddr::new(rig.client.ipv4.into(), 0),
        SocketAddr::V6(_) => SocketAddr::new(rig.client.ipv6.into(), 0),
    };
    let socket = rig
        .client
        .within(move || UdpSocket::bind(source).unwrap())
        .unwrap();
    let payload = vec![b'x'; size];
    let start = rig.lb.stats().unwrap().packets;
    let mut sent = 0;
    while sent < count {
        let batch = (count - sent).min(200);
        for _ in 0..batch {
            socket.send_to(&payload, target).unwrap();
        }
        sent += batch;
        wait_until(Duration::from_secs(10), "lb saw the batch", || {
            rig.lb.stats().unwrap().packets - start >= sent
        });
    }
    socket
}

fn mac_of(host: &Host) -> String {
    let links = host.run("ip", &["-o", "link", "show"]).unwrap();
    links
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once("link/ether ")?;
            Some(rest.split_whitespace().next()?.to_owned())
        })
        .unwrap()
}

/// The comments of every packet in a pcapng file.
fn comments(pcapng: &[u8]) -> Vec<String> {
    let mut reader = PcapNgReader::new(pcapng).unwrap();
    let mut out = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(packet) = block.unwrap() {
            let comment = packet.options.iter().find_map(|option| match option {
                EnhancedPacketOption::Comment(text) => Some(text.to_string()),
                _ => None,
            });
            out.push(comment.unwrap_or_default());
        }
    }
    out
}

/// The names of the interfaces a pcapng file describes.
fn interface_names(pcapng: &[u8]) -> Vec<String> {
    let mut reader = PcapNgReader::new(pcapng).unwrap();
    let mut out = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::InterfaceDescription(interface) = block.unwrap() {
            out.extend(interface.options.iter().filter_map(|option| match option {
                InterfaceDescriptionOption::IfName(name) => Some(name.to_string()),
                _ => None,
            }));
        }
    }
    out
}

fn temp_file(name: &str) -> TempFile {
    TempFile::new(name)
}

#[test]
fn tcpdump_reads_exactly_the_packets_lb_forwarded_passed_and_dropped() {
    lb_testing::needs_root!();
    let rig = rig();
    let file = temp_file("capture.pcapng");
    let file_arg = file.to_str().unwrap();
    let capture = start_capture(&rig, &["--client", "192.0.2.1", "-w", file_arg]);
    let before = rig.lb.stats().unwrap();
    let _answered = send(&rig, SocketAddr::new(VIP4.into(), UDP_PORT), 30, 100);
    send(&rig, SocketAddr::new(VIP4.into(), 5354), 20, 100);
    let balancer = SocketAddr::new(rig.balancer.ipv4.into(), BALANCER_PORT);
    send(&rig, balancer, 10, 100);
    let after = rig.lb.stats().unwrap();
    let (_, stderr) = stop_capture(capture);
    assert!(stderr.contains("60 packets captured"), "{stderr}");
    assert_eq!(after.forwarded - before.forwarded, 30);
    assert_eq!(after.drop_no_backend - before.drop_no_backend, 20);
    assert!(after.pass_not_vip - before.pass_not_vip >= 10);

    // The real tcpdump reads the file: every packet, with the MAC
    // addresses lb wrote on the forwarded ones.
    let output = Command::new("tcpdump")
        .args(["-nn", "-e", "-r", file_arg])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 60, "{text}");
    let to = |port: u16, addr: &str| format!("> {addr}.{port}:");
    let forwarded: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(&to(UDP_PORT, "192.0.2.100")))
        .collect();
    assert_eq!(forwarded.len(), 30);
    let balancer_mac = mac_of(&rig.balancer);
    let worker_macs: Vec<String> = rig.workers.iter().map(mac_of).collect();
    let worker_mac = worker_macs
        .iter()
        .find(|mac| forwarded[0].contains(&format!("> {mac},")))
        .unwrap_or_else(|| panic!("not to a worker's MAC: {}", forwarded[0]));
    for line in &forwarded {
        assert!(
            line.contains(&format!("{balancer_mac} > {worker_mac},")),
            "{line}"
        );
    }
    let dropped = lines
        .iter()
        .filter(|l| l.contains(&to(5354, "192.0.2.100")));
    assert_eq!(dropped.count(), 20);
    let passed = lines
        .iter()
        .filter(|l| l.contains(&to(BALANCER_PORT, &rig.balancer.ipv4.to_string())));
    assert_eq!(passed.count(), 10);

    // lb's metadata rides in the packets' comments.
    let comments = comments(&std::fs::read(&file).unwrap());
    let count = |prefix: &str| comments.iter().filter(|c| c.starts_with(prefix)).count();
    assert_eq!(
        count("lb: forward new_flow vip 192.0.2.100:5353/udp worker "),
        1
    );
    assert_eq!(
        count("lb: forward flow_hits vip 192.0.2.100:5353/udp worker "),
        29
    );
    assert_eq!(
        count("lb: drop drop_no_backend vip 192.0.2.100:5354/udp cpu "),
        20
    );
    assert_eq!(count("lb: pass pass_not_vip cpu "), 10);
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn a_capture_run_in_another_namespace_names_the_balancers_interface() {
    lb_testing::needs_root!();
    let rig = rig();
    // The switch's namespace numbers its interfaces as the balancer's
    // does, and has no eth0: an interface index resolved there names
    // another interface, or none.
    let switch = rig.bed.switch();
    let links = switch.run("ip", &["-o", "link", "show"]).unwrap();
    assert!(!links.contains(" eth0"), "{links}");
    let file = temp_file("elsewhere.pcapng");
    let file_arg = file.to_str().unwrap();
    let args = ["--action", "forward", "-w", file_arg];
    let capture = start_capture_with(switch.command(lb_exe()), &rig, &args);
    let _answered = send(&rig, SocketAddr::new(VIP4.into(), UDP_PORT), 3, 100);
    let (_, stderr) = stop_capture(capture);
    assert!(stderr.contains("3 packets captured"), "{stderr}");
    let pcapng = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(comments(&pcapng).len(), 3);
    assert_eq!(interface_names(&pcapng), [HOST_IFACE]);
}

#[test]
fn lines_filters_and_counts_name_the_worker_and_stop_by_themselves() {
    lb_testing::needs_root!();
    let rig = rig();
    let worker = rig.workers[0].ipv4.to_string();
    // Only forwarded packets to worker w1, printed as lines, two of them.
    let capture = start_capture(
        &rig,
        &[
            "--vip", VIP, "--worker", &worker, "--action", "forward", "-c", "2",
        ],
    );
    // New source ports until two packets went to w1.
    let mut child = capture;
    let mut sockets = Vec::new();
    for _ in 0..64 {
        sockets.push(send(&rig, SocketAddr::new(VIP4.into(), UDP_PORT), 1, 10));
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
    }
    wait_until(Duration::from_secs(10), "the capture ended", || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for line in lines {
        assert!(
            line.contains(&format!(
                "lb: forward new_flow vip {VIP} worker {worker} cpu "
            )),
            "{line}"
        );
        assert!(line.contains(": udp, length "), "{line}");
    }
    assert!(child.wait().unwrap().success());

    // A duration ends a capture that sees nothing.
    let output = Command::new(lb_exe())
        .args(["capture", "--client", "203.0.113.9", "--duration", "300ms"])
        .arg("--pin-dir")
        .arg(rig.lb.pin_dir())
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("0 packets captured"));
}

#[test]
fn a_capture_that_cannot_keep_up_loses_records_not_packets() {
    lb_testing::needs_root!();
    let rig = rig();
    let target = SocketAddr::new(VIP4.into(), UDP_PORT);
    // Enough full-size records to overflow the 4 MiB ring buffer while the
    // capture is stuck writing to a pipe nobody reads yet.
    let count = 6_000;
    let before = rig.lb.stats().unwrap();
    let _first = send(&rig, target, count, 1400);
    let uncaptured = rig.lb.stats().unwrap().forwarded - before.forwarded;
    assert_eq!(uncaptured, count);

    let capture = start_capture(&rig, &["-w", "-"]);
    let before = rig.lb.stats().unwrap();
    let _second = send(&rig, target, count, 1400);
    let captured_run = rig.lb.stats().unwrap().forwarded - before.forwarded;
    // Forwarding is what it was without a capture.
    assert_eq!(captured_run, uncaptured);
    let (pcapng, stderr) = stop_capture(capture);
    let lost: u64 = stderr
        .split(", ")
        .find(|part| part.contains(" lost:"))
        .and_then(|part| part.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no loss reported: {stderr}"));
    assert!(lost > 0, "{stderr}");
    let written = comments(&pcapng).len() as u64;
    assert!(written > 0);
    assert!(written + lost >= count, "{written} + {lost} of {count}");
    // The metrics count what this capture, the rig's only one, counted.
    let scrape = rig.scrape_metrics().unwrap();
    assert_eq!(
        metric(&scrape, r#"lb_capture_packets_total{outcome="lost"}"#),
        lost as f64
    );
    assert!(metric(&scrape, r#"lb_capture_packets_total{outcome="captured"}"#) >= written as f64);
}

#[test]
fn bad_requests_get_one_line_errors() {
    lb_testing::needs_root!();
    let rig = rig();
    let run = |args: &[&str]| {
        let output = Command::new(lb_exe())
            .arg("capture")
            .args(args)
            .arg("--pin-dir")
            .arg(rig.lb.pin_dir())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    };
    assert!(run(&["--vip", "192.0.2.100:81/tcp"]).contains("no VIP 192.0.2.100:81/tcp"));
    assert!(run(&["--worker", "192.0.2.99"]).contains("192.0.2.99 is not a worker"));
    assert!(run(&["--vip", VIP, "--client", "2001:db8::1"]).contains("is IPv6 but VIP"));
    assert!(run(&["--client", "192.0.2.1/40"]).contains("--client"));
    assert!(run(&["-w", "/nonexistent/dir/x.pcapng"]).contains("cannot write"));
    // clap's own errors name the value and list the good ones.
    let bounce = run(&["--action", "bounce"]);
    assert!(
        bounce.contains("'bounce'") && bounce.contains("drop"),
        "{bounce}"
    );

    // Without privileges.
    let output = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(lb_exe())
        .args(["capture", "--pin-dir"])
        .arg(rig.lb.pin_dir())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");

    // One capture at a time; the data plane stops copying when it ends.
    let first = start_capture(&rig, &["--duration", "30s"]);
    assert!(run(&["--duration", "1s"]).contains("another `lb capture`"));
    // A refused capture leaves its file as it was.
    let kept = temp_file("kept.pcapng");
    std::fs::write(&kept, "earlier capture").unwrap();
    assert!(run(&["-w", kept.to_str().unwrap()]).contains("another `lb capture`"));
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "earlier capture");
    std::fs::remove_file(&kept).unwrap();
    stop_capture(first);
}

/// Whether the data plane is asked to capture, as its map, `lb status`
/// and the metrics say.
fn capturing(rig: &Rig) -> [bool; 3] {
    let map = aya::maps::MapData::from_pin(rig.lb.pin_dir().join(map_names::CAPTURE)).unwrap();
    let filter: aya::maps::Array<_, CaptureFilter> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map)).unwrap();
    let status = rig.lb.status_json().unwrap();
    let running = metric(&rig.scrape_metrics().unwrap(), "lb_capture_running");
    [
        filter.get(&0, 0).unwrap().enabled != 0,
        status["capture_running"].as_bool().unwrap(),
        running == 1.0,
    ]
}

#[test]
fn the_controller_turns_off_a_capture_whose_reader_was_killed() {
    lb_testing::needs_root!();
    let rig = rig();
    assert_eq!(capturing(&rig), [false; 3]);
    let mut capture = start_capture(&rig, &[]);
    assert_eq!(capturing(&rig), [true; 3]);
    capture.kill().unwrap();
    capture.wait().unwrap();
    wait_until(Duration::from_secs(10), "the capture turned off", || {
        capturing(&rig) == [false; 3]
    });
    // A capture that ends by itself turns the data plane's copying off.
    let capture = start_capture(&rig, &["--duration", "30s"]);
    assert_eq!(capturing(&rig), [true; 3]);
    stop_capture(capture);
    assert_eq!(capturing(&rig), [false; 3]);
}

#[test]
fn tunnelled_packets_and_lbs_own_answers_are_captured_as_they_left() {
    lb_testing::needs_root!();
    let rig = Rig::behind_router(Path::new(lb_exe()), 1, 6080, &[]).unwrap();
    let worker = &rig.workers[0];
    let ipip = "192.0.2.100:5353/udp";
    let gue = "[2001:db8::100]:5353/udp";
    for (vip, forward, addr) in [
        (ipip, "ipip", worker.ipv4.to_string()),
        (gue, "gue", worker.ipv6.to_string()),
    ] {
        let add = ["vip", "add", vip, "--forward", forward, "--health", "none"];
        rig.lb.cli_ok(&add).unwrap();
        rig.lb.cli_ok(&["backend", "add", vip, &addr]).unwrap();
    }
    let file = temp_file("tunnel.pcapng");
    let file_arg = file.to_str().unwrap();
    let capture = start_capture(&rig, &["--action", "forward,reply", "-w", file_arg]);
    let _ipip = send(&rig, SocketAddr::new(VIP4.into(), UDP_PORT), 3, 64);
    let _gue = send(&rig, SocketAddr::new(VIP6.into(), UDP_PORT), 3, 64);
    rig.client
        .run("ping", &["-c", "1", "-W", "5", &VIP4.to_string()])
        .unwrap();
    let (_, stderr) = stop_capture(capture);
    assert!(stderr.contains("7 packets captured"), "{stderr}");

    let output = Command::new("tcpdump")
        .args(["-nn", "-r", file_arg])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    // IPIP: lb's outer header to the worker, the client's packet inside.
    let outer = format!("IP {} > {}: ", rig.balancer.ipv4, worker.ipv4);
    let inner = format!("IP {}.", rig.client.ipv4);
    let to_vip = format!(" > {VIP4}.{UDP_PORT}: ");
    let encapsulated = text
        .lines()
        .filter(|l| l.contains(&format!("{outer}{inner}")) && l.contains(&to_vip));
    assert_eq!(encapsulated.count(), 3, "{text}");
    // GUE: outer IPv6 and UDP to the worker's GUE port.
    let gue_outer = format!("IP6 {}.", rig.balancer.ipv6);
    let to_port = format!(" > {}.6080: UDP", worker.ipv6);
    let gue_lines = text
        .lines()
        .filter(|l| l.contains(&gue_outer) && l.contains(&to_port));
    assert_eq!(gue_lines.count(), 3, "{text}");
    // The echo reply lb sent back.
    let reply = format!("IP {VIP4} > {}: ICMP echo reply", rig.client.ipv4);
    assert_eq!(
        text.lines().filter(|l| l.contains(&reply)).count(),
        1,
        "{text}"
    );

    let comments = comments(&std::fs::read(&file).unwrap());
    let count = |prefix: &str| comments.iter().filter(|c| c.starts_with(prefix)).count();
    let ipip_worker = format!("vip {ipip} worker {}", worker.ipv4);
    assert_eq!(count(&format!("lb: forward new_flow {ipip_worker}")), 1);
    assert_eq!(count(&format!("lb: forward flow_hits {ipip_worker}")), 2);
    let gue_worker = format!("vip {gue} worker {}", worker.ipv6);
    assert_eq!(count(&format!("lb: forward new_flow {gue_worker}")), 1);
    assert_eq!(count("lb: reply icmp_echo_replies cpu "), 1);
    std::fs::remove_file(&file).unwrap();
}
