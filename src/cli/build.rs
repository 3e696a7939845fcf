//! `agentrun build`: prepare a package on an executor and print what jobs will run.

use std::time::Instant;

use agentrun_executor::{Prepared, Target};
use serde::Serialize;

use super::output::{errln, outln, print_json, report_error};
use super::{connect_dispatcher, load_package, BuildArgs};
use crate::error::{Error, Exit};

/// What `agentrun build --json` prints.
#[derive(Debug, Serialize)]
struct BuildReport<'a> {
    integration: &'a str,
    agent_id: &'a str,
    digest: &'a str,
    executor: &'a str,
    target: &'a Target,
    cache_hit: bool,
    duration_ms: u64,
}

/// Runs `agentrun build` and returns its exit status.
pub async fn build(args: BuildArgs) -> Exit {
    let started = Instant::now();
    match prepare(&args).await {
        Ok(prepared) => {
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if args.json {
                print_json(&BuildReport {
                    integration: &prepared.integration,
                    agent_id: &prepared.agent_id,
                    digest: &prepared.digest,
                    executor: &prepared.executor,
                    target: &prepared.target,
                    cache_hit: prepared.cache_hit,
                    duration_ms,
                });
            } else {
                match &prepared.target {
                    Target::Image { reference } => outln!("{reference}"),
                    Target::Command { argv, .. } => outln!("{}", shell_words::join(argv)),
                }
                let how = if prepared.cache_hit {
                    "cache hit"
                } else {
                    "prepared"
                };
                errln!("{how} in {duration_ms} ms");
            }
            Exit::Success
        }
        Err(error) => report_error(&error, args.json),
    }
}

async fn prepare(args: &BuildArgs) -> Result<Prepared, Error> {
    let loaded = load_package(&args.target.package).await?;
    let dispatcher = connect_dispatcher(&args.target).await?;
    super::prepare_or_interrupt(&dispatcher, &loaded.integration).await
}
