//! `lb run`: the controller in the foreground.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpSocket, UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use crate::{
    admin::protocol::{self, Request, Response, IO_TIMEOUT, MAX_REQUEST_BYTES, REQUEST_TIMEOUT},
    checks::health::{self, Supervisor},
    checks::load,
    commands::cli::RunArgs,
    control::controller::{
        actor::{self, Handle, Message},
        Controller, Instance,
    },
    control::tunnel::Tunnels,
    dataplane::activity,
    dataplane::maps::ControlMaps,
    dataplane::sessions,
    dataplane::{AttachOptions, Dataplane, DataplaneError, Takeover},
    desired::config::FileConfig,
    desired::instance::Paths,
    desired::state::{Desired, Limits},
    desired::state_file::StateFile,
    kernel::netlink::Netlink,
    net::listen::{Caps, Gate},
};

/// How often the controller scans flows, expires load reports and
/// re-reads worker MAC addresses.
const TICK: Duration = Duration::from_secs(1);
/// Sticky sessions are expired every this many ticks.
const SESSION_EXPIRY_TICKS: u64 = 10;
/// A flow-table scan may take at most this share of the time (a huge
/// table is scanned less often rather than hogging a core).
const SCAN_DUTY: u32 = 10;
/// Connections the kernel holds for a TCP listener that is at its cap:
/// they wait there, at no descriptor's cost, rather than being refused.
const TCP_BACKLOG: u32 = 1024;

