//! The `lb` command line.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};
use lb_common::{
    balancer::{DEFAULT_MAX_VIPS, DEFAULT_MAX_WORKERS},
    nat::DEFAULT_MAX_NAT_FLOWS,
};

use crate::{
    dataplane::nat::NatPorts,
    dataplane::{
        AttachMode, DataplaneError, DEFAULT_MAX_FLOWS, LIMIT_VIPS, LIMIT_WORKERS, MAX_FLOWS,
    },
    desired::instance::{Name, Paths, DEFAULT_NAME},
    desired::options::VipOptions,
    duration::parse_clap as duration,
    service::{parse_worker, AddressOrVip, ClientPrefix, Protocol, Vip, WorkerAddr},
};

/// lb: a stateful L4 load balancer in XDP.
#[derive(Debug, Parser)]
#[command(name = "lb", version, about)]
pub struct Cli {
    /// Which instance.
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Where the instance the command is for keeps its things.
    pub fn paths(&self) -> Paths {
        let state_file = match &self.command {
            Command::Run(args) => args.state_file.clone(),
            _ => None,
        };
        Paths::new(
            self.instance.name.clone(),
            self.instance.pin_dir.clone(),
            self.instance.socket.clone(),
            state_file,
        )
    }
}

impl Cli {
    /// Parses the process's arguments. Help and the version go out as clap
    /// writes them; a mistake is one line on stderr like lb's other errors,
    /// with clap's exit status 2.
    pub fn parse_or_exit() -> Self {
        Self::try_parse()
            .and_then(Self::output_used)
            .unwrap_or_else(|error| {
                use clap::error::ErrorKind;
                if matches!(
                    error.kind(),
                    ErrorKind::DisplayHelp
                        | ErrorKind::DisplayVersion
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                ) {
                    error.exit()
                }
                eprintln!("lb: error: {}", one_line(&error));
                std::process::exit(error.exit_code())
            })
    }
}

impl Cli {
    /// Refuses `-o` for a command that prints no answer, where it would
    /// be silently ignored.
    fn output_used(self) -> Result<Self, clap::Error> {
        let prints = !matches!(
            self.command,
            Command::Run(_)
                | Command::Detach
                | Command::Top(_)
                | Command::Capture(_)
                | Command::Completions { .. }
                | Command::Man { .. }
                | Command::Decap(DecapCommand::Attach { .. } | DecapCommand::Detach { .. })
        );
        if self.instance.output.is_some() && !prints {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                "-o/--output is for the commands that print an answer: status, stats, \
                 flows, explain, vip, backend, sessions, announce, decap stats\n",
            ));
        }
        Ok(self)
    }
}

/// Folds clap's rendering of a mistake into one line: the message with its
/// indented continuation (missing arguments, possible values), then any tip
/// and the usage, without the pointer to --help.
fn one_line(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut folded = first.trim_start_matches("error: ").to_owned();
    let mut in_message = true;
    for line in lines {
        if line.trim().is_empty() {
            in_message = false;
        } else if !line.starts_with("For more information") {
            folded.push_str(if in_message && line.starts_with(' ') {
                " "
            } else {
                "; "
            });
            folded.push_str(&line.trim().replacen("Usage:", "usage:", 1));
        }
    }
    folded
}

/// Which instance a command is for: every command takes these, before or
/// after the subcommand.
#[derive(Debug, clap::Args)]
pub struct InstanceArgs {
    /// The instance: its pin directory (/sys/fs/bpf/NAME), admin socket
    /// (/run/lb/NAME.sock) and state file (/var/lib/lb/NAME.json) derive
    /// from this name (1-32 of a-z, 0-9, _ and -).
    #[arg(long, global = true, env = "LB_NAME", default_value = DEFAULT_NAME)]
    pub name: Name,
    /// The instance's pin directory on a BPF filesystem, instead of
    /// /sys/fs/bpf/NAME.
    #[arg(long, global = true, env = "LB_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// The instance's admin socket, instead of /run/lb/NAME.sock.
    #[arg(long, global = true, env = "LB_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Output format of the commands that print an answer (status, stats,
    /// flows, explain, vip, backend, sessions, announce, decap stats)
    /// [default: table].
    #[arg(short, long, global = true, value_enum)]
    pub output: Option<OutputFormat>,
}

