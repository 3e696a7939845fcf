//! Helpers for the service tests: start `agentrun serve` as a child process, talk HTTP to it
//! over its Unix socket or TCP, build packages and multipart bodies, and run a webhook server.
//!
//! Include with `#[path = "common/service.rs"] mod harness;`. Every wait has a timeout.

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Timeout of one HTTP request, including `?wait=true` ones.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Maximum wait for the service to respond on `/healthz` after start.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a request goes.
#[derive(Clone, Debug)]
pub enum Address {
    /// The Unix socket.
    Unix(PathBuf),
    /// A TCP address, such as `127.0.0.1:8080`.
    Tcp(String),
}

/// A response with its body read.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// Parses the body as JSON, panicking with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "response body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Returns the body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Records every response body, to check later that no secret appeared in any.
#[derive(Clone, Debug, Default)]
pub struct Transcript(Arc<Mutex<Vec<u8>>>);

impl Transcript {
    fn push(&self, bytes: &[u8]) {
        let mut all = self.0.lock().expect("transcript lock");
        all.extend_from_slice(bytes);
        all.push(b'\n');
    }

    /// Returns everything recorded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("transcript lock")).into_owned()
    }
}

/// An HTTP client for one address that records response bodies.
#[derive(Clone, Debug)]
pub struct Client {
    /// Where requests go.
    pub address: Address,
    /// Extra headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// Every response body.
    pub transcript: Transcript,
}

impl Client {
    /// Creates a client for `address`.
    pub fn new(address: Address) -> Self {
        Self {
            address,
            headers: Vec::new(),
            transcript: Transcript::default(),
        }
    }

    /// Returns a client that sends `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: &str) -> Self {
        let mut client = self.clone();
        client
            .headers
            .push(("authorization".to_owned(), format!("Bearer {token}")));
        client
    }

    /// Sends one request on a new connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Response {
        let response =
            tokio::time::timeout(REQUEST_TIMEOUT, self.send(method, path, content_type, body))
                .await
                .unwrap_or_else(|_| panic!("{method} {path} timed out"));
        self.transcript.push(&response.body);
        response
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Response {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "agentrun");
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .expect("valid request");

        let response = match &self.address {
            Address::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .unwrap_or_else(|error| panic!("connect {}: {error}", path.display()));
                send_on(stream, request).await
            }
            Address::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .unwrap_or_else(|error| panic!("connect {address}: {error}"));
                send_on(stream, request).await
            }
        };
        response
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        self.request("GET", path, None, Vec::new()).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, None, Vec::new()).await
    }

    /// Sends a request with a JSON body.
    pub async fn json(&self, method: &str, path: &str, body: &serde_json::Value) -> Response {
        self.request(
            method,
            path,
            Some("application/json"),
            serde_json::to_vec(body).expect("JSON body"),
        )
        .await
    }

    /// Sends a multipart request with the given parts: `(name, content type, bytes)`.
    pub async fn multipart(
        &self,
        method: &str,
        path: &str,
        parts: &[(&str, &str, Vec<u8>)],
    ) -> Response {
        let (content_type, body) = multipart_body(parts);
        self.request(method, path, Some(&content_type), body).await
    }
}

async fn send_on<S>(stream: S, request: Request<Full<Bytes>>) -> Response
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await.expect("send request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("read response body")
        .to_bytes()
        .to_vec();
    Response {
        status,
        headers,
        body,
    }
}

/// Builds a `multipart/form-data` body; returns the content type and the body.
pub fn multipart_body(parts: &[(&str, &str, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = format!("agentrun-test-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    for (name, content_type, bytes) in parts {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
             filename=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
        )
        .expect("write to vec");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").expect("write to vec");
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Zips the folder `dir` (files only, paths relative to it) into memory.
pub fn zip_folder(dir: &Path) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o644);
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files);
    files.sort();
    for (relative, path) in files {
        writer
            .start_file(relative, options)
            .expect("start zip entry");
        writer
            .write_all(&std::fs::read(&path).expect("read package file"))
            .expect("write zip entry");
    }
    writer.finish().expect("finish zip").into_inner()
}

