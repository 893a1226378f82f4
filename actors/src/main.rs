//! The `dyno` binary: the library's subcommands (models, profile, plan) and the
//! runtime's (coordinator, worker, agent). Parses, runs, reports errors.
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dyno",
    version,
    about = "Dynamic onloading of CNN inference for a device fleet (DynO)"
)]
struct Cli {
    #[command(flatten)]
    global: dyno::cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Base(dyno::cli::Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Base(c) => dyno::cli::run(&cli.global, c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
