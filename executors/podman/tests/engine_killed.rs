//! Kills an engine process with SIGKILL and checks that its private podman service ends too:
//! the service runs with `PR_SET_PDEATHSIG`, since no destructor runs in a killed process.
//!
//! This binary runs without the libtest harness. Started plainly, it is the test. Started with
//! `AGENTRUN_PODMAN_TEST_ROLE=engine`, it is the engine: it starts an executor with a private
//! service, prints the service's pid and waits to be killed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentrun_podman::PodmanExecutor;

/// Environment variable that makes this binary play the engine.
const ROLE_VAR: &str = "AGENTRUN_PODMAN_TEST_ROLE";

/// Maximum time the engine role waits to be killed before it gives up and exits.
const ENGINE_LIFETIME: Duration = Duration::from_secs(300);

fn main() {
    if std::env::var(ROLE_VAR).as_deref() == Ok("engine") {
        play_engine();
        return;
    }
    if !common::podman_available("engine_killed") {
        return;
    }
    service_dies_with_killed_engine();
    println!("test service_dies_with_killed_engine ... ok");
}

/// Starts an executor with a private service, prints `service-pid <pid>` and sleeps.
fn play_engine() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let executor = runtime
        .block_on(PodmanExecutor::with_private_service(common::test_config()))
        .expect("the private podman service starts");
    let pid = executor.service_pid().expect("a private service runs");
    println!("service-pid {pid}");
    std::thread::sleep(ENGINE_LIFETIME);
}

fn service_dies_with_killed_engine() {
    let mut engine = Command::new(std::env::current_exe().expect("own path"))
        .env(ROLE_VAR, "engine")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the engine role starts");
    let stdout = engine.stdout.take().expect("stdout is piped");
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = line_tx.send(line);
    });
    let line = line_rx
        .recv_timeout(common::STEP_LIMIT)
        .expect("the engine prints its service pid in time");
    let pid: u32 = line
        .trim()
        .strip_prefix("service-pid ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("unexpected engine output {line:?}"));
    assert!(common::process_alive(pid), "service {pid} runs");

    engine.kill().expect("SIGKILL reaches the engine");
    engine.wait().expect("the engine is reaped");

    let killed = Instant::now();
    while common::process_alive(pid) && killed.elapsed() < common::STEP_LIMIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !common::process_alive(pid),
        "service {pid} outlived its engine by {} s",
        killed.elapsed().as_secs()
    );
}
