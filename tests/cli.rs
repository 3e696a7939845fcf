//! End-to-end tests of the `agentrun` binary: output, exit statuses, the examples against a
//! local webhook, zips, and the Docker and Podman backends through the command line.
//!
//! Exit statuses: 0 success, 1 the agent reported failure, 2 invalid input, 3 no valid reply,
//! 4 executor unavailable.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use agentrun::backends::ExecutorKind;
use serde_json::{json, Value};
use zip::write::SimpleFileOptions;
use zip::ZipWriter;

use common::process::process_alive;
use common::runtimes::runtime_available;
use common::testagent::write_testagent_package;
use common::webhook::Webhook;

/// Limit on one run of the binary. A cold image build on a busy machine takes a while.
const CLI_TIMEOUT: Duration = Duration::from_secs(600);
/// A message with quotes, backslashes, newlines and non-ASCII text, which must reach the
/// webhook as the same text inside valid JSON.
const TRICKY_MESSAGE: &str = "Report \"Q3\" by O'Brien:\n\tpath C:\\temp\\x\nGrüße, 世界 ✓ 🚀";

// ---- Subprocess: output and the examples -------------------------------------------------------

/// Asserts that a run whose output stream was closed ended with `code` and without the panic
/// that `println!` raises on a broken pipe.
#[track_caller]
fn assert_quiet_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.code,
        Some(code),
        "{what}: unexpected exit status\nstdout:\n{}\nstderr:\n{}",
        output.stdout,
        output.stderr
    );
    assert!(
        !output.stderr.contains("panicked") && !output.stderr.contains("Broken pipe"),
        "{what}: stderr:\n{}",
        output.stderr
    );
}

/// Every command that prints results ends normally when its reader has closed stdout, as
/// `agentrun check pkg | head -1` does.
#[test]
fn closed_stdout_exits_quietly() {
    let echo = example("echo");
    let cases: [(&[&str], i32); 10] = [
        (&["check"], 0),
        (&["check", "--json"], 0),
        (&["run", "--set", "message=hi"], 0),
        (&["run", "--json", "--set", "message=hi"], 0),
        (&["describe"], 0),
        (&["describe", "--json"], 0),
        (&["build"], 0),
        (&["build", "--json"], 0),
        (&["--help"], 0),
        (&["--version"], 0),
    ];
    for (args, code) in cases {
        let mut command = agentrun(args).closed_stdout();
        if !args[0].starts_with("--") {
            command = command.arg(&echo);
        }
        let output = command.run();
        assert_quiet_exit(&output, code, &args.join(" "));
    }
}

/// Errors and warnings on a closed stderr do not turn an invalid package into a panic.
#[test]
fn closed_stderr_keeps_exit_status() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = bad_package(dir.path());

    let output = agentrun(&["check"]).arg(&package).closed_stderr().run();
    assert_eq!(output.code, Some(2), "stdout:\n{}", output.stdout);

    let output = agentrun(&["run"])
        .arg(example("echo"))
        .closed_stderr()
        .run();
    assert_eq!(output.code, Some(0), "stdout:\n{}", output.stdout);
    assert_eq!(output.stdout, "Hello from \n");
}

/// `run examples/echo` prints the popup message, with the context filled into the prefill.
#[test]
fn run_echo_prints_reply() {
    let output = agentrun(&["run"])
        .arg(example("echo"))
        .args(["--context", "user-name=alice@example.com"])
        .run();

    output.assert_exit(0);
    assert_eq!(output.stdout, "Hello from alice@example.com\n");
    assert_eq!(output.stderr, "");
}

/// `run --json` prints one object with every documented field.
#[test]
fn run_echo_json_has_every_field() {
    let output = agentrun(&["run", "--json"])
        .arg(example("echo"))
        .args(["--set", "message=hi there"])
        .run();

    output.assert_exit(0);
    let result = output.stdout_json();
    for field in [
        "job_id",
        "status",
        "return_code",
        "exit_code",
        "message",
        "url",
        "url_label",
        "duration_ms",
        "reply",
    ] {
        assert!(
            result.get(field).is_some(),
            "field {field} missing: {result}"
        );
    }
    assert!(result["job_id"].is_u64(), "job_id: {}", result["job_id"]);
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["return_code"], 0);
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["message"], "hi there");
    assert_eq!(result["url"], Value::Null);
    assert_eq!(result["url_label"], Value::Null);
    assert!(result["duration_ms"].is_u64(), "{}", result["duration_ms"]);
    assert_eq!(result["reply"]["type"], "info");
    assert_eq!(result["reply"]["job_id"], result["job_id"]);
    assert_eq!(result["reply"]["payload"]["message"], "hi there");
    assert_eq!(result["error"], Value::Null);
}

/// A keyword without a context value becomes empty, with a warning on stderr.
#[test]
fn run_echo_warns_missing_keyword() {
    let output = agentrun(&["run"]).arg(example("echo")).run();

    output.assert_exit(0);
    assert_eq!(output.stdout, "Hello from \n");
    assert_contains(
        &output.stderr,
        "warning: field \"message\": SIFT-USER-NAME has no value",
    );
}

/// A `selected-node` given as JSON fills the node id, display name and type keywords.
#[test]
fn run_selected_node_fills_keywords() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let manifest = "name = \"Echo\"\n\n\
                    [[fields]]\n\
                    name = \"message\"\n\
                    value = \"SIFT-SELECTED-NODE-TYPE SIFT-SELECTED-NODE-ID (SIFT-SELECTED-NODE-DISPLAY-NAME)\"\n";
    let package = echo_with_manifest(dir.path(), manifest);
    let output = agentrun(&["run"])
        .arg(&package)
        .args([
            "--context",
            r#"selected-node={"id": 7, "displayName": "Host A", "type": "ip"}"#,
        ])
        .run();

    output.assert_exit(0);
    assert_eq!(output.stdout, "ip 7 (Host A)\n");
    assert_eq!(output.stderr, "");
}

/// A prefill that repeats a context value past the 16 MiB message limit exits 2 before the agent
/// runs, naming the limit.
#[test]
fn run_message_over_limit_exits_2() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let manifest = format!(
        "name = \"Echo\"\n\n[[fields]]\nname = \"message\"\nvalue = \"{}\"\n",
        "SIFT-SELECTED-NODE-ID".repeat(2000)
    );
    let package = echo_with_manifest(dir.path(), &manifest);
    let output = agentrun(&["run"])
        .arg(&package)
        .arg("--context")
        .arg(format!("selected-node-id={}", "x".repeat(10_000)))
        .run();

    output.assert_exit(2);
    assert_eq!(output.stdout, "");
    assert!(
        output
            .stderr
            .contains("more than the limit of 16777216 bytes (max_message_bytes)"),
        "{}",
        output.stderr
    );
}

/// An `--env` name the manifest's `[env]` does not declare gets a warning on stderr and in the
/// `--json` result, with the same fields as a keyword warning; the job still runs.
#[test]
fn run_warns_undeclared_env() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let manifest = "name = \"Echo\"\n\n\
                    [[fields]]\n\
                    name = \"message\"\n\
                    value = \"hi SIFT-USER-NAME\"\n\n\
                    [env]\n\
                    TICKET_TOKEN = \"\"\n";
    let package = echo_with_manifest(dir.path(), manifest);
    let output = agentrun(&["run", "--json"])
        .arg(&package)
        .args([
            "--env",
            "TICKET_TOKN=secret-value",
            "--env",
            "TICKET_TOKEN=t",
        ])
        .run();

    output.assert_exit(0);
    let message = "env variable TICKET_TOKN is not declared in the manifest's [env], so the agent \
                   may ignore it; did you mean TICKET_TOKEN?";
    assert_contains(&output.stderr, &format!("warning: {message}"));
    assert!(
        !output.stderr.contains("secret-value"),
        "env value on stderr: {}",
        output.stderr
    );
    let result = output.stdout_json();
    assert_eq!(
        result["warnings"],
        json!([
            {
                "kind": "missing_keyword",
                "field": "message",
                "keyword": "SIFT-USER-NAME",
                "variable": null,
                "message": "field \"message\": SIFT-USER-NAME has no value in the context and \
                            was replaced by an empty string",
            },
            {
                "kind": "undeclared_env",
                "field": null,
                "keyword": null,
                "variable": "TICKET_TOKN",
                "message": message,
            },
        ])
    );

    // `describe` warns the same way.
    let output = agentrun(&["describe"])
        .arg(&package)
        .args(["--env", "TICKET_TOKN=secret-value"])
        .run();
    output.assert_exit(0);
    assert_contains(&output.stderr, &format!("warning: {message}"));
}

/// A timeout outside 1 to 86400 seconds is rejected, as the manifest and the service reject it.
#[test]
fn timeout_out_of_range_exits_2() {
    for timeout in ["0.5", "86401"] {
        let output = agentrun(&["run"])
            .arg(example("echo"))
            .args(["--timeout", timeout])
            .run();

        output.assert_exit(2);
        assert_contains(
            &output.stderr,
            &format!("invalid timeout \"{timeout}\": expected 1 to 86400 seconds"),
        );
    }
}

