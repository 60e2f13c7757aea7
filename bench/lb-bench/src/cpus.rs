//! New flows on every CPU at once: whether inserting into the flow table
//! serialises CPUs. Each case runs single BPF_PROG_TEST_RUNs of new flows
//! (a new 5-tuple every run) on one CPU alone, then on every CPU at once,
//! one thread pinned to each; rounds interleave the cases and the two
//! ways. Throughput is runs per second of kernel-reported run time, so
//! the harness in user space (building frames, the syscall) does not
//! dilute contention in the kernel.

use std::net::{IpAddr, Ipv4Addr};

use floors_common::program_names as floor;
use lb_common::program_names;
use lb_testing::{
    frames::{tcp, Packet},
    testrun::{configure_with, Loaded},
};
use lb_userspace::dataplane::DEFAULT_MAX_FLOWS;

use super::{packet, samples::Samples, Plan};
use crate::floors;

/// One program measured on one CPU and on all.
pub struct Scaling {
    /// What was measured.
    pub name: &'static str,
    /// New flows per second on one CPU alone (millions).
    pub alone: Samples,
    /// New flows per second on every CPU at once, summed (millions).
    pub together: Samples,
    /// `together / (CPUs × alone)`, one per round.
    pub efficiency: Samples,
}

/// The CPUs this process may run on.
pub fn cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is an empty set; the call fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size is the set's.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: the index is within the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: as in `cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from the process's own set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// A program that takes new flows, and where each thread's 5-tuples start.
struct Case {
    name: &'static str,
    on_lb: bool,
    program: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        name: "floor: LRU insert, one LRU list (as lb's flow table)",
        on_lb: false,
        program: floor::INSERT,
    },
    Case {
        name: "floor: LRU insert, a list per CPU (BPF_F_NO_COMMON_LRU)",
        on_lb: false,
        program: floor::INSERT_PERCPU,
    },
    Case {
        name: "lb: IPv4 TCP, new flow (SYN)",
        on_lb: true,
        program: program_names::BALANCER,
    },
];

/// Measures every case; rows in the order of [`CASES`].
pub fn run(plan: &Plan) -> anyhow::Result<Vec<Scaling>> {
    let cpus = cpus()?;
    let mut lb = Loaded::lb(DEFAULT_MAX_FLOWS)?;
    let _config = configure_with(
        &mut lb,
        &packet::vips(),
        packet::WORKERS,
        packet::worker_addr,
        packet::vip_options,
    )?;
    let floors = floors::load()?;
    let mut rows: Vec<Scaling> = CASES
        .iter()
        .map(|c| Scaling {
            name: c.name,
            alone: Samples::default(),
            together: Samples::default(),
            efficiency: Samples::default(),
        })
        .collect();
    // Every run of every thread gets a 5-tuple of its own.
    let mut next = 0u32;
    for _ in 0..plan.rounds {
        for (case, row) in CASES.iter().zip(&mut rows) {
            let target = if case.on_lb { &lb } else { &floors };
            // Alone on each CPU in turn: one CPU may be busier than
            // another with interrupts or the machine's other work.
            let mut alone = 0.0;
            for cpu in &cpus {
                alone += rates(target, case.program, &[*cpu], plan.singles, &mut next)?[0];
            }
            let alone = alone / cpus.len() as f64;
            let together = rates(target, case.program, &cpus, plan.singles, &mut next)?;
            let sum: f64 = together.iter().sum();
            row.alone.push(alone / 1e6);
            row.together.push(sum / 1e6);
            row.efficiency.push(sum / (cpus.len() as f64 * alone));
        }
    }
    Ok(rows)
}

