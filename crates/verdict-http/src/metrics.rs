//! Prometheus metrics: the process-wide recorder, the request middleware
//! and the `/metrics` route.
//!
//! Series: `verdict_http_requests_total{method,route,status}`,
//! `verdict_http_request_duration_seconds{method,route}` (histogram),
//! `verdict_sessions_ended_total{status,reason}`, `verdict_outbox_pending`,
//! `verdict_outbox_dead`, `verdict_outbox_attempts_total{outcome}`,
//! `verdict_sweeper_runs_total`, `verdict_sweeper_ended_total`,
//! `verdict_sweeper_failures_total`,
//! `verdict_health_score`, `verdict_sessions_stuck`,
//! `verdict_http_rate_limited_total`, `verdict_completion_rate{kind}`,
//! `verdict_no_show_rate{kind}` (last 24 h; NaN for a kind with none).
//!
//! A lone `verdict worker` serves the same recorder from
//! [`worker_router`]: its sweeper's ends and deliveries, and the outbox
//! gauges.
//!
//! Label values are bounded: `method` is one of the standard methods or
//! `other`, `route` a route template or `unmatched`. The health score is
//! recomputed in the background once a minute, never by a scrape (a scrape
//! must stay cheap whatever the database holds).

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use verdict_store::Store;
use verdict_store::clock::Clock;

use crate::AppState;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often buffered histogram samples are drained when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the recorder once per process and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let buckets =
            [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding
        // application's); then ours only renders what it sees.
        let _ = metrics::set_global_recorder(recorder);
        // Counters without labels exist from the start, at 0: a rate or
        // an increase sees their first event, and a dashboard or an alert
        // finds them before it.
        for counter in [
            "verdict_http_rate_limited_total",
            "verdict_sweeper_runs_total",
            "verdict_sweeper_ended_total",
            "verdict_sweeper_failures_total",
            "verdict_stripe_configuration_faults_total",
        ] {
            metrics::counter!(counter).increment(0);
        }
        // Histogram samples wait in a buffer until drained: by a scrape, or
        // by this upkeep. Without it a server nobody scrapes grows by every
        // request it answers (what `PrometheusBuilder::install` would run;
        // a thread, as the recorder, for the life of the process).
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
        handle
    })
}

/// The health score and the stuck sessions it was computed with.
pub fn record_health(health: &verdict_store::monitor::Health) {
    metrics::gauge!("verdict_health_score").set(health.score);
    let stuck = health
        .alerts
        .iter()
        .find(|alert| alert.kind == "stuck_sessions")
        .map_or(0, |alert| alert.count);
    metrics::gauge!("verdict_sessions_stuck").set(stuck as f64);
    if health.window_hours == verdict_store::insight::ALERT_WINDOW_HOURS {
        for (kind, figures) in &health.by_kind {
            verdict_store::insight::set_rate_gauges(
                *kind,
                figures.ended,
                figures.completion_rate,
                figures.no_show_rate,
            );
        }
    }
}

/// A write refused by the per-caller rate limit.
pub fn record_rate_limited() {
    metrics::counter!("verdict_http_rate_limited_total").increment(1);
}

pub fn record_ended(status: &str, reason: &str) {
    metrics::counter!("verdict_sessions_ended_total", "status" => status.to_owned(), "reason" => reason.to_owned())
        .increment(1);
}

/// Counts and times every request by its route template.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        // `/v1/sessions/:id/end`: braces in label values trip some parsers.
        .map_or_else(
            || "unmatched".to_owned(),
            |path| path.as_str().replace('{', ":").replace('}', ""),
        );
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("verdict_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("verdict_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The `method` label: a standard method's name, else `other`, so that a
/// client inventing methods cannot grow the series without bound.
pub fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    STANDARD.iter().find(|standard| *standard == method).map_or("other", Method::as_str)
}

/// How often the health gauge is recomputed in the background.
const HEALTH_REFRESH: Duration = Duration::from_secs(60);

