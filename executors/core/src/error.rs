//! The error type every backend returns.

/// Why a backend could not prepare a package or run a job.
///
/// Agent misbehaviour (non-zero exit, no reply, timeout) is not an error: it is a
/// [`JobOutcome`](crate::JobOutcome). These variants are failures of the package or of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// The runtime could not be reached or is not installed.
    #[error("{executor} is unavailable at {address}: {reason}")]
    Unavailable {
        /// Backend name (`docker`, `podman`, `subprocess`).
        executor: &'static str,
        /// What was tried: a socket path, a URL or a list of both.
        address: String,
        /// Why it failed, with what to do about it.
        reason: String,
    },

    /// The backend was compiled out of this build.
    #[error(
        "the {executor} executor is not part of this build: rebuild with `--features {feature}`"
    )]
    NotCompiled {
        /// Backend name.
        executor: &'static str,
        /// Cargo feature that enables it.
        feature: &'static str,
    },

    /// The package cannot run on this backend, for example because the Dockerfile has no exec-form
    /// `ENTRYPOINT` that the subprocess backend can map to a command.
    #[error("invalid package {}: {reason}", path.display())]
    InvalidPackage {
        /// Package folder, or the image built from it when the fault shows only when a
        /// container backend starts the agent.
        path: std::path::PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },

    /// An image build failed.
    #[error("building image {image} failed{}: {message}\n{log_tail}",
        step.as_deref().map(|step| format!(" at step `{step}`")).unwrap_or_default())]
    BuildFailed {
        /// Image tag that was being built.
        image: String,
        /// The Dockerfile instruction that failed, when the build log names it.
        step: Option<String>,
        /// The runtime's error message.
        message: String,
        /// Last lines of the build log.
        log_tail: String,
    },

    /// The runtime returned an error while running a job or preparing a package.
    #[error("{executor}: {operation} failed: {message}")]
    Runtime {
        /// Backend name.
        executor: &'static str,
        /// The step that failed, such as `create container` or `attach`.
        operation: &'static str,
        /// The runtime's error message.
        message: String,
    },

    /// An I/O operation of the engine itself failed.
    ///
    /// The message includes the operating system's reason, and `source()` returns `None`, so
    /// that callers that print only the message and callers that print the chain of sources
    /// both show the reason once.
    #[error("{operation} failed: {cause}")]
    Io {
        /// What the engine was doing, with the path or resource involved.
        operation: String,
        /// The underlying error.
        cause: std::io::Error,
    },
}

impl ExecutorError {
    /// Builds an [`ExecutorError::Io`] from a description of the operation and its error.
    pub fn io(operation: impl Into<String>, cause: std::io::Error) -> Self {
        Self::Io {
            operation: operation.into(),
            cause,
        }
    }

    /// Returns true when the error means the runtime is not there at all, as opposed to a
    /// failure of one operation.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::NotCompiled { .. })
    }

    /// Turns a [`ExecutorError::Runtime`] error in which the OCI runtime reports that it cannot
    /// execute the container's program into [`ExecutorError::InvalidPackage`] for `image`,
    /// naming the program. Returns every other error unchanged.
    ///
    /// runc writes such a fault as `exec: "PROGRAM": CAUSE`, where the cause is `stat …: no
    /// such file or directory`, `executable file not found in $PATH` or `permission denied`.
    /// Docker reports it when the container starts and Podman when it is attached. Under an
    /// init process the init reports it instead, see [`init_exec_fault`].
    pub fn into_agent_start_fault(self, image: &str) -> Self {
        let Self::Runtime { message, .. } = &self else {
            return self;
        };
        match runc_exec_fault(message) {
            Some((program, fault)) => Self::InvalidPackage {
                path: std::path::PathBuf::from(image),
                reason: fault.reason(Some(program)),
            },
            None => self,
        }
    }
}

/// The reason a container's program could not be executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExecFault {
    /// No file at the program's path.
    NotFound,
    /// A program name without `/` that no folder of the image's `PATH` contains.
    NotOnPath,
    /// The file is there but not executable.
    NotExecutable,
}

