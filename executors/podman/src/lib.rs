//! The Podman backend: runs each agent in a fresh container through the libpod API, with no
//! daemon that has to run beforehand.
//!
//! # Design
//!
//! The backend talks to a libpod API socket. It uses the first socket that responds to a ping: the
//! configured one, `CONTAINER_HOST` (`unix://` only), then the standard rootful
//! (`/run/podman/podman.sock`) or rootless (`$XDG_RUNTIME_DIR/podman/podman.sock`) path. When
//! none responds, it starts `podman system service` on a socket in a private directory and owns
//! that process: it ends when the executor is dropped, and the kernel kills it when the engine
//! dies (see the `service` module). A CLI run therefore leaves no service process behind.
//!
//! A package becomes an image tagged from its digest ([`agentrun_executor::image_tag`]), the
//! same tag as on Docker, built from the package's tar context through the libpod build
//! endpoint. An image that already exists is reused.
//!
//! A job is one container, created, attached, started, fed its message and removed:
//!
//! 1. create: stdin open, no terminal, labels naming the engine instance, the integration and
//!    the job, the job's limits and hardening, and the `k8s-file` log driver;
//! 2. attach before start: libpod runs the OCI runtime's `create` inside attach, so runtime
//!    errors (such as an rlimit above the host's) surface there, and no early output is lost;
//! 3. start, then write the message from a separate task and half-close the connection, which
//!    closes the agent's stdin;
//! 4. read stdout and stderr apart until the stream ends, then wait for the exit code;
//! 5. force-remove the container with a zero stop timeout, on every path, including a dropped
//!    `run` future.
//!
//! Each step is a function of its own, so that a pool of pre-started containers can reuse
//! create, attach and start ahead of demand and the write and collect steps per job.
//!
//! Most requests go through the `podman-api` crate. Create, attach, build and the state polls
//! that read the exit code are plain HTTP requests on the same socket instead. The crate cannot
//! set no-new-privileges or send a prepared tar context, its wait discards the exit code, and
//! its inspect, which its attach also runs, computes sizes. See the `libpod` module.
//!
//! # Known Limitations
//!
//! - Over the libpod API, Podman 4.3 ignores a container's OCI runtime field. The `runtime`
//!   setting therefore reaches only a service this backend starts itself (as `--runtime`). A
//!   standing service uses its own default, set in `containers.conf`.
//! - Only Unix sockets are supported, so `CONTAINER_HOST` values such as `ssh://` are skipped.
//! - With Podman's default bridge network, each job took 140-330 ms longer than with network
//!   `none` (netavark setup and teardown, measured with Podman 4.3.1 on a 2-core VM), so agents
//!   that need no network should run with `none`.

mod connect;
mod libpod;
mod pool;
mod prepare;
mod recover;
mod run;
mod service;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use agentrun_executor::{Executor, ExecutorError, JobOutcome, JobSpec, PackageSpec, Prepared};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::connect::Connection;

/// Backend name, as used in configuration, logs and [`Prepared::executor`].
pub const EXECUTOR: &str = "podman";

/// Default value of the engine label ([`agentrun_executor::LABEL_ENGINE`]).
pub const DEFAULT_INSTANCE: &str = "agentrun";

/// Default idle timeout of a private service, in seconds.
pub const DEFAULT_SERVICE_IDLE_SECS: u64 = 300;

/// Default `podman` program.
pub const DEFAULT_PODMAN_BINARY: &str = "podman";

/// Default limit on one image build, in seconds.
pub const DEFAULT_BUILD_TIMEOUT_SECS: u64 = 600;

/// Default number of warm containers per key: none, so the warm pool is off.
pub const DEFAULT_WARM_POOL_SIZE: usize = 0;

/// Default time a warm container may wait for a job before it is removed, in seconds.
pub const DEFAULT_WARM_POOL_IDLE_SECS: u64 = 300;

pub use pool::{WarmPoolStats, LABEL_WARM_POOL};

