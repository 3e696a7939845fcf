//! API errors: a status code and a JSON body with a message and, for 422, one entry per problem.
//!
//! ```json
//! {"error": "invalid_values", "message": "invalid form values", "errors": [
//!   {"field": "message", "message": "Write a message to send to Slack.", "rule": "regex"}]}
//! ```

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::forms::FormErrors;
use crate::manifest::ManifestError;
use crate::store::StoreError;

/// Maximum number of entries in an error's `errors` list. A request with more problems gets
/// the first ones and a message that counts them all, so that a body of 100,000 invalid values
/// cannot produce a response many times its own size.
pub const MAX_FIELD_ERRORS: usize = 100;

/// One invalid field, manifest key or value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field name or key path, such as `message` or `fields[0].ui_element`.
    pub field: String,
    /// The problem and the allowed values.
    pub message: String,
    /// The broken rule, for form values (`regex`, `select`, `date`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// An error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// HTTP status.
    #[serde(skip)]
    pub status: StatusCode,
    /// Stable machine-readable code, such as `not_found`.
    pub error: &'static str,
    /// Human-readable message.
    pub message: String,
    /// One entry per invalid field; empty unless the status is 422.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    /// Builds an error without field entries.
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 for a missing resource.
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id} not found"),
        )
    }

    /// 409: the resource is in a state that does not allow the request.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422 with one entry per problem, at most [`MAX_FIELD_ERRORS`] of them.
    pub fn unprocessable(
        error: &'static str,
        message: impl Into<String>,
        errors: Vec<FieldError>,
    ) -> Self {
        let total = errors.len();
        Self::unprocessable_of(error, message, total, errors)
    }

    /// 422 for `total` problems, of which `errors` contains the first ones. The list is cut to
    /// [`MAX_FIELD_ERRORS`] entries, and when it is shorter than `total` the message counts
    /// them all.
    pub fn unprocessable_of(
        error: &'static str,
        message: impl Into<String>,
        total: usize,
        mut errors: Vec<FieldError>,
    ) -> Self {
        errors.truncate(MAX_FIELD_ERRORS);
        let mut message = message.into();
        if total > errors.len() {
            message.push_str(&format!(
                " ({total} problems; the first {} are listed)",
                errors.len()
            ));
        }
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error,
            message,
            errors,
        }
    }

    /// 422 for invalid form values: `errors` contains the first of `total` problems.
    pub fn form_values(errors: FormErrors, total: usize) -> Self {
        let fields = errors
            .errors
            .iter()
            .take(MAX_FIELD_ERRORS)
            .map(|error| FieldError {
                field: error.field.clone(),
                message: error.message.clone(),
                rule: serde_json::to_value(error.rule)
                    .ok()
                    .and_then(|rule| rule.as_str().map(str::to_owned)),
            })
            .collect();
        Self::unprocessable_of(
            "invalid_values",
            "invalid form values: see errors for each field",
            total,
            fields,
        )
    }

    /// 413 naming the limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 500. The cause is logged here, once; the client gets a generic message with its text.
    pub fn internal(error: &dyn std::error::Error) -> Self {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        tracing::error!(error = %text, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", text)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut response = (status, axum::Json(self)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::QueueFull { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                error.to_string(),
            ),
            // A name clash is a conflict with the stored state, not an invalid manifest.
            StoreError::DuplicateName { .. } => {
                Self::new(StatusCode::CONFLICT, "duplicate_name", error.to_string())
            }
            other => Self::internal(&other),
        }
    }
}

impl From<FormErrors> for ApiError {
    fn from(errors: FormErrors) -> Self {
        let total = errors.errors.len();
        Self::form_values(errors, total)
    }
}

impl From<ManifestError> for ApiError {
    fn from(error: ManifestError) -> Self {
        let fields = match &error {
            ManifestError::Invalid { problems, .. } => problems
                .iter()
                .map(|problem| FieldError {
                    field: problem.path.clone(),
                    message: problem.message.clone(),
                    rule: None,
                })
                .collect(),
            other => vec![FieldError {
                field: "manifest".to_owned(),
                message: other.to_string(),
                rule: None,
            }],
        };
        Self::unprocessable("invalid_manifest", error.to_string(), fields)
    }
}
