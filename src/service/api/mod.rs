//! The HTTP API: routes, listeners and authentication.
//!
//! The API listens on a Unix socket (mode 0660, so the socket's owner and group decide who may
//! connect) and optionally on TCP, where every request except `GET /healthz` must carry
//! `Authorization: Bearer <token>`. Connections are HTTP/1.1, with a deadline for each
//! request's headers and a cap on open connections. Every error, including unknown routes, bodies past a limit
//! and malformed JSON, is a JSON [`error::ApiError`]. The routes and their shapes are described
//! in the OpenAPI document served at `GET /v1/openapi.json`.

pub mod error;
mod extract;
mod integrations;
mod jobs;
mod multipart;
mod views;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use self::error::ApiError;
use super::{Service, ServiceError};

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Builds the router. `require_token` adds bearer-token checks, for the TCP listener.
pub fn router(service: Arc<Service>, require_token: bool) -> Router {
    let timeout = Duration::from_secs(service.config.api.request_timeout_secs);
    let body_limit = service.config.api.max_body_bytes;

    // Uploads stream their parts with limits of their own, so the default limit is off there.
    let uploads = Router::new()
        .route(
            "/v1/integrations",
            post(integrations::register).get(integrations::list),
        )
        .route(
            "/v1/integrations/{id}/package",
            put(integrations::replace_package),
        )
        .layer(DefaultBodyLimit::disable());

    let router = Router::new()
        .route(
            "/v1/integrations/{id}",
            get(integrations::show).delete(integrations::delete),
        )
        .route("/v1/integrations/{id}/env", patch(integrations::update_env))
        .route("/v1/integrations/{id}/form", post(integrations::form))
        .route("/v1/integrations/{id}/jobs", post(jobs::submit))
        .route(
            "/v1/integrations/{id}/health",
            get(integrations::show_health),
        )
        .route(
            "/v1/integrations/{id}/describe",
            post(integrations::describe),
        )
        .route("/v1/actions", get(integrations::actions))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{job_id}", get(jobs::show).delete(jobs::cancel))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(body_limit))
        .merge(uploads)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(move |request, next| {
            with_timeout(timeout, request, next)
        }));

    let router = if require_token {
        router.layer(middleware::from_fn_with_state(
            Arc::clone(&service),
            check_token,
        ))
    } else {
        router
    };
    router.with_state(service)
}

async fn with_timeout(timeout: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request took longer than {} s (api.request_timeout_secs)",
                timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Rejects TCP requests without the configured bearer token, except `GET /healthz`.
async fn check_token(
    State(service): State<Arc<Service>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let expected = service.token.as_deref().unwrap_or_default();
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    match given {
        Some(given) if !expected.is_empty() && constant_time_eq(given, expected) => {
            next.run(request).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is wrong",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token: send Authorization: Bearer <token>",
        )
        .into_response(),
    }
}

/// Returns the token of an `Authorization: Bearer <token>` value. The scheme is matched
/// regardless of case, because HTTP authentication schemes are case-insensitive (RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares two strings in time that depends on their lengths only.
fn constant_time_eq(left: &str, right: &str) -> bool {
    let (left, right) = (left.as_bytes(), right.as_bytes());
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// Rejects a request that would start work or change an integration once the service is
/// stopping, with 503. Reads go on being served until the running jobs have ended.
pub(crate) fn reject_when_stopping(service: &Service) -> Result<(), ApiError> {
    if service.stopping.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the service is stopping and accepts no new jobs or changes; retry once it runs \
             again",
        ));
    }
    Ok(())
}

async fn healthz(State(service): State<Arc<Service>>) -> Response {
    if service.stopping.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "stopping" })),
        )
            .into_response();
    }
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn metrics(State(service): State<Arc<Service>>) -> Result<Response, ApiError> {
    let counts = service.store.job_counts().await?;
    let integrations = service.store.integrations().await?;
    let text = service
        .metrics
        .render(&counts, &integrations, service.pool.running_count())
        .map_err(|error| ApiError::internal(&error))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(super::metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI_JSON,
    )
        .into_response()
}

