//! The integration manifest, `integration.toml` at the root of a package.
//!
//! The manifest is optional. It names the integration, places its action in the platform's UI,
//! describes the form the user fills in, sets environment variables for the agent and, for the
//! subprocess backend, the command to run. The same keys are accepted as TOML (the file in a
//! package) and as JSON (the HTTP API).
//!
//! Parsing happens in two steps. The TOML or JSON parser reads the text into a tree of values,
//! so only a syntax error stops there, with its line and column. Validation then turns the tree
//! into [`Manifest`] and collects every problem (unknown keys, values of the wrong type, bad
//! values, duplicates, a select without options, a regex that does not compile, a prefill that
//! breaks its field's rules), each named by its key path, so `agentrun check` can list them all.
//!
//! ```toml
//! name = "Slack"
//! take_user_input = true
//! section = "collaborate"          # canvas | collaborate
//! section_element = "report"       # canvas: nodes | edges | canvas; collaborate: report
//!
//! [[fields]]
//! name = "message"
//! label = "Message"
//! ui_element = "textarea"          # text (default) | textarea | select | date
//! value = "Report from SIFT-USER-NAME"
//! optional = false                 # true: an empty value skips the rules below
//! regex = ".{1,2000}"
//! validation_message = "Write between 1 and 2000 characters."
//!
//! [env]
//! url = "https://hooks.slack.com/services/REPLACE/WITH/YOURS"
//!
//! [run]
//! command = ["python3", "agent.py"]
//! timeout_secs = 30
//! ```

mod fields;
mod raw;
mod validate;

pub use validate::is_env_name;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize, Serializer};

use validate::{Prefills, RawManifest};

/// File name of the manifest at a package's root.
pub const MANIFEST_FILE: &str = "integration.toml";
/// Maximum length of an integration name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Maximum length of a field name, in characters.
pub const MAX_FIELD_NAME_CHARS: usize = 64;
/// Allowed range of `[run] timeout_secs`: the job deadline range that the service configuration
/// and the command line accept too, 1 second to one day.
pub const TIMEOUT_SECS_RANGE: std::ops::RangeInclusive<u64> = 1..=crate::config::MAX_TIMEOUT_SECS;
/// Source named in the errors of [`Manifest::from_json_slice`]: the HTTP API's multipart part
/// that carries a JSON manifest.
pub const JSON_ORIGIN: &str = "the `manifest` part";
/// Maximum size of a manifest file, in bytes. Real manifests are a few kilobytes.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Maximum number of `[[fields]]` in a manifest. Forms that people fill in have a handful, and
/// the cap bounds the time spent compiling their regexes.
pub const MAX_FIELDS: usize = 100;
/// Maximum compiled size of one field's regex, in bytes, passed to the regex crate as both
/// `size_limit` and `dfa_size_limit`. `.{1,2000}` and `\w{50}` fit, `\w{200}` (200 Unicode word
/// characters) does not.
///
/// NOTE: a pattern just under the limit still takes up to about 150 ms to compile in a debug
/// build (measured on a 2-core x86-64 VM), so [`MAX_FIELDS`] of them take seconds. Manifests
/// are validated on blocking threads for that reason.
///
/// NOTE: [`Manifest::from_stored_json`] applies this limit and [`MAX_FIELDS`] too, so a manifest
/// that a database contains from before they existed fails to load instead of being accepted.
pub const MAX_REGEX_BYTES: usize = 4 * 1024 * 1024;

