//! Whether a container runtime can run jobs on this machine, for tests that need one.
//!
//! A test that needs Docker or Podman calls [`runtime_available`] first. When the runtime does
//! not respond, the test prints why and skips, unless the environment variable
//! `AGENTRUN_REQUIRE_RUNTIMES` (comma-separated: `docker`, `podman`) names that runtime: then
//! the test panics with the reason, so that CI never passes with skipped runtime tests. The
//! executor crates' own tests read the same variable with the same meaning.

#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use agentrun::backends::{self, BackendsConfig, ExecutorKind};

/// Environment variable listing the runtimes (comma-separated) whose tests must not skip.
pub const REQUIRE_RUNTIMES: &str = "AGENTRUN_REQUIRE_RUNTIMES";

/// Limit on one probe. Starting a private Podman service takes a few seconds on a busy machine.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Returns true when `AGENTRUN_REQUIRE_RUNTIMES` names `kind`.
pub fn runtime_required(kind: ExecutorKind) -> bool {
    std::env::var(REQUIRE_RUNTIMES)
        .map(|value| value.split(',').any(|name| name.trim() == kind.as_str()))
        .unwrap_or(false)
}

/// Returns true when the backend `kind` can run jobs here. The subprocess backend always can.
///
/// When the runtime does not respond, prints `skipping TEST: REASON` and returns false, or
/// panics with the reason when `AGENTRUN_REQUIRE_RUNTIMES` names the runtime. The probe runs
/// once per test process and runtime; later calls reuse its result.
///
/// # Panics
///
/// When the runtime is required and unusable.
pub fn runtime_available(kind: ExecutorKind, test: &str) -> bool {
    let Err(reason) = probe(kind) else {
        return true;
    };
    assert!(
        !runtime_required(kind),
        "{test}: {REQUIRE_RUNTIMES} names {kind}, but {reason}"
    );
    eprintln!("skipping {test}: {reason}");
    false
}

/// Connects the backend with its default configuration (which pings the runtime), then drops
/// it. Cached per runtime.
fn probe(kind: ExecutorKind) -> &'static Result<(), String> {
    static SUBPROCESS: OnceLock<Result<(), String>> = OnceLock::new();
    static DOCKER: OnceLock<Result<(), String>> = OnceLock::new();
    static PODMAN: OnceLock<Result<(), String>> = OnceLock::new();
    let cell = match kind {
        ExecutorKind::Subprocess => &SUBPROCESS,
        ExecutorKind::Docker => &DOCKER,
        ExecutorKind::Podman => &PODMAN,
    };
    cell.get_or_init(|| connect_once(kind))
}

fn connect_once(kind: ExecutorKind) -> Result<(), String> {
    // A runtime of its own, because the clients that `connect` creates are tied to the runtime
    // they were made on, and this one ends with the probe.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            format!("starting a Tokio runtime for the {kind} probe failed: {error}")
        })?;
    runtime.block_on(async {
        let config = BackendsConfig::default();
        match tokio::time::timeout(PROBE_TIMEOUT, backends::connect(kind, &config)).await {
            Ok(Ok(_executor)) => Ok(()),
            Ok(Err(error)) => Err(format!("{kind} is not usable: {error}")),
            Err(_) => Err(format!(
                "{kind} did not respond within {} s",
                PROBE_TIMEOUT.as_secs()
            )),
        }
    })
}
