//! Latency as users feel a balancer: HTTP requests at a constant rate
//! (open loop, wrk2-style) at fractions of the no-balancer maximum, on the
//! end-to-end rig, every mode interleaved.
//!
//! Each of `CONNECTIONS` keep-alive connections has its own fixed
//! schedule (rate / connections per second, the connections evenly
//! staggered); a request's latency runs from its *scheduled* send time to
//! the end of its response, so a stalled response also counts against the
//! requests queued behind it (no coordinated omission). Send times come
//! from a timerfd per connection: tokio's own timers tick in milliseconds,
//! coarser than the latencies measured here.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::{body::Bytes, client::conn::http1::SendRequest, Request};
use hyper_util::rt::TokioIo;
use lb_testing::rig::Rig;
use tokio::{io::unix::AsyncFd, net::TcpStream};

use super::{
    e2e::{Mode, Setup},
    samples::Samples,
    Plan,
};

/// The modes in the order they are interleaved.
pub const MODES: [Mode; 6] = [
    Mode::Direct,
    Mode::Nftables,
    Mode::Haproxy,
    Mode::Lb,
    Mode::LbIpip,
    Mode::Floor,
];
/// Offered loads, percent of the no-balancer maximum.
pub const LOADS: [u32; 3] = [25, 50, 75];
/// Keep-alive connections of the generator.
pub const CONNECTIONS: usize = 16;
/// The real-time priority (SCHED_FIFO) of the generator and the servers:
/// other work on the machine (builds) then disturbs the figures less, as
/// a waking generator or server need not wait out a build's time slice.
const PRIORITY: i32 = 1;
/// How long the generator waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The percentiles reported.
pub const PERCENTILES: [f64; 3] = [50.0, 99.0, 99.9];

/// How long each run lasts.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Scheduled but not recorded: connections and flows settle.
    pub warmup: Duration,
    /// Scheduled and recorded.
    pub measured: Duration,
    /// How long requests may still be answered after the schedule ends;
    /// what is unanswered then counts with its latency so far.
    pub drain: Duration,
}

/// One mode at one load, over the rounds.
pub struct Cell {
    /// The mode.
    pub mode: Mode,
    /// Percent of the maximum offered.
    pub load: u32,
    /// Per round, each of [`PERCENTILES`] (µs).
    pub percentiles: [Samples; 3],
    /// Per round, each of [`PERCENTILES`] minus the no-balancer one of the
    /// same round and load (µs).
    pub added: [Samples; 3],
    /// Per round, the share of recorded requests answered in time.
    pub answered: Samples,
    /// Per round, connection or HTTP errors.
    pub errors: Samples,
}

/// What the section measured.
pub struct Latency {
    /// The no-balancer maximum of the generator itself, its connections
    /// sending back to back, per run (requests/s).
    pub max_runs: Samples,
    /// Length of each of those runs (s).
    pub max_seconds: u32,
    /// Rounds of the interleaved runs.
    pub rounds: u32,
    /// Run lengths.
    pub timing: Timing,
    /// Every mode at every load.
    pub cells: Vec<Cell>,
    /// Whether the generator and the servers ran at real-time priority.
    pub realtime: bool,
}

impl Latency {
    /// The maximum the loads are fractions of (median of the runs).
    pub fn max_rate(&self) -> f64 {
        self.max_runs.median()
    }

    /// The offered rate at `load` percent (requests/s).
    pub fn rate(&self, load: u32) -> f64 {
        self.max_rate() * f64::from(load) / 100.0
    }

    /// One mode at one load.
    pub fn cell(&self, mode: Mode, load: u32) -> &Cell {
        self.cells
            .iter()
            .find(|c| c.mode == mode && c.load == load)
            .expect("every mode ran every load")
    }

    /// The median over rounds of `mode`'s added percentile `index` (of
    /// [`PERCENTILES`]) at `load` (µs).
    pub fn added(&self, mode: Mode, load: u32, index: usize) -> f64 {
        self.cell(mode, load).added[index].median()
    }
}

