//! Insight per kind and per provider (issue 27): the health's `by_kind`
//! and threshold alerts as JSON, one provider's stats and the providers
//! ranked worst first (admin only).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;
use verdict_core::{Kind, Role};
use verdict_store::insight::{
    Counts, KindHealth, ProviderSort, ProviderStats, Scope, ThresholdAlert,
};

use crate::auth::Caller;
use crate::problem::{ApiError, Problem};
use crate::routes::admin::{AlertDto, MetricsDto};
use crate::wire::{Path, StrictQuery, checked_id, window_hours};
use crate::{ApiRouter, AppState};

pub fn router() -> ApiRouter {
    ApiRouter::new().routes(routes!(provider_stats)).routes(routes!(providers))
}

/// Providers listed at most per ranking.
pub const PROVIDERS_LIMIT_MAX: i64 = 100;

/// An alert's scope: `{"kind": "video"}` or `{"provider_id": "p-1"}`.
pub fn scope_dto(scope: &Scope) -> BTreeMap<String, String> {
    BTreeMap::from([(scope.field().to_owned(), scope.value().to_owned())])
}

/// A threshold alert as the health lists it: its rule is its `kind`,
/// `count` the scope's ended sessions in the last 24 h.
pub fn threshold_alert_dto(alert: &ThresholdAlert) -> AlertDto {
    AlertDto {
        kind: alert.rule.as_str().to_owned(),
        severity: "warning".to_owned(),
        count: alert.sessions,
        session_ids: Vec::new(),
        scope: Some(scope_dto(&alert.scope)),
        value: Some(alert.value),
        threshold: Some(alert.threshold),
    }
}

/// The window's figures for one kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct KindHealthDto {
    pub ended: i64,
    /// `100 × clean / ended` over this kind's sessions (stuck sessions and
    /// dead deliveries belong to no kind).
    pub score: f64,
    pub label: String,
    pub metrics: MetricsDto,
    pub status_distribution: BTreeMap<String, i64>,
}

