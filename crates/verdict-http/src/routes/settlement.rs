//! Settlement resources: users, requests and the provider queue, payouts
//! and earnings.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use serde::Deserialize;
use verdict_core::{Role, is_valid_id};
use verdict_store::{AssignmentCursor, RequestStatus};

use crate::auth::Caller;
use crate::dto::{
    AssignmentDto, CreateRequestBody, EarningsDto, Page, PayoutDto, RequestDto, SessionDto,
    UpsertUserRequest, UserDto,
};
use crate::paging::{PageQuery, next_cursor};
use crate::problem::{ApiError, Problem};
use crate::routes::sessions::{created_response, idempotency_for};
use crate::wire::StrictQuery;
use crate::wire::{JsonBody, from_value};
use crate::wire::{Path, checked_id};
use crate::{ApiRouter, AppState};
use utoipa_axum::routes;

const PAGE: i64 = 100;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(upsert_user))
        .routes(routes!(create_request))
        .routes(routes!(get_request))
        .routes(routes!(accept_request))
        .routes(routes!(cancel_request))
        .routes(routes!(assignments))
        .routes(routes!(payouts))
        .routes(routes!(earnings))
        .routes(routes!(retry_payout))
}

#[utoipa::path(put, path = "/v1/users/{id}", tag = "settlement",
    params(("id" = String, Path)),
    request_body = UpsertUserRequest,
    responses((status = 200, body = UserDto), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn upsert_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpsertUserRequest>,
) -> Result<Json<UserDto>, ApiError> {
    caller.require(&[Role::Service, Role::Admin])?;
    if !is_valid_id(&id) {
        return Err(ApiError::Unprocessable(
            "user ids are 1 to 128 characters from [A-Za-z0-9_.:-]".into(),
        ));
    }
    let user = state.store.upsert_user(body.validate(&id, state.clock.now())?).await?;
    Ok(Json(UserDto::from(&user)))
}

#[utoipa::path(post, path = "/v1/requests", tag = "settlement",
    request_body = CreateRequestBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the first answer again")),
    responses(
        (status = 201, body = RequestDto),
        (status = 422, body = Problem),
        (status = 429, body = Problem, description = "The customer has `max_open_requests_per_customer` pending requests"),
    ),
    security(("bearer" = [])))]
pub async fn create_request(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(&[Role::Customer, Role::Service])?;
    let idempotency = idempotency_for(&caller, "POST /v1/requests", &headers, &body)?;
    let request: CreateRequestBody = from_value(body)?;
    let new = request.validate(uuid::Uuid::now_v7().to_string())?;
    if caller.role == Role::Customer && new.customer_id != caller.id {
        return Err(ApiError::Forbidden("customers create requests for themselves only".into()));
    }
    let created = state
        .store
        .create_request(
            new,
            &caller.actor(),
            idempotency.as_ref(),
            &state.settings.limits,
            state.clock.now(),
        )
        .await?;
    let location = format!("/v1/requests/{}", created.value.id);
    Ok(created_response(&location, created.replayed, RequestDto::from(&created.value)))
}

#[utoipa::path(get, path = "/v1/requests/{id}", tag = "settlement",
    params(("id" = String, Path)),
    responses((status = 200, body = RequestDto), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_request(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestDto>, ApiError> {
    let id = checked_id("request", &id)?;
    let request = state
        .store
        .request(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("request {id} not found")))?;
    let allowed = match caller.role {
        Role::Service | Role::Admin => true,
        Role::Customer => request.customer_id == caller.id,
        Role::Provider => request.candidate_provider_ids.contains(&caller.id),
        Role::System => false,
    };
    if !allowed {
        return Err(ApiError::Forbidden(format!(
            "{} {} may not see request {id}",
            caller.role, caller.id
        )));
    }
    Ok(Json(RequestDto::from(&request)))
}

#[utoipa::path(post, path = "/v1/requests/{id}/accept", tag = "settlement",
    params(("id" = String, Path)),
    responses(
        (status = 201, body = SessionDto, description = "The session, `waiting`"),
        (status = 409, body = Problem, description = "Already accepted, or no longer offered"),
    ),
    security(("bearer" = [])))]
pub async fn accept_request(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(&[Role::Provider])?;
    let id = checked_id("request", &id)?;
    let request = state
        .store
        .request(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("request {id} not found")))?;
    if !request.candidate_provider_ids.contains(&caller.id) {
        return Err(ApiError::Forbidden(format!(
            "provider {} is not a candidate for request {id}",
            caller.id
        )));
    }
    // Past its time to live a request is over, whether or not the sweeper
    // has marked it `expired` yet.
    let now = state.clock.now();
    let ttl = state.settings.limits.request_ttl_seconds;
    if request.status == RequestStatus::Pending && now >= request.created_at.plus_seconds(ttl) {
        return Err(ApiError::Conflict(format!(
            "request {id} expired: it was pending for request_ttl_seconds ({ttl} s)"
        )));
    }
    let session_id = uuid::Uuid::now_v7().to_string();
    let session = state
        .store
        .accept_request(id, &caller.id, &session_id, &caller.actor(), state.clock.now())
        .await?;
    Ok(created_response(
        &format!("/v1/sessions/{}", session.id),
        false,
        SessionDto::new(&session, &state.settings.policies),
    ))
}

#[utoipa::path(post, path = "/v1/requests/{id}/cancel", tag = "settlement",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = RequestDto, description = "`cancelled`, its assignments removed"),
        (status = 403, body = Problem, description = "Neither its customer nor the service"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "No longer pending"),
    ),
    security(("bearer" = [])))]
