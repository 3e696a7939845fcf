//! End-to-end tests of the HTTP API on the container executors (Docker and Podman). They skip,
//! printing why, when the runtime does not respond, and fail instead when
//! `AGENTRUN_REQUIRE_RUNTIMES` lists it.

mod common;
#[path = "common/service.rs"]
mod harness;

use std::time::Duration;

use agentrun::backends::ExecutorKind;
use harness::{
    labelled_containers, running_containers, shell_manifest, shell_package, wait_for,
    wait_integration_ready, wait_job_final, ServiceProcess,
};
use serde_json::json;

/// Configuration for one test: its own engine label, so that the start-up sweep of one test
/// never removes another test's (or another program's) containers, and the host network, so
/// that agents reach the test's webhook server on 127.0.0.1.
fn docker_config(instance: &str) -> String {
    format!(
        "executor = \"docker\"\n[health]\ninterval_secs = 0\n[docker]\ninstance = \"{instance}\"\n\
         network = \"host\"\n"
    )
}

/// Returns true when Docker can run jobs here; see [`common::runtimes::runtime_available`].
async fn docker_available(test: &'static str) -> bool {
    tokio::task::spawn_blocking(move || {
        common::runtimes::runtime_available(ExecutorKind::Docker, test)
    })
    .await
    .expect("the runtime probe does not panic unless Docker is required")
}

fn instance() -> String {
    format!("agentrun-test-{}", uuid::Uuid::new_v4().simple())
}

/// The Slack example end to end on Docker. See [`harness::slack_end_to_end`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_end_to_end_on_docker() {
    if !docker_available("slack_end_to_end_on_docker").await {
        return;
    }
    let instance = instance();
    harness::slack_end_to_end(&docker_config(&instance)).await;
    assert_eq!(
        labelled_containers(agentrun_executor::LABEL_ENGINE, &instance),
        Vec::<String>::new()
    );
}

/// SIGKILL while a container job runs: after a restart the job completes with the agent's
/// reply, earlier jobs are intact and no container with the engine's label is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_recovers_docker_job() {
    if !docker_available("sigkill_recovers_docker_job").await {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let instance = instance();
    let config = docker_config(&instance);
    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    service.wait_ready().await;
    let client = service.client();

    let zip = shell_package(&dir.path().join("package"));
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[
                (
                    "manifest",
                    "application/json",
                    shell_manifest("Sleeper").to_string().into_bytes(),
                ),
                ("package", "application/zip", zip),
            ],
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let agent_id = response.json()["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    wait_integration_ready(&client, &agent_id).await;

    let submit = |sleep: &'static str| {
        let client = client.clone();
        let agent_id = agent_id.clone();
        async move {
            let response = client
                .json(
                    "POST",
                    &format!("/v1/integrations/{agent_id}/jobs"),
                    &json!({ "values": { "sleep": sleep } }),
                )
                .await;
            assert_eq!(response.status, 202, "{}", response.text());
            response.json()["job_id"].as_u64().expect("job_id")
        }
    };
    let earlier = submit("0").await;
    let earlier_job = wait_job_final(&client, earlier, Duration::from_secs(120)).await;
    assert_eq!(earlier_job["state"], "succeeded", "{earlier_job}");

    // Kill the service once the job's container is running.
    let job_id = submit("4").await;
    wait_for("the job's container", Duration::from_secs(60), || async {
        let ids = running_containers(agentrun_executor::LABEL_JOB_ID, &job_id.to_string());
        (!ids.is_empty()).then_some(())
    })
    .await;
    service.kill9().await;
    let left = labelled_containers(agentrun_executor::LABEL_JOB_ID, &job_id.to_string());
    assert_eq!(left.len(), 1, "the container outlives the killed service");

    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    service.wait_ready().await;
    let client = service.client();
    let job = wait_job_final(&client, job_id, Duration::from_secs(120)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["message"], format!("done {job_id}"));
    assert_eq!(job["result"]["job_id"].as_u64(), Some(job_id));

    let earlier_again = client.get(&format!("/v1/jobs/{earlier}")).await.json();
    assert_eq!(earlier_again, earlier_job);
    wait_for("the sweep", Duration::from_secs(60), || async {
        labelled_containers(agentrun_executor::LABEL_ENGINE, &instance)
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(
        service.logs().contains("job recovered after a restart"),
        "{}",
        service.logs()
    );
}

/// The Slack example end to end on Podman, with the same body as on Docker and the subprocess
/// backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_end_to_end_on_podman() {
    let available = tokio::task::spawn_blocking(|| {
        common::runtimes::runtime_available(ExecutorKind::Podman, "slack_end_to_end_on_podman")
    })
    .await
    .expect("the runtime probe does not panic unless Podman is required");
    if !available {
        return;
    }
    let instance = instance();
    let config = format!(
        "executor = \"podman\"\n[health]\ninterval_secs = 0\n[podman]\ninstance = \"{instance}\"\n\
         network = \"host\"\n"
    );
    harness::slack_end_to_end(&config).await;
}
