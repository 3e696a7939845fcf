//! The subprocess backend: runs each agent as a plain child process of the engine.
//!
//! **This backend is not a sandbox.** The agent runs on the engine's machine with the engine's
//! file system, network and kernel. It can read every file its user may read, open network
//! connections, and leave its process group with `setsid`. Use it for development, for
//! machines without a container runtime, and for integrations you trust; run untrusted
//! integrations on the Docker or Podman backend.
//!
//! # Preparing a package
//!
//! [`Executor::prepare`] first checks the Dockerfile with
//! [`check_dockerfile`](agentrun_executor::check_dockerfile), as every backend does, and then
//! resolves the command line once per package. It is the manifest's `[run] command` when there
//! is one: a relative program with a `/` is resolved in the package
//! folder, and a bare name is looked up in [`MINIMAL_PATH`]. Otherwise the backend reads the
//! Dockerfile's last stage and takes its exec-form `ENTRYPOINT` followed by its exec-form `CMD`
//! (only `CMD` when there is no `ENTRYPOINT`). Image paths that `COPY` or `ADD` filled from the
//! package are mapped back to the package files, honouring `WORKDIR`, so that
//! `ENTRYPOINT ["python3", "/app/agent.py"]` after `COPY agent.py /app/` runs the package's
//! `agent.py` with this machine's `python3`. An absolute program that no copy provides runs from
//! this machine when it exists there (such as `/bin/sh`). Shell-form commands, a missing
//! entrypoint and programs that cannot be found are
//! [`ExecutorError::InvalidPackage`] with a message that explains how to fix the package.
//!
//! # Running a job
//!
//! [`Executor::run`] starts the agent in the package folder with an empty environment plus the
//! job's variables, a minimal `PATH` ([`MINIMAL_PATH`]), a private `HOME` created for the job and
//! removed afterwards, and `LANG` ([`AGENT_LANG`]); job variables of the same names win. Nothing
//! else of the engine's environment reaches the agent. The agent leads its own process group. A
//! separate task writes the message and closes stdin, while the job reads stdout and stderr at
//! the same time. When the agent exits, times out, is cancelled or writes more stdout than the
//! cap, the whole group gets `SIGKILL`, so children that the agent forked do not outlive the job.
//!
//! # Isolation
//!
//! When the engine runs as root and [`Limits::user`] is set, the agent runs as that user and
//! group with the user's supplementary groups. The package folder must then be readable by that
//! user. When the engine does not run as root it cannot switch users: the agent runs as the
//! engine's own user, and the backend logs a warning once. [`Limits::nofile`], [`Limits::nproc`],
//! [`Limits::cpu_seconds`] and [`Limits::address_space_bytes`] apply through `setrlimit`, capped
//! at the engine's own hard limits. `RLIMIT_NPROC` counts every process of the user, so it
//! works as a per-agent limit only with a dedicated agent user, and root ignores it. The
//! container fields of [`Limits`] (memory, CPUs, pids, network, capabilities, read-only root)
//! have no effect here.
//!
//! # Known Limitations
//!
//! - `ENV` values of the Dockerfile do not reach the agent; only the job's variables do.
//! - Files that `COPY --from` takes from another stage, that `ADD` downloads or unpacks from an
//!   archive, or that `RUN` creates, cannot be mapped to package files.
//! - A `.dockerignore` file is not read, so a path it excludes from the image still maps.
//! - A process that leaves the agent's process group (`setsid`, `setpgid`) survives the job.
//!
//! [`Limits`]: agentrun_executor::Limits
//! [`Limits::user`]: agentrun_executor::Limits::user
//! [`Limits::nofile`]: agentrun_executor::Limits::nofile
//! [`Limits::nproc`]: agentrun_executor::Limits::nproc
//! [`Limits::cpu_seconds`]: agentrun_executor::Limits::cpu_seconds
//! [`Limits::address_space_bytes`]: agentrun_executor::Limits::address_space_bytes

