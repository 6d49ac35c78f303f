//! `/v1/presence/{livekit,daily,twilio}`: presence straight from the video
//! platform. Clients can lie or crash; the platform saw who was in the room.
//!
//! These routes take no bearer token: the platform's signature is the
//! caller's proof, checked before the body is read. A platform without
//! credentials configured has no route (404). Every authentic event is
//! answered 200, whatever became of it (a platform retries anything
//! else): joins and leaves of a room's two parties count, repeats and
//! everything else are acknowledged and change nothing.

use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use serde::Serialize;
use utoipa::ToSchema;
use verdict_store::{PlatformDisposition, PlatformPresence};

use crate::problem::{ApiError, Problem};
use crate::providers::{self, HookError, Parsed};
use crate::{ApiRouter, AppState};
use utoipa_axum::routes;

pub fn router() -> ApiRouter {
    ApiRouter::new().routes(routes!(livekit)).routes(routes!(daily)).routes(routes!(twilio))
}

/// What became of one platform event.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceReceiptDto {
    /// `recorded` (counted), `duplicate` (seen before), `reconsidered`
    /// (arrived after the end, inside the finalization window: counted and
    /// the outcome re-decided), `late` (after the window: not counted, and
    /// since it would have changed the outcome, the session is flagged for
    /// review), `late_unchanged` (after the window, and it would not have
    /// changed anything) or `ignored`.
    pub disposition: String,
    /// Why an event was ignored: `not_presence` (another event type),
    /// `unknown_room` or `unknown_identity` (not one of the two parties).
    pub reason: Option<String>,
    pub session_id: Option<String>,
    /// The session's status after the event.
    pub status: Option<String>,
    /// True when a late event changed the session's outcome.
    pub corrected: bool,
}

/// Longest platform id, room or identity verdict stores, in bytes (as
/// `POST /v1/sessions` measures rooms and identities).
const NAME_MAX: usize = 256;

#[utoipa::path(post, path = "/v1/presence/livekit", tag = "presence",
    request_body(content = String, content_type = "application/webhook+json",
        description = "A LiveKit webhook event, signed with the API secret"),
    params(("Authorization" = String, Header, description = "LiveKit's signed token, with the body's SHA-256")),
    responses(
        (status = 200, body = PresenceReceiptDto, description = "Authentic; what became of it"),
        (status = 400, body = Problem, description = "Authentic but unreadable"),
        (status = 401, body = Problem, description = "Not signed by the configured key"),
        (status = 404, body = Problem, description = "LiveKit is not configured"),
    ),
)]
pub async fn livekit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PresenceReceiptDto>, ApiError> {
    let keys = state
        .presence
        .livekit
        .as_ref()
        .ok_or_else(|| not_configured("LiveKit", "livekit_api_key and livekit_api_secret"))?;
    let parsed = providers::livekit(keys, header_text(&headers, "authorization"), &body)
        .map_err(hook_error)?;
    accept(&state, parsed).await
}

