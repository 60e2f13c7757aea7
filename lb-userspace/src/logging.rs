//! Structured logs with `tracing`, to stderr: one line per state change
//! (worker up or down, table rebuilt with its size and build time,
//! adoption, upgrade). The level comes from `--log-level`, else RUST_LOG,
//! else `info`.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; call once, first thing.
pub fn init(level: Option<&str>) {
    let filter = level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
