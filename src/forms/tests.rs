use serde_json::json;

use super::*;

fn full_context() -> Context {
    Context::from_pairs([
        "report-url=https://sift.example/r/1?a=b&c=d",
        "report-name=Case \"42\"",
        "user-name=alice@example.com",
        "timeline-selection-start=2024-01-01T00:00:00Z",
        "timeline-selection-end=2024-01-02T00:00:00Z",
        r#"selected-node={"id": "n42", "label": "host \"a\"", "tags": ["x"]}"#,
        "selected-node-id=n42",
        "selected-node-display-name=Host A",
        "selected-node-type=ip",
        "canvas-name=Main canvas",
    ])
    .expect("valid context")
}

fn sub(text: &str, context: &Context) -> (String, Vec<Warning>) {
    let mut warnings = Vec::new();
    let output = substitute(text, context, "f", &mut warnings);
    (output, warnings)
}

fn manifest(toml_text: &str) -> Manifest {
    Manifest::from_toml_str(&format!("name = \"test\"\n{toml_text}"))
        .unwrap_or_else(|error| panic!("{error}"))
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

#[test]
fn keywords_sorted_longest_first() {
    for pair in KEYWORDS.windows(2) {
        assert!(pair[0].0.len() >= pair[1].0.len(), "{pair:?}");
    }
    for (keyword, key) in KEYWORDS {
        assert_eq!(keyword, format!("SIFT-{}", key.to_uppercase()));
        assert!(CONTEXT_KEYS.contains(&key), "{key}");
    }
}

#[test]
fn substitute_every_keyword() {
    let context = full_context();
    let cases = [
        ("SIFT-REPORT-URL", "https://sift.example/r/1?a=b&c=d"),
        ("SIFT-REPORT-NAME", "Case \"42\""),
        ("SIFT-USER-NAME", "alice@example.com"),
        ("SIFT-TIMELINE-SELECTION-START", "2024-01-01T00:00:00Z"),
        ("SIFT-TIMELINE-SELECTION-END", "2024-01-02T00:00:00Z"),
        (
            "SIFT-SELECTED-NODE",
            r#"{"id":"n42","label":"host \"a\"","tags":["x"]}"#,
        ),
        ("SIFT-SELECTED-NODE-ID", "n42"),
        ("SIFT-SELECTED-NODE-DISPLAY-NAME", "Host A"),
        ("SIFT-SELECTED-NODE-TYPE", "ip"),
        ("SIFT-CANVAS-NAME", "Main canvas"),
    ];
    for (keyword, expected) in cases {
        let (output, warnings) = sub(&format!("<{keyword}>"), &context);
        assert_eq!(output, format!("<{expected}>"), "{keyword}");
        assert!(warnings.is_empty(), "{keyword}: {warnings:?}");
    }
}

#[test]
fn substitute_prefix_collisions() {
    let context = full_context();
    let (output, _) = sub(
        "SIFT-SELECTED-NODE-ID|SIFT-SELECTED-NODE-TYPE|SIFT-SELECTED-NODE-DISPLAY-NAME|SIFT-SELECTED-NODE-IDX",
        &context,
    );
    assert_eq!(output, "n42|ip|Host A|n42X");

    // Only the node JSON is set, without an id: -ID must not become the JSON followed by "-ID".
    let node_only = Context::from_pairs([r#"selected-node={"ip":1}"#]).expect("context");
    let (output, warnings) = sub("SIFT-SELECTED-NODE-ID SIFT-SELECTED-NODE", &node_only);
    assert_eq!(output, r#" {"ip":1}"#);
    assert_eq!(
        warnings,
        [Warning::missing_keyword("f", "SIFT-SELECTED-NODE-ID")]
    );
}

/// A selected node fills the id, display name and type keywords that have no value of their own.
#[test]
fn selected_node_fills_node_keywords() {
    let context = Context::from_pairs([
        r#"selected-node={"id": 42, "displayName": "Host A", "label": "ignored", "type": "ip"}"#,
    ])
    .expect("context");
    let (output, warnings) = sub(
        "SIFT-SELECTED-NODE-ID|SIFT-SELECTED-NODE-DISPLAY-NAME|SIFT-SELECTED-NODE-TYPE",
        &context,
    );
    assert_eq!(output, "42|Host A|ip");
    assert!(warnings.is_empty(), "{warnings:?}");

    // `display_name` comes before `displayName` and `label`; `label` is the last resort.
    let context: Context = serde_json::from_value(json!({
        "selected-node": {"id": "n1", "display_name": "snake", "displayName": "camel"},
    }))
    .expect("context");
    assert_eq!(
        context.value("selected-node-display-name").as_deref(),
        Some("snake")
    );
    let context: Context = serde_json::from_value(json!({
        "selected-node": "{\"label\": \"Label only\"}",
    }))
    .expect("context");
    assert_eq!(
        context.value("selected-node-display-name").as_deref(),
        Some("Label only")
    );
}

/// Keys given explicitly win over the node's, and node values that are not text or numbers
/// fill nothing.
#[test]
fn selected_node_keys_yield_to_given_values() {
    let context = Context::from_pairs([
        r#"selected-node={"id": "from-node", "type": {"name": "ip"}, "display_name": null, "label": true}"#,
        "selected-node-id=given",
    ])
    .expect("context");
    assert_eq!(context.value("selected-node-id").as_deref(), Some("given"));
    assert_eq!(context.value("selected-node-type"), None);
    assert_eq!(context.value("selected-node-display-name"), None);
    // The context keeps what was given; only substitution reads the node.
    assert_eq!(context.selected_node_type, None);

    let list = Context::from_pairs([r#"selected-node=[{"id": 1}]"#]).expect("context");
    assert_eq!(list.value("selected-node-id"), None);
}

#[test]
fn substitute_is_one_pass() {
    let context = Context::from_pairs([
        "user-name=SIFT-REPORT-NAME",
        "report-name=SIFT-USER-NAME",
        "canvas-name=SIFT-",
    ])
    .expect("context");
    let (output, warnings) = sub("SIFT-USER-NAME / SIFT-REPORT-NAME", &context);
    assert_eq!(output, "SIFT-REPORT-NAME / SIFT-USER-NAME");
    assert!(warnings.is_empty());

    // An inserted prefix joined with the text after it is not a keyword either.
    let (output, _) = sub("SIFT-CANVAS-NAMEUSER-NAME", &context);
    assert_eq!(output, "SIFT-USER-NAME");
}

#[test]
fn substitute_leaves_other_text() {
    let context = full_context();
    let text = "SIFT-UNKNOWN sift-user-name SIFT SIFT-SIFT-USER-NAME \"q\"\nnext é 🚀";
    let (output, warnings) = sub(text, &context);
    assert_eq!(
        output,
        "SIFT-UNKNOWN sift-user-name SIFT SIFT-alice@example.com \"q\"\nnext é 🚀"
    );
    assert!(warnings.is_empty());
}

#[test]
fn substitute_values_with_quotes_newlines_unicode() {
    let context =
        Context::from_pairs(["user-name=Zoë \"Z\" O'Neil\nline 2 — 世界"]).expect("context");
    let (output, _) = sub("by SIFT-USER-NAME.", &context);
    assert_eq!(output, "by Zoë \"Z\" O'Neil\nline 2 — 世界.");
}

#[test]
fn substitute_missing_keyword_warns_once() {
    let (output, warnings) = sub(
        "SIFT-USER-NAME and SIFT-USER-NAME in SIFT-CANVAS-NAME",
        &Context::default(),
    );
    assert_eq!(output, " and  in ");
    assert_eq!(
        warnings,
        [
            Warning::missing_keyword("f", "SIFT-USER-NAME"),
            Warning::missing_keyword("f", "SIFT-CANVAS-NAME"),
        ]
    );
    assert_eq!(
        warnings[0].to_string(),
        "field \"f\": SIFT-USER-NAME has no value in the context and was replaced by an empty string"
    );
}

#[test]
fn context_pairs_errors() {
    assert_eq!(
        Context::from_pairs(["user-name"]),
        Err(ContextError::MissingEquals {
            argument: "user-name".to_owned()
        })
    );
    let error = Context::from_pairs(["user_name=a"]).expect_err("unknown key");
    assert_eq!(
        error,
        ContextError::UnknownKey {
            key: "user_name".to_owned()
        }
    );
    assert_eq!(
        error.to_string(),
        "unknown context key \"user_name\"; valid keys: report-url, report-name, user-name, \
         timeline-selection-start, timeline-selection-end, selected-node, selected-node-id, \
         selected-node-display-name, selected-node-type, canvas-name"
    );
    assert_eq!(
        Context::from_pairs(["user-name=a", "user-name=b"]),
        Err(ContextError::Duplicate {
            key: "user-name".to_owned()
        })
    );
    let error = Context::from_pairs(["selected-node={oops"]).expect_err("bad JSON");
    assert!(
        matches!(error, ContextError::InvalidSelectedNode { .. }),
        "{error}"
    );
}

#[test]
fn context_pairs_keep_equals_in_value() {
    let context =
        Context::from_pairs(["report-url=https://x/?a=1&b=2", "user-name="]).expect("context");
    assert_eq!(context.report_url.as_deref(), Some("https://x/?a=1&b=2"));
    assert_eq!(context.user_name.as_deref(), Some(""));
}

#[test]
fn context_from_json() {
    let context: Context = serde_json::from_value(json!({
        "user-name": "bob",
        "selected-node": {"id": "n1"},
    }))
    .expect("context");
    assert_eq!(context.user_name.as_deref(), Some("bob"));
    assert_eq!(
        context.value("selected-node").as_deref(),
        Some(r#"{"id":"n1"}"#)
    );

    let from_string: Context =
        serde_json::from_value(json!({"selected-node": "{\"id\": \"n1\"}"})).expect("context");
    assert_eq!(from_string.selected_node, Some(json!({"id": "n1"})));

    let error =
        serde_json::from_value::<Context>(json!({"user_name": "bob"})).expect_err("unknown key");
    assert!(
        error.to_string().contains("unknown field `user_name`"),
        "{error}"
    );

    let error = serde_json::from_value::<Context>(json!({"selected-node": "{not json"}))
        .expect_err("bad node");
    assert!(
        error
            .to_string()
            .contains("selected-node is a string but not JSON"),
        "{error}"
    );
}

#[test]
fn resolve_user_values_replace_prefills() {
    let manifest = manifest(
        r#"
[[fields]]
name = "message"
value = "Hi from SIFT-USER-NAME"
[[fields]]
name = "target"
value = "SIFT-SELECTED-NODE-ID"
"#,
    );
    let context = full_context();
    let form = resolve(
        &manifest,
        &pairs(&[("target", "typed SIFT-USER-NAME literally")]),
        &context,
    )
    .expect("valid form");
    assert_eq!(
        form.values,
        pairs(&[
            ("message", "Hi from alice@example.com"),
            ("target", "typed SIFT-USER-NAME literally"),
        ])
    );
}

#[test]
fn resolve_keeps_manifest_order() {
    let manifest = manifest("[[fields]]\nname = \"b\"\n[[fields]]\nname = \"a\"\n");
    let form = resolve(
        &manifest,
        &pairs(&[("a", "1"), ("b", "2")]),
        &Context::default(),
    )
    .expect("valid form");
    assert_eq!(form.values, pairs(&[("b", "2"), ("a", "1")]));
}

#[test]
fn resolve_reports_missing_keyword() {
    let manifest = manifest("[[fields]]\nname = \"m\"\nvalue = \"by SIFT-USER-NAME\"\n");
    let form = resolve(&manifest, &[], &Context::default()).expect("valid form");
    assert_eq!(form.values, pairs(&[("m", "by ")]));
    assert_eq!(
        form.warnings,
        [Warning::missing_keyword("m", "SIFT-USER-NAME")]
    );
}

#[test]
fn resolve_unknown_and_duplicate_fields() {
    let manifest = manifest("[[fields]]\nname = \"a\"\n[[fields]]\nname = \"b\"\n");
    let errors = resolve(
        &manifest,
        &pairs(&[("c", "1"), ("a", "2"), ("a", "3")]),
        &Context::default(),
    )
    .expect_err("bad names");
    assert_eq!(errors.errors.len(), 2, "{errors}");
    assert_eq!(errors.errors[0].rule, FormRule::UnknownField);
    assert_eq!(
        errors.errors[0].message,
        "unknown field \"c\" (\"1\"); known fields: a, b"
    );
    assert_eq!(errors.errors[1].rule, FormRule::Duplicate);
    assert_eq!(errors.errors[1].field, "a");
    assert_eq!(
        errors.errors[1].message,
        "field \"a\" is given twice, as \"2\" and \"3\"; give each field once"
    );
}

/// An unknown field name close to a known one gets a suggestion.
#[test]
fn resolve_unknown_field_suggests_name() {
    let manifest = manifest("[[fields]]\nname = \"priority\"\n[[fields]]\nname = \"due\"\n");
    let errors = resolve(
        &manifest,
        &pairs(&[("prority", "high")]),
        &Context::default(),
    )
    .expect_err("unknown field");
    assert_eq!(
        errors.errors[0].message,
        "unknown field \"prority\" (\"high\"); did you mean \"priority\"? known fields: \
         priority, due"
    );
}

#[test]
fn resolve_without_fields_takes_user_values() {
    let manifest = Manifest::default_for("bare");
    let values = pairs(&[("z", "SIFT-USER-NAME"), ("message", "hi")]);
    let form = resolve(&manifest, &values, &full_context()).expect("valid form");
    assert_eq!(form.values, values);

    let errors = resolve(
        &manifest,
        &pairs(&[("x", "1"), ("x", "2")]),
        &Context::default(),
    )
    .expect_err("duplicate");
    assert_eq!(errors.errors[0].rule, FormRule::Duplicate);
}

#[test]
fn resolve_regex_rule() {
    let manifest = manifest("[[fields]]\nname = \"ip\"\nregex = \"[0-9.]+\"\n");
    let context = Context::default();
    assert!(resolve(&manifest, &pairs(&[("ip", "10.0.0.1")]), &context).is_ok());

    let errors = resolve(&manifest, &pairs(&[("ip", "10.0.0.1; rm")]), &context)
        .expect_err("partial match is not enough");
    assert_eq!(
        errors.errors,
        [FormError {
            field: "ip".to_owned(),
            value: "10.0.0.1; rm".to_owned(),
            message: "field \"ip\": \"10.0.0.1; rm\" does not match the regex [0-9.]+ as a whole"
                .to_owned(),
            rule: FormRule::Regex,
            custom_message: false,
        }]
    );
    assert_eq!(
        errors.to_string(),
        "invalid form values:\n  field \"ip\": \"10.0.0.1; rm\" does not match the regex \
         [0-9.]+ as a whole"
    );

    // An empty value is checked too.
    let errors = resolve(&manifest, &[], &context).expect_err("empty value");
    assert_eq!(errors.errors[0].value, "");
    assert_eq!(
        errors.errors[0].message,
        "field \"ip\": the empty value does not match the regex [0-9.]+ as a whole"
    );
}

/// A long value is quoted by its first 80 characters and its length.
#[test]
fn resolve_error_shortens_long_value() {
    let manifest = manifest("[[fields]]\nname = \"ip\"\nregex = \"[0-9.]+\"\n");
    let long = "é".repeat(100);
    let errors =
        resolve(&manifest, &pairs(&[("ip", &long)]), &Context::default()).expect_err("invalid");
    assert_eq!(
        errors.errors[0].message,
        format!(
            "field \"ip\": \"{}…\" (100 characters) does not match the regex [0-9.]+ as a whole",
            "é".repeat(80)
        )
    );
    assert_eq!(errors.errors[0].value, long);
}

/// An empty value of an optional field passes every rule; a non-empty one is still checked.
#[test]
fn resolve_optional_field_allows_empty() {
    let optional = manifest(
        "[[fields]]\nname = \"due\"\nui_element = \"date\"\noptional = true\n\
         [[fields]]\nname = \"ticket\"\nregex = \"TCK-[0-9]{4}\"\noptional = true\n\
         [[fields]]\nname = \"level\"\nui_element = \"select\"\noptional = true\n\
         options = [{ value = \"high\" }]\n",
    );
    let context = Context::default();
    let form = resolve(&optional, &[], &context).expect("empty optional values are valid");
    assert_eq!(
        form.values,
        pairs(&[("due", ""), ("ticket", ""), ("level", "")])
    );

    let errors = resolve(
        &optional,
        &pairs(&[("due", "soon"), ("ticket", "T-1"), ("level", "low")]),
        &context,
    )
    .expect_err("non-empty values are checked");
    let rules: Vec<FormRule> = errors.errors.iter().map(|error| error.rule).collect();
    assert_eq!(rules, [FormRule::Date, FormRule::Regex, FormRule::Select]);

    // Without `optional`, the same empty date is rejected.
    let required = manifest("[[fields]]\nname = \"due\"\nui_element = \"date\"\n");
    let errors = resolve(&required, &[], &context).expect_err("empty date");
    assert_eq!(
        errors.errors[0].message,
        "field \"due\": the empty value is not a date in the form YYYY-MM-DD, such as 2024-02-29"
    );
}

#[test]
fn resolve_custom_validation_message() {
    let manifest = manifest(
        "[[fields]]\nname = \"ip\"\nregex = \"[0-9.]+\"\nvalidation_message = \"Enter an IPv4 address.\"\n",
    );
    let errors =
        resolve(&manifest, &pairs(&[("ip", "x")]), &Context::default()).expect_err("invalid");
    assert_eq!(errors.errors[0].message, "Enter an IPv4 address.");
    assert_eq!(
        errors.errors[0].to_string(),
        "field \"ip\" (\"x\"): Enter an IPv4 address."
    );
}

#[test]
fn resolve_validates_substituted_prefill() {
    let manifest =
        manifest("[[fields]]\nname = \"who\"\nvalue = \"SIFT-USER-NAME\"\nregex = \".+@.+\"\n");
    let form = resolve(&manifest, &[], &full_context()).expect("valid prefill");
    assert_eq!(form.values, pairs(&[("who", "alice@example.com")]));

    let errors =
        resolve(&manifest, &[], &Context::default()).expect_err("empty after substitution");
    assert_eq!(errors.errors[0].rule, FormRule::Regex);
}

#[test]
fn resolve_select_rule() {
    let manifest = manifest(
        "[[fields]]\nname = \"level\"\nui_element = \"select\"\noptions = [{ label = \"High\", value = \"high\" }, { value = \"low\" }]\n",
    );
    let context = Context::default();
    assert!(resolve(&manifest, &pairs(&[("level", "low")]), &context).is_ok());

    let errors = resolve(&manifest, &pairs(&[("level", "High")]), &context)
        .expect_err("label is not a value");
    assert_eq!(errors.errors[0].rule, FormRule::Select);
    assert_eq!(
        errors.errors[0].message,
        "field \"level\": \"High\" is not one of the option values: high, low; \"High\" is the \
         label of option \"high\""
    );

    // A label differing in case is still named as a label.
    let errors = resolve(&manifest, &pairs(&[("level", "HIGH")]), &context).expect_err("label");
    assert_eq!(
        errors.errors[0].message,
        "field \"level\": \"HIGH\" is not one of the option values: high, low; \"HIGH\" is the \
         label of option \"high\""
    );

    // A value close to an option's value gets a suggestion; a distant one only the list.
    let errors = resolve(&manifest, &pairs(&[("level", "loww")]), &context).expect_err("typo");
    assert_eq!(
        errors.errors[0].message,
        "field \"level\": \"loww\" is not one of the option values: high, low; did you mean \
         \"low\"?"
    );
    let errors = resolve(&manifest, &pairs(&[("level", "medium")]), &context).expect_err("other");
    assert_eq!(
        errors.errors[0].message,
        "field \"level\": \"medium\" is not one of the option values: high, low"
    );
}

#[test]
fn resolve_date_rule() {
    let manifest = manifest("[[fields]]\nname = \"day\"\nui_element = \"date\"\n");
    let context = Context::default();
    for valid in ["2024-02-29", "1999-12-31", "2000-01-01"] {
        let form = resolve(&manifest, &pairs(&[("day", valid)]), &context)
            .unwrap_or_else(|error| panic!("{valid}: {error}"));
        assert_eq!(form.values[0].1, valid);
    }
    let form = "a date in the form YYYY-MM-DD, such as 2024-02-29";
    let cases = [
        (
            "2023-02-29",
            "\"2023-02-29\" is not a real date: February 2023 has 28 days".to_owned(),
        ),
        (
            "2026-02-30",
            "\"2026-02-30\" is not a real date: February 2026 has 28 days".to_owned(),
        ),
        (
            "2024-04-31",
            "\"2024-04-31\" is not a real date: April 2024 has 30 days".to_owned(),
        ),
        (
            "2024-01-00",
            "\"2024-01-00\" is not a real date: there is no day 00; days start at 01".to_owned(),
        ),
        (
            "2024-13-01",
            "\"2024-13-01\" is not a real date: there is no month 13; months run from 01 to 12"
                .to_owned(),
        ),
        (
            "2024-00-10",
            "\"2024-00-10\" is not a real date: there is no month 00; months run from 01 to 12"
                .to_owned(),
        ),
        (
            "2024-04-01T00:00",
            format!("\"2024-04-01T00:00\" is a date with a time or other text after it; expected only {form}"),
        ),
        (
            "2026-12-01T10:00:00Z",
            format!("\"2026-12-01T10:00:00Z\" is a date with a time or other text after it; expected only {form}"),
        ),
        ("2024-4-01", format!("\"2024-4-01\" is not {form}")),
        ("24-04-01", format!("\"24-04-01\" is not {form}")),
        ("2024/04/01", format!("\"2024/04/01\" is not {form}")),
        ("1796416374734", format!("\"1796416374734\" is not {form}")),
        ("٢٠٢٤-٠٤-٠١", format!("\"٢٠٢٤-٠٤-٠١\" is not {form}")),
        ("", format!("the empty value is not {form}")),
    ];
    for (invalid, reason) in cases {
        let errors = resolve(&manifest, &pairs(&[("day", invalid)]), &context).expect_err(invalid);
        assert_eq!(errors.errors[0].rule, FormRule::Date, "{invalid}");
        assert_eq!(errors.errors[0].message, format!("field \"day\": {reason}"));
    }
}

#[test]
fn resolve_collects_every_error() {
    let manifest = manifest(
        r#"
[[fields]]
name = "day"
ui_element = "date"
[[fields]]
name = "ok"
[[fields]]
name = "level"
ui_element = "select"
options = [{ value = "a" }]
"#,
    );
    let errors = resolve(
        &manifest,
        &pairs(&[("day", "tomorrow"), ("level", "b"), ("nope", "1")]),
        &Context::default(),
    )
    .expect_err("three errors");
    let fields: Vec<&str> = errors
        .errors
        .iter()
        .map(|error| error.field.as_str())
        .collect();
    assert_eq!(fields, ["nope", "day", "level"]);
}

#[test]
fn prefill_substitutes_for_display() {
    let manifest = manifest(
        "[[fields]]\nname = \"a\"\nvalue = \"SIFT-CANVAS-NAME\"\n[[fields]]\nname = \"b\"\n",
    );
    let form = prefill(&manifest, &full_context());
    assert_eq!(form.values, pairs(&[("a", "Main canvas"), ("b", "")]));
}

/// A quadratic duplicate check would make this run for minutes instead of milliseconds.
#[test]
fn resolve_many_unknown_fields() {
    let manifest = manifest("[[fields]]\nname = \"a\"\n");
    let values: Vec<(String, String)> = (0..100_000)
        .map(|index| (format!("f{index}"), String::new()))
        .collect();
    let errors = resolve(&manifest, &values, &Context::default()).expect_err("unknown fields");
    assert_eq!(errors.errors.len(), 100_000);
    assert!(errors
        .errors
        .iter()
        .all(|error| error.rule == FormRule::UnknownField));
}

/// A prefill that repeats a large context value stops growing once the limit is passed, and
/// the error names the limit and the size reached.
#[test]
fn resolve_within_stops_at_limit() {
    let form = manifest(&format!(
        "[[fields]]\nname = \"f\"\nvalue = \"{}\"\n",
        "SIFT-SELECTED-NODE-ID".repeat(200)
    ));
    let context = Context::from_pairs([format!("selected-node-id={}", "x".repeat(10_000))])
        .expect("valid context");
    // The name "f" and 200 copies of the value.
    let full_size = 1 + 200 * 10_000;

    let error = resolve_within(&form, &[], &context, 100_000).expect_err("over the limit");
    let ResolveError::TooLarge(error) = error else {
        panic!("expected TooLarge, got {error}");
    };
    assert_eq!(error.limit, 100_000);
    assert!(error.partial);
    assert!(error.size > 100_000, "{error:?}");
    assert!(error.size <= 100_000 + 10_000, "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "the work message is at least {} bytes, more than the limit of 100000 bytes \
             (max_message_bytes); shorten the field values or the context",
            error.size
        )
    );

    let resolved = resolve_within(&form, &[], &context, full_size).expect("at the limit");
    assert_eq!(resolved.values[0].1.len(), full_size - 1);
    let error = resolve_within(&form, &[], &context, full_size - 1).expect_err("one byte over");
    assert!(matches!(error, ResolveError::TooLarge(_)), "{error}");
}

/// User values larger than the limit are rejected before any substitution.
#[test]
fn resolve_within_bounds_user_values() {
    let form = manifest("[[fields]]\nname = \"f\"\n");
    let values = vec![("f".to_owned(), "y".repeat(1_000))];
    let error = resolve_within(&form, &values, &Context::default(), 500).expect_err("too large");
    assert_eq!(
        error,
        ResolveError::TooLarge(MessageTooLarge {
            size: 1_001,
            limit: 500,
            partial: true,
        })
    );
}
