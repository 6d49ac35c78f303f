//! CORS for the parties' browsers (`cors_allowed_origins`): a page on a
//! listed origin may call `/v1/*`; any other origin, and any other path,
//! gets no CORS header at all. tower-http's layer answers the preflights.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The origins allowed and the layer that serves them.
#[derive(Clone)]
pub struct Cors {
    origins: Arc<[HeaderValue]>,
    layer: CorsLayer,
}

/// Methods of `/v1/*` a browser may use.
const METHODS: [Method; 3] = [Method::GET, Method::POST, Method::PUT];

impl Cors {
    /// `None` for no origin (the default): no CORS header is ever sent.
    /// Each origin is `scheme://host[:port]`, as browsers send `Origin`.
    pub fn new(origins: &[String]) -> Result<Option<Cors>, String> {
        if origins.is_empty() {
            return Ok(None);
        }
        let origins = origins
            .iter()
            .map(|origin| parse_origin(origin))
            .collect::<Result<Arc<[HeaderValue]>, String>>()?;
        let layer = CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods(METHODS)
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static("idempotent-replayed"),
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(600));
        Ok(Some(Cors { origins, layer }))
    }
}

/// An origin as a browser sends it: `http` or `https`, a host, maybe a
/// port; no path, no wildcard.
fn parse_origin(origin: &str) -> Result<HeaderValue, String> {
    let refuse = || {
        format!(
            "cors_allowed_origins: {origin:?} is not an origin (scheme://host[:port], e.g. https://app.example.com)"
        )
    };
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(refuse)?;
    let host_and_port_only = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !host_and_port_only {
        return Err(refuse());
    }
    HeaderValue::from_str(origin).map_err(|_| refuse())
}

/// Hands a request from a listed origin to `/v1/*` to tower-http's CORS
/// layer (a preflight is answered there, 204); any other goes on untouched.
pub async fn cors(State(cors): State<Cors>, request: Request, next: Next) -> Response {
    let listed =
        request.headers().get(header::ORIGIN).is_some_and(|origin| cors.origins.contains(origin));
    if !listed || !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let preflight = request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let Ok(mut response) = cors.layer.layer(next).oneshot(request).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}
