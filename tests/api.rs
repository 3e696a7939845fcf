//! End-to-end tests of the HTTP API on the subprocess executor: the service runs as a child
//! process, and every request goes over its Unix socket (or TCP where stated).

#[path = "common/service.rs"]
mod harness;

use std::collections::HashSet;
use std::time::Duration;

use harness::{
    register_manifest, register_shell, shell_manifest, shell_package, slack_zip,
    wait_integration_ready, wait_job_final, wait_job_running, zip_folder, Address, Client,
    ServiceProcess,
};
use serde_json::{json, Value};

const SUBPROCESS: &str = "executor = \"subprocess\"\n[health]\ninterval_secs = 0\n";

async fn submit(client: &Client, agent_id: &str, values: Value) -> u64 {
    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            &json!({ "values": values }),
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["job_id"].as_u64().expect("job_id")
}

/// The Slack example end to end on the subprocess executor. See
/// [`harness::slack_end_to_end`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_end_to_end_on_subprocess() {
    harness::slack_end_to_end(SUBPROCESS).await;
}

/// The form route and a job's result report a keyword without a value with the same warning
/// object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_and_job_warnings_share_shape() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();

    let mut manifest = shell_manifest("Warnings");
    manifest["fields"]
        .as_array_mut()
        .expect("fields")
        .push(json!({ "name": "who", "value": "SIFT-USER-NAME" }));
    let agent_id = register_manifest(&client, dir.path(), manifest).await;

    let expected = json!([{
        "kind": "missing_keyword",
        "field": "who",
        "keyword": "SIFT-USER-NAME",
        "variable": null,
        "message": "field \"who\": SIFT-USER-NAME has no value in the context and was replaced \
                    by an empty string",
    }]);
    let form = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/form"),
            &json!({ "context": {} }),
        )
        .await;
    assert_eq!(form.status, 200, "{}", form.text());
    assert_eq!(form.json()["warnings"], expected);

    let job_id = submit(&client, &agent_id, json!({})).await;
    let job = wait_job_final(&client, job_id, Duration::from_secs(120)).await;
    assert_eq!(job["result"]["warnings"], expected, "{job}");
}

