//! Helpers for the tests that run against the real Podman on this machine.
//!
//! Every test checks for Podman first and returns early, printing why, when it is missing,
//! unless `AGENTRUN_REQUIRE_RUNTIMES` (a comma-separated list) names `podman`: then a missing
//! Podman fails the test. The tests never need `dockerd`.
//!
//! Each test uses an engine instance name of its own, so that the containers it checks for are
//! its own even when tests run in parallel.

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentrun_executor::{Executor, JobOutcome, JobSpec, MessageKind, PackageSpec, Prepared};
use agentrun_podman::{PodmanConfig, PodmanExecutor, Ulimits};

/// Limit on any single await in a test: generous, since a cold build or a loaded machine can
/// be slow, but finite, so that a hang fails the test instead of blocking the suite.
pub const STEP_LIMIT: Duration = Duration::from_secs(120);

/// Base image of every test package: `FROM scratch` with a static busybox in `/bin`.
pub const BASE_IMAGE: &str = "agentrun-busybox:latest";

/// Returns true when the tests can use Podman. When they cannot, prints why and returns false,
/// or panics when `AGENTRUN_REQUIRE_RUNTIMES` names `podman`.
pub fn podman_available(test: &str) -> bool {
    let problem = match Command::new("podman").arg("--version").output() {
        Ok(output) if output.status.success() => return true,
        Ok(output) => format!(
            "`podman --version` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => format!("`podman` could not be run: {error}"),
    };
    let required = std::env::var("AGENTRUN_REQUIRE_RUNTIMES")
        .unwrap_or_default()
        .split(',')
        .any(|runtime| runtime.trim() == "podman");
    assert!(
        !required,
        "{test}: AGENTRUN_REQUIRE_RUNTIMES names podman, but {problem}"
    );
    eprintln!("skipping {test}: {problem}");
    false
}

/// Returns early from a test when Podman is missing. See [`podman_available`].
#[macro_export]
macro_rules! require_podman {
    ($test:expr) => {
        if !$crate::common::podman_available($test) {
            return;
        }
    };
}

/// Awaits `future` for at most [`STEP_LIMIT`], failing the test with `what` when it takes
/// longer.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP_LIMIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {} s", STEP_LIMIT.as_secs()),
    }
}

/// Returns a configuration with an engine instance name that no other test uses.
pub fn test_config() -> PodmanConfig {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    PodmanConfig {
        instance: format!(
            "test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ),
        // The host's limits may be lower than Podman's built-in defaults.
        ulimits: Ulimits {
            nofile: Some(1024),
            nproc: Some(1024),
        },
        ..PodmanConfig::default()
    }
}

/// Starts an executor on a private service of its own.
pub async fn private_executor(config: PodmanConfig) -> PodmanExecutor {
    within(
        "starting a private podman service",
        PodmanExecutor::with_private_service(config),
    )
    .await
    .expect("the private podman service starts")
}

/// Writes a package whose agent is `/bin/sh` running `script`, and returns its spec.
///
/// The digest is derived from the script, so the same script maps to the same image tag.
pub fn script_package(dir: &Path, integration: &str, script: &str) -> PackageSpec {
    let dockerfile = format!(
        "FROM {BASE_IMAGE}\nCOPY agent.sh /agent.sh\nENTRYPOINT [\"/bin/sh\", \"/agent.sh\"]\n"
    );
    package(dir, integration, &dockerfile, &[("agent.sh", script)])
}

/// Writes a package with `dockerfile` and `files` into `dir` and returns its spec.
pub fn package(
    dir: &Path,
    integration: &str,
    dockerfile: &str,
    files: &[(&str, &str)],
) -> PackageSpec {
    std::fs::write(dir.join("Dockerfile"), dockerfile).expect("write Dockerfile");
    let mut content = dockerfile.to_owned();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write package file");
        content.push_str(name);
        content.push_str(text);
    }
    PackageSpec {
        integration: integration.to_owned(),
        agent_id: "5e3c1a8f-0b7d-4c2e-9f61-2d84a7b0c9e3".to_owned(),
        digest: digest(&content),
        root: dir.to_path_buf(),
        command: None,
    }
}

/// Returns a 64-hex-digit stand-in for the package digest. It is stable for the same content,
/// which is all the image tag needs here.
fn digest(content: &str) -> String {
    (0u8..4)
        .map(|seed| {
            let mut hasher = DefaultHasher::new();
            seed.hash(&mut hasher);
            content.hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

/// Prepares a package, failing the test on an error.
pub async fn prepare(executor: &PodmanExecutor, package: &PackageSpec) -> Prepared {
    within("prepare", executor.prepare(package))
        .await
        .expect("the package builds")
}

/// Returns a work job with `stdin` and a short deadline.
pub fn job(job_id: u64, stdin: &[u8]) -> JobSpec {
    let mut job = JobSpec::new(job_id, MessageKind::Work, stdin.to_vec());
    job.timeout = Duration::from_secs(60);
    job
}

/// Runs a job, failing the test on an engine error.
pub async fn run(executor: &PodmanExecutor, prepared: &Prepared, job: JobSpec) -> JobOutcome {
    within("run", executor.run(prepared, job))
        .await
        .expect("the job runs")
}

/// Runs `podman ARGS` against the local Podman and returns its stdout, failing the test when
/// it fails.
pub fn podman(args: &[&str]) -> String {
    let output = Command::new("podman")
        .args(args)
        // A test may point these at a service that does not exist.
        .env_remove("CONTAINER_HOST")
        .env_remove("CONTAINER_CONNECTION")
        .output()
        .expect("podman runs");
    assert!(
        output.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Returns the ids of all containers (running or not) with this engine instance's label.
pub fn labelled_containers(instance: &str) -> Vec<String> {
    podman(&[
        "ps",
        "--all",
        "--quiet",
        "--no-trunc",
        "--filter",
        &format!("label=io.agentrun.engine={instance}"),
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Waits until no container carries this engine instance's label, and fails the test when
/// some still do after [`STEP_LIMIT`]. Removal of a dropped job's container runs in the
/// background, so the check polls.
pub async fn assert_no_containers(instance: &str) {
    let result = tokio::time::timeout(STEP_LIMIT, async {
        loop {
            if labelled_containers(instance).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "containers of instance {instance} left behind: {:?}",
        labelled_containers(instance)
    );
}

/// Waits until a container of `instance` exists for `job_id` and returns its id.
pub async fn container_of_job(instance: &str, job_id: u64) -> String {
    within("waiting for the job's container", async {
        loop {
            let ids = podman(&[
                "ps",
                "--all",
                "--quiet",
                "--no-trunc",
                "--filter",
                &format!("label=io.agentrun.engine={instance}"),
                "--filter",
                &format!("label=io.agentrun.job-id={job_id}"),
                "--filter",
                "status=running",
            ]);
            if let Some(id) = ids.lines().next() {
                return id.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Returns true while a process with this pid has a thread that is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    // A process whose main thread has exited shows as a zombie while its other threads still
    // run (a Go program such as podman shutting down does this), so every thread is looked at.
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.filter_map(Result::ok).any(|thread| {
        std::fs::read_to_string(thread.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name in parentheses, which may contain spaces.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
    })
}
