//! Plain HTTP requests to the libpod API, for the steps that `podman-api` 0.11 gets wrong or
//! does not offer.
//!
//! - Container create: the crate sends the no-new-privileges flag under the misspelt key
//!   `no_new_privilages`, which Podman ignores, so the flag could never be set. Here the
//!   specification is our own serde type with the keys Podman 4.3 reads.
//! - Image build: the crate tars a folder itself. The backend sends the deterministic tar that
//!   [`agentrun_executor::build_context_tar`] makes, as the Docker backend does, and reads the
//!   error lines of the build log itself.
//! - Container state: the crate's inspect requests the container's size, which costs
//!   tens of milliseconds per call on a large image, and its wait discards the exit code.
//!
//! Each request opens its own connection and speaks HTTP/1.0, so the server delimits the
//! response by closing the connection and never uses chunked encoding.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Largest response head (status line and headers) accepted, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Largest non-streaming response body accepted, in bytes.
const MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;

/// Largest line of a streamed response (such as the build log) accepted, in bytes. Longer lines
/// are cut.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// An HTTP response whose body has not been read yet.
#[derive(Debug)]
pub(crate) struct Response {
    /// HTTP status code.
    pub(crate) status: u16,
    body: BufReader<UnixStream>,
}

impl Response {
    /// Returns true for a 2xx status.
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Reads the whole body, up to [`MAX_BODY_BYTES`].
    pub(crate) async fn bytes(self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        self.body
            .take(MAX_BODY_BYTES)
            .read_to_end(&mut body)
            .await?;
        Ok(body)
    }

    /// Reads the next line of the body, without its line ending. Returns `None` at the end.
    pub(crate) async fn next_line(&mut self) -> io::Result<Option<String>> {
        let mut line = Vec::new();
        let read = (&mut self.body)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') && read == MAX_LINE_BYTES {
            // Skip the rest of an overlong line.
            let mut rest = Vec::new();
            self.body.read_until(b'\n', &mut rest).await?;
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        Ok(Some(String::from_utf8_lossy(&line).into_owned()))
    }

    /// Reads the body and returns the error message of a libpod error response, or the body
    /// as text when it is not one.
    ///
    /// A server that rejects a request before reading all of it closes a socket with unread
    /// data, which resets the connection. The part of the body read before the reset is kept.
    pub(crate) async fn error_message(self) -> String {
        let status = self.status;
        let mut body = Vec::new();
        let read = self.body.take(MAX_BODY_BYTES).read_to_end(&mut body).await;
        match read {
            Ok(_) => error_message(status, &body),
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset && !body.is_empty() => {
                error_message(status, &body)
            }
            Err(error) => format!("HTTP {status}, body unreadable: {error}"),
        }
    }
}

/// Sends one request to the libpod socket at `socket` and reads the response head.
///
/// `endpoint` is the path after the version prefix, such as `/libpod/containers/create`, with
/// its query string.
pub(crate) async fn request(
    socket: &Path,
    method: &str,
    endpoint: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> io::Result<Response> {
    let mut stream = UnixStream::connect(socket).await?;

    let path = podman_api::LATEST_API_VERSION.make_endpoint(endpoint);
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: podman\r\n");
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let written = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.flush().await
    }
    .await;

    // A server that rejects a request early (such as a build with an invalid context) may
    // respond and close before reading the whole body. Its response explains more than the
    // broken pipe of the write does.
    let mut reader = BufReader::new(stream);
    match read_head(&mut reader).await {
        Ok(status) => Ok(Response {
            status,
            body: reader,
        }),
        Err(read_error) => Err(written.err().unwrap_or(read_error)),
    }
}

/// Reads the status line and headers and returns the status code.
async fn read_head(reader: &mut BufReader<UnixStream>) -> io::Result<u16> {
    let mut head_bytes = 0;
    let mut status = None;
    loop {
        let mut line = Vec::new();
        let read = reader.read_until(b'\n', &mut line).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed before the response head ended",
            ));
        }
        head_bytes += read;
        if head_bytes > MAX_HEAD_BYTES {
            return Err(invalid_data(format!(
                "response head longer than {MAX_HEAD_BYTES} bytes"
            )));
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        match status {
            None => status = Some(parse_status_line(line)?),
            Some(_) if line.is_empty() => break,
            Some(_) => {
                if let Some((name, value)) = line.split_once(':') {
                    if name.trim().eq_ignore_ascii_case("transfer-encoding")
                        && !value.trim().eq_ignore_ascii_case("identity")
                    {
                        return Err(invalid_data(format!(
                            "unexpected transfer encoding `{}` in a response to HTTP/1.0",
                            value.trim()
                        )));
                    }
                }
            }
        }
    }
    // The loop only breaks after the status line was parsed.
    status.ok_or_else(|| invalid_data("missing status line".to_owned()))
}

