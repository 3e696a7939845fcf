//! Hostile requests against the HTTP API: oversized and malformed bodies, wrong content types,
//! huge field counts, huge headers, slow clients and idle connections.
//!
//! Each test checks the status and the JSON error. The tests whose requests could make the
//! service buffer them also measure its memory. The peak resident set (`VmHWM`, reset through
//! `/proc/PID/clear_refs` first) may exceed the resident set before the requests by at most
//! [`MAX_GROWTH_KIB`]. Requests are written by hand on a raw Unix-socket connection, so a test
//! controls framing (Content-Length or chunked), pacing and what happens when the service
//! answers before the body is complete.

#[path = "common/service.rs"]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::{register_shell, ServiceProcess};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Growth of the service's resident memory that a test tolerates, in KiB (64 MiB). A service
/// that buffers one of the 64 MiB bodies below exceeds it.
const MAX_GROWTH_KIB: u64 = 64 * 1024;
/// Size of the bodies sent past a limit: far above every limit configured here.
const HUGE_BYTES: usize = 64 * 1024 * 1024;
/// Deadline of one raw exchange, including a slow client's dribbling.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// A valid path with a JSON body. The integration does not exist, so a body that passes every
/// check gets 404.
const MISSING_JOBS: &str = "/v1/integrations/00000000-0000-5000-8000-000000000000/jobs";

/// Subprocess executor, no periodic health checks, short header, request and wait deadlines, and a
/// package limit small enough to pass quickly.
const CONFIG: &str = "executor = \"subprocess\"\n\
    [health]\ninterval_secs = 0\n\
    [jobs]\nwait_timeout_secs = 4\n\
    [api]\nheader_read_timeout_secs = 2\nrequest_timeout_secs = 4\n\
    [intake]\nmax_archive_bytes = 4194304\n";

/// How a raw request's body is sent.
#[derive(Clone, Debug)]
enum Body {
    /// No body.
    Empty,
    /// `Content-Length` and these bytes.
    Fixed(Vec<u8>),
    /// `Content-Length: announced`, then `chunk` repeated `count` times (the body may stay
    /// shorter than announced).
    Announced {
        announced: u64,
        chunk: Vec<u8>,
        count: usize,
    },
    /// `Transfer-Encoding: chunked`: `prefix`, then `chunk` repeated `count` times, then the end
    /// of the body.
    Chunked {
        prefix: Vec<u8>,
        chunk: Vec<u8>,
        count: usize,
    },
    /// `Content-Length` of all bytes, sent `step` bytes at a time with `pause` between.
    Dribbled {
        bytes: Vec<u8>,
        step: usize,
        pause: Duration,
    },
}

/// What came back on a raw connection.
#[derive(Debug)]
struct RawResponse {
    /// Status code; `None` when the service closed the connection without a response.
    status: Option<u16>,
    /// Header names (lowercased) and values.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "the body of the {:?} response is not JSON ({error}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Asserts the status and a JSON error body with `code`; returns the body.
    fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            Some(status),
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["error"], code, "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|text| !text.is_empty()),
            "{body}"
        );
        body
    }
}

/// Sends `head` (request line and headers without the final blank line) and `body` on a new
/// connection to `socket`. It reads the response while the body is still being written, because
/// a service that rejects a body early responds before the client is done.
async fn exchange(socket: &Path, head: &str, body: Body) -> RawResponse {
    let stream = UnixStream::connect(socket)
        .await
        .unwrap_or_else(|error| panic!("connect {}: {error}", socket.display()));
    let (mut reader, mut writer) = stream.into_split();
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let head = head.to_owned();
    let writing = tokio::spawn(async move {
        // Write errors are expected: the service may close the connection once it has responded.
        let _ = write_request(&mut writer, &head, body).await;
        writer
    });
    let response = tokio::time::timeout(EXCHANGE_TIMEOUT, read_response(&mut reader))
        .await
        .unwrap_or_else(|_| panic!("no response within {EXCHANGE_TIMEOUT:?} to {request_line}"));
    writing.abort();
    response
}

