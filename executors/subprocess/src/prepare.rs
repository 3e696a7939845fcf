//! Resolves the command line that the subprocess backend starts for a package.
//!
//! The command comes from the manifest's `[run] command` when there is one. Otherwise it is the
//! last stage's exec-form `ENTRYPOINT` followed by its exec-form `CMD`, with image paths mapped
//! back to the package files that `COPY` or `ADD` put there. A path is mapped only when the
//! mapped file exists in the package, so arguments that merely look like paths stay as written.
//! Either way the Dockerfile has passed [`check_dockerfile`] first, as on every backend.
//!
//! [`check_dockerfile`]: agentrun_executor::check_dockerfile

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use agentrun_executor::dockerfile::{
    self, CommandForm, CopyInstruction, DockerfileError, FinalStage, IMAGE_PATH,
};

use crate::MINIMAL_PATH;

/// Reason a package's command could not be resolved. Each message names what was found and how
/// to fix it, and the backend reports it as [`ExecutorError::InvalidPackage`].
///
/// [`ExecutorError::InvalidPackage`]: agentrun_executor::ExecutorError::InvalidPackage
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    /// The Dockerfile does not name the agent. [`check_dockerfile`] reports this before the
    /// command is resolved, so it is reached only for a stage that did not pass it.
    ///
    /// [`check_dockerfile`]: agentrun_executor::check_dockerfile
    #[error("{0}")]
    Dockerfile(#[from] DockerfileError),

    /// `[run] command` is an empty list.
    #[error(
        "`[run] command` in integration.toml is empty: give the program and its arguments, \
         such as `command = [\"python3\", \"agent.py\"]`"
    )]
    EmptyCommand,

    /// `ENTRYPOINT` or `CMD` is in shell form.
    #[error(
        "{instruction} on line {line} is in shell form (`{text}`), which needs a shell that the \
         subprocess executor does not start: write it in exec form, {suggestion}, or set \
         `[run] command` in integration.toml"
    )]
    ShellForm {
        /// `ENTRYPOINT` or `CMD`.
        instruction: &'static str,
        /// Line number.
        line: usize,
        /// The command as written.
        text: String,
        /// The same command in exec form, when it splits into words.
        suggestion: String,
    },

    /// The program is neither in the package nor on this machine.
    #[error("program `{program}` from {origin} was not found: {detail}")]
    ProgramNotFound {
        /// The program as written.
        program: String,
        /// Source of the program, such as `ENTRYPOINT on line 4`.
        origin: String,
        /// Places searched, and what to do.
        detail: String,
    },

    /// The program is not an executable file.
    #[error(
        "program `{}` from {origin} is not an executable file: set its mode with `chmod +x` \
         before packaging, or start it through an interpreter such as `python3`",
        path.display()
    )]
    NotExecutable {
        /// Resolved path.
        path: PathBuf,
        /// Source of the program.
        origin: String,
    },

    /// A path resolves outside the package folder, for example through a symbolic link.
    #[error(
        "`{written}` from {origin} resolves to `{}`, outside the package folder: refer to a \
         file inside the package, not to a link or a `..` path that leads out of it",
        resolved.display()
    )]
    OutsidePackage {
        /// The path as written.
        written: String,
        /// Source of the path.
        origin: String,
        /// The canonical path it resolves to.
        resolved: PathBuf,
    },

    /// A relative path climbs out of the package folder through `..`.
    #[error(
        "`{written}` from {origin} points outside the package folder through `..`: refer to a \
         file inside the package"
    )]
    LeavesPackage {
        /// The path as written.
        written: String,
        /// Source of the path.
        origin: String,
    },

    /// A path is not valid UTF-8, which the command line needs.
    #[error("path `{}` is not valid UTF-8: rename the package folder or file", path.display())]
    NonUtf8Path {
        /// The path.
        path: PathBuf,
    },
}

/// Resolves the argv for a package: `command` from the manifest, else the one that `stage`, the
/// Dockerfile's final stage, names.
///
/// `root` must be the canonical package folder. The program of the result is an absolute path.
///
/// # Errors
///
/// [`PrepareError`] when the command cannot be resolved.
pub(crate) fn resolve_command(
    root: &Path,
    stage: &FinalStage,
    manifest_command: Option<&[String]>,
) -> Result<Vec<String>, PrepareError> {
    match manifest_command {
        Some(command) => resolve_manifest_command(root, command),
        None => resolve_dockerfile_command(root, stage),
    }
}

