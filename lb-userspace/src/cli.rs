//! The `lb` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::dataplane::AttachMode;

/// Default directory for pinned maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";

/// lb: a stateful L4 load balancer in XDP.
#[derive(Debug, Parser)]
#[command(name = "lb", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `lb` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load lb's XDP program onto an interface and run the controller in the
    /// foreground until Ctrl-C or SIGTERM, which detach it.
    Run(RunArgs),
    /// Print the data plane's packet counters (read from the pinned maps, so
    /// it works while `lb run` is busy or gone).
    Stats(StatsArgs),
    /// Build a sandbox in network namespaces, run lb in it, send traffic,
    /// print what lb saw, and tear everything down.
    Demo,
}

/// Arguments of `lb run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Interface to attach to.
    #[arg(long)]
    pub iface: String,
    /// native: in the driver (fast); generic: in the kernel's receive path,
    /// for drivers without XDP support.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Native)]
    pub xdp_mode: XdpModeArg,
    /// Directory on a BPF filesystem for this instance's pinned maps.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// Arguments of `lb stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// The pin directory of the instance to read.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `--xdp-mode` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum XdpModeArg {
    /// Native (driver) XDP.
    Native,
    /// Generic (skb) XDP.
    Generic,
}

impl From<XdpModeArg> for AttachMode {
    fn from(mode: XdpModeArg) -> Self {
        match mode {
            XdpModeArg::Native => AttachMode::Native,
            XdpModeArg::Generic => AttachMode::Generic,
        }
    }
}

/// `-o` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON document for programs.
    Json,
}
