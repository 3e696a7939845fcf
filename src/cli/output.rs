//! Printing results and errors: text for people, one JSON object for scripts.
//!
//! Every line goes through [`outln!`] or [`errln!`] instead of `println!` and `eprintln!`, which
//! panic when the stream is closed. A reader that stops early (`agentrun check pkg | head -1`)
//! closes the pipe, and the rest of the output is then dropped without a message: the command
//! still finishes its work and exits with its own status.

use std::fmt;
use std::io::{self, Write};

use serde::Serialize;

use crate::error::{exit_for, Error, Exit, Outcome};

/// Writes one line to stdout. See the [module documentation](self).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_line($crate::cli::output::Stream::Stdout, format_args!($($arg)*))
    };
}

/// Writes one line to stderr. See the [module documentation](self).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_line($crate::cli::output::Stream::Stderr, format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};

/// The stream a line goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Results.
    Stdout,
    /// Errors, warnings and progress.
    Stderr,
}

/// Writes `line` and a newline to `stream`. A closed pipe drops the line silently. Any other
/// write error on stdout is reported on stderr; one on stderr cannot be reported anywhere.
pub fn write_line(stream: Stream, line: fmt::Arguments<'_>) {
    let written = match stream {
        Stream::Stdout => writeln!(io::stdout().lock(), "{line}"),
        Stream::Stderr => writeln!(io::stderr().lock(), "{line}"),
    };
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {}
        Err(error) if stream == Stream::Stdout => {
            errln!("error: writing to stdout failed: {error}");
        }
        Err(_) => {}
    }
}

/// Prints `value` as one pretty-printed JSON object on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    // Serialising our own result types cannot fail: they hold only strings, numbers, maps
    // with string keys and serde_json values.
    let text = serde_json::to_string_pretty(value).expect("result types serialise to JSON");
    outln!("{text}");
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
    errln!("error: {}", error_chain(error));
    exit
}

pub use crate::error::error_chain;

/// Prints each warning's message on stderr.
pub fn print_warnings(warnings: &[crate::warning::Warning]) {
    for warning in warnings {
        errln!("warning: {warning}");
    }
}
