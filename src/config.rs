//! Configuration of the service (`agentrun serve`).
//!
//! Values come from these sources, each overriding the ones before it:
//!
//! 1. built-in defaults ([`Config::default`]);
//! 2. `/etc/agentrun/agentrun.toml` ([`SYSTEM_CONFIG_FILE`]), when it exists;
//! 3. `$XDG_CONFIG_HOME/agentrun/agentrun.toml` (`~/.config/agentrun/agentrun.toml` when
//!    `XDG_CONFIG_HOME` is unset), when it exists;
//! 4. the file given with `--config`, which must exist;
//! 5. `AGENTRUN_*` environment variables, with `__` between nested keys:
//!    `AGENTRUN_LISTEN__TCP=127.0.0.1:8080` sets `listen.tcp`. The variables in
//!    [`NON_CONFIG_ENV`] are not configuration keys and are skipped.
//!
//! Every table rejects unknown keys, so a misspelt key stops start-up with an error that names it
//! and where it came from. After merging, [`Config::validate`] checks the rules that serde cannot
//! express (ranges, a token for TCP, files that must exist) and names every key that breaks one.
//! `config/agentrun.toml` documents every key with its default and unit; a test keeps it equal to [`Config::default`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agentrun_executor::Limits;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::backends::{BackendsConfig, DockerConfig, PodmanConfig};
use crate::package::IntakeLimits;

pub use crate::backends::ExecutorKind;

/// The system-wide configuration file, read when it exists.
pub const SYSTEM_CONFIG_FILE: &str = "/etc/agentrun/agentrun.toml";
/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "AGENTRUN_";
/// `AGENTRUN_*` variables that are not configuration keys, lowercased and without the prefix.
/// `AGENTRUN_CONFIG` names the configuration file (the twin of `--config`). `AGENTRUN_LOG` sets
/// the log filter, and `AGENTRUN_LOG_FORMAT` is the twin of the CLI's `--log-format`.
/// `AGENTRUN_CLI_INSTANCE` is the twin of the CLI's `--instance`, and
/// `AGENTRUN_REQUIRE_RUNTIMES` belongs to the test suite.
pub const NON_CONFIG_ENV: &[&str] = &[
    "cli_instance",
    "config",
    "log",
    "log_format",
    "require_runtimes",
];

/// Default for [`Config::data_dir`].
pub const DEFAULT_DATA_DIR: &str = "/var/lib/agentrun";
/// Default for [`ListenConfig::unix`].
pub const DEFAULT_UNIX_SOCKET: &str = "/run/agentrun/agentrun.sock";
/// Default for [`Config::shutdown_grace_secs`].
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
/// Default for [`JobsConfig::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Default for [`JobsConfig::per_integration`].
pub const DEFAULT_PER_INTEGRATION: usize = 4;
/// Default for [`JobsConfig::timeout_secs`].
pub const DEFAULT_JOB_TIMEOUT_SECS: u64 = 60;
/// Default for [`JobsConfig::max_queued`].
pub const DEFAULT_MAX_QUEUED: u64 = 100_000;
/// Default for [`JobsConfig::wait_timeout_secs`].
pub const DEFAULT_WAIT_TIMEOUT_SECS: u64 = 120;
/// Default for [`ApiConfig::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default for [`ApiConfig::request_timeout_secs`].
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 300;
/// Default for [`ApiConfig::header_read_timeout_secs`].
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;
/// Default for [`ApiConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default for [`HealthConfig::interval_secs`].
pub const DEFAULT_HEALTH_INTERVAL_SECS: u64 = 300;
/// Default for [`HealthConfig::timeout_secs`].
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u64 = 10;
/// Minimum length of the API's bearer token, in characters.
pub const MIN_TOKEN_CHARS: usize = 16;
/// Maximum job or health-check deadline the configuration accepts, in seconds (one day).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// The service configuration. See the [module documentation](self) for where values come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Backend that runs agents. Default `docker`.
    pub executor: ExecutorKind,
    /// Folder for the database, the unpacked packages and a generated secrets key. Must be an
    /// absolute path. Default [`DEFAULT_DATA_DIR`].
    pub data_dir: PathBuf,
    /// Seconds that running jobs get to finish after SIGTERM or SIGINT before they are
    /// cancelled. Default 30.
    pub shutdown_grace_secs: u64,
    /// Listener addresses of the API.
    pub listen: ListenConfig,
    /// The worker pool and job defaults.
    pub jobs: JobsConfig,
    /// Limits on API requests.
    pub api: ApiConfig,
    /// Limits on uploaded packages.
    pub intake: IntakeLimits,
    /// Periodic health checks.
    pub health: HealthConfig,
    /// Encryption of stored env values.
    pub secrets: SecretsConfig,
    /// Log output.
    pub log: LogConfig,
    /// Resource limits and hardening options for every agent.
    pub limits: Limits,
    /// The subprocess backend.
    pub subprocess: agentrun_subprocess::SubprocessConfig,
    /// The Docker backend.
    pub docker: DockerConfig,
    /// The Podman backend.
    pub podman: PodmanConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            executor: ExecutorKind::Docker,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            listen: ListenConfig::default(),
            jobs: JobsConfig::default(),
            api: ApiConfig::default(),
            intake: IntakeLimits::default(),
            health: HealthConfig::default(),
            secrets: SecretsConfig::default(),
            log: LogConfig::default(),
            limits: Limits::default(),
            subprocess: agentrun_subprocess::SubprocessConfig::default(),
            docker: DockerConfig::default(),
            podman: PodmanConfig::default(),
        }
    }
}