async fn no_route(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!(
            "no route {} {}; see GET /v1/openapi.json",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; see GET /v1/openapi.json",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The running HTTP servers.
#[derive(Debug)]
pub(crate) struct Servers {
    stop: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<()>>,
    /// The Unix socket file, removed by [`Servers::finish`].
    socket: Option<SocketFile>,
}

impl Servers {
    /// Closes the listeners and asks open connections to close after their current request.
    pub(crate) fn stop_accepting(&self) {
        self.stop.cancel();
    }

    /// Waits for the servers and their connections to end, at most `timeout`, then drops what
    /// is left and removes the Unix socket file that [`listen`] created.
    pub(crate) async fn finish(self, timeout: Duration) {
        for handle in self.handles {
            let abort = handle.abort_handle();
            if tokio::time::timeout(timeout, handle).await.is_err() {
                abort.abort();
            }
        }
        if let Some(socket) = &self.socket {
            socket.remove();
        }
    }
}

/// A listening socket that [`serve_connections`] accepts from.
trait Acceptor: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;

    fn accept_connection(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Acceptor for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept_connection(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Acceptor for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept_connection(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Serves HTTP/1.1 connections from `listener` with `app` until `stop` is cancelled, then lets
/// open connections finish their current request.
///
/// Unlike `axum::serve`, which sets no deadline before a request's headers are in, each
/// connection must send its headers within `api.header_read_timeout_secs`, and at most
/// `api.max_connections` connections are open at once: a client that connects more often is
/// disconnected at once, so slow or greedy clients cost bounded memory.
async fn serve_connections<L: Acceptor>(
    listener: L,
    app: Router,
    stop: CancellationToken,
    config: crate::config::ApiConfig,
    name: &'static str,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_read_timeout_secs));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let mut rejected: u64 = 0;
    let mut backoff = AcceptBackoff::default();

    loop {
        let accepted = tokio::select! {
            accepted = listener.accept_connection() => accepted,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok(stream) => {
                backoff.succeeded(name);
                stream
            }
            Err(error) => {
                // Typically EMFILE or ENFILE: waiting lets open connections end and free file
                // descriptors before the next accept, instead of failing in a busy loop.
                let delay = backoff.failed(name, &error, std::time::Instant::now());
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => break,
                }
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            rejected += 1;
            // One line per 100 rejections keeps a flood of connections out of the log.
            if rejected % 100 == 1 {
                tracing::warn!(
                    listener = name,
                    max_connections = config.max_connections,
                    rejected,
                    "too many open connections; closing new ones"
                );
            }
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Delay before the first retry of a failed accept.
const ACCEPT_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Maximum delay between retries of a failed accept.
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);
/// Minimum time between two log lines about failing accepts on one listener.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Retry delays and rate-limited logging for a listener whose accepts fail.
///
/// When the process runs out of file descriptors, every accept fails at once until a
/// connection closes. The delay doubles from [`ACCEPT_RETRY_FIRST`] up to [`ACCEPT_RETRY_MAX`],
/// and one line per [`ACCEPT_LOG_INTERVAL`] reports the failures, so the loop neither spins
/// nor floods the log.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Failures since the last successful accept.
    failures: u64,
    /// Failures not yet reported in a log line.
    unlogged: u64,
    /// When the last log line was written.
    last_logged: Option<std::time::Instant>,
}

impl AcceptBackoff {
    /// Records a failed accept, logs it unless a line was written recently, and returns the
    /// delay before the next accept.
    fn failed(
        &mut self,
        listener: &'static str,
        error: &std::io::Error,
        now: std::time::Instant,
    ) -> Duration {
        self.failures += 1;
        self.unlogged += 1;
        let due = self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= ACCEPT_LOG_INTERVAL);
        if due {
            tracing::error!(
                listener,
                error = %error,
                failures = self.unlogged,
                "accepting a connection failed; retrying with a delay (the process may have run \
                 out of file descriptors: raise LimitNOFILE or lower api.max_connections)"
            );
            self.unlogged = 0;
            self.last_logged = Some(now);
        }
        self.delay()
    }

    /// Records a successful accept; logs the recovery after failures.
    fn succeeded(&mut self, listener: &'static str) {
        if self.failures > 0 {
            tracing::info!(
                listener,
                failures = self.failures,
                "accepting connections again"
            );
        }
        *self = Self::default();
    }

    /// Returns the delay after the current number of failures.
    fn delay(&self) -> Duration {
        let doublings = u32::try_from(self.failures.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(16);
        ACCEPT_RETRY_FIRST
            .saturating_mul(1 << doublings)
            .min(ACCEPT_RETRY_MAX)
    }
}

/// Binds the configured listeners and starts serving.
pub(crate) async fn listen(service: &Arc<Service>) -> Result<Servers, ServiceError> {
    let stop = CancellationToken::new();
    let mut handles = Vec::new();
    let config = &service.config.listen;
    let api = service.config.api.clone();

    let mut socket = None;
    if !config.unix.as_os_str().is_empty() {
        let (listener, file) = bind_unix(&config.unix)?;
        socket = Some(file);
        let app = router(Arc::clone(service), false);
        handles.push(tokio::spawn(serve_connections(
            listener,
            app,
            stop.clone(),
            api.clone(),
            "unix",
        )));
    }

    if let Some(address) = config.tcp {
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(source) => {
                stop.cancel();
                Servers {
                    stop,
                    handles,
                    socket,
                }
                .finish(Duration::from_secs(5))
                .await;
                return Err(ServiceError::Listen {
                    address: address.to_string(),
                    source,
                });
            }
        };
        let app = router(Arc::clone(service), true);
        handles.push(tokio::spawn(serve_connections(
            listener,
            app,
            stop.clone(),
            api,
            "tcp",
        )));
    }
    Ok(Servers {
        stop,
        handles,
        socket,
    })
}

/// Binds the Unix socket with mode 0660.
///
/// The socket is bound under a temporary name, given its mode and then renamed into place, so
/// no client can connect while it still has the mode the umask gave it. A stale socket file of
/// a previous process is replaced. A socket that still accepts connections, and a file that is
/// not a socket, are errors.
fn bind_unix(path: &Path) -> Result<(tokio::net::UnixListener, SocketFile), ServiceError> {
    let listen_error = |source| ServiceError::Listen {
        address: path.display().to_string(),
        source,
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(listen_error)?;
    }
    // Only a socket may be replaced: any other file at the path is someone's data.
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if !metadata.file_type().is_socket() => {
            return Err(ServiceError::NotASocket {
                path: path.to_owned(),
            });
        }
        _ => {}
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(listen_error(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another process accepts connections on this socket",
        )));
    }

    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let listener = tokio::net::UnixListener::bind(&temporary).map_err(listen_error)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o660))
        .map_err(listen_error)?;
    std::fs::rename(&temporary, path).map_err(listen_error)?;
    let identity = std::fs::symlink_metadata(path)
        .map(|metadata| SocketFile {
            path: path.to_owned(),
            device: metadata.dev(),
            inode: metadata.ino(),
        })
        .map_err(listen_error)?;
    Ok((listener, identity))
}

/// The socket file this process bound, identified by device and inode so that shutdown never
/// removes a file that another process put at the same path meanwhile.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: std::path::PathBuf,
    device: u64,
    inode: u64,
}

