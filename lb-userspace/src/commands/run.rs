//! `lb run`: the controller in the foreground. This file wires the parts
//! together: the data plane handle, the controller's thread, the admin
//! server, the load and metrics endpoints, the health checkers and the
//! housekeeping clock; each lives in its own module.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context as _};
use lb_common::balancer::MAX_INTERFACES;
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{signal, SignalKind},
};

use crate::{
    admin::{protocol::Response, server},
    checks::{health, load},
    commands::cli::RunArgs,
    control::{
        controller::{
            self,
            actor::{self, Handle, Message, Published},
            Controller, Instance, Interface,
        },
        housekeeping, metrics,
        tunnel::Tunnels,
    },
    dataplane::nat::NatSettings,
    dataplane::{
        maps::ControlMaps,
        memory::{self, MemoryError},
        AttachOptions, Dataplane, DataplaneError, PinGuard, Takeover,
    },
    desired::{
        config::FileConfig,
        instance::Paths,
        state::{Desired, Limits},
        state_file::{MadeLock, StateFile},
    },
    kernel::{netlink::Netlink, private},
    net::listen::{bind_tcp, Caps},
    service::Endpoint,
};

/// Attaches the data plane, serves the admin API and holds both until
/// SIGINT or SIGTERM.
pub async fn run(args: RunArgs, paths: Paths) -> anyhow::Result<()> {
    // Everything that can be refused is checked before touching the NIC,
    // and what needs no file before the state file.
    preflight(&args.iface)?;
    server::claim_socket(&paths.socket)?;
    let mut made = Made::before(&paths);
    let Up {
        dataplane,
        control,
        endpoints,
    } = match start(&args, &paths, &mut made) {
        Ok(up) => up,
        Err(error) => {
            made.remove();
            return Err(error);
        }
    };
    drop(made);
    let Control {
        controller,
        published,
        actor,
        listener,
        signals,
        pin_dir,
        state_path,
    } = control;
    say_attached(&dataplane, &paths);
    let takeover = takeover_line(dataplane.takeover(), &state_path);
    tracing::info!("{}", takeover.trim_start_matches("lb: "));
    say(&takeover);
    // Shared with the metrics endpoint, which reads the program's stats.
    let dataplane = Arc::new(Mutex::new(dataplane));
    let admin_cap = endpoints.caps.admin;
    endpoints.spawn(&controller, &dataplane)?;
    let housekeeping =
        housekeeping::spawn(controller.clone(), published.sticky_ttls.clone(), pin_dir)?;
    serve(listener, admin_cap, controller.clone(), published, signals).await;
    let _ = std::fs::remove_file(&paths.socket);
    // The controller is stopped before detaching; its announcements go
    // first, so the routers stop sending before the program stops
    // forwarding. It hands back its references to the link and the maps,
    // let go of once the stop line can say what stays.
    let _ = controller.send(Message::Stop);
    let detaching = args.detach_on_exit;
    let pins = tokio::task::spawn_blocking(move || {
        let pins = actor.join().ok().and_then(|mut controller| {
            if detaching {
                controller.withdraw_all();
            }
            controller.take_pins()
        });
        drop(housekeeping);
        pins
    })
    .await
    .ok()
    .flatten();
    say_stopped(&mut lock(&dataplane), pins, detaching);
    Ok(())
}

/// A started instance: its data plane attached, its controller running
/// and its admin socket bound.
struct Up {
    dataplane: Dataplane,
    control: Control,
    endpoints: Endpoints,
}

/// The controller on its thread, and the admin socket it serves.
struct Control {
    controller: Handle,
    published: Published,
    actor: std::thread::JoinHandle<Controller>,
    listener: UnixListener,
    signals: StopSignals,
    pin_dir: PathBuf,
    state_path: PathBuf,
}

