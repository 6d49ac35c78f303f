//! The pages' markup (maud: compiled, escaped by construction).

use maud::{DOCTYPE, Markup, html};
use verdict_core::UnixMillis;
use verdict_store::monitor::{Alert, ReviewItem};

use super::charts;
use super::{SessionView, Snapshot};
use crate::wire::format_instant;

/// `HH:MM` UTC.
pub(crate) fn clock_time(at: UnixMillis) -> String {
    let text = format_instant(at);
    text.get(11..16).unwrap_or(&text).to_owned()
}

/// `2026-11-28 09:00:05 UTC`.
fn instant(at: UnixMillis) -> String {
    let text = format_instant(at);
    format!("{} {} UTC", text.get(..10).unwrap_or(&text), text.get(11..19).unwrap_or(""))
}

/// `1h 02m`, `12m 30s`, `45s`.
pub(crate) fn duration(seconds: i64) -> String {
    let (hours, minutes, seconds) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h {minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

pub(crate) fn percent(rate: f64) -> String {
    format!("{:.1} %", rate * 100.0)
}

pub(crate) fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

/// What every page's head has: charset, viewport, title, icon, styles
/// (the dashboard's and the demo room's pages alike).
pub(crate) fn head_common(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) }
        link rel="icon" type="image/svg+xml" href="/admin/assets/favicon.svg";
        link rel="stylesheet" href="/admin/assets/dashboard.css";
    }
}

pub(crate) fn layout(title: &str, refresh: Option<u64>, signed_in: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                (head_common(&format!("{title} · verdict")))
                @if refresh.is_some() {
                    script src="/admin/assets/dashboard.js" defer {}
                }
            }
            body data-refresh=[refresh] {
                header.top {
                    a href="/admin/sessions/session-health" { "verdict · session health" }
                    @if signed_in {
                        form method="post" action="/admin/sign-out" {
                            button type="submit" id="sign-out" { "Sign out" }
                        }
                    }
                }
                (body)
            }
        }
    }
}

/// A page with one message (denials, not found).
pub(crate) fn message(title: &str, text: &str) -> Markup {
    layout(
        title,
        None,
        false,
        html! {
            div.page { h1 { (title) } p { (text) } p { a href="/admin/sign-in" { "Sign in" } } }
        },
    )
}

pub(crate) fn sign_in(error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        false,
        html! {
            div.signin.card {
                h1 { "Sign in" }
                p { "Paste an admin token (" code { "verdict token --role admin --sub you" } ")." }
                @if let Some(error) = error { p.error id="sign-in-error" { (error) } }
                form method="post" action="/admin/sign-in" {
                    label for="token" { "Admin token" }
                    input type="password" id="token" name="token" autocomplete="off" required;
                    button type="submit" id="sign-in" { "Sign in" }
                }
            }
        },
    )
}

pub(crate) fn dashboard(snapshot: &Snapshot) -> Markup {
    let source = format!(
        "/admin/sessions/session-health/panel?window_hours={}",
        snapshot.health.window_hours
    );
    layout(
        "Session health",
        Some(snapshot.refresh_seconds),
        true,
        html! {
            main id="panel" data-source=(source) { (panel(snapshot)) }
        },
    )
}

fn alert_link(alert: &Alert) -> String {
    match alert.kind {
        "dead_deliveries" => "#deliveries".to_owned(),
        "payout_mismatch" => "/admin/review?reason=payout_accuracy".to_owned(),
        kind => format!("/admin/review?reason={kind}"),
    }
}

