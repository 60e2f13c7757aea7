use clap::Parser as _;
use lb_userspace::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => tokio_main(lb_userspace::run::run(args)),
        Command::Stats(args) => lb_userspace::stats::stats(&args),
        Command::Demo => lb_userspace::demo::demo(),
    };
    if let Err(error) = result {
        eprintln!("lb: error: {error:#}");
        std::process::exit(1);
    }
}

fn tokio_main(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}
