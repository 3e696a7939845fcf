//! Log output of the service: text or JSON lines on stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Variable that overrides `log.filter`.
pub const LOG_ENV: &str = "AGENTRUN_LOG";

/// Installs the global subscriber for the service. Does nothing when one is installed already.
///
/// Under systemd (`JOURNAL_STREAM` set) text lines carry no timestamp and no colours, because
/// the journal records the time itself.
pub fn init_logging(config: &LogConfig) {
    let filter = std::env::var(LOG_ENV)
        .ok()
        .and_then(|filter| EnvFilter::try_new(filter).ok())
        .or_else(|| EnvFilter::try_new(&config.filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    // Colour codes only help a terminal; in a file or a pipe they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);

    let installed = match (config.format, journal) {
        (LogFormat::Json, _) => builder.json().try_init(),
        (_, true) => builder.without_time().with_ansi(false).try_init(),
        _ => builder.try_init(),
    };
    // An error means a subscriber exists already, for example in an embedding program.
    let _ = installed;
}
