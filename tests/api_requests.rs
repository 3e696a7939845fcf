//! Request handling of the HTTP API on the subprocess executor: waiting for jobs, duplicate
//! keys, filters and authentication. The service runs as a child process.

#[path = "common/service.rs"]
mod harness;

use harness::{
    register_shell, shell_manifest, shell_package, wait_job_running, Client, ServiceProcess,
};
use serde_json::{json, Value};

const SUBPROCESS: &str = "executor = \"subprocess\"\n[health]\ninterval_secs = 0\n";

/// A `?wait=true` request whose wait runs out returns the job as it is then, not as it was
/// when it was queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_returns_current_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!("{SUBPROCESS}[jobs]\nwait_timeout_secs = 2\n");
    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    service.wait_ready().await;
    let client = service.client();
    let agent_id = register_shell(&client, dir.path(), "Sleeper", Value::Null).await;

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

/// A key given twice in a job's `values` or in an env patch gets 422 naming the key, instead
/// of the last value silently winning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_get_422() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();
    let agent_id = register_shell(&client, dir.path(), "Twice", Value::Null).await;

    let body = br#"{"values": {"sleep": "1", "sleep": "2"}}"#.to_vec();
    let response = client
        .request(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs"),
            Some("application/json"),
            body,
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    let error = response.json();
    assert_eq!(error["error"], "invalid_values", "{error}");
    assert_eq!(error["errors"][0]["field"], "sleep", "{error}");
    assert_eq!(error["errors"][0]["rule"], "duplicate", "{error}");

    let body = br#"{"TOKEN": "first-value", "TOKEN": "second-value"}"#.to_vec();
    let response = client
        .request(
            "PATCH",
            &format!("/v1/integrations/{agent_id}/env"),
            Some("application/merge-patch+json"),
            body,
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    let error = response.json();
    assert_eq!(error["error"], "invalid_env", "{error}");
    assert_eq!(error["errors"][0]["field"], "TOKEN", "{error}");
    assert_eq!(error["errors"][0]["rule"], "duplicate", "{error}");
    assert!(
        !response.text().contains("-value"),
        "the error echoes an env value: {}",
        response.text()
    );

    let shown = client.get(&format!("/v1/integrations/{agent_id}")).await;
    assert_eq!(shown.json()["env"], json!([]), "{}", shown.text());
}

/// `GET /v1/jobs?integration=` with an agentID or name that no integration or job has gets
/// 404; a known name, and a deleted integration with jobs, still list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_filter_unknown_integration_is_404() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();

    for filter in ["nosuch", "6f0f4a2e-1d5b-4c4e-9a43-5f2b8b8f0c11"] {
        let response = client.get(&format!("/v1/jobs?integration={filter}")).await;
        assert_eq!(response.status, 404, "{filter}: {}", response.text());
        let error = response.json();
        assert_eq!(error["error"], "not_found", "{error}");
        assert!(
            error["message"].as_str().unwrap_or("").contains(filter),
            "{error}"
        );
    }

    let agent_id = register_shell(&client, dir.path(), "Listed", Value::Null).await;
    let response = client.get("/v1/jobs?integration=Listed").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["jobs"], json!([]));

    let response = client
        .json(
            "POST",
            &format!("/v1/integrations/{agent_id}/jobs?wait=true"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let deleted = client.delete(&format!("/v1/integrations/{agent_id}")).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let response = client
        .get(&format!("/v1/jobs?integration={agent_id}"))
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json()["jobs"].as_array().map(Vec::len),
        Some(1),
        "{}",
        response.text()
    );
}

/// The `Authorization` scheme is matched regardless of case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_ignores_case() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port();
    let token = format!("token-{}", uuid::Uuid::new_v4().simple());
    let config = format!("{SUBPROCESS}[listen]\ntcp = \"127.0.0.1:{port}\"\ntoken = \"{token}\"\n");
    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    service.wait_ready().await;
    let tcp = Client::new(harness::Address::Tcp(format!("127.0.0.1:{port}")));

    for scheme in ["Bearer", "bearer", "BEARER"] {
        let mut client = tcp.clone();
        client
            .headers
            .push(("authorization".to_owned(), format!("{scheme} {token}")));
        let response = client.get("/v1/integrations").await;
        assert_eq!(response.status, 200, "{scheme}: {}", response.text());
    }
    let mut client = tcp.clone();
    client
        .headers
        .push(("authorization".to_owned(), format!("Basic {token}")));
    let response = client.get("/v1/integrations").await;
    assert_eq!(response.status, 401, "{}", response.text());
}

