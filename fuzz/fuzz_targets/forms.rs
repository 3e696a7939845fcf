//! Keyword substitution with form resolution and validation.
//!
//! A structured input describes a manifest's fields (names, kinds, options, prefills, regexes
//! built from pattern fragments), a context and the user's values. The manifest goes through the
//! JSON intake, so invalid fields exercise validation. For a valid manifest, the prefills must
//! match the reference substitution model, and every value that `resolve` accepts must satisfy
//! its field's rules.

#![no_main]

use agentrun::forms::{self, is_calendar_date, Context, FormRule, CONTEXT_KEYS, KEYWORDS};
use agentrun::manifest::{Manifest, UiElement};
use agentrun_fuzz::reference_substitute;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

/// Field names drawn from a small set, so that duplicates and user values that name real
/// fields are common.
const NAMES: [&str; 6] = ["message", "a", "_b", "url-1", "1bad", "Ω"];

/// Pieces of regex syntax; a pattern is a sequence of them.
const REGEX_PIECES: [&str; 24] = [
    "a", ".", "*", "+", "?", "(", ")", "|", "[a-z]", "\\d", "{2,3}", "SIFT-", "(?s)", "\\S", "^",
    "$", "é", "\\p{L}", "[^x]", "\\", "{", "}", "-", "(?i)",
];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Other(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Self::Known(index) => NAMES[usize::from(*index) % NAMES.len()].to_owned(),
            Self::Other(text) => text.clone(),
        }
    }
}

/// Text assembled from keywords, keyword look-alikes and free text.
#[derive(Arbitrary, Debug)]
enum Piece {
    Keyword(u8),
    /// A keyword cut short by this many bytes, such as `SIFT-SELECTED-NOD`.
    CutKeyword(u8, u8),
    Prefix,
    Text(String),
}

fn assemble(pieces: &[Piece]) -> String {
    let mut text = String::new();
    for piece in pieces {
        match piece {
            Piece::Keyword(index) => {
                text.push_str(KEYWORDS[usize::from(*index) % KEYWORDS.len()].0)
            }
            Piece::CutKeyword(index, cut) => {
                let keyword = KEYWORDS[usize::from(*index) % KEYWORDS.len()].0;
                text.push_str(&keyword[..keyword.len().saturating_sub(usize::from(*cut) % 8)]);
            }
            Piece::Prefix => text.push_str("SIFT-"),
            Piece::Text(free) => text.push_str(free),
        }
    }
    text
}

#[derive(Arbitrary, Debug)]
enum Regex {
    Pieces(Vec<u8>),
    Free(String),
}

