//! The service's persistent store: integrations and jobs in an embedded SQLite database.
//!
//! # Durability
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a transaction is on disk when its
//! commit returns, also across `kill -9` and power loss. Every write is one transaction, and
//! callers acknowledge a request only after the write returned. The job queue lives in the
//! `jobs` table itself (state `queued`), so a queued job survives a restart without any
//! in-memory copy.
//!
//! # Threads
//!
//! One dedicated thread owns the connection and runs every operation in order, so async tasks
//! never block on SQLite. [`Store`] is a cheap handle: each call sends a closure to that thread
//! and awaits its result. The thread ends when the last handle is dropped.
//!
//! # Secrets
//!
//! Env values are sealed with [`EnvCipher`] before they reach the database, and a key check
//! value in the `meta` table makes a wrong key fail at [`Store::open`] instead of at the first
//! job.

mod integrations;
mod jobs;
mod schema;
pub mod secrets;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use integrations::ManifestCache;
pub use integrations::{BuildState, HealthRecord, IntegrationRecord, NewIntegration};
pub use jobs::{ClaimLimits, JobFilter, JobFinish, JobRecord, JobState, NewJob, StateCount};
pub use secrets::{EnvCipher, SecretsError};

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite returned an error.
    #[error("database {operation} failed")]
    Sqlite {
        /// The operation, such as `inserting a job`.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },

    /// The database file could not be opened or prepared.
    #[error("opening the database {} failed", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },

    /// The database was written by a newer agentrun.
    #[error("the database {} has schema version {found}, newer than {supported} that this agentrun supports: upgrade agentrun", path.display())]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Version found in the file.
        found: i64,
        /// Highest version this build supports.
        supported: i64,
    },

    /// The secrets key does not open what the database holds.
    #[error("the secrets key does not match the one the database {} was written with: configure the original key (secrets.key_file or the agentrun-key credential)", path.display())]
    WrongKey {
        /// The database file.
        path: PathBuf,
    },

    /// An integration with the same name (compared case-insensitively) exists.
    #[error("an integration named {existing:?} exists; names are compared case-insensitively, so choose another name or replace its package")]
    DuplicateName {
        /// The existing integration's name.
        existing: String,
    },

    /// The queue contains its maximum number of jobs.
    #[error(
        "the job queue is full ({max_queued} jobs queued): retry later or raise jobs.max_queued"
    )]
    QueueFull {
        /// The configured maximum.
        max_queued: u64,
    },

    /// A stored value could not be decoded.
    #[error("stored {what} of {id} is damaged: {message}")]
    Corrupt {
        /// The value, such as `manifest`.
        what: &'static str,
        /// The row's id.
        id: String,
        /// The decoder's message.
        message: String,
    },

    /// Stored env values could not be decrypted.
    #[error(transparent)]
    Secrets(#[from] SecretsError),

    /// The store thread could not be started.
    #[error("starting the store thread failed")]
    Thread {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The store thread has stopped, so the service is shutting down or crashed.
    #[error("the store thread has stopped")]
    Closed,
}

impl StoreError {
    fn sqlite(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> Self {
        move |source| Self::Sqlite { operation, source }
    }
}

type Operation = Box<dyn FnOnce(&mut Connection) + Send>;

/// State that an operation on the store thread uses besides the connection.
struct Codecs {
    /// Seals and opens env values.
    cipher: EnvCipher,
    /// Manifests already parsed, so that reading an integration does not validate its
    /// manifest (and compile its regexes) again.
    manifests: Arc<ManifestCache>,
}

/// A handle to the store. Cloning it is cheap; all clones share one database thread.
#[derive(Clone, Debug)]
pub struct Store {
    sender: mpsc::Sender<Operation>,
    cipher: EnvCipher,
    manifests: Arc<ManifestCache>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating when missing) the database at `path`, migrates its schema, checks the
    /// secrets key and starts the store thread.
    ///
    /// Blocks on file I/O, so async callers run it on a blocking thread.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`], [`StoreError::NewerSchema`] and [`StoreError::WrongKey`].
    pub fn open(path: &Path, cipher: EnvCipher) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut connection = Connection::open(path).map_err(open_error)?;
        schema::configure(&connection).map_err(open_error)?;
        schema::migrate(&mut connection, path)?;
        schema::check_key(&connection, &cipher, path)?;

        let (sender, receiver) = mpsc::channel::<Operation>();
        std::thread::Builder::new()
            .name("agentrun-store".to_owned())
            .spawn(move || {
                while let Ok(operation) = receiver.recv() {
                    operation(&mut connection);
                }
            })
            .map_err(|source| StoreError::Thread { source })?;

        Ok(Self {
            sender,
            cipher,
            manifests: Arc::default(),
            path: path.to_owned(),
        })
    }

    /// Returns the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the cipher for env values.
    pub fn cipher(&self) -> &EnvCipher {
        &self.cipher
    }

    /// Runs `operation` on the store thread and returns its result.
    async fn call<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Codecs) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, receive) = tokio::sync::oneshot::channel();
        let codecs = Codecs {
            cipher: self.cipher.clone(),
            manifests: Arc::clone(&self.manifests),
        };
        self.sender
            .send(Box::new(move |connection: &mut Connection| {
                let _ = reply.send(operation(connection, &codecs));
            }))
            .map_err(|_| StoreError::Closed)?;
        receive.await.map_err(|_| StoreError::Closed)?
    }
}

/// Returns the wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
