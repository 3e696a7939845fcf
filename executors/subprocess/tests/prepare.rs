//! `prepare` on real package folders: command resolution from the manifest and from the
//! Dockerfile, and every way a package can be invalid for this backend.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentrun_executor::{Executor, ExecutorError, PackageSpec, Target};
use agentrun_subprocess::{SubprocessExecutor, MINIMAL_PATH};

/// Deadline for one `prepare` call.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

/// Dockerfile of the packages that set `[run] command`. It names an agent, as every package's
/// Dockerfile must, but the manifest's command replaces it on this backend.
const MANIFEST_COMMAND_DOCKERFILE: &str = "FROM scratch\nCMD [\"/agent\"]\n";

/// A package folder under construction.
struct Package {
    dir: tempfile::TempDir,
}

impl Package {
    fn new(dockerfile: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
        Self { dir }
    }

    /// Canonical package folder, as `prepare` reports paths.
    fn root(&self) -> PathBuf {
        fs::canonicalize(self.dir.path()).expect("canonical package folder")
    }

    /// Writes an executable script at `relative`.
    fn script(&self, relative: &str) -> &Self {
        self.file(relative, "#!/bin/sh\necho hi\n", 0o755)
    }

    fn file(&self, relative: &str, content: &str, mode: u32) -> &Self {
        let path = self.dir.path().join(relative);
        fs::create_dir_all(path.parent().expect("file has a parent")).expect("mkdir");
        fs::write(&path, content).expect("write file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        self
    }

    /// Package file path as a string, as it appears in a resolved argv.
    fn path(&self, relative: &str) -> String {
        self.root().join(relative).display().to_string()
    }

    async fn prepare(&self, command: Option<&[&str]>) -> Result<Vec<String>, ExecutorError> {
        let spec = PackageSpec {
            integration: "test".to_owned(),
            agent_id: "00000000-0000-0000-0000-000000000001".to_owned(),
            digest: "ab".repeat(32),
            root: self.dir.path().to_path_buf(),
            command: command.map(|words| words.iter().map(|word| (*word).to_owned()).collect()),
        };
        let prepared = tokio::time::timeout(
            PREPARE_TIMEOUT,
            SubprocessExecutor::default().prepare(&spec),
        )
        .await
        .expect("prepare finished in time")?;
        assert_eq!(prepared.executor, "subprocess");
        assert!(!prepared.cache_hit);
        match prepared.target {
            Target::Command { argv, working_dir } => {
                assert_eq!(working_dir, self.root());
                Ok(argv)
            }
            other => panic!("expected a command target, got {other:?}"),
        }
    }

    async fn argv(&self, command: Option<&[&str]>) -> Vec<String> {
        self.prepare(command)
            .await
            .unwrap_or_else(|error| panic!("prepare failed: {error}"))
    }

    /// Prepares and returns the reason of the expected `InvalidPackage` error.
    async fn invalid(&self, command: Option<&[&str]>) -> String {
        match self.prepare(command).await {
            Err(ExecutorError::InvalidPackage { path, reason }) => {
                assert_eq!(path, self.root());
                reason
            }
            Err(other) => panic!("expected InvalidPackage, got {other:?}"),
            Ok(argv) => panic!("expected InvalidPackage, got argv {argv:?}"),
        }
    }
}

/// Returns the path where the minimal PATH finds a program on this machine.
fn host_program(name: &str) -> String {
    MINIMAL_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed in {MINIMAL_PATH}"))
        .display()
        .to_string()
}

fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "expected {part:?} in:\n{text}");
}

// --- Dockerfile mapping -------------------------------------------------------------------------

/// `COPY file /file` with an absolute exec-form entrypoint.
#[tokio::test]
async fn prepare_maps_copied_file() {
    let package = Package::new("FROM scratch\nCOPY agent /agent\nENTRYPOINT [\"/agent\"]\n");
    package.script("agent");
    assert_eq!(package.argv(None).await, [package.path("agent")]);
}

/// A relative destination and a relative program are resolved against `WORKDIR`.
#[tokio::test]
async fn prepare_maps_relative_to_workdir() {
    let package = Package::new(
        "FROM scratch\nWORKDIR /srv\nWORKDIR app\nCOPY agent.sh .\nENTRYPOINT [\"./agent.sh\"]\n",
    );
    package.script("agent.sh");
    assert_eq!(package.argv(None).await, [package.path("agent.sh")]);
}

