//! The top-level error type, and the one mapping of errors and job results to exit statuses.
//!
//! | status | meaning |
//! |-------:|---------|
//! | 0 | success: the agent replied with `return_code` 0, or a health check found a heartbeat |
//! | 1 | the agent reported failure (`return_code` ≠ 0) |
//! | 2 | invalid input: package, manifest, context, field value or argument |
//! | 3 | no valid reply: timeout, crash, malformed reply, cancellation, stdout over the cap |
//! | 4 | the executor is unavailable or failed |

use agentrun_executor::ExecutorError;

use crate::dispatcher::{HealthReport, JobStatus, WorkResult};
use crate::forms::{ContextError, FormErrors, MessageTooLarge, ResolveError};
use crate::manifest::ManifestError;
use crate::package::PackageError;
use crate::protocol::ReplyError;

pub use agentrun_executor::error_chain;

/// Any failure of a command before or around a job. An agent that runs and misbehaves is not an
/// error but a [`WorkResult`] or [`HealthReport`] with that outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The manifest is invalid or unreadable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),

    /// The context arguments are invalid.
    #[error(transparent)]
    Context(#[from] ContextError),

    /// One or more form values are invalid; nothing was started.
    #[error(transparent)]
    Form(#[from] FormErrors),

    /// The work message would be larger than the dispatcher's `max_message_bytes`; nothing was
    /// started.
    #[error(transparent)]
    MessageTooLarge(#[from] MessageTooLarge),

    /// The package was rejected at intake, or the engine failed to unpack it.
    #[error(transparent)]
    Package(#[from] PackageError),

    /// A command-line or API argument is invalid, such as an env variable name.
    #[error("{message}")]
    InvalidArgument {
        /// The problem, naming the argument.
        message: String,
    },

    /// An agent's reply was unusable, for callers that turn a result into an error.
    #[error(transparent)]
    Reply(#[from] ReplyError),

    /// The executor could not prepare the package or run the job.
    #[error(transparent)]
    Executor(#[from] ExecutorError),

    /// The command got SIGINT or SIGTERM while it prepared the package, and stopped.
    #[error("interrupted while preparing the package; the build was stopped")]
    Interrupted,
}

impl From<ResolveError> for Error {
    fn from(error: ResolveError) -> Self {
        match error {
            ResolveError::Form(errors) => Self::Form(errors),
            ResolveError::TooLarge(error) => Self::MessageTooLarge(error),
        }
    }
}

/// The exit statuses of the `agentrun` binary. See the [module documentation](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Exit {
    /// 0: success.
    Success,
    /// 1: the agent replied with a non-zero `return_code`.
    AgentFailed,
    /// 2: invalid package, manifest, field value or argument.
    InvalidInput,
    /// 3: the agent gave no valid reply.
    NoValidReply,
    /// 4: the executor is unavailable or failed.
    ExecutorUnavailable,
}

impl Exit {
    /// Returns the numeric exit status.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::AgentFailed => 1,
            Self::InvalidInput => 2,
            Self::NoValidReply => 3,
            Self::ExecutorUnavailable => 4,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// The end of a command, for [`exit_for`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// The command succeeded without running an agent, such as `agentrun check`.
    Done,
    /// A `work` job ran.
    Work(&'a WorkResult),
    /// A health check ran.
    Describe(&'a HealthReport),
    /// The command failed.
    Failed(&'a Error),
}

/// Maps what a command ended with to its exit status.
pub fn exit_for(outcome: Outcome<'_>) -> Exit {
    match outcome {
        Outcome::Done => Exit::Success,
        Outcome::Work(result) => match result.status {
            JobStatus::Succeeded => Exit::Success,
            JobStatus::Failed => Exit::AgentFailed,
            JobStatus::Error | JobStatus::TimedOut | JobStatus::Cancelled => Exit::NoValidReply,
        },
        Outcome::Describe(report) if report.healthy => Exit::Success,
        Outcome::Describe(_) => Exit::NoValidReply,
        Outcome::Failed(error) => match error {
            Error::Manifest(_)
            | Error::Context(_)
            | Error::Form(_)
            | Error::MessageTooLarge(_)
            | Error::InvalidArgument { .. } => Exit::InvalidInput,
            Error::Package(error) if error.is_invalid_input() => Exit::InvalidInput,
            // The engine's own file system failed while unpacking, not the user's input.
            Error::Package(_) => Exit::ExecutorUnavailable,
            Error::Reply(_) | Error::Interrupted => Exit::NoValidReply,
            Error::Executor(error) => match error {
                ExecutorError::InvalidPackage { .. } | ExecutorError::BuildFailed { .. } => {
                    Exit::InvalidInput
                }
                // The remaining variants (Unavailable, NotCompiled, Runtime, and the engine's
                // own I/O failures such as a failed spawn) all mean the engine could not run the
                // agent.
                _ => Exit::ExecutorUnavailable,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::forms::{FormError, FormRule};

    fn work(status: JobStatus) -> WorkResult {
        WorkResult {
            job_id: 1,
            status,
            return_code: None,
            exit_code: None,
            message: None,
            url: None,
            url_label: None,
            duration_ms: 0,
            reply: None,
            warnings: Vec::new(),
            error: None,
            stderr_tail: String::new(),
        }
    }

    fn health(healthy: bool) -> HealthReport {
        HealthReport {
            healthy,
            job_id: 1,
            status: if healthy {
                JobStatus::Succeeded
            } else {
                JobStatus::Error
            },
            exit_code: Some(0),
            reply: None,
            error: None,
            stderr_tail: String::new(),
            duration_ms: 0,
        }
    }

    #[test]
    fn exit_codes_are_documented_values() {
        let codes: Vec<u8> = [
            Exit::Success,
            Exit::AgentFailed,
            Exit::InvalidInput,
            Exit::NoValidReply,
            Exit::ExecutorUnavailable,
        ]
        .into_iter()
        .map(Exit::code)
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn exit_for_work_results() {
        let cases = [
            (JobStatus::Succeeded, Exit::Success),
            (JobStatus::Failed, Exit::AgentFailed),
            (JobStatus::Error, Exit::NoValidReply),
            (JobStatus::TimedOut, Exit::NoValidReply),
            (JobStatus::Cancelled, Exit::NoValidReply),
        ];
        for (status, expected) in cases {
            assert_eq!(
                exit_for(Outcome::Work(&work(status))),
                expected,
                "{status:?}"
            );
        }
        assert_eq!(exit_for(Outcome::Done), Exit::Success);
    }

    #[test]
    fn exit_for_health_reports() {
        assert_eq!(exit_for(Outcome::Describe(&health(true))), Exit::Success);
        assert_eq!(
            exit_for(Outcome::Describe(&health(false))),
            Exit::NoValidReply
        );
    }

    #[test]
    fn exit_for_errors() {
        let form = FormErrors {
            errors: vec![FormError {
                field: "a".to_owned(),
                value: String::new(),
                message: "bad".to_owned(),
                rule: FormRule::Regex,
                custom_message: false,
            }],
        };
        let cases: Vec<(Error, Exit)> = vec![
            (
                crate::manifest::Manifest::from_toml_str("name = 1")
                    .expect_err("invalid")
                    .into(),
                Exit::InvalidInput,
            ),
            (
                ContextError::UnknownKey {
                    key: "x".to_owned(),
                }
                .into(),
                Exit::InvalidInput,
            ),
            (form.into(), Exit::InvalidInput),
            (
                MessageTooLarge {
                    size: 2,
                    limit: 1,
                    partial: false,
                }
                .into(),
                Exit::InvalidInput,
            ),
            (
                PackageError::NotFound {
                    path: PathBuf::from("/missing"),
                }
                .into(),
                Exit::InvalidInput,
            ),
            (
                Error::InvalidArgument {
                    message: "x".to_owned(),
                },
                Exit::InvalidInput,
            ),
            (
                ReplyError::UnknownAction {
                    action: "x".to_owned(),
                }
                .into(),
                Exit::NoValidReply,
            ),
            (
                ExecutorError::InvalidPackage {
                    path: PathBuf::from("/p"),
                    reason: "no ENTRYPOINT".to_owned(),
                }
                .into(),
                Exit::InvalidInput,
            ),
            (
                ExecutorError::BuildFailed {
                    image: "i".to_owned(),
                    step: None,
                    message: "m".to_owned(),
                    log_tail: String::new(),
                }
                .into(),
                Exit::InvalidInput,
            ),
            (
                ExecutorError::Unavailable {
                    executor: "docker",
                    address: "unix:///nowhere".to_owned(),
                    reason: "not found".to_owned(),
                }
                .into(),
                Exit::ExecutorUnavailable,
            ),
            (
                ExecutorError::NotCompiled {
                    executor: "podman",
                    feature: "podman",
                }
                .into(),
                Exit::ExecutorUnavailable,
            ),
            (
                ExecutorError::Runtime {
                    executor: "docker",
                    operation: "create container",
                    message: "m".to_owned(),
                }
                .into(),
                Exit::ExecutorUnavailable,
            ),
            (
                ExecutorError::io("spawn /bin/agent", std::io::Error::other("denied")).into(),
                Exit::ExecutorUnavailable,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(exit_for(Outcome::Failed(&error)), expected, "{error}");
        }
    }
}
