//! One job in one container: create, attach, start, write, collect, wait, remove.
//!
//! The steps are separate functions so that a pool of pre-started containers can run create,
//! attach and start ahead of demand, and only write and collect per job.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use agentrun_executor::{
    deadline_label, init_exec_fault, CancellationToken, ExecutorError, ExitStatus, JobEnd,
    JobOutcome, JobSpec, Limits, OutputCapture, Prepared, Target, LABEL_AGENT_ID, LABEL_DEADLINE,
    LABEL_ENGINE, LABEL_INTEGRATION, LABEL_JOB_ID,
};
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    AttachContainerOptions, KillContainerOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tracing::{debug, warn, Instrument, Span};

use crate::connect::{engine_error, status_code};
use crate::{pool, DockerConfig, DockerExecutor, EXECUTOR};

/// How long to wait for the exit code of a container that was just killed. A killed container
/// exits at once; the limit only matters when the engine itself hangs.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Options of the writable tmpfs on `/tmp` when the root file system is read-only.
const TMP_MOUNT_OPTIONS: &str = "rw,nosuid,nodev";

/// Runs one job. See [`Executor::run`](agentrun_executor::Executor::run).
pub(crate) async fn run(
    executor: &DockerExecutor,
    prepared: &Prepared,
    job: JobSpec,
) -> Result<JobOutcome, ExecutorError> {
    let span = tracing::info_span!(
        "job",
        job_id = job.job_id,
        agent_id = %prepared.agent_id,
        executor = EXECUTOR,
        container_id = tracing::field::Empty,
    );
    let image = match &prepared.target {
        Target::Image { reference } => reference.as_str(),
        _ => "",
    };
    run_in_span(executor, prepared, job)
        .instrument(span)
        .await
        .map_err(|error| error.into_agent_start_fault(image))
}

async fn run_in_span(
    executor: &DockerExecutor,
    prepared: &Prepared,
    job: JobSpec,
) -> Result<JobOutcome, ExecutorError> {
    let started = Instant::now();
    let started_at = SystemTime::now();

    let body = container_body(&executor.config, prepared, &job)?;
    let warm = match &executor.pool {
        Some(pool) => pool::run_warm(executor, pool, &prepared.integration, &body, &job).await,
        None => None,
    };
    let (result, id, started_at) = match warm {
        Some(result) => {
            let (end, exit, capture, id, taken_at) = result?;
            (Ok((end, exit, capture)), id, taken_at)
        }
        None => {
            // The guard removes the container on every path, also when this future is dropped
            // before it completes.
            let guard = create(executor, body.clone()).await?;
            let id = guard.id().to_owned();
            Span::current().record("container_id", short_id(&id));
            let result = drive(executor, &id, &job).await;
            guard.remove().await;
            (result, id, started_at)
        }
    };
    if let Some(pool) = &executor.pool {
        pool.replenish(&prepared.integration, &body);
    }

    let (end, exit, capture) = result?;
    let (stdout, stderr_tail, stderr_total_bytes) = capture.finish();
    if executor.config.init && end == JobEnd::Exited && !exit.success() && stdout.is_empty() {
        // The init could not execute the agent: a fault of the package, as when runc reports
        // it without an init.
        if let Some((program, fault)) = init_exec_fault(&String::from_utf8_lossy(&stderr_tail)) {
            let image = match &prepared.target {
                Target::Image { reference } => reference.clone(),
                _ => String::new(),
            };
            return Err(ExecutorError::InvalidPackage {
                path: image.into(),
                reason: fault.reason(program.as_deref()),
            });
        }
    }
    debug!(
        exit_code = exit.code(),
        end = ?end,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "container job finished"
    );
    Ok(JobOutcome {
        end,
        exit,
        stdout,
        stderr_tail,
        stderr_total_bytes,
        started_at,
        duration: started.elapsed(),
        container_id: Some(id),
    })
}

