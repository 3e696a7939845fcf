//! The JSON shapes the API returns. Env values never appear: integrations list env names only.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::manifest::Manifest;
use crate::store::{BuildState, HealthRecord, IntegrationRecord, JobRecord, JobState};

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds.
pub(crate) fn timestamp(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// An integration as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct IntegrationView {
    agent_id: Uuid,
    name: String,
    state: BuildState,
    build_error: Option<String>,
    digest: String,
    manifest: Manifest,
    /// Env variable names; the values are secret.
    env: Vec<String>,
    health: Option<HealthView>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

impl From<&IntegrationRecord> for IntegrationView {
    fn from(record: &IntegrationRecord) -> Self {
        let mut manifest = record.manifest.clone();
        manifest.env.clear();
        Self {
            agent_id: record.agent_id,
            name: record.name.clone(),
            state: record.state,
            build_error: record.build_error.clone(),
            digest: record.digest.clone(),
            manifest,
            env: record.env_keys(),
            health: record.health.as_ref().map(HealthView::from),
            created_at: timestamp(record.created_ms),
            updated_at: timestamp(record.updated_ms),
        }
    }
}

/// The last health check.
#[derive(Debug, Serialize)]
pub(crate) struct HealthView {
    healthy: bool,
    checked_at: Option<String>,
    /// The reason the integration is unhealthy.
    error: Option<String>,
    /// The full report of the check.
    report: Value,
}

impl From<&HealthRecord> for HealthView {
    fn from(health: &HealthRecord) -> Self {
        Self {
            healthy: health.healthy,
            checked_at: timestamp(health.checked_ms),
            error: health
                .report
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned),
            report: health.report.clone(),
        }
    }
}

/// A job as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct JobView {
    job_id: u64,
    agent_id: Uuid,
    integration: String,
    state: JobState,
    values: serde_json::Map<String, Value>,
    context: Value,
    /// The fields of `agentrun run --json`, once the agent ran.
    result: Option<Value>,
    error: Option<String>,
    exit_code: Option<i32>,
    stderr_tail: Option<String>,
    submitted_at: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
}

impl From<&JobRecord> for JobView {
    fn from(job: &JobRecord) -> Self {
        Self {
            job_id: job.id,
            agent_id: job.agent_id,
            integration: job.integration.clone(),
            state: job.state,
            values: job
                .values
                .iter()
                .map(|(name, value)| (name.clone(), Value::String(value.clone())))
                .collect(),
            context: serde_json::to_value(&job.context).unwrap_or_default(),
            result: job.result.clone(),
            error: job.error.clone(),
            exit_code: job.exit_code,
            stderr_tail: job.stderr_tail.clone(),
            submitted_at: timestamp(job.submitted_ms),
            started_at: job.started_ms.and_then(timestamp),
            finished_at: job.finished_ms.and_then(timestamp),
        }
    }
}
