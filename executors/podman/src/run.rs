//! Running one job in a fresh container: create, attach, start, write, collect, wait, remove.
//!
//! Each step is a function of its own so that a pool of pre-started containers can reuse the
//! first three ahead of demand.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentrun_executor::{
    deadline_label, init_exec_fault, CancellationToken, ExecFault, ExecutorError, ExitStatus,
    JobEnd, JobOutcome, JobSpec, OutputCapture, Prepared, Target, LABEL_AGENT_ID, LABEL_DEADLINE,
    LABEL_ENGINE, LABEL_INTEGRATION, LABEL_JOB_ID,
};
use podman_api::opts::ContainerDeleteOpts;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use crate::connect::{is_not_found, runtime_error, Connection};
use crate::libpod::{
    self, AttachReader, AttachWriter, CreateSpec, LogConfiguration, Mount, Namespace, OutputChunk,
    Rlimit,
};
use crate::{PodmanConfig, PodmanExecutor, EXECUTOR};

/// Limit on removing a container after its job, separate from the job's deadline so that a job
/// that timed out is still cleaned up.
pub(crate) const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Limit on waiting for a killed container's exit code.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How long to keep reading the attach stream after the agent was killed or failed to start,
/// for output that was still on its way. The stream ends by itself once the container has
/// exited, normally within milliseconds.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// First pause between two looks at a container's state while waiting for its exit. The
/// pause doubles up to [`POLL_MAX_INTERVAL`]: once the output stream has ended, the first look
/// almost always finds the container exited, while an agent that closed its output and keeps
/// running is polled at a low rate.
const POLL_FIRST_INTERVAL: Duration = Duration::from_millis(5);

/// Maximum pause between two looks at a container's state.
const POLL_MAX_INTERVAL: Duration = Duration::from_millis(200);

/// Capacity of the channel between the attach reader task and the collector, in chunks.
const OUTPUT_CHANNEL_CHUNKS: usize = 16;

/// CFS period used to express a CPU limit, in microseconds (the kernel's default).
const CPU_PERIOD_MICROS: u64 = 100_000;

/// Smallest CFS quota the kernel accepts, in microseconds.
const CPU_MIN_QUOTA_MICROS: i64 = 1_000;

/// Runs one job. See [`Executor::run`](agentrun_executor::Executor::run).
pub(crate) async fn run(
    executor: &PodmanExecutor,
    prepared: &Prepared,
    job: JobSpec,
) -> Result<JobOutcome, ExecutorError> {
    let started = Instant::now();
    let started_at = SystemTime::now();
    let Target::Image { reference } = &prepared.target else {
        return Err(runtime_error(
            "run",
            format!(
                "the package of agent {} was prepared by the {} executor, not for containers; prepare it with the podman executor",
                prepared.agent_id, prepared.executor
            ),
        ));
    };
    let span = tracing::info_span!(
        "job",
        job_id = job.job_id,
        agent_id = %prepared.agent_id,
        executor = EXECUTOR,
        container_id = tracing::field::Empty,
    );

    async move {
        let connection = executor.connection().await?;
        let spec = container_spec(&executor.config, prepared, reference, &job)?;
        let deadline = deadline_after(job.timeout);
        let stop = StopSignals {
            deadline,
            cancel: job.cancel.clone(),
        };
        let mut capture = OutputCapture::new(job.max_stdout_bytes, job.stderr_tail_bytes);

        let warm = match &executor.pool {
            Some(pool) => pool.claim(&connection, &prepared.integration, &spec).await,
            None => None,
        };
        let ran = match warm {
            Some(claimed) => {
                tracing::Span::current().record("container_id", claimed.id());
                claimed.run(&job, &stop, &mut capture).await
            }
            None => run_container(&connection, spec.clone(), &job, &stop, &mut capture).await,
        };
        if let Some(pool) = &executor.pool {
            pool.replenish(&connection, &prepared.integration, &spec);
        }
        let ran = ran.map_err(|error| error.into_agent_start_fault(reference))?;

        let outcome = finish(ran, capture, started_at, started);
        if executor.config.init
            && outcome.end == JobEnd::Exited
            && !outcome.exit.success()
            && outcome.stdout.is_empty()
        {
            // The init could not execute the agent: a fault of the package, as when runc
            // reports it without an init.
            if let Some((program, fault)) = init_exec_fault(&outcome.stderr_text()) {
                let program = match program {
                    Some(program) => Some(program),
                    None => image_program(&connection, reference).await,
                };
                // A name without `/` is looked up in PATH, so "not found" means not on it.
                let fault = match (&program, fault) {
                    (Some(program), ExecFault::NotFound) if !program.contains('/') => {
                        ExecFault::NotOnPath
                    }
                    (_, fault) => fault,
                };
                return Err(ExecutorError::InvalidPackage {
                    path: reference.into(),
                    reason: fault.reason(program.as_deref()),
                });
            }
        }
        info!(
            exit_code = outcome.exit.code(),
            end = ?outcome.end,
            elapsed_ms = outcome.duration.as_millis() as u64,
            stdout_bytes = outcome.stdout.len(),
            stderr_bytes = outcome.stderr_total_bytes,
            "job finished"
        );
        Ok(outcome)
    }
    .instrument(span)
    .await
}

