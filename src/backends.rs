//! Choosing and connecting an executor backend by name.
//!
//! The subprocess backend is always built in. Docker and Podman are cargo features (`docker`,
//! `podman`, both on by default); when one is compiled out, selecting it fails with
//! [`ExecutorError::NotCompiled`] naming the feature, and its configuration section is accepted
//! and ignored so that one configuration file serves every build.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use agentrun_executor::{Executor, ExecutorError};
use agentrun_subprocess::{SubprocessConfig, SubprocessExecutor};
use serde::{Deserialize, Serialize};

#[cfg(feature = "docker")]
pub use agentrun_docker::DockerConfig;
#[cfg(feature = "podman")]
pub use agentrun_podman::PodmanConfig;

/// Stand-in configuration for a backend that is compiled out: any table is accepted.
#[cfg(not(all(feature = "docker", feature = "podman")))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CompiledOutConfig(pub serde_json::Map<String, serde_json::Value>);

/// Configuration of the Docker backend (compiled out of this build).
#[cfg(not(feature = "docker"))]
pub type DockerConfig = CompiledOutConfig;
/// Configuration of the Podman backend (compiled out of this build).
#[cfg(not(feature = "podman"))]
pub type PodmanConfig = CompiledOutConfig;

/// The executor backends agentrun can run agents on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// Plain child processes: no isolation, no runtime needed.
    #[default]
    Subprocess,
    /// Docker containers, through the Engine API.
    Docker,
    /// Podman containers, through the libpod API.
    Podman,
}

impl ExecutorKind {
    /// Every backend, in the order the docs list them.
    pub const ALL: [Self; 3] = [Self::Subprocess, Self::Docker, Self::Podman];

    /// Returns the backend's name as used in flags and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subprocess => "subprocess",
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }

    /// Returns true for the backends that run agents in containers.
    pub fn is_container(self) -> bool {
        !matches!(self, Self::Subprocess)
    }
}

impl fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExecutorKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                format!("unknown executor {text:?}; expected one of subprocess, docker, podman")
            })
    }
}

/// Settings of every backend, one section each (`[subprocess]`, `[docker]`, `[podman]` in the
/// configuration file).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendsConfig {
    /// Subprocess backend settings.
    pub subprocess: SubprocessConfig,
    /// Docker backend settings.
    pub docker: DockerConfig,
    /// Podman backend settings.
    pub podman: PodmanConfig,
}

impl BackendsConfig {
    /// Returns the default settings with `instance` as the engine instance name of the Docker
    /// and Podman backends.
    pub fn with_instance(instance: &str) -> Self {
        #[allow(unused_mut)]
        let mut config = Self::default();
        #[cfg(feature = "docker")]
        instance.clone_into(&mut config.docker.instance);
        #[cfg(feature = "podman")]
        instance.clone_into(&mut config.podman.instance);
        #[cfg(not(all(feature = "docker", feature = "podman")))]
        let _ = instance;
        config
    }
}

/// Creates the backend `kind` from its configuration section and checks that its runtime
/// responds.
///
/// # Errors
///
/// [`ExecutorError::Unavailable`] when the runtime cannot be reached, naming what was tried, and
/// [`ExecutorError::NotCompiled`] when the backend is not part of this build.
pub async fn connect(
    kind: ExecutorKind,
    config: &BackendsConfig,
) -> Result<Arc<dyn Executor>, ExecutorError> {
    match kind {
        ExecutorKind::Subprocess => {
            Ok(Arc::new(SubprocessExecutor::new(config.subprocess.clone())))
        }
        ExecutorKind::Docker => connect_docker(&config.docker).await,
        ExecutorKind::Podman => connect_podman(&config.podman).await,
    }
}

#[cfg(feature = "docker")]
async fn connect_docker(config: &DockerConfig) -> Result<Arc<dyn Executor>, ExecutorError> {
    let executor = agentrun_docker::DockerExecutor::connect(config.clone()).await?;
    Ok(Arc::new(executor))
}

#[cfg(not(feature = "docker"))]
async fn connect_docker(_config: &DockerConfig) -> Result<Arc<dyn Executor>, ExecutorError> {
    Err(ExecutorError::NotCompiled {
        executor: "docker",
        feature: "docker",
    })
}

#[cfg(feature = "podman")]
async fn connect_podman(config: &PodmanConfig) -> Result<Arc<dyn Executor>, ExecutorError> {
    let executor = agentrun_podman::PodmanExecutor::connect(config.clone()).await?;
    Ok(Arc::new(executor))
}

#[cfg(not(feature = "podman"))]
async fn connect_podman(_config: &PodmanConfig) -> Result<Arc<dyn Executor>, ExecutorError> {
    Err(ExecutorError::NotCompiled {
        executor: "podman",
        feature: "podman",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_kind_parses_names() {
        assert_eq!("docker".parse(), Ok(ExecutorKind::Docker));
        assert_eq!(" Podman ".parse(), Ok(ExecutorKind::Podman));
        assert_eq!("subprocess".parse(), Ok(ExecutorKind::Subprocess));
    }

    #[test]
    fn executor_kind_rejects_unknown_name() {
        let error = "kubernetes".parse::<ExecutorKind>().expect_err("unknown");
        assert_eq!(
            error,
            "unknown executor \"kubernetes\"; expected one of subprocess, docker, podman"
        );
    }

    #[test]
    fn backends_config_rejects_unknown_section() {
        let error = toml::from_str::<BackendsConfig>("[kubernetes]\n").expect_err("unknown");
        assert!(
            error.to_string().contains("unknown field `kubernetes`"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn subprocess_backend_connects_without_runtime() {
        let executor = connect(ExecutorKind::Subprocess, &BackendsConfig::default())
            .await
            .expect("the subprocess backend needs no runtime");
        assert_eq!(executor.name(), "subprocess");
    }
}
