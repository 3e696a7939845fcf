//! The error type every backend returns.

/// Why a backend could not prepare a package or run a job.
///
/// Agent misbehaviour (non-zero exit, no reply, timeout) is not an error: it is a
/// [`JobOutcome`](crate::JobOutcome). These variants are failures of the package or of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// The runtime could not be reached or is not installed.
    #[error("{executor} is unavailable at {address}: {reason}")]
    Unavailable {
        /// Backend name (`docker`, `podman`, `subprocess`).
        executor: &'static str,
        /// What was tried: a socket path, a URL or a list of both.
        address: String,
        /// Why it failed, with what to do about it.
        reason: String,
    },

    /// The backend was compiled out of this build.
    #[error(
        "the {executor} executor is not part of this build: rebuild with `--features {feature}`"
    )]
    NotCompiled {
        /// Backend name.
        executor: &'static str,
        /// Cargo feature that enables it.
        feature: &'static str,
    },

    /// The package cannot run on this backend, for example because the Dockerfile has no exec-form
    /// `ENTRYPOINT` that the subprocess backend can map to a command.
    #[error("invalid package {}: {reason}", path.display())]
    InvalidPackage {
        /// Package folder.
        path: std::path::PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },

    /// An image build failed.
    #[error("building image {image} failed{}: {message}\n{log_tail}",
        step.as_deref().map(|step| format!(" at step `{step}`")).unwrap_or_default())]
    BuildFailed {
        /// Image tag that was being built.
        image: String,
        /// The Dockerfile instruction that failed, when the build log names it.
        step: Option<String>,
        /// The runtime's error message.
        message: String,
        /// Last lines of the build log.
        log_tail: String,
    },

    /// The runtime returned an error while running a job or preparing a package.
    #[error("{executor}: {operation} failed: {message}")]
    Runtime {
        /// Backend name.
        executor: &'static str,
        /// The step that failed, such as `create container` or `attach`.
        operation: &'static str,
        /// The runtime's error message.
        message: String,
    },

    /// An I/O operation of the engine itself failed.
    #[error("{operation} failed")]
    Io {
        /// What the engine was doing, with the path or resource involved.
        operation: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ExecutorError {
    /// Builds an [`ExecutorError::Io`] from a description of the operation and its error.
    pub fn io(operation: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            operation: operation.into(),
            source,
        }
    }

    /// Returns true when the error means the runtime is not there at all, as opposed to a
    /// failure of one operation.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::NotCompiled { .. })
    }
}