async fn write_request(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    head: &str,
    body: Body,
) -> std::io::Result<()> {
    let mut head = head.trim_end().to_owned();
    head.push_str("\r\n");
    match &body {
        Body::Empty => head.push_str("content-length: 0\r\n"),
        Body::Fixed(bytes) => head.push_str(&format!("content-length: {}\r\n", bytes.len())),
        Body::Announced { announced, .. } => {
            head.push_str(&format!("content-length: {announced}\r\n"));
        }
        Body::Chunked { .. } => head.push_str("transfer-encoding: chunked\r\n"),
        Body::Dribbled { bytes, .. } => {
            head.push_str(&format!("content-length: {}\r\n", bytes.len()));
        }
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes()).await?;

    match body {
        Body::Empty => {}
        Body::Fixed(bytes) => writer.write_all(&bytes).await?,
        Body::Announced { chunk, count, .. } => {
            for _ in 0..count {
                writer.write_all(&chunk).await?;
            }
        }
        Body::Chunked {
            prefix,
            chunk,
            count,
        } => {
            if !prefix.is_empty() {
                writer
                    .write_all(format!("{:x}\r\n", prefix.len()).as_bytes())
                    .await?;
                writer.write_all(&prefix).await?;
                writer.write_all(b"\r\n").await?;
            }
            let size_line = format!("{:x}\r\n", chunk.len());
            for _ in 0..count {
                writer.write_all(size_line.as_bytes()).await?;
                writer.write_all(&chunk).await?;
                writer.write_all(b"\r\n").await?;
            }
            writer.write_all(b"0\r\n\r\n").await?;
        }
        Body::Dribbled { bytes, step, pause } => {
            for piece in bytes.chunks(step) {
                writer.write_all(piece).await?;
                tokio::time::sleep(pause).await;
            }
        }
    }
    writer.flush().await
}

/// Reads one HTTP/1.1 response: up to its `Content-Length`, or to the end of the connection.
async fn read_response(reader: &mut tokio::net::unix::OwnedReadHalf) -> RawResponse {
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if let Some(end) = find(&received, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .and_then(|line| line.split(' ').nth(1))
                .and_then(|code| code.parse().ok());
            let headers: Vec<(String, String)> = lines
                .filter_map(|line| line.split_once(':'))
                .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
                .collect();
            let length = headers
                .iter()
                .find(|(name, _)| name == "content-length")
                .and_then(|(_, value)| value.parse::<usize>().ok());
            let mut body = received[end + 4..].to_vec();
            while length.is_none_or(|length| body.len() < length) {
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => body.extend_from_slice(&buffer[..read]),
                }
            }
            if let Some(length) = length {
                body.truncate(length);
            }
            return RawResponse {
                status,
                headers,
                body,
            };
        }
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                return RawResponse {
                    status: None,
                    headers: Vec::new(),
                    body: received,
                }
            }
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Reads a `Vm*` line of `/proc/PID/status`, in KiB.
fn proc_status_kib(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|error| panic!("read /proc/{pid}/status: {error}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// The service's memory at the start of a test step.
#[derive(Debug)]
struct MemoryProbe {
    pid: i32,
    rss_before_kib: u64,
}

impl MemoryProbe {
    /// Resets the service's peak resident set and records the current one.
    fn start(service: &ServiceProcess) -> Self {
        let pid = service.pid();
        // Writing 5 resets VmHWM to the current resident set (Linux 4.0 and later). The test
        // started the process, so it may write there.
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .unwrap_or_else(|error| panic!("reset the peak memory of process {pid}: {error}"));
        Self {
            pid,
            rss_before_kib: proc_status_kib(pid, "VmRSS"),
        }
    }

    /// Asserts that the peak resident set since [`MemoryProbe::start`] stayed within
    /// [`MAX_GROWTH_KIB`] of the resident set then, and returns the growth.
    fn assert_bounded(&self, what: &str) -> u64 {
        let peak = proc_status_kib(self.pid, "VmHWM");
        let growth = peak.saturating_sub(self.rss_before_kib);
        eprintln!(
            "{what}: VmRSS before {} KiB, peak {peak} KiB, growth {growth} KiB",
            self.rss_before_kib
        );
        assert!(
            growth < MAX_GROWTH_KIB,
            "{what}: the service's peak memory grew by {growth} KiB (from {} KiB), more than \
             {MAX_GROWTH_KIB} KiB",
            self.rss_before_kib
        );
        growth
    }
}

async fn start_service(dir: &Path, config: &str) -> ServiceProcess {
    let mut service = ServiceProcess::start(dir, config, &[]);
    service.wait_ready().await;
    service
}

fn post_json(path: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nhost: agentrun\r\ncontent-type: application/json\r\n")
}

fn post_multipart(path: &str, boundary: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: agentrun\r\n\
         content-type: multipart/form-data; boundary={boundary}\r\n"
    )
}

/// Returns the opening of a multipart part called `name`.
fn part_head(boundary: &str, name: &str) -> Vec<u8> {
    format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\
         content-type: application/octet-stream\r\n\r\n"
    )
    .into_bytes()
}

