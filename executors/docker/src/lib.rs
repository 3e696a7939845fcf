//! The Docker backend: runs each agent in a fresh container through the Docker Engine API.
//!
//! # Design
//!
//! The backend talks to `dockerd` over its HTTP API with bollard, never through the `docker`
//! CLI, so each step of a job is one request whose errors can be distinguished. A package becomes
//! an image tagged from its digest ([`agentrun_executor::image_tag`]), built through the
//! legacy builder of the build endpoint; an image that already exists is reused without reading
//! the package again.
//!
//! A job is one container, created, attached, started, fed its message and removed:
//!
//! 1. create: stdin open and closed after the first attach (`stdin_once`), no TTY, labels that
//!    name the engine instance, the integration and the job, and the job's limits;
//! 2. attach before start, so no early output is lost;
//! 3. start, then write the message from a separate task and half-close the connection, which
//!    is what closes the agent's stdin;
//! 4. read the demultiplexed stdout and stderr until the stream ends, then wait for the exit code;
//! 5. force-remove the container, on every path, including a dropped `run` future.
//!
//! Each step is a function of its own so that a pool of pre-started containers can reuse
//! create, attach and start ahead of demand and the write and collect steps per job.
//!
//! The cost of a container per job is the runtime's start (runc), which dominates a short job;
//! the backend adds a handful of small API requests around it.
//!
//! Containers are not auto-removed, and the default log driver stays in place, so that an engine
//! that restarts while a job runs can find the container by its labels, read the finished
//! agent's output from the container's logs ([`Executor::recover`]) and remove it.

mod connect;
mod pool;
mod prepare;
mod recover;
mod run;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use agentrun_executor::{Executor, ExecutorError, JobOutcome, JobSpec, PackageSpec, Prepared};
use async_trait::async_trait;
use bollard::Docker;
use serde::{Deserialize, Serialize};

/// Backend name, as used in configuration, logs and [`Prepared::executor`].
pub const EXECUTOR: &str = "docker";

/// Engine address used when neither the configuration nor `DOCKER_HOST` names one.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Default value of the engine label ([`agentrun_executor::LABEL_ENGINE`]).
pub const DEFAULT_INSTANCE: &str = "agentrun";

/// Default limit on one image build, in seconds.
pub const DEFAULT_BUILD_TIMEOUT_SECS: u64 = 600;

/// Default number of warm containers per key: none, so the warm pool is off.
pub const DEFAULT_WARM_POOL_SIZE: usize = 0;

/// Default time a warm container may wait for a job before it is removed, in seconds.
pub const DEFAULT_WARM_POOL_IDLE_SECS: u64 = 300;

pub use pool::{WarmPoolStats, IDLE_OUTPUT_BYTES, LABEL_WARM_POOL};

/// Configuration of the Docker backend.
///
/// Every field has a default, so an empty table is a valid configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Engine API address: `unix:///path/to/docker.sock`, `tcp://host:port` or
    /// `http://host:port`. Default: the `DOCKER_HOST` environment variable, else
    /// `unix:///var/run/docker.sock`.
    pub host: Option<String>,
    /// Value of the engine label on every container and image this engine creates. Two engines
    /// that share a Docker host need different values, so that recovery and sweeping never touch
    /// the other engine's containers. Default `agentrun`.
    pub instance: String,
    /// Network mode of job containers when the job's limits name none, such as `none`, `host`
    /// or a network name. Default: none set, so the engine's default (`bridge`) applies.
    pub network: Option<String>,
    /// Log driver of job containers. Default: none set, so the daemon's default applies.
    ///
    /// Recovery after an engine restart reads a finished container's output from its logs, which
    /// needs a driver that the logs endpoint can read (`json-file`, `local` or `journald`).
    pub log_driver: Option<String>,
    /// Runs each job container's agent under the engine's init process (`HostConfig.init`,
    /// `docker-init`, which is tini), so that the agent is not PID 1. The kernel ignores a
    /// signal without a handler sent to PID 1, so without an init an agent that kills itself
    /// (`kill -SEGV $$`) runs on, while under the init it ends with `128 + signal` as on the
    /// subprocess backend. Default true.
    pub init: bool,
    /// Limit on one image build, in seconds. Default 600.
    pub build_timeout_secs: u64,
    /// Number of containers kept created and started ahead of demand for each distinct
    /// container configuration (image, environment, limits, network, user), so that a job
    /// skips the container start. 0 turns the warm pool off. Each warm container holds its
    /// agent's memory while it waits. Default 0.
    pub warm_pool_size: usize,
    /// Time a warm container may wait for a job before it is removed, in seconds. Default 300.
    pub warm_pool_idle_secs: u64,
    /// Warm pool size per integration name, replacing `warm_pool_size` for that integration
    /// (0 turns the pool off for it). Default: empty.
    pub warm_pool_integrations: BTreeMap<String, usize>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: None,
            instance: DEFAULT_INSTANCE.to_owned(),
            network: None,
            log_driver: None,
            init: true,
            build_timeout_secs: DEFAULT_BUILD_TIMEOUT_SECS,
            warm_pool_size: DEFAULT_WARM_POOL_SIZE,
            warm_pool_idle_secs: DEFAULT_WARM_POOL_IDLE_SECS,
            warm_pool_integrations: BTreeMap::new(),
        }
    }
}

