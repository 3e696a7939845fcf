//! The manifest as written, and its validation into [`Manifest`].
//!
//! Validation reads a tree of JSON values (TOML is converted to one) instead of typed structs.
//! An unknown key or a value of the wrong type is then one more problem with its key path, and
//! the other problems are still found. The rules of form fields live in [`super::fields`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::fields::validate_fields;
use super::raw::{describe, toml_to_json, Problems, Table};
use super::{
    Manifest, ManifestProblem, Run, Section, SectionElement, MAX_NAME_CHARS, TIMEOUT_SECS_RANGE,
};

/// Keys of the manifest's top level.
const MANIFEST_KEYS: &[&str] = &[
    "name",
    "take_user_input",
    "section",
    "section_element",
    "section_element_type",
    "fields",
    "env",
    "run",
];
/// Keys of the `[run]` table.
const RUN_KEYS: &[&str] = &["command", "timeout_secs"];

/// Whether validation checks prefills without keywords against their fields' rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prefills {
    /// Check them: for manifests that users write.
    Check,
    /// Skip the check: for manifests stored before it existed.
    Skip,
}

/// The manifest as written, before validation: any JSON value.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct RawManifest(Value);

impl RawManifest {
    /// Wraps a parsed JSON manifest.
    pub(super) fn from_json(value: Value) -> Self {
        Self(value)
    }

    /// Wraps a parsed TOML manifest.
    pub(super) fn from_toml(table: toml::Table) -> Self {
        Self(toml_to_json(toml::Value::Table(table)))
    }

    /// Checks every rule and returns the manifest, or every problem found.
    pub fn validate(self) -> Result<Manifest, Vec<ManifestProblem>> {
        self.validate_with(Prefills::Check)
    }

    /// Checks every rule, the check of prefills without keywords only when `prefills` asks for
    /// it, and returns the manifest or every problem found.
    pub(super) fn validate_with(
        self,
        prefills: Prefills,
    ) -> Result<Manifest, Vec<ManifestProblem>> {
        let mut problems = Problems::default();
        let Value::Object(entries) = &self.0 else {
            problems.add(
                "manifest",
                format!(
                    "expected a table of keys such as name and fields, found {}",
                    describe(&self.0)
                ),
            );
            return Err(problems.0);
        };
        let table = Table::new(entries, "");
        table.check_keys(MANIFEST_KEYS, "the manifest", &mut problems);

        let name = validate_name(&table, &mut problems);
        let take_user_input = table.boolean("take_user_input", &mut problems);
        let placement = validate_placement(&table, &mut problems);
        let section_element_type = validate_element_types(&table, &placement, &mut problems);
        let fields = validate_fields(&table, prefills, &mut problems);
        let env = validate_env(&table, &mut problems);
        let run = validate_run(&table, &mut problems);

        if !problems.0.is_empty() {
            return Err(problems.0);
        }
        Ok(Manifest {
            name,
            take_user_input: take_user_input.unwrap_or(true),
            section: placement.section,
            section_element: placement.element,
            section_element_type,
            fields,
            env,
            run,
        })
    }
}

fn validate_name(table: &Table<'_>, problems: &mut Problems) -> String {
    if table.get("name").is_none() {
        problems.add(
            "name",
            "missing; a manifest must name its integration, for example name = \"Slack\"",
        );
        return String::new();
    }
    let Some(name) = table.string("name", problems) else {
        return String::new();
    };
    let name = name.trim().to_owned();
    let length = name.chars().count();
    if name.is_empty() {
        problems.add("name", "is empty; give the integration a name");
    } else if length > MAX_NAME_CHARS {
        problems.add(
            "name",
            format!("is {length} characters long; the maximum is {MAX_NAME_CHARS}"),
        );
    }
    name
}

/// The placement keys as validated.
struct Placement {
    section: Option<Section>,
    element: Option<SectionElement>,
    /// False when `section` or `section_element` is set but invalid, so rules that depend on
    /// the placement cannot be checked.
    valid: bool,
}

