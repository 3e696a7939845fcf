use super::*;

/// Parses TOML that must be rejected and returns its problems as `path: message` lines.
fn problems(toml_text: &str) -> Vec<String> {
    match Manifest::from_toml_str(toml_text) {
        Ok(manifest) => panic!("expected problems, parsed {manifest:?}"),
        Err(error @ ManifestError::Invalid { .. }) => error.problems(),
        Err(other) => panic!("expected validation problems, got {other}"),
    }
}

fn parse(toml_text: &str) -> Manifest {
    Manifest::from_toml_str(toml_text).unwrap_or_else(|error| panic!("{error}"))
}

const FULL: &str = r#"
name = "  Slack notifier  "
take_user_input = false
section = "canvas"
section_element = "nodes"
section_element_type = ["ip", "domain"]

[[fields]]
name = "message"
label = "Message"
ui_element = "textarea"
value = "From SIFT-USER-NAME: \"hi\"\nbye"
regex = ".{1,2000}"
validation_message = "Write 1 to 2000 characters."
tooltip = "Sent to the channel"

[[fields]]
name = "level"
ui_element = "select"
options = [{ label = "High", value = "high" }, { value = "low" }]
value = "low"

[[fields]]
name = "day"
ui_element = "date"

[env]
url = "https://example.com/hook?a=1&b=2"
API_KEY = "s3cr=t \"quoted\" é"

[run]
command = "python3 'agent dir/agent.py' --verbose"
timeout_secs = 30
"#;

#[test]
fn manifest_full_example_parses() {
    let manifest = parse(FULL);
    assert_eq!(manifest.name, "Slack notifier");
    assert!(!manifest.take_user_input);
    assert_eq!(manifest.section, Some(Section::Canvas));
    assert_eq!(manifest.section_element, Some(SectionElement::Nodes));
    assert_eq!(manifest.section_element_type, ["ip", "domain"]);
    assert_eq!(manifest.fields.len(), 3);

    let message = &manifest.fields[0];
    assert_eq!(message.ui_element, UiElement::Textarea);
    assert_eq!(
        message.value.as_deref(),
        Some("From SIFT-USER-NAME: \"hi\"\nbye")
    );
    assert_eq!(
        message.regex.as_ref().map(FieldRegex::as_str),
        Some(".{1,2000}")
    );

    let level = &manifest.fields[1];
    assert_eq!(level.label, "level");
    assert_eq!(
        level.options,
        [
            SelectOption {
                label: "High".to_owned(),
                value: "high".to_owned()
            },
            SelectOption {
                label: "low".to_owned(),
                value: "low".to_owned()
            },
        ]
    );
    assert_eq!(manifest.fields[2].ui_element, UiElement::Date);
    assert_eq!(manifest.env["API_KEY"], "s3cr=t \"quoted\" é");
    assert_eq!(
        manifest.command(),
        Some(
            &[
                "python3".to_owned(),
                "agent dir/agent.py".to_owned(),
                "--verbose".to_owned()
            ][..]
        )
    );
    assert_eq!(manifest.timeout(), Some(std::time::Duration::from_secs(30)));
}

#[test]
fn manifest_round_trips_toml() {
    let manifest = parse(FULL);
    let text = toml::to_string(&manifest).expect("manifest serialises to TOML");
    assert_eq!(parse(&text), manifest, "TOML:\n{text}");
}

#[test]
fn manifest_round_trips_json() {
    let manifest = parse(FULL);
    let json = serde_json::to_vec(&manifest).expect("manifest serialises to JSON");
    let parsed = Manifest::from_json_slice(&json).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(parsed, manifest);

    // The Deserialize impl goes through the same validation.
    let embedded: Manifest = serde_json::from_slice(&json).expect("deserialize");
    assert_eq!(embedded, manifest);
}

