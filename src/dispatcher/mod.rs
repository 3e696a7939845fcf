//! The dispatcher: turns a request for an integration into a job on an [`Executor`], and the
//! agent's output into a result.
//!
//! A `work` request goes through these steps, in order:
//!
//! 1. The form is resolved and validated ([`forms::resolve`]). Invalid values, env names or
//!    timeouts return an [`Error`] before anything is started.
//! 2. The message is built ([`Request`]) with a fresh job id.
//! 3. The executor runs the job with the merged environment, the limits and the deadline.
//! 4. The reply is parsed from stdout ([`parse_info_reply`]) and the outcome becomes a
//!    [`WorkResult`], whose status tells whether the agent succeeded, failed, gave no valid reply,
//!    timed out or was cancelled.
//!
//! The dispatcher is shared between concurrent jobs; it keeps no per-job state.

mod log_limit;
mod outcome;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrun_executor::{
    CancellationToken, Executor, JobOutcome, JobSpec, Limits, MessageKind, PackageSpec, Prepared,
    DEFAULT_MAX_STDOUT_BYTES, DEFAULT_STDERR_TAIL_BYTES, DEFAULT_TIMEOUT,
};
use serde::Serialize;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::Error;
use crate::forms::{self, Context, MessageTooLarge};
use crate::manifest::{is_env_name, Manifest};
use crate::protocol::{agent_id_for, JobIdGenerator, Request};
use crate::warning::Warning;

use log_limit::LogLimiter;

#[cfg(doc)]
use crate::protocol::parse_info_reply;

/// Default maximum size of a work message, in bytes: 16 MiB. Real messages are a few kilobytes,
/// and the conformance suite sends a 1 MiB value.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Default number of stderr lines quoted in a job's error text.
pub const DEFAULT_STDERR_TAIL_LINES: usize = 10;

/// Warnings about agents (such as a second reply) logged per [`AGENT_WARNING_WINDOW`]; the rest
/// are counted and the count logged with the next one.
const AGENT_WARNING_BURST: u32 = 10;

/// Window of [`AGENT_WARNING_BURST`].
const AGENT_WARNING_WINDOW: Duration = Duration::from_secs(60);

/// An integration as the dispatcher runs it: a validated manifest and an unpacked package.
#[derive(Clone, Debug, PartialEq)]
pub struct Integration {
    /// Integration name, from the manifest.
    pub name: String,
    /// The agentID sent in every message ([`agent_id_for`] of the name).
    pub agent_id: Uuid,
    /// The validated manifest.
    pub manifest: Manifest,
    /// Package folder, which contains the `Dockerfile`.
    pub root: PathBuf,
    /// Content digest of the package (lowercase hex SHA-256).
    pub digest: String,
    /// Environment variables for the agent, in order. [`Integration::new`] starts from the
    /// manifest's `[env]`; a service may replace it with the integration's stored env.
    pub env: Vec<(String, String)>,
}

impl Integration {
    /// Builds an integration from its manifest and unpacked package.
    pub fn new(manifest: Manifest, root: PathBuf, digest: String) -> Self {
        let env = manifest
            .env
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Self {
            name: manifest.name.clone(),
            agent_id: agent_id_for(&manifest.name),
            manifest,
            root,
            digest,
            env,
        }
    }

    /// Returns what [`Executor::prepare`] needs to know about the package.
    pub fn package_spec(&self) -> PackageSpec {
        PackageSpec {
            integration: self.name.clone(),
            agent_id: self.agent_id.to_string(),
            digest: self.digest.clone(),
            root: self.root.clone(),
            command: self.manifest.command().map(<[String]>::to_vec),
        }
    }
}

/// Engine-wide settings for every job, used where neither the request nor the manifest sets
/// a value.
#[derive(Clone, Debug, PartialEq)]
pub struct DispatchDefaults {
    /// Deadline for one job. Default [`DEFAULT_TIMEOUT`] (60 s).
    pub timeout: Duration,
    /// Cap on an agent's stdout, in bytes. Default [`DEFAULT_MAX_STDOUT_BYTES`] (1 MiB).
    pub max_stdout_bytes: usize,
    /// Trailing stderr bytes kept per job. Default [`DEFAULT_STDERR_TAIL_BYTES`] (16 KiB).
    pub stderr_tail_bytes: usize,
    /// Stderr lines quoted in error texts. Default [`DEFAULT_STDERR_TAIL_LINES`].
    pub stderr_tail_lines: usize,
    /// Maximum size of a work message after keyword substitution, in bytes. Default
    /// [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub max_message_bytes: usize,
    /// Resource limits and hardening options.
    pub limits: Limits,
}