/// `describe` on the subprocess executor reports a heartbeat.
#[test]
fn describe_echo_healthy() {
    let output = agentrun(&["describe"]).arg(example("echo")).run();

    output.assert_exit(0);
    assert_contains(&output.stdout, "Echo is healthy: heartbeat in ");
}

/// `--network` cannot apply to a subprocess, so the CLI warns instead of ignoring it.
#[test]
fn network_with_subprocess_warns() {
    let output = agentrun(&["describe", "--network", "none"])
        .arg(example("echo"))
        .run();

    output.assert_exit(0);
    assert_contains(
        &output.stderr,
        "warning: --network none has no effect on the subprocess executor",
    );
    assert_contains(&output.stderr, "-x docker or -x podman");
    assert_contains(&output.stdout, "Echo is healthy");
}

/// `check` of a zip shows the command with package-relative paths, since the folder it was
/// unpacked into is removed when `check` ends.
#[test]
fn check_zip_shows_relative_command() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut entries = Vec::new();
    for name in ["Dockerfile", "agent.py", "integration.toml"] {
        let content = fs::read(example("echo").join(name)).expect("reading the echo example");
        entries.push(ZipEntry::File(format!("echo/{name}"), content));
    }
    let archive = write_zip(&dir.path().join("echo.zip"), &entries);
    let unpack_dir = empty_dir(&dir.path().join("tmp"));

    let output = agentrun(&["check"])
        .arg(&archive)
        .env("TMPDIR", &unpack_dir)
        .run();
    output.assert_exit(0);
    let command_line = output
        .stdout
        .lines()
        .find(|line| line.starts_with("  command:"))
        .unwrap_or_else(|| panic!("no command line in:\n{}", output.stdout));
    assert!(
        command_line.ends_with(" ./agent.py"),
        "command line: {command_line}"
    );
    assert!(!command_line.contains("agentrun-package"), "{command_line}");

    let output = agentrun(&["check", "--json"])
        .arg(&archive)
        .env("TMPDIR", &unpack_dir)
        .run();
    output.assert_exit(0);
    let argv = &output.stdout_json()["subprocess_command"];
    assert_eq!(argv[1], "./agent.py", "subprocess_command: {argv}");
    assert_empty_dir(&unpack_dir);
}

/// An agent that replies twice and then exits with a failure gets its last reply used, and
/// both problems reported as warnings: on stderr, and in the `--json` result.
#[test]
fn run_warns_about_agent_misbehaviour() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = dir.path().join("twice");
    fs::create_dir_all(&package).expect("creating the package folder");
    fs::write(
        package.join("Dockerfile"),
        "FROM agentrun-busybox:latest\nCOPY agent.sh /agent.sh\nENTRYPOINT [\"/bin/sh\", \"/agent.sh\"]\n",
    )
    .expect("writing the Dockerfile");
    fs::write(
        package.join("agent.sh"),
        "cat >/dev/null\n\
         echo '{\"type\":\"info\",\"payload\":{\"message\":\"first\"}}'\n\
         echo '{\"type\":\"info\",\"payload\":{\"message\":\"second\"}}'\n\
         exit 3\n",
    )
    .expect("writing the agent");
    let two_replies = "warning: the agent wrote 2 \"info\" replies and only the last one was used";
    let exit_failure = "warning: the agent exited with exit code 3 after a valid reply";

    let output = agentrun(&["run"]).arg(&package).run();
    output.assert_exit(0);
    assert_eq!(output.stdout, "second\n");
    assert_contains(&output.stderr, two_replies);
    assert_contains(&output.stderr, exit_failure);
    assert_eq!(
        output.stderr.matches("the agent wrote 2").count(),
        1,
        "the warning is printed once:\n{}",
        output.stderr
    );

    let output = agentrun(&["run", "--json"]).arg(&package).run();
    output.assert_exit(0);
    let result = output.stdout_json();
    let warnings = result["warnings"].as_array().expect("warnings is a list");
    assert_eq!(warnings.len(), 2, "warnings: {warnings:?}");
    assert_eq!(result["exit_code"], 3);
    assert_eq!(result["status"], "succeeded");
}

/// `check` accepts the examples and prints what it found.
#[test]
fn check_examples_valid() {
    for name in ["echo", "slack"] {
        let output = agentrun(&["check"]).arg(example(name)).run();

        output.assert_exit(0);
        assert_contains(&output.stdout, "is valid");
        assert_contains(&output.stdout, "fields:   message");
    }
}

/// The Slack example posts `{"text": …}` as valid JSON, whatever the message contains.
#[test]
fn run_slack_posts_json() {
    let webhook = Webhook::start(200, "ok");
    let output = agentrun(&["run"])
        .arg(example("slack"))
        .arg("--set")
        .arg(format!("message={TRICKY_MESSAGE}"))
        .arg("--env")
        .arg(format!("url={}", webhook.url("/services/T000/B000")))
        .args(["--context", "user-name=alice@example.com"])
        .run();

    output.assert_exit(0);
    assert_eq!(output.stdout, "Message sent to Slack.\n");
    assert_slack_post(
        &webhook.next_request(),
        "/services/T000/B000",
        TRICKY_MESSAGE,
    );
}

/// The Slack example's prefill takes the user and report from the context.
#[test]
fn run_slack_prefill_from_context() {
    let webhook = Webhook::start(200, "ok");
    let output = agentrun(&["run"])
        .arg(example("slack"))
        .arg("--env")
        .arg(format!("url={}", webhook.url("/hook")))
        .args([
            "--context",
            "user-name=alice@example.com",
            "--context",
            "report-name=Q3 \"draft\"",
            "--context",
            "report-url=https://sift.example/reports/42",
        ])
        .run();

    output.assert_exit(0);
    assert_slack_post(
        &webhook.next_request(),
        "/hook",
        "alice@example.com shared the report Q3 \"draft\": https://sift.example/reports/42",
    );
}

/// A webhook that responds with 500 makes the agent report failure: exit 1 with its message.
#[test]
fn run_slack_server_error_exits_1() {
    let webhook = Webhook::start(500, "internal error");
    let output = agentrun(&["run"])
        .arg(example("slack"))
        .args(["--set", "message=hello"])
        .arg("--env")
        .arg(format!("url={}", webhook.url("/hook")))
        .args(["--context", "user-name=alice@example.com"])
        .run();

    output.assert_exit(1);
    assert_eq!(
        output.stdout,
        "Slack rejected the message: HTTP 500 internal error\n"
    );
    assert_contains(
        &output.stderr,
        "error: the agent reported failure (return_code 1)",
    );
    assert_slack_post(&webhook.next_request(), "/hook", "hello");
}

/// An invalid webhook URL, such as a placeholder with a non-ASCII ellipsis, is reported as
/// such before any request: exit 1 with the reason.
#[test]
fn run_slack_invalid_url_exits_1() {
    let cases = [
        (
            "https://hooks.slack.com/services/…",
            "it contains the non-ASCII character '…' at position 33, so it is probably still a \
             placeholder",
        ),
        (
            "hooks.slack.com/services/T000",
            "it is not an http:// or https:// URL with a host",
        ),
        (
            "https://",
            "it is not an http:// or https:// URL with a host",
        ),
    ];
    for (url, reason) in cases {
        let output = agentrun(&["run"])
            .arg(example("slack"))
            .args(["--set", "message=hello"])
            .arg("--env")
            .arg(format!("url={url}"))
            .run();

        output.assert_exit(1);
        assert_eq!(
            output.stdout,
            format!(
                "The Slack webhook URL in the environment variable `url` is invalid: {reason}. \
                 Set it to your incoming-webhook URL.\n"
            ),
            "{url}"
        );
    }
}

// ---- Exit status 2: invalid input --------------------------------------------------------------

/// A package path that does not exist is invalid input.
#[test]
fn missing_package_exits_2() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let missing = dir.path().join("no-such-package");
    let output = agentrun(&["run"]).arg(&missing).run();

    output.assert_exit(2);
    assert_contains(
        &output.stderr,
        &format!("package {} does not exist", missing.display()),
    );
}

/// A `--set` without `=` is rejected by the argument parser.
#[test]
fn set_without_equals_exits_2() {
    let output = agentrun(&["run"])
        .arg(example("echo"))
        .args(["--set", "message"])
        .run();

    output.assert_exit(2);
    assert_contains(&output.stderr, "expected NAME=VALUE, got \"message\"");
}

/// A `--set` for a field the manifest does not have is rejected, naming the known fields.
#[test]
fn set_unknown_field_exits_2() {
    let output = agentrun(&["run"])
        .arg(example("echo"))
        .args(["--set", "colour=red"])
        .run();

    output.assert_exit(2);
    assert_contains(
        &output.stderr,
        "unknown field \"colour\" (\"red\"); known fields: message",
    );
}