#[test]
fn manifest_minimal_defaults() {
    let manifest = parse("name = \"echo\"\n");
    assert_eq!(manifest, Manifest::default_for("echo"));
    assert!(manifest.take_user_input);
    assert_eq!(manifest.timeout(), None);
}

#[test]
fn manifest_default_for_names() {
    assert_eq!(Manifest::default_for("  my-agent ").name, "my-agent");
    assert_eq!(Manifest::default_for("").name, "agent");
    assert_eq!(
        Manifest::default_for(&"x".repeat(150)).name.chars().count(),
        MAX_NAME_CHARS
    );
}

#[test]
fn manifest_load_missing_file_defaults() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = Manifest::load(dir.path(), "echo").expect("defaults");
    assert_eq!(manifest, Manifest::default_for("echo"));
}

#[test]
fn manifest_load_reads_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join(MANIFEST_FILE), "name = \"from file\"\n").expect("write");
    let manifest = Manifest::load(dir.path(), "folder").expect("manifest");
    assert_eq!(manifest.name, "from file");
}

#[test]
fn manifest_load_error_names_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(MANIFEST_FILE);
    std::fs::write(&path, "name = \"x\"\nsection = \"sidebar\"\n").expect("write");
    let error = Manifest::load(dir.path(), "folder").expect_err("invalid");
    assert_eq!(
        error.to_string(),
        format!(
            "invalid manifest in {}:\n  section: unknown value \"sidebar\"; expected one of canvas, collaborate",
            path.display()
        )
    );
}

#[test]
fn manifest_load_too_large() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "name = \"x\"\n#{}\n",
        "a".repeat(MAX_MANIFEST_BYTES as usize)
    );
    std::fs::write(dir.path().join(MANIFEST_FILE), text).expect("write");
    let error = Manifest::load(dir.path(), "folder").expect_err("too large");
    assert!(
        matches!(error, ManifestError::TooLarge { bytes, .. } if bytes > MAX_MANIFEST_BYTES),
        "{error}"
    );
}

#[test]
fn manifest_syntax_error_position() {
    let error = Manifest::from_toml_str("name = \"x\"\nsection = \n").expect_err("syntax");
    match error {
        ManifestError::Syntax {
            format,
            line,
            column,
            ..
        } => {
            assert_eq!(format, "TOML");
            assert_eq!(line, 2);
            assert_eq!(column, 11);
        }
        other => panic!("expected a syntax error, got {other}"),
    }
}

/// An unknown key at any level is one problem among the others, named by its path, with the
/// closest known key as a suggestion or else the list of known keys.
#[test]
fn manifest_unknown_keys_collected() {
    let text = r#"
name = "x"
section_elemnt = "report"
timeout = 5

[[fields]]
name = "due"
ui_elment = "date"
widget = "text"
ui_element = "dropdown"
options = [{ value = "a", lable = "A" }]

[run]
timeout = 30
command = []
"#;
    assert_eq!(
        problems(text),
        [
            "section_elemnt: unknown key; did you mean \"section_element\"?",
            "timeout: unknown key; the keys of the manifest are name, take_user_input, section, \
             section_element, section_element_type, fields, env, run",
            "fields[0].ui_elment (field \"due\"): unknown key; did you mean \"ui_element\"?",
            "fields[0].widget (field \"due\"): unknown key; the keys of a field are name, label, \
             ui_element, options, value, optional, regex, validation_message, tooltip",
            "fields[0].ui_element (field \"due\"): unknown value \"dropdown\"; expected one of \
             text, textarea, select, date",
            "fields[0].options (field \"due\"): only ui_element = \"select\" takes options, and \
             this field is \"text\"; remove the options or make it a select",
            "run.timeout: unknown key; did you mean \"timeout_secs\"?",
            "run.command: is empty; give the program and its arguments",
        ]
    );
}