/// Resolves `[run] command`: a relative program with a `/` is in the package, a bare name is
/// looked up in the minimal `PATH`, arguments stay as written (the working directory is the
/// package folder, so relative arguments already point into it).
fn resolve_manifest_command(root: &Path, command: &[String]) -> Result<Vec<String>, PrepareError> {
    let Some((program, arguments)) = command.split_first() else {
        return Err(PrepareError::EmptyCommand);
    };
    let origin = "`[run] command` in integration.toml";

    let path = if program.contains('/') {
        // Checked on the text first, so that the engine never looks at a file outside the
        // package and its messages never tell whether one exists.
        if Path::new(program).is_relative() && climbs_out(Path::new(program)) {
            return Err(PrepareError::LeavesPackage {
                written: program.clone(),
                origin: origin.to_owned(),
            });
        }
        // Joining the components drops `.` parts, so messages show a clean path.
        let candidate: PathBuf = root.join(Path::new(program).components().collect::<PathBuf>());
        if !candidate.exists() {
            return Err(PrepareError::ProgramNotFound {
                program: program.clone(),
                origin: origin.to_owned(),
                detail: format!(
                    "`{}` does not exist: relative paths are resolved in the package folder",
                    candidate.display()
                ),
            });
        }
        if Path::new(program).is_absolute() {
            candidate
        } else {
            inside_package(root, &candidate, program, origin)?
        }
    } else {
        search_host_path(program).ok_or_else(|| PrepareError::ProgramNotFound {
            program: program.clone(),
            origin: origin.to_owned(),
            detail: format!(
                "no executable of that name in {MINIMAL_PATH}: install it there, give its \
                 absolute path, or give a path in the package such as `./{program}`"
            ),
        })?
    };
    check_executable(&path, origin)?;

    let mut argv = vec![utf8(path)?];
    argv.extend(arguments.iter().cloned());
    Ok(argv)
}

/// Resolves the final stage's exec-form `ENTRYPOINT` plus `CMD`, mapping image paths to
/// package files.
fn resolve_dockerfile_command(
    root: &Path,
    stage: &FinalStage,
) -> Result<Vec<String>, PrepareError> {
    let (origin, argv) = dockerfile_argv(stage)?;
    let layout = ImageLayout::from_copies(root, &stage.copies);

    // The program: a path is mapped through the copies, a bare name is searched in the image's
    // PATH (through the copies) and then in this machine's minimal PATH.
    let (program, arguments) = argv.split_first().ok_or_else(|| no_agent_command(stage))?;
    let program_path = if program.contains('/') {
        let image_path = dockerfile::join_image_path(&stage.workdir, program);
        match layout.lookup(&image_path) {
            Lookup::Found(path) => inside_package(root, &path, program, &origin)?,
            Lookup::Foreign(copy) => {
                return Err(PrepareError::ProgramNotFound {
                    program: program.clone(),
                    origin,
                    detail: format!(
                        "`{image_path}` comes from {copy}, which the subprocess executor cannot \
                         map to a package file: copy it from the package, or set `[run] command` \
                         in integration.toml"
                    ),
                })
            }
            Lookup::Missing
                if program.starts_with('/') && is_executable_file(Path::new(program)) =>
            {
                PathBuf::from(program)
            }
            Lookup::Missing => {
                return Err(PrepareError::ProgramNotFound {
                    program: program.clone(),
                    origin,
                    detail: format!(
                        "no COPY or ADD puts a package file at `{image_path}`{}: check the \
                         COPY destination and WORKDIR ({}), or set `[run] command` in \
                         integration.toml",
                        if program.starts_with('/') {
                            ", and this machine has no such file"
                        } else {
                            ""
                        },
                        stage.workdir
                    ),
                })
            }
        }
    } else {
        let in_image =
            IMAGE_PATH
                .iter()
                .find_map(|dir| match layout.lookup(&format!("{dir}/{program}")) {
                    Lookup::Found(path) => Some(path),
                    _ => None,
                });
        match in_image {
            Some(path) => inside_package(root, &path, program, &origin)?,
            None => search_host_path(program).ok_or_else(|| PrepareError::ProgramNotFound {
                program: program.clone(),
                origin: origin.clone(),
                detail: format!(
                    "no package file is copied to the image's PATH under that name and no \
                     executable of that name is in {MINIMAL_PATH} on this machine: use the \
                     path the package file is copied to, such as `[\"/app/{program}\"]`"
                ),
            })?,
        }
    };
    check_executable(&program_path, &origin)?;

    // Arguments that name package files (absolute image paths, or paths relative to WORKDIR)
    // become those files' absolute paths. Options and anything else stay as written.
    let mut resolved = vec![utf8(program_path)?];
    for argument in arguments {
        if argument.is_empty() || argument.starts_with('-') {
            resolved.push(argument.clone());
            continue;
        }
        let image_path = dockerfile::join_image_path(&stage.workdir, argument);
        match layout.lookup(&image_path) {
            Lookup::Found(path) => {
                let path = inside_package(root, &path, argument, &origin)?;
                resolved.push(utf8(path)?);
            }
            Lookup::Foreign(_) | Lookup::Missing => resolved.push(argument.clone()),
        }
    }
    Ok(resolved)
}

