//! `/v1/sessions`: create, read, presence, end, audit trail.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use verdict_core::{EndCause, Party, Role, is_valid_id};
use verdict_store::{Ended, Idempotency, PresenceChange, PresenceSource, Session};

use crate::auth::Caller;
use crate::dto::{CreateSessionRequest, EndResponse, EventDto, Page, SessionDto, party_of};
use crate::paging::{PageQuery, next_cursor};
use crate::problem::{ApiError, Problem};
use crate::wire::Path;
use crate::wire::{JsonBody, OptionalJsonObject, StrictQuery, from_value, idempotency_key};
use crate::{ApiRouter, AppState};
use utoipa_axum::routes;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create_session))
        .routes(routes!(get_session))
        .routes(routes!(join))
        .routes(routes!(leave))
        .routes(routes!(heartbeat))
        .routes(routes!(end))
        .routes(routes!(events))
}

/// Loads a session the caller may see: its parties, the platform, admins.
async fn visible_session(state: &AppState, caller: &Caller, id: &str) -> Result<Session, ApiError> {
    if !is_valid_id(id) {
        return Err(ApiError::NotFound(format!(
            "session ids are 1 to 128 characters from [A-Za-z0-9_.:-]; no session {:?}",
            id.chars().take(32).collect::<String>()
        )));
    }
    let session = state
        .store
        .session(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("session {id} not found")))?;
    match caller.role {
        Role::Service | Role::Admin => Ok(session),
        role => match party_of(&session, role, &caller.id) {
            Some(_) => Ok(session),
            None => Err(ApiError::Forbidden(format!(
                "{role} {} is not a party to session {id}",
                caller.id
            ))),
        },
    }
}

#[utoipa::path(post, path = "/v1/sessions", tag = "sessions",
    request_body = CreateSessionRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the first answer again")),
    responses(
        (status = 201, body = SessionDto, description = "Created, `waiting`"),
        (status = 409, body = Problem, description = "The id is taken"),
        (status = 422, body = Problem, description = "A field is invalid"),
    ),
    security(("bearer" = [])))]
pub async fn create_session(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(&[Role::Service, Role::Admin])?;
    let idempotency = idempotency_for(&caller, "POST /v1/sessions", &headers, &body)?;
    let request: CreateSessionRequest = from_value(body)?;
    let new = request.validate(uuid::Uuid::now_v7().to_string(), &state.presence_sources)?;
    let created = state
        .store
        .create_session(new, &caller.actor(), idempotency.as_ref(), state.clock.now())
        .await?;
    let location = format!("/v1/sessions/{}", created.value.id);
    Ok(created_response(
        &location,
        created.replayed,
        SessionDto::new(&created.value, &state.settings.policies),
    ))
}

/// The idempotency key of a creating request, scoped to the caller and
/// route, with the canonical body (object keys sorted) as its fingerprint.
pub(crate) fn idempotency_for(
    caller: &Caller,
    route: &str,
    headers: &HeaderMap,
    body: &serde_json::Value,
) -> Result<Option<Idempotency>, ApiError> {
    Ok(idempotency_key(headers)?.map(|key| Idempotency {
        scope: format!("{}:{}:{route}", caller.role, caller.id),
        key,
        fingerprint: body.to_string(),
    }))
}

/// 201 with `Location`, and `Idempotent-Replayed: true` on a replay.
pub(crate) fn created_response<T: serde::Serialize>(
    location: &str,
    replayed: bool,
    body: T,
) -> impl IntoResponse + use<T> {
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    (StatusCode::CREATED, headers, Json(body))
}