/// Starts the instance up to serving: the state file, the endpoints, the
/// data plane, the controller and the admin socket. A start refused on
/// the way undoes what it did: the data plane undoes its part (see
/// [`Dataplane::abandon`]), [`Made`] the rest.
fn start(args: &RunArgs, paths: &Paths, made: &mut Made) -> anyhow::Result<Up> {
    let (state_file, saved) = StateFile::open(paths, &args.iface[0])?;
    made.state_lock = state_file.made_lock();
    if saved.is_none() {
        // Nothing was saved there: the file the controller writes is this
        // start's.
        made.state_file = Some(state_file.path().to_owned());
    }
    let limits = limits(args)?;
    let desired = desired_state(saved, args)?
        .within(limits)
        .context("the saved state and --config don't fit the limits")?;
    let endpoints = Endpoints::bind(args)?;
    let nat = nat_settings(args)?;
    nat.serves(&desired)?;
    let addressing = (tunnels(args)?, nat);
    let mut dataplane = Dataplane::attach(attach_options(args, paths, limits))?;
    match take_control(args, paths, &mut dataplane, desired, state_file, addressing) {
        Ok(control) => Ok(Up {
            dataplane,
            control,
            endpoints,
        }),
        Err(error) => {
            dataplane.abandon();
            Err(error)
        }
    }
}

/// Starts the controller on the attached data plane and binds the admin
/// socket. Refused, it stops the controller again, which lets go of the
/// state file and of its references to the pins.
fn take_control(
    args: &RunArgs,
    paths: &Paths,
    dataplane: &mut Dataplane,
    desired: Desired,
    state_file: StateFile,
    addressing: (Tunnels, NatSettings),
) -> anyhow::Result<Control> {
    let state_path = state_file.path().to_owned();
    let instance = instance(args, paths, dataplane, addressing)?;
    let maps = ControlMaps::take(dataplane.ebpf_mut()).context("opening the data plane's maps")?;
    let controller = Controller::start(
        desired,
        maps,
        instance,
        Some(state_file),
        dataplane.take_pins(),
    )?;
    let pin_dir = controller.pin_dir().to_owned();
    let (controller, published, actor) =
        actor::spawn(controller).context("starting the controller thread")?;
    let served =
        server::bind_socket(&paths.socket).and_then(|listener| match StopSignals::install() {
            Ok(signals) => Ok((listener, signals)),
            Err(error) => {
                let _ = std::fs::remove_file(&paths.socket);
                Err(error)
            }
        });
    match served {
        Ok((listener, signals)) => Ok(Control {
            controller,
            published,
            actor,
            listener,
            signals,
            pin_dir,
            state_path,
        }),
        Err(error) => {
            let _ = controller.send(Message::Stop);
            let _ = actor.join();
            Err(error)
        }
    }
}

/// What a start makes besides the data plane's part, for a refused one to
/// remove: the directories of the state file and the admin socket that
/// were not there, the state file's lock file and the state file, when
/// this start made them. lb's lock directory, shared by every instance,
/// stays.
struct Made {
    /// Deepest first.
    dirs: Vec<PathBuf>,
    state_file: Option<PathBuf>,
    state_lock: Option<MadeLock>,
}

impl Made {
    fn before(paths: &Paths) -> Self {
        let mut dirs: Vec<PathBuf> = [&paths.state_file, &paths.socket]
            .iter()
            .filter_map(|path| path.parent())
            .flat_map(private::missing_dirs)
            .collect();
        dirs.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
        dirs.dedup();
        Self {
            dirs,
            state_file: None,
            state_lock: None,
        }
    }

    fn remove(self) {
        if let Some(file) = &self.state_file {
            let _ = std::fs::remove_file(file);
        }
        if let Some(lock) = self.state_lock {
            lock.remove();
        }
        private::remove_made(&self.dirs);
    }
}

/// The VIPs, workers and table memory the instance may hold: what
/// `--max-memory` leaves the Maglev tables beside the maps the flags size.
fn limits(args: &RunArgs) -> anyhow::Result<Limits> {
    let budget = args.max_memory.unwrap_or_else(memory::default_budget);
    let cpus = memory::possible_cpus();
    let fixed = memory::fixed(args.max_flows, args.max_vips, args.max_workers, cpus)
        + memory::nat(args.max_nat_flows, args.max_workers);
    if fixed > budget {
        bail!(MemoryError::FixedTooLarge {
            fixed,
            budget,
            max_flows: args.max_flows,
            cpus,
        });
    }
    Ok(Limits {
        vips: args.max_vips,
        workers: args.max_workers,
        table_bytes: budget - fixed,
    })
}