/// Configuration of the Podman backend.
///
/// Every field has a default, so an empty table is a valid configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodmanConfig {
    /// libpod API socket to try first: a path or a `unix://` URL. When it does not respond, the
    /// search goes on with `CONTAINER_HOST`, the standard socket paths and finally a private
    /// service. Default: none.
    pub socket: Option<String>,
    /// Value of the engine label on every container and image this engine creates. Two engines
    /// that share a Podman host need different values, so that recovery and sweeping never touch
    /// the other engine's containers. Default `agentrun`.
    pub instance: String,
    /// OCI runtime of a private service, such as `runc` or `crun`, passed as
    /// `podman --runtime`. Default: none, so Podman's default (`containers.conf`) applies. A
    /// standing service that the backend finds keeps its own runtime, since Podman ignores the
    /// runtime requested per container over the API.
    pub runtime: Option<String>,
    /// Resource limits of every job container, used where a job's limits name none. Needed on
    /// hosts whose limits are lower than Podman's defaults, where containers otherwise fail to
    /// start ("error setting rlimit type 7"). Default: none set.
    pub ulimits: Ulimits,
    /// Network mode of job containers when the job's limits name none: `none` (no network
    /// namespace), `host`, `private`, `bridge`, `slirp4netns`, `ns:<path>`,
    /// `container:<id>`, or the name of a Podman network. Default: none set, so Podman's
    /// default applies.
    pub network: Option<String>,
    /// Idle timeout of a private service in seconds, passed as `--time`, where 0 means none.
    /// The service ends with the engine anyway, so the timeout is a last resort. The backend
    /// starts a new service when it finds the old one gone before a job or build. A service
    /// that ends between two requests of one job or build fails that request, so keep the
    /// timeout well above a second. Default 300.
    pub service_idle_secs: u64,
    /// The `podman` program used to start a private service, as a name looked up in `PATH` or
    /// a path. Default `podman`.
    pub podman_binary: PathBuf,
    /// Runs each job container's agent under Podman's init process (`init`, catatonit by
    /// default), so that the agent is not PID 1. The kernel ignores a signal without a handler
    /// sent to PID 1, so without an init an agent that kills itself (`kill -SEGV $$`) runs on,
    /// while under the init it ends with `128 + signal` as on the subprocess backend. Default
    /// true.
    pub init: bool,
    /// Limit on one image build, in seconds. Default 600.
    pub build_timeout_secs: u64,
    /// Number of containers kept created and started ahead of demand for each distinct
    /// container configuration (image, environment, limits, network, user), so that a job
    /// skips the container start. 0 turns the warm pool off. Each warm container holds its
    /// agent's memory and a `conmon` process while it waits. Default 0.
    pub warm_pool_size: usize,
    /// Time a warm container may wait for a job before it is removed, in seconds. Default 300.
    pub warm_pool_idle_secs: u64,
    /// Warm pool size per integration name, replacing `warm_pool_size` for that integration
    /// (0 turns the pool off for it). Default: empty.
    pub warm_pool_integrations: BTreeMap<String, usize>,
}

impl Default for PodmanConfig {
    fn default() -> Self {
        Self {
            socket: None,
            instance: DEFAULT_INSTANCE.to_owned(),
            runtime: None,
            ulimits: Ulimits::default(),
            network: None,
            service_idle_secs: DEFAULT_SERVICE_IDLE_SECS,
            podman_binary: PathBuf::from(DEFAULT_PODMAN_BINARY),
            init: true,
            build_timeout_secs: DEFAULT_BUILD_TIMEOUT_SECS,
            warm_pool_size: DEFAULT_WARM_POOL_SIZE,
            warm_pool_idle_secs: DEFAULT_WARM_POOL_IDLE_SECS,
            warm_pool_integrations: BTreeMap::new(),
        }
    }
}

impl PodmanConfig {
    fn build_timeout(&self) -> Duration {
        Duration::from_secs(self.build_timeout_secs)
    }
}

/// Resource limits (rlimits) applied to every job container whose job sets none. Each value is
/// both the soft and the hard limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ulimits {
    /// `RLIMIT_NOFILE`: open files per process, such as 1024. Default: Podman's default.
    pub nofile: Option<u64>,
    /// `RLIMIT_NPROC`: processes of the container's user, such as 1024. Default: Podman's
    /// default.
    pub nproc: Option<u64>,
}

/// Runs agents in Podman containers. Create it with [`PodmanExecutor::connect`].
///
/// The executor is cheap to share between concurrent jobs: each request opens its own
/// connection, and all per-job state lives in the future that [`Executor::run`] returns. When
/// the executor started a private service, the service lives until the executor and every
/// cleanup it left running are gone.
#[derive(Debug)]
pub struct PodmanExecutor {
    config: PodmanConfig,
    /// The socket in use. Replaced when a private service is found gone and started again.
    connection: Mutex<Connection>,
    /// Serialises restarts of the private service.
    restart: tokio::sync::Mutex<()>,
    /// One lock per image tag being built, so that concurrent prepares of one package build once.
    /// Entries are weak, so a tag's lock goes away with its last prepare.
    build_locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// Warm containers, when the configuration asks for any.
    pool: Option<pool::WarmPool>,
}

impl PodmanExecutor {
    /// Returns the warm pool's counts, all zero when the pool is off.
    pub fn warm_pool_stats(&self) -> WarmPoolStats {
        self.pool
            .as_ref()
            .map(pool::WarmPool::stats)
            .unwrap_or_default()
    }

