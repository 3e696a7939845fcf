//! The `Executor` trait: how agentrun runs one agent process, whatever the runtime.
//!
//! An agent is a short-lived process that reads one JSON message on stdin and writes its reply on
//! stdout. agentrun can start that process as a plain subprocess, in a Docker container or in a
//! Podman container. Each of those backends implements [`Executor`], and the dispatcher in the
//! `agentrun` crate talks only to this trait.
//!
//! # Design
//!
//! The trait moves bytes, not messages. A backend receives the exact stdin bytes to write and hands
//! back what the agent wrote ([`JobOutcome`]): stdout up to a cap, the tail of stderr, the exit
//! status and how the run ended. Building the message and parsing the reply stay in the dispatcher,
//! so a reply that one backend accepts is accepted by all of them. The cost is that a backend cannot
//! stop reading early once a reply is complete: it always waits for the agent to exit.
//!
//! Work is split in two phases with different lifetimes:
//!
//! 1. [`Executor::prepare`] runs once per package version. Every backend first checks the
//!    Dockerfile with [`check_dockerfile`], so that a package is valid on all of them or on
//!    none. Container backends then build an image tagged from the package digest (see
//!    [`image_tag`]) and skip the build when that tag exists. The subprocess backend resolves
//!    the command line. The result, [`Prepared`], is plain data
//!    that a caller may store and reuse across restarts.
//! 2. [`Executor::run`] runs one job against a [`Prepared`] package. Every backend gives the same
//!    guarantees: the message is written and stdin closed, stdout and stderr are drained at the
//!    same time, one deadline covers the whole run, and the agent (with anything it started) is
//!    gone when `run` returns, whichever way the job ended.
//!
//! Backends report a runtime that cannot be reached as [`ExecutorError::Unavailable`], which the
//! caller can match to fall back or to exit with a distinct status.

mod capture;
mod context;
pub mod dockerfile;
mod error;
mod job;
mod package;

pub use capture::OutputCapture;
pub use context::{build_context_tar, write_context_tar};
pub use dockerfile::check_dockerfile;
pub use error::{error_chain, init_exec_fault, ExecFault, ExecutorError};
pub use job::{
    ExitStatus, JobEnd, JobOutcome, JobSpec, Limits, MessageKind, DEFAULT_MAX_STDOUT_BYTES,
    DEFAULT_STDERR_TAIL_BYTES, DEFAULT_TIMEOUT,
};
pub use package::{image_tag, PackageSpec, Prepared, Target};

/// Re-exported so that callers and backends agree on one cancellation type.
pub use tokio_util::sync::CancellationToken;

use async_trait::async_trait;

/// Container label that marks every container agentrun creates. Its value is the engine instance
/// name, so that two engines on one host never remove each other's containers.
pub const LABEL_ENGINE: &str = "io.agentrun.engine";
/// Container and image label carrying the integration's agentID.
pub const LABEL_AGENT_ID: &str = "io.agentrun.agent-id";
/// Container and image label carrying the integration's name.
pub const LABEL_INTEGRATION: &str = "io.agentrun.integration";
/// Container label carrying the job id (decimal).
pub const LABEL_JOB_ID: &str = "io.agentrun.job-id";
/// Image label carrying the package digest (hex SHA-256).
pub const LABEL_DIGEST: &str = "io.agentrun.digest";
/// Container label carrying the time after which a job's container is no longer in use, in
/// seconds since the Unix epoch: its creation plus the job's timeout plus [`DEADLINE_GRACE`].
///
/// A sweep removes the containers of every engine instance whose deadline is more than
/// [`EXPIRED_AFTER`] past, so that the containers of an engine process that was killed with
/// SIGKILL do not stay forever. Warm pool containers do not carry it: they belong to the
/// instance that made them, whose own sweep removes them.
pub const LABEL_DEADLINE: &str = "io.agentrun.deadline";
/// Time added to a job's timeout in [`LABEL_DEADLINE`], for starting the container before the
/// timeout runs and for killing and removing it after.
pub const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long past its [`LABEL_DEADLINE`] a container of another engine instance must be before
/// a sweep removes it, for clocks that differ between engine processes.
pub const EXPIRED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Returns the [`LABEL_DEADLINE`] value of a container created now for a job with `timeout`.
pub fn deadline_label(timeout: std::time::Duration) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_add(timeout)
        .saturating_add(DEADLINE_GRACE)
        .as_secs()
        .to_string()
}

/// Returns true when a [`LABEL_DEADLINE`] value is more than [`EXPIRED_AFTER`] before `now`.
/// A value that is not a number of seconds never expires, so that a sweep leaves containers it
/// does not understand alone.
pub fn deadline_expired(value: &str, now: std::time::SystemTime) -> bool {
    let Ok(deadline) = value.trim().parse::<u64>() else {
        return false;
    };
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    now > deadline.saturating_add(EXPIRED_AFTER.as_secs())
}

