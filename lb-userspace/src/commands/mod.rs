//! The `lb` commands: the command line, and one module per subcommand
//! that takes its arguments, asks the controller or reads the pinned maps,
//! and renders the answer.

use cli::{Cli, Command, OutputFormat};

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

fn tokio_main(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    // Two workers: the admin API and load reports stay responsive while a
    // blocking map update holds one.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(work)
}
