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

use crate::manifest::{Field, Manifest, UiElement};

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
    /// The value is not a real calendar date written as `YYYY-MM-DD`.
    Date,
}

/// One rejected form value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FormError {
    /// The field name.
    pub field: String,
    /// The rejected value.
    pub value: String,
    /// The field's `validation_message`, or a default that names the field, the value and the
    /// rule.
    pub message: String,
    /// The rule that was broken.
    pub rule: FormRule,
    /// True when `message` is the manifest's `validation_message`, which may name neither the
    /// field nor the value.
    #[serde(skip)]
    pub custom_message: bool,
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.custom_message {
            write!(
                f,
                "field {:?} ({}): {}",
                self.field,
                describe_value(&self.value),
                self.message
            )
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

/// A work message, or the form values that go into it, larger than the limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the work message is {}{size} bytes, more than the limit of {limit} bytes \
     (max_message_bytes); shorten the field values or the context",
    if *.partial { "at least " } else { "" }
)]
pub struct MessageTooLarge {
    /// Size in bytes: of the whole message, or of the part built before the limit was passed
    /// when `partial` is true.
    pub size: usize,
    /// The limit in bytes.
    pub limit: usize,
    /// True when building stopped at the limit, so the message would be larger than `size`.
    pub partial: bool,
}

