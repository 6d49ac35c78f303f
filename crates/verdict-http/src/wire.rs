//! Wire formats: RFC 3339 instants and the JSON body extractor whose errors
//! name the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use verdict_core::UnixMillis;

use crate::problem::ApiError;

/// The largest request body accepted, in bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// `2026-11-28T09:00:00.000Z`: UTC, always milliseconds.
pub fn format_instant(at: UnixMillis) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.0) * 1_000_000)
        .ok()
        .and_then(|instant| instant.format(&format).ok())
        .unwrap_or_else(|| format!("invalid instant {}", at.0))
}

/// Parses an RFC 3339 timestamp with any offset, to millisecond precision,
/// between the years 1970 and 9999.
pub fn parse_instant(text: &str) -> Option<UnixMillis> {
    let instant = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let millis = i64::try_from(instant.unix_timestamp_nanos() / 1_000_000).ok()?;
    (millis >= 0).then_some(UnixMillis(millis))
}

/// A JSON request body. Syntax errors are 400; a body that is JSON but does
/// not fit the type is 422 with the path of the field (`price.amount_cents:
/// invalid type…`); a non-JSON content type is 415; over 64 KiB is 413.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_json_bytes(request, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::BadRequest("a JSON body is required".into()));
        }
        deserialize(&bytes).map(JsonBody)
    }
}

/// Path parameters whose rejection (a segment that is not UTF-8 once
/// percent-decoded, a value of the wrong type) is a problem+json 400 like
/// every other error, not axum's `text/plain`.
pub struct Path<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::BadRequest(format!(
                "the path cannot be read: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// A query string that must fit `T` exactly (unknown parameters too are a
/// 422 naming the problem).
pub struct StrictQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for StrictQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| StrictQuery(value))
            .map_err(|rejection| ApiError::Unprocessable(rejection.body_text()))
    }
}

/// An optional JSON object body: empty → `None`.
pub struct OptionalJsonObject(pub Option<serde_json::Value>);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_json_bytes(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonObject(None));
        }
        let value: serde_json::Value = deserialize(&bytes)?;
        if !value.is_object() {
            return Err(ApiError::Unprocessable("the body must be a JSON object or empty".into()));
        }
        Ok(OptionalJsonObject(Some(value)))
    }
}

async fn read_json_bytes<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("").to_ascii_lowercase());
    let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("the body exceeds {BODY_BYTES_MAX} bytes"))
        } else {
            ApiError::BadRequest(format!("the body could not be read: {rejection}"))
        }
    })?;
    if let Some(content_type) = content_type
        && !bytes.is_empty()
    {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content type {essence:?} is not JSON; send application/json"
            )));
        }
    }
    Ok(bytes)
}

/// Converts an already parsed body into `T`, with the same field-path
/// errors as [`JsonBody`].
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        if path == "." {
            ApiError::Unprocessable(message)
        } else {
            ApiError::Unprocessable(format!("{path}: {message}"))
        }
    })
}

/// The `Idempotency-Key` header, checked: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(ApiError::Unprocessable(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        )),
    }
}

fn deserialize<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            return ApiError::BadRequest(format!("malformed JSON: {inner}"));
        }
        let message = strip_position(&inner.to_string());
        if path == "." {
            ApiError::Unprocessable(message)
        } else {
            ApiError::Unprocessable(format!("{path}: {message}"))
        }
    })?;
    deserializer.end().map_err(|error| ApiError::BadRequest(format!("malformed JSON: {error}")))?;
    Ok(value)
}

/// serde_json appends " at line 1 column 17", which means nothing to a
/// client that sent the field path already.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// The longest window a health, a provider's stats or a ranking looks at
/// (30 days).
pub const WINDOW_HOURS_MAX: i64 = 720;

/// A `window_hours` query value: 24 when absent, else 1 to
/// [`WINDOW_HOURS_MAX`].
pub fn window_hours(value: Option<i64>) -> Result<i64, ApiError> {
    let hours = value.unwrap_or(24);
    if !(1..=WINDOW_HOURS_MAX).contains(&hours) {
        return Err(ApiError::Unprocessable(format!(
            "window_hours must be between 1 and {WINDOW_HOURS_MAX}"
        )));
    }
    Ok(hours)
}

/// An id in a path: one that cannot be an id names nothing (404).
pub fn checked_id<'a>(what: &str, id: &'a str) -> Result<&'a str, ApiError> {
    if verdict_core::is_valid_id(id) {
        Ok(id)
    } else {
        Err(ApiError::NotFound(format!(
            "{what} ids are 1 to 128 characters from [A-Za-z0-9_.:-]; there is no such {what}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_through_rfc3339_with_milliseconds() {
        let at = parse_instant("2026-11-28T09:00:00.123Z").unwrap();
        assert_eq!(format_instant(at), "2026-11-28T09:00:00.123Z");
        let shifted = parse_instant("2026-11-28T10:00:00+01:00").unwrap();
        assert_eq!(format_instant(shifted), "2026-11-28T09:00:00.000Z");
        assert_eq!(parse_instant("yesterday"), None);
        assert_eq!(parse_instant("1960-01-01T00:00:00Z"), None);
    }
}
