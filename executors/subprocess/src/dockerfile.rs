//! A Dockerfile reader that keeps only what the subprocess backend needs: the last stage's
//! `WORKDIR`, its `COPY`/`ADD` instructions and its `ENTRYPOINT` and `CMD`.
//!
//! The reader follows the classic builder's syntax. Instructions are case-insensitive. A line
//! ending in the escape character (`\`, or the one set by a leading `# escape=` directive)
//! continues on the next line, and comment lines are dropped even inside a continuation. An
//! argument that parses as a JSON array of strings is in exec form. `ENV` and `ARG` values are
//! substituted into `WORKDIR`, `COPY` and `ADD` arguments as the builder does (`$name`, `${name}`,
//! `${name:-default}` and `${name:+alternative}`). Every other instruction is skipped.

use std::collections::HashMap;

/// Standard `PATH` of Linux images, where a bare program name is looked up inside the image.
pub(crate) const IMAGE_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The form of an `ENTRYPOINT` or `CMD` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CommandForm {
    /// `["program", "arg"]`: run as given, with no shell.
    Exec(Vec<String>),
    /// `program arg`: run through `/bin/sh -c`, so it cannot be mapped to one command.
    Shell(String),
}

/// One `COPY` or `ADD` instruction of the last stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CopyInstruction {
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

/// The parts of a Dockerfile's last stage that the backend uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FinalStage {
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

/// Error reading a Dockerfile.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DockerfileError {
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
pub(crate) fn parse(text: &str) -> Result<FinalStage, DockerfileError> {
    // Editors on Windows may start the file with a byte order mark, which the builder skips.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let escape = escape_directive(text);
    let mut global_args: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<Stage> = Vec::new();

    for (line, instruction, arguments) in logical_lines(text, escape) {
        let keyword = instruction.to_ascii_uppercase();
        if keyword == "FROM" {
            stages.push(start_stage(line, &arguments, &stages, &global_args)?);
            continue;
        }
        let Some(stage) = stages.last_mut() else {
            // Only ARG may come before the first FROM, and its values are defaults for the stages.
            if keyword == "ARG" {
                for (name, value) in parse_arg(&arguments, &global_args, escape) {
                    global_args.insert(name, value.unwrap_or_default());
                }
            }
            continue;
        };

        match keyword.as_str() {
            "WORKDIR" => {
                let path = expand(arguments.trim(), &stage.env, escape);
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
                let copy = parse_copy(name, line, &arguments, stage, escape)?;
                stage.state.copies.push(copy);
            }
            "ENTRYPOINT" => {
                stage.state.entrypoint = Some((line, parse_command(&arguments)));
                // An ENTRYPOINT resets a CMD that the base set, but not one set in this stage.
                if !stage.cmd_set_here {
                    stage.state.cmd = None;
                }
            }
            "CMD" => {
                stage.state.cmd = Some((line, parse_command(&arguments)));
                stage.cmd_set_here = true;
            }
            "ENV" => {
                for (name, value) in parse_env(&arguments, &stage.env, escape) {
                    stage.env.insert(name, value);
                }
            }
            "ARG" => {
                for (name, value) in parse_arg(&arguments, &stage.env, escape) {
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
    let base = expand(base, global_args, '\\');
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
fn parse_command(arguments: &str) -> CommandForm {
    let trimmed = arguments.trim();
    if trimmed.starts_with('[') {
        if let Ok(argv) = serde_json::from_str::<Vec<String>>(trimmed) {
            return CommandForm::Exec(argv);
        }
    }
    CommandForm::Shell(trimmed.to_owned())
}

/// Reads a `COPY` or `ADD` instruction: flags, then sources and a destination, in JSON or
/// whitespace-separated form.
fn parse_copy(
    instruction: &'static str,
    line: usize,
    arguments: &str,
    stage: &Stage,
    escape: char,
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
        *path = expand(path, &stage.env, escape);
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
) -> Vec<(String, String)> {
    let arguments = arguments.trim();
    let first = arguments.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        // Legacy form: one variable, the rest of the line is its value.
        return match arguments.split_once(char::is_whitespace) {
            Some((name, value)) => vec![(name.to_owned(), expand(value.trim(), env, escape))],
            None => Vec::new(),
        };
    }
    shell_words_with_quotes(arguments)
        .into_iter()
        .filter_map(|word| {
            let (name, value) = word.split_once('=')?;
            Some((name.to_owned(), expand(value, env, escape)))
        })
        .collect()
}

/// Reads `ARG name[=default] ...`.
fn parse_arg(
    arguments: &str,
    env: &HashMap<String, String>,
    escape: char,
) -> Vec<(String, Option<String>)> {
    shell_words_with_quotes(arguments)
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(expand(value, env, escape))),
            None => (word, None),
        })
        .collect()
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

/// Substitutes `ENV`/`ARG` variables and removes quotes, as the builder does for `WORKDIR`,
/// `COPY`, `ADD`, `ENV` and `ARG` arguments. Unset variables become empty text.
fn expand(text: &str, env: &HashMap<String, String>, escape: char) -> String {
    expand_at_depth(text, env, escape, 0)
}

fn expand_at_depth(
    text: &str,
    env: &HashMap<String, String>,
    escape: char,
    depth: usize,
) -> String {
    if depth > MAX_EXPANSION_DEPTH {
        return text.to_owned();
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
                out.push_str(&expand_variable(&mut chars, env, depth));
            }
            _ => out.push(c),
        }
    }
    out
}

fn expand_variable(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    env: &HashMap<String, String>,
    depth: usize,
) -> String {
    let lookup = |name: &str| env.get(name).cloned().unwrap_or_default();

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
            let value = lookup(name);
            return if value.is_empty() {
                expand_at_depth(default, env, '\\', depth + 1)
            } else {
                value
            };
        }
        if let Some((name, alternative)) = inner.split_once(":+") {
            return if lookup(name).is_empty() {
                String::new()
            } else {
                expand_at_depth(alternative, env, '\\', depth + 1)
            };
        }
        return lookup(&inner);
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
        return "$".to_owned();
    }
    lookup(&name)
}

/// Joins an image path to a base directory and normalizes `.` and `..` lexically. The result is
/// absolute and has no trailing `/` (except for the root itself).
pub(crate) fn join_image_path(base: &str, path: &str) -> String {
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

    #[test]
    fn parse_treats_invalid_json_as_shell_form() {
        let stage = stage("FROM scratch\nCMD ['/agent']\n");
        assert_eq!(
            stage.cmd,
            Some((2, CommandForm::Shell("['/agent']".to_owned())))
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
        let nested = format!("{}x", "${A:-".repeat(200_000));
        let stage = stage(&format!("FROM scratch\nWORKDIR /{nested}\n"));
        assert!(
            stage.workdir.starts_with("/${A:-"),
            "{}",
            &stage.workdir[..20]
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
