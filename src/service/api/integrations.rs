//! Handlers for `/v1/integrations`, `/v1/actions`, forms and health.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::error::{ApiError, FieldError, MAX_FIELD_ERRORS};
use super::extract::{context_object, ApiJson, JsonMembers};
use super::multipart;
use super::reject_when_stopping;
use super::views::{HealthView, IntegrationView};
use crate::forms::{self, Context};
use crate::manifest::{is_env_name, Section, SectionElement};
use crate::service::integrations::{self, Upload};
use crate::service::{health, Service};
use crate::store::{BuildState, IntegrationRecord};

/// Maximum number of env variable names in the log line of an env update.
const MAX_LOGGED_ENV_NAMES: usize = 20;

/// Parses an `{id}` path segment: an agentID.
pub(crate) fn parse_agent_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("integration", format!("{id:?}")))
}

async fn load(service: &Service, id: &str) -> Result<IntegrationRecord, ApiError> {
    let agent_id = parse_agent_id(id)?;
    service
        .store()
        .integration(agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("integration", agent_id))
}

fn created(record: &IntegrationRecord) -> Response {
    let location = format!("/v1/integrations/{}", record.agent_id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(IntegrationView::from(record)),
    )
        .into_response()
}

/// `POST /v1/integrations`: multipart with a `manifest` JSON part and a `package` zip part.
pub(crate) async fn register(
    State(service): State<Arc<Service>>,
    request: Request,
) -> Result<Response, ApiError> {
    reject_when_stopping(&service)?;
    let upload = read_upload(&service, request).await?;
    let record = integrations::register(&service, upload).await?;
    Ok(created(&record))
}

/// `PUT /v1/integrations/{id}/package`: the same parts as registration.
pub(crate) async fn replace_package(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    reject_when_stopping(&service)?;
    let agent_id = parse_agent_id(&id)?;
    let upload = read_upload(&service, request).await?;
    let record = integrations::replace(&service, agent_id, upload).await?;
    Ok(created(&record))
}

