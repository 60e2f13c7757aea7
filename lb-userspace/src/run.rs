//! `lb run`: the controller in the foreground.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    activity,
    api::{Request, Response, IO_TIMEOUT, MAX_REQUEST_BYTES},
    cli::RunArgs,
    config::FileConfig,
    controller::{Controller, Instance},
    dataplane::{AttachOptions, Dataplane, DataplaneError, Takeover},
    health::{self, Supervisor},
    instance::Paths,
    load,
    maps::ControlMaps,
    sessions,
    state::Desired,
    state_file::StateFile,
};

/// How often the controller scans flows, expires load reports and
/// re-reads worker MAC addresses.
const TICK: Duration = Duration::from_secs(1);
/// Sticky sessions are expired every this many ticks.
const SESSION_EXPIRY_TICKS: u64 = 10;
/// A flow-table scan may take at most this share of the time (a huge
/// table is scanned less often rather than hogging a core).
const SCAN_DUTY: u32 = 10;

type Shared<T> = Arc<Mutex<T>>;

/// Attaches the data plane, serves the admin API and holds both until
/// SIGINT or SIGTERM.
pub async fn run(args: RunArgs, paths: Paths) -> anyhow::Result<()> {
    // Everything that can be refused is checked before touching the NIC,
    // and what needs no file before the state file.
    preflight(&args.iface)?;
    claim_socket(&paths.socket)?;
    let (state_file, saved) = StateFile::open(&paths, &args.iface)?;
    let desired = desired_state(saved, args.config.as_deref())?;
    let load_endpoint = load_endpoint(&args).await?;
    let metrics_endpoint = match args.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?,
        ),
        None => None,
    };
    let options = AttachOptions {
        name: paths.name.to_string(),
        iface: args.iface,
        mode: args.xdp_mode.into(),
        pin_dir: paths.pin_dir.clone(),
        max_flows: args.max_flows,
        force: args.force,
        variant: args.program_variant,
    };
    let mut dataplane = Dataplane::attach(options)?;
    let maps = ControlMaps::take(dataplane.ebpf_mut()).context("opening the data plane's maps")?;
    let options = dataplane.options().clone();
    let instance = Instance {
        name: paths.name.to_string(),
        iface: options.iface.clone(),
        xdp_mode: options.mode.name().into(),
        program_id: dataplane.program_id(),
        pin_dir: options.pin_dir.clone(),
        max_flows: options.max_flows,
        load_listen: args.load_listen.map(|a| a.to_string()),
    };
    let state_path = state_file.path().to_owned();
    let link = dataplane.take_link();
    let controller = Controller::start(desired, maps, instance, Some(state_file), link)?;
    let controller = Arc::new(Mutex::new(controller));
    let listener = bind_socket(&paths.socket)?;
    let signals = StopSignals::install()?;
    say(&format!(
        "lb: attached XDP program {} (id {}) to {} in {} mode; maps pinned under {}; admin socket {}",
        lb_common::program_names::BALANCER,
        dataplane.program_id(),
        options.iface,
        options.mode.name(),
        options.pin_dir.display(),
        paths.socket.display()
    ));
    let takeover = takeover_line(dataplane.takeover(), &state_path);
    tracing::info!("{}", takeover.trim_start_matches("lb: "));
    say(&takeover);
    if let Some((reports, token)) = load_endpoint {
        let addr = reports.local_addr()?;
        let controller = controller.clone();
        tokio::spawn(load::serve(reports, token, move |report| {
            tokio::task::block_in_place(|| lock(&controller).push_load(report))
        }));
        say(&format!("lb: accepting load reports on http://{addr}/load"));
    }
    if let Some(listener) = metrics_endpoint {
        let addr = listener.local_addr()?;
        let controller = controller.clone();
        tokio::spawn(crate::metrics::serve(listener, move || {
            lock(&controller).metrics_snapshot()
        }));
        say(&format!("lb: serving metrics on http://{addr}/metrics"));
    }
    let served = serve(listener, controller, signals).await;
    let _ = std::fs::remove_file(&paths.socket);
    if args.detach_on_exit {
        dataplane.detach();
        say(&format!("lb: detached from {}", options.iface));
    } else {
        say(&format!(
            "lb: controller stopped; the data plane keeps forwarding on {} (pins under {}): `lb run` again adopts it, `lb detach --pin-dir {}` removes it",
            options.iface,
            options.pin_dir.display(),
            options.pin_dir.display()
        ));
    }
    served
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
    crate::dataplane::detach_pins(dir);
    say(&format!(
        "lb: detached; removed the pins under {}",
        dir.display()
    ));
    Ok(())
}