/// The part of the dashboard that refreshes.
pub(crate) fn panel(snapshot: &Snapshot) -> Markup {
    let health = &snapshot.health;
    let alerts = health.alerts.len() + health.threshold_alerts.len();
    let status_line = if health.ended == 0 && alerts == 0 {
        format!("Idle: nothing ended in the last {} h.", health.window_hours)
    } else if alerts == 0 {
        format!(
            "All clear: {} sessions ended in the last {} h, no alerts.",
            health.ended, health.window_hours
        )
    } else {
        // Named beside the label: a "good" score with critical alerts is
        // not all good, and the line says which.
        let critical: Vec<String> = health
            .alerts
            .iter()
            .filter(|alert| alert.severity == "critical")
            .map(|alert| format!("{} ({})", alert.kind.replace('_', " "), alert.count))
            .collect();
        let named = if critical.is_empty() {
            format!("{alerts} warning{}", if alerts == 1 { "" } else { "s" })
        } else {
            format!("{} critical: {}", critical.len(), critical.join(", "))
        };
        format!("{named}; {} sessions ended in the last {} h.", health.ended, health.window_hours)
    };
    let metrics: [(&str, &str, String, String); 7] = [
        ("ended", "Sessions ended", health.ended.to_string(), health.ended.to_string()),
        (
            "completion_rate",
            "Completion rate",
            health.completion_rate.to_string(),
            percent(health.completion_rate),
        ),
        (
            "no_show_rate",
            "No-show rate",
            health.no_show_rate.to_string(),
            percent(health.no_show_rate),
        ),
        (
            "too_short_rate",
            "Too-short rate",
            health.too_short_rate.to_string(),
            percent(health.too_short_rate),
        ),
        (
            "avg_billable_seconds",
            "Average billable",
            health.avg_billable_seconds.to_string(),
            duration(health.avg_billable_seconds.round() as i64),
        ),
        (
            "p50_billable_seconds",
            "Median billable",
            health.p50_billable_seconds.to_string(),
            duration(health.p50_billable_seconds),
        ),
        (
            "p90_billable_seconds",
            "p90 billable",
            health.p90_billable_seconds.to_string(),
            duration(health.p90_billable_seconds),
        ),
    ];
    html! {
        section class={"card hero " (health.label)} {
            div {
                div.score id="score" data-value=(health.score) { (format!("{:.1}", health.score)) }
            }
            div {
                span class={"label " (health.label)} id="label" data-value=(health.label) { (health.label) }
                p.status-line id="status-line" { (status_line) }
            }
        }
        section.grid { @for (key, name, raw, shown) in &metrics {
            div.card.metric data-metric=(key) data-value=(raw) {
                div.value { (shown) } div.name { (name) }
            }
        } }
        div.cards {
            section.card id="alerts" {
                h2 { "Alerts" }
                @if alerts == 0 { p.none { "No alerts." } }
                ul.alerts { @for alert in &health.alerts {
                    li data-alert=(alert.kind) data-count=(alert.count) {
                        span { span class={"sev " (alert.severity)} { (alert.severity) }
                            a href=(alert_link(alert)) { (alert.kind.replace('_', " ")) } }
                        strong { (alert.count) }
                    }
                }
                (super::insight::threshold_alerts(&health.threshold_alerts)) }
            }
            section.card id="revenue" {
                h2 { "Revenue impact" }
                dl.facts {
                    @if health.revenue_by_currency.is_empty() {
                        dt { "Under-billed" } dd id="underbilled" data-value="0" { "none" }
                        dt { "Over-billed" } dd id="overbilled" data-value="0" { "none" }
                    }
                    // Every amount with its currency, one pair per currency.
                    @for (currency, (under, over)) in &health.revenue_by_currency {
                        dt { "Under-billed" }
                        dd.underbilled data-currency=(currency) data-value=(under) { (money(*under)) " " (currency) }
                        dt { "Over-billed" }
                        dd.overbilled data-currency=(currency) data-value=(over) { (money(*over)) " " (currency) }
                    }
                }
                p.note { "Under-billed: sessions that happened but are recorded cancelled. Over-billed: sessions charged and paid that did not happen." }
            }
            (super::insight::by_kind_table(&health.by_kind, health.window_hours))
            section.card id="distribution" {
                h2 { "Status distribution" }
                (charts::status_distribution(&health.status_distribution))
            }
            section.card id="hourly" {
                h2 { "Health score, last 24 hours" }
                (charts::hourly(&snapshot.hourly))
            }
            section.card id="deliveries" {
                h2 { "Deliveries (outbox)" }
                dl.facts {
                    dt { "Pending" } dd data-value=(snapshot.outbox.pending) { (snapshot.outbox.pending) }
                    dt { "Overdue (15 min past due)" } dd data-value=(snapshot.outbox.overdue) { (snapshot.outbox.overdue) }
                    dt { "Dead" } dd data-value=(snapshot.outbox.dead) { (snapshot.outbox.dead) }
                }
                @if !snapshot.dead.is_empty() {
                    div.scroll { table { thead { tr { th { "Topic" } th { "Session" } th.num { "Attempts" } th { "Last error" } } }
                        tbody { @for row in &snapshot.dead { tr {
                            td { (row.topic) }
                            td { @if let Some(id) = &row.session_id { a href={"/admin/sessions/" (id)} { (id) } } }
                            td.num { (row.attempts) }
                            td { (row.last_error.as_deref().unwrap_or("")) }
                        } } }
                    } }
                }
            }
        }
        section.card id="review" {
            h2 { "Review queue" }
            (review_table(&snapshot.review))
            @if snapshot.review.is_empty() { p.none { "Nothing needs review." } }
            p.pager { a href="/admin/review" { "Whole review queue →" } }
        }
        p.updated id="updated" data-value=(format_instant(snapshot.now)) {
            "Updated " (instant(snapshot.now)) "; refreshes every " (snapshot.refresh_seconds) " s."
        }
    }
}