/// JSON bodies past `api.max_body_bytes` get 413 whether they announce their length, announce
/// a false one or come chunked, and the service reads no more than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_body_past_limit_gets_413() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;
    let chunk = vec![b' '; 64 * 1024];
    let count = HUGE_BYTES / chunk.len();
    let cases = [
        (
            "with Content-Length",
            Body::Announced {
                announced: HUGE_BYTES as u64,
                chunk: chunk.clone(),
                count,
            },
        ),
        (
            "with a Content-Length of 1 TiB",
            Body::Announced {
                announced: 1 << 40,
                chunk: chunk.clone(),
                count,
            },
        ),
        (
            "chunked",
            Body::Chunked {
                prefix: b"{\"values\":".to_vec(),
                chunk: chunk.clone(),
                count,
            },
        ),
    ];
    for (what, body) in cases {
        let memory = MemoryProbe::start(&service);
        let response = exchange(&service.socket, &post_json(MISSING_JOBS), body).await;
        let error = response.assert_error(413, "payload_too_large");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|text| text.contains("1048576")),
            "{what}: the message does not name the limit: {error}"
        );
        memory.assert_bounded(&format!("JSON body {what}"));
    }
    // A body of exactly the limit passes the size check and reaches the JSON parser.
    let mut exact = vec![b' '; 1024 * 1024];
    exact[0] = b'{';
    exact[1] = b'}';
    let response = exchange(
        &service.socket,
        &post_json(MISSING_JOBS),
        Body::Fixed(exact),
    )
    .await;
    response.assert_error(404, "not_found");
}

/// Multipart uploads past `intake.max_archive_bytes` get 413, with or without
/// Content-Length, and a `manifest` part past `api.max_body_bytes` gets 413 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_past_limit_gets_413() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;
    let boundary = "abuse-boundary";
    let chunk = vec![b'z'; 64 * 1024];
    let count = HUGE_BYTES / chunk.len();

    for (part, limit) in [("package", "4194304"), ("manifest", "1048576")] {
        let cases = [
            (
                "with Content-Length",
                Body::Announced {
                    announced: (HUGE_BYTES + 1024) as u64,
                    chunk: [part_head(boundary, part), chunk.clone()].concat(),
                    count: 1,
                },
            ),
            (
                "chunked",
                Body::Chunked {
                    prefix: part_head(boundary, part),
                    chunk: chunk.clone(),
                    count,
                },
            ),
        ];
        for (what, body) in cases {
            // The announced case sends one chunk with the part head; the rest follows here.
            let body = match body {
                Body::Announced {
                    announced, chunk, ..
                } => {
                    let mut bytes = chunk;
                    bytes.resize(HUGE_BYTES, b'z');
                    Body::Announced {
                        announced,
                        chunk: bytes,
                        count: 1,
                    }
                }
                other => other,
            };
            let memory = MemoryProbe::start(&service);
            let response = exchange(
                &service.socket,
                &post_multipart("/v1/integrations", boundary),
                body,
            )
            .await;
            let error = response.assert_error(413, "payload_too_large");
            assert!(
                error["message"]
                    .as_str()
                    .is_some_and(|text| text.contains(limit)),
                "{part} {what}: the message does not name the limit {limit}: {error}"
            );
            memory.assert_bounded(&format!("{part} part {what}"));
        }
    }

    // No upload is left in the temporary folder.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("data/tmp"))
        .expect("tmp exists")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A multipart body whose preamble or part headers never end is rejected without buffering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_endless_headers_get_413() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;
    let boundary = "abuse-boundary";
    let filler = vec![b'a'; 64 * 1024];
    let count = HUGE_BYTES / filler.len();

    let mut endless_header = part_head(boundary, "package");
    // Drop the blank line that ends the part's headers, and open a header that never ends.
    endless_header.truncate(endless_header.len() - 2);
    endless_header.extend_from_slice(b"x-filler: ");
    let cases = [
        ("a preamble without a boundary", Vec::new()),
        ("a part header without an end", endless_header),
    ];
    for (what, prefix) in cases {
        let memory = MemoryProbe::start(&service);
        let response = exchange(
            &service.socket,
            &post_multipart("/v1/integrations", boundary),
            Body::Chunked {
                prefix,
                chunk: filler.clone(),
                count,
            },
        )
        .await;
        response.assert_error(413, "payload_too_large");
        memory.assert_bounded(&format!("multipart with {what}"));
    }
}

