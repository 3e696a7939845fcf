//! The `agentrun` command line: argument definitions and one function per subcommand.
//!
//! `main.rs` parses the arguments, sets up logging and calls [`execute`]. Each subcommand lives in
//! its own module and returns an [`Exit`] status, so that the mapping from results to exit
//! statuses stays in [`crate::error::exit_for`].

mod build;
mod check;
mod describe;
mod load;
mod output;
mod run;
mod serve;

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{StringValueParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};

use agentrun_executor::CancellationToken;

use crate::backends::{self, BackendsConfig, ExecutorKind};
use crate::dispatcher::{DispatchDefaults, Dispatcher};
use crate::error::{Error, Exit};

pub use load::{load_package, LoadedPackage};

/// Runs security-analytics integrations ("agents") on a subprocess, Docker or Podman.
///
/// An integration is a folder or a .zip with a Dockerfile whose ENTRYPOINT is the agent, and an
/// optional integration.toml manifest. Exit status: 0 success; 1 the agent reported failure;
/// 2 invalid input; 3 no valid reply (timeout, crash, malformed reply); 4 executor unavailable.
#[derive(Debug, Parser)]
#[command(name = "agentrun", version, max_term_width = 100)]
pub struct Cli {
    /// Options for every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options for every subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log more: -v for lifecycle events, -vv for each step, -vvv for everything.
    /// RUST_LOG, when set, takes precedence.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Format of log lines on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "AGENTRUN_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// Format of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent once with a work message and print its popup message.
    Run(RunArgs),
    /// Send the agent a describe message and report whether it answers with a heartbeat.
    Describe(DescribeArgs),
    /// Validate a package and its manifest, and list every problem.
    Check(CheckArgs),
    /// Prepare a package on an executor (build its image) and print the image tag or command.
    Build(BuildArgs),
    /// Run the service: the HTTP API, the job queue and health checks, configured by
    /// /etc/agentrun/agentrun.toml, the user's file, --config and AGENTRUN_* variables.
    Serve(ServeArgs),
}

/// Arguments of `agentrun serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file, read after /etc/agentrun/agentrun.toml and
    /// $XDG_CONFIG_HOME/agentrun/agentrun.toml and before AGENTRUN_* variables; it must exist.
    #[arg(long, env = "AGENTRUN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration, print it (the token redacted) and exit: 0 when valid, 2 when
    /// not.
    #[arg(long)]
    pub check_config: bool,
}

/// The package and the executor to run it on.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Integration package: a folder or a .zip with a Dockerfile at its top level or in its
    /// single top-level folder.
    #[arg(value_name = "PACKAGE")]
    pub package: PathBuf,

    /// Backend that runs the agent.
    #[arg(short = 'x', long, default_value = "subprocess", env = "AGENTRUN_EXECUTOR",
          value_parser = Utf8(parse_executor))]
    pub executor: ExecutorKind,

    /// Network mode of the agent's container, such as none or host (Docker and Podman only).
    /// Default: the runtime's default network.
    #[arg(long, value_name = "MODE", value_parser = Utf8(StringValueParser::new()))]
    pub network: Option<String>,

    /// Engine instance name: the value of the io.agentrun.engine label on the containers and
    /// images of this command (Docker and Podman only). A service removes leftover containers
    /// of its own instance at start-up (its docker.instance or podman.instance, default
    /// agentrun), so this must differ from every service's instance on the same runtime.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CLI_INSTANCE,
          env = "AGENTRUN_CLI_INSTANCE", value_parser = Utf8(parse_instance))]
    pub instance: String,
}

/// Default for [`TargetArgs::instance`]: different from the service's default instance
/// (`agentrun`), so that a service starting on the same runtime does not remove the container
/// of a running command.
pub const DEFAULT_CLI_INSTANCE: &str = "agentrun-cli";