/// Returns the program that the image's ENTRYPOINT (else its CMD) starts, or `None` when the
/// image cannot be inspected. catatonit, Podman's init, does not name it when it fails.
async fn image_program(connection: &Connection, image: &str) -> Option<String> {
    let data = match connection.podman.images().get(image).inspect().await {
        Ok(data) => data,
        Err(error) => {
            debug!(error = %error, image, "inspecting the image for its program failed");
            return None;
        }
    };
    let config = data.config?;
    let entrypoint = config.entrypoint.unwrap_or_default();
    let command = if entrypoint.is_empty() {
        config.cmd.unwrap_or_default()
    } else {
        entrypoint
    };
    command.into_iter().next()
}

/// The result of running a job's container.
pub(crate) struct Ran {
    end: JobEnd,
    exit: ExitStatus,
    container_id: Option<String>,
    /// When the container was started, `None` when the job stopped before that.
    started_at: Option<SystemTime>,
}

impl Ran {
    /// Returns the result of a job that stopped before its agent started.
    fn stopped(end: JobEnd, container_id: Option<String>) -> Self {
        Self {
            end,
            exit: ExitStatus::Unknown,
            container_id,
            started_at: None,
        }
    }
}

/// Runs the container phases and returns how the job ended. Removes the container on every
/// path.
async fn run_container(
    connection: &Connection,
    spec: CreateSpec,
    job: &JobSpec,
    stop: &StopSignals,
    capture: &mut OutputCapture,
) -> Result<Ran, ExecutorError> {
    // Create. The guard removes the container if this future is dropped from here on; until
    // the id is known it goes by the container's name.
    let mut container = Container::new(connection.clone(), spec.name.clone().unwrap_or_default());
    let id = match stop.until(create(connection, &spec)).await {
        Ok(Ok(id)) => id,
        Ok(Err(error)) => {
            container.remove().await;
            return Err(error);
        }
        Err(end) => {
            container.remove().await;
            return Ok(Ran::stopped(end, None));
        }
    };
    container.set_id(id.clone());
    tracing::Span::current().record("container_id", id.as_str());

    // Attach before start, so that no output is lost and runtime errors surface here.
    let (reader, writer) = match stop.until(attach(&container)).await {
        Ok(Ok(halves)) => halves,
        Ok(Err(error)) => {
            container.remove().await;
            return Err(error);
        }
        Err(end) => {
            container.remove().await;
            return Ok(Ran::stopped(end, Some(id)));
        }
    };
    let (mut output, reader_task) = spawn_reader(reader, ());

    // Start.
    let started_at = SystemTime::now();
    match stop.until(start(&container)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            let error = with_stderr(error, &mut output, capture).await;
            container.remove().await;
            return Err(error);
        }
        Err(end) => {
            // The container may have started before the stop: kill it like a running one.
            let exit = kill_and_drain(&container, &mut output, capture).await;
            container.remove().await;
            return Ok(Ran {
                end,
                exit,
                container_id: Some(id),
                started_at: Some(started_at),
            });
        }
    }

    let started = Started {
        container,
        writer,
        output,
        reader_task,
        started_at,
    };
    run_started(started, job, stop, capture).await
}

/// A started container whose agent waits for its message, with the two halves of its attach
/// connection.
pub(crate) struct Started {
    pub(crate) container: Container,
    pub(crate) writer: AttachWriter,
    pub(crate) output: mpsc::Receiver<OutputItem>,
    pub(crate) reader_task: AbortOnDrop<()>,
    pub(crate) started_at: SystemTime,
}

/// Runs a job in a started container from the write of its message on: collects the output,
/// waits for the exit code and removes the container. The warm pool enters here too.
pub(crate) async fn run_started(
    started: Started,
    job: &JobSpec,
    stop: &StopSignals,
    capture: &mut OutputCapture,
) -> Result<Ran, ExecutorError> {
    let Started {
        mut container,
        writer,
        mut output,
        reader_task,
        started_at,
    } = started;
    let id = container.reference.clone();

    // Write the message from its own task, so that an agent that never reads stdin cannot
    // block the collection of its output. Returning drops the handle, which aborts the task.
    let _writer_task = write_stdin(writer, job.stdin.clone());

    // Collect until the stream ends, the stdout cap is passed, or the job is stopped.
    let collected = collect(&mut output, capture, stop).await;
    if collected == Collected::StreamEnded {
        if let Err(error) = reader_result(reader_task).await {
            container.remove().await;
            return Err(error);
        }
    }

    // Wait for the exit code, or kill the agent and keep what it wrote before it died.
    let (end, exit) = match collected {
        Collected::StreamEnded => match stop.until(wait_exit(&container)).await {
            Ok(Ok(code)) => (JobEnd::Exited, ExitStatus::Code(code)),
            Ok(Err(error)) => {
                container.remove().await;
                return Err(error);
            }
            Err(end) => (end, kill(&container.connection, &container.reference).await),
        },
        Collected::StdoutLimit => (
            JobEnd::StdoutLimit,
            kill_and_drain(&container, &mut output, capture).await,
        ),
        Collected::Stopped(end) => (end, kill_and_drain(&container, &mut output, capture).await),
    };
    drop(output);

    container.remove().await;
    Ok(Ran {
        end,
        exit,
        container_id: Some(id),
        started_at: Some(started_at),
    })
}