mod isolation;
mod prepare;
mod process;
mod run;
mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentrun_executor::{
    check_dockerfile, Executor, ExecutorError, JobOutcome, JobSpec, PackageSpec, Prepared, Target,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::isolation::AgentUser;

/// Name of this backend in configuration, logs and [`Prepared::executor`].
pub const EXECUTOR_NAME: &str = "subprocess";
/// `PATH` of every agent, unless the job's environment sets its own.
pub const MINIMAL_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// `LANG` of every agent, unless the job's environment sets its own.
pub const AGENT_LANG: &str = "C.UTF-8";
/// Default for [`SubprocessConfig::drain_after_exit_ms`].
pub const DEFAULT_DRAIN_AFTER_EXIT_MS: u64 = 500;

/// Configuration of the subprocess backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubprocessConfig {
    /// Folder in which each job's private `HOME` folder is created and removed again. Default:
    /// the system's temporary folder (`TMPDIR`, else `/tmp`).
    pub home_parent: Option<PathBuf>,
    /// Time in milliseconds to keep reading the agent's stdout and stderr after it exited and
    /// its process group was killed. Only a process that left the group can keep the pipes
    /// open that long. Default: [`DEFAULT_DRAIN_AFTER_EXIT_MS`].
    pub drain_after_exit_ms: u64,
    /// Folder for a record of each running job (its process group and start time), so that
    /// after an engine killed with SIGKILL, [`Executor::recover`] and [`Executor::sweep`] stop
    /// the agents it left running. The service sets `<data_dir>/run` when this is not set.
    /// Default: none, so nothing is recorded and nothing can be recovered.
    pub state_dir: Option<PathBuf>,
    /// Folder that engine processes which come and go share, such as command-line runs. When
    /// `state_dir` is not set, each process records its running jobs in its own subfolder
    /// `<pid>-<start time>` of it, and [`Executor::sweep_expired`] stops the agents and removes
    /// the `HOME` folders of jobs whose engine process is gone. The command line sets it; it
    /// is not read from configuration files. Default: none.
    #[serde(skip)]
    pub shared_state_dir: Option<PathBuf>,
}

impl Default for SubprocessConfig {
    fn default() -> Self {
        Self {
            home_parent: None,
            drain_after_exit_ms: DEFAULT_DRAIN_AFTER_EXIT_MS,
            state_dir: None,
            shared_state_dir: None,
        }
    }
}

impl SubprocessConfig {
    fn drain_after_exit(&self) -> Duration {
        Duration::from_millis(self.drain_after_exit_ms)
    }
}

/// Runs agents as child processes. See the crate documentation.
#[derive(Debug, Default)]
pub struct SubprocessExecutor {
    config: SubprocessConfig,
    /// Folder of the running jobs' records: `state_dir`, else this process's subfolder of
    /// `shared_state_dir`, else none.
    job_state_dir: Option<PathBuf>,
    /// Set once the warning about an ignored agent user has been logged.
    user_warning_logged: AtomicBool,
}

impl SubprocessExecutor {
    /// Creates the backend. Nothing is checked until a package is prepared.
    pub fn new(config: SubprocessConfig) -> Self {
        let job_state_dir = config.state_dir.clone().or_else(|| {
            let shared = config.shared_state_dir.as_deref()?;
            state::owner_dir(shared)
                .inspect_err(|error| {
                    tracing::warn!(%error, "reading this process's start time failed; running jobs are not recorded");
                })
                .ok()
        });
        Self {
            config,
            job_state_dir,
            user_warning_logged: AtomicBool::new(false),
        }
    }

