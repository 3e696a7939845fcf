//! Connecting the executor that the configuration names.

use std::sync::Arc;

use agentrun_executor::{Executor, ExecutorError};

use crate::config::{Config, ExecutorKind};

/// Creates the configured executor and checks that its runtime responds.
pub(crate) async fn connect(config: &Config) -> Result<Arc<dyn Executor>, ExecutorError> {
    let executor: Arc<dyn Executor> = match config.executor {
        ExecutorKind::Subprocess => Arc::new(agentrun_subprocess::SubprocessExecutor::new(
            config.subprocess.clone(),
        )),
        #[cfg(feature = "docker")]
        ExecutorKind::Docker => {
            Arc::new(agentrun_docker::DockerExecutor::connect(config.docker.clone()).await?)
        }
        #[cfg(not(feature = "docker"))]
        ExecutorKind::Docker => {
            return Err(ExecutorError::NotCompiled {
                executor: "docker",
                feature: "docker",
            })
        }
        ExecutorKind::Podman => {
            return Err(ExecutorError::NotCompiled {
                executor: "podman",
                feature: "podman",
            })
        }
    };
    executor.ping().await?;
    Ok(executor)
}
