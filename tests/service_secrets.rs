//! Where the service takes the key that encrypts env values from.

#[path = "common/service.rs"]
mod harness;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use harness::ServiceProcess;

const CONFIG: &str = "executor = \"subprocess\"\n[health]\ninterval_secs = 0\n";

/// Without a configured key the service generates one (mode 0600) and logs how to move it.
/// A credential with another key is rejected, and one with the same key is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_sources_and_mismatch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_path = dir.path().join("data/secrets.key");

    // First start: a generated key.
    let mut service = ServiceProcess::start(dir.path(), CONFIG, &[]);
    service.wait_ready().await;
    let mode = std::fs::metadata(&key_path)
        .expect("the key file was generated")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let logs = service.logs();
    assert!(logs.contains("generated a new secrets key"), "{logs}");
    assert!(logs.contains(&key_path.display().to_string()), "{logs}");
    assert!(logs.contains("systemd-creds encrypt"), "{logs}");
    service.signal(libc::SIGTERM);
    service.wait_exit(Duration::from_secs(30)).await;

    // A credential with another key does not open the existing database.
    let credentials = dir.path().join("credentials");
    std::fs::create_dir_all(&credentials).expect("mkdir");
    std::fs::write(credentials.join("agentrun-key"), "ab".repeat(32)).expect("write key");
    let credentials_env = credentials.display().to_string();
    let mut service = ServiceProcess::start(
        dir.path(),
        CONFIG,
        &[("CREDENTIALS_DIRECTORY", credentials_env.as_str())],
    );
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(4), "{}", service.logs());
    assert!(
        service.logs().contains("does not match"),
        "{}",
        service.logs()
    );

    // The same key as a credential works, and the generated file is not needed.
    std::fs::copy(&key_path, credentials.join("agentrun-key")).expect("copy key");
    std::fs::remove_file(&key_path).expect("remove the generated key");
    let mut service = ServiceProcess::start(
        dir.path(),
        CONFIG,
        &[("CREDENTIALS_DIRECTORY", credentials_env.as_str())],
    );
    service.wait_ready().await;
    assert!(
        service
            .logs()
            .contains("secrets key read from the systemd credential"),
        "{}",
        service.logs()
    );
    assert!(!key_path.exists(), "a new key was generated");
}

/// A key file of the wrong size is a configuration error: start-up stops with status 2 and a
/// message naming the key and the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_key_file_stops_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("short.key");
    std::fs::write(&key_file, "too short").expect("write key");
    let config = format!(
        "{CONFIG}[secrets]\nkey_file = {:?}\n",
        key_file.display().to_string()
    );
    let mut service = ServiceProcess::start(dir.path(), &config, &[]);
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{}", service.logs());
    let logs = service.logs();
    assert!(logs.contains("secrets.key_file"), "{logs}");
    assert!(logs.contains("short.key"), "{logs}");
    assert!(logs.contains("64 hex digits"), "{logs}");
}