/// Attaches the data plane, serves the admin API and holds both until
/// SIGINT or SIGTERM.
pub async fn run(args: RunArgs, paths: Paths) -> anyhow::Result<()> {
    // Everything that can be refused is checked before touching the NIC,
    // and what needs no file before the state file.
    preflight(&args.iface)?;
    claim_socket(&paths.socket)?;
    let (state_file, saved) = StateFile::open(&paths, &args.iface)?;
    let limits = Limits {
        vips: args.max_vips,
        workers: args.max_workers,
    };
    let desired = desired_state(saved, args.config.as_deref())?
        .within(limits)
        .context("the saved state and --config don't fit the limits")?;
    let caps = Caps::for_this_process();
    let load_endpoint = load_endpoint(&args)?;
    let metrics_endpoint = match args.metrics {
        Some(addr) => {
            Some(bind_tcp(addr).with_context(|| format!("binding the metrics endpoint {addr}"))?)
        }
        None => None,
    };
    let tunnels = tunnels(&args)?;
    let options = AttachOptions {
        name: paths.name.to_string(),
        iface: args.iface,
        mode: args.xdp_mode.into(),
        pin_dir: paths.pin_dir.clone(),
        max_flows: args.max_flows,
        limits,
        force: args.force,
    };
    let mut dataplane = Dataplane::attach(options)?;
    let maps = ControlMaps::take(dataplane.ebpf_mut()).context("opening the data plane's maps")?;
    let options = dataplane.options().clone();
    let instance = Instance {
        name: paths.name.to_string(),
        iface: options.iface.clone(),
        xdp_mode: options.mode.to_string(),
        program_id: dataplane.program_id(),
        pin_dir: options.pin_dir.clone(),
        max_flows: options.max_flows,
        limits,
        tunnels,
        load_listen: args.load_listen.map(|a| a.to_string()),
        announce_table: args.announce_table,
    };
    let state_path = state_file.path().to_owned();
    let link = dataplane.take_link();
    let controller = Controller::start(desired, maps, instance, Some(state_file), link)?;
    let pin_dir = controller.pin_dir().to_owned();
    let (controller, published, actor) =
        actor::spawn(controller).context("starting the controller thread")?;
    let listener = bind_socket(&paths.socket)?;
    let signals = StopSignals::install()?;
    say(&format!(
        "lb: attached XDP program {} (id {}) to {} in {} mode; maps pinned under {}; admin socket {}",
        lb_common::program_names::BALANCER,
        dataplane.program_id(),
        options.iface,
        options.mode,
        options.pin_dir.display(),
        paths.socket.display()
    ));
    let takeover = takeover_line(dataplane.takeover(), &state_path);
    // Shared with the metrics endpoint, which reads the program's stats.
    let dataplane = Arc::new(Mutex::new(dataplane));
    tracing::info!("{}", takeover.trim_start_matches("lb: "));
    say(&takeover);
    if let Some((reports, token)) = load_endpoint {
        let addr = reports.local_addr()?;
        let controller = controller.clone();
        tokio::spawn(load::serve(reports, caps.load, token, move |report| {
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
    if let Some(listener) = metrics_endpoint {
        let addr = listener.local_addr()?;
        let controller = controller.clone();
        let dataplane = dataplane.clone();
        // Called off the runtime, in a blocking task.
        tokio::spawn(crate::control::metrics::serve(
            listener,
            caps.metrics,
            move || {
                let mut snapshot = controller.metrics_blocking()?;
                snapshot.program = lock(&dataplane).program_stats();
                Ok(snapshot)
            },
        ));
        say(&format!("lb: serving metrics on http://{addr}/metrics"));
    }
    let housekeeping = housekeeping(controller.clone(), published.sticky_ttls, pin_dir)?;
    serve(
        listener,
        caps.admin,
        controller.clone(),
        published.targets,
        signals,
    )
    .await;
    let _ = std::fs::remove_file(&paths.socket);
    // The controller (and the link it holds) is dropped before detaching;
    // its announcements go first, so the routers stop sending before the
    // program stops forwarding.
    let _ = controller.send(Message::Stop);
    let detaching = args.detach_on_exit;
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(mut controller) = actor.join() {
            if detaching {
                controller.withdraw_all();
            }
        }
        drop(housekeeping);
    })
    .await;
    if args.detach_on_exit {
        lock(&dataplane).detach();
        say(&format!("lb: detached from {}", options.iface));
    } else {
        say(&format!(
            "lb: controller stopped; the data plane keeps forwarding on {} (pins under {}): `lb run` again adopts it, `lb detach --pin-dir {}` removes it",
            options.iface,
            options.pin_dir.display(),
            options.pin_dir.display()
        ));
    }
    Ok(())
}

/// `lb detach`: removes a stopped instance's link and pins.
pub fn detach(dir: &Path) -> anyhow::Result<()> {
    if !crate::dataplane::has_pins(dir) {
        bail!(
            "no lb instance is pinned under {}; `ls /sys/fs/bpf` shows what is",
            dir.display()
        );
    }
    if crate::dataplane::pin_dir_locked(dir) {
        bail!(
            "an `lb run` still manages {}: stop it first (or run it with --detach-on-exit)",
            dir.display()
        );
    }
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
/// missing interface, missing privileges.
fn preflight(iface: &str) -> Result<(), DataplaneError> {
    if crate::kernel::iface::index_of(iface).is_none() {
        return Err(DataplaneError::NoSuchInterface(iface.to_owned()));
    }
    if !crate::kernel::privileges::can_manage_xdp() {
        return Err(DataplaneError::NotPermitted);
    }
    Ok(())
}

/// The state to start from: the saved state, changed to match --config
/// when one is given (the config file wins; ids of what both have stay).
fn desired_state(saved: Option<Desired>, config: Option<&Path>) -> anyhow::Result<Desired> {
    let config = match config {
        Some(path) => Some(FileConfig::load(path)?.desired()?),
        None => None,
    };
    if let Some(config) = &config {
        let workers = config
            .vips()
            .values()
            .flat_map(|v| v.workers.keys().copied());
        let mut netlink = Netlink::open().context("opening a route netlink socket")?;
        crate::control::controller::check_not_own(&mut netlink, workers)?;
    }
    Ok(match (saved, config) {
        (Some(saved), Some(config)) => saved
            .reconciled(&config)
            .context("applying --config to the saved state")?,
        (Some(saved), None) => saved,
        (None, Some(config)) => config,
        (None, None) => Desired::new(0),
    })
}

fn takeover_line(takeover: Takeover, state_file: &Path) -> String {
    let state = state_file.display();
    match takeover {
        Takeover::Fresh => format!("lb: new data plane; state saved in {state}"),
        Takeover::Adopted { previous_program } => format!(
            "lb: adopted the running data plane: program {previous_program} replaced atomically on its link; maps, flows and sessions kept; state from {state}"
        ),
        Takeover::Replaced { previous_program } => format!(
            "lb: replaced the running data plane of another layout or flow-table size (--force): program {previous_program} replaced; fresh maps (flows and sessions lost); state from {state}"
        ),
        Takeover::Reattached { previous_program } => format!(
            "lb: attached again in the XDP mode asked for (--force): program {previous_program} replaced after a short pause; maps, flows and sessions kept; state from {state}"
        ),
    }
}

/// The outer sources and MTU of IPIP and GUE on `--iface`.
fn tunnels(args: &RunArgs) -> anyhow::Result<Tunnels> {
    let mut netlink = Netlink::open().context("opening a route netlink socket")?;
    let ifindex = crate::kernel::netlink::ifindex(&args.iface)?;
    Ok(Tunnels::new(
        &mut netlink,
        &args.iface,
        ifindex,
        &args.tunnel_source,
        args.tunnel_mtu,
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

/// A TCP listener with room for [`TCP_BACKLOG`] waiting connections.
fn bind_tcp(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(TCP_BACKLOG)
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
    targets: watch::Receiver<Vec<health::Target>>,
    signals: StopSignals,
) {
    let StopSignals {
        mut interrupt,
        mut terminate,
    } = signals;
    let checks = tokio::spawn(supervise(targets, controller.check_sink()));
    let admin = tokio::spawn(admin(listener, cap, controller));
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    admin.abort();
    checks.abort();
}

/// Keeps the health checkers pointed at the workers the controller has.
async fn supervise(mut targets: watch::Receiver<Vec<health::Target>>, sink: health::Sink) {
    let mut supervisor = Supervisor::new(sink);
    loop {
        let now = targets.borrow_and_update().clone();
        supervisor.reconcile(now);
        if targets.changed().await.is_err() {
            return;
        }
    }
}

/// Answers admin requests, at most `cap` connections at once.
async fn admin(listener: UnixListener, cap: usize, controller: Handle) {
    let mut gate = Gate::new("admin socket", cap);
    loop {
        let ((stream, _), slot) = gate.next(|| listener.accept()).await;
        let controller = controller.clone();
        tokio::spawn(async move {
            answer(stream, controller).await;
            drop(slot);
        });
    }
}

/// Once a tick, on its own thread (a scan of a large flow table takes a
/// while, and must hold up neither the runtime nor the controller): scans
/// the flow table (paced), expires sticky sessions now and then, turns off
/// a capture whose reader died, and hands the results to the controller,
/// which acts on what it learnt.
fn housekeeping(
    controller: Handle,
    ttls: watch::Receiver<std::collections::HashMap<u32, Duration>>,
    dir: PathBuf,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let work = move || {
        let mut next_scan = Instant::now();
        for round in 1u64.. {
            std::thread::sleep(TICK);
            let started = Instant::now();
            let scan = (started >= next_scan)
                .then(|| activity::count(&dir))
                .and_then(|r| {
                    r.inspect_err(|e| tracing::warn!("scanning flows: {e}"))
                        .ok()
                });
            if scan.is_some() {
                next_scan = Instant::now() + started.elapsed() * SCAN_DUTY;
            }
            let sessions = (round % SESSION_EXPIRY_TICKS == 0)
                .then(|| expire_sessions(&dir, &ttls.borrow()))
                .flatten();
            clear_abandoned_capture(&dir);
            if controller.send(Message::Tick { scan, sessions }).is_err() {
                return;
            }
        }
    };
    std::thread::Builder::new()
        .name("lb-housekeeping".into())
        .spawn(work)
        .context("starting the housekeeping thread")
}

/// Turns off a capture whose `lb capture` died without doing so (killed),
/// so the data plane stops copying packets for nobody.
fn clear_abandoned_capture(dir: &Path) {
    match crate::dataplane::capture::clear_abandoned(dir) {
        Ok(true) => tracing::warn!("turned off a capture whose lb capture had died"),
        Ok(false) => {}
        Err(e) => tracing::debug!("checking for an abandoned capture: {e:#}"),
    }
}

/// Removes expired sticky sessions; how many remain.
fn expire_sessions(dir: &Path, ttls: &std::collections::HashMap<u32, Duration>) -> Option<u64> {
    match sessions::expire(dir, ttls, activity::monotonic_ns()) {
        Ok((removed, remaining)) => {
            if removed > 0 {
                tracing::debug!("expired {removed} sticky sessions");
            }
            Some(remaining as u64)
        }
        Err(e) => {
            tracing::warn!("expiring sticky sessions: {e}");
            None
        }
    }
}

fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads one request (size- and time-limited), carries it out, answers.
async fn answer(stream: UnixStream, controller: Handle) {
    let (read, mut write) = stream.into_split();
    let response = match read_request(read).await {
        Ok(request) => controller
            .request(request)
            .await
            .unwrap_or_else(|e| refusal(format!("the controller failed: {e}"))),
        Err(error) => refusal(error),
    };
    if let Ok(mut text) = serde_json::to_string(&response) {
        text.push('\n');
        let _ = tokio::time::timeout(IO_TIMEOUT, write.write_all(text.as_bytes())).await;
    }
}

/// Reads one request: a JSON line of at most [`MAX_REQUEST_BYTES`] within
/// [`REQUEST_TIMEOUT`]; or why not, as the answer should say it.
async fn read_request(read: impl AsyncRead + Unpin) -> Result<Request, String> {
    let mut line = String::new();
    // One byte over the limit tells a request that is too large from one
    // that fits exactly.
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES + 1));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Err(format!(
            "timed out waiting for the request: send it within {} of connecting",
            crate::duration::format(REQUEST_TIMEOUT)
        )),
        Ok(Err(error)) => Err(format!("reading the request: {error}")),
        Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST_BYTES => Err(protocol::too_large()),
        Ok(Ok(_)) => serde_json::from_str(&line).map_err(|error| format!("bad request: {error}")),
    }
}

fn refusal(error: String) -> Response {
    Response {
        ok: false,
        error: Some(error),
        data: serde_json::Value::Null,
    }
}

/// Makes sure no other controller owns the socket path; removes a stale
/// socket left by one that died.
fn claim_socket(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| d.exists()) {
        check_socket_dir(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another lb controller is running on {}; stop it, or give this instance its own --name (or --socket and --pin-dir)",
            path.display()
        );
    }
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    Ok(())
}

/// Binds the admin socket so that only root can connect (0600, in a 0700
/// directory when lb creates it).
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(dir) = path.parent() {
        check_socket_dir(dir)?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    Ok(listener)
}

/// Refuses a socket directory others could write to: they could replace
/// the socket with their own and receive the CLI's commands.
fn check_socket_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let meta = std::fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.mode() & 0o022 != 0 || meta.uid() != me {
        bail!(
            "{} is writable by others or not ours (mode {:o}, owner {}): anyone who can write there could replace lb's admin socket; pass a --socket in a directory only root can write, such as /run/lb",
            dir.display(),
            meta.mode() & 0o7777,
            meta.uid()
        );
    }
    Ok(())
}

/// Prints a status line; a closed stdout (the caller went away) is no
/// reason to stop managing the data plane.
fn say(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_read_whole_or_refused_with_why() {
        let status = read_request(&b"{\"cmd\":\"status\"}\n"[..]).await;
        assert_eq!(status, Ok(Request::Status));
        // Exactly the limit, newline included, is still a request.
        let mut exact = "{\"cmd\":\"status\"}".to_owned();
        exact.push_str(&" ".repeat(MAX_REQUEST_BYTES as usize - exact.len() - 1));
        exact.push('\n');
        assert_eq!(read_request(exact.as_bytes()).await, Ok(Request::Status));
        let over = format!(" {exact}");
        assert_eq!(
            read_request(over.as_bytes()).await,
            Err(protocol::too_large())
        );
        let huge = vec![b'{'; 200_000];
        assert_eq!(
            read_request(&huge[..]).await,
            Err("request too large (over 64 KiB)".to_owned())
        );
        let garbage = read_request(&b"{\"cmd\":\"reboot\"}\n"[..]).await;
        assert!(garbage.unwrap_err().starts_with("bad request: "));
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_refused_after_the_request_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let error = read_request(server).await.unwrap_err();
        assert_eq!(
            error,
            "timed out waiting for the request: send it within 2s of connecting"
        );
    }
}
