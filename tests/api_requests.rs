//! Request handling of the HTTP API on the subprocess executor: waiting for jobs, duplicate
//! keys, filters and authentication. The service runs as a child process.

#[path = "common/service.rs"]
mod harness;

use harness::{
    shell_manifest, shell_package, wait_integration_ready, wait_job_running, Client,
    ServiceProcess,
};
use serde_json::{json, Value};

const SUBPROCESS: &str = "executor = \"subprocess\"\n[health]\ninterval_secs = 0\n";

/// Registers the shell agent under `name` and waits until it is ready; returns its agentID.
async fn register_shell(client: &Client, dir: &std::path::Path, name: &str) -> String {
    let zip = shell_package(&dir.join(format!("package-{name}")));
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[
                (
                    "manifest",
                    "application/json",
                    shell_manifest(name).to_string().into_bytes(),
                ),
                ("package", "application/zip", zip),
            ],
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let agent_id = response.json()["agent_id"]
        .as_str()
        .expect("agent_id in response")
        .to_owned();
    wait_integration_ready(client, &agent_id).await;
    agent_id
}

/// A `?wait=true` request whose wait runs out returns the job as it is then, not as it was
/// when it was queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_returns_current_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!("{SUBPROCESS}[jobs]\nwait_timeout_secs = 2\n");
    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    service.wait_ready().await;
    let client = service.client();
    let agent_id = register_shell(&client, dir.path(), "Sleeper").await;

    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs?wait=true"),
            &json!({ "values": { "sleep": "60" } }),
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let job = response.json();
    assert_eq!(job["state"], "running", "{job}");
    assert_ne!(job["started_at"], Value::Null, "{job}");

    let job_id = job["job_id"].as_u64().expect("job_id");
    wait_job_running(&client, job_id).await;
    let cancelled = client.delete(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
}