fn collect_files(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).expect("read package folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect_files(root, &path, files);
        } else {
            let relative = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            files.push((relative, path));
        }
    }
}

/// Returns the repository root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Shell agent for the tests, run by `/bin/sh` on the subprocess backend and by busybox in a
/// container. It replies with a heartbeat to `describe`. For `work` it appends its job id to
/// `$RUN_LOG` when set, sleeps for the `sleep` field's seconds, and replies with
/// `done <job id>`. With `$FAIL_DESCRIBE` set it fails every health check.
pub const SHELL_AGENT: &str = r#"#!/bin/sh
read -r line || true
case "$line" in
  *'"type":"describe"'*)
    if [ -n "$FAIL_DESCRIBE" ]; then echo "shell agent: describe fails on request" >&2; exit 3; fi
    echo '{"type":"heartbeat"}'; exit 0 ;;
esac
id=$(printf '%s' "$line" | sed -n 's/.*"job_id":\([0-9]*\).*/\1/p')
seconds=$(printf '%s' "$line" | sed -n 's/.*"name":"sleep","value":"\([0-9]*\)".*/\1/p')
if [ -n "$RUN_LOG" ]; then echo "$id" >> "$RUN_LOG"; fi
echo "shell agent: job $id" >&2
if [ -n "$seconds" ] && [ "$seconds" != "0" ]; then sleep "$seconds"; fi
printf '{"type":"info","job_id":%s,"payload":{"message":"done %s"},"return_code":0}\n' "$id" "$id"
"#;

/// Manifest JSON of the shell agent's integration called `name`.
pub fn shell_manifest(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "section": "canvas",
        "section_element": "nodes",
        "fields": [
            {"name": "sleep", "value": "0", "regex": "[0-9]{1,3}",
             "validation_message": "Give the seconds to sleep as a number."}
        ]
    })
}

/// Registers the shell agent's integration called `name`, with `env` as the manifest's `[env]`
/// unless it is `null`, and waits until it is ready. Returns its agentID.
pub async fn register_shell(client: &Client, dir: &Path, name: &str, env: Value) -> String {
    let mut manifest = shell_manifest(name);
    if !env.is_null() {
        manifest["env"] = env;
    }
    register_manifest(client, dir, manifest).await
}

/// Registers the shell agent's package with `manifest` as the manifest part, and waits until
/// the integration is ready. Returns its agentID.
pub async fn register_manifest(client: &Client, dir: &Path, manifest: Value) -> String {
    let name = manifest["name"].as_str().unwrap_or("unnamed").to_owned();
    let zip = shell_package(&dir.join(format!("package-{name}")));
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[
                (
                    "manifest",
                    "application/json",
                    manifest.to_string().into_bytes(),
                ),
                ("package", "application/zip", zip),
            ],
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let agent_id = response.json()["agent_id"]
        .as_str()
        .expect("agent_id in response")
        .to_owned();
    wait_integration_ready(client, &agent_id).await;
    agent_id
}

/// Writes the shell agent's package (a Dockerfile on `agentrun-busybox`) into `dir` and
/// returns it zipped.
pub fn shell_package(dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir).expect("create package folder");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM agentrun-busybox:latest\nCOPY agent.sh /agent.sh\nENTRYPOINT [\"/bin/sh\", \"/agent.sh\"]\n",
    )
    .expect("write Dockerfile");
    std::fs::write(dir.join("agent.sh"), SHELL_AGENT).expect("write agent");
    zip_folder(dir)
}

/// A running `agentrun serve` child process.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Option<Child>,
    /// Folder with the configuration, the data folder, the socket and the log.
    pub dir: PathBuf,
    /// The API's Unix socket.
    pub socket: PathBuf,
    /// The service's stderr.
    pub log: PathBuf,
}

