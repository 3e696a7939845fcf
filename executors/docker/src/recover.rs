//! Finishing jobs that an earlier engine process left behind, and removing leftover containers.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use agentrun_executor::{
    deadline_expired, ExecutorError, ExitStatus, JobEnd, JobOutcome, OutputCapture, LABEL_AGENT_ID,
    LABEL_DEADLINE, LABEL_ENGINE, LABEL_JOB_ID,
};
use bollard::container::LogOutput;
use bollard::models::{ContainerStateStatusEnum, ContainerSummary};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions, LogsOptions};
use futures_util::StreamExt;
use tracing::{debug, info, warn, Instrument, Span};

use crate::connect::status_code;
use crate::run::{kill_and_wait, remove, short_id, wait_exit, RemovalGuard};
use crate::{DockerExecutor, EXECUTOR};

/// Completes a job whose container an earlier engine process created. See
/// [`Executor::recover`](agentrun_executor::Executor::recover).
///
/// A running container is waited for, at most `timeout`, and killed after that. The output
/// comes from the container's logs, which hold everything the agent wrote because the container
/// was attached from before its start. A container that was created but never started ran no
/// agent, so it is removed and the job reported as not recoverable (`Ok(None)`).
pub(crate) async fn recover(
    executor: &DockerExecutor,
    job_id: u64,
    timeout: Duration,
    max_stdout_bytes: usize,
    stderr_tail_bytes: usize,
) -> Result<Option<JobOutcome>, ExecutorError> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "recover",
        job_id,
        executor = EXECUTOR,
        agent_id = tracing::field::Empty,
        container_id = tracing::field::Empty,
    );
    async {
        let mut containers =
            list_containers(executor, &[format!("{LABEL_JOB_ID}={job_id}")]).await?;
        // Newest first. A job has one container, but should a second exist, the newest one
        // is the latest attempt and the others are removed.
        containers.sort_by_key(|container| std::cmp::Reverse(container.created.unwrap_or(0)));
        let mut containers = containers.into_iter();
        let Some(container) = containers.next() else {
            debug!("no container left for the job");
            return Ok(None);
        };
        for older in containers.filter_map(|container| container.id) {
            remove(&executor.docker, &older).await;
        }
        let Some(id) = container.id.clone() else {
            return Ok(None);
        };
        let span = Span::current();
        span.record("container_id", short_id(&id));
        if let Some(agent_id) = label(&container, LABEL_AGENT_ID) {
            span.record("agent_id", agent_id);
        }

        let guard = RemovalGuard::new(executor, &id);
        let result =
            collect_finished(executor, &id, timeout, max_stdout_bytes, stderr_tail_bytes).await;
        guard.remove().await;

        let Some((end, exit, capture)) = result? else {
            return Ok(None);
        };
        let (stdout, stderr_tail, stderr_total_bytes) = capture.finish();
        let created = SystemTime::UNIX_EPOCH
            + Duration::from_secs(container.created.unwrap_or(0).try_into().unwrap_or(0));
        debug!(
            exit_code = exit.code(),
            end = ?end,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "job recovered"
        );
        Ok(Some(JobOutcome {
            end,
            exit,
            stdout,
            stderr_tail,
            stderr_total_bytes,
            // The engine reports creation to the second; start follows it within a second.
            started_at: created,
            duration: SystemTime::now()
                .duration_since(created)
                .unwrap_or(started.elapsed()),
            container_id: Some(id),
        }))
    }
    .instrument(span)
    .await
}

/// Waits for a recovered container to stop and reads its output from its logs. Returns `None`
/// for a container that never started.
async fn collect_finished(
    executor: &DockerExecutor,
    id: &str,
    timeout: Duration,
    max_stdout_bytes: usize,
    stderr_tail_bytes: usize,
) -> Result<Option<(JobEnd, ExitStatus, OutputCapture)>, ExecutorError> {
    let inspected = executor
        .docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(|error| executor.engine_error("inspect container", error))?;
    let state = inspected.state.unwrap_or_default();

    let (mut end, exit) = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => {
            debug!("container never started");
            return Ok(None);
        }
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => (
            JobEnd::Exited,
            state
                .exit_code
                .and_then(|code| i32::try_from(code).ok())
                .map_or(ExitStatus::Unknown, ExitStatus::Code),
        ),
        _ => {
            debug!(
                timeout_ms = timeout.as_millis() as u64,
                "waiting for the running container"
            );
            let waited =
                tokio::time::timeout(timeout, wait_exit(&executor.docker, &executor.host, id))
                    .await;
            match waited {
                Ok(exit) => (JobEnd::Exited, exit?),
                Err(_) => (JobEnd::TimedOut, kill_and_wait(executor, id).await?),
            }
        }
    };

    let mut capture = OutputCapture::new(max_stdout_bytes, stderr_tail_bytes);
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        ..LogsOptions::default()
    };
    let mut logs = executor.docker.logs(id, Some(options));
    while let Some(item) = logs.next().await {
        match item.map_err(|error| executor.engine_error("read container logs", error))? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                if !capture.push_stdout(&message) {
                    if end == JobEnd::Exited {
                        end = JobEnd::StdoutLimit;
                    }
                    break;
                }
            }
            LogOutput::StdErr { message } => capture.push_stderr(&message),
            LogOutput::StdIn { .. } => {}
        }
    }
    Ok(Some((end, exit, capture)))
}

