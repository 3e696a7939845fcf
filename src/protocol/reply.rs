//! Reading an agent's reply from its stdout: choosing the reply, normalising it and checking it.

use serde::Serialize;
use serde_json::{Map, Value};

use super::scan::{scan, Scan};

/// The action used when a reply has no `action`.
pub const DEFAULT_ACTION: &str = "popup-message";

/// Every action an `info` reply may name.
pub const KNOWN_ACTIONS: &[&str] = &[DEFAULT_ACTION];

/// Maximum length, in characters, of an agent's value quoted in an error message.
const MAX_QUOTED_CHARS: usize = 80;

/// An agent's reply to `work`, normalised. See the [module documentation](super) for the format.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InfoReply {
    /// The job id the reply names, or `None` when it has none.
    pub job_id: Option<u64>,
    /// The agent's own name, when it gives one.
    pub agent: Option<String>,
    /// The UI action for the reply, always one of [`KNOWN_ACTIONS`].
    pub action: String,
    /// The text for the user (`payload.message`).
    pub message: String,
    /// A link to show with the message (`payload.url`).
    pub url: Option<String>,
    /// The link's text (`payload.url_label`).
    pub url_label: Option<String>,
    /// When the agent replied, in epoch milliseconds, as the agent reports it.
    pub timestamp: Option<i64>,
    /// 0 for success; any other value means the agent failed.
    pub return_code: i64,
    /// Number of other `info` objects on stdout, which were not used: more than 0 means that the
    /// agent replied more than once.
    pub ignored_replies: usize,
    /// The whole reply after normalisation: `return_code` (default 0) and `action` (default
    /// `popup-message`) are always present, the payload is an object, and numeric strings in
    /// `job_id`, `return_code` and `timestamp` are integers.
    pub raw: Value,
}

/// An agent's reply to `describe`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Heartbeat {
    /// The job id the reply names, or `None` when it has none.
    pub job_id: Option<u64>,
    /// The whole reply, with a numeric-string `job_id` turned into an integer. Fields other than
    /// `type` and `job_id` are kept as the agent wrote them.
    pub raw: Value,
}

/// Why an agent's stdout contains no usable reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// No JSON object of the expected type starts at a line start.
    #[error(
        "expected one JSON object with \"type\":\"{expected_type}\" on stdout, {}",
        describe_seen(*objects_seen, other_types)
    )]
    NoReply {
        /// The `type` that was looked for: `heartbeat` or `info`.
        expected_type: &'static str,
        /// How many JSON objects were found at line starts.
        objects_seen: usize,
        /// The distinct `type` values of the objects found, in order of appearance.
        other_types: Vec<String>,
    },

    /// No JSON object of the expected type starts at a line start, and stdout ends inside a JSON
    /// value: the agent exited, or was cut off, before it finished writing.
    #[error(
        "expected one JSON object with \"type\":\"{expected_type}\" on stdout, but stdout ends \
         inside the JSON value that starts on line {line}: `{excerpt}`"
    )]
    Truncated {
        /// The `type` that was looked for: `heartbeat` or `info`.
        expected_type: &'static str,
        /// Line of stdout (1-based) where the unfinished value starts.
        line: usize,
        /// The first characters of the unfinished value, with control characters escaped.
        excerpt: String,
    },

    /// The reply names another job.
    #[error("reply has job_id {found}, expected {expected}")]
    JobIdMismatch {
        /// The id of the job that was sent.
        expected: u64,
        /// The id in the reply.
        found: u64,
    },

    /// The reply's `action` is not one the engine can carry out.
    #[error("reply has unknown action \"{action}\"; expected one of: {}", KNOWN_ACTIONS.join(", "))]
    UnknownAction {
        /// The action the agent named.
        action: String,
    },

    /// The reply's payload has no string `message`.
    #[error("reply payload has no string \"message\" (found {found}); an info reply must carry the text for the user in payload.message")]
    MissingMessage {
        /// The value found instead, such as `no payload` or `the number 3`.
        found: String,
    },

    /// A reply field has the wrong type or form.
    #[error("reply field {field} is {found}; expected {expected}")]
    Malformed {
        /// Path of the field, such as `return_code` or `payload[1]`.
        field: String,
        /// The type or form the field must have.
        expected: &'static str,
        /// The value found, described and quoted.
        found: String,
    },
}