/// Arguments of `agentrun run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The package and executor.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Value of a form field, replacing its prefill. Repeat for each field.
    #[arg(short, long = "set", value_name = "FIELD=VALUE", value_parser = Utf8(parse_pair))]
    pub set: Vec<(String, String)>,

    /// Value of a SIFT-* keyword for prefills: the keyword without SIFT-, in lowercase, such as
    /// user-name=alice@example.com or selected-node-id=n42. Repeat for each keyword.
    #[arg(short, long = "context", value_name = "KEY=VALUE",
          value_parser = Utf8(StringValueParser::new()))]
    pub context: Vec<String>,

    /// Environment variable for the agent, replacing the manifest's value. Repeat for each.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = Utf8(parse_pair))]
    pub env: Vec<(String, String)>,

    /// Deadline for the job in seconds, 1 to 86400 (fractions allowed). Default: the manifest's
    /// [run] timeout_secs, else 60.
    #[arg(short, long, value_name = "SECS", value_parser = Utf8(parse_timeout))]
    pub timeout: Option<Duration>,

    /// Print one JSON object with the job's result instead of the popup message.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `agentrun describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The package and executor.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Environment variable for the agent, replacing the manifest's value. Repeat for each.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = Utf8(parse_pair))]
    pub env: Vec<(String, String)>,

    /// Deadline for the health check in seconds, 1 to 86400. Default: the manifest's, else 60.
    #[arg(short, long, value_name = "SECS", value_parser = Utf8(parse_timeout))]
    pub timeout: Option<Duration>,

    /// Print one JSON object with the health report.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `agentrun check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Integration package: a folder or a .zip.
    #[arg(value_name = "PACKAGE")]
    pub package: PathBuf,

    /// Print one JSON object with the findings.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `agentrun build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The package and executor.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Print one JSON object with the prepared target.
    #[arg(long)]
    pub json: bool,
}

/// Runs the parsed command line and returns the exit status.
pub async fn execute(cli: Cli) -> Exit {
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Describe(args) => describe::describe(args).await,
        Command::Check(args) => check::check(&args).await,
        Command::Build(args) => build::build(args).await,
        Command::Serve(args) => serve::serve(args).await,
    }
}

/// Connects the chosen backend and wraps it in a dispatcher with the command line's settings.
async fn connect_dispatcher(target: &TargetArgs) -> Result<Dispatcher, Error> {
    if let (ExecutorKind::Subprocess, Some(network)) = (target.executor, &target.network) {
        output::errln!(
            "warning: --network {network} has no effect on the subprocess executor, whose \
             agents use this machine's network: run with -x docker or -x podman to set it"
        );
    }
    let mut config = BackendsConfig::with_instance(&target.instance);
    if target.executor == ExecutorKind::Subprocess {
        config.subprocess.shared_state_dir = cli_state_dir();
    }
    let executor = backends::connect(target.executor, &config).await?;
    // What a command killed with SIGKILL started stays behind, since nothing removes it at its
    // end: containers, and on the subprocess executor the agent's process group and HOME
    // folder. So each command removes the containers of any instance whose deadline label
    // expired (one container listing), and stops the agents of commands that are gone. Neither
    // touches a job that is still in use.
    match executor.sweep_expired().await {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(
                count = removed.len(),
                "removed what commands killed with SIGKILL left behind"
            );
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(error = %error, "removing what killed commands left behind failed");
        }
    }
    let mut defaults = DispatchDefaults::default();
    defaults.limits.network.clone_from(&target.network);
    Ok(Dispatcher::with_defaults(executor, defaults))
}

/// Returns the folder where command-line runs record their running subprocess jobs, so that a
/// later run can stop the agents of a run killed with SIGKILL: `$XDG_RUNTIME_DIR/agentrun-cli`
/// when that variable is set, else `agentrun-cli-<uid>` in the temporary folder. The folder is
/// created with mode 0700; one that another user owns or that others may write is not used.
fn cli_state_dir() -> Option<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};

    let uid = nix::unistd::geteuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(runtime) => std::path::PathBuf::from(runtime).join("agentrun-cli"),
        None => std::env::temp_dir().join(format!("agentrun-cli-{uid}")),
    };
    if let Err(error) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        if error.kind() != std::io::ErrorKind::AlreadyExists {
            tracing::warn!(dir = %dir.display(), %error, "creating the folder for job records failed; agents of a killed command are not stopped later");
            return None;
        }
    }
    match std::fs::symlink_metadata(&dir) {
        Ok(metadata)
            if metadata.is_dir() && metadata.uid() == uid && metadata.mode() & 0o022 == 0 =>
        {
            Some(dir)
        }
        _ => {
            tracing::warn!(dir = %dir.display(), "the folder for job records is not a folder that only this user can write; agents of a killed command are not stopped later");
            None
        }
    }
}

/// Cancels `cancel` on Ctrl-C or SIGTERM until the returned guard is dropped, so that an
/// interrupted run kills its agent (and removes its container) before the process exits.
fn cancel_on_interrupt(cancel: CancellationToken) -> AbortOnDrop {
    let task = tokio::spawn(async move {
        interrupted().await;
        tracing::warn!("interrupted: cancelling the job");
        cancel.cancel();
    });
    AbortOnDrop(task)
}

