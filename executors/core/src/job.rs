//! What a backend receives for one job and what it hands back.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Default deadline for one job, from start to exit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default cap on an agent's stdout. Past it the agent is killed and the job fails.
pub const DEFAULT_MAX_STDOUT_BYTES: usize = 1024 * 1024;
/// Default number of trailing stderr bytes kept for error messages and the job record.
pub const DEFAULT_STDERR_TAIL_BYTES: usize = 16 * 1024;

/// The protocol message a job carries, for labels and logs. Backends treat both alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// A health check (`{"type":"describe",…}`).
    Describe,
    /// A work request (`{"type":"work",…}`).
    Work,
}

impl MessageKind {
    /// Returns the message's `type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Describe => "describe",
            Self::Work => "work",
        }
    }
}

/// One job for [`Executor::run`](crate::Executor::run).
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// Protocol job id, also put on container labels.
    pub job_id: u64,
    /// Which message `stdin` holds.
    pub kind: MessageKind,
    /// Exact bytes to write to the agent's stdin before closing it.
    pub stdin: Vec<u8>,
    /// Environment variables for the agent, in order. Values reach the agent byte for byte
    /// (they may contain `=`, spaces, quotes, newlines and non-ASCII text). Backends add only
    /// what the process needs to start (the subprocess backend adds `PATH`, `HOME` and `LANG`).
    pub env: Vec<(String, String)>,
    /// Resource limits and hardening options.
    pub limits: Limits,
    /// Deadline for the whole run, from start to exit.
    pub timeout: Duration,
    /// Stdout cap in bytes. An agent that writes more is killed and the job ends with
    /// [`JobEnd::StdoutLimit`].
    pub max_stdout_bytes: usize,
    /// How many trailing stderr bytes to keep.
    pub stderr_tail_bytes: usize,
    /// Cancels the job: the backend kills the agent and returns [`JobEnd::Cancelled`].
    pub cancel: CancellationToken,
}

impl JobSpec {
    /// Builds a job with the default timeout, caps and limits.
    pub fn new(job_id: u64, kind: MessageKind, stdin: Vec<u8>) -> Self {
        Self {
            job_id,
            kind,
            stdin,
            env: Vec::new(),
            limits: Limits::default(),
            timeout: DEFAULT_TIMEOUT,
            max_stdout_bytes: DEFAULT_MAX_STDOUT_BYTES,
            stderr_tail_bytes: DEFAULT_STDERR_TAIL_BYTES,
            cancel: CancellationToken::new(),
        }
    }
}

/// Resource limits and hardening options for one job.
///
/// `None` means "the runtime's default". Container backends apply the container fields; the
/// subprocess backend applies the rlimit fields and `user` and ignores the rest, because a plain
/// process has no namespaces or cgroups of its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Memory limit in bytes (containers).
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores, such as 0.5 (containers).
    pub cpus: Option<f64>,
    /// Maximum number of processes in the container (containers).
    pub pids: Option<i64>,
    /// Network mode, such as `none` or `host` (containers). `None` keeps the runtime's default.
    pub network: Option<String>,
    /// Drop every Linux capability (containers). Default true.
    pub drop_all_capabilities: bool,
    /// Set `no-new-privileges` (containers). Default true.
    pub no_new_privileges: bool,
    /// Mount the root file system read-only, with a writable tmpfs on `/tmp` (containers).
    pub read_only_root: bool,
    /// `RLIMIT_NOFILE`: open files (all backends; Podman needs a value no higher than the host's).
    pub nofile: Option<u64>,
    /// `RLIMIT_NPROC`: processes of the user (all backends).
    pub nproc: Option<u64>,
    /// `RLIMIT_CPU`: CPU seconds (subprocess).
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_AS`: address space in bytes (subprocess).
    pub address_space_bytes: Option<u64>,
    /// User (name or uid, optionally `:group`) to run the agent as. The subprocess backend
    /// switches to it only when the engine runs as root; container backends pass it to the
    /// runtime.
    pub user: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: None,
            cpus: None,
            pids: None,
            network: None,
            drop_all_capabilities: true,
            no_new_privileges: true,
            read_only_root: false,
            nofile: None,
            nproc: None,
            cpu_seconds: None,
            address_space_bytes: None,
            user: None,
        }
    }
}

/// How an agent process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal (subprocess backend; containers report 128 + signal as a code).
    Signal(i32),
    /// The runtime did not report a status, for example because the container was removed
    /// while the engine waited.
    Unknown,
}

impl ExitStatus {
    /// Returns true for exit code 0.
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }

    /// Returns the exit code, or `128 + signal` for a signal, as shells and container runtimes
    /// report it.
    pub fn code(self) -> Option<i32> {
        match self {
            Self::Code(code) => Some(code),
            Self::Signal(signal) => Some(128 + signal),
            Self::Unknown => None,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit code {code}"),
            Self::Signal(signal) => write!(f, "killed by signal {signal}"),
            Self::Unknown => f.write_str("unknown exit status"),
        }
    }
}

/// Why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobEnd {
    /// The agent exited on its own.
    Exited,
    /// The deadline passed and the agent was killed.
    TimedOut,
    /// The job was cancelled and the agent was killed.
    Cancelled,
    /// The agent wrote more than the stdout cap and was killed.
    StdoutLimit,
}

/// What an agent did during one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// Why the run ended.
    pub end: JobEnd,
    /// Exit status of the agent process.
    pub exit: ExitStatus,
    /// Everything the agent wrote to stdout, up to the cap.
    #[serde(with = "lossy_bytes")]
    pub stdout: Vec<u8>,
    /// The last `stderr_tail_bytes` the agent wrote to stderr.
    #[serde(with = "lossy_bytes")]
    pub stderr_tail: Vec<u8>,
    /// Total number of bytes the agent wrote to stderr.
    pub stderr_total_bytes: u64,
    /// When the agent was started.
    pub started_at: SystemTime,
    /// Wall time from the start of [`Executor::run`](crate::Executor::run) until it returned.
    pub duration: Duration,
    /// Container id, for container backends.
    pub container_id: Option<String>,
}

impl JobOutcome {
    /// Returns the stderr tail as text, with invalid UTF-8 replaced.
    pub fn stderr_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr_tail)
    }
}

/// Stores byte buffers as UTF-8 text (lossy), which keeps job records readable in JSON.
mod lossy_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&String::from_utf8_lossy(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        String::deserialize(deserializer).map(String::into_bytes)
    }
}
