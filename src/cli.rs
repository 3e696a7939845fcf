//! Command-line interface of the `agentrun` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::service;

/// Runs security-analytics integrations (agents) on subprocess, Docker or Podman backends.
#[derive(Debug, Parser)]
#[command(name = "agentrun", version)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: the HTTP API, the job queue and health checks.
    Serve(ServeArgs),
}

/// Options of `agentrun serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file, read after /etc/agentrun/agentrun.toml and
    /// $XDG_CONFIG_HOME/agentrun/agentrun.toml and before AGENTRUN_* variables; it must exist.
    #[arg(long, env = "AGENTRUN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration, print it (the token redacted) and exit: 0 when valid, 2 when
    /// not.
    #[arg(long)]
    pub check_config: bool,
}

/// Runs `agentrun serve`. Exit status: 0 after a clean stop, 2 for an invalid configuration,
/// 1 for any other start-up failure.
pub fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("agentrun: {}", error_chain(&error));
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        return match config.to_redacted_toml() {
            Ok(text) => {
                print!("{text}");
                eprintln!("agentrun: the configuration is valid");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("agentrun: printing the configuration failed: {error}");
                ExitCode::from(2)
            }
        };
    }

    service::init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("agentrun-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("agentrun: starting the async runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let text = error_chain(&error);
            tracing::error!(error = %text, "the service could not start");
            eprintln!("agentrun: {text}");
            match error {
                service::ServiceError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Returns an error and its sources as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
