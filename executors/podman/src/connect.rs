//! Finding or starting a libpod API socket, and turning API errors into [`ExecutorError`]s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentrun_executor::{error_chain, ExecutorError};
use podman_api::Podman;
use tracing::{debug, info, warn};

use crate::libpod::CallError;
use crate::service::{sweep_stale_dirs, ServiceCommand, ServiceProcess};
use crate::{PodmanConfig, PodmanExecutor, EXECUTOR};

/// Limit on one ping while probing a socket. A live service responds in milliseconds, and the
/// limit keeps a socket that accepts connections but never responds from hanging start-up.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Limit on the start of a private service, from spawn until its socket responds.
const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between readiness probes of a starting service.
const SERVICE_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Source name of the configured socket, in logs and error messages.
const CONFIGURED_SOURCE: &str = "configured socket";

/// Standard socket of a rootful Podman service.
const ROOTFUL_SOCKET: &str = "/run/podman/podman.sock";

/// Advice for an operator whose Podman cannot be reached.
const UNAVAILABLE_HINT: &str =
    "install Podman (or set `podman_binary` in the Podman configuration \
     to its path), or point `socket` or CONTAINER_HOST at a running `podman system service`";

/// A libpod socket and the client for it.
///
/// Clones share the private service, when there is one: it stops only after the last clone is
/// dropped, so a cleanup still running after the executor is gone can finish.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    pub(crate) podman: Podman,
    pub(crate) socket: PathBuf,
    pub(crate) service: Option<Arc<ServiceProcess>>,
}

impl Connection {
    pub(crate) fn new(socket: PathBuf, service: Option<Arc<ServiceProcess>>) -> Self {
        Self {
            podman: Podman::unix(&socket),
            socket,
            service,
        }
    }

    /// Returns true when this connection's private service has exited.
    pub(crate) fn service_exited(&self) -> bool {
        self.service
            .as_ref()
            .is_some_and(|service| service.has_exited())
    }

    /// Checks that the service responds to a ping within [`PING_TIMEOUT`].
    pub(crate) async fn ping(&self) -> Result<(), ExecutorError> {
        match tokio::time::timeout(PING_TIMEOUT, self.podman.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(self.unavailable(error_chain(&error))),
            Err(_) => {
                Err(self.unavailable(format!("no response within {} s", PING_TIMEOUT.as_secs())))
            }
        }
    }

    /// Turns an error of a `podman-api` request into an [`ExecutorError`]: a connection failure
    /// becomes [`ExecutorError::Unavailable`], anything else [`ExecutorError::Runtime`] for
    /// `operation`.
    pub(crate) fn api_error(
        &self,
        operation: &'static str,
        error: podman_api::Error,
    ) -> ExecutorError {
        if is_connection_error(&error) {
            return self.unavailable(error_chain(&error));
        }
        let message = match error {
            podman_api::Error::Fault { code, message } => {
                format!("{} (HTTP {})", message.trim_end(), code.as_u16())
            }
            other => error_chain(&other),
        };
        runtime_error(operation, message)
    }

    /// Turns an error of a plain libpod request into an [`ExecutorError`], like
    /// [`Connection::api_error`].
    pub(crate) fn call_error(&self, operation: &'static str, error: CallError) -> ExecutorError {
        match error {
            CallError::Io(error) => self.unavailable(error.to_string()),
            CallError::Rejected(message) => runtime_error(operation, message),
        }
    }

    fn unavailable(&self, reason: String) -> ExecutorError {
        let mut reason = reason;
        if let Some(service) = &self.service {
            if service.has_exited() {
                reason.push_str(&format!(
                    "; the private podman service (pid {}) has exited",
                    service.pid()
                ));
                let log = service.log_tail();
                if !log.is_empty() {
                    reason.push_str(&format!(", its log ends with: {log}"));
                }
            }
        }
        ExecutorError::Unavailable {
            executor: EXECUTOR,
            address: self.socket.display().to_string(),
            reason,
        }
    }
}

/// Returns an [`ExecutorError::Runtime`] of this backend.
pub(crate) fn runtime_error(operation: &'static str, message: String) -> ExecutorError {
    ExecutorError::Runtime {
        executor: EXECUTOR,
        operation,
        message,
    }
}

/// Returns true when a `podman-api` error is a 404 (no such container or image).
pub(crate) fn is_not_found(error: &podman_api::Error) -> bool {
    matches!(error, podman_api::Error::Fault { code, .. } if code.as_u16() == 404)
}