/// Requests with a wrong or missing content type get 415 with a JSON error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_types_get_415() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;
    let json_routes = [
        ("POST", MISSING_JOBS),
        (
            "POST",
            "/v1/integrations/00000000-0000-5000-8000-000000000000/form",
        ),
        (
            "PATCH",
            "/v1/integrations/00000000-0000-5000-8000-000000000000/env",
        ),
    ];
    let wrong_for_json = [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        Some("json"),
        None,
    ];
    for (method, path) in json_routes {
        for content_type in wrong_for_json {
            let mut head = format!("{method} {path} HTTP/1.1\r\nhost: agentrun\r\n");
            if let Some(content_type) = content_type {
                head.push_str(&format!("content-type: {content_type}\r\n"));
            }
            let response = exchange(&service.socket, &head, Body::Fixed(b"{}".to_vec())).await;
            let error = response.assert_error(415, "unsupported_media_type");
            assert!(
                error["message"]
                    .as_str()
                    .is_some_and(|text| text.contains("application/json")),
                "{method} {path} with {content_type:?}: {error}"
            );
        }
    }

    let upload_routes = [
        ("POST", "/v1/integrations"),
        (
            "PUT",
            "/v1/integrations/00000000-0000-5000-8000-000000000000/package",
        ),
    ];
    let wrong_for_upload = [
        Some("application/json"),
        Some("application/zip"),
        Some("multipart/form-data"),
        Some("multipart/mixed; boundary=x"),
        None,
    ];
    for (method, path) in upload_routes {
        for content_type in wrong_for_upload {
            let mut head = format!("{method} {path} HTTP/1.1\r\nhost: agentrun\r\n");
            if let Some(content_type) = content_type {
                head.push_str(&format!("content-type: {content_type}\r\n"));
            }
            let response = exchange(&service.socket, &head, Body::Fixed(b"{}".to_vec())).await;
            let error = response.assert_error(415, "unsupported_media_type");
            assert!(
                error["message"]
                    .as_str()
                    .is_some_and(|text| text.contains("multipart/form-data")),
                "{method} {path} with {content_type:?}: {error}"
            );
        }
    }
}