/// Invalid input gets 422 with one entry per problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_gets_422() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();

    let registered = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[("package", "application/zip", slack_zip())],
        )
        .await;
    assert_eq!(registered.status, 202, "{}", registered.text());
    let agent_id = registered.json()["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    wait_integration_ready(&client, &agent_id).await;

    // A field value that breaks the field's regex.
    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            &json!({ "values": { "message": "   " } }),
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    let body = response.json();
    assert_eq!(body["error"], "invalid_values");
    assert_eq!(body["errors"][0]["field"], "message");
    assert_eq!(
        body["errors"][0]["message"],
        "Write a message to send to Slack."
    );
    assert_eq!(body["errors"][0]["rule"], "regex");

    // An unknown field and a non-string value, both listed.
    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            &json!({ "values": { "message": "hi", "channel": "x" } }),
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    assert_eq!(response.json()["errors"][0]["rule"], "unknown_field");
    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            &json!({ "values": { "message": 5 } }),
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    assert_eq!(response.json()["errors"][0]["field"], "message");

    // An unknown context key.
    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            &json!({ "context": { "user": "alice" } }),
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());

    // A manifest with four problems lists them all: an unknown key does not hide the others,
    // and a prefill without keywords must obey its own field's rules.
    let bad_manifest = json!({
        "name": "Broken",
        "colour": "red",
        "section": "sidebar",
        "fields": [
            { "name": "x", "ui_element": "slider" },
            { "name": "ticket", "value": "T-1", "regex": "TCK-[0-9]{4}" }
        ]
    });
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[
                (
                    "manifest",
                    "application/json",
                    bad_manifest.to_string().into_bytes(),
                ),
                ("package", "application/zip", slack_zip()),
            ],
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    let body = response.json();
    assert_eq!(body["error"], "invalid_manifest");
    let paths: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|error| error["field"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "colour",
            "section",
            "fields[0].ui_element",
            "fields[1].value"
        ],
        "{body}"
    );
    assert_eq!(
        body["errors"][3]["message"],
        "prefill \"T-1\" does not match the regex TCK-[0-9]{4} as a whole; change the prefill \
         or the field's rules"
    );

    // No manifest part and no integration.toml in the package.
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).expect("mkdir");
    std::fs::write(
        bare.join("Dockerfile"),
        "FROM scratch\nENTRYPOINT [\"/bin/true\"]\n",
    )
    .expect("write");
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[("package", "application/zip", zip_folder(&bare))],
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    let body = response.json();
    assert_eq!(body["error"], "missing_part");
    assert_eq!(body["errors"][0]["field"], "manifest");

    // No package part.
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[("manifest", "application/json", b"{\"name\":\"x\"}".to_vec())],
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    assert_eq!(response.json()["errors"][0]["field"], "package");

    // The same name in another case is a conflict with the registered integration.
    let upper = json!({ "name": "SLACK" });
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[
                (
                    "manifest",
                    "application/json",
                    upper.to_string().into_bytes(),
                ),
                ("package", "application/zip", slack_zip()),
            ],
        )
        .await;
    assert_eq!(response.status, 409, "{}", response.text());
    let body = response.json();
    assert_eq!(body["error"], "duplicate_name");
    assert!(
        body["message"].as_str().unwrap_or("").contains("\"Slack\""),
        "{body}"
    );

    // Malformed JSON is 400, a wrong content type 415, an unknown route 404: all JSON.
    let response = client
        .request(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            Some("application/json"),
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(response.json()["error"], "bad_request");
    let response = client
        .request(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            Some("text/plain"),
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(response.status, 415, "{}", response.text());
    let response = client
        .request(
            "PATCH",
            &format!("/v1/integrations/{agent_id}/env"),
            Some("application/merge-patch+json"),
            br#"{"9BAD": "x", "GOOD": 5}"#.to_vec(),
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    let body = response.json();
    assert_eq!(body["error"], "invalid_env");
    assert_eq!(body["errors"].as_array().map(Vec::len), Some(2), "{body}");
    let response = client.get("/v1/no-such-route").await;
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["error"], "no_route");
    let response = client.get("/v1/integrations/not-a-uuid").await;
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["error"], "not_found");
}

/// Uploads past `intake.max_archive_bytes` and JSON bodies past `api.max_body_bytes` get 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_get_413() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config =
        format!("{SUBPROCESS}[intake]\nmax_archive_bytes = 2048\n[api]\nmax_body_bytes = 4096\n");
    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    service.wait_ready().await;
    let client = service.client();

    let big = vec![b'x'; 64 * 1024];
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[("package", "application/zip", big)],
        )
        .await;
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.json()["error"], "payload_too_large");
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap_or("")
            .contains("2048"),
        "{}",
        response.text()
    );

    let long = "y".repeat(8 * 1024);
    let response = client
        .json(
            "POST",
            "/v1/integrations/f2fe62ed-03c8-5f57-a801-e8322d208e7d/jobs",
            &json!({ "values": { "message": long } }),
        )
        .await;
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.json()["error"], "payload_too_large");

    // Nothing was left behind in the upload folder.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("data/tmp"))
        .expect("tmp exists")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// On TCP, requests without the token or with a wrong one get 401; the right one passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_requires_bearer_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let token = format!("token-{}", uuid::Uuid::new_v4().simple());
    let config = format!("{SUBPROCESS}[listen]\ntcp = \"127.0.0.1:{port}\"\ntoken = \"{token}\"\n");
    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    service.wait_ready().await;
    let tcp = Client::new(Address::Tcp(format!("127.0.0.1:{port}")));

    let response = tcp.get("/v1/integrations").await;
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(response.json()["error"], "unauthorized");
    assert_eq!(
        response
            .headers
            .get("www-authenticate")
            .and_then(|value| value.to_str().ok()),
        Some("Bearer")
    );

    let response = tcp.with_token("wrong-token").get("/v1/integrations").await;
    assert_eq!(response.status, 401, "{}", response.text());

    let response = tcp.with_token(&token).get("/v1/integrations").await;
    assert_eq!(response.status, 200, "{}", response.text());

    let response = tcp.get("/healthz").await;
    assert_eq!(response.status, 200, "{}", response.text());

    // The Unix socket needs no token, and its mode is 0660.
    let response = service.client().get("/v1/integrations").await;
    assert_eq!(response.status, 200);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&service.socket)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    assert!(
        !service.logs().contains(&token),
        "the log contains the token"
    );
}

