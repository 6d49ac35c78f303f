//! Charts as inline SVG, drawn on the server: no script, nothing to load.

use std::collections::BTreeMap;

use maud::{Markup, html};
use verdict_core::{Interval, UnixMillis};

use super::view::{clock_time, duration};
use verdict_store::monitor::HourlyScore;

/// Horizontal bars, one per status, longest for the most sessions.
pub(crate) fn status_distribution(counts: &BTreeMap<String, i64>) -> Markup {
    let max = counts.values().copied().max().unwrap_or(0).max(1);
    let row = 26;
    let height = (counts.len().max(1) * row) as i64;
    html! {
        svg.chart width="100%" height=(height) viewBox={"0 0 400 " (height)} role="img"
            aria-label="Sessions ended in the window, by status" {
            @if counts.is_empty() {
                text x="0" y="16" { "Nothing ended in this window." }
            }
            @for (index, (status, count)) in counts.iter().enumerate() {
                @let y = index as i64 * row as i64;
                @let width = (count * 280 / max).max(1);
                @let class = match status.as_str() {
                    "completed" => "bar-completed",
                    "cancelled" => "bar-cancelled",
                    "expired" => "bar-expired",
                    _ => "bar-other",
                };
                text x="0" y=(y + 16) { (status) }
                rect class=(class) x="80" y=(y + 4) width=(width) height="16" rx="2" {
                    title { (status) ": " (count) }
                }
                text x=(84 + width) y=(y + 16) data-status=(status) { (count) }
            }
        }
    }
}

/// 24 hourly scores, oldest on the left, coloured by label.
pub(crate) fn hourly(hours: &[HourlyScore]) -> Markup {
    let width = 24 * 16;
    html! {
        svg.chart width="100%" height="150" viewBox={"0 0 " (width + 30) " 150"} role="img"
            aria-label="Health score per hour, last 24 hours" {
            line.axis x1="28" y1="120" x2=(width + 30) y2="120" {}
            text x="0" y="14" { "100" }
            text x="8" y="122" { "0" }
            @for (index, hour) in hours.iter().enumerate() {
                @let x = 30 + index * 16;
                @let bar = if hour.ended == 0 { 4.0 } else { (hour.score * 1.05).max(2.0) };
                rect class={"hour-" (hour.label)} x=(x) y=(format!("{:.1}", 120.0 - bar))
                    width="12" height=(format!("{:.1}", bar)) rx="1" data-hour=(index) {
                    title {
                        (clock_time(hour.hour_start)) " — "
                        @if hour.ended == 0 { "nothing ended" } @else {
                            "score " (hour.score) " (" (hour.label) "), " (hour.ended) " ended"
                        }
                    }
                }
                @if index % 6 == 0 {
                    text x=(x) y="138" { (clock_time(hour.hour_start)) }
                }
            }
        }
        ul.legend id="hourly-legend" {
            @for (label, meaning) in HOURLY_LEGEND {
                li { span class={"swatch hour-" (label)} {} (label) " " span.range { (meaning) } }
            }
        }
    }
}

/// What each bar colour of the hourly chart means (the health labels).
const HOURLY_LEGEND: [(&str, &str); 5] = [
    ("excellent", "≥ 95"),
    ("good", "85–95"),
    ("degraded", "70–85"),
    ("critical", "< 70"),
    ("idle", "nothing ended"),
];

/// Each party's presence, the time both were there, and the end.
pub(crate) fn timeline(
    start: UnixMillis,
    until: UnixMillis,
    ended_at: Option<UnixMillis>,
    rows: &[(&str, &str, &[Interval])],
) -> Markup {
    let span = until.millis_since(start).max(1) as f64;
    let left = 90.0;
    let width = 600.0;
    let x = |at: UnixMillis| left + width * (at.millis_since(start) as f64 / span);
    let height = rows.len() * 30 + 30;
    html! {
        svg.chart width="100%" height=(height) viewBox={"0 0 " (left + width + 10.0) " " (height)}
            role="img" aria-label="Presence timeline" {
            @for (index, (name, class, intervals)) in rows.iter().enumerate() {
                @let y = index * 30;
                text x="0" y=(y + 17) { (name) }
                line.axis x1=(left) y1=(y + 12) x2=(left + width) y2=(y + 12) {}
                @for interval in intervals.iter() {
                    rect class=(class) x=(format!("{:.1}", x(interval.start))) y=(y + 4)
                        width=(format!("{:.1}", (x(interval.end) - x(interval.start)).max(1.0)))
                        height="16" rx="2" {
                        title {
                            (clock_time(interval.start)) "–" (clock_time(interval.end)) " ("
                            (duration(interval.millis() / 1000)) ")"
                        }
                    }
                }
            }
            @if let Some(ended) = ended_at {
                line.end-mark x1=(format!("{:.1}", x(ended))) y1="0"
                    x2=(format!("{:.1}", x(ended))) y2=(rows.len() * 30) {}
            }
            @let bottom = rows.len() * 30 + 20;
            text x=(left) y=(bottom) { (clock_time(start)) }
            text x=(left + width - 60.0) y=(bottom) { (clock_time(until)) }
        }
    }
}