/// An unknown context key is rejected, listing the valid keys.
#[test]
fn unknown_context_key_exits_2() {
    let output = agentrun(&["run"])
        .arg(example("echo"))
        .args(["--context", "user-email=alice@example.com"])
        .run();

    output.assert_exit(2);
    assert_contains(&output.stderr, "unknown context key \"user-email\"");
    assert_contains(&output.stderr, "user-name");
}

/// A manifest that breaks several rules is rejected with every problem listed.
#[test]
fn bad_manifest_lists_every_problem() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = bad_package(dir.path());
    let output = agentrun(&["run"]).arg(&package).run();

    output.assert_exit(2);
    for problem in BAD_MANIFEST_PROBLEMS {
        assert_contains(&output.stderr, problem);
    }
}

/// An unknown manifest key is rejected with a suggestion, next to the manifest's other problems.
#[test]
fn manifest_unknown_key_exits_2() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = echo_with_manifest(
        dir.path(),
        "name = \"Echo\"\nsection_elemnt = \"report\"\nsection = \"sidebar\"\n",
    );
    let output = agentrun(&["run"]).arg(&package).run();

    output.assert_exit(2);
    assert_contains(
        &output.stderr,
        "section_elemnt: unknown key; did you mean \"section_element\"?",
    );
    assert_contains(
        &output.stderr,
        "section: unknown value \"sidebar\"; expected one of canvas, collaborate",
    );
}

/// `check` rejects prefills without keywords that break their own field's rules, naming the
/// field, the prefill and the rule.
#[test]
fn check_rejects_literal_prefills() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let manifest = "name = \"Echo\"\n\n\
                    [[fields]]\n\
                    name = \"ticket\"\n\
                    value = \"T-1\"\n\
                    regex = \"TCK-[0-9]{4}\"\n\n\
                    [[fields]]\n\
                    name = \"urgency\"\n\
                    ui_element = \"select\"\n\
                    options = [{ label = \"High\", value = \"high\" }, { value = \"low\" }]\n\
                    value = \"urgent\"\n\n\
                    [[fields]]\n\
                    name = \"due\"\n\
                    ui_element = \"date\"\n\
                    value = \"tomorrow\"\n";
    let package = echo_with_manifest(dir.path(), manifest);
    let output = agentrun(&["check"]).arg(&package).run();

    output.assert_exit(2);
    assert_contains(&output.stderr, "has 3 problems:");
    assert_contains(
        &output.stderr,
        "fields[0].value (field \"ticket\"): prefill \"T-1\" does not match the regex \
         TCK-[0-9]{4} as a whole",
    );
    assert_contains(
        &output.stderr,
        "fields[1].value (field \"urgency\"): prefill \"urgent\" is not one of the option \
         values: high, low",
    );
    assert_contains(
        &output.stderr,
        "fields[2].value (field \"due\"): prefill \"tomorrow\" is not a date in the form \
         YYYY-MM-DD",
    );
}

/// `check` lists every problem of a bad package, the Dockerfile's included.
#[test]
fn check_lists_every_problem() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = bad_package(dir.path());
    let output = agentrun(&["check"]).arg(&package).run();

    output.assert_exit(2);
    assert_contains(
        &output.stderr,
        &format!(
            "{} has {} problems:",
            package.display(),
            BAD_MANIFEST_PROBLEMS.len() + 1
        ),
    );
    assert_contains(
        &output.stderr,
        "final stage (FROM python:3.11-slim on line 1) has no ENTRYPOINT or CMD that starts the \
         agent",
    );
    for problem in BAD_MANIFEST_PROBLEMS {
        assert_contains(&output.stderr, problem);
    }
    // The package is invalid on every backend, so no warning may claim that containers run it.
    assert!(
        !output.stderr.contains("Docker and Podman can"),
        "{}",
        output.stderr
    );
}

/// Writes the echo example with `dockerfile` in place of its own, and returns the folder.
fn echo_with_dockerfile(dir: &Path, dockerfile: &str) -> PathBuf {
    let package = dir.join("echo");
    fs::create_dir_all(&package).expect("creating the package folder");
    for name in ["agent.py", "integration.toml"] {
        fs::copy(example("echo").join(name), package.join(name)).expect("copying the example");
    }
    fs::write(package.join("Dockerfile"), dockerfile).expect("writing the Dockerfile");
    package
}

/// A Dockerfile with no ENTRYPOINT or CMD is invalid for `check`, `build` and `run` alike.
#[test]
fn dockerfile_without_agent_exits_2_everywhere() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = echo_with_dockerfile(
        dir.path(),
        "FROM python:3.11-slim\nCOPY agent.py /app/agent.py\n",
    );
    let expected = "has no ENTRYPOINT or CMD that starts the agent";

    let output = agentrun(&["check"]).arg(&package).run();
    output.assert_exit(2);
    assert_contains(&output.stderr, "has 1 problem:");
    assert_contains(&output.stderr, expected);
    assert!(!output.stderr.contains("warning:"), "{}", output.stderr);

    for command in ["build", "run"] {
        let output = agentrun(&[command]).arg(&package).run();
        output.assert_exit(2);
        assert_contains(&output.stderr, expected);
    }
}

/// A `CMD` names the agent as well as an `ENTRYPOINT` does, so `check` and `run` accept it.
#[test]
fn dockerfile_with_cmd_only_is_valid() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = echo_with_dockerfile(
        dir.path(),
        "FROM python:3.11-slim\nCOPY agent.py /app/agent.py\nCMD [\"python3\", \"/app/agent.py\"]\n",
    );

    let output = agentrun(&["check"]).arg(&package).run();
    output.assert_exit(0);
    assert_contains(&output.stdout, "is valid");
    assert_eq!(output.stderr, "");

    let output = agentrun(&["run", "--set", "message=from CMD"])
        .arg(&package)
        .run();
    output.assert_exit(0);
    assert_eq!(output.stdout, "from CMD\n");
}

/// An exec form with a missing comma is an error naming the fix, not a valid package with a
/// warning that suggests a wrong one.
#[test]
fn dockerfile_missing_comma_exits_2() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = echo_with_dockerfile(
        dir.path(),
        "FROM python:3.11-slim\nCOPY agent.py /app/agent.py\nENTRYPOINT [\"python3\" \"/app/agent.py\"]\n",
    );

    for command in ["check", "run"] {
        let output = agentrun(&[command]).arg(&package).run();

        output.assert_exit(2);
        assert_contains(
            &output.stderr,
            "ENTRYPOINT on line 3 is not a valid JSON array: expected `,` or `]` at character 12",
        );
        assert_contains(&output.stderr, "is a comma missing between two items?");
        assert_contains(
            &output.stderr,
            "write it as `ENTRYPOINT [\"python3\", \"/app/agent.py\"]`",
        );
        assert!(!output.stderr.contains("[python3"), "{}", output.stderr);
    }
}

/// Forty `ENV` lines that each double a value would request half a terabyte. `check` and `run`
/// stop at the value cap with an invalid package, well inside a 1 GiB address space.
#[test]
fn dockerfile_doubling_env_exits_2() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut dockerfile = String::from("FROM python:3.11-slim\nENV A0=x\n");
    for n in 1..40 {
        dockerfile.push_str(&format!("ENV A{n}=${{A{}}}${{A{}}}\n", n - 1, n - 1));
    }
    dockerfile.push_str("ENTRYPOINT [\"python3\", \"/app/agent.py\"]\n");
    let package = echo_with_dockerfile(dir.path(), &dockerfile);

    for command in ["check", "run"] {
        let output = agentrun(&[command])
            .arg(&package)
            .address_space_limit(1 << 30)
            .run();
        output.assert_exit(2);
        assert_contains(
            &output.stderr,
            "line 19: substituting $A16 makes a value longer than 65536 bytes",
        );
    }
}

/// A NUL character in an exec-form item is a package fault (exit 2) found by `check`, not a
/// start failure of the executor.
#[test]
fn dockerfile_nul_in_entrypoint_exits_2() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = echo_with_dockerfile(
        dir.path(),
        "FROM python:3.11-slim\nCOPY agent.py /app/agent.py\nENTRYPOINT [\"python3\", \"/app/agent.py\\u0000\"]\n",
    );
    for command in ["check", "run"] {
        let output = agentrun(&[command]).arg(&package).run();
        output.assert_exit(2);
        assert_contains(
            &output.stderr,
            "ENTRYPOINT on line 3 has a NUL character in `/app/agent.py\\0`",
        );
    }
}

