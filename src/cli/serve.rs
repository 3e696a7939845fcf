//! `agentrun serve`: loads the service configuration and runs the service.

use crate::config::Config;
use crate::error::{error_chain, Exit};
use crate::service::{self, ServiceError};

use super::output::{errln, outln};
use super::ServeArgs;

/// Runs `agentrun serve`. Exit status: 0 after a clean stop (SIGTERM or SIGINT), 2 for an
/// invalid configuration (a data folder that another service uses and a secrets key of the wrong
/// format included), 4 when the executor or the service's own files are unavailable.
pub async fn serve(args: ServeArgs) -> Exit {
    let config = match Config::load(args.config) {
        Ok(config) => config,
        Err(error) => {
            errln!("error: {}", error_chain(&error));
            return Exit::InvalidInput;
        }
    };
    if args.check_config {
        return match config.to_redacted_toml() {
            Ok(text) => {
                outln!("{}", text.trim_end_matches('\n'));
                errln!("the configuration is valid");
                Exit::Success
            }
            Err(error) => {
                errln!("error: printing the configuration failed: {error}");
                Exit::InvalidInput
            }
        };
    }

    service::init_logging(&config.log);
    match service::serve(config).await {
        Ok(()) => Exit::Success,
        Err(error) => {
            let text = error_chain(&error);
            // The log goes to stderr, so the error is not printed a second time.
            tracing::error!(error = %text, "the service could not start");
            match error {
                ServiceError::Config(_)
                | ServiceError::DataDirLocked { .. }
                | ServiceError::NotASocket { .. }
                | ServiceError::InvalidKey { .. } => Exit::InvalidInput,
                _ => Exit::ExecutorUnavailable,
            }
        }
    }
}
