//! `lb top`: a live view of an instance, refreshed every second: per VIP
//! and per worker packets/s, bits/s and new flows/s from the pinned maps,
//! with each worker's state, load and active flows from the controller
//! when it answers (the pinned maps alone otherwise, so it also shows an
//! instance whose controller is down). Fits 80 columns; q or Ctrl-C quits.

use std::{
    collections::HashMap,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use crossterm::{
    cursor::{Hide, MoveTo, Show},
    event::{self, Event, KeyCode, KeyModifiers},
    execute, queue,
    style::Print,
    terminal::{self, Clear, ClearType},
};
use lb_common::{balancer::TrafficCounters, map_names};

use crate::{
    admin::{
        client,
        protocol::{BackendRow, Request, VipRow, WorkerState},
    },
    commands::cli::TopArgs,
    dataplane::maps,
    desired::instance::Paths,
};

/// One row's traffic now and a moment ago.
type Sample = HashMap<String, (TrafficCounters, Instant)>;

/// Runs the view until q or Ctrl-C.
pub fn top(args: &TopArgs, instance: &Paths) -> anyhow::Result<()> {
    let _terminal = Terminal::enter()?;
    let mut previous: Sample = HashMap::new();
    let mut out = std::io::stdout();
    loop {
        let screen = render(instance, &mut previous)?;
        queue!(out, MoveTo(0, 0), Clear(ClearType::All))?;
        // Raw mode turns off the terminal's newline translation.
        for line in screen.lines() {
            queue!(out, Print(line), Print("\r\n"))?;
        }
        out.flush()?;
        if quit_requested(args.interval)? {
            return Ok(());
        }
    }
}

/// Waits up to `interval` for a key; true on q or Ctrl-C.
fn quit_requested(interval: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + interval;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !event::poll(left)? {
            return Ok(false);
        }
        if let Event::Key(key) = event::read()? {
            let ctrl_c =
                key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
            if ctrl_c || matches!(key.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) {
                return Ok(true);
            }
        }
    }
}

/// A VIP and its workers as the view shows them.
struct VipLines {
    name: String,
    id: u32,
    workers: Vec<WorkerLine>,
}

struct WorkerLine {
    addr: String,
    id: u32,
    state: String,
    load: String,
    active: String,
}

/// What to show: from the controller when it answers (with state, load
/// and active flows), else from the pinned maps alone.
fn listing(args: &Paths) -> anyhow::Result<(Vec<VipLines>, &'static str)> {
    let vips: Option<Vec<VipRow>> = controller(&args.socket, &Request::VipList);
    let workers: Option<Vec<BackendRow>> =
        controller(&args.socket, &Request::BackendList { vip: None });
    if let (Some(vips), Some(workers)) = (vips, workers) {
        let lines = vips
            .iter()
            .map(|v| VipLines {
                name: v.vip.to_string(),
                id: v.id,
                workers: workers
                    .iter()
                    .filter(|w| w.vip == v.vip)
                    .map(|w| WorkerLine {
                        addr: w.worker.to_string(),
                        id: w.id,
                        state: serde_json::to_value(w.state)
                            .ok()
                            .and_then(|s| s.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        load: w.load.map_or_else(|| "-".into(), |l| format!("{l:.2}")),
                        active: w.flows.to_string(),
                    })
                    .collect(),
            })
            .collect();
        return Ok((lines, ""));
    }
    let entries = crate::commands::stats::backend_entries(&args.pin_dir)?;
    let lines = crate::commands::stats::vip_ids(&args.pin_dir)?
        .into_iter()
        .map(|(vip, id)| VipLines {
            name: vip.to_string(),
            id,
            workers: entries
                .iter()
                .filter(|(_, b)| b.vip_id == id)
                .filter_map(|(worker_id, b)| {
                    let addr = crate::service::addr_from_bytes(b.addr, b.family)?;
                    Some(WorkerLine {
                        addr: addr.to_string(),
                        id: *worker_id,
                        state: WorkerState::from_flags(b.flags).to_string(),
                        load: "-".into(),
                        active: "-".into(),
                    })
                })
                .collect(),
        })
        .collect();
    Ok((lines, "controller not answering: from the pinned maps only"))
}

fn render(args: &Paths, previous: &mut Sample) -> anyhow::Result<String> {
    let pin_dir = &args.pin_dir;
    let (vips, note) = listing(args)?;
    let mut text = format!(
        "lb top  {}  (q quits)\n{note}\n{:<24} {:>9} {:>10} {:>8} {:>9} {:>5} {:>8}\n",
        pin_dir.display(),
        "VIP / WORKER",
        "PKT/S",
        "BIT/S",
        "FLOWS/S",
        "STATE",
        "LOAD",
        "ACTIVE"
    );
    for vip in &vips {
        let vip_rates = rates(pin_dir, map_names::VIP_STATS, vip.id, &vip.name, previous)?;
        text += &line(&vip.name, vip_rates, "", "", "");
        for worker in &vip.workers {
            let key = format!("{} {}", vip.name, worker.addr);
            let worker_rates = rates(pin_dir, map_names::BACKEND_STATS, worker.id, &key, previous)?;
            text += &line(
                &format!("  {}", worker.addr),
                worker_rates,
                &worker.state,
                &worker.load,
                &worker.active,
            );
        }
    }
    if vips.is_empty() {
        text += "(no VIPs)\n";
    }
    Ok(text)
}

fn line(
    name: &str,
    (pps, bps, fps): (f64, f64, f64),
    state: &str,
    load: &str,
    active: &str,
) -> String {
    let name: String = name.chars().take(24).collect();
    format!(
        "{name:<24} {:>9} {:>10} {:>8} {state:>9} {load:>5} {active:>8}\n",
        human(pps),
        human(bps),
        human(fps)
    )
}

/// 1234567 → "1.2M".
fn human(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Packets/s, bits/s, new flows/s of one row since the last refresh.
fn rates(
    pin_dir: &Path,
    map: &str,
    id: u32,
    key: &str,
    previous: &mut Sample,
) -> anyhow::Result<(f64, f64, f64)> {
    let now = Instant::now();
    let counters = maps::traffic(pin_dir, map, id)
        .with_context(|| format!("reading {map} under {}", pin_dir.display()))?;
    let rates = match previous.get(key) {
        Some((before, at)) => {
            let seconds = now.duration_since(*at).as_secs_f64().max(1e-3);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
            (
                rate(counters.packets, before.packets),
                rate(counters.bytes, before.bytes) * 8.0,
                rate(counters.new_flows, before.new_flows),
            )
        }
        None => (0.0, 0.0, 0.0),
    };
    previous.insert(key.to_owned(), (counters, now));
    Ok(rates)
}

fn controller<T: serde::de::DeserializeOwned>(socket: &Path, request: &Request) -> Option<T> {
    let data = client::call(socket, request).ok()?;
    serde_json::from_value(data).ok()
}

/// The terminal in raw mode with the cursor hidden while it lives,
/// restored on drop (also when the view fails).
struct Terminal;

impl Terminal {
    fn enter() -> anyhow::Result<Self> {
        terminal::enable_raw_mode().context("lb top needs a terminal")?;
        execute!(std::io::stdout(), Hide)?;
        Ok(Self)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), Show, Print("\r\n"));
        let _ = terminal::disable_raw_mode();
    }
}