/// `lb` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load lb's XDP program onto an interface (or adopt the one running
    /// there) and run the controller in the foreground until Ctrl-C or
    /// SIGTERM; the data plane keeps forwarding after it stops.
    Run(RunArgs),
    /// Remove lb from an interface: detach the program and delete its pins
    /// (flows and sessions go). The controller must be stopped.
    Detach,
    /// Manage virtual services.
    #[command(subcommand)]
    Vip(VipCommand),
    /// Manage the workers of virtual services.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Sticky sessions and pinned clients.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// VIP announcements to the routers (`lb run --announce-table`):
    /// withdraw an address for maintenance, restore it, list them.
    #[command(subcommand)]
    Announce(AnnounceCommand),
    /// Describe the running instance.
    Status,
    /// Packet counters: global, per VIP, per worker (read from the pinned
    /// maps, so it works while the controller is down).
    Stats,
    /// The flow table: client → worker, with age (from the pinned maps).
    Flows(FlowsArgs),
    /// Why a client's next packet to a VIP goes to the worker it goes to:
    /// its flow, pin, sticky session, Maglev slot or least-load choice,
    /// and the workers' state, read from the pinned maps (without a port:
    /// a new connection).
    Explain(ExplainArgs),
    /// A live view: per-VIP and per-worker rates, state and load,
    /// refreshed every second; q or Ctrl-C quits.
    Top(TopArgs),
    /// Record what the data plane does to packets, as they leave it (after
    /// MAC rewrite or encapsulation): pcapng for tcpdump and Wireshark with
    /// lb's action, reason, VIP, worker and CPU in each packet's comment,
    /// or a line per packet. Needs root, like `lb run`; one capture per
    /// instance at a time; costs nothing when none runs.
    Capture(CaptureArgs),
    /// The worker side of L3 forwarding: strip lb's IPIP and GUE headers
    /// from packets to this host (see docs/workers.md).
    #[command(subcommand)]
    Decap(DecapCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print lb's man page (roff), or write every command's page to a
    /// directory.
    Man {
        /// Write lb.1, lb-run.1, lb-vip-add.1, … here instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Print a Markdown reference of every command instead (docs/cli.md,
        /// which `cargo xtask docs` writes).
        #[arg(long, hide = true, conflicts_with = "out_dir")]
        markdown: bool,
    },
}