/// Malformed JSON gets 400, JSON of the wrong shape 422, and JSON nested deeper than the
/// parser's recursion limit (128) gets 400 without exhausting the stack or memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gets_400() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;

    let malformed: [(&str, Vec<u8>); 7] = [
        ("an empty body", Vec::new()),
        ("a truncated object", b"{\"values\": {".to_vec()),
        ("a bare word", b"values".to_vec()),
        ("trailing bytes", b"{} {}".to_vec()),
        (
            "invalid UTF-8",
            b"{\"values\": {\"a\": \"\xff\xfe\"}}".to_vec(),
        ),
        ("a NUL byte", b"{\"values\": \0}".to_vec()),
        (
            "a lone surrogate",
            br#"{"values": {"a": "\ud800"}}"#.to_vec(),
        ),
    ];
    for (what, body) in malformed {
        let response = exchange(&service.socket, &post_json(MISSING_JOBS), Body::Fixed(body)).await;
        let error = response.assert_error(400, "bad_request");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|text| text.contains("not valid JSON")),
            "{what}: {error}"
        );
    }

    let wrong_shape: [(&str, &str); 8] = [
        ("an empty array", "[]"),
        ("an array of the fields", r#"[{}, {}]"#),
        ("a string", "\"values\""),
        ("values as a list", r#"{"values": ["a"]}"#),
        ("an unknown key", r#"{"value": {}}"#),
        ("a context that is a number", r#"{"context": 5}"#),
        ("a context that is an array", r#"{"context": [null, null]}"#),
        ("a context that is null", r#"{"context": null}"#),
    ];
    for (what, body) in wrong_shape {
        let response = exchange(
            &service.socket,
            &post_json(MISSING_JOBS),
            Body::Fixed(body.as_bytes().to_vec()),
        )
        .await;
        let error = response.assert_error(422, "invalid_body");
        assert_eq!(error["errors"][0]["field"], "body", "{what}: {error}");
    }

    // Nesting: a body of brackets at the size limit, and a selected node nested 100,000 deep
    // given as a value and as a string of JSON.
    let memory = MemoryProbe::start(&service);
    let mut brackets = br#"{"context": {"selected-node": "#.to_vec();
    brackets.resize(1024 * 1024, b'[');
    let response = exchange(
        &service.socket,
        &post_json(MISSING_JOBS),
        Body::Fixed(brackets),
    )
    .await;
    let error = response.assert_error(400, "bad_request");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|text| text.contains("recursion limit")),
        "{error}"
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let as_value = format!(r#"{{"context": {{"selected-node": {deep}}}}}"#);
    let response = exchange(
        &service.socket,
        &post_json(MISSING_JOBS),
        Body::Fixed(as_value.into_bytes()),
    )
    .await;
    response.assert_error(400, "bad_request");
    let as_string = serde_json::to_vec(&json!({ "context": { "selected-node": deep } }))
        .expect("serialise the body");
    let response = exchange(
        &service.socket,
        &post_json(MISSING_JOBS),
        Body::Fixed(as_string),
    )
    .await;
    let error = response.assert_error(422, "invalid_body");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|text| text.contains("selected-node")),
        "{error}"
    );
    memory.assert_bounded("deeply nested JSON");
    assert_eq!(service.client().get("/healthz").await.status, 200);
}

/// Bodies with 100,000 values, context keys, env variables or multipart parts are answered
/// with a bounded 422: the error lists at most the first problems, and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_field_counts_get_bounded_422() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;
    let client = service.client();
    let agent_id = register_shell(&client, dir.path(), "Counter", Value::Null).await;
    let jobs = format!("/v1/integrations/{agent_id}/jobs");

    // 100,000 unknown field values: short names keep the body under 1 MiB.
    let names: Vec<String> = (0..100_000).map(|index| format!("{index:x}")).collect();
    let values: serde_json::Map<String, Value> = names
        .iter()
        .map(|name| (name.clone(), Value::String(String::new())))
        .collect();
    let body = serde_json::to_vec(&json!({ "values": values })).expect("serialise the body");
    assert!(body.len() < 1024 * 1024, "{} bytes", body.len());
    let memory = MemoryProbe::start(&service);
    let response = exchange(&service.socket, &post_json(&jobs), Body::Fixed(body)).await;
    let error = response.assert_error(422, "invalid_values");
    let listed = error["errors"].as_array().map_or(0, Vec::len);
    assert!(
        (1..=100).contains(&listed),
        "{listed} errors listed for 100,000 unknown values"
    );
    assert_eq!(error["errors"][0]["rule"], "unknown_field", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|text| text.contains("100000")),
        "the message does not count the problems: {error}"
    );
    assert!(
        response.body.len() < 64 * 1024,
        "the 422 body has {} bytes",
        response.body.len()
    );
    memory.assert_bounded("100,000 values");

    // 100,000 context keys: the first unknown key stops the parser.
    let context: serde_json::Map<String, Value> =
        names.iter().map(|name| (name.clone(), json!(0))).collect();
    let body = serde_json::to_vec(&json!({ "context": context })).expect("serialise the body");
    assert!(body.len() < 1024 * 1024, "{} bytes", body.len());
    let memory = MemoryProbe::start(&service);
    let response = exchange(&service.socket, &post_json(&jobs), Body::Fixed(body)).await;
    let error = response.assert_error(422, "invalid_body");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|text| text.contains("unknown field")),
        "{error}"
    );
    // One known key 60,000 times (about 900 KB) is a duplicate at the second.
    let mut repeated = String::from("{\"context\": {");
    for index in 0..60_000 {
        if index > 0 {
            repeated.push(',');
        }
        repeated.push_str("\"user-name\":\"\"");
    }
    repeated.push_str("}}");
    let response = exchange(
        &service.socket,
        &post_json(&jobs),
        Body::Fixed(repeated.into_bytes()),
    )
    .await;
    let error = response.assert_error(422, "invalid_body");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|text| text.contains("duplicate field")),
        "{error}"
    );
    memory.assert_bounded("100,000 context keys");

    // 100,000 env variables, each with a value that is neither a string nor null.
    let invalid_env: serde_json::Map<String, Value> =
        names.iter().map(|name| (name.clone(), json!(0))).collect();
    let body = serde_json::to_vec(&invalid_env).expect("serialise the body");
    assert!(body.len() < 1024 * 1024, "{} bytes", body.len());
    let memory = MemoryProbe::start(&service);
    let head = format!(
        "PATCH /v1/integrations/{agent_id}/env HTTP/1.1\r\nhost: agentrun\r\n\
         content-type: application/merge-patch+json\r\n"
    );
    let response = exchange(&service.socket, &head, Body::Fixed(body)).await;
    let error = response.assert_error(422, "invalid_env");
    let listed = error["errors"].as_array().map_or(0, Vec::len);
    assert!(
        (1..=100).contains(&listed),
        "{listed} errors listed for 100,000 invalid variables"
    );
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|text| text.contains("100000")),
        "the message does not count the problems: {error}"
    );
    assert!(
        response.body.len() < 64 * 1024,
        "the 422 body has {} bytes",
        response.body.len()
    );
    memory.assert_bounded("100,000 invalid env variables");

    // 100,000 multipart parts: the first unknown part ends the request.
    let boundary = "abuse-boundary";
    let mut parts = Vec::new();
    for index in 0..100_000 {
        parts.extend_from_slice(&part_head(boundary, &format!("p{index}")));
        parts.extend_from_slice(b"x\r\n");
    }
    parts.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let memory = MemoryProbe::start(&service);
    let response = exchange(
        &service.socket,
        &post_multipart("/v1/integrations", boundary),
        Body::Fixed(parts),
    )
    .await;
    let error = response.assert_error(422, "unknown_part");
    assert_eq!(error["errors"][0]["field"], "p0", "{error}");
    memory.assert_bounded("100,000 multipart parts");
}

