//! A fleet at the limits (issue 14): hundreds of VIPs whose workers live
//! on two hosts, one of which carries about 85% of every worker entry and
//! dies. Measured: start from a config file, steady-state CPU and memory,
//! how fast the data plane learns of the death and new connections
//! succeed again, admin latency throughout, memory after the storm, and
//! a restart.
//!
//! Workers are addresses on the two hosts; every VIP has `a` of host A's
//! addresses and host B's first, and B's further addresses fill up the
//! entries left. All VIPs share port 80 and the default checks, so the
//! controller runs one checker per worker address, as a real fleet whose
//! workers serve many VIPs would.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, MapData};
use lb_common::{
    balancer::{Backend, BACKEND_DOWN, BACKEND_UNREACHABLE, BACKEND_VALID},
    map_names,
};
use lb_testing::{
    rig::Rig,
    testbed::{Host, LbProcess},
};

use super::{samples::Samples, Plan};

/// One fleet size's figures.
pub struct Fleet {
    /// VIPs.
    pub vips: u32,
    /// Worker entries across all VIPs.
    pub entries: u32,
    /// Entries on the host that dies.
    pub dying_entries: u32,
    /// Health checkers the controller runs (one per worker address).
    pub addresses: u32,
    /// `lb run --config` to every VIP answering (ms).
    pub start_ms: f64,
    /// Steady-state CPU of `lb run`, in % of one core.
    pub idle_cpu: f64,
    /// Steady-state resident memory (MB).
    pub idle_rss_mb: f64,
    /// Threads of `lb run`.
    pub threads: u32,
    /// Host death to the first of its entries marked down in the data plane (ms).
    pub first_down_ms: f64,
    /// Host death to the last one (ms).
    pub all_down_ms: f64,
    /// Host death to the start of the run of new connections that all
    /// succeeded (ms).
    pub recovered_ms: f64,
    /// New connections tried from the death to the end of the storm.
    pub tried: u32,
    /// Of which failed.
    pub failed: u32,
    /// The host back to all of its entries up again (ms).
    pub all_up_ms: f64,
    /// `lb status` with the fleet steady (ms).
    pub admin_idle: Samples,
    /// `lb status` from the death until everything is up again (ms).
    pub admin_storm: Samples,
    /// Resident memory 10 s after the host came back (MB).
    pub after_rss_mb: f64,
    /// `lb run` restarted: start to its admin socket answering (ms).
    pub restart_ms: f64,
    /// New connections tried during the restart, and how many failed.
    pub restart_tried: u32,
    /// Of which failed.
    pub restart_failed: u32,
}

/// The VIPs: 198.51.100.1… then 203.0.113.1…, port 80.
fn vip(i: u32) -> SocketAddr {
    let net = if i < 250 {
        [198, 51, 100]
    } else {
        [203, 0, 113]
    };
    let last = (i % 250 + 1) as u8;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(net[0], net[1], net[2], last)), 80)
}

/// Host A's addresses are 192.0.2.11 (its own) and 192.0.2.40…; host B's
/// 192.0.2.12 and 192.0.2.80….
fn address(host_a: bool, n: u32) -> Ipv4Addr {
    match (host_a, n) {
        (true, 0) => Ipv4Addr::new(192, 0, 2, 11),
        (false, 0) => Ipv4Addr::new(192, 0, 2, 12),
        (true, n) => Ipv4Addr::new(192, 0, 2, 39 + n as u8),
        (false, n) => Ipv4Addr::new(192, 0, 2, 79 + n as u8),
    }
}

/// Which worker addresses each VIP has.
struct Layout {
    vips: u32,
    /// Host A's addresses every VIP has.
    a: u32,
    /// Host B's address count; B's first is on every VIP, the others on
    /// as many VIPs as the entries left need.
    b: u32,
    entries: u32,
}

impl Layout {
    fn new(vips: u32, entries: u32) -> Self {
        let a = (entries * 86 / 100 / vips).max(1);
        let left = entries.saturating_sub(vips * (a + 1));
        Self {
            vips,
            a,
            b: 1 + left.div_ceil(vips),
            entries,
        }
    }

