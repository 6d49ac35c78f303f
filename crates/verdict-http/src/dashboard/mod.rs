//! The admin dashboard (docs/verification.md): server-rendered pages, their styles and
//! one small script compiled into the binary; nothing from a CDN.
//!
//! Admins sign in with an admin token, exchanged for an HttpOnly,
//! SameSite=Strict cookie scoped to `/admin` (the JSON API stays
//! bearer-only, so the cookie can never drive it). A bearer token works on
//! these pages too. Anonymous browsers are sent to the sign-in page,
//! non-admins get 403, and neither sees any data.

mod charts;
mod insight;
mod view;

pub(crate) use view::head_common;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use verdict_core::{Party, Role, UnixMillis};
use verdict_store::monitor;

use crate::auth::Caller;
use crate::wire::StrictQuery;
use crate::{ApiError, AppState, Router};

/// The sign-in cookie.
pub const COOKIE: &str = "verdict_admin";
/// Review rows on the dashboard and per review page.
const REVIEW_ON_DASHBOARD: usize = 10;
const REVIEW_PAGE: usize = 25;

const STYLES: &str = include_str!("../../assets/dashboard.css");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const ICON: &str = include_str!("../../assets/favicon.svg");

pub(crate) fn router(state: &AppState) -> Router {
    Router::new()
        .route("/admin/sign-in", get(sign_in_page).post(sign_in))
        .route("/admin/sign-out", axum::routing::post(sign_out))
        .route("/admin/sessions/session-health", get(dashboard))
        .route("/admin/sessions/session-health/panel", get(panel))
        .route("/admin/review", get(review_page))
        .route("/admin/sessions/{id}", get(session_page))
        .route("/admin/providers/{id}", get(insight::provider_page))
        .route("/admin/assets/dashboard.css", get(|| async { asset("text/css", STYLES) }))
        .route("/admin/assets/dashboard.js", get(|| async { asset("text/javascript", SCRIPT) }))
        .route("/admin/assets/favicon.svg", get(|| async { asset("image/svg+xml", ICON) }))
        // What a browser asks for on its own, before any page names an icon.
        .route("/favicon.ico", get(|| async { asset("image/svg+xml", ICON) }))
        .layer(middleware::from_fn_with_state(
            state.dashboard_frame_ancestors.clone(),
            security_headers,
        ))
}

pub(crate) fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
}

/// Every admin page: no inline script, nothing cached, and no framing
/// unless `dashboard_frame_ancestors` names who may (then the CSP's
/// `frame-ancestors` says so and `X-Frame-Options`, which cannot name a
/// site, is left out).
pub(crate) async fn security_headers(
    State(frame_ancestors): State<crate::framing::FrameAncestors>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, frame_ancestors.content_security_policy());
    if frame_ancestors.is_none() {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Why a page is not shown.
enum Denied {
    /// No credentials, or a cookie that is no longer valid (then cleared).
    SignIn { clear: bool },
    /// A valid token of another role.
    Forbidden,
    /// A bearer token that is not valid.
    Unauthorized(String),
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::SignIn { clear } => {
                let mut response = (
                    StatusCode::SEE_OTHER,
                    [(header::LOCATION, HeaderValue::from_static("/admin/sign-in"))],
                )
                    .into_response();
                if clear {
                    response.headers_mut().insert(header::SET_COOKIE, cleared_cookie());
                }
                response
            }
            Denied::Forbidden => (
                StatusCode::FORBIDDEN,
                Html(
                    view::message(
                        "Admins only",
                        "This page is for admins. Sign in with an admin token.",
                    )
                    .into_string(),
                ),
            )
                .into_response(),
            Denied::Unauthorized(why) => {
                (StatusCode::UNAUTHORIZED, Html(view::message("Not signed in", &why).into_string()))
                    .into_response()
            }
        }
    }
}

/// The admin behind a page request: a bearer token, else the cookie.
fn admin(state: &AppState, headers: &HeaderMap) -> Result<Caller, Denied> {
    if let Some(token) = crate::auth::bearer_token(headers) {
        let token = token.map_err(|_| {
            Denied::Unauthorized("The Authorization header must be Bearer <token>.".into())
        })?;
        let caller = state
            .jwt
            .verify(token)
            .map_err(|_| Denied::Unauthorized("The bearer token is not valid.".into()))?;
        return if caller.role == Role::Admin { Ok(caller) } else { Err(Denied::Forbidden) };
    }
    let Some(token) = cookie(headers, COOKIE) else { return Err(Denied::SignIn { clear: false }) };
    match state.jwt.verify(token) {
        Ok(caller) if caller.role == Role::Admin => Ok(caller),
        Ok(_) => Err(Denied::Forbidden),
        Err(_) => Err(Denied::SignIn { clear: true }),
    }
}

