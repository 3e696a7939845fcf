//! Configuration sources of `agentrun serve`, checked through the binary's `--check-config`.

#[path = "common/service.rs"]
mod harness;

use std::path::Path;
use std::time::Duration;

use harness::ServiceProcess;

/// Runs `agentrun serve --config <dir>/explicit.toml --check-config` with `env` and returns
/// the exit code and the output.
async fn check_config(dir: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let explicit = dir.join("explicit.toml");
    let mut process = ServiceProcess::spawn(
        dir,
        &[
            "serve",
            "--config",
            &explicit.to_string_lossy(),
            "--check-config",
        ],
        env,
    );
    let status = process.wait_exit(Duration::from_secs(30)).await;
    (status.code(), process.logs())
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write config");
}

/// The user file overrides the defaults, `--config` the user file, and `AGENTRUN_*` variables
/// every file.
#[tokio::test]
async fn sources_override_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        &dir.path().join("xdg/agentrun/agentrun.toml"),
        "shutdown_grace_secs = 7\n[jobs]\nconcurrency = 2\nper_integration = 2\n",
    );
    write(
        &dir.path().join("explicit.toml"),
        "[jobs]\nconcurrency = 3\n",
    );

    let (code, output) = check_config(dir.path(), &[]).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("shutdown_grace_secs = 7"), "{output}");
    assert!(output.contains("per_integration = 2"), "{output}");
    assert!(output.contains("concurrency = 3"), "{output}");

    let (code, output) = check_config(dir.path(), &[("AGENTRUN_JOBS__CONCURRENCY", "4")]).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("concurrency = 4"), "{output}");
    assert!(output.contains("per_integration = 2"), "{output}");

    let (code, output) = check_config(
        dir.path(),
        &[("AGENTRUN_LISTEN__UNIX", "/tmp/agentrun-env-test.sock")],
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("unix = \"/tmp/agentrun-env-test.sock\""),
        "{output}"
    );
}

/// An unknown key stops start-up with a message naming the key and the file.
#[tokio::test]
async fn unknown_key_in_file_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        &dir.path().join("explicit.toml"),
        "[jobs]\nconcurency = 3\n",
    );
    let (code, output) = check_config(dir.path(), &[]).await;
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("concurency"), "{output}");
    assert!(output.contains("explicit.toml"), "{output}");
}

/// A bad value and an unknown key from the environment name the variable.
#[tokio::test]
async fn bad_env_values_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(&dir.path().join("explicit.toml"), "");

    let (code, output) = check_config(dir.path(), &[("AGENTRUN_JOBS__CONCURRENCY", "many")]).await;
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains(
            "AGENTRUN_JOBS__CONCURRENCY (jobs.concurrency): expected a non-negative integer, \
             found \"many\""
        ),
        "{output}"
    );

    let (code, output) = check_config(dir.path(), &[("AGENTRUN_JOBS__CONCURENCY", "1")]).await;
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("concurency"), "{output}");

    let (code, output) = check_config(dir.path(), &[("AGENTRUN_EXECUTOR", "lxc")]).await;
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("lxc"), "{output}");
}

/// A missing `--config` file, and a bad value at real start-up, both stop with status 2.
#[tokio::test]
async fn invalid_configuration_stops_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, output) = check_config(dir.path(), &[]).await;
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("not found"), "{output}");

    let mut service = ServiceProcess::start(
        dir.path(),
        "executor = \"subprocess\"\n[jobs]\nconcurrency = 0\n",
        &[],
    );
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{}", service.logs());
    assert!(
        service.logs().contains("jobs.concurrency"),
        "{}",
        service.logs()
    );
}

/// A missing secrets key fails `--check-config` and start-up with status 2, together with every
/// other problem, instead of passing the check and failing at start.
#[tokio::test]
async fn missing_key_file_fails_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        &dir.path().join("explicit.toml"),
        "[jobs]\nconcurrency = 0\n[secrets]\nkey_file = \"/nonexistent/agentrun.key\"\n",
    );
    let (code, output) = check_config(dir.path(), &[]).await;
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("secrets.key_file: reading /nonexistent/agentrun.key failed"),
        "{output}"
    );
    assert!(output.contains("jobs.concurrency: 0"), "{output}");

    let mut service = ServiceProcess::start(
        dir.path(),
        "executor = \"subprocess\"\n[secrets]\nkey_file = \"/nonexistent/agentrun.key\"\n",
        &[],
    );
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{}", service.logs());
    assert!(
        service.logs().contains("secrets.key_file"),
        "{}",
        service.logs()
    );
}

/// The shipped `config/agentrun.toml` passes the binary's own check.
#[tokio::test]
async fn shipped_file_passes_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shipped = harness::workspace_root().join("config/agentrun.toml");
    std::fs::copy(&shipped, dir.path().join("explicit.toml")).expect("copy shipped config");
    let (code, output) = check_config(dir.path(), &[]).await;
    assert_eq!(code, Some(0), "{output}");
}