/// Errors about an uploaded manifest or package name files relative to the package, never the
/// folder the service unpacked it into, and never quote a manifest's `env` value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_errors_name_package_paths() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(dir.path(), SUBPROCESS, &[]);
    service.wait_ready().await;
    let client = service.client();
    let data_dir = dir.path().join("data").display().to_string();
    let zip = shell_package(&dir.path().join("package"));

    // TOML sent as the `manifest` part gets a hint to send JSON.
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[
                (
                    "manifest",
                    "application/json",
                    b"name = \"Slack\"\n".to_vec(),
                ),
                ("package", "application/zip", zip.clone()),
            ],
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    let body = response.json();
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("invalid JSON in the `manifest` part at line 1"),
        "{body}"
    );
    assert!(
        message.contains("send TOML as integration.toml inside the package"),
        "{body}"
    );

    // An `env` of the wrong type is a secret in the wrong shape: it is not echoed.
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[
                (
                    "manifest",
                    "application/json",
                    br#"{"name": "Slack", "env": "HIDDEN-2"}"#.to_vec(),
                ),
                ("package", "application/zip", zip.clone()),
            ],
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    assert!(!response.text().contains("HIDDEN-2"), "{}", response.text());
    assert_eq!(response.json()["errors"][0]["field"], "env");

    // A broken integration.toml in the package is named relative to the package.
    let package = dir.path().join("toml-package");
    shell_package(&package);
    std::fs::write(package.join("integration.toml"), "name = \n").expect("write manifest");
    let response = client
        .multipart(
            "POST",
            "/v1/integrations",
            &[("package", "application/zip", harness::zip_folder(&package))],
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    let message = response.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with("invalid TOML in integration.toml at line 1"),
        "{message}"
    );
    assert!(!response.text().contains(&data_dir), "{}", response.text());

    // A package that fails to build stores an error without the service's paths.
    let package = dir.path().join("shell-form");
    std::fs::create_dir_all(&package).expect("mkdir");
    std::fs::write(
        package.join("Dockerfile"),
        "FROM scratch\nENTRYPOINT /bin/agent\n",
    )
    .expect("write Dockerfile");
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
                ("package", "application/zip", harness::zip_folder(&package)),
            ],
        )
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
    let agent_id = response.json()["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    let failed = harness::wait_for(
        "the build to fail",
        std::time::Duration::from_secs(60),
        || async {
            let body = client
                .get(&format!("/v1/integrations/{agent_id}"))
                .await
                .json();
            (body["state"] == "failed").then_some(body)
        },
    )
    .await;
    let build_error = failed["build_error"].as_str().unwrap_or_default();
    assert!(build_error.starts_with("invalid package: "), "{failed}");
    assert!(!build_error.contains(&data_dir), "{failed}");
}

/// A job whose work message would pass `[jobs] max_message_bytes` gets 422 naming the limit
/// and the size, and is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_limit_gets_422() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!("{SUBPROCESS}[jobs]\nmax_message_bytes = 1000\n");
    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    service.wait_ready().await;
    let client = service.client();
    let agent_id = register_shell(&client, dir.path(), "Bounded", Value::Null).await;
    let jobs = format!("/v1/integrations/{agent_id}/jobs");

    let response = client
        .json(
            "POST",
            &jobs,
            &json!({ "values": { "sleep": "1".repeat(2000) } }),
        )
        .await;
    assert_eq!(response.status, 422, "{}", response.text());
    let body = response.json();
    assert_eq!(body["error"], "message_too_large", "{body}");
    assert_eq!(
        body["message"],
        "the work message is at least 2005 bytes, more than the limit of 1000 bytes \
         (max_message_bytes); shorten the field values or the context",
        "{body}"
    );
    let listed = client
        .get(&format!("/v1/jobs?integration={agent_id}"))
        .await
        .json();
    assert_eq!(listed["jobs"], json!([]), "{listed}");

    let response = client
        .json("POST", &jobs, &json!({ "values": { "sleep": "0" } }))
        .await;
    assert_eq!(response.status, 202, "{}", response.text());
}
