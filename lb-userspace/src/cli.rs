//! The `lb` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::dataplane::{AttachMode, DEFAULT_MAX_FLOWS};

/// Default directory for pinned maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";
/// Default path of the controller's admin socket.
pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

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
    /// Manage virtual services.
    #[command(subcommand)]
    Vip(VipCommand),
    /// Manage the workers of virtual services.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Describe the running instance.
    Status(ClientArgs),
    /// Packet counters: global, per VIP, per worker (read from the pinned
    /// maps, so it works while the controller is down).
    Stats(PinnedArgs),
    /// The flow table: client → worker, with age (from the pinned maps).
    Flows(FlowsArgs),
    /// Build a sandbox in network namespaces, balance traffic in it, print
    /// what lb did, and tear everything down.
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
    /// The admin socket the CLI talks to.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// TOML file of VIPs and workers applied at start.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Capacity of the flow table (connections tracked at once).
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_flows: u32,
}

/// Where the controller listens, and how to print.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The controller's admin socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `lb vip …`.
#[derive(Debug, Subcommand)]
pub enum VipCommand {
    /// Add a VIP: ADDRESS:PORT/tcp|udp, IPv6 as [ADDRESS]:PORT/tcp.
    Add {
        /// The VIP.
        vip: String,
        /// Maglev table size, a prime (default: 16381, or the first prime
        /// above 100 × workers).
        #[arg(long)]
        table_size: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a VIP (its traffic goes to the kernel again).
    Del {
        /// The VIP.
        vip: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the VIPs.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `lb backend …`.
#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Add a worker to a VIP.
    Add {
        /// The VIP.
        vip: String,
        /// The worker's address (same family as the VIP; same L2 segment for DSR).
        worker: String,
        /// Relative share of new flows (1-65535).
        #[arg(long, default_value_t = crate::state::DEFAULT_WEIGHT)]
        weight: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a worker: it gets no new flows; flows it has keep going to it.
    Del {
        /// The VIP.
        vip: String,
        /// The worker's address.
        worker: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List workers, of one VIP or all.
    List {
        /// Only this VIP's workers.
        vip: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Reading an instance's pinned maps.
#[derive(Debug, clap::Args)]
pub struct PinnedArgs {
    /// The pin directory of the instance to read.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `lb flows`.
#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub pinned: PinnedArgs,
    /// Only flows of this VIP.
    #[arg(long)]
    pub vip: Option<String>,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON document for programs.
    Json,
}