    /// Returns the user to switch the agent to, when the engine runs as root and the job names
    /// one. A non-root engine runs the agent as itself and warns once.
    fn agent_user(&self, job: &JobSpec) -> Result<Option<AgentUser>, ExecutorError> {
        let Some(spec) = &job.limits.user else {
            return Ok(None);
        };
        if !isolation::engine_is_root() {
            if !self.user_warning_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    user = %spec,
                    "the engine does not run as root, so agents run as the engine's user instead \
                     of the configured agent user"
                );
            }
            return Ok(None);
        }
        isolation::resolve_user(spec)
            .map(Some)
            .map_err(|error| run::runtime_error("resolve agent user", error.to_string()))
    }

    /// Creates a job's private `HOME` folder, at an absolute path because the agent runs in
    /// another working directory.
    fn create_home(&self) -> Result<tempfile::TempDir, ExecutorError> {
        let parent = self
            .config
            .home_parent
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let parent = std::path::absolute(&parent).map_err(|source| {
            ExecutorError::io(
                format!("resolve the HOME parent folder {}", parent.display()),
                source,
            )
        })?;
        tempfile::Builder::new()
            .prefix(state::HOME_PREFIX)
            .tempdir_in(&parent)
            .map_err(|source| {
                ExecutorError::io(
                    format!("create a HOME folder in {}", parent.display()),
                    source,
                )
            })
    }
}