impl ExecFault {
    /// Returns the reason of an [`ExecutorError::InvalidPackage`] for this fault, naming
    /// `program` when it is known.
    pub fn reason(self, program: Option<&str>) -> String {
        let program = match program {
            Some(program) => format!("the agent program `{program}`"),
            None => "the agent program of the ENTRYPOINT or CMD".to_owned(),
        };
        match self {
            Self::NotFound => format!(
                "{program} is not in the image: fix the path in the ENTRYPOINT or CMD, or add \
                 the program to the image"
            ),
            Self::NotOnPath => format!(
                "{program} is not on the image's PATH: write its absolute path in the \
                 ENTRYPOINT or CMD, or install it in the image"
            ),
            Self::NotExecutable => format!(
                "{program} is not executable in the image: set its mode with `chmod +x` before \
                 packaging, or start it through an interpreter such as `sh`"
            ),
        }
    }
}

/// Reads runc's `exec: "PROGRAM": CAUSE` from a runtime message, or `None` when the message is
/// about something else.
fn runc_exec_fault(message: &str) -> Option<(&str, ExecFault)> {
    const MARKER: &str = "exec: \"";
    let start = message.find(MARKER)? + MARKER.len();
    let (program, rest) = message[start..].split_once('"')?;
    let cause = rest.strip_prefix(": ")?;

    let fault = if cause.starts_with("stat ") && cause.contains("no such file or directory") {
        ExecFault::NotFound
    } else if cause.starts_with("executable file not found in $PATH") {
        ExecFault::NotOnPath
    } else if cause.starts_with("permission denied") {
        ExecFault::NotExecutable
    } else {
        return None;
    };
    Some((program, fault))
}

/// Reads the message that a container's init process writes to stderr when it cannot execute
/// the agent, and returns the program (when the message names it) and the fault. Returns
/// `None` for any other stderr.
///
/// tini (Docker's `docker-init`) writes `[FATAL tini (PID)] exec PROGRAM failed: CAUSE` and
/// exits 127 or 126. catatonit (Podman's default init) writes `ERROR (catatonit:PID): failed
/// to exec pid1: CAUSE` and exits 1, without the program.
pub fn init_exec_fault(stderr: &str) -> Option<(Option<String>, ExecFault)> {
    let line = stderr.lines().next()?;
    let (program, cause) = if let Some(rest) = line.strip_prefix("[FATAL tini (") {
        let rest = rest.split_once(")] exec ")?.1;
        let (program, cause) = rest.rsplit_once(" failed: ")?;
        (Some(program.to_owned()), cause)
    } else if line.starts_with("ERROR (catatonit:") {
        let cause = line.split_once("): failed to exec pid1: ")?.1;
        (None, cause)
    } else {
        return None;
    };

    let fault = match cause.trim() {
        "No such file or directory" => match &program {
            Some(program) if !program.contains('/') => ExecFault::NotOnPath,
            _ => ExecFault::NotFound,
        },
        "Permission denied" => ExecFault::NotExecutable,
        _ => return None,
    };
    Some((program, fault))
}

