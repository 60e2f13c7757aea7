//! `lb-fuzz`: the long packet-fuzzer run `cargo xtask fuzz` starts (root).

use std::time::Duration;

use clap::Parser;
use lb_testing::packet_fuzz::Target;

/// Random and mutated frames through lb's program, checking invariants.
#[derive(Parser)]
#[command(name = "lb-fuzz")]
struct Args {
    /// Frames to run.
    #[arg(long, default_value_t = 2_000_000)]
    iterations: u64,
    /// Stop after this many seconds even if frames remain.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Seed (default: from the clock; printed to reproduce).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("lb-fuzz: seed {seed}");
    let result = Target::new()
        .and_then(|target| target.run(seed, args.iterations, Duration::from_secs(args.seconds)));
    match result {
        Ok(report) => println!("lb-fuzz: no invariant broken: {report:?}"),
        Err(error) => {
            eprintln!("lb-fuzz: {error:#}");
            std::process::exit(1);
        }
    }
}
