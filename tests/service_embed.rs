//! The embedding example (`examples/embed`) builds and runs the echo integration.

use std::process::Command;
use std::time::Duration;

#[test]
fn embed_example_runs_echo() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let child = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "--quiet",
            "--example",
            "embed",
            "--",
            "examples/echo",
            "subprocess",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start cargo run --example embed");

    // Building the example can take minutes on a cold cache; running it takes milliseconds.
    // The output is collected on another thread so that a full pipe cannot stall the wait.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    let output = receiver
        .recv_timeout(Duration::from_secs(600))
        .expect("cargo run --example embed finishes within 600 s")
        .expect("collect output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");

    let result: serde_json::Value = serde_json::from_str(&stdout).expect("result is JSON");
    assert_eq!(result["status"], "succeeded", "{stdout}");
    assert_eq!(result["message"], "hello from an embedding program");
    assert!(stderr.contains("Echo: healthy = true"), "{stderr}");
}
