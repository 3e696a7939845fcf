use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use agentrun_executor::{ExecutorError, ExitStatus, JobEnd, JobOutcome, Target};
use async_trait::async_trait;
use serde_json::json;

use super::*;
use crate::error::{exit_for, Exit, Outcome};
use crate::warning::WarningKind;

/// Builds the canned outcome for each job from the job it gets.
type Script = Box<dyn Fn(&JobSpec) -> Result<JobOutcome, ExecutorError> + Send + Sync>;

/// An executor double: records every package and job it gets, and answers with a script.
struct FakeExecutor {
    script: Script,
    ping: Result<(), fn() -> ExecutorError>,
    pings: Mutex<usize>,
    packages: Mutex<Vec<PackageSpec>>,
    jobs: Mutex<Vec<JobSpec>>,
}

impl std::fmt::Debug for FakeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeExecutor").finish_non_exhaustive()
    }
}

impl FakeExecutor {
    fn new(
        script: impl Fn(&JobSpec) -> Result<JobOutcome, ExecutorError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            script: Box::new(script),
            ping: Ok(()),
            pings: Mutex::new(0),
            packages: Mutex::new(Vec::new()),
            jobs: Mutex::new(Vec::new()),
        })
    }

    fn jobs(&self) -> Vec<JobSpec> {
        self.jobs.lock().expect("jobs lock").clone()
    }
}

#[async_trait]
impl Executor for FakeExecutor {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn ping(&self) -> Result<(), ExecutorError> {
        *self.pings.lock().expect("pings lock") += 1;
        self.ping.map_err(|make| make())
    }

    async fn prepare(&self, package: &PackageSpec) -> Result<Prepared, ExecutorError> {
        self.packages
            .lock()
            .expect("packages lock")
            .push(package.clone());
        Ok(prepared())
    }

    async fn run(&self, _prepared: &Prepared, job: JobSpec) -> Result<JobOutcome, ExecutorError> {
        let outcome = (self.script)(&job);
        self.jobs.lock().expect("jobs lock").push(job);
        outcome
    }
}

fn prepared() -> Prepared {
    Prepared {
        executor: "fake".to_owned(),
        integration: "test".to_owned(),
        agent_id: agent_id_for("test").to_string(),
        digest: "00".to_owned(),
        target: Target::Command {
            argv: vec!["/bin/true".to_owned()],
            working_dir: PathBuf::from("/"),
        },
        cache_hit: false,
    }
}

fn outcome(end: JobEnd, exit: ExitStatus, stdout: &str, stderr: &str) -> JobOutcome {
    JobOutcome {
        end,
        exit,
        stdout: stdout.as_bytes().to_vec(),
        stderr_tail: stderr.as_bytes().to_vec(),
        stderr_total_bytes: stderr.len() as u64,
        started_at: SystemTime::now(),
        duration: Duration::from_millis(42),
        container_id: None,
    }
}

/// An agent that replies with `return_code` and echoes the payload as the message.
fn replying(return_code: i64) -> impl Fn(&JobSpec) -> Result<JobOutcome, ExecutorError> {
    move |job: &JobSpec| {
        let request: serde_json::Value = serde_json::from_slice(&job.stdin).expect("stdin is JSON");
        let reply = json!({
            "type": "info",
            "job_id": request["job_id"],
            "payload": {"message": request["payload"].to_string(), "url": "https://x.example"},
            "return_code": return_code,
        });
        Ok(outcome(
            JobEnd::Exited,
            ExitStatus::Code(0),
            &format!("log before\n{reply}\nlog after\n"),
            "",
        ))
    }
}

fn integration(manifest_toml: &str) -> Integration {
    let manifest = Manifest::from_toml_str(manifest_toml).unwrap_or_else(|error| panic!("{error}"));
    Integration::new(manifest, Path::new("/pkg").to_path_buf(), "ab".repeat(32))
}

const FORM: &str = r#"
name = "test"

[[fields]]
name = "zeta"
value = "by SIFT-USER-NAME"

[[fields]]
name = "alpha"
regex = "[a-z]+"

[env]
A = "1"
B = "2"
"#;

async fn with_timeout<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("dispatcher call finishes")
}

fn request(values: &[(&str, &str)]) -> WorkRequest {
    WorkRequest {
        values: values
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect(),
        ..WorkRequest::default()
    }
}