/// Measures the no-balancer maximum, then every mode at every load.
pub fn run(plan: &Plan) -> anyhow::Result<Latency> {
    let (rounds, timing) = if plan.quick {
        (
            1,
            Timing {
                warmup: Duration::from_millis(200),
                measured: Duration::from_millis(500),
                drain: Duration::from_millis(500),
            },
        )
    } else {
        (
            5,
            Timing {
                warmup: Duration::from_secs(1),
                measured: Duration::from_secs(u64::from(plan.e2e_seconds)),
                drain: Duration::from_secs(1),
            },
        )
    };
    let mut setup = Setup::new(Rig::new(&plan.lb, 1, &[])?)?;
    setup.add_ipip(&plan.lb)?;
    let realtime = match prioritise_servers(&setup) {
        Ok(()) => true,
        Err(error) => {
            eprintln!("bench: warning: {error:#}; latency figures will be noisier");
            false
        }
    };
    for mode in MODES {
        let target = SocketAddr::from((Setup::target(mode), 80));
        setup
            .client()
            .within(|| lb_testing::testbed::wait_for_listener(target, Duration::from_secs(5)))??;
    }
    let max_seconds = u32::try_from(timing.measured.as_secs().max(1))?;
    // The generator's own maximum, not wrk's: a fraction of a rate the
    // generator can't offer would measure its queue, not the balancer.
    let direct = SocketAddr::from((Setup::target(Mode::Direct), 80));
    let max_runs = (0..rounds.min(3))
        .map(|_| {
            setup
                .client()
                .within(|| closed_loop(direct, timing.measured, realtime))?
        })
        .collect::<anyhow::Result<Samples>>()?;
    let mut latency = Latency {
        max_runs,
        max_seconds,
        rounds,
        realtime,
        timing,
        cells: LOADS
            .iter()
            .flat_map(|&load| {
                MODES.iter().map(move |&mode| Cell {
                    mode,
                    load,
                    percentiles: Default::default(),
                    added: Default::default(),
                    answered: Samples::default(),
                    errors: Samples::default(),
                })
            })
            .collect(),
    };
    eprintln!(
        "bench: latency: no-balancer maximum {:.0} requests/s",
        latency.max_rate()
    );
    for round in 0..rounds {
        eprintln!("bench: latency, round {} of {rounds}", round + 1);
        for load in LOADS {
            let rate = latency.rate(load);
            // MODES starts with the no-balancer run the others subtract.
            let mut direct = [f64::NAN; 3];
            for mode in MODES {
                let target = SocketAddr::from((Setup::target(mode), 80));
                let result = setup
                    .client()
                    .within(|| paced(target, rate, timing, realtime))??;
                let cell = latency
                    .cells
                    .iter_mut()
                    .find(|c| c.mode == mode && c.load == load)
                    .expect("every cell was made");
                eprintln!(
                    "bench:   {mode} at {load}% ({rate:.0}/s): p50 {:.0} µs, p99 {:.0} µs, \
                     {} unanswered, {} errors; timer late p50 {:.0} µs, p99 {:.0} µs",
                    result.latencies.percentile(50.0),
                    result.latencies.percentile(99.0),
                    result.unanswered,
                    result.errors,
                    result.wake_lag.percentile(50.0),
                    result.wake_lag.percentile(99.0),
                );
                let figures = PERCENTILES.map(|q| result.latencies.percentile(q));
                if mode == Mode::Direct {
                    direct = figures;
                }
                cell.record(&result, figures, direct);
            }
        }
    }
    Ok(latency)
}

impl Cell {
    fn record(&mut self, run: &Run, figures: [f64; 3], direct: [f64; 3]) {
        for i in 0..PERCENTILES.len() {
            self.percentiles[i].push(figures[i]);
            self.added[i].push(figures[i] - direct[i]);
        }
        let recorded = run.latencies.len() as f64;
        self.answered
            .push((recorded - run.unanswered as f64) / recorded);
        self.errors.push(run.errors as f64);
    }
}

/// One paced run.
struct Run {
    /// Every recorded request's latency (µs), unanswered ones with their
    /// latency at the end of the drain.
    latencies: Samples,
    /// Recorded requests unanswered by the end of the drain.
    unanswered: u64,
    /// Connection or HTTP errors (each loses the request it happened to).
    errors: u64,
    /// How late the timer woke for each request it waited for (µs): the
    /// generator's own error, printed while the bench runs.
    wake_lag: Samples,
}

/// One connection's share of a run.
#[derive(Default)]
struct Share {
    latencies: Vec<f64>,
    unanswered: u64,
    errors: u64,
    wake_lag: Vec<f64>,
}

/// Gives every process in the worker's and the balancer's namespaces
/// (nginx, HAProxy, lb's controller, an idle iperf3) [`PRIORITY`].
fn prioritise_servers(setup: &Setup) -> anyhow::Result<()> {
    for host in setup.servers() {
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", &host.netns])
            .output()
            .context("running ip netns pids")?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            prioritise(pid.parse()?)?;
        }
    }
    Ok(())
}

/// The generator's runtime on the calling thread, which runs at real-time
/// priority when `realtime`.
fn generator(realtime: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    if realtime {
        prioritise(0)?;
    }
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The generator's [`CONNECTIONS`] keep-alive connections to `target`.
async fn connections(target: SocketAddr) -> anyhow::Result<Vec<SendRequest<Empty<Bytes>>>> {
    let mut senders = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        senders.push(tokio::time::timeout(CONNECT_TIMEOUT, connect(target)).await??);
    }
    Ok(senders)
}