/// Returns the instant `timeout` from now, or one far in the future for a timeout too large
/// to add (such as [`Duration::MAX`]), since such a job has no deadline in practice.
fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + FAR_FUTURE)
}

/// A span that no job outlives, used for deadlines too large to represent.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The job's deadline and cancellation token, which end every phase.
pub(crate) struct StopSignals {
    deadline: tokio::time::Instant,
    cancel: CancellationToken,
}

impl StopSignals {
    /// Runs `future` until it completes, the deadline passes or the job is cancelled. Returns
    /// the job end that interrupted it, if one did.
    async fn until<F: Future>(&self, future: F) -> Result<F::Output, JobEnd> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(JobEnd::Cancelled),
            () = tokio::time::sleep_until(self.deadline) => Err(JobEnd::TimedOut),
            output = future => Ok(output),
        }
    }
}

/// A job's container. Dropping it before [`Container::remove`] ran removes the container in a
/// background task, so a dropped `run` future leaves nothing behind while the async runtime
/// keeps running.
pub(crate) struct Container {
    connection: Connection,
    /// The container id once created; before that, the name it is being created with.
    pub(crate) reference: String,
    removed: bool,
}

impl Container {
    pub(crate) fn new(connection: Connection, name: String) -> Self {
        Self {
            connection,
            reference: name,
            removed: false,
        }
    }

    pub(crate) fn set_id(&mut self, id: String) {
        self.reference = id;
    }

    fn api(&self) -> podman_api::api::Container {
        self.connection.podman.containers().get(&self.reference)
    }

    /// Removes the container now. Failures are logged: the container is then left for the
    /// next sweep.
    pub(crate) async fn remove(&mut self) {
        self.removed = true;
        let started = Instant::now();
        match remove_container(&self.connection, &self.reference).await {
            Ok(()) => debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "container removed"
            ),
            Err(error) => warn!(
                container_id = %self.reference,
                %error,
                "removing the container failed; the next sweep removes it"
            ),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let connection = self.connection.clone();
        let reference = std::mem::take(&mut self.reference);
        // NOTE: a runtime that is shutting down drops this task unrun; the container is then
        // left for the next sweep.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(
                    async move {
                        match remove_container(&connection, &reference).await {
                            Ok(()) => debug!(container_id = %reference, "container of a dropped job removed"),
                            Err(error) => warn!(
                                container_id = %reference,
                                %error,
                                "removing the container of a dropped job failed; the next sweep removes it"
                            ),
                        }
                    }
                    .in_current_span(),
                );
            }
            Err(_) => warn!(
                container_id = %reference,
                "no async runtime to remove the container of a dropped job; the next sweep removes it"
            ),
        }
    }
}

/// Force-removes a container with a zero stop timeout (without it, removing a running
/// container waits Podman's 10 s stop timeout). A container that is already gone counts as
/// removed.
pub(crate) async fn remove_container(
    connection: &Connection,
    reference: &str,
) -> Result<(), ExecutorError> {
    let options = ContainerDeleteOpts::builder()
        .force(true)
        .timeout(0)
        .build();
    let container = connection.podman.containers().get(reference);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match tokio::time::timeout(REMOVE_TIMEOUT, container.delete(&options)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) if is_not_found(&error) => return Ok(()),
            Ok(Err(error)) => connection.api_error("remove container", error),
            Err(_) => {
                return Err(runtime_error(
                    "remove container",
                    format!("no response within {} s", REMOVE_TIMEOUT.as_secs()),
                ))
            }
        };
        // Podman 4.3 fails a forced removal with "container state improper" when the
        // container stops while the removal kills it, such as an agent that exits as its stdin
        // closes. A second attempt finds it stopped and removes it.
        let improper = matches!(&error, ExecutorError::Runtime { message, .. } if message.contains("container state improper"));
        if !improper || attempts >= REMOVE_ATTEMPTS {
            return Err(error);
        }
        debug!(
            attempts,
            "the container stopped during its removal; removing it again"
        );
        tokio::time::sleep(REMOVE_RETRY_PAUSE).await;
    }
}