/// `by_kind`: every kind, those without sessions at zero.
pub fn by_kind_dto(by_kind: &BTreeMap<Kind, KindHealth>) -> BTreeMap<String, KindHealthDto> {
    by_kind
        .iter()
        .map(|(kind, health)| {
            let dto = KindHealthDto {
                ended: health.ended,
                score: health.score,
                label: health.label.to_owned(),
                metrics: crate::routes::admin::metrics_dto!(health),
                status_distribution: health.status_distribution.clone(),
            };
            (kind.as_str().to_owned(), dto)
        })
        .collect()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderMoneyDto {
    pub currency: String,
    /// What customers were charged for these sessions (ledger).
    pub charged_cents: i64,
    /// What these sessions earned the provider (ledger).
    pub earned_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderStatsDto {
    pub provider_id: String,
    pub window_hours: i64,
    /// Sessions ended in the window.
    pub sessions: i64,
    pub completion_rate: f64,
    pub no_show_rate: f64,
    pub too_short_rate: f64,
    /// Billable seconds of those sessions, summed.
    pub billable_seconds: i64,
    /// Per currency, from the ledger postings of those sessions
    /// (reversals included).
    pub money: Vec<ProviderMoneyDto>,
}

impl ProviderStatsDto {
    fn new(stats: &ProviderStats, window_hours: i64) -> ProviderStatsDto {
        ProviderStatsDto {
            provider_id: stats.provider_id.clone(),
            window_hours,
            sessions: stats.counts.ended,
            completion_rate: stats.counts.completion_rate(),
            no_show_rate: stats.counts.no_show_rate(),
            too_short_rate: stats.counts.too_short_rate(),
            billable_seconds: stats.counts.billable_seconds,
            money: stats
                .money
                .iter()
                .map(|money| ProviderMoneyDto {
                    currency: money.currency.clone(),
                    charged_cents: money.charged.0,
                    earned_cents: money.earned.0,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    window_hours: Option<i64>,
}

#[utoipa::path(get, path = "/v1/admin/providers/{id}/stats", tag = "admin",
    params(("id" = String, Path),
        ("window_hours" = Option<i64>, Query, description = "1 to 720; default 24")),
    responses((status = 200, body = ProviderStatsDto),
        (status = 404, body = Problem, description = "Not a valid provider id"),
        (status = 422, body = Problem, description = "window_hours out of bounds")),
    security(("bearer" = [])))]
/// One provider's sessions ended in the last `window_hours`: rates,
/// billable time, and what they charged and earned per currency.
pub async fn provider_stats(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    StrictQuery(query): StrictQuery<StatsQuery>,
) -> Result<Json<ProviderStatsDto>, ApiError> {
    caller.require(&[Role::Admin])?;
    let id = checked_id("provider", &id)?;
    let window_hours = window_hours(query.window_hours)?;
    let now = state.clock.now();
    let stats = state.store.provider_stats(id, now.plus_seconds(-window_hours * 3600), now).await?;
    Ok(Json(ProviderStatsDto::new(&stats, window_hours)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankingQuery {
    sort: Option<String>,
    limit: Option<i64>,
    window_hours: Option<i64>,
    min_sessions: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderRowDto {
    pub provider_id: String,
    pub sessions: i64,
    pub completion_rate: f64,
    pub no_show_rate: f64,
    pub too_short_rate: f64,
    pub billable_seconds: i64,
}

impl ProviderRowDto {
    fn new(provider_id: String, counts: &Counts) -> ProviderRowDto {
        ProviderRowDto {
            provider_id,
            sessions: counts.ended,
            completion_rate: counts.completion_rate(),
            no_show_rate: counts.no_show_rate(),
            too_short_rate: counts.too_short_rate(),
            billable_seconds: counts.billable_seconds,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderRankingDto {
    pub sort: String,
    pub window_hours: i64,
    /// Only providers with at least this many sessions ended in the window.
    pub min_sessions: i64,
    /// The worst first.
    pub items: Vec<ProviderRowDto>,
}

#[utoipa::path(get, path = "/v1/admin/providers", tag = "admin",
    params(
        ("sort" = Option<String>, Query,
            description = "no_show_rate (default), completion_rate, too_short_rate or sessions"),
        ("limit" = Option<i64>, Query, description = "1 to 100; default 20"),
        ("window_hours" = Option<i64>, Query, description = "1 to 720; default 24"),
        ("min_sessions" = Option<i64>, Query,
            description = "1 to 1000000; default 1: providers with fewer are left out")),
    responses((status = 200, body = ProviderRankingDto),
        (status = 422, body = Problem, description = "Unknown sort key, or a bound exceeded")),
    security(("bearer" = [])))]
/// Providers ranked the worst first by `sort` over the last `window_hours`
/// (highest no-show or too-short rate, lowest completion rate, or most
/// sessions).
pub async fn providers(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(query): StrictQuery<RankingQuery>,
) -> Result<Json<ProviderRankingDto>, ApiError> {
    caller.require(&[Role::Admin])?;
    let sort_name = query.sort.as_deref().unwrap_or("no_show_rate");
    let sort = ProviderSort::parse(sort_name).ok_or_else(|| {
        ApiError::Unprocessable(format!("sort must be one of {}", ProviderSort::NAMES.join(", ")))
    })?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=PROVIDERS_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::Unprocessable(format!(
            "limit must be between 1 and {PROVIDERS_LIMIT_MAX}"
        )));
    }
    let min_sessions = query.min_sessions.unwrap_or(1);
    if !(1..=1_000_000).contains(&min_sessions) {
        return Err(ApiError::Unprocessable("min_sessions must be between 1 and 1000000".into()));
    }
    let window_hours = window_hours(query.window_hours)?;
    let now = state.clock.now();
    let since = now.plus_seconds(-window_hours * 3600);
    let rows = state.store.provider_ranking(since, now, sort, min_sessions, limit).await?;
    Ok(Json(ProviderRankingDto {
        sort: sort_name.to_owned(),
        window_hours,
        min_sessions,
        items: rows.into_iter().map(|(id, counts)| ProviderRowDto::new(id, &counts)).collect(),
    }))
}