fn review_table(items: &[ReviewItem]) -> Markup {
    html! {
        @if !items.is_empty() {
            div.scroll { table { thead { tr { th { "Session" } th { "Status" } th { "Reason" } th { "Ended" } th { "Needs review for" } } }
                tbody { @for item in items { tr data-session=(item.session.id) {
                    td { a href={"/admin/sessions/" (item.session.id)} { (item.session.id) } }
                    td { (item.session.status.as_str()) }
                    td { (item.session.reason().map_or("", |reason| reason.as_str())) }
                    td { (item.session.ended_at().map(instant).unwrap_or_default()) }
                    td { (item.reasons.join(", ").replace('_', " ")) }
                } } }
            } }
        }
    }
}

pub(crate) fn review(
    items: &[ReviewItem],
    reason: Option<&str>,
    next: Option<&str>,
    now: UnixMillis,
) -> Markup {
    let title = match reason {
        Some(reason) => format!("Review: {}", reason.replace('_', " ")),
        None => "Review queue".to_owned(),
    };
    layout(
        &title,
        None,
        true,
        html! {
            div.page {
                h1 { (title) }
                p { a href="/admin/sessions/session-health" { "← Session health" } }
                section.card id="review" {
                    (review_table(items))
                    @if items.is_empty() { p.none { "Nothing needs review here." } }
                    @if let Some(next) = next {
                        p.pager { a id="next-page" href={"/admin/review?after=" (next) @if let Some(reason) = reason { "&reason=" (reason) }} { "Next page →" } }
                    }
                }
                p.updated { "As of " (instant(now)) }
            }
        },
    )
}