impl ServiceProcess {
    /// Writes `config` (TOML without `data_dir` and `[listen] unix`, which are added) into
    /// `dir/agentrun.toml` and starts the service with it and `env`.
    pub fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        let socket = dir.join("api.sock");
        let data = dir.join("data");
        let config_path = dir.join("agentrun.toml");
        let full = format!(
            "data_dir = {:?}\nshutdown_grace_secs = 10\n{config}\n",
            data.display().to_string()
        );
        let full = if full.contains("[listen]") {
            full.replace(
                "[listen]",
                &format!("[listen]\nunix = {:?}", socket.display().to_string()),
            )
        } else {
            format!(
                "{full}\n[listen]\nunix = {:?}\n",
                socket.display().to_string()
            )
        };
        std::fs::write(&config_path, full).expect("write config");
        Self::spawn(
            dir,
            &["serve", "--config", &config_path.to_string_lossy()],
            env,
        )
    }

    /// Starts the binary with `args` and `env` in `dir`, without writing a configuration.
    pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = dir.join(format!("service-{}.log", uuid::Uuid::new_v4().simple()));
        let log_file = std::fs::File::create(&log).expect("create log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentrun"));
        command
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            // No user configuration of the machine running the tests.
            .env("XDG_CONFIG_HOME", dir.join("xdg"))
            // Agents' HOME folders inside the test's folder: a service that the test kills with
            // SIGKILL (as dropping this value does) cannot remove those of its running jobs.
            .env("TMPDIR", dir)
            .env("AGENTRUN_LOG", "agentrun=debug,info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY");
        for (key, _) in std::env::vars() {
            if key.starts_with("AGENTRUN_") && key != "AGENTRUN_LOG" {
                command.env_remove(key);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        // Its own process group, so that a test killing the service cannot hit the test runner.
        command.process_group(0);
        let child = command.spawn().expect("start agentrun serve");
        Self {
            child: Some(child),
            dir: dir.to_owned(),
            socket: dir.join("api.sock"),
            log,
        }
    }

    /// Returns a client for the Unix socket.
    pub fn client(&self) -> Client {
        Client::new(Address::Unix(self.socket.clone()))
    }

    /// Waits until `/healthz` returns 200, failing with the log when the process exits first.
    pub async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_status() {
                panic!(
                    "the service exited with {status} before it was ready:\n{}",
                    self.logs()
                );
            }
            // A socket file left by a killed process refuses connections until the new
            // process replaces it.
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                let client = Client::new(Address::Unix(self.socket.clone()));
                let response = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.send("GET", "/healthz", None, Vec::new()),
                )
                .await;
                if response.is_ok_and(|response| response.status == 200) {
                    return;
                }
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the service was not ready within {START_TIMEOUT:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().expect("poll child"))
    }

    /// Returns the process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("child running").id() as i32
    }

    /// Sends a signal to the service.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid this test started and a valid signal number has no memory
        // effects in this process.
        let result = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(result, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits for the process to exit, at most `timeout`, and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_status() {
                self.child = None;
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "the service did not exit within {timeout:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the service with SIGKILL and waits for it.
    pub async fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10)).await;
    }

    /// Returns the service's log output so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A webhook server on 127.0.0.1 that records each request body.
#[derive(Debug)]
pub struct Webhook {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Bodies received, by path.
    pub received: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    /// Starts the server.
    pub async fn start() -> Self {
        let received: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook server");
        let address = listener.local_addr().expect("local address");
        let store = Arc::clone(&received);
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let store = Arc::clone(&store);
            async move {
                let path = request.uri().path().to_owned();
                let body = axum::body::to_bytes(request.into_body(), 1024 * 1024)
                    .await
                    .unwrap_or_default();
                store
                    .lock()
                    .expect("webhook lock")
                    .push((path, String::from_utf8_lossy(&body).into_owned()));
                "ok"
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url: format!("http://{address}"),
            received,
            task,
        }
    }