fn validate_placement(table: &Table<'_>, problems: &mut Problems) -> Placement {
    let section_set = table.get("section").is_some();
    let section = table.string("section", problems).and_then(|text| {
        let found = Section::ALL
            .iter()
            .copied()
            .find(|section| section.as_str() == text);
        if found.is_none() {
            let names = Section::ALL.iter().map(|section| section.as_str());
            problems.add("section", unknown_value(&text, "", names));
        }
        found
    });
    if section_set && section.is_none() {
        // The section decides which elements are valid, so the element and the element types
        // cannot be judged until it is fixed: their problems would only mislead.
        return Placement {
            section: None,
            element: None,
            valid: false,
        };
    }

    let element_set = table.get("section_element").is_some();
    let element = table.string("section_element", problems).and_then(|text| {
        let Some(section) = section else {
            problems.add(
                "section_element",
                format!(
                    "{text:?} is set without a section; also set section to one of {}",
                    join(Section::ALL.iter().map(|section| section.as_str()))
                ),
            );
            return None;
        };
        let allowed = section.elements();
        let found = allowed
            .iter()
            .copied()
            .find(|element| element.as_str() == text);
        if found.is_none() {
            let names = allowed.iter().map(|element| element.as_str());
            let qualifier = format!(" for section {:?}", section.as_str());
            problems.add("section_element", unknown_value(&text, &qualifier, names));
        }
        found
    });

    Placement {
        section,
        element,
        valid: !element_set || element.is_some(),
    }
}

fn validate_element_types(
    table: &Table<'_>,
    placement: &Placement,
    problems: &mut Problems,
) -> Vec<String> {
    let path = "section_element_type";
    let types: Vec<(String, &Value)> = match table.get(path) {
        None => return Vec::new(),
        Some(single @ Value::String(_)) => vec![(path.to_owned(), single)],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| (format!("{path}[{index}]"), item))
            .collect(),
        Some(other) => {
            problems.add(
                path,
                format!(
                    "expected a string or a list of strings, found {}",
                    describe(other)
                ),
            );
            return Vec::new();
        }
    };

    let mut valid = Vec::new();
    for (item_path, item) in types {
        match item {
            Value::String(text) if text.trim().is_empty() => {
                problems.add(item_path, "is empty; give an element type such as \"ip\"");
            }
            Value::String(text) => valid.push(text.trim().to_owned()),
            other => problems.add(
                item_path,
                format!("expected a string, found {}", describe(other)),
            ),
        }
    }

    let typed_element = matches!(
        placement.element,
        None | Some(SectionElement::Nodes | SectionElement::Edges)
    );
    let typed_placement = placement.section == Some(Section::Canvas) && typed_element;
    if !valid.is_empty() && placement.valid && !typed_placement {
        let placement = match (placement.section, placement.element) {
            (Some(section), Some(element)) => {
                format!(
                    "section {:?} with section_element {:?}",
                    section.as_str(),
                    element.as_str()
                )
            }
            (Some(section), None) => format!("section {:?}", section.as_str()),
            (None, _) => "no section".to_owned(),
        };
        problems.add(
            path,
            format!(
                "applies only to section \"canvas\" with section_element \"nodes\" or \"edges\", \
                 but the manifest has {placement}; remove it or change the placement"
            ),
        );
    }
    valid
}

fn validate_env(table: &Table<'_>, problems: &mut Problems) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let entries = match table.get("env") {
        None => return env,
        Some(Value::Object(entries)) => entries,
        Some(other) => {
            // The value may be a secret written in the wrong shape, so only its type is named.
            problems.add(
                "env",
                format!(
                    "expected a table of variable names and string values, such as \
                     API_TOKEN = \"…\" under [env] in TOML or {{\"API_TOKEN\": \"…\"}} in \
                     JSON, found {}",
                    type_name(other)
                ),
            );
            return env;
        }
    };

    for (key, value) in entries {
        let path = format!("env.{key}");
        if !is_env_name(key) {
            problems.add(
                path.clone(),
                format!(
                    "invalid variable name {key:?}; use ASCII letters, digits and \"_\", \
                     not starting with a digit"
                ),
            );
        }
        // Values are secrets, so messages name the key and the type, never the value.
        match value {
            Value::String(text) if text.contains('\0') => problems.add(
                path,
                "value contains a NUL byte, which no process environment can carry",
            ),
            Value::String(text) => {
                env.insert(key.clone(), text.clone());
            }
            other => problems.add(
                path,
                format!("expected a string value, found {}", type_name(other)),
            ),
        }
    }
    env
}

