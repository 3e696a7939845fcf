//! `run` with real processes: `/bin/sh` scripts and the static test agent.

#[path = "../../../tests/common/testagent.rs"]
mod testagent;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentrun_executor::{
    Executor, ExecutorError, ExitStatus, JobEnd, JobOutcome, JobSpec, Limits, MessageKind,
    PackageSpec, Prepared, Target,
};
use agentrun_subprocess::{SubprocessConfig, SubprocessExecutor, AGENT_LANG, MINIMAL_PATH};
use serde_json::Value;
use testagent::{
    describe_message, fnv1a64_hex, work_message, write_testagent_package, UNICODE_LABEL,
};

/// Deadline for any one `prepare` or `run` call in these tests, above the default job timeout.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Deadline for a killed process to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// Job timeout for tests that expect a timeout.
const SHORT_JOB_TIMEOUT: Duration = Duration::from_secs(1);
const AGENT_ID: &str = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";

/// A prepared package in a temporary folder.
struct Agent {
    _dir: tempfile::TempDir,
    prepared: Prepared,
    executor: SubprocessExecutor,
}

impl Agent {
    /// Prepares the test agent through its Dockerfile (`ENTRYPOINT ["/testagent"]`).
    async fn testagent() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        write_testagent_package(dir.path());
        Self::prepare(dir, None).await
    }

    /// Prepares a `/bin/sh` script with this body, run through `[run] command`.
    async fn script(body: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let dockerfile = "FROM scratch\nCOPY agent.sh /\nENTRYPOINT [\"/agent.sh\"]\n";
        fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
        let script = dir.path().join("agent.sh");
        fs::write(&script, format!("#!/bin/sh\n{body}\n")).expect("write script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        Self::prepare(dir, Some(vec!["./agent.sh".to_owned()])).await
    }

    async fn prepare(dir: tempfile::TempDir, command: Option<Vec<String>>) -> Self {
        let executor = SubprocessExecutor::new(SubprocessConfig::default());
        let spec = PackageSpec {
            integration: "test".to_owned(),
            agent_id: AGENT_ID.to_owned(),
            digest: "cd".repeat(32),
            root: dir.path().to_path_buf(),
            command,
        };
        let prepared = tokio::time::timeout(TEST_TIMEOUT, executor.prepare(&spec))
            .await
            .expect("prepare finished in time")
            .unwrap_or_else(|error| panic!("prepare failed: {error}"));
        Self {
            _dir: dir,
            prepared,
            executor,
        }
    }

    fn package_dir(&self) -> &Path {
        match &self.prepared.target {
            Target::Command { working_dir, .. } => working_dir,
            other => panic!("expected a command target, got {other:?}"),
        }
    }

    async fn try_run(&self, job: JobSpec) -> Result<JobOutcome, ExecutorError> {
        tokio::time::timeout(TEST_TIMEOUT, self.executor.run(&self.prepared, job))
            .await
            .expect("run finished in time")
    }

    async fn run(&self, job: JobSpec) -> JobOutcome {
        self.try_run(job)
            .await
            .unwrap_or_else(|error| panic!("run failed: {error}"))
    }
}

/// Builds a work job with payload `message` and, when given, `case`.
fn work_job(job_id: u64, case: Option<&str>, message: &str) -> JobSpec {
    let mut fields = vec![("message", message)];
    if let Some(case) = case {
        fields.push(("case", case));
    }
    JobSpec::new(
        job_id,
        MessageKind::Work,
        work_message(job_id, AGENT_ID, &fields),
    )
}

/// Builds a work job whose case is chosen through `TESTAGENT_CASE`.
fn env_case_job(job_id: u64, case: &str, message: &str) -> JobSpec {
    let mut job = work_job(job_id, None, message);
    job.env.push(("TESTAGENT_CASE".to_owned(), case.to_owned()));
    job
}

/// Parses the last non-empty stdout line as the reply.
fn reply(outcome: &JobOutcome) -> Value {
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|error| {
        panic!(
            "no JSON reply on the last stdout line ({error}); stdout:\n{stdout}\nstderr:\n{}",
            outcome.stderr_text()
        )
    })
}

