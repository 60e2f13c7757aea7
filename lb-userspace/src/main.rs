use lb_userspace::commands::{
    self,
    cli::{Cli, Command},
};

fn main() {
    let cli = Cli::parse_or_exit();
    let level = match &cli.command {
        Command::Run(args) => args.log_level.as_deref(),
        _ => None,
    };
    lb_userspace::logging::init(level);
    if let Err(error) = commands::dispatch(cli) {
        eprintln!("lb: error: {error:#}");
        std::process::exit(1);
    }
}