    fn workers(&self, vip: u32) -> Vec<Ipv4Addr> {
        let mut workers: Vec<Ipv4Addr> = (0..self.a).map(|n| address(true, n)).collect();
        workers.push(address(false, 0));
        let left = self.entries - self.vips * (self.a + 1);
        for n in 1..self.b {
            if (n - 1) * self.vips + vip < left {
                workers.push(address(false, n));
            }
        }
        workers
    }

    fn config(&self) -> String {
        let mut text = String::new();
        for i in 0..self.vips {
            text += &format!("[[vip]]\naddress = \"{}/tcp\"\n", vip(i));
            for worker in self.workers(i) {
                text += &format!("[[vip.backends]]\naddress = \"{worker}\"\n");
            }
        }
        text
    }
}

/// Runs one fleet of `vips` VIPs and `entries` worker entries.
pub fn run(plan: &Plan, vips: u32, entries: u32) -> anyhow::Result<Fleet> {
    let layout = Layout::new(vips, entries);
    let limits = [
        "--max-vips",
        &vips.to_string(),
        "--max-workers",
        &entries.to_string(),
    ]
    .map(str::to_owned);
    let limits: Vec<&str> = limits.iter().map(String::as_str).collect();
    let mut rig = Rig::new(&plan.lb, 2, &limits)?;
    prepare_hosts(&rig, &layout)?;
    rig.lb.stop()?;
    rig.lb.cli_ok(&["detach"])?;
    let config = rig.lb.state_file().with_extension("fleet.toml");
    std::fs::write(&config, layout.config())?;
    let config_arg = config.to_string_lossy().into_owned();
    let mut args = limits.clone();
    args.extend(["--config", &config_arg]);

    let started = Instant::now();
    rig.start_lb(&args)?;
    let every = (0..vips).map(vip).collect::<Vec<_>>();
    rig.client
        .within(|| wait_all_answer(&every, Duration::from_secs(60)))??;
    let start_ms = ms(started.elapsed());

    let pid = rig.lb.pid();
    std::thread::sleep(Duration::from_secs(3));
    let idle_cpu = cpu_percent(pid, Duration::from_secs(plan.fleet_idle_seconds.into()))?;
    let idle_rss_mb = rss_mb(pid)?;
    let threads = status_field(pid, "Threads:")? as u32;
    let admin_idle = time_status(&rig.lb, plan.admin_calls);

    let storm = storm(&rig, &layout)?;
    std::thread::sleep(Duration::from_secs(10));
    let after_rss_mb = rss_mb(pid)?;

    rig.lb.stop()?;
    let (restart_ms, restart_tried, restart_failed) = restart(&mut rig, &args, vips)?;
    let _ = std::fs::remove_file(&config);
    Ok(Fleet {
        vips,
        entries,
        dying_entries: vips * layout.a,
        addresses: layout.a + layout.b,
        start_ms,
        idle_cpu,
        idle_rss_mb,
        threads,
        first_down_ms: storm.first_down_ms,
        all_down_ms: storm.all_down_ms,
        recovered_ms: storm.recovered_ms,
        tried: storm.tried,
        failed: storm.failed,
        all_up_ms: storm.all_up_ms,
        admin_idle,
        admin_storm: storm.admin,
        after_rss_mb,
        restart_ms,
        restart_tried,
        restart_failed,
    })
}

/// Gives the hosts their extra addresses and every VIP (a local route
/// for each VIP block), and routes the VIP blocks from the client through
/// the balancer.
fn prepare_hosts(rig: &Rig, layout: &Layout) -> anyhow::Result<()> {
    let blocks = ["198.51.100.0/24", "203.0.113.0/24"];
    for (host, count, is_a) in [
        (&rig.workers[0], layout.a, true),
        (&rig.workers[1], layout.b, false),
    ] {
        for n in 1..count {
            let addr = format!("{}/24", address(is_a, n));
            host.run("ip", &["addr", "add", &addr, "dev", "eth0"])?;
        }
        for block in blocks {
            host.run("ip", &["route", "add", "local", block, "dev", "lo"])?;
        }
    }
    for block in blocks {
        rig.client
            .run("ip", &["route", "add", block, "via", "192.0.2.2"])?;
    }
    Ok(())
}

