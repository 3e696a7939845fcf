//! The test agent is static and runs both as a plain process and in a `FROM scratch` image.

#[path = "../../common/testagent.rs"]
mod testagent;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testagent::{elf_interpreter, testagent_binary, work_message, write_testagent_package};

/// Socket of the Docker daemon that the test machine's setup script starts.
const CI_DOCKER_HOST: &str = "unix:///run/agentrun-ci/docker.sock";
/// Deadline for any one process a test starts.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits for `child` with a deadline, killing it when the deadline passes.
fn wait_with_deadline(mut child: Child) -> Output {
    let started = Instant::now();
    loop {
        match child.try_wait().expect("polling the child failed") {
            Some(_) => return child.wait_with_output().expect("collecting output failed"),
            None if started.elapsed() > PROCESS_TIMEOUT => {
                let _ = child.kill();
                panic!("process did not finish within {PROCESS_TIMEOUT:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs `command` with `stdin` as its input and returns its output.
fn run_with_input(command: &mut Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the process failed");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    pipe.write_all(stdin).expect("writing stdin failed");
    drop(pipe);
    wait_with_deadline(child)
}

/// Parses the last stdout line as the reply.
fn reply(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|error| {
        panic!(
            "stdout is not a JSON reply ({error}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Returns the Docker daemon address to use, when a daemon responds there.
fn docker_host() -> Option<String> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| CI_DOCKER_HOST.to_owned());
    let reachable = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .env("DOCKER_HOST", &host)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    reachable.then_some(host)
}

/// Builds `context` as `tag`, runs the image with one work message and removes the image.
fn run_in_docker(host: &str, context: &Path, tag: &str) -> Output {
    let docker = |args: &[&str]| {
        let mut command = Command::new("docker");
        command
            .args(args)
            .env("DOCKER_HOST", host)
            .env("DOCKER_BUILDKIT", "0");
        command
    };
    let context = context.to_str().expect("temporary paths are UTF-8");

    let build = wait_with_deadline(
        docker(&["build", "-q", "-t", tag, context])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting docker build failed"),
    );
    assert!(
        build.status.success(),
        "docker build failed: {}",
        String::from_utf8_lossy(&build.stderr)
    );

    let message = work_message(7, "agent-7", &[("message", "hello from scratch")]);
    let output = run_with_input(
        &mut docker(&["run", "-i", "--rm", "--network", "none", tag]),
        &message,
    );
    let _ = wait_with_deadline(
        docker(&["rmi", "-f", tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker rmi failed"),
    );
    output
}

/// The built binary has no ELF interpreter, so it needs no dynamic loader.
#[test]
fn testagent_binary_is_static() {
    let bytes = std::fs::read(testagent_binary()).expect("reading the binary failed");
    assert_eq!(elf_interpreter(&bytes), Ok(None));
}

/// A dynamically linked program (the test process itself) is recognised as such.
#[test]
fn elf_interpreter_finds_dynamic_loader() {
    let own = std::fs::read(std::env::current_exe().expect("own path")).expect("read own binary");
    let interpreter = elf_interpreter(&own).expect("the test binary is ELF");
    assert!(
        interpreter.is_some_and(|path| path.contains("ld-linux")),
        "the test binary should name a dynamic loader"
    );
    assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
}

/// Run directly, the agent echoes the message with the same job id and agent id.
#[test]
fn testagent_echoes_as_subprocess() {
    let message = work_message(41, "agent-41", &[("message", "hi ✓")]);
    let output = run_with_input(&mut Command::new(testagent_binary()), &message);

    assert!(output.status.success(), "exit status {}", output.status);
    let reply = reply(&output);
    assert_eq!(reply["type"], "info");
    assert_eq!(reply["job_id"], 41);
    assert_eq!(reply["agent"], "agent-41");
    assert_eq!(reply["payload"]["message"], "hi ✓");
    assert_eq!(reply["return_code"], 0);
}

/// The agent runs in an image that contains nothing but the binary (`FROM scratch`), and in
/// the busybox package that the backends share.
#[test]
fn testagent_runs_in_docker_images() {
    let Some(host) = docker_host() else {
        let reason = format!("no Docker daemon answers at DOCKER_HOST or {CI_DOCKER_HOST}");
        assert!(
            !required("docker"),
            "{reason}, and AGENTRUN_REQUIRE_RUNTIMES requires docker"
        );
        eprintln!("skipped: {reason}");
        return;
    };
    let tag_suffix = std::process::id();

    // FROM scratch: only the binary.
    let scratch = tempfile::tempdir().expect("temporary folder");
    std::fs::copy(testagent_binary(), scratch.path().join("testagent")).expect("copy binary");
    std::fs::write(
        scratch.path().join("Dockerfile"),
        "FROM scratch\nCOPY testagent /testagent\nENTRYPOINT [\"/testagent\"]\n",
    )
    .expect("write Dockerfile");
    let output = run_in_docker(
        &host,
        scratch.path(),
        &format!("agentrun-testagent-scratch:{tag_suffix}"),
    );
    assert!(
        output.status.success(),
        "docker run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(reply(&output)["payload"]["message"], "hello from scratch");

    // The shared package: FROM agentrun-busybox.
    let package = tempfile::tempdir().expect("temporary folder");
    write_testagent_package(package.path());
    let output = run_in_docker(
        &host,
        package.path(),
        &format!("agentrun-testagent-package:{tag_suffix}"),
    );
    assert!(
        output.status.success(),
        "docker run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(reply(&output)["job_id"], 7);
}

/// Returns true when `AGENTRUN_REQUIRE_RUNTIMES` (comma-separated) lists `runtime`, so that a
/// test that would skip for want of it fails instead, as in CI.
fn required(runtime: &str) -> bool {
    std::env::var("AGENTRUN_REQUIRE_RUNTIMES").is_ok_and(|list| {
        list.split(',')
            .any(|entry| entry.trim().eq_ignore_ascii_case(runtime))
    })
}
