//! Prometheus metrics: `lb run --metrics ADDR` serves `GET /metrics` in
//! OpenMetrics text to clients that ask for it (Prometheus does), and in
//! Prometheus' classic text format 0.0.4 to the rest (`promtool check
//! metrics`, `curl`), as Prometheus' own client libraries negotiate.
//! Figures are read at each scrape: counters from the pinned maps, worker
//! state from the controller.

use std::{collections::HashSet, path::Path, sync::Arc};

use anyhow::Context as _;
use hyper::{body::Bytes, header::ACCEPT, Method, Request, StatusCode};
use lb_common::{balancer::TrafficCounters, capture::CaptureCounters, map_names};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{
    admin::protocol::WorkerState,
    control::controller::MetricsSnapshot,
    dataplane::capture,
    dataplane::counters,
    dataplane::maps,
    dataplane::ProgramStats,
    net::http::{self, Answer},
};

type Labels = Vec<(String, String)>;
type Counters = Family<Labels, Counter>;
type Gauges = Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// Serves `/metrics` until dropped, at most `cap` connections at once;
/// `snapshot` gives the controller's figures (it runs on a blocking
/// thread).
pub async fn serve<F>(listener: TcpListener, cap: usize, snapshot: F)
where
    F: Fn() -> anyhow::Result<MetricsSnapshot> + Send + Sync + 'static,
{
    let snapshot = Arc::new(snapshot);
    http::serve(listener, "metrics endpoint", cap, move |request, _| {
        answer(request, snapshot.clone())
    })
    .await;
}

async fn answer<F>(request: Request<Bytes>, snapshot: Arc<F>) -> Answer
where
    F: Fn() -> anyhow::Result<MetricsSnapshot> + Send + Sync + 'static,
{
    if request.uri().path() != "/metrics" {
        return Answer::text(StatusCode::NOT_FOUND, "see /metrics");
    }
    if request.method() != Method::GET {
        return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    let format = Format::negotiate(
        request
            .headers()
            .get_all(ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok()),
    );
    let rendered = tokio::task::spawn_blocking(move || snapshot().and_then(|s| render(&s)))
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
    match rendered {
        Ok(body) => Answer {
            status: StatusCode::OK,
            content_type: format.content_type(),
            body: match format {
                Format::OpenMetrics => body,
                Format::Classic => classic(&body),
            },
        },
        Err(error) => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}")),
    }
}

/// The exposition formats lb serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text, which Prometheus asks for first.
    OpenMetrics,
    /// Prometheus' classic text format, version 0.0.4: for clients that
    /// ask for `text/plain` or name neither format.
    Classic,
}