#[tokio::test]
async fn work_sends_message_in_field_order() {
    let executor = FakeExecutor::new(replying(0));
    let dispatcher = Dispatcher::new(executor.clone());
    let integration = integration(FORM);
    let mut work = request(&[("alpha", "abc")]);
    work.context = Context::from_pairs(["user-name=alice"]).expect("context");
    work.job_id = Some(1_700_000_000_000);

    let result = with_timeout(dispatcher.work(&integration, &prepared(), work))
        .await
        .expect("job runs");

    let jobs = executor.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].kind, MessageKind::Work);
    assert_eq!(jobs[0].job_id, 1_700_000_000_000);
    let expected = format!(
        r#"{{"type":"work","agentID":"{}","payload":[{{"name":"zeta","value":"by alice"}},{{"name":"alpha","value":"abc"}}],"job_id":1700000000000}}"#,
        agent_id_for("test")
    );
    assert_eq!(String::from_utf8_lossy(&jobs[0].stdin), expected);
    assert_eq!(result.job_id, 1_700_000_000_000);
}

/// Field values and context values that look like paths stay text: they reach the agent in the
/// payload exactly as given, and the job's package, environment and limits do not change.
#[tokio::test]
async fn work_path_values_stay_payload_text() {
    let executor = FakeExecutor::new(replying(0));
    let dispatcher = Dispatcher::new(executor.clone());
    let integration = integration(
        "name = \"paths\"\n\
         [[fields]]\nname = \"prefilled\"\nvalue = \"SIFT-REPORT-NAME/SIFT-USER-NAME\"\n\
         [[fields]]\nname = \"typed\"\n\
         [env]\nA = \"1\"\n",
    );
    let mut work = request(&[("typed", "/etc/shadow")]);
    work.context =
        Context::from_pairs(["report-name=../../..", "user-name=etc/passwd"]).expect("context");

    with_timeout(dispatcher.work(&integration, &prepared(), work))
        .await
        .expect("job runs");

    let jobs = executor.jobs();
    let request: serde_json::Value = serde_json::from_slice(&jobs[0].stdin).expect("JSON");
    assert_eq!(
        request["payload"],
        json!([
            {"name": "prefilled", "value": "../../../etc/passwd"},
            {"name": "typed", "value": "/etc/shadow"},
        ])
    );
    assert_eq!(jobs[0].env, [("A".to_owned(), "1".to_owned())]);
    assert_eq!(jobs[0].limits, Limits::default());
    assert_eq!(integration.package_spec().root, Path::new("/pkg"));
}

/// Env variables given for a job that the manifest's `[env]` does not declare are reported once
/// each, after the keyword warnings, and the job still gets them.
#[tokio::test]
async fn work_warns_undeclared_env() {
    let executor = FakeExecutor::new(replying(0));
    let dispatcher = Dispatcher::new(executor.clone());
    let mut work = request(&[("alpha", "abc")]);
    work.env = [("A", "9"), ("b", "x"), ("DEBUG", "1"), ("b", "y")]
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();

    let result = with_timeout(dispatcher.work(&integration(FORM), &prepared(), work))
        .await
        .expect("job runs");

    let kinds: Vec<crate::warning::WarningKind> =
        result.warnings.iter().map(|warning| warning.kind).collect();
    assert_eq!(
        kinds,
        [
            crate::warning::WarningKind::MissingKeyword,
            crate::warning::WarningKind::UndeclaredEnv,
            crate::warning::WarningKind::UndeclaredEnv,
        ]
    );
    assert_eq!(result.warnings[1].variable.as_deref(), Some("b"));
    assert_eq!(
        result.warnings[1].message,
        "env variable b is not declared in the manifest's [env], so the agent may ignore it; \
         did you mean B?"
    );
    assert_eq!(
        result.warnings[2].message,
        "env variable DEBUG is not declared in the manifest's [env], so the agent may ignore it; \
         the manifest declares A, B"
    );
    let env = &executor.jobs()[0].env;
    assert!(
        env.contains(&("DEBUG".to_owned(), "1".to_owned())),
        "{env:?}"
    );
}

/// A manifest without `[env]` declares nothing, so any variable is expected and none warns.
#[test]
fn undeclared_env_silent_without_manifest_env() {
    let integration = integration("name = \"bare\"\n");
    let env = [("ANYTHING".to_owned(), "1".to_owned())];
    assert_eq!(undeclared_env(&integration.manifest, &env), []);
}

#[tokio::test]
async fn work_draws_increasing_job_ids() {
    let executor = FakeExecutor::new(replying(0));
    let dispatcher = Dispatcher::new(executor.clone());
    let integration = integration(FORM);
    for _ in 0..3 {
        with_timeout(dispatcher.work(&integration, &prepared(), request(&[("alpha", "a")])))
            .await
            .expect("job runs");
    }
    let ids: Vec<u64> = executor.jobs().iter().map(|job| job.job_id).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
}