/// Refuses what `Dataplane::attach` would, before lb touches any file: a
/// missing interface, missing privileges.
fn preflight(iface: &str) -> Result<(), DataplaneError> {
    if crate::iface::index_of(iface).is_none() {
        return Err(DataplaneError::NoSuchInterface(iface.to_owned()));
    }
    if !crate::privileges::can_manage_xdp() {
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

/// The load report endpoint's socket and token, when asked for.
async fn load_endpoint(
    args: &RunArgs,
) -> anyhow::Result<Option<(tokio::net::TcpListener, String)>> {
    let Some(addr) = args.load_listen else {
        return Ok(None);
    };
    let Some(path) = &args.load_token_file else {
        bail!("--load-listen needs --load-token-file: workers must authenticate their reports");
    };
    let token = load::read_token(path)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the load report endpoint {addr}"))?;
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

async fn serve(
    listener: UnixListener,
    controller: Shared<Controller>,
    signals: StopSignals,
) -> anyhow::Result<()> {
    let StopSignals {
        mut interrupt,
        mut terminate,
    } = signals;
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let supervisor = Arc::new(Mutex::new(Supervisor::new(report_tx)));
    reconcile(&controller, &supervisor);
    let housekeeping = tokio::spawn(housekeeping(controller.clone(), supervisor.clone()));
    let result = loop {
        tokio::select! {
            _ = interrupt.recv() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
            Some(report) = reports.recv() => {
                let controller = controller.clone();
                tokio::task::spawn_blocking(move || lock(&controller).record_check(report));
            }
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting on the admin socket")?;
                tokio::spawn(answer(stream, controller.clone(), supervisor.clone()));
            }
        }
    };
    housekeeping.abort();
    result
}

/// Points the health checkers at the workers the controller has now.
fn reconcile(controller: &Mutex<Controller>, supervisor: &Mutex<Supervisor>) {
    let targets: Vec<health::Target> = lock(controller).check_targets();
    lock(supervisor).reconcile(targets);
}

/// Once a tick: scans the flow table (paced), expires sticky sessions now
/// and then, and lets the controller act on what it learnt.
async fn housekeeping(controller: Shared<Controller>, supervisor: Shared<Supervisor>) {
    let pin_dir: PathBuf = lock(&controller).pin_dir().to_owned();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_scan = Instant::now();
    for round in 1u64.. {
        ticks.tick().await;
        let (c, dir) = (controller.clone(), pin_dir.clone());
        let scan_due = Instant::now() >= next_scan;
        let work = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let flows = scan_due.then(|| activity::count(&dir)).and_then(|r| {
                r.inspect_err(|e| tracing::warn!("scanning flows: {e}"))
                    .ok()
            });
            let took = started.elapsed();
            if round % SESSION_EXPIRY_TICKS == 0 {
                let ttls = lock(&c).sticky_ttls();
                match sessions::expire(&dir, &ttls, activity::monotonic_ns()) {
                    Ok((removed, remaining)) => {
                        if removed > 0 {
                            tracing::debug!("expired {removed} sticky sessions");
                        }
                        lock(&c).set_session_count(remaining as u64);
                    }
                    Err(e) => tracing::warn!("expiring sticky sessions: {e}"),
                }
            }
            lock(&c).tick(flows);
            took
        });
        if let Ok(took) = work.await {
            next_scan = Instant::now() + took * SCAN_DUTY;
        }
        reconcile(&controller, &supervisor);
    }
}

fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads one request (size- and time-limited), carries it out, answers.
async fn answer(
    stream: UnixStream,
    controller: Shared<Controller>,
    supervisor: Shared<Supervisor>,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES));
    let read = tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await;
    let response = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let c = controller.clone();
                let response = tokio::task::spawn_blocking(move || lock(&c).handle(request))
                    .await
                    .unwrap_or_else(|e| refusal(format!("the controller failed: {e}")));
                reconcile(&controller, &supervisor);
                response
            }
            Err(error) => refusal(format!("bad request: {error}")),
        },
        Ok(Err(error)) => refusal(format!("reading the request: {error}")),
        Err(_) => refusal("timed out waiting for the request".into()),
    };
    if let Ok(mut text) = serde_json::to_string(&response) {
        text.push('\n');
        let _ = tokio::time::timeout(IO_TIMEOUT, write.write_all(text.as_bytes())).await;
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
