//! The dashboard's insight per kind and per provider (issue 27): the
//! per-kind table, the threshold alerts (a provider's linked to its page)
//! and the provider page with its stats.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use verdict_core::Kind;
use verdict_store::insight::{KindHealth, ProviderStats, Scope, ThresholdAlert};

use super::view::{duration, layout, message, money, percent};
use super::{WindowQuery, admin, html};
use crate::wire::{Path, StrictQuery};
use crate::{ApiError, AppState};

/// Where an alert's scope is shown: a provider's page, or the kind's row.
pub(crate) fn scope_link(scope: &Scope) -> String {
    match scope {
        Scope::Kind(kind) => format!("#kind-{kind}"),
        Scope::Provider(id) => format!("/admin/providers/{id}"),
    }
}

/// The threshold alerts, as items of the alerts list.
pub(crate) fn threshold_alerts(alerts: &[ThresholdAlert]) -> Markup {
    html! {
        @for alert in alerts {
            li data-alert=(alert.rule.as_str()) data-count=(alert.sessions)
                data-scope=(format!("{}={}", alert.scope.field(), alert.scope.value())) {
                span {
                    span class="sev warning" { "warning" }
                    (alert.rule.as_str().replace('_', " ")) " · "
                    a href=(scope_link(&alert.scope)) {
                        (alert.scope.field().replace('_', " ")) " " (alert.scope.value())
                    }
                }
                strong title=(format!("threshold {}", percent(alert.threshold))) {
                    (percent(alert.value))
                }
            }
        }
    }
}

/// One row per kind: every metric of the window.
pub(crate) fn by_kind_table(by_kind: &BTreeMap<Kind, KindHealth>, window_hours: i64) -> Markup {
    html! {
        section.card id="by-kind" {
            h2 { "Per kind, last " (window_hours) " h" }
            div.scroll { table {
                thead { tr {
                    th { "Kind" } th.num { "Ended" } th.num { "Score" } th.num { "Completion" }
                    th.num { "No-show" } th.num { "Too short" } th.num { "Avg billable" }
                    th.num { "Median" } th.num { "p90" }
                } }
                tbody { @for (kind, health) in by_kind {
                    tr id={"kind-" (kind)} data-kind=(kind) data-ended=(health.ended)
                        data-completion-rate=(health.completion_rate)
                        data-no-show-rate=(health.no_show_rate) {
                        td { (kind) }
                        td.num { (health.ended) }
                        td.num { (format!("{:.1}", health.score)) }
                        td.num { (percent(health.completion_rate)) }
                        td.num { (percent(health.no_show_rate)) }
                        td.num { (percent(health.too_short_rate)) }
                        td.num { (duration(health.avg_billable_seconds.round() as i64)) }
                        td.num { (duration(health.p50_billable_seconds)) }
                        td.num { (duration(health.p90_billable_seconds)) }
                    }
                } }
            } }
        }
    }
}

fn provider_view(stats: &ProviderStats, window_hours: i64) -> Markup {
    let counts = &stats.counts;
    let facts = [
        ("sessions", "Sessions ended", counts.ended.to_string()),
        ("completion_rate", "Completion rate", percent(counts.completion_rate())),
        ("no_show_rate", "No-show rate", percent(counts.no_show_rate())),
        ("too_short_rate", "Too-short rate", percent(counts.too_short_rate())),
        ("billable_seconds", "Billable time", duration(counts.billable_seconds)),
    ];
    layout(
        &format!("Provider {}", stats.provider_id),
        None,
        true,
        html! {
            div.page {
                h1 { "Provider " (stats.provider_id) }
                p { "Sessions ended in the last " (window_hours) " h." }
                section.grid { @for (key, name, shown) in &facts {
                    div.card.metric data-metric=(key) { div.value { (shown) } div.name { (name) } }
                } }
                section.card id="provider-money" {
                    h2 { "Money (ledger)" }
                    @if stats.money.is_empty() { p.none { "No ledger postings in the window." } }
                    div.scroll { table { thead { tr { th { "Currency" } th.num { "Charged" } th.num { "Earned" } } }
                        tbody { @for row in &stats.money { tr data-currency=(row.currency) {
                            td { (row.currency) }
                            td.num data-value=(row.charged.0) { (money(row.charged.0)) }
                            td.num data-value=(row.earned.0) { (money(row.earned.0)) }
                        } } }
                    } }
                }
                p { a href="/admin/sessions/session-health" { "← Session health" } }
            }
        },
    )
}

/// `/admin/providers/{id}`: a provider's stats, where its alerts link.
pub(crate) async fn provider_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    StrictQuery(query): StrictQuery<WindowQuery>,
) -> Result<Response, ApiError> {
    if let Err(denied) = admin(&state, &headers) {
        return Ok(denied.into_response());
    }
    if !verdict_core::is_valid_id(&id) {
        let page = message("No such provider", "There is no provider with this id.");
        return Ok((StatusCode::NOT_FOUND, Html(page.into_string())).into_response());
    }
    let window_hours = query.hours()?;
    let now = state.clock.now();
    let stats =
        state.store.provider_stats(&id, now.plus_seconds(-window_hours * 3600), now).await?;
    Ok(html(provider_view(&stats, window_hours)))
}