/// Runs the job in a created container, under the job's deadline and cancellation, and returns
/// how it ended, its exit status and its output.
async fn drive(
    executor: &DockerExecutor,
    id: &str,
    job: &JobSpec,
) -> Result<(JobEnd, ExitStatus, OutputCapture), ExecutorError> {
    let stop = Stop::new(job);
    let mut capture = OutputCapture::new(job.max_stdout_bytes, job.stderr_tail_bytes);
    let mut started = false;

    // Attach, start, write and read until the output ends, or until the deadline or a cancel.
    let collected = stop
        .run(attach_start_collect(
            executor,
            id,
            &job.stdin,
            &mut capture,
            &mut started,
        ))
        .await;
    let end = match collected {
        Ok(Ok(Collected::StreamEnded)) => JobEnd::Exited,
        Ok(Ok(Collected::StdoutLimit)) => JobEnd::StdoutLimit,
        Ok(Err(error)) => return Err(error),
        Err(stopped) => stopped.end(),
    };

    // Wait for the exit code. A job that was stopped is killed first. A container that was
    // never started reports exit code 0 to a wait, which would read as success.
    let (end, exit) = if end == JobEnd::Exited {
        match stop
            .run(wait_exit(&executor.docker, &executor.host, id))
            .await
        {
            Ok(exit) => (end, exit?),
            Err(stopped) => (stopped.end(), kill_and_wait(executor, id).await?),
        }
    } else if started {
        (end, kill_and_wait(executor, id).await?)
    } else {
        // NOTE: a start request still in flight when the job stopped may have started the
        // agent; the forced removal that follows kills it.
        (end, ExitStatus::Unknown)
    };
    Ok((end, exit, capture))
}

/// Reason [`attach_start_collect`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collected {
    /// The container closed its output: it has exited or is about to.
    StreamEnded,
    /// The agent wrote more than the stdout cap; it is still running.
    StdoutLimit,
}

/// Attaches to a created container, starts it, writes `stdin` and collects its output. Sets
/// `started` once the engine has confirmed the start.
async fn attach_start_collect(
    executor: &DockerExecutor,
    id: &str,
    stdin: &[u8],
    capture: &mut OutputCapture,
    started: &mut bool,
) -> Result<Collected, ExecutorError> {
    let AttachContainerResults { output, input } = attach(executor, id).await?;
    start(executor, id).await?;
    *started = true;

    // The writer runs beside the reader: an agent that exits without reading all of a large
    // message would otherwise block the write, and with it the job. Dropping the handle when
    // the output ends aborts a write that is still blocked.
    let _writer = spawn_writer(input, stdin.to_vec());
    collect(executor, output, capture).await
}

/// Creates the job's container and returns a guard that removes it.
///
/// The request runs in a task of its own, because the engine may still create the container
/// after the caller dropped this future mid-request. The task then finishes anyway, and the
/// guard it returns to nobody is dropped, which removes the container.
pub(crate) async fn create(
    executor: &DockerExecutor,
    body: ContainerCreateBody,
) -> Result<RemovalGuard, ExecutorError> {
    let docker = executor.docker.clone();
    let host = executor.host.clone();
    let task = tokio::spawn(
        async move {
            let started = Instant::now();
            let created = docker
                .create_container(None, body)
                .await
                .map_err(|error| engine_error(&host, "create container", error))?;
            let guard = RemovalGuard {
                docker: Some(docker),
                id: created.id,
            };
            for warning in &created.warnings {
                warn!(warning = %warning, "engine warning on container create");
            }
            debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                container_id = short_id(&guard.id),
                "container created"
            );
            Ok(guard)
        }
        .in_current_span(),
    );
    task.await.map_err(|error| ExecutorError::Runtime {
        executor: EXECUTOR,
        operation: "create container",
        message: format!("the create task failed: {error}"),
    })?
}

/// Attaches to stdin, stdout and stderr of a container that has not started yet.
///
/// Attaching first is what makes all output visible, because a stream-only attach does not
/// replay output written before it.
pub(crate) async fn attach(
    executor: &DockerExecutor,
    id: &str,
) -> Result<AttachContainerResults, ExecutorError> {
    let started = Instant::now();
    let options = AttachContainerOptions {
        detach_keys: None,
        logs: false,
        stream: true,
        stdin: true,
        stdout: true,
        stderr: true,
    };
    let attached = executor
        .docker
        .attach_container(id, Some(options))
        .await
        .map_err(|error| executor.engine_error("attach", error))?;
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "container attached"
    );
    Ok(attached)
}

/// Starts a created container. This is where the OCI runtime (runc) creates the container's
/// process, usually the longest step of a job.
pub(crate) async fn start(executor: &DockerExecutor, id: &str) -> Result<(), ExecutorError> {
    let started = Instant::now();
    executor
        .docker
        .start_container(id, None)
        .await
        .map_err(|error| executor.engine_error("start container", error))?;
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "container started"
    );
    Ok(())
}