/// TCP without a token stops start-up with a message that gives the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_without_token_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "{SUBPROCESS}[listen]\ntcp = \"127.0.0.1:{}\"\n",
        free_port()
    );
    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{}", service.logs());
    let logs = service.logs();
    assert!(logs.contains("listen.tcp"), "{logs}");
    assert!(logs.contains("requires a bearer token"), "{logs}");
}

/// Cancelling a running job kills its agent and records it as cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_running_job_kills_agent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run_log = dir.path().join("runs.log");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();
    let agent_id = register_shell(
        &client,
        dir.path(),
        "Sleeper",
        json!({ "RUN_LOG": run_log.display().to_string() }),
    )
    .await;

    let job_id = submit(&client, &agent_id, json!({ "sleep": "300" })).await;
    wait_job_running(&client, job_id).await;
    // The agent has started once it wrote its id.
    harness::wait_for("the agent to start", Duration::from_secs(30), || async {
        std::fs::read_to_string(&run_log)
            .ok()
            .filter(|text| text.contains(&job_id.to_string()))
    })
    .await;

    let marker = format!("RUN_LOG={}", run_log.display());
    assert!(
        !harness::processes_with_env(&marker).is_empty(),
        "the running agent is not found by its environment"
    );

    let started = std::time::Instant::now();
    let response = client.delete(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let job = response.json();
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["result"]["status"], "cancelled");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or("")
            .contains("cancelled through the API"),
        "{job}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the agent was not killed"
    );
    harness::wait_for(
        "the agent's processes to end",
        Duration::from_secs(10),
        || async {
            harness::processes_with_env(&marker)
                .is_empty()
                .then_some(())
        },
    )
    .await;

    // A finished job cannot be cancelled again; a queued one is cancelled at once.
    let again = client.delete(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(again.status, 409, "{}", again.text());
    let missing = client.delete("/v1/jobs/1").await;
    assert_eq!(missing.status, 404, "{}", missing.text());
}

/// 200 concurrent submissions are all recorded and all finish, each run exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_run_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run_log = dir.path().join("runs.log");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();
    let agent_id = register_shell(
        &client,
        dir.path(),
        "Counter",
        json!({ "RUN_LOG": run_log.display().to_string() }),
    )
    .await;

    let submissions: Vec<_> = (0..200)
        .map(|_| {
            let client = client.clone();
            let agent_id = agent_id.clone();
            tokio::spawn(async move { submit(&client, &agent_id, json!({})).await })
        })
        .collect();
    let mut ids = Vec::new();
    for submission in submissions {
        ids.push(submission.await.expect("submission task"));
    }
    let unique: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), 200, "job ids repeat");

    for id in &ids {
        let job = wait_job_final(&client, *id, Duration::from_secs(300)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["result"]["message"], format!("done {id}"));
    }

    let runs = std::fs::read_to_string(&run_log).expect("run log");
    let mut ran: Vec<u64> = runs
        .lines()
        .map(|line| line.trim().parse().expect("job id line"))
        .collect();
    ran.sort_unstable();
    let mut expected = ids.clone();
    expected.sort_unstable();
    assert_eq!(ran, expected, "every job ran exactly once");

    let listed = client
        .get(&format!("/v1/jobs?integration={agent_id}&limit=1000"))
        .await
        .json();
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(200));
}