/// Formats an error and its sources as `outer: inner: innermost` on one line, so that the cause
/// behind "reading X failed" or a transport's "connection refused" is not lost where only one
/// line of text is kept. A source whose message the text already contains is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each cause appears once, after the outer message, and a cause whose text the outer
    /// message already quotes is not repeated.
    #[test]
    fn error_chain_joins_causes_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("{text}")]
        struct Outer {
            text: String,
            #[source]
            cause: std::io::Error,
        }
        let cause = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let plain = Outer {
            text: "reading /x failed".to_owned(),
            cause: cause(),
        };
        assert_eq!(error_chain(&plain), "reading /x failed: no such file");
        let quoting = Outer {
            text: "reading /x failed: no such file".to_owned(),
            cause: cause(),
        };
        assert_eq!(error_chain(&quoting), "reading /x failed: no such file");
    }

    fn runtime(message: &str) -> ExecutorError {
        ExecutorError::Runtime {
            executor: "docker",
            operation: "start container",
            message: message.to_owned(),
        }
    }

    fn reason(error: ExecutorError) -> String {
        match error {
            ExecutorError::InvalidPackage { path, reason } => {
                assert_eq!(path, std::path::PathBuf::from("agentrun/x:1"));
                reason
            }
            other => panic!("expected an invalid package, got {other:?}"),
        }
    }

    #[test]
    fn io_error_names_cause_once() {
        // 2 is ENOENT on Linux.
        let cause = std::io::Error::from_raw_os_error(2);
        let error = ExecutorError::io("create a HOME folder in /nonexistent/dir", cause);
        assert_eq!(
            error.to_string(),
            "create a HOME folder in /nonexistent/dir failed: No such file or directory (os \
             error 2)"
        );
        assert!(std::error::Error::source(&error).is_none());
    }

    #[test]
    fn start_fault_missing_program() {
        let error = runtime(
            "failed to create shim task: OCI runtime create failed: runc create failed: unable \
             to start container process: exec: \"/nonexistent\": stat /nonexistent: no such \
             file or directory: unknown (HTTP 400)",
        );
        assert_eq!(
            reason(error.into_agent_start_fault("agentrun/x:1")),
            "the agent program `/nonexistent` is not in the image: fix the path in the \
             ENTRYPOINT or CMD, or add the program to the image"
        );
    }

    #[test]
    fn start_fault_program_not_on_path() {
        let error = runtime(
            "preparing container 3800 for attach: runc: runc create failed: unable to start \
             container process: exec: \"nosuchprog\": executable file not found in $PATH: OCI \
             runtime attempted to invoke a command that was not found (HTTP 409)",
        );
        assert!(reason(error.into_agent_start_fault("agentrun/x:1"))
            .starts_with("the agent program `nosuchprog` is not on the image's PATH"));
    }

    #[test]
    fn start_fault_not_executable() {
        let error = runtime(
            "runc create failed: unable to start container process: exec: \"/a\": permission \
             denied: unknown (HTTP 400)",
        );
        assert!(reason(error.into_agent_start_fault("agentrun/x:1"))
            .starts_with("the agent program `/a` is not executable in the image"));
    }

    #[test]
    fn init_fault_from_tini_and_catatonit() {
        assert_eq!(
            init_exec_fault(
                "[FATAL tini (7)] exec /nonexistent failed: No such file or directory\n"
            ),
            Some((Some("/nonexistent".to_owned()), ExecFault::NotFound))
        );
        assert_eq!(
            init_exec_fault("[FATAL tini (7)] exec nosuchprog failed: No such file or directory\n"),
            Some((Some("nosuchprog".to_owned()), ExecFault::NotOnPath))
        );
        assert_eq!(
            init_exec_fault("[FATAL tini (7)] exec /a failed: Permission denied\n"),
            Some((Some("/a".to_owned()), ExecFault::NotExecutable))
        );
        assert_eq!(
            init_exec_fault(
                "ERROR (catatonit:6): failed to exec pid1: Permission denied\nError: read \
                 unixpacket: connection reset by peer\n"
            ),
            Some((None, ExecFault::NotExecutable))
        );
        assert_eq!(
            init_exec_fault("ERROR (catatonit:6): failed to exec pid1: No such file or directory"),
            Some((None, ExecFault::NotFound))
        );
        assert_eq!(
            init_exec_fault("exec /a: no such file or directory\n"),
            None
        );
        assert_eq!(
            init_exec_fault("[FATAL tini (7)] exec /a failed: Out of memory"),
            None
        );
        assert_eq!(init_exec_fault(""), None);
        assert_eq!(
            ExecFault::NotFound.reason(None),
            "the agent program of the ENTRYPOINT or CMD is not in the image: fix the path in \
             the ENTRYPOINT or CMD, or add the program to the image"
        );
    }

    #[test]
    fn start_fault_keeps_other_errors() {
        let error = runtime("exec: \"/a\": operation not permitted (HTTP 500)");
        assert!(matches!(
            error.into_agent_start_fault("agentrun/x:1"),
            ExecutorError::Runtime { .. }
        ));

        let error = ExecutorError::Unavailable {
            executor: "docker",
            address: "unix:///x".to_owned(),
            reason: "exec: \"/a\": permission denied".to_owned(),
        };
        assert!(matches!(
            error.into_agent_start_fault("agentrun/x:1"),
            ExecutorError::Unavailable { .. }
        ));
    }
}