/// Waits until a new connection to each of `vips` succeeds, in turn.
fn wait_all_answer(vips: &[SocketAddr], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    for vip in vips {
        while !connects(*vip) {
            anyhow::ensure!(Instant::now() < deadline, "{vip} never answered");
        }
    }
    Ok(())
}

/// Whether a new connection to `vip` is accepted within 250 ms.
fn connects(vip: SocketAddr) -> bool {
    TcpStream::connect_timeout(&vip, Duration::from_millis(250)).is_ok()
}

fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3
}

/// What the host's death and return measured.
struct Storm {
    first_down_ms: f64,
    all_down_ms: f64,
    recovered_ms: f64,
    tried: u32,
    failed: u32,
    all_up_ms: f64,
    admin: Samples,
}

/// Longest the data plane may take to learn of the death or the return.
const STORM_LIMIT: Duration = Duration::from_secs(60);
/// New connections keep being tried this long after all entries are down.
const AFTER_DOWN: Duration = Duration::from_secs(3);

/// Cuts host A off the LAN under a stream of new connections and `lb
/// status` calls, then brings it back.
fn storm(rig: &Rig, layout: &Layout) -> anyhow::Result<Storm> {
    let dying: Vec<Ipv4Addr> = (0..layout.a).map(|n| address(true, n)).collect();
    let entries = DyingEntries::open(rig.lb.pin_dir(), &dying)?;
    let host_a = &rig.workers[0];
    let stop = AtomicBool::new(false);
    let attempts = Mutex::new(Vec::new());
    let admin = Mutex::new(Samples::default());
    let killed = Instant::now();
    let (first_down, all_down, all_up) = std::thread::scope(|scope| {
        scope.spawn(|| probe(&rig.client, layout.vips, killed, &stop, &attempts));
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                admin.lock().unwrap().push(time_one_status(&rig.lb));
            }
        });
        let result = kill_and_revive(host_a, &entries, killed, &stop);
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    let attempts = attempts.into_inner().unwrap();
    let recovered = attempts
        .iter()
        .rev()
        .take_while(|(_, ok)| *ok)
        .last()
        .map_or(f64::NAN, |(at, _)| *at);
    let failed = attempts.iter().filter(|(_, ok)| !ok).count() as u32;
    Ok(Storm {
        first_down_ms: first_down,
        all_down_ms: all_down,
        recovered_ms: recovered,
        tried: attempts.len() as u32,
        failed,
        all_up_ms: all_up,
        admin: admin.into_inner().unwrap(),
    })
}

