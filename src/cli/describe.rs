//! `agentrun describe`: one health check.

use agentrun_executor::CancellationToken;

use super::output::{errln, outln, print_json, print_warnings, report_error};
use super::{connect_dispatcher, load_package, DescribeArgs};
use crate::dispatcher::{merge_env, undeclared_env, DescribeOptions, HealthReport};
use crate::error::{exit_for, Error, Exit, Outcome};

/// Runs `agentrun describe` and returns its exit status.
pub async fn describe(args: DescribeArgs) -> Exit {
    match check_health(&args).await {
        Ok((name, report)) => {
            if args.json {
                print_json(&report);
            } else if report.healthy {
                outln!("{name} is healthy: heartbeat in {} ms", report.duration_ms);
            } else {
                let error = report.error.as_deref().unwrap_or("no heartbeat");
                errln!("error: {name} is unhealthy: {error}");
            }
            exit_for(Outcome::Describe(&report))
        }
        Err(error) => report_error(&error, args.json),
    }
}

async fn check_health(args: &DescribeArgs) -> Result<(String, HealthReport), Error> {
    let mut loaded = load_package(&args.target.package).await?;
    loaded.integration.env = merge_env(&loaded.integration.env, &args.env)?;
    print_warnings(&undeclared_env(&loaded.integration.manifest, &args.env));
    let dispatcher = connect_dispatcher(&args.target).await?;
    let prepared = super::prepare_or_interrupt(&dispatcher, &loaded.integration).await?;

    let cancel = CancellationToken::new();
    let _interrupt = super::cancel_on_interrupt(cancel.clone());
    let options = DescribeOptions {
        job_id: None,
        timeout: args.timeout,
        cancel: Some(cancel),
    };
    let report = dispatcher
        .describe(&loaded.integration, &prepared, options)
        .await?;
    Ok((loaded.integration.name.clone(), report))
}
