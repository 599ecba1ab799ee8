//! The `kvpress` command line: checks the environment ([`env_check`]), parses the arguments and
//! hands them to the command's module (see [`commands`]).

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches};

mod allocator;
mod answers;
mod cli;
mod commands;
mod env_check;
mod output;
mod values;

use cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    allocator::keep_freed_memory();
    let cli = parse_arguments();
    match env_check::check_environment().and_then(|()| run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain of causes, without a backtrace: these are user-facing errors.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The arguments, with every option that takes a value accepting a negative number as its
/// value (`--max-new-tokens -1` then fails with the option's own range, not as an unknown
/// argument `-1`); exits with clap's message on a parse error.
fn parse_arguments() -> Cli {
    let mut command = Cli::command().mut_subcommands(|sub| {
        sub.mut_args(|arg| {
            if arg.get_action().takes_values() {
                arg.allow_negative_numbers(true)
            } else {
                arg
            }
        })
    });
    let matches = command.get_matches_mut();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.format(&mut command).exit())
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
        Command::CalibrateQueries(args) => commands::calibrate_queries::run(args),
        Command::TrainKvzap(args) => commands::train_kvzap::run(args),
        Command::Serve(args) => commands::serve::run(args),
    }
}
