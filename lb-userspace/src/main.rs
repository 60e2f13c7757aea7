// Lints beyond clippy's default (docs/VERIFICATION.md, "Static analysis");
// `main` is the CLI: it prints its error and exits.
#![warn(
    clippy::allow_attributes,
    clippy::allow_attributes_without_reason,
    clippy::dbg_macro,
    clippy::todo,
    clippy::unimplemented,
    clippy::unwrap_used
)]

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