/// Keeps the background health refresh going: it stops at its next tick
/// once every clone of this (held by the router) is dropped.
#[derive(Clone)]
pub(crate) struct HealthRefresh(#[allow(dead_code)] Arc<()>);

/// Starts recomputing the health gauge now and then every minute, in the
/// background, for as long as the returned guard lives.
pub(crate) fn refresh_health(state: &AppState) -> HealthRefresh {
    let alive = Arc::new(());
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(refresh_health_while(Arc::downgrade(&alive), state.clone()));
    }
    HealthRefresh(alive)
}

async fn refresh_health_while(alive: Weak<()>, state: AppState) {
    let mut every = tokio::time::interval(HEALTH_REFRESH);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if alive.strong_count() == 0 {
            return;
        }
        let now = state.clock.now();
        match verdict_store::monitor::health_for_gauges(&state.store, &state.settings, now, 24)
            .await
        {
            Ok(health) => record_health(&health),
            Err(error) => tracing::warn!(%error, "the health gauge could not be recomputed"),
        }
        if let Err(error) = count_review_when_due(&state, now).await {
            tracing::warn!(%error, "the review queue could not be counted");
        }
    }
}

/// How old the review queue's stored count may grow before the background
/// pass counts it again (a full pass: every session is read).
const REVIEW_COUNT_EVERY_SECONDS: i64 = 15 * 60;

/// The background full pass: counts the review queue (and stores the count
/// for its `total`) when no pass, `verdict verify` or another server's,
/// has counted it for [`REVIEW_COUNT_EVERY_SECONDS`].
async fn count_review_when_due(
    state: &AppState,
    now: verdict_core::UnixMillis,
) -> Result<(), verdict_store::StoreError> {
    let due = match state.store.review_counts().await? {
        None => true,
        Some((as_of, _)) => now.millis_since(as_of) >= REVIEW_COUNT_EVERY_SECONDS * 1000,
    };
    if due {
        verdict_store::consistency::count_review(&state.store, &state.settings, now).await?;
    }
    Ok(())
}

/// `GET /metrics`: Prometheus text. Outbox gauges are read at scrape time;
/// the health score is the background refresh's (see [`refresh_health`]).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String,
        description = "Prometheus text exposition (version 0.0.4)")))]
pub async fn render(State(state): State<AppState>) -> Response {
    render_with(state.store.as_ref(), state.clock.as_ref()).await
}

async fn render_with(store: &dyn Store, clock: &dyn Clock) -> Response {
    let now = clock.now();
    if let Ok(outbox) =
        store.outbox_health(now.plus_seconds(-verdict_store::monitor::OVERDUE_AFTER_SECONDS)).await
    {
        metrics::gauge!("verdict_outbox_pending").set(outbox.pending as f64);
        metrics::gauge!("verdict_outbox_dead").set(outbox.dead as f64);
    }
    let mut response = install().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// What a lone worker's endpoints read.
#[derive(Clone)]
struct WorkerEndpoints {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

/// The endpoints of a lone `verdict worker` (on `worker_bind`):
/// `GET /metrics`, as the API's (this process's series and the outbox
/// gauges), and `GET /healthz`, liveness only (the process answers; a
/// database outage the worker rides out is not a reason to restart it).
pub fn worker_router(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> axum::Router {
    install();
    let metrics = axum::routing::get(|State(endpoints): State<WorkerEndpoints>| async move {
        render_with(endpoints.store.as_ref(), endpoints.clock.as_ref()).await
    });
    let healthz = axum::routing::get(|State(endpoints): State<WorkerEndpoints>| async move {
        axum::Json(crate::dto::HealthDto {
            status: "ok".into(),
            database: endpoints.store.backend().into(),
        })
    });
    axum::Router::new()
        .route("/metrics", metrics)
        .route("/healthz", healthz)
        .fallback(|| async { crate::ApiError::NotFound("no such route".into()) })
        .with_state(WorkerEndpoints { store, clock })
}
