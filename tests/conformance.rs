//! The conformance suite: every case runs on every executor, with the same expectations.
//!
//! Each case is written once as an `async fn` that takes a [`Backend`], and the
//! [`conformance!`] macro emits one `#[test]` per executor for it, so a failure names both the
//! executor and the case (`docker::crash_without_reply`). Jobs go through the real
//! [`Dispatcher`], so reply parsing is part of what is tested.
//!
//! Every case uses one package, the statically linked test agent (`tests/agent`) on
//! `agentrun-busybox:latest`, prepared once per executor and test process. The environment
//! variable `TESTAGENT_CASE` of each job selects the agent's behaviour. Containers run with
//! network `none`.
//!
//! Docker and Podman cases skip when their runtime does not respond, unless
//! `AGENTRUN_REQUIRE_RUNTIMES` names it (see `common::runtimes`).
//!
//! After every job the suite checks that nothing of it is left: no process whose environment
//! carries the job's marker variable, and on container backends no container with the job's
//! id label.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use agentrun::backends::{self, BackendsConfig, ExecutorKind};
use agentrun::cli::{load_package, LoadedPackage};
use agentrun::dispatcher::{
    DescribeOptions, DispatchDefaults, Dispatcher, HealthReport, Integration, JobStatus,
    WorkRequest, WorkResult,
};
use agentrun::executor::{
    CancellationToken, Prepared, DEFAULT_MAX_STDOUT_BYTES, DEFAULT_STDERR_TAIL_BYTES, LABEL_ENGINE,
    LABEL_JOB_ID,
};
use agentrun::protocol::Request;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use common::process::process_alive;
use common::runtimes::runtime_available;
use common::testagent::{fnv1a64_hex, write_testagent_package, UNICODE_LABEL};

/// Limit on setting up one backend. Generous, because the first case of a test process builds
/// the test agent with cargo and then its image, on a machine that may be busy with other builds.
const SETUP_LIMIT: Duration = Duration::from_secs(600);
/// Limit on one case once its backend is set up.
const CASE_LIMIT: Duration = Duration::from_secs(300);
/// Limit on one step of a case, such as a job or a container listing.
const STEP_LIMIT: Duration = Duration::from_secs(120);
/// Deadline of the `hang` job. Short, so that the case is quick, but long enough for a
/// container to start and the agent to read its message on a loaded machine.
const HANG_TIMEOUT: Duration = Duration::from_secs(3);
/// How long before the deadline the `hang` agent must run for the case to expect its exit code.
const HANG_START_MARGIN: Duration = Duration::from_secs(1);
/// Environment variable that marks each job's processes, so the suite can find them in `/proc`.
const MARKER_VARIABLE: &str = "CONFORMANCE_JOB";
/// Size of the payload value of the `big` and `no-stdin` cases.
const BIG_VALUE_BYTES: usize = 1024 * 1024;

/// Emits one `#[test]` per executor for each case, in modules named after the executors.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        conformance!(@backend subprocess, Subprocess; $($case),*);
        conformance!(@backend docker, Docker; $($case),*);
        conformance!(@backend podman, Podman; $($case),*);
    };
    (@backend $module:ident, $kind:ident; $($case:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $case() {
                    super::run_case(
                        agentrun::backends::ExecutorKind::$kind,
                        stringify!($case),
                        super::$case,
                    );
                }
            )*
        }
    };
}

conformance! {
    describe_healthy,
    describe_crash_unhealthy,
    echo_reply,
    logs_around_reply,
    pretty_printed_reply,
    returned_code_reply,
    list_payload_reply,
    wrong_job_id_rejected,
    fail_reports_failure,
    crash_without_reply,
    self_signal_ends_agent,
    read_eof_counts_bytes,
    no_stdin_large_message,
    hang_times_out,
    fork_child_is_gone,
    flood_stdout_hits_cap,
    flood_stderr_tail_capped,
    big_payload_value,
    unicode_values,
    env_values_exact,
    cancel_mid_run,
}

// ---- Cases -------------------------------------------------------------------------------------

/// A `describe` message gets a heartbeat, so the agent is healthy.
async fn describe_healthy(backend: &'static Backend) {
    let report = backend.describe(&[]).await;

    assert!(report.healthy, "{report:#?}");
    assert_eq!(report.status, JobStatus::Succeeded);
    assert_eq!(report.exit_code, Some(0));
    assert_eq!(report.reply, Some(json!({"type": "heartbeat"})));
    assert_eq!(report.error, None);
}