    /// Returns the configuration the executor was connected with.
    pub fn config(&self) -> &PodmanConfig {
        &self.config
    }

    /// Returns the path of the libpod socket in use.
    pub fn socket(&self) -> PathBuf {
        self.current_connection().socket.clone()
    }

    /// Returns the process id of the private `podman system service` this executor started, or
    /// `None` when it uses a socket it found.
    pub fn service_pid(&self) -> Option<u32> {
        self.current_connection()
            .service
            .as_ref()
            .map(|service| service.pid())
    }

    /// Returns true when the private service this executor started has exited, for example
    /// after its idle timeout; the next request starts a new one. False while it runs, and when
    /// the executor uses a service it found.
    pub fn service_exited(&self) -> bool {
        self.current_connection().service_exited()
    }

    fn current_connection(&self) -> Connection {
        // Every critical section is a clone or an assignment, so a poisoned lock still holds a
        // whole value.
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Returns the lock that serialises builds of `tag`, creating it when no prepare holds one.
    fn build_lock(&self, tag: &str) -> Arc<tokio::sync::Mutex<()>> {
        // Every operation on the map is a single insert or retain, so a poisoned lock still
        // holds a consistent map.
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
impl Executor for PodmanExecutor {
    fn name(&self) -> &'static str {
        EXECUTOR
    }

    async fn ping(&self) -> Result<(), ExecutorError> {
        let connection = self.connection().await?;
        connection.ping().await
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

    /// Kills every process below the private Podman service, which during a build are its
    /// `RUN` steps: Podman does not stop a build whose client went away, but a killed step
    /// fails the build, which then removes its working container. Returns false on a socket
    /// the executor found, whose processes may belong to other users.
    fn stop_builds(&self) -> bool {
        match self.service_pid() {
            Some(pid) => {
                let killed = service::kill_descendants(pid);
                tracing::info!(
                    executor = EXECUTOR,
                    pid,
                    killed,
                    "stopped the builds of the private podman service"
                );
                true
            }
            None => false,
        }
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
        let config: PodmanConfig = toml::from_str("").expect("empty config parses");
        assert_eq!(config, PodmanConfig::default());
        assert_eq!(config.instance, "agentrun");
        assert_eq!(config.service_idle_secs, 300);
        assert_eq!(config.podman_binary, PathBuf::from("podman"));
        assert_eq!(config.build_timeout_secs, 600);
        assert!(config.init);
        assert_eq!(config.ulimits, Ulimits::default());
        assert_eq!(config.socket, None);
        assert_eq!(config.runtime, None);
        assert_eq!(config.network, None);
    }

    #[test]
    fn config_reads_every_field() {
        let config: PodmanConfig = toml::from_str(
            r#"
            socket = "unix:///run/podman/podman.sock"
            instance = "staging"
            runtime = "runc"
            network = "none"
            service_idle_secs = 0
            podman_binary = "/usr/bin/podman"
            build_timeout_secs = 30
            init = false

            [ulimits]
            nofile = 1024
            nproc = 512
            "#,
        )
        .expect("full config parses");
        assert_eq!(
            config.socket.as_deref(),
            Some("unix:///run/podman/podman.sock")
        );
        assert_eq!(config.instance, "staging");
        assert_eq!(config.runtime.as_deref(), Some("runc"));
        assert_eq!(config.network.as_deref(), Some("none"));
        assert_eq!(config.service_idle_secs, 0);
        assert_eq!(config.podman_binary, PathBuf::from("/usr/bin/podman"));
        assert_eq!(config.build_timeout_secs, 30);
        assert!(!config.init);
        assert_eq!(config.ulimits.nofile, Some(1024));
        assert_eq!(config.ulimits.nproc, Some(512));
    }

    #[test]
    fn config_reads_warm_pool() {
        let config: PodmanConfig = toml::from_str(
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

        let defaults = PodmanConfig::default();
        assert_eq!(defaults.warm_pool_size, 0);
        assert_eq!(defaults.warm_pool_idle_secs, 300);
        assert!(defaults.warm_pool_integrations.is_empty());
    }

    #[test]
    fn config_rejects_unknown_field() {
        let error = toml::from_str::<PodmanConfig>("sokcet = \"/x\"")
            .expect_err("a misspelt key must fail");
        assert!(
            error.to_string().contains("sokcet"),
            "error should name the unknown key: {error}"
        );
    }

    #[test]
    fn config_rejects_unknown_ulimit() {
        let error = toml::from_str::<PodmanConfig>("[ulimits]\nstack = 8192")
            .expect_err("an unsupported ulimit must fail");
        assert!(
            error.to_string().contains("stack"),
            "error should name the unknown key: {error}"
        );
    }
}