/// The `[listen]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Path of the Unix socket, created with mode 0660. An empty path disables it. Default
    /// [`DEFAULT_UNIX_SOCKET`].
    pub unix: PathBuf,
    /// TCP address, such as `127.0.0.1:8080`. Default: none, so the service listens on the Unix
    /// socket only. TCP clients must send `Authorization: Bearer <token>`.
    pub tcp: Option<SocketAddr>,
    /// Bearer token for TCP clients. Required when `tcp` is set. Prefer `token_file`, which
    /// keeps the token out of the configuration file and the environment.
    pub token: Option<String>,
    /// File whose content (surrounding whitespace trimmed) is the bearer token.
    pub token_file: Option<PathBuf>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            unix: PathBuf::from(DEFAULT_UNIX_SOCKET),
            tcp: None,
            token: None,
            token_file: None,
        }
    }
}

/// The `[jobs]` table: the worker pool and the defaults of every job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Maximum number of jobs running at once, over all integrations. Default 8.
    pub concurrency: usize,
    /// Maximum number of jobs of one integration running at once. Default 4. A value above
    /// `concurrency` is allowed and has the effect of `concurrency`, so lowering `concurrency`
    /// alone never makes the configuration invalid.
    pub per_integration: usize,
    /// Deadline of one job in seconds, unless the manifest's `[run] timeout_secs` sets one.
    /// Default 60.
    pub timeout_secs: u64,
    /// Cap on an agent's stdout, in bytes. Default 1 MiB.
    pub max_stdout_bytes: usize,
    /// Maximum size of a work message after keyword substitution, in bytes. A larger job gets
    /// 422 at submission. Default 16 MiB.
    pub max_message_bytes: usize,
    /// Trailing bytes of an agent's stderr kept with each job. Default 16 KiB.
    pub stderr_tail_bytes: usize,
    /// Stderr lines quoted in a job's error text. Default 10.
    pub stderr_tail_lines: usize,
    /// Maximum number of queued jobs; a submission past it gets 503. Default 100,000.
    pub max_queued: u64,
    /// Maximum time a `?wait=true` request waits for its job, in seconds. After it the request
    /// returns 202 with the job id. Default 120.
    pub wait_timeout_secs: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            per_integration: DEFAULT_PER_INTEGRATION,
            timeout_secs: DEFAULT_JOB_TIMEOUT_SECS,
            max_stdout_bytes: agentrun_executor::DEFAULT_MAX_STDOUT_BYTES,
            max_message_bytes: crate::dispatcher::DEFAULT_MAX_MESSAGE_BYTES,
            stderr_tail_bytes: agentrun_executor::DEFAULT_STDERR_TAIL_BYTES,
            stderr_tail_lines: crate::dispatcher::DEFAULT_STDERR_TAIL_LINES,
            max_queued: DEFAULT_MAX_QUEUED,
            wait_timeout_secs: DEFAULT_WAIT_TIMEOUT_SECS,
        }
    }
}

impl JobsConfig {
    /// Returns the default job deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// The `[api]` table: limits on requests. Package uploads are limited by
/// `intake.max_archive_bytes` instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Maximum size of a JSON request body, in bytes; larger bodies get 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Maximum time one request may take, in seconds, uploads and `?wait=true` included. A
    /// slower request gets 408. Default 300.
    pub request_timeout_secs: u64,
    /// Maximum time a client may take to send a request's headers, in seconds; the connection
    /// is closed after it. Default 30.
    pub header_read_timeout_secs: u64,
    /// Maximum number of open connections per listener; more are closed at once. Default 1024.
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            header_read_timeout_secs: DEFAULT_HEADER_READ_TIMEOUT_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The `[health]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Seconds between two `describe` checks of one integration; 0 turns periodic checks off.
    /// Default 300.
    pub interval_secs: u64,
    /// Deadline of one check in seconds. Default 10.
    pub timeout_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_secs: DEFAULT_HEALTH_INTERVAL_SECS,
            timeout_secs: DEFAULT_HEALTH_TIMEOUT_SECS,
        }
    }
}

/// The `[secrets]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// File holding the 32-byte key that encrypts stored env values: 32 raw bytes, or 64 hex
    /// digits. Default: none, so the service uses the systemd credential `agentrun-key` when
    /// `$CREDENTIALS_DIRECTORY` is set, and otherwise a key file it generates in the data
    /// folder (`<data_dir>/secrets.key`, mode 0600).
    pub key_file: Option<PathBuf>,
}