/// `COPY a b dest/` puts both files into the folder.
#[tokio::test]
async fn prepare_maps_several_sources_into_folder() {
    let package = Package::new(
        "FROM scratch\nCOPY run.sh lib.sh /opt/bin/\nENTRYPOINT [\"/opt/bin/run.sh\", \"/opt/bin/lib.sh\"]\n",
    );
    package.script("run.sh").script("lib.sh");
    assert_eq!(
        package.argv(None).await,
        [package.path("run.sh"), package.path("lib.sh")]
    );
}

/// `COPY . /app` with an interpreter: the interpreter comes from PATH, the script from the
/// package.
#[tokio::test]
async fn prepare_maps_whole_context_with_interpreter() {
    let package = Package::new(
        "FROM python:3.11-slim\nCOPY . /app\nENTRYPOINT [\"sh\", \"/app/bin/agent.sh\"]\n",
    );
    package.script("bin/agent.sh");
    assert_eq!(
        package.argv(None).await,
        [host_program("sh"), package.path("bin/agent.sh")]
    );
}

/// `COPY dir /app/dir` copies the folder's contents to `/app/dir`.
#[tokio::test]
async fn prepare_maps_folder_copy() {
    let package =
        Package::new("FROM scratch\nCOPY src /app/src\nENTRYPOINT [\"/app/src/agent.sh\"]\n");
    package.script("src/agent.sh");
    assert_eq!(package.argv(None).await, [package.path("src/agent.sh")]);
}

/// `COPY dir/ /app/` copies the folder's contents straight into `/app`.
#[tokio::test]
async fn prepare_maps_folder_contents() {
    let package = Package::new("FROM scratch\nCOPY src/ /app/\nENTRYPOINT [\"/app/agent.sh\"]\n");
    package.script("src/agent.sh");
    assert_eq!(package.argv(None).await, [package.path("src/agent.sh")]);
}

/// `--chown=` and `--chmod=` do not change where files go.
#[tokio::test]
async fn prepare_ignores_chown_and_chmod_flags() {
    let package = Package::new(
        "FROM scratch\nCOPY --chown=1000:1000 --chmod=755 agent.sh /usr/local/bin/agent\nENTRYPOINT [\"agent\"]\n",
    );
    package.script("agent.sh");
    // A bare name is found where a copy put it in the image's PATH.
    assert_eq!(package.argv(None).await, [package.path("agent.sh")]);
}

/// JSON-form `COPY` with a file name that contains a space.
#[tokio::test]
async fn prepare_maps_json_form_copy() {
    let package = Package::new(
        "FROM scratch\nCOPY [\"my agent.sh\", \"/opt/\"]\nENTRYPOINT [\"/opt/my agent.sh\"]\n",
    );
    package.script("my agent.sh");
    assert_eq!(package.argv(None).await, [package.path("my agent.sh")]);
}

/// Continuations, comments and lower-case instructions.
#[tokio::test]
async fn prepare_reads_continuations_and_comments() {
    let package = Package::new(
        "# syntax comment\nfrom scratch\ncopy \\\n  # a comment inside\n  agent.sh \\\n  /app/\nentrypoint [\"/app/agent.sh\", \\\n  \"--flag\"]\n",
    );
    package.script("agent.sh");
    assert_eq!(
        package.argv(None).await,
        [package.path("agent.sh"), "--flag".to_owned()]
    );
}

/// Only the last stage counts; an earlier stage's entrypoint is ignored.
#[tokio::test]
async fn prepare_uses_last_stage() {
    let package = Package::new(
        "FROM scratch AS first\nCOPY other.sh /other.sh\nENTRYPOINT [\"/other.sh\"]\n\nFROM scratch\nCOPY agent.sh /agent.sh\nENTRYPOINT [\"/agent.sh\"]\n",
    );
    package.script("agent.sh").script("other.sh");
    assert_eq!(package.argv(None).await, [package.path("agent.sh")]);
}

