//! The shipped systemd unit: `systemd-analyze verify` accepts it without a warning, and it
//! agrees with the service's defaults. Skips, printing why, when `systemd-analyze` is missing,
//! unless `AGENTRUN_REQUIRE_RUNTIMES` lists `systemd`.

use std::path::PathBuf;
use std::process::Command;

fn unit_text() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/agentrun.service");
    std::fs::read_to_string(&path).expect("read config/agentrun.service")
}

/// Returns the values of `key=` lines in the unit.
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        let reason = "systemd-analyze is not installed (Debian package systemd)";
        let required = std::env::var("AGENTRUN_REQUIRE_RUNTIMES").is_ok_and(|list| {
            list.split(',')
                .any(|entry| entry.trim().eq_ignore_ascii_case("systemd"))
        });
        assert!(
            !required,
            "{reason}, and AGENTRUN_REQUIRE_RUNTIMES requires systemd"
        );
        eprintln!("skipping: {reason}");
        return;
    }

    // verify checks that the programs exist, so point the unit at the binary under test.
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = dir.path().join("agentrun.service");
    let text = unit_text().replace("/usr/bin/agentrun", env!("CARGO_BIN_EXE_agentrun"));
    std::fs::write(&unit, text).expect("write unit");

    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "verify failed: {stderr}");
    // Unknown keys and bad values are only warnings, so any output is a failure.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("agentrun.service"))
        .collect();
    assert!(warnings.is_empty(), "verify warned: {warnings:#?}");
}

#[test]
fn unit_matches_service_defaults() {
    let text = unit_text();
    assert_eq!(values(&text, "Type"), ["notify"]);
    assert_eq!(
        values(&text, "ExecStartPre"),
        ["/usr/bin/agentrun serve --check-config"]
    );
    assert_eq!(values(&text, "ExecStart"), ["/usr/bin/agentrun serve"]);
    assert_eq!(
        values(&text, "LoadCredential"),
        [format!(
            "{}:/etc/agentrun/secrets.key",
            agentrun::service::CREDENTIAL_NAME
        )]
    );

    // The state and runtime folders are the default data folder and socket folder.
    let state = values(&text, "StateDirectory");
    assert_eq!(state, ["agentrun"]);
    assert_eq!(
        agentrun::config::DEFAULT_DATA_DIR,
        format!("/var/lib/{}", state[0])
    );
    let runtime = values(&text, "RuntimeDirectory");
    assert_eq!(runtime, ["agentrun"]);
    assert!(
        agentrun::config::DEFAULT_UNIX_SOCKET.starts_with(&format!("/run/{}/", runtime[0])),
        "{}",
        agentrun::config::DEFAULT_UNIX_SOCKET
    );

    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("KillMode", "mixed"),
    ] {
        assert_eq!(values(&text, key), [value], "{key}");
    }

    // The stop timeout leaves room for the default grace period.
    let timeout: u64 = values(&text, "TimeoutStopSec")[0]
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(timeout > agentrun::config::DEFAULT_SHUTDOWN_GRACE_SECS + 15);
}