/// An agent that crashes on `describe` is unhealthy, and the report gives the reason.
async fn describe_crash_unhealthy(backend: &'static Backend) {
    let report = backend.describe(&[("TESTAGENT_CASE", "crash")]).await;

    assert!(!report.healthy, "{report:#?}");
    assert_eq!(report.status, JobStatus::Error);
    assert_eq!(report.exit_code, Some(3));
    assert_eq!(report.reply, None);
    let error = report.error.as_deref().unwrap_or_default();
    assert_contains(error, "exited with exit code 3 without a reply");
    assert_contains(error, "testagent: crashing on purpose");
}

/// The plain reply: message, return code, job id and agent come back as sent.
async fn echo_reply(backend: &'static Backend) {
    let message = "hello from the conformance suite";
    let (job_id, result) = backend.work(Job::new("echo", message)).await;

    assert_succeeded(&result, message);
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.url, None);
    assert_eq!(result.url_label, None);
    let reply = result.reply.as_ref().expect("a succeeded job has a reply");
    assert_eq!(reply["job_id"], json!(job_id));
    assert_eq!(
        reply["agent"],
        json!(backend.integration.agent_id.to_string())
    );
    assert_eq!(reply["action"], "popup-message");
}

/// Log lines on stdout before and after the reply do not hide it.
async fn logs_around_reply(backend: &'static Backend) {
    let message = "reply between log lines";
    let (_, result) = backend.work(Job::new("logs", message)).await;

    assert_succeeded(&result, message);
}

/// A reply pretty-printed over several lines is read whole.
async fn pretty_printed_reply(backend: &'static Backend) {
    let message = "pretty-printed reply";
    let (job_id, result) = backend.work(Job::new("pretty", message)).await;

    assert_succeeded(&result, message);
    let reply = result.reply.as_ref().expect("a succeeded job has a reply");
    assert_eq!(reply["job_id"], json!(job_id));
}

/// `returned_code` is read as `return_code`.
async fn returned_code_reply(backend: &'static Backend) {
    let message = "reply with returned_code";
    let (_, result) = backend.work(Job::new("returned-code", message)).await;

    assert_succeeded(&result, message);
    let reply = result.reply.as_ref().expect("a succeeded job has a reply");
    assert_eq!(reply["return_code"], json!(0));
    assert_eq!(reply.get("returned_code"), None, "{reply}");
}

/// A payload given as a list of `{"name","value"}` pairs is read like an object.
async fn list_payload_reply(backend: &'static Backend) {
    let message = "payload as a list";
    let (_, result) = backend.work(Job::new("list-payload", message)).await;

    assert_succeeded(&result, message);
    let reply = result.reply.as_ref().expect("a succeeded job has a reply");
    assert_eq!(reply["payload"]["message"], message);
}

/// A reply for another job is an error that names the expected and the actual id.
async fn wrong_job_id_rejected(backend: &'static Backend) {
    let (job_id, result) = backend.work(Job::new("wrong-job-id", "wrong job id")).await;

    assert_eq!(result.status, JobStatus::Error, "{result:#?}");
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.return_code, None);
    assert_eq!(result.message, None);
    let error = result.error.as_deref().unwrap_or_default();
    assert_contains(
        error,
        &format!("reply has job_id {}, expected {job_id}", job_id + 1),
    );
}

/// A reply with `return_code` 1 is a failed job with the agent's message, not an error.
async fn fail_reports_failure(backend: &'static Backend) {
    let (_, result) = backend.work(Job::new("fail", "please fail")).await;

    assert_eq!(result.status, JobStatus::Failed, "{result:#?}");
    assert_eq!(result.return_code, Some(1));
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(
        result.message.as_deref(),
        Some("testagent: the fail case reports failure")
    );
    assert_eq!(result.error, None);
}

/// An agent that exits 3 without a reply is an error with its exit code and stderr.
async fn crash_without_reply(backend: &'static Backend) {
    let (_, result) = backend.work(Job::new("crash", "crash now")).await;

    assert_eq!(result.status, JobStatus::Error, "{result:#?}");
    assert_eq!(result.exit_code, Some(3));
    assert_eq!(result.return_code, None);
    assert_eq!(result.message, None);
    assert_eq!(result.stderr_tail, "testagent: crashing on purpose\n");
    let error = result.error.as_deref().unwrap_or_default();
    assert_contains(error, "exited with exit code 3 without a reply");
    assert_contains(
        error,
        "expected one JSON object with \"type\":\"info\" on stdout",
    );
    assert_contains(
        error,
        "last stderr lines:\n  testagent: crashing on purpose",
    );
}

