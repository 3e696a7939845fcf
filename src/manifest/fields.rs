//! Validation of the manifest's form fields (`[[fields]]`) and their options.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::raw::{describe, Problems, Table};
use super::validate::{unknown_value, Prefills};
use super::{
    Field, FieldRegex, SelectOption, UiElement, MAX_FIELDS, MAX_FIELD_NAME_CHARS, MAX_REGEX_BYTES,
};
use crate::forms;

/// Keys of one `[[fields]]` table.
const FIELD_KEYS: &[&str] = &[
    "name",
    "label",
    "ui_element",
    "options",
    "value",
    "optional",
    "regex",
    "validation_message",
    "tooltip",
];
/// Keys of one option of a select field.
const OPTION_KEYS: &[&str] = &["label", "value"];

/// Validates the `fields` list of the manifest's top-level `table`.
pub(super) fn validate_fields(
    table: &Table<'_>,
    prefills: Prefills,
    problems: &mut Problems,
) -> Vec<Field> {
    let items = match table.get("fields") {
        None => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            problems.add(
                "fields",
                format!(
                    "expected a list of tables ([[fields]] in TOML), found {}",
                    describe(other)
                ),
            );
            return Vec::new();
        }
    };

    if items.len() > MAX_FIELDS {
        problems.add(
            "fields",
            format!(
                "the manifest has {} fields; the maximum is {MAX_FIELDS}, so split the \
                 integration or drop fields it does not need",
                items.len()
            ),
        );
        return Vec::new();
    }

    let mut fields = Vec::with_capacity(items.len());
    let mut first_index: HashMap<String, usize> = HashMap::new();
    let mut regexes = RegexBudget::default();
    for (index, item) in items.iter().enumerate() {
        let path = format!("fields[{index}]");
        let Value::Object(entries) = item else {
            problems.add(path, format!("expected a table, found {}", describe(item)));
            continue;
        };
        let before = problems.len();
        let name = validate_field_name(entries, &path, index, &mut first_index, problems);
        let field_name = Some(name.as_str()).filter(|name| !name.is_empty());
        let field_table = Table::new(entries, path).in_field(field_name);
        let field = validate_field(&field_table, name.clone(), &mut regexes, problems);

        // A prefill that breaks the field's own definition was checked against rules that are
        // themselves wrong, so only a field without other problems gets its prefill checked.
        if prefills == Prefills::Check && problems.len() == before {
            check_literal_prefill(&field_table, &field, problems);
        }
        fields.push(field);
    }
    if regexes.skipped > 0 {
        problems.add(
            "fields",
            format!(
                "the regexes of {} more fields were not compiled, because {MAX_OVERSIZED_REGEXES} \
                 regexes already compile to more than {MAX_REGEX_BYTES} bytes: fix those and \
                 check again",
                regexes.skipped
            ),
        );
    }
    fields
}

/// How many regexes that compile past [`MAX_REGEX_BYTES`] are reported before the rest are no
/// longer compiled. Finding that a regex is too large costs the compile work up to the limit
/// (about 0.1 s each in a debug build), so a manifest of such regexes would otherwise cost
/// seconds of CPU before it is rejected.
const MAX_OVERSIZED_REGEXES: usize = 3;

/// Counts, over one manifest's fields, the regexes found too large and those then skipped.
#[derive(Default)]
struct RegexBudget {
    oversized: usize,
    skipped: usize,
}

fn validate_field_name(
    entries: &Map<String, Value>,
    path: &str,
    index: usize,
    first_index: &mut HashMap<String, usize>,
    problems: &mut Problems,
) -> String {
    let table = Table::new(entries, path);
    if table.get("name").is_none() {
        table.add(problems, "name", "missing; every field needs a name");
        return String::new();
    }
    let Some(name) = table.string("name", problems) else {
        return String::new();
    };
    if !is_field_name(&name) {
        table.add(
            problems,
            "name",
            format!(
                "invalid name {name:?}; use ASCII letters, digits, \"_\" and \"-\", starting \
                 with a letter or \"_\", at most {MAX_FIELD_NAME_CHARS} characters"
            ),
        );
    } else if let Some(first) = first_index.get(&name) {
        table.add(
            problems,
            "name",
            format!("duplicate name {name:?}; fields[{first}] already uses it"),
        );
    } else {
        first_index.insert(name.clone(), index);
    }
    name
}