/// The `[log]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`; under systemd the text has no timestamps, since the
    /// journal adds its own.
    pub format: LogFormat,
    /// Filter in `tracing-subscriber`'s `EnvFilter` syntax, such as `info` or
    /// `agentrun=debug,info`. The `AGENTRUN_LOG` variable overrides it. Default `info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The files that [`Config::load`] reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigPaths {
    /// The system-wide file, skipped when missing.
    pub system: PathBuf,
    /// The user's file, skipped when missing.
    pub user: Option<PathBuf>,
    /// The file given with `--config`, which must exist.
    pub explicit: Option<PathBuf>,
}

impl ConfigPaths {
    /// Returns the standard paths: [`SYSTEM_CONFIG_FILE`], the XDG user file, and `explicit`.
    pub fn standard(explicit: Option<PathBuf>) -> Self {
        let user_dir = match std::env::var_os("XDG_CONFIG_HOME") {
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join(".config")),
        };
        Self {
            system: PathBuf::from(SYSTEM_CONFIG_FILE),
            user: user_dir.map(|dir| dir.join("agentrun").join("agentrun.toml")),
            explicit,
        }
    }
}

/// A failure to load the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file given with `--config` does not exist.
    #[error("configuration file {} not found: check the --config path", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },

    /// A source has a syntax error, an unknown key or a value of the wrong type.
    #[error("invalid configuration:{}", messages.iter().map(|message| format!("\n  {message}")).collect::<String>())]
    Parse {
        /// One message per problem, each naming the key and its source.
        messages: Vec<String>,
    },

    /// Values break rules that their types cannot express.
    #[error("invalid configuration:{}", problems.iter().map(|problem| format!("\n  {problem}")).collect::<String>())]
    Invalid {
        /// Every broken rule, in the order of the configuration's tables.
        problems: Vec<ConfigProblem>,
    },

    /// The token file could not be read.
    #[error("reading the token file {} (listen.token_file) failed", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// One broken rule of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {rule}")]
pub struct ConfigProblem {
    /// Key path, such as `jobs.concurrency`.
    pub key: String,
    /// The rule, with the value that broke it.
    pub rule: String,
}