/// An agent that sends itself SIGSEGV ends with exit code 139 (128 + 11) on every backend. On
/// container backends the agent runs under an init, since as PID 1 it would ignore the signal.
async fn self_signal_ends_agent(backend: &'static Backend) {
    let (_, result) = backend.work(Job::new("self-signal", "signal")).await;

    assert_eq!(result.status, JobStatus::Error, "{result:#?}");
    assert_eq!(result.exit_code, Some(139));
    assert_eq!(result.return_code, None);
    assert_eq!(result.stderr_tail, "testagent: sending SIGSEGV to itself\n");
    let error = result.error.as_deref().unwrap_or_default();
    assert_contains(error, "without a reply");
}

/// An agent that reads stdin to end of file gets exactly the message, then end of file.
async fn read_eof_counts_bytes(backend: &'static Backend) {
    let message = "read me to the end";
    let job = Job::new("read-eof", message);
    let job_id = backend.next_job_id();
    let expected_bytes = Request::work(
        backend.integration.agent_id,
        job_id,
        &[("message".to_owned(), message.to_owned())],
    )
    .to_bytes()
    .len();
    let result = backend.work_as(job_id, job).await;

    assert_succeeded(&result, message);
    let reply = result.reply.as_ref().expect("a succeeded job has a reply");
    assert_eq!(reply["payload"]["stdin_bytes"], json!(expected_bytes));
}

/// An agent that never reads stdin still replies, even when the message is larger than a pipe
/// buffer, so writing it cannot finish. The runtime's complaint about the unread input is not
/// reported as the agent's stderr, which stays empty.
async fn no_stdin_large_message(backend: &'static Backend) {
    let job_id = backend.next_job_id();
    let mut job = Job::new("no-stdin", &"n".repeat(BIG_VALUE_BYTES));
    job.env
        .push(("TESTAGENT_JOB_ID".to_owned(), job_id.to_string()));
    let result = backend.work_as(job_id, job).await;

    assert_succeeded(&result, "no-stdin");
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.stderr_tail, "");
}

/// An agent that never exits is killed at the deadline, and the job has timed out.
async fn hang_times_out(backend: &'static Backend) {
    let mut job = Job::new("hang", "hang forever");
    job.timeout = Some(HANG_TIMEOUT);
    let job_id = backend.next_job_id();
    let marker = marker(job_id);
    let spawned = tokio::time::Instant::now();
    let running = tokio::spawn(backend.run_work(job_id, job));

    // On a loaded machine a container may still be starting when the deadline passes, and
    // then it has no exit code. The agent is seen early when its process has the marker
    // well before the deadline.
    let seen_early = tokio::time::timeout(
        HANG_TIMEOUT.saturating_sub(HANG_START_MARGIN),
        wait_for_process_with(&marker),
    )
    .await
    .is_ok();
    let result = within("the job", running)
        .await
        .unwrap_or_else(|error| panic!("the job task failed: {error}"));
    backend.assert_job_gone(job_id).await;

    assert_eq!(result.status, JobStatus::TimedOut, "{result:#?}");
    assert_eq!(result.return_code, None);
    assert_eq!(result.message, None);
    if seen_early {
        assert_eq!(result.exit_code, Some(128 + 9), "killed with SIGKILL");
    } else {
        eprintln!(
            "{}: the agent was not seen running within {:?}; the job returned after {:?} \
             with exit code {:?}",
            backend.kind,
            HANG_TIMEOUT.saturating_sub(HANG_START_MARGIN),
            spawned.elapsed(),
            result.exit_code
        );
        assert!(
            matches!(result.exit_code, Some(137) | None),
            "exit code {:?}",
            result.exit_code
        );
    }
    let error = result.error.as_deref().unwrap_or_default();
    assert_contains(
        error,
        &format!(
            "agent did not finish within {} s and was killed",
            HANG_TIMEOUT.as_secs()
        ),
    );
}