fn attach_options(args: &RunArgs, paths: &Paths, limits: Limits) -> AttachOptions {
    AttachOptions {
        name: paths.name.to_string(),
        ifaces: args.iface.clone(),
        mode: args.xdp_mode.into(),
        pin_dir: paths.pin_dir.clone(),
        max_flows: args.max_flows,
        max_nat_flows: args.max_nat_flows,
        limits,
        force: args.force,
    }
}

/// What the controller is told about its instance.
fn instance(
    args: &RunArgs,
    paths: &Paths,
    dataplane: &Dataplane,
    (tunnels, nat): (Tunnels, NatSettings),
) -> anyhow::Result<Instance> {
    let options = dataplane.options();
    let mut netlink = Netlink::open().context("opening a route netlink socket")?;
    let ifaces = (options.ifaces.iter())
        .map(|name| {
            let index = crate::kernel::netlink::ifindex(name)?;
            let mac = (netlink.mac(index))
                .with_context(|| format!("reading the MAC address of {name}"))?;
            anyhow::Ok(Interface {
                name: name.clone(),
                index,
                mac,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Instance {
        name: paths.name.to_string(),
        ifaces,
        xdp_mode: options.mode.to_string(),
        program_id: dataplane.program_id(),
        pin_dir: options.pin_dir.clone(),
        max_flows: options.max_flows,
        max_nat_flows: options.max_nat_flows,
        limits: options.limits,
        tunnels,
        nat,
        load_listen: args.load_listen.map(|a| a.to_string()),
        endpoints: endpoints(args),
        announce_table: args.announce_table,
    })
}

/// lb's own TCP endpoints in this run, which no VIP may hide.
fn endpoints(args: &RunArgs) -> Vec<Endpoint> {
    [
        ("metrics endpoint", args.metrics),
        ("load report endpoint", args.load_listen),
    ]
    .into_iter()
    .filter_map(|(what, addr)| Some(Endpoint { what, addr: addr? }))
    .collect()
}

fn say_attached(dataplane: &Dataplane, paths: &Paths) {
    let options = dataplane.options();
    say(&format!(
        "lb: attached XDP program {} (id {}) to {} in {} mode; maps pinned under {}; admin socket {}",
        lb_common::program_names::BALANCER,
        dataplane.program_id(),
        options.ifaces.join(", "),
        options.mode,
        options.pin_dir.display(),
        paths.socket.display()
    ));
}

/// Detaches the program if asked to, and says what stays: the program
/// stays on the interface only if its link is pinned, since this process
/// holds the last other reference to it.
fn say_stopped(dataplane: &mut Dataplane, pins: Option<PinGuard>, detach: bool) {
    let options = dataplane.options().clone();
    let (iface, dir) = (options.ifaces.join(", "), options.pin_dir.display());
    let unpinned = pins.as_ref().is_some_and(|pins| !pins.link_pinned());
    drop(pins);
    if detach {
        dataplane.detach();
        say(&format!("lb: detached from {iface}"));
    } else if unpinned {
        say(&format!(
            "lb: controller stopped; nothing pinned its link under {dir}, so the program left {iface} with it: `lb run` attaches it again"
        ));
    } else {
        say(&format!(
            "lb: controller stopped; the data plane keeps forwarding on {iface} (pins under {dir}): `lb run` again adopts it, `lb detach --pin-dir {dir}` removes it"
        ));
    }
}

/// The TCP endpoints `lb run` serves besides the admin socket: load
/// reports and metrics, bound before the data plane is touched so that a
/// taken port is refused first.
struct Endpoints {
    caps: Caps,
    load: Option<(TcpListener, String)>,
    metrics: Option<TcpListener>,
}

impl Endpoints {
    fn bind(args: &RunArgs) -> anyhow::Result<Self> {
        let metrics = match args.metrics {
            Some(addr) => Some(
                bind_tcp(addr).with_context(|| format!("binding the metrics endpoint {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            caps: Caps::for_this_process(),
            load: load_endpoint(args)?,
            metrics,
        })
    }

    /// Serves both on the runtime, for as long as it runs.
    fn spawn(self, controller: &Handle, dataplane: &Arc<Mutex<Dataplane>>) -> anyhow::Result<()> {
        if let Some((reports, token)) = self.load {
            let addr = reports.local_addr()?;
            let controller = controller.clone();
            tokio::spawn(load::serve(reports, self.caps.load, token, move |report| {
                let controller = controller.clone();
                async move {
                    controller
                        .push_load(report)
                        .await
                        .unwrap_or_else(|stopped| Err(stopped.to_string()))
                }
            }));
            say(&format!("lb: accepting load reports on http://{addr}/load"));
        }
        if let Some(listener) = self.metrics {
            let addr = listener.local_addr()?;
            let controller = controller.clone();
            let dataplane = dataplane.clone();
            // Called off the runtime, in a blocking task.
            tokio::spawn(metrics::serve(listener, self.caps.metrics, move || {
                let mut snapshot = controller.metrics_blocking()?;
                snapshot.program = lock(&dataplane).program_stats();
                Ok(snapshot)
            }));
            say(&format!("lb: serving metrics on http://{addr}/metrics"));
        }
        Ok(())
    }
}

/// `lb detach`: removes a stopped instance's link and pins, holding the
/// pin directory's lock meanwhile so that no `lb run` starts on it.
pub fn detach(dir: &Path) -> anyhow::Result<()> {
    crate::dataplane::check_pin_dir(dir)?;
    if !crate::dataplane::has_pins(dir) {
        bail!(
            "no lb instance is pinned under {}; `ls /sys/fs/bpf` shows what is",
            dir.display()
        );
    }
    let Some(_lock) = crate::dataplane::take_lock(&crate::dataplane::lock_path(dir))? else {
        bail!(
            "an `lb run` still manages {}: stop it first (or run it with --detach-on-exit)",
            dir.display()
        );
    };
    withdraw_announcements(dir);
    crate::dataplane::detach_pins(dir);
    say(&format!(
        "lb: detached; removed the pins under {}",
        dir.display()
    ));
    Ok(())
}

/// Removes the host routes `lb run --announce-table` left for the VIPs
/// pinned under `dir`, in whatever table they are. A failure is reported
/// and the detach goes on: a program that stays because of a route would
/// be worse than a route that stays.
fn withdraw_announcements(dir: &Path) {
    let withdrawn = crate::dataplane::maps::pinned_vip_addresses(dir)
        .map_err(anyhow::Error::new)
        .and_then(|addresses| Ok(crate::control::announce::withdraw_everywhere(&addresses)?));
    match withdrawn {
        Ok(0) => {}
        Ok(routes) => say(&format!(
            "lb: withdrew the announcements of {routes} VIP addresses"
        )),
        Err(error) => eprintln!(
            "lb: warning: could not withdraw the VIPs' announcements ({error:#}); remove lb's routes with `ip route flush table N proto 250`"
        ),
    }
}

/// Refuses what `Dataplane::attach` would, before lb touches any file: a
/// missing interface (or one named twice, or too many), missing
/// privileges.
fn preflight(ifaces: &[String]) -> Result<(), DataplaneError> {
    if ifaces.len() > MAX_INTERFACES as usize {
        return Err(DataplaneError::TooManyInterfaces(ifaces.len()));
    }
    for (n, iface) in ifaces.iter().enumerate() {
        if ifaces[..n].contains(iface) {
            return Err(DataplaneError::DuplicateInterface(iface.clone()));
        }
        if crate::kernel::iface::index_of(iface).is_none() {
            return Err(DataplaneError::NoSuchInterface(iface.clone()));
        }
    }
    if !crate::kernel::privileges::can_manage_xdp() {
        return Err(DataplaneError::NotPermitted);
    }
    Ok(())
}

/// The state to start from: the saved state, changed to match --config
/// when one is given (the config file wins; ids of what both have stay).
/// Refused when the config names what the balancer's addresses rule out,
/// or a VIP would hide one of this run's own endpoints.
fn desired_state(saved: Option<Desired>, args: &RunArgs) -> anyhow::Result<Desired> {
    let config = match &args.config {
        Some(path) => Some(FileConfig::load(path)?.desired()?),
        None => None,
    };
    let mut netlink = Netlink::open().context("opening a route netlink socket")?;
    if let Some(config) = &config {
        let workers = config
            .vips()
            .values()
            .flat_map(|v| v.workers.keys().copied());
        controller::check_not_own(&mut netlink, workers.clone())?;
        let vips = config.vips().keys().map(|v| ("VIP", v.addr));
        let ifindexes = (args.iface.iter())
            .map(|name| crate::kernel::netlink::ifindex(name))
            .collect::<Result<Vec<_>, _>>()?;
        let addresses = vips.chain(workers.map(|w| ("worker", w)));
        controller::check_subnet_edges(&mut netlink, &ifindexes, addresses)?;
    }
    let desired = match (saved, config) {
        (Some(saved), Some(config)) => saved
            .reconciled(&config)
            .context("applying --config to the saved state")?,
        (Some(saved), None) => saved,
        (None, Some(config)) => config,
        (None, None) => Desired::new(0),
    };
    let vips = desired.vips().keys().copied();
    controller::check_endpoints(&mut netlink, &endpoints(args), vips)?;
    Ok(desired)
}

fn takeover_line(takeover: Takeover, state_file: &Path) -> String {
    let state = state_file.display();
    match takeover {
        Takeover::Fresh => format!("lb: new data plane; state saved in {state}"),
        Takeover::Adopted { previous_program } => format!(
            "lb: adopted the running data plane: program {previous_program} replaced atomically on its link; maps, flows and sessions kept; state from {state}"
        ),
        Takeover::Replaced { previous_program } => format!(
            "lb: replaced the running data plane's maps (another layout or size with --force, or flows pinned without their worker slots): program {previous_program} replaced; fresh maps (flows and sessions lost); state from {state}"
        ),
        Takeover::Reattached { previous_program } => format!(
            "lb: attached again in the XDP mode asked for (--force): program {previous_program} replaced after a short pause; maps, flows and sessions kept; state from {state}"
        ),
    }
}

/// The outer sources and MTU of IPIP and GUE on the first `--iface`.
fn tunnels(args: &RunArgs) -> anyhow::Result<Tunnels> {
    let mut netlink = Netlink::open().context("opening a route netlink socket")?;
    let ifindex = crate::kernel::netlink::ifindex(&args.iface[0])?;
    Ok(Tunnels::new(
        &mut netlink,
        &args.iface[0],
        ifindex,
        &args.tunnel_source,
        args.tunnel_mtu,
    )?)
}

/// The NAT sources and ports, checked against the host.
fn nat_settings(args: &RunArgs) -> anyhow::Result<NatSettings> {
    let mut netlink = Netlink::open().context("opening a route netlink socket")?;
    Ok(NatSettings::new(
        &mut netlink,
        &args.nat_source,
        args.nat_ports,
    )?)
}

/// The load report endpoint's socket and token, when asked for.
fn load_endpoint(args: &RunArgs) -> anyhow::Result<Option<(TcpListener, String)>> {
    let Some(addr) = args.load_listen else {
        return Ok(None);
    };
    let Some(path) = &args.load_token_file else {
        bail!("--load-listen needs --load-token-file: workers must authenticate their reports");
    };
    let token = load::read_token(path)?;
    let listener =
        bind_tcp(addr).with_context(|| format!("binding the load report endpoint {addr}"))?;
    Ok(Some((listener, token)))
}

/// SIGINT and SIGTERM, caught from before lb says it attached (a signal
/// sent in reply to that line must stop the controller cleanly).
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }
}

/// Serves the admin socket and runs the health checkers until SIGINT or
/// SIGTERM.
async fn serve(
    listener: UnixListener,
    cap: usize,
    controller: Handle,
    published: Published,
    signals: StopSignals,
) {
    let StopSignals {
        mut interrupt,
        mut terminate,
    } = signals;
    let checks = tokio::spawn(health::follow(published.targets, controller.check_sink()));
    let admin = tokio::spawn(server::serve(listener, cap, move |request, deadline| {
        let controller = controller.clone();
        async move {
            controller
                .request(request, deadline)
                .await
                .unwrap_or_else(|e| Response::refusal(format!("the controller failed: {e}")))
        }
    }));
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    admin.abort();
    checks.abort();
}

fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Prints a status line; a closed stdout (the caller went away) is no
/// reason to stop managing the data plane.
fn say(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}