/// Reads the reply to a `work` message from an agent's stdout.
///
/// Every JSON object that starts a line (after optional whitespace) is a candidate; one that
/// starts mid-line, after other text, is ignored. Among the candidates whose `type` is `info`, the
/// last one whose `job_id` equals `expected_job_id` is the reply, or else the last one. The reply
/// is then normalised (see [`InfoReply::raw`]) and checked.
///
/// # Errors
///
/// [`ReplyError::NoReply`] when no candidate has type `info`, [`ReplyError::Truncated`] when
/// stdout also ends inside a JSON value, [`ReplyError::JobIdMismatch`] when
/// the reply names another job, [`ReplyError::UnknownAction`], [`ReplyError::MissingMessage`], and
/// [`ReplyError::Malformed`] for a field of the wrong type.
pub fn parse_info_reply(stdout: &[u8], expected_job_id: u64) -> Result<InfoReply, ReplyError> {
    let Selected {
        mut object,
        job_id,
        ignored: ignored_replies,
    } = select_reply(stdout, "info", expected_job_id)?;

    let action = normalise_action(&mut object)?;
    let (message, url, url_label) = normalise_payload(&mut object)?;

    // `return_code` wins when an agent writes both spellings.
    if let Some(returned_code) = object.remove("returned_code") {
        object.entry("return_code").or_insert(returned_code);
    }
    let return_code = match object.get("return_code") {
        None => 0,
        Some(value) => integer_field("return_code", value)?,
    };
    object.insert("return_code".to_owned(), Value::from(return_code));

    let timestamp = match object.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(value) => Some(integer_field("timestamp", value)?),
    };
    if let Some(timestamp) = timestamp {
        object.insert("timestamp".to_owned(), Value::from(timestamp));
    }

    let agent = optional_string(&object, "agent", "agent")?;

    Ok(InfoReply {
        job_id,
        agent,
        action,
        message,
        url,
        url_label,
        timestamp,
        return_code,
        ignored_replies,
        raw: Value::Object(object),
    })
}

/// Reads the reply to a `describe` message from an agent's stdout.
///
/// Candidates are found as for [`parse_info_reply`], with type `heartbeat`.
///
/// # Errors
///
/// [`ReplyError::NoReply`] when no candidate has type `heartbeat`, [`ReplyError::Truncated`] when
/// stdout also ends inside a JSON value, and
/// [`ReplyError::JobIdMismatch`] or [`ReplyError::Malformed`] for a bad `job_id`.
pub fn parse_heartbeat(stdout: &[u8], expected_job_id: u64) -> Result<Heartbeat, ReplyError> {
    let Selected { object, job_id, .. } = select_reply(stdout, "heartbeat", expected_job_id)?;
    Ok(Heartbeat {
        job_id,
        raw: Value::Object(object),
    })
}

/// The reply that [`select_reply`] chose.
struct Selected {
    /// The reply, with an integer `job_id`.
    object: Map<String, Value>,
    /// The job id the reply names.
    job_id: Option<u64>,
    /// Number of other objects of the same type, which were not chosen.
    ignored: usize,
}

