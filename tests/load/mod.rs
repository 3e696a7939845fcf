//! An open-loop load test of job submission over TCP on loopback.
//!
//! [`run`] starts `agentrun serve` as a child process on the subprocess executor, with a
//! temporary data folder and a TCP listener on 127.0.0.1 that requires a random bearer token.
//! It registers a trivial shell agent that appends its job id to a file, and submits jobs at a
//! fixed rate for a fixed time, each on a new connection. It samples the service's resident memory
//! (`VmRSS`) on an interval, waits until every accepted job has ended, and then compares three
//! lists of job ids: the ones the API returned, the ones the store lists, and the ones the
//! agent wrote. A job is lost when it was accepted but never ran, and duplicated when it ran
//! more than once.
//!
//! The example `api-load` (`tests/load/api_load.rs`) runs it for minutes from the command line;
//! the test `tests/api_load.rs` runs a short version.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{Mutex, Semaphore};

/// Deadline of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Maximum wait for the service to respond on `/healthz` after start, and for the build.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The trivial agent. It replies to `describe` with a heartbeat, and to `work` by appending the
/// job id to `$RUN_LOG` and replying. Parameter expansion keeps it to one `sh` process per job.
const AGENT: &str = r#"#!/bin/sh
read -r line || true
case "$line" in
  *'"type":"describe"'*) echo '{"type":"heartbeat"}'; exit 0 ;;
esac
id=${line#*\"job_id\":}
id=${id%%[!0-9]*}
echo "$id" >> "$RUN_LOG"
printf '{"type":"info","job_id":%s,"payload":{"message":"done"},"return_code":0}\n' "$id"
"#;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The `agentrun` binary.
    pub binary: PathBuf,
    /// Submissions started per second.
    pub rate_per_sec: f64,
    /// How long submissions go on.
    pub duration: Duration,
    /// Interval between two samples of the service's resident memory.
    pub sample_interval: Duration,
    /// `jobs.concurrency` of the service.
    pub concurrency: usize,
    /// `jobs.per_integration` of the service.
    pub per_integration: usize,
    /// Maximum submissions in flight. A tick that finds them all busy is counted as missed.
    pub max_in_flight: usize,
    /// Maximum wait for the accepted jobs to end after the last submission.
    pub drain_timeout: Duration,
}

/// One sample of the service's resident memory.
#[derive(Clone, Copy, Debug)]
pub struct MemorySample {
    /// Seconds since the first submission.
    pub at_secs: f64,
    /// `VmRSS`, in KiB.
    pub rss_kib: u64,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Submissions started.
    pub submitted: usize,
    /// Ticks that found `max_in_flight` submissions busy, so no submission started.
    pub missed_ticks: usize,
    /// Job ids the API returned with 202, in order of acceptance.
    pub accepted: Vec<u64>,
    /// Responses other than 202, by status (0: no response).
    pub rejected: BTreeMap<u16, usize>,
    /// Job ids the store lists for the integration.
    pub stored: Vec<u64>,
    /// Job ids the agent wrote, once per run.
    pub ran: Vec<u64>,
    /// Accepted ids that never ran.
    pub lost: Vec<u64>,
    /// Ids that ran more than once.
    pub duplicated: Vec<u64>,
    /// Ids the store lists or the agent wrote that the API never returned.
    pub unexpected: Vec<u64>,
    /// Accepted ids missing from the store's list.
    pub missing_in_store: Vec<u64>,
    /// Final states of the stored jobs, by state.
    pub states: BTreeMap<String, usize>,
    /// Submission latencies of accepted jobs, in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    /// Seconds from the first to the last submission's start.
    pub submit_secs: f64,
    /// Seconds from the end of the last submission until no job was queued or running.
    pub drain_secs: f64,
    /// The service's resident memory over the run.
    pub memory: Vec<MemorySample>,
    /// The service's log file.
    pub service_log: PathBuf,
}