    /// Returns the requests received so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.received.lock().expect("webhook lock").clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the integration's state is `ready` and returns it; fails on `failed`.
pub async fn wait_integration_ready(client: &Client, agent_id: &str) -> serde_json::Value {
    wait_for(
        "the integration to be ready",
        Duration::from_secs(300),
        || async {
            let response = client.get(&format!("/v1/integrations/{agent_id}")).await;
            assert_eq!(response.status, 200, "{}", response.text());
            let body = response.json();
            match body["state"].as_str() {
                Some("ready") => Some(body),
                Some("failed") => panic!("the build failed: {body}"),
                _ => None,
            }
        },
    )
    .await
}

/// Waits until the job has a final state and returns it.
pub async fn wait_job_final(client: &Client, job_id: u64, timeout: Duration) -> serde_json::Value {
    wait_for("the job to end", timeout, || async {
        let response = client.get(&format!("/v1/jobs/{job_id}")).await;
        assert_eq!(response.status, 200, "{}", response.text());
        let body = response.json();
        match body["state"].as_str() {
            Some("queued") | Some("running") => None,
            _ => Some(body),
        }
    })
    .await
}

/// Waits until the job is `running`.
pub async fn wait_job_running(client: &Client, job_id: u64) {
    wait_for("the job to run", Duration::from_secs(60), || async {
        let body = client.get(&format!("/v1/jobs/{job_id}")).await.json();
        (body["state"] == "running").then_some(())
    })
    .await;
}

/// Returns the ids of processes whose environment contains `NAME=value` (`entry`).
pub fn processes_with_env(entry: &str) -> Vec<u32> {
    let needle = format!("{entry}\0");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for process in entries.flatten() {
        let Ok(pid) = process.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Processes that end meanwhile, or belong to others, cannot be read: skip them.
        let Ok(environ) = std::fs::read(process.path().join("environ")) else {
            continue;
        };
        if environ
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// Returns the ids of containers carrying `label=value`, in any state.
pub fn labelled_containers(label: &str, value: &str) -> Vec<String> {
    docker_ps(&["-aq", "--filter", &format!("label={label}={value}")])
}

/// Returns the ids of running containers carrying `label=value`.
pub fn running_containers(label: &str, value: &str) -> Vec<String> {
    docker_ps(&[
        "-q",
        "--filter",
        &format!("label={label}={value}"),
        "--filter",
        "status=running",
    ])
}

fn docker_ps(args: &[&str]) -> Vec<String> {
    let output = Command::new("docker")
        .arg("ps")
        .args(args)
        .output()
        .expect("run docker ps");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|line| !line.is_empty())
        .collect()
}

/// Runs the Slack example end to end: register, actions, form with keywords, a job against a
/// local webhook and its result. No env value may appear in any response or log line.
pub async fn slack_end_to_end(config: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let webhook = Webhook::start().await;
    let secret = format!("secret-{}", uuid::Uuid::new_v4().simple());
    let hook_url = format!("{}/services/T000/{secret}", webhook.base_url);
    let mut service = ServiceProcess::start(dir.path(), config, &[]);
    service.wait_ready().await;
    let client = service.client();

    // Register with a manifest part that carries the webhook URL as env.
    let manifest_toml =
        std::fs::read_to_string(workspace_root().join("examples/slack/integration.toml"))
            .expect("read the Slack manifest");
    let mut manifest: Value = toml::from_str::<toml::Value>(&manifest_toml)
        .map(|value| serde_json::to_value(value).expect("TOML to JSON"))
        .expect("Slack manifest parses");
    manifest["env"] = json!({ "url": hook_url });
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[
                (
                    "manifest",
                    "application/json",
                    manifest.to_string().into_bytes(),
                ),
                ("package", "application/zip", slack_zip()),
            ],
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let created = response.json();
    assert_eq!(created["name"], "Slack");
    assert_eq!(created["env"], json!(["url"]));
    let agent_id = created["agent_id"].as_str().expect("agent_id").to_owned();
    assert_eq!(agent_id, "f2fe62ed-03c8-5f57-a801-e8322d208e7d");
    let ready = wait_integration_ready(&client, &agent_id).await;
    // The first health check runs right after the build.
    assert_eq!(ready["manifest"]["env"], Value::Null, "{ready}");

    // Actions for collaborate/report list it; canvas/nodes does not.
    let actions = client
        .get("/v1/actions?section=collaborate&section_element=report")
        .await
        .json();
    let names: Vec<&str> = actions["actions"]
        .as_array()
        .expect("actions list")
        .iter()
        .filter_map(|action| action["name"].as_str())
        .collect();
    assert_eq!(names, ["Slack"]);
    let canvas = client
        .get("/v1/actions?section=canvas&section_element=nodes")
        .await
        .json();
    assert_eq!(canvas["actions"], json!([]));

    // The form has SIFT-USER-NAME and the report keywords substituted.
    let context = json!({
        "user-name": "alice@example.com",
        "report-name": "Q3 incident",
        "report-url": "https://sift.example/r/42"
    });
    let form = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/form"),
            &json!({ "context": context }),
        )
        .await;
    assert_eq!(form.status, 200, "{}", form.text());
    let form = form.json();
    assert_eq!(
        form["fields"][0]["value"],
        "alice@example.com shared the report Q3 incident: https://sift.example/r/42"
    );
    assert_eq!(form["fields"][0]["name"], "message");

    // A job with the prefilled message, waited for.
    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs?wait=true"),
            &json!({ "values": {}, "context": context }),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let job = response.json();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["status"], "succeeded");
    assert_eq!(job["result"]["message"], "Message sent to Slack.");
    assert_eq!(job["result"]["return_code"], 0);
    let job_id = job["job_id"].as_u64().expect("job_id");
    assert_eq!(job["result"]["job_id"].as_u64(), Some(job_id));

