//! The Podman backend against the real Podman on this machine: jobs, builds, hardening,
//! recovery and the lifetime of the private service.
//!
//! Tests that need Podman print why they skip and return when it is missing, unless
//! `AGENTRUN_REQUIRE_RUNTIMES` names `podman`. None of them needs `dockerd`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use agentrun_executor::{Executor, ExecutorError, ExitStatus, JobEnd, Limits, Prepared, Target};
use agentrun_podman::{PodmanConfig, PodmanExecutor};
use common::*;

/// An agent that copies stdin to stdout, so that a test can compare what reached it.
const CAT_AGENT: &str = "cat\n";

/// An agent that waits far longer than any test, until it is killed.
const SLEEP_AGENT: &str = "echo started\nsleep 600\n";

/// Starts an executor and prepares a package running `script`, in a fresh temp dir.
async fn executor_with_agent(
    script: &str,
) -> (PodmanExecutor, Prepared, String, tempfile::TempDir) {
    let config = test_config();
    let instance = config.instance.clone();
    let executor = private_executor(config).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let package = script_package(dir.path(), "Agent", script);
    let prepared = prepare(&executor, &package).await;
    (executor, prepared, instance, dir)
}

/// The message reaches the agent byte for byte and its stdin closes after it.
#[tokio::test]
async fn run_delivers_message_and_closes_stdin() {
    require_podman!("run_delivers_message_and_closes_stdin");
    let (executor, prepared, instance, _dir) = executor_with_agent(CAT_AGENT).await;
    let message =
        br#"{"type":"work","agentID":"a","payload":[{"name":"message","value":"hi"}],"job_id":7}"#;

    let outcome = run(&executor, &prepared, job(7, message)).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(outcome.stdout, message);
    assert_eq!(
        outcome.stderr_total_bytes,
        0,
        "stderr: {}",
        outcome.stderr_text()
    );
    assert!(outcome.container_id.is_some());
    assert_no_containers(&instance).await;
}

