//! The private service against an engine environment that points `podman` at a remote service.
//!
//! This binary contains one test, because it sets process-wide environment variables that the
//! other tests must not see.

mod common;

use agentrun_podman::PodmanExecutor;
use common::*;

/// `CONTAINER_HOST` naming a socket that does not respond, and `CONTAINER_CONNECTION` naming a
/// connection that does not exist, must not reach the private service: with either one `podman`
/// acts as a remote client and `system service` exits at once.
#[tokio::test]
async fn private_service_ignores_remote_client_env() {
    require_podman!("private_service_ignores_remote_client_env");
    let dir = tempfile::tempdir().expect("temp dir");
    let missing_socket = dir.path().join("nosock");
    std::env::set_var(
        "CONTAINER_HOST",
        format!("unix://{}", missing_socket.display()),
    );
    std::env::set_var("CONTAINER_CONNECTION", "agentrun-test-no-such-connection");
    let config = test_config();
    let instance = config.instance.clone();

    let executor = within("connect", PodmanExecutor::connect(config))
        .await
        .expect("the engine falls back to a private service");
    assert!(
        executor.service_pid().is_some(),
        "no private service runs; socket {}",
        executor.socket().display()
    );
    let package = script_package(dir.path(), "RemoteEnv", "cat\n");
    let prepared = prepare(&executor, &package).await;
    let outcome = run(
        &executor,
        &prepared,
        job(31, b"through the private service"),
    )
    .await;

    assert_eq!(outcome.stdout, b"through the private service");
    assert_no_containers(&instance).await;
}
