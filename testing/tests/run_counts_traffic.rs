//! `lb run` on a veth in a network namespace, with real IPv4 and IPv6 TCP
//! and UDP traffic. Needs root (CI runs as root): it creates namespaces and
//! loads XDP programs.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use lb_testing::lb_exe;

use lb_common::counters::GlobalCounters;
use lb_testing::{
    testbed::{Host, LbProcess, Testbed},
    wait::wait_until,
};

const UDP_DATAGRAMS: u64 = 40;
const TCP_CONNECTIONS: usize = 10;
const PORT: u16 = 7000;

/// Kernel counters of the receiving namespace to compare lb's against.
#[derive(Debug, Clone, Copy)]
struct Kernel {
    tcp_in_segs: u64,
    udp4_in: u64,
    udp6_in: u64,
    rx_packets: u64,
}

fn snmp_value(text: &str, table: &str, field: &str) -> u64 {
    let mut rows = text.lines().filter(|l| l.starts_with(&format!("{table}:")));
    let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
    let index = names.split_whitespace().position(|n| n == field).unwrap();
    values
        .split_whitespace()
        .nth(index)
        .unwrap()
        .parse()
        .unwrap()
}

fn snmp6_value(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn kernel(host: &Host) -> Kernel {
    let snmp = host.proc_net("snmp").unwrap();
    let snmp6 = host.proc_net("snmp6").unwrap();
    Kernel {
        tcp_in_segs: snmp_value(&snmp, "Tcp", "InSegs"),
        udp4_in: snmp_value(&snmp, "Udp", "InDatagrams"),
        udp6_in: snmp6_value(&snmp6, "Udp6InDatagrams"),
        rx_packets: host.iface_stat("rx", "packets").unwrap(),
    }
}

fn delta(after: &GlobalCounters, before: &GlobalCounters) -> GlobalCounters {
    let mut values = after.values();
    for (v, b) in values.iter_mut().zip(before.values()) {
        *v -= b;
    }
    GlobalCounters::from_values(values)
}

/// lb's and the kernel's counters once the traffic sent so far has
/// arrived ([`drain`] read every datagram; every connection closed), at one
/// quiet moment: read again until no frame (a stray neighbour or multicast
/// report) arrived between the reads.
fn snapshot(lb: &LbProcess, host: &Host) -> (GlobalCounters, Kernel) {
    wait_until(Duration::from_secs(10), "every connection closed", || {
        let open = open_connections(host);
        if open == 0 {
            Ok(())
        } else {
            Err(format!("{open} open"))
        }
    });
    wait_until(
        Duration::from_secs(10),
        "eth0 quiet between two reads",
        || {
            let before = host.iface_stat("rx", "packets").unwrap();
            let counters = lb.stats().unwrap();
            let kernel = kernel(host);
            (kernel.rx_packets == before).then_some((counters, kernel))
        },
    )
}

/// The test's connections on `host` not yet closed: sockets on [`PORT`]
/// in any state but listening (0A). The server closes after the client,
/// so its socket goes once the client's last ACK has arrived.
fn open_connections(host: &Host) -> usize {
    let port = format!(":{PORT:04X}");
    ["tcp", "tcp6"]
        .into_iter()
        .map(|file| {
            host.proc_net(file)
                .unwrap()
                .lines()
                .skip(1)
                .map(|line| line.split_whitespace().collect::<Vec<_>>())
                .filter(|fields| fields[1].ends_with(&port) && fields[3] != "0A")
                .count()
        })
        .sum()
}

fn send_udp(client: &Host, to: IpAddr) {
    client
        .within(move || {
            let bind: SocketAddr = match to {
                IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
                IpAddr::V6(_) => "[::]:0".parse().unwrap(),
            };
            let socket = UdpSocket::bind(bind).unwrap();
            for i in 0..UDP_DATAGRAMS {
                socket.send_to(&i.to_be_bytes(), (to, PORT)).unwrap();
            }
        })
        .unwrap();
}

fn tcp_round_trips(client: &Host, to: IpAddr) {
    client
        .within(move || {
            for _ in 0..TCP_CONNECTIONS {
                let mut stream =
                    TcpStream::connect_timeout(&SocketAddr::new(to, PORT), Duration::from_secs(5))
                        .unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                stream.write_all(b"ping").unwrap();
                stream.shutdown(std::net::Shutdown::Write).unwrap();
                let mut answer = String::new();
                stream.read_to_string(&mut answer).unwrap();
                assert_eq!(answer, "pong");
            }
        })
        .unwrap();
}

/// Runs TCP servers on `host` for both families and returns bound UDP
/// sockets (IPv4, IPv6) whose datagrams [`drain`] counts.
fn start_servers(host: &Host) -> [UdpSocket; 2] {
    [IpAddr::V4(host.ipv4), IpAddr::V6(host.ipv6)].map(|addr| {
        let (tcp, udp) = host
            .within(move || {
                (
                    TcpListener::bind((addr, PORT)).unwrap(),
                    UdpSocket::bind((addr, PORT)).unwrap(),
                )
            })
            .unwrap();
        std::thread::spawn(move || {
            for stream in tcp.incoming() {
                let mut stream = stream.unwrap();
                let mut request = Vec::new();
                stream.read_to_end(&mut request).unwrap();
                stream.write_all(b"pong").unwrap();
            }
        });
        udp
    })
}

/// Reads the datagrams that reach `socket` until [`UDP_DATAGRAMS`] have
/// (the kernel counts a datagram in InDatagrams only once it is read), and
/// returns how many it read.
fn drain(socket: &UdpSocket) -> u64 {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let mut read = 0;
    wait_until(Duration::from_secs(10), "every datagram read", || {
        read += std::iter::from_fn(|| socket.recv_from(&mut buf).ok()).count() as u64;
        if read >= UDP_DATAGRAMS {
            Ok(Some(read))
        } else {
            Err(format!("{read} of {UDP_DATAGRAMS}"))
        }
    })
}

#[test]
fn counts_ipv4_ipv6_tcp_udp_and_passes_everything() {
    lb_testing::needs_root!();
    let mut bed = Testbed::new().unwrap();
    let client = bed
        .add_host(
            "client",
            Ipv4Addr::new(192, 0, 2, 1),
            "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
        )
        .unwrap();
    let target = bed
        .add_host(
            "lb",
            Ipv4Addr::new(192, 0, 2, 2),
            "2001:db8::2".parse().unwrap(),
        )
        .unwrap();
    let mut lb = LbProcess::start(
        lb_exe().as_ref(),
        &mut bed,
        &target,
        "counts",
        &["--detach-on-exit"],
    )
    .unwrap();
    let pin_dir = lb.pin_dir().to_owned();
    assert!(
        lb.attached_line.contains("in native mode"),
        "{}",
        lb.attached_line
    );
    let [udp4_socket, udp6_socket] = start_servers(&target);

    let (lb0, k0) = snapshot(&lb, &target);
    send_udp(&client, IpAddr::V4(target.ipv4));
    let udp4_delivered = drain(&udp4_socket);
    let (lb1, k1) = snapshot(&lb, &target);
    tcp_round_trips(&client, IpAddr::V4(target.ipv4));
    let (lb2, k2) = snapshot(&lb, &target);
    send_udp(&client, IpAddr::V6(target.ipv6));
    let udp6_delivered = drain(&udp6_socket);
    let (lb3, k3) = snapshot(&lb, &target);
    tcp_round_trips(&client, IpAddr::V6(target.ipv6));
    let (lb4, k4) = snapshot(&lb, &target);

    let udp4 = delta(&lb1, &lb0);
    assert_eq!(udp4.ipv4_udp, UDP_DATAGRAMS, "{udp4:?}");
    assert_eq!(
        k1.udp4_in - k0.udp4_in,
        UDP_DATAGRAMS,
        "the kernel got every IPv4 datagram"
    );
    assert_eq!(
        udp4_delivered, UDP_DATAGRAMS,
        "XDP_PASS delivered every IPv4 datagram"
    );

    let tcp4 = delta(&lb2, &lb1);
    assert_eq!(tcp4.ipv4_tcp, k2.tcp_in_segs - k1.tcp_in_segs, "{tcp4:?}");
    assert!(tcp4.ipv4_tcp >= 3 * TCP_CONNECTIONS as u64, "{tcp4:?}");
    assert_eq!((tcp4.ipv6_tcp, tcp4.ipv4_udp), (0, 0), "{tcp4:?}");

    let udp6 = delta(&lb3, &lb2);
    assert_eq!(udp6.ipv6_udp, UDP_DATAGRAMS, "{udp6:?}");
    assert_eq!(
        k3.udp6_in - k2.udp6_in,
        UDP_DATAGRAMS,
        "the kernel got every IPv6 datagram"
    );
    assert_eq!(
        udp6_delivered, UDP_DATAGRAMS,
        "XDP_PASS delivered every IPv6 datagram"
    );

    let tcp6 = delta(&lb4, &lb3);
    assert_eq!(tcp6.ipv6_tcp, k4.tcp_in_segs - k3.tcp_in_segs, "{tcp6:?}");
    assert!(tcp6.ipv6_tcp >= 3 * TCP_CONNECTIONS as u64, "{tcp6:?}");
    assert_eq!(tcp6.ipv4_tcp, 0, "{tcp6:?}");

    let all = delta(&lb4, &lb0);
    assert_eq!(
        all.packets,
        k4.rx_packets - k0.rx_packets,
        "lb saw every frame eth0 received: {all:?}"
    );
    assert_eq!(all.malformed, 0);
    assert_eq!(
        all.class_total(),
        all.packets,
        "each frame is in exactly one class: {all:?}"
    );
    assert_eq!(
        all.pass_not_vip, all.packets,
        "no VIPs: everything passes: {all:?}"
    );

    let after_stop = lb.stop().unwrap();
    assert!(after_stop.contains("detached from eth0"), "{after_stop}");
    assert!(
        !pin_dir.exists(),
        "lb run removes its pins when it detaches"
    );
}