/// A backend that runs agents. See the crate documentation for the guarantees every backend gives.
///
/// Implementations are shared between concurrent jobs (`&self`), so any per-job state lives in the
/// future that [`run`](Executor::run) returns.
#[async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Returns the backend's stable name, as used in configuration and labels: `subprocess`,
    /// `docker` or `podman`.
    fn name(&self) -> &'static str;

    /// Checks that the runtime responds.
    ///
    /// The dispatcher calls this before the first job so that an unreachable runtime is reported
    /// before any build starts. The default returns `Ok(())`, for backends that need no runtime.
    ///
    /// # Errors
    ///
    /// [`ExecutorError::Unavailable`] naming the address that was tried.
    async fn ping(&self) -> Result<(), ExecutorError> {
        Ok(())
    }

    /// Prepares a package so that jobs can run from it: builds its image or resolves its command.
    ///
    /// Called once per package version, before any job of that version runs. Calling it again
    /// for an unchanged package is cheap: container backends find the image by its digest tag and
    /// report [`Prepared::cache_hit`]. The caller guarantees that `package.root` exists and
    /// contains a `Dockerfile` until the returned value is no longer used.
    ///
    /// # Errors
    ///
    /// [`ExecutorError::InvalidPackage`] when [`check_dockerfile`] rejects the package or it
    /// cannot run on this backend,
    /// [`ExecutorError::BuildFailed`] when an image build fails, and
    /// [`ExecutorError::Unavailable`] or [`ExecutorError::Runtime`] for runtime trouble.
    async fn prepare(&self, package: &PackageSpec) -> Result<Prepared, ExecutorError>;

    /// Runs one job: starts the agent, writes `job.stdin`, closes stdin and collects the output.
    ///
    /// Returns when the agent has exited and everything it started has been removed, also when
    /// the job timed out, was cancelled through `job.cancel` or wrote more than
    /// `job.max_stdout_bytes` to stdout; [`JobOutcome::end`] records which. `prepared` must come from
    /// [`prepare`](Executor::prepare) on the same backend.
    ///
    /// # Errors
    ///
    /// Only for failures of the engine itself (spawn failed, runtime returned an error). An agent
    /// that crashes, exits non-zero or prints nothing is a successful run with that outcome.
    async fn run(&self, prepared: &Prepared, job: JobSpec) -> Result<JobOutcome, ExecutorError>;

    /// Completes a job that an earlier engine process started and did not finish.
    ///
    /// The service calls this at start-up for each job its store records as running. A container
    /// backend finds the job's container by its [`LABEL_JOB_ID`] label, waits for it to exit
    /// (at most `timeout`), collects its output from the runtime's logs and removes it. Returns
    /// `Ok(None)` when the agent cannot be recovered: the default, used by the subprocess backend,
    /// whose agents die with the engine.
    ///
    /// # Errors
    ///
    /// Runtime failures while inspecting, waiting or removing.
    async fn recover(
        &self,
        job_id: u64,
        timeout: std::time::Duration,
        max_stdout_bytes: usize,
        stderr_tail_bytes: usize,
    ) -> Result<Option<JobOutcome>, ExecutorError> {
        let _ = (job_id, timeout, max_stdout_bytes, stderr_tail_bytes);
        Ok(None)
    }

    /// Removes containers that carry this engine's [`LABEL_ENGINE`] label and whose job id is not
    /// in `keep_job_ids`, and those of any engine instance whose [`LABEL_DEADLINE`] expired (see
    /// [`sweep_expired`](Executor::sweep_expired)), and returns their ids.
    ///
    /// The service calls this at start-up, after recovery. The default removes nothing.
    ///
    /// # Errors
    ///
    /// Runtime failures while listing or removing.
    async fn sweep(&self, keep_job_ids: &[u64]) -> Result<Vec<String>, ExecutorError> {
        let _ = keep_job_ids;
        Ok(Vec::new())
    }

    /// Stops the image builds in progress where dropping the [`prepare`](Executor::prepare)
    /// future does not stop them, and returns true when it did: each running prepare then
    /// ends soon with an error, after the runtime removed what the build left. Returns false
    /// when dropping the future is all a caller can do. The command line calls this when it is
    /// interrupted during a prepare. The default returns false.
    fn stop_builds(&self) -> bool {
        false
    }

    /// Removes what engine processes killed with SIGKILL left behind and that no process can
    /// still use, and returns its ids. Container backends remove the containers of any engine
    /// instance whose [`LABEL_DEADLINE`] is more than [`EXPIRED_AFTER`] past. The subprocess
    /// backend stops the agents of jobs whose engine process is gone and returns their job ids.
    /// Unlike [`sweep`](Executor::sweep) it never touches a job that may still be in use, so a
    /// command-line run can call it while a service runs jobs. The default removes nothing.
    ///
    /// # Errors
    ///
    /// Runtime failures while listing or removing.
    async fn sweep_expired(&self) -> Result<Vec<String>, ExecutorError> {
        Ok(Vec::new())
    }

    /// Frees what [`prepare`](Executor::prepare) created for a package, such as its image.
    ///
    /// Called when an integration is deleted or its package replaced. Removal is best effort: an
    /// image still used by a running container may stay. The default does nothing.
    ///
    /// # Errors
    ///
    /// Runtime failures other than "not found".
    async fn release(&self, prepared: &Prepared) -> Result<(), ExecutorError> {
        let _ = prepared;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn deadline_label_adds_timeout_and_grace() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let value: u64 = deadline_label(Duration::from_secs(10))
            .parse()
            .expect("a number of seconds");
        assert!(value >= before + 10 + DEADLINE_GRACE.as_secs(), "{value}");
        assert!(value <= before + 11 + DEADLINE_GRACE.as_secs(), "{value}");
    }

    #[test]
    fn deadline_expires_a_minute_after() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!deadline_expired("1000000", now));
        assert!(!deadline_expired("999940", now));
        assert!(deadline_expired("999939", now));
        assert!(!deadline_expired("soon", now));
        assert!(!deadline_expired("", now));
        assert!(!deadline_expired(&u64::MAX.to_string(), now));
    }
}