#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path)),
    responses((status = 200, body = SessionDto), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SessionDto>, ApiError> {
    let session = visible_session(&state, &caller, &id).await?;
    Ok(Json(SessionDto::new(&session, &state.settings.policies)))
}

/// Presence is the party's own: only the session's customer or provider.
async fn presence(
    state: &AppState,
    caller: &Caller,
    id: &str,
    change: PresenceChange,
) -> Result<Session, ApiError> {
    let session = visible_session(state, caller, id).await?;
    let party: Party = party_of(&session, caller.role, &caller.id).ok_or_else(|| {
        ApiError::Forbidden(
            "only the session's customer or provider reports its own presence".into(),
        )
    })?;
    // Fixed at creation, so this read decides for good: nothing is counted.
    if let Some(room) = &session.room
        && room.presence_source == PresenceSource::Platform
    {
        return Err(ApiError::PresenceFromPlatform(format!(
            "session {id} takes presence from its video platform room {} only \
             (presence_source platform): the {party}'s own join, leave and heartbeat \
             are not counted",
            room.room
        )));
    }
    Ok(state
        .store
        .record_own_presence(id, party, change, &caller.actor(), &state.settings, state.clock.now())
        .await?)
}

#[utoipa::path(post, path = "/v1/sessions/{id}/join", tag = "sessions",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = SessionDto),
        (status = 409, body = Problem, description = "Terminal, or presence from the platform only (`presence-from-platform`)"),
        (status = 429, body = Problem, description = "The party's joins and leaves reached `max_presence_events_per_session`"),
    ),
    security(("bearer" = [])))]
pub async fn join(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SessionDto>, ApiError> {
    let session = presence(&state, &caller, &id, PresenceChange::Join).await?;
    Ok(Json(SessionDto::new(&session, &state.settings.policies)))
}

#[utoipa::path(post, path = "/v1/sessions/{id}/leave", tag = "sessions",
    params(("id" = String, Path)),
    responses((status = 200, body = SessionDto), (status = 409, body = Problem, description = "Terminal, or presence from the platform only (`presence-from-platform`)")),
    security(("bearer" = [])))]
pub async fn leave(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SessionDto>, ApiError> {
    let session = presence(&state, &caller, &id, PresenceChange::Leave).await?;
    Ok(Json(SessionDto::new(&session, &state.settings.policies)))
}

#[utoipa::path(post, path = "/v1/sessions/{id}/heartbeat", tag = "sessions",
    params(("id" = String, Path)),
    responses((status = 204, description = "Presence refreshed"), (status = 409, body = Problem, description = "Terminal, or presence from the platform only (`presence-from-platform`)")),
    security(("bearer" = [])))]
pub async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    presence(&state, &caller, &id, PresenceChange::Heartbeat).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sessions/{id}/end", tag = "sessions",
    params(("id" = String, Path)),
    request_body(content = Option<serde_json::Value>,
        description = "Any JSON object, or nothing: stored as `claimed`, never decides anything"),
    responses((status = 200, body = EndResponse), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn end(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJsonObject(claimed): OptionalJsonObject,
) -> Result<Json<EndResponse>, ApiError> {
    let session = visible_session(&state, &caller, &id).await?;
    // A terminal status never changes back, so a retried end is answered
    // from the read alone, without waiting for the writer.
    let ended = if session.status.is_terminal() {
        Ended { session, already_ended: true }
    } else {
        state
            .store
            .end_session(
                &id,
                &caller.actor(),
                claimed,
                EndCause::Requested,
                &state.settings,
                state.clock.now(),
            )
            .await?
    };
    let response = EndResponse::new(&ended, &state.settings.policies)?;
    if !ended.already_ended {
        crate::metrics::record_ended(&response.outcome.status, &response.outcome.reason);
    }
    Ok(Json(response))
}

#[utoipa::path(get, path = "/v1/sessions/{id}/events", tag = "sessions",
    params(
        ("id" = String, Path),
        ("after" = Option<String>, Query, description = "Cursor from the previous page"),
        ("limit" = Option<i64>, Query, description = "1 to 500, default 100"),
    ),
    responses((status = 200, body = Page<EventDto>), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    StrictQuery(page): StrictQuery<PageQuery>,
) -> Result<Json<Page<EventDto>>, ApiError> {
    let (after, limit) = (page.after_sequence()?, page.limit()?);
    visible_session(&state, &caller, &id).await?;
    let events = state.store.events_page(&id, after, limit).await?;
    let next_cursor = next_cursor(&events, limit, |event| event.seq.to_string());
    Ok(Json(Page { items: events.iter().map(EventDto::from).collect(), next_cursor }))
}
