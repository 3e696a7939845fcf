//! Start-up and shutdown of `agentrun serve` on the subprocess executor: the data folder's
//! lock, the Unix socket file, and the drain after SIGTERM.

mod common;
#[path = "common/service.rs"]
mod harness;

use std::time::Duration;

use agentrun::backends::ExecutorKind;

use harness::{register_shell, wait_job_running, ServiceProcess};
use serde_json::{json, Value};

const SUBPROCESS: &str = "executor = \"subprocess\"\n[health]\ninterval_secs = 0\n";

/// A second service on the same data folder exits with status 2 before it changes anything,
/// naming the folder and the first service's pid; the first one goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_service_on_data_dir_exits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    first.wait_ready().await;
    let marker = dir.path().join("data/tmp/upload-in-progress.zip");
    std::fs::write(&marker, b"partial upload").expect("write marker");

    let second_dir = dir.path().join("second");
    std::fs::create_dir_all(&second_dir).expect("mkdir");
    let config = format!(
        "data_dir = {:?}\n{SUBPROCESS}[listen]\nunix = {:?}\n",
        dir.path().join("data").display().to_string(),
        second_dir.join("api.sock").display().to_string()
    );
    let config_path = second_dir.join("agentrun.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut second = ServiceProcess::spawn(
        &second_dir,
        &["serve", "--config", &config_path.to_string_lossy()],
        &[],
    );
    let status = second.wait_exit(Duration::from_secs(30)).await;
    let logs = second.logs();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(
        logs.contains(&dir.path().join("data").display().to_string()),
        "{logs}"
    );
    assert!(logs.contains(&format!("pid {}", first.pid())), "{logs}");

    assert!(marker.exists(), "the second service emptied tmp/");
    assert!(
        !second_dir.join("api.sock").exists(),
        "the second service bound its socket"
    );
    let response = first.client().get("/healthz").await;
    assert_eq!(response.status, 200, "{}", response.text());
}

/// `listen.unix` naming a regular file stops start-up with status 2, before anything is
/// written, and leaves the file as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_path_of_regular_file_is_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("api.sock");
    std::fs::write(&socket, b"precious data").expect("write file");

    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    let status = service.wait_exit(Duration::from_secs(30)).await;
    let logs = service.logs();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(logs.contains(&socket.display().to_string()), "{logs}");
    assert!(logs.contains("not a socket"), "{logs}");
    assert_eq!(
        std::fs::read(&socket).expect("the file is still there"),
        b"precious data"
    );
    // The configuration check stops start-up before the data folder is made.
    assert!(!dir.path().join("data").exists(), "{logs}");
}

/// At shutdown the service removes its own socket file, but not a file that replaced it at
/// the same path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_removes_only_own_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    service.signal(libc::SIGTERM);
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", service.logs());
    assert!(!service.socket.exists(), "the socket file was left behind");

    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    std::fs::remove_file(&service.socket).expect("remove the socket");
    std::fs::write(&service.socket, b"someone else's file").expect("write file");
    service.signal(libc::SIGTERM);
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", service.logs());
    assert_eq!(
        std::fs::read(&service.socket).expect("the file is still there"),
        b"someone else's file"
    );
}

/// During the drain after SIGTERM, reads are served, `/healthz` responds with 503 `stopping`, and
/// new jobs and changes get 503; once the drain ends the socket file is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_serves_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();
    let agent_id = register_shell(&client, dir.path(), "Sleeper", Value::Null).await;
    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            &json!({ "values": { "sleep": "300" } }),
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let job_id = response.json()["job_id"].as_u64().expect("job_id");
    wait_job_running(&client, job_id).await;

    // The harness sets shutdown_grace_secs = 10, so the drain lasts 10 s.
    service.signal(libc::SIGTERM);
    harness::wait_for(
        "/healthz to report stopping",
        Duration::from_secs(10),
        || async {
            let response = client.get("/healthz").await;
            (response.status == 503).then_some(response)
        },
    )
    .await;
    let health = client.get("/healthz").await;
    assert_eq!(health.json(), json!({ "status": "stopping" }));

    let job = client.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(job.status, 200, "{}", job.text());
    assert_eq!(job.json()["state"], "running");
    let listed = client.get("/v1/integrations").await;
    assert_eq!(listed.status, 200, "{}", listed.text());

    let submitted = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            &json!({}),
        )
        .await;
    assert_eq!(submitted.status, 503, "{}", submitted.text());
    assert_eq!(submitted.json()["error"], "stopping");
    let patched = client
        .json(
            "PATCH",
            &format!("/v1/integrations/{agent_id}/env"),
            &json!({ "A": "b" }),
        )
        .await;
    assert_eq!(patched.status, 503, "{}", patched.text());
    let deleted = client.delete(&format!("/v1/integrations/{agent_id}")).await;
    assert_eq!(deleted.status, 503, "{}", deleted.text());

    let status = service.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", service.logs());
    assert!(!service.socket.exists(), "the socket file was left behind");
}

/// Deletes an integration while its job runs and registers the same package under the same
/// name at once; after the deleted one's cleanup, the new registration still runs jobs.
async fn delete_then_register_again(config: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(dir.path(), config, &[]);
    service.wait_ready().await;
    let client = service.client();
    let agent_id = register_shell(&client, dir.path(), "Sleeper", Value::Null).await;
    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            &json!({ "values": { "sleep": "300" } }),
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let job_id = response.json()["job_id"].as_u64().expect("job_id");
    wait_job_running(&client, job_id).await;

    let deleted = client.delete(&format!("/v1/integrations/{agent_id}")).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let again = register_shell(&client, dir.path(), "Sleeper", Value::Null).await;
    assert_eq!(again, agent_id);
    // The cleanup waits for the cancelled job to end, so it may run before or after the second
    // registration. Either way the new integration's folder and image must remain.
    harness::wait_for(
        "the deleted integration's cleanup",
        Duration::from_secs(60),
        || async {
            service
                .logs()
                .contains("the deleted integration's package folders are removed")
                .then_some(())
        },
    )
    .await;

    let shown = client
        .get(&format!("/v1/integrations/{agent_id}"))
        .await
        .json();
    assert_eq!(shown["state"], "ready", "{shown}");
    let digest = shown["digest"].as_str().expect("digest");
    let folder = dir
        .path()
        .join("data/packages")
        .join(&agent_id)
        .join(digest);
    assert!(
        folder.join("agent.sh").is_file(),
        "{} is gone",
        folder.display()
    );
    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs?wait=true"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["state"], "succeeded", "{}", response.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_register_on_subprocess() {
    delete_then_register_again(SUBPROCESS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_register_on_docker() {
    let available = tokio::task::spawn_blocking(|| {
        common::runtimes::runtime_available(ExecutorKind::Docker, "delete_then_register_on_docker")
    })
    .await
    .expect("the runtime probe does not panic unless Docker is required");
    if !available {
        return;
    }
    let instance = format!("agentrun-test-{}", uuid::Uuid::new_v4().simple());
    let config = format!(
        "executor = \"docker\"\n[health]\ninterval_secs = 0\n[docker]\ninstance = \"{instance}\"\n\
         network = \"none\"\n"
    );
    delete_then_register_again(&config).await;
}