/// Writes `stdin` to the attach connection in a task of its own, then half-closes it.
///
/// The half-close (`shutdown`) is what closes the agent's stdin, because the container was
/// created with `stdin_once`; dropping the writer would not. The returned handle aborts the
/// task when dropped. A write that fails because the agent exited early is logged at debug and
/// otherwise ignored: the job's outcome comes from the output and the exit code.
pub(crate) fn spawn_writer(
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    stdin: Vec<u8>,
) -> AbortOnDrop {
    let task = tokio::spawn(
        async move {
            let written = async {
                input.write_all(&stdin).await?;
                input.flush().await?;
                input.shutdown().await
            }
            .await;
            match written {
                Ok(()) => debug!(stdin_bytes = stdin.len(), "message written, stdin closed"),
                Err(error) => debug!(error = %error, "writing the message stopped early"),
            }
        }
        .in_current_span(),
    );
    AbortOnDrop(task)
}

/// Reads the demultiplexed output into `capture` until the stream ends or stdout passes its cap.
pub(crate) async fn collect(
    executor: &DockerExecutor,
    mut output: impl Stream<Item = Result<LogOutput, BollardError>> + Unpin,
    capture: &mut OutputCapture,
) -> Result<Collected, ExecutorError> {
    let started = Instant::now();
    while let Some(item) = output.next().await {
        match item.map_err(|error| executor.engine_error("read output", error))? {
            // Without a TTY the engine frames stdout and stderr apart; `Console` frames appear
            // only for TTY containers and are treated as stdout.
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                if !capture.push_stdout(&message) {
                    debug!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "stdout passed its cap"
                    );
                    return Ok(Collected::StdoutLimit);
                }
            }
            LogOutput::StdErr { message } => capture.push_stderr(&message),
            LogOutput::StdIn { .. } => {}
        }
    }
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "output ended"
    );
    Ok(Collected::StreamEnded)
}

/// Waits until the container is not running and returns its exit status.
pub(crate) async fn wait_exit(
    docker: &Docker,
    host: &str,
    id: &str,
) -> Result<ExitStatus, ExecutorError> {
    let started = Instant::now();
    let options = WaitContainerOptions {
        condition: "not-running".to_owned(),
    };
    let mut waited = docker.wait_container(id, Some(options));
    let exit = match waited.next().await {
        Some(Ok(response)) => exit_status(response.status_code),
        // bollard reports a non-zero exit code as an error value; it is the agent's exit code.
        Some(Err(BollardError::DockerContainerWaitError { code, .. })) => exit_status(code),
        Some(Err(error)) => return Err(engine_error(host, "wait for exit", error)),
        None => ExitStatus::Unknown,
    };
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        exit_code = exit.code(),
        "container exited"
    );
    Ok(exit)
}

fn exit_status(code: i64) -> ExitStatus {
    i32::try_from(code).map_or(ExitStatus::Unknown, ExitStatus::Code)
}

/// Kills a container and waits, at most [`KILL_WAIT`], for its exit status.
pub(crate) async fn kill_and_wait(
    executor: &DockerExecutor,
    id: &str,
) -> Result<ExitStatus, ExecutorError> {
    kill(executor, id).await;
    match tokio::time::timeout(KILL_WAIT, wait_exit(&executor.docker, &executor.host, id)).await {
        Ok(exit) => exit,
        Err(_) => {
            warn!(
                timeout_ms = KILL_WAIT.as_millis() as u64,
                "killed container did not report an exit status"
            );
            Ok(ExitStatus::Unknown)
        }
    }
}

/// Sends SIGKILL to a container. A container that already stopped or is gone is fine; other
/// failures are logged, since the forced removal that follows kills it as well.
pub(crate) async fn kill(executor: &DockerExecutor, id: &str) {
    let options = KillContainerOptions {
        signal: "SIGKILL".to_owned(),
    };
    match executor.docker.kill_container(id, Some(options)).await {
        Ok(()) => debug!("container killed"),
        Err(error) if matches!(status_code(&error), Some(404 | 409)) => {
            debug!("container already stopped")
        }
        Err(error) => warn!(error = %error, "killing the container failed"),
    }
}

/// Force-removes a container and its anonymous volumes. A container that is gone already is
/// fine; other failures are logged and leave the container to [`sweep`](crate::recover::sweep).
pub(crate) async fn remove(docker: &Docker, id: &str) {
    let started = Instant::now();
    let options = RemoveContainerOptions {
        v: true,
        force: true,
        link: false,
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "container removed"
        ),
        Err(error) if status_code(&error) == Some(404) => debug!("container already removed"),
        Err(error) => warn!(
            container_id = short_id(id),
            error = %error,
            "removing the container failed; a sweep removes it later"
        ),
    }
}