/// Parses `HTTP/1.x 200 OK` into 200.
fn parse_status_line(line: &str) -> io::Result<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|code| code.parse::<u16>().ok());
    match code {
        Some(code) if version.starts_with("HTTP/") => Ok(code),
        _ => Err(invalid_data(format!("invalid HTTP status line `{line}`"))),
    }
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Returns the message of a libpod error body (`{"cause":…,"message":…,"response":…}`), or
/// the body itself when it is not JSON.
pub(crate) fn error_message(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        message: Option<String>,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            message: Some(message),
        }) if !message.is_empty() => format!("{message} (HTTP {status})"),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("HTTP {status} with an empty body")
            } else {
                format!("{text} (HTTP {status})")
            }
        }
    }
}

/// Percent-encodes a query string value: everything but unreserved characters.
pub(crate) fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Container specification for `POST /libpod/containers/create`, with the field names of
/// Podman's `SpecGenerator`. Fields left `None` or empty are not sent, so Podman's defaults
/// (and `containers.conf`) apply to them.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct CreateSpec {
    pub(crate) image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    pub(crate) stdin: bool,
    pub(crate) terminal: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) cap_drop: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) no_new_privileges: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) read_only_filesystem: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) mounts: Vec<Mount>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) r_limits: Vec<Rlimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) resource_limits: Option<Resources>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) netns: Option<Namespace>,
    #[serde(rename = "Networks", skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) networks: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) oci_runtime: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) init: bool,
    pub(crate) log_configuration: LogConfiguration,
}

/// A mount of a container specification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Mount {
    pub(crate) destination: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) source: String,
    pub(crate) options: Vec<String>,
}

/// A POSIX resource limit. `kind` is the short lowercase name (`nofile`); Podman adds the
/// `RLIMIT_` prefix itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Rlimit {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) soft: u64,
    pub(crate) hard: u64,
}

/// Cgroup limits, in the OCI runtime specification's layout.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) memory: Option<MemoryLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cpu: Option<CpuLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pids: Option<PidsLimit>,
}

/// Memory limit in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct MemoryLimit {
    pub(crate) limit: i64,
}

/// CPU bandwidth: `quota` microseconds of CPU time per `period` microseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct CpuLimit {
    pub(crate) quota: i64,
    pub(crate) period: u64,
}

/// Maximum number of processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct PidsLimit {
    pub(crate) limit: i64,
}

/// A namespace mode, such as `none`, `host` or `bridge`, with its value where the mode takes
/// one (`ns:<path>`, `container:<id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Namespace {
    pub(crate) nsmode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<String>,
}

/// Log driver of the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct LogConfiguration {
    pub(crate) driver: String,
}

/// Creates a container and returns its id.
///
/// # Errors
///
/// [`CallError::Io`] when the socket could not be used, [`CallError::Rejected`] with Podman's
/// message when it refused the specification (such as an unknown image).
pub(crate) async fn create_container(
    socket: &Path,
    spec: &CreateSpec,
) -> Result<String, CallError> {
    #[derive(serde::Deserialize)]
    struct Created {
        #[serde(rename = "Id")]
        id: String,
    }

    let body = serde_json::to_vec(spec).map_err(|error| CallError::Rejected(error.to_string()))?;
    let response = request(
        socket,
        "POST",
        "/libpod/containers/create",
        Some("application/json"),
        &body,
    )
    .await?;
    if !response.is_success() {
        return Err(CallError::Rejected(response.error_message().await));
    }
    let body = response.bytes().await?;
    serde_json::from_slice::<Created>(&body)
        .map(|created| created.id)
        .map_err(|error| {
            CallError::Rejected(format!(
                "unexpected create response `{}`: {error}",
                String::from_utf8_lossy(&body)
            ))
        })
}

/// A container's run state, from `GET /libpod/containers/{id}/json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerState {
    /// Podman's state name: `created`, `initialized`, `running`, `paused`, `stopping`,
    /// `stopped`, `exited` and a few more.
    pub(crate) status: String,
    /// Exit code of the container's process, meaningful once it has exited.
    pub(crate) exit_code: i32,
}

impl ContainerState {
    /// Returns true once the container's process has exited.
    pub(crate) fn has_exited(&self) -> bool {
        matches!(self.status.as_str(), "exited" | "stopped")
    }
}

/// Returns the container's state.
///
/// Podman's wait endpoint would return the exit code directly, but it responds about 200 ms
/// after the container has exited (measured with Podman 4.3.1), while inspect reports the exit at
/// once. Inspect here also skips the size computation that the crate's inspect requests.
///
/// # Errors
///
/// [`CallError::Io`] when the socket could not be used, [`CallError::Rejected`] when Podman
/// returned an error (such as 404 for a container that was removed).
pub(crate) async fn container_state(
    socket: &Path,
    container_id: &str,
) -> Result<ContainerState, CallError> {
    #[derive(serde::Deserialize)]
    struct Inspect {
        #[serde(rename = "State")]
        state: State,
    }
    #[derive(serde::Deserialize)]
    struct State {
        #[serde(rename = "Status", default)]
        status: String,
        #[serde(rename = "ExitCode", default)]
        exit_code: i32,
    }

    let endpoint = format!(
        "/libpod/containers/{}/json",
        encode_query_value(container_id)
    );
    let response = request(socket, "GET", &endpoint, None, &[]).await?;
    if !response.is_success() {
        return Err(CallError::Rejected(response.error_message().await));
    }
    let body = response.bytes().await?;
    let inspect: Inspect = serde_json::from_slice(&body)
        .map_err(|error| CallError::Rejected(format!("unexpected inspect response: {error}")))?;
    Ok(ContainerState {
        status: inspect.state.status,
        exit_code: inspect.state.exit_code,
    })
}

