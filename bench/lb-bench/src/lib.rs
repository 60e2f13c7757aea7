//! `cargo xtask bench`: lb's costs measured next to references in the
//! same run, written to docs/BENCHMARKS.md. Every figure is a median over
//! interleaved rounds (A B A B …) and is quoted as a ratio to a reference
//! from the same rounds, because this kind of machine is shared and noisy.

pub mod admin;
pub mod announce;
pub mod control;
pub mod cpus;
pub mod e2e;
pub mod fleet;
pub mod floors;
pub mod latency;
pub mod packet;
pub mod report;
pub mod samples;
pub mod scale;

use std::path::PathBuf;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Interleaved rounds per figure.
    pub rounds: u32,
    /// Single test runs averaged into one per-packet sample.
    pub singles: u32,
    /// Repeat count of the repeated-run figures.
    pub repeat: u32,
    /// Flow-table sizes of the scale section.
    pub scale_sizes: Vec<u32>,
    /// Trials of each control-plane timing.
    pub control_trials: u32,
    /// Length of each end-to-end load run.
    pub e2e_seconds: u32,
    /// Calls of each admin command with the controller idle.
    pub admin_calls: u32,
    /// Unresolvable workers the admin section adds.
    pub admin_workers: u32,
    /// How long the admin section times commands while their checks time
    /// out.
    pub admin_timeout_seconds: u32,
    /// Fleets of the fleet section: (VIPs, worker entries).
    pub fleets: Vec<(u32, u32)>,
    /// How long the fleet section measures steady-state CPU.
    pub fleet_idle_seconds: u32,
    /// Trials of each announcement scenario (a BGP rig each).
    pub announce_trials: u32,
    /// The short smoke-test version.
    pub quick: bool,
    /// The `lb` binary the end-to-end parts run.
    pub lb: PathBuf,
}

impl Plan {
    /// The full plan, or the quick one CI uses to check the bench runs.
    pub fn new(quick: bool, lb: PathBuf) -> Self {
        if quick {
            Self {
                rounds: 3,
                singles: 200,
                repeat: 1000,
                scale_sizes: vec![1_000, 100_000],
                control_trials: 1,
                e2e_seconds: 1,
                admin_calls: 30,
                admin_workers: 50,
                admin_timeout_seconds: 2,
                fleets: vec![(20, 200)],
                fleet_idle_seconds: 2,
                announce_trials: 1,
                quick,
                lb,
            }
        } else {
            Self {
                rounds: 15,
                singles: 2000,
                repeat: 100_000,
                scale_sizes: vec![1_000, 100_000, 1_000_000, 10_000_000],
                control_trials: 5,
                e2e_seconds: 5,
                admin_calls: 200,
                admin_workers: 1000,
                admin_timeout_seconds: 10,
                fleets: vec![(500, 4096), (500, 10_000)],
                fleet_idle_seconds: 10,
                announce_trials: 5,
                quick,
                lb,
            }
        }
    }
}

/// Everything one run measured.
pub struct Results {
    /// Per-packet rows.
    pub packet: Vec<packet::Row>,
    /// New flows on one CPU and on every CPU at once.
    pub cpus: Vec<cpus::Scaling>,
    /// Flow-table scale rows.
    pub scale: Vec<scale::Row>,
    /// Maglev builds.
    pub maglev: Vec<control::MaglevRow>,
    /// `lb backend add` to first forwarded packet (ms).
    pub add_to_first_packet: samples::Samples,
    /// Worker death to removal (ms).
    pub death_to_removal: samples::Samples,
    /// Admin command latency, idle and under controller load.
    pub admin: admin::Latency,
    /// Fleets at the limits, a host dying.
    pub fleets: Vec<fleet::Fleet>,
    /// End to end, every mode under every load.
    pub e2e: Vec<e2e::Cell>,
    /// Latency under constant load.
    pub latency: latency::Latency,
    /// Announcements: planned withdrawals and balancer failures.
    pub announce: announce::Announcements,
}

/// Runs every section and returns the results.
pub fn measure(plan: &Plan) -> anyhow::Result<Results> {
    eprintln!("bench: per-packet cost ({} rounds)", plan.rounds);
    let packet = packet::run(plan)?;
    eprintln!("bench: new flows on every CPU at once");
    let cpus = cpus::run(plan)?;
    eprintln!("bench: flow-table scale {:?}", plan.scale_sizes);
    let scale = scale::run(plan)?;
    eprintln!("bench: control plane");
    let maglev = control::maglev_builds(plan);
    let add_to_first_packet = control::add_to_first_packet(plan, &plan.lb)?;
    let death_to_removal = control::death_to_removal(plan, &plan.lb)?;
    eprintln!("bench: admin latency under load");
    let admin = admin::run(plan)?;
    let fleets = fleets(plan)?;
    eprintln!("bench: end to end");
    let stats = e2e::BpfStats::enable()?;
    let e2e = e2e::run(plan)?;
    drop(stats);
    eprintln!("bench: latency under constant load");
    let latency = latency::run(plan)?;
    eprintln!(
        "bench: announcements ({} trials of each)",
        plan.announce_trials
    );
    let announce = announce::run(plan)?;
    Ok(Results {
        packet,
        cpus,
        scale,
        maglev,
        add_to_first_packet,
        death_to_removal,
        admin,
        fleets,
        e2e,
        latency,
        announce,
    })
}

/// The fleet section: every fleet of the plan.
pub fn fleets(plan: &Plan) -> anyhow::Result<Vec<fleet::Fleet>> {
    plan.fleets
        .iter()
        .map(|&(vips, entries)| {
            eprintln!("bench: fleet of {vips} VIPs, {entries} worker entries");
            fleet::run(plan, vips, entries)
        })
        .collect()
}