/// Removes a container when dropped, unless [`RemovalGuard::remove`] already did.
///
/// Dropping happens when a `run` future is cancelled mid-job; the removal then runs in a task
/// of its own on the current runtime.
pub(crate) struct RemovalGuard {
    docker: Option<Docker>,
    id: String,
}

impl RemovalGuard {
    pub(crate) fn new(executor: &DockerExecutor, id: &str) -> Self {
        Self::with_docker(executor.docker.clone(), id.to_owned())
    }

    pub(crate) fn with_docker(docker: Docker, id: String) -> Self {
        Self {
            docker: Some(docker),
            id,
        }
    }

    /// Returns the id of the guarded container.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Removes the container now and waits for it. The guard stays armed until the removal
    /// request has finished, so dropping this future part-way still removes the container.
    pub(crate) async fn remove(mut self) {
        if let Some(docker) = &self.docker {
            remove(docker, &self.id).await;
        }
        self.docker = None;
    }
}

impl Drop for RemovalGuard {
    fn drop(&mut self) {
        let Some(docker) = self.docker.take() else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                debug!("job dropped, removing its container in the background");
                runtime.spawn(async move { remove(&docker, &id).await }.in_current_span());
            }
            Err(_) => warn!(
                container_id = short_id(&id),
                "job dropped outside a Tokio runtime; a sweep removes its container later"
            ),
        }
    }
}

impl std::fmt::Debug for RemovalGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemovalGuard")
            .field("id", &self.id)
            .field("armed", &self.docker.is_some())
            .finish()
    }
}

/// A task handle that aborts the task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reason a job stopped before its agent exited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopped {
    TimedOut,
    Cancelled,
}

impl Stopped {
    pub(crate) fn end(self) -> JobEnd {
        match self {
            Self::TimedOut => JobEnd::TimedOut,
            Self::Cancelled => JobEnd::Cancelled,
        }
    }
}

/// The job's deadline and cancellation token, shared by every step that waits on the agent.
#[derive(Debug)]
pub(crate) struct Stop {
    deadline: tokio::time::Instant,
    cancel: CancellationToken,
}

impl Stop {
    /// Starts the job's deadline now.
    pub(crate) fn new(job: &JobSpec) -> Self {
        // A timeout too large to add (such as `Duration::MAX`) means no deadline in practice.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(job.timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 60 * 60));
        Self {
            deadline,
            cancel: job.cancel.clone(),
        }
    }

    /// Runs `step` until it completes, the deadline passes or the job is cancelled.
    pub(crate) async fn run<F: Future>(&self, step: F) -> Result<F::Output, Stopped> {
        tokio::select! {
            // Checked first, so a job cancelled before it started never starts its agent.
            biased;
            () = self.cancel.cancelled() => Err(Stopped::Cancelled),
            () = sleep_until(self.deadline) => Err(Stopped::TimedOut),
            output = step => Ok(output),
        }
    }
}

/// Builds the create request for a job: image, environment, labels, stdio and limits.
///
/// # Errors
///
/// [`ExecutorError::Runtime`] when `prepared` does not name an image (it came from another
/// backend) or an environment variable cannot be passed to a container.
pub(crate) fn container_body(
    config: &DockerConfig,
    prepared: &Prepared,
    job: &JobSpec,
) -> Result<ContainerCreateBody, ExecutorError> {
    let Target::Image { reference } = &prepared.target else {
        return Err(ExecutorError::Runtime {
            executor: EXECUTOR,
            operation: "create container",
            message: format!(
                "package `{}` was prepared by the {} executor, not docker: prepare it with docker first",
                prepared.integration, prepared.executor
            ),
        });
    };

    let labels = HashMap::from([
        (LABEL_ENGINE.to_owned(), config.instance.clone()),
        (LABEL_AGENT_ID.to_owned(), prepared.agent_id.clone()),
        (LABEL_INTEGRATION.to_owned(), prepared.integration.clone()),
        (LABEL_JOB_ID.to_owned(), job.job_id.to_string()),
        (LABEL_DEADLINE.to_owned(), deadline_label(job.timeout)),
    ]);

    Ok(ContainerCreateBody {
        image: Some(reference.clone()),
        env: Some(container_env(&job.env)?),
        labels: Some(labels),
        user: job.limits.user.clone(),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        // The engine closes the agent's stdin when the first attach half-closes. Without it,
        // closing the attach would end the attach but leave the agent waiting for input.
        stdin_once: Some(true),
        tty: Some(false),
        host_config: Some(host_config(config, &job.limits)),
        ..ContainerCreateBody::default()
    })
}