/// A validated integration manifest.
///
/// Build one with [`Manifest::from_toml_str`], [`Manifest::from_json_slice`], [`Manifest::load`]
/// or [`Manifest::default_for`]. It also implements [`Deserialize`] through the same validation,
/// for manifests embedded in a larger document; the error is then one text that lists every
/// problem. Serialising it gives TOML or JSON that parses back to an equal manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawManifest")]
pub struct Manifest {
    /// Integration name: trimmed, not empty, at most [`MAX_NAME_CHARS`] characters.
    pub name: String,
    /// Whether the UI shows the form before running the action. Default true.
    pub take_user_input: bool,
    /// UI section where the action appears; `None` when the manifest sets none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section: Option<Section>,
    /// Element of the section the action belongs to; `None` means every element of the section.
    /// Always an element of `section`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_element: Option<SectionElement>,
    /// Element types the action is offered for, such as node types on a canvas. Empty means
    /// every type. Only canvas nodes and edges have types, so a non-empty list requires section
    /// `canvas` with element `nodes`, `edges` or none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub section_element_type: Vec<String>,
    /// Form fields, in the order the UI shows them and the `work` payload lists them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    /// Environment variables for the agent, by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How to run the agent, when the manifest has a `[run]` table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
}

/// A UI section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Section {
    /// The investigation canvas (graph of nodes and edges).
    Canvas,
    /// The collaboration area (reports).
    Collaborate,
}

impl Section {
    /// Every section, in the order error messages list them.
    pub const ALL: &'static [Section] = &[Section::Canvas, Section::Collaborate];

    /// Returns the manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Canvas => "canvas",
            Self::Collaborate => "collaborate",
        }
    }

    /// Returns the elements that belong to this section.
    pub fn elements(self) -> &'static [SectionElement] {
        match self {
            Self::Canvas => &[
                SectionElement::Nodes,
                SectionElement::Edges,
                SectionElement::Canvas,
            ],
            Self::Collaborate => &[SectionElement::Report],
        }
    }
}

/// An element of a UI section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SectionElement {
    /// Canvas nodes.
    Nodes,
    /// Canvas edges.
    Edges,
    /// The canvas as a whole.
    Canvas,
    /// A collaboration report.
    Report,
}

impl SectionElement {
    /// Returns the manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nodes => "nodes",
            Self::Edges => "edges",
            Self::Canvas => "canvas",
            Self::Report => "report",
        }
    }
}

/// One form field.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Field {
    /// Name sent in the `work` payload: ASCII letters, digits, `_` and `-`, starting with a letter
    /// or `_`, at most [`MAX_FIELD_NAME_CHARS`] characters, unique in the manifest.
    pub name: String,
    /// Text the UI shows; defaults to the name.
    pub label: String,
    /// Kind of input. Default `text`.
    pub ui_element: UiElement,
    /// Choices of a `select` field, never empty for one; empty for other kinds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<SelectOption>,
    /// Prefill value, which may contain `SIFT-*` keywords. A prefill without keywords obeys the
    /// field's rules, unless it is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Whether the field may be left empty: an empty value of an optional field skips the
    /// regex and the kind's rule. Default false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Pattern the whole final value must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<FieldRegex>,
    /// Message shown when the value fails validation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_message: Option<String>,
    /// Help text the UI shows next to the field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tooltip: Option<String>,
}

/// Kind of form input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum UiElement {
    /// One line of text.
    #[default]
    Text,
    /// Several lines of text.
    Textarea,
    /// A choice among [`Field::options`].
    Select,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
}

impl UiElement {
    /// Every kind, in the order error messages list them.
    pub const ALL: &'static [UiElement] = &[
        UiElement::Text,
        UiElement::Textarea,
        UiElement::Select,
        UiElement::Date,
    ];

    /// Returns the manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Textarea => "textarea",
            Self::Select => "select",
            Self::Date => "date",
        }
    }
}

/// One choice of a `select` field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SelectOption {
    /// Text the UI shows; defaults to the value.
    pub label: String,
    /// Value sent to the agent.
    pub value: String,
}

/// A field's `regex`, compiled so that it must match the whole value.
#[derive(Clone, Debug)]
pub struct FieldRegex {
    source: String,
    whole: Regex,
}

