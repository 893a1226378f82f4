//! The `dyno` binary: parses the command line (`dyno_actors::cli`), runs it, reports
//! errors.
use clap::Parser;
use dyno_actors::cli::{self, Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // SIGPIPE stays ignored (Rust's default) wherever there are sockets: a peer that
    // vanishes mid-write must give an error on that socket, not kill the process. The
    // offline commands (models, profiles, plan, simulated experiments) have none, and
    // there a closed stdout (`dyno models list | head`) ends the process quietly.
    if !cli.command.uses_sockets() {
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A testbed stopped by a signal: its handler exits once it is removed.
            dyno_actors::testbed::wait_for_a_stopping_handler();
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