impl LoadReport {
    /// Returns true when every accepted job ran exactly once, is stored, and succeeded.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.missing_in_store.is_empty()
            && self.rejected.is_empty()
            && self.states.keys().all(|state| state == "succeeded")
    }

    /// Returns the latency at quantile `q` (0 to 1), in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies_ms.len() - 1) as f64 * q).round() as usize;
        self.latencies_ms[index]
    }

    /// Formats the report as the lines the example prints.
    pub fn summary(&self) -> String {
        let rss: Vec<u64> = self.memory.iter().map(|sample| sample.rss_kib).collect();
        let first = rss.first().copied().unwrap_or(0);
        let max = rss.iter().copied().max().unwrap_or(0);
        let last = rss.last().copied().unwrap_or(0);
        let rate = if self.submit_secs > 0.0 {
            self.accepted.len() as f64 / self.submit_secs
        } else {
            0.0
        };
        let mut text = String::new();
        text.push_str(&format!(
            "submitted {} in {:.1} s ({rate:.1}/s accepted), missed ticks {}, rejected {:?}\n",
            self.submitted, self.submit_secs, self.missed_ticks, self.rejected
        ));
        text.push_str(&format!(
            "accepted {}, stored {}, ran {}, states {:?}\n",
            self.accepted.len(),
            self.stored.len(),
            self.ran.len(),
            self.states
        ));
        text.push_str(&format!(
            "lost {}, duplicated {}, unexpected {}, missing in store {}\n",
            self.lost.len(),
            self.duplicated.len(),
            self.unexpected.len(),
            self.missing_in_store.len()
        ));
        text.push_str(&format!(
            "submit latency ms: p50 {:.1}, p99 {:.1}, max {:.1}; drain after the last \
             submission {:.1} s\n",
            self.latency_ms(0.5),
            self.latency_ms(0.99),
            self.latency_ms(1.0),
            self.drain_secs
        ));
        text.push_str(&format!(
            "service VmRSS KiB: first {first}, max {max}, last {last} ({} samples)\n",
            rss.len()
        ));
        text
    }
}

/// A failure that stops a run before its comparison.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The service or the setup failed.
    #[error("{0}")]
    Setup(String),
}

fn setup(message: impl Into<String>) -> LoadError {
    LoadError::Setup(message.into())
}

/// The service under load.
struct Service {
    child: Child,
    address: String,
    token: String,
    log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load test. See the [module documentation](self).
///
/// # Errors
///
/// [`LoadError`] when the service does not start or the integration does not become ready.
pub async fn run(options: &LoadOptions, dir: &Path) -> Result<LoadReport, LoadError> {
    let run_log = dir.join("runs.log");
    let mut service = start(options, dir)?;
    wait_ready(&mut service).await?;
    let agent_id = register(&service, &run_log).await?;

    // Memory samples, from the first submission on.
    let pid = service.child.id();
    let started = Instant::now();
    let memory = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let memory = Arc::clone(&memory);
        let interval = options.sample_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let Some(rss_kib) = rss_kib(pid) else { break };
                memory.lock().await.push(MemorySample {
                    at_secs: started.elapsed().as_secs_f64(),
                    rss_kib,
                });
            }
        })
    };

    // Submissions at a fixed rate, each on a new connection.
    let mut report = LoadReport {
        service_log: service.log.clone(),
        ..LoadReport::default()
    };
    let results = Arc::new(Mutex::new(Vec::new()));
    let slots = Arc::new(Semaphore::new(options.max_in_flight));
    let period = Duration::from_secs_f64(1.0 / options.rate_per_sec);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let path = format!("/v1/integrations/{agent_id}/jobs");
    let body = Bytes::from(json!({ "values": {} }).to_string());
    let mut tasks = Vec::new();
    while started.elapsed() < options.duration {
        ticker.tick().await;
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            report.missed_ticks += 1;
            continue;
        };
        report.submitted += 1;
        let address = service.address.clone();
        let token = service.token.clone();
        let path = path.clone();
        let body = body.clone();
        let results = Arc::clone(&results);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = request(&address, &token, "POST", &path, Some(body)).await;
            let latency_ms = sent.elapsed().as_secs_f64() * 1000.0;
            results.lock().await.push((response, latency_ms));
            drop(slot);
        }));
    }
    report.submit_secs = started.elapsed().as_secs_f64();
    for task in tasks {
        let _ = task.await;
    }
    let submissions_done = Instant::now();
    for (response, latency_ms) in results.lock().await.drain(..) {
        match response {
            Ok((202, body)) => match body["job_id"].as_u64() {
                Some(id) => {
                    report.accepted.push(id);
                    report.latencies_ms.push(latency_ms);
                }
                None => *report.rejected.entry(202).or_default() += 1,
            },
            Ok((status, _)) => *report.rejected.entry(status).or_default() += 1,
            Err(_) => *report.rejected.entry(0).or_default() += 1,
        }
    }
    report.latencies_ms.sort_by(f64::total_cmp);

    // Wait for the queue to drain, then compare the three lists.
    drain(&service, &agent_id, options.drain_timeout).await?;
    report.drain_secs = submissions_done.elapsed().as_secs_f64();
    sampler.abort();
    report.memory = memory.lock().await.clone();
    if let Some(rss_kib) = rss_kib(pid) {
        report.memory.push(MemorySample {
            at_secs: started.elapsed().as_secs_f64(),
            rss_kib,
        });
    }
    let stored = stored_jobs(&service, &agent_id).await?;
    report.stored = stored.iter().map(|(id, _)| *id).collect();
    for (_, state) in &stored {
        *report.states.entry(state.clone()).or_default() += 1;
    }
    report.ran = std::fs::read_to_string(&run_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    compare(&mut report);

    stop(&mut service).await;
    Ok(report)
}

