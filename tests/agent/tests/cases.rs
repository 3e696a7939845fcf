//! Each test agent case, run directly: the output shape that the conformance suite relies on.
//!
//! Cases that need an engine to stop them (`hang`, `fork`, `flood-stdout`) are exercised by the
//! executor tests instead.

#[path = "../../common/testagent.rs"]
mod testagent;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testagent::{describe_message, testagent_binary, work_message};

/// Deadline for one run of the agent.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);
const AGENT_ID: &str = "agent-under-test";

/// Runs the agent with `stdin` and optionally `TESTAGENT_CASE`, and returns its output.
fn run_agent(env_case: Option<&str>, stdin: &[u8]) -> Output {
    let mut command = Command::new(testagent_binary());
    command
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(case) = env_case {
        command.env("TESTAGENT_CASE", case);
    }
    let mut child = command.spawn().expect("starting the test agent failed");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // The agent may exit without reading, so a broken pipe is fine here.
    let _ = pipe.write_all(stdin);
    drop(pipe);

    let started = Instant::now();
    while child
        .try_wait()
        .expect("polling the agent failed")
        .is_none()
    {
        if started.elapsed() > PROCESS_TIMEOUT {
            let _ = child.kill();
            panic!("the test agent did not exit within {PROCESS_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collecting output failed")
}

/// Runs a work job with payload fields `message` and `case`.
fn run_case(case: &str, message: &str) -> Output {
    run_agent(
        None,
        &work_message(100, AGENT_ID, &[("message", message), ("case", case)]),
    )
}

fn stdout_text(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("the agent writes UTF-8")
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text:?}"))
}

/// Checks the fields every info reply has, for job 100.
fn assert_info(reply: &Value) {
    assert_eq!(reply["type"], "info");
    assert_eq!(reply["agent"], AGENT_ID);
    assert_eq!(reply["action"], "popup-message");
    assert!(
        reply["timestamp"].is_u64(),
        "timestamp: {}",
        reply["timestamp"]
    );
}

#[test]
fn echo_is_the_default() {
    let output = run_agent(None, &work_message(100, AGENT_ID, &[("message", "hi")]));

    assert!(output.status.success());
    let reply = parse(stdout_text(&output).trim_end());
    assert_info(&reply);
    assert_eq!(reply["job_id"], 100);
    assert_eq!(reply["payload"], json!({"message": "hi"}));
    assert_eq!(reply["return_code"], 0);
}

#[test]
fn describe_gets_heartbeat() {
    for case in ["echo", "logs", "pretty", "fail", "wrong-job-id"] {
        let output = run_agent(Some(case), &describe_message(5, AGENT_ID));
        assert!(output.status.success(), "case {case}: {}", output.status);
        let stdout = stdout_text(&output);
        let reply = stdout
            .lines()
            .find(|line| line.trim_start().starts_with('{'))
            .unwrap_or_else(|| panic!("case {case}: no reply in {stdout:?}"));
        let reply = if case == "pretty" {
            parse(&stdout)
        } else {
            parse(reply)
        };
        assert_eq!(reply, json!({"type": "heartbeat"}), "case {case}");
    }
}

#[test]
fn logs_surround_reply() {
    let output = run_case("logs", "hi");

    let stdout = stdout_text(&output);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "stdout: {stdout:?}");
    assert_eq!(lines[0], "testagent: starting");
    assert_eq!(lines[1], "testagent: handling job 100");
    assert_eq!(parse(lines[2])["payload"]["message"], "hi");
    assert_eq!(lines[3], "testagent: done");
}

#[test]
fn pretty_spans_lines() {
    let output = run_case("pretty", "hi");

    let stdout = stdout_text(&output);
    assert!(stdout.lines().count() > 5, "stdout: {stdout:?}");
    let reply = parse(&stdout);
    assert_info(&reply);
    assert_eq!(reply["payload"]["message"], "hi");
}

#[test]
fn returned_code_replaces_return_code() {
    let reply = parse(stdout_text(&run_case("returned-code", "hi")).trim_end());

    assert_eq!(reply["returned_code"], 0);
    assert!(reply.get("return_code").is_none(), "reply: {reply}");
}

