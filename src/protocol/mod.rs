//! The agent protocol: the messages agentrun writes to an agent's stdin and the replies it reads
//! back from stdout.
//!
//! An agent is started once per message. It reads exactly one JSON object from stdin (the engine
//! closes stdin after writing it), writes its reply as a JSON object on stdout and exits. Anything
//! else on stdout, such as log lines before or after the reply, is ignored; stderr is kept only for
//! error messages.
//!
//! # Messages
//!
//! Both messages are written as compact JSON, with the keys in the order shown.
//!
//! **`describe`**, the health check ([`Request::Describe`]):
//!
//! ```json
//! {"type":"describe","agentID":"0c6b0e25-4a43-5b73-9a38-04cb43b64a4e","job_id":1507824886086}
//! ```
//!
//! **`work`**, one run of the integration's action ([`Request::Work`]). `payload` lists the form's
//! fields in the manifest's order, each value a string:
//!
//! ```json
//! {"type":"work","agentID":"0c6b0e25-4a43-5b73-9a38-04cb43b64a4e","payload":[{"name":"message","value":"hello"}],"job_id":1507824886087}
//! ```
//!
//! - `type`: `describe` or `work`.
//! - `agentID`: the integration's UUID, the same for the same integration name across runs and
//!   processes ([`agent_id_for`]).
//! - `job_id`: a JSON integer, the job's id in epoch milliseconds, unique and increasing within
//!   one engine ([`JobIdGenerator`]).
//! - `payload` (`work` only): `{"name": …, "value": …}` pairs ([`PayloadEntry`]).
//!
//! # Replies
//!
//! **`heartbeat`** is the reply to `describe` and means the agent is healthy. Extra fields are allowed and
//! kept in [`Heartbeat::raw`]:
//!
//! ```json
//! {"type":"heartbeat"}
//! ```
//!
//! **`info`** is the reply to `work` ([`InfoReply`]):
//!
//! ```json
//! {"type":"info","job_id":1507824886087,"agent":"echo","action":"popup-message",
//!  "payload":{"message":"hello","url":"https://example.com/case/42","url_label":"Open case"},
//!  "timestamp":1507824886312,"return_code":0}
//! ```
//!
//! - `job_id`: the job id of the request. A different id is an error; a missing one is accepted.
//! - `agent`: the agent's own name, optional and informational.
//! - `action`: what the UI does with the reply. `popup-message` (the default when missing) is the
//!   only action.
//! - `payload.message` (required, a string): the text shown to the user.
//! - `payload.url`, `payload.url_label` (optional strings): a link shown with the message.
//! - `timestamp` (optional): epoch milliseconds when the agent replied.
//! - `return_code` (optional, default 0): 0 means success, anything else that the agent failed;
//!   the message then says why.
//!
//! # Accepted variations
//!
//! Agents in the field deviate from the format above, and [`parse_info_reply`] normalises these
//! deviations before it checks the reply: `returned_code` instead of `return_code`; the payload as a
//! list of `{"name","value"}` pairs instead of an object; `job_id` or `return_code` as a numeric
//! string; a missing `action`. The reply may be pretty-printed over several lines and surrounded by
//! log lines, but it must start on a line of its own (leading whitespace is fine). See
//! [`parse_info_reply`] for how one reply is chosen among several.

mod job_id;
mod reply;
mod scan;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use job_id::JobIdGenerator;
pub use reply::{
    parse_heartbeat, parse_info_reply, Heartbeat, InfoReply, ReplyError, DEFAULT_ACTION,
    KNOWN_ACTIONS,
};

/// Namespace of the version 5 UUIDs that [`agent_id_for`] derives. Changing it changes every
/// integration's agentID.
pub const AGENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0xe752_0d49_9bcb_4b69_a409_d74e_61d9_ecdb);

/// Returns the agentID of the integration called `name`.
///
/// The id is a version 5 UUID of the trimmed, lowercased name under [`AGENT_ID_NAMESPACE`], so an
/// integration keeps its agentID across runs and processes, and names that differ only in case or
/// surrounding whitespace share one.
pub fn agent_id_for(name: &str) -> Uuid {
    Uuid::new_v5(&AGENT_ID_NAMESPACE, name.trim().to_lowercase().as_bytes())
}