/// Requests/s the generator gets through to `target` with each connection
/// sending its next request as soon as the last is answered, for
/// `measured`, in the calling thread (so in its network namespace).
fn closed_loop(target: SocketAddr, measured: Duration, realtime: bool) -> anyhow::Result<f64> {
    generator(realtime)?.block_on(async {
        let senders = connections(target).await?;
        let end = tokio::time::Instant::now() + measured;
        let tasks: Vec<_> = senders
            .into_iter()
            .map(|mut sender| {
                tokio::spawn(async move {
                    let mut answered = 0u64;
                    while tokio::time::Instant::now() < end {
                        tokio::time::timeout_at(end + CONNECT_TIMEOUT, get(&mut sender)).await??;
                        answered += 1;
                    }
                    anyhow::Ok(answered)
                })
            })
            .collect();
        let mut answered = 0;
        for task in tasks {
            answered += task.await??;
        }
        Ok(answered as f64 / measured.as_secs_f64())
    })
}

/// Offers `rate` requests/s to `target` for the warm-up and the measured
/// time, in the calling thread (so in its network namespace).
fn paced(target: SocketAddr, rate: f64, timing: Timing, realtime: bool) -> anyhow::Result<Run> {
    generator(realtime)?.block_on(async {
        let senders = connections(target).await?;
        let start = now_ns() + 10_000_000;
        let schedule = Schedule {
            record_from: start + nanos(timing.warmup),
            end: start + nanos(timing.warmup + timing.measured),
            deadline: start + nanos(timing.warmup + timing.measured + timing.drain),
            interval: CONNECTIONS as f64 * 1e9 / rate,
        };
        let tasks: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(i, sender)| {
                let first = start + (i as f64 * 1e9 / rate) as u64;
                tokio::spawn(connection(target, sender, first, schedule))
            })
            .collect();
        let mut run = Run {
            latencies: Samples::default(),
            unanswered: 0,
            errors: 0,
            wake_lag: Samples::default(),
        };
        for task in tasks {
            let share = task.await??;
            share
                .latencies
                .into_iter()
                .for_each(|l| run.latencies.push(l));
            run.unanswered += share.unanswered;
            run.errors += share.errors;
            share
                .wake_lag
                .into_iter()
                .for_each(|l| run.wake_lag.push(l));
        }
        anyhow::ensure!(!run.latencies.is_empty(), "no request was recorded");
        Ok(run)
    })
}

/// A connection's timetable (CLOCK_MONOTONIC ns).
#[derive(Clone, Copy)]
struct Schedule {
    record_from: u64,
    end: u64,
    deadline: u64,
    interval: f64,
}

/// Sends a connection's scheduled requests in order, one at a time.
async fn connection(
    target: SocketAddr,
    mut sender: SendRequest<Empty<Bytes>>,
    first: u64,
    schedule: Schedule,
) -> anyhow::Result<Share> {
    let timer = Timer::new()?;
    let mut share = Share::default();
    let mut alive = true;
    let deadline = tokio::time::Instant::now()
        + Duration::from_nanos(schedule.deadline.saturating_sub(now_ns()));
    for k in 0.. {
        let due = first + (k as f64 * schedule.interval) as u64;
        if due >= schedule.end {
            break;
        }
        let recorded = due >= schedule.record_from;
        if !alive || now_ns() >= schedule.deadline {
            if recorded {
                share.unanswered += 1;
                share.latencies.push(micros(schedule.deadline - due));
            }
            continue;
        }
        if due > now_ns() {
            timer.until(due).await?;
            share.wake_lag.push(micros(now_ns() - due));
        }
        match tokio::time::timeout_at(deadline, get(&mut sender)).await {
            Ok(Ok(())) => {
                if recorded {
                    share.latencies.push(micros(now_ns() - due));
                }
            }
            Ok(Err(_)) => {
                // A lost request: counted, and the next goes on a new
                // connection (a failed one cannot send again).
                share.errors += 1;
                match tokio::time::timeout_at(deadline, connect(target)).await {
                    Ok(Ok(new)) => sender = new,
                    _ => alive = false,
                }
            }
            Err(_) => {
                if recorded {
                    share.unanswered += 1;
                    share.latencies.push(micros(schedule.deadline - due));
                }
            }
        }
    }
    Ok(share)
}

async fn connect(target: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One GET of `/`, its whole response read.
async fn get(sender: &mut SendRequest<Empty<Bytes>>) -> anyhow::Result<()> {
    sender.ready().await?;
    let request = Request::get("/")
        .header(hyper::header::HOST, "bench")
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.status());
    response.into_body().collect().await?;
    Ok(())
}

/// A timerfd on CLOCK_MONOTONIC, awaited through tokio.
struct Timer(AsyncFd<OwnedFd>);

