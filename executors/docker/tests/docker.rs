//! The Docker executor against a real engine at `DOCKER_HOST`.
//!
//! Each test skips, printing why, when no engine responds, unless `AGENTRUN_REQUIRE_RUNTIMES`
//! names `docker`. Run them with
//! `DOCKER_HOST=unix:///run/agentrun-ci/docker.sock cargo test -p agentrun-docker`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use agentrun_docker::{DockerConfig, DockerExecutor};
use agentrun_executor::{
    image_tag, Executor, ExecutorError, ExitStatus, JobEnd, JobSpec, Limits, MessageKind,
    LABEL_AGENT_ID, LABEL_ENGINE, LABEL_JOB_ID,
};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{RemoveContainerOptions, WaitContainerOptions};
use common::{within, Fixture};
use futures_util::StreamExt;

const DESCRIBE: &[u8] = br#"{"type":"describe","agentID":"a","job_id":1}"#;

fn job(job_id: u64, stdin: &[u8]) -> JobSpec {
    let mut job = JobSpec::new(job_id, MessageKind::Work, stdin.to_vec());
    job.timeout = Duration::from_secs(60);
    job
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("agent output is UTF-8")
}

/// Every form of environment value reaches the agent byte for byte.
#[tokio::test]
async fn run_passes_env_values_exactly() {
    let Some(mut fixture) = Fixture::connect("env-values").await else {
        return;
    };
    let names = [
        "EQUALS", "SPACES", "QUOTES", "NEWLINES", "UNICODE", "EMPTY", "DOLLAR",
    ];
    let script = format!(
        "for name in {}; do eval \"value=\\${{$name}}\"; printf '%s\\n--end--\\n' \"$value\"; done\n",
        names.join(" ")
    );
    let package = fixture.script_package("agent", &script);
    let prepared = fixture.prepare(&package).await;

    let values = [
        "a=b==c=",
        "  leading and trailing  ",
        r#"double " single ' back \ tick `"#,
        "line one\nline two\r\n\n",
        "ünïcødé ✓ 日本語",
        "",
        "$HOME ${PATH} $(id)",
    ];
    let mut job = job(101, DESCRIBE);
    job.env = names
        .iter()
        .zip(values)
        .map(|(name, value)| (name.to_string(), value.to_owned()))
        .collect();
    let outcome = within("run", fixture.executor.run(&prepared, job))
        .await
        .expect("run");

    let expected: String = values
        .iter()
        .map(|value| format!("{value}\n--end--\n"))
        .collect();
    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(
        outcome.exit,
        ExitStatus::Code(0),
        "{}",
        outcome.stderr_text()
    );
    assert_eq!(text(&outcome.stdout), expected);
    fixture.assert_no_container(101).await;
    fixture.cleanup().await;
}

/// The message is written and stdin closed, so an agent that reads to EOF (`cat`) finishes.
#[tokio::test]
async fn run_closes_stdin_after_message() {
    let Some(mut fixture) = Fixture::connect("stdin-eof").await else {
        return;
    };
    let package = fixture.script_package("agent", "cat\n");
    let prepared = fixture.prepare(&package).await;

    let outcome = within("run", fixture.executor.run(&prepared, job(102, DESCRIBE)))
        .await
        .expect("run");

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(outcome.stdout, DESCRIBE);
    assert!(outcome.container_id.is_some());
    fixture.assert_no_container(102).await;
    fixture.cleanup().await;
}

