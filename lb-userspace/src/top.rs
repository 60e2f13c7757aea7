//! `lb top`: a live view of an instance, refreshed every second: per VIP
//! and per worker packets/s, bits/s and new flows/s from the pinned maps,
//! with each worker's state, load and active flows from the controller
//! when it answers (the pinned maps alone otherwise, so it also shows an
//! instance whose controller is down). Fits 80 columns; q or Ctrl-C quits.

use std::{
    collections::HashMap,
    io::Write as _,
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_common::{balancer::TrafficCounters, map_names};

use crate::{
    api::{self, BackendRow, Request, VipRow},
    cli::TopArgs,
    instance::Paths,
    maps,
};

/// One row's traffic now and a moment ago.
type Sample = HashMap<String, (TrafficCounters, Instant)>;

/// Runs the view until q, Ctrl-C or end of input.
pub fn top(args: &TopArgs, instance: &Paths) -> anyhow::Result<()> {
    let _raw = RawMode::enable();
    let mut previous: Sample = HashMap::new();
    let mut out = std::io::stdout();
    loop {
        let screen = render(instance, &mut previous)?;
        write!(out, "\x1b[H\x1b[2J{screen}")?;
        out.flush()?;
        if quit_requested(args.interval)? {
            writeln!(out)?;
            return Ok(());
        }
    }
}

/// Waits up to `interval` for a key; true on q, Ctrl-C or end of input.
fn quit_requested(interval: Duration) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    let mut poll = libc::pollfd {
        fd: stdin.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + interval;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis() as i32) };
        if ready <= 0 {
            continue;
        }
        let mut byte = [0u8; 1];
        // SAFETY: reading one byte into a valid buffer.
        let n = unsafe { libc::read(poll.fd, byte.as_mut_ptr().cast(), 1) };
        if n <= 0 || matches!(byte[0], b'q' | b'Q' | 3) {
            return Ok(true);
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
    let entries = crate::stats::backend_entries(&args.pin_dir)?;
    let lines = crate::stats::vip_ids(&args.pin_dir)?
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
                        state: flags_state(b.flags).into(),
                        load: "-".into(),
                        active: "-".into(),
                    })
                })
                .collect(),
        })
        .collect();
    Ok((lines, "controller not answering: from the pinned maps only"))
}

fn flags_state(flags: u8) -> &'static str {
    use lb_common::balancer::{BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UNREACHABLE};
    if flags & BACKEND_DOWN != 0 {
        "down"
    } else if flags & BACKEND_UNREACHABLE != 0 {
        "unreachable"
    } else if flags & BACKEND_DRAINING != 0 {
        "draining"
    } else {
        "up"
    }
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
    let data = api::call(socket, request).ok()?;
    serde_json::from_value(data).ok()
}

/// The terminal in raw mode (no echo, keys one at a time, Ctrl-C as a
/// key) while it lives, restored on drop; nothing when stdin is no
/// terminal.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enable() -> Self {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Self(None);
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        // SAFETY: a valid termios for our own terminal.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) };
        print!("\x1b[?25l");
        Self(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restoring what tcgetattr gave us.
            unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, saved) };
            print!("\x1b[?25h");
            let _ = std::io::stdout().flush();
        }
    }
}
