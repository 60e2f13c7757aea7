//! The `lb` commands: the command line, and one module per subcommand
//! that takes its arguments, asks the controller or reads the pinned maps,
//! and renders the answer.

use cli::{Cli, Command, DecapCommand, OutputFormat};

pub(crate) mod admin;
pub(crate) mod capture;
pub mod cli;
pub(crate) mod decap;
pub(crate) mod explain;
pub(crate) mod reference;
pub(crate) mod run;
pub(crate) mod stats;
pub(crate) mod table;
pub(crate) mod top;

/// Runs the command `cli` names.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if prints_to_a_pipe(&cli.command) {
        end_quietly_on_a_closed_pipe();
    }
    let paths = cli.paths();
    let output = cli.instance.output.unwrap_or(OutputFormat::Table);
    let (socket, pin_dir) = (paths.socket.as_path(), paths.pin_dir.as_path());
    // What is found under a pin directory that another user could swap is
    // not to be trusted: it could link to another instance's maps.
    if matches!(
        cli.command,
        Command::Stats
            | Command::Flows(_)
            | Command::Explain(_)
            | Command::Top(_)
            | Command::Capture(_)
    ) {
        crate::dataplane::check_pin_dir(pin_dir)?;
    }
    match cli.command {
        Command::Run(args) => tokio_main(run::run(args, paths.clone())),
        Command::Detach => run::detach(pin_dir),
        Command::Vip(command) => admin::vip_command(command, output, socket),
        Command::Backend(command) => admin::backend_command(command, output, socket),
        Command::Sessions(command) => admin::sessions_command(command, output, socket),
        Command::Announce(command) => admin::announce_command(command, output, socket),
        Command::Status => admin::status(output, socket),
        Command::Stats => stats::stats(output, pin_dir),
        Command::Flows(args) => stats::flows(&args, output, pin_dir),
        Command::Explain(args) => explain::explain(&args, output, pin_dir),
        Command::Top(args) => top::top(&args, &paths),
        Command::Capture(args) => capture::capture(&args, pin_dir),
        Command::Decap(command) => decap::command(command, output, cli.instance.pin_dir.as_deref()),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "lb", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out_dir, markdown } => {
            let command = <Cli as clap::CommandFactory>::command();
            match out_dir {
                _ if markdown => {
                    print!("{}", reference::markdown(command));
                    Ok(())
                }
                Some(dir) => clap_mangen::generate_to(command, dir),
                None => clap_mangen::Man::new(command).render(&mut std::io::stdout()),
            }
            .map_err(Into::into)
        }
    }
}

/// Whether a command only prints, so that a reader that stops early (`lb
/// flows | head -1`) should end it. `run` talks over sockets and `capture`
/// and `top` end their own way; they keep Rust's ignored SIGPIPE.
fn prints_to_a_pipe(command: &Command) -> bool {
    !matches!(
        command,
        Command::Run(_)
            | Command::Capture(_)
            | Command::Top(_)
            | Command::Decap(DecapCommand::Attach { .. } | DecapCommand::Detach { .. })
    )
}

/// Restores SIGPIPE's default action, as a Unix filter has it: Rust
/// ignores the signal, and `println!` then panics on the EPIPE it gets
/// instead.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: setting a signal's disposition to its default installs no
    // handler, and happens before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn tokio_main(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    // Two workers: the admin API and load reports stay responsive while a
    // blocking map update holds one.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(work)
}
