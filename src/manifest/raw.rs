//! Reading the manifest as written: a tree of JSON values, with typed reads that turn an unknown
//! key or a value of the wrong type into one more problem instead of stopping.

use serde_json::{Map, Value};

use super::ManifestProblem;

/// Key under which a TOML value that JSON cannot hold (a date-time or a non-finite float) is
/// kept. It is the key the `toml` crate itself uses when it hands a date-time to serde, so a
/// manifest deserialised from TOML through [`super::Manifest`]'s `Deserialize` reads the same.
const TOML_VALUE_KEY: &str = "$__toml_private_datetime";

/// Converts a parsed TOML document to the JSON tree that validation reads.
///
/// A date-time or a non-finite float becomes a one-key table that [`describe`] names as a TOML
/// value, so that it is reported as a value of the wrong type rather than read as text.
pub(super) fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(text) => Value::String(text),
        toml::Value::Integer(number) => Value::from(number),
        toml::Value::Float(number) => match serde_json::Number::from_f64(number) {
            Some(number) => Value::Number(number),
            // Spelt as TOML writes them, for the message.
            None if number.is_nan() => toml_only("nan".to_owned()),
            None if number > 0.0 => toml_only("inf".to_owned()),
            None => toml_only("-inf".to_owned()),
        },
        toml::Value::Boolean(flag) => Value::Bool(flag),
        toml::Value::Datetime(datetime) => toml_only(datetime.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(key, value)| (key, toml_to_json(value)))
                .collect(),
        ),
    }
}

fn toml_only(text: String) -> Value {
    let mut table = Map::new();
    table.insert(TOML_VALUE_KEY.to_owned(), Value::String(text));
    Value::Object(table)
}

/// Problems found so far, in the order found.
#[derive(Debug, Default)]
pub(super) struct Problems(pub(super) Vec<ManifestProblem>);

impl Problems {
    /// Records a problem at key path `path` outside any form field.
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.add_in_field(path, None, message);
    }

    /// Records a problem at key path `path`, inside the form field named `field` when known.
    pub(super) fn add_in_field(
        &mut self,
        path: impl Into<String>,
        field: Option<&str>,
        message: impl Into<String>,
    ) {
        self.0.push(ManifestProblem {
            path: path.into(),
            field: field.map(str::to_owned),
            message: message.into(),
        });
    }

    /// Returns the number of problems found so far.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// One table of the manifest, with the key path that prefixes its problems.
#[derive(Debug)]
pub(super) struct Table<'a> {
    entries: &'a Map<String, Value>,
    path: String,
    field: Option<&'a str>,
}

impl<'a> Table<'a> {
    /// Wraps the table at key path `path` (empty for the top level).
    pub(super) fn new(entries: &'a Map<String, Value>, path: impl Into<String>) -> Self {
        Self {
            entries,
            path: path.into(),
            field: None,
        }
    }

    /// Marks the table as the form field named `field`, so its problems name the field.
    pub(super) fn in_field(mut self, field: Option<&'a str>) -> Self {
        self.field = field;
        self
    }

    /// Returns the name of the form field this table belongs to, when known.
    pub(super) fn field(&self) -> Option<&'a str> {
        self.field
    }

    /// Returns the key path of `key` in this table, such as `fields[2].regex`.
    pub(super) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Records a problem at `key` of this table.
    pub(super) fn add(&self, problems: &mut Problems, key: &str, message: impl Into<String>) {
        problems.add_in_field(self.key_path(key), self.field, message);
    }

    /// Records a problem at a path under this table that [`Table::key_path`] built.
    pub(super) fn add_at(&self, problems: &mut Problems, path: String, message: impl Into<String>) {
        problems.add_in_field(path, self.field, message);
    }

    /// Reports every key that is not in `known`, with the closest known key as a suggestion, or
    /// else the list of known keys. `table_name` names the table in the message, such as
    /// "a field".
    pub(super) fn check_keys(&self, known: &[&str], table_name: &str, problems: &mut Problems) {
        for key in self.entries.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let message = match crate::suggest::closest(key, known.iter().copied()) {
                Some(suggestion) => format!("unknown key; did you mean {suggestion:?}?"),
                None => format!(
                    "unknown key; the keys of {table_name} are {}",
                    known.join(", ")
                ),
            };
            self.add(problems, key, message);
        }
    }

    /// Returns the value of `key`. A JSON `null` counts as absent, as an omitted key does.
    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.entries.get(key).filter(|value| !value.is_null())
    }

    /// Returns the string at `key`, reporting any other type.
    pub(super) fn string(&self, key: &str, problems: &mut Problems) -> Option<String> {
        match self.get(key)? {
            Value::String(text) => Some(text.clone()),
            other => {
                self.add(
                    problems,
                    key,
                    format!("expected a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// Returns the boolean at `key`, reporting any other type.
    pub(super) fn boolean(&self, key: &str, problems: &mut Problems) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(flag) => Some(*flag),
            other => {
                self.add(
                    problems,
                    key,
                    format!("expected true or false, found {}", describe(other)),
                );
                None
            }
        }
    }
}

/// Describes a value's type and, for a scalar, the value, for "expected …, found …" messages.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => format!("the boolean {flag}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the string {text:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(table) => match table.get(TOML_VALUE_KEY) {
            Some(Value::String(text)) if table.len() == 1 => format!("the TOML value {text}"),
            _ => "a table".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_to_json_marks_values_json_cannot_hold() {
        let table: toml::Table =
            toml::from_str("a = 1979-05-27\nb = nan\nc = 1.5\nd = [1, \"x\"]\ne = -inf\n")
                .expect("TOML");
        let json = toml_to_json(toml::Value::Table(table));
        assert_eq!(describe(&json["a"]), "the TOML value 1979-05-27");
        assert_eq!(describe(&json["b"]), "the TOML value nan");
        assert_eq!(describe(&json["c"]), "the number 1.5");
        assert_eq!(json["d"], serde_json::json!([1, "x"]));
        assert_eq!(describe(&json["e"]), "the TOML value -inf");
    }

    #[test]
    fn table_reports_wrong_types_with_paths() {
        let entries = serde_json::json!({"s": 1, "b": "yes", "n": null})
            .as_object()
            .cloned()
            .expect("an object");
        let table = Table::new(&entries, "fields[0]").in_field(Some("due"));
        let mut problems = Problems::default();
        assert_eq!(table.string("s", &mut problems), None);
        assert_eq!(table.boolean("b", &mut problems), None);
        assert_eq!(table.string("n", &mut problems), None);
        let found: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "fields[0].s (field \"due\"): expected a string, found the number 1",
                "fields[0].b (field \"due\"): expected true or false, found the string \"yes\"",
            ]
        );
    }
}
