use lb_userspace::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse_or_exit();
    let level = match &cli.command {
        Command::Run(args) => args.log_level.as_deref(),
        _ => None,
    };
    lb_userspace::logging::init(level);
    let paths = cli.paths();
    let (socket, pin_dir) = (paths.socket.as_path(), paths.pin_dir.as_path());
    let result = match cli.command {
        Command::Run(args) => tokio_main(lb_userspace::run::run(args, paths.clone())),
        Command::Detach => lb_userspace::run::detach(pin_dir),
        Command::Vip(command) => lb_userspace::client::vip_command(command, socket),
        Command::Backend(command) => lb_userspace::client::backend_command(command, socket),
        Command::Sessions(command) => lb_userspace::client::sessions_command(command, socket),
        Command::Announce(command) => lb_userspace::client::announce_command(command, socket),
        Command::Status(args) => lb_userspace::client::status(&args, socket),
        Command::Stats(args) => lb_userspace::stats::stats(&args, pin_dir),
        Command::Flows(args) => lb_userspace::stats::flows(&args, pin_dir),
        Command::Explain(args) => lb_userspace::explain::explain(&args, pin_dir),
        Command::Top(args) => lb_userspace::top::top(&args, &paths),
        Command::Capture(args) => lb_userspace::capture::capture(&args, pin_dir),
        Command::Decap(command) => {
            lb_userspace::decap::command(command, cli.instance.pin_dir.as_deref())
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "lb", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out_dir, markdown } => {
            let command = <Cli as clap::CommandFactory>::command();
            match out_dir {
                _ if markdown => {
                    print!("{}", lb_userspace::reference::markdown(command));
                    Ok(())
                }
                Some(dir) => clap_mangen::generate_to(command, dir),
                None => clap_mangen::Man::new(command).render(&mut std::io::stdout()),
            }
            .map_err(Into::into)
        }
    };
    if let Err(error) = result {
        eprintln!("lb: error: {error:#}");
        std::process::exit(1);
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