/// Unknown keys inside a select's options are reported with the option's path.
#[test]
fn manifest_unknown_option_key() {
    let text = "name = \"x\"\n[[fields]]\nname = \"level\"\nui_element = \"select\"\n\
                options = [{ value = \"a\", lable = \"A\" }]\n";
    assert_eq!(
        problems(text),
        ["fields[0].options[0].lable (field \"level\"): unknown key; did you mean \"label\"?"]
    );
}

#[test]
fn manifest_json_unknown_key_is_problem() {
    let error = Manifest::from_json_slice(b"{\"name\": \"x\",\n \"colour\": 1, \"Name\": \"y\"}")
        .expect_err("unknown");
    assert_eq!(
        error.problems(),
        [
            "Name: unknown key; did you mean \"name\"?",
            "colour: unknown key; the keys of the manifest are name, take_user_input, section, \
             section_element, section_element_type, fields, env, run",
        ]
    );
}

/// A value of the wrong type is a problem at its path, and the other problems are still found.
#[test]
fn manifest_wrong_types_collected() {
    let text = r#"
name = 1
take_user_input = "yes"
section = ["canvas"]
fields = [{ name = "a", optional = "no", regex = 5, value = 1979-05-27 }, "b"]
env = { TOKEN = 12345 }
run = { timeout_secs = 1.5, command = "x" }
"#;
    assert_eq!(
        problems(text),
        [
            "name: expected a string, found the number 1",
            "take_user_input: expected true or false, found the string \"yes\"",
            "section: expected a string, found a list",
            "fields[0].regex (field \"a\"): expected a string, found the number 5",
            "fields[0].value (field \"a\"): expected a string, found the TOML value 1979-05-27",
            "fields[0].optional (field \"a\"): expected true or false, found the string \"no\"",
            "fields[1]: expected a table, found the string \"b\"",
            "env.TOKEN: expected a string value, found a number",
            "run.timeout_secs: expected an integer number of seconds, found the number 1.5",
        ]
    );
}

#[test]
fn manifest_wrong_container_types() {
    assert_eq!(
        problems("name = \"x\"\nfields = 3\nenv = \"A=1\"\nrun = true\n"),
        [
            "fields: expected a list of tables ([[fields]] in TOML), found the number 3",
            "env: expected a table of variable names and string values, such as API_TOKEN = \"…\" under [env] in TOML or {\"API_TOKEN\": \"…\"} in JSON, found a string",
            "run: expected a table ([run]), found the boolean true",
        ]
    );
    let error = Manifest::from_json_slice(b"[1]").expect_err("not an object");
    assert_eq!(
        error.problems(),
        ["manifest: expected a table of keys such as name and fields, found a list"]
    );
}

/// JSON `null` counts as an omitted key, as it did when the keys were optional struct fields.
#[test]
fn manifest_json_null_is_absent() {
    let manifest = Manifest::from_json_slice(
        br#"{"name": "x", "section": null, "fields": [{"name": "a", "regex": null}], "run": null}"#,
    )
    .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(manifest.section, None);
    assert_eq!(manifest.fields[0].regex, None);
    assert_eq!(manifest.run, None);
}

#[test]
fn manifest_name_rules() {
    assert_eq!(
        problems("section = \"canvas\"\n"),
        ["name: missing; a manifest must name its integration, for example name = \"Slack\""]
    );
    assert_eq!(
        problems("name = \"   \"\n"),
        ["name: is empty; give the integration a name"]
    );
    assert_eq!(
        problems(&format!("name = \"{}\"\n", "n".repeat(101))),
        ["name: is 101 characters long; the maximum is 100"]
    );
    // 100 characters of non-ASCII text are allowed.
    assert_eq!(
        parse(&format!("name = \"{}\"\n", "é".repeat(100)))
            .name
            .chars()
            .count(),
        100
    );
}