/// An agent that forks a long-lived child that keeps its output open: the reply arrives, the
/// job returns long before the child would end, and the child is gone afterwards.
async fn fork_child_is_gone(backend: &'static Backend) {
    // The child sleeps 300 s. A job that waited for it would pass this deadline and time out.
    let mut job = Job::new("fork", "fork a child");
    job.timeout = Some(Duration::from_secs(60));
    let (_, result) = backend.work(job).await;

    assert_eq!(result.status, JobStatus::Succeeded, "{result:#?}");
    let reply = result.reply.as_ref().expect("a succeeded job has a reply");
    let child_pid = reply["payload"]["child_pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("reply has no child_pid: {reply}"));
    assert_eq!(
        result.message.as_deref(),
        Some(format!("forked child {child_pid}").as_str())
    );
    // A container reports the pid inside its own pid namespace, which is not the host's. For
    // containers, the checks after every job (no marked process, no container) cover the child.
    if backend.kind == ExecutorKind::Subprocess {
        let pid = u32::try_from(child_pid).expect("a pid fits in u32");
        assert!(!process_alive(pid), "the forked child {pid} still runs");
    }
}

/// An agent that writes without end is killed at the stdout cap, and the error names the cap.
async fn flood_stdout_hits_cap(backend: &'static Backend) {
    let (_, result) = backend.work(Job::new("flood-stdout", "flood")).await;

    assert_eq!(result.status, JobStatus::Error, "{}", summary(&result));
    assert_eq!(result.return_code, None);
    assert_eq!(result.message, None);
    let error = result.error.as_deref().unwrap_or_default();
    assert_contains(
        error,
        &format!("after writing more than {DEFAULT_MAX_STDOUT_BYTES} bytes to stdout"),
    );
}

/// An agent that writes 10 MiB to stderr succeeds, and only the stderr tail is kept.
async fn flood_stderr_tail_capped(backend: &'static Backend) {
    let message = "after a flood of stderr";
    let (_, result) = backend.work(Job::new("flood-stderr", message)).await;

    assert_eq!(result.status, JobStatus::Succeeded, "{}", summary(&result));
    assert_eq!(result.message.as_deref(), Some(message));
    assert_eq!(result.stderr_tail.len(), DEFAULT_STDERR_TAIL_BYTES);
    assert!(
        result.stderr_tail.chars().all(|c| c == 'e' || c == '\n'),
        "the stderr tail contains other text than the agent's flood"
    );
    assert!(result.stderr_tail.ends_with("e\n"));
}

/// A 1 MiB payload value reaches the agent intact: its length and hash match.
async fn big_payload_value(backend: &'static Backend) {
    let value = big_value();
    let (_, result) = backend.work(Job::new("big", &value)).await;

    let hash = fnv1a64_hex(value.as_bytes());
    assert_succeeded(&result, &format!("length={BIG_VALUE_BYTES} fnv1a64={hash}"));
    let reply = result.reply.as_ref().expect("a succeeded job has a reply");
    assert_eq!(reply["payload"]["length"], json!(BIG_VALUE_BYTES));
    assert_eq!(reply["payload"]["fnv1a64"], json!(hash));
}

/// Non-ASCII text survives the trip in both directions.
async fn unicode_values(backend: &'static Backend) {
    let message = "Grüße aus 東京 — ✓ 🚀, \"quoted\"\nand a second line";
    let (_, result) = backend.work(Job::new("unicode", message)).await;

    assert_succeeded(&result, message);
    assert_eq!(result.url_label.as_deref(), Some(UNICODE_LABEL));
}

/// Env values reach the agent byte for byte, whatever they contain.
async fn env_values_exact(backend: &'static Backend) {
    let values = [
        ("CONFORMANCE_EQUALS", "a=b==c="),
        ("CONFORMANCE_SPACES", "  leading, inner  and trailing  "),
        (
            "CONFORMANCE_QUOTES",
            r#"single ' double " back ` backslash \ dollar $HOME"#,
        ),
        ("CONFORMANCE_NEWLINES", "line one\nline two\r\n\nend\n"),
        ("CONFORMANCE_NON_ASCII", "Grüße, 世界 ✓ 🚀"),
        ("CONFORMANCE_EMPTY", ""),
    ];
    let mut job = Job::new("env", "");
    job.env.extend(
        values
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    );
    let (_, result) = backend.work(job).await;

    assert_eq!(result.status, JobStatus::Succeeded, "{result:#?}");
    let text = result.message.as_deref().unwrap_or_default();
    let env: serde_json::Map<String, Value> = serde_json::from_str(text)
        .unwrap_or_else(|error| panic!("the env reply is not a JSON object ({error}): {text}"));
    for (name, value) in values {
        assert_eq!(env.get(name), Some(&json!(value)), "env variable {name}");
    }
    assert_eq!(env.get("TESTAGENT_CASE"), Some(&json!("env")));
    // The engine's own environment does not reach the agent.
    assert_eq!(env.get("CARGO_MANIFEST_DIR"), None);
}

/// Cancelling a running job kills the agent, and the job is cancelled.
async fn cancel_mid_run(backend: &'static Backend) {
    let job = Job::new("hang", "hang until cancelled");
    let job_id = backend.next_job_id();
    let marker = marker(job_id);
    let cancel = job.cancel.clone();
    let running = tokio::spawn(backend.run_work(job_id, job));

    within(
        "waiting for the agent to start",
        wait_for_process_with(&marker),
    )
    .await;
    // The check after every job looks for containers the same way; here one must be found.
    if backend.kind.is_container() {
        let containers = backend.containers_of(job_id).await;
        assert_eq!(
            containers.len(),
            1,
            "containers of the running job {job_id}"
        );
    }
    cancel.cancel();
    let result = within("the cancelled job", running)
        .await
        .unwrap_or_else(|error| panic!("the job task failed: {error}"));
    backend.assert_job_gone(job_id).await;

    assert_eq!(result.status, JobStatus::Cancelled, "{result:#?}");
    assert_eq!(result.return_code, None);
    assert_eq!(result.message, None);
    let error = result.error.as_deref().unwrap_or_default();
    assert_contains(error, "job was cancelled and the agent was killed");
}

// ---- Backends ----------------------------------------------------------------------------------

/// One executor with the test agent prepared on it, shared by every case of a test process.
struct Backend {
    kind: ExecutorKind,
    /// Engine instance name on this backend's containers.
    instance: String,
    dispatcher: Dispatcher,
    integration: Integration,
    prepared: Prepared,
    /// Keeps the opened package alive while jobs run from it.
    _package: LoadedPackage,
}

/// What one job sends: the agent's case, the `message` field and extra env variables.
struct Job {
    case: &'static str,
    message: String,
    env: Vec<(String, String)>,
    timeout: Option<Duration>,
    cancel: CancellationToken,
}

impl Job {
    fn new(case: &'static str, message: &str) -> Self {
        Self {
            case,
            message: message.to_owned(),
            env: Vec::new(),
            timeout: None,
            cancel: CancellationToken::new(),
        }
    }
}

impl Backend {
    fn next_job_id(&self) -> u64 {
        self.dispatcher.job_ids().next_id()
    }

    /// Runs a `work` job with a fresh id, checks that nothing of it is left, and returns the
    /// id and the result.
    async fn work(&'static self, job: Job) -> (u64, WorkResult) {
        let job_id = self.next_job_id();
        (job_id, self.work_as(job_id, job).await)
    }

    /// Runs a `work` job with the given id and checks that nothing of it is left.
    async fn work_as(&'static self, job_id: u64, job: Job) -> WorkResult {
        let result = within("the job", self.run_work(job_id, job)).await;
        self.assert_job_gone(job_id).await;
        result
    }

    /// Runs a `work` job through the dispatcher, failing the test on an engine error.
    async fn run_work(&'static self, job_id: u64, job: Job) -> WorkResult {
        let mut env = vec![
            ("TESTAGENT_CASE".to_owned(), job.case.to_owned()),
            (MARKER_VARIABLE.to_owned(), marker(job_id)),
        ];
        env.extend(job.env);
        let request = WorkRequest {
            values: vec![("message".to_owned(), job.message)],
            env,
            timeout: job.timeout,
            cancel: job.cancel,
            job_id: Some(job_id),
            ..WorkRequest::default()
        };
        let result = self
            .dispatcher
            .work(&self.integration, &self.prepared, request)
            .await
            .unwrap_or_else(|error| panic!("{}: job {job_id} failed: {error}", self.kind));
        assert_eq!(result.job_id, job_id);
        result
    }

    /// Runs a health check with extra env variables and checks that nothing of it is left.
    async fn describe(&'static self, env: &[(&str, &str)]) -> HealthReport {
        let job_id = self.next_job_id();
        let mut integration = self.integration.clone();
        integration
            .env
            .push((MARKER_VARIABLE.to_owned(), marker(job_id)));
        integration.env.extend(
            env.iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        );
        let options = DescribeOptions {
            job_id: Some(job_id),
            ..DescribeOptions::default()
        };

        let report = within(
            "the health check",
            self.dispatcher
                .describe(&integration, &self.prepared, options),
        )
        .await
        .unwrap_or_else(|error| panic!("{}: health check {job_id} failed: {error}", self.kind));
        assert_eq!(report.job_id, job_id);
        self.assert_job_gone(job_id).await;
        report
    }

    /// Fails the test when a process or a container of the job is still there.
    async fn assert_job_gone(&self, job_id: u64) {
        let processes = processes_with(&marker(job_id));
        assert!(
            processes.is_empty(),
            "{}: processes of job {job_id} left: {processes:?}",
            self.kind
        );

        if self.kind.is_container() {
            let containers = self.containers_of(job_id).await;
            assert!(
                containers.is_empty(),
                "{}: containers of job {job_id} left: {containers:?}",
                self.kind
            );
        }
    }

    /// Lists the containers (running or not) that carry this engine's label and the job's id,
    /// through the runtime's CLI.
    async fn containers_of(&self, job_id: u64) -> Vec<String> {
        let program = self.kind.as_str();
        let output = tokio::process::Command::new(program)
            .args(["ps", "--all", "--quiet", "--no-trunc", "--filter"])
            .arg(format!("label={LABEL_ENGINE}={}", self.instance))
            .arg("--filter")
            .arg(format!("label={LABEL_JOB_ID}={job_id}"))
            .kill_on_drop(true)
            .output();
        let output = within("listing containers", output)
            .await
            .unwrap_or_else(|error| panic!("running `{program} ps` failed: {error}"));
        assert!(
            output.status.success(),
            "`{program} ps` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Runs one case on one executor: skips when the runtime is missing (see
/// `common::runtimes`), else sets up the backend once and runs the case on the shared runtime.
fn run_case<F, Fut>(kind: ExecutorKind, case: &str, body: F)
where
    F: FnOnce(&'static Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    let test = format!("{kind}::{case}");
    if !runtime_available(kind, &test) {
        return;
    }
    shared_runtime().block_on(async {
        let Ok(backend) = tokio::time::timeout(SETUP_LIMIT, backend(kind)).await else {
            panic!(
                "{test}: setting up {kind} took more than {} s",
                SETUP_LIMIT.as_secs()
            );
        };
        if tokio::time::timeout(CASE_LIMIT, body(backend))
            .await
            .is_err()
        {
            panic!("{test} did not finish within {} s", CASE_LIMIT.as_secs());
        }
    });
}

/// Returns the runtime every case runs on. The executors' clients are tied to the runtime that
/// created them, so the backends shared between cases need one runtime that outlives each test.
fn shared_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|error| panic!("starting the shared Tokio runtime failed: {error}"))
    })
}