/// Number of removal attempts of a container that stops while it is being removed.
const REMOVE_ATTEMPTS: u32 = 3;

/// Pause before another removal attempt.
const REMOVE_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Creates the container and returns its id.
pub(crate) async fn create(
    connection: &Connection,
    spec: &CreateSpec,
) -> Result<String, ExecutorError> {
    let started = Instant::now();
    let id = libpod::create_container(&connection.socket, spec)
        .await
        .map_err(|error| connection.call_error("create container", error))?;
    debug!(
        container_id = %id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "container created"
    );
    Ok(id)
}

/// Attaches to the container's stdin, stdout and stderr. libpod initialises the container
/// (the OCI runtime's `create`) inside this call.
pub(crate) async fn attach(
    container: &Container,
) -> Result<(AttachReader, AttachWriter), ExecutorError> {
    let started = Instant::now();
    let halves = libpod::attach_container(&container.connection.socket, &container.reference)
        .await
        .map_err(|error| container.connection.call_error("attach", error))?;
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "attached"
    );
    Ok(halves)
}

/// Starts the container.
pub(crate) async fn start(container: &Container) -> Result<(), ExecutorError> {
    let started = Instant::now();
    container
        .api()
        .start(None)
        .await
        .map_err(|error| container.connection.api_error("start container", error))?;
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "container started"
    );
    Ok(())
}

/// An item of the attach stream, as the reader task forwards it.
pub(crate) type OutputItem = Result<OutputChunk, String>;

/// Reads the attach stream in its own task and forwards each chunk, so that the stream is read
/// before a job collects it (a warm container's) and a container's end is noticed at once.
/// `until_end` is dropped when the stream ends or breaks, or when the receiver is gone.
pub(crate) fn spawn_reader<T>(
    mut reader: AttachReader,
    until_end: T,
) -> (mpsc::Receiver<OutputItem>, AbortOnDrop<()>)
where
    T: Send + 'static,
{
    let (sender, receiver) = mpsc::channel(OUTPUT_CHANNEL_CHUNKS);
    let task = tokio::spawn(
        async move {
            let _until_end = until_end;
            loop {
                let item = match reader.next_chunk().await {
                    Ok(Some(chunk)) => Ok(chunk),
                    Ok(None) => break,
                    Err(error) => Err(error.to_string()),
                };
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    break;
                }
            }
        }
        .in_current_span(),
    );
    (receiver, AbortOnDrop(Some(task)))
}

/// Returns an error when the reader task panicked.
async fn reader_result(mut task: AbortOnDrop<()>) -> Result<(), ExecutorError> {
    let Some(handle) = task.0.take() else {
        return Ok(());
    };
    match handle.await {
        Ok(()) => Ok(()),
        Err(error) if error.is_panic() => {
            let panic = error.into_panic();
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                .unwrap_or_else(|| "no message".to_owned());
            Err(runtime_error(
                "read output",
                format!("decoding the attach stream failed: {message}"),
            ))
        }
        Err(error) => Err(runtime_error("read output", error.to_string())),
    }
}

/// Writes `stdin` to the agent and half-closes the connection, which closes the agent's stdin.
///
/// An agent that exits without reading everything makes the write fail (broken pipe or reset):
/// that is the agent's choice, not an engine failure, so it is logged at debug level only.
fn write_stdin(mut writer: AttachWriter, stdin: Vec<u8>) -> AbortOnDrop<()> {
    let task = tokio::spawn(
        async move {
            let started = Instant::now();
            let written = async {
                writer.write_all(&stdin).await?;
                // Flushes, then shuts the write half down.
                writer.shutdown().await
            }
            .await;
            match written {
                Ok(()) => debug!(
                    bytes = stdin.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "message written and stdin closed"
                ),
                Err(error) => {
                    debug!(%error, "writing the message failed; the agent stopped reading")
                }
            }
        }
        .in_current_span(),
    );
    AbortOnDrop(Some(task))
}

/// The reason collecting the output stopped.
#[derive(Debug, PartialEq, Eq)]
enum Collected {
    /// The attach stream ended: the agent has exited or closed its output.
    StreamEnded,
    /// The agent wrote more than the stdout cap.
    StdoutLimit,
    /// The deadline passed or the job was cancelled.
    Stopped(JobEnd),
}

/// Feeds the attach stream into `capture` until it ends, stdout passes the cap, or the job is
/// stopped.
async fn collect(
    output: &mut mpsc::Receiver<OutputItem>,
    capture: &mut OutputCapture,
    stop: &StopSignals,
) -> Collected {
    let started = Instant::now();
    loop {
        let item = match stop.until(output.recv()).await {
            Ok(item) => item,
            Err(end) => return Collected::Stopped(end),
        };
        match item {
            Some(Ok(OutputChunk::Stdout(bytes))) => {
                if !capture.push_stdout(&bytes) {
                    return Collected::StdoutLimit;
                }
            }
            Some(Ok(OutputChunk::Stderr(bytes))) => capture.push_stderr(&bytes),
            Some(Err(error)) => {
                warn!(%error, "the attach stream broke; waiting for the exit code");
                return Collected::StreamEnded;
            }
            None => {
                debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "output stream ended"
                );
                return Collected::StreamEnded;
            }
        }
    }
}

