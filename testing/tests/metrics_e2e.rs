//! The Prometheus endpoint, scraped during a real run: its counts match
//! the traffic sent, and it serves the format asked for, classic text
//! that `promtool check metrics` passes or OpenMetrics. Needs root.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use lb_testing::{
    lb_exe,
    rig::{metric, Rig, METRICS_ADDR, UDP_PORT, VIP4},
    testbed::http_get,
    wait::wait_until,
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
    assert!(
        text.contains("# TYPE lb_dropped_packets_total counter"),
        "{text}"
    );
    assert!(
        metric(&text, "lb_health_check_duration_seconds_count") >= 2.0,
        "every worker was checked at least once"
    );
}

/// What Prometheus 2 sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The head and body of a scrape.
fn split(scrape: &str) -> (String, &str) {
    let (head, body) = scrape.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body)
}

/// `promtool check metrics` on `text`: its verdict and what it said.
fn promtool(text: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs the prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[test]
fn the_metrics_pass_promtool_in_the_classic_format_and_prometheus_gets_openmetrics() {
    lb_testing::needs_root!();
    let rig = Rig::new(lb_exe().as_ref(), 2, &["--metrics", METRICS_ADDR]).unwrap();
    rig.add_vip_with_workers(TCP_VIP, &[]).unwrap();
    rig.add_vip_with_workers(UDP_VIP, &[]).unwrap();
    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    rig.client
        .within(move || http_get(target, Duration::from_secs(5)).unwrap())
        .unwrap();
    wait_until(Duration::from_secs(20), "every worker checked", || {
        let text = rig.scrape_metrics().unwrap();
        metric(&text, "lb_health_check_duration_seconds_count") >= 4.0
    });

    for accept in [Some("text/plain;version=0.0.4"), Some("*/*"), None] {
        let scrape = rig.scrape_metrics_as(accept).unwrap();
        let (head, body) = split(&scrape);
        let (passed, said) = promtool(body);
        assert!(passed, "promtool check metrics ({accept:?}): {said}");
        assert!(
            head.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8"),
            "{accept:?}: {head}"
        );
        assert!(said.trim().is_empty(), "promtool found problems: {said}");
        assert!(body.contains("# HELP lb_packets_total "), "{body}");
        assert!(!body.contains("# EOF"), "{body}");
    }

    let scrape = rig.scrape_metrics_as(Some(PROMETHEUS_ACCEPT)).unwrap();
    let (head, body) = split(&scrape);
    assert!(
        head.contains(
            "\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
        ),
        "{head}"
    );
    assert!(body.contains("# TYPE lb_packets counter"), "{body}");
    assert!(body.contains("\nlb_packets_total "), "{body}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF: {body}"
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
