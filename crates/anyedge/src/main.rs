//! The `anyedge` command: parse the command line, then hand over to the library.

use anyedge::cli::{Cli, Command};
use clap::{CommandFactory, Parser};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    anyedge_telemetry::init_logging(cli.log_format.into());
    match cli.command {
        Command::Run(args) => anyedge::run::run(&args),
        Command::Upgrade(args) => anyedge::run::upgrade(&args, cli.log_format.as_str()),
        Command::Check(args) => anyedge::cli::check(&args),
        Command::Demo(args) => anyedge::demo::run(&args),
        Command::Apps(args) => anyedge::manage::apps(&args),
        Command::Instances(args) => anyedge::manage::instances(&args),
        Command::Certs(args) => anyedge::certs::run(&args),
        Command::Status(args) => anyedge::status::run(&args),
        Command::Completions { shell } => {
            print!("{}", anyedge::completions::script(shell));
            ExitCode::SUCCESS
        }
        Command::Man => {
            print!(
                "{}",
                anyedge::completions::man(&anyedge::cli::Cli::command())
            );
            ExitCode::SUCCESS
        }
    }
}

/// mimalloc (v2, no transparent huge pages): measured with callgrind on the HTTP paths, ~7% fewer
/// instructions per request than glibc malloc, and no more memory per idle connection
/// (`bench/results/issue-5-hop-cost.md`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