/// The value of cookie `name`, if the request carries it.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

fn cleared_cookie() -> HeaderValue {
    HeaderValue::from_static("verdict_admin=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether the browser reached us over TLS (directly or through a proxy
/// that says so): then the cookie is `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

fn html(markup: maud::Markup) -> Response {
    Html(markup.into_string()).into_response()
}

async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // Already signed in: straight to the dashboard.
    if admin(&state, &headers).is_ok() {
        return see_other("/admin/sessions/session-health");
    }
    html(view::sign_in(None))
}

fn see_other(location: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, HeaderValue::from_static(location))])
        .into_response()
}

#[derive(Deserialize)]
struct SignInForm {
    token: String,
}

async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    let refuse = |status: StatusCode, why: &str| {
        (status, Html(view::sign_in(Some(why)).into_string())).into_response()
    };
    let Ok(Form(form)) = form else {
        return refuse(StatusCode::BAD_REQUEST, "The form needs a token field.");
    };
    let token = form.token.trim();
    let (caller, expires_at) = match state.jwt.verify_with_expiry(token) {
        Ok(verified) => verified,
        Err(_) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "That token is not valid (forged, expired or malformed).",
            );
        }
    };
    if caller.role != Role::Admin {
        return refuse(StatusCode::FORBIDDEN, "That token is not an admin's.");
    }
    let max_age = (expires_at - verdict_store::clock::system_now_millis() / 1000).max(0);
    let secure = if over_tls(&headers) { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    let mut response = see_other("/admin/sessions/session-health");
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
            response
        }
        Err(_) => {
            refuse(StatusCode::BAD_REQUEST, "That token has characters a cookie cannot carry.")
        }
    }
}