/// Arguments of `lb run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Interface to attach to; repeat it for several (at most 15), say
    /// clients on one and workers on another: packets for VIPs and NAT
    /// sources are handled on each, and what lb sends leaves by the
    /// interface its route names. The first names the instance (its state
    /// file's owner, the `link` pin) and stays first.
    #[arg(long, required = true)]
    pub iface: Vec<String>,
    /// native: in the driver (fast); generic: in the kernel's receive path,
    /// for drivers without XDP support.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Native)]
    pub xdp_mode: XdpModeArg,
    /// TOML file of VIPs and workers applied at start.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Capacity of the flow table (connections tracked at once), at most
    /// 134217728 (2^27), the most the kernel's hash tables take; each
    /// flow takes about 150 bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS, value_parser = max_flows)]
    pub max_flows: u32,
    /// How many VIPs the instance can hold (size of the per-VIP maps).
    #[arg(long, default_value_t = DEFAULT_MAX_VIPS, value_parser = clap::value_parser!(u32).range(1..=i64::from(LIMIT_VIPS)))]
    pub max_vips: u32,
    /// How many workers the instance can hold across all its VIPs (size of
    /// the per-worker maps; a worker on two VIPs counts twice).
    #[arg(long, default_value_t = DEFAULT_MAX_WORKERS, value_parser = clap::value_parser!(u32).range(1..=i64::from(LIMIT_WORKERS)))]
    pub max_workers: u32,
    /// Kernel memory lb's maps may take (the flow table, the Maglev
    /// tables and the rest), as bytes or with K, M, G or T: what would pass
    /// it is refused in one line, at start or at `vip add`, naming the
    /// figure [default: half of the machine's memory, or of lb's memory
    /// cgroup's limit when that is lower].
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub max_memory: Option<u64>,
    /// Outer source address of IPIP and GUE packets, one per family
    /// (repeat for the other); default: the interface's primary address of
    /// the worker's family.
    #[arg(long, value_name = "ADDR")]
    pub tunnel_source: Vec<IpAddr>,
    /// Largest IP packet, tunnel headers included, that IPIP and GUE send
    /// (default: the interface's MTU); clients get "fragmentation needed" /
    /// "packet too big" for what doesn't fit.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(1280..))]
    pub tunnel_mtu: Option<u16>,
    /// Source address of `fullnat` VIPs' packets to their workers: an
    /// address of this host (repeat for more; several of a family widen
    /// the port space, at most 16 per family). A `fullnat` VIP needs one
    /// of its family.
    #[arg(long, value_name = "ADDR")]
    pub nat_source: Vec<IpAddr>,
    /// Ports `fullnat` allocates, LOW-HIGH; must stay clear of the host's
    /// own ephemeral ports (net.ipv4.ip_local_port_range).
    #[arg(long, value_name = "LOW-HIGH", default_value_t = NatPorts::default())]
    pub nat_ports: NatPorts,
    /// Capacity of the NAT table (`fullnat` connections at once); entries
    /// take memory as they are used, about 200 bytes each.
    #[arg(long, default_value_t = DEFAULT_MAX_NAT_FLOWS, value_parser = clap::value_parser!(u32).range(1..=134_217_728))]
    pub max_nat_flows: u32,
    /// Accept worker load reports (`POST /load`) on this address, e.g.
    /// 192.0.2.2:9470. Off unless given; needs --load-token-file.
    #[arg(long)]
    pub load_listen: Option<SocketAddr>,
    /// File holding the bearer token workers send with load reports
    /// (at least 16 characters, mode 0600).
    #[arg(long)]
    pub load_token_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given;
    /// `--metrics` alone listens on 127.0.0.1:9469).
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:9469")]
    pub metrics: Option<SocketAddr>,
    /// Where the desired state (VIPs, workers, weights, drains, pins,
    /// graceful removals) is saved after every change and restored from at
    /// start, instead of /var/lib/lb/NAME.json.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Apply what was asked over what is pinned: another map layout or
    /// --max-flows (fresh maps: established connections are scheduled
    /// afresh), another --xdp-mode (attached again after a short pause).
    #[arg(long)]
    pub force: bool,
    /// Announce each VIP address lb can serve as a host route (/32, /128,
    /// `dev lo`, `proto 250`) in this kernel routing table, for a routing
    /// daemon (BIRD, FRR) to learn and announce to the routers; see
    /// docs/scale-out.md. Off unless given.
    #[arg(long, value_name = "TABLE", value_parser = crate::control::announce::parse_table)]
    pub announce_table: Option<u32>,
    /// Detach the program and remove the pins when the controller stops
    /// (by default the data plane keeps forwarding without it).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Log level or filter (error, warn, info, debug, trace, or a
    /// tracing filter such as `lb_userspace=debug`); overrides RUST_LOG.
    #[arg(long)]
    pub log_level: Option<String>,
}

/// `lb decap …`. Pins go under /sys/fs/bpf/lb-decap/IFACE unless the
/// global --pin-dir names another directory.
#[derive(Debug, Subcommand)]
pub enum DecapCommand {
    /// Attach the decap program to an interface, or refresh its local
    /// addresses and GUE port when it is attached: run it again after
    /// adding addresses.
    Attach {
        /// Interface the tunnel packets arrive on.
        #[arg(long)]
        iface: String,
        /// UDP port of GUE.
        #[arg(long, default_value_t = lb_common::encap::DEFAULT_GUE_PORT)]
        gue_port: u16,
    },
    /// Detach the decap program from an interface and remove its pins.
    Detach {
        /// The interface.
        #[arg(long)]
        iface: String,
    },
    /// Packets decapsulated, passed and dropped (every attached interface
    /// unless one is named).
    Stats {
        /// The interface.
        #[arg(long)]
        iface: Option<String>,
    },
}

