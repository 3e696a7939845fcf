//! What a backend receives to prepare a package, and what it hands back.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An unpacked, validated integration package, ready for [`Executor::prepare`](crate::Executor::prepare).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSpec {
    /// Integration name, as in the manifest.
    pub integration: String,
    /// The integration's agentID (a UUID).
    pub agent_id: String,
    /// Content digest of the package: lowercase hex SHA-256 over its paths and contents.
    pub digest: String,
    /// Folder that contains the `Dockerfile`: the build context.
    pub root: PathBuf,
    /// Command line from the manifest's `[run] command`, for the subprocess backend. Relative
    /// paths in it are relative to `root`.
    pub command: Option<Vec<String>>,
}

/// What a backend made of a package: enough to run jobs without preparing again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// Name of the backend that prepared it.
    pub executor: String,
    /// Integration name.
    pub integration: String,
    /// The integration's agentID.
    pub agent_id: String,
    /// Package digest this was prepared from.
    pub digest: String,
    /// What to start for each job.
    pub target: Target,
    /// True when nothing had to be built because the result already existed.
    pub cache_hit: bool,
}

/// What a backend starts for each job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Target {
    /// A container image, by tag.
    Image {
        /// Image reference, as [`image_tag`] makes it.
        reference: String,
    },
    /// A command line, run in `working_dir`.
    Command {
        /// Program and arguments; the program is an absolute path.
        argv: Vec<String>,
        /// Working directory: the package folder.
        working_dir: PathBuf,
    },
}

/// Returns the image tag for an integration's package: `agentrun/<name>-<id>:<digest>`.
///
/// `<name>` is the integration name reduced to the characters a repository name allows, `<id>`
/// the first 8 characters of the agentID, and `<digest>` the first 24 hex digits of the package
/// digest. The agentID part keeps two integrations from sharing a tag even when their names reduce
/// to the same text; the digest part makes an unchanged package map to an existing image, so it is
/// never rebuilt.
pub fn image_tag(integration: &str, agent_id: &str, digest: &str) -> String {
    let mut name = String::with_capacity(integration.len());
    for c in integration.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let mut name = name.trim_end_matches('-').to_owned();
    name.truncate(40);
    let name = name.trim_end_matches('-');
    let name = if name.is_empty() { "agent" } else { name };

    let id: String = agent_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    let digest: String = digest.chars().take(24).collect();
    format!("agentrun/{name}-{id}:{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tag_reduces_name() {
        let tag = image_tag(
            "Slack Notifier (v2)!",
            "3F2504E0-4F89-11D3-9A0C-0305E82C3301",
            "ab12cd34ef56ab12cd34ef56ab12cd34ef56",
        );
        assert_eq!(
            tag,
            "agentrun/slack-notifier-v2-3f2504e0:ab12cd34ef56ab12cd34ef56"
        );
    }

    #[test]
    fn image_tag_differs_by_agent_id() {
        let first = image_tag("echo", "11111111-0000-0000-0000-000000000000", "ff");
        let second = image_tag("ECHO", "22222222-0000-0000-0000-000000000000", "ff");
        assert_ne!(first, second);
    }

    /// An integration name with path text cannot reach outside the tag's repository name.
    #[test]
    fn image_tag_of_path_like_name() {
        let tag = image_tag("../../etc/passwd:latest@sha256", "abcdef01", "00");
        assert_eq!(tag, "agentrun/etc-passwd-latest-sha256-abcdef01:00");
    }

    #[test]
    fn image_tag_of_symbol_only_name() {
        let tag = image_tag("!!!", "abcdef01", "00");
        assert_eq!(tag, "agentrun/agent-abcdef01:00");
    }
}
