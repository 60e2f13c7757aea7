//! `lb run`: the controller in the foreground.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context as _};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
};

use crate::{
    api::{Request, Response, IO_TIMEOUT, MAX_REQUEST_BYTES},
    cli::RunArgs,
    config::FileConfig,
    controller::{Controller, Instance},
    dataplane::{AttachOptions, Dataplane},
    maps::ControlMaps,
    state::Desired,
};

/// How often worker MAC addresses are re-read.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(1);

/// Attaches the data plane, serves the admin API and holds both until
/// SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Everything that can be refused is checked before touching the NIC.
    let desired = match &args.config {
        Some(path) => FileConfig::load(path)?.desired()?,
        None => Desired::new(0),
    };
    claim_socket(&args.socket)?;
    let options = AttachOptions {
        iface: args.iface,
        mode: args.xdp_mode.into(),
        pin_dir: args.pin_dir,
        max_flows: args.max_flows,
    };
    let mut dataplane = Dataplane::attach(options)?;
    let maps = ControlMaps::take(dataplane.ebpf_mut()).context("opening the data plane's maps")?;
    let options = dataplane.options().clone();
    let instance = Instance {
        iface: options.iface.clone(),
        xdp_mode: options.mode.name().into(),
        program_id: dataplane.program_id(),
        pin_dir: options.pin_dir.display().to_string(),
        max_flows: options.max_flows,
    };
    let controller = Arc::new(Mutex::new(Controller::start(desired, maps, instance)?));
    let listener = bind_socket(&args.socket)?;
    say(&format!(
        "lb: attached XDP program {} (id {}) to {} in {} mode; maps pinned under {}; admin socket {}",
        lb_common::program_names::BALANCER,
        dataplane.program_id(),
        options.iface,
        options.mode.name(),
        options.pin_dir.display(),
        args.socket.display()
    ));
    let served = serve(listener, controller).await;
    let _ = std::fs::remove_file(&args.socket);
    drop(dataplane);
    say(&format!("lb: detached from {}", options.iface));
    served
}

async fn serve(listener: UnixListener, controller: Arc<Mutex<Controller>>) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut refresh = tokio::time::interval(NEIGHBOUR_REFRESH);
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = refresh.tick() => {
                let controller = controller.clone();
                tokio::task::spawn_blocking(move || lock(&controller).refresh_neighbours());
            }
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting on the admin socket")?;
                tokio::spawn(answer(stream, controller.clone()));
            }
        }
    }
}

fn lock(controller: &Mutex<Controller>) -> std::sync::MutexGuard<'_, Controller> {
    controller
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads one request (size- and time-limited), carries it out, answers.
async fn answer(stream: UnixStream, controller: Arc<Mutex<Controller>>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES));
    let read = tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await;
    let response = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => tokio::task::spawn_blocking(move || lock(&controller).handle(request))
                .await
                .unwrap_or_else(|e| refusal(format!("the controller failed: {e}"))),
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
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another lb controller is running on {}; stop it or pass another --socket (and --pin-dir)",
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
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    Ok(listener)
}

/// Prints a status line; a closed stdout (the caller went away) is no
/// reason to stop managing the data plane.
fn say(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}
