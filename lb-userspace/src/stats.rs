//! `lb stats`.

use anyhow::Context as _;

use crate::{
    cli::{OutputFormat, StatsArgs},
    counters,
};

/// Prints the counters pinned under the chosen pin directory.
pub fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let totals = counters::read_pinned(&args.pin_dir).with_context(|| {
        format!(
            "no lb counters pinned under {}; is `lb run` attached with this --pin-dir (and are you root)?",
            args.pin_dir.display()
        )
    })?;
    match args.output {
        OutputFormat::Table => print!("{}", counters::render_table(&totals)),
        OutputFormat::Json => println!("{}", counters::render_json(&totals)),
    }
    Ok(())
}
