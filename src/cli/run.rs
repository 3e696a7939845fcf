//! `agentrun run`: one work job, end to end.

use agentrun_executor::CancellationToken;

use super::output::{errln, outln, print_json, print_warnings, report_error};
use super::{connect_dispatcher, load_package, RunArgs};
use crate::dispatcher::{JobStatus, WorkRequest, WorkResult};
use crate::error::{exit_for, Error, Exit, Outcome};
use crate::forms::Context;

/// Runs `agentrun run` and returns its exit status.
pub async fn run(args: RunArgs) -> Exit {
    match run_job(&args).await {
        Ok(result) => {
            print_result(&result, args.json);
            exit_for(Outcome::Work(&result))
        }
        Err(error) => report_error(&error, args.json),
    }
}

async fn run_job(args: &RunArgs) -> Result<WorkResult, Error> {
    // Reject bad context arguments before anything slow happens.
    let context = Context::from_pairs(&args.context)?;
    let loaded = load_package(&args.target.package).await?;
    let dispatcher = connect_dispatcher(&args.target).await?;
    let prepared = super::prepare_or_interrupt(&dispatcher, &loaded.integration).await?;

    let cancel = CancellationToken::new();
    let _interrupt = super::cancel_on_interrupt(cancel.clone());
    let request = WorkRequest {
        values: args.set.clone(),
        context,
        env: args.env.clone(),
        timeout: args.timeout,
        cancel,
        job_id: None,
    };
    dispatcher
        .work(&loaded.integration, &prepared, request)
        .await
}

fn print_result(result: &WorkResult, json: bool) {
    print_warnings(&result.warnings);
    if json {
        print_json(result);
        return;
    }

    match result.status {
        JobStatus::Succeeded | JobStatus::Failed => {
            if let Some(message) = &result.message {
                outln!("{message}");
            }
            if let Some(url) = &result.url {
                match &result.url_label {
                    Some(label) if label != url => outln!("{label}: {url}"),
                    _ => outln!("{url}"),
                }
            }
            if result.status == JobStatus::Failed {
                let code = result.return_code.unwrap_or_default();
                errln!("error: the agent reported failure (return_code {code})");
            }
        }
        _ => {
            let error = result
                .error
                .as_deref()
                .unwrap_or("the agent gave no valid reply");
            errln!("error: {error}");
        }
    }
}
