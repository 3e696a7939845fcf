//! The `agentrun` binary: parses arguments, sets up logging and runs one subcommand.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use agentrun::cli::{self, Cli, Command, GlobalArgs, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The service configures its logging from its configuration file.
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(&cli.global);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            // A closed stderr leaves nowhere to report the error, and `eprintln!` would panic.
            let _ = writeln!(
                std::io::stderr(),
                "error: starting the async runtime failed: {error}"
            );
            return ExitCode::from(4);
        }
    };
    runtime.block_on(cli::execute(cli)).into()
}

/// Logs to stderr: warnings by default, more with each -v, or as `RUST_LOG` says.
fn init_logging(global: &GlobalArgs) {
    let level = match global.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match global.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
