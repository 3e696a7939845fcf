//! Resident memory of the service: the release `agentrun serve` binary, started on the
//! subprocess executor with a temporary data folder and Unix socket, measured from
//! `/proc/<pid>/status` after start-up, idle after some jobs, and with a full queue.
//!
//! The queue is held by the limits: `jobs.concurrency` and `jobs.per_integration` are 1, and
//! one job whose agent sleeps for an hour takes that slot, so every job submitted after it
//! stays queued. The figures therefore include the store's and the scheduler's cost per queued
//! job, which is what the queued figure is for.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Jobs run before the idle figure, so that it includes what running jobs leave allocated.
pub const IDLE_JOBS: usize = 100;

/// Idle target of the service's resident memory, in bytes.
const IDLE_TARGET_BYTES: u64 = 20 * 1000 * 1000;

/// Target of the service's resident memory with the queue full, in bytes.
const QUEUED_TARGET_BYTES: u64 = 100 * 1000 * 1000;

/// Connections that submit the queued jobs at once.
const SUBMIT_CONNECTIONS: usize = 4;

/// Maximum time for the service to respond after its start, and for one request.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Pause after the last job before an idle reading, so that finished jobs' tasks have ended.
const SETTLE: Duration = Duration::from_secs(1);

/// Agent of the measured integration: it replies to `describe` with a heartbeat, and to `work`
/// after sleeping for the `sleep` field's seconds.
const AGENT: &str = r#"#!/bin/sh
read -r line || true
case "$line" in
  *'"type":"describe"'*) echo '{"type":"heartbeat"}'; exit 0 ;;
esac
id=$(printf '%s' "$line" | sed -n 's/.*"job_id":\([0-9]*\).*/\1/p')
seconds=$(printf '%s' "$line" | sed -n 's/.*"name":"sleep","value":"\([0-9]*\)".*/\1/p')
if [ -n "$seconds" ] && [ "$seconds" != "0" ]; then sleep "$seconds"; fi
printf '{"type":"info","job_id":%s,"payload":{"message":"slept %s s"},"return_code":0}\n' "$id" "$seconds"
"#;

const DOCKERFILE: &str =
    "FROM agentrun-busybox:latest\nCOPY agent.sh /agent.sh\nENTRYPOINT [\"/bin/sh\", \"/agent.sh\"]\n";

const MANIFEST: &str = "name = \"Bench memory\"\n\n[[fields]]\nname = \"sleep\"\nlabel = \"Seconds to sleep\"\nregex = \"[0-9]{1,4}\"\n";

/// One reading of the service's `/proc/<pid>/status`.
#[derive(Clone, Debug)]
pub struct MemoryRow {
    /// The service's activity at the reading, such as `idle after 100 jobs`.
    pub figure: String,
    /// `VmRSS`: resident memory now, in bytes.
    pub rss_bytes: u64,
    /// `VmHWM`: the largest resident memory so far, in bytes.
    pub hwm_bytes: u64,
    /// `RssAnon`: the anonymous part of `VmRSS` (heap and stacks), in bytes. The rest is mostly
    /// the binary's own pages.
    pub anon_bytes: u64,
    /// Threads of the process.
    pub threads: u64,
    /// The target for `VmRSS`, in bytes, when this figure has one.
    pub target_bytes: Option<u64>,
}

/// Starts the service and returns its memory after start-up, idle after [`IDLE_JOBS`] jobs, and
/// with `queued` jobs queued.
pub async fn measure(queued: usize) -> Result<Vec<MemoryRow>, String> {
    let dir =
        tempfile::tempdir().map_err(|error| format!("creating a temp dir failed: {error}"))?;
    let mut service = Service::start(dir.path())?;
    let result = measure_with(&mut service, queued).await;
    service.stop().await;
    result.map_err(|error| format!("{error}\nservice log:\n{}", service.log_tail()))
}

