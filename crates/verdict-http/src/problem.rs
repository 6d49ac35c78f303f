//! RFC 9457 problem details: the one error type of the HTTP layer and its
//! mapping from store errors. 5xx causes are logged, never sent.
//!
//! Problem `type`s are stable URNs, documented in the README:
//! `urn:verdict:problem:<slug>`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use verdict_store::StoreError;

/// An RFC 9457 problem body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:verdict:problem:<slug>`, stable.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// On 5xx answers: the request's `x-request-id`, to find its log lines
    /// (added on the way out by `access::request_id_in_problems`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// Malformed syntax: the body is not JSON at all.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed, but a field is wrong.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    /// A bound on what one caller may make the service keep is reached;
    /// retrying does not help until the caller's state changes.
    #[error("{0}")]
    LimitReached(String),
    /// A party's own presence call on a session whose presence comes from
    /// its video platform only (`presence_source` `platform`).
    #[error("{0}")]
    PresenceFromPlatform(String),
    /// A bug or an unexpected failure: logged with its cause, answered 500.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not Found"),
            ApiError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method Not Allowed")
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::BadRequest(_) => {
                (StatusCode::BAD_REQUEST, "malformed-request", "Malformed Request")
            }
            ApiError::Unprocessable(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", "Invalid Field")
            }
            ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload Too Large")
            }
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported Media Type",
            ),
            ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service Unavailable")
            }
            ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal Server Error")
            }
            ApiError::LimitReached(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "limit-reached", "Limit Reached")
            }
            ApiError::PresenceFromPlatform(_) => {
                (StatusCode::CONFLICT, "presence-from-platform", "Presence From Platform")
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

/// A problem+json response with any status (used by the legacy routes too).
pub fn problem_response(status: StatusCode, slug: &str, title: &str, detail: String) -> Response {
    let body = Problem {
        problem_type: format!("urn:verdict:problem:{slug}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
        request_id: None,
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let detail = match self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                "an unexpected error occurred; it has been logged".to_owned()
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                "the database is unavailable; retry later".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = problem_response(status, slug, title, detail);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::NotFound { entity, id } => {
                ApiError::NotFound(format!("{entity} {id} not found"))
            }
            StoreError::Conflict(detail) => ApiError::Conflict(detail),
            StoreError::Unprocessable(detail) => ApiError::Unprocessable(detail),
            StoreError::Unavailable(detail) => ApiError::Unavailable(detail),
            StoreError::LimitReached(detail) => ApiError::LimitReached(detail),
            error @ (StoreError::Corrupt(_) | StoreError::Internal(_)) => {
                ApiError::Internal(error.to_string())
            }
        }
    }
}