impl FieldRegex {
    /// Compiles `source` as written in the manifest.
    ///
    /// # Errors
    ///
    /// The `regex` crate's error when `source` is not a valid pattern or compiles to more than
    /// [`MAX_REGEX_BYTES`] (`regex::Error::CompiledTooBig`).
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let compile = |pattern: &str| {
            RegexBuilder::new(pattern)
                .size_limit(MAX_REGEX_BYTES)
                .dfa_size_limit(MAX_REGEX_BYTES)
                .build()
        };
        match compile(&format!("^(?:{source})$")) {
            Ok(whole) => Ok(Self {
                source: source.to_owned(),
                whole,
            }),
            // A syntax error is reported from the pattern alone, so that its position points
            // into the user's text rather than into the anchored wrapper.
            Err(error @ regex::Error::Syntax(_)) => Err(compile(source).err().unwrap_or(error)),
            Err(error) => Err(error),
        }
    }

    /// Returns the pattern as written in the manifest.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Returns true when the pattern matches all of `value`, not just a part of it.
    pub fn matches_whole(&self, value: &str) -> bool {
        self.whole.is_match(value)
    }
}

impl PartialEq for FieldRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for FieldRegex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

/// The `[run]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Run {
    /// Program and arguments for the subprocess backend; relative paths are relative to the
    /// package folder. A string in the manifest is split into words with shell quoting rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Deadline for one job, in seconds, within [`TIMEOUT_SECS_RANGE`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl Manifest {
    /// Returns the manifest of a package that has none: the given name (trimmed and cut to
    /// [`MAX_NAME_CHARS`]; `agent` when that leaves nothing), no placement, no fields and no env.
    pub fn default_for(name: &str) -> Self {
        let name: String = name.trim().chars().take(MAX_NAME_CHARS).collect();
        let name = name.trim();
        Self {
            name: if name.is_empty() { "agent" } else { name }.to_owned(),
            take_user_input: true,
            section: None,
            section_element: None,
            section_element_type: Vec::new(),
            fields: Vec::new(),
            env: BTreeMap::new(),
            run: None,
        }
    }

    /// Parses and validates a manifest written in TOML.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Syntax`] for invalid TOML, with line and column;
    /// [`ManifestError::Invalid`] listing every other problem, unknown keys and values of the
    /// wrong type included.
    pub fn from_toml_str(text: &str) -> Result<Self, ManifestError> {
        Self::from_toml_named(text, MANIFEST_FILE)
    }

    /// Parses and validates a manifest written in JSON, with the same keys as the TOML form.
    ///
    /// # Errors
    ///
    /// As [`Manifest::from_toml_str`].
    pub fn from_json_slice(json: &[u8]) -> Result<Self, ManifestError> {
        Self::from_json_checking(json, Prefills::Check, JSON_ORIGIN)
    }

    /// Parses a manifest that was valid when it was stored, such as one that a service saved
    /// with [`Serialize`] when it registered an integration.
    ///
    /// The rules are those of [`Manifest::from_json_slice`], except that a prefill without
    /// keywords is not checked against its field's rules. That check is newer than some stored
    /// manifests, and rejecting them would make their integrations unreadable. Such a prefill
    /// still fails when a job uses it.
    ///
    /// # Errors
    ///
    /// As [`Manifest::from_json_slice`].
    pub fn from_stored_json(json: &[u8]) -> Result<Self, ManifestError> {
        Self::from_json_checking(json, Prefills::Skip, "the database")
    }

    fn from_json_checking(
        json: &[u8],
        prefills: Prefills,
        origin: &str,
    ) -> Result<Self, ManifestError> {
        let tree: serde_json::Value =
            serde_json::from_slice(json).map_err(|error| ManifestError::Syntax {
                origin: origin.to_owned(),
                format: "JSON",
                line: error.line(),
                column: error.column(),
                message: json_error_message(&error),
            })?;
        RawManifest::from_json(tree)
            .validate_with(prefills)
            .map_err(|problems| ManifestError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
    }

    /// Reads the manifest of the package in `root`, or returns [`Manifest::default_for`]
    /// `default_name` when the package has no `integration.toml`.
    ///
    /// `default_name` is usually the package folder's or the zip file's name without extension.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Read`] when the file exists but cannot be read,
    /// [`ManifestError::TooLarge`] past [`MAX_MANIFEST_BYTES`], and the errors of
    /// [`Manifest::from_toml_str`].
    pub fn load(root: &Path, default_name: &str) -> Result<Self, ManifestError> {
        let path = root.join(MANIFEST_FILE);
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default_for(default_name))
            }
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        if metadata.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                path,
                bytes: metadata.len(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        Self::from_toml_named(&text, &path.display().to_string())
    }

    /// Returns the field called `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|field| field.name == name)
    }

    /// Returns the `[run] timeout_secs` as a duration.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.run
            .as_ref()
            .and_then(|run| run.timeout_secs)
            .map(std::time::Duration::from_secs)
    }

    /// Returns the `[run] command`.
    pub fn command(&self) -> Option<&[String]> {
        self.run.as_ref().and_then(|run| run.command.as_deref())
    }

    fn from_toml_named(text: &str, origin: &str) -> Result<Self, ManifestError> {
        let tree: toml::Table = toml::from_str(text).map_err(|error| {
            let (line, column) = error
                .span()
                .map_or((0, 0), |span| line_and_column(text, span.start));
            ManifestError::Syntax {
                origin: origin.to_owned(),
                format: "TOML",
                line,
                column,
                message: error.message().trim().to_owned(),
            }
        })?;
        RawManifest::from_toml(tree)
            .validate()
            .map_err(|problems| ManifestError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
    }
}

