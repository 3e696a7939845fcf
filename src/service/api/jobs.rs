//! Handlers for jobs: submit, show, list and cancel.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::error::{ApiError, FieldError, MAX_FIELD_ERRORS};
use super::extract::{context_object, ApiJson, JsonMembers};
use super::integrations::parse_agent_id;
use super::reject_when_stopping;
use super::views::JobView;
use crate::dispatcher;
use crate::error::Error;
use crate::forms::Context;
use crate::manifest::Manifest;
use crate::protocol::agent_id_for;
use crate::service::integrations::check_accepts_jobs;
use crate::service::pool::CancelReason;
use crate::service::Service;
use crate::store::{JobFilter, JobRecord, JobState, NewJob};

/// Default page size of `GET /v1/jobs`.
const DEFAULT_PAGE: usize = 100;
/// Maximum page size of `GET /v1/jobs`.
const MAX_PAGE: usize = 1000;
/// Maximum time `DELETE /v1/jobs/{id}` waits for a running job's agent to be killed.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Body of `POST /v1/integrations/{id}/jobs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitBody {
    /// Field values by name, in the order given. A name given twice is kept twice, so that
    /// the form check rejects it.
    #[serde(default)]
    values: JsonMembers,
    /// The UI context, with the CLI's keys.
    #[serde(default, deserialize_with = "context_object")]
    context: Context,
}

/// Query of the submit route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitQuery {
    #[serde(default)]
    wait: bool,
}

fn job_response(status: StatusCode, job: &JobRecord) -> Response {
    (
        status,
        [(header::LOCATION, format!("/v1/jobs/{}", job.id))],
        Json(JobView::from(job)),
    )
        .into_response()
}

/// Turns a query that does not parse into a 422 like the other invalid queries: one entry in
/// `errors` for the parameter, when the parser names it.
pub(crate) fn query_error(rejection: &QueryRejection) -> ApiError {
    let text = rejection.body_text();
    let detail = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    let parameter = detail.split_once(": ").and_then(|(name, _)| {
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        is_name.then(|| name.to_owned())
    });
    let message = format!("invalid query: {detail}");
    let errors = parameter
        .map(|field| FieldError {
            field,
            message: message.clone(),
            rule: None,
        })
        .into_iter()
        .collect();
    ApiError::unprocessable("invalid_query", message, errors)
}

