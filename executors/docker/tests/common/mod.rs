//! Helpers for the tests that run against a real Docker engine.
//!
//! Each test gets an engine instance name of its own, so its containers carry labels that no
//! other test uses. Test agents are `/bin/sh` scripts on `agentrun-busybox:latest`, an image that
//! the CI setup script creates offline (`FROM scratch` plus a static busybox).

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentrun_docker::{DockerConfig, DockerExecutor};
use agentrun_executor::{
    Executor, ExecutorError, PackageSpec, Prepared, Target, LABEL_ENGINE, LABEL_JOB_ID,
};
use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptions, LogsOptions};
use bollard::Docker;
use futures_util::StreamExt;

/// Limit on every await in these tests. Generous, because two cores are shared with builds.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Environment variable listing the runtimes (comma-separated) whose tests must not skip.
pub const REQUIRE_RUNTIMES: &str = "AGENTRUN_REQUIRE_RUNTIMES";

/// Base image of every test agent.
pub const BASE_IMAGE: &str = "agentrun-busybox:latest";

/// Awaits `future`, failing the test when it takes longer than [`STEP_TIMEOUT`].
pub async fn within<F: Future>(step: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(output) => output,
        Err(_) => panic!("{step} did not finish within {} s", STEP_TIMEOUT.as_secs()),
    }
}

/// Returns true when `AGENTRUN_REQUIRE_RUNTIMES` names `docker`.
pub fn docker_required() -> bool {
    std::env::var(REQUIRE_RUNTIMES)
        .map(|value| value.split(',').any(|name| name.trim() == "docker"))
        .unwrap_or(false)
}

/// Handles an engine that does not respond: prints why the test skips, or fails the test when
/// `AGENTRUN_REQUIRE_RUNTIMES` names `docker`.
pub fn skip_unless_required(test: &str, error: &ExecutorError) {
    if docker_required() {
        panic!("{test}: Docker is required ({REQUIRE_RUNTIMES} names docker) but: {error}");
    }
    eprintln!("skipping {test}: {error}");
}

/// An executor connected for one test, with the test's own instance name, plus a plain bollard
/// client for looking at containers from outside the executor.
pub struct Fixture {
    pub test: String,
    pub executor: DockerExecutor,
    pub docker: Docker,
    pub instance: String,
    pub dir: tempfile::TempDir,
    /// Makes image tags unique to this test run, so that a cache hit is never left over from
    /// an earlier run.
    nonce: u64,
    prepared: Vec<Prepared>,
}

impl Fixture {
    /// Connects to the engine at `DOCKER_HOST` (or the default socket), with network `none`.
    /// Returns `None` when the test should skip; see [`skip_unless_required`].
    pub async fn connect(test: &str) -> Option<Self> {
        Self::connect_with(test, |_| {}).await
    }

    /// Like [`Fixture::connect`], with `customize` applied to the configuration.
    pub async fn connect_with(
        test: &str,
        customize: impl FnOnce(&mut DockerConfig),
    ) -> Option<Self> {
        let instance = format!("test-{test}-{}", std::process::id());
        let mut config = DockerConfig {
            instance: instance.clone(),
            network: Some("none".to_owned()),
            ..DockerConfig::default()
        };
        customize(&mut config);
        let executor = match within("connect", DockerExecutor::connect(config)).await {
            Ok(executor) => executor,
            Err(error) if error.is_unavailable() => {
                skip_unless_required(test, &error);
                return None;
            }
            Err(error) => panic!("{test}: connecting to Docker failed: {error}"),
        };
        let docker = Docker::connect_with_host(executor.host())
            .expect("the executor connected to this host a moment ago");
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        Some(Self {
            test: test.to_owned(),
            executor,
            docker,
            instance,
            dir: tempfile::tempdir().expect("create a temporary directory"),
            nonce,
            prepared: Vec::new(),
        })
    }

    /// Writes a package whose agent is `script`, run by busybox `sh`, and returns its spec.
    pub fn script_package(&self, name: &str, script: &str) -> PackageSpec {
        let dockerfile = format!(
            "FROM {BASE_IMAGE}\nCOPY agent.sh /agent.sh\nENTRYPOINT [\"/bin/sh\", \"/agent.sh\"]\n"
        );
        self.package(name, &dockerfile, &[("agent.sh", script)])
    }

