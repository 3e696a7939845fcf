//! Warnings about a job that do not stop it: one shape for form warnings and job results.
//!
//! `agentrun run` prints each warning's message on stderr, and `--json`, the form and job
//! routes of the HTTP API serialise the same objects:
//!
//! ```json
//! {"kind": "missing_keyword", "field": "message", "keyword": "SIFT-USER-NAME", "variable": null,
//!  "message": "field \"message\": SIFT-USER-NAME has no value in the context and was replaced by an empty string"}
//! ```

use std::fmt;

use serde::Serialize;

/// The subject of a [`Warning`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WarningKind {
    /// A prefill keyword had no value in the context and became an empty string.
    MissingKeyword,
    /// An env variable given for the job is not declared in the manifest's `[env]`.
    UndeclaredEnv,
    /// The agent wrote more than one reply; one of them was used.
    RepeatedReply,
    /// The agent exited with a failure after a valid reply, which was used.
    ExitAfterReply,
}

/// One warning. Every key is serialised, `null` where it does not apply to the kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Warning {
    /// The warning's subject.
    pub kind: WarningKind,
    /// The form field whose prefill contains the keyword ([`WarningKind::MissingKeyword`]).
    pub field: Option<String>,
    /// The keyword, such as `SIFT-USER-NAME` ([`WarningKind::MissingKeyword`]).
    pub keyword: Option<&'static str>,
    /// The env variable's name ([`WarningKind::UndeclaredEnv`]); never its value.
    pub variable: Option<String>,
    /// The warning as one sentence, naming the field, keyword or variable.
    pub message: String,
}

impl Warning {
    /// Builds the warning for `keyword` in the prefill of `field`, which had no value.
    pub fn missing_keyword(field: &str, keyword: &'static str) -> Self {
        Self {
            kind: WarningKind::MissingKeyword,
            field: Some(field.to_owned()),
            keyword: Some(keyword),
            variable: None,
            message: format!(
                "field {field:?}: {keyword} has no value in the context and was replaced by an \
                 empty string"
            ),
        }
    }

    /// Builds the warning for env variable `variable`, which is not among the manifest's
    /// `declared` names (listed in the message, with the closest one as a suggestion).
    pub fn undeclared_env<'a>(variable: &str, declared: impl IntoIterator<Item = &'a str>) -> Self {
        let declared: Vec<&str> = declared.into_iter().collect();
        let hint = match crate::suggest::closest(variable, declared.iter().copied()) {
            Some(suggestion) => format!("did you mean {suggestion}?"),
            None => format!("the manifest declares {}", declared.join(", ")),
        };
        Self {
            kind: WarningKind::UndeclaredEnv,
            field: None,
            keyword: None,
            variable: Some(variable.to_owned()),
            message: format!(
                "env variable {variable} is not declared in the manifest's [env], so the agent \
                 may ignore it; {hint}"
            ),
        }
    }

    /// Builds a warning about the agent's behaviour around the reply that was used
    /// ([`WarningKind::RepeatedReply`] or [`WarningKind::ExitAfterReply`]).
    pub fn agent(kind: WarningKind, message: String) -> Self {
        Self {
            kind,
            field: None,
            keyword: None,
            variable: None,
            message,
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn missing_keyword_serialises_every_key() {
        let warning = Warning::missing_keyword("message", "SIFT-USER-NAME");
        assert_eq!(
            serde_json::to_value(&warning).expect("a warning serialises"),
            json!({
                "kind": "missing_keyword",
                "field": "message",
                "keyword": "SIFT-USER-NAME",
                "variable": null,
                "message": "field \"message\": SIFT-USER-NAME has no value in the context and \
                            was replaced by an empty string",
            })
        );
    }

    #[test]
    fn undeclared_env_suggests_declared_name() {
        let warning = Warning::undeclared_env("TICKET_TOKN", ["TICKET_TOKEN", "URL"]);
        assert_eq!(
            serde_json::to_value(&warning).expect("a warning serialises"),
            json!({
                "kind": "undeclared_env",
                "field": null,
                "keyword": null,
                "variable": "TICKET_TOKN",
                "message": "env variable TICKET_TOKN is not declared in the manifest's [env], \
                            so the agent may ignore it; did you mean TICKET_TOKEN?",
            })
        );
    }

    #[test]
    fn undeclared_env_lists_declared_names() {
        let warning = Warning::undeclared_env("DEBUG", ["TICKET_TOKEN", "URL"]);
        assert_eq!(
            warning.to_string(),
            "env variable DEBUG is not declared in the manifest's [env], so the agent may ignore \
             it; the manifest declares TICKET_TOKEN, URL"
        );
    }
}