impl Default for DispatchDefaults {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            max_stdout_bytes: DEFAULT_MAX_STDOUT_BYTES,
            stderr_tail_bytes: DEFAULT_STDERR_TAIL_BYTES,
            stderr_tail_lines: DEFAULT_STDERR_TAIL_LINES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            limits: Limits::default(),
        }
    }
}

/// Options of one health check.
#[derive(Clone, Debug, Default)]
pub struct DescribeOptions {
    /// Job id to use; a fresh one when `None`.
    pub job_id: Option<u64>,
    /// Deadline; the manifest's, else the default, when `None`.
    pub timeout: Option<Duration>,
    /// Cancels the check. A fresh token when `None`.
    pub cancel: Option<CancellationToken>,
}

/// One `work` request.
#[derive(Clone, Debug, Default)]
pub struct WorkRequest {
    /// Values the user gave, as `(field name, value)`.
    pub values: Vec<(String, String)>,
    /// Values for the `SIFT-*` keywords in prefills.
    pub context: Context,
    /// Environment variables that replace or extend the integration's, in order.
    pub env: Vec<(String, String)>,
    /// Deadline for this job, replacing the manifest's and the default.
    pub timeout: Option<Duration>,
    /// Cancels the job; the agent is killed and the result is `cancelled`.
    pub cancel: CancellationToken,
    /// Job id to use, for callers that record the job before it runs; a fresh one when `None`.
    pub job_id: Option<u64>,
}

/// The end state of a job, as the CLI's `--json` output and the HTTP API report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobStatus {
    /// The agent replied with `return_code` 0 (for `describe`: with a heartbeat).
    Succeeded,
    /// The agent replied with a non-zero `return_code`.
    Failed,
    /// The agent exited without a valid reply, or wrote more than the stdout cap.
    Error,
    /// The deadline passed and the agent was killed.
    TimedOut,
    /// The job was cancelled and the agent was killed.
    Cancelled,
}

impl JobStatus {
    /// Returns the status as serialised (`succeeded`, `timed_out`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Error => "error",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The result of a `work` job: exactly what `agentrun run --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkResult {
    /// The job id sent to the agent.
    pub job_id: u64,
    /// The job's end state.
    pub status: JobStatus,
    /// The agent's `return_code`, when it replied.
    pub return_code: Option<i64>,
    /// The agent's exit code (128 + signal when killed by a signal), when known.
    pub exit_code: Option<i32>,
    /// The reply's `payload.message`, when it replied.
    pub message: Option<String>,
    /// The reply's `payload.url`.
    pub url: Option<String>,
    /// The reply's `payload.url_label`.
    pub url_label: Option<String>,
    /// Time the executor took to run the job, in milliseconds.
    pub duration_ms: u64,
    /// The normalised reply, when it replied.
    pub reply: Option<serde_json::Value>,
    /// Problems that did not stop the job: keywords that had no value in the context, env
    /// variables given for the job that the manifest's `[env]` does not declare (only when it
    /// declares some), an agent that replied more than once, or one that exited with a failure
    /// after a valid reply.
    pub warnings: Vec<Warning>,
    /// Why there is no valid reply: what was expected, the exit status and the last stderr
    /// lines. `None` for `succeeded` and `failed`.
    pub error: Option<String>,
    /// The end of the agent's stderr, as captured.
    pub stderr_tail: String,
}