impl Drop for SubprocessExecutor {
    /// Removes this process's subfolder of the shared state folder when no job record is left
    /// in it. A record that is still there (a job whose future was leaked) keeps it for
    /// [`Executor::sweep_expired`] of a later process.
    fn drop(&mut self) {
        if self.config.state_dir.is_none() {
            if let Some(dir) = &self.job_state_dir {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

#[async_trait]
impl Executor for SubprocessExecutor {
    fn name(&self) -> &'static str {
        EXECUTOR_NAME
    }

    async fn prepare(&self, package: &PackageSpec) -> Result<Prepared, ExecutorError> {
        let root = tokio::fs::canonicalize(&package.root)
            .await
            .map_err(|source| {
                ExecutorError::io(
                    format!("resolve package folder {}", package.root.display()),
                    source,
                )
            })?;

        // Checking and resolving read the Dockerfile and look at package files: blocking file
        // system work.
        let command = package.command.clone();
        let resolve_root = root.clone();
        let argv = tokio::task::spawn_blocking(move || {
            let stage = check_dockerfile(&resolve_root)?;
            prepare::resolve_command(&resolve_root, &stage, command.as_deref()).map_err(|error| {
                ExecutorError::InvalidPackage {
                    path: resolve_root.clone(),
                    reason: error.to_string(),
                }
            })
        })
        .await
        .map_err(|error| run::runtime_error("resolve command", error.to_string()))??;
        tracing::debug!(
            agent_id = %package.agent_id,
            executor = EXECUTOR_NAME,
            program = %argv[0],
            "resolved the agent's command"
        );

        Ok(Prepared {
            executor: EXECUTOR_NAME.to_owned(),
            integration: package.integration.clone(),
            agent_id: package.agent_id.clone(),
            digest: package.digest.clone(),
            target: Target::Command {
                argv,
                working_dir: root,
            },
            // Nothing is ever built, so there is nothing to find in a cache.
            cache_hit: false,
        })
    }

    async fn run(&self, prepared: &Prepared, job: JobSpec) -> Result<JobOutcome, ExecutorError> {
        let Target::Command { argv, working_dir } = &prepared.target else {
            return Err(run::runtime_error(
                "run",
                format!(
                    "the package was prepared by the {} executor as an image, which the \
                     subprocess executor cannot run: prepare it with the subprocess executor",
                    prepared.executor
                ),
            ));
        };
        let span = tracing::debug_span!(
            "agent",
            job_id = job.job_id,
            agent_id = %prepared.agent_id,
            executor = EXECUTOR_NAME
        );
        run::run_job(self, argv, working_dir, job)
            .instrument(span)
            .await
    }

    /// Kills the process group that job `job_id` left running when an earlier engine process
    /// was killed, if the state folder records it and its leader still runs with the recorded
    /// start time. Returns `Ok(None)`: the output of such a job is lost.
    async fn recover(
        &self,
        job_id: u64,
        _timeout: Duration,
        _max_stdout_bytes: usize,
        _stderr_tail_bytes: usize,
    ) -> Result<Option<JobOutcome>, ExecutorError> {
        let Some(dir) = self.config.state_dir.clone() else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || stop_job(&dir, job_id))
            .await
            .map_err(|error| run::runtime_error("recover job", error.to_string()))??;
        Ok(None)
    }

    /// Kills the process groups of every job in the state folder whose id is not in
    /// `keep_job_ids`, as [`recover`](Executor::recover) does for one job. Returns nothing,
    /// since subprocess jobs have no containers.
    async fn sweep(&self, keep_job_ids: &[u64]) -> Result<Vec<String>, ExecutorError> {
        let Some(dir) = self.config.state_dir.clone() else {
            return Ok(Vec::new());
        };
        let keep = keep_job_ids.to_vec();
        tokio::task::spawn_blocking(move || {
            let jobs = state::recorded_jobs(&dir).map_err(|source| {
                ExecutorError::io(format!("list job records in {}", dir.display()), source)
            })?;
            for job_id in jobs.into_iter().filter(|job_id| !keep.contains(job_id)) {
                stop_job(&dir, job_id)?;
            }
            Ok::<_, ExecutorError>(())
        })
        .await
        .map_err(|error| run::runtime_error("sweep jobs", error.to_string()))??;
        Ok(Vec::new())
    }

    /// Stops the agents of jobs whose engine process is gone, in the subfolders of
    /// `shared_state_dir` (see [`SubprocessConfig::shared_state_dir`]), removes their `HOME`
    /// folders, and returns those jobs' ids. Without a shared folder it does nothing.
    async fn sweep_expired(&self) -> Result<Vec<String>, ExecutorError> {
        let Some(shared) = self.config.shared_state_dir.clone() else {
            return Ok(Vec::new());
        };
        let killed = tokio::task::spawn_blocking(move || {
            state::stop_dead_owners(&shared).map_err(|source| {
                ExecutorError::io(format!("list job records in {}", shared.display()), source)
            })
        })
        .await
        .map_err(|error| run::runtime_error("sweep jobs", error.to_string()))??;
        for job_id in &killed {
            tracing::info!(
                job_id,
                executor = EXECUTOR_NAME,
                "killed the agent that an engine process killed with SIGKILL left running"
            );
        }
        Ok(killed.iter().map(u64::to_string).collect())
    }
}

/// Stops one recorded job's process group, logging what was done.
fn stop_job(dir: &Path, job_id: u64) -> Result<(), ExecutorError> {
    let killed = state::stop_recorded(dir, job_id).map_err(|source| {
        ExecutorError::io(
            format!("stop job {job_id} recorded in {}", dir.display()),
            source,
        )
    })?;
    if killed {
        tracing::info!(
            job_id,
            executor = EXECUTOR_NAME,
            "killed the agent that an earlier engine process left running"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_from_empty_object() {
        let config: SubprocessConfig = serde_json::from_str("{}").expect("empty config is valid");
        assert_eq!(config, SubprocessConfig::default());
        assert_eq!(config.drain_after_exit_ms, DEFAULT_DRAIN_AFTER_EXIT_MS);
    }

    #[test]
    fn config_rejects_unknown_field() {
        let error = serde_json::from_str::<SubprocessConfig>(r#"{"drain_ms": 5}"#)
            .expect_err("unknown fields are rejected");
        assert!(
            error.to_string().contains("unknown field `drain_ms`"),
            "{error}"
        );
    }

    #[test]
    fn home_is_absolute_for_relative_parent() {
        let executor = SubprocessExecutor::new(SubprocessConfig {
            home_parent: Some(PathBuf::from(".")),
            ..SubprocessConfig::default()
        });
        let home = executor
            .create_home()
            .expect("the current folder is writable in tests");
        assert!(home.path().is_absolute(), "{}", home.path().display());
    }
}