/// New flows per second of kernel run time of `count` single runs on each
/// of `cpus` at once.
fn rates(
    target: &Loaded,
    program: &str,
    cpus: &[usize],
    count: u32,
    next: &mut u32,
) -> anyhow::Result<Vec<f64>> {
    let starts: Vec<u32> = cpus
        .iter()
        .map(|_| {
            let start = *next;
            *next += count;
            start
        })
        .collect();
    // Frames are built before the threads start, so that building them
    // never overlaps another thread's runs.
    let frames: Vec<Vec<Vec<u8>>> = starts
        .iter()
        .map(|&start| (start..start + count).map(new_flow).collect())
        .collect();
    std::thread::scope(|scope| {
        let threads: Vec<_> = cpus
            .iter()
            .zip(&frames)
            .map(|(&cpu, frames)| {
                scope.spawn(move || -> anyhow::Result<f64> {
                    pin_to(cpu)?;
                    let mut ns = 0.0;
                    for frame in frames {
                        ns += target.run(program, frame, 1)?.1;
                    }
                    Ok(frames.len() as f64 / (ns / 1e9))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a test-run thread panicked"))
            .collect()
    })
}

/// A SYN of new connection `n` to the per-packet configuration's IPv4 VIP.
fn new_flow(n: u32) -> Vec<u8> {
    let [_, host, hi, lo] = n.to_be_bytes();
    let src = IpAddr::V4(Ipv4Addr::new(198, 51, 100, host));
    let sport = u16::from_be_bytes([hi, lo]).max(1);
    let vip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100));
    Packet::tcp(src, sport, vip, 80, tcp::SYN).build()
}

/// docs/cpus.svg: for each case, new flows per second on one CPU and on
/// every CPU at once, with a tick at what perfect scaling would give.
pub fn svg(rows: &[Scaling], cpus: usize) -> String {
    const LEFT: f64 = 70.0;
    const BOTTOM: f64 = 300.0;
    const HEIGHT: f64 = 240.0;
    const GROUP: f64 = 230.0;
    const BAR: f64 = 70.0;
    let ideal = |row: &Scaling| row.alone.median() * cpus as f64;
    let top = rows
        .iter()
        .map(|r| ideal(r).max(r.together.median()))
        .fold(0.0, f64::max)
        .max(0.1)
        * 1.1;
    let y = |rate: f64| BOTTOM - rate / top * HEIGHT;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"380\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"24\" font-size=\"14\">New flows, M/s of program time: one CPU \
         (grey), {cpus} at once (blue), {cpus} × one CPU (tick)</text>\n\
         <line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{:.1}\" y2=\"{BOTTOM}\" stroke=\"black\"/>\n",
        LEFT + GROUP * rows.len() as f64 + 20.0,
        BOTTOM - HEIGHT
    );
    for step in 0..=4 {
        let rate = top / 4.0 * f64::from(step);
        out += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{rate:.1}</text>\n",
            LEFT - 6.0,
            y(rate) + 4.0
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let x = LEFT + 20.0 + GROUP * i as f64;
        for (offset, rate, colour) in [
            (0.0, row.alone.median(), "#999999"),
            (BAR + 10.0, row.together.median(), "#1f77b4"),
        ] {
            out += &format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{BAR}\" height=\"{:.1}\" fill=\"{colour}\"/>\n",
                x + offset,
                y(rate),
                BOTTOM - y(rate)
            );
        }
        let (tick_y, middle) = (y(ideal(row)), x + BAR + 5.0);
        out += &format!(
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{tick_y:.1}\" y2=\"{tick_y:.1}\" stroke=\"black\" stroke-width=\"2\"/>\n\
             <text x=\"{middle:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
             <text x=\"{middle:.1}\" y=\"{:.1}\" text-anchor=\"middle\">efficiency {:.2}</text>\n",
            x + BAR + 10.0,
            x + 2.0 * BAR + 10.0,
            BOTTOM + 18.0,
            short_name(row.name),
            BOTTOM + 36.0,
            row.efficiency.median()
        );
    }
    out += "</svg>\n";
    out
}

/// A case's name without its kind and its parenthesis, for the plot.
fn short_name(name: &str) -> &str {
    let name = name.split_once(": ").map_or(name, |(_, rest)| rest);
    let end = name.find('(').unwrap_or(name.len());
    name[..end].trim()
}