/// The result of a health check (`describe`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthReport {
    /// True when the agent replied with a heartbeat for this job.
    pub healthy: bool,
    /// The job id sent to the agent.
    pub job_id: u64,
    /// The check's end state: `succeeded` when healthy.
    pub status: JobStatus,
    /// The agent's exit code, when known.
    pub exit_code: Option<i32>,
    /// The heartbeat, when there was one.
    pub reply: Option<serde_json::Value>,
    /// Why the agent is unhealthy, as for [`WorkResult::error`].
    pub error: Option<String>,
    /// The end of the agent's stderr, as captured.
    pub stderr_tail: String,
    /// Time the executor took to run the check, in milliseconds.
    pub duration_ms: u64,
}

/// Runs integrations on one executor. See the [module documentation](self).
#[derive(Debug)]
pub struct Dispatcher {
    executor: Arc<dyn Executor>,
    job_ids: Arc<JobIdGenerator>,
    defaults: DispatchDefaults,
    reachable: tokio::sync::OnceCell<()>,
    /// Rate limit of the warnings that agents trigger, which are logged besides the result.
    agent_warnings: LogLimiter,
}

impl Dispatcher {
    /// Creates a dispatcher with default settings and its own job id generator.
    pub fn new(executor: Arc<dyn Executor>) -> Self {
        Self::with_defaults(executor, DispatchDefaults::default())
    }

    /// Creates a dispatcher with the given settings and its own job id generator.
    pub fn with_defaults(executor: Arc<dyn Executor>, defaults: DispatchDefaults) -> Self {
        Self {
            executor,
            job_ids: Arc::new(JobIdGenerator::new()),
            defaults,
            reachable: tokio::sync::OnceCell::new(),
            agent_warnings: LogLimiter::new(AGENT_WARNING_BURST, AGENT_WARNING_WINDOW),
        }
    }

    /// Replaces the job id generator, for example with one seeded from a job store and shared
    /// with other components.
    #[must_use]
    pub fn with_job_ids(mut self, job_ids: Arc<JobIdGenerator>) -> Self {
        self.job_ids = job_ids;
        self
    }

    /// Returns the executor.
    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    /// Returns the job id generator.
    pub fn job_ids(&self) -> &Arc<JobIdGenerator> {
        &self.job_ids
    }

    /// Returns the settings.
    pub fn defaults(&self) -> &DispatchDefaults {
        &self.defaults
    }

    /// Prepares an integration's package on the executor (builds its image or resolves its
    /// command). The first call also checks that the executor's runtime responds.
    ///
    /// # Errors
    ///
    /// [`Error::Executor`] when the runtime is unreachable, the package cannot run on this
    /// executor or its build fails.
    pub async fn prepare(&self, integration: &Integration) -> Result<Prepared, Error> {
        self.reachable
            .get_or_try_init(|| self.executor.ping())
            .await?;
        let prepared = self.executor.prepare(&integration.package_spec()).await?;
        tracing::debug!(
            agent_id = %integration.agent_id,
            executor = self.executor.name(),
            cache_hit = prepared.cache_hit,
            "package prepared"
        );
        Ok(prepared)
    }

    /// Runs a health check: sends `describe` and looks for a heartbeat.
    ///
    /// An agent without a valid heartbeat gives an unhealthy report, not an error.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a zero timeout, and [`Error::Executor`] when the executor
    /// fails to run the agent.
    pub async fn describe(
        &self,
        integration: &Integration,
        prepared: &Prepared,
        options: DescribeOptions,
    ) -> Result<HealthReport, Error> {
        let timeout = self.timeout_for(integration, options.timeout)?;
        let job_id = options.job_id.unwrap_or_else(|| self.job_ids.next_id());
        let stdin = Request::describe(integration.agent_id, job_id).to_bytes();

        let mut job = self.job_spec(job_id, MessageKind::Describe, stdin, timeout);
        job.env = integration.env.clone();
        if let Some(cancel) = options.cancel {
            job.cancel = cancel;
        }

        let span = self.job_span(integration, job_id, MessageKind::Describe);
        async {
            let outcome = self.executor.run(prepared, job).await?;
            let report = outcome::health_report(
                job_id,
                &outcome,
                timeout,
                self.defaults.max_stdout_bytes,
                self.defaults.stderr_tail_lines,
            );
            if report.healthy && !outcome.exit.success() {
                self.log_agent_warning(&format!(
                    "the agent exited with {} after a valid heartbeat",
                    outcome.exit
                ));
            }
            tracing::info!(
                healthy = report.healthy,
                status = report.status.as_str(),
                exit_code = report.exit_code,
                elapsed_ms = report.duration_ms,
                "health check finished"
            );
            Ok(report)
        }
        .instrument(span)
        .await
    }

