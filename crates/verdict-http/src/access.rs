//! Access logs and request ids: every request gets an `x-request-id` (the
//! caller's, if it is a sane one, else a fresh UUID v7), echoed in the
//! response and carried by a `request` span — method, route template,
//! request id and, once verified, the caller's role — so that every line
//! logged while answering it, the store's group writer included, names
//! it. One `info` line per answer adds its status and latency; a 5xx
//! problem body carries the id as `request_id`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{MakeRequestId, RequestId};
use tower_http::trace::TraceLayer;
use tracing::Span;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a caller.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// Whether a caller's `x-request-id` is kept: 1 to 128 characters from
/// `[A-Za-z0-9._:-]`, so that it can go into a log line or a header as
/// it is (no spaces, quotes or control characters to forge lines with).
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=REQUEST_ID_BYTES_MAX).contains(&value.len())
        && value.iter().all(|byte| byte.is_ascii_alphanumeric() || b"._:-".contains(byte))
}

/// Drops an `x-request-id` that is not [valid](is_valid_request_id) (or
/// sent twice), so that a fresh one is made for the request instead.
pub async fn drop_invalid_request_id(mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    let keep = match (sent.next(), sent.next()) {
        (None, _) => true,
        (Some(value), None) => is_valid_request_id(value.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if !keep {
        request.headers_mut().remove(&X_REQUEST_ID);
    }
    next.run(request).await
}

/// Makes a UUID v7 request id: time-ordered, so ids sort as requests came.
#[derive(Clone, Copy, Default)]
pub struct MakeRequestUuidV7;

impl MakeRequestId for MakeRequestUuidV7 {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Uuid::now_v7().to_string();
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// The route label of a request: its route template, `unmatched` when no
/// route matched (never the raw path: ids stay out of the access log's
/// keys, and a scanner's paths out of its cardinality).
pub fn route_of(request: &Request) -> &str {
    request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str)
}

fn request_id_of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-")
}

type MakeSpan = fn(&Request) -> Span;
type OnResponse = fn(&Response, Duration, &Span);

/// The tracing layer: a `request` span per request, one `info` line per
/// answer; nothing at the start (the answer's line has it all).
pub fn trace_layer()
-> TraceLayer<SharedClassifier<ServerErrorsAsFailures>, MakeSpan, (), OnResponse> {
    TraceLayer::new_for_http()
        .make_span_with(request_span as MakeSpan)
        .on_request(())
        .on_response(log_answer as OnResponse)
}

fn request_span(request: &Request) -> Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = %route_of(request),
        request_id = %request_id_of(request),
        role = tracing::field::Empty,
    )
}

fn log_answer(response: &Response, latency: Duration, _: &Span) {
    tracing::info!(
        status = response.status().as_u16(),
        // Microsecond precision, in milliseconds.
        latency_ms = latency.as_micros() as f64 / 1000.0,
        "answered"
    );
}

/// Records the verified caller's role on the request's span.
pub fn record_role(role: verdict_core::Role) {
    Span::current().record("role", tracing::field::display(role.as_str()));
}

/// A 5xx problem body's size limit when the request id is added to it.
const PROBLEM_BYTES_MAX: usize = 64 * 1024;

/// Adds `request_id` to 5xx problem+json bodies, whichever layer made
/// them (a handler, the panic catcher, the timeout, the database guard).
pub async fn request_id_in_problems(request: Request, next: Next) -> Response {
    let id = request.extensions().get::<RequestId>().map(|id| id.header_value().clone());
    let response = next.run(request).await;
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == b"application/problem+json");
    let Some(id) = id.and_then(|id| id.to_str().map(str::to_owned).ok()) else {
        return response;
    };
    if !response.status().is_server_error() || !is_problem {
        return response;
    }
    // Only a body of a known, small size is read and rewritten; any other
    // passes through unchanged.
    let small = axum::body::HttpBody::size_hint(response.body())
        .upper()
        .is_some_and(|bytes| bytes <= PROBLEM_BYTES_MAX as u64);
    if !small {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, PROBLEM_BYTES_MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut problem)) => {
            problem.insert("request_id".into(), serde_json::Value::String(id));
            serde_json::to_vec(&problem).map(Body::from).unwrap_or_else(|_| Body::from(bytes))
        }
        _ => Body::from(bytes),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, body)
}
