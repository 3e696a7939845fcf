//! Service mode (`agentrun serve`): the HTTP API, the persistent store, the worker pool and
//! health checks, run as one long-lived process under systemd.
//!
//! # Lifecycle
//!
//! 1. Start-up: create the data folders and take the data folder's lock (a second service on
//!    the same folder stops here), load the secrets key, open the store, connect the executor,
//!    bind the listeners, then send `READY=1` to the service manager.
//! 2. Recovery, in the background while the API already accepts requests: each job that the
//!    store records as `running` is handed to [`Executor::recover`]. A recovered outcome
//!    completes the job through the dispatcher's reply parsing. A job whose agent cannot be
//!    recovered becomes `interrupted` and is never run again, because agents have side
//!    effects.
//!    Then [`Executor::sweep`] removes containers that no job owns, and only then does the worker
//!    pool start, so the sweep cannot remove a container of a new job.
//! 3. Running: the pool runs queued jobs; health checks run on an interval.
//! 4. Shutdown on SIGTERM or SIGINT: send `STOPPING=1`, stop claiming jobs, let running jobs
//!    finish for `shutdown_grace_secs` and cancel the rest (recorded as `cancelled`, with a
//!    message saying that the service stopped). During this drain the API goes on serving
//!    reads, `/healthz` responds with 503 `{"status":"stopping"}`, and requests that would start a
//!    job or change an integration get 503. Then the listeners close, the socket file is
//!    removed and the data folder's lock is released.
//!
//! [`Executor::recover`]: agentrun_executor::Executor::recover
//! [`Executor::sweep`]: agentrun_executor::Executor::sweep

pub mod api;
mod events;
mod health;
mod integrations;
mod keys;
mod lock;
mod logging;
mod metrics;
mod notify;
mod pool;
mod recovery;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentrun_executor::{CancellationToken, Executor, ExecutorError};
use tokio_util::task::TaskTracker;

pub use keys::CREDENTIAL_NAME;
pub use logging::init_logging;

use crate::config::{Config, ConfigError};
use crate::dispatcher::{DispatchDefaults, Dispatcher};
use crate::protocol::JobIdGenerator;
use crate::store::{SecretsError, Store, StoreError};

/// Maximum time the service waits for cancelled jobs to record their end, after the grace
/// period, before it exits anyway.
const CANCEL_WAIT: Duration = Duration::from_secs(15);

/// A failure to start the service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A folder of the data directory could not be created or cleaned.
    #[error("preparing the data folder {} failed: check that the service user may write there", path.display())]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Another process holds the data folder's lock, so another service uses the folder.
    #[error(
        "the data folder {} is in use by another agentrun service{}: stop that service, or give this one another data_dir",
        data_dir.display(),
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    DataDirLocked {
        /// The data folder.
        data_dir: PathBuf,
        /// The pid of the service that holds the lock, when its lock file names one.
        pid: Option<u32>,
    },

    /// The secrets key could not be read or created.
    #[error("{operation} {} failed", path.display())]
    KeyFile {
        /// The attempted operation.
        operation: &'static str,
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The secrets key has the wrong format.
    #[error("invalid secrets key in {}", path.display())]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// The format problem.
        #[source]
        source: SecretsError,
    },

    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// The executor is unavailable.
    #[error(transparent)]
    Executor(#[from] ExecutorError),

    /// A listener could not be bound.
    #[error("listening on {address} failed")]
    Listen {
        /// The socket path or TCP address.
        address: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `listen.unix` names an existing file that is not a socket, which binding would replace.
    #[error("listen.unix names {}, which exists and is not a socket: remove that file or set listen.unix to another path", path.display())]
    NotASocket {
        /// The path of `listen.unix`.
        path: PathBuf,
    },

    /// A signal handler could not be installed.
    #[error("installing the signal handlers failed")]
    Signals(#[source] std::io::Error),
}

/// State shared by the API handlers, the worker pool and the background tasks.
#[derive(Debug)]
pub struct Service {
    config: Config,
    store: Store,
    dispatcher: Dispatcher,
    pool: pool::Pool,
    events: events::Events,
    metrics: metrics::Metrics,
    /// Serialises changes to integrations and their package folders.
    integration_lock: tokio::sync::Mutex<()>,
    /// Bearer token of TCP clients.
    token: Option<String>,
    /// Tracks spawned job, build and health tasks.
    tasks: TaskTracker,
    /// Cancelled when the service begins to stop.
    stopping: CancellationToken,
}

impl Service {
    /// Returns the configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Returns the store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Returns the dispatcher.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    fn executor(&self) -> &Arc<dyn Executor> {
        self.dispatcher.executor()
    }
}

/// Runs the service until SIGTERM or SIGINT. See the [module documentation](self).
///
/// # Errors
///
/// [`ServiceError`] when start-up fails. After start-up, failures are logged and the service
/// goes on.
pub async fn serve(config: Config) -> Result<(), ServiceError> {
    // Data folders and the secrets key.
    let _lock = prepare_data_dir(&config)?;
    let cipher = keys::load_key(&config)?;

    // Store, executor and dispatcher.
    let database = config.database_path();
    let store = tokio::task::spawn_blocking(move || Store::open(&database, cipher))
        .await
        .map_err(|error| ServiceError::DataDir {
            path: config.database_path(),
            source: std::io::Error::other(error),
        })??;
    // Subprocess job records let the next start stop agents that a SIGKILL left running.
    let mut backends = config.backends();
    backends
        .subprocess
        .state_dir
        .get_or_insert_with(|| config.data_dir.join("run"));
    let executor = crate::backends::connect(config.executor, &backends).await?;
    let job_ids = Arc::new(JobIdGenerator::starting_after(store.max_job_id().await?));
    let defaults = DispatchDefaults {
        timeout: config.jobs.timeout(),
        max_stdout_bytes: config.jobs.max_stdout_bytes,
        stderr_tail_bytes: config.jobs.stderr_tail_bytes,
        stderr_tail_lines: config.jobs.stderr_tail_lines,
        max_message_bytes: config.jobs.max_message_bytes,
        limits: config.limits.clone(),
    };
    let dispatcher = Dispatcher::with_defaults(executor, defaults).with_job_ids(job_ids);
    let token = config.token()?;

    let service = Arc::new(Service {
        config,
        store,
        dispatcher,
        pool: pool::Pool::default(),
        events: events::Events::default(),
        metrics: metrics::Metrics::default(),
        integration_lock: tokio::sync::Mutex::new(()),
        token,
        tasks: TaskTracker::new(),
        stopping: CancellationToken::new(),
    });

    // Listeners, then readiness.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServiceError::Signals)?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(ServiceError::Signals)?;
    integrations::remove_unused_packages(&service).await;
    let servers = api::listen(&service).await?;
    tracing::info!(
        executor = service.executor().name(),
        data_dir = %service.config.data_dir.display(),
        unix = %service.config.listen.unix.display(),
        tcp = service.config.listen.tcp.map(tracing::field::display),
        "agentrun service ready"
    );
    notify::ready();

    // Recovery, then the pool and health checks.
    let startup = {
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            recovery::recover(&service).await;
            if service.stopping.is_cancelled() {
                return;
            }
            integrations::resume_builds(&service).await;
            tokio::spawn(pool::schedule(Arc::clone(&service)));
            tokio::spawn(health::run_periodic(Arc::clone(&service)));
        })
    };

    // Wait for a signal.
    let signal = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    shutdown(&service, servers, startup, signal).await;
    Ok(())
}