/// Returns the exec-form argv of the last stage and a description of where it came from.
fn dockerfile_argv(stage: &FinalStage) -> Result<(String, Vec<String>), PrepareError> {
    let exec_form = |instruction: &'static str,
                     (line, form): &(usize, CommandForm)|
     -> Result<Vec<String>, PrepareError> {
        match form {
            CommandForm::Exec(argv) => Ok(argv.clone()),
            CommandForm::Shell(text) => Err(PrepareError::ShellForm {
                instruction,
                line: *line,
                text: text.clone(),
                suggestion: exec_form_suggestion(instruction, text),
            }),
            CommandForm::InvalidExec(invalid) => Err(PrepareError::Dockerfile(
                DockerfileError::InvalidExecForm(invalid.clone()),
            )),
            // The form is marked non-exhaustive; a form this backend does not know cannot be
            // mapped to a command.
            _ => Err(no_agent_command(stage)),
        }
    };

    let entrypoint = match &stage.entrypoint {
        Some(entrypoint) => exec_form("ENTRYPOINT", entrypoint)?,
        None => Vec::new(),
    };
    let cmd = match &stage.cmd {
        Some(cmd) => exec_form("CMD", cmd)?,
        None => Vec::new(),
    };

    let origin = match (&stage.entrypoint, entrypoint.is_empty()) {
        (Some((line, _)), false) => format!("ENTRYPOINT on line {line}"),
        _ => match &stage.cmd {
            Some((line, _)) => format!("CMD on line {line}"),
            None => String::new(),
        },
    };
    let mut argv = entrypoint;
    argv.extend(cmd);
    if argv.is_empty() {
        return Err(no_agent_command(stage));
    }
    Ok((origin, argv))
}

fn no_agent_command(stage: &FinalStage) -> PrepareError {
    PrepareError::Dockerfile(DockerfileError::NoAgentCommand {
        base: stage.base.clone(),
        line: stage.from_line,
    })
}

/// Writes `text` as an exec-form instruction, or a generic example when it does not split.
fn exec_form_suggestion(instruction: &str, text: &str) -> String {
    let words = match shell_words::split(text) {
        Ok(words) if !words.is_empty() => words,
        _ => return format!("such as `{instruction} [\"python3\", \"/app/agent.py\"]`"),
    };
    let quoted: Vec<String> = words
        .iter()
        .map(|word| serde_json::Value::String(word.clone()).to_string())
        .collect();
    format!("such as `{instruction} [{}]`", quoted.join(", "))
}

/// Result of looking up an image path.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// To this package file or folder.
    Found(PathBuf),
    /// To a destination that this copy fills from outside the package (another stage, a URL or
    /// an archive that `ADD` extracts).
    Foreign(String),
    /// No copy of the last stage fills the path.
    Missing,
}

/// One thing a `COPY` or `ADD` put into the image.
#[derive(Debug)]
enum Mapping {
    /// A package file at an image path.
    File { image: String, package: PathBuf },
    /// A package folder's contents under an image folder.
    Dir { image: String, package: PathBuf },
    /// An image path filled from outside the package, with a description of the copy.
    Foreign { image: String, copy: String },
}

/// The image paths that the last stage's copies fill from the package.
#[derive(Debug, Default)]
struct ImageLayout {
    mappings: Vec<Mapping>,
}

impl ImageLayout {
    /// Records each copy's sources, as found in the package under `root`, at its destination.
    fn from_copies(root: &Path, copies: &[CopyInstruction]) -> Self {
        let mut layout = Self::default();
        for copy in copies {
            layout.add_copy(root, copy);
        }
        layout
    }