/// `CMD` alone is the command; with an `ENTRYPOINT`, its words are appended as arguments.
#[tokio::test]
async fn prepare_combines_entrypoint_and_cmd() {
    let only_cmd = Package::new("FROM scratch\nCOPY agent.sh /\nCMD [\"/agent.sh\", \"x\"]\n");
    only_cmd.script("agent.sh");
    assert_eq!(
        only_cmd.argv(None).await,
        [only_cmd.path("agent.sh"), "x".to_owned()]
    );

    let both = Package::new(
        "FROM scratch\nCOPY agent.sh /\nENTRYPOINT [\"/agent.sh\"]\nCMD [\"--mode\", \"work\"]\n",
    );
    both.script("agent.sh");
    assert_eq!(
        both.argv(None).await,
        [
            both.path("agent.sh"),
            "--mode".to_owned(),
            "work".to_owned()
        ]
    );
}

/// Arguments that name copied files, absolute or relative to `WORKDIR`, become package paths;
/// options and other words stay as written.
#[tokio::test]
async fn prepare_maps_file_arguments() {
    let package = Package::new(
        "FROM scratch\nWORKDIR /app\nCOPY agent.sh conf.json ./\nCOPY data /data\nENTRYPOINT [\"/app/agent.sh\"]\nCMD [\"conf.json\", \"/data/input.txt\", \"--verbose\", \"literal\", \"/etc/passwd\"]\n",
    );
    package
        .script("agent.sh")
        .file("conf.json", "{}", 0o644)
        .file("data/input.txt", "x", 0o644);
    assert_eq!(
        package.argv(None).await,
        [
            package.path("agent.sh"),
            package.path("conf.json"),
            package.path("data/input.txt"),
            "--verbose".to_owned(),
            "literal".to_owned(),
            "/etc/passwd".to_owned(),
        ]
    );
}

/// `COPY file /dir` where `/dir` is a `WORKDIR` puts the file inside it.
#[tokio::test]
async fn prepare_copy_into_existing_workdir() {
    let package = Package::new(
        "FROM scratch\nWORKDIR /app\nCOPY agent.sh /app\nENTRYPOINT [\"/app/agent.sh\"]\n",
    );
    package.script("agent.sh");
    assert_eq!(package.argv(None).await, [package.path("agent.sh")]);
}

/// Wildcards in a source match package files.
#[tokio::test]
async fn prepare_expands_wildcards() {
    let package = Package::new("FROM scratch\nCOPY *.sh /app/\nENTRYPOINT [\"/app/b.sh\"]\n");
    package.script("a.sh").script("b.sh");
    assert_eq!(package.argv(None).await, [package.path("b.sh")]);
}

/// An absolute program that no copy provides runs from this machine when it exists there.
#[tokio::test]
async fn prepare_uses_host_program_for_unmapped_absolute_path() {
    let package = Package::new(
        "FROM scratch\nCOPY agent.sh /app/\nENTRYPOINT [\"/bin/sh\", \"/app/agent.sh\"]\n",
    );
    package.script("agent.sh");
    assert_eq!(
        package.argv(None).await,
        ["/bin/sh".to_owned(), package.path("agent.sh")]
    );
}

/// `ENV` values are substituted into `WORKDIR` and `COPY`.
#[tokio::test]
async fn prepare_substitutes_env_in_paths() {
    let package = Package::new(
        "FROM scratch\nENV APP_HOME=/opt/agent\nWORKDIR $APP_HOME\nCOPY agent.sh ${APP_HOME}/bin/\nENTRYPOINT [\"bin/agent.sh\"]\n",
    );
    package.script("agent.sh");
    assert_eq!(package.argv(None).await, [package.path("agent.sh")]);
}

// --- Manifest command ---------------------------------------------------------------------------

/// A relative program with a `/` is in the package; arguments stay as written. The Dockerfile
/// is not read, so its shell-form entrypoint does not matter.
#[tokio::test]
async fn prepare_manifest_command_in_package() {
    let package = Package::new("FROM python:3.11-slim\nENTRYPOINT python3 agent.py\n");
    package.script("bin/agent.sh");
    assert_eq!(
        package
            .argv(Some(&["./bin/agent.sh", "agent.py", "--x"]))
            .await,
        [
            package.path("bin/agent.sh"),
            "agent.py".to_owned(),
            "--x".to_owned()
        ]
    );
}