impl PodmanExecutor {
    /// Connects to the first libpod socket that responds, or starts a private service.
    ///
    /// The order is: the configured `socket`, `CONTAINER_HOST` (`unix://` only), then
    /// `/run/podman/podman.sock` when running as root or
    /// `$XDG_RUNTIME_DIR/podman/podman.sock` otherwise. When none responds to a ping, it starts
    /// `podman [--runtime R] system service --time <idle> unix://<socket>` on a socket in a
    /// private directory and waits until it responds. Before any of that, it removes the
    /// private directories that killed engines left behind.
    ///
    /// # Errors
    ///
    /// [`ExecutorError::Unavailable`] naming every socket tried and why the service could not
    /// be started, for example because `podman` is not installed.
    pub async fn connect(config: PodmanConfig) -> Result<Self, ExecutorError> {
        sweep_service_dirs().await;
        let mut tried = Vec::new();
        let candidates = candidates(
            config.socket.as_deref(),
            std::env::var("CONTAINER_HOST").ok().as_deref(),
            nix::unistd::geteuid().is_root(),
            std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .as_deref(),
        )?;

        for candidate in candidates {
            match candidate {
                Candidate::Skipped { source, reason } => tried.push(format!("{source}: {reason}")),
                Candidate::Socket { path, source } => match probe(&path, source).await {
                    Ok(connection) => {
                        if let Some(runtime) = &config.runtime {
                            warn!(
                                executor = EXECUTOR,
                                socket = %path.display(),
                                runtime = %runtime,
                                "`runtime` applies only to a private service; this service uses its own default runtime"
                            );
                        }
                        return Ok(Self::with_connection(config, connection));
                    }
                    Err(reason) => tried.push(format!("{} ({source}): {reason}", path.display())),
                },
            }
        }

        let connection = start_service(&config, &mut tried).await?;
        Ok(Self::with_connection(config, connection))
    }

    /// Starts a private `podman system service` and connects to it, without looking for a
    /// running one. For callers that need an isolated service, such as tests. Like
    /// [`PodmanExecutor::connect`], it first removes the private directories that killed
    /// engines left behind.
    ///
    /// # Errors
    ///
    /// [`ExecutorError::Unavailable`] when the service could not be started.
    pub async fn with_private_service(config: PodmanConfig) -> Result<Self, ExecutorError> {
        sweep_service_dirs().await;
        let connection = start_service(&config, &mut Vec::new()).await?;
        Ok(Self::with_connection(config, connection))
    }

    fn with_connection(config: PodmanConfig, connection: Connection) -> Self {
        let pool = crate::pool::WarmPool::new(&config);
        Self {
            config,
            connection: Mutex::new(connection),
            restart: tokio::sync::Mutex::new(()),
            build_locks: Mutex::new(HashMap::new()),
            pool,
        }
    }

    /// Returns the connection to use, starting a new private service when the executor's own
    /// is gone (after its idle timeout, or a crash).
    ///
    /// Podman removes its socket when the idle timeout fires, before the process exits, so the
    /// process alone cannot tell whether a request would reach it. A private service therefore
    /// counts as gone when its socket file is missing, and one that has been idle for half its
    /// timeout or longer gets a ping first. A failed connect means that the request never
    /// reached the service, so a new service is started and its connection returned instead.
    /// A successful ping restarts Podman's idle timer, which leaves the caller the whole
    /// timeout.
    pub(crate) async fn connection(&self) -> Result<Connection, ExecutorError> {
        let current = self.current_connection();
        let Some(service) = current.service.clone() else {
            return Ok(current);
        };
        if !service.has_exited() && current.service_state(&service).await? == ServiceState::Ready {
            service.mark_used();
            return Ok(current);
        }

        drop(current);

        let _restart = self.restart.lock().await;
        let latest = self.current_connection();
        let restarted = latest
            .service
            .as_ref()
            .is_some_and(|latest| !Arc::ptr_eq(latest, &service));
        if restarted {
            // A concurrent caller started the new service while this one waited for the lock.
            return Ok(latest);
        }
        drop(latest);
        warn!(
            executor = EXECUTOR,
            pid = service.pid(),
            exited = service.has_exited(),
            "the private podman service is gone; starting a new one"
        );
        let fresh = start_service(&self.config, &mut Vec::new()).await?;
        let replaced = std::mem::replace(
            &mut *self
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            fresh.clone(),
        );
        // The old service may still be shutting down, and dropping its last handle waits for
        // its exit, which must not block an async worker thread. Jobs that still hold a handle
        // drop theirs when they end.
        drop(service);
        tokio::task::spawn_blocking(move || drop(replaced));
        Ok(fresh)
    }
}