#[test]
fn list_payload_is_name_value_pairs() {
    let reply = parse(stdout_text(&run_case("list-payload", "hi")).trim_end());

    assert_eq!(
        reply["payload"],
        json!([{"name": "message", "value": "hi"}])
    );
}

#[test]
fn wrong_job_id_is_one_higher() {
    let reply = parse(stdout_text(&run_case("wrong-job-id", "hi")).trim_end());

    assert_eq!(reply["job_id"], 101);
}

#[test]
fn fail_reports_return_code_one() {
    let output = run_case("fail", "hi");

    assert!(output.status.success());
    let reply = parse(stdout_text(&output).trim_end());
    assert_info(&reply);
    assert_eq!(reply["return_code"], 1);
    assert_eq!(
        reply["payload"]["message"],
        "testagent: the fail case reports failure"
    );
}

#[test]
fn crash_exits_three_without_reply() {
    let output = run_case("crash", "hi");

    assert_eq!(output.status.code(), Some(3));
    assert!(output.stdout.is_empty());
    assert_eq!(output.stderr, b"testagent: crashing on purpose\n");
}

#[test]
fn read_eof_from_payload_reads_rest() {
    // Extra bytes follow the message, and the reply counts every byte read.
    let mut stdin = work_message(100, AGENT_ID, &[("message", "hi"), ("case", "read-eof")]);
    stdin.extend_from_slice(b"\ntrailing data");
    let output = run_agent(None, &stdin);

    assert!(output.status.success());
    let reply = parse(stdout_text(&output).trim_end());
    assert_eq!(reply["payload"]["message"], "hi");
    assert_eq!(reply["payload"]["stdin_bytes"], stdin.len());
}

#[test]
fn read_eof_from_env_reads_all() {
    let mut stdin = work_message(100, AGENT_ID, &[("message", "hi")]);
    stdin.extend_from_slice(b"\ntrailing data");
    let output = run_agent(Some("read-eof"), &stdin);

    assert!(output.status.success());
    let reply = parse(stdout_text(&output).trim_end());
    assert_eq!(reply["payload"]["message"], "hi");
    assert_eq!(reply["payload"]["stdin_bytes"], stdin.len());
}

#[test]
fn no_stdin_replies_without_reading() {
    let output = run_agent(Some("no-stdin"), b"");

    assert!(output.status.success());
    let reply = parse(stdout_text(&output).trim_end());
    assert_eq!(reply["payload"]["message"], "no-stdin");
    assert!(reply.get("job_id").is_none(), "reply: {reply}");
}

#[test]
fn big_reports_length_and_hash() {
    let message = "ab".repeat(1000);
    let reply = parse(stdout_text(&run_case("big", &message)).trim_end());

    assert_eq!(reply["payload"]["length"], 2000);
    assert_eq!(
        reply["payload"]["fnv1a64"],
        testagent::fnv1a64_hex(message.as_bytes())
    );
}

#[test]
fn env_lists_environment() {
    let output = run_case("env", "hi");

    let reply = parse(stdout_text(&output).trim_end());
    let env = parse(reply["payload"]["message"].as_str().expect("text message"));
    // The agent runs with an empty environment here.
    assert_eq!(env, json!({}));
}

#[test]
fn unicode_sets_label() {
    let reply = parse(stdout_text(&run_case("unicode", "東京")).trim_end());

    assert_eq!(reply["payload"]["message"], "東京");
    assert_eq!(reply["payload"]["url_label"], testagent::UNICODE_LABEL);
}

#[test]
fn unknown_case_exits_two() {
    let output = run_case("no-such-case", "hi");

    assert_eq!(output.status.code(), Some(2));
    assert_eq!(output.stderr, b"testagent: unknown case `no-such-case`\n");
}

#[test]
fn invalid_stdin_exits_two() {
    let output = run_agent(None, b"not json");

    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .starts_with("testagent: stdin is not a JSON message"),
        "stderr: {:?}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn empty_stdin_exits_two() {
    let output = run_agent(None, b"");

    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        output.stderr,
        b"testagent: stdin ended before a JSON message\n"
    );
}

#[test]
fn no_stdin_from_payload_is_rejected() {
    let output = run_case("no-stdin", "hi");

    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        output.stderr,
        b"testagent: case `no-stdin` must be chosen with TESTAGENT_CASE\n"
    );
}