/// Environment values arrive unchanged, whatever characters they contain.
#[tokio::test]
async fn run_keeps_env_values_exact() {
    require_podman!("run_keeps_env_values_exact");
    let script = "printf '%s\\0' \"$V_SPACES\" \"$V_EQUALS\" \"$V_QUOTES\" \"$V_NEWLINE\" \"$V_UNICODE\" \"$V_DOLLAR\" \"$V_EMPTY\"\n";
    let (executor, prepared, instance, _dir) = executor_with_agent(script).await;
    let values = [
        ("V_SPACES", "  leading and trailing  "),
        ("V_EQUALS", "a=b=c"),
        ("V_QUOTES", r#"it's "quoted" `ticked`"#),
        ("V_NEWLINE", "line one\nline two\n"),
        ("V_UNICODE", "ünïcødé ✓ 日本"),
        ("V_DOLLAR", "$HOME ${PATH} $(id)"),
        ("V_EMPTY", ""),
    ];
    let mut job = job(8, b"");
    job.env = values
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();

    let outcome = run(&executor, &prepared, job).await;

    assert_eq!(
        outcome.exit,
        ExitStatus::Code(0),
        "stderr: {}",
        outcome.stderr_text()
    );
    let printed: Vec<&[u8]> = outcome
        .stdout
        .split(|byte| *byte == 0)
        .take(values.len())
        .collect();
    for ((name, expected), actual) in values.iter().zip(&printed) {
        assert_eq!(
            String::from_utf8_lossy(actual),
            *expected,
            "value of {name} changed"
        );
    }
    assert_eq!(printed.len(), values.len());
    assert_no_containers(&instance).await;
}

/// An agent that exits without reading a 1 MiB message finishes normally: the engine does not
/// block on the write.
#[tokio::test]
async fn run_agent_ignoring_large_stdin() {
    require_podman!("run_agent_ignoring_large_stdin");
    let (executor, prepared, instance, _dir) = executor_with_agent("echo done\n").await;
    let message = vec![b'x'; 1024 * 1024];

    let outcome = run(&executor, &prepared, job(9, &message)).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(outcome.stdout, b"done\n");
    assert_no_containers(&instance).await;
}

/// An agent that reads a 1 MiB message receives all of it.
#[tokio::test]
async fn run_delivers_large_message() {
    require_podman!("run_delivers_large_message");
    let (executor, prepared, instance, _dir) = executor_with_agent("wc -c\n").await;
    let message = vec![b'y'; 1024 * 1024];

    let outcome = run(&executor, &prepared, job(10, &message)).await;

    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(String::from_utf8_lossy(&outcome.stdout).trim(), "1048576");
    assert_no_containers(&instance).await;
}

/// Stdout past the cap kills the agent, and exactly the cap's worth of output is kept.
#[tokio::test]
async fn run_stdout_cap_kills_agent() {
    require_podman!("run_stdout_cap_kills_agent");
    let (executor, prepared, instance, _dir) =
        executor_with_agent("while :; do echo 0123456789abcdef; done\n").await;
    let mut job = job(11, b"");
    job.max_stdout_bytes = 4096;

    let outcome = run(&executor, &prepared, job).await;

    assert_eq!(outcome.end, JobEnd::StdoutLimit);
    assert_eq!(outcome.stdout.len(), 4096);
    assert_ne!(outcome.exit, ExitStatus::Code(0));
    assert_no_containers(&instance).await;
}

/// Stdout and stderr are kept apart.
#[tokio::test]
async fn run_keeps_stderr_apart() {
    require_podman!("run_keeps_stderr_apart");
    let (executor, prepared, instance, _dir) =
        executor_with_agent("echo out\necho err >&2\necho out2\n").await;

    let outcome = run(&executor, &prepared, job(12, b"")).await;

    assert_eq!(outcome.stdout, b"out\nout2\n");
    assert_eq!(outcome.stderr_tail, b"err\n");
    assert_eq!(outcome.stderr_total_bytes, 4);
    assert_no_containers(&instance).await;
}

/// Only the last `stderr_tail_bytes` of stderr are kept, and the total is counted.
#[tokio::test]
async fn run_keeps_stderr_tail() {
    require_podman!("run_keeps_stderr_tail");
    let (executor, prepared, instance, _dir) =
        executor_with_agent("i=0; while [ $i -lt 100 ]; do echo line$i >&2; i=$((i+1)); done\n")
            .await;
    let mut job = job(13, b"");
    job.stderr_tail_bytes = 7;

    let outcome = run(&executor, &prepared, job).await;

    assert_eq!(outcome.stderr_text(), "line99\n");
    let expected_total: u64 = (0..100).map(|i| format!("line{i}\n").len() as u64).sum();
    assert_eq!(outcome.stderr_total_bytes, expected_total);
    assert_no_containers(&instance).await;
}

/// A non-zero exit code is reported as the agent's, not as an engine error.
#[tokio::test]
async fn run_reports_exit_code() {
    require_podman!("run_reports_exit_code");
    let (executor, prepared, instance, _dir) = executor_with_agent("exit 7\n").await;

    let outcome = run(&executor, &prepared, job(14, b"")).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(7));
    assert_no_containers(&instance).await;
}

/// An agent that outlives its deadline is killed and its container removed.
#[tokio::test]
async fn run_timeout_kills_agent() {
    require_podman!("run_timeout_kills_agent");
    let (executor, prepared, instance, _dir) = executor_with_agent(SLEEP_AGENT).await;
    let mut job = job(15, b"");
    // Long enough for the agent to start and print on a loaded machine.
    job.timeout = Duration::from_secs(8);

    let outcome = run(&executor, &prepared, job).await;

    assert_eq!(outcome.end, JobEnd::TimedOut);
    assert_eq!(outcome.stdout, b"started\n");
    assert_eq!(outcome.exit, ExitStatus::Code(137), "SIGKILL");
    assert_no_containers(&instance).await;
}

/// Cancelling a running job kills the agent and removes its container.
#[tokio::test]
async fn run_cancel_kills_agent() {
    require_podman!("run_cancel_kills_agent");
    let (executor, prepared, instance, _dir) = executor_with_agent(SLEEP_AGENT).await;
    let executor = Arc::new(executor);
    let job = job(16, b"");
    let cancel = job.cancel.clone();
    let task = tokio::spawn({
        let executor = Arc::clone(&executor);
        async move { executor.run(&prepared, job).await }
    });

    container_of_job(&instance, 16).await;
    cancel.cancel();
    let outcome = within("cancelled run", task)
        .await
        .expect("run task does not panic")
        .expect("cancelled run returns an outcome");

    assert_eq!(outcome.end, JobEnd::Cancelled);
    assert_eq!(outcome.exit, ExitStatus::Code(137), "SIGKILL");
    assert_no_containers(&instance).await;
}