    /// Writes a package with `dockerfile` and `files` into a folder of its own.
    pub fn package(&self, name: &str, dockerfile: &str, files: &[(&str, &str)]) -> PackageSpec {
        let root = self.dir.path().join(name);
        std::fs::create_dir_all(&root).expect("create the package folder");
        std::fs::write(root.join("Dockerfile"), dockerfile).expect("write the Dockerfile");
        for (path, content) in files {
            std::fs::write(root.join(path), content).expect("write a package file");
        }

        let mut hasher = DefaultHasher::new();
        (dockerfile, files, self.nonce).hash(&mut hasher);
        let content_hash = hasher.finish();
        let mut hasher = DefaultHasher::new();
        (&self.test, name).hash(&mut hasher);
        let name_hash = hasher.finish();

        PackageSpec {
            integration: format!("{}-{name}", self.test),
            agent_id: format!("{:08x}-0000-4000-8000-000000000000", name_hash as u32),
            digest: format!("{content_hash:016x}{name_hash:016x}"),
            root,
            command: None,
        }
    }

    /// Prepares `package` and remembers the image, which [`Fixture::cleanup`] removes.
    pub async fn prepare(&mut self, package: &PackageSpec) -> Prepared {
        let prepared = within("prepare", self.executor.prepare(package))
            .await
            .unwrap_or_else(|error| panic!("{}: prepare failed: {error}", self.test));
        self.prepared.push(prepared.clone());
        prepared
    }

    /// Returns the image reference of a prepared package.
    pub fn image(prepared: &Prepared) -> &str {
        match &prepared.target {
            Target::Image { reference } => reference,
            other => panic!("expected an image target, got {other:?}"),
        }
    }

    /// Lists this test's containers (running or not), optionally only those of one job.
    pub async fn containers(&self, job_id: Option<u64>) -> Vec<ContainerSummary> {
        let mut labels = vec![format!("{LABEL_ENGINE}={}", self.instance)];
        if let Some(job_id) = job_id {
            labels.push(format!("{LABEL_JOB_ID}={job_id}"));
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), labels)])),
            ..ListContainersOptions::default()
        };
        within(
            "list containers",
            self.docker.list_containers(Some(options)),
        )
        .await
        .expect("list containers")
    }

    /// Fails the test when a container of `job_id` still exists.
    pub async fn assert_no_container(&self, job_id: u64) {
        let left = self.containers(Some(job_id)).await;
        assert!(
            left.is_empty(),
            "{}: containers left for job {job_id}: {:?}",
            self.test,
            left.iter()
                .map(|container| &container.id)
                .collect::<Vec<_>>()
        );
    }

    /// Waits until a container of `job_id` exists and returns its id.
    pub async fn wait_for_container(&self, job_id: u64) -> String {
        within("container to appear", async {
            loop {
                if let Some(id) = self
                    .containers(Some(job_id))
                    .await
                    .into_iter()
                    .find_map(|container| container.id)
                {
                    return id;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }

    /// Waits until the container of `job_id` has written `needle` to stdout, which shows that
    /// its agent runs, and returns the container's id. Reads the container's logs, which hold
    /// attached output too.
    pub async fn wait_for_output(&self, job_id: u64, needle: &str) -> String {
        let id = self.wait_for_container(job_id).await;
        within("agent output", async {
            loop {
                let options = LogsOptions {
                    stdout: true,
                    ..LogsOptions::default()
                };
                let logs: Vec<_> = self.docker.logs(&id, Some(options)).collect().await;
                let text: String = logs
                    .into_iter()
                    .filter_map(Result::ok)
                    .map(|output| output.to_string())
                    .collect();
                if text.contains(needle) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        id
    }

    /// Waits until no container of `job_id` is left, for removals that run in the background.
    pub async fn wait_until_gone(&self, job_id: u64) {
        within("container removal", async {
            while !self.containers(Some(job_id)).await.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    /// Removes the images this test prepared.
    pub async fn cleanup(self) {
        for prepared in &self.prepared {
            within("release", self.executor.release(prepared))
                .await
                .unwrap_or_else(|error| panic!("{}: release failed: {error}", self.test));
        }
    }
}