impl DockerConfig {
    /// Returns the engine address to use: `host`, else a non-empty `DOCKER_HOST`, else
    /// [`DEFAULT_HOST`].
    pub fn resolved_host(&self) -> String {
        if let Some(host) = &self.host {
            return host.clone();
        }
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => host,
            _ => DEFAULT_HOST.to_owned(),
        }
    }

    fn build_timeout(&self) -> Duration {
        Duration::from_secs(self.build_timeout_secs)
    }
}

/// Runs agents in Docker containers. Create it with [`DockerExecutor::connect`].
///
/// The executor is cheap to share between concurrent jobs: the client keeps no connection open
/// between requests, and all per-job state lives in the future that [`Executor::run`] returns.
#[derive(Debug)]
pub struct DockerExecutor {
    docker: Docker,
    config: DockerConfig,
    /// The address connected to, for error messages.
    host: String,
    /// One lock per image tag being built, so that concurrent prepares of one package build once.
    /// Entries are weak, so a tag's lock goes away with its last prepare.
    build_locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// Warm containers, when the configuration asks for any.
    pool: Option<pool::WarmPool>,
}

impl DockerExecutor {
    /// Returns the warm pool's counts, all zero when the pool is off.
    pub fn warm_pool_stats(&self) -> WarmPoolStats {
        self.pool
            .as_ref()
            .map(pool::WarmPool::stats)
            .unwrap_or_default()
    }

    /// Returns the configuration the executor was connected with.
    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    /// Returns the engine address in use.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Returns the lock that serialises builds of `tag`, creating it when no prepare holds one.
    fn build_lock(&self, tag: &str) -> Arc<tokio::sync::Mutex<()>> {
        // A panic while the map was locked leaves it consistent (every operation on it is a
        // single insert or retain), so a poisoned lock is safe to reuse.
        let mut locks = self
            .build_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = locks.get(tag).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(tag.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

#[async_trait]
impl Executor for DockerExecutor {
    fn name(&self) -> &'static str {
        EXECUTOR
    }

    async fn ping(&self) -> Result<(), ExecutorError> {
        connect::ping(&self.docker, &self.host).await
    }

    async fn prepare(&self, package: &PackageSpec) -> Result<Prepared, ExecutorError> {
        prepare::prepare(self, package).await
    }

    async fn run(&self, prepared: &Prepared, job: JobSpec) -> Result<JobOutcome, ExecutorError> {
        run::run(self, prepared, job).await
    }

    async fn recover(
        &self,
        job_id: u64,
        timeout: Duration,
        max_stdout_bytes: usize,
        stderr_tail_bytes: usize,
    ) -> Result<Option<JobOutcome>, ExecutorError> {
        recover::recover(self, job_id, timeout, max_stdout_bytes, stderr_tail_bytes).await
    }

    async fn sweep(&self, keep_job_ids: &[u64]) -> Result<Vec<String>, ExecutorError> {
        recover::sweep(self, keep_job_ids).await
    }

    async fn sweep_expired(&self) -> Result<Vec<String>, ExecutorError> {
        recover::sweep_expired(self).await
    }

    async fn release(&self, prepared: &Prepared) -> Result<(), ExecutorError> {
        prepare::release(self, prepared).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_empty_table_gives_defaults() {
        let config: DockerConfig = toml::from_str("").expect("empty config parses");
        assert_eq!(config, DockerConfig::default());
        assert_eq!(config.instance, "agentrun");
        assert_eq!(config.build_timeout_secs, 600);
        assert!(config.init);
        assert_eq!(config.network, None);
        assert_eq!(config.log_driver, None);
    }

    #[test]
    fn config_reads_every_field() {
        let config: DockerConfig = toml::from_str(
            r#"
            host = "unix:///run/docker.sock"
            instance = "staging"
            network = "none"
            log_driver = "local"
            build_timeout_secs = 30
            init = false
            "#,
        )
        .expect("full config parses");
        assert_eq!(config.host.as_deref(), Some("unix:///run/docker.sock"));
        assert_eq!(config.instance, "staging");
        assert_eq!(config.network.as_deref(), Some("none"));
        assert_eq!(config.log_driver.as_deref(), Some("local"));
        assert_eq!(config.build_timeout_secs, 30);
        assert!(!config.init);
    }

    #[test]
    fn config_reads_warm_pool() {
        let config: DockerConfig = toml::from_str(
            r#"
            warm_pool_size = 2
            warm_pool_idle_secs = 30

            [warm_pool_integrations]
            Echo = 4
            Slack = 0
            "#,
        )
        .expect("warm pool config parses");
        assert_eq!(config.warm_pool_size, 2);
        assert_eq!(config.warm_pool_idle_secs, 30);
        assert_eq!(config.warm_pool_integrations["Echo"], 4);
        assert_eq!(config.warm_pool_integrations["Slack"], 0);

        let defaults = DockerConfig::default();
        assert_eq!(defaults.warm_pool_size, 0);
        assert_eq!(defaults.warm_pool_idle_secs, 300);
        assert!(defaults.warm_pool_integrations.is_empty());
    }

    #[test]
    fn config_rejects_unknown_field() {
        let error = toml::from_str::<DockerConfig>("hots = \"unix:///x\"")
            .expect_err("a misspelt key must fail");
        assert!(
            error.to_string().contains("hots"),
            "error should name the unknown key: {error}"
        );
    }

    #[test]
    fn config_host_overrides_environment() {
        let config = DockerConfig {
            host: Some("tcp://127.0.0.1:2375".to_owned()),
            ..DockerConfig::default()
        };
        assert_eq!(config.resolved_host(), "tcp://127.0.0.1:2375");
    }
}
