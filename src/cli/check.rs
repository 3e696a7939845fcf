//! `agentrun check`: validate a package without running it, and list every problem.

use std::path::Path;

use agentrun_executor::{check_dockerfile, Executor, ExecutorError, Target};
use agentrun_subprocess::SubprocessExecutor;
use serde::Serialize;

use super::output::{errln, error_chain, outln, print_json};
use super::CheckArgs;
use crate::dispatcher::Integration;
use crate::error::{exit_for, Error, Exit, Outcome};
use crate::manifest::{Manifest, ManifestError};
use crate::package::{self, IntakeLimits};

/// What `agentrun check --json` prints.
#[derive(Debug, Default, Serialize)]
struct CheckReport {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    fields: Vec<String>,
    /// The subprocess backend's command line, when the package can run on it. Package files
    /// are relative to the package folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    subprocess_command: Option<Vec<String>>,
    problems: Vec<String>,
    warnings: Vec<String>,
}

/// Runs `agentrun check` and returns its exit status.
pub async fn check(args: &CheckArgs) -> Exit {
    let report = inspect(args).await;
    if args.json {
        print_json(&report);
    } else {
        print_text(args, &report);
    }
    if report.valid {
        exit_for(Outcome::Done)
    } else {
        Exit::InvalidInput
    }
}

async fn inspect(args: &CheckArgs) -> CheckReport {
    let mut report = CheckReport::default();

    let package = match package::open(&args.package, &IntakeLimits::default()) {
        Ok(package) => package,
        Err(error) => {
            report.problems.push(error_chain(&error));
            return report;
        }
    };
    report.digest = Some(package.digest().to_owned());

    // The rule every backend applies before it prepares a package.
    let dockerfile_valid = match check_dockerfile(package.root()) {
        Ok(_) => true,
        Err(ExecutorError::InvalidPackage { reason, .. }) => {
            report.problems.push(reason);
            false
        }
        Err(error) => {
            report.problems.push(error_chain(&error));
            false
        }
    };

    let manifest = match Manifest::load(package.root(), package.name_hint()) {
        Ok(manifest) => manifest,
        Err(ManifestError::Invalid { origin, problems }) => {
            report.problems.extend(
                problems
                    .iter()
                    .map(|problem| format!("{origin}: {problem}")),
            );
            return report;
        }
        Err(error) => {
            report.problems.push(error_chain(&error));
            return report;
        }
    };
    report.name = Some(manifest.name.clone());
    report.fields = manifest
        .fields
        .iter()
        .map(|field| field.name.clone())
        .collect();
    let has_run_command = manifest.command().is_some();
    let integration = Integration::new(
        manifest,
        package.root().to_path_buf(),
        package.digest().to_owned(),
    );
    report.agent_id = Some(integration.agent_id.to_string());

    // The subprocess backend maps the Dockerfile back to package files. A package that only
    // builds in a container (a compiled agent, say) is still valid for Docker and Podman, so
    // that is a warning unless the manifest asks for a subprocess command explicitly. A
    // Dockerfile that failed the check above fails here the same way, so it is not tried.
    if dockerfile_valid {
        match subprocess_command(&integration).await {
            Ok(argv) => report.subprocess_command = Some(argv),
            Err(error) if has_run_command => report.problems.push(error_chain(&error)),
            Err(error) => report.warnings.push(format!(
                "the subprocess executor cannot run this package (Docker and Podman can): {}",
                error_chain(&error)
            )),
        }
    }

    report.valid = report.problems.is_empty();
    report
}

/// Returns the command line that the subprocess backend would start, with the paths of package
/// files relative to the package folder (`./agent.py`). A zip is unpacked into a temporary
/// folder that is gone once `check` ends, so absolute paths would name nothing.
async fn subprocess_command(integration: &Integration) -> Result<Vec<String>, Error> {
    // Preparing on the subprocess backend only reads files and starts nothing.
    let prepared = SubprocessExecutor::default()
        .prepare(&integration.package_spec())
        .await?;
    match prepared.target {
        Target::Command { argv, working_dir } => Ok(argv
            .iter()
            .map(|argument| relative_to_package(argument, &working_dir))
            .collect()),
        Target::Image { reference } => Ok(vec![reference]),
    }
}

/// Rewrites a path inside the package folder `root` as `./path`, and leaves anything else as
/// it is.
fn relative_to_package(argument: &str, root: &Path) -> String {
    match Path::new(argument).strip_prefix(root) {
        Ok(relative) if relative.as_os_str().is_empty() => ".".to_owned(),
        Ok(relative) => format!("./{}", relative.display()),
        Err(_) => argument.to_owned(),
    }
}

fn print_text(args: &CheckArgs, report: &CheckReport) {
    for warning in &report.warnings {
        errln!("warning: {warning}");
    }
    if !report.valid {
        errln!(
            "error: {} has {} problem{}:",
            args.package.display(),
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" }
        );
        for problem in &report.problems {
            errln!("  - {}", problem.replace('\n', "\n    "));
        }
        return;
    }

    outln!("{} is valid", args.package.display());
    if let Some(name) = &report.name {
        outln!("  name:     {name}");
    }
    if let Some(agent_id) = &report.agent_id {
        outln!("  agentID:  {agent_id}");
    }
    if let Some(digest) = &report.digest {
        outln!("  digest:   {digest}");
    }
    if !report.fields.is_empty() {
        outln!("  fields:   {}", report.fields.join(", "));
    }
    if let Some(argv) = &report.subprocess_command {
        outln!("  command:  {}", shell_words::join(argv));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_to_package_rewrites_only_package_paths() {
        let root = Path::new("/tmp/.agentrun-package-x");
        assert_eq!(
            relative_to_package("/tmp/.agentrun-package-x/app/agent.py", root),
            "./app/agent.py"
        );
        assert_eq!(relative_to_package("/tmp/.agentrun-package-x", root), ".");
        assert_eq!(
            relative_to_package("/usr/bin/python3", root),
            "/usr/bin/python3"
        );
        assert_eq!(
            relative_to_package("/tmp/.agentrun-package-xy/agent.py", root),
            "/tmp/.agentrun-package-xy/agent.py"
        );
        assert_eq!(relative_to_package("--verbose", root), "--verbose");
    }
}
