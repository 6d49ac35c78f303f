//! Operational and miscellaneous routes: liveness, readiness, the OpenAPI
//! document, the test clock, notifications and the legacy 410s.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Deserialize;
use verdict_core::{Party, Role};

use crate::auth::Caller;
use crate::dto::{AdvanceClockRequest, ClockDto, HealthDto, NotificationDto, OutboxRowDto, Page};
use crate::problem::{ApiError, Problem, problem_response};
use crate::wire::StrictQuery;
use crate::wire::{JsonBody, format_instant};
use crate::{ApiRouter, AppState};
use utoipa_axum::routes;

/// How long readiness waits for the database before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
const ADVANCE_SECONDS_MAX: i64 = 365 * 24 * 3600;
const NOTIFICATIONS_PAGE: i64 = 100;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi))
        .routes(routes!(advance_clock))
        .routes(routes!(notifications))
        .routes(routes!(outbox))
        .route("/api/sessions/{id}/status", any(legacy_session))
        .route("/api/sessions/{id}/cancel", any(legacy_session))
        .route("/api/sessions/{id}/complete", any(legacy_session))
        .route("/api/sessions/end", any(legacy_end))
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = HealthDto, description = "The process is alive")))]
pub async fn healthz(State(state): State<AppState>) -> Json<HealthDto> {
    Json(HealthDto { status: "ok".into(), database: state.store.backend().into() })
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = HealthDto), (status = 503, body = Problem)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<HealthDto>, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {
            Ok(Json(HealthDto { status: "ready".into(), database: state.store.backend().into() }))
        }
        Ok(Err(error)) => Err(ApiError::Unavailable(error.to_string())),
        Err(_) => Err(ApiError::Unavailable("the database did not answer within 2 s".into())),
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document")))]
pub async fn openapi() -> Response {
    Json(crate::openapi_document()).into_response()
}

#[utoipa::path(post, path = "/v1/test-clock/advance", tag = "operations",
    request_body = AdvanceClockRequest,
    responses((status = 200, body = ClockDto), (status = 404, body = Problem, description = "Not a manual clock")),
    security(("bearer" = [])))]
pub async fn advance_clock(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    body: Result<JsonBody<AdvanceClockRequest>, ApiError>,
) -> Result<Json<ClockDto>, ApiError> {
    // Without a manual clock the route does not exist, whoever asks.
    let Some(manual) = state.clock.as_manual() else {
        return Err(ApiError::NotFound("the test clock exists only with --clock manual".into()));
    };
    caller?.require(&[Role::Admin])?;
    let JsonBody(request) = body?;
    if !(1..=ADVANCE_SECONDS_MAX).contains(&request.seconds) {
        return Err(ApiError::Unprocessable(format!(
            "seconds must be between 1 and {ADVANCE_SECONDS_MAX}, got {}",
            request.seconds
        )));
    }
    let now = manual.advance_millis(request.seconds * 1000);
    Ok(Json(ClockDto { now: format_instant(now) }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsQuery {
    after: Option<String>,
}

#[utoipa::path(get, path = "/v1/notifications", tag = "sessions",
    params(("after" = Option<String>, Query, description = "Cursor from the previous page")),
    responses((status = 200, body = Page<NotificationDto>)),
    security(("bearer" = [])))]
pub async fn notifications(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(query): StrictQuery<NotificationsQuery>,
) -> Result<Json<Page<NotificationDto>>, ApiError> {
    let after = match query.after.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::Unprocessable("after must be a cursor returned as next_cursor".into())
        })?),
    };
    let party = match caller.role {
        Role::Customer => Party::Customer,
        Role::Provider => Party::Provider,
        // The platform and admins receive no notifications of their own.
        _ => {
            return Ok(Json(Page { items: Vec::new(), next_cursor: None }));
        }
    };
    let items = state.store.notifications(party, &caller.id, after, NOTIFICATIONS_PAGE).await?;
    let next_cursor = (items.len() as i64 == NOTIFICATIONS_PAGE)
        .then(|| items.last().map(|last| last.id.to_string()))
        .flatten();
    Ok(Json(Page { items: items.iter().map(NotificationDto::from).collect(), next_cursor }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxQuery {
    state: Option<String>,
}

#[utoipa::path(get, path = "/v1/admin/outbox", tag = "operations",
    params(("state" = Option<String>, Query, description = "`pending`, `delivered` or `dead`")),
    responses((status = 200, body = Page<OutboxRowDto>, description = "Newest first, at most 500")),
    security(("bearer" = [])))]
pub async fn outbox(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(query): StrictQuery<OutboxQuery>,
) -> Result<Json<Page<OutboxRowDto>>, ApiError> {
    caller.require(&[Role::Admin])?;
    if let Some(wanted) = query.state.as_deref()
        && !["pending", "delivered", "dead"].contains(&wanted)
    {
        return Err(ApiError::Unprocessable("state must be pending, delivered or dead".into()));
    }
    let rows =
        state.store.outbox(query.state.as_deref(), None, verdict_store::PAGE_LIMIT_MAX).await?;
    Ok(Json(Page { items: rows.iter().map(OutboxRowDto::from).collect(), next_cursor: None }))
}

/// The old routes let a client set the status. They answer 410 before any
/// authentication and change nothing.
async fn legacy_session(uri: Uri) -> Response {
    let id = uri.path().split('/').nth(3).unwrap_or_default().to_owned();
    let successor = if verdict_core::is_valid_id(&id) {
        format!("/v1/sessions/{id}/end")
    } else {
        "/v1/sessions/{id}/end".to_owned()
    };
    gone(&successor)
}

async fn legacy_end() -> Response {
    gone("/v1/sessions/{id}/end")
}

fn gone(successor: &str) -> Response {
    let mut response = problem_response(
        StatusCode::GONE,
        "gone",
        "Gone",
        format!(
            "clients no longer set a session's status; the server decides it: call POST {successor}"
        ),
    );
    if let Ok(link) = HeaderValue::from_str(&format!("<{successor}>; rel=\"successor-version\"")) {
        response.headers_mut().insert(header::LINK, link);
    }
    response
}