/// Kills the agent, then keeps the output it wrote before it died. Returns its exit status.
async fn kill_and_drain(
    container: &Container,
    output: &mut mpsc::Receiver<OutputItem>,
    capture: &mut OutputCapture,
) -> ExitStatus {
    let exit = kill(&container.connection, &container.reference).await;
    // Without an exit status the container has not exited (or never started), so its attach
    // stream does not end and there is nothing to wait for.
    if exit != ExitStatus::Unknown {
        drain(output, capture).await;
    }
    exit
}

/// Feeds what is left of the attach stream into `capture`, for at most [`DRAIN_LIMIT`]. Output
/// past the stdout cap is dropped as always.
async fn drain(output: &mut mpsc::Receiver<OutputItem>, capture: &mut OutputCapture) {
    let started = Instant::now();
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        while let Some(Ok(chunk)) = output.recv().await {
            match chunk {
                OutputChunk::Stdout(bytes) => {
                    capture.push_stdout(&bytes);
                }
                OutputChunk::Stderr(bytes) => capture.push_stderr(&bytes),
            }
        }
    })
    .await;
    debug!(
        complete = drained.is_ok(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rest of the output read"
    );
}

/// Adds the agent's stderr so far to an error, because Podman can write its own errors into
/// the stderr part of the attach stream. Reads for at most [`DRAIN_LIMIT`].
async fn with_stderr(
    error: ExecutorError,
    output: &mut mpsc::Receiver<OutputItem>,
    capture: &mut OutputCapture,
) -> ExecutorError {
    drain(output, capture).await;
    let (_, stderr, _) = std::mem::replace(capture, OutputCapture::new(0, 0)).finish();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();
    match error {
        ExecutorError::Runtime {
            executor,
            operation,
            message,
        } if !stderr.is_empty() => ExecutorError::Runtime {
            executor,
            operation,
            message: format!("{message}; stderr: {stderr}"),
        },
        other => other,
    }
}

/// Waits for the container to exit and returns its exit code.
async fn wait_exit(container: &Container) -> Result<i32, ExecutorError> {
    let started = Instant::now();
    let code = wait_exit_code(&container.connection, &container.reference).await?;
    debug!(
        exit_code = code,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "container exited"
    );
    Ok(code)
}