/// A bare program name is looked up in the minimal PATH.
#[tokio::test]
async fn prepare_manifest_command_bare_name() {
    let package = Package::new(MANIFEST_COMMAND_DOCKERFILE);
    assert_eq!(
        package.argv(Some(&["sh", "agent.sh"])).await,
        [host_program("sh"), "agent.sh".to_owned()]
    );
}

/// An absolute `[run] command` program is this machine's program, as documented: the subprocess
/// backend trusts the integration author, and the program runs as the agent, not as the engine.
#[tokio::test]
async fn prepare_manifest_command_absolute_program() {
    let package = Package::new(MANIFEST_COMMAND_DOCKERFILE);
    let program = host_program("sh");
    assert_eq!(
        package.argv(Some(&[program.as_str(), "agent.sh"])).await,
        [program.clone(), "agent.sh".to_owned()]
    );
}

// --- Invalid packages ---------------------------------------------------------------------------

/// Shell-form `ENTRYPOINT`: the message shows the exec form to write instead.
#[tokio::test]
async fn prepare_rejects_shell_form_entrypoint() {
    let package =
        Package::new("FROM python:3.11-slim\nCOPY . /app\nENTRYPOINT python3 /app/agent.py\n");
    let reason = package.invalid(None).await;
    assert_contains(
        &reason,
        "ENTRYPOINT on line 3 is in shell form (`python3 /app/agent.py`)",
    );
    assert_contains(&reason, "ENTRYPOINT [\"python3\", \"/app/agent.py\"]");
    assert_contains(&reason, "`[run] command` in integration.toml");
}

/// Shell-form `CMD` is rejected the same way.
#[tokio::test]
async fn prepare_rejects_shell_form_cmd() {
    let package = Package::new("FROM scratch\nCOPY agent.sh /\nCMD /agent.sh --verbose\n");
    package.script("agent.sh");
    let reason = package.invalid(None).await;
    assert_contains(&reason, "CMD on line 3 is in shell form");
    assert_contains(&reason, "CMD [\"/agent.sh\", \"--verbose\"]");
}

/// No `ENTRYPOINT` and no `CMD`: the base image's own cannot be used.
#[tokio::test]
async fn prepare_rejects_missing_entrypoint() {
    let package = Package::new("FROM python:3.11-slim\nCOPY . /app\n");
    let reason = package.invalid(None).await;
    assert_contains(
        &reason,
        "final stage (FROM python:3.11-slim on line 1) has no ENTRYPOINT or CMD that starts the \
         agent",
    );
    assert_contains(&reason, "ENTRYPOINT [\"python3\", \"/app/agent.py\"]");
}

/// A `[run] command` does not make up for a Dockerfile that names no agent: the package would
/// be invalid on Docker and Podman, so it is invalid here too.
#[tokio::test]
async fn prepare_rejects_missing_entrypoint_with_manifest_command() {
    let package = Package::new("FROM scratch\n");
    package.script("agent.sh");
    let reason = package.invalid(Some(&["./agent.sh"])).await;
    assert_contains(
        &reason,
        "final stage (FROM scratch on line 1) has no ENTRYPOINT or CMD",
    );
}

/// An empty exec-form entrypoint counts as none.
#[tokio::test]
async fn prepare_rejects_empty_entrypoint() {
    let package = Package::new("FROM scratch\nENTRYPOINT []\n");
    let reason = package.invalid(None).await;
    assert_contains(&reason, "has no ENTRYPOINT or CMD");
}

/// An exec form with a missing comma is not run as a shell command: the message names the
/// instruction and the fix.
#[tokio::test]
async fn prepare_rejects_exec_form_missing_comma() {
    let package = Package::new(
        "FROM python:3.11-slim\nCOPY agent.py /app/\nENTRYPOINT [\"python3\" \"/app/agent.py\"]\n",
    );
    package.script("agent.py");
    let reason = package.invalid(None).await;
    assert_contains(
        &reason,
        "ENTRYPOINT on line 3 is not a valid JSON array: expected `,` or `]` at character 12",
    );
    assert_contains(&reason, "is a comma missing between two items?");
    assert_contains(
        &reason,
        "write it as `ENTRYPOINT [\"python3\", \"/app/agent.py\"]`",
    );
    assert!(!reason.contains("shell form"), "{reason}");
}