impl Regex {
    fn text(&self) -> String {
        match self {
            Self::Pieces(pieces) => pieces
                .iter()
                .map(|index| REGEX_PIECES[usize::from(*index) % REGEX_PIECES.len()])
                .collect(),
            Self::Free(text) => text.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct OptionInput {
    label: Option<String>,
    value: Option<Vec<Piece>>,
}

#[derive(Arbitrary, Debug)]
struct FieldInput {
    name: Option<Name>,
    ui_element: u8,
    options: Option<Vec<OptionInput>>,
    value: Option<Vec<Piece>>,
    regex: Option<Regex>,
    validation_message: Option<String>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    fields: Vec<FieldInput>,
    /// Context values: a key index into `CONTEXT_KEYS` and its text.
    context: Vec<(u8, Vec<Piece>)>,
    /// The selected node as JSON text, parsed like the HTTP API does.
    selected_node: Option<String>,
    user_values: Vec<(Name, Vec<Piece>)>,
}

const UI_ELEMENTS: [&str; 5] = ["text", "textarea", "select", "date", "slider"];

fn manifest_json(input: &Input) -> Value {
    let fields: Vec<Value> = input
        .fields
        .iter()
        .map(|field| {
            let mut object = Map::new();
            if let Some(name) = &field.name {
                object.insert("name".into(), name.text().into());
            }
            let kind = UI_ELEMENTS[usize::from(field.ui_element) % UI_ELEMENTS.len()];
            object.insert("ui_element".into(), kind.into());
            if let Some(options) = &field.options {
                let options: Vec<Value> = options
                    .iter()
                    .map(|input| {
                        let mut option = Map::new();
                        if let Some(label) = &input.label {
                            option.insert("label".into(), label.clone().into());
                        }
                        if let Some(value) = &input.value {
                            option.insert("value".into(), assemble(value).into());
                        }
                        Value::Object(option)
                    })
                    .collect();
                object.insert("options".into(), options.into());
            }
            if let Some(value) = &field.value {
                object.insert("value".into(), assemble(value).into());
            }
            if let Some(regex) = &field.regex {
                object.insert("regex".into(), regex.text().into());
            }
            if let Some(message) = &field.validation_message {
                object.insert("validation_message".into(), message.clone().into());
            }
            Value::Object(object)
        })
        .collect();
    json!({"name": "fuzz", "fields": fields})
}

fn context(input: &Input) -> Option<Context> {
    let mut object = Map::new();
    for (key, pieces) in &input.context {
        let key = CONTEXT_KEYS[usize::from(*key) % CONTEXT_KEYS.len()];
        if key != "selected-node" {
            object.insert(key.into(), assemble(pieces).into());
        }
    }
    if let Some(node) = &input.selected_node {
        object.insert("selected-node".into(), node.clone().into());
    }
    // A selected node that is not JSON is rejected here, as the API would reject it.
    serde_json::from_value(Value::Object(object)).ok()
}

fuzz_target!(|input: Input| {
    let json = serde_json::to_vec(&manifest_json(&input)).expect("a JSON value serialises");
    let Ok(manifest) = Manifest::from_json_slice(&json) else {
        return;
    };
    let Some(context) = context(&input) else {
        return;
    };
    let user_values: Vec<(String, String)> = input
        .user_values
        .iter()
        .map(|(name, pieces)| (name.text(), assemble(pieces)))
        .collect();

    // Prefills against the reference model.
    let prefilled = forms::prefill(&manifest, &context);
    let mut expected_warnings = Vec::new();
    for (field, (name, value)) in manifest.fields.iter().zip(&prefilled.values) {
        assert_eq!(&field.name, name);
        let prefill = field.value.as_deref().unwrap_or_default();
        let (expected, missing) = reference_substitute(prefill, |key| context.value(key));
        assert_eq!(value, &expected, "prefill {prefill:?}");
        expected_warnings.extend(missing.into_iter().map(|keyword| (name.clone(), keyword)));
    }
    assert_eq!(prefilled.values.len(), manifest.fields.len());
    let warnings: Vec<(String, &str)> = prefilled
        .warnings
        .iter()
        .map(|warning| {
            let field = warning.field.clone().unwrap_or_default();
            (field, warning.keyword.unwrap_or_default())
        })
        .collect();
    assert_eq!(warnings, expected_warnings);

    // Resolution: accepted values obey their rules; rejected ones name a real rule.
    match forms::resolve(&manifest, &user_values, &context) {
        Ok(resolved) if manifest.fields.is_empty() => assert_eq!(resolved.values, user_values),
        Ok(resolved) => {
            assert_eq!(resolved.values.len(), manifest.fields.len());
            for (field, (name, value)) in manifest.fields.iter().zip(&resolved.values) {
                assert_eq!(&field.name, name);
                match user_values.iter().find(|(given, _)| given == name) {
                    // User values reach the agent exactly as typed.
                    Some((_, given)) => assert_eq!(value, given),
                    None => {
                        let prefilled = prefilled.values.iter().find(|(other, _)| other == name);
                        assert_eq!(Some(value), prefilled.map(|(_, value)| value));
                    }
                }
                if let Some(regex) = &field.regex {
                    assert!(
                        regex.matches_whole(value),
                        "{value:?} vs {}",
                        regex.as_str()
                    );
                }
                match field.ui_element {
                    UiElement::Select => {
                        assert!(field.options.iter().any(|option| &option.value == value));
                    }
                    UiElement::Date => assert!(is_calendar_date(value), "{value:?}"),
                    _ => {}
                }
            }
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty());
            for error in &errors.errors {
                if matches!(
                    error.rule,
                    FormRule::Regex | FormRule::Select | FormRule::Date
                ) {
                    assert!(manifest.field(&error.field).is_some(), "{error:?}");
                }
            }
            assert!(!errors.to_string().is_empty());
        }
    }
});
