//! Kills an engine process with SIGKILL and checks that its private podman service ends too:
//! the service runs with `PR_SET_PDEATHSIG`, since no destructor runs in a killed process. The
//! service's private directory stays until the next executor starts, which removes it.
//!
//! This binary runs without the libtest harness. Started plainly, it is the test. Started with
//! `AGENTRUN_PODMAN_TEST_ROLE=engine`, it is the engine: it starts an executor with a private
//! service, prints the service's pid and waits to be killed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
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

/// Starts an executor with a private service, prints `service <pid> <socket>` and sleeps.
fn play_engine() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let executor = runtime
        .block_on(PodmanExecutor::with_private_service(common::test_config()))
        .expect("the private podman service starts");
    let pid = executor.service_pid().expect("a private service runs");
    println!("service {pid} {}", executor.socket().display());
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
    let (pid, socket) = line
        .trim()
        .strip_prefix("service ")
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(pid, socket)| Some((pid.parse::<u32>().ok()?, PathBuf::from(socket))))
        .unwrap_or_else(|| panic!("unexpected engine output {line:?}"));
    let dir = socket
        .parent()
        .expect("the socket is in a directory")
        .to_path_buf();
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
    assert!(
        dir.exists(),
        "{} is there until an executor sweeps",
        dir.display()
    );

    // The next executor removes the directory that the killed engine left behind.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let next = runtime
        .block_on(async {
            tokio::time::timeout(
                common::STEP_LIMIT,
                PodmanExecutor::with_private_service(common::test_config()),
            )
            .await
        })
        .expect("the next executor starts in time")
        .expect("the next private podman service starts");
    // Another engine on the machine may be sweeping the same directory at this moment: its
    // sweep holds the lock, so this one skips the directory and the other removes it.
    let swept = Instant::now();
    while dir.exists() && swept.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !dir.exists(),
        "{} is left after the next executor started",
        dir.display()
    );
    drop(next);
}