/// Formats the environment as `NAME=value` entries, values unchanged.
///
/// The engine splits each entry at its first `=`, so a value may contain anything but NUL, while
/// a name must be non-empty and free of `=` and NUL.
fn container_env(env: &[(String, String)]) -> Result<Vec<String>, ExecutorError> {
    env.iter()
        .map(|(name, value)| {
            let problem = if name.is_empty() {
                Some("an empty name")
            } else if name.contains('=') {
                Some("a name that contains `=`")
            } else if name.contains('\0') || value.contains('\0') {
                Some("a NUL byte")
            } else {
                None
            };
            match problem {
                // Only the name appears in the message: values may be secrets.
                Some(problem) => Err(ExecutorError::Runtime {
                    executor: EXECUTOR,
                    operation: "create container",
                    message: format!(
                        "environment variable `{}` has {problem}, which a container cannot receive: rename it or change its value",
                        name.replace('\0', "\\0")
                    ),
                }),
                None => Ok(format!("{name}={value}")),
            }
        })
        .collect()
}

fn host_config(config: &DockerConfig, limits: &Limits) -> HostConfig {
    let ulimits: Vec<ResourcesUlimits> = [("nofile", limits.nofile), ("nproc", limits.nproc)]
        .into_iter()
        .filter_map(|(name, value)| {
            let value = i64::try_from(value?).unwrap_or(i64::MAX);
            Some(ResourcesUlimits {
                name: Some(name.to_owned()),
                soft: Some(value),
                hard: Some(value),
            })
        })
        .collect();

    HostConfig {
        memory: limits
            .memory_bytes
            .map(|bytes| i64::try_from(bytes).unwrap_or(i64::MAX)),
        nano_cpus: limits.cpus.map(|cpus| (cpus * 1e9).round() as i64),
        pids_limit: limits.pids,
        network_mode: limits.network.clone().or_else(|| config.network.clone()),
        cap_drop: limits.drop_all_capabilities.then(|| vec!["ALL".to_owned()]),
        security_opt: limits
            .no_new_privileges
            .then(|| vec!["no-new-privileges".to_owned()]),
        readonly_rootfs: limits.read_only_root.then_some(true),
        tmpfs: limits
            .read_only_root
            .then(|| HashMap::from([("/tmp".to_owned(), TMP_MOUNT_OPTIONS.to_owned())])),
        ulimits: (!ulimits.is_empty()).then_some(ulimits),
        log_config: config
            .log_driver
            .as_ref()
            .map(|driver| HostConfigLogConfig {
                typ: Some(driver.clone()),
                config: None,
            }),
        // Removal is explicit, so a failed job's container stays inspectable until then and
        // recovery after a restart can still read a finished container's logs.
        auto_remove: Some(false),
        init: Some(config.init),
        ..HostConfig::default()
    }
}

