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
//! - Attach: the crate inspects the container, with its size, before every attach, only to
//!   learn whether it has a terminal. Job containers never do. With Podman 4.3.1 on a 2-core
//!   VM that inspect took 2 ms for a busybox image and 49 ms for `python:3.11-slim`, which is
//!   Podman's CPU time spent on every job.
//!
//! Each request opens its own connection and speaks HTTP/1.0, so the server delimits the
//! response by closing the connection and never uses chunked encoding.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::UnixStream;

/// Largest response head (status line and headers) accepted, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Largest non-streaming response body accepted, in bytes.
const MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;

/// Largest line of a streamed response (such as the build log) accepted, in bytes. Longer lines
/// are cut.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Largest piece of an attach frame returned at once, in bytes. A longer frame is returned in
/// several pieces, so a frame's length never sizes an allocation.
const MAX_CHUNK_BYTES: usize = 64 * 1024;

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

    /// Returns the connection, positioned at the start of the body.
    fn into_stream(self) -> BufReader<UnixStream> {
        self.body
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

/// The output half of an attach connection.
pub(crate) type AttachReader = AttachOutput<ReadHalf<BufReader<UnixStream>>>;

/// The stdin half of an attach connection. Shutting it down half-closes the connection, which
/// closes the agent's stdin.
pub(crate) type AttachWriter = WriteHalf<BufReader<UnixStream>>;

/// Attaches to the container's stdin, stdout and stderr and returns the two halves of the
/// connection. libpod initialises the container (the OCI runtime's `create`) inside this call
/// when it has not been started yet.
///
/// The request is HTTP/1.0 without an `Upgrade` header. Podman 4.3 then responds with `200 OK`
/// and goes on with the stream on the same connection, while it still closes the connection
/// after an error response.
///
/// # Errors
///
/// [`CallError::Io`] when the socket could not be used, [`CallError::Rejected`] with Podman's
/// message when it refused (such as 404 for a removed container, or an OCI runtime error).
pub(crate) async fn attach_container(
    socket: &Path,
    container_id: &str,
) -> Result<(AttachReader, AttachWriter), CallError> {
    let endpoint = format!(
        "/libpod/containers/{}/attach?stdin=true&stdout=true&stderr=true&stream=true",
        encode_query_value(container_id)
    );
    let response = request(socket, "POST", &endpoint, None, &[]).await?;
    if !response.is_success() {
        return Err(CallError::Rejected(response.error_message().await));
    }
    let (reader, writer) = tokio::io::split(response.into_stream());
    Ok((AttachOutput::new(reader), writer))
}

/// One piece of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutputChunk {
    /// Bytes the agent wrote to stdout.
    Stdout(Vec<u8>),
    /// Bytes the agent wrote to stderr, or Podman's own errors about the container.
    Stderr(Vec<u8>),
}

/// Returns true for a stderr frame that Podman itself writes when its copy between the client
/// and the container's attach socket fails, such as
/// `Error: read unixpacket @->/proc/self/fd/15/attach: read: connection reset by peer` for an
/// agent that exits without reading all of its stdin. Such a frame is Podman's, not the agent's.
fn is_attach_error(payload: &[u8]) -> bool {
    let text = String::from_utf8_lossy(payload);
    let text = text.trim_end();
    text.starts_with("Error: ")
        && text.contains(" unixpacket ")
        && text.contains("/attach: ")
        && !text.contains('\n')
}

/// Decodes the multiplexed stream of a container without a terminal: frames of an 8-byte
/// header (stream type 0, 1 or 2, three zero bytes, the payload length as a big-endian `u32`)
/// followed by the payload.
#[derive(Debug)]
pub(crate) struct AttachOutput<R> {
    reader: R,
    /// Stream type and payload bytes not read yet of the current frame.
    frame: Option<(u8, usize)>,
}

impl<R: AsyncRead + Unpin> AttachOutput<R> {
    pub(crate) fn new(reader: R) -> Self {
        Self {
            reader,
            frame: None,
        }
    }