/// A header block past hyper's limits is answered by hyper itself: 431 with an empty body for
/// too many or too large headers and 414 for a long URI, each closing the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_get_431() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;
    let memory = MemoryProbe::start(&service);

    let big_value = "v".repeat(1024 * 1024);
    let one_big = format!("GET /healthz HTTP/1.1\r\nhost: agentrun\r\nx-big: {big_value}\r\n");
    let response = exchange(&service.socket, &one_big, Body::Empty).await;
    assert_eq!(response.status, Some(431), "{response:?}");

    let mut many = String::from("GET /healthz HTTP/1.1\r\nhost: agentrun\r\n");
    for index in 0..1000 {
        many.push_str(&format!("x-header-{index}: {index}\r\n"));
    }
    let response = exchange(&service.socket, &many, Body::Empty).await;
    assert_eq!(response.status, Some(431), "{response:?}");

    let long_uri = format!(
        "GET /v1/jobs?integration={} HTTP/1.1\r\nhost: agentrun\r\n",
        "u".repeat(1024 * 1024)
    );
    let response = exchange(&service.socket, &long_uri, Body::Empty).await;
    assert!(
        matches!(response.status, Some(414) | Some(431)),
        "{response:?}"
    );

    // An endless header line: the service stops reading once its header buffer is full.
    let stream = UnixStream::connect(&service.socket).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: agentrun\r\nx-endless: ")
            .await;
        let filler = vec![b'e'; 64 * 1024];
        for _ in 0..(HUGE_BYTES / filler.len()) {
            if writer.write_all(&filler).await.is_err() {
                break;
            }
        }
    });
    let response = tokio::time::timeout(EXCHANGE_TIMEOUT, read_response(&mut reader))
        .await
        .expect("a response or a closed connection within the deadline");
    writing.abort();
    assert!(matches!(response.status, Some(431) | None), "{response:?}");

    memory.assert_bounded("huge headers");
    assert_eq!(service.client().get("/healthz").await.status, 200);
}

