//! What the benchmark ran on: cores, CPU, memory, kernel, runtime versions and load.

use std::process::Command;

/// Returns a few lines that describe this machine.
pub fn describe() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = read_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".to_owned());
    let memory = read_field("/proc/meminfo", "MemTotal").unwrap_or_else(|| "unknown".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let docker = version(
        "docker",
        &[
            "version",
            "--format",
            "{{.Server.Version}} (API {{.Server.APIVersion}})",
        ],
    );
    let podman = version("podman", &["version", "--format", "{{.Client.Version}}"]);
    let runc = version("runc", &["--version"]);
    let runc = runc.lines().next().unwrap_or_default().to_owned();
    format!(
        "machine: {cores} cores, {cpu}, {memory} memory, kernel {kernel}\n\
         runtimes: dockerd {docker}; podman {podman}; {runc}\n\
         load average before: {}",
        load_average()
    )
}

/// Returns the 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn read_field(path: &str, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.trim().to_owned())
}

fn version(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
        Ok(output) => format!(
            "unavailable ({})",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => format!("unavailable ({error})"),
    }
}