/// `lb vip …`.
#[derive(Debug, Subcommand)]
pub enum VipCommand {
    /// Add a VIP: ADDRESS:PORT/tcp|udp, IPv6 as [ADDRESS]:PORT/tcp.
    Add {
        /// The VIP.
        vip: Vip,
        #[command(flatten)]
        options: VipOptions,
    },
    /// Replace a VIP's settings (the flags of `vip add`; what is not given
    /// takes its default); workers, pins and established flows stay.
    Set {
        /// The VIP.
        vip: Vip,
        #[command(flatten)]
        options: VipOptions,
    },
    /// Remove a VIP (its traffic goes to the kernel again).
    Del {
        /// The VIP.
        vip: Vip,
    },
    /// List the VIPs.
    List,
}

/// `lb backend …`.
#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Add a worker to a VIP.
    Add {
        /// The VIP.
        vip: Vip,
        /// The worker's address (for DSR: the VIP's family, on the
        /// balancer's link; for ipip and gue: either family, anywhere
        /// routed; for nat and fullnat: the VIP's family, anywhere routed),
        /// with `:PORT` (`[ADDR]:PORT` for IPv6) for a NAT VIP's worker
        /// serving on another port than the VIP's.
        #[arg(value_name = "WORKER[:PORT]")]
        worker: WorkerAddr,
        /// Relative share of new flows (1-65535).
        #[arg(long, default_value_t = crate::desired::state::DEFAULT_WEIGHT)]
        weight: u32,
    },
    /// Remove a worker: nothing more goes to it; its established flows
    /// move to other workers at their next packet (--graceful waits for
    /// them to end).
    Del {
        /// The VIP.
        vip: Vip,
        /// The worker's address.
        #[arg(value_parser = parse_worker)]
        worker: IpAddr,
        /// Drain first and remove the worker once its flows have ended.
        #[arg(long)]
        graceful: bool,
        /// With --graceful: remove it after this long even if flows remain.
        #[arg(long, value_parser = duration, requires = "graceful")]
        timeout: Option<Duration>,
    },
    /// Change a worker's weight or load figure.
    Set {
        /// The VIP.
        vip: Vip,
        /// The worker's address.
        #[arg(value_parser = parse_worker)]
        worker: IpAddr,
        /// Relative share of new flows (1-65535).
        #[arg(long)]
        weight: Option<u32>,
        /// Load as a fraction of capacity (0-1), for the least-load
        /// scheduler; expires like any report (the VIP's load TTL).
        #[arg(long, value_parser = load_value)]
        load: Option<f64>,
    },
    /// Stop new flows and sessions to a worker; established flows go on.
    Drain {
        /// The VIP.
        vip: Vip,
        /// The worker's address.
        #[arg(value_parser = parse_worker)]
        worker: IpAddr,
    },
    /// Let a drained worker take new flows again.
    Undrain {
        /// The VIP.
        vip: Vip,
        /// The worker's address.
        #[arg(value_parser = parse_worker)]
        worker: IpAddr,
    },
    /// List workers, of one VIP or all.
    List {
        /// Only this VIP's workers.
        vip: Option<Vip>,
    },
}

/// `lb announce …`.
#[derive(Debug, Subcommand)]
pub enum AnnounceCommand {
    /// Take VIP addresses out of the announce table (all when none is
    /// named): the routers stop sending them here, while lb keeps
    /// forwarding what still arrives. Kept across restarts.
    Withdraw {
        /// A VIP address (192.0.2.100) or a VIP standing for its address
        /// (192.0.2.100:80/tcp).
        vip: Vec<AddressOrVip>,
    },
    /// Announce withdrawn VIP addresses again (all when none is named), as
    /// far as they have workers that take new flows.
    Restore {
        /// A VIP address or a VIP.
        vip: Vec<AddressOrVip>,
    },
    /// Each VIP address, whether it is announced, and why not.
    List,
}

