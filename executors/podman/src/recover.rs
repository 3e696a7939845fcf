//! Finishing jobs that an earlier engine process left behind, and removing containers that no
//! job owns.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentrun_executor::{
    deadline_expired, ExecutorError, ExitStatus, JobEnd, JobOutcome, OutputCapture, LABEL_DEADLINE,
    LABEL_ENGINE, LABEL_JOB_ID,
};
use futures_util::StreamExt;
use podman_api::conn::TtyChunk;
use podman_api::models::ListContainer;
use podman_api::opts::{ContainerListFilter, ContainerListOpts, ContainerLogsOpts};
use tracing::{debug, info, warn, Instrument};

use crate::connect::{runtime_error, Connection};
use crate::run::{kill, remove_container, wait_exit_code};
use crate::{PodmanExecutor, EXECUTOR};

/// Completes a job whose container an earlier engine process started. See
/// [`Executor::recover`](agentrun_executor::Executor::recover).
pub(crate) async fn recover(
    executor: &PodmanExecutor,
    job_id: u64,
    timeout: Duration,
    max_stdout_bytes: usize,
    stderr_tail_bytes: usize,
) -> Result<Option<JobOutcome>, ExecutorError> {
    let started = Instant::now();
    let connection = executor.connection().await?;
    let mut containers = list_containers(
        &connection,
        vec![
            ContainerListFilter::LabelKeyVal(
                LABEL_ENGINE.to_owned(),
                executor.config.instance.clone(),
            ),
            ContainerListFilter::LabelKeyVal(LABEL_JOB_ID.to_owned(), job_id.to_string()),
        ],
    )
    .await?;
    // The newest container is the job's; older ones with the same job id are leftovers.
    containers.sort_by_key(|container| std::cmp::Reverse(container.created));
    let mut containers = containers.into_iter();
    let Some(found) = containers.next() else {
        debug!(executor = EXECUTOR, job_id, "no container to recover");
        return Ok(None);
    };
    for leftover in containers.filter_map(|container| container.id) {
        remove_container(&connection, &leftover).await?;
    }
    let Some(id) = found.id.clone() else {
        return Err(runtime_error(
            "list containers",
            "Podman listed a container without an id".to_owned(),
        ));
    };

    let span = tracing::info_span!(
        "recover",
        job_id,
        agent_id = found
            .labels
            .as_ref()
            .and_then(|labels| labels.get(agentrun_executor::LABEL_AGENT_ID))
            .map(String::as_str)
            .unwrap_or_default(),
        executor = EXECUTOR,
        container_id = %id,
    );
    async {
        let state = found.state.clone().unwrap_or_default();
        // A container that never started never received its message: nothing to recover.
        if matches!(state.as_str(), "created" | "configured" | "initialized") {
            info!(state = %state, "the job's container never started; removing it");
            remove_container(&connection, &id).await?;
            return Ok(None);
        }

        // Wait for a running agent, within the job's remaining time.
        let (end, exit) =
            match tokio::time::timeout(timeout, wait_exit_code(&connection, &id)).await {
                Ok(Ok(code)) => (JobEnd::Exited, ExitStatus::Code(code)),
                Ok(Err(error)) => return Err(error),
                Err(_) => (JobEnd::TimedOut, kill(&connection, &id).await),
            };

        // Read what the agent wrote from the container's log.
        let (capture, overflow) =
            read_logs(&connection, &id, max_stdout_bytes, stderr_tail_bytes).await?;
        let end = if overflow && end == JobEnd::Exited {
            JobEnd::StdoutLimit
        } else {
            end
        };
        remove_container(&connection, &id).await?;

        let (stdout, stderr_tail, stderr_total_bytes) = capture.finish();
        let started_at = found
            .started_at
            .and_then(|seconds| u64::try_from(seconds).ok())
            .filter(|seconds| *seconds > 0)
            .map(|seconds| UNIX_EPOCH + Duration::from_secs(seconds))
            .unwrap_or_else(SystemTime::now);
        let outcome = JobOutcome {
            end,
            exit,
            stdout,
            stderr_tail,
            stderr_total_bytes,
            started_at,
            duration: started.elapsed(),
            container_id: Some(id.clone()),
        };
        info!(
            exit_code = outcome.exit.code(),
            end = ?outcome.end,
            elapsed_ms = outcome.duration.as_millis() as u64,
            "job recovered"
        );
        Ok(Some(outcome))
    }
    .instrument(span)
    .await
}