/// Whether a private service that has not exited still accepts requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServiceState {
    /// It responded to a ping, or was used too recently for its idle timeout to have fired.
    Ready,
    /// Its socket is missing or refuses connections: the service is shutting down.
    Gone,
}

impl Connection {
    /// Finds out whether the private `service` behind this connection still accepts requests,
    /// pinging it only when its idle timeout may have fired.
    ///
    /// # Errors
    ///
    /// [`ExecutorError::Unavailable`] when the ping fails for another reason than a refused or
    /// missing socket, such as no response within [`PING_TIMEOUT`].
    async fn service_state(&self, service: &ServiceProcess) -> Result<ServiceState, ExecutorError> {
        if !self.socket.exists() {
            return Ok(ServiceState::Gone);
        }
        if !service.may_have_idled_out() {
            return Ok(ServiceState::Ready);
        }
        match tokio::time::timeout(PING_TIMEOUT, self.podman.ping()).await {
            Ok(Ok(_)) => Ok(ServiceState::Ready),
            Ok(Err(error)) if is_socket_gone(&error) => {
                debug!(socket = %self.socket.display(), error = %error_chain(&error), "the private podman service's socket is gone");
                Ok(ServiceState::Gone)
            }
            Ok(Err(error)) => Err(self.unavailable(error_chain(&error))),
            Err(_) => {
                Err(self.unavailable(format!("no response within {} s", PING_TIMEOUT.as_secs())))
            }
        }
    }
}

/// Returns true when a request failed to connect because the socket file is missing or nothing
/// listens on it. Such a request never reached the service, so it is safe to send again.
fn is_socket_gone(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(io_error) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io_error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) {
                return true;
            }
        }
        current = cause.source();
    }
    false
}