/// Returns the backend `kind`, connecting it and preparing the test agent on first use.
async fn backend(kind: ExecutorKind) -> &'static Backend {
    static SUBPROCESS: OnceCell<Backend> = OnceCell::const_new();
    static DOCKER: OnceCell<Backend> = OnceCell::const_new();
    static PODMAN: OnceCell<Backend> = OnceCell::const_new();
    let cell = match kind {
        ExecutorKind::Subprocess => &SUBPROCESS,
        ExecutorKind::Docker => &DOCKER,
        ExecutorKind::Podman => &PODMAN,
    };
    cell.get_or_init(|| connect_backend(kind)).await
}

async fn connect_backend(kind: ExecutorKind) -> Backend {
    let instance = format!("conformance-{}", std::process::id());
    let executor = backends::connect(kind, &backends_config(&instance))
        .await
        .unwrap_or_else(|error| panic!("connecting {kind} failed: {error}"));
    let mut defaults = DispatchDefaults::default();
    defaults.limits.network = Some("none".to_owned());
    let dispatcher = Dispatcher::with_defaults(executor, defaults);

    let package = load_package(testagent_package())
        .await
        .unwrap_or_else(|error| panic!("opening the test agent package failed: {error}"));
    let integration = package.integration.clone();
    let prepared = dispatcher
        .prepare(&integration)
        .await
        .unwrap_or_else(|error| panic!("preparing the test agent on {kind} failed: {error}"));

    Backend {
        kind,
        instance,
        dispatcher,
        integration,
        prepared,
        _package: package,
    }
}