    /// Returns the next piece of output, at most [`MAX_CHUNK_BYTES`] long, or `None` when the
    /// stream ended between two frames. Stdin frames, which Podman does not send to a client
    /// without a terminal, are skipped.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::UnexpectedEof`] when the stream ends inside a frame,
    /// [`io::ErrorKind::InvalidData`] for a stream type other than 0, 1 or 2, and read errors.
    pub(crate) async fn next_chunk(&mut self) -> io::Result<Option<OutputChunk>> {
        loop {
            let (kind, remaining) = match self.frame {
                Some(frame) => frame,
                None => match self.read_header().await? {
                    Some(frame) => frame,
                    None => return Ok(None),
                },
            };
            let length = remaining.min(MAX_CHUNK_BYTES);
            let mut payload = vec![0; length];
            self.reader.read_exact(&mut payload).await?;
            self.frame = (remaining > length).then_some((kind, remaining - length));
            match kind {
                1 => return Ok(Some(OutputChunk::Stdout(payload))),
                2 if remaining == length && is_attach_error(&payload) => {
                    tracing::debug!(
                        message = %String::from_utf8_lossy(&payload).trim_end(),
                        "podman reported an attach error in the stderr stream; not kept as the agent's output"
                    );
                }
                2 => return Ok(Some(OutputChunk::Stderr(payload))),
                _ => {}
            }
        }
    }

