//! `lb run`: the controller in the foreground.

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::RunArgs,
    dataplane::{AttachOptions, Dataplane},
};

/// Attaches the data plane and holds it until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let options = AttachOptions {
        iface: args.iface,
        mode: args.xdp_mode.into(),
        pin_dir: args.pin_dir,
    };
    let dataplane = Dataplane::attach(options)?;
    let options = dataplane.options();
    say(&format!(
        "lb: attached XDP program {} (id {}) to {} in {} mode; maps pinned under {}",
        lb_common::program_names::BALANCER,
        dataplane.program_id(),
        options.iface,
        options.mode.name(),
        options.pin_dir.display()
    ));
    wait_for_shutdown().await?;
    let iface = options.iface.clone();
    drop(dataplane);
    say(&format!("lb: detached from {iface}"));
    Ok(())
}

/// Prints a status line; a closed stdout (the caller went away) is no
/// reason to stop managing the data plane.
fn say(line: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