/// Slow clients are cut off: headers dribbled past `api.header_read_timeout_secs` lose the
/// connection without a response, and a body dribbled past `api.request_timeout_secs` gets
/// 408 with a JSON error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;

    // Headers, one byte every 100 ms: about 5 s for the whole header block, past the 2 s
    // deadline, although every byte arrives well within it.
    let head = b"GET /healthz HTTP/1.1\r\nhost: agentrun\r\nx-slow: dribbled\r\n\r\n";
    let stream = UnixStream::connect(&service.socket).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let writing = tokio::spawn(async move {
        for byte in head {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let response = tokio::time::timeout(EXCHANGE_TIMEOUT, read_response(&mut reader))
        .await
        .expect("the service closes the connection within the deadline");
    writing.abort();
    assert_eq!(
        response.status, None,
        "the request was served: {response:?}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "the connection stayed open for {elapsed:?}, past the 2 s header deadline"
    );

    // A body, 16 bytes every 500 ms: 64 s for 2 KiB, past the 4 s request deadline.
    let body = serde_json::to_vec(&json!({ "values": { "message": "m".repeat(2048) } }))
        .expect("serialise the body");
    let response = exchange(
        &service.socket,
        &post_json(MISSING_JOBS),
        Body::Dribbled {
            bytes: body,
            step: 16,
            pause: Duration::from_millis(500),
        },
    )
    .await;
    let error = response.assert_error(408, "request_timeout");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|text| text.contains("api.request_timeout_secs")),
        "{error}"
    );
    assert_eq!(service.client().get("/healthz").await.status, 200);
}

/// Many idle connections cost bounded memory and are closed after the header deadline, and the
/// service still responds. A keep-alive connection that goes idle after a request is closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    const IDLE: usize = 1000;
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;
    let memory = MemoryProbe::start(&service);

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(
            UnixStream::connect(&service.socket)
                .await
                .expect("connect an idle client"),
        );
    }
    // Every idle connection is closed by the service: reading returns end of file.
    let closing = idle.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            let mut buffer = [0u8; 256];
            tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buffer)).await
        })
    });
    let mut closed = 0;
    for task in closing {
        if let Ok(Ok(Ok(0))) = task.await {
            closed += 1;
        }
    }
    assert_eq!(closed, IDLE, "idle connections left open");
    memory.assert_bounded("1000 idle connections");
    assert_eq!(service.client().get("/healthz").await.status, 200);

    // Keep-alive: one request, then silence.
    let mut stream = UnixStream::connect(&service.socket).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: agentrun\r\n\r\n")
        .await
        .expect("send a request");
    let (mut reader, _writer) = stream.into_split();
    let first = tokio::time::timeout(EXCHANGE_TIMEOUT, read_response(&mut reader))
        .await
        .expect("a response");
    assert_eq!(first.status, Some(200), "{first:?}");
    let mut buffer = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(30), reader.read(&mut buffer))
        .await
        .expect("the idle keep-alive connection is closed within 30 s");
    assert!(matches!(read, Ok(0) | Err(_)), "unexpected bytes: {read:?}");
}