/// A Latin-1 byte in a comment is read as image builders read it, and a UTF-16 file is
/// rejected with exit 2.
#[test]
fn dockerfile_encodings() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = echo_with_dockerfile(dir.path(), "");
    fs::write(
        package.join("Dockerfile"),
        b"FROM python:3.11-slim\n# caf\xe9\nCOPY agent.py /app/agent.py\nENTRYPOINT [\"python3\", \"/app/agent.py\"]\n",
    )
    .expect("writing the Dockerfile");
    let output = agentrun(&["run", "--set", "message=latin-1"])
        .arg(&package)
        .run();
    output.assert_exit(0);
    assert_eq!(output.stdout, "latin-1\n");

    let mut utf16 = vec![0xff, 0xfe];
    for unit in "FROM python:3.11-slim\nENTRYPOINT [\"python3\"]\n".encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    fs::write(package.join("Dockerfile"), utf16).expect("writing the Dockerfile");
    let output = agentrun(&["check"]).arg(&package).run();
    output.assert_exit(2);
    assert_contains(&output.stderr, "the Dockerfile is encoded as UTF-16");
}

/// A select value that is not one of the options is rejected, naming the options.
#[test]
fn select_value_not_in_options_exits_2() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let manifest = "name = \"Echo\"\n\n\
                    [[fields]]\n\
                    name = \"level\"\n\
                    label = \"Level\"\n\
                    ui_element = \"select\"\n\
                    options = [{ label = \"High\", value = \"high\" }, { label = \"Low\", value = \"low\" }]\n";
    let package = echo_with_manifest(dir.path(), manifest);
    let output = agentrun(&["run"])
        .arg(&package)
        .args(["--set", "level=medium"])
        .run();

    output.assert_exit(2);
    assert_contains(
        &output.stderr,
        "field \"level\": \"medium\" is not one of the option values: high, low",
    );
}

/// A select value that is an option's label is rejected with a hint naming the option's value.
#[test]
fn select_label_given_names_value() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let manifest = "name = \"Echo\"\n\n\
                    [[fields]]\n\
                    name = \"priority\"\n\
                    ui_element = \"select\"\n\
                    options = [{ label = \"High\", value = \"high\" }, { label = \"Low\", value = \"low\" }]\n";
    let package = echo_with_manifest(dir.path(), manifest);
    let output = agentrun(&["run"])
        .arg(&package)
        .args(["--set", "priority=High"])
        .run();

    output.assert_exit(2);
    assert_contains(
        &output.stderr,
        "field \"priority\": \"High\" is not one of the option values: high, low; \"High\" is \
         the label of option \"high\"",
    );
}

/// A value that does not match the field's regex is rejected with its validation message.
#[test]
fn regex_mismatch_shows_validation_message() {
    let output = agentrun(&["run"])
        .arg(example("slack"))
        .args(["--set", "message=  \n "])
        .run();

    output.assert_exit(2);
    assert_contains(
        &output.stderr,
        "field \"message\" (\"  \\n \"): Write a message to send to Slack.",
    );
}

// ---- Exit statuses 3 and 4 ---------------------------------------------------------------------

/// An agent that crashes without a reply: exit 3 with its exit code and stderr.
#[test]
fn crashing_agent_exits_3() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = dir.path().join("testagent");
    write_testagent_package(&package);
    let output = agentrun(&["run"])
        .arg(&package)
        .args(["--env", "TESTAGENT_CASE=crash"])
        .run();

    output.assert_exit(3);
    assert_contains(
        &output.stderr,
        "agent exited with exit code 3 without a reply",
    );
    assert_contains(&output.stderr, "testagent: crashing on purpose");
}

/// An agent that never exits is killed at the deadline: exit 3.
#[test]
fn hanging_agent_times_out_exits_3() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = dir.path().join("testagent");
    write_testagent_package(&package);
    let output = agentrun(&["run"])
        .arg(&package)
        .args(["--env", "TESTAGENT_CASE=hang", "--timeout", "1"])
        .run();

    output.assert_exit(3);
    assert_contains(
        &output.stderr,
        "agent did not finish within 1 s and was killed",
    );
}

/// Docker and Podman reject a Dockerfile without ENTRYPOINT or CMD before they build it, as
/// the subprocess executor does, instead of running the base image's own command.
#[test]
fn containers_reject_dockerfile_without_agent() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = echo_with_dockerfile(
        dir.path(),
        "FROM python:3.11-slim\nCOPY agent.py /app/agent.py\n",
    );
    for kind in [ExecutorKind::Docker, ExecutorKind::Podman] {
        if !runtime_available(kind, "containers_reject_dockerfile_without_agent") {
            continue;
        }
        let output = agentrun(&["run", "--network", "none", "--executor", kind.as_str()])
            .arg(&package)
            .run();

        output.assert_exit(2);
        assert_contains(
            &output.stderr,
            "has no ENTRYPOINT or CMD that starts the agent",
        );
    }
}

/// An ENTRYPOINT program that the image does not contain or cannot execute is a package fault
/// on Docker and Podman (exit 2, naming the program), as it is on the subprocess backend. The
/// agent runs under an init, which reports the fault on stderr instead of runc.
#[test]
fn containers_missing_program_exits_2() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let cases = [
        (
            "ENTRYPOINT [\"/nonexistent\", \"x\"]",
            "the agent program `/nonexistent` is not in the image",
        ),
        (
            "ENTRYPOINT [\"nosuchprog\"]",
            "the agent program `nosuchprog` is not on the image's PATH",
        ),
        (
            "COPY agent.sh /agent.sh\nENTRYPOINT [\"/agent.sh\"]",
            "the agent program `/agent.sh` is not executable in the image",
        ),
    ];
    for kind in [ExecutorKind::Docker, ExecutorKind::Podman] {
        if !runtime_available(kind, "containers_missing_program_exits_2") {
            continue;
        }
        for (instructions, expected) in cases {
            let package = dir.path().join("missing");
            fs::create_dir_all(&package).expect("creating the package folder");
            // A script without the executable mode, for the third case.
            fs::write(package.join("agent.sh"), "echo\n").expect("writing the script");
            fs::write(
                package.join("Dockerfile"),
                format!("FROM agentrun-busybox:latest\n{instructions}\n"),
            )
            .expect("writing the Dockerfile");

            let output = agentrun(&["run", "--network", "none", "--executor", kind.as_str()])
                .arg(&package)
                .run();

            output.assert_exit(2);
            assert_contains(&output.stderr, expected);
        }
    }
}

/// A command labels its containers with the instance `agentrun-cli`, or the one `--instance`
/// or `AGENTRUN_CLI_INSTANCE` names, never with the service's default `agentrun`, so that a
/// service starting on the same runtime does not sweep a running command's container.
#[test]
fn containers_carry_cli_instance() {
    let dir = tempfile::tempdir().expect("temporary folder");
    // The folder name is the integration name, which the container's labels carry.
    let package = dir.path().join("cli-instance");
    fs::create_dir_all(&package).expect("creating the package folder");
    fs::write(
        package.join("Dockerfile"),
        "FROM agentrun-busybox:latest\nENTRYPOINT [\"/bin/sh\", \"-c\", \"read line; sleep 300\"]\n",
    )
    .expect("writing the Dockerfile");
    let custom = format!("cli-test-{}", std::process::id());

    for kind in [ExecutorKind::Docker, ExecutorKind::Podman] {
        if !runtime_available(kind, "containers_carry_cli_instance") {
            continue;
        }
        let cases = [
            (None, None, "agentrun-cli"),
            (Some(custom.as_str()), None, custom.as_str()),
            (None, Some(custom.as_str()), custom.as_str()),
        ];
        for (option, variable, instance) in cases {
            let mut command = agentrun(&["run", "--network", "none", "--timeout", "600"])
                .args(["--executor", kind.as_str()])
                .arg(&package);
            if let Some(name) = option {
                command = command.args(["--instance", name]);
            }
            if let Some(name) = variable {
                command = command.env("AGENTRUN_CLI_INSTANCE", name);
            }
            let mut child = command.spawn();

            let found = wait_for_containers(kind, instance, "cli-instance", &mut child);
            assert_eq!(found.len(), 1, "{kind}, instance {instance}: {found:?}");
            assert!(
                job_containers(kind, "agentrun", "cli-instance").is_empty(),
                "{kind}: a container carries the service's instance"
            );

            // SAFETY: kill has no memory effects, and the pid is that of a child not yet waited
            // for, so it cannot name another process.
            let result = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            assert_eq!(result, 0, "sending SIGTERM to agentrun failed");
            let status = wait_with_deadline(&mut child, CLI_TIMEOUT);
            assert!(
                status.is_some(),
                "{kind}: agentrun did not exit after SIGTERM"
            );
            assert_eq!(
                job_containers(kind, instance, "cli-instance"),
                Vec::<String>::new(),
                "{kind}: the interrupted run left its container"
            );
        }
    }
}

/// An option value that is not UTF-8 is rejected with exit 2 and a message naming the option.
#[test]
fn non_utf8_option_names_it() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    let cases: [(&str, &[u8], &str); 3] = [
        (
            "--set",
            b"message=\xff",
            "the value \"message=\u{fffd}\" of --set <FIELD=VALUE>",
        ),
        (
            "--context",
            b"user-name=\xfe",
            "of --context <KEY=VALUE> is not valid UTF-8",
        ),
        (
            "--network",
            b"\xff",
            "of --network <MODE> is not valid UTF-8",
        ),
    ];
    for (option, value, expected) in cases {
        let output = agentrun(&["run", option])
            .arg(OsString::from_vec(value.to_vec()))
            .arg(example("echo"))
            .run();
        output.assert_exit(2);
        assert_contains(&output.stderr, expected);
    }
}

