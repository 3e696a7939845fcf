//! Embedding agentrun as a library: a tokio program of its own that runs an integration
//! through the dispatcher, without the `agentrun` binary or the service.
//!
//! ```text
//! cargo run --example embed -- [PACKAGE] [EXECUTOR]
//! ```
//!
//! PACKAGE defaults to `examples/echo` and EXECUTOR (`subprocess`, `docker` or `podman`) to
//! `subprocess`. The program checks the agent's health, sends it one `work` message and prints
//! the result as the CLI's `--json` output does.

use std::path::PathBuf;
use std::process::ExitCode;

use agentrun::backends::{self, BackendsConfig, ExecutorKind};
use agentrun::dispatcher::{DescribeOptions, Dispatcher, WorkRequest};
use agentrun::forms::Context;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let package = PathBuf::from(args.next().unwrap_or_else(|| "examples/echo".to_owned()));
    let executor: ExecutorKind = match args.next().unwrap_or_default().parse() {
        Ok(kind) => kind,
        Err(_) => ExecutorKind::Subprocess,
    };

    match run(package, executor).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("embed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(package: PathBuf, kind: ExecutorKind) -> Result<(), Box<dyn std::error::Error>> {
    // Connect a backend and put a dispatcher in front of it. The dispatcher is shared by
    // reference between concurrent jobs; wrap it in an Arc to hand it to spawned tasks.
    let executor = backends::connect(kind, &BackendsConfig::default()).await?;
    let dispatcher = Dispatcher::new(executor);

    // Open the package (a folder or a .zip) and read its manifest, then prepare it: this
    // builds the image on container backends and resolves the command on the subprocess one.
    let loaded = agentrun::cli::load_package(&package).await?;
    let integration = loaded.integration;
    let prepared = dispatcher.prepare(&integration).await?;

    // A health check: the agent replies to `describe` with a heartbeat.
    let health = dispatcher
        .describe(&integration, &prepared, DescribeOptions::default())
        .await?;
    eprintln!(
        "{}: healthy = {}, {} ms",
        integration.name, health.healthy, health.duration_ms
    );

    // One job. Fields left out get their prefill, with SIFT-* keywords taken from the context.
    let request = WorkRequest {
        values: vec![(
            "message".to_owned(),
            "hello from an embedding program".to_owned(),
        )],
        context: Context {
            user_name: Some("embed@example.com".to_owned()),
            ..Context::default()
        },
        ..WorkRequest::default()
    };
    let result = dispatcher.work(&integration, &prepared, request).await?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