/// SIGKILL while a subprocess job runs: after a restart the job is `interrupted`, never run
/// again, and earlier jobs are intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_interrupts_subprocess_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run_log = dir.path().join("runs.log");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();
    let agent_id = register_shell(
        &client,
        dir.path(),
        "Sleeper",
        json!({ "RUN_LOG": run_log.display().to_string() }),
    )
    .await;

    let earlier = submit(&client, &agent_id, json!({})).await;
    let earlier_job = wait_job_final(&client, earlier, Duration::from_secs(60)).await;
    assert_eq!(earlier_job["state"], "succeeded");
    let queued_behind = submit(&client, &agent_id, json!({ "sleep": "5" })).await;
    wait_job_running(&client, queued_behind).await;
    harness::wait_for("the agent to start", Duration::from_secs(30), || async {
        std::fs::read_to_string(&run_log)
            .ok()
            .filter(|text| text.contains(&queued_behind.to_string()))
    })
    .await;

    service.kill9().await;
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();

    let job = wait_job_final(&client, queued_behind, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "interrupted", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or("")
            .contains("not run again"),
        "{job}"
    );
    let earlier_again = client.get(&format!("/v1/jobs/{earlier}")).await.json();
    assert_eq!(earlier_again, earlier_job);

    // Give a re-run the time to show up, then check the interrupted job ran once only.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = std::fs::read_to_string(&run_log).expect("run log");
    let count = runs
        .lines()
        .filter(|line| line.trim() == queued_behind.to_string())
        .count();
    assert_eq!(count, 1, "{runs}");

    // New jobs still get ids above every stored one.
    let next = submit(&client, &agent_id, json!({})).await;
    assert!(next > queued_behind, "{next} <= {queued_behind}");
}

/// `READY=1` and `STOPPING=1` arrive on `NOTIFY_SOCKET`, and SIGTERM lets a running job finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_and_drain_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let notify_path = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let notify_env = notify_path.display().to_string();
    let mut service = ServiceProcess::start(
        dir.path(),
        SUBPROCESS,
        &[("NOTIFY_SOCKET", notify_env.as_str())],
    );

    let ready = receive(&notify).await;
    assert!(ready.lines().any(|line| line == "READY=1"), "{ready:?}");
    // Ready means listening: a request works at once.
    let client = service.client();
    assert_eq!(client.get("/healthz").await.status, 200);

    let agent_id = register_shell(&client, dir.path(), "Sleeper", json!({})).await;
    let job_id = submit(&client, &agent_id, json!({ "sleep": "2" })).await;
    wait_job_running(&client, job_id).await;

    service.signal(libc::SIGTERM);
    let stopping = receive(&notify).await;
    assert!(
        stopping.lines().any(|line| line == "STOPPING=1"),
        "{stopping:?}"
    );
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", service.logs());

    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let job = service
        .client()
        .get(&format!("/v1/jobs/{job_id}"))
        .await
        .json();
    assert_eq!(
        job["state"], "succeeded",
        "the running job was not drained: {job}"
    );
}

/// A job still running when the grace period ends is cancelled with a message saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_after_grace_period() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();
    let agent_id = register_shell(&client, dir.path(), "Sleeper", json!({})).await;
    let job_id = submit(&client, &agent_id, json!({ "sleep": "300" })).await;
    wait_job_running(&client, job_id).await;

    service.signal(libc::SIGTERM);
    let status = service.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", service.logs());

    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let job = service
        .client()
        .get(&format!("/v1/jobs/{job_id}"))
        .await
        .json();
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or("")
            .contains("service stopped"),
        "{job}"
    );
}

