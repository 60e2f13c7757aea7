//! `lb-models [--long]`: checks both models (at the CI bound, or the
//! deeper one with `--long` or `LB_MODELS_DEPTH=long`), prints what each
//! explored, and fails with the trace of any property that does not hold.

use std::process::ExitCode;

use lb_models::{
    announcements::Announcements,
    bound::Depth,
    handover::Handover,
    run::{check, Summary},
};

fn main() -> ExitCode {
    let depth = if std::env::args().any(|a| a == "--long") {
        Depth::Long
    } else {
        Depth::from_env()
    };
    let results = [
        ("handover", check(Handover::new(depth))),
        ("announcements", check(Announcements::new(depth))),
    ];
    let mut ok = true;
    for (name, summary) in &results {
        say(name, depth, summary);
        ok &= summary.failed.is_empty();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn say(name: &str, depth: Depth, summary: &Summary) {
    println!(
        "{name} ({depth:?}): {} states ({} distinct), depth {}, {:.1} s",
        summary.states,
        summary.unique_states,
        summary.max_depth,
        summary.elapsed.as_secs_f64()
    );
    for (property, trace) in &summary.failed {
        println!("  FAILED: {property}\n{trace}");
    }
}
