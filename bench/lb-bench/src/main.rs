//! `lb-bench`: what `cargo xtask bench` runs (as root).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Parser;
use lb_bench::{self as bench, report, Plan};

/// Measures lb against floors and references; writes docs/BENCHMARKS.md.
#[derive(Parser)]
#[command(name = "lb-bench")]
struct Args {
    /// A short run that checks the bench works (CI); rough figures.
    #[arg(long)]
    quick: bool,
    /// Where to write the report.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
    /// The `lb` binary for the parts that run it (default: next to this one).
    #[arg(long)]
    lb: Option<PathBuf>,
    /// Measure one section only and print it (the report file is left
    /// alone; `latency` writes its plot next to it): for working on that
    /// section.
    #[arg(long, value_enum)]
    only: Option<Section>,
}

/// The sections `--only` can run.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Section {
    /// Per-packet cost next to the floors.
    Packet,
    /// New flows on one CPU and on every CPU at once.
    Cpus,
    /// Announcements through BIRD: planned withdrawals, balancer failures.
    Announce,
    /// Admin latency under controller load.
    Admin,
    /// Fleets at the limits, a host dying.
    Fleet,
    /// Latency under constant load (also writes its plot).
    Latency,
    /// End to end beside nftables, HAProxy and the stateless forwarder.
    E2e,
}

fn main() {
    if let Err(error) = run(Args::parse()) {
        eprintln!("lb-bench: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let lb = match args.lb {
        Some(lb) => lb,
        None => std::env::current_exe()?
            .parent()
            .context("lb-bench has no directory")?
            .join("lb"),
    };
    anyhow::ensure!(
        lb.is_file(),
        "no lb binary at {}; build it or pass --lb",
        lb.display()
    );
    let plan = Plan::new(args.quick, lb);
    if let Some(section) = args.only {
        let text = match section {
            Section::Packet => report::per_packet(&plan, &bench::packet::run(&plan)?),
            Section::Cpus => {
                let rows = bench::cpus::run(&plan)?;
                write_cpus_plot(&args.out, &rows)?;
                report::cpus(&plan, &rows)
            }
            Section::Announce => report::announcements(&plan, &bench::announce::run(&plan)?),
            Section::Admin => report::admin(&plan, &bench::admin::run(&plan)?),
            Section::Fleet => report::fleet(&bench::fleets(&plan)?),
            Section::Latency => {
                let latency = bench::latency::run(&plan)?;
                write_plot(&args.out, &latency)?;
                report::latency_targets(&latency) + &report::latency(&latency)
            }
            Section::E2e => report::end_to_end(&plan, &bench::e2e::run(&plan)?),
        };
        print!("{text}");
        return Ok(());
    }
    let results = bench::measure(&plan)?;
    let text = report::render(&plan, &results);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &text).with_context(|| format!("writing {}", args.out.display()))?;
    write_plot(&args.out, &results.latency)?;
    write_cpus_plot(&args.out, &results.cpus)?;
    print!("{text}");
    Ok(())
}

/// The latency plot, latency.svg next to the report `out` (the report
/// links it by that name).
/// Writes the CPU-scaling plot, cpus.svg, next to the report.
fn write_cpus_plot(out: &Path, rows: &[bench::cpus::Scaling]) -> anyhow::Result<()> {
    let path = out.with_file_name("cpus.svg");
    let cpus = bench::cpus::cpus()?.len();
    std::fs::write(&path, bench::cpus::svg(rows, cpus))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

fn write_plot(out: &Path, latency: &bench::latency::Latency) -> anyhow::Result<()> {
    let path = out.with_file_name("latency.svg");
    std::fs::write(&path, bench::latency::svg(latency))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}