/// Returns true while `pid` is a live process (a zombie counts as gone: it cannot run).
fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name, which may contain spaces.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Waits until `pid` is gone, and fails the test when it outlives [`GONE_TIMEOUT`].
async fn assert_gone(pid: u32) {
    let waited = tokio::time::timeout(GONE_TIMEOUT, async {
        while is_alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "process {pid} is still alive");
}

/// Script that writes its own pid and that of a background child to `$PID_FILE`, then waits.
const PID_FILE_SCRIPT: &str = "echo $$ > \"$PID_FILE.tmp\"\nsleep 300 &\necho $! >> \"$PID_FILE.tmp\"\nmv \"$PID_FILE.tmp\" \"$PID_FILE\"\nwait";

/// Waits until the agent of [`PID_FILE_SCRIPT`] has written both pids, and returns them.
async fn wait_for_pids(pid_file: &Path) -> Vec<u32> {
    loop {
        let found = pids(&fs::read_to_string(pid_file).unwrap_or_default());
        if found.len() == 2 {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads pids (one per line) from text.
fn pids(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

// --- Replies through the Dockerfile-mapped test agent --------------------------------------------

/// The test agent package prepared from its Dockerfile replies to describe and work.
#[tokio::test]
async fn run_testagent_describe_and_work() {
    let agent = Agent::testagent().await;

    let describe = JobSpec::new(1, MessageKind::Describe, describe_message(1, AGENT_ID));
    let outcome = agent.run(describe).await;
    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(reply(&outcome), serde_json::json!({"type": "heartbeat"}));
    assert_eq!(outcome.container_id, None);

    let outcome = agent.run(work_job(2, None, "hello")).await;
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    let reply = reply(&outcome);
    assert_eq!(reply["type"], "info");
    assert_eq!(reply["job_id"], 2);
    assert_eq!(reply["agent"], AGENT_ID);
    assert_eq!(reply["payload"]["message"], "hello");
}

/// A 1 MiB payload value reaches the agent intact.
#[tokio::test]
async fn run_big_payload_arrives_intact() {
    let agent = Agent::testagent().await;
    let message: String = (0..1024 * 1024)
        .map(|index| char::from(b'a' + (index % 26) as u8))
        .collect();

    let outcome = agent.run(work_job(3, Some("big"), &message)).await;

    assert_eq!(outcome.exit, ExitStatus::Code(0));
    let reply = reply(&outcome);
    assert_eq!(reply["payload"]["length"], 1024 * 1024);
    assert_eq!(
        reply["payload"]["fnv1a64"],
        fnv1a64_hex(message.as_bytes()).as_str()
    );
}

/// Non-ASCII text passes both ways unchanged.
#[tokio::test]
async fn run_unicode_round_trip() {
    let agent = Agent::testagent().await;
    let message = "naïve café — 東京 🚀 \"quoted\"\nsecond line";

    let outcome = agent.run(work_job(4, Some("unicode"), message)).await;

    let reply = reply(&outcome);
    assert_eq!(reply["payload"]["message"], message);
    assert_eq!(reply["payload"]["url_label"], UNICODE_LABEL);
}

/// An agent that crashes: no reply, its exit code and the stderr tail.
#[tokio::test]
async fn run_crash_reports_exit_and_stderr() {
    let agent = Agent::testagent().await;

    let outcome = agent.run(work_job(5, Some("crash"), "x")).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(3));
    assert!(outcome.stdout.is_empty());
    assert_eq!(outcome.stderr_text(), "testagent: crashing on purpose\n");
    assert_eq!(outcome.stderr_total_bytes, 31);
}

// --- Environment --------------------------------------------------------------------------------

/// The agent's environment is exactly the job's plus PATH, HOME and LANG, whatever the values
/// hold, and nothing of the engine's environment leaks.
#[tokio::test]
async fn run_env_is_exact() {
    // The variable stands for the engine's environment, which must not leak. No other test
    // reads it.
    std::env::set_var("AGENTRUN_TEST_ENGINE_SECRET", "must-not-leak");
    let agent = Agent::testagent().await;
    let values = [
        ("WITH_EQUALS", "a=b=c"),
        ("WITH_SPACES", "  leading and trailing  "),
        ("WITH_QUOTES", "double \" single ' back ` dollar $HOME"),
        ("WITH_NEWLINES", "line one\nline two\r\n"),
        ("NON_ASCII", "Grüße 世界 🚀"),
        ("EMPTY", ""),
        ("url", "http://127.0.0.1:8080/hook?x=1&y=2"),
    ];
    let mut job = work_job(6, Some("env"), "x");
    job.env = values
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();

    let outcome = agent.run(job).await;

    let reply = reply(&outcome);
    let text = reply["payload"]["message"]
        .as_str()
        .expect("the env case replies with text");
    let mut seen: BTreeMap<String, String> =
        serde_json::from_str(text).expect("the env case replies with a JSON object");
    let home = seen.remove("HOME").expect("HOME is set");
    let mut expected: BTreeMap<String, String> = values
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    expected.insert("PATH".to_owned(), MINIMAL_PATH.to_owned());
    expected.insert("LANG".to_owned(), AGENT_LANG.to_owned());
    assert_eq!(seen, expected);

    // HOME was a private folder, removed after the job.
    let home = PathBuf::from(home);
    assert!(
        home.file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("agentrun-home-")),
        "HOME is {}",
        home.display()
    );
    assert!(!home.exists(), "{} was not removed", home.display());
}

/// Job variables named PATH, HOME or LANG win over the backend's.
#[tokio::test]
async fn run_job_env_overrides_defaults() {
    let agent = Agent::script("printf '%s|%s|%s' \"$PATH\" \"$HOME\" \"$LANG\"").await;
    let mut job = work_job(7, None, "x");
    job.env = vec![
        ("PATH".to_owned(), "/bin:/usr/bin".to_owned()),
        ("HOME".to_owned(), "/nonexistent".to_owned()),
        ("LANG".to_owned(), "de_DE.UTF-8".to_owned()),
    ];

    let outcome = agent.run(job).await;

    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(outcome.stdout, b"/bin:/usr/bin|/nonexistent|de_DE.UTF-8");
}

/// The private HOME is writable by the agent and its working directory is the package folder.
#[tokio::test]
async fn run_home_writable_and_cwd_is_package() {
    let agent = Agent::script("touch \"$HOME/file\" && test -d \"$HOME\" && pwd").await;

    let outcome = agent.run(work_job(8, None, "x")).await;

    assert_eq!(
        outcome.exit,
        ExitStatus::Code(0),
        "{}",
        outcome.stderr_text()
    );
    assert_eq!(
        String::from_utf8_lossy(&outcome.stdout).trim_end(),
        agent.package_dir().display().to_string()
    );
}

/// Environment entries that a process cannot hold are rejected, naming only the variable.
#[tokio::test]
async fn run_rejects_invalid_env() {
    let agent = Agent::script("exit 0").await;
    let cases = [
        ("A=B", "x", "environment variable `A=B` has `=` in its name"),
        ("", "x", "environment variable `` has an empty name"),
        (
            "SECRET",
            "s3cr3t\0",
            "environment variable `SECRET` has a NUL byte in its value",
        ),
    ];
    for (name, value, expected) in cases {
        let mut job = work_job(9, None, "x");
        job.env = vec![(name.to_owned(), value.to_owned())];
        match agent.try_run(job).await {
            Err(ExecutorError::Runtime {
                executor,
                operation,
                message,
            }) => {
                assert_eq!(executor, "subprocess");
                assert_eq!(operation, "set agent environment");
                assert!(message.starts_with(expected), "message: {message}");
                assert!(!message.contains("s3cr3t"), "the value leaked: {message}");
            }
            other => panic!("expected a Runtime error for {name:?}, got {other:?}"),
        }
    }
}

// --- Stdin --------------------------------------------------------------------------------------

/// The agent gets exactly the message bytes, then end of file.
#[tokio::test]
async fn run_stdin_is_message_then_eof() {
    let agent = Agent::script("cat").await;
    let job = work_job(10, None, "exact bytes ✓");
    let message = job.stdin.clone();

    let outcome = agent.run(job).await;

    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(outcome.stdout, message);
}

/// An agent that reads stdin to end of file before replying finishes.
#[tokio::test]
async fn run_read_eof_agent_finishes() {
    let agent = Agent::testagent().await;

    let job = env_case_job(11, "read-eof", "to the end");
    let message_bytes = job.stdin.len();

    let outcome = agent.run(job).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    let reply = reply(&outcome);
    assert_eq!(reply["payload"]["message"], "to the end");
    assert_eq!(reply["payload"]["stdin_bytes"], message_bytes);
}

/// An agent that never reads stdin still gets to reply, even when the message is far larger
/// than a pipe buffer.
#[tokio::test]
async fn run_agent_that_never_reads() {
    let agent = Agent::testagent().await;
    let large = "y".repeat(4 * 1024 * 1024);
    let mut job = env_case_job(12, "no-stdin", &large);
    job.env
        .push(("TESTAGENT_JOB_ID".to_owned(), "12".to_owned()));

    let outcome = agent.run(job).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(reply(&outcome)["job_id"], 12);
}

/// An agent that exits at once, before the message is written, is an ordinary outcome.
#[tokio::test]
async fn run_broken_pipe_is_tolerated() {
    let agent = Agent::script("echo early; exit 0").await;
    let job = work_job(13, None, &"z".repeat(4 * 1024 * 1024));

    let outcome = agent.run(job).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(outcome.stdout, b"early\n");
}

// --- Output -------------------------------------------------------------------------------------

/// Past the stdout cap the agent is killed and the job ends with `StdoutLimit`. Stdout then
/// contains exactly the cap.
#[tokio::test]
async fn run_stdout_cap_kills_agent() {
    let agent = Agent::testagent().await;
    let mut job = work_job(14, Some("flood-stdout"), "x");
    job.max_stdout_bytes = 64 * 1024;

    let outcome = agent.run(job).await;

    assert_eq!(outcome.end, JobEnd::StdoutLimit);
    assert_eq!(outcome.exit, ExitStatus::Signal(9));
    assert_eq!(outcome.stdout.len(), 64 * 1024);
}

/// A flood of stderr does not block the agent, and the tail and the total are kept.
#[tokio::test]
async fn run_stderr_tail_of_flood() {
    let agent = Agent::testagent().await;
    let mut job = work_job(15, Some("flood-stderr"), "after the flood");
    job.stderr_tail_bytes = 4096;

    let outcome = agent.run(job).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(outcome.stderr_total_bytes, 10 * 1024 * 1024);
    assert_eq!(outcome.stderr_tail.len(), 4096);
    assert!(outcome.stderr_tail.ends_with(b"eee\n"));
    assert_eq!(reply(&outcome)["payload"]["message"], "after the flood");
}

/// Stdout and stderr stay apart.
#[tokio::test]
async fn run_keeps_stdout_and_stderr_apart() {
    let agent = Agent::script("echo out; echo err >&2; echo out2").await;

    let outcome = agent.run(work_job(16, None, "x")).await;

    assert_eq!(outcome.stdout, b"out\nout2\n");
    assert_eq!(outcome.stderr_tail, b"err\n");
}

// --- Exit status --------------------------------------------------------------------------------

/// Exit codes and signals are reported as such.
#[tokio::test]
async fn run_reports_exit_code_and_signal() {
    let code = Agent::script("exit 7").await;
    assert_eq!(
        code.run(work_job(17, None, "x")).await.exit,
        ExitStatus::Code(7)
    );

    let signal = Agent::script("kill -TERM $$").await;
    assert_eq!(
        signal.run(work_job(18, None, "x")).await.exit,
        ExitStatus::Signal(15)
    );
}

// --- Process groups: timeout, cancellation, leftovers --------------------------------------------

/// On timeout the whole group is killed, including a grandchild in the background.
#[tokio::test]
async fn run_timeout_kills_grandchild() {
    let agent = Agent::script("sleep 300 &\necho $!\nsleep 300").await;
    let mut job = work_job(19, None, "x");
    job.timeout = SHORT_JOB_TIMEOUT;

    let outcome = agent.run(job).await;

    assert_eq!(outcome.end, JobEnd::TimedOut);
    assert_eq!(outcome.exit, ExitStatus::Signal(9));
    let grandchildren = pids(&String::from_utf8_lossy(&outcome.stdout));
    assert_eq!(grandchildren.len(), 1, "stdout: {:?}", outcome.stdout);
    assert_gone(grandchildren[0]).await;
}

/// A timeout too large to add to a point in time still runs the job.
#[tokio::test]
async fn run_huge_timeout_is_accepted() {
    let agent = Agent::script("echo ok").await;
    let mut job = work_job(32, None, "x");
    job.timeout = Duration::MAX;

    let outcome = agent.run(job).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.stdout, b"ok\n");
}

/// An agent that hangs is stopped by the deadline.
#[tokio::test]
async fn run_hanging_agent_times_out() {
    let agent = Agent::testagent().await;
    let mut job = work_job(20, Some("hang"), "x");
    job.timeout = SHORT_JOB_TIMEOUT;

    let outcome = agent.run(job).await;

    assert_eq!(outcome.end, JobEnd::TimedOut);
    assert_eq!(outcome.exit, ExitStatus::Signal(9));
}

/// A child that the agent forked and left running (holding stdout open) is killed when the
/// agent exits, and the job does not wait for it.
#[tokio::test]
async fn run_kills_forked_child_after_exit() {
    let agent = Agent::testagent().await;

    let outcome = agent.run(work_job(21, Some("fork"), "x")).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    let child = reply(&outcome)["payload"]["child_pid"]
        .as_u64()
        .expect("the fork case reports the child's pid");
    assert_gone(child as u32).await;
}

/// Cancellation kills the group and reports it.
#[tokio::test]
async fn run_cancellation_kills_group() {
    let agent = Agent::script(PID_FILE_SCRIPT).await;
    let pid_dir = tempfile::tempdir().expect("temporary folder");
    let pid_file = pid_dir.path().join("pids");
    let mut job = work_job(22, None, "x");
    job.env = vec![("PID_FILE".to_owned(), pid_file.display().to_string())];

    // Cancel once the agent and its background child are both running.
    let cancel = job.cancel.clone();
    let watched_file = pid_file.clone();
    let canceller = tokio::spawn(async move {
        let started = wait_for_pids(&watched_file).await;
        cancel.cancel();
        started
    });

    let outcome = agent.run(job).await;
    let started = tokio::time::timeout(TEST_TIMEOUT, canceller)
        .await
        .expect("the canceller finished in time")
        .expect("the canceller did not panic");

    assert_eq!(outcome.end, JobEnd::Cancelled);
    assert_eq!(outcome.exit, ExitStatus::Signal(9));
    for pid in started {
        assert_gone(pid).await;
    }
}

/// A job cancelled before it starts ends as cancelled without starting the agent.
#[tokio::test]
async fn run_cancelled_before_start() {
    let marker_dir = tempfile::tempdir().expect("temporary folder");
    let marker = marker_dir.path().join("started");
    let agent = Agent::script("touch \"$MARKER\"; sleep 300").await;
    let mut job = work_job(23, None, "x");
    job.env = vec![("MARKER".to_owned(), marker.display().to_string())];
    job.cancel.cancel();

    let outcome = agent.run(job).await;

    assert_eq!(outcome.end, JobEnd::Cancelled);
    assert_eq!(outcome.exit, ExitStatus::Unknown);
    assert!(!marker.exists(), "the agent was started");
}

/// Dropping the job future kills the agent and its children.
#[tokio::test]
async fn run_dropped_future_kills_group() {
    let agent = Agent::script(PID_FILE_SCRIPT).await;
    let pid_dir = tempfile::tempdir().expect("temporary folder");
    let pid_file = pid_dir.path().join("pids");
    let mut job = work_job(24, None, "x");
    job.env = vec![("PID_FILE".to_owned(), pid_file.display().to_string())];

    let both_started = wait_for_pids(&pid_file);
    let started = tokio::time::timeout(TEST_TIMEOUT, async {
        tokio::select! {
            outcome = agent.executor.run(&agent.prepared, job) => {
                panic!("the agent finished on its own: {outcome:?}")
            }
            pids = both_started => pids,
        }
    })
    .await
    .expect("the agent wrote its pids in time");

    // The run future was dropped when select! returned.
    for pid in started {
        assert_gone(pid).await;
    }
}

/// Starts a [`PID_FILE_SCRIPT`] job with `executor` and leaks its future once both pids are
/// written, so that nothing of the job is dropped: the agent runs on and its record stays, as
/// after an engine killed with SIGKILL. Returns the pids.
async fn leak_running_job(
    executor: &SubprocessExecutor,
    prepared: &Prepared,
    job_id: u64,
    pid_file: &Path,
) -> Vec<u32> {
    let mut job = work_job(job_id, None, "x");
    job.env = vec![("PID_FILE".to_owned(), pid_file.display().to_string())];
    let mut run = Box::pin(executor.run(prepared, job));
    let started = tokio::time::timeout(TEST_TIMEOUT, async {
        tokio::select! {
            outcome = &mut run => panic!("the agent finished on its own: {outcome:?}"),
            pids = wait_for_pids(pid_file) => pids,
        }
    })
    .await
    .expect("the agent wrote its pids in time");
    std::mem::forget(run);
    started
}

/// With a state folder, an agent left running by an engine killed with SIGKILL is killed by
/// the next executor: `recover` for its job id, and `sweep` for every other record.
#[tokio::test]
async fn recover_and_sweep_kill_agents_of_killed_engine() {
    let state = tempfile::tempdir().expect("temporary folder");
    let config = SubprocessConfig {
        state_dir: Some(state.path().join("run")),
        ..SubprocessConfig::default()
    };
    let mut agent = Agent::script(PID_FILE_SCRIPT).await;
    agent.executor = SubprocessExecutor::new(config.clone());
    let pid_dir = tempfile::tempdir().expect("temporary folder");

    let recovered_pids = leak_running_job(
        &agent.executor,
        &agent.prepared,
        31,
        &pid_dir.path().join("a"),
    )
    .await;
    let swept_pids = leak_running_job(
        &agent.executor,
        &agent.prepared,
        32,
        &pid_dir.path().join("b"),
    )
    .await;
    let kept_pids = leak_running_job(
        &agent.executor,
        &agent.prepared,
        33,
        &pid_dir.path().join("c"),
    )
    .await;
    assert!(state.path().join("run/31.job").exists());

    // The next engine process.
    let next = SubprocessExecutor::new(config);
    let outcome = tokio::time::timeout(TEST_TIMEOUT, next.recover(31, TEST_TIMEOUT, 1024, 1024))
        .await
        .expect("recover finished in time")
        .expect("recover succeeded");
    assert!(outcome.is_none(), "{outcome:?}");
    for pid in recovered_pids {
        assert_gone(pid).await;
    }
    assert!(!state.path().join("run/31.job").exists());
    for pid in &swept_pids {
        assert!(
            is_alive(*pid),
            "recover of job 31 killed process {pid} of job 32"
        );
    }

    let removed = tokio::time::timeout(TEST_TIMEOUT, next.sweep(&[33]))
        .await
        .expect("sweep finished in time")
        .expect("sweep succeeded");
    assert_eq!(removed, Vec::<String>::new());
    for pid in swept_pids {
        assert_gone(pid).await;
    }
    assert!(!state.path().join("run/32.job").exists());
    for pid in &kept_pids {
        assert!(is_alive(*pid), "sweep killed process {pid} of kept job 33");
    }

    tokio::time::timeout(TEST_TIMEOUT, next.sweep(&[]))
        .await
        .expect("sweep finished in time")
        .expect("sweep succeeded");
    for pid in kept_pids {
        assert_gone(pid).await;
    }
}

/// A package prepared as an image is rejected.
#[tokio::test]
async fn run_rejects_image_target() {
    let agent = Agent::script("exit 0").await;
    let mut prepared = agent.prepared.clone();
    prepared.executor = "docker".to_owned();
    prepared.target = Target::Image {
        reference: "agentrun/test:1".to_owned(),
    };

    let result = tokio::time::timeout(
        TEST_TIMEOUT,
        agent.executor.run(&prepared, work_job(25, None, "x")),
    )
    .await
    .expect("run finished in time");

    match result {
        Err(ExecutorError::Runtime { message, .. }) => {
            assert!(
                message.contains("prepared by the docker executor"),
                "{message}"
            );
        }
        other => panic!("expected a Runtime error, got {other:?}"),
    }
}

// --- Isolation ----------------------------------------------------------------------------------

/// Returns true when the tests run as root, which switching users needs.
fn running_as_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// As root, the agent runs as the configured user and group, with a HOME it owns.
#[tokio::test]
async fn run_switches_user_as_root() {
    if !running_as_root() {
        eprintln!("skipped: switching the agent's user needs a root engine");
        return;
    }
    let agent = Agent::script("id -u; id -g; id -G; touch \"$HOME/x\" && echo home-ok").await;
    // The agent user must be able to enter the package folder.
    fs::set_permissions(agent.package_dir(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut job = work_job(26, None, "x");
    job.limits = Limits {
        user: Some("65534:65533".to_owned()),
        ..Limits::default()
    };

    let outcome = agent.run(job).await;

    assert_eq!(
        outcome.exit,
        ExitStatus::Code(0),
        "{}",
        outcome.stderr_text()
    );
    assert_eq!(
        String::from_utf8_lossy(&outcome.stdout),
        "65534\n65533\n65533\nhome-ok\n"
    );
}

/// As root, a switched agent has only the agent user's file access: it can neither read a
/// file that only root may read nor write to a folder that only root may write to. The same
/// script without a user shows that root could do both.
#[tokio::test]
async fn run_switched_user_lacks_root_access() {
    if !running_as_root() {
        eprintln!("skipped: switching the agent's user needs a root engine");
        return;
    }
    let private = tempfile::tempdir().expect("temporary folder");
    fs::set_permissions(private.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret = private.path().join("secret");
    fs::write(&secret, "root only").expect("write secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    let agent = Agent::script(&format!(
        "cat '{}' >/dev/null 2>&1 && echo read || echo read-denied
         touch '{}/new' 2>/dev/null && echo wrote || echo write-denied",
        secret.display(),
        private.path().display()
    ))
    .await;
    fs::set_permissions(agent.package_dir(), fs::Permissions::from_mode(0o755)).expect("chmod");

    let mut job = work_job(35, None, "x");
    job.limits.user = Some("65534:65534".to_owned());
    let switched = agent.run(job).await;
    let as_root = agent.run(work_job(36, None, "x")).await;

    assert_eq!(
        String::from_utf8_lossy(&switched.stdout),
        "read-denied\nwrite-denied\n",
        "{}",
        switched.stderr_text()
    );
    assert_eq!(String::from_utf8_lossy(&as_root.stdout), "read\nwrote\n");
}

/// As root with an agent user, the limits hold for the agent: `nproc` stops its forks, and it
/// cannot raise `nofile` again, because only root may raise a hard limit.
#[tokio::test]
async fn run_switched_user_is_held_to_limits() {
    if !running_as_root() {
        eprintln!("skipped: switching the agent's user needs a root engine");
        return;
    }
    let agent = Agent::script(
        "/bin/sh -c 'i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done' 2>/dev/null
         echo spawner-exit=$?
         ulimit -n 128 2>/dev/null && echo raised || echo raise-denied",
    )
    .await;
    fs::set_permissions(agent.package_dir(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut job = work_job(37, None, "x");
    job.limits = Limits {
        user: Some("65534:65534".to_owned()),
        nproc: Some(8),
        nofile: Some(64),
        ..Limits::default()
    };

    let outcome = agent.run(job).await;

    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "stdout: {stdout:?}, stderr: {}",
        outcome.stderr_text()
    );
    assert_ne!(lines[0], "spawner-exit=0", "a fork past nproc must fail");
    assert_eq!(lines[1], "raise-denied");
}

/// An unknown agent user fails the job before anything starts.
#[tokio::test]
async fn run_rejects_unknown_user() {
    if !running_as_root() {
        eprintln!("skipped: users are only resolved by a root engine");
        return;
    }
    let agent = Agent::script("exit 0").await;
    let mut job = work_job(27, None, "x");
    job.limits.user = Some("agentrun-no-such-user".to_owned());

    match agent.try_run(job).await {
        Err(ExecutorError::Runtime {
            operation, message, ..
        }) => {
            assert_eq!(operation, "resolve agent user");
            assert_eq!(
                message,
                "agent user `agentrun-no-such-user` does not exist on this machine: create it or \
                 give a numeric uid"
            );
        }
        other => panic!("expected a Runtime error, got {other:?}"),
    }
}

/// A HOME parent folder that does not exist fails the job with the operating system's reason
/// in the message.
#[tokio::test]
async fn run_missing_home_parent_names_cause() {
    let mut agent = Agent::script("exit 0").await;
    let config = SubprocessConfig {
        home_parent: Some(PathBuf::from("/nonexistent/agentrun-home-parent")),
        ..SubprocessConfig::default()
    };
    agent.executor = SubprocessExecutor::new(config);

    let error = agent
        .try_run(work_job(28, None, "x"))
        .await
        .expect_err("no HOME folder can be created");
    assert!(matches!(error, ExecutorError::Io { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.starts_with(
            "create a HOME folder in /nonexistent/agentrun-home-parent failed: No such file or \
             directory (os error 2)"
        ),
        "{text}"
    );
}

/// Resource limits reach the agent, as the kernel reports them in `/proc/self/limits`.
#[tokio::test]
async fn run_applies_resource_limits() {
    let agent = Agent::script("cat /proc/self/limits").await;
    let mut job = work_job(28, None, "x");
    job.limits = Limits {
        nofile: Some(64),
        cpu_seconds: Some(30),
        address_space_bytes: Some(1024 * 1024 * 1024),
        nproc: Some(500),
        ..Limits::default()
    };

    let outcome = agent.run(job).await;

    assert_eq!(
        outcome.exit,
        ExitStatus::Code(0),
        "{}",
        outcome.stderr_text()
    );
    let limits = String::from_utf8_lossy(&outcome.stdout);
    let soft_and_hard = |name: &str| -> Vec<String> {
        let line = limits
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name:?} in:\n{limits}"));
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(soft_and_hard("Max open files"), ["64", "64"]);
    // The hard CPU limit is one second above the soft one, so SIGXCPU comes before SIGKILL.
    assert_eq!(soft_and_hard("Max cpu time"), ["30", "31"]);
    assert_eq!(
        soft_and_hard("Max address space"),
        ["1073741824", "1073741824"]
    );
    assert_eq!(soft_and_hard("Max processes"), ["500", "500"]);
}

/// Without limits the agent keeps the engine's own.
#[tokio::test]
async fn run_without_limits_keeps_engine_limits() {
    let agent = Agent::script("cat /proc/self/limits").await;

    let outcome = agent.run(work_job(31, None, "x")).await;

    let own = fs::read_to_string("/proc/self/limits").expect("read own limits");
    let line = |text: &str| {
        text.lines()
            .find(|line| line.starts_with("Max open files"))
            .map(str::to_owned)
    };
    assert_eq!(line(&String::from_utf8_lossy(&outcome.stdout)), line(&own));
}

/// The CPU-seconds limit stops a busy agent with SIGXCPU.
#[tokio::test]
async fn run_cpu_limit_stops_busy_agent() {
    let agent = Agent::script("while :; do :; done").await;
    let mut job = work_job(29, None, "x");
    job.limits.cpu_seconds = Some(1);

    let outcome = agent.run(job).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Signal(libc::SIGXCPU));
}