/// Cancelling before the run starts creates no container.
#[tokio::test]
async fn run_cancelled_before_start() {
    require_podman!("run_cancelled_before_start");
    let (executor, prepared, instance, _dir) = executor_with_agent(SLEEP_AGENT).await;
    let job = job(17, b"");
    job.cancel.cancel();

    let outcome = run(&executor, &prepared, job).await;

    assert_eq!(outcome.end, JobEnd::Cancelled);
    assert_eq!(outcome.exit, ExitStatus::Unknown);
    assert_no_containers(&instance).await;
}

/// Dropping the `run` future while the agent runs still removes its container.
#[tokio::test]
async fn run_dropped_future_removes_container() {
    require_podman!("run_dropped_future_removes_container");
    let (executor, prepared, instance, _dir) = executor_with_agent(SLEEP_AGENT).await;
    let executor = Arc::new(executor);
    let task = tokio::spawn({
        let executor = Arc::clone(&executor);
        async move { executor.run(&prepared, job(18, b"")).await }
    });

    container_of_job(&instance, 18).await;
    task.abort();
    let joined = within("aborted run", task).await;
    assert!(
        joined.as_ref().is_err_and(|error| error.is_cancelled()),
        "the run task was aborted: {joined:?}"
    );

    assert_no_containers(&instance).await;
}

/// A prepared reference whose image does not exist is an engine error, and leaves nothing.
#[tokio::test]
async fn run_missing_image_is_runtime_error() {
    require_podman!("run_missing_image_is_runtime_error");
    let config = test_config();
    let instance = config.instance.clone();
    let executor = private_executor(config).await;
    let prepared = Prepared {
        executor: "podman".to_owned(),
        integration: "Gone".to_owned(),
        agent_id: "00000000-0000-0000-0000-000000000000".to_owned(),
        digest: "0".repeat(64),
        target: Target::Image {
            reference: "agentrun/never-built-00000000:000000000000000000000000".to_owned(),
        },
        cache_hit: false,
    };

    let error = within("run", executor.run(&prepared, job(19, b"")))
        .await
        .expect_err("the image does not exist");

    match error {
        ExecutorError::Runtime {
            operation, message, ..
        } => {
            assert_eq!(operation, "create container");
            assert!(message.contains("never-built"), "message: {message}");
        }
        other => panic!("expected a runtime error, got {other:?}"),
    }
    assert_no_containers(&instance).await;
}

/// A job rlimit above the host's makes the OCI runtime fail at attach: the error names the
/// rlimit, and the container is removed.
#[tokio::test]
async fn run_rlimit_above_host_fails_at_attach() {
    require_podman!("run_rlimit_above_host_fails_at_attach");
    let (executor, prepared, instance, _dir) = executor_with_agent(CAT_AGENT).await;
    let mut job = job(20, b"");
    job.limits.nofile = Some(u64::from(u32::MAX));

    let error = within("run", executor.run(&prepared, job))
        .await
        .expect_err("the rlimit is above the host's hard limit");

    match error {
        ExecutorError::Runtime {
            operation, message, ..
        } => {
            assert_eq!(operation, "attach");
            assert!(message.contains("rlimit"), "message: {message}");
        }
        other => panic!("expected a runtime error, got {other:?}"),
    }
    assert_no_containers(&instance).await;
}