    fn add_copy(&mut self, root: &Path, copy: &CopyInstruction) {
        let describe = |what: &str| format!("{} {what} on line {}", copy.instruction, copy.line);
        if let Some(stage) = &copy.from {
            self.foreign(copy, describe(&format!("--from={stage}")));
            return;
        }

        for source in &copy.sources {
            if source.starts_with("<<") {
                self.foreign(copy, describe("with a here-document"));
                continue;
            }
            if copy.instruction == "ADD" && is_remote(source) {
                self.foreign(copy, describe(&format!("of `{source}`")));
                continue;
            }
            let Some(relative) = context_relative(source) else {
                // A source outside the build context fails the image build too.
                continue;
            };
            if copy.instruction == "ADD" && is_archive(&relative) {
                // NOTE: ADD unpacks local archives into the destination. Their contents are
                // not in the package folder, so nothing under the destination maps.
                self.foreign(copy, describe(&format!("of archive `{source}`")));
                continue;
            }

            for matched in expand_glob(root, &relative) {
                self.add_source(copy, matched);
            }
        }
    }

    fn add_source(&mut self, copy: &CopyInstruction, package: PathBuf) {
        let destination = copy.destination.clone();
        if package.is_dir() {
            // A folder's contents, not the folder itself, go to the destination.
            self.mappings.push(Mapping::Dir {
                image: destination,
                package,
            });
            return;
        }
        let Some(name) = package.file_name().and_then(|name| name.to_str()) else {
            return;
        };
        let inside_destination = dockerfile::join_image_path(&destination, name);
        if copy.destination_is_dir {
            self.mappings.push(Mapping::File {
                image: inside_destination,
                package,
            });
            return;
        }
        // `COPY agent /app` writes /app/agent when /app is already a folder in the image, and
        // the file /app otherwise. The folders this backend can detect are WORKDIRs and the
        // destinations of earlier folder copies.
        let known_dir = copy.destination_is_workdir
            || self.mappings.iter().any(
                |mapping| matches!(mapping, Mapping::Dir { image, .. } if *image == destination),
            );
        if known_dir {
            self.mappings.push(Mapping::File {
                image: inside_destination,
                package,
            });
        } else {
            self.mappings.push(Mapping::File {
                image: destination,
                package,
            });
        }
    }

    fn foreign(&mut self, copy: &CopyInstruction, description: String) {
        self.mappings.push(Mapping::Foreign {
            image: copy.destination.clone(),
            copy: description,
        });
    }

    /// Finds what an absolute, normalized image path refers to. Later copies win over earlier
    /// ones, as they overwrite them in the image.
    fn lookup(&self, image_path: &str) -> Lookup {
        let mut foreign_parent = None;
        for mapping in self.mappings.iter().rev() {
            match mapping {
                Mapping::File { image, package } if image == image_path => {
                    return Lookup::Found(package.clone());
                }
                Mapping::File { .. } => {}
                Mapping::Dir { image, package } => {
                    if let Some(relative) = relative_to(image_path, image) {
                        let candidate = package.join(relative);
                        if candidate.symlink_metadata().is_ok() {
                            return Lookup::Found(candidate);
                        }
                    }
                }
                Mapping::Foreign { image, copy } => {
                    if image == image_path {
                        return Lookup::Foreign(copy.clone());
                    }
                    if relative_to(image_path, image).is_some() && foreign_parent.is_none() {
                        foreign_parent = Some(copy.clone());
                    }
                }
            }
        }
        match foreign_parent {
            Some(copy) => Lookup::Foreign(copy),
            None => Lookup::Missing,
        }
    }
}

/// Returns `path` relative to the folder `dir` (both absolute image paths), or `None` when it is
/// not inside it. The folder itself gives an empty path.
fn relative_to<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    if dir == "/" {
        return Some(path.trim_start_matches('/'));
    }
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix('/')
}