#[test]
fn manifest_section_rules() {
    assert_eq!(
        problems("name = \"x\"\nsection = \"sidebar\"\n"),
        ["section: unknown value \"sidebar\"; expected one of canvas, collaborate"]
    );
    assert_eq!(
        problems("name = \"x\"\nsection = \"collaborate\"\nsection_element = \"nodes\"\n"),
        ["section_element: unknown value \"nodes\" for section \"collaborate\"; expected one of report"]
    );
    assert_eq!(
        problems("name = \"x\"\nsection = \"canvas\"\nsection_element = \"report\"\n"),
        ["section_element: unknown value \"report\" for section \"canvas\"; expected one of nodes, edges, canvas"]
    );
    assert_eq!(
        problems("name = \"x\"\nsection_element = \"nodes\"\n"),
        ["section_element: \"nodes\" is set without a section; also set section to one of canvas, collaborate"]
    );
    // An invalid section hides the element and type problems that follow from it.
    assert_eq!(
        problems(
            "name = \"x\"\nsection = \"Canvas\"\nsection_element = \"nodes\"\n\
             section_element_type = [\"ip\"]\n"
        ),
        ["section: unknown value \"Canvas\"; expected one of canvas, collaborate; did you mean \"canvas\"?"]
    );
    assert_eq!(
        problems("name = \"x\"\nsection = 3\nsection_element = \"bogus\"\n"),
        ["section: expected a string, found the number 3"]
    );
    // So does an invalid element, for the types.
    assert_eq!(
        problems(
            "name = \"x\"\nsection = \"canvas\"\nsection_element = \"node\"\n\
             section_element_type = [\"ip\"]\n"
        ),
        ["section_element: unknown value \"node\" for section \"canvas\"; expected one of nodes, edges, canvas; did you mean \"nodes\"?"]
    );
    assert_eq!(
        problems("name = \"x\"\nsection_element = \"nodes\"\nsection_element_type = [\"ip\"]\n"),
        ["section_element: \"nodes\" is set without a section; also set section to one of canvas, collaborate"]
    );
    let manifest = parse("name = \"x\"\nsection = \"collaborate\"\nsection_element = \"report\"\n");
    assert_eq!(manifest.section_element, Some(SectionElement::Report));
}

#[test]
fn manifest_element_type_rules() {
    let manifest =
        parse("name = \"x\"\nsection = \"canvas\"\nsection_element = \"edges\"\nsection_element_type = \"link\"\n");
    assert_eq!(manifest.section_element_type, ["link"]);

    assert_eq!(
        problems("name = \"x\"\nsection = \"collaborate\"\nsection_element_type = [\"ip\"]\n"),
        ["section_element_type: applies only to section \"canvas\" with section_element \"nodes\" or \"edges\", but the manifest has section \"collaborate\"; remove it or change the placement"]
    );
    assert_eq!(
        problems("name = \"x\"\nsection = \"canvas\"\nsection_element = \"canvas\"\nsection_element_type = [\"ip\"]\n"),
        ["section_element_type: applies only to section \"canvas\" with section_element \"nodes\" or \"edges\", but the manifest has section \"canvas\" with section_element \"canvas\"; remove it or change the placement"]
    );
    assert_eq!(
        problems("name = \"x\"\nsection = \"canvas\"\nsection_element_type = [\"ip\", \" \", 4]\n"),
        [
            "section_element_type[1]: is empty; give an element type such as \"ip\"",
            "section_element_type[2]: expected a string, found the number 4",
        ]
    );
    assert_eq!(
        problems("name = \"x\"\nsection = \"canvas\"\nsection_element_type = 4\n"),
        ["section_element_type: expected a string or a list of strings, found the number 4"]
    );
}