#[tokio::test]
async fn work_merges_env_in_order() {
    let executor = FakeExecutor::new(replying(0));
    let dispatcher = Dispatcher::new(executor.clone());
    let integration = integration(FORM);
    let mut work = request(&[("alpha", "a")]);
    work.env = vec![
        ("C".to_owned(), "new".to_owned()),
        ("A".to_owned(), "x=y \"z\"\né".to_owned()),
    ];

    with_timeout(dispatcher.work(&integration, &prepared(), work))
        .await
        .expect("job runs");

    let env = &executor.jobs()[0].env;
    assert_eq!(
        env,
        &[
            ("A".to_owned(), "x=y \"z\"\né".to_owned()),
            ("B".to_owned(), "2".to_owned()),
            ("C".to_owned(), "new".to_owned()),
        ]
    );
}

#[tokio::test]
async fn work_rejects_bad_env_before_running() {
    let executor = FakeExecutor::new(replying(0));
    let dispatcher = Dispatcher::new(executor.clone());
    let mut work = request(&[("alpha", "a")]);
    work.env = vec![("BAD-NAME".to_owned(), "secret-value".to_owned())];

    let error = with_timeout(dispatcher.work(&integration(FORM), &prepared(), work))
        .await
        .expect_err("invalid env name");
    assert!(matches!(error, Error::InvalidArgument { .. }), "{error}");
    assert!(error.to_string().contains("\"BAD-NAME\""), "{error}");
    assert!(!error.to_string().contains("secret-value"), "{error}");
    assert_eq!(exit_for(Outcome::Failed(&error)), Exit::InvalidInput);
    assert!(executor.jobs().is_empty());
}

/// A work message over `max_message_bytes` is rejected with its exact size before anything
/// runs, and a message at the default limit runs.
#[tokio::test]
async fn work_rejects_message_over_limit() {
    let executor = FakeExecutor::new(replying(0));
    let defaults = DispatchDefaults {
        max_message_bytes: 200,
        ..DispatchDefaults::default()
    };
    let dispatcher = Dispatcher::with_defaults(executor.clone(), defaults);
    let alpha = "a".repeat(150);
    let work = request(&[("alpha", &alpha)]);

    let error = with_timeout(dispatcher.work(&integration(FORM), &prepared(), work.clone()))
        .await
        .expect_err("message over the limit");
    let Error::MessageTooLarge(too_large) = &error else {
        panic!("expected MessageTooLarge, got {error}");
    };
    assert_eq!(too_large.limit, 200);
    assert!(!too_large.partial);
    assert!(too_large.size > 200, "{too_large:?}");
    assert!(error.to_string().contains("(max_message_bytes)"), "{error}");
    assert_eq!(exit_for(Outcome::Failed(&error)), Exit::InvalidInput);
    assert!(executor.jobs().is_empty());

    let dispatcher = Dispatcher::new(executor.clone());
    with_timeout(dispatcher.work(&integration(FORM), &prepared(), work))
        .await
        .expect("message within the default limit");
    assert_eq!(executor.jobs().len(), 1);
}

#[tokio::test]
async fn work_timeout_choice() {
    let executor = FakeExecutor::new(replying(0));
    let defaults = DispatchDefaults {
        timeout: Duration::from_secs(7),
        ..DispatchDefaults::default()
    };
    let dispatcher = Dispatcher::with_defaults(executor.clone(), defaults);
    let plain = integration("name = \"test\"\n");
    let with_run = integration("name = \"test\"\n[run]\ntimeout_secs = 30\n");

    let overridden = WorkRequest {
        timeout: Some(Duration::from_secs(3)),
        ..WorkRequest::default()
    };
    for (integration, work) in [
        (&plain, WorkRequest::default()),
        (&with_run, WorkRequest::default()),
        (&with_run, overridden),
    ] {
        with_timeout(dispatcher.work(integration, &prepared(), work))
            .await
            .expect("job runs");
    }

    let timeouts: Vec<Duration> = executor.jobs().iter().map(|job| job.timeout).collect();
    assert_eq!(
        timeouts,
        [
            Duration::from_secs(7),
            Duration::from_secs(30),
            Duration::from_secs(3)
        ]
    );
}

#[tokio::test]
async fn work_rejects_zero_timeout() {
    let executor = FakeExecutor::new(replying(0));
    let dispatcher = Dispatcher::new(executor.clone());
    let work = WorkRequest {
        timeout: Some(Duration::ZERO),
        ..WorkRequest::default()
    };
    let error = with_timeout(dispatcher.work(&integration("name = \"t\"\n"), &prepared(), work))
        .await
        .expect_err("zero timeout");
    assert!(matches!(error, Error::InvalidArgument { .. }), "{error}");
    assert!(executor.jobs().is_empty());
}