    /// Reads a frame header and returns its stream type and payload length, or `None` when the
    /// stream ends before the header's first byte.
    async fn read_header(&mut self) -> io::Result<Option<(u8, usize)>> {
        let mut header = [0u8; 8];
        let mut filled = 0;
        while filled < header.len() {
            let read = self.reader.read(&mut header[filled..]).await?;
            if read == 0 {
                if filled == 0 {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the attach stream ended after {filled} bytes of a frame header"),
                ));
            }
            filled += read;
        }
        let kind = header[0];
        if kind > 2 {
            return Err(invalid_data(format!(
                "unknown stream type {kind} in the attach stream; expected 0, 1 or 2"
            )));
        }
        let length = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        // A u32 always fits in usize on the 32- and 64-bit targets Podman runs on.
        Ok(Some((kind, length as usize)))
    }
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
/// once. A shorter `interval` does not close the gap: with `interval=1ms` or `5ms` the wait
/// still responded 35-110 ms after the attach stream ended, and the events stream reported
/// `died` after about 190 ms, against 2-10 ms for inspect (Podman 4.3.1, 2-core VM). Inspect
/// here also skips the size computation that the crate's inspect requests.
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

    /// Returns a frame of the multiplexed attach stream.
    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![kind, 0, 0, 0];
        frame.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// Decodes `stream` to its end or first error.
    async fn decode_all(stream: &[u8]) -> (Vec<OutputChunk>, Option<io::Error>) {
        let mut output = AttachOutput::new(stream);
        let mut chunks = Vec::new();
        loop {
            match output.next_chunk().await {
                Ok(Some(chunk)) => chunks.push(chunk),
                Ok(None) => return (chunks, None),
                Err(error) => return (chunks, Some(error)),
            }
        }
    }

    /// Podman's own attach error is dropped from the stderr stream; the agent's stderr around
    /// it, and a similar line in a larger frame, are kept.
    #[tokio::test]
    async fn attach_error_frame_is_dropped() {
        let podman =
            b"Error: read unixpacket @->/proc/self/fd/15/attach: read: connection reset by peer\n";
        let mut stream = frame(2, b"bye\n");
        stream.extend(frame(2, podman));
        let mut agent = b"log line\n".to_vec();
        agent.extend_from_slice(podman);
        stream.extend(frame(2, &agent));

        let (chunks, error) = decode_all(&stream).await;

        assert!(error.is_none(), "{error:?}");
        assert_eq!(
            chunks,
            [
                OutputChunk::Stderr(b"bye\n".to_vec()),
                OutputChunk::Stderr(agent.clone()),
            ]
        );
    }

    #[tokio::test]
    async fn attach_output_splits_streams() {
        let mut stream = frame(1, b"{\"type\":");
        stream.extend(frame(2, b"warning\n"));
        stream.extend(frame(0, b"echoed stdin"));
        stream.extend(frame(1, b""));
        stream.extend(frame(1, b"\"info\"}\n"));

        let (chunks, error) = decode_all(&stream).await;

        assert!(error.is_none(), "{error:?}");
        assert_eq!(
            chunks,
            [
                OutputChunk::Stdout(b"{\"type\":".to_vec()),
                OutputChunk::Stderr(b"warning\n".to_vec()),
                OutputChunk::Stdout(Vec::new()),
                OutputChunk::Stdout(b"\"info\"}\n".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn attach_output_of_empty_stream_ends() {
        let (chunks, error) = decode_all(b"").await;
        assert!(chunks.is_empty());
        assert!(error.is_none(), "{error:?}");
    }

    #[tokio::test]
    async fn attach_output_cuts_long_frame() {
        let payload: Vec<u8> = (0..MAX_CHUNK_BYTES * 2 + 10).map(|i| i as u8).collect();
        let (chunks, error) = decode_all(&frame(2, &payload)).await;

        assert!(error.is_none(), "{error:?}");
        let lengths: Vec<usize> = chunks
            .iter()
            .map(|chunk| match chunk {
                OutputChunk::Stderr(bytes) => bytes.len(),
                OutputChunk::Stdout(_) => panic!("stdout chunk from a stderr frame"),
            })
            .collect();
        assert_eq!(lengths, [MAX_CHUNK_BYTES, MAX_CHUNK_BYTES, 10]);
        let joined: Vec<u8> = chunks
            .into_iter()
            .flat_map(|chunk| match chunk {
                OutputChunk::Stderr(bytes) | OutputChunk::Stdout(bytes) => bytes,
            })
            .collect();
        assert_eq!(joined, payload);
    }

    #[tokio::test]
    async fn attach_output_rejects_unknown_stream() {
        let mut stream = frame(1, b"ok");
        stream.extend(frame(3, b"?"));

        let (chunks, error) = decode_all(&stream).await;

        assert_eq!(chunks, [OutputChunk::Stdout(b"ok".to_vec())]);
        let error = error.expect("stream type 3 is invalid");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("stream type 3"), "{error}");
    }

    #[tokio::test]
    async fn attach_output_reports_cut_header() {
        let mut stream = frame(1, b"ok");
        stream.extend_from_slice(&[1, 0, 0]);

        let (chunks, error) = decode_all(&stream).await;

        assert_eq!(chunks, [OutputChunk::Stdout(b"ok".to_vec())]);
        let error = error.expect("a cut header is an error");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(error.to_string().contains("after 3 bytes"), "{error}");
    }

    #[tokio::test]
    async fn attach_output_reports_cut_payload() {
        let mut stream = frame(1, b"complete");
        stream.truncate(stream.len() - 3);

        let (chunks, error) = decode_all(&stream).await;

        assert!(chunks.is_empty(), "{chunks:?}");
        let error = error.expect("a cut payload is an error");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Serves one attach connection: checks the request line, responds with `200 OK`, reads the
    /// client's stdin until the client half-closes, then sends it back as one stdout frame and
    /// a stderr frame, and closes.
    async fn serve_echo_attach(dir: &Path) -> std::path::PathBuf {
        let socket = dir.join("attach.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).await.expect("read");
            assert!(
                request_line.starts_with("POST /v")
                    && request_line.contains(
                        "/libpod/containers/abc/attach?stdin=true&stdout=true&stderr=true&stream=true HTTP/1.0"
                    ),
                "request line: {request_line}"
            );
            let mut line = String::new();
            while reader.read_line(&mut line).await.expect("read") > 0 && line != "\r\n" {
                line.clear();
            }
            let mut stream = reader.into_inner();
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n",
                )
                .await
                .expect("write head");
            let mut stdin = Vec::new();
            stream.read_to_end(&mut stdin).await.expect("read stdin");
            let mut reply = frame(1, &stdin);
            reply.extend(frame(2, b"done"));
            stream.write_all(&reply).await.expect("write frames");
        });
        socket
    }

    #[tokio::test]
    async fn attach_container_echoes_after_half_close() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = serve_echo_attach(dir.path()).await;

        let exchange = async {
            let (mut output, mut input) = attach_container(&socket, "abc").await?;
            input.write_all(b"{\"type\":\"work\"}").await?;
            input.shutdown().await?;
            let mut chunks = Vec::new();
            while let Some(chunk) = output.next_chunk().await? {
                chunks.push(chunk);
            }
            Ok::<_, CallError>(chunks)
        };
        let chunks = tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
            .await
            .expect("the exchange ends")
            .expect("the attach works");

        assert_eq!(
            chunks,
            [
                OutputChunk::Stdout(b"{\"type\":\"work\"}".to_vec()),
                OutputChunk::Stderr(b"done".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn attach_container_reports_podman_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = serve_once(
            dir.path(),
            b"HTTP/1.0 404 Not Found\r\nContent-Type: application/json\r\n\r\n{\"cause\":\"no such container\",\"message\":\"no container with name or ID \\\"abc\\\" found: no such container\",\"response\":404}\n",
        )
        .await;

        let call = attach_container(&socket, "abc");
        let error = tokio::time::timeout(std::time::Duration::from_secs(30), call)
            .await
            .expect("the request ends")
            .expect_err("404 is an error");

        match error {
            CallError::Rejected(message) => assert_eq!(
                message,
                "no container with name or ID \"abc\" found: no such container (HTTP 404)"
            ),
            CallError::Io(error) => panic!("expected a rejection, got {error}"),
        }
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