/// Returns the 12-character short form of a container id, as the Docker CLI shows it.
pub(crate) fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentrun_executor::MessageKind;

    fn prepared() -> Prepared {
        Prepared {
            executor: "docker".to_owned(),
            integration: "Echo".to_owned(),
            agent_id: "3f2504e0-4f89-11d3-9a0c-0305e82c3301".to_owned(),
            digest: "ab".repeat(32),
            target: Target::Image {
                reference: "agentrun/echo-3f2504e0:abab".to_owned(),
            },
            cache_hit: false,
        }
    }

    #[test]
    fn body_sets_stdio_labels_and_image() {
        let job = JobSpec::new(42, MessageKind::Work, b"{}".to_vec());
        let body = container_body(&DockerConfig::default(), &prepared(), &job).expect("body");

        assert_eq!(body.image.as_deref(), Some("agentrun/echo-3f2504e0:abab"));
        assert_eq!(body.open_stdin, Some(true));
        assert_eq!(body.stdin_once, Some(true));
        assert_eq!(body.tty, Some(false));
        let labels = body.labels.expect("labels");
        assert_eq!(labels[LABEL_ENGINE], "agentrun");
        assert_eq!(labels[LABEL_JOB_ID], "42");
        assert_eq!(labels[LABEL_INTEGRATION], "Echo");
        assert_eq!(
            labels[LABEL_AGENT_ID],
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
        );
        assert!(labels[LABEL_DEADLINE].parse::<u64>().is_ok());
        assert_eq!(body.host_config.and_then(|host| host.init), Some(true));
    }

    #[test]
    fn body_maps_limits_to_host_config() {
        let mut job = JobSpec::new(1, MessageKind::Work, Vec::new());
        job.limits = Limits {
            memory_bytes: Some(64 * 1024 * 1024),
            cpus: Some(0.5),
            pids: Some(32),
            network: Some("none".to_owned()),
            read_only_root: true,
            nofile: Some(1024),
            nproc: Some(512),
            user: Some("65534:65534".to_owned()),
            ..Limits::default()
        };
        let body = container_body(&DockerConfig::default(), &prepared(), &job).expect("body");
        let host = body.host_config.expect("host config");

        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        assert_eq!(host.memory, Some(64 * 1024 * 1024));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(32));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(
            host.tmpfs.expect("tmpfs")["/tmp"],
            TMP_MOUNT_OPTIONS.to_owned()
        );
        let ulimits = host.ulimits.expect("ulimits");
        assert_eq!(ulimits.len(), 2);
        assert_eq!(ulimits[0].name.as_deref(), Some("nofile"));
        assert_eq!(ulimits[0].soft, Some(1024));
        assert_eq!(ulimits[1].name.as_deref(), Some("nproc"));
        assert_eq!(ulimits[1].hard, Some(512));
        assert_eq!(host.auto_remove, Some(false));
    }

    #[test]
    fn body_without_hardening_sets_none() {
        let mut job = JobSpec::new(1, MessageKind::Work, Vec::new());
        job.limits.drop_all_capabilities = false;
        job.limits.no_new_privileges = false;
        let body = container_body(&DockerConfig::default(), &prepared(), &job).expect("body");
        let host = body.host_config.expect("host config");

        assert_eq!(host.cap_drop, None);
        assert_eq!(host.security_opt, None);
        assert_eq!(host.readonly_rootfs, None);
        assert_eq!(host.tmpfs, None);
        assert_eq!(host.ulimits, None);
        assert_eq!(host.network_mode, None);
    }

    #[test]
    fn body_network_falls_back_to_config() {
        let config = DockerConfig {
            network: Some("host".to_owned()),
            log_driver: Some("local".to_owned()),
            ..DockerConfig::default()
        };
        let job = JobSpec::new(1, MessageKind::Work, Vec::new());
        let host = container_body(&config, &prepared(), &job)
            .expect("body")
            .host_config
            .expect("host config");

        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(
            host.log_config.and_then(|log| log.typ).as_deref(),
            Some("local")
        );
    }

    #[test]
    fn env_values_pass_unchanged() {
        let env = vec![
            ("EQUALS".to_owned(), "a=b=c".to_owned()),
            ("LINES".to_owned(), "one\ntwo\n".to_owned()),
            ("EMPTY".to_owned(), String::new()),
            ("TEXT".to_owned(), "\"quoted\" 'x' ünïcødé".to_owned()),
        ];
        assert_eq!(
            container_env(&env).expect("valid env"),
            [
                "EQUALS=a=b=c",
                "LINES=one\ntwo\n",
                "EMPTY=",
                "TEXT=\"quoted\" 'x' ünïcødé"
            ]
        );
    }

    #[test]
    fn env_rejects_bad_names_without_values() {
        let cases = [
            ("", "secret-1", "an empty name"),
            ("A=B", "secret-2", "contains `=`"),
            ("NUL", "secret\0-3", "a NUL byte"),
        ];
        for (name, value, expected) in cases {
            let error = container_env(&[(name.to_owned(), value.to_owned())])
                .expect_err("invalid env must fail");
            let text = error.to_string();
            assert!(text.contains(expected), "{name:?}: {text}");
            assert!(!text.contains("secret"), "value leaked: {text}");
        }
    }

    #[test]
    fn body_rejects_command_target() {
        let mut prepared = prepared();
        prepared.executor = "subprocess".to_owned();
        prepared.target = Target::Command {
            argv: vec!["/bin/true".to_owned()],
            working_dir: "/".into(),
        };
        let job = JobSpec::new(1, MessageKind::Work, Vec::new());
        let error = container_body(&DockerConfig::default(), &prepared, &job)
            .expect_err("a command target must fail");
        assert!(
            error
                .to_string()
                .contains("prepared by the subprocess executor"),
            "{error}"
        );
    }

    #[test]
    fn short_id_of_long_and_short_ids() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }
}