#[tokio::test]
async fn work_passes_defaults_and_cancel_token() {
    let executor = FakeExecutor::new(replying(0));
    let limits = Limits {
        memory_bytes: Some(64 * 1024 * 1024),
        ..Limits::default()
    };
    let defaults = DispatchDefaults {
        max_stdout_bytes: 1234,
        stderr_tail_bytes: 99,
        limits: limits.clone(),
        ..DispatchDefaults::default()
    };
    let dispatcher = Dispatcher::with_defaults(executor.clone(), defaults);
    let mut work = WorkRequest::default();
    let cancel = CancellationToken::new();
    work.cancel = cancel.clone();

    with_timeout(dispatcher.work(&integration("name = \"t\"\n"), &prepared(), work))
        .await
        .expect("job runs");

    let job = &executor.jobs()[0];
    assert_eq!(job.max_stdout_bytes, 1234);
    assert_eq!(job.stderr_tail_bytes, 99);
    assert_eq!(job.limits, limits);
    assert!(!job.cancel.is_cancelled());
    cancel.cancel();
    assert!(job.cancel.is_cancelled(), "the job got another token");
}

#[tokio::test]
async fn work_validates_before_running() {
    let executor = FakeExecutor::new(replying(0));
    let dispatcher = Dispatcher::new(executor.clone());
    let error = with_timeout(dispatcher.work(
        &integration(FORM),
        &prepared(),
        request(&[("alpha", "ABC"), ("nope", "1")]),
    ))
    .await
    .expect_err("invalid form");

    let Error::Form(errors) = &error else {
        panic!("expected a form error, got {error}");
    };
    let fields: Vec<&str> = errors
        .errors
        .iter()
        .map(|error| error.field.as_str())
        .collect();
    assert_eq!(fields, ["nope", "alpha"]);
    assert_eq!(exit_for(Outcome::Failed(&error)), Exit::InvalidInput);
    assert!(executor.jobs().is_empty(), "the executor ran a job");
}

