//! The HTTP layer of verdict: axum routes, the caller extractor, wire types
//! and problem+json errors.
//!
//! API boundary: handlers turn DTOs into core types, call one store method,
//! and turn the result back into DTOs. No SQL here, and only this crate
//! knows status codes and JSON field names.

pub mod access;
pub mod auth;
pub mod cors;
mod dashboard;
pub mod demo_room;
pub mod dto;
pub mod framing;
pub mod import;
pub mod jwt_crypto;
pub mod metrics;
pub mod paging;
pub mod problem;
pub mod providers;
pub mod rate_limit;
mod routes;
pub mod wire;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use verdict_store::clock::Clock;
use verdict_store::{Settings, Store};

pub use auth::{Caller, JwtKeys, JwtSecret};
pub use problem::{ApiError, Problem};
use wire::BODY_BYTES_MAX;

/// Everything a handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// Policy per kind and payout provider, from configuration.
    pub settings: Settings,
    pub jwt: Arc<JwtKeys>,
    /// How often the dashboard refreshes itself.
    pub dashboard_refresh_seconds: u64,
    /// The video platforms' webhook credentials.
    pub presence: Arc<PresenceHooks>,
    /// Writes allowed per caller (docs/limits.md).
    pub rate_limit: rate_limit::RateLimit,
    /// Whose presence counts for a session created with a room, per kind.
    pub presence_sources: verdict_store::PresenceSources,
    /// Browsers' origins allowed to call `/v1/*` (`cors_allowed_origins`).
    pub cors: Option<cors::Cors>,
    /// Who may frame the dashboard (`dashboard_frame_ancestors`).
    pub dashboard_frame_ancestors: framing::FrameAncestors,
}

/// Credentials of the video platforms whose presence webhooks verdict
/// takes; a platform without them has its route answer 404.
#[derive(Clone, Default)]
pub struct PresenceHooks {
    pub livekit: Option<providers::LiveKitKeys>,
    /// Daily's HMAC secret, base64.
    pub daily_secret: Option<String>,
    pub twilio_auth_token: Option<String>,
    /// The public base URL Twilio calls (it signs the full URL); without
    /// it, the URL is rebuilt from the request's `Host`.
    pub public_url: Option<String>,
}

pub(crate) type Router = axum::Router<AppState>;
/// A router whose routes document themselves: the OpenAPI document's paths
/// are the ones routed, so none can be left out.
pub(crate) type ApiRouter = utoipa_axum::router::OpenApiRouter<AppState>;

/// The documented routes, each with its `#[utoipa::path]`.
fn api_routes() -> ApiRouter {
    ApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::sessions::router())
        .merge(routes::settlement::router())
        .merge(routes::presence::router())
        .merge(routes::admin::router())
        .merge(routes::runs::router())
        .merge(routes::ops::router())
        .merge(routes::insight::router())
        .routes(utoipa_axum::routes!(metrics::render))
}

/// The OpenAPI document served at `/openapi.json`: the paths of the routes
/// themselves, then the bearer scheme and the problem answers.
pub fn openapi_document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, mut document) = api_routes().split_for_parts();
        BearerScheme.modify(&mut document);
        ProblemResponses.modify(&mut document);
        document
    })
}

/// The whole API.
pub fn router(state: AppState) -> axum::Router {
    router_with_demo(state, None)
}

/// The whole API, and the demo room's pages when `verdict demo` runs.
pub fn router_with_demo(state: AppState, demo: Option<Arc<demo_room::DemoRooms>>) -> axum::Router {
    metrics::install();
    let limiting =
        rate_limit::Limiting::new(state.rate_limit, state.clock.clone(), state.jwt.clone());
    let health_refresh = metrics::refresh_health(&state);
    let (api, _) = api_routes().split_for_parts();
    axum::Router::new()
        .merge(api)
        .merge(dashboard::router(&state))
        .merge(demo.map(|rooms| demo_room::router(rooms, &state)).unwrap_or_default())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("this route does not accept that method".into())
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn(reject_large_bodies))
        .layer(middleware::from_fn_with_state(limiting, rate_limit::limit_writes))
        .layer(middleware::from_fn_with_state(state.clone(), fail_fast_without_database))
        .layer(middleware::from_fn(routes::runs::timeout_but_long_admin_work))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("a handler panicked".into()).into_response()
        }))
        .layer(tower::util::option_layer(
            state.cors.clone().map(|cors| middleware::from_fn_with_state(cors, cors::cors)),
        ))
        .layer(middleware::from_fn(metrics::track))
        .layer(axum::Extension(health_refresh))
        .layer(middleware::from_fn(access::request_id_in_problems))
        .layer(access::trace_layer())
        .layer(PropagateRequestIdLayer::new(access::X_REQUEST_ID))
        .layer(SetRequestIdLayer::new(access::X_REQUEST_ID, access::MakeRequestUuidV7))
        .layer(middleware::from_fn(access::drop_invalid_request_id))
        .with_state(state)
}