impl Format {
    /// The format `Accept` headers ask for: of the two lb serves, the one
    /// with the highest quality (the first of equals); classic text when
    /// they name neither, as `*/*` or no header at all does.
    pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a str>) -> Self {
        let mut best: Option<(f64, Self)> = None;
        for range in accept.into_iter().flat_map(|header| header.split(',')) {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let mut quality = 1.0;
            let mut version = None;
            for parameter in parts {
                let Some((name, value)) = parameter.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match name.trim().to_ascii_lowercase().as_str() {
                    "q" => quality = value.parse().unwrap_or(0.0),
                    "version" => version = Some(value.to_owned()),
                    _ => {}
                }
            }
            let format = match (media.as_str(), version.as_deref()) {
                ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                    Self::OpenMetrics
                }
                ("text/plain", None | Some("0.0.4")) => Self::Classic,
                _ => continue,
            };
            if quality > 0.0 && best.is_none_or(|(q, _)| quality > q) {
                best = Some((quality, format));
            }
        }
        best.map_or(Self::Classic, |(_, format)| format)
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text (as [`render`] writes it) in the classic format:
/// a counter family is named after its samples there (`lb_packets_total`,
/// not `lb_packets`), and there is no `# UNIT` or `# EOF`. The samples
/// themselves read the same in both. (prometheus-client writes
/// OpenMetrics only, hence the translation.)
pub fn classic(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {rest}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Registers a family and returns it for filling.
fn family<
    M: Clone
        + prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, M> {
    let family = Family::<Labels, M>::default();
    registry.register(name, help, family.clone());
    family
}

/// The exposition text for one scrape.
pub fn render(snapshot: &MetricsSnapshot) -> anyhow::Result<String> {
    let mut registry = Registry::default();
    global(&mut registry, &snapshot.pin_dir)?;
    per_vip(&mut registry, snapshot)?;
    per_worker(&mut registry, snapshot)?;
    tables(&mut registry, snapshot);
    registry.register(
        "lb_health_check_duration_seconds",
        "How long health checks took, every check of every worker",
        snapshot.check_latency.clone(),
    );
    program(&mut registry, snapshot.program);
    capture(&mut registry, &snapshot.pin_dir);
    interfaces(&mut registry, &snapshot.pin_dir);
    announcements(&mut registry, snapshot);
    let mut text = String::new();
    encode(&mut text, &registry).context("encoding metrics")?;
    Ok(text)
}

/// What the data plane counted, read field by field so that a counter
/// that goes away or is renamed fails to compile here.
fn global(registry: &mut Registry, pin_dir: &Path) -> anyhow::Result<()> {
    let c = counters::read_pinned(pin_dir)?;
    let single = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let counter: Counter = Counter::default();
        counter.inc_by(v);
        registry.register(name, help, counter);
    };
    single(
        registry,
        "lb_packets",
        "Frames the XDP program ran on",
        c.packets,
    );
    single(
        registry,
        "lb_received_bytes",
        "Bytes of those frames, Ethernet header included",
        c.bytes,
    );
    single(
        registry,
        "lb_forwarded_packets",
        "Packets sent to a worker",
        c.forwarded,
    );
    let by_label = |registry: &mut Registry, name, help, label, values: &[(&str, u64)]| {
        let family: Counters = family(registry, name, help);
        for (value, count) in values {
            family
                .get_or_create(&labels(&[(label, value)]))
                .inc_by(*count);
        }
    };
    by_label(
        registry,
        "lb_packet_class_packets",
        "Frames by class (one class per frame)",
        "class",
        &c.classes(),
    );
    by_label(
        registry,
        "lb_passed_packets",
        "Packets passed to the kernel, by reason",
        "reason",
        &[
            ("not_vip", c.pass_not_vip),
            ("nat_reply_unrouted", c.nat_replies_unrouted),
        ],
    );
    by_label(
        registry,
        "lb_dropped_packets",
        "Packets dropped, by reason",
        "reason",
        &[
            ("no_backend", c.drop_no_backend),
            ("no_neighbour", c.drop_no_neighbour),
            ("no_tunnel", c.drop_no_tunnel),
            ("too_big", c.too_big_dropped),
            ("no_nat", c.drop_no_nat),
            ("nat_ports_exhausted", c.nat_ports_exhausted),
            ("nat_table_full", c.nat_table_full),
            ("ttl_expired", c.nat_ttl_expired),
        ],
    );
    by_label(
        registry,
        "lb_flow_events",
        "Flow table and session events",
        "event",
        &[
            ("hit", c.flow_hits),
            ("insert_failed", c.flow_insert_failed),
            ("rescheduled", c.flow_rescheduled),
            ("expired", c.flow_expired),
            ("sticky_hit", c.sticky_hits),
            ("pin_hit", c.pin_hits),
        ],
    );
    by_label(
        registry,
        "lb_icmp_packets",
        "ICMP handled by lb, by action",
        "action",
        &[
            ("echo_reply", c.icmp_echo_replies),
            ("error_forwarded", c.icmp_errors_forwarded),
            ("too_big_sent", c.too_big_answered),
        ],
    );
    by_label(
        registry,
        "lb_nat_events",
        "NAT: replies translated and sent, passed to the kernel or missed; ports allocated; connections recovered",
        "event",
        &[
            ("reply", c.nat_replies),
            ("reply_unrouted", c.nat_replies_unrouted),
            ("reply_miss", c.nat_reply_misses),
            ("allocation", c.nat_allocations),
            ("recovered", c.nat_recovered),
        ],
    );
    Ok(())
}