/// The job's limits and the hardening defaults are visible in `podman inspect` while the agent
/// runs, and from inside the agent.
#[tokio::test]
async fn run_hardening_visible_in_inspect() {
    require_podman!("run_hardening_visible_in_inspect");
    let script = "grep -E '^(NoNewPrivs|CapEff):' /proc/self/status\n\
                  ulimit -n\n\
                  touch /root-write 2>/dev/null && echo root-writable || echo root-read-only\n\
                  echo tmp-ok > /tmp/probe && cat /tmp/probe\n\
                  touch /tmp/checked\n\
                  sleep 600\n";
    let (executor, prepared, instance, _dir) = executor_with_agent(script).await;
    let executor = Arc::new(executor);
    let mut job = job(21, b"");
    job.limits = Limits {
        memory_bytes: Some(64 * 1024 * 1024),
        cpus: Some(0.5),
        pids: Some(64),
        network: Some("none".to_owned()),
        read_only_root: true,
        nofile: Some(256),
        nproc: Some(128),
        ..Limits::default()
    };
    let cancel = job.cancel.clone();
    let task = tokio::spawn({
        let executor = Arc::clone(&executor);
        async move { executor.run(&prepared, job).await }
    });

    let id = container_of_job(&instance, 21).await;
    let inspect: serde_json::Value =
        serde_json::from_str(&podman(&["inspect", &id])).expect("inspect prints JSON");
    let container = &inspect[0];
    let host = &container["HostConfig"];
    within("the agent's checks", async {
        while std::process::Command::new("podman")
            .args(["exec", &id, "test", "-e", "/tmp/checked"])
            .status()
            .is_ok_and(|status| !status.success())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    cancel.cancel();

    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["NetworkMode"], "none");
    assert_eq!(host["Memory"], 64 * 1024 * 1024);
    assert_eq!(host["PidsLimit"], 64);
    assert_eq!(host["CpuQuota"], 50_000);
    assert_eq!(host["CpuPeriod"], 100_000);
    assert_eq!(host["LogConfig"]["Type"], "k8s-file");
    let security = host["SecurityOpt"]
        .as_array()
        .expect("SecurityOpt is a list");
    assert!(
        security.iter().any(|option| option == "no-new-privileges"),
        "SecurityOpt: {security:?}"
    );
    let ulimits = host["Ulimits"].as_array().expect("Ulimits is a list");
    assert!(
        ulimits.contains(&serde_json::json!({"Name": "RLIMIT_NOFILE", "Soft": 256, "Hard": 256})),
        "Ulimits: {ulimits:?}"
    );
    assert!(
        ulimits.contains(&serde_json::json!({"Name": "RLIMIT_NPROC", "Soft": 128, "Hard": 128})),
        "Ulimits: {ulimits:?}"
    );
    let dropped = host["CapDrop"].as_array().expect("CapDrop is a list");
    for capability in ["CAP_SETUID", "CAP_NET_RAW", "CAP_CHOWN", "CAP_KILL"] {
        assert!(
            dropped.iter().any(|dropped| dropped == capability),
            "{capability} not dropped: {dropped:?}"
        );
    }
    let effective = &container["EffectiveCaps"];
    assert!(
        effective.is_null() || effective.as_array().is_some_and(Vec::is_empty),
        "EffectiveCaps: {effective}"
    );
    assert_eq!(container["Config"]["Labels"]["io.agentrun.job-id"], "21");
    assert_eq!(
        container["Config"]["Labels"]["io.agentrun.engine"],
        instance.as_str()
    );

    let outcome = within("cancelled run", task)
        .await
        .expect("run task does not panic")
        .expect("cancelled run returns an outcome");
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    assert!(stdout.contains("NoNewPrivs:\t1"), "stdout: {stdout}");
    assert!(
        stdout.contains("CapEff:\t0000000000000000"),
        "stdout: {stdout}"
    );
    assert!(stdout.contains("\n256\n"), "stdout: {stdout}");
    assert!(stdout.contains("root-read-only"), "stdout: {stdout}");
    assert!(stdout.contains("tmp-ok"), "stdout: {stdout}");
    assert_no_containers(&instance).await;
}

/// An agent that probes its limits from inside: the memory and pids limits as the cgroup
/// reports them, then a 100 MiB allocation and 40 background processes, then its user. The
/// paths cover cgroup v1 and v2.
const LIMITS_PROBE: &str = "\
cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max
cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max
dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null; echo dd-exit=$?
sh -c 'i=0; while [ $i -lt 40 ]; do sleep 600 & i=$((i+1)); done' 2>/dev/null; echo spawner-exit=$?
cat /sys/fs/cgroup/pids/pids.events 2>/dev/null || cat /sys/fs/cgroup/pids.events
id -u
id -g
";

/// The memory and pids limits hold inside the container: an allocation past the memory limit
/// is killed, a fork past the pids limit fails, and the agent runs as the configured user.
#[tokio::test]
async fn run_enforces_limits_inside_container() {
    require_podman!("run_enforces_limits_inside_container");
    let (executor, prepared, instance, _dir) = executor_with_agent(LIMITS_PROBE).await;
    let mut job = job(25, b"");
    job.limits = Limits {
        memory_bytes: Some(64 * 1024 * 1024),
        pids: Some(16),
        user: Some("65534:65534".to_owned()),
        ..Limits::default()
    };

    let outcome = run(&executor, &prepared, job).await;

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(
        outcome.exit,
        ExitStatus::Code(0),
        "{}",
        outcome.stderr_text()
    );
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "stdout: {lines:?}");
    assert_eq!(lines[0], "67108864", "memory limit");
    assert_eq!(lines[1], "16", "pids limit");
    assert_eq!(
        lines[2], "dd-exit=137",
        "the allocation past the limit is killed"
    );
    assert_ne!(
        lines[3], "spawner-exit=0",
        "a fork past the pids limit fails"
    );
    let rejected_forks: u64 = lines[4]
        .strip_prefix("max ")
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("pids.events: {:?}", lines[4]));
    assert!(rejected_forks >= 1, "pids.events: {:?}", lines[4]);
    assert_eq!(lines[5], "65534", "uid");
    assert_eq!(lines[6], "65534", "gid");
    assert_no_containers(&instance).await;
}