impl ConfigError {
    /// Returns the keys of the broken rules of a [`ConfigError::Invalid`] error, else nothing.
    pub fn invalid_keys(&self) -> Vec<&str> {
        match self {
            Self::Invalid { problems } => problems
                .iter()
                .map(|problem| problem.key.as_str())
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Config {
    /// Loads the configuration from the standard sources and validates it.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, variable or key at fault.
    pub fn load(explicit: Option<PathBuf>) -> Result<Self, ConfigError> {
        Self::load_from(&ConfigPaths::standard(explicit))
    }

    /// Loads the configuration from `paths` and the environment, and validates it.
    ///
    /// # Errors
    ///
    /// As for [`Config::load`].
    pub fn load_from(paths: &ConfigPaths) -> Result<Self, ConfigError> {
        if let Some(path) = &paths.explicit {
            if !path.is_file() {
                return Err(ConfigError::NotFound { path: path.clone() });
            }
        }
        let mut figment =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(&paths.system));
        if let Some(user) = &paths.user {
            figment = figment.merge(Toml::file(user));
        }
        if let Some(explicit) = &paths.explicit {
            figment = figment.merge(Toml::file_exact(explicit));
        }
        let figment = figment.merge(Env::prefixed(ENV_PREFIX).ignore(NON_CONFIG_ENV).split("__"));

        let config: Config = figment.extract().map_err(|error| ConfigError::Parse {
            messages: figment_messages(&figment, error),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses one TOML document over the defaults, without other sources, and validates it.
    ///
    /// # Errors
    ///
    /// As for [`Config::load`].
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let figment =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        let config: Config = figment.extract().map_err(|error| ConfigError::Parse {
            messages: figment_messages(&figment, error),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules that the types do not express, and reads the files that the
    /// configuration names (the token file and the secrets key), so that a configuration that
    /// passes `--check-config` also starts.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] listing every key that breaks a rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut add = |key: &str, rule: String| {
            problems.push(ConfigProblem {
                key: key.to_owned(),
                rule,
            })
        };

        if !self.data_dir.is_absolute() {
            add(
                "data_dir",
                format!(
                    "{:?} is relative; give an absolute path, such as {DEFAULT_DATA_DIR}",
                    self.data_dir
                ),
            );
        }
        self.check_listen(&mut add);
        self.check_jobs(&mut add);
        self.check_intake(&mut add);
        self.check_limits(&mut add);
        self.check_backends(&mut add);
        if let Some(path) = &self.secrets.key_file {
            if let Err(rule) = check_key_file(path) {
                add("secrets.key_file", rule);
            }
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            add(
                "log.filter",
                format!(
                    "{:?} is not a valid filter: {error}; give one such as info or \
                     agentrun=debug,info",
                    self.log.filter
                ),
            );
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    fn check_listen(&self, add: &mut impl FnMut(&str, String)) {
        if self.listen.unix.as_os_str().is_empty() && self.listen.tcp.is_none() {
            add(
                "listen",
                "both listen.unix and listen.tcp are unset, so the API would not be reachable; \
                 set at least one"
                    .to_owned(),
            );
        }
        // Checked again when binding; checking here stops the service before it writes
        // anything, and lets --check-config report it.
        let unix = &self.listen.unix;
        if !unix.as_os_str().is_empty() {
            if let Ok(metadata) = std::fs::symlink_metadata(unix) {
                if !std::os::unix::fs::FileTypeExt::is_socket(&metadata.file_type()) {
                    add(
                        "listen.unix",
                        format!(
                            "{} exists and is not a socket: remove that file or set listen.unix \
                             to another path",
                            unix.display()
                        ),
                    );
                }
            }
        }
        if self.listen.token.is_some() && self.listen.token_file.is_some() {
            add(
                "listen.token",
                "listen.token and listen.token_file are both set; set only one".to_owned(),
            );
        }
        if let Some(token) = &self.listen.token {
            if let Err(rule) = check_token(token) {
                add("listen.token", rule);
            }
        }
        if let Some(path) = &self.listen.token_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    if let Err(rule) = check_token(&text) {
                        add("listen.token_file", format!("{}: {rule}", path.display()));
                    }
                }
                Err(error) => add(
                    "listen.token_file",
                    format!(
                        "reading {} failed: {error}; check the path and that the service user \
                         may read it",
                        path.display()
                    ),
                ),
            }
        }
        if let Some(tcp) = self.listen.tcp {
            if self.listen.token.is_none() && self.listen.token_file.is_none() {
                add(
                    "listen.tcp",
                    format!(
                        "listening on TCP ({tcp}) requires a bearer token, because any local or \
                         remote process could otherwise register and run agents; set \
                         listen.token_file or listen.token"
                    ),
                );
            }
        }
    }

    fn check_jobs(&self, add: &mut impl FnMut(&str, String)) {
        let jobs = &self.jobs;
        check_at_least_one(add, "jobs.concurrency", jobs.concurrency);
        check_at_least_one(add, "jobs.per_integration", jobs.per_integration);
        check_timeout(add, "jobs.timeout_secs", jobs.timeout_secs);
        check_timeout(add, "health.timeout_secs", self.health.timeout_secs);
        check_at_least_one(add, "jobs.max_stdout_bytes", jobs.max_stdout_bytes);
        check_at_least_one(add, "jobs.max_message_bytes", jobs.max_message_bytes);
        check_at_least_one(add, "jobs.max_queued", jobs.max_queued);
        check_at_least_one(add, "api.max_body_bytes", self.api.max_body_bytes);
        check_at_least_one(
            add,
            "api.request_timeout_secs",
            self.api.request_timeout_secs,
        );
        check_at_least_one(
            add,
            "api.header_read_timeout_secs",
            self.api.header_read_timeout_secs,
        );
        check_at_least_one(add, "api.max_connections", self.api.max_connections);
        if jobs.wait_timeout_secs > self.api.request_timeout_secs {
            add(
                "jobs.wait_timeout_secs",
                format!(
                    "{} is more than api.request_timeout_secs ({}), so a ?wait=true request \
                     would time out with 408 before its wait ends; give at most {}",
                    jobs.wait_timeout_secs,
                    self.api.request_timeout_secs,
                    self.api.request_timeout_secs
                ),
            );
        }
    }

    fn check_intake(&self, add: &mut impl FnMut(&str, String)) {
        let intake = &self.intake;
        check_at_least_one(add, "intake.max_archive_bytes", intake.max_archive_bytes);
        check_at_least_one(add, "intake.max_entries", intake.max_entries);
        check_at_least_one(add, "intake.max_unpacked_bytes", intake.max_unpacked_bytes);
        check_at_least_one(add, "intake.max_ratio", intake.max_ratio);
    }

    fn check_limits(&self, add: &mut impl FnMut(&str, String)) {
        let limits = &self.limits;
        if let Some(cpus) = limits.cpus {
            if !(cpus.is_finite() && cpus > 0.0) {
                add(
                    "limits.cpus",
                    format!("{cpus} is not a positive number of cores; give one such as 0.5 or 2"),
                );
            }
        }
        if limits.memory_bytes == Some(0) {
            add(
                "limits.memory_bytes",
                "0 is too small; give a size in bytes such as 268435456 (256 MiB), or remove \
                 the key for no limit"
                    .to_owned(),
            );
        }
        if let Some(pids) = limits.pids {
            if pids < 1 {
                add(
                    "limits.pids",
                    format!(
                        "{pids} is too small; give a number of processes such as 64, or remove \
                         the key for no limit"
                    ),
                );
            }
        }
        // Container backends resolve the user inside the image, so only the subprocess backend
        // needs it on this host.
        if self.executor == ExecutorKind::Subprocess {
            if let Some(user) = &limits.user {
                if let Err(rule) = check_user(user) {
                    add("limits.user", rule);
                }
            }
        }
    }

    fn check_backends(&self, add: &mut impl FnMut(&str, String)) {
        if let Some(state) = &self.subprocess.state_dir {
            if !state.is_absolute() {
                add(
                    "subprocess.state_dir",
                    format!(
                        "{state:?} is relative; give an absolute path, such as \
                         /var/lib/agentrun/run"
                    ),
                );
            }
        }
        if let Some(parent) = &self.subprocess.home_parent {
            if !parent.is_absolute() {
                add(
                    "subprocess.home_parent",
                    format!("{parent:?} is relative; give an absolute path, such as /var/tmp"),
                );
            } else if self.executor == ExecutorKind::Subprocess && !parent.is_dir() {
                add(
                    "subprocess.home_parent",
                    format!(
                        "{} is not an existing folder; create it or give another path",
                        parent.display()
                    ),
                );
            }
        }
        #[cfg(feature = "docker")]
        if let Some(host) = &self.docker.host {
            const SCHEMES: [&str; 3] = ["unix://", "tcp://", "http://"];
            if !SCHEMES.iter().any(|scheme| host.starts_with(scheme)) {
                add(
                    "docker.host",
                    format!(
                        "{host:?} has an unknown scheme; give unix:///var/run/docker.sock, \
                         tcp://host:port or http://host:port"
                    ),
                );
            }
        }
    }

    /// Returns the TCP bearer token from `listen.token` or `listen.token_file`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::TokenFile`] when the file cannot be read, and [`ConfigError::Invalid`]
    /// when it is empty.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(token) = &self.listen.token {
            return Ok(Some(token.trim().to_owned()));
        }
        let Some(path) = &self.listen.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile {
            path: path.clone(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(invalid(
                "listen.token_file",
                format!(
                    "{} is empty; write a long random value into it",
                    path.display()
                ),
            ));
        }
        Ok(Some(token.to_owned()))
    }

    /// Returns the backend sections, for [`crate::backends::connect`].
    pub fn backends(&self) -> BackendsConfig {
        BackendsConfig {
            subprocess: self.subprocess.clone(),
            docker: self.docker.clone(),
            podman: self.podman.clone(),
        }
    }

    /// Returns the database file: `<data_dir>/agentrun.db`.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("agentrun.db")
    }

    /// Returns the folder of unpacked packages: `<data_dir>/packages`.
    pub fn packages_dir(&self) -> PathBuf {
        self.data_dir.join("packages")
    }

    /// Returns the folder for uploads in progress: `<data_dir>/tmp`.
    pub fn temp_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }

    /// Returns the path of the key file the service generates when none is configured.
    pub fn generated_key_path(&self) -> PathBuf {
        self.data_dir.join("secrets.key")
    }

    /// Returns the configuration as TOML with the token replaced, for `--check-config`.
    ///
    /// # Errors
    ///
    /// When TOML cannot represent a value, which the types here rule out.
    pub fn to_redacted_toml(&self) -> Result<String, toml::ser::Error> {
        let mut redacted = self.clone();
        if redacted.listen.token.is_some() {
            redacted.listen.token = Some("<redacted>".to_owned());
        }
        toml::to_string(&redacted)
    }
}

/// Returns one message per figment error: the key and its source (the file, or the
/// `AGENTRUN_*` variable), the problem in plain type words, and the value where `figment` has
/// one, since figment's own texts name Rust types and nest backticks.
fn figment_messages(figment: &Figment, error: figment::Error) -> Vec<String> {
    error
        .into_iter()
        .map(|error| {
            let key = error.path.join(".");
            let from_env = error
                .metadata
                .as_ref()
                .is_some_and(|metadata| metadata.name.contains("environment"));
            let file = error
                .metadata
                .as_ref()
                .and_then(|metadata| metadata.source.as_ref())
                .and_then(|source| source.file_path())
                .map(|path| path.display().to_string());
            let subject = match (from_env, file, key.is_empty()) {
                (true, _, false) => format!(
                    "{ENV_PREFIX}{} ({key})",
                    error.path.join("__").to_ascii_uppercase()
                ),
                (true, _, true) => format!("the {ENV_PREFIX}* environment variables"),
                (false, Some(file), false) => format!("{key} in {file}"),
                (false, Some(file), true) => file,
                (false, None, false) => key.clone(),
                (false, None, true) => "the configuration".to_owned(),
            };
            let value = figment
                .find_value(&key)
                .ok()
                .filter(|_| !key.is_empty())
                .and_then(|value| serde_json::to_string(&value).ok());
            format!("{subject}: {}", describe_kind(&error.kind, value))
        })
        .collect()
}

/// Describes a figment error kind in plain words, with the value found when it is known.
fn describe_kind(kind: &figment::error::Kind, value: Option<String>) -> String {
    use figment::error::Kind;

    let found = |actual: &figment::error::Actual| match value.clone() {
        Some(value) => value,
        None => actual.to_string().replace('`', ""),
    };
    match kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("expected {}, found {}", type_words(expected), found(actual))
        }
        Kind::UnknownField(field, known) => {
            format!("unknown key {field:?}; known keys: {}", known.join(", "))
        }
        Kind::UnknownVariant(variant, known) => {
            format!(
                "unknown value {variant:?}; expected one of {}",
                known.join(", ")
            )
        }
        Kind::Message(message) => {
            let message = message.replace('`', "");
            match (value, message.contains("socket address")) {
                (Some(value), true) => format!(
                    "{message}, found {value}; give an IP address and a port from 1 to 65535, \
                     such as 127.0.0.1:8080"
                ),
                (Some(value), false) => format!("{message}, found {value}"),
                (None, _) => message,
            }
        }
        other => other.to_string().replace('`', ""),
    }
}