/// Polls the container's state until it has exited and returns its exit code. Runs until then:
/// callers bound it.
pub(crate) async fn wait_exit_code(
    connection: &Connection,
    reference: &str,
) -> Result<i32, ExecutorError> {
    let mut interval = POLL_FIRST_INTERVAL;
    loop {
        let state = libpod::container_state(&connection.socket, reference)
            .await
            .map_err(|error| connection.call_error("inspect container", error))?;
        if state.has_exited() {
            return Ok(state.exit_code);
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(POLL_MAX_INTERVAL);
    }
}

/// Kills the container and returns its exit status, [`ExitStatus::Unknown`] when it never
/// started or Podman does not report one within [`KILL_WAIT`].
pub(crate) async fn kill(connection: &Connection, reference: &str) -> ExitStatus {
    let container = connection.podman.containers().get(reference);
    if let Err(error) = container.send_signal("KILL").await {
        // Podman kills only running containers. One that exited meanwhile has its exit code
        // already, and one that never started has none.
        debug!(%error, "killing the container failed");
        return match libpod::container_state(&connection.socket, reference).await {
            Ok(state) if state.has_exited() => ExitStatus::Code(state.exit_code),
            _ => ExitStatus::Unknown,
        };
    }
    match tokio::time::timeout(KILL_WAIT, wait_exit_code(connection, reference)).await {
        Ok(Ok(code)) => {
            debug!(exit_code = code, "container killed");
            ExitStatus::Code(code)
        }
        Ok(Err(error)) => {
            debug!(%error, "no exit code for the killed container");
            ExitStatus::Unknown
        }
        Err(_) => {
            debug!("no exit code for the killed container in time");
            ExitStatus::Unknown
        }
    }
}

/// Builds the outcome. `run_started_at` replaces the agent's start time when the job
/// stopped before the agent started.
fn finish(
    ran: Ran,
    capture: OutputCapture,
    run_started_at: SystemTime,
    started: Instant,
) -> JobOutcome {
    let (stdout, stderr_tail, stderr_total_bytes) = capture.finish();
    JobOutcome {
        end: ran.end,
        exit: ran.exit,
        stdout,
        stderr_tail,
        stderr_total_bytes,
        started_at: ran.started_at.unwrap_or(run_started_at),
        duration: started.elapsed(),
        container_id: ran.container_id,
    }
}

/// A task handle that aborts the task when dropped.
pub(crate) struct AbortOnDrop<T>(Option<JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Returns a container name that no other job uses: the job id, then a process-wide counter
/// and the time, so that names differ across jobs, engine restarts and retried job ids.
pub(crate) fn container_name(job_id: u64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("agentrun-{job_id}-{nanos:x}-{count}")
}

/// Builds the container specification of a job.
///
/// # Errors
///
/// [`ExecutorError::Runtime`] when a limit cannot be expressed, such as a CPU limit that is not
/// a positive number, or an environment variable cannot be passed (see [`check_env_var`]).
pub(crate) fn container_spec(
    config: &PodmanConfig,
    prepared: &Prepared,
    image: &str,
    job: &JobSpec,
) -> Result<CreateSpec, ExecutorError> {
    let limits = &job.limits;

    // Later entries win when a name repeats, as in a shell.
    for (name, value) in &job.env {
        check_env_var(name, value)?;
    }
    let env: BTreeMap<String, String> = job.env.iter().cloned().collect();
    let env_names: Vec<&str> = env.keys().map(String::as_str).collect();
    debug!(env = ?env_names, "container environment");

    let labels = BTreeMap::from([
        (LABEL_ENGINE.to_owned(), config.instance.clone()),
        (LABEL_AGENT_ID.to_owned(), prepared.agent_id.clone()),
        (LABEL_INTEGRATION.to_owned(), prepared.integration.clone()),
        (LABEL_JOB_ID.to_owned(), job.job_id.to_string()),
        (LABEL_DEADLINE.to_owned(), deadline_label(job.timeout)),
    ]);

    let mut r_limits = Vec::new();
    for (kind, value) in [
        ("nofile", limits.nofile.or(config.ulimits.nofile)),
        ("nproc", limits.nproc.or(config.ulimits.nproc)),
    ] {
        if let Some(value) = value {
            r_limits.push(Rlimit {
                kind: kind.to_owned(),
                soft: value,
                hard: value,
            });
        }
    }

    let mut resources = libpod::Resources::default();
    if let Some(bytes) = limits.memory_bytes {
        resources.memory = Some(libpod::MemoryLimit {
            limit: i64::try_from(bytes).unwrap_or(i64::MAX),
        });
    }
    if let Some(cpus) = limits.cpus {
        resources.cpu = Some(cpu_limit(cpus)?);
    }
    if let Some(pids) = limits.pids {
        resources.pids = Some(libpod::PidsLimit { limit: pids });
    }
    let resource_limits = (resources != libpod::Resources::default()).then_some(resources);

    let (netns, networks) = match limits.network.as_deref().or(config.network.as_deref()) {
        Some(mode) => {
            let (namespace, networks) = network_namespace(mode);
            (Some(namespace), networks)
        }
        None => (None, BTreeMap::new()),
    };

    let mounts = if limits.read_only_root {
        vec![Mount {
            destination: "/tmp".to_owned(),
            kind: "tmpfs".to_owned(),
            source: "tmpfs".to_owned(),
            options: ["rw", "nosuid", "nodev", "mode=1777"]
                .map(str::to_owned)
                .to_vec(),
        }]
    } else {
        Vec::new()
    };

    Ok(CreateSpec {
        image: image.to_owned(),
        name: Some(container_name(job.job_id)),
        stdin: true,
        terminal: false,
        env,
        labels,
        cap_drop: if limits.drop_all_capabilities {
            vec!["ALL".to_owned()]
        } else {
            Vec::new()
        },
        no_new_privileges: limits.no_new_privileges,
        read_only_filesystem: limits.read_only_root,
        mounts,
        r_limits,
        resource_limits,
        netns,
        networks,
        user: limits.user.clone(),
        oci_runtime: config.runtime.clone(),
        init: config.init,
        // Recovery after an engine restart reads the output through the logs endpoint. k8s-file
        // keeps it in a file that endpoint reads, while journald may not run and passthrough
        // keeps nothing.
        log_configuration: LogConfiguration {
            driver: "k8s-file".to_owned(),
        },
    })
}

/// Rejects an environment variable that a process environment cannot carry: an empty name, a
/// name with `=` or NUL, or a value with NUL. The message names the variable but never shows
/// its value, which may be a secret.
fn check_env_var(name: &str, value: &str) -> Result<(), ExecutorError> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(runtime_error(
            "create container",
            format!(
                "invalid environment variable name {name:?}: a name must be non-empty and contain no `=` or NUL"
            ),
        ));
    }
    if value.contains('\0') {
        return Err(runtime_error(
            "create container",
            format!("invalid value of environment variable {name}: it contains a NUL byte"),
        ));
    }
    Ok(())
}

