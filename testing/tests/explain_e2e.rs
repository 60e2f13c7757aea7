//! `lb explain` against the real data plane: it names a worker for a
//! client port, then a real connection from that port must be answered
//! by that worker (Maglev over TCP, UDP and IPv6, least-load, sticky and
//! pinned clients, a drained worker's established flow); bad input gets a
//! one-line error. Needs root (CI is root).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use lb_testing::{
    lb_exe,
    rig::{KeepAlive, Rig, TIMEOUT, UDP_PORT, VIP4, VIP6},
    testbed::{Host, LbProcess},
    wait::wait_until,
};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

const VIP: &str = "192.0.2.100:80/tcp";
const SETTLE: Duration = Duration::from_secs(10);

fn rig(workers: u8) -> Rig {
    Rig::new(lb_exe().as_ref(), workers, &[]).unwrap()
}

/// `lb explain VIP CLIENT -o json`.
fn explain(lb: &LbProcess, vip: &str, client: &str) -> Value {
    explain_with(lb, &[vip, client])
}

/// `lb explain ARGS -o json`.
fn explain_with(lb: &LbProcess, args: &[&str]) -> Value {
    let mut all = vec!["explain", "-o", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&lb.cli_ok(&all).unwrap()).unwrap()
}

/// The role (`w1`, …) of the worker at `addr`.
fn role_of(rig: &Rig, addr: &str) -> String {
    let worker = rig
        .workers
        .iter()
        .find(|w| w.ipv4.to_string() == addr || w.ipv6.to_string() == addr)
        .unwrap_or_else(|| panic!("no worker has address {addr}"));
    worker.role.clone()
}

/// The worker the verdict forwards to, as its role.
fn verdict_role(rig: &Rig, explanation: &Value) -> String {
    let verdict = &explanation["verdict"];
    assert_eq!(verdict["action"], "forward", "{explanation:#}");
    role_of(rig, verdict["worker"].as_str().unwrap())
}

/// Waits until every worker of the VIP takes new flows and has its MAC.
fn wait_ready(lb: &LbProcess, vip: &str, client: &str, workers: usize) {
    wait_until(SETTLE, "workers ready", || {
        let e = explain(lb, vip, client);
        let rows = e["workers"].as_array().unwrap();
        rows.len() == workers
            && rows
                .iter()
                .all(|w| w["takes_new_flows"] == true && w["mac_known"] == true)
    });
}

/// The client's address of `vip`'s family.
fn source(client: &Host, vip: IpAddr) -> IpAddr {
    match vip {
        IpAddr::V4(_) => client.ipv4.into(),
        IpAddr::V6(_) => client.ipv6.into(),
    }
}

/// A socket of `kind` in the client's namespace, bound to `port`.
fn bound(client: &Host, vip: IpAddr, port: u16, kind: Type) -> Socket {
    let from = SocketAddr::new(source(client, vip), port);
    client
        .within(move || {
            let socket = Socket::new(Domain::for_address(from), kind, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&from.into())?;
            Ok::<_, std::io::Error>(socket)
        })
        .unwrap()
        .unwrap()
}