async fn sign_out() -> Response {
    let mut response = see_other("/admin/sign-in");
    response.headers_mut().insert(header::SET_COOKIE, cleared_cookie());
    response
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowQuery {
    window_hours: Option<i64>,
}

impl WindowQuery {
    fn hours(&self) -> Result<i64, ApiError> {
        crate::wire::window_hours(self.window_hours)
    }
}

/// Everything the dashboard shows, read at one instant.
pub(crate) struct Snapshot {
    pub now: UnixMillis,
    pub health: monitor::Health,
    pub hourly: Vec<monitor::HourlyScore>,
    pub outbox: verdict_store::OutboxHealth,
    pub dead: Vec<verdict_store::OutboxRow>,
    pub review: Vec<monitor::ReviewItem>,
    pub refresh_seconds: u64,
}

async fn snapshot(state: &AppState, window_hours: i64) -> Result<Snapshot, ApiError> {
    let now = state.clock.now();
    let store = &state.store;
    let ((health, hourly), (review, _), outbox, dead) = tokio::try_join!(
        monitor::health_with_hourly(store, &state.settings, now, window_hours, 24),
        monitor::review(store.as_ref(), &state.settings, now, None, REVIEW_ON_DASHBOARD),
        store.outbox_health(now.plus_seconds(-monitor::OVERDUE_AFTER_SECONDS)),
        store.outbox(Some("dead"), None, 10),
    )?;
    crate::metrics::record_health(&health);
    Ok(Snapshot {
        now,
        health,
        hourly,
        outbox,
        dead,
        review,
        refresh_seconds: state.dashboard_refresh_seconds,
    })
}

async fn dashboard(
    State(state): State<AppState>,
    headers: HeaderMap,
    StrictQuery(query): StrictQuery<WindowQuery>,
) -> Result<Response, ApiError> {
    health_page(&state, &headers, &query, view::dashboard).await
}

/// The dashboard's panel alone, for its in-place refresh.
async fn panel(
    State(state): State<AppState>,
    headers: HeaderMap,
    StrictQuery(query): StrictQuery<WindowQuery>,
) -> Result<Response, ApiError> {
    health_page(&state, &headers, &query, view::panel).await
}

async fn health_page(
    state: &AppState,
    headers: &HeaderMap,
    query: &WindowQuery,
    render: fn(&Snapshot) -> maud::Markup,
) -> Result<Response, ApiError> {
    if let Err(denied) = admin(state, headers) {
        return Ok(denied.into_response());
    }
    let snapshot = snapshot(state, query.hours()?).await?;
    Ok(html(render(&snapshot)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewQuery {
    reason: Option<String>,
    after: Option<String>,
}

async fn review_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    StrictQuery(query): StrictQuery<ReviewQuery>,
) -> Result<Response, ApiError> {
    if let Err(denied) = admin(&state, &headers) {
        return Ok(denied.into_response());
    }
    // The page's form sends an empty reason for "any".
    let reason = query.reason.as_deref().filter(|reason| !reason.is_empty());
    let filter = crate::routes::admin::review_filter(reason, None)?;
    if let Some(after) = &query.after
        && !verdict_core::is_valid_id(after)
    {
        return Err(ApiError::Unprocessable(
            "after must be a cursor from the previous page".into(),
        ));
    }
    let now = state.clock.now();
    let mut items = Vec::new();
    let mut cursor = query.after.clone();
    // A filtered page reads on until it is full or the queue ends (each
    // read scans a bounded number of sessions).
    for _ in 0..8 {
        let limit = REVIEW_PAGE - items.len();
        let (page, next) = verdict_store::consistency::review(
            state.store.as_ref(),
            &state.settings,
            now,
            cursor.as_deref(),
            limit,
            filter,
        )
        .await?;
        items.extend(page);
        cursor = next;
        if items.len() >= REVIEW_PAGE || cursor.is_none() {
            break;
        }
    }
    Ok(html(view::review(&items, filter.reason, cursor.as_deref(), now)))
}

/// A session's decision explained.
pub(crate) struct SessionView {
    pub session: verdict_store::Session,
    pub events: Vec<verdict_store::AuditEvent>,
    pub payouts: Vec<verdict_store::Payout>,
    pub postings: Vec<verdict_store::Posting>,
    pub deliveries: Vec<verdict_store::OutboxRow>,
    /// The policy the decision used (stored with it), else today's.
    pub policy: verdict_core::Policy,
    pub policy_stored: bool,
    pub until: UnixMillis,
    pub customer: Vec<verdict_core::Interval>,
    pub provider: Vec<verdict_core::Interval>,
    pub together: Vec<verdict_core::Interval>,
    pub overlap_millis: i64,
    pub rederived: Option<verdict_core::Outcome>,
    pub findings: Vec<&'static str>,
    pub now: UnixMillis,
}

async fn session_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if let Err(denied) = admin(&state, &headers) {
        return Ok(denied.into_response());
    }
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            Html(
                view::message("No such session", "There is no session with this id.").into_string(),
            ),
        )
            .into_response()
    };
    if !verdict_core::is_valid_id(&id) {
        return Ok(not_found());
    }
    let Some(session) = state.store.session(&id).await? else { return Ok(not_found()) };
    let (events, payouts, postings, deliveries) = tokio::try_join!(
        state.store.events(&id),
        state.store.payouts(Some(&id), None, 50),
        state.store.postings(&id),
        state.store.outbox(None, Some(&id), 50),
    )?;
    let now = state.clock.now();
    let configured = *state.settings.policies.for_kind(session.kind);
    let audit = verdict_store::assemble_audit(&session, &events, &payouts, &postings);
    let policy = audit.policy.unwrap_or(configured);
    let until = session.ended_at().unwrap_or(now);
    let judged_at = audit.decided_at.unwrap_or(until).max(until);
    let intervals =
        |party| verdict_core::intervals_judged(&audit.events, party, until, judged_at, &policy);
    let (customer, provider) = (intervals(Party::Customer), intervals(Party::Provider));
    let (overlap_millis, _) = verdict_core::overlap(&customer, &provider);
    let together: Vec<_> = verdict_core::intersections(&customer, &provider).collect();
    let view = SessionView {
        rederived: audit.rederive(&configured),
        findings: audit
            .findings(&configured, now)
            .iter()
            .map(verdict_core::Finding::kind)
            .collect(),
        session,
        events,
        payouts,
        postings,
        deliveries,
        policy,
        policy_stored: audit.policy.is_some(),
        until,
        customer,
        provider,
        together,
        overlap_millis,
        now,
    };
    Ok(html(view::session(&view)))
}