/// Validates every key of one field except its name, which the caller read.
fn validate_field(
    table: &Table<'_>,
    name: String,
    regexes: &mut RegexBudget,
    problems: &mut Problems,
) -> Field {
    table.check_keys(FIELD_KEYS, "a field", problems);

    let ui_element = match table.string("ui_element", problems) {
        None => UiElement::default(),
        Some(text) => match UiElement::ALL.iter().find(|kind| kind.as_str() == text) {
            Some(kind) => *kind,
            None => {
                let kinds = UiElement::ALL.iter().map(|kind| kind.as_str());
                table.add(problems, "ui_element", unknown_value(&text, "", kinds));
                UiElement::default()
            }
        },
    };

    let options = validate_options(table, ui_element, problems);

    let regex = table
        .string("regex", problems)
        .filter(|_| {
            let skip = regexes.oversized >= MAX_OVERSIZED_REGEXES;
            regexes.skipped += usize::from(skip);
            !skip
        })
        .and_then(|source| match FieldRegex::new(&source) {
            Ok(regex) => Some(regex),
            Err(regex::Error::CompiledTooBig(_)) => {
                regexes.oversized += 1;
                table.add(
                    problems,
                    "regex",
                    format!(
                        "regex {source:?} compiles to more than {MAX_REGEX_BYTES} bytes, the \
                         maximum for a field; use fewer repetitions, or ASCII classes such as \
                         [0-9A-Za-z_] in place of \\w"
                    ),
                );
                None
            }
            Err(error) => {
                table.add(
                    problems,
                    "regex",
                    format!(
                        "invalid regex {source:?}: {}; see the syntax of the Rust regex crate",
                        regex_error_summary(&error)
                    ),
                );
                None
            }
        });

    Field {
        label: table
            .string("label", problems)
            .unwrap_or_else(|| name.clone()),
        name,
        ui_element,
        options,
        value: table.string("value", problems),
        optional: table.boolean("optional", problems).unwrap_or(false),
        regex,
        validation_message: table.string("validation_message", problems),
        tooltip: table.string("tooltip", problems),
    }
}

fn validate_options(
    table: &Table<'_>,
    ui_element: UiElement,
    problems: &mut Problems,
) -> Vec<SelectOption> {
    let items: &[Value] = match table.get("options") {
        None => &[],
        Some(Value::Array(items)) => items,
        Some(other) => {
            table.add(
                problems,
                "options",
                format!(
                    "expected a list of tables such as [{{ label = \"High\", value = \"high\" }}], \
                     found {}",
                    describe(other)
                ),
            );
            return Vec::new();
        }
    };

    if ui_element != UiElement::Select {
        if !items.is_empty() {
            table.add(
                problems,
                "options",
                format!(
                    "only ui_element = \"select\" takes options, and this field is {:?}; \
                     remove the options or make it a select",
                    ui_element.as_str()
                ),
            );
        }
        return Vec::new();
    }
    if items.is_empty() {
        table.add(
            problems,
            "options",
            "missing; a select field needs at least one option, such as \
             options = [{ label = \"High\", value = \"high\" }]",
        );
        return Vec::new();
    }

    let mut seen = HashSet::new();
    let mut options = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let path = table.key_path(&format!("options[{index}]"));
        let Value::Object(entries) = item else {
            table.add_at(
                problems,
                path,
                format!("expected a table, found {}", describe(item)),
            );
            continue;
        };
        let option = Table::new(entries, path.clone()).in_field(table.field());
        option.check_keys(OPTION_KEYS, "an option", problems);
        let label = option.string("label", problems);
        if option.get("value").is_none() {
            option.add(
                problems,
                "value",
                "missing; every option needs the value sent to the agent",
            );
            continue;
        }
        let Some(value) = option.string("value", problems) else {
            continue;
        };
        if !seen.insert(value.clone()) {
            option.add(
                problems,
                "value",
                format!("duplicate value {value:?}; option values must be unique"),
            );
        }
        options.push(SelectOption {
            label: label.unwrap_or_else(|| value.clone()),
            value,
        });
    }
    options
}

/// Reports a prefill without keywords that breaks its field's rules: its value never changes,
/// so every form submitted without editing it would be rejected.
fn check_literal_prefill(table: &Table<'_>, field: &Field, problems: &mut Problems) {
    let Some(prefill) = field.value.as_deref() else {
        return;
    };
    // An empty prefill means the user fills the field in, and a keyword's value is known only
    // when a job starts.
    if prefill.is_empty() || forms::contains_keyword(prefill) {
        return;
    }
    if let Some(broken) = forms::check_value(field, prefill) {
        table.add(
            problems,
            "value",
            format!(
                "prefill {}; change the prefill or the field's rules",
                broken.reason
            ),
        );
    }
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