/// A 1 MiB message arrives whole, and an agent that never reads it still ends the job.
#[tokio::test]
async fn run_handles_large_stdin_read_or_not() {
    let Some(mut fixture) = Fixture::connect("large-stdin").await else {
        return;
    };
    let counting = fixture.script_package("counts", "wc -c\n");
    let counting = fixture.prepare(&counting).await;
    let ignoring = fixture.script_package("ignores", "echo ignored\n");
    let ignoring = fixture.prepare(&ignoring).await;
    let message = vec![b'x'; 1024 * 1024];

    let outcome = within(
        "run counting",
        fixture.executor.run(&counting, job(103, &message)),
    )
    .await
    .expect("run counting");
    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(text(&outcome.stdout).trim(), "1048576");

    let outcome = within(
        "run ignoring",
        fixture.executor.run(&ignoring, job(104, &message)),
    )
    .await
    .expect("run ignoring");
    assert_eq!(outcome.end, JobEnd::Exited, "{}", outcome.stderr_text());
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(text(&outcome.stdout), "ignored\n");

    fixture.assert_no_container(103).await;
    fixture.assert_no_container(104).await;
    fixture.cleanup().await;
}

/// An agent that writes past the stdout cap is killed and its output cut at the cap.
#[tokio::test]
async fn run_stops_at_stdout_cap() {
    let Some(mut fixture) = Fixture::connect("stdout-cap").await else {
        return;
    };
    let package = fixture.script_package("agent", "while :; do echo 0123456789abcdef; done\n");
    let prepared = fixture.prepare(&package).await;

    let mut job = job(105, DESCRIBE);
    job.max_stdout_bytes = 4096;
    let outcome = within("run", fixture.executor.run(&prepared, job))
        .await
        .expect("run");

    assert_eq!(outcome.end, JobEnd::StdoutLimit);
    assert_eq!(outcome.stdout.len(), 4096);
    assert!(outcome.stdout.starts_with(b"0123456789abcdef\n"));
    assert_eq!(outcome.exit, ExitStatus::Code(137), "killed by SIGKILL");
    fixture.assert_no_container(105).await;
    fixture.cleanup().await;
}

/// Stdout and stderr stay apart, and a non-zero exit code is reported as the agent's code.
#[tokio::test]
async fn run_keeps_stderr_apart_and_exit_code() {
    let Some(mut fixture) = Fixture::connect("stderr-exit").await else {
        return;
    };
    let package = fixture.script_package(
        "agent",
        "echo out-1\necho err-1 >&2\necho out-2\necho err-2 >&2\nexit 3\n",
    );
    let prepared = fixture.prepare(&package).await;

    let outcome = within("run", fixture.executor.run(&prepared, job(106, DESCRIBE)))
        .await
        .expect("run");

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(3));
    assert_eq!(text(&outcome.stdout), "out-1\nout-2\n");
    assert_eq!(text(&outcome.stderr_tail), "err-1\nerr-2\n");
    assert_eq!(outcome.stderr_total_bytes, 12);
    fixture.assert_no_container(106).await;
    fixture.cleanup().await;
}

/// An agent that runs past the deadline is killed, and what it wrote before is kept.
#[tokio::test]
async fn run_timeout_kills_agent() {
    let Some(mut fixture) = Fixture::connect("timeout").await else {
        return;
    };
    let package = fixture.script_package("agent", "echo started\nsleep 300\n");
    let prepared = fixture.prepare(&package).await;

    let mut job = job(107, DESCRIBE);
    job.timeout = Duration::from_secs(5);
    let outcome = within("run", fixture.executor.run(&prepared, job))
        .await
        .expect("run");

    assert_eq!(outcome.end, JobEnd::TimedOut);
    assert_eq!(outcome.exit, ExitStatus::Code(137));
    assert_eq!(text(&outcome.stdout), "started\n");
    fixture.assert_no_container(107).await;
    fixture.cleanup().await;
}

/// Cancelling a running job kills its agent, and what it wrote before is kept.
#[tokio::test]
async fn run_cancel_kills_agent() {
    let Some(mut fixture) = Fixture::connect("cancel").await else {
        return;
    };
    let package = fixture.script_package("agent", "echo running\nsleep 300\n");
    let prepared = fixture.prepare(&package).await;

    let job = job(108, DESCRIBE);
    let cancel = job.cancel.clone();
    let run = fixture.executor.run(&prepared, job);
    let cancel_when_running = async {
        fixture.wait_for_output(108, "running").await;
        cancel.cancel();
    };
    let (outcome, ()) = within("run", futures_util::future::join(run, cancel_when_running)).await;
    let outcome = outcome.expect("run");

    assert_eq!(outcome.end, JobEnd::Cancelled);
    assert_eq!(outcome.exit, ExitStatus::Code(137));
    assert_eq!(text(&outcome.stdout), "running\n");
    fixture.assert_no_container(108).await;
    fixture.cleanup().await;
}