/// Returns the backends' configuration with this test process's engine instance name.
fn backends_config(instance: &str) -> BackendsConfig {
    #[allow(unused_mut)] // Unchanged when both container backends are compiled out.
    let mut config = BackendsConfig::default();
    #[cfg(feature = "docker")]
    instance.clone_into(&mut config.docker.instance);
    #[cfg(feature = "podman")]
    instance.clone_into(&mut config.podman.instance);
    #[cfg(not(any(feature = "docker", feature = "podman")))]
    let _ = instance;
    config
}

/// Writes the test agent package once per test process and returns its folder.
///
/// The folder is the same on every run, so an unchanged test agent has the same digest and its
/// image is reused. It contains the agent, its `Dockerfile` and a manifest with one `message`
/// field.
fn testagent_package() -> &'static Path {
    static PACKAGE: OnceLock<PathBuf> = OnceLock::new();
    PACKAGE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance-testagent");
        write_testagent_package(&dir);
        let manifest = "name = \"conformance testagent\"\n\n\
                        [[fields]]\n\
                        name = \"message\"\n\
                        label = \"Message\"\n\
                        ui_element = \"textarea\"\n";
        std::fs::write(dir.join("integration.toml"), manifest)
            .unwrap_or_else(|error| panic!("writing the test agent's manifest failed: {error}"));
        dir
    })
}