/// Removes the containers of any engine instance whose deadline label expired. See
/// [`Executor::sweep_expired`](agentrun_executor::Executor::sweep_expired).
pub(crate) async fn sweep_expired(executor: &DockerExecutor) -> Result<Vec<String>, ExecutorError> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_owned(),
            vec![LABEL_ENGINE.to_owned(), LABEL_DEADLINE.to_owned()],
        )])),
        ..ListContainersOptions::default()
    };
    let containers = executor
        .docker
        .list_containers(Some(options))
        .await
        .map_err(|error| executor.engine_error("list containers", error))?;

    let now = SystemTime::now();
    let mut removed = Vec::new();
    for container in containers {
        let Some(id) = container.id.clone() else {
            continue;
        };
        let expired =
            label(&container, LABEL_DEADLINE).is_some_and(|value| deadline_expired(value, now));
        if !expired {
            continue;
        }
        let instance = label(&container, LABEL_ENGINE)
            .unwrap_or_default()
            .to_owned();
        let options = bollard::query_parameters::RemoveContainerOptions {
            v: true,
            force: true,
            link: false,
        };
        match executor.docker.remove_container(&id, Some(options)).await {
            Ok(()) => {
                info!(executor = EXECUTOR, container_id = short_id(&id), instance = %instance, "removed a container whose deadline expired");
                removed.push(id);
            }
            Err(error) if status_code(&error) == Some(404) => {}
            // Best effort: another engine may be removing the same container.
            Err(error) => {
                warn!(executor = EXECUTOR, container_id = short_id(&id), instance = %instance, error = %error, "removing a container whose deadline expired failed");
            }
        }
    }
    Ok(removed)
}

/// Removes this engine's containers whose job is not in `keep_job_ids`, then those of any
/// instance whose deadline expired. See [`Executor::sweep`](agentrun_executor::Executor::sweep).
pub(crate) async fn sweep(
    executor: &DockerExecutor,
    keep_job_ids: &[u64],
) -> Result<Vec<String>, ExecutorError> {
    let mut removed = sweep_expired(executor).await?;
    let containers = list_containers(executor, &[]).await?;
    let mut failures = Vec::new();
    for container in containers {
        let Some(id) = container.id.clone() else {
            continue;
        };
        let job_id = label(&container, LABEL_JOB_ID).and_then(|value| value.parse::<u64>().ok());
        if job_id.is_some_and(|job_id| keep_job_ids.contains(&job_id)) {
            continue;
        }
        match executor
            .docker
            .remove_container(
                &id,
                Some(bollard::query_parameters::RemoveContainerOptions {
                    v: true,
                    force: true,
                    link: false,
                }),
            )
            .await
        {
            Ok(()) => {
                debug!(
                    executor = EXECUTOR,
                    container_id = short_id(&id),
                    job_id,
                    "leftover container removed"
                );
                removed.push(id);
            }
            Err(error) if status_code(&error) == Some(404) => {}
            Err(error) => {
                warn!(executor = EXECUTOR, container_id = short_id(&id), job_id, error = %error, "removing a leftover container failed");
                failures.push((id, error));
            }
        }
    }

    if let Some((id, error)) = failures.first() {
        return Err(ExecutorError::Runtime {
            executor: EXECUTOR,
            operation: "remove leftover containers",
            message: format!(
                "{} of {} containers could not be removed, the first ({}) because: {error}",
                failures.len(),
                failures.len() + removed.len(),
                short_id(id)
            ),
        });
    }
    Ok(removed)
}

/// Lists all containers (running or not) that carry this engine's label and every label
/// filter in `filters` (`name=value`).
async fn list_containers(
    executor: &DockerExecutor,
    filters: &[String],
) -> Result<Vec<ContainerSummary>, ExecutorError> {
    let mut labels = vec![format!("{LABEL_ENGINE}={}", executor.config.instance)];
    labels.extend_from_slice(filters);
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".to_owned(), labels)])),
        ..ListContainersOptions::default()
    };
    executor
        .docker
        .list_containers(Some(options))
        .await
        .map_err(|error| executor.engine_error("list containers", error))
}

fn label<'a>(container: &'a ContainerSummary, name: &str) -> Option<&'a str> {
    container.labels.as_ref()?.get(name).map(String::as_str)
}