#[utoipa::path(post, path = "/v1/presence/daily", tag = "presence",
    request_body(content = String, content_type = "application/json",
        description = "A Daily webhook event"),
    params(
        ("X-Webhook-Signature" = String, Header, description = "base64 HMAC-SHA256 of timestamp.body"),
        ("X-Webhook-Timestamp" = String, Header, description = "The signed timestamp"),
    ),
    responses(
        (status = 200, body = PresenceReceiptDto, description = "Authentic; what became of it"),
        (status = 400, body = Problem, description = "Authentic but unreadable"),
        (status = 401, body = Problem, description = "Not signed with the configured secret"),
        (status = 404, body = Problem, description = "Daily is not configured"),
    ),
)]
pub async fn daily(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PresenceReceiptDto>, ApiError> {
    let secret = state
        .presence
        .daily_secret
        .as_deref()
        .ok_or_else(|| not_configured("Daily", "daily_webhook_secret"))?;
    let parsed = providers::daily(
        secret,
        header_text(&headers, "x-webhook-signature"),
        header_text(&headers, "x-webhook-timestamp"),
        &body,
    )
    .map_err(hook_error)?;
    accept(&state, parsed).await
}

#[utoipa::path(post, path = "/v1/presence/twilio", tag = "presence",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "A Twilio Video status callback"),
    params(("X-Twilio-Signature" = String, Header, description = "base64 HMAC-SHA1 of the URL and the sorted parameters")),
    responses(
        (status = 200, body = PresenceReceiptDto, description = "Authentic; what became of it"),
        (status = 400, body = Problem, description = "Authentic but unreadable"),
        (status = 401, body = Problem, description = "Not signed with the configured auth token"),
        (status = 404, body = Problem, description = "Twilio is not configured"),
    ),
)]
pub async fn twilio(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PresenceReceiptDto>, ApiError> {
    let token = state
        .presence
        .twilio_auth_token
        .as_deref()
        .ok_or_else(|| not_configured("Twilio", "twilio_auth_token"))?;
    // Twilio signs the URL it called: ours as configured, else as this
    // request names it (behind a proxy, as the proxy says it was called;
    // a wrong guess only fails the signature, it never admits a forgery).
    let path = uri.path_and_query().map_or("/v1/presence/twilio", |path| path.as_str());
    let url = match &state.presence.public_url {
        Some(base) => format!("{base}{path}"),
        None => {
            let scheme = header_text(&headers, "x-forwarded-proto").unwrap_or("http");
            let host = header_text(&headers, "x-forwarded-host")
                .or_else(|| header_text(&headers, header::HOST.as_str()))
                .unwrap_or("localhost");
            format!("{scheme}://{host}{path}")
        }
    };
    let parsed = providers::twilio(token, header_text(&headers, "x-twilio-signature"), &url, &body)
        .map_err(hook_error)?;
    accept(&state, parsed).await
}

/// Records an authentic event and says what became of it.
async fn accept(state: &AppState, parsed: Parsed) -> Result<Json<PresenceReceiptDto>, ApiError> {
    let event = match parsed {
        Parsed::Presence(event) => event,
        Parsed::Ignored { .. } => return Ok(Json(ignored("not_presence", None))),
    };
    for (field, value) in [
        ("event id", &event.event_id),
        ("room", &event.room),
        ("identity", &event.identity),
        ("connection", &event.connection),
    ] {
        if value.len() > NAME_MAX {
            return Err(ApiError::BadRequest(format!(
                "the {field} is longer than {NAME_MAX} bytes"
            )));
        }
    }
    let source = event.source.as_str();
    let presence = PlatformPresence {
        source,
        event_id: event.event_id,
        room: event.room,
        identity: event.identity,
        connection: event.connection,
        kind: event.kind,
        at: event.at,
    };
    let (disposition, session) =
        state.store.record_platform_presence(presence, &state.settings, state.clock.now()).await?;
    let (name, ignored_because, corrected) = match &disposition {
        PlatformDisposition::Recorded => ("recorded", None, false),
        PlatformDisposition::Duplicate => ("duplicate", None, false),
        PlatformDisposition::Reconsidered(correction) => {
            ("reconsidered", None, correction.is_some())
        }
        PlatformDisposition::Late { changes: true } => ("late", None, false),
        PlatformDisposition::Late { changes: false } => ("late_unchanged", None, false),
        PlatformDisposition::UnknownRoom => ("ignored", Some("unknown_room"), false),
        PlatformDisposition::UnknownIdentity => ("ignored", Some("unknown_identity"), false),
    };
    metrics::counter!("verdict_presence_events_total", "source" => source, "disposition" => name)
        .increment(1);
    if let PlatformDisposition::Late { changes: true } = disposition {
        tracing::warn!(session = ?session.as_ref().map(|s| &s.id), source, "platform presence after finalization: flagged for review");
    }
    if let Some(reason) = ignored_because {
        return Ok(Json(ignored(reason, session.map(|session| session.id))));
    }
    Ok(Json(PresenceReceiptDto {
        disposition: name.to_owned(),
        reason: None,
        status: session.as_ref().map(|session| session.status.as_str().to_owned()),
        session_id: session.map(|session| session.id),
        corrected,
    }))
}

fn ignored(reason: &str, session_id: Option<String>) -> PresenceReceiptDto {
    PresenceReceiptDto {
        disposition: "ignored".to_owned(),
        reason: Some(reason.to_owned()),
        session_id,
        status: None,
        corrected: false,
    }
}

/// A header's value as text (`None` when absent or not text).
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn hook_error(error: HookError) -> ApiError {
    match error {
        HookError::Unauthorized(why) => ApiError::Unauthorized(why),
        HookError::BadPayload(why) => ApiError::BadRequest(why),
    }
}

fn not_configured(platform: &str, keys: &str) -> ApiError {
    ApiError::NotFound(format!("{platform} presence is not configured here (set {keys})"))
}
