//! `api-load`: submits jobs to a fresh `agentrun serve` at a fixed rate over TCP on loopback
//! and checks that none is lost or run twice, while it samples the service's memory.
//!
//! ```text
//! cargo build --release --bin agentrun --example api-load
//! target/release/examples/api-load --rate 50 --duration-secs 300
//! ```
//!
//! It exits with status 1 when a job was lost, duplicated, rejected or did not succeed. See
//! `tests/load/mod.rs` for what it starts and compares.

#[path = "mod.rs"]
mod load;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "api-load",
    about = "Load test of job submission over the HTTP API"
)]
struct Args {
    /// The agentrun binary. Default: `agentrun` next to this example's folder, as cargo builds it.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Submissions started per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds of submissions.
    #[arg(long, default_value_t = 300)]
    duration_secs: u64,
    /// Seconds between two samples of the service's resident memory.
    #[arg(long, default_value_t = 5)]
    sample_secs: u64,
    /// `jobs.concurrency` of the service.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// `jobs.per_integration` of the service.
    #[arg(long, default_value_t = 8)]
    per_integration: usize,
    /// Maximum submissions in flight.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Maximum seconds to wait for the queue to drain after the last submission.
    #[arg(long, default_value_t = 600)]
    drain_secs: u64,
    /// Print every memory sample.
    #[arg(long)]
    samples: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let binary = args.binary.unwrap_or_else(default_binary);
    let options = load::LoadOptions {
        binary,
        rate_per_sec: args.rate,
        duration: Duration::from_secs(args.duration_secs),
        sample_interval: Duration::from_secs(args.sample_secs),
        concurrency: args.concurrency,
        per_integration: args.per_integration,
        max_in_flight: args.max_in_flight,
        drain_timeout: Duration::from_secs(args.drain_secs),
    };
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("error: creating a temporary folder failed: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "api-load: {} submissions/s for {} s, service {} (concurrency {}, per integration {})",
        options.rate_per_sec,
        args.duration_secs,
        options.binary.display(),
        options.concurrency,
        options.per_integration
    );
    let report = match load::run(&options, dir.path()).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    print!("{}", report.summary());
    if args.samples {
        for sample in &report.memory {
            println!("  {:7.1} s  {} KiB", sample.at_secs, sample.rss_kib);
        }
    }
    if report.is_clean() {
        println!("result: every accepted job ran exactly once and succeeded");
        std::process::ExitCode::SUCCESS
    } else {
        println!(
            "result: FAILED; lost {:?}, duplicated {:?}",
            report.lost, report.duplicated
        );
        std::process::ExitCode::FAILURE
    }
}

/// `target/<profile>/agentrun`, two folders up from `target/<profile>/examples/api-load`.
fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|dir| dir.join("agentrun")))
        .unwrap_or_else(|| PathBuf::from("agentrun"))
}
