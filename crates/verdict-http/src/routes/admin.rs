//! Admin monitoring: verification, health, hourly scores, review queue;
//! import and repair (run to their end and kept: `routes::runs`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use verdict_core::Role;
use verdict_store::{consistency, monitor};

use crate::auth::Caller;
use crate::dto::SessionDto;
use crate::problem::ApiError;
use crate::wire::StrictQuery;
use crate::wire::format_instant;
use crate::{ApiRouter, AppState};
use utoipa_axum::routes;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(verify))
        .routes(routes!(health))
        .routes(routes!(hourly))
        .routes(routes!(review))
        .routes({
            // Its own body limit: the import streams far more than 64 KiB.
            let (schemas, paths, method) = routes!(import);
            (schemas, paths, method.layer(axum::extract::DefaultBodyLimit::max(IMPORT_BYTES_MAX)))
        })
        .routes(routes!(repair))
}

/// The largest import body: the data is streamed, never held whole.
pub const IMPORT_BYTES_MAX: usize = 4 << 30;

#[derive(Debug, Serialize, ToSchema)]
pub struct SectionDto {
    pub name: String,
    pub ok: bool,
    pub count: i64,
    /// `critical`, `warning` or `info`.
    pub severity: String,
    /// Up to 10 offending session ids.
    pub sample: Vec<String>,
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyDto {
    pub ok: bool,
    pub sessions: u64,
    pub sections: Vec<SectionDto>,
}

impl From<&monitor::Report> for VerifyDto {
    fn from(report: &monitor::Report) -> VerifyDto {
        VerifyDto {
            ok: report.ok,
            sessions: report.sessions,
            sections: report
                .sections
                .iter()
                .map(|section| SectionDto {
                    name: section.name.to_owned(),
                    ok: section.ok,
                    count: section.count,
                    severity: section.severity.to_owned(),
                    sample: section.sample.clone(),
                    detail: section.detail.clone(),
                })
                .collect(),
        }
    }
}

#[utoipa::path(get, path = "/v1/admin/verify", tag = "admin",
    responses((status = 200, body = VerifyDto, description = "The verification report (docs/verification.md)")),
    security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<VerifyDto>, ApiError> {
    caller.require(&[Role::Admin])?;
    let report = monitor::verify(&state.store, &state.settings, state.clock.now(), |_| {}).await?;
    Ok(Json(VerifyDto::from(&report)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsDto {
    pub completion_rate: f64,
    pub no_show_rate: f64,
    pub too_short_rate: f64,
    pub avg_billable_seconds: f64,
    pub p50_billable_seconds: i64,
    pub p90_billable_seconds: i64,
}

/// The window's metrics of anything that has them by these names: the
/// whole health and each kind's (`by_kind`).
macro_rules! metrics_dto {
    ($health:expr) => {
        MetricsDto {
            completion_rate: $health.completion_rate,
            no_show_rate: $health.no_show_rate,
            too_short_rate: $health.too_short_rate,
            avg_billable_seconds: $health.avg_billable_seconds,
            p50_billable_seconds: $health.p50_billable_seconds,
            p90_billable_seconds: $health.p90_billable_seconds,
        }
    };
}
pub(crate) use metrics_dto;

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertDto {
    /// `misclassified_completed`, `misclassified_cancelled`,
    /// `payout_mismatch`, `stuck_sessions` or `dead_deliveries`.
    pub kind: String,
    pub severity: String,
    pub count: i64,
    pub session_ids: Vec<String>,
    /// A threshold alert's scope, `{"kind": …}` or `{"provider_id": …}`
    /// (its `kind` is its rule: `completion_rate_below`,
    /// `no_show_rate_above`, `too_short_rate_above`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<BTreeMap<String, String>>,
    /// A threshold alert's rate over the last 24 h.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The threshold it broke.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevenueImpactDto {
    /// Cents not charged for sessions that should be completed (summed
    /// over currencies: read `by_currency` when there are several).
    pub underbilled_cents: i64,
    /// Cents charged for sessions that should not be completed (summed
    /// over currencies).
    pub overbilled_cents: i64,
    /// The same per currency (lower-case ISO 4217), only currencies with
    /// an impact.
    pub by_currency: Vec<CurrencyImpactDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CurrencyImpactDto {
    pub currency: String,
    pub underbilled_cents: i64,
    pub overbilled_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionHealthDto {
    pub window_hours: i64,
    pub score: f64,
    /// `excellent`, `good`, `degraded`, `critical`, or `idle`.
    pub label: String,
    pub ended: i64,
    pub metrics: MetricsDto,
    pub status_distribution: BTreeMap<String, i64>,
    /// Active alerts only.
    pub alerts: Vec<AlertDto>,
    pub revenue_impact: RevenueImpactDto,
    /// The window's figures per kind.
    pub by_kind: BTreeMap<String, crate::routes::insight::KindHealthDto>,
}

impl From<&monitor::Health> for SessionHealthDto {
    fn from(health: &monitor::Health) -> SessionHealthDto {
        SessionHealthDto {
            window_hours: health.window_hours,
            score: health.score,
            label: health.label.to_owned(),
            ended: health.ended,
            metrics: metrics_dto!(health),
            status_distribution: health.status_distribution.clone(),
            alerts: health
                .alerts
                .iter()
                .map(|alert| AlertDto {
                    kind: alert.kind.to_owned(),
                    severity: alert.severity.to_owned(),
                    count: alert.count,
                    session_ids: alert.session_ids.clone(),
                    scope: None,
                    value: None,
                    threshold: None,
                })
                .chain(
                    health.threshold_alerts.iter().map(crate::routes::insight::threshold_alert_dto),
                )
                .collect(),
            revenue_impact: RevenueImpactDto {
                underbilled_cents: health.underbilled_cents,
                overbilled_cents: health.overbilled_cents,
                by_currency: health
                    .revenue_by_currency
                    .iter()
                    .map(|(currency, (under, over))| CurrencyImpactDto {
                        currency: currency.clone(),
                        underbilled_cents: *under,
                        overbilled_cents: *over,
                    })
                    .collect(),
            },
            by_kind: crate::routes::insight::by_kind_dto(&health.by_kind),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthQuery {
    window_hours: Option<i64>,
}

#[utoipa::path(get, path = "/v1/admin/health", tag = "admin",
    params(("window_hours" = Option<i64>, Query, description = "1 to 720; default 24")),
    responses((status = 200, body = SessionHealthDto)),
    security(("bearer" = [])))]
pub async fn health(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(window): StrictQuery<HealthQuery>,
) -> Result<Json<SessionHealthDto>, ApiError> {
    caller.require(&[Role::Admin])?;
    let window_hours = crate::wire::window_hours(window.window_hours)?;
    let health =
        monitor::health(&state.store, &state.settings, state.clock.now(), window_hours).await?;
    crate::metrics::record_health(&health);
    Ok(Json(SessionHealthDto::from(&health)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HourDto {
    pub hour_start: String,
    pub ended: i64,
    pub score: f64,
    pub label: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HourlyDto {
    pub hours: i64,
    /// Oldest first.
    pub items: Vec<HourDto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourlyQuery {
    hours: Option<i64>,
}

#[utoipa::path(get, path = "/v1/admin/health/hourly", tag = "admin",
    params(("hours" = Option<i64>, Query, description = "1 to 168; default 24")),
    responses((status = 200, body = HourlyDto)),
    security(("bearer" = [])))]
pub async fn hourly(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(hours): StrictQuery<HourlyQuery>,
) -> Result<Json<HourlyDto>, ApiError> {
    caller.require(&[Role::Admin])?;
    let hours = hours.hours.unwrap_or(24);
    if !(1..=168).contains(&hours) {
        return Err(ApiError::Unprocessable("hours must be between 1 and 168".into()));
    }
    let scores = monitor::hourly(&state.store, &state.settings, state.clock.now(), hours).await?;
    Ok(Json(HourlyDto {
        hours,
        items: scores
            .iter()
            .map(|hour| HourDto {
                hour_start: format_instant(hour.hour_start),
                ended: hour.ended,
                score: hour.score,
                label: hour.label.to_owned(),
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReviewItemDto {
    pub session: SessionDto,
    /// The verification sections this session fails.
    pub reasons: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewQuery {
    after: Option<String>,
    limit: Option<usize>,
    reason: Option<String>,
    kind: Option<String>,
}

/// A page of the review queue, with the queue's size.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReviewPageDto {
    pub items: Vec<ReviewItemDto>,
    pub next_cursor: Option<String>,
    /// Sessions needing review under this page's `reason` and `kind`, as
    /// the most recent full pass (verify, or the background pass) counted
    /// them; `null` before any.
    pub total: Option<i64>,
    /// When that pass ran (RFC 3339); `null` before any.
    pub as_of: Option<String>,
}

#[utoipa::path(get, path = "/v1/admin/review", tag = "admin",
    params(
        ("after" = Option<String>, Query, description = "Cursor from the previous page"),
        ("limit" = Option<usize>, Query, description = "1 to 200; default 50"),
        ("reason" = Option<String>, Query,
            description = "Only sessions with this reason (a verification section, \
                metadata_consistency or late_presence_after_finalization)"),
        ("kind" = Option<String>, Query, description = "Only sessions of this kind"),
    ),
    responses((status = 200, body = ReviewPageDto)),
    security(("bearer" = [])))]
pub async fn review(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(page): StrictQuery<ReviewQuery>,
) -> Result<Json<ReviewPageDto>, ApiError> {
    caller.require(&[Role::Admin])?;
    let limit = page.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::Unprocessable("limit must be between 1 and 200".into()));
    }
    if let Some(after) = &page.after
        && !verdict_core::is_valid_id(after)
    {
        return Err(ApiError::Unprocessable(
            "after must be a cursor returned as next_cursor".into(),
        ));
    }
    let filter = review_filter(page.reason.as_deref(), page.kind.as_deref())?;
    let now = state.clock.now();
    let store = state.store.as_ref();
    let ((items, next_cursor), total) = tokio::try_join!(
        consistency::review(store, &state.settings, now, page.after.as_deref(), limit, filter),
        consistency::review_total(store, filter),
    )?;
    Ok(Json(ReviewPageDto {
        items: items
            .iter()
            .map(|item| ReviewItemDto {
                session: SessionDto::new(&item.session, &state.settings.policies),
                reasons: item.reasons.iter().map(|reason| (*reason).to_owned()).collect(),
            })
            .collect(),
        next_cursor,
        total: total.map(|(total, _)| total),
        as_of: total.map(|(_, as_of)| format_instant(as_of)),
    }))
}

/// The review queue's filter, each value checked (422 naming the known
/// ones).
pub(crate) fn review_filter(
    reason: Option<&str>,
    kind: Option<&str>,
) -> Result<consistency::ReviewFilter, ApiError> {
    let reason = match reason {
        None => None,
        Some(name) => Some(consistency::ReviewFilter::reason(name).ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "reason must be one of {}",
                consistency::REVIEW_REASONS.join(", ")
            ))
        })?),
    };
    let kind = match kind {
        None => None,
        Some(text) => Some(text.parse::<verdict_core::Kind>().map_err(|_| {
            ApiError::Unprocessable("kind must be one of video, chat, diagnostic".into())
        })?),
    };
    Ok(consistency::ReviewFilter { reason, kind })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportRejectionDto {
    pub line: u64,
    pub error: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportDto {
    pub imported: u64,
    pub skipped: u64,
    /// The first 10 000 rejected lines, in line order; `rejected_total` counts all.
    pub rejected: Vec<ImportRejectionDto>,
    pub rejected_total: u64,
}

impl From<&crate::import::Summary> for ImportDto {
    fn from(summary: &crate::import::Summary) -> ImportDto {
        ImportDto {
            imported: summary.imported,
            skipped: summary.skipped,
            rejected: summary
                .rejected
                .iter()
                .map(|(line, error)| ImportRejectionDto { line: *line, error: error.clone() })
                .collect(),
            rejected_total: summary.rejected_total,
        }
    }
}

#[utoipa::path(post, path = "/v1/admin/import", tag = "admin",
    request_body(content = String, content_type = "application/x-ndjson",
        description = "One historical session per line (docs/import.md), streamed"),
    params(("keep_unknown_fields" = Option<bool>, Query,
        description = "Default false: a field a line does not know rejects the line; \
            true: it is kept in the session's metadata")),
    responses((status = 200, body = ImportDto,
        description = "The summary; Content-Location names where the run is kept")),
    security(("bearer" = [])))]
pub async fn import(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(options): StrictQuery<ImportQuery>,
    body: axum::body::Body,
) -> Result<axum::response::Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let keep_unknown_fields = options.keep_unknown_fields.unwrap_or(false);
    // Runs to its end, kept as this run, even if the caller goes away while
    // the body streams in (what came is stored) or after it is whole.
    let id = uuid::Uuid::now_v7().to_string();
    let (store, now, run) = (state.store.clone(), state.clock.now(), id.clone());
    let work = async move {
        let importer = crate::import::Importer::new(store.as_ref(), now)
            .for_run(run)
            .keeping_unknown_fields(keep_unknown_fields);
        import_body(importer, body).await
    };
    let summary = super::runs::run_to_the_end(&state, "import", &id, &caller, work).await?;
    Ok(super::runs::answer("imports", &id, summary))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    keep_unknown_fields: Option<bool>,
}

async fn import_body(
    mut importer: crate::import::Importer<'_>,
    body: axum::body::Body,
) -> Result<ImportDto, super::runs::Failed<ImportDto>> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut number = 0u64;
    let mut overlong = false;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                // The lines read so far are stored; the cut one is not.
                let summary = importer.finish().await?;
                return Err(super::runs::Failed {
                    error: ApiError::BadRequest(format!(
                        "the body could not be read to its end ({error}); the {number} whole \
                         lines before were imported"
                    )),
                    partial: Some(ImportDto::from(&summary)),
                });
            }
        };
        let mut rest = &chunk[..];
        while let Some(newline) = rest.iter().position(|byte| *byte == b'\n') {
            number += 1;
            if overlong {
                importer.unreadable(number, "line longer than 1 MiB");
                overlong = false;
            } else {
                pending.extend_from_slice(&rest[..newline]);
                feed(&mut importer, number, &pending).await?;
            }
            pending.clear();
            rest = &rest[newline + 1..];
        }
        if !overlong {
            pending.extend_from_slice(rest);
            if pending.len() > crate::import::LINE_BYTES_MAX {
                overlong = true;
                pending.clear();
            }
        }
    }
    if overlong || !pending.is_empty() {
        number += 1;
        if overlong {
            importer.unreadable(number, "line longer than 1 MiB");
        } else {
            feed(&mut importer, number, &pending).await?;
        }
    }
    let summary = importer.finish().await?;
    Ok(ImportDto::from(&summary))
}

async fn feed(
    importer: &mut crate::import::Importer<'_>,
    number: u64,
    bytes: &[u8],
) -> Result<(), ApiError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => importer.line(number, text).await?,
        Err(_) => importer.unreadable(number, "not UTF-8"),
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairQuery {
    dry_run: Option<bool>,
    since: Option<String>,
    until: Option<String>,
    include_missing_evidence: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutcomeRefDto {
    pub status: String,
    /// `null` for an imported session still `live` or `waiting`.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeDto {
    pub session_id: String,
    pub from: OutcomeRefDto,
    pub to: OutcomeRefDto,
    /// The change in what the customer is charged.
    pub money_effect_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RepairDto {
    pub dry_run: bool,
    pub changes: Vec<ChangeDto>,
    /// Corrections whose only evidence is missing join events: listed, and
    /// applied only with `include_missing_evidence=true` (then they are in
    /// `changes`).
    pub needs_review: Vec<ChangeDto>,
}

impl RepairDto {
    pub fn new(dry_run: bool, corrections: &[verdict_store::Correction]) -> RepairDto {
        let outcome =
            |status: verdict_core::Status, reason: Option<verdict_core::Reason>| OutcomeRefDto {
                status: status.as_str().to_owned(),
                reason: reason.map(|reason| reason.as_str().to_owned()),
            };
        let change = |c: &verdict_store::Correction| ChangeDto {
            session_id: c.session_id.clone(),
            from: outcome(c.from.0, c.from.1),
            to: outcome(c.to.0, Some(c.to.1)),
            money_effect_cents: c.money_effect,
        };
        RepairDto {
            dry_run,
            changes: corrections.iter().filter(|c| !c.needs_review).map(change).collect(),
            needs_review: corrections.iter().filter(|c| c.needs_review).map(change).collect(),
        }
    }
}

#[utoipa::path(post, path = "/v1/admin/repair", tag = "admin",
    params(
        ("dry_run" = Option<bool>, Query, description = "Default true: plan only"),
        ("since" = Option<String>, Query, description = "RFC 3339: sessions ended at or after"),
        ("until" = Option<String>, Query, description = "RFC 3339: sessions ended before"),
        ("include_missing_evidence" = Option<bool>, Query,
            description = "Default false: also apply corrections whose only evidence is missing join events"),
    ),
    responses((status = 200, body = RepairDto,
        description = "The changes; Content-Location names where the run is kept")),
    security(("bearer" = [])))]
pub async fn repair(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(params): StrictQuery<RepairQuery>,
) -> Result<axum::response::Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let bound = |field: &str, text: &Option<String>, default: i64| match text {
        None => Ok(verdict_core::UnixMillis(default)),
        Some(text) => crate::wire::parse_instant(text).ok_or_else(|| {
            ApiError::Unprocessable(format!("{field} must be an RFC 3339 timestamp"))
        }),
    };
    let since = bound("since", &params.since, 0)?;
    let until = bound("until", &params.until, i64::MAX)?;
    let dry_run = params.dry_run.unwrap_or(true);
    let options = monitor::RepairOptions {
        apply: !dry_run,
        include_missing_evidence: params.include_missing_evidence.unwrap_or(false),
    };
    // Runs to its end, kept as this run, even if the caller goes away.
    let id = uuid::Uuid::now_v7().to_string();
    let work_state = state.clone();
    let work = async move {
        let state = work_state;
        let now = state.clock.now();
        let corrections =
            monitor::repair_with(&state.store, &state.settings, now, since, until, options).await?;
        Ok(RepairDto::new(dry_run, &corrections))
    };
    let answer = super::runs::run_to_the_end(&state, "repair", &id, &caller, work).await?;
    Ok(super::runs::answer("repairs", &id, answer))
}