/// Turns the type names in serde's "expected" texts into plain words.
fn type_words(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "a table".to_owned(),
        other if other.starts_with("struct ") => "a table".to_owned(),
        other => other.replace('`', ""),
    }
}

fn invalid(key: &str, rule: String) -> ConfigError {
    ConfigError::Invalid {
        problems: vec![ConfigProblem {
            key: key.to_owned(),
            rule,
        }],
    }
}

fn check_at_least_one<T: PartialOrd + From<u8> + std::fmt::Display>(
    add: &mut impl FnMut(&str, String),
    key: &str,
    value: T,
) {
    if value < T::from(1) {
        add(key, format!("{value} is too small; the minimum is 1"));
    }
}

fn check_timeout(add: &mut impl FnMut(&str, String), key: &str, value: u64) {
    if !(1..=MAX_TIMEOUT_SECS).contains(&value) {
        add(
            key,
            format!("{value} is out of range; give 1 to {MAX_TIMEOUT_SECS} seconds"),
        );
    }
}

/// Checks a bearer token's length, returning the rule it breaks.
fn check_token(token: &str) -> Result<(), String> {
    let length = token.trim().chars().count();
    if length == 0 {
        return Err(
            "the token is empty; set a long random value, such as the output of \
                    openssl rand -hex 32"
                .to_owned(),
        );
    }
    if length < MIN_TOKEN_CHARS {
        let unit = if length == 1 {
            "character"
        } else {
            "characters"
        };
        return Err(format!(
            "the token has {length} {unit}; the minimum is {MIN_TOKEN_CHARS}, so set a long \
             random value, such as the output of openssl rand -hex 32"
        ));
    }
    Ok(())
}