pub async fn cancel_request(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestDto>, ApiError> {
    caller.require(&[Role::Customer, Role::Service])?;
    let id = checked_id("request", &id)?;
    let request = state
        .store
        .request(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("request {id} not found")))?;
    if caller.role == Role::Customer && request.customer_id != caller.id {
        return Err(ApiError::Forbidden(format!(
            "customer {} may cancel its own requests only",
            caller.id
        )));
    }
    let request = state.store.cancel_request(id, &caller.actor(), state.clock.now()).await?;
    Ok(Json(RequestDto::from(&request)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentsQuery {
    provider_id: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/assignments", tag = "settlement",
    params(
        ("provider_id" = Option<String>, Query, description = "Admins only: one provider's queue"),
        ("after" = Option<String>, Query, description = "Cursor from the previous page"),
        ("limit" = Option<i64>, Query, description = "1 to 500, default 100"),
    ),
    responses((status = 200, body = Page<AssignmentDto>), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn assignments(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(filter): StrictQuery<AssignmentsQuery>,
) -> Result<Json<Page<AssignmentDto>>, ApiError> {
    caller.require(&[Role::Provider, Role::Admin])?;
    let provider_id = match caller.role {
        Role::Provider => match filter.provider_id {
            Some(other) if other != caller.id => {
                return Err(ApiError::Forbidden("providers see their own queue only".into()));
            }
            _ => Some(caller.id.clone()),
        },
        _ => filter.provider_id,
    };
    let page = PageQuery { after: filter.after, limit: filter.limit };
    let limit = page.limit()?;
    let after = page.after.as_deref().map(parse_assignment_cursor).transpose()?;
    let items = state.store.assignments(provider_id.as_deref(), after.as_ref(), limit).await?;
    let next_cursor = next_cursor(&items, limit, |last| {
        format!("{}~{}~{}", last.created_at.0, last.request_id, last.provider_id)
    });
    Ok(Json(Page { items: items.iter().map(AssignmentDto::from).collect(), next_cursor }))
}

/// An assignments cursor: `<created_at ms>~<request id>~<provider id>`
/// (`~` is not an id character).
fn parse_assignment_cursor(text: &str) -> Result<AssignmentCursor, ApiError> {
    let invalid =
        || ApiError::Unprocessable("after must be a cursor returned as next_cursor".into());
    let mut parts = text.split('~');
    let (Some(created_at), Some(request_id), Some(provider_id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let created_at = created_at.parse::<i64>().map_err(|_| invalid())?;
    if !is_valid_id(request_id) || !is_valid_id(provider_id) {
        return Err(invalid());
    }
    Ok(AssignmentCursor {
        created_at: verdict_core::UnixMillis(created_at),
        request_id: request_id.to_owned(),
        provider_id: provider_id.to_owned(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutsQuery {
    session_id: Option<String>,
    after: Option<String>,
}

#[utoipa::path(get, path = "/v1/payouts", tag = "settlement",
    params(
        ("session_id" = Option<String>, Query, description = "One session's payout"),
        ("after" = Option<String>, Query, description = "Cursor from the previous page"),
    ),
    responses((status = 200, body = Page<PayoutDto>)),
    security(("bearer" = [])))]
pub async fn payouts(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(filter): StrictQuery<PayoutsQuery>,
) -> Result<Json<Page<PayoutDto>>, ApiError> {
    caller.require(&[Role::Service, Role::Admin])?;
    for (name, value) in [("session_id", &filter.session_id), ("after", &filter.after)] {
        if let Some(value) = value
            && !is_valid_id(value)
        {
            return Err(ApiError::Unprocessable(format!(
                "{name} must be an id from [A-Za-z0-9_.:-]"
            )));
        }
    }
    let items =
        state.store.payouts(filter.session_id.as_deref(), filter.after.as_deref(), PAGE).await?;
    let next_cursor =
        (items.len() as i64 == PAGE).then(|| items.last().map(|p| p.id.clone())).flatten();
    Ok(Json(Page { items: items.iter().map(PayoutDto::from).collect(), next_cursor }))
}

#[utoipa::path(get, path = "/v1/providers/{id}/earnings", tag = "settlement",
    params(("id" = String, Path)),
    responses((status = 200, body = EarningsDto)),
    security(("bearer" = [])))]
pub async fn earnings(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EarningsDto>, ApiError> {
    let id = checked_id("provider", &id)?;
    let allowed = caller.role == Role::Admin || (caller.role == Role::Provider && caller.id == id);
    if !allowed {
        return Err(ApiError::Forbidden("earnings are for the provider itself and admins".into()));
    }
    let totals = state.store.earnings(id).await?;
    Ok(Json(EarningsDto::new(id, &totals)))
}

#[utoipa::path(post, path = "/v1/admin/payouts/{id}/retry", tag = "settlement",
    params(("id" = String, Path, description = "The payout (`po_<session id>`)")),
    responses(
        (status = 200, body = PayoutDto, description = "Queued again: pending, due now"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Paid, reversed, or still being delivered"),
    ),
    security(("bearer" = [])))]
/// Queues again a payout that is `failed` or whose delivery is `dead`. Its
/// next attempt asks Stripe for a transfer first and takes a new
/// idempotency key only when there is none.
pub async fn retry_payout(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PayoutDto>, ApiError> {
    caller.require(&[Role::Admin])?;
    let id = checked_id("payout", &id)?;
    let payout = state.store.retry_payout(id, state.clock.now()).await?;
    Ok(Json(PayoutDto::from(&payout)))
}
