//! Completing jobs that an earlier process left running, and sweeping leftover containers.

use std::time::Duration;

use futures_util::future::join_all;
use tracing::Instrument;

use super::{pool, Service};
use crate::store::{now_ms, JobFinish, JobRecord, JobState};

/// Shortest wait granted to a job being recovered, so that a container that is about to finish
/// still gets the chance.
const MIN_RECOVER_WAIT: Duration = Duration::from_secs(1);

/// Recovers every job the store records as `running`, then removes containers that no job
/// owns. Never fails: problems are logged and the affected jobs become `interrupted`.
pub(crate) async fn recover(service: &Service) {
    let jobs = match service.store.running_jobs().await {
        Ok(jobs) => jobs,
        Err(error) => {
            tracing::error!(error = %error, "listing jobs left running failed; none is recovered");
            Vec::new()
        }
    };
    if !jobs.is_empty() {
        tracing::info!(
            jobs = jobs.len(),
            "recovering jobs that the previous process left running"
        );
    }
    join_all(jobs.into_iter().map(|job| {
        let span = tracing::info_span!("recover", job_id = job.id, agent_id = %job.agent_id);
        recover_job(service, job).instrument(span)
    }))
    .await;

    // Every recovered container is removed by now, so nothing labelled needs to stay.
    match service.executor().sweep(&[]).await {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(
                containers = removed.len(),
                "removed containers that no job owns"
            );
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(error = %error, "removing leftover containers failed"),
    }
}

async fn recover_job(service: &Service, job: JobRecord) {
    let timeout = job_timeout(service, &job).await;
    let elapsed = Duration::from_millis(
        u64::try_from(now_ms() - job.started_ms.unwrap_or(job.submitted_ms)).unwrap_or(0),
    );
    let wait = timeout.saturating_sub(elapsed).max(MIN_RECOVER_WAIT);

    let jobs = &service.config.jobs;
    let finish = match service
        .executor()
        .recover(job.id, wait, jobs.max_stdout_bytes, jobs.stderr_tail_bytes)
        .await
    {
        Ok(Some(outcome)) => {
            let result = service
                .dispatcher
                .work_result_from_outcome(job.id, &outcome, timeout);
            tracing::info!(
                status = result.status.as_str(),
                exit_code = result.exit_code,
                "job recovered after a restart"
            );
            service
                .metrics
                .observe_job(&job.integration, result.status, result.duration_ms);
            pool::finish_from_result(result)
        }
        Ok(None) => {
            tracing::warn!(
                executor = service.executor().name(),
                "the job's agent cannot be recovered; the job is interrupted and not run again"
            );
            interrupted(format!(
                "the service stopped while the agent ran, and the {} executor cannot recover \
                 its result; the job was not run again, because agents may have side effects",
                service.executor().name()
            ))
        }
        Err(error) => {
            tracing::warn!(error = %error, "recovering the job failed; the job is interrupted");
            interrupted(format!(
                "the service stopped while the agent ran, and recovering its result failed: \
                 {error}; the job was not run again"
            ))
        }
    };
    pool::record(service, job.id, finish).await;
}

/// Returns the job's deadline: the manifest's `[run] timeout_secs`, else `jobs.timeout_secs`.
async fn job_timeout(service: &Service, job: &JobRecord) -> Duration {
    let manifest_timeout = match service.store.integration(job.agent_id).await {
        Ok(Some(record)) => record.manifest.timeout(),
        _ => None,
    };
    manifest_timeout.unwrap_or_else(|| service.config.jobs.timeout())
}

fn interrupted(error: String) -> JobFinish {
    JobFinish {
        state: JobState::Interrupted,
        result: None,
        error: Some(error),
        exit_code: None,
        stderr_tail: None,
    }
}