async fn receive(socket: &tokio::net::UnixDatagram) -> String {
    let mut buffer = vec![0u8; 4096];
    let length = tokio::time::timeout(Duration::from_secs(60), socket.recv(&mut buffer))
        .await
        .expect("a notification within 60 s")
        .expect("receive a notification");
    String::from_utf8_lossy(&buffer[..length]).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// Replacing a package keeps the agentID and env and rebuilds; a new name is rejected; deleting
/// removes the integration and cancels its queued jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_and_delete_integration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();
    let agent_id = register_shell(&client, dir.path(), "Sleeper", json!({ "KEPT": "x" })).await;
    let before = client
        .get(&format!("/v1/integrations/{agent_id}"))
        .await
        .json();

    // A changed package under the same name in another case.
    let package = dir.path().join("replacement");
    shell_package(&package);
    std::fs::write(package.join("notes.txt"), "changed").expect("write");
    let mut manifest = shell_manifest("SLEEPER");
    manifest["env"] = json!({ "ADDED": "y" });
    let response = client
        .multipart(
            "PUT",
            &format!("/v1/integrations/{agent_id}/package"),
            &[
                (
                    "manifest",
                    "application/json",
                    manifest.to_string().into_bytes(),
                ),
                ("package", "application/zip", zip_folder(&package)),
            ],
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let after = wait_integration_ready(&client, &agent_id).await;
    assert_ne!(after["digest"], before["digest"]);
    assert_eq!(after["name"], "SLEEPER");
    assert_eq!(after["env"], json!(["KEPT", "ADDED"]));
    let job_id = submit(&client, &agent_id, json!({})).await;
    let job = wait_job_final(&client, job_id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");

    // Another name is not a replacement.
    let response = client
        .multipart(
            "PUT",
            &format!("/v1/integrations/{agent_id}/package"),
            &[
                (
                    "manifest",
                    "application/json",
                    shell_manifest("Other").to_string().into_bytes(),
                ),
                ("package", "application/zip", zip_folder(&package)),
            ],
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    assert_eq!(response.json()["error"], "name_changed");

    // Delete with a job queued behind a running one.
    let running = submit(&client, &agent_id, json!({ "sleep": "300" })).await;
    wait_job_running(&client, running).await;
    let response = client.delete(&format!("/v1/integrations/{agent_id}")).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let missing = client.get(&format!("/v1/integrations/{agent_id}")).await;
    assert_eq!(missing.status, 404);
    let job = wait_job_final(&client, running, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    let folder = dir.path().join("data/packages").join(&agent_id);
    harness::wait_for(
        "the package folder to go",
        Duration::from_secs(60),
        || async { (!folder.exists()).then_some(()) },
    )
    .await;
}

/// A package that cannot run on the executor ends `failed` with the build error, is left out of
/// the actions and takes no jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_build_is_visible() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();

    // A shell-form ENTRYPOINT cannot be mapped to a command by the subprocess backend.
    let package = dir.path().join("shell-form");
    std::fs::create_dir_all(&package).expect("mkdir");
    std::fs::write(
        package.join("Dockerfile"),
        "FROM scratch\nENTRYPOINT /bin/agent\n",
    )
    .expect("write");
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[
                (
                    "manifest",
                    "application/json",
                    shell_manifest("Broken").to_string().into_bytes(),
                ),
                ("package", "application/zip", zip_folder(&package)),
            ],
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let agent_id = response.json()["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();

    let failed = harness::wait_for("the build to fail", Duration::from_secs(60), || async {
        let body = client
            .get(&format!("/v1/integrations/{agent_id}"))
            .await
            .json();
        (body["state"] == "failed").then_some(body)
    })
    .await;
    assert!(
        failed["build_error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()),
        "{failed}"
    );
    let actions = client.get("/v1/actions?section=canvas").await.json();
    assert_eq!(actions["actions"], json!([]));
    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status, 409, "{}", response.text());
    assert_eq!(response.json()["error"], "integration_failed");
}

/// Health checks run on the interval; an integration whose check fails is flagged in the
/// actions list with its last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_integration_is_flagged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = "executor = \"subprocess\"\n[health]\ninterval_secs = 1\n";
    let mut service = ServiceProcess::start(dir.path(), config, &[]);
    service.wait_ready().await;
    let client = service.client();
    let healthy = register_shell(&client, dir.path(), "Healthy", json!({})).await;
    let sick = register_shell(&client, dir.path(), "Sick", json!({ "FAIL_DESCRIBE": "1" })).await;

    // The periodic checks run again after the first one.
    let first = harness::wait_for("a first check", Duration::from_secs(30), || async {
        let body = client
            .get(&format!("/v1/integrations/{healthy}/health"))
            .await
            .json();
        body["health"]["checked_at"].as_str().map(str::to_owned)
    })
    .await;
    harness::wait_for("a later check", Duration::from_secs(30), || async {
        let body = client
            .get(&format!("/v1/integrations/{healthy}/health"))
            .await
            .json();
        body["health"]["checked_at"]
            .as_str()
            .filter(|checked| *checked != first)
            .map(str::to_owned)
    })
    .await;

    let response = client
        .request(
            "POST",
            &format!("/v1/integrations/{sick}/describe"),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let health = response.json();
    assert_eq!(health["health"]["healthy"], false, "{health}");

    let actions = client
        .get("/v1/actions?section=canvas&section_element=nodes")
        .await
        .json();
    let list = actions["actions"].as_array().expect("actions");
    let sick_action = list
        .iter()
        .find(|action| action["name"] == "Sick")
        .expect("the unhealthy integration is still listed");
    assert_eq!(sick_action["healthy"], false);
    let error = sick_action["health_error"].as_str().unwrap_or("");
    assert!(error.contains("exit code 3"), "{sick_action}");
    assert!(error.contains("describe fails on request"), "{sick_action}");
    let healthy_action = list
        .iter()
        .find(|action| action["name"] == "Healthy")
        .expect("the healthy integration is listed");
    assert_eq!(healthy_action["healthy"], true);
    assert_eq!(healthy_action["health_error"], Value::Null);
}

/// A client that does not finish its headers is disconnected after
/// `api.header_read_timeout_secs`, and connections past `api.max_connections` are closed at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_excess_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads until the server closes the connection. A reset counts as closed: the server may
    /// close a socket whose request it never read, and the kernel then resets it.
    async fn read_to_end(stream: &mut tokio::net::UnixStream) -> Vec<u8> {
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut received))
            .await
            .expect("the server closes the connection within 20 s");
        match read {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(error) => panic!("read from the connection failed: {error}"),
        }
        received
    }

    // Headers that never end.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!("{SUBPROCESS}[api]\nheader_read_timeout_secs = 1\n");
    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    service.wait_ready().await;
    let mut slow = tokio::net::UnixStream::connect(&service.socket)
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send partial headers");
    let received = read_to_end(&mut slow).await;
    assert!(
        !String::from_utf8_lossy(&received).contains("200 OK"),
        "the request was served: {}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(service.client().get("/healthz").await.status, 200);

    // Two idle connections fill the slots, so a third is closed without a response.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!("{SUBPROCESS}[api]\nmax_connections = 2\n");
    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    service.wait_ready().await;
    // Let the readiness probe's connection close, so that it holds no slot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _first = tokio::net::UnixStream::connect(&service.socket)
        .await
        .expect("connect");
    let _second = tokio::net::UnixStream::connect(&service.socket)
        .await
        .expect("connect");
    // Give the server the time to accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut third = tokio::net::UnixStream::connect(&service.socket)
        .await
        .expect("connect");
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let received = read_to_end(&mut third).await;
    assert!(
        received.is_empty(),
        "the third connection got a response: {}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        service.logs().contains("too many open connections"),
        "{}",
        service.logs()
    );

    drop(_first);
    drop(_second);
    harness::wait_for("the slots to free up", Duration::from_secs(20), || async {
        let response = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::spawn({
                let client = service.client();
                async move { client.get("/healthz").await.status }
            }),
        )
        .await;
        matches!(response, Ok(Ok(200))).then_some(())
    })
    .await;
}
