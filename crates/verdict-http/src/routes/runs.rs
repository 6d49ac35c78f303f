//! Long admin work: imports and repairs run to their end on a task of
//! their own, whatever becomes of the request (the caller going away, the
//! connection cut); each run is kept with the answer its caller got, at
//! `GET /v1/admin/imports/{id}` and `GET /v1/admin/repairs/{id}`.
//!
//! The 30 s request timeout spares these two routes (see
//! [`timeout_but_long_admin_work`]): an import may stream for minutes.

use std::future::Future;

use axum::Json;
use axum::extract::{Request, State};

use crate::wire::Path;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use verdict_core::Role;
use verdict_store::{AdminRun, StoreError};

use crate::auth::Caller;
use crate::dto::Page;
use crate::problem::ApiError;
use crate::wire::{StrictQuery, format_instant};
use crate::{ApiRouter, AppState};
use utoipa_axum::routes;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(imports))
        .routes(routes!(one_import))
        .routes(routes!(repairs))
        .routes(routes!(one_repair))
}

/// The routes whose work outlasts any request timeout.
const LONG_ROUTES: [&str; 2] = ["/v1/admin/import", "/v1/admin/repair"];

/// How long any other request may take before it is answered 503.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Answers 503 to a request still running after 30 s, but for the long
/// admin routes, which run to their end.
pub(crate) async fn timeout_but_long_admin_work(request: Request, next: Next) -> Response {
    time_limit(request, next, REQUEST_TIMEOUT).await
}

async fn time_limit(request: Request, next: Next, limit: std::time::Duration) -> Response {
    if LONG_ROUTES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = crate::problem::problem_response(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service Unavailable",
                format!("the request did not finish within {} s; retry later", limit.as_secs()),
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// A run that failed, with what it had done before (kept with the run).
pub(crate) struct Failed<D> {
    pub error: ApiError,
    pub partial: Option<D>,
}

impl<D> From<ApiError> for Failed<D> {
    fn from(error: ApiError) -> Failed<D> {
        Failed { error, partial: None }
    }
}

impl<D> From<StoreError> for Failed<D> {
    fn from(error: StoreError) -> Failed<D> {
        Failed { error: error.into(), partial: None }
    }
}

/// Runs `work` to its end on a task of its own, kept as run `id` of `kind`
/// (`import` or `repair`) from its start, with its answer at its end. The
/// caller awaits the answer; a caller that goes away leaves the task
/// running (dropping a `JoinHandle` does not cancel its task).
pub(crate) async fn run_to_the_end<D, F>(
    state: &AppState,
    kind: &'static str,
    id: &str,
    caller: &Caller,
    work: F,
) -> Result<D, ApiError>
where
    D: Serialize + Send + 'static,
    F: Future<Output = Result<D, Failed<D>>> + Send + 'static,
{
    let (store, clock) = (state.store.clone(), state.clock.clone());
    let mut run = AdminRun {
        id: id.to_owned(),
        kind: kind.to_owned(),
        state: "running".to_owned(),
        actor: caller.id.clone(),
        started_at: clock.now(),
        finished_at: None,
        summary: None,
        error: None,
    };
    let task = tokio::spawn(async move {
        store.save_admin_run(&run).await?;
        let result = work.await;
        run.finished_at = Some(clock.now());
        let answer = match &result {
            Ok(answer) => {
                run.state = "finished".to_owned();
                Some(answer)
            }
            Err(failed) => {
                run.state = "failed".to_owned();
                run.error = Some(public_detail(&failed.error));
                failed.partial.as_ref()
            }
        };
        run.summary = answer.and_then(|answer| serde_json::to_value(answer).ok());
        if let Err(error) = store.save_admin_run(&run).await {
            tracing::warn!(id = %run.id, kind = run.kind, %error, "an admin run's end was not kept");
        }
        result.map_err(|failed| {
            if let ApiError::Internal(cause) = &failed.error {
                // Logged here: the caller may be gone, the answer unbuilt.
                tracing::error!(id = %run.id, kind = run.kind, %cause, "an admin run failed");
            }
            failed.error
        })
    });
    task.await.map_err(|_| ApiError::Internal(format!("{kind} run {id} panicked")))?
}

/// What a kept run says of its failure: a caller's words, never a cause.
fn public_detail(error: &ApiError) -> String {
    match error {
        ApiError::Internal(_) => "an unexpected error occurred; it has been logged".to_owned(),
        ApiError::Unavailable(_) => "the database became unavailable".to_owned(),
        other => other.to_string(),
    }
}

/// The answer of a run, with `Content-Location` naming where it is kept.
pub(crate) fn answer<D: Serialize>(collection: &str, id: &str, answer: D) -> Response {
    let mut response = Json(answer).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/admin/{collection}/{id}")) {
        response.headers_mut().insert(header::CONTENT_LOCATION, location);
    }
    response
}

/// A kept run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunDto {
    pub id: String,
    /// `import` or `repair`.
    pub kind: String,
    /// `running`, `finished` or `failed`.
    pub state: String,
    /// The admin who started it.
    pub actor: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// The answer the run gave (an import's or a repair's summary); for a
    /// failed run, what it had done before failing, if anything.
    pub summary: Option<serde_json::Value>,
    pub error: Option<String>,
}

