//! Request extractors that turn every rejection into a JSON [`ApiError`].

use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::error::{ApiError, FieldError};
use crate::forms::Context;
use crate::service::Service;

/// A JSON object of at most `api.max_body_bytes`, parsed into `T`.
///
/// Rejections: 415 without a JSON content type, 413 past the size limit, 400 for malformed
/// JSON, and 422 for well-formed JSON of the wrong shape (not an object, unknown keys, wrong
/// types).
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<Arc<Service>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, service: &Arc<Service>) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        // `+json` types, such as `application/merge-patch+json` for the env patch, are JSON too.
        let is_json = essence.eq_ignore_ascii_case("application/json")
            || (essence.starts_with("application/") && essence.ends_with("+json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "expected a JSON body with Content-Type: application/json, found {:?}",
                    content_type
                ),
            ));
        }
        let limit = service.config.api.max_body_bytes;
        let bytes = read_limited(request, limit).await?;
        check_object(&bytes)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Rejects a body that is valid JSON but not an object, with 422.
///
/// Every JSON body of this API is an object, but serde also builds a struct from an array of
/// its fields in order, so `[]` or `[{}, {}]` would otherwise pass as a job submission.
fn check_object(bytes: &[u8]) -> Result<(), ApiError> {
    let first = bytes
        .iter()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(&b'{') {
        return Ok(());
    }
    // Malformed text is a 400, whatever it starts with.
    parse_json::<serde::de::IgnoredAny>(bytes)?;
    let found = match first {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    };
    let message = format!("the request body must be a JSON object, found {found}");
    Err(ApiError::unprocessable(
        "invalid_body",
        message.clone(),
        vec![FieldError {
            field: "body".to_owned(),
            message,
            rule: None,
        }],
    ))
}

/// Reads a request body, failing with 413 past `limit` bytes without buffering more.
pub(crate) async fn read_limited(request: Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(error) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
            while let Some(cause) = source {
                if cause.is::<http_body_util::LengthLimitError>() {
                    return Err(ApiError::too_large(format!(
                        "the request body is larger than {limit} bytes (api.max_body_bytes)"
                    )));
                }
                source = cause.source();
            }
            Err(ApiError::bad_request(format!(
                "reading the request body failed: {error}"
            )))
        }
    }
}

/// Parses JSON: 400 for malformed text, 422 for a valid document of the wrong shape.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        if error.classify() == serde_json::error::Category::Data {
            ApiError::unprocessable(
                "invalid_body",
                format!("invalid request body: {error}"),
                vec![FieldError {
                    field: "body".to_owned(),
                    message: error.to_string(),
                    rule: None,
                }],
            )
        } else {
            ApiError::bad_request(format!("the request body is not valid JSON: {error}"))
        }
    })
}

/// The members of a JSON object in the order given, duplicate names included.
///
/// `serde_json::Map` keeps only the last of two members with the same name, so a request
/// could not get an error for a key given twice. Handlers that must reject duplicates read this
/// instead and check the names themselves.
#[derive(Debug, Default)]
pub(crate) struct JsonMembers(pub(crate) Vec<(String, Value)>);

impl<'de> Deserialize<'de> for JsonMembers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = JsonMembers;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonMembers, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(JsonMembers(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

/// Deserializes a job's UI context, which must be a JSON object.
///
/// Like every struct, [`Context`] would also be built from an array of its values in order, so
/// `"context": [null, null]` would pass as an empty context. Going through `deserialize_map`
/// accepts objects only, and keeps the checks for unknown and duplicate keys.
pub(crate) fn context_object<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Context, D::Error> {
    struct ContextVisitor;

    impl<'de> Visitor<'de> for ContextVisitor {
        type Value = Context;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a JSON object of context keys")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Context, A::Error> {
            Context::deserialize(MapAccessDeserializer::new(map))
        }
    }

    deserializer.deserialize_map(ContextVisitor)
}