/// `POST /v1/integrations/{id}/jobs[?wait=true]`: validates the values (422 with one entry per
/// invalid field), stores the job and returns 202 with it. With `wait=true` the response waits
/// for the job's end, at most `jobs.wait_timeout_secs`, and is 200 when it ended in time.
pub(crate) async fn submit(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    query: Result<Query<SubmitQuery>, QueryRejection>,
    ApiJson(body): ApiJson<SubmitBody>,
) -> Result<Response, ApiError> {
    reject_when_stopping(&service)?;
    let Query(query) = query.map_err(|rejection| query_error(&rejection))?;
    let agent_id = parse_agent_id(&id)?;
    let record = service
        .store()
        .integration(agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("integration", agent_id))?;
    check_accepts_jobs(&record)?;

    // Values must be strings; everything else is reported per field like a broken rule.
    let mut values = Vec::with_capacity(body.values.0.len());
    let mut problems = Vec::new();
    let mut problem_count = 0;
    for (name, value) in body.values.0 {
        match value {
            serde_json::Value::String(text) => values.push((name, text)),
            _ => {
                problem_count += 1;
                if problems.len() < MAX_FIELD_ERRORS {
                    problems.push(FieldError {
                        message: format!("field {name:?} must be a string"),
                        field: name,
                        rule: Some("type".to_owned()),
                    });
                }
            }
        }
    }
    if problem_count > 0 {
        return Err(ApiError::unprocessable_of(
            "invalid_values",
            "invalid form values: see errors for each field",
            problem_count,
            problems,
        ));
    }
    let dropped = drop_excess_unknown(&record.manifest, &mut values);
    // The job id is drawn after the check, so the check uses the longest id.
    let checked = dispatcher::work_message(
        &record.manifest,
        agent_id,
        u64::MAX,
        &values,
        &body.context,
        service.config().jobs.max_message_bytes,
    );
    match checked {
        Ok(_) => {}
        Err(Error::Form(errors)) => {
            let total = errors.errors.len() + dropped;
            return Err(ApiError::form_values(errors, total));
        }
        Err(Error::MessageTooLarge(error)) => {
            return Err(ApiError::unprocessable(
                "message_too_large",
                error.to_string(),
                Vec::new(),
            ))
        }
        Err(error) => return Err(ApiError::internal(&error)),
    }

    // Subscribe before the insert, so that a job that ends at once is not missed.
    let mut finished = service.events.subscribe();
    let job_id = service.dispatcher().job_ids().next_id();
    let job = service
        .store()
        .insert_job(
            NewJob {
                id: job_id,
                agent_id,
                values,
                context: body.context,
            },
            service.config().jobs.max_queued,
        )
        .await?
        .ok_or_else(|| ApiError::not_found("integration", agent_id))?;
    service.metrics.job_submitted(&record.name);
    service.pool.wake();
    tracing::debug!(job_id, agent_id = %agent_id, "job accepted");

    if !query.wait {
        return Ok(job_response(StatusCode::ACCEPTED, &job));
    }
    let wait = Duration::from_secs(service.config().jobs.wait_timeout_secs);
    let job = wait_for_end(&service, job_id, &mut finished, wait).await?;
    let status = if job.state.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(job_response(status, &job))
}

/// Removes the values with names the manifest's fields do not have, beyond the first
/// [`MAX_FIELD_ERRORS`] of them, and returns how many it removed.
///
/// The form check reports each unknown value with the list of known fields, so 100,000 unknown
/// values would cost 100,000 such messages. The API lists only the first ones anyway. A
/// manifest without fields accepts any value, and then nothing is removed.
fn drop_excess_unknown(manifest: &Manifest, values: &mut Vec<(String, String)>) -> usize {
    if manifest.fields.is_empty() {
        return 0;
    }
    let known: HashSet<&str> = manifest
        .fields
        .iter()
        .map(|field| field.name.as_str())
        .collect();
    let mut unknown = 0;
    let before = values.len();
    values.retain(|(name, _)| {
        if known.contains(name.as_str()) {
            return true;
        }
        unknown += 1;
        unknown <= MAX_FIELD_ERRORS
    });
    before - values.len()
}

/// Waits until job `id` has a final state, at most `wait`, or until the service stops, and
/// returns its record as it is then.
///
/// The record is read again when the wait ends without the job's end, because the job may have
/// started meanwhile and the caller must not report the state it had before the wait.
async fn wait_for_end(
    service: &Service,
    id: u64,
    finished: &mut tokio::sync::broadcast::Receiver<u64>,
    wait: Duration,
) -> Result<JobRecord, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let job = read_job(service, id).await?;
        if job.state.is_final() {
            return Ok(job);
        }
        loop {
            let event = tokio::select! {
                event = tokio::time::timeout_at(deadline, finished.recv()) => event,
                () = service.stopping.cancelled() => return read_job(service, id).await,
            };
            match event {
                Err(_) | Ok(Err(RecvError::Closed)) => return read_job(service, id).await,
                Ok(Ok(finished_id)) if finished_id == id => break,
                Ok(Ok(_)) => {}
                // Missed notifications: read the store again.
                Ok(Err(RecvError::Lagged(_))) => break,
            }
        }
    }
}

async fn read_job(service: &Service, id: u64) -> Result<JobRecord, ApiError> {
    service
        .store()
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", id))
}

fn parse_job_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found("job", format!("{id:?}")))
}

