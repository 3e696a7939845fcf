//! The UI context of a job: where the user started the action and who they are.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The keywords, longest first, with the context key that supplies each.
///
/// Matching longest first means `SIFT-SELECTED-NODE-ID` is never read as `SIFT-SELECTED-NODE`
/// followed by `-ID`.
pub const KEYWORDS: [(&str, &str); 10] = [
    (
        "SIFT-SELECTED-NODE-DISPLAY-NAME",
        "selected-node-display-name",
    ),
    ("SIFT-TIMELINE-SELECTION-START", "timeline-selection-start"),
    ("SIFT-TIMELINE-SELECTION-END", "timeline-selection-end"),
    ("SIFT-SELECTED-NODE-TYPE", "selected-node-type"),
    ("SIFT-SELECTED-NODE-ID", "selected-node-id"),
    ("SIFT-SELECTED-NODE", "selected-node"),
    ("SIFT-CANVAS-NAME", "canvas-name"),
    ("SIFT-REPORT-NAME", "report-name"),
    ("SIFT-REPORT-URL", "report-url"),
    ("SIFT-USER-NAME", "user-name"),
];

/// Every context key, in the order help and error messages list them.
pub const CONTEXT_KEYS: [&str; 10] = [
    "report-url",
    "report-name",
    "user-name",
    "timeline-selection-start",
    "timeline-selection-end",
    "selected-node",
    "selected-node-id",
    "selected-node-display-name",
    "selected-node-type",
    "canvas-name",
];

/// Values for the `SIFT-*` keywords, each optional.
///
/// The CLI builds it from `KEY=VALUE` pairs ([`Context::from_pairs`]); the HTTP API deserialises
/// it from a JSON object with the same keys, where `selected-node` is an object or a string of
/// JSON. Unknown keys are rejected in both forms.
///
/// When `selected-node` is a JSON object, it also supplies the keys given no value of their
/// own: `selected-node-id` from its `id`, `selected-node-display-name` from its `display_name`,
/// `displayName` or `label`, and `selected-node-type` from its `type`. Only a string or a number
/// counts, and of the three name keys the first that has one wins. [`Context::value`] applies
/// this, and the fields keep only what was given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    /// Value of `SIFT-REPORT-URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_url: Option<String>,
    /// Value of `SIFT-REPORT-NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_name: Option<String>,
    /// Value of `SIFT-USER-NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// Value of `SIFT-TIMELINE-SELECTION-START`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline_selection_start: Option<String>,
    /// Value of `SIFT-TIMELINE-SELECTION-END`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline_selection_end: Option<String>,
    /// The selected canvas node; `SIFT-SELECTED-NODE` becomes its compact JSON.
    #[serde(
        default,
        deserialize_with = "selected_node_from_json",
        skip_serializing_if = "Option::is_none"
    )]
    pub selected_node: Option<Value>,
    /// Value of `SIFT-SELECTED-NODE-ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_node_id: Option<String>,
    /// Value of `SIFT-SELECTED-NODE-DISPLAY-NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_node_display_name: Option<String>,
    /// Value of `SIFT-SELECTED-NODE-TYPE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_node_type: Option<String>,
    /// Value of `SIFT-CANVAS-NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canvas_name: Option<String>,
}

/// The reason a context could not be built from `KEY=VALUE` pairs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// An argument has no `=`.
    #[error(
        "invalid context {argument:?}: expected KEY=VALUE, such as user-name=alice@example.com"
    )]
    MissingEquals {
        /// The argument as given.
        argument: String,
    },

    /// The key is not a context key.
    #[error("unknown context key {key:?}; valid keys: {}", CONTEXT_KEYS.join(", "))]
    UnknownKey {
        /// The key as given.
        key: String,
    },

    /// The same key was given twice.
    #[error("context key {key:?} is given twice; give each key once")]
    Duplicate {
        /// The repeated key.
        key: String,
    },

    /// `selected-node` is not valid JSON.
    #[error("invalid selected-node: {message}; give the node as JSON, such as selected-node='{{\"id\":\"n42\"}}'")]
    InvalidSelectedNode {
        /// The JSON parser's message.
        message: String,
    },
}