    let requests = webhook.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].0, format!("/services/T000/{secret}"));
    let posted: Value = serde_json::from_str(&requests[0].1).expect("webhook body is JSON");
    assert_eq!(
        posted["text"],
        "alice@example.com shared the report Q3 incident: https://sift.example/r/42"
    );

    // The job reads back the same, and lists under its integration.
    let shown = client.get(&format!("/v1/jobs/{job_id}")).await.json();
    assert_eq!(shown["result"], job["result"]);
    let listed = client
        .get(&format!("/v1/jobs?integration={agent_id}&state=succeeded"))
        .await
        .json();
    assert_eq!(listed["jobs"][0]["job_id"].as_u64(), Some(job_id));

    // An env update returns names only.
    let second_secret = format!("token-{}", uuid::Uuid::new_v4().simple());
    let patched = client
        .json(
            "PATCH",
            &format!("/v1/integrations/{agent_id}/env"),
            &json!({ "API_TOKEN": second_secret }),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["env"], json!(["url", "API_TOKEN"]));

    // Health, metrics and the whole integration listing, then the secrets check.
    let health = client
        .request(
            "POST",
            &format!("/v1/integrations/{agent_id}/describe"),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["health"]["healthy"], true);
    let metrics = client.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .contains("agentrun_jobs{integration=\"Slack\",state=\"succeeded\"} 1"),
        "{}",
        metrics.text()
    );
    client.get("/v1/integrations").await;
    client.get(&format!("/v1/integrations/{agent_id}")).await;

    service.signal(libc::SIGTERM);
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", service.logs());

    let transcript = client.transcript.text();
    let logs = service.logs();
    for value in [&secret, &second_secret] {
        assert!(
            !transcript.contains(value.as_str()),
            "an API response contains an env value"
        );
        assert!(
            !logs.contains(value.as_str()),
            "the service log contains an env value"
        );
    }
    assert!(logs.contains("job finished"), "{logs}");
}

/// Returns the Slack example zipped.
pub fn slack_zip() -> Vec<u8> {
    zip_folder(&workspace_root().join("examples/slack"))
}