#[test]
fn manifest_field_rules() {
    let text = r#"
name = "x"

[[fields]]
label = "No name"

[[fields]]
name = "my field"

[[fields]]
name = "dup"

[[fields]]
name = "dup"
ui_element = "dropdown"

[[fields]]
name = "choice"
ui_element = "select"

[[fields]]
name = "free"
options = [{ value = "a" }]

[[fields]]
name = "pattern"
regex = "([a-z]"

[[fields]]
name = "opts"
ui_element = "select"
options = [{ value = "a" }, { label = "A again", value = "a" }, { label = "no value" }]
"#;
    assert_eq!(
        problems(text),
        [
            "fields[0].name: missing; every field needs a name",
            "fields[1].name: invalid name \"my field\"; use ASCII letters, digits, \"_\" and \"-\", starting with a letter or \"_\", at most 64 characters",
            "fields[3].name: duplicate name \"dup\"; fields[2] already uses it",
            "fields[3].ui_element (field \"dup\"): unknown value \"dropdown\"; expected one of text, textarea, select, date",
            "fields[4].options (field \"choice\"): missing; a select field needs at least one option, such as options = [{ label = \"High\", value = \"high\" }]",
            "fields[5].options (field \"free\"): only ui_element = \"select\" takes options, and this field is \"text\"; remove the options or make it a select",
            "fields[6].regex (field \"pattern\"): invalid regex \"([a-z]\": unclosed group; see the syntax of the Rust regex crate",
            "fields[7].options[1].value (field \"opts\"): duplicate value \"a\"; option values must be unique",
            "fields[7].options[2].value (field \"opts\"): missing; every option needs the value sent to the agent",
        ]
    );
}

#[test]
fn manifest_field_name_forms() {
    for name in ["a", "_private", "ip-address", "Field_2", &"n".repeat(64)] {
        let manifest = parse(&format!("name = \"x\"\n[[fields]]\nname = \"{name}\"\n"));
        assert_eq!(manifest.fields[0].name, name);
    }
    for name in ["2fast", "-dash", "", "a.b", "naïve", &"n".repeat(65)] {
        let found = problems(&format!("name = \"x\"\n[[fields]]\nname = \"{name}\"\n"));
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        assert!(
            found[0].starts_with("fields[0].name: invalid name"),
            "{found:?}"
        );
    }
}

#[test]
fn manifest_regex_matches_whole_value() {
    let regex = FieldRegex::new("[0-9]+|none").expect("valid regex");
    assert!(regex.matches_whole("123"));
    assert!(regex.matches_whole("none"));
    assert!(!regex.matches_whole("123abc"));
    assert!(!regex.matches_whole("x none"));
}

/// A regex that compiles past the size limit is rejected with a problem naming the field, and
/// a syntax error still points into the pattern as written.
#[test]
fn manifest_regex_size_limit() {
    let found = problems(
        "name = \"x\"\n[[fields]]\nname = \"ok\"\nregex = '\\w{20}'\n\
         [[fields]]\nname = \"big\"\nregex = '\\w{200}'\n",
    );
    assert_eq!(
        found,
        [format!(
            "fields[1].regex (field \"big\"): regex \"\\\\w{{200}}\" compiles to more than \
             {MAX_REGEX_BYTES} bytes, the maximum for a field; use fewer repetitions, or ASCII \
             classes such as [0-9A-Za-z_] in place of \\w"
        )]
    );

    let error = FieldRegex::new("a(b").expect_err("unclosed group");
    assert!(error.to_string().contains("a(b"), "{error}");
    assert!(!error.to_string().contains("^(?:"), "{error}");
}

/// After three regexes that compile past the limit, the regexes of later fields are not
/// compiled, and one problem counts them. A valid regex before them is still compiled.
#[test]
fn manifest_oversized_regexes_stop_compiling() {
    let mut toml_text = "name = \"x\"\n[[fields]]\nname = \"ok\"\nregex = '\\w{20}'\n".to_owned();
    for index in 0..6 {
        toml_text.push_str(&format!(
            "[[fields]]\nname = \"big{index}\"\nregex = '\\w{{200}}'\n"
        ));
    }
    let found = problems(&toml_text);
    assert_eq!(found.len(), 4, "{found:#?}");
    for (index, problem) in found.iter().take(3).enumerate() {
        let field = index + 1;
        assert!(
            problem.starts_with(&format!(
                "fields[{field}].regex (field \"big{index}\"): regex"
            )),
            "{problem}"
        );
    }
    assert_eq!(
        found[3],
        format!(
            "fields: the regexes of 3 more fields were not compiled, because 3 regexes already \
             compile to more than {MAX_REGEX_BYTES} bytes: fix those and check again"
        )
    );
}

