//! Property tests for keyword substitution and reply parsing.
//!
//! Substitution is compared with a plain reference model: at each character, try every keyword
//! from the longest down, and copy the character when none matches. The reply parser gets
//! generated valid replies in every accepted shape, wrapped in generated log lines, and must
//! return exactly what a model of the documented normalisation returns.
//!
//! Set `PROPTEST_CASES` to run more cases than the default 256 per property.

use std::cmp::Reverse;

use agentrun::forms::{substitute, Context, Warning, KEYWORDS};
use agentrun::protocol::{parse_heartbeat, parse_info_reply, Heartbeat, InfoReply};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

// --- Keyword substitution -----------------------------------------------------------------------

/// Replaces keywords the plain way and returns the text and the keywords without a value, each
/// once, in order of first appearance.
fn reference_substitute(text: &str, context: &Context) -> (String, Vec<&'static str>) {
    let mut keywords: Vec<(&'static str, &'static str)> = KEYWORDS.to_vec();
    keywords.sort_by_key(|(keyword, _)| Reverse(keyword.len()));

    let mut output = String::new();
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match keywords
            .iter()
            .find(|(keyword, _)| rest.starts_with(keyword))
        {
            Some(&(keyword, key)) => {
                match context.value(key) {
                    Some(value) => output.push_str(&value),
                    None if !missing.contains(&keyword) => missing.push(keyword),
                    None => {}
                }
                rest = &rest[keyword.len()..];
            }
            None => {
                output.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    (output, missing)
}

fn substituted(text: &str, context: &Context) -> (String, Vec<Warning>) {
    let mut warnings = Vec::new();
    let output = substitute(text, context, "field", &mut warnings);
    (output, warnings)
}

fn keyword_strategy() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(KEYWORDS.map(|(keyword, _)| keyword).to_vec())
}

/// Generates text made of keywords, keywords cut short, bare `SIFT-` prefixes and arbitrary Unicode.
fn keyword_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => keyword_strategy().prop_map(str::to_owned),
        1 => (keyword_strategy(), 1..8usize)
            .prop_map(|(keyword, cut)| keyword[..keyword.len() - cut].to_owned()),
        1 => Just("SIFT-".to_owned()),
        1 => Just("-ID".to_owned()),
        3 => any::<String>(),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

/// Generates a context in which each key may have a value, and values contain keyword text.
fn context_strategy() -> impl Strategy<Value = Context> {
    let value = || proptest::option::of(keyword_text());
    (
        (value(), value(), value(), value(), value()),
        (value(), value(), value(), value(), value()),
    )
        .prop_map(|(first, second)| Context {
            report_url: first.0,
            report_name: first.1,
            user_name: first.2,
            timeline_selection_start: first.3,
            timeline_selection_end: first.4,
            selected_node: second.0.map(|id| json!({ "id": id })),
            selected_node_id: second.1,
            selected_node_display_name: second.2,
            selected_node_type: second.3,
            canvas_name: second.4,
        })
}

/// Returns the value a keyword stands for in `context`, empty when it has none.
fn value_of(keyword: &str, context: &Context) -> String {
    let key = KEYWORDS
        .iter()
        .find(|(candidate, _)| *candidate == keyword)
        .map(|(_, key)| *key)
        .expect("a known keyword");
    context.value(key).unwrap_or_default()
}

proptest! {
    /// Substitution equals the reference model, text and warnings, on any text and context.
    #[test]
    fn substitute_matches_reference_model(text in keyword_text(), context in context_strategy()) {
        let (output, warnings) = substituted(&text, &context);
        let (expected, missing) = reference_substitute(&text, &context);
        prop_assert_eq!(output, expected);
        let keywords: Vec<&str> =
            warnings.iter().map(|warning| warning.keyword.unwrap_or_default()).collect();
        prop_assert_eq!(keywords, missing);
        prop_assert!(warnings.iter().all(|warning| warning.field.as_deref() == Some("field")));
    }

    /// A value is inserted once and never searched again, even when it contains keyword text.
    #[test]
    fn substitute_is_one_pass(
        keywords in proptest::collection::vec(keyword_strategy(), 1..6),
        // A separator such as `-ID` would extend `SIFT-SELECTED-NODE` into another keyword.
        separator in "[^S]{0,3}".prop_filter("no keyword suffix", |text| !text.starts_with('-')),
        context in context_strategy(),
    ) {
        let text = keywords.join(&separator);
        let expected = keywords
            .iter()
            .map(|keyword| value_of(keyword, &context))
            .collect::<Vec<_>>()
            .join(&separator);
        prop_assert_eq!(substituted(&text, &context).0, expected);
    }

    /// A keyword that begins with a shorter keyword (`SIFT-SELECTED-NODE-ID` and
    /// `SIFT-SELECTED-NODE`) is read as the longer one, whichever of the two has a value.
    #[test]
    fn substitute_longest_keyword_first(context in context_strategy(), tail in any::<String>()) {
        let mut pairs = 0;
        for (long, _) in KEYWORDS {
            if !KEYWORDS.iter().any(|(short, _)| short != &long && long.starts_with(short)) {
                continue;
            }
            pairs += 1;
            // No keyword extends one of these, so the tail is substituted on its own.
            let expected = format!("{}{}", value_of(long, &context), substituted(&tail, &context).0);
            prop_assert_eq!(substituted(&format!("{long}{tail}"), &context).0, expected, "{}", long);
        }
        prop_assert_eq!(pairs, 3);
    }

    /// Arbitrary Unicode before and after a keyword is copied unchanged around its value.
    #[test]
    fn substitute_keeps_unicode_around_keyword(
        before in any::<String>().prop_filter("no keyword prefix", |text| !text.contains("SIFT-")),
        after in any::<String>().prop_filter("no keyword prefix", |text| {
            !text.contains("SIFT-") && !text.starts_with('-')
        }),
        keyword in keyword_strategy(),
        context in context_strategy(),
    ) {
        let text = format!("{before}{keyword}{after}");
        let expected = format!("{before}{}{after}", value_of(keyword, &context));
        prop_assert_eq!(substituted(&text, &context).0, expected);
    }
}

// --- Reply parsing ------------------------------------------------------------------------------

/// How a number is written in a reply: as a JSON integer or as a string of digits.
#[derive(Clone, Copy, Debug)]
enum NumberForm {
    Integer,
    Digits,
    /// Digits with spaces around them, which agents sometimes write.
    PaddedDigits,
}

fn number_form() -> impl Strategy<Value = NumberForm> {
    prop_oneof![
        Just(NumberForm::Integer),
        Just(NumberForm::Digits),
        Just(NumberForm::PaddedDigits),
    ]
}

fn write_number(value: i128, form: NumberForm) -> Value {
    match form {
        NumberForm::Integer => serde_json::from_str(&value.to_string()).expect("an integer"),
        NumberForm::Digits => Value::String(value.to_string()),
        NumberForm::PaddedDigits => Value::String(format!(" {value} ")),
    }
}

/// Which spelling of the return code a reply uses.
#[derive(Clone, Copy, Debug)]
enum ReturnCodeKey {
    Missing,
    ReturnCode,
    ReturnedCode,
}

/// One valid `info` reply, in any of the accepted shapes.
#[derive(Clone, Debug)]
struct InfoSpec {
    job_id: Option<NumberForm>,
    agent: Option<String>,
    with_action: bool,
    message: String,
    url: Option<String>,
    url_label: Option<String>,
    list_payload: bool,
    timestamp: Option<(i64, NumberForm)>,
    return_code: (ReturnCodeKey, i64, NumberForm),
    extra: Option<(String, String)>,
}

fn info_spec() -> impl Strategy<Value = InfoSpec> {
    let return_key = prop_oneof![
        Just(ReturnCodeKey::Missing),
        Just(ReturnCodeKey::ReturnCode),
        Just(ReturnCodeKey::ReturnedCode),
    ];
    (
        (
            proptest::option::of(number_form()),
            proptest::option::of(any::<String>()),
            any::<bool>(),
            any::<String>(),
            proptest::option::of(any::<String>()),
            proptest::option::of(any::<String>()),
        ),
        (
            any::<bool>(),
            proptest::option::of((any::<i64>(), number_form())),
            (return_key, any::<i64>(), number_form()),
            proptest::option::of(("x-[a-z]{1,8}", any::<String>())),
        ),
    )
        .prop_map(|(first, second)| InfoSpec {
            job_id: first.0,
            agent: first.1,
            with_action: first.2,
            message: first.3,
            url: first.4,
            url_label: first.5,
            list_payload: second.0,
            timestamp: second.1,
            return_code: second.2,
            extra: second.3,
        })
}

impl InfoSpec {
    /// Returns the reply as the agent writes it.
    fn to_json(&self, job_id: u64) -> Value {
        let mut reply = Map::new();
        reply.insert("type".into(), "info".into());
        if let Some(form) = self.job_id {
            reply.insert("job_id".into(), write_number(i128::from(job_id), form));
        }
        if let Some(agent) = &self.agent {
            reply.insert("agent".into(), agent.clone().into());
        }
        if self.with_action {
            reply.insert("action".into(), "popup-message".into());
        }
        let mut entries = vec![("message", self.message.clone())];
        if let Some(url) = &self.url {
            entries.push(("url", url.clone()));
        }
        if let Some(label) = &self.url_label {
            entries.push(("url_label", label.clone()));
        }
        let payload = if self.list_payload {
            Value::Array(
                entries
                    .iter()
                    .map(|(name, value)| json!({"name": name, "value": value}))
                    .collect(),
            )
        } else {
            Value::Object(
                entries
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), Value::from(value.as_str())))
                    .collect(),
            )
        };
        reply.insert("payload".into(), payload);
        if let Some((timestamp, form)) = self.timestamp {
            reply.insert(
                "timestamp".into(),
                write_number(i128::from(timestamp), form),
            );
        }
        let (key, code, form) = self.return_code;
        match key {
            ReturnCodeKey::Missing => {}
            ReturnCodeKey::ReturnCode => {
                reply.insert("return_code".into(), write_number(i128::from(code), form));
            }
            ReturnCodeKey::ReturnedCode => {
                reply.insert("returned_code".into(), write_number(i128::from(code), form));
            }
        }
        if let Some((key, value)) = &self.extra {
            reply.insert(key.clone(), value.clone().into());
        }
        Value::Object(reply)
    }

    /// Returns what the parser must make of the reply, following the documented
    /// normalisation: `return_code` and `action` always present, the payload an object, and
    /// numbers written as strings turned into integers.
    fn expected(&self, job_id: u64) -> InfoReply {
        let return_code = match self.return_code.0 {
            ReturnCodeKey::Missing => 0,
            _ => self.return_code.1,
        };
        let mut raw = Map::new();
        raw.insert("type".into(), "info".into());
        if self.job_id.is_some() {
            raw.insert("job_id".into(), job_id.into());
        }
        if let Some(agent) = &self.agent {
            raw.insert("agent".into(), agent.clone().into());
        }
        raw.insert("action".into(), "popup-message".into());
        let mut payload = Map::new();
        payload.insert("message".into(), self.message.clone().into());
        if let Some(url) = &self.url {
            payload.insert("url".into(), url.clone().into());
        }
        if let Some(label) = &self.url_label {
            payload.insert("url_label".into(), label.clone().into());
        }
        raw.insert("payload".into(), Value::Object(payload));
        if let Some((timestamp, _)) = self.timestamp {
            raw.insert("timestamp".into(), timestamp.into());
        }
        raw.insert("return_code".into(), return_code.into());
        if let Some((key, value)) = &self.extra {
            raw.insert(key.clone(), value.clone().into());
        }
        InfoReply {
            job_id: self.job_id.map(|_| job_id),
            agent: self.agent.clone(),
            action: "popup-message".to_owned(),
            message: self.message.clone(),
            url: self.url.clone(),
            url_label: self.url_label.clone(),
            timestamp: self.timestamp.map(|(timestamp, _)| timestamp),
            return_code,
            ignored_replies: 0,
            raw: Value::Object(raw),
        }
    }
}

