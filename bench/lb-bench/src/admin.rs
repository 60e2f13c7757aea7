//! Admin latency under controller load (issue 14): `lb status` and
//! `lb backend list`, each timed as a whole CLI run (what an operator
//! waits for), with the controller idle, while workers that never resolve
//! are being added one `lb backend add` at a time, and while all their
//! health checks time out.
//!
//! The workers are IPv6 addresses on the balancer's own /64 that no host
//! has, so the kernel tries neighbour discovery for each, and a TCP check
//! waits for a neighbour that never answers until its timeout (the kernel
//! gives up on resolution only after about 3 s).

use std::{
    collections::BTreeMap,
    fmt,
    net::Ipv6Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_testing::{rig::Rig, testbed::LbProcess};

use super::{samples::Samples, Plan};

/// The VIP, with the checks spelt out (they are the defaults).
const VIP: &str = "[2001:db8::100]:80/tcp";
const CHECKS: [&str; 6] = [
    "--health",
    "tcp",
    "--health-interval",
    "1s",
    "--health-timeout",
    "500ms",
];

/// The commands timed, by the name the report gives them.
pub const COMMANDS: [(&str, &[&str]); 2] = [
    ("`lb status -o json`", &["status", "-o", "json"]),
    (
        "`lb backend list -o json`",
        &["backend", "list", "-o", "json"],
    ),
];

/// Bounds on the calls of the phase under adds.
const ADDING_MAX_CALLS: u32 = 20_000;
const ADDING_MAX_TIME: Duration = Duration::from_secs(300);

/// What the controller is doing while the commands are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing but its one real worker's checks.
    Idle,
    /// Taking `lb backend add` of unresolvable workers, one after another.
    Adding,
    /// Checking every unresolvable worker; every check times out.
    TimingOut,
    /// Holding every worker, its checks turned off: the baseline of
    /// [`Phase::TimingOut`], whose listings are as long.
    IdleFull,
}

impl Phase {
    /// The idle phase this one is compared with.
    pub fn baseline(self) -> Self {
        match self {
            Self::TimingOut => Self::IdleFull,
            _ => Self::Idle,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Idle => "idle",
            Self::Adding => "adding unresolvable workers",
            Self::TimingOut => "their checks timing out",
            Self::IdleFull => "idle with every worker, checks off",
        })
    }
}

/// One command's latencies in one phase.
pub struct Row {
    /// The phase.
    pub phase: Phase,
    /// The command, as [`COMMANDS`] names it.
    pub command: &'static str,
    /// Whole CLI runs (ms).
    pub ms: Samples,
}

/// The section's results.
pub struct Latency {
    /// Every phase × command.
    pub rows: Vec<Row>,
    /// What the unresolvable workers' last checks said at the end, with
    /// counts (`none yet` before the first).
    pub checks: BTreeMap<String, usize>,
    /// Their states at the end, with counts.
    pub states: BTreeMap<String, usize>,
    /// Each `lb backend add` of the adding phase (ms).
    pub adds: Samples,
}

/// Worker `i` of the unresolvable ones: 2001:db8::1:i+1, on the rig's
/// /64 (the rig's hosts are 2001:db8::N).
fn unresolvable(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, i as u16 + 1)
}

/// Runs the three phases on a rig of its own.
pub fn run(plan: &Plan) -> anyhow::Result<Latency> {
    let rig = Rig::new(&plan.lb, 1, &[])?;
    rig.add_vip_with_workers(VIP, &CHECKS)?;
    let mut rows = Vec::new();
    let mut record = |phase, samples: [Samples; 2]| {
        for ((command, _), ms) in COMMANDS.iter().zip(samples) {
            rows.push(Row { phase, command, ms });
        }
    };
    eprintln!("bench:   idle");
    record(
        Phase::Idle,
        measure(&rig.lb, plan.admin_calls, Duration::from_secs(120), || true)?,
    );
    eprintln!("bench:   adding {} workers", plan.admin_workers);
    let (adds, samples) = while_adding(&rig.lb, plan.admin_workers)?;
    record(Phase::Adding, samples);
    eprintln!("bench:   {} checks timing out", plan.admin_workers);
    let seconds = Duration::from_secs(plan.admin_timeout_seconds.into());
    record(
        Phase::TimingOut,
        measure(&rig.lb, u32::MAX, seconds, || true)?,
    );
    let (checks, states) = outcome(&rig.lb)?;
    eprintln!("bench:   idle with every worker");
    rig.lb.cli_ok(&["vip", "set", VIP, "--health", "none"])?;
    record(
        Phase::IdleFull,
        measure(&rig.lb, plan.admin_calls, Duration::from_secs(120), || true)?,
    );
    Ok(Latency {
        rows,
        checks,
        states,
        adds,
    })
}

/// Adds `workers` unresolvable workers in a thread while timing the
/// commands here, until the adds are done; returns the adds' times too.
fn while_adding(lb: &LbProcess, workers: u32) -> anyhow::Result<(Samples, [Samples; 2])> {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let adder = scope.spawn(|| {
            let added = (0..workers)
                .map(|i| {
                    let call = Instant::now();
                    lb.cli_ok(&["backend", "add", VIP, &unresolvable(i).to_string()])?;
                    Ok(call.elapsed().as_secs_f64() * 1e3)
                })
                .collect::<anyhow::Result<Samples>>();
            done.store(true, Ordering::Relaxed);
            added
        });
        let samples = measure(lb, ADDING_MAX_CALLS, ADDING_MAX_TIME, || {
            !done.load(Ordering::Relaxed)
        });
        let adds = adder
            .join()
            .map_err(|_| anyhow::anyhow!("the adding thread panicked"))??;
        Ok((adds, samples?))
    })
}

/// Times each command in turn, up to `calls` times each, for at most
/// `limit`, while `busy` holds.
fn measure(
    lb: &LbProcess,
    calls: u32,
    limit: Duration,
    busy: impl Fn() -> bool,
) -> anyhow::Result<[Samples; 2]> {
    let mut samples = [Samples::default(), Samples::default()];
    let started = Instant::now();
    let mut made = 0;
    while made < calls && started.elapsed() < limit && busy() {
        for ((_, args), ms) in COMMANDS.iter().zip(&mut samples) {
            let call = Instant::now();
            lb.cli_ok(args)?;
            ms.push(call.elapsed().as_secs_f64() * 1e3);
        }
        made += 1;
    }
    Ok(samples)
}

/// The unresolvable workers' last check details and states, counted.
fn outcome(lb: &LbProcess) -> anyhow::Result<(BTreeMap<String, usize>, BTreeMap<String, usize>)> {
    let list: serde_json::Value =
        serde_json::from_str(&lb.cli_ok(&["backend", "list", "-o", "json"])?)?;
    let (mut checks, mut states) = (BTreeMap::new(), BTreeMap::new());
    let workers = list.as_array().into_iter().flatten();
    for worker in workers.filter(|w| {
        w["worker"]
            .as_str()
            .is_some_and(|a| a.starts_with("2001:db8::1:"))
    }) {
        let check = worker["check"]["detail"].as_str().unwrap_or("none yet");
        *checks.entry(check.to_owned()).or_default() += 1;
        let state = worker["state"].as_str().unwrap_or("?");
        *states.entry(state.to_owned()).or_default() += 1;
    }
    Ok((checks, states))
}