    /// Runs one `work` job. See the [module documentation](self) for the steps.
    ///
    /// # Errors
    ///
    /// Before anything runs: [`Error::Form`] listing every invalid field value,
    /// [`Error::MessageTooLarge`] for a message over [`DispatchDefaults::max_message_bytes`], and
    /// [`Error::InvalidArgument`] for an invalid env variable name or a zero timeout. While
    /// running: [`Error::Executor`] when the executor fails. An agent that fails, crashes or
    /// times out is not an error, and the result's status records it.
    pub async fn work(
        &self,
        integration: &Integration,
        prepared: &Prepared,
        request: WorkRequest,
    ) -> Result<WorkResult, Error> {
        // Validate everything before a job id is drawn or a process is started.
        let max_bytes = self.defaults.max_message_bytes;
        let form = forms::resolve_within(
            &integration.manifest,
            &request.values,
            &request.context,
            max_bytes,
        )?;
        let env = merge_env(&integration.env, &request.env)?;
        let timeout = self.timeout_for(integration, request.timeout)?;
        let mut warnings = form.warnings;
        warnings.extend(undeclared_env(&integration.manifest, &request.env));

        let job_id = request.job_id.unwrap_or_else(|| self.job_ids.next_id());
        let stdin = message_bytes(integration.agent_id, job_id, &form.values, max_bytes)?;
        let mut job = self.job_spec(job_id, MessageKind::Work, stdin, timeout);
        job.env = env;
        job.cancel = request.cancel;

        let span = self.job_span(integration, job_id, MessageKind::Work);
        async {
            let env_names: Vec<&str> = job.env.iter().map(|(key, _)| key.as_str()).collect();
            tracing::debug!(env = ?env_names, timeout_ms = timeout.as_millis(), "starting job");

            let outcome = self.executor.run(prepared, job).await?;
            let mut result = outcome::work_result(
                job_id,
                &outcome,
                timeout,
                self.defaults.max_stdout_bytes,
                self.defaults.stderr_tail_lines,
            );
            for warning in &result.warnings {
                self.log_agent_warning(&warning.message);
            }
            warnings.append(&mut result.warnings);
            result.warnings = warnings;

            tracing::info!(
                status = result.status.as_str(),
                return_code = result.return_code,
                exit_code = result.exit_code,
                elapsed_ms = result.duration_ms,
                "job finished"
            );
            Ok(result)
        }
        .instrument(span)
        .await
    }

    /// Builds the result of a `work` job from an outcome obtained outside [`Dispatcher::work`],
    /// such as one that [`Executor::recover`] collected after a restart. The reply is parsed
    /// exactly as for a job that `work` ran; `timeout` is the job's deadline, quoted in the
    /// error text of a job that timed out.
    pub fn work_result_from_outcome(
        &self,
        job_id: u64,
        outcome: &JobOutcome,
        timeout: Duration,
    ) -> WorkResult {
        outcome::work_result(
            job_id,
            outcome,
            timeout,
            self.defaults.max_stdout_bytes,
            self.defaults.stderr_tail_lines,
        )
    }

    /// Logs a warning that an agent triggered, unless too many came recently.
    ///
    /// The level is info, not warn: the engine lost nothing, the job's result carries the
    /// warning, and the CLI, which logs only warnings by default, prints it from there.
    fn log_agent_warning(&self, warning: &str) {
        if let Some(suppressed_before) = self.agent_warnings.admit(Instant::now()) {
            tracing::info!(suppressed_before, warning, "agent warning");
        }
    }

    fn timeout_for(
        &self,
        integration: &Integration,
        requested: Option<Duration>,
    ) -> Result<Duration, Error> {
        let timeout = requested
            .or_else(|| integration.manifest.timeout())
            .unwrap_or(self.defaults.timeout);
        if timeout.is_zero() {
            return Err(Error::InvalidArgument {
                message: "invalid timeout 0: a job needs a timeout of at least 1 second".to_owned(),
            });
        }
        Ok(timeout)
    }

