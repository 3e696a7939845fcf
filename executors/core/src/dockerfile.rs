//! A Dockerfile reader that keeps only what the backends need: the last stage's `WORKDIR`, its
//! `COPY`/`ADD` instructions and its `ENTRYPOINT` and `CMD`.
//!
//! Every backend checks a package with [`check_dockerfile`] before it prepares it, so that a
//! package is valid or invalid alike on all of them: the final stage must name the agent with a
//! non-empty `ENTRYPOINT` or `CMD`, in exec or shell form, and an argument that starts like an
//! exec-form JSON array must be one. The subprocess backend also maps the exec form to package
//! files, from the [`FinalStage`] that the check returns.
//!
//! The reader follows the classic builder's syntax. Instructions are case-insensitive. A line
//! ending in the escape character (`\`, or the one set by a leading `# escape=` directive)
//! continues on the next line, and comment lines are dropped even inside a continuation. An
//! argument that parses as a JSON array of strings is in exec form. `ENV` and `ARG` values are
//! substituted into `WORKDIR`, `COPY` and `ADD` arguments as the builder does (`$name`, `${name}`,
//! `${name:-default}` and `${name:+alternative}`), with caps on the length of each value
//! ([`MAX_EXPANDED_VALUE_BYTES`]) and on all substituted text ([`MAX_EXPANDED_TOTAL_BYTES`]).
//! Every other instruction is skipped.
//!
//! A Dockerfile that is not valid UTF-8 is read with invalid bytes replaced, as the builder
//! reads bytes it does not interpret (such as a Latin-1 letter in a comment). A file that starts
//! with a UTF-16 byte order mark is rejected, since no builder reads UTF-16.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::Path;

use crate::ExecutorError;

/// Maximum Dockerfile size in bytes. Typical Dockerfiles are a few KiB, and the cap keeps a
/// hostile package from making the engine load a huge file into memory.
pub const MAX_DOCKERFILE_BYTES: u64 = 1024 * 1024;

/// Number of characters of an instruction's argument quoted in an error message.
const MAX_QUOTED_CHARS: usize = 200;

/// Example of an exec-form instruction, for messages that have no better suggestion.
const EXAMPLE_ARGV: &str = "[\"python3\", \"/app/agent.py\"]";

/// Standard `PATH` of Linux images, where a bare program name is looked up inside the image.
pub const IMAGE_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The form of an `ENTRYPOINT` or `CMD` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandForm {
    /// `["program", "arg"]`: run as given, with no shell.
    Exec(Vec<String>),
    /// `program arg`: run through `/bin/sh -c`, so it cannot be mapped to one command.
    Shell(String),
    /// Text that starts like an exec-form JSON array but is not one, such as
    /// `["python3" "agent.py"]`. The builder would run it as a shell command, which is never
    /// what its author meant, so [`FinalStage::check_agent_command`] rejects it.
    InvalidExec(InvalidExecForm),
}

impl CommandForm {
    /// Returns true when the form starts nothing: an empty JSON array or no text at all.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Exec(argv) => argv.is_empty(),
            Self::Shell(text) => text.is_empty(),
            Self::InvalidExec(_) => false,
        }
    }
}

/// An `ENTRYPOINT` or `CMD` argument that starts like an exec-form JSON array but does not
/// parse as one, with what the parser found and the fix to suggest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidExecForm {
    /// `ENTRYPOINT` or `CMD`.
    pub instruction: &'static str,
    /// Line number of the instruction (1-based).
    pub line: usize,
    /// The argument as written, cut to a length that fits a message.
    pub text: String,
    /// The JSON parser's message and the character where it stopped.
    pub problem: String,
    /// The probable cause, such as a missing comma, when the parser error points to one.
    pub hint: Option<&'static str>,
    /// The instruction rewritten as valid exec form, when the items can be recovered.
    pub suggestion: Option<String>,
}

impl fmt::Display for InvalidExecForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on line {} is not a valid JSON array: {} in `{}`",
            self.instruction, self.line, self.problem, self.text
        )?;
        if let Some(hint) = self.hint {
            write!(f, " ({hint})")?;
        }
        f.write_str(
            ". Container runtimes would run it as a shell command, which fails: write it as ",
        )?;
        match &self.suggestion {
            Some(suggestion) => write!(f, "`{suggestion}`"),
            None => write!(
                f,
                "a JSON array of double-quoted strings, such as `{} {EXAMPLE_ARGV}`",
                self.instruction
            ),
        }
    }
}

/// One `COPY` or `ADD` instruction of the last stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyInstruction {
    /// `COPY` or `ADD`, upper case.
    pub instruction: &'static str,
    /// Line number of the instruction (1-based), for messages.
    pub line: usize,
    /// Source paths as written (after variable substitution), relative to the build context.
    pub sources: Vec<String>,
    /// Absolute image path of the destination, with `WORKDIR` applied, without a trailing `/`.
    pub destination: String,
    /// True when the destination is a directory: it ends in `/` or there are several sources.
    pub destination_is_dir: bool,
    /// True when a `WORKDIR` of this stage created the destination, so it is a directory even
    /// without a trailing `/`.
    pub destination_is_workdir: bool,
    /// Value of `--from=`: the sources come from another stage or image, not from the package.
    pub from: Option<String>,
}

/// The parts of a Dockerfile's last stage that the backends use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalStage {
    /// Line number of the stage's `FROM`.
    pub from_line: usize,
    /// Base image or stage name, as written.
    pub base: String,
    /// Working directory when the container starts, an absolute image path.
    pub workdir: String,
    /// Copies, in Dockerfile order, including those inherited from a stage used as base.
    pub copies: Vec<CopyInstruction>,
    /// Last `ENTRYPOINT`, with its line, when the Dockerfile sets one.
    pub entrypoint: Option<(usize, CommandForm)>,
    /// Last `CMD`, with its line, unless a later `ENTRYPOINT` reset it.
    pub cmd: Option<(usize, CommandForm)>,
}