/// Chooses the reply of `expected_type` and checks its job id, which it turns into an integer.
fn select_reply(
    stdout: &[u8],
    expected_type: &'static str,
    expected_job_id: u64,
) -> Result<Selected, ReplyError> {
    let Scan {
        objects,
        unterminated,
    } = scan(stdout);
    let objects_seen = objects.len();

    let mut other_types: Vec<String> = Vec::new();
    let mut typed = Vec::new();
    for object in objects {
        match object.get("type") {
            Some(Value::String(kind)) if kind == expected_type => typed.push(object),
            Some(kind) => {
                let kind = match kind {
                    Value::String(kind) => quote(kind),
                    other => describe_value(other),
                };
                if !other_types.contains(&kind) {
                    other_types.push(kind);
                }
            }
            None => {}
        }
    }

    let matching = typed.iter().rposition(|object| {
        object
            .get("job_id")
            .and_then(|value| job_id_field(value).ok())
            == Some(expected_job_id)
    });
    let index = match matching {
        Some(index) => index,
        None if !typed.is_empty() => typed.len() - 1,
        None => {
            if let Some(start) = unterminated {
                return Err(ReplyError::Truncated {
                    expected_type,
                    line: 1 + stdout[..start]
                        .iter()
                        .filter(|&&byte| byte == b'\n')
                        .count(),
                    excerpt: excerpt(&stdout[start..]),
                });
            }
            return Err(ReplyError::NoReply {
                expected_type,
                objects_seen,
                other_types,
            });
        }
    };
    let ignored = typed.len() - 1;
    let mut object = typed.swap_remove(index);

    let job_id = match object.get("job_id") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let id = job_id_field(value)?;
            if id != expected_job_id {
                return Err(ReplyError::JobIdMismatch {
                    expected: expected_job_id,
                    found: id,
                });
            }
            Some(id)
        }
    };
    if let Some(id) = job_id {
        object.insert("job_id".to_owned(), Value::from(id));
    }
    Ok(Selected {
        object,
        job_id,
        ignored,
    })
}

/// Fills in the default action and checks that the action is known.
fn normalise_action(object: &mut Map<String, Value>) -> Result<String, ReplyError> {
    let action = match object.get("action") {
        None | Some(Value::Null) => DEFAULT_ACTION.to_owned(),
        Some(Value::String(action)) if KNOWN_ACTIONS.contains(&action.as_str()) => action.clone(),
        Some(Value::String(action)) => {
            return Err(ReplyError::UnknownAction {
                action: truncate(action),
            })
        }
        Some(other) => {
            return Err(ReplyError::Malformed {
                field: "action".to_owned(),
                expected: "a string",
                found: describe_value(other),
            })
        }
    };
    object.insert("action".to_owned(), Value::String(action.clone()));
    Ok(action)
}

/// Turns a list payload into an object and reads `message`, `url` and `url_label` from it.
fn normalise_payload(
    object: &mut Map<String, Value>,
) -> Result<(String, Option<String>, Option<String>), ReplyError> {
    let payload = match object.remove("payload") {
        None | Some(Value::Null) => {
            return Err(ReplyError::MissingMessage {
                found: "no payload".to_owned(),
            })
        }
        Some(Value::Object(payload)) => payload,
        Some(Value::Array(entries)) => payload_from_list(entries)?,
        Some(other) => {
            return Err(ReplyError::Malformed {
                field: "payload".to_owned(),
                expected: "an object, or a list of {\"name\",\"value\"} objects",
                found: describe_value(&other),
            })
        }
    };

    let message = match payload.get("message") {
        Some(Value::String(message)) => message.clone(),
        Some(other) => {
            return Err(ReplyError::MissingMessage {
                found: describe_value(other),
            })
        }
        None => {
            return Err(ReplyError::MissingMessage {
                found: "a payload without message".to_owned(),
            })
        }
    };
    let url = optional_string(&payload, "url", "payload.url")?;
    let url_label = optional_string(&payload, "url_label", "payload.url_label")?;

    object.insert("payload".to_owned(), Value::Object(payload));
    Ok((message, url, url_label))
}

/// Turns `[{"name": "message", "value": "hi"}, …]` into `{"message": "hi", …}`. A later entry
/// with the same name replaces an earlier one.
fn payload_from_list(entries: Vec<Value>) -> Result<Map<String, Value>, ReplyError> {
    let mut payload = Map::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let malformed = |found: String| ReplyError::Malformed {
            field: format!("payload[{index}]"),
            expected: "an object with a string \"name\" and a \"value\"",
            found,
        };
        let Value::Object(mut entry) = entry else {
            return Err(malformed(describe_value(&entry)));
        };
        let name = match entry.remove("name") {
            Some(Value::String(name)) => name,
            Some(other) => return Err(malformed(format!("name {}", describe_value(&other)))),
            None => return Err(malformed("an object without name".to_owned())),
        };
        let Some(value) = entry.remove("value") else {
            return Err(malformed(format!("{} without value", quote(&name))));
        };
        payload.insert(name, value);
    }
    Ok(payload)
}