/// A place to look for a libpod socket.
#[derive(Debug, PartialEq, Eq)]
enum Candidate {
    /// A socket path to ping, and where it came from.
    Socket { path: PathBuf, source: &'static str },
    /// A setting that names no usable socket, and why.
    Skipped {
        source: &'static str,
        reason: String,
    },
}

/// Lists the sockets to try, in order. See [`PodmanExecutor::connect`].
///
/// # Errors
///
/// [`ExecutorError::Unavailable`] when the configured socket is not a path or `unix://` URL.
fn candidates(
    configured: Option<&str>,
    container_host: Option<&str>,
    is_root: bool,
    xdg_runtime_dir: Option<&Path>,
) -> Result<Vec<Candidate>, ExecutorError> {
    let mut candidates = Vec::new();

    if let Some(socket) = configured {
        let path = socket_path(socket).ok_or_else(|| ExecutorError::Unavailable {
            executor: EXECUTOR,
            address: socket.to_owned(),
            reason: "`socket` in the Podman configuration must be a path or a unix:// URL"
                .to_owned(),
        })?;
        candidates.push(Candidate::Socket {
            path,
            source: CONFIGURED_SOURCE,
        });
    }

    match container_host {
        Some(host) if !host.is_empty() => match socket_path(host) {
            Some(path) => candidates.push(Candidate::Socket {
                path,
                source: "CONTAINER_HOST",
            }),
            None => candidates.push(Candidate::Skipped {
                source: "CONTAINER_HOST",
                reason: format!(
                    "`{host}` is not a unix:// address, which is all this backend supports"
                ),
            }),
        },
        _ => {}
    }

    if is_root {
        candidates.push(Candidate::Socket {
            path: PathBuf::from(ROOTFUL_SOCKET),
            source: "rootful default",
        });
    } else {
        match xdg_runtime_dir {
            Some(dir) if !dir.as_os_str().is_empty() => candidates.push(Candidate::Socket {
                path: dir.join("podman/podman.sock"),
                source: "rootless default",
            }),
            _ => candidates.push(Candidate::Skipped {
                source: "rootless default",
                reason: "XDG_RUNTIME_DIR is not set".to_owned(),
            }),
        }
    }
    Ok(candidates)
}

/// Pings the socket at `path` and returns a connection to it, or why it did not respond.
async fn probe(path: &Path, source: &'static str) -> Result<Connection, String> {
    let connection = Connection::new(path.to_path_buf(), None);
    match connection.ping().await {
        Ok(()) => {
            info!(
                executor = EXECUTOR,
                socket = %path.display(),
                source,
                "connected to a podman service"
            );
            Ok(connection)
        }
        Err(error) => {
            let reason = match error {
                ExecutorError::Unavailable { reason, .. } => reason,
                other => other.to_string(),
            };
            if source == CONFIGURED_SOURCE {
                warn!(
                    socket = %path.display(),
                    %reason,
                    "the configured podman socket did not respond to a ping; trying the next one"
                );
            } else {
                debug!(socket = %path.display(), source, %reason, "socket did not respond to a ping");
            }
            Err(reason)
        }
    }
}

/// Returns the path of a `unix://` URL or a plain absolute or relative path, `None` for any
/// other scheme.
fn socket_path(address: &str) -> Option<PathBuf> {
    if let Some(path) = address.strip_prefix("unix://") {
        return (!path.is_empty()).then(|| PathBuf::from(path));
    }
    if address.contains("://") || address.is_empty() {
        return None;
    }
    Some(PathBuf::from(address))
}

/// Removes the private service directories that killed engines left in the temporary
/// directory, where every private service gets its own.
async fn sweep_service_dirs() {
    let parent = std::env::temp_dir();
    if let Err(error) = tokio::task::spawn_blocking(move || sweep_stale_dirs(&parent)).await {
        debug!(%error, "sweeping private podman service directories failed");
    }
}

/// Starts a private service and waits until it responds. `tried` lists the sockets already
/// tried, for the error message.
async fn start_service(
    config: &PodmanConfig,
    tried: &mut Vec<String>,
) -> Result<Connection, ExecutorError> {
    let command = ServiceCommand {
        binary: config.podman_binary.clone(),
        runtime: config.runtime.clone(),
        idle_secs: config.service_idle_secs,
    };
    let started = Instant::now();
    let service = match ServiceProcess::start(&command) {
        Ok(service) => Arc::new(service),
        Err(error) => {
            let reason = if error.kind() == std::io::ErrorKind::NotFound {
                format!("`{}` was not found", command.binary.display())
            } else {
                format!(
                    "`{}` could not be started: {error}",
                    command.binary.display()
                )
            };
            tried.push(format!("private service: {reason}"));
            return Err(unavailable_everywhere(tried));
        }
    };
    let connection = Connection::new(service.socket().to_path_buf(), Some(Arc::clone(&service)));

    // Wait until the socket responds, the process exits or the start limit passes.
    loop {
        if service.has_exited() {
            let log = service.log_tail();
            tried.push(format!(
                "private service `{}`: exited before responding{}",
                command.display(service.socket()),
                if log.is_empty() {
                    String::new()
                } else {
                    format!(", its log ends with: {log}")
                }
            ));
            return Err(unavailable_everywhere(tried));
        }
        if let Ok(Ok(_)) =
            tokio::time::timeout(SERVICE_POLL_INTERVAL * 10, connection.podman.ping()).await
        {
            break;
        }
        if started.elapsed() > SERVICE_START_TIMEOUT {
            tried.push(format!(
                "private service `{}`: no response within {} s",
                command.display(service.socket()),
                SERVICE_START_TIMEOUT.as_secs()
            ));
            return Err(unavailable_everywhere(tried));
        }
        tokio::time::sleep(SERVICE_POLL_INTERVAL).await;
    }

    debug!(
        executor = EXECUTOR,
        pid = service.pid(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "private podman service responds"
    );
    Ok(connection)
}

fn unavailable_everywhere(tried: &[String]) -> ExecutorError {
    ExecutorError::Unavailable {
        executor: EXECUTOR,
        address: tried.join("; "),
        reason: format!(
            "no libpod socket responded and no private service started; {UNAVAILABLE_HINT}"
        ),
    }
}

/// Returns true for errors that mean the service could not be reached at all.
fn is_connection_error(error: &podman_api::Error) -> bool {
    use podman_api::conn::Error as ConnError;
    matches!(
        error,
        podman_api::Error::IO(_) | podman_api::Error::Error(ConnError::IO(_) | ConnError::Hyper(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(path: &str, source: &'static str) -> Candidate {
        Candidate::Socket {
            path: PathBuf::from(path),
            source,
        }
    }

    #[test]
    fn candidates_rootful_order() {
        let found = candidates(
            Some("unix:///etc/sock"),
            Some("unix:///env/sock"),
            true,
            Some(Path::new("/run/user/0")),
        )
        .expect("valid");
        assert_eq!(
            found,
            [
                socket("/etc/sock", "configured socket"),
                socket("/env/sock", "CONTAINER_HOST"),
                socket("/run/podman/podman.sock", "rootful default"),
            ]
        );
    }

    #[test]
    fn candidates_rootless_uses_xdg_runtime_dir() {
        let found =
            candidates(None, None, false, Some(Path::new("/run/user/1000"))).expect("valid");
        assert_eq!(
            found,
            [socket(
                "/run/user/1000/podman/podman.sock",
                "rootless default"
            )]
        );
    }

    #[test]
    fn candidates_rootless_without_xdg_runtime_dir() {
        let found = candidates(None, None, false, None).expect("valid");
        assert_eq!(
            found,
            [Candidate::Skipped {
                source: "rootless default",
                reason: "XDG_RUNTIME_DIR is not set".to_owned(),
            }]
        );
    }

    #[test]
    fn candidates_skip_non_unix_container_host() {
        let found =
            candidates(None, Some("ssh://core@host/run/podman.sock"), true, None).expect("valid");
        assert_eq!(found.len(), 2);
        match &found[0] {
            Candidate::Skipped { source, reason } => {
                assert_eq!(*source, "CONTAINER_HOST");
                assert!(reason.contains("ssh://core@host"), "reason: {reason}");
            }
            other => panic!("expected a skipped candidate, got {other:?}"),
        }
    }

    #[test]
    fn candidates_accept_plain_configured_path() {
        let found = candidates(Some("/tmp/p.sock"), Some(""), true, None).expect("valid");
        assert_eq!(found[0], socket("/tmp/p.sock", "configured socket"));
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn candidates_reject_tcp_configured_socket() {
        let error = candidates(Some("tcp://127.0.0.1:8080"), None, true, None)
            .expect_err("tcp is not supported");
        match error {
            ExecutorError::Unavailable {
                address, reason, ..
            } => {
                assert_eq!(address, "tcp://127.0.0.1:8080");
                assert!(reason.contains("unix://"), "reason: {reason}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn socket_path_forms() {
        assert_eq!(socket_path("unix:///a/b"), Some(PathBuf::from("/a/b")));
        assert_eq!(socket_path("/a/b"), Some(PathBuf::from("/a/b")));
        assert_eq!(socket_path("unix://"), None);
        assert_eq!(socket_path("http://x"), None);
        assert_eq!(socket_path(""), None);
    }

    /// A socket file that nothing listens on and a missing one both mean the service is gone.
    #[tokio::test]
    async fn ping_of_stale_or_missing_socket_is_gone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind socket"));

        for path in [stale, dir.path().join("missing.sock")] {
            let error = tokio::time::timeout(PING_TIMEOUT, Podman::unix(&path).ping())
                .await
                .expect("a failed connect returns at once")
                .expect_err("nothing listens");
            assert!(is_socket_gone(&error), "{}", error_chain(&error));
        }
    }

    #[test]
    fn socket_gone_needs_missing_or_refused() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(!is_socket_gone(&denied));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_socket_gone(&refused));
    }

    #[test]
    fn call_error_io_is_unavailable() {
        let connection = Connection::new(PathBuf::from("/nowhere/podman.sock"), None);
        let error = connection.call_error(
            "create container",
            CallError::Io(std::io::Error::from(std::io::ErrorKind::NotFound)),
        );
        match error {
            ExecutorError::Unavailable { address, .. } => {
                assert_eq!(address, "/nowhere/podman.sock");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn call_error_rejected_is_runtime() {
        let connection = Connection::new(PathBuf::from("/x.sock"), None);
        let error = connection.call_error(
            "create container",
            CallError::Rejected("x: image not known (HTTP 500)".to_owned()),
        );
        match error {
            ExecutorError::Runtime {
                operation, message, ..
            } => {
                assert_eq!(operation, "create container");
                assert_eq!(message, "x: image not known (HTTP 500)");
            }
            other => panic!("expected a runtime error, got {other:?}"),
        }
    }
}