// ---- Helpers -----------------------------------------------------------------------------------

/// Awaits `future`, failing the test when it takes longer than [`STEP_LIMIT`].
async fn within<F: Future>(step: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP_LIMIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("{step} did not finish within {} s", STEP_LIMIT.as_secs()),
    }
}

fn assert_succeeded(result: &WorkResult, message: &str) {
    assert_eq!(result.status, JobStatus::Succeeded, "{}", summary(result));
    assert_eq!(result.return_code, Some(0));
    assert_eq!(result.message.as_deref(), Some(message));
    assert_eq!(result.error, None);
}

#[track_caller]
fn assert_contains(text: &str, needle: &str) {
    assert!(
        text.contains(needle),
        "expected text containing {needle:?}, got:\n{text}"
    );
}

/// Describes a result without its full stdout-derived fields, which can be megabytes long.
fn summary(result: &WorkResult) -> String {
    let cut = |text: &str| text.chars().take(2000).collect::<String>();
    format!(
        "status {:?}, return_code {:?}, exit_code {:?}, message {:?}, error {:?}, stderr tail \
         ({} bytes) {:?}",
        result.status,
        result.return_code,
        result.exit_code,
        result.message.as_deref().map(cut),
        result.error.as_deref().map(cut),
        result.stderr_tail.len(),
        cut(&result.stderr_tail),
    )
}

/// Returns [`BIG_VALUE_BYTES`] bytes of text that mixes ASCII with two- and three-byte
/// characters, so that a value cut or re-encoded anywhere changes its hash.
fn big_value() -> String {
    let pattern = "conformance ünïcödé 世界 0123456789 ";
    let mut value = String::with_capacity(BIG_VALUE_BYTES);
    while value.len() + pattern.len() <= BIG_VALUE_BYTES {
        value.push_str(pattern);
    }
    while value.len() < BIG_VALUE_BYTES {
        value.push('.');
    }
    value
}

/// Returns the value of [`MARKER_VARIABLE`] for a job, unique to this test process and job.
fn marker(job_id: u64) -> String {
    format!("{}-{job_id}", std::process::id())
}

/// Returns the pids of live processes whose environment has `MARKER_VARIABLE=marker`.
///
/// Processes of rootful containers are listed too, because they appear in the host's `/proc`.
/// Reading another user's process environment needs root, so unreadable processes are skipped.
fn processes_with(marker: &str) -> Vec<u32> {
    let entry = format!("{MARKER_VARIABLE}={marker}");
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|byte| *byte == 0)
                    .any(|variable| variable == entry.as_bytes())
            })
        })
        .filter(|pid| process_alive(*pid))
        .collect()
}

/// Waits until a process with the job's marker runs.
async fn wait_for_process_with(marker: &str) {
    while processes_with(marker).is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