/// Reads an optional string field; `null` counts as missing.
fn optional_string(
    object: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<String>, ReplyError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(ReplyError::Malformed {
            field: field.to_owned(),
            expected: "a string",
            found: describe_value(other),
        }),
    }
}

/// Reads an integer written as a JSON integer or as a string of decimal digits.
fn integer_field(field: &str, value: &Value) -> Result<i64, ReplyError> {
    let parsed = match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| ReplyError::Malformed {
        field: field.to_owned(),
        expected: "an integer, or a string of digits",
        found: describe_value(value),
    })
}

/// Reads a job id written as a JSON integer or as a string of decimal digits. Job ids are
/// `u64`, so ids above `i64::MAX` are valid too.
fn job_id_field(value: &Value) -> Result<u64, ReplyError> {
    let parsed = match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse::<u64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| ReplyError::Malformed {
        field: "job_id".to_owned(),
        expected: "a non-negative integer, or a string of digits",
        found: describe_value(value),
    })
}

/// Describes a JSON value for an error message, quoting at most [`MAX_QUOTED_CHARS`] of it.
fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => format!("the boolean {flag}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the string {}", quote(text)),
        Value::Array(items) => format!("an array of {} items", items.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// Returns the first [`MAX_QUOTED_CHARS`] characters of `bytes` as text, with control characters
/// escaped so that the excerpt stays on one line.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = truncate(text.trim_end());
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn quote(text: &str) -> String {
    format!("{:?}", truncate(text))
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn describe_seen(objects_seen: usize, other_types: &[String]) -> String {
    match (objects_seen, other_types.is_empty()) {
        (0, _) => "found no JSON object at the start of a line".to_owned(),
        (count, true) => format!("found {count} JSON object(s), none with a \"type\""),
        (count, false) => format!(
            "found {count} JSON object(s), with \"type\" values {}",
            other_types.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const JOB: u64 = 1_507_824_886_086;

    fn info(stdout: &str) -> Result<InfoReply, ReplyError> {
        parse_info_reply(stdout.as_bytes(), JOB)
    }

    fn reply_line(message: &str) -> String {
        json!({"type": "info", "job_id": JOB, "payload": {"message": message}}).to_string()
    }

    #[test]
    fn reply_empty_output_is_no_reply() {
        let error = info("").expect_err("no reply in empty output");
        assert_eq!(
            error,
            ReplyError::NoReply {
                expected_type: "info",
                objects_seen: 0,
                other_types: vec![],
            }
        );
        assert_eq!(
            error.to_string(),
            "expected one JSON object with \"type\":\"info\" on stdout, found no JSON object at the start of a line"
        );
    }

    #[test]
    fn reply_only_logs_is_no_reply() {
        let error = info("starting\nworking {not json}\ndone\n").expect_err("only logs");
        assert!(matches!(
            error,
            ReplyError::NoReply {
                objects_seen: 0,
                ..
            }
        ));
    }

    #[test]
    fn reply_between_log_lines() {
        let stdout = format!("starting\n{}\nfinished in 3 ms\n", reply_line("done"));
        let reply = info(&stdout).expect("reply between logs");
        assert_eq!(reply.message, "done");
        assert_eq!(reply.job_id, Some(JOB));
        assert_eq!(reply.return_code, 0);
    }

    #[test]
    fn reply_pretty_printed_and_indented() {
        let pretty = serde_json::to_string_pretty(&json!({
            "type": "info",
            "job_id": JOB,
            "payload": {"message": "pretty", "url": "https://example.com/x", "url_label": "Open"},
        }))
        .expect("serialise");
        let indented: String = pretty.lines().map(|line| format!("    {line}\n")).collect();
        let reply = info(&format!("log line\n{indented}trailing log\n")).expect("pretty reply");
        assert_eq!(reply.message, "pretty");
        assert_eq!(reply.url.as_deref(), Some("https://example.com/x"));
        assert_eq!(reply.url_label.as_deref(), Some("Open"));
    }

    #[test]
    fn reply_with_crlf_line_endings() {
        let stdout = format!(
            "log\r\n{{\r\n  \"type\": \"info\",\r\n  \"job_id\": {JOB},\r\n  \"payload\": {{\"message\": \"crlf\"}}\r\n}}\r\nbye\r\n"
        );
        assert_eq!(info(&stdout).expect("CRLF reply").message, "crlf");
    }

    #[test]
    fn reply_matching_job_id_wins() {
        let other = json!({"type": "info", "job_id": JOB + 1, "payload": {"message": "other"}});
        let stdout = format!("{}\n{other}\n", reply_line("mine"));
        let reply = info(&stdout).expect("matching reply");
        assert_eq!(reply.message, "mine");
        assert_eq!(reply.ignored_replies, 1);
    }

    /// Objects of other types are not replies, so they are not counted as ignored ones.
    #[test]
    fn reply_single_among_other_objects() {
        let stdout = format!("{{\"type\":\"log\"}}\n{}\n{{\"x\":1}}\n", reply_line("one"));
        assert_eq!(info(&stdout).expect("reply").ignored_replies, 0);
    }

    #[test]
    fn reply_last_wins_without_match() {
        let first = json!({"type": "info", "payload": {"message": "first"}});
        let second = json!({"type": "info", "payload": {"message": "second"}});
        let reply = info(&format!("{first}\n{second}\n")).expect("last reply");
        assert_eq!(reply.message, "second");
        assert_eq!(reply.job_id, None);
        assert_eq!(reply.ignored_replies, 1);
    }

    #[test]
    fn reply_wrong_job_id_is_error() {
        let stdout = json!({"type": "info", "job_id": 42, "payload": {"message": "x"}});
        let error = info(&stdout.to_string()).expect_err("wrong job id");
        assert_eq!(
            error,
            ReplyError::JobIdMismatch {
                expected: JOB,
                found: 42
            }
        );
        assert_eq!(
            error.to_string(),
            format!("reply has job_id 42, expected {JOB}")
        );
    }

    #[test]
    fn reply_returned_code_is_renamed() {
        let stdout = json!({"type": "info", "returned_code": 3, "payload": {"message": "x"}});
        let reply = info(&stdout.to_string()).expect("reply");
        assert_eq!(reply.return_code, 3);
        assert_eq!(reply.raw["return_code"], 3);
        assert!(reply.raw.get("returned_code").is_none());
    }

    #[test]
    fn reply_return_code_beats_returned_code() {
        let stdout = json!({"type": "info", "return_code": 0, "returned_code": 5,
            "payload": {"message": "x"}});
        assert_eq!(info(&stdout.to_string()).expect("reply").return_code, 0);
    }

    #[test]
    fn reply_list_payload_becomes_object() {
        let stdout = json!({"type": "info", "job_id": JOB, "payload": [
            {"name": "message", "value": "from list"},
            {"name": "url", "value": "https://example.com"},
        ]});
        let reply = info(&stdout.to_string()).expect("list payload");
        assert_eq!(reply.message, "from list");
        assert_eq!(reply.url.as_deref(), Some("https://example.com"));
        assert_eq!(
            reply.raw["payload"],
            json!({"message": "from list", "url": "https://example.com"})
        );
    }

    #[test]
    fn reply_list_payload_bad_entry() {
        let stdout = json!({"type": "info", "payload": [{"name": "message", "value": "x"}, 5]});
        let error = info(&stdout.to_string()).expect_err("bad entry");
        assert_eq!(
            error,
            ReplyError::Malformed {
                field: "payload[1]".to_owned(),
                expected: "an object with a string \"name\" and a \"value\"",
                found: "the number 5".to_owned(),
            }
        );
    }

    #[test]
    fn reply_string_job_id_and_return_code() {
        let stdout = format!(
            r#"{{"type":"info","job_id":"{JOB}","return_code":"2","timestamp":"17","payload":{{"message":"x"}}}}"#
        );
        let reply = info(&stdout).expect("string numbers");
        assert_eq!(reply.job_id, Some(JOB));
        assert_eq!(reply.return_code, 2);
        assert_eq!(reply.timestamp, Some(17));
        assert_eq!(reply.raw["job_id"], json!(JOB));
        assert_eq!(reply.raw["return_code"], json!(2));
        assert_eq!(reply.raw["timestamp"], json!(17));
    }

    #[test]
    fn reply_non_numeric_return_code() {
        let stdout = json!({"type": "info", "return_code": "bad", "payload": {"message": "x"}});
        let error = info(&stdout.to_string()).expect_err("bad return code");
        assert_eq!(
            error.to_string(),
            "reply field return_code is the string \"bad\"; expected an integer, or a string of digits"
        );
    }

    #[test]
    fn reply_non_numeric_job_id() {
        let stdout = json!({"type": "info", "job_id": "abc", "payload": {"message": "x"}});
        let error = info(&stdout.to_string()).expect_err("bad job id");
        assert!(
            matches!(&error, ReplyError::Malformed { field, .. } if field == "job_id"),
            "{error:?}"
        );
    }

    /// Job ids are `u64`: an id above `i64::MAX`, as a number or as digits, is the job's own.
    #[test]
    fn reply_job_id_above_i64_max() {
        let job_id = u64::MAX;
        for written in [json!(job_id), json!(job_id.to_string())] {
            let stdout = json!({"type": "info", "job_id": written, "payload": {"message": "x"}});
            let reply = parse_info_reply(stdout.to_string().as_bytes(), job_id)
                .expect("a reply with the job's id");
            assert_eq!(reply.job_id, Some(job_id));
            assert_eq!(reply.raw["job_id"], json!(job_id));

            let stdout = json!({"type": "heartbeat", "job_id": written});
            let heartbeat = parse_heartbeat(stdout.to_string().as_bytes(), job_id)
                .expect("a heartbeat with the job's id");
            assert_eq!(heartbeat.job_id, Some(job_id));
        }
    }

    /// A job id past `u64::MAX` or with a fraction is no job's id. serde_json reads such
    /// numbers as floats, so the message quotes the float.
    #[test]
    fn reply_float_job_id_is_malformed() {
        let stdout = format!(
            "{{\"type\":\"info\",\"job_id\":1{},\"payload\":{{\"message\":\"x\"}}}}",
            u64::MAX
        );
        let error = info(&stdout).expect_err("job id past u64::MAX");
        assert!(
            matches!(&error, ReplyError::Malformed { field, expected, .. }
                if field == "job_id" && *expected == "a non-negative integer, or a string of digits"),
            "{error:?}"
        );

        let stdout = json!({"type": "info", "job_id": 1.5, "payload": {"message": "x"}});
        let error = info(&stdout.to_string()).expect_err("fractional job id");
        assert_eq!(
            error,
            ReplyError::Malformed {
                field: "job_id".to_owned(),
                expected: "a non-negative integer, or a string of digits",
                found: "the number 1.5".to_owned(),
            }
        );
    }

    #[test]
    fn reply_negative_job_id_is_malformed() {
        let stdout = json!({"type": "info", "job_id": -1, "payload": {"message": "x"}});
        let error = info(&stdout.to_string()).expect_err("negative job id");
        assert_eq!(
            error,
            ReplyError::Malformed {
                field: "job_id".to_owned(),
                expected: "a non-negative integer, or a string of digits",
                found: "the number -1".to_owned(),
            }
        );
    }

    #[test]
    fn reply_without_action_gets_default() {
        let reply = info(&reply_line("x")).expect("reply");
        assert_eq!(reply.action, "popup-message");
        assert_eq!(reply.raw["action"], "popup-message");
    }

    #[test]
    fn reply_unknown_action_is_error() {
        let stdout = json!({"type": "info", "action": "open-tab", "payload": {"message": "x"}});
        let error = info(&stdout.to_string()).expect_err("unknown action");
        assert_eq!(
            error,
            ReplyError::UnknownAction {
                action: "open-tab".to_owned()
            }
        );
        assert_eq!(
            error.to_string(),
            "reply has unknown action \"open-tab\"; expected one of: popup-message"
        );
    }

    #[test]
    fn reply_without_message_is_error() {
        let stdout = json!({"type": "info", "payload": {"url": "https://example.com"}});
        let error = info(&stdout.to_string()).expect_err("no message");
        assert_eq!(
            error,
            ReplyError::MissingMessage {
                found: "a payload without message".to_owned()
            }
        );

        let stdout = json!({"type": "info"});
        let error = info(&stdout.to_string()).expect_err("no payload");
        assert_eq!(
            error,
            ReplyError::MissingMessage {
                found: "no payload".to_owned()
            }
        );

        let stdout = json!({"type": "info", "payload": {"message": 12}});
        let error = info(&stdout.to_string()).expect_err("number message");
        assert_eq!(
            error,
            ReplyError::MissingMessage {
                found: "the number 12".to_owned()
            }
        );
    }

    #[test]
    fn reply_url_must_be_string() {
        let stdout = json!({"type": "info", "payload": {"message": "x", "url": ["a"]}});
        let error = info(&stdout.to_string()).expect_err("array url");
        assert_eq!(
            error.to_string(),
            "reply field payload.url is an array of 1 items; expected a string"
        );
    }

    #[test]
    fn reply_truncated_at_eof() {
        let stdout =
            format!("log\n{{\"type\":\"info\",\"job_id\":{JOB},\"payload\":{{\"message\":\"cut");
        let error = info(&stdout).expect_err("truncated");
        assert_eq!(
            error,
            ReplyError::Truncated {
                expected_type: "info",
                line: 2,
                excerpt: format!(
                    "{{\"type\":\"info\",\"job_id\":{JOB},\"payload\":{{\"message\":\"cut"
                ),
            }
        );
    }

    /// The message states that the output ended inside a value and quotes its start.
    #[test]
    fn reply_truncated_message_quotes_start() {
        let error = info("{\"type\": \"info\", \"job_id\": 17").expect_err("truncated");
        assert_eq!(
            error.to_string(),
            "expected one JSON object with \"type\":\"info\" on stdout, but stdout ends inside \
             the JSON value that starts on line 1: `{\"type\": \"info\", \"job_id\": 17`"
        );
    }

    /// A long value is quoted in part, on one line.
    #[test]
    fn reply_truncated_excerpt_is_short_and_one_line() {
        let stdout = format!(
            "{{\"type\": \"info\",\n\t\"payload\": \"{}",
            "x".repeat(500)
        );
        let ReplyError::Truncated { excerpt, .. } = info(&stdout).expect_err("truncated") else {
            panic!("expected a truncated reply");
        };
        assert!(
            excerpt.starts_with("{\"type\": \"info\",\\n\\t\"payload\""),
            "{excerpt}"
        );
        assert!(excerpt.ends_with("x…"), "{excerpt}");
        assert!(!excerpt.contains('\n'), "{excerpt}");
    }

    /// A complete reply wins over a value cut off after it.
    #[test]
    fn reply_before_truncated_value_is_used() {
        let stdout = format!(
            "{}\n{{\"type\": \"info\", \"payload\":",
            reply_line("first")
        );
        assert_eq!(info(&stdout).expect("valid reply").message, "first");
    }

    #[test]
    fn heartbeat_truncated_at_eof() {
        let error = parse_heartbeat(b"{\"type\": \"heart", JOB).expect_err("truncated");
        assert!(
            matches!(
                error,
                ReplyError::Truncated {
                    expected_type: "heartbeat",
                    line: 1,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn reply_after_malformed_json() {
        let stdout = format!(
            "{{\"type\":\"info\",\"payload\":{{\"message\":oops}}}}\n{}\n",
            reply_line("valid")
        );
        assert_eq!(info(&stdout).expect("valid reply").message, "valid");
    }

    #[test]
    fn reply_after_unterminated_json() {
        let stdout = format!("{{\"partial\": [\n{}\n", reply_line("valid"));
        assert_eq!(info(&stdout).expect("valid reply").message, "valid");
    }

    #[test]
    fn reply_non_ascii_text() {
        let stdout = format!(
            "журнал: старт ✓\n{}\n",
            reply_line("Grüße, 世界 — \"quoted\"\nnext line 🚀")
        );
        let reply = info(&stdout).expect("non-ASCII reply");
        assert_eq!(reply.message, "Grüße, 世界 — \"quoted\"\nnext line 🚀");
    }

    #[test]
    fn reply_invalid_utf8_in_logs() {
        let mut stdout = b"\xff\xfe log\n".to_vec();
        stdout.extend_from_slice(reply_line("ok").as_bytes());
        stdout.extend_from_slice(b"\n\xc3\x28\n");
        let reply = parse_info_reply(&stdout, JOB).expect("reply");
        assert_eq!(reply.message, "ok");
    }

    /// A reply after other text on its line is not a reply: agents print replies on a line of
    /// their own, and log lines that quote JSON must not be mistaken for one.
    #[test]
    fn reply_mid_line_is_ignored() {
        let stdout = format!("result: {}\n", reply_line("mid-line"));
        let error = info(&stdout).expect_err("mid-line reply");
        assert!(
            matches!(
                error,
                ReplyError::NoReply {
                    objects_seen: 0,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn reply_of_other_type_is_named() {
        let error =
            info("{\"type\":\"heartbeat\"}\n{\"level\":\"debug\"}\n").expect_err("no info reply");
        assert_eq!(
            error.to_string(),
            "expected one JSON object with \"type\":\"info\" on stdout, found 2 JSON object(s), with \"type\" values \"heartbeat\""
        );
    }

    #[test]
    fn reply_hostile_nesting_returns() {
        let line = "{\"a\":[\n";
        let stdout = line.repeat(1024 * 1024 / line.len());
        let error = info(&stdout).expect_err("no reply in hostile output");
        assert!(
            matches!(error, ReplyError::Truncated { line: 1, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn reply_hostile_nesting_then_reply() {
        let line = "{\"a\":[\n";
        let mut stdout = line.repeat(1024 * 1024 / line.len());
        stdout.push_str(&reply_line("survived"));
        assert_eq!(info(&stdout).expect("reply").message, "survived");
    }

    #[test]
    fn reply_hostile_balanced_chain_returns() {
        // Balanced objects that all fail at the same late byte.
        let block = format!("{}x{}", "{\n".repeat(90), "}\n".repeat(90));
        let stdout = block.repeat(1024 * 1024 / block.len());
        let error = info(&stdout).expect_err("no reply");
        assert!(matches!(error, ReplyError::NoReply { .. }), "{error:?}");
    }

    #[test]
    fn heartbeat_with_extra_fields() {
        let stdout = format!(
            "booting\n{{\"type\":\"heartbeat\",\"job_id\":\"{JOB}\",\"version\":\"1.2\"}}\n"
        );
        let heartbeat = parse_heartbeat(stdout.as_bytes(), JOB).expect("heartbeat");
        assert_eq!(heartbeat.job_id, Some(JOB));
        assert_eq!(heartbeat.raw["version"], "1.2");
        assert_eq!(heartbeat.raw["job_id"], json!(JOB));
    }

    #[test]
    fn heartbeat_missing_names_info_seen() {
        let error =
            parse_heartbeat(reply_line("x").as_bytes(), JOB).expect_err("info is no heartbeat");
        assert_eq!(
            error,
            ReplyError::NoReply {
                expected_type: "heartbeat",
                objects_seen: 1,
                other_types: vec!["\"info\"".to_owned()],
            }
        );
    }

    #[test]
    fn heartbeat_wrong_job_id() {
        let error =
            parse_heartbeat(b"{\"type\":\"heartbeat\",\"job_id\":1}", JOB).expect_err("mismatch");
        assert_eq!(
            error,
            ReplyError::JobIdMismatch {
                expected: JOB,
                found: 1
            }
        );
    }
}