/// A job cancelled before it starts never runs its agent, and leaves no container.
#[tokio::test]
async fn run_cancelled_before_start() {
    let Some(mut fixture) = Fixture::connect("cancel-early").await else {
        return;
    };
    let package = fixture.script_package("agent", "echo ran\n");
    let prepared = fixture.prepare(&package).await;

    let job = job(109, DESCRIBE);
    job.cancel.cancel();
    let outcome = within("run", fixture.executor.run(&prepared, job))
        .await
        .expect("run");

    assert_eq!(outcome.end, JobEnd::Cancelled);
    assert_eq!(outcome.exit, ExitStatus::Unknown);
    assert!(outcome.stdout.is_empty(), "{}", text(&outcome.stdout));
    fixture.assert_no_container(109).await;
    fixture.cleanup().await;
}

/// Dropping the `run` future mid-job still removes the container.
#[tokio::test]
async fn run_dropped_future_removes_container() {
    let Some(mut fixture) = Fixture::connect("dropped").await else {
        return;
    };
    let package = fixture.script_package("agent", "sleep 300\n");
    let prepared = fixture.prepare(&package).await;

    // Dropped as soon as the container is listed: the create response may not have arrived.
    {
        let run = fixture.executor.run(&prepared, job(110, DESCRIBE));
        let dropped = tokio::select! {
            _ = run => false,
            _ = fixture.wait_for_container(110) => true,
        };
        assert!(dropped, "the agent sleeps, so the run cannot finish first");
    }
    fixture.wait_until_gone(110).await;

    // Dropped after delays that fall into create, attach, start and the output read.
    let delays_ms = [0, 2, 5, 10, 20, 40, 80, 160, 320, 640];
    for (job_id, delay_ms) in (120..).zip(delays_ms) {
        let run = fixture.executor.run(&prepared, job(job_id, DESCRIBE));
        let finished = tokio::time::timeout(Duration::from_millis(delay_ms), run).await;
        assert!(
            finished.is_err(),
            "the agent sleeps, so job {job_id} cannot finish"
        );
    }
    for job_id in (120..).take(delays_ms.len()) {
        fixture.wait_until_gone(job_id).await;
    }
    fixture.cleanup().await;
}

/// A job whose image is missing is an engine error, and leaves no container.
#[tokio::test]
async fn run_missing_image_is_runtime_error() {
    let Some(fixture) = Fixture::connect("missing-image").await else {
        return;
    };
    let package = fixture.script_package("agent", "true\n");
    let prepared = agentrun_executor::Prepared {
        executor: "docker".to_owned(),
        integration: package.integration.clone(),
        agent_id: package.agent_id.clone(),
        digest: package.digest.clone(),
        target: agentrun_executor::Target::Image {
            reference: "agentrun/never-built-00000000:000000000000".to_owned(),
        },
        cache_hit: false,
    };

    let error = within("run", fixture.executor.run(&prepared, job(111, DESCRIBE)))
        .await
        .expect_err("a missing image must fail");

    match &error {
        ExecutorError::Runtime {
            operation, message, ..
        } => {
            assert_eq!(*operation, "create container");
            assert!(message.contains("HTTP 404"), "{message}");
        }
        other => panic!("expected a runtime error, got {other:?}"),
    }
    fixture.assert_no_container(111).await;
}