pub(crate) fn session(view: &SessionView) -> Markup {
    let session = &view.session;
    let start = session.created_at;
    let rows: [(&str, &str, &[verdict_core::Interval]); 3] = [
        ("customer", "presence-customer", &view.customer),
        ("provider", "presence-provider", &view.provider),
        ("together", "presence-overlap", &view.together),
    ];
    html! {
        (layout(&format!("Session {}", session.id), None, true, html! {
            div.page {
                h1 id="session-id" data-value=(session.id) { "Session " (session.id) }
                p { a href="/admin/sessions/session-health" { "← Session health" } " · " a href="/admin/review" { "Review queue" } }
                section.card {
                    h2 { "Presence" }
                    (charts::timeline(start, view.until.max(start), session.ended_at(), &rows))
                    p { "Together " strong id="overlap" { (duration(view.overlap_millis / 1000)) }
                        " of " (duration(view.until.millis_since(start) / 1000)) " since the session was created." }
                }
                div.cards {
                    section.card id="outcome" {
                        h2 { "Outcome" }
                        dl.facts {
                            dt { "Recorded" } dd id="recorded" { (session.status.as_str()) @if let Some(reason) = session.reason() { " · " (reason.as_str()) } }
                            dt { "Billable" } dd { (session.billable_seconds().map(duration).unwrap_or_else(|| "—".into())) }
                            dt { "Charged" } dd { (session.charged_cents.map(|cents| format!("{} {}", money(cents.0), session.price.currency)).unwrap_or_else(|| "—".into())) }
                            dt { "Ended by" } dd { (session.ended_by.map_or("—", |role| role.as_str())) }
                            @if let Some(outcome) = &view.rederived {
                                dt { "Re-derived now" } dd id="rederived" { (outcome.status.as_str()) " · " (outcome.reason.as_str()) ", " (duration(outcome.billable_seconds)) " billable" }
                            }
                            dt { "Verification" } dd id="findings" {
                                @if view.findings.is_empty() { "clean" } @else { (view.findings.join(", ").replace('_', " ")) }
                            }
                        }
                    }
                    section.card id="policy" {
                        h2 { "Policy " @if view.policy_stored { "(stored with the decision)" } @else { "(configured today)" } }
                        dl.facts {
                            dt { "Minimum billable" } dd { (duration(view.policy.min_billable_seconds)) }
                            dt { "Billing basis" } dd { (view.policy.billing_basis.as_str()) }
                            dt { "Join grace" } dd { (duration(view.policy.join_grace_seconds)) }
                            dt { "Abandoned after" } dd { (duration(view.policy.abandon_after_seconds)) }
                            dt { "Longest" } dd { (duration(view.policy.max_duration_seconds)) }
                            dt { "Presence timeout" } dd { (duration(view.policy.presence_timeout_seconds)) }
                            dt { "Platform fee" } dd { (view.policy.platform_fee_bps as f64 / 100.0) " %" }
                        }
                    }
                    section.card id="settlement" {
                        h2 { "Settlement" }
                        @if view.payouts.is_empty() && view.postings.is_empty() { p.none { "No payout, no ledger posting." } }
                        @for payout in &view.payouts {
                            p { "Payout " code { (payout.id) } ": " (money(payout.amount.0)) " " (payout.currency) ", " (payout.state.as_str())
                                @if payout.reversed_at.is_some() { " (reversed)" } }
                        }
                        @for posting in &view.postings {
                            div.scroll { table { thead { tr { th { "Posting " (posting.id) " · " (posting.kind) } th.num { (posting.currency) } } }
                                tbody { @for line in &posting.lines { tr { td { (line.account) } td.num { (money(line.amount.0)) } } } } } }
                        }
                    }
                }
                section.card id="deliveries" {
                    h2 { "Deliveries" }
                    @if view.deliveries.is_empty() { p.none { "Nothing queued for this session." } }
                    @else {
                        div.scroll { table { thead { tr { th { "Topic" } th { "State" } th.num { "Attempts" } th { "Delivered" } } }
                            tbody { @for row in &view.deliveries { tr {
                                td { (row.topic) } td { (row.state) } td.num { (row.attempts) }
                                td { (row.delivered_at.map(instant).unwrap_or_default()) }
                            } } } } }
                    }
                    section.card id="metadata" {
                        h2 { "Metadata" }
                        (metadata(session.metadata.as_ref()))
                    }
                }
                section.card id="events" {
                    h2 { "Audit trail" }
                    div.scroll { table { thead { tr { th { "#" } th { "At" } th { "Event" } th { "Party" } th { "By" } } }
                        tbody { @for event in &view.events { tr {
                            td.num { (event.seq) } td { (instant(event.at)) } td { (event.event_type.as_str()) }
                            td { (event.party.map_or("", |party| party.as_str())) }
                            td { (event.actor.role.as_str()) " " (event.actor.id) }
                        } } }
                    } }
                }
                p.updated { "As of " (instant(view.now)) }
            }
        }))
    }
}

/// A session's `metadata` (the platform's, or what an import kept of the
/// old system's record): an object as a list of its fields.
fn metadata(value: Option<&serde_json::Value>) -> Markup {
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    html! {
        @match value {
            None | Some(serde_json::Value::Null) => p.none { "None recorded." },
            Some(serde_json::Value::Object(fields)) => dl.facts {
                @for (key, value) in fields { dt { (key) } dd data-field=(key) { (text(value)) } }
            },
            Some(other) => pre { (other.to_string()) },
        }
    }
}
