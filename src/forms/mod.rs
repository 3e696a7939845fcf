//! Form values: `SIFT-*` keyword substitution in prefills, user values and validation.
//!
//! A job's payload comes from the manifest's fields. Each field's final value is the value the
//! user gave, or else its prefill with keywords replaced from the [`Context`]. User values are
//! taken literally: a user may type keyword text, and it reaches the agent unchanged. Every final
//! value is then checked against its field's rules, and all failures are reported together, so a
//! UI can mark every bad field at once.

mod context;

use std::collections::{HashMap, HashSet};
use std::fmt;

pub use crate::warning::Warning;
pub use context::{Context, ContextError, CONTEXT_KEYS, KEYWORDS};

use crate::manifest::{Manifest, UiElement};

/// Text every keyword starts with.
const KEYWORD_PREFIX: &str = "SIFT-";

/// Final form values, ready for the `work` payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedForm {
    /// `(name, value)` pairs in the manifest's field order; in the order given when the manifest
    /// has no fields.
    pub values: Vec<(String, String)>,
    /// Keywords that had no value in the context ([`crate::warning::WarningKind::MissingKeyword`]).
    pub warnings: Vec<Warning>,
}

/// The rule a form value broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FormRule {
    /// The user gave a value for a field the manifest does not have.
    UnknownField,
    /// The user gave two values for one field.
    Duplicate,
    /// The value does not match the field's regex as a whole.
    Regex,
    /// The value is not one of the select field's option values.
    Select,
    /// The value is not a `YYYY-MM-DD` calendar date.
    Date,
}