/// Error reading a Dockerfile, or a Dockerfile that does not name the agent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DockerfileError {
    /// No `FROM` instruction.
    #[error("the Dockerfile has no FROM instruction")]
    NoFrom,
    /// An instruction that needs arguments has none.
    #[error("line {line}: {instruction} needs arguments")]
    MissingArguments {
        /// Line number (1-based).
        line: usize,
        /// Instruction name, upper case.
        instruction: String,
    },
    /// A `COPY` or `ADD` with fewer than two paths.
    #[error("line {line}: {instruction} needs at least one source and a destination")]
    CopyWithoutDestination {
        /// Line number (1-based).
        line: usize,
        /// `COPY` or `ADD`.
        instruction: &'static str,
    },
    /// The Dockerfile is larger than [`MAX_DOCKERFILE_BYTES`].
    #[error(
        "the Dockerfile has {size} bytes, more than the {MAX_DOCKERFILE_BYTES} that agentrun \
         reads: shorten it"
    )]
    TooLarge {
        /// Size of the Dockerfile in bytes.
        size: u64,
    },
    /// The last stage sets neither `ENTRYPOINT` nor `CMD`, or only empty ones.
    #[error(
        "the Dockerfile's final stage (FROM {base} on line {line}) has no ENTRYPOINT or CMD that \
         starts the agent, so a container would run the base image's own command instead: add \
         one, such as `ENTRYPOINT {EXAMPLE_ARGV}`"
    )]
    NoAgentCommand {
        /// Base image of the last stage, as written.
        base: String,
        /// Line of its `FROM`.
        line: usize,
    },
    /// The last stage's `ENTRYPOINT` or `CMD` starts like exec form but is not valid JSON.
    #[error("{0}")]
    InvalidExecForm(InvalidExecForm),
    /// An item of the last stage's `ENTRYPOINT` or `CMD` contains a NUL character, which no
    /// program can receive in its arguments.
    #[error(
        "{instruction} on line {line} has a NUL character in `{item}`, which no program can \
         receive as an argument: remove it"
    )]
    NulInCommand {
        /// `ENTRYPOINT` or `CMD`.
        instruction: &'static str,
        /// Line number of the instruction (1-based).
        line: usize,
        /// The item, with the NUL written as `\0` and cut to a length that fits a message.
        item: String,
    },
    /// The file starts with a UTF-16 byte order mark.
    #[error(
        "the Dockerfile is encoded as UTF-16, which image builders do not read: save it as UTF-8"
    )]
    Utf16,
    /// Substituting a variable made one value longer than [`MAX_EXPANDED_VALUE_BYTES`].
    #[error(
        "line {line}: substituting ${variable} makes a value longer than {limit} bytes, the \
         limit agentrun applies to one value: reference fewer or shorter variables"
    )]
    ExpandedValueTooLarge {
        /// Line number of the instruction (1-based).
        line: usize,
        /// Name of the variable whose value passed the limit.
        variable: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// Variable substitution inserted more than [`MAX_EXPANDED_TOTAL_BYTES`] over the file.
    #[error(
        "line {line}: substituting ${variable} brings the text that variables insert over the \
         whole Dockerfile past {limit} bytes, the limit agentrun applies: reference fewer or \
         shorter variables"
    )]
    ExpandedTotalTooLarge {
        /// Line number of the instruction (1-based).
        line: usize,
        /// Name of the variable whose value passed the limit.
        variable: String,
        /// The limit in bytes.
        limit: usize,
    },
}

/// Reads `root/Dockerfile` and checks the rule that every backend applies before it prepares a
/// package: the final stage names the agent (see [`FinalStage::check_agent_command`]).
///
/// Returns the final stage, for backends that need more of it.
///
/// # Errors
///
/// [`ExecutorError::InvalidPackage`] when the Dockerfile is missing, too large, malformed or
/// does not name the agent, and [`ExecutorError::Io`] when reading it fails otherwise.
pub fn check_dockerfile(root: &Path) -> Result<FinalStage, ExecutorError> {
    let invalid = |reason: String| ExecutorError::InvalidPackage {
        path: root.to_path_buf(),
        reason,
    };
    let path = root.join("Dockerfile");
    let metadata = match fs::metadata(&path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(invalid(
                "the package has no Dockerfile at its top level".to_owned(),
            ))
        }
        Err(error) => {
            return Err(ExecutorError::io(
                format!("reading {}", path.display()),
                error,
            ))
        }
    };
    if metadata.len() > MAX_DOCKERFILE_BYTES {
        return Err(invalid(
            DockerfileError::TooLarge {
                size: metadata.len(),
            }
            .to_string(),
        ));
    }
    let bytes = fs::read(&path)
        .map_err(|error| ExecutorError::io(format!("reading {}", path.display()), error))?;
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return Err(invalid(DockerfileError::Utf16.to_string()));
    }
    let text = String::from_utf8_lossy(&bytes);

    let stage = parse(&text).map_err(|error| invalid(format!("invalid Dockerfile: {error}")))?;
    stage
        .check_agent_command()
        .map_err(|error| invalid(error.to_string()))?;
    Ok(stage)
}

impl FinalStage {
    /// Checks that the stage names the agent: it has an `ENTRYPOINT` or a `CMD` (its own or one
    /// it inherits from an earlier stage of the same Dockerfile) that is not empty, and neither
    /// is text that starts like an exec-form JSON array without being one, and no item contains
    /// a NUL character. Shell form passes, since container runtimes run it.
    ///
    /// # Errors
    ///
    /// [`DockerfileError::InvalidExecForm`], [`DockerfileError::NulInCommand`] and
    /// [`DockerfileError::NoAgentCommand`].
    pub fn check_agent_command(&self) -> Result<(), DockerfileError> {
        let commands = [("ENTRYPOINT", &self.entrypoint), ("CMD", &self.cmd)];
        for (instruction, command) in commands {
            let Some((line, form)) = command else {
                continue;
            };
            let items: Vec<&str> = match form {
                CommandForm::InvalidExec(invalid) => {
                    return Err(DockerfileError::InvalidExecForm(invalid.clone()));
                }
                CommandForm::Exec(argv) => argv.iter().map(String::as_str).collect(),
                CommandForm::Shell(text) => vec![text.as_str()],
            };
            if let Some(item) = items.into_iter().find(|item| item.contains('\0')) {
                return Err(DockerfileError::NulInCommand {
                    instruction,
                    line: *line,
                    item: quote_cut(&item.replace('\0', "\\0")),
                });
            }
        }
        let names_agent = self
            .entrypoint
            .iter()
            .chain(&self.cmd)
            .any(|(_, form)| !form.is_empty());
        if !names_agent {
            return Err(DockerfileError::NoAgentCommand {
                base: self.base.clone(),
                line: self.from_line,
            });
        }
        Ok(())
    }
}

/// Per-stage state while reading.
#[derive(Clone, Debug, Default)]
struct Stage {
    name: Option<String>,
    state: FinalStage,
    workdirs: Vec<String>,
    env: HashMap<String, String>,
    cmd_set_here: bool,
}