/// One `{"name": …, "value": …}` entry of a `work` message's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadEntry {
    /// Field name, as in the manifest.
    pub name: String,
    /// Field value after keyword substitution and validation.
    pub value: String,
}

/// A message the engine writes to an agent's stdin. See the module documentation for the format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Request {
    /// The health check. The agent replies with a [`Heartbeat`].
    Describe {
        /// The integration's agentID.
        #[serde(rename = "agentID")]
        agent_id: Uuid,
        /// The job id.
        job_id: u64,
    },
    /// One run of the integration's action. The agent replies with an [`InfoReply`].
    Work {
        /// The integration's agentID.
        #[serde(rename = "agentID")]
        agent_id: Uuid,
        /// Form values in the manifest's field order.
        payload: Vec<PayloadEntry>,
        /// The job id.
        job_id: u64,
    },
}

impl Request {
    /// Builds a `describe` message.
    pub fn describe(agent_id: Uuid, job_id: u64) -> Self {
        Self::Describe { agent_id, job_id }
    }

    /// Builds a `work` message from `(name, value)` pairs, keeping their order.
    pub fn work(agent_id: Uuid, job_id: u64, values: &[(String, String)]) -> Self {
        let payload = values
            .iter()
            .map(|(name, value)| PayloadEntry {
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        Self::Work {
            agent_id,
            payload,
            job_id,
        }
    }

    /// Returns the message as the compact JSON bytes written to the agent's stdin.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising strings, integers and a UUID into a Vec cannot fail: serde_json fails only
        // on non-string map keys and on I/O errors, and there are neither here.
        serde_json::to_vec(self).expect("a request always serialises to JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: Uuid = Uuid::from_u128(0x0c6b_0e25_4a43_5b73_9a38_04cb_43b6_4a4e);

    #[test]
    fn describe_message_bytes() {
        let bytes = Request::describe(AGENT, 1_507_824_886_086).to_bytes();
        assert_eq!(
            String::from_utf8(bytes).expect("JSON is UTF-8"),
            r#"{"type":"describe","agentID":"0c6b0e25-4a43-5b73-9a38-04cb43b64a4e","job_id":1507824886086}"#
        );
    }

    #[test]
    fn work_message_keeps_payload_order() {
        let values = vec![
            ("zeta".to_owned(), "1".to_owned()),
            ("alpha".to_owned(), "line\n\"quoted\" é".to_owned()),
        ];
        let bytes = Request::work(AGENT, 7, &values).to_bytes();
        assert_eq!(
            String::from_utf8(bytes).expect("JSON is UTF-8"),
            r#"{"type":"work","agentID":"0c6b0e25-4a43-5b73-9a38-04cb43b64a4e","payload":[{"name":"zeta","value":"1"},{"name":"alpha","value":"line\n\"quoted\" é"}],"job_id":7}"#
        );
    }

    #[test]
    fn work_message_job_id_is_integer() {
        let bytes = Request::work(AGENT, u64::from(u32::MAX) + 1, &[]).to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(value["job_id"].as_u64(), Some(4_294_967_296));
    }

    #[test]
    fn work_message_round_trips() {
        let request = Request::work(AGENT, 9, &[("a".to_owned(), "b".to_owned())]);
        let parsed: Request = serde_json::from_slice(&request.to_bytes()).expect("valid request");
        assert_eq!(parsed, request);
    }

    #[test]
    fn agent_id_is_stable() {
        // A fixed value: if this changes, every stored integration gets a new agentID.
        assert_eq!(
            agent_id_for("slack").to_string(),
            "f2fe62ed-03c8-5f57-a801-e8322d208e7d"
        );
    }

    #[test]
    fn agent_id_ignores_case_and_whitespace() {
        assert_eq!(agent_id_for("  Slack\t"), agent_id_for("slack"));
        assert_ne!(agent_id_for("slack"), agent_id_for("echo"));
    }
}