/// Normalizes a source path to a path relative to the build context. Leading `/` and `./` refer
/// to the context root, as in the builder. Returns `None` for a path that leaves the context.
fn context_relative(source: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

fn is_remote(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://") || source.starts_with("git@")
}

fn is_archive(relative: &str) -> bool {
    const SUFFIXES: [&str; 9] = [
        ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tzst",
    ];
    let lower = relative.to_ascii_lowercase();
    SUFFIXES.iter().any(|suffix| lower.ends_with(suffix))
}

/// Expands `*` and `?` in a context-relative source, one path component at a time, and returns
/// the package paths that exist. A source without wildcards gives itself when it exists.
fn expand_glob(root: &Path, relative: &str) -> Vec<PathBuf> {
    let mut current = vec![root.to_path_buf()];
    for component in relative.split('/').filter(|part| !part.is_empty()) {
        let mut next = Vec::new();
        for dir in &current {
            if !component.contains(['*', '?']) {
                next.push(dir.join(component));
                continue;
            }
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|name| wildcard_match(component, name))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|name| dir.join(name)));
        }
        current = next;
    }
    current.retain(|path| path.exists());
    current
}

/// Matches a file name against a pattern where `*` is any run of characters and `?` is one.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut n) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, n));
                p += 1;
            }
            Some('?') => {
                p += 1;
                n += 1;
            }
            Some(c) if *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    p = star + 1;
                    n = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Returns true when the relative `path` goes above its starting folder at any point, such as
/// `../x` or `a/../../x`.
fn climbs_out(path: &Path) -> bool {
    let mut depth: usize = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::ParentDir if depth == 0 => return true,
            Component::ParentDir => depth -= 1,
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    false
}

/// Canonicalizes a package path and checks that it stays inside the package folder.
fn inside_package(
    root: &Path,
    path: &Path,
    written: &str,
    origin: &str,
) -> Result<PathBuf, PrepareError> {
    let resolved = fs::canonicalize(path).map_err(|_| PrepareError::ProgramNotFound {
        program: written.to_owned(),
        origin: origin.to_owned(),
        detail: format!("`{}` cannot be resolved", path.display()),
    })?;
    if !resolved.starts_with(root) {
        return Err(PrepareError::OutsidePackage {
            written: written.to_owned(),
            origin: origin.to_owned(),
            resolved,
        });
    }
    Ok(resolved)
}

/// Looks a bare program name up in [`MINIMAL_PATH`], the `PATH` the agent gets.
fn search_host_path(program: &str) -> Option<PathBuf> {
    MINIMAL_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path)
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn check_executable(path: &Path, origin: &str) -> Result<(), PrepareError> {
    if is_executable_file(path) {
        return Ok(());
    }
    Err(PrepareError::NotExecutable {
        path: path.to_path_buf(),
        origin: origin.to_owned(),
    })
}

fn utf8(path: PathBuf) -> Result<String, PrepareError> {
    path.into_os_string()
        .into_string()
        .map_err(|path| PrepareError::NonUtf8Path { path: path.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_match_cases() {
        assert!(wildcard_match("*.py", "agent.py"));
        assert!(wildcard_match("a?ent*", "agent.py"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("*.py", "agent.pyc"));
        assert!(!wildcard_match("?", ""));
        assert!(wildcard_match("*a*b", "xxaxxb"));
    }

    #[test]
    fn context_relative_rejects_escape() {
        assert_eq!(context_relative("/a/./b/"), Some("a/b".to_owned()));
        assert_eq!(context_relative("."), Some(String::new()));
        assert_eq!(context_relative("a/../.."), None);
    }

    #[test]
    fn climbs_out_cases() {
        assert!(climbs_out(Path::new("../x")));
        assert!(climbs_out(Path::new("a/../../x")));
        assert!(climbs_out(Path::new("./..")));
        assert!(!climbs_out(Path::new("a/../x")));
        assert!(!climbs_out(Path::new("./a/b/..")));
        assert!(!climbs_out(Path::new("..a/b..")));
    }

    #[test]
    fn relative_to_cases() {
        assert_eq!(relative_to("/app/x", "/app"), Some("x"));
        assert_eq!(relative_to("/app", "/app"), Some(""));
        assert_eq!(relative_to("/application", "/app"), None);
        assert_eq!(relative_to("/x/y", "/"), Some("x/y"));
    }

    #[test]
    fn exec_form_suggestion_quotes_words() {
        assert_eq!(
            exec_form_suggestion("CMD", "python3 \"my agent.py\""),
            "such as `CMD [\"python3\", \"my agent.py\"]`"
        );
        assert_eq!(
            exec_form_suggestion("CMD", "echo 'unclosed"),
            "such as `CMD [\"python3\", \"/app/agent.py\"]`"
        );
    }
}
