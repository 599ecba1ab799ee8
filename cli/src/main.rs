//! The `kvpress` command line: parses the arguments and hands them to the command's module
//! (see [`commands`]).

use anyhow::Result;
use clap::Parser;

mod allocator;
mod cli;
mod commands;

use cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    allocator::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain of causes, without a backtrace: these are user-facing errors.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::FetchModel => commands::fetch_model::run(),
        Command::Generate(args) => commands::generate::run(args),
        Command::Trace(args) => commands::trace::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Compress(args) => commands::compress::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Fidelity(args) => commands::fidelity::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Presses => commands::presses::run(),
        Command::Bench(args) => commands::bench::run(args),
    }
}