/// One rejected form value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FormError {
    /// The field name.
    pub field: String,
    /// The rejected value.
    pub value: String,
    /// The field's `validation_message`, or a default that names the field and the rule.
    pub message: String,
    /// The rule that was broken.
    pub rule: FormRule,
    /// True when `message` is the manifest's `validation_message`, which may not name the field.
    #[serde(skip)]
    pub custom_message: bool,
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.custom_message {
            write!(f, "field {:?}: {}", self.field, self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

/// Every rejected value of one form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid form values:{}", self.errors.iter().map(|error| format!("\n  {error}")).collect::<String>())]
pub struct FormErrors {
    /// One entry per rejected value, in the manifest's field order after unknown and duplicate
    /// names.
    pub errors: Vec<FormError>,
}

/// Replaces every `SIFT-*` keyword in `text` with its value from `context`, in one pass.
///
/// At each position the longest keyword wins, and text that a replacement inserts is not searched
/// again. A keyword without a value becomes an empty string and adds a [`Warning`] for `field`
/// (once per keyword and field).
pub fn substitute(
    text: &str,
    context: &Context,
    field: &str,
    warnings: &mut Vec<Warning>,
) -> String {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;

    while let Some(position) = rest.find(KEYWORD_PREFIX) {
        output.push_str(&rest[..position]);
        let tail = &rest[position..];

        match KEYWORDS
            .iter()
            .find(|(keyword, _)| tail.starts_with(keyword))
        {
            Some(&(keyword, key)) => {
                match context.value(key) {
                    Some(value) => output.push_str(&value),
                    None => {
                        let warning = Warning::missing_keyword(field, keyword);
                        if !warnings.contains(&warning) {
                            warnings.push(warning);
                        }
                    }
                }
                rest = &tail[keyword.len()..];
            }
            None => {
                output.push_str(KEYWORD_PREFIX);
                rest = &tail[KEYWORD_PREFIX.len()..];
            }
        }
    }
    output.push_str(rest);
    output
}

/// Returns each field's prefill with keywords substituted, in field order, as a form shows it
/// before the user edits it. A field without a prefill gets an empty string.
pub fn prefill(manifest: &Manifest, context: &Context) -> ResolvedForm {
    let mut warnings = Vec::new();
    let values = manifest
        .fields
        .iter()
        .map(|field| {
            let prefill = field.value.as_deref().unwrap_or_default();
            let value = substitute(prefill, context, &field.name, &mut warnings);
            (field.name.clone(), value)
        })
        .collect();
    ResolvedForm { values, warnings }
}

/// Computes the final form values and validates them.
///
/// A value in `user_values` replaces the field's prefill and is not substituted. Fields the user
/// left out get their substituted prefill. When the manifest has no fields, `user_values` become
/// text fields in the order given, without validation.
///
/// # Errors
///
/// [`FormErrors`] with one entry per unknown or repeated field name and per value that breaks its
/// field's rule. A regex must match the whole value. A select value must be one of the option
/// values. A date must be a real `YYYY-MM-DD` date. Rules apply to empty values too.
pub fn resolve(
    manifest: &Manifest,
    user_values: &[(String, String)],
    context: &Context,
) -> Result<ResolvedForm, FormErrors> {
    let mut errors = Vec::new();
    let known: Vec<&str> = manifest
        .fields
        .iter()
        .map(|field| field.name.as_str())
        .collect();
    let known_set: HashSet<&str> = known.iter().copied().collect();

    // Maps are used so that a request with many values costs linear time, not quadratic.
    let mut given: HashMap<&str, &str> = HashMap::with_capacity(user_values.len());
    for (name, value) in user_values {
        if given.contains_key(name.as_str()) {
            errors.push(FormError {
                field: name.clone(),
                value: value.clone(),
                message: format!("field {name:?} is given twice; give each field once"),
                rule: FormRule::Duplicate,
                custom_message: false,
            });
        } else if !known.is_empty() && !known_set.contains(name.as_str()) {
            errors.push(FormError {
                field: name.clone(),
                value: value.clone(),
                message: format!("unknown field {name:?}; known fields: {}", known.join(", ")),
                rule: FormRule::UnknownField,
                custom_message: false,
            });
        }
        given.entry(name.as_str()).or_insert(value.as_str());
    }

    if manifest.fields.is_empty() {
        return if errors.is_empty() {
            Ok(ResolvedForm {
                values: user_values.to_vec(),
                warnings: Vec::new(),
            })
        } else {
            Err(FormErrors { errors })
        };
    }

    let mut warnings = Vec::new();
    let mut values = Vec::with_capacity(manifest.fields.len());
    for field in &manifest.fields {
        let user_value = given
            .get(field.name.as_str())
            .map(|value| (*value).to_owned());
        let value = user_value.unwrap_or_else(|| {
            let prefill = field.value.as_deref().unwrap_or_default();
            substitute(prefill, context, &field.name, &mut warnings)
        });

        if let Some((rule, default_message)) = broken_rule(field, &value) {
            let (message, custom_message) = match &field.validation_message {
                Some(message) => (message.clone(), true),
                None => (default_message, false),
            };
            errors.push(FormError {
                field: field.name.clone(),
                value: value.clone(),
                message,
                rule,
                custom_message,
            });
        }
        values.push((field.name.clone(), value));
    }

    if errors.is_empty() {
        Ok(ResolvedForm { values, warnings })
    } else {
        Err(FormErrors { errors })
    }
}

/// Returns the first rule `value` breaks, with a default message naming the field and the rule.
fn broken_rule(field: &crate::manifest::Field, value: &str) -> Option<(FormRule, String)> {
    let name = &field.name;
    if let Some(regex) = &field.regex {
        if !regex.matches_whole(value) {
            return Some((
                FormRule::Regex,
                format!(
                    "field {name:?} must match the regex {} as a whole",
                    regex.as_str()
                ),
            ));
        }
    }
    match field.ui_element {
        UiElement::Select if !field.options.iter().any(|option| option.value == value) => {
            let allowed: Vec<&str> = field
                .options
                .iter()
                .map(|option| option.value.as_str())
                .collect();
            Some((
                FormRule::Select,
                format!("field {name:?} must be one of: {}", allowed.join(", ")),
            ))
        }
        UiElement::Date if !is_calendar_date(value) => Some((
            FormRule::Date,
            format!("field {name:?} must be a date in the form YYYY-MM-DD, such as 2024-02-29"),
        )),
        _ => None,
    }
}

/// Returns true for a real calendar date written exactly as `YYYY-MM-DD`.
pub fn is_calendar_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(index, byte)| index == 4 || index == 7 || byte.is_ascii_digit());
    if !shape_ok {
        return false;
    }
    // The shape check above guarantees ASCII digits, so these parses cannot fail.
    let (Ok(year), Ok(month), Ok(day)) = (
        text[0..4].parse::<i32>(),
        text[5..7].parse::<u32>(),
        text[8..10].parse::<u32>(),
    ) else {
        return false;
    };
    chrono::NaiveDate::from_ymd_opt(year, month, day).is_some()
}

#[cfg(test)]
mod tests;