/// Stops the service: see step 4 of the [module documentation](self).
async fn shutdown(
    service: &Arc<Service>,
    servers: api::Servers,
    startup: tokio::task::JoinHandle<()>,
    signal: &str,
) {
    let grace = Duration::from_secs(service.config.shutdown_grace_secs);
    let running = service.pool.running_count();
    tracing::info!(
        signal,
        running_jobs = running,
        grace_secs = grace.as_secs(),
        "stopping: new jobs and changes are rejected; reads are served until running jobs end"
    );
    notify::stopping();
    service.stopping.cancel();
    service.pool.stop();
    if !startup.is_finished() {
        // Recovery waits on the runtime; what it has not finished stays `running` in the store
        // and is recovered at the next start.
        startup.abort();
    }

    // Let running jobs finish, then cancel the rest.
    if !service.pool.wait_idle(None, grace).await {
        let cancelled = service.pool.cancel_all(pool::CancelReason::Shutdown);
        tracing::warn!(
            cancelled_jobs = cancelled,
            "the shutdown grace period ended; cancelling the jobs still running"
        );
        if !service.pool.wait_idle(None, CANCEL_WAIT).await {
            tracing::error!(
                "cancelled jobs did not end in time; they stay running in the store and are \
                 recovered at the next start"
            );
        }
    }

    // The listeners stay open during the drain, so that clients can follow their jobs.
    servers.stop_accepting();
    servers.finish(Duration::from_secs(5)).await;
    service.tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), service.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not end in time");
    }
    tracing::info!("agentrun service stopped");
}

/// Creates the data folder (mode 0700 when created here), takes its lock, and creates
/// `packages/` and an empty `tmp/`. The lock is held until the returned value is dropped.
fn prepare_data_dir(config: &Config) -> Result<lock::DataDirLock, ServiceError> {
    let data_error = |path: &Path| {
        let path = path.to_owned();
        move |source| ServiceError::DataDir { path, source }
    };
    let data = &config.data_dir;
    if !data.exists() {
        std::fs::create_dir_all(data).map_err(data_error(data))?;
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
            .map_err(data_error(data))?;
    }
    // Before anything in the folder changes: another service may be using it.
    let lock = lock::lock_data_dir(data)?;
    let packages = config.packages_dir();
    std::fs::create_dir_all(&packages).map_err(data_error(&packages))?;

    // Uploads that a previous process did not finish are worthless now.
    let temp = config.temp_dir();
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(data_error(&temp))?;
    }
    std::fs::create_dir_all(&temp).map_err(data_error(&temp))?;
    Ok(lock)
}
