//! One job: start the agent, write the message, collect the output, and leave nothing behind.

use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use agentrun_executor::{ExecutorError, ExitStatus, JobEnd, JobOutcome, JobSpec, OutputCapture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::task::JoinHandle;

use crate::isolation;
use crate::process::{ExitWatch, ProcessGroup};
use crate::state;
use crate::{SubprocessExecutor, AGENT_LANG, EXECUTOR_NAME, MINIMAL_PATH};

/// Maximum job timeout. Longer timeouts are cut to it, so adding the timeout to the start time
/// cannot overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Size of each read from the agent's stdout and stderr.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Runs `argv` in `working_dir` as one job. See [`Executor::run`](agentrun_executor::Executor::run).
pub(crate) async fn run_job(
    executor: &SubprocessExecutor,
    argv: &[String],
    working_dir: &Path,
    job: JobSpec,
) -> Result<JobOutcome, ExecutorError> {
    let begun = Instant::now();
    let Some((program, arguments)) = argv.split_first() else {
        return Err(runtime_error(
            "start agent",
            "the prepared command is empty: prepare the package again".to_owned(),
        ));
    };
    check_env(&job.env)?;
    let user = executor.agent_user(&job)?;

    // A job cancelled before it started never starts the agent, so it has no side effects.
    if job.cancel.is_cancelled() {
        return Ok(JobOutcome {
            end: JobEnd::Cancelled,
            exit: ExitStatus::Unknown,
            stdout: Vec::new(),
            stderr_tail: Vec::new(),
            stderr_total_bytes: 0,
            started_at: SystemTime::now(),
            duration: begun.elapsed(),
            container_id: None,
        });
    }

    // A private HOME, owned by the agent's user, removed when the job ends.
    let home = executor.create_home()?;
    if let Some(user) = &user {
        std::os::unix::fs::chown(home.path(), Some(user.uid), Some(user.gid)).map_err(
            |source| {
                ExecutorError::io(
                    format!("chown {} to the agent user", home.path().display()),
                    source,
                )
            },
        )?;
    }

    // The environment is exactly the job's, on top of PATH, HOME and LANG.
    let mut command = Command::new(program);
    command
        .args(arguments)
        .current_dir(working_dir)
        .env_clear()
        .env("PATH", MINIMAL_PATH)
        .env("HOME", home.path())
        .env("LANG", AGENT_LANG)
        .envs(job.env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    isolation::configure_child(&mut command, isolation::resource_limits(&job.limits), user);

    // Start the agent. The group guard is declared after the child, so that a dropped future
    // kills the group before tokio's kill_on_drop and reaping of the leader.
    let started_at = SystemTime::now();
    let mut child = command
        .spawn()
        .map_err(|source| ExecutorError::io(format!("start agent `{program}`"), source))?;
    let pid = child
        .id()
        .ok_or_else(|| runtime_error("start agent", "the agent has no process id".to_owned()))?;
    let mut group = ProcessGroup::new(pid);
    // Removed when the job ends on every path, also when this future is dropped halfway.
    let _record = match &executor.job_state_dir {
        Some(dir) => Some(
            state::record(dir, job.job_id, pid, home.path()).map_err(|source| {
                ExecutorError::io(
                    format!("record job {} in {}", job.job_id, dir.display()),
                    source,
                )
            })?,
        ),
        None => None,
    };
    let exit_watch = ExitWatch::new(pid)
        .map_err(|source| ExecutorError::io(format!("watch agent process {pid}"), source))?;
    tracing::debug!(
        pid,
        env_names = ?job.env.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
        "agent started"
    );

    let (Some(stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(runtime_error(
            "start agent",
            "the agent's pipes were not created".to_owned(),
        ));
    };
    let _writer = AbortOnDrop(tokio::spawn(write_message(stdin, job.stdin)));

    // Read both pipes until the agent exits, the deadline passes, the job is cancelled or
    // stdout passes its cap.
    let deadline = tokio::time::sleep_until((begun + job.timeout.min(MAX_TIMEOUT)).into());
    tokio::pin!(deadline);
    let mut capture = OutputCapture::new(job.max_stdout_bytes, job.stderr_tail_bytes);
    let mut pipes = Pipes::default();
    let end = loop {
        tokio::select! {
            biased;
            () = job.cancel.cancelled() => break JobEnd::Cancelled,
            () = &mut deadline => break JobEnd::TimedOut,
            read = stdout.read(&mut pipes.stdout_buffer), if pipes.stdout_open => {
                if !pipes.take_stdout(read, &mut capture) {
                    break JobEnd::StdoutLimit;
                }
            }
            read = stderr.read(&mut pipes.stderr_buffer), if pipes.stderr_open => {
                pipes.take_stderr(read, &mut capture);
            }
            () = exit_watch.exited() => break JobEnd::Exited,
        }
    };

    // Kill what is left of the group: the whole agent after a timeout, cancellation or
    // overflow, and children it forked after a normal exit. Then reap the leader.
    group.kill();
    let status = child.wait().await;
    group.disarm();
    let exit = match status {
        Ok(status) => exit_status(status),
        Err(error) => {
            tracing::warn!(pid, %error, "reaping the agent failed");
            ExitStatus::Unknown
        }
    };

    // Read what is still in the pipes. A process outside the group that keeps them open
    // delays the job by at most the drain bound.
    let drained = tokio::time::timeout(executor.config.drain_after_exit(), async {
        while pipes.stdout_open || pipes.stderr_open {
            tokio::select! {
                read = stdout.read(&mut pipes.stdout_buffer), if pipes.stdout_open => {
                    if !pipes.take_stdout(read, &mut capture) {
                        break;
                    }
                }
                read = stderr.read(&mut pipes.stderr_buffer), if pipes.stderr_open => {
                    pipes.take_stderr(read, &mut capture);
                }
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            pid,
            "the agent's output pipes stayed open after its process group was killed"
        );
    }
    let end = match end {
        JobEnd::Exited if capture.stdout_overflow() => JobEnd::StdoutLimit,
        end => end,
    };

    if let Err(error) = home.close() {
        tracing::warn!(%error, "removing the agent's HOME folder failed");
    }
    let (stdout, stderr_tail, stderr_total_bytes) = capture.finish();
    let duration = begun.elapsed();
    tracing::debug!(
        pid,
        exit_code = exit.code(),
        elapsed_ms = duration.as_millis() as u64,
        ?end,
        stdout_bytes = stdout.len(),
        stderr_total_bytes,
        "agent finished"
    );
    Ok(JobOutcome {
        end,
        exit,
        stdout,
        stderr_tail,
        stderr_total_bytes,
        started_at,
        duration,
        container_id: None,
    })
}

/// Read buffers and open flags of the agent's stdout and stderr.
struct Pipes {
    stdout_buffer: Vec<u8>,
    stderr_buffer: Vec<u8>,
    stdout_open: bool,
    stderr_open: bool,
}

impl Default for Pipes {
    fn default() -> Self {
        Self {
            stdout_buffer: vec![0; READ_CHUNK_BYTES],
            stderr_buffer: vec![0; READ_CHUNK_BYTES],
            stdout_open: true,
            stderr_open: true,
        }
    }
}

impl Pipes {
    /// Stores the result of a stdout read. Returns false once stdout passed its cap.
    fn take_stdout(&mut self, read: io::Result<usize>, capture: &mut OutputCapture) -> bool {
        match read {
            Ok(0) => self.stdout_open = false,
            Ok(n) => return capture.push_stdout(&self.stdout_buffer[..n]),
            Err(error) => {
                tracing::warn!(%error, "reading the agent's stdout failed");
                self.stdout_open = false;
            }
        }
        true
    }

    /// Stores the result of a stderr read.
    fn take_stderr(&mut self, read: io::Result<usize>, capture: &mut OutputCapture) {
        match read {
            Ok(0) => self.stderr_open = false,
            Ok(n) => capture.push_stderr(&self.stderr_buffer[..n]),
            Err(error) => {
                tracing::warn!(%error, "reading the agent's stderr failed");
                self.stderr_open = false;
            }
        }
    }
}

/// Writes the message and closes stdin. An agent that exits early or never reads makes the
/// write fail with a broken pipe. That is not a job error, because the outcome shows what the
/// agent did.
async fn write_message(mut stdin: ChildStdin, message: Vec<u8>) {
    match stdin.write_all(&message).await {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
            tracing::debug!("the agent closed stdin before reading the whole message");
        }
        Err(error) => tracing::warn!(%error, "writing the message to the agent failed"),
    }
    // Dropping the handle closes the pipe, so an agent that reads to end of file finishes.
    drop(stdin);
}

/// Aborts a task when dropped, so the writer never outlives the job.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Rejects environment entries that cannot be passed to a process. Messages name the variable,
/// never its value.
fn check_env(env: &[(String, String)]) -> Result<(), ExecutorError> {
    for (name, value) in env {
        let problem = if name.is_empty() {
            Some("has an empty name")
        } else if name.contains('=') {
            Some("has `=` in its name")
        } else if name.contains('\0') {
            Some("has a NUL byte in its name")
        } else if value.contains('\0') {
            Some("has a NUL byte in its value")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(runtime_error(
                "set agent environment",
                format!(
                    "environment variable `{}` {problem}, which a process environment cannot \
                     hold: fix the integration's env",
                    name.escape_debug()
                ),
            ));
        }
    }
    Ok(())
}

fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => ExitStatus::Unknown,
    }
}

pub(crate) fn runtime_error(operation: &'static str, message: String) -> ExecutorError {
    ExecutorError::Runtime {
        executor: EXECUTOR_NAME,
        operation,
        message,
    }
}
