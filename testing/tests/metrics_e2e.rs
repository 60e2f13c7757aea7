//! The Prometheus endpoint, scraped during a real run: its counts match
//! the traffic sent. Needs root.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use lb_testing::{
    lb_exe,
    rig::{metric, Rig, METRICS_ADDR, UDP_PORT, VIP4},
    testbed::http_get,
};

const TCP_VIP: &str = "192.0.2.100:80/tcp";
const UDP_VIP: &str = "192.0.2.100:5353/udp";

#[test]
fn scraped_metrics_match_the_traffic_sent() {
    lb_testing::needs_root!();
    let rig = Rig::new(lb_exe().as_ref(), 2, &["--metrics", METRICS_ADDR]).unwrap();
    rig.add_vip_with_workers(TCP_VIP, &[]).unwrap();
    rig.add_vip_with_workers(UDP_VIP, &[]).unwrap();
    let before = rig.scrape_metrics().unwrap();
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");

    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    rig.client
        .within(move || {
            for _ in 0..30 {
                http_get(target, Duration::from_secs(5)).unwrap();
            }
        })
        .unwrap();
    let udp = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
    rig.client
        .within(move || {
            for _ in 0..20 {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                for _ in 0..5 {
                    socket.send_to(b"who", udp).unwrap();
                    let mut buf = [0u8; 64];
                    socket.recv_from(&mut buf).unwrap();
                }
            }
        })
        .unwrap();

    let text = rig.scrape_metrics().unwrap();
    let udp_vip = format!("{{vip=\"{UDP_VIP}\"}}");
    let tcp_vip = format!("{{vip=\"{TCP_VIP}\"}}");
    assert_eq!(
        metric(&text, &format!("lb_vip_packets_total{udp_vip}")),
        100.0
    );
    assert_eq!(
        metric(&text, &format!("lb_vip_new_flows_total{udp_vip}")),
        20.0
    );
    assert_eq!(
        metric(&text, &format!("lb_vip_new_flows_total{tcp_vip}")),
        30.0
    );
    let stats = rig.lb.stats_json().unwrap();
    let tcp_packets = stats["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == TCP_VIP)
        .unwrap()["packets"]
        .as_f64()
        .unwrap();
    assert_eq!(
        metric(&text, &format!("lb_vip_packets_total{tcp_vip}")),
        tcp_packets
    );
    let global = rig.lb.stats().unwrap();
    assert_eq!(
        metric(&text, "lb_forwarded_packets_total"),
        global.forwarded as f64
    );
    for worker in &rig.workers {
        let labels = format!("{{vip=\"{TCP_VIP}\",worker=\"{}\"}}", worker.ipv4);
        assert_eq!(metric(&text, &format!("lb_worker_up{labels}")), 1.0);
        assert_eq!(metric(&text, &format!("lb_worker_weight{labels}")), 100.0);
    }
    assert!(text.contains("# TYPE lb_dropped_packets counter"), "{text}");
    assert!(
        metric(&text, "lb_health_check_duration_seconds_count") >= 2.0,
        "every worker was checked at least once"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
}

#[test]
fn program_runs_are_read_from_the_kernel_while_it_counts_them() {
    lb_testing::needs_root!();
    let rig = Rig::new(lb_exe().as_ref(), 1, &["--metrics", METRICS_ADDR]).unwrap();
    rig.add_vip_with_workers(TCP_VIP, &[]).unwrap();
    // The kernel counts program runs while someone holds this descriptor.
    let _counting = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    rig.client
        .within(move || {
            for _ in 0..10 {
                http_get(target, Duration::from_secs(5)).unwrap();
            }
        })
        .unwrap();
    let text = rig.scrape_metrics().unwrap();
    // At least the 10 SYNs and their ACKs ran the program.
    assert!(metric(&text, "lb_program_runs_total") >= 20.0, "{text}");
    assert!(
        metric(&text, "lb_program_run_time_seconds_total") > 0.0,
        "{text}"
    );
}