/// Reads a Dockerfile and returns its last stage.
///
/// # Errors
///
/// [`DockerfileError`] when the file has no `FROM` or an instruction the backend needs is
/// malformed.
pub fn parse(text: &str) -> Result<FinalStage, DockerfileError> {
    // Editors on Windows may start the file with a byte order mark, which the builder skips.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let escape = escape_directive(text);
    let mut global_args: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut expander = Expander::new();

    for (line, instruction, arguments) in logical_lines(text, escape) {
        expander.line = line;
        let keyword = instruction.to_ascii_uppercase();
        if keyword == "FROM" {
            let stage = start_stage(line, &arguments, &stages, &global_args, &mut expander)?;
            stages.push(stage);
            continue;
        }
        let Some(stage) = stages.last_mut() else {
            // Only ARG may come before the first FROM, and its values are defaults for the stages.
            if keyword == "ARG" {
                for (name, value) in parse_arg(&arguments, &global_args, escape, &mut expander)? {
                    global_args.insert(name, value.unwrap_or_default());
                }
            }
            continue;
        };

        match keyword.as_str() {
            "WORKDIR" => {
                let path = expander.expand(arguments.trim(), &stage.env, escape)?;
                if path.is_empty() {
                    return Err(DockerfileError::MissingArguments {
                        line,
                        instruction: keyword,
                    });
                }
                let workdir = join_image_path(&stage.state.workdir, &path);
                stage.workdirs.push(workdir.clone());
                stage.state.workdir = workdir;
            }
            "COPY" | "ADD" => {
                let name = if keyword == "COPY" { "COPY" } else { "ADD" };
                let copy = parse_copy(name, line, &arguments, stage, escape, &mut expander)?;
                stage.state.copies.push(copy);
            }
            "ENTRYPOINT" => {
                stage.state.entrypoint =
                    Some((line, parse_command("ENTRYPOINT", line, &arguments)));
                // An ENTRYPOINT resets a CMD that the base set, but not one set in this stage.
                if !stage.cmd_set_here {
                    stage.state.cmd = None;
                }
            }
            "CMD" => {
                stage.state.cmd = Some((line, parse_command("CMD", line, &arguments)));
                stage.cmd_set_here = true;
            }
            "ENV" => {
                for (name, value) in parse_env(&arguments, &stage.env, escape, &mut expander)? {
                    stage.env.insert(name, value);
                }
            }
            "ARG" => {
                for (name, value) in parse_arg(&arguments, &stage.env, escape, &mut expander)? {
                    let value = value.or_else(|| global_args.get(&name).cloned());
                    // An ENV of the same name wins over an ARG, as in the builder.
                    stage.env.entry(name).or_insert(value.unwrap_or_default());
                }
            }
            _ => {}
        }
    }

    stages
        .pop()
        .map(|stage| stage.state)
        .ok_or(DockerfileError::NoFrom)
}

/// Starts a stage from a `FROM` line, inheriting the state of an earlier stage used as base.
fn start_stage(
    line: usize,
    arguments: &str,
    stages: &[Stage],
    global_args: &HashMap<String, String>,
    expander: &mut Expander,
) -> Result<Stage, DockerfileError> {
    let words: Vec<&str> = arguments
        .split_whitespace()
        .filter(|word| !word.starts_with("--"))
        .collect();
    let Some(base) = words.first() else {
        return Err(DockerfileError::MissingArguments {
            line,
            instruction: "FROM".to_owned(),
        });
    };
    let base = expander.expand(base, global_args, '\\')?;
    let name = match words.as_slice() {
        [_, as_keyword, name, ..] if as_keyword.eq_ignore_ascii_case("as") => {
            Some(name.to_ascii_lowercase())
        }
        _ => None,
    };

    let parent = stages
        .iter()
        .rev()
        .find(|stage| stage.name.as_deref() == Some(base.to_ascii_lowercase().as_str()));
    let mut stage = match parent {
        Some(parent) => Stage {
            name: None,
            cmd_set_here: false,
            ..parent.clone()
        },
        None => Stage {
            state: FinalStage {
                workdir: "/".to_owned(),
                ..FinalStage::default()
            },
            ..Stage::default()
        },
    };
    stage.name = name;
    stage.state.from_line = line;
    stage.state.base = base;
    Ok(stage)
}

/// Reads the `# escape=` parser directive, which may only appear before any instruction.
fn escape_directive(text: &str) -> char {
    for line in text.lines() {
        let line = line.trim();
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = comment.split_once('=') else {
            break;
        };
        if key.trim().eq_ignore_ascii_case("escape") {
            let value = value.trim();
            if value == "`" {
                return '`';
            }
            return '\\';
        }
    }
    '\\'
}

/// Splits a Dockerfile into `(line number, instruction, arguments)`, joining continuation lines
/// and dropping comments and empty lines.
fn logical_lines(text: &str, escape: char) -> Vec<(usize, String, String)> {
    let mut result = Vec::new();
    let mut current: Option<(usize, String)> = None;

    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        // A blank line inside a continuation is skipped, as the builder does.
        if trimmed.is_empty() {
            continue;
        }

        let body = raw.trim_end();
        let (body, continues) = match body.strip_suffix(escape) {
            Some(rest) => (rest, true),
            None => (body, false),
        };
        let entry = current.get_or_insert_with(|| (index + 1, String::new()));
        entry.1.push_str(body);

        if !continues {
            if let Some((line, joined)) = current.take() {
                result.push(split_instruction(line, &joined));
            }
        }
    }
    if let Some((line, joined)) = current {
        result.push(split_instruction(line, &joined));
    }
    result
}

fn split_instruction(line: usize, joined: &str) -> (usize, String, String) {
    let joined = joined.trim_start();
    match joined.split_once(char::is_whitespace) {
        Some((instruction, arguments)) => (line, instruction.to_owned(), arguments.to_owned()),
        None => (line, joined.to_owned(), String::new()),
    }
}

/// Reads an `ENTRYPOINT` or `CMD` argument: exec form when it is a JSON array of strings.
///
/// Text that starts like a JSON array is meant as exec form, so one that does not parse is
/// [`CommandForm::InvalidExec`]: a `[` followed by a quote or a `]`, or a `[` with a `]` at the
/// end. A shell command that starts with the `[` test builtin (`[ -f x ] && y`) stays shell form.
fn parse_command(instruction: &'static str, line: usize, arguments: &str) -> CommandForm {
    let trimmed = arguments.trim();
    let Some(inside) = trimmed.strip_prefix('[') else {
        return CommandForm::Shell(trimmed.to_owned());
    };
    let error = match serde_json::from_str::<Vec<String>>(trimmed) {
        Ok(argv) => return CommandForm::Exec(argv),
        Err(error) => error,
    };
    let looks_like_exec =
        inside.trim_start().starts_with(['"', '\'', ']']) || trimmed.ends_with(']');
    if !looks_like_exec {
        return CommandForm::Shell(trimmed.to_owned());
    }
    CommandForm::InvalidExec(invalid_exec_form(instruction, line, trimmed, &error))
}

