//! Baselines: what a user would run without agentrun, a direct fork/exec of the agent's command or
//! the runtime's CLI (`docker run -i --rm …`, `podman run -i --rm …`).
//!
//! Baselines run on plain threads with `std::process`, so that no async runtime adds to them.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::{Latency, Throughput};

/// A command that runs the agent once, reading the message on stdin.
#[derive(Clone, Debug)]
pub struct BaselineCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub working_dir: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

impl BaselineCommand {
    /// Runs the command with `message` on stdin and returns its stdout, or why it failed.
    pub fn run(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.working_dir {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .map_err(|error| format!("spawning {} failed: {error}", self.program.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            // An agent that exits without reading is the agent's business, as in the engine.
            let _ = stdin.write_all(message);
        }
        let output = child
            .wait_with_output()
            .map_err(|error| format!("waiting for {} failed: {error}", self.program.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} exited with {}: {}",
                self.program.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(output.stdout)
    }
}

/// Runs `samples` jobs one after another (after `warmup` unmeasured ones) and returns their
/// latencies. `check` validates each job's stdout.
pub fn latency(
    command: &BaselineCommand,
    message: &[u8],
    warmup: usize,
    samples: usize,
    check: &(dyn Fn(&[u8]) -> Result<(), String> + Sync),
) -> Result<Latency, String> {
    for _ in 0..warmup {
        check(&command.run(message)?)?;
    }
    let mut measured = Vec::with_capacity(samples);
    for _ in 0..samples {
        let began = Instant::now();
        let stdout = command.run(message)?;
        measured.push(began.elapsed());
        check(&stdout)?;
    }
    Ok(Latency::of(measured))
}

/// Runs `jobs` jobs on `concurrency` threads and returns the rate.
pub fn throughput(
    command: &BaselineCommand,
    message: &[u8],
    jobs: usize,
    concurrency: usize,
    check: &(dyn Fn(&[u8]) -> Result<(), String> + Sync),
) -> Result<Throughput, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let errors: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let next = Arc::clone(&next);
                scope.spawn(move || -> Result<(), String> {
                    while next.fetch_add(1, Ordering::Relaxed) < jobs {
                        check(&command.run(message)?)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|worker| match worker.join() {
                Ok(result) => result.err(),
                Err(_) => Some("a baseline thread panicked".to_owned()),
            })
            .collect()
    });
    let elapsed: Duration = began.elapsed();
    match errors.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(Throughput::of(jobs, elapsed)),
    }
}