/// Reads the secrets key file and checks its format, returning the rule it breaks.
fn check_key_file(path: &std::path::Path) -> Result<(), String> {
    let material = std::fs::read(path).map_err(|error| {
        format!(
            "reading {} failed: {error}; check the path and that the service user may read it",
            path.display()
        )
    })?;
    crate::store::EnvCipher::from_key_material(&material).map_err(|error| {
        format!(
            "{}: {error}; write one with openssl rand -hex 32",
            path.display()
        )
    })?;
    Ok(())
}

/// Checks that a `NAME`, `UID`, `NAME:GROUP` or `UID:GID` user exists on this host, returning
/// the rule it breaks. A number needs no entry in the user database.
fn check_user(spec: &str) -> Result<(), String> {
    use nix::unistd::{Group, User};

    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user.trim(), Some(group.trim())),
        None => (spec.trim(), None),
    };
    let user_known = user.parse::<u32>().is_ok() || matches!(User::from_name(user), Ok(Some(_)));
    if user.is_empty() || !user_known {
        return Err(format!(
            "user {user:?} does not exist on this host; give an existing user name or a uid, \
             such as nobody or 65534"
        ));
    }
    if let Some(group) = group {
        let group_known =
            group.parse::<u32>().is_ok() || matches!(Group::from_name(group), Ok(Some(_)));
        if group.is_empty() || !group_known {
            return Err(format!(
                "group {group:?} of {spec:?} does not exist on this host; give an existing \
                 group name or a gid"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped, fully commented file parses to exactly the built-in defaults.
    #[test]
    fn shipped_file_equals_defaults() {
        let text = include_str!("../config/agentrun.toml");
        let config = Config::from_toml_str(text).expect("config/agentrun.toml is valid");
        assert_eq!(config, Config::default());
    }

    /// Every key of the defaults appears in the shipped file, commented or set.
    #[test]
    fn shipped_file_documents_every_key() {
        let text = include_str!("../config/agentrun.toml");
        let defaults = toml::Value::try_from(Config::default()).expect("defaults serialise");
        let mut missing = Vec::new();
        collect_missing(&defaults, "", text, &mut missing);
        for key in [
            "listen.tcp",
            "listen.token",
            "listen.token_file",
            "secrets.key_file",
            "limits.memory_bytes",
            "limits.user",
            "subprocess.home_parent",
            "docker.host",
            "docker.network",
            "docker.log_driver",
            "podman.socket",
            "podman.runtime",
            "podman.network",
            "ulimits.nofile",
            "ulimits.nproc",
        ] {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            if !text.contains(&format!("{leaf} =")) {
                missing.push(key.to_owned());
            }
        }
        assert!(missing.is_empty(), "undocumented keys: {missing:?}");
    }

    fn collect_missing(value: &toml::Value, prefix: &str, text: &str, missing: &mut Vec<String>) {
        if let toml::Value::Table(table) = value {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                if value.is_table() {
                    if !text.contains(&format!("[{path}]")) {
                        missing.push(path.clone());
                    }
                    collect_missing(value, &path, text, missing);
                } else if !text.contains(&format!("{key} =")) {
                    missing.push(path);
                }
            }
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let error = Config::from_toml_str("[jobs]\nconcurency = 3\n").expect_err("typo");
        let text = error.to_string();
        assert!(text.contains("concurency"), "{text}");
    }

    #[test]
    fn bad_value_type_is_named() {
        let error = Config::from_toml_str("[jobs]\nconcurrency = \"many\"\n").expect_err("type");
        let text = error.to_string();
        assert!(text.contains("jobs.concurrency"), "{text}");
    }

    #[test]
    fn unknown_executor_is_rejected() {
        let error = Config::from_toml_str("executor = \"lxc\"\n").expect_err("variant");
        let text = error.to_string();
        assert!(text.contains("lxc"), "{text}");
        assert!(text.contains("subprocess"), "{text}");
    }

    #[test]
    fn tcp_without_token_is_rejected() {
        let error =
            Config::from_toml_str("[listen]\ntcp = \"127.0.0.1:8080\"\n").expect_err("no token");
        assert!(error.invalid_keys() == ["listen.tcp"], "{error}");
        assert!(
            error.to_string().contains("requires a bearer token"),
            "{error}"
        );
    }

    #[test]
    fn tcp_with_token_is_accepted() {
        let config = Config::from_toml_str(
            "[listen]\ntcp = \"127.0.0.1:8080\"\ntoken = \"0123456789abcdef\"\n",
        )
        .expect("valid");
        assert_eq!(
            config.listen.tcp,
            Some("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(
            config.token().expect("token"),
            Some("0123456789abcdef".to_owned())
        );
    }

    /// Every broken rule is reported in one run, in the order of the tables.
    #[test]
    fn every_problem_is_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = dir.path().join("short.key");
        std::fs::write(&key_file, [7u8; 31]).expect("write key");
        let text = format!(
            "executor = \"subprocess\"\ndata_dir = \"data\"\n\
             [listen]\ntcp = \"127.0.0.1:8080\"\ntoken = \"short\"\n\
             [jobs]\nconcurrency = 2\nper_integration = 0\nwait_timeout_secs = 400\n\
             [intake]\nmax_entries = 0\nmax_ratio = 0\n\
             [limits]\ncpus = nan\nmemory_bytes = 0\npids = 0\nuser = \"no-such-user-x\"\n\
             [subprocess]\nhome_parent = \"relative/homes\"\n\
             [docker]\nhost = \"ftp://x\"\n\
             [secrets]\nkey_file = {:?}\n",
            key_file.display().to_string()
        );
        let error = Config::from_toml_str(&text).expect_err("invalid");
        assert_eq!(
            error.invalid_keys(),
            [
                "data_dir",
                "listen.token",
                "jobs.per_integration",
                "jobs.wait_timeout_secs",
                "intake.max_entries",
                "intake.max_ratio",
                "limits.cpus",
                "limits.memory_bytes",
                "limits.pids",
                "limits.user",
                "subprocess.home_parent",
                "docker.host",
                "secrets.key_file",
            ],
            "{error}"
        );
        let text = error.to_string();
        assert!(
            text.contains("the token has 5 characters; the minimum is 16"),
            "{text}"
        );
        assert!(text.contains("\"no-such-user-x\" does not exist"), "{text}");
        assert!(text.contains("found 31 bytes"), "{text}");
        assert!(text.contains("\"ftp://x\" has an unknown scheme"), "{text}");
    }

    /// A relative `subprocess.state_dir` would depend on the working folder, so it is rejected.
    #[test]
    fn relative_state_dir_is_rejected() {
        let text = "executor = \"subprocess\"\n[subprocess]\nstate_dir = \"run\"\n";
        let error = Config::from_toml_str(text).expect_err("invalid");
        assert_eq!(error.invalid_keys(), ["subprocess.state_dir"], "{error}");
        assert!(
            error
                .to_string()
                .contains("\"run\" is relative; give an absolute path"),
            "{error}"
        );
    }

    /// A `listen.unix` path taken by a regular file is reported by validation, before start-up
    /// writes anything.
    #[test]
    fn listen_unix_over_regular_file_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "keep me").expect("write");
        let text = format!(
            "executor = \"subprocess\"\n[listen]\nunix = {:?}\n",
            file.display().to_string()
        );
        let error = Config::from_toml_str(&text).expect_err("invalid");
        assert_eq!(error.invalid_keys(), ["listen.unix"], "{error}");
        assert!(
            error
                .to_string()
                .contains("notes.txt exists and is not a socket"),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");
    }

    /// Lowering `concurrency` below the default `per_integration` keeps the configuration valid:
    /// the per-integration limit then has the effect of `concurrency`.
    #[test]
    fn concurrency_below_default_per_integration_is_valid() {
        let config = Config::from_toml_str("executor = \"subprocess\"\n[jobs]\nconcurrency = 2\n")
            .expect("valid");
        assert_eq!(config.jobs.concurrency, 2);
        assert_eq!(config.jobs.per_integration, DEFAULT_PER_INTEGRATION);
    }

    /// Files that the configuration names must exist when they are checked.
    #[test]
    fn missing_files_are_rejected() {
        let text = "executor = \"subprocess\"\n\
                    [listen]\ntoken_file = \"/nonexistent/token\"\n\
                    [limits]\ncpus = -1.0\n\
                    [subprocess]\nhome_parent = \"/nonexistent/homes\"\n\
                    [secrets]\nkey_file = \"/nonexistent/key\"\n";
        let error = Config::from_toml_str(text).expect_err("invalid");
        assert_eq!(
            error.invalid_keys(),
            [
                "listen.token_file",
                "limits.cpus",
                "subprocess.home_parent",
                "secrets.key_file",
            ],
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("reading /nonexistent/key failed: No such file or directory"),
            "{error}"
        );
    }

    #[test]
    fn zero_concurrency_is_rejected() {
        let error = Config::from_toml_str("[jobs]\nconcurrency = 0\n").expect_err("zero");
        assert!(error.invalid_keys() == ["jobs.concurrency"], "{error}");
    }

    #[test]
    fn timeout_out_of_range_is_rejected() {
        let error = Config::from_toml_str("[jobs]\ntimeout_secs = 0\n").expect_err("zero");
        assert!(error.invalid_keys() == ["jobs.timeout_secs"], "{error}");
    }

    #[test]
    fn relative_data_dir_is_rejected() {
        let error = Config::from_toml_str("data_dir = \"data\"\n").expect_err("relative");
        assert!(error.invalid_keys() == ["data_dir"], "{error}");
    }

    #[test]
    fn invalid_log_filter_is_rejected() {
        let error = Config::from_toml_str("[log]\nfilter = \"[[\"\n").expect_err("filter");
        assert!(error.invalid_keys() == ["log.filter"], "{error}");
    }

    #[test]
    fn missing_explicit_file_is_rejected() {
        let paths = ConfigPaths {
            system: PathBuf::from("/nonexistent/agentrun.toml"),
            user: None,
            explicit: Some(PathBuf::from("/nonexistent/explicit.toml")),
        };
        let error = Config::load_from(&paths).expect_err("missing file");
        assert!(matches!(error, ConfigError::NotFound { .. }), "{error}");
    }

    /// Missing system and user files are skipped.
    #[test]
    fn missing_optional_files_are_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let explicit = dir.path().join("explicit.toml");
        std::fs::write(&explicit, "[jobs]\nconcurrency = 5\n").expect("write");
        let paths = ConfigPaths {
            system: dir.path().join("missing-system.toml"),
            user: Some(dir.path().join("missing-user.toml")),
            explicit: Some(explicit),
        };
        let config = Config::load_from(&paths).expect("valid");
        assert_eq!(config.jobs.concurrency, 5);
    }

    #[test]
    fn files_override_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let system = dir.path().join("system.toml");
        let user = dir.path().join("user.toml");
        let explicit = dir.path().join("explicit.toml");
        std::fs::write(
            &system,
            "shutdown_grace_secs = 1\n[jobs]\nconcurrency = 1\nper_integration = 1\n",
        )
        .expect("write");
        std::fs::write(&user, "[jobs]\nconcurrency = 2\nper_integration = 2\n").expect("write");
        std::fs::write(&explicit, "[jobs]\nconcurrency = 3\n").expect("write");
        let paths = ConfigPaths {
            system,
            user: Some(user),
            explicit: Some(explicit),
        };
        let config = Config::load_from(&paths).expect("valid");
        assert_eq!(config.shutdown_grace_secs, 1);
        assert_eq!(config.jobs.per_integration, 2);
        assert_eq!(config.jobs.concurrency, 3);
    }

    #[test]
    fn redacted_toml_hides_token() {
        let config = Config::from_toml_str("[listen]\ntoken = \"s3cret-token-0123456789\"\n")
            .expect("valid");
        let text = config.to_redacted_toml().expect("serialises");
        assert!(!text.contains("s3cret-token"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