/// While the database is unreachable, answers 503 at once instead of
/// letting requests queue for it; a request already waiting when it goes
/// away is answered 503 then (its transaction is rolled back). Liveness,
/// the OpenAPI document and the legacy 410s need no database.
async fn fail_fast_without_database(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || path == "/openapi.json" || path.starts_with("/api/") {
        return next.run(request).await;
    }
    let mut availability = state.store.availability();
    let unavailable =
        || ApiError::Unavailable("the database is unreachable".into()).into_response();
    if !*availability.borrow_and_update() {
        return unavailable();
    }
    let went_away = async move {
        if availability.wait_for(|available| !available).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        response = next.run(request) => response,
        () = went_away => unavailable(),
    }
}

/// Refuses a declared body over the limit before any handler runs, whether
/// or not the route reads its body.
async fn reject_large_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if request.uri().path() == "/v1/admin/import" {
        // Streamed line by line, with limits of its own.
        return next.run(request).await;
    }
    let too_large = || {
        ApiError::PayloadTooLarge(format!("the body exceeds {BODY_BYTES_MAX} bytes"))
            .into_response()
    };
    if declared.is_some_and(|length| length > BODY_BYTES_MAX as u64) {
        if declared.is_some_and(|length| length <= DRAIN_BYTES_MAX as u64) {
            drain(request.into_body().into_data_stream()).await;
        }
        return too_large();
    }
    if declared.is_some() {
        return next.run(request).await;
    }
    // No declared length (chunked): read at most the limit here, so that
    // an oversized body is refused as soon as it is known.
    let (parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    let mut collected = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return ApiError::BadRequest("the request body could not be read".into())
                .into_response();
        };
        if collected.len() + chunk.len() > BODY_BYTES_MAX {
            drain(stream).await;
            return too_large();
        }
        collected.extend_from_slice(&chunk);
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(collected.freeze()))).await
}

/// How much of a refused body is still read before answering: a client
/// still sending when the connection closes unread may lose the answer to
/// a reset, so a modest excess is read and dropped first.
const DRAIN_BYTES_MAX: usize = 1024 * 1024;

async fn drain(mut stream: axum::body::BodyDataStream) {
    let mut drained = 0;
    while drained < DRAIN_BYTES_MAX {
        match stream.next().await {
            Some(Ok(chunk)) => drained += chunk.len(),
            _ => return,
        }
    }
}

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
    }
}

/// Every error answer in the document as it is on the wire: a problem
/// (`application/problem+json`, the `Problem` schema), and each status the
/// layers in front of every handler may answer (auth, limits, validation,
/// the database guard) listed on every operation that can meet it.
struct ProblemResponses;

impl ProblemResponses {
    /// Statuses any `/v1/*` operation may answer whatever its handler does.
    const V1: [(&'static str, &'static str); 11] = [
        ("400", "Malformed: a path, query or body that cannot be read"),
        ("401", "Missing, forged or expired token"),
        ("403", "Wrong role, or not a party to the session"),
        ("404", "Unknown id or route"),
        ("405", "Wrong method"),
        ("413", "Body over the size limit"),
        ("415", "A body that is not JSON"),
        ("422", "A field or parameter is wrong; `detail` names it"),
        ("429", "Over a rate or size limit"),
        ("500", "A bug: the cause is logged under the answer's request id"),
        ("503", "The database is unavailable; retry"),
    ];
    /// Statuses of the operations outside `/v1/*` (health, metrics, this
    /// document).
    const OPS: [(&'static str, &'static str); 3] = [
        ("405", "Wrong method"),
        ("500", "A bug: the cause is logged under the answer's request id"),
        ("503", "The database is unavailable; retry"),
    ];
}

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, RefOr, Response};
        const PROBLEM_JSON: &str = "application/problem+json";
        let problem = || Content::new(Some(Ref::from_schema_name("Problem")));
        for (path, item) in openapi.paths.paths.iter_mut() {
            let standard: &[(&str, &str)] =
                if path.starts_with("/v1/") { &Self::V1 } else { &Self::OPS };
            for operation in
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch]
                    .into_iter()
                    .flatten()
            {
                let responses = &mut operation.responses.responses;
                for (status, response) in responses.iter_mut() {
                    let is_error = status.starts_with('4') || status.starts_with('5');
                    if let (true, RefOr::T(response)) = (is_error, response) {
                        response.content.shift_remove("application/json");
                        response.content.insert(PROBLEM_JSON.into(), RefOr::T(problem()));
                    }
                }
                for (status, description) in standard {
                    if !responses.contains_key(*status) {
                        let mut response = Response::new(*description);
                        response.content.insert(PROBLEM_JSON.into(), RefOr::T(problem()));
                        responses.insert((*status).into(), RefOr::T(response));
                    }
                }
            }
        }
    }
}

/// The OpenAPI document, generated from the handlers and DTOs.
#[derive(OpenApi)]
#[openapi(
    info(title = "verdict", description = "Server-authoritative session end and settlement."),
    components(schemas(Problem))
)]
pub struct ApiDoc;