/// The failure of a plain libpod request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The socket could not be reached or the connection broke.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Podman responded with an error, or with a body that could not be read.
    #[error("{0}")]
    Rejected(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_parses_code() {
        assert_eq!(
            parse_status_line("HTTP/1.0 201 Created").expect("valid"),
            201
        );
        assert_eq!(
            parse_status_line("HTTP/1.1 404 Not Found").expect("valid"),
            404
        );
    }

    #[test]
    fn status_line_rejects_garbage() {
        let error = parse_status_line("SSH-2.0-OpenSSH").expect_err("not HTTP");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("SSH-2.0-OpenSSH"), "{error}");
    }

    /// Serves one connection on a socket in `dir`: reads up to the end of the request head,
    /// writes `response` and closes, without reading any request body.
    async fn serve_once(dir: &Path, response: &'static [u8]) -> std::path::PathBuf {
        let socket = dir.join("server.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).await.expect("read") > 0 {
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let mut stream = reader.into_inner();
            stream.write_all(response).await.expect("write");
        });
        socket
    }

    #[tokio::test]
    async fn request_reads_early_response() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = serve_once(
            dir.path(),
            b"HTTP/1.0 400 Bad Request\r\n\r\n{\"message\":\"invalid context\"}",
        )
        .await;
        // Far more than the socket buffers hold, so the write fails once the server closes.
        let body = vec![0u8; 32 * 1024 * 1024];

        let call = request(&socket, "POST", "/libpod/build", None, &body);
        let response = tokio::time::timeout(std::time::Duration::from_secs(30), call)
            .await
            .expect("the request ends")
            .expect("the response is read despite the failed write");

        assert_eq!(response.status, 400);
        assert_eq!(response.error_message().await, "invalid context (HTTP 400)");
    }

    #[tokio::test]
    async fn request_rejects_chunked_response() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = serve_once(
            dir.path(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await;

        let call = request(&socket, "GET", "/libpod/_ping", None, &[]);
        let error = tokio::time::timeout(std::time::Duration::from_secs(30), call)
            .await
            .expect("the request ends")
            .expect_err("chunked encoding is not expected");

        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("chunked"), "{error}");
    }

    #[tokio::test]
    async fn next_line_splits_streamed_body() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = serve_once(
            dir.path(),
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}\r\n{\"b\":2}\n{\"c\":3}",
        )
        .await;

        let call = request(&socket, "POST", "/libpod/build", None, b"tar");
        let mut response = tokio::time::timeout(std::time::Duration::from_secs(30), call)
            .await
            .expect("the request ends")
            .expect("the response head is valid");

        assert_eq!(response.status, 200);
        let mut lines = Vec::new();
        while let Some(line) = response.next_line().await.expect("the body is readable") {
            lines.push(line);
        }
        assert_eq!(lines, [r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);
    }

    #[test]
    fn error_message_reads_libpod_error() {
        let body =
            br#"{"cause":"image not known","message":"x:1: image not known","response":500}"#;
        assert_eq!(error_message(500, body), "x:1: image not known (HTTP 500)");
    }

    #[test]
    fn error_message_falls_back_to_text() {
        assert_eq!(
            error_message(502, b"bad gateway\n"),
            "bad gateway (HTTP 502)"
        );
        assert_eq!(error_message(500, b""), "HTTP 500 with an empty body");
    }

    #[test]
    fn query_value_is_percent_encoded() {
        assert_eq!(
            encode_query_value("agentrun/echo-1234:ab"),
            "agentrun%2Fecho-1234%3Aab"
        );
        assert_eq!(
            encode_query_value(r#"{"a":"é"}"#),
            "%7B%22a%22%3A%22%C3%A9%22%7D"
        );
        assert_eq!(encode_query_value("10ms"), "10ms");
    }

    #[test]
    fn create_spec_uses_podman_field_names() {
        let spec = CreateSpec {
            image: "img".to_owned(),
            stdin: true,
            no_new_privileges: true,
            r_limits: vec![Rlimit {
                kind: "nofile".to_owned(),
                soft: 1024,
                hard: 1024,
            }],
            netns: Some(Namespace {
                nsmode: "none".to_owned(),
                value: None,
            }),
            init: true,
            log_configuration: LogConfiguration {
                driver: "k8s-file".to_owned(),
            },
            ..CreateSpec::default()
        };
        let json = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "image": "img",
                "stdin": true,
                "terminal": false,
                "no_new_privileges": true,
                "r_limits": [{"type": "nofile", "soft": 1024, "hard": 1024}],
                "netns": {"nsmode": "none"},
                "init": true,
                "log_configuration": {"driver": "k8s-file"},
            })
        );
    }
}