/// `lb sessions …`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sticky sessions and pins.
    List {
        /// Only this VIP's.
        vip: Option<Vip>,
    },
    /// Forget sticky sessions (pins stay): the next connection of each
    /// client is scheduled afresh.
    Flush {
        /// Only this VIP's.
        vip: Option<Vip>,
        /// Only sessions on this worker.
        #[arg(long, value_parser = parse_worker)]
        worker: Option<IpAddr>,
    },
    /// Send a client's new connections (its whole sticky prefix) to one
    /// worker while that worker is up and not draining.
    Pin {
        /// The VIP.
        vip: Vip,
        /// The client's address.
        #[arg(value_parser = parse_worker)]
        client_addr: IpAddr,
        /// The worker.
        #[arg(value_parser = parse_worker)]
        worker: IpAddr,
    },
    /// Remove a pin.
    Unpin {
        /// The VIP.
        vip: Vip,
        /// The client's address.
        #[arg(value_parser = parse_worker)]
        client_addr: IpAddr,
    },
}

/// Parses `--max-memory`.
fn parse_memory(text: &str) -> Result<u64, String> {
    crate::dataplane::memory::parse_size(text).map_err(|e| e.to_string())
}

/// Parses `--max-flows`: from 1 to what the kernel accepts, refused with
/// the reason before anything is attached.
fn max_flows(text: &str) -> Result<u32, String> {
    let flows: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of flows"))?;
    match u32::try_from(flows) {
        Ok(0) => Err("the flow table needs room for 1 flow at least".into()),
        Ok(flows) if flows <= MAX_FLOWS => Ok(flows),
        _ => Err(DataplaneError::TableTooLarge(flows).to_string()),
    }
}

/// Parses a `--load` figure (JSON has no NaN: check before sending).
fn load_value(text: &str) -> Result<f64, String> {
    let load: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    crate::checks::load::check_value(load).map_err(|e| e.to_string())?;
    Ok(load)
}

/// Arguments of `lb top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Time between refreshes.
    #[arg(long, value_parser = duration, default_value = "1s")]
    pub interval: Duration,
}

/// Arguments of `lb capture`.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// Only packets of this VIP (ADDRESS:PORT/tcp|udp).
    #[arg(long)]
    pub vip: Option<Vip>,
    /// Only packets lb sent to (or dropped for) this worker.
    #[arg(long, value_name = "ADDR")]
    pub worker: Option<IpAddr>,
    /// Only packets sent by this client address or prefix.
    #[arg(long, value_name = "ADDR[/PREFIX]")]
    pub client: Option<ClientPrefix>,
    /// Only packets lb handled this way (repeat, or separate with commas,
    /// for several; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub action: Vec<CaptureAction>,
    /// Bytes of each packet to keep (default or 0: whole frames, which XDP
    /// holds to 4096 bytes).
    #[arg(long, value_name = "N")]
    pub snaplen: Option<u32>,
    /// Stop after this many packets.
    #[arg(short = 'c', long = "count", value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 30s).
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Write pcapng to FILE, or to standard output with `-` (`lb capture
    /// -w - | tcpdump -r -`), instead of a line per packet.
    #[arg(short = 'w', value_name = "FILE")]
    pub write: Option<PathBuf>,
}

/// `lb capture --action` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CaptureAction {
    /// Sent on to a worker.
    Forward,
    /// Passed to the kernel (not for a VIP).
    Pass,
    /// Dropped (no worker, worker unresolved, …).
    Drop,
    /// Answered by lb (echo replies, "fragmentation needed").
    Reply,
}

/// Arguments of `lb flows`.
#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// Only flows of this VIP.
    #[arg(long)]
    pub vip: Option<Vip>,
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