/// `GET /v1/jobs/{job_id}`.
pub(crate) async fn show(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_job_id(&id)?;
    let job = service
        .store()
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", id))?;
    Ok(Json(JobView::from(&job)).into_response())
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// agentID or name.
    integration: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    /// Only jobs with a smaller id: pass the previous page's `next_before`.
    before: Option<u64>,
}

/// `GET /v1/jobs?integration=…&state=…&limit=…&before=…`: newest first, paged by job id.
pub(crate) async fn list(
    State(service): State<Arc<Service>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| query_error(&rejection))?;
    let integration = query.integration.filter(|text| !text.is_empty());
    let agent_id = match &integration {
        Some(text) => {
            let agent_id = Uuid::parse_str(text).unwrap_or_else(|_| agent_id_for(text));
            if !service.store().is_agent_recorded(agent_id).await? {
                return Err(ApiError::not_found("integration", format!("{text:?}")));
            }
            Some(agent_id)
        }
        None => None,
    };
    let state = match query.state.filter(|text| !text.is_empty()) {
        Some(text) => Some(JobState::parse(&text).ok_or_else(|| {
            let allowed: Vec<&str> = JobState::ALL.iter().map(|state| state.as_str()).collect();
            let message = format!("unknown state {text:?}; allowed: {}", allowed.join(", "));
            ApiError::unprocessable(
                "invalid_query",
                message.clone(),
                vec![FieldError {
                    field: "state".to_owned(),
                    message,
                    rule: None,
                }],
            )
        })?),
        None => None,
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        let message = format!("limit must be between 1 and {MAX_PAGE}, found {limit}");
        return Err(ApiError::unprocessable(
            "invalid_query",
            message.clone(),
            vec![FieldError {
                field: "limit".to_owned(),
                message,
                rule: None,
            }],
        ));
    }
    let jobs = service
        .store()
        .jobs(JobFilter {
            agent_id,
            state,
            before: query.before,
            limit,
        })
        .await?;
    let next_before = if jobs.len() == limit {
        jobs.last().map(|job| job.id)
    } else {
        None
    };
    let views: Vec<JobView> = jobs.iter().map(JobView::from).collect();
    Ok(Json(serde_json::json!({ "jobs": views, "next_before": next_before })).into_response())
}

/// `DELETE /v1/jobs/{job_id}`: cancels a queued job, or kills a running job's agent. Returns
/// the job once cancelled (200), or 202 when the agent has not ended within a few seconds.
pub(crate) async fn cancel(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_job_id(&id)?;
    let mut finished = service.events.subscribe();
    let job = service
        .store()
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", id))?;
    match job.state {
        JobState::Queued => {
            if let Some(job) = service
                .store()
                .cancel_queued_job(
                    id,
                    "the job was cancelled through the API before it started".to_owned(),
                )
                .await?
            {
                tracing::info!(job_id = id, "queued job cancelled");
                service.events.send_finished(id);
                return Ok(job_response(StatusCode::OK, &job));
            }
            // A worker claimed it in the meantime: cancel it as a running job.
        }
        JobState::Running => {}
        state => {
            return Err(ApiError::conflict(format!(
                "job {id} has already ended ({}) and cannot be cancelled",
                state.as_str()
            )))
        }
    }

    if !service.pool.cancel(id, CancelReason::Api) {
        // Claimed an instant ago and not yet registered, or being recovered after a restart.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !service.pool.cancel(id, CancelReason::Api) {
            let job = service
                .store()
                .job(id)
                .await?
                .ok_or_else(|| ApiError::not_found("job", id))?;
            if job.state.is_final() {
                return Ok(job_response(StatusCode::OK, &job));
            }
            return Err(ApiError::conflict(format!(
                "job {id} is being recovered after a restart and cannot be cancelled now; retry \
                 in a moment"
            )));
        }
    }
    tracing::info!(job_id = id, "cancelling running job");
    let job = wait_for_end(&service, id, &mut finished, CANCEL_WAIT).await?;
    let status = if job.state.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(job_response(status, &job))
}