/// A section element without a section selects the section that contains it; an unknown one
/// gets 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_element_without_section() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;
    let client = service.client();
    register_shell(&client, dir.path(), "Nodes", Value::Null).await;

    let response = client.get("/v1/actions?section_element=nodes").await;
    assert_eq!(response.status, 200, "{}", response.text());
    let names: Vec<Value> = response.json()["actions"]
        .as_array()
        .expect("actions list")
        .iter()
        .map(|action| action["name"].clone())
        .collect();
    assert_eq!(names, [json!("Nodes")]);
    let response = client.get("/v1/actions?section_element=report").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["actions"], json!([]));

    let response = client.get("/v1/actions?section_element=sidebar").await;
    assert_eq!(response.status, 422, "{}", response.text());
    let error = response.json();
    assert_eq!(error["errors"][0]["field"], "section_element", "{error}");
    let response = client
        .get("/v1/actions?section=collaborate&section_element=nodes")
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
}

/// A page size outside 1 to 1000 gets 422 instead of being clamped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_limit_out_of_range_gets_422() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;
    let client = service.client();
    for limit in ["0", "1001", "18446744073709551615"] {
        let response = client.get(&format!("/v1/jobs?limit={limit}")).await;
        assert_eq!(response.status, 422, "limit={limit}: {}", response.text());
        let error = response.json();
        assert_eq!(error["error"], "invalid_query", "{error}");
        assert_eq!(error["errors"][0]["field"], "limit", "{error}");
    }
    for limit in ["1", "1000"] {
        let response = client.get(&format!("/v1/jobs?limit={limit}")).await;
        assert_eq!(response.status, 200, "limit={limit}: {}", response.text());
    }
    // A number past u64 or a word is rejected by the query parser, also with 422 naming the
    // parameter.
    for limit in ["18446744073709551616", "abc"] {
        let response = client.get(&format!("/v1/jobs?limit={limit}")).await;
        assert_eq!(response.status, 422, "limit={limit}: {}", response.text());
        let error = response.json();
        assert_eq!(error["error"], "invalid_query", "{error}");
        assert_eq!(error["errors"][0]["field"], "limit", "{error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("invalid query: limit: "), "{error}");
    }
}

/// A package that is not a zip gets 422 naming the part, not the service's upload path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_package_hides_paths() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(dir.path(), CONFIG).await;
    let response = service
        .client()
        .multipart(
            "POST",
            "/v1/integrations",
            &[("package", "application/zip", b"not a zip".to_vec())],
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    let error = response.json();
    assert_eq!(error["error"], "invalid_package", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("the package part is a text file, not a zip archive: upload a .zip"),
        "{error}"
    );
    assert!(!message.contains("folder that contains"), "{error}");
    let data_dir = dir.path().join("data").display().to_string();
    assert!(!response.text().contains(&data_dir), "{error}");
}

/// An env patch of 50,000 variables is stored, and its log line names only the first 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_patch_log_line_is_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = CONFIG.replace("request_timeout_secs = 4", "request_timeout_secs = 300");
    let service = start_service(dir.path(), &config).await;
    let client = service.client();
    let agent_id = register_shell(&client, dir.path(), "Env", Value::Null).await;

    let patch: serde_json::Map<String, Value> = (0..50_000)
        .map(|index| (format!("V{index}"), json!("")))
        .collect();
    let started = Instant::now();
    let response = client
        .json(
            "PATCH",
            &format!("/v1/integrations/{agent_id}/env"),
            &Value::Object(patch),
        )
        .await;
    eprintln!("PATCH of 50,000 variables: {:?}", started.elapsed());
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json()["env"].as_array().map(Vec::len),
        Some(50_000)
    );

    let logs = service.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("env updated"))
        .unwrap_or_else(|| panic!("no env update in the log:\n{logs}"));
    assert!(line.contains("env_count=50000"), "{line}");
    assert!(line.len() < 4096, "the log line has {} bytes", line.len());
}
