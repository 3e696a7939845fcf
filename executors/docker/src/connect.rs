//! Connecting to the engine, and turning bollard errors into [`ExecutorError`]s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentrun_executor::{error_chain, ExecutorError};
use bollard::errors::Error as BollardError;
use bollard::Docker;
use tracing::debug;

use crate::{DockerConfig, DockerExecutor, EXECUTOR};

/// Limit on version negotiation and ping when connecting. A reachable engine responds to both in
/// milliseconds, and the limit keeps an address that accepts connections but never responds
/// from hanging start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What an operator can do about an engine that does not respond.
const UNAVAILABLE_HINT: &str =
    "start dockerd, or set DOCKER_HOST (or `host` in the Docker configuration) to a running engine";

impl DockerExecutor {
    /// Connects to the engine that `config` names, negotiates the API version and pings it.
    ///
    /// Version negotiation lets a client built for a newer API talk to an older daemon, such as
    /// dockerd 20.10 (API 1.41).
    ///
    /// # Errors
    ///
    /// [`ExecutorError::Unavailable`] naming the address tried when the address is malformed,
    /// the socket does not exist, or the engine does not respond within 10 seconds.
    pub async fn connect(config: DockerConfig) -> Result<Self, ExecutorError> {
        let host = config.resolved_host();
        let started = Instant::now();

        let docker =
            Docker::connect_with_host(&host).map_err(|error| unavailable(&host, &error))?;
        let docker = match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(docker)) => docker,
            Ok(Err(error)) => return Err(unavailable(&host, &error)),
            Err(_) => return Err(not_answering(&host)),
        };
        ping(&docker, &host).await?;

        let version = docker.client_version();
        debug!(
            executor = EXECUTOR,
            host = %host,
            api_version = %version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "connected to the Docker engine"
        );
        let pool = crate::pool::WarmPool::new(&docker, &host, &config);
        Ok(Self {
            docker,
            config,
            host,
            build_locks: Mutex::new(HashMap::new()),
            pool,
        })
    }

    /// Turns an error of one engine request into an [`ExecutorError`]: a connection failure
    /// becomes [`ExecutorError::Unavailable`], anything else [`ExecutorError::Runtime`] for
    /// `operation`.
    pub(crate) fn engine_error(
        &self,
        operation: &'static str,
        error: BollardError,
    ) -> ExecutorError {
        engine_error(&self.host, operation, error)
    }
}

/// Checks that the engine answers a ping within [`CONNECT_TIMEOUT`].
pub(crate) async fn ping(docker: &Docker, host: &str) -> Result<(), ExecutorError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, docker.ping()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(unavailable(host, &error)),
        Err(_) => Err(not_answering(host)),
    }
}

/// See [`DockerExecutor::engine_error`].
pub(crate) fn engine_error(
    host: &str,
    operation: &'static str,
    error: BollardError,
) -> ExecutorError {
    if is_connection_error(&error) {
        return unavailable(host, &error);
    }
    let message = match error {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => format!("{} (HTTP {status_code})", message.trim_end()),
        other => error_chain(&other),
    };
    ExecutorError::Runtime {
        executor: EXECUTOR,
        operation,
        message,
    }
}

/// Returns the HTTP status of an error response from the engine.
pub(crate) fn status_code(error: &BollardError) -> Option<u16> {
    match error {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Returns true for errors that mean the engine could not be reached at all.
fn is_connection_error(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::SocketNotFoundError(_)
            | BollardError::HyperLegacyError { .. }
            | BollardError::IOError { .. }
            | BollardError::UnsupportedURISchemeError { .. }
            | BollardError::InvalidURIError { .. }
    )
}

fn unavailable(host: &str, error: &BollardError) -> ExecutorError {
    let reason = match error {
        BollardError::SocketNotFoundError(path) => format!("socket {path} does not exist"),
        BollardError::UnsupportedURISchemeError { uri } => format!(
            "address `{uri}` is not supported: use unix:///path, tcp://host:port or http://host:port"
        ),
        other => error_chain(other),
    };
    ExecutorError::Unavailable {
        executor: EXECUTOR,
        address: host.to_owned(),
        reason: format!("{reason}; {UNAVAILABLE_HINT}"),
    }
}

fn not_answering(host: &str) -> ExecutorError {
    ExecutorError::Unavailable {
        executor: EXECUTOR,
        address: host.to_owned(),
        reason: format!(
            "no answer within {} s; {UNAVAILABLE_HINT}",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_keeps_status_and_message() {
        let error = engine_error(
            "unix:///x.sock",
            "create container",
            BollardError::DockerResponseServerError {
                status_code: 404,
                message: "No such image: agentrun/echo:1\n".to_owned(),
            },
        );
        match error {
            ExecutorError::Runtime {
                executor,
                operation,
                message,
            } => {
                assert_eq!(executor, "docker");
                assert_eq!(operation, "create container");
                assert_eq!(message, "No such image: agentrun/echo:1 (HTTP 404)");
            }
            other => panic!("expected a runtime error, got {other:?}"),
        }
    }

    #[test]
    fn missing_socket_is_unavailable() {
        let error = engine_error(
            "unix:///nowhere/docker.sock",
            "ping",
            BollardError::SocketNotFoundError("/nowhere/docker.sock".to_owned()),
        );
        match error {
            ExecutorError::Unavailable {
                address, reason, ..
            } => {
                assert_eq!(address, "unix:///nowhere/docker.sock");
                assert!(
                    reason.starts_with("socket /nowhere/docker.sock does not exist"),
                    "reason: {reason}"
                );
                assert!(reason.contains("DOCKER_HOST"), "reason: {reason}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn status_code_of_server_error() {
        let error = BollardError::DockerResponseServerError {
            status_code: 409,
            message: String::new(),
        };
        assert_eq!(status_code(&error), Some(409));
        assert_eq!(status_code(&BollardError::RequestTimeoutError), None);
    }
}