/// A broken exec form is rejected even when `[run] command` replaces it on this backend.
#[tokio::test]
async fn prepare_rejects_invalid_exec_form_with_manifest_command() {
    let package = Package::new("FROM scratch\nCMD ['/agent.sh']\n");
    package.script("agent.sh");
    let reason = package.invalid(Some(&["./agent.sh"])).await;
    assert_contains(&reason, "CMD on line 2 is not a valid JSON array");
    assert_contains(&reason, "JSON strings take double quotes");
    assert_contains(&reason, "`CMD [\"/agent.sh\"]`");
}

/// A program path that no copy fills and that this machine lacks.
#[tokio::test]
async fn prepare_rejects_unmapped_program() {
    let package = Package::new(
        "FROM scratch\nWORKDIR /app\nCOPY agent.sh /opt/\nENTRYPOINT [\"/app/agent.sh\"]\n",
    );
    package.script("agent.sh");
    let reason = package.invalid(None).await;
    assert_contains(
        &reason,
        "program `/app/agent.sh` from ENTRYPOINT on line 4 was not found",
    );
    assert_contains(
        &reason,
        "no COPY or ADD puts a package file at `/app/agent.sh`",
    );
    assert_contains(&reason, "WORKDIR (/app)");
}

/// A copy source that is not in the package maps nothing.
#[tokio::test]
async fn prepare_rejects_program_missing_from_package() {
    let package = Package::new("FROM scratch\nCOPY agent.sh /\nENTRYPOINT [\"/agent.sh\"]\n");
    let reason = package.invalid(None).await;
    assert_contains(
        &reason,
        "program `/agent.sh` from ENTRYPOINT on line 3 was not found",
    );
}

/// A bare name that is neither copied into the image's PATH nor installed here.
#[tokio::test]
async fn prepare_rejects_unknown_bare_program() {
    let package = Package::new("FROM scratch\nENTRYPOINT [\"agentrun-no-such-program\"]\n");
    let reason = package.invalid(None).await;
    assert_contains(
        &reason,
        "program `agentrun-no-such-program` from ENTRYPOINT on line 2",
    );
    assert_contains(&reason, MINIMAL_PATH);
}

/// A program that `COPY --from` takes from another stage cannot be mapped.
#[tokio::test]
async fn prepare_rejects_program_from_other_stage() {
    let package = Package::new(
        "FROM rust AS build\nCOPY . /src\n\nFROM scratch\nCOPY --from=build /src/target/agent /agent\nENTRYPOINT [\"/agent\"]\n",
    );
    let reason = package.invalid(None).await;
    assert_contains(&reason, "`/agent` comes from COPY --from=build on line 5");
    assert_contains(&reason, "`[run] command` in integration.toml");
}

/// A program that `ADD` downloads cannot be mapped.
#[tokio::test]
async fn prepare_rejects_downloaded_program() {
    let package = Package::new(
        "FROM scratch\nADD https://example.com/agent /agent\nENTRYPOINT [\"/agent\"]\n",
    );
    let reason = package.invalid(None).await;
    assert_contains(
        &reason,
        "comes from ADD of `https://example.com/agent` on line 2",
    );
}

/// A mapped program without an execute bit.
#[tokio::test]
async fn prepare_rejects_non_executable_program() {
    let package = Package::new("FROM scratch\nCOPY agent.py /\nENTRYPOINT [\"/agent.py\"]\n");
    package.file("agent.py", "print('hi')\n", 0o644);
    let reason = package.invalid(None).await;
    assert_contains(&reason, "is not an executable file");
    assert_contains(&reason, "chmod +x");
}

/// A package link that leads outside the package is not followed.
#[tokio::test]
async fn prepare_rejects_link_outside_package() {
    let package = Package::new("FROM scratch\nCOPY . /app\nENTRYPOINT [\"/app/agent\"]\n");
    std::os::unix::fs::symlink("/bin/sh", package.dir.path().join("agent")).expect("symlink");
    let reason = package.invalid(None).await;
    assert_contains(
        &reason,
        "`/app/agent` from ENTRYPOINT on line 3 resolves to",
    );
    assert_contains(&reason, "outside the package folder");
}