impl Timer {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is checked and owned below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nothing else owns; the OwnedFd
        // stays in the AsyncFd until both are dropped together.
        Ok(Self(unsafe {
            AsyncFd::register(OwnedFd::from_raw_fd(fd))?
        }))
    }

    /// Waits until CLOCK_MONOTONIC reads `at` (ns).
    async fn until(&self, at: u64) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at / 1_000_000_000) as libc::time_t,
                tv_nsec: (at % 1_000_000_000) as libc::c_long,
            },
        };
        let fd = self.0.get_ref().as_raw_fd();
        // SAFETY: valid fd and itimerspec; no old value wanted.
        if unsafe {
            libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.0.readable().await?;
            let fired = guard.try_io(|inner| {
                let mut expirations = [0u8; 8];
                // SAFETY: reads 8 bytes into an 8-byte buffer.
                let n = unsafe {
                    libc::read(
                        inner.get_ref().as_raw_fd(),
                        expirations.as_mut_ptr().cast(),
                        8,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            if let Ok(result) = fired {
                return result;
            }
        }
    }
}

/// Sets [`PRIORITY`] on a process's main thread (the servers here run
/// one thread), or on the calling thread for 0.
fn prioritise(pid: libc::pid_t) -> anyhow::Result<()> {
    let param = libc::sched_param {
        sched_priority: PRIORITY,
    };
    // SAFETY: valid pointer to a sched_param.
    if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("making {pid} SCHED_FIFO"));
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns (the timerfd's clock).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Colours of the modes in the plot, in [`MODES`] order.
const COLOURS: [&str; 6] = [
    "#555555", "#d62728", "#ff7f0e", "#1f77b4", "#17becf", "#2ca02c",
];

/// docs/latency.svg: p99 (solid) and p50 (dashed) against offered load,
/// one colour per mode, latency on a log scale.
pub fn svg(latency: &Latency) -> String {
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 540.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 380.0;
    let values: Vec<f64> = latency
        .cells
        .iter()
        .flat_map(|c| [c.percentiles[0].median(), c.percentiles[1].median()])
        .filter(|v| *v > 0.0)
        .collect();
    let low = values
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor();
    let high = values
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .log10()
        .ceil()
        .max(low + 1.0);
    let x = |load: u32| LEFT + (f64::from(load) - 15.0) / 70.0 * (RIGHT - LEFT);
    let y = |us: f64| BOTTOM - (us.log10() - low) / (high - low) * (BOTTOM - TOP);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\" height=\"440\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"800\" height=\"440\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"22\" font-size=\"14\">Latency against offered load \
         (medians over rounds: {}; solid p99, dashed p50)</text>\n",
        latency.rounds
    );
    for decade in low as i32..=high as i32 {
        let v = 10f64.powi(decade);
        let y = y(v);
        out += &format!(
            "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            LEFT - 6.0,
            y + 4.0,
            duration_label(v)
        );
    }
    for load in LOADS {
        let x = x(load);
        out += &format!(
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{BOTTOM}\" stroke=\"#ddd\"/>\n\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{load}% ({:.0}/s)</text>\n",
            BOTTOM + 18.0,
            latency.rate(load)
        );
    }
    out += &format!(
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">offered load, % of the no-balancer \
         maximum (requests/s)</text>\n",
        RIGHT - LEFT,
        BOTTOM - TOP,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 40.0
    );
    for (i, (mode, colour)) in MODES.iter().zip(COLOURS).enumerate() {
        for (index, dash) in [(1, ""), (0, " stroke-dasharray=\"5,4\"")] {
            let points: Vec<String> = LOADS
                .iter()
                .map(|&load| {
                    (
                        x(load),
                        latency.cell(*mode, load).percentiles[index].median(),
                    )
                })
                .filter(|(_, v)| *v > 0.0)
                .map(|(x, v)| format!("{x:.1},{:.1}", y(v)))
                .collect();
            out += &format!(
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>\n",
                points.join(" ")
            );
            for point in &points {
                let (px, py) = point.split_once(',').expect("formatted above");
                out += &format!("<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{colour}\"/>\n");
            }
        }
        let ly = TOP + 10.0 + i as f64 * 22.0;
        out += &format!(
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            RIGHT + 15.0,
            RIGHT + 40.0,
            RIGHT + 46.0,
            ly + 4.0,
            escape(&mode.to_string())
        );
    }
    out += "</svg>\n";
    out
}

fn duration_label(us: f64) -> String {
    match us {
        v if v >= 1e6 => format!("{:.0} s", v / 1e6),
        v if v >= 1e3 => format!("{:.0} ms", v / 1e3),
        v if v >= 1.0 => format!("{v:.0} µs"),
        v => format!("{v} µs"),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