fn validate_run(table: &Table<'_>, problems: &mut Problems) -> Option<Run> {
    let entries = match table.get("run")? {
        Value::Object(entries) => entries,
        other => {
            problems.add(
                "run",
                format!("expected a table ([run]), found {}", describe(other)),
            );
            return None;
        }
    };
    let run = Table::new(entries, "run");
    run.check_keys(RUN_KEYS, "[run]", problems);

    let command = run
        .get("command")
        .and_then(|command| validate_command(command, problems));
    let timeout_secs = run
        .get("timeout_secs")
        .and_then(|secs| validate_timeout(secs, problems));
    Some(Run {
        command,
        timeout_secs,
    })
}

fn validate_timeout(value: &Value, problems: &mut Problems) -> Option<u64> {
    let path = "run.timeout_secs";
    let Value::Number(number) = value else {
        problems.add(
            path,
            format!(
                "expected an integer number of seconds, found {}",
                describe(value)
            ),
        );
        return None;
    };
    let valid = number
        .as_u64()
        .filter(|secs| TIMEOUT_SECS_RANGE.contains(secs));
    if valid.is_none() {
        let message = if number.is_f64() {
            format!("expected an integer number of seconds, found the number {number}")
        } else {
            format!(
                "{number} is out of range; expected an integer from {} to {}",
                TIMEOUT_SECS_RANGE.start(),
                TIMEOUT_SECS_RANGE.end()
            )
        };
        problems.add(path, message);
    }
    valid
}

fn validate_command(command: &Value, problems: &mut Problems) -> Option<Vec<String>> {
    let path = "run.command";
    let words = match command {
        Value::String(line) => match shell_words::split(line) {
            Ok(words) => words,
            Err(error) => {
                problems.add(
                    path,
                    format!("cannot split {line:?} into words ({error}); check its quotes"),
                );
                return None;
            }
        },
        Value::Array(items) => {
            let mut words = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                match item {
                    Value::String(word) => words.push(word.clone()),
                    other => problems.add(
                        format!("{path}[{index}]"),
                        format!("expected a string, found {}", describe(other)),
                    ),
                }
            }
            words
        }
        other => {
            problems.add(
                path,
                format!(
                    "expected a list of strings or a command line, found {}",
                    describe(other)
                ),
            );
            return None;
        }
    };

    if words.is_empty() {
        problems.add(path, "is empty; give the program and its arguments");
        return None;
    }
    if words[0].is_empty() {
        problems.add(
            format!("{path}[0]"),
            "the program is empty; give its path or name",
        );
    }
    if words.iter().any(|word| word.contains('\0')) {
        problems.add(
            path,
            "contains a NUL byte, which no program argument can carry",
        );
    }
    Some(words)
}

/// Returns true for a portable environment variable name: ASCII letters, digits and `_`, not
/// starting with a digit.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Describes a value that is not one of `allowed`, with the closest allowed value when the text
/// looks like a misspelling of it. `qualifier` follows the value, such as ` for section "canvas"`.
pub(super) fn unknown_value<'a>(
    text: &str,
    qualifier: &str,
    allowed: impl Iterator<Item = &'a str>,
) -> String {
    let allowed: Vec<&str> = allowed.collect();
    let mut message = format!(
        "unknown value {text:?}{qualifier}; expected one of {}",
        allowed.join(", ")
    );
    if let Some(suggestion) = crate::suggest::closest(text, allowed.iter().copied()) {
        message.push_str(&format!("; did you mean {suggestion:?}?"));
    }
    message
}

/// Names a value's type without its value, for values that may be secret.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table or a TOML date-time",
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}
