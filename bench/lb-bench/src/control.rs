//! Control-plane speed: Maglev table builds, `lb backend add` to the first
//! packet forwarded to the new worker, and a worker's death to its removal
//! from scheduling with default health checks.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, MapData, PerCpuArray};
use lb_common::{
    balancer::{Backend, TrafficCounters, BACKEND_DOWN},
    map_names,
};

use super::{samples::Samples, Plan};
use lb_testing::{
    rig::{Rig, UDP_PORT, VIP4},
    testbed::{enter_netns, Host},
};
use lb_userspace::{
    dataplane::maps::open_pinned,
    desired::maglev::{self, Member},
    service,
};

/// One Maglev build measurement.
pub struct MaglevRow {
    /// Workers.
    pub workers: u32,
    /// Table size.
    pub size: u32,
    /// Build time (ms).
    pub build_ms: Samples,
}

/// Maglev build times for 10, 100 and 1,000 workers at M = 16381 and
/// 65537.
pub fn maglev_builds(plan: &Plan) -> Vec<MaglevRow> {
    let mut rows = Vec::new();
    for size in [16_381, 65_537] {
        for workers in [10, 100, 1000] {
            let members: Vec<Member> = (0..workers)
                .map(|id| Member {
                    name: format!("198.51.{}.{}", id / 250, id % 250 + 1),
                    weight: 100,
                    id,
                })
                .collect();
            let build_ms = (0..plan.control_trials * 4)
                .map(|_| {
                    let started = Instant::now();
                    std::hint::black_box(maglev::build(&members, size, 7));
                    started.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            rows.push(MaglevRow {
                workers,
                size,
                build_ms,
            });
        }
    }
    rows
}

const UDP_VIP: &str = "192.0.2.100:5353/udp";
const TCP_VIP: &str = "192.0.2.100:80/tcp";

/// Time from `lb backend add` returning to the first packet forwarded to
/// the new worker, under a steady stream of new UDP flows (ms).
pub fn add_to_first_packet(plan: &Plan, lb: &Path) -> anyhow::Result<Samples> {
    let rig = Rig::new(lb, 3, &[])?;
    rig.lb.cli_ok(&["vip", "add", UDP_VIP])?;
    for worker in &rig.workers[..2] {
        rig.lb
            .cli_ok(&["backend", "add", UDP_VIP, &worker.ipv4.to_string()])?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = new_flows(&rig.client, stop.clone());
    let new_worker = rig.workers[2].ipv4.to_string();
    let mut samples = Samples::default();
    for _ in 0..plan.control_trials {
        rig.lb.cli_ok(&["backend", "add", UDP_VIP, &new_worker])?;
        let added = Instant::now();
        let id = backend_id(rig.lb.pin_dir(), rig.workers[2].ipv4.into())?;
        wait_for(Duration::from_secs(5), || forwarded(rig.lb.pin_dir(), id))?;
        samples.push(added.elapsed().as_secs_f64() * 1e3);
        rig.lb.cli_ok(&["backend", "del", UDP_VIP, &new_worker])?;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    Ok(samples)
}

/// Time from a worker's server dying to the worker being taken out of
/// scheduling, with the default health checks (ms).
pub fn death_to_removal(plan: &Plan, lb: &Path) -> anyhow::Result<Samples> {
    let mut rig = Rig::new(lb, 2, &[])?;
    rig.add_vip_with_workers(TCP_VIP, &[])?;
    let id = backend_id(rig.lb.pin_dir(), rig.workers[1].ipv4.into())?;
    let mut samples = Samples::default();
    for _ in 0..plan.control_trials {
        wait_for(Duration::from_secs(10), || {
            Ok(!is_down(rig.lb.pin_dir(), id)?)
        })?;
        rig.stop_worker(1);
        let died = Instant::now();
        wait_for(Duration::from_secs(10), || is_down(rig.lb.pin_dir(), id))?;
        samples.push(died.elapsed().as_secs_f64() * 1e3);
        rig.start_worker(1)?;
    }
    Ok(samples)
}

/// Sends datagrams from fresh sockets (new flows) to the UDP VIP until
/// stopped, at most for a minute.
fn new_flows(client: &Host, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let netns = client.netns_path();
    std::thread::spawn(move || {
        if enter_netns(&netns).is_err() {
            return;
        }
        let target = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            if let Ok(socket) = UdpSocket::bind("0.0.0.0:0") {
                let _ = socket.send_to(b"bench", target);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    })
}

fn backend_id(pin_dir: &Path, addr: IpAddr) -> anyhow::Result<u32> {
    let backends: Array<MapData, Backend> =
        open_pinned(pin_dir, map_names::BACKENDS)?.try_into()?;
    let (bytes, family) = service::addr_bytes(addr);
    (0..backends.len())
        .rev()
        .find(|id| {
            backends
                .get(id, 0)
                .is_ok_and(|b| b.addr == bytes && b.family == family && b.flags & 1 != 0)
        })
        .with_context(|| format!("worker {addr} is not in the backend map"))
}

fn forwarded(pin_dir: &Path, id: u32) -> anyhow::Result<bool> {
    let stats: PerCpuArray<MapData, TrafficCounters> =
        open_pinned(pin_dir, map_names::BACKEND_STATS)?.try_into()?;
    Ok(stats.get(&id, 0)?.iter().any(|c| c.packets > 0))
}

fn is_down(pin_dir: &Path, id: u32) -> anyhow::Result<bool> {
    let backends: Array<MapData, Backend> =
        open_pinned(pin_dir, map_names::BACKENDS)?.try_into()?;
    Ok(backends.get(&id, 0)?.flags & BACKEND_DOWN != 0)
}

/// Polls `done` every 100 µs until it holds or `limit` passes.
fn wait_for(limit: Duration, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done()? {
        anyhow::ensure!(started.elapsed() < limit, "not done after {limit:?}");
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}