/// The hardening defaults and limits are set on the container and visible to the agent.
#[tokio::test]
async fn run_applies_hardening_and_limits() {
    let Some(mut fixture) = Fixture::connect("hardening").await else {
        return;
    };
    let package = fixture.script_package(
        "agent",
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status\n\
         touch /root-file 2>/dev/null && echo root-writable\n\
         touch /tmp/tmp-file && echo tmp-writable\n\
         ulimit -n\n\
         id -u\n\
         sleep 300\n",
    );
    let prepared = fixture.prepare(&package).await;

    let mut job = job(112, DESCRIBE);
    job.limits = Limits {
        memory_bytes: Some(64 * 1024 * 1024),
        pids: Some(64),
        cpus: Some(0.5),
        read_only_root: true,
        nofile: Some(512),
        nproc: Some(512),
        ..Limits::default()
    };
    let cancel = job.cancel.clone();
    let run = fixture.executor.run(&prepared, job);
    let inspect_then_cancel = async {
        // The agent prints its uid last before it sleeps.
        let id = fixture.wait_for_output(112, "\n0\n").await;
        let inspected = within("inspect", fixture.docker.inspect_container(&id, None))
            .await
            .expect("inspect");
        cancel.cancel();
        inspected
    };
    let (outcome, inspected) =
        within("run", futures_util::future::join(run, inspect_then_cancel)).await;
    let outcome = outcome.expect("run");

    let host = inspected.host_config.expect("host config");
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_owned()])
    );
    assert_eq!(host.pids_limit, Some(64));
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.auto_remove, Some(false));
    let config = inspected.config.expect("container config");
    assert_eq!(config.tty, Some(false));
    assert_eq!(config.stdin_once, Some(true));

    assert_eq!(outcome.end, JobEnd::Cancelled);
    assert_eq!(
        text(&outcome.stdout),
        // Root in the container, yet without capabilities and unable to write outside /tmp.
        "CapEff:\t0000000000000000\nNoNewPrivs:\t1\ntmp-writable\n512\n0\n"
    );
    fixture.assert_no_container(112).await;
    fixture.cleanup().await;
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
    let Some(mut fixture) = Fixture::connect("limits-inside").await else {
        return;
    };
    let package = fixture.script_package("agent", LIMITS_PROBE);
    let prepared = fixture.prepare(&package).await;

    let mut job = job(113, DESCRIBE);
    job.limits = Limits {
        memory_bytes: Some(64 * 1024 * 1024),
        pids: Some(16),
        user: Some("65534:65534".to_owned()),
        ..Limits::default()
    };
    let outcome = within("run", fixture.executor.run(&prepared, job))
        .await
        .expect("run");

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(
        outcome.exit,
        ExitStatus::Code(0),
        "{}",
        outcome.stderr_text()
    );
    let lines: Vec<&str> = text(&outcome.stdout).lines().collect();
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
    fixture.assert_no_container(113).await;
    fixture.cleanup().await;
}

/// An engine that does not respond is `Unavailable`, naming the address that was tried.
#[tokio::test]
async fn connect_unreachable_host_is_unavailable() {
    let dir = tempfile::tempdir().expect("temporary directory");

    // No socket file at all.
    let missing = format!("unix://{}/missing.sock", dir.path().display());
    // A socket file without a listener, so connecting is refused.
    let stale_path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale_path).expect("bind a socket"));
    let stale = format!("unix://{}", stale_path.display());

    for host in [missing, stale] {
        let config = DockerConfig {
            host: Some(host.clone()),
            ..DockerConfig::default()
        };
        let error = within("connect", DockerExecutor::connect(config))
            .await
            .expect_err("connecting to nothing must fail");
        match &error {
            ExecutorError::Unavailable {
                executor,
                address,
                reason,
            } => {
                assert_eq!(*executor, "docker");
                assert_eq!(*address, host);
                assert!(reason.contains("start dockerd"), "{reason}");
            }
            other => panic!("{host}: expected unavailable, got {other:?}"),
        }
        assert!(error.is_unavailable());
    }
}