/// Generates a line an agent may print around its reply.
fn log_line() -> impl Strategy<Value = String> {
    let text = "[^\n]*".prop_filter("a line starting with { may be a reply", |line| {
        !line.trim_start_matches([' ', '\t', '\r']).starts_with('{')
    });
    let other_type = ("[a-z]{1,10}", any::<String>())
        .prop_filter("only info is a reply to work", |(kind, _)| kind != "info")
        .prop_map(|(kind, text)| json!({"type": kind, "text": text}).to_string());
    let untyped =
        any::<String>().prop_map(|text| json!({"level": "debug", "msg": text}).to_string());
    prop_oneof![4 => text, 1 => other_type, 1 => untyped]
}

/// Writes a JSON value compact or pretty-printed, with each line indented by `indent`.
fn layout(value: &Value, pretty: bool, indent: &str) -> String {
    let text = if pretty {
        serde_json::to_string_pretty(value).expect("a JSON value serialises")
    } else {
        value.to_string()
    };
    text.lines()
        .map(|line| format!("{indent}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Puts `reply` between log lines, with `\n` or `\r\n` line ends.
fn wrap(before: &[String], reply: &str, after: &[String], crlf: bool) -> Vec<u8> {
    let end = if crlf { "\r\n" } else { "\n" };
    let mut lines: Vec<String> = before.to_vec();
    lines.push(reply.replace('\n', end));
    lines.extend(after.iter().cloned());
    lines.join(end).into_bytes()
}

fn logs() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(log_line(), 0..6)
}

proptest! {
    /// Any valid `info` reply, in any accepted shape and layout and between any log lines, is
    /// found and normalised as documented, whatever the job id.
    #[test]
    fn reply_found_between_log_lines(
        spec in info_spec(),
        job_id in any::<u64>(),
        pretty in any::<bool>(),
        indent in "[ \t]{0,4}",
        before in logs(),
        after in logs(),
        crlf in any::<bool>(),
    ) {
        let reply = layout(&spec.to_json(job_id), pretty, &indent);
        let stdout = wrap(&before, &reply, &after, crlf);

        let parsed = parse_info_reply(&stdout, job_id);

        prop_assert_eq!(parsed, Ok(spec.expected(job_id)), "stdout: {:?}", String::from_utf8_lossy(&stdout));
    }

    /// A heartbeat, with or without a job id and extra fields, is found between log lines.
    #[test]
    fn heartbeat_found_between_log_lines(
        job_id_form in proptest::option::of(number_form()),
        job_id in any::<u64>(),
        extra in proptest::option::of(("x-[a-z]{1,8}", any::<String>())),
        pretty in any::<bool>(),
        before in logs(),
        after in logs(),
    ) {
        let mut heartbeat = Map::new();
        heartbeat.insert("type".into(), "heartbeat".into());
        if let Some(form) = job_id_form {
            heartbeat.insert("job_id".into(), write_number(i128::from(job_id), form));
        }
        if let Some((key, value)) = &extra {
            heartbeat.insert(key.clone(), value.clone().into());
        }
        let mut expected_raw = heartbeat.clone();
        if job_id_form.is_some() {
            expected_raw.insert("job_id".into(), job_id.into());
        }
        let stdout = wrap(&before, &layout(&Value::Object(heartbeat), pretty, ""), &after, false);

        let parsed = parse_heartbeat(&stdout, job_id);

        prop_assert_eq!(
            parsed,
            Ok(Heartbeat { job_id: job_id_form.map(|_| job_id), raw: Value::Object(expected_raw) })
        );
    }
}