#[tokio::test]
async fn work_succeeded() {
    let dispatcher = Dispatcher::new(FakeExecutor::new(replying(0)));
    let result = with_timeout(dispatcher.work(
        &integration(FORM),
        &prepared(),
        request(&[("alpha", "abc")]),
    ))
    .await
    .expect("job runs");

    assert_eq!(result.status, JobStatus::Succeeded);
    assert_eq!(result.return_code, Some(0));
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(
        result.message.as_deref(),
        Some(r#"[{"name":"zeta","value":"by "},{"name":"alpha","value":"abc"}]"#)
    );
    assert_eq!(result.url.as_deref(), Some("https://x.example"));
    assert_eq!(result.duration_ms, 42);
    assert_eq!(result.error, None);
    assert_eq!(
        result.warnings,
        [crate::warning::Warning::missing_keyword(
            "zeta",
            "SIFT-USER-NAME"
        )]
    );
    let reply = result.reply.as_ref().expect("reply kept");
    assert_eq!(reply["action"], "popup-message");
    assert_eq!(exit_for(Outcome::Work(&result)), Exit::Success);

    let json = serde_json::to_value(&result).expect("serialise");
    for key in [
        "job_id",
        "status",
        "return_code",
        "exit_code",
        "message",
        "url",
        "url_label",
        "duration_ms",
        "reply",
    ] {
        assert!(json.get(key).is_some(), "--json output lacks {key}");
    }
    assert_eq!(json["status"], "succeeded");
}

#[tokio::test]
async fn work_failed_return_code() {
    let dispatcher = Dispatcher::new(FakeExecutor::new(replying(1)));
    let result = with_timeout(dispatcher.work(
        &integration("name = \"t\"\n"),
        &prepared(),
        WorkRequest::default(),
    ))
    .await
    .expect("job runs");
    assert_eq!(result.status, JobStatus::Failed);
    assert_eq!(result.return_code, Some(1));
    assert_eq!(result.message.as_deref(), Some("[]"));
    assert_eq!(result.error, None);
    assert_eq!(exit_for(Outcome::Work(&result)), Exit::AgentFailed);
}

/// Runs one job whose outcome is `canned` and returns its result.
async fn work_with(canned: JobOutcome) -> WorkResult {
    let dispatcher = Dispatcher::new(FakeExecutor::new(move |_| Ok(canned.clone())));
    let work = WorkRequest {
        job_id: Some(5),
        timeout: Some(Duration::from_secs(2)),
        ..WorkRequest::default()
    };
    with_timeout(dispatcher.work(&integration("name = \"t\"\n"), &prepared(), work))
        .await
        .expect("job runs")
}

/// Returns an `info` reply line for job 5, the job id of [`work_with`], or for no job.
fn reply_line(message: &str, with_job_id: bool) -> String {
    let mut reply = json!({"type": "info", "payload": {"message": message}});
    if with_job_id {
        reply["job_id"] = json!(5);
    }
    reply.to_string()
}

/// A second reply is ignored, and the result warns about it instead of passing over it.
#[tokio::test]
async fn work_two_replies_warns() {
    let stdout = format!(
        "{}\n{}\n",
        reply_line("mine", true),
        reply_line("later", false)
    );
    let result = work_with(outcome(JobEnd::Exited, ExitStatus::Code(0), &stdout, "")).await;

    assert_eq!(result.status, JobStatus::Succeeded);
    assert_eq!(result.message.as_deref(), Some("mine"));
    assert_eq!(
        warning_messages(&result),
        ["the agent wrote 2 \"info\" replies and only the last one with this job's id was used: \
          write one reply per job"]
    );
}

#[tokio::test]
async fn work_two_replies_without_job_id_warns() {
    let stdout = format!(
        "{}\n{}\n",
        reply_line("first", false),
        reply_line("second", false)
    );
    let result = work_with(outcome(JobEnd::Exited, ExitStatus::Code(0), &stdout, "")).await;

    assert_eq!(result.message.as_deref(), Some("second"));
    assert_eq!(
        warning_messages(&result),
        [
            "the agent wrote 2 \"info\" replies and only the last one was used: write one reply \
          per job"
        ]
    );
}

/// An agent that fails after a valid reply keeps its reply, with a warning.
#[tokio::test]
async fn work_exit_failure_after_reply_warns() {
    let stdout = reply_line("done", true);
    let result = work_with(outcome(JobEnd::Exited, ExitStatus::Code(3), &stdout, "")).await;

    assert_eq!(result.status, JobStatus::Succeeded);
    assert_eq!(result.exit_code, Some(3));
    assert_eq!(result.error, None);
    assert_eq!(
        warning_messages(&result),
        [
            "the agent exited with exit code 3 after a valid reply, which was used: report a \
          failure through the reply's return_code"
        ]
    );

    let result = work_with(outcome(JobEnd::Exited, ExitStatus::Signal(9), &stdout, "")).await;
    assert_eq!(
        warning_messages(&result),
        ["the agent was killed by signal 9 after a valid reply, which was used: report a failure \
          through the reply's return_code"]
    );
}

/// Form warnings come first, then the agent's.
#[tokio::test]
async fn work_keeps_form_warnings_first() {
    let dispatcher = Dispatcher::new(FakeExecutor::new(|job: &JobSpec| {
        let request: serde_json::Value = serde_json::from_slice(&job.stdin).expect("stdin is JSON");
        let reply =
            json!({"type": "info", "job_id": request["job_id"], "payload": {"message": "x"}});
        Ok(outcome(
            JobEnd::Exited,
            ExitStatus::Code(1),
            &format!("{reply}\n{reply}\n"),
            "",
        ))
    }));
    let result = with_timeout(dispatcher.work(
        &integration(FORM),
        &prepared(),
        request(&[("alpha", "abc")]),
    ))
    .await
    .expect("job runs");

    assert_eq!(result.warnings.len(), 3, "{:?}", result.warnings);
    assert!(
        result.warnings[0]
            .message
            .starts_with("field \"zeta\": SIFT-USER-NAME has no value"),
        "{:?}",
        result.warnings
    );
    assert!(
        result.warnings[1]
            .message
            .starts_with("the agent wrote 2 \"info\" replies"),
        "{:?}",
        result.warnings
    );
    assert!(
        result.warnings[2]
            .message
            .starts_with("the agent exited with exit code 1 after a valid reply"),
        "{:?}",
        result.warnings
    );
    let kinds: Vec<WarningKind> = result.warnings.iter().map(|warning| warning.kind).collect();
    assert_eq!(
        kinds,
        [
            WarningKind::MissingKeyword,
            WarningKind::RepeatedReply,
            WarningKind::ExitAfterReply
        ]
    );
}

#[tokio::test]
async fn work_no_reply_error_text() {
    let stderr = (1..=12).map(|n| format!("err {n}\n")).collect::<String>()
        + "Traceback (most recent call last):\n  ValueError: bad\n";
    let result = work_with(outcome(
        JobEnd::Exited,
        ExitStatus::Code(2),
        "starting\n",
        &stderr,
    ))
    .await;

    assert_eq!(result.status, JobStatus::Error);
    assert_eq!(result.exit_code, Some(2));
    assert_eq!(result.reply, None);
    assert_eq!(result.stderr_tail, stderr);
    let expected = "agent exited with exit code 2 without a reply: expected one JSON object with \
                    \"type\":\"info\" on stdout, found no JSON object at the start of a line\n\
                    last stderr lines:\n  err 5\n  err 6\n  err 7\n  err 8\n  err 9\n  err 10\n  \
                    err 11\n  err 12\n  Traceback (most recent call last):\n    ValueError: bad";
    assert_eq!(result.error.as_deref(), Some(expected));
    assert_eq!(exit_for(Outcome::Work(&result)), Exit::NoValidReply);
}

#[tokio::test]
async fn work_invalid_reply_error_text() {
    let stdout = r#"{"type":"info","job_id":5,"action":"open-tab","payload":{"message":"x"}}"#;
    let result = work_with(outcome(JobEnd::Exited, ExitStatus::Code(0), stdout, "")).await;
    assert_eq!(result.status, JobStatus::Error);
    assert_eq!(
        result.error.as_deref(),
        Some("agent exited with exit code 0 with an invalid reply: reply has unknown action \"open-tab\"; expected one of: popup-message\nstderr was empty")
    );
}

#[tokio::test]
async fn work_wrong_job_id_error_text() {
    let stdout = r#"{"type":"info","job_id":6,"payload":{"message":"x"}}"#;
    let result = work_with(outcome(JobEnd::Exited, ExitStatus::Code(0), stdout, "")).await;
    assert_eq!(result.status, JobStatus::Error);
    assert_eq!(
        result.error.as_deref(),
        Some("agent exited with exit code 0 with an invalid reply: reply has job_id 6, expected 5\nstderr was empty")
    );
}

#[tokio::test]
async fn work_crash_by_signal_error_text() {
    let result = work_with(outcome(
        JobEnd::Exited,
        ExitStatus::Signal(11),
        "",
        "segfault\n",
    ))
    .await;
    assert_eq!(result.status, JobStatus::Error);
    assert_eq!(result.exit_code, Some(139));
    let error = result.error.expect("error text");
    assert!(error.starts_with("agent was killed by signal 11 without a reply: expected one JSON object with \"type\":\"info\""), "{error}");
    assert!(
        error.ends_with("\nlast stderr lines:\n  segfault"),
        "{error}"
    );
}

#[tokio::test]
async fn work_timed_out_error_text() {
    let stdout = r#"{"type":"info","job_id":5,"payload":{"message":"late"}}"#;
    let result = work_with(outcome(
        JobEnd::TimedOut,
        ExitStatus::Signal(9),
        stdout,
        "still working\n",
    ))
    .await;
    assert_eq!(result.status, JobStatus::TimedOut);
    assert_eq!(result.message, None);
    assert_eq!(
        result.error.as_deref(),
        Some("agent wrote a reply but did not exit within 2 s and was killed (killed by signal 9), so the reply was not used: exit after writing the reply\nlast stderr lines:\n  still working")
    );
    assert_eq!(exit_for(Outcome::Work(&result)), Exit::NoValidReply);

    let result = work_with(outcome(
        JobEnd::TimedOut,
        ExitStatus::Signal(9),
        "{\"type\":\"info\"",
        "still working\n",
    ))
    .await;
    assert_eq!(result.status, JobStatus::TimedOut);
    assert_eq!(
        result.error.as_deref(),
        Some("agent did not finish within 2 s and was killed (killed by signal 9): expected one JSON object with \"type\":\"info\" on stdout\nlast stderr lines:\n  still working")
    );
}

#[tokio::test]
async fn work_cancelled_error_text() {
    let result = work_with(outcome(JobEnd::Cancelled, ExitStatus::Signal(9), "", "")).await;
    assert_eq!(result.status, JobStatus::Cancelled);
    assert_eq!(
        result.error.as_deref(),
        Some("job was cancelled and the agent was killed (killed by signal 9) before it finished\nstderr was empty")
    );
    assert_eq!(exit_for(Outcome::Work(&result)), Exit::NoValidReply);
}

#[tokio::test]
async fn work_stdout_cap_error_text() {
    let result = work_with(outcome(
        JobEnd::StdoutLimit,
        ExitStatus::Signal(9),
        "yyyy",
        "",
    ))
    .await;
    assert_eq!(result.status, JobStatus::Error);
    assert_eq!(
        result.error.as_deref(),
        Some("agent was killed (killed by signal 9) after writing more than 1048576 bytes to stdout: expected one JSON object with \"type\":\"info\" on stdout, and logs belong on stderr\nstderr was empty")
    );
}

#[tokio::test]
async fn work_long_stderr_line_is_cut() {
    let line = "x".repeat(1000);
    let result = work_with(outcome(JobEnd::Exited, ExitStatus::Code(1), "", &line)).await;
    let error = result.error.expect("error text");
    let quoted = error.lines().last().expect("stderr line");
    assert_eq!(quoted, format!("  {}…", "x".repeat(300)));
}

#[tokio::test]
async fn work_executor_error_is_returned() {
    let dispatcher = Dispatcher::new(FakeExecutor::new(|_| {
        Err(ExecutorError::Runtime {
            executor: "fake",
            operation: "start",
            message: "boom".to_owned(),
        })
    }));
    let error = with_timeout(dispatcher.work(
        &integration("name = \"t\"\n"),
        &prepared(),
        WorkRequest::default(),
    ))
    .await
    .expect_err("executor failure");
    assert!(
        matches!(error, Error::Executor(ExecutorError::Runtime { .. })),
        "{error}"
    );
    assert_eq!(exit_for(Outcome::Failed(&error)), Exit::ExecutorUnavailable);
}

#[tokio::test]
async fn describe_healthy() {
    let executor = FakeExecutor::new(|job: &JobSpec| {
        let stdout = format!(
            "boot\n{{\"type\":\"heartbeat\",\"job_id\":{},\"v\":2}}\n",
            job.job_id
        );
        Ok(outcome(JobEnd::Exited, ExitStatus::Code(0), &stdout, ""))
    });
    let dispatcher = Dispatcher::new(executor.clone());
    let integration = integration("name = \"test\"\n[env]\nK = \"v\"\n");
    let options = DescribeOptions {
        job_id: Some(77),
        ..DescribeOptions::default()
    };

    let report = with_timeout(dispatcher.describe(&integration, &prepared(), options))
        .await
        .expect("check runs");

    assert!(report.healthy);
    assert_eq!(report.status, JobStatus::Succeeded);
    assert_eq!(report.job_id, 77);
    assert_eq!(
        report.reply.as_ref().map(|reply| reply["v"].clone()),
        Some(json!(2))
    );
    assert_eq!(exit_for(Outcome::Describe(&report)), Exit::Success);

    let job = &executor.jobs()[0];
    assert_eq!(job.kind, MessageKind::Describe);
    assert_eq!(job.env, [("K".to_owned(), "v".to_owned())]);
    assert_eq!(
        String::from_utf8_lossy(&job.stdin),
        format!(
            r#"{{"type":"describe","agentID":"{}","job_id":77}}"#,
            agent_id_for("test")
        )
    );
}

#[tokio::test]
async fn describe_unhealthy_without_heartbeat() {
    let executor = FakeExecutor::new(|_| {
        Ok(outcome(
            JobEnd::Exited,
            ExitStatus::Code(1),
            "{\"type\":\"info\"}\n",
            "no describe support\n",
        ))
    });
    let dispatcher = Dispatcher::new(executor);
    let report = with_timeout(dispatcher.describe(
        &integration("name = \"t\"\n"),
        &prepared(),
        DescribeOptions::default(),
    ))
    .await
    .expect("check runs");

    assert!(!report.healthy);
    assert_eq!(report.status, JobStatus::Error);
    assert_eq!(
        report.error.as_deref(),
        Some("agent exited with exit code 1 without a reply: expected one JSON object with \"type\":\"heartbeat\" on stdout, found 1 JSON object(s), with \"type\" values \"info\"\nlast stderr lines:\n  no describe support")
    );
    assert_eq!(exit_for(Outcome::Describe(&report)), Exit::NoValidReply);
}

#[tokio::test]
async fn describe_timed_out() {
    let dispatcher = Dispatcher::new(FakeExecutor::new(|_| {
        Ok(outcome(JobEnd::TimedOut, ExitStatus::Signal(9), "", ""))
    }));
    let options = DescribeOptions {
        timeout: Some(Duration::from_millis(1500)),
        ..DescribeOptions::default()
    };
    let report =
        with_timeout(dispatcher.describe(&integration("name = \"t\"\n"), &prepared(), options))
            .await
            .expect("check runs");
    assert_eq!(report.status, JobStatus::TimedOut);
    assert_eq!(
        report.error.as_deref(),
        Some("agent did not finish within 1500 ms and was killed (killed by signal 9): expected one JSON object with \"type\":\"heartbeat\" on stdout\nstderr was empty")
    );
}

#[tokio::test]
async fn describe_timed_out_after_heartbeat() {
    let dispatcher = Dispatcher::new(FakeExecutor::new(|_| {
        Ok(outcome(
            JobEnd::TimedOut,
            ExitStatus::Signal(9),
            "{\"type\":\"heartbeat\"}\n",
            "",
        ))
    }));
    let options = DescribeOptions {
        timeout: Some(Duration::from_secs(3)),
        ..DescribeOptions::default()
    };
    let report =
        with_timeout(dispatcher.describe(&integration("name = \"t\"\n"), &prepared(), options))
            .await
            .expect("check runs");
    assert_eq!(report.status, JobStatus::TimedOut);
    assert!(!report.healthy);
    assert_eq!(
        report.error.as_deref(),
        Some("agent wrote a reply but did not exit within 3 s and was killed (killed by signal 9), so the reply was not used: exit after writing the reply\nstderr was empty")
    );
}

#[tokio::test]
async fn prepare_pings_once_and_passes_package() {
    let executor = FakeExecutor::new(replying(0));
    let dispatcher = Dispatcher::new(executor.clone());
    let integration = integration("name = \"Test\"\n[run]\ncommand = \"./agent --flag\"\n");

    for _ in 0..2 {
        with_timeout(dispatcher.prepare(&integration))
            .await
            .expect("prepare");
    }

    assert_eq!(*executor.pings.lock().expect("pings lock"), 1);
    let packages = executor.packages.lock().expect("packages lock").clone();
    assert_eq!(packages.len(), 2);
    assert_eq!(packages[0].integration, "Test");
    assert_eq!(packages[0].agent_id, agent_id_for("test").to_string());
    assert_eq!(packages[0].root, Path::new("/pkg"));
    assert_eq!(packages[0].digest, "ab".repeat(32));
    assert_eq!(
        packages[0].command,
        Some(vec!["./agent".to_owned(), "--flag".to_owned()])
    );
}

#[tokio::test]
async fn prepare_unreachable_runtime() {
    let executor = Arc::new(FakeExecutor {
        script: Box::new(replying(0)),
        ping: Err(|| ExecutorError::Unavailable {
            executor: "fake",
            address: "unix:///nowhere.sock".to_owned(),
            reason: "connection refused".to_owned(),
        }),
        pings: Mutex::new(0),
        packages: Mutex::new(Vec::new()),
        jobs: Mutex::new(Vec::new()),
    });
    let dispatcher = Dispatcher::new(executor.clone());
    let error = with_timeout(dispatcher.prepare(&integration("name = \"t\"\n")))
        .await
        .expect_err("unreachable");
    assert_eq!(exit_for(Outcome::Failed(&error)), Exit::ExecutorUnavailable);
    assert!(
        error.to_string().contains("unix:///nowhere.sock"),
        "{error}"
    );
    assert!(executor.packages.lock().expect("packages lock").is_empty());
}

#[test]
fn merge_env_replaces_in_place() {
    let base = vec![
        ("A".to_owned(), "1".to_owned()),
        ("B".to_owned(), "2".to_owned()),
    ];
    let merged = merge_env(
        &base,
        &[
            ("B".to_owned(), "3".to_owned()),
            ("C".to_owned(), "4".to_owned()),
            ("B".to_owned(), "5".to_owned()),
        ],
    )
    .expect("valid env");
    assert_eq!(
        merged,
        [
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "5".to_owned()),
            ("C".to_owned(), "4".to_owned()),
        ]
    );
}