/// A command killed with SIGKILL cannot remove its container, so the container carries a
/// deadline label: its creation plus the timeout plus the grace, in Unix seconds.
#[test]
fn killed_run_leaves_deadline_label() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = dir.path().join("cli-killed");
    fs::create_dir_all(&package).expect("creating the package folder");
    fs::write(
        package.join("Dockerfile"),
        "FROM agentrun-busybox:latest\nENTRYPOINT [\"/bin/sh\", \"-c\", \"read line; sleep 300\"]\n",
    )
    .expect("writing the Dockerfile");
    let instance = format!("cli-killed-{}", std::process::id());
    let grace = agentrun_executor::DEADLINE_GRACE.as_secs();

    for kind in [ExecutorKind::Docker, ExecutorKind::Podman] {
        if !runtime_available(kind, "killed_run_leaves_deadline_label") {
            continue;
        }
        let before = unix_seconds();
        let mut child = agentrun(&["run", "--network", "none", "--timeout", "600"])
            .args(["--executor", kind.as_str(), "--instance", &instance])
            .arg(&package)
            .spawn();
        let found = wait_for_containers(kind, &instance, "cli-killed", &mut child);
        // Child::kill sends SIGKILL, which the command cannot handle.
        child.kill().expect("killing agentrun");
        let _ = child.wait();
        let after = unix_seconds();

        let left = job_containers(kind, &instance, "cli-killed");
        assert_eq!(
            left, found,
            "{kind}: the killed run's container should stay"
        );
        let deadline: u64 = container_label(kind, &left[0], agentrun_executor::LABEL_DEADLINE)
            .parse()
            .unwrap_or_else(|error| panic!("{kind}: deadline label is not a number: {error}"));
        remove_containers(kind, &left);
        assert!(
            deadline >= before + 600 + grace && deadline <= after + 600 + grace,
            "{kind}: deadline {deadline} outside {before}..{after} + 600 + {grace}"
        );
    }
}

/// A command killed with SIGKILL leaves its subprocess agent running, in a process group of its
/// own, with its HOME folder. The next command on the same machine stops that agent (and the
/// agent's child) and removes the folder.
#[test]
fn killed_run_agent_is_stopped_by_next_command() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = dir.path().join("stubborn");
    fs::create_dir_all(&package).expect("creating the package folder");
    fs::write(
        package.join("Dockerfile"),
        "FROM scratch\nCOPY agent.sh /agent.sh\nENTRYPOINT [\"/bin/sh\", \"/agent.sh\"]\n",
    )
    .expect("writing the Dockerfile");
    // Writes its pid, its child's pid and its HOME once the child runs, then waits for it.
    fs::write(
        package.join("agent.sh"),
        "read -r line\nsleep 300 &\necho \"$$ $! $HOME\" > \"$MARK.partial\"\n\
         mv \"$MARK.partial\" \"$MARK\"\nwait\n",
    )
    .expect("writing the agent");
    let mark = dir.path().join("mark");
    // The job records of the commands of this test, apart from those of other tests.
    let runtime_dir = dir.path().join("runtime");
    fs::create_dir(&runtime_dir).expect("creating the runtime folder");

    let mut child = agentrun(&["run", "--timeout", "600", "--env"])
        .arg(format!("MARK={}", mark.display()))
        .arg(&package)
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        .spawn();
    let killed_pid = child.id();
    let begun = Instant::now();
    while !mark.exists() && begun.elapsed() < CLI_TIMEOUT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = fs::read_to_string(&mark).expect("the agent wrote its mark");
    let mut words = text.split_whitespace();
    let agent: u32 = words
        .next()
        .and_then(|w| w.parse().ok())
        .expect("agent pid");
    let sleeper: u32 = words
        .next()
        .and_then(|w| w.parse().ok())
        .expect("child pid");
    let home = PathBuf::from(words.next().expect("HOME"));
    // Child::kill sends SIGKILL, which the command cannot handle.
    child.kill().expect("killing agentrun");
    let _ = child.wait();
    assert!(
        process_alive(agent),
        "the killed command's agent {agent} runs on"
    );
    assert!(
        home.is_dir(),
        "{} is there until a command sweeps",
        home.display()
    );

    let output = agentrun(&["run", "--context", "user-name=alice"])
        .arg(example("echo"))
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        .run();
    output.assert_exit(0);
    let stopped = Instant::now();
    while (process_alive(agent) || process_alive(sleeper)) && stopped.elapsed() < CLI_TIMEOUT {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!process_alive(agent), "agent {agent} still runs");
    assert!(
        !process_alive(sleeper),
        "the agent's child {sleeper} still runs"
    );
    assert!(!home.exists(), "{} is left", home.display());
    let killed_records = fs::read_dir(runtime_dir.join("agentrun-cli"))
        .expect("the records folder exists")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with(&format!("{killed_pid}-")));
    assert_eq!(
        killed_records, None,
        "the killed command's records are left"
    );
}

/// A records folder that others may write is not used: the run still succeeds, with a
/// warning, and writes no record there.
#[test]
fn records_folder_writable_by_others_is_not_used() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("temporary folder");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let records = dir.path().join(format!("agentrun-cli-{uid}"));
    fs::create_dir(&records).expect("creating the records folder");
    fs::set_permissions(&records, fs::Permissions::from_mode(0o777)).expect("chmod 777");

    let output = agentrun(&["run", "--context", "user-name=alice"])
        .arg(example("echo"))
        .env("TMPDIR", dir.path())
        .env_remove("XDG_RUNTIME_DIR")
        .run();

    output.assert_exit(0);
    assert_eq!(output.stdout, "Hello from alice\n");
    assert_contains(
        &output.stderr,
        "is not a folder that only this user can write",
    );
    let written: Vec<_> = fs::read_dir(&records)
        .expect("reading the records folder")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .collect();
    assert!(written.is_empty(), "records written: {written:?}");
}

/// Every command on Docker and Podman removes containers of any instance whose deadline label
/// is more than a minute past, and leaves alone those whose deadline is ahead or that carry no
/// deadline.
#[test]
fn expired_containers_are_swept() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = dir.path().join("sweeper");
    fs::create_dir_all(&package).expect("creating the package folder");
    fs::write(
        package.join("Dockerfile"),
        "FROM agentrun-busybox:latest\nENTRYPOINT [\"/bin/true\"]\n",
    )
    .expect("writing the Dockerfile");
    let other = format!("other-engine-{}", std::process::id());
    let now = unix_seconds();

    for kind in [ExecutorKind::Docker, ExecutorKind::Podman] {
        if !runtime_available(kind, "expired_containers_are_swept") {
            continue;
        }
        let expired = create_labelled(kind, &other, Some(now - 3600));
        let ahead = create_labelled(kind, &other, Some(now + 3600));
        let without = create_labelled(kind, &other, None);

        let output = agentrun(&["build", "--executor", kind.as_str()])
            .arg(&package)
            .run();

        let left = containers_labelled(kind, &other, "sweep-test");
        remove_containers(kind, &left);
        output.assert_exit(0);
        assert!(
            !left.contains(&expired),
            "{kind}: the expired container stayed"
        );
        assert!(
            left.contains(&ahead),
            "{kind}: a container still in use was removed"
        );
        assert!(
            left.contains(&without),
            "{kind}: a container without deadline was removed"
        );
    }
}