impl TryFrom<RawManifest> for Manifest {
    type Error = ManifestError;

    fn try_from(raw: RawManifest) -> Result<Self, Self::Error> {
        raw.validate().map_err(|problems| ManifestError::Invalid {
            origin: "the serialized document".to_owned(),
            problems,
        })
    }
}

/// The reason a manifest was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The manifest file exists but could not be read.
    #[error("cannot read manifest {}", path.display())]
    Read {
        /// The manifest's path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The manifest file is larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest {} is {bytes} bytes; the maximum is {MAX_MANIFEST_BYTES}", path.display())]
    TooLarge {
        /// The manifest's path.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },

    /// The text is not valid TOML or JSON.
    #[error("invalid {format} in {origin} at line {line}, column {column}: {message}")]
    Syntax {
        /// Source of the text: a path, `integration.toml` or [`JSON_ORIGIN`].
        origin: String,
        /// `TOML` or `JSON`.
        format: &'static str,
        /// Line of the error, from 1; 0 when the parser gave no position.
        line: usize,
        /// Column of the error in characters, from 1; 0 when the parser gave no position.
        column: usize,
        /// The parser's message.
        message: String,
    },

    /// The manifest parsed but breaks one or more rules.
    #[error("invalid manifest in {origin}:{}", format_problems(problems))]
    Invalid {
        /// Source of the text.
        origin: String,
        /// Every problem found, in the order of the keys.
        problems: Vec<ManifestProblem>,
    },
}

impl ManifestError {
    /// Returns every problem as one line each, as `agentrun check` prints them.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Invalid { problems, .. } => problems.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// One broken rule in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestProblem {
    /// Key path, such as `name`, `fields[2].ui_element` or `env.API_KEY`. List indexes count
    /// from 0.
    pub path: String,
    /// Name of the form field the path is in, when the problem is inside a field that has a
    /// name.
    pub field: Option<String>,
    /// The broken rule, with the bad value and the allowed values.
    pub message: String,
}

impl fmt::Display for ManifestProblem {
    /// Writes `path: message`, or `path (field "name"): message` inside a named field.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} (field {field:?}): {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

fn format_problems(problems: &[ManifestProblem]) -> String {
    problems
        .iter()
        .map(|problem| format!("\n  {problem}"))
        .collect()
}

/// Returns the 1-based line and character column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Returns serde_json's message without the position it appends, which the error keeps apart.
fn json_error_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(index) => text[..index].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests;