/// Fills the lost, duplicated, unexpected and missing lists from the three id lists.
fn compare(report: &mut LoadReport) {
    let accepted: BTreeSet<u64> = report.accepted.iter().copied().collect();
    let stored: BTreeSet<u64> = report.stored.iter().copied().collect();
    let mut runs: BTreeMap<u64, usize> = BTreeMap::new();
    for id in &report.ran {
        *runs.entry(*id).or_default() += 1;
    }
    report.lost = accepted
        .iter()
        .filter(|id| !runs.contains_key(id))
        .copied()
        .collect();
    report.duplicated = runs
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, _)| *id)
        .collect();
    // Two submissions that got the same id are duplicates as well.
    if accepted.len() != report.accepted.len() {
        let mut seen = BTreeSet::new();
        for id in &report.accepted {
            if !seen.insert(*id) {
                report.duplicated.push(*id);
            }
        }
    }
    report.unexpected = stored
        .iter()
        .chain(runs.keys())
        .filter(|id| !accepted.contains(id))
        .copied()
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .collect();
    report.missing_in_store = accepted
        .iter()
        .filter(|id| !stored.contains(id))
        .copied()
        .collect();
}

fn start(options: &LoadOptions, dir: &Path) -> Result<Service, LoadError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|error| setup(format!("finding a free port failed: {error}")))?
        .port();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let config = format!(
        "executor = \"subprocess\"\n\
         data_dir = {data:?}\n\
         shutdown_grace_secs = 10\n\
         [listen]\nunix = \"\"\ntcp = \"127.0.0.1:{port}\"\ntoken = \"{token}\"\n\
         [jobs]\nconcurrency = {concurrency}\nper_integration = {per_integration}\n\
         [health]\ninterval_secs = 0\n",
        data = dir.join("data").display().to_string(),
        concurrency = options.concurrency,
        per_integration = options.per_integration,
    );
    let config_path = dir.join("agentrun.toml");
    std::fs::write(&config_path, config)
        .map_err(|error| setup(format!("writing {} failed: {error}", config_path.display())))?;
    let log = dir.join("service.log");
    let log_file = std::fs::File::create(&log)
        .map_err(|error| setup(format!("creating {} failed: {error}", log.display())))?;
    let log_err = log_file
        .try_clone()
        .map_err(|error| setup(format!("opening the log failed: {error}")))?;
    let mut command = Command::new(&options.binary);
    command
        .args(["serve", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .env("AGENTRUN_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .process_group(0);
    for (key, _) in std::env::vars() {
        if key.starts_with("AGENTRUN_") && key != "AGENTRUN_LOG" {
            command.env_remove(key);
        }
    }
    let child = command.spawn().map_err(|error| {
        setup(format!(
            "starting {} failed: {error}",
            options.binary.display()
        ))
    })?;
    Ok(Service {
        child,
        address: format!("127.0.0.1:{port}"),
        token,
        log,
    })
}

async fn wait_ready(service: &mut Service) -> Result<(), LoadError> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = service.child.try_wait() {
            return Err(setup(format!(
                "the service exited with {status} before it was ready; see {}",
                service.log.display()
            )));
        }
        if let Ok((200, _)) =
            request(&service.address, &service.token, "GET", "/healthz", None).await
        {
            return Ok(());
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(setup(format!(
                "the service was not ready within {START_TIMEOUT:?}; see {}",
                service.log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers the trivial agent with `RUN_LOG` set, waits until it is ready and returns its id.
async fn register(service: &Service, run_log: &Path) -> Result<String, LoadError> {
    let manifest = json!({
        "name": "Load",
        "section": "canvas",
        "section_element": "nodes",
        "env": { "RUN_LOG": run_log.display().to_string() }
    });
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
    let files = [
        (
            "Dockerfile",
            "FROM agentrun-busybox:latest\nCOPY agent.sh /agent.sh\n\
             ENTRYPOINT [\"/bin/sh\", \"/agent.sh\"]\n",
        ),
        ("agent.sh", AGENT),
    ];
    for (name, text) in files {
        zip.start_file(name, options)
            .and_then(|()| zip.write_all(text.as_bytes()).map_err(Into::into))
            .map_err(|error| setup(format!("zipping the agent failed: {error}")))?;
    }
    let package = zip
        .finish()
        .map_err(|error| setup(format!("zipping the agent failed: {error}")))?
        .into_inner();

    let boundary = format!("load-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    for (name, content_type, bytes) in [
        (
            "manifest",
            "application/json",
            manifest.to_string().into_bytes(),
        ),
        ("package", "application/zip", package),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let (status, created) = request_with_type(
        &service.address,
        &service.token,
        "POST",
        "/v1/integrations",
        Some((
            Bytes::from(body),
            format!("multipart/form-data; boundary={boundary}"),
        )),
    )
    .await
    .map_err(|error| setup(format!("registering the agent failed: {error}")))?;
    if status != 202 {
        return Err(setup(format!(
            "registering the agent returned {status}: {created}"
        )));
    }
    let agent_id = created["agent_id"]
        .as_str()
        .ok_or_else(|| setup(format!("no agent_id in {created}")))?
        .to_owned();

    let started = Instant::now();
    loop {
        let path = format!("/v1/integrations/{agent_id}");
        if let Ok((200, body)) = request(&service.address, &service.token, "GET", &path, None).await
        {
            match body["state"].as_str() {
                Some("ready") => return Ok(agent_id),
                Some("failed") => return Err(setup(format!("the build failed: {body}"))),
                _ => {}
            }
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(setup("the integration was not ready in time"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the integration has no queued or running job.
async fn drain(service: &Service, agent_id: &str, timeout: Duration) -> Result<(), LoadError> {
    let started = Instant::now();
    loop {
        let mut busy = false;
        for state in ["queued", "running"] {
            let path = format!("/v1/jobs?integration={agent_id}&state={state}&limit=1");
            match request(&service.address, &service.token, "GET", &path, None).await {
                Ok((200, body)) => {
                    busy |= body["jobs"].as_array().is_some_and(|jobs| !jobs.is_empty());
                }
                other => return Err(setup(format!("listing {state} jobs failed: {other:?}"))),
            }
        }
        if !busy {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(setup(format!("jobs were still queued after {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lists every job of the integration, page by page: ids and states.
async fn stored_jobs(service: &Service, agent_id: &str) -> Result<Vec<(u64, String)>, LoadError> {
    let mut jobs = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut path = format!("/v1/jobs?integration={agent_id}&limit=1000");
        if let Some(before) = before {
            path.push_str(&format!("&before={before}"));
        }
        let (status, body) = request(&service.address, &service.token, "GET", &path, None)
            .await
            .map_err(|error| setup(format!("listing jobs failed: {error}")))?;
        if status != 200 {
            return Err(setup(format!("listing jobs returned {status}: {body}")));
        }
        for job in body["jobs"].as_array().into_iter().flatten() {
            if let Some(id) = job["job_id"].as_u64() {
                jobs.push((id, job["state"].as_str().unwrap_or("").to_owned()));
            }
        }
        match body["next_before"].as_u64() {
            Some(next) => before = Some(next),
            None => return Ok(jobs),
        }
    }
}

/// Stops the service with SIGTERM and waits for it, at most 30 s.
async fn stop(service: &mut Service) {
    let pid = service.child.id() as libc::pid_t;
    // SAFETY: kill(2) with the pid of a child this process started has no memory effects here.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = service.child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `VmRSS` of a process, in KiB; `None` once it has exited.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Sends one request with a JSON body, or none, on a new connection.
async fn request(
    address: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Bytes>,
) -> Result<(u16, Value), String> {
    let body = body.map(|bytes| (bytes, "application/json".to_owned()));
    request_with_type(address, token, method, path, body).await
}

/// Sends one request on a new connection and parses the JSON response (`Null` when it is not
/// JSON).
async fn request_with_type(
    address: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<(Bytes, String)>,
) -> Result<(u16, Value), String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect {address}: {error}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| format!("handshake: {error}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", address)
            .header("authorization", format!("Bearer {token}"));
        let bytes = match body {
            Some((bytes, content_type)) => {
                builder = builder.header("content-type", content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(bytes))
            .map_err(|error| format!("build request: {error}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("send: {error}"))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|error| format!("read body: {error}"))?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {path} timed out after {REQUEST_TIMEOUT:?}"))?
}