/// Returns the seconds since the Unix epoch.
fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Creates a stopped container of the busybox image with the engine label `instance`, the
/// integration label `sweep-test` and, when given, a deadline label, and returns its short id.
fn create_labelled(kind: ExecutorKind, instance: &str, deadline: Option<u64>) -> String {
    let mut command = Command::new(kind.as_str());
    command
        .args(["create", "--network", "none", "--label"])
        .arg(format!("{}={instance}", agentrun_executor::LABEL_ENGINE))
        .arg("--label")
        .arg(format!(
            "{}=sweep-test",
            agentrun_executor::LABEL_INTEGRATION
        ));
    if let Some(deadline) = deadline {
        command
            .arg("--label")
            .arg(format!("{}={deadline}", agentrun_executor::LABEL_DEADLINE));
    }
    let output = command
        .args(["agentrun-busybox:latest", "/bin/true"])
        .output()
        .unwrap_or_else(|error| panic!("running `{kind} create` failed: {error}"));
    assert!(
        output.status.success(),
        "`{kind} create` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // `ps --quiet` lists short ids, so the comparisons use the same form.
    id.chars().take(12).collect()
}

/// Returns one label of a container, or "" when it has none of that name.
fn container_label(kind: ExecutorKind, id: &str, name: &str) -> String {
    let output = Command::new(kind.as_str())
        .args(["inspect", "--format"])
        .arg(format!("{{{{index .Config.Labels \"{name}\"}}}}"))
        .arg(id)
        .output()
        .unwrap_or_else(|error| panic!("running `{kind} inspect` failed: {error}"));
    assert!(
        output.status.success(),
        "`{kind} inspect` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Removes containers by id, failing the test when the runtime reports an error.
fn remove_containers(kind: ExecutorKind, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let output = Command::new(kind.as_str())
        .args(["rm", "--force"])
        .args(ids)
        .output()
        .unwrap_or_else(|error| panic!("running `{kind} rm` failed: {error}"));
    assert!(
        output.status.success(),
        "`{kind} rm` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// SIGTERM during a build stops it for real: `agentrun build` exits 3 and leaves no `RUN`
/// process, no Podman working container and no private Podman service folder behind.
#[test]
fn interrupted_build_leaves_nothing() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = dir.path().join("slow-build");
    fs::create_dir_all(&package).expect("creating the package folder");
    // A sleep length no other test uses, to find the step's process.
    let step = format!("sleep {}", 1000 + std::process::id() % 1000);
    fs::write(
        package.join("Dockerfile"),
        format!("FROM agentrun-busybox:latest\nRUN {step}\nENTRYPOINT [\"/bin/true\"]\n"),
    )
    .expect("writing the Dockerfile");

    for kind in [ExecutorKind::Docker, ExecutorKind::Podman] {
        if !runtime_available(kind, "interrupted_build_leaves_nothing") {
            continue;
        }
        let working_before = podman_working_containers();
        let mut child = agentrun(&["build", "--executor", kind.as_str()])
            .arg(&package)
            .spawn();
        let started = Instant::now();
        while processes_running(&step).is_empty() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{kind}: agentrun exited ({status}) before the RUN step started");
            }
            assert!(
                started.elapsed() < CLI_TIMEOUT,
                "{kind}: the RUN step did not start"
            );
            thread::sleep(Duration::from_millis(100));
        }

        // What this build made: its private Podman service folder and working container.
        let service_dirs = service_dirs_of(child.id());
        let working: Vec<String> = podman_working_containers()
            .into_iter()
            .filter(|id| !working_before.contains(id))
            .collect();
        if kind == ExecutorKind::Podman {
            assert_eq!(service_dirs.len(), 1, "{kind}: {service_dirs:?}");
        }

        // SAFETY: kill has no memory effects, and the pid is that of a child not yet waited
        // for, so it cannot name another process.
        let result = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(result, 0, "sending SIGTERM to agentrun failed");
        let status = wait_with_deadline(&mut child, CLI_TIMEOUT)
            .unwrap_or_else(|| panic!("{kind}: agentrun did not exit after SIGTERM"));
        assert_eq!(status.code(), Some(3), "{kind}: exit status");

        // The runtime ends the step's process shortly after the build request is gone.
        let stopped = Instant::now();
        while !processes_running(&step).is_empty() && stopped.elapsed() < Duration::from_secs(30) {
            thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            processes_running(&step),
            Vec::<u32>::new(),
            "{kind}: RUN step left"
        );
        let working_now = podman_working_containers();
        let left: Vec<&String> = working
            .iter()
            .filter(|id| working_now.contains(id))
            .collect();
        assert_eq!(
            left,
            Vec::<&String>::new(),
            "{kind}: working container left"
        );
        for dir in service_dirs {
            assert!(!dir.exists(), "{kind}: {} left", dir.display());
        }
    }
}

/// Returns the pids of processes whose command line is `command`.
fn processes_running(command: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| command_line(*pid) == command)
        .collect()
}

/// Returns the parent pid of a process, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The parent is the second field after the command name, which is in parentheses.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Returns the ids of Podman's external (buildah working) containers.
fn podman_working_containers() -> Vec<String> {
    let output = Command::new("podman")
        .args(["ps", "--all", "--external", "--quiet"])
        .output();
    match output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Returns the folders of the private `podman system service` processes that `parent`
/// started, read from their socket argument (`unix:///tmp/agentrun-podman-XXXX/podman.sock`).
fn service_dirs_of(parent: u32) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .filter_map(|pid| {
            let line = command_line(pid);
            let socket = line
                .split(' ')
                .find_map(|word| word.strip_prefix("unix://"))?;
            Some(Path::new(socket).parent()?.to_path_buf())
        })
        .filter(|dir| dir.to_string_lossy().contains("agentrun-podman-"))
        .collect()
}

/// An empty instance name is rejected before anything runs.
#[test]
fn empty_instance_exits_2() {
    let output = agentrun(&["run", "--instance", " "])
        .arg(example("echo"))
        .run();
    output.assert_exit(2);
    assert_contains(&output.stderr, "the instance name is empty");
}

/// `AGENTRUN_CLI_INSTANCE` belongs to the command line, so a service started in the same
/// environment does not read it as an unknown configuration key.
#[test]
fn cli_instance_variable_is_not_config() {
    let output = agentrun(&["serve", "--check-config"])
        .env("AGENTRUN_CLI_INSTANCE", "cli-elsewhere")
        .run();
    output.assert_exit(0);
    assert_contains(&output.stderr, "the configuration is valid");
}

/// Polls until a job container (one with a job-id label, unlike the builder's intermediate
/// containers) with the engine label `instance` and the integration label `integration` exists
/// and returns their ids. Fails the test when `child` exits first or after [`CLI_TIMEOUT`].
fn wait_for_containers(
    kind: ExecutorKind,
    instance: &str,
    integration: &str,
    child: &mut Child,
) -> Vec<String> {
    let started = Instant::now();
    loop {
        let found = job_containers(kind, instance, integration);
        if !found.is_empty() {
            return found;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{kind}: agentrun exited ({status}) before its container was listed");
        }
        if started.elapsed() > CLI_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{kind}: no container of instance {instance} after {CLI_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Lists the ids of containers (running or not) with the engine label `instance` and the
/// integration label `integration`, through the runtime's CLI.
fn containers_labelled(kind: ExecutorKind, instance: &str, integration: &str) -> Vec<String> {
    list_containers(kind, instance, integration, &[])
}

/// Lists the ids of job containers: those of [`containers_labelled`] with a job-id label.
fn job_containers(kind: ExecutorKind, instance: &str, integration: &str) -> Vec<String> {
    let job_label = format!("label={}", agentrun_executor::LABEL_JOB_ID);
    list_containers(kind, instance, integration, &["--filter", &job_label])
}

/// Lists the ids of containers with the engine label `instance`, the integration label
/// `integration` and the further `ps` arguments `extra`.
fn list_containers(
    kind: ExecutorKind,
    instance: &str,
    integration: &str,
    extra: &[&str],
) -> Vec<String> {
    let output = Command::new(kind.as_str())
        .args(["ps", "--all", "--quiet", "--filter"])
        .arg(format!(
            "label={}={instance}",
            agentrun_executor::LABEL_ENGINE
        ))
        .arg("--filter")
        .arg(format!(
            "label={}={integration}",
            agentrun_executor::LABEL_INTEGRATION
        ))
        .args(extra)
        .output()
        .unwrap_or_else(|error| panic!("running `{kind} ps` failed: {error}"));
    assert!(
        output.status.success(),
        "`{kind} ps` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A Docker engine that cannot be reached: exit 4, naming the address tried.
#[test]
fn unreachable_docker_exits_4() {
    let output = agentrun(&["run", "--executor", "docker"])
        .arg(example("echo"))
        .env("DOCKER_HOST", "unix:///nonexistent")
        .run();

    output.assert_exit(4);
    assert_contains(
        &output.stderr,
        "docker is unavailable at unix:///nonexistent",
    );
}

// ---- Zips --------------------------------------------------------------------------------------

/// A zipped package, as `zip -r echo.zip echo` makes it, runs like the folder.
#[test]
fn run_zipped_echo() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut entries = Vec::new();
    for name in ["Dockerfile", "agent.py", "integration.toml"] {
        let content = fs::read(example("echo").join(name)).expect("reading the echo example");
        entries.push(ZipEntry::File(format!("echo/{name}"), content));
    }
    let archive = write_zip(&dir.path().join("echo.zip"), &entries);
    let unpack_dir = empty_dir(&dir.path().join("tmp"));

    let output = agentrun(&["run"])
        .arg(&archive)
        .args(["--context", "user-name=alice@example.com"])
        .env("TMPDIR", &unpack_dir)
        .run();

    output.assert_exit(0);
    assert_eq!(output.stdout, "Hello from alice@example.com\n");
    assert_empty_dir(&unpack_dir);
}

/// Malicious and malformed zips are rejected with exit 2 and leave no files behind.
#[test]
fn malicious_zips_exit_2() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let escape_target = dir.path().join("escaped.txt");
    let dockerfile = ZipEntry::File(
        "pkg/Dockerfile".to_owned(),
        b"FROM python:3.11-slim\nENTRYPOINT [\"python3\"]\n".to_vec(),
    );
    let payload = b"written outside the package".to_vec();
    let cases: Vec<(&str, Vec<ZipEntry>, String)> = vec![
        (
            "parent components",
            vec![
                dockerfile.clone(),
                ZipEntry::File("pkg/../../../escaped.txt".to_owned(), payload.clone()),
            ],
            "has a `..` component".to_owned(),
        ),
        (
            "absolute path",
            vec![
                dockerfile.clone(),
                ZipEntry::File(escape_target.display().to_string(), payload.clone()),
            ],
            "is an absolute path".to_owned(),
        ),
        (
            "backslash path",
            vec![
                dockerfile.clone(),
                ZipEntry::File("pkg\\..\\..\\escaped.txt".to_owned(), payload.clone()),
            ],
            "contains a backslash".to_owned(),
        ),
        (
            "symbolic link",
            vec![
                dockerfile.clone(),
                ZipEntry::Symlink("pkg/passwd".to_owned(), "/etc/passwd".to_owned()),
            ],
            "zip entry \"pkg/passwd\" is a symbolic link".to_owned(),
        ),
        (
            "zip bomb",
            vec![
                dockerfile.clone(),
                ZipEntry::File("pkg/zeros.bin".to_owned(), vec![0; 16 * 1024 * 1024]),
            ],
            "that marks a zip bomb".to_owned(),
        ),
        (
            "two top-level folders",
            vec![
                dockerfile.clone(),
                ZipEntry::File("other/Dockerfile".to_owned(), b"FROM scratch\n".to_vec()),
            ],
            "found 2 top-level entries: \"other/\", \"pkg/\", and no Dockerfile".to_owned(),
        ),
    ];

    for (kind, entries, expected) in cases {
        let archive = write_zip(&dir.path().join("malicious.zip"), &entries);
        let unpack_dir = empty_dir(&dir.path().join("tmp"));

        let output = agentrun(&["run"])
            .arg(&archive)
            .env("TMPDIR", &unpack_dir)
            .run();

        assert_eq!(output.code, Some(2), "{kind}: {output:#?}");
        assert_contains(&output.stderr, &expected);
        assert_empty_dir(&unpack_dir);
        assert!(
            !escape_target.exists(),
            "{kind}: a file escaped the package"
        );
    }

    // A zip cut short, as an interrupted upload leaves it.
    let archive = write_zip(&dir.path().join("truncated.zip"), &[dockerfile]);
    let bytes = fs::read(&archive).expect("reading the zip");
    fs::write(&archive, &bytes[..bytes.len() / 2]).expect("truncating the zip");
    let unpack_dir = empty_dir(&dir.path().join("tmp"));
    let output = agentrun(&["run"])
        .arg(&archive)
        .env("TMPDIR", &unpack_dir)
        .run();
    output.assert_exit(2);
    assert_contains(&output.stderr, "is not a valid zip archive");
    assert_empty_dir(&unpack_dir);
}

// ---- Docker and Podman -------------------------------------------------------------------------

/// Docker: build prints the tag and caches, and the Slack example runs and is healthy.
#[test]
fn docker_build_run_describe_slack() {
    if !runtime_available(ExecutorKind::Docker, "docker_build_run_describe_slack") {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = unique_slack_copy(dir.path());
    let steps = container_steps(ExecutorKind::Docker, &package, &[]);

    assert_no_container_of(ExecutorKind::Docker, &steps.tag);
}

/// Podman: as for Docker, and no `podman system service` that agentrun started is left.
#[test]
fn podman_build_run_describe_slack() {
    if !runtime_available(ExecutorKind::Podman, "podman_build_run_describe_slack") {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary folder");
    let package = unique_slack_copy(dir.path());
    // The private service's socket lives in a folder under TMPDIR, so a service process whose
    // command line names this folder was started by these runs.
    let tmp = empty_dir(&dir.path().join("tmp"));
    let services_before = podman_services();

    let steps = container_steps(ExecutorKind::Podman, &package, &[("TMPDIR", tmp.as_path())]);

    let started: HashSet<u32> = steps
        .outputs
        .iter()
        .flat_map(|output| started_service_pids(&output.stderr))
        .collect();
    // Each run starts a private service unless a standing one responds (CONTAINER_HOST or
    // the standard socket), and then there is no service of agentrun's to look for.
    if started.is_empty() {
        eprintln!("podman_build_run_describe_slack: a standing podman service was used");
    }
    for pid in &started {
        assert!(
            !podman_services().contains(pid),
            "the podman service {pid} that agentrun started is still running"
        );
    }
    let tmp_text = tmp.display().to_string();
    let left: Vec<u32> = podman_services()
        .into_iter()
        .filter(|pid| !services_before.contains(pid))
        .filter(|pid| command_line(*pid).contains(&tmp_text))
        .collect();
    assert!(left.is_empty(), "podman services left behind: {left:?}");
    assert_empty_dir(&tmp);
    assert_no_container_of(ExecutorKind::Podman, &steps.tag);
}

/// What [`container_steps`] ran.
struct ContainerSteps {
    /// The image tag that `build` printed.
    tag: String,
    /// Output of every step, in order.
    outputs: Vec<Output>,
    /// Removes the image when the test ends.
    _image: ImageGuard,
}

/// Builds `package` twice, runs it against a local webhook and checks its health, all on the
/// container backend `kind`, with `env` set for every run.
fn container_steps(kind: ExecutorKind, package: &Path, env: &[(&str, &Path)]) -> ContainerSteps {
    let executor = kind.as_str();
    let with_env = |mut command: Agentrun| {
        for (name, value) in env {
            command = command.env(name, value);
        }
        // Logs as JSON, so the Podman test can find the private service's pid.
        command.args(["-v", "--log-format", "json"])
    };
    let mut outputs = Vec::new();

    // A fresh package: the first build is a real build and prints the tag.
    let build = with_env(agentrun(&["build", "--executor", executor]).arg(package)).run();
    build.assert_exit(0);
    let tag = build.stdout.trim().to_owned();
    let image = ImageGuard {
        kind,
        tag: tag.clone(),
    };
    assert!(tag.starts_with("agentrun/slack-"), "tag: {tag:?}");
    assert_eq!(build.stdout, format!("{tag}\n"));
    assert_contains(&build.stderr, "prepared in ");
    outputs.push(build);

    // The same package again is a cache hit with the same tag.
    let again = with_env(agentrun(&["build", "--executor", executor]).arg(package)).run();
    again.assert_exit(0);
    assert_eq!(again.stdout, format!("{tag}\n"));
    assert_contains(&again.stderr, "cache hit in ");
    outputs.push(again);

    // A run on the host network reaches the webhook on loopback.
    let webhook = Webhook::start(200, "ok");
    let run = with_env(
        agentrun(&["run", "--executor", executor, "--network", "host"])
            .arg(package)
            .arg("--set")
            .arg(format!("message={TRICKY_MESSAGE}"))
            .arg("--env")
            .arg(format!("url={}", webhook.url("/services/T000/B000")))
            .args(["--context", "user-name=alice@example.com"]),
    )
    .run();
    run.assert_exit(0);
    assert_eq!(run.stdout, "Message sent to Slack.\n");
    assert_slack_post(
        &webhook.next_request(),
        "/services/T000/B000",
        TRICKY_MESSAGE,
    );
    outputs.push(run);

    let describe =
        with_env(agentrun(&["describe", "--executor", executor, "--network", "none"]).arg(package))
            .run();
    describe.assert_exit(0);
    assert_contains(&describe.stdout, "Slack is healthy: heartbeat in ");
    outputs.push(describe);

    ContainerSteps {
        tag,
        outputs,
        _image: image,
    }
}

/// Removes an image of the container tests when dropped.
struct ImageGuard {
    kind: ExecutorKind,
    tag: String,
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        // Best effort: a leftover image costs disk space, not correctness.
        let _ = Command::new(self.kind.as_str())
            .args(["rmi", "--force", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Fails the test when a container made from `image` is left.
fn assert_no_container_of(kind: ExecutorKind, image: &str) {
    let output = Command::new(kind.as_str())
        .args(["ps", "--all", "--quiet", "--filter"])
        .arg(format!("ancestor={image}"))
        .output()
        .unwrap_or_else(|error| panic!("running `{kind} ps` failed: {error}"));
    assert!(
        output.status.success(),
        "`{kind} ps` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let left = String::from_utf8_lossy(&output.stdout);
    assert!(left.trim().is_empty(), "containers of {image} left: {left}");
}

/// Returns the pids of `podman system service` processes on this machine.
fn podman_services() -> HashSet<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let words: Vec<String> = command_line(*pid).split(' ').map(str::to_owned).collect();
            words
                .first()
                .is_some_and(|program| program.ends_with("podman"))
                && words.windows(2).any(|pair| pair == ["system", "service"])
        })
        .collect()
}

/// Returns a process's command line with arguments separated by spaces, or "" when it is gone.
fn command_line(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

/// Returns the pids that JSON log lines on `stderr` report for started private services.
fn started_service_pids(stderr: &str) -> Vec<u32> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["fields"]["message"] == "started a private podman service")
        .filter_map(|entry| u32::try_from(entry["fields"]["pid"].as_u64()?).ok())
        .collect()
}

// ---- Packages ----------------------------------------------------------------------------------

/// Problems of the manifest that [`bad_package`] writes, as the binary lists them.
const BAD_MANIFEST_PROBLEMS: [&str; 4] = [
    "section_element: unknown value \"report\" for section \"canvas\"; expected one of nodes, \
     edges, canvas",
    "fields[0].options (field \"level\"): missing; a select field needs at least one option",
    "fields[1].name: duplicate name \"level\"; fields[0] already uses it",
    "fields[1].regex (field \"level\"): invalid regex \"(unclosed\"",
];

/// Writes a package with a Dockerfile without ENTRYPOINT and a manifest that breaks four
/// rules, and returns its folder.
fn bad_package(dir: &Path) -> PathBuf {
    let package = dir.join("bad");
    fs::create_dir_all(&package).expect("creating the package folder");
    fs::write(
        package.join("Dockerfile"),
        "FROM python:3.11-slim\nCOPY agent.py /app/agent.py\n",
    )
    .expect("writing the Dockerfile");
    fs::write(package.join("agent.py"), "print('never runs')\n").expect("writing the agent");
    let manifest = "name = \"Bad\"\n\
                    section = \"canvas\"\n\
                    section_element = \"report\"\n\n\
                    [[fields]]\n\
                    name = \"level\"\n\
                    label = \"Level\"\n\
                    ui_element = \"select\"\n\n\
                    [[fields]]\n\
                    name = \"level\"\n\
                    label = \"Again\"\n\
                    ui_element = \"text\"\n\
                    regex = \"(unclosed\"\n";
    fs::write(package.join("integration.toml"), manifest).expect("writing the manifest");
    package
}

/// Writes a copy of `examples/echo` with `manifest` as its manifest, and returns its folder.
fn echo_with_manifest(dir: &Path, manifest: &str) -> PathBuf {
    let package = dir.join("echo");
    fs::create_dir_all(&package).expect("creating the package folder");
    for name in ["Dockerfile", "agent.py"] {
        fs::copy(example("echo").join(name), package.join(name)).expect("copying the example");
    }
    fs::write(package.join("integration.toml"), manifest).expect("writing the manifest");
    package
}

/// Writes a copy of `examples/slack` with a file that makes its digest, and so its image tag,
/// unique to this run, so that the first build is never a cache hit from an earlier run.
fn unique_slack_copy(dir: &Path) -> PathBuf {
    let package = dir.join("slack");
    fs::create_dir_all(&package).expect("creating the package folder");
    for name in ["Dockerfile", "agent.py", "integration.toml"] {
        fs::copy(example("slack").join(name), package.join(name)).expect("copying the example");
    }
    let nonce = format!(
        "{} {:?}\n",
        std::process::id(),
        std::time::SystemTime::now()
    );
    fs::write(package.join("nonce.txt"), nonce).expect("writing the nonce");
    package
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// One entry of a zip that [`write_zip`] writes.
#[derive(Clone)]
enum ZipEntry {
    /// A file with its name and content.
    File(String, Vec<u8>),
    /// A symbolic link with its name and target.
    Symlink(String, String),
}

/// Writes a deflate-compressed zip of `entries`, names as given, and returns its path.
fn write_zip(path: &Path, entries: &[ZipEntry]) -> PathBuf {
    let file = fs::File::create(path).expect("creating the zip");
    let mut writer = ZipWriter::new(file);
    let options = SimpleFileOptions::default().unix_permissions(0o644);
    for entry in entries {
        match entry {
            ZipEntry::File(name, content) => {
                writer
                    .start_file(name.as_str(), options)
                    .expect("adding a zip entry");
                writer.write_all(content).expect("writing a zip entry");
            }
            ZipEntry::Symlink(name, target) => writer
                .add_symlink(name.as_str(), target.as_str(), options)
                .expect("adding a zip link"),
        }
    }
    writer.finish().expect("finishing the zip");
    path.to_path_buf()
}

/// Creates `path` as an empty folder, removing what was there, and returns it.
fn empty_dir(path: &Path) -> PathBuf {
    if path.exists() {
        fs::remove_dir_all(path).expect("removing the old folder");
    }
    fs::create_dir_all(path).expect("creating the folder");
    path.to_path_buf()
}

/// Asserts that `path` contains nothing but the command line's folder of job records
/// (`agentrun-cli-<uid>`, which the subprocess executor keeps in the temporary folder), and that
/// this one is empty: each command removes its own records.
fn assert_empty_dir(path: &Path) {
    let left: Vec<_> = fs::read_dir(path)
        .expect("reading the folder")
        .filter_map(Result::ok)
        .filter(|entry| {
            let records = entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with("agentrun-cli-"));
            let empty = fs::read_dir(entry.path()).is_ok_and(|mut dir| dir.next().is_none());
            !(records && empty)
        })
        .map(|entry| entry.file_name())
        .collect();
    assert!(left.is_empty(), "{} is not empty: {left:?}", path.display());
}

// ---- Running the binary ------------------------------------------------------------------------

/// The exit status and output of one run of the binary.
#[derive(Debug)]
struct Output {
    /// Exit code, or `None` when a signal ended the process.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    #[track_caller]
    fn assert_exit(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit status\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    fn stdout_json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}):\n{}", self.stdout))
    }
}

/// A command line for the binary under test.
struct Agentrun(Command);

/// Returns the binary with `args`, with the environment variables that change its defaults
/// removed.
fn agentrun(args: &[&str]) -> Agentrun {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentrun"));
    command
        .args(args)
        .env_remove("AGENTRUN_EXECUTOR")
        .env_remove("AGENTRUN_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Agentrun(command)
}

impl Agentrun {
    fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.0.arg(arg);
        self
    }

    fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.0.args(args);
        self
    }

    fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.0.env(name, value);
        self
    }

    fn env_remove(mut self, name: &str) -> Self {
        self.0.env_remove(name);
        self
    }

    /// Limits the address space of the binary to `bytes`, so that a runaway allocation fails
    /// inside the process instead of taking the machine's memory.
    fn address_space_limit(mut self, bytes: u64) -> Self {
        use std::os::unix::process::CommandExt;
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // setrlimit, which is async-signal-safe, on a value copied into the closure.
        unsafe {
            self.0.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        self
    }

    /// Connects stdout to a pipe whose reading end is already closed, as `| head -0` leaves it:
    /// every write to stdout fails with a broken pipe.
    fn closed_stdout(mut self) -> Self {
        self.0.stdout(closed_pipe());
        self
    }

    /// Connects stderr to a pipe whose reading end is already closed.
    fn closed_stderr(mut self) -> Self {
        self.0.stderr(closed_pipe());
        self
    }

    /// Starts the binary and returns at once, with stdout and stderr discarded.
    fn spawn(mut self) -> Child {
        self.0
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting agentrun failed: {error}"))
    }

    /// Runs the binary to its end, killing it and failing the test after [`CLI_TIMEOUT`].
    fn run(mut self) -> Output {
        let mut child = self
            .0
            .spawn()
            .unwrap_or_else(|error| panic!("starting agentrun failed: {error}"));
        let stdout = read_in_background(child.stdout.take());
        let stderr = read_in_background(child.stderr.take());

        let status = wait_with_deadline(&mut child, CLI_TIMEOUT);
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let Some(status) = status else {
            panic!(
                "agentrun did not exit within {} s\nstdout:\n{stdout}\nstderr:\n{stderr}",
                CLI_TIMEOUT.as_secs()
            );
        };
        Output {
            code: status.code(),
            stdout,
            stderr,
        }
    }
}

/// Returns the writing end of a pipe whose reading end is closed.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    Stdio::from(writer)
}

/// Reads a pipe to its end on a thread of its own, so that neither pipe can fill up and block
/// the child.
fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` to exit, or kills it after `limit` and returns `None`.
fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if started.elapsed() < limit => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Err(error) => panic!("waiting for agentrun failed: {error}"),
        }
    }
}

// ---- Assertions --------------------------------------------------------------------------------

#[track_caller]
fn assert_contains(text: &str, needle: &str) {
    assert!(
        text.contains(needle),
        "expected text containing {needle:?}, got:\n{text}"
    );
}

/// Checks that `request` is the Slack agent's post of `text` to `path`.
#[track_caller]
fn assert_slack_post(request: &common::webhook::Request, path: &str, text: &str) {
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, path);
    assert_eq!(
        request.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let body: Value = serde_json::from_slice(&request.body).unwrap_or_else(|error| {
        panic!(
            "the webhook body is not JSON ({error}): {}",
            String::from_utf8_lossy(&request.body)
        )
    });
    assert_eq!(body, json!({ "text": text }));
}