async fn measure_with(service: &mut Service, queued: usize) -> Result<Vec<MemoryRow>, String> {
    let mut rows = Vec::new();
    service.wait_ready().await?;
    rows.push(service.read_status("started, no integration", None)?);

    // Register the integration and run jobs to completion.
    let api = Api::new(service.socket.clone());
    let mut connection = api.connect().await?;
    let agent_id = register(&api, &mut connection).await?;
    let jobs_path = format!("/v1/integrations/{agent_id}/jobs");
    for _ in 0..IDLE_JOBS {
        let (status, body) = api
            .send_json(
                &mut connection,
                &format!("{jobs_path}?wait=true"),
                r#"{"values":{"sleep":"0"}}"#,
            )
            .await?;
        if status != 200 || body["state"] != "succeeded" {
            return Err(format!("a job ended with HTTP {status}: {body}"));
        }
    }
    tokio::time::sleep(SETTLE).await;
    rows.push(service.read_status(
        &format!("idle after {IDLE_JOBS} jobs"),
        Some(IDLE_TARGET_BYTES),
    )?);

    // Take the only slot, then fill the queue behind it.
    let (status, body) = api
        .send_json(
            &mut connection,
            &jobs_path,
            r#"{"values":{"sleep":"3600"}}"#,
        )
        .await?;
    if status != 202 {
        return Err(format!(
            "submitting the slot-holding job got HTTP {status}: {body}"
        ));
    }
    let holder = body["job_id"].as_u64().unwrap_or_default();
    wait_state(&api, &mut connection, holder, "running").await?;
    submit_queued(&api, &jobs_path, queued).await?;
    rows.push(service.read_status(
        &format!("{queued} jobs queued, 1 running"),
        Some(QUEUED_TARGET_BYTES),
    )?);

    // Each submission was queued, and with the slot still taken none of them has run since.
    wait_state(&api, &mut connection, holder, "running").await?;
    Ok(rows)
}

/// Registers the integration and waits until it is ready. Returns its agent id.
async fn register(api: &Api, connection: &mut SendRequest<Full<Bytes>>) -> Result<String, String> {
    let package = package_zip()?;
    let boundary = "agentrun-bench-memory";
    let mut body = Vec::new();
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"package.zip\"\r\nContent-Type: application/zip\r\n\r\n"
    )
    .map_err(|error| error.to_string())?;
    body.extend_from_slice(&package);
    write!(body, "\r\n--{boundary}--\r\n").map_err(|error| error.to_string())?;
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let (status, body) = api
        .send(
            connection,
            "POST",
            "/v1/integrations",
            Some(&content_type),
            body,
        )
        .await?;
    if status != 202 {
        return Err(format!(
            "registering the integration got HTTP {status}: {body}"
        ));
    }
    let agent_id = body["agent_id"]
        .as_str()
        .ok_or_else(|| format!("the registration response has no agent_id: {body}"))?
        .to_owned();

    let started = Instant::now();
    loop {
        let (_, body) = api
            .get(connection, &format!("/v1/integrations/{agent_id}"))
            .await?;
        match body["state"].as_str() {
            Some("ready") => return Ok(agent_id),
            Some("building") if started.elapsed() < TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return Err(format!("the integration did not become ready: {body}")),
        }
    }
}

/// Returns the integration's package as a zip archive.
fn package_zip() -> Result<Vec<u8>, String> {
    let files = [
        ("Dockerfile", DOCKERFILE),
        ("agent.sh", AGENT),
        ("integration.toml", MANIFEST),
    ];
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o644);
    for (name, text) in files {
        writer
            .start_file(name, options)
            .map_err(|error| format!("zipping {name} failed: {error}"))?;
        writer
            .write_all(text.as_bytes())
            .map_err(|error| format!("zipping {name} failed: {error}"))?;
    }
    let zipped = writer
        .finish()
        .map_err(|error| format!("zipping the package failed: {error}"))?
        .into_inner();
    Ok(zipped)
}

/// Waits until job `id` is in `state`, for at most [`TIMEOUT`] while it is queued.
async fn wait_state(
    api: &Api,
    connection: &mut SendRequest<Full<Bytes>>,
    id: u64,
    state: &str,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let (_, body) = api.get(connection, &format!("/v1/jobs/{id}")).await?;
        match body["state"].as_str() {
            Some(found) if found == state => return Ok(()),
            Some("queued") if started.elapsed() < TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return Err(format!("job {id} is not {state}: {body}")),
        }
    }
}

