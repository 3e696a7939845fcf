//! Printing results and errors: text for people, one JSON object for scripts.

use std::io::Write;

use serde::Serialize;

use crate::error::{exit_for, Error, Exit, Outcome};

/// Prints `value` as one pretty-printed JSON object on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    // Serialising our own result types cannot fail: they hold only strings, numbers, maps
    // with string keys and serde_json values.
    let text = serde_json::to_string_pretty(value).expect("result types serialise to JSON");
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (`agentrun run … | head -0`) is not worth a panic.
    let _ = writeln!(stdout, "{text}");
}

/// The JSON object printed for a command that failed before or around a job.
#[derive(Debug, Serialize)]
struct ErrorReport<'a> {
    status: &'static str,
    exit_status: u8,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a [crate::forms::FormError]>,
}

/// Reports `error` on stderr (and as JSON on stdout with `json`) and returns its exit status.
pub fn report_error(error: &Error, json: bool) -> Exit {
    let exit = exit_for(Outcome::Failed(error));
    if json {
        let fields = match error {
            Error::Form(form) => Some(form.errors.as_slice()),
            _ => None,
        };
        print_json(&ErrorReport {
            status: match exit {
                Exit::InvalidInput => "invalid_input",
                Exit::ExecutorUnavailable => "executor_unavailable",
                _ => "error",
            },
            exit_status: exit.code(),
            error: error_chain(error),
            fields,
        });
    }
    eprintln!("error: {}", error_chain(error));
    exit
}

/// Formats an error and its sources as `outer: inner: innermost`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source's message; print each message once.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Prints each warning's message on stderr.
pub fn print_warnings(warnings: &[crate::warning::Warning]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
}