impl From<&AdminRun> for RunDto {
    fn from(run: &AdminRun) -> RunDto {
        RunDto {
            id: run.id.clone(),
            kind: run.kind.clone(),
            state: run.state.clone(),
            actor: run.actor.clone(),
            started_at: format_instant(run.started_at),
            finished_at: run.finished_at.map(format_instant),
            summary: run.summary.clone(),
            error: run.error.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    limit: Option<i64>,
}

async fn latest(
    state: &AppState,
    caller: &Caller,
    kind: &str,
    query: RunsQuery,
) -> Result<Json<Page<RunDto>>, ApiError> {
    caller.require(&[Role::Admin])?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::Unprocessable("limit must be between 1 and 100".into()));
    }
    let runs = state.store.admin_runs(kind, limit).await?;
    Ok(Json(Page { items: runs.iter().map(RunDto::from).collect(), next_cursor: None }))
}

async fn one(
    state: &AppState,
    caller: &Caller,
    kind: &'static str,
    id: &str,
) -> Result<Json<RunDto>, ApiError> {
    caller.require(&[Role::Admin])?;
    if !verdict_core::is_valid_id(id) {
        return Err(ApiError::NotFound(format!("{kind} run {id:?} not found")));
    }
    match state.store.admin_run(kind, id).await? {
        Some(run) => Ok(Json(RunDto::from(&run))),
        None => Err(ApiError::NotFound(format!("{kind} run {id} not found"))),
    }
}

#[utoipa::path(get, path = "/v1/admin/imports", tag = "admin",
    params(("limit" = Option<i64>, Query, description = "1 to 100; default 20")),
    responses((status = 200, body = Page<RunDto>, description = "The latest imports, newest first")),
    security(("bearer" = [])))]
pub async fn imports(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(query): StrictQuery<RunsQuery>,
) -> Result<Json<Page<RunDto>>, ApiError> {
    latest(&state, &caller, "import", query).await
}

#[utoipa::path(get, path = "/v1/admin/imports/{id}", tag = "admin",
    params(("id" = String, Path, description = "The run, as in the import's Content-Location")),
    responses((status = 200, body = RunDto), (status = 404, body = crate::Problem)),
    security(("bearer" = [])))]
pub async fn one_import(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunDto>, ApiError> {
    one(&state, &caller, "import", &id).await
}

#[utoipa::path(get, path = "/v1/admin/repairs", tag = "admin",
    params(("limit" = Option<i64>, Query, description = "1 to 100; default 20")),
    responses((status = 200, body = Page<RunDto>, description = "The latest repairs, newest first")),
    security(("bearer" = [])))]
pub async fn repairs(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(query): StrictQuery<RunsQuery>,
) -> Result<Json<Page<RunDto>>, ApiError> {
    latest(&state, &caller, "repair", query).await
}

#[utoipa::path(get, path = "/v1/admin/repairs/{id}", tag = "admin",
    params(("id" = String, Path, description = "The run, as in the repair's Content-Location")),
    responses((status = 200, body = RunDto), (status = 404, body = crate::Problem)),
    security(("bearer" = [])))]
pub async fn one_repair(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunDto>, ApiError> {
    one(&state, &caller, "repair", &id).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use tower::ServiceExt;

    const LIMIT: Duration = Duration::from_millis(50);

    /// Answers after four time limits; any other route never answers.
    fn app() -> axum::Router {
        let slow = || async {
            tokio::time::sleep(LIMIT * 4).await;
            "done"
        };
        axum::Router::new()
            .route("/v1/admin/import", post(slow))
            .route("/v1/admin/repair", post(slow))
            .route("/v1/sessions", post(std::future::pending::<&'static str>))
            .layer(axum::middleware::from_fn(|request, next| {
                super::time_limit(request, next, LIMIT)
            }))
    }

    async fn status(path: &str) -> StatusCode {
        let request = Request::post(path).body(Body::empty()).unwrap();
        app().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn imports_and_repairs_outlast_the_request_timeout_and_nothing_else_does() {
        assert_eq!(status("/v1/sessions").await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status("/v1/admin/import").await, StatusCode::OK);
        assert_eq!(status("/v1/admin/repair").await, StatusCode::OK);
    }
}