/// A manifest with more fields than the maximum gets one problem with the count.
#[test]
fn manifest_field_count_limit() {
    let mut toml_text = "name = \"x\"\n".to_owned();
    for index in 0..=MAX_FIELDS {
        toml_text.push_str(&format!("[[fields]]\nname = \"f{index}\"\n"));
    }
    assert_eq!(
        problems(&toml_text),
        [format!(
            "fields: the manifest has {} fields; the maximum is {MAX_FIELDS}, so split the \
             integration or drop fields it does not need",
            MAX_FIELDS + 1
        )]
    );

    let allowed: String = (0..MAX_FIELDS)
        .map(|index| format!("[[fields]]\nname = \"f{index}\"\n"))
        .collect();
    assert_eq!(
        parse(&format!("name = \"x\"\n{allowed}")).fields.len(),
        MAX_FIELDS
    );
}

#[test]
fn manifest_env_rules() {
    let found =
        problems("name = \"x\"\n[env]\n\"MY-VAR\" = \"1\"\n\"2X\" = \"2\"\nOK = \"a\\u0000b\"\n");
    assert_eq!(
        found,
        [
            "env.2X: invalid variable name \"2X\"; use ASCII letters, digits and \"_\", not starting with a digit",
            "env.MY-VAR: invalid variable name \"MY-VAR\"; use ASCII letters, digits and \"_\", not starting with a digit",
            "env.OK: value contains a NUL byte, which no process environment can carry",
        ]
    );
}

#[test]
fn manifest_env_value_not_in_message() {
    let found = problems("name = \"x\"\n[env]\nTOKEN = \"hunter2\\u0000\"\n");
    assert!(!found[0].contains("hunter2"), "{found:?}");
}

/// An `env` that is not a table may be a secret in the wrong shape: no message quotes it.
#[test]
fn manifest_env_of_wrong_type_not_in_message() {
    for json in [
        r#"{"name": "x", "env": "HIDDEN-2"}"#,
        r#"{"name": "x", "env": ["HIDDEN-2"]}"#,
        r#"{"name": "x", "env": {"A": ["HIDDEN-2"]}}"#,
    ] {
        let error = Manifest::from_json_slice(json.as_bytes()).expect_err("invalid env");
        let text = format!("{error} {:?}", error.problems());
        assert!(!text.contains("HIDDEN-2"), "{json}: {text}");
        assert!(text.contains("env"), "{json}: {text}");
    }
}

#[test]
fn manifest_run_rules() {
    assert_eq!(
        problems("name = \"x\"\n[run]\ncommand = []\n"),
        ["run.command: is empty; give the program and its arguments"]
    );
    assert_eq!(
        problems("name = \"x\"\n[run]\ncommand = \"  \"\n"),
        ["run.command: is empty; give the program and its arguments"]
    );
    assert_eq!(
        problems("name = \"x\"\n[run]\ncommand = \"python3 'agent.py\"\n"),
        ["run.command: cannot split \"python3 'agent.py\" into words (missing closing quote); check its quotes"]
    );
    assert_eq!(
        problems("name = \"x\"\n[run]\ncommand = [\"python3\", 3]\n"),
        ["run.command[1]: expected a string, found the number 3"]
    );
    assert_eq!(
        problems("name = \"x\"\n[run]\ncommand = 3\n"),
        ["run.command: expected a list of strings or a command line, found the number 3"]
    );
    assert_eq!(
        problems("name = \"x\"\n[run]\ncommand = [\"\", \"a\"]\n"),
        ["run.command[0]: the program is empty; give its path or name"]
    );
    for secs in [0, -5, 86_401] {
        assert_eq!(
            problems(&format!("name = \"x\"\n[run]\ntimeout_secs = {secs}\n")),
            [format!(
                "run.timeout_secs: {secs} is out of range; expected an integer from 1 to 86400"
            )]
        );
    }
    for secs in [1, 3600, 86_400] {
        let manifest = parse(&format!("name = \"x\"\n[run]\ntimeout_secs = {secs}\n"));
        assert_eq!(
            manifest.timeout(),
            Some(std::time::Duration::from_secs(secs))
        );
    }
    let manifest = parse("name = \"x\"\n[run]\ncommand = [\"./agent\", \"a b\"]\n");
    assert_eq!(
        manifest.command(),
        Some(&["./agent".to_owned(), "a b".to_owned()][..])
    );
}