/// Arguments of `lb explain`. The VIP and the client stay text for clap:
/// how they read depends on each other and on --proto, which explain
/// checks together.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The VIP: ADDRESS:PORT/tcp|udp (IPv6 as [ADDRESS]:PORT/tcp), or
    /// ADDRESS:PORT with --proto.
    pub vip: String,
    /// The client: ADDRESS (its next new connection) or ADDRESS:PORT (the
    /// next packet of that flow); IPv6 as [ADDRESS]:PORT.
    pub client: String,
    /// The VIP's protocol when the VIP has no /tcp or /udp [default: tcp].
    #[arg(long, value_enum)]
    pub proto: Option<Protocol>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mistake(args: &[&str]) -> String {
        one_line(&Cli::try_parse_from(args).unwrap_err())
    }

    #[test]
    fn argument_mistakes_are_one_line_that_keeps_clap_s_details() {
        for (args, expected) in [
            (
                &["lb", "capture", "--action", "bounce"][..],
                "invalid value 'bounce' for '--action <ACTION>' \
                 [possible values: forward, pass, drop, reply]",
            ),
            (
                &["lb", "vip", "add"],
                "the following required arguments were not provided: <VIP>; \
                 usage: lb vip add <VIP>",
            ),
            (
                &["lb", "vip", "add", "192.0.2.1:80/tcp", "--bogus"],
                "unexpected argument '--bogus' found; \
                 tip: to pass '--bogus' as a value, use '-- --bogus'; \
                 usage: lb vip add <VIP>",
            ),
            (
                &["lb", "frob"],
                "unrecognized subcommand 'frob'; usage: lb [OPTIONS] <COMMAND>",
            ),
        ] {
            assert_eq!(mistake(args), expected, "{args:?}");
        }
    }

    #[test]
    fn output_is_global_and_refused_where_nothing_is_printed() {
        for args in [
            &["lb", "-o", "json", "vip", "list"][..],
            &["lb", "vip", "list", "-o", "json"],
            &[
                "lb",
                "backend",
                "list",
                "192.0.2.1:80/tcp",
                "--output",
                "json",
            ],
            &["lb", "decap", "stats", "-o", "json"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap().output_used().unwrap();
            assert_eq!(cli.instance.output, Some(OutputFormat::Json), "{args:?}");
        }
        let refused = Cli::try_parse_from(["lb", "top", "-o", "json"])
            .unwrap()
            .output_used()
            .unwrap_err();
        assert!(one_line(&refused).starts_with("-o/--output is for the commands"));
    }

    #[test]
    fn positional_addresses_are_checked_by_clap() {
        assert!(
            mistake(&["lb", "backend", "add", "192.0.2.1:80/tcp", "not-an-ip"])
                .contains("`not-an-ip` is not a worker: give ADDR, ADDR:PORT or [IPV6]:PORT")
        );
        assert!(mistake(&["lb", "vip", "del", "192.0.2.1:80"]).contains("has no protocol"));
        assert!(mistake(&["lb", "announce", "withdraw", "x"])
            .contains("\"x\" is neither a VIP address nor a VIP"));
    }

    #[test]
    fn max_flows_stops_at_the_largest_table_the_kernel_makes() {
        let run = |flows: &str| {
            Cli::try_parse_from(["lb", "run", "--iface", "eth0", "--max-flows", flows])
                .map(drop)
                .map_err(|e| one_line(&e))
        };
        // 2^27: the kernel's hash tables have a power of two of 16-byte
        // buckets, and refuse more than fit in a u32 of bytes.
        assert_eq!(run("134217728"), Ok(()));
        for beyond in ["134217729", "2147483648", "4294967295"] {
            let error = run(beyond).unwrap_err();
            assert!(
                error.contains("larger than the kernel accepts") && error.contains("134217728"),
                "{beyond}: {error}"
            );
        }
        assert!(run("0").is_err());
    }

    #[test]
    fn a_value_parser_s_own_message_stays_on_the_line() {
        let folded = mistake(&["lb", "capture", "--duration", "soon"]);
        assert!(!folded.contains('\n'), "{folded}");
        assert!(
            folded.starts_with("invalid value 'soon' for '--duration <DURATION>': "),
            "{folded}"
        );
    }
}