/// Streams the multipart parts: the manifest into memory (at most `api.max_body_bytes`), the
/// package into a file under `tmp/` (at most `intake.max_archive_bytes`). Preambles and part
/// headers are capped by [`multipart::open`].
async fn read_upload(service: &Service, request: Request) -> Result<Upload, ApiError> {
    let (mut multipart, limit) = multipart::open(request).await.map_err(|rejection| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "expected a multipart/form-data body with a `package` part and an optional \
                 `manifest` part: {rejection}"
            ),
        )
    })?;
    let max_manifest = service.config().api.max_body_bytes;
    let max_package = service.config().intake.max_archive_bytes;
    let mut manifest: Option<Vec<u8>> = None;
    let mut package: Option<tempfile::TempPath> = None;

    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|error| limit.error(error))?
    {
        limit.progress();
        let name = field.name().unwrap_or("").to_owned();
        match name.as_str() {
            "manifest" if manifest.is_none() => {
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(|error| limit.error(error))? {
                    limit.progress();
                    if bytes.len() + chunk.len() > max_manifest {
                        return Err(ApiError::too_large(format!(
                            "the `manifest` part is larger than {max_manifest} bytes \
                             (api.max_body_bytes)"
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                manifest = Some(bytes);
            }
            "package" if package.is_none() => {
                let file = tempfile::Builder::new()
                    .prefix("upload-")
                    .suffix(".zip")
                    .tempfile_in(service.config().temp_dir())
                    .map_err(|error| ApiError::internal(&error))?;
                let (file, path) = file.into_parts();
                let mut file = tokio::fs::File::from_std(file);
                let mut written: u64 = 0;
                while let Some(chunk) = field.chunk().await.map_err(|error| limit.error(error))? {
                    limit.progress();
                    written += chunk.len() as u64;
                    if written > max_package {
                        return Err(ApiError::too_large(format!(
                            "the package is larger than {max_package} bytes \
                             (intake.max_archive_bytes)"
                        )));
                    }
                    file.write_all(&chunk)
                        .await
                        .map_err(|error| ApiError::internal(&error))?;
                }
                file.flush()
                    .await
                    .map_err(|error| ApiError::internal(&error))?;
                package = Some(path);
            }
            "manifest" | "package" => {
                return Err(ApiError::unprocessable(
                    "duplicate_part",
                    format!("the part `{name}` is given twice; send it once"),
                    vec![FieldError {
                        field: name.clone(),
                        message: "given twice".to_owned(),
                        rule: None,
                    }],
                ))
            }
            _ => {
                return Err(ApiError::unprocessable(
                    "unknown_part",
                    format!(
                        "unknown part {name:?}: the request takes a `manifest` JSON part and a \
                         `package` zip part"
                    ),
                    vec![FieldError {
                        field: name.clone(),
                        message: "unknown part".to_owned(),
                        rule: None,
                    }],
                ))
            }
        }
    }

    let Some(package) = package else {
        let message = "missing part `package`: send the integration's zip as a part named \
                       `package`"
            .to_owned();
        return Err(ApiError::unprocessable(
            "missing_part",
            message.clone(),
            vec![FieldError {
                field: "package".to_owned(),
                message,
                rule: None,
            }],
        ));
    };
    Ok(Upload { manifest, package })
}

/// `GET /v1/integrations`.
pub(crate) async fn list(State(service): State<Arc<Service>>) -> Result<Response, ApiError> {
    let records = service.store().integrations().await?;
    let views: Vec<IntegrationView> = records.iter().map(IntegrationView::from).collect();
    Ok(Json(serde_json::json!({ "integrations": views })).into_response())
}

/// `GET /v1/integrations/{id}`.
pub(crate) async fn show(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = load(&service, &id).await?;
    Ok(Json(IntegrationView::from(&record)).into_response())
}

/// `DELETE /v1/integrations/{id}`.
pub(crate) async fn delete(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    reject_when_stopping(&service)?;
    let agent_id = parse_agent_id(&id)?;
    let record = integrations::delete(&service, agent_id).await?;
    Ok(Json(IntegrationView::from(&record)).into_response())
}

/// `PATCH /v1/integrations/{id}/env`: a JSON merge patch of the env, `{"NAME": "value"}` to
/// set and `{"NAME": null}` to remove. Returns the integration, which lists env names only.
pub(crate) async fn update_env(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<JsonMembers>,
) -> Result<Response, ApiError> {
    reject_when_stopping(&service)?;
    let agent_id = parse_agent_id(&id)?;
    let mut changes = Vec::with_capacity(patch.0.len());
    let mut problems = Vec::new();
    let mut problem_count = 0;
    let mut seen = HashSet::with_capacity(patch.0.len());
    for (key, value) in patch.0 {
        let change = if seen.insert(key.clone()) {
            env_change(key, value)
        } else {
            Err(FieldError {
                message: format!("env variable {key:?} is given twice; give each variable once"),
                field: key,
                rule: Some("duplicate".to_owned()),
            })
        };
        match change {
            Ok(change) => changes.push(change),
            Err(problem) => {
                problem_count += 1;
                if problems.len() < MAX_FIELD_ERRORS {
                    problems.push(problem);
                }
            }
        }
    }
    if problem_count > 0 {
        return Err(ApiError::unprocessable_of(
            "invalid_env",
            "invalid env patch: see errors for each variable",
            problem_count,
            problems,
        ));
    }
    // The line names at most the first few variables, so that a patch of many cannot flood
    // the log.
    let names: Vec<&str> = changes
        .iter()
        .take(MAX_LOGGED_ENV_NAMES)
        .map(|(key, _)| key.as_str())
        .collect();
    tracing::info!(agent_id = %agent_id, env_count = changes.len(), env = ?names, "env updated");
    let record = service
        .store()
        .update_env(agent_id, changes)
        .await?
        .ok_or_else(|| ApiError::not_found("integration", agent_id))?;
    Ok(Json(IntegrationView::from(&record)).into_response())
}

/// Checks one entry of an env patch: a valid name with a string value sets the variable, with
/// null it removes it.
fn env_change(key: String, value: Value) -> Result<(String, Option<String>), FieldError> {
    if !is_env_name(&key) {
        return Err(FieldError {
            message: format!(
                "invalid env variable name {key:?}; use ASCII letters, digits and \"_\", not \
                 starting with a digit"
            ),
            field: key,
            rule: None,
        });
    }
    match value {
        Value::Null => Ok((key, None)),
        Value::String(text) if text.contains('\0') => Err(FieldError {
            message: format!(
                "the value of {key} contains a NUL byte, which no process environment can carry"
            ),
            field: key,
            rule: None,
        }),
        Value::String(text) => Ok((key, Some(text))),
        _ => Err(FieldError {
            message: format!("the value of {key} must be a string, or null to remove it"),
            field: key,
            rule: None,
        }),
    }
}

/// Query of `GET /v1/actions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionsQuery {
    section: Option<String>,
    section_element: Option<String>,
    section_element_type: Option<String>,
}

/// One action for a UI context.
#[derive(Debug, Serialize)]
struct ActionView {
    agent_id: Uuid,
    name: String,
    take_user_input: bool,
    section: Option<Section>,
    section_element: Option<SectionElement>,
    section_element_type: Vec<String>,
    /// `None` until the first health check.
    healthy: Option<bool>,
    /// The last health check's error, when unhealthy.
    health_error: Option<String>,
}

/// `GET /v1/actions?section=…&section_element=…&section_element_type=…`: the ready
/// integrations to show for a UI context, each flagged with its last health check.
pub(crate) async fn actions(
    State(service): State<Arc<Service>>,
    query: Result<Query<ActionsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| super::jobs::query_error(&rejection))?;
    let section = parse_section(query.section.as_deref())?;
    let (section, element) = parse_element(section, query.section_element.as_deref())?;
    let element_type = query.section_element_type.filter(|text| !text.is_empty());

    let records = service.store().integrations().await?;
    let mut actions = Vec::new();
    for record in records {
        if record.state != BuildState::Ready {
            continue;
        }
        let manifest = &record.manifest;
        if section.is_some() && manifest.section != section {
            continue;
        }
        if let (Some(element), Some(own)) = (element, manifest.section_element) {
            if own != element {
                continue;
            }
        }
        if let Some(element_type) = &element_type {
            if !manifest.section_element_type.is_empty()
                && !manifest.section_element_type.contains(element_type)
            {
                continue;
            }
        }
        let health = record.health.as_ref().map(HealthView::from);
        let health_json = health
            .as_ref()
            .map(|view| serde_json::to_value(view).unwrap_or_default());
        actions.push(ActionView {
            agent_id: record.agent_id,
            name: record.name.clone(),
            take_user_input: manifest.take_user_input,
            section: manifest.section,
            section_element: manifest.section_element,
            section_element_type: manifest.section_element_type.clone(),
            healthy: record.health.as_ref().map(|health| health.healthy),
            health_error: health_json
                .as_ref()
                .and_then(|view| view.get("error"))
                .and_then(Value::as_str)
                .filter(|_| record.health.as_ref().is_some_and(|health| !health.healthy))
                .map(str::to_owned),
        });
    }
    Ok(Json(serde_json::json!({ "actions": actions })).into_response())
}

fn parse_section(text: Option<&str>) -> Result<Option<Section>, ApiError> {
    let Some(text) = text.filter(|text| !text.is_empty()) else {
        return Ok(None);
    };
    Section::ALL
        .iter()
        .copied()
        .find(|section| section.as_str() == text)
        .map(Some)
        .ok_or_else(|| {
            let allowed: Vec<&str> = Section::ALL
                .iter()
                .map(|section| section.as_str())
                .collect();
            invalid_query(
                "section",
                format!("unknown section {text:?}; allowed: {}", allowed.join(", ")),
            )
        })
}

/// Parses `section_element`. Without a section, the element's own section is returned with
/// it: each element belongs to exactly one section.
fn parse_element(
    section: Option<Section>,
    text: Option<&str>,
) -> Result<(Option<Section>, Option<SectionElement>), ApiError> {
    let Some(text) = text.filter(|text| !text.is_empty()) else {
        return Ok((section, None));
    };
    let Some(section) = section else {
        return Section::ALL
            .iter()
            .find_map(|section| {
                section
                    .elements()
                    .iter()
                    .find(|element| element.as_str() == text)
                    .map(|element| (Some(*section), Some(*element)))
            })
            .ok_or_else(|| {
                let allowed: Vec<&str> = Section::ALL
                    .iter()
                    .flat_map(|section| section.elements())
                    .map(|element| element.as_str())
                    .collect();
                invalid_query(
                    "section_element",
                    format!(
                        "unknown section element {text:?}; allowed: {}",
                        allowed.join(", ")
                    ),
                )
            });
    };
    section
        .elements()
        .iter()
        .copied()
        .find(|element| element.as_str() == text)
        .map(|element| (Some(section), Some(element)))
        .ok_or_else(|| {
            let allowed: Vec<&str> = section.elements().iter().map(|e| e.as_str()).collect();
            invalid_query(
                "section_element",
                format!(
                    "section {} has no element {text:?}; allowed: {}",
                    section.as_str(),
                    allowed.join(", ")
                ),
            )
        })
}

fn invalid_query(field: &str, message: String) -> ApiError {
    ApiError::unprocessable(
        "invalid_query",
        message.clone(),
        vec![FieldError {
            field: field.to_owned(),
            message,
            rule: None,
        }],
    )
}

/// Body of `POST /v1/integrations/{id}/form`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FormBody {
    #[serde(default, deserialize_with = "context_object")]
    context: Context,
}

/// `POST /v1/integrations/{id}/form`: the fields with prefills substituted for the context.
pub(crate) async fn form(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<FormBody>,
) -> Result<Response, ApiError> {
    let record = load(&service, &id).await?;
    let resolved = forms::prefill(&record.manifest, &body.context);
    let values: BTreeMap<&str, &str> = resolved
        .values
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let fields: Vec<Value> = record
        .manifest
        .fields
        .iter()
        .map(|field| {
            let mut json = serde_json::to_value(field).unwrap_or_default();
            if let Value::Object(object) = &mut json {
                let value = values.get(field.name.as_str()).copied().unwrap_or("");
                object.insert("value".to_owned(), Value::String(value.to_owned()));
            }
            json
        })
        .collect();
    Ok(Json(serde_json::json!({
        "agent_id": record.agent_id,
        "name": record.name,
        "take_user_input": record.manifest.take_user_input,
        "fields": fields,
        "warnings": resolved.warnings,
    }))
    .into_response())
}

/// `GET /v1/integrations/{id}/health`: the last health check.
pub(crate) async fn show_health(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = load(&service, &id).await?;
    Ok(Json(serde_json::json!({
        "agent_id": record.agent_id,
        "name": record.name,
        "state": record.state,
        "health": record.health.as_ref().map(HealthView::from),
    }))
    .into_response())
}

/// `POST /v1/integrations/{id}/describe`: runs a health check now.
pub(crate) async fn describe(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    reject_when_stopping(&service)?;
    let record = load(&service, &id).await?;
    if record.state != BuildState::Ready {
        return Err(ApiError::conflict(format!(
            "integration {:?} is {} and cannot run a health check until its package is ready",
            record.name,
            record.state.as_str()
        )));
    }
    let health = health::check_now(&service, record.agent_id)
        .await
        .ok_or_else(|| ApiError::not_found("integration", record.agent_id))?;
    Ok(Json(serde_json::json!({
        "agent_id": record.agent_id,
        "name": record.name,
        "state": record.state,
        "health": HealthView::from(&health),
    }))
    .into_response())
}