fn traffic(
    registry: &mut Registry,
    prefix: &str,
    what: &str,
    rows: Vec<(Labels, TrafficCounters)>,
) {
    let packets: Counters = family(
        registry,
        &format!("{prefix}_packets"),
        &format!("Packets forwarded, per {what}"),
    );
    let bytes: Counters = family(
        registry,
        &format!("{prefix}_bytes"),
        &format!("Bytes forwarded, per {what}"),
    );
    let new_flows: Counters = family(
        registry,
        &format!("{prefix}_new_flows"),
        &format!("Flows started, per {what}"),
    );
    for (labels, t) in rows {
        packets.get_or_create(&labels).inc_by(t.packets);
        bytes.get_or_create(&labels).inc_by(t.bytes);
        new_flows.get_or_create(&labels).inc_by(t.new_flows);
    }
}

fn per_vip(registry: &mut Registry, snapshot: &MetricsSnapshot) -> anyhow::Result<()> {
    let rows = snapshot
        .vips
        .iter()
        .map(|v| {
            let counters = maps::traffic(&snapshot.pin_dir, map_names::VIP_STATS, v.id)?;
            Ok((labels(&[("vip", &v.vip.to_string())]), counters))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    traffic(registry, "lb_vip", "VIP", rows);
    Ok(())
}

fn per_worker(registry: &mut Registry, snapshot: &MetricsSnapshot) -> anyhow::Result<()> {
    let rows = snapshot
        .workers
        .iter()
        .map(|w| {
            let counters = maps::traffic(&snapshot.pin_dir, map_names::BACKEND_STATS, w.id)?;
            let l = labels(&[
                ("vip", &w.vip.to_string()),
                ("worker", &w.worker.to_string()),
            ]);
            Ok((l, counters))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    traffic(registry, "lb_worker", "worker", rows);
    let active: Gauges = family(
        registry,
        "lb_worker_active_flows",
        "Active flows in the flow table, per worker",
    );
    let up: Gauges = family(
        registry,
        "lb_worker_up",
        "1 when the worker takes new flows (up, not draining)",
    );
    let state: Gauges = family(
        registry,
        "lb_worker_state",
        "1 for the worker's state: up, down, unreachable, draining or removing",
    );
    let weight: Gauges = family(registry, "lb_worker_weight", "The worker's weight");
    let load: Gauges = family(
        registry,
        "lb_worker_load",
        "The worker's current load report (0 to 1); absent when unknown",
    );
    let check: Gauges = family(
        registry,
        "lb_worker_check_duration_seconds",
        "How long the worker's last health check took",
    );
    for w in &snapshot.workers {
        let l = labels(&[
            ("vip", &w.vip.to_string()),
            ("worker", &w.worker.to_string()),
        ]);
        active.get_or_create(&l).set(w.flows as f64);
        up.get_or_create(&l)
            .set(f64::from(u8::from(w.state == WorkerState::Up)));
        weight.get_or_create(&l).set(f64::from(w.weight));
        for s in [
            WorkerState::Up,
            WorkerState::Down,
            WorkerState::Unreachable,
            WorkerState::Draining,
            WorkerState::Removing,
        ] {
            let name = serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut with_state = l.clone();
            with_state.push(("state".into(), name));
            state
                .get_or_create(&with_state)
                .set(f64::from(u8::from(w.state == s)));
        }
        if let Some(figure) = w.load {
            load.get_or_create(&l).set(figure);
        }
        if let Some(c) = &w.check {
            check.get_or_create(&l).set(c.took_ms / 1e3);
        }
    }
    Ok(())
}

fn tables(registry: &mut Registry, snapshot: &MetricsSnapshot) {
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: f64| {
        let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        g.set(value);
        registry.register(name, help, g);
    };
    gauge(
        registry,
        "lb_flow_table_entries",
        "Flows in the flow table at the last scan",
        snapshot.occupancy.flow_entries as f64,
    );
    gauge(
        registry,
        "lb_flow_table_capacity",
        "Capacity of the flow table",
        f64::from(snapshot.max_flows),
    );
    gauge(
        registry,
        "lb_sticky_sessions",
        "Sticky sessions at the last expiry pass",
        snapshot.occupancy.sessions as f64,
    );
    let nat: Gauges = family(
        registry,
        "lb_nat_entries",
        "fullnat connections in the NAT table at the last sweep, by NAT source",
    );
    let sources = crate::dataplane::nat::sources(&snapshot.pin_dir);
    for (slot, count) in snapshot.occupancy.nat_entries.iter().enumerate() {
        let Some(source) = sources.get(&(slot as u8)) else {
            continue;
        };
        let labels = vec![("source".to_owned(), source.to_string())];
        nat.get_or_create(&labels).set(*count as f64);
    }
    gauge(
        registry,
        "lb_program_attached",
        "1 while lb's program runs on its interface, 0 once it was lost",
        f64::from(u8::from(snapshot.attachment.lost.is_none())),
    );
    gauge(
        registry,
        "lb_state_unsaved",
        "1 while changes in force are not in the state file (saving fails; lb retries every second)",
        f64::from(u8::from(snapshot.unsaved)),
    );
    let repins: Counter = Counter::default();
    repins.inc_by(snapshot.attachment.repins);
    registry.register(
        "lb_link_repins",
        "Times the link's pin was found removed and pinned again",
        repins,
    );
    gauge(
        registry,
        "lb_pins_intact",
        "1 while every pin is in place in a pin directory only lb may write, 0 while pins are missing and could not be pinned again",
        f64::from(u8::from(snapshot.attachment.unpinned.is_none())),
    );
    let restores: Counter = Counter::default();
    restores.inc_by(snapshot.attachment.restores);
    registry.register(
        "lb_pin_restores",
        "Times pins (link, maps, marks or lock file) were found removed and pinned again",
        restores,
    );
}

/// Whether each VIP address is announced, with why not (only with
/// --announce-table).
fn announcements(registry: &mut Registry, snapshot: &MetricsSnapshot) {
    if snapshot.announcements.is_empty() {
        return;
    }
    let announced: Gauges = family(
        registry,
        "lb_vip_announced",
        "1 while the VIP address's host route is in the announce table, else 0 with the reason",
    );
    for row in &snapshot.announcements {
        let address = row.address.to_string();
        let reason = row.reason.as_deref().unwrap_or("");
        announced
            .get_or_create(&labels(&[("address", &address), ("reason", reason)]))
            .set(f64::from(u8::from(row.announced)));
    }
}

/// Whether a capture runs, so a forgotten one shows on a dashboard, and
/// what captures counted (no figure if the maps can't be read: the other
/// families still matter more).
fn capture(registry: &mut Registry, pin_dir: &Path) {
    let activity = match capture::activity(pin_dir) {
        Ok(activity) => activity,
        Err(e) => {
            tracing::debug!("reading the capture maps: {e:#}");
            return;
        }
    };
    let running: Gauge = Gauge::default();
    running.set(i64::from(activity.running));
    registry.register(
        "lb_capture_running",
        "1 while an lb capture has the data plane copying packets, else 0",
        running,
    );
    let packets: Counters = family(
        registry,
        "lb_capture_packets",
        "Packets that matched a capture's filter: captured, or lost to a full ring buffer",
    );
    let CaptureCounters { captured, lost, .. } = activity.counters;
    for (outcome, value) in [("captured", captured), ("lost", lost)] {
        packets
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc_by(value);
    }
}

/// lb's interfaces, and what was redirected out of each.
fn interfaces(registry: &mut Registry, pin_dir: &Path) {
    let info: Family<Labels, Gauge> = family(
        registry,
        "lb_interface",
        "1 for each interface lb's program runs on, by name and index",
    );
    let packets: Counters = family(
        registry,
        "lb_interface_redirected_packets",
        "Frames lb sent out of this interface from another of its interfaces (XDP_REDIRECT)",
    );
    let bytes: Counters = family(
        registry,
        "lb_interface_redirected_bytes",
        "Bytes of the frames lb redirected out of this interface, Ethernet headers included",
    );
    for row in counters::read_interfaces(pin_dir) {
        let index = row.ifindex.map_or_else(String::new, |i| i.to_string());
        info.get_or_create(&labels(&[("iface", &row.iface), ("ifindex", &index)]))
            .set(1);
        let iface = labels(&[("iface", &row.iface)]);
        packets.get_or_create(&iface).inc_by(row.redirected_packets);
        bytes.get_or_create(&iface).inc_by(row.redirected_bytes);
    }
}

/// The program's runs and run time, once the kernel has counted any
/// (only while `kernel.bpf_stats_enabled` is on, or a BPF_ENABLE_STATS
/// descriptor is held: no figure rather than a false zero).
fn program(registry: &mut Registry, stats: Option<ProgramStats>) {
    let Some(stats) = stats.filter(|s| s.runs > 0) else {
        return;
    };
    let runs: Counter = Counter::default();
    runs.inc_by(stats.runs);
    registry.register(
        "lb_program_runs",
        "Runs of the XDP program (kernel.bpf_stats_enabled)",
        runs,
    );
    let time: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
    time.inc_by(stats.time.as_secs_f64());
    registry.register(
        "lb_program_run_time_seconds",
        "Time spent in the XDP program (kernel.bpf_stats_enabled)",
        time,
    );
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::histogram::Histogram;

    use super::*;

    /// What Prometheus 2 sends.
    const PROMETHEUS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn the_format_is_the_one_the_client_prefers_and_classic_by_default() {
        let negotiate = |headers: &[&str]| Format::negotiate(headers.iter().copied());
        assert_eq!(negotiate(&[PROMETHEUS]), Format::OpenMetrics);
        assert_eq!(
            negotiate(&["application/openmetrics-text"]),
            Format::OpenMetrics
        );
        assert_eq!(negotiate(&["text/plain;version=0.0.4"]), Format::Classic);
        assert_eq!(
            negotiate(&["text/plain; version=0.0.4; q=0.9, application/openmetrics-text; q=0.5"]),
            Format::Classic
        );
        assert_eq!(
            negotiate(&[
                "text/plain;q=0.2",
                "Application/OpenMetrics-Text; version=\"1.0.0\""
            ]),
            Format::OpenMetrics
        );
        for classic in [
            &[][..],
            &["*/*"],
            &["text/html"],
            &["application/openmetrics-text;version=2.0.0"],
            &["application/openmetrics-text;q=0"],
            &["garbage;;=,"],
        ] {
            assert_eq!(negotiate(classic), Format::Classic, "{classic:?}");
        }
    }

    #[test]
    fn classic_text_names_counter_families_after_their_samples() {
        let mut registry = Registry::default();
        let packets: Counter = Counter::default();
        packets.inc_by(3);
        registry.register("lb_packets", "Frames", packets);
        let dropped: Counters = family(&mut registry, "lb_dropped_packets", "Dropped");
        dropped
            .get_or_create(&labels(&[("reason", "no_backend")]))
            .inc();
        let weight: Gauges = family(&mut registry, "lb_worker_weight", "Weight");
        weight
            .get_or_create(&labels(&[("worker", "192.0.2.11")]))
            .set(100.0);
        let histogram = Histogram::new([0.1, 1.0]);
        histogram.observe(0.5);
        registry.register("lb_check_seconds", "Checks", histogram);
        let mut openmetrics = String::new();
        encode(&mut openmetrics, &registry).unwrap();
        let text = classic(&openmetrics);
        for line in [
            "# HELP lb_packets_total Frames.",
            "# TYPE lb_packets_total counter",
            "lb_packets_total 3",
            "# TYPE lb_dropped_packets_total counter",
            "lb_dropped_packets_total{reason=\"no_backend\"} 1",
            "# TYPE lb_worker_weight gauge",
            "lb_worker_weight{worker=\"192.0.2.11\"} 100.0",
            "# TYPE lb_check_seconds histogram",
            "lb_check_seconds_bucket{le=\"1.0\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# TYPE lb_packets counter"),
            "{text}"
        );
        assert_eq!(text.lines().count(), openmetrics.lines().count() - 1);
    }
}