/// Removes the containers of any engine instance whose deadline label expired. See
/// [`Executor::sweep_expired`](agentrun_executor::Executor::sweep_expired).
pub(crate) async fn sweep_expired(executor: &PodmanExecutor) -> Result<Vec<String>, ExecutorError> {
    let connection = executor.connection().await?;
    let containers = list_containers(
        &connection,
        vec![
            ContainerListFilter::LabelKey(LABEL_ENGINE.to_owned()),
            ContainerListFilter::LabelKey(LABEL_DEADLINE.to_owned()),
        ],
    )
    .await?;

    let now = SystemTime::now();
    let mut removed = Vec::new();
    for container in containers {
        let Some(id) = container.id else { continue };
        let labels = container.labels.unwrap_or_default();
        let expired = labels
            .get(LABEL_DEADLINE)
            .is_some_and(|value| deadline_expired(value, now));
        if !expired {
            continue;
        }
        let instance = labels.get(LABEL_ENGINE).cloned().unwrap_or_default();
        remove_container(&connection, &id).await?;
        info!(executor = EXECUTOR, container_id = %id, instance = %instance, "removed a container whose deadline expired");
        removed.push(id);
    }
    Ok(removed)
}

/// Removes this engine's containers whose job id is not in `keep_job_ids`, then those of any
/// instance whose deadline expired. See [`Executor::sweep`](agentrun_executor::Executor::sweep).
pub(crate) async fn sweep(
    executor: &PodmanExecutor,
    keep_job_ids: &[u64],
) -> Result<Vec<String>, ExecutorError> {
    let mut removed = sweep_expired(executor).await?;
    let connection = executor.connection().await?;
    let containers = list_containers(
        &connection,
        vec![ContainerListFilter::LabelKeyVal(
            LABEL_ENGINE.to_owned(),
            executor.config.instance.clone(),
        )],
    )
    .await?;

    for container in containers {
        let Some(id) = container.id else { continue };
        let job_id = container
            .labels
            .as_ref()
            .and_then(|labels| labels.get(LABEL_JOB_ID))
            .and_then(|value| value.parse::<u64>().ok());
        // A container without a readable job id belongs to no job, so it goes too.
        if job_id.is_some_and(|job_id| keep_job_ids.contains(&job_id)) {
            continue;
        }
        remove_container(&connection, &id).await?;
        info!(executor = EXECUTOR, container_id = %id, job_id, "removed a container that no job owns");
        removed.push(id);
    }
    Ok(removed)
}

async fn list_containers(
    connection: &Connection,
    filters: Vec<ContainerListFilter>,
) -> Result<Vec<ListContainer>, ExecutorError> {
    let options = ContainerListOpts::builder()
        .all(true)
        .filter(filters)
        .build();
    connection
        .podman
        .containers()
        .list(&options)
        .await
        .map_err(|error| connection.api_error("list containers", error))
}

/// Reads a finished container's stdout and stderr from its log. Returns the capture and
/// whether stdout passed the cap.
///
/// The log stream is decoded in its own task, because the crate's decoder panics on an unknown
/// stream type byte and a task turns that panic into an error.
async fn read_logs(
    connection: &Connection,
    id: &str,
    max_stdout_bytes: usize,
    stderr_tail_bytes: usize,
) -> Result<(OutputCapture, bool), ExecutorError> {
    let api = connection.podman.containers().get(id);
    let task = tokio::spawn(
        async move {
            let options = ContainerLogsOpts::builder()
                .stdout(true)
                .stderr(true)
                .follow(false)
                .build();
            let mut capture = OutputCapture::new(max_stdout_bytes, stderr_tail_bytes);
            let mut logs = std::pin::pin!(api.logs(&options));
            while let Some(chunk) = logs.next().await {
                match chunk? {
                    TtyChunk::StdOut(bytes) => {
                        if !capture.push_stdout(&bytes) {
                            return Ok((capture, true));
                        }
                    }
                    TtyChunk::StdErr(bytes) => capture.push_stderr(&bytes),
                    TtyChunk::StdIn(_) => {}
                }
            }
            Ok::<_, podman_api::Error>((capture, false))
        }
        .in_current_span(),
    );
    match task.await {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(error)) => Err(connection.api_error("read container logs", error)),
        Err(error) => {
            warn!(%error, "decoding the container log failed");
            Err(runtime_error(
                "read container logs",
                format!("decoding the log stream failed: {error}"),
            ))
        }
    }
}