    fn job_spec(
        &self,
        job_id: u64,
        kind: MessageKind,
        stdin: Vec<u8>,
        timeout: Duration,
    ) -> JobSpec {
        let mut job = JobSpec::new(job_id, kind, stdin);
        job.limits = self.defaults.limits.clone();
        job.timeout = timeout;
        job.max_stdout_bytes = self.defaults.max_stdout_bytes;
        job.stderr_tail_bytes = self.defaults.stderr_tail_bytes;
        job
    }

    fn job_span(&self, integration: &Integration, job_id: u64, kind: MessageKind) -> tracing::Span {
        tracing::info_span!(
            "job",
            job_id,
            agent_id = %integration.agent_id,
            executor = self.executor.name(),
            kind = kind.as_str(),
        )
    }
}

/// Resolves a work request's form and builds the message for the agent's stdin, for callers
/// that check a request before it runs. Returns the message and the warnings about keywords that
/// had no value.
///
/// The form values are bounded by `max_bytes` while keywords are substituted, and the JSON
/// message is checked against it after, so nothing much larger than `max_bytes` is built.
/// Callers that check a request before they draw its job id pass `u64::MAX`, the longest id.
///
/// # Errors
///
/// [`Error::Form`] listing every invalid value, or [`Error::MessageTooLarge`].
pub fn work_message(
    manifest: &Manifest,
    agent_id: Uuid,
    job_id: u64,
    values: &[(String, String)],
    context: &Context,
    max_bytes: usize,
) -> Result<(Vec<u8>, Vec<Warning>), Error> {
    let form = forms::resolve_within(manifest, values, context, max_bytes)?;
    let stdin = message_bytes(agent_id, job_id, &form.values, max_bytes)?;
    Ok((stdin, form.warnings))
}

/// Serializes a work message and checks it against `max_bytes`.
fn message_bytes(
    agent_id: Uuid,
    job_id: u64,
    values: &[(String, String)],
    max_bytes: usize,
) -> Result<Vec<u8>, MessageTooLarge> {
    let stdin = Request::work(agent_id, job_id, values).to_bytes();
    if stdin.len() > max_bytes {
        return Err(MessageTooLarge {
            size: stdin.len(),
            limit: max_bytes,
            partial: false,
        });
    }
    Ok(stdin)
}

/// Returns a warning for each name in `env` that the manifest's `[env]` does not declare, or
/// none when the manifest declares no variables (it then documents none, so any name may be
/// expected). Each name is reported once, in the order given.
pub fn undeclared_env(manifest: &Manifest, env: &[(String, String)]) -> Vec<Warning> {
    if manifest.env.is_empty() {
        return Vec::new();
    }
    let mut warnings: Vec<Warning> = Vec::new();
    for (name, _) in env {
        let reported = warnings
            .iter()
            .any(|warning| warning.variable.as_deref() == Some(name.as_str()));
        if !manifest.env.contains_key(name) && !reported {
            let declared = manifest.env.keys().map(String::as_str);
            warnings.push(Warning::undeclared_env(name, declared));
        }
    }
    warnings
}

/// Returns `base` with `overrides` applied: a key already in `base` gets the new value in its
/// place, and new keys are appended in the order given.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for an override whose name is not a valid variable name or whose
/// value contains a NUL byte. The message names the variable, never its value.
pub fn merge_env(
    base: &[(String, String)],
    overrides: &[(String, String)],
) -> Result<Vec<(String, String)>, Error> {
    let mut env = base.to_vec();
    for (key, value) in overrides {
        if !is_env_name(key) {
            return Err(Error::InvalidArgument {
                message: format!(
                    "invalid env variable name {key:?}; use ASCII letters, digits and \"_\", \
                     not starting with a digit"
                ),
            });
        }
        if value.contains('\0') {
            return Err(Error::InvalidArgument {
                message: format!("env variable {key} contains a NUL byte, which no process environment can carry"),
            });
        }
        match env.iter_mut().find(|(existing, _)| existing == key) {
            Some(entry) => entry.1.clone_from(value),
            None => env.push((key.clone(), value.clone())),
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests;