#[test]
fn manifest_lists_every_problem() {
    let text = "colour = 1\nsection = \"x\"\n[[fields]]\nname = \"a\"\nui_element = \"dropdown\"\n\
                [run]\ntimeout_secs = 0\n";
    let found = problems(text);
    assert_eq!(found.len(), 5, "{found:#?}");
    assert!(found[0].starts_with("colour: unknown key"), "{found:#?}");
    assert!(found[1].starts_with("name: missing"), "{found:#?}");
    assert!(
        found[2].starts_with("section: unknown value \"x\""),
        "{found:#?}"
    );
    assert!(
        found[3].starts_with("fields[0].ui_element (field \"a\"): unknown value \"dropdown\""),
        "{found:#?}"
    );
    assert!(
        found[4].starts_with("run.timeout_secs: 0 is out of range"),
        "{found:#?}"
    );
}

#[test]
fn manifest_json_same_rules() {
    let json = br#"{"name": "x", "fields": [{"name": "a", "ui_element": "dropdown"}]}"#;
    let error = Manifest::from_json_slice(json).expect_err("invalid");
    assert_eq!(
        error.problems(),
        ["fields[0].ui_element (field \"a\"): unknown value \"dropdown\"; expected one of text, textarea, select, date"]
    );

    let json = br#"{"name": "x", "run": {"command": ["python3", "agent.py"], "timeout_secs": 5},
        "section_element_type": "ip", "section": "canvas"}"#;
    let manifest = Manifest::from_json_slice(json).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(manifest.section_element_type, ["ip"]);
    assert_eq!(manifest.timeout(), Some(std::time::Duration::from_secs(5)));
}

/// A prefill without keywords is checked against its own field's rules, since every form
/// submitted unchanged would carry it.
#[test]
fn manifest_literal_prefill_rules() {
    let text = r#"
name = "x"

[[fields]]
name = "ticket"
value = "T-1"
regex = "TCK-[0-9]{4}"

[[fields]]
name = "urgency"
ui_element = "select"
options = [{ label = "High", value = "high" }, { value = "low" }]
value = "urgent"

[[fields]]
name = "due"
ui_element = "date"
value = "tomorrow"

[[fields]]
name = "level"
ui_element = "select"
options = [{ label = "High", value = "high" }]
value = "High"

[[fields]]
name = "when"
ui_element = "date"
value = "2026-02-30"
"#;
    assert_eq!(
        problems(text),
        [
            "fields[0].value (field \"ticket\"): prefill \"T-1\" does not match the regex \
             TCK-[0-9]{4} as a whole; change the prefill or the field's rules",
            "fields[1].value (field \"urgency\"): prefill \"urgent\" is not one of the option \
             values: high, low; change the prefill or the field's rules",
            "fields[2].value (field \"due\"): prefill \"tomorrow\" is not a date in the form \
             YYYY-MM-DD, such as 2024-02-29; change the prefill or the field's rules",
            "fields[3].value (field \"level\"): prefill \"High\" is not one of the option values: \
             high; \"High\" is the label of option \"high\"; change the prefill or the field's rules",
            "fields[4].value (field \"when\"): prefill \"2026-02-30\" is not a real date: \
             February 2026 has 28 days; change the prefill or the field's rules",
        ]
    );
}

