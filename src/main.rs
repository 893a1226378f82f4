//! The `dyno` binary: parse the command line, run it, report errors.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = dyno::cli::Cli::parse();
    match dyno::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
