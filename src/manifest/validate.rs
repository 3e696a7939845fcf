//! The manifest as written, and its validation into [`Manifest`].

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use super::{
    Field, FieldRegex, Manifest, ManifestProblem, Run, Section, SectionElement, SelectOption,
    UiElement, MAX_FIELD_NAME_CHARS, MAX_NAME_CHARS, TIMEOUT_SECS_RANGE,
};

/// The manifest as serde reads it from TOML or JSON, before validation.
///
/// Values whose rules are checked later are kept loose (`Option`, strings, JSON values) so that
/// validation can report every problem with its key path, instead of serde stopping at the first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    name: Option<String>,
    take_user_input: Option<bool>,
    section: Option<String>,
    section_element: Option<String>,
    section_element_type: Option<Value>,
    #[serde(default)]
    fields: Vec<RawField>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    run: Option<RawRun>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: Option<String>,
    label: Option<String>,
    ui_element: Option<String>,
    options: Option<Vec<RawOption>>,
    value: Option<String>,
    regex: Option<String>,
    validation_message: Option<String>,
    tooltip: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOption {
    label: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    command: Option<Value>,
    timeout_secs: Option<i64>,
}

/// Collects problems while validating.
#[derive(Default)]
struct Problems(Vec<ManifestProblem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ManifestProblem {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl RawManifest {
    /// Checks every rule and returns the manifest, or every problem found.
    pub(super) fn validate(self) -> Result<Manifest, Vec<ManifestProblem>> {
        let mut problems = Problems::default();

        let name = validate_name(self.name, &mut problems);
        let (section, section_element) =
            validate_placement(self.section, self.section_element, &mut problems);
        let section_element_type = validate_element_types(
            self.section_element_type,
            section,
            section_element,
            &mut problems,
        );
        let fields = validate_fields(self.fields, &mut problems);
        let env = validate_env(self.env, &mut problems);
        let run = self.run.map(|run| validate_run(run, &mut problems));

        if !problems.0.is_empty() {
            return Err(problems.0);
        }
        Ok(Manifest {
            name,
            take_user_input: self.take_user_input.unwrap_or(true),
            section,
            section_element,
            section_element_type,
            fields,
            env,
            run,
        })
    }
}

fn validate_name(name: Option<String>, problems: &mut Problems) -> String {
    let Some(name) = name else {
        problems.add(
            "name",
            "missing; a manifest must name its integration, for example name = \"Slack\"",
        );
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

fn validate_placement(
    section: Option<String>,
    element: Option<String>,
    problems: &mut Problems,
) -> (Option<Section>, Option<SectionElement>) {
    let section = section.and_then(|text| {
        let found = Section::ALL
            .iter()
            .copied()
            .find(|section| section.as_str() == text);
        if found.is_none() {
            problems.add(
                "section",
                format!(
                    "unknown value {text:?}; expected one of {}",
                    join(Section::ALL.iter().map(|section| section.as_str()))
                ),
            );
        }
        found
    });

    let element = element.and_then(|text| {
        let allowed: Vec<SectionElement> = match section {
            Some(section) => section.elements().to_vec(),
            None => Section::ALL
                .iter()
                .flat_map(|section| section.elements().iter().copied())
                .collect(),
        };
        let found = allowed
            .iter()
            .copied()
            .find(|element| element.as_str() == text);
        match (section, found) {
            (Some(section), None) => problems.add(
                "section_element",
                format!(
                    "unknown value {text:?} for section {:?}; expected one of {}",
                    section.as_str(),
                    join(allowed.iter().map(|element| element.as_str()))
                ),
            ),
            (None, _) => problems.add(
                "section_element",
                format!(
                    "{text:?} is set without a section; also set section to one of {}",
                    join(Section::ALL.iter().map(|section| section.as_str()))
                ),
            ),
            (Some(_), Some(_)) => {}
        }
        found.filter(|_| section.is_some())
    });

    (section, element)
}

fn validate_element_types(
    types: Option<Value>,
    section: Option<Section>,
    element: Option<SectionElement>,
    problems: &mut Problems,
) -> Vec<String> {
    let path = "section_element_type";
    let types = match types {
        None => return Vec::new(),
        Some(Value::String(single)) => vec![(path.to_owned(), Value::String(single))],
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| (format!("{path}[{index}]"), item))
            .collect(),
        Some(other) => {
            problems.add(
                path,
                format!(
                    "expected a string or a list of strings, found {}",
                    describe(&other)
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
                format!("expected a string, found {}", describe(&other)),
            ),
        }
    }

    let typed_element = matches!(
        element,
        None | Some(SectionElement::Nodes | SectionElement::Edges)
    );
    let typed_placement = section == Some(Section::Canvas) && typed_element;
    if !valid.is_empty() && !typed_placement {
        let placement = match (section, element) {
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

fn validate_fields(raw_fields: Vec<RawField>, problems: &mut Problems) -> Vec<Field> {
    let mut fields = Vec::with_capacity(raw_fields.len());
    let mut first_index: HashMap<String, usize> = HashMap::new();

    for (index, raw) in raw_fields.into_iter().enumerate() {
        let path = format!("fields[{index}]");

        let name = match raw.name {
            None => {
                problems.add(format!("{path}.name"), "missing; every field needs a name");
                String::new()
            }
            Some(name) => {
                if !is_field_name(&name) {
                    problems.add(
                        format!("{path}.name"),
                        format!(
                            "invalid name {name:?}; use ASCII letters, digits, \"_\" and \"-\", \
                             starting with a letter or \"_\", at most {MAX_FIELD_NAME_CHARS} characters"
                        ),
                    );
                } else if let Some(first) = first_index.get(&name) {
                    problems.add(
                        format!("{path}.name"),
                        format!("duplicate name {name:?}; fields[{first}] already uses it"),
                    );
                } else {
                    first_index.insert(name.clone(), index);
                }
                name
            }
        };

        let ui_element = match raw.ui_element {
            None => UiElement::default(),
            Some(text) => match UiElement::ALL.iter().find(|kind| kind.as_str() == text) {
                Some(kind) => *kind,
                None => {
                    problems.add(
                        format!("{path}.ui_element"),
                        format!(
                            "unknown value {text:?}; expected one of {}",
                            join(UiElement::ALL.iter().map(|kind| kind.as_str()))
                        ),
                    );
                    UiElement::default()
                }
            },
        };

        let options = validate_options(&path, ui_element, raw.options, problems);

        let regex = raw.regex.and_then(|source| match FieldRegex::new(&source) {
            Ok(regex) => Some(regex),
            Err(error) => {
                problems.add(
                    format!("{path}.regex"),
                    format!(
                        "invalid regex {source:?}: {}; see the syntax of the Rust regex crate",
                        regex_error_summary(&error)
                    ),
                );
                None
            }
        });

        fields.push(Field {
            label: raw.label.unwrap_or_else(|| name.clone()),
            name,
            ui_element,
            options,
            value: raw.value,
            regex,
            validation_message: raw.validation_message,
            tooltip: raw.tooltip,
        });
    }
    fields
}

fn validate_options(
    path: &str,
    ui_element: UiElement,
    raw_options: Option<Vec<RawOption>>,
    problems: &mut Problems,
) -> Vec<SelectOption> {
    let path = format!("{path}.options");
    let raw_options = raw_options.unwrap_or_default();

    if ui_element != UiElement::Select {
        if !raw_options.is_empty() {
            problems.add(
                path,
                format!(
                    "only ui_element = \"select\" takes options, and this field is {:?}; \
                     remove the options or make it a select",
                    ui_element.as_str()
                ),
            );
        }
        return Vec::new();
    }
    if raw_options.is_empty() {
        problems.add(
            path,
            "missing; a select field needs at least one option, such as \
             options = [{ label = \"High\", value = \"high\" }]",
        );
        return Vec::new();
    }

    let mut seen = HashSet::new();
    let mut options = Vec::with_capacity(raw_options.len());
    for (index, raw) in raw_options.into_iter().enumerate() {
        let Some(value) = raw.value else {
            problems.add(
                format!("{path}[{index}].value"),
                "missing; every option needs the value sent to the agent",
            );
            continue;
        };
        if !seen.insert(value.clone()) {
            problems.add(
                format!("{path}[{index}].value"),
                format!("duplicate value {value:?}; option values must be unique"),
            );
        }
        options.push(SelectOption {
            label: raw.label.unwrap_or_else(|| value.clone()),
            value,
        });
    }
    options
}

fn validate_env(
    env: BTreeMap<String, String>,
    problems: &mut Problems,
) -> BTreeMap<String, String> {
    for (key, value) in &env {
        if !is_env_name(key) {
            problems.add(
                format!("env.{key}"),
                format!(
                    "invalid variable name {key:?}; use ASCII letters, digits and \"_\", \
                     not starting with a digit"
                ),
            );
        }
        // Values are secrets, so the message names the key only.
        if value.contains('\0') {
            problems.add(
                format!("env.{key}"),
                "value contains a NUL byte, which no process environment can carry",
            );
        }
    }
    env
}

fn validate_run(raw: RawRun, problems: &mut Problems) -> Run {
    let command = raw
        .command
        .and_then(|command| validate_command(command, problems));

    let timeout_secs = raw.timeout_secs.and_then(|secs| {
        let valid = u64::try_from(secs)
            .ok()
            .filter(|secs| TIMEOUT_SECS_RANGE.contains(secs));
        if valid.is_none() {
            problems.add(
                "run.timeout_secs",
                format!(
                    "{secs} is out of range; expected an integer from {} to {}",
                    TIMEOUT_SECS_RANGE.start(),
                    TIMEOUT_SECS_RANGE.end()
                ),
            );
        }
        valid
    });

    Run {
        command,
        timeout_secs,
    }
}

fn validate_command(command: Value, problems: &mut Problems) -> Option<Vec<String>> {
    let path = "run.command";
    let words = match command {
        Value::String(line) => match shell_words::split(&line) {
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
            for (index, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(word) => words.push(word),
                    other => problems.add(
                        format!("{path}[{index}]"),
                        format!("expected a string, found {}", describe(&other)),
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
                    describe(&other)
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

/// Returns true for a field name: ASCII letters, digits, `_` and `-`, starting with a letter or
/// `_`, at most [`MAX_FIELD_NAME_CHARS`] characters.
fn is_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && name.len() <= MAX_FIELD_NAME_CHARS
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
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

/// Returns the last line of a regex error, which states the problem without the pattern excerpt
/// and caret that precede it.
fn regex_error_summary(error: &regex::Error) -> String {
    let text = error.to_string();
    let last = text.lines().rev().find(|line| !line.trim().is_empty());
    last.unwrap_or(&text)
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => format!("the boolean {flag}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the string {text:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a table".to_owned(),
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}
