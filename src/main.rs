//! The `agentrun` binary: parses the command line and runs one subcommand.

use std::process::ExitCode;

use agentrun::cli::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => agentrun::cli::serve(args),
    }
}