/// An address with a scheme the client cannot use is `Unavailable` with the accepted forms.
#[tokio::test]
async fn connect_unsupported_scheme_is_unavailable() {
    let config = DockerConfig {
        host: Some("ftp://docker.invalid".to_owned()),
        ..DockerConfig::default()
    };
    let error = within("connect", DockerExecutor::connect(config))
        .await
        .expect_err("an ftp address must fail");
    match &error {
        ExecutorError::Unavailable { reason, .. } => {
            assert!(reason.contains("unix:///path"), "{reason}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

/// A second prepare of an unchanged package finds the image and reports a cache hit.
#[tokio::test]
async fn prepare_twice_is_cache_hit() {
    let Some(mut fixture) = Fixture::connect("cache-hit").await else {
        return;
    };
    let package = fixture.script_package("agent", "echo hi\n");

    let first = fixture.prepare(&package).await;
    assert!(!first.cache_hit, "the tag is new to this run");
    let second = fixture.prepare(&package).await;
    assert!(second.cache_hit);
    assert_eq!(first.target, second.target);
    assert_eq!(second.executor, "docker");

    let image = within(
        "inspect image",
        fixture.docker.inspect_image(Fixture::image(&second)),
    )
    .await
    .expect("inspect image");
    let labels = image
        .config
        .and_then(|config| config.labels)
        .expect("image labels");
    assert_eq!(labels[LABEL_ENGINE], fixture.instance);
    assert_eq!(labels[LABEL_AGENT_ID], package.agent_id);
    assert_eq!(labels[agentrun_executor::LABEL_DIGEST], package.digest);
    fixture.cleanup().await;
}

/// Two concurrent prepares of one package build it once.
#[tokio::test]
async fn prepare_concurrent_builds_once() {
    let Some(fixture) = Fixture::connect("concurrent-build").await else {
        return;
    };
    let package = fixture.script_package("agent", "echo hi\n");

    let (first, second) = within(
        "prepare twice",
        futures_util::future::join(
            fixture.executor.prepare(&package),
            fixture.executor.prepare(&package),
        ),
    )
    .await;
    let (first, second) = (
        first.expect("first prepare"),
        second.expect("second prepare"),
    );

    let built = [&first, &second]
        .iter()
        .filter(|prepared| !prepared.cache_hit)
        .count();
    assert_eq!(built, 1, "exactly one prepare builds");
    within("release", fixture.executor.release(&first))
        .await
        .expect("release");
}

/// A failing `RUN` instruction names its step and the end of the log.
#[tokio::test]
async fn prepare_failing_run_names_step() {
    let Some(fixture) = Fixture::connect("failing-build").await else {
        return;
    };
    let package = fixture.package(
        "agent",
        &format!(
            "FROM {}\nRUN echo first-step-output\nRUN exit 7\nCMD [\"true\"]\n",
            common::BASE_IMAGE
        ),
        &[],
    );

    let error = within("prepare", fixture.executor.prepare(&package))
        .await
        .expect_err("the build must fail");

    match &error {
        ExecutorError::BuildFailed {
            image,
            step,
            message,
            log_tail,
        } => {
            assert!(image.starts_with("agentrun/"), "{image}");
            // The legacy builder counts the image labels as steps of their own after the
            // Dockerfile's, so only the step number and instruction are fixed.
            let step = step.as_deref().expect("the log names the failing step");
            assert!(
                step.starts_with("Step 3/") && step.ends_with(" : RUN exit 7"),
                "{step}"
            );
            assert!(message.contains("non-zero code: 7"), "{message}");
            assert!(log_tail.contains("first-step-output"), "{log_tail}");
            assert!(log_tail.lines().count() <= 20, "{log_tail}");
        }
        other => panic!("expected a build failure, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains("at step `Step 3/"), "{text}");
}

/// A Dockerfile that names no agent, or whose exec form is not valid JSON, is rejected before
/// anything is built, with the message every backend gives.
#[tokio::test]
async fn prepare_rejects_dockerfile_without_agent() {
    let Some(fixture) = Fixture::connect("no-agent").await else {
        return;
    };
    let cases = [
        (
            "no-command",
            format!("FROM {}\nCOPY agent.sh /agent.sh\n", common::BASE_IMAGE),
            "final stage (FROM agentrun-busybox:latest on line 1) has no ENTRYPOINT or CMD that \
             starts the agent",
        ),
        (
            "missing-comma",
            format!(
                "FROM {}\nCOPY agent.sh /agent.sh\nENTRYPOINT [\"/bin/sh\" \"/agent.sh\"]\n",
                common::BASE_IMAGE
            ),
            "ENTRYPOINT on line 3 is not a valid JSON array",
        ),
    ];
    for (name, dockerfile, expected) in cases {
        let package = fixture.package(name, &dockerfile, &[("agent.sh", "cat\n")]);

        let error = within("prepare", fixture.executor.prepare(&package))
            .await
            .expect_err("the package is invalid");

        match &error {
            ExecutorError::InvalidPackage { path, reason } => {
                assert_eq!(path, &package.root);
                assert!(reason.contains(expected), "{name}: {reason}");
            }
            other => panic!("{name}: expected an invalid package, got {other:?}"),
        }
        let tag = image_tag(&package.integration, &package.agent_id, &package.digest);
        let inspected = within("inspect image", fixture.docker.inspect_image(&tag)).await;
        assert!(inspected.is_err(), "{name}: image {tag} was built");
    }
}

/// A build that runs past `build_timeout_secs` fails with a message naming the setting.
#[tokio::test]
async fn prepare_build_timeout_fails() {
    let Some(fixture) = Fixture::connect_with("build-timeout", |config| {
        config.build_timeout_secs = 2;
    })
    .await
    else {
        return;
    };
    let package = fixture.package(
        "agent",
        &format!(
            "FROM {}\nRUN echo slow-step && sleep 60\nCMD [\"true\"]\n",
            common::BASE_IMAGE
        ),
        &[],
    );

    let error = within("prepare", fixture.executor.prepare(&package))
        .await
        .expect_err("the build must time out");

    match &error {
        ExecutorError::BuildFailed { step, message, .. } => {
            let step = step.as_deref().expect("the log names the running step");
            assert!(
                step.ends_with(" : RUN echo slow-step && sleep 60"),
                "{step}"
            );
            assert!(message.contains("timed out after 2 s"), "{message}");
            assert!(message.contains("build_timeout_secs"), "{message}");
        }
        other => panic!("expected a build failure, got {other:?}"),
    }
}

/// Creates and starts a container the way an earlier engine process would have, without
/// attaching, so that only its logs keep its output.
async fn start_orphan(fixture: &Fixture, image: &str, job_id: u64) -> String {
    let labels = HashMap::from([
        (LABEL_ENGINE.to_owned(), fixture.instance.clone()),
        (LABEL_JOB_ID.to_owned(), job_id.to_string()),
        (LABEL_AGENT_ID.to_owned(), "orphan".to_owned()),
    ]);
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        labels: Some(labels),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some("none".to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = within("create", fixture.docker.create_container(None, body))
        .await
        .expect("create");
    within("start", fixture.docker.start_container(&created.id, None))
        .await
        .expect("start");
    created.id
}

/// A container that finished while no engine ran is recovered from its logs and removed.
#[tokio::test]
async fn recover_finished_container() {
    let Some(mut fixture) = Fixture::connect("recover-finished").await else {
        return;
    };
    let package = fixture.script_package(
        "agent",
        "echo '{\"type\":\"heartbeat\"}'\necho recovered-err >&2\nexit 4\n",
    );
    let prepared = fixture.prepare(&package).await;
    let id = start_orphan(&fixture, Fixture::image(&prepared), 113).await;
    let mut waited = fixture.docker.wait_container(
        &id,
        Some(WaitContainerOptions {
            condition: "not-running".to_owned(),
        }),
    );
    let _ = within("wait", waited.next()).await;

    let outcome = within(
        "recover",
        fixture
            .executor
            .recover(113, Duration::from_secs(30), 1024, 1024),
    )
    .await
    .expect("recover")
    .expect("the container exists, so the job is recoverable");

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(4));
    assert_eq!(text(&outcome.stdout), "{\"type\":\"heartbeat\"}\n");
    assert_eq!(text(&outcome.stderr_tail), "recovered-err\n");
    assert_eq!(outcome.container_id.as_deref(), Some(id.as_str()));
    fixture.assert_no_container(113).await;
    fixture.cleanup().await;
}

/// A container still running is waited for, then recovered from its logs.
#[tokio::test]
async fn recover_running_container() {
    let Some(mut fixture) = Fixture::connect("recover-running").await else {
        return;
    };
    let package = fixture.script_package("agent", "echo early\nsleep 2\necho late\n");
    let prepared = fixture.prepare(&package).await;
    start_orphan(&fixture, Fixture::image(&prepared), 114).await;

    let outcome = within(
        "recover",
        fixture
            .executor
            .recover(114, Duration::from_secs(60), 1024, 1024),
    )
    .await
    .expect("recover")
    .expect("the container exists, so the job is recoverable");

    assert_eq!(outcome.end, JobEnd::Exited);
    assert_eq!(outcome.exit, ExitStatus::Code(0));
    assert_eq!(text(&outcome.stdout), "early\nlate\n");
    fixture.assert_no_container(114).await;
    fixture.cleanup().await;
}

/// A recovered container that runs past the timeout is killed.
#[tokio::test]
async fn recover_running_past_timeout_kills() {
    let Some(mut fixture) = Fixture::connect("recover-timeout").await else {
        return;
    };
    let package = fixture.script_package("agent", "echo waiting\nsleep 300\n");
    let prepared = fixture.prepare(&package).await;
    start_orphan(&fixture, Fixture::image(&prepared), 115).await;

    let outcome = within(
        "recover",
        fixture
            .executor
            .recover(115, Duration::from_secs(2), 1024, 1024),
    )
    .await
    .expect("recover")
    .expect("the container exists, so the job is recoverable");

    assert_eq!(outcome.end, JobEnd::TimedOut);
    assert_eq!(outcome.exit, ExitStatus::Code(137));
    assert_eq!(text(&outcome.stdout), "waiting\n");
    fixture.assert_no_container(115).await;
    fixture.cleanup().await;
}

/// A job without a container cannot be recovered.
#[tokio::test]
async fn recover_without_container_is_none() {
    let Some(fixture) = Fixture::connect("recover-none").await else {
        return;
    };
    let recovered = within(
        "recover",
        fixture
            .executor
            .recover(116, Duration::from_secs(5), 1024, 1024),
    )
    .await
    .expect("recover");
    assert_eq!(recovered, None);
}

/// Sweeping removes this instance's containers except those of kept jobs.
#[tokio::test]
async fn sweep_keeps_only_listed_jobs() {
    let Some(mut fixture) = Fixture::connect("sweep").await else {
        return;
    };
    let package = fixture.script_package("agent", "sleep 300\n");
    let prepared = fixture.prepare(&package).await;
    let kept_id = start_orphan(&fixture, Fixture::image(&prepared), 117).await;
    let swept_id = start_orphan(&fixture, Fixture::image(&prepared), 118).await;

    let removed = within("sweep", fixture.executor.sweep(&[117]))
        .await
        .expect("sweep");

    assert_eq!(removed, vec![swept_id]);
    fixture.assert_no_container(118).await;
    let left: Vec<_> = fixture
        .containers(None)
        .await
        .into_iter()
        .filter_map(|container| container.id)
        .collect();
    assert_eq!(left, vec![kept_id.clone()]);

    within(
        "remove kept container",
        fixture.docker.remove_container(
            &kept_id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        ),
    )
    .await
    .expect("remove the kept container");
    fixture.cleanup().await;
}