/// Reason that [`resolve_within`] rejects a form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// One or more values are invalid.
    #[error(transparent)]
    Form(#[from] FormErrors),
    /// The values are larger than the limit.
    #[error(transparent)]
    TooLarge(#[from] MessageTooLarge),
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
    match substitute_within(text, context, field, warnings, usize::MAX) {
        Ok(output) => output,
        // No string reaches usize::MAX bytes, so this arm only returns what was built.
        Err(partial) => partial,
    }
}

/// Substitutes like [`substitute`], but stops as soon as the output would pass `max_bytes`, so
/// that a short prefill that repeats a large context value cannot allocate without bound.
///
/// # Errors
///
/// The output built so far, already longer than `max_bytes`, when the limit is passed.
fn substitute_within(
    text: &str,
    context: &Context,
    field: &str,
    warnings: &mut Vec<Warning>,
    max_bytes: usize,
) -> Result<String, String> {
    let mut output = String::with_capacity(text.len().min(max_bytes));
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
        if output.len() > max_bytes {
            return Err(output);
        }
    }
    output.push_str(rest);
    if output.len() > max_bytes {
        return Err(output);
    }
    Ok(output)
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
/// values. A date must be a real `YYYY-MM-DD` date. Rules apply to empty values too, except in
/// a field with `optional = true`. Each default message quotes the value.
pub fn resolve(
    manifest: &Manifest,
    user_values: &[(String, String)],
    context: &Context,
) -> Result<ResolvedForm, FormErrors> {
    match resolve_within(manifest, user_values, context, usize::MAX) {
        Ok(form) => Ok(form),
        Err(ResolveError::Form(errors)) => Err(errors),
        // No form reaches usize::MAX bytes, so this arm is never taken.
        Err(ResolveError::TooLarge(_)) => Err(FormErrors { errors: Vec::new() }),
    }
}

/// Resolves the form like [`resolve`], stopping as soon as the names and values together pass
/// `max_bytes`. Substitution stops at that point too, so memory stays near `max_bytes`.
///
/// # Errors
///
/// [`ResolveError::TooLarge`] when the values pass `max_bytes`, else [`ResolveError::Form`] as
/// [`resolve`] returns it.
pub fn resolve_within(
    manifest: &Manifest,
    user_values: &[(String, String)],
    context: &Context,
    max_bytes: usize,
) -> Result<ResolvedForm, ResolveError> {
    let too_large = |size: usize| {
        ResolveError::TooLarge(MessageTooLarge {
            size,
            limit: max_bytes,
            partial: true,
        })
    };
    let given_bytes = user_values.iter().fold(0usize, |sum, (name, value)| {
        sum.saturating_add(name.len()).saturating_add(value.len())
    });
    if given_bytes > max_bytes {
        return Err(too_large(given_bytes));
    }

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
        if let Some(first) = given.get(name.as_str()) {
            errors.push(FormError {
                field: name.clone(),
                value: value.clone(),
                message: format!(
                    "field {name:?} is given twice, as {} and {}; give each field once",
                    describe_value(first),
                    describe_value(value)
                ),
                rule: FormRule::Duplicate,
                custom_message: false,
            });
        } else if !known.is_empty() && !known_set.contains(name.as_str()) {
            let hint = match crate::suggest::closest(name, known.iter().copied()) {
                Some(suggestion) => format!("did you mean {suggestion:?}? "),
                None => String::new(),
            };
            errors.push(FormError {
                field: name.clone(),
                value: value.clone(),
                message: format!(
                    "unknown field {name:?} ({}); {hint}known fields: {}",
                    describe_value(value),
                    known.join(", ")
                ),
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
            Err(FormErrors { errors }.into())
        };
    }

    let mut warnings = Vec::new();
    let mut values = Vec::with_capacity(manifest.fields.len());
    let mut size = 0usize;
    for field in &manifest.fields {
        let budget = max_bytes
            .saturating_sub(size)
            .saturating_sub(field.name.len());
        let value = match given.get(field.name.as_str()) {
            Some(value) => (*value).to_owned(),
            None => {
                let prefill = field.value.as_deref().unwrap_or_default();
                substitute_within(prefill, context, &field.name, &mut warnings, budget)
                    .map_err(|partial| too_large(size + field.name.len() + partial.len()))?
            }
        };
        size = size.saturating_add(field.name.len() + value.len());
        if size > max_bytes {
            return Err(too_large(size));
        }

        if let Some(broken) = check_value(field, &value) {
            let (message, custom_message) = match &field.validation_message {
                Some(message) => (message.clone(), true),
                None => (format!("field {:?}: {}", field.name, broken.reason), false),
            };
            errors.push(FormError {
                field: field.name.clone(),
                value: value.clone(),
                message,
                rule: broken.rule,
                custom_message,
            });
        }
        values.push((field.name.clone(), value));
    }

    if errors.is_empty() {
        Ok(ResolvedForm { values, warnings })
    } else {
        Err(FormErrors { errors }.into())
    }
}

/// A rule that a value breaks, from [`check_value`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BrokenRule {
    /// The rule.
    pub rule: FormRule,
    /// Why the value breaks it, starting with the value, such as `"High" is not one of the
    /// option values: high, low; "High" is the label of option "high"`.
    pub reason: String,
}

/// Checks `value` against `field`'s rules and returns the first one it breaks.
///
/// The regex comes first, then the kind's rule: a select value must be an option's value and a
/// date a real `YYYY-MM-DD` date. An empty value of an optional field breaks no rule.
pub(crate) fn check_value(field: &Field, value: &str) -> Option<BrokenRule> {
    if field.optional && value.is_empty() {
        return None;
    }
    if let Some(regex) = &field.regex {
        if !regex.matches_whole(value) {
            return Some(BrokenRule {
                rule: FormRule::Regex,
                reason: format!(
                    "{} does not match the regex {} as a whole",
                    describe_value(value),
                    regex.as_str()
                ),
            });
        }
    }
    let reason = match field.ui_element {
        UiElement::Select => select_problem(field, value)?,
        UiElement::Date => date_problem(value)?,
        _ => return None,
    };
    let rule = match field.ui_element {
        UiElement::Select => FormRule::Select,
        _ => FormRule::Date,
    };
    Some(BrokenRule { rule, reason })
}

/// Describes why `value` is not one of a select field's option values, or returns `None` when it
/// is one. A value that is an option's label, or close to an option's value, gets a hint.
fn select_problem(field: &Field, value: &str) -> Option<String> {
    if field.options.iter().any(|option| option.value == value) {
        return None;
    }
    let allowed: Vec<&str> = field
        .options
        .iter()
        .map(|option| option.value.as_str())
        .collect();
    let mut reason = format!(
        "{} is not one of the option values: {}",
        describe_value(value),
        allowed.join(", ")
    );

    let by_label = field
        .options
        .iter()
        .find(|option| option.label == value)
        .or_else(|| {
            field
                .options
                .iter()
                .find(|option| option.label.eq_ignore_ascii_case(value))
        });
    if let Some(option) = by_label.filter(|_| !value.is_empty()) {
        reason.push_str(&format!(
            "; {value:?} is the label of option {:?}",
            option.value
        ));
    } else if let Some(suggestion) = crate::suggest::closest(value, allowed.iter().copied()) {
        reason.push_str(&format!("; did you mean {suggestion:?}?"));
    }
    Some(reason)
}

/// Describes why `text` is not a real calendar date written as `YYYY-MM-DD`, or returns `None`
/// when it is one.
fn date_problem(text: &str) -> Option<String> {
    let form = "a date in the form YYYY-MM-DD, such as 2024-02-29";
    let Some((year, month, day)) = date_parts(text) else {
        // A timeline selection is often a date and time; name that case, since the fix differs.
        let starts_with_date =
            text.get(..10)
                .and_then(date_parts)
                .is_some_and(|(year, month, day)| {
                    chrono::NaiveDate::from_ymd_opt(year, month, day).is_some()
                });
        if starts_with_date {
            return Some(format!(
                "{} is a date with a time or other text after it; expected only {form}",
                describe_value(text)
            ));
        }
        return Some(format!("{} is not {form}", describe_value(text)));
    };
    if chrono::NaiveDate::from_ymd_opt(year, month, day).is_some() {
        return None;
    }

    let month_name = u8::try_from(month)
        .ok()
        .and_then(|month| chrono::Month::try_from(month).ok())
        .map(|month| month.name());
    let Some(month_name) = month_name else {
        return Some(format!(
            "{} is not a real date: there is no month {month:02}; months run from 01 to 12",
            describe_value(text)
        ));
    };
    if day == 0 {
        return Some(format!(
            "{} is not a real date: there is no day 00; days start at 01",
            describe_value(text)
        ));
    }
    let days = (28..=31)
        .rev()
        .find(|day| chrono::NaiveDate::from_ymd_opt(year, month, *day).is_some())
        .unwrap_or(28);
    Some(format!(
        "{} is not a real date: {month_name} {year} has {days} days",
        describe_value(text)
    ))
}

/// Splits `text` written exactly as `YYYY-MM-DD` (ASCII digits) into year, month and day,
/// without checking that the date exists.
fn date_parts(text: &str) -> Option<(i32, u32, u32)> {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(index, byte)| index == 4 || index == 7 || byte.is_ascii_digit());
    if !shape_ok {
        return None;
    }
    Some((
        text[0..4].parse().ok()?,
        text[5..7].parse().ok()?,
        text[8..10].parse().ok()?,
    ))
}

/// Returns true for a real calendar date written exactly as `YYYY-MM-DD`.
pub fn is_calendar_date(text: &str) -> bool {
    date_problem(text).is_none()
}

/// Returns true when `text` contains a `SIFT-*` keyword, so its final value depends on the
/// context.
pub fn contains_keyword(text: &str) -> bool {
    KEYWORDS.iter().any(|(keyword, _)| text.contains(keyword))
}

/// Maximum number of characters of a value quoted in a message.
const MAX_QUOTED_CHARS: usize = 80;

/// Quotes `value` for a message: `"text"`, the first characters of a long value and its length,
/// or "the empty value".
pub(crate) fn describe_value(value: &str) -> String {
    if value.is_empty() {
        return "the empty value".to_owned();
    }
    match value.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!(
            "{:?} ({} characters)",
            format!("{}…", &value[..cut]),
            value.chars().count()
        ),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests;