/// Expresses a CPU limit in cores as a CFS quota per [`CPU_PERIOD_MICROS`].
fn cpu_limit(cpus: f64) -> Result<libpod::CpuLimit, ExecutorError> {
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(runtime_error(
            "create container",
            format!("invalid CPU limit {cpus}: it must be a positive number of cores, such as 0.5"),
        ));
    }
    // The float-to-int cast saturates, so an absurdly large limit becomes i64::MAX.
    let quota = (cpus * CPU_PERIOD_MICROS as f64).round() as i64;
    Ok(libpod::CpuLimit {
        quota: quota.max(CPU_MIN_QUOTA_MICROS),
        period: CPU_PERIOD_MICROS,
    })
}

/// Maps a network mode to Podman's network namespace and the networks to join.
fn network_namespace(
    mode: &str,
) -> (
    Namespace,
    BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
) {
    let namespace = |nsmode: &str, value: Option<&str>| Namespace {
        nsmode: nsmode.to_owned(),
        value: value.map(str::to_owned),
    };
    match mode {
        "none" | "host" | "private" | "bridge" | "slirp4netns" | "pasta" => {
            (namespace(mode, None), BTreeMap::new())
        }
        _ => {
            if let Some(path) = mode.strip_prefix("ns:") {
                (namespace("path", Some(path)), BTreeMap::new())
            } else if let Some(container) = mode.strip_prefix("container:") {
                (namespace("container", Some(container)), BTreeMap::new())
            } else {
                // Any other value names a Podman network, which a bridge namespace joins.
                (
                    namespace("bridge", None),
                    BTreeMap::from([(mode.to_owned(), serde_json::Map::new())]),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentrun_executor::{Limits, MessageKind};

    fn prepared() -> Prepared {
        Prepared {
            executor: EXECUTOR.to_owned(),
            integration: "Echo".to_owned(),
            agent_id: "3f2504e0-4f89-11d3-9a0c-0305e82c3301".to_owned(),
            digest: "ab".repeat(32),
            target: Target::Image {
                reference: "agentrun/echo-3f2504e0:abab".to_owned(),
            },
            cache_hit: false,
        }
    }

    fn job(limits: Limits) -> JobSpec {
        let mut job = JobSpec::new(42, MessageKind::Work, b"{}".to_vec());
        job.limits = limits;
        job
    }

    fn spec(config: &PodmanConfig, limits: Limits) -> serde_json::Value {
        let spec = container_spec(config, &prepared(), "img", &job(limits)).expect("valid spec");
        serde_json::to_value(&spec).expect("serializes")
    }

    #[test]
    fn spec_default_limits_harden() {
        let json = spec(&PodmanConfig::default(), Limits::default());
        assert_eq!(json["stdin"], true);
        assert_eq!(json["terminal"], false);
        assert_eq!(json["cap_drop"], serde_json::json!(["ALL"]));
        assert_eq!(json["no_new_privileges"], true);
        assert_eq!(json["log_configuration"]["driver"], "k8s-file");
        assert!(json.get("read_only_filesystem").is_none());
        assert!(json.get("netns").is_none());
        assert!(json.get("r_limits").is_none());
        assert!(json.get("resource_limits").is_none());
        assert_eq!(json["init"], true);
        let mut labels = json["labels"].clone();
        let deadline = labels
            .as_object_mut()
            .and_then(|labels| labels.remove(LABEL_DEADLINE))
            .expect("a deadline label");
        assert!(deadline
            .as_str()
            .is_some_and(|value| value.parse::<u64>().is_ok()));
        assert_eq!(
            labels,
            serde_json::json!({
                "io.agentrun.engine": "agentrun",
                "io.agentrun.agent-id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
                "io.agentrun.integration": "Echo",
                "io.agentrun.job-id": "42",
            })
        );
        let name = json["name"].as_str().expect("a name");
        assert!(name.starts_with("agentrun-42-"), "name: {name}");
    }

    #[test]
    fn spec_applies_every_limit() {
        let limits = Limits {
            memory_bytes: Some(64 * 1024 * 1024),
            cpus: Some(0.5),
            pids: Some(32),
            network: Some("none".to_owned()),
            read_only_root: true,
            nofile: Some(256),
            nproc: Some(64),
            user: Some("1000:1000".to_owned()),
            ..Limits::default()
        };
        let json = spec(&PodmanConfig::default(), limits);
        assert_eq!(
            json["resource_limits"],
            serde_json::json!({
                "memory": {"limit": 67108864},
                "cpu": {"quota": 50000, "period": 100000},
                "pids": {"limit": 32},
            })
        );
        assert_eq!(json["netns"], serde_json::json!({"nsmode": "none"}));
        assert_eq!(json["read_only_filesystem"], true);
        assert_eq!(
            json["mounts"],
            serde_json::json!([{
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["rw", "nosuid", "nodev", "mode=1777"],
            }])
        );
        assert_eq!(
            json["r_limits"],
            serde_json::json!([
                {"type": "nofile", "soft": 256, "hard": 256},
                {"type": "nproc", "soft": 64, "hard": 64},
            ])
        );
        assert_eq!(json["user"], "1000:1000");
    }

    #[test]
    fn spec_takes_config_defaults() {
        let config = PodmanConfig {
            network: Some("host".to_owned()),
            runtime: Some("runc".to_owned()),
            ulimits: crate::Ulimits {
                nofile: Some(1024),
                nproc: Some(1024),
            },
            ..PodmanConfig::default()
        };
        let limits = Limits {
            nofile: Some(100),
            ..Limits::default()
        };
        let json = spec(&config, limits);
        assert_eq!(json["netns"], serde_json::json!({"nsmode": "host"}));
        assert_eq!(json["oci_runtime"], "runc");
        assert_eq!(
            json["r_limits"],
            serde_json::json!([
                {"type": "nofile", "soft": 100, "hard": 100},
                {"type": "nproc", "soft": 1024, "hard": 1024},
            ])
        );
    }

    #[test]
    fn spec_keeps_env_values_and_last_duplicate() {
        let mut job = job(Limits::default());
        job.env = vec![
            ("A".to_owned(), "x = \"y\"\n$HOME é".to_owned()),
            ("B".to_owned(), "first".to_owned()),
            ("B".to_owned(), "second".to_owned()),
        ];
        let spec =
            container_spec(&PodmanConfig::default(), &prepared(), "img", &job).expect("valid spec");
        assert_eq!(spec.env["A"], "x = \"y\"\n$HOME é");
        assert_eq!(spec.env["B"], "second");
        assert_eq!(spec.env.len(), 2);
    }

    #[test]
    fn spec_rejects_invalid_env_vars() {
        let cases = [
            ("", "x", "invalid environment variable name \"\""),
            ("A=B", "x", "invalid environment variable name \"A=B\""),
            ("A\0B", "x", "invalid environment variable name \"A\\0B\""),
            (
                "TOKEN",
                "se\0cret",
                "invalid value of environment variable TOKEN",
            ),
        ];
        for (name, value, expected) in cases {
            let mut job = job(Limits::default());
            job.env = vec![(name.to_owned(), value.to_owned())];
            let error = container_spec(&PodmanConfig::default(), &prepared(), "img", &job)
                .expect_err("invalid variable");
            match error {
                ExecutorError::Runtime { message, .. } => {
                    assert!(message.starts_with(expected), "message: {message}");
                    assert!(!message.contains("cret"), "the value leaked: {message}");
                }
                other => panic!("expected a runtime error for {name:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn spec_rejects_invalid_cpu_limits() {
        for cpus in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let limits = Limits {
                cpus: Some(cpus),
                ..Limits::default()
            };
            let error = container_spec(&PodmanConfig::default(), &prepared(), "img", &job(limits))
                .expect_err("invalid CPU limit");
            match error {
                ExecutorError::Runtime { message, .. } => {
                    assert!(message.contains("invalid CPU limit"), "message: {message}");
                }
                other => panic!("expected a runtime error for {cpus}, got {other:?}"),
            }
        }
    }

    #[test]
    fn cpu_limit_has_kernel_minimum() {
        let limit = cpu_limit(0.001).expect("positive");
        assert_eq!(limit.quota, 1_000);
        assert_eq!(limit.period, 100_000);
    }

    #[test]
    fn network_modes_map_to_namespaces() {
        let (namespace, networks) = network_namespace("ns:/run/netns/x");
        assert_eq!(namespace.nsmode, "path");
        assert_eq!(namespace.value.as_deref(), Some("/run/netns/x"));
        assert!(networks.is_empty());

        let (namespace, _) = network_namespace("container:abc");
        assert_eq!(namespace.nsmode, "container");
        assert_eq!(namespace.value.as_deref(), Some("abc"));

        let (namespace, networks) = network_namespace("backend");
        assert_eq!(namespace.nsmode, "bridge");
        assert_eq!(networks.keys().collect::<Vec<_>>(), ["backend"]);

        let (namespace, networks) = network_namespace("slirp4netns");
        assert_eq!(namespace.nsmode, "slirp4netns");
        assert!(networks.is_empty());
    }

    #[tokio::test]
    async fn deadline_of_huge_timeout_is_far_future() {
        let now = tokio::time::Instant::now();
        let deadline = deadline_after(Duration::MAX);
        assert!(
            deadline >= now + FAR_FUTURE,
            "deadline {deadline:?}, now {now:?}"
        );
    }

    #[tokio::test]
    async fn deadline_of_short_timeout() {
        let before = tokio::time::Instant::now();
        let deadline = deadline_after(Duration::from_secs(5));
        assert!(deadline >= before + Duration::from_secs(5));
        assert!(deadline <= tokio::time::Instant::now() + Duration::from_secs(5));
    }

    #[test]
    fn container_names_differ() {
        assert_ne!(container_name(1), container_name(1));
    }
}