impl Context {
    /// Builds a context from `KEY=VALUE` arguments, where KEY is a keyword without `SIFT-`, in
    /// lowercase (`user-name=alice@example.com`). The value is everything after the first `=`.
    ///
    /// # Errors
    ///
    /// [`ContextError`] for an argument without `=`, an unknown or repeated key, or a
    /// `selected-node` that is not valid JSON.
    pub fn from_pairs<I, S>(arguments: I) -> Result<Self, ContextError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut context = Self::default();
        let mut seen: Vec<String> = Vec::new();
        for argument in arguments {
            let argument = argument.as_ref();
            let Some((key, value)) = argument.split_once('=') else {
                return Err(ContextError::MissingEquals {
                    argument: argument.to_owned(),
                });
            };
            if seen.iter().any(|seen_key| seen_key == key) {
                return Err(ContextError::Duplicate {
                    key: key.to_owned(),
                });
            }
            context.set(key, value)?;
            seen.push(key.to_owned());
        }
        Ok(context)
    }

    /// Sets the value of one context key. `selected-node` is parsed as JSON.
    ///
    /// # Errors
    ///
    /// [`ContextError::UnknownKey`] and [`ContextError::InvalidSelectedNode`].
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ContextError> {
        let value = value.to_owned();
        match key {
            "report-url" => self.report_url = Some(value),
            "report-name" => self.report_name = Some(value),
            "user-name" => self.user_name = Some(value),
            "timeline-selection-start" => self.timeline_selection_start = Some(value),
            "timeline-selection-end" => self.timeline_selection_end = Some(value),
            "selected-node" => {
                let node = serde_json::from_str(&value).map_err(|error| {
                    ContextError::InvalidSelectedNode {
                        message: error.to_string(),
                    }
                })?;
                self.selected_node = Some(node);
            }
            "selected-node-id" => self.selected_node_id = Some(value),
            "selected-node-display-name" => self.selected_node_display_name = Some(value),
            "selected-node-type" => self.selected_node_type = Some(value),
            "canvas-name" => self.canvas_name = Some(value),
            _ => {
                return Err(ContextError::UnknownKey {
                    key: key.to_owned(),
                })
            }
        }
        Ok(())
    }

    /// Returns the text a keyword's context key stands for, or `None` when the context has no
    /// value for it. `selected-node` gives the node's compact JSON, and the node fills the
    /// `selected-node-*` keys that have no value of their own (see [`Context`]).
    pub fn value(&self, key: &str) -> Option<String> {
        let text = match key {
            "report-url" => &self.report_url,
            "report-name" => &self.report_name,
            "user-name" => &self.user_name,
            "timeline-selection-start" => &self.timeline_selection_start,
            "timeline-selection-end" => &self.timeline_selection_end,
            "selected-node" => return self.selected_node.as_ref().map(Value::to_string),
            "selected-node-id" => {
                return self
                    .selected_node_id
                    .clone()
                    .or_else(|| self.node_key(&["id"]))
            }
            "selected-node-display-name" => {
                return self
                    .selected_node_display_name
                    .clone()
                    .or_else(|| self.node_key(&["display_name", "displayName", "label"]))
            }
            "selected-node-type" => {
                return self
                    .selected_node_type
                    .clone()
                    .or_else(|| self.node_key(&["type"]))
            }
            "canvas-name" => &self.canvas_name,
            _ => return None,
        };
        text.clone()
    }

    /// Returns the first of `keys` that the selected node has as a string or a number, as text.
    fn node_key(&self, keys: &[&str]) -> Option<String> {
        let node = self.selected_node.as_ref()?.as_object()?;
        keys.iter()
            .filter_map(|key| node.get(*key))
            .find_map(|value| match value {
                Value::String(text) => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                _ => None,
            })
    }
}

/// Reads `selected-node` from JSON: a string is parsed as JSON text, `null` means no node, and any
/// other value is the node itself.
fn selected_node_from_json<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Value>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        Value::String(text) => serde_json::from_str(&text).map(Some).map_err(|error| {
            serde::de::Error::custom(format!("selected-node is a string but not JSON: {error}"))
        }),
        node => Ok(Some(node)),
    }
}