/// Describes why `text` is not a valid exec-form array and how to write it.
fn invalid_exec_form(
    instruction: &'static str,
    line: usize,
    text: &str,
    error: &serde_json::Error,
) -> InvalidExecForm {
    // serde_json ends its messages with " at line L column C"; the argument is one line, so the
    // column alone locates the problem.
    let message = error.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(message, _)| message);
    let problem = format!("{message} at character {}", error.column());

    let hint = if text.contains('\'') && !text.contains('"') {
        Some("JSON strings take double quotes")
    } else if message.starts_with("expected `,` or `]`") {
        Some("is a comma missing between two items?")
    } else if error.is_eof() {
        Some("is the closing `]` missing?")
    } else {
        None
    };
    let suggestion = recover_items(text).map(|items| {
        let quoted: Vec<String> = items
            .iter()
            .map(|item| serde_json::Value::String(item.clone()).to_string())
            .collect();
        format!("{instruction} [{}]", quoted.join(", "))
    });

    InvalidExecForm {
        instruction,
        line,
        text: quote_cut(text),
        problem,
        hint,
        suggestion,
    }
}

/// Cuts `text` to [`MAX_QUOTED_CHARS`] characters for a message, marking a cut with `…`.
fn quote_cut(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Recovers the items of a broken exec-form array whose only faults are missing commas, a
/// missing `]` or single quotes: `["a" "b"`, `['a', 'b']`. Returns `None` for anything else,
/// such as unquoted words, and for an array with no items.
fn recover_items(text: &str) -> Option<Vec<String>> {
    let double_quoted = recover_double_quoted(text);
    if double_quoted.is_some() || text.contains('"') {
        return double_quoted;
    }
    recover_double_quoted(&text.replace('\'', "\""))
}

/// Reads `[`, then JSON strings separated by commas or whitespace, then an optional `]`.
fn recover_double_quoted(text: &str) -> Option<Vec<String>> {
    let mut rest = text.strip_prefix('[')?;
    let mut items = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() || rest == "]" {
            break;
        }
        if !rest.starts_with('"') {
            return None;
        }
        let mut strings = serde_json::Deserializer::from_str(rest).into_iter::<String>();
        let item = strings.next()?.ok()?;
        rest = &rest[strings.byte_offset()..];
        items.push(item);
    }
    (!items.is_empty()).then_some(items)
}

/// Reads a `COPY` or `ADD` instruction: flags, then sources and a destination, in JSON or
/// whitespace-separated form.
fn parse_copy(
    instruction: &'static str,
    line: usize,
    arguments: &str,
    stage: &Stage,
    escape: char,
    expander: &mut Expander,
) -> Result<CopyInstruction, DockerfileError> {
    let mut rest = arguments.trim();
    let mut from = None;
    // Flags come first: --from=, --chown=, --chmod=, --link and others the backend ignores.
    while let Some(flag) = rest.strip_prefix("--") {
        let (word, tail) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
        if let Some((name, value)) = word.split_once('=') {
            if name.eq_ignore_ascii_case("from") {
                from = Some(value.to_owned());
            }
        }
        rest = tail.trim_start();
    }

    let mut paths: Vec<String> = if rest.starts_with('[') {
        match serde_json::from_str::<Vec<String>>(rest) {
            Ok(paths) => paths,
            Err(_) => split_words(rest),
        }
    } else {
        split_words(rest)
    };
    for path in &mut paths {
        *path = expander.expand(path, &stage.env, escape)?;
    }

    let Some(destination) = paths.pop() else {
        return Err(DockerfileError::CopyWithoutDestination { line, instruction });
    };
    if paths.is_empty() {
        return Err(DockerfileError::CopyWithoutDestination { line, instruction });
    }

    let destination_is_dir = destination.ends_with('/') || paths.len() > 1;
    let destination = join_image_path(&stage.state.workdir, &destination);
    let destination_is_workdir = stage.workdirs.contains(&destination);
    Ok(CopyInstruction {
        instruction,
        line,
        sources: paths,
        destination,
        destination_is_dir,
        destination_is_workdir,
        from,
    })
}

fn split_words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// Reads `ENV name=value ...` or the legacy `ENV name value`.
fn parse_env(
    arguments: &str,
    env: &HashMap<String, String>,
    escape: char,
    expander: &mut Expander,
) -> Result<Vec<(String, String)>, DockerfileError> {
    let arguments = arguments.trim();
    let first = arguments.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        // Legacy form: one variable, the rest of the line is its value.
        return match arguments.split_once(char::is_whitespace) {
            Some((name, value)) => Ok(vec![(
                name.to_owned(),
                expander.expand(value.trim(), env, escape)?,
            )]),
            None => Ok(Vec::new()),
        };
    }
    let mut pairs = Vec::new();
    for word in shell_words_with_quotes(arguments) {
        if let Some((name, value)) = word.split_once('=') {
            pairs.push((name.to_owned(), expander.expand(value, env, escape)?));
        }
    }
    Ok(pairs)
}

/// Reads `ARG name[=default] ...`.
fn parse_arg(
    arguments: &str,
    env: &HashMap<String, String>,
    escape: char,
    expander: &mut Expander,
) -> Result<Vec<(String, Option<String>)>, DockerfileError> {
    let mut pairs = Vec::new();
    for word in shell_words_with_quotes(arguments) {
        match word.split_once('=') {
            Some((name, value)) => {
                pairs.push((name.to_owned(), Some(expander.expand(value, env, escape)?)));
            }
            None => pairs.push((word, None)),
        }
    }
    Ok(pairs)
}

/// Splits on whitespace outside quotes, keeping the quotes for [`expand`] to remove.
fn shell_words_with_quotes(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(open) if c == open => {
                quote = None;
                word.push(c);
            }
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                word.push(c);
            }
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            None => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Nesting depth up to which variables in `${name:-default}` defaults are substituted. Deeper
/// text stays as written, so a hostile Dockerfile cannot exhaust the stack.
const MAX_EXPANSION_DEPTH: usize = 4;