/// Preparing an unchanged package again finds its image, and two concurrent prepares of a
/// new package build it once.
#[tokio::test]
async fn prepare_builds_once_then_hits_cache() {
    require_podman!("prepare_builds_once_then_hits_cache");
    let executor = private_executor(test_config()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    // A unique file makes a digest no earlier run has built.
    let nonce = format!("{:?}", std::time::SystemTime::now());
    let package = package(
        dir.path(),
        "Cache",
        &format!("FROM {BASE_IMAGE}\nCOPY nonce /nonce\nENTRYPOINT [\"/bin/cat\", \"/nonce\"]\n"),
        &[("nonce", &nonce)],
    );

    let (first, second) = within("two concurrent prepares", async {
        tokio::join!(executor.prepare(&package), executor.prepare(&package))
    })
    .await;
    let first = first.expect("the package builds");
    let second = second.expect("the package builds");
    let again = prepare(&executor, &package).await;

    let built = [first.cache_hit, second.cache_hit]
        .iter()
        .filter(|hit| !**hit)
        .count();
    assert_eq!(built, 1, "exactly one of two concurrent prepares builds");
    assert!(again.cache_hit, "an unchanged package is a cache hit");
    assert_eq!(first.target, again.target);
    assert_eq!(first.executor, "podman");

    let outcome = run(&executor, &again, job(22, b"")).await;
    assert_eq!(String::from_utf8_lossy(&outcome.stdout), nonce);

    within("release", executor.release(&again))
        .await
        .expect("the image is removed");
    let Target::Image { reference } = &again.target else {
        panic!("a podman package targets an image");
    };
    let exists = std::process::Command::new("podman")
        .args(["image", "exists", reference])
        .status()
        .expect("podman runs");
    assert!(!exists.success(), "image {reference} still exists");
    within("second release", executor.release(&again))
        .await
        .expect("releasing a removed image succeeds");
}

/// A failing `RUN` fails the build with the instruction and the end of the log.
#[tokio::test]
async fn prepare_failing_run_names_step() {
    require_podman!("prepare_failing_run_names_step");
    let executor = private_executor(test_config()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let package = package(
        dir.path(),
        "Broken",
        &format!(
            "FROM {BASE_IMAGE}\nRUN echo compiling\nRUN echo linking failed >&2; exit 3\n\
             CMD [\"true\"]\n"
        ),
        &[],
    );

    let error = within("prepare", executor.prepare(&package))
        .await
        .expect_err("the build fails");

    match error {
        ExecutorError::BuildFailed {
            image,
            step,
            message,
            log_tail,
        } => {
            assert!(image.starts_with("agentrun/broken-"), "image: {image}");
            assert_eq!(step.as_deref(), Some("RUN echo linking failed >&2; exit 3"));
            assert!(message.contains("exit status 3"), "message: {message}");
            assert!(log_tail.contains("compiling"), "log tail: {log_tail}");
            assert!(log_tail.contains("linking failed"), "log tail: {log_tail}");
        }
        other => panic!("expected a build failure, got {other:?}"),
    }
}

/// A Dockerfile that names no agent, or whose exec form is not valid JSON, is rejected before
/// anything is built, with the message every backend gives.
#[tokio::test]
async fn prepare_rejects_dockerfile_without_agent() {
    require_podman!("prepare_rejects_dockerfile_without_agent");
    let executor = private_executor(test_config()).await;
    let cases = [
        (
            format!("FROM {BASE_IMAGE}\nCOPY agent.sh /agent.sh\n"),
            "final stage (FROM agentrun-busybox:latest on line 1) has no ENTRYPOINT or CMD that \
             starts the agent",
        ),
        (
            format!(
                "FROM {BASE_IMAGE}\nCOPY agent.sh /agent.sh\nENTRYPOINT [\"/bin/sh\" \"/agent.sh\"]\n"
            ),
            "ENTRYPOINT on line 3 is not a valid JSON array",
        ),
    ];
    for (dockerfile, expected) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let package = package(
            dir.path(),
            "NoAgent",
            &dockerfile,
            &[("agent.sh", CAT_AGENT)],
        );

        let error = within("prepare", executor.prepare(&package))
            .await
            .expect_err("the package is invalid");

        match &error {
            ExecutorError::InvalidPackage { path, reason } => {
                assert_eq!(path, dir.path());
                assert!(reason.contains(expected), "reason: {reason}");
            }
            other => panic!("expected an invalid package, got {other:?}"),
        }
        let tag =
            agentrun_executor::image_tag(&package.integration, &package.agent_id, &package.digest);
        assert!(
            !podman(&["images", "--quiet", "--filter", &format!("reference={tag}")])
                .contains(|c: char| c.is_ascii_hexdigit()),
            "image {tag} was built"
        );
    }
}

/// A package without a Dockerfile is invalid.
#[tokio::test]
async fn prepare_without_dockerfile_is_invalid() {
    require_podman!("prepare_without_dockerfile_is_invalid");
    let executor = private_executor(test_config()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut package = script_package(dir.path(), "Empty", CAT_AGENT);
    std::fs::remove_file(dir.path().join("Dockerfile")).expect("remove Dockerfile");
    // A digest no build has used, so the image cannot exist already.
    package.digest = "f".repeat(64);

    let error = within("prepare", executor.prepare(&package))
        .await
        .expect_err("there is no Dockerfile");

    match error {
        ExecutorError::InvalidPackage { path, reason } => {
            assert_eq!(path, dir.path());
            assert!(reason.contains("Dockerfile"), "reason: {reason}");
        }
        other => panic!("expected an invalid package, got {other:?}"),
    }
}

/// The private service runs in a 0700 directory, and dropping the executor ends it.
#[tokio::test]
async fn private_service_ends_with_executor() {
    require_podman!("private_service_ends_with_executor");
    let executor = private_executor(test_config()).await;
    let pid = executor.service_pid().expect("a private service runs");
    let socket = executor.socket();

    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the service runs");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("system service"), "cmdline: {cmdline}");
    assert!(
        cmdline.contains(&socket.display().to_string()),
        "cmdline: {cmdline}"
    );
    let dir = socket.parent().expect("the socket has a directory");
    let mode = std::fs::metadata(dir)
        .expect("dir exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "mode of {}", dir.display());
    within("ping", executor.ping())
        .await
        .expect("the service responds");

    drop(executor);

    assert!(!process_alive(pid), "service {pid} still runs after drop");
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

/// A private service that ended after its idle timeout is started again for the next job.
#[tokio::test]
async fn private_service_restarts_after_idle_timeout() {
    require_podman!("private_service_restarts_after_idle_timeout");
    // Short, but long enough that the service does not end between two requests of one
    // prepare or run on a loaded machine.
    let config = PodmanConfig {
        service_idle_secs: 2,
        ..test_config()
    };
    let instance = config.instance.clone();
    let executor = private_executor(config).await;
    let first_pid = executor.service_pid().expect("a private service runs");

    // The executor's own flag, not the process table: the flag is set only once the service is
    // gone for good, while /proc shows it as a zombie a little earlier.
    within("the idle service's exit", async {
        while !executor.service_exited() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let package = script_package(dir.path(), "Restart", CAT_AGENT);
    let prepared = prepare(&executor, &package).await;
    let outcome = run(&executor, &prepared, job(24, b"again")).await;

    assert_eq!(outcome.stdout, b"again");
    let second_pid = executor.service_pid().expect("a private service runs");
    assert_ne!(second_pid, first_pid, "a new service was started");
    assert_no_containers(&instance).await;
    drop(executor);
    assert!(
        !process_alive(second_pid),
        "service {second_pid} still runs after drop"
    );
}

/// A service whose socket is gone while its process still runs, as when Podman shuts down after
/// its idle timeout, is replaced before the next request instead of failing it.
#[tokio::test]
async fn private_service_restarts_when_socket_is_gone() {
    require_podman!("private_service_restarts_when_socket_is_gone");
    let config = test_config();
    let instance = config.instance.clone();
    let executor = private_executor(config).await;
    let first_pid = executor.service_pid().expect("a private service runs");
    let first_socket = executor.socket();

    std::fs::remove_file(&first_socket).expect("the service's socket exists");
    assert!(process_alive(first_pid), "service {first_pid} still runs");
    assert!(!executor.service_exited());
    let dir = tempfile::tempdir().expect("temp dir");
    let package = script_package(dir.path(), "SocketGone", CAT_AGENT);
    let prepared = prepare(&executor, &package).await;
    let outcome = run(&executor, &prepared, job(25, b"after the socket went")).await;

    assert_eq!(outcome.stdout, b"after the socket went");
    let second_pid = executor.service_pid().expect("a private service runs");
    assert_ne!(second_pid, first_pid, "a new service was started");
    assert_ne!(executor.socket(), first_socket);
    within("the replaced service's exit", async {
        while process_alive(first_pid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_no_containers(&instance).await;
}

/// A missing `podman` program is reported as unavailable, naming the program.
#[tokio::test]
async fn missing_podman_binary_is_unavailable() {
    let config = PodmanConfig {
        podman_binary: "/nonexistent/podman-for-agentrun-tests".into(),
        ..test_config()
    };

    let error = within("start", PodmanExecutor::with_private_service(config))
        .await
        .expect_err("the program does not exist");

    assert!(error.is_unavailable(), "error: {error:?}");
    match error {
        ExecutorError::Unavailable {
            executor, address, ..
        } => {
            assert_eq!(executor, "podman");
            assert!(
                address.contains("/nonexistent/podman-for-agentrun-tests"),
                "address: {address}"
            );
            assert!(address.contains("not found"), "address: {address}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

/// A configured socket that a service already listens on is used as it is.
#[tokio::test]
async fn configured_socket_is_used() {
    require_podman!("configured_socket_is_used");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("podman.sock");
    let mut service = tokio::process::Command::new("podman")
        .args(["system", "service", "--time", "120"])
        .arg(format!("unix://{}", socket.display()))
        .kill_on_drop(true)
        .spawn()
        .expect("podman system service starts");
    // The socket file appears before the service accepts connections on it.
    within("the test's service socket", async {
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let config = PodmanConfig {
        socket: Some(format!("unix://{}", socket.display())),
        ..test_config()
    };
    let instance = config.instance.clone();

    let executor = within("connect", PodmanExecutor::connect(config))
        .await
        .expect("the configured socket responds");

    assert_eq!(executor.socket(), socket);
    assert_eq!(executor.service_pid(), None);
    let package_dir = tempfile::tempdir().expect("temp dir");
    let package = script_package(package_dir.path(), "Configured", CAT_AGENT);
    let prepared = prepare(&executor, &package).await;
    let outcome = run(&executor, &prepared, job(23, b"via socket")).await;
    assert_eq!(outcome.stdout, b"via socket");
    assert_no_containers(&instance).await;

    drop(executor);
    service
        .start_kill()
        .expect("the test's service can be killed");
    within("the test's service exit", service.wait())
        .await
        .expect("the test's service exits");
}

/// A configured socket that nothing listens on is skipped for the next socket that responds,
/// or for a private service.
#[tokio::test]
async fn dead_configured_socket_is_skipped() {
    require_podman!("dead_configured_socket_is_skipped");
    let dir = tempfile::tempdir().expect("temp dir");
    let dead = dir.path().join("nobody-listens.sock");
    let config = PodmanConfig {
        socket: Some(dead.display().to_string()),
        ..test_config()
    };

    let executor = within("connect", PodmanExecutor::connect(config))
        .await
        .expect("another socket or a private service responds");

    assert_ne!(executor.socket(), dead);
    within("ping", executor.ping())
        .await
        .expect("the socket in use responds");
}

/// Starts a container the way a crashed engine would have left it: labelled, not attached.
fn leftover_container(instance: &str, job_id: u64, command: &str) -> String {
    podman(&[
        "run",
        "--detach",
        "--log-driver",
        "k8s-file",
        "--label",
        &format!("io.agentrun.engine={instance}"),
        "--label",
        &format!("io.agentrun.job-id={job_id}"),
        "--label",
        "io.agentrun.agent-id=5e3c1a8f-0b7d-4c2e-9f61-2d84a7b0c9e3",
        BASE_IMAGE,
        "/bin/sh",
        "-c",
        command,
    ])
    .trim()
    .to_owned()
}

/// A finished container left by an earlier engine gives its output and exit code.
#[tokio::test]
async fn recover_finished_container() {
    require_podman!("recover_finished_container");
    let config = test_config();
    let instance = config.instance.clone();
    let executor = private_executor(config).await;
    let id = leftover_container(&instance, 31, "echo out; echo err >&2; exit 3");
    podman(&["wait", &id]);

    let outcome = within(
        "recover",
        executor.recover(31, Duration::from_secs(30), 1024, 1024),
    )
    .await
    .expect("recovery works")
    .expect("the container is found");

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(3));
    assert_eq!(outcome.stdout, b"out\n");
    assert_eq!(outcome.stderr_tail, b"err\n");
    assert_eq!(outcome.container_id.as_deref(), Some(id.as_str()));
    assert_no_containers(&instance).await;
}

/// A container that still runs is waited for, then read and removed.
#[tokio::test]
async fn recover_running_container() {
    require_podman!("recover_running_container");
    let config = test_config();
    let instance = config.instance.clone();
    let executor = Arc::new(private_executor(config).await);
    let id = leftover_container(
        &instance,
        32,
        "echo early; while [ ! -e /go ]; do sleep 0.1; done; echo late",
    );
    let task = tokio::spawn({
        let executor = Arc::clone(&executor);
        async move {
            executor
                .recover(32, Duration::from_secs(60), 1024, 1024)
                .await
        }
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "recovery waits for the running agent");
    podman(&["exec", &id, "touch", "/go"]);
    let outcome = within("recover", task)
        .await
        .expect("recover task does not panic")
        .expect("recovery works")
        .expect("the container is found");

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(outcome.stdout, b"early\nlate\n");
    assert_no_containers(&instance).await;
}

/// A container that runs past the recovery timeout is killed and removed.
#[tokio::test]
async fn recover_timeout_kills_container() {
    require_podman!("recover_timeout_kills_container");
    let config = test_config();
    let instance = config.instance.clone();
    let executor = private_executor(config).await;
    leftover_container(&instance, 33, "echo started; sleep 600");

    let outcome = within(
        "recover",
        executor.recover(33, Duration::from_secs(2), 1024, 1024),
    )
    .await
    .expect("recovery works")
    .expect("the container is found");

    assert_eq!(outcome.end, JobEnd::TimedOut);
    assert_eq!(outcome.exit, ExitStatus::Code(137), "SIGKILL");
    assert_eq!(outcome.stdout, b"started\n");
    assert_no_containers(&instance).await;
}

/// A job without a container cannot be recovered.
#[tokio::test]
async fn recover_unknown_job_is_none() {
    require_podman!("recover_unknown_job_is_none");
    let executor = private_executor(test_config()).await;

    let outcome = within(
        "recover",
        executor.recover(34, Duration::from_secs(5), 1024, 1024),
    )
    .await
    .expect("recovery works");

    assert!(outcome.is_none(), "outcome: {outcome:?}");
}

/// A container that never started never received its message, so it is removed and the job
/// is not recovered.
#[tokio::test]
async fn recover_created_container_is_none() {
    require_podman!("recover_created_container_is_none");
    let config = test_config();
    let instance = config.instance.clone();
    let executor = private_executor(config).await;
    podman(&[
        "create",
        "--label",
        &format!("io.agentrun.engine={instance}"),
        "--label",
        "io.agentrun.job-id=35",
        BASE_IMAGE,
        "true",
    ]);

    let outcome = within(
        "recover",
        executor.recover(35, Duration::from_secs(5), 1024, 1024),
    )
    .await
    .expect("recovery works");

    assert!(outcome.is_none(), "outcome: {outcome:?}");
    assert_no_containers(&instance).await;
}

/// Sweeping removes this engine's containers except those of the kept jobs, and leaves other
/// engines' containers alone.
#[tokio::test]
async fn sweep_removes_unowned_containers() {
    require_podman!("sweep_removes_unowned_containers");
    let config = test_config();
    let instance = config.instance.clone();
    let other_instance = test_config().instance;
    let executor = private_executor(config).await;
    let kept = leftover_container(&instance, 41, "sleep 600");
    let swept = leftover_container(&instance, 42, "true");
    let foreign = leftover_container(&other_instance, 43, "true");

    let removed = within("sweep", executor.sweep(&[41]))
        .await
        .expect("sweep works");

    assert_eq!(removed, [swept]);
    assert_eq!(labelled_containers(&instance), std::slice::from_ref(&kept));
    assert_eq!(
        labelled_containers(&other_instance),
        std::slice::from_ref(&foreign)
    );
    podman(&["rm", "--force", "--time", "0", &kept, &foreign]);
}