#[test]
fn merge_env_rejects_nul_value() {
    let error = merge_env(&[], &[("K".to_owned(), "a\0b".to_owned())]).expect_err("NUL");
    assert_eq!(
        error.to_string(),
        "env variable K contains a NUL byte, which no process environment can carry"
    );
}

#[test]
fn integration_new_takes_manifest_env() {
    let integration = integration("name = \" My Agent \"\n[env]\nZ = \"1\"\nA = \"2\"\n");
    assert_eq!(integration.name, "My Agent");
    assert_eq!(integration.agent_id, agent_id_for("my agent"));
    assert_eq!(
        integration.env,
        [
            ("A".to_owned(), "2".to_owned()),
            ("Z".to_owned(), "1".to_owned())
        ]
    );
}

/// An outcome collected outside `work` (as recovery after a restart does) is parsed like one
/// that `work` ran.
#[test]
fn result_from_outcome_parses_reply() {
    let dispatcher = Dispatcher::new(FakeExecutor::new(replying(0)));
    let reply = json!({
        "type": "info",
        "job_id": 77,
        "payload": {"message": "recovered"},
        "return_code": 0,
    });
    let recovered = outcome(
        JobEnd::Exited,
        ExitStatus::Code(0),
        &format!("{reply}\n"),
        "",
    );

    let result = dispatcher.work_result_from_outcome(77, &recovered, Duration::from_secs(5));

    assert_eq!(result.job_id, 77);
    assert_eq!(result.status, JobStatus::Succeeded);
    assert_eq!(result.message.as_deref(), Some("recovered"));
    assert_eq!(result.error, None);
}

/// A recovered outcome with a reply for another job is an error result, as in `work`.
#[test]
fn result_from_outcome_rejects_other_job_id() {
    let dispatcher = Dispatcher::new(FakeExecutor::new(replying(0)));
    let reply = json!({"type": "info", "job_id": 1, "payload": {"message": "x"}});
    let recovered = outcome(
        JobEnd::Exited,
        ExitStatus::Code(0),
        &format!("{reply}\n"),
        "",
    );

    let result = dispatcher.work_result_from_outcome(2, &recovered, Duration::from_secs(5));

    assert_eq!(result.status, JobStatus::Error);
    assert!(result.error.is_some());
}

/// Returns the messages of a result's warnings, for comparing with expected text.
fn warning_messages(result: &WorkResult) -> Vec<&str> {
    result
        .warnings
        .iter()
        .map(|warning| warning.message.as_str())
        .collect()
}