/// Maximum length in bytes of one value after variable substitution. Each `ENV A=${B}${B}` can
/// double a value, so without a cap forty lines would request half a terabyte.
pub const MAX_EXPANDED_VALUE_BYTES: usize = 64 * 1024;

/// Maximum number of bytes that variable substitution may insert over a whole Dockerfile.
pub const MAX_EXPANDED_TOTAL_BYTES: usize = 1024 * 1024;

/// Variable substitution with the caps on value and total size, for one Dockerfile.
#[derive(Debug)]
struct Expander {
    /// Line of the instruction being read, for errors.
    line: usize,
    /// Bytes inserted by substitution so far, over the whole Dockerfile.
    substituted_bytes: usize,
}

impl Expander {
    fn new() -> Self {
        Self {
            line: 0,
            substituted_bytes: 0,
        }
    }

    /// Substitutes `ENV`/`ARG` variables and removes quotes, as the builder does for
    /// `WORKDIR`, `COPY`, `ADD`, `ENV` and `ARG` arguments. Unset variables become empty text.
    ///
    /// # Errors
    ///
    /// [`DockerfileError::ExpandedValueTooLarge`] and
    /// [`DockerfileError::ExpandedTotalTooLarge`] when substitution passes a cap.
    fn expand(
        &mut self,
        text: &str,
        env: &HashMap<String, String>,
        escape: char,
    ) -> Result<String, DockerfileError> {
        self.expand_at_depth(text, env, escape, 0)
    }

    fn expand_at_depth(
        &mut self,
        text: &str,
        env: &HashMap<String, String>,
        escape: char,
        depth: usize,
    ) -> Result<String, DockerfileError> {
        if depth > MAX_EXPANSION_DEPTH {
            return Ok(text.to_owned());
        }
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        let mut quote: Option<char> = None;

        while let Some(c) = chars.next() {
            if c == escape && quote != Some('\'') {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
                continue;
            }
            match (c, quote) {
                ('\'', None) | ('"', None) => quote = Some(c),
                ('\'', Some('\'')) | ('"', Some('"')) => quote = None,
                ('$', quote) if quote != Some('\'') => {
                    let (name, value) = self.expand_variable(&mut chars, env, depth)?;
                    if out.len() + value.len() > MAX_EXPANDED_VALUE_BYTES {
                        return Err(DockerfileError::ExpandedValueTooLarge {
                            line: self.line,
                            variable: name,
                            limit: MAX_EXPANDED_VALUE_BYTES,
                        });
                    }
                    out.push_str(&value);
                }
                _ => out.push(c),
            }
        }
        Ok(out)
    }

    /// Reads one variable reference after its `$` and returns the variable's name and the text
    /// that replaces the reference.
    fn expand_variable(
        &mut self,
        chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
        env: &HashMap<String, String>,
        depth: usize,
    ) -> Result<(String, String), DockerfileError> {
        if chars.peek() == Some(&'{') {
            chars.next();
            let mut inner = String::new();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                inner.push(c);
            }
            if let Some((name, default)) = inner.split_once(":-") {
                let value = self.lookup(name, env)?;
                let value = if value.is_empty() {
                    self.expand_at_depth(default, env, '\\', depth + 1)?
                } else {
                    value
                };
                return Ok((name.to_owned(), value));
            }
            if let Some((name, alternative)) = inner.split_once(":+") {
                // Only the alternative is inserted, so the variable's own value is not counted.
                let value = if env.get(name).is_none_or(String::is_empty) {
                    String::new()
                } else {
                    self.expand_at_depth(alternative, env, '\\', depth + 1)?
                };
                return Ok((name.to_owned(), value));
            }
            let value = self.lookup(&inner, env)?;
            return Ok((inner, value));
        }

        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if name.is_empty() {
            return Ok((name, "$".to_owned()));
        }
        let value = self.lookup(&name, env)?;
        Ok((name, value))
    }

    /// Returns a variable's value, counting its length against the whole file's cap.
    fn lookup(
        &mut self,
        name: &str,
        env: &HashMap<String, String>,
    ) -> Result<String, DockerfileError> {
        let value = env.get(name).cloned().unwrap_or_default();
        self.substituted_bytes = self.substituted_bytes.saturating_add(value.len());
        if self.substituted_bytes > MAX_EXPANDED_TOTAL_BYTES {
            return Err(DockerfileError::ExpandedTotalTooLarge {
                line: self.line,
                variable: name.to_owned(),
                limit: MAX_EXPANDED_TOTAL_BYTES,
            });
        }
        Ok(value)
    }
}