/// Takes host A's link down, waits until the data plane has all its
/// entries down, keeps the probes going a while, then brings the link
/// back and waits until all are up: (first down, all down, all up) in ms.
fn kill_and_revive(
    host_a: &Host,
    entries: &DyingEntries,
    killed: Instant,
    stop: &AtomicBool,
) -> anyhow::Result<(f64, f64, f64)> {
    host_a.run("ip", &["link", "set", "eth0", "down"])?;
    let mut first_down = None;
    loop {
        let down = entries.down()?;
        if down > 0 && first_down.is_none() {
            first_down = Some(ms(killed.elapsed()));
        }
        if down == entries.count() {
            break;
        }
        anyhow::ensure!(
            killed.elapsed() < STORM_LIMIT,
            "only {down} of {} entries went down",
            entries.count()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let all_down = ms(killed.elapsed());
    std::thread::sleep(AFTER_DOWN);
    stop.store(true, Ordering::Relaxed);
    let revived = Instant::now();
    host_a.run("ip", &["link", "set", "eth0", "up"])?;
    while entries.down()? > 0 {
        anyhow::ensure!(
            revived.elapsed() < STORM_LIMIT,
            "host A's entries stayed down"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((
        first_down.unwrap_or(all_down),
        all_down,
        ms(revived.elapsed()),
    ))
}

/// Threads opening new connections.
const PROBES: usize = 2;

/// Opens new connections to the VIPs in turn from [`PROBES`] threads in
/// the client's namespace until `stop`: (ms after `killed`, succeeded).
fn probe(
    client: &Host,
    vips: u32,
    killed: Instant,
    stop: &AtomicBool,
    attempts: &Mutex<Vec<(f64, bool)>>,
) {
    let next = AtomicU32::new(0);
    let _ = client.within(|| {
        std::thread::scope(|scope| {
            for _ in 0..PROBES {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed) % vips;
                        let at = ms(killed.elapsed());
                        let ok = connects(vip(i));
                        attempts.lock().unwrap().push((at, ok));
                        if ok {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                });
            }
        });
    });
    attempts.lock().unwrap().sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// The dying host's entries in the pinned worker map.
struct DyingEntries {
    map: Array<MapData, Backend>,
    ids: Vec<u32>,
}

impl DyingEntries {
    fn open(pin_dir: &Path, addresses: &[Ipv4Addr]) -> anyhow::Result<Self> {
        let data = MapData::from_pin(pin_dir.join(map_names::BACKENDS))
            .context("opening the pinned worker map")?;
        let map: Array<MapData, Backend> = Array::try_from(aya::maps::Map::Array(data))?;
        let ids = (0..map.len())
            .filter(|id| {
                map.get(id, 0).is_ok_and(|b| {
                    b.flags & BACKEND_VALID != 0
                        && addresses.iter().any(|a| b.addr[..4] == a.octets())
                })
            })
            .collect();
        Ok(Self { map, ids })
    }

    fn count(&self) -> usize {
        self.ids.len()
    }

    /// How many are marked down or unreachable.
    fn down(&self) -> anyhow::Result<usize> {
        let mut down = 0;
        for id in &self.ids {
            let backend = self.map.get(id, 0)?;
            if backend.flags & (BACKEND_DOWN | BACKEND_UNREACHABLE) != 0 {
                down += 1;
            }
        }
        Ok(down)
    }
}

/// Restarts `lb run` while new connections are tried: (start to the admin
/// socket answering in ms, tried, failed).
fn restart(rig: &mut Rig, args: &[&str], vips: u32) -> anyhow::Result<(f64, u32, u32)> {
    let stop = AtomicBool::new(false);
    let attempts = Mutex::new(Vec::new());
    let started = Instant::now();
    let client = rig.client.clone();
    let restarted = std::thread::scope(|scope| {
        scope.spawn(|| probe(&client, vips, started, &stop, &attempts));
        let result = rig.start_lb(args).map(|()| ms(started.elapsed()));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    let attempts = attempts.into_inner().unwrap();
    let failed = attempts.iter().filter(|(_, ok)| !ok).count() as u32;
    Ok((restarted, attempts.len() as u32, failed))
}

/// `lb status` timed `calls` times (ms).
fn time_status(lb: &LbProcess, calls: u32) -> Samples {
    (0..calls).map(|_| time_one_status(lb)).collect()
}

fn time_one_status(lb: &LbProcess) -> f64 {
    let call = Instant::now();
    let ok = lb.cli_ok(&["status", "-o", "json"]).is_ok();
    if ok {
        ms(call.elapsed())
    } else {
        f64::INFINITY
    }
}

/// CPU time `pid` used over `window`, in % of one core.
fn cpu_percent(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_ticks(pid)?;
    std::thread::sleep(window);
    let used = cpu_ticks(pid)? - before;
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(used as f64 / hz / window.as_secs_f64() * 100.0)
}

/// User plus system time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    Ok(status_field(pid, "VmRSS:")? as f64 / 1024.0)
}

/// A number from /proc/PID/status (kB for sizes).
fn status_field(pid: u32, name: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(name))
        .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
    Ok(line[name.len()..]
        .split_whitespace()
        .next()
        .context("empty field")?
        .parse()?)
}