/// Submits `count` jobs over [`SUBMIT_CONNECTIONS`] connections and checks that each is queued.
async fn submit_queued(api: &Api, jobs_path: &str, count: usize) -> Result<(), String> {
    let mut tasks = Vec::new();
    for worker in 0..SUBMIT_CONNECTIONS {
        let share = count / SUBMIT_CONNECTIONS + usize::from(worker < count % SUBMIT_CONNECTIONS);
        let api = api.clone();
        let path = jobs_path.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut connection = api.connect().await?;
            for _ in 0..share {
                let (status, body) = api
                    .send_json(&mut connection, &path, r#"{"values":{"sleep":"0"}}"#)
                    .await?;
                if status != 202 || body["state"] != "queued" {
                    return Err(format!("a submission got HTTP {status}: {body}"));
                }
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|error| format!("a submitting task failed: {error}"))??;
    }
    Ok(())
}

/// The service process. Dropping it kills the process.
struct Service {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Service {
    /// Writes a configuration into `dir` and starts the service binary with it.
    fn start(dir: &Path) -> Result<Self, String> {
        let socket = dir.join("api.sock");
        let log = dir.join("service.log");
        let config = dir.join("agentrun.toml");
        let text = format!(
            "executor = \"subprocess\"\n\
             data_dir = {data:?}\n\
             shutdown_grace_secs = 1\n\
             [listen]\nunix = {socket:?}\n\
             [jobs]\nconcurrency = 1\nper_integration = 1\ntimeout_secs = 3600\n",
            data = dir.join("data").display().to_string(),
            socket = socket.display().to_string(),
        );
        std::fs::write(&config, text)
            .map_err(|error| format!("writing {} failed: {error}", config.display()))?;
        let log_file = std::fs::File::create(&log)
            .map_err(|error| format!("creating {} failed: {error}", log.display()))?;
        let stderr = log_file
            .try_clone()
            .map_err(|error| format!("opening {} failed: {error}", log.display()))?;

        let mut command = Command::new(env!("CARGO_BIN_EXE_agentrun"));
        command
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            // Nothing from the machine's or the caller's configuration.
            .env("XDG_CONFIG_HOME", dir.join("xdg"))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AGENTRUN_") {
                command.env_remove(name);
            }
        }
        // Its own process group, so that a terminal's Ctrl-C reaches the benchmark only.
        command.process_group(0);
        let child = command.spawn().map_err(|error| {
            format!(
                "starting {} failed: {error}",
                env!("CARGO_BIN_EXE_agentrun")
            )
        })?;
        Ok(Self { child, socket, log })
    }

    /// Waits until `/healthz` responds with 200.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let api = Api::new(self.socket.clone());
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the service exited with {status} before it was ready"
                ));
            }
            if let Ok(mut connection) = api.connect().await {
                if let Ok((200, _)) = api.get(&mut connection, "/healthz").await {
                    return Ok(());
                }
            }
            if started.elapsed() > TIMEOUT {
                return Err(format!(
                    "the service was not ready within {} s",
                    TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads the process's memory figures.
    fn read_status(&self, figure: &str, target_bytes: Option<u64>) -> Result<MemoryRow, String> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path)
            .map_err(|error| format!("reading {path} failed: {error}"))?;
        let field = |name: &str| -> Result<u64, String> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
                .ok_or_else(|| format!("{path} has no {name} field"))
        };
        Ok(MemoryRow {
            figure: figure.to_owned(),
            rss_bytes: field("VmRSS")? * 1024,
            hwm_bytes: field("VmHWM")? * 1024,
            anon_bytes: field("RssAnon")? * 1024,
            threads: field("Threads")?,
            target_bytes,
        })
    }

    /// Stops the service with SIGTERM, which also kills the running job's agent, and with
    /// SIGKILL when it has not exited after 30 s.
    async fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Returns the last lines of the service's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP client of the service's Unix socket.
#[derive(Clone, Debug)]
struct Api {
    socket: PathBuf,
}

impl Api {
    fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    /// Opens a connection, on which requests go one after another.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|error| format!("connecting to {} failed: {error}", self.socket.display()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| format!("the HTTP handshake failed: {error}"))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn get(
        &self,
        connection: &mut SendRequest<Full<Bytes>>,
        path: &str,
    ) -> Result<(u16, serde_json::Value), String> {
        self.send(connection, "GET", path, None, Vec::new()).await
    }

    async fn send_json(
        &self,
        connection: &mut SendRequest<Full<Bytes>>,
        path: &str,
        body: &str,
    ) -> Result<(u16, serde_json::Value), String> {
        self.send(
            connection,
            "POST",
            path,
            Some("application/json"),
            body.as_bytes().to_vec(),
        )
        .await
    }

    /// Sends one request and returns the status and the body as JSON (`null` when the body is
    /// not JSON).
    async fn send(
        &self,
        connection: &mut SendRequest<Full<Bytes>>,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, serde_json::Value), String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "agentrun");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| format!("building {method} {path} failed: {error}"))?;
        let exchange = async {
            connection.ready().await?;
            let response = connection.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{method} {path} timed out after {} s", TIMEOUT.as_secs()))?
            .map_err(|error| format!("{method} {path} failed: {error}"))?;
        Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
    }
}