/// Returns when the process gets Ctrl-C (SIGINT) or SIGTERM.
async fn interrupted() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Maximum wait, after an interrupt, for a build that [`Executor::stop_builds`] stopped to end
/// and clean up.
///
/// [`Executor::stop_builds`]: agentrun_executor::Executor::stop_builds
const STOPPED_BUILD_WAIT: Duration = Duration::from_secs(30);

/// Prepares the package, or stops its build on Ctrl-C or SIGTERM and returns
/// [`Error::Interrupted`]. Where the backend stops builds for real (Podman's private service),
/// this waits for the stopped build to end, so that it removes what it left. Elsewhere it only
/// drops the request, which Docker takes as a cancel.
async fn prepare_or_interrupt(
    dispatcher: &Dispatcher,
    integration: &crate::dispatcher::Integration,
) -> Result<agentrun_executor::Prepared, Error> {
    let prepare = dispatcher.prepare(integration);
    tokio::pin!(prepare);
    tokio::select! {
        result = &mut prepare => return result,
        () = interrupted() => {}
    }
    tracing::warn!("interrupted: stopping the build");
    if dispatcher.executor().stop_builds() {
        // The outcome no longer matters: the command ends as interrupted either way.
        let _ = tokio::time::timeout(STOPPED_BUILD_WAIT, &mut prepare).await;
    }
    Err(Error::Interrupted)
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Value parser that names the option and shows the value when the value is not UTF-8, which
/// clap's own message ("invalid UTF-8 was detected in one or more arguments") does not, and
/// otherwise hands the value to the parser it wraps.
#[derive(Clone, Debug)]
struct Utf8<P>(P);

impl<P: TypedValueParser> TypedValueParser for Utf8<P> {
    type Value = P::Value;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        if value.to_str().is_none() {
            let name = arg.map_or_else(|| "an argument".to_owned(), ToString::to_string);
            let message = format!(
                "the value {:?} of {name} is not valid UTF-8 (invalid bytes shown as �): \
                 pass it as UTF-8 text\n",
                value.to_string_lossy()
            );
            return Err(clap::Error::raw(ErrorKind::InvalidUtf8, message).with_cmd(command));
        }
        self.0.parse_ref(command, arg, value)
    }
}

fn parse_instance(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("the instance name is empty: pass a name such as agentrun-cli".to_owned());
    }
    Ok(text.to_owned())
}

fn parse_executor(text: &str) -> Result<ExecutorKind, String> {
    text.parse()
}

/// Splits `KEY=VALUE` at the first `=`; the value may contain further `=` signs.
fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(("", _)) => Err(format!("missing name before \"=\" in {text:?}")),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.trim().parse().map_err(|_| {
        format!("invalid timeout {text:?}: expected a number of seconds, such as 30 or 1.5")
    })?;
    let (min, max) = (
        *crate::manifest::TIMEOUT_SECS_RANGE.start(),
        *crate::manifest::TIMEOUT_SECS_RANGE.end(),
    );
    if !(seconds.is_finite() && seconds >= min as f64 && seconds <= max as f64) {
        return Err(format!(
            "invalid timeout {text:?}: expected {min} to {max} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_pair_keeps_equals_in_value() {
        assert_eq!(
            parse_pair("url=http://h/?a=b"),
            Ok(("url".to_owned(), "http://h/?a=b".to_owned()))
        );
        assert_eq!(
            parse_pair("empty="),
            Ok(("empty".to_owned(), String::new()))
        );
    }

    #[test]
    fn parse_pair_rejects_missing_parts() {
        assert_eq!(
            parse_pair("message"),
            Err("expected NAME=VALUE, got \"message\"".to_owned())
        );
        assert_eq!(
            parse_pair("=value"),
            Err("missing name before \"=\" in \"=value\"".to_owned())
        );
    }

    #[test]
    fn parse_timeout_accepts_fractions() {
        assert_eq!(parse_timeout("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("86400"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn parse_timeout_rejects_out_of_range() {
        for text in ["0", "0.5", "-1", "nan", "inf", "86401", "86400.5"] {
            assert_eq!(
                parse_timeout(text),
                Err(format!(
                    "invalid timeout {text:?}: expected 1 to 86400 seconds"
                )),
            );
        }
        assert_eq!(
            parse_timeout("soon"),
            Err(
                "invalid timeout \"soon\": expected a number of seconds, such as 30 or 1.5"
                    .to_owned()
            )
        );
    }

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