/// A keep-alive HTTP connection to `vip`:80 from the client's `port`.
fn connect_from(client: &Host, vip: IpAddr, port: u16) -> KeepAlive {
    let socket = bound(client, vip, port, Type::STREAM);
    socket
        .connect_timeout(&SocketAddr::new(vip, 80).into(), TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting from port {port}: {e}"));
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    KeepAlive::from_stream(stream)
}

/// One HTTP/1.0 request from the client's `port`: the worker's name.
fn get_from(client: &Host, vip: IpAddr, port: u16) -> String {
    let socket = bound(client, vip, port, Type::STREAM);
    socket
        .connect_timeout(&SocketAddr::new(vip, 80).into(), TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting from port {port}: {e}"));
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: lb-test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    body.trim_end().to_owned()
}

/// One datagram to the VIP's UDP port from the client's `port`: the
/// worker's name.
fn ask_udp_from(client: &Host, port: u16) -> String {
    let socket: UdpSocket = bound(client, VIP4.into(), port, Type::DGRAM).into();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let target = SocketAddr::new(VIP4.into(), UDP_PORT);
    socket.send_to(b"who", target).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Explains a new connection from each of `ports`, makes it, and checks
/// that the worker named answered; then explains the recorded flow.
fn check_tcp_ports(rig: &Rig, vip: &str, vip_addr: IpAddr, ports: &[u16]) -> Vec<String> {
    let client = source(&rig.client, vip_addr);
    ports
        .iter()
        .map(|&port| {
            let from = SocketAddr::new(client, port).to_string();
            let before = explain(&rig.lb, vip, &from);
            assert!(before["flow"].is_null(), "{before:#}");
            let named = verdict_role(rig, &before);
            let mut connection = connect_from(&rig.client, vip_addr, port);
            assert_eq!(connection.get().unwrap(), named, "port {port}: {before:#}");
            let after = explain(&rig.lb, vip, &from);
            assert_eq!(after["flow"]["followed"], true, "{after:#}");
            assert_eq!(after["verdict"]["reason"], "established flow");
            assert_eq!(verdict_role(rig, &after), named);
            assert_eq!(after["syn"]["worker"], before["verdict"]["worker"]);
            named
        })
        .collect()
}

#[test]
fn maglev_names_the_worker_that_answers_over_tcp_udp_and_ipv6() {
    lb_testing::needs_root!();
    let rig = rig(3);
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    wait_ready(&rig.lb, VIP, "192.0.2.1", 3);

    let any_port = explain(&rig.lb, VIP, "192.0.2.1");
    assert_eq!(any_port["verdict"]["action"], "depends-on-port");
    assert_eq!(any_port["schedule"]["depends_on_port"], true);
    let slots: u64 = any_port["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["slots"].as_u64().unwrap())
        .sum();
    assert_eq!(slots, any_port["settings"]["table_size"].as_u64().unwrap());

    let ports: Vec<u16> = (40001..40013).collect();
    let named = check_tcp_ports(&rig, VIP, VIP4.into(), &ports);
    let text = rig.lb.cli_ok(&["explain", VIP, "192.0.2.1:40001"]).unwrap();
    let first = rig.workers.iter().find(|w| w.role == named[0]).unwrap();
    let verdict = format!("verdict   {}: established flow", first.ipv4);
    assert!(text.contains(&verdict), "{text}");
    let distinct: std::collections::BTreeSet<_> = named.iter().collect();
    assert!(distinct.len() > 1, "every port on one worker: {named:?}");

    let udp = "192.0.2.100:5353/udp";
    rig.add_vip_with_workers(udp, &[]).unwrap();
    wait_ready(&rig.lb, udp, "192.0.2.1", 3);
    for port in 41001..41007 {
        let from = format!("192.0.2.1:{port}");
        // The VIP without /udp, and --proto: the other way to name it.
        let before = explain_with(&rig.lb, &["192.0.2.100:5353", &from, "--proto", "udp"]);
        let named = verdict_role(&rig, &before);
        assert_eq!(ask_udp_from(&rig.client, port), named, "{before:#}");
        let after = explain(&rig.lb, udp, &from);
        assert_eq!(after["verdict"]["reason"], "established flow", "{after:#}");
        assert_eq!(verdict_role(&rig, &after), named);
        assert!(after["syn"].is_null(), "UDP has no SYN: {after:#}");
    }

    let v6 = "[2001:db8::100]:80/tcp";
    rig.add_vip_with_workers(v6, &[]).unwrap();
    wait_ready(&rig.lb, v6, "2001:db8::1", 3);
    check_tcp_ports(&rig, v6, VIP6.into(), &[42001, 42002, 42003, 42004]);
}

#[test]
fn least_load_names_the_less_loaded_of_its_two_candidates() {
    lb_testing::needs_root!();
    let rig = rig(3);
    rig.add_vip_with_workers(VIP, &["--scheduler", "least-load", "--load-ttl", "1h"])
        .unwrap();
    wait_ready(&rig.lb, VIP, "192.0.2.1", 3);
    let loads = ["0.9", "0.5", "0.1"];
    for (worker, load) in rig.workers.iter().zip(loads) {
        let addr = worker.ipv4.to_string();
        rig.lb
            .cli_ok(&["backend", "set", VIP, &addr, "--load", load])
            .unwrap();
    }
    wait_until(SETTLE, "loads in the data plane", || {
        explain(&rig.lb, VIP, "192.0.2.1")["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["load"].is_f64())
    });

    // Ports whose two candidates differ: the less loaded one must answer,
    // whichever of the two it is.
    let mut seconds = 0;
    let mut checked = 0;
    for port in 43001..43100u16 {
        let from = format!("192.0.2.1:{port}");
        let e = explain(&rig.lb, VIP, &from);
        let (first, second) = (&e["schedule"]["first"], &e["schedule"]["second"]);
        if first["worker"] == second["worker"] {
            continue;
        }
        let lower = if second["load"].as_f64() < first["load"].as_f64() {
            seconds += 1;
            second
        } else {
            first
        };
        assert_eq!(e["verdict"]["worker"], lower["worker"], "{e:#}");
        let reason = e["verdict"]["reason"].as_str().unwrap();
        assert!(reason.starts_with("least-load: lower load of"), "{e:#}");
        let named = verdict_role(&rig, &e);
        assert_eq!(get_from(&rig.client, VIP4.into(), port), named, "{e:#}");
        checked += 1;
        if checked >= 8 && seconds > 0 {
            break;
        }
    }
    assert!(
        checked >= 8 && seconds > 0,
        "{checked} ports, {seconds} second choices"
    );
}

#[test]
fn sticky_sessions_and_pins_decide_before_the_port() {
    lb_testing::needs_root!();
    let rig = rig(3);
    rig.add_vip_with_workers(VIP, &["--sticky", "10m"]).unwrap();
    wait_ready(&rig.lb, VIP, "192.0.2.1", 3);
    let fresh = explain(&rig.lb, VIP, "192.0.2.1");
    assert!(fresh["session"].is_null(), "{fresh:#}");
    assert_eq!(fresh["verdict"]["action"], "depends-on-port");

    let first = get_from(&rig.client, VIP4.into(), 44001);
    let sticky = explain(&rig.lb, VIP, "192.0.2.1");
    assert_eq!(sticky["session"]["applies"], true, "{sticky:#}");
    assert_eq!(sticky["verdict"]["reason"], "sticky session");
    assert_eq!(verdict_role(&rig, &sticky), first);
    for port in [44002, 44003, 44004] {
        assert_eq!(get_from(&rig.client, VIP4.into(), port), first);
    }

    let other = rig.workers.iter().find(|w| w.role != first).unwrap();
    let addr = other.ipv4.to_string();
    rig.lb
        .cli_ok(&["sessions", "pin", VIP, "192.0.2.1", &addr])
        .unwrap();
    wait_until(SETTLE, "the pin in the data plane", || {
        explain(&rig.lb, VIP, "192.0.2.1")["verdict"]["reason"] == "pinned"
    });
    let pinned = explain(&rig.lb, VIP, "192.0.2.1:44005");
    assert_eq!(pinned["pin"]["applies"], true, "{pinned:#}");
    assert_eq!(pinned["session"]["why_not"], "the pin comes first");
    assert_eq!(verdict_role(&rig, &pinned), other.role);
    assert_eq!(get_from(&rig.client, VIP4.into(), 44005), other.role);
}

#[test]
fn a_drained_workers_established_flow_stays_while_a_syn_goes_elsewhere() {
    lb_testing::needs_root!();
    let rig = rig(3);
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    wait_ready(&rig.lb, VIP, "192.0.2.1", 3);
    let mut connection = connect_from(&rig.client, VIP4.into(), 45001);
    let holder = connection.get().unwrap();
    let worker = rig.workers.iter().find(|w| w.role == holder).unwrap();
    let addr = worker.ipv4.to_string();
    rig.lb.cli_ok(&["backend", "drain", VIP, &addr]).unwrap();

    let drained =
        |e: &Value| {
            e["workers"].as_array().unwrap().iter().any(|w| {
                w["worker"] == addr.as_str() && w["state"] == "draining" && w["slots"] == 0
            })
        };
    wait_until(SETTLE, "the worker drained", || {
        drained(&explain(&rig.lb, VIP, "192.0.2.1"))
    });
    let e = explain(&rig.lb, VIP, "192.0.2.1:45001");
    assert_eq!(e["verdict"]["reason"], "established flow", "{e:#}");
    assert_eq!(e["verdict"]["worker"], addr.as_str());
    assert_ne!(e["syn"]["worker"], addr.as_str(), "{e:#}");
    assert_eq!(connection.get().unwrap(), holder);
}

#[test]
fn bad_input_gets_a_one_line_error() {
    lb_testing::needs_root!();
    let rig = rig(1);
    rig.add_vip_with_workers(VIP, &[]).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["192.0.2.100:81/tcp", "192.0.2.1"],
            "no VIP 192.0.2.100:81/tcp",
        ),
        (&[VIP, "2001:db8::1"], "is IPv6, but VIP"),
        (&[VIP, "192.0.2.300"], "is not a client ADDRESS"),
        (&[VIP, "192.0.2.1:70000"], "is not a client ADDRESS"),
        (&[VIP, "192.0.2.1:0"], "port 0"),
        (&["192.0.2.100/tcp", "192.0.2.1"], "is not ADDRESS:PORT"),
        (&[VIP, "192.0.2.1", "--proto", "udp"], "--proto says udp"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["explain"];
        all.extend_from_slice(args);
        let output = rig.lb.cli(&all).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("lb: error: "), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