/// Prefills that obey their rules, contain a keyword or are empty are accepted, and so is a
/// field whose definition is already wrong (its prefill is not judged against broken rules).
#[test]
fn manifest_prefills_accepted() {
    let manifest = parse(
        r#"
name = "x"

[[fields]]
name = "ticket"
value = "TCK-0001"
regex = "TCK-[0-9]{4}"

[[fields]]
name = "start"
ui_element = "date"
value = "SIFT-TIMELINE-SELECTION-START"

[[fields]]
name = "due"
ui_element = "date"
value = ""

[[fields]]
name = "level"
ui_element = "select"
options = [{ value = "high" }]
value = "high"
"#,
    );
    assert_eq!(manifest.fields.len(), 4);

    assert_eq!(
        problems("name = \"x\"\n[[fields]]\nname = \"a\"\nregex = \"(\"\nvalue = \"zzz\"\n"),
        ["fields[0].regex (field \"a\"): invalid regex \"(\": unclosed group; see the syntax of the Rust regex crate"]
    );
}

/// `optional` parses, defaults to false and survives the round trips; an empty prefill of an
/// optional date field is valid.
#[test]
fn manifest_optional_field() {
    let manifest = parse(
        "name = \"x\"\n[[fields]]\nname = \"due\"\nui_element = \"date\"\noptional = true\n\
         [[fields]]\nname = \"note\"\n",
    );
    assert!(manifest.fields[0].optional);
    assert!(!manifest.fields[1].optional);

    let toml_text = toml::to_string(&manifest).expect("manifest serialises to TOML");
    assert_eq!(parse(&toml_text), manifest, "TOML:\n{toml_text}");
    let json = serde_json::to_value(&manifest).expect("manifest serialises to JSON");
    assert_eq!(json["fields"][0]["optional"], true);
    assert_eq!(json["fields"][1].get("optional"), None);
}

/// Problems inside a field name it, so `fields[2]` (counted from 0) needs no counting.
#[test]
fn manifest_problem_names_field() {
    let error = Manifest::from_toml_str(
        "name = \"x\"\n[[fields]]\nname = \"a\"\n[[fields]]\nname = \"b\"\n\
         [[fields]]\nname = \"due\"\nregex = \"(\"\n",
    )
    .expect_err("invalid regex");
    let ManifestError::Invalid { problems, .. } = &error else {
        panic!("expected validation problems, got {error}");
    };
    assert_eq!(problems[0].path, "fields[2].regex");
    assert_eq!(problems[0].field.as_deref(), Some("due"));
    assert!(
        problems[0]
            .to_string()
            .starts_with("fields[2].regex (field \"due\"): invalid regex"),
        "{error}"
    );
}

/// A stored manifest whose literal prefill predates the prefill check still loads, while the
/// same JSON from a user is rejected.
#[test]
fn manifest_stored_json_skips_prefill_check() {
    let json = br#"{"name": "x", "fields": [{"name": "level", "ui_element": "select",
        "options": [{"value": "high"}], "value": "urgent"}]}"#;
    let error = Manifest::from_json_slice(json).expect_err("literal prefill breaks its rule");
    assert_eq!(
        error.problems(),
        ["fields[0].value (field \"level\"): prefill \"urgent\" is not one of the option values: \
          high; change the prefill or the field's rules"]
    );

    let stored = Manifest::from_stored_json(json).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(stored.fields[0].value.as_deref(), Some("urgent"));

    // Every other rule still applies.
    let error = Manifest::from_stored_json(br#"{"name": "x", "colour": 1}"#).expect_err("unknown");
    assert_eq!(error.problems().len(), 1);
}