impl SocketFile {
    /// Removes the socket file, unless the path now names another file.
    fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|metadata| {
            metadata.file_type().is_socket()
                && metadata.dev() == self.device
                && metadata.ino() == self.inode
        });
        if !ours {
            tracing::debug!(socket = %self.path.display(), "the socket path names another file now; it is left in place");
            return;
        }
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(socket = %self.path.display(), error = %error, "removing the socket failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_ignores_case() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc ", "Bearer\tabc"] {
            assert_eq!(bearer_token(value), Some("abc"), "{value:?}");
        }
    }

    #[test]
    fn bearer_token_needs_bearer_scheme() {
        for value in ["Basic abc", "Bearerabc", "abc", ""] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }

    /// Delays double from 100 ms to at most 1 s, and a success starts over.
    #[test]
    fn accept_backoff_doubles_up_to_max() {
        let mut backoff = AcceptBackoff::default();
        let error = std::io::Error::from_raw_os_error(libc::EMFILE);
        let now = std::time::Instant::now();
        let delays: Vec<u128> = (0..6)
            .map(|_| backoff.failed("test", &error, now).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);

        backoff.succeeded("test");
        assert_eq!(backoff.failed("test", &error, now).as_millis(), 100);
    }

    /// One line per interval reports the failures since the previous line.
    #[test]
    fn accept_backoff_logs_once_per_interval() {
        let mut backoff = AcceptBackoff::default();
        let error = std::io::Error::from_raw_os_error(libc::EMFILE);
        let start = std::time::Instant::now();

        backoff.failed("test", &error, start);
        assert_eq!(backoff.last_logged, Some(start));
        assert_eq!(backoff.unlogged, 0);

        for _ in 0..5 {
            backoff.failed("test", &error, start + Duration::from_secs(1));
        }
        assert_eq!(backoff.last_logged, Some(start));
        assert_eq!(backoff.unlogged, 5);

        let later = start + ACCEPT_LOG_INTERVAL;
        backoff.failed("test", &error, later);
        assert_eq!(backoff.last_logged, Some(later));
        assert_eq!(backoff.unlogged, 0);
    }
}