/// Joins an image path to a base directory and normalizes `.` and `..` lexically. The result is
/// absolute and has no trailing `/` (except for the root itself).
pub fn join_image_path(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{base}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(argv: &[&str]) -> CommandForm {
        CommandForm::Exec(argv.iter().map(|arg| (*arg).to_owned()).collect())
    }

    fn stage(text: &str) -> FinalStage {
        parse(text).expect("Dockerfile in the test is valid")
    }

    #[test]
    fn parse_reads_entrypoint_and_cmd() {
        let stage = stage("FROM scratch\nENTRYPOINT [\"/agent\", \"-v\"]\nCMD [\"run\"]\n");
        assert_eq!(stage.entrypoint, Some((2, exec(&["/agent", "-v"]))));
        assert_eq!(stage.cmd, Some((3, exec(&["run"]))));
        assert_eq!(stage.workdir, "/");
    }

    #[test]
    fn parse_keeps_shell_form() {
        let stage = stage("FROM python:3.11-slim\nENTRYPOINT python3 agent.py\n");
        assert_eq!(
            stage.entrypoint,
            Some((2, CommandForm::Shell("python3 agent.py".to_owned())))
        );
    }

    /// Returns the invalid exec form of `instruction`'s argument `text`, failing the test when
    /// the argument parses otherwise.
    fn invalid_exec(instruction: &str, text: &str) -> InvalidExecForm {
        let stage = stage(&format!("FROM scratch\n{instruction} {text}\n"));
        let form = if instruction == "CMD" {
            stage.cmd
        } else {
            stage.entrypoint
        };
        match form {
            Some((2, CommandForm::InvalidExec(invalid))) => invalid,
            other => panic!("expected an invalid exec form, got {other:?}"),
        }
    }

    #[test]
    fn parse_missing_comma_is_invalid_exec_form() {
        let invalid = invalid_exec("ENTRYPOINT", "[\"python3\" \"/app/agent.py\"]");
        assert_eq!(invalid.instruction, "ENTRYPOINT");
        assert_eq!(invalid.line, 2);
        assert_eq!(invalid.problem, "expected `,` or `]` at character 12");
        assert_eq!(invalid.hint, Some("is a comma missing between two items?"));
        assert_eq!(
            invalid.suggestion.as_deref(),
            Some("ENTRYPOINT [\"python3\", \"/app/agent.py\"]")
        );
        assert_eq!(
            invalid.to_string(),
            "ENTRYPOINT on line 2 is not a valid JSON array: expected `,` or `]` at character 12 \
             in `[\"python3\" \"/app/agent.py\"]` (is a comma missing between two items?). \
             Container runtimes would run it as a shell command, which fails: write it as \
             `ENTRYPOINT [\"python3\", \"/app/agent.py\"]`"
        );
    }

    #[test]
    fn parse_single_quotes_are_invalid_exec_form() {
        let invalid = invalid_exec("CMD", "['/agent', '-v']");
        assert_eq!(invalid.hint, Some("JSON strings take double quotes"));
        assert_eq!(
            invalid.suggestion.as_deref(),
            Some("CMD [\"/agent\", \"-v\"]")
        );
    }

    #[test]
    fn parse_unclosed_array_is_invalid_exec_form() {
        let invalid = invalid_exec("CMD", "[\"/agent\", \"-v\"");
        assert_eq!(invalid.hint, Some("is the closing `]` missing?"));
        assert_eq!(
            invalid.suggestion.as_deref(),
            Some("CMD [\"/agent\", \"-v\"]")
        );
    }

    /// Unquoted words leave nothing to recover, so the message gives the general form.
    #[test]
    fn parse_unquoted_words_are_invalid_exec_form() {
        let invalid = invalid_exec("ENTRYPOINT", "[python3, agent.py]");
        assert_eq!(invalid.problem, "expected value at character 2");
        assert_eq!(invalid.hint, None);
        assert_eq!(invalid.suggestion, None);
        assert!(
            invalid
                .to_string()
                .ends_with("a JSON array of double-quoted strings, such as `ENTRYPOINT [\"python3\", \"/app/agent.py\"]`"),
            "{invalid}"
        );
    }

    #[test]
    fn parse_non_string_item_is_invalid_exec_form() {
        let invalid = invalid_exec("CMD", "[\"/agent\", 3]");
        assert!(
            invalid.problem.starts_with("invalid type: integer `3`"),
            "{}",
            invalid.problem
        );
    }

    /// A shell command that starts with the `[` test builtin is still shell form.
    #[test]
    fn parse_test_builtin_stays_shell_form() {
        let stage = stage("FROM scratch\nCMD [ -x /agent ] && exec /agent\n");
        assert_eq!(
            stage.cmd,
            Some((
                2,
                CommandForm::Shell("[ -x /agent ] && exec /agent".to_owned())
            ))
        );
    }

    /// A long argument is cut in the message.
    #[test]
    fn invalid_exec_form_quotes_at_most_200_characters() {
        let long = format!("[\"{}\" \"x\"]", "a".repeat(500));
        let invalid = invalid_exec("CMD", &long);
        assert_eq!(invalid.text.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(invalid.text.ends_with('…'));
    }

    #[test]
    fn check_accepts_entrypoint_cmd_and_shell_form() {
        for text in [
            "FROM scratch\nENTRYPOINT [\"/agent\"]\n",
            "FROM scratch\nCMD [\"/agent\"]\n",
            "FROM python:3.11-slim\nCMD python3 /app/agent.py\n",
            "FROM scratch\nENTRYPOINT []\nCMD [\"/agent\"]\n",
            "FROM scratch AS base\nCMD [\"/agent\"]\nFROM base\n",
        ] {
            assert_eq!(stage(text).check_agent_command(), Ok(()), "{text}");
        }
    }

    #[test]
    fn check_rejects_missing_or_empty_command() {
        for text in [
            "FROM python:3.11-slim\nCOPY . /app\n",
            "FROM python:3.11-slim\nENTRYPOINT []\n",
            "FROM python:3.11-slim\nCMD []\nENTRYPOINT []\n",
            "FROM python:3.11-slim\nCMD\n",
            "FROM scratch AS build\nENTRYPOINT [\"/x\"]\nFROM python:3.11-slim\n",
        ] {
            let error = stage(text).check_agent_command().expect_err(text);
            let DockerfileError::NoAgentCommand { base, line } = &error else {
                panic!("expected no agent command for {text:?}, got {error:?}");
            };
            assert_eq!(base, "python:3.11-slim");
            assert!(*line == 1 || *line == 3, "{text}: line {line}");
        }
    }

    #[test]
    fn check_rejects_invalid_exec_form_beside_valid_one() {
        let stage = stage("FROM scratch\nENTRYPOINT [\"/agent\"]\nCMD ['-v']\n");
        let error = stage.check_agent_command().expect_err("invalid CMD");
        assert!(
            matches!(&error, DockerfileError::InvalidExecForm(invalid) if invalid.instruction == "CMD" && invalid.line == 3),
            "{error:?}"
        );
    }

    #[test]
    fn no_agent_command_message_names_fix() {
        let error = DockerfileError::NoAgentCommand {
            base: "python:3.11-slim".to_owned(),
            line: 1,
        };
        assert_eq!(
            error.to_string(),
            "the Dockerfile's final stage (FROM python:3.11-slim on line 1) has no ENTRYPOINT or \
             CMD that starts the agent, so a container would run the base image's own command \
             instead: add one, such as `ENTRYPOINT [\"python3\", \"/app/agent.py\"]`"
        );
    }

    fn package_with(dockerfile: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
        dir
    }

    fn invalid_reason(result: Result<FinalStage, ExecutorError>) -> String {
        match result {
            Err(ExecutorError::InvalidPackage { reason, .. }) => reason,
            other => panic!("expected an invalid package, got {other:?}"),
        }
    }

    #[test]
    fn check_dockerfile_returns_final_stage() {
        let dir = package_with(b"FROM scratch\nWORKDIR /app\nCMD [\"/app/agent\"]\n");
        let stage = check_dockerfile(dir.path()).expect("valid Dockerfile");
        assert_eq!(stage.workdir, "/app");
        assert_eq!(stage.cmd, Some((3, exec(&["/app/agent"]))));
    }

    #[test]
    fn check_dockerfile_rejects_each_problem() {
        let dir = package_with(b"FROM python:3.11-slim\n");
        assert!(invalid_reason(check_dockerfile(dir.path())).contains("has no ENTRYPOINT or CMD"));

        let dir = package_with(b"FROM scratch\nENTRYPOINT [\"a\" \"b\"]\n");
        assert!(invalid_reason(check_dockerfile(dir.path()))
            .starts_with("ENTRYPOINT on line 2 is not a valid JSON array"));

        let dir = package_with(b"ENTRYPOINT [\"/agent\"]\n");
        assert_eq!(
            invalid_reason(check_dockerfile(dir.path())),
            "invalid Dockerfile: the Dockerfile has no FROM instruction"
        );

        let dir = package_with(&vec![b'#'; MAX_DOCKERFILE_BYTES as usize + 1]);
        assert_eq!(
            invalid_reason(check_dockerfile(dir.path())),
            format!(
                "the Dockerfile has {} bytes, more than the 1048576 that agentrun reads: \
                 shorten it",
                MAX_DOCKERFILE_BYTES + 1
            )
        );

        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            invalid_reason(check_dockerfile(dir.path())),
            "the package has no Dockerfile at its top level"
        );
    }

    /// Builds a Dockerfile whose every line doubles the previous value, so that `A39` would be
    /// half a terabyte. The cap stops it at the line that passes 64 KiB.
    fn doubling_dockerfile() -> String {
        let mut text = String::from("FROM x\nENV A0=x\n");
        for n in 1..40 {
            text.push_str(&format!("ENV A{n}=${{A{}}}${{A{}}}\n", n - 1, n - 1));
        }
        text.push_str("CMD [\"/agent\"]\n");
        text
    }

    #[test]
    fn parse_caps_doubling_env_values() {
        let error = parse(&doubling_dockerfile()).expect_err("A17 passes the value cap");
        // A16 is exactly 64 KiB; the second ${A16} of A17 (line 19) passes the cap.
        assert_eq!(
            error,
            DockerfileError::ExpandedValueTooLarge {
                line: 19,
                variable: "A16".to_owned(),
                limit: MAX_EXPANDED_VALUE_BYTES,
            }
        );
        assert_eq!(
            error.to_string(),
            "line 19: substituting $A16 makes a value longer than 65536 bytes, the limit \
             agentrun applies to one value: reference fewer or shorter variables"
        );
    }

    #[test]
    fn check_dockerfile_rejects_doubling_env_as_invalid_package() {
        let dir = package_with(doubling_dockerfile().as_bytes());
        let reason = invalid_reason(check_dockerfile(dir.path()));
        assert!(
            reason.starts_with("invalid Dockerfile: line 19: substituting $A16 makes a value"),
            "{reason}"
        );
    }

    #[test]
    fn parse_caps_total_substituted_text() {
        // Each line inserts 60 000 bytes: under the value cap, and line 20 passes 1 MiB in all.
        let mut text = format!("FROM x\nENV BIG={}\n", "b".repeat(60_000));
        for n in 0..20 {
            text.push_str(&format!("ENV COPY{n}=$BIG\n"));
        }
        let error = parse(&text).expect_err("the 18th copy passes the total cap");
        assert_eq!(
            error,
            DockerfileError::ExpandedTotalTooLarge {
                line: 20,
                variable: "BIG".to_owned(),
                limit: MAX_EXPANDED_TOTAL_BYTES,
            }
        );
        assert!(error.to_string().contains("past 1048576 bytes"), "{error}");
    }

    #[test]
    fn parse_caps_values_from_arg_and_defaults() {
        let big = "a".repeat(40_000);
        let text = format!("ARG X={big}\nFROM x\nARG X\nWORKDIR /${{NONE:-$X$X}}\n");
        let error = parse(&text).expect_err("the default passes the value cap");
        assert_eq!(
            error,
            DockerfileError::ExpandedValueTooLarge {
                line: 4,
                variable: "X".to_owned(),
                limit: MAX_EXPANDED_VALUE_BYTES,
            }
        );

        // An alternative inserts only its own text, not the variable's value.
        let text = format!("FROM x\nENV X={big}\nWORKDIR /${{X:+set}}\nCMD [\"/a\"]\n");
        assert_eq!(stage(&text).workdir, "/set");
    }

    #[test]
    fn check_rejects_nul_in_command_items() {
        let stage = stage("FROM x\nENTRYPOINT [\"/bin/sh\", \"/agent.sh\\u0000\"]\n");
        assert_eq!(
            stage.check_agent_command(),
            Err(DockerfileError::NulInCommand {
                instruction: "ENTRYPOINT",
                line: 2,
                item: "/agent.sh\\0".to_owned(),
            })
        );

        let dir = package_with(b"FROM x\nCMD [\"/agent\\u0000\"]\n");
        assert_eq!(
            invalid_reason(check_dockerfile(dir.path())),
            "CMD on line 2 has a NUL character in `/agent\\0`, which no program can receive \
             as an argument: remove it"
        );
    }

    #[test]
    fn check_dockerfile_reads_invalid_utf8_lossily() {
        // A Latin-1 letter in a comment, which image builders accept.
        let dir = package_with(b"FROM x\n# caf\xe9\nCMD [\"/agent\"]\n");
        let stage = check_dockerfile(dir.path()).expect("a Latin-1 comment is read");
        assert_eq!(stage.cmd, Some((3, exec(&["/agent"]))));
    }

    #[test]
    fn check_dockerfile_rejects_utf16() {
        let mut bytes = vec![0xff, 0xfe];
        for unit in "FROM x\nCMD [\"/agent\"]\n".encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        let dir = package_with(&bytes);
        assert_eq!(
            invalid_reason(check_dockerfile(dir.path())),
            "the Dockerfile is encoded as UTF-16, which image builders do not read: save it as \
             UTF-8"
        );
    }

    #[test]
    fn parse_is_case_insensitive() {
        let stage = stage("from scratch\nworkdir /app\nCopy a.py .\nentrypoint [\"x\"]\n");
        assert_eq!(stage.workdir, "/app");
        assert_eq!(stage.copies.len(), 1);
        assert_eq!(stage.copies[0].destination, "/app");
        assert!(stage.copies[0].destination_is_workdir);
        assert_eq!(stage.entrypoint, Some((4, exec(&["x"]))));
    }

    #[test]
    fn parse_joins_continuations_and_skips_comments() {
        let text = "# a comment\nFROM scratch\nCOPY a.py \\\n  # inside\n\n  b.py \\\n  /app/\nENTRYPOINT [\"/app/a.py\", \\\n \"x\"]\n";
        let stage = stage(text);
        assert_eq!(stage.copies[0].sources, ["a.py", "b.py"]);
        assert_eq!(stage.copies[0].destination, "/app");
        assert_eq!(stage.copies[0].line, 3);
        assert_eq!(stage.entrypoint, Some((8, exec(&["/app/a.py", "x"]))));
    }

    #[test]
    fn parse_honours_escape_directive() {
        let text = "# escape=`\nFROM scratch\nCOPY a `\n  /app/\n";
        let stage = stage(text);
        assert_eq!(stage.copies[0].sources, ["a"]);
        assert_eq!(stage.copies[0].destination, "/app");
    }

    #[test]
    fn parse_copy_flags_and_json_form() {
        let text = "FROM scratch\nCOPY --chown=1000:1000 --chmod=755 [\"a b.py\", \"c\", \"/app/\"]\nCOPY --from=build /out/agent /agent\nADD --chown=agent x.sh /x.sh\n";
        let stage = stage(text);
        assert_eq!(stage.copies[0].sources, ["a b.py", "c"]);
        assert_eq!(stage.copies[0].from, None);
        assert!(stage.copies[0].destination_is_dir);
        assert_eq!(stage.copies[1].from.as_deref(), Some("build"));
        assert_eq!(stage.copies[1].destination, "/agent");
        assert!(!stage.copies[1].destination_is_dir);
        assert_eq!(stage.copies[2].instruction, "ADD");
        assert_eq!(stage.copies[2].sources, ["x.sh"]);
    }

    #[test]
    fn parse_resolves_relative_workdir_and_destination() {
        let text = "FROM scratch\nWORKDIR /srv\nWORKDIR app\nCOPY agent.py bin/agent.py\n";
        let stage = stage(text);
        assert_eq!(stage.workdir, "/srv/app");
        assert_eq!(stage.copies[0].destination, "/srv/app/bin/agent.py");
        assert!(!stage.copies[0].destination_is_workdir);
    }

    #[test]
    fn parse_uses_last_stage() {
        let text = "FROM rust AS build\nWORKDIR /src\nCOPY . .\nENTRYPOINT [\"/src/x\"]\n\nFROM scratch\nCOPY --from=build /src/target/agent /agent\nCMD [\"/agent\"]\n";
        let stage = stage(text);
        assert_eq!(stage.from_line, 6);
        assert_eq!(stage.workdir, "/");
        assert_eq!(stage.copies.len(), 1);
        assert_eq!(stage.entrypoint, None);
        assert_eq!(stage.cmd, Some((8, exec(&["/agent"]))));
    }

    #[test]
    fn parse_inherits_from_earlier_stage() {
        let text = "FROM python:3.11-slim AS Base\nWORKDIR /app\nCOPY agent.py .\nCMD [\"python3\"]\nFROM base\nENTRYPOINT [\"python3\", \"agent.py\"]\n";
        let stage = stage(text);
        assert_eq!(stage.workdir, "/app");
        assert_eq!(stage.copies.len(), 1);
        // The inherited CMD is reset by this stage's ENTRYPOINT.
        assert_eq!(stage.cmd, None);
    }

    #[test]
    fn parse_entrypoint_keeps_cmd_of_same_stage() {
        let stage = stage("FROM scratch\nCMD [\"a\"]\nENTRYPOINT [\"/x\"]\n");
        assert_eq!(stage.cmd, Some((2, exec(&["a"]))));
    }

    #[test]
    fn parse_substitutes_env_and_arg() {
        let text = "ARG BASE=/opt\nFROM scratch\nARG BASE\nENV APP_HOME=\"$BASE/app\" OTHER=x\nENV LEGACY value with spaces\nWORKDIR ${APP_HOME}\nCOPY ${MISSING:-agent.py} ${APP_HOME:+$APP_HOME/bin}/\nCOPY \\$literal /x\n";
        let stage = stage(text);
        assert_eq!(stage.workdir, "/opt/app");
        assert_eq!(stage.copies[0].sources, ["agent.py"]);
        assert_eq!(stage.copies[0].destination, "/opt/app/bin");
        assert_eq!(stage.copies[1].sources, ["$literal"]);
    }

    #[test]
    fn parse_survives_deeply_nested_defaults() {
        // Past the depth limit the text stays as written.
        let nested = format!("{}x", "${A:-".repeat(10_000));
        let stage = stage(&format!("FROM scratch\nWORKDIR /{nested}\n"));
        assert!(
            stage.workdir.starts_with("/${A:-"),
            "{}",
            &stage.workdir[..20]
        );

        // Text kept as written still counts against the value cap.
        let nested = format!("{}x", "${A:-".repeat(200_000));
        assert_eq!(
            parse(&format!("FROM scratch\nWORKDIR /{nested}\n")),
            Err(DockerfileError::ExpandedValueTooLarge {
                line: 2,
                variable: "A".to_owned(),
                limit: MAX_EXPANDED_VALUE_BYTES,
            })
        );
    }

    #[test]
    fn parse_skips_byte_order_mark_and_crlf() {
        let stage = stage("\u{feff}FROM scratch\r\nCOPY a \\\r\n  /app/\r\nCMD [\"/app/a\"]\r\n");
        assert_eq!(stage.copies[0].sources, ["a"]);
        assert_eq!(stage.copies[0].destination, "/app");
        assert_eq!(stage.cmd, Some((4, exec(&["/app/a"]))));
    }

    #[test]
    fn parse_without_from_fails() {
        assert_eq!(
            parse("# only a comment\nARG X=1\n"),
            Err(DockerfileError::NoFrom)
        );
    }

    #[test]
    fn parse_copy_without_destination_fails() {
        assert_eq!(
            parse("FROM scratch\nCOPY --chown=1 agent\n"),
            Err(DockerfileError::CopyWithoutDestination {
                line: 2,
                instruction: "COPY"
            })
        );
    }

    #[test]
    fn parse_workdir_without_path_fails() {
        assert_eq!(
            parse("FROM scratch\nWORKDIR\n"),
            Err(DockerfileError::MissingArguments {
                line: 2,
                instruction: "WORKDIR".to_owned()
            })
        );
    }

    #[test]
    fn join_image_path_normalizes() {
        assert_eq!(join_image_path("/app", "x/../y/./z/"), "/app/y/z");
        assert_eq!(join_image_path("/app", "/abs"), "/abs");
        assert_eq!(join_image_path("/", "."), "/");
        assert_eq!(join_image_path("/a", "../../.."), "/");
    }
}