/// A Dockerfile without `FROM`.
#[tokio::test]
async fn prepare_rejects_dockerfile_without_from() {
    let package = Package::new("# nothing here\nENTRYPOINT [\"/agent\"]\n");
    let reason = package.invalid(None).await;
    assert_eq!(
        reason,
        "invalid Dockerfile: the Dockerfile has no FROM instruction"
    );
}

/// A Dockerfile larger than 1 MiB is not read.
#[tokio::test]
async fn prepare_rejects_huge_dockerfile() {
    let mut text = "FROM scratch\n".to_owned();
    text.push_str(&"# padding\n".repeat(110_000));
    let package = Package::new(&text);
    let reason = package.invalid(None).await;
    assert_eq!(
        reason,
        format!(
            "the Dockerfile has {} bytes, more than the 1048576 that agentrun reads: shorten it",
            text.len()
        )
    );
}

/// An empty `[run] command`.
#[tokio::test]
async fn prepare_rejects_empty_manifest_command() {
    let package = Package::new(MANIFEST_COMMAND_DOCKERFILE);
    let reason = package.invalid(Some(&[])).await;
    assert_contains(&reason, "`[run] command` in integration.toml is empty");
}

/// A relative `[run] command` program that the package lacks.
#[tokio::test]
async fn prepare_rejects_missing_manifest_program() {
    let package = Package::new(MANIFEST_COMMAND_DOCKERFILE);
    let reason = package.invalid(Some(&["./agent.sh"])).await;
    assert_contains(
        &reason,
        "program `./agent.sh` from `[run] command` in integration.toml",
    );
    assert_contains(&reason, "relative paths are resolved in the package folder");
}

/// A relative `[run] command` program that climbs out of the package.
#[tokio::test]
async fn prepare_rejects_manifest_program_outside_package() {
    let package = Package::new(MANIFEST_COMMAND_DOCKERFILE);
    let depth = package.root().components().count();
    let escape = format!("{}bin/sh", "../".repeat(depth));
    let reason = package.invalid(Some(&[escape.as_str()])).await;
    assert_contains(&reason, "outside the package folder");
}

/// A `[run] command` program that climbs out of the package is rejected on its text, whether
/// or not the file exists, so the message never reveals what the engine's machine holds.
#[tokio::test]
async fn prepare_rejects_escape_without_looking() {
    let package = Package::new(MANIFEST_COMMAND_DOCKERFILE);
    let depth = package.root().components().count();
    for target in ["bin/sh", "agentrun-no-such-file"] {
        let escape = format!("agent/{}{target}", "../".repeat(depth + 1));
        let reason = package.invalid(Some(&[escape.as_str()])).await;
        assert_contains(
            &reason,
            &format!("`{escape}` from `[run] command` in integration.toml points outside the package folder"),
        );
        assert!(!reason.contains("does not exist"), "{reason}");
        assert!(!reason.contains("resolves to"), "{reason}");
    }
}

/// A `COPY` source that leaves the build context maps to nothing, even when a file exists
/// there: the program is not found rather than taken from outside the package.
#[tokio::test]
async fn prepare_ignores_copy_source_outside_context() {
    let outside = tempfile::tempdir().expect("temporary folder");
    let agent = outside.path().join("agent.sh");
    fs::write(&agent, "#!/bin/sh\necho outside\n").expect("write");
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).expect("chmod");
    let package = Package::new("FROM scratch\nENTRYPOINT [\"/app/agent.sh\"]\n");
    let depth = package.root().components().count();
    let source = format!(
        "{}{}",
        "../".repeat(depth),
        agent.display().to_string().trim_start_matches('/')
    );
    fs::write(
        package.root().join("Dockerfile"),
        format!("FROM scratch\nCOPY {source} /app/agent.sh\nENTRYPOINT [\"/app/agent.sh\"]\n"),
    )
    .expect("write Dockerfile");

    let reason = package.invalid(None).await;

    assert_contains(
        &reason,
        "no COPY or ADD puts a package file at `/app/agent.sh`",
    );
}

/// A bare `[run] command` program that is not installed.
#[tokio::test]
async fn prepare_rejects_unknown_manifest_program() {
    let package = Package::new(MANIFEST_COMMAND_DOCKERFILE);
    let reason = package.invalid(Some(&["agentrun-no-such-program"])).await;
    assert_contains(
        &reason,
        "no executable of that name in /usr/local/bin:/usr/bin:/bin",
    );
}
